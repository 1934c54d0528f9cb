"""The per-process pool of Snippet VMs: a closed Snippet's VM is reset,
the reset is read back and checked, and the next Snippet of that mode and
level takes it instead of creating a VM. The point of this file is that a
recycled Snippet cannot see anything of its last user: registers, SSE
state, MSRs, memory, mappings, the kvmlite stack its stops wrote, a
half-done MMIO read, bus counters. Each case compares the recycled Snippet
with a never-used one, field by field."""

import unittest

import kvmlite as K
from kvmlite import Snippet
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR
BITS = {'real': 16, 'prot32': 32, 'long64': 64}
SECRET = 0x5EC12E7_0BADC0DE
GPRS = ('rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9', 'r10', 'r11',
        'r12', 'r13', 'r14', 'r15', 'rip', 'rflags')
OTHERS = ('cs', 'ds', 'es', 'fs', 'gs', 'ss', 'cr0', 'cr2', 'cr3', 'cr4', 'efer', 'mxcsr') + \
    tuple(f'xmm{i}' for i in range(16))
MSRS = (0xC0000102, 0x175, 0x174, 0x176, 0xC0000100, 0xC0000101)  # kernel GS base,
#       SYSENTER ESP/CS/EIP, FS and GS base


def state(s):
    """Everything a snippet can read of itself, by name."""
    out = {name: s.reg_read(name) for name in GPRS + OTHERS}
    if s.mode == 'long64':
        out.update(fs_base=s.reg_read('fs_base'), gs_base=s.reg_read('gs_base'))
    return out


class RecycleCases:
    """mode and cpl from the subclass."""

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        K.snippet_pool_clear()
        self.addCleanup(K.snippet_pool_clear)

    def asm(self, text):
        return assemble(text, bits=BITS[self.mode], origin=CODE)

    def dirty(self, s):
        """Use ``s`` as a careless user would, leaving secrets everywhere."""
        s.mem_write(0x2000, SECRET.to_bytes(8, 'little') * 64)
        s.mem_map(0x200000, 0x1000)
        s.mem_write(0x200000, b'secret!!')
        for name in GPRS[:15]:
            if name != 'rsp' or self.mode != 'real':
                s.reg_write(name, SECRET & (0xFFFF if self.mode == 'real' else ~0 & (1 << 64) - 1))
        for i in range(16):
            s.reg_write(f'xmm{i}', SECRET | i << 100)
        s.reg_write('mxcsr', 0x1F80 ^ 0x6000)            # round toward zero
        if self.mode == 'long64':
            s.reg_write('fs_base', 0x7000_0000)
        s.reg_write('rsp', 0x8000)
        if self.cpl == 0 and self.mode != 'real':
            body = ''.join(f'mov ecx, {m:#x}\nmov eax, 0x1234\nxor edx, edx\nwrmsr\n'
                           for m in MSRS[:3])
            self.assertEqual(s.run(self.asm(body + 'hlt')).reason, 'hlt')
        # a stop through kvmlite's stubs writes the secret RIP on its stack
        s.reg_write('rax', SECRET & 0xFFFF)
        stop = s.run(self.asm('push ax\nud2'))
        self.assertEqual(stop.reason, 'exception', str(stop))
        # and a read left half done
        addr = 0x40000000 if self.mode != 'real' else 0x10
        if self.mode == 'long64':
            s.mmio_map(addr, 0x1000)
        if self.mode == 'real':
            s.reg_write('ds', 0xFFFF)
        stop = s.run(self.asm(f'mov eax, [{addr:#x}]\nhlt' if self.mode != 'real'
                              else f'mov ax, [{addr:#x}]\nhlt'))
        self.assertEqual(stop.reason, 'mmio', str(stop))

    def test_a_recycled_snippet_is_a_never_used_one(self):
        first = Snippet(self.mode, cpl=self.cpl)
        vm = first._vm
        self.dirty(first)
        first.close()
        second = Snippet(self.mode, cpl=self.cpl)
        self.addCleanup(second.close)
        self.assertIs(second._vm, vm, 'the pool did not hand the VM out again')
        fresh = Snippet(self.mode, cpl=self.cpl)           # the pool is empty: a new VM
        self.addCleanup(fresh.close)
        self.assertIsNot(fresh._vm, vm)
        self.assertEqual(state(second), state(fresh))
        self.assertEqual(second.mem_read(0, 0x100000), bytes(0x100000))
        with self.assertRaisesRegex(K.SnippetError, 'not in mapped memory'):
            second.mem_read(0x200000, 8)
        base, size = K.SNIPPET_SYSTEM[self.mode]
        n = min(size, 0x8000)
        self.assertEqual(second._system.map[:n], fresh._system.map[:n])   # stack page too
        with self.assertRaisesRegex(K.SnippetError, 'no MMIO access is waiting'):
            second.resume(1)
        # the guest's own view: the same code gives the same answers
        for s in (second, fresh):
            s.mem_write(0x3000, b'\x90\xf4')
        self.assertEqual(second.run(0x3000), fresh.run(0x3000))
        self.assertEqual(state(second), state(fresh))
        if self.mode == 'long64':     # the last user's mapping is gone from the page tables
            code = self.asm('mov eax, [0x200000]\nhlt')
            stop = second.run(code)
            self.assertEqual((stop, stop.name), (fresh.run(code), '#PF'))
        if self.cpl == 0 and self.mode != 'real':
            body = ''.join(f'mov ecx, {m:#x}\nrdmsr\nmov [{0x4000 + 8 * i:#x}], eax\n'
                           f'mov [{0x4004 + 8 * i:#x}], edx\n' for i, m in enumerate(MSRS))
            code = self.asm(body + 'hlt')
            self.assertEqual(second.run(code), fresh.run(code))
            self.assertEqual(second.mem_read(0x4000, 8 * len(MSRS)),
                             fresh.mem_read(0x4000, 8 * len(MSRS)))
        self.assertEqual(second._vm.exit_counts, fresh._vm.exit_counts)

    def test_a_change_taken_back_before_close_is_undone_in_kvm_too(self):
        # after a run KVM holds the changed CR2; the user then writes the
        # fresh value back and closes without running: kvm_run's sync area
        # reads as fresh, KVM itself does not (the reset skips a class only
        # when the area is KVM's own state)
        s = Snippet(self.mode, cpl=self.cpl)
        vm = s._vm
        fresh = s.reg_read('cr2')
        s.reg_write('cr2', SECRET & 0xFFFFFFFF)
        self.assertEqual(s.run(self.asm('hlt')).reason, 'hlt')
        self.assertEqual(s.reg_read('cr2'), SECRET & 0xFFFFFFFF)
        s.reg_write('cr2', fresh)
        s.close()
        with Snippet(self.mode, cpl=self.cpl) as again:
            self.assertIs(again._vm, vm)
            self.assertEqual(again.run(self.asm('hlt')).reason, 'hlt')
            self.assertEqual(again.reg_read('cr2'), fresh)

    def test_a_snippet_that_wrote_kvmlites_system_area_is_not_recycled(self):
        if self.mode == 'long64' and self.cpl == 3:
            self.skipTest('the system area is supervisor-only at CPL3 in long64')
        s = Snippet(self.mode, cpl=self.cpl)
        vm = s._vm
        base = K.SNIPPET_SYSTEM[self.mode][0]
        if self.mode == 'real':       # the IVT's entry for int 0x40, through FFFF:xxxx
            s.reg_write('ds', 0xFFFF)
            code = f'mov byte [{base + 0x200 + 0x100 - 0xFFFF0:#x}], 0x42\nhlt'
        else:                         # a byte of the IDT
            code = f'mov ebx, {base + 0x1000 + 0x100:#x}\nmov byte [rbx], 0x42\nhlt' \
                if self.mode == 'long64' else f'mov byte [{base + 0x1000 + 0x100:#x}], 0x42\nhlt'
        self.assertEqual(s.run(self.asm(code)).reason, 'hlt')
        s.close()
        self.assertLess(vm.fd, 0, 'a VM whose IDT the guest changed went back to the pool')

    def test_a_snippet_whose_vm_was_used_is_not_recycled(self):
        s = Snippet(self.mode, cpl=self.cpl)
        vm = s.vm                                        # the user may do anything with it now
        s.close()
        self.assertLess(vm.fd, 0)
        other = Snippet(self.mode, cpl=self.cpl)
        self.addCleanup(other.close)
        self.assertIsNot(other._vm, vm)


class LongModeUserRecycleTest(RecycleCases, unittest.TestCase):
    mode, cpl = 'long64', 3


class LongModeKernelRecycleTest(RecycleCases, unittest.TestCase):
    mode, cpl = 'long64', 0


class ProtectedModeRecycleTest(RecycleCases, unittest.TestCase):
    mode, cpl = 'prot32', 3


class RealModeRecycleTest(RecycleCases, unittest.TestCase):
    mode, cpl = 'real', 0


class PoolSharingTest(unittest.TestCase):

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        K.snippet_pool_clear()
        self.addCleanup(K.snippet_pool_clear)

    def test_snippets_given_a_kvm_share_its_pool_only(self):
        with K.Kvm() as kvm:
            s = Snippet('long64', cpl=3, kvm=kvm)
            vm = s._vm
            s.close()
            with Snippet('long64', cpl=3) as other:       # the process's own /dev/kvm
                self.assertIsNot(other._vm, vm)
            with Snippet('long64', cpl=3, kvm=kvm) as again:
                self.assertIs(again._vm, vm)
                self.assertEqual(again.run(b'\xb8\x07\x00\x00\x00\xf4').reason, 'hlt')
                self.assertEqual(again.reg_read('eax'), 7)

    def test_hook_cpuid_on_a_recycled_snippet_moves_it_to_a_new_vm(self):
        s = Snippet('long64', cpl=0)
        s.run(b'\xf4')
        vm = s._vm
        s.close()
        s = Snippet('long64', cpl=0)
        self.addCleanup(s.close)
        self.assertIs(s._vm, vm)
        s.mem_write(0x2000, b'kept')
        s.reg_write('rbx', 5)
        s.hook_cpuid(lambda s, leaf, sub: (1, 2, 3, 4) if leaf == 0x40000100 else None,
                     leaves=[0x40000100])
        self.assertIsNot(s._vm, vm)
        self.assertEqual((s.mem_read(0x2000, 4), s.reg_read('rbx')), (b'kept', 5))
        stop = s.run(assemble('mov eax, 0x40000100\ncpuid\nhlt', bits=64, origin=CODE))
        self.assertEqual((stop.reason, s.reg_read('ecx')), ('hlt', 3), str(stop))

    def test_a_last_users_until_breakpoint_is_gone(self):
        code = assemble('nop\nnop\nmov eax, 3\nhlt', bits=64, origin=CODE)
        s = Snippet('long64', cpl=0)
        self.assertEqual(s.run(code, until=CODE + 1).reason, 'until')
        vm = s._vm
        s.close()
        with Snippet('long64', cpl=0) as again:
            self.assertIs(again._vm, vm)
            stop = again.run(code)
            self.assertEqual((stop.reason, again.reg_read('eax')), ('hlt', 3), str(stop))

    def test_the_pool_keeps_a_few_vms_and_closes_the_rest(self):
        many = [Snippet('real') for _ in range(K.SNIPPET_POOL_SIZE + 2)]
        vms = [s._vm for s in many]
        for s in many:
            s.close()
        self.assertEqual(sum(vm.fd >= 0 for vm in vms), K.SNIPPET_POOL_SIZE)


if __name__ == '__main__':
    unittest.main()
