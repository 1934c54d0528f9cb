"""run --disk from the command line (a real subprocess): bad input is one
line and status 2; good disks reach the board and the Linux command line."""

import os
import subprocess
import sys
import tempfile
import unittest

import kvmlite
from tests.guest import kvm, requires_kvm
from tools import boot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '--console',
                           'none', *args], capture_output=True, text=True, timeout=60)


class DiskOptionTests(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.img = os.path.join(self.tmp.name, 'disk.img')
        with open(self.img, 'wb') as f:
            f.write(bytes(4096))

    def tearDown(self):
        self.tmp.cleanup()

    def test_bad_disks_are_one_line_and_status_2(self):
        fifo = os.path.join(self.tmp.name, 'fifo')
        os.mkfifo(fifo)
        wo = os.path.join(self.tmp.name, 'wo.img')
        with open(wo, 'wb') as f:
            f.write(bytes(512))
        os.chmod(wo, 0o200)
        cases = {os.path.join(self.tmp.name, 'missing.img'): 'does not exist',
                 self.tmp.name: 'is a directory', fifo: 'not a regular file',
                 self.img + ',rw': "unknown option 'rw'", wo: 'not readable'}
        for spec, why in cases.items():
            with self.subTest(disk=spec):
                p = run('--disk', spec)
                self.assertEqual(p.returncode, 2, p.stderr)
                self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
                self.assertTrue(p.stderr.startswith('kvmlite: '), p.stderr)
                self.assertIn(why, p.stderr)
        os.chmod(self.img, 0o444)
        p = run('--disk', self.img)
        self.assertEqual((p.returncode, p.stderr.count('\n')), (2, 1), p.stderr)
        self.assertIn('add ",ro"', p.stderr)

    def test_too_many_disks(self):
        p = run(*['--disk', self.img + ',ro'] * 5)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn('5 disks, but the board has 4 disk slots', p.stderr)

    @requires_kvm
    def test_demo_runs_with_disks(self):
        p = run('--disk', self.img, '--disk', self.img + ',ro')
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_virtio_path_choices(self):
        """--virtio-path: a bad one is one line and status 2; with --restore
        it is refused (the snapshot gives the machine); each one runs."""
        p = run('--virtio-path', 'fast')
        self.assertEqual((p.returncode, p.stderr.count('\n')), (2, 1), p.stderr)
        self.assertIn("invalid choice: 'fast'", p.stderr)
        p = run('--restore', self.img, '--virtio-path', 'exits')
        self.assertEqual((p.returncode, p.stderr.count('\n')), (2, 1), p.stderr)
        self.assertIn('drop --virtio-path', p.stderr)
        if kvmlite.kvm_unavailable():
            return                          # the runs need /dev/kvm
        for path in ('eventfd', 'no-irqfd', 'exits'):
            with self.subTest(path=path):
                p = run('--disk', self.img, '--virtio-path', path)
                self.assertEqual(p.returncode, 0, p.stderr)


@requires_kvm
class CommandLineTests(unittest.TestCase):

    def test_present_devices_reach_the_linux_command_line(self):
        import kvmlite
        from devices.virtio_blk import BytesDisk
        with kvmlite.Machine(mem_size=16 << 20, kvm=kvm()) as m:
            self.assertEqual(m.virtio_devices(), [])        # nothing asked for: nothing added
        with kvmlite.Machine(mem_size=16 << 20, kvm=kvm(), disks=[BytesDisk(bytes(1024))],
                             rng=True) as m:
            devices = m.virtio_devices()
        self.assertEqual(devices, [(512, 0xFEF00000, 5), (512, 0xFEF04000, 12)])
        line = boot.virtio_mmio_cmdline(b'console=ttyS0', devices)
        self.assertEqual(line, b'console=ttyS0 virtio_mmio.device=512@0xfef00000:5 '
                               b'virtio_mmio.device=512@0xfef04000:12')
        # the user's own entry for an address wins
        self.assertEqual(boot.virtio_mmio_cmdline(b'virtio_mmio.device=4K@0xfef00000:5', devices[:1]),
                         b'virtio_mmio.device=4K@0xfef00000:5')


if __name__ == '__main__':
    unittest.main()
