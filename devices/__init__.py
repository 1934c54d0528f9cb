"""Device plugins for kvmlite: pure state machines on a port-I/O or MMIO bus.

The contract every device follows (after rust-vmm's vm-superio and kvmtool)
is stated in code by :class:`Device`, which every device model derives from,
and checked by tests/test_device_contract.py, which runs every bus-facing
device through it without /dev/kvm:

* ``SIZE``: how many ports (or MMIO bytes) the device decodes from its base.
* ``read(offset, size) -> int`` and ``write(offset, size, value)``: one guest
  access at ``offset`` from the device's base, ``size`` in bytes (1, 2, 4 or
  8). A device never sees its absolute address and never raises on a guest's
  bad access: it ignores it, counts it where useful, and stays consistent.
* Interrupt lines, output sinks, clocks and callbacks are handed in by the
  wiring (kvmlite's ``Machine``): ``__init__`` takes them, then calls
  ``reset()``. A device never calls an ioctl, never knows the bus, and
  registers nothing at import time.
* Time is read only from an injected ``clock`` (a callable returning
  nanoseconds). A device whose outputs change with time (PIT, RTC) has
  ``tick()``, which recomputes its outputs for ``clock()`` and returns the
  absolute time in ns at which they may next change (or ``None``); tests step
  a :class:`SteppedClock` and call ``tick()``.
* ``reset()`` puts the device in its power-on state: what a freshly built
  device has, but for what the part keeps by design (input pin levels,
  battery-backed RAM, host-side counters). ``state()`` returns a plain dict
  (JSON-able: ints, strs, bools, lists, dicts) with a ``version``, and
  ``from_state(state, **wiring)`` rebuilds a device from it with new wiring
  that behaves as the original from then on.
* ``check()`` lists the internal invariants that do not hold (empty when the
  device is consistent); ``verify()`` raises ValueError if there are any.
* A device whose ports are not one window (the PIC pair, the 8042, port 0x61
  of the PIT) hands the bus view objects with ``SIZE``, ``read`` and
  ``write``; reset, snapshot and check go through the device.
"""

__all__ = ['Device', 'IrqLine', 'SteppedClock', 'ByteRegisters', 'read_bytes', 'write_bytes',
           'size_mask', 'check_state_version']


class Device:
    """The contract above, in code: every device model derives from it.

    Its methods raise NotImplementedError, naming the class, until the
    device provides them; ``verify()`` is the one it inherits.  A device
    served through views (``PicPair``) provides all but ``read``/``write``.
    """

    SIZE = None     # ports (or MMIO bytes) decoded from the base: set by each device
    #: A timed device (one with ``tick()``): offsets whose byte writes never
    #: move its next deadline, so the board need not wake its timer thread.
    UNTIMED_WRITES = ()

    def _missing(self, method):
        return NotImplementedError(f'{type(self).__name__} does not implement {method}()')

    def read(self, offset, size):
        """A guest read of ``size`` (1, 2, 4 or 8) bytes at ``offset`` from
        the base: an int below ``1 << (8 * size)``.  Never raises for a bad
        access (past ``SIZE``, misaligned, unsupported width)."""
        raise self._missing('read')

    def write(self, offset, size, value):
        """A guest write; a bad access is ignored (or counted), never raised."""
        raise self._missing('write')

    def reset(self):
        """Power-on state; the wiring stays attached."""
        raise self._missing('reset')

    def state(self):
        """Plain JSON-able data (ints, strs, bools, lists, dicts) with a
        ``'version'`` key: everything :meth:`from_state` needs."""
        raise self._missing('state')

    @classmethod
    def from_state(cls, state, **wiring):
        """A device that behaves as the one whose ``state()`` this was,
        attached to new wiring."""
        raise NotImplementedError(f'{cls.__name__} does not implement from_state()')

    def check(self):
        """The internal invariants that do not hold, as strings: empty when
        the device is consistent."""
        raise self._missing('check')

    def verify(self):
        """Raise ValueError naming the device and every invariant
        :meth:`check` finds violated."""
        problems = self.check()
        if problems:
            raise ValueError(f'inconsistent {type(self).__name__}: ' + '; '.join(problems))


class IrqLine:
    """One interrupt request line: a level that a device drives.

    ``set(level)`` drives the line; the optional ``sink(level)`` is called
    only when the level changes (the wiring routes it to a PIC pin, an IOAPIC
    pin or KVM_IRQ_LINE).  ``pulse()`` raises and lowers it (an edge).  Tests
    read ``level`` and ``raised`` (how many low-to-high edges were seen).
    """

    __slots__ = ('level', 'raised', 'sink')

    def __init__(self, sink=None):
        self.level = 0
        self.raised = 0
        self.sink = sink

    def set(self, level):
        level = 1 if level else 0
        if level == self.level:
            return
        self.level = level
        if level:
            self.raised += 1
        if self.sink is not None:
            self.sink(level)

    def pulse(self):
        self.set(1)
        self.set(0)

    def __repr__(self):
        return f'IrqLine(level={self.level}, raised={self.raised})'


class SteppedClock:
    """A clock for tests: ``clock()`` returns ``now`` in ns; ``advance(ns)``."""

    def __init__(self, now=0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, ns):
        self.now += int(ns)
        return self.now


def size_mask(size):
    """All ones for an access of ``size`` bytes: 0xFF for 1, 0xFFFF for 2."""
    return (1 << (8 * size)) - 1


def read_bytes(read_byte, span, offset, size):
    """A wide read as the ISA bus does it: byte reads at successive ports.

    ``read_byte(port)`` reads one of the device's ``span`` ports; bytes past
    the device float high (0xFF). Sizes are clamped to 1..8.
    """
    if size == 1 and 0 <= offset < span:
        return read_byte(offset)            # the common case, kept cheap
    value = 0
    for i in range(max(1, min(int(size), 8))):
        port = offset + i
        value |= (read_byte(port) if 0 <= port < span else 0xFF) << (8 * i)
    return value


def write_bytes(write_byte, span, offset, size, value):
    """A wide write split into byte writes at successive ports; bytes past
    the device's ``span`` ports are dropped."""
    if size == 1 and 0 <= offset < span:
        write_byte(offset, int(value) & 0xFF)
        return
    for i in range(max(1, min(int(size), 8))):
        if 0 <= offset + i < span:
            write_byte(offset + i, (int(value) >> (8 * i)) & 0xFF)


class ByteRegisters:
    """A device of byte-wide registers: ``read``/``write`` split any access
    into ``_read_byte(port)`` / ``_write_byte(port, value)`` calls on the
    device's ``SIZE`` ports, as the ISA bus does."""

    def read(self, offset, size):
        return read_bytes(self._read_byte, self.SIZE, offset, size)

    def write(self, offset, size, value):
        write_bytes(self._write_byte, self.SIZE, offset, size, value)


STATE_VERSION = 1


def check_state_version(name, state):
    """Refuse a snapshot state of another version than this code writes."""
    if state.get('version') != STATE_VERSION:
        raise ValueError(f'{name} state version {state.get("version")!r} is not '
                         f'{STATE_VERSION}: it was saved by another kvmlite')
