"""Snapshots of a whole :class:`tools.pc.Machine`: to a file and back, and
in-memory checkpoints with a reset whose cost follows the pages dirtied.

What is saved, per vCPU: the general and special registers, the XSAVE area
(KVM_GET_XSAVE2, or the legacy FPU where KVM has no XSAVE), the XCRs, every
MSR that KVM_GET_MSR_INDEX_LIST reports and this vCPU can read, the vCPU
events, the debug registers, the CPUID it was given and, with an in-kernel
local APIC, the LAPIC page and the MP state. Per VM: the kvmclock
(KVM_GET_CLOCK), in ``kernel`` mode the in-kernel PICs, IOAPIC and PIT
(KVM_GET_IRQCHIP, KVM_GET_PIT2), and every Python device's ``state()``;
the board's pending console input; every RAM page that is not all zero.

The file format is in docs/snapshot.md. A file is untrusted input: it is
JSON and raw pages, never pickle or eval; every field is checked (type,
width, range) and every memory run against the machine's RAM before any of
it is used, and a refusal is a :class:`SnapshotError` (a ValueError, so the
CLI answers it with status 2) raised before any vCPU runs.

Sources: the KVM API text (Documentation/virt/kvm/api.rst): KVM_GET/SET_REGS,
SREGS, XSAVE/XSAVE2, XCRS, MSRS, MSR_INDEX_LIST, LAPIC, VCPU_EVENTS (the
KVM_VCPUEVENT_VALID_* flags), DEBUGREGS, MP_STATE, IRQCHIP, PIT2, CLOCK,
KVM_GET_DIRTY_LOG and KVM_MEM_LOG_DIRTY_PAGES; its note on KVM_EXIT_IO/MMIO
that guest state is consistent only once KVM_RUN has been re-entered (with
``immediate_exit`` set, the operation completes and KVM_RUN returns EINTR),
which :meth:`Machine.paused` relies on; and the order QEMU's
target/i386/kvm.c puts state back in (registers, XSAVE, XCRs, sregs, MSRs,
events, MP state, LAPIC, then the TSC deadline again, debug registers).
"""

import base64
import ctypes
import hashlib
import json
import os
import struct
import tempfile
import zlib

from kvmlite import (
    PAGE_SIZE, Cap, KvmError, KvmliteError, kvm_cpuid_entry2, kvm_debugregs, kvm_fpu,
    kvm_ioapic_state, kvm_irqchip, kvm_lapic_state, kvm_pic_state, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
)

__all__ = ['SnapshotError', 'Checkpoint', 'MAGIC', 'VERSION', 'checkpoint', 'reset_to',
           'write_snapshot', 'open_snapshot', 'restore']

MAGIC = b'KVMLSNAP'
VERSION = 2         # 2: the configuration records the --disk images and --rng
#: magic, version, header size, metadata offset, metadata length, data offset,
#: file length, metadata CRC-32, header CRC-32 (of every byte before it)
HEADER = struct.Struct('<8sIIQQQQII')
META_OFFSET = PAGE_SIZE
META_MAX = 64 << 20             # a metadata block past this is refused unread
ZERO_PAGE = bytes(PAGE_SIZE)
SCAN_CHUNK = 256 * PAGE_SIZE    # zero pages are found 1 MiB at a time

# api.rst, KVM_SET_VCPU_EVENTS: which fields KVM takes from the struct
KVM_VCPUEVENT_VALID_NMI_PENDING = 0x1
KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x2
MSR_IA32_TSC = 0x10
MSR_IA32_TSC_DEADLINE = 0x6E0
_CHIPS = ((KVM_IRQCHIP_PIC_MASTER, kvm_pic_state, 'pic'), (KVM_IRQCHIP_PIC_SLAVE, kvm_pic_state, 'pic'),
          (KVM_IRQCHIP_IOAPIC, kvm_ioapic_state, 'ioapic'))
# CPUID registers that hold feature bits: (leaf, subleaf, register)
_FEATURE_REGS = ((1, 0, 'ecx'), (1, 0, 'edx'), (7, 0, 'ebx'), (7, 0, 'ecx'), (7, 0, 'edx'),
                 (0xD, 0, 'eax'), (0xD, 1, 'eax'), (0x80000001, 0, 'ecx'), (0x80000001, 0, 'edx'))


class SnapshotError(KvmliteError, ValueError):
    """A snapshot that cannot be written, or a file that is refused."""


# -- ctypes structs <-> plain data ----------------------------------------

def _is_bytes_array(t):
    return issubclass(t, ctypes.Array) and t._type_ in (ctypes.c_uint8, ctypes.c_char)


def to_plain(obj):
    """A ctypes struct as JSON-able data: fields by name, integers as ints,
    byte arrays as base64, other arrays as lists."""
    if isinstance(obj, ctypes.Array):
        if _is_bytes_array(type(obj)):
            return base64.b64encode(bytes(obj)).decode('ascii')
        return [to_plain(x) for x in obj]
    if isinstance(obj, (ctypes.Structure, ctypes.Union)):
        if isinstance(obj, ctypes.Union):
            return base64.b64encode(bytes(obj)).decode('ascii')
        return {f[0]: to_plain(getattr(obj, f[0])) for f in obj._fields_}
    return obj


def _int(value, ctype, where):
    if type(value) is not int:
        raise SnapshotError(f'{where}: {value!r} is not an integer')
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value < 0
    lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    if not lo <= value < hi:
        raise SnapshotError(f'{where}: {value} does not fit {bits} bits')
    return value


def _b64(value, size, where):
    if not isinstance(value, str):
        raise SnapshotError(f'{where}: not a base64 string')
    try:
        raw = base64.b64decode(value.encode('ascii'), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise SnapshotError(f'{where}: not valid base64') from None
    if size is not None and len(raw) != size:
        raise SnapshotError(f'{where}: {len(raw)} bytes, {size} expected')
    return raw


def from_plain(ctype, data, where):
    """The ctypes struct ``ctype`` from :func:`to_plain` data, every field
    present, typed and in range (a SnapshotError otherwise)."""
    obj = ctype()
    _fill(obj, data, where)
    return obj


def _fill(obj, data, where):
    names = [f[0] for f in obj._fields_]
    if not isinstance(data, dict) or sorted(data) != sorted(names):
        raise SnapshotError(f'{where}: expected the fields {", ".join(names)}')
    for name, ftype, *_ in obj._fields_:
        value, here = data[name], f'{where}.{name}'
        if _is_bytes_array(ftype):
            ctypes.memmove(ctypes.addressof(obj) + getattr(type(obj), name).offset,
                           _b64(value, ctypes.sizeof(ftype), here), ctypes.sizeof(ftype))
        elif issubclass(ftype, ctypes.Array):
            if not isinstance(value, list) or len(value) != ftype._length_:
                raise SnapshotError(f'{here}: expected a list of {ftype._length_}')
            arr = getattr(obj, name)
            for i, v in enumerate(value):
                if issubclass(ftype._type_, ctypes.Structure):
                    _fill(arr[i], v, f'{here}[{i}]')
                else:
                    arr[i] = _int(v, ftype._type_, f'{here}[{i}]')
        elif issubclass(ftype, ctypes.Union):
            ctypes.memmove(ctypes.addressof(obj) + getattr(type(obj), name).offset,
                           _b64(value, ctypes.sizeof(ftype), here), ctypes.sizeof(ftype))
        elif issubclass(ftype, ctypes.Structure):
            _fill(getattr(obj, name), value, here)
        else:
            setattr(obj, name, _int(value, ftype, here))


# -- what a machine is ----------------------------------------------------

def platform_digest(platform):
    """A digest of everything a platform description says."""
    fields = [(name, getattr(platform, name)) for name in type(platform).__slots__]
    return hashlib.sha256(repr(sorted(fields, key=lambda f: f[0])).encode()).hexdigest()


def _config(m):
    return {'mem_size': m.mem_size, 'cpus': m.cpus, 'irqchip': m.mode,
            'cpuid_policy': m.cpuid_policy, 'cpu_vendor': m.cpu_vendor, 'console': m.console_spec,
            'cmdline': base64.b64encode(m.cmdline).decode('ascii'),
            'platform': {'devices': [[s.name, s.part] for s in m.platform.devices],
                         'digest': platform_digest(m.platform)},
            'ram': [[s.gpa, s.size] for s in m.vm.slots if not s.readonly],
            'disks': [_disk_record(name, disk) for name, disk in m.disks.items()],
            'rng': bool(m.rng)}


IDENTITY_BLOCK = 4096           # a disk's identity hashes its first and last block


def _disk_identity(disk):
    """(mtime in ns or None, SHA-256 of the first and last block): cheap
    to take, and changed by most writes a guest or a user makes."""
    size = disk.size
    first = disk.read(0, min(IDENTITY_BLOCK, size))
    last = disk.read(max(0, size - IDENTITY_BLOCK), min(IDENTITY_BLOCK, size))
    fd = getattr(disk, 'fd', None)
    mtime = os.fstat(fd).st_mtime_ns if isinstance(fd, int) and fd >= 0 else None
    return mtime, hashlib.sha256(first + last).hexdigest()


def _disk_record(slot, disk):
    """What a snapshot says of one disk: enough to open it again and to
    tell whether it is the image the guest had (a disk's contents are not in
    the snapshot)."""
    path = getattr(disk, 'path', None)
    mtime, digest = _disk_identity(disk)
    return {'slot': slot, 'path': os.path.abspath(path) if path is not None else None,
            'readonly': bool(disk.readonly), 'size': disk.size, 'mtime_ns': mtime,
            'digest': digest}


def _readable_msrs(m, vcpu):
    """The MSRs of KVM's saved list that this vCPU reads (probed once per
    machine: a host may list one that a mode cannot give)."""
    cached = getattr(m, '_snapshot_msrs', None)
    if cached is None:
        cached = []
        for index in m.kvm.msr_index_list():
            try:
                vcpu.get_msrs([index])
            except KvmError:
                continue
            cached.append(index)
        m._snapshot_msrs = cached
    return cached


def _save_vcpu(m, vcpu):
    if vcpu.io_pending:
        vcpu.complete_io()
    d = {'regs': to_plain(vcpu.get_regs()), 'sregs': to_plain(vcpu.get_sregs()),
         'msrs': sorted([i, v] for i, v in vcpu.get_msrs(_readable_msrs(m, vcpu)).items()),
         'vcpu_events': to_plain(vcpu.get_vcpu_events()),
         'debugregs': to_plain(vcpu.get_debugregs()),
         'cpuid': [to_plain(e) for e in getattr(vcpu, 'cpuid', None) or vcpu.get_cpuid2()]}
    if m.kvm.check_extension(Cap.XSAVE):
        d['xsave'] = base64.b64encode(vcpu.get_xsave2() if m.vm.check_extension(Cap.XSAVE2)
                                      else bytes(vcpu.get_xsave())).decode('ascii')
    else:
        d['fpu'] = to_plain(vcpu.get_fpu())
    if m.kvm.check_extension(Cap.XCRS):
        d['xcrs'] = to_plain(vcpu.get_xcrs())
    if m.mode != 'user':
        d['lapic'] = to_plain(vcpu.get_lapic())
        d['mp_state'] = vcpu.get_mp_state()
    return d


def _cpu_state(m):
    """Everything but memory, as plain data (the vCPUs must be paused)."""
    state = {'vcpus': [_save_vcpu(m, v) for v in m.vm.vcpus],
             'clock': m.vm.get_clock().clock,
             'board': {'pending_input': base64.b64encode(m._pending_input).decode('ascii'),
                       'user_halted': bool(m._user_halted),
                       'woken': sorted([i, rip] for i, rip in m._woken.items())}}
    with m.vm.lock:
        m.quiesce_io()              # virtio notifications KVM signalled are served first
        m.vm.drain_coalesced()      # THR writes KVM buffered belong to the UART's past
        state['devices'] = {name: dev.state() for name, dev in m.devices.items()}
        if m.mode == 'kernel':
            state['irqchip'] = [to_plain(getattr(m.vm.get_irqchip(cid).chip, kind))
                                for cid, _, kind in _CHIPS]
            state['pit2'] = to_plain(m.vm.get_pit2())
    # a JSON round trip now: a device whose state is not plain data fails here, not on restore
    return json.loads(json.dumps(state))


# -- putting state back ---------------------------------------------------

def _check_cpuid(m, vcpu, saved, where):
    """The saved CPUID's feature bits must be ones this host's KVM offers
    (KVM_GET_SUPPORTED_CPUID, or the table this machine gave the vCPU, which
    KVM took: --cpu-vendor mirrors some bits between leaves)."""
    offered = [{(e.function, e.index): e for e in entries}
               for entries in (m.kvm.supported_cpuid(), vcpu.cpuid or [])]
    mine = {(e.function, e.index): e for e in saved}
    for leaf, sub, reg in _FEATURE_REGS:
        e = mine.get((leaf, sub))
        if e is None:
            continue
        have = 0
        for table in offered:
            h = table.get((leaf, sub))
            have |= getattr(h, reg) if h is not None else 0
        missing = getattr(e, reg) & ~have
        if missing:
            raise SnapshotError(f'{where}: CPUID leaf {leaf:#x}.{sub} {reg} has features '
                                f'{missing:#x} that this host\'s KVM cannot give')


def _load_vcpu(m, vcpu, d, fresh):
    where = f'vCPU {vcpu.index}'
    if not isinstance(d, dict):
        raise SnapshotError(f'{where}: not an object')
    need = {'regs', 'sregs', 'msrs', 'vcpu_events', 'debugregs', 'cpuid'}
    need |= {'xsave'} if m.kvm.check_extension(Cap.XSAVE) else {'fpu'}
    need |= {'xcrs'} if m.kvm.check_extension(Cap.XCRS) else set()
    need |= {'lapic', 'mp_state'} if m.mode != 'user' else set()
    if set(d) != need:
        raise SnapshotError(f'{where}: has {", ".join(sorted(d))}; this host and mode need '
                            f'{", ".join(sorted(need))}')
    if not isinstance(d['cpuid'], list) or not 0 < len(d['cpuid']) <= 256:
        raise SnapshotError(f'{where}.cpuid: expected a list of 1 to 256 entries')
    cpuid = [from_plain(kvm_cpuid_entry2, e, f'{where}.cpuid[{i}]') for i, e in enumerate(d['cpuid'])]
    regs = from_plain(kvm_regs, d['regs'], f'{where}.regs')
    sregs = from_plain(kvm_sregs, d['sregs'], f'{where}.sregs')
    events = from_plain(kvm_vcpu_events, d['vcpu_events'], f'{where}.vcpu_events')
    dregs = from_plain(kvm_debugregs, d['debugregs'], f'{where}.debugregs')
    if not isinstance(d['msrs'], list) or not all(isinstance(p, list) and len(p) == 2 for p in d['msrs']):
        raise SnapshotError(f'{where}.msrs: expected a list of [index, value] pairs')
    msrs = {_int(i, ctypes.c_uint32, f'{where}.msrs'): _int(v, ctypes.c_uint64, f'{where}.msrs[{i}]')
            for i, v in d['msrs']}
    known = set(m.kvm.msr_index_list())
    foreign = sorted(set(msrs) - known)
    if foreign:
        raise SnapshotError(f'{where}: MSR {foreign[0]:#x} is not one this host\'s KVM saves')
    xsave = fpu = xcrs = lapic = None
    if 'xsave' in d:
        size = max(m.vm.check_extension(Cap.XSAVE2), 4096)
        xsave = _b64(d['xsave'], None, f'{where}.xsave')
        if len(xsave) > size or len(xsave) < 4096:
            raise SnapshotError(f'{where}: an XSAVE area of {len(xsave)} bytes; this host\'s '
                                f'KVM takes 4096 to {size}')
    else:
        fpu = from_plain(kvm_fpu, d['fpu'], f'{where}.fpu')
    if 'xcrs' in d:
        xcrs = from_plain(kvm_xcrs, d['xcrs'], f'{where}.xcrs')
        if xcrs.nr_xcrs > len(xcrs.xcrs):
            raise SnapshotError(f'{where}.xcrs: {xcrs.nr_xcrs} XCRs, at most {len(xcrs.xcrs)}')
    if 'lapic' in d:
        lapic = from_plain(kvm_lapic_state, d['lapic'], f'{where}.lapic')
        mp_state = _int(d['mp_state'], ctypes.c_uint32, f'{where}.mp_state')
        if mp_state > 8:
            raise SnapshotError(f'{where}.mp_state: {mp_state} is no KVM_MP_STATE_*')
    if fresh:
        _check_cpuid(m, vcpu, cpuid, where)
    return lambda: _put_vcpu(m, vcpu, where, fresh, cpuid, regs, sregs, xsave, fpu, xcrs,
                             msrs, events, lapic, d.get('mp_state'), dregs)


def _put_vcpu(m, vcpu, where, fresh, cpuid, regs, sregs, xsave, fpu, xcrs, msrs, events,
              lapic, mp_state, dregs):
    try:
        if vcpu.io_pending:
            vcpu.complete_io()
        if fresh:
            vcpu.set_cpuid2(cpuid)          # what the guest saw, checked against this host
        vcpu.set_regs(regs)
        if xsave is not None:
            vcpu.set_xsave(xsave)
        else:
            vcpu.set_fpu(fpu)
        if xcrs is not None:
            vcpu.set_xcrs(xcrs)
        vcpu.set_sregs(sregs)
        _set_msrs(vcpu, msrs, where)
        events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR
        vcpu.set_vcpu_events(events)
        if lapic is not None:
            vcpu.set_mp_state(mp_state)
            vcpu.set_lapic(lapic)
            if MSR_IA32_TSC_DEADLINE in msrs:    # KVM_SET_LAPIC stops the deadline timer
                vcpu.set_msrs({MSR_IA32_TSC_DEADLINE: msrs[MSR_IA32_TSC_DEADLINE]})
        vcpu.set_debugregs(dregs)
    except KvmError as e:
        raise SnapshotError(f'{where}: this host\'s KVM refused the saved state: {e}') from None


def _set_msrs(vcpu, msrs, where):
    try:
        vcpu.set_msrs(msrs)
        return
    except KvmError:
        pass
    for index, value in msrs.items():       # which one: one at a time
        try:
            vcpu.set_msrs({index: value})
        except KvmError:
            try:
                same = vcpu.get_msrs([index])[index] == value
            except KvmError:
                same = False
            if not same:    # a value it already has needs no write (KVM refuses some in a mode)
                raise SnapshotError(f'{where}: this host\'s KVM refuses MSR {index:#x} = '
                                    f'{value:#x}') from None


def _check_keys(d, keys, where):
    if not isinstance(d, dict) or set(d) != set(keys):
        raise SnapshotError(f'{where}: expected the keys {", ".join(sorted(keys))}')


def _apply(m, state, fresh):
    """Put CPU, board and device state back into ``m`` (paused or not
    running). Everything is checked before the first thing is set."""
    _prepare(m, state, fresh)()


def _prepare(m, state, fresh):
    """Check ``state`` for ``m`` and return what puts it back: a function
    that only makes the ioctls and rebuilds the devices (a checkpoint keeps
    it, so a reset pays no checking)."""
    keys = {'vcpus', 'clock', 'board', 'devices'} | ({'irqchip', 'pit2'} if m.mode == 'kernel' else set())
    _check_keys(state, keys, 'snapshot state')
    if not isinstance(state['vcpus'], list) or len(state['vcpus']) != len(m.vm.vcpus):
        raise SnapshotError(f'snapshot state: {len(m.vm.vcpus)} vCPUs expected')
    puts = [_load_vcpu(m, v, d, fresh) for v, d in zip(m.vm.vcpus, state['vcpus'])]
    clock = _int(state['clock'], ctypes.c_uint64, 'clock')
    board = state['board']
    _check_keys(board, ('pending_input', 'user_halted', 'woken'), 'board')
    pending = _b64(board['pending_input'], None, 'board.pending_input')
    if type(board['user_halted']) is not bool or board['user_halted'] and m.mode != 'user':
        raise SnapshotError('board.user_halted: a boolean, true only in user mode')
    woken = board['woken']
    if not isinstance(woken, list) or not all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and 0 <= p[0] < m.cpus
            for p in woken):
        raise SnapshotError('board.woken: expected [vCPU, RIP] pairs')
    woken = {i: _int(rip, ctypes.c_uint64, 'board.woken') for i, rip in woken}
    chips = pit = None
    if m.mode == 'kernel':
        if not isinstance(state['irqchip'], list) or len(state['irqchip']) != len(_CHIPS):
            raise SnapshotError(f'irqchip: expected {len(_CHIPS)} chips')
        chips = []
        for (cid, ctype, kind), data in zip(_CHIPS, state['irqchip']):
            chip = kvm_irqchip(chip_id=cid)
            setattr(chip.chip, kind, from_plain(ctype, data, f'irqchip[{cid}]'))
            chips.append(chip)
        pit = from_plain(kvm_pit_state2, state['pit2'], 'pit2')
    devices = state['devices']
    expected = [s.name for s in m.platform.devices if m.mode in s.modes]
    if not isinstance(devices, dict) or sorted(devices) != sorted(expected):
        raise SnapshotError(f'devices: expected the states of {", ".join(expected)}')
    return lambda: _put(m, puts, clock, chips, pit, devices, pending, board['user_halted'], woken)


def _put(m, puts, clock, chips, pit, devices, pending, user_halted, woken):
    try:
        for put in puts:
            put()
        m.vm.set_clock(clock)
        if chips is not None:
            for chip in chips:
                m.vm.set_irqchip(chip)
            m.vm.set_pit2(pit)
    except KvmError as e:
        raise SnapshotError(f'this host\'s KVM refused the saved state: {e}') from None
    try:
        m._rewire_devices(devices)
    except SnapshotError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError) as e:
        raise SnapshotError(f'a device state is refused: {type(e).__name__}: {e}') from None
    m._pending_input, m._user_halted, m._woken = pending, user_halted, dict(woken)
    m.result = None


# -- memory ---------------------------------------------------------------

def _nonzero_runs(view):
    """[(first_page, pages)] of the pages of ``view`` that are not all zero."""
    runs, start, n = [], None, len(view) // PAGE_SIZE
    zero_chunk = bytes(SCAN_CHUNK)
    for c in range(0, len(view), SCAN_CHUNK):
        chunk = view[c:c + SCAN_CHUNK]
        if chunk.tobytes() == zero_chunk[:len(chunk)]:
            if start is not None:
                runs.append((start, c // PAGE_SIZE - start))
                start = None
            continue
        raw = chunk.tobytes()
        for off in range(0, len(raw), PAGE_SIZE):
            page = (c + off) // PAGE_SIZE
            if raw[off:off + PAGE_SIZE] == ZERO_PAGE:
                if start is not None:
                    runs.append((start, page - start))
                    start = None
            elif start is None:
                start = page
    if start is not None:
        runs.append((start, n - start))
    return runs


# -- in-memory checkpoints ------------------------------------------------

class Checkpoint:
    """A machine's state held in memory: its RAM copied once, and armed
    dirty logging so :func:`reset_to` copies back only what the guest
    wrote since (pages kvmlite or a library user wrote through Vm.write or
    a view are not in KVM's log: take a new checkpoint after such writes)."""

    def __init__(self, machine, state, memory):
        self.machine, self.state, self.memory = machine, state, memory
        self.apply = _prepare(machine, state, fresh=False)

    def __repr__(self):
        return f'<Checkpoint of {len(self.memory)} slots, {sum(len(b) for b in self.memory.values()) >> 20} MiB>'


def _arm(m, cp):
    for slot in m.vm.slots:
        if not slot.readonly:
            m.vm.set_dirty_log(slot, True)
            m.vm.get_dirty_log(slot)          # starts clean: the log of what follows
    m._armed_checkpoint = cp


def checkpoint(m):
    with m.paused():
        state = _cpu_state(m)
        memory = {slot.gpa: bytes(slot.view) for slot in m.vm.slots if not slot.readonly}
        cp = Checkpoint(m, state, memory)
        _arm(m, cp)
    return cp


def reset_to(m, cp):
    """Put ``m`` back to ``cp``: returns how many pages were copied back."""
    if not isinstance(cp, Checkpoint) or cp.machine is not m:
        raise KvmliteError('reset_to takes a checkpoint of this machine (Machine.checkpoint())')
    copied = 0
    with m.paused():
        slots = [s for s in m.vm.slots if not s.readonly]
        if getattr(m, '_armed_checkpoint', None) is cp:
            for slot in slots:
                saved, view = cp.memory[slot.gpa], slot.view
                for gpa in m.vm.get_dirty_log(slot):
                    off = gpa - slot.gpa
                    view[off:off + PAGE_SIZE] = saved[off:off + PAGE_SIZE]
                    copied += 1
        else:                                   # another checkpoint is armed: copy it all
            for slot in slots:
                slot.view[:] = cp.memory[slot.gpa]
                copied += slot.size // PAGE_SIZE
            _arm(m, cp)
        cp.apply()
    return copied


# -- files ----------------------------------------------------------------

def write_snapshot(m, target):
    """Write ``m`` to ``target`` (a path: atomically, through a temporary
    file in its directory and a rename; or a binary file object)."""
    if isinstance(target, (str, bytes, os.PathLike)):
        path = os.fspath(target)
        directory = os.path.dirname(os.path.abspath(path))
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.',
                                       suffix='.tmp')
        except OSError as e:
            raise SnapshotError(f'cannot write snapshot {path!r}: {e.strerror}') from None
        try:
            with open(fd, 'wb') as f:
                _write(m, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise SnapshotError(f'cannot write snapshot {path!r}: {e.strerror or e}') from None
            raise
        return path
    _write(m, target)
    return target


def _write(m, f):
    with m.paused():
        state = _cpu_state(m)
        runs, data = [], []
        for slot in m.vm.slots:
            if slot.readonly:
                continue
            for first, pages in _nonzero_runs(slot.view):
                view = slot.view[first * PAGE_SIZE:(first + pages) * PAGE_SIZE]
                runs.append([slot.gpa + first * PAGE_SIZE, pages, 0, zlib.crc32(view)])
                data.append(view)
        # the offsets depend on the metadata's length, which depends on the offsets' digits:
        # settle them with a generous fixed width
        meta = {'config': _config(m), 'state': state, 'memory': runs}
        for _ in range(3):
            blob = json.dumps(meta, separators=(',', ':'), sort_keys=True).encode()
            data_off = _align(META_OFFSET + len(blob))
            off, changed = data_off, False
            for run in runs:
                if run[2] != off:
                    run[2], changed = off, True
                off += run[1] * PAGE_SIZE
            if not changed:
                break
        file_len = off
        head = HEADER.pack(MAGIC, VERSION, HEADER.size, META_OFFSET, len(blob), data_off, file_len,
                           zlib.crc32(blob), 0)
        head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
        f.write(head.ljust(META_OFFSET, b'\0'))
        f.write(blob)
        f.write(bytes(data_off - META_OFFSET - len(blob)))
        for view in data:
            f.write(view)


def _align(n):
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


class SnapshotFile:
    """A snapshot file whose header and metadata were read and checked:
    ``config`` says what machine it needs."""

    def __init__(self, f, name, meta, size):
        self.file, self.name, self.size = f, name, size
        self.config, self.state, self.memory = meta['config'], meta['state'], meta['memory']

    def close(self):
        self.file.close()


def open_snapshot(source):
    """Read and check a snapshot's header and metadata (not its pages)."""
    if isinstance(source, SnapshotFile):
        return source
    if isinstance(source, (str, bytes, os.PathLike)):
        name = os.fspath(source)
        try:
            f = open(name, 'rb')
        except OSError as e:
            raise SnapshotError(f'cannot read snapshot {name!r}: {e.strerror}') from None
    else:
        f, name = source, getattr(source, 'name', 'snapshot')
    try:
        return _open(f, name)
    except BaseException:
        if f is not source:
            f.close()
        raise


def _open(f, name):
    what = f'snapshot {name!r}'
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        head = f.read(HEADER.size)
    except OSError as e:
        raise SnapshotError(f'cannot read {what}: {e.strerror}') from None
    if head[:len(MAGIC)] != MAGIC[:len(head)] or len(head) < len(MAGIC):
        raise SnapshotError(f'{what} is not a kvmlite snapshot (no {MAGIC.decode()} magic)')
    if len(head) < HEADER.size:
        raise SnapshotError(f'{what} is truncated: {size} bytes, not even a header')
    magic, version, hsize, meta_off, meta_len, data_off, file_len, meta_crc, head_crc = HEADER.unpack(head)
    if version > VERSION:
        raise SnapshotError(f'{what} has format version {version}, newer than the {VERSION} '
                            f'this kvmlite reads: restore it with a newer kvmlite')
    if version == 1:
        raise SnapshotError(f'{what} has format version 1, which did not record the --disk '
                            f'images: take the snapshot again with this kvmlite')
    if version != VERSION:
        raise SnapshotError(f'{what} has format version {version}, which no kvmlite wrote')
    if zlib.crc32(head[:-4]) != head_crc:
        raise SnapshotError(f'{what} is corrupt: its header checksum does not match')
    if hsize != HEADER.size or meta_off != META_OFFSET or not 0 < meta_len <= META_MAX \
            or data_off != _align(meta_off + meta_len) or file_len < data_off:
        raise SnapshotError(f'{what} is corrupt: its header\'s offsets are inconsistent')
    if size < file_len:
        raise SnapshotError(f'{what} is truncated: {size} of its {file_len} bytes')
    if size > file_len:
        raise SnapshotError(f'{what} has {size - file_len} bytes past its end: not a snapshot as written')
    f.seek(meta_off)
    blob = f.read(meta_len)
    if len(blob) != meta_len or zlib.crc32(blob) != meta_crc:
        raise SnapshotError(f'{what} is corrupt: its metadata checksum does not match')
    try:
        meta = json.loads(blob.decode('utf-8'), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise SnapshotError(f'{what} is corrupt: its metadata is not JSON ({e})') from None
    _check_keys(meta, ('config', 'state', 'memory'), f'{what} metadata')
    _check_config(meta['config'], what)
    _check_runs(meta['memory'], meta['config'], data_off, file_len, what)
    return SnapshotFile(f, name, meta, size)


def _no_constant(name):
    raise ValueError(f'{name} is not a number a snapshot holds')


def _check_config(c, what):
    from .pc import IRQCHIP_MODES
    _check_keys(c, ('mem_size', 'cpus', 'irqchip', 'cpuid_policy', 'cpu_vendor', 'console',
                    'cmdline', 'platform', 'ram', 'disks', 'rng'), f'{what} configuration')
    for key in ('mem_size', 'cpus'):
        if type(c[key]) is not int:
            raise SnapshotError(f'{what}: {key} is not an integer')
    if not (1 << 20 <= c['mem_size'] <= 8 << 40 and c['mem_size'] % PAGE_SIZE == 0):
        raise SnapshotError(f'{what}: memory size {c["mem_size"]} is not 1 MiB to 8 TiB in pages')
    if not 1 <= c['cpus'] <= 1024:
        raise SnapshotError(f'{what}: {c["cpus"]} vCPUs')
    if c['irqchip'] not in IRQCHIP_MODES or c['cpuid_policy'] not in ('auto', 'safe', 'host'):
        raise SnapshotError(f'{what}: irqchip mode {c["irqchip"]!r} or CPUID policy '
                            f'{c["cpuid_policy"]!r} unknown')
    if c['cpu_vendor'] not in ('host', 'intel', 'amd'):
        raise SnapshotError(f'{what}: CPU vendor {c["cpu_vendor"]!r} unknown')
    if c['console'] is not None and not isinstance(c['console'], str):
        raise SnapshotError(f'{what}: the console is not a string')
    _b64(c['cmdline'], None, f'{what}: cmdline')
    _check_keys(c['platform'], ('devices', 'digest'), f'{what} platform')
    ram = c['ram']
    if not isinstance(ram, list) or not all(isinstance(r, list) and len(r) == 2 and
                                            all(type(x) is int for x in r) for r in ram):
        raise SnapshotError(f'{what}: RAM is not a list of [address, size]')
    if type(c['rng']) is not bool:
        raise SnapshotError(f'{what}: rng is not a boolean')
    disks = c['disks']
    if not isinstance(disks, list) or len(disks) > 64:
        raise SnapshotError(f'{what}: the disks are not a list')
    for i, d in enumerate(disks):
        where = f'{what}: disk {i}'
        _check_keys(d, ('slot', 'path', 'readonly', 'size', 'mtime_ns', 'digest'), where)
        if not isinstance(d['slot'], str) or not (d['path'] is None or isinstance(d['path'], str)
                                                   and d['path'] and '\0' not in d['path']):
            raise SnapshotError(f'{where}: its slot or path is not a string')
        if type(d['readonly']) is not bool or type(d['size']) is not int or not 0 <= d['size'] < 1 << 63:
            raise SnapshotError(f'{where}: its read-only flag or size is not valid')
        if not (d['mtime_ns'] is None or type(d['mtime_ns']) is int) or not isinstance(d['digest'], str):
            raise SnapshotError(f'{where}: its identity (mtime_ns, digest) is not valid')


def _check_runs(runs, config, data_off, file_len, what):
    ram = [(a, a + s) for a, s in config['ram']]
    if not isinstance(runs, list):
        raise SnapshotError(f'{what}: the memory runs are not a list')
    last_gpa = last_off = -1
    for i, run in enumerate(runs):
        if not (isinstance(run, list) and len(run) == 4 and all(type(x) is int for x in run)):
            raise SnapshotError(f'{what}: memory run {i} is not [address, pages, offset, crc]')
        gpa, pages, off, crc = run
        end = gpa + pages * PAGE_SIZE
        if gpa % PAGE_SIZE or off % PAGE_SIZE or pages < 1 or not 0 <= crc < 1 << 32:
            raise SnapshotError(f'{what}: memory run {i} is not page-aligned')
        if not any(lo <= gpa and end <= hi for lo, hi in ram):
            raise SnapshotError(f'{what}: memory run {i} at {gpa:#x}-{end - 1:#x} is outside the '
                                f'guest\'s RAM')
        if gpa <= last_gpa or off < max(data_off, last_off) or off + pages * PAGE_SIZE > file_len:
            raise SnapshotError(f'{what}: memory run {i} overlaps another or lies outside the file')
        last_gpa, last_off = end - 1, off + pages * PAGE_SIZE


def restore(cls, source, console=None, kvm=None, clock=None, platform=None, disks=None, **kw):
    """A new machine of class ``cls`` from a snapshot (a path, a binary
    file or an :class:`SnapshotFile`), paused where the snapshot was taken.
    Its disks are the images the snapshot names, opened again (read-only as
    they were), or ``disks`` (opened DiskImage/BytesDisk, one per recorded
    disk, each of the recorded size) in their place. ``restore_notes`` on the
    machine lists each disk that changed since the snapshot."""
    snap = open_snapshot(source)
    own = snap is not source and not isinstance(source, SnapshotFile)
    try:
        c = snap.config
        from .layout import PC
        platform = platform or PC
        if c['platform']['digest'] != platform_digest(platform):
            names = ', '.join(n for n, _ in c['platform']['devices'])
            raise SnapshotError(f'snapshot {snap.name!r} was taken on another platform (devices '
                                f'{names}): restore it with the platform it was taken on')
        if [list(r) for r in platform.ram_regions(c['mem_size'])] != c['ram']:
            raise SnapshotError(f'snapshot {snap.name!r}: its RAM layout is not the platform\'s')
        opened, notes = _reopen_disks(snap, platform, disks)
        args = dict(mem_size=c['mem_size'], cpus=c['cpus'], irqchip=c['irqchip'], console=console,
                    cpuid_policy=c['cpuid_policy'], cpu_vendor=c['cpu_vendor'], kvm=kvm, platform=platform,
                    cmdline=base64.b64decode(c['cmdline']), disks=opened, rng=c['rng'], **kw)
        if clock is not None:
            args['clock'] = clock
        try:
            m = cls(**args)
        except BaseException as e:
            for disk in opened:
                disk.close()
            if isinstance(e, ValueError):
                raise SnapshotError(f'snapshot {snap.name!r}: {e}') from None
            raise
        m.restore_notes = notes
        try:
            m.console_spec = c['console']
            _read_memory(m, snap)
            _apply(m, snap.state, fresh=True)
        except BaseException:
            m.close()
            raise
        return m
    finally:
        if own:
            snap.close()


def _reopen_disks(snap, platform, given):
    """The disks of the snapshot's configuration, opened again (or
    ``given`` in their place) and checked: a missing image, or one of another
    size, is refused. Returns (disks, notes): a note per disk whose identity
    (mtime, first and last block) changed since the snapshot, which a guest
    that writes its disk after the snapshot point makes happen."""
    from devices.virtio_blk import DiskError, DiskImage
    records, what = snap.config['disks'], f'snapshot {snap.name!r}'
    slots = [s.name for s in platform.devices if s.part == 'virtio_blk.VirtioBlk']
    if [d['slot'] for d in records] != slots[:len(records)]:
        raise SnapshotError(f'{what}: its disks sit in slots {", ".join(d["slot"] for d in records)}, '
                            f'not the platform\'s {", ".join(slots[:len(records)])}')
    if given is not None and len(given) != len(records):
        raise SnapshotError(f'{what} has {len(records)} disks: give as many, not {len(given)}')
    opened, notes = [], []
    try:
        for i, d in enumerate(records):
            name = f'{what}: disk {d["slot"]}'
            if given is not None:
                disk = given[i]
                opened.append(disk)
                if bool(disk.readonly) != d['readonly']:
                    raise SnapshotError(f'{name} was {"read-only" if d["readonly"] else "read-write"}: '
                                        f'give it so again')
            elif d['path'] is None:
                raise SnapshotError(f'{name} was not an image file: pass the disks to '
                                    f'Machine.restore(disks=...)')
            else:
                try:
                    disk = DiskImage(d['path'], readonly=d['readonly'])
                except DiskError as e:
                    raise SnapshotError(f'{name}: {e}') from None
                opened.append(disk)
            if disk.size != d['size']:
                raise SnapshotError(f'{name} ({getattr(disk, "path", "given")!r}) is {disk.size} bytes, '
                                    f'{d["size"]} when the snapshot was taken: give back that image')
            mtime, digest = _disk_identity(disk)
            if digest != d['digest'] or d['mtime_ns'] is not None and mtime != d['mtime_ns']:
                notes.append(f'disk {d["slot"]} ({getattr(disk, "path", "given")}) changed since the '
                             f'snapshot: the guest sees it as it is now')
    except BaseException:
        for disk in opened[:len(opened) if given is None else 0]:
            disk.close()
        raise
    return opened, notes


def _read_memory(m, snap):
    f = snap.file
    for i, (gpa, pages, off, crc) in enumerate(snap.memory):
        view = m.vm.view(gpa, pages * PAGE_SIZE)
        f.seek(off)
        got = f.readinto(view)
        if got != len(view):
            raise SnapshotError(f'snapshot {snap.name!r} is truncated in memory run {i}')
        if zlib.crc32(view) != crc:
            raise SnapshotError(f'snapshot {snap.name!r} is corrupt: memory run {i} at {gpa:#x} '
                                'does not match its checksum')
