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
                jmp 0x08:pm32
        bits 32
        pm32:   mov ax, 0x10
                ...
    ''', origin=0x7c00)

Encodings follow the Intel 64 and IA-32 Architectures Software Developer's
Manual, Volume 2: chapter 2 (instruction format, legacy and REX prefixes,
ModRM/SIB tables 2-1 to 2-3, RIP-relative addressing), the instruction
pages of chapters 3-4 and the opcode map of appendix A.  Where the manual
allows two encodings, the one GNU as picks is used, so the test suite can
compare the bytes with GNU as.

Syntax: one statement per line; ``;`` or ``#`` starts a comment; labels
``name:`` (``.name`` is local to the last plain label); numbers in decimal,
``0x`` hex, ``0b`` binary, ``NNh`` hex or ``'A'`` characters; expressions
with ``+ - * / % << >> & ^ | ~`` and parentheses over numbers, labels,
``symbols``, ``$`` (this statement's address) and ``$$`` (the origin).
Directives: ``bits 16|32|64``, ``org N`` (sets the origin before any output,
pads with zeros up to N after), ``align N[, fill]`` (pads with nops after
code, zeros after data), ``db/dw/dd/dq`` (lists; quoted strings), ``resb/
resw/resd/resq N``, ``times N <statement>`` and ``NAME equ EXPR``.

Sizes are settled by repeated passes: jumps start short (rel8) and grow to
near once their target is out of range, never back, so the passes converge.
Immediates and displacements that involve a label get the full-width field
(as GNU as does for relocatable values); plain numbers get the shortest.
"""

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
    size: int       # bits
    num: int        # register number as encoded (0-15)


@dataclass
class Imm:
    value: int
    reloc: bool = False         # depends on a label address
    size: int = None            # from a size keyword (push dword 5)
    kw: str = None              # short / near / far
    unresolved: bool = False    # a name not (yet) defined in this pass


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
    names = {8: 'al cl dl bl ah ch dh bh', 16: 'ax cx dx bx sp bp si di',
             32: 'eax ecx edx ebx esp ebp esi edi',
             64: 'rax rcx rdx rbx rsp rbp rsi rdi'}
    for size, row in names.items():
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
_HIGH8 = {'ah', 'ch', 'dh', 'bh'}       # not encodable with a REX prefix
_SEG_PREFIX = [0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65]      # es cs ss ds fs gs
_SIZES = {'byte': 8, 'word': 16, 'dword': 32, 'qword': 64, 'fword': 48,
          'tword': 80, 'oword': 128, 'xmmword': 128}

# ------------------------------------------------------------ opcode tables

_ALU = {'add': 0, 'or': 1, 'adc': 2, 'sbb': 3, 'and': 4, 'sub': 5, 'xor': 6, 'cmp': 7}
_SHIFT = {'rol': 0, 'ror': 1, 'rcl': 2, 'rcr': 3, 'shl': 4, 'sal': 4, 'shr': 5, 'sar': 7}
_UNARY = {'not': 2, 'neg': 3, 'mul': 4, 'div': 6, 'idiv': 7}     # F6/F7 /n
_CC = {'o': 0, 'no': 1, 'b': 2, 'c': 2, 'nae': 2, 'ae': 3, 'nb': 3, 'nc': 3,
       'e': 4, 'z': 4, 'ne': 5, 'nz': 5, 'be': 6, 'na': 6, 'a': 7, 'nbe': 7,
       's': 8, 'ns': 9, 'p': 10, 'pe': 10, 'np': 11, 'po': 11, 'l': 12,
       'nge': 12, 'ge': 13, 'nl': 13, 'le': 14, 'ng': 14, 'g': 15, 'nle': 15}
_BT = {'bt': 0, 'bts': 1, 'btr': 2, 'btc': 3}       # 0F A3+8k /r, 0F BA /4+k ib
_DESC = {'sgdt': 0, 'sidt': 1, 'lgdt': 2, 'lidt': 3, 'invlpg': 7}    # 0F 01 /n
_SYSSEG = {'sldt': 0, 'str': 1, 'lldt': 2, 'ltr': 3, 'verr': 4, 'verw': 5}  # 0F 00 /n
_LOOP = {'loopne': (0xE0, None), 'loopnz': (0xE0, None), 'loope': (0xE1, None),
         'loopz': (0xE1, None), 'loop': (0xE2, None), 'jcxz': (0xE3, 16),
         'jecxz': (0xE3, 32), 'jrcxz': (0xE3, 64)}    # rel8, counter size

# Operand-less instructions: mnemonic -> (opcode hex, operand size, default-64).
_SIMPLE = {
    'nop': ('90',), 'hlt': ('f4',), 'cli': ('fa',), 'sti': ('fb',),
    'cld': ('fc',), 'std': ('fd',), 'clc': ('f8',), 'stc': ('f9',),
    'cmc': ('f5',), 'int3': ('cc',), 'into': ('ce',), 'int1': ('f1',),
    'leave': ('c9',), 'iret': ('cf',), 'iretw': ('cf', 16), 'iretd': ('cf', 32),
    'iretq': ('cf', 64), 'pushf': ('9c',), 'pushfw': ('9c', 16, True),
    'pushfd': ('9c', 32, True), 'pushfq': ('9c', 64, True), 'popf': ('9d',),
    'popfw': ('9d', 16, True), 'popfd': ('9d', 32, True), 'popfq': ('9d', 64, True),
    'pusha': ('60',), 'popa': ('61',), 'pushad': ('60', 32), 'popad': ('61', 32),
    'cbw': ('98', 16), 'cwde': ('98', 32), 'cdqe': ('98', 64),
    'cwd': ('99', 16), 'cdq': ('99', 32), 'cqo': ('99', 64),
    'lahf': ('9f',), 'sahf': ('9e',), 'cpuid': ('0fa2',), 'rdtsc': ('0f31',),
    'rdtscp': ('0f01f9',), 'rdmsr': ('0f32',), 'wrmsr': ('0f30',),
    'rdpmc': ('0f33',), 'syscall': ('0f05',), 'sysret': ('0f07',),
    'sysretq': ('0f07', 64), 'sysenter': ('0f34',), 'sysexit': ('0f35',),
    'pause': ('f390',), 'ud2': ('0f0b',), 'wbinvd': ('0f09',), 'invd': ('0f08',),
    'clac': ('0f01ca',), 'stac': ('0f01cb',), 'swapgs': ('0f01f8',),
    'mfence': ('0faef0',), 'lfence': ('0faee8',), 'sfence': ('0faef8',),
    'fninit': ('dbe3',), 'finit': ('9bdbe3',), 'fwait': ('9b',), 'wait': ('9b',),
    'rsm': ('0faa',), 'clts': ('0f06',), 'monitor': ('0f01c8',), 'mwait': ('0f01c9',),
}
for _name, _op in (('movs', 0xA4), ('cmps', 0xA6), ('stos', 0xAA),
                   ('lods', 0xAC), ('scas', 0xAE), ('ins', 0x6C), ('outs', 0x6E)):
    _SIMPLE[_name + 'b'] = (f'{_op:02x}', 8)
    for _suffix, _size in (('w', 16), ('d', 32), ('q', 64)):
        if not (_name in ('ins', 'outs') and _size == 64):
            _SIMPLE[_name + _suffix] = (f'{_op + 1:02x}', _size)
_NOT64 = {'into', 'pusha', 'popa', 'pushad', 'popad'}

# SSE moves: mnemonic -> (mandatory prefix, load opcode, store opcode).
_SSE_MOV = {'movdqa': (0x66, 0x6F, 0x7F), 'movdqu': (0xF3, 0x6F, 0x7F),
            'movaps': (None, 0x28, 0x29), 'movups': (None, 0x10, 0x11),
            'movapd': (0x66, 0x28, 0x29), 'movupd': (0x66, 0x10, 0x11),
            'movsd': (0xF2, 0x10, 0x11), 'movss': (0xF3, 0x10, 0x11)}
# SSE xmm, xmm/m operations: mnemonic -> (mandatory prefix, opcode).
_SSE_OP = {
    'paddb': (0x66, 0xFC), 'paddw': (0x66, 0xFD), 'paddd': (0x66, 0xFE),
    'paddq': (0x66, 0xD4), 'psubb': (0x66, 0xF8), 'psubw': (0x66, 0xF9),
    'psubd': (0x66, 0xFA), 'psubq': (0x66, 0xFB), 'pxor': (0x66, 0xEF),
    'pand': (0x66, 0xDB), 'pandn': (0x66, 0xDF), 'por': (0x66, 0xEB),
    'pcmpeqb': (0x66, 0x74), 'pcmpeqd': (0x66, 0x76), 'pmuludq': (0x66, 0xF4),
    'addps': (None, 0x58), 'addpd': (0x66, 0x58), 'addss': (0xF3, 0x58), 'addsd': (0xF2, 0x58),
    'mulps': (None, 0x59), 'mulpd': (0x66, 0x59), 'mulss': (0xF3, 0x59), 'mulsd': (0xF2, 0x59),
    'subps': (None, 0x5C), 'subpd': (0x66, 0x5C), 'subss': (0xF3, 0x5C), 'subsd': (0xF2, 0x5C),
    'divps': (None, 0x5E), 'divpd': (0x66, 0x5E), 'divss': (0xF3, 0x5E), 'divsd': (0xF2, 0x5E),
    'sqrtps': (None, 0x51), 'sqrtpd': (0x66, 0x51), 'sqrtss': (0xF3, 0x51), 'sqrtsd': (0xF2, 0x51),
    'xorps': (None, 0x57), 'xorpd': (0x66, 0x57), 'andps': (None, 0x54),
    'andpd': (0x66, 0x54), 'orps': (None, 0x56), 'orpd': (0x66, 0x56),
    'ucomisd': (0x66, 0x2E), 'comisd': (0x66, 0x2F), 'ucomiss': (None, 0x2E),
    'comiss': (None, 0x2F), 'cvtsd2ss': (0xF2, 0x5A), 'cvtss2sd': (0xF3, 0x5A),
    'punpcklqdq': (0x66, 0x6C), 'unpcklpd': (0x66, 0x14),
}
# xmm <-> general register conversions: mnemonic -> (prefix, opcode, xmm is dest).
_SSE_CVT = {'cvtsi2sd': (0xF2, 0x2A, True), 'cvtsi2ss': (0xF3, 0x2A, True),
            'cvttsd2si': (0xF2, 0x2C, False), 'cvtsd2si': (0xF2, 0x2D, False),
            'cvttss2si': (0xF3, 0x2C, False), 'cvtss2si': (0xF3, 0x2D, False)}
_PREFIXES = {'lock': 0xF0, 'rep': 0xF3, 'repe': 0xF3, 'repz': 0xF3,
             'repne': 0xF2, 'repnz': 0xF2}

# --------------------------------------------------------------- expressions

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>0[xX][0-9a-fA-F_]+|0[bB][01_]+|[0-9][0-9a-fA-F_]*[hH](?![\w.])|[0-9][0-9_]*)
  | (?P<chr>'[^']*'|"[^"]*")
  | (?P<name>\$\$|\$|[A-Za-z_.@?][\w.@?$]*)
  | (?P<op><<|>>|[-+*/%|&^~()])
  )""", re.X)
_BINARY = [('|',), ('^',), ('&',), ('<<', '>>'), ('+', '-'), ('*', '/', '%')]


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
    if t.startswith('0x'):
        return int(t[2:], 16)
    if t.startswith('0b'):
        return int(t[2:], 2)
    if t.endswith('h'):
        return int(t[:-1], 16)
    return int(t, 10)


def _split_top(text, sep=','):
    """Split on `sep` outside brackets, parentheses and quotes."""
    parts, depth, quote, cur = [], 0, None, ''
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch in '[(':
            depth += 1
        elif ch in '])':
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ''
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


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
    return -(1 << (bits - 1)) <= value < (1 << bits)


def _signed(value, bits):
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


_LABEL = re.compile(r'\s*([A-Za-z_.@?][\w.@?$]*)\s*:(?!:)')
_MAX_PASSES = 100


class Assembler:
    """Assembles a source text; after ``assemble()``, ``labels`` maps every
    label and ``equ`` name to its value."""

    def __init__(self, bits=64, origin=0, symbols=None):
        if bits not in (16, 32, 64):
            raise ValueError(f'bits must be 16, 32 or 64, not {bits}')
        self.start_bits, self.start_origin = bits, origin
        self.symbols = dict(symbols or {})
        self.labels = {}

    # ------------------------------------------------------------ passes

    def assemble(self, source):
        lines = self._split_lines(source)
        self._prev, self._grown = {}, set()
        for _ in range(_MAX_PASSES):
            grown = len(self._grown)
            self._pass(lines, strict=False)
            if self._defs == self._prev and len(self._grown) == grown:
                out = self._pass(lines, strict=True)
                self.labels = {name: value for name, (value, _) in self._defs.items()}
                return bytes(out)
            self._prev = self._defs
        raise AsmError(0, '', 'instruction sizes do not settle')

    @staticmethod
    def _split_lines(source):
        lines = []
        for lineno, raw in enumerate(source.splitlines(), 1):
            body, labels = _strip_comment(raw).strip(), []
            while (m := _LABEL.match(body)) and body[:m.end(1)].lower() not in _REGS:
                labels.append(m.group(1))
                body = body[m.end():].strip()
            if labels or body:
                lines.append((lineno, raw.strip(), labels, body))
        return lines

    def _pass(self, lines, strict):
        self.strict, self.bits = strict, self.start_bits
        self.origin, self.out = self.start_origin, bytearray()
        self._defs, self._scope, self._after_data = {}, '', False
        for index, (lineno, text, labels, body) in enumerate(lines):
            try:
                is_equ = body.split(None, 1)[:1] == ['equ']
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
        """Value of an expression and whether it depends on a label address."""
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
            if op in '/%' and b == 0:
                if self.strict:
                    raise _Fail('division by zero')
                b = 1
            a = {'|': a | b, '^': a ^ b, '&': a & b, '+': a + b, '-': a - b, '*': a * b,
                 '<<': a << b if op == '<<' else 0, '>>': a >> b if op == '>>' else 0,
                 '/': int(a / b) if op == '/' else 0,
                 '%': a - b * int(a / b) if op == '%' else 0}[op]
            ra = (ra != rb) if op == '-' else (ra or rb)    # label - label is a constant
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
            return int.from_bytes(text[1:-1].encode('latin-1'), 'little'), False, pos + 1
        if kind == 'name':
            v, r = self._symbol(text)
            return v, r, pos + 1
        raise _Fail(f"unexpected '{text}' in expression")

    def _symbol(self, name):
        if name == '$':
            return self.pc, True
        if name == '$$':
            return self.start_origin, True
        if name.lower() in _REGS:
            raise _Fail(f"register '{name}' not allowed here")
        full = self._scope + name if name.startswith('.') else name
        for table in (self._defs, self._prev):
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
        while (m := re.match(r'([a-zA-Z]+)\b\s*', t)):
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
        m = re.match(r'(es|cs|ss|ds|fs|gs)\s*:\s*(?=\[)', t, re.I)
        if m:
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
        if (m := re.match(r'(es|cs|ss|ds|fs|gs)\s*:', inner, re.I)):
            seg, inner = _REGS[m.group(1).lower()], inner[m.end():]
        mem = Mem(size=size, rel=rel, seg=seg, kw=kw)
        disp, scaled = [], None
        for sign, term in self._terms(_tokens(inner)):
            names = [tok for kind, tok in term if kind == 'name' and tok.lower() in _REGS]
            if not names:
                disp.append(sign + ' ' + ' '.join(tok for _, tok in term))
                continue
            reg = _REGS[names[0].lower()]
            if reg.kind != 'gpr' or sign != '+' or len(names) > 1:
                raise _Fail(f"bad address '{inner}'")
            if len(term) == 1:
                if mem.base is None:
                    mem.base = reg
                elif mem.index is None:
                    mem.index = reg
                else:
                    raise _Fail(f"too many registers in '{inner}'")
            elif len(term) == 3 and term[1][1] == '*' and scaled is None:
                other = term[2] if term[0][1] == names[0] else term[0]
                mem.scale = self._expr(other[1])[0]
                scaled = reg
            else:
                raise _Fail(f"bad address '{inner}'")
        if scaled:
            if mem.index is not None:
                raise _Fail(f"too many registers in '{inner}'")
            mem.index = scaled
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
        if cur:
            terms.append((sign, cur))
        return terms

    # --------------------------------------------------------- statements

    def _statement(self, body, key):
        self._key = key
        head, _, rest = body.partition(' ')
        head, rest = head.lower(), rest.strip()
        if head.startswith('[') and body.endswith(']'):      # NASM's [bits 16]
            return self._statement(body[1:-1].strip(), key)
        if rest.split(None, 1)[:1] and rest.split(None, 1)[0].lower() == 'equ':
            return self._define(body.split(None, 1)[0], *self._expr(rest.split(None, 1)[1]))
        directive = getattr(self, '_dir_' + head, None)
        if directive:
            return directive(rest)
        rep = lock = None
        while head in _PREFIXES:
            if head == 'lock':
                lock = 0xF0
            else:
                rep = _PREFIXES[head]
            head, _, rest = rest.partition(' ')
            head, rest = head.lower(), rest.strip()
        if not head:
            raise _Fail('prefix without an instruction')
        handler = _HANDLERS.get(head)
        if handler is None:
            raise _Fail(f"unknown instruction '{head}'")
        self._rep, self._lock = rep, lock
        ops = [self._operand(t) for t in _split_top(rest)] if rest else []
        code = handler[0](self, head, ops, *handler[1:])
        self.out += code
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
            self.out += bytes(where - self.pc)
        elif self.strict:
            raise _Fail(f'org {where:#x} is behind the current address {self.pc:#x}')

    def _dir_align(self, rest):
        args = _split_top(rest)
        n = self._expr(args[0])[0]
        if n <= 0 or n & (n - 1):
            raise _Fail('align needs a power of two')
        fill = self._expr(args[1])[0] if len(args) > 1 else (0 if self._after_data else 0x90)
        self.out += bytes([fill & 0xFF]) * (-self.pc % n)

    def _data(self, rest, width):
        for item in _split_top(rest):
            if len(item) >= 2 and item[0] == item[-1] and item[0] in '\'"':
                raw = item[1:-1].encode('latin-1')
                self.out += raw + bytes(-len(raw) % width)
            else:
                self.out += self._imm(self._expr(item)[0], width * 8)
        self._after_data = True

    def _dir_db(self, rest):
        self._data(rest, 1)

    def _dir_dw(self, rest):
        self._data(rest, 2)

    def _dir_dd(self, rest):
        self._data(rest, 4)

    def _dir_dq(self, rest):
        self._data(rest, 8)

    def _reserve(self, rest, width):
        count = self._expr(rest)[0]
        if count < 0:
            raise _Fail('negative size')
        self.out += bytes(count * width)
        self._after_data = True

    def _dir_resb(self, rest):
        self._reserve(rest, 1)

    def _dir_resw(self, rest):
        self._reserve(rest, 2)

    def _dir_resd(self, rest):
        self._reserve(rest, 4)

    def _dir_resq(self, rest):
        self._reserve(rest, 8)

    def _dir_times(self, rest):
        words = rest.split()
        for i, word in enumerate(words):       # the count ends where a statement starts
            if word.lower() in _HANDLERS or word.lower() in _PREFIXES or hasattr(self, '_dir_' + word.lower()):
                count = self._expr(' '.join(words[:i]))[0]
                stmt = rest[rest.index(word, len(' '.join(words[:i]))):]
                break
        else:
            raise _Fail('times without a statement')
        if count < 0:
            raise _Fail('negative repeat count')
        index = self._key[0]
        for n in range(count):
            self._statement(stmt, (index, n))

    # ----------------------------------------------------------- encoding

    def _imm(self, value, bits):
        """`value` as a little-endian field of `bits` bits, signed or unsigned."""
        if not _fits(value, bits) and self.strict:
            raise _Fail(f'value {value:#x} does not fit in {bits} bits')
        return (value & ((1 << bits) - 1)).to_bytes(bits // 8, 'little')

    def _simm(self, value, bits):
        """A signed field (displacements, rel, imm32 sign-extended to 64)."""
        if value >= 1 << 63:
            value -= 1 << 64
        if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)) and self.strict:
            raise _Fail(f'value {value:#x} does not fit in a signed {bits}-bit field')
        return (value & ((1 << bits) - 1)).to_bytes(bits // 8, 'little')

    def _immz(self, imm, size):
        """The immediate of a `size`-bit operation: 64-bit ones take a sign-extended imm32."""
        if size == 64:
            return self._simm(imm.value, 32)
        return self._imm(imm.value, size)

    def _fits8(self, imm, size):
        """Whether the sign-extended imm8 form carries `imm` for a `size`-bit operation."""
        if imm.reloc:
            return False        # a label gets the full field, as GNU as gives it
        if not _fits(imm.value, size):
            if self.strict:
                raise _Fail(f'value {imm.value:#x} does not fit in {size} bits')
            return False
        return -128 <= _signed(imm.value, size) <= 127

    def _address(self, m, regfield):
        """ModRM (with `regfield`), SIB and displacement of memory operand `m`.

        Returns (bytes, REX.X/B bits, needs 0x67, RIP fixup or None)."""
        regs = [r for r in (m.base, m.index) if r]
        asize = regs[0].size if regs else None
        if any(r.size != asize for r in regs):
            raise _Fail('address registers of different sizes')
        if asize is None:       # [disp]: the mode's size, 32 if beyond 64K in bits 16
            asize = 32 if self.bits == 16 and not _fits(m.disp, 16) else self.bits
        if asize not in ((32, 64) if self.bits == 64 else (16, 32)):
            raise _Fail(f'{asize}-bit address registers not usable in bits {self.bits}')
        p67 = asize != self.bits
        if m.rel and (self.bits != 64 or regs):
            raise _Fail('rel needs bits 64 and no registers')
        if asize == 16:
            return self._address16(m, regfield) + (p67, None)
        mod_rm = lambda mod, rm: bytes([mod << 6 | regfield << 3 | rm])
        base, index, d = m.base, m.index, m.disp
        rex = (index.num >> 3 << 1 if index else 0) | (base.num >> 3 if base else 0)
        disp32 = self._simm(d, 32) if asize == 64 else self._imm(d, 32)
        sib = lambda b: bytes([{1: 0, 2: 1, 4: 2, 8: 3}[m.scale] << 6
                               | (index.num & 7 if index else 4) << 3 | b])
        if index is not None and index.num == 4:
            raise _Fail(f"'{index.name}' cannot be an index register")
        if m.rel:
            return mod_rm(0, 5) + bytes(4), 0, False, (1, d)
        if base is None:
            if index is None and self.bits != 64:
                return mod_rm(0, 5) + disp32, rex, p67, None
            return mod_rm(0, 4) + sib(5) + disp32, rex, p67, None
        if m.reloc or not -128 <= _signed(d, asize) <= 127:
            mod, tail = 2, disp32
        elif d == 0 and base.num & 7 != 5:
            mod, tail = 0, b''
        else:
            mod, tail = 1, self._simm(_signed(d, asize), 8)
        if index is None and base.num & 7 != 4:
            return mod_rm(mod, base.num & 7) + tail, rex, p67, None
        return mod_rm(mod, 4) + sib(base.num & 7) + tail, rex, p67, None

    def _override(self, m):
        """The segment override of `m`, None when it names the default segment."""
        stack = m.base is not None and m.base.name in ('bp', 'sp', 'ebp', 'esp', 'rbp', 'rsp')
        if m.seg is not None and m.seg.name != ('ss' if stack else 'ds'):
            return m.seg
        return None

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
        if d == 0 and rm != 6:
            return bytes([regfield << 3 | rm]), 0
        return bytes([0x40 | regfield << 3 | rm]) + self._simm(_signed(d, 16), 8), 0

    def _emit(self, op, rm=None, reg=0, size=None, imm=b'', mand=None, w=False,
              d64=False, opreg=None, seg=None, p67=False):
        """One instruction: prefixes, REX, opcode, ModRM/SIB/displacement, immediate.

        `size` is the operand size (8/16/32/64) that decides 0x66 and REX.W;
        `d64` marks instructions whose operand size defaults to 64 in long mode;
        `opreg` is a register added to the opcode's low 3 bits (push r, bswap)."""
        if size == 64:
            if self.bits != 64:
                raise _Fail('64-bit operands need bits 64')
            w = w or not d64
        elif size == 32 and d64 and self.bits == 64:
            raise _Fail('32-bit operand not encodable in 64-bit mode')
        rex, need_rex, high = 8 if w else 0, False, False
        for r in (reg, rm, opreg):
            if isinstance(r, Reg) and r.kind == 'gpr' and r.size == 8:
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
            rex, seg = rex | xb, self._override(rm) or seg
        if (rex or need_rex) and self.bits != 64:
            raise _Fail('r8-r15, spl/bpl/sil/dil and REX need bits 64')
        if (rex or need_rex) and high:
            raise _Fail('ah/bh/ch/dh cannot be used with a REX prefix')
        pre = bytearray()
        if seg is not None:
            pre.append(_SEG_PREFIX[seg.num])
        if p67:
            pre.append(0x67)
        if size in (16, 32) and (size == 16) != (self.bits == 16) or mand == 0x66:
            pre.append(0x66)
        for p in (self._rep, mand if mand != 0x66 else None, self._lock):
            if p:
                pre.append(p)
        if rex or need_rex:
            pre.append(0x40 | rex)
        code = pre + op + body + imm
        if rip is not None:         # RIP-relative: counts from the next instruction
            at = len(pre) + len(op) + rip[0]
            code[at:at + 4] = self._simm(rip[1] - (self.pc + len(code)), 32)
        return bytes(code)

    # ------------------------------------------------------- instructions

    @staticmethod
    def _count(ops, *counts):
        if len(ops) not in counts:
            raise _Fail(f"takes {' or '.join(map(str, counts))} operand(s), not {len(ops)}")

    @staticmethod
    def _size(*ops):
        """The operand size the operands agree on; fails when none is given."""
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

    def _imm8(self, imm, size):
        return bytes([_signed(imm.value, size) & 0xFF])

    def _rm_reg(self, op, dst, src, size):
        """The `op r/m, reg` form (op+1 for non-byte), or `op+2 reg, r/m` for a memory source."""
        wide = size != 8
        if _gpr(src) and (_gpr(dst) or isinstance(dst, Mem)):
            return self._emit([op + wide], rm=dst, reg=src, size=size)
        self._need(_gpr(dst) and isinstance(src, Mem))
        return self._emit([op + 2 + wide], rm=src, reg=dst, size=size)

    def _i_simple(self, mn, ops):
        self._count(ops, 0)
        if mn in _NOT64 and self.bits == 64:
            raise _Fail(f'{mn} is not valid in 64-bit mode')
        op, size, d64 = (_SIMPLE[mn] + (None, False))[:3]
        return self._emit(bytes.fromhex(op), size=size, d64=d64)

    def _i_alu(self, mn, ops, n):
        self._count(ops, 2)
        dst, src = ops
        size = self._size(dst, src)
        if isinstance(src, Imm):
            self._need(_gpr(dst) or isinstance(dst, Mem))
            if size == 8:
                if _acc(dst):
                    return self._emit([4 + 8 * n], size=8, imm=self._imm(src.value, 8))
                return self._emit([0x80], rm=dst, reg=n, size=8, imm=self._imm(src.value, 8))
            if self._fits8(src, size):
                return self._emit([0x83], rm=dst, reg=n, size=size, imm=self._imm8(src, size))
            if _acc(dst):
                return self._emit([5 + 8 * n], size=size, imm=self._immz(src, size))
            return self._emit([0x81], rm=dst, reg=n, size=size, imm=self._immz(src, size))
        return self._rm_reg(8 * n, dst, src, size)

    def _i_mov(self, mn, ops):
        self._count(ops, 2)
        dst, src = ops
        kinds = {o.kind for o in ops if isinstance(o, Reg)}
        if 'seg' in kinds:
            return self._mov_seg(dst, src)
        if 'cr' in kinds:
            gpr, cr = (src, dst) if _kind(dst) == 'cr' else (dst, src)
            self._need(_gpr(gpr) and gpr.size == (64 if self.bits == 64 else 32),
                       'control registers move to/from a 32-bit (64 in bits 64) register')
            return self._emit([0x0F, 0x22 if cr is dst else 0x20], rm=gpr, reg=cr)
        size = self._size(dst, src)
        if isinstance(src, Imm):
            if _gpr(dst):
                if size == 64 and (src.reloc or not -(1 << 31) <= _signed(src.value, 64) < (1 << 31)):
                    return self._emit([0xB8], opreg=dst, size=64, imm=self._imm(src.value, 64))
                if size != 64:
                    return self._emit([0xB0 if size == 8 else 0xB8], opreg=dst, size=size,
                                      imm=self._imm(src.value, size))
            self._need(_gpr(dst) or isinstance(dst, Mem))
            return self._emit([0xC6 + (size != 8)], rm=dst, reg=0, size=size,
                              imm=self._immz(src, size))
        if self.bits != 64:     # mov al/ax/eax <-> [moffs]
            for acc, mem, op in ((dst, src, 0xA0), (src, dst, 0xA2)):
                if _acc(acc) and isinstance(mem, Mem) and not (mem.base or mem.index):
                    asize = self.bits if _fits(mem.disp, self.bits) else 32
                    return self._emit([op + (size != 8)], size=size, seg=mem.seg,
                                      p67=asize != self.bits, imm=self._imm(mem.disp, asize))
        return self._rm_reg(0x88, dst, src, size)

    def _mov_seg(self, dst, src):
        if _kind(dst) == 'seg':
            self._need(dst.name != 'cs', 'cs cannot be loaded with mov')
            self._need(_gpr(src) and src.size > 8 or isinstance(src, Mem))
            return self._emit([0x8E], rm=src, reg=dst)
        self._need(_gpr(dst) and dst.size > 8 or isinstance(dst, Mem))
        return self._emit([0x8C], rm=dst, reg=src, size=dst.size if _gpr(dst) and dst.size < 64 else None)

    def _i_movx(self, mn, ops):
        """movzx/movsx r, r/m8|r/m16; movsx/movsxd r64, r/m32."""
        self._count(ops, 2)
        dst, src = ops
        self._need(_gpr(dst) and dst.size > 8 and (_gpr(src) or isinstance(src, Mem)))
        if src.size is None:
            raise _Fail('operand size not specified (use byte/word)')
        if src.size == 32 and mn != 'movzx':
            self._need(dst.size == 64)
            return self._emit([0x63], rm=src, reg=dst, size=64)
        self._need(mn != 'movsxd' and src.size < dst.size)
        op = (0xB6 if mn == 'movzx' else 0xBE) + (src.size == 16)
        return self._emit([0x0F, op], rm=src, reg=dst, size=dst.size)

    def _i_lea(self, mn, ops):
        self._count(ops, 2)
        self._need(_gpr(ops[0]) and ops[0].size > 8 and isinstance(ops[1], Mem))
        return self._emit([0x8D], rm=ops[1], reg=ops[0], size=ops[0].size)

    def _i_test(self, mn, ops):
        self._count(ops, 2)
        a, b = ops
        size = self._size(a, b)
        if isinstance(b, Imm):
            imm = self._imm(b.value, 8) if size == 8 else self._immz(b, size)
            if _acc(a):
                return self._emit([0xA8 + (size != 8)], size=size, imm=imm)
            self._need(_gpr(a) or isinstance(a, Mem))
            return self._emit([0xF6 + (size != 8)], rm=a, reg=0, size=size, imm=imm)
        if isinstance(b, Mem):
            a, b = b, a
        self._need(_gpr(b) and (_gpr(a) or isinstance(a, Mem)))
        return self._emit([0x84 + (size != 8)], rm=a, reg=b, size=size)

    def _i_xchg(self, mn, ops):
        self._count(ops, 2)
        a, b = ops
        size = self._size(a, b)
        if _gpr(a) and _gpr(b) and size > 8 and (_acc(a) or _acc(b)):
            other = b if _acc(a) else a
            if not (other.num == 0 and size == 32 and self.bits == 64):  # 90 is nop there
                return self._emit([0x90], opreg=other, size=size)
        if isinstance(b, Mem):
            a, b = b, a
        self._need(_gpr(b) and (_gpr(a) or isinstance(a, Mem)))
        return self._emit([0x86 + (size != 8)], rm=a, reg=b, size=size)

    def _i_unary(self, mn, ops, n):
        self._count(ops, 1)
        (o,) = ops
        self._need(_gpr(o) or isinstance(o, Mem))
        size = self._size(o)
        return self._emit([0xF6 + (size != 8)], rm=o, reg=n, size=size)

    def _i_incdec(self, mn, ops, n):
        self._count(ops, 1)
        (o,) = ops
        self._need(_gpr(o) or isinstance(o, Mem))
        size = self._size(o)
        if _gpr(o) and size in (16, 32) and self.bits != 64:    # the one-byte 40+r / 48+r
            return self._emit([0x40 + 8 * n], opreg=o, size=size)
        return self._emit([0xFE + (size != 8)], rm=o, reg=n, size=size)

    def _i_imul(self, mn, ops):
        self._count(ops, 1, 2, 3)
        if len(ops) == 1:
            return self._i_unary(mn, ops, 5)
        if len(ops) == 2 and isinstance(ops[1], Imm):
            ops = [ops[0], ops[0], ops[1]]
        dst, src = ops[:2]
        self._need(_gpr(dst) and dst.size > 8 and (_gpr(src) or isinstance(src, Mem)))
        size = self._size(dst, src)
        if len(ops) == 2:
            return self._emit([0x0F, 0xAF], rm=src, reg=dst, size=size)
        imm = ops[2]
        self._need(isinstance(imm, Imm))
        if self._fits8(imm, size):
            return self._emit([0x6B], rm=src, reg=dst, size=size, imm=self._imm8(imm, size))
        return self._emit([0x69], rm=src, reg=dst, size=size, imm=self._immz(imm, size))

    def _i_shift(self, mn, ops, n):
        self._count(ops, 1, 2)
        dst, count = ops[0], ops[1] if len(ops) == 2 else Imm(1)
        self._need(_gpr(dst) or isinstance(dst, Mem))
        size, wide = self._size(dst), self._size(dst) != 8
        if isinstance(count, Imm) and count.value == 1 and not count.reloc:
            return self._emit([0xD0 + wide], rm=dst, reg=n, size=size)
        if isinstance(count, Imm):
            return self._emit([0xC0 + wide], rm=dst, reg=n, size=size, imm=self._imm(count.value, 8))
        self._need(count == _REGS['cl'], 'shift count must be an immediate or cl')
        return self._emit([0xD2 + wide], rm=dst, reg=n, size=size)

    _PUSH_SEG = {'es': '06', 'cs': '0e', 'ss': '16', 'ds': '1e', 'fs': '0fa0', 'gs': '0fa8'}
    _POP_SEG = {'es': '07', 'ss': '17', 'ds': '1f', 'fs': '0fa1', 'gs': '0fa9'}

    def _i_push(self, mn, ops):
        self._count(ops, 1)
        (o,) = ops
        push = mn == 'push'
        if _kind(o) == 'seg':
            table = self._PUSH_SEG if push else self._POP_SEG
            self._need(o.name in table and (self.bits != 64 or o.name in 'fsgs'),
                       f'cannot {mn} {o.name} in bits {self.bits}')
            return self._emit(bytes.fromhex(table[o.name]))
        size = o.size or self.bits
        if isinstance(o, Imm) and push:
            if self._fits8(o, size):
                return self._emit([0x6A], size=size, d64=True, imm=self._imm8(o, size))
            imm = self._imm(o.value, 16) if size == 16 else self._immz(o, size)
            return self._emit([0x68], size=size, d64=True, imm=imm)
        self._need(size > 8 and (_gpr(o) or isinstance(o, Mem)))
        if _gpr(o):
            return self._emit([0x50 if push else 0x58], opreg=o, size=size, d64=True)
        return self._emit([0xFF if push else 0x8F], rm=o, reg=6 if push else 0, size=size, d64=True)

    def _i_jump(self, mn, ops, cc=None):
        """jmp/call (relative, indirect, far) and jcc; rel8 when it reaches."""
        self._count(ops, 1)
        (t,) = ops
        call = mn == 'call'
        if isinstance(t, Far):
            self._need(cc is None and self.bits != 64, 'far pointers need bits 16 or 32')
            size = t.size or (16 if self.bits == 16 else 32)
            return self._emit([0x9A if call else 0xEA], size=size,
                              imm=self._imm(t.off, size) + self._imm(t.seg, 16))
        if isinstance(t, (Reg, Mem)):
            self._need(cc is None and (_gpr(t) or isinstance(t, Mem)), 'invalid jump target')
            far = getattr(t, 'kw', None) == 'far'
            ext = (2 if call else 4) + far                      # FF /2 /3 /4 /5
            size = t.size if _gpr(t) or not far else None
            return self._emit([0xFF], rm=t, reg=ext, size=size or (None if far else self.bits), d64=True)
        width = 16 if self.bits == 16 else 32
        short_ok = not call and t.kw != 'near' and self._key not in self._grown
        if short_ok:
            rel = t.value - (self.pc + 2)
            if -128 <= rel <= 127 or t.unresolved or not self.strict and t.kw == 'short':
                return self._emit([0xEB if cc is None else 0x70 + cc], imm=self._simm(rel, 8))
            if t.kw == 'short':
                raise _Fail(f'short jump out of range ({rel})')
            self._grown.add(self._key)
        op = [0xE8] if call else [0xE9] if cc is None else [0x0F, 0x80 + cc]
        rel = t.value - (self.pc + len(op) + width // 8)
        if width == 16:
            rel = _signed(rel, 16)      # IP wraps at 64K
        return self._emit(op, imm=self._simm(rel, width))

    def _i_loop(self, mn, ops):
        self._count(ops, 1)
        op, asize = _LOOP[mn]
        asize = asize or self.bits
        self._need(asize in ((32, 64) if self.bits == 64 else (16, 32)), f'{mn} is not valid in bits {self.bits}')
        extra = int(asize != self.bits)
        rel = ops[0].value - (self.pc + 2 + extra)
        if not -128 <= rel <= 127 and self.strict:
            raise _Fail(f'{mn} target out of range ({rel})')
        return self._emit([op], p67=bool(extra), imm=self._simm(rel, 8))

    def _i_ret(self, mn, ops):
        self._count(ops, 0, 1)
        far = mn == 'retf'
        if not ops:
            return self._emit([0xCB if far else 0xC3])
        return self._emit([0xCA if far else 0xC2], imm=self._imm(ops[0].value, 16))

    def _i_int(self, mn, ops):
        self._count(ops, 1)
        self._need(isinstance(ops[0], Imm))
        if ops[0].value == 3:
            return self._emit([0xCC])       # GNU as encodes int 3 as int3
        return self._emit([0xCD], imm=self._imm(ops[0].value, 8))

    def _i_inout(self, mn, ops):
        self._count(ops, 2)
        acc, port = ops if mn == 'in' else ops[::-1]
        self._need(_acc(acc) and acc.size <= 32, f'{mn} needs al, ax or eax')
        op = 0xE4 if mn == 'in' else 0xE6
        if isinstance(port, Imm):
            return self._emit([op + (acc.size != 8)], size=acc.size,
                              imm=self._imm(port.value & 0xFFFF if port.value < 256 else port.value, 8))
        self._need(port == _REGS['dx'], 'port must be an imm8 or dx')
        return self._emit([op + 8 + (acc.size != 8)], size=acc.size)

    def _i_bt(self, mn, ops, k):
        self._count(ops, 2)
        a, b = ops
        self._need(_gpr(a) or isinstance(a, Mem))
        if isinstance(b, Imm):
            return self._emit([0x0F, 0xBA], rm=a, reg=4 + k, size=self._size(a),
                              imm=self._imm(b.value, 8))
        self._need(_gpr(b))
        return self._emit([0x0F, 0xA3 + 8 * k], rm=a, reg=b, size=self._size(a, b))

    def _i_bsf(self, mn, ops):
        self._count(ops, 2)
        dst, src = ops
        self._need(_gpr(dst) and (_gpr(src) or isinstance(src, Mem)))
        return self._emit([0x0F, 0xBC if mn == 'bsf' else 0xBD], rm=src, reg=dst,
                          size=self._size(dst, src))

    def _i_xadd(self, mn, ops):
        """cmpxchg/xadd r/m, reg."""
        self._count(ops, 2)
        a, b = ops
        self._need(_gpr(b) and (_gpr(a) or isinstance(a, Mem)))
        size = self._size(a, b)
        return self._emit([0x0F, (0xB0 if mn == 'cmpxchg' else 0xC0) + (size != 8)],
                          rm=a, reg=b, size=size)

    def _i_cmpxchg8b(self, mn, ops):
        self._count(ops, 1)
        self._need(isinstance(ops[0], Mem))
        return self._emit([0x0F, 0xC7], rm=ops[0], reg=1, w=mn == 'cmpxchg16b')

    def _i_bswap(self, mn, ops):
        self._count(ops, 1)
        self._need(_gpr(ops[0]) and ops[0].size >= 32)
        return self._emit([0x0F, 0xC8], opreg=ops[0], size=ops[0].size)

    def _i_setcc(self, mn, ops, cc):
        self._count(ops, 1)
        o = ops[0]
        self._need(_gpr(o) and o.size == 8 or isinstance(o, Mem) and o.size in (None, 8))
        return self._emit([0x0F, 0x90 + cc], rm=o, reg=0)

    def _i_cmov(self, mn, ops, cc):
        self._count(ops, 2)
        dst, src = ops
        self._need(_gpr(dst) and dst.size > 8 and (_gpr(src) or isinstance(src, Mem)))
        return self._emit([0x0F, 0x40 + cc], rm=src, reg=dst, size=self._size(dst, src))

    def _i_desc(self, mn, ops, n):
        """lgdt/lidt/sgdt/sidt/invlpg [m]: 0F 01 /n."""
        self._count(ops, 1)
        self._need(isinstance(ops[0], Mem), f'{mn} needs a memory operand')
        return self._emit([0x0F, 0x01], rm=ops[0], reg=n)

    def _i_sysseg(self, mn, ops, n):
        """ltr/lldt/str/sldt/verr/verw r/m16: 0F 00 /n."""
        self._count(ops, 1)
        o = ops[0]
        self._need(_gpr(o) and o.size > 8 or isinstance(o, Mem))
        size = o.size if _gpr(o) and mn in ('str', 'sldt') else None
        return self._emit([0x0F, 0x00], rm=o, reg=n, size=size)

    # ------------------------------------------------------------------ SSE

    def _i_sse_mov(self, mn, ops):
        if mn == 'movsd' and not ops:
            return self._i_simple(mn, ops)      # the string instruction
        self._count(ops, 2)
        dst, src = ops
        mand, load, store = _SSE_MOV[mn]
        if _kind(dst) == 'xmm' and (_kind(src) == 'xmm' or isinstance(src, Mem)):
            return self._emit([0x0F, load], rm=src, reg=dst, mand=mand)
        self._need(isinstance(dst, Mem) and _kind(src) == 'xmm')
        return self._emit([0x0F, store], rm=dst, reg=src, mand=mand)

    def _i_sse_op(self, mn, ops):
        self._count(ops, 2)
        dst, src = ops
        self._need(_kind(dst) == 'xmm' and (_kind(src) == 'xmm' or isinstance(src, Mem)))
        mand, op = _SSE_OP[mn]
        return self._emit([0x0F, op], rm=src, reg=dst, mand=mand)

    def _i_pshufd(self, mn, ops):
        self._count(ops, 3)
        dst, src, imm = ops
        self._need(_kind(dst) == 'xmm' and (_kind(src) == 'xmm' or isinstance(src, Mem))
                   and isinstance(imm, Imm))
        return self._emit([0x0F, 0x70], rm=src, reg=dst, mand=0x66, imm=self._imm(imm.value, 8))

    def _i_movdq(self, mn, ops):
        """movd/movq between xmm and general registers or memory."""
        self._count(ops, 2)
        dst, src = ops
        if mn == 'movq' and _kind(dst) == 'xmm' and (_kind(src) == 'xmm' or isinstance(src, Mem)):
            return self._emit([0x0F, 0x7E], rm=src, reg=dst, mand=0xF3)
        if mn == 'movq' and isinstance(dst, Mem) and _kind(src) == 'xmm':
            return self._emit([0x0F, 0xD6], rm=dst, reg=src, mand=0x66)
        xmm, other, op = (dst, src, 0x6E) if _kind(dst) == 'xmm' else (src, dst, 0x7E)
        self._need(_kind(xmm) == 'xmm' and (_gpr(other) or isinstance(other, Mem)))
        size = other.size or (64 if mn == 'movq' else 32)
        self._need(size == (64 if mn == 'movq' else 32) or mn == 'movd' and size == 64)
        return self._emit([0x0F, op], rm=other, reg=xmm, mand=0x66, w=size == 64)

    def _i_sse_cvt(self, mn, ops):
        self._count(ops, 2)
        dst, src = ops
        mand, op, to_xmm = _SSE_CVT[mn]
        if to_xmm:
            self._need(_kind(dst) == 'xmm' and (_gpr(src) or isinstance(src, Mem)))
            size = self._size(src)
            return self._emit([0x0F, op], rm=src, reg=dst, mand=mand, w=size == 64)
        self._need(_gpr(dst) and dst.size >= 32 and (_kind(src) == 'xmm' or isinstance(src, Mem)))
        return self._emit([0x0F, op], rm=src, reg=dst, mand=mand, w=dst.size == 64)


def _kind(op):
    return op.kind if isinstance(op, Reg) else None


def _gpr(op):
    return isinstance(op, Reg) and op.kind == 'gpr'


def _acc(op):
    """al, ax, eax or rax: the accumulator that has short opcode forms."""
    return _gpr(op) and op.num == 0


def _make_handlers():
    a = Assembler
    table = {mn: (a._i_simple,) for mn in _SIMPLE}
    table.update({mn: (a._i_alu, n) for mn, n in _ALU.items()})
    table.update({mn: (a._i_shift, n) for mn, n in _SHIFT.items()})
    table.update({mn: (a._i_unary, n) for mn, n in _UNARY.items()})
    table.update({mn: (a._i_bt, n) for mn, n in _BT.items()})
    table.update({mn: (a._i_desc, n) for mn, n in _DESC.items()})
    table.update({mn: (a._i_sysseg, n) for mn, n in _SYSSEG.items()})
    table.update({mn: (a._i_loop,) for mn in _LOOP})
    table.update({mn: (a._i_sse_mov,) for mn in _SSE_MOV})
    table.update({mn: (a._i_sse_op,) for mn in _SSE_OP})
    table.update({mn: (a._i_sse_cvt,) for mn in _SSE_CVT})
    for cc, n in _CC.items():
        table['j' + cc] = (a._i_jump, n)
        table['set' + cc] = (a._i_setcc, n)
        table['cmov' + cc] = (a._i_cmov, n)
    table.update({
        'mov': (a._i_mov,), 'movzx': (a._i_movx,), 'movsx': (a._i_movx,),
        'movsxd': (a._i_movx,), 'lea': (a._i_lea,), 'test': (a._i_test,),
        'xchg': (a._i_xchg,), 'inc': (a._i_incdec, 0), 'dec': (a._i_incdec, 1),
        'imul': (a._i_imul,), 'push': (a._i_push,), 'pop': (a._i_push,),
        'jmp': (a._i_jump,), 'call': (a._i_jump,), 'ret': (a._i_ret,),
        'retf': (a._i_ret,), 'int': (a._i_int,), 'in': (a._i_inout,),
        'out': (a._i_inout,), 'bsf': (a._i_bsf,), 'bsr': (a._i_bsf,),
        'cmpxchg': (a._i_xadd,), 'xadd': (a._i_xadd,), 'cmpxchg8b': (a._i_cmpxchg8b,),
        'cmpxchg16b': (a._i_cmpxchg8b,), 'bswap': (a._i_bswap,),
        'pshufd': (a._i_pshufd,), 'movd': (a._i_movdq,), 'movq': (a._i_movdq,),
    })
    return table


_HANDLERS = _make_handlers()


def assemble_with_labels(source, bits=64, origin=0, symbols=None):
    """Assemble `source`; returns (code bytes, {label or equ name: value})."""
    asm = Assembler(bits, origin, symbols)
    code = asm.assemble(source)
    return code, asm.labels


def assemble(source, bits=64, origin=0, symbols=None):
    """Assemble Intel-syntax `source` starting in `bits` mode at address `origin`.

    `symbols` maps extra names to values for expressions.  Raises AsmError."""
    return assemble_with_labels(source, bits, origin, symbols)[0]
