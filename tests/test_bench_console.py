"""tools/bench_console.py: its quick table comes out, a row per guest, each
run having ended with status 130 and the terminal restored (the tool checks
that itself and raises otherwise). No time is asserted."""

import io
import unittest

from tests.guest import requires_kvm
from tools import bench_console


@requires_kvm
class BenchConsoleTest(unittest.TestCase):
    def test_the_quick_table_has_a_row_per_guest(self):
        out = io.StringIO()
        self.assertEqual(bench_console.main(['--quick'], out=out), 0)
        rows = [line for line in out.getvalue().splitlines() if line.startswith('| ') and ' ms |' in line]
        self.assertEqual([r.split(' | ')[0] for r in rows], ['| real-mode loop', '| 64-bit CPL0 loop'],
                         out.getvalue())
        for row in rows:
            self.assertRegex(row, r'\| \d+ ms \| \d+ ms \| <= 1 s \| (met|NOT met) \|$')


if __name__ == '__main__':
    unittest.main()
