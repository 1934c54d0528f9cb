"""virtio-mmio transport, split virtqueues, virtio-rng and virtio-blk as
state machines: a Python driver (tests/virtio_driver.py) drives the
registers and builds queues in a bytearray-backed guest memory. No KVM."""

import os
import struct
import tempfile
import unittest

from devices import virtio_mmio as vm
from devices.virtio_blk import (
    BytesDisk, DiskError, DiskImage, F_FLUSH, F_RO, ID_BYTES, S_IOERR, S_OK, S_UNSUPP, SECTOR,
    T_FLUSH, T_GET_ID, T_IN, T_OUT, T_WRITE_ZEROES, VirtioBlk)
from devices.virtio_rng import VirtioRng
from tests.virtio_driver import Driver


def counting_entropy():
    state = {'n': 0}

    def entropy(n):
        out = bytes((state['n'] + i) & 0xFF for i in range(n))
        state['n'] += n
        return out
    return entropy


class TransportTests(unittest.TestCase):

    def rng(self):
        return Driver(VirtioRng, entropy=counting_entropy())

    def test_rng_without_a_source_is_a_placeholder(self):
        d = Driver(VirtioRng)
        self.assertEqual((d.r(vm.DEVICE_ID), d.r(vm.QUEUE_NUM_MAX)), (0, 0))

    def test_identification_registers(self):
        d = self.rng()
        self.assertEqual(d.r(vm.MAGIC_VALUE), 0x74726976)
        self.assertEqual(d.r(vm.VERSION_REG), 2)
        self.assertEqual(d.r(vm.DEVICE_ID), 4)
        self.assertEqual(d.r(vm.QUEUE_NUM_MAX), 256)
        d.w(vm.QUEUE_SEL, 1)                     # no second queue
        self.assertEqual(d.r(vm.QUEUE_NUM_MAX), 0)

    def test_feature_negotiation_needs_version_1(self):
        d = self.rng()
        offered = d.features()
        self.assertTrue(offered & vm.F_VERSION_1)
        self.assertTrue(offered & vm.F_INDIRECT_DESC and offered & vm.F_EVENT_IDX)
        self.assertFalse(d.negotiate(offered & ~vm.F_VERSION_1))   # legacy driver: refused
        self.assertTrue(d.negotiate(vm.F_VERSION_1))
        self.assertEqual(d.dev.driver_features, vm.F_VERSION_1)

    def test_features_not_offered_are_dropped_and_frozen_after_features_ok(self):
        d = self.rng()
        self.assertTrue(d.negotiate(vm.F_VERSION_1 | (1 << 40) | 1))
        self.assertEqual(d.dev.driver_features, vm.F_VERSION_1)
        d.w(vm.DRIVER_FEATURES_SEL, 0)
        d.w(vm.DRIVER_FEATURES, vm.F_EVENT_IDX)         # after FEATURES_OK: ignored
        self.assertEqual(d.dev.driver_features, vm.F_VERSION_1)

    def test_narrow_register_access_is_ignored(self):
        d = self.rng()
        before = d.dev.ignored
        self.assertEqual(d.dev.read(vm.MAGIC_VALUE, 2), 0)
        d.dev.write(vm.STATUS, 1, vm.S_ACKNOWLEDGE)
        self.assertEqual(d.r(vm.STATUS), 0)
        self.assertEqual(d.dev.ignored, before + 2)

    def test_rng_fills_buffers_and_interrupts(self):
        d = self.rng()
        d.start()
        addr, n = d.alloc(16)
        head = d.submit(0, [(addr, n, True)])
        self.assertEqual(d.used(0), [(head, 16)])
        self.assertEqual(bytes(d.buf[addr:addr + 16]), bytes(range(16)))
        self.assertEqual(d.irq.level, 1)
        self.assertEqual(d.ack(), vm.INT_USED)
        self.assertEqual(d.irq.level, 0)
        self.assertEqual(d.r(vm.INTERRUPT_STATUS), 0)
        self.assertEqual(d.dev.given, 16)

    def test_indirect_descriptors(self):
        d = self.rng()
        d.start()
        a, _ = d.alloc(8)
        b, _ = d.alloc(8)
        head = d.submit(0, [(a, 8, True), (b, 8, True)], indirect=True)
        self.assertEqual(d.used(0), [(head, 16)])
        self.assertEqual(bytes(d.buf[a:a + 8]) + bytes(d.buf[b:b + 8]), bytes(range(16)))

    def test_indirect_needs_the_feature(self):
        d = self.rng()
        d.start(vm.F_VERSION_1)
        a, _ = d.alloc(8)
        d.submit(0, [(a, 8, True)], indirect=True)
        self.assertTrue(d.r(vm.STATUS) & vm.S_NEEDS_RESET)
        self.assertIn('INDIRECT', d.dev.last_refusal)

    def test_no_interrupt_flag_without_event_idx(self):
        d = self.rng()
        d.start(vm.F_VERSION_1)
        struct.pack_into('<H', d.buf, d.base(0) + 0x1000, 1)     # VRING_AVAIL_F_NO_INTERRUPT
        a, _ = d.alloc(4)
        d.submit(0, [(a, 4, True)])
        self.assertEqual(len(d.used(0)), 1)
        self.assertEqual(d.irq.level, 0)

    def test_event_idx_suppresses_until_used_event_passes(self):
        d = self.rng()
        d.start()
        self.assertTrue(d.dev.driver_features & vm.F_EVENT_IDX)
        d.set_used_event(0, 2)           # interrupt when used.idx passes 2 (the third buffer)
        for k in range(3):
            a, _ = d.alloc(4)
            d.submit(0, [(a, 4, True)])
            self.assertEqual(d.avail_event(0), k + 1)    # the device asks for the next kick
            self.assertEqual(d.irq.level, 1 if k == 2 else 0, f'buffer {k}')
        self.assertEqual(len(d.used(0)), 3)

    def test_several_chains_one_notify(self):
        d = self.rng()
        d.start()
        heads = []
        for _ in range(5):
            a, _ = d.alloc(2)
            heads.append(d.submit(0, [(a, 2, True)], notify=False))
        self.assertEqual(d.used(0), [])
        d.w(vm.QUEUE_NOTIFY, 0)
        self.assertEqual([h for h, _ in d.used(0)], heads)

    def test_config_generation_and_config_interrupt(self):
        d = self.rng()
        d.start()
        gen = d.r(vm.CONFIG_GENERATION)
        d.dev.config_changed()
        self.assertEqual(d.r(vm.CONFIG_GENERATION), gen + 1)
        self.assertEqual(d.ack(), vm.INT_CONFIG)

    def test_reset_clears_queues_features_and_interrupt(self):
        d = self.rng()
        d.start()
        a, _ = d.alloc(4)
        d.submit(0, [(a, 4, True)])
        self.assertEqual(d.irq.level, 1)
        d.w(vm.STATUS, 0)
        self.assertEqual((d.r(vm.STATUS), d.r(vm.INTERRUPT_STATUS), d.irq.level), (0, 0, 0))
        self.assertEqual(d.dev.driver_features, 0)
        d.w(vm.QUEUE_SEL, 0)
        self.assertEqual(d.r(vm.QUEUE_READY), 0)

    def test_queue_registers_frozen_while_ready(self):
        d = self.rng()
        d.start()
        d.w(vm.QUEUE_SEL, 0)
        d.w(vm.QUEUE_DESC_LOW, 0x40000)
        self.assertEqual(d.dev.queues[0].desc, d.base(0))

    def test_state_round_trip_mid_queue(self):
        d = self.rng()
        d.start()
        a, _ = d.alloc(4)
        d.submit(0, [(a, 4, True)])
        copy = VirtioRng.from_state(d.dev.state(), irq=d.irq, memory=d.memory,
                                    entropy=counting_entropy())
        self.assertEqual(copy.state(), d.dev.state())
        d.dev = copy
        b, _ = d.alloc(4)
        head = d.submit(0, [(b, 4, True)])
        self.assertEqual(d.used(0), [(0, 4), (head, 4)])


class HostileDriverTests(unittest.TestCase):
    """Chains that break the rules: refused with DEVICE_NEEDS_RESET, counted,
    never a hang, never an access outside RAM."""

    def setUp(self):
        self.d = Driver(VirtioRng, entropy=counting_entropy())
        self.d.start()

    def assert_refused(self, why):
        d = self.d
        self.assertTrue(d.r(vm.STATUS) & vm.S_NEEDS_RESET)
        self.assertEqual(d.dev.refused, 1)
        self.assertIn(why, d.dev.last_refusal)
        self.assertTrue(d.ack() & vm.INT_CONFIG)
        self.assertEqual(d.dev.check(), [])
        # nothing more is served until the driver resets the device
        a, _ = d.alloc(4)
        d.make_available(0, 0)
        self.assertEqual(d.dev.refused, 1)
        d.w(vm.STATUS, 0)
        self.assertEqual(d.r(vm.STATUS), 0)
        d.start()
        d.submit(0, [(a, 4, True)])
        self.assertEqual(len(d.used(0)), 1)

    def test_descriptor_loop(self):
        d = self.d
        a, _ = d.alloc(4)
        d.put_desc(0, 0, a, 4, vm.DESC_F_WRITE | vm.DESC_F_NEXT, 1)
        d.put_desc(0, 1, a, 4, vm.DESC_F_WRITE | vm.DESC_F_NEXT, 0)
        d.make_available(0, 0)
        self.assertEqual(d.used(0), [])
        self.assert_refused('longer than 256')

    def test_indirect_loop(self):
        d = self.d
        a, _ = d.alloc(4)
        table = d.next_buf
        d.next_buf += 32
        d.put_desc(0, 0, a, 4, vm.DESC_F_WRITE | vm.DESC_F_NEXT, 1, table=table)
        d.put_desc(0, 1, a, 4, vm.DESC_F_WRITE | vm.DESC_F_NEXT, 0, table=table)
        d.put_desc(0, 0, table, 32, vm.DESC_F_INDIRECT)
        d.make_available(0, 0)
        self.assert_refused('longer than 2')

    def test_buffer_outside_ram(self):
        d = self.d
        d.put_desc(0, 0, len(d.buf) - 2, 4, vm.DESC_F_WRITE)
        d.make_available(0, 0)
        self.assert_refused('not in RAM')

    def test_buffer_past_the_64_bit_space(self):
        d = self.d
        d.put_desc(0, 0, (1 << 64) - 16, 0xFFFFFFFF, vm.DESC_F_WRITE)
        d.make_available(0, 0)
        self.assert_refused('not in RAM')

    def test_next_index_past_the_queue(self):
        d = self.d
        a, _ = d.alloc(4)
        d.put_desc(0, 0, a, 4, vm.DESC_F_WRITE | vm.DESC_F_NEXT, 300)
        d.make_available(0, 0)
        self.assert_refused('past the table')

    def test_head_past_the_queue(self):
        self.d.make_available(0, 999)
        self.assert_refused('past the table')

    def test_available_index_too_far_ahead(self):
        d = self.d
        struct.pack_into('<H', d.buf, d.base(0) + 0x1000 + 2, 1000)
        d.w(vm.QUEUE_NOTIFY, 0)
        self.assert_refused('more than the queue size')

    def test_readable_after_writable(self):
        d = self.d
        a, _ = d.alloc(4)
        d.submit(0, [(a, 4, True), (a, 4, False)])
        self.assert_refused('device-readable buffer after')

    def test_nested_indirect(self):
        d = self.d
        table = d.next_buf
        d.next_buf += 16
        d.put_desc(0, 0, table, 16, vm.DESC_F_INDIRECT, table=table)
        d.put_desc(0, 0, table, 16, vm.DESC_F_INDIRECT)
        d.make_available(0, 0)
        self.assert_refused('inside an indirect table')

    def test_huge_indirect_table(self):
        d = self.d
        d.put_desc(0, 0, 0, 16 * 4096, vm.DESC_F_INDIRECT)
        d.make_available(0, 0)
        self.assert_refused('indirect table of')

    def test_queue_size_not_a_power_of_two_or_too_big(self):
        d = Driver(VirtioRng, entropy=counting_entropy())
        d.negotiate()
        d.setup_queue(0, num=100)
        self.assertTrue(d.r(vm.STATUS) & vm.S_NEEDS_RESET)
        self.assertEqual(d.r(vm.QUEUE_READY), 0)
        d = Driver(VirtioRng, entropy=counting_entropy())
        d.negotiate()
        d.setup_queue(0, num=1024)
        self.assertEqual((d.r(vm.QUEUE_READY), d.dev.queues[0].num), (0, 0))

    def test_rings_outside_ram_refused_at_queue_ready(self):
        d = Driver(VirtioRng, entropy=counting_entropy())
        d.negotiate()
        d.w(vm.QUEUE_SEL, 0)
        d.w(vm.QUEUE_NUM, 256)
        d.w(vm.QUEUE_DESC_LOW, len(d.buf) - 16)
        d.w(vm.QUEUE_READY, 1)
        self.assertEqual(d.r(vm.QUEUE_READY), 0)
        self.assertIn('descriptor table', d.dev.last_refusal)

    def test_use_after_reset_is_refused(self):
        d = self.d
        d.w(vm.STATUS, 0)
        ignored = d.dev.ignored
        a, _ = d.alloc(4)
        d.put_desc(0, 0, a, 4, vm.DESC_F_WRITE)
        d.make_available(0, 0)                     # notify a queue the reset took away
        self.assertEqual(d.dev.ignored, ignored + 1)
        self.assertEqual(d.dev.served, 0)
        self.assertEqual(bytes(d.buf[a:a + 4]), bytes(4))


def blk_request(d, kind, sector, data=b'', read_len=0, indirect=False, split=True):
    """Submit one block request; returns (head, status address, data address)."""
    hdr, _ = d.alloc(struct.pack('<IIQ', kind, 0, sector))
    segs = [(hdr, 16, False)]
    daddr = None
    if data:
        daddr, n = d.alloc(data)
        segs.append((daddr, n, False))
    if read_len:
        daddr, n = d.alloc(read_len)
        segs.append((daddr, n, True))
    st, _ = d.alloc(b'\xff')
    segs.append((st, 1, True))
    if not split and read_len:          # data and status in one writable buffer
        segs = segs[:-2] + [(daddr, read_len + 1, True)]
        st = daddr + read_len
    head = d.submit(0, segs, indirect=indirect)
    return head, st, daddr


class BlkTests(unittest.TestCase):

    def setUp(self):
        self.image = bytearray(os.urandom(64 * SECTOR))
        self.disk = BytesDisk(self.image, serial=b'vda-serial')
        self.d = Driver(VirtioBlk, disk=self.disk)
        self.d.start()

    def status(self, addr):
        return self.d.buf[addr]

    def test_config_capacity_and_features(self):
        d = self.d
        self.assertEqual(d.r(vm.DEVICE_ID), 2)
        self.assertEqual(d.dev.read(0x100, 8), 64)
        self.assertEqual(d.dev.read(0x100 + 20, 4), 512)
        self.assertTrue(d.features() & F_FLUSH)
        self.assertFalse(d.features() & F_RO)

    def test_read(self):
        d = self.d
        head, st, daddr = blk_request(d, T_IN, 3, read_len=2 * SECTOR)
        self.assertEqual(self.status(st), S_OK)
        self.assertEqual(bytes(d.buf[daddr:daddr + 1024]), bytes(self.disk.data[3 * 512:5 * 512]))
        self.assertEqual(d.used(0), [(head, 1025)])

    def test_read_any_layout_and_indirect(self):
        d = self.d
        _, st, daddr = blk_request(d, T_IN, 1, read_len=SECTOR, split=False, indirect=True)
        self.assertEqual(self.status(st), S_OK)
        self.assertEqual(bytes(d.buf[daddr:daddr + 512]), bytes(self.disk.data[512:1024]))

    def test_write_then_flush(self):
        d = self.d
        data = bytes(range(256)) * 2
        _, st, _ = blk_request(d, T_OUT, 10, data=data)
        self.assertEqual(self.status(st), S_OK)
        self.assertEqual(bytes(self.disk.data[5120:5632]), data)
        _, st, _ = blk_request(d, T_FLUSH, 0)
        self.assertEqual((self.status(st), self.disk.flushes), (S_OK, 1))

    def test_get_id(self):
        d = self.d
        _, st, daddr = blk_request(d, T_GET_ID, 0, read_len=ID_BYTES)
        self.assertEqual(self.status(st), S_OK)
        self.assertEqual(bytes(d.buf[daddr:daddr + 20]), b'vda-serial' + bytes(10))

    def test_write_zeroes(self):
        d = self.d
        _, st, _ = blk_request(d, T_WRITE_ZEROES, 0, data=struct.pack('<QII', 2, 3, 0))
        self.assertEqual(self.status(st), S_OK)
        self.assertEqual(bytes(self.disk.data[1024:2560]), bytes(1536))
        self.assertNotEqual(bytes(self.disk.data[2560:3072]), bytes(512))

    def test_beyond_the_end_is_an_io_error(self):
        d = self.d
        before = bytes(self.disk.data)
        for kind, sector, kw in ((T_IN, 63, {'read_len': 1024}), (T_OUT, 64, {'data': bytes(512)}),
                                 (T_IN, 1 << 62, {'read_len': 512}),
                                 (T_IN, 0, {'read_len': 100})):
            _, st, _ = blk_request(d, kind, sector, **kw)
            self.assertEqual(self.status(st), S_IOERR, (kind, sector))
        self.assertEqual(bytes(self.disk.data), before)
        self.assertEqual(d.dev.io_errors, 4)
        self.assertFalse(d.r(vm.STATUS) & vm.S_NEEDS_RESET)

    def test_unknown_type_is_unsupported(self):
        _, st, _ = blk_request(self.d, 99, 0)
        self.assertEqual(self.status(st), S_UNSUPP)

    def test_request_without_status_byte_is_refused(self):
        d = self.d
        hdr, _ = d.alloc(struct.pack('<IIQ', T_IN, 0, 0))
        d.submit(0, [(hdr, 16, False)])
        self.assertTrue(d.r(vm.STATUS) & vm.S_NEEDS_RESET)

    def test_read_only_disk_refuses_writes_without_touching_it(self):
        disk = BytesDisk(self.image, readonly=True)
        d = Driver(VirtioBlk, disk=disk)
        self.assertTrue(d.features() & F_RO)
        d.start()
        _, st, _ = blk_request(d, T_OUT, 0, data=bytes(512))
        self.assertEqual(d.buf[st], S_IOERR)
        _, st, _ = blk_request(d, T_WRITE_ZEROES, 0, data=struct.pack('<QII', 0, 1, 0))
        self.assertEqual(d.buf[st], S_IOERR)
        self.assertEqual(disk.data, self.image)
        _, st, daddr = blk_request(d, T_IN, 0, read_len=512)
        self.assertEqual(bytes(d.buf[daddr:daddr + 512]), bytes(self.image[:512]))

    def test_no_disk_is_a_placeholder(self):
        d = Driver(VirtioBlk)
        self.assertEqual(d.r(vm.DEVICE_ID), 0)
        self.assertEqual(d.r(vm.QUEUE_NUM_MAX), 0)


class DiskImageTests(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.path = os.path.join(self.dir.name, 'disk.img')
        with open(self.path, 'wb') as f:
            f.write(bytes(range(256)) * 8)

    def tearDown(self):
        self.dir.cleanup()

    def test_real_file_read_write_flush(self):
        disk = DiskImage(self.path)
        d = Driver(VirtioBlk, disk=disk)
        d.start()
        self.assertEqual(d.dev.capacity, 4)
        _, st, _ = blk_request(d, T_OUT, 1, data=b'M' * 512)
        _, st2, _ = blk_request(d, T_FLUSH, 0)
        self.assertEqual((d.buf[st], d.buf[st2]), (S_OK, S_OK))
        disk.close()
        with open(self.path, 'rb') as f:
            data = f.read()
        self.assertEqual(data[512:1024], b'M' * 512)
        self.assertEqual(data[:512] + data[1024:], (bytes(range(256)) * 8)[:512] +
                         (bytes(range(256)) * 8)[1024:])

    def test_bad_images(self):
        os.mkfifo(os.path.join(self.dir.name, 'fifo'))
        cases = {os.path.join(self.dir.name, 'missing'): 'does not exist',
                 self.dir.name: 'is a directory',
                 os.path.join(self.dir.name, 'fifo'): 'not a regular file'}
        for path, why in cases.items():
            with self.assertRaisesRegex(DiskError, why):
                DiskImage(path)
        os.chmod(self.path, 0o200)
        with self.assertRaisesRegex(DiskError, 'not readable'):
            DiskImage(self.path)
        os.chmod(self.path, 0o444)
        with self.assertRaisesRegex(DiskError, 'not writable'):
            DiskImage(self.path)
        DiskImage(self.path, readonly=True).close()


if __name__ == '__main__':
    unittest.main()
