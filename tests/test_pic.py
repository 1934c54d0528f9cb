"""Tests for devices.pic: the PC's 8259A pair and its ELCR."""

import json
import random
import unittest

from devices import IrqLine
from devices.pic import PicPair

MASTER_VECTOR = 0x30        # Linux's ISA_IRQ_VECTOR(0)
SLAVE_VECTOR = 0x38         # Linux's ISA_IRQ_VECTOR(8)


def port_map(pic):
    """Absolute port -> (device, offset), as the wiring will register them."""
    return {0x20: (pic.master, 0), 0x21: (pic.master, 1),
            0xA0: (pic.slave, 0), 0xA1: (pic.slave, 1),
            0x4D0: (pic.elcr, 0), 0x4D1: (pic.elcr, 1)}


def outb(pic, port, value, size=1):
    device, offset = port_map(pic)[port]
    device.write(offset, size, value)


def inb(pic, port, size=1):
    device, offset = port_map(pic)[port]
    return device.read(offset, size)


def linux_init(pic, auto_eoi=False):
    """arch/x86/kernel/i8259.c init_8259A(), then unmask everything."""
    outb(pic, 0x21, 0xFF)                           # mask all of the master
    outb(pic, 0x20, 0x11)                           # ICW1: edge, cascade, ICW4
    outb(pic, 0x21, MASTER_VECTOR)                  # ICW2
    outb(pic, 0x21, 0x04)                           # ICW3: slave on IR2
    outb(pic, 0x21, 0x03 if auto_eoi else 0x01)     # ICW4: 8086 (+AEOI)
    outb(pic, 0xA0, 0x11)
    outb(pic, 0xA1, SLAVE_VECTOR)
    outb(pic, 0xA1, 0x02)                           # ICW3: slave id 2
    outb(pic, 0xA1, 0x01)                           # ICW4: 8086, normal EOI
    outb(pic, 0x21, 0x00)
    outb(pic, 0xA1, 0x00)


def linux_ack(pic, irq):
    """mask_and_ack_8259A()'s EOI part: specific EOIs, slave then master."""
    if irq >= 8:
        outb(pic, 0xA0, 0x60 + (irq & 7))
        outb(pic, 0x20, 0x60 + 2)
    else:
        outb(pic, 0x20, 0x60 + irq)


def read_isr(pic, port):
    outb(pic, port, 0x0B)                           # OCW3: read ISR
    value = inb(pic, port)
    outb(pic, port, 0x0A)                           # back to IRR
    return value


class InitialisationTest(unittest.TestCase):

    def test_power_on_state_is_idle_with_intr_low(self):
        pic = PicPair()
        self.assertFalse(pic.pending())
        self.assertEqual(pic.intr.level, 0)
        self.assertEqual(inb(pic, 0x20), 0)
        self.assertEqual(pic.check(), [])

    def test_constructor_creates_intr_line_or_uses_given_one(self):
        line = IrqLine()
        self.assertIs(PicPair(line).intr, line)
        self.assertIsInstance(PicPair().intr, IrqLine)

    def test_linux_init_sets_vectors_and_leaves_ocw1_writable(self):
        pic = PicPair()
        linux_init(pic)
        outb(pic, 0x21, 0xB8)
        outb(pic, 0xA1, 0x8F)
        self.assertEqual(inb(pic, 0x21), 0xB8)
        self.assertEqual(inb(pic, 0xA1), 0x8F)
        outb(pic, 0x21, 0x00)
        pic.set_irq(1, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 1)

    def test_bios_init_vector_bases_8_and_0x70(self):
        pic = PicPair()
        for port, base, icw3 in ((0x20, 0x08, 0x04), (0xA0, 0x70, 0x02)):
            outb(pic, port, 0x11)
            outb(pic, port + 1, base)
            outb(pic, port + 1, icw3)
            outb(pic, port + 1, 0x01)
        outb(pic, 0x21, 0xFB)                       # only the cascade open
        outb(pic, 0xA1, 0xFE)                       # and the RTC (IRQ 8)
        pic.set_irq(8, 1)
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), 0x70)

    def test_icw2_low_bits_are_replaced_by_the_irq_number(self):
        pic = PicPair()
        outb(pic, 0x20, 0x13)                       # single, ICW4
        outb(pic, 0x21, 0x47)
        outb(pic, 0x21, 0x01)
        pic.set_irq(3, 1)
        self.assertEqual(pic.acknowledge(), 0x43)

    def test_single_mode_skips_icw3(self):
        pic = PicPair()
        outb(pic, 0x20, 0x13)                       # SNGL + IC4
        outb(pic, 0x21, 0x50)                       # ICW2
        outb(pic, 0x21, 0x02)                       # ICW4: AEOI
        outb(pic, 0x21, 0xF0)                       # now OCW1
        self.assertEqual(inb(pic, 0x21), 0xF0)
        pic.set_irq(0, 1)
        self.assertEqual(pic.acknowledge(), 0x50)
        self.assertEqual(read_isr(pic, 0x20), 0)    # auto-EOI took effect

    def test_without_icw4_auto_eoi_is_cleared(self):
        pic = PicPair()
        linux_init(pic, auto_eoi=True)
        outb(pic, 0x20, 0x10)                       # ICW1: no ICW4, cascade
        outb(pic, 0x21, MASTER_VECTOR)
        outb(pic, 0x21, 0x04)                       # ICW3, then done
        outb(pic, 0x21, 0x00)                       # OCW1
        self.assertEqual(inb(pic, 0x21), 0x00)
        pic.set_irq(5, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 5)
        self.assertEqual(read_isr(pic, 0x20), 1 << 5)

    def test_icw1_clears_mask_and_in_service(self):
        pic = PicPair()
        linux_init(pic)
        pic.set_irq(4, 1)
        pic.acknowledge()
        outb(pic, 0x21, 0xFF)
        outb(pic, 0x20, 0x11)
        self.assertEqual(inb(pic, 0x21), 0x00)
        self.assertEqual(read_isr(pic, 0x20), 0)

    def test_icw1_needs_a_new_rising_edge(self):
        pic = PicPair()
        linux_init(pic)
        outb(pic, 0x21, 0xFF)
        pic.set_irq(3, 1)                           # latched while masked
        linux_init(pic)
        self.assertFalse(pic.pending())
        pic.set_irq(3, 0)
        pic.set_irq(3, 1)
        self.assertTrue(pic.pending())

    def test_linux_probe_reads_back_mask(self):
        pic = PicPair()
        outb(pic, 0xA1, 0xFF)
        outb(pic, 0x21, 0xFF)
        self.assertEqual(inb(pic, 0x21), 0xFF)


class DeliveryTest(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)

    def test_edge_irq_raises_intr_and_acknowledge_returns_vector(self):
        pic = self.pic
        pic.set_irq(0, 1)
        self.assertTrue(pic.pending())
        self.assertEqual(pic.intr.raised, 1)
        self.assertEqual(inb(pic, 0x20), 0x01)      # IRR
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR)
        self.assertFalse(pic.pending())
        self.assertEqual(inb(pic, 0x20), 0x00)      # IRR consumed
        self.assertEqual(read_isr(pic, 0x20), 0x01)
        outb(pic, 0x20, 0x20)                       # non-specific EOI
        self.assertEqual(read_isr(pic, 0x20), 0x00)
        self.assertFalse(pic.pending())

    def test_pulse_is_latched_until_acknowledged(self):
        pic = self.pic
        line = IrqLine(lambda level: pic.set_irq(4, level))
        line.pulse()
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 4)

    def test_edge_line_held_high_is_not_redelivered(self):
        pic = self.pic
        pic.set_irq(1, 1)
        pic.acknowledge()
        outb(pic, 0x20, 0x20)
        pic.set_irq(1, 1)                           # no change: no edge
        self.assertFalse(pic.pending())
        pic.set_irq(1, 0)
        pic.set_irq(1, 1)
        self.assertTrue(pic.pending())

    def test_masked_request_is_latched_and_delivered_when_unmasked(self):
        pic = self.pic
        outb(pic, 0x21, 1 << 6)
        pic.set_irq(6, 1)
        pic.set_irq(6, 0)
        self.assertFalse(pic.pending())
        self.assertEqual(inb(pic, 0x20), 1 << 6)    # IRR ignores IMR
        outb(pic, 0x21, 0x00)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 6)

    def test_lower_priority_waits_for_eoi_higher_preempts(self):
        pic = self.pic
        pic.set_irq(3, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 3)
        pic.set_irq(5, 1)
        self.assertFalse(pic.pending())             # 5 below 3 in service
        pic.set_irq(1, 1)
        self.assertTrue(pic.pending())              # 1 above 3
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 1)
        outb(pic, 0x20, 0x20)                       # ends 1 (highest)
        self.assertEqual(read_isr(pic, 0x20), 1 << 3)
        self.assertFalse(pic.pending())
        outb(pic, 0x20, 0x20)                       # ends 3
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 5)

    def test_simultaneous_requests_serve_lowest_number_first(self):
        pic = self.pic
        outb(pic, 0x21, 0xFF)
        for irq in (7, 4, 6):
            pic.set_irq(irq, 1)
        outb(pic, 0x21, 0x00)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 4)

    def test_specific_eoi_clears_the_named_level_only(self):
        pic = self.pic
        pic.set_irq(6, 1)
        pic.acknowledge()
        pic.set_irq(4, 1)
        pic.acknowledge()
        outb(pic, 0x20, 0x66)                       # specific EOI, IR6
        self.assertEqual(read_isr(pic, 0x20), 1 << 4)

    def test_mask_after_intr_gives_spurious_irq7(self):
        pic = self.pic
        pic.set_irq(4, 1)
        outb(pic, 0x21, 1 << 4)
        self.assertFalse(pic.pending())
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 7)
        self.assertEqual(read_isr(pic, 0x20), 0)

    def test_intr_changes_only_on_transitions(self):
        pic = self.pic
        seen = []
        pic.intr.sink = seen.append
        pic.set_irq(3, 1)
        pic.set_irq(4, 1)                           # still pending
        self.assertEqual(seen, [1])
        pic.acknowledge()
        self.assertEqual(seen, [1, 0])              # 4 waits behind 3
        outb(pic, 0x21, 0x00)
        self.assertEqual(seen, [1, 0])
        outb(pic, 0x20, 0x20)
        self.assertEqual(seen, [1, 0, 1])

    def test_set_irq_ignores_cascade_and_out_of_range_lines(self):
        pic = self.pic
        for irq in (2, -1, 16, 99):
            pic.set_irq(irq, 1)
        self.assertFalse(pic.pending())
        self.assertEqual(inb(pic, 0x20), 0)
        self.assertEqual(pic.check(), [])


class CascadeTest(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)

    def test_slave_irq_returns_slave_vector_and_sets_both_isr(self):
        pic = self.pic
        pic.set_irq(12, 1)
        self.assertTrue(pic.pending())
        self.assertEqual(inb(pic, 0x20), 1 << 2)     # master IRR: cascade
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 4)
        self.assertEqual(read_isr(pic, 0x20), 1 << 2)
        self.assertEqual(read_isr(pic, 0xA0), 1 << 4)
        linux_ack(pic, 12)
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.assertEqual(read_isr(pic, 0xA0), 0)
        self.assertEqual(pic.check(), [])

    def test_next_slave_irq_waits_for_master_eoi(self):
        pic = self.pic
        pic.set_irq(14, 1)
        pic.acknowledge()
        pic.set_irq(11, 1)                          # above 14 on the slave
        self.assertFalse(pic.pending())             # master: IR2 in service
        outb(pic, 0xA0, 0x20)                       # BIOS: EOI slave, master
        outb(pic, 0x20, 0x20)
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 3)

    def test_master_irq_above_cascade_preempts_slave_service(self):
        pic = self.pic
        pic.set_irq(9, 1)
        pic.acknowledge()
        pic.set_irq(1, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 1)
        pic.set_irq(3, 1)
        outb(pic, 0x20, 0x61)
        self.assertFalse(pic.pending())             # 3 is below IR2

    def test_slave_mask_stops_cascade(self):
        pic = self.pic
        outb(pic, 0xA1, 1 << 1)
        pic.set_irq(9, 1)
        self.assertFalse(pic.pending())
        outb(pic, 0xA1, 0)
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 1)

    def test_special_fully_nested_mode_lets_higher_slave_irq_through(self):
        pic = self.pic
        outb(pic, 0x20, 0x11)
        outb(pic, 0x21, MASTER_VECTOR)
        outb(pic, 0x21, 0x04)
        outb(pic, 0x21, 0x11)                       # ICW4: 8086 + SFNM
        pic.set_irq(14, 1)
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 6)
        pic.set_irq(10, 1)                          # higher on the slave
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 2)
        pic.set_irq(15, 1)                          # lower on the slave
        self.assertFalse(pic.pending())
        pic.set_irq(4, 1)                           # lower on the master
        self.assertFalse(pic.pending())

    def test_without_sfnm_higher_slave_irq_waits(self):
        pic = self.pic
        pic.set_irq(14, 1)
        pic.acknowledge()
        pic.set_irq(10, 1)
        self.assertFalse(pic.pending())


class SpuriousTest(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)
        outb(self.pic, 0x4D0, 1 << 5)               # IRQ 5 level
        outb(self.pic, 0x4D1, 1 << 3)               # IRQ 11 level

    def test_level_request_gone_before_ack_gives_irq7_without_isr(self):
        pic = self.pic
        pic.set_irq(5, 1)
        self.assertTrue(pic.pending())
        pic.set_irq(5, 0)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 7)
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.assertEqual(pic.check(), [])

    def test_slave_request_gone_gives_irq15_and_master_owes_eoi(self):
        pic = self.pic
        pic.set_irq(11, 1)
        pic.set_irq(11, 0)
        self.assertTrue(pic.pending())             # IR2 edge is latched
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 7)
        self.assertEqual(read_isr(pic, 0xA0), 0)
        self.assertEqual(read_isr(pic, 0x20), 1 << 2)
        outb(pic, 0x20, 0x62)                       # Linux: EOI the cascade
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.assertEqual(pic.check(), [])

    def test_real_irq7_is_told_apart_by_isr(self):
        pic = self.pic
        pic.set_irq(7, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 7)
        self.assertEqual(read_isr(pic, 0x20), 1 << 7)


class ElcrTest(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)

    def test_fixed_edge_bits_read_zero(self):
        pic = self.pic
        outb(pic, 0x4D0, 0xFFFF, size=2)
        self.assertEqual(inb(pic, 0x4D0), 0xF8)
        self.assertEqual(inb(pic, 0x4D1), 0xDE)
        self.assertEqual(inb(pic, 0x4D0, size=2), 0xDEF8)

    def test_level_irq_follows_line_and_redelivers_after_eoi(self):
        pic = self.pic
        outb(pic, 0x4D1, 1 << 2)                    # IRQ 10 level
        pic.set_irq(10, 1)
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 2)
        linux_ack(pic, 10)
        self.assertTrue(pic.pending())              # still asserted
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 2)
        pic.set_irq(10, 0)                          # device serviced
        linux_ack(pic, 10)
        self.assertFalse(pic.pending())
        self.assertEqual(inb(pic, 0xA0), 0)

    def test_same_held_line_as_edge_is_delivered_once(self):
        pic = self.pic
        pic.set_irq(10, 1)
        pic.acknowledge()
        linux_ack(pic, 10)
        self.assertFalse(pic.pending())

    def test_switching_to_level_shows_current_line(self):
        pic = self.pic
        outb(pic, 0x21, 1 << 6)
        pic.set_irq(6, 1)
        pic.set_irq(6, 0)
        self.assertEqual(inb(pic, 0x20), 1 << 6)    # edge latched
        outb(pic, 0x4D0, 1 << 6)
        self.assertEqual(inb(pic, 0x20), 0)         # level: line is low
        self.assertEqual(pic.check(), [])

    def test_fixed_bits_keep_irq0_edge_triggered(self):
        pic = self.pic
        outb(pic, 0x4D0, 0x01)
        pic.set_irq(0, 1)
        pic.acknowledge()
        outb(pic, 0x20, 0x20)
        self.assertFalse(pic.pending())


class PriorityTest(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)

    def request(self, *irqs):
        outb(self.pic, 0x21, 0xFF)
        for irq in irqs:
            self.pic.set_irq(irq, 0)
            self.pic.set_irq(irq, 1)
        outb(self.pic, 0x21, 0x00)

    def test_rotate_on_non_specific_eoi_makes_served_level_lowest(self):
        pic = self.pic
        self.request(1, 3)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 1)
        outb(pic, 0x20, 0xA0)                       # rotate, non-specific
        self.request(1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 3)
        outb(pic, 0x20, 0xA0)                       # now 3 is lowest
        self.request(0)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 0)

    def test_set_priority_makes_level_lowest(self):
        pic = self.pic
        outb(pic, 0x20, 0xC4)                       # IR4 lowest, IR5 highest
        self.request(0, 4, 6)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 6)
        pic.set_irq(0, 0)
        pic.set_irq(0, 1)
        self.assertFalse(pic.pending())             # 0 is below 6 now

    def test_rotate_on_specific_eoi(self):
        pic = self.pic
        self.request(5)
        pic.acknowledge()
        outb(pic, 0x20, 0xE5)                       # rotate, specific EOI 5
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.request(5, 7)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 7)

    def test_non_specific_eoi_follows_rotated_priority(self):
        pic = self.pic
        outb(pic, 0x20, 0xC3)                       # IR4 highest
        self.request(6)
        pic.acknowledge()
        self.request(4)
        pic.acknowledge()
        outb(pic, 0x20, 0x20)                       # ends 4, the highest
        self.assertEqual(read_isr(pic, 0x20), 1 << 6)

    def test_rotate_in_auto_eoi_mode(self):
        pic = PicPair()
        linux_init(pic, auto_eoi=True)
        self.pic = pic
        outb(pic, 0x20, 0x80)                       # set rotate in AEOI
        self.request(3, 6)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 3)
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.request(0)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 6)
        outb(pic, 0x20, 0x00)                       # clear rotate in AEOI
        self.request(4, 5)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 0)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 4)

    def test_auto_eoi_leaves_isr_clear_and_allows_nesting(self):
        pic = PicPair()
        linux_init(pic, auto_eoi=True)
        pic.set_irq(3, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 3)
        self.assertEqual(read_isr(pic, 0x20), 0)
        pic.set_irq(6, 1)
        self.assertTrue(pic.pending())

    def test_cascade_with_master_auto_eoi(self):
        pic = PicPair()
        linux_init(pic, auto_eoi=True)
        pic.set_irq(13, 1)
        self.assertEqual(pic.acknowledge(), SLAVE_VECTOR + 5)
        self.assertEqual(read_isr(pic, 0x20), 0)
        self.assertEqual(read_isr(pic, 0xA0), 1 << 5)


class Ocw3Test(unittest.TestCase):

    def setUp(self):
        self.pic = PicPair()
        linux_init(self.pic)

    def test_read_register_select_is_sticky(self):
        pic = self.pic
        pic.set_irq(3, 1)
        pic.acknowledge()
        pic.set_irq(5, 1)
        outb(pic, 0x20, 0x0B)
        self.assertEqual(inb(pic, 0x20), 1 << 3)
        self.assertEqual(inb(pic, 0x20), 1 << 3)
        outb(pic, 0x20, 0x08)                       # RR=0: no change
        self.assertEqual(inb(pic, 0x20), 1 << 3)
        outb(pic, 0x20, 0x0A)
        self.assertEqual(inb(pic, 0x20), 1 << 5)
        self.assertEqual(inb(pic, 0x21), 0x00)      # A0=1 is always IMR

    def test_poll_returns_level_and_acknowledges(self):
        pic = self.pic
        outb(pic, 0x21, 0xFF)                       # polled, not interrupt
        pic.set_irq(6, 1)
        pic.set_irq(4, 1)
        outb(pic, 0x21, 0x00)
        outb(pic, 0x20, 0x0C)                       # OCW3: poll
        self.assertEqual(inb(pic, 0x20), 0x84)
        self.assertEqual(read_isr(pic, 0x20), 1 << 4)
        self.assertEqual(inb(pic, 0x20), 1 << 6)    # poll is one read only
        outb(pic, 0x20, 0x20)
        outb(pic, 0x20, 0x0C)
        self.assertEqual(inb(pic, 0x21), 0x86)      # either port
        outb(pic, 0x20, 0x20)
        outb(pic, 0x20, 0x0C)
        self.assertEqual(inb(pic, 0x20), 0x00)      # nothing requesting

    def test_poll_through_cascade(self):
        pic = self.pic
        pic.set_irq(9, 1)
        outb(pic, 0x20, 0x0C)
        self.assertEqual(inb(pic, 0x20), 0x82)
        outb(pic, 0xA0, 0x0C)
        self.assertEqual(inb(pic, 0xA0), 0x81)
        self.assertFalse(pic.pending())
        self.assertEqual(pic.check(), [])

    def test_special_mask_mode_enables_lower_levels(self):
        pic = self.pic
        pic.set_irq(3, 1)
        pic.acknowledge()
        outb(pic, 0x21, 1 << 3)                     # handler masks itself
        outb(pic, 0x20, 0x68)                       # OCW3: set SMM
        pic.set_irq(6, 1)
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 6)
        pic.set_irq(5, 1)                           # 6 in service, 5 above
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 5)
        outb(pic, 0x20, 0x48)                       # OCW3: reset SMM
        pic.set_irq(7, 1)
        self.assertFalse(pic.pending())             # 3, 5, 6 in service

    def test_special_mask_mode_skips_levels_in_service(self):
        pic = self.pic
        outb(pic, 0x20, 0x68)
        outb(pic, 0x4D0, 1 << 4)                    # level, stays asserted
        pic.set_irq(4, 1)
        pic.acknowledge()
        self.assertFalse(pic.pending())
        outb(pic, 0x20, 0x64)                       # specific EOI 4
        self.assertTrue(pic.pending())

    def test_esmm_clear_leaves_special_mask_unchanged(self):
        pic = self.pic
        outb(pic, 0x20, 0x68)
        outb(pic, 0x20, 0x28)                       # SMM bit, no ESMM
        pic.set_irq(3, 1)
        pic.acknowledge()
        pic.set_irq(6, 1)
        self.assertTrue(pic.pending())


class BusAccessTest(unittest.TestCase):

    def test_word_write_is_two_byte_writes(self):
        pic = PicPair()
        outb(pic, 0x20, (MASTER_VECTOR << 8) | 0x13, size=2)  # ICW1, ICW2
        outb(pic, 0x21, 0x01)                       # ICW4
        pic.set_irq(1, 1)
        self.assertEqual(pic.acknowledge(), MASTER_VECTOR + 1)

    def test_wide_read_past_ports_floats_high(self):
        pic = PicPair()
        outb(pic, 0x21, 0x5A)
        self.assertEqual(inb(pic, 0x21, size=2), 0xFF5A)
        self.assertEqual(inb(pic, 0x20, size=4), 0xFFFF5A00)
        self.assertEqual(pic.master.read(7, 1), 0xFF)

    def test_odd_offsets_and_sizes_do_not_raise(self):
        pic = PicPair()
        for device in (pic.master, pic.slave, pic.elcr):
            for offset in (-1, 0, 1, 2, 100):
                for size in (0, 1, 2, 3, 4, 8, 16):
                    device.write(offset, size, 0xFFFFFFFFFFFFFFFF)
                    device.read(offset, size)
        self.assertEqual(pic.check(), [])


class StateTest(unittest.TestCase):

    def busy_pair(self):
        pic = PicPair()
        linux_init(pic)
        outb(pic, 0x4D1, 1 << 3)
        pic.set_irq(11, 1)
        pic.set_irq(4, 1)
        pic.acknowledge()                           # 4 in service
        pic.set_irq(6, 1)                           # waiting behind 4
        outb(pic, 0x20, 0x0B)
        outb(pic, 0xA0, 0x11)                       # slave mid-init
        return pic

    def test_round_trip_mid_operation(self):
        pic = self.busy_pair()
        state = json.loads(json.dumps(pic.state()))
        self.assertEqual(state['version'], 1)
        copy = PicPair.from_state(state)
        self.assertEqual(copy.state(), pic.state())
        self.assertEqual(copy.pending(), pic.pending())
        self.assertEqual(copy.check(), [])
        for each in (pic, copy):                    # both go on the same way
            outb(each, 0xA1, SLAVE_VECTOR)
            outb(each, 0xA1, 0x02)
            outb(each, 0xA1, 0x01)
            each.set_irq(11, 0)
            each.set_irq(11, 1)
            outb(each, 0x20, 0x20)
        self.assertEqual(copy.acknowledge(), pic.acknowledge())
        self.assertEqual(copy.acknowledge(), pic.acknowledge())
        self.assertEqual(copy.state(), pic.state())

    def test_from_state_drives_given_line_without_glitch(self):
        pic = self.busy_pair()
        outb(pic, 0x20, 0x20)                       # 6 now pending
        self.assertTrue(pic.pending())
        line = IrqLine()
        copy = PicPair.from_state(pic.state(), intr=line)
        self.assertIs(copy.intr, line)
        self.assertEqual((line.level, line.raised), (1, 1))

    def test_from_state_refuses_other_versions(self):
        state = PicPair().state()
        state['version'] = 2
        with self.assertRaises(ValueError):
            PicPair.from_state(state)

    def test_reset_keeps_line_levels_but_needs_new_edge(self):
        pic = self.busy_pair()
        pic.reset()
        self.assertFalse(pic.pending())
        self.assertEqual(pic.state(), PicPair.from_state(pic.state()).state())
        self.assertEqual(inb(pic, 0x4D1), 0)
        pic.set_irq(4, 0)
        pic.set_irq(4, 1)
        self.assertFalse(pic.pending())             # masked from power-on ...
        outb(pic, 0x21, 0x00)                       # ... until OCW1 unmasks it
        self.assertTrue(pic.pending())
        self.assertEqual(pic.acknowledge(), 4)      # power-on vector base 0

    def test_power_on_masks_every_line_until_initialised(self):
        # regression: a device raising its line before the guest's ICW1 (the
        # PIT's OUT is high from power-on) reached the CPU with vector base 0
        pic = PicPair()
        pic.set_irq(0, 1)
        self.assertFalse(pic.pending())
        self.assertEqual(inb(pic, 0x21), 0xFF)
        linux_init(pic)
        pic.set_irq(0, 0)
        pic.set_irq(0, 1)
        self.assertTrue(pic.pending())


class InvariantTest(unittest.TestCase):

    def test_check_reports_stale_level_irr_and_intr(self):
        pic = PicPair()
        outb(pic, 0x21, 0x00)                       # unmask (OCW1)
        outb(pic, 0x4D0, 1 << 5)
        pic.master.irr |= 1 << 5                    # corrupt on purpose
        problems = pic.check()
        self.assertTrue(any('level-triggered' in p for p in problems))
        self.assertTrue(any('INTR' in p for p in problems))

    def test_random_register_burst_keeps_invariants(self):
        rng = random.Random(8259)
        pic = PicPair()
        linux_init(pic)
        ports = list(port_map(pic))
        for step in range(3000):
            action = rng.randrange(4)
            if action == 0:
                value = rng.choice((rng.randrange(256), 0x20, 0x0C, 0x68,
                                    0x11, 0x0B, rng.randrange(1 << 32)))
                outb(pic, rng.choice(ports), value, rng.choice((1, 2, 4)))
            elif action == 1:
                inb(pic, rng.choice(ports), rng.choice((1, 2, 4)))
            elif action == 2:
                pic.set_irq(rng.randrange(-1, 17), rng.randrange(2))
            else:
                vector = pic.acknowledge()
                self.assertTrue(0 <= vector <= 0xFF)
            self.assertEqual(pic.check(), [], f'step {step}')
        state = json.loads(json.dumps(pic.state()))
        self.assertEqual(PicPair.from_state(state).state(), pic.state())


if __name__ == '__main__':
    unittest.main()
