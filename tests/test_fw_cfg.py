"""Tests for devices.fw_cfg: what SeaBIOS and Linux read through the
selector and data ports, the file directory, snapshots mid-read, seeded
random accesses."""

import json
import random
import struct
import unittest

from devices.fw_cfg import FwCfg


def round_trip(dev, **wiring):
    state = json.loads(json.dumps(dev.state()))
    assert state['version'] == 1
    return type(dev).from_state(state, **wiring)


def cfg_select(cfg, key):
    cfg.write(0, 2, key)                             # outw(key, 0x510)


def cfg_read(cfg, length):
    return bytes(cfg.read(1, 1) for _ in range(length))  # insb(0x511)


class FwCfgTests(unittest.TestCase):

    def setUp(self):
        self.cfg = FwCfg(ram_size=256 << 20, cpus=2,
                         cmdline=b'console=ttyS0 panic=-1')

    def test_seabios_detection_reads_signature_and_id(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')
        cfg_select(self.cfg, 0x0001)
        ident = struct.unpack('<I', cfg_read(self.cfg, 4))[0]
        self.assertEqual(ident, 1)                   # no DMA interface

    def test_ram_size_and_cpu_counts(self):
        cfg_select(self.cfg, 0x0003)
        self.assertEqual(struct.unpack('<Q', cfg_read(self.cfg, 8))[0],
                         256 << 20)
        cfg_select(self.cfg, 0x0005)
        self.assertEqual(struct.unpack('<H', cfg_read(self.cfg, 2))[0], 2)
        cfg_select(self.cfg, 0x000F)
        self.assertEqual(struct.unpack('<H', cfg_read(self.cfg, 2))[0], 2)

    def test_command_line_size_counts_the_nul(self):
        cfg_select(self.cfg, 0x0014)
        size = struct.unpack('<I', cfg_read(self.cfg, 4))[0]
        cfg_select(self.cfg, 0x0015)
        self.assertEqual(cfg_read(self.cfg, size),
                         b'console=ttyS0 panic=-1\0')

    def test_file_directory_lists_files_as_seabios_reads_it(self):
        self.assertEqual(self.cfg.add_file('etc/boot-fail-wait',
                                           b'\x05\0\0\0'), 0x20)
        self.assertEqual(self.cfg.add_file('opt/org.kvmlite/x', b'hello'),
                         0x21)
        cfg_select(self.cfg, 0x0019)
        count = struct.unpack('>I', cfg_read(self.cfg, 4))[0]
        found = {}
        for _ in range(count):
            size, select, _, name = struct.unpack(
                '>IHH56s', cfg_read(self.cfg, 64))
            found[name.rstrip(b'\0')] = (select, size)
        self.assertEqual(found, {b'etc/boot-fail-wait': (0x20, 4),
                                 b'opt/org.kvmlite/x': (0x21, 5)})
        cfg_select(self.cfg, 0x21)
        self.assertEqual(cfg_read(self.cfg, 5), b'hello')

    def test_empty_directory_has_count_zero(self):
        cfg_select(self.cfg, 0x0019)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_set_item_replaces_data_and_updates_file_sizes(self):
        select = self.cfg.add_file('opt/a', b'1')
        self.cfg.set_item(select, b'12345')
        self.cfg.set_item(0x0005, struct.pack('<H', 4))
        cfg_select(self.cfg, 0x0019)
        self.assertEqual(struct.unpack('>I', cfg_read(self.cfg, 8)[4:])[0], 5)
        cfg_select(self.cfg, 0x0005)
        self.assertEqual(cfg_read(self.cfg, 2), b'\x04\0')
        with self.assertRaises(ValueError):
            self.cfg.set_item(0x0019, b'')

    def test_add_file_refuses_duplicates_and_long_names(self):
        self.cfg.add_file('opt/a', b'')
        with self.assertRaises(ValueError):
            self.cfg.add_file('opt/a', b'')
        with self.assertRaises(ValueError):
            self.cfg.add_file('x' * 56, b'')

    def test_reads_past_the_end_return_zero_and_select_rewinds(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 6), b'QEMU\0\0')
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 2), b'QE')

    def test_unknown_item_reads_zero(self):
        cfg_select(self.cfg, 0x0123)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_write_channel_bit_reads_the_same_item(self):
        cfg_select(self.cfg, 0x4000)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')

    def test_arch_local_items_are_a_separate_range(self):
        self.cfg.set_item(0x8003, b'arch')
        cfg_select(self.cfg, 0x8003)
        self.assertEqual(cfg_read(self.cfg, 4), b'arch')
        cfg_select(self.cfg, 0x8000)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_data_writes_and_wide_reads_are_ignored(self):
        cfg_select(self.cfg, 0x0000)
        self.cfg.write(1, 1, ord('X'))
        self.assertEqual(self.cfg.read(1, 2), 0)
        self.assertEqual(self.cfg.read(0, 4), 0)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')
        self.cfg.write(0, 4, 0x0001)                 # not a selector write
        self.assertEqual(cfg_read(self.cfg, 1), b'\0')
        self.assertEqual(self.cfg.ignored, 3)

    def test_byte_read_at_selector_port_reads_data_as_in_qemu(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(self.cfg.read(0, 1), ord('Q'))

    def test_state_round_trip_mid_read(self):
        self.cfg.add_file('opt/blob', bytes(range(100)))
        cfg_select(self.cfg, 0x20)
        cfg_read(self.cfg, 10)
        copy = round_trip(self.cfg)
        self.assertEqual(copy.state(), self.cfg.state())
        self.assertEqual(cfg_read(copy, 3), bytes((10, 11, 12)))
        self.assertEqual(copy.check(), [])
        cfg_select(copy, 0x0019)
        self.assertEqual(cfg_read(copy, 4), b'\0\0\0\1')

    def test_reset_clears_selection_but_keeps_items(self):
        cfg_select(self.cfg, 0x0003)
        cfg_read(self.cfg, 2)
        self.cfg.reset()
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0x510)
        cfg = FwCfg(ram_size=1 << 30, cpus=4, cmdline='quiet')
        cfg.add_file('opt/one', b'1' * 70)
        keys = (0x0000, 0x0001, 0x0003, 0x0015, 0x0019, 0x0020, 0x4019,
                0x8000, 0xFFFF)
        for step in range(10000):
            offset, size = rng.randrange(-1, 3), rng.choice((1, 1, 2, 4))
            if rng.random() < 0.2:
                value = rng.choice(keys + (rng.getrandbits(16),))
                cfg.write(offset, size, value)
            else:
                cfg.read(offset, size)
            self.assertEqual(cfg.check(), [], f'step {step}')


if __name__ == '__main__':
    unittest.main()
