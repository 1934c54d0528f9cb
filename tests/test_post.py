"""Tests for devices.post: the port 0x80 latch, snapshots, seeded random
accesses."""

import json
import random
import unittest

from devices.post import PostCode


def round_trip(dev, **wiring):
    state = json.loads(json.dumps(dev.state()))
    assert state['version'] == 1
    return type(dev).from_state(state, **wiring)


class PostCodeTests(unittest.TestCase):

    def test_writes_are_latched_counted_and_read_back(self):
        dev = PostCode()
        for code in (0x01, 0x55, 0xAA):
            dev.write(0, 1, code)
        self.assertEqual((dev.last, dev.count), (0xAA, 3))
        self.assertEqual(dev.read(0, 1), 0xAA)
        self.assertEqual(dev.read(0, 2), 0xFFAA)

    def test_wide_write_latches_the_low_byte(self):
        dev = PostCode()
        dev.write(0, 2, 0x1234)
        self.assertEqual(dev.read(0, 1), 0x34)

    def test_state_round_trip_and_reset(self):
        dev = PostCode()
        dev.write(0, 1, 0x42)
        copy = round_trip(dev)
        self.assertEqual(copy.state(), dev.state())
        copy.reset()
        self.assertEqual((copy.read(0, 1), copy.count), (0, 0))

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0x80)
        dev = PostCode()
        for _ in range(2000):
            if rng.random() < 0.5:
                dev.write(rng.randrange(-1, 2), rng.choice((1, 2, 4)),
                          rng.getrandbits(32))
            else:
                dev.read(rng.randrange(-1, 2), rng.choice((1, 2, 4)))
            self.assertEqual(dev.check(), [])


if __name__ == '__main__':
    unittest.main()
