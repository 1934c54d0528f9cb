"""Boot the small Linux test kernel to a busybox init under kvmlite (opt-in).

Each boot takes about a minute on this host (its kernel mode is emulated),
so the tests run only with ``KVMLITE_LINUX=1``. They use tools/linux.py:
the kernel from ``KVMLITE_LINUX_KERNEL_DIR`` (a directory with vmlinux-b
and bzImage-b) or built into the cache with shared/linux/build.sh
(``KVMLITE_SHARED`` or ../shared next to the checkout), busybox from
``KVMLITE_BUSYBOX`` or ``apt-get download busybox-static``, the cache in
``KVMLITE_CACHE`` (default ~/.cache/kvmlite). For example::

    KVMLITE_LINUX=1 KVMLITE_LINUX_KERNEL_DIR=/work/linux-out \\
        KVMLITE_BUSYBOX=/tmp/bb/bin/busybox python3 -m unittest tests.test_linux
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from tests.guest import requires_kvm
from tools import linux

ENABLED = os.environ.get('KVMLITE_LINUX') == '1'
TIMEOUT = 600.0             # seconds per boot; about 60 are needed here
V_TIMEOUT = 1500.0          # variant v (2 emulated CPUs, disks): 540 s on a loaded host here


@unittest.skipUnless(ENABLED, 'boots a real Linux kernel, about a minute per boot: set '
                     'KVMLITE_LINUX=1 to run (KVMLITE_LINUX_KERNEL_DIR and KVMLITE_BUSYBOX '
                     'reuse a built kernel and busybox; see tools/linux.py)')
@requires_kvm
class LinuxBootTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cache = linux.default_cache()
        cls.kernels = linux.ensure_kernel(os.environ.get('KVMLITE_LINUX_KERNEL_DIR'), cache)
        busybox = linux.ensure_busybox(os.environ.get('KVMLITE_BUSYBOX'), cache)
        cls.initrd = linux.make_initramfs(busybox, os.path.join(cache, 'initrd.cpio'))

    def boot_to_init(self, fmt):
        run = linux.boot(self.kernels[fmt], self.initrd, timeout=TIMEOUT)
        tail = run.output[-1500:].decode(errors='replace')
        message = (f'{fmt}: kvmlite exit status {run.status} after {run.seconds:.1f} s, '
                   f'stderr {run.stderr!r}; the console ended with:\n{tail}')
        self.assertIsNotNone(run.marker_seconds, message)
        self.assertEqual(run.status, 0, message)
        self.assertIn(b'Run /init as init process', run.output, message)

    def test_pvh_vmlinux_boots_to_init_and_powers_off(self):
        self.boot_to_init('pvh')

    def test_bzimage_boots_to_init_and_powers_off(self):
        self.boot_to_init('bzimage')


@unittest.skipUnless(ENABLED, 'boots the SMP virtio Linux (variant v), minutes per boot: set '
                     'KVMLITE_LINUX=1 to run (KVMLITE_LINUX_KERNEL_DIR with vmlinux-v and '
                     'bzImage-v reuses a built kernel)')
@requires_kvm
class VirtioSmpLinuxTest(unittest.TestCase):
    """Variant v with -c 2, a read-write vda, a read-only vdb and --rng: its
    init prints the CPU count, the md5 of vda's first MiB and its sectors,
    writes a marker into vda with conv=fsync, tries vdb, reads /dev/hwrng;
    the host checks the lines and both image files."""

    @classmethod
    def setUpClass(cls):
        cache = linux.default_cache()
        cls.kernels = linux.ensure_kernel(os.environ.get('KVMLITE_LINUX_KERNEL_DIR'), cache, 'v')
        busybox = linux.ensure_busybox(os.environ.get('KVMLITE_BUSYBOX'), cache)
        cls.initrd = linux.make_initramfs(busybox, os.path.join(cache, 'initrd-v.cpio'),
                                          linux.INIT_V)
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def boot_v(self, irqchip):
        disks = linux.make_disks(os.path.join(self.tmp.name, irqchip))
        before = {}
        for name, path in disks.items():
            with open(path, 'rb') as f:
                before[name] = f.read()
        run = linux.boot(self.kernels["pvh"], self.initrd, timeout=V_TIMEOUT,
                         extra=linux.virtio_extra(disks, irqchip=irqchip))
        tail = run.output[-3000:].decode(errors='replace')
        message = (f'{irqchip}: kvmlite exit status {run.status} after {run.seconds:.1f} s, '
                   f'stderr {run.stderr!r}; the console ended with:\n{tail}')
        self.assertIsNotNone(run.marker_seconds, message)
        self.assertEqual(run.status, 0, message)
        self.assertEqual(linux.check_virtio_run(run, before, disks), [], message)

    def test_split_irqchip_two_cpus_two_disks_and_rng(self):
        self.boot_v('split')

    def test_kernel_irqchip_two_cpus_two_disks_and_rng(self):
        self.boot_v('kernel')


@unittest.skipUnless(ENABLED, 'boots the SMP Linux (variant v) under gdb, about a minute: set '
                     'KVMLITE_LINUX=1 to run')
@unittest.skipUnless(shutil.which('gdb'), 'gdb is not installed (the Debian package gdb)')
@requires_kvm
class GdbLinuxTest(unittest.TestCase):
    """gdb with vmlinux-v's symbols against ``run --gdb 0 -S -c 2 -k bzImage-v``:
    a breakpoint on start_kernel (in a debug register, taken in the emulated
    kernel mode) stops there, with a backtrace and both vCPUs as threads."""

    def test_break_start_kernel_stops_there(self):
        kernels = linux.ensure_kernel(os.environ.get('KVMLITE_LINUX_KERNEL_DIR'),
                                      linux.default_cache(), 'v')
        vmm = subprocess.Popen([sys.executable, os.path.join(linux.REPO, 'kvmlite.py'), 'run',
                                '--gdb', '0', '-S', '-c', '2', '-k', kernels['bzimage'],
                                '-p', linux.CMDLINE, '--console', 'none', '--timeout', f'{TIMEOUT:g}'],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: vmm.poll() is None and vmm.kill())
        line = vmm.stderr.readline().decode()
        m = re.search(r'listening on 127\.0\.0\.1:(\d+)', line)
        self.assertTrue(m, f'no listening line from kvmlite: {line!r}')
        g = subprocess.run([shutil.which('gdb'), '-nx', '-batch', kernels['pvh'],
                            '-ex', f'target remote 127.0.0.1:{m.group(1)}', '-ex', 'break start_kernel',
                            '-ex', 'continue', '-ex', 'bt', '-ex', 'info threads', '-ex', 'kill'],
                           capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        text = g.stdout + g.stderr
        _, err = vmm.communicate(timeout=60)
        self.assertRegex(text, r'Breakpoint 1, 0x[0-9a-f]+ in start_kernel \(\)', text)
        self.assertRegex(text, r'#0 +0x[0-9a-f]+ in start_kernel \(\)', text)
        self.assertEqual(len(re.findall(r'^\*?\s+\d+\s+Thread \d+ \(vCPU', text, re.M)), 2, text)
        self.assertEqual(vmm.returncode, 130, err.decode())


PROMPT = b'KVMLITE-PROMPT# '
INIT_SHELL = (b'#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n'
              b'echo ' + linux.MARKER + b'\nexport PS1="' + PROMPT + b'"\nexec /bin/sh\n')
UPTIME = re.compile(rb'hi\r?\n(\d+\.\d+) \d+\.\d+')
ANSWER_S = 300.0            # a command's answer (each fork and exec is emulated kernel code)


class Console:
    """A kvmlite run as a subprocess whose stdin (a pipe) is the guest's
    console input; its stdout is read by a thread into ``output``."""

    def __init__(self, argv):
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.output = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b''):
            self.output += chunk

    def wait_for(self, pattern, timeout, start=0):
        """The first match of ``pattern`` (a compiled regex) in the output
        from ``start`` on; fails the test if none comes in time."""
        give_up = time.monotonic() + timeout
        while True:
            found = pattern.search(bytes(self.output), start)
            if found or self.proc.poll() is not None and not self.reader.is_alive():
                break
            if time.monotonic() > give_up:
                break
            time.sleep(0.2)
        if not found:
            tail = bytes(self.output[-1500:]).decode(errors='replace')
            raise AssertionError(f'no {pattern.pattern!r} after {timeout:.0f} s (kvmlite status '
                                 f'{self.proc.poll()}); the console ended with:\n{tail}')
        return found

    def send(self, text):
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def type(self, line):
        """``line`` and a newline, a key at a time, each once the shell
        echoed the one before (as a person types: the shell's line editor
        answers each key)."""
        for key in line:
            seen = len(self.output)
            self.send(bytes([key]))
            give_up = time.monotonic() + ANSWER_S
            while len(self.output) == seen and time.monotonic() < give_up \
                    and self.proc.poll() is None:
                time.sleep(0.05)
        self.send(b'\n')

    def uptime(self):
        """``echo hi; cat /proc/uptime`` answered: the guest's uptime in s."""
        start = len(self.output)
        self.type(b'echo hi; cat /proc/uptime')
        return float(self.wait_for(UPTIME, ANSWER_S, start).group(1))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(10)
        for f in (self.proc.stdin, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


@unittest.skipUnless(ENABLED, 'boots Linux to its shell and restores it twice, minutes: set '
                     'KVMLITE_LINUX=1 to run (KVMLITE_LINUX_KERNEL_DIR with vmlinux-v reuses a '
                     'built kernel, KVMLITE_BUSYBOX a busybox)')
@requires_kvm
class LinuxSnapshotTest(unittest.TestCase):
    """Variant v booted to a busybox shell on the serial console and
    snapshotted there with SIGUSR2; each of two restores answers
    ``echo hi; cat /proc/uptime`` and its uptime runs on from the one the
    original reported before the snapshot."""

    @classmethod
    def setUpClass(cls):
        cache = linux.default_cache()
        cls.kernels = linux.ensure_kernel(os.environ.get('KVMLITE_LINUX_KERNEL_DIR'), cache, 'v')
        busybox = linux.ensure_busybox(os.environ.get('KVMLITE_BUSYBOX'), cache)
        cls.initrd = linux.make_initramfs(busybox, os.path.join(cache, 'initrd-shell.cpio'),
                                          INIT_SHELL)
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def console(self, argv):
        con = Console(argv)
        self.addCleanup(con.close)
        return con

    def test_snapshot_at_the_shell_prompt_and_two_restores_answer(self):
        snap = os.path.join(self.tmp.name, 'shell.snap')
        argv = linux.run_command(self.kernels['pvh'], self.initrd, timeout=V_TIMEOUT,
                                 extra=['--snapshot', snap])
        original = self.console(argv)
        original.wait_for(re.compile(re.escape(PROMPT)), V_TIMEOUT)
        before = original.uptime()
        original.wait_for(re.compile(re.escape(PROMPT)), ANSWER_S, len(original.output) - 200)
        time.sleep(1)                   # the shell is back in its read of the console
        original.proc.send_signal(signal.SIGUSR2)
        give_up = time.monotonic() + ANSWER_S
        while not os.path.exists(snap):
            self.assertLess(time.monotonic(), give_up, 'no snapshot written')
            time.sleep(0.2)
        self.assertGreater(original.uptime(), before, 'the original\'s clock stopped')
        original.close()
        size = os.path.getsize(snap)
        self.assertLess(size, 256 << 20, 'the snapshot is as large as the RAM')
        script = os.path.join(linux.REPO, 'kvmlite.py')
        for i in range(2):
            with self.subTest(restore=i):
                restored = self.console([sys.executable, script, 'run', '--restore', snap,
                                         '--timeout', f'{V_TIMEOUT:g}'])
                first = restored.uptime()
                self.assertGreater(first, before, f'restore {i}: uptime {first} <= {before}')
                second = restored.uptime()
                self.assertGreater(second, first, f'restore {i}: its clock does not run on')
                restored.type(b'poweroff -f')
                self.assertEqual(restored.proc.wait(ANSWER_S), 0, restored.proc.stderr.read())
                print(f'restore {i}: uptime {before:.2f} s before the snapshot, then '
                      f'{first:.2f} s and {second:.2f} s ({size >> 20} MiB snapshot)',
                      file=sys.stderr)


# variant v's init for a shell on hvc0: the kernel's console is hvc0 (kvmlite
# adds console=hvc0 with --console-device hvc), and sh runs on /dev/hvc0
INIT_HVC = b"""#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
echo "HVC-CONSOLES $($B cut -d' ' -f1 /proc/consoles | $B tr '\\n' ' ')"
exec $B sh -i </dev/hvc0 >/dev/hvc0 2>&1
"""


@unittest.skipUnless(ENABLED, 'boots the virtio Linux (variant v) to a shell on hvc0, minutes: '
                     'set KVMLITE_LINUX=1 to run (KVMLITE_LINUX_KERNEL_DIR with vmlinux-v '
                     'reuses a built kernel)')
@requires_kvm
class HvcShellLinuxTest(unittest.TestCase):
    """``run --console-device hvc`` boots variant v with no console= of its
    own: the kernel logs to hvc0, init's shell reads the commands the host
    types into the virtio console and answers there, and poweroff ends the
    run with status 0."""

    def test_a_shell_on_hvc0(self):
        import subprocess
        import time
        cache = linux.default_cache()
        kernels = linux.ensure_kernel(os.environ.get('KVMLITE_LINUX_KERNEL_DIR'), cache, 'v')
        busybox = linux.ensure_busybox(os.environ.get('KVMLITE_BUSYBOX'), cache)
        initrd = linux.make_initramfs(busybox, os.path.join(cache, 'initrd-hvc.cpio'), INIT_HVC)
        argv = linux.run_command(kernels['pvh'], initrd, 'panic=-1 reboot=k', V_TIMEOUT,
                                 ['--console-device', 'hvc', '--irqchip',
                                  os.environ.get('KVMLITE_HVC_IRQCHIP', 'kernel')])
        out = bytearray()
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as proc:
            os.set_blocking(proc.stdout.fileno(), False)

            def until(marker):
                deadline = time.monotonic() + V_TIMEOUT
                while marker not in out:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()
                        self.fail(f'{marker!r} never came; status {proc.wait()}, stderr '
                                  f'{proc.stderr.read()!r}; the console ended with:\n'
                                  f'{out[-3000:].decode(errors="replace")}')
                    chunk = proc.stdout.read(65536)
                    if chunk:
                        out.extend(chunk)
                    else:
                        time.sleep(0.2)
            until(b'HVC-CONSOLES ')
            until(b'# ')                            # the shell's prompt, on hvc0
            proc.stdin.write(b'echo HVC-SHELL-$((6*7)) on $(/bin/busybox tty)\n')
            proc.stdin.flush()
            until(b'HVC-SHELL-42 on /dev/hvc0')
            proc.stdin.write(b'/bin/busybox poweroff -f\n')
            proc.stdin.flush()
            rest, err = proc.communicate(timeout=120)
            out.extend(rest)
        text = out.decode(errors='replace')
        self.assertIn('HVC-CONSOLES hvc0', text)
        self.assertIn('Run /init as init process', text)     # the kernel's log, on hvc0
        self.assertEqual(proc.returncode, 0, f'{err!r}: {text[-2000:]}')


if __name__ == '__main__':
    unittest.main()
