"""A virtio-mmio driver in Python for the device tests: it negotiates
features and lays out split virtqueues in a GuestMemory over a bytearray,
as Linux's virtio_mmio and virtio_ring drivers do (virtio 1.2, 3.1 Device
Initialization, 2.7 Split Virtqueues)."""

import struct

from devices import IrqLine
from devices import virtio_mmio as vm

RAM = 1 << 20


class Driver:
    """Drives ``device`` (a VirtioMmio) through its registers.

    Memory layout per queue q: descriptor table at 0x10000 * (q + 1), the
    available ring 0x1000 after it, the used ring 0x2000 after it; data
    buffers from 0x80000 on (``alloc``)."""

    def __init__(self, cls, ram=RAM, **wiring):
        self.buf = bytearray(ram)
        self.memory = vm.GuestMemory([(0, self.buf)])
        self.irq = IrqLine()
        self.dev = cls(irq=self.irq, memory=self.memory, **wiring)
        self.next_buf = 0x80000
        self.avail_idx = {}
        self.free = {}
        self.last_used = {}
        self.num = {}

    # registers
    def r(self, off):
        return self.dev.read(off, 4)

    def w(self, off, value):
        self.dev.write(off, 4, value)

    def features(self):
        out = 0
        for sel in (0, 1):
            self.w(vm.DEVICE_FEATURES_SEL, sel)
            out |= self.r(vm.DEVICE_FEATURES) << (32 * sel)
        return out

    def negotiate(self, wanted=None):
        """3.1.1 steps 1-6; returns whether FEATURES_OK stuck."""
        self.w(vm.STATUS, 0)
        self.w(vm.STATUS, vm.S_ACKNOWLEDGE)
        self.w(vm.STATUS, vm.S_ACKNOWLEDGE | vm.S_DRIVER)
        offered = self.features()
        accept = offered if wanted is None else wanted
        for sel in (0, 1):
            self.w(vm.DRIVER_FEATURES_SEL, sel)
            self.w(vm.DRIVER_FEATURES, (accept >> (32 * sel)) & 0xFFFFFFFF)
        self.w(vm.STATUS, self.r(vm.STATUS) | vm.S_FEATURES_OK)
        return bool(self.r(vm.STATUS) & vm.S_FEATURES_OK)

    def base(self, q):
        return 0x10000 * (q + 1)

    def setup_queue(self, q, num=None):
        self.w(vm.QUEUE_SEL, q)
        num = num or self.r(vm.QUEUE_NUM_MAX)
        b = self.base(q)
        self.w(vm.QUEUE_NUM, num)
        for reg, addr in ((vm.QUEUE_DESC_LOW, b), (vm.QUEUE_DRIVER_LOW, b + 0x1000),
                          (vm.QUEUE_DEVICE_LOW, b + 0x2000)):
            self.w(reg, addr & 0xFFFFFFFF)
            self.w(reg + 4, addr >> 32)
        self.w(vm.QUEUE_READY, 1)
        self.num[q], self.avail_idx[q], self.last_used[q] = num, 0, 0
        self.free[q] = list(range(num))

    def start(self, wanted=None, queues=1):
        assert self.negotiate(wanted)
        for q in range(queues):
            self.setup_queue(q)
        self.w(vm.STATUS, self.r(vm.STATUS) | vm.S_DRIVER_OK)

    # buffers and chains
    def alloc(self, data_or_size):
        data = bytes(data_or_size) if not isinstance(data_or_size, int) else bytes(data_or_size)
        addr = self.next_buf
        self.next_buf += (len(data) + 15) & ~15 or 16
        self.buf[addr:addr + len(data)] = data
        return addr, len(data)

    def put_desc(self, q, i, addr, length, flags, nxt=0, table=None):
        base = self.base(q) if table is None else table
        struct.pack_into('<QIHH', self.buf, base + 16 * i, addr, length, flags, nxt)

    def submit(self, q, segments, indirect=False, notify=True):
        """``segments``: [(addr, length, writable)]; returns the head."""
        if indirect:
            table = self.next_buf
            self.next_buf += 16 * len(segments)
            for i, (a, n, wr) in enumerate(segments):
                last = i == len(segments) - 1
                self.put_desc(q, i, a, n, (vm.DESC_F_WRITE if wr else 0) |
                              (0 if last else vm.DESC_F_NEXT), i + 1, table=table)
            head = self.free[q].pop(0)
            self.put_desc(q, head, table, 16 * len(segments), vm.DESC_F_INDIRECT)
        else:
            ids = [self.free[q].pop(0) for _ in segments]
            for k, (i, (a, n, wr)) in enumerate(zip(ids, segments)):
                last = k == len(segments) - 1
                self.put_desc(q, i, a, n, (vm.DESC_F_WRITE if wr else 0) |
                              (0 if last else vm.DESC_F_NEXT), 0 if last else ids[k + 1])
            head = ids[0]
        self.make_available(q, head, notify)
        return head

    def make_available(self, q, head, notify=True):
        avail = self.base(q) + 0x1000
        idx = self.avail_idx[q]
        struct.pack_into('<H', self.buf, avail + 4 + 2 * (idx % self.num[q]), head)
        self.avail_idx[q] = idx = (idx + 1) & 0xFFFF
        struct.pack_into('<H', self.buf, avail + 2, idx)
        if notify:
            self.w(vm.QUEUE_NOTIFY, q)

    def set_used_event(self, q, value):
        struct.pack_into('<H', self.buf, self.base(q) + 0x1000 + 4 + 2 * self.num[q], value)

    def avail_event(self, q):
        return struct.unpack_from('<H', self.buf, self.base(q) + 0x2000 + 4 + 8 * self.num[q])[0]

    def used(self, q):
        """[(id, len)] the device returned since the last call."""
        used = self.base(q) + 0x2000
        idx = struct.unpack_from('<H', self.buf, used + 2)[0]
        out = []
        while self.last_used[q] != idx:
            i = self.last_used[q] % self.num[q]
            out.append(struct.unpack_from('<II', self.buf, used + 4 + 8 * i))
            self.last_used[q] = (self.last_used[q] + 1) & 0xFFFF
        return out

    def ack(self):
        isr = self.r(vm.INTERRUPT_STATUS)
        self.w(vm.INTERRUPT_ACK, isr)
        return isr
