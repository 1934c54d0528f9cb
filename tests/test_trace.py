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
from tools.trace import Profiler, parse_filter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r'^(\d+\.\d{6}) (vcpu\d+|-) (\S+)(?: (.*))?$')


class FilterTest(unittest.TestCase):
    def test_kinds_and_ranges(self):
        self.assertEqual(parse_filter('io:0x3f8-0x3ff'), {'io': [(0x3F8, 0x3FF)]})
        self.assertEqual(parse_filter('io:0xf4,io:0x80, hlt'), {'io': [(0xF4, 0xF4), (0x80, 0x80)],
                                                                'hlt': None})
        self.assertEqual(parse_filter('mmio,mmio:0x10'), {'mmio': None})

    def test_bad_filters_say_what_to_give(self):
        for bad, want in (('foo', "no kind 'foo'"), ('hlt:1-2', 'only io and mmio'),
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
        self.assertEqual(len(stats), 3, err)
        self.assertRegex(stats[0], r'exits by reason: io 6 \(')
        self.assertRegex(stats[1], r'device accesses: COM1 16550A 5 \(83\.3%, [\d.]+ ms\), '
                                   r'debug exit 1 \(16\.7%, [\d.]+ ms\); unclaimed 0$')
        self.assertRegex(stats[2], r'KVM: exits \d+, io_exits \d+')

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

    def test_refusals(self):
        for args, want in ((['--trace-filter', 'io'], 'give --trace FILE'),
                           (['--trace', '-', '--trace-filter', 'bogus'], "no kind 'bogus'"),
                           (['--trace', os.path.join(self.dir, 'no', 'such')], 'trace file')):
            with contextlib.redirect_stderr(io.StringIO()) as err:
                status = cli.main(['run', '--console', 'none', '-k', self.image, *args])
            self.assertEqual(status, 2, err.getvalue())
            self.assertEqual(len(err.getvalue().splitlines()), 1, err.getvalue())
            self.assertIn(want, err.getvalue())


if __name__ == '__main__':
    unittest.main()
