"""Software interrupts (`int n`) in a Snippet: reported as what they are
(reason 'interrupt', the vector, RIP after the instruction as the handler
would see it, the instruction's address), in every mode, whether the CPU
delivers them through kvmlite's gates (real mode, CPL0 on VMX/SVM hosts)
or KVM's emulator cannot deliver them (protected-mode CPL0 on kvm_pvm, an
emulation failure), and an exception hook decides what happens next."""

import unittest

import kvmlite as K
from kvmlite import SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}


class InterruptCases:
    def run_asm(self, text):
        return self.snippet.run(assemble(text, bits=BITS[self.mode], origin=CODE))

    def test_int_without_a_hook_stops_as_that_interrupt(self):
        for n in (0x10, 0x21, 0x0D, 0xFF):
            with self.subTest(n=hex(n)):
                stop = self.run_asm(f'nop\nint {n:#x}\nhlt')
                self.assertEqual((stop.reason, stop.vector, stop.rip, stop.address),
                                 ('interrupt', n, CODE + 3, CODE + 1), str(stop))
                self.assertIsNone(stop.error_code)
                self.assertEqual(stop.name, f'int {n:#x}')
                self.assertIn(f'interrupt at rip {CODE + 3:#x}: int {n:#x}', str(stop))
                self.assertEqual(self.snippet.reg_read('rip'), CODE + 3)

    def test_an_exception_hook_serves_the_interrupt_and_the_run_goes_on(self):
        seen = []

        def bios(s, stop):
            seen.append((stop.reason, stop.vector))
            s.reg_write('rbx', s.reg_read('rax') * 2)
            return True
        self.snippet.hook_exception(bios)
        self.snippet.reg_write('rsp', 0x8000)
        stop = self.run_asm('mov ax, 21\nint 0x10\nmov cx, bx\nhlt')
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(seen, [('interrupt', 0x10)])
        self.assertEqual(self.snippet.reg_read('cx'), 42)
        self.assertEqual(self.snippet.reg_read('sp'), 0x8000)      # nothing left on the stack

    def test_a_hook_that_declines_stops_the_run_with_the_interrupt(self):
        self.snippet.hook_exception(lambda s, stop: False)
        stop = self.run_asm('int 0x21\nhlt')
        self.assertEqual((stop.reason, stop.vector, stop.rip), ('interrupt', 0x21, CODE + 2))


class RealModeInterruptTest(InterruptCases, SnippetTestCase):
    mode, cpl = 'real', 0

    def test_int_0x10_is_not_reported_as_mf(self):
        stop = self.run_asm('int 0x10')
        self.assertEqual(stop.name, 'int 0x10')
        self.assertNotIn('#MF', str(stop))

    def test_a_divide_error_is_still_an_exception(self):
        stop = self.run_asm('xor cx, cx\nmov ax, 1\ndiv cx')
        self.assertEqual((stop.reason, stop.name, stop.rip), ('exception', '#DE', CODE + 5))


class LongModeKernelInterruptTest(InterruptCases, SnippetTestCase):
    mode, cpl = 'long64', 0

    def test_int_0x80_reaches_the_syscall_hook(self):
        self.snippet.hook_syscall(lambda s: 7)
        stop = self.run_asm('int 0x80\nhlt')
        self.assertEqual((stop.reason, stop.rip), ('hlt', CODE + 3), str(stop))
        self.assertEqual(self.snippet.reg_read('rax'), 7)


class ProtectedModeKernelInterruptTest(InterruptCases, SnippetTestCase):
    mode, cpl = 'prot32', 0


class UserModeInterruptTest(SnippetTestCase):
    """At CPL3 only int3, into and int 0x80 have user gates (as under Linux):
    the others raise #GP with the gate's selector, as the CPU does."""
    mode, cpl = 'long64', 3

    def test_int_4_is_an_interrupt_and_int_0x21_a_gp(self):
        s = self.snippet
        stop = s.run(assemble('int 4\nhlt', bits=64, origin=CODE))
        self.assertEqual((stop.reason, stop.vector, stop.rip, stop.address),
                         ('interrupt', 4, CODE + 2, CODE), str(stop))
        stop = s.run(assemble('int 0x21\nhlt', bits=64, origin=CODE))
        self.assertEqual((stop.reason, stop.vector, stop.error_code), ('exception', 13, 0x10A))

    def test_into_with_overflow_is_the_of_exception_in_32_bit_user_mode(self):
        s = self.make_snippet(mode='prot32')
        stop = s.run(assemble('mov al, 0x7f\nadd al, 1\ninto\nhlt', bits=32, origin=CODE))
        self.assertEqual((stop.reason, stop.name, stop.rip), ('exception', '#OF', CODE + 5),
                         str(stop))


class ProtectedModeUserTest(SnippetTestCase):
    """prot32 at CPL3 has no paging, so hosts like kvm_pvm emulate it, and
    their emulator raises #UD for int3 and into: kvmlite reports what the
    CPU would have done."""
    mode, cpl = 'prot32', 3

    def run_asm(self, text, **kw):
        return self.snippet.run(assemble(text, bits=32, origin=CODE), **kw)

    def test_int3_is_a_breakpoint_and_until_stops_there(self):
        stop = self.run_asm('nop\nint3\nhlt')
        self.assertEqual((stop.reason, stop.rip, stop.address), ('breakpoint', CODE + 2, CODE + 1))
        stop = self.snippet.run(CODE, until=CODE + 1)
        self.assertEqual((stop.reason, stop.rip), ('until', CODE + 1), str(stop))
        self.assertEqual(self.snippet.mem_read(CODE + 1, 1), b'\xcc')   # put back as it was

    def test_into_without_overflow_goes_on(self):
        stop = self.run_asm('xor eax, eax\ninto\ninc eax\nhlt')
        self.assertEqual((stop.reason, self.snippet.reg_read('eax')), ('hlt', 1), str(stop))


if __name__ == '__main__':
    unittest.main()
