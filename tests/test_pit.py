"""Tests for devices.pit: the 8254 at 0x40-0x43 and port 0x61."""

import json
import random
import unittest

from devices import IrqLine, SteppedClock
from devices.pit import PIT_FREQ_HZ, Pit

NS_PER_S = 1_000_000_000
HZ = 1000
LATCH = (PIT_FREQ_HZ + HZ // 2) // HZ       # Linux's PIT_LATCH: 1193 CLKs


def clk_ns(clks):
    """The first ns by which ``clks`` CLK pulses have passed."""
    return -(-clks * NS_PER_S // PIT_FREQ_HZ)


class Bench:
    """A Pit on a stepped clock, with port-number accessors like inb/outb."""

    def __init__(self):
        self.clock = SteppedClock(1_000_000)
        self.irq = IrqLine()
        self.pit = Pit(self.clock, self.irq)

    def outb(self, value, port):
        if port == 0x61:
            self.pit.port61.write(0, 1, value)
        else:
            self.pit.write(port - 0x40, 1, value)

    def inb(self, port):
        if port == 0x61:
            return self.pit.port61.read(0, 1)
        return self.pit.read(port - 0x40, 1)

    def program(self, channel, control, count):
        """Control word, then the count LSB then MSB."""
        self.outb(control, 0x43)
        self.outb(count & 0xFF, 0x40 + channel)
        self.outb(count >> 8, 0x40 + channel)

    def latched_count(self, channel):
        """Linux's pit_read(): counter latch command, then LSB and MSB."""
        self.outb(channel << 6, 0x43)
        low = self.inb(0x40 + channel)
        return low | self.inb(0x40 + channel) << 8

    def status(self, channel):
        self.outb(0xE0 | 2 << channel, 0x43)   # read-back: status only
        return self.inb(0x40 + channel)

    def advance_clks(self, clks, start=None):
        """Move the clock to ``clks`` CLKs after ``start`` (default: now)."""
        start = self.clock.now if start is None else start
        self.clock.now = start + clk_ns(clks)


class Mode2PeriodicTest(unittest.TestCase):
    """drivers/clocksource/i8253.c pit_set_periodic(): 0x34, LATCH."""

    def setUp(self):
        self.b = Bench()
        self.start = self.b.clock.now
        self.b.program(0, 0x34, LATCH)
        self.edges = self.b.irq.raised

    def test_each_period_gives_one_rising_edge_on_irq0(self):
        for period in range(1, 6):
            self.b.advance_clks(LATCH * period - 1, self.start)
            self.b.pit.tick()
            self.assertEqual(self.b.irq.raised, self.edges + period - 1)
            self.b.advance_clks(LATCH * period, self.start)
            self.b.pit.tick()
            self.assertEqual(self.b.irq.raised, self.edges + period)
            self.assertEqual(self.b.irq.level, 1)

    def test_tick_returns_the_end_of_the_current_period(self):
        self.assertEqual(self.b.pit.tick(), self.start + clk_ns(LATCH))
        self.b.clock.now = self.start + clk_ns(LATCH)
        self.assertEqual(self.b.pit.tick(), self.start + clk_ns(2 * LATCH))

    def test_sleeping_until_tick_time_gives_hz_edges_per_second(self):
        next_ns = self.b.pit.tick()
        while next_ns <= self.start + NS_PER_S:    # 1000.15 periods
            self.b.clock.now = next_ns
            next_ns = self.b.pit.tick()
        self.assertEqual(self.b.irq.raised - self.edges, HZ)

    def test_missed_periods_coalesce_into_one_edge(self):
        self.b.advance_clks(LATCH * 10 + 5, self.start)
        self.b.pit.tick()
        self.assertEqual(self.b.irq.raised, self.edges + 1)
        self.assertEqual(self.b.pit.tick(), self.start + clk_ns(LATCH * 11))

    def test_out0_is_low_for_the_clk_at_count_one(self):
        self.b.advance_clks(LATCH - 1, self.start)
        self.b.pit.tick()
        self.assertEqual(self.b.irq.level, 0)
        self.assertEqual(self.b.latched_count(0), 1)

    def test_latch_command_mid_count_freezes_the_value_until_read(self):
        self.b.advance_clks(100, self.start)
        self.b.outb(0x00, 0x43)                 # latch counter 0
        self.b.advance_clks(500, self.start)
        self.b.outb(0x00, 0x43)                 # ignored: already latched
        low = self.b.inb(0x40)
        self.b.advance_clks(700, self.start)
        self.assertEqual(low | self.b.inb(0x40) << 8, LATCH - 100)
        self.assertEqual(self.b.latched_count(0), LATCH - 700)

    def test_unlatched_reads_follow_the_counter(self):
        self.b.advance_clks(10, self.start)
        low = self.b.inb(0x40)
        high = self.b.inb(0x40)
        self.assertEqual(low | high << 8, LATCH - 10)

    def test_new_count_waits_for_the_end_of_the_period(self):
        self.b.advance_clks(100, self.start)
        self.b.outb(500 & 0xFF, 0x40)
        self.b.outb(500 >> 8, 0x40)
        self.assertTrue(self.b.status(0) & 0x40)        # NULL COUNT
        self.assertEqual(self.b.latched_count(0), LATCH - 100)
        self.b.advance_clks(LATCH + 100, self.start)
        self.assertEqual(self.b.latched_count(0), 500 - 100)
        self.assertFalse(self.b.status(0) & 0x40)
        self.assertEqual(self.b.pit.tick(), self.start + clk_ns(LATCH + 500))


class OneShotTest(unittest.TestCase):

    def test_mode0_raises_irq0_once_at_terminal_count(self):
        b = Bench()
        r0 = b.irq.raised                       # OUT is high from power-on
        start = b.clock.now
        b.program(0, 0x30, 5000)                # pit_shutdown()'s 0x30
        self.assertEqual(b.irq.level, 0)
        self.assertEqual(b.pit.tick(), start + clk_ns(5000))
        b.advance_clks(4999, start)
        b.pit.tick()
        self.assertEqual((b.irq.level, b.irq.raised - r0), (0, 0))
        b.advance_clks(5000, start)
        self.assertIsNone(b.pit.tick())
        self.assertEqual((b.irq.level, b.irq.raised - r0), (1, 1))
        b.advance_clks(200000, start)
        self.assertIsNone(b.pit.tick())
        self.assertEqual(b.irq.raised - r0, 1)
        self.assertEqual(b.latched_count(0), (5000 - 200000) % 65536)

    def test_mode0_count_rewrite_restarts_and_lowers_out(self):
        b = Bench()
        r0 = b.irq.raised                       # OUT is high from power-on
        b.program(0, 0x30, 100)
        b.advance_clks(150)
        b.pit.tick()
        self.assertEqual(b.irq.level, 1)
        b.outb(50, 0x40)                        # first byte: OUT low, stop
        self.assertEqual(b.irq.level, 0)
        stopped = b.latched_count(0)
        b.advance_clks(30)
        self.assertEqual(b.latched_count(0), stopped)
        start = b.clock.now
        b.outb(0, 0x40)
        b.advance_clks(50, start)
        b.pit.tick()
        self.assertEqual((b.irq.level, b.irq.raised - r0), (1, 2))

    def test_mode4_oneshot_like_linux_next_event(self):
        """pit_set_oneshot() writes 0x38; pit_next_event() only the count."""
        b = Bench()
        b.outb(0x38, 0x43)
        edges = b.irq.raised
        for delta in (300, 1000):
            start = b.clock.now
            b.outb(delta & 0xFF, 0x40)
            b.outb(delta >> 8, 0x40)
            self.assertEqual(b.pit.tick(), start + clk_ns(delta + 1))
            b.advance_clks(delta, start)
            b.pit.tick()
            self.assertEqual(b.irq.raised, edges)   # strobe low, not yet up
            b.advance_clks(delta + 1, start)
            self.assertIsNone(b.pit.tick())
            edges += 1
            self.assertEqual((b.irq.level, b.irq.raised), (1, edges))

    def test_binary_count_zero_means_65536(self):
        b = Bench()
        start = b.clock.now
        b.program(0, 0x30, 0)
        self.assertEqual(b.pit.tick(), start + clk_ns(65536))
        b.advance_clks(1, start)
        self.assertEqual(b.latched_count(0), 0xFFFF)


class ModeThreeTest(unittest.TestCase):

    def test_square_wave_is_high_then_low_with_one_edge_per_period(self):
        b = Bench()
        start = b.clock.now
        b.program(0, 0x36, 1000)
        edges = b.irq.raised
        self.assertEqual(b.pit.tick(), start + clk_ns(500))
        b.clock.now = start + clk_ns(500)
        self.assertEqual(b.pit.tick(), start + clk_ns(1000))
        self.assertEqual(b.irq.level, 0)
        b.clock.now = start + clk_ns(1000)
        b.pit.tick()
        self.assertEqual((b.irq.level, b.irq.raised), (1, edges + 1))

    def test_new_count_loads_at_the_end_of_the_half_cycle(self):
        b = Bench()
        b.outb(0x01, 0x61)
        start = b.clock.now
        b.program(2, 0xB6, 1000)
        b.advance_clks(100, start)
        b.outb(400 & 0xFF, 0x42)
        b.outb(400 >> 8, 0x42)
        levels = []
        for clk in (499, 500, 699, 700, 899, 900):
            b.advance_clks(clk, start)
            levels.append(b.inb(0x61) >> 5 & 1)
        # high half of 1000 ends at 500, then the low half of 400 (200 CLKs)
        self.assertEqual(levels, [1, 0, 0, 1, 1, 0])

    def test_odd_count_is_high_one_clk_longer(self):
        b = Bench()
        start = b.clock.now
        b.program(2, 0xB6, 7)
        b.outb(0x01, 0x61)
        levels = []
        for clk in range(14):
            b.advance_clks(clk, start)
            levels.append(b.inb(0x61) >> 5 & 1)
        self.assertEqual(levels, [1, 1, 1, 1, 0, 0, 0] * 2)

    def test_mode6_aliases_mode2_but_status_keeps_the_written_bits(self):
        b = Bench()
        b.program(0, 0x3C, 100)                 # M2-M0 = 110
        self.assertEqual(b.status(0) & 0x0E, 0x0C)
        b.advance_clks(99)
        b.pit.tick()
        self.assertEqual(b.irq.level, 0)        # mode 2's pulse at count 1


class ReadBackTest(unittest.TestCase):

    def test_status_reports_output_null_count_access_mode_and_bcd(self):
        b = Bench()
        b.outb(0x31, 0x43)                      # ch0, LSB/MSB, mode 0, BCD
        self.assertEqual(b.status(0), 0x40 | 0x30 | 0x00 | 0x01)
        b.outb(0x00, 0x40)
        self.assertEqual(b.status(0), 0x40 | 0x31)  # half written: null
        b.outb(0x01, 0x40)
        self.assertEqual(b.status(0), 0x31)
        b.advance_clks(100)
        self.assertEqual(b.status(0), 0x80 | 0x31)

    def test_status_then_count_from_one_read_back(self):
        b = Bench()
        b.program(1, 0x74, 3000)                # ch1, mode 2
        b.advance_clks(1000)
        b.outb(0xC4, 0x43)                      # latch count and status, ch1
        b.advance_clks(500)
        self.assertEqual(b.inb(0x41), 0x80 | 0x30 | 0x04)
        self.assertEqual(b.inb(0x41) | b.inb(0x41) << 8, 2000)
        self.assertEqual(b.inb(0x41) | b.inb(0x41) << 8, 1500)

    def test_read_back_latches_several_counters_at_once(self):
        b = Bench()
        b.program(0, 0x34, 4000)
        b.program(2, 0xB4, 6000)
        b.outb(0x01, 0x61)                      # gate 2 high: restart
        start = b.clock.now
        b.advance_clks(1000, start)
        b.outb(0xD0 | 0x02 | 0x08, 0x43)        # count only, ch0 and ch2
        b.advance_clks(3000, start)
        self.assertEqual(b.inb(0x42) | b.inb(0x42) << 8, 5000)
        self.assertEqual(b.inb(0x40) | b.inb(0x40) << 8, 3000)

    def test_mode1_null_count_stays_set_until_the_gate_triggers(self):
        b = Bench()
        b.program(2, 0xB2, 100)                 # ch2, mode 1
        self.assertEqual(b.status(2), 0x80 | 0x40 | 0x32)
        b.outb(0x01, 0x61)
        self.assertEqual(b.status(2), 0x32)     # triggered: OUT low, loaded


class AccessModeTest(unittest.TestCase):

    def test_read_and_write_flip_flops_are_independent(self):
        """The datasheet's interleaved example: read LSB, write LSB, read
        MSB, write MSB."""
        b = Bench()
        b.program(2, 0xB0, 0x1234)              # gate low: CE holds still
        low = b.inb(0x42)
        b.outb(0x78, 0x42)
        high = b.inb(0x42)
        b.outb(0x56, 0x42)
        self.assertEqual(low | high << 8, 0x1234)
        self.assertEqual(b.latched_count(2), 0x5678)

    def test_lsb_only_and_msb_only_access(self):
        b = Bench()
        b.outb(0x90, 0x43)                      # ch2, LSB only, mode 0
        b.outb(0x42, 0x42)
        self.assertEqual([b.inb(0x42), b.inb(0x42)], [0x42, 0x42])
        b.outb(0xA0, 0x43)                      # ch2, MSB only, mode 0
        b.outb(0x42, 0x42)
        self.assertEqual(b.inb(0x42), 0x42)
        b.outb(0x80, 0x43)                      # latch
        b.outb(0xB0, 0x43)                      # back to LSB then MSB
        self.assertEqual(b.inb(0x42) | b.inb(0x42) << 8, 0x4200)

    def test_control_word_register_reads_float_high(self):
        self.assertEqual(Bench().pit.read(3, 1), 0xFF)

    def test_word_access_is_two_byte_cycles(self):
        b = Bench()
        b.outb(0xB0, 0x43)
        b.pit.write(2, 2, 0x3412)               # 0x42 <- 0x12, 0x43 <- 0x34
        self.assertEqual(b.status(0) & 0x3F, 0x34 & 0x3F)
        self.assertEqual(b.pit.read(2, 2) >> 8, 0xFF)
        self.assertEqual(b.pit.read(3, 2), 0xFFFF)


class BcdTest(unittest.TestCase):

    def test_bcd_count_reads_decimal_digits(self):
        b = Bench()
        start = b.clock.now
        b.program(0, 0x35, 0x1000)              # mode 2, BCD 1000
        b.advance_clks(1, start)
        self.assertEqual(b.latched_count(0), 0x0999)
        b.advance_clks(1000 + 250, start)
        self.assertEqual(b.latched_count(0), 0x0750)
        self.assertEqual(b.pit.tick(), start + clk_ns(2000))

    def test_bcd_count_zero_means_10000_and_wraps_to_9999(self):
        b = Bench()
        start = b.clock.now
        b.program(0, 0x31, 0x0000)              # mode 0, BCD
        self.assertEqual(b.pit.tick(), start + clk_ns(10000))
        b.advance_clks(1, start)
        self.assertEqual(b.latched_count(0), 0x9999)
        b.advance_clks(10001, start)
        self.assertEqual(b.latched_count(0), 0x9999)


class Channel2Test(unittest.TestCase):

    def test_pit_calibrate_tsc_polls_out2_in_port61_bit5(self):
        """arch/x86/kernel/tsc.c pit_calibrate_tsc() with a 10 ms latch."""
        latch = PIT_FREQ_HZ // (1000 // 10)
        b = Bench()
        b.outb((b.inb(0x61) & ~0x02) | 0x01, 0x61)  # gate high, speaker off
        b.outb(0xB0, 0x43)                      # ch2, mode 0, binary
        b.outb(latch & 0xFF, 0x42)
        b.outb(latch >> 8, 0x42)
        start, polls = b.clock.now, 0
        while (b.inb(0x61) & 0x20) == 0:
            polls += 1
            b.clock.advance(7_000)              # one poll every 7 us
        self.assertGreater(polls, 1000)
        elapsed = b.clock.now - start
        self.assertGreaterEqual(elapsed, clk_ns(latch))
        self.assertLess(elapsed, clk_ns(latch) + 7_000)

    def test_quick_pit_calibrate_sees_the_msb_step_down(self):
        """quick_pit_calibrate(): mode 0 from 0xffff, pit_verify_msb()."""
        b = Bench()
        b.outb((b.inb(0x61) & ~0x02) | 0x01, 0x61)
        b.outb(0xB0, 0x43)
        b.outb(0xFF, 0x42)
        b.outb(0xFF, 0x42)
        start = b.clock.now
        for i in range(5):
            b.advance_clks(256 * i + 128, start)
            b.inb(0x42)                         # ignore the LSB
            self.assertEqual(b.inb(0x42), 0xFF - i)

    def test_gate_low_stops_counting_and_high_resumes(self):
        b = Bench()
        b.outb(0x01, 0x61)
        b.program(2, 0xB0, 1000)
        b.advance_clks(300)
        b.outb(0x00, 0x61)
        self.assertEqual(b.latched_count(2), 700)
        b.advance_clks(5000)
        self.assertEqual(b.latched_count(2), 700)
        self.assertEqual(b.inb(0x61) & 0x20, 0)
        b.outb(0x01, 0x61)
        b.advance_clks(700)
        self.assertEqual(b.inb(0x61) & 0x21, 0x21)

    def test_gate_low_in_mode3_forces_out2_high_and_rising_reloads(self):
        b = Bench()
        b.outb(0x01, 0x61)
        b.program(2, 0xB6, 100)
        b.advance_clks(60)                      # low half
        self.assertEqual(b.inb(0x61) & 0x20, 0)
        b.outb(0x00, 0x61)
        self.assertEqual(b.inb(0x61) & 0x20, 0x20)
        start = b.clock.now
        b.outb(0x01, 0x61)                      # trigger: back to the start
        b.advance_clks(49, start)
        self.assertEqual(b.inb(0x61) & 0x20, 0x20)
        b.advance_clks(50, start)
        self.assertEqual(b.inb(0x61) & 0x20, 0)

    def test_mode5_strobes_once_after_each_trigger(self):
        b = Bench()
        b.program(2, 0xBA, 10)                  # ch2, mode 5
        b.advance_clks(100)
        self.assertEqual(b.inb(0x61) & 0x20, 0x20)      # waits for a trigger
        b.outb(0x01, 0x61)
        start = b.clock.now
        b.advance_clks(10, start)
        self.assertEqual(b.inb(0x61) & 0x20, 0)
        b.advance_clks(11, start)
        self.assertEqual(b.inb(0x61) & 0x20, 0x20)

    def test_port61_keeps_bits_0_to_3_and_toggles_refresh_every_18_clks(self):
        b = Bench()
        b.outb(0xFE, 0x61)
        self.assertEqual(b.inb(0x61) & 0xCF, 0x0E)
        b.clock.now = 0
        first = b.inb(0x61) & 0x10
        b.advance_clks(17)
        self.assertEqual(b.inb(0x61) & 0x10, first)
        b.clock.now = clk_ns(18)
        self.assertNotEqual(b.inb(0x61) & 0x10, first)
        toggles, last = 0, first
        for step in range(1, 1001):                 # 1 ms in 1 us steps
            b.clock.now = step * 1000
            bit = b.inb(0x61) & 0x10
            toggles += bit != last
            last = bit
        self.assertIn(toggles, (66, 67))            # 1 ms / 15.09 us


class StateTest(unittest.TestCase):

    def test_round_trip_mid_count_keeps_latches_flip_flops_and_edges(self):
        b = Bench()
        start = b.clock.now
        b.program(0, 0x34, LATCH)
        b.outb(0x01, 0x61)
        b.program(2, 0xB0, 40000)
        b.advance_clks(LATCH + 300, start)
        b.pit.tick()
        b.outb(0x00, 0x43)                      # latch ch0 ...
        b.inb(0x40)                             # ... and read only the LSB
        b.outb(0x34, 0x40)                      # half of a new ch0 count
        saved = json.loads(json.dumps(b.pit.state()))
        self.assertEqual(saved['version'], 1)

        clock = SteppedClock(5 * NS_PER_S)      # another clock base
        irq = IrqLine()
        copy = Pit.from_state(saved, clock, irq)
        self.assertEqual(copy.state(), saved)
        self.assertEqual(irq.level, b.irq.level)
        edges, copy_edges = b.irq.raised, irq.raised
        self.assertEqual(copy.read(0, 1), b.inb(0x40))  # the latched MSB
        for offset in range(0, 1000000, 50000):
            b.clock.now = start + clk_ns(LATCH + 300) + offset
            clock.now = 5 * NS_PER_S + offset
            b.pit.tick()
            copy.tick()
            self.assertEqual(copy.read(0, 1), b.inb(0x40))
            self.assertEqual(copy.read(2, 1), b.inb(0x42))
            self.assertEqual(copy.port61.read(0, 1) & 0x2F,
                             b.inb(0x61) & 0x2F)
        self.assertGreater(b.irq.raised, edges)
        self.assertEqual(irq.raised - copy_edges, b.irq.raised - edges)
        self.assertEqual(copy.check(), [])

    def test_round_trip_keeps_the_refresh_toggles_phase(self):
        # saved 5 CLKs into a high half of port 0x61's refresh cycle; the copy
        # runs on a clock whose own phase there is different (7 CLKs on)
        b = Bench()
        b.clock.now = clk_ns(18 + 5)
        self.assertEqual(b.inb(0x61) & 0x10, 0x10)
        saved = json.loads(json.dumps(b.pit.state()))
        clock = SteppedClock(clk_ns(7))
        copy = Pit.from_state(saved, clock)
        self.assertEqual(copy.state(), saved)
        base_b, base_c = b.clock.now, clock.now
        changes_b, changes_c = [], []
        for step in range(0, 120000, 250):          # 120 us in 250 ns steps: 8 toggles
            b.clock.now, clock.now = base_b + step, base_c + step
            changes_b.append(b.inb(0x61) & 0x10)
            changes_c.append(copy.port61.read(0, 1) & 0x10)
        self.assertEqual(changes_c, changes_b)
        # the first toggle comes 13 CLKs after the save, in both
        first = next(i for i, bit in enumerate(changes_b) if bit != 0x10) * 250
        self.assertEqual(first, -(-(clk_ns(18 + 18) - clk_ns(18 + 5)) // 250) * 250)

    def test_a_state_without_the_refresh_phase_still_loads(self):
        saved = Bench().pit.state()
        del saved['refresh_phase']              # written before the phase was recorded
        self.assertEqual(Pit.from_state(saved, SteppedClock(0)).check(), [])

    def test_from_state_rejects_an_unknown_version(self):
        state = Bench().pit.state()
        state['version'] = 2
        with self.assertRaises(ValueError):
            Pit.from_state(state, SteppedClock())

    def test_reset_returns_to_power_on(self):
        b = Bench()
        fresh = b.pit.state()
        b.program(0, 0x34, LATCH)
        b.outb(0x03, 0x61)
        b.pit.reset()
        self.assertEqual(b.pit.state(), fresh)
        self.assertEqual(b.irq.level, 1)        # OUT high, as at power-on

    def test_first_periodic_control_word_makes_no_early_tick(self):
        """Regression: OUT used to power up low, so the control word for a
        periodic or strobe mode (OUT goes high) raised IRQ 0 at once, a tick
        one period early that KVM's PIT does not give."""
        for mode_cw in (0x34, 0x36, 0x38):      # modes 2, 3, 4
            b = Bench()
            r0 = b.irq.raised
            b.program(0, mode_cw, 1000)
            b.advance_clks(999)
            b.pit.tick()
            self.assertEqual(b.irq.raised, r0, hex(mode_cw))


class HostileGuestTest(unittest.TestCase):

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(8254)
        b = Bench()
        for step in range(20000):
            action = rng.random()
            if action < 0.3:
                b.pit.write(rng.randrange(-2, 6), rng.choice((1, 2, 4)),
                            rng.getrandbits(32))
            elif action < 0.5:
                b.outb(rng.choice((0x34, 0x36, 0x30, 0x38, 0xB0, 0xB6,
                                   0xC2, 0xDE, 0xEE, 0x00, 0x80,
                                   rng.getrandbits(8))), 0x43)
            elif action < 0.7:
                b.pit.read(rng.randrange(-2, 6), rng.choice((1, 2, 4, 8)))
            elif action < 0.8:
                b.pit.port61.write(rng.randrange(-1, 2), 1, rng.getrandbits(8))
                b.pit.port61.read(0, rng.choice((1, 2)))
            elif action < 0.9:
                b.clock.advance(rng.choice((1, 838, 5000, 10**6, 10**8)))
            else:
                next_ns = b.pit.tick()
                self.assertTrue(next_ns is None or next_ns > b.clock.now)
            problems = b.pit.check()
            self.assertEqual(problems, [], f'step {step}')
        self.assertEqual(Pit.from_state(b.pit.state(), b.clock).state(),
                         b.pit.state())


if __name__ == '__main__':
    unittest.main()
