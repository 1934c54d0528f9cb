"""The PC board: a :class:`Machine` around a :class:`kvmlite.Vm`.

The board owns what the KVM layer does not know: which devices sit at which
ports, addresses and IRQs (the wiring), the interrupt controller mode, one
thread per vCPU plus a timer and console thread, and how a run ends (its
exit status). It is where QEMU keeps ``hw/i386/pc.c`` and kvmtool ``x86/``.

Sources: the PC/AT port map and IRQ assignments (IBM PC/AT Technical
Reference; Intel's MultiProcessor Specification 1.4, chapter 5, for the
default ISA wiring through the IOAPIC), the KVM API text
(Documentation/virt/kvm/api.rst: KVM_CREATE_IRQCHIP, KVM_CAP_SPLIT_IRQCHIP,
KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI, KVM_INTERRUPT, KVM_EXIT_IOAPIC_EOI,
KVM_GET/SET_MP_STATE), and the Intel SDM Vol. 3, chapter 11 (local APIC
LVT entries and delivery modes).

ACPI S3 (suspend to RAM) is the board's as much as the PM block's: the ACPI
Specification 6.4, chapter 16 ("Waking and Sleeping"), and 5.2.10 (the FACS
and its waking vectors). When the guest writes SLP_TYP(S3)|SLP_EN, every
vCPU stops (parked, as by :meth:`Machine.paused`; RAM and the devices keep
their state, the timer thread keeps ticking them). A wake event (the RTC
alarm with RTC_EN, the power button, console input) sets WAK_STS; vCPU 0
then does what firmware does on a wake from S3 (16.3; QEMU's pc machine
resets the CPUs and SeaBIOS jumps to the vector): each local APIC back to
its power-on state as the board set it (virtual wire), the APs waiting for
INIT/SIPI, and vCPU 0 at the waking vector with interrupts off: the
X_Firmware_Waking_Vector if non-zero, in 32-bit protected mode, flat
segments, paging off (the FACS does not offer 64BIT_WAKE_SUPPORTED_F), else
the Firmware_Waking_Vector in real mode at CS:IP = vector >> 4 : vector &
0xF (below 1 MiB). General registers are 0 and CR0 holds only ET (PE too
for the protected-mode vector); FPU, SSE and the other MSRs keep their
values (the OS's waking code loads what it needs). No FACS (no tables
written), no vector, or one out of reach ends the run as a reset would:
there is no firmware to boot.
"""

import contextlib
import copy
import errno
import inspect
import os
import re
from collections import deque
import select
import struct
import sys
import threading
import time
import traceback

from kvmlite import (
    PAGE_SIZE, Cap, DeviceError, FailEntry, Hlt, InternalError, Interrupted, IoapicEoi,
    IrqWindowOpen, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    CR0_ET, CR0_PE, KVM_IOAPIC_BASE, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, Kvm,
    KVM_INTERNAL_ERROR_EMULATION, KvmError, KvmliteError, LINUX_CLEARCPUID, LINUX_USER_ENV,
    Shutdown, SystemEvent, _import_part, cpuid_entries, cpuid_restricted, kvm_lapic_state,
    kvm_regs, kvm_segment, route_irqchip, route_msi, segment, setup_mode,
)

from . import boot, platform_tables
from .layout import PC

__all__ = ['Machine', 'RunResult', 'load_kernel', 'detect_format', 'IRQCHIP_MODES', 'CONSOLE_DEVICES',
           'EXIT_OK', 'EXIT_USAGE', 'EXIT_TRIPLE_FAULT', 'EXIT_INTERNAL', 'EXIT_VMM',
           'EXIT_TIMEOUT', 'EXIT_SIGNAL']

#: Exit statuses of a run. A guest's debug-exit write of v gives the odd
#: (v << 1) | 1, as QEMU's isa-debug-exit does; kvmlite's own are even.
EXIT_OK = 0             # the guest powered off, reset, or halted for good
EXIT_USAGE = 2          # bad command line or input file
EXIT_TRIPLE_FAULT = 4   # the guest crashed: triple fault (shutdown)
EXIT_INTERNAL = 6       # KVM gave up: internal error or failed VM entry
EXIT_VMM = 8            # a device model or KVM call failed in the VMM
EXIT_TIMEOUT = 124      # the run's timeout passed
EXIT_SIGNAL = 130       # stopped by SIGINT, SIGTERM or the console's Ctrl-A x

IRQCHIP_MODES = ('split', 'user', 'kernel')
#: the guest device the console is (its input goes there; COM1's output always
#: reaches the console too): the first UART (ttyS0) or the virtio console (hvc0)
CONSOLE_DEVICES = ('com1', 'hvc')
CONSOLE_PARTS = {'com1': 'serial.Serial', 'hvc': 'virtio_console.VirtioConsole'}
IDENTITY_MAP_ADDR = PC.identity_map_addr
HALT_POLL_S = 0.25      # how often an in-kernel-irqchip run looks for a final halt
# The timer thread sleeps at least this long between device ticks, as KVM
# bounds its PIT's period (min_timer_period_us): a guest that programs a
# 1.7 us period would otherwise keep that thread, and the GIL, from the vCPUs.
MIN_TIMER_SLEEP_S = 200e-6
# While KVM may buffer THR writes, the timer thread applies them at least this
# often, so a guest that prints and then spins without exits is still heard.
BUFFERED_OUTPUT_S = 0.02
BUFFER_AFTER = 1024     # THR bytes at IER 0 before KVM may buffer them (see _BufferedThr)
STALL_SAMPLES = 4       # halt polls (0.25 s apart) the timeout report looks back on
INPUT_LIMIT = 4096      # bytes of console input that wait for a guest not reading its UART
APIC_LVT0, APIC_LVT1 = 0x350, 0x360
IOREDTBL_REMOTE_IRR = 1 << 14   # IOAPIC redirection entry: a level interrupt awaits its EOI
IOREDTBL_LEVEL = 1 << 15        # IOAPIC redirection entry: level-triggered
APIC_DM_EXTINT, APIC_DM_NMI = 0x700, 0x400
MSR_IA32_APICBASE = 0x1B        # bits 12 and up: the local APIC's physical address
APICBASE_ADDR_MASK = ~0xFFF
# devices/acpi_pm.py's sleep states (the board reads AcpiPm.sleep)
PM_WORKING, PM_SLEEPING, PM_WOKEN = 0, 1, 2
REAL_MODE_IVT_LIMIT = 0x3FF


class _Timed:
    """A device whose writes may move its next deadline: wakes the timer.
    A byte write at one of the ``quiet`` offsets (a UART's THR) wakes nobody."""

    def __init__(self, device, wake, quiet=()):
        self.device, self._wake, self.SIZE = device, wake, device.SIZE
        self._quiet = quiet
        # a read moves no deadline: the bus gets the device's own read
        self.read = device.read

    def write(self, offset, size, value):
        self.device.write(offset, size, value)
        if size != 1 or offset not in self._quiet:
            self._wake()


class _BufferedThr(_Timed):
    """A UART whose THR writes KVM may buffer: once the UART says they need
    no immediate effect (``thr_may_buffer()``: IER is 0) and the guest has
    written BUFFER_AFTER bytes to THR since that became so, its THR port is
    a coalesced PIO zone until IER changes. The buffered writes reach the
    UART, in guest order, before any other exit is served (the run loop
    drains the ring first, and every UART read is an exit) and at each round
    of the timer thread; an LSR poll they cannot change is answered ahead of
    them (``Serial.read_ahead``), so the ring is drained in batches and each
    batch reaches the UART (and its sink) in one call (``write_bytes``).
    Output and LSR stay exactly what one exit per write gives, with one exit
    fewer per byte for a guest that polls LSR. The
    threshold keeps short runs of output (Linux's console clears IER around
    each message) from paying for the zone: registering and unregistering
    it costs KVM an SRCU grace period, some 10 ms a pair on kvm_pvm. Only a
    write to another register (or a wider one) can change IER: those
    re-check."""

    def __init__(self, device, wake, quiet, vm, port):
        super().__init__(device, wake, quiet)
        self._vm, self._port = vm, port
        # while THR writes wait in the ring, an LSR read that they cannot
        # change is answered without applying them (the run loop then drains
        # the ring in batches, and the UART takes each run in one call)
        self.read_ahead = device.read_ahead
        self._run = 0               # THR writes since IER became 0 (while not buffering)
        # a zone left by the UART this one replaces (a snapshot's rewire) stays while it may buffer
        self.buffering = any(z.pio and z.addr == port and z.size == 1 for z in vm._coalesced)
        if self.buffering and not device.thr_may_buffer():
            vm.uncoalesce(port, 1, pio=True)
            self.buffering = False

    def write(self, offset, size, value):
        self.device.write(offset, size, value)
        if size == 1 and offset in self._quiet:
            if not self.buffering:
                if not self.device.thr_may_buffer():
                    self._run = 0
                    return
                self._run += 1
                if self._run >= BUFFER_AFTER:
                    self._vm.coalesce(self._port, 1, pio=True)
                    self.buffering = True
            return
        if not self.device.thr_may_buffer():
            self._run = 0
            if self.buffering:
                self._vm.uncoalesce(self._port, 1, pio=True)
                self.buffering = False
        self._wake()

    def write_bytes(self, offset, size, data):
        """A run of byte writes from the ring: THR bytes while buffering go to
        the UART at once; anything else as one write each."""
        if self.buffering and size == 1 and offset in self._quiet:
            self.device.write_bytes(offset, size, data)
            return
        for value in data:
            self.write(offset, size, value)


def _wiring_params(cls):
    """The parameters of ``cls``'s constructor, and those without a default:
    the board hands a device the wiring its constructor names."""
    init = cls.__init__
    code = init.__code__
    positional = code.co_varnames[1:code.co_argcount]
    keyword = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    n_defaults = len(init.__defaults__ or ())
    required = positional[:len(positional) - n_defaults] + tuple(
        k for k in keyword if k not in (init.__kwdefaults__ or {}))
    return positional + keyword, required


class RunResult:
    """How a machine run ended: ``status`` (the process exit status) and a
    one-line ``reason``; after a timeout, ``report`` has one line per vCPU
    saying where it was and what it was doing (see :func:`_stall_report`)."""

    def __init__(self, status, reason):
        self.status, self.reason = status, reason
        self.report = []

    def __repr__(self):
        return f'RunResult({self.status}, {self.reason!r})'


class Machine:
    """A PC around a :class:`Vm`: RAM, vCPUs, the ISA devices, an interrupt
    controller mode and a run loop with one thread per vCPU.

    ``irqchip``: 'split' (in-kernel local APIC; PIC, PIT and IOAPIC here),
    'user' (everything here, one vCPU, interrupts injected with
    KVM_INTERRUPT) or 'kernel' (KVM's PIC, IOAPIC and PIT). ``console``: a
    back end from devices.console for COM1 (None discards the output).
    ``clock``: nanoseconds for the devices (tests may step one).
    ``platform``: where everything sits (a :class:`tools.layout.Platform`,
    by default :data:`tools.layout.PC`); ``devices`` maps each of its device
    names to the model built for it (also an attribute: ``machine.com1``).
    ``cpu_vendor``: the CPUID vendor the guest sees, 'host', 'intel' or 'amd'
    (kvmlite.cpuid_entries).
    """

    def __init__(self, mem_size=256 << 20, cpus=1, irqchip='split', console=None,
                 cpuid_policy='auto', kvm=None, clock=time.monotonic_ns, cmdline=b'',
                 platform=PC, cpu_vendor='host', disks=(), rng=False, console_device='com1',
                 ioeventfd=True, irqfd=True):
        if irqchip not in IRQCHIP_MODES:
            raise ValueError(f'irqchip mode {irqchip!r}: use one of {", ".join(IRQCHIP_MODES)}')
        if irqchip == 'user' and cpus != 1:
            raise ValueError('more than one vCPU needs a local APIC: use --irqchip split or kernel')
        if console_device not in CONSOLE_DEVICES:
            raise ValueError(f'console device {console_device!r}: use one of '
                             f'{", ".join(CONSOLE_DEVICES)}')
        if mem_size < 1 << 20 or mem_size % PAGE_SIZE:
            raise ValueError(f'memory size {mem_size:#x}: give at least 1 MiB, in whole pages')
        self.mode, self.clock, self.console = irqchip, clock, console
        self.platform = platform
        self.devices = {}
        self._routes = None         # the GSI routes last given to KVM (split mode)
        self._running = threading.Lock()
        self.cpuid_policy = cpuid_policy
        self.cpu_vendor = cpu_vendor
        self.mem_size, self.cpus = mem_size, cpus
        self.disks = self._assign_disks(platform, disks)
        self.rng = rng              # a virtio-rng filled from os.urandom
        self.console_device = console_device    # where console input goes: COM1 or hvc0
        self.ioeventfd = ioeventfd  # virtio notifications through eventfds, where the mode allows
        self.workers = {}           # virtio slot name -> its _VirtioWorker (split, kernel mode)
        self.irqfd = irqfd          # virtio interrupts through KVM_IRQFD, where the mode allows
        self._irqfds = {}           # virtio slot name -> the eventfd of its KVM_IRQFD (split, kernel)
        self._irqfd_gsi = {}        # virtio slot name -> the GSI that eventfd is bound to
        self._line_high = set()     # kernel: virtio slots whose GSI KVM_IRQ_LINE holds high
        self._irqfd_live = set()    # split: slots whose GSI has an MSI route now (see _irqfd_routes)
        self.irqfd_signals = {}     # virtio slot name -> interrupts sent with an eventfd write
        self.irq_line_rises = 0     # kernel: virtio rises on a level entry (KVM_IRQ_LINE)
        self._worker_stop = -1      # an eventfd: readable while the workers are to stop
        self._own_kvm = kvm is None
        self.kvm = kvm or Kvm()
        self.vm = None
        self.result = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._irq_event = threading.Event()
        self._timed = []
        self._buffered = []         # the UARTs whose THR writes KVM may buffer
        self._pending_input = b''
        self._woken = {}            # vCPU index -> RIP where _wake_for_lost_eoi woke it
        self._poll_round = 0        # bumped by the timer thread before each 'poll' kick
        self._poll_seen = {}        # vCPU index -> (poll round, halted for good) it saw itself
        self.debug = None           # a debugger's vCPU gate (tools.gdbstub.Debugger), if attached
        self.tracer = None          # an exit trace (tools.trace.Tracer.attach), if any
        self.profiler = None        # device accesses counted (profile()), if any
        self.irq_lines = []         # (ISA IRQ, device name, IrqLine) of every line handed out
        self._samples = {}          # vCPU index -> its last (RIP, exits) at the halt polls
        self._pm = None             # the ACPI PM block (S3), if the platform has one
        self._lapic_at_power_on = {}    # vCPU index -> its local APIC as the board set it
        if console is not None and hasattr(console, 'wake'):
            console.wake = self.wake        # output that waits for its reader wakes the timer thread
        self._snapshot_init(cmdline)
        try:
            self._build(cpuid_policy, cmdline)
        except BaseException:
            self.close()
            raise

    # -- construction --
    @staticmethod
    def _assign_disks(platform, disks):
        """{slot name: disk}: the disks (devices.virtio_blk.DiskImage) in
        the order of the platform's virtio-blk slots (vda, vdb, ...)."""
        slots = [s.name for s in platform.devices if s.part == 'virtio_blk.VirtioBlk']
        if len(disks) > len(slots):
            raise ValueError(f'{len(disks)} disks, but the board has {len(slots)} disk slots '
                             f'({", ".join(slots)}): give fewer')
        return dict(zip(slots, disks))

    def virtio_devices(self):
        """[(size, address, irq)] of the virtio-mmio devices the guest should
        probe (placeholders without a disk left out)."""
        out = []
        for slot in self.platform.devices:
            dev = self.devices.get(slot.name)
            if getattr(dev, 'present', False) and slot.mmio and slot.irq is not None:
                out.append((dev.SIZE, slot.mmio[0][1], slot.irq))
        return out

    def _build(self, cpuid_policy, cmdline):
        vm = self.vm = self.kvm.create_vm()
        platform = self.platform
        try:
            vm.set_identity_map_addr(platform.identity_map_addr)
        except KvmError:
            pass
        if self.mode == 'kernel':
            vm.create_irqchip()
            vm.create_pit2()
        elif self.mode == 'split':
            vm.create_split_irqchip(platform.ioapic_pins)
        for start, size in platform.ram_regions(self.mem_size):
            vm.add_memory(start, size)
        for i in range(self.cpus):
            self._setup_vcpu(vm.create_vcpu(), cpuid_policy)
        self._wire_pc(cmdline)
        self._setup_workers()

    def _setup_vcpu(self, vcpu, policy):
        entries = cpuid_entries(self.kvm, vcpu.index, policy, vendor=self.cpu_vendor)
        if self.mode == 'user':
            for e in entries:           # no local APIC to offer
                if e.function == 1:
                    e.edx &= ~(1 << 9)
                    e.ecx &= ~(1 << 21)
        try:
            vcpu.set_cpuid2(entries)
        except KvmError as e:
            if self.cpu_vendor == 'host':
                raise
            raise ValueError(f'KVM refused CPUID with vendor {self.cpu_vendor} on this host '
                             f'({e}): run with --cpu-vendor host') from None
        if self.mode != 'user':
            # virtual-wire mode, as a BIOS leaves it: PIC through LINT0, NMI on LINT1
            regs = bytearray(vcpu.get_lapic())
            struct.pack_into('<I', regs, APIC_LVT0, APIC_DM_EXTINT)
            struct.pack_into('<I', regs, APIC_LVT1, APIC_DM_NMI)
            vcpu.set_lapic(kvm_lapic_state.from_buffer_copy(regs))
            base = vcpu.get_msrs([MSR_IA32_APICBASE])[MSR_IA32_APICBASE]
            if base & APICBASE_ADDR_MASK != self.platform.lapic_addr:
                vcpu.set_msrs({MSR_IA32_APICBASE: (base & ~APICBASE_ADDR_MASK) | self.platform.lapic_addr})
            self._lapic_at_power_on[vcpu.index] = bytes(regs)   # what a wake from S3 puts back

    def _wire_pc(self, cmdline):
        """Build every device of the platform that this irqchip mode models
        in Python, hand each the wiring its constructor names, and put its
        ranges on the buses: the one place for wiring."""
        self._isa_nets, self._virtio_wired = {}, {}     # ISA IRQ -> _WiredOr; slot -> its input
        self._IrqLine = sys.modules[_import_part('devices', 'pic').__name__.rpartition('.')[0]].IrqLine
        vm, platform = self.vm, self.platform
        if self.mode == 'kernel' and platform.ioapic_addr != KVM_IOAPIC_BASE:
            raise ValueError(f'KVM\'s in-kernel IOAPIC sits at {KVM_IOAPIC_BASE:#x}, not at '
                             f'{platform.ioapic_addr:#x}: use --irqchip split for another address')
        stop_reset = lambda: self.stop(EXIT_OK, 'the guest reset the machine')  # noqa: E731
        wiring = {                      # what a device may ask for, by parameter name
            'irq': lambda slot: self._virtio_irq(slot) if slot.part.startswith('virtio_')
            else self.irq(slot.irq, slot.name),
            'intr': lambda slot: self._line(self._on_intr),
            'msi': lambda slot: self._msi,
            'clock': lambda slot: self.clock,
            'out': lambda slot: self.console if slot.name == 'com1' or (
                slot.part == CONSOLE_PARTS['hvc'] and self.console_device == 'hvc') else None,
            'on_reset': lambda slot: stop_reset,
            'on_exit': lambda slot: self._on_debug_exit,
            'on_poweroff': lambda slot: lambda: self.stop(EXIT_OK, f'the guest powered off ({slot.name})'),
            'on_suspend': lambda slot: self._on_suspend,
            'on_wake': lambda slot: self._on_wake,
            'on_alarm': lambda slot: self._on_rtc_alarm,
            'ram_size': lambda slot: self.mem_size,
            'cpus': lambda slot: self.cpus,
            'cmdline': lambda slot: cmdline,
            'memory': lambda slot: guest_memory,
            'disk': lambda slot: self.disks.get(slot.name),
            'entropy': lambda slot: os.urandom if self.rng else None,
        }
        guest_memory = _import_part('devices', 'virtio_mmio').GuestMemory(
            [(s.gpa, s.view) for s in vm.slots if not s.readonly])
        for slot in platform.devices:
            if self.mode not in slot.modes:
                continue
            module, _, name = slot.part.rpartition('.')
            cls = getattr(_import_part('devices', module), name)
            params, required = _wiring_params(cls)
            unknown = [p for p in required if p not in wiring]
            if unknown:
                raise ValueError(f'device {slot.name!r} ({slot.part}) asks for {", ".join(unknown)}: '
                                 f'the board hands out {", ".join(wiring)}')
            if slot.name in self.__dict__ or hasattr(type(self), slot.name):
                raise ValueError(f'device name {slot.name!r} is taken by the board')
            dev = self._make_device(slot, cls, {p: wiring[p](slot) for p in params if p in wiring})
            self.devices[slot.name] = dev
            setattr(self, slot.name, dev)
            timed = hasattr(dev, 'tick')
            if timed:
                self._timed.append(dev)
            for bus, ranges in ((vm.pio, slot.pio), (vm.mmio, slot.mmio)):
                for attr, base, label in ranges:
                    part = getattr(dev, attr) if attr else dev
                    if part is dev and hasattr(dev, 'thr_may_buffer'):
                        part = _BufferedThr(dev, self.wake, dev.UNTIMED_WRITES, vm, base)
                        self._buffered.append(part)
                    elif part is dev and timed:
                        part = _Timed(dev, self.wake, dev.UNTIMED_WRITES)
                    if slot.name == 'ioapic':
                        part = _Routed(dev, self)
                    bus.register(base, part, name=label)
                    self._bus_parts[bus.kind, base] = part
                    if slot.coalesce and not self._device_states:
                        vm.coalesce(base, getattr(part, 'SIZE'), pio=bus is vm.pio)
        self.pic, self.pit, self.ioapic = (self.devices.get(n) for n in ('pic', 'pit', 'ioapic'))
        self._pm = self.devices.get('acpi_pm')
        self.serials = [d for d in self.devices.values() if type(d).__name__ == 'Serial']
        # console input goes to COM1, or to the virtio console with --console-device hvc
        self._console_in = next((self.devices[s.name] for s in platform.devices
                                 if s.part == CONSOLE_PARTS[self.console_device]
                                 and s.name in self.devices), None)
        if self.ioapic is not None:
            self.ioapic.ioapic_id = platform.ioapic_id(self.cpus)   # as the MP/ACPI tables say
            self.sync_ioapic_routes()       # KVM's routes start as the IOAPIC's reset state
        if self.mode == 'kernel':
            # ISA IRQs to both PICs and to the IOAPIC's pins (with the platform's overrides)
            cascade, isa = platform.cascade_irq, range(16)
            routes = [route_irqchip(i, KVM_IRQCHIP_PIC_MASTER if i < 8 else KVM_IRQCHIP_PIC_SLAVE, i % 8)
                      for i in isa if i != cascade]
            routes += [route_irqchip(i, KVM_IRQCHIP_IOAPIC, platform.ioapic_pin(i) if i in isa else i)
                       for i in range(platform.ioapic_pins) if i != cascade]
            vm.set_gsi_routing(routes)

    def _setup_workers(self):
        """Give every present virtio-mmio device its queue thread
        (:class:`_VirtioWorker`) where the irqchip mode allows: in split and
        kernel mode (in user mode, as with ``ioeventfd=False``, every
        notification is an MMIO exit served in the vCPU thread), and its
        interrupt an eventfd bound with KVM_IRQFD (:meth:`_bind_irqfd`;
        not with ``irqfd=False``)."""
        vm = self.vm
        if self.mode == 'user' or not self.ioeventfd or not vm.check_extension(Cap.IOEVENTFD):
            return
        irqfd = self.irqfd and vm.check_extension(Cap.IRQFD)
        for index, slot in enumerate(self.platform.devices):
            dev = self.devices.get(slot.name)
            if (not getattr(dev, 'present', False) or not hasattr(dev, 'notify') or not slot.mmio
                    or slot.name in self.workers):
                continue
            self.workers[slot.name] = _VirtioWorker(self, slot, dev.QUEUES)
            if irqfd and slot.irq is not None and not self._irq_shared(slot):
                self._bind_irqfd(slot, dev, self.platform.ioapic_pins + index)
        if self.workers and self._worker_stop < 0:
            self._worker_stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if self.mode == 'split' and self._irqfds:
            self.sync_ioapic_routes()       # the new GSIs get their routes

    def _bind_irqfd(self, slot, dev, spare_gsi):
        """An eventfd bound with KVM_IRQFD for a virtio device's interrupt
        (its line is high while InterruptStatus is non-zero).

        kernel mode: bound to the slot's ISA GSI, whose routes reach both
        PICs and the IOAPIC pin. A write is a pulse there (KVM raises and
        lowers the GSI), what an edge-triggered pin wants, as the MP and
        ACPI tables declare the virtio pins (ISA conforming: edge, active
        high). On a level-triggered pin a pulse is wrong: a rise while the
        last interrupt awaits its EOI (remote IRR) is lost, and the line is
        not seen high at the EOI. So each rise reads the pin's entry from
        KVM's IOAPIC (KVM_GET_IRQCHIP) and, on a level entry, drives the
        line with KVM_IRQ_LINE instead, high until the device's line falls,
        which KVM's IOAPIC re-delivers after each EOI while it is high
        (:meth:`_kernel_rise`). KVM_IRQFD_FLAG_RESAMPLE, the level irqfd
        KVM offers, was tried: on this host its acknowledgements also come
        for an edge pin before the guest has handled the interrupt, and the
        re-assertion they call for gives the guest interrupts it never had.

        split mode: bound to a GSI of its own past the IOAPIC's pins
        (``spare_gsi``), routed as the MSI the Python IOAPIC's entry for
        the slot's pin would send, while an edge on that entry sends just
        that (:meth:`devices.ioapic.IoApic.edge_message`: edge, active
        high, unmasked, fixed or lowest priority; :meth:`sync_ioapic_routes`
        keeps the route in step with the guest's writes). A rise is then
        one eventfd write and no Python MSI; otherwise (masked, level,
        ...) the line goes to the Python IOAPIC as any ISA line.
        KVM_IRQFD_FLAG_RESAMPLE needs KVM's own IOAPIC (KVM refuses it in
        split mode), so a level-triggered entry always takes that path."""
        vm, name = self.vm, slot.name
        kernel = self.mode == 'kernel'
        gsi = slot.irq if kernel else spare_gsi
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            vm.irqfd(fd, gsi)
        except BaseException:
            os.close(fd)
            raise
        self._irqfds[name], self._irqfd_gsi[name] = fd, gsi
        self.irqfd_signals.setdefault(name, 0)
        if not kernel:
            self._split_irqfd_sink(name)
        elif dev.irq.level:
            self._virtio_wired[name](0)     # raised before: from now on as a rise here
            self._kernel_rise(name, slot.irq)

    def _irqfd_signal(self, name):
        os.eventfd_write(self._irqfds[name], 1)
        self.irqfd_signals[name] += 1

    def _kernel_rise(self, name, n):
        """Kernel mode, a virtio line rose: a pulse through the irqfd on an
        edge-triggered IOAPIC entry (or a masked one: a masked edge is
        lost); KVM_IRQ_LINE high on a level-triggered one, lowered when the
        device's line falls (:meth:`_kernel_fall`)."""
        chip = self.vm.get_irqchip(KVM_IRQCHIP_IOAPIC)
        if chip.chip.ioapic.redirtbl[self.platform.ioapic_pin(n)] & IOREDTBL_LEVEL:
            self._virtio_wired[name](1)
            self._line_high.add(name)
            self.irq_line_rises += 1
        else:
            self._irqfd_signal(name)

    def _kernel_fall(self, name, n):
        if name in self._line_high:
            self._line_high.discard(name)
            self._virtio_wired[name](0)

    def _drop_held_lines(self):
        """Before the devices are rebuilt from a state (restore, reset_to),
        kernel mode: a line KVM_IRQ_LINE holds high for the state being
        replaced is lowered (the rebuilt device raises its own again)."""
        for name in self._line_high:
            self.vm.irq_line(self.platform.device(name).irq, 0)
        self._line_high.clear()

    def quiesce_io(self):
        """Serve every virtio notification KVM has signalled and no worker
        has taken yet, so that the devices' state() is the guest's whole
        past: call it with the vCPUs paused (tools/snapshot.py does, under
        the bus lock, before it saves the devices)."""
        for worker in self.workers.values():
            worker.serve()

    def _on_debug_exit(self, status):
        # status is (v << 1) | 1 for the v written; a process keeps its low 8 bits
        self.stop(status, f'the guest wrote {status >> 1:#x} to the debug-exit port: '
                          f'exit status {status & 0xff}')

    def _line(self, sink):
        return self._IrqLine(sink)

    def irq(self, n, name=None):
        """An interrupt line for ISA IRQ ``n``, routed for this irqchip mode:
        to the PIC and to the IOAPIC pin the platform gives it, or to
        KVM_IRQ_LINE (whose GSI routes say the same). Devices sharing ``n``
        (COM1 and COM3 on IRQ 4) drive one wired-OR (:class:`_WiredOr`).
        ``name``: the device that drives it; ``irq_lines`` lists every line
        with its IRQ and device (stats() counts its rising edges, a trace its
        changes)."""
        return self._hand_out(n, name, self._line(self._isa_input(n)))

    def _hand_out(self, n, name, line):
        if n is not None:
            self.irq_lines.append((n, name, line))
            if self.tracer is not None:
                self.tracer.trace_line(n, name, line)
        return line

    def _isa_input(self, n):
        """The sink of one more device line on ISA IRQ ``n``: an input of
        the IRQ's wired-OR, made on first use (``_wire_pc`` starts them
        afresh, with the devices)."""
        if n is None:
            return self._isa_sink(n)
        net = self._isa_nets.get(n)
        if net is None:
            net = self._isa_nets[n] = _WiredOr(self._isa_sink(n))
        return net.input()

    def _isa_sink(self, n):
        """What the level of ISA IRQ ``n`` drives in this irqchip mode."""
        if self.mode == 'kernel':
            vm = self.vm
            return lambda level: vm.irq_line(n, level)
        pic, ioapic = self.devices['pic'], self.devices.get('ioapic')
        pin = self.platform.ioapic_pin(n)

        def sink(level):
            pic.set_irq(n, level)
            if ioapic is not None:
                ioapic.set_irq(pin, level)
        return sink

    def _irq_shared(self, slot):
        """True when another device built in this mode has ``slot``'s IRQ."""
        return any(s.irq == slot.irq and s.name != slot.name and s.name in self.devices
                   for s in self.platform.devices)

    def _virtio_irq(self, slot):
        """A virtio-mmio device's line (high while its InterruptStatus is
        non-zero), an input of its ISA IRQ's wired-OR as any device's. Once
        its worker is set up with an irqfd (:meth:`_bind_irqfd`, not on an
        IRQ another device shares, where a pulse would lower the other's
        level), a rise is one write to that eventfd: in kernel mode while
        KVM's IOAPIC entry for the pin is edge-triggered (the line's fall
        then costs nothing); in split mode the IRQ's own sink decides
        (:meth:`_split_irqfd_sink`)."""
        if slot.irq is None or self.mode != 'kernel':
            return self.irq(slot.irq, slot.name)
        n, irqfds, name = slot.irq, self._irqfds, slot.name
        wired = self._virtio_wired[name] = self._isa_input(n)

        def sink(level):
            if name not in irqfds:
                wired(level)
            elif level:
                self._kernel_rise(name, n)
            else:
                self._kernel_fall(name, n)
        return self._hand_out(n, name, self._line(sink))

    def _split_irqfd_sink(self, name):
        """Split mode: make the sink of the virtio slot's ISA IRQ (its own:
        the IRQ is not shared) send a rise through the irqfd while the
        pin's entry sends just an MSI (``_irqfd_live``, kept by
        :meth:`sync_ioapic_routes`), with the IOAPIC only told the level;
        the rest of the time the Python IOAPIC sees it as any line. The PIC
        sees the line either way. Called when the irqfd is bound and after
        each rewire (which builds the IRQ lines afresh)."""
        n = self.platform.device(name).irq
        net = self._isa_nets.get(n)
        pic, ioapic = self.devices['pic'], self.devices.get('ioapic')
        if net is None or ioapic is None:
            return
        pin, live = self.platform.ioapic_pin(n), self._irqfd_live

        def sink(level):
            pic.set_irq(n, level)
            if name in live:
                ioapic.note_level(pin, level)
                if level:
                    self._irqfd_signal(name)
            else:
                ioapic.set_irq(pin, level)
        net.sink = sink

    # -- interrupts --
    def _msi(self, address, data):
        self.vm.signal_msi(address, data)

    def _on_intr(self, level):
        """The PIC's INTR changed: get vCPU 0 out of KVM_RUN (or HLT) to inject."""
        if level:
            self._irq_event.set()
            self.vm.vcpus[0].kick('irq')

    def _inject(self, vcpu):
        with self.vm.lock:
            if not self.pic.pending():
                vcpu.request_interrupt_window = 0
            elif vcpu.ready_for_interrupt_injection:
                vcpu.interrupt(self.pic.acknowledge())
                vcpu.request_interrupt_window = 0
            else:
                vcpu.request_interrupt_window = 1

    def _on_eoi(self, vcpu, exit):
        with self.vm.lock:
            self.ioapic.eoi(exit.vector)
        if self._woken.pop(vcpu.index, None) == vcpu.get_regs().rip:
            vcpu.set_mp_state(KVM_MP_STATE_HALTED)    # it never ran: back into its HLT
        return True

    def _wake_for_lost_eoi(self, vcpu):
        """kvm_pvm, split mode: an EOI the guest writes just before HLT (no exit
        in between) leaves its KVM_EXIT_IOAPIC_EOI pending until the halted vCPU
        wakes, and the level pin waiting for that EOI is what would wake it.
        Such a vCPU is made runnable: KVM delivers the exit before the guest
        runs, and _on_eoi halts it again (a guest that had not written that EOI
        yet sees its HLT end early, as after a spurious wake-up)."""
        if (self.ioapic is None or vcpu.get_mp_state() != KVM_MP_STATE_HALTED
                or not any(e & IOREDTBL_REMOTE_IRR for e in self.ioapic.entries)):
            return
        self._woken[vcpu.index] = vcpu.get_regs().rip
        vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)

    def sync_ioapic_routes(self):
        """Mirror the IOAPIC's entries into KVM's GSI routes: in split mode
        KVM reports EOIs (KVM_EXIT_IOAPIC_EOI) only for routed level vectors
        (GSI = pin); the virtio irqfds' GSIs follow (:meth:`_irqfd_routes`)."""
        wanted = tuple(enumerate(self.ioapic.routes())) + self._irqfd_routes()
        if wanted != self._routes:       # compare values: a write that changes no route costs no ioctl
            self.vm.set_gsi_routing([route_msi(gsi, addr, data) for gsi, (addr, data) in wanted])
            self._routes = wanted
        routed = {gsi for gsi, _ in wanted}
        self._irqfd_live.clear()
        self._irqfd_live.update(name for name, gsi in self._irqfd_gsi.items() if gsi in routed)

    def _irqfd_routes(self):
        """Split mode: ((GSI, (address, data)), ...) for each virtio irqfd
        whose pin's entry an edge would now send as just that MSI; a GSI
        left out has no route (a write to its eventfd would deliver
        nothing, and the line goes to the Python IOAPIC instead)."""
        out = []
        for name, gsi in self._irqfd_gsi.items():
            pin = self.platform.ioapic_pin(self.platform.device(name).irq)
            message = self.ioapic.edge_message(pin)
            if message is not None:
                out.append((gsi, message))
        return tuple(out)

    # -- the timer and console thread --
    def wake(self):
        """Wake the timer thread (a deadline may have moved)."""
        if self._wake_w < 0:
            return                  # closed: nothing to wake (a late console callback)
        try:
            os.write(self._wake_w, b'.')
        except OSError:
            pass                    # full (a wake-up is pending anyway), or closed meanwhile

    def _io_thread(self):
        try:
            self._io_loop()
        except Exception as e:          # noqa: BLE001 - end the run, saying why
            what = e if isinstance(e, DeviceError) else f'{type(e).__name__}: {e}'
            self.stop(EXIT_VMM, f'device error in the timer thread: {what}')

    def _tick(self, dev):
        try:
            return dev.tick()
        except Exception as e:
            raise DeviceError(f'{type(dev).__name__}.tick() raised {type(e).__name__}: {e}') from e

    def _io_loop(self):
        next_poll = time.monotonic() + HALT_POLL_S
        con = self.console
        while not self._stopping.is_set():
            with self.vm.lock:
                # THR writes KVM buffered reach the UARTs (and the console) first
                self.vm.drain_coalesced()
                # input first: a character in the UART's FIFO starts its timeout;
                # output too: the UART's tick() sees the room a drain made
                self._feed_console()
                deadlines = [d for d in map(self._tick, self._timed) if d is not None]
            now_ns = self.clock()
            timeout = min([max((d - now_ns) / 1e9, MIN_TIMER_SLEEP_S) for d in deadlines] +
                          [next_poll - time.monotonic()])
            readers, writers = [self._wake_r], []
            if con is not None:
                # a terminal's input is watched even while earlier input waits
                watch = not self._pending_input or getattr(con, 'interactive', False)
                fd = con.fileno() if watch else None
                if fd is not None:
                    readers.append(fd)
                fd = con.output_fileno() if hasattr(con, 'output_fileno') else None
                if fd is not None:
                    writers.append(fd)      # output waits for its reader
            if self._pending_input:
                timeout = min(timeout, 0.01)
            if any(b.buffering for b in self._buffered):
                # output a guest left in the ring while it spins without exits
                timeout = min(timeout, BUFFERED_OUTPUT_S)
            ready, _, _ = select.select(readers, writers, [], max(timeout, 0))
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            if self._snapshot_request is not None:
                self._serve_snapshot_request()
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + HALT_POLL_S
                self._poll_round += 1
                for v in self.vm.vcpus:
                    v.kick('poll')            # lets the run loop spot a final halt, and sample

    def _feed_console(self):
        """Drain console output; move console input into COM1, keeping what its
        FIFO has no room for."""
        con = self.console
        if con is None:
            return
        con.flush()
        err = getattr(con, 'output_error', None)
        if err is not None:
            if err == errno.EPIPE:
                self.stop(EXIT_OK, "the console's reader went away (EPIPE)")
            else:
                self.stop(EXIT_VMM, f'console output failed: {os.strerror(err)}')
        if not self._pending_input:
            data = self._pending_input = con.read_input()
        elif getattr(con, 'interactive', False):
            # a terminal is read even while the guest takes nothing, so Ctrl-A x
            # gets through whatever was typed ahead; what waits stays bounded
            data = con.read_input()
            keep = max(0, INPUT_LIMIT - len(self._pending_input))
            con.input_dropped += max(0, len(data) - keep)
            self._pending_input += data[:keep]
        else:
            data = b''
        if data and self._pm is not None:
            self._pm.wake()             # input while in S3 wakes the machine
        if getattr(con, 'quit_requested', False):
            self.stop(EXIT_SIGNAL, 'quit from the console (Ctrl-A x)')
        if self._pending_input and self._console_in is not None:
            n = self._console_in.receive(self._pending_input)
            self._pending_input = self._pending_input[n:]

    # -- running --
    def stop(self, status=EXIT_OK, reason='stopped'):
        """End the run (from any thread, a device callback or a signal handler):
        the first reason given wins."""
        if self.result is None:
            self.result = RunResult(status, reason)
        self._stopping.set()
        self._irq_event.set()
        for v in self.vm.vcpus if self.vm else ():
            v.kick('stop')
        self.wake()
        if self.debug is not None:
            self.debug.machine_ended()

    def attach_debugger(self, debugger):
        """Put a debugger between every vCPU thread and KVM_RUN (all-stop).

        A debugger stops vCPUs with the board's own pause: while
        ``debugger.holds(vcpu)`` is true, that vCPU parks at its instruction
        boundary as under :meth:`paused` (its registers and memory can be
        read and written from another thread), and :meth:`_stop_vcpus`
        waits until every running vCPU is parked. Before each entry into its
        run loop a vCPU thread calls ``debugger.gate(vcpu, handlers)``,
        which never blocks: it applies the last resume (steps, breakpoints)
        and returns the exit table to run with (the board's, plus the
        debugger's own exits: KVM_EXIT_DEBUG, breakpoint traps, single
        steps). ``debugger.cond`` must be this board's pause condition
        (``_pause_cv``) so that a resume wakes the parked vCPUs, and
        ``debugger.machine_ended()`` is called when the run ends. Attach
        before run(); without a debugger the exit path is unchanged."""
        self.debug = debugger

    def profile(self):
        """Count every device access by device name, with the time its model
        takes, from now on (each access then costs two clock reads); returns
        the tools.trace.Profiler. Call before run(); stats() reports it."""
        if self.profiler is None:
            self.profiler = _import_part('tools', 'trace').Profiler().attach(self)
        return self.profiler

    def stats(self):
        """The run's figures by name, as a dict: exits by reason, device
        accesses (after profile()), IRQs raised per line and device, and
        KVM's own statistics (tools.trace.machine_stats says which)."""
        return _import_part('tools', 'trace').machine_stats(self)

    def run(self, timeout=None):
        """Run every vCPU until the guest ends or ``timeout`` seconds pass;
        returns a :class:`RunResult`. The calling thread runs vCPU 0, so a
        Ctrl-C there stops the machine cleanly. A run that ended by its
        timeout or a signal can be resumed with another run(); one at a time,
        and not after the guest itself ended."""
        if self.vm is None or self.vm.fd < 0:
            raise KvmliteError('run on a closed Machine: create a new one')
        if self.result is not None and self.result.status not in (EXIT_TIMEOUT, EXIT_SIGNAL):
            raise KvmliteError(f'the guest has ended ({self.result.reason}): create a new Machine')
        if not self._running.acquire(blocking=False):
            raise KvmliteError('this Machine is already running in another thread: one run at a time')
        try:
            return self._run(timeout)
        finally:
            self._running.release()

    def _run(self, timeout):
        self._stopping.clear()
        self.result = None
        self._samples = {v.index: deque(maxlen=STALL_SAMPLES) for v in self.vm.vcpus}
        threads = [threading.Thread(target=self._io_thread, name='kvmlite-timers', daemon=True)]
        threads += [threading.Thread(target=self._vcpu_thread, args=(v,), name=f'kvmlite-vcpu{v.index}',
                                     daemon=True) for v in self.vm.vcpus[1:]]
        timer = threading.Timer(timeout, self.stop, (EXIT_TIMEOUT, f'timeout after {timeout} s')) \
            if timeout is not None else None
        for t in threads + [timer] if timer else threads:
            t.start()
        if self.workers:
            try:
                os.eventfd_read(self._worker_stop)      # a run after a run: go again
            except BlockingIOError:
                pass
            for worker in self.workers.values():
                worker.start(self._worker_stop)
        try:
            self._vcpu_thread(self.vm.vcpus[0])
        except KeyboardInterrupt:
            self.stop(EXIT_SIGNAL, 'interrupted (SIGINT)')
        finally:
            self.stop(EXIT_OK, 'stopped')
            if timer:
                timer.cancel()
                timer.join()        # a cancelled Timer ends at once: leave no thread behind
            for t in threads:
                t.join(timeout=5)
            if self.workers:
                os.eventfd_write(self._worker_stop, 1)
                for worker in self.workers.values():
                    worker.join()
                self.quiesce_io()           # what the guest notified before it stopped
            self.vm.drain_coalesced()     # what the guest wrote before it stopped
        if self.result.status == EXIT_TIMEOUT:
            alive = {t.name for t in threads if t.is_alive()}
            self.result.report = [_stall_report(self, v) if f'kvmlite-vcpu{v.index}' not in alive
                                  else f'vCPU {v.index}: its thread did not stop'
                                  for v in self.vm.vcpus]
        return self.result

    def _vcpu_thread(self, vcpu):
        try:
            self._run_vcpu(vcpu)
        except DeviceError as e:
            self.stop(EXIT_VMM, f'device error: {e}')
        except KvmError as e:
            self.stop(EXIT_VMM, f'KVM error on vCPU {vcpu.index}: {e}')
        except Exception as e:          # a bug in the board: the run ends, no vCPU is lost silently
            where = traceback.extract_tb(e.__traceback__)[-1]
            self.stop(EXIT_VMM, f'vCPU {vcpu.index} failed: {type(e).__name__}: {e} at '
                      f'{os.path.basename(where.filename)}:{where.lineno} (a kvmlite bug: please '
                      'report it)')

    def _run_vcpu(self, vcpu):
        handlers = self._exit_handlers()
        if self.tracer is not None:
            handlers = self.tracer.handlers(vcpu, handlers)     # once per thread: no cost untraced
        inject = self.pic is not None and vcpu.index == 0
        stopping = self._stopping
        debug = self.debug
        table = handlers
        with self._vcpu_active(vcpu):
            if self._user_halted and vcpu.index == 0:
                self._wait_for_interrupt(vcpu, check_if=False)   # restored inside a HLT
            while not stopping.is_set():
                if self._held(vcpu):
                    self._park(vcpu)
                    continue
                if self._pm is not None and self._pm.sleep == PM_WOKEN:
                    self._resume_from_s3(vcpu)      # vCPU 0 (the others wait in _park)
                    continue
                if debug is not None:
                    table = debug.gate(vcpu, handlers)      # the last resume: steps, breakpoints
                if inject:
                    self._inject(vcpu)
                exit = vcpu.run_loop(table)
                if not stopping.is_set() and type(exit) not in table:
                    self.stop(EXIT_INTERNAL, f'unexpected exit on vCPU {vcpu.index}: {exit!r}')

    def _exit_handlers(self):
        """The board's one exit table, on top of the buses that run_loop
        serves: ``f(vcpu, exit) -> bool``, True to run on, False to come back
        here (to inject an interrupt, or because the run is ending)."""
        return {
            IoapicEoi: self._on_eoi,
            Interrupted: self._on_interrupted,
            Hlt: self._on_hlt,
            IrqWindowOpen: lambda vcpu, exit: False,        # the loop injects
            Shutdown: lambda vcpu, exit: self.stop(
                EXIT_TRIPLE_FAULT, f'triple fault on vCPU {vcpu.index} at RIP {vcpu.get_regs().rip:#x}'),
            InternalError: self._on_internal_error,
            FailEntry: lambda vcpu, exit: self.stop(
                EXIT_INTERNAL, f'VM entry failed on vCPU {vcpu.index}: hardware reason '
                f'{exit.hardware_entry_failure_reason:#x}'),
            SystemEvent: self._on_system_event,
        }

    def _on_internal_error(self, vcpu, exit):
        if exit.suberror == KVM_INTERNAL_ERROR_EMULATION and guest_int3(vcpu, exit):
            return deliver_breakpoint(vcpu, past=True)
        self.stop(EXIT_INTERNAL, f'internal error on vCPU {vcpu.index} at RIP '
                  f'{vcpu.get_regs().rip:#x}: {exit.describe()}')
        return False

    def _on_interrupted(self, vcpu, exit):
        if exit.why == 'poll':
            # four times a second, where it is: the timeout report's history
            self._samples[vcpu.index].append((vcpu.get_regs().rip, vcpu.io_exits + vcpu.mmio_exits))
            if self.mode == 'user':
                return False            # HLT comes back to Python: _wait_for_interrupt sees it
            self._poll_seen[vcpu.index] = (self._poll_round, self._own_halt(vcpu))
            if self._halted_for_good():
                self.stop(EXIT_OK, 'the guest halted with interrupts disabled')
            else:
                self._wake_for_lost_eoi(vcpu)
        return False

    def _on_hlt(self, vcpu, exit):
        self._wait_for_interrupt(vcpu)
        return False

    def _on_system_event(self, vcpu, exit):
        if exit.type == KVM_SYSTEM_EVENT_CRASH:
            self.stop(EXIT_TRIPLE_FAULT, 'the guest reported a crash')
        else:
            self.stop(EXIT_OK, 'the guest ' + ('reset' if exit.type == KVM_SYSTEM_EVENT_RESET
                                               else 'powered off'))
        return False

    def _wait_for_interrupt(self, vcpu, check_if=True):
        """User mode: the guest halted; sleep until the PIC has an interrupt.
        Until then the vCPU is in its HLT (``_user_halted``: a snapshot says
        so, and a run that ends here resumes in it)."""
        if check_if and not vcpu.if_flag:
            self.stop(EXIT_OK, 'the guest halted with interrupts disabled')
            return
        ev = self._irq_event
        ev.clear()
        self._user_halted = True
        while not self._stopping.is_set():
            if self._held(vcpu):
                self._park(vcpu)    # paused or stopped by a debugger: it stays in its HLT
            with self.vm.lock:
                if self.pic.pending():
                    self._user_halted = False
                    return
            ev.wait(0.5)
            ev.clear()

    @staticmethod
    def _own_halt(vcpu):
        """Whether ``vcpu`` (asked from its own thread) is halted for good:
        halted with interrupts disabled, or an AP never started (only
        INIT/SIPI wakes it); None for an AP that was never started."""
        state = vcpu.get_mp_state()
        if state in (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED):
            return None
        return state == KVM_MP_STATE_HALTED and not vcpu.get_regs().rflags & 0x200

    def _halted_for_good(self):
        """Every vCPU saw itself halted for good in this poll round. Each
        vCPU reads only its own state: a vCPU ioctl on another vCPU's fd
        waits for that vCPU to leave KVM_RUN, which a guest spinning without
        exits (the boot CPU waiting for an AP to call in) may not do for
        seconds, and an AP stuck there never gets to the SIPI it waits for."""
        now = self._poll_round
        for v in self.vm.vcpus:
            seen_round, halted = self._poll_seen.get(v.index, (None, False))
            if seen_round != now or halted is False:
                return False
        return True

    # -- snapshots, checkpoints and pausing every vCPU -------------------------
    # (tools/snapshot.py does the saving and restoring; this is the board's part:
    # stopping every vCPU at an instruction boundary, and rebuilding devices)

    #: how the console was given on the command line (a snapshot records it, so
    #: ``run --restore`` needs no --console); None from the library
    console_spec = None
    #: after Machine.restore: one line per disk image that changed since the snapshot
    restore_notes = ()

    def _snapshot_init(self, cmdline):
        self.cmdline = bytes(cmdline)
        self._pause_requested = False
        self._pause_cv = threading.Condition()
        self._pause_lock = threading.RLock()    # one pauser at a time (nesting allowed)
        self._pause_depth = 0
        self._active = {}           # vCPU index -> ident of the thread running it
        self._parked = set()        # vCPU indices parked (paused(), or held by a debugger)
        self._user_halted = False   # user mode: vCPU 0 waits in its HLT
        self._device_states = None  # while _rewire_devices builds from saved states
        self._snapshot_request = None
        self._armed_checkpoint = None
        self._bus_parts = {}        # (bus kind, base) -> what _wire_pc put on the bus there

    @contextlib.contextmanager
    def _vcpu_active(self, vcpu):
        with self._pause_cv:
            self._active[vcpu.index] = threading.get_ident()
        try:
            yield
        finally:
            with self._pause_cv:
                del self._active[vcpu.index]
                self._pause_cv.notify_all()

    def _held(self, vcpu):
        """Whether ``vcpu`` must stay parked: paused(), a debugger holds it,
        or the machine is in S3."""
        return (self._pause_requested or (self.debug is not None and self.debug.holds(vcpu))
                or self._asleep(vcpu))

    def _park(self, vcpu):
        """A vCPU thread stops here while it is held (paused(), a debugger's
        stop): outside KVM_RUN, its last port I/O or MMIO completed (a
        kick's EINTR comes after KVM finished it; complete_io() covers any
        other way out)."""
        if vcpu.io_pending:
            vcpu.complete_io()
        with self._pause_cv:
            self._parked.add(vcpu.index)
            self._pause_cv.notify_all()
            while self._held(vcpu) and not self._stopping.is_set():
                self._pause_cv.wait(0.05)
            self._parked.discard(vcpu.index)

    def _stop_vcpus(self, give_up=None):
        """The one way every vCPU is stopped at an instruction boundary: the
        caller has made them held (``_held``); this kicks each running vCPU
        out of KVM_RUN (KVM completes a pending port I/O or MMIO exit before
        it honours ``immediate_exit``) until every one is parked, or
        ``give_up()`` (under the pause condition) says to stop waiting. A
        vCPU whose thread has not started, or has ended, is not waited for:
        one that starts while held parks before its first KVM_RUN."""
        with self._pause_cv:
            while not set(self._active) <= self._parked:
                if give_up is not None and give_up():
                    return
                for i in set(self._active) - self._parked:
                    self.vm.vcpus[i].kick('pause')
                self._irq_event.set()       # a user-mode vCPU in its HLT
                self._pause_cv.wait(0.05)

    # -- ACPI S3: suspend to RAM (see the module docstring) --
    def _asleep(self, vcpu):
        """Whether ``vcpu`` stays stopped for S3: every vCPU while the PM
        block sleeps; the APs also until vCPU 0 has entered the waking vector."""
        pm = self._pm
        if pm is None or pm.sleep == PM_WORKING:
            return False
        return pm.sleep == PM_SLEEPING or vcpu.index != 0

    def _on_suspend(self):
        """The guest entered S3 (a vCPU thread, under the bus lock): stop
        every vCPU; each parks at its next loop."""
        for v in self.vm.vcpus:
            v.kick('suspend')
        self._irq_event.set()

    def _on_wake(self):
        """A wake event ended S3 (under the bus lock): vCPU 0 leaves _park."""
        with self._pause_cv:
            self._pause_cv.notify_all()

    def _on_rtc_alarm(self):
        if self._pm is not None:
            self._pm.rtc_alarm()

    def _waking_vector(self):
        """('real' or 'prot32', address) from the FACS, or a reason why there is none."""
        facs = platform_tables.facs_address(self.platform)
        try:
            data = self.vm.read(facs, platform_tables.FACS_SIZE)
        except KvmliteError:
            data = b''
        if data[:4] != b'FACS':
            return f'no FACS at {facs:#x} (no ACPI tables were written)'
        x_vector, = struct.unpack_from('<Q', data, platform_tables.FACS_X_FIRMWARE_WAKING_VECTOR)
        vector, = struct.unpack_from('<I', data, platform_tables.FACS_FIRMWARE_WAKING_VECTOR)
        if x_vector:
            if x_vector >> 32:
                return f'X_Firmware_Waking_Vector {x_vector:#x} is above 4 GiB'
            return 'prot32', x_vector
        if not vector:
            return 'the FACS waking vectors are 0'
        if vector >> 20:
            return f'Firmware_Waking_Vector {vector:#x} is not below 1 MiB (real mode)'
        return 'real', vector

    def _resume_from_s3(self, vcpu):
        """vCPU 0, after a wake event: wait for every other vCPU to be
        stopped, put each back as firmware leaves it on a wake, and enter the
        waking vector."""
        with self._pause_cv:
            while not self._stopping.is_set():
                running = set(self._active) - self._parked - {vcpu.index}
                if not running:
                    break
                for i in running:
                    self.vm.vcpus[i].kick('suspend')
                self._pause_cv.wait(0.05)
        if self._stopping.is_set():
            return
        if vcpu.io_pending:
            vcpu.complete_io()
        entry = self._waking_vector()
        if isinstance(entry, str):
            self.stop(EXIT_OK, f'the guest woke from S3 with nowhere to go ({entry}): a reset, '
                               'and there is no firmware to boot')
            return
        mode, addr = entry
        for v in self.vm.vcpus:
            lapic = self._lapic_at_power_on.get(v.index)
            if lapic is not None:
                v.set_lapic(kvm_lapic_state.from_buffer_copy(lapic))
            if v is not vcpu and self.mode != 'user':
                v.set_mp_state(KVM_MP_STATE_INIT_RECEIVED)  # waits for INIT/SIPI
        s = vcpu.get_sregs()
        if mode == 'real':
            seg = addr >> 4
            s.cs = kvm_segment(selector=seg, base=seg << 4, limit=0xFFFF, present=1, s=1, type=0xB)
            data = kvm_segment(selector=0, base=0, limit=0xFFFF, present=1, s=1, type=0x3)
            s.gdt.base, s.gdt.limit = 0, 0xFFFF
            s.cr0 = CR0_ET
            ip = addr & 0xF
        else:
            s.cs = segment(0x08, code=True)
            data = segment(0x10)
            s.gdt.base, s.gdt.limit = 0, 0
            s.cr0 = CR0_ET | CR0_PE
            ip = addr
        for name in ('ds', 'es', 'fs', 'gs', 'ss'):
            setattr(s, name, data)
        s.tr = kvm_segment(limit=0xFFFF, present=1, type=0xB)
        s.ldt = kvm_segment(limit=0xFFFF, present=1, type=0x2)
        s.idt.base, s.idt.limit = 0, REAL_MODE_IVT_LIMIT
        s.cr2 = s.cr3 = s.cr4 = s.cr8 = s.efer = 0
        for i in range(len(s.interrupt_bitmap)):
            s.interrupt_bitmap[i] = 0
        vcpu.set_sregs(s)
        vcpu.set_regs(kvm_regs(rip=ip, rflags=0x2))
        if self.mode != 'user':
            vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)
        with self.vm.lock:
            self._pm.resumed()
        with self._pause_cv:
            self._pause_cv.notify_all()

    @contextlib.contextmanager
    def paused(self):
        """Every running vCPU stopped at an instruction boundary, no exit
        half handled, until the block ends; then they run on (those a
        debugger holds stay held). Between runs it costs nothing. Not from a
        vCPU's own thread (a device callback), nor while holding the VM's
        bus lock."""
        me = threading.get_ident()
        with self._pause_cv:
            if me in self._active.values():
                raise KvmliteError('paused() from a vCPU thread would wait for itself: '
                                   'call it from another thread')
        with self._pause_lock:
            self._pause_depth += 1
            try:
                if self._pause_depth == 1:
                    self._pause_requested = True
                    self._stop_vcpus()
                yield self
            finally:
                self._pause_depth -= 1
                if self._pause_depth == 0:
                    with self._pause_cv:
                        self._pause_requested = False
                        self._pause_cv.notify_all()

    def checkpoint(self):
        """The whole machine held in memory (a :class:`tools.snapshot.Checkpoint`);
        from then on KVM logs the pages the guest dirties, so that
        :meth:`reset_to` copies back only those."""
        return _snapshot().checkpoint(self)

    def reset_to(self, checkpoint):
        """Put the machine back as it was at ``checkpoint``: vCPUs, devices,
        clock, and the RAM pages dirtied since (the whole RAM if another
        checkpoint was taken in between). A guest that had ended can run
        again. Returns the number of pages copied back."""
        return _snapshot().reset_to(self, checkpoint)

    def snapshot(self, target):
        """Write the machine to ``target`` (a path, written atomically, or a
        binary file); the format is docs/snapshot.md. A running machine is
        paused for it and runs on."""
        return _snapshot().write_snapshot(self, target)

    @classmethod
    def restore(cls, source, console=None, kvm=None, clock=None, platform=PC, disks=None):
        """A new Machine from a snapshot (a path, a binary file, or an opened
        tools.snapshot.SnapshotFile), ready to run() on from where it was
        taken. A file that is refused raises SnapshotError (a ValueError).
        The disk images the snapshot names are opened again, or ``disks``
        in their place; ``restore_notes`` says which changed since."""
        return _snapshot().restore(cls, source, console=console, kvm=kvm, clock=clock,
                                   platform=platform, disks=disks)

    def request_snapshot(self, target, done=None):
        """Have the timer thread write a snapshot to ``target`` as soon as it
        can (safe in a signal handler); ``done(target, error)`` is called
        after, with None or the SnapshotError."""
        self._snapshot_request = (target, done)
        self.wake()

    def _serve_snapshot_request(self):
        target, done = self._snapshot_request
        self._snapshot_request = None
        error = None
        try:
            self.snapshot(target)
        except (KvmliteError, OSError) as e:
            error = e
        if done is not None:
            done(target, error)

    def _make_device(self, slot, cls, wiring):
        states = self._device_states
        if states is None:
            return cls(**wiring)
        accepted = _from_state_params.get(cls)
        if accepted is None:
            params = inspect.signature(cls.from_state).parameters.values()
            # from_state(cls, state, **wiring) takes all of it (the virtio devices)
            accepted = None if any(p.kind is p.VAR_KEYWORD for p in params) else \
                frozenset(p.name for p in params)
            _from_state_params[cls] = accepted
        if accepted is not None:
            wiring = {p: v for p, v in wiring.items() if p in accepted}
        return cls.from_state(states[slot.name], **wiring)

    def _rewire_devices(self, states):
        """Replace every device with one rebuilt from ``states`` (name ->
        state()), wired and on the buses as _wire_pc wires a new one."""
        vm = self.vm
        with vm.lock:
            wrapped = {}
            for slot in self.platform.devices:
                if slot.name not in self.devices:
                    continue
                for bus, ranges in ((vm.pio, slot.pio), (vm.mmio, slot.mmio)):
                    for _, base, _ in ranges:
                        chain = self._bus_wrappers(bus, base)
                        if chain:
                            wrapped[bus, base] = chain
                        bus.unregister(base)
                delattr(self, slot.name)
            # the old UARTs' coalesced THR ports stay: each new one keeps or drops its own
            for worker in self.workers.values():
                worker.discard()            # notifications to the state being replaced
            self.devices, self._timed, self._buffered = {}, [], []
            self._device_states = states
            # a snapshot of an hvc0 console holds a virtio console that is present
            hvc = [s.name for s in self.platform.devices if s.part == CONSOLE_PARTS['hvc']]
            if any(states.get(n, {}).get('device', {}).get('present') for n in hvc):
                self.console_device = 'hvc'
            if self.mode == 'kernel':
                self._drop_held_lines()
            try:
                self._wire_pc(self.cmdline)
            finally:
                self._device_states = None
            if self.mode == 'split':
                for name in self._irqfds:
                    self._split_irqfd_sink(name)
            for (bus, base), chain in wrapped.items():
                self._rewrap(bus, base, chain)
            self._setup_workers()           # a device present only in the snapshot (hvc0)
        self.wake()

    def _bus_wrappers(self, bus, base):
        """The objects put on the bus at ``base`` around the board's own part
        (a tracer's recording proxy, a profiler's counter: each keeps what it
        wraps in ``.device``), outermost first; [] if none."""
        hit = bus.find(base)
        own = self._bus_parts.get((bus.kind, base))
        obj, chain = hit[0] if hit else None, []
        while obj is not own and obj is not None:
            chain.append(obj)
            obj = getattr(obj, 'device', None)
        return chain if obj is own else []

    def _rewrap(self, bus, base, chain):
        """Put copies of ``chain`` (from _bus_wrappers) around the part now
        at ``base``, so tracing and profiling go on after a rewire."""
        hit = bus.find(base)
        if hit is None:
            return
        part, _, name = hit
        size = next(s for b, s, _, _ in bus.devices() if b == base)
        for wrapper in reversed(chain):
            outer = copy.copy(wrapper)
            outer.device = part
            part = outer
        bus.unregister(base)
        bus.register(base, part, size=size, name=name)

    # -- loading guests --
    def load(self, boot):
        """Put vCPU 0 at the entry of a loaded image (a tools.boot.Boot)."""
        tables = getattr(boot, 'page_tables', None)
        where = {'page_tables': tables} if boot.mode == 'long64' and tables is not None else {}
        setup_mode(self.vm.vcpus[0], self.vm, boot.mode, boot.entry, stack=boot.stack,
                   cs=getattr(boot, 'cs', 0), **where, **boot.regs)

    def close(self):
        for disk in self.disks.values():
            disk.close()
        for worker in self.workers.values():
            worker.close()
        for fd in list(self._irqfds.values()) + [self._worker_stop]:
            if fd >= 0:
                os.close(fd)
        self._irqfds, self._worker_stop = {}, -1
        self._irqfd_gsi, self._irqfd_live, self._line_high = {}, set(), set()
        if self.vm is not None:
            self.vm.close()
        if self._own_kvm and self.kvm is not None:
            self.kvm.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_from_state_params = {}         # device class -> the names its from_state() takes


def _snapshot():
    from . import snapshot      # on first use: the board does not need it to run
    return snapshot
def guest_int3(vcpu, exit):
    """Whether an emulation failure is on an ``int3`` (0xCC) at RIP: a host
    whose instruction emulator runs guest kernel mode (kvm_pvm) cannot
    emulate it and ends KVM_RUN with KVM_EXIT_INTERNAL_ERROR there."""
    if exit.insn:
        return exit.insn[:1] == b'\xcc'
    sregs, rip = vcpu.get_sregs(), vcpu.get_regs().rip
    phys, valid, _, _ = vcpu.translate(sregs.cs.base + rip)
    try:
        return bool(valid) and vcpu.vm.read(phys, 1) == b'\xcc'
    except KvmliteError:
        return False


def deliver_breakpoint(vcpu, past):
    """Give the guest its own #BP (vector 3) through KVM_SET_VCPU_EVENTS, as
    if its ``int3`` at RIP executed: the guest's IDT handler runs with the
    return address after the int3. ``past``: RIP is moved past the one-byte
    int3 first (after an emulation failure the instruction never ran);
    after KVM_EXIT_DEBUG on VMX/SVM RIP stays on it and KVM adds the
    instruction length it saved at the exit, as QEMU re-injects it (api.rst,
    KVM_SET_VCPU_EVENTS; Intel SDM Vol. 3, 27.6.1.1: a software exception
    is injected with the VM-entry instruction length). Returns True."""
    events = vcpu.get_vcpu_events()
    if past:
        regs = vcpu.get_regs()
        regs.rip += 1
        vcpu.set_regs(regs)
    ex = events.exception
    ex.injected, ex.nr, ex.has_error_code, ex.error_code, ex.pending = 1, 3, 0, 0, 0
    events.exception_has_payload = 0
    vcpu.set_vcpu_events(events)
    return True


def _cpu_mode(sregs, rflags):
    """'real mode', 'long mode, CPL0' ... from the segment and control registers
    (Intel SDM Vol. 3, 2.2 and 9.8.5: CR0.PE, EFLAGS.VM, EFER.LMA, CS.L/D)."""
    if not sregs.cr0 & 1:
        return 'real mode'
    if rflags & 1 << 17:
        return 'virtual-8086 mode'
    cs, cpl = sregs.cs, sregs.cs.selector & 3
    if sregs.efer & 1 << 10:
        kind = 'long mode' if cs.l else 'compatibility mode'
    else:
        kind = '32-bit protected mode' if cs.db else '16-bit protected mode'
    return f'{kind}, CPL{cpl}'


def _recent(ring, total, bus, kind):
    """The ring's exits, newest first, as [('COM1 16550A port 0x3fd', 7), ...]:
    runs of one address, named by the device the bus has there."""
    runs = []
    for k in range(min(total, len(ring))):
        addr = ring[(total - k) & (len(ring) - 1)]
        if runs and runs[-1][0] == addr:
            runs[-1][1] += 1
        else:
            runs.append([addr, 1])
    named = []
    for addr, count in runs:
        hit = bus.find(addr)
        named.append((f'{hit[2] if hit else "unclaimed"} {kind} {addr:#x}', count))
    return named


def _stall_report(machine, vcpu):
    """One line on where a stopped vCPU was and what it was doing: its mode
    and RIP; halted (in KVM, or waiting for an interrupt in user mode),
    spinning at one address or looping in a few bytes across the last halt
    polls (0.25 s apart), polling a device (waiting on I/O) when it also
    exited since the last poll, or running; then its last port-I/O and MMIO
    exits by device (Vcpu.last_ports and last_mmio)."""
    regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    rip, if_on = regs.rip, bool(regs.rflags & 0x200)
    real = not sregs.cr0 & 1
    cs = sregs.cs.selector

    def at(addr):
        return f'{cs:04x}:{addr & 0xffff:04x}' if real else f'{addr:#x}'
    where = f'CS:IP {at(rip)} (linear {sregs.cs.base + (rip & 0xffff):#x})' if real else f'RIP {rip:#x}'
    mp = vcpu.get_mp_state() if machine.mode != 'user' else None
    samples = list(machine._samples.get(vcpu.index, ())) + [(rip, vcpu.io_exits + vcpu.mmio_exits)]
    ports = _recent(vcpu.last_ports, vcpu.io_exits, machine.vm.pio, 'port')
    mmio = _recent(vcpu.last_mmio, vcpu.mmio_exits, machine.vm.mmio, 'MMIO')
    if machine._asleep(vcpu):
        doing = 'stopped in ACPI S3 (waits for a wake event)'
    elif mp in (KVM_MP_STATE_UNINITIALIZED, KVM_MP_STATE_INIT_RECEIVED):
        doing = 'not started (waits for INIT and SIPI)'
    elif mp == KVM_MP_STATE_HALTED or machine.mode == 'user' and machine._user_halted:
        doing = f'halted, interrupts {"on" if if_on else "off"}'
    elif len(samples) < 2:
        doing = 'running'
    else:
        lo, hi = min(r for r, _ in samples), max(r for r, _ in samples)
        doing = (f'spinning at {at(lo)}' if lo == hi else
                 f'looping in {at(lo)}-{at(hi)}' if hi - lo < 64 else 'running')
        if hi - lo < 64 and samples[-1][1] > samples[-2][1] and (ports or mmio):
            # a small loop that still exits: a guest polling a device
            doing += f', waiting on I/O (polling {(ports or mmio)[0][0]})'
    last = ', '.join(what + (f' x{n}' if n > 1 else '') for what, n in ports + mmio) or 'none'
    return (f'vCPU {vcpu.index}: {_cpu_mode(sregs, regs.rflags)}, {where}: {doing}; '
            f'last exits, newest first: {last} ({vcpu.io_exits} port I/O and '
            f'{vcpu.mmio_exits} MMIO exits in all)')


VIRTIO_QUEUE_NOTIFY = 0x50    # the virtio-mmio QueueNotify register (virtio 1.2, 4.2.2)


class _VirtioWorker:
    """The queue thread of one virtio-mmio device (split and kernel mode).

    For each of the device's queues an eventfd is bound with KVM_IOEVENTFD
    to a 4-byte write of that queue's index to the device's QueueNotify
    register (the DATAMATCH flag): KVM signals it and resumes the guest at
    once, with no exit to kvmlite. This thread waits on the eventfds and
    serves the queues through the device's ``notify(index)``, under the
    VM's bus lock, the lock every vCPU thread's MMIO access and the timer
    thread's ticks take: the device sees one caller at a time, in an order
    each thread's own accesses keep. The eventfd is read under that lock
    too, so whoever holds it (:meth:`Machine.quiesce_io`, before a
    snapshot) sees every signalled notification either served or still
    signalled, never taken and lost. Any other write to QueueNotify (a
    queue index that matches no eventfd, another width) is an MMIO exit as
    before. ``notified`` counts the notifications served here.
    """

    def __init__(self, machine, slot, queues):
        self.machine, self.name = machine, slot.name
        self.addr = slot.mmio[0][1] + VIRTIO_QUEUE_NOTIFY
        self.fds = []
        self.notified = 0
        self.thread = None
        try:
            for q in range(queues):
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self.fds.append(fd)
                machine.vm.ioeventfd(fd, self.addr, 4, datamatch=q)
        except BaseException:
            self.close()
            raise

    def start(self, stop_fd):
        self.thread = threading.Thread(target=self._loop, args=(stop_fd,), daemon=True,
                                       name=f'kvmlite-virtio-{self.name}')
        self.thread.start()

    def _loop(self, stop_fd):
        poller = select.poll()
        for fd in self.fds + [stop_fd]:
            poller.register(fd, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if stop_fd in ready:
                    return
                self.serve()
        except Exception as e:          # noqa: BLE001 - end the run, saying why
            what = e if isinstance(e, DeviceError) else f'{type(e).__name__}: {e}'
            self.machine.stop(EXIT_VMM, f'device error in the {self.name} queue thread: {what}')

    def serve(self):
        """Serve every queue whose eventfd is signalled (under the bus lock)."""
        machine = self.machine
        served = False
        with machine.vm.lock:
            dev = machine.devices[self.name]    # a restore may have rebuilt it
            for q, fd in enumerate(self.fds):
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                self.notified += 1
                served = True
                try:
                    dev.notify(q)
                except Exception as e:
                    raise DeviceError(f'{type(dev).__name__}.notify({q}) raised '
                                      f'{type(e).__name__}: {e}') from e
        if served and hasattr(dev, 'tick'):
            machine.wake()              # its deadline may have moved, as after an MMIO write

    def discard(self):
        """Forget what is signalled (the device's state is being replaced)."""
        for fd in self.fds:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                pass

    def join(self):
        if self.thread is not None:
            self.thread.join(timeout=5)
            self.thread = None

    def close(self):
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class _WiredOr:
    """One ISA IRQ line that several devices may drive (COM1 and COM3 share
    IRQ 4, COM2 and COM4 IRQ 3): high while any input holds it high.
    ``sink(level)`` (the PIC and IOAPIC pin, or KVM_IRQ_LINE) sees the
    line's own changes: a rise when the first
    input goes high, a fall when the last one goes low. So a level-triggered
    pin stays asserted while one sharer still wants service, and an
    edge-triggered one sees no second edge while the line is already high
    (the reason a guest's shared-IRQ handler serves every port on it, as
    Linux's 8250 driver does). KVM_IRQ_LINE needs this too: KVM keeps one
    level for all of userspace's calls on a GSI (KVM_USERSPACE_IRQ_SOURCE_ID)."""

    __slots__ = ('sink', 'high', 'inputs')

    def __init__(self, sink):
        self.sink, self.high, self.inputs = sink, 0, 0

    def input(self):
        """A new input's ``drive(level)``, for its device's IrqLine."""
        bit = 1 << self.inputs
        self.inputs += 1

        def drive(level):
            was = self.high
            self.high = now = (was | bit) if level else (was & ~bit)
            if (now != 0) != (was != 0):
                self.sink(1 if now else 0)
        return drive


class _Routed:
    """The IOAPIC on the MMIO bus: after a guest write, mirror its entries
    into KVM's GSI routes (see Machine.sync_ioapic_routes)."""

    def __init__(self, ioapic, machine):
        self.ioapic, self.machine, self.SIZE = ioapic, machine, ioapic.SIZE

    def read(self, offset, size):
        return self.ioapic.read(offset, size)

    def write(self, offset, size, value):
        self.ioapic.write(offset, size, value)
        self.machine.sync_ioapic_routes()


def detect_format(image):
    """'multiboot', 'bzimage', 'pvh', 'elf' or 'flat' for a kernel image.

    A sign of a format (the multiboot magic, a Xen note) is enough: its
    loader then says what else is wrong, rather than the image running as
    something it is not."""
    if len(image) > 0x206 and image[0x202:0x206] == b'HdrS':
        return 'bzimage'
    head = image[:8192]
    if any(struct.unpack_from('<I', head, off)[0] == 0x1BADB002 for off in range(0, len(head) - 3, 4)):
        return 'multiboot'
    if image[:4] == b'\x7fELF':
        return 'pvh' if boot.has_pvh_note(image) else 'elf'
    return 'flat'


def linux_cmdline(machine, cmdline):
    """A Linux command line with what ``machine`` adds: where its CPUID
    policy hides features, LINUX_CLEARCPUID and LINUX_USER_ENV (unless the
    user gave a clearcpuid= or a GLIBC_TUNABLES= word), then the virtio-mmio
    devices. All go before a ``--``, after which Linux hands every word to
    init as an argument (Documentation/admin-guide/kernel-parameters.rst)."""
    cut = re.search(rb'(?:^|\s)--(?:\s|$)', cmdline)
    kernel, init = (cmdline[:cut.start()], cmdline[cut.start():]) if cut else (cmdline, b'')
    words = [kernel.strip()] if kernel.strip() else []
    if cpuid_restricted(machine.cpuid_policy):
        for word, key in ((LINUX_CLEARCPUID, b'clearcpuid='), (LINUX_USER_ENV, b'GLIBC_TUNABLES=')):
            if not re.search(rb'(?:^|\s)' + key, kernel):
                words.append(word)
    if machine.console_device == 'hvc' and not re.search(rb'(?:^|\s)console=', kernel):
        words.append(b'console=hvc0')      # the kernel's and init's console
    kernel = boot.virtio_mmio_cmdline(b' '.join(words), machine.virtio_devices())
    init = init.strip()
    return b' '.join(w for w in (kernel, init) if w)


def load_kernel(machine, image, fmt='auto', cmdline=b'', initrd=None):
    """Load ``image`` (bytes) into ``machine`` by its format and set vCPU 0 at
    its entry; returns the tools.boot.Boot. Writes the MP and ACPI tables
    first when the machine has APICs."""
    fmt = detect_format(image) if fmt == 'auto' else fmt
    if fmt in ('bzimage', 'pvh'):
        cmdline = linux_cmdline(machine, cmdline)
    rsdp, platform, vm = 0, machine.platform, machine.vm
    if machine.mode != 'user':
        rsdp = platform_tables.write_platform_tables(vm, machine.cpus, platform=platform).rsdp
    if fmt == 'flat':
        b = boot.load_flat(image, vm, platform=platform)
    elif fmt == 'elf':
        b = boot.load_elf(image, vm, platform=platform)
    elif fmt == 'multiboot':
        mods = [(initrd, b'initrd')] if initrd is not None else []
        b = boot.load_multiboot(image, vm, cmdline=cmdline, modules=mods, platform=platform)
    elif fmt == 'bzimage':
        b = boot.load_bzimage(image, vm, cmdline=cmdline, initrd=initrd, rsdp=rsdp,
                              platform=platform)
    elif fmt == 'pvh':
        b = boot.load_pvh(image, vm, cmdline=cmdline, initrd=initrd, rsdp=rsdp, platform=platform)
    else:
        raise ValueError(f'kernel format {fmt!r}: use auto, flat, elf, multiboot, bzimage or pvh')
    if initrd is not None and fmt in ('flat', 'elf'):
        raise ValueError(f'an initrd needs a kernel that takes one (multiboot, bzImage, PVH); '
                         f'this one is {fmt}')
    machine.load(b)
    return b
