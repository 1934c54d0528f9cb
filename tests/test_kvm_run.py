"""Running vCPUs under real KVM: timeouts that stop a spinning guest in
kernel and in user mode, kicks from another thread, two vCPUs at once, and
the life cycle (closing leaks no fd; errors name the ioctl and errno)
(Documentation/virt/kvm/api.rst: KVM_RUN, immediate_exit, KVM_CREATE_VCPU)."""

import errno
import threading
import time
import unittest

import kvmlite as K
from tests.guest import DATA, Guest, check_exit, kvm, open_fds, requires_kvm

SPIN = '''
    mov rdi, 0x20000
    mov byte ptr [rdi], 1          ; tell the host we run
spin:
    inc rax
    jmp spin
'''


def wait_for(predicate, limit=10.0):
    """Poll ``predicate`` until true (a bound, not a timing: fails after ``limit`` s)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'gave up after {limit} s waiting for {predicate}')
        time.sleep(0.001)


@requires_kvm
class TimeoutTest(unittest.TestCase):

    def test_timeout_stops_a_spinning_guest_in_kernel_mode(self):
        with Guest(SPIN) as g:
            exit = g.vcpu.run(timeout=0.1)
            check_exit(g.vcpu, exit, K.Interrupted, why='timeout')
            regs, sregs = g.vcpu.get_regs(), g.vcpu.get_sregs()
            self.assertIn(regs.rip, (g.labels['spin'], g.labels['spin'] + 3))
            self.assertEqual(sregs.cs.selector & 3, 0)
            self.assertEqual(g.vm.read_int(DATA, 1), 1)
            # the vCPU runs on after a timeout
            count = regs.rax
            check_exit(g.vcpu, g.vcpu.run(timeout=0.1), K.Interrupted, why='timeout')
            self.assertGreater(g.vcpu.get_regs().rax, count)

    def test_timeout_stops_a_spinning_guest_in_user_mode(self):
        with Guest(SPIN, mode='user64') as g:
            exit = g.vcpu.run(timeout=0.1)
            check_exit(g.vcpu, exit, K.Interrupted, why='timeout')
            sregs = g.vcpu.get_sregs()
            self.assertEqual((sregs.cs.selector & 3, sregs.cs.dpl), (3, 3))
            self.assertIn(g.vcpu.get_regs().rip, (g.labels['spin'], g.labels['spin'] + 3))
            self.assertEqual(g.vm.read_int(DATA, 1), 1)

    def test_run_loop_timeout_stops_a_guest_that_keeps_doing_io(self):
        code = '''
        again:
            out 0x10, al
            jmp again
        '''
        with Guest(code) as g:
            exit = g.vcpu.run_loop(timeout=0.1)
            check_exit(g.vcpu, exit, K.Interrupted, why='timeout')
            self.assertGreater(g.vm.pio.unclaimed[0x10], 0)


@requires_kvm
class KickTest(unittest.TestCase):

    def test_kick_from_another_thread_stops_the_run(self):
        with Guest(SPIN) as g:
            def kicker():
                wait_for(lambda: g.vm.read_int(DATA, 1) == 1)
                g.vcpu.kick()
            t = threading.Thread(target=kicker)
            t.start()
            try:
                exit = g.vcpu.run(timeout=10)
            finally:
                t.join()
            check_exit(g.vcpu, exit, K.Interrupted, why='kick')

    def test_kick_before_the_run_returns_at_once_and_the_next_run_goes_on(self):
        with Guest('mov al, 9\nout 0x10, al\nhlt') as g:
            g.vcpu.kick('stop')
            g.expect(K.Interrupted, why='stop')
            self.assertEqual(g.vcpu.get_regs().rip, 0x10000)      # nothing ran
            g.expect(K.IoOut, value=9)

    def test_two_vcpus_run_at_once(self):
        # each vCPU raises its flag and spins until it sees the other's: one
        # cannot finish unless the other runs while it is still inside KVM_RUN
        code = f'''
            mov rdi, {DATA}
            mov byte ptr [rdi + rbx], 1
            xor rbx, 1
        wait:
            pause
            cmp byte ptr [rdi + rbx], 0
            je wait
            mov eax, ebx
            out 0x10, al
            hlt
        '''
        with Guest(code, vcpus=2) as g:
            for i, vcpu in enumerate(g.vm.vcpus):
                vcpu.set_regs(rbx=i)
            exits = {}
            threads = [threading.Thread(target=lambda v=v: exits.__setitem__(v.index, v.run(timeout=10)))
                       for v in g.vm.vcpus]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for vcpu in g.vm.vcpus:
                check_exit(vcpu, exits[vcpu.index], K.IoOut, port=0x10, value=1 - vcpu.index)
            self.assertEqual(g.vm.read(DATA, 2), b'\x01\x01')


@requires_kvm
class LifeCycleTest(unittest.TestCase):

    def test_closing_vm_and_vcpus_leaks_no_file_descriptor(self):
        kvm()                                   # the shared /dev/kvm fd stays open
        before = open_fds()
        g = Guest('out 0x10, al\nhlt', irqchip='split', vcpus=2)
        g.vm.add_memory(0x400000, 0x4000, dirty_log=True)
        g.expect(K.IoOut)
        g.vcpu.stats()
        g.vm.stats()
        self.assertGreaterEqual(open_fds(), before + 5)    # vm, 2 vcpus, 2 stats fds
        g.vm.vcpus[1].close()
        g.vm.vcpus[1].close()                    # twice is harmless
        g.close()
        g.close()
        self.assertEqual(open_fds(), before)

    def test_failed_ioctls_name_the_ioctl_and_the_errno(self):
        with Guest() as g:
            with self.assertRaises(K.KvmError) as cm:
                g.vm.get_irqchip(K.KVM_IRQCHIP_PIC_MASTER)   # no in-kernel irqchip
            self.assertEqual(cm.exception.errno, errno.ENXIO)
            self.assertRegex(str(cm.exception),
                             r'^KVM_GET_IRQCHIP failed: ENXIO \(No such device or address\); '
                             'this VM has no in-kernel PIC and IOAPIC: create the irqchip first')
            with self.assertRaisesRegex(K.KvmError, r'^KVM_CREATE_VCPU failed: EEXIST'):
                g.vm.create_vcpu(0)                  # index 0 exists
            with self.assertRaisesRegex(OSError, r'^KVM_ENABLE_CAP\(SPLIT_IRQCHIP\) failed: E'):
                g.vm.create_split_irqchip()          # after vCPUs exist

    def test_a_missing_device_node_is_an_error_that_says_what_to_do(self):
        with self.assertRaises(K.KvmError) as cm:
            K.Kvm('/nonexistent/kvm')
        self.assertEqual(cm.exception.errno, errno.ENOENT)
        self.assertIn('opening /nonexistent/kvm failed: ENOENT', str(cm.exception))
        self.assertIn('KVM is not available', str(cm.exception))

    def test_a_node_that_is_not_kvm_is_refused_and_closed(self):
        # regression: the fd leaked when KVM_GET_API_VERSION failed
        before = open_fds()
        with self.assertRaisesRegex(K.KvmError, r'^KVM_GET_API_VERSION on /dev/null failed: ENOTTY'):
            K.Kvm('/dev/null')
        self.assertEqual(open_fds(), before)


if __name__ == '__main__':
    unittest.main()
