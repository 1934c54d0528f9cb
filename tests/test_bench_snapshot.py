"""tools/bench_snapshot.py: its quick table comes out, with a row per case,
and every reset it times gave the guest its checkpoint back (the tool checks
that itself and raises otherwise). No time is asserted."""

import io
import unittest

from tests.guest import requires_kvm
from tools import bench_snapshot


@requires_kvm
class BenchSnapshotTest(unittest.TestCase):
    def test_the_quick_table_has_both_cases(self):
        out = io.StringIO()
        self.assertEqual(bench_snapshot.main(['--quick'], out=out), 0)
        text = out.getvalue()
        self.assertIn('16 pages', text)
        self.assertIn('16 MiB', text)
        self.assertEqual(text.count('the dirty log'), 2, text)
        self.assertEqual(text.count('snapshot file'), 2, text)


if __name__ == '__main__':
    unittest.main()
