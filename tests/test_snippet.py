"""Tests for kvmlite's snippet runner (Snippet, Stop, SnippetTestCase): real
machine code under /dev/kvm in each mode and privilege level, every hook
driven by the guest instruction it stands for, and the examples of
docs/snippets.md run as written.

Keep CPL0 and real-mode guests tiny: on kvm_pvm hosts they are emulated."""

import contextlib
import io
import os
import re
import threading
import unittest
from unittest import mock

import kvmlite as K
from kvmlite import Snippet, SnippetError, SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    'docs', 'snippets.md')

PF_PRESENT, PF_WRITE, PF_USER, PF_FETCH = 1, 2, 4, 0x10     # #PF error code bits


class AsmTestCase(SnippetTestCase):
    """Runs assembly text in the class's mode at CODE."""

    def run_asm(self, text, snippet=None, **kw):
        s = snippet or self.snippet
        return s.run(assemble(text, bits=BITS[s.mode], origin=CODE), **kw)

    def assertStop(self, stop, reason, **fields):
        self.assertEqual(stop.reason, reason, str(stop))
        for name, value in fields.items():
            self.assertEqual(getattr(stop, name), value, f'{name} of {stop}')


# ---------------------------------------------------------------------------
# 64-bit user mode (CPL3): runs natively
# ---------------------------------------------------------------------------

class LongModeUserTest(AsmTestCase):
    mode, cpl = 'long64', 3

    def test_add_that_wraps_sets_carry_and_zero(self):
        stop = self.run_asm('mov rax, -1\nadd rax, 1\nhlt')
        self.assertStop(stop, 'hlt', rip=CODE + 12)            # after the HLT, as at CPL0
        self.assertEqual(self.snippet.reg_read('rax'), 0)
        self.assertEqual(self.snippet.flags() & {'CF', 'ZF', 'SF', 'OF'}, {'CF', 'ZF'})

    def test_signed_overflow_sets_overflow_and_sign(self):
        self.run_asm('mov al, 0x7f\nadd al, 1\nhlt')
        self.assertEqual(self.snippet.reg_read('al'), 0x80)
        self.assertEqual(self.snippet.flags() & {'CF', 'ZF', 'SF', 'OF', 'AF'}, {'SF', 'OF', 'AF'})

    def test_registers_written_before_the_run_are_the_snippets_inputs(self):
        s = self.snippet
        s.reg_write('rbx', 0x1111_0000_0000)
        s.reg_write('rcx', 0x2222)
        s.reg_write('r9', 3)
        self.run_asm('mov rax, rbx\nadd rax, rcx\nimul rax, r9\nhlt')
        self.assertEqual(s.reg_read('rax'), 3 * 0x1111_0000_2222)
        self.assertEqual(s.reg_read('eax'), (3 * 0x1111_0000_2222) & 0xFFFFFFFF)

    def test_narrow_register_writes_keep_the_other_bits(self):
        s = self.snippet
        s.reg_write('rax', 0x1122334455667788)
        s.reg_write('ah', 0xAB)
        s.reg_write('r8', -1)
        s.reg_write('r8w', 0)
        self.assertEqual(s.reg_read('rax'), 0x112233445566AB88)
        self.assertEqual(s.reg_read('r8'), 0xFFFFFFFFFFFF0000)

    def test_sse2_registers_go_in_and_come_out(self):
        s = self.snippet
        s.reg_write('xmm0', 5 | 1 << 64)
        s.reg_write('xmm1', (7).to_bytes(8, 'little') + (3).to_bytes(8, 'little'))
        stop = self.run_asm('paddq xmm0, xmm1\nmovq rax, xmm0\nmovdqa xmm2, xmm1\n'
                            'pxor xmm1, xmm1\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(s.reg_read('xmm0'), 12 | 4 << 64)
        self.assertEqual(s.reg_read('rax'), 12)
        self.assertEqual(s.reg_read('xmm2'), 7 | 3 << 64)
        self.assertEqual(s.reg_read('xmm1'), 0)
        self.assertEqual(s.reg_read('mxcsr'), 0x1F80)         # the reset value: all masked

    def test_syscall_hook_emulates_write_and_exit(self):
        out = bytearray()

        def syscall(s):
            nr = s.reg_read('rax')
            if nr == 1:                                       # write(fd, buf, count)
                self.assertEqual(s.reg_read('rdi'), 1)
                out.extend(s.mem_read(s.reg_read('rsi'), s.reg_read('rdx')))
                return s.reg_read('rdx')
            if nr == 60:                                      # exit(status)
                s.stop()
            return -38                                        # -ENOSYS
        self.snippet.hook_syscall(syscall)
        stop = self.run_asm('''
            mov eax, 1
            mov edi, 1
            lea rsi, [rel msg]
            mov edx, 6
            syscall
            mov r12, rax
            mov eax, 999
            syscall
            mov r13, rax
            mov eax, 60
            xor edi, edi
            syscall
            hlt
        msg: db "hello", 10''')
        self.assertStop(stop, 'stopped')
        self.assertEqual(bytes(out), b'hello\n')
        self.assertEqual(self.snippet.reg_read('r12'), 6)
        self.assertEqual(self.snippet.reg_read('r13'), 2**64 - 38)

    def test_syscall_without_hook_stops_after_it_with_rcx_and_r11_set(self):
        stop = self.run_asm('mov eax, 39\nsyscall\nhlt')
        self.assertStop(stop, 'syscall', rip=CODE + 7)
        self.assertEqual(self.snippet.reg_read('rax'), 39)
        self.assertEqual(self.snippet.reg_read('rcx'), CODE + 7)
        self.assertEqual(self.snippet.reg_read('cs'), 0x33)    # back at CPL3

    def test_page_fault_reports_cr2_error_code_and_faulting_rip(self):
        stop = self.run_asm('nop\nmov rax, [0x40000000]\nhlt')
        self.assertStop(stop, 'exception', vector=14, address=0x40000000,
                        error_code=PF_USER, rip=CODE + 1)
        self.assertEqual(stop.name, '#PF')
        self.assertEqual(self.snippet.reg_read('cr2'), 0x40000000)
        self.assertEqual(self.snippet.reg_read('rsp'), 0x100000)     # the frame is unwound

    def test_write_fault_and_fetch_from_no_execute_memory_say_so(self):
        s = self.snippet
        s.mem_map(0x200000, 0x1000, 'rw')
        stop = self.run_asm('mov rbx, 0x7ff000000\nmov qword [rbx], 1')
        self.assertStop(stop, 'exception', vector=14, error_code=PF_USER | PF_WRITE)
        s.mem_write(0x200000, b'\x90')
        stop = s.run(0x200000)
        self.assertStop(stop, 'exception', vector=14, address=0x200000, rip=0x200000,
                        error_code=PF_PRESENT | PF_USER | PF_FETCH)

    def test_ud2_reports_invalid_opcode_at_the_instruction(self):
        stop = self.run_asm('mov eax, 1\nud2')
        self.assertStop(stop, 'exception', vector=6, error_code=None, address=CODE + 5,
                        rip=CODE + 5)

    def test_divide_by_zero_reports_de(self):
        stop = self.run_asm('xor ecx, ecx\nmov eax, 1\ndiv ecx')
        self.assertStop(stop, 'exception', vector=0, rip=CODE + 7)

    def test_exception_hook_can_skip_the_faulting_instruction(self):
        seen = []

        def on_exception(s, stop):
            seen.append((stop.vector, stop.rip))
            s.reg_write('rip', stop.rip + 2)                  # over the ud2
            return True
        self.snippet.hook_exception(on_exception)
        stop = self.run_asm('ud2\nmov eax, 7\nud2\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(seen, [(6, CODE), (6, CODE + 7)])
        self.assertEqual(self.snippet.reg_read('eax'), 7)

    def test_int3_stops_as_a_breakpoint_and_the_run_goes_on_after_it(self):
        stop = self.run_asm('mov eax, 1\nint3\nmov eax, 2\nhlt')
        self.assertStop(stop, 'breakpoint', address=CODE + 5, rip=CODE + 6)
        self.assertEqual(self.snippet.reg_read('eax'), 1)
        self.assertStop(self.snippet.run(), 'hlt')
        self.assertEqual(self.snippet.reg_read('eax'), 2)

    def test_until_stops_at_the_address_and_leaves_the_code_as_it_was(self):
        code = assemble('mov eax, 1\nmov ebx, 2\nmov ecx, 3\nhlt', origin=CODE)
        stop = self.snippet.run(code, until=CODE + 10)
        self.assertStop(stop, 'until', rip=CODE + 10)
        self.assertEqual([self.snippet.reg_read(r) for r in ('eax', 'ebx', 'ecx')], [1, 2, 0])
        self.assertEqual(self.snippet.mem_read(CODE, len(code)), code)
        self.assertStop(self.snippet.run(), 'hlt')
        self.assertEqual(self.snippet.reg_read('ecx'), 3)

    def test_until_just_past_the_code_in_unmapped_memory(self):
        s = Snippet('long64', cpl=3, mem_size=0)
        self.addCleanup(s.close)
        s.mem_map(0x400000, 0x1000)
        code = assemble('mov eax, 5\nnop', origin=0)
        s.mem_write(0x401000 - len(code), code)
        stop = s.run(0x401000 - len(code), until=0x401000)
        self.assertStop(stop, 'until', rip=0x401000)
        self.assertEqual(s.reg_read('eax'), 5)

    def test_count_stops_after_that_many_instructions(self):
        stop = self.run_asm('mov eax, 1\nmov eax, 2\nmov eax, 3\nhlt', count=2)
        self.assertStop(stop, 'count', rip=CODE + 10)
        self.assertEqual(self.snippet.reg_read('eax'), 2)
        self.assertNotIn('TF', self.snippet.flags())

    def test_count_takes_a_system_call_as_one_instruction(self):
        self.snippet.hook_syscall(lambda s: 100)
        code = assemble('mov eax, 1\nsyscall\nmov ebx, eax\nhlt', origin=CODE)
        stop = self.snippet.run(code, count=2)
        self.assertStop(stop, 'count', rip=CODE + 7)
        self.assertEqual((self.snippet.reg_read('eax'), self.snippet.reg_read('ebx')), (100, 0))
        self.assertStop(self.snippet.run(code, count=3), 'count', rip=CODE + 9)

    def test_user_mode_starts_with_interrupts_on_and_a_syscall_keeps_the_flags(self):
        self.snippet.hook_syscall(lambda s: 0)
        self.assertEqual(self.snippet.flags(), {'IF'})
        self.run_asm('stc\nsyscall\nhlt')
        self.assertEqual(self.snippet.flags(), {'IF', 'CF'})
        self.assertEqual(self.snippet.reg_read('r11') & 0xFFF, 0x203)

    def test_timeout_ends_an_infinite_loop(self):
        stop = self.run_asm('jmp $', timeout=0.05)
        self.assertStop(stop, 'timeout', rip=CODE)

    def test_memory_the_snippet_wrote_reads_back(self):
        self.run_asm('''
            mov rdi, 0x8000
            mov ecx, 16
            mov al, 0x5a
            rep stosb
            mov rax, 0x1122334455667788
            mov [0x8010], rax
            hlt''')
        self.assertEqual(self.snippet.mem_read(0x8000, 24),
                         b'\x5a' * 16 + bytes.fromhex('8877665544332211'))

    def test_port_io_hook_sees_out_and_answers_in(self):
        calls = []

        def io(s, port, size, value):
            calls.append((port, size, value))
            return 0xBEEF if value is None else None
        self.snippet.hook_io(io)
        self.run_asm('mov al, 0x41\nout 0x80, al\nmov dx, 0x1234\nin ax, dx\nhlt')
        self.assertEqual(calls, [(0x80, 1, 0x41), (0x1234, 2, None)])
        self.assertEqual(self.snippet.reg_read('ax'), 0xBEEF)

    def test_string_io_calls_the_hook_once_per_item(self):
        seen = []
        self.snippet.hook_io(lambda s, port, size, value: seen.append((port, size, value)))
        self.snippet.mem_write(0x8000, b'\x01\x00\x02\x00\x03\x00')
        self.run_asm('mov rsi, 0x8000\nmov ecx, 3\nmov dx, 0x3f8\nrep outsw\nhlt')
        self.assertEqual(seen, [(0x3F8, 2, 1), (0x3F8, 2, 2), (0x3F8, 2, 3)])

    def test_stop_from_another_thread_ends_a_spinning_snippet(self):
        def io(s, port, size, value):              # the snippet is running: stop it
            threading.Thread(target=s.stop).start()
        self.snippet.hook_io(io)
        stop = self.run_asm('out 0x80, al\njmp $', timeout=10)
        self.assertStop(stop, 'stopped')

    def test_port_in_without_hook_floats_high(self):
        self.run_asm('xor eax, eax\nin al, 0x99\nhlt')
        self.assertEqual(self.snippet.reg_read('eax'), 0xFF)

    def test_mmio_hook_answers_reads_and_sees_writes(self):
        s = self.snippet
        s.mmio_map(0x40000000, 0x1000)
        calls = []

        def mmio(s, addr, size, value):
            calls.append((addr, size, value))
            return 0x12345678 if value is None else None
        s.hook_mmio(mmio)
        stop = self.run_asm('mov eax, [0x40000004]\nmov dword [0x40000008], 7\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(calls, [(0x40000004, 4, None), (0x40000008, 4, 7)])
        self.assertEqual(s.reg_read('eax'), 0x12345678)

    def test_mmio_without_hook_stops_with_the_address(self):
        self.snippet.mmio_map(0x40000000, 0x1000)
        stop = self.run_asm('mov eax, [0x40000010]\nhlt')
        self.assertStop(stop, 'mmio', address=0x40000010, rip=CODE)

    def test_write_to_read_only_memory_reaches_the_mmio_hook_and_changes_nothing(self):
        s = self.snippet
        s.mem_map(0x200000, 0x1000, 'r')
        s.mem_write(0x200000, b'\x11\x22\x33\x44')
        writes = []
        s.hook_mmio(lambda s, addr, size, value: writes.append((addr, size, value)))
        self.run_asm('mov dword [0x200000], 5\nmov eax, [0x200000]\nhlt')
        self.assertEqual(writes, [(0x200000, 4, 5)])
        self.assertEqual(s.reg_read('eax'), 0x44332211)

    def test_cpuid_hook_at_cpl3_on_kvm_pvm_says_why_not(self):
        if not K.host_emulates_kernel_mode():
            self.skipTest('only kvm_pvm runs a CPL3 cpuid without KVM')
        with self.assertRaisesRegex(SnippetError, 'never reaches KVM.*use cpl=0'):
            self.snippet.hook_cpuid(lambda s, leaf, sub: None)

    def test_int80_reaches_the_syscall_hook_in_long_mode(self):
        self.snippet.hook_syscall(lambda s: s.reg_read('rax') + 1)
        stop = self.run_asm('mov eax, 4\nint 0x80\nhlt')
        self.assertStop(stop, 'hlt', rip=CODE + 8)
        self.assertEqual(self.snippet.reg_read('rax'), 5)

    def test_int_with_a_ring0_gate_raises_gp_with_the_idt_error_code(self):
        stop = self.run_asm('int 0x21')
        self.assertStop(stop, 'exception', vector=13, error_code=0x21 * 8 + 2, rip=CODE)

    def test_fs_base_addresses_fs_relative_loads(self):
        s = self.snippet
        s.mem_write(0x9008, (0xCAFE).to_bytes(8, 'little'))
        s.reg_write('fs_base', 0x9000)
        self.run_asm('mov rax, [fs:8]\nhlt')
        self.assertEqual(s.reg_read('rax'), 0xCAFE)

    def test_memory_mapped_after_a_run_is_reachable(self):
        s = self.snippet
        self.assertStop(self.run_asm('mov eax, [0x300000]\nhlt'), 'exception', vector=14)
        s.mem_map(0x300000, 0x1000)
        s.mem_write(0x300000, b'\x2a\0\0\0')
        self.assertStop(s.run(CODE), 'hlt')
        self.assertEqual(s.reg_read('eax'), 42)

    def test_unicorn_style_emu_start_with_until_past_the_code(self):
        s = self.snippet
        code = b'\x41\xff\xc1\xff\xca'                          # inc r9d; dec edx
        s.mem_write(0x5000, code)
        s.reg_write('edx', 10)
        stop = s.emu_start(0x5000, 0x5000 + len(code))
        self.assertStop(stop, 'until')
        self.assertEqual((s.reg_read('r9d'), s.reg_read('edx')), (1, 9))


# ---------------------------------------------------------------------------
# 64-bit kernel mode (CPL0): emulated on kvm_pvm, so every guest is tiny
# ---------------------------------------------------------------------------

class LongModeKernelTest(AsmTestCase):
    mode, cpl = 'long64', 0

    def test_add_with_carry_at_cpl0(self):
        s = self.snippet
        s.reg_write('rax', 2**64 - 1)
        stop = self.run_asm('add rax, 1\nadc rbx, 5\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual((s.reg_read('rax'), s.reg_read('rbx')), (0, 6))
        self.assertEqual(s.reg_read('cs'), 0x10)

    def test_msr_hook_answers_rdmsr_and_sees_wrmsr(self):
        s = self.snippet
        calls = []

        def msr(s, index, value):
            calls.append((index, value))
            if index == 0x1234:
                return 0x1122334455667788
            return None                                       # KVM's own answer
        s.hook_msr(msr)
        stop = self.run_asm('''
            mov ecx, 0x1234
            rdmsr
            mov r8d, eax
            mov r9d, edx
            mov ecx, 0xc0000100
            mov eax, 0x5000
            xor edx, edx
            wrmsr
            mov ecx, 0xc0000080
            rdmsr
            hlt''')
        self.assertStop(stop, 'hlt')
        self.assertEqual(calls, [(0x1234, None), (0xC0000100, 0x5000), (0xC0000080, None)])
        self.assertEqual((s.reg_read('r8'), s.reg_read('r9')), (0x55667788, 0x11223344))
        self.assertEqual(s.reg_read('fs_base'), 0x5000)             # KVM did the write
        self.assertEqual(s.reg_read('eax'), s.reg_read('efer'))     # and answered the read

    def test_cpuid_hook_answers_the_guests_cpuid(self):
        asked = []

        def cpuid(s, leaf, subleaf):
            asked.append((leaf, subleaf))
            if leaf == 0:
                return (0x10, *(int.from_bytes(w, 'little') for w in (b'kvml', b'Snip', b'ite!')))
            if leaf == 0x40000100:
                return (1, 2, 3, 4)
            return None
        s = self.snippet
        s.hook_cpuid(cpuid, leaves=[0x40000100])
        self.assertIn((0, 0), asked)
        self.run_asm('''
            xor eax, eax
            cpuid
            mov [0x8000], ebx
            mov [0x8004], ecx
            mov [0x8008], edx
            mov eax, 0x40000100
            cpuid
            hlt''')
        self.assertEqual(s.mem_read(0x8000, 12), b'kvmlSnipite!')
        self.assertEqual([s.reg_read(r) for r in ('eax', 'ebx', 'ecx', 'edx')], [1, 2, 3, 4])

    def test_cpuid_hook_after_a_run_is_refused(self):
        self.run_asm('hlt')
        with self.assertRaisesRegex(SnippetError, 'before the first run'):
            self.snippet.hook_cpuid(lambda s, leaf, sub: None)

    def test_msr_hook_returning_false_raises_gp(self):
        self.snippet.hook_msr(lambda s, index, value: False, msrs=[0x10])
        stop = self.run_asm('mov ecx, 0x10\nrdmsr\nhlt')
        self.assertStop(stop, 'exception', vector=13, error_code=0, rip=CODE + 5)

    def test_timeout_ends_an_infinite_loop_at_cpl0(self):
        self.assertStop(self.run_asm('jmp $', timeout=0.05), 'timeout', rip=CODE)

    def test_page_fault_at_cpl0(self):
        stop = self.run_asm('mov dword [0x40000000], 1')
        self.assertStop(stop, 'exception', vector=14, address=0x40000000, error_code=PF_WRITE)
        self.assertEqual(self.snippet.reg_read('rsp'), 0x100000)

    def test_until_stops_at_the_address(self):
        stop = self.run_asm('mov eax, 1\nmov eax, 2\nhlt', until=CODE + 5)
        self.assertStop(stop, 'until', rip=CODE + 5)
        self.assertEqual(self.snippet.reg_read('eax'), 1)

    def test_int3_stops_as_a_breakpoint(self):
        stop = self.run_asm('nop\nint3\nmov eax, 9\nhlt')
        self.assertStop(stop, 'breakpoint', address=CODE + 1, rip=CODE + 2)
        self.assertStop(self.snippet.run(), 'hlt')
        self.assertEqual(self.snippet.reg_read('eax'), 9)

    def test_count_at_cpl0(self):
        stop = self.run_asm('inc eax\ninc eax\ninc eax\nhlt', count=2)
        self.assertStop(stop, 'count')
        self.assertEqual(self.snippet.reg_read('eax'), 2)

    def test_syscall_hook_at_cpl0(self):
        self.snippet.hook_syscall(lambda s: s.reg_read('rdi') * 2)
        stop = self.run_asm('mov edi, 21\nsyscall\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(self.snippet.reg_read('rax'), 42)


# ---------------------------------------------------------------------------
# 32-bit protected mode, both levels
# ---------------------------------------------------------------------------

class ProtectedModeTest(AsmTestCase):
    mode, cpl = 'prot32', 3

    def test_arithmetic_in_32_bit_user_mode(self):
        s = self.snippet
        s.reg_write('ecx', 0xFFFFFFFF)
        stop = self.run_asm('mov eax, 0x10\nsub eax, 0x11\ninc ecx\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual((s.reg_read('eax'), s.reg_read('ecx')), (0xFFFFFFFF, 0))
        self.assertEqual(s.flags() & {'ZF', 'SF'}, {'ZF'})     # from inc; inc keeps CF
        self.assertIn('CF', s.flags())
        self.assertEqual(s.reg_read('cs'), 0x23)

    def test_int80_reaches_the_syscall_hook(self):
        def syscall(s):
            self.assertEqual((s.reg_read('eax'), s.reg_read('ebx')), (4, 1))
            return 3
        self.snippet.hook_syscall(syscall)
        stop = self.run_asm('mov eax, 4\nmov ebx, 1\nint 0x80\nmov esi, eax\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(self.snippet.reg_read('esi'), 3)

    def test_general_protection_reports_the_selector_error_code(self):
        stop = self.run_asm('mov ax, 0x77\nmov ds, ax')
        self.assertStop(stop, 'exception', vector=13, error_code=0x74, rip=CODE + 4)

    def test_unmapped_memory_without_paging_is_mmio(self):
        stop = self.run_asm('mov eax, [0x40000000]\nhlt')
        self.assertStop(stop, 'mmio', address=0x40000000)

    def test_exception_at_cpl0_unwinds_the_frame_from_the_snippets_stack(self):
        s = self.make_snippet(cpl=0)
        s.reg_write('esp', 0x8000)
        stop = self.run_asm('push 1\nud2', snippet=s)
        self.assertStop(stop, 'exception', vector=6, rip=CODE + 2)
        self.assertEqual(s.reg_read('esp'), 0x7FFC)
        self.assertEqual(s.reg_read('cs'), 0x08)

    def test_timeout_at_cpl0_in_32_bit_mode(self):
        s = self.make_snippet(cpl=0)
        self.assertStop(self.run_asm('jmp $', snippet=s, timeout=0.05), 'timeout')


# ---------------------------------------------------------------------------
# real mode
# ---------------------------------------------------------------------------

class RealModeTest(AsmTestCase):
    mode, cpl = 'real', 0

    def test_arithmetic_in_real_mode(self):
        stop = self.run_asm('mov ax, 0xFFFF\nadd ax, 2\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(self.snippet.reg_read('ax'), 1)
        self.assertIn('CF', self.snippet.flags())

    def test_divide_error_in_real_mode_reports_vector_and_ip(self):
        stop = self.run_asm('xor cx, cx\nmov ax, 1\ndiv cx')
        self.assertStop(stop, 'exception', vector=0, rip=CODE + 5, error_code=None)
        self.assertEqual(self.snippet.reg_read('sp'), 0)               # the frame is popped

    def test_software_interrupt_goes_to_the_exception_hook(self):
        def dos(s, stop):
            if stop.vector != 0x21:
                return False
            s.reg_write('al', s.reg_read('ah') + 1)
            return True
        self.snippet.hook_exception(dos)
        stop = self.run_asm('mov ah, 0x30\nint 0x21\nhlt')
        self.assertStop(stop, 'hlt')
        self.assertEqual(self.snippet.reg_read('al'), 0x31)

    def test_segment_written_in_real_mode_moves_the_base(self):
        s = self.snippet
        s.mem_write(0x20010, b'\x34\x12')
        s.reg_write('ds', 0x2000)
        self.assertEqual(s.reg_read('ds_base'), 0x20000)
        self.run_asm('mov ax, [0x10]\nhlt')
        self.assertEqual(s.reg_read('ax'), 0x1234)

    def test_until_in_real_mode(self):
        stop = self.run_asm('mov ax, 1\nmov bx, 2\nhlt', until=CODE + 3)
        self.assertStop(stop, 'until', rip=CODE + 3)
        self.assertEqual(self.snippet.reg_read('bx'), 0)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

class BadInputTest(SnippetTestCase):

    def test_unknown_register_names_it(self):
        with self.assertRaisesRegex(SnippetError, "unknown register 'rxx'"):
            self.snippet.reg_read('rxx')
        with self.assertRaisesRegex(SnippetError, "unknown register 'xmm16'"):
            self.snippet.reg_write('xmm16', 0)

    def test_overlapping_mem_map_names_both_ranges(self):
        with self.assertRaisesRegex(SnippetError, r'memory at 0xff000-0x100fff overlaps '
                                                  r'memory \(rwx\) at 0x0-0xfffff'):
            self.snippet.mem_map(0xFF000, 0x2000)

    def test_memory_access_may_span_adjacent_regions(self):
        s = self.snippet
        s.mem_map(0x100000, 0x1000, 'r')
        s.mem_write(0xFFFFE, b'abcd')
        self.assertEqual(s.mem_read(0xFFFFC, 8), b'\0\0abcd\0\0')
        with self.assertRaisesRegex(SnippetError, '0x101000 is not in mapped memory'):
            s.mem_write(0x100FFF, b'xy')
        self.assertEqual(s.mem_read(0x100FFF, 1), b'\0')   # nothing written

    def test_mem_map_over_the_system_area_is_refused(self):
        base = K.SNIPPET_SYSTEM['long64'][0]
        with self.assertRaisesRegex(SnippetError, "overlaps kvmlite's system area"):
            self.snippet.mmio_map(base, 0x1000)

    def test_unaligned_map_and_bad_perms_are_refused(self):
        with self.assertRaisesRegex(SnippetError, 'multiples of 0x1000'):
            self.snippet.mem_map(0x200800, 0x1000)
        with self.assertRaisesRegex(SnippetError, 'always readable'):
            self.snippet.mem_map(0x200000, 0x1000, 'wx')

    def test_bad_mode_and_cpl_are_refused(self):
        with self.assertRaisesRegex(SnippetError, "unknown mode 'long'"):
            Snippet('long')
        with self.assertRaisesRegex(SnippetError, r'cpl 3 in real mode: .* runs at 0; leave '
                                    r'cpl out \(or pass 0\)$') as cm:
            Snippet('real', cpl=3)
        self.assertNotIn('or 3', str(cm.exception))        # no advice it would refuse
        with self.assertRaisesRegex(SnippetError, r'cpl 1 in long64: use 0 \(kernel\) or 3'):
            Snippet('long64', cpl=1)

    def test_reading_unmapped_memory_says_so(self):
        with self.assertRaisesRegex(SnippetError, '0x200000 is not in mapped memory'):
            self.snippet.mem_read(0x200000, 4)

    def test_selector_write_outside_real_mode_is_refused(self):
        with self.assertRaisesRegex(SnippetError, 'write ds_base instead'):
            self.snippet.reg_write('ds', 0x10)


class TestCaseHelperTest(unittest.TestCase):

    def test_kvm_unavailable_names_a_missing_device(self):
        self.assertIn('/nonexistent/kvm is missing', K.kvm_unavailable('/nonexistent/kvm'))

    def test_snippet_test_case_skips_each_test_with_the_reason_without_kvm(self):
        class Three(SnippetTestCase):
            def test_a(self):
                self.fail('ran without KVM')
            test_b = test_c = test_a
        suite = unittest.TestLoader().loadTestsFromTestCase(Three)
        result = unittest.TestResult()
        with mock.patch.object(K, 'kvm_unavailable', return_value='/dev/kvm is missing'):
            suite.run(result)
        self.assertEqual(result.testsRun, 3)          # counted one by one, not as a class
        self.assertEqual([(t.id().rsplit('.', 1)[1], why) for t, why in result.skipped],
                         [(n, '/dev/kvm is missing') for n in ('test_a', 'test_b', 'test_c')])
        self.assertEqual(result.failures + result.errors, [])


# ---------------------------------------------------------------------------
# docs/snippets.md: the examples run as written
# ---------------------------------------------------------------------------

class DocsExamplesTest(unittest.TestCase):

    def test_every_python_example_in_docs_snippets_md_runs(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        with open(DOCS) as f:
            blocks = re.findall(r'^```python\n(.*?)^```', f.read(), re.S | re.M)
        self.assertGreaterEqual(len(blocks), 3)
        for i, block in enumerate(blocks):
            with self.subTest(example=i + 1, first_line=block.splitlines()[0]):
                namespace = {'__name__': 'example'}
                with contextlib.redirect_stdout(io.StringIO()):
                    exec(compile(block, f'{DOCS} example {i + 1}', 'exec'), namespace)
                self.run_test_cases(namespace)

    def run_test_cases(self, namespace):
        """Run the TestCase classes an example defines: they must pass."""
        loader = unittest.TestLoader()
        for value in namespace.values():
            if isinstance(value, type) and issubclass(value, unittest.TestCase) \
                    and value.__module__ == 'example':
                result = unittest.TextTestRunner(stream=io.StringIO()).run(
                    loader.loadTestsFromTestCase(value))
                self.assertTrue(result.wasSuccessful() and result.testsRun,
                                f'{value.__name__}: {result.failures + result.errors}')


if __name__ == '__main__':
    unittest.main()
