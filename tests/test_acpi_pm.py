"""The ACPI power-management block (devices/acpi_pm.py): its registers on a
stepped clock, the device contract, the FADT and DSDT that describe it, and
a guest under real KVM that reads the PM timer and powers the machine off.
"""

import io
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import unittest
from unittest import mock

import kvmlite
from devices import IrqLine, SteppedClock
from devices.acpi_pm import (
    PM_TIMER_HZ, PWRBTN_EN, PWRBTN_STS, RTC_EN, RTC_STS, SCI_EN, SLEEPING, SLP_EN, SLP_TYP_S3,
    SLP_TYP_S5, SLP_TYP_SHIFT, TMR_EN, TMR_STS, WAK_STS, WOKEN, WORKING, AcpiPm,
)
from tests import test_device_contract as contract
from tests.guest import requires_kvm
from devices.console import MemoryBackend
from tests.pcguest import MEM_SIZE, MODES, PASSED, STATUS_PASSED, load_guest, run_guest, run_in_every_mode
from tests.test_boot import FakeMem
from tools import platform_tables
from tools.layout import PC

NS = 1_000_000_000
MSB_NS = -(-(1 << 23) * NS // PM_TIMER_HZ)     # bit 23 first toggles this many ns in
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8


def ns_for(ticks):
    """The first ns at which the timer shows ``ticks`` counts since its start."""
    return -(-ticks * NS // PM_TIMER_HZ)


class Pm:
    """An AcpiPm on a stepped clock, with its SCI line and power-off calls."""

    def __init__(self, now=0):
        self.clock = SteppedClock(now)
        self.sci = IrqLine()
        self.poweroffs = self.suspends = self.wakes = 0
        self.dev = AcpiPm(self.clock, self.sci, self.poweroff, self.suspend, self.woke)

    def poweroff(self):
        self.poweroffs += 1

    def suspend(self):
        self.suspends += 1

    def woke(self):
        self.wakes += 1

    def s3(self):
        self.dev.write(PM1_CNT, 2, SCI_EN | SLP_TYP_S3 << SLP_TYP_SHIFT | SLP_EN)

    def timer(self):
        return self.dev.read(PM_TMR, 4)

    def sts(self):
        return self.dev.read(PM1_STS, 2)


class TimerTest(unittest.TestCase):
    def test_counts_at_3_579545_mhz_from_the_clock(self):
        pm = Pm(now=123_456_789)
        self.assertEqual(pm.timer(), 0)
        for elapsed in (1, 279, 280, 1_000, 1_000_000, NS, 3 * NS // 2):
            pm.clock.now = 123_456_789 + elapsed
            with self.subTest(ns=elapsed):
                self.assertEqual(pm.timer(), elapsed * PM_TIMER_HZ // NS)
        pm.clock.now = 123_456_789 + NS                 # a clock that steps back: the
        self.assertEqual(pm.timer(), 5_369_317)         # timer holds, never runs backwards
        pm.clock.now = 123_456_789 + 2 * NS
        self.assertEqual(pm.timer(), 2 * 3_579_545)

    def test_byte_reads_and_the_unused_top_byte(self):
        pm = Pm()
        pm.clock.advance(ns_for(0x123456))
        self.assertEqual(pm.timer(), 0x123456)
        self.assertEqual([pm.dev.read(PM_TMR + i, 1) for i in range(4)], [0x56, 0x34, 0x12, 0])
        self.assertEqual(pm.dev.read(PM_TMR, 2), 0x3456)
        pm.dev.write(PM_TMR, 4, 0)                  # read-only
        self.assertEqual(pm.timer(), 0x123456)

    def test_wraps_at_24_bits_and_tmr_sts_sets_when_bit_23_toggles(self):
        pm = Pm()
        pm.clock.now = ns_for(1 << 23) - 1
        self.assertEqual((pm.timer(), pm.sts()), ((1 << 23) - 1, 0))
        pm.clock.now = ns_for(1 << 23)                  # bit 23: 0 -> 1
        self.assertEqual((pm.timer(), pm.sts()), (1 << 23, TMR_STS))
        pm.dev.write(PM1_STS, 2, TMR_STS)               # write 1 to clear
        self.assertEqual(pm.sts(), 0)
        pm.clock.now = ns_for(1 << 24) - 1
        self.assertEqual((pm.timer(), pm.sts()), ((1 << 24) - 1, 0))
        pm.clock.now = ns_for(1 << 24)                  # bit 23: 1 -> 0, the count wraps
        self.assertEqual((pm.timer(), pm.sts()), (0, TMR_STS))
        pm.dev.write(PM1_STS, 2, TMR_STS)
        pm.clock.now = ns_for((1 << 24) + 5)
        self.assertEqual((pm.timer(), pm.sts()), (5, 0))

    def test_a_toggle_missed_between_looks_still_sets_tmr_sts(self):
        pm = Pm()
        pm.clock.advance(10 * NS)                       # four toggles, nobody looked
        self.assertEqual(pm.sts(), TMR_STS)

    def test_tick_is_the_next_toggle_while_tmr_en_is_on(self):
        pm = Pm()
        self.assertIsNone(pm.dev.tick())
        pm.dev.write(PM1_EN, 2, TMR_EN)
        self.assertEqual(pm.dev.tick(), MSB_NS)
        pm.clock.now = MSB_NS - 1
        self.assertEqual((pm.dev.tick(), pm.sci.level), (MSB_NS, 0))
        pm.clock.now = MSB_NS
        self.assertEqual(pm.dev.tick(), ns_for(1 << 24))
        self.assertEqual(pm.sci.level, 1)               # the SCI is up once the tick came
        pm.dev.write(PM1_EN, 2, 0)
        self.assertIsNone(pm.dev.tick())


class SciTest(unittest.TestCase):
    def test_the_sci_is_an_enabled_status_while_sci_en(self):
        pm = Pm()
        self.assertEqual(pm.dev.read(PM1_CNT, 2), SCI_EN)      # ACPI mode from power-on
        pm.clock.now = MSB_NS
        pm.dev.tick()
        self.assertEqual((pm.sts(), pm.sci.level), (TMR_STS, 0))   # status without enable
        pm.dev.write(PM1_EN, 2, TMR_EN)
        self.assertEqual(pm.sci.level, 1)
        pm.dev.write(PM1_CNT, 2, 0)                             # SCI_EN off: masked
        self.assertEqual(pm.sci.level, 0)
        pm.dev.write(PM1_CNT, 2, SCI_EN)
        self.assertEqual(pm.sci.level, 1)
        pm.dev.write(PM1_STS, 2, PWRBTN_STS)                    # another bit: no effect
        self.assertEqual((pm.sts(), pm.sci.level), (TMR_STS, 1))
        pm.dev.write(PM1_STS, 2, 0)                             # zeros clear nothing
        self.assertEqual(pm.sci.level, 1)
        pm.dev.write(PM1_STS, 1, TMR_STS)                       # write 1 to clear
        self.assertEqual((pm.sts(), pm.sci.level), (0, 0))
        self.assertEqual(pm.sci.raised, 2)
        self.assertEqual(pm.dev.check(), [])

    def test_the_power_button(self):
        pm = Pm()
        pm.dev.press_power_button()
        self.assertEqual((pm.sts(), pm.sci.level), (PWRBTN_STS, 0))
        pm.dev.write(PM1_EN + 1, 1, PWRBTN_EN >> 8)             # the high byte alone
        self.assertEqual((pm.dev.read(PM1_EN, 2), pm.sci.level), (PWRBTN_EN, 1))
        pm.dev.write(PM1_STS, 2, PWRBTN_STS | TMR_STS)
        self.assertEqual((pm.sts(), pm.sci.level), (0, 0))

    def test_enable_bits_that_stick_and_reserved_ones_that_do_not(self):
        pm = Pm()
        pm.dev.write(PM1_EN, 2, 0xFFFF)
        self.assertEqual(pm.dev.read(PM1_EN, 2), 0x0521)       # TMR, GBL, PWRBTN, RTC
        pm.dev.write(PM1_CNT, 2, 0x1C07)                        # no SLP_EN: no sleep
        self.assertEqual(pm.dev.read(PM1_CNT, 2), 0x1C03)      # GBL_RLS is write-only
        self.assertEqual(pm.poweroffs, 0)


class SleepTest(unittest.TestCase):
    def test_slp_en_with_the_s5_type_powers_off(self):
        pm = Pm()
        pm.dev.write(PM1_CNT, 2, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN)
        self.assertEqual(pm.poweroffs, 1)
        self.assertFalse(pm.dev.read(PM1_CNT, 2) & SLP_EN)      # SLP_EN reads 0
        pm.dev.write(PM1_CNT + 1, 1, (SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN) >> 8)
        self.assertEqual(pm.poweroffs, 2)                       # a byte write does it too

    def test_other_sleep_types_and_slp_typ_alone_do_nothing(self):
        pm = Pm()
        pm.dev.write(PM1_CNT, 2, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT)
        pm.dev.write(PM1_CNT, 2, SCI_EN | SLP_TYP_S3 << SLP_TYP_SHIFT)
        for slp_typ in range(8):
            if slp_typ not in (SLP_TYP_S5, SLP_TYP_S3):
                pm.dev.write(PM1_CNT, 2, SCI_EN | slp_typ << SLP_TYP_SHIFT | SLP_EN)
        self.assertEqual((pm.poweroffs, pm.suspends, pm.dev.sleep), (0, 0, WORKING))
        self.assertEqual(pm.dev.check(), [])


class SuspendTest(unittest.TestCase):
    def test_s3_then_the_rtc_alarm_with_rtc_en_wakes_with_wak_sts(self):
        pm = Pm()
        pm.dev.write(PM1_EN, 2, RTC_EN)
        pm.s3()
        self.assertEqual((pm.suspends, pm.wakes, pm.dev.sleep), (1, 0, SLEEPING))
        self.assertFalse(pm.dev.read(PM1_CNT, 2) & SLP_EN)
        pm.s3()                                         # no OS runs to ask again: ignored
        self.assertEqual(pm.suspends, 1)
        pm.dev.rtc_alarm()
        self.assertEqual((pm.wakes, pm.dev.sleep), (1, WOKEN))
        self.assertEqual(pm.sts(), WAK_STS | RTC_STS)
        self.assertEqual(pm.sci.level, 0)               # nobody to take an SCI until resumed
        pm.dev.rtc_alarm()                              # a second event: already awake
        self.assertEqual(pm.wakes, 1)
        pm.dev.resumed()
        self.assertEqual((pm.dev.sleep, pm.sci.level), (WORKING, 1))     # RTC_STS & RTC_EN
        pm.dev.write(PM1_STS, 2, WAK_STS | RTC_STS)     # the OS clears them, write 1 to clear
        self.assertEqual((pm.sts(), pm.sci.level), (0, 0))
        self.assertEqual(pm.dev.check(), [])

    def test_the_rtc_alarm_without_rtc_en_sets_rtc_sts_and_does_not_wake(self):
        pm = Pm()
        pm.s3()
        pm.dev.rtc_alarm()
        self.assertEqual((pm.sts(), pm.wakes, pm.dev.sleep), (RTC_STS, 0, SLEEPING))
        pm.dev.write(PM1_EN, 2, RTC_EN)                 # (no OS could do this asleep)
        self.assertEqual(pm.sci.level, 0)
        awake = Pm()
        awake.dev.write(PM1_EN, 2, RTC_EN)
        awake.dev.rtc_alarm()                           # awake: the fixed RTC event's SCI
        self.assertEqual((awake.sts(), awake.sci.level, awake.wakes), (RTC_STS, 1, 0))

    def test_the_power_button_and_other_wake_events(self):
        pm = Pm()
        pm.s3()
        pm.dev.press_power_button()                     # a wake whatever PWRBTN_EN says
        self.assertEqual((pm.sts(), pm.wakes, pm.dev.sleep), (WAK_STS | PWRBTN_STS, 1, WOKEN))
        pm.dev.resumed()
        pm.dev.write(PM1_STS, 2, 0xFFFF)
        pm.dev.wake()                                   # awake: nothing
        self.assertEqual((pm.sts(), pm.wakes), (0, 1))
        pm.s3()
        pm.dev.wake()                                   # the board's console input
        self.assertEqual((pm.sts(), pm.wakes, pm.dev.sleep), (WAK_STS, 2, WOKEN))
        pm.dev.resumed()
        pm.dev.resumed()                                # twice is once
        self.assertEqual(pm.dev.sleep, WORKING)

    def test_states_in_s3_and_states_saved_before_s3_existed(self):
        pm = Pm()
        pm.dev.write(PM1_EN, 2, RTC_EN)
        pm.s3()
        state = json.loads(json.dumps(pm.dev.state()))
        again = Pm(now=pm.clock.now)
        again.dev = AcpiPm.from_state(state, again.clock, again.sci, again.poweroff,
                                      again.suspend, again.woke)
        self.assertEqual((again.dev.sleep, again.suspends), (SLEEPING, 0))
        again.dev.rtc_alarm()
        self.assertEqual((again.wakes, again.sts()), (1, WAK_STS | RTC_STS))
        old = dict(state)
        del old['sleep']
        self.assertEqual(AcpiPm.from_state(old, SteppedClock()).sleep, WORKING)
        old['sleep'] = 7
        self.assertEqual(AcpiPm.from_state(old, SteppedClock()).sleep, WORKING)

    def test_no_callback_is_fine(self):
        dev = AcpiPm(SteppedClock())
        dev.write(PM1_CNT, 2, SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN)
        self.assertEqual(dev.check(), [])


class StateTest(unittest.TestCase):
    def busy(self):
        """A block mid-activity: timer enabled and past a toggle, SCI up,
        the power button pressed, SLP_TYP written."""
        pm = Pm(now=5 * NS)
        pm.dev.write(PM1_EN, 2, TMR_EN | PWRBTN_EN)
        pm.dev.write(PM1_CNT, 2, SCI_EN | 5 << SLP_TYP_SHIFT)
        pm.clock.advance(MSB_NS + 12_345)
        pm.dev.tick()
        pm.dev.press_power_button()
        pm.dev.write(PM1_STS, 2, TMR_STS)
        pm.clock.advance(777)
        return pm

    def test_reset_is_a_fresh_block(self):
        pm = self.busy()
        self.assertEqual(pm.sci.level, 1)
        pm.dev.reset()
        fresh = Pm(now=pm.clock.now)
        self.assertEqual(pm.dev.state(), fresh.dev.state())
        self.assertEqual((pm.sci.level, pm.timer()), (0, 0))
        self.assertEqual(pm.dev.check(), [])

    def test_a_state_round_trip_gives_the_same_future(self):
        a = self.busy()
        state = json.loads(json.dumps(a.dev.state()))
        self.assertEqual(state['version'], 1)
        b = Pm(now=a.clock.now)
        b.dev = AcpiPm.from_state(state, b.clock, b.sci, b.poweroff)
        self.assertEqual((b.dev.state(), b.sci.level, b.timer()),
                         (a.dev.state(), a.sci.level, a.timer()))
        for step in (1, 279, MSB_NS // 3, MSB_NS, 10 * NS):
            for pm in (a, b):
                pm.clock.advance(step)
            self.assertEqual((b.dev.tick(), b.timer(), b.sts(), b.sci.level),
                             (a.dev.tick(), a.timer(), a.sts(), a.sci.level), step)
        for pm in (a, b):
            pm.dev.write(PM1_CNT, 2, SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN)
        self.assertEqual((a.poweroffs, b.poweroffs), (1, 1))

    def test_another_version_is_refused(self):
        with self.assertRaisesRegex(ValueError, 'version'):
            AcpiPm.from_state({'version': 2}, SteppedClock())

    def test_bad_accesses_never_raise(self):
        pm = Pm()
        for offset in (-1, 3, 5, 6, 7, 11, 12, 100, 1 << 40):
            for size in (0, 1, 2, 3, 4, 8, 16):
                for value in (0, -1, 0xFF, 1 << 70):
                    pm.dev.write(offset, size, value)
                    self.assertIsInstance(pm.dev.read(offset, size), int)
        self.assertEqual(pm.dev.read(AcpiPm.SIZE, 1), 0xFF)    # past the block: floats high
        self.assertEqual(pm.dev.read(6, 2), 0)                  # reserved
        self.assertEqual(pm.dev.check(), [])


# -- the device contract (tests/test_device_contract.py) run on this device --

def _pm_board(dev, r):
    """The rest of the PC: the power button is pressed now and then."""
    if r % 8 == 0:
        dev.press_power_button()


_SEQUENCES = [
    [contract.wr(None, PM1_EN, TMR_EN | PWRBTN_EN, 2)], [contract.wr(None, PM1_EN, 0, 2)],
    [contract.rd(None, PM1_STS, 2), contract.wr(None, PM1_STS, 0xFFFF, 2)],
    [contract.wr(None, PM1_CNT, SCI_EN, 2)], [contract.wr(None, PM1_CNT, 0, 2)],
    [contract.wr(None, PM1_CNT, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT, 2),
     contract.wr(None, PM1_CNT, SCI_EN | SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN, 2)],
    [contract.rd(None, PM_TMR, 4), contract.rd(None, PM_TMR, 4)],
]


class AcpiPmContractTest(contract.DeviceContractTests):
    """Every contract test of tests/test_device_contract.py (which runs each
    device of the platform with random traffic) again on this device alone,
    with the register sequences an OS uses and power-button presses as the
    board's side."""

    def setUp(self):
        label = PC.device('acpi_pm').pio[0][2]
        rows = [row for row in contract.DEVICES if row[0] == label]
        self.assertEqual(len(rows), 1)
        for patch in (mock.patch.object(contract, 'DEVICES', rows),
                      mock.patch.dict(contract.GUEST_SEQUENCES, {AcpiPm: _SEQUENCES}),
                      mock.patch.dict(contract.BOARD, {AcpiPm: _pm_board})):
            patch.start()
            self.addCleanup(patch.stop)


# -- the tables that describe it ------------------------------------------------

def _tables(platform=PC):
    mem = FakeMem(16 << 20)
    rsdp = platform_tables.write_platform_tables(mem, 1, platform=platform).rsdp
    xsdt = struct.unpack_from('<Q', mem.read(rsdp + 24, 8))[0]
    out = {}
    for (addr,) in struct.iter_unpack('<Q', mem.read(xsdt + 36, 16)):
        size = struct.unpack_from('<I', mem.read(addr + 4, 4))[0]
        out[mem.read(addr, 4)] = mem.read(addr, size)
    fadt = out[b'FACP']
    dsdt = struct.unpack_from('<Q', fadt, 140)[0]
    size = struct.unpack_from('<I', mem.read(dsdt + 4, 4))[0]
    out[b'DSDT'] = mem.read(dsdt, size)
    return out


def _sci_overrides(madt):
    pos, found = 44, []
    while pos < len(madt):
        if madt[pos] == 2 and struct.unpack_from('<H', madt, pos + 8)[0] == 0xD:
            found.append(struct.unpack_from('<BI', madt, pos + 3))     # level, active high
        pos += madt[pos + 1]
    return found


def _gas(fadt, offset):
    return struct.unpack_from('<BBBBQ', fadt, offset)


class TablesTest(unittest.TestCase):
    def check_pm_blocks(self, fadt, base):
        self.assertEqual(struct.unpack_from('<I', fadt, 56)[0], base)           # PM1a_EVT_BLK
        self.assertEqual(struct.unpack_from('<I', fadt, 64)[0], base + 4)       # PM1a_CNT_BLK
        self.assertEqual(struct.unpack_from('<I', fadt, 76)[0], base + 8)       # PM_TMR_BLK
        self.assertEqual(struct.unpack_from('<4B', fadt, 88), (4, 2, 0, 4))     # lengths
        self.assertEqual(_gas(fadt, 148), (1, 32, 0, 2, base))                  # X_PM1a_EVT_BLK
        self.assertEqual(_gas(fadt, 172), (1, 16, 0, 2, base + 4))              # X_PM1a_CNT_BLK
        self.assertEqual(_gas(fadt, 208), (1, 32, 0, 3, base + 8))              # X_PM_TMR_BLK

    def test_the_fadt_points_at_the_block_and_the_reset_register(self):
        t = _tables()
        fadt = t[b'FACP']
        self.assertEqual(sum(fadt) & 0xFF, 0)
        self.check_pm_blocks(fadt, PC.device('acpi_pm').pio[0][1])
        self.assertEqual(struct.unpack_from('<H', fadt, 46)[0], PC.device('acpi_pm').irq)
        self.assertEqual(_gas(fadt, 116), (1, 8, 0, 1, PC.device('pci').pio[0][1] + 1))  # 0xCF9
        self.assertEqual(fadt[128], 0x06)                                       # RESET_VALUE
        flags = struct.unpack_from('<I', fadt, 112)[0]
        self.assertTrue(flags & 1 << 10)                # RESET_REG_SUP
        self.assertFalse(flags & 1 << 8)                # TMR_VAL_EXT: a 24-bit timer
        self.assertFalse(flags & 1 << 4)                # PWR_BUTTON: a fixed-feature button
        self.assertEqual(_sci_overrides(t[b'APIC']), [(9, 9)])

    def test_the_dsdt_holds_the_s3_and_s5_packages_with_the_devices_slp_typ(self):
        aml = _tables()[b'DSDT'][36:]
        # NameOp '\_S3_' PackageOp PkgLength 6, 4 elements: One One Zero Zero; then \_S5_: Zeros
        self.assertEqual(aml, b'\x08\\_S3_\x12\x06\x04\x01\x01\x00\x00'
                              b'\x08\\_S5_\x12\x06\x04\x00\x00\x00\x00')
        with mock.patch.object(AcpiPm, 'SLP_TYP_S5', 5):
            self.assertEqual(_tables()[b'DSDT'][36 + 13:], b'\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00')
            pm = Pm()
            pm.dev.write(PM1_CNT, 2, SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN)
            pm.dev.write(PM1_CNT, 2, 5 << SLP_TYP_SHIFT | SLP_EN)
            self.assertEqual(pm.poweroffs, 1)               # one constant for both

    def test_the_tables_follow_the_block_elsewhere(self):
        moved = PC.with_device('acpi_pm', pio=(('', 0xB000, 'ACPI PM'),), irq=10)
        self.assertEqual(moved.sci_irq, 10)
        t = _tables(moved)
        self.check_pm_blocks(t[b'FACP'], 0xB000)
        self.assertEqual(struct.unpack_from('<H', t[b'FACP'], 46)[0], 10)
        self.assertEqual(_sci_overrides(t[b'APIC']), [(10, 10)])

    def test_a_platform_without_the_block_has_no_pm_fields_and_no_sci(self):
        bare = PC.without_device('acpi_pm')
        self.assertIsNone(bare.sci_irq)
        t = _tables(bare)
        fadt = t[b'FACP']
        self.assertEqual(struct.unpack_from('<H', fadt, 46)[0], 0)             # SCI_INT
        self.assertEqual(struct.unpack_from('<7I', fadt, 56), (0,) * 7)
        self.assertEqual(struct.unpack_from('<4B', fadt, 88), (0,) * 4)
        self.assertEqual(fadt[148:220], bytes(72))                              # X_ blocks
        self.assertTrue(struct.unpack_from('<I', fadt, 112)[0] & 1 << 4)        # no fixed button
        self.assertEqual(_sci_overrides(t[b'APIC']), [])
        self.assertEqual(len(t[b'DSDT']), 36)                                   # empty
        self.assertEqual(fadt[128], 0x06)                                       # 0xCF9 still resets

    @unittest.skipUnless(shutil.which('iasl'), 'no iasl (acpica-tools) on this host')
    def test_iasl_finds_s5_and_the_pm_blocks(self):
        decoded = {}
        with tempfile.TemporaryDirectory() as tmp:
            for signature, data in _tables().items():
                name = signature.decode()
                path = os.path.join(tmp, name + '.dat')
                with open(path, 'wb') as f:
                    f.write(data)
                r = subprocess.run(['iasl', '-d', path], capture_output=True, text=True, cwd=tmp)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertNotIn('Incorrect checksum', r.stdout + r.stderr)
                with open(path[:-4] + '.dsl') as f:
                    decoded[name] = ' '.join(f.read().split())
        self.assertIn('_S5_', decoded['DSDT'])
        self.assertIn('Name (\\_S5, Package (0x04)', decoded['DSDT'])
        self.assertIn('{ Zero, Zero, Zero, Zero }', decoded['DSDT'])
        self.assertIn('Name (\\_S3, Package (0x04)', decoded['DSDT'])
        self.assertIn('{ One, One, Zero, Zero }', decoded['DSDT'])
        for field in ('PM1A Event Block Address : 00000600',
                      'PM1A Control Block Address : 00000604',
                      'PM Timer Block Address : 00000608', 'PM1 Event Block Length : 04',
                      'Reset Register Supported (V2) : 1', 'Value to cause reset : 06',
                      'Address : 0000000000000CF9', '32-bit PM Timer (V1) : 0'):
            self.assertIn(field, decoded['FACP'])


# -- on the board, under real KVM ------------------------------------------------

@requires_kvm
class BoardTest(unittest.TestCase):
    def test_the_block_is_on_the_bus_in_every_mode_and_its_sci_reaches_irq_9(self):
        base = PC.device('acpi_pm').pio[0][1]
        for mode in MODES:
            with self.subTest(mode=mode), kvmlite.Machine(mem_size=8 << 20, irqchip=mode) as m:
                self.assertIsInstance(m.acpi_pm, AcpiPm)
                self.assertEqual(m.vm.pio.find(base)[1:], (base, 'ACPI PM (PIIX4 layout)'))
                m.acpi_pm.write(PM1_EN, 2, PWRBTN_EN)
                m.acpi_pm.press_power_button()
                self.assertTrue(m.acpi_pm.sci())
                if mode != 'kernel':        # KVM's own PIC and IOAPIC take the line there
                    self.assertTrue(m.pic.slave.lines & 1 << (PC.sci_irq - 8))
                if mode == 'split':
                    self.assertEqual(m.ioapic.pins[PC.ioapic_pin(PC.sci_irq)], 1)


def _symbols():
    base = PC.device('acpi_pm').pio[0][1]
    return {'PASSED': PASSED, 'PM_TMR': base + AcpiPm.PM_TMR_BLK,
            'PM1A_CNT': base + AcpiPm.PM1_CNT_BLK,
            'SLEEP_S5': AcpiPm.SLP_TYP_S5 << SLP_TYP_SHIFT | SLP_EN, 'SPIN': 2000}


POWEROFF = r'''
; the PM timer read twice around a short loop (TSC stamps outside the
; reads), then S5: SLP_TYP for soft off and SLP_EN to PM1a_CNT
main:
    call rdtsc64
    mov [tsc0], rax
    mov dx, PM_TMR
    in eax, dx
    mov [pm0], eax
    mov ecx, SPIN
.spin:
    loop .spin
    in eax, dx
    mov [pm1], eax
    call rdtsc64
    mov [tsc1], rax
    mov eax, [pm1]
    sub eax, [pm0]
    and eax, 0xffffff           ; a 24-bit timer: the difference wraps with it
    mov [delta], rax
    call print
    db 'PM timer advanced ', 0
    mov al, 'y'
    cmp qword [delta], 0
    jne .said
    mov al, 'n'
.said:
    call putc
    mov al, 10
    call putc
    mov dx, PM1A_CNT
    mov ax, SLEEP_S5
    out dx, ax
    call print                  ; not reached: the run ends at the OUT
    db 'still running', 10, 0
    mov al, PASSED
    ret

align 8
tsc0: dq 0
tsc1: dq 0
delta: dq 0
pm0: dd 0
pm1: dd 0
'''


@requires_kvm
class GuestTest(unittest.TestCase):
    def test_a_guest_reads_the_pm_timer_and_powers_off_through_s5(self):
        runs = run_in_every_mode(self, POWEROFF, 'PM timer advanced y\n', status=kvmlite.EXIT_OK,
                                 symbols=_symbols())
        for mode, run in runs.items():
            with self.subTest(mode=mode):
                self.assertEqual(run.reason, 'the guest powered off (acpi_pm)', run.describe())
                # the reads came between the TSC stamps: the PM timer ran no faster
                pm_ms = 1000 * run.u64('delta') / PM_TIMER_HZ
                self.assertLessEqual(pm_ms, 1.01 * run.ms(run.u64('tsc1') - run.u64('tsc0')) + 0.01,
                                     run.describe())



# -- S3: suspend to RAM and the wake through the FACS waking vector ---------------

def _s3_symbols(**more):
    base = PC.device('acpi_pm').pio[0][1]
    return dict({'PASSED': PASSED, 'PM1_STS': base + AcpiPm.PM1_EVT_BLK,
                 'PM1_EN': base + AcpiPm.PM1_EVT_BLK + 2, 'PM1A_CNT': base + AcpiPm.PM1_CNT_BLK,
                 'RTC_EN': RTC_EN, 'SLEEP_S3': AcpiPm.SLP_TYP_S3 << SLP_TYP_SHIFT | SLP_EN,
                 'FACS_WAKE': platform_tables.facs_address() + platform_tables.FACS_FIRMWARE_WAKING_VECTOR},
                **more)


# The part of both S3 guests that runs after the wake: real mode at the
# waking vector (16-byte aligned, so CS:IP = wake >> 4 : 0), DS = CS. It
# stamps the TSC, prints, keeps PM1_STS and the RTC's seconds, and ends with
# the debug exit. WAKE_EXTRA is each guest's own part before the exit.
S3_WAKE = r"""
align 16
bits 16
wake:
    mov ax, cs
    mov ds, ax
    rdtsc
    mov [tsc1 - wake], eax
    mov [tsc1 - wake + 4], edx
    mov si, woke_msg - wake
    call puts16
    mov dx, PM1_STS
    in ax, dx
    mov [pm1_sts - wake], ax
    mov al, 0                   ; the RTC's seconds (binary mode)
    out 0x70, al
    in al, 0x71
    mov [rtc_woke - wake], al
    WAKE_EXTRA
    mov al, PASSED
    out 0xf4, al
.halt:
    cli
    hlt
    jmp .halt
puts16:                         ; the NUL-terminated string at ds:si
    push ax
    push dx
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    pop dx
    pop ax
    ret
woke_msg: db 'woke at the waking vector in real mode', 10, 0
align 8
tsc0: dq 0
tsc1: dq 0
pm1_sts: dw 0
rtc_alarm: db 0
rtc_woke: db 0
"""

# Arms the RTC alarm one second ahead (binary, 24 h; re-read until no
# update came in between, so the alarm is in the future), enables RTC_EN,
# fills the FACS waking vector and enters S3.
S3_RTC_GUEST = r"""
bits 64
main:
    mov dword [FACS_WAKE], wake     ; the Firmware_Waking_Vector: real mode
    mov al, 0x0b
    out 0x70, al
    mov al, 0x06                    ; register B: binary, 24 h, no interrupt yet
    out 0x71, al
    mov al, 0x0c
    out 0x70, al
    in al, 0x71                     ; register C: clear the flags
.arm:
    xor eax, eax
    out 0x70, al
    in al, 0x71
    mov bl, al                      ; seconds now
    inc al
    cmp al, 60
    jb .in_range
    xor eax, eax
.in_range:
    mov [rtc_alarm], al
    mov cl, al
    mov al, 1                       ; seconds alarm
    out 0x70, al
    mov al, cl
    out 0x71, al
    mov al, 3                       ; minutes and hours alarm: don't care
    out 0x70, al
    mov al, 0xc0
    out 0x71, al
    mov al, 5
    out 0x70, al
    mov al, 0xc0
    out 0x71, al
    xor eax, eax
    out 0x70, al
    in al, 0x71
    cmp al, bl
    jne .arm                        ; a second passed meanwhile: arm again
    mov al, 0x0b
    out 0x70, al
    mov al, 0x26                    ; AIE: the alarm raises IRQ8 (masked, IF=0): RTC_STS
    out 0x71, al
    mov dx, PM1_STS
    mov ax, 0xffff                  ; clear every status bit (WAK_STS included)
    out dx, ax
    mov dx, PM1_EN
    mov ax, RTC_EN
    out dx, ax
    call print
    db 'entering S3', 10, 0
    call rdtsc64
    mov [tsc0], rax
    mov dx, PM1A_CNT
    mov ax, SLEEP_S3
    out dx, ax
    call print
    db 'still running after S3', 10, 0
    mov al, 0x7e
    ret
""" + S3_WAKE.replace('WAKE_EXTRA', '')


def _write_tables(m):
    platform_tables.write_platform_tables(m.vm, m.cpus, platform=m.platform)


@requires_kvm
class SuspendGuestTest(unittest.TestCase):
    def test_s3_and_a_wake_by_the_rtc_alarm_through_the_waking_vector(self):
        runs = run_in_every_mode(
            self, S3_RTC_GUEST, 'entering S3\nwoke at the waking vector in real mode\n',
            symbols=_s3_symbols(), setup=_write_tables)
        for mode, run in runs.items():
            with self.subTest(mode=mode):
                sts = struct.unpack_from('<H', run.memory, run.labels['pm1_sts'] - 0x10000)[0]
                self.assertEqual(sts & (WAK_STS | RTC_STS), WAK_STS | RTC_STS, run.describe())
                # it woke at the alarm's second, not before (every vCPU stopped until then)
                self.assertEqual(run.u8('rtc_woke'), run.u8('rtc_alarm'), run.describe())
                self.assertGreater(run.u64('tsc1'), run.u64('tsc0'))
                self.assertLess(run.ms(run.u64('tsc1') - run.u64('tsc0')), 2500, run.describe())
                self.assertEqual(run.labels['wake'] & ~0xF, run.labels['wake'])

    def test_console_input_wakes_s3_with_every_vcpu_stopped_and_the_aps_back_in_init(self):
        """The guest enters S3 with no wake event enabled; the test sees every
        vCPU parked (its exits stop), types one key, and the waking code
        reads it from the UART."""
        source = S3_RTC_GUEST.replace('    mov ax, RTC_EN\n', '    xor eax, eax\n').replace(
            '    mov al, 0x26 ', '    mov al, 0x06 ')         # no RTC_EN, no alarm interrupt
        source = source.replace("db 'woke at the waking vector in real mode', 10, 0",
                                "db 'woke, key ', 0")
        source = source.replace('    mov al, PASSED\n    out 0xf4, al\n.halt:', r"""    mov dx, 0x3fd
.rx:
    in al, dx
    test al, 1
    jz .rx
    mov dx, 0x3f8
    in al, dx
    out dx, al
    mov al, 10
    out dx, al
    mov al, PASSED
    out 0xf4, al
.halt:""")
        for mode in MODES:
            cpus = 1 if mode == 'user' else 2
            with self.subTest(mode=mode), kvmlite.Machine(
                    mem_size=MEM_SIZE, irqchip=mode, console=MemoryBackend(), cpus=cpus) as m:
                load_guest(m, source, _s3_symbols())
                _write_tables(m)
                done = []
                runner = threading.Thread(target=lambda: done.append(m.run(timeout=20)))
                runner.start()
                deadline = time.monotonic() + 15
                while not (m.acpi_pm.sleep == SLEEPING and m._parked == set(range(cpus))):
                    self.assertLess(time.monotonic(), deadline, bytes(m.console.output))
                    self.assertTrue(runner.is_alive(), done)
                    time.sleep(0.01)
                exits = m.vm.vcpus[0].io_exits
                time.sleep(0.3)
                self.assertEqual(m.vm.vcpus[0].io_exits, exits)     # stopped, not spinning
                self.assertEqual(m.acpi_pm.sleep, SLEEPING)
                m.console.feed(b'k')
                m.wake()
                runner.join(20)
                self.assertFalse(runner.is_alive())
                self.assertEqual(bytes(m.console.output), b'entering S3\nwoke, key k\n')
                self.assertEqual(done[0].status, STATUS_PASSED, done[0])
                self.assertEqual(m.acpi_pm.sts & (WAK_STS | RTC_STS), WAK_STS)
                if cpus > 1:
                    self.assertEqual(m.vm.vcpus[1].get_mp_state(), kvmlite.KVM_MP_STATE_INIT_RECEIVED)

    def test_a_snapshot_in_s3_and_the_power_button_into_the_x_waking_vector(self):
        """X_Firmware_Waking_Vector set: the wake enters it in 32-bit
        protected mode (flat, paging off). The machine is saved while in S3,
        restored into a new one, and woken there by the power button."""
        source = r"""
bits 64
main:
    mov dword [FACS_XWAKE], wake32
    mov dword [FACS_XWAKE + 4], 0
    call print
    db 'entering S3', 10, 0
    mov dx, PM1A_CNT
    mov ax, SLEEP_S3
    out dx, ax
    mov al, 0x7e
    ret
bits 32
wake32:
    mov eax, cr0
    mov [cr0_woke], eax
    mov esi, msg32
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    mov dx, PM1_STS
    in ax, dx
    mov [pm1_sts], ax
    mov al, PASSED
    out 0xf4, al
    hlt
msg32: db 'woke in protected mode', 10, 0
align 8
cr0_woke: dd 0
pm1_sts: dw 0
"""
        symbols = _s3_symbols(FACS_XWAKE=platform_tables.facs_address()
                              + platform_tables.FACS_X_FIRMWARE_WAKING_VECTOR)
        saved = io.BytesIO()
        with kvmlite.Machine(mem_size=MEM_SIZE, console=MemoryBackend()) as m:
            _, labels = load_guest(m, source, symbols)
            _write_tables(m)
            runner = threading.Thread(target=m.run, kwargs={'timeout': 20})
            runner.start()
            deadline = time.monotonic() + 15
            while not (m.acpi_pm.sleep == SLEEPING and m._parked == {0}):
                self.assertLess(time.monotonic(), deadline, bytes(m.console.output))
                time.sleep(0.01)
            m.snapshot(saved)
            m.stop(kvmlite.EXIT_SIGNAL, 'the test saved it')
            runner.join(10)
        saved.seek(0)
        with kvmlite.Machine.restore(saved, console=MemoryBackend()) as m:
            self.assertEqual(m.acpi_pm.sleep, SLEEPING)
            done = []
            runner = threading.Thread(target=lambda: done.append(m.run(timeout=20)))
            runner.start()
            deadline = time.monotonic() + 15
            while m._parked != {0}:
                self.assertLess(time.monotonic(), deadline)
                time.sleep(0.01)
            with m.vm.lock:
                m.acpi_pm.press_power_button()
            runner.join(20)
            self.assertEqual(bytes(m.console.output), b'woke in protected mode\n')
            self.assertEqual(done[0].status, STATUS_PASSED, done[0])
            self.assertEqual(m.vm.read_int(labels['cr0_woke'], 4), 0x11)         # PE | ET, no PG
            self.assertEqual(m.vm.read_int(labels['pm1_sts'], 2) & (WAK_STS | PWRBTN_STS),
                             WAK_STS | PWRBTN_STS)

    def test_no_waking_vector_ends_the_run_as_a_reset(self):
        source = S3_RTC_GUEST.replace('    mov dword [FACS_WAKE], wake     ; the Firmware_Waking_Vector: real mode\n', '')
        run = run_guest(source, 'split', symbols=_s3_symbols(), setup=_write_tables)
        self.assertEqual(run.status, kvmlite.EXIT_OK, run.describe())
        self.assertIn('woke from S3 with nowhere to go (the FACS waking vectors are 0)', run.reason)
        self.assertEqual(run.output, b'entering S3\n')

if __name__ == '__main__':
    unittest.main()
