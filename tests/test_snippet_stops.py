"""Snippet stops that leave an instruction half done: an 'mmio' stop on a
read or a write that no hook answered, and a hook that raises in the middle
of an access. KVM finishes such an instruction on the next KVM_RUN (api.rst,
KVM_EXIT_MMIO); the snippet must instead start the next run exactly where
and from what it is told, and resume() must finish the access on request.
Each case runs in long64 at CPL3 and CPL0, in prot32 and in real mode."""

import unittest

import kvmlite as K
from kvmlite import SnippetError, SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}


class MmioStopCases:
    """The cases; a subclass picks mode and cpl. ``DEV`` is device memory
    (mmio_map'ped in long64; unmapped, hence MMIO, without paging)."""
    DEV = 0x40000000

    def setUp(self):
        super().setUp()
        s = self.snippet
        if self.mode == 'long64':
            s.mmio_map(self.DEV, 0x1000)
        if self.mode == 'real':
            self.DEV = 0x100000          # FFFF:0010, above the 1 MiB of RAM
            s.reg_write('ds', 0xFFFF)

    def asm(self, text):
        return assemble(text, bits=BITS[self.mode], origin=CODE)

    def ref(self, offset):
        """The operand that addresses DEV + offset in this mode."""
        return f'[{offset + 0x10:#x}]' if self.mode == 'real' else f'[{self.DEV + offset:#x}]'

    def acc(self):
        return 'ax' if self.mode == 'real' else 'eax'

    def read_stop(self):
        code = self.asm(f'mov {self.acc()}, {self.ref(4)}\nhlt')
        stop = self.snippet.run(code)
        self.assertEqual((stop.reason, stop.address, stop.rip), ('mmio', self.DEV + 4, CODE),
                         str(stop))
        return stop, len(code)

    def test_a_new_run_after_a_read_stop_runs_the_new_code_from_the_registers_set(self):
        s = self.snippet
        self.read_stop()
        s.reg_write('rax', 41)
        s.reg_write('rbx', 7)
        code = self.asm('inc eax\nadd eax, ebx\nhlt' if self.mode != 'real'
                        else 'inc ax\nadd ax, bx\nhlt')
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.rip), ('hlt', CODE + len(code)), str(stop))
        self.assertEqual(s.reg_read('rax'), 49)

    def test_a_new_start_after_a_read_stop_without_register_writes(self):
        s = self.snippet
        s.reg_write('rax', 3)
        self.read_stop()
        s.mem_write(0x3000, b'\x90\xf4')                # nop; hlt
        stop = s.run(0x3000)
        self.assertEqual((stop.reason, stop.rip), ('hlt', 0x3002), str(stop))
        self.assertEqual(s.reg_read('rax'), 3)          # the read never happened

    def test_resume_gives_the_read_its_value_and_goes_on(self):
        s = self.snippet
        stop, length = self.read_stop()
        self.assertEqual(stop.exit.size, 2 if self.mode == 'real' else 4)
        self.assertIn(f'size={stop.exit.size}', repr(stop))
        stop = s.resume(0x1234)
        self.assertEqual((stop.reason, stop.rip), ('hlt', CODE + length), str(stop))
        self.assertEqual(s.reg_read(self.acc()), 0x1234)

    def test_resume_without_a_value_reads_all_ones(self):
        self.read_stop()
        self.assertEqual(self.snippet.resume().reason, 'hlt')
        self.assertEqual(self.snippet.reg_read(self.acc()), 0xFFFF if self.mode == 'real'
                         else 0xFFFFFFFF)

    def test_run_without_a_start_after_a_read_stop_reads_again(self):
        self.read_stop()
        stop = self.snippet.run()
        self.assertEqual((stop.reason, stop.rip, stop.address), ('mmio', CODE, self.DEV + 4))

    def test_the_stop_hands_out_no_buffer_and_says_how_to_resume(self):
        stop, _ = self.read_stop()
        with self.assertRaisesRegex(SnippetError, r'Snippet\.resume\(value\)'):
            stop.exit.set(5)
        self.assertIsNone(stop.exit.buf)
        str(stop), repr(stop)                           # no released buffer in either

    def test_resume_is_refused_once_the_snippet_changed(self):
        s = self.snippet
        self.read_stop()
        s.reg_write('rcx', 1)
        with self.assertRaisesRegex(SnippetError, 'no MMIO access is waiting'):
            s.resume(1)

    def test_resume_with_a_value_too_wide_is_refused(self):
        self.read_stop()
        with self.assertRaisesRegex(SnippetError, 'does not fit'):
            self.snippet.resume(1 << 40)
        self.assertEqual(self.snippet.resume(9).reason, 'hlt')   # still waiting

    def test_a_write_stop_is_after_the_instruction_and_resume_goes_on(self):
        s = self.snippet
        code = self.asm(f'mov {self.ref(8)}, {self.acc()}\ninc {self.acc()}\nhlt')
        s.reg_write('rax', 5)
        stop = s.run(code)
        self.assertEqual((stop.reason, stop.address, stop.exit.value), ('mmio', self.DEV + 8, 5),
                         str(stop))
        self.assertEqual(stop.rip, CODE + len(code) - (2 if self.mode == 'long64' else 1) - 1)
        with self.assertRaisesRegex(SnippetError, 'no value to give'):
            s.resume(1)
        stop = s.resume()
        self.assertEqual((stop.reason, stop.rip), ('hlt', CODE + len(code)))
        self.assertEqual(s.reg_read(self.acc()), 6)

    def test_a_hook_that_raises_mid_read_leaves_the_instruction_undone(self):
        s = self.snippet

        def broken(s, address, size, value):
            raise RuntimeError('device bug')
        broken_hook = s.hook_mmio(broken)
        s.reg_write('rax', 77)
        with self.assertRaisesRegex(RuntimeError, 'device bug'):
            s.run(self.asm(f'mov {self.acc()}, {self.ref(0)}\nhlt'))
        self.assertEqual((s.reg_read('rip'), s.reg_read('rax')), (CODE, 77))
        s.hook_del(broken_hook)
        s.hook_mmio(lambda s, address, size, value: 0x55)
        self.assertEqual(s.run(CODE).reason, 'hlt')
        self.assertEqual(s.reg_read('rax'), 0x55)


class LongModeUserMmioStopTest(MmioStopCases, SnippetTestCase):
    mode, cpl = 'long64', 3


class LongModeKernelMmioStopTest(MmioStopCases, SnippetTestCase):
    mode, cpl = 'long64', 0


class ProtectedModeMmioStopTest(MmioStopCases, SnippetTestCase):
    mode, cpl = 'prot32', 3


class RealModeMmioStopTest(MmioStopCases, SnippetTestCase):
    mode, cpl = 'real', 0


class VcpuCompleteIoTest(unittest.TestCase):
    """Vcpu.complete_io() on its own: a read left unanswered is finished with
    the buffer's value and the guest does not run on."""

    def test_complete_io_finishes_the_read_and_runs_nothing_more(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        with K.Snippet('long64', cpl=3) as s:
            s.mmio_map(0x40000000, 0x1000)
            self.assertEqual(s.run(b'\xf4').reason, 'hlt')   # the page tables are written
            s.mem_write(CODE, assemble('mov eax, [0x40000000]\nmov ebx, 1\nhlt', bits=64,
                                       origin=CODE))
            s.reg_write('rip', CODE)
            exit = s.vcpu.run()
            self.assertIsInstance(exit, K.MmioRead)
            self.assertTrue(s.vcpu.io_pending)
            exit.set(0xABCD)
            self.assertEqual(s.vcpu.complete_io(), 0)
            self.assertFalse(s.vcpu.io_pending)
            regs = s.vcpu.get_regs()
            self.assertEqual((regs.rax, regs.rbx, regs.rip), (0xABCD, 0, CODE + 7))
            self.assertEqual(s.vcpu.complete_io(), 0)       # nothing pending: a no-op


if __name__ == '__main__':
    unittest.main()
