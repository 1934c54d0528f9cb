"""Tests for devices.ioapic: registers as Linux's io_apic.c programs them,
MSI messages, remote IRR and EOI, masking, polarity, snapshots, fuzzing."""

import json
import random
import unittest

from devices.ioapic import IoApic, MAX_BURST
from tests.guest import requires_kvm
from tests.pcguest import PASSED, STATUS_PASSED, run_guest

IOREGSEL, IOWIN, EOI = 0x00, 0x10, 0x40

MASKED = 1 << 16
LEVEL = 1 << 15
ACTIVE_LOW = 1 << 13
REMOTE_IRR = 1 << 14
LOGICAL = 1 << 11


class Harness:
    """An IOAPIC whose MSI messages are recorded, driven like Linux does."""

    def __init__(self):
        self.messages = []
        self.apic = IoApic(msi=lambda a, d: self.messages.append((a, d)))

    def reg_read(self, index):
        self.apic.write(IOREGSEL, 4, index)
        return self.apic.read(IOWIN, 4)

    def reg_write(self, index, value):
        self.apic.write(IOREGSEL, 4, index)
        self.apic.write(IOWIN, 4, value)

    def entry(self, pin):
        low = self.reg_read(0x10 + 2 * pin)
        return low | (self.reg_read(0x11 + 2 * pin) << 32)

    def program(self, pin, vector, dest=0, flags=0, mode=0):
        """ioapic_write_entry(): high half first, then the low half."""
        self.reg_write(0x11 + 2 * pin, dest << 24)
        self.reg_write(0x10 + 2 * pin, vector | (mode << 8) | flags)

    def setup_like_linux(self):
        """Read the version for the pin count, then mask every entry."""
        ver = self.reg_read(0x01)
        pins = ((ver >> 16) & 0xFF) + 1
        for pin in range(pins):          # ioapic_mask_entry()
            self.reg_write(0x10 + 2 * pin, MASKED)
            self.reg_write(0x11 + 2 * pin, 0)
        return pins

    def unmask(self, pin):
        low = self.reg_read(0x10 + 2 * pin)
        self.reg_write(0x10 + 2 * pin, low & ~MASKED)

    def mask(self, pin):
        low = self.reg_read(0x10 + 2 * pin)
        self.reg_write(0x10 + 2 * pin, low | MASKED)


class RegisterTests(unittest.TestCase):

    def setUp(self):
        self.h = Harness()

    def test_version_register_reports_version_0x20_and_24_pins(self):
        self.assertEqual(self.h.reg_read(0x01), 0x00170020)
        self.assertEqual(self.h.setup_like_linux(), 24)

    def test_id_write_keeps_bits_24_27_and_loads_arbitration_id(self):
        self.h.reg_write(0x00, 0xFFFFFFFF)
        self.assertEqual(self.h.reg_read(0x00), 0x0F000000)
        self.assertEqual(self.h.reg_read(0x02), 0x0F000000)
        self.h.reg_write(0x02, 0)                    # ARB is read-only
        self.assertEqual(self.h.reg_read(0x02), 0x0F000000)

    def test_version_register_is_read_only(self):
        self.h.reg_write(0x01, 0)
        self.assertEqual(self.h.reg_read(0x01), 0x00170020)

    def test_entries_come_out_of_reset_masked(self):
        for pin in range(24):
            self.assertEqual(self.h.entry(pin), MASKED)

    def test_entry_halves_read_back_and_reserved_bits_keep_what_was_written(self):
        # as KVM's in-kernel IOAPIC: only DELIVS and remote IRR are read-only
        self.h.setup_like_linux()
        self.h.program(5, 0x35, dest=0xAB, flags=LOGICAL | LEVEL | MASKED,
                       mode=1)
        self.assertEqual(self.h.entry(5),
                         (0xAB << 56) | MASKED | LEVEL | LOGICAL | 0x135)
        self.h.reg_write(0x11 + 2 * 5, 0xFFFFFFFF)   # bits 32-55 reserved
        self.assertEqual(self.h.reg_read(0x11 + 2 * 5), 0xFFFFFFFF)
        self.h.reg_write(0x10 + 2 * 5, 0xFFFFFFFF)   # bits 17-31 reserved
        self.assertEqual(self.h.reg_read(0x10 + 2 * 5), 0xFFFFAFFF)
        self.h.reg_write(0x11 + 2 * 5, 0x00ABCDEF)   # the destination goes too
        self.assertEqual(self.h.entry(5) >> 32, 0x00ABCDEF)
        self.assertEqual(self.h.apic.check(), [])
        self.assertEqual(self.h.messages, [])        # masked all along

    def test_reserved_bits_do_not_change_the_message(self):
        self.h.setup_like_linux()
        self.h.reg_write(0x11 + 2 * 4, 0x01FFFFFF)   # dest 1, reserved 32-55 set
        self.h.reg_write(0x10 + 2 * 4, 0xFFFE0041)   # vector 0x41, reserved 17-31 set
        self.h.apic.set_irq(4, 1)
        self.assertEqual(self.h.messages, [(0xFEE01000, 0x41)])

    def test_delivery_status_and_remote_irr_ignore_writes(self):
        self.h.program(3, 0x40, flags=MASKED | (1 << 12) | REMOTE_IRR)
        self.assertEqual(self.h.entry(3) & ((1 << 12) | REMOTE_IRR), 0)

    def test_ioregsel_reads_back_its_byte(self):
        self.h.apic.write(IOREGSEL, 4, 0x12345678)
        self.assertEqual(self.h.apic.read(IOREGSEL, 4), 0x78)
        self.h.apic.write(IOREGSEL, 1, 0x11)
        self.assertEqual(self.h.apic.read(IOREGSEL, 1), 0x11)

    def test_undefined_offsets_and_registers_read_zero(self):
        for offset in (0x04, 0x14, 0x20, 0x40, 0x80, 0xFC, 0x100, -4):
            self.assertEqual(self.h.apic.read(offset, 4), 0, hex(offset))
        self.assertEqual(self.h.reg_read(0x03), 0)
        self.assertEqual(self.h.reg_read(0x40), 0)   # past the table
        self.assertEqual(self.h.reg_read(0xFF), 0)

    def test_narrow_reads_return_bytes_of_iowin(self):
        self.h.reg_write(0x00, 0x0A000000)
        self.h.apic.write(IOREGSEL, 4, 0x00)
        self.assertEqual(self.h.apic.read(IOWIN + 3, 1), 0x0A)
        self.assertEqual(self.h.apic.read(IOWIN + 2, 2), 0x0A00)
        self.assertEqual(self.h.apic.read(IOWIN, 8), 0x0A000000)

    def test_narrow_iowin_writes_are_ignored_and_counted(self):
        self.h.apic.write(IOREGSEL, 4, 0x00)
        self.h.apic.write(IOWIN + 3, 1, 0x0F)
        self.h.apic.write(IOWIN, 2, 0xFFFF)
        self.assertEqual(self.h.reg_read(0x00), 0)
        self.assertEqual(self.h.apic.ignored_writes, 2)

    def test_any_size_and_offset_never_raises(self):
        for size in (0, 1, 2, 3, 4, 8, 16):
            for offset in range(-2, 0x104):
                self.h.apic.write(offset, size, 0xFFFFFFFFFFFFFFFF)
                self.h.apic.read(offset, size)
        self.assertEqual(self.h.apic.check(), [])

    def test_reset_masks_every_pin_and_clears_id(self):
        self.h.reg_write(0x00, 0x05000000)
        self.h.program(1, 0x41)
        self.h.apic.reset()
        self.assertEqual(self.h.entry(1), MASKED)
        self.assertEqual(self.h.reg_read(0x00), 0)


class DeliveryTests(unittest.TestCase):

    def setUp(self):
        self.h = Harness()
        self.h.setup_like_linux()

    def test_edge_pin_sends_fixed_physical_msi_on_rising_edge(self):
        self.h.program(4, 0x34, dest=0x01)
        self.h.apic.set_irq(4, 1)
        self.assertEqual(self.h.messages, [(0xFEE01000, 0x0034)])
        self.h.apic.set_irq(4, 1)                    # no new edge
        self.h.apic.set_irq(4, 0)
        self.assertEqual(len(self.h.messages), 1)
        self.h.apic.set_irq(4, 1)
        self.assertEqual(len(self.h.messages), 2)

    def test_logical_lowest_priority_message_format(self):
        self.h.program(2, 0x30, dest=0x0F, flags=LOGICAL, mode=1)
        self.h.apic.set_irq(2, 1)
        self.assertEqual(self.h.messages, [(0xFEE0F004, 0x0130)])

    def test_delivery_modes_land_in_data_bits_8_10(self):
        for pin, mode in enumerate((0, 1, 2, 4, 5, 7)):
            self.h.program(pin, 0x50 + pin, dest=0xFF, mode=mode)
            self.h.apic.set_irq(pin, 1)
            self.assertEqual(self.h.messages[-1],
                             (0xFEEFF000, (0x50 + pin) | (mode << 8)))

    def test_reserved_delivery_modes_send_nothing(self):
        self.h.program(0, 0x40, mode=3)
        self.h.program(1, 0x41, mode=6, flags=LEVEL)
        self.h.apic.set_irq(0, 1)
        self.h.apic.set_irq(1, 1)
        self.assertEqual(self.h.messages, [])
        self.assertEqual(self.h.apic.check(), [])

    def test_masked_edge_is_lost(self):
        self.h.program(4, 0x34, flags=MASKED)
        self.h.apic.set_irq(4, 1)
        self.h.unmask(4)
        self.assertEqual(self.h.messages, [])

    def test_edge_message_is_what_an_edge_sends_and_only_then(self):
        """edge_message(): the message a rise would send, for an entry whose
        rise sends just that; None where set_irq does more or nothing."""
        self.h.program(4, 0x34, dest=0x01)
        self.assertEqual(self.h.apic.edge_message(4), (0xFEE01000, 0x0034))
        self.h.apic.set_irq(4, 1)
        self.assertEqual(self.h.messages, [self.h.apic.edge_message(4)])
        self.h.program(5, 0x35, dest=0x0F, flags=LOGICAL, mode=1)
        self.assertEqual(self.h.apic.edge_message(5), (0xFEE0F004, 0x0135))
        for flags, mode in ((MASKED, 0), (LEVEL, 0), (ACTIVE_LOW, 0), (0, 2), (0, 4), (0, 5),
                            (0, 7), (0, 3)):
            self.h.program(6, 0x36, flags=flags, mode=mode)
            self.assertIsNone(self.h.apic.edge_message(6), (flags, mode))

    def test_note_level_records_the_input_and_sends_nothing(self):
        """A rise sent by another path (an irqfd): no message, no edge left
        pending; switching the entry to level then sees the input high."""
        self.h.program(4, 0x34)
        self.h.apic.note_level(4, 1)
        self.assertEqual(self.h.messages, [])
        self.assertEqual(self.h.apic.check(), [])
        self.h.program(4, 0x34, flags=LEVEL)
        self.assertEqual(self.h.messages, [(0xFEE00000, 0xC034)])
        self.h.apic.note_level(99, 1)                # not a pin: ignored
        self.assertEqual(self.h.apic.check(), [])

    def test_level_pin_sends_level_assert_and_sets_remote_irr(self):
        self.h.program(9, 0x39, dest=0x02, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.assertEqual(self.h.messages, [(0xFEE02000, 0xC039)])
        self.assertTrue(self.h.entry(9) & REMOTE_IRR)

    def test_level_pin_waits_for_eoi_then_redelivers_while_asserted(self):
        self.h.program(9, 0x39, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.h.apic.set_irq(9, 0)
        self.h.apic.set_irq(9, 1)
        self.assertEqual(len(self.h.messages), 1)
        self.h.apic.eoi(0x39)
        self.assertEqual(len(self.h.messages), 2)
        self.assertTrue(self.h.entry(9) & REMOTE_IRR)

    def test_eoi_after_the_line_dropped_sends_nothing(self):
        self.h.program(9, 0x39, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.h.apic.set_irq(9, 0)
        self.h.apic.eoi(0x39)
        self.assertEqual(len(self.h.messages), 1)
        self.assertFalse(self.h.entry(9) & REMOTE_IRR)

    def test_eoi_register_at_0x40_acts_like_eoi(self):
        self.h.program(9, 0x39, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.h.apic.write(EOI, 4, 0x39)              # io_apic_eoi()
        self.assertEqual(len(self.h.messages), 2)

    def test_eoi_clears_remote_irr_of_every_level_pin_with_the_vector(self):
        self.h.program(10, 0x60, flags=LEVEL)
        self.h.program(11, 0x60, flags=LEVEL)
        self.h.program(12, 0x61, flags=LEVEL)
        for pin in (10, 11, 12):
            self.h.apic.set_irq(pin, 1)
            self.h.apic.set_irq(pin, 0)
        self.h.apic.eoi(0x60)
        self.assertFalse(self.h.entry(10) & REMOTE_IRR)
        self.assertFalse(self.h.entry(11) & REMOTE_IRR)
        self.assertTrue(self.h.entry(12) & REMOTE_IRR)

    def test_unmasking_an_asserted_level_pin_delivers(self):
        self.h.program(7, 0x37, flags=LEVEL | MASKED)
        self.h.apic.set_irq(7, 1)
        self.assertEqual(self.h.messages, [])
        self.h.unmask(7)
        self.assertEqual(self.h.messages, [(0xFEE00000, 0xC037)])

    def test_masking_holds_a_level_pin_back_until_unmasked(self):
        self.h.program(7, 0x37, flags=LEVEL)
        self.h.apic.set_irq(7, 1)
        self.h.mask(7)
        self.h.apic.eoi(0x37)
        self.assertEqual(len(self.h.messages), 1)
        self.h.unmask(7)
        self.assertEqual(len(self.h.messages), 2)

    def test_active_low_level_pin_asserts_when_line_is_low(self):
        self.h.program(16, 0x70, flags=LEVEL | ACTIVE_LOW | MASKED)
        self.h.apic.set_irq(16, 1)                   # PCI INTx idle high
        self.h.unmask(16)
        self.assertEqual(self.h.messages, [])
        self.h.apic.set_irq(16, 0)
        self.assertEqual(self.h.messages, [(0xFEE00000, 0xC070)])

    def test_active_low_edge_pin_fires_on_falling_line(self):
        self.h.program(5, 0x45, flags=ACTIVE_LOW)
        self.h.apic.set_irq(5, 1)
        self.assertEqual(self.h.messages, [])
        self.h.apic.set_irq(5, 0)
        self.assertEqual(self.h.messages, [(0xFEE00000, 0x45)])

    def test_switching_to_edge_clears_remote_irr(self):
        # Linux's EOI for IOAPICs without an EOI register: mask, edge, level.
        self.h.program(9, 0x39, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.h.apic.set_irq(9, 0)
        self.h.program(9, 0x39, flags=MASKED)
        self.h.program(9, 0x39, flags=LEVEL | MASKED)
        self.assertFalse(self.h.entry(9) & REMOTE_IRR)

    def test_routes_mirror_each_entry_for_kvm_eoi_scan(self):
        self.h.program(9, 0x39, dest=2, flags=LEVEL)
        self.h.program(3, 0x33, dest=1, flags=LOGICAL, mode=1)
        routes = self.h.apic.routes()
        self.assertEqual(len(routes), 24)
        self.assertEqual(routes[9], (0xFEE02000, 0xC039))
        self.assertEqual(routes[3], (0xFEE01004, 0x0133))
        self.assertEqual(routes[0], (0xFEE00000, 0))

    def test_pins_out_of_range_are_ignored(self):
        self.h.apic.set_irq(24, 1)
        self.h.apic.set_irq(-1, 1)
        self.assertEqual(self.h.messages, [])
        self.assertEqual(self.h.apic.check(), [])

    def test_check_is_empty_after_normal_operation(self):
        self.h.program(9, 0x39, flags=LEVEL)
        self.h.apic.set_irq(9, 1)
        self.assertEqual(self.h.apic.check(), [])


class ReentryTests(unittest.TestCase):

    def test_eoi_from_inside_delivery_stays_iterative_and_bounded(self):
        apic = IoApic()
        depth = [0, 0]          # current, deepest
        sent = []

        def msi(address, data):
            depth[0] += 1
            depth[1] = max(depth)
            sent.append(data)
            apic.eoi(data & 0xFF)          # a guest that EOIs at once
            depth[0] -= 1

        apic.msi = msi
        apic.write(IOREGSEL, 4, 0x10)
        apic.write(IOWIN, 4, 0x39 | LEVEL)
        apic.set_irq(0, 1)                 # a line stuck high: a storm
        self.assertEqual(depth[1], 1)
        self.assertEqual(len(sent), MAX_BURST)
        self.assertTrue(apic.deferred)
        self.assertEqual(apic.check(), [])
        apic.set_irq(0, 0)                 # the device lets go
        apic.eoi(0x39)
        self.assertEqual(len(sent), MAX_BURST)
        self.assertFalse(apic.deferred)
        self.assertEqual(apic.check(), [])

    def test_deferred_storm_continues_on_the_next_call(self):
        apic = IoApic()
        sent = []
        apic.msi = lambda a, d: (sent.append(d), apic.eoi(d & 0xFF))
        apic.write(IOREGSEL, 4, 0x10)
        apic.write(IOWIN, 4, 0x39 | LEVEL)
        apic.set_irq(0, 1)
        apic.msi = lambda a, d: sent.append(d)   # the storm stops
        apic.eoi(0x77)                     # any call drains what is due
        self.assertEqual(len(sent), MAX_BURST + 1)
        self.assertFalse(apic.deferred)

    def test_edge_raised_from_inside_delivery_is_sent_after_it(self):
        apic = IoApic()
        sent = []

        def msi(address, data):
            sent.append(data)
            if data == 0x30:
                apic.set_irq(1, 1)

        apic.msi = msi
        for pin, vector in ((0, 0x30), (1, 0x31)):
            apic.write(IOREGSEL, 4, 0x10 + 2 * pin)
            apic.write(IOWIN, 4, vector)
        apic.set_irq(0, 1)
        self.assertEqual(sent, [0x30, 0x31])
        self.assertEqual(apic.check(), [])


class StateTests(unittest.TestCase):

    def test_state_round_trip_mid_operation(self):
        h = Harness()
        h.setup_like_linux()
        h.reg_write(0x00, 0x02000000)
        h.program(9, 0x39, dest=3, flags=LEVEL)
        h.program(4, 0x34, flags=MASKED)
        h.apic.set_irq(9, 1)                         # in service, IRR set
        h.apic.write(IOREGSEL, 4, 0x18)              # pin 4, low half
        state = json.loads(json.dumps(h.apic.state()))
        self.assertEqual(state['version'], 1)

        sent = []
        copy = IoApic.from_state(state, msi=lambda a, d: sent.append((a, d)))
        self.assertEqual(copy.state(), h.apic.state())
        self.assertEqual(copy.read(IOWIN, 4), MASKED | 0x34)
        self.assertEqual(copy.check(), [])
        copy.eoi(0x39)                               # still asserted
        self.assertEqual(sent, [(0xFEE03000, 0xC039)])

    def test_from_state_refuses_other_versions(self):
        state = IoApic().state()
        state['version'] = 2
        with self.assertRaises(ValueError):
            IoApic.from_state(state)


class FuzzTests(unittest.TestCase):

    def test_seeded_random_traffic_leaves_check_empty(self):
        rng = random.Random(0x1A0A)
        apic = IoApic()
        count = [0]

        def msi(address, data):
            count[0] += 1
            self.assertEqual(address & 0xFFF00FF3, 0xFEE00000)
            if rng.random() < 0.3:                   # some EOIs re-enter
                apic.eoi(data & 0xFF)

        apic.msi = msi
        offsets = (IOREGSEL, IOWIN, EOI, 0x04, 0x11, 0x41, 0xFF)
        for step in range(20000):
            action = rng.randrange(6)
            if action == 0:
                apic.write(IOREGSEL, 4, rng.choice(
                    (0, 1, 2, rng.randrange(0x10, 0x40), rng.randrange(256))))
            elif action == 1:
                apic.write(IOWIN, 4, rng.getrandbits(32))
            elif action == 2:
                apic.set_irq(rng.randrange(24), rng.randrange(2))
            elif action == 3:
                apic.eoi(rng.randrange(256))
            elif action == 4:
                apic.write(rng.choice(offsets), rng.choice((1, 2, 4, 8)),
                           rng.getrandbits(64))
            else:
                apic.read(rng.choice(offsets), rng.choice((1, 2, 4, 8)))
            problems = apic.check()
            self.assertEqual(problems, [], f'step {step}')
        self.assertGreater(count[0], 0)


if __name__ == '__main__':
    unittest.main()


# -- the same registers read by a guest under real KVM -----------------------

REGISTERS = r'''
; writes all ones into IOAPIC registers and prints what reads back: the ID
; register, then the high and the low half of redirection entry 20 (no ISA
; device drives pin 20), which is left masked and edge again at the end
main:
    mov ebx, 0xfec00000
    mov dword [rbx], 0x00       ; IOAPICID
    mov eax, [rbx + 0x10]
    mov [saved_id], eax
    mov dword [rbx + 0x10], -1
    call show
    mov dword [rbx], 0x02       ; IOAPICARB: loaded from the ID write
    call show
    mov eax, [saved_id]
    mov dword [rbx], 0x00
    mov [rbx + 0x10], eax
    mov dword [rbx], 0x10 + 2 * 20 + 1
    mov dword [rbx + 0x10], -1
    call show
    mov dword [rbx], 0x10 + 2 * 20
    mov dword [rbx + 0x10], -1  ; masked, level, every reserved bit
    call show
    mov dword [rbx + 0x10], 0x10000 | 0x4000 | 0x1000   ; edge: remote IRR and DELIVS written
    call show
    mov dword [rbx], 0x10 + 2 * 20 + 1
    mov dword [rbx + 0x10], 0
    mov al, PASSED
    ret

show:                           ; prints IOWIN's value and a newline
    mov eax, [rbx + 0x10]
    mov cl, 8
    call puthex
    mov al, 10
    call putc
    ret

align 4
saved_id: dd 0
'''


@requires_kvm
class GuestRegistersTest(unittest.TestCase):
    """A guest reads back the same redirection entries from kvmlite's IOAPIC
    ('split') as from KVM's ('kernel'); 'user' mode has no IOAPIC."""

    def test_reserved_bits_read_back_alike_in_split_and_kernel_mode(self):
        expected = (b'0f000000\n0f000000\n'     # ID and arbitration ID
                    b'ffffffff\n'               # high half: destination and bits 32-55
                    b'ffffafff\n'               # low half: all but DELIVS and remote IRR
                    b'00010000\n')              # the read-only bits still ignore writes
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                run = run_guest(REGISTERS, mode, timeout=20, symbols={'PASSED': PASSED})
                self.assertEqual(run.output, expected, run.describe())
                self.assertEqual(run.status, STATUS_PASSED, run.describe())
                self.assertEqual(run.problems, [], run.describe())
