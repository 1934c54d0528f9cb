"""The ACPI power-management block (devices/acpi_pm.py): its registers on a
stepped clock, the device contract, the FADT and DSDT that describe it, and
a guest under real KVM that reads the PM timer and powers the machine off.
"""

import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest
from unittest import mock

import kvmlite
from devices import IrqLine, SteppedClock
from devices.acpi_pm import (
    PM_TIMER_HZ, PWRBTN_EN, PWRBTN_STS, SCI_EN, SLP_EN, SLP_TYP_S5, SLP_TYP_SHIFT, TMR_EN,
    TMR_STS, AcpiPm,
)
from tests import test_device_contract as contract
from tests.guest import requires_kvm
from tests.pcguest import MODES, PASSED, run_in_every_mode
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
        self.poweroffs = 0
        self.dev = AcpiPm(self.clock, self.sci, self.poweroff)

    def poweroff(self):
        self.poweroffs += 1

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
        for slp_typ in range(8):
            if slp_typ != SLP_TYP_S5:
                pm.dev.write(PM1_CNT, 2, SCI_EN | slp_typ << SLP_TYP_SHIFT | SLP_EN)
        self.assertEqual(pm.poweroffs, 0)
        self.assertEqual(pm.dev.check(), [])

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

    def test_the_dsdt_holds_the_s5_package_with_the_devices_slp_typ(self):
        aml = _tables()[b'DSDT'][36:]
        # NameOp '\_S5_' PackageOp PkgLength 6, 4 elements: Zero Zero Zero Zero
        self.assertEqual(aml, b'\x08\\_S5_\x12\x06\x04\x00\x00\x00\x00')
        with mock.patch.object(AcpiPm, 'SLP_TYP_S5', 5):
            self.assertEqual(_tables()[b'DSDT'][36:], b'\x08\\_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00')
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


if __name__ == '__main__':
    unittest.main()
