"""The built-in demo guest (tools/demo.py): its ELF64 image, and what it does
and says when it runs under real KVM in each irqchip mode."""

import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import datetime, timedelta, timezone

import kvmlite as K
from devices.console import MemoryBackend
from tests.guest import kvm, requires_kvm
from tools import boot, demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 30                    # seconds; a run takes well under one here

# What each irqchip mode needs from the host's KVM.
MODE_CAPS = {'split': (K.Cap.SPLIT_IRQCHIP,), 'user': (), 'kernel': (K.Cap.PIT2, K.Cap.IRQ_ROUTING)}

APIC_LINE = '  IRQs    via IOAPIC: local APIC version 0x14 (ID 0), IOAPIC with 24 pins\r\n'
ROUTE_RE = re.compile(r'via (IOAPIC pin \d+|PIC IRQ \d+) -> vector 0x[0-9a-f]{2}')
RTC_RE = re.compile(r'  RTC     (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \(BCD, 24-hour clock\)\r\n')


class FakeMem:
    """Guest RAM as one bytearray, as the boot loaders want it."""

    def __init__(self, size=4 << 20):
        self.data = bytearray(size)
        self.ram = [(0, size)]

    def write(self, gpa, data):
        self.data[gpa:gpa + len(data)] = data

    def read(self, gpa, size):
        return bytes(self.data[gpa:gpa + size])


class DemoImageTest(unittest.TestCase):
    """The image, without KVM."""

    @classmethod
    def setUpClass(cls):
        cls.image = demo.build()

    def test_image_is_an_elf64_that_load_elf_enters_in_long_mode_at_start(self):
        mem = FakeMem()
        b = boot.load_elf(self.image.elf, mem)
        self.assertEqual(b.mode, 'long64')
        self.assertEqual(b.entry, self.image.labels['start'])
        self.assertEqual(b.entry, self.image.entry)
        code = self.image.elf[demo.SEGMENT_OFFSET:]
        self.assertEqual(mem.read(demo.LOAD_ADDR, len(code)), code)

    def test_idt_gates_lead_to_the_handlers(self):
        labels, code = self.image.labels, self.image.elf[demo.SEGMENT_OFFSET:]
        idt = labels['idt'] - demo.LOAD_ADDR

        def gate(vector):
            lo, sel, flags, mid, hi, _ = struct.unpack_from('<HHHHII', code, idt + 16 * vector)
            self.assertEqual((sel, flags), (K.SEL_CODE64, 0x8E00), f'vector {vector:#x}')
            return lo | mid << 16 | hi << 32

        for vector, handler in ((0x20, 'timer_isr'), (0x30, 'timer_isr'), (0x24, 'com1_isr'),
                                (0x34, 'com1_isr'), (0x06, 'exc_6'), (0x0E, 'exc_14'),
                                (0x27, 'stray_isr'), (0xFF, 'stray_isr')):
            self.assertEqual(gate(vector), labels[handler], f'vector {vector:#x}')
        limit, base = struct.unpack_from('<HQ', code, labels['idt_ptr'] - demo.LOAD_ADDR)
        self.assertEqual((limit, base), (256 * 16 - 1, labels['idt']))

    def test_refuses_what_the_pit_or_the_guest_cannot_do(self):
        for kw in ({'ticks': 0}, {'ticks': 1001}, {'hz': 10}, {'hz': 0}, {'hz': 1_000_000},
                   {'route': 'msi'}):
            with self.subTest(**kw), self.assertRaises(ValueError):
                demo.build(**kw)


def run_demo(mode, cpus=1, **options):
    """Boot the demo with demo.load() in a Machine; returns (RunResult,
    COM1 text, host time before, host time after)."""
    missing = [c.name for c in MODE_CAPS[mode] if not kvm().check_extension(c)]
    if missing:
        raise unittest.SkipTest(f"this host's KVM lacks KVM_CAP_{missing[0]} "
                                f'for irqchip mode {mode}')
    con = MemoryBackend()
    with K.Machine(irqchip=mode, cpus=cpus, console=con, kvm=kvm()) as m:
        demo.load(m, **options)
        before = datetime.now(timezone.utc)
        result = m.run(timeout=TIMEOUT)
        after = datetime.now(timezone.utc)
    return result, con.output.decode('utf-8', 'replace'), before, after


def without_route(text):
    """The output with the interrupt route's names taken out, and the RTC's
    time (which moves) and the line saying which route was taken."""
    text = ROUTE_RE.sub('via <route>', text)
    text = RTC_RE.sub('  RTC     <time> (BCD, 24-hour clock)\r\n', text)
    return [line for line in text.split('\r\n') if not line.startswith('  IRQs    via ')]


@requires_kvm
class DemoRunTest(unittest.TestCase):
    """The demo under real KVM, once per irqchip mode."""

    runs = {}

    @classmethod
    def run_in(cls, mode):
        if mode not in cls.runs:
            try:
                cls.runs[mode] = run_demo(mode)
            except unittest.SkipTest as e:
                cls.runs[mode] = e
        if isinstance(cls.runs[mode], unittest.SkipTest):
            raise cls.runs[mode]
        return cls.runs[mode]

    def check_run(self, mode, route):
        result, out, before, after = self.run_in(mode)
        where = f'irqchip {mode}: {result!r}, output:\n{out}'
        self.assertEqual((result.status, result.reason),
                         (K.EXIT_OK, 'the guest halted with interrupts disabled'), where)
        self.assertTrue(out.startswith('kvmlite demo: a 64-bit guest'), where)
        for line in ('  fw_cfg  signature "QEMU", 1 CPU, 256 MiB of RAM',
                     '  PIC     8259A pair at vectors 0x20-0x2f (ICW1-4), IMRs read back 0xff 0xff',
                     '  UART    loopback through the FIFO (MCR.LOOP): IIR 0xc4 after 13 bytes',
                     '          sent "hello, 16550A", read back "hello, 16550A"',
                     '  UART    this line went out one byte per THR-empty interrupt',
                     'done: halting with interrupts off (cli; hlt), so kvmlite exits 0'):
            self.assertIn(line + '\r\n', out, where)
        self.assertIn('  PIT     10 ticks at 100 Hz via ' + route[0] + '\r\n', out, where)
        self.assertIn(f'          ^ {len(demo.IRQ_TX_TEXT) + 1} THR-empty interrupts via '
                      f'{route[1]}\r\n', out, where)
        self.assertNotIn('exception', out, where)
        self.assertNotIn('stray', out, where)
        return out, before, after

    def test_split_mode_counts_ticks_and_uart_interrupts_through_the_ioapic(self):
        out, _, _ = self.check_run('split', ('IOAPIC pin 2 -> vector 0x30',
                                             'IOAPIC pin 4 -> vector 0x34'))
        self.assertIn(APIC_LINE, out)

    def test_kernel_mode_counts_ticks_and_uart_interrupts_through_the_ioapic(self):
        out, _, _ = self.check_run('kernel', ('IOAPIC pin 2 -> vector 0x30',
                                              'IOAPIC pin 4 -> vector 0x34'))
        self.assertIn(APIC_LINE, out)

    def test_user_mode_finds_no_local_apic_and_uses_the_pic(self):
        out, _, _ = self.check_run('user', ('PIC IRQ 0 -> vector 0x20', 'PIC IRQ 4 -> vector 0x24'))
        self.assertIn('  IRQs    via PIC: no local APIC (its registers read all ones)\r\n', out)

    def test_rtc_date_is_the_hosts_utc_time(self):
        _, out, before, after = self.run_in('user')
        match = RTC_RE.search(out)
        self.assertIsNotNone(match, out)
        shown = datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S').replace(tzinfo=timezone.utc)
        # the RTC shows whole seconds of the host's clock taken while it ran
        self.assertLessEqual(before - timedelta(seconds=1), shown, out)
        self.assertLessEqual(shown, after, out)

    def test_every_mode_prints_the_same_lines_but_for_the_route(self):
        outputs = {}
        for mode in K.IRQCHIP_MODES:
            try:
                outputs[mode] = without_route(self.run_in(mode)[1])
            except unittest.SkipTest:
                continue
        self.assertIn('user', outputs)
        first = outputs['user']
        self.assertGreaterEqual(len(first), 10, first)
        for mode, lines in outputs.items():
            self.assertEqual(lines, first, f'irqchip {mode} differs from user')


@requires_kvm
class DemoOptionsTest(unittest.TestCase):

    def test_pic_route_goes_through_the_local_apics_virtual_wire(self):
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                result, out, _, _ = run_demo(mode, route='pic')
                where = f'{result!r}, output:\n{out}'
                self.assertEqual(result.status, K.EXIT_OK, where)
                self.assertIn('  IRQs    via PIC: local APIC version 0x14 (ID 0), IOAPIC with 24 '
                              'pins\r\n', out)
                self.assertIn('  PIT     10 ticks at 100 Hz via PIC IRQ 0 -> vector 0x20\r\n', out)
                self.assertIn(' THR-empty interrupts via PIC IRQ 4 -> vector 0x24\r\n', out)

    def test_tick_count_and_rate_are_the_ones_asked_for(self):
        result, out, _, _ = run_demo('user', ticks=3, hz=1000)
        self.assertEqual(result.status, K.EXIT_OK, out)
        self.assertIn('  PIT     3 ticks at 1000 Hz via PIC IRQ 0 -> vector 0x20\r\n', out)

    def test_run_with_an_ap_that_never_starts_still_ends_at_the_bsps_halt(self):
        # regression: Machine waited for every vCPU to be HALTED, and an AP
        # waiting for INIT/SIPI is KVM_MP_STATE_UNINITIALIZED, so it never ended
        result, out, _, _ = run_demo('split', cpus=2)
        self.assertEqual((result.status, result.reason),
                         (K.EXIT_OK, 'the guest halted with interrupts disabled'), out)
        self.assertIn('  fw_cfg  signature "QEMU", 2 CPUs, 256 MiB of RAM\r\n', out)

    def test_rtc_is_decoded_as_register_b_says(self):
        # (register B, hours register, hour shown); SET stops the clock while
        # the test writes 2099-12-31 hh:34:56, clearing SET starts it again
        cases = ((0x00, 0x12, 0, 'BCD, 12-hour'),          # 12 AM is 00
                 (0x00, 0x92, 12, 'BCD, 12-hour'),         # 12 PM is 12
                 (0x04, 0x80 | 11, 23, 'binary, 12-hour'),
                 (0x06, 7, 7, 'binary, 24-hour'),
                 (0x02, 0x21, 21, 'BCD, 24-hour'))
        for b, hours, shown, mode in cases:
            with self.subTest(register_b=b, hours=hours):
                con = MemoryBackend()
                with K.Machine(irqchip='user', console=con, kvm=kvm()) as m:
                    bcd = not b & 0x04
                    date = {0x09: 0x99 if bcd else 99, 0x08: 0x12 if bcd else 12,
                            0x07: 0x31 if bcd else 31, 0x04: hours,
                            0x02: 0x34 if bcd else 34, 0x00: 0x56 if bcd else 56}
                    self.cmos_write(m, 0x0B, b | 0x80)
                    for index, value in date.items():
                        self.cmos_write(m, index, value)
                    self.cmos_write(m, 0x32, 0x20)      # century, BCD
                    self.cmos_write(m, 0x0B, b)
                    demo.load(m, ticks=1)
                    result = m.run(timeout=TIMEOUT)
                out = con.output.decode()
                self.assertEqual(result.status, K.EXIT_OK, out)
                match = re.search(r'  RTC     2099-12-31 (\d\d):34:(\d\d) \((.*) clock\)\r\n', out)
                self.assertIsNotNone(match, out)
                self.assertEqual((int(match.group(1)), match.group(3)), (shown, mode), out)
                self.assertIn(int(match.group(2)), (56, 57, 58), out)

    @staticmethod
    def cmos_write(machine, index, value):
        machine.rtc.write(0, 1, index)          # port 0x70: index
        machine.rtc.write(1, 1, value)          # port 0x71: data

    def test_cpu_exception_prints_its_vector_and_exits_with_status_3(self):
        image = demo.build()
        con = MemoryBackend()
        with K.Machine(irqchip='user', console=con, kvm=kvm()) as m:
            m.load(boot.load_elf(image.elf, m.vm))
            m.vm.write(image.labels['show_rtc'], b'\x0f\x0b')         # ud2
            result = m.run(timeout=TIMEOUT)
        out = con.output.decode()
        self.assertEqual(result.status, 3, f'{result!r}, output:\n{out}')
        self.assertIn(f'demo: CPU exception 6 at RIP {image.labels["show_rtc"]:#018x}\r\n', out)
        self.assertNotIn('  RTC', out)


@requires_kvm
class DemoCommandLineTest(unittest.TestCase):

    def test_kvmlite_run_with_no_kernel_boots_the_demo(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'com1.txt')
            start = time.monotonic()
            p = subprocess.run([sys.executable, 'kvmlite.py', 'run', '--console', path,
                                '--timeout', str(TIMEOUT)], cwd=ROOT, capture_output=True,
                               timeout=TIMEOUT + 30)
            took = time.monotonic() - start
            with open(path, 'rb') as f:
                out = f.read().decode()
        where = f'status {p.returncode} after {took:.1f} s, stderr {p.stderr!r}, COM1:\n{out}'
        self.assertEqual(p.returncode, 0, where)
        self.assertEqual((p.stdout, p.stderr), (b'', b''), where)
        self.assertIn('  PIT     10 ticks at 100 Hz via IOAPIC pin 2 -> vector 0x30\r\n', out)
        self.assertTrue(out.endswith('so kvmlite exits 0\r\n'), where)


if __name__ == '__main__':
    unittest.main()
