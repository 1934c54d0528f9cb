"""Tests for devices.pci: Linux's mechanism #1 probe, CONFIG_DATA on an
empty bus, the PIIX reset control register, snapshots, seeded random
accesses."""

import json
import random
import unittest

from devices.pci import PciConfig


def round_trip(dev, **wiring):
    state = json.loads(json.dumps(dev.state()))
    assert state['version'] == 1
    return type(dev).from_state(state, **wiring)


class PciConfigTests(unittest.TestCase):

    def setUp(self):
        self.resets = 0
        self.pci = PciConfig(on_reset=self._reset)

    def _reset(self):
        self.resets += 1

    def test_linux_type1_probe_sees_config_address_read_back(self):
        # arch/x86/pci/direct.c pci_check_type1().
        self.pci.write(3, 1, 0x01)                   # outb(0x01, 0xCFB)
        tmp = self.pci.read(0, 4)
        self.pci.write(0, 4, 0x80000000)
        self.assertEqual(self.pci.read(0, 4), 0x80000000)
        self.pci.write(0, 4, tmp)
        self.assertEqual(self.pci.read(0, 4), tmp)
        self.assertEqual(self.resets, 0)

    def test_config_address_reserved_bits_read_zero(self):
        self.pci.write(0, 4, 0xFFFFFFFF)
        self.assertEqual(self.pci.read(0, 4), 0xFFFFFFFC)

    def test_config_data_reads_all_ones_for_every_function(self):
        for bus, dev, fn in ((0, 0, 0), (0, 1, 0), (0, 31, 7), (255, 0, 0)):
            self.pci.write(0, 4, 0x80000000 | bus << 16 | dev << 11 | fn << 8)
            self.assertEqual(self.pci.read(4, 4), 0xFFFFFFFF)
            self.assertEqual(self.pci.read(6, 2), 0xFFFF)
            self.assertEqual(self.pci.read(5, 1), 0xFF)
        self.pci.write(4, 4, 0)                      # ignored
        self.assertEqual(self.pci.read(4, 4), 0xFFFFFFFF)

    def test_linux_reboot_pci_resets_on_the_second_write(self):
        # BOOT_CF9_FORCE, warm reboot: request hard reset, then do it.
        cf9 = self.pci.read(1, 1) & ~0x06
        self.pci.write(1, 1, cf9 | 0x02)
        self.assertEqual(self.resets, 0)
        self.assertEqual(self.pci.read(1, 1), 0x02)
        self.pci.write(1, 1, cf9 | 0x06)
        self.assertEqual(self.resets, 1)
        self.assertEqual(self.pci.read(1, 1), 0x02)  # RCPU reads back 0

    def test_soft_reset_request_also_resets(self):
        self.pci.write(1, 1, 0x04)
        self.assertEqual(self.resets, 1)

    def test_narrow_accesses_at_cf8_leave_config_address_alone(self):
        self.pci.write(0, 4, 0x80001000)
        self.pci.write(0, 2, 0x00FF)                 # RCR gets 0x00
        self.pci.write(2, 2, 0xFFFF)
        self.assertEqual(self.pci.read(0, 4), 0x80001000)
        self.assertEqual(self.pci.read(0, 2), 0x00FF)   # 0xCF8: nothing
        self.assertEqual(self.pci.read(2, 1), 0xFF)
        self.assertEqual(self.resets, 0)

    def test_word_write_reaches_rcr_through_its_byte_lane(self):
        self.pci.write(0, 2, 0x0600)
        self.assertEqual(self.resets, 1)

    def test_state_round_trip(self):
        self.pci.write(0, 4, 0x8000F810)
        self.pci.write(1, 1, 0x02)
        resets = []
        copy = round_trip(self.pci, on_reset=lambda: resets.append(1))
        self.assertEqual(copy.state(), self.pci.state())
        self.assertEqual(copy.read(0, 4), 0x8000F810)
        copy.write(1, 1, 0x06)
        self.assertEqual(resets, [1])

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0xCF8)
        pci = PciConfig()
        for _ in range(5000):
            offset, size = rng.randrange(-1, 9), rng.choice((1, 2, 4))
            if rng.random() < 0.5:
                pci.write(offset, size, rng.getrandbits(32))
            else:
                pci.read(offset, size)
            self.assertEqual(pci.check(), [])
        self.assertGreater(pci.reset_requests, 0)


if __name__ == '__main__':
    unittest.main()
