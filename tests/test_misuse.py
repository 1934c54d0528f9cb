"""The library refuses misuse: it raises, never truncates, never hangs.

Each test reproduces a mistake a user made with the real library on real
KVM: a negative size, a value wider than the ABI's field, a register name
that does not exist, a call on a closed object, a second run of a vCPU (or
Snippet, or Machine) that is already running, and a GSI-routing update for
an IOAPIC write that changes no route."""

import tempfile
import threading
import time
import unittest

import kvmlite as K
from tests.guest import Guest, requires_kvm

PAGE = 4096


@requires_kvm
class MemoryTest(unittest.TestCase):
    def test_a_negative_read_size_raises(self):
        with K.Kvm() as kvm, kvm.create_vm() as vm:
            vm.add_memory(0, 1 << 20)
            for addr, size in ((0, -5), (-4096, 16)):
                with self.subTest(addr=addr, size=size):
                    with self.assertRaises(K.GuestMemoryError):
                        vm.read(addr, size)
            with self.assertRaises(K.GuestMemoryError):
                vm.write(-1, b'x')

    def test_sizes_past_the_abis_range_raise_instead_of_truncating(self):
        with K.Kvm() as kvm, kvm.create_vm() as vm:
            for gpa, size in ((0, 1 << 64), (1 << 63, 1 << 63), ((1 << 64) - PAGE, 2 * PAGE)):
                with self.subTest(gpa=hex(gpa), size=hex(size)):
                    with self.assertRaisesRegex(K.GuestMemoryError, '64-bit|host mapping'):
                        vm.add_memory(gpa, size)
            self.assertEqual(vm.slots, [])


@requires_kvm
class RegisterTest(unittest.TestCase):
    def test_set_regs_refuses_wide_values_and_unknown_names(self):
        with Guest('hlt') as g:
            with self.assertRaisesRegex(ValueError, 'rax'):
                g.vcpu.set_regs(rax=1 << 70)
            with self.assertRaisesRegex(TypeError, "'bogus'"):
                g.vcpu.set_regs(bogus=1)
            g.vcpu.set_regs(rax=-1, rbx=(1 << 64) - 2)      # two's complement and u64 both fit
            regs = g.vcpu.get_regs()
            self.assertEqual((regs.rax, regs.rbx), ((1 << 64) - 1, (1 << 64) - 2))

    def test_snippet_reg_write_refuses_what_the_register_cannot_hold(self):
        with K.Snippet('long64', 3) as s:
            for name, value in (('rax', 2 ** 65 + 5), ('eax', 1 << 32), ('al', 256), ('cr0', 1 << 64)):
                with self.subTest(name=name):
                    with self.assertRaisesRegex(ValueError, name):
                        s.reg_write(name, value)
            s.reg_write('eax', -1)
            self.assertEqual(s.reg_read('eax'), 0xFFFFFFFF)


@requires_kvm
class ClosedTest(unittest.TestCase):
    def test_every_call_on_a_closed_vm_or_vcpu_raises_kvmlite_error(self):
        kvm = K.Kvm()
        self.addCleanup(kvm.close)
        vm = kvm.create_vm()
        vm.add_memory(0, 1 << 20)
        vcpu = vm.create_vcpu()
        vm.close()
        for what, call in (('read', lambda: vm.read(0, 4)), ('write', lambda: vm.write(0, b'1')),
                           ('add_memory', lambda: vm.add_memory(0x200000, PAGE)),
                           ('create_vcpu', vm.create_vcpu), ('irq_line', lambda: vm.irq_line(4, 1)),
                           ('get_regs', vcpu.get_regs), ('set_regs', lambda: vcpu.set_regs(rax=1)),
                           ('get_sregs', vcpu.get_sregs), ('run', vcpu.run),
                           ('run_loop', vcpu.run_loop)):
            with self.subTest(what):
                with self.assertRaisesRegex(K.KvmliteError, 'closed'):
                    call()

    def test_every_call_on_a_closed_snippet_raises_kvmlite_error(self):
        s = K.Snippet('long64', 0)
        s.close()
        for what, call in (('reg_read', lambda: s.reg_read('rax')),
                           ('reg_write', lambda: s.reg_write('rax', 1)),
                           ('mem_write', lambda: s.mem_write(0x1000, b'\x90')),
                           ('mem_read', lambda: s.mem_read(0x1000, 1)),
                           ('run', lambda: s.run(b'\xf4'))):
            with self.subTest(what):
                with self.assertRaisesRegex(K.KvmliteError, 'closed'):
                    call()
        s.close()                   # closing twice is fine


@requires_kvm
class OneRunAtATimeTest(unittest.TestCase):
    SPIN = b'\xeb\xfe'              # jmp $

    def second_run_raises_while_first_runs(self, vcpu, first, second):
        """Start ``first`` in a thread; once ``vcpu`` runs, ``second`` must raise."""
        outcome = {}

        def target():
            outcome['first'] = first()
        t = threading.Thread(target=target)
        t.start()
        try:
            while not vcpu.running and t.is_alive():
                time.sleep(0.001)
            with self.assertRaisesRegex(K.KvmliteError, 'already running'):
                second()
        finally:
            t.join(60)
        self.assertFalse(t.is_alive())
        self.assertIn('first', outcome, 'the first run did not end by itself')
        return outcome['first']

    def test_a_second_snippet_run_raises_and_the_first_ends_at_its_timeout(self):
        with K.Snippet('long64', 3) as s:
            stop = self.second_run_raises_while_first_runs(
                s.vcpu, lambda: s.run(self.SPIN, timeout=2), lambda: s.run(b'\xf4', timeout=1))
            self.assertEqual(stop.reason, 'timeout')
            self.assertEqual(s.reg_read('rip'), K.SNIPPET_CODE_ADDR)   # still at the jmp

    def test_a_second_vcpu_run_raises_and_the_first_ends_at_its_timeout(self):
        with Guest('jmp $') as g:
            exit = self.second_run_raises_while_first_runs(
                g.vcpu, lambda: g.vcpu.run_loop(timeout=2), lambda: g.vcpu.run(timeout=1))
            self.assertIsInstance(exit, K.Interrupted)
            self.assertEqual(exit.why, 'timeout')

    def test_a_second_machine_run_raises_and_a_finished_guest_is_not_run_again(self):
        with K.Machine(mem_size=8 << 20, console=None) as m:
            m.vm.write(0x10000, b'\xeb\xfe')                    # jmp $ in real mode
            K.setup_mode(m.vm.vcpus[0], m.vm, 'real', 0, cs=0x1000)
            result = self.second_run_raises_while_first_runs(
                m.vm.vcpus[0], lambda: m.run(timeout=2), lambda: m.run(timeout=1))
            self.assertEqual(result.status, K.EXIT_TIMEOUT)
            # a timed-out run resumes; a guest that ended does not start again
            m.vm.write(0x10000, b'\xb0\x05\xe6\xf4')            # mov al, 5; out 0xf4, al
            self.assertEqual(m.run(timeout=30).status, 11)
            with self.assertRaisesRegex(K.KvmliteError, 'ended'):
                m.run(timeout=1)


    def test_a_failing_vcpu_thread_ends_the_run_and_says_where(self):
        # a bug in the board's exit handling must not leave the run going on
        # without the vCPU, nor print into a raw terminal
        with K.Machine(mem_size=8 << 20, irqchip='user', console=None) as m:
            m.vm.write(0x10000, b'\xfb\xf4\xeb\xfe')        # sti; hlt; jmp $ in real mode
            K.setup_mode(m.vm.vcpus[0], m.vm, 'real', 0, cs=0x1000)

            def broken(vcpu, exit):
                raise RuntimeError('boom')
            m._on_hlt = broken
            result = m.run(timeout=30)
            self.assertEqual(result.status, K.EXIT_VMM, result.reason)
            self.assertRegex(result.reason, r'vCPU 0 failed: RuntimeError: boom at test_misuse.py:\d+')

@requires_kvm
class IoapicRoutingTest(unittest.TestCase):
    def test_a_write_that_changes_no_route_costs_no_gsi_routing_ioctl(self):
        with K.Machine(mem_size=8 << 20, irqchip='split', console=None) as m:
            calls = []                  # the board gave KVM the reset state's routes already
            real = m.vm.set_gsi_routing
            m.vm.set_gsi_routing = lambda routes: (calls.append(len(routes)), real(routes))
            base = m.platform.ioapic_addr

            def write_entry(pin, low):
                m.vm.mmio.write(base, 4, 0x10 + 2 * pin)     # IOREGSEL: redirection entry, low
                m.vm.mmio.write(base + 0x10, 4, low)         # IOWIN

            write_entry(4, 0x8034)                          # level, vector 0x34, unmasked
            self.assertEqual(calls, [24])                   # one KVM_SET_GSI_ROUTING, every pin
            write_entry(4, 0x8034)                          # the same value again
            m.vm.mmio.write(base, 4, 0x01)                  # select and read the version
            m.vm.mmio.read(base + 0x10, 4)
            self.assertEqual(calls, [24])                   # no route changed: no ioctl
            write_entry(4, 0x8035)
            self.assertEqual(calls, [24, 24])


class DevKvmHintTest(unittest.TestCase):
    """The hint for a missing or inaccessible /dev/kvm fits the host."""

    def hint_for_cpu(self, flags):
        with tempfile.NamedTemporaryFile('w', suffix='cpuinfo') as f:
            f.write(f'processor\t: 0\nflags\t\t: fpu {flags} sse2\n')
            f.flush()
            return K._missing_kvm_hint(f.name)

    def test_a_missing_device_names_the_module_for_this_cpu(self):
        self.assertIn('modprobe kvm_intel', self.hint_for_cpu('vmx'))
        self.assertIn('modprobe kvm_amd', self.hint_for_cpu('svm'))
        self.assertIn('nested virtualization', self.hint_for_cpu('pae'))
        with self.assertRaisesRegex(K.KvmError, 'ENOENT.*KVM is not available'):
            K.Kvm('/nonexistent/kvm')

    def test_a_closed_device_names_its_group_only_if_that_group_exists_and_may_use_it(self):
        joined = K._kvm_access_hint('/dev/kvm', 0o20660, 108, 'kvm')
        self.assertIn('usermod -aG kvm', joined)
        for mode, gid, group in ((0o20660, 4242, None),      # a gid with no group name
                                 (0o20600, 108, 'kvm'),      # the group may not use it
                                 (0o20660, 0, 'root')):      # root's group: no one to join
            with self.subTest(mode=oct(mode), gid=gid):
                hint = K._kvm_access_hint('/dev/kvm', mode, gid, group)
                self.assertNotIn('usermod', hint)
                self.assertIn('setfacl -m u:$USER:rw /dev/kvm', hint)


if __name__ == '__main__':
    unittest.main()
