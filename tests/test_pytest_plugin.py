"""kvmlite's pytest plugin (tools/pytest_kvmlite.py): installed, pytest finds
it through the ``pytest11`` entry point and its ``snippet`` fixture runs real
guests; where KVM cannot be used each test that asks for one is skipped, one
by one, naming why; kvmlite itself never imports pytest. Driven through a
real ``pytest`` process on a built package (skipped where pytest or
setuptools is absent)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from kvmlite import kvm_unavailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GUEST_TESTS = '''
import pytest
import kvmlite

def test_where_it_is_loaded_from():
    import kvmlite_tools.pytest_kvmlite as plugin
    assert 'site' in plugin.__file__.split(__import__('os').sep)

def test_add(snippet):
    assert (snippet.mode, snippet.cpl) == ('long64', 3)
    assert snippet.run(b'\\x48\\xff\\xc0\\xf4').reason == 'hlt'      # inc rax; hlt
    assert snippet.reg_read('rax') == 1

@pytest.mark.snippet(mode='real')
def test_real(snippet, make_snippet):
    assert snippet.run(b'\\x40\\xf4').reason == 'hlt'               # inc ax; hlt
    assert snippet.reg_read('ax') == 1
    other = make_snippet('prot32', cpl=0)
    assert other.run(b'\\x40\\xf4').reason == 'hlt' and other.reg_read('eax') == 1
'''

NO_KVM_CONFTEST = '''
import pytest
import kvmlite

@pytest.fixture(autouse=True)
def no_kvm(monkeypatch):
    monkeypatch.setattr(kvmlite, 'kvm_unavailable', lambda *a: '/dev/kvm is missing here')
'''

NO_KVM_TESTS = '''
def test_one(snippet):
    raise AssertionError('ran without KVM')

def test_two(make_snippet):
    raise AssertionError('ran without KVM')
'''


def _missing(module):
    return importlib.util.find_spec(module) is None


class PytestPluginTest(unittest.TestCase):

    def test_kvmlite_never_imports_pytest(self):
        r = subprocess.run([sys.executable, '-c', 'import sys, kvmlite; kvmlite.SnippetTestCase; '
                            'print(sorted(m for m in sys.modules if "pytest" in m))'],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.stdout.strip(), '[]', r.stderr)

    @unittest.skipIf(_missing('pytest'), 'pytest is not installed (pip install pytest)')
    @unittest.skipIf(_missing('setuptools'), 'setuptools is needed to build the package')
    def test_installed_plugin_gives_the_fixture_and_skips_one_by_one_without_kvm(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        # what an install puts in site-packages (as test_packaging builds it),
        # linked rather than copied, and the metadata setup.py writes
        site = os.path.join(tmp, 'site')
        os.mkdir(site)
        for name, target in (('kvmlite.py', 'kvmlite.py'), ('kvmlite_tools', 'tools'),
                             ('kvmlite_devices', 'devices')):
            os.symlink(os.path.join(ROOT, target), os.path.join(site, name))
        r = subprocess.run([sys.executable, 'setup.py', '--quiet', 'egg_info', '--egg-base',
                            site], cwd=ROOT, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(site, 'kvmlite.egg-info', 'entry_points.txt')) as f:
            self.assertIn('kvmlite = kvmlite_tools.pytest_kvmlite', f.read())
        work = os.path.join(tmp, 'work')
        os.makedirs(os.path.join(work, 'nokvm'))
        files = {'test_guests.py': GUEST_TESTS, 'nokvm/conftest.py': NO_KVM_CONFTEST,
                 'nokvm/test_nokvm.py': NO_KVM_TESTS}
        for name, text in files.items():
            with open(os.path.join(work, name), 'w') as f:
                f.write(textwrap.dedent(text))
        # no -p: pytest finds the plugin through the installed entry point
        env = dict(os.environ, PYTHONPATH=site, PYTHONDONTWRITEBYTECODE='1')
        env.pop('PYTEST_ADDOPTS', None)
        env.pop('PYTEST_DISABLE_PLUGIN_AUTOLOAD', None)
        r = subprocess.run([sys.executable, '-m', 'pytest', '-rs', '-p', 'no:cacheprovider',
                            '-q', work], cwd=work, env=env, capture_output=True, text=True,
                           timeout=300)
        out = r.stdout + r.stderr
        reason = kvm_unavailable()
        if reason is None:
            self.assertRegex(out, r'\b3 passed, 2 skipped\b', out)
        else:                        # this host has no KVM: the guest tests skip too
            self.assertRegex(out, r'\b1 passed, 4 skipped\b', out)
        skips = re.findall(r'SKIPPED \[1\] .*?: (.*)', out)
        self.assertEqual(skips.count('kvmlite: KVM cannot be used here: /dev/kvm is missing '
                                     'here'), 2, out)


if __name__ == '__main__':
    unittest.main()
