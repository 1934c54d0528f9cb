"""An exit trace for a :class:`tools.pc.Machine`: ``kvmlite run --trace FILE``.

One line per event, as it happens::

    0.004213 vcpu0 io-out 0x3f8 1 0x78 COM1 16550A
    0.004305 vcpu0 io-in 0x3fd 1 0x60 COM1 16550A
    0.004410 vcpu0 mmio-write 0xd0000000 4 0x1 unclaimed
    0.009120 vcpu1 hlt

fields: seconds since the tracer started, the vCPU ('-' for an access made
outside a vCPU thread), the kind, then for port I/O and MMIO the port or
address, the size, the value (for a read, the value returned) and the device
that answered by its bus name (or ``unclaimed``).

How it attaches, so that a run without ``--trace`` pays nothing: every
device range on the buses is re-registered behind a recording proxy, and the
buses' own read/write (the path of unclaimed accesses) are replaced on the
instances; the board's exit table is wrapped once per vCPU thread at start.
Writes KVM buffers in its coalesced ring (the POST port, a polled UART's
THR) are traced when they reach the device, which is when the VMM sees them.

A filter (``--trace-filter``) keeps some kinds, each optionally limited to a
port/address range: ``io:0x3f8-0x3ff`` is COM1 alone, ``io,hlt`` all port
I/O and halts, ``mmio:0xfec00000-0xfec00fff`` the IOAPIC. Kinds: io, mmio,
hlt, eoi, intr (a kick or signal), irq (an interrupt window), debug,
internal, shutdown, system (a system event), fail (a failed entry).

If the trace cannot be written (a full disk, a closed pipe), tracing stops
with one warning on stderr and the guest runs on.

Sources: the KVM API text (Documentation/virt/kvm/api.rst, struct kvm_run's
exit reasons) for the kinds.
"""

import sys
import threading
import time

from kvmlite import (Debug, FailEntry, Hlt, InternalError, Interrupted, IoapicEoi,
                     IrqWindowOpen, Shutdown, SystemEvent)

__all__ = ['Tracer', 'parse_filter', 'KINDS']

_EXIT_KINDS = {Hlt: 'hlt', IoapicEoi: 'eoi', Interrupted: 'intr', IrqWindowOpen: 'irq',
               Debug: 'debug', InternalError: 'internal', Shutdown: 'shutdown',
               SystemEvent: 'system', FailEntry: 'fail'}
KINDS = ('io', 'mmio') + tuple(sorted(set(_EXIT_KINDS.values())))


def parse_filter(text):
    """'io:0x3f8-0x3ff,hlt' -> {'io': [(0x3f8, 0x3ff)], 'hlt': None}. Raises ValueError."""
    out = {}
    for item in (text or '').split(','):
        item = item.strip()
        if not item:
            continue
        kind, sep, span = item.partition(':')
        if kind not in KINDS:
            raise ValueError(f'trace filter {item!r}: no kind {kind!r}: use {", ".join(KINDS)}')
        if not sep:
            out[kind] = None
            continue
        if kind not in ('io', 'mmio'):
            raise ValueError(f'trace filter {item!r}: only io and mmio take a range')
        lo, _, hi = span.partition('-')
        try:
            lo = int(lo, 0)
            hi = int(hi, 0) if hi else lo
        except ValueError:
            raise ValueError(f'trace filter {item!r}: give a range as 0x3f8-0x3ff or one '
                             f'address') from None
        if not 0 <= lo <= hi:
            raise ValueError(f'trace filter {item!r}: the range is empty or negative')
        ranges = out.get(kind, [])
        if ranges is not None:
            out[kind] = ranges + [(lo, hi)]
    if not out:
        raise ValueError(f'trace filter {text!r} selects nothing: give kinds such as io:0x3f8-0x3ff,hlt')
    return out


class _Proxy:
    """A device on a bus, recording each access it answers."""

    def __init__(self, tracer, device, name, kind, base):
        self.tracer, self.device, self.name, self.kind, self.base = tracer, device, name, kind, base
        self.SIZE = device.SIZE

    def read(self, offset, size):
        value = self.device.read(offset, size)
        self.tracer.access(self.kind + ('-in' if self.kind == 'io' else '-read'),
                           self.base + offset, size, value, self.name)
        return value

    def write(self, offset, size, value):
        self.tracer.access(self.kind + ('-out' if self.kind == 'io' else '-write'),
                           self.base + offset, size, value, self.name)
        self.device.write(offset, size, value)


class Tracer:
    """Writes the trace to ``out`` (a text file object); ``filters`` from
    :func:`parse_filter` (None: everything)."""

    def __init__(self, out, filters=None, clock=time.monotonic, warn=None):
        self.out, self.filters, self.clock = out, filters, clock
        self.start = clock()
        self.on = True
        self.lines = 0
        self._local = threading.local()
        self._lock = threading.Lock()
        self._warn = warn or (lambda text: print(f'kvmlite: {text}', file=sys.stderr))

    def wants(self, kind, where=None):
        f = self.filters
        if f is None:
            return True
        base = kind.partition('-')[0]
        if base not in f:
            return False
        ranges = f[base]
        return ranges is None or where is None or any(lo <= where <= hi for lo, hi in ranges)

    def emit(self, kind, *fields, where=None):
        if not self.on or not self.wants(kind, where):
            return
        vcpu = getattr(self._local, 'vcpu', None)
        line = f'{self.clock() - self.start:.6f} {"-" if vcpu is None else f"vcpu{vcpu}"} {kind}'
        if fields:
            line += ' ' + ' '.join(fields)
        with self._lock:
            if not self.on:
                return
            try:
                self.out.write(line + '\n')
                self.out.flush()
                self.lines += 1
            except (OSError, ValueError) as e:       # ValueError: a closed file
                self.on = False
                self._warn(f'the trace stopped after {self.lines} lines: '
                           f'{getattr(e, "strerror", None) or e}; the guest runs on')

    def access(self, kind, addr, size, value, name):
        if self.on:
            self.emit(kind, f'{addr:#x}', str(size), f'{value:#x}', name, where=addr)

    # -- attaching --
    def attach(self, machine):
        """Put the proxies on ``machine``'s buses and hand it the tracer."""
        vm = machine.vm
        for bus, kind in ((vm.pio, 'io'), (vm.mmio, 'mmio')):
            for base, size, name, dev in bus.devices():
                bus.unregister(base)
                bus.register(base, _Proxy(self, dev, name, kind, base), size=size, name=name)
            self._unclaimed(bus, kind)
        machine.tracer = self
        return self

    def _unclaimed(self, bus, kind):
        read, write, lookup = bus.read, bus.write, bus.find
        rd, wr = (('io-in', 'io-out') if kind == 'io' else ('mmio-read', 'mmio-write'))

        def traced_read(addr, size):
            value = read(addr, size)
            if lookup(addr) is None:
                self.access(rd, addr, size, value, 'unclaimed')
            return value

        def traced_write(addr, size, value):
            if lookup(addr) is None:
                self.access(wr, addr, size, value, 'unclaimed')
            write(addr, size, value)
        bus.read, bus.write = traced_read, traced_write

    def handlers(self, vcpu, handlers):
        """The board's exit table for ``vcpu``'s thread, each exit recorded;
        also marks this thread as that vCPU's for the bus proxies."""
        self._local.vcpu = vcpu.index
        table = dict(handlers)
        for cls, fn in handlers.items():
            kind = _EXIT_KINDS.get(cls)
            if kind is not None:
                table[cls] = self._wrap(kind, fn)
        return table

    def _wrap(self, kind, fn):
        def traced(vcpu, exit):
            if self.on:
                self.emit(kind, *_detail(exit))
            return fn(vcpu, exit)
        return traced


def _detail(exit):
    if isinstance(exit, Interrupted):
        return (exit.why,)
    if isinstance(exit, IoapicEoi):
        return (f'vector={exit.vector:#x}',)
    if isinstance(exit, InternalError):
        return (exit.describe().replace(' ', '_'),)
    if isinstance(exit, Debug):
        return (f'exception={exit.exception}', f'pc={exit.pc:#x}')
    if isinstance(exit, SystemEvent):
        return (f'type={exit.type}',)
    return ()


# --- a profile by device: run --stats ----------------------------------------

#: The KVM binary statistics (KVM_GET_STATS_FD) the profile names, summed over vCPUs.
KVM_STATS = ('exits', 'io_exits', 'mmio_exits', 'halt_exits', 'irq_window_exits', 'signal_exits',
             'irq_injections', 'nmi_injections', 'halt_wakeup', 'halt_successful_poll',
             'halt_attempted_poll', 'insn_emulation', 'insn_emulation_fail')


class _Counted:
    """A device on a bus, counting its accesses and the time its model takes."""

    def __init__(self, entry, device):
        self.entry, self.device, self.SIZE = entry, device, device.SIZE

    def read(self, offset, size):
        t = time.perf_counter_ns()
        try:
            return self.device.read(offset, size)
        finally:
            e = self.entry
            e[0] += 1
            e[1] += time.perf_counter_ns() - t

    def write(self, offset, size, value):
        t = time.perf_counter_ns()
        try:
            self.device.write(offset, size, value)
        finally:
            e = self.entry
            e[0] += 1
            e[1] += time.perf_counter_ns() - t


class Profiler:
    """Counts a machine's device accesses by device name (attach before the
    run); :meth:`report` adds the exits by reason and KVM's own statistics,
    all by name."""

    def __init__(self):
        self.devices = {}            # bus name -> [accesses, ns in the device model]
        self.machine = None

    def attach(self, machine):
        vm = machine.vm
        for bus in (vm.pio, vm.mmio):
            for base, size, name, dev in bus.devices():
                entry = self.devices.setdefault(name, [0, 0])
                bus.unregister(base)
                bus.register(base, _Counted(entry, dev), size=size, name=name)
        self.machine = machine
        return self

    def report(self):
        """{'exits': {reason: count}, 'devices': {name: {accesses, share, ms}},
        'unclaimed': count, 'kvm': {statistic: value}}."""
        vm = self.machine.vm
        exits = {getattr(r, 'name', str(r)).lower(): n for r, n in vm.exit_counts.most_common() if n}
        total = sum(n for n, _ in self.devices.values()) or 1
        devices = {name: {'accesses': n, 'share': n / total, 'ms': ns / 1e6}
                   for name, (n, ns) in sorted(self.devices.items(), key=lambda kv: -kv[1][0]) if n}
        unclaimed = sum(vm.pio.unclaimed.values()) + vm.pio.unclaimed_other + \
            sum(vm.mmio.unclaimed.values()) + vm.mmio.unclaimed_other
        kvm = {}
        for v in vm.vcpus:
            try:
                stats = v.stats()
            except OSError:
                continue                     # no KVM_GET_STATS_FD on this kernel
            for k in KVM_STATS:
                if isinstance(stats.get(k), int):
                    kvm[k] = kvm.get(k, 0) + stats[k]
        return {'exits': exits, 'devices': devices, 'unclaimed': unclaimed, 'kvm': kvm}

    def text(self):
        r = self.report()
        total = sum(r['exits'].values()) or 1
        lines = ['exits by reason: ' + (', '.join(f'{k} {n} ({100 * n / total:.1f}%)'
                                                  for k, n in r['exits'].items()) or 'none')]
        lines.append('device accesses: ' + (', '.join(
            f'{name} {d["accesses"]} ({100 * d["share"]:.1f}%, {d["ms"]:.3f} ms)'
            for name, d in r['devices'].items()) or 'none') + f'; unclaimed {r["unclaimed"]}')
        if r['kvm']:
            lines.append('KVM: ' + ', '.join(f'{k} {v}' for k, v in r['kvm'].items()))
        return lines
