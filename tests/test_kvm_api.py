"""The KVM API as a user sees it: capabilities by name, named results,
errors that say what to do (Documentation/virt/kvm/api.rst, sections 4 and 8).

Every test here runs on real KVM; a capability this host lacks skips the
test naming the capability and its number.
"""

import errno
import fcntl
import inspect
import os
import re
import subprocess
import sys
import unittest

import kvmlite as K
from tests.guest import DATA, Guest, requires_kvm, kvm


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


@requires_kvm
class NamedResultTest(unittest.TestCase):

    def test_exit_counts_are_keyed_by_exit_name(self):
        with Guest('mov dx, 0x3f8\nmov al, 0x41\nout dx, al\nhlt') as g:
            g.expect(K.IoOut, port=0x3F8)
            g.expect(K.Hlt)
            counts = g.vm.exit_counts
            self.assertEqual(set(counts), {K.ExitReason.IO, K.ExitReason.HLT})
            self.assertTrue(all(type(k) is K.ExitReason for k in counts))
            self.assertIn('HLT', repr(counts))
            self.assertEqual(counts[5], 1)                  # an old int lookup still works
            self.assertEqual(counts[K.ExitReason.IO], 1)

    def test_mp_state_is_an_enum(self):
        with Guest('hlt', irqchip='kernel') as g:
            state = g.vcpu.get_mp_state()
            self.assertIs(state, K.MpState.RUNNABLE)
            g.vcpu.set_mp_state(K.MpState.HALTED)
            self.assertIs(g.vcpu.get_mp_state(), K.MpState.HALTED)
            self.assertEqual(g.vcpu.get_mp_state(), K.KVM_MP_STATE_HALTED)

    def test_translate_is_a_named_tuple(self):
        with Guest() as g:
            t = g.vcpu.translate(DATA + 0x10)
            self.assertIsInstance(t, K.Translation)
            self.assertEqual((t.physical, t.valid, t.writeable, t.usermode),
                             (DATA + 0x10, True, True, False))
            self.assertEqual(t, (DATA + 0x10, True, True, False))


@requires_kvm
class ErrorHintTest(unittest.TestCase):
    """The errors api.rst (or KVM's checks) explain say what to do."""

    def assertHint(self, call, err, text):
        with self.assertRaises(K.KvmError) as cm:
            call()
        self.assertEqual(cm.exception.errno, err, str(cm.exception))
        self.assertIn(text, str(cm.exception))

    def test_run_without_memory(self):
        with kvm().create_vm() as vm:
            cpu = vm.create_vcpu()
            with self.assertRaises(K.KvmError) as cm:
                cpu.run(timeout=10)
            self.assertIn(cm.exception.errno, (errno.ENOSPC, errno.EFAULT))
            self.assertRegex(str(cm.exception), r'^KVM_RUN failed: .*add memory first')

    def test_lapic_without_irqchip(self):
        with kvm().create_vm() as vm:
            cpu = vm.create_vcpu()
            self.assertHint(cpu.get_lapic, errno.EINVAL, 'create the irqchip first')
            self.assertHint(lambda: cpu.set_lapic(K.kvm_lapic_state()), errno.EINVAL,
                            'create the irqchip first')
        with kvm().create_vm() as vm:       # and with it, the same call works
            vm.create_split_irqchip()
            self.assertEqual(len(bytes(vm.create_vcpu().get_lapic())), K.KVM_APIC_REG_SIZE)

    def test_pit_before_irqchip(self):
        with kvm().create_vm() as vm:
            self.assertHint(vm.create_pit2, errno.ENOENT, 'create the irqchip first')
            self.assertHint(vm.get_pit2, errno.ENXIO, 'no in-kernel PIT')
            vm.create_irqchip()
            self.assertHint(vm.get_pit2, errno.ENXIO, 'vm.create_pit2()')
            vm.create_pit2()
            self.assertIsInstance(vm.get_pit2(), K.kvm_pit_state2)   # now it is there

    def test_irq_line_and_irqchip_state_without_irqchip(self):
        with kvm().create_vm() as vm:
            self.assertHint(lambda: vm.irq_line(4, 1), errno.ENXIO, 'create the irqchip first')
            self.assertHint(lambda: vm.get_irqchip(0), errno.ENXIO, 'create the irqchip first')
            self.assertHint(lambda: vm.signal_msi(0xFEE00000, 0x30), errno.EINVAL,
                            'create the irqchip first')

    def test_irqchip_order(self):
        with kvm().create_vm() as vm:
            vm.create_vcpu()
            self.assertHint(vm.create_irqchip, errno.EINVAL, 'before the vCPUs')
            self.assertHint(lambda: vm.create_vcpu(0), errno.EEXIST, 'a vCPU with that index')
        with kvm().create_vm() as vm:
            vm.create_irqchip()
            self.assertHint(vm.create_irqchip, errno.EEXIST, 'already has an irqchip')
            self.assertHint(lambda: vm.create_vcpu().interrupt(0x30), errno.ENXIO,
                            'vm.irq_line()')

    def test_dirty_log_of_a_slot_without_logging(self):
        with kvm().create_vm() as vm:
            slot = vm.add_memory(0, 0x10000)
            self.assertHint(lambda: vm.get_dirty_log(slot), errno.ENOENT, 'dirty_log=True')


class ApiDocTest(unittest.TestCase):
    """docs/api.md lists every ioctl kvmlite defines, with calls that exist."""

    DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                       'api.md')

    def test_every_ioctl_is_listed(self):
        with open(self.DOC) as f:
            doc = f.read()
        ioctls = {n for n, v in vars(K).items() if n.startswith('KVM_') and isinstance(v, int)
                  and v > 0xFF and (v >> 8) & 0xFF == K.KVMIO}
        self.assertGreater(len(ioctls), 100)
        self.assertEqual(sorted(n for n in ioctls if n not in doc), [])

    def test_every_call_it_names_exists(self):
        with open(self.DOC) as f:
            doc = f.read()
        owners = {'kvm': K.Kvm, 'vm': K.Vm, 'cpu': K.Vcpu, 'dev': K.Device}
        calls = re.findall(r'`(kvm|vm|cpu|dev)\.(\w+)', doc)
        self.assertGreater(len(calls), 100)
        for owner, name in calls:
            with self.subTest(call=f'{owner}.{name}'):
                cls = owners[owner]     # a method, a property, or set in __init__
                self.assertTrue(hasattr(cls, name) or
                                f'self.{name} =' in inspect.getsource(cls.__init__))


if __name__ == '__main__':
    unittest.main()
