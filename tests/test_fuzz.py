"""tools/fuzz.py: a short seeded burst of random register traffic on every
device and on the wired PC bus holds every device's check() and queue bound,
and the tool reports, with a seed that replays it, a device broken on purpose
(one whose invariants break, one that raises, one whose queue grows)."""

import io
import unittest
from unittest import mock

from devices.pic import PicPair
from devices.serial import Serial
from tests.guest import requires_kvm
from tools import fuzz

BURST = 3000           # accesses per device in the default suite


class BrokenPic(PicPair):
    """Forgets to lower INTR once a slave interrupt is acknowledged."""

    def acknowledge(self):
        vector = super().acknowledge()
        if vector >= self.slave.vector_base and self.slave.vector_base:
            self.intr.level = 1
        return vector


class RaisingSerial(Serial):
    """Divides by the divisor latch: a guest that writes 0 there crashes it."""

    def _write_byte(self, port, value):
        super()._write_byte(port, value)
        self.scr = 0x12345 // self.divisor & 0xFF


class LeakySerial(Serial):
    """Takes every byte the back end offers, FIFO full or not."""

    def receive(self, data):
        self.rx.extend(data)
        self._update_irq()
        return len(data)


class BrokenPicTarget(fuzz.PicTarget):
    name = 'broken-pic'

    def __init__(self, rng):
        super().__init__(rng)
        self.dev = BrokenPic()
        self.ports = (self.dev.master, self.dev.slave, self.dev.elcr)


def serial_target(cls, label):
    class Target(fuzz.SerialTarget):
        name = label

        def __init__(self, rng):
            super().__init__(rng)
            self.dev = cls(irq=self.dev.irq, out=self.out, clock=self.clock)
            self.ports = (self.dev,)
    return Target


class DeviceBurstTest(unittest.TestCase):

    def test_every_device_keeps_its_invariants_under_a_seeded_burst(self):
        for name in fuzz.DEFAULT_TARGETS:
            if name.startswith('bus'):
                continue
            with self.subTest(device=name):
                result = fuzz.fuzz(fuzz.TARGETS[name], BURST, seed=6)
                self.assertIsNone(result.failure, result.line())
                self.assertEqual(result.accesses, BURST)

    def test_the_generator_reaches_interrupts_and_output(self):
        # a burst that never raised a line would check nothing worth checking
        import random
        pit = fuzz.PitTarget(random.Random('pit'))
        serial = fuzz.SerialTarget(random.Random('serial'))
        pic = fuzz.PicTarget(random.Random('pic'))
        for _ in range(BURST):
            pit.step(), serial.step(), pic.step()
        self.assertGreater(pit.irq.raised, 0)
        self.assertGreater(len(serial.out.output), 0)
        self.assertGreater(serial.dev.irq.raised, 0)
        self.assertGreater(pic.dev.intr.raised, 0)


@requires_kvm
class BusBurstTest(unittest.TestCase):

    def test_the_wired_pc_keeps_every_device_consistent_in_each_irqchip_mode(self):
        for name in ('bus', 'bus-user', 'bus-kernel'):
            with self.subTest(bus=name):
                result = fuzz.fuzz(fuzz.TARGETS[name], BURST, seed=6)
                self.assertIsNone(result.failure, result.line())


class BrokenDeviceTest(unittest.TestCase):

    def test_a_device_whose_check_fails_is_reported_with_a_seed_that_replays_it(self):
        first = fuzz.fuzz(BrokenPicTarget, 200_000, seed=11)
        self.assertIn('INTR differs from master INT output', first.failure)
        self.assertLess(first.accesses, 200_000)
        again = fuzz.fuzz(BrokenPicTarget, first.accesses, seed=11)
        self.assertEqual((again.accesses, again.failure), (first.accesses, first.failure))
        line = first.line()
        self.assertIn('FAILED (seed 11)', line)
        self.assertIn(f'--device broken-pic --seed 11 --accesses {first.accesses}', line)

    def test_a_device_that_raises_is_reported_with_the_access(self):
        result = fuzz.fuzz(serial_target(RaisingSerial, 'raising-uart'), 200_000, seed=3)
        self.assertRegex(result.failure, r'^ZeroDivisionError: .* \(on write of 0x[0-9a-f]+ '
                                         r'\(\d bytes\) at port 0 offset -?\d+\)$')

    def test_a_queue_that_grows_past_its_bound_is_reported(self):
        result = fuzz.fuzz(serial_target(LeakySerial, 'leaky-uart'), 200_000, seed=3)
        self.assertIn('characters queued', result.failure)

    def test_the_command_prints_rates_and_fails_with_a_broken_device(self):
        out = io.StringIO()
        self.assertEqual(fuzz.main(['--accesses', '300', '--seed', '5', '--device', 'pic',
                                    '--device', 'rtc'], out=out), 0)
        text = out.getvalue()
        self.assertIn('seed 5, 300 accesses per device', text)
        self.assertRegex(text, r'pic +300 accesses +\d+/s  ok')
        self.assertTrue(text.endswith('all held\n'), text)
        with mock.patch.dict(fuzz.TARGETS, {'pic': BrokenPicTarget}):
            out = io.StringIO()
            self.assertEqual(fuzz.main(['--accesses', '200000', '--seed', '11',
                                        '--device', 'pic'], out=out), 1)
        self.assertIn('FAILED (seed 11)', out.getvalue())
        self.assertTrue(out.getvalue().endswith('1 failed\n'))


if __name__ == '__main__':
    unittest.main()
