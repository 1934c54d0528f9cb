"""The virtio queue threads of the board (tools/pc.py, _VirtioWorker): which
devices get one in which irqchip mode, a notification KVM has signalled
but no thread has taken is served before a snapshot saves the devices, and
closing the machine leaves no descriptor behind. Real KVM; the guests that
notify through them are in tests/test_virtio_guest.py and
tests/test_virtio_console_guest.py."""

import os
import unittest

import kvmlite
from devices.console import MemoryBackend
from devices.virtio_blk import BytesDisk, SECTOR, T_IN
from tests.guest import kvm, requires_kvm
from tests.virtio_driver import Driver
from tools.layout import PC


def machine(mode='split', **kw):
    disk = BytesDisk(bytes(range(256)) * 8)
    return kvmlite.Machine(mem_size=16 << 20, irqchip=mode, kvm=kvm(), disks=[disk],
                           console=MemoryBackend(), **kw)


def driver_for(m, name):
    """tests/virtio_driver.Driver over the machine's own device and RAM."""
    d = Driver.__new__(Driver)
    d.buf = m.vm.slots[0].view
    d.memory = m.devices[name].memory
    d.irq = m.devices[name].irq
    d.dev = m.devices[name]
    d.next_buf, d.avail_idx, d.free, d.last_used, d.num = 0x80000, {}, {}, {}, {}
    return d


@requires_kvm
class WorkerTests(unittest.TestCase):

    def test_which_devices_get_a_queue_thread(self):
        for mode, want in (('split', {'vda', 'virtio_console'}), ('kernel', {'vda', 'virtio_console'}),
                           ('user', set())):
            with self.subTest(mode=mode), machine(mode, console_device='hvc') as m:
                self.assertEqual(set(m.workers), want)      # not the empty slots
                self.assertEqual(set(m._irqfds), want)
                # split: a GSI of its own past the IOAPIC's pins; kernel: the ISA GSI
                gsis = {n: PC.device(n).irq if mode == 'kernel' else
                        PC.ioapic_pins + [s.name for s in PC.devices].index(n)
                        for n in want}
                self.assertEqual(m._irqfd_gsi, gsis)
                # every pin starts masked: no route for a split-mode irqfd yet
                self.assertEqual(m._irqfd_live, set())
        with machine('split', ioeventfd=False) as m:
            self.assertEqual(m.workers, {})
            self.assertEqual(m._irqfds, {})
        with machine('split', irqfd=False) as m:
            self.assertEqual(set(m.workers), {'vda'})
            self.assertEqual(m._irqfds, {})

    def test_a_signalled_notification_is_served_before_a_snapshot_saves_it(self):
        with machine() as m:
            d = driver_for(m, 'vda')
            with m.vm.lock:
                d.start()
                header, n = d.alloc(bytes(16))          # IN, sector 0
                data = d.alloc(SECTOR)
                status = d.alloc(1)
                d.buf[header:header + 4] = T_IN.to_bytes(4, 'little')
                d.submit(0, [(header, n, False), (data[0], SECTOR, True), (status[0], 1, True)],
                         notify=False)
            # what KVM does for the guest's QueueNotify write: signal the eventfd
            os.eventfd_write(m.workers['vda'].fds[0], 1)
            self.assertEqual(m.vda.reads, 0)            # no thread runs between runs
            cp = m.checkpoint()
            self.assertEqual(cp.state['devices']['vda']['device']['reads'], 1)
            self.assertEqual(bytes(d.buf[data[0]:data[0] + SECTOR]), bytes(range(256)) * 2)
            self.assertEqual(d.used(0), [(0, SECTOR + 1)])
            self.assertEqual(m.workers['vda'].notified, 1)

    def test_a_restored_hvc0_console_is_wired_and_served_again(self):
        import io
        f = io.BytesIO()
        with machine('kernel', console_device='hvc') as m:
            m.snapshot(f)
        f.seek(0)
        disk = BytesDisk(bytes(range(256)) * 8)
        with kvmlite.Machine.restore(f, console=MemoryBackend(), kvm=kvm(), disks=[disk]) as r:
            self.assertEqual(r.console_device, 'hvc')
            self.assertTrue(r.virtio_console.present)
            self.assertIs(r._console_in, r.virtio_console)
            self.assertIn('virtio_console', r.workers)
            self.assertIn('virtio_console', r._irqfds)

    def test_close_leaves_no_descriptor(self):
        with machine('kernel', console_device='hvc'):
            pass                                        # the first VM's one-time fds
        before = set(os.listdir('/proc/self/fd'))
        with machine('kernel', console_device='hvc') as m:
            self.assertTrue(m.workers)
        self.assertEqual(set(os.listdir('/proc/self/fd')), before)


if __name__ == '__main__':
    unittest.main()
