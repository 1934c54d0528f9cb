"""The README's Python examples run as written, and its quick start is true."""

import os
import re
import unittest

from tests.guest import requires_kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(name):
    with open(os.path.join(ROOT, name), encoding='utf-8') as f:
        return f.read()


class ReadmeTest(unittest.TestCase):
    def test_quick_start_has_the_two_commands_ci_runs(self):
        text = _read('README.md')
        quick = text.split('## Quick start', 1)[1].split('\n## ', 1)[0]
        commands = re.findall(r'^(python3 [^#\n]*?)\s*(?:#.*)?$', quick, re.M)
        self.assertEqual(commands, ['python3 kvmlite.py run', 'python3 -m unittest'])
        self.assertIn('python3 -m unittest', _read('.ci/run'))

    @requires_kvm
    def test_every_python_example_runs(self):
        blocks = re.findall(r'```python\n(.*?)```', _read('README.md'), re.S)
        self.assertGreaterEqual(len(blocks), 2)
        for i, block in enumerate(blocks):
            with self.subTest(example=i + 1):
                exec(compile(block, f'README.md example {i + 1}', 'exec'), {})


if __name__ == '__main__':
    unittest.main()
