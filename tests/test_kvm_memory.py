"""Guest memory under real KVM: the memory API against a guest's loads and
stores, unbacked addresses as MMIO exits, read-only slots, the dirty log
(Documentation/virt/kvm/api.rst: KVM_SET_USER_MEMORY_REGION,
KVM_GET_DIRTY_LOG, KVM_MEM_READONLY)."""

import ctypes
import unittest

import kvmlite as K
from tests.guest import DATA, MMIO, Guest, require_cap, requires_kvm

PAGE = K.PAGE_SIZE
EXTRA = 0x400000            # a second slot, above the 2 MiB of RAM


@requires_kvm
class GuestMemoryTest(unittest.TestCase):

    def test_guest_stores_read_back_through_read_view_and_read_int(self):
        code = f'''
            mov rdi, {DATA}
            mov rax, 0x1122334455667788
            mov [rdi], rax
            mov dword ptr [rdi + 0x1000], 0xCAFEF00D
            mov word ptr [rdi + 0x1ffe], 0xBEEF
            hlt
        '''
        with Guest(code) as g:
            g.expect(K.Hlt)
            self.assertEqual(g.vm.read_int(DATA, 8), 0x1122334455667788)
            self.assertEqual(g.vm.read(DATA + 0x1000, 4), bytes.fromhex('0df0feca'))
            self.assertEqual(bytes(g.vm.view(DATA + 0x1FFE, 2)), b'\xef\xbe')
            self.assertEqual(g.vm.read(DATA + 8, 8), bytes(8))

    def test_host_writes_are_what_the_guest_loads(self):
        code = f'''
            mov rdi, {DATA}
            mov rax, [rdi]
            out 0x10, eax
            shr rax, 32
            out 0x10, eax
            mov eax, [rdi + 0x10]
            out 0x10, eax
            movzx eax, byte ptr [rdi + 0x20]
            out 0x10, eax
            hlt
        '''
        with Guest(code) as g:
            g.vm.write_int(DATA, 8, 0xDEADBEEF01234567)
            g.vm.write(DATA + 0x10, b'\x44\x33\x22\x11')
            g.vm.view(DATA + 0x20, 1)[0] = 0x7E          # through a zero-copy view
            for value in (0x01234567, 0xDEADBEEF, 0x11223344, 0x7E):
                g.expect(K.IoOut, port=0x10, size=4, value=value)
            g.expect(K.Hlt)

    def test_structs_round_trip_through_guest_memory(self):
        with Guest() as g:
            seg = K.segment(0x10, base=0x1234, code=True)
            g.vm.write_struct(DATA, seg)
            back = g.vm.read_struct(DATA, K.kvm_segment)
            self.assertEqual(bytes(back), bytes(seg))
            self.assertEqual(g.vm.read(DATA, ctypes.sizeof(seg)), bytes(seg))

    def test_access_outside_every_slot_is_a_guest_memory_error(self):
        with Guest() as g:
            end = g.ram.end
            with self.assertRaises(K.GuestMemoryError):
                g.vm.read(end - 4, 8)                   # straddles the end of RAM
            with self.assertRaises(K.GuestMemoryError):
                g.vm.write(MMIO, b'x')
            with self.assertRaisesRegex(K.GuestMemoryError, 'overlaps'):
                g.vm.add_memory(end - PAGE, 2 * PAGE)
            with self.assertRaises(K.GuestMemoryError):
                g.vm.add_memory(EXTRA + 1, PAGE)        # not page aligned

    def test_unbacked_addresses_exit_as_mmio_with_address_size_and_data(self):
        code = f'''
            mov rdx, {MMIO}
            mov eax, [rdx]
            mov [rdx + 8], eax
            mov byte ptr [rdx + 3], 0xA5
            mov rax, [rdx + 0x10]
            mov [rdx + 0x18], rax
            movzx eax, word ptr [rdx + 0x20]
            out 0x10, ax
            hlt
        '''
        with Guest(code) as g:
            e = g.expect(K.MmioRead, addr=MMIO)
            self.assertEqual(len(e.buf), 4)
            e.set(0x12345678)
            g.expect(K.MmioWrite, addr=MMIO + 8, data=bytes.fromhex('78563412'))
            g.expect(K.MmioWrite, addr=MMIO + 3, data=b'\xa5')
            e = g.expect(K.MmioRead, addr=MMIO + 0x10)
            self.assertEqual(len(e.buf), 8)
            e.set(0x0102030405060708)
            e = g.expect(K.MmioWrite, addr=MMIO + 0x18)
            self.assertEqual(e.value, 0x0102030405060708)
            e = g.expect(K.MmioRead, addr=MMIO + 0x20)
            e.set(0xBEEF)
            g.expect(K.IoOut, port=0x10, size=2, value=0xBEEF)
            g.expect(K.Hlt)

    def test_read_only_slot_is_readable_and_turns_writes_into_mmio_exits(self):
        code = f'''
            mov rdx, {EXTRA}
            mov eax, [rdx + 4]
            out 0x10, eax
            mov dword ptr [rdx + 4], 0x11223344
            mov eax, [rdx + 4]
            out 0x10, eax
            hlt
        '''
        require_cap(self, K.Cap.READONLY_MEM)
        with Guest(code) as g:
            rom = g.vm.add_memory(EXTRA, PAGE, readonly=True)
            self.assertTrue(rom.readonly)
            self.assertNotIn((EXTRA, PAGE), g.vm.ram)
            g.vm.write_int(EXTRA + 4, 4, 0xA5A5F00D)        # the host may fill a ROM
            g.expect(K.IoOut, port=0x10, value=0xA5A5F00D)
            g.expect(K.MmioWrite, addr=EXTRA + 4, data=bytes.fromhex('44332211'))
            g.expect(K.IoOut, port=0x10, value=0xA5A5F00D)   # the write did not land
            g.expect(K.Hlt)
            self.assertEqual(g.vm.read_int(EXTRA + 4, 4), 0xA5A5F00D)

    def test_removed_slot_reads_become_mmio_exits(self):
        code = f'''
            mov rdx, {EXTRA}
            mov eax, [rdx]
            out 0x10, eax
            hlt
            mov eax, [rdx]
            hlt
        '''
        with Guest(code) as g:
            slot = g.vm.add_memory(EXTRA, PAGE)
            g.vm.write_int(EXTRA, 4, 0x5EED)
            g.expect(K.IoOut, value=0x5EED)
            g.expect(K.Hlt)
            g.vm.remove_memory(slot)
            g.expect(K.MmioRead, addr=EXTRA)
            with self.assertRaises(K.GuestMemoryError):
                g.vm.read(EXTRA, 4)


@requires_kvm
class DirtyLogTest(unittest.TestCase):

    def test_dirty_log_marks_exactly_the_pages_the_guest_wrote(self):
        code = f'''
            mov rdx, {EXTRA}
            mov byte ptr [rdx + 1 * {PAGE} + 8], 1
            mov qword ptr [rdx + 5 * {PAGE}], 2
            mov byte ptr [rdx + 6 * {PAGE} + {PAGE - 1}], 3
            mov eax, [rdx + 9 * {PAGE}]
            mov eax, [rdx + 15 * {PAGE}]
            hlt
            mov dword ptr [rdx + 15 * {PAGE} + 4], 4
            hlt
        '''
        with Guest(code) as g:
            log = g.vm.add_memory(EXTRA, 16 * PAGE, dirty_log=True)
            self.assertTrue(log.dirty_logging)
            g.vm.write(EXTRA + 9 * PAGE, b'host')     # the host's writes are not logged
            self.assertEqual(g.vm.get_dirty_log(log), [])
            g.expect(K.Hlt)
            self.assertEqual(g.vm.get_dirty_log(log),
                             [EXTRA + PAGE, EXTRA + 5 * PAGE, EXTRA + 6 * PAGE])
            self.assertEqual(g.vm.get_dirty_log(log), [])   # reading the log clears it
            g.expect(K.Hlt)
            self.assertEqual(g.vm.get_dirty_log(log), [EXTRA + 15 * PAGE])
            self.assertEqual(g.vm.read_int(EXTRA + 6 * PAGE + PAGE - 1, 1), 3)

    def test_manual_protect_keeps_the_log_until_it_is_cleared(self):
        require_cap(self, K.Cap.MANUAL_DIRTY_LOG_PROTECT2)
        code = f'''
            mov rdx, {EXTRA}
            mov byte ptr [rdx + 2 * {PAGE}], 1
            hlt
            mov byte ptr [rdx + 2 * {PAGE} + 1], 2
            mov byte ptr [rdx + 3 * {PAGE}], 3
            hlt
        '''
        with Guest(code) as g:
            g.vm.enable_cap(K.Cap.MANUAL_DIRTY_LOG_PROTECT2, 1)     # ..._MANUAL_PROTECT_ENABLE
            log = g.vm.add_memory(EXTRA, 8 * PAGE, dirty_log=True)
            g.expect(K.Hlt)
            self.assertEqual(g.vm.get_dirty_log(log), [EXTRA + 2 * PAGE])
            self.assertEqual(g.vm.get_dirty_log(log), [EXTRA + 2 * PAGE])   # not cleared
            g.vm.clear_dirty_log(log)
            self.assertEqual(g.vm.get_dirty_log(log), [])
            g.expect(K.Hlt)                # writes the cleared page again, and one more
            self.assertEqual(g.vm.get_dirty_log(log), [EXTRA + 2 * PAGE, EXTRA + 3 * PAGE])

    def test_dirty_log_of_a_slot_without_logging_fails_naming_the_ioctl(self):
        with Guest() as g:
            with self.assertRaisesRegex(K.KvmError, 'KVM_GET_DIRTY_LOG failed: ENOENT'):
                g.vm.get_dirty_log(g.ram)


if __name__ == '__main__':
    unittest.main()
