"""tools/bench_snippet.py: in its quick mode it measures every row (the C
floor where cc exists, unicorn where it is importable), prints the table
with its previous figures next to the new ones, and saves them on request.
Nothing here asserts a speed: the figures are for people to read."""

import contextlib
import io
import json
import re
import os
import tempfile
import unittest

import kvmlite as K
from tools import bench_snippet


class BenchSnippetTest(unittest.TestCase):

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)

    def test_quick_run_prints_every_row_and_compares_with_saved_figures(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, 'figures.json')
            with open(path, 'w') as f:
                json.dump({'figures': {'reused cpl3 us': 1000.0}}, f)
            out = io.StringIO()
            self.assertEqual(bench_snippet.main(['--quick', '--reps', '1', '--figures', path,
                                                 '--save'], out=out), 0)
            text = out.getvalue()
            for title, *_ in bench_snippet.ROWS:
                if 'loop' not in title:              # --quick leaves the 100M loop out
                    self.assertRegex(text, re.escape(title) + r'\s+\d+(\.\d)? (us|ms)')
            self.assertRegex(text, r'1000 us\s+0\.\d\dx')      # the saved figure, the ratio
            with open(path) as f:
                saved = json.load(f)['figures']
            self.assertIn('reused cpl0 us', saved)
            self.assertNotEqual(saved['reused cpl3 us'], 1000.0)

    def test_bad_reps_is_refused(self):
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
            bench_snippet.main(['--reps', '0'], out=io.StringIO())


if __name__ == '__main__':
    unittest.main()
