"""An installed kvmlite keeps site-packages clean and runs outside the
checkout; the zipapp runs as one file."""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

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
