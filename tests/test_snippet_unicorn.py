"""What a unicorn user reaches for first, on real guests in each mode it
applies to: mem_unmap, mem_protect (read-only everywhere, no-execute where
the mode has page tables, a clear refusal where it has none), mem_regions,
context_save / context_restore.

Keep CPL0 and real-mode guests tiny: on kvm_pvm hosts they are emulated."""

import unittest

import kvmlite as K
from kvmlite import SnippetError, SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}
PF_WRITE, PF_FETCH = 2, 0x10


class UnicornGapCases:
    """The cases; a subclass picks mode and cpl. ``R`` is a two-page region
    mapped apart from the snippet's RAM."""
    R = 0x200000

    def setUp(self):
        super().setUp()
        s = self.snippet
        if self.mode == 'real':
            self.R = 0x80000            # 8000:0000, inside what real mode reaches
            s.reg_write('ds', self.R >> 4)
        s.mem_map(self.R, 0x2000)
        s.mem_write(self.R, b'\x11' * 0x1000 + b'\x22' * 0x1000)

    def ref(self, offset):
        return f'[{offset:#x}]' if self.mode == 'real' else f'[{self.R + offset:#x}]'

    def acc(self):
        return 'ax' if self.mode == 'real' else 'eax'

    def run_asm(self, text, snippet=None, **kw):
        s = snippet or self.snippet
        return s.run(assemble(text, bits=BITS[self.mode], origin=CODE), **kw)

    def regions(self):
        return [r for r in self.snippet.mem_regions() if r[0] >= self.R]

    # -- mem_unmap -------------------------------------------------------
    def test_unmap_cuts_a_region_and_an_access_there_is_unmapped(self):
        s = self.snippet
        s.mem_unmap(self.R, 0x1000)
        self.assertEqual(self.regions(), [(self.R + 0x1000, self.R + 0x1FFF, 'rwx')])
        self.assertEqual(s.mem_read(self.R + 0x1000, 2), b'\x22\x22')   # kept
        with self.assertRaisesRegex(SnippetError, 'not in mapped memory'):
            s.mem_read(self.R, 1)
        stop = self.run_asm(f'mov {self.acc()}, {self.ref(0x1000)}\n'
                            f'mov {self.acc()}, {self.ref(0)}\nhlt')
        if self.mode == 'long64':
            self.assertEqual((stop.reason, stop.vector, stop.address), ('exception', 14, self.R))
        else:                           # no paging: an unbacked address is device memory
            self.assertEqual((stop.reason, stop.address), ('mmio', self.R), str(stop))
        self.assertEqual(s.reg_read('ax'), 0x2222)     # the first load ran

    def test_unmap_then_map_again_gives_zeroed_memory(self):
        s = self.snippet
        s.mem_unmap(self.R, 0x2000)
        self.assertEqual(self.regions(), [])
        s.mem_map(self.R, 0x1000, 'rwx')
        self.assertEqual(s.mem_read(self.R, 4), bytes(4))
        self.assertEqual(self.run_asm(f'mov {self.acc()}, {self.ref(0)}\nhlt').reason, 'hlt')
        self.assertEqual(s.reg_read('ax'), 0)

    def test_unmap_of_what_is_not_mapped_is_refused(self):
        with self.assertRaisesRegex(SnippetError, rf'mem_unmap at {self.R:#x}-'
                                    rf'{self.R + 0x2FFF:#x}: {self.R + 0x2000:#x} is not mapped'):
            self.snippet.mem_unmap(self.R, 0x3000)
        with self.assertRaisesRegex(SnippetError, 'multiples of 0x1000'):
            self.snippet.mem_unmap(self.R + 1, 0x1000)
        self.assertEqual(len(self.regions()), 1)          # nothing changed

    # -- mem_protect -------------------------------------------------------
    def test_read_only_page_takes_no_write_and_the_write_is_reported(self):
        s = self.snippet
        s.mem_protect(self.R + 0x1000, 0x1000, 'rx')
        self.assertEqual(self.regions(), [(self.R, self.R + 0xFFF, 'rwx'),
                                          (self.R + 0x1000, self.R + 0x1FFF, 'rx')])
        stop = self.run_asm(f'mov {self.acc()}, 0x3333\nmov {self.ref(0)}, {self.acc()}\n'
                            f'mov {self.ref(0x1000)}, {self.acc()}\nhlt')
        self.assertEqual((stop.reason, stop.address), ('mmio', self.R + 0x1000), str(stop))
        self.assertEqual(s.mem_read(self.R, 2), b'\x33\x33')            # writable: written
        self.assertEqual(s.mem_read(self.R + 0x1000, 2), b'\x22\x22')   # read-only: not
        seen = []
        s.hook_mmio(lambda s, a, n, v: seen.append((a, n, v)))
        s.mem_protect(self.R + 0x1000, 0x1000, 'rwx')                   # writable again
        self.assertEqual(s.mem_read(self.R + 0x1000, 2), b'\x22\x22')   # contents kept
        self.assertEqual(self.run_asm(f'mov {self.acc()}, 0x4444\n'
                                      f'mov {self.ref(0x1000)}, {self.acc()}\nhlt').reason, 'hlt')
        self.assertEqual(s.mem_read(self.R + 0x1000, 2), b'\x44\x44')
        self.assertEqual(seen, [])

    def test_no_execute_faults_on_fetch_where_there_is_paging(self):
        s = self.snippet
        s.mem_write(self.R, assemble(f'mov {self.acc()}, 7\nhlt', bits=BITS[self.mode],
                                     origin=self.R))
        if self.mode != 'long64':
            with self.assertRaisesRegex(SnippetError, f'no-execute needs the page tables.*'
                                                      f'{self.mode} runs without paging'):
                s.mem_protect(self.R, 0x1000, 'rw')
            with self.assertRaisesRegex(SnippetError, 'no-execute needs'):
                s.mem_map(0x300000 if self.mode == 'prot32' else 0x90000, 0x1000, 'r')
            self.assertEqual(self.regions()[0][2], 'rwx')
            return
        s.mem_protect(self.R, 0x1000, 'rw')
        stop = s.run(self.R)
        self.assertEqual((stop.reason, stop.vector, stop.address, stop.rip),
                         ('exception', 14, self.R, self.R), str(stop))
        self.assertTrue(stop.error_code & PF_FETCH)
        s.mem_protect(self.R, 0x1000, 'rwx')
        self.assertEqual(s.run(self.R).reason, 'hlt')
        self.assertEqual(s.reg_read('eax'), 7)

    def test_protect_refuses_mmio_gaps_and_bad_perms(self):
        s = self.snippet
        with self.assertRaisesRegex(SnippetError, r"perms 'w'"):
            s.mem_protect(self.R, 0x1000, 'w')
        with self.assertRaisesRegex(SnippetError, 'is not mapped'):
            s.mem_protect(self.R + 0x1000, 0x2000, 'rwx')
        s.mmio_map(self.R + 0x2000, 0x1000)
        with self.assertRaisesRegex(SnippetError, 'is MMIO'):
            s.mem_protect(self.R, 0x3000, 'rwx')
        self.assertEqual(self.regions()[-1], (self.R + 0x2000, self.R + 0x2FFF, ''))
        s.mem_unmap(self.R + 0x2000, 0x1000)                # MMIO can be unmapped
        self.assertEqual(len(self.regions()), 1)

    # -- context_save / context_restore -----------------------------------
    def test_context_restore_puts_every_register_back(self):
        s = self.snippet
        s.reg_write('rbx', 0x1234)
        s.reg_write('xmm3', 0xABCDEF)
        s.reg_write('rip', CODE)
        s.mem_write(CODE, assemble('inc bx\nmov cx, bx\nhlt', bits=BITS[self.mode], origin=CODE))
        ctx = s.context_save()
        self.assertEqual(ctx.reg_read('bx'), 0x1234)
        self.assertEqual(s.run().reason, 'hlt')
        self.assertEqual((s.reg_read('bx'), s.reg_read('cx')), (0x1235, 0x1235))
        s.reg_write('xmm3', 0)
        s.context_restore(ctx)
        self.assertEqual((s.reg_read('bx'), s.reg_read('ip'), s.reg_read('xmm3')),
                         (0x1234, CODE, 0xABCDEF))
        self.assertEqual(s.run().reason, 'hlt')          # the same run again
        self.assertEqual(s.reg_read('cx'), 0x1235)
        other = self.make_snippet()                      # same mode and CPL: fits
        other.context_restore(ctx)
        self.assertEqual(other.reg_read('bx'), 0x1234)
        with self.assertRaisesRegex(SnippetError, 'the context is of'):
            self.make_snippet(mode='long64' if self.mode != 'long64' else 'prot32',
                              cpl=3).context_restore(ctx)


    # -- an instruction fetch where no RAM is ------------------------------
    def test_a_fetch_from_unmapped_memory_is_reported_at_its_address(self):
        s = self.snippet
        s.mem_unmap(self.R, 0x1000)
        far = self.R if self.mode != 'real' else 0x8000
        jump = {'real': f'jmp {far:#x}:0', 'prot32': f'mov eax, {far:#x}\njmp eax',
                'long64': f'mov eax, {far:#x}\njmp rax'}[self.mode]
        stop = self.run_asm(jump)
        if self.mode == 'long64':
            self.assertEqual((stop.reason, stop.vector, stop.address, stop.rip),
                             ('exception', 14, self.R, self.R), str(stop))
            self.assertTrue(stop.error_code & PF_FETCH)
        else:
            self.assertEqual((stop.reason, stop.address), ('unmapped', self.R), str(stop))
            self.assertEqual(s.reg_read('eip'), 0 if self.mode == 'real' else self.R)
            self.assertIsNone(stop.vector)
        # mapped again, the same jump runs what is there
        s.mem_map(self.R, 0x1000)
        s.mem_write(self.R, assemble('mov cx, 9\nhlt', bits=BITS[self.mode], origin=0))
        self.assertEqual(self.run_asm(jump).reason, 'hlt')
        self.assertEqual(s.reg_read('cx'), 9)

    def test_an_instruction_that_runs_past_the_end_of_memory(self):
        # (kvm_pvm raises #UD for it at prot32 CPL3: the length says what it was)
        s = self.snippet
        end = self.R + 0x2000
        s.mem_write(end - 1, b'\xb8')              # mov ax/eax, imm: its operand is past the end
        stop = s.run(end - 1)
        if self.mode == 'long64':
            self.assertEqual((stop.reason, stop.vector, stop.address, stop.rip),
                             ('exception', 14, end, end - 1), str(stop))
        else:
            self.assertEqual((stop.reason, stop.address), ('unmapped', end), str(stop))
        s.mem_write(end - 4, bytes.fromhex('b0010f0b'))      # mov al, 1; ud2: both fit
        stop = s.run(end - 4)
        if self.mode == 'real':
            # KVM's emulator wants 15 bytes and stops ('error'): not an unmapped fetch
            self.assertNotEqual(stop.reason, 'unmapped', str(stop))
        else:
            self.assertEqual((stop.reason, stop.vector, stop.rip), ('exception', 6, end - 2),
                             str(stop))

    # -- several hooks of a kind, hook_del, emu_stop from a hook ------------
    def test_several_io_hooks_are_asked_in_order_until_one_answers(self):
        s = self.snippet
        calls = []

        def quiet(s, port, size, value):
            calls.append(('quiet', port, value))

        def device(s, port, size, value):
            calls.append(('device', port, value))
            return 0x5A if value is None and port == 0x60 else None

        def stopper(s, port, size, value):
            calls.append(('stopper', port, value))
            if port == 0x99:
                s.emu_stop()
        h_quiet = s.hook_io(quiet)
        s.hook_io(device)
        s.hook_io(stopper)
        stop = self.run_asm('mov al, 7\nout 0x80, al\nin al, 0x60\nout 0x99, al\n'
                            'mov bl, 1\nhlt')
        self.assertEqual(stop.reason, 'stopped', str(stop))
        self.assertEqual(s.reg_read('al'), 0x5A)
        self.assertEqual(s.reg_read('bl'), 0)              # stopped before it
        self.assertEqual(calls, [('quiet', 0x80, 7), ('device', 0x80, 7), ('stopper', 0x80, 7),
                                 ('quiet', 0x60, None), ('device', 0x60, None),
                                 ('quiet', 0x99, 0x5A), ('device', 0x99, 0x5A),
                                 ('stopper', 0x99, 0x5A)])
        s.hook_del(h_quiet)
        calls.clear()
        self.assertEqual(s.run().reason, 'hlt')             # goes on after the out
        self.assertEqual(s.reg_read('bl'), 1)
        self.assertEqual(self.run_asm('out 0x80, al\nhlt').reason, 'hlt')
        self.assertEqual([c[0] for c in calls], ['device', 'stopper'])
        with self.assertRaisesRegex(SnippetError, r'hook_del\(%d\): no such hook' % h_quiet):
            s.hook_del(h_quiet)

    def test_the_first_exception_hook_that_returns_true_takes_it(self):
        s = self.snippet
        seen = []

        def not_mine(s, stop):
            seen.append(('not_mine', stop.vector))
            return False

        def skip_ud2(s, stop):
            seen.append(('skip_ud2', stop.vector))
            if stop.vector != 6:
                return False
            s.reg_write('ip', s.reg_read('ip') + 2)
            return True

        def never(s, stop):
            seen.append(('never', stop.vector))
            return True
        s.hook_exception(not_mine)
        h_skip = s.hook_exception(skip_ud2)
        h_never = s.hook_exception(never)
        stop = self.run_asm('ud2\nmov cx, 3\nhlt')
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(s.reg_read('cx'), 3)
        self.assertEqual(seen, [('not_mine', 6), ('skip_ud2', 6)])
        s.hook_del(h_skip)
        s.hook_del(h_never)
        stop = self.run_asm('ud2\nhlt')
        self.assertEqual((stop.reason, stop.vector), ('exception', 6), str(stop))

    def test_unicorn_calls_kvmlite_cannot_offer_say_what_to_use(self):
        s = self.snippet
        self.assertFalse(hasattr(s, 'hook_block'))
        with self.assertRaisesRegex(K.SnippetUnsupported, r'Snippet.hook_block: .*hook_code'):
            s.hook_block(lambda *a: None)
        with self.assertRaisesRegex(SnippetError, 'hook_mem_fetch: .*until'):
            s.hook_mem_fetch
        with self.assertRaisesRegex(AttributeError, "no attribute 'hook_nonsense'"):
            s.hook_nonsense


class LongModeUserGaps(UnicornGapCases, SnippetTestCase):
    mode, cpl = 'long64', 3


class LongModeKernelGaps(UnicornGapCases, SnippetTestCase):
    mode, cpl = 'long64', 0

    def test_a_later_cpuid_hook_answers_over_an_earlier_one(self):
        word = lambda text: int.from_bytes(text, 'little')

        def vendor(name):
            return lambda s, leaf, sub: (0xD, word(name), 0, 0) if leaf == 0 else None
        for delete_b, want in ((False, b'BBBB'), (True, b'AAAA')):
            s = self.make_snippet()
            h_a = s.hook_cpuid(vendor(b'AAAA'))
            h_b = s.hook_cpuid(vendor(b'BBBB'))
            if delete_b:
                s.hook_del(h_b)             # before the first run: the table is remade
            self.assertEqual(self.run_asm('xor eax, eax\ncpuid\nhlt', snippet=s).reason,
                             'hlt')
            self.assertEqual((s.reg_read('ebx'), s.reg_read('eax')), (word(want), 0xD))
            with self.assertRaisesRegex(SnippetError, 'after a run'):
                s.hook_del(h_a)

    def test_msr_hooks_each_see_the_msrs_they_asked_for(self):
        s = self.snippet
        seen = []
        s.hook_msr(lambda s, i, v: seen.append(('tsc', i)) or 0x1111, msrs=[0x10])
        h = s.hook_msr(lambda s, i, v: seen.append(('cs', i)) or 0x2222, msrs=[0x174])
        stop = self.run_asm('mov ecx, 0x10\nrdmsr\nmov ebx, eax\nmov ecx, 0x174\nrdmsr\nhlt')
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual((s.reg_read('ebx'), s.reg_read('eax')), (0x1111, 0x2222))
        self.assertEqual(seen, [('tsc', 0x10), ('cs', 0x174)])
        s.hook_del(h)                       # KVM answers 0x174 again (it was never written)
        self.assertEqual(self.run_asm('mov ecx, 0x174\nrdmsr\nhlt').reason, 'hlt')
        self.assertEqual(s.reg_read('eax'), 0)
        self.assertEqual(len(seen), 2)


class ProtectedModeGaps(UnicornGapCases, SnippetTestCase):
    mode, cpl = 'prot32', 3


class RealModeGaps(UnicornGapCases, SnippetTestCase):
    mode, cpl, mem_size = 'real', 0, 0x80000


if __name__ == '__main__':
    unittest.main()
