"""virtio-console (devices/virtio_console.py) as a state machine: the Python
driver of tests/virtio_driver.py posts receive and transmit buffers as
Linux's virtio_console does, against sinks that take output slowly. No KVM.

The promise under test is the UART's: nothing lost to a slow reader, in
order, with the device holding the guest (its transmit buffers stay
unused) rather than dropping a byte; input waits with the caller until
the guest posts receive buffers."""

import struct
import unittest

from devices import SteppedClock
from devices import virtio_mmio as vm
from devices.virtio_console import (DEVICE_ID_CONSOLE, RECEIVEQ, TRANSMITQ, TX_BUDGET,
                                    VirtioConsole)
from tests.virtio_driver import Driver


class SlowSink:
    """A console back end whose reader takes ``room`` bytes at a time:
    ``room()`` says what fits, ``write`` past it would be a loss."""

    def __init__(self, room=0):
        self.free = room
        self.data = bytearray()
        self.lost = 0

    def room(self):
        return self.free

    def write(self, data):
        self.lost += max(0, len(data) - self.free)
        self.data += data[:self.free]
        self.free -= min(self.free, len(data))

    def drain(self, n):
        self.free += n


class Console(Driver):
    def __init__(self, sink, ram=1 << 20):
        self.clock = SteppedClock(0)
        super().__init__(VirtioConsole, ram=ram, out=sink, clock=self.clock)
        self.sink = sink

    def start_console(self, wanted=None):
        self.start(wanted, queues=2)

    def send(self, data, notify=True):
        addr, n = self.alloc(data)
        return self.submit(TRANSMITQ, [(addr, n, False)], notify=notify)

    def post(self, size):
        addr, n = self.alloc(size)
        head = self.submit(RECEIVEQ, [(addr, n, True)])
        return head, addr


class IdentityTests(unittest.TestCase):

    def test_registers_config_and_features(self):
        d = Console(SlowSink(100))
        self.assertEqual(d.r(vm.DEVICE_ID), DEVICE_ID_CONSOLE)
        for q, size in ((0, 64), (1, 64), (2, 0)):          # no control queues: no MULTIPORT
            d.w(vm.QUEUE_SEL, q)
            self.assertEqual(d.r(vm.QUEUE_NUM_MAX), size, q)
        self.assertEqual(d.features() & 0b111, 0)           # no SIZE, MULTIPORT, EMERG_WRITE
        cols, rows, ports, emerg = struct.unpack('<HHII', bytes(
            d.dev.read(0x100 + i, 1) for i in range(12)))
        self.assertEqual((cols, rows, ports, emerg), (0, 0, 1, 0))

    def test_without_a_console_it_is_a_placeholder(self):
        d = Driver(VirtioConsole)
        self.assertEqual((d.r(vm.DEVICE_ID), d.r(vm.QUEUE_NUM_MAX)), (0, 0))
        self.assertEqual(d.dev.receive(b'x'), 0)


class TransmitTests(unittest.TestCase):

    def test_output_reaches_the_sink_and_the_buffer_is_used(self):
        d = Console(SlowSink(100))
        d.start_console()
        head = d.send(b'hello, hvc0\n')
        self.assertEqual(bytes(d.sink.data), b'hello, hvc0\n')
        self.assertEqual(d.used(TRANSMITQ), [(head, 0)])
        self.assertEqual(d.ack(), vm.INT_USED)

    def test_a_full_sink_holds_the_buffer_until_it_drains(self):
        d = Console(SlowSink(4))
        d.start_console()
        first = d.send(b'0123456789')
        second = d.send(b'abc')
        self.assertEqual(bytes(d.sink.data), b'0123')
        self.assertEqual(d.used(TRANSMITQ), [])             # the guest still waits
        self.assertTrue(d.dev.tx_waiting)
        self.assertEqual(d.dev.tick(), None)                # no room: nothing to do yet
        self.assertEqual(d.used(TRANSMITQ), [])
        d.sink.drain(6)
        d.dev.tick()
        self.assertEqual(d.used(TRANSMITQ), [(first, 0)])
        d.sink.drain(100)
        d.dev.tick()
        self.assertEqual(d.used(TRANSMITQ), [(second, 0)])
        self.assertFalse(d.dev.tx_waiting)
        self.assertEqual((bytes(d.sink.data), d.sink.lost), (b'0123456789abc', 0))
        self.assertEqual(d.dev.tx_stalls, 1)           # one wait, however many retries

    def test_much_output_through_a_trickle_loses_nothing_and_keeps_order(self):
        d = Console(SlowSink(0))
        d.start_console()
        sent, heads, done = bytearray(), [], []
        for i in range(300):                    # more chains than the 64-entry ring holds
            while len(d.free[TRANSMITQ]) == 0:
                d.sink.drain(7)
                d.dev.tick()
                for head, _ in d.used(TRANSMITQ):
                    d.free[TRANSMITQ].append(head)
                    done.append(head)
            line = b'line %d of the guest\n' % i
            sent += line
            heads.append(d.send(line))
        while d.dev.tx_waiting or d.dev.pending(TRANSMITQ):
            d.sink.drain(7)
            d.dev.tick()
        done += [h for h, _ in d.used(TRANSMITQ)]
        self.assertEqual(bytes(d.sink.data), bytes(sent))
        self.assertEqual(d.sink.lost, 0)
        self.assertEqual(len(done), 300)
        self.assertEqual(d.dev.check(), [])

    def test_a_huge_chain_goes_out_in_budgets(self):
        d = Console(SlowSink(1 << 40), ram=8 << 20)
        d.start_console()
        data = bytes(range(256)) * (3 * TX_BUDGET // 256 + 10)
        addr = 0x100000
        d.buf[addr:addr + len(data)] = data
        head = d.submit(TRANSMITQ, [(addr, len(data), False)])
        self.assertEqual(len(d.sink.data), TX_BUDGET)       # one notification's worth
        self.assertEqual(d.dev.tick(), d.clock())            # more at once, from the timer
        ticks = 1
        while d.dev.tx_waiting:
            d.dev.tick()
            ticks += 1
        self.assertEqual(ticks, 3)
        self.assertEqual(bytes(d.sink.data), data)
        self.assertEqual(d.used(TRANSMITQ), [(head, 0)])

    def test_event_idx_asks_for_the_next_kick(self):
        d = Console(SlowSink(100))
        d.start_console()
        self.assertTrue(d.dev.driver_features & vm.F_EVENT_IDX)
        d.send(b'a')
        d.send(b'b')
        self.assertEqual(d.avail_event(TRANSMITQ), 2)

    def test_reset_while_waiting_forgets_the_partial_chain(self):
        d = Console(SlowSink(3))
        d.start_console()
        d.send(b'abcdef')
        self.assertEqual(d.dev.tx_done, 3)
        d.w(vm.STATUS, 0)
        self.assertEqual((d.dev.tx_done, d.dev.tx_waiting), (0, False))
        d.sink.drain(100)
        self.assertIsNone(d.dev.tick())                      # nothing is sent after a reset
        self.assertEqual(bytes(d.sink.data), b'abc')

    def test_state_mid_chain_gives_the_same_future(self):
        d = Console(SlowSink(5))
        d.start_console()
        d.send(b'0123456789')
        d.send(b'abcdef')
        copy = VirtioConsole.from_state(d.dev.state(), irq=d.irq, memory=d.memory, out=d.sink,
                                        clock=d.clock)
        self.assertEqual(copy.state(), d.dev.state())
        d.dev = copy                            # the driver now talks to the restored device
        d.sink.drain(100)
        copy.tick()
        self.assertEqual(bytes(d.sink.data), b'0123456789abcdef')
        self.assertEqual(len(d.used(TRANSMITQ)), 2)


class ReceiveTests(unittest.TestCase):

    def test_input_waits_for_receive_buffers(self):
        d = Console(SlowSink(100))
        self.assertEqual(d.dev.receive(b'early'), 0)        # no driver yet: the caller keeps it
        d.start_console()
        self.assertEqual(d.dev.receive(b'early'), 0)        # no buffer posted yet
        h1, a1 = d.post(4)
        h2, a2 = d.post(4)
        self.assertEqual(d.dev.receive(b'0123456789'), 8)   # what fits; the rest stays with us
        self.assertEqual(d.used(RECEIVEQ), [(h1, 4), (h2, 4)])
        self.assertEqual((bytes(d.buf[a1:a1 + 4]), bytes(d.buf[a2:a2 + 4])), (b'0123', b'4567'))
        self.assertEqual(d.ack(), vm.INT_USED)
        h3, a3 = d.post(16)
        self.assertEqual(d.dev.receive(b'89'), 2)
        self.assertEqual(d.used(RECEIVEQ), [(h3, 2)])
        self.assertEqual(bytes(d.buf[a3:a3 + 2]), b'89')
        self.assertEqual(d.dev.bytes_in, 10)


class HostileDriverTests(unittest.TestCase):

    def broken(self, d, why):
        self.assertTrue(d.r(vm.STATUS) & vm.S_NEEDS_RESET)
        self.assertIn(why, d.dev.last_refusal)
        self.assertEqual(d.dev.check(), [])

    def test_writable_buffer_in_the_transmitq(self):
        d = Console(SlowSink(100))
        d.start_console()
        addr, n = d.alloc(8)
        d.submit(TRANSMITQ, [(addr, n, True)])
        self.broken(d, 'device-writable buffer in the transmitq')
        self.assertEqual(bytes(d.sink.data), b'')

    def test_readable_buffer_in_the_receiveq(self):
        d = Console(SlowSink(100))
        d.start_console()
        addr, n = d.alloc(b'zz')
        d.submit(RECEIVEQ, [(addr, n, False)])
        self.assertEqual(d.dev.receive(b'input'), 0)
        self.broken(d, 'not device-writable')

    def test_transmit_buffer_outside_ram(self):
        d = Console(SlowSink(100))
        d.start_console()
        d.submit(TRANSMITQ, [(0xFFFF0000, 16, False)])
        self.broken(d, 'not in RAM')


if __name__ == '__main__':
    unittest.main()
