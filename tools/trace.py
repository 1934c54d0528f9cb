"""An exit trace for a :class:`tools.pc.Machine`: ``kvmlite run --trace FILE``.

One line per event, as it happens::

    0.004213 vcpu0 io-out 0x3f8 1 0x78 COM1 16550A
    0.004305 vcpu0 io-in 0x3fd 1 0x60 COM1 16550A
    0.004410 vcpu0 mmio-write 0xd0000000 4 0x1 unclaimed
    0.009120 vcpu1 hlt
    0.010007 - irq-raise 4 com1
    0.010031 - irq-inject 4 vector=0x24 dest=0 KVM_SIGNAL_MSI
    0.010102 vcpu0 irq-lower 4 com1

fields: seconds since the tracer started, the vCPU ('-' for an access made
outside a vCPU thread, such as the timer thread's), the kind, then for port
I/O and MMIO the port or address, the size, the value (for a read, the value
returned) and the device that answered by its bus name (or ``unclaimed``).

Interrupts: ``irq-raise N DEVICE`` / ``irq-lower N DEVICE`` for each change
of ISA IRQ line N (the PIC's input; ``pin=P`` follows when the IOAPIC pin,
the GSI, differs: IRQ 0 is pin 2) and the device driving it, by its board
name; ``irq-inject N ...`` for each interrupt the VMM hands to KVM: the
PIC's vector with KVM_INTERRUPT (user and split mode, vCPU 0), the IOAPIC's
message with KVM_SIGNAL_MSI (split mode: vector and destination APIC id),
or the line's level with KVM_IRQ_LINE into KVM's PIC and IOAPIC (kernel
mode); ``irq-window`` for an interrupt-window exit. KVM's own PIT (kernel
mode) raises its IRQ 0 inside KVM, unseen here.

How it attaches, so that a run without ``--trace`` pays nothing: every
device range on the buses is re-registered behind a recording proxy, and the
buses' own read/write (the path of unclaimed accesses) are replaced on the
instances; the board's exit table is wrapped once per vCPU thread at start.
Writes KVM buffers in its coalesced ring (the POST port, a polled UART's
THR) are traced when they reach the device, which is when the VMM sees them.

A filter (``--trace-filter``) keeps some kinds, each optionally limited to a
port/address range: ``io:0x3f8-0x3ff`` is COM1 alone, ``io,hlt`` all port
I/O and halts, ``mmio:0xfec00000-0xfec00fff`` the IOAPIC, ``irq:4`` what
happens on IRQ 4 (``irq:0-15`` the ISA lines). Kinds: io, mmio, hlt, eoi,
intr (a kick or signal), irq (line changes, injections and interrupt
windows; a range keeps the events of those IRQ numbers), debug, internal,
shutdown, system (a system event), fail (a failed entry).

If the trace cannot be written (a full disk, a closed pipe), tracing stops
with one warning on stderr and the guest runs on.

Sources: the KVM API text (Documentation/virt/kvm/api.rst, struct kvm_run's
exit reasons; KVM_INTERRUPT, KVM_IRQ_LINE, KVM_SIGNAL_MSI) for the kinds,
the Intel SDM Vol. 3, 11.11 for the MSI address and data fields.
"""

import sys
import threading
import time

from devices.console import line_end

from kvmlite import (Debug, FailEntry, Hlt, InternalError, Interrupted, IoapicEoi,
                     IrqWindowOpen, KvmliteError, Shutdown, SystemEvent)

__all__ = ['Tracer', 'Profiler', 'parse_filter', 'machine_stats', 'KINDS']

_EXIT_KINDS = {Hlt: 'hlt', IoapicEoi: 'eoi', Interrupted: 'intr', IrqWindowOpen: 'irq-window',
               Debug: 'debug', InternalError: 'internal', Shutdown: 'shutdown',
               SystemEvent: 'system', FailEntry: 'fail'}
KINDS = ('io', 'mmio') + tuple(sorted({k.partition('-')[0] for k in _EXIT_KINDS.values()}))
_RANGED = ('io', 'mmio', 'irq')         # the kinds a filter may limit to a range


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
        if kind not in _RANGED:
            raise ValueError(f'trace filter {item!r}: only io, mmio and irq take a range')
        lo, _, hi = span.partition('-')
        try:
            lo = int(lo, 0)
            hi = int(hi, 0) if hi else lo
        except ValueError:
            raise ValueError(f'trace filter {item!r}: give a range as 0x3f8-0x3ff (irq: 0-15) '
                             f'or one address or IRQ') from None
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
        self._warn = warn or _warn
        self._tty = _tty_fd(out)    # a terminal (--trace - on one): raw while the guest runs

    def wants(self, kind, where=None):
        f = self.filters
        if f is None:
            return True
        base = kind.partition('-')[0]
        if base not in f:
            return False
        ranges = f[base]
        # with a range, an event without a number (an interrupt window) is left out
        return ranges is None or where is not None and any(lo <= where <= hi for lo, hi in ranges)

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
                self.out.write(line + ('\n' if self._tty is None else line_end(self._tty)))
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
        self.machine = machine
        for n, name, line in machine.irq_lines:
            self.trace_line(n, name, line)
        self._trace_injections(machine)
        machine.tracer = self
        return self

    def trace_line(self, n, name, line):
        """Record each change of ``line`` (ISA IRQ ``n``, driven by device
        ``name``); the board calls this for a line it wires after attach()."""
        machine = self.machine
        pin = machine.platform.ioapic_pin(n) if machine.mode != 'user' else n
        fields = (str(n), name or 'unnamed') + ((f'pin={pin}',) if pin != n else ())
        sink = line.sink

        def traced(level):
            if self.on:
                self.emit('irq-raise' if level else 'irq-lower', *fields, where=n)
            if sink is not None:
                sink(level)
        line.sink = traced

    def _trace_injections(self, machine):
        """Record each interrupt handed to KVM: KVM_IRQ_LINE (kernel mode),
        the IOAPIC's KVM_SIGNAL_MSI (split), the PIC's KVM_INTERRUPT. Each
        wrapper finds the board's IOAPIC and PIC when it is called, and the
        MSI one replaces the board's ``_msi`` too, which is what the board
        wires into an IOAPIC it builds: so the trace goes on after
        ``reset_to`` or a restore rebuilds the devices."""
        vm, platform, emit = machine.vm, machine.platform, self.emit
        if machine.mode == 'kernel':
            irq_line = vm.irq_line

            def traced_irq_line(irq, level):
                if self.on:
                    emit('irq-inject', str(irq), f'level={level}', 'KVM_IRQ_LINE', where=irq)
                irq_line(irq, level)
            vm.irq_line = traced_irq_line
        if machine.ioapic is not None and machine.ioapic.msi is not None:
            msi = machine._msi
            irq_of_pin = {platform.ioapic_pin(i): i for i in range(16) if i != platform.cascade_irq}

            def traced_msi(address, data):
                if self.on:
                    pin = machine.ioapic.sending_pin
                    irq = irq_of_pin.get(pin, pin)
                    emit('irq-inject', str(irq), *((f'pin={pin}',) if pin != irq else ()),
                         f'vector={data & 0xFF:#x}', f'dest={address >> 12 & 0xFF}', 'KVM_SIGNAL_MSI',
                         where=irq)
                msi(address, data)
            machine._msi = machine.ioapic.msi = traced_msi
        if machine.pic is not None and vm.vcpus:
            vcpu = vm.vcpus[0]          # the PIC's INTR reaches vCPU 0 alone
            interrupt = vcpu.interrupt

            def traced_interrupt(vector):
                if self.on:
                    irq = _pic_irq(machine.pic, vector)
                    emit('irq-inject', '-' if irq is None else str(irq), f'vector={vector:#x}',
                         'KVM_INTERRUPT', where=irq)
                interrupt(vector)
            vcpu.interrupt = traced_interrupt

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


def _tty_fd(out):
    try:
        return out.fileno() if out.isatty() else None
    except (AttributeError, OSError, ValueError):
        return None


def _warn(text):
    fd = _tty_fd(sys.stderr)
    sys.stderr.write(f'kvmlite: {text}' + ('\n' if fd is None else line_end(fd)))
    sys.stderr.flush()


def _pic_irq(pic, vector):
    """The ISA IRQ whose vector the PIC pair gave (ICW2's base + IR), or None."""
    for chip, first in ((pic.master, 0), (pic.slave, 8)):
        if vector & 0xF8 == chip.vector_base:
            return first + (vector & 7)
    return None


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
    run, or call ``Machine.profile()``); :meth:`report` is
    :func:`machine_stats`: the exits by reason, the IRQs per line and KVM's
    own statistics beside them, all by name."""

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
        machine.profiler = self
        return self

    def report(self):
        """The same dict as :func:`machine_stats` (``Machine.stats()``)."""
        return machine_stats(self.machine)

    def device_report(self):
        """{name: {'accesses', 'share', 'ms'}}, most accessed first."""
        total = sum(n for n, _ in self.devices.values()) or 1
        return {name: {'accesses': n, 'share': n / total, 'ms': ns / 1e6}
                for name, (n, ns) in sorted(self.devices.items(), key=lambda kv: -kv[1][0]) if n}

    def text(self):
        return stats_text(self.report())


def machine_stats(machine):
    """A machine's figures by name: {'exits': {reason: count}, 'devices':
    {bus name: {'accesses', 'share' (of all device accesses), 'ms' (in the
    device model)}} (counted only while a Profiler is attached, else empty),
    'profiled': whether one is, 'unclaimed': accesses no device took,
    'irqs': {ISA IRQ: {device name: rising edges}} since the machine was
    built (the PIT's power-on OUT high is one), 'irqfd': {virtio device:
    interrupts sent with a KVM_IRQFD eventfd write}, 'ioapic_msis': the
    messages the Python IOAPIC sent (split mode; else None), 'kvm':
    {statistic: value} (KVM_GET_STATS_FD, the names of KVM_STATS, summed
    over the vCPUs)}."""
    vm = machine.vm
    exits = {getattr(r, 'name', str(r)).lower(): n for r, n in vm.exit_counts.most_common() if n}
    profiler = machine.profiler
    unclaimed = sum(vm.pio.unclaimed.values()) + vm.pio.unclaimed_other + \
        sum(vm.mmio.unclaimed.values()) + vm.mmio.unclaimed_other
    irqs = {}
    for n, name, line in machine.irq_lines:
        if line.raised:
            per_device = irqs.setdefault(n, {})
            per_device[name] = per_device.get(name, 0) + line.raised
    kvm = {}
    for v in vm.vcpus:
        try:
            stats = v.stats()
        except (OSError, KvmliteError):
            continue                     # no KVM_GET_STATS_FD on this kernel, or closed
        for k in KVM_STATS:
            if isinstance(stats.get(k), int):
                kvm[k] = kvm.get(k, 0) + stats[k]
    return {'exits': exits, 'devices': profiler.device_report() if profiler is not None else {},
            'profiled': profiler is not None, 'unclaimed': unclaimed,
            'irqs': dict(sorted(irqs.items())), 'irqfd': dict(machine.irqfd_signals),
            'ioapic_msis': machine.ioapic.delivered if machine.ioapic is not None else None,
            'kvm': kvm}


def stats_text(r):
    """``run --stats``' lines for a :func:`machine_stats` dict."""
    total = sum(r['exits'].values()) or 1
    lines = ['exits by reason: ' + (', '.join(f'{k} {n} ({100 * n / total:.1f}%)'
                                              for k, n in r['exits'].items()) or 'none')]
    lines.append('device accesses: ' + (', '.join(
        f'{name} {d["accesses"]} ({100 * d["share"]:.1f}%, {d["ms"]:.3f} ms)'
        for name, d in r['devices'].items()) or 'none') + f'; unclaimed {r["unclaimed"]}')
    lines.append('IRQs raised: ' + (', '.join(
        f'IRQ {n} {name} {count}' for n, per in r['irqs'].items()
        for name, count in sorted(per.items(), key=lambda kv: -kv[1])) or 'none'))
    if r.get('irqfd'):
        lines.append('virtio interrupts by KVM_IRQFD: ' + ', '.join(
            f'{name} {n}' for name, n in r['irqfd'].items()) +
            ('' if r.get('ioapic_msis') is None else f'; Python IOAPIC messages {r["ioapic_msis"]}'))
    if r['kvm']:
        lines.append('KVM: ' + ', '.join(f'{k} {v}' for k, v in r['kvm'].items()))
    return lines
