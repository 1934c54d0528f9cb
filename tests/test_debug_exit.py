"""Tests for devices.debug_exit: QEMU's isa-debug-exit statuses, reads,
snapshots, seeded random accesses."""

import json
import random
import unittest

from devices.debug_exit import DebugExit


def round_trip(dev, **wiring):
    state = json.loads(json.dumps(dev.state()))
    assert state['version'] == 1
    return type(dev).from_state(state, **wiring)


class DebugExitTests(unittest.TestCase):

    def test_test_kernel_byte_write_exits_with_odd_status(self):
        # -device isa-debug-exit,iobase=0xf4,iosize=0x04; outb(0x10, 0xf4).
        codes = []
        dev = DebugExit(on_exit=codes.append)
        dev.write(0, 1, 0x10)
        self.assertEqual(codes, [0x21])
        dev.write(0, 1, 0x11)                       # failure, by convention
        self.assertEqual(codes[-1], 0x23)

    def test_wide_writes_at_any_port_use_the_whole_value(self):
        codes = []
        dev = DebugExit(on_exit=codes.append)
        dev.write(0, 4, 0x12345678)
        dev.write(2, 2, 0xABCD)
        dev.write(3, 1, 0x1FF)                      # masked to the byte
        self.assertEqual(codes, [0x2468ACF1, 0x1579B, 0x1FF])

    def test_reads_return_zero_as_in_qemu(self):
        dev = DebugExit()
        for size in (1, 2, 4):
            self.assertEqual(dev.read(0, size), 0)

    def test_state_round_trip(self):
        dev = DebugExit()
        dev.write(0, 1, 3)
        codes = []
        copy = round_trip(dev, on_exit=codes.append)
        self.assertEqual(copy.state(), dev.state())
        self.assertEqual(copy.last_status, 7)
        copy.write(0, 1, 0)
        self.assertEqual(codes, [1])

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0xF4)
        dev = DebugExit()
        for _ in range(2000):
            size = rng.choice((0, 1, 2, 4, 8))
            if rng.random() < 0.5:
                dev.write(rng.randrange(4), size, rng.getrandbits(64))
            else:
                dev.read(rng.randrange(4), size)
            self.assertEqual(dev.check(), [])


if __name__ == '__main__':
    unittest.main()
