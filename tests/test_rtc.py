"""Tests for devices.rtc: the MC146818A CMOS RTC at ports 0x70-0x71."""

import calendar
import json
import random
import unittest

from devices import IrqLine, SteppedClock
from devices.rtc import Rtc

NS_PER_S = 1_000_000_000
MS = 1_000_000
# Thursday 2024-02-29 13:45:30 UTC: a leap day, afternoon (PM in 12h mode).
BASE = calendar.timegm((2024, 2, 29, 13, 45, 30))
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
SET, PIE, AIE, UIE, DM, H24 = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02


class Bench:
    """An Rtc on a stepped clock, read and written like CMOS_READ/WRITE."""

    def __init__(self, base=BASE, start_ns=7 * NS_PER_S):
        self.clock = SteppedClock(start_ns)
        self.start = start_ns
        self.irq = IrqLine()
        self.rtc = Rtc(self.clock, self.irq, base_epoch_seconds=base)

    def read(self, index):
        self.rtc.write(0, 1, index)
        return self.rtc.read(1, 1)

    def write(self, index, value):
        self.rtc.write(0, 1, index)
        self.rtc.write(1, 1, value)

    def at(self, ns_after_start):
        self.clock.now = self.start + ns_after_start

    def time(self):
        """(sec, min, hour, dow, mday, month, year) registers, raw."""
        return tuple(self.read(i) for i in (0, 2, 4, 6, 7, 8, 9))


class ReadTimeTest(unittest.TestCase):

    def test_power_on_shows_the_base_time_in_bcd_24h(self):
        b = Bench()
        self.assertEqual(b.time(), (0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24))
        self.assertEqual(b.read(0x32), 0x20)            # century
        self.assertEqual(b.read(REG_A), 0x26)
        self.assertEqual(b.read(REG_B), H24)
        self.assertEqual(b.read(REG_D), 0x80)           # VRT

    def test_binary_mode_shows_plain_numbers(self):
        b = Bench()
        b.write(REG_B, H24 | DM)
        self.assertEqual(b.time(), (30, 45, 13, 5, 29, 2, 24))

    def test_12_hour_mode_puts_pm_in_bit_7(self):
        b = Bench()
        b.write(REG_B, 0)                               # BCD, 12-hour
        self.assertEqual(b.read(4), 0x80 | 0x01)        # 1 PM
        b.write(REG_B, DM)                              # binary, 12-hour
        self.assertEqual(b.read(4), 0x80 | 1)
        self.assertEqual(Bench(base=BASE - 13 * 3600).read(4), 0x00)
        midnight = Bench(base=BASE - 13 * 3600 - 45 * 60)
        midnight.write(REG_B, 0)
        self.assertEqual(midnight.read(4), 0x12)        # 12 AM
        noon = Bench(base=BASE - 3600 - 45 * 60)
        noon.write(REG_B, 0)
        self.assertEqual(noon.read(4), 0x80 | 0x12)     # 12 PM

    def test_time_advances_with_the_clock_through_the_leap_day(self):
        b = Bench()
        b.at((10 * 3600 + 14 * 60 + 29) * NS_PER_S)     # 23:59:59
        self.assertEqual(b.time(), (0x59, 0x59, 0x23, 0x05, 0x29, 0x02, 0x24))
        b.at((10 * 3600 + 14 * 60 + 30) * NS_PER_S)
        self.assertEqual(b.time(), (0x00, 0x00, 0x00, 0x06, 0x01, 0x03, 0x24))

    def test_fractional_base_puts_updates_on_wall_clock_seconds(self):
        b = Bench(base=BASE + 0.75)
        b.at(250 * MS - 1)
        self.assertEqual(b.read(0), 0x30)
        b.at(250 * MS)
        self.assertEqual(b.read(0), 0x31)

    def test_year_99_rolls_to_00_and_century_stays(self):
        b = Bench(base=calendar.timegm((2099, 12, 31, 23, 59, 59)))
        b.at(NS_PER_S)
        self.assertEqual(b.time()[4:], (0x01, 0x01, 0x00))
        self.assertEqual(b.read(0x32), 0x20)

    def test_a_1970s_base_reads_as_1970s(self):
        b = Bench(base=0)
        self.assertEqual(b.time(), (0, 0, 0, 0x05, 0x01, 0x01, 0x70))
        self.assertEqual(b.read(0x32), 0x19)


class SetTimeTest(unittest.TestCase):

    def set_time_like_linux(self, b, regs):
        """drivers/rtc/rtc-mc146818-lib.c mc146818_set_time()."""
        save_control = b.read(REG_B)
        b.write(REG_B, save_control | SET)
        save_freq_select = b.read(REG_A)
        b.write(REG_A, save_freq_select | 0x70)         # RTC_DIV_RESET2
        for index, value in zip((9, 8, 7, 4, 2, 0), regs):
            b.write(index, value)
        b.write(REG_B, save_control)
        b.write(REG_A, save_freq_select)

    def test_set_freezes_updates_and_clearing_it_starts_from_the_registers(self):
        b = Bench()
        b.write(REG_B, H24 | SET)
        b.at(5 * NS_PER_S)
        self.assertEqual(b.read(0), 0x30)               # frozen
        b.write(0, 0x10)
        b.write(2, 0x20)
        b.write(4, 0x08)
        self.assertEqual(b.read(4), 0x08)
        b.write(REG_B, H24)
        self.assertEqual(b.time()[:3], (0x10, 0x20, 0x08))
        b.at(6 * NS_PER_S)
        self.assertEqual(b.read(0), 0x11)

    def test_linux_set_time_with_divider_reset_updates_half_a_second_later(self):
        b = Bench()
        b.at(300 * MS)
        self.set_time_like_linux(b, (0x25, 0x12, 0x31, 0x23, 0x59, 0x59))
        self.assertEqual(b.time(), (0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x25))
        b.at(800 * MS - 1)
        self.assertEqual(b.read(0), 0x59)
        b.at(800 * MS)
        self.assertEqual(b.time(), (0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x26))

    def test_12_hour_registers_set_the_pm_hours(self):
        b = Bench()
        b.write(REG_B, SET)                             # 12h BCD, frozen
        b.write(4, 0x80 | 0x07)                         # 7 PM
        b.write(REG_B, 0)
        b.write(REG_B, H24)
        self.assertEqual(b.read(4), 0x19)
        b.write(REG_B, SET)
        b.write(4, 0x12)                                # 12 AM
        b.write(REG_B, 0)
        b.write(REG_B, H24)
        self.assertEqual(b.read(4), 0x00)

    def test_writing_a_field_while_running_keeps_the_others(self):
        b = Bench()
        b.write(8, 0x07)                                # month = July
        self.assertEqual(b.time(), (0x30, 0x45, 0x13, 0x05, 0x29, 0x07, 0x24))

    def test_day_of_week_is_free_running_from_what_was_written(self):
        b = Bench()
        b.write(6, 0x07)
        b.at((10 * 3600 + 15 * 60) * NS_PER_S)          # past midnight
        self.assertEqual(b.read(6), 0x01)

    def test_setting_set_clears_uie(self):
        b = Bench()
        b.write(REG_B, H24 | UIE)
        b.write(REG_B, H24 | UIE | SET)
        self.assertEqual(b.read(REG_B), H24 | SET)


class UipTest(unittest.TestCase):

    def test_uip_is_high_for_244_us_before_each_update(self):
        b = Bench()
        for offset_ns, uip in ((-300_000, 0), (-244_000, 0x80), (-1, 0x80),
                               (0, 0), (1000, 0)):
            b.at(NS_PER_S + offset_ns)
            self.assertEqual(b.read(REG_A) & 0x80, uip, offset_ns)
        b.at(NS_PER_S - 1)
        self.assertEqual(b.read(0), 0x30)               # update not yet done

    def test_set_and_divider_reset_keep_uip_low(self):
        b = Bench()
        b.at(NS_PER_S - 100_000)
        b.write(REG_B, H24 | SET)
        self.assertEqual(b.read(REG_A) & 0x80, 0)
        b.write(REG_B, H24)
        b.write(REG_A, 0x66)
        self.assertEqual(b.read(REG_A), 0x66)

    def test_uip_bit_cannot_be_written(self):
        b = Bench()
        b.at(500 * MS)
        b.write(REG_A, 0xA6)
        self.assertEqual(b.read(REG_A), 0x26)


class PeriodicTest(unittest.TestCase):

    def count_interrupts(self, b, seconds, step_ns):
        """Step the clock; serve IRQ 8 like rtc_cmos's handler (read C)."""
        served = 0
        for _ in range(int(seconds * NS_PER_S // step_ns)):
            b.clock.advance(step_ns)
            b.rtc.tick()
            if b.irq.level:
                self.assertTrue(b.read(REG_C) & 0xC0 == 0xC0)   # IRQF, PF
                self.assertEqual(b.irq.level, 0)
                served += 1
        return served

    def test_rate_6_interrupts_1024_times_a_second(self):
        b = Bench()
        b.write(REG_B, H24 | PIE)
        self.assertEqual(self.count_interrupts(b, 1, 100_000), 1024)

    def test_rate_15_interrupts_twice_a_second(self):
        b = Bench()
        b.write(REG_A, 0x2F)
        b.write(REG_B, H24 | PIE)
        self.assertEqual(self.count_interrupts(b, 3, MS), 6)

    def test_tick_returns_the_next_periodic_edge(self):
        b = Bench()
        self.assertIsNone(b.rtc.tick())                 # nothing enabled
        b.write(REG_B, H24 | PIE)
        self.assertEqual(b.rtc.tick(), b.start + 976_563)       # 1/1024 s
        b.at(976_563)
        self.assertEqual(b.rtc.tick(), b.start + 1_953_125)

    def test_rates_1_and_2_alias_rates_8_and_9(self):
        b = Bench()
        b.write(REG_B, H24 | PIE)
        for rate, hz in ((1, 256), (2, 128), (8, 256), (9, 128), (3, 8192)):
            b.write(REG_A, 0x20 | rate)
            self.assertEqual(b.rtc.tick(), b.start - (-NS_PER_S // hz), rate)

    def test_pf_sets_without_pie_but_raises_no_irq(self):
        b = Bench()
        b.at(10 * MS)
        b.rtc.tick()
        self.assertEqual(b.irq.raised, 0)
        self.assertEqual(b.read(REG_C), 0x40)           # PF only, no IRQF

    def test_rate_0_stops_the_periodic_flag(self):
        b = Bench()
        b.write(REG_A, 0x20)
        b.read(REG_C)
        b.at(300 * MS)
        self.assertEqual(b.read(REG_C), 0)


class UpdateAndAlarmTest(unittest.TestCase):

    def test_update_ended_interrupt_each_second(self):
        b = Bench()
        b.write(REG_A, 0x20)                            # no periodic flag
        b.write(REG_B, H24 | UIE)
        self.assertEqual(b.rtc.tick(), b.start + NS_PER_S)
        b.at(NS_PER_S - 1)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 0)
        b.at(NS_PER_S)
        self.assertEqual(b.rtc.tick(), b.start + 2 * NS_PER_S)
        self.assertEqual(b.irq.level, 1)
        self.assertEqual(b.read(REG_C), 0x80 | 0x10)
        self.assertEqual(b.irq.level, 0)
        self.assertEqual(b.read(REG_C), 0)

    def test_alarm_fires_when_the_time_matches(self):
        b = Bench()
        b.write(REG_A, 0x20)
        for index, value in ((1, 0x35), (3, 0x45), (5, 0x13)):
            b.write(index, value)                       # 13:45:35
        b.write(REG_B, H24 | AIE)
        self.assertEqual(b.rtc.tick(), b.start + 5 * NS_PER_S)
        b.at(5 * NS_PER_S - 1)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 0)
        b.at(5 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 1)
        self.assertEqual(b.read(REG_C), 0x80 | 0x20 | 0x10)
        self.assertEqual(b.rtc.tick(), b.start + (5 + 86400) * NS_PER_S)

    def test_dont_care_alarm_bytes_match_any_value(self):
        b = Bench()
        b.write(REG_A, 0x20)
        for index, value in ((1, 0x00), (3, 0xC0), (5, 0xFF)):
            b.write(index, value)                       # every minute at :00
        b.write(REG_B, H24 | AIE)
        self.assertEqual(b.rtc.tick(), b.start + 30 * NS_PER_S)
        b.at(30 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual(b.read(REG_C) & 0x20, 0x20)
        self.assertEqual(b.rtc.tick(), b.start + 90 * NS_PER_S)

    def test_a_missed_alarm_is_caught_up_later(self):
        b = Bench()
        b.write(1, 0x00)
        b.write(3, 0x00)
        b.write(5, 0x14)                                # 14:00:00
        b.write(REG_B, H24 | AIE)
        b.at(3 * 3600 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 1)
        self.assertTrue(b.read(REG_C) & 0x20)

    def test_the_alarm_calls_on_alarm_while_aie_is_on(self):
        alarms = []
        b = Bench()
        b.rtc.on_alarm = lambda: alarms.append(b.clock.now - b.start)
        for index, value in ((1, 0x35), (3, 0xC0), (5, 0xC0)):
            b.write(index, value)                       # each minute at :35
        b.write(REG_B, H24 | AIE)
        b.at(5 * NS_PER_S - 1)
        b.rtc.tick()
        self.assertEqual(alarms, [])
        b.at(5 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual(alarms, [5 * NS_PER_S])        # the IRQ8 assertion: RTC_STS
        b.read(REG_C)
        b.write(REG_B, H24)                             # AIE off: AF still sets, no call
        b.at(65 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual((alarms, b.read(REG_C) & 0x20), ([5 * NS_PER_S], 0x20))
        b.write(REG_B, H24 | AIE)
        b.at(3600 * NS_PER_S)                           # missed ones: caught up, one call
        b.rtc.tick()
        self.assertEqual(len(alarms), 2)
        state = json.loads(json.dumps(b.rtc.state()))
        calls = []
        again = Rtc.from_state(state, b.clock, on_alarm=lambda: calls.append(1))
        b.clock.advance(60 * NS_PER_S)
        again.tick()
        self.assertEqual(calls, [1])

    def test_an_impossible_alarm_never_fires(self):
        b = Bench()
        b.write(1, 0x61)                                # no such second
        b.write(REG_B, H24 | AIE)
        self.assertIsNone(b.rtc.tick())
        b.at(2 * 86400 * NS_PER_S)
        self.assertFalse(b.read(REG_C) & 0x20)

    def test_12_hour_alarm_compares_the_pm_flag(self):
        b = Bench()
        b.write(REG_B, 0)                               # 12h BCD
        for index, value in ((1, 0x31), (3, 0x45), (5, 0x81)):
            b.write(index, value)                       # 1:45:31 PM
        b.write(REG_B, AIE)
        self.assertEqual(b.rtc.tick(), b.start + NS_PER_S)

    def test_enabling_aie_after_the_flag_raises_the_line(self):
        b = Bench()
        b.write(1, 0xC0)
        b.write(3, 0xC0)
        b.write(5, 0xC0)
        b.at(NS_PER_S)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 0)
        b.write(REG_B, H24 | AIE)
        self.assertEqual(b.irq.level, 1)


class CmosTest(unittest.TestCase):

    def test_ram_round_trip_and_read_only_registers(self):
        b = Bench()
        values = {index: (index * 37 + 11) & 0xFF for index in range(0x0E, 0x80)}
        for index, value in values.items():
            b.write(index, value)
        self.assertEqual({i: b.read(i) for i in values}, values)
        b.write(REG_D, 0x00)
        self.assertEqual(b.read(REG_D), 0x80)
        b.write(REG_C, 0xFF)
        self.assertEqual(b.read(REG_C) & 0x80, 0)

    def test_index_bit_7_is_the_nmi_mask(self):
        b = Bench()
        b.rtc.write(0, 1, 0x80 | 0x32)
        self.assertTrue(b.rtc.nmi_masked)
        self.assertEqual(b.rtc.read(1, 1), 0x20)
        b.rtc.write(0, 1, 0x32)
        self.assertFalse(b.rtc.nmi_masked)
        self.assertEqual(b.rtc.read(0, 1), 0xFF)        # index is write-only

    def test_word_write_sets_index_then_data(self):
        b = Bench()
        b.rtc.write(0, 2, 0x5A << 8 | 0x40)
        self.assertEqual(b.read(0x40), 0x5A)

    def test_reset_clears_enables_and_flags_but_keeps_time_and_ram(self):
        b = Bench()
        b.write(0x40, 0x77)
        b.write(REG_B, H24 | PIE | UIE | 0x08)
        b.at(2 * NS_PER_S)
        b.rtc.tick()
        self.assertEqual(b.irq.level, 1)
        b.rtc.write(0, 1, 0x80)
        b.rtc.reset()
        self.assertEqual(b.irq.level, 0)
        self.assertFalse(b.rtc.nmi_masked)
        self.assertEqual(b.read(REG_B), H24)
        self.assertEqual(b.read(REG_C), 0)
        self.assertEqual((b.read(0x40), b.read(0)), (0x77, 0x32))


class StateTest(unittest.TestCase):

    def test_round_trip_mid_operation(self):
        b = Bench()
        b.write(0x50, 0xAB)
        b.write(1, 0xC0)
        b.write(3, 0x46)
        b.write(5, 0xC0)
        b.write(REG_B, H24 | DM | PIE | AIE)
        b.at(2_500 * MS)
        b.rtc.tick()                                    # PF pending, line up
        b.rtc.write(0, 1, 0x80 | 0x09)                  # index: year, NMI off
        saved = json.loads(json.dumps(b.rtc.state()))
        self.assertEqual(saved['version'], 1)

        clock = SteppedClock(123 * NS_PER_S)            # another clock base
        irq = IrqLine()
        copy = Rtc.from_state(saved, clock, irq)
        self.assertEqual(copy.state(), saved)
        self.assertEqual(irq.level, 1)
        self.assertTrue(copy.nmi_masked)
        self.assertEqual(copy.read(1, 1), 24)           # index kept, binary
        for step in range(1, 200):
            offset = step * 7_777_777
            b.at(2_500 * MS + offset)
            clock.now = 123 * NS_PER_S + offset
            self.assertEqual(copy.tick() - clock.now, b.rtc.tick() - b.clock.now)
            for index in (0, 2, REG_A, REG_C, 0x50):
                copy.write(0, 1, index)
                self.assertEqual(copy.read(1, 1), b.read(index))
        self.assertEqual(copy.check(), [])

    def test_set_mode_registers_survive_the_round_trip(self):
        b = Bench()
        b.write(REG_B, H24 | SET)
        b.write(0, 0x59)
        copy = Rtc.from_state(b.rtc.state(), SteppedClock())
        copy.write(0, 1, 0)
        self.assertEqual(copy.read(1, 1), 0x59)

    def test_from_state_rejects_an_unknown_version(self):
        state = Bench().rtc.state()
        state['version'] = 0
        with self.assertRaises(ValueError):
            Rtc.from_state(state, SteppedClock())


class HostileGuestTest(unittest.TestCase):

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(146818)
        b = Bench()
        for step in range(20000):
            action = rng.random()
            if action < 0.25:
                b.rtc.write(0, 1, rng.choice((REG_A, REG_B, REG_C, 0, 1, 4, 5,
                                              6, 7, 8, 9, rng.getrandbits(8))))
            elif action < 0.55:
                b.rtc.write(1, 1, rng.getrandbits(8))
            elif action < 0.65:
                b.rtc.write(rng.randrange(-1, 3), rng.choice((1, 2, 4)),
                            rng.getrandbits(32))
            elif action < 0.8:
                b.rtc.read(rng.randrange(-1, 3), rng.choice((1, 2, 4, 8)))
            elif action < 0.9:
                b.clock.advance(rng.choice((1, 100_000, 244_000, 10**9,
                                            3600 * 10**9)))
            else:
                next_ns = b.rtc.tick()
                self.assertTrue(next_ns is None or next_ns > b.clock.now)
            self.assertEqual(b.rtc.check(), [], f'step {step}')
        self.assertEqual(Rtc.from_state(b.rtc.state(), b.clock).state(),
                         b.rtc.state())


if __name__ == '__main__':
    unittest.main()
