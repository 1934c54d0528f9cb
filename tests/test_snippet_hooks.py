"""Snippet.hook_code (unicorn's UC_HOOK_CODE): a callback before each
instruction, with its address and length, in long64 at CPL3 (the trap flag
through kvmlite's own #DB stub) and CPL0, prot32 at CPL3 and CPL0 and real
mode (KVM's single-step), and on an address range (KVM's hardware
breakpoints where the code is emulated and the range is small). Real machine
code from tools/asm.py; CPL0 and real-mode guests are tiny (emulated here)."""

import unittest

import kvmlite as K
from kvmlite import SnippetTestCase
from tools.asm import assemble_with_labels

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}


class CodeHookCases:
    """The cases; a subclass picks mode and cpl."""

    def asm(self, text):
        if self.mode == 'real':
            text = text.replace('ecx', 'cx').replace('eax', 'ax').replace('ebx', 'bx')
        code, labels = assemble_with_labels(text, bits=BITS[self.mode], origin=CODE)
        return code, labels

    LOOP = '''
        mov ecx, 3
    top:
        dec ecx
        jnz top
        out 0x80, al
        in al, 0x80
        mov ebx, ecx
    last:
        hlt
    '''

    def expected_trace(self, labels):
        """(address, size) of every instruction LOOP runs, in order."""
        dec = 1 if self.mode != 'long64' else 2
        mov = 3 if self.mode == 'real' else 5
        top = labels['top']
        body = [(top, dec), (top + dec, 2)] * 3
        out = top + dec + 2
        return [(CODE, mov)] + body + [(out, 2), (out + 2, 2), (out + 4, 2), (labels['last'], 1)]

    def test_a_code_hook_sees_every_instruction_with_its_size(self):
        s = self.snippet
        code, labels = self.asm(self.LOOP)
        seen = []
        s.hook_code(lambda s, address, size: seen.append((address, size)))
        s.hook_io(lambda s, port, size, value: None if value is not None else 0x42)
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.rip), ('hlt', labels['last'] + 1), str(stop))
        self.assertEqual(seen, self.expected_trace(labels))
        self.assertEqual(s.reg_read('al'), 0x42)
        self.assertNotIn('TF', s.flags())          # kvmlite's trap flag does not stay

    def test_the_hook_runs_before_its_instruction_and_sees_the_registers(self):
        s = self.snippet
        code, labels = self.asm('mov eax, 1\nmov eax, 2\nmov eax, 3\nhlt')
        values = []
        s.hook_code(lambda s, address, size: values.append(s.reg_read('ax')))
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(values, [0, 1, 2, 3])

    def test_stop_from_a_code_hook_ends_the_run_before_that_instruction(self):
        s = self.snippet
        code, labels = self.asm(self.LOOP)

        stops = []

        def hook(s, address, size):
            if address == labels['top'] and s.reg_read('cx') == 2 and not stops:
                stops.append(address)
                s.emu_stop()
        s.hook_code(hook)
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.rip), ('stopped', labels['top']), str(stop))
        self.assertEqual(s.reg_read('cx'), 2)
        self.assertEqual(s.run().reason, 'hlt')     # and the run goes on from there

    def test_several_hooks_each_removable_and_ranges(self):
        s = self.snippet
        code, labels = self.asm(self.LOOP)
        every, ranged = [], []
        h1 = s.hook_code(lambda s, a, n: every.append(a))
        s.hook_code(lambda s, a, n: ranged.append(a), begin=labels['top'], end=labels['top'])
        s.hook_io(lambda s, port, size, value: 0)
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(len(every), 11)
        self.assertEqual(ranged, [labels['top']] * 3)
        s.hook_del(h1)
        every.clear()
        ranged.clear()
        self.assertEqual(s.run(code).reason, 'hlt')   # a range alone: breakpoints at CPL0
        self.assertEqual((every, ranged), ([], [labels["top"]] * 3), (s._bp_points, labels))

    def test_a_hook_added_after_plain_runs_sees_the_next_run_and_goes_when_deleted(self):
        s = self.snippet
        code, labels = self.asm('mov eax, 1\nhlt')
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(s.run(CODE).reason, 'hlt')          # the reused run's path
        seen = []
        h = s.hook_code(lambda s, a, n: seen.append(a))
        self.assertEqual(s.run(CODE).reason, 'hlt')
        self.assertEqual(seen, [CODE, labels['last'] if 'last' in labels else CODE + len(code) - 1])
        s.hook_del(h)
        self.assertEqual(s.run(CODE).reason, 'hlt')
        self.assertEqual(len(seen), 2)

    def test_a_hook_that_moves_rip_skips_the_instruction(self):
        s = self.snippet
        code, labels = self.asm('mov eax, 1\nskip:\nmov eax, 2\nmov ebx, 5\nhlt')
        seen = []

        def hook(s, address, size):
            seen.append(address)
            if address == labels['skip']:
                s.reg_write('ip' if s.mode == 'real' else 'rip', address + size)
        s.hook_code(hook)
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual((s.reg_read('ax'), s.reg_read('bx')), (1, 5))
        self.assertEqual(len(seen), 4)

    def test_count_and_until_with_code_hooks(self):
        s = self.snippet
        code, labels = self.asm(self.LOOP)
        seen = []
        s.hook_code(lambda s, a, n: seen.append(a))
        stop = s.run(code, count=3)
        self.assertEqual((stop.reason, stop.rip), ('count', labels['top']), str(stop))   # mov, dec, jnz
        self.assertEqual(len(seen), 3)
        seen.clear()
        stop = s.run(CODE, until=labels['last'])
        self.assertEqual((stop.reason, stop.rip), ('until', labels['last']), str(stop))
        self.assertNotIn(labels['last'], seen)       # until is not run, so not hooked

    def test_an_exception_under_a_code_hook_is_still_reported(self):
        s = self.snippet
        code, labels = self.asm('nop\nbad:\nud2\nhlt')
        seen = []
        s.hook_code(lambda s, a, n: seen.append((a, n)))
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.name, stop.rip), ('exception', '#UD', labels['bad']),
                         str(stop))
        self.assertEqual(seen, [(CODE, 1), (labels['bad'], 2)])


class LongModeUserCodeHookTest(CodeHookCases, SnippetTestCase):
    mode, cpl = 'long64', 3

    def test_pushf_and_syscall_do_not_show_the_trap_flag(self):
        s = self.snippet
        code, _ = self.asm('pushf\npop rbx\nsyscall\nhlt')
        s.hook_code(lambda s, a, n: None)
        s.hook_syscall(lambda s: 7)
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertFalse(s.reg_read('rbx') & K.RFLAGS_TF)
        self.assertFalse(s.reg_read('r11') & K.RFLAGS_TF)
        self.assertEqual(s.reg_read('rax'), 7)

    # a function on its own page, called from a loop on the code's page
    CALLS = '''
        mov ecx, 300
    top:
        call 0x5000
        dec ecx
        jnz top
        mov eax, 0x5003
        call rax
        hlt
    '''
    FUNCTION = 'add ebx, 1\nadd edx, 2\nret'          # 3 + 3 + 1 bytes at 0x5000

    def test_a_ranged_hook_steps_only_inside_its_pages(self):
        s = self.snippet
        code, _ = self.asm(self.CALLS)
        s.mem_write(0x5000, assemble_with_labels(self.FUNCTION, bits=64, origin=0x5000)[0])
        seen = []
        s.hook_code(lambda s, a, n: seen.append((a, n)), begin=0x5000, end=0x5006)
        exits = sum(s._vm.exit_counts.values())
        stop = s.run(code)
        self.assertEqual(stop.reason, 'hlt', str(stop))
        # every call, and the last one entered in the middle, at 0x5003
        self.assertEqual(seen, [(0x5000, 3), (0x5003, 3), (0x5006, 1)] * 300 + [(0x5003, 3), (0x5006, 1)])
        self.assertEqual(seen[:3], [(0x5000, 3), (0x5003, 3), (0x5006, 1)])
        self.assertEqual((s.reg_read('ebx'), s.reg_read('edx')), (300, 602))
        # the loop on the code's page ran unstepped: per call a #PF in, the three
        # steps inside, one out (stepping every instruction: about 6 more a call)
        self.assertLess(sum(s._vm.exit_counts.values()) - exits, 300 * 6)
        # an emu_stop inside the range, then the run goes on
        seen.clear()
        h = s.hook_code(lambda s, a, n: s.emu_stop() if a == 0x5003 and len(seen) < 3 else None,
                        begin=0x5003, end=0x5003)
        stop = s.run(CODE)
        self.assertEqual((stop.reason, stop.rip), ('stopped', 0x5003), str(stop))
        self.assertEqual(s.run().reason, 'hlt')          # 0x5003 is hooked again, as it runs now
        self.assertEqual(len(seen), 3 * 300 + 3)
        # hooks gone: the function's page runs code again, unstepped
        s.hook_del(h)
        s.hook_del(next(iter(s._hook_lists['code']))[0])
        self.assertEqual(s.run(CODE).reason, 'hlt')
        self.assertEqual(s.reg_read('ebx'), 900)
        self.assertEqual(len(seen), 3 * 300 + 3)

    def test_memory_mapped_by_a_hook_while_the_ranged_hook_waits(self):
        s = self.snippet
        code, _ = self.asm('mov byte [0x300000], 1\nmov byte [0x500000], 2\ncall 0x5000\n'
                           'mov byte [0x700000], 3\ncall 0x5000\nhlt')
        s.mem_write(0x5000, assemble_with_labels(self.FUNCTION, bits=64, origin=0x5000)[0])
        seen = []
        s.hook_code(lambda s, a, n: seen.append(a), begin=0x5000, end=0x5006)
        s.hook_mem_unmapped(lambda s, access, address, size, value:
                            s.mem_map(address & ~0xFFF, 0x1000) or True)
        stop = s.run(code)
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(seen, [0x5000, 0x5003, 0x5006] * 2)
        self.assertEqual(s.mem_read(0x700000, 1), b'\x03')
        self.assertEqual(s.reg_read('cr3'), self.make_snippet().reg_read('cr3'))   # the plain map

    def test_a_fault_inside_a_ranged_hook_and_nx_of_the_snippets_own(self):
        s = self.snippet
        code, _ = self.asm('call 0x5000\nhlt')
        s.mem_write(0x5000, assemble_with_labels('nop\nud2', bits=64, origin=0x5000)[0])
        seen = []
        s.hook_code(lambda s, a, n: seen.append(a), begin=0x5000, end=0x5000)
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.vector, stop.rip), ('exception', 6, 0x5001), str(stop))
        self.assertEqual(seen, [0x5000])
        s.mem_map(0x200000, 0x1000, 'rw')                  # the snippet's own no-execute page
        stop = s.run(self.asm('mov eax, 0x200000\ncall rax\nhlt')[0])
        self.assertEqual((stop.reason, stop.name, stop.address), ('exception', '#PF', 0x200000))
        self.assertEqual(stop.error_code & 0x11, 0x11)


class LongModeKernelCodeHookTest(CodeHookCases, SnippetTestCase):
    mode, cpl = 'long64', 0


class ProtectedModeUserCodeHookTest(CodeHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 3


class ProtectedModeKernelCodeHookTest(CodeHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 0


class RealModeCodeHookTest(CodeHookCases, SnippetTestCase):
    mode, cpl = 'real', 0


class InstructionLengthTest(unittest.TestCase):
    """The length decoder against tools/asm.py's encodings."""

    def test_lengths_of_assembled_instructions(self):
        from tools.asm import assemble
        cases = {64: ['nop', 'mov rax, 0x123456789', 'add qword [rax+rbx*4+0x100], 5',
                      'lea rsi, [rel x]\nx:', 'syscall', 'mov [0x40000000], eax',
                      'imul eax, ebx, 300', 'test byte [rax], 1', 'test eax, 0x100',
                      'call x\nx:', 'jne x\nx:', 'pshufd xmm0, xmm0, 0x44', 'mov ax, 0x1234',
                      'mov byte [rsp+8], 1', 'ud2'],
                 32: ['mov eax, [0x40000000]', 'mov ax, 5', 'add dword [ebp-4], 0x1000',
                      'mov [ebx+esi*2], al'],
                 16: ['mov eax, 5', 'add word [bx+si+4], 300', 'mov al, [0x10]', 'mov [bp], ax']}
        for bits, texts in cases.items():
            for text in texts:
                code = assemble(text, bits=bits)
                self.assertEqual(K._insn_length(code + b'\x90' * 8, bits)[0], len(code),
                                 (bits, text))
                self.assertIsNone(K._insn_length(code[:-1], bits), (bits, text))

    def test_vex_and_evex(self):
        for hexa, n in (('c5f458c2', 4), ('c4e3fd00c11b', 6), ('c5f877', 3),
                        ('62f1744858c2', 6)):
            self.assertEqual(K._insn_length(bytes.fromhex(hexa) + bytes(8), 64)[0], n, hexa)


if __name__ == '__main__':
    unittest.main()
