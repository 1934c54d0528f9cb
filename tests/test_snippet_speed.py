"""How a Snippet reaches KVM, counted rather than timed (a loaded host
breaks wall-clock bounds; tools/bench_snippet.py has the figures): with
KVM_CAP_SYNC_REGS a reused run (write code, two registers, run, read two
registers) is one KVM_RUN and nothing else, registers go through kvm_run's
sync area, and the Vcpu's register calls stay coherent with the ioctls
that change the same state."""

import collections
import fcntl
import threading
import unittest
from unittest import mock

import kvmlite as K
from kvmlite import SnippetTestCase
from tools.asm import assemble

CODE = K.SNIPPET_CODE_ADDR


def counting_ioctls():
    """A patch of fcntl.ioctl as kvmlite calls it, and the Counter it fills."""
    counts = collections.Counter()
    real = fcntl.ioctl

    def ioctl(fd, request, *args):
        counts[K._IOCTL_NAMES.get(request, hex(request))] += 1
        return real(fd, request, *args)
    return mock.patch.object(K.fcntl, 'ioctl', ioctl), counts


class ReusedRunCases:
    def setUp(self):
        super().setUp()
        if not self.snippet._synced:
            self.skipTest('KVM here does not offer KVM_CAP_SYNC_REGS with regs, sregs and events')

    def test_a_reused_run_is_one_kvm_run_and_no_other_ioctl(self):
        s = self.snippet
        code = assemble('mov eax, ebx\nadd eax, ecx\nhlt', bits=64, origin=CODE)
        s.run(code)                              # the first run writes the page tables
        patch, counts = counting_ioctls()
        with patch:
            for i in range(3):
                s.mem_write(CODE, code)
                s.reg_write('rbx', 40 + i)
                s.reg_write('rcx', 2)
                stop = s.run(CODE)
                self.assertEqual((stop.reason, s.reg_read('rax'), s.reg_read('rbx')),
                                 ('hlt', 42 + i, 40 + i), str(stop))
        self.assertEqual(dict(counts), {'KVM_RUN': 3})

    def test_an_exception_stop_unwinds_through_the_sync_area(self):
        s = self.snippet
        s.reg_write('rsp', 0x8000)
        patch, counts = counting_ioctls()
        with patch:
            stop = s.run(assemble('push 1\nud2', bits=64, origin=CODE))
        self.assertEqual((stop.reason, stop.vector, stop.rip), ('exception', 6, CODE + 2))
        self.assertEqual(s.reg_read('rsp'), 0x7FF8)
        self.assertEqual(s.reg_read('cs') & 3, self.cpl)
        self.assertEqual(dict(counts), {'KVM_RUN': 1})

    def both_paths(self, text, **run):
        """(Stop, rax, rsp, rip, cs) of ``text`` run by run()'s fast path and by
        the general one (_go), each from the same registers."""
        s = self.snippet
        code = assemble(text, bits=64, origin=CODE)
        out = []
        for fast in (True, False):
            s._fast = fast
            try:
                s.reg_write('rax', 7)
                s.reg_write('rsp', 0x8000)
                stop = s.run(code, **run)
            finally:
                s._fast = True
            out.append((stop, s.reg_read('rax'), s.reg_read('rsp'), s.reg_read('rip'),
                        s.reg_read('cs')))
        return out

    def test_the_fast_path_stops_as_the_general_one_does(self):
        cases = ['inc rax\nhlt', 'push rax\nud2', 'mov rax, [0xdead000]', 'int3\nhlt',
                 'syscall\nhlt', 'cli\nhlt', 'mov cr0, rax\nhlt']
        for text in cases:
            with self.subTest(text=text):
                fast, general = self.both_paths(text)
                self.assertEqual(fast, general)
                self.assertEqual(fast[-1] & 3, self.cpl)

    def test_a_timeout_longer_than_the_watchdog_wait_still_fires(self):
        # the watchdog waits for the first deadline; a later one is stored
        # without waking it, and it must find that one when it wakes
        s = self.snippet
        hang = threading.Timer(20, s.stop)          # (a lost deadline must not hang the suite)
        hang.start()
        try:
            self.assertEqual(s.run(assemble('hlt', bits=64, origin=CODE), timeout=0.2).reason,
                             'hlt')
            stop = s.run(assemble('jmp $', bits=64, origin=CODE), timeout=0.5)
        finally:
            hang.cancel()
        self.assertEqual((stop.reason, stop.rip), ('timeout', CODE))
        # and the kick is spent: the next run goes to its hlt
        self.assertEqual(s.run(assemble('inc rax\nhlt', bits=64, origin=CODE)).reason, 'hlt')

    def test_stop_from_another_thread_ends_a_fast_run(self):
        s = self.snippet
        threading.Timer(0.1, s.stop).start()
        stop = s.run(assemble('jmp $', bits=64, origin=CODE), timeout=20)
        self.assertEqual((stop.reason, stop.rip), ('stopped', CODE))


class UserReusedRunTest(ReusedRunCases, SnippetTestCase):
    mode, cpl = 'long64', 3


class KernelReusedRunTest(ReusedRunCases, SnippetTestCase):
    mode, cpl = 'long64', 0


class VcpuSyncRegsTest(unittest.TestCase):
    """Vcpu.enable_sync_regs: get/set through kvm_run, coherent with the MSR
    ioctls (EFER lives in the sregs too)."""

    def setUp(self):
        reason = K.kvm_unavailable()
        if reason:
            self.skipTest(reason)
        self.vm = K.Kvm().create_vm()
        self.addCleanup(self.vm.kvm.close)
        self.addCleanup(self.vm.close)
        self.vm.add_memory(0, 0x10000)
        self.vcpu = self.vm.create_vcpu()
        if not self.vcpu.enable_sync_regs():
            self.skipTest('KVM here does not offer KVM_CAP_SYNC_REGS with regs, sregs and events')

    def test_registers_set_in_the_area_reach_the_guest_and_come_back(self):
        v = self.vcpu
        self.vm.write(0x1000, assemble('add ax, bx\nhlt', bits=16, origin=0x1000))
        K.setup_mode(v, self.vm, 'real', 0x1000)
        v.set_regs(rax=40, rbx=2)
        patch, counts = counting_ioctls()
        with patch:
            self.assertIsInstance(v.run(), K.Hlt)
            regs = v.get_regs()
        self.assertEqual((regs.rax, regs.rip), (42, 0x1003))
        self.assertEqual(dict(counts), {'KVM_RUN': 1})

    def test_a_dirty_area_is_pushed_before_an_msr_write_and_read_back_after(self):
        v = self.vcpu
        s = v.get_sregs()
        s.cr0 |= K.CR0_PE
        v.set_sregs(s)                        # dirty, not yet in KVM
        v.set_msrs({0xC0000080: K.EFER_SCE})  # EFER: KVM now has it, and the area shows it
        s = v.get_sregs()
        self.assertTrue(s.cr0 & K.CR0_PE)
        self.assertEqual(s.efer & K.EFER_SCE, K.EFER_SCE)
        self.assertEqual(v.get_msrs([0xC0000080])[0xC0000080] & K.EFER_SCE, K.EFER_SCE)


if __name__ == '__main__':
    unittest.main()
