"""The exit trace and the profile (tools/trace.py, ``run --trace``,
``run --stats``): the filter syntax alone, then the command line and the
library on a real guest (a 32-bit ELF that prints on COM1 and exits through
port 0xF4), filtered and not, into a full disk, and counted by device."""

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import kvmlite
from devices.console import MemoryBackend
from tests.guest import requires_kvm
from tests.test_gdbstub import DEBUG_EXIT_STATUS, PRINTER, guest
from tools import cli
from tools import demo
from tools.trace import Profiler, Tracer, parse_filter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r'^(\d+\.\d{6}) (vcpu\d+|-) (\S+)(?: (.*))?$')


class FilterTest(unittest.TestCase):
    def test_kinds_and_ranges(self):
        self.assertEqual(parse_filter('io:0x3f8-0x3ff'), {'io': [(0x3F8, 0x3FF)]})
        self.assertEqual(parse_filter('io:0xf4,io:0x80, hlt'), {'io': [(0xF4, 0xF4), (0x80, 0x80)],
                                                                'hlt': None})
        self.assertEqual(parse_filter('mmio,mmio:0x10'), {'mmio': None})
        self.assertEqual(parse_filter('irq:4,irq:0-1'), {'irq': [(4, 4), (0, 1)]})

    def test_bad_filters_say_what_to_give(self):
        for bad, want in (('foo', "no kind 'foo'"), ('hlt:1-2', 'only io, mmio and irq'),
                          ('io:x', 'give a range'), ('io:5-1', 'empty'), ('', 'selects nothing'),
                          (',', 'selects nothing')):
            with self.assertRaises(ValueError, msg=bad) as e:
                parse_filter(bad)
            self.assertIn(want, str(e.exception))


@requires_kvm
class TraceRunTest(unittest.TestCase):
    def setUp(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        self.dir = d
        self.image = os.path.join(d, 'guest.elf')
        with open(self.image, 'wb') as f:
            f.write(guest(PRINTER, 32)[0])

    def run_cli(self, *args):
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '-k', self.image,
                            *args], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout, p.stderr.decode()

    def lines(self, path):
        with open(path) as f:
            out = [LINE.match(line.rstrip('\n')) for line in f]
        self.assertTrue(all(out), out)
        return [m.groups() for m in out]

    def test_com1_alone(self):
        path = os.path.join(self.dir, 'trace')
        status, out, err = self.run_cli('--trace', path, '--trace-filter', 'io:0x3f8-0x3ff')
        self.assertEqual((status, out), (DEBUG_EXIT_STATUS, b'xm=?\n'), err)
        lines = self.lines(path)
        self.assertEqual([(v, k, rest) for _, v, k, rest in lines],
                         [('vcpu0', 'io-out', f'0x3f8 1 {c:#x} COM1 16550A') for c in b'xm=?\n'])
        times = [float(t) for t, *_ in lines]
        self.assertEqual(times, sorted(times))

    def test_everything_names_the_devices_and_the_exits(self):
        path = os.path.join(self.dir, 'trace')
        status, out, err = self.run_cli('--trace', path, '-c', '2')
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)
        lines = self.lines(path)
        kinds = [k for _, _, k, _ in lines]
        self.assertEqual(kinds.count('io-out'), 6, lines)
        self.assertIn(('io-out', '0xf4 1 0x2a debug exit'), [(k, r) for _, _, k, r in lines])
        self.assertTrue({v for _, v, _, _ in lines} >= {'vcpu0'})

    def test_a_full_disk_stops_the_trace_not_the_guest(self):
        status, out, err = self.run_cli('--trace', '/dev/full')
        self.assertEqual((status, out), (DEBUG_EXIT_STATUS, b'xm=?\n'), err)
        self.assertEqual(err.count('the trace stopped'), 1, err)
        self.assertNotIn('Traceback', err)

    def test_stats_name_the_exits_the_devices_and_kvms_counters(self):
        status, out, err = self.run_cli('--stats', '-c', '2')
        self.assertEqual((status, out), (DEBUG_EXIT_STATUS, b'xm=?\n'), err)
        stats = [line for line in err.splitlines() if line.startswith('kvmlite: stats: ')]
        self.assertEqual(len(stats), 4, err)
        self.assertRegex(stats[0], r'exits by reason: io 6 \(')
        self.assertRegex(stats[1], r'device accesses: COM1 16550A 5 \(83\.3%, [\d.]+ ms\), '
                                   r'debug exit 1 \(16\.7%, [\d.]+ ms\); unclaimed 0$')
        # the printer polls: no IRQ but the PIT's OUT going high at power-on
        self.assertEqual(stats[2], 'kvmlite: stats: IRQs raised: IRQ 0 pit 1')
        self.assertRegex(stats[3], r'KVM: exits \d+, io_exits \d+')

    def test_the_profile_as_a_dict(self):
        machine = kvmlite.Machine(mem_size=64 << 20, console=MemoryBackend())
        self.addCleanup(machine.close)
        with open(self.image, 'rb') as f:
            kvmlite.load_kernel(machine, f.read())
        profiler = Profiler().attach(machine)
        self.assertEqual(machine.run(timeout=30).status, DEBUG_EXIT_STATUS)
        report = profiler.report()
        self.assertEqual(report['exits']['io'], 6)
        self.assertEqual({k: v['accesses'] for k, v in report['devices'].items()},
                         {'COM1 16550A': 5, 'debug exit': 1})
        self.assertAlmostEqual(sum(v['share'] for v in report['devices'].values()), 1.0)
        self.assertGreaterEqual(report['kvm'].get('exits', 6), 6)

    def test_stats_count_the_irqs_of_an_interrupt_driven_guest_by_line_and_device(self):
        # the demo sends its IRQ-driven line through COM1's THRE interrupt
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '--console',
                            'none', '--stats'], capture_output=True, timeout=60,
                           stdin=subprocess.DEVNULL)
        self.assertEqual(p.returncode, 0, p.stderr)
        irqs = [line for line in p.stderr.decode().splitlines() if 'IRQs raised' in line]
        self.assertEqual(len(irqs), 1, p.stderr)
        self.assertRegex(irqs[0], r'^kvmlite: stats: IRQs raised: IRQ 0 pit [1-9]\d*, '
                                  r'IRQ 4 com1 [1-9]\d*$')

    def test_refusals(self):
        for args, want in ((['--trace-filter', 'io'], 'give --trace FILE'),
                           (['--trace', '-', '--trace-filter', 'bogus'], "no kind 'bogus'"),
                           (['--trace', os.path.join(self.dir, 'no', 'such')], 'trace file')):
            with contextlib.redirect_stderr(io.StringIO()) as err:
                status = cli.main(['run', '--console', 'none', '-k', self.image, *args])
            self.assertEqual(status, 2, err.getvalue())
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
            self.assertIn(want, err.getvalue())


@requires_kvm
class IrqTraceTest(unittest.TestCase):
    """The demo guest (COM1's THRE interrupt, the PIT's IRQ 0) traced by
    IRQ line in each irqchip mode, through the library, with the profile's
    IRQ counts beside it."""

    def run_demo(self, mode, filters):
        machine = kvmlite.Machine(irqchip=mode, console=MemoryBackend())
        self.addCleanup(machine.close)
        demo.load(machine)
        out = io.StringIO()
        Tracer(out, parse_filter(filters)).attach(machine)
        machine.profile()
        self.assertEqual(machine.run(timeout=60).status, 0)
        lines = [LINE.match(line) for line in out.getvalue().splitlines()]
        self.assertTrue(all(lines), out.getvalue()[:2000])
        return machine, [(m.group(2), m.group(3), m.group(4)) for m in lines]

    def check_com1(self, mode, lines):
        kinds = [k for _, k, _ in lines]
        self.assertEqual(set(kinds), {'irq-raise', 'irq-lower', 'irq-inject'}, lines[:20])
        for _, kind, rest in lines:
            self.assertTrue(rest.startswith('4 '), (kind, rest))    # irq:4 alone
            if kind != 'irq-inject':
                self.assertEqual(rest, '4 com1')
        raises = kinds.count('irq-raise')
        self.assertGreater(raises, 10)
        return raises

    def test_split_mode_injects_the_ioapics_messages(self):
        machine, lines = self.run_demo('split', 'irq:4')
        raises = self.check_com1('split', lines)
        injects = [rest for _, kind, rest in lines if kind == 'irq-inject']
        # one vector, the one the guest programmed (it masks the pin again at the end)
        self.assertEqual(len(set(injects)), 1, injects)
        self.assertRegex(injects[0], r'^4 vector=0x[2-9a-f][0-9a-f] dest=0 KVM_SIGNAL_MSI$')
        stats = machine.stats()
        self.assertEqual(stats['irqs'][4], {'com1': raises})
        self.assertGreater(stats['irqs'][0]['pit'], 1)
        self.assertTrue(stats['profiled'])
        self.assertEqual(stats['exits'], {r.name.lower(): n for r, n in machine.vm.exit_counts.items()
                                          if n})
        self.assertAlmostEqual(sum(d['share'] for d in stats['devices'].values()), 1.0)
        self.assertGreater(stats['devices']['COM1 16550A']['accesses'], raises)
        self.assertGreaterEqual(stats['kvm']['irq_injections'], len(injects))

    def test_user_mode_injects_the_pics_vectors(self):
        machine, lines = self.run_demo('user', 'irq:4')
        raises = self.check_com1('user', lines)
        vector = machine.pic.master.vector_base + 4
        injects = [(v, rest) for v, kind, rest in lines if kind == 'irq-inject']
        self.assertTrue(injects)
        self.assertEqual(set(injects), {('vcpu0', f'4 vector={vector:#x} KVM_INTERRUPT')})
        self.assertEqual(machine.stats()['irqs'][4], {'com1': raises})

    def test_kernel_mode_hands_each_change_to_kvm_irq_line(self):
        machine, lines = self.run_demo('kernel', 'irq:4')
        self.check_com1('kernel', lines)
        # each change of the line, then the same level into KVM's PIC and IOAPIC
        for (_, kind, _), (_, inject, rest) in zip(lines[::2], lines[1::2]):
            level = int(kind == 'irq-raise')
            self.assertEqual((inject, rest), ('irq-inject', f'4 level={level} KVM_IRQ_LINE'))
        self.assertEqual(len(lines) % 2, 0)

    def test_the_pits_line_names_its_ioapic_pin(self):
        machine, lines = self.run_demo('user', 'irq')
        self.assertIn('0 pit', {rest for _, k, rest in lines if k == 'irq-raise'})
        self.assertEqual({rest.split()[0] for _, _, rest in lines}, {'0', '4'})
        machine, lines = self.run_demo('split', 'irq:0')
        self.assertEqual({rest for _, k, rest in lines if k != 'irq-inject'}, {'0 pit pin=2'})
        injects = {rest for _, k, rest in lines if k == 'irq-inject'}
        self.assertEqual(len(injects), 1, injects)
        self.assertRegex(injects.pop(), r'^0 pin=2 vector=0x[2-9a-f][0-9a-f] dest=0 KVM_SIGNAL_MSI$')

    def test_stats_without_a_profile_still_count_exits_and_irqs(self):
        machine = kvmlite.Machine(console=MemoryBackend())
        self.addCleanup(machine.close)
        demo.load(machine)
        self.assertEqual(machine.run(timeout=60).status, 0)
        stats = machine.stats()
        self.assertFalse(stats['profiled'])
        self.assertEqual(stats['devices'], {})
        self.assertGreater(stats['irqs'][4]['com1'], 10)
        self.assertGreater(stats['exits']['io'], 100)


if __name__ == '__main__':
    unittest.main()
