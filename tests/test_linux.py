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
import unittest

from tests.guest import requires_kvm
from tools import linux

ENABLED = os.environ.get('KVMLITE_LINUX') == '1'
TIMEOUT = 600.0             # seconds per boot; about 60 are needed here


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


if __name__ == '__main__':
    unittest.main()
