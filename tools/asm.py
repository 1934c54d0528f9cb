"""A small x86 assembler (Intel syntax, 16/32/64-bit) in pure Python.

kvmlite's tests, demo guest and benchmarks write guest machine code as text
with it, so none of them needs binutils::

    code = assemble('''
        bits 16
        start:  cli
                lgdt [gdt_ptr]
                mov eax, cr0
                or al, 1
                mov cr0, eax
                jmp 0x08:pm32           ; ptr16:16 far jump into 32-bit code
        bits 32
        pm32:   mov ax, 0x10
                ...
    ''', bits=16, origin=0x7c00)

Encodings follow the Intel 64 and IA-32 Architectures Software Developer's
Manual, Volume 2: chapter 2 (instruction format, legacy and REX prefixes,
ModRM/SIB tables 2-1 to 2-3, RIP-relative addressing), the instruction pages
of chapters 3-5 and the opcode map of appendix A.  Where the manual allows two
encodings, the one GNU as picks is used, so tests can compare with GNU as.

Syntax: one statement per line; ``;`` or ``#`` starts a comment; ``name:``
defines a label (``.name`` is local to the last plain label); numbers are
decimal, ``0x`` hex, ``0b`` binary, ``NNh`` hex or ``'A'`` characters;
expressions use ``+ - * / % << >> & ^ | ~`` and parentheses over numbers,
labels, ``symbols``, ``$`` (this statement's address) and ``$$`` (the
origin).  Memory operands are ``[base + index*scale + disp]``, optionally
``byte/word/dword/qword`` sized and ``fs:`` overridden; in bits 64,
``[rel label]`` is RIP-relative and ``[disp]`` is absolute.

Directives: ``bits 16|32|64``; ``org N`` (sets the origin before any output,
pads with zeros up to N after); ``align N[, fill]`` (pads with nops after
code, zeros after data); ``db/dw/dd/dq`` lists (quoted strings too);
``resb/resw/resd/resq N``; ``times N <statement>``; ``NAME equ EXPR``.

Sizes settle over repeated passes: a jump starts short (rel8) and becomes
near once its target is out of reach, never back, so the passes converge.
Immediates and displacements that involve a label get the full-width field
(as GNU as does for relocatable values); plain numbers get the shortest.
"""

import operator
import re
from dataclasses import dataclass

__all__ = ['AsmError', 'Assembler', 'assemble', 'assemble_with_labels']


class AsmError(ValueError):
    """A line that cannot be assembled: ``line 7 'mov al, bx': operand sizes differ``."""

    def __init__(self, lineno, text, reason):
        super().__init__(f"line {lineno} '{text}': {reason}")
        self.lineno, self.text, self.reason = lineno, text, reason


class _Fail(Exception):
    """A reason raised while encoding; the pass loop adds the line to it."""


# ----------------------------------------------------------------- operands

@dataclass(frozen=True)
class Reg:
    name: str
    kind: str       # 'gpr', 'seg', 'cr' or 'xmm'
    size: int       # bits (0 for control registers)
    num: int        # register number as encoded, 0-15


@dataclass
class Imm:
    value: int
    reloc: bool = False         # depends on a label address
    size: int = None            # from a size keyword: push dword 5
    kw: str = None              # short / near / far
    unresolved: bool = False    # names a symbol not (yet) defined


@dataclass
class Mem:
    base: Reg = None
    index: Reg = None
    scale: int = 1
    disp: int = 0
    reloc: bool = False
    size: int = None
    rel: bool = False           # [rel label]: RIP-relative
    seg: Reg = None             # segment override
    kw: str = None


@dataclass
class Far:
    seg: int
    off: int
    size: int = None


def _make_regs():
    regs = {}
    rows = {8: 'al cl dl bl ah ch dh bh', 16: 'ax cx dx bx sp bp si di',
            32: 'eax ecx edx ebx esp ebp esi edi', 64: 'rax rcx rdx rbx rsp rbp rsi rdi'}
    for size, row in rows.items():
        for num, name in enumerate(row.split()):
            regs[name] = Reg(name, 'gpr', size, num)
    for num, name in enumerate(('spl', 'bpl', 'sil', 'dil'), 4):
        regs[name] = Reg(name, 'gpr', 8, num)
    for num in range(8, 16):
        for suffix, size in (('b', 8), ('w', 16), ('d', 32), ('', 64)):
            regs[f'r{num}{suffix}'] = Reg(f'r{num}{suffix}', 'gpr', size, num)
    for num, name in enumerate(('es', 'cs', 'ss', 'ds', 'fs', 'gs')):
        regs[name] = Reg(name, 'seg', 16, num)
    for num in (0, 2, 3, 4, 8):
        regs[f'cr{num}'] = Reg(f'cr{num}', 'cr', 0, num)
    for num in range(16):
        regs[f'xmm{num}'] = Reg(f'xmm{num}', 'xmm', 128, num)
    return regs


_REGS = _make_regs()
_HIGH8 = {'ah', 'ch', 'dh', 'bh'}       # not encodable together with a REX prefix
_SEG_PREFIX = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]      # es cs ss ds fs gs overrides
_SIZES = {'byte': 8, 'word': 16, 'dword': 32, 'qword': 64, 'fword': 48,
          'tword': 80, 'oword': 128, 'xmmword': 128}


def _kind(op):
    return op.kind if isinstance(op, Reg) else None


def _gpr(op):
    return isinstance(op, Reg) and op.kind == 'gpr'


def _rm(op):
    """A general register or memory: what a ModRM r/m field can name."""
    return _gpr(op) or isinstance(op, Mem)


def _acc(op):
    """al/ax/eax/rax, which have short opcode forms."""
    return _gpr(op) and op.num == 0


def _xmm_rm(op):
    return _kind(op) == 'xmm' or isinstance(op, Mem)


# ------------------------------------------------------------ opcode tables

_ALU = {'add': 0, 'or': 1, 'adc': 2, 'sbb': 3, 'and': 4, 'sub': 5, 'xor': 6, 'cmp': 7}
_SHIFT = {'rol': 0, 'ror': 1, 'rcl': 2, 'rcr': 3, 'shl': 4, 'sal': 4, 'shr': 5, 'sar': 7}
_UNARY = {'not': 2, 'neg': 3, 'mul': 4, 'div': 6, 'idiv': 7}     # F6/F7 /n
_CC = {'o': 0, 'no': 1, 'b': 2, 'c': 2, 'nae': 2, 'ae': 3, 'nb': 3, 'nc': 3,
       'e': 4, 'z': 4, 'ne': 5, 'nz': 5, 'be': 6, 'na': 6, 'a': 7, 'nbe': 7,
       's': 8, 'ns': 9, 'p': 10, 'pe': 10, 'np': 11, 'po': 11, 'l': 12,
       'nge': 12, 'ge': 13, 'nl': 13, 'le': 14, 'ng': 14, 'g': 15, 'nle': 15}
_BT = {'bt': 0, 'bts': 1, 'btr': 2, 'btc': 3}       # 0F A3+8k /r and 0F BA /4+k ib
_LOOP = {'loopne': (0xE0, None), 'loopnz': (0xE0, None), 'loope': (0xE1, None),
         'loopz': (0xE1, None), 'loop': (0xE2, None), 'jcxz': (0xE3, 16),
         'jecxz': (0xE3, 32), 'jrcxz': (0xE3, 64)}    # opcode, counter (address) size
# reg, r/m of the register's size: mnemonic -> opcode.
_REG_RM = {'bsf': '0fbc', 'bsr': '0fbd', 'imul': '0faf', 'lea': '8d',
           **{'cmov' + cc: f'0f{0x40 + n:02x}' for cc, n in _CC.items()}}
# r/m, reg with a byte form one below: mnemonic -> opcode of the non-byte form.
_RM_REG = {'cmpxchg': '0fb1', 'xadd': '0fc1'}
# One r/m operand: mnemonic -> (opcode, /digit, registers allowed: None for
# memory only, 8 for byte registers, 16 for any without a size prefix, 'sized'
# for any with the operand size of the register).
_GROUP = {'sgdt': ('0f01', 0, None), 'sidt': ('0f01', 1, None), 'lgdt': ('0f01', 2, None),
          'lidt': ('0f01', 3, None), 'smsw': ('0f01', 4, 'sized'), 'lmsw': ('0f01', 6, 16),
          'invlpg': ('0f01', 7, None),
          'sldt': ('0f00', 0, 'sized'), 'str': ('0f00', 1, 'sized'), 'lldt': ('0f00', 2, 16),
          'ltr': ('0f00', 3, 16), 'verr': ('0f00', 4, 16), 'verw': ('0f00', 5, 16),
          'cmpxchg8b': ('0fc7', 1, None), 'cmpxchg16b': ('0fc7', 1, None),
          **{'set' + cc: (f'0f{0x90 + n:02x}', 0, 8) for cc, n in _CC.items()}}

# Operand-less instructions: mnemonic -> (opcode hex, operand size, default-64).
_SIMPLE = {
    'nop': ('90',), 'hlt': ('f4',), 'cli': ('fa',), 'sti': ('fb',), 'cld': ('fc',),
    'std': ('fd',), 'clc': ('f8',), 'stc': ('f9',), 'cmc': ('f5',), 'int3': ('cc',),
    'into': ('ce',), 'int1': ('f1',), 'leave': ('c9',), 'iret': ('cf',),
    'iretw': ('cf', 16), 'iretd': ('cf', 32), 'iretq': ('cf', 64),
    'pushf': ('9c',), 'pushfw': ('9c', 16, True), 'pushfd': ('9c', 32, True),
    'pushfq': ('9c', 64, True), 'popf': ('9d',), 'popfw': ('9d', 16, True),
    'popfd': ('9d', 32, True), 'popfq': ('9d', 64, True), 'pusha': ('60',),
    'popa': ('61',), 'pushad': ('60', 32), 'popad': ('61', 32),
    'cbw': ('98', 16), 'cwde': ('98', 32), 'cdqe': ('98', 64),
    'cwd': ('99', 16), 'cdq': ('99', 32), 'cqo': ('99', 64), 'lahf': ('9f',), 'sahf': ('9e',),
    'cpuid': ('0fa2',), 'rdtsc': ('0f31',), 'rdtscp': ('0f01f9',), 'rdmsr': ('0f32',),
    'wrmsr': ('0f30',), 'rdpmc': ('0f33',), 'syscall': ('0f05',), 'sysret': ('0f07',),
    'sysretq': ('0f07', 64), 'sysenter': ('0f34',), 'sysexit': ('0f35',),
    'pause': ('f390',), 'ud2': ('0f0b',), 'wbinvd': ('0f09',), 'invd': ('0f08',),
    'clac': ('0f01ca',), 'stac': ('0f01cb',), 'swapgs': ('0f01f8',), 'clts': ('0f06',),
    'mfence': ('0faef0',), 'lfence': ('0faee8',), 'sfence': ('0faef8',), 'rsm': ('0faa',),
    'monitor': ('0f01c8',), 'mwait': ('0f01c9',), 'xgetbv': ('0f01d0',), 'xsetbv': ('0f01d1',),
    'vmcall': ('0f01c1',), 'vmmcall': ('0f01d9',), 'fninit': ('dbe3',),
    'finit': ('9bdbe3',), 'fwait': ('9b',), 'wait': ('9b',),
}
for _name, _op in (('movs', 0xA4), ('cmps', 0xA6), ('stos', 0xAA), ('lods', 0xAC),
                   ('scas', 0xAE), ('ins', 0x6C), ('outs', 0x6E)):
    _SIMPLE[_name + 'b'] = (f'{_op:02x}', 8)
    for _suffix, _size in (('w', 16), ('d', 32), ('q', 64))[:2 if _name in ('ins', 'outs') else 3]:
        _SIMPLE[_name + _suffix] = (f'{_op + 1:02x}', _size)
_NOT64 = {'into', 'pusha', 'popa', 'pushad', 'popad'}

# SSE moves: mnemonic -> (mandatory prefix, load opcode, store opcode).
_SSE_MOV = {'movdqa': (0x66, 0x6F, 0x7F), 'movdqu': (0xF3, 0x6F, 0x7F),
            'movaps': (None, 0x28, 0x29), 'movups': (None, 0x10, 0x11),
            'movapd': (0x66, 0x28, 0x29), 'movupd': (0x66, 0x10, 0x11),
            'movsd': (0xF2, 0x10, 0x11), 'movss': (0xF3, 0x10, 0x11)}
# SSE xmm, xmm/m: mnemonic -> (mandatory prefix, opcode after 0F).
_SSE_OP = {
    'paddb': (0x66, 0xFC), 'paddw': (0x66, 0xFD), 'paddd': (0x66, 0xFE), 'paddq': (0x66, 0xD4),
    'psubb': (0x66, 0xF8), 'psubw': (0x66, 0xF9), 'psubd': (0x66, 0xFA), 'psubq': (0x66, 0xFB),
    'pxor': (0x66, 0xEF), 'pand': (0x66, 0xDB), 'pandn': (0x66, 0xDF), 'por': (0x66, 0xEB),
    'pcmpeqb': (0x66, 0x74), 'pcmpeqd': (0x66, 0x76), 'pmuludq': (0x66, 0xF4),
    'punpcklqdq': (0x66, 0x6C), 'unpcklpd': (0x66, 0x14),
    'ucomisd': (0x66, 0x2E), 'comisd': (0x66, 0x2F), 'ucomiss': (None, 0x2E),
    'comiss': (None, 0x2F), 'cvtsd2ss': (0xF2, 0x5A), 'cvtss2sd': (0xF3, 0x5A),
    'xorps': (None, 0x57), 'xorpd': (0x66, 0x57), 'andps': (None, 0x54),
    'andpd': (0x66, 0x54), 'orps': (None, 0x56), 'orpd': (0x66, 0x56),
}
for _name, _op in (('add', 0x58), ('mul', 0x59), ('sub', 0x5C), ('div', 0x5E), ('sqrt', 0x51)):
    for _suffix, _mand in (('ps', None), ('pd', 0x66), ('ss', 0xF3), ('sd', 0xF2)):
        _SSE_OP[_name + _suffix] = (_mand, _op)
# xmm <-> general register: mnemonic -> (mandatory prefix, opcode, xmm is the destination).
_SSE_CVT = {'cvtsi2sd': (0xF2, 0x2A, True), 'cvtsi2ss': (0xF3, 0x2A, True),
            'cvttsd2si': (0xF2, 0x2C, False), 'cvtsd2si': (0xF2, 0x2D, False),
            'cvttss2si': (0xF3, 0x2C, False), 'cvtss2si': (0xF3, 0x2D, False)}
_PREFIXES = {'lock': 0xF0, 'rep': 0xF3, 'repe': 0xF3, 'repz': 0xF3,
             'repne': 0xF2, 'repnz': 0xF2}
_DATA = {'db': 1, 'dw': 2, 'dd': 4, 'dq': 8}
_RES = {'resb': 1, 'resw': 2, 'resd': 4, 'resq': 8}

# --------------------------------------------------------------- expressions

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>0[xX][0-9a-fA-F_]+|0[bB][01_]+|[0-9][0-9a-fA-F_]*[hH](?![\w.])|[0-9][0-9_]*)
  | (?P<chr>'[^']*'|"[^"]*")
  | (?P<name>\$\$|\$|[A-Za-z_.@?][\w.@?$]*)
  | (?P<op><<|>>|[-+*/%|&^~()])
  )""", re.X)


def _div(a, b):
    """Division truncating toward zero, as in C and NASM."""
    if b == 0:
        raise _Fail('division by zero')
    return abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)


def _shift(fn):
    def apply(a, b):
        if b < 0:
            raise _Fail('negative shift count')
        return fn(a, b)
    return apply


# Binary operators by precedence, loosest first.
_BINARY = [{'|': operator.or_}, {'^': operator.xor}, {'&': operator.and_},
           {'<<': _shift(operator.lshift), '>>': _shift(operator.rshift)},
           {'+': operator.add, '-': operator.sub},
           {'*': operator.mul, '/': _div, '%': lambda a, b: a - b * _div(a, b)}]


def _tokens(text):
    """Split an expression into (kind, text) tokens."""
    out, pos, text = [], 0, text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise _Fail(f"cannot parse '{text[pos:].strip()}'")
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


def _number(text):
    t = text.replace('_', '').lower()
    if t.startswith(('0x', '0b')):
        return int(t[2:], 16 if t[1] == 'x' else 2)
    return int(t[:-1], 16) if t.endswith('h') else int(t)


def _split_top(text, sep=','):
    """Split on `sep` outside brackets, parentheses and quotes."""
    parts, depth, quote, cur = [], 0, None, ''
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '[(' or ch in '])':
            depth += 1 if ch in '[(' else -1
        elif ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ''
            continue
        cur += ch
    return parts + [cur.strip()]


def _strip_comment(line):
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in ';#':
            return line[:i]
    return line


def _fits(value, bits):
    """Whether `value` fits `bits` bits as a signed or an unsigned number."""
    return -(1 << (bits - 1)) <= value < (1 << bits)


def _signed(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


_LABEL = re.compile(r'\s*([A-Za-z_.@?][\w.@?$]*)\s*:(?!:)')
_MAX_PASSES = 100
_MAX_OUTPUT = 1 << 28       # bytes; a typo in resb/times/org must not eat the host's memory


class Assembler:
    """Assembles source text; after ``assemble()``, ``labels`` maps every label
    and ``equ`` name to its value."""

    def __init__(self, bits=64, origin=0, symbols=None):
        if bits not in (16, 32, 64):
            raise ValueError(f'bits must be 16, 32 or 64, not {bits}')
        self.start_bits, self.start_origin = bits, origin
        self.symbols = dict(symbols or {})
        self.labels = {}

    # ------------------------------------------------------------- passes

    def assemble(self, source):
        lines = self._split_lines(source)
        self._prev, self._grown = {}, set()
        for _ in range(_MAX_PASSES):
            grown = len(self._grown)
            self._pass(lines, strict=False)
            if self._defs == self._prev and len(self._grown) == grown:
                out = self._pass(lines, strict=True)     # sizes settled: check everything
                self.labels = {name: value for name, (value, _) in self._defs.items()}
                return bytes(out)
            self._prev = self._defs
        raise AsmError(0, '', 'instruction sizes do not settle')

    @staticmethod
    def _split_lines(source):
        """(line number, text, labels, statement) for each non-empty line."""
        lines = []
        for lineno, raw in enumerate(source.splitlines(), 1):
            body, labels = _strip_comment(raw).strip(), []
            while (m := _LABEL.match(body)) and m.group(1).lower() not in _REGS:
                labels.append(m.group(1))
                body = body[m.end():].strip()
            if labels or body:
                lines.append((lineno, raw.strip(), labels, body))
        return lines

    def _pass(self, lines, strict):
        """One pass over the source; before the last, unknown names count as 0."""
        self.strict, self.bits = strict, self.start_bits
        self.origin, self.out = self.start_origin, bytearray()
        self._defs, self._scope, self._after_data = {}, '', False
        for index, (lineno, text, labels, body) in enumerate(lines):
            self._here = self.pc
            try:
                is_equ = body.split(None, 1)[:1] == ['equ']      # "name: equ 5"
                if is_equ and not labels:
                    raise _Fail('equ needs a name')
                for label in labels[:-1] if is_equ else labels:
                    self._define(label, self.pc, True)
                if is_equ:
                    self._define(labels[-1], *self._expr(body[3:]))
                elif body:
                    self._statement(body, (index, 0))
            except _Fail as e:
                raise AsmError(lineno, text, str(e)) from None
        return self.out

    @property
    def pc(self):
        return self.origin + len(self.out)

    def _define(self, name, value, reloc):
        if name.startswith('.'):
            name = self._scope + name
        elif reloc:
            self._scope = name
        if name in self._defs:
            raise _Fail(f"'{name}' is defined twice")
        self._defs[name] = (value, reloc)

    # -------------------------------------------------------- expressions

    def _expr(self, text):
        """(value, depends on a label address) of an expression."""
        self._unresolved = False
        toks = _tokens(text)
        if not toks:
            raise _Fail('missing expression')
        value, reloc, pos = self._binary(toks, 0, 0)
        if pos != len(toks):
            raise _Fail(f"unexpected '{toks[pos][1]}' in expression")
        return value, reloc

    def _binary(self, toks, pos, level):
        if level == len(_BINARY):
            return self._unary(toks, pos)
        a, ra, pos = self._binary(toks, pos, level + 1)
        while pos < len(toks) and toks[pos][0] == 'op' and toks[pos][1] in _BINARY[level]:
            op = toks[pos][1]
            b, rb, pos = self._binary(toks, pos + 1, level + 1)
            try:
                a = _BINARY[level][op](a, b)
            except _Fail:
                if self.strict:
                    raise
                a = 0       # a forward reference still counted as 0
            ra = (ra != rb) if op == '-' else (ra or rb)    # label - label is a number
        return a, ra, pos

    def _unary(self, toks, pos):
        if pos >= len(toks):
            raise _Fail('incomplete expression')
        kind, text = toks[pos]
        if kind == 'op' and text in '-+~':
            v, r, pos = self._unary(toks, pos + 1)
            return {'-': -v, '+': v, '~': ~v}[text], r, pos
        if kind == 'op' and text == '(':
            v, r, pos = self._binary(toks, pos + 1, 0)
            if pos >= len(toks) or toks[pos][1] != ')':
                raise _Fail("missing ')'")
            return v, r, pos + 1
        if kind == 'num':
            return _number(text), False, pos + 1
        if kind == 'chr':
            return int.from_bytes(text[1:-1].encode(), 'little'), False, pos + 1
        if kind == 'name':
            return (*self._symbol(text), pos + 1)
        raise _Fail(f"unexpected '{text}' in expression")

    def _symbol(self, name):
        if name in ('$', '$$'):
            return (self._here if name == '$' else self.start_origin), True
        if name.lower() in _REGS:
            raise _Fail(f"register '{name}' not allowed here")
        full = self._scope + name if name.startswith('.') else name
        for table in (self._defs, self._prev):      # this pass, else the last one
            if full in table:
                return table[full]
        if name in self.symbols:
            return self.symbols[name], False
        if self.strict:
            raise _Fail(f"undefined symbol '{name}'")
        self._unresolved = True
        return 0, True

    # ----------------------------------------------------------- operands

    def _operand(self, text):
        t, size, kw = text.strip(), None, None
        while (m := re.match(r'([a-zA-Z]+)(?![\w.])\s*', t)):
            word = m.group(1).lower()
            if word in _SIZES:
                size = _SIZES[word]
            elif word in ('short', 'near', 'far'):
                kw = word
            elif word != 'ptr':
                break
            t = t[m.end():]
        if not t:
            raise _Fail(f"missing operand in '{text}'")
        if t.lower() in _REGS:
            if size or kw:
                raise _Fail(f"size keyword before register '{t}'")
            return _REGS[t.lower()]
        seg = None
        if (m := re.match(r'([c-gs]s)\s*:\s*(?=\[)', t, re.I)) and m.group(1).lower() in _REGS:
            seg, t = _REGS[m.group(1).lower()], t[m.end():]
        if t.startswith('['):
            return self._memory(t, size, seg, kw)
        parts = _split_top(t, ':')
        if len(parts) == 2:
            return Far(self._expr(parts[0])[0], self._expr(parts[1])[0], size)
        value, reloc = self._expr(t)
        return Imm(value, reloc, size, kw, self._unresolved)

    def _memory(self, t, size, seg, kw):
        if not t.endswith(']'):
            raise _Fail(f"bad memory operand '{t}'")
        inner, rel = t[1:-1].strip(), False
        if (m := re.match(r'rel\b\s*', inner, re.I)):
            inner, rel = inner[m.end():], True
        if (m := re.match(r'([c-gs]s)\s*:', inner, re.I)) and m.group(1).lower() in _REGS:
            seg, inner = _REGS[m.group(1).lower()], inner[m.end():]
        mem, disp, regs = Mem(size=size, rel=rel, seg=seg, kw=kw), [], []
        for sign, term in self._terms(_tokens(inner)):
            names = [tok for kind, tok in term if kind == 'name' and tok.lower() in _REGS]
            if not names:
                disp.append(sign + ' ' + ' '.join(tok for _, tok in term))
                continue
            reg = _REGS[names[0].lower()]
            if reg.kind != 'gpr' or sign != '+' or len(names) > 1:
                raise _Fail(f"bad address '{inner}'")
            if len(term) == 1:
                regs.append((reg, None))
            elif len(term) == 3 and term[1][1] == '*':
                regs.append((reg, self._expr(term[2 if term[0][1] == names[0] else 0][1])[0]))
            else:
                raise _Fail(f"bad address '{inner}'")
        scaled = [r for r in regs if r[1] is not None]
        if len(regs) > 2 or len(scaled) > 1:
            raise _Fail(f"too many registers in '{inner}'")
        plain = [r for r, s in regs if s is None]
        if scaled:      # a scaled register is the index, a plain one the base
            mem.index, mem.scale = scaled[0]
        elif len(plain) == 2:
            mem.index = plain.pop()
        mem.base = plain[0] if plain else None
        if mem.scale not in (1, 2, 4, 8):
            raise _Fail(f'scale must be 1, 2, 4 or 8, not {mem.scale}')
        if disp:
            mem.disp, mem.reloc = self._expr(' '.join(disp))
        return mem

    @staticmethod
    def _terms(toks):
        """Split address tokens into (sign, tokens) terms at top-level + and -."""
        terms, cur, sign, depth = [], [], '+', 0
        for kind, tok in toks:
            depth += (tok == '(') - (tok == ')') if kind == 'op' else 0
            if (kind == 'op' and tok in '+-' and depth == 0 and cur
                    and not (cur[-1][0] == 'op' and cur[-1][1] != ')')):
                terms.append((sign, cur))
                cur, sign = [], tok
            else:
                cur.append((kind, tok))
        return terms + [(sign, cur)] if cur else terms

    # --------------------------------------------------------- statements

    def _statement(self, body, key):
        self._key, self._here = key, self.pc    # jump growth key; the address '$' names
        words = body.split(None, 1)
        head, rest = words[0].lower(), (words[1] if len(words) > 1 else '').strip()
        if head.startswith('[') and body.endswith(']'):      # NASM's [bits 16]
            return self._statement(body[1:-1].strip(), key)
        if rest[:4].lower() == 'equ ' or rest.lower() == 'equ':
            return self._define(words[0], *self._expr(rest[3:]))
        if head in _DATA or head in _RES:
            return self._data(rest, head)
        if head in ('bits', 'org', 'align', 'times'):
            return getattr(self, '_dir_' + head)(rest)
        self._rep = self._lock = None
        while head in _PREFIXES:
            if head == 'lock':
                self._lock = 0xF0
            else:
                self._rep = _PREFIXES[head]
            if not rest:
                raise _Fail('prefix without an instruction')
            words = rest.split(None, 1)
            head, rest = words[0].lower(), (words[1] if len(words) > 1 else '').strip()
        handler = _HANDLERS.get(head)
        if handler is None:
            raise _Fail(f"unknown instruction '{head}'")
        ops = [self._operand(t) for t in _split_top(rest)] if rest else []
        self.out += handler[0](self, head, ops, *handler[1:])
        self._after_data = False

    def _dir_bits(self, rest):
        bits = self._expr(rest)[0]
        if bits not in (16, 32, 64):
            raise _Fail('bits must be 16, 32 or 64')
        self.bits = bits

    def _dir_org(self, rest):
        where = self._expr(rest)[0]
        if not self.out:
            self.origin = self.start_origin = where
        elif where >= self.pc:
            self._pad(where - self.pc, 0)
        elif self.strict:
            raise _Fail(f'org {where:#x} is behind the current address {self.pc:#x}')

    def _dir_align(self, rest):
        args = _split_top(rest)
        n = self._expr(args[0])[0]
        if n <= 0 or n & (n - 1):
            raise _Fail('align needs a power of two')
        fill = self._expr(args[1])[0] if len(args) > 1 else (0 if self._after_data else 0x90)
        self._pad(-self.pc % n, fill)

    def _pad(self, count, fill):
        if count < 0 or len(self.out) + count > _MAX_OUTPUT:
            raise _Fail(f'size {count} out of range')
        self.out += bytes([fill & 0xFF]) * count

    def _data(self, rest, head):
        """db/dw/dd/dq lists and resb/resw/resd/resq reservations."""
        if head in _RES:
            self._pad(self._expr(rest)[0] * _RES[head], 0)
        for item in _split_top(rest) if head in _DATA else ():
            width = _DATA[head]
            if len(item) >= 2 and item[0] == item[-1] and item[0] in '\'"':
                raw = item[1:-1].encode()      # UTF-8
                self.out += raw + bytes(-len(raw) % width)
            else:
                self.out += self._imm(self._expr(item)[0], width * 8)
        self._after_data = True

    def _dir_times(self, rest):
        for m in re.finditer(r'\S+', rest):     # the count ends where a statement starts
            w = m.group().lower()
            if w in _HANDLERS or w in _PREFIXES or w in _DATA or w in _RES:
                count, stmt = self._expr(rest[:m.start()])[0], rest[m.start():]
                break
        else:
            raise _Fail('times without a statement')
        if not 0 <= count <= _MAX_OUTPUT:
            raise _Fail(f'repeat count {count} out of range')
        for n in range(count):
            self._statement(stmt, (self._key[0], n))

    # ----------------------------------------------------------- encoding

    def _imm(self, value, bits):
        """`value` as a little-endian field of `bits` bits, signed or unsigned."""
        if not _fits(value, bits) and self.strict:
            raise _Fail(f'value {value:#x} does not fit in {bits} bits')
        return (value & ((1 << bits) - 1)).to_bytes(bits // 8, 'little')

    def _simm(self, value, bits):
        """A signed field: displacement, relative target, imm32 sign-extended to 64."""
        value = _signed(value, 64) if 0 <= value < 1 << 64 else value
        if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)) and self.strict:
            raise _Fail(f'value {value:#x} does not fit in a signed {bits}-bit field')
        return (value & ((1 << bits) - 1)).to_bytes(bits // 8, 'little')

    def _immz(self, imm, size):
        """The immediate of a `size`-bit operation; 64-bit ones take a sign-extended imm32."""
        return self._simm(imm.value, 32) if size == 64 else self._imm(imm.value, size)

    def _fits8(self, imm, size):
        """Whether the sign-extended imm8 form carries `imm` for a `size`-bit operation."""
        if imm.reloc:
            return False        # a label gets the full field, as GNU as gives it
        if not _fits(imm.value, size):
            if self.strict:
                raise _Fail(f'value {imm.value:#x} does not fit in {size} bits')
            return False
        return -128 <= _signed(imm.value, size) <= 127

    def _imm8(self, imm, size):
        return bytes([_signed(imm.value, size) & 0xFF])

    def _address(self, m, regfield):
        """ModRM (with `regfield`), SIB and displacement of memory operand `m`.

        Returns (bytes, REX.X/B bits, needs 0x67, RIP fixup or None)."""
        regs = [r for r in (m.base, m.index) if r]
        asize = regs[0].size if regs else None
        if any(r.size != asize for r in regs):
            raise _Fail('address registers of different sizes')
        if asize is None:       # [disp]: the mode's size, 32 beyond 64K in bits 16
            asize = 32 if self.bits == 16 and not _fits(m.disp, 16) else self.bits
        if asize not in ((32, 64) if self.bits == 64 else (16, 32)):
            raise _Fail(f'{asize}-bit address registers not usable in bits {self.bits}')
        if m.rel and (self.bits != 64 or regs):
            raise _Fail('rel needs bits 64 and no registers')
        if asize == 16:
            return self._address16(m, regfield) + (asize != self.bits, None)
        base, index, d = m.base, m.index, m.disp
        if index is not None and index.num == 4:
            raise _Fail(f"'{index.name}' cannot be an index register")
        modrm = lambda mod, rm: bytes([mod << 6 | regfield << 3 | rm])
        sib = lambda b: bytes([{1: 0, 2: 1, 4: 2, 8: 3}[m.scale] << 6
                               | (index.num & 7 if index else 4) << 3 | b])
        rex = (index.num >> 3 << 1 if index else 0) | (base.num >> 3 if base else 0)
        disp32 = self._simm(d, 32) if asize == 64 else self._imm(d, 32)
        if m.rel:           # disp32 from the end of the instruction, patched by _emit
            return modrm(0, 5) + bytes(4), 0, False, (1, d)
        if base is None:    # absolute; in bits 64 with a SIB, as mod 0 rm 5 is RIP there
            if index is None and self.bits != 64:
                return modrm(0, 5) + disp32, rex, asize != self.bits, None
            return modrm(0, 4) + sib(5) + disp32, rex, asize != self.bits, None
        if m.reloc or not -128 <= _signed(d, asize) <= 127:
            mod, tail = 2, disp32
        elif d == 0 and base.num & 7 != 5:      # [ebp]/[r13] need a disp8 of 0
            mod, tail = 0, b''
        else:
            mod, tail = 1, self._simm(_signed(d, asize), 8)
        if index is None and base.num & 7 != 4:     # [esp]/[r12] need a SIB
            return modrm(mod, base.num & 7) + tail, rex, asize != self.bits, None
        return modrm(mod, 4) + sib(base.num & 7) + tail, rex, asize != self.bits, None

    _RM16 = {('bx', 'si'): 0, ('bx', 'di'): 1, ('bp', 'si'): 2, ('bp', 'di'): 3,
             ('si',): 4, ('di',): 5, ('bp',): 6, ('bx',): 7}

    def _address16(self, m, regfield):
        """16-bit ModRM forms: [bx+si], [bp+di], [si], [bp+disp], [disp16]..."""
        if m.scale != 1:
            raise _Fail('16-bit addresses have no scale')
        names = tuple(sorted((r.name for r in (m.base, m.index) if r),
                             key=lambda n: n not in ('bx', 'bp')))
        d = m.disp
        if not names:
            return bytes([6 | regfield << 3]) + self._imm(d, 16), 0
        if names not in self._RM16:
            raise _Fail(f"[{'+'.join(names)}] is not a 16-bit address form")
        rm = self._RM16[names]
        if m.reloc or not -128 <= _signed(d, 16) <= 127:
            return bytes([0x80 | regfield << 3 | rm]) + self._imm(d, 16), 0
        if d == 0 and rm != 6:      # rm 6 with mod 0 is [disp16], so [bp] takes a disp8
            return bytes([regfield << 3 | rm]), 0
        return bytes([0x40 | regfield << 3 | rm]) + self._simm(_signed(d, 16), 8), 0

    @staticmethod
    def _override(m):
        """The segment override of `m`; None when it names the default segment."""
        stack = m.base is not None and m.base.name in ('bp', 'sp', 'ebp', 'esp', 'rbp', 'rsp')
        return m.seg if m.seg is not None and m.seg.name != ('ss' if stack else 'ds') else None

    def _emit(self, op, rm=None, reg=0, size=None, imm=b'', mand=None, w=False,
              d64=False, opreg=None, seg=None, p67=False):
        """One instruction: prefixes, REX, opcode, ModRM/SIB/displacement, immediate.

        `size` is the operand size (8/16/32/64) that decides 0x66 and REX.W;
        `d64` marks instructions whose operand size defaults to 64 in long mode;
        `opreg` is a register added to the opcode's low 3 bits (push r, bswap);
        `mand` a mandatory SSE prefix."""
        if size == 64:
            if self.bits != 64:
                raise _Fail('64-bit operands need bits 64')
            w = w or not d64
        elif size == 32 and d64 and self.bits == 64:
            raise _Fail('32-bit operand not encodable in 64-bit mode')
        rex, need_rex, high = 8 if w else 0, False, False
        for r in (reg, rm, opreg):      # spl..dil and r8b.. need a REX; ah..bh forbid one
            if _gpr(r) and r.size == 8:
                high |= r.name in _HIGH8
                need_rex |= r.num >= 4 and r.name not in _HIGH8
        regnum = reg.num if isinstance(reg, Reg) else reg
        rex |= regnum >> 3 << 2
        op, body, rip = bytearray(op), b'', None
        if opreg is not None:
            op[-1] += opreg.num & 7
            rex |= opreg.num >> 3
        if isinstance(rm, Reg):
            body = bytes([0xC0 | (regnum & 7) << 3 | rm.num & 7])
            rex |= rm.num >> 3
        elif isinstance(rm, Mem):
            body, xb, p67, rip = self._address(rm, regnum & 7)
            rex, seg = rex | xb, self._override(rm)
        if (rex or need_rex) and self.bits != 64:
            raise _Fail('r8-r15, spl/bpl/sil/dil and REX need bits 64')
        if (rex or need_rex) and high:
            raise _Fail('ah/bh/ch/dh cannot be used with a REX prefix')
        pre = bytearray()       # in GNU as's order: segment, 67, 66, F2/F3, F0, REX
        if seg is not None:
            pre.append(_SEG_PREFIX[seg.num])
        if p67:
            pre.append(0x67)
        if size in (16, 32) and (size == 16) != (self.bits == 16) or mand == 0x66:
            pre.append(0x66)
        pre += bytes(p for p in (self._rep, mand if mand != 0x66 else None, self._lock) if p)
        if rex or need_rex:
            pre.append(0x40 | rex)
        code = pre + op + body + imm
        if rip is not None:
            at = len(pre) + len(op) + rip[0]
            code[at:at + 4] = self._simm(rip[1] - (self.pc + len(code)), 32)
        return bytes(code)

    # ------------------------------------------------------- instructions

    @staticmethod
    def _count(ops, *counts):
        if len(ops) not in counts:
            raise _Fail(f"takes {' or '.join(map(str, counts))} operand(s), not {len(ops)}")
        return ops

    @staticmethod
    def _size(*ops):
        """The operand size the operands agree on; fails when none gives one."""
        sizes = {o.size for o in ops if isinstance(o, (Reg, Mem, Imm)) and o.size}
        if len(sizes) > 1:
            raise _Fail('operand sizes differ')
        if not sizes:
            raise _Fail('operand size not specified (use byte/word/dword/qword)')
        return sizes.pop()

    @staticmethod
    def _need(ok, what='invalid operands'):
        if not ok:
            raise _Fail(what)

    def _i_simple(self, mn, ops):
        self._count(ops, 0)
        self._need(not (mn in _NOT64 and self.bits == 64), f'{mn} is not valid in bits 64')
        op, size, d64 = (_SIMPLE[mn] + (None, False))[:3]
        return self._emit(bytes.fromhex(op), size=size, d64=d64)

    def _rm_reg(self, op, dst, src, size):
        """`op r/m, reg` (op+1 unless byte-sized), or `op+2 reg, r/m` from memory."""
        if _gpr(src) and _rm(dst):
            return self._emit([op + (size != 8)], rm=dst, reg=src, size=size)
        self._need(_gpr(dst) and isinstance(src, Mem))
        return self._emit([op + 2 + (size != 8)], rm=src, reg=dst, size=size)

    def _i_alu(self, mn, ops, n):
        dst, src = self._count(ops, 2)
        size = self._size(dst, src)
        if not isinstance(src, Imm):
            return self._rm_reg(8 * n, dst, src, size)
        self._need(_rm(dst))
        if size == 8:
            if _acc(dst):
                return self._emit([4 + 8 * n], size=8, imm=self._imm(src.value, 8))
            return self._emit([0x80], rm=dst, reg=n, size=8, imm=self._imm(src.value, 8))
        if self._fits8(src, size):
            return self._emit([0x83], rm=dst, reg=n, size=size, imm=self._imm8(src, size))
        if _acc(dst):
            return self._emit([5 + 8 * n], size=size, imm=self._immz(src, size))
        return self._emit([0x81], rm=dst, reg=n, size=size, imm=self._immz(src, size))

    def _i_mov(self, mn, ops):
        dst, src = self._count(ops, 2)
        kinds = {_kind(dst), _kind(src)}
        if 'seg' in kinds:
            return self._mov_seg(dst, src)
        if 'cr' in kinds:
            gpr, cr = (src, dst) if _kind(dst) == 'cr' else (dst, src)
            self._need(_gpr(gpr) and gpr.size == (64 if self.bits == 64 else 32),
                       'control registers move to/from a 32-bit (bits 64: 64-bit) register')
            return self._emit([0x0F, 0x22 if cr is dst else 0x20], rm=gpr, reg=cr)
        size = self._size(dst, src)
        if isinstance(src, Imm):
            if _gpr(dst) and size == 64:     # imm32 sign-extended if it fits, else imm64
                if src.reloc or not -(1 << 31) <= _signed(src.value, 64) < (1 << 31):
                    return self._emit([0xB8], opreg=dst, size=64, imm=self._imm(src.value, 64))
            elif _gpr(dst):
                return self._emit([0xB0 if size == 8 else 0xB8], opreg=dst, size=size,
                                  imm=self._imm(src.value, size))
            self._need(_rm(dst))
            return self._emit([0xC6 + (size != 8)], rm=dst, size=size, imm=self._immz(src, size))
        for acc, mem, op in ((dst, src, 0xA0), (src, dst, 0xA2)):   # al/ax/eax <-> [moffs]
            if (self.bits != 64 and _acc(acc) and isinstance(mem, Mem)
                    and not (mem.base or mem.index or mem.rel)):
                asize = self.bits if _fits(mem.disp, self.bits) else 32
                return self._emit([op + (size != 8)], size=size, seg=self._override(mem),
                                  p67=asize != self.bits, imm=self._imm(mem.disp, asize))
        return self._rm_reg(0x88, dst, src, size)

    def _mov_seg(self, dst, src):
        if _kind(dst) == 'seg':
            self._need(dst.name != 'cs', 'cs cannot be loaded with mov')
            self._need(_gpr(src) and src.size > 8 or isinstance(src, Mem))
            return self._emit([0x8E], rm=src, reg=dst)
        self._need(_gpr(dst) and dst.size > 8 or isinstance(dst, Mem))
        size = dst.size if _gpr(dst) and dst.size < 64 else None
        return self._emit([0x8C], rm=dst, reg=src, size=size)

    def _i_movx(self, mn, ops):
        """movzx/movsx r, r/m8|r/m16 and movsx/movsxd r64, r/m32."""
        dst, src = self._count(ops, 2)
        self._need(_gpr(dst) and dst.size > 8 and _rm(src))
        self._need(src.size, 'operand size not specified (use byte/word)')
        if src.size == 32 and mn != 'movzx':
            self._need(dst.size == 64)
            return self._emit([0x63], rm=src, reg=dst, size=64)
        self._need(mn != 'movsxd' and src.size < dst.size)
        op = (0xB6 if mn == 'movzx' else 0xBE) + (src.size == 16)
        return self._emit([0x0F, op], rm=src, reg=dst, size=dst.size)

    def _i_test(self, mn, ops):
        a, b = self._count(ops, 2)
        size = self._size(a, b)
        if isinstance(b, Imm):
            imm = self._imm(b.value, 8) if size == 8 else self._immz(b, size)
            if _acc(a):
                return self._emit([0xA8 + (size != 8)], size=size, imm=imm)
            self._need(_rm(a))
            return self._emit([0xF6 + (size != 8)], rm=a, reg=0, size=size, imm=imm)
        a, b = (b, a) if isinstance(b, Mem) else (a, b)
        self._need(_gpr(b) and _rm(a))
        return self._emit([0x84 + (size != 8)], rm=a, reg=b, size=size)

    def _i_xchg(self, mn, ops):
        a, b = self._count(ops, 2)
        size = self._size(a, b)
        if _gpr(a) and _gpr(b) and size > 8 and (_acc(a) or _acc(b)):
            other = b if _acc(a) else a
            if not (other.num == 0 and size == 32 and self.bits == 64):  # 90 is nop there
                return self._emit([0x90], opreg=other, size=size)
        a, b = (b, a) if isinstance(b, Mem) else (a, b)
        self._need(_gpr(b) and _rm(a))
        return self._emit([0x86 + (size != 8)], rm=a, reg=b, size=size)

    def _i_unary(self, mn, ops, n):
        """not/neg/mul/div/idiv/imul r/m: F6/F7 /n; inc/dec: FE/FF /n."""
        (o,) = self._count(ops, 1)
        self._need(_rm(o))
        size, incdec = self._size(o), mn in ('inc', 'dec')
        if incdec and _gpr(o) and size in (16, 32) and self.bits != 64:    # 40+r / 48+r are REX
            return self._emit([0x40 + 8 * n], opreg=o, size=size)         # prefixes in bits 64
        return self._emit([(0xFE if incdec else 0xF6) + (size != 8)], rm=o, reg=n, size=size)

    def _i_imul(self, mn, ops):
        self._count(ops, 1, 2, 3)
        if len(ops) == 1:
            return self._i_unary(mn, ops, 5)
        if len(ops) == 2 and not isinstance(ops[1], Imm):
            return self._i_reg_rm(mn, ops, _REG_RM['imul'])
        dst, src, imm = ops if len(ops) == 3 else (ops[0], ops[0], ops[1])
        self._need(_gpr(dst) and dst.size > 8 and _rm(src) and isinstance(imm, Imm))
        size = self._size(dst, src)
        if self._fits8(imm, size):
            return self._emit([0x6B], rm=src, reg=dst, size=size, imm=self._imm8(imm, size))
        return self._emit([0x69], rm=src, reg=dst, size=size, imm=self._immz(imm, size))

    def _i_reg_rm(self, mn, ops, op):
        """bsf/bsr/cmovcc/imul reg, r/m; lea reg, m (of any size)."""
        dst, src = self._count(ops, 2)
        self._need(_gpr(dst) and dst.size > 8 and _rm(src))
        if mn == 'lea':
            self._need(isinstance(src, Mem), 'lea needs a memory operand')
        size = dst.size if mn == 'lea' else self._size(dst, src)
        return self._emit(bytes.fromhex(op), rm=src, reg=dst, size=size)

    def _i_rm_reg(self, mn, ops, op):
        """cmpxchg/xadd r/m, reg."""
        a, b = self._count(ops, 2)
        self._need(_gpr(b) and _rm(a))
        size = self._size(a, b)
        return self._emit(bytes.fromhex(op)[:-1] + bytes([int(op[-2:], 16) - (size == 8)]),
                          rm=a, reg=b, size=size)

    def _i_group(self, mn, ops, op, ext, regs):
        """One r/m operand with an opcode extension: lgdt, ltr, setcc, cmpxchg16b..."""
        (o,) = self._count(ops, 1)
        if regs is None:
            self._need(isinstance(o, Mem), f'{mn} needs a memory operand')
        else:
            self._need(isinstance(o, Mem) or _gpr(o) and (o.size == 8) == (regs == 8))
        size = o.size if regs == 'sized' and _gpr(o) else None
        return self._emit(bytes.fromhex(op), rm=o, reg=ext, size=size, w=mn == 'cmpxchg16b')

    def _i_shift(self, mn, ops, n):
        dst, count = self._count(ops, 1, 2) if len(ops) == 2 else (*self._count(ops, 1), Imm(1))
        self._need(_rm(dst))
        size = self._size(dst)
        if isinstance(count, Imm) and count.value == 1 and not count.reloc:
            return self._emit([0xD0 + (size != 8)], rm=dst, reg=n, size=size)
        if isinstance(count, Imm):
            return self._emit([0xC0 + (size != 8)], rm=dst, reg=n, size=size,
                              imm=self._imm(count.value, 8))
        self._need(count == _REGS['cl'], 'shift count must be an immediate or cl')
        return self._emit([0xD2 + (size != 8)], rm=dst, reg=n, size=size)

    def _i_bt(self, mn, ops, k):
        a, b = self._count(ops, 2)
        self._need(_rm(a))
        if isinstance(b, Imm):
            return self._emit([0x0F, 0xBA], rm=a, reg=4 + k, size=self._size(a),
                              imm=self._imm(b.value, 8))
        self._need(_gpr(b))
        return self._emit([0x0F, 0xA3 + 8 * k], rm=a, reg=b, size=self._size(a, b))

    def _i_bswap(self, mn, ops):
        (o,) = self._count(ops, 1)
        self._need(_gpr(o) and o.size >= 32)
        return self._emit([0x0F, 0xC8], opreg=o, size=o.size)

    _PUSH_SEG = {'es': '06', 'cs': '0e', 'ss': '16', 'ds': '1e', 'fs': '0fa0', 'gs': '0fa8'}
    _POP_SEG = {'es': '07', 'ss': '17', 'ds': '1f', 'fs': '0fa1', 'gs': '0fa9'}

    def _i_push(self, mn, ops):
        """push/pop of registers, memory, segment registers; push imm."""
        (o,) = self._count(ops, 1)
        push = mn == 'push'
        if _kind(o) == 'seg':
            table = self._PUSH_SEG if push else self._POP_SEG
            self._need(o.name in table and (self.bits != 64 or o.name in ('fs', 'gs')),
                       f'cannot {mn} {o.name} in bits {self.bits}')
            return self._emit(bytes.fromhex(table[o.name]))
        size = o.size or self.bits
        if isinstance(o, Imm) and push:
            if self._fits8(o, size):
                return self._emit([0x6A], size=size, d64=True, imm=self._imm8(o, size))
            imm = self._imm(o.value, 16) if size == 16 else self._immz(o, size)
            return self._emit([0x68], size=size, d64=True, imm=imm)
        self._need(size > 8 and _rm(o))
        if _gpr(o):
            return self._emit([0x50 if push else 0x58], opreg=o, size=size, d64=True)
        return self._emit([0xFF if push else 0x8F], rm=o, reg=6 if push else 0, size=size, d64=True)

    def _i_jump(self, mn, ops, cc=None):
        """jmp/call (relative, indirect, far) and jcc; rel8 when the target is in reach."""
        (t,) = self._count(ops, 1)
        call = mn == 'call'
        if isinstance(t, Far):
            self._need(cc is None and self.bits != 64, 'far pointers need bits 16 or 32')
            size = t.size or (16 if self.bits == 16 else 32)
            return self._emit([0x9A if call else 0xEA], size=size,
                              imm=self._imm(t.off, size) + self._imm(t.seg, 16))
        if not isinstance(t, Imm):
            self._need(cc is None and _rm(t), 'invalid jump target')
            if isinstance(t, Mem) and t.kw == 'far':        # FF /3, /5: m16:16/32
                return self._emit([0xFF], rm=t, reg=3 if call else 5)
            return self._emit([0xFF], rm=t, reg=2 if call else 4, size=t.size or self.bits, d64=True)
        if not call and t.kw != 'near' and self._key not in self._grown:
            rel = t.value - (self.pc + 2)
            if -128 <= rel <= 127 or t.unresolved or t.kw == 'short' and not self.strict:
                return self._emit([0xEB if cc is None else 0x70 + cc], imm=self._simm(rel, 8))
            self._need(t.kw != 'short', f'short jump out of range ({rel})')
            self._grown.add(self._key)      # near from now on
        op = [0xE8] if call else [0xE9] if cc is None else [0x0F, 0x80 + cc]
        width = 16 if self.bits == 16 else 32
        rel = t.value - (self.pc + len(op) + width // 8)
        return self._emit(op, imm=self._simm(_signed(rel, 16) if width == 16 else rel, width))

    def _i_loop(self, mn, ops):
        (t,) = self._count(ops, 1)
        self._need(isinstance(t, Imm), f'{mn} needs a label')
        op, asize = _LOOP[mn]
        asize = asize or self.bits
        self._need(asize in ((32, 64) if self.bits == 64 else (16, 32)),
                   f'{mn} is not valid in bits {self.bits}')
        rel = t.value - (self.pc + 2 + (asize != self.bits))
        self._need(-128 <= rel <= 127 or not self.strict, f'{mn} target out of range ({rel})')
        return self._emit([op], p67=asize != self.bits, imm=self._simm(rel, 8))

    def _i_ret(self, mn, ops):
        far = mn == 'retf'
        if not self._count(ops, 0, 1):
            return self._emit([0xCB if far else 0xC3])
        self._need(isinstance(ops[0], Imm))
        return self._emit([0xCA if far else 0xC2], imm=self._imm(ops[0].value, 16))

    def _i_int(self, mn, ops):
        (n,) = self._count(ops, 1)
        self._need(isinstance(n, Imm))
        if n.value == 3:
            return self._emit([0xCC])       # as GNU as encodes it
        return self._emit([0xCD], imm=self._imm(n.value, 8))

    def _i_inout(self, mn, ops):
        acc, port = self._count(ops, 2)[::1 if mn == 'in' else -1]
        self._need(_acc(acc) and acc.size <= 32, f'{mn} needs al, ax or eax')
        op = (0xE4 if mn == 'in' else 0xE6) + (acc.size != 8)
        if isinstance(port, Imm):
            self._need(0 <= port.value <= 255, 'port number must be 0-255 (else use dx)')
            return self._emit([op], size=acc.size, imm=bytes([port.value]))
        self._need(port == _REGS['dx'], 'port must be an imm8 or dx')
        return self._emit([op + 8], size=acc.size)

    # ------------------------------------------------------------------ SSE

    def _i_sse_mov(self, mn, ops):
        if mn == 'movsd' and not ops:
            return self._i_simple(mn, ops)      # the string instruction
        dst, src = self._count(ops, 2)
        mand, load, store = _SSE_MOV[mn]
        if _kind(dst) == 'xmm' and _xmm_rm(src):
            return self._emit([0x0F, load], rm=src, reg=dst, mand=mand)
        self._need(isinstance(dst, Mem) and _kind(src) == 'xmm')
        return self._emit([0x0F, store], rm=dst, reg=src, mand=mand)

    def _i_sse_op(self, mn, ops):
        if mn == 'pshufd':
            dst, src, imm = self._count(ops, 3)
            self._need(isinstance(imm, Imm))
            mand, op, imm = 0x66, 0x70, self._imm(imm.value, 8)
        else:
            (dst, src), (mand, op), imm = self._count(ops, 2), _SSE_OP[mn], b''
        self._need(_kind(dst) == 'xmm' and _xmm_rm(src))
        return self._emit([0x0F, op], rm=src, reg=dst, mand=mand, imm=imm)

    def _i_movdq(self, mn, ops):
        """movd/movq between xmm registers, general registers and memory."""
        dst, src = self._count(ops, 2)
        if mn == 'movq' and _kind(dst) == 'xmm' and _xmm_rm(src):
            return self._emit([0x0F, 0x7E], rm=src, reg=dst, mand=0xF3)
        if mn == 'movq' and isinstance(dst, Mem) and _kind(src) == 'xmm':
            return self._emit([0x0F, 0xD6], rm=dst, reg=src, mand=0x66)
        xmm, other, op = (dst, src, 0x6E) if _kind(dst) == 'xmm' else (src, dst, 0x7E)
        self._need(_kind(xmm) == 'xmm' and _rm(other))
        size = other.size or 32
        self._need(size == 64 or size == 32 and mn == 'movd')
        return self._emit([0x0F, op], rm=other, reg=xmm, mand=0x66, w=size == 64)

    def _i_sse_cvt(self, mn, ops):
        dst, src = self._count(ops, 2)
        mand, op, to_xmm = _SSE_CVT[mn]
        if to_xmm:
            self._need(_kind(dst) == 'xmm' and _rm(src))
            return self._emit([0x0F, op], rm=src, reg=dst, mand=mand, w=self._size(src) == 64)
        self._need(_gpr(dst) and dst.size >= 32 and _xmm_rm(src))
        return self._emit([0x0F, op], rm=src, reg=dst, mand=mand, w=dst.size == 64)


def _make_handlers():
    """mnemonic -> (Assembler method, extra arguments)."""
    a = Assembler
    table = {mn: (a._i_simple,) for mn in _SIMPLE}
    for group, method in ((_ALU, a._i_alu), (_SHIFT, a._i_shift), (_UNARY, a._i_unary),
                          (_BT, a._i_bt), (_REG_RM, a._i_reg_rm), (_RM_REG, a._i_rm_reg)):
        table.update({mn: (method, arg) for mn, arg in group.items()})
    table.update({mn: (a._i_group, *arg) for mn, arg in _GROUP.items()})
    table.update({mn: (a._i_loop,) for mn in _LOOP})
    table.update({mn: (a._i_sse_mov,) for mn in _SSE_MOV})
    table.update({mn: (a._i_sse_op,) for mn in list(_SSE_OP) + ['pshufd']})
    table.update({mn: (a._i_sse_cvt,) for mn in _SSE_CVT})
    table.update({'j' + cc: (a._i_jump, n) for cc, n in _CC.items()})
    table.update({
        'mov': (a._i_mov,), 'movzx': (a._i_movx,), 'movsx': (a._i_movx,),
        'movsxd': (a._i_movx,), 'test': (a._i_test,), 'xchg': (a._i_xchg,),
        'inc': (a._i_unary, 0), 'dec': (a._i_unary, 1),
        'imul': (a._i_imul,), 'push': (a._i_push,), 'pop': (a._i_push,),
        'jmp': (a._i_jump,), 'call': (a._i_jump,), 'ret': (a._i_ret,), 'retf': (a._i_ret,),
        'int': (a._i_int,), 'in': (a._i_inout,), 'out': (a._i_inout,),
        'bswap': (a._i_bswap,), 'movd': (a._i_movdq,), 'movq': (a._i_movdq,),
    })
    return table


_HANDLERS = _make_handlers()


def assemble_with_labels(source, bits=64, origin=0, symbols=None):
    """Assemble `source`; returns (code, {label or equ name: value})."""
    asm = Assembler(bits, origin, symbols)
    return asm.assemble(source), asm.labels


def assemble(source, bits=64, origin=0, symbols=None):
    """Assemble Intel-syntax `source`, starting in `bits` mode at address `origin`.

    `symbols` gives values to extra names used in expressions.  Raises AsmError
    naming the line and what is wrong."""
    return assemble_with_labels(source, bits, origin, symbols)[0]
