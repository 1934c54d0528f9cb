"""The KVM API as a user sees it: capabilities by name, named results,
errors that say what to do (Documentation/virt/kvm/api.rst, sections 4 and 8).

Every test here runs on real KVM; a capability this host lacks skips the
test naming the capability and its number.
"""

import errno
import fcntl
import subprocess
import sys
import unittest

import kvmlite as K
from tests.guest import requires_kvm, kvm


@requires_kvm
class CapabilityTest(unittest.TestCase):

    def test_check_extension_takes_a_name_a_member_or_a_number(self):
        k = kvm()
        value = k.check_extension(K.Cap.NR_MEMSLOTS)
        self.assertGreater(value, 0)
        for spelling in ('NR_MEMSLOTS', 'nr_memslots', 'KVM_CAP_NR_MEMSLOTS', 10):
            with self.subTest(spelling=spelling):
                self.assertEqual(k.check_extension(spelling), value)
        with k.create_vm() as vm:
            self.assertEqual(vm.check_extension('NR_MEMSLOTS'), vm.check_extension(10))

    def test_an_unknown_name_says_what_it_might_be(self):
        with self.assertRaisesRegex(K.KvmliteError, "no KVM capability named 'IRQCHIPP'.*IRQCHIP"):
            kvm().check_extension('IRQCHIPP')
        with self.assertRaises(TypeError):
            kvm().check_extension(1.5)

    def test_capabilities_hides_no_nonzero_number(self):
        # an independent probe, straight through fcntl, of every number
        k = kvm()
        raw = {n: fcntl.ioctl(k.fd, K.KVM_CHECK_EXTENSION, n) for n in range(K._CAP_PROBE)}
        caps = k.capabilities()
        self.assertEqual({int(c): v for c, v in caps.items()},
                         {n: v for n, v in raw.items() if v})
        for c in caps:
            if int(c) in K.Cap._value2member_map_:
                self.assertIsInstance(c, K.Cap)
            else:
                self.assertIs(type(c), int)
        # the seven the old, partial enum could not name, where the host has them
        for name in ('IRQCHIP', 'HLT', 'SYNC_MMU', 'DEBUGREGS', 'ONE_REG', 'SYNC_REGS',
                     'DEVICE_CTRL'):
            if k.check_extension(name):
                self.assertIn(K.Cap[name], caps)

    def test_info_lists_every_nonzero_capability(self):
        r = subprocess.run([sys.executable, K.__file__, 'info'], capture_output=True,
                           text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        start = lines.index('capabilities:') + 1
        shown = {}
        for line in lines[start:]:
            if not line.startswith('  '):
                break
            name, value = line.split()[0], int(line.split()[-1])
            shown[name] = value
        expected = {K.cap_name(c): v for c, v in kvm().capabilities().items()}
        self.assertEqual(shown, expected)
        self.assertIn('IRQCHIP', shown)

    def test_enable_cap_names_the_capability_it_failed_on(self):
        with kvm().create_vm() as vm:
            with self.assertRaisesRegex(K.KvmError, r'KVM_ENABLE_CAP\(S390_PSW\)'):
                vm.enable_cap('S390_PSW')
            with self.assertRaisesRegex(K.KvmError, r'KVM_ENABLE_CAP\(499\)'):
                vm.enable_cap(499)


if __name__ == '__main__':
    unittest.main()
