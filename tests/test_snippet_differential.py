"""Random programs run by kvmlite's Snippet and by unicorn (a reference that
computes every defined flag), compared register by register: general
registers and the status flags the instructions leave defined (Intel SDM
vol. 2: logic ops leave AF undefined, shifts OF unless the count is 1,
imul SF/ZF/AF/PF, bt all but CF). Skipped where unicorn is not importable
(``pip install unicorn``) or KVM cannot be used.

The default run is a fixed seed and a few hundred programs; set
KVMLITE_DIFF_CASES=N (programs per mode and level, e.g. 30000) and
optionally KVMLITE_DIFF_SEED for the long run."""

import importlib.util
import os
import random
import unittest

import kvmlite as K
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
SEED = int(os.environ.get('KVMLITE_DIFF_SEED', '20261203'))
CASES = int(os.environ.get('KVMLITE_DIFF_CASES', '0'))
LENGTH = 12                                  # instructions a program
FLAGS = {'CF': 0, 'PF': 2, 'AF': 4, 'ZF': 6, 'SF': 7, 'OF': 11}
ALL = frozenset(FLAGS)

REGS = {64: ('rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'r8', 'r9', 'r10', 'r11',
             'r12', 'r13', 'r14', 'r15'),
        32: ('eax', 'ebx', 'ecx', 'edx', 'esi', 'edi', 'ebp')}
LOW8 = {'rax': 'al', 'rbx': 'bl', 'rcx': 'cl', 'rdx': 'dl', 'eax': 'al', 'ebx': 'bl',
        'ecx': 'cl', 'edx': 'dl'}
DWORD = {r: 'e' + r[1:] for r in REGS[64][:7]} | {f'r{i}': f'r{i}d' for i in range(8, 16)}


def _value(rng, bits):
    """A register value, biased to the edges where flags change."""
    edge = [0, 1, (1 << bits) - 1, 1 << bits - 1, (1 << bits - 1) - 1, 0x80, 0x7F, 0xFF]
    return rng.choice(edge) if rng.random() < 0.3 else rng.getrandbits(bits)


def _instruction(rng, bits, defined):
    """(text, defined flags after it): one random instruction."""
    regs = REGS[bits]
    d, s = rng.choice(regs), rng.choice(regs)
    if bits == 64 and rng.random() < 0.3:           # a 32-bit op in 64-bit mode (zero-extends)
        d, s = DWORD[d], DWORD[s]
    width = 32 if d.startswith('e') or d.endswith('d') else 64
    imm = rng.choice([0, 1, -1, 0x7F, -0x80, 0x7FFFFFFF, -0x80000000, rng.getrandbits(31),
                      -rng.getrandbits(31)])
    kind = rng.randrange(11)
    if kind == 0:
        op = rng.choice(['add', 'sub', 'cmp', 'neg'] + (['adc', 'sbb'] if 'CF' in defined
                                                        else []))
        return (f'neg {d}' if op == 'neg' else f'{op} {d}, {rng.choice([s, imm])}'), ALL
    if kind == 1:
        op = rng.choice(['and', 'or', 'xor', 'test'])
        return f'{op} {d}, {rng.choice([s, imm])}', ALL - {'AF'}
    if kind == 2:
        return f'{rng.choice(["inc", "dec"])} {d}', defined | (ALL - {'CF'})
    if kind == 3:
        count = rng.randrange(1, width)
        op = rng.choice(['shl', 'shr', 'sar', 'rol', 'ror'])
        if op in ('rol', 'ror'):
            after = defined | {'CF', 'OF'}
        else:
            after = ALL - {'AF'}
        return f'{op} {d}, {count}', after if count == 1 else after - {'OF'}
    if kind == 4:
        text = f'imul {d}, {s}' if rng.random() < 0.5 else f'imul {d}, {s}, {imm}'
        return text, {'CF', 'OF'} | (defined - ALL)
    if kind == 5:
        return f'{rng.choice(["bt", "bts", "btr", "btc"])} {d}, {rng.randrange(width)}', \
            (defined & {'ZF'}) | {'CF'}
    if kind == 6:
        return f'mov {d}, {rng.choice([s, imm])}', defined
    if kind == 7:
        base, index = rng.choice(regs), rng.choice(regs)
        return f'lea {rng.choice(regs)}, [{base} + {index}*{rng.choice([1, 2, 4, 8])} + ' \
               f'{rng.randrange(-4096, 4096)}]', defined
    if kind == 8:
        src = LOW8.get(rng.choice(regs[:4]))
        return f'{rng.choice(["movzx", "movsx"])} {d}, {src}', defined
    if kind == 9:
        return rng.choice([f'not {d}', f'bswap {d}', f'xchg {d}, {s}']), defined
    if 'CF' in defined:                 # reads CF: only where it is defined
        return f'setc {LOW8[rng.choice(regs[:4])]}', defined
    return 'clc', defined | {'CF'}


def program(rng, bits):
    """(source, initial registers, flags defined at the end)."""
    defined = ALL                        # both start from RFLAGS 0x202
    lines = []
    for _ in range(LENGTH):
        text, defined = _instruction(rng, bits, defined)
        lines.append(text)
    start = {r: _value(rng, bits) for r in REGS[bits]}
    return '\n'.join(lines), start, defined


def _reference(bits):
    """unicorn, with the same memory as the Snippet's default."""
    import unicorn
    from unicorn import x86_const as X
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64 if bits == 64 else unicorn.UC_MODE_32)
    uc.mem_map(0, 0x100000)
    ids = {r: getattr(X, f'UC_X86_REG_{r.upper()}') for r in REGS[bits]}

    def run(code, start):
        uc.mem_write(CODE, code)
        for r, v in start.items():
            uc.reg_write(ids[r], v)
        uc.reg_write(X.UC_X86_REG_RSP if bits == 64 else X.UC_X86_REG_ESP, 0x100000)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x202)
        uc.emu_start(CODE, CODE + len(code))
        return {r: uc.reg_read(ids[r]) for r in REGS[bits]}, uc.reg_read(X.UC_X86_REG_EFLAGS)
    return run


@unittest.skipIf(importlib.util.find_spec('unicorn') is None,
                 'unicorn is not installed (pip install unicorn): no reference to compare with')
class DifferentialCases:
    """mode, cpl and the default number of programs from the subclass."""

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)

    def test_random_programs_match_unicorn(self):
        bits = 64 if self.mode == 'long64' else 32
        rng = random.Random(f'{SEED}-{self.mode}-{self.cpl}')
        reference = _reference(bits)
        mismatches = []
        with K.Snippet(self.mode, cpl=self.cpl) as s:
            for case in range(CASES or self.cases):
                source, start, defined = program(rng, bits)
                code = assemble(source, bits=bits, origin=CODE)
                for r, v in start.items():
                    s.reg_write(r, v)
                s.reg_write('rsp', 0x100000)
                s.reg_write('rflags', 0x202)
                stop = s.run(code + b'\xf4', timeout=None if self.cpl == 0 else 1.0)
                want, want_flags = reference(code, start)
                got = {r: s.reg_read(r) for r in REGS[bits]}
                mask = sum(1 << FLAGS[f] for f in defined)
                flags = s.reg_read('rflags')
                if stop.reason != 'hlt' or got != want or (flags ^ want_flags) & mask:
                    mismatches.append((case, source, start, str(stop),
                                       {r: (hex(got[r]), hex(want[r])) for r in got
                                        if got[r] != want[r]},
                                       hex(flags & mask), hex(want_flags & mask)))
                    if len(mismatches) >= 3:
                        break
        self.assertEqual(mismatches, [], f'seed {SEED}: (case, program, start, stop, '
                                         '{register: (kvmlite, unicorn)}, flags kvmlite, unicorn)')


class LongModeUserDifferential(DifferentialCases, unittest.TestCase):
    mode, cpl, cases = 'long64', 3, 300


class LongModeKernelDifferential(DifferentialCases, unittest.TestCase):
    mode, cpl, cases = 'long64', 0, 30         # KVM's instruction emulator on kvm_pvm


class ProtectedModeDifferential(DifferentialCases, unittest.TestCase):
    mode, cpl, cases = 'prot32', 3, 30


if __name__ == '__main__':
    unittest.main()
