"""tools/msrs.py: a guest reads and writes back the common MSRs under
kvmlite (real KVM) and, when it is installed, under QEMU; the two agree
but for the MSRs tools.msrs.KNOWN lists (QEMU's own settings)."""

import os
import shutil
import tempfile
import unittest

from tests.guest import requires_kvm
from tools import msrs

EFER, APIC_BASE = 0xC0000080, 0x1B


def _image(table):
    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, 'msrs.mb')
    with open(path, 'wb') as f:
        f.write(msrs.build_guest(table))
    return tmp, path


class ParseTest(unittest.TestCase):
    def test_lines_and_an_unfinished_run(self):
        got = msrs.parse('msr 0000001b r 00000000fee00900 w ok\nmsr c0000103 r GP\n'
                         'msr 000000fe r 0000000000000508 w GP\nend\n')
        self.assertEqual(got, {0x1B: (0xFEE00900, True), 0xC0000103: (None, None),
                               0xFE: (0x508, False)})
        with self.assertRaisesRegex(ValueError, 'did not finish'):
            msrs.parse('msr 0000001b r 00000000fee00900 w ok\n')

    def test_diff_kinds(self):
        a = {1: (5, True), 2: (None, None), 0x10: (7, True), 3: (1, True)}
        b = {1: (5, True), 2: (9, False), 0x10: (8, True), 3: (1, False)}
        self.assertEqual([(m, k) for m, k, _, _ in msrs.diff(a, b)],
                         [(2, 'fault'), (3, 'fault'), (0x10, 'volatile')])


@requires_kvm
class GuestTest(unittest.TestCase):
    def setUp(self):
        self.table = msrs.msr_table()
        self.tmp, self.path = _image(self.table)
        self.addCleanup(self.tmp.cleanup)

    def test_under_kvmlite(self):
        got = msrs.parse(msrs.run_kvmlite(self.path))
        self.assertEqual(set(got), set(self.table))
        self.assertEqual(got[msrs.NOWHERE], (None, None))               # the #GP handler works
        self.assertTrue(got[EFER][1])
        self.assertEqual(got[APIC_BASE][0] & ~0xFFF, 0xFEE00000)
        self.assertTrue(got[APIC_BASE][0] & 1 << 8)                     # the BSP
        self.assertTrue(got[APIC_BASE][1])                              # the same value back

    @unittest.skipUnless(shutil.which('qemu-system-x86_64'),
                         'no qemu-system-x86_64 (Debian: qemu-system-x86)')
    def test_kvmlite_and_qemu_agree_but_for_the_known_msrs(self):
        mine = msrs.parse(msrs.run_kvmlite(self.path))
        theirs = msrs.parse(msrs.run_qemu(self.path))
        self.assertEqual(theirs[msrs.NOWHERE], (None, None))
        unexplained = [row for row in msrs.diff(mine, theirs)
                       if row[1] != 'volatile' and row[0] not in msrs.KNOWN]
        self.assertEqual(unexplained, [])


if __name__ == '__main__':
    unittest.main()
