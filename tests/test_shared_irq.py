"""ISA IRQ lines that two devices share (COM1 and COM3 on IRQ 4, COM2 and
COM4 on IRQ 3): the board makes each a wired-OR (tools/pc.py, _WiredOr),
high while any sharer holds it high, in every irqchip mode: the Python PIC
and IOAPIC pin in 'user' and 'split' mode, KVM_IRQ_LINE into KVM's PIC and
IOAPIC in 'kernel' mode (KVM keeps one level per GSI for all of
userspace's calls, so the OR has to be the board's).

The guest test is the case that went wrong before: with the IRQ masked, both
UARTs raise their THR-empty interrupt, the guest serves one of them (its IIR
read clears that source, and that UART lowers its output), then unmasks the
IRQ as a level-triggered input (IOAPIC LEVEL, or the ELCR bit for the
8259). The other UART still holds the line, so its interrupt must come;
when one UART's fall lowered the whole line, it never came.

The shared pairs are read from the platform description (tools/layout.py),
so any other line two slots share is checked the same way.
"""

import unittest
from collections import defaultdict

import kvmlite
from devices.console import MemoryBackend
from kvmlite import KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE
from tests.guest import kvm, requires_kvm
from tests.pcguest import MODES, PASSED, STATUS_PASSED, run_guest
from tools.layout import PC


def shared_lines(platform, mode):
    """{ISA IRQ: [slot names]} of the lines two or more of the devices built
    in ``mode`` share."""
    by_irq = defaultdict(list)
    for slot in platform.devices:
        if slot.irq is not None and mode in slot.modes:
            by_irq[slot.irq].append(slot.name)
    return {irq: names for irq, names in by_irq.items() if len(names) > 1}


def controller_levels(m, irq):
    """(the PIC's view, the IOAPIC pin's view) of ISA IRQ ``irq`` in ``m``:
    the Python models' input levels, or KVM's (its PIC's last_irr, its
    IOAPIC's irr: every pin is masked at reset, so irr is the pin's level)."""
    pin = m.platform.ioapic_pin(irq)
    if m.mode == 'kernel':
        chip = KVM_IRQCHIP_PIC_SLAVE if irq >= 8 else KVM_IRQCHIP_PIC_MASTER
        pic = m.vm.get_irqchip(chip).chip.pic.last_irr >> (irq & 7) & 1
        ioapic = m.vm.get_irqchip(KVM_IRQCHIP_IOAPIC).chip.ioapic.irr >> pin & 1
        return pic, ioapic
    chip = m.pic.slave if irq >= 8 else m.pic.master
    return chip.lines >> (irq & 7) & 1, (m.ioapic.pins[pin] if m.ioapic is not None else None)


@requires_kvm
class WiredOrBoardTest(unittest.TestCase):
    """Each shared line's devices drive it in turn; the controllers see the OR."""

    def test_the_platform_shares_the_com_ports_lines(self):
        for mode in MODES:
            self.assertEqual(shared_lines(PC, mode), {4: ['com1', 'com3'], 3: ['com2', 'com4']})

    def check_wired_or(self, m):
        """Every order of lowering: the line falls with the last sharer."""
        shared = shared_lines(m.platform, m.mode)
        self.assertTrue(shared)
        high = 1, (None if m.mode == 'user' else 1)
        low = 0, (None if m.mode == 'user' else 0)
        for irq, names in shared.items():
            lines = [m.devices[n].irq for n in names]
            self.assertEqual(controller_levels(m, irq), low, (irq, names))
            for first in range(len(lines)):
                order = lines[first:] + lines[:first]
                for line in order:
                    line.set(1)
                    self.assertEqual(controller_levels(m, irq), high, (irq, names))
                for i, line in enumerate(order):
                    line.set(0)
                    self.assertEqual(controller_levels(m, irq), low if i == len(order) - 1 else high,
                                     (irq, names, first, i))
                order[-1].set(1)        # a sharer that rises again, alone
                self.assertEqual(controller_levels(m, irq), high, (irq, names))
                order[-1].set(0)

    def test_the_line_is_high_while_any_sharer_holds_it(self):
        for mode in MODES:
            with self.subTest(mode=mode), kvmlite.Machine(mem_size=2 << 20, irqchip=mode,
                                                          console=MemoryBackend(), kvm=kvm()) as m:
                self.check_wired_or(m)

    def test_a_virtio_device_moved_onto_a_shared_line(self):
        # in kernel mode an unshared virtio line is an irqfd (a pulse); on a
        # line COM1 shares, the pulse would drop COM1's level: KVM_IRQ_LINE
        platform = PC.with_device('virtio_rng', irq=4)
        for mode in MODES:
            with self.subTest(mode=mode), kvmlite.Machine(mem_size=2 << 20, irqchip=mode, rng=True,
                                                          platform=platform, console=MemoryBackend(),
                                                          kvm=kvm()) as m:
                self.assertEqual(shared_lines(platform, mode)[4], ['com1', 'com3', 'virtio_rng'])
                self.assertNotIn('virtio_rng', m._irqfds)
                self.check_wired_or(m)
        with kvmlite.Machine(mem_size=2 << 20, irqchip='kernel', rng=True, console=MemoryBackend(),
                             kvm=kvm()) as m:
            if m.vm.check_extension(kvmlite.Cap.IRQFD) and m.vm.check_extension(kvmlite.Cap.IOEVENTFD):
                self.assertIn('virtio_rng', m._irqfds)      # on its own IRQ 12

    def test_an_edge_input_sees_one_rise_while_the_line_stays_high(self):
        # the Python PIC latches a rising edge in IRR (edge-triggered, the
        # reset state): a second sharer's rise on a high line is no new edge
        for mode in ('user', 'split'):
            with self.subTest(mode=mode), kvmlite.Machine(mem_size=2 << 20, irqchip=mode,
                                                          console=MemoryBackend(), kvm=kvm()) as m:
                com1, com3 = m.com1.irq, m.com3.irq
                master = m.pic.master
                com1.set(1)
                self.assertTrue(master.irr & 0x10)
                master.irr &= ~0x10         # as an INTA would take it
                com3.set(1)
                com1.set(0)
                com1.set(1)                 # COM3 held the line high throughout
                self.assertFalse(master.irr & 0x10)
                com1.set(0)
                com3.set(0)
                com3.set(1)                 # low, then high: an edge
                self.assertTrue(master.irr & 0x10)


SHARED = r'''
main:
    mov byte [want_ioapic], 1
    call irq_setup
    mov edi, IRQ
    mov rsi, isr
    call irq_handler
    mov dx, 0x4d0               ; ELCR: the 8259 takes IRQ as level-triggered (user mode)
    in al, dx
    or al, 1 << IRQ
    out dx, al
    mov r12d, PORT_A            ; A's interrupt must come after B is served
    mov r13d, PORT_B
    call shared_round
    mov r12d, PORT_B            ; and the other way round
    mov r13d, PORT_A
    call shared_round
    mov al, PASSED
    ret

shared_round:                   ; r12: the UART still holding the line, r13: the one served first
    mov qword [count], 0
    mov byte [iir_held], 0xff
    mov edi, IRQ
    call irq_mask
    mov al, 0x08                ; MCR: OUT2 (gates the UART's IRQ output)
    lea edx, [r12 + 4]
    out dx, al
    lea edx, [r13 + 4]
    out dx, al
    mov al, 2                   ; IER: THR empty, which raises the line at once
    lea edx, [r12 + 1]
    out dx, al
    lea edx, [r13 + 1]
    out dx, al
    lea edx, [r13 + 2]          ; B's IIR: THR empty, and the read clears it: B lowers
    in al, dx
    mov [iir_served], al
    mov edi, IRQ
    mov esi, LEVEL
    call irq_unmask
    sti
    mov ecx, 20000              ; a level input that is still asserted comes at once
.wait:
    cmp qword [count], 0
    jne .got
    loop .wait
.got:
    cli
    mov edi, IRQ
    call irq_mask
    xor eax, eax                ; both IERs off before printing on COM1
    lea edx, [r12 + 1]
    out dx, al
    lea edx, [r13 + 1]
    out dx, al
    call print
    db 'irq ', 0
    mov eax, IRQ
    call putdec
    call print
    db ': served ', 0
    mov eax, r13d
    mov cl, 3
    call puthex
    call print
    db ' (iir ', 0
    mov al, [iir_served]
    call hex2
    call print
    db '), then ', 0
    mov rax, [count]
    call putdec
    call print
    db ' interrupt from ', 0
    mov eax, r12d
    mov cl, 3
    call puthex
    call print
    db ' (iir ', 0
    mov al, [iir_held]
    call hex2
    call print
    db ', other ', 0
    mov al, [iir_other]
    call hex2
    call print
    db ')', 10, 0
    ret

isr:                            ; serve A (its IIR read clears THR empty), look at B, EOI
    lea edx, [r12 + 2]
    in al, dx
    mov [iir_held], al
    lea edx, [r13 + 2]
    in al, dx
    mov [iir_other], al
    inc qword [count]
    mov edi, IRQ
    jmp irq_eoi

align 8
count: dq 0
iir_served: db 0
iir_held: db 0
iir_other: db 0
'''


def expected(irq, a, b):
    line = 'irq {irq}: served {b:03x} (iir 02), then 1 interrupt from {a:03x} (iir 02, other 01)\n'
    return (line.format(irq=irq, a=a, b=b) + line.format(irq=irq, a=b, b=a)).encode()


@requires_kvm
class SharedIrqGuestTest(unittest.TestCase):
    """A guest with two UARTs' interrupts on one line, in every mode."""

    def check(self, irq, names):
        ports = {s.name: s.pio[0][1] for s in PC.devices if s.pio}
        a, b = (ports[n] for n in names)
        for mode in MODES:
            with self.subTest(mode=mode, irq=irq):
                run = run_guest(SHARED, mode, symbols={'IRQ': irq, 'PORT_A': a, 'PORT_B': b,
                                                       'PASSED': PASSED})
                self.assertEqual((run.status, run.output), (STATUS_PASSED, expected(irq, a, b)),
                                 run.describe())
                self.assertEqual(run.problems, [])

    def test_com3_lowering_leaves_com1s_interrupt_pending(self):
        self.check(4, ['com1', 'com3'])

    def test_com4_lowering_leaves_com2s_interrupt_pending(self):
        self.check(3, ['com2', 'com4'])


if __name__ == '__main__':
    unittest.main()
