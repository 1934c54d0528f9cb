"""A gdb remote stub for a :class:`tools.pc.Machine`: ``kvmlite run --gdb PORT``.

Three layers, each usable alone:

- :class:`PacketReader` and :func:`encode` are the packet layer of the GDB
  Remote Serial Protocol: ``$data#cs`` framing, the modulo-256 checksum,
  ``+``/``-`` acknowledgments, ``}`` escapes and the Ctrl-C byte (0x03).
  Pure functions of bytes: tested without KVM.
- :class:`Debugger` is the machine side, on the board's hooks
  (:meth:`tools.pc.Machine.attach_debugger`): a stop holds every vCPU with
  the board's own pause (the one used for snapshots: each parks at an
  instruction boundary, all-stop), and each passes the gate before its
  KVM_RUN loop, where a resume's steps and breakpoints are applied;
  it owns the breakpoints (the four debug registers DR0-3 through
  KVM_SET_GUEST_DEBUG, then ``int3`` bytes it plants), single steps, and
  guest-virtual memory access through KVM_TRANSLATE.
- :class:`GdbServer` is the TCP server (one client at a time) and
  :class:`Session` the command interpreter for one gdb.

What KVM does here was measured on a host whose guest kernel mode runs in
KVM's instruction emulator (kvm_pvm), and the code is written for that host
and for VMX/SVM hosts alike:

- a hardware execute breakpoint exits (KVM_EXIT_DEBUG) before the
  instruction; setting RF does not get past it, so a vCPU that resumes on an
  armed breakpoint first steps one instruction with its breakpoints off
  (and a planted ``int3`` put back to the original byte), then re-arms;
- ``int3`` with KVM_GUESTDBG_USE_SW_BP exits as KVM_EXIT_DEBUG (exception
  3) on VMX/SVM, but ends in KVM_EXIT_INTERNAL_ERROR (emulation failure)
  with 0xCC at RIP on the emulating host: if the stub planted that byte it
  is a breakpoint hit either way; if not, it is the guest's own, and the
  guest gets its #BP (tools.pc.deliver_breakpoint: KVM_SET_VCPU_EVENTS);
- while single-stepping, an ``out`` (and an MMIO write) may return with RIP
  already past it (the emulating host) or on it (VMX, completed by the next
  KVM_RUN): the step is over when RIP has moved;
- data watchpoints (DR7 R/W = 01/11) never fire on the emulating host.
  The stub asks once per process (:func:`data_breakpoints_fire`: a tiny VM
  writes under a DR7 write breakpoint) and, where they fire, gives ``Z2``
  (write) and ``Z4`` (access) free debug registers; otherwise, and for
  ``Z3`` (reads: DR7 has no read-only kind), the watched pages leave
  normal RAM (:meth:`kvmlite.Vm.trap_pages`): a write watch makes the page
  a KVM_MEM_READONLY slot, so guest writes exit as KVM_EXIT_MMIO; a read or
  access watch leaves it unmapped, so every access does. The stub
  completes each access in the page's memory (:class:`_WatchedPage`, on the
  MMIO bus) and reports ``watch:``/``rwatch:``/``awatch:`` once the
  instruction is done. An instruction fetch from an unmapped (read- or
  access-watched) page cannot be served: KVM cannot run code from MMIO.

Sources: the GDB manual, appendix "GDB Remote Serial Protocol" (Overview,
Packets, Stop Reply Packets, General Query Packets: qSupported, qXfer,
qfThreadInfo; vCont; Interrupts; Target Descriptions and the i386 features
org.gnu.gdb.i386.core/sse/segments); the KVM API text
(Documentation/virt/kvm/api.rst: KVM_SET_GUEST_DEBUG, KVM_EXIT_DEBUG,
KVM_TRANSLATE, KVM_GET/SET_FPU, immediate_exit); the Intel SDM Vol. 3,
chapter 17 (debug registers, DR6/DR7) and chapter 3 (segment descriptors).
"""

import os
import select
import socket
import struct
import threading

from kvmlite import (
    Cap, Debug, GuestMemoryError, InternalError, IoOut, KVM_GUESTDBG_BLOCKIRQ, KvmError,
    MmioWrite,
)

from .pc import deliver_breakpoint

PAGE = 0x1000
WATCH_NAMES = {2: 'watch', 3: 'rwatch', 4: 'awatch'}
_dr7_fires = None           # the probe's answer, once per process


def data_breakpoints_fire(kvm):
    """Whether this host's KVM stops a guest at a DR7 data breakpoint: a
    small VM (32-bit protected mode, CPL0) writes a dword under a write
    breakpoint (KVM_SET_GUEST_DEBUG, DR0, R/W 01, length 4) and must exit
    with KVM_EXIT_DEBUG and DR6.B0. Asked once per process; the
    environment's KVMLITE_GDB_WATCH=pages skips it (the page fallback
    everywhere)."""
    global _dr7_fires
    if os.environ.get('KVMLITE_GDB_WATCH') == 'pages':
        return False
    if _dr7_fires is None:
        from kvmlite import KvmliteError, setup_protected_mode
        try:
            vm = kvm.create_vm()
        except KvmliteError:
            _dr7_fires = False
            return False
        try:
            vm.add_memory(0, 0x10000)
            v = vm.create_vcpu()
            vm.write(0x1000, bytes.fromhex('c70500300000') + (1).to_bytes(4, 'little') + b'\xf4')
            setup_protected_mode(v, vm, 0x1000)
            v.set_guest_debug(enable=True, breakpoints=[(0x3000, 1, 4)])
            e = v.run(timeout=2)
            _dr7_fires = isinstance(e, Debug) and bool(e.dr6 & 1)
        except KvmliteError:
            _dr7_fires = False
        finally:
            vm.close()
    return _dr7_fires


class _WatchedPage:
    """A watched page on the MMIO bus: completes each guest access in the
    page's own memory and tells the debugger."""

    SIZE = PAGE

    def __init__(self, debugger, gpa):
        self.debugger, self.gpa, self.vm = debugger, gpa, debugger.machine.vm

    def read(self, offset, size):
        gpa = self.gpa + offset
        value = int.from_bytes(self.vm.read(gpa, size), 'little')
        self.debugger._watch_hit(gpa, size, False)
        return value

    def write(self, offset, size, value):
        gpa = self.gpa + offset
        self.vm.write(gpa, value.to_bytes(size, 'little'))
        self.vm.mark_written(gpa)
        self.debugger._watch_hit(gpa, size, True)

__all__ = ['PacketReader', 'encode', 'checksum', 'Debugger', 'GdbServer', 'Session',
           'target_xml', 'parse_address']

INTERRUPT = 0x03                # Ctrl-C from gdb: stop the target
PACKET_SIZE = 0x4000            # the largest packet we take (qSupported PacketSize)
SIGINT, SIGTRAP = 2, 5          # gdb's signal numbers (include/gdb/signals.h)
EFAULT = 0x0E
BP_VECTOR = 3


def checksum(data):
    return sum(data) & 0xFF


def escape(data):
    """The binary escapes: '#', '$', '}' and '*' become '}' then the byte ^ 0x20."""
    if not any(c in data for c in b'#$}*'):
        return bytes(data)
    out = bytearray()
    for c in data:
        if c in b'#$}*':
            out += bytes((0x7D, c ^ 0x20))
        else:
            out.append(c)
    return bytes(out)


def unescape(data):
    if b'}' not in data:
        return bytes(data)
    out, it = bytearray(), iter(data)
    for c in it:
        if c == 0x7D:
            c = next(it, 0x20) ^ 0x20
        out.append(c)
    return bytes(out)


def encode(payload):
    """A packet: ``$`` + escaped payload + ``#`` + two hex digits of checksum."""
    if isinstance(payload, str):
        payload = payload.encode()
    body = escape(payload)
    return b'$' + body + b'#' + b'%02x' % checksum(body)


class PacketReader:
    """Splits a byte stream from gdb into events: ``('packet', data)`` (a
    good packet, unescaped), ``('bad', raw)`` (bad checksum, non-hex
    checksum or too long: answer ``-``), ``('ack', b'+')``, ``('nak',
    b'-')`` and ``('interrupt', b'\\x03')``. Bytes outside packets are
    dropped. State carries over between calls, so data may arrive split
    anywhere."""

    def __init__(self, limit=PACKET_SIZE):
        self.limit = limit
        self._buf = None            # bytes of the packet being read, after '$'
        self._sum = None            # checksum digits read after '#'

    def feed(self, data):
        events = []
        for c in data:
            if self._sum is not None:
                self._sum.append(c)
                if len(self._sum) == 2:
                    body, digits = bytes(self._buf), bytes(self._sum)
                    self._buf = self._sum = None
                    good = all(ch in b'0123456789abcdefABCDEF' for ch in digits) and \
                        int(digits, 16) == checksum(body)
                    events.append(('packet', unescape(body)) if good else
                                  ('bad', b'$' + body + b'#' + digits))
            elif self._buf is not None:
                if c == ord('#'):
                    self._sum = bytearray()
                elif c == ord('$'):            # a new start: the old packet was cut
                    events.append(('bad', b'$' + bytes(self._buf)))
                    self._buf = bytearray()
                elif len(self._buf) >= self.limit:
                    events.append(('bad', b'$' + bytes(self._buf[:32]) + b'...'))
                    self._buf = None
                else:
                    self._buf.append(c)
            elif c == ord('$'):
                self._buf = bytearray()
            elif c == ord('+'):
                events.append(('ack', b'+'))
            elif c == ord('-'):
                events.append(('nak', b'-'))
            elif c == INTERRUPT:
                events.append(('interrupt', b'\x03'))
        return events


def parse_address(text, default_host='127.0.0.1'):
    """``--gdb`` value: ``PORT`` or ``HOST:PORT`` (``[v6]:PORT``) -> (host, port).
    Port 0 asks the kernel for a free one. Raises ValueError."""
    host, sep, port = text.rpartition(':')
    if not sep:
        host = default_host
    host = host.strip('[]') or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'gdb address {text!r}: give PORT or HOST:PORT, a port 0-65535 '
                         f'(for example --gdb 1234 or --gdb 127.0.0.1:1234)')
    return host, int(port)


# --- registers and the target description ---------------------------------

_GPR64 = ('rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rbp', 'rsp') + tuple(f'r{i}' for i in range(8, 16))
_GPR32 = ('eax', 'ecx', 'edx', 'ebx', 'esp', 'ebp', 'esi', 'edi')
_SEGS = ('cs', 'ss', 'ds', 'es', 'fs', 'gs')
_X87 = ('fctrl', 'fstat', 'ftag', 'fiseg', 'fioff', 'foseg', 'fooff', 'fop')


def registers(bits):
    """The register list of the description for a ``bits`` (32/64) vCPU:
    (name, bit size, gdb type, feature), in g-packet order."""
    core, wide = 'org.gnu.gdb.i386.core', bits == 64
    regs = [(n, bits, 'data_ptr' if n[1:] in ('sp', 'bp') else f'int{bits}', core)
            for n in (_GPR64 if wide else _GPR32)]
    regs.append(('rip' if wide else 'eip', bits, 'code_ptr', core))
    regs.append(('eflags', 32, 'i386_eflags', core))
    regs += [(n, 32, 'int32', core) for n in _SEGS]
    regs += [(f'st{i}', 80, 'i387_ext', core) for i in range(8)]
    regs += [(n, 32, 'int', core) for n in _X87]
    sse = 'org.gnu.gdb.i386.sse'
    regs += [(f'xmm{i}', 128, 'vec128', sse) for i in range(16 if wide else 8)]
    regs.append(('mxcsr', 32, 'i386_mxcsr', sse))
    if wide:
        regs += [(n, 64, 'int64', 'org.gnu.gdb.i386.segments') for n in ('fs_base', 'gs_base')]
    sys_ = 'org.kvmlite.x86.sys'
    regs += [(n, bits, f'int{bits}', sys_) for n in ('cr0', 'cr2', 'cr3', 'cr4')]
    regs.append(('efer', 64, 'int64', sys_))
    return regs


_EFLAGS = ((0, 'CF'), (1, ''), (2, 'PF'), (4, 'AF'), (6, 'ZF'), (7, 'SF'), (8, 'TF'), (9, 'IF'),
           (10, 'DF'), (11, 'OF'), (14, 'NT'), (16, 'RF'), (17, 'VM'), (18, 'AC'), (19, 'VIF'),
           (20, 'VIP'), (21, 'ID'))
_MXCSR = ('IE', 'DE', 'ZE', 'OE', 'UE', 'PE', 'DAZ', 'IM', 'DM', 'ZM', 'OM', 'UM', 'PM', 'FZ')


def target_xml(bits):
    """The target description gdb reads with qXfer:features:read."""
    regs = registers(bits)
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
           '<target version="1.0">',
           f'<architecture>{"i386:x86-64" if bits == 64 else "i386"}</architecture>']
    feature = None
    for name, size, type_, feat in regs:
        if feat != feature:
            if feature is not None:
                out.append('</feature>')
            feature = feat
            out.append(f'<feature name="{feat}">')
            if feat.endswith('core'):
                out.append('<flags id="i386_eflags" size="4">')
                out += [f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in _EFLAGS if n]
                out.append('</flags>')
            elif feat.endswith('sse'):
                out += ['<vector id="v4f" type="ieee_single" count="4"/>',
                        '<vector id="v2d" type="ieee_double" count="2"/>',
                        '<vector id="v16i8" type="int8" count="16"/>',
                        '<vector id="v8i16" type="int16" count="8"/>',
                        '<vector id="v4i32" type="int32" count="4"/>',
                        '<vector id="v2i64" type="int64" count="2"/>',
                        '<union id="vec128">',
                        '<field name="v4_float" type="v4f"/>', '<field name="v2_double" type="v2d"/>',
                        '<field name="v16_int8" type="v16i8"/>', '<field name="v8_int16" type="v8i16"/>',
                        '<field name="v4_int32" type="v4i32"/>', '<field name="v2_int64" type="v2i64"/>',
                        '<field name="uint128" type="uint128"/>', '</union>',
                        '<flags id="i386_mxcsr" size="4">']
                out += [f'<field name="{n}" start="{b}" end="{b}"/>' for b, n in enumerate(_MXCSR)]
                out.append('</flags>')
        group = ' group="float"' if name in _X87 else ' group="vector"' if name == 'mxcsr' else ''
        out.append(f'<reg name="{name}" bitsize="{size}" type="{type_}"{group}/>')
    out += ['</feature>', '</target>']
    return '\n'.join(out).encode()


def _full_tag(ftwx):
    """KVM's abridged tag byte (1 = in use) -> the x87 tag word (00 valid, 11 empty)."""
    return sum((0 if ftwx >> i & 1 else 3) << (2 * i) for i in range(8))


def _abridged_tag(ftag):
    return sum(1 << i for i in range(8) if (ftag >> (2 * i)) & 3 != 3)


class _CpuState:
    """One vCPU's registers as gdb numbers them, read once per access and
    written back by part (general, segment/control, FPU)."""

    def __init__(self, vcpu, bits):
        self.vcpu, self.bits = vcpu, bits
        self.regs, self.sregs, self.fpu = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_fpu()
        self.layout = registers(bits)
        self.dirty = set()

    def get(self, i):
        name, size, _, _ = self.layout[i]
        r, s, f = self.regs, self.sregs, self.fpu
        if name in _GPR64 or name in ('rip',):
            v = getattr(r, name)
        elif name in _GPR32 or name == 'eip':
            v = getattr(r, 'r' + name[1:])
        elif name == 'eflags':
            v = r.rflags
        elif name in _SEGS:
            v = getattr(s, name).selector
        elif name.startswith('st'):
            return bytes(f.fpr[int(name[2:])])[:10]
        elif name.startswith('xmm'):
            return bytes(f.xmm[int(name[3:])])
        elif name in _X87:
            v = {'fctrl': f.fcw, 'fstat': f.fsw, 'ftag': _full_tag(f.ftwx), 'fiseg': 0,
                 'fioff': f.last_ip & 0xFFFFFFFF, 'foseg': 0, 'fooff': f.last_dp & 0xFFFFFFFF,
                 'fop': f.last_opcode}[name]
        elif name == 'mxcsr':
            v = f.mxcsr
        elif name in ('fs_base', 'gs_base'):
            v = getattr(s, name[:2]).base
        else:                                   # cr0, cr2, cr3, cr4, efer
            v = getattr(s, name)
        return (v & ((1 << size) - 1)).to_bytes(size // 8, 'little')

    def set(self, i, data):
        name, size, _, _ = self.layout[i]
        if len(data) != size // 8:
            raise ValueError(f'register {name} takes {size // 8} bytes, got {len(data)}')
        if data == self.get(i):
            return
        v = int.from_bytes(data, 'little')
        r, s, f = self.regs, self.sregs, self.fpu
        if name in _GPR64 or name == 'rip':
            setattr(r, name, v)
            self.dirty.add('regs')
        elif name in _GPR32 or name == 'eip':
            attr = 'r' + name[1:]
            setattr(r, attr, (getattr(r, attr) & ~0xFFFFFFFF) | v)
            self.dirty.add('regs')
        elif name == 'eflags':
            r.rflags = (v & 0x3F7FD7) | 2          # the defined bits; bit 1 is always set
            self.dirty.add('regs')
        elif name in _SEGS:
            _load_segment(self, name, v)
            self.dirty.add('sregs')
        elif name.startswith('st'):
            f.fpr[int(name[2:])][:10] = list(data)
            self.dirty.add('fpu')
        elif name.startswith('xmm'):
            f.xmm[int(name[3:])][:] = list(data)
            self.dirty.add('fpu')
        elif name in ('fctrl', 'fstat', 'fop'):
            setattr(f, {'fctrl': 'fcw', 'fstat': 'fsw', 'fop': 'last_opcode'}[name], v & 0xFFFF)
            self.dirty.add('fpu')
        elif name == 'ftag':
            f.ftwx = _abridged_tag(v)
            self.dirty.add('fpu')
        elif name in ('fioff', 'fooff'):
            setattr(f, 'last_ip' if name == 'fioff' else 'last_dp', v)
            self.dirty.add('fpu')
        elif name == 'mxcsr':
            f.mxcsr = v
            self.dirty.add('fpu')
        elif name in ('fs_base', 'gs_base'):
            getattr(s, name[:2]).base = v
            self.dirty.add('sregs')
        elif name in ('cr0', 'cr2', 'cr3', 'cr4', 'efer'):
            setattr(s, name, v)
            self.dirty.add('sregs')
        else:
            raise ValueError(f'register {name} cannot be written')

    def commit(self):
        """Write the changed parts back; KVM refuses an impossible state."""
        if 'sregs' in self.dirty:
            self.vcpu.set_sregs(self.sregs)
        if 'regs' in self.dirty:
            self.vcpu.set_regs(self.regs)
        if 'fpu' in self.dirty:
            self.vcpu.set_fpu(self.fpu)
        self.dirty.clear()


def _load_segment(state, name, selector):
    """A new selector: real mode takes base = selector * 16; protected mode
    loads the descriptor from the GDT (SDM Vol. 3, 3.4.5)."""
    seg = getattr(state.sregs, name)
    if not state.sregs.cr0 & 1:
        seg.selector, seg.base = selector, selector << 4
        return
    if selector & 4:
        raise ValueError(f'selector {selector:#x} is in the LDT: only GDT selectors can be loaded')
    if selector < 4:
        if name in ('cs', 'ss'):
            raise ValueError(f'a null selector cannot be loaded into {name}')
        seg.selector, seg.unusable, seg.present = selector, 1, 0
        return
    gdt = state.sregs.gdt
    if (selector & ~7) + 7 > gdt.limit:
        raise ValueError(f'selector {selector:#x} is past the GDT limit {gdt.limit:#x}')
    raw = state.debugger.read_memory(state.vcpu, gdt.base + (selector & ~7), 8)
    if len(raw) != 8:
        raise ValueError(f'the GDT entry of selector {selector:#x} cannot be read')
    d = int.from_bytes(raw, 'little')
    limit = (d & 0xFFFF) | ((d >> 48) & 0xF) << 16
    g = (d >> 55) & 1
    seg.selector = selector
    seg.base = ((d >> 16) & 0xFFFFFF) | ((d >> 56) & 0xFF) << 24
    seg.limit = (limit << 12) | 0xFFF if g else limit
    seg.type, seg.s, seg.dpl, seg.present = (d >> 40) & 0xF, (d >> 44) & 1, (d >> 45) & 3, (d >> 47) & 1
    seg.avl, seg.l, seg.db, seg.g, seg.unusable = (d >> 52) & 1, (d >> 53) & 1, (d >> 54) & 1, g, 0


# --- the machine side -----------------------------------------------------

class _VcpuDebug:
    """A vCPU's debug state between two resumes."""
    __slots__ = ('generation', 'action', 'stepping', 'step_from', 'restore', 'applied')

    def __init__(self):
        self.generation = -1
        self.action = None          # 'c' or 's' for the current resume
        self.stepping = False       # single-stepping one instruction now
        self.step_from = None       # RIP where that step started
        self.restore = None         # linear address of a planted int3 lifted for the step
        self.applied = None         # the KVM_SET_GUEST_DEBUG arguments last given


class Debugger:
    """All-stop control of a Machine's vCPUs, with breakpoints and memory.

    ``hold``: every vCPU stops before its first instruction. ``listener``:
    called (from any thread) when a vCPU stopped by itself or the run ended.
    Methods other than the gate and the exit hooks are for one controlling
    thread (the gdb session) and, but for :meth:`stop_all`, expect the vCPUs
    stopped."""

    HW_SLOTS = 4

    def __init__(self, machine, hold=False, listener=None):
        self.machine = machine
        # the board's pause condition: a resume wakes the vCPUs parked there
        # (an RLock inside: stop() may come from a signal handler)
        self.cond = machine._pause_cv
        self.listener = listener or (lambda: None)
        self.n = machine.cpus
        self.actions = {} if hold else {i: 'c' for i in range(self.n)}
        self.generation = 0
        self.event = None            # (vCPU index, kind) of the first stop since the resume
        self.pending = {}            # vCPU index -> (kind, RIP) of a later stop, not yet told
        # DR0-DR3: [(linear address, kind, length)]; kind 'sw'/'hw' an execution
        # breakpoint (gdb's Z0/Z1), 'w'/'a' a data one (Z2/Z4, where DR7 fires)
        self.hw = []
        self.watches = []            # [(Z kind 2-4, address, length, physical ranges or None: in DR0-3)]
        self._trapped = {}           # page -> its _WatchedPage on the MMIO bus
        self.use_dr7 = data_breakpoints_fire(machine.kvm)
        self.sw = {}                 # linear address -> [physical address, original byte]
        self._state = [_VcpuDebug() for _ in range(self.n)]
        self._tables = None
        try:
            flags = machine.vm.check_extension(Cap.SET_GUEST_DEBUG2)
        except KvmError:
            flags = 0
        self.block_irq = bool(flags & KVM_GUESTDBG_BLOCKIRQ)
        self.ended = False

    # -- the board's hooks (vCPU threads) --
    def holds(self, vcpu):
        """The board parks a vCPU while this is true (tools.pc.Machine._park)."""
        return vcpu.index not in self.actions and not self._ending()

    def gate(self, vcpu, handlers):
        """Before a vCPU's run loop: take the last resume (a step, or a step
        over the armed breakpoint it sits on) and give the exit table."""
        st = self._state[vcpu.index]
        with self.cond:
            action = self.actions.get(vcpu.index)
            if action is not None and st.generation != self.generation and not self._ending():
                st.generation = self.generation
                st.action = action
                self._start(vcpu, st)
        self._apply(vcpu, st)
        return self._exit_tables(handlers)[1 if st.stepping else 0]

    def machine_ended(self):
        with self.cond:
            self.ended = True
            self.cond.notify_all()
        self.listener()

    def _ending(self):
        return self.ended or self.machine._stopping.is_set()

    def _exit_tables(self, handlers):
        if self._tables is None or self._tables[0] is not handlers:
            internal = handlers[InternalError]
            table = dict(handlers)
            table[Debug] = self._on_debug
            table[InternalError] = lambda vcpu, exit: self._on_internal_error(vcpu, exit, internal)
            stepping = dict(table)
            stepping[IoOut] = self._on_step_out
            stepping[MmioWrite] = self._on_step_mmio_write
            self._tables = (handlers, (table, stepping))
        return self._tables[1]

    def _start(self, vcpu, st):
        """A resume reaches this vCPU: step if asked, or if it sits on an
        armed breakpoint (which would fire again before it moves)."""
        rip = vcpu.get_regs().rip
        lin = self.pc_linear(vcpu, rip)
        st.stepping = st.action == 's' or lin in self.sw or lin in self._exec_bps()
        st.step_from = rip if st.stepping else None
        st.restore = None
        if st.stepping and lin in self.sw:
            phys, orig = self.sw[lin]
            self.machine.vm.write(phys, bytes((orig,)))      # the real instruction for one step
            st.restore = lin

    def _exec_bps(self):
        return [a for a, kind, _ in self.hw if kind in ('sw', 'hw')]

    def _apply(self, vcpu, st):
        # while stepping the execution breakpoints are off, data ones stay
        hw = tuple((None if st.stepping else a) if kind in ('sw', 'hw') else
                   (a, 1 if kind == 'w' else 3, n) for a, kind, n in self.hw)
        if not any(bp is not None for bp in hw):
            hw = ()
        want = (st.stepping, hw, bool(self.sw))
        if want != st.applied:
            vcpu.set_guest_debug(enable=any(want), singlestep=st.stepping, breakpoints=hw,
                                 sw_breakpoints=bool(self.sw), block_irq=st.stepping and self.block_irq)
            st.applied = want

    def _step_over(self, vcpu, st, report=True):
        """The stepped instruction is done. Returns False: back to the gate."""
        st.stepping = False
        if st.restore is not None and st.restore in self.sw:
            self.machine.vm.write(self.sw[st.restore][0], b'\xcc')
        st.restore = None
        if st.action == 's' and report:
            self._report(vcpu, 'step')
        return False

    def _on_debug(self, vcpu, exit):
        st = self._state[vcpu.index]
        if exit.exception == BP_VECTOR and exit.pc not in self.sw:
            return deliver_breakpoint(vcpu, past=False)     # the guest's own int3: its own #BP
        data = [i for i, (_, kind, _) in enumerate(self.hw) if kind in ('w', 'a') and exit.dr6 >> i & 1]
        if data:                                            # a trap: the access is done
            addr, kind, _ = self.hw[data[0]]
            if st.stepping:
                self._step_over(vcpu, st, report=False)
            self._report(vcpu, f'{"watch" if kind == "w" else "awatch"}:{addr:x}', rip=None)
            return False
        if st.stepping:
            return self._step_over(vcpu, st)
        if exit.exception == BP_VECTOR or exit.pc in self.sw:
            kind = 'swbreak' if exit.pc in self.sw else 'trap'
        else:
            kind = 'hwbreak' if exit.dr6 & 0xF or exit.pc in self._exec_bps() else 'trap'
        self._report(vcpu, kind)
        return False

    def _on_internal_error(self, vcpu, exit, otherwise):
        """The emulating host: a planted int3 at CPL0 ends in an emulation
        failure (one the stub did not plant goes to the board, which gives
        the guest its #BP)."""
        lin = self.pc_linear(vcpu)
        hit = self.sw.get(lin)
        if hit is not None and self.machine.vm.read(hit[0], 1) == b'\xcc':
            self._report(vcpu, 'swbreak')
            return False
        return otherwise(vcpu, exit)

    def _moved(self, vcpu, st):
        return st.stepping and vcpu.get_regs().rip != st.step_from

    def _on_step_out(self, vcpu, exit):
        self.machine.vm.pio.io(exit.port, exit.size, exit.count, 1, exit.data, 0)
        st = self._state[vcpu.index]
        return self._step_over(vcpu, st) if self._moved(vcpu, st) else True

    def _on_step_mmio_write(self, vcpu, exit):
        mmio = self.machine.vm.mmio
        if len(exit.data) in (1, 2, 4, 8):
            mmio.write(exit.addr, len(exit.data), exit.value)
        else:
            mmio.odd_access(exit.addr, len(exit.data), True, None)
        st = self._state[vcpu.index]
        return self._step_over(vcpu, st) if self._moved(vcpu, st) else True

    def _report(self, vcpu, kind, rip=True):
        """A vCPU stopped by itself: the first stop since the resume is the
        event gdb hears of; a later one (another vCPU met a breakpoint
        before the kick reached it) is kept pending for the next resume,
        as gdbserver keeps it."""
        if rip is True:
            rip = vcpu.get_regs().rip    # None: a watch, reported while its access completes
        with self.cond:
            if self.event is None:
                self.event = (vcpu.index, kind)
            elif self.event[0] != vcpu.index:
                self.pending.setdefault(vcpu.index, (kind, rip))
            self.actions.clear()             # all-stop: everyone parks
            self.cond.notify_all()
        for v in self.machine.vm.vcpus:
            if v is not vcpu:
                v.kick('debug')
        self.machine._irq_event.set()
        self.listener()

    # -- the controlling thread --
    def stop_all(self):
        """Hold every vCPU and wait until each running one is parked (the
        board's pause). Returns False if the run ended instead."""
        with self.cond:
            self.actions.clear()
        self.machine._stop_vcpus(give_up=self._ending)
        return not self._ending()

    def resume(self, actions):
        """Run the vCPUs in ``actions`` ({index: 'c' or 's'}); the others stay
        held. If one of those vCPUs has a stop pending (and it still
        stands: its RIP has not moved and what stopped it is still
        inserted), nothing runs and that stop is the event, as gdbserver
        reports a pending status before it resumes anything (GDB manual,
        "Stop Reply Packets"; gdbserver's linux-low)."""
        actions = {i: a for i, a in actions.items() if 0 <= i < self.n}
        with self.cond:
            self.event = None
            for i in sorted(set(self.pending) & set(actions)):
                kind, rip = self.pending.pop(i)
                if self._still_stands(self.vcpu(i), kind, rip):
                    self.event = (i, kind)
                    break
            if self.event is None:
                self.generation += 1
                self.actions = actions
            self.cond.notify_all()
        if self.event is not None:
            self.listener()

    def _still_stands(self, vcpu, kind, rip):
        if rip is not None and vcpu.get_regs().rip != rip:
            return False                    # gdb moved it: the stop is gone
        if kind in ('swbreak', 'hwbreak'):
            lin = self.pc_linear(vcpu, rip)
            return lin in self.sw or lin in self._exec_bps()
        if kind.partition(':')[0] in WATCH_NAMES.values():
            return any(f'{a:x}' == kind.partition(':')[2] for _, a, _, _ in self.watches)
        return True

    # -- watchpoints --
    def _watch_hit(self, gpa, size, is_write):
        """A guest access to a trapped page (from the vCPU's thread, on the
        MMIO bus): report the first watch it meets, and stop that vCPU as
        soon as KVM has completed the instruction (a kick: immediate_exit)."""
        for kind, addr, _, ranges in self.watches:
            if ranges is None or kind == 2 and not is_write or kind == 3 and is_write:
                continue
            if any(p < gpa + size and gpa < p + n for p, n in ranges):
                me = threading.get_ident()
                index = next((i for i, t in list(self.machine._active.items()) if t == me), None)
                if index is None:
                    return
                vcpu = self.vcpu(index)
                self._report(vcpu, f'{WATCH_NAMES[kind]}:{addr:x}', rip=None)
                vcpu.kick('debug')
                return

    def _insert_watch(self, kind, addr, length, vcpu):
        if not 0 < length <= PAGE:
            raise ValueError(f'a watchpoint of {length} bytes')
        if any(w[:3] == (kind, addr, length) for w in self.watches):
            return
        if (self.use_dr7 and kind in (2, 4) and length in (1, 2, 4, 8) and not addr % length
                and len(self.hw) < self.HW_SLOTS):
            self.hw.append((addr, 'w' if kind == 2 else 'a', length))
            self.watches.append((kind, addr, length, None))
            return
        ranges = self._pages(vcpu, addr, length)
        if sum(n for _, n in ranges) != length:
            raise ValueError(f'{addr:#x}-{addr + length - 1:#x} is not all mapped RAM')
        self.watches.append((kind, addr, length, ranges))
        try:
            self._lay_out_traps()
        except (KvmError, GuestMemoryError):
            self.watches.pop()
            self._lay_out_traps()
            raise ValueError(f'the page of {addr:#x} cannot be taken out of RAM') from None

    def _remove_watch(self, kind, addr, length):
        for i, w in enumerate(self.watches):
            if w[:3] == (kind, addr, length):
                del self.watches[i]
                if w[3] is None:
                    tag = 'w' if kind == 2 else 'a'
                    self.hw = [h for h in self.hw if h != (addr, tag, length)]
                else:
                    self._lay_out_traps()
                return

    def _lay_out_traps(self):
        """Every vCPU is stopped: give KVM the watched pages' new layout."""
        traps = {}
        for kind, _, _, ranges in self.watches:
            for phys, n in ranges or ():
                for page in range(phys & ~(PAGE - 1), phys + n, PAGE):
                    if traps.get(page) != 'access':
                        traps[page] = 'write' if kind == 2 else 'access'
        vm = self.machine.vm
        with vm.lock:
            vm.trap_pages(traps)
            for page in set(self._trapped) - set(traps):
                vm.mmio.unregister(page)
                del self._trapped[page]
            for page in sorted(set(traps) - set(self._trapped)):
                self._trapped[page] = _WatchedPage(self, page)
                vm.mmio.register(page, self._trapped[page], name=f'gdb watchpoint page {page:#x}')

    def take_event(self):
        with self.cond:
            return self.event

    def detach(self):
        """Remove every breakpoint and let the guest run on (stopped first, so
        no vCPU meets an int3 as it is taken away)."""
        self.pending.clear()
        if self.sw or self.hw or self.watches:
            if not self.stop_all():
                return
            for addr in list(self.sw):
                self._unplant(addr)
            self.hw.clear()
            if self.watches:
                self.watches.clear()
                self._lay_out_traps()
        self.resume({i: 'c' for i in range(self.n)})

    def vcpu(self, index):
        return self.machine.vm.vcpus[index]

    def bits(self, vcpu):
        """64 in long mode (64-bit code segment), else 32."""
        s = vcpu.get_sregs()
        return 64 if s.efer & (1 << 10) and s.cs.l else 32

    def mode(self, vcpu):
        s = vcpu.get_sregs()
        if not s.cr0 & 1:
            return 'real mode'
        if s.efer & (1 << 10):
            return '64-bit' if s.cs.l else 'compatibility mode'
        return '32-bit' + (', paging' if s.cr0 & (1 << 31) else '')

    def pc_linear(self, vcpu, rip=None):
        s = vcpu.get_sregs()
        rip = vcpu.get_regs().rip if rip is None else rip
        lin = s.cs.base + rip
        return lin & 0xFFFFFFFFFFFFFFFF if s.efer & (1 << 10) else lin & 0xFFFFFFFF

    def registers(self, vcpu, bits):
        state = _CpuState(vcpu, bits)
        state.debugger = self
        return state

    def _pages(self, vcpu, addr, length):
        """(physical address, length) chunks of a virtual range, up to the first
        page that does not translate or is not RAM."""
        long_mode = vcpu.get_sregs().efer & (1 << 10)
        mask = 0xFFFFFFFFFFFFFFFF if long_mode else 0xFFFFFFFF
        out, vm = [], self.machine.vm
        while length > 0:
            addr &= mask
            n = min(length, 0x1000 - (addr & 0xFFF))
            phys, valid, _, _ = vcpu.translate(addr)
            if not valid:
                break
            try:
                vm.view(phys, n)
            except GuestMemoryError:
                break                               # MMIO or a hole: not read as memory
            out.append((phys, n))
            addr, length = addr + n, length - n
        return out

    def read_memory(self, vcpu, addr, length):
        """Guest-virtual bytes as far as they translate (planted int3 hidden)."""
        vm, data = self.machine.vm, bytearray()
        planted = {p: orig for p, orig in self.sw.values()}
        for phys, n in self._pages(vcpu, addr, length):
            chunk = bytearray(vm.read(phys, n))
            for p, orig in planted.items():
                if phys <= p < phys + n and chunk[p - phys] == 0xCC:
                    chunk[p - phys] = orig
            data += chunk
        return bytes(data)

    def write_memory(self, vcpu, addr, data):
        """Write guest-virtual bytes; False (nothing written) if any page fails."""
        pages = self._pages(vcpu, addr, len(data))
        if sum(n for _, n in pages) != len(data):
            return False
        planted = {p: entry for entry in self.sw.values() for p in (entry[0],)}
        vm, pos = self.machine.vm, 0
        for phys, n in pages:
            chunk = bytearray(data[pos:pos + n])
            for p, entry in planted.items():
                if phys <= p < phys + n:
                    entry[1] = chunk[p - phys]       # a write under a breakpoint: kept for later
                    chunk[p - phys] = 0xCC
            vm.write(phys, bytes(chunk))
            pos += n
        return True

    def insert(self, kind, addr, vcpu, length=1):
        """``kind`` 0: a breakpoint (a debug register while one is free, else
        a planted int3); 1: a hardware breakpoint; 2, 3, 4: a write, read or
        access watchpoint of ``length`` bytes. Raises ValueError."""
        if kind in WATCH_NAMES:
            return self._insert_watch(kind, addr, length, vcpu)
        if addr in self._exec_bps() or addr in self.sw:
            if kind == 1 and addr in self.sw:
                raise ValueError('a software breakpoint is already planted there')
            return
        if len(self.hw) < self.HW_SLOTS:
            self.hw.append((addr, 'hw' if kind == 1 else 'sw', 1))
            return
        if kind == 1:
            raise ValueError('all four debug registers are in use')
        pages = self._pages(vcpu, addr, 1)
        if not pages:
            raise ValueError(f'{addr:#x} is not mapped RAM')
        phys = pages[0][0]
        vm = self.machine.vm
        self.sw[addr] = [phys, vm.read(phys, 1)[0]]
        vm.write(phys, b'\xcc')

    def remove(self, kind, addr, length=1):
        if kind in WATCH_NAMES:
            return self._remove_watch(kind, addr, length)
        for i, (a, k, _) in enumerate(self.hw):
            if a == addr and k in ('sw', 'hw') and (k == 'hw') == (kind == 1):
                del self.hw[i]
                return
        if kind == 0 and addr in self.sw:
            self._unplant(addr)
            return
        for i, (a, k, _) in enumerate(self.hw):
            if a == addr and k in ('sw', 'hw'):
                del self.hw[i]
                return

    def _unplant(self, addr):
        phys, orig = self.sw.pop(addr)
        vm = self.machine.vm
        if vm.read(phys, 1) == b'\xcc':             # unless the guest wrote over it
            vm.write(phys, bytes((orig,)))


# --- the server -------------------------------------------------------------

class GdbServer:
    """Listens on (host, port) and serves one gdb at a time on a daemon thread.

    On connection the guest stops (as gdb expects); on detach, ``k`` or a
    dropped connection the session ends, breakpoints are removed and the
    guest runs on (``k`` ends the run). A second client while one is
    connected is accepted and closed at once."""

    def __init__(self, machine, host='127.0.0.1', port=1234, hold=False):
        self.machine = machine
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.debugger = Debugger(machine, hold=hold, listener=self._wake)
        family = socket.AF_INET6 if ':' in host else socket.AF_INET
        self.sock = socket.create_server((host, port), family=family)   # OSError: the caller says why
        self.address = self.sock.getsockname()[:2]
        machine.attach_debugger(self.debugger)
        self._thread = None
        self._closed = False
        self.sessions = 0

    def _wake(self):
        try:
            os.write(self._wake_w, b'.')
        except OSError:
            pass

    def start(self):
        self._thread = threading.Thread(target=self._serve, name='kvmlite-gdb', daemon=True)
        self._thread.start()
        return self

    def _serve(self):
        try:
            while not self._closed:
                ready, _, _ = select.select([self.sock, self._wake_r], [], [], 1.0)
                self._drain()
                if self._closed or self.debugger.ended:
                    return
                if self.sock in ready:
                    try:
                        conn, _ = self.sock.accept()
                    except OSError:
                        continue
                    self.sessions += 1
                    Session(self, conn).run()
        except (OSError, ValueError):
            if not self._closed:
                raise

    def _drain(self):
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self):
        self._closed = True
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        for s in (self.sock,):
            try:
                s.close()
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


class Session:
    """One gdb connection: acknowledgments, the command table, stop replies."""

    def __init__(self, server, conn):
        self.server, self.conn, self.debugger = server, conn, server.debugger
        try:
            # small packets both ways: without this, Nagle's algorithm and the
            # peer's delayed ACK hold each reply ~40 ms
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.reader = PacketReader()
        self.last = b''             # the last packet sent, for a '-'
        self.running = False        # a c/s/vCont waits for its stop reply
        self.g_thread = 0           # vCPU index for g/G/p/P/m/M/X
        self.c_thread = None        # vCPU index for s/c (None: all)
        self.bits = None
        self.xml = None
        self.done = False

    def send(self, payload, ack=b''):
        self.last = encode(payload)
        self.conn.sendall(ack + self.last)

    def run(self):
        conn, server, dbg = self.conn, self.server, self.debugger
        try:
            if not dbg.stop_all():
                return
            while not self.done:
                ready, _, _ = select.select([conn, server.sock, server._wake_r], [], [], 1.0)
                if server.sock in ready:
                    self._refuse()
                if server._wake_r in ready:
                    server._drain()
                if dbg.ended or server._closed:
                    if self.running:
                        self.send(f'W{(server.machine.result.status if server.machine.result else 0) & 0xFF:02x}')
                    return
                if self.running and dbg.take_event() is not None:
                    self._stopped(*dbg.take_event())
                if conn in ready:
                    data = conn.recv(65536)
                    if not data:
                        return                  # gdb went away: the guest runs on
                    self._handle_bytes(data)
        except OSError:
            pass                                # a reset connection: the same
        finally:
            try:
                conn.close()
            except OSError:
                pass
            if not dbg.ended:
                dbg.detach()

    def _refuse(self):
        try:
            other, _ = self.server.sock.accept()
            other.close()
        except OSError:
            pass

    def _handle_bytes(self, data):
        for kind, body in self.reader.feed(data):
            if kind == 'nak' and self.last:
                self.conn.sendall(self.last)
            elif kind == 'bad':
                self.conn.sendall(b'-')
            elif kind == 'interrupt':
                if self.running and self.debugger.stop_all():
                    self._stopped(self._any_thread(), 'interrupt')
            elif kind == 'packet':
                # all-stop: while the guest runs gdb sends nothing but Ctrl-C; a
                # register or memory access now would wait for a running vCPU
                reply = self.command(body) if not self.running else 'E10'
                if reply is not None:
                    self.send(reply, ack=b'+')         # the ack and the reply in one segment
                else:
                    self.conn.sendall(b'+')
                if self.done:
                    return

    def _any_thread(self):
        return self.c_thread if self.c_thread is not None else self.g_thread

    def _stopped(self, index, kind):
        """Every vCPU held: tell gdb which one stopped and why."""
        if not self.debugger.stop_all():
            return
        self.running = False
        self.g_thread = index
        sig = SIGINT if kind == 'interrupt' else SIGTRAP
        reason = f'{kind}:;' if kind in ('swbreak', 'hwbreak') else f'{kind};' if ':' in kind else ''
        self.send(f'T{sig:02x}thread:{index + 1:x};{reason}')

    # -- commands --
    def command(self, pkt):
        """The reply to one packet (str/bytes), or None when it comes later."""
        try:
            text = pkt.decode('latin-1')
            head = text[:1]
            if head == 'q' or head == 'Q':
                return self._query(text)
            if head == 'v':
                return self._v(text)
            handler = self._COMMANDS.get(head)
            if handler is None:
                return ''
            return handler(self, text[1:], pkt[1:])
        except (ValueError, IndexError, KeyError):
            return 'E16'                                    # EINVAL: a malformed packet
        except (KvmError, GuestMemoryError):
            return 'E0e'

    def _query(self, text):
        if text.startswith('qSupported'):
            return (f'PacketSize={PACKET_SIZE:x};qXfer:features:read+;swbreak+;hwbreak+;'
                    f'vContSupported+')
        if text.startswith('qXfer:features:read:'):
            annex, _, span = text[len('qXfer:features:read:'):].partition(':')
            if annex != 'target.xml':
                return 'E00'
            offset, length = (int(x, 16) for x in span.split(','))
            if self.xml is None:
                self.bits = self.debugger.bits(self.debugger.vcpu(0))
                self.xml = target_xml(self.bits)
            chunk = self.xml[offset:offset + min(length, PACKET_SIZE // 2)]
            return (b'l' if offset + len(chunk) >= len(self.xml) else b'm') + chunk
        if text == 'qfThreadInfo':
            return 'm' + ','.join(f'{i + 1:x}' for i in range(self.debugger.n))
        if text == 'qsThreadInfo':
            return 'l'
        if text == 'qC':
            return f'QC{self.g_thread + 1:x}'
        if text.startswith('qAttached'):
            return '1'
        if text.startswith('qThreadExtraInfo,'):
            i = self._thread(text.split(',', 1)[1])
            v = self.debugger.vcpu(i)
            return f'vCPU {i}, {self.debugger.mode(v)}'.encode().hex()
        if text.startswith('qSymbol'):
            return 'OK'
        return ''

    def _v(self, text):
        if text == 'vCont?':
            return 'vCont;c;C;s;S'
        if text.startswith('vCont;'):
            actions = {}
            for part in text[len('vCont;'):].split(';'):
                act, _, tid = part.partition(':')
                if not act or act[0] not in 'cCsS':
                    raise ValueError(f'vCont action {act!r}')
                targets = range(self.debugger.n) if tid in ('', '-1') else [self._thread(tid)]
                for i in targets:
                    actions.setdefault(i, act[0].lower())        # the leftmost action wins
            return self._resume(actions)
        if text.startswith('vKill'):
            self._kill()
            return 'OK'
        return ''

    def _thread(self, tid):
        """A gdb thread-id -> vCPU index (1-based ids; 0 and -1: the first)."""
        if tid.startswith('p'):
            tid = tid.partition('.')[2] or '-1'
        if tid in ('0', '-1'):
            return 0
        i = int(tid, 16) - 1
        if not 0 <= i < self.debugger.n:
            raise ValueError(f'no thread {tid}')
        return i

    def _resume(self, actions):
        if not actions:
            return 'E16'
        self.xml_bits_check()
        self.running = True
        self.debugger.resume(actions)
        return None

    def xml_bits_check(self):
        self.bits = self.bits or self.debugger.bits(self.debugger.vcpu(0))

    def _state(self):
        self.xml_bits_check()
        return self.debugger.registers(self.debugger.vcpu(self.g_thread), self.bits)

    def _cmd_g(self, rest, raw):
        st = self._state()
        return b''.join(st.get(i) for i in range(len(st.layout))).hex()

    def _cmd_G(self, rest, raw):
        st = self._state()
        data, pos = bytes.fromhex(rest), 0
        for i, (_, size, _, _) in enumerate(st.layout):
            n = size // 8
            if pos + n > len(data):
                break
            st.set(i, data[pos:pos + n])
            pos += n
        st.commit()
        return 'OK'

    def _cmd_p(self, rest, raw):
        st = self._state()
        i = int(rest, 16)
        if not 0 <= i < len(st.layout):
            return 'E16'
        return st.get(i).hex()

    def _cmd_P(self, rest, raw):
        st = self._state()
        num, _, value = rest.partition('=')
        i = int(num, 16)
        if not 0 <= i < len(st.layout):
            return 'E16'
        st.set(i, bytes.fromhex(value))
        st.commit()
        return 'OK'

    def _span(self, rest):
        addr, _, length = rest.partition(',')
        return int(addr, 16), int(length, 16)

    def _cmd_m(self, rest, raw):
        addr, length = self._span(rest)
        data = self.debugger.read_memory(self.debugger.vcpu(self.g_thread), addr,
                                         min(length, PACKET_SIZE // 2 - 16))
        return data.hex() if data or not length else f'E{EFAULT:02x}'

    def _cmd_M(self, rest, raw):
        span, _, hexdata = rest.partition(':')
        addr, length = self._span(span)
        data = bytes.fromhex(hexdata)
        if len(data) != length:
            return 'E16'
        ok = self.debugger.write_memory(self.debugger.vcpu(self.g_thread), addr, data)
        return 'OK' if ok else f'E{EFAULT:02x}'

    def _cmd_X(self, rest, raw):
        colon = raw.index(b':')
        addr, length = self._span(raw[:colon].decode('latin-1'))
        data = raw[colon + 1:]
        if len(data) != length:
            return 'E16'
        if not length:
            return 'OK'                 # gdb's probe for X
        ok = self.debugger.write_memory(self.debugger.vcpu(self.g_thread), addr, data)
        return 'OK' if ok else f'E{EFAULT:02x}'

    def _cmd_Z(self, rest, raw, insert=True):
        kind, addr, length = rest.split(';')[0].split(',')
        kind, addr, length = int(kind), int(addr, 16), int(length, 16)
        if kind not in (0, 1, 2, 3, 4):
            return ''
        if insert:
            try:
                self.debugger.insert(kind, addr, self.debugger.vcpu(self.g_thread), length)
            except ValueError:
                return f'E{EFAULT:02x}'
        else:
            self.debugger.remove(kind, addr, length)
        return 'OK'

    def _cmd_z(self, rest, raw):
        return self._cmd_Z(rest, raw, insert=False)

    def _cmd_H(self, rest, raw):
        op, tid = rest[:1], rest[1:]
        i = self._thread(tid)
        if op == 'g':
            self.g_thread = i
        elif op == 'c':
            self.c_thread = None if tid in ('-1', '0') else i
        else:
            return 'E16'
        return 'OK'

    def _cmd_T(self, rest, raw):
        self._thread(rest)
        return 'OK'

    def _cmd_question(self, rest, raw):
        return f'T{SIGTRAP:02x}thread:{self.g_thread + 1:x};'

    def _cmd_c(self, rest, raw):
        if rest:
            self._set_pc(int(rest, 16))
        return self._resume({i: 'c' for i in range(self.debugger.n)})

    def _cmd_C(self, rest, raw):
        return self._cmd_c(rest.partition(';')[2], raw)      # the signal is not delivered

    def _cmd_S(self, rest, raw):
        return self._cmd_s(rest.partition(';')[2], raw)

    def _cmd_s(self, rest, raw):
        if rest:
            self._set_pc(int(rest, 16))
        return self._resume({self._any_thread(): 's'})

    def _set_pc(self, addr):
        st = self._state()
        pc = 8 if self.bits == 32 else 16
        st.set(pc, addr.to_bytes(self.bits // 8, 'little'))
        st.commit()

    def _cmd_D(self, rest, raw):
        self.done = True
        return 'OK'

    def _cmd_k(self, rest, raw):
        return self._kill()

    def _kill(self):
        from .pc import EXIT_SIGNAL
        self.done = True
        self.server.machine.stop(EXIT_SIGNAL, 'killed from gdb')
        return None

    _COMMANDS = {'g': _cmd_g, 'G': _cmd_G, 'p': _cmd_p, 'P': _cmd_P, 'm': _cmd_m, 'M': _cmd_M,
                 'X': _cmd_X, 'Z': _cmd_Z, 'z': _cmd_z, 'H': _cmd_H, 'T': _cmd_T,
                 '?': _cmd_question, 'c': _cmd_c, 's': _cmd_s, 'C': _cmd_C, 'S': _cmd_S, 'D': _cmd_D, 'k': _cmd_k}
