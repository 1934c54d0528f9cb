"""Seeded random register traffic for kvmlite's device models and the PC bus.

    python3 tools/fuzz.py [--accesses 1000000] [--seed N] [--device NAME ...]
                          [--irqchip split|user|kernel] [--check-every 1]

A hostile guest may send any byte to any register in any order (issue #6).
For each device (and for the whole port and MMIO bus of a :class:`kvmlite.
Machine`, with no guest running) this drives seeded random accesses: known
command bytes and init sequences from the datasheets mixed with random
offsets, sizes and values, interleaved with what the wiring does (IRQ lines,
INTA, EOIs, console input, the clock moving on and ``tick()``). After every
access it calls the device's ``check()`` and bounds its queues (the UART's
receive FIFO, the console buffer, the buses' unclaimed counters); every
``SNAPSHOT_EVERY`` accesses it rebuilds the device from a JSON copy of its
``state()`` and compares. The first exception or violation ends that device's
run and is printed with the seed and the access count that replay it.

Devices: pic, pit, rtc, serial, ioapic, i8042, debug-exit, post, pci,
fw-cfg, and bus (the wired PC; needs /dev/kvm). Exit status 0 when every
run held, 1 when any failed, 2 for a usage error.
"""

import argparse
import json
import os
import random
import resource
import sys
import time

if __package__ in (None, ''):             # run as a script: find kvmlite
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kvmlite  # noqa: E402

(_pic, _pit, _rtc, _serial, _ioapic, _i8042, _debug_exit, _post, _pci, _fw_cfg,
 _console) = (
    kvmlite._import_part('devices', n)
    for n in ('pic', 'pit', 'rtc', 'serial', 'ioapic', 'i8042', 'debug_exit', 'post', 'pci',
              'fw_cfg', 'console'))
_devices = sys.modules[_pic.__name__.rpartition('.')[0]]
IrqLine, SteppedClock = _devices.IrqLine, _devices.SteppedClock

__all__ = ['TARGETS', 'Target', 'Result', 'fuzz', 'main']

DEFAULT_ACCESSES = 1_000_000
SNAPSHOT_EVERY = 997          # accesses between state() round trips
STATE_LIMIT = 64 << 10        # bytes of JSON a device's state may reach
CONSOLE_LIMIT = 4096          # the bus target's COM1 output buffer
SIZES = (1, 1, 1, 2, 4, 8)    # access sizes, bytes weighted as guests do
# values that reach corner cases more often than random bits do
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF, 0x100, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, (1 << 64) - 1)
# how far the clock moves in one step: an input clock period, a character,
# a timer tick, a second
CLOCK_STEPS_NS = (1, 838, 30_000, 1_000_000, 10_000_000, 1_000_000_000)


class Target:
    """One thing to fuzz. A subclass sets ``ports`` (bus-facing objects, each
    with ``SIZE``, ``read`` and ``write``), ``words`` (meaningful ``(port,
    offset, size, value)`` writes), ``sequences`` (lists of such writes, e.g.
    an init sequence) and overrides ``side()`` (what the wiring does),
    ``problems()`` and ``snapshot()``."""

    name = ''
    ports = ()
    words = ()
    sequences = ()

    def __init__(self, rng):
        self.rng = rng
        self.clock = SteppedClock(1_000_000_000)
        self._queue = []
        self.last = 'nothing yet'

    def step(self):
        """One action; returns True if it was a register access."""
        rng = self.rng
        if self._queue:
            return self._write(*self._queue.pop())
        r = rng.random()
        if r < 0.08:
            self.last = 'side action'
            self.side()
            return False
        if r < 0.13 and self.sequences:
            self._queue = list(reversed(rng.choice(self.sequences)))
            return self.step()
        if r < 0.45 and self.words:
            return self._write(*rng.choice(self.words))
        port = rng.randrange(len(self.ports))
        size = rng.choice(SIZES)
        size_max = self.ports[port].SIZE
        offset = rng.randrange(size_max) if rng.random() < 0.97 else rng.randrange(-2, size_max + 3)
        if r < 0.72:
            return self._write(port, offset, size, self._value(size))
        self.last = f'read of {size} at port {port} offset {offset}'
        value = self.ports[port].read(offset, size)
        if not isinstance(value, int) or value < 0:
            raise ValueError(f'read returned {value!r}')
        return True

    def _write(self, port, offset, size, value):
        self.last = f'write of {value:#x} ({size} bytes) at port {port} offset {offset}'
        self.ports[port].write(offset, size, value & ((1 << (8 * size)) - 1))
        return True

    def _value(self, size):
        rng = self.rng
        return rng.choice(INTERESTING) if rng.random() < 0.3 else rng.getrandbits(8 * size)

    def tick_clock(self):
        self.clock.advance(self.rng.choice(CLOCK_STEPS_NS))

    def tick_device(self, dev):
        """Move the clock on and tick ``dev``: its next deadline must lie ahead."""
        self.tick_clock()
        deadline = dev.tick()
        if deadline is not None and deadline <= self.clock.now:
            raise ValueError(f'tick() gave deadline {deadline}, not after now {self.clock.now}')

    def side(self):
        self.tick_clock()

    def problems(self):
        return []

    def snapshot(self):
        """Problems with a state() round trip through JSON ([] if none)."""
        return []


def _round_trip(label, device, rebuild):
    """state() must be JSON, bounded, versioned, and rebuild an equal device."""
    state = device.state()
    text = json.dumps(state, sort_keys=True)
    if len(text) > STATE_LIMIT:
        return [f'{label} state is {len(text)} bytes of JSON (limit {STATE_LIMIT})']
    if state.get('version') != 1:
        return [f'{label} state has version {state.get("version")!r}']
    again = rebuild(json.loads(text)).state()
    if json.dumps(again, sort_keys=True) != text:
        return [f'{label} state changes in a round trip through from_state()']
    return []


# --- one target per device ----------------------------------------------------

class PicTarget(Target):
    name = 'pic'

    def __init__(self, rng):
        super().__init__(rng)
        self.dev = _pic.PicPair()
        self.ports = (self.dev.master, self.dev.slave, self.dev.elcr)
        # ICW1 edge/level, OCW2 EOIs and rotations, OCW3 reads, poll, SMM
        self.words = [(p, 0, 1, v) for p in (0, 1) for v in
                      (0x11, 0x19, 0x13, 0x20, 0x60, 0x62, 0xA0, 0xC7, 0xE3,
                       0x0A, 0x0B, 0x0C, 0x68, 0x48)]
        self.words += [(p, 1, 1, v) for p in (0, 1)
                       for v in (0x00, 0xFF, 0xFB, 0x20, 0x28, 0x04, 0x02)]
        self.words += [(2, o, 1, v) for o in (0, 1) for v in (0x00, 0xF8, 0xDE, 0xFF)]
        self.sequences = [[(0, 0, 1, 0x11), (0, 1, 1, 0x20), (0, 1, 1, 0x04), (0, 1, 1, 0x01)],
                          [(1, 0, 1, 0x11), (1, 1, 1, 0x28), (1, 1, 1, 0x02), (1, 1, 1, 0x01)],
                          [(0, 0, 1, 0x13), (0, 1, 1, 0x08), (0, 1, 1, 0x03)]]

    def side(self):
        rng = self.rng
        if rng.random() < 0.6:
            self.dev.set_irq(rng.randrange(16), rng.randrange(2))
        elif self.dev.pending() or rng.random() < 0.2:
            vector = self.dev.acknowledge()
            if not 0 <= vector <= 0xFF:
                raise ValueError(f'INTA returned vector {vector!r}')

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip('PIC', self.dev, _pic.PicPair.from_state)


class PitTarget(Target):
    name = 'pit'

    def __init__(self, rng):
        super().__init__(rng)
        self.irq = IrqLine()
        self.dev = _pit.Pit(self.clock, irq=self.irq)
        self.ports = (self.dev, self.dev.port61)
        controls = (0x34, 0x36, 0x30, 0x32, 0x38, 0x3A, 0x54, 0x74, 0xB0, 0xB6,
                    0x00, 0x40, 0x80, 0xC2, 0xD2, 0xE2, 0xCE, 0xDE, 0xEE)
        self.words = [(0, 3, 1, v) for v in controls]
        self.words += [(0, c, 1, v) for c in (0, 1, 2) for v in (0, 1, 2, 3, 0x9C, 0x2E, 0xFF)]
        self.words += [(1, 0, 1, v) for v in (0, 1, 2, 3, 0xFF)]
        self.sequences = [[(0, 3, 1, 0x34), (0, 0, 1, 0x9C), (0, 0, 1, 0x2E)],   # Linux's HZ
                          [(0, 3, 1, 0x34), (0, 0, 1, 2), (0, 0, 1, 0)],        # fastest rate
                          [(1, 0, 1, 1), (0, 3, 1, 0xB0), (0, 2, 1, 0xFF), (0, 2, 1, 0xFF)]]

    def side(self):
        self.tick_device(self.dev)

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip('PIT', self.dev, lambda s: _pit.Pit.from_state(s, self.clock))


class RtcTarget(Target):
    name = 'rtc'

    def __init__(self, rng):
        super().__init__(rng)
        self.irq = IrqLine()
        self.dev = _rtc.Rtc(self.clock, irq=self.irq)
        self.ports = (self.dev,)
        indices = (0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D,
                   0x32, 0x7F, 0x80, 0x8A, 0x8B, 0x8C)
        self.words = [(0, 0, 1, i) for i in indices]
        self.words += [(0, 1, 1, v) for v in (0x00, 0x26, 0x23, 0x2F, 0x70, 0x02, 0x06, 0x42,
                                                 0x72, 0x80, 0x90, 0xFF, 0x59, 0x99)]
        self.sequences = [[(0, 0, 1, 0x0A), (0, 1, 1, 0x23), (0, 0, 1, 0x0B), (0, 1, 1, 0x42)],
                          [(0, 0, 1, 0x0B), (0, 1, 1, 0x82), (0, 0, 1, 0x00), (0, 1, 1, 0x59),
                           (0, 0, 1, 0x0B), (0, 1, 1, 0x32)],
                          [(0, 0, 1, 0x0C), (0, 0, 1, 0x0C)]]

    def side(self):
        self.tick_device(self.dev)

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip('RTC', self.dev, lambda s: _rtc.Rtc.from_state(s, self.clock))


class SerialTarget(Target):
    name = 'serial'

    def __init__(self, rng):
        super().__init__(rng)
        self.out = _console.MemoryBackend(limit=CONSOLE_LIMIT)
        self.dev = _serial.Serial(irq=IrqLine(), out=self.out, clock=self.clock)
        self.ports = (self.dev,)
        self.words = [(0, 3, 1, v) for v in (0x03, 0x83, 0x1B, 0x80, 0x00, 0x43)]
        self.words += [(0, 2, 1, v) for v in (0x00, 0x01, 0x07, 0xC7, 0x87, 0x47, 0x06, 0x08)]
        self.words += [(0, 1, 1, v) for v in (0x00, 0x01, 0x02, 0x05, 0x0F)]
        self.words += [(0, 4, 1, v) for v in (0x00, 0x0B, 0x10, 0x1F, 0x08)]
        self.words += [(0, 0, 1, v) for v in (0x41, 0x0A, 0x00, 0xFF)]
        self.sequences = [[(0, 3, 1, 0x80), (0, 0, 1, 1), (0, 1, 1, 0), (0, 3, 1, 0x03)],
                          [(0, 2, 1, 0xC7), (0, 1, 1, 0x0F), (0, 4, 1, 0x0B)],
                          [(0, 4, 1, 0x10)] + [(0, 0, 1, c) for c in b'loopback echo!'],
                          [(0, 0, 1, c) for c in b'x' * 40]]

    def side(self):
        rng = self.rng
        r = rng.random()
        if r < 0.5:
            self.dev.receive(rng.randbytes(rng.randrange(40)))
        elif r < 0.6:
            self.dev.receive_break()
        else:
            self.tick_clock()
            self.dev.tick()

    def problems(self):
        problems = self.dev.check()
        if len(self.dev.rx) > _serial.FIFO_SIZE:
            problems.append(f'{len(self.dev.rx)} characters queued, FIFO holds {_serial.FIFO_SIZE}')
        if len(self.out.output) > self.out.limit:
            problems.append(f'console holds {len(self.out.output)} bytes, limit {self.out.limit}')
        return problems

    def snapshot(self):
        return _round_trip('UART', self.dev,
                           lambda s: _serial.Serial.from_state(s, clock=self.clock))


class IoapicTarget(Target):
    name = 'ioapic'

    def __init__(self, rng):
        super().__init__(rng)
        self.messages = 0
        self.dev = _ioapic.IoApic(msi=self._msi)
        self.ports = (self.dev,)
        sel = [(0, 0, 4, i) for i in (0, 1, 2, 0x10, 0x11, 0x12, 0x13, 0x3E, 0x3F, 0x40, 0xFF)]
        win = [(0, 0x10, 4, v) for v in (0x00000030, 0x00008030, 0x0000A030, 0x00010030,
                                         0x00000730, 0x00000430, 0x0F000000, 0xFFFFFFFF)]
        self.words = sel + win + [(0, 0x40, 4, v) for v in (0x30, 0x31, 0)]
        self.sequences = [[(0, 0, 4, 0x10 + 2 * pin), (0, 0x10, 4, 0x8030 + pin)]
                          for pin in range(0, 24, 3)]

    def _msi(self, address, data):
        self.messages += 1
        if address & 0xFFF00000 != _ioapic.MSI_ADDR_BASE:
            raise ValueError(f'MSI to address {address:#x}')
        if self.rng.random() < 0.3:                   # an EOI that re-enters
            self.dev.eoi(data & 0xFF)

    def side(self):
        rng = self.rng
        if rng.random() < 0.7:
            self.dev.set_irq(rng.randrange(-1, 25), rng.randrange(2))
        else:
            self.dev.eoi(rng.randrange(256))

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip('IOAPIC', self.dev, _ioapic.IoApic.from_state)


class I8042Target(Target):
    name = 'i8042'

    def __init__(self, rng):
        super().__init__(rng)
        self.resets = 0
        self.dev = _i8042.I8042(on_reset=self._reset, irq=IrqLine())
        self.ports = (self.dev.data_port, self.dev.command_port, self.dev)
        commands = (0x20, 0x60, 0xA7, 0xA8, 0xA9, 0xAA, 0xAB, 0xAD, 0xAE, 0xD0, 0xD1,
                    0xD2, 0xD3, 0xD4, 0xF0, 0xFE, 0xFF, 0xED, 0x00)
        self.words = [(1, 0, 1, c) for c in commands]
        self.words += [(0, 0, 1, v) for v in (0x00, 0x01, 0x03, 0x47, 0x65, 0xFF, 0xF4)]

    def _reset(self):
        self.resets += 1

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip('8042', self.dev, _i8042.I8042.from_state)


class _Simple(Target):
    """A device with no wiring of its own: only register traffic."""
    factory = None

    def __init__(self, rng):
        super().__init__(rng)
        self.dev = type(self).factory()
        self.ports = (self.dev,)

    def problems(self):
        return self.dev.check()

    def snapshot(self):
        return _round_trip(self.name, self.dev, type(self.dev).from_state)


class DebugExitTarget(_Simple):
    name = 'debug-exit'
    factory = staticmethod(lambda: _debug_exit.DebugExit(on_exit=lambda status: None))


class PostTarget(_Simple):
    name = 'post'
    factory = _post.PostCode


class PciTarget(_Simple):
    name = 'pci'
    factory = staticmethod(lambda: _pci.PciConfig(on_reset=lambda: None))
    words = [(0, 0, 4, v) for v in (0x80000000, 0x80000800, 0x8000F8FC, 0x7FFFFFFF)]
    words += [(0, 1, 1, v) for v in (0x02, 0x04, 0x06, 0x0E)]


class FwCfgTarget(_Simple):
    name = 'fw-cfg'
    factory = staticmethod(lambda: _fw_cfg.FwCfg(ram_size=64 << 20, cpus=2,
                                                 cmdline=b'console=ttyS0'))
    words = [(0, 0, 2, k)
             for k in (0, 1, 3, 5, 0x0F, 0x14, 0x15, 0x19, 0x20, 0x4000, 0x8000, 0xFFFF)]
    words += [(0, 1, 1, 0)]


class BusTarget(Target):
    """The whole PC of a kvmlite.Machine (no guest running): accesses go
    through ``vm.pio`` and ``vm.mmio`` as a guest's exits would."""
    name = 'bus'
    irqchip = 'split'
    # writes a guest uses on these ports, at the ports' absolute addresses
    PORT_WORDS = ([(0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0x00),
                   (0x20, 0x20), (0xA0, 0x20), (0x43, 0x34), (0x40, 0x02), (0x40, 0x00),
                   (0x61, 0x03), (0x70, 0x0A), (0x71, 0x2F), (0x70, 0x0B), (0x71, 0x42),
                   (0x70, 0x0C), (0x3F9, 0x0F), (0x3FC, 0x0B), (0x3F8, 0x41), (0x3FA, 0xC7),
                   (0x64, 0x20), (0x64, 0xAA), (0x64, 0xD2), (0x60, 0x55), (0x4D0, 0xF8),
                   (0x4D1, 0xDE), (0x80, 0x55), (0x510, 0x00)])

    def __init__(self, rng):
        super().__init__(rng)
        self.console = _console.MemoryBackend(limit=CONSOLE_LIMIT)
        self.m = kvmlite.Machine(mem_size=2 << 20, irqchip=self.irqchip, console=self.console,
                                 clock=self.clock)
        self.pio, self.mmio = self.m.vm.pio, self.m.vm.mmio
        self.claimed = sorted({p for base, size, _, _ in self.pio.devices()
                               for p in range(base, base + size)} - {0xF4, 0xF5, 0xF6, 0xF7})
        self.ioapic = self.m.platform.ioapic_addr

    def close(self):
        self.m.close()

    def step(self):
        rng, m = self.rng, self.m
        r = rng.random()
        if r < 0.08:
            self.last = 'side action'
            self.side()
            return False
        size = rng.choice((1, 1, 1, 2, 4))
        if r < 0.80:
            if r < 0.35:
                port, value = rng.choice(self.PORT_WORDS)
                size = 1
            else:
                port = rng.choice(self.claimed) if rng.random() < 0.9 else rng.randrange(0x10000)
                value = self._value(size) & ((1 << (8 * size)) - 1)
            if rng.random() < 0.4:
                self.last = f'inb/w/l of {size} at port {port:#x}'
                self.pio.read(port, size)
            else:
                self.last = f'out of {value:#x} ({size} bytes) at port {port:#x}'
                self.pio.write(port, size, value)
        else:
            size = rng.choice((1, 2, 4, 8))
            if rng.random() < 0.7 and m.ioapic is not None:
                addr = self.ioapic + rng.choice((0, 0x10, 0x40, rng.randrange(0x100)))
            else:
                addr = rng.randrange(m.mem_size, 1 << 32)
            value = self._value(size) & ((1 << (8 * size)) - 1)
            if rng.random() < 0.5:
                self.last = f'MMIO read of {size} at {addr:#x}'
                self.mmio.read(addr, size)
            else:
                self.last = f'MMIO write of {value:#x} ({size} bytes) at {addr:#x}'
                self.mmio.write(addr, size, value)
        m.result = None                           # a guest's reset or exit ends nothing here
        return True

    def side(self):
        """What the Machine's threads do: timers, console input, INTA, EOIs."""
        rng, m = self.rng, self.m
        r = rng.random()
        if r < 0.5:
            self.tick_clock()
            for dev in m._timed:
                dev.tick()
        elif r < 0.7:
            self.console.feed(rng.randbytes(rng.randrange(64)))
            m._feed_console()
        elif r < 0.9 and m.pic is not None:
            if m.pic.pending():
                m.pic.acknowledge()
        elif m.ioapic is not None:
            m.ioapic.eoi(rng.randrange(256))

    def devices(self):
        m = self.m
        found = [('i8042', m.i8042), ('POST', m.post), ('debug exit', m.debug_exit),
                 ('PCI', m.pci), ('fw_cfg', m.fw_cfg), ('RTC', m.rtc)]
        found += [(f'COM{i + 1}', s) for i, s in enumerate(m.serials)]
        found += [(n, d) for n, d in (('PIC', m.pic), ('PIT', m.pit), ('IOAPIC', m.ioapic))
                  if d is not None]
        return found

    def problems(self):
        problems = [f'{name}: {p}' for name, dev in self.devices() for p in dev.check()]
        for bus in (self.pio, self.mmio):
            if len(bus.unclaimed) > kvmlite.BUS_COUNTED_ADDRESSES:
                problems.append(f'{bus.kind} bus counts {len(bus.unclaimed)} unclaimed addresses')
        if len(self.console.output) > CONSOLE_LIMIT:
            problems.append(f'console holds {len(self.console.output)} bytes')
        if len(self.m._pending_input) > 4096:
            problems.append(f'{len(self.m._pending_input)} bytes of console input wait')
        return problems

    def snapshot(self):
        return [p for name, dev in self.devices()
                for p in _round_trip(name, dev, lambda s, d=dev: _rebuild(d, s, self.clock))]


def _rebuild(device, state, clock):
    cls = type(device)
    if cls in (_pit.Pit, _rtc.Rtc):
        return cls.from_state(state, clock)
    if cls is _serial.Serial:
        return cls.from_state(state, clock=clock)
    return cls.from_state(state)


class BusUserTarget(BusTarget):
    name = 'bus-user'
    irqchip = 'user'


class BusKernelTarget(BusTarget):
    name = 'bus-kernel'
    irqchip = 'kernel'


TARGETS = {t.name: t for t in (PicTarget, PitTarget, RtcTarget, SerialTarget, IoapicTarget,
                               I8042Target, DebugExitTarget, PostTarget, PciTarget, FwCfgTarget,
                               BusTarget, BusUserTarget, BusKernelTarget)}
DEFAULT_TARGETS = [n for n in TARGETS if not n.startswith('bus-')]


# --- the driver ----------------------------------------------------------------

class Result:
    """How one run went: ``accesses`` made, ``seconds``, and ``failure`` (None
    when every check held, else one line naming what broke)."""

    def __init__(self, name, seed, accesses, seconds, failure=None):
        self.name, self.seed, self.accesses = name, seed, accesses
        self.seconds, self.failure = seconds, failure

    @property
    def ok(self):
        return self.failure is None

    def line(self):
        rate = self.accesses / self.seconds if self.seconds > 0 else 0
        head = f'{self.name:10} {self.accesses:9} accesses {rate:9.0f}/s'
        if self.ok:
            return f'{head}  ok'
        return (f'{head}  FAILED (seed {self.seed}): {self.failure}\n'
                f'{"":10} replay: python3 tools/fuzz.py --device {self.name} '
                f'--seed {self.seed} --accesses {self.accesses}')


def fuzz(target_cls, accesses, seed, check_every=1):
    """Run ``accesses`` register accesses on a fresh ``target_cls``; a Result.
    The generator is seeded by ``seed`` and the target's name, so one seed
    replays every device's run."""
    rng = random.Random(f'{seed}/{target_cls.name}')
    target = target_cls(rng)
    done, start = 0, time.perf_counter()
    failure = None
    try:
        while done < accesses:
            if target.step():
                done += 1
                if done % check_every == 0 or done == accesses:
                    failure = _first(target.problems(), f'after {target.last}')
                if failure is None and done % SNAPSHOT_EVERY == 0:
                    failure = _first(target.snapshot(), 'in the snapshot')
            if failure is not None:
                break
        if failure is None:
            failure = _first(target.problems() + target.snapshot(), 'at the end')
    except Exception as e:                  # noqa: BLE001 - a device must never raise
        failure = f'{type(e).__name__}: {e} (on {target.last})'
    finally:
        if hasattr(target, 'close'):
            target.close()
    return Result(target_cls.name, seed, done, time.perf_counter() - start, failure)


def _first(problems, where):
    if not problems:
        return None
    more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
    return f'{problems[0]}{more} {where}'


def _rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv=None, out=sys.stdout):
    ap = argparse.ArgumentParser(prog='fuzz', description=__doc__.split('\n\n')[0])
    ap.add_argument('--accesses', type=int, default=DEFAULT_ACCESSES,
                    help=f'register accesses per device (default {DEFAULT_ACCESSES})')
    ap.add_argument('--seed', type=int, help='seed (default: a new one, printed)')
    ap.add_argument('--device', action='append', choices=sorted(TARGETS),
                    help='fuzz only this device (repeatable; default: all but bus-user/bus-kernel)')
    ap.add_argument('--check-every', type=int, default=1, metavar='N',
                    help='call check() after every N accesses (default 1)')
    args = ap.parse_args(argv)
    if args.accesses < 1 or args.check_every < 1:
        ap.error('--accesses and --check-every take a positive number')
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f'seed {seed}, {args.accesses} accesses per device', file=out)
    failed = 0
    for name in args.device or DEFAULT_TARGETS:
        rss = _rss_kib()
        result = fuzz(TARGETS[name], args.accesses, seed, args.check_every)
        grew = _rss_kib() - rss
        note = f'  (peak RSS +{grew} KiB)' if grew > 1024 else ''
        print(result.line() + note, file=out, flush=True)
        failed += not result.ok
    print(f'{failed} failed' if failed else 'all held', file=out)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
