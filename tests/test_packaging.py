"""An installed kvmlite keeps site-packages clean and runs outside the
checkout; the zipapp runs as one file."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from kvmlite import kvm_unavailable
from tests.guest import requires_kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_setuptools():
    try:
        import setuptools  # noqa: F401
    except ImportError:
        return False
    return True


class PackagingTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def _run(self, args, pythonpath):
        env = dict(os.environ, PYTHONPATH=pythonpath)
        return subprocess.run([sys.executable] + args, cwd=self.tmp, env=env,
                              capture_output=True, text=True, timeout=120)

    @unittest.skipUnless(_has_setuptools(), 'setuptools is needed to build the package')
    def test_install_claims_no_generic_top_level_names(self):
        build = os.path.join(self.tmp, 'src')
        shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns('.git', '__pycache__', '*.pyz'))
        # "build" lays out exactly what an install copies into site-packages
        r = subprocess.run([sys.executable, 'setup.py', '--quiet', 'build', '--build-lib', 'site'],
                           cwd=build, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        target = os.path.join(build, 'site')
        names = set(os.listdir(target))
        self.assertIn('kvmlite.py', names)
        self.assertIn('kvmlite_devices', names)
        self.assertIn('kvmlite_tools', names)
        self.assertFalse({'devices', 'tools', 'tests'} & names, sorted(names))
        # outside the checkout the installed packages are the ones found
        r = self._run(['-c', 'import kvmlite, sys; '
                       'm = kvmlite._import_part("devices", "serial"); print(m.__name__)'], target)
        self.assertEqual(r.stdout.strip(), 'kvmlite_devices.serial', r.stderr)
        # ... and the board and the command line behind kvmlite.Machine and kvmlite.main
        r = self._run(['-c', 'import kvmlite; print(kvmlite.Machine.__module__, '
                       'kvmlite.load_kernel.__module__, kvmlite.EXIT_TIMEOUT)'], target)
        self.assertEqual(r.stdout.split(), ['kvmlite_tools.pc', 'kvmlite_tools.pc', '124'], r.stderr)
        if not kvm_unavailable():
            r = self._run(['-m', 'kvmlite', 'run', '--console', 'none'], target)
            self.assertEqual(r.returncode, 0, r.stderr)

    def test_star_import_gives_every_public_name(self):
        # a typo in __all__ once broke 'from kvmlite import *' for everyone
        r = self._run(['-c', 'from kvmlite import *; import kvmlite; '
                       'names = dir(); missing = [n for n in kvmlite.__all__ if n not in names]; '
                       'print(len(kvmlite.__all__), missing); '
                       'print(Machine.__name__, Snippet.__name__, KvmliteError.__name__)'], ROOT)
        self.assertEqual(r.returncode, 0, r.stderr)
        count, missing = r.stdout.splitlines()[0].split(' ', 1)
        self.assertEqual(missing, '[]')
        self.assertGreater(int(count), 30)
        self.assertEqual(r.stdout.splitlines()[1], 'Machine Snippet KvmliteError')

    @requires_kvm
    def test_zipapp_runs_info_from_one_file(self):
        out = os.path.join(self.tmp, 'kvmlite.pyz')
        subprocess.run([sys.executable, '-m', 'tools.zipapp_build', '-o', out], cwd=ROOT,
                       check=True, capture_output=True, timeout=60)
        r = self._run([out, 'info'], '')
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn('KVM API version: 12', r.stdout)
        self.assertIn('IRQCHIP', r.stdout)


if __name__ == '__main__':
    unittest.main()
