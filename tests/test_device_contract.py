"""The device contract (devices.Device), run against every bus-facing device.

No /dev/kvm: each device is wired as the board would wire it, but to a
SteppedClock, IrqLine objects and callbacks that record what they are told,
and it is driven through the object the board registers on the bus (the
device itself, or one of its port views).  For every device:

* every offset in [0, SIZE) at sizes 1, 2, 4 and 8, read and written: no
  exception, reads are ints within the size's mask, check() holds;
* hostile values (0, all ones, the top bit, seeded random bits) written
  everywhere: no exception, check() holds;
* reset() after seeded random activity gives the state() of a freshly built
  device, but for what RESET_KEEPS says reset legitimately leaves alone;
* a state() round trip mid-activity gives the same future: the original and
  the copy, on fresh wiring at the same clock time, answer the same further
  seeded accesses, clock steps and board actions with the same read values,
  IRQ levels, callbacks and final state(); the copy is rebuilt from its own
  state() again at random points on the way.

The seeded activity reaches every bus view of the device (not only the
row's), mixes in the register sequences guests use (GUEST_SEQUENCES) so that
it gets past initialisation, and lets the rest of the PC act on the device's
other side (BOARD: IRQ inputs, INTA, EOIs, console input).
"""

import importlib
import itertools
import json
import random
import unittest

from devices import Device, IrqLine, SteppedClock, size_mask
from devices.debug_exit import DebugExit
from devices.fw_cfg import FwCfg
from devices.i8042 import I8042
from devices.ioapic import IoApic
from devices.pci import PciConfig
from devices.pic import PicPair
from devices.pit import Pit
from devices.post import PostCode
from devices.rtc import Rtc
from devices.serial import Serial
from devices.virtio_blk import BytesDisk, VirtioBlk
from devices.virtio_console import VirtioConsole
from devices.virtio_mmio import GuestMemory, VirtioMmio
from devices.virtio_rng import VirtioRng
from tools.layout import PC
from tools.pc import _wiring_params

# One row per bus-facing object of the platform description (tools/layout.py):
# (name, factory). factory(wiring, state=None) builds the device as the board
# does, handing it what its constructor names (from Wiring), fresh or from a
# state() dict, and returns (device, the object the bus sees: the device
# itself or one of its views). A device added to the platform is tested here
# with no change to this file.
HOST_CONFIG = {'ram_size': 64 << 20, 'cpus': 2, 'cmdline': b'console=ttyS0',
               'base_epoch_seconds': 1_700_000_000.25}


def _factory(slot, attr):
    module, _, name = slot.part.rpartition('.')
    cls = getattr(importlib.import_module(f'devices.{module}'), name)
    params, _ = _wiring_params(cls)

    def factory(w, state=None):
        given = {p: getattr(w, p) for p in params if hasattr(w, p)}
        config = {p: HOST_CONFIG[p] for p in params if p in HOST_CONFIG}
        return part(cls, state, attr or None, config=config, **given)
    return factory


DEVICES = [(label, _factory(slot, attr)) for slot in PC.devices
           for attr, _, label in slot.pio + slot.mmio]

# What reset() leaves alone, by design, per device class (dotted state keys);
# the rest of state() must equal a fresh device's.
RESET_KEEPS = {
    # the input pins' levels are what the devices drive, not the chip's state
    PicPair: ('master.lines', 'slave.lines'),
    # input pins as for the PIC; counters of messages sent and of writes that
    # hit nothing, kept for the host
    IoApic: ('pins', 'delivered', 'ignored_writes'),
    # counters of the guest's reset requests and of bytes sent to absent devices
    I8042: ('reset_requests', 'dropped'),
    # counter of the guest's reset requests
    PciConfig: ('reset_requests',),
    # counter of accesses the interface ignores (the items are host
    # configuration, but the guest cannot change them, so they are compared)
    FwCfg: ('ignored',),
    # the RESET pin of a battery-backed chip keeps the time and the CMOS RAM
    Rtc: ('cmos', 'seconds', 'dow_offset', 'divider_age_ns'),
    # virtio: counters kept for the host (refusals, ignored accesses, requests served)
    VirtioRng: VirtioMmio.COUNTERS + ('last_refusal', 'device.given'),
    VirtioBlk: VirtioMmio.COUNTERS + ('last_refusal',) + tuple(
        f'device.{k}' for k in VirtioBlk._STATS),
    VirtioConsole: VirtioMmio.COUNTERS + ('last_refusal',) + tuple(
        f'device.{k}' for k in VirtioConsole._STATS),
}


def part(cls, state, view=None, config=None, **wiring):
    """A fresh ``cls(**config, **wiring)``, or ``cls.from_state(state,
    **wiring)``, and its bus-facing ``view`` attribute (itself by default)."""
    if state is None:
        dev = cls(**(config or {}), **wiring)
    else:
        dev = cls.from_state(state, **wiring)
    return dev, getattr(dev, view) if view else dev


# What the rest of the PC does to a device's other side, per device class:
# board(device, r) acts as the random number r picks; what it returns is
# compared between twins.

def pic_board(pair, r):
    """An ISA device moves its IRQ line, or the CPU runs INTA while INTR is up."""
    if r & 3:
        pair.set_irq((r >> 2) % 16, (r >> 6) & 1)
        return None
    return pair.acknowledge() if pair.pending() else None


def ioapic_board(apic, r):
    """A device moves its pin, or a local APIC broadcasts the EOI of a pin's vector."""
    pin = (r >> 2) % 24
    if r & 3:
        apic.set_irq(pin, (r >> 7) & 1)
    else:
        apic.eoi(apic.entries[pin] & 0xFF)


def serial_board(uart, r):
    """The console back end sends a few bytes, or a break."""
    if r & 7 == 0:
        return uart.receive_break()
    return uart.receive(bytes(((r >> 3) & 0xFF,)) * ((r >> 11) % 20))


def virtio_console_board(console, r):
    """The console back end offers a few bytes of input."""
    return console.receive(bytes(((r >> 3) & 0xFF,)) * ((r >> 11) % 20))


BOARD = {PicPair: pic_board, IoApic: ioapic_board, Serial: serial_board,
         VirtioConsole: virtio_console_board}


def wr(view, offset, value, size=1):
    return ('write', view, offset, size, value)


def rd(view, offset, size=1):
    return ('read', view, offset, size)


# Register sequences from the datasheets (and the way Linux uses them), mixed
# into the random traffic so that it reaches the states random bytes rarely
# find: initialised PICs with unmasked inputs, programmed IOAPIC pins,
# running timers, enabled interrupts.  A view is named by its attribute on
# the device (None: the device itself).
GUEST_SEQUENCES = {
    PicPair: [
        [wr('master', 0, 0x11), wr('master', 1, 0x20), wr('master', 1, 0x04), wr('master', 1, 0x01)],
        [wr('slave', 0, 0x11), wr('slave', 1, 0x28), wr('slave', 1, 0x02), wr('slave', 1, 0x01)],
        [wr('master', 1, 0x00)], [wr('slave', 1, 0x00)], [wr('master', 1, 0x02)],
        [wr('master', 0, 0x20)], [wr('slave', 0, 0x20)], [wr('master', 0, 0x62)],
        [wr('master', 0, 0x0B), rd('master', 0)], [wr('slave', 0, 0x0C), rd('slave', 0)],
        [wr('master', 0, 0x68)], [wr('elcr', 0, 0xF8)], [wr('elcr', 1, 0xDE)],
    ],
    Pit: [
        [wr(None, 3, 0x34), wr(None, 0, 0x9C), wr(None, 0, 0x2E)],
        [wr(None, 3, 0x36), wr(None, 0, 0x10), wr(None, 0, 0x00)],
        [wr(None, 3, 0x30), wr(None, 0, 0xFF), wr(None, 0, 0x01)],
        [wr('port61', 0, 0x01), wr(None, 3, 0xB0), wr(None, 2, 0xFF), wr(None, 2, 0xFF)],
        [wr('port61', 0, 0x00)], [wr('port61', 0, 0x03)],
        [wr(None, 3, 0xC2), rd(None, 0), rd(None, 0), rd(None, 0)],
        [wr(None, 3, 0x00), rd(None, 0), rd(None, 0)],
    ],
    Serial: [
        [wr(None, 3, 0x80), wr(None, 0, 0x01), wr(None, 1, 0x00), wr(None, 3, 0x03)],
        [wr(None, 2, 0xC7)], [wr(None, 2, 0x07)], [wr(None, 2, 0x00)],
        [wr(None, 1, 0x0F), wr(None, 4, 0x0B)], [wr(None, 4, 0x1B)], [wr(None, 4, 0x08)],
        [wr(None, 0, 0x41)], [rd(None, 2), rd(None, 5), rd(None, 0), rd(None, 6)],
    ],
    Rtc: [
        [wr(None, 0, 0x0A), wr(None, 1, 0x26)], [wr(None, 0, 0x0A), wr(None, 1, 0x23)],
        [wr(None, 0, 0x0B), wr(None, 1, 0x72)], [wr(None, 0, 0x0B), wr(None, 1, 0x16)],
        [wr(None, 0, 0x0B), wr(None, 1, 0x82), wr(None, 0, 0x00), wr(None, 1, 0x58),
         wr(None, 0, 0x0B), wr(None, 1, 0x12)],
        [wr(None, 0, 0x01), wr(None, 1, 0xC0), wr(None, 0, 0x03), wr(None, 1, 0xC0),
         wr(None, 0, 0x05), wr(None, 1, 0xC0)],
        [wr(None, 0, 0x0C), rd(None, 1)], [wr(None, 0, 0x0A), rd(None, 1)],
        [wr(None, 0, 0x00), rd(None, 1)],
    ],
    IoApic: [
        [wr(None, 0x00, 0x10 + 2 * pin, 4), wr(None, 0x10, low + pin, 4)]
        for pin in (0, 1, 4, 8, 9, 12, 23)
        for low in (0x00000030, 0x00008030, 0x0000A030, 0x00002030)
    ] + [[wr(None, 0x00, 0x01, 4), rd(None, 0x10, 4)], [wr(None, 0x40, 0x38, 4)]],
    I8042: [
        [wr('command_port', 0, cmd)] for cmd in (0x20, 0xAA, 0xAB, 0xAD, 0xAE, 0xD0, 0xFE)
    ] + [
        [wr('command_port', 0, 0x60), wr('data_port', 0, 0x47)],
        [wr('command_port', 0, 0xD2), wr('data_port', 0, 0x5A)],
        [wr('command_port', 0, 0xD3), wr('data_port', 0, 0xA5)],
        [wr('command_port', 0, 0xD1), wr('data_port', 0, 0xDF)],
        [rd('command_port', 0), rd('data_port', 0)],
    ],
    PciConfig: [
        [wr(None, 0, 0x80000000, 4), rd(None, 0, 4), rd(None, 4, 4)],
        [wr(None, 1, 0x02), wr(None, 1, 0x06)], [wr(None, 1, 0x04)], [rd(None, 1)],
    ],
    FwCfg: [
        [wr(None, 0, key, 2), rd(None, 1), rd(None, 1), rd(None, 1), rd(None, 1)]
        for key in (0x0000, 0x0001, 0x0003, 0x0005, 0x0014, 0x0015, 0x0019, 0x4000, 0x8000)
    ],
    DebugExit: [[wr(None, 0, 0x10)], [wr(None, 0, 0x11)]],
    # the virtio-mmio bring-up (virtio 1.2, 3.1.1 and 4.2.3.2), queue 0 in zeroed RAM
    VirtioRng: [
        [wr(None, 0x70, 0, 4), wr(None, 0x70, 1, 4), wr(None, 0x70, 3, 4)],
        [wr(None, 0x24, 1, 4), wr(None, 0x20, 1, 4), wr(None, 0x70, 11, 4)],
        [wr(None, 0x24, 0, 4), wr(None, 0x20, 0x30000000, 4)],
        [wr(None, 0x30, 0, 4), wr(None, 0x38, 16, 4), wr(None, 0x80, 0x1000, 4),
         wr(None, 0x90, 0x2000, 4), wr(None, 0xA0, 0x3000, 4), wr(None, 0x44, 1, 4)],
        [wr(None, 0x70, 15, 4)], [wr(None, 0x50, 0, 4)], [rd(None, 0x60, 4), wr(None, 0x64, 3, 4)],
    ],
    PostCode: [[wr(None, 0, 0x55), rd(None, 0)]],
}
GUEST_SEQUENCES[VirtioBlk] = GUEST_SEQUENCES[VirtioRng] + [[rd(None, 0x100, 8), rd(None, 0xFC, 4)]]
# both console queues (receiveq 0, transmitq 1) set up and notified
GUEST_SEQUENCES[VirtioConsole] = GUEST_SEQUENCES[VirtioRng] + [
    [wr(None, 0x30, 1, 4), wr(None, 0x38, 16, 4), wr(None, 0x80, 0x4000, 4),
     wr(None, 0x90, 0x5000, 4), wr(None, 0xA0, 0x6000, 4), wr(None, 0x44, 1, 4)],
    [wr(None, 0x50, 1, 4)], [rd(None, 0x100, 4), rd(None, 0x104, 4)]]

SIZES = (1, 2, 4, 8)
RANDOM_SIZES = (1, 1, 1, 2, 4, 8)             # as guests mix them
CLOCK_STEPS_NS = (1, 838, 30_000, 1_000_000, 10_000_000, 1_000_000_000)
ACTIVITY = 600                                # random operations per phase
SEEDS = range(4)                              # random runs per device
REBUILD_CHANCE = 1 / 8                        # the copy is rebuilt again after a step


def is_bus_object(obj):
    return isinstance(getattr(obj, 'SIZE', None), int) and hasattr(obj, 'read') and hasattr(obj, 'write')


def bus_views(device):
    """Every bus-facing object of ``device``, by its attribute name (None:
    the device itself): the views are the attributes that have SIZE, read
    and write."""
    views = {None: device} if is_bus_object(device) else {}
    views.update((name, obj) for name, obj in vars(device).items()
                 if obj is not device and is_bus_object(obj))
    return views


def random_ops(rng, device, count):
    """``count`` seeded operations on ``device``: accesses at any of its bus
    views, guest sequences, clock steps and board actions."""
    views = sorted(bus_views(device).items(), key=lambda item: item[0] or '')
    sequences = GUEST_SEQUENCES.get(type(device), [])
    ops = []
    while len(ops) < count:
        kind = rng.random()
        if kind < 0.15 and sequences:
            ops.extend(rng.choice(sequences))
        elif kind < 0.8:
            view, obj = rng.choice(views)
            size = rng.choice(RANDOM_SIZES)
            if obj.SIZE > 16 and rng.random() < 0.5:
                offset = rng.randrange(0, obj.SIZE, 16)     # where MMIO registers sit
            else:
                offset = rng.randrange(obj.SIZE)
            if kind < 0.4:
                ops.append(('read', view, offset, size))
            else:
                value = rng.choice((rng.getrandbits(8 * size), rng.randrange(256), 0,
                                    size_mask(size)))
                ops.append(('write', view, offset, size, value))
        elif kind < 0.9:
            ops.append(('step', rng.choice(CLOCK_STEPS_NS)))
        else:
            ops.append(('board', rng.getrandbits(32)))
    return ops[:count]


def partial_sequence(rng, device):
    """The start of one of the device's guest sequences, cut before its end."""
    sequences = [seq for seq in GUEST_SEQUENCES.get(type(device), []) if len(seq) > 1]
    if not sequences:
        return []
    seq = rng.choice(sequences)
    return seq[:rng.randrange(1, len(seq))]


def apply(device, wiring, op):
    """Carry out one operation; what it returns is compared between twins."""
    if op[0] == 'read':
        return bus_views(device)[op[1]].read(op[2], op[3])
    if op[0] == 'write':
        return bus_views(device)[op[1]].write(op[2], op[3], op[4])
    if op[0] == 'step':
        wiring.clock.advance(op[1])
        tick = getattr(device, 'tick', None)
        return tick() if tick is not None else None
    board = BOARD.get(type(device))
    return board(device, op[1]) if board is not None else None


class Wiring:
    """What the board hands a device: a stepped clock, an IRQ line, and
    callbacks (resets, exits, MSI messages, console output) that record what
    they are told in ``events``."""

    def __init__(self, now=0):
        self.clock = SteppedClock(now)
        self.irq = self.intr = IrqLine()       # a device's line (the PIC pair's INTR)
        self.out = self
        self.events = []
        self.memory = GuestMemory([(0, bytearray(1 << 16))])   # DMA: 64 KiB of zeroed RAM
        self.disk = BytesDisk(bytes(range(256)) * 64)          # a 32-sector disk
        self.entropy = lambda n: bytes(range(n % 256)) * (n // 256) + bytes(range(n % 256))

    def write(self, data):                    # the UART's output sink
        self.events.append(('out', bytes(data)))

    def on_reset(self):
        self.events.append(('reset',))

    def on_exit(self, status):
        self.events.append(('exit', status))

    def msi(self, address, data):
        self.events.append(('msi', address, data))

    def on_poweroff(self):
        self.events.append(('poweroff',))


def without(state, keys):
    """``state`` minus the dotted ``keys``."""
    state = json.loads(json.dumps(state))
    for key in keys:
        *path, last = key.split('.')
        node = state
        for name in path:
            node = node[name]
        del node[last]
    return state


class DeviceBaseTests(unittest.TestCase):

    def test_unimplemented_methods_name_the_class(self):
        class Bare(Device):
            pass
        dev = Bare()
        calls = (lambda: dev.read(0, 1), lambda: dev.write(0, 1, 0), dev.reset, dev.state,
                 lambda: Bare.from_state({'version': 1}), dev.check)
        for call in calls:
            with self.assertRaisesRegex(NotImplementedError, r'^Bare does not implement \w+\(\)'):
                call()

    def test_verify_raises_with_every_problem(self):
        class Broken(Device):
            def check(self):
                return ['one', 'two']
        with self.assertRaisesRegex(ValueError, r'^inconsistent Broken: one; two$'):
            Broken().verify()

    def test_verify_passes_a_consistent_device(self):
        PostCode().verify()


class DeviceContractTests(unittest.TestCase):

    def consistent(self, device, where):
        self.assertEqual(device.check(), [], where)

    def test_every_device_derives_from_device_and_has_a_bus_face(self):
        for name, factory in DEVICES:
            with self.subTest(device=name):
                device, port = factory(Wiring())
                self.assertIsInstance(device, Device)
                self.assertTrue(is_bus_object(port))
                self.assertGreaterEqual(port.SIZE, 1)
                self.assertIn(port, bus_views(device).values())
                self.consistent(device, 'fresh')

    def test_every_offset_at_every_size(self):
        for name, factory in DEVICES:
            with self.subTest(device=name):
                rng = random.Random(name)
                device, port = factory(Wiring())
                for offset in range(port.SIZE):
                    for size in SIZES:
                        where = f'offset {offset:#x} size {size}'
                        value = port.read(offset, size)
                        self.assertIs(type(value), int, where)
                        self.assertTrue(0 <= value <= size_mask(size), f'{where}: read {value:#x}')
                        self.consistent(device, f'{where}, after the read')
                        port.write(offset, size, rng.getrandbits(8 * size))
                        self.consistent(device, f'{where}, after the write')

    def test_hostile_values_everywhere(self):
        for name, factory in DEVICES:
            with self.subTest(device=name):
                rng = random.Random(name)
                device, port = factory(Wiring())
                for size in SIZES:
                    values = (0, size_mask(size), 0x80 << (8 * (size - 1)),
                              rng.getrandbits(8 * size), rng.getrandbits(8 * size))
                    for value in values:
                        for offset in range(port.SIZE):
                            where = f'offset {offset:#x} size {size} value {value:#x}'
                            port.write(offset, size, value)
                            self.consistent(device, where)
                            read = port.read(offset, size)
                            self.assertTrue(0 <= read <= size_mask(size), where)
                            self.consistent(device, where)

    def test_reset_equals_a_fresh_device(self):
        for (name, factory), seed in itertools.product(DEVICES, SEEDS):
            with self.subTest(device=name, seed=seed):
                rng = random.Random(f'{name}/{seed}')
                wiring = Wiring()
                device, _ = factory(wiring)
                for op in random_ops(rng, device, ACTIVITY):
                    apply(device, wiring, op)
                device.reset()
                self.consistent(device, 'after reset')
                fresh_wiring = Wiring(now=wiring.clock.now)
                fresh, _ = factory(fresh_wiring)
                keeps = RESET_KEEPS.get(type(device), ())
                self.assertEqual(without(device.state(), keeps), without(fresh.state(), keeps))
                self.assertEqual(wiring.irq.level, fresh_wiring.irq.level, 'IRQ level after reset')

    def round_trip(self, device, wiring, factory, where):
        """``device`` rebuilt from its JSON-copied state() on fresh wiring at
        the same clock time; it must start where ``device`` is."""
        state = device.state()
        self.assertIsInstance(state.get('version'), int, where)
        copy = json.loads(json.dumps(state))
        self.assertEqual(copy, state, f'{where}: state() is not plain JSON data')
        new_wiring = Wiring(now=wiring.clock.now)
        new, _ = factory(new_wiring, copy)
        self.consistent(new, f'{where}, restored')
        self.assertEqual(new.state(), state, f'{where}, restored')
        self.assertEqual(new_wiring.irq.level, wiring.irq.level, f'{where}, restored')
        return new, new_wiring

    def test_state_round_trip_mid_activity_gives_the_same_future(self):
        for (name, factory), seed in itertools.product(DEVICES, SEEDS):
            with self.subTest(device=name, seed=seed):
                rng = random.Random(f'{name}/{seed}')
                wa = Wiring()
                a, _ = factory(wa)
                # end halfway through a guest sequence: between a command and
                # its parameter, an index and its data, two bytes of a count
                for op in random_ops(rng, a, ACTIVITY) + partial_sequence(rng, a):
                    apply(a, wa, op)
                b, wb = self.round_trip(a, wa, factory, 'snapshot of the original')
                for step, op in enumerate(random_ops(rng, a, ACTIVITY)):
                    where = f'step {step}: {op}'
                    wa.events.clear()
                    wb.events.clear()
                    self.assertEqual(apply(a, wa, op), apply(b, wb, op), where)
                    self.assertEqual(wa.irq.level, wb.irq.level, where)
                    self.assertEqual(wa.events, wb.events, where)
                    self.consistent(b, where)
                    if rng.random() < REBUILD_CHANCE:
                        b, wb = self.round_trip(b, wb, factory, where)
                self.assertEqual(a.state(), b.state())


if __name__ == '__main__':
    unittest.main()
