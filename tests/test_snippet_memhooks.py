"""Snippet.hook_mem_read / hook_mem_write (unicorn's UC_HOOK_MEM_READ and
UC_HOOK_MEM_WRITE) on RAM ranges: the hooked pages leave RAM
(Vm.trap_pages: a read-only KVM slot for a write hook, no slot for a read
hook), kvmlite completes each access that exits and calls the hooks with the
address, size and value. In long64 at CPL3 (native) and CPL0, prot32 at
CPL3 and CPL0 and real mode (emulated on kvm_pvm). Real machine code from
tools/asm.py; the guests are tiny (CPL0 and real mode are emulated here)."""

import unittest

import kvmlite as K
from kvmlite import SnippetError, SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}
REAL = {'eax': 'ax', 'ebx': 'bx', 'ecx': 'cx', 'edx': 'dx', 'esi': 'si', 'edi': 'di'}

# bytes 0x48, 0x47 ... 0x41 to 0x8FFC..0x9003: four before the page at 0x9000, four in it
WRITE_LOOP = '''
    mov ecx, 8
    mov edi, 0x8ffc
top:
    mov al, cl
    add al, 0x40
    mov [edi], al
    inc edi
    dec ecx
    jnz top
    hlt
'''
WRITTEN = [(0x9000 + i, 0x44 - i) for i in range(4)]

# sums 0x9FFC..0xA003 (four bytes before the page at 0xA000, four in it) into bl;
# then a write and a read in the page but outside the hooked range
READ_LOOP = '''
    xor ebx, ebx
    mov ecx, 8
    mov esi, 0x9ffc
top:
    mov al, [esi]
    add bl, al
    inc esi
    dec ecx
    jnz top
    mov byte [0xa010], 0x77
    mov dl, [0xa010]
    hlt
'''


class MemHookCases:
    """The cases; a subclass picks mode and cpl."""

    def asm(self, text):
        if self.mode == 'real':
            for wide, narrow in REAL.items():
                text = text.replace(wide, narrow)
        return assemble(text, bits=BITS[self.mode], origin=CODE)

    def trapped(self, s):
        """The KVM slot layout of the 1 MiB of RAM at 0: None when whole."""
        return next(sl for sl in s._vm.slots if sl.gpa == 0).parts

    def test_a_write_hook_sees_exactly_the_writes_to_its_range_and_their_values(self):
        s = self.snippet
        seen = []
        s.hook_mem_write(lambda s, access, address, size, value:
                         seen.append((access, address, size, value)), 0x9000, 0x9FFF)
        mmio = s._vm.exit_counts[K.ExitReason.MMIO]
        stop = s.run(self.asm(WRITE_LOOP))
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(seen, [('write', a, 1, v) for a, v in WRITTEN])
        self.assertEqual(s.mem_read(0x8FFC, 8), bytes(range(0x48, 0x40, -1)))
        self.assertEqual(s._vm.exit_counts[K.ExitReason.MMIO] - mmio, 4)  # one exit a write
        # reads and fetches of a write-hooked page stay RAM: code there runs
        s.mem_write(0x9800, self.asm('mov al, [0x9001]\nhlt'))
        self.assertEqual(s.run(0x9800).reason, 'hlt')
        self.assertEqual(s.reg_read('al'), 0x43)
        self.assertEqual(len(seen), 4)

    def test_a_read_hook_sees_the_values_read(self):
        s = self.snippet
        s.mem_write(0x9FFC, bytes(range(1, 9)))
        seen = []
        s.hook_mem_read(lambda s, access, address, size, value:
                        seen.append((access, address, size, value)), 0xA000, 0xA00F)
        stop = s.run(self.asm(READ_LOOP))
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(seen, [('read', 0xA000 + i, 1, 5 + i) for i in range(4)])
        self.assertEqual(s.reg_read('bl'), sum(range(1, 9)))
        # the write to the read-hooked page landed; the read outside the range is not reported
        self.assertEqual((s.reg_read('dl'), s.mem_read(0xA010, 1)), (0x77, b'\x77'))

    def test_a_read_hook_may_change_what_the_read_gets(self):
        s = self.snippet

        def bump(s, access, address, size, value):
            s.mem_write(address, bytes((value + 0x10,)))
        s.mem_write(0x9FFC, bytes(range(1, 9)))
        s.hook_mem_read(bump, 0xA000, 0xA003)
        self.assertEqual(s.run(self.asm(READ_LOOP)).reason, 'hlt')
        self.assertEqual(s.reg_read('bl'), sum(range(1, 9)) + 4 * 0x10)

    def test_rep_movsb_and_rep_stosb_across_a_hooked_page(self):
        s = self.snippet
        s.mem_write(0x9FF8, bytes(range(0x60, 0x70)))
        reads, writes = [], []
        s.hook_mem_read(lambda s, a, address, size, value: reads.append((address, size, value)),
                        0xA000, 0xAFFF)
        s.hook_mem_write(lambda s, a, address, size, value: writes.append((address, size, value)),
                         0xC000, 0xCFFF)
        code = self.asm('''
            cld
            mov esi, 0x9ff8
            mov edi, 0xb000
            mov ecx, 16
            rep movsb
            mov edi, 0xbff8
            mov ecx, 16
            mov al, 0x5a
            rep stosb
            hlt
        ''')
        stop = s.run(code)
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(s.mem_read(0xB000, 16), bytes(range(0x60, 0x70)))
        self.assertEqual(s.mem_read(0xBFF8, 16), b'\x5a' * 16)

        def bytes_of(accesses):
            out = {}
            for address, size, value in accesses:
                for i in range(size):
                    out[address + i] = value >> 8 * i & 0xFF
            return out
        self.assertEqual(bytes_of(reads), {0xA000 + i: 0x68 + i for i in range(8)}, reads)
        self.assertEqual(bytes_of(writes), {0xC000 + i: 0x5A for i in range(8)}, writes)
        self.assertEqual(sum(n for _, n, _ in writes), 8)
        self.assertEqual(s.reg_read('ecx' if self.mode != 'real' else 'cx'), 0)

    def test_emu_stop_from_a_write_hook_ends_the_run_after_that_write(self):
        s = self.snippet
        seen = []

        def hook(s, access, address, size, value):
            seen.append((address, value))
            if address == 0x9001:
                s.emu_stop()
        s.hook_mem_write(hook, 0x9000, 0x9FFF)
        code = self.asm(WRITE_LOOP)
        stop = s.run(code)
        self.assertEqual(stop.reason, 'stopped', str(stop))
        self.assertEqual(seen, WRITTEN[:2])
        self.assertEqual(s.mem_read(0x9000, 4), b'\x44\x43\x00\x00')
        self.assertEqual(s.run().reason, 'hlt')            # goes on from there
        self.assertEqual(seen, WRITTEN)
        self.assertEqual(s.mem_read(0x9000, 4), b'\x44\x43\x42\x41')

    def test_several_hooks_removal_and_the_page_back_to_ram(self):
        s = self.snippet
        a, b = [], []
        ha = s.hook_mem_write(lambda s, *args: a.append(args[1]), 0x9000, 0x9001)
        hb = s.hook_mem_write(lambda s, *args: b.append(args[1]))       # all RAM
        self.assertIsNotNone(self.trapped(s))
        code = self.asm(WRITE_LOOP)
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(a, [0x9000, 0x9001])
        self.assertEqual([x for x in b if x >= 0x8FFC], list(range(0x8FFC, 0x9004)))
        s.hook_del(hb)
        a.clear()
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(a, [0x9000, 0x9001])
        s.hook_del(ha)
        a.clear()
        self.assertIsNone(self.trapped(s))                # plain RAM again
        self.assertEqual(s._traps, {})
        mmio = s._vm.exit_counts[K.ExitReason.MMIO]
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(s._vm.exit_counts[K.ExitReason.MMIO], mmio)
        self.assertEqual(a, [])

    def test_no_code_runs_from_a_read_hooked_page(self):
        s = self.snippet
        s.hook_mem_read(lambda *args: None, 0xA000, 0xA000)
        s.mem_write(0xA000, self.asm('mov ecx, 5\nhlt'))
        with self.assertRaisesRegex(SnippetError, r'fetch at 0xa000: hook_mem_read has that page'):
            s.run(0xA000)
        self.assertEqual(s.reg_read('rip'), 0xA000)
        # an instruction that starts before the page and ends in it
        s.mem_write(0x9FFE, self.asm('mov ecx, 5'))
        with self.assertRaisesRegex(SnippetError, r'fetch at 0xa000'):
            s.run(0x9FFE)
        s.hook_del(next(iter(s._hook_lists['mem_read']))[0])
        s.mem_write(0xA000, self.asm('mov ecx, 5\nhlt'))
        self.assertEqual(s.run(0xA000).reason, 'hlt')
        self.assertEqual(s.reg_read('ecx' if self.mode != 'real' else 'cx'), 5)

    def test_map_changes_keep_the_hooked_pages_out_of_ram(self):
        s = self.snippet
        seen = []
        s.hook_mem_write(lambda s, a, address, size, value: seen.append((address, value)),
                         0x200000, 0x203FFF)
        s.mem_map(0x200000, 0x4000)                        # mapped after the hook: hooked
        code = self.asm('''
            mov byte [0x200000], 1
            mov byte [0x201000], 2
            mov byte [0x202000], 3
            mov byte [0x203000], 4
            hlt''') if self.mode != 'real' else None
        if code is None:                                   # real mode reaches 1 MiB only
            return
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(seen, [(0x200000, 1), (0x201000, 2), (0x202000, 3), (0x203000, 4)])
        s.mem_unmap(0x201000, 0x1000)                      # cut: the rest stays hooked
        mmio = []
        s.hook_mmio(lambda s, address, size, value: mmio.append((address, value)))
        s.mem_protect(0x202000, 0x1000, 'rx')              # read-only: writes go to hook_mmio
        seen.clear()
        code = self.asm('''
            mov byte [0x200000], 5
            mov byte [0x202000], 6
            mov byte [0x203000], 7
            hlt''')
        stop = s.run(code)
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(seen, [(0x200000, 5), (0x203000, 7)])
        self.assertEqual(mmio, [(0x202000, 6)])
        self.assertEqual(s.mem_read(0x200000, 1) + s.mem_read(0x202000, 1) +
                         s.mem_read(0x203000, 1), b'\x05\x03\x07')
        ctx = s.context_save()
        self.assertEqual(s.run(code).reason, 'hlt')
        s.context_restore(ctx)
        self.assertEqual(s.run(code).reason, 'hlt')
        self.assertEqual(len(seen), 6)


# three pages nothing maps: a write to 0x30010, a read of 0x40020, a jump to 0x50000
UNMAPPED = {
    'real': '''
        mov ax, 0x3000
        mov ds, ax
        mov word [0x10], 0x1234
        mov ax, 0x4000
        mov ds, ax
        mov bx, [0x20]
        jmp 0x5000:0
    ''',
    'prot32': '''
        mov dword [0x30010], 0x1234
        mov ebx, [0x40020]
        mov eax, 0x50000
        jmp eax
    ''',
    'long64': '''
        mov dword [0x30010], 0x1234
        mov ebx, [0x40020]
        mov eax, 0x50000
        jmp rax
    '''}


class UnmappedHookCases:
    """hook_mem_unmapped: map the page and retry, or go on as without it."""
    mem_size = 0x10000

    def asm(self, text):
        return assemble(text, bits=BITS[self.mode], origin=CODE)

    def lazy(self, log, answer=True):
        def hook(s, access, address, size, value):
            log.append((access, address, size, value))
            if not answer:
                return None
            s.mem_map(address & ~0xFFF, 0x1000)
            if access == 'read_unmapped':
                s.mem_write(address, (0x5678).to_bytes(4, 'little'))
            elif access == 'fetch_unmapped':
                s.mem_write(address, assemble('mov cx, 7\nhlt', bits=BITS[self.mode]))
            return True
        return hook

    def test_the_hook_maps_each_page_and_the_access_is_retried(self):
        s = self.snippet
        log = []
        s.hook_mem_unmapped(self.lazy(log))
        stop = s.run(self.asm(UNMAPPED[self.mode]))
        self.assertEqual(stop.reason, 'hlt', str(stop))
        wide = 2 if self.mode == 'real' else 4
        self.assertEqual(log, [('write_unmapped', 0x30010, wide, 0x1234),
                               ('read_unmapped', 0x40020, wide, 0),
                               ('fetch_unmapped', 0x50000, 1, 0)])
        self.assertEqual(s.mem_read(0x30010, 4), b'\x34\x12\x00\x00')
        self.assertEqual((s.reg_read('bx'), s.reg_read('cx')), (0x5678, 7))
        self.assertEqual([r[0] for r in s.mem_regions()], [0, 0x30000, 0x40000, 0x50000])
        log.clear()
        self.assertEqual(s.run(self.asm(UNMAPPED[self.mode])).reason, 'hlt')
        self.assertEqual(log, [])                         # mapped now: no hook

    def test_a_hook_that_says_no_leaves_the_run_as_without_it(self):
        s = self.snippet
        log = []
        s.hook_mem_unmapped(self.lazy(log, answer=False))
        s.reg_write('rbx', 0x77)
        stop = s.run(self.asm(UNMAPPED[self.mode]))
        self.assertEqual(log[0][:2], ('write_unmapped', 0x30010))
        if self.mode == 'long64':                        # the #PF, as at the fault
            self.assertEqual((stop.reason, stop.name, stop.rip, stop.address),
                             ('exception', '#PF', CODE, 0x30010), str(stop))
            self.assertEqual(stop.error_code & 3, 2)     # not present, a write
        else:                                            # the write stops after itself
            self.assertEqual((stop.reason, stop.address), ('mmio', 0x30010), str(stop))
        self.assertEqual(s.reg_read('bx'), 0x77)
        with self.assertRaisesRegex(SnippetError, 'not in mapped memory'):
            s.mem_read(0x30010, 4)
        if self.mode != 'long64':                        # an unmapped fetch stops there
            stop = s.run(self.asm('mov eax, 0x50000\njmp eax' if self.mode == 'prot32'
                                  else 'jmp 0x5000:0'))
            self.assertEqual((stop.reason, stop.address), ('unmapped', 0x50000), str(stop))
            self.assertEqual(log[-1], ('fetch_unmapped', 0x50000, 1, 0))

    def test_a_range_and_a_string_write_into_an_unmapped_page(self):
        s = self.snippet
        log = []
        s.hook_mem_unmapped(lambda s, *args: log.append(('other',) + args), 0x90000, 0x9FFFF)
        s.hook_mem_unmapped(self.lazy(log), 0x10000, 0x10FFF)
        if self.mode == 'real':                          # es:di reaches 0x10000 from es 0xFFF
            code = self.asm('mov ax, 0xfff\nmov es, ax\nmov di, 0x8\nmov cx, 16\n'
                            'mov al, 0x5a\ncld\nrep stosb\nhlt')
        else:
            code = self.asm('mov edi, 0xfff8\nmov ecx, 16\nmov al, 0x5a\ncld\nrep stosb\nhlt')
        stop = s.run(code)
        self.assertEqual(stop.reason, 'hlt', str(stop))
        self.assertEqual(log, [('write_unmapped', 0x10000, 1, 0x5A)])
        self.assertEqual(s.mem_read(0xFFF8, 16), b'\x5a' * 16)


class LongUser(MemHookCases, SnippetTestCase):
    mode, cpl = 'long64', 3


class LongKernel(MemHookCases, SnippetTestCase):
    mode, cpl = 'long64', 0


class Prot32User(MemHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 3


class Prot32Kernel(MemHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 0


class Real(MemHookCases, SnippetTestCase):
    mode, cpl = 'real', 0


class LongUserUnmapped(UnmappedHookCases, SnippetTestCase):
    mode, cpl = 'long64', 3


class LongKernelUnmapped(UnmappedHookCases, SnippetTestCase):
    mode, cpl = 'long64', 0


class Prot32UserUnmapped(UnmappedHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 3


class Prot32KernelUnmapped(UnmappedHookCases, SnippetTestCase):
    mode, cpl = 'prot32', 0


class RealUnmapped(UnmappedHookCases, SnippetTestCase):
    mode, cpl = 'real', 0


class PoolTest(unittest.TestCase):
    """A recycled Snippet keeps no trap of its last user's memory hooks."""

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        K.snippet_pool_clear()
        self.addCleanup(K.snippet_pool_clear)

    def test_a_recycled_snippet_has_plain_ram(self):
        code = assemble('mov byte [0x9000], 1\nmov al, [0xa000]\nhlt', bits=64, origin=CODE)
        first = K.Snippet('long64', cpl=3)
        vm = first._vm
        first.hook_mem_write(lambda *a: None, 0x9000, 0x9000)
        first.hook_mem_read(lambda *a: None, 0xA000, 0xA000)
        self.assertEqual(first.run(code).reason, 'hlt')
        self.assertEqual(vm.exit_counts[K.ExitReason.MMIO], 2)
        first.close()
        with K.Snippet('long64', cpl=3) as second:
            self.assertIs(second._vm, vm, 'the pool did not hand the VM out again')
            self.assertTrue(all(sl.parts is None for sl in vm.slots))
            self.assertEqual(second.run(code).reason, 'hlt')
            self.assertEqual(vm.exit_counts[K.ExitReason.MMIO], 0)
            self.assertEqual(second.mem_read(0x9000, 1), b'\x01')


if __name__ == '__main__':
    unittest.main()
