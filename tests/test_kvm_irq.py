"""Interrupts under real KVM: the in-kernel irqchip and PIT state, MSIs into
a split irqchip's local APIC, irqfd and ioeventfd, and KVM_INTERRUPT and
NMI injection without an irqchip (Documentation/virt/kvm/api.rst:
KVM_CREATE_IRQCHIP, KVM_GET/SET_IRQCHIP, KVM_CREATE_PIT2, KVM_GET/SET_PIT2,
KVM_CAP_SPLIT_IRQCHIP, KVM_SIGNAL_MSI, KVM_SET_GSI_ROUTING, KVM_IRQFD,
KVM_IOEVENTFD, KVM_INTERRUPT, KVM_NMI; the MSI format of the Intel SDM
Vol. 3, section 11.11)."""

import os
import unittest

import kvmlite as K
from tests.guest import MMIO, Guest, require_cap, requires_kvm

MSI_ADDR = 0xFEE00000           # MSI address: destination APIC ID in bits 19:12

# Enable the local APIC, take interrupts, say "ready" on port 0x10 and idle.
# Each handler reports its vector on port 0x11 (no iretq is needed).
APIC_GUEST = '''
    mov edx, 0xFEE00000
    mov dword ptr [rdx + 0xF0], 0x1FF      ; SVR: APIC software-enabled
    sti
    out 0x10, al
idle:
    hlt
    jmp idle
handler40:
    mov al, 0x40
    out 0x11, al
    jmp handler40
handler41:
    mov al, 0x41
    out 0x11, al
    jmp handler41
'''


def eventfd_count(fd):
    """The eventfd's counter (reading resets it), 0 when nothing was signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


@requires_kvm
class InKernelIrqchipTest(unittest.TestCase):

    def test_pic_and_ioapic_state_round_trip(self):
        with Guest(irqchip='kernel') as g:
            pic = g.vm.get_irqchip(K.KVM_IRQCHIP_PIC_MASTER)
            self.assertEqual(pic.chip_id, K.KVM_IRQCHIP_PIC_MASTER)
            pic.chip.pic.imr, pic.chip.pic.irq_base = 0xFB, 0x20
            g.vm.set_irqchip(pic)
            back = g.vm.get_irqchip(K.KVM_IRQCHIP_PIC_MASTER).chip.pic
            self.assertEqual((back.imr, back.irq_base), (0xFB, 0x20))
            ioapic = g.vm.get_irqchip(K.KVM_IRQCHIP_IOAPIC)
            self.assertEqual(ioapic.chip.ioapic.base_address, 0xFEC00000)
            ioapic.chip.ioapic.redirtbl[3] = (1 << 56) | 0x33        # dest 1, vector 0x33
            g.vm.set_irqchip(ioapic)
            back = g.vm.get_irqchip(K.KVM_IRQCHIP_IOAPIC).chip.ioapic
            self.assertEqual(back.redirtbl[3], (1 << 56) | 0x33)

    def test_irq_line_sets_the_pic_request_bit(self):
        with Guest(irqchip='kernel') as g:
            self.assertEqual(g.vm.get_irqchip(K.KVM_IRQCHIP_PIC_MASTER).chip.pic.irr & 0x10, 0)
            g.vm.irq_line(4, 1)
            self.assertEqual(g.vm.get_irqchip(K.KVM_IRQCHIP_PIC_MASTER).chip.pic.irr & 0x10, 0x10)
            g.vm.irq_line(4, 0)

    def test_pit_state_round_trips(self):
        require_cap(self, K.Cap.PIT2)
        with Guest(irqchip='kernel') as g:
            g.vm.create_pit2()
            pit = g.vm.get_pit2()
            ch = pit.channels[2]
            ch.count, ch.mode, ch.rw_mode, ch.gate = 0x1234, 3, 3, 1
            g.vm.set_pit2(pit)
            back = g.vm.get_pit2().channels[2]
            self.assertEqual((back.count, back.mode, back.rw_mode, back.gate), (0x1234, 3, 3, 1))

    def test_pit_without_an_irqchip_is_refused(self):
        with Guest() as g:
            with self.assertRaisesRegex(K.KvmError, r'^KVM_CREATE_PIT2 failed: ENOENT'):
                g.vm.create_pit2()


@requires_kvm
class SplitIrqchipTest(unittest.TestCase):

    def setUp(self):
        require_cap(self, K.Cap.SPLIT_IRQCHIP)

    def guest(self):
        g = Guest(APIC_GUEST, irqchip='split')
        g.set_handler(0x40, g.labels['handler40'])
        g.set_handler(0x41, g.labels['handler41'])
        g.expect(K.IoOut, port=0x10)              # the APIC is on and IF is set
        return g

    def test_signal_msi_interrupts_the_guest_with_its_vector(self):
        require_cap(self, K.Cap.SIGNAL_MSI)
        with self.guest() as g:
            self.assertEqual(g.vm.signal_msi(MSI_ADDR | (7 << 12), 0x41), 0)   # no APIC 7
            self.assertGreater(g.vm.signal_msi(MSI_ADDR, 0x40), 0)
            g.expect(K.IoOut, port=0x11, value=0x40)

    def test_irqfd_with_msi_routing_interrupts_the_guest(self):
        require_cap(self, K.Cap.IRQFD, K.Cap.IRQ_ROUTING)
        with self.guest() as g:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                g.vm.set_gsi_routing([K.route_msi(5, MSI_ADDR, 0x41)])
                g.vm.irqfd(efd, 5)
                os.eventfd_write(efd, 1)
                g.expect(K.IoOut, port=0x11, value=0x41)
                g.vm.irqfd(efd, 5, deassign=True)
            finally:
                os.close(efd)

    def test_ioeventfd_takes_matching_writes_without_an_exit(self):
        require_cap(self, K.Cap.IOEVENTFD)
        code = f'''
            mov al, 0x41
            out 0x71, al          ; no match: an exit
            mov al, 0x42
            out 0x71, al          ; match: the eventfd
            out 0x70, al          ; any value: the eventfd
            mov rdx, {MMIO}
            mov dword ptr [rdx], 7
            out 0x10, al
            out 0x70, al          ; after deassign: an exit
        '''
        with Guest(code, irqchip='split') as g:
            fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3)]
            try:
                g.vm.ioeventfd(fds[0], 0x71, 1, pio=True, datamatch=0x42)
                g.vm.ioeventfd(fds[1], 0x70, 1, pio=True)
                g.vm.ioeventfd(fds[2], MMIO, 4)
                g.expect(K.IoOut, port=0x71, value=0x41)
                g.expect(K.IoOut, port=0x10)
                self.assertEqual([eventfd_count(fd) for fd in fds], [1, 1, 1])
                g.vm.ioeventfd(fds[1], 0x70, 1, pio=True, deassign=True)
                g.expect(K.IoOut, port=0x70, value=0x42)
                self.assertEqual(eventfd_count(fds[1]), 0)
            finally:
                for fd in fds:
                    os.close(fd)

    def test_mp_state_and_lapic_exist_per_vcpu(self):
        with Guest(irqchip='split', vcpus=2) as g:
            ids = [bytes(v.get_lapic().regs)[0x23] for v in g.vm.vcpus]
            self.assertEqual(ids, [0, 1])


@requires_kvm
class UserInjectionTest(unittest.TestCase):
    """No in-kernel irqchip: user space injects with KVM_INTERRUPT and NMI."""

    CODE = '''
        sti
    idle:
        hlt
        jmp idle
    handler30:
        mov al, 0x30
        out 0x11, al
        hlt
    nmi_handler:
        mov al, 2
        out 0x11, al
        hlt
    '''

    def test_kvm_interrupt_delivers_a_vector_when_the_guest_is_ready(self):
        with Guest(self.CODE) as g:
            g.set_handler(0x30, g.labels['handler30'])
            g.expect(K.Hlt)                           # after sti: interrupts open
            self.assertTrue(g.vcpu.if_flag)
            self.assertTrue(g.vcpu.ready_for_interrupt_injection)
            g.vcpu.interrupt(0x30)
            g.expect(K.IoOut, port=0x11, value=0x30)
            self.assertFalse(g.vcpu.if_flag)          # an interrupt gate clears IF

    def test_interrupt_window_exit_when_requested(self):
        # KVM checks the window when it enters the guest, so the guest spins
        # (an emulated `sti; nop; hlt` would run straight into the HLT)
        code = '''
            cli
            out 0x10, al
            sti
        window:
            nop
            jmp window
        '''
        with Guest(code) as g:
            g.expect(K.IoOut, port=0x10)
            self.assertFalse(g.vcpu.ready_for_interrupt_injection)
            g.vcpu.request_interrupt_window = True
            g.expect(K.IrqWindowOpen)
            self.assertTrue(g.vcpu.ready_for_interrupt_injection)
            self.assertIn(g.vcpu.get_regs().rip, (g.labels['window'], g.labels['window'] + 1))
            g.vcpu.request_interrupt_window = False
            g.expect(K.Interrupted, timeout=0.05, why='timeout')

    def test_nmi_reaches_vector_2(self):
        with Guest(self.CODE) as g:
            g.set_handler(2, g.labels['nmi_handler'])
            g.expect(K.Hlt)
            g.vcpu.nmi()
            g.expect(K.IoOut, port=0x11, value=2)


if __name__ == '__main__':
    unittest.main()
