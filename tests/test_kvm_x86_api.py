"""The rest of the x86 KVM API on real KVM (Documentation/virt/kvm/api.rst,
section 4): machine checks, SREGS2, devices and attributes, the vCPU TSC
offset, the dirty ring, nested state, the PMU event filter and the smaller
ioctls. Where the host lacks a capability the test skips naming it and its
number, and a test checks that the wrapper then raises a KvmliteError that
names it. Guests are a few instructions: kernel-mode code may be emulated.
"""

import ctypes
import errno
import mmap
import os
import struct
import unittest

import kvmlite as K
from tests.guest import (CODE, DATA, STACK, Guest, asm, describe, kvm, require_cap,
                         requires_kvm)

CR4_MCE = 1 << 6


def lacks(cap):
    return not kvm().check_extension(cap)


def bare_vm(code, ram=2 << 20, before_vcpu=None):
    """A VM with RAM at 0 and ``code`` at CODE, whose one vCPU is created in
    long mode only after ``before_vcpu(vm)`` ran (for what must precede vCPUs)."""
    vm = kvm().create_vm()
    try:
        if before_vcpu:
            before_vcpu(vm)
        vm.add_memory(0, ram)
        vm.write(CODE, asm(code)[0])
        cpu = vm.create_vcpu()
        cpu.set_cpuid2(K.cpuid_entries(kvm(), 0))
        K.setup_long_mode(cpu, vm, CODE, STACK)
    except BaseException:
        vm.close()
        raise
    return vm, cpu


@requires_kvm
class MachineCheckTest(unittest.TestCase):

    GUEST = '''
        hlt
    spin:
        hlt
        jmp spin
    mc_handler:
        mov ecx, 0x405          ; IA32_MC1_STATUS
        rdmsr
        mov ebx, eax
        mov esi, edx
        mov ecx, 0x17a          ; IA32_MCG_STATUS
        rdmsr
        mov edi, eax
        mov al, 0x12
        out 0x10, al
        hlt
    '''

    def test_a_machine_check_reaches_the_guest_handler_with_the_bank_status(self):
        require_cap(self, K.Cap.MCE)
        banks = kvm().check_extension(K.Cap.MCE)
        self.assertGreaterEqual(banks, 2)
        with Guest(self.GUEST) as g:
            g.set_handler(18, g.labels['mc_handler'])
            s = g.vcpu.get_sregs()
            s.cr4 |= CR4_MCE
            g.vcpu.set_sregs(s)
            g.vcpu.setup_mce()
            g.expect(K.Hlt)
            status = K.MCI_STATUS_VAL | K.MCI_STATUS_UC | K.MCI_STATUS_EN | 0x1234
            g.vcpu.set_mce(1, status, addr=0xABC000)
            exit = g.vcpu.run(timeout=20)
            if not (isinstance(exit, K.IoOut) and exit.port == 0x10):
                self.fail(f'#MC did not reach the handler: {describe(g.vcpu, exit)}')
            r = g.vcpu.get_regs()
            self.assertEqual(r.rsi << 32 | r.rbx, status)            # MC1_STATUS as injected
            self.assertTrue(r.rdi & K.MCG_STATUS_MCIP)                # a machine check in progress
            self.assertEqual(g.vcpu.get_msrs([0x406])[0x406], 0xABC000)   # MC1_ADDR

    def test_a_corrected_error_is_only_logged(self):
        require_cap(self, K.Cap.MCE)
        with Guest('hlt\nhlt') as g:
            g.vcpu.setup_mce()
            g.vcpu.set_mce(0, K.MCI_STATUS_VAL | 0x55)               # no UC: no #MC
            g.expect(K.Hlt)
            self.assertEqual(g.vcpu.get_msrs([0x401])[0x401], K.MCI_STATUS_VAL | 0x55)

    def test_mce_wrappers_name_the_capability_when_absent(self):
        if not lacks(K.Cap.MCE):
            self.skipTest('this host offers KVM_CAP_MCE (31): nothing to refuse')
        with Guest('hlt') as g, self.assertRaisesRegex(K.KvmliteError, r'KVM_CAP_MCE \(31\)'):
            g.vcpu.setup_mce()


@requires_kvm
class Sregs2Test(unittest.TestCase):
    """A PAE guest: the four PDPTRs are registers, loaded when CR3 is."""

    PDPT = 0x30000
    PDS = (0x31000, 0x32000, 0x33000, 0x34000)
    OTHER_PD = 0x35000

    def pae_guest(self):
        g = Guest('mov eax, [0x40000000]\nout 0x10, eax\nhlt', mode='prot32', ram=8 << 20)
        for i, pd in enumerate(self.PDS):
            g.vm.write_int(self.PDPT + 8 * i, 8, pd | 1)
        g.vm.write_int(self.PDS[0], 8, 0x000000 | 0x83)     # 0-2 MiB: itself (2 MiB page)
        g.vm.write_int(self.PDS[1], 8, 0x400000 | 0x83)     # 1 GiB -> 4 MiB, by the tables
        g.vm.write_int(self.OTHER_PD, 8, 0x600000 | 0x83)   # 1 GiB -> 6 MiB, by OTHER_PD
        g.vm.write_int(0x400000, 4, 0x44444444)
        g.vm.write_int(0x600000, 4, 0x66666666)
        s = g.vcpu.get_sregs()
        s.cr3, s.cr4 = self.PDPT, s.cr4 | K.CR4_PAE
        s.cr0 |= K.CR0_PG
        g.vcpu.set_sregs(s)
        return g

    PAE_ON = '''
        mov eax, 0x30000
        mov cr3, eax
        mov eax, cr4
        or eax, 0x20
        mov cr4, eax
        mov eax, cr0
        or eax, 0x80000000
        mov cr0, eax
        hlt
    '''

    def test_sregs2_round_trips_the_pdptrs(self):
        require_cap(self, K.Cap.SREGS2)
        with self.pae_guest() as g:
            if not g.vcpu.get_sregs().cr0 & K.CR0_PG:
                self.pae_refused(g)
                return
            s2 = g.vcpu.get_sregs2()
            self.assertTrue(s2.flags & K.KVM_SREGS2_FLAGS_PDPTRS_VALID)
            self.assertEqual(list(s2.pdptrs), [pd | 1 for pd in self.PDS])
            # the registers, not memory: point PDPTR 1 elsewhere, memory unchanged
            s2.pdptrs[1] = self.OTHER_PD | 1
            g.vcpu.set_sregs2(s2)
            self.assertEqual(list(g.vcpu.get_sregs2().pdptrs),
                             [self.PDS[0] | 1, self.OTHER_PD | 1, self.PDS[2] | 1, self.PDS[3] | 1])
            self.assertEqual(g.vm.read_int(self.PDPT + 8, 8), self.PDS[1] | 1)
            self.assertEqual(g.vcpu.translate(0x40000123).physical, 0x600123)
            # and the guest's own load goes through the register too
            exit = g.vcpu.run(timeout=20)
            if not isinstance(exit, K.IoOut):
                self.fail(f'the PAE guest did not reach its out: {describe(g.vcpu, exit)}')
            self.assertEqual(exit.data, struct.pack('<I', 0x66666666))

    def pae_refused(self, g):
        """This host does not run 32-bit PAE paging (kvm_pvm: only long-mode
        paging). Pin what it does, so a host that starts to run it fails this
        and gets the full test: KVM_SET_SREGS drops CR0.PG, a guest's own
        mov cr0 shuts it down, and KVM refuses PDPTRs outside PAE paging."""
        if not K.host_emulates_kernel_mode():
            self.fail('KVM_SET_SREGS dropped CR0.PG of a PAE guest on a VMX/SVM host: '
                      f'{describe(g.vcpu, None)}')
        s2 = g.vcpu.get_sregs2()
        self.assertFalse(s2.flags & K.KVM_SREGS2_FLAGS_PDPTRS_VALID)
        s2.flags, s2.pdptrs[0] = K.KVM_SREGS2_FLAGS_PDPTRS_VALID, self.PDS[0] | 1
        with self.assertRaises(K.KvmError) as cm:
            g.vcpu.set_sregs2(s2)
        self.assertEqual(cm.exception.errno, errno.EINVAL)
        with Guest(self.PAE_ON, mode='prot32') as own:
            for i, pd in enumerate(self.PDS):
                own.vm.write_int(self.PDPT + 8 * i, 8, pd | 1)
            own.vm.write_int(self.PDS[0], 8, 0x83)
            exit = own.vcpu.run(timeout=20)
            self.assertIsInstance(exit, K.Shutdown, describe(own.vcpu, exit))
            self.assertEqual(own.vcpu.get_regs().rax, 0x80000033)   # at its mov cr0

    def test_sregs_and_sregs2_agree(self):
        require_cap(self, K.Cap.SREGS2)
        with self.pae_guest() as g:
            s, s2 = g.vcpu.get_sregs(), g.vcpu.get_sregs2()
            for name in ('cr0', 'cr3', 'cr4', 'efer', 'apic_base'):
                self.assertEqual(getattr(s, name), getattr(s2, name), name)
            self.assertEqual(bytes(s.cs), bytes(s2.cs))


@requires_kvm
class DeviceAttributeTest(unittest.TestCase):

    def test_create_device_and_its_attributes(self):
        require_cap(self, K.Cap.DEVICE_CTRL)
        with kvm().create_vm() as vm:
            if not vm.create_device('VFIO', test=True):
                self.skipTest("this host's KVM has no VFIO device (KVM_DEV_TYPE_VFIO 4)")
            self.assertFalse(vm.create_device(K.KVM_DEV_TYPE_ARM_VGIC_V3, test=True))  # not on x86
            dev = vm.create_device('vfio')
            self.assertEqual(dev.type, K.KVM_DEV_TYPE_VFIO)
            self.assertTrue(dev.has_attr(K.KVM_DEV_VFIO_FILE, K.KVM_DEV_VFIO_FILE_ADD))
            self.assertFalse(dev.has_attr(K.KVM_DEV_VFIO_FILE, 99))
            with self.assertRaises(K.KvmError):          # an fd that is no VFIO file
                dev.set_attr(K.KVM_DEV_VFIO_FILE, K.KVM_DEV_VFIO_FILE_ADD, 0)
        self.assertEqual(dev.fd, -1)                     # closed with the VM
        with self.assertRaisesRegex(K.KvmliteError, "no KVM device type named 'VGA'"):
            K._device_type('VGA')

    def test_system_attributes(self):
        require_cap(self, K.Cap.SYS_ATTRIBUTES)
        k = kvm()
        self.assertTrue(k.has_attr(0, K.KVM_X86_XCOMP_GUEST_SUPP))
        self.assertEqual(k.get_attr(0, K.KVM_X86_XCOMP_GUEST_SUPP) & 3, 3)   # x87 and SSE

    def test_feature_msrs_from_the_system(self):
        require_cap(self, K.Cap.GET_MSR_FEATURES)
        k = kvm()
        feats = k.msr_feature_index_list()
        self.assertTrue(feats)
        values = k.get_msrs(feats)
        self.assertEqual(list(values), feats)
        if 0x10A in values:             # IA32_ARCH_CAPABILITIES: the bits a host CPU reports
            self.assertTrue(values[0x10A])

    def test_the_vcpu_tsc_offset_moves_the_guests_tsc(self):
        require_cap(self, K.Cap.VCPU_ATTRIBUTES)
        code = 'rdtsc\nmov eax, edx\nout 0x10, eax\nhlt'
        with Guest(code) as g:
            if not g.vcpu.has_attr(K.KVM_VCPU_TSC_CTRL, K.KVM_VCPU_TSC_OFFSET):
                self.skipTest("this host's KVM has no KVM_VCPU_TSC_OFFSET attribute")
            far = 1 << 60
            g.vcpu.tsc_offset = far
            if g.vcpu.tsc_offset != far and K.host_emulates_kernel_mode():
                # kvm_pvm takes the attribute and keeps nothing (reads back 0,
                # the guest's TSC stays the host's): pinned, so a fixed host
                # fails here and gets the whole test
                self.assertEqual(g.vcpu.tsc_offset, 0)
                exit = g.expect(K.IoOut, port=0x10)
                self.assertLess(struct.unpack('<I', exit.data)[0], far >> 32)
                return
            self.assertEqual(g.vcpu.tsc_offset, far)
            exit = g.expect(K.IoOut, port=0x10)
            high = struct.unpack('<I', exit.data)[0]
            self.assertGreaterEqual(high, far >> 32)        # the guest's TSC is past 2**60
            self.assertLess(high, (far >> 32) + (1 << 24))
        with Guest(code) as g:
            g.vcpu.tsc_offset = 0
            exit = g.expect(K.IoOut, port=0x10)
            self.assertLess(struct.unpack('<I', exit.data)[0], far >> 32)


@requires_kvm
class VmTscKhzTest(unittest.TestCase):

    def test_vcpus_created_after_it_start_at_the_vms_frequency(self):
        require_cap(self, K.Cap.VM_TSC_CONTROL)
        with kvm().create_vm() as vm:
            host = vm.create_vcpu().get_tsc_khz()
            vm.set_tsc_khz(host - 1000)
            self.assertEqual(vm.get_tsc_khz(), host - 1000)
            self.assertEqual(vm.create_vcpu().get_tsc_khz(), host - 1000)

    def test_without_the_capability_it_names_it(self):
        with kvm().create_vm() as vm:
            if vm.check_extension(K.Cap.VM_TSC_CONTROL):
                self.skipTest('this host offers KVM_CAP_VM_TSC_CONTROL (214)')
            with self.assertRaisesRegex(K.KvmliteError, r'KVM_CAP_VM_TSC_CONTROL \(214\)'):
                vm.set_tsc_khz(1000000)
            with self.assertRaisesRegex(K.KvmliteError, r'KVM_CAP_VM_TSC_CONTROL \(214\)'):
                vm.get_tsc_khz()


@requires_kvm
class BootCpuTest(unittest.TestCase):

    def test_set_boot_cpu_id_picks_the_bsp(self):
        require_cap(self, K.Cap.SET_BOOT_CPU_ID)
        with kvm().create_vm() as vm:
            vm.create_irqchip()
            vm.set_boot_cpu_id(1)
            cpus = [vm.create_vcpu(), vm.create_vcpu()]
            bsp = [bool(c.get_msrs([0x1B])[0x1B] & 0x100) for c in cpus]   # IA32_APIC_BASE.BSP
            self.assertEqual(bsp, [False, True])
            with self.assertRaises(K.KvmError):           # too late once vCPUs exist
                vm.set_boot_cpu_id(0)


@requires_kvm
class DirtyRingTest(unittest.TestCase):

    BASE = 0x400000     # the logged slot, apart from code, stack and page tables

    CODE = f'''
        mov [{BASE + 0x3000:#x}], rax
        mov [{BASE + 0x1000:#x}], rax
        mov [{BASE + 0xF000:#x}], rax
        mov [{BASE + 0x1008:#x}], rax
        hlt
        mov [{BASE + 0x5000:#x}], rax
        mov [{BASE + 0x1000:#x}], rax
        hlt
    '''

    def test_the_ring_reports_exactly_the_pages_written_in_order(self):
        require_cap(self, K.Cap.DIRTY_LOG_RING)
        vm, cpu = bare_vm(self.CODE, before_vcpu=lambda vm: vm.enable_dirty_ring(1 << 16))
        with vm:
            slot = vm.add_memory(self.BASE, 0x10000, dirty_log=True)
            exit = cpu.run(timeout=20)
            self.assertIsInstance(exit, K.Hlt, describe(cpu, exit))
            self.assertEqual([hex(a) for a in vm.harvest_dirty_ring()],
                             [hex(self.BASE + o) for o in (0x3000, 0x1000, 0xF000)])
            self.assertEqual(vm.harvest_dirty_ring(), [])          # nothing new
            exit = cpu.run(timeout=20)
            self.assertIsInstance(exit, K.Hlt, describe(cpu, exit))
            # reset re-protected 0x1000: written again, it is logged again
            self.assertEqual(vm.harvest_dirty_ring(), [self.BASE + 0x5000, self.BASE + 0x1000])
            self.assertEqual(vm.read_int(self.BASE + 0x5000, 8), vm.read_int(self.BASE + 0x3000, 8))
            self.assertIs(slot, vm.slots[-1])

    def test_the_ring_must_come_before_the_vcpus(self):
        require_cap(self, K.Cap.DIRTY_LOG_RING)
        with Guest('hlt') as g:
            with self.assertRaisesRegex(K.KvmliteError, 'before creating vCPUs'):
                g.vm.enable_dirty_ring()
            with self.assertRaisesRegex(K.KvmliteError, 'enable_dirty_ring'):
                g.vm.harvest_dirty_ring()
        with kvm().create_vm() as vm, self.assertRaises(ValueError):
            vm.enable_dirty_ring(3000)


@requires_kvm
class NestedStateTest(unittest.TestCase):

    def test_nested_state_round_trips(self):
        require_cap(self, K.Cap.NESTED_STATE)
        with Guest('hlt') as g:
            state = g.vcpu.get_nested_state()
            head = K.kvm_nested_state.from_buffer_copy(state[:128])
            self.assertIn(head.format, (K.KVM_STATE_NESTED_FORMAT_VMX, K.KVM_STATE_NESTED_FORMAT_SVM))
            self.assertEqual(head.size, len(state))
            g.vcpu.set_nested_state(state)
            self.assertEqual(g.vcpu.get_nested_state(), state)

    def test_without_nesting_the_wrappers_say_why(self):
        if not lacks(K.Cap.NESTED_STATE):
            self.skipTest('this host offers KVM_CAP_NESTED_STATE (157)')
        with Guest('hlt') as g:
            for call in (g.vcpu.get_nested_state, lambda: g.vcpu.set_nested_state(bytes(128))):
                with self.assertRaisesRegex(K.KvmliteError, r'needs KVM_CAP_NESTED_STATE \(157\)'):
                    call()


@requires_kvm
class PmuEventFilterTest(unittest.TestCase):

    # IA32_PERFEVTSEL0 = instructions retired (0xC0), OS and USR, enabled
    CODE = '''
        mov ecx, 0x186
        mov eax, 0x4300c0
        xor edx, edx
        wrmsr
        nop
        nop
        nop
        mov ecx, 0xc1
        rdmsr
        out 0x10, eax
        hlt
    '''

    def count(self, events):
        with Guest(self.CODE) as g:
            if events is not None:
                g.vm.set_pmu_event_filter(events, 'deny')
            exit = g.vcpu.run(timeout=20)
            if not isinstance(exit, K.IoOut):
                self.fail(f'the counting guest failed: {describe(g.vcpu, exit)}')
            return struct.unpack('<I', exit.data)[0]

    def test_kvm_takes_and_checks_the_filter(self):
        require_cap(self, K.Cap.PMU_EVENT_FILTER)
        with kvm().create_vm() as vm:
            vm.set_pmu_event_filter([0xC0, 0x3C], 'deny')
            vm.set_pmu_event_filter([0xC0], 'allow', fixed_counter_bitmap=1)
            with self.assertRaises(K.KvmError) as cm:      # KVM reads the struct: bad flags
                vm.set_pmu_event_filter([0xC0], 'deny', flags=1 << 30)
            self.assertEqual(cm.exception.errno, errno.EINVAL)
            with self.assertRaises(ValueError):
                vm.set_pmu_event_filter([0xC0], 'block')

    def test_a_denied_event_does_not_count(self):
        require_cap(self, K.Cap.PMU_EVENT_FILTER)
        leaf = next((e for e in kvm().supported_cpuid() if e.function == 0xA), None)
        if leaf is None or leaf.eax & 0xFF == 0 or (leaf.eax >> 8) & 0xFF == 0:
            self.skipTest("this host's KVM gives guests no PMU (CPUID.0AH:EAX reports version 0 "
                          'or no counters), so there is no count to deny')
        self.assertGreater(self.count(None), 0)
        self.assertEqual(self.count([0xC0]), 0)


@requires_kvm
class SmallIoctlTest(unittest.TestCase):

    def test_the_first_pit_round_trips(self):
        require_cap(self, K.Cap.PIT)
        with kvm().create_vm() as vm:
            with self.assertRaisesRegex(K.KvmError, 'create the irqchip first'):
                vm.create_pit()
            vm.create_irqchip()
            vm.create_pit()
            p = vm.get_pit()
            p.channels[2].count, p.channels[2].mode = 0x4321, 2
            vm.set_pit(p)
            back = vm.get_pit().channels[2]
            self.assertEqual((back.count, back.mode), (0x4321, 2))
            self.assertEqual(vm.get_pit2().channels[2].count, 0x4321)   # the same PIT
            vm.reinject_control(False)
            vm.reinject_control(True)

    def test_reinject_control_without_a_pit(self):
        require_cap(self, K.Cap.REINJECT_CONTROL)
        with kvm().create_vm() as vm:
            with self.assertRaisesRegex(K.KvmError, 'no in-kernel PIT'):
                vm.reinject_control(False)

    def test_nr_mmu_pages(self):
        with kvm().create_vm() as vm:
            vm.set_nr_mmu_pages(1024)
            try:
                self.assertEqual(vm.get_nr_mmu_pages(), 1024)
            except K.KvmError as e:
                # removed from newer kernels; the error says so
                self.assertEqual(e.errno, errno.ENOTTY, str(e))
                self.assertIn('no longer', str(e))

    def test_tpr_reporting_and_the_vapic_need_the_local_apic(self):
        require_cap(self, K.Cap.VAPIC)
        with Guest('hlt') as g:
            with self.assertRaisesRegex(K.KvmError, 'create the irqchip first'):
                g.vcpu.set_vapic_addr(0x30000)
        with Guest('hlt', irqchip='kernel') as g:
            self.assertEqual(g.vcpu.tpr_access_reporting(True).enabled, 1)
            g.vcpu.tpr_access_reporting(False)
            g.vcpu.set_vapic_addr(0x30000)
            g.vcpu.set_vapic_addr(0)

    def test_kvmclock_ctrl_marks_the_guest_stopped(self):
        require_cap(self, K.Cap.KVMCLOCK_CTRL)
        pvti = DATA                                   # struct pvclock_vcpu_time_info
        with Guest('hlt\nhlt') as g:
            with self.assertRaisesRegex(K.KvmError, 'has not enabled kvmclock'):
                g.vcpu.kvmclock_ctrl()
            g.vcpu.set_msrs({0x4B564D01: pvti | 1})   # MSR_KVM_SYSTEM_TIME_NEW, enabled
            g.expect(K.Hlt)
            self.assertFalse(g.vm.read_int(pvti + 29, 1) & 2)
            g.vcpu.kvmclock_ctrl()
            g.expect(K.Hlt)
            self.assertTrue(g.vm.read_int(pvti + 29, 1) & 2)     # PVCLOCK_GUEST_STOPPED

    def test_set_cpuid_the_first(self):
        with Guest('mov eax, 0x40000000\ncpuid\nout 0x10, eax\nhlt') as g:
            entries = [K.kvm_cpuid_entry(function=0x40000000, eax=0x40000000, ebx=0x4B4D564B)]
            g.vcpu.set_cpuid(entries)
            self.assertEqual([(e.function, e.ebx) for e in g.vcpu.get_cpuid2()],
                             [(0x40000000, 0x4B4D564B)])
            exit = g.expect(K.IoOut, port=0x10)
            self.assertEqual(struct.unpack('<I', exit.data)[0], 0x40000000)

    def test_user_memory_region2(self):
        require_cap(self, K.Cap.USER_MEMORY2)
        with Guest('mov rax, [0x800000]\nout 0x10, eax\nhlt') as g:
            backing = mmap.mmap(-1, K.PAGE_SIZE)             # page-aligned, as KVM wants
            backing[:4] = struct.pack('<I', 0xC0FFEE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(backing))
            g.vm.set_user_memory_region2(7, 0, 0x800000, K.PAGE_SIZE, addr)
            exit = g.expect(K.IoOut, port=0x10)
            self.assertEqual(exit.data, struct.pack('<I', 0xC0FFEE))
            g.vm.set_user_memory_region2(7, 0, 0x800000, 0, 0)         # and gone again

    def test_guest_memfd(self):
        require_cap(self, K.Cap.GUEST_MEMFD)
        with kvm().create_vm() as vm:
            if not vm.check_extension(K.Cap.GUEST_MEMFD):
                self.skipTest('this VM type offers no KVM_CAP_GUEST_MEMFD (234)')
            fd = vm.create_guest_memfd(0x10000)
            try:
                self.assertEqual(os.fstat(fd).st_size, 0x10000)
            finally:
                os.close(fd)
            with self.assertRaises(K.KvmError):
                vm.create_guest_memfd(0x1001)             # not page-sized

    def test_pre_fault_memory(self):
        with Guest('hlt') as g:
            if not g.vm.check_extension(K.Cap.PRE_FAULT_MEMORY):
                with self.assertRaisesRegex(K.KvmliteError, r'KVM_CAP_PRE_FAULT_MEMORY \(236\)'):
                    g.vcpu.pre_fault_memory(DATA, 0x2000)
                self.skipTest("this host's VM offers no KVM_CAP_PRE_FAULT_MEMORY (236)")
            g.vcpu.pre_fault_memory(DATA, 0x2000)
            g.expect(K.Hlt)

    def test_one_reg_list(self):
        require_cap(self, K.Cap.ONE_REG)
        with Guest('hlt') as g:
            ids = g.vcpu.get_reg_list()
            self.assertIsInstance(ids, list)
            for reg in ids[:8]:
                g.vcpu.set_one_reg(reg, g.vcpu.get_one_reg(reg))

    def test_what_this_host_lacks_is_named(self):
        # each wrapper of a capability the host lacks names it; present ones run
        cases = [
            (K.Cap.SYS_HYPERV_CPUID, lambda g: kvm().supported_hv_cpuid()),
            (K.Cap.HYPERV_CPUID, lambda g: g.vcpu.supported_hv_cpuid()),
            (K.Cap.HYPERV_EVENTFD, lambda g: g.vm.hyperv_eventfd(1, -1, deassign=True)),
            (K.Cap.XEN_HVM, lambda g: g.vm.xen_hvm_get_attr(K.KVM_XEN_ATTR_TYPE_LONG_MODE)),
            (K.Cap.XEN_HVM, lambda g: g.vcpu.xen_vcpu_get_attr(K.KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID)),
            (K.Cap.VM_ATTRIBUTES, lambda g: g.vm.has_attr(0, 0)),
        ]
        with Guest('hlt') as g:
            for cap, call in cases:
                with self.subTest(cap=cap.name):
                    if g.vm.check_extension(cap):
                        try:
                            call(g)
                        except K.KvmError:
                            pass             # present: KVM's own answer to these arguments
                        continue
                    with self.assertRaisesRegex(K.KvmliteError,
                                                rf'KVM_CAP_{cap.name} \({int(cap)}\)'):
                        call(g)


if __name__ == '__main__':
    unittest.main()
