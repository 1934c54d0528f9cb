"""The virtio-mmio transport (register layout version 2) and split virtqueues.

Sources: *Virtual I/O Device (VIRTIO) Version 1.2*, OASIS Committee
Specification 01:

* 2.1 Device Status Field (ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK,
  DEVICE_NEEDS_RESET, FAILED) and 2.1.2 (a device that sets
  DEVICE_NEEDS_RESET sends a configuration change notification);
* 2.2 Feature Bits and 6 Reserved Feature Bits (VIRTIO_F_INDIRECT_DESC 28,
  VIRTIO_F_EVENT_IDX 29, VIRTIO_F_VERSION_1 32);
* 2.4 Device Reset; 2.5.1 Driver Requirements: Device Configuration Space
  (the ConfigGeneration read around a multi-field read);
* 2.7 Split Virtqueues: 2.7.5 The Virtqueue Descriptor Table, 2.7.5.3
  Indirect Descriptors, 2.7.6 The Virtqueue Available Ring, 2.7.7 Used
  Buffer Notification Suppression, 2.7.8 The Virtqueue Used Ring, 2.7.10
  Available Buffer Notification Suppression (``used_event`` at the end of the
  available ring, ``avail_event`` at the end of the used ring, and the
  ``vring_need_event`` test);
* 4.2 Virtio Over MMIO: 4.2.2 MMIO Device Register Layout (the offsets
  below), 4.2.3 MMIO-specific Initialization And Device Operation (a
  DeviceID of 0 is a placeholder the driver ignores; QueueReady; the
  InterruptStatus bits 0 "used buffer" and 1 "configuration change").

====== ======================= ==== =====================================
offset register                dir  what
====== ======================= ==== =====================================
0x000  MagicValue              R    0x74726976 ("virt")
0x004  Version                 R    2 (the non-legacy layout)
0x008  DeviceID                R    the device type (0: no device)
0x00c  VendorID                R
0x010  DeviceFeatures          R    32 feature bits chosen by ...Sel
0x014  DeviceFeaturesSel       W
0x020  DriverFeatures          W    32 feature bits chosen by ...Sel
0x024  DriverFeaturesSel       W
0x030  QueueSel                W
0x034  QueueNumMax             R    0 for a queue that does not exist
0x038  QueueNum                W
0x044  QueueReady              RW
0x050  QueueNotify             W    the queue index
0x060  InterruptStatus         R
0x064  InterruptACK            W
0x070  Status                  RW   0 resets the device
0x080  QueueDescLow/High       W    (0x084)
0x090  QueueDriverLow/High     W    (0x094) the available ring
0x0a0  QueueDeviceLow/High     W    (0x0a4) the used ring
0x0ac  SHMSel                  W    no shared memory regions: lengths
0x0b0  SHMLenLow/High          R    (0x0b4) read all ones
0x0b8  SHMBaseLow/High         R    (0x0bc)
0x0fc  ConfigGeneration        R
0x100  Config                  RW   the device type's configuration space
====== ======================= ==== =====================================

Registers below 0x100 are 32 bits wide: other widths there are ignored
(reads give 0) and counted in ``ignored``. A hostile driver (a descriptor
chain that loops, leaves RAM, is longer than the queue, mixes the order of
readable and writable buffers, nests indirect tables, or an available index
that runs more than a queue size ahead) gets the queue refused: the device
sets DEVICE_NEEDS_RESET, raises a configuration change interrupt, counts the
refusal in ``refused`` (``last_refusal`` says why) and processes nothing
more until the driver resets it. Nothing a guest writes makes the device
touch memory outside RAM (:class:`GuestMemory` refuses it) or loop for
longer than its queue sizes allow.
"""

from . import Device, IrqLine, check_state_version, size_mask

__all__ = ['VirtioMmio', 'GuestMemory', 'DmaError', 'Chain', 'VirtioRefusal',
           'MAGIC', 'VERSION', 'VENDOR_ID', 'F_INDIRECT_DESC', 'F_EVENT_IDX', 'F_VERSION_1',
           'S_ACKNOWLEDGE', 'S_DRIVER', 'S_DRIVER_OK', 'S_FEATURES_OK', 'S_NEEDS_RESET',
           'S_FAILED', 'INT_USED', 'INT_CONFIG', 'DESC_F_NEXT', 'DESC_F_WRITE',
           'DESC_F_INDIRECT', 'need_event']

MAGIC = 0x74726976              # "virt", little-endian
VERSION = 2
VENDOR_ID = 0x4B564D4C          # "LMVK": kvmlite

# 4.2.2 register offsets
MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID_REG = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
SHM_SEL, SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH = 0x0AC, 0x0B0, 0x0B4, 0x0B8, 0x0BC
CONFIG_GENERATION, CONFIG = 0x0FC, 0x100

# 2.1 device status bits
S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK = 1, 2, 4, 8
S_NEEDS_RESET, S_FAILED = 64, 128
STATUS_BITS = S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK | S_FEATURES_OK | S_NEEDS_RESET | S_FAILED

# 6 reserved feature bits
F_INDIRECT_DESC, F_EVENT_IDX, F_VERSION_1 = 1 << 28, 1 << 29, 1 << 32

# 4.2.2 InterruptStatus bits
INT_USED, INT_CONFIG = 1, 2

# 2.7.5 descriptor flags; 2.7.6 / 2.7.8 ring flags
DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT = 1, 2, 4
AVAIL_F_NO_INTERRUPT = 1

DESC_SIZE = 16
#: the most descriptors an indirect table may hold (2.7.5.3.1 bounds it by
#: the queue size; kvmlite's queues are at most this long too)
MAX_QUEUE_SIZE = 256
#: how many chains one notification may make the device serve before it
#: returns to the guest: a driver cannot have more than 64 Ki in flight
MAX_CHAINS_PER_NOTIFY = 1 << 16


def need_event(event, new, old):
    """2.7.10: has the index moved from ``old`` to ``new`` past ``event``
    (all 16-bit, wrapping)?"""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


class DmaError(ValueError):
    """A guest-physical range that is not inside guest RAM."""


class VirtioRefusal(Exception):
    """A driver broke the split virtqueue rules: the queue is refused."""


class GuestMemory:
    """The guest-memory handle devices get for DMA: bounded reads and writes
    of guest-physical ranges, each inside one RAM region, and nothing else.

    ``regions``: ``[(gpa, buffer)]``, each buffer a writable bytes-like object
    (the board hands the memory slots' views; tests a ``bytearray``). A range
    that is not inside one region, or has a negative address or length,
    raises :class:`DmaError`: a device never reads or writes past RAM.
    """

    def __init__(self, regions):
        self.regions = sorted(((int(gpa), memoryview(buf).cast('B')) for gpa, buf in regions),
                              key=lambda r: r[0])

    def _view(self, gpa, size):
        if gpa < 0 or size < 0:
            raise DmaError(f'guest-physical range {gpa:#x}+{size:#x} is negative')
        for base, view in self.regions:
            if base <= gpa and gpa + size <= base + len(view):
                return view[gpa - base:gpa - base + size]
        raise DmaError(f'guest-physical range {gpa:#x}-{gpa + max(size, 1) - 1:#x} is not in RAM')

    def contains(self, gpa, size):
        try:
            self._view(gpa, size)
        except DmaError:
            return False
        return True

    def read(self, gpa, size):
        return bytes(self._view(gpa, size))

    def write(self, gpa, data):
        self._view(gpa, len(data))[:] = data

    def read_int(self, gpa, size):
        return int.from_bytes(self._view(gpa, size), 'little')

    def write_int(self, gpa, size, value):
        self._view(gpa, size)[:] = (int(value) & size_mask(size)).to_bytes(size, 'little')


class Chain:
    """One descriptor chain taken from the available ring: ``head`` (its
    index, what goes back in the used ring), ``readable`` and ``writable``:
    ``[(gpa, length)]`` in chain order, every range checked to be in RAM."""

    def __init__(self, memory, head, readable, writable):
        self.memory, self.head = memory, head
        self.readable, self.writable = readable, writable

    @property
    def readable_size(self):
        return sum(n for _, n in self.readable)

    @property
    def writable_size(self):
        return sum(n for _, n in self.writable)

    def read_all(self, limit=None):
        """The device-readable bytes, in order (at most ``limit``)."""
        out = bytearray()
        for gpa, n in self.readable:
            if limit is not None:
                n = min(n, limit - len(out))
                if n <= 0:
                    break
            out += self.memory.read(gpa, n)
        return bytes(out)

    def write_all(self, data, skip=0):
        """Scatter ``data`` into the device-writable buffers from byte
        ``skip`` on; returns how many bytes fit."""
        done, pos = 0, 0
        for gpa, n in self.writable:
            if pos + n <= skip:
                pos += n
                continue
            start = max(0, skip - pos)
            take = min(n - start, len(data) - done)
            if take <= 0:
                break
            self.memory.write(gpa + start, data[done:done + take])
            done += take
            pos += n
        return done


class _Queue:
    """A split virtqueue's registers and the device's ring positions."""

    FIELDS = ('num', 'ready', 'desc', 'avail', 'used', 'last_avail', 'used_idx', 'signalled')

    def __init__(self):
        self.num = 0             # QueueNum: 0 until the driver writes it
        self.ready = False
        self.desc = self.avail = self.used = 0
        self.last_avail = 0      # the next available-ring entry the device takes
        self.used_idx = 0        # the device's used.idx
        self.signalled = 0       # used.idx when the driver was last considered for an interrupt

    def state(self):
        return {k: getattr(self, k) for k in self.FIELDS}

    def load(self, state):
        for k in self.FIELDS:
            setattr(self, k, bool(state[k]) if k == 'ready' else int(state[k]))


class VirtioMmio(Device):
    """The transport every virtio-mmio device derives from.

    A device type sets ``DEVICE_ID``, ``QUEUES`` (how many virtqueues),
    ``QUEUE_SIZE`` (their QueueNumMax, a power of two up to 256) and
    ``FEATURES`` (its own bits; VERSION_1, INDIRECT_DESC and EVENT_IDX are
    added here), and provides ``config_bytes()`` (its configuration space)
    and ``serve(queue, chain) -> written`` (one request; the bytes it wrote
    into the chain's writable buffers). ``serve`` may raise
    :class:`VirtioRefusal` for a malformed request.

    Wiring: ``irq`` (an IrqLine: high while InterruptStatus is non-zero) and
    ``memory`` (a :class:`GuestMemory`).
    """

    SIZE = 0x200
    DEVICE_ID = 0
    QUEUES = 1
    QUEUE_SIZE = MAX_QUEUE_SIZE
    FEATURES = 0
    TRANSPORT_FEATURES = F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX
    #: state() keys reset() keeps: host-side counters
    COUNTERS = ('refused', 'ignored', 'served', 'interrupts')

    def __init__(self, irq=None, memory=None):
        self.irq = irq if irq is not None else IrqLine()
        self.memory = memory if memory is not None else GuestMemory([])
        self.refused = self.ignored = self.served = self.interrupts = 0
        self.last_refusal = ''
        self.config_generation = 0
        self.reset()

    # -- what a device type provides --
    def config_bytes(self):
        return b''

    def serve(self, queue, chain):
        raise VirtioRefusal(f'queue {queue} of a device without requests')

    def device_reset(self):
        """The device type's own reset (its queued data, its statistics)."""

    def device_state(self):
        return {}

    def load_device_state(self, state):
        pass

    def queue_notified(self, index):
        """Hook for a device that keeps buffers for later (the console's
        receive queue): called after the queue was served."""

    @property
    def present(self):
        """False for a placeholder (DeviceID 0) the driver must ignore."""
        return self.DEVICE_ID != 0

    @property
    def device_features(self):
        return self.FEATURES | self.TRANSPORT_FEATURES

    # -- reset and state --
    def reset(self):
        """2.4: status 0, no features, queues not ready, no interrupt."""
        self.status = 0
        self.device_features_sel = self.driver_features_sel = 0
        self.driver_features = 0
        self.queue_sel = 0
        self.shm_sel = 0
        self.interrupt_status = 0
        self.queues = [_Queue() for _ in range(self.QUEUES)]
        self.device_reset()
        self._update_irq()

    def state(self):
        return {
            'version': 1,
            'status': self.status, 'device_features_sel': self.device_features_sel,
            'driver_features_sel': self.driver_features_sel,
            'driver_features': self.driver_features, 'queue_sel': self.queue_sel,
            'shm_sel': self.shm_sel, 'interrupt_status': self.interrupt_status,
            'config_generation': self.config_generation,
            'queues': [q.state() for q in self.queues],
            'refused': self.refused, 'ignored': self.ignored, 'served': self.served,
            'interrupts': self.interrupts, 'last_refusal': self.last_refusal,
            'device': self.device_state(),
        }

    @classmethod
    def from_state(cls, state, **wiring):
        check_state_version(cls.__name__, state)
        dev = cls(**wiring)
        for k in ('status', 'device_features_sel', 'driver_features_sel', 'driver_features',
                  'queue_sel', 'shm_sel', 'interrupt_status', 'config_generation',
                  'refused', 'ignored', 'served', 'interrupts'):
            setattr(dev, k, int(state[k]))
        dev.last_refusal = str(state['last_refusal'])
        if len(state['queues']) != cls.QUEUES:
            raise ValueError(f'{cls.__name__} state has {len(state["queues"])} queues, '
                             f'not {cls.QUEUES}')
        for q, s in zip(dev.queues, state['queues']):
            q.load(s)
        dev.load_device_state(state['device'])
        dev._update_irq()
        dev.verify()
        return dev

    def check(self):
        problems = []
        if self.status & ~STATUS_BITS or not 0 <= self.status <= 0xFF:
            problems.append(f'status {self.status:#x} has bits that are not status bits')
        if self.interrupt_status & ~(INT_USED | INT_CONFIG):
            problems.append(f'interrupt status {self.interrupt_status:#x} has unknown bits')
        if self.irq.level != (1 if self.interrupt_status else 0):
            problems.append(f'IRQ level {self.irq.level} but interrupt status '
                            f'{self.interrupt_status:#x}')
        if self.driver_features & ~self.device_features:
            problems.append(f'driver features {self.driver_features:#x} not offered')
        for i, q in enumerate(self.queues):
            if q.num > self.QUEUE_SIZE or (q.ready and (q.num == 0 or q.num & (q.num - 1))):
                problems.append(f'queue {i} size {q.num} is not a power of two up to '
                                f'{self.QUEUE_SIZE}')
            for k in ('last_avail', 'used_idx', 'signalled'):
                if not 0 <= getattr(q, k) <= 0xFFFF:
                    problems.append(f'queue {i} {k} {getattr(q, k)} is not 16-bit')
        return problems

    # -- interrupts --
    def _update_irq(self):
        self.irq.set(1 if self.interrupt_status else 0)

    def _interrupt(self, bits):
        if bits & ~self.interrupt_status:
            self.interrupts += 1
        self.interrupt_status |= bits
        self._update_irq()

    def config_changed(self):
        """The configuration space changed (4.2.2 ConfigGeneration): a new
        generation and a configuration change interrupt."""
        self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        if self.status & S_DRIVER_OK:
            self._interrupt(INT_CONFIG)

    def refuse(self, why):
        """2.1.2: the device is broken until reset: DEVICE_NEEDS_RESET and a
        configuration change notification."""
        self.refused += 1
        self.last_refusal = why
        if not self.status & S_NEEDS_RESET:
            self.status |= S_NEEDS_RESET
            self._interrupt(INT_CONFIG)

    # -- registers --
    def read(self, offset, size):
        if offset >= CONFIG:
            config = self.config_bytes()
            off = offset - CONFIG
            size = max(1, min(int(size), 8))
            if off + size > len(config):
                self.ignored += 1
                return 0
            return int.from_bytes(config[off:off + size], 'little')
        if size != 4 or offset & 3:
            self.ignored += 1
            return 0
        q = self.queues[self.queue_sel] if self.queue_sel < self.QUEUES else None
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return self.DEVICE_ID
        if offset == VENDOR_ID_REG:
            return VENDOR_ID
        if offset == DEVICE_FEATURES:
            return (self.device_features >> (32 * self.device_features_sel)) & 0xFFFFFFFF \
                if self.device_features_sel < 2 else 0
        if offset == QUEUE_NUM_MAX:
            return self.QUEUE_SIZE if q is not None and self.present else 0
        if offset == QUEUE_READY:
            return 1 if q is not None and q.ready else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return self.status
        if offset in (SHM_LEN_LOW, SHM_LEN_HIGH, SHM_BASE_LOW, SHM_BASE_HIGH):
            return 0xFFFFFFFF           # no shared memory region with this id
        if offset == CONFIG_GENERATION:
            return self.config_generation
        self.ignored += 1               # write-only or reserved
        return 0

    def write(self, offset, size, value):
        value = int(value) & size_mask(max(1, min(int(size), 8)))
        if offset >= CONFIG:
            self.ignored += 1           # no writable configuration fields
            return
        if size != 4 or offset & 3:
            self.ignored += 1
            return
        if offset == STATUS:
            self._write_status(value)
        elif offset == QUEUE_NOTIFY:
            self.notify(value & 0xFFFF)
        elif offset == INTERRUPT_ACK:
            self.interrupt_status &= ~value
            self._update_irq()
        elif offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            self._write_driver_features(value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == SHM_SEL:
            self.shm_sel = value
        elif offset in (QUEUE_NUM, QUEUE_READY, QUEUE_DESC_LOW, QUEUE_DESC_HIGH, QUEUE_DRIVER_LOW,
                        QUEUE_DRIVER_HIGH, QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH):
            self._write_queue(offset, value)
        else:
            self.ignored += 1

    def _write_status(self, value):
        if value == 0:
            self.reset()
            return
        value &= 0xFF
        if value & ~STATUS_BITS or ~value & self.status & ~S_NEEDS_RESET:
            # 2.1.2: the driver only sets bits (until it resets); unknown bits are not status
            self.ignored += 1
            return
        new = value & ~self.status
        if new & S_FEATURES_OK and not self._features_acceptable():
            new &= ~S_FEATURES_OK       # 3.1.1: the driver reads it back and gives up
        self.status |= new & ~S_NEEDS_RESET

    def _features_acceptable(self):
        return (self.driver_features & F_VERSION_1
                and not self.driver_features & ~self.device_features)

    def _write_driver_features(self, value):
        if self.status & S_FEATURES_OK or self.driver_features_sel >= 2 or not self.present:
            self.ignored += 1
            return
        shift = 32 * self.driver_features_sel
        offered = (self.device_features >> shift) & 0xFFFFFFFF
        self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | \
            ((value & offered) << shift)

    def _write_queue(self, offset, value):
        if self.queue_sel >= self.QUEUES or not self.present:
            self.ignored += 1
            return
        q = self.queues[self.queue_sel]
        if offset == QUEUE_READY:
            if value & 1 and not q.ready:
                self._enable_queue(q)
            elif not value & 1:
                q.ready = False
            return
        if q.ready:
            self.ignored += 1           # 4.2.2: not while the queue is ready
            return
        if offset == QUEUE_NUM:
            q.num = min(value, 0xFFFF)
            return
        attr, high = {QUEUE_DESC_LOW: ('desc', 0), QUEUE_DESC_HIGH: ('desc', 1),
                      QUEUE_DRIVER_LOW: ('avail', 0), QUEUE_DRIVER_HIGH: ('avail', 1),
                      QUEUE_DEVICE_LOW: ('used', 0), QUEUE_DEVICE_HIGH: ('used', 1)}[offset]
        old = getattr(q, attr)
        setattr(q, attr, (old & 0xFFFFFFFF) | (value << 32) if high
                else (old & ~0xFFFFFFFF) | value)

    def _enable_queue(self, q):
        """QueueReady 1: the size must be a power of two up to QueueNumMax and
        the three areas aligned (2.7: 16, 2 and 4 bytes) and in RAM."""
        n = q.num
        if not 0 < n <= self.QUEUE_SIZE or n & (n - 1):
            q.num = 0 if n > self.QUEUE_SIZE else n
            self.refuse(f'queue {self.queue_sel}: size {n} is not a power of two up to '
                        f'{self.QUEUE_SIZE}')
            return
        areas = ((q.desc, DESC_SIZE * n, 16, 'descriptor table'),
                 (q.avail, 6 + 2 * n, 2, 'available ring'),
                 (q.used, 6 + 8 * n, 4, 'used ring'))
        for addr, length, align, what in areas:
            if addr % align or not self.memory.contains(addr, length):
                self.refuse(f'queue {self.queue_sel}: {what} at {addr:#x} is not {align}-byte '
                            'aligned in RAM')
                return
        q.ready = True
        q.last_avail = q.used_idx = q.signalled = 0

    # -- the split virtqueue --
    def notify(self, index):
        """QueueNotify: serve the queue's available chains."""
        if not self.status & S_DRIVER_OK or self.status & S_NEEDS_RESET \
                or index >= self.QUEUES or not self.queues[index].ready:
            self.ignored += 1           # before DRIVER_OK, after a reset, a broken device
            return
        try:
            self.process(index)
        except (VirtioRefusal, DmaError) as e:
            self.refuse(f'queue {index}: {e}')
            return
        self.queue_notified(index)

    def process(self, index, limit=MAX_CHAINS_PER_NOTIFY):
        """Serve every available chain of queue ``index``; raises
        VirtioRefusal or DmaError for a driver that broke the rules."""
        q, mem = self.queues[index], self.memory
        event_idx = self.driver_features & F_EVENT_IDX
        served = 0
        while served < limit:
            avail_idx = mem.read_int(q.avail + 2, 2)
            pending = (avail_idx - q.last_avail) & 0xFFFF
            if pending == 0:
                break
            if pending > q.num:
                raise VirtioRefusal(f'available index {avail_idx} is {pending} entries ahead '
                                    f'of the device, more than the queue size {q.num}')
            while pending and served < limit:
                chain = self.take(index)
                if chain is None:
                    break
                written = self.serve(index, chain)
                self.put_used(index, chain.head, written)
                self.served += 1
                served += 1
                pending -= 1
            if event_idx:               # 2.7.10: kick me again when you pass this index
                mem.write_int(q.used + 4 + 8 * q.num, 2, q.last_avail)
        self.signal_used(index)

    def pending(self, index):
        """How many chains the driver has made available and the device not
        taken (0 for a queue that is not ready)."""
        q = self.queues[index]
        if not q.ready:
            return 0
        return (self.memory.read_int(q.avail + 2, 2) - q.last_avail) & 0xFFFF

    def take(self, index):
        """The next available chain of queue ``index``, or None."""
        q = self.queues[index]
        if self.pending(index) == 0:
            return None
        head = self.memory.read_int(q.avail + 4 + 2 * (q.last_avail % q.num), 2)
        chain = self.walk(q, head)
        q.last_avail = (q.last_avail + 1) & 0xFFFF
        return chain

    def walk(self, q, head):
        """2.7.5: the chain from descriptor ``head``, indirect tables
        followed, every buffer checked; a loop or a chain longer than the
        queue is refused."""
        mem = self.memory
        readable, writable = [], []
        table, size, i, seen = q.desc, q.num, head, 0
        indirect = False
        budget = q.num                  # descriptors a chain may have (2.7.5.2)
        while True:
            if i >= size:
                raise VirtioRefusal(f'descriptor index {i} is past the table of {size}')
            seen += 1
            if seen > budget:
                raise VirtioRefusal(f'chain from head {head} is longer than {budget} '
                                    'descriptors (a loop?)')
            raw = mem.read(table + DESC_SIZE * i, DESC_SIZE)
            addr = int.from_bytes(raw[0:8], 'little')
            length = int.from_bytes(raw[8:12], 'little')
            flags = int.from_bytes(raw[12:14], 'little')
            nxt = int.from_bytes(raw[14:16], 'little')
            if flags & DESC_F_INDIRECT:
                if not self.driver_features & F_INDIRECT_DESC:
                    raise VirtioRefusal('indirect descriptor without VIRTIO_F_INDIRECT_DESC')
                if indirect:
                    raise VirtioRefusal('indirect descriptor inside an indirect table')
                if flags & DESC_F_NEXT:
                    raise VirtioRefusal('indirect descriptor with NEXT set')
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise VirtioRefusal(f'indirect table of {length} bytes')
                if not mem.contains(addr, length):
                    raise VirtioRefusal(f'indirect table at {addr:#x}+{length:#x} is not in RAM')
                indirect = True
                table, size, i = addr, length // DESC_SIZE, 0
                budget, seen = size, 0
                continue
            if not mem.contains(addr, length):
                raise VirtioRefusal(f'buffer at {addr:#x}+{length:#x} is not in RAM')
            if flags & DESC_F_WRITE:
                writable.append((addr, length))
            elif writable:
                raise VirtioRefusal('a device-readable buffer after a device-writable one')
            else:
                readable.append((addr, length))
            if not flags & DESC_F_NEXT:
                break
            i = nxt
        return Chain(mem, head, readable, writable)

    def put_used(self, index, head, written):
        """2.7.8: one used element, then the used index."""
        q, mem = self.queues[index], self.memory
        slot = q.used + 4 + 8 * (q.used_idx % q.num)
        mem.write(slot, int(head).to_bytes(4, 'little') + int(written).to_bytes(4, 'little'))
        q.used_idx = (q.used_idx + 1) & 0xFFFF
        mem.write_int(q.used + 2, 2, q.used_idx)

    def signal_used(self, index):
        """2.7.7 / 2.7.10: a used buffer interrupt, unless the driver asked
        for none (NO_INTERRUPT, or used_event not passed with EVENT_IDX)."""
        q, mem = self.queues[index], self.memory
        old, new = q.signalled, q.used_idx
        if old == new:
            return
        q.signalled = new
        if self.driver_features & F_EVENT_IDX:
            used_event = mem.read_int(q.avail + 4 + 2 * q.num, 2)
            if not need_event(used_event, new, old):
                return
        elif mem.read_int(q.avail, 2) & AVAIL_F_NO_INTERRUPT:
            return
        self._interrupt(INT_USED)
