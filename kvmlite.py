#!/usr/bin/env python3
"""kvmlite: drive Linux KVM (/dev/kvm) from pure Python, standard library only.

This module is the KVM layer, mirroring the kernel's KVM API
(Documentation/virt/kvm/api.rst, the source of every number and struct here),
and the snippet runner:

* the ABI: ioctl numbers computed from the ctypes struct each ioctl carries,
  the structs of ``<linux/kvm.h>`` under their kernel names, ``kvm_run`` with
  its exit union, enums of exit reasons and capabilities;
* the objects: :class:`Kvm` (the system, ``/dev/kvm``), :class:`Vm` (memory
  slots, vCPUs, irqchip, statistics) and :class:`Vcpu` (registers, run);
  ``Vcpu.run()`` returns a typed exit value (:class:`IoOut`, :class:`Hlt`...);
* port-I/O and MMIO buses that hand exits to devices, CPU-mode helpers
  (Intel SDM Vol. 3) and the CPUID policy;
* :class:`Snippet`: a few bytes of machine code run on the real CPU.

The PC board (``Machine``) lives in ``tools/pc.py`` and the command line in
``tools/cli.py``; ``kvmlite.Machine`` and ``kvmlite.main`` reach them lazily,
so the KVM layer imports neither.

Every failed ioctl raises :class:`KvmError` (an ``OSError``) naming the ioctl
and the errno.
"""

if __name__ == '__main__':
    # python3 kvmlite.py / python3 -m kvmlite: run the one copy of this module
    # that everything else imports, not a second one named __main__
    import sys
    import kvmlite
    sys.exit(kvmlite.main())

import ctypes
import enum
import errno
import fcntl
import mmap
import os
import signal
import struct
import sys
import threading
import _thread
import time
from collections import Counter, namedtuple

__all__ = [
    'Kvm', 'Vm', 'Vcpu', 'KvmError', 'KvmliteError', 'GuestError',
    'DeviceError', 'ExitReason', 'Cap', 'MpState', 'Translation', 'Device', 'PioBus', 'MmioBus',
    'Exit', 'IoOut', 'IoIn', 'MmioRead', 'MmioWrite', 'Hlt', 'Shutdown',
    'FailEntry', 'InternalError', 'SystemEvent', 'Debug', 'Hypercall',
    'IrqWindowOpen', 'Interrupted', 'IoapicEoi', 'RdMsr', 'WrMsr',
    'ExceptionExit', 'UnknownExit',
]

# ---------------------------------------------------------------------------
# ioctl numbers (include/uapi/asm-generic/ioctl.h)
# ---------------------------------------------------------------------------
_IOC_NRBITS, _IOC_TYPEBITS, _IOC_SIZEBITS = 8, 8, 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2


def _IOC(direction, type_, nr, size):
    return (direction << _IOC_DIRSHIFT) | (type_ << _IOC_TYPESHIFT) | \
        (nr << _IOC_NRSHIFT) | (size << _IOC_SIZESHIFT)


def _IO(type_, nr):
    return _IOC(_IOC_NONE, type_, nr, 0)


def _IOR(type_, nr, ctype):
    return _IOC(_IOC_READ, type_, nr, ctypes.sizeof(ctype))


def _IOW(type_, nr, ctype):
    return _IOC(_IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


def _IOWR(type_, nr, ctype):
    return _IOC(_IOC_READ | _IOC_WRITE, type_, nr, ctypes.sizeof(ctype))


KVMIO = 0xAE
KVM_API_VERSION = 12

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s16, s32, s64 = ctypes.c_int16, ctypes.c_int32, ctypes.c_int64


def _sized(factory):
    """A struct with a flexible array, made once per length: a ctypes class
    costs ~0.1 ms to make (the ioctl numbers below take 13 at import)."""
    made = {}

    def sized(n):
        t = made.get(n)
        if t is None:
            t = made[n] = factory(n)
        return t
    sized.__name__, sized.__qualname__, sized.__doc__ = \
        factory.__name__, factory.__qualname__, factory.__doc__
    return sized


class _Struct(ctypes.Structure):
    """A kernel struct: fields by name, a readable repr."""

    def __repr__(self):
        parts = []
        for f in self._fields_:
            v = getattr(self, f[0])
            if isinstance(v, int):
                v = hex(v)
            elif isinstance(v, ctypes.Array):
                v = '[...]'
            parts.append(f'{f[0]}={v}')
        return f'{type(self).__name__}({", ".join(parts)})'


class _Union(ctypes.Union):
    pass


# --- arch/x86/include/uapi/asm/kvm.h ---------------------------------------

class kvm_regs(_Struct):
    _fields_ = [(n, u64) for n in (
        'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
        'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15',
        'rip', 'rflags')]


class kvm_segment(_Struct):
    _fields_ = [
        ('base', u64),
        ('limit', u32),
        ('selector', u16),
        ('type', u8),
        ('present', u8),
        ('dpl', u8),
        ('db', u8),
        ('s', u8),
        ('l', u8),
        ('g', u8),
        ('avl', u8),
        ('unusable', u8),
        ('padding', u8),
    ]


class kvm_dtable(_Struct):
    _fields_ = [
        ('base', u64),
        ('limit', u16),
        ('padding', u16 * 3),
    ]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(_Struct):
    _fields_ = [(n, kvm_segment) for n in
                ('cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt')] + [
        ('gdt', kvm_dtable),
        ('idt', kvm_dtable),
        ('cr0', u64),
        ('cr2', u64),
        ('cr3', u64),
        ('cr4', u64),
        ('cr8', u64),
        ('efer', u64),
        ('apic_base', u64),
        ('interrupt_bitmap', u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_fpu(_Struct):
    _fields_ = [
        ('fpr', (u8 * 16) * 8),
        ('fcw', u16),
        ('fsw', u16),
        ('ftwx', u8),
        ('pad1', u8),
        ('last_opcode', u16),
        ('last_ip', u64),
        ('last_dp', u64),
        ('xmm', (u8 * 16) * 16),
        ('mxcsr', u32),
        ('pad2', u32),
    ]


class kvm_msr_entry(_Struct):
    _fields_ = [
        ('index', u32),
        ('reserved', u32),
        ('data', u64),
    ]


@_sized
def kvm_msrs(n):
    """struct kvm_msrs with room for ``n`` entries (a flexible array)."""
    class kvm_msrs(_Struct):
        _fields_ = [('nmsrs', u32), ('pad', u32), ('entries', kvm_msr_entry * n)]
    return kvm_msrs


@_sized
def kvm_msr_list(n):
    class kvm_msr_list(_Struct):
        _fields_ = [('nmsrs', u32), ('indices', u32 * n)]
    return kvm_msr_list


class kvm_msr_filter_range(_Struct):
    _fields_ = [
        ('flags', u32),
        ('nmsrs', u32),
        ('base', u32),
        ('bitmap', ctypes.c_void_p),
    ]


KVM_MSR_FILTER_MAX_RANGES = 16
KVM_MSR_FILTER_READ = 1 << 0
KVM_MSR_FILTER_WRITE = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW = 0
KVM_MSR_FILTER_DEFAULT_DENY = 1


class kvm_msr_filter(_Struct):
    _fields_ = [
        ('flags', u32),
        ('ranges', kvm_msr_filter_range * KVM_MSR_FILTER_MAX_RANGES),
    ]


class kvm_cpuid_entry2(_Struct):
    _fields_ = [
        ('function', u32),
        ('index', u32),
        ('flags', u32),
        ('eax', u32),
        ('ebx', u32),
        ('ecx', u32),
        ('edx', u32),
        ('padding', u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


@_sized
def kvm_cpuid2(n):
    """struct kvm_cpuid2 with room for ``n`` entries."""
    class kvm_cpuid2(_Struct):
        _fields_ = [('nent', u32), ('padding', u32), ('entries', kvm_cpuid_entry2 * n)]
    return kvm_cpuid2


class kvm_pic_state(_Struct):
    _fields_ = [(n, u8) for n in (
        'last_irr', 'irr', 'imr', 'isr', 'priority_add', 'irq_base',
        'read_reg_select', 'poll', 'special_mask', 'init_state', 'auto_eoi',
        'rotate_on_auto_eoi', 'special_fully_nested_mode', 'init4', 'elcr',
        'elcr_mask')]


KVM_IOAPIC_NUM_PINS = 24
KVM_IOAPIC_BASE = 0xFEC00000   # where KVM's in-kernel IOAPIC decodes (arch/x86/kvm/ioapic.h)


class kvm_ioapic_state(_Struct):
    _fields_ = [
        ('base_address', u64),
        ('ioregsel', u32),
        ('id', u32),
        ('irr', u32),
        ('pad', u32),
        ('redirtbl', u64 * KVM_IOAPIC_NUM_PINS),  # union { bits; fields }
    ]


KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2


class _kvm_irqchip_u(_Union):
    _fields_ = [
        ('dummy', u8 * 512),
        ('pic', kvm_pic_state),
        ('ioapic', kvm_ioapic_state),
    ]


class kvm_irqchip(_Struct):
    _fields_ = [
        ('chip_id', u32),
        ('pad', u32),
        ('chip', _kvm_irqchip_u),
    ]


class kvm_pit_channel_state(_Struct):
    _fields_ = [
        ('count', u32),
        ('latched_count', u16),
        ('count_latched', u8),
        ('status_latched', u8),
        ('status', u8),
        ('read_state', u8),
        ('write_state', u8),
        ('write_latch', u8),
        ('rw_mode', u8),
        ('mode', u8),
        ('bcd', u8),
        ('gate', u8),
        ('count_load_time', s64),
    ]


class kvm_pit_state(_Struct):
    """KVM_GET/SET_PIT (the first PIT state; kvm_pit_state2 adds flags)."""
    _fields_ = [('channels', kvm_pit_channel_state * 3)]


KVM_PIT_FLAGS_HPET_LEGACY = 0x00000001
KVM_PIT_FLAGS_SPEAKER_DATA_ON = 0x00000002


class kvm_reinject_control(_Struct):
    _fields_ = [('pit_reinject', u8), ('reserved', u8 * 31)]


class kvm_pit_state2(_Struct):
    _fields_ = [
        ('channels', kvm_pit_channel_state * 3),
        ('flags', u32),
        ('reserved', u32 * 9),
    ]


class kvm_pit_config(_Struct):
    _fields_ = [
        ('flags', u32),
        ('pad', u32 * 15),
    ]


KVM_PIT_SPEAKER_DUMMY = 1


class kvm_debug_exit_arch(_Struct):
    _fields_ = [
        ('exception', u32),
        ('pad', u32),
        ('pc', u64),
        ('dr6', u64),
        ('dr7', u64),
    ]


class kvm_guest_debug_arch(_Struct):
    _fields_ = [('debugreg', u64 * 8)]


KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000


class kvm_guest_debug(_Struct):
    _fields_ = [
        ('control', u32),
        ('pad', u32),
        ('arch', kvm_guest_debug_arch),
    ]


class _vcpu_events_exception(_Struct):
    _fields_ = [('injected', u8), ('nr', u8), ('has_error_code', u8),
                ('pending', u8), ('error_code', u32)]


class _vcpu_events_interrupt(_Struct):
    _fields_ = [('injected', u8), ('nr', u8), ('soft', u8), ('shadow', u8)]


class _vcpu_events_nmi(_Struct):
    _fields_ = [('injected', u8), ('pending', u8), ('masked', u8), ('pad', u8)]


class _vcpu_events_smi(_Struct):
    _fields_ = [('smm', u8), ('pending', u8), ('smm_inside_nmi', u8),
                ('latched_init', u8)]


class kvm_vcpu_events(_Struct):
    _fields_ = [
        ('exception', _vcpu_events_exception),
        ('interrupt', _vcpu_events_interrupt),
        ('nmi', _vcpu_events_nmi),
        ('sipi_vector', u32),
        ('flags', u32),
        ('smi', _vcpu_events_smi),
        ('triple_fault_pending', u8),
        ('reserved', u8 * 26),
        ('exception_has_payload', u8),
        ('exception_payload', u64),
    ]


class kvm_debugregs(_Struct):
    _fields_ = [
        ('db', u64 * 4),
        ('dr6', u64),
        ('dr7', u64),
        ('flags', u64),
        ('reserved', u64 * 9),
    ]


class kvm_xsave(_Struct):
    _fields_ = [('region', u32 * 1024)]


KVM_MAX_XCRS = 16


class kvm_xcr(_Struct):
    _fields_ = [
        ('xcr', u32),
        ('reserved', u32),
        ('value', u64),
    ]


class kvm_xcrs(_Struct):
    _fields_ = [
        ('nr_xcrs', u32),
        ('flags', u32),
        ('xcrs', kvm_xcr * KVM_MAX_XCRS),
        ('padding', u64 * 16),
    ]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(_Struct):
    _fields_ = [('regs', u8 * KVM_APIC_REG_SIZE)]


class kvm_sregs2(_Struct):
    """KVM_GET/SET_SREGS2: kvm_sregs without the interrupt bitmap, with the
    PAE page-directory-pointer registers (valid when flags has
    KVM_SREGS2_FLAGS_PDPTRS_VALID)."""
    _fields_ = [(n, kvm_segment) for n in
                ('cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt')] + [
        ('gdt', kvm_dtable),
        ('idt', kvm_dtable),
        ('cr0', u64),
        ('cr2', u64),
        ('cr3', u64),
        ('cr4', u64),
        ('cr8', u64),
        ('efer', u64),
        ('apic_base', u64),
        ('flags', u64),
        ('pdptrs', u64 * 4),
    ]


KVM_SREGS2_FLAGS_PDPTRS_VALID = 1


class kvm_cpuid_entry(_Struct):
    """KVM_SET_CPUID's entry (the first CPUID ioctl: no index, no flags)."""
    _fields_ = [('function', u32), ('eax', u32), ('ebx', u32), ('ecx', u32), ('edx', u32),
                ('padding', u32)]


@_sized
def kvm_cpuid(n):
    class kvm_cpuid(_Struct):
        _fields_ = [('nent', u32), ('padding', u32), ('entries', kvm_cpuid_entry * n)]
    return kvm_cpuid


KVM_STATE_NESTED_FORMAT_VMX = 0
KVM_STATE_NESTED_FORMAT_SVM = 1
KVM_STATE_NESTED_GUEST_MODE = 0x00000001
KVM_STATE_NESTED_RUN_PENDING = 0x00000002
KVM_STATE_NESTED_EVMCS = 0x00000004
KVM_STATE_NESTED_MTF_PENDING = 0x00000008
KVM_STATE_NESTED_GIF_SET = 0x00000100
KVM_STATE_NESTED_SMM_GUEST_MODE = 0x00000001
KVM_STATE_NESTED_SMM_VMXON = 0x00000002
KVM_STATE_NESTED_VMX_VMCS_SIZE = 0x1000
KVM_STATE_NESTED_SVM_VMCB_SIZE = 0x1000
KVM_STATE_VMX_PREEMPTION_TIMER_DEADLINE = 0x00000001


class kvm_vmx_nested_state_hdr(_Struct):
    _fields_ = [
        ('vmxon_pa', u64),
        ('vmcs12_pa', u64),
        ('smm', type('_vmx_smm', (_Struct,), {'_fields_': [('flags', u16)]})),
        ('pad', u16),
        ('flags', u32),
        ('preemption_timer_deadline', u64),
    ]


class kvm_svm_nested_state_hdr(_Struct):
    _fields_ = [('vmcb_pa', u64)]


class kvm_vmx_nested_state_data(_Struct):
    _fields_ = [('vmcs12', u8 * KVM_STATE_NESTED_VMX_VMCS_SIZE),
                ('shadow_vmcs12', u8 * KVM_STATE_NESTED_VMX_VMCS_SIZE)]


class kvm_svm_nested_state_data(_Struct):
    _fields_ = [('vmcb12', u8 * KVM_STATE_NESTED_SVM_VMCB_SIZE)]


class _kvm_nested_state_hdr(_Union):
    _fields_ = [('vmx', kvm_vmx_nested_state_hdr), ('svm', kvm_svm_nested_state_hdr),
                ('pad', u8 * 120)]


class kvm_nested_state(_Struct):
    """KVM_GET/SET_NESTED_STATE's header; ``size`` bytes in all, the VMX or
    SVM data (vmcs12 / vmcb12) following it."""
    _fields_ = [('flags', u16), ('format', u16), ('size', u32), ('hdr', _kvm_nested_state_hdr)]


@_sized
def kvm_pmu_event_filter(n):
    """struct kvm_pmu_event_filter with ``n`` event codes."""
    class kvm_pmu_event_filter(_Struct):
        _fields_ = [('action', u32), ('nevents', u32), ('fixed_counter_bitmap', u32),
                    ('flags', u32), ('pad', u32 * 4), ('events', u64 * n)]
    return kvm_pmu_event_filter


KVM_PMU_EVENT_ALLOW = 0
KVM_PMU_EVENT_DENY = 1
KVM_VCPU_TSC_CTRL = 0          # vCPU device-attribute group: the TSC
KVM_VCPU_TSC_OFFSET = 0        # its attribute: the guest's TSC offset (u64)
KVM_X86_XCOMP_GUEST_SUPP = 0   # system attribute (group 0): XSAVE components a guest may use
KVM_DIRTY_LOG_PAGE_OFFSET = 64  # the dirty ring's page offset in the vCPU mmap
KVM_X86_DEFAULT_VM = 0
KVM_X86_SW_PROTECTED_VM = 1


# --- include/uapi/linux/kvm.h -----------------------------------------------

KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


class kvm_userspace_memory_region(_Struct):
    _fields_ = [
        ('slot', u32),
        ('flags', u32),
        ('guest_phys_addr', u64),
        ('memory_size', u64),
        ('userspace_addr', u64),
    ]


class kvm_irq_level(_Struct):
    _fields_ = [
        ('irq', u32),        # union { irq; s32 status }
        ('level', u32),
    ]


class kvm_coalesced_mmio_zone(_Struct):
    _fields_ = [
        ('addr', u64),
        ('size', u32),
        ('pio', u32),        # union { pad; pio }
    ]


class kvm_coalesced_mmio(_Struct):
    _fields_ = [
        ('phys_addr', u64),
        ('len', u32),
        ('pio', u32),
        ('data', u8 * 8),
    ]


class kvm_translation(_Struct):
    _fields_ = [
        ('linear_address', u64),
        ('physical_address', u64),
        ('valid', u8),
        ('writeable', u8),
        ('usermode', u8),
        ('pad', u8 * 5),
    ]


class kvm_interrupt(_Struct):
    _fields_ = [('irq', u32)]


class kvm_dirty_log(_Struct):
    _fields_ = [
        ('slot', u32),
        ('padding1', u32),
        ('dirty_bitmap', u64),   # union { void *; u64 padding2 }
    ]


class kvm_clear_dirty_log(_Struct):
    _fields_ = [
        ('slot', u32),
        ('num_pages', u32),
        ('first_page', u64),
        ('dirty_bitmap', u64),
    ]


@_sized
def kvm_signal_mask(n):
    """struct kvm_signal_mask with an ``n``-byte sigset (the kernel's is 8)."""
    class kvm_signal_mask(_Struct):
        _fields_ = [('len', u32), ('sigset', u8 * n)]
    return kvm_signal_mask


class MpState(enum.IntEnum):
    """``kvm_mp_state.mp_state`` (KVM_MP_STATE_*): what KVM_GET_MP_STATE returns."""
    RUNNABLE = 0            # running or ready to run
    UNINITIALIZED = 1       # an AP that has not received INIT
    INIT_RECEIVED = 2       # INIT received, waiting for SIPI
    HALTED = 3              # HLT, waiting for an interrupt
    SIPI_RECEIVED = 4       # SIPI received
    STOPPED = 5             # s390
    CHECK_STOP = 6          # s390
    OPERATING = 7           # s390
    LOAD = 8                # s390
    AP_RESET_HOLD = 9       # x86 SEV-ES: an AP parked by the guest
    SUSPENDED = 10          # arm64: suspended until a wake-up event


KVM_MP_STATE_RUNNABLE = MpState.RUNNABLE
KVM_MP_STATE_UNINITIALIZED = MpState.UNINITIALIZED
KVM_MP_STATE_INIT_RECEIVED = MpState.INIT_RECEIVED
KVM_MP_STATE_HALTED = MpState.HALTED
KVM_MP_STATE_SIPI_RECEIVED = MpState.SIPI_RECEIVED
KVM_MP_STATE_STOPPED = MpState.STOPPED
KVM_MP_STATE_CHECK_STOP = MpState.CHECK_STOP
KVM_MP_STATE_OPERATING = MpState.OPERATING
KVM_MP_STATE_LOAD = MpState.LOAD
KVM_MP_STATE_AP_RESET_HOLD = MpState.AP_RESET_HOLD
KVM_MP_STATE_SUSPENDED = MpState.SUSPENDED


class kvm_mp_state(_Struct):
    _fields_ = [('mp_state', u32)]


#: What Vcpu.translate() returns: a guest-linear address through the page tables.
Translation = namedtuple('Translation', 'physical valid writeable usermode')


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class kvm_ioeventfd(_Struct):
    _fields_ = [
        ('datamatch', u64),
        ('addr', u64),
        ('len', u32),
        ('fd', s32),
        ('flags', u32),
        ('pad', u8 * 36),
    ]


class kvm_enable_cap(_Struct):
    _fields_ = [
        ('cap', u32),
        ('flags', u32),
        ('args', u64 * 4),
        ('pad', u8 * 64),
    ]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2


class kvm_irq_routing_irqchip(_Struct):
    _fields_ = [('irqchip', u32), ('pin', u32)]


class kvm_irq_routing_msi(_Struct):
    _fields_ = [('address_lo', u32), ('address_hi', u32), ('data', u32), ('devid', u32)]


class _kvm_irq_routing_u(_Union):
    _fields_ = [
        ('irqchip', kvm_irq_routing_irqchip),
        ('msi', kvm_irq_routing_msi),
        ('pad', u32 * 8),
    ]


class kvm_irq_routing_entry(_Struct):
    _fields_ = [
        ('gsi', u32),
        ('type', u32),
        ('flags', u32),
        ('pad', u32),
        ('u', _kvm_irq_routing_u),
    ]


@_sized
def kvm_irq_routing(n):
    class kvm_irq_routing(_Struct):
        _fields_ = [('nr', u32), ('flags', u32), ('entries', kvm_irq_routing_entry * n)]
    return kvm_irq_routing


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class kvm_irqfd(_Struct):
    _fields_ = [
        ('fd', u32),
        ('gsi', u32),
        ('flags', u32),
        ('resamplefd', u32),
        ('pad', u8 * 16),
    ]


class kvm_clock_data(_Struct):
    _fields_ = [
        ('clock', u64),
        ('flags', u32),
        ('pad0', u32),
        ('realtime', u64),
        ('host_tsc', u64),
        ('pad', u32 * 4),
    ]


class kvm_msi(_Struct):
    _fields_ = [
        ('address_lo', u32),
        ('address_hi', u32),
        ('data', u32),
        ('flags', u32),
        ('devid', u32),
        ('pad', u8 * 12),
    ]


class kvm_x86_mce(_Struct):
    """KVM_X86_SET_MCE: one machine-check bank's registers to inject."""
    _fields_ = [
        ('status', u64),
        ('addr', u64),
        ('misc', u64),
        ('mcg_status', u64),
        ('bank', u8),
        ('pad1', u8 * 7),
        ('pad2', u64 * 3),
    ]


class kvm_tpr_access_ctl(_Struct):
    _fields_ = [('enabled', u32), ('flags', u32), ('reserved', u32 * 8)]


class kvm_vapic_addr(_Struct):
    _fields_ = [('vapic_addr', u64)]


KVM_CREATE_DEVICE_TEST = 1
KVM_DEV_TYPE_FSL_MPIC_20 = 1
KVM_DEV_TYPE_FSL_MPIC_42 = 2
KVM_DEV_TYPE_XICS = 3
KVM_DEV_TYPE_VFIO = 4
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_FLIC = 6
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_ARM_VGIC_ITS = 8
KVM_DEV_TYPE_XIVE = 9
KVM_DEV_TYPE_ARM_PV_TIME = 10
KVM_DEV_TYPE_RISCV_AIA = 11
KVM_DEV_VFIO_FILE = 1          # the VFIO device's group (KVM_DEV_VFIO_GROUP before 6.6)
KVM_DEV_VFIO_FILE_ADD = 1
KVM_DEV_VFIO_FILE_DEL = 2
KVM_DEV_VFIO_GROUP = KVM_DEV_VFIO_FILE
KVM_DEV_VFIO_GROUP_ADD = KVM_DEV_VFIO_FILE_ADD
KVM_DEV_VFIO_GROUP_DEL = KVM_DEV_VFIO_FILE_DEL


class kvm_create_device(_Struct):
    _fields_ = [('type', u32), ('fd', u32), ('flags', u32)]


class kvm_device_attr(_Struct):
    _fields_ = [('flags', u32), ('group', u32), ('attr', u64), ('addr', u64)]


class kvm_one_reg(_Struct):
    _fields_ = [('id', u64), ('addr', u64)]


@_sized
def kvm_reg_list(n):
    class kvm_reg_list(_Struct):
        _fields_ = [('n', u64), ('reg', u64 * n)]
    return kvm_reg_list


KVM_DIRTY_GFN_F_DIRTY = 1 << 0
KVM_DIRTY_GFN_F_RESET = 1 << 1
KVM_DIRTY_GFN_F_MASK = 0x3


class kvm_dirty_gfn(_Struct):
    """One dirty-ring entry: a page (``offset`` in pages) of memory slot ``slot``."""
    _fields_ = [('flags', u32), ('slot', u32), ('offset', u64)]


class kvm_hyperv_eventfd(_Struct):
    _fields_ = [('conn_id', u32), ('fd', s32), ('flags', u32), ('padding', u32 * 3)]


KVM_HYPERV_CONN_ID_MASK = 0x00FFFFFF
KVM_HYPERV_EVENTFD_DEASSIGN = 1 << 0

KVM_XEN_HVM_CONFIG_HYPERCALL_MSR = 1 << 0
KVM_XEN_HVM_CONFIG_INTERCEPT_HCALL = 1 << 1
KVM_XEN_HVM_CONFIG_SHARED_INFO = 1 << 2
KVM_XEN_HVM_CONFIG_RUNSTATE = 1 << 3
KVM_XEN_HVM_CONFIG_EVTCHN_2LEVEL = 1 << 4
KVM_XEN_HVM_CONFIG_EVTCHN_SEND = 1 << 5


class kvm_xen_hvm_config(_Struct):
    _fields_ = [
        ('flags', u32),
        ('msr', u32),
        ('blob_addr_32', u64),
        ('blob_addr_64', u64),
        ('blob_size_32', u8),
        ('blob_size_64', u8),
        ('pad2', u8 * 30),
    ]


class _xen_evtchn(_Struct):
    _fields_ = [('send_port', u32), ('type', u32), ('flags', u32),
                ('deliver', u32 * 4)]        # union { port {port, vcpu, priority}; eventfd {port, fd} }


class _xen_hvm_attr_u(_Union):
    _fields_ = [
        ('long_mode', u8),
        ('vector', u8),
        ('shared_info', type('_xen_shared_info', (_Struct,), {'_fields_': [('gfn', u64)]})),
        ('evtchn', _xen_evtchn),
        ('xen_version', u32),
        ('pad', u64 * 8),
    ]


class kvm_xen_hvm_attr(_Struct):
    _fields_ = [('type', u16), ('pad', u16 * 3), ('u', _xen_hvm_attr_u)]


KVM_XEN_ATTR_TYPE_LONG_MODE = 0x0
KVM_XEN_ATTR_TYPE_SHARED_INFO = 0x1
KVM_XEN_ATTR_TYPE_UPCALL_VECTOR = 0x2
KVM_XEN_ATTR_TYPE_EVTCHN = 0x3
KVM_XEN_ATTR_TYPE_XEN_VERSION = 0x4


class _xen_vcpu_attr_u(_Union):
    _fields_ = [
        ('gpa', u64),
        ('pad', u64 * 8),
        ('runstate', type('_xen_runstate', (_Struct,), {'_fields_': [
            ('state', u64), ('state_entry_time', u64), ('time_running', u64),
            ('time_runnable', u64), ('time_blocked', u64), ('time_offline', u64)]})),
        ('vcpu_id', u32),
        ('timer', type('_xen_timer', (_Struct,), {'_fields_': [
            ('port', u32), ('priority', u32), ('expires_ns', u64)]})),
        ('vector', u8),
    ]


class kvm_xen_vcpu_attr(_Struct):
    _fields_ = [('type', u16), ('pad', u16 * 3), ('u', _xen_vcpu_attr_u)]


KVM_XEN_VCPU_ATTR_TYPE_VCPU_INFO = 0x0
KVM_XEN_VCPU_ATTR_TYPE_VCPU_TIME_INFO = 0x1
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADDR = 0x2
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_CURRENT = 0x3
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_DATA = 0x4
KVM_XEN_VCPU_ATTR_TYPE_RUNSTATE_ADJUST = 0x5
KVM_XEN_VCPU_ATTR_TYPE_VCPU_ID = 0x6
KVM_XEN_VCPU_ATTR_TYPE_TIMER = 0x7
KVM_XEN_VCPU_ATTR_TYPE_UPCALL_VECTOR = 0x8


class kvm_irq_routing_xen_evtchn(_Struct):
    _fields_ = [('port', u32), ('vcpu', u32), ('priority', u32)]


class kvm_enc_region(_Struct):
    _fields_ = [('addr', u64), ('size', u64)]


# Newer than Debian 12's header (6.1): the header test cannot compile these,
# so each names the macro that marks it (_guard) and test_abi.py pins its layout.

KVM_MEM_GUEST_MEMFD = 1 << 2


class kvm_userspace_memory_region2(_Struct):
    """KVM_SET_USER_MEMORY_REGION2 (Linux 6.8, Cap.USER_MEMORY2)."""
    _guard = 'KVM_SET_USER_MEMORY_REGION2'
    _fields_ = [
        ('slot', u32),
        ('flags', u32),
        ('guest_phys_addr', u64),
        ('memory_size', u64),
        ('userspace_addr', u64),
        ('guest_memfd_offset', u64),
        ('guest_memfd', u32),
        ('pad1', u32),
        ('pad2', u64 * 14),
    ]


KVM_MEMORY_ATTRIBUTE_PRIVATE = 1 << 3


class kvm_memory_attributes(_Struct):
    """KVM_SET_MEMORY_ATTRIBUTES (Linux 6.8, Cap.MEMORY_ATTRIBUTES)."""
    _guard = 'KVM_SET_MEMORY_ATTRIBUTES'
    _fields_ = [('address', u64), ('size', u64), ('attributes', u64), ('flags', u64)]


class kvm_create_guest_memfd(_Struct):
    """KVM_CREATE_GUEST_MEMFD (Linux 6.8, Cap.GUEST_MEMFD)."""
    _guard = 'KVM_CREATE_GUEST_MEMFD'
    _fields_ = [('size', u64), ('flags', u64), ('reserved', u64 * 6)]


class kvm_pre_fault_memory(_Struct):
    """KVM_PRE_FAULT_MEMORY (Linux 6.10, Cap.PRE_FAULT_MEMORY)."""
    _guard = 'KVM_PRE_FAULT_MEMORY'
    _fields_ = [('gpa', u64), ('size', u64), ('flags', u64), ('padding', u64 * 5)]


class kvm_stats_header(_Struct):
    _fields_ = [
        ('flags', u32),
        ('name_size', u32),
        ('num_desc', u32),
        ('id_offset', u32),
        ('desc_offset', u32),
        ('data_offset', u32),
    ]


class kvm_stats_desc(_Struct):
    _fields_ = [
        ('flags', u32),
        ('exponent', s16),
        ('size', u16),
        ('offset', u32),
        ('bucket_size', u32),
        # char name[name_size] follows
    ]


KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << 4

# --- struct kvm_run and its exit union -----------------------------------------

class _run_io(_Struct):
    _fields_ = [('direction', u8), ('size', u8), ('port', u16), ('count', u32),
                ('data_offset', u64)]


class _run_mmio(_Struct):
    _fields_ = [('phys_addr', u64), ('data', u8 * 8), ('len', u32), ('is_write', u8)]


class _run_hypercall(_Struct):
    _fields_ = [('nr', u64), ('args', u64 * 6), ('ret', u64), ('longmode', u32),
                ('pad', u32)]


class _run_internal(_Struct):
    _fields_ = [('suberror', u32), ('ndata', u32), ('data', u64 * 16)]


class _run_system_event(_Struct):
    _fields_ = [('type', u32), ('ndata', u32), ('data', u64 * 16)]


class _run_msr(_Struct):
    _fields_ = [('error', u8), ('pad', u8 * 7), ('reason', u32), ('index', u32),
                ('data', u64)]


class _run_exit_u(_Union):
    _fields_ = [
        ('hw', u64),                                   # hardware_exit_reason
        ('fail_entry', type('_run_fail_entry', (_Struct,), {
            '_fields_': [('hardware_entry_failure_reason', u64), ('cpu', u32)]})),
        ('ex', type('_run_ex', (_Struct,), {
            '_fields_': [('exception', u32), ('error_code', u32)]})),
        ('io', _run_io),
        ('debug', kvm_debug_exit_arch),
        ('mmio', _run_mmio),
        ('hypercall', _run_hypercall),
        ('tpr_access', type('_run_tpr', (_Struct,), {
            '_fields_': [('rip', u64), ('is_write', u32), ('pad', u32)]})),
        ('internal', _run_internal),
        ('system_event', _run_system_event),
        ('eoi', type('_run_eoi', (_Struct,), {'_fields_': [('vector', u8)]})),
        ('msr', _run_msr),
        ('notify', type('_run_notify', (_Struct,), {'_fields_': [('flags', u32)]})),
        ('padding', u8 * 256),
    ]


class kvm_run(_Struct):
    _fields_ = [
        ('request_interrupt_window', u8),
        ('immediate_exit', u8),
        ('padding1', u8 * 6),
        ('exit_reason', u32),
        ('ready_for_interrupt_injection', u8),
        ('if_flag', u8),
        ('flags', u16),
        ('cr8', u64),
        ('apic_base', u64),
        ('u', _run_exit_u),
        ('kvm_valid_regs', u64),
        ('kvm_dirty_regs', u64),
        ('s', u8 * 2048),
    ]


KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT = 0, 1
# kvm_run.s (KVM_CAP_SYNC_REGS): the register classes KVM copies out after
# every exit (kvm_valid_regs) and loads before the next entry (kvm_dirty_regs)
KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS, KVM_SYNC_X86_EVENTS = 1, 2, 4
KVM_SYNC_X86_VALID_FIELDS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS
KVM_PIO_PAGE_OFFSET = 1
KVM_COALESCED_MMIO_PAGE_OFFSET = 2
KVM_MSR_EXIT_REASON_INVAL = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN = 1 << 1
KVM_MSR_EXIT_REASON_FILTER = 1 << 2
KVM_SYSTEM_EVENT_SHUTDOWN, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_CRASH = 1, 2, 3
KVM_INTERNAL_ERROR_EMULATION = 1
KVM_INTERNAL_ERROR_SIMUL_EX = 2
KVM_INTERNAL_ERROR_DELIVERY_EV = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4


class ExitReason(enum.IntEnum):
    """``kvm_run.exit_reason`` (KVM_EXIT_*)."""
    UNKNOWN = 0            # the hardware exit reason is in hw
    EXCEPTION = 1          # a guest exception KVM could not handle
    IO = 2                 # port I/O: in, out, ins, outs
    HYPERCALL = 3          # KVM_HC_* hypercall forwarded to user space
    DEBUG = 4              # single step or breakpoint (guest debug)
    HLT = 5                # HLT with no in-kernel irqchip to wait on
    MMIO = 6               # a guest access to memory no slot backs
    IRQ_WINDOW_OPEN = 7    # the guest can take an interrupt now
    SHUTDOWN = 8           # triple fault
    FAIL_ENTRY = 9         # VM entry failed: invalid guest state
    INTR = 10              # a signal (or immediate_exit) stopped KVM_RUN
    SET_TPR = 11           # unused on x86
    TPR_ACCESS = 12        # TPR access reporting
    S390_SIEIC = 13        # s390
    S390_RESET = 14        # s390
    DCR = 15               # deprecated (ppc)
    NMI = 16               # unused on x86
    INTERNAL_ERROR = 17    # the emulator or KVM itself failed
    OSI = 18               # ppc
    PAPR_HCALL = 19        # ppc
    S390_UCONTROL = 20     # s390
    WATCHDOG = 21          # unused on x86
    S390_TSCH = 22         # s390
    EPR = 23               # unused on x86
    SYSTEM_EVENT = 24      # shutdown, reset or crash request (PSCI, Hyper-V)
    S390_STSI = 25         # s390
    IOAPIC_EOI = 26        # split irqchip: EOI of a level-triggered vector
    HYPERV = 27            # Hyper-V synthetic event
    ARM_NISV = 28          # arm64
    X86_RDMSR = 29         # user-space MSR read
    X86_WRMSR = 30         # user-space MSR write
    DIRTY_RING_FULL = 31   # the dirty ring needs harvesting
    AP_RESET_HOLD = 32     # SEV-ES AP reset hold
    X86_BUS_LOCK = 33      # a bus lock was detected
    XEN = 34               # Xen hypercall
    RISCV_SBI = 35         # riscv
    RISCV_CSR = 36         # riscv
    NOTIFY = 37            # the notify VM exit fired
    LOONGARCH_IOCSR = 38   # loongarch
    MEMORY_FAULT = 39      # a fault KVM could not resolve (guest_memfd, attributes)
    TDX = 40               # TDX guest call
    ARM_SEA = 41           # arm64 (6.19)


#: exit number -> ExitReason, for counting exits by name (an unknown number stays an int)
_EXIT_NAMES = dict(ExitReason._value2member_map_)
_EXIT_HLT = ExitReason.HLT          # (an Enum member lookup costs 0.15 us on a hot path)


class Cap(enum.IntEnum):
    """``KVM_CHECK_EXTENSION`` capabilities: every KVM_CAP_* of
    include/uapi/linux/kvm.h up to Linux 6.19 (the numbering is global, so the
    other architectures' members are here too, to name whatever a host reports).
    Debian 12's header (6.1) stops at 223; tests/test_abi.py pins the newer ones.
    """
    IRQCHIP = 0
    HLT = 1
    MMU_SHADOW_CACHE_CONTROL = 2
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    VAPIC = 6
    EXT_CPUID = 7
    CLOCKSOURCE = 8
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    NOP_IO_DELAY = 12
    PV_MMU = 13
    MP_STATE = 14
    COALESCED_MMIO = 15
    SYNC_MMU = 16
    IOMMU = 18
    DESTROY_MEMORY_REGION_WORKS = 21
    USER_NMI = 22
    SET_GUEST_DEBUG = 23
    REINJECT_CONTROL = 24
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    ASSIGN_DEV_IRQ = 29
    JOIN_MEMORY_REGIONS_WORKS = 30
    MCE = 31
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    XEN_HVM = 38
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    S390_PSW = 42
    PPC_SEGSTATE = 43
    HYPERV = 44
    HYPERV_VAPIC = 45
    HYPERV_SPIN = 46
    PCI_SEGMENT = 47
    PPC_PAIRED_SINGLES = 48
    INTR_SHADOW = 49
    DEBUGREGS = 50
    X86_ROBUST_SINGLESTEP = 51
    PPC_OSI = 52
    PPC_UNSET_IRQ = 53
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    PPC_GET_PVINFO = 57
    PPC_IRQ_LEVEL = 58
    ASYNC_PF = 59
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    PPC_BOOKE_SREGS = 62
    SPAPR_TCE = 63
    PPC_SMT = 64
    PPC_RMA = 65
    MAX_VCPUS = 66
    PPC_HIOR = 67
    PPC_PAPR = 68
    SW_TLB = 69
    ONE_REG = 70
    S390_GMAP = 71
    TSC_DEADLINE_TIMER = 72
    S390_UCONTROL = 73
    SYNC_REGS = 74
    PCI_2_3 = 75
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77
    PPC_GET_SMMU_INFO = 78
    S390_COW = 79
    PPC_ALLOC_HTAB = 80
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    PPC_BOOKE_WATCHDOG = 83
    PPC_HTAB_FD = 84
    S390_CSS_SUPPORT = 85
    PPC_EPR = 86
    ARM_PSCI = 87
    ARM_SET_DEVICE_ADDR = 88
    DEVICE_CTRL = 89
    IRQ_MPIC = 90
    PPC_RTAS = 91
    IRQ_XICS = 92
    ARM_EL1_32BIT = 93
    SPAPR_MULTITCE = 94
    EXT_EMUL_CPUID = 95
    HYPERV_TIME = 96
    IOAPIC_POLARITY_IGNORED = 97
    ENABLE_CAP_VM = 98
    S390_IRQCHIP = 99
    IOEVENTFD_NO_LENGTH = 100
    VM_ATTRIBUTES = 101
    ARM_PSCI_0_2 = 102
    PPC_FIXUP_HCALL = 103
    PPC_ENABLE_HCALL = 104
    CHECK_EXTENSION_VM = 105
    S390_USER_SIGP = 106
    S390_VECTOR_REGISTERS = 107
    S390_MEM_OP = 108
    S390_USER_STSI = 109
    S390_SKEYS = 110
    MIPS_FPU = 111
    MIPS_MSA = 112
    S390_INJECT_IRQ = 113
    S390_IRQ_STATE = 114
    PPC_HWRNG = 115
    DISABLE_QUIRKS = 116
    X86_SMM = 117
    MULTI_ADDRESS_SPACE = 118
    GUEST_DEBUG_HW_BPS = 119
    GUEST_DEBUG_HW_WPS = 120
    SPLIT_IRQCHIP = 121
    IOEVENTFD_ANY_LENGTH = 122
    HYPERV_SYNIC = 123
    S390_RI = 124
    SPAPR_TCE_64 = 125
    ARM_PMU_V3 = 126
    VCPU_ATTRIBUTES = 127
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    S390_USER_INSTR0 = 130
    MSI_DEVID = 131
    PPC_HTM = 132
    SPAPR_RESIZE_HPT = 133
    PPC_MMU_RADIX = 134
    PPC_MMU_HASH_V3 = 135
    IMMEDIATE_EXIT = 136
    MIPS_VZ = 137
    MIPS_TE = 138
    MIPS_64BIT = 139
    S390_GS = 140
    S390_AIS = 141
    SPAPR_TCE_VFIO = 142
    X86_DISABLE_EXITS = 143
    ARM_USER_IRQ = 144
    S390_CMMA_MIGRATION = 145
    PPC_FWNMI = 146
    PPC_SMT_POSSIBLE = 147
    HYPERV_SYNIC2 = 148
    HYPERV_VP_INDEX = 149
    S390_AIS_MIGRATION = 150
    PPC_GET_CPU_CHAR = 151
    S390_BPB = 152
    GET_MSR_FEATURES = 153
    HYPERV_EVENTFD = 154
    HYPERV_TLBFLUSH = 155
    S390_HPAGE_1M = 156
    NESTED_STATE = 157
    ARM_INJECT_SERROR_ESR = 158
    MSR_PLATFORM_INFO = 159
    PPC_NESTED_HV = 160
    HYPERV_SEND_IPI = 161
    COALESCED_PIO = 162
    HYPERV_ENLIGHTENED_VMCS = 163
    EXCEPTION_PAYLOAD = 164
    ARM_VM_IPA_SIZE = 165
    MANUAL_DIRTY_LOG_PROTECT = 166
    HYPERV_CPUID = 167
    MANUAL_DIRTY_LOG_PROTECT2 = 168
    PPC_IRQ_XIVE = 169
    ARM_SVE = 170
    ARM_PTRAUTH_ADDRESS = 171
    ARM_PTRAUTH_GENERIC = 172
    PMU_EVENT_FILTER = 173
    ARM_IRQ_LINE_LAYOUT_2 = 174
    HYPERV_DIRECT_TLBFLUSH = 175
    PPC_GUEST_DEBUG_SSTEP = 176
    ARM_NISV_TO_USER = 177
    ARM_INJECT_EXT_DABT = 178
    S390_VCPU_RESETS = 179
    S390_PROTECTED = 180
    PPC_SECURE_GUEST = 181
    HALT_POLL = 182
    ASYNC_PF_INT = 183
    LAST_CPU = 184
    SMALLER_MAXPHYADDR = 185
    S390_DIAG318 = 186
    STEAL_TIME = 187
    X86_USER_SPACE_MSR = 188
    X86_MSR_FILTER = 189
    ENFORCE_PV_FEATURE_CPUID = 190
    SYS_HYPERV_CPUID = 191
    DIRTY_LOG_RING = 192
    X86_BUS_LOCK_EXIT = 193
    PPC_DAWR1 = 194
    SET_GUEST_DEBUG2 = 195
    SGX_ATTRIBUTE = 196
    VM_COPY_ENC_CONTEXT_FROM = 197
    PTP_KVM = 198
    HYPERV_ENFORCE_CPUID = 199
    SREGS2 = 200
    EXIT_HYPERCALL = 201
    PPC_RPT_INVALIDATE = 202
    BINARY_STATS_FD = 203
    EXIT_ON_EMULATION_FAILURE = 204
    ARM_MTE = 205
    VM_MOVE_ENC_CONTEXT_FROM = 206
    VM_GPA_BITS = 207
    XSAVE2 = 208
    SYS_ATTRIBUTES = 209
    PPC_AIL_MODE_3 = 210
    S390_MEM_OP_EXTENSION = 211
    PMU_CAPABILITY = 212
    DISABLE_QUIRKS2 = 213
    VM_TSC_CONTROL = 214
    SYSTEM_EVENT_DATA = 215
    ARM_SYSTEM_SUSPEND = 216
    S390_PROTECTED_DUMP = 217
    X86_TRIPLE_FAULT_EVENT = 218
    X86_NOTIFY_VMEXIT = 219
    VM_DISABLE_NX_HUGE_PAGES = 220
    S390_ZPCI_OP = 221
    S390_CPU_TOPOLOGY = 222
    DIRTY_LOG_RING_ACQ_REL = 223
    S390_PROTECTED_ASYNC_DISABLE = 224
    DIRTY_LOG_RING_WITH_BITMAP = 225
    PMU_EVENT_MASKED_EVENTS = 226
    COUNTER_OFFSET = 227
    ARM_EAGER_SPLIT_CHUNK_SIZE = 228
    ARM_SUPPORTED_BLOCK_SIZES = 229
    ARM_SUPPORTED_REG_MASK_RANGES = 230
    USER_MEMORY2 = 231
    MEMORY_FAULT_INFO = 232
    MEMORY_ATTRIBUTES = 233
    GUEST_MEMFD = 234
    VM_TYPES = 235
    PRE_FAULT_MEMORY = 236
    X86_APIC_BUS_CYCLES_NS = 237
    X86_GUEST_MODE = 238
    ARM_WRITABLE_IMP_ID_REGS = 239
    ARM_EL2 = 240
    ARM_EL2_E2H0 = 241
    RISCV_MP_STATE_RESET = 242
    ARM_CACHEABLE_PFNMAP_SUPPORTED = 243
    GUEST_MEMFD_FLAGS = 244
    ARM_SEA_TO_USER = 245
    S390_USER_OPEREXEC = 246


#: check_extension probes 0.._CAP_PROBE-1 for capabilities(): past Cap's last
#: member, so a newer kernel's capability shows up as its number
_CAP_PROBE = 512


def cap_number(cap):
    """The number of a capability given as a :class:`Cap`, an int, or a name
    (``'IRQCHIP'``, ``'irqchip'``, ``'KVM_CAP_IRQCHIP'``)."""
    if isinstance(cap, str):
        name = cap.strip().upper().removeprefix('KVM_CAP_')
        member = Cap.__members__.get(name)
        if member is None:
            import difflib
            near = difflib.get_close_matches(name, Cap.__members__, 3)
            raise KvmliteError(f'no KVM capability named {cap!r}' +
                               (f': did you mean {", ".join(near)}?' if near else
                                ': see kvmlite.Cap for the names'))
        return int(member)
    if isinstance(cap, bool) or not isinstance(cap, int):
        raise TypeError(f'a capability is a Cap, a name or an int, not {type(cap).__name__}')
    return int(cap)


def cap_name(cap):
    """``'IRQCHIP'`` for 0, the number as text when Cap has no name for it."""
    n = cap_number(cap)
    member = Cap._value2member_map_.get(n)
    return member.name if member is not None else str(n)


def _require(owner, cap, what):
    """Raise a KvmliteError naming ``cap`` when ``owner`` (a Kvm or Vm)
    reports it absent: the wrapper for ``what`` cannot work on this host."""
    if not owner.check_extension(cap):
        c = Cap(cap_number(cap))
        raise KvmliteError(f"{what} needs KVM_CAP_{c.name} ({int(c)}), which this host's KVM "
                           'does not offer')


def _attr_call(fd, request, group, attr, value=None, vm=None):
    """KVM_{HAS,GET,SET}_DEVICE_ATTR with a u64 value at ``addr``: HAS
    returns True/False, GET the value, SET None."""
    buf = u64(0 if value is None else _check_u64('attribute value', value))
    a = kvm_device_attr(group=group, attr=attr, addr=ctypes.addressof(buf))
    if request == KVM_HAS_DEVICE_ATTR:
        try:
            _ioctl(fd, request, a, vm=vm)
        except KvmError as e:
            if e.errno == errno.ENXIO:
                return False
            raise
        return True
    _ioctl(fd, request, a, f'{_IOCTL_NAMES[request]}(group {group}, attr {attr})', vm=vm)
    return buf.value if request == KVM_GET_DEVICE_ATTR else None


class _Attributes:
    """has_attr / get_attr / set_attr over one fd: a device's, or the
    system's, a VM's or a vCPU's where KVM offers attributes there."""

    def has_attr(self, group, attr):
        """KVM_HAS_DEVICE_ATTR: True when ``attr`` of ``group`` exists."""
        return _attr_call(self.fd, KVM_HAS_DEVICE_ATTR, group, attr)

    def get_attr(self, group, attr):
        """KVM_GET_DEVICE_ATTR of a u64 attribute."""
        return _attr_call(self.fd, KVM_GET_DEVICE_ATTR, group, attr)

    def set_attr(self, group, attr, value):
        """KVM_SET_DEVICE_ATTR of a u64 attribute."""
        _attr_call(self.fd, KVM_SET_DEVICE_ATTR, group, attr, value)


class Device(_Attributes):
    """A KVM device (KVM_CREATE_DEVICE): its fd, its KVM_DEV_TYPE_* type and
    its attributes. Closed with its VM, or by close()."""

    def __init__(self, fd, type_):
        self.fd, self.type = fd, type_

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self):
        return f'<Device type {self.type} fd {self.fd}>'


def _device_type(t):
    if isinstance(t, str):
        value = globals().get('KVM_DEV_TYPE_' + t.strip().upper().removeprefix('KVM_DEV_TYPE_'))
        if not isinstance(value, int):
            raise KvmliteError(f'no KVM device type named {t!r}: x86 has VFIO (and the '
                               'KVM_DEV_TYPE_* of other architectures)')
        return value
    return int(t)


def _enable_cap(fd, cap, args, flags):
    n = cap_number(cap)
    if len(args) > 4:
        raise ValueError(f'KVM_ENABLE_CAP takes at most 4 arguments, got {len(args)}')
    ec = kvm_enable_cap(cap=n, flags=flags)
    for i, a in enumerate(args):
        ec.args[i] = _check_u64(f'KVM_ENABLE_CAP({cap_name(n)}) argument {i}', a)
    _ioctl(fd, KVM_ENABLE_CAP, ec, f'KVM_ENABLE_CAP({cap_name(n)})')


# --- ioctl numbers --------------------------------------------------------------
# system (/dev/kvm)
KVM_GET_API_VERSION = _IO(KVMIO, 0x00)
KVM_CREATE_VM = _IO(KVMIO, 0x01)
KVM_GET_MSR_INDEX_LIST = _IOWR(KVMIO, 0x02, kvm_msr_list(0))
KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03)
KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04)
KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, kvm_cpuid2(0))
KVM_GET_EMULATED_CPUID = _IOWR(KVMIO, 0x09, kvm_cpuid2(0))
KVM_GET_MSR_FEATURE_INDEX_LIST = _IOWR(KVMIO, 0x0a, kvm_msr_list(0))
# VM
KVM_CREATE_VCPU = _IO(KVMIO, 0x41)
KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47)
KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, u64)
KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60)
KVM_IRQ_LINE = _IOW(KVMIO, 0x61, kvm_irq_level)
KVM_GET_IRQCHIP = _IOWR(KVMIO, 0x62, kvm_irqchip)
KVM_SET_IRQCHIP = _IOR(KVMIO, 0x63, kvm_irqchip)
KVM_CREATE_PIT = _IO(KVMIO, 0x64)
KVM_GET_PIT = _IOWR(KVMIO, 0x65, kvm_pit_state)
KVM_SET_PIT = _IOR(KVMIO, 0x66, kvm_pit_state)
KVM_IRQ_LINE_STATUS = _IOWR(KVMIO, 0x67, kvm_irq_level)
KVM_REGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x67, kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _IOW(KVMIO, 0x68, kvm_coalesced_mmio_zone)
KVM_SET_GSI_ROUTING = _IOW(KVMIO, 0x6a, kvm_irq_routing(0))
KVM_REINJECT_CONTROL = _IO(KVMIO, 0x71)    # takes a kvm_reinject_control all the same
KVM_IRQFD = _IOW(KVMIO, 0x76, kvm_irqfd)
KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, kvm_pit_config)
KVM_IOEVENTFD = _IOW(KVMIO, 0x79, kvm_ioeventfd)
KVM_SET_CLOCK = _IOW(KVMIO, 0x7b, kvm_clock_data)
KVM_GET_CLOCK = _IOR(KVMIO, 0x7c, kvm_clock_data)
KVM_GET_PIT2 = _IOR(KVMIO, 0x9f, kvm_pit_state2)
KVM_SET_PIT2 = _IOW(KVMIO, 0xa0, kvm_pit_state2)
KVM_SIGNAL_MSI = _IOW(KVMIO, 0xa5, kvm_msi)
KVM_CLEAR_DIRTY_LOG = _IOWR(KVMIO, 0xc0, kvm_clear_dirty_log)
KVM_X86_SET_MSR_FILTER = _IOW(KVMIO, 0xc6, kvm_msr_filter)
KVM_GET_STATS_FD = _IO(KVMIO, 0xce)
KVM_SET_NR_MMU_PAGES = _IO(KVMIO, 0x44)
KVM_GET_NR_MMU_PAGES = _IO(KVMIO, 0x45)
KVM_SET_USER_MEMORY_REGION2 = _IOW(KVMIO, 0x49, kvm_userspace_memory_region2)
KVM_SET_BOOT_CPU_ID = _IO(KVMIO, 0x78)
KVM_XEN_HVM_CONFIG = _IOW(KVMIO, 0x7a, kvm_xen_hvm_config)
KVM_SET_PMU_EVENT_FILTER = _IOW(KVMIO, 0xb2, kvm_pmu_event_filter(0))
KVM_MEMORY_ENCRYPT_OP = _IOWR(KVMIO, 0xba, ctypes.c_ulong)
KVM_MEMORY_ENCRYPT_REG_REGION = _IOR(KVMIO, 0xbb, kvm_enc_region)
KVM_MEMORY_ENCRYPT_UNREG_REGION = _IOR(KVMIO, 0xbc, kvm_enc_region)
KVM_HYPERV_EVENTFD = _IOW(KVMIO, 0xbd, kvm_hyperv_eventfd)
KVM_RESET_DIRTY_RINGS = _IO(KVMIO, 0xc7)
KVM_XEN_HVM_GET_ATTR = _IOWR(KVMIO, 0xc8, kvm_xen_hvm_attr)
KVM_XEN_HVM_SET_ATTR = _IOW(KVMIO, 0xc9, kvm_xen_hvm_attr)
KVM_XEN_HVM_EVTCHN_SEND = _IOW(KVMIO, 0xd0, kvm_irq_routing_xen_evtchn)
KVM_SET_MEMORY_ATTRIBUTES = _IOW(KVMIO, 0xd2, kvm_memory_attributes)
KVM_CREATE_GUEST_MEMFD = _IOWR(KVMIO, 0xd4, kvm_create_guest_memfd)
KVM_CREATE_DEVICE = _IOWR(KVMIO, 0xe0, kvm_create_device)
# device fds (and, with Cap.SYS_ATTRIBUTES, VM_ATTRIBUTES, VCPU_ATTRIBUTES, the others)
KVM_SET_DEVICE_ATTR = _IOW(KVMIO, 0xe1, kvm_device_attr)
KVM_GET_DEVICE_ATTR = _IOW(KVMIO, 0xe2, kvm_device_attr)
KVM_HAS_DEVICE_ATTR = _IOW(KVMIO, 0xe3, kvm_device_attr)
# VM and vCPU
KVM_ENABLE_CAP = _IOW(KVMIO, 0xa3, kvm_enable_cap)
KVM_SET_TSC_KHZ = _IO(KVMIO, 0xa2)
KVM_GET_TSC_KHZ = _IO(KVMIO, 0xa3)
# vCPU
KVM_RUN = _IO(KVMIO, 0x80)
KVM_GET_REGS = _IOR(KVMIO, 0x81, kvm_regs)
KVM_SET_REGS = _IOW(KVMIO, 0x82, kvm_regs)
KVM_GET_SREGS = _IOR(KVMIO, 0x83, kvm_sregs)
KVM_SET_SREGS = _IOW(KVMIO, 0x84, kvm_sregs)
KVM_TRANSLATE = _IOWR(KVMIO, 0x85, kvm_translation)
KVM_INTERRUPT = _IOW(KVMIO, 0x86, kvm_interrupt)
KVM_GET_MSRS = _IOWR(KVMIO, 0x88, kvm_msrs(0))
KVM_SET_MSRS = _IOW(KVMIO, 0x89, kvm_msrs(0))
KVM_SET_SIGNAL_MASK = _IOW(KVMIO, 0x8b, kvm_signal_mask(0))
KVM_GET_FPU = _IOR(KVMIO, 0x8c, kvm_fpu)
KVM_SET_FPU = _IOW(KVMIO, 0x8d, kvm_fpu)
KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, kvm_lapic_state)
KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, kvm_lapic_state)
KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, kvm_cpuid2(0))
KVM_GET_CPUID2 = _IOWR(KVMIO, 0x91, kvm_cpuid2(0))
KVM_GET_MP_STATE = _IOR(KVMIO, 0x98, kvm_mp_state)
KVM_SET_MP_STATE = _IOW(KVMIO, 0x99, kvm_mp_state)
KVM_NMI = _IO(KVMIO, 0x9a)
KVM_SET_GUEST_DEBUG = _IOW(KVMIO, 0x9b, kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, kvm_vcpu_events)
KVM_GET_DEBUGREGS = _IOR(KVMIO, 0xa1, kvm_debugregs)
KVM_SET_DEBUGREGS = _IOW(KVMIO, 0xa2, kvm_debugregs)
KVM_GET_XSAVE = _IOR(KVMIO, 0xa4, kvm_xsave)
KVM_SET_XSAVE = _IOW(KVMIO, 0xa5, kvm_xsave)
KVM_GET_XCRS = _IOR(KVMIO, 0xa6, kvm_xcrs)
KVM_SET_XCRS = _IOW(KVMIO, 0xa7, kvm_xcrs)
KVM_SMI = _IO(KVMIO, 0xb7)
KVM_GET_XSAVE2 = _IOR(KVMIO, 0xcf, kvm_xsave)
KVM_SET_CPUID = _IOW(KVMIO, 0x8a, kvm_cpuid(0))
KVM_TPR_ACCESS_REPORTING = _IOWR(KVMIO, 0x92, kvm_tpr_access_ctl)
KVM_SET_VAPIC_ADDR = _IOW(KVMIO, 0x93, kvm_vapic_addr)
KVM_X86_SETUP_MCE = _IOW(KVMIO, 0x9c, u64)
KVM_X86_GET_MCE_CAP_SUPPORTED = _IOR(KVMIO, 0x9d, u64)     # system
KVM_X86_SET_MCE = _IOW(KVMIO, 0x9e, kvm_x86_mce)
KVM_GET_ONE_REG = _IOW(KVMIO, 0xab, kvm_one_reg)
KVM_SET_ONE_REG = _IOW(KVMIO, 0xac, kvm_one_reg)
KVM_KVMCLOCK_CTRL = _IO(KVMIO, 0xad)
KVM_GET_REG_LIST = _IOWR(KVMIO, 0xb0, kvm_reg_list(0))
KVM_GET_NESTED_STATE = _IOWR(KVMIO, 0xbe, kvm_nested_state)
KVM_SET_NESTED_STATE = _IOW(KVMIO, 0xbf, kvm_nested_state)
KVM_GET_SUPPORTED_HV_CPUID = _IOWR(KVMIO, 0xc1, kvm_cpuid2(0))   # system and vCPU
KVM_XEN_VCPU_GET_ATTR = _IOWR(KVMIO, 0xca, kvm_xen_vcpu_attr)
KVM_XEN_VCPU_SET_ATTR = _IOW(KVMIO, 0xcb, kvm_xen_vcpu_attr)
KVM_GET_SREGS2 = _IOR(KVMIO, 0xcc, kvm_sregs2)
KVM_SET_SREGS2 = _IOW(KVMIO, 0xcd, kvm_sregs2)
KVM_PRE_FAULT_MEMORY = _IOWR(KVMIO, 0xd5, kvm_pre_fault_memory)

_IOCTL_NAMES = {}


def _name_ioctls():
    # several ioctls share a number (0x67, 0xa3 on different fds): keep the first
    for name, value in list(globals().items()):
        if name.startswith(('KVM_', )) and isinstance(value, int) and (value >> 8) & 0xFF == KVMIO \
                and value > 0xFF:
            _IOCTL_NAMES.setdefault(value, name)


_name_ioctls()

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class KvmliteError(Exception):
    """The base of every error kvmlite raises on purpose."""


class KvmError(KvmliteError, OSError):
    """An ioctl (or opening /dev/kvm) failed: names the call and the errno."""

    def __init__(self, err, what, hint=''):
        msg = f'{what} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})'
        if hint:
            msg += f'; {hint}'
        OSError.__init__(self, err, msg)
        self.what = what

    def __str__(self):
        return self.strerror


class GuestMemoryError(KvmliteError, ValueError):
    """A guest-physical access that no memory slot backs, or a bad slot."""


class DeviceError(KvmliteError):
    """A device model raised while serving a guest access.

    Carries the bus (``'pio'`` or ``'mmio'``), the address, the vCPU index and
    the guest RIP, so the failing access can be found; the VM stays usable.
    """

    def __init__(self, message, bus=None, addr=None, vcpu=None, rip=None):
        super().__init__(message)
        self.bus, self.addr, self.vcpu, self.rip = bus, addr, vcpu, rip


class GuestError(KvmliteError):
    """The guest ended in a way that is an error: triple fault, failed entry,
    internal error. ``exit`` holds the exit value with all the kernel's data."""

    def __init__(self, message, exit=None):
        super().__init__(message)
        self.exit = exit


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)


def _explain(request, err, vm):
    """What to do about ``err`` from ``request`` on ``vm`` (a Vm or None),
    where the API text or KVM's checks say why it happens; '' otherwise."""
    chip = getattr(vm, 'irqchip', None)
    if request == KVM_RUN and err in (errno.ENOSPC, errno.EFAULT) and vm is not None \
            and not vm.slots:
        return ('the VM has no memory: add memory first (vm.add_memory(gpa, size)) and put '
                "code at the vCPU's RIP")
    if request in (KVM_GET_LAPIC, KVM_SET_LAPIC, KVM_SET_VAPIC_ADDR) and err == errno.EINVAL \
            and chip is None:
        return ('this VM has no in-kernel local APIC: create the irqchip first '
                '(vm.create_irqchip() or vm.create_split_irqchip(), before the vCPUs)')
    if request in (KVM_CREATE_PIT2, KVM_CREATE_PIT) and err == errno.ENOENT:
        return ('the in-kernel PIT needs the in-kernel PIC: create the irqchip first '
                '(vm.create_irqchip(); a split irqchip has no PIC)')
    if request in (KVM_GET_PIT2, KVM_SET_PIT2, KVM_GET_PIT, KVM_SET_PIT,
                   KVM_REINJECT_CONTROL) and err == errno.ENXIO:
        return 'this VM has no in-kernel PIT: create it first (vm.create_irqchip(), then vm.create_pit2())'
    if request in (KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS) and err == errno.ENXIO:
        return ('KVM has no irqchip to raise the line on: create the irqchip first '
                '(vm.create_irqchip() or vm.create_split_irqchip())')
    if request in (KVM_GET_IRQCHIP, KVM_SET_IRQCHIP) and err == errno.ENXIO:
        return ('this VM has no in-kernel PIC and IOAPIC: create the irqchip first '
                '(vm.create_irqchip(); a split irqchip keeps them in user space)')
    if request in (KVM_SIGNAL_MSI, KVM_SET_GSI_ROUTING, KVM_IRQFD) and err == errno.EINVAL \
            and vm is not None and chip is None:
        return ('this needs an in-kernel irqchip: create the irqchip first '
                '(vm.create_irqchip() or vm.create_split_irqchip())')
    if request == KVM_CREATE_IRQCHIP and err == errno.EINVAL and getattr(vm, 'vcpus', None):
        return 'create the irqchip before the vCPUs'
    if request == KVM_CREATE_IRQCHIP and err == errno.EEXIST:
        return 'this VM already has an irqchip'
    if request == KVM_INTERRUPT and err == errno.ENXIO:
        return ('with the in-kernel PIC, interrupts come from it: raise a line (vm.irq_line()) '
                'or send an MSI (vm.signal_msi())')
    if request == KVM_GET_DIRTY_LOG and err == errno.ENOENT:
        return 'the slot does not log dirty pages: add its memory with dirty_log=True'
    if request == KVM_GET_NR_MMU_PAGES and err == errno.ENOTTY:
        return 'this kernel no longer has it (long deprecated, now removed)'
    if request == KVM_CREATE_VCPU and err == errno.EEXIST:
        return 'a vCPU with that index exists'
    return ''


def _ioctl(fd, request, arg=0, what=None, vm=None):
    """One ioctl; a failure raises KvmError naming it (and, with ``vm``, what
    to do where :func:`_explain` knows). Retries on EINTR (a kick must only
    interrupt KVM_RUN, which does not come here)."""
    if fd < 0:
        name = what or _IOCTL_NAMES.get(request, hex(request))
        raise KvmliteError(f'{name} on a closed Vm or Vcpu: create a new one')
    while True:
        try:
            if isinstance(arg, int) and arg > 0x7FFFFFFF:
                # fcntl.ioctl passes ints as C int; this one is an unsigned long
                if _libc.ioctl(fd, request, arg) < 0:
                    raise OSError(ctypes.get_errno(), '')
                return 0
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue
        except OSError as e:
            raise KvmError(e.errno, what or _IOCTL_NAMES.get(request, hex(request)),
                           _explain(request, e.errno, vm)) from None


def _check_u64(what, value):
    """``value`` as the ABI's u64, or ValueError (ctypes would truncate it)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f'{what} takes an int, got {type(value).__name__}')
    if not -(1 << 63) <= value < 1 << 64:
        raise ValueError(f'{what} = {value:#x} does not fit in 64 bits')
    return value & ((1 << 64) - 1)


# ---------------------------------------------------------------------------
# Exits as values
# ---------------------------------------------------------------------------

class Exit:
    """One return of KVM_RUN. Subclasses carry the exit's data as attributes."""
    __slots__ = ()
    reason = None

    def __repr__(self):
        fields = ', '.join(f'{k}={_fmt(getattr(self, k))}' for k in self.__slots__
                           if not k.startswith('_'))
        return f'{type(self).__name__}({fields})'


def _fmt(v):
    return hex(v) if isinstance(v, int) and not isinstance(v, bool) else repr(v)


class IoOut(Exit):
    """``out``/``outs`` to ``port``: ``count`` items of ``size`` bytes in ``data``."""
    __slots__ = ('port', 'size', 'count', 'data')
    reason = ExitReason.IO

    def __init__(self, port, size, count, data):
        self.port, self.size, self.count, self.data = port, size, count, data

    @property
    def value(self):
        return int.from_bytes(self.data[:self.size], 'little')


class IoIn(Exit):
    """``in``/``ins`` from ``port``. Fill ``buf`` (``size * count`` bytes) before
    the next run; ``buf`` points into kvm_run and is valid until then."""
    __slots__ = ('port', 'size', 'count', 'buf')
    reason = ExitReason.IO

    def __init__(self, port, size, count, buf):
        self.port, self.size, self.count, self.buf = port, size, count, buf

    def set(self, value):
        """Answer a single (count 1) read with an integer."""
        self.buf[:self.size] = (value & ((1 << (8 * self.size)) - 1)).to_bytes(self.size, 'little')


class MmioWrite(Exit):
    __slots__ = ('addr', 'data')
    reason = ExitReason.MMIO

    def __init__(self, addr, data):
        self.addr, self.data = addr, data

    @property
    def value(self):
        return int.from_bytes(self.data, 'little')


class MmioRead(Exit):
    """A read of ``len(buf)`` bytes at ``addr``: fill ``buf`` (it points into
    kvm_run and is valid until the next run)."""
    __slots__ = ('addr', 'buf')
    reason = ExitReason.MMIO

    def __init__(self, addr, buf):
        self.addr, self.buf = addr, buf

    def set(self, value):
        n = len(self.buf)
        self.buf[:] = (value & ((1 << (8 * n)) - 1)).to_bytes(n, 'little')


class Hlt(Exit):
    __slots__ = ()
    reason = ExitReason.HLT


class Shutdown(Exit):
    """A triple fault (or a shutdown the CPU could not handle)."""
    __slots__ = ()
    reason = ExitReason.SHUTDOWN


class FailEntry(Exit):
    __slots__ = ('hardware_entry_failure_reason', 'cpu')
    reason = ExitReason.FAIL_ENTRY

    def __init__(self, hardware_entry_failure_reason, cpu):
        self.hardware_entry_failure_reason, self.cpu = hardware_entry_failure_reason, cpu


class InternalError(Exit):
    """KVM could not go on. ``suberror`` is KVM_INTERNAL_ERROR_*; ``data`` the
    kernel's diagnostic words; for an emulation failure ``insn`` holds the
    instruction bytes when the kernel gave them."""
    __slots__ = ('suberror', 'data', 'insn')
    reason = ExitReason.INTERNAL_ERROR
    SUBERRORS = {1: 'emulation failure', 2: 'simultaneous exceptions',
                 3: 'unexpected exit during event delivery', 4: 'unexpected exit reason'}

    def __init__(self, suberror, data, insn=b''):
        self.suberror, self.data, self.insn = suberror, data, insn

    def describe(self):
        text = self.SUBERRORS.get(self.suberror, f'suberror {self.suberror}')
        if self.insn:
            text += f', instruction bytes {self.insn.hex(" ")}'
        if self.data:
            text += ', data ' + ' '.join(hex(d) for d in self.data)
        return text


class SystemEvent(Exit):
    __slots__ = ('type', 'data')
    reason = ExitReason.SYSTEM_EVENT

    def __init__(self, type_, data):
        self.type, self.data = type_, data


class Debug(Exit):
    """A single step (``exception`` 1) or breakpoint (3) at ``pc``."""
    __slots__ = ('exception', 'pc', 'dr6', 'dr7')
    reason = ExitReason.DEBUG

    def __init__(self, exception, pc, dr6, dr7):
        self.exception, self.pc, self.dr6, self.dr7 = exception, pc, dr6, dr7


class Hypercall(Exit):
    # _run (here, in RdMsr and WrMsr) is the Vcpu, not its kvm_run: a held
    # ctypes view of kvm_run would pin the mmap and make Vcpu.close() fail
    __slots__ = ('nr', 'args', 'longmode', '_run')
    reason = ExitReason.HYPERCALL

    def __init__(self, nr, args, longmode, run):
        self.nr, self.args, self.longmode, self._run = nr, args, longmode, run

    def set_result(self, value):
        self._run.kvm_run.u.hypercall.ret = value


class IrqWindowOpen(Exit):
    __slots__ = ()
    reason = ExitReason.IRQ_WINDOW_OPEN


class Interrupted(Exit):
    """KVM_RUN stopped for a signal or a kick. ``why`` is ``'timeout'``,
    ``'stop'``, ``'kick'`` or ``'signal'``."""
    __slots__ = ('why',)
    reason = ExitReason.INTR

    def __init__(self, why='signal'):
        self.why = why


class IoapicEoi(Exit):
    __slots__ = ('vector',)
    reason = ExitReason.IOAPIC_EOI

    def __init__(self, vector):
        self.vector = vector


class RdMsr(Exit):
    """A guest ``rdmsr`` sent to user space: call ``reply(value)`` or
    ``fail()`` (the guest gets #GP) before the next run."""
    __slots__ = ('index', 'why', '_run')
    reason = ExitReason.X86_RDMSR

    def __init__(self, index, why, run):
        self.index, self.why, self._run = index, why, run

    def reply(self, value):
        self._run.kvm_run.u.msr.data = value & 0xFFFFFFFFFFFFFFFF
        self._run.kvm_run.u.msr.error = 0

    def fail(self):
        self._run.kvm_run.u.msr.error = 1


class WrMsr(Exit):
    """A guest ``wrmsr`` sent to user space; ``fail()`` makes it #GP."""
    __slots__ = ('index', 'data', 'why', '_run')
    reason = ExitReason.X86_WRMSR

    def __init__(self, index, data, why, run):
        self.index, self.data, self.why, self._run = index, data, why, run

    def reply(self, value=None):
        self._run.kvm_run.u.msr.error = 0

    def fail(self):
        self._run.kvm_run.u.msr.error = 1


class ExceptionExit(Exit):
    __slots__ = ('exception', 'error_code')
    reason = ExitReason.EXCEPTION

    def __init__(self, exception, error_code):
        self.exception, self.error_code = exception, error_code


class UnknownExit(Exit):
    """Any exit kvmlite has no class for: ``exit_reason`` and the raw union."""
    __slots__ = ('exit_reason', 'raw')

    def __init__(self, exit_reason, raw):
        self.exit_reason, self.raw = exit_reason, raw

    @property
    def reason(self):
        try:
            return ExitReason(self.exit_reason)
        except ValueError:
            return self.exit_reason


_HLT, _SHUTDOWN, _IRQ_WINDOW = Hlt(), Shutdown(), IrqWindowOpen()


# ---------------------------------------------------------------------------
# Buses
# ---------------------------------------------------------------------------

#: How many distinct addresses a bus counts accesses for: a guest that sweeps
#: the address space must not grow the VMM's memory (64 bytes or so each).
BUS_COUNTED_ADDRESSES = 4096
RECENT_EXITS = 8        # port-I/O and MMIO exits a vCPU remembers (a power of 2)

_UNPACK = {1: struct.Struct('<B'), 2: struct.Struct('<H'), 4: struct.Struct('<I'),
           8: struct.Struct('<Q')}


class _Bus:
    """Address ranges mapped to devices. A device sees ``read(offset, size)``
    and ``write(offset, size, value)`` with ``offset`` from its base.
    Overlapping ranges are refused; unclaimed reads float high (all ones) and
    unclaimed accesses are counted in ``unclaimed`` by address. A guest
    picks the addresses, so the counters keep at most BUS_COUNTED_ADDRESSES
    of them; accesses elsewhere only add to ``unclaimed_other`` (and
    ``counts_other``)."""

    kind = 'bus'

    def __init__(self, lock=None):
        self._ranges = []            # sorted (base, end, device, name)
        self.lock = lock or threading.RLock()
        self.unclaimed = Counter()
        self.unclaimed_other = 0     # unclaimed accesses past BUS_COUNTED_ADDRESSES
        self.counts = Counter()      # accesses by address, when counting is on
        self.counts_other = 0
        self.count_accesses = False
        self.device_errors = 0       # device calls that raised (each one a DeviceError)

    def register(self, base, device, size=None, name=None):
        size = device.SIZE if size is None else size
        if size <= 0:
            raise ValueError(f'{self.kind} range at {base:#x} has size {size}')
        end = base + size
        for b, e, _, n in self._ranges:
            if base < e and b < end:
                raise ValueError(
                    f'{self.kind} range {base:#x}-{end - 1:#x} for {name or type(device).__name__} '
                    f'overlaps {n} at {b:#x}-{e - 1:#x}')
        self._ranges.append((base, end, device, name or type(device).__name__))
        self._ranges.sort(key=lambda r: r[0])
        self._rebuild()

    def unregister(self, base):
        self._ranges = [r for r in self._ranges if r[0] != base]
        self._rebuild()

    def find(self, addr):
        """(device, base, name) for ``addr``, or None."""
        for b, e, dev, name in self._ranges:
            if b <= addr < e:
                return dev, b, name
        return None

    def devices(self):
        return [(b, e - b, name, dev) for b, e, dev, name in self._ranges]

    def _rebuild(self):
        pass

    def _count_unclaimed(self, addr):
        c = self.unclaimed
        if addr in c or len(c) < BUS_COUNTED_ADDRESSES:
            c[addr] += 1
        else:
            self.unclaimed_other += 1

    def _count_access(self, addr):
        c = self.counts
        if addr in c or len(c) < BUS_COUNTED_ADDRESSES:
            c[addr] += 1
        else:
            self.counts_other += 1

    def read(self, addr, size):
        """A guest read: returns an int (all ones when unclaimed)."""
        hit = self._lookup(addr)
        if self.count_accesses:
            self._count_access(addr)
        if hit is None:
            self._count_unclaimed(addr)
            return (1 << (8 * size)) - 1
        dev, base, name = hit
        return self.call(dev.read, addr - base, size, None, name, addr) & ((1 << (8 * size)) - 1)

    def write(self, addr, size, value):
        hit = self._lookup(addr)
        if self.count_accesses:
            self._count_access(addr)
        if hit is None:
            self._count_unclaimed(addr)
            return
        dev, base, name = hit
        self.call(dev.write, addr - base, size, value, name, addr)

    def call(self, fn, offset, size, value, name, addr):
        """The one place a device is called: ``fn`` is its read (``value`` None)
        or write, called under the bus lock. An exception from the device is
        counted in ``device_errors`` and raised as a :class:`DeviceError` that
        names the device, the access and the address; the bus stays usable."""
        lock = self.lock
        lock.acquire()              # cheaper than `with` on this path
        try:
            return fn(offset, size) if value is None else fn(offset, size, value)
        except Exception as e:
            self.device_errors += 1
            what = ('read' if value is None else f'write of {value:#x}' if isinstance(value, int)
                    else f'write of {len(value)} bytes')
            raise DeviceError(f'{name} raised {type(e).__name__}: {e} on a {size}-byte '
                              f'{what} at {self.kind} {addr:#x}', self.kind, addr) from e
        finally:
            lock.release()


#: Port-I/O access sizes: (struct, mask).
_PIO_SIZES = {1: (_UNPACK[1], 0xFF), 2: (_UNPACK[2], 0xFFFF), 4: (_UNPACK[4], 0xFFFFFFFF)}


class PioBus(_Bus):
    """The 64 KiB port-I/O space; lookups go through a per-port table.

    A second table holds each port's bound ``read`` and ``write`` (taken once,
    at registration), its base and name, so that an exit for one item at a
    claimed port costs one lookup and one device call under the bus lock."""
    kind = 'port'

    def _rebuild(self):
        table, handlers = {}, {}
        for b, e, dev, name in self._ranges:
            # a part may also take a run of byte writes at once (write_bytes)
            # and answer a read before buffered writes are applied (read_ahead)
            handler = (dev.read, dev.write, b, name, getattr(dev, 'write_bytes', None),
                       getattr(dev, 'read_ahead', None))
            for port in range(b, min(e, 0x10000)):
                table[port] = (dev, b, name)
                handlers[port] = handler
        self._table = table
        self._lookup = table.get
        self._handler = handlers.get

    def __init__(self, lock=None):
        super().__init__(lock)
        self._rebuild()

    def io(self, port, size, count, is_out, buf, off):
        """Serve one KVM_EXIT_IO: ``count`` items (string I/O when > 1) of
        ``size`` bytes at ``buf[off:]``. The one place string I/O is handled."""
        h = self._handler(port)
        access = _PIO_SIZES.get(size)
        if h is None or count != 1 or access is None or self.count_accesses:
            self._items(port, size, count, is_out, buf, off)
            return
        st, mask = access
        if is_out:
            self.call(h[1], port - h[2], size, st.unpack_from(buf, off)[0], h[3], port)
        else:
            st.pack_into(buf, off, self.call(h[0], port - h[2], size, None, h[3], port) & mask)

    def read_ahead(self, port, pending):
        """A one-byte read at ``port`` answered while ``pending`` writes (to
        any address) still wait in KVM's coalesced ring: the device part's
        ``read_ahead(offset, pending)`` gives the value the read would return
        after they were applied, or None when they might change it (then the
        caller drains the ring and serves the read as usual). None too for a
        part without read_ahead and while accesses are counted."""
        h = self._handler(port)
        if h is None or h[5] is None or self.count_accesses:
            return None
        lock = self.lock
        lock.acquire()
        try:
            return h[5](port - h[2], pending)
        except Exception as e:
            self.device_errors += 1
            raise DeviceError(f'{h[3]} raised {type(e).__name__}: {e} on a 1-byte read at '
                              f'{self.kind} {port:#x}', self.kind, port) from e
        finally:
            lock.release()

    def _items(self, port, size, count, is_out, buf, off):
        # string I/O, unclaimed ports, counted accesses: item by item
        st = _UNPACK[size]
        if is_out:
            for i in range(count):
                self.write(port, size, st.unpack_from(buf, off + i * size)[0])
        else:
            for i in range(count):
                st.pack_into(buf, off + i * size, self.read(port, size))


class MmioBus(_Bus):
    """Guest-physical addresses no memory slot backs."""
    kind = 'mmio'

    def _lookup(self, addr):
        return self.find(addr)

    def odd_access(self, addr, length, is_write, run_map):
        """An access of a size no device decodes: a read gives all ones, a
        write is dropped; both count as unclaimed."""
        self._count_unclaimed(addr)
        if not is_write:
            run_map[40:40 + length] = b'\xff' * length

# ---------------------------------------------------------------------------
# Kicking a vCPU out of KVM_RUN
# ---------------------------------------------------------------------------

#: The signal kvmlite sends a vCPU thread to make KVM_RUN return (with
#: immediate_exit set first, so a kick that lands before the ioctl is not lost).
KICK_SIGNAL = signal.SIGRTMIN + 3
_kick_installed = False


def _install_kick_handler():
    """Give KICK_SIGNAL a handler that does nothing, without SA_RESTART, so it
    interrupts KVM_RUN in any thread. The handler is libc's ``getpid``: async-
    signal-safe, ignores its argument, and needs no GIL (a Python handler
    could only be installed from the main thread)."""
    global _kick_installed
    if _kick_installed:
        return
    class sigaction_t(ctypes.Structure):
        _fields_ = [('sa_handler', ctypes.c_void_p), ('sa_mask', ctypes.c_uint8 * 128),
                    ('sa_flags', ctypes.c_int), ('sa_restorer', ctypes.c_void_p)]
    act = sigaction_t()
    act.sa_handler = ctypes.cast(_libc.getpid, ctypes.c_void_p).value
    if _libc.sigaction(int(KICK_SIGNAL), ctypes.byref(act), None) != 0:
        raise KvmError(ctypes.get_errno(), 'sigaction(KICK_SIGNAL)')
    _kick_installed = True


class _Watchdog:
    """One thread for the whole process that kicks vCPUs at their deadlines.

    A run arms without the lock: it stores its deadline on the vCPU, and only
    a deadline sooner than the thread's next wake-up (or a vCPU it has not
    seen) takes the lock to tell it. While the thread scans, its wake-up reads
    as -inf, so an arm then always tells it. Disarming takes the lock: the
    scan fires under it, so once disarm returns no kick of that run is in
    flight (a run after run with the same timeout costs no thread switch)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._vcpus = set()           # the vCPUs that armed, until closed
        self._thread = None
        self._wake_at = float('inf')  # when the thread looks next by itself

    def arm(self, vcpu, deadline):
        vcpu._deadline = deadline
        if deadline < self._wake_at or not vcpu._watched:
            lock = self._lock
            lock.acquire()
            try:
                vcpu._watched = True
                self._vcpus.add(vcpu)
                if self._thread is None:
                    # a bare thread: threading.Thread.start() waits until the
                    # new thread runs (up to ms on a loaded host, in a first
                    # snippet's run); this one dies with the process
                    self._thread = _thread.start_new_thread(self._loop, ())
                self._cond.notify()
            finally:
                lock.release()

    def disarm(self, vcpu):
        """Returns False if the deadline had already fired (a kick is set)."""
        lock = self._lock
        lock.acquire()
        armed = vcpu._deadline is not None
        vcpu._deadline = None
        lock.release()
        return armed

    def forget(self, vcpu):
        """A closed vCPU: never kicked again."""
        with self._lock:
            vcpu._deadline = None
            self._vcpus.discard(vcpu)

    def _loop(self):
        with self._cond:
            while True:
                self._wake_at = float('-inf')     # an arm during the scan tells us again
                now = time.monotonic()
                soonest = now + 3600
                for v in list(self._vcpus):
                    d = v._deadline
                    if d is None:
                        continue
                    if d <= now:
                        v._deadline = None
                        v.kick('timeout')
                    elif d < soonest:
                        soonest = d
                self._wake_at = soonest
                self._cond.wait(soonest - now)


_watchdog = _Watchdog()
_monotonic, _get_ident = time.monotonic, threading.get_ident   # (run paths)


# ---------------------------------------------------------------------------
# The system: /dev/kvm
# ---------------------------------------------------------------------------

def _missing_kvm_hint(cpuinfo='/proc/cpuinfo'):
    """What to do when /dev/kvm does not exist, for this host's CPU."""
    try:
        with open(cpuinfo) as f:
            info = f.read(65536)
    except OSError:
        info = ''
    flags = set(next((line.split(':', 1)[1].split() for line in info.splitlines()
                      if line.startswith('flags')), ()))
    module = 'kvm_intel' if 'vmx' in flags else 'kvm_amd' if 'svm' in flags else None
    if module is None:
        return ('KVM is not available: this CPU offers no vmx/svm here (in a VM, enable nested '
                'virtualization on the host; on a PC, enable it in the firmware)')
    return f'KVM is not available: load its module (sudo modprobe {module})'


def _group_name(gid):
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _kvm_access_hint(path, mode, gid, group):
    """What to do when ``path`` exists but cannot be opened read-write: join
    the group that owns it if that group exists and may use it, else an ACL."""
    acl = f'sudo setfacl -m u:$USER:rw {path}'
    if group is not None and gid != 0 and mode & 0o060 == 0o060:
        return (f'it belongs to group {group!r}: sudo usermod -aG {group} $USER, then log in '
                f'again (or {acl})')
    return f'no group grants access to it: {acl} (or run as root)'


class Kvm:
    """``/dev/kvm``: capabilities, supported CPUID and MSRs, VM creation."""

    def __init__(self, path='/dev/kvm'):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmError(errno.ENOENT, f'opening {path}', _missing_kvm_hint()) from None
        except PermissionError:
            st = os.stat(path)
            raise KvmError(errno.EACCES, f'opening {path}', _kvm_access_hint(
                path, st.st_mode, st.st_gid, _group_name(st.st_gid))) from None
        try:
            version = _ioctl(self.fd, KVM_GET_API_VERSION, what=f'KVM_GET_API_VERSION on {path}')
            if version != KVM_API_VERSION:
                raise KvmError(errno.EINVAL, 'KVM_GET_API_VERSION',
                               f'the kernel speaks KVM API {version}, kvmlite needs {KVM_API_VERSION}')
        except KvmError:
            os.close(self.fd)           # e.g. a path that is not /dev/kvm
            raise
        self.api_version = version
        self._mmap_size = None
        self._cpuid = None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_extension(self, cap):
        """The value of capability ``cap`` (0 when absent): a :class:`Cap`, its
        name (``'IRQCHIP'`` or ``'KVM_CAP_IRQCHIP'``) or a number."""
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap_number(cap))

    def capabilities(self):
        """{Cap: value} for every capability this kernel reports non-zero;
        a number the kernel reports that :class:`Cap` has no name for is a
        plain int key, so nothing is hidden."""
        return {Cap._value2member_map_.get(n, n): v for n in range(_CAP_PROBE)
                if (v := self.check_extension(n))}

    @property
    def vcpu_mmap_size(self):
        if self._mmap_size is None:
            self._mmap_size = _ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def _cpuid_list(self, request):
        # KVM_MAX_CPUID_ENTRIES (256) at once: each E2BIG retry is another walk
        # of every leaf in KVM (about 2.5 ms here)
        n = 256
        while True:
            buf = kvm_cpuid2(n)()
            buf.nent = n
            try:
                fcntl.ioctl(self.fd, request, buf)
            except OSError as e:
                if e.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise KvmError(e.errno, _IOCTL_NAMES[request]) from None
            return [_copy(buf.entries[i]) for i in range(buf.nent)]

    def supported_cpuid(self):
        """KVM_GET_SUPPORTED_CPUID: a list of kvm_cpuid_entry2 (cached)."""
        if self._cpuid is None:
            self._cpuid = self._cpuid_list(KVM_GET_SUPPORTED_CPUID)
        return [_copy(e) for e in self._cpuid]

    def emulated_cpuid(self):
        return self._cpuid_list(KVM_GET_EMULATED_CPUID)

    def _msr_list(self, request):
        head = kvm_msr_list(0)()
        try:
            fcntl.ioctl(self.fd, request, head)
        except OSError as e:
            if e.errno != errno.E2BIG:
                raise KvmError(e.errno, _IOCTL_NAMES[request]) from None
        buf = kvm_msr_list(head.nmsrs)()
        buf.nmsrs = head.nmsrs
        _ioctl(self.fd, request, buf)
        return list(buf.indices[:buf.nmsrs])

    def msr_index_list(self):
        return self._msr_list(KVM_GET_MSR_INDEX_LIST)

    def msr_feature_index_list(self):
        return self._msr_list(KVM_GET_MSR_FEATURE_INDEX_LIST)

    def recommended_vcpus(self):
        return self.check_extension(Cap.NR_VCPUS) or 4

    def max_vcpus(self):
        return self.check_extension(Cap.MAX_VCPUS) or self.recommended_vcpus()

    def get_msrs(self, indices):
        """KVM_GET_MSRS on /dev/kvm (Cap.GET_MSR_FEATURES): {index: value} of
        feature MSRs (msr_feature_index_list()), what KVM can offer a guest."""
        _require(self, Cap.GET_MSR_FEATURES, 'KVM_GET_MSRS on /dev/kvm')
        return _get_msrs(self.fd, indices, 'is not a feature MSR')

    def mce_cap_supported(self):
        """KVM_X86_GET_MCE_CAP_SUPPORTED: the MCG_CAP bits KVM can emulate,
        the bank count in bits 0-7 (for Vcpu.setup_mce)."""
        _require(self, Cap.MCE, 'KVM_X86_GET_MCE_CAP_SUPPORTED')
        v = u64()
        _ioctl(self.fd, KVM_X86_GET_MCE_CAP_SUPPORTED, v)
        return v.value

    def supported_hv_cpuid(self):
        """KVM_GET_SUPPORTED_HV_CPUID on /dev/kvm: the Hyper-V CPUID leaves."""
        _require(self, Cap.SYS_HYPERV_CPUID, 'KVM_GET_SUPPORTED_HV_CPUID')
        return self._cpuid_list(KVM_GET_SUPPORTED_HV_CPUID)

    def has_attr(self, group, attr):
        """KVM_HAS_DEVICE_ATTR on /dev/kvm (Cap.SYS_ATTRIBUTES), e.g. group 0,
        KVM_X86_XCOMP_GUEST_SUPP."""
        _require(self, Cap.SYS_ATTRIBUTES, 'KVM_HAS_DEVICE_ATTR on /dev/kvm')
        return _attr_call(self.fd, KVM_HAS_DEVICE_ATTR, group, attr)

    def get_attr(self, group, attr):
        """KVM_GET_DEVICE_ATTR on /dev/kvm (Cap.SYS_ATTRIBUTES)."""
        _require(self, Cap.SYS_ATTRIBUTES, 'KVM_GET_DEVICE_ATTR on /dev/kvm')
        return _attr_call(self.fd, KVM_GET_DEVICE_ATTR, group, attr)

    def create_vm(self, **kw):
        return Vm(self, **kw)


def _copy(s):
    c = type(s)()
    ctypes.memmove(ctypes.addressof(c), ctypes.addressof(s), ctypes.sizeof(s))
    return c


# ---------------------------------------------------------------------------
# Guest memory
# ---------------------------------------------------------------------------

PAGE_SIZE = 4096


class MemorySlot:
    """One KVM memory slot: ``size`` bytes of anonymous memory at ``gpa``."""

    def __init__(self, slot, gpa, size, flags):
        self.slot, self.gpa, self.size, self.flags = slot, gpa, size, flags
        self.map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(
            mmap, 'MAP_NORESERVE', 0))
        # the address goes to KVM; the temporary ctypes export is gone at once
        self.addr = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.view = memoryview(self.map)
        self.parts = None           # [(KVM slot id, gpa, size, flags)] while Vm.trap_pages splits it
        self.kept_dirty = set()     # pages logged dirty before a new layout, or written for a trap

    readonly = property(lambda self: bool(self.flags & KVM_MEM_READONLY))
    dirty_logging = property(lambda self: bool(self.flags & KVM_MEM_LOG_DIRTY_PAGES))
    end = property(lambda self: self.gpa + self.size)

    def __repr__(self):
        kind = ' read-only' if self.readonly else ''
        return f'<MemorySlot {self.slot} {self.gpa:#x}-{self.end - 1:#x}{kind}>'


# ---------------------------------------------------------------------------
# Statistics (the binary stats fd, KVM_GET_STATS_FD)
# ---------------------------------------------------------------------------

class Stats:
    """The kernel's VM or vCPU statistics, read by name through the binary
    stats fd (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD")."""

    def __init__(self, fd):
        self.fd = fd
        raw = os.pread(fd, ctypes.sizeof(kvm_stats_header), 0)
        hdr = kvm_stats_header.from_buffer_copy(raw)
        self.id = os.pread(fd, hdr.name_size, hdr.id_offset).split(b'\0')[0].decode()
        dsize = ctypes.sizeof(kvm_stats_desc) + hdr.name_size
        descs = os.pread(fd, dsize * hdr.num_desc, hdr.desc_offset)
        self._data_offset = hdr.data_offset
        self.descriptors = []     # (name, offset, size, flags, exponent)
        end = 0
        for i in range(hdr.num_desc):
            d = kvm_stats_desc.from_buffer_copy(descs, i * dsize)
            name = descs[i * dsize + ctypes.sizeof(kvm_stats_desc):(i + 1) * dsize]
            self.descriptors.append((name.split(b'\0')[0].decode(), d.offset, d.size,
                                     d.flags, d.exponent))
            end = max(end, d.offset + 8 * d.size)
        self._data_size = end

    def read(self):
        """{name: value} now; histograms are lists."""
        data = os.pread(self.fd, self._data_size, self._data_offset)
        out = {}
        for name, off, size, _, _ in self.descriptors:
            vals = struct.unpack_from(f'<{size}Q', data, off)
            out[name] = vals[0] if size == 1 else list(vals)
        return out

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---------------------------------------------------------------------------
# A VM
# ---------------------------------------------------------------------------

class Vm:
    """A KVM virtual machine: memory slots, vCPUs, buses, irqchip, statistics.

    ``Vm`` is also the guest-physical memory interface (``read``, ``write``,
    ``view``, ``ram``) that loaders write through. Closing it closes its
    vCPUs, unmaps memory and closes every fd.
    """

    def __init__(self, kvm, tss_addr=0xFFFBD000):
        self.kvm = kvm
        self.fd = _ioctl(kvm.fd, KVM_CREATE_VM, 0)
        self.slots = []
        self.vcpus = []
        self.lock = threading.RLock()
        self.pio = PioBus(self.lock)
        self.mmio = MmioBus(self.lock)
        self.exit_counts = Counter()       # kvmlite's own count of exits, by ExitReason
        self.irqchip = None                # None, 'kernel' or 'split'
        self._coalesced = []
        self._ahead_last = -1              # the ring's end at the last read answered ahead of it
        self._stats = None
        self._devices = []                 # KVM_CREATE_DEVICE fds, closed with the VM
        self.dirty_ring_size = 0           # bytes per vCPU once enable_dirty_ring() ran
        try:
            # Intel needs a TSS (3 pages) for real mode; KVM ignores it elsewhere
            _ioctl(self.fd, KVM_SET_TSS_ADDR, tss_addr)
        except KvmError:
            pass

    # -- life cycle --
    def close(self):
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        for d in self._devices:
            d.close()
        self._devices.clear()
        if self._stats:
            self._stats.close()
        for s in self.slots:
            s.view.release()
            try:
                s.map.close()
            except BufferError:
                pass   # a caller still holds a view: the memory goes with it
        self.slots.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_extension(self, cap):
        """KVM_CHECK_EXTENSION on the VM (Cap.CHECK_EXTENSION_VM): what this VM
        offers; ``cap`` as in :meth:`Kvm.check_extension`."""
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap_number(cap))

    def enable_cap(self, cap, *args, flags=0):
        _enable_cap(self.fd, cap, args, flags)

    # -- memory slots --
    def add_memory(self, gpa, size, readonly=False, dirty_log=False):
        """Back ``size`` bytes at guest-physical ``gpa`` with a new slot."""
        if self.fd < 0:
            raise KvmliteError('add_memory on a closed Vm: create a new one')
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or gpa < 0:
            raise GuestMemoryError(f'memory at {gpa:#x} of {size:#x} bytes: address and size '
                                   f'must be non-zero multiples of {PAGE_SIZE:#x}')
        if gpa + size > 1 << 64 or size >= 1 << 63:
            raise GuestMemoryError(f'memory at {gpa:#x} of {size:#x} bytes: past the 64-bit '
                                   'guest-physical address space or larger than any host mapping')
        for s in self.slots:
            if gpa < s.end and s.gpa < gpa + size:
                raise GuestMemoryError(f'memory at {gpa:#x}-{gpa + size - 1:#x} overlaps {s}')
        used = self._slot_ids()
        slot_id = next(i for i in range(len(used) + 1) if i not in used)
        flags = (KVM_MEM_READONLY if readonly else 0) | (KVM_MEM_LOG_DIRTY_PAGES if dirty_log else 0)
        slot = MemorySlot(slot_id, gpa, size, flags)
        try:
            self._set_region(slot.slot, flags, gpa, size, slot.addr)
        except KvmError:
            slot.view.release()
            slot.map.close()
            raise
        self.slots.append(slot)
        self.slots.sort(key=lambda s: s.gpa)
        return slot

    def _slot_ids(self):
        """Every KVM slot id in use (a split slot's parts too)."""
        used = set()
        for s in self.slots:
            used.add(s.slot)
            used.update(p[0] for p in s.parts or ())
        return used

    def remove_memory(self, slot):
        for part in slot.parts or [(slot.slot, slot.gpa, slot.size, slot.flags)]:
            self._set_region(part[0], 0, part[1], 0, 0)
        self.slots.remove(slot)
        slot.view.release()
        try:
            slot.map.close()
        except BufferError:
            pass

    def set_dirty_log(self, slot, enabled=True):
        """Turn KVM_MEM_LOG_DIRTY_PAGES on or off for an existing slot; its
        memory stays (api.rst, KVM_SET_USER_MEMORY_REGION: the flags of a
        slot may change in place). A log turned on starts clean."""
        flags = (slot.flags | KVM_MEM_LOG_DIRTY_PAGES) if enabled else (slot.flags & ~KVM_MEM_LOG_DIRTY_PAGES)
        if flags != slot.flags:
            if slot.parts:
                parts = []
                for sid, gpa, size, f in slot.parts:
                    f = (f | KVM_MEM_LOG_DIRTY_PAGES) if enabled else (f & ~KVM_MEM_LOG_DIRTY_PAGES)
                    self._set_region(sid, f, gpa, size, slot.addr + gpa - slot.gpa)
                    parts.append((sid, gpa, size, f))
                slot.parts = parts
            else:
                self._set_region(slot.slot, flags, slot.gpa, slot.size, slot.addr)
            slot.flags = flags
            slot.kept_dirty.clear()

    def _set_region(self, slot, flags, gpa, size, addr):
        r = kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=gpa,
                                        memory_size=size, userspace_addr=addr)
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, r)

    @property
    def ram(self):
        """[(gpa, size)] of the writable slots, for loaders and e820 maps."""
        return [(s.gpa, s.size) for s in self.slots if not s.readonly]

    def _slot(self, gpa, size):
        if gpa < 0 or size < 0:
            raise GuestMemoryError(f'guest-physical range at {gpa:#x} of {size} bytes: address and '
                                   'size must not be negative')
        if self.fd < 0:
            raise KvmliteError('guest memory of a closed Vm: create a new one')
        for s in self.slots:
            if s.gpa <= gpa and gpa + size <= s.end:
                return s
        raise GuestMemoryError(f'guest-physical {gpa:#x}-{gpa + max(size, 1) - 1:#x} is not '
                               f'inside one memory slot (slots: {self.slots})')

    def view(self, gpa, size):
        """A zero-copy writable memoryview of guest memory (valid until close)."""
        s = self._slot(gpa, size)
        return s.view[gpa - s.gpa:gpa - s.gpa + size]

    def read(self, gpa, size):
        return bytes(self.view(gpa, size))

    def write(self, gpa, data):
        self.view(gpa, len(data))[:] = data

    def read_int(self, gpa, size):
        return int.from_bytes(self.view(gpa, size), 'little')

    def write_int(self, gpa, size, value):
        self.view(gpa, size)[:] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, 'little')

    def read_struct(self, gpa, ctype):
        return ctype.from_buffer_copy(self.view(gpa, ctypes.sizeof(ctype)))

    def write_struct(self, gpa, obj):
        self.write(gpa, bytes(obj))

    # -- dirty log --
    def get_dirty_log(self, slot):
        """Guest-physical addresses of the pages written since the last call
        (KVM_GET_DIRTY_LOG; the slot must have ``dirty_log=True``). A slot
        that trap_pages() split answers for all its parts, with the pages
        logged before a new layout and those written for a trap."""
        if not slot.parts and not slot.kept_dirty:
            return self._dirty_log(slot.slot, slot.gpa, slot.size)
        pages = set(slot.kept_dirty)
        slot.kept_dirty.clear()
        for sid, gpa, size, flags in slot.parts or [(slot.slot, slot.gpa, slot.size, slot.flags)]:
            if flags & KVM_MEM_LOG_DIRTY_PAGES:
                pages.update(self._dirty_log(sid, gpa, size))
        return sorted(pages)

    def _dirty_log(self, slot_id, gpa, size):
        pages = size // PAGE_SIZE
        bitmap = ctypes.create_string_buffer(((pages + 63) // 64) * 8)
        log = kvm_dirty_log(slot=slot_id, dirty_bitmap=ctypes.addressof(bitmap))
        _ioctl(self.fd, KVM_GET_DIRTY_LOG, log, vm=self)
        return _bitmap_pages(bitmap.raw, pages, gpa)

    # -- pages out of normal RAM (a debugger's watchpoints) --
    def trap_pages(self, traps):
        """Lay the RAM slots out so that each page in ``traps`` ({page gpa:
        'write' or 'access'}) leaves normal RAM, and every page not in it is
        back (``{}`` undoes it all). A 'write' page gets a KVM_MEM_READONLY
        slot of its own: guest reads and instruction fetches are RAM, guest
        writes exit as KVM_EXIT_MMIO (api.rst, KVM_SET_USER_MEMORY_REGION,
        KVM_CAP_READONLY_MEM); an 'access' page (and a 'write' page where
        KVM has no read-only slots) gets no slot, so every access exits as
        KVM_EXIT_MMIO. The caller completes those accesses in the slot's
        memory (``mark_written`` for the writes) and has every vCPU out of
        KVM_RUN meanwhile. ``slots`` does not change: the memory is the same,
        only KVM's view of it is cut in parts; the dirty log goes on across
        layouts (what KVM logged is kept before its regions are replaced).
        Neighbouring pages of one kind share a slot. In a read-only slot an
        'access' page is cut out and a 'write' page needs nothing (its writes
        exit already). Pages outside RAM slots are refused (GuestMemoryError)."""
        readonly_ok = None
        for page in traps:
            s = self._slot(page, PAGE_SIZE)
            if page % PAGE_SIZE or traps[page] not in ('write', 'access'):
                raise GuestMemoryError(f'page {page:#x} ({traps[page]!r}) is not a page of RAM '
                                       "to trap for 'write' or 'access'")
        for s in self.slots:
            mine = [p for p in traps if s.gpa <= p < s.end and not (
                s.readonly and traps[p] == 'write')]
            if not mine and not s.parts:
                continue
            if readonly_ok is None:
                readonly_ok = self.check_extension(Cap.READONLY_MEM) > 0
            want, at = [], s.gpa
            for p in sorted(mine):
                if p > at:
                    want.append((at, p - at, s.flags))
                if traps[p] == 'write' and readonly_ok:
                    last = want[-1] if want else None
                    if last and last[0] + last[1] == p and last[2] == s.flags | KVM_MEM_READONLY:
                        want[-1] = (last[0], last[1] + PAGE_SIZE, last[2])
                    else:
                        want.append((p, PAGE_SIZE, s.flags | KVM_MEM_READONLY))
                at = p + PAGE_SIZE
            if at < s.end:
                want.append((at, s.end - at, s.flags))
            have = s.parts or [(s.slot, s.gpa, s.size, s.flags)]
            if [w for w in want] == [h[1:] for h in have]:
                continue
            if s.flags & KVM_MEM_LOG_DIRTY_PAGES:
                for sid, gpa, size, flags in have:
                    s.kept_dirty.update(self._dirty_log(sid, gpa, size))
            for sid, gpa, _, _ in have:
                self._set_region(sid, 0, gpa, 0, 0)
            used = self._slot_ids() - {h[0] for h in have}
            free = (i for i in range(1 << 15) if i not in used and i != s.slot)
            parts = []
            for gpa, size, flags in want:
                sid = s.slot if not parts and gpa == s.gpa else next(free)
                self._set_region(sid, flags, gpa, size, s.addr + gpa - s.gpa)
                parts.append((sid, gpa, size, flags))
            s.parts = parts if parts != [(s.slot, s.gpa, s.size, s.flags)] else None

    def mark_written(self, gpa):
        """The VMM wrote guest memory at ``gpa`` for the guest (a trapped
        page's write): the next get_dirty_log() reports its page."""
        s = self._slot(gpa, 1)
        if s.flags & KVM_MEM_LOG_DIRTY_PAGES:
            s.kept_dirty.add(gpa & ~(PAGE_SIZE - 1))

    def clear_dirty_log(self, slot, first_page=0, num_pages=None):
        """KVM_CLEAR_DIRTY_LOG (needs Cap.MANUAL_DIRTY_LOG_PROTECT2 enabled)."""
        num_pages = slot.size // PAGE_SIZE - first_page if num_pages is None else num_pages
        bitmap = ctypes.create_string_buffer(b'\xff' * (((num_pages + 63) // 64) * 8))
        c = kvm_clear_dirty_log(slot=slot.slot, num_pages=num_pages, first_page=first_page,
                                dirty_bitmap=ctypes.addressof(bitmap))
        _ioctl(self.fd, KVM_CLEAR_DIRTY_LOG, c)

    # -- vCPUs --
    def create_vcpu(self, index=None):
        index = len(self.vcpus) if index is None else index
        v = Vcpu(self, index)
        self.vcpus.append(v)
        return v

    # -- irqchip, interrupts, timers --
    def create_irqchip(self):
        """In-kernel PIC, IOAPIC and local APICs (before creating vCPUs)."""
        _ioctl(self.fd, KVM_CREATE_IRQCHIP, vm=self)
        self.irqchip = 'kernel'

    def create_split_irqchip(self, ioapic_pins=24):
        """In-kernel local APICs only; PIC and IOAPIC in user space."""
        self.enable_cap(Cap.SPLIT_IRQCHIP, ioapic_pins)
        self.irqchip = 'split'

    def create_pit2(self, flags=KVM_PIT_SPEAKER_DUMMY):
        _ioctl(self.fd, KVM_CREATE_PIT2, kvm_pit_config(flags=flags), vm=self)

    def irq_line(self, irq, level):
        _ioctl(self.fd, KVM_IRQ_LINE, kvm_irq_level(irq=irq, level=level), vm=self)

    def irq_line_status(self, irq, level):
        """KVM_IRQ_LINE_STATUS: returns the status (>0 delivered, 0 masked or
        coalesced, <0 error)."""
        lv = kvm_irq_level(irq=irq, level=level)
        _ioctl(self.fd, KVM_IRQ_LINE_STATUS, lv, vm=self)
        return ctypes.c_int32(lv.irq).value

    def get_irqchip(self, chip_id):
        c = kvm_irqchip(chip_id=chip_id)
        _ioctl(self.fd, KVM_GET_IRQCHIP, c, vm=self)
        return c

    def set_irqchip(self, chip):
        _ioctl(self.fd, KVM_SET_IRQCHIP, chip, vm=self)

    def get_pit2(self):
        p = kvm_pit_state2()
        _ioctl(self.fd, KVM_GET_PIT2, p, vm=self)
        return p

    def set_pit2(self, state):
        _ioctl(self.fd, KVM_SET_PIT2, state, vm=self)

    def signal_msi(self, address, data):
        """Deliver an MSI message; returns >0 when delivered, 0 when blocked."""
        return _ioctl(self.fd, KVM_SIGNAL_MSI, kvm_msi(address_lo=address & 0xFFFFFFFF,
                                                        address_hi=address >> 32, data=data),
                      vm=self)

    def set_gsi_routing(self, entries):
        """``entries``: kvm_irq_routing_entry values (see :func:`route_irqchip`)."""
        r = kvm_irq_routing(len(entries))(nr=len(entries))
        for i, e in enumerate(entries):
            r.entries[i] = e
        _ioctl(self.fd, KVM_SET_GSI_ROUTING, r, vm=self)

    def irqfd(self, fd, gsi, deassign=False, resamplefd=None):
        flags = (KVM_IRQFD_FLAG_DEASSIGN if deassign else 0) | \
                (KVM_IRQFD_FLAG_RESAMPLE if resamplefd is not None else 0)
        _ioctl(self.fd, KVM_IRQFD, kvm_irqfd(fd=fd, gsi=gsi, flags=flags,
                                              resamplefd=resamplefd or 0), vm=self)

    def ioeventfd(self, fd, addr, length, pio=False, datamatch=None, deassign=False):
        flags = (KVM_IOEVENTFD_FLAG_PIO if pio else 0) | \
                (KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0) | \
                (KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        _ioctl(self.fd, KVM_IOEVENTFD, kvm_ioeventfd(datamatch=datamatch or 0, addr=addr,
                                                      len=length, fd=fd, flags=flags))

    def coalesce(self, addr, size, pio=False):
        """Let KVM buffer guest writes to ``addr``..``addr+size`` in a ring
        instead of exiting for each: for write-only registers whose writes need
        no immediate answer. The run loop hands the buffered writes to the bus,
        in order, before it handles any other exit (api.rst, "KVM_(UN)REGISTER_
        COALESCED_MMIO": the next access that exits processes the ring first),
        with one exception: a one-byte port read whose bus part answers
        ``read_ahead(offset, pending)`` with a value, which it must only do
        when the ``pending`` waiting writes cannot change that value. Fewer
        than COALESCED_BATCH writes may wait so; a second read answered so
        with no write since drains the ring instead."""
        z = kvm_coalesced_mmio_zone(addr=addr, size=size, pio=1 if pio else 0)
        _ioctl(self.fd, KVM_REGISTER_COALESCED_MMIO, z)
        self._coalesced.append(z)

    def uncoalesce(self, addr, size, pio=False):
        z = kvm_coalesced_mmio_zone(addr=addr, size=size, pio=1 if pio else 0)
        _ioctl(self.fd, KVM_UNREGISTER_COALESCED_MMIO, z)
        self._coalesced = [c for c in self._coalesced
                           if (c.addr, c.size, c.pio) != (z.addr, z.size, z.pio)]

    def get_clock(self):
        c = kvm_clock_data()
        _ioctl(self.fd, KVM_GET_CLOCK, c)
        return c

    def set_clock(self, clock_ns, flags=0):
        _ioctl(self.fd, KVM_SET_CLOCK, kvm_clock_data(clock=clock_ns, flags=flags))

    def set_identity_map_addr(self, addr):
        _ioctl(self.fd, KVM_SET_IDENTITY_MAP_ADDR, u64(addr))

    def set_msr_filter(self, ranges, default_allow=True):
        """KVM_X86_SET_MSR_FILTER. ``ranges``: [(flags, base, nmsrs, bitmap
        bytes)] where a set bit allows the access in ``flags``. Denied accesses
        exit to user space when Cap.X86_USER_SPACE_MSR is enabled with
        KVM_MSR_EXIT_REASON_FILTER."""
        f = kvm_msr_filter(flags=KVM_MSR_FILTER_DEFAULT_ALLOW if default_allow
                           else KVM_MSR_FILTER_DEFAULT_DENY)
        keep = []
        for i, (flags, base, nmsrs, bitmap) in enumerate(ranges):
            buf = ctypes.create_string_buffer(bytes(bitmap), max(len(bitmap), (nmsrs + 7) // 8))
            keep.append(buf)
            f.ranges[i] = kvm_msr_filter_range(flags=flags, nmsrs=nmsrs, base=base,
                                               bitmap=ctypes.addressof(buf))
        _ioctl(self.fd, KVM_X86_SET_MSR_FILTER, f)

    # -- the rest of the VM API (Documentation/virt/kvm/api.rst, section 4) --
    def create_device(self, type_, test=False):
        """KVM_CREATE_DEVICE: a :class:`Device` of KVM_DEV_TYPE_* ``type_`` (a
        number or a name, 'VFIO' on x86). ``test=True`` only asks whether KVM
        could create one: True or False, nothing created."""
        _require(self, Cap.DEVICE_CTRL, 'KVM_CREATE_DEVICE')
        c = kvm_create_device(type=_device_type(type_), flags=KVM_CREATE_DEVICE_TEST if test else 0)
        try:
            _ioctl(self.fd, KVM_CREATE_DEVICE, c, vm=self)
        except KvmError as e:
            if test and e.errno == errno.ENODEV:
                return False
            raise
        if test:
            return True
        d = Device(c.fd, c.type)
        self._devices.append(d)
        return d

    def has_attr(self, group, attr):
        """KVM_HAS_DEVICE_ATTR on the VM (Cap.VM_ATTRIBUTES)."""
        _require(self, Cap.VM_ATTRIBUTES, 'KVM_HAS_DEVICE_ATTR on a VM')
        return _attr_call(self.fd, KVM_HAS_DEVICE_ATTR, group, attr, vm=self)

    def get_attr(self, group, attr):
        _require(self, Cap.VM_ATTRIBUTES, 'KVM_GET_DEVICE_ATTR on a VM')
        return _attr_call(self.fd, KVM_GET_DEVICE_ATTR, group, attr, vm=self)

    def set_attr(self, group, attr, value):
        _require(self, Cap.VM_ATTRIBUTES, 'KVM_SET_DEVICE_ATTR on a VM')
        _attr_call(self.fd, KVM_SET_DEVICE_ATTR, group, attr, value, vm=self)

    def enable_dirty_ring(self, size=1 << 16):
        """Log written pages in a per-vCPU ring instead of the slot bitmaps
        (KVM_CAP_DIRTY_LOG_RING): ``size`` bytes per vCPU (a power of two,
        16 bytes an entry), before any vCPU exists. Slots still need
        ``dirty_log=True``; :meth:`harvest_dirty_ring` then returns the pages
        written, in the order each vCPU wrote them, with no bitmap to scan."""
        if self.vcpus:
            raise KvmliteError('enable_dirty_ring before creating vCPUs: each vCPU maps its ring')
        cap = Cap.DIRTY_LOG_RING_ACQ_REL if self.check_extension(Cap.DIRTY_LOG_RING_ACQ_REL) \
            else Cap.DIRTY_LOG_RING
        limit = self.check_extension(cap)
        if not limit:
            _require(self, Cap.DIRTY_LOG_RING, 'enable_dirty_ring')
        if size & (size - 1) or not PAGE_SIZE <= size <= limit:
            raise ValueError(f'dirty ring size {size}: a power of two from {PAGE_SIZE} to {limit}')
        self.enable_cap(cap, size)
        self.dirty_ring_size = size

    def harvest_dirty_ring(self):
        """The guest-physical pages written since the last harvest, each once,
        in the order of their first write (vCPU by vCPU); the entries are
        handed back to KVM (KVM_RESET_DIRTY_RINGS) so the pages are logged
        again. (KVM may push a page twice, e.g. for emulated writes.)"""
        if not self.dirty_ring_size:
            raise KvmliteError('harvest_dirty_ring needs enable_dirty_ring() first')
        slots = {s.slot: s.gpa for s in self.slots}
        for s in self.slots:
            slots.update((sid, gpa) for sid, gpa, _, _ in s.parts or ())
        out = {}
        for v in self.vcpus:
            for slot, offset in v._harvest_ring():
                gpa = slots.get(slot & 0xFFFF)
                if gpa is not None:
                    out.setdefault(gpa + offset * PAGE_SIZE, None)
        self.reset_dirty_rings()
        return list(out)

    def reset_dirty_rings(self):
        """KVM_RESET_DIRTY_RINGS: re-protect the harvested pages; returns how many."""
        return _ioctl(self.fd, KVM_RESET_DIRTY_RINGS, vm=self)

    def set_pmu_event_filter(self, events, action='deny', fixed_counter_bitmap=0, flags=0):
        """KVM_SET_PMU_EVENT_FILTER: ``events`` (event select | unit mask << 8,
        as in IA32_PERFEVTSELx) the guest may not count (``action='deny'``) or
        the only ones it may (``'allow'``)."""
        _require(self, Cap.PMU_EVENT_FILTER, 'KVM_SET_PMU_EVENT_FILTER')
        acts = {'allow': KVM_PMU_EVENT_ALLOW, 'deny': KVM_PMU_EVENT_DENY}
        if action not in acts:
            raise ValueError(f"PMU filter action {action!r}: 'allow' or 'deny'")
        f = kvm_pmu_event_filter(len(events))(action=acts[action], nevents=len(events),
                                              fixed_counter_bitmap=fixed_counter_bitmap, flags=flags)
        for i, e in enumerate(events):
            f.events[i] = _check_u64('PMU event', e)
        _ioctl(self.fd, KVM_SET_PMU_EVENT_FILTER, f, vm=self)

    def set_tsc_khz(self, khz):
        """KVM_SET_TSC_KHZ on the VM: the TSC frequency that vCPUs created
        after it start with (each may still set its own)."""
        _require(self, Cap.VM_TSC_CONTROL, 'KVM_SET_TSC_KHZ on a VM')
        _ioctl(self.fd, KVM_SET_TSC_KHZ, _check_u64('TSC kHz', khz), vm=self)

    def get_tsc_khz(self):
        """KVM_GET_TSC_KHZ on the VM: the frequency new vCPUs start with."""
        _require(self, Cap.VM_TSC_CONTROL, 'KVM_GET_TSC_KHZ on a VM')
        return _ioctl(self.fd, KVM_GET_TSC_KHZ, vm=self)

    def set_boot_cpu_id(self, index):
        """KVM_SET_BOOT_CPU_ID: which vCPU is the BSP (before creating vCPUs)."""
        _require(self, Cap.SET_BOOT_CPU_ID, 'KVM_SET_BOOT_CPU_ID')
        _ioctl(self.fd, KVM_SET_BOOT_CPU_ID, index, vm=self)

    def reinject_control(self, pit_reinject):
        """KVM_REINJECT_CONTROL: whether the in-kernel PIT re-injects the
        ticks a guest missed (the default) or drops them."""
        _require(self, Cap.REINJECT_CONTROL, 'KVM_REINJECT_CONTROL')
        _ioctl(self.fd, KVM_REINJECT_CONTROL, kvm_reinject_control(pit_reinject=bool(pit_reinject)),
               vm=self)

    def set_nr_mmu_pages(self, pages):
        """KVM_SET_NR_MMU_PAGES: the most shadow-MMU pages KVM may use for this VM."""
        _ioctl(self.fd, KVM_SET_NR_MMU_PAGES, pages, vm=self)

    def get_nr_mmu_pages(self):
        """KVM_GET_NR_MMU_PAGES (deprecated by the kernel, still answered)."""
        return _ioctl(self.fd, KVM_GET_NR_MMU_PAGES, vm=self)

    def create_pit(self):
        """KVM_CREATE_PIT: the first in-kernel PIT (create_pit2 is the one to use)."""
        _ioctl(self.fd, KVM_CREATE_PIT, vm=self)

    def get_pit(self):
        p = kvm_pit_state()
        _ioctl(self.fd, KVM_GET_PIT, p, vm=self)
        return p

    def set_pit(self, state):
        _ioctl(self.fd, KVM_SET_PIT, state, vm=self)

    def hyperv_eventfd(self, conn_id, fd, deassign=False):
        """KVM_HYPERV_EVENTFD: signal ``fd`` when the guest posts to Hyper-V
        connection ``conn_id``."""
        _require(self, Cap.HYPERV_EVENTFD, 'KVM_HYPERV_EVENTFD')
        _ioctl(self.fd, KVM_HYPERV_EVENTFD, kvm_hyperv_eventfd(
            conn_id=conn_id, fd=fd, flags=KVM_HYPERV_EVENTFD_DEASSIGN if deassign else 0), vm=self)

    def xen_hvm_config(self, flags=0, msr=0, blob_addr_32=0, blob_addr_64=0, blob_size_32=0,
                       blob_size_64=0):
        """KVM_XEN_HVM_CONFIG: Xen HVM hypercall page MSR and the features
        (KVM_XEN_HVM_CONFIG_*) KVM handles in the kernel."""
        _require(self, Cap.XEN_HVM, 'KVM_XEN_HVM_CONFIG')
        _ioctl(self.fd, KVM_XEN_HVM_CONFIG, kvm_xen_hvm_config(
            flags=flags, msr=msr, blob_addr_32=blob_addr_32, blob_addr_64=blob_addr_64,
            blob_size_32=blob_size_32, blob_size_64=blob_size_64), vm=self)

    def xen_hvm_get_attr(self, type_):
        _require(self, Cap.XEN_HVM, 'KVM_XEN_HVM_GET_ATTR')
        a = kvm_xen_hvm_attr(type=type_)
        _ioctl(self.fd, KVM_XEN_HVM_GET_ATTR, a, vm=self)
        return a

    def xen_hvm_set_attr(self, attr):
        _require(self, Cap.XEN_HVM, 'KVM_XEN_HVM_SET_ATTR')
        _ioctl(self.fd, KVM_XEN_HVM_SET_ATTR, attr, vm=self)

    def xen_hvm_evtchn_send(self, port, vcpu, priority=0):
        _require(self, Cap.XEN_HVM, 'KVM_XEN_HVM_EVTCHN_SEND')
        _ioctl(self.fd, KVM_XEN_HVM_EVTCHN_SEND,
               kvm_irq_routing_xen_evtchn(port=port, vcpu=vcpu, priority=priority), vm=self)

    def set_user_memory_region2(self, slot, flags, gpa, size, userspace_addr, guest_memfd=0,
                                guest_memfd_offset=0):
        """KVM_SET_USER_MEMORY_REGION2 (the raw call: add_memory keeps its own
        slots): a slot that may also be backed by a guest_memfd."""
        _require(self, Cap.USER_MEMORY2, 'KVM_SET_USER_MEMORY_REGION2')
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION2, kvm_userspace_memory_region2(
            slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
            userspace_addr=userspace_addr, guest_memfd=guest_memfd,
            guest_memfd_offset=guest_memfd_offset), vm=self)

    def set_memory_attributes(self, gpa, size, attributes):
        """KVM_SET_MEMORY_ATTRIBUTES: e.g. KVM_MEMORY_ATTRIBUTE_PRIVATE on a
        range (the VM's check_extension(MEMORY_ATTRIBUTES) says which exist)."""
        _require(self, Cap.MEMORY_ATTRIBUTES, 'KVM_SET_MEMORY_ATTRIBUTES')
        _ioctl(self.fd, KVM_SET_MEMORY_ATTRIBUTES, kvm_memory_attributes(
            address=gpa, size=size, attributes=attributes), vm=self)

    def create_guest_memfd(self, size, flags=0):
        """KVM_CREATE_GUEST_MEMFD: a file of guest memory the host cannot map
        unless ``flags`` allows it; returns the fd (yours to close)."""
        _require(self, Cap.GUEST_MEMFD, 'KVM_CREATE_GUEST_MEMFD')
        return _ioctl(self.fd, KVM_CREATE_GUEST_MEMFD, kvm_create_guest_memfd(size=size, flags=flags),
                      vm=self)

    def memory_encrypt_op(self, command):
        """KVM_MEMORY_ENCRYPT_OP: ``command`` is the platform's struct (SEV's
        kvm_sev_cmd, TDX's kvm_tdx_cmd), passed as is."""
        _ioctl(self.fd, KVM_MEMORY_ENCRYPT_OP, command, vm=self)

    def memory_encrypt_reg_region(self, addr, size):
        _ioctl(self.fd, KVM_MEMORY_ENCRYPT_REG_REGION, kvm_enc_region(addr=addr, size=size), vm=self)

    def memory_encrypt_unreg_region(self, addr, size):
        _ioctl(self.fd, KVM_MEMORY_ENCRYPT_UNREG_REGION, kvm_enc_region(addr=addr, size=size),
               vm=self)

    # -- statistics --
    def stats(self):
        """The kernel's VM statistics by name (``struct kvm_vm_stat``)."""
        if self._stats is None:
            self._stats = Stats(_ioctl(self.fd, KVM_GET_STATS_FD))
        return self._stats.read()

    def drain_coalesced(self):
        """Apply the writes KVM buffered in the coalesced ring now, from any
        thread (the run loop does it before it serves an exit; a thread that
        reads device state while the vCPUs run calls this first)."""
        ring = self.vcpus[0]._ring if self.vcpus and self._coalesced else None
        if ring is not None:
            first, last = _RING_ENDS.unpack_from(ring, 0)
            if first != last:
                self._drain_coalesced(ring)

    def _drain_coalesced(self, ring):
        """Hand the writes KVM buffered in the coalesced ring to the buses, in
        guest order. ``ring`` is the vCPU mmap's coalesced page: one page for
        the whole VM, so the bus lock is held for the whole drain and two vCPU
        threads never take the same entries. A write to a claimed port goes
        straight to the device's bound write, as in PioBus.io; successive
        byte writes to one port whose part has ``write_bytes(offset, 1, data)``
        go to it as one call (a UART's THR: one sink write for the run).
        ``first`` is stored once, when the drain ends or a device raises."""
        pio, mmio, lock = self.pio, self.mmio, self.lock
        handler = pio._handler
        lock.acquire()
        try:
            first, last = _RING_ENDS.unpack_from(ring, 0)
            if first == last:
                return
            # the entries in guest order (the ring may wrap)
            if first < last:
                raw = bytes(ring[8 + first * 24:8 + last * 24])
            else:
                raw = bytes(ring[8 + first * 24:8 + _COALESCED_MAX * 24]) + bytes(ring[8:8 + last * 24])
            n, i = len(raw) // 24, 0
            # the common batch: byte writes to one port (a polled console's THR),
            # told apart in C: each entry is three u64s (address, len | pio << 32, data)
            words = memoryview(raw).cast('Q')
            addr = words[0]
            h = handler(addr) if words[1] == _PIO_BYTE and not pio.count_accesses else None
            if (h is not None and h[4] is not None and n > 1
                    and words[0::3].tolist().count(addr) == n
                    and words[1::3].tolist().count(_PIO_BYTE) == n):
                try:
                    pio.call(h[4], addr - h[2], 1, raw[16::24], h[3], addr)
                finally:
                    _U32.pack_into(ring, 0, last)
                return
            entries = list(_RING_ENTRY.iter_unpack(raw))
            try:
                while i < n:
                    addr, length, is_pio, value = entries[i]
                    i += 1
                    mask = _COALESCED_MASKS.get(length)
                    if mask is None:
                        continue
                    h = handler(addr) if is_pio and not pio.count_accesses else None
                    if h is None:
                        (pio if is_pio else mmio).write(addr, length, value & mask)
                    elif length == 1 and h[4] is not None and i < n and entries[i][:3] == (addr, 1, 1):
                        run = bytearray((value & 0xFF,))
                        while i < n and entries[i][:3] == (addr, 1, 1):
                            run.append(entries[i][3] & 0xFF)
                            i += 1
                        pio.call(h[4], addr - h[2], 1, run, h[3], addr)
                    else:
                        pio.call(h[1], addr - h[2], length, value & mask, h[3], addr)
            finally:
                _U32.pack_into(ring, 0, (first + i) % _COALESCED_MAX)
        finally:
            lock.release()


_COALESCED_MAX = (PAGE_SIZE - 8) // ctypes.sizeof(kvm_coalesced_mmio)
#: Buffered writes past which the run loop drains the ring at any exit: half
#: of it, so that a guest writing between two exits does not fill it (KVM
#: keeps one entry free: a full ring makes the write an exit of its own)
COALESCED_BATCH = _COALESCED_MAX // 2
_PIO_BYTE = 1 | 1 << 32         # a ring entry's len and pio words for a one-byte port write
_COALESCED_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: (1 << 64) - 1}   # by entry length


def _bitmap_pages(raw, pages, base):
    out = []
    for word_i in range(0, len(raw), 8):
        word = int.from_bytes(raw[word_i:word_i + 8], 'little')
        while word:
            bit = (word & -word).bit_length() - 1
            page = word_i * 8 + bit
            if page < pages:
                out.append(base + page * PAGE_SIZE)
            word &= word - 1
    return out


def route_irqchip(gsi, chip, pin):
    e = kvm_irq_routing_entry(gsi=gsi, type=KVM_IRQ_ROUTING_IRQCHIP)
    e.u.irqchip.irqchip, e.u.irqchip.pin = chip, pin
    return e


def route_msi(gsi, address, data):
    e = kvm_irq_routing_entry(gsi=gsi, type=KVM_IRQ_ROUTING_MSI)
    e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = address & 0xFFFFFFFF, address >> 32, data
    return e


# ---------------------------------------------------------------------------
# A vCPU
# ---------------------------------------------------------------------------

_U32 = struct.Struct('<I')
_U64 = struct.Struct('<Q')
_MSRS_TYPES = {}


def _msrs_type(n):
    """kvm_msrs(n), made once per n (a class per call costs ~100 us)."""
    t = _MSRS_TYPES.get(n)
    if t is None:
        t = _MSRS_TYPES[n] = kvm_msrs(n)
    return t


def _get_msrs(fd, indices, refused):
    """KVM_GET_MSRS on ``fd`` (/dev/kvm's feature MSRs or a vCPU's): {index:
    value}; KVM stops at the first MSR it refuses, named with ``refused``."""
    buf = _msrs_type(len(indices))(nmsrs=len(indices))
    for i, idx in enumerate(indices):
        buf.entries[i].index = idx
    n = _ioctl(fd, KVM_GET_MSRS, buf)
    if n != len(indices):
        raise KvmError(errno.EINVAL, 'KVM_GET_MSRS',
                       f'MSR {indices[n]:#x} {refused} (KVM read {n} of {len(indices)})')
    return {buf.entries[i].index: buf.entries[i].data for i in range(n)}


_DIRTY_OFF = kvm_run.kvm_dirty_regs.offset
_WORD_DIRTY, _WORD_REGS = _DIRTY_OFF // 8, kvm_run.s.offset // 8     # in Vcpu.sync_words
assert _DIRTY_OFF % 8 == kvm_run.s.offset % 8 == kvm_run.exit_reason.offset - 8 == 0
_SYNC_SREGS = ctypes.sizeof(kvm_regs)                         # kvm_sync_regs: regs,
_SYNC_EVENTS = _SYNC_SREGS + ctypes.sizeof(kvm_sregs)         # sregs, events
_IO_EXIT = struct.Struct('<BBHIQ')          # kvm_run.io at offset 32
_MMIO_EXIT = struct.Struct('<Q8sIB')        # kvm_run.mmio at offset 32
_RUN_EXIT_IO = struct.Struct('<I20xBBHIQ')  # exit_reason at 8, then kvm_run.io at 32
_RING_ENDS = struct.Struct('<II')           # kvm_coalesced_mmio_ring: first, last
_RING_ENTRY = struct.Struct('<QIIQ')        # kvm_coalesced_mmio: phys_addr, len, pio, data
_RUN_U = kvm_run.u.offset
_DIRTY_GFN = struct.Struct('<IIQ')          # kvm_dirty_gfn: flags, slot, offset
MCG_STATUS_RIPV, MCG_STATUS_EIPV, MCG_STATUS_MCIP = 1 << 0, 1 << 1, 1 << 2   # Intel SDM 15.3.1.2
MCI_STATUS_VAL, MCI_STATUS_UC, MCI_STATUS_EN = 1 << 63, 1 << 61, 1 << 60      # Intel SDM 15.3.2.2


def _return_exit(vcpu, exit):
    return False


#: run()'s handlers: every exit comes back, the buses serve nothing
_RETURN_EVERY_EXIT = {IoIn: _return_exit, IoOut: _return_exit, MmioRead: _return_exit,
                      MmioWrite: _return_exit}


_REG_NAMES = tuple(f[0] for f in kvm_regs._fields_)


class Vcpu:
    """One virtual CPU: its fd, the mmap of its ``kvm_run``, its registers.

    ``run()`` is one KVM_RUN returning a typed :class:`Exit`;
    ``run_loop()`` keeps running, serving port I/O and MMIO from the VM's
    buses, until an exit that no bus or hook handles.
    """

    def __init__(self, vm, index):
        self.vm = vm
        self.index = index
        self.fd = _ioctl(vm.fd, KVM_CREATE_VCPU, index, vm=vm)
        size = vm.kvm.vcpu_mmap_size
        try:
            self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            os.close(self.fd)
            raise KvmError(e.errno, 'mmap of kvm_run') from None
        self.kvm_run = kvm_run.from_buffer(self._map)      # a view: released in close()
        self._ring = memoryview(self._map)[KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE:
                                           (KVM_COALESCED_MMIO_PAGE_OFFSET + 1) * PAGE_SIZE] \
            if size > KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE else None
        self._thread = None           # the thread inside KVM_RUN, for kicks
        self._deadline = None         # when the watchdog kicks this run (monotonic)
        self._watched = False         # the watchdog knows this vCPU
        self._why = None              # why the last kick was sent
        self._stats = None
        self._buf = None              # the IoIn/MmioRead buffer handed out, until the next run
        self._pending = False         # the last exit was port I/O or MMIO, not yet completed
        self._sync = 0                # the KVM_SYNC_X86_* classes kept in kvm_run.s
        self.sync_regs = self.sync_sregs = self.sync_events = None
        # kvm_run from its start through the synced kvm_regs, as u64s: [1] &
        # 0xFFFFFFFF is exit_reason, [_WORD_DIRTY] kvm_dirty_regs, [_WORD_REGS
        # + i] kvm_regs field i; a subscript costs half a ctypes field's access
        # (released in close())
        self.sync_words = None
        self.cpuid = None             # the entries last given to set_cpuid2()
        self._running = threading.Lock()   # held by the one thread in run_loop
        self._dirty = None            # the dirty ring's mmap, when the VM enabled one
        self._dirty_next = 0          # the next ring entry to harvest
        if vm.dirty_ring_size:
            try:
                self._dirty = mmap.mmap(self.fd, vm.dirty_ring_size, mmap.MAP_SHARED,
                                        mmap.PROT_READ | mmap.PROT_WRITE,
                                        offset=KVM_DIRTY_LOG_PAGE_OFFSET * PAGE_SIZE)
            except OSError as e:
                del self.kvm_run
                if self._ring is not None:
                    self._ring.release()
                self._map.close()
                os.close(self.fd)
                raise KvmError(e.errno, 'mmap of the dirty ring') from None
        # what the last exits touched, for a report on a stalled guest: the
        # port of each of the last 8 port-I/O exits and the address of each of
        # the last 8 MMIO exits (RECENT_EXITS), rings indexed by this vCPU's
        # totals io_exits and mmio_exits; one list store per exit, nothing allocated
        self.io_exits = self.mmio_exits = 0
        self.last_ports, self.last_mmio = [0] * RECENT_EXITS, [0] * RECENT_EXITS
        _install_kick_handler()

    def close(self):
        if self.fd < 0:
            return
        if self._stats:
            self._stats.close()
        self._release_buf()           # an exit the caller still holds must not pin the map
        if self._watched:
            _watchdog.forget(self)
        self.sync_regs = self.sync_sregs = self.sync_events = None
        if self.sync_words is not None:
            self.sync_words.release()
            self.sync_words = None
        self._sync = 0
        del self.kvm_run
        if self._ring is not None:
            self._ring.release()
        self._map.close()
        if self._dirty is not None:
            self._dirty.close()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f'<Vcpu {self.index}>'

    # -- registers --
    def _get(self, request, ctype):
        s = ctype()
        _ioctl(self.fd, request, s)
        return s

    # -- the kvm_run sync area (KVM_CAP_SYNC_REGS) --
    def enable_sync_regs(self, classes=KVM_SYNC_X86_VALID_FIELDS):
        """Keep the register classes ``classes`` (KVM_SYNC_X86_REGS, _SREGS,
        _EVENTS) in kvm_run's sync area (api.rst, "kvm_valid_regs" and
        "kvm_dirty_regs"): KVM copies them out after every exit and loads
        the ones marked dirty before the next entry, so get_regs/set_regs
        (and the sregs and events calls) cost no ioctl. ``sync_regs``,
        ``sync_sregs`` and ``sync_events`` are views of the area; after
        changing one in place, call ``mark_dirty``. Returns False (and
        changes nothing) where KVM does not offer all of ``classes``."""
        if self.vm.check_extension(Cap.SYNC_REGS) & classes != classes:
            return False
        if self._pending:
            raise KvmliteError(f'vCPU {self.index}: an I/O exit is pending; complete_io() first')
        self._flush_sync()
        run = self.kvm_run
        run.kvm_valid_regs, run.kvm_dirty_regs = classes, 0
        m = self._map
        m[1] = 1                       # KVM_RUN with immediate_exit: fills the area, runs nothing
        try:
            fcntl.ioctl(self.fd, KVM_RUN)
        except OSError as e:
            if e.errno not in (errno.EINTR, errno.EAGAIN):
                run.kvm_valid_regs = 0
                raise KvmError(e.errno, 'KVM_RUN (filling the sync area)') from None
        finally:
            m[1] = 0
        base = kvm_run.s.offset
        self._sync = classes
        if classes & KVM_SYNC_X86_REGS:
            self.sync_regs = kvm_regs.from_buffer(m, base)
            if self.sync_words is None:
                self.sync_words = memoryview(m)[:base + ctypes.sizeof(kvm_regs)].cast('Q')
        if classes & KVM_SYNC_X86_SREGS:
            self.sync_sregs = kvm_sregs.from_buffer(m, base + _SYNC_SREGS)
        if classes & KVM_SYNC_X86_EVENTS:
            self.sync_events = kvm_vcpu_events.from_buffer(m, base + _SYNC_EVENTS)
        return True

    def mark_dirty(self, classes):
        """The sync area's ``classes`` were changed in place: KVM loads them
        before the next entry."""
        _U64.pack_into(self._map, _DIRTY_OFF, _U64.unpack_from(self._map, _DIRTY_OFF)[0] | classes)

    def _flush_sync(self):
        """Push dirty sync-area classes with the ioctls, before an ioctl that
        reads or changes state they hold (MSRs, events, translation...)."""
        dirty = self._sync and _U64.unpack_from(self._map, _DIRTY_OFF)[0]
        if not dirty:
            return
        if dirty & KVM_SYNC_X86_SREGS:
            _ioctl(self.fd, KVM_SET_SREGS, self.sync_sregs)
        if dirty & KVM_SYNC_X86_REGS:
            _ioctl(self.fd, KVM_SET_REGS, self.sync_regs)
        if dirty & KVM_SYNC_X86_EVENTS:
            _ioctl(self.fd, KVM_SET_VCPU_EVENTS, self.sync_events)
        _U64.pack_into(self._map, _DIRTY_OFF, 0)

    def _refresh_sync(self):
        """Read the synced classes back after an ioctl that may change them."""
        if self._sync & KVM_SYNC_X86_REGS:
            _ioctl(self.fd, KVM_GET_REGS, self.sync_regs)
        if self._sync & KVM_SYNC_X86_SREGS:
            _ioctl(self.fd, KVM_GET_SREGS, self.sync_sregs)
        if self._sync & KVM_SYNC_X86_EVENTS:
            _ioctl(self.fd, KVM_GET_VCPU_EVENTS, self.sync_events)

    def get_regs(self):
        if self._sync & KVM_SYNC_X86_REGS:
            return _copy(self.sync_regs)
        return self._get(KVM_GET_REGS, kvm_regs)

    def set_regs(self, regs=None, **fields):
        """Set the general registers: a kvm_regs, or fields by name
        (``set_regs(rip=0x1000, rax=1)`` changes only those)."""
        unknown = [k for k in fields if k not in _REG_NAMES]
        if unknown:
            raise TypeError(f'set_regs: no register {", ".join(map(repr, unknown))}: use '
                            f'{", ".join(_REG_NAMES)}')
        values = {k: _check_u64(k, v) for k, v in fields.items()}
        if self._sync & KVM_SYNC_X86_REGS:
            target = self.sync_regs
            if regs is not None and regs is not target:
                ctypes.memmove(ctypes.addressof(target), ctypes.addressof(regs),
                               ctypes.sizeof(kvm_regs))
            for k, v in values.items():
                setattr(target, k, v)
            self.mark_dirty(KVM_SYNC_X86_REGS)
            return
        regs = regs if regs is not None else self.get_regs()
        for k, v in values.items():
            setattr(regs, k, v)
        _ioctl(self.fd, KVM_SET_REGS, regs)

    def get_sregs(self):
        if self._sync & KVM_SYNC_X86_SREGS:
            return _copy(self.sync_sregs)
        return self._get(KVM_GET_SREGS, kvm_sregs)

    def set_sregs(self, sregs):
        if self._sync & KVM_SYNC_X86_SREGS:
            if sregs is not self.sync_sregs:
                ctypes.memmove(ctypes.addressof(self.sync_sregs), ctypes.addressof(sregs),
                               ctypes.sizeof(kvm_sregs))
            self.mark_dirty(KVM_SYNC_X86_SREGS)
            return
        _ioctl(self.fd, KVM_SET_SREGS, sregs)

    def get_fpu(self):
        return self._get(KVM_GET_FPU, kvm_fpu)

    def set_fpu(self, fpu):
        _ioctl(self.fd, KVM_SET_FPU, fpu)

    def get_msrs(self, indices):
        """{index: value} for the MSRs in ``indices``."""
        self._flush_sync()
        return _get_msrs(self.fd, indices, 'cannot be read')

    def set_msrs(self, values):
        buf = _msrs_type(len(values))(nmsrs=len(values))
        for i, (idx, val) in enumerate(values.items()):
            buf.entries[i].index, buf.entries[i].data = idx, val
        self._flush_sync()
        try:
            n = _ioctl(self.fd, KVM_SET_MSRS, buf)
        finally:
            if self._sync:
                self._refresh_sync()      # EFER, for one, is in the sregs
        if n != len(values):
            raise KvmError(errno.EINVAL, 'KVM_SET_MSRS',
                           f'MSR {buf.entries[n].index:#x} cannot be written (KVM wrote {n} of {len(values)})')

    def set_cpuid2(self, entries):
        """KVM_SET_CPUID2; ``cpuid`` keeps what was given (KVM_GET_CPUID2
        does not always return it: kvm_pvm reports other feature bits)."""
        buf = kvm_cpuid2(len(entries))(nent=len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = e
        _ioctl(self.fd, KVM_SET_CPUID2, buf)
        self.cpuid = [_copy(e) for e in entries]

    def get_cpuid2(self, max_entries=256):
        buf = kvm_cpuid2(max_entries)(nent=max_entries)
        _ioctl(self.fd, KVM_GET_CPUID2, buf)
        return [_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_lapic(self):
        s = kvm_lapic_state()
        _ioctl(self.fd, KVM_GET_LAPIC, s, vm=self.vm)
        return s

    def set_lapic(self, lapic):
        self._flush_sync()
        _ioctl(self.fd, KVM_SET_LAPIC, lapic, vm=self.vm)
        self._refresh_sync()              # CR8 is the TPR

    def get_mp_state(self):
        """KVM_GET_MP_STATE as an :class:`MpState` (a number KVM adds later
        stays an int)."""
        n = self._get(KVM_GET_MP_STATE, kvm_mp_state).mp_state
        return MpState._value2member_map_.get(n, n)

    def set_mp_state(self, state):
        self._flush_sync()
        _ioctl(self.fd, KVM_SET_MP_STATE, kvm_mp_state(mp_state=state))
        self._refresh_sync()

    def get_vcpu_events(self):
        if self._sync & KVM_SYNC_X86_EVENTS:
            return _copy(self.sync_events)
        return self._get(KVM_GET_VCPU_EVENTS, kvm_vcpu_events)

    def set_vcpu_events(self, events):
        if self._sync & KVM_SYNC_X86_EVENTS:
            if events is not self.sync_events:
                ctypes.memmove(ctypes.addressof(self.sync_events), ctypes.addressof(events),
                               ctypes.sizeof(kvm_vcpu_events))
            self.mark_dirty(KVM_SYNC_X86_EVENTS)
            return
        _ioctl(self.fd, KVM_SET_VCPU_EVENTS, events)

    def get_debugregs(self):
        return self._get(KVM_GET_DEBUGREGS, kvm_debugregs)

    def set_debugregs(self, dregs):
        _ioctl(self.fd, KVM_SET_DEBUGREGS, dregs)

    def get_xsave(self):
        return self._get(KVM_GET_XSAVE, kvm_xsave)

    def get_xsave2(self):
        size = max(self.vm.check_extension(Cap.XSAVE2), ctypes.sizeof(kvm_xsave))
        buf = ctypes.create_string_buffer(size)
        _ioctl(self.fd, KVM_GET_XSAVE2, buf)
        return buf.raw

    def set_xsave(self, xsave):
        if isinstance(xsave, (bytes, bytearray)):
            xsave = ctypes.create_string_buffer(bytes(xsave), len(xsave))
        _ioctl(self.fd, KVM_SET_XSAVE, xsave)

    def get_xcrs(self):
        return self._get(KVM_GET_XCRS, kvm_xcrs)

    def set_xcrs(self, xcrs):
        _ioctl(self.fd, KVM_SET_XCRS, xcrs)

    def translate(self, linear):
        """KVM_TRANSLATE through the guest's current page tables: a
        :class:`Translation` (physical, valid, writeable, usermode)."""
        t = kvm_translation(linear_address=_check_u64('translate: linear address', linear))
        self._flush_sync()
        _ioctl(self.fd, KVM_TRANSLATE, t)
        return Translation(t.physical_address, bool(t.valid), bool(t.writeable), bool(t.usermode))

    def interrupt(self, vector):
        """KVM_INTERRUPT: queue an external interrupt (no in-kernel PIC)."""
        self._flush_sync()
        _ioctl(self.fd, KVM_INTERRUPT, kvm_interrupt(irq=vector), vm=self.vm)
        self._refresh_sync()

    def nmi(self):
        self._flush_sync()
        _ioctl(self.fd, KVM_NMI)
        self._refresh_sync()

    def smi(self):
        self._flush_sync()
        _ioctl(self.fd, KVM_SMI)
        self._refresh_sync()

    def set_signal_mask(self, signals=None):
        """KVM_SET_SIGNAL_MASK: signals blocked while the guest runs (None: no mask)."""
        if signals is None:
            _ioctl(self.fd, KVM_SET_SIGNAL_MASK, kvm_signal_mask(0)(len=0))
            return
        bits = sum(1 << (int(s) - 1) for s in signals)
        m = kvm_signal_mask(8)(len=8)
        m.sigset[:] = list(bits.to_bytes(8, 'little'))
        _ioctl(self.fd, KVM_SET_SIGNAL_MASK, m)

    def get_tsc_khz(self):
        return _ioctl(self.fd, KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz):
        _ioctl(self.fd, KVM_SET_TSC_KHZ, khz)

    def enable_cap(self, cap, *args, flags=0):
        _enable_cap(self.fd, cap, args, flags)

    def set_guest_debug(self, enable=True, singlestep=False, breakpoints=(), sw_breakpoints=False,
                        block_irq=False):
        """KVM_SET_GUEST_DEBUG. ``breakpoints``: up to four entries, one per
        debug register DR0-DR3: a linear address (an execution breakpoint),
        ``(address, rw, length)`` for a data breakpoint (DR7 R/W 1: writes,
        3: reads or writes; length 1, 2, 4 or 8), or None (that register
        unused); ``sw_breakpoints``: a guest
        ``int3`` exits to user space (KVM_EXIT_DEBUG, exception 3);
        ``block_irq``: no interrupt is delivered while single-stepping
        (KVM_GUESTDBG_BLOCKIRQ, if Cap.SET_GUEST_DEBUG2 lists it)."""
        if len(breakpoints) > 4:
            raise ValueError('x86 has four hardware breakpoints; got %d' % len(breakpoints))
        d = kvm_guest_debug()
        if enable:
            d.control = KVM_GUESTDBG_ENABLE
            if singlestep:
                d.control |= KVM_GUESTDBG_SINGLESTEP
            if sw_breakpoints:
                d.control |= KVM_GUESTDBG_USE_SW_BP
            if block_irq:
                d.control |= KVM_GUESTDBG_BLOCKIRQ
            if breakpoints:
                d.control |= KVM_GUESTDBG_USE_HW_BP
                dr7 = 0
                for i, bp in enumerate(breakpoints):
                    if bp is None:
                        continue
                    addr, rw, length = (bp, 0, 1) if isinstance(bp, int) else bp
                    d.arch.debugreg[i] = addr
                    dr7 |= 1 << (2 * i + 1)        # Gn: enabled
                    dr7 |= (rw | {1: 0, 2: 1, 8: 2, 4: 3}[length] << 2) << (16 + 4 * i)
                d.arch.debugreg[7] = dr7 | 0x400
        _ioctl(self.fd, KVM_SET_GUEST_DEBUG, d)

    def stats(self):
        """The kernel's statistics for this vCPU (``struct kvm_vcpu_stat``)."""
        if self._stats is None:
            self._stats = Stats(_ioctl(self.fd, KVM_GET_STATS_FD))
        return self._stats.read()

    # -- the rest of the vCPU API (Documentation/virt/kvm/api.rst, section 4) --
    def get_sregs2(self):
        """KVM_GET_SREGS2: the special registers with the PAE PDPTRs
        (``flags & KVM_SREGS2_FLAGS_PDPTRS_VALID`` when they are loaded)."""
        _require(self.vm, Cap.SREGS2, 'KVM_GET_SREGS2')
        return self._get(KVM_GET_SREGS2, kvm_sregs2)

    def set_sregs2(self, sregs2):
        _require(self.vm, Cap.SREGS2, 'KVM_SET_SREGS2')
        _ioctl(self.fd, KVM_SET_SREGS2, sregs2, vm=self.vm)

    def setup_mce(self, mcg_cap=None):
        """KVM_X86_SETUP_MCE: give the vCPU machine-check banks; ``mcg_cap``
        is IA32_MCG_CAP (bank count in bits 0-7), by default all KVM supports."""
        _require(self.vm, Cap.MCE, 'KVM_X86_SETUP_MCE')
        if mcg_cap is None:       # the supported MCG_CAP bits and every bank KVM offers
            mcg_cap = self.vm.kvm.mce_cap_supported() & ~0xFF | \
                min(self.vm.check_extension(Cap.MCE), 0xFF)
        _ioctl(self.fd, KVM_X86_SETUP_MCE, u64(mcg_cap), vm=self.vm)

    def set_mce(self, bank, status, addr=0, misc=0, mcg_status=None):
        """KVM_X86_SET_MCE: inject a machine check in ``bank``. An
        uncorrected ``status`` (MCi_STATUS.UC) raises #MC in the guest, which
        needs CR4.MCE; a corrected one is only logged in the bank."""
        _require(self.vm, Cap.MCE, 'KVM_X86_SET_MCE')
        if mcg_status is None:       # a recoverable #MC: restart IP valid, MC in progress
            mcg_status = MCG_STATUS_RIPV | MCG_STATUS_MCIP if status & MCI_STATUS_UC else 0
        _ioctl(self.fd, KVM_X86_SET_MCE, kvm_x86_mce(
            status=_check_u64('MCi_STATUS', status), addr=addr, misc=misc,
            mcg_status=mcg_status, bank=bank), vm=self.vm)

    def get_nested_state(self):
        """KVM_GET_NESTED_STATE: the vCPU's nested (VMX/SVM) state as bytes, a
        kvm_nested_state header then its data, for set_nested_state."""
        _require(self.vm, Cap.NESTED_STATE, 'KVM_GET_NESTED_STATE')
        size = max(self.vm.check_extension(Cap.NESTED_STATE), ctypes.sizeof(kvm_nested_state))
        buf = ctypes.create_string_buffer(size)
        kvm_nested_state.from_buffer(buf).size = size
        _ioctl(self.fd, KVM_GET_NESTED_STATE, buf, vm=self.vm)
        return buf.raw[:kvm_nested_state.from_buffer(buf).size]

    def set_nested_state(self, state):
        _require(self.vm, Cap.NESTED_STATE, 'KVM_SET_NESTED_STATE')
        buf = ctypes.create_string_buffer(bytes(state), len(state))
        _ioctl(self.fd, KVM_SET_NESTED_STATE, buf, vm=self.vm)

    def has_attr(self, group, attr):
        """KVM_HAS_DEVICE_ATTR on the vCPU (Cap.VCPU_ATTRIBUTES)."""
        _require(self.vm, Cap.VCPU_ATTRIBUTES, 'KVM_HAS_DEVICE_ATTR on a vCPU')
        return _attr_call(self.fd, KVM_HAS_DEVICE_ATTR, group, attr, vm=self.vm)

    def get_attr(self, group, attr):
        _require(self.vm, Cap.VCPU_ATTRIBUTES, 'KVM_GET_DEVICE_ATTR on a vCPU')
        return _attr_call(self.fd, KVM_GET_DEVICE_ATTR, group, attr, vm=self.vm)

    def set_attr(self, group, attr, value):
        _require(self.vm, Cap.VCPU_ATTRIBUTES, 'KVM_SET_DEVICE_ATTR on a vCPU')
        _attr_call(self.fd, KVM_SET_DEVICE_ATTR, group, attr, value, vm=self.vm)

    @property
    def tsc_offset(self):
        """The guest TSC's offset from the host's (KVM_VCPU_TSC_CTRL /
        KVM_VCPU_TSC_OFFSET, a u64 that wraps: -n is 2**64 - n)."""
        return self.get_attr(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET)

    @tsc_offset.setter
    def tsc_offset(self, value):
        self.set_attr(KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET, value & ((1 << 64) - 1))

    def kvmclock_ctrl(self):
        """KVM_KVMCLOCK_CTRL: tell the guest (through its kvmclock page) that
        the host paused it, so its soft-lockup watchdog keeps quiet."""
        _require(self.vm, Cap.KVMCLOCK_CTRL, 'KVM_KVMCLOCK_CTRL')
        try:
            _ioctl(self.fd, KVM_KVMCLOCK_CTRL, vm=self.vm)
        except KvmError as e:
            if e.errno == errno.EINVAL:
                raise KvmError(e.errno, 'KVM_KVMCLOCK_CTRL', 'the guest has not enabled '
                               'kvmclock (MSR_KVM_SYSTEM_TIME_NEW)') from None
            raise

    def tpr_access_reporting(self, enabled=True):
        """KVM_TPR_ACCESS_REPORTING: report guest TPR accesses as
        KVM_EXIT_TPR_ACCESS (for a VMM's TPR patching)."""
        _require(self.vm, Cap.VAPIC, 'KVM_TPR_ACCESS_REPORTING')
        c = kvm_tpr_access_ctl(enabled=bool(enabled))
        _ioctl(self.fd, KVM_TPR_ACCESS_REPORTING, c, vm=self.vm)
        return c

    def set_vapic_addr(self, gpa):
        """KVM_SET_VAPIC_ADDR: where KVM mirrors the TPR for a paravirtual
        guest (0 turns it off)."""
        _require(self.vm, Cap.VAPIC, 'KVM_SET_VAPIC_ADDR')
        _ioctl(self.fd, KVM_SET_VAPIC_ADDR, kvm_vapic_addr(vapic_addr=gpa), vm=self.vm)

    def set_cpuid(self, entries):
        """KVM_SET_CPUID, the first CPUID ioctl: kvm_cpuid_entry (or
        kvm_cpuid_entry2, whose index and flags it cannot carry)."""
        buf = kvm_cpuid(len(entries))(nent=len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = kvm_cpuid_entry(function=e.function, eax=e.eax, ebx=e.ebx,
                                             ecx=e.ecx, edx=e.edx)
        _ioctl(self.fd, KVM_SET_CPUID, buf, vm=self.vm)

    def supported_hv_cpuid(self):
        """KVM_GET_SUPPORTED_HV_CPUID on the vCPU (Cap.HYPERV_CPUID)."""
        _require(self.vm, Cap.HYPERV_CPUID, 'KVM_GET_SUPPORTED_HV_CPUID')
        buf = kvm_cpuid2(64)(nent=64)
        _ioctl(self.fd, KVM_GET_SUPPORTED_HV_CPUID, buf, vm=self.vm)
        return [_copy(buf.entries[i]) for i in range(buf.nent)]

    def xen_vcpu_get_attr(self, type_):
        _require(self.vm, Cap.XEN_HVM, 'KVM_XEN_VCPU_GET_ATTR')
        a = kvm_xen_vcpu_attr(type=type_)
        _ioctl(self.fd, KVM_XEN_VCPU_GET_ATTR, a, vm=self.vm)
        return a

    def xen_vcpu_set_attr(self, attr):
        _require(self.vm, Cap.XEN_HVM, 'KVM_XEN_VCPU_SET_ATTR')
        _ioctl(self.fd, KVM_XEN_VCPU_SET_ATTR, attr, vm=self.vm)

    def pre_fault_memory(self, gpa, size):
        """KVM_PRE_FAULT_MEMORY: map ``size`` bytes at ``gpa`` into the
        guest's page tables now, as the vCPU would on first touch."""
        _require(self.vm, Cap.PRE_FAULT_MEMORY, 'KVM_PRE_FAULT_MEMORY')
        r = kvm_pre_fault_memory(gpa=gpa, size=size)
        while r.size:
            left = r.size
            try:
                _ioctl(self.fd, KVM_PRE_FAULT_MEMORY, r, vm=self.vm)
            except KvmError as e:
                if e.errno != errno.EAGAIN:
                    raise
            if r.size == left and r.size:
                raise KvmError(errno.EIO, 'KVM_PRE_FAULT_MEMORY',
                               f'no progress at {r.gpa:#x} ({r.size:#x} bytes left)')

    def get_one_reg(self, reg_id, size=8):
        """KVM_GET_ONE_REG: the register ``reg_id`` (KVM_REG_X86 | ...) as an int."""
        _require(self.vm, Cap.ONE_REG, 'KVM_GET_ONE_REG')
        buf = ctypes.create_string_buffer(size)
        _ioctl(self.fd, KVM_GET_ONE_REG, kvm_one_reg(id=reg_id, addr=ctypes.addressof(buf)),
               f'KVM_GET_ONE_REG({reg_id:#x})', vm=self.vm)
        return int.from_bytes(buf.raw, 'little')

    def set_one_reg(self, reg_id, value, size=8):
        _require(self.vm, Cap.ONE_REG, 'KVM_SET_ONE_REG')
        buf = ctypes.create_string_buffer(value.to_bytes(size, 'little'), size)
        _ioctl(self.fd, KVM_SET_ONE_REG, kvm_one_reg(id=reg_id, addr=ctypes.addressof(buf)),
               f'KVM_SET_ONE_REG({reg_id:#x})', vm=self.vm)

    def get_reg_list(self):
        """KVM_GET_REG_LIST: the ids KVM_GET/SET_ONE_REG take on this vCPU."""
        _require(self.vm, Cap.ONE_REG, 'KVM_GET_REG_LIST')
        head = kvm_reg_list(0)()
        try:
            fcntl.ioctl(self.fd, KVM_GET_REG_LIST, head)
        except OSError as e:
            if e.errno != errno.E2BIG:
                raise KvmError(e.errno, 'KVM_GET_REG_LIST') from None
        buf = kvm_reg_list(head.n)(n=head.n)
        _ioctl(self.fd, KVM_GET_REG_LIST, buf, vm=self.vm)
        return list(buf.reg[:buf.n])

    def _harvest_ring(self):
        """(slot, page offset) of each dirty entry from where the last harvest
        stopped; each is marked for KVM to reset (api.rst, KVM_CAP_DIRTY_LOG_RING)."""
        ring, out = self._dirty, []
        if ring is None:
            return out
        n = len(ring) // ctypes.sizeof(kvm_dirty_gfn)
        while True:
            off = (self._dirty_next % n) * 16
            flags, slot, offset = _DIRTY_GFN.unpack_from(ring, off)
            if not flags & KVM_DIRTY_GFN_F_DIRTY:
                return out
            out.append((slot, offset))
            _U32.pack_into(ring, off, KVM_DIRTY_GFN_F_RESET)
            self._dirty_next += 1

    # -- running --
    @property
    def request_interrupt_window(self):
        return self._map[0]

    @request_interrupt_window.setter
    def request_interrupt_window(self, value):
        self._map[0] = 1 if value else 0

    @property
    def ready_for_interrupt_injection(self):
        return bool(self._map[12])

    @property
    def running(self):
        """True while a thread is in run()/run_loop() on this vCPU."""
        return self._running.locked()

    @property
    def if_flag(self):
        return bool(self._map[13])

    def kick(self, why='kick'):
        """Make KVM_RUN return promptly (from any thread or a signal handler):
        the run returns :class:`Interrupted` with ``why``."""
        self._why = why
        if self.fd < 0:
            return
        self._map[1] = 1                   # immediate_exit: covers a kick before entry
        t = self._thread
        if t is not None:
            try:
                signal.pthread_kill(t, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass

    def _release_buf(self):
        # the buffer of the last IoIn/MmioRead exports the kvm_run mmap: while
        # it lives, mmap.close() refuses; after it, a stale write raises
        if self._buf is not None:
            self._buf.release()
            self._buf = None

    def run(self, timeout=None):
        """One KVM_RUN: returns the exit as a value, whatever it is (the
        buses serve nothing). Buffers in an IoIn or MmioRead point into
        kvm_run and are valid until the next run."""
        return self.run_loop(_RETURN_EVERY_EXIT, timeout)

    @property
    def io_pending(self):
        """True after a run returned a port-I/O or MMIO exit: KVM finishes
        that instruction (a read takes the value in kvm_run) on the next
        KVM_RUN, whatever the registers say by then."""
        return self._pending

    def complete_io(self):
        """Finish the pending port-I/O or MMIO instruction without running
        the guest on, as the KVM API asks before guest state is read or
        changed (api.rst, KVM_EXIT_IO/KVM_EXIT_MMIO: "the corresponding
        operations are complete (and guest state is consistent) only after
        userspace has re-entered the kernel with KVM_RUN"): KVM_RUN with
        ``immediate_exit`` set, which completes the operation and then
        returns EINTR. A read gets what its buffer holds; an instruction
        that makes a further access (a read-modify-write) exits again, and
        that access is completed the same way. Returns how many further
        exits there were."""
        if not self._pending:
            return 0
        if not self._running.acquire(blocking=False):
            raise KvmliteError(f'vCPU {self.index} is running in another thread: '
                               'complete_io() after that run returns')
        try:
            return self._complete_pending()
        finally:
            self._running.release()

    def _complete_pending(self):
        """complete_io() for the thread that runs the vCPU (an exit handler)."""
        if not self._pending:
            return 0
        m, extra = self._map, 0
        # KVM loads dirty sync-area registers before it completes the access:
        # hold them back, and put them back (still dirty) afterwards
        dirty = self._sync and _U64.unpack_from(m, _DIRTY_OFF)[0]
        kept = bytes(m[kvm_run.s.offset:kvm_run.s.offset + _SYNC_EVENTS + 64]) if dirty else b''
        _U64.pack_into(m, _DIRTY_OFF, 0) if dirty else None
        try:
            self._release_buf()
            while True:
                m[1] = 1
                try:
                    fcntl.ioctl(self.fd, KVM_RUN)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        return extra
                    raise KvmError(e.errno, 'KVM_RUN (completing I/O)') from None
                if _U32.unpack_from(m, 8)[0] not in (ExitReason.IO, ExitReason.MMIO):
                    return extra          # KVM stopped for another reason: nothing pends
                extra += 1
                if extra > 1024:
                    raise KvmliteError(f'vCPU {self.index}: the pending I/O instruction '
                                       'keeps making accesses (1024 and counting)')
        finally:
            m[1] = 0
            self._why = None
            self._pending = False
            if dirty:
                base = kvm_run.s.offset
                for cls, lo, hi in ((KVM_SYNC_X86_REGS, 0, _SYNC_SREGS),
                                    (KVM_SYNC_X86_SREGS, _SYNC_SREGS, _SYNC_EVENTS),
                                    (KVM_SYNC_X86_EVENTS, _SYNC_EVENTS, _SYNC_EVENTS + 64)):
                    if dirty & cls:
                        m[base + lo:base + hi] = kept[lo:hi]
                _U64.pack_into(m, _DIRTY_OFF, dirty)

    def _disarm(self, reason):
        """Cancel a timeout; if it fired after KVM_RUN had already returned
        for another reason, drop its kick so the next run is not cut short."""
        if not _watchdog.disarm(self) and reason != ExitReason.INTR:
            self._map[1] = 0
            self._why = None

    def _decode(self, reason):
        m = self._map
        if reason == ExitReason.IO:
            direction, size, port, count, off = _IO_EXIT.unpack_from(m, _RUN_U)
            if direction == KVM_EXIT_IO_OUT:
                return IoOut(port, size, count, bytes(m[off:off + size * count]))
            self._buf = memoryview(m)[off:off + size * count]
            return IoIn(port, size, count, self._buf)
        if reason == ExitReason.MMIO:
            addr, data, length, is_write = _MMIO_EXIT.unpack_from(m, _RUN_U)
            length = min(length, 8)
            if is_write:
                return MmioWrite(addr, data[:length])
            self._buf = memoryview(m)[_RUN_U + 8:_RUN_U + 8 + length]
            return MmioRead(addr, self._buf)
        if reason == ExitReason.HLT:
            return _HLT
        if reason == ExitReason.INTR:
            why, self._why = self._why or 'signal', None
            return Interrupted(why)
        if reason == ExitReason.IRQ_WINDOW_OPEN:
            return _IRQ_WINDOW
        if reason == ExitReason.SHUTDOWN:
            return _SHUTDOWN
        u = self.kvm_run.u
        if reason == ExitReason.IOAPIC_EOI:
            return IoapicEoi(u.eoi.vector)
        if reason == ExitReason.X86_RDMSR:
            return RdMsr(u.msr.index, u.msr.reason, self)
        if reason == ExitReason.X86_WRMSR:
            return WrMsr(u.msr.index, u.msr.data, u.msr.reason, self)
        if reason == ExitReason.DEBUG:
            d = u.debug
            return Debug(d.exception, d.pc, d.dr6, d.dr7)
        if reason == ExitReason.INTERNAL_ERROR:
            i = u.internal
            data = list(i.data[:min(i.ndata, 16)])
            insn = b''
            if i.suberror == KVM_INTERNAL_ERROR_EMULATION and i.ndata >= 3 and data[0] & 1:
                # emulation_failure: flags (data[0]), then insn_size and
                # insn_bytes[15] in the next 16 bytes (data[1], data[2])
                raw = struct.pack('<2Q', *i.data[1:3])
                insn = raw[1:1 + min(raw[0], 15)]
            return InternalError(i.suberror, data, insn)
        if reason == ExitReason.FAIL_ENTRY:
            return FailEntry(u.fail_entry.hardware_entry_failure_reason, u.fail_entry.cpu)
        if reason == ExitReason.SYSTEM_EVENT:
            se = u.system_event
            return SystemEvent(se.type, list(se.data[:min(se.ndata, 16)]))
        if reason == ExitReason.HYPERCALL:
            h = u.hypercall
            return Hypercall(h.nr, list(h.args), h.longmode, self)
        if reason == ExitReason.EXCEPTION:
            return ExceptionExit(u.ex.exception, u.ex.error_code)
        return UnknownExit(reason, bytes(u.padding))

    def run_loop(self, hooks=None, timeout=None):
        """Run until an exit nobody handles, and return it.

        Port I/O and MMIO go to the VM's buses (string I/O included), unless
        ``hooks`` has an entry for ``IoIn``/``IoOut``/``MmioRead``/``MmioWrite``.
        ``hooks`` maps an exit class to ``f(vcpu, exit) -> bool``: True runs on,
        False returns the exit. ``timeout`` (seconds) ends the loop with
        ``Interrupted('timeout')`` even while the guest spins.
        A device that raises surfaces as :class:`DeviceError` with the vCPU
        and RIP; the VM stays usable.
        """
        if self.fd < 0:
            raise KvmliteError(f'run on closed vCPU {self.index}: create a new one')
        if not self._running.acquire(blocking=False):
            raise KvmliteError(f'vCPU {self.index} is already running in another thread: '
                               'one run at a time (kick() it to end that run)')
        try:
            return self._run_loop(hooks, timeout)
        finally:
            self._running.release()

    def _run_loop(self, hooks, timeout, entered=None):
        # ``entered``: the caller made the first KVM_RUN itself (Snippet's fast
        # path) and this is its exit reason (INTR for EINTR): go on from it
        hooks = hooks or {}
        # which directions the buses serve: (in, out) and (read, write)
        io_bus = (IoIn not in hooks, IoOut not in hooks)
        mmio_bus = (MmioRead not in hooks, MmioWrite not in hooks)
        # The hot path and the one KVM_RUN call site: one unpack reads the
        # exit reason with the port-I/O fields; port-I/O and MMIO exits are
        # counted in locals and added to exit_counts on return.
        m, counts, vm = self._map, self.vm.exit_counts, self.vm
        pio_io, pio_ahead, mmio = vm.pio.io, vm.pio.read_ahead, vm.mmio
        unpack_exit, unpack_mmio = _RUN_EXIT_IO.unpack_from, _MMIO_EXIT.unpack_from
        ioctl, fd, ring, ring_ends = fcntl.ioctl, self.fd, self._ring, _RING_ENDS.unpack_from
        decode, tid = self._decode, threading.get_ident()
        io0 = n_io = self.io_exits
        mmio0 = n_mmio = self.mmio_exits
        last_ports, last_mmio, recent = self.last_ports, self.last_mmio, RECENT_EXITS - 1
        if timeout is not None:
            _watchdog.arm(self, time.monotonic() + timeout)
        reason = None
        try:
            while True:
                if self._buf is not None:
                    self._release_buf()
                # kicks signal this thread from here on; outside KVM_RUN the
                # signal does nothing and immediate_exit ends the next entry
                self._thread = tid
                if entered is not None:
                    reason, direction, size, port, count, off = unpack_exit(m, 8)
                    if entered == ExitReason.INTR:
                        reason = entered
                    entered = None
                else:
                    try:
                        # no third argument: given an int, fcntl.ioctl first tries it as
                        # a buffer twice and formats two TypeErrors (~1 us per exit)
                        ioctl(fd, KVM_RUN)
                        reason, direction, size, port, count, off = unpack_exit(m, 8)
                    except OSError as e:
                        if e.errno not in (errno.EINTR, errno.EAGAIN):
                            reason = None
                            raise KvmError(e.errno, 'KVM_RUN',
                                           _explain(KVM_RUN, e.errno, vm)) from None
                        m[1] = 0
                        reason = ExitReason.INTR
                if ring is not None and vm._coalesced:
                    first, last = ring_ends(ring, 0)
                    if first != last:     # buffered writes come before this exit
                        # unless the exit is a read they cannot change (a UART's
                        # LSR while its THR writes wait): answered here, and the
                        # ring drained in batches. A second such read with no new
                        # write since (a guest polling for input) drains, so that
                        # its output shows.
                        pending = (last - first) % _COALESCED_MAX
                        if (reason == 2 and not direction and pending < COALESCED_BATCH
                                and last != vm._ahead_last and size == 1 and count == 1
                                and io_bus[0]):
                            value = pio_ahead(port, pending)
                            if value is not None:
                                vm._ahead_last = last
                                n_io += 1
                                last_ports[n_io & recent] = port
                                m[off] = value
                                continue
                        vm._drain_coalesced(ring)
                try:
                    if reason == 2:                              # KVM_EXIT_IO
                        n_io += 1
                        last_ports[n_io & recent] = port
                        if io_bus[direction]:
                            pio_io(port, size, count, direction, m, off)
                            continue
                    elif reason == 6:                            # KVM_EXIT_MMIO
                        n_mmio += 1
                        addr, data, length, is_write = unpack_mmio(m, 32)
                        last_mmio[n_mmio & recent] = addr
                        if mmio_bus[is_write]:
                            st = _UNPACK.get(length)
                            if st is None:          # a size no device decodes (16-byte SSE...)
                                mmio.odd_access(addr, length, is_write, m)
                            elif is_write:
                                mmio.write(addr, length, st.unpack_from(data)[0])
                            else:
                                st.pack_into(m, 40, mmio.read(addr, length))
                            continue
                    else:
                        counts[_EXIT_NAMES.get(reason, reason)] += 1
                except DeviceError as e:
                    e.vcpu = self.index
                    e.rip = self.get_regs().rip
                    e.args = (f'{e.args[0]} (vCPU {e.vcpu}, guest RIP {e.rip:#x})',)
                    raise
                exit = decode(reason)
                hook = hooks.get(type(exit))
                if hook is None or not hook(self, exit):
                    return exit
        finally:
            self._thread = None
            # an I/O exit left unanswered (returned, or a device raised)
            # completes on the next KVM_RUN: complete_io() does it at once
            self._pending = reason == 2 or reason == 6
            if n_io != io0:
                counts[ExitReason.IO] += n_io - io0
                self.io_exits = n_io
            if n_mmio != mmio0:
                counts[ExitReason.MMIO] += n_mmio - mmio0
                self.mmio_exits = n_mmio
            if timeout is not None:
                self._disarm(reason)


# ---------------------------------------------------------------------------
# CPU setup: real, 32-bit protected and 64-bit long mode
# ---------------------------------------------------------------------------
# Intel SDM Vol. 3, chapters 3 (segments), 4 (paging) and 9 (mode switching).

GDT_ADDR = 0x500           # the boot GDT (and an empty IDT just after it)
IDT_ADDR = 0x5F0
PAGE_TABLE_ADDR = 0x9000   # PML4, PDPT, then one page directory per GiB

SEL_CODE32 = 0x08          # flat 32-bit code
SEL_CODE64 = 0x10          # 64-bit code: Linux's __BOOT_CS
SEL_DATA = 0x18            # flat data: Linux's __BOOT_DS
SEL_TSS = 0x20

BOOT_GDT = (
    0,                     # null
    0x00CF9A000000FFFF,    # 0x08: code, base 0, 4 GiB, 32-bit, DPL 0
    0x00AF9A000000FFFF,    # 0x10: code, 64-bit (L=1)
    0x00CF92000000FFFF,    # 0x18: data, base 0, 4 GiB, writable
    0x00008B0000000067,    # 0x20: 32/64-bit TSS (busy), base 0, limit 0x67
    0,                     #       upper half of the 64-bit TSS descriptor
)
# For setup_long_mode(cpl=3): DPL-3 code and data after the boot GDT.
USER_GDT = BOOT_GDT + (
    0x00AFFA000000FFFF,    # 0x30: code, 64-bit, DPL 3
    0x00CFF2000000FFFF,    # 0x38: data, base 0, 4 GiB, writable, DPL 3
)
SEL_USER_CODE64 = len(BOOT_GDT) * 8 | 3     # 0x33
SEL_USER_DATA = SEL_USER_CODE64 + 8         # 0x3B

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 31
CR4_PAE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 9, 1 << 10
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11


def segment(selector, base=0, limit=0xFFFFFFFF, type_=0x3, code=False, dpl=0, db=1, l=0, g=1):
    """A kvm_segment for a flat code (``code=True``: type 0xB) or data segment."""
    return kvm_segment(base=base, limit=limit, selector=selector,
                       type=0xB if code else type_, present=1, dpl=dpl, db=db, s=1, l=l,
                       g=g)


def _write_gdt(vm, addr, entries):
    vm.write(addr, struct.pack(f'<{len(entries)}Q', *entries))


def setup_real_mode(vcpu, cs=0, ip=0, sp=0xFFF0):
    """Real mode at ``cs:ip`` with every data segment equal to ``cs``."""
    s = vcpu.get_sregs()
    for name in ('cs', 'ds', 'es', 'fs', 'gs', 'ss'):
        # whole descriptors, as at reset: a vCPU that ran in long mode has CS.L set
        setattr(s, name, kvm_segment(selector=cs, base=cs << 4, limit=0xFFFF, present=1, s=1,
                                     type=0xB if name == 'cs' else 0x3))
    s.cr0 &= ~(CR0_PE | CR0_PG)
    s.efer = 0               # KVM refuses LME/LMA left from long mode with paging off
    vcpu.set_sregs(s)
    vcpu.set_regs(kvm_regs(rip=ip, rsp=sp, rflags=0x2))


def _flat_sregs(vcpu, vm, long_mode):
    _write_gdt(vm, GDT_ADDR, BOOT_GDT)
    vm.write(IDT_ADDR, bytes(16))
    s = vcpu.get_sregs()
    s.gdt.base, s.gdt.limit = GDT_ADDR, len(BOOT_GDT) * 8 - 1
    s.idt.base, s.idt.limit = IDT_ADDR, 0          # no handlers: a fault is a triple fault
    s.cs = segment(SEL_CODE64 if long_mode else SEL_CODE32, code=True,
                   db=0 if long_mode else 1, l=1 if long_mode else 0)
    for name in ('ds', 'es', 'fs', 'gs', 'ss'):
        setattr(s, name, segment(SEL_DATA))
    s.tr = kvm_segment(base=0, limit=0x67, selector=SEL_TSS, type=0xB, present=1)
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE
    s.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT
    s.efer = 0               # long mode sets its own; left from long mode, KVM refuses it
    return s


def setup_protected_mode(vcpu, vm, entry, stack=0x8FF0, **regs):
    """32-bit flat protected mode, paging off, at ``entry``."""
    s = _flat_sregs(vcpu, vm, long_mode=False)
    vcpu.set_sregs(s)
    vcpu.set_regs(kvm_regs(rip=entry, rsp=stack, rflags=0x2, **regs))


def identity_page_tables(vm, map_size=4 << 30, base=PAGE_TABLE_ADDR, user=False):
    """Write 4-level page tables mapping [0, map_size) one-to-one with 2 MiB
    pages at ``base`` (2 + one page per GiB); returns CR3. ``user`` makes
    every page user-accessible (U/S set at every level)."""
    gib = max(1, -(-map_size // (1 << 30)))
    if gib > 512:
        raise ValueError(f'identity map of {map_size:#x} bytes: at most 512 GiB')
    table = PTE_P | PTE_RW | (PTE_US if user else 0)
    pml4, pdpt = base, base + PAGE_SIZE
    vm.write(pml4, struct.pack('<Q', pdpt | table) + bytes(PAGE_SIZE - 8))
    vm.write(pdpt, struct.pack(f'<{gib}Q', *((base + (2 + i) * PAGE_SIZE) | table for i in range(gib)))
             + bytes(PAGE_SIZE - 8 * gib))
    for i in range(gib):
        vm.write(base + (2 + i) * PAGE_SIZE,
                 struct.pack('<512Q', *(((i << 30) + (j << 21)) | table | PTE_PS for j in range(512))))
    return pml4


def setup_long_mode(vcpu, vm, entry, stack=0x8FF0, map_size=4 << 30, page_tables=PAGE_TABLE_ADDR,
                    cpl=0, **regs):
    """64-bit long mode at ``entry`` with [0, map_size) identity-mapped, at
    ``cpl`` 0 or 3 (3: user-accessible pages, DPL-3 segments from USER_GDT;
    pass ``rflags=0x3002`` as well for IOPL 3, to reach ports at CPL3)."""
    if cpl not in (0, 3):
        raise ValueError(f'CPL {cpl!r}: use 0 or 3')
    s = _flat_sregs(vcpu, vm, long_mode=True)
    s.cr3 = identity_page_tables(vm, map_size, page_tables, user=cpl == 3)
    s.cr4 |= CR4_PAE
    s.cr0 |= CR0_PG | CR0_WP
    s.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE
    if cpl == 3:
        _write_gdt(vm, GDT_ADDR, USER_GDT)
        s.gdt.limit = len(USER_GDT) * 8 - 1
        s.cs = segment(SEL_USER_CODE64, code=True, dpl=3, db=0, l=1)
        for name in ('ds', 'es', 'fs', 'gs', 'ss'):
            setattr(s, name, segment(SEL_USER_DATA, dpl=3))
    vcpu.set_sregs(s)
    regs.setdefault('rflags', 0x2)
    vcpu.set_regs(kvm_regs(rip=entry, rsp=stack, **regs))


def setup_mode(vcpu, vm, mode, entry, stack=0x8FF0, cs=0, **regs):
    """Put ``vcpu`` in ``mode`` ('real', 'prot32' or 'long64') at ``entry``
    (long64 takes ``cpl=3`` too: see setup_long_mode)."""
    if mode == 'real':
        setup_real_mode(vcpu, cs, entry, stack if stack is not None else 0xFFF0)
        if regs:
            vcpu.set_regs(**regs)
    elif mode == 'prot32':
        setup_protected_mode(vcpu, vm, entry, stack or 0, **regs)
    elif mode == 'long64':
        setup_long_mode(vcpu, vm, entry, stack or 0, **regs)
    else:
        raise ValueError(f"unknown CPU mode {mode!r}: use 'real', 'prot32' or 'long64'")


# ---------------------------------------------------------------------------
# CPUID policy
# ---------------------------------------------------------------------------
# Features whose instructions KVM's emulator cannot run (shared/DESIGN.md): on
# a host that emulates guest kernel mode, a guest that sees them dies in
# KVM_EXIT_INTERNAL_ERROR. (leaf, subleaf, register, bit, name)
EMULATOR_UNSAFE_FEATURES = (
    (1, 0, 'ecx', 13, 'cx16'),        # cmpxchg16b
    (1, 0, 'ecx', 23, 'popcnt'),
    (1, 0, 'ecx', 26, 'xsave'),       # xsave/xrstor
    (1, 0, 'ecx', 27, 'osxsave'),
    (7, 0, 'ebx', 20, 'smap'),        # stac/clac
    # KVM_FEATURE_PV_SEND_IPI: on kvm_pvm the guest's KVM_HC_SEND_IPI vmcall
    # never completes (an SMP Linux stays at it, bringing up its APs); without
    # it Linux sends IPIs through the x2APIC ICR, which KVM serves
    (0x40000001, 0, 'eax', 11, 'pv_send_ipi'),
)
# ... and one to add: on AMD, without XSAVEERPTR Linux issues fnclex.
EMULATOR_WANTED_FEATURES = ((0x80000008, 0, 'ebx', 2, 'xsaveerptr'),)


def host_emulates_kernel_mode():
    """True on hosts like kvm_pvm, where guest CPL0 runs in KVM's emulator."""
    return os.path.isdir('/sys/module/kvm_pvm')


def cpuid_restricted(policy):
    """Whether CPUID ``policy`` hides the emulator-unsafe features here."""
    return policy == 'safe' or (policy == 'auto' and host_emulates_kernel_mode())


#: What a Linux command line gets where the policy hides features: on
#: kvm_pvm a CPL0 ``cpuid`` reports leaf 1 and 7 from the host CPU whatever
#: the CPUID table says, so the kernel must be told as well. Also
#: ``tsc_deadline_timer``: with a TSC-deadline local APIC timer, Linux's
#: periodic tick is one-shot and catches up every missed tick in a loop with
#: interrupts off; where a tick costs more emulated instructions than its
#: period (an SMP 6.1 kernel on a loaded host) the guest livelocks in
#: timekeeping_advance. Without it the tick is periodic and late ticks merge.
LINUX_CLEARCPUID = b'clearcpuid=xsave,smap,popcnt,tsc_deadline_timer'

#: ... and a word for the guest's user space (Linux hands a command-line word
#: NAME=VALUE that is no kernel parameter to init's environment, and init's
#: children inherit it). Without XSAVE a kernel context-switches only the
#: FXSAVE area: x87 and XMM0-15. On a VMX/SVM host the guest's CR4.OSXSAVE,
#: clear, keeps user space to that too. On kvm_pvm guest CPL3 code runs
#: natively with the host's XCR0 (0xe7 here: AVX and AVX-512 state) whatever
#: the guest's CR4 and XCR0 say, and a CPL3 ``cpuid`` reports the host's
#: OSXSAVE and AVX bits: so glibc picks its AVX-512 string routines, and the
#: upper halves of YMM/ZMM, XMM16-31 and the opmask registers are shared by
#: every process on a CPU. A process switched out in the middle of a memcpy
#: goes on with another's registers: with two CPUs, busybox commands died in
#: __ctype_init reading a TLS block that static glibc had copied as zeros.
#: glibc (2.34 and later) reads ``hwcaps=-OSXSAVE`` as "no XSAVE-managed
#: state" and keeps to SSE2 and the FXSAVE registers. Other C libraries and
#: code that uses AVX unasked are not covered: that is the host's to fix.
LINUX_USER_ENV = b'GLIBC_TUNABLES=glibc.cpu.hwcaps=-OSXSAVE'


#: ``vendor`` of cpuid_entries -> the 12-byte CPUID vendor string.
CPU_VENDORS = {'intel': b'GenuineIntel', 'amd': b'AuthenticAMD'}
_AMD_EDX_ALIASES = 0x0183F3FF   # 0x80000001 EDX bits that repeat leaf 1 EDX on AMD


def _set_vendor(entries, vendor):
    """Present ``vendor`` ('intel' or 'amd') as QEMU's ``-cpu host,vendor=``
    (with its default vendor-cpuid-only) does: the vendor string in leaf 0
    and leaf 0x80000000 (EBX, EDX, ECX); for Intel no CmpLegacy (0x80000001
    ECX bit 1, which Linux reads as "no thread info" on Intel); for AMD the
    Intel cache leaves 2 and 4 read 0 and the 0x80000001 EDX bits that AMD
    defines as copies of leaf 1 EDX are those copies (AMD APM Vol. 3,
    appendix E.4.2). Everything else stays KVM's."""
    ebx, edx, ecx = struct.unpack('<III', CPU_VENDORS[vendor])
    leaf1_edx = next((e.edx for e in entries if e.function == 1), 0)
    for e in entries:
        if e.function in (0, 0x80000000):
            e.ebx, e.edx, e.ecx = ebx, edx, ecx
        elif e.function == 0x80000001:
            if vendor == 'intel':
                e.ecx &= ~(1 << 1)
            else:
                e.edx = (e.edx & ~_AMD_EDX_ALIASES) | (leaf1_edx & _AMD_EDX_ALIASES)
        elif e.function in (2, 4) and vendor == 'amd':
            e.eax = e.ebx = e.ecx = e.edx = 0


def cpuid_entries(kvm, vcpu_index=0, policy='auto', hide=(), vendor='host'):
    """CPUID for a vCPU: KVM's supported list with the APIC ID set and, by
    ``policy``, features hidden: 'auto' hides EMULATOR_UNSAFE_FEATURES where
    host_emulates_kernel_mode(), 'safe' always, 'host' never. ``hide`` names
    more features to hide (as in EMULATOR_UNSAFE_FEATURES). ``vendor``:
    'host' (KVM's, the host CPU's), or 'intel' / 'amd' (see _set_vendor)."""
    if policy not in ('auto', 'safe', 'host'):
        raise ValueError(f"CPUID policy {policy!r}: use 'auto', 'safe' or 'host'")
    if vendor != 'host' and vendor not in CPU_VENDORS:
        raise ValueError(f"CPU vendor {vendor!r}: use 'host', 'intel' or 'amd'")
    entries = kvm.supported_cpuid()
    if vendor != 'host':
        _set_vendor(entries, vendor)
    restrict = cpuid_restricted(policy)
    clear = [f for f in EMULATOR_UNSAFE_FEATURES if restrict] + \
        [f for f in EMULATOR_UNSAFE_FEATURES + EMULATOR_WANTED_FEATURES if f[4] in hide]
    add = [f for f in EMULATOR_WANTED_FEATURES if restrict and f[4] not in hide]
    amd = any(e.function == 0 and struct.pack('<III', e.ebx, e.edx, e.ecx) == b'AuthenticAMD'
              for e in entries)
    for e in entries:
        if e.function == 1:
            e.ebx = (e.ebx & 0x00FFFFFF) | (vcpu_index << 24)
        if e.function == 0xB or e.function == 0x1F:
            e.edx = vcpu_index
        for leaf, sub, reg, bit, _ in clear:
            if e.function == leaf and e.index == sub:
                setattr(e, reg, getattr(e, reg) & ~(1 << bit))
        for leaf, sub, reg, bit, _ in add:
            if e.function == leaf and e.index == sub and amd:
                setattr(e, reg, getattr(e, reg) | (1 << bit))
    return entries


# ---------------------------------------------------------------------------
# Snippets: run a few bytes of machine code, get registers back
# ---------------------------------------------------------------------------
# Intel SDM Vol. 3: 4.5 (4-level paging), 5.8-5.12 (privilege levels, gates),
# 6.12-6.14 (exception frames in each mode), 7.2 and 8.7 (the TSS and its I/O
# permission bitmap), 17.2-17.3 (debug traps); AMD APM Vol. 2, 6.1 (SYSCALL,
# STAR/LSTAR/SFMASK). The API mirrors unicorn's Uc (mem_map, mem_write,
# reg_write, emu_start, hook_*), but the code runs on the real CPU.
#
# How a snippet reports back: kvmlite owns a system area (SNIPPET_SYSTEM) with
# a GDT, a TSS, an IDT whose 256 gates each point to a 4-byte stub ``hlt``,
# and, in long mode, the page tables. The stub's HLT exits to Python (one
# instruction at CPL0, the cheapest exit there is: no I/O left pending), its
# RIP says which vector it was, and Python unwinds the frame the CPU pushed
# (read from guest memory at once, registers changed in kvm_run's sync area),
# so the registers read back as they were at the faulting instruction.
# ``syscall`` enters another stub, ``out SNIPPET_TRAP_PORT, al; hlt`` (on
# kvm_pvm it arrives there still at CPL3, where HLT would fault: the TSS's
# I/O bitmap lets CPL3 use every port, so that stub works at either level).
# At CPL3 the snippet runs natively; only the stubs run at CPL0.

__all__ += ['Snippet', 'Stop', 'SnippetError', 'SnippetUnsupported', 'SnippetContext',
            'SnippetTestCase',
            'kvm_unavailable',
            'snippet_pool_clear']

SNIPPET_MODES = ('real', 'prot32', 'long64')
SNIPPET_CODE_ADDR = 0x1000          # where run(code_bytes) puts the code
SNIPPET_TRAP_PORT = 0xEF            # the stubs' port; the RIP tells stubs from the snippet
# mode -> (base, size) of kvmlite's system area: below the 3 pages Intel's
# KVM_SET_TSS_ADDR takes at 0xFFFBD000; in real mode just above 1 MiB, where
# FFFF:E410 reaches the stubs (KVM does not mask A20)
SNIPPET_SYSTEM = {'real': (0x10E000, 0x1000), 'prot32': (0xFF800000, 0x8000),
                  'long64': (0xFF800000, 0x400000)}
_SYS_GDT, _SYS_IDT, _SYS_TSS = 0x0, 0x1000, 0x2000       # protected and long mode
_SYS_STUBS, _SYS_STACK_TOP, _SYS_PAGE_TABLES = 0x5000, 0x7000, 0x8000
_ZERO_PAGE = bytes(PAGE_SIZE)
# real mode: the IVT at 0x200, and below it a copy of its upper half for
# KVM's emulator, which sign-extends `int n`'s byte and so looks up vectors
# 0x80-0xFF at IVT - 4 * (256 - n) (without it such an `int` hangs in KVM)
_REAL_IVT, _REAL_STUBS, _REAL_STUB_SEG = 0x200, 0x600, 0xFFFF
_STUB = bytes((0xF4, 0x90, 0x90, 0x90))                 # hlt; nop; nop; nop
_PORT_STUB = bytes((0xE6, SNIPPET_TRAP_PORT, 0xF4, 0x90))  # out port, al; hlt; nop
_SYSCALL_STUB = 256                 # the stub after the 256 vectors' is LSTAR's
_IOPB = 0x68                        # the I/O permission bitmap follows the TSS proper
_TSS_LIMIT = _IOPB + 8192           # 8 KiB of zeros (every port allowed) + 0xFF

# GDT (protected and long mode); the selectors follow Linux's so that STAR's
# SYSRET base 0x23 gives user CS 0x33 and SS 0x2b
SNIPPET_GDT = (
    0,
    0x00CF9B000000FFFF,    # 0x08: ring-0 code, 32-bit
    0x00AF9B000000FFFF,    # 0x10: ring-0 code, 64-bit
    0x00CF93000000FFFF,    # 0x18: ring-0 data
    0x00CFFB000000FFFF,    # 0x23: ring-3 code, 32-bit
    0x00CFF3000000FFFF,    # 0x2b: ring-3 data
    0x00AFFB000000FFFF,    # 0x33: ring-3 code, 64-bit
)                          # 0x38: the TSS (16 bytes)
_SEL_TSS = 0x38
# mode, cpl -> (CS selector, data/stack selector)
_SNIPPET_SELECTORS = {('prot32', 0): (0x08, 0x18), ('prot32', 3): (0x23, 0x2B),
                      ('long64', 0): (0x10, 0x18), ('long64', 3): (0x33, 0x2B)}

MSR_STAR, MSR_LSTAR, MSR_SFMASK = 0xC0000081, 0xC0000082, 0xC0000084
PTE_P, PTE_RW, PTE_US, PTE_PS, PTE_NX = 1, 2, 4, 0x80, 1 << 63
# accessed and dirty, set from the start: the CPU never writes the tables (so
# they read back as written, and a walk costs no write)
PTE_AD = 0x60
RFLAGS_TF = 1 << 8                  # the trap flag: single-step
SNIPPET_FLAGS = {'CF': 0, 'PF': 2, 'AF': 4, 'ZF': 6, 'SF': 7, 'TF': 8, 'IF': 9, 'DF': 10,
                 'OF': 11}

EXCEPTION_NAMES = ('DE', 'DB', 'NMI', 'BP', 'OF', 'BR', 'UD', 'NM', 'DF', 'MP', 'TS', 'NP',
                   'SS', 'GP', 'PF', '15', 'MF', 'AC', 'MC', 'XM', 'VE', 'CP')
_FRAME_BY_MODE = {'long64': struct.Struct('<5Q'), 'prot32': struct.Struct('<5I')}
_SEGMENT_SIZE = ctypes.sizeof(kvm_segment)
_SYNC_CS = kvm_run.s.offset + _SYNC_SREGS + kvm_sregs.cs.offset    # in the vCPU's mmap
_SYNC_SS = kvm_run.s.offset + _SYNC_SREGS + kvm_sregs.ss.offset
_ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21, 29, 30))
_USER_GATES = frozenset((3, 4, 0x80))   # int3, into and int 0x80 are allowed at CPL3


class _Closed:
    """Stands in for the Vm and Vcpu of a closed object: any use raises."""

    def __init__(self, what):
        self._what = what

    def __getattr__(self, name):
        raise KvmliteError(f'{self._what} is closed: create a new one')

    def __bool__(self):
        return False


class SnippetError(KvmliteError, ValueError):
    """A bad request to a Snippet: unknown register, overlapping map..."""


class SnippetUnsupported(SnippetError, AttributeError):
    """A unicorn call that kvmlite cannot offer (the message says what to
    use instead). An AttributeError too, so ``hasattr`` says no."""


# unicorn's Uc methods kvmlite has no counterpart for, and why
_UNICORN_MISSING = {
    'hook_block': "unicorn's UC_HOOK_BLOCK needs a translator's basic blocks, and a Snippet "
                  'runs on the CPU: use hook_code (called before every instruction)',
    'hook_mem_fetch': 'fetches never leave the CPU: use run(until=address) or count=',
    'hook_mem_invalid': 'a protection fault is a #PF in long64 (hook_exception) and a write '
                        'to read-only memory reaches hook_mmio',
    'hook_insn_invalid': 'an invalid instruction raises #UD: hook_exception sees vector 6',
    'hook_add': 'use the hook_* method of the kind: hook_io, hook_mmio, hook_msr, '
                'hook_cpuid, hook_syscall, hook_exception (hook_del removes any)',
    'mem_map_ptr': 'a Snippet maps its own memory (mem_map); read and write it with '
                   'mem_read and mem_write',
    'ctl_set_cpu_model': 'the CPU is the host\'s: hook_cpuid changes what cpuid reports',
    'ctl_flush_tb': 'there is no translation cache to flush: code written with mem_write '
                    'runs as written',
    'ctl_exits': 'use run(until=address)',
}


class SnippetContext:
    """A Snippet's CPU state from :meth:`Snippet.context_save` (unicorn's
    UcContext): ``mode``, ``cpl`` and the register blocks KVM returned."""
    __slots__ = ('mode', 'cpl', 'regs', 'sregs', 'xsave')

    def __init__(self, mode, cpl, regs, sregs, xsave):
        self.mode, self.cpl, self.regs, self.sregs, self.xsave = mode, cpl, regs, sregs, xsave

    def reg_read(self, name):
        """A general register (rax..r15 and their views, rip, rflags) as saved."""
        key = _SNIPPET_GPRS.get(name.lower() if isinstance(name, str) else '')
        if key is None:
            raise SnippetError(f'SnippetContext.reg_read({name!r}): a context reads the '
                               'general registers, rip and rflags; restore it to read the rest')
        field, shift, bits = key
        return getattr(kvm_regs.from_buffer_copy(self.regs), field) >> shift & ((1 << bits) - 1)

    def __repr__(self):
        return f'SnippetContext({self.mode}, cpl={self.cpl}, rip={self.reg_read("rip"):#x})'


class Stop:
    """Why :meth:`Snippet.run` returned.

    ``reason`` is one of: 'hlt' (RIP after the HLT), 'breakpoint' (an int3
    at ``address``; RIP after it), 'until' (reached the ``until`` address),
    'count' (ran ``count`` instructions), 'timeout', 'stopped' (a hook
    called :meth:`Snippet.stop`), 'exception' (``vector``, ``error_code``
    or None, ``address``: CR2 for #PF, else the faulting instruction; RIP
    is that instruction for a fault, the next one for a trap), 'interrupt'
    (an ``int n``: ``vector`` n, ``address`` the instruction, RIP after
    it), 'syscall'
    (no syscall hook; RIP after the syscall), 'unmapped' (an instruction
    fetch from ``address``, where no RAM is, in prot32 and real, which
    have no paging to fault; long64 raises #PF), 'mmio' (an access to
    ``address`` that no memory backs and no MMIO hook answered: a read
    stops at its instruction, not yet done, and :meth:`Snippet.resume`
    gives it a value; a write stops after its instruction), 'shutdown'
    (triple fault) or 'error' (KVM could not go on; ``exit`` says why).
    """
    __slots__ = ('reason', 'rip', 'vector', 'error_code', 'address', 'exit')

    def __init__(self, reason, rip, vector=None, error_code=None, address=None, exit=None):
        # a value that cannot change: run() may return the same one again
        # (a reused snippet stopping at the same hlt)
        _set = object.__setattr__
        _set(self, 'reason', reason)
        _set(self, 'rip', rip)
        _set(self, 'vector', vector)
        _set(self, 'error_code', error_code)
        _set(self, 'address', address)
        _set(self, 'exit', exit)

    def __setattr__(self, name, value):
        raise AttributeError(f'a Stop is a value: {name} cannot change')

    __delattr__ = __setattr__

    def __reduce__(self):
        return Stop, tuple(getattr(self, k) for k in self.__slots__)

    def __eq__(self, other):
        return type(other) is Stop and all(getattr(self, k) == getattr(other, k)
                                           for k in self.__slots__)

    def __repr__(self):
        return 'Stop(' + ', '.join(f'{k}={_fmt(getattr(self, k))}' for k in self.__slots__
                                   if getattr(self, k) is not None) + ')'

    @property
    def name(self):
        """'#PF' for an exception vector, 'int 0x10' for a software interrupt."""
        if self.vector is None:
            return None
        if self.vector < len(EXCEPTION_NAMES) and self.reason != 'interrupt':
            return '#' + EXCEPTION_NAMES[self.vector]
        return f'int {self.vector:#x}'

    def __str__(self):
        text = f'{self.reason} at rip {self.rip:#x}'
        if self.vector is not None:
            text += f': {self.name}'
            if self.error_code is not None:
                text += f' error code {self.error_code:#x}'
        if self.address is not None:
            text += f', address {self.address:#x}'
        if isinstance(self.exit, InternalError):
            text += f' ({self.exit.describe()})'
        elif self.exit is not None:
            text += f' ({self.exit!r})'
        return text


def _snippet_registers():
    """Register name -> (kvm_regs field, shift, bits) for every GPR view."""
    table = {}
    for r in 'abcd':
        q = f'r{r}x'
        table.update({q: (q, 0, 64), f'e{r}x': (q, 0, 32), f'{r}x': (q, 0, 16),
                      f'{r}l': (q, 0, 8), f'{r}h': (q, 8, 8)})
    for r in ('si', 'di', 'sp', 'bp'):
        q = 'r' + r
        table.update({q: (q, 0, 64), 'e' + r: (q, 0, 32), r: (q, 0, 16), r + 'l': (q, 0, 8)})
    for i in range(8, 16):
        q = f'r{i}'
        table.update({q: (q, 0, 64), q + 'd': (q, 0, 32), q + 'w': (q, 0, 16), q + 'b': (q, 0, 8)})
    for q, e, w in (('rip', 'eip', 'ip'), ('rflags', 'eflags', 'flags')):
        table.update({q: (q, 0, 64), e: (q, 0, 32), w: (q, 0, 16)})
    return table


_SNIPPET_GPRS = _snippet_registers()
_SNIPPET_BITS = {'real': 16, 'prot32': 32, 'long64': 64}
_SNIPPET_GPR64 = {n: k[0] for n, k in _SNIPPET_GPRS.items() if k[1:] == (0, 64)}  # rax: 'rax'
# a 64-bit register's index in Vcpu.sync_words; every view's (index, shift, mask)
_SNIPPET_WORD = {n: _WORD_REGS + _REG_NAMES.index(f) for n, f in _SNIPPET_GPR64.items()}
_SNIPPET_VIEW = {n: (_WORD_REGS + _REG_NAMES.index(f), shift, (1 << bits) - 1)
                 for n, (f, shift, bits) in _SNIPPET_GPRS.items()}
_SYNC_REGS_SREGS = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS
_SNIPPET_RIP, _SNIPPET_RSP, _SNIPPET_RFLAGS = (_SNIPPET_WORD[n] for n in ('rip', 'rsp', 'rflags'))
_SNIPPET_SEGS = ('cs', 'ds', 'es', 'fs', 'gs', 'ss')
_SNIPPET_SREGS = ('cr0', 'cr2', 'cr3', 'cr4', 'cr8', 'efer')
_XSAVE_XMM, _XSAVE_MXCSR, _XSAVE_BV = 160, 24, 512   # offsets in the XSAVE legacy area
_XFEATURE_SSE = 1 << 1


def kvm_unavailable(path='/dev/kvm'):
    """None when KVM can be used here, else a sentence saying why not."""
    if not os.path.exists(path):
        return f'{path} is missing: this host has no KVM'
    try:
        Kvm(path).close()
    except KvmError as e:
        return str(e)
    return None


# -- x86 instruction length (for code hooks' size, and fetches past RAM) -------
# Intel SDM Vol. 2, chapter 2 (prefixes, REX, VEX, EVEX, ModRM/SIB tables
# 2-1 to 2-3) and appendix A (opcode maps: which opcodes take a ModRM byte
# and which immediate); AMD APM Vol. 3, 1.8 (XOP). A sketch of the format,
# not a disassembler: it finds where an instruction ends.
_LEN_MODRM1 = 0xc0c00000ff0f00f3000000000000ffff00000a0c000000000f0f0f0f0f0f0f0f
_LEN_NO_MODRM_0F = 0xff00000007070000ffff0080000000000000faff000000005ff0
_LEN_IB_0F = 0x740400101000000000000f0000000000000000000000008000
# one digit per 1-byte opcode: 0 none, 1 Ib, 2 Iw, 3 Iz, 4 Iv, 5 Iw+Ib (enter),
# 6 Ap (far pointer), 7 moffs (an address-sized offset)
_LEN_IMM1 = ('0000130000001300000013000000130000001300000013000000130000001300'
             '0000000000000000000000000000000000000000331100001111111111111111'
             '1311000000000000000000000060000077770000130000001111111144444444'
             '1120001350200100000011000000000011111111336100000000000000000000')
_LEN_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))


def _insn_length(code, bits):
    """``(length, map, opcode)`` of the instruction ``code`` starts with, in
    ``bits``-bit code (16, 32, 64); map 0 is the one-byte map, 1 is 0F, 2
    0F38, 3 0F3A, VEX/EVEX/XOP maps as encoded (+ 0x100 for XOP). None when
    ``code`` ends before the instruction does."""
    n, i = len(code), 0
    osize, asize, rex_w = (2 if bits == 16 else 4), bits // 8, False
    while i < n and i < 15:
        b = code[i]
        if b in _LEN_PREFIXES:
            if b == 0x66:
                osize = 4 if bits == 16 else 2
            elif b == 0x67:
                asize = 4 if bits != 32 else 2
            rex_w = False                # a REX not right before the opcode is ignored
            i += 1
        elif bits == 64 and 0x40 <= b <= 0x4F:
            rex_w = bool(b & 8)
            i += 1
        else:
            break
    if i >= n:
        return None
    b = code[i]
    i += 1
    imm = 0
    if b == 0x0F:
        if i >= n:
            return None
        b, i = code[i], i + 1
        if b in (0x38, 0x3A):
            if i >= n:
                return None
            space, b, i = (2 if b == 0x38 else 3), code[i], i + 1
            modrm, imm = True, 1 if space == 3 else 0
        else:
            space = 1
            modrm = not _LEN_NO_MODRM_0F >> b & 1
            if _LEN_IB_0F >> b & 1:
                imm = 1
            elif 0x80 <= b <= 0x8F:      # jcc rel16/32
                imm = 2 if osize == 2 and bits != 64 else 4
    elif b in (0xC4, 0xC5, 0x62, 0x8F) and (
            bits == 64 and b != 0x8F or i < n and (
                code[i] >> 6 == 3 if b != 0x8F else code[i] & 0x1F >= 8)):
        # VEX (C4: 3 bytes, C5: 2), EVEX (62: 4), XOP (8F: 3)
        extra = {0xC5: 1, 0xC4: 2, 0x8F: 2, 0x62: 3}[b]
        if i + extra >= n:
            return None
        space = 1 if b == 0xC5 else code[i] & (0x07 if b == 0x62 else 0x1F)
        if b == 0x8F:
            space += 0x100
        i += extra
        b, i = code[i], i + 1
        modrm = not (space == 1 and b == 0x77 and code[0] != 0x62)   # vzeroupper/all
        imm = {3: 1, 0x108: 1, 0x10A: 4}.get(space, 1 if space == 1 and _LEN_IB_0F >> b & 1
                                               and b != 0x0F else 0)
    else:
        space = 0
        modrm = bool(_LEN_MODRM1 >> b & 1)
        kind = _LEN_IMM1[b]
        if kind == '1':
            imm = 1
        elif kind == '2':
            imm = 2
        elif kind == '3':
            imm = 2 if osize == 2 and not (bits == 64 and b in (0xE8, 0xE9)) else 4
        elif kind == '4':
            imm = 8 if rex_w else osize
        elif kind == '5':
            imm = 3
        elif kind == '6':
            imm = osize + 2
        elif kind == '7':
            imm = asize
    if modrm:
        if i >= n:
            return None
        m = code[i]
        i += 1
        mod, rm = m >> 6, m & 7
        if space == 1 and 0x20 <= b <= 0x27:     # mov to/from CR, DR, TR: mod is ignored
            mod = 3
        if space == 0 and b in (0xF6, 0xF7) and not m >> 3 & 6:    # test r/m, imm
            imm = 1 if b == 0xF6 else (2 if osize == 2 else 4)
        if mod != 3:
            if asize == 2:
                i += 2 if mod == 2 or mod == 0 and rm == 6 else mod
            else:
                if rm == 4:
                    if i >= n:
                        return None
                    if mod == 0 and code[i] & 7 == 5:
                        i += 4
                    i += 1
                i += 4 if mod == 2 or mod == 0 and rm == 5 else mod
    i += imm
    if i > n:
        return None
    return i, space, b


class Snippet:
    """A one-vCPU VM that runs a few bytes of machine code and reports back.

    ``mode`` is 'real', 'prot32' or 'long64'; ``cpl`` 0 or 3 (real mode is
    CPL0). ``mem_size`` bytes of rwx RAM are mapped at 0 (0: map nothing, as
    unicorn does). Memory, registers and hooks persist across runs.
    Addresses are linear and mapped one-to-one (in real mode CS:IP is the
    linear ``CS * 16 + IP``); ``SNIPPET_SYSTEM[mode]`` is kvmlite's own.
    On hosts like kvm_pvm CPL0 and real-mode code is emulated (about a
    thousand times slower, and some instructions fail: 'error' stops);
    CPL3 code runs natively. A context manager.
    """

    def __init__(self, mode='long64', cpl=0, mem_size=0x100000, kvm=None):
        if mode not in SNIPPET_MODES:
            raise SnippetError(f'unknown mode {mode!r}: use one of {", ".join(SNIPPET_MODES)}')
        if mode == 'real' and cpl != 0:
            raise SnippetError(f'cpl {cpl!r} in real mode: real mode has no privilege levels, '
                               'so it runs at 0; leave cpl out (or pass 0)')
        if cpl not in (0, 3):
            raise SnippetError(f'cpl {cpl!r} in {mode}: use 0 (kernel) or 3 (user)')
        self.mode, self.cpl = mode, cpl
        self.kvm = _process_kvm() if kvm is None else kvm
        self._vm = self._vcpu = None
        self._exposed = False          # the user reached vm or vcpu: not recycled
        self._tainted = False          # a VM-wide change (MSR filter): not recycled
        self._regions = []             # [(addr, size, perms)]; perms '' is MMIO
        self._system = None            # the system area's memory slot
        self._tables_dirty = True      # long mode: the page tables lag the regions
        self._hooks = {}               # kind -> the one callable the exit handlers call
        self._hook_lists = {}          # kind -> [(handle, fn, arg)], in the order added
        self._hook_next = 1            # the next hook_* handle (for hook_del)
        self._cpuid_table = None       # what the cpuid hooks made of KVM's table
        self._ran = False
        self._stop = None              # set by a handler that ends the run
        self._waiting = None           # the MMIO access an 'mmio' stop left half done
        self._until = self._patched = self._steps = None
        self._synced = False           # registers live in kvm_run (KVM_CAP_SYNC_REGS)
        self._words = None             # then: the vCPU's sync_words (reg_read, reg_write, run)
        self._last_slot = None         # (gpa, end, view) of the slot mem_write wrote last
        self._fast = False             # run() may take its fast path (_refast says when)
        self._hlt_stop = None          # the last Stop('hlt') of the fast path (given again)
        self._handler_table = None     # the run loop's exit handlers, made once
        self._frame = None             # CPL3 #GP frame's unpack, user CS, SS (_run_fast)
        self._debugged = False         # KVM_SET_GUEST_DEBUG was used (for `until`)
        self._stepping = None          # how code hooks stop the run: 'kvm', 'tf', 'bp', 'nx'
        self._nx_pages = None          # CPL3 ranged code hooks: their pages, no-execute outside
        self._nx_on = False            # ...and CR3 points at the tables that say so
        self._nx_tables = None         # the hooked pages the tables in place have a map for
        self._spares = {}              # (gpa, size, readonly) -> a zeroed slot a last user left
        self._tables_in_place = None   # the regions the page tables in place map
        self._vm_ran = False           # the vCPU has run (this Snippet's or a last user's)
        self._traps = {}               # page -> 'write'/'access': out of RAM for memory hooks
        try:
            unit = _snippet_pool_take(self.kvm, mode, cpl)
            if unit is None:
                self._build()
            else:
                for name, value in unit.items():
                    setattr(self, name, value)
            if mem_size:
                self.mem_map(0, mem_size)
                # the stack starts at the top of RAM (SP 0 wraps to 0xFFFE in real mode)
                self._vcpu.set_regs(rsp=min(mem_size, 0x10000) & 0xFFFF if mode == 'real'
                                   else mem_size)
        except BaseException:
            self.close()
            raise

    def _build(self):
        """A new VM and vCPU in this Snippet's mode (what the pool saves)."""
        self._vm = Vm(self.kvm)
        self._vcpu = self._vm.create_vcpu()
        self._vcpu.set_cpuid2(cpuid_entries(self.kvm))
        self._write_system_area()
        self._enter_mode()
        # from here on a run costs one KVM_RUN: registers go in and out
        # through kvm_run, where KVM offers it (else through the ioctls)
        self._synced = self._vcpu.enable_sync_regs()
        self._words = self._vcpu.sync_words if self._synced else None
        self._fast = self._synced and self.mode != 'real'    # run() may take its fast path
        # the #GP frame a CPL3 `hlt` leaves on the IST/ring-0 stack, unpacked at
        # once: error code, RIP, CS, RFLAGS, RSP (SS follows)
        self._frame = (_FRAME_BY_MODE[self.mode].unpack_from, bytes(self._user_cs),
                       bytes(self._user_ss)) if self._synced and self.cpl == 3 else None
        self._fresh = _FreshState(self._vcpu)

    def _rebuild(self):
        """Move this Snippet to a new VM (from a recycled one whose vCPU has
        run), keeping its memory, registers and regions."""
        old, regions = self._vm, list(self._regions)
        contents = [(a, self.mem_read(a, n)) for a, n, perms in regions if perms]
        regs, sregs, xsave = self._vcpu.get_regs(), self._vcpu.get_sregs(), \
            self._vcpu.get_xsave()
        self._system, self._spares, self._tables_in_place, self._vm_ran = None, {}, None, False
        self._synced, self._fast, self._frame, self._fresh = False, False, None, None
        self._words = self._last_slot = None
        try:
            self._build()
            self._refast()
            for a, n, perms in regions:
                if perms:
                    self._vm.add_memory(a, n, readonly='w' not in perms)
            for a, data in contents:
                self.mem_write(a, data)
            self._vcpu.set_sregs(sregs)
            self._vcpu.set_regs(regs)
            self._vcpu.set_xsave(xsave)
            self._tables_dirty = self.mode == 'long64'
            self._traps = {}
            self._retrap()
        except BaseException:
            self._tainted = True           # half moved: never recycled
            raise
        finally:
            old.close()

    @property
    def vm(self):
        """The :class:`Vm` (its ``pio`` bus takes devices). A Snippet whose vm
        or vcpu was used is not recycled by the pool: its VM is closed."""
        self._exposed = True
        return self._vm

    @property
    def vcpu(self):
        """The :class:`Vcpu` (see :attr:`vm`)."""
        self._exposed = True
        return self._vcpu

    def close(self):
        """Give the VM back to the process's pool (reset, and the reset
        verified: see docs/snippets.md), or close it. Idempotent."""
        vm = self._vm
        if vm:
            try:
                recycled = self._recycle()
            except (KvmliteError, OSError, ValueError):
                recycled = False
            if not recycled:
                vm.close()
        # every later call names the mistake instead of failing on a dead fd
        self._vm = self._vcpu = _Closed('this Snippet')
        self._words = self._last_slot = None

    def _recycle(self):
        """Reset the VM to exactly what _build made and give it to the pool.
        False (the caller closes it) when something here cannot be reset, or
        the reset does not read back as fresh."""
        vm, v, fresh = self._vm, self._vcpu, getattr(self, '_fresh', None)
        if (self._exposed or self._tainted or fresh is None or v.running or v.fd < 0
                or vm.irqchip or vm._coalesced or vm.pio.devices() or vm.mmio.devices()
                or len(vm.vcpus) != 1 or not _snippet_pool_wants(self.kvm, self.mode, self.cpl)):
            return False
        self._waiting = self._last_slot = None
        v.complete_io()
        if self._traps:                      # memory hooks' pages back to plain RAM
            vm.trap_pages({})
            self._traps = {}
        if any(sl.parts for sl in vm.slots):
            return False
        if self._until is not None or self._steps is not None or self._stepping:
            self._disarm()
        if self._debugged:                   # (only _arm sets it: vcpu users are not here)
            v.set_guest_debug(enable=False)
        # memory: every RAM region becomes a zeroed spare slot for the next user
        spares = dict(self._spares)
        user = [sl for sl in vm.slots if sl is not self._system and sl not in spares.values()]
        for sl in user:
            sl.map.madvise(mmap.MADV_DONTNEED)       # zero pages; KVM's mapping follows
            spares[(sl.gpa, sl.size, sl.readonly)] = sl
        for sl in spares.values():
            if sl.map[:PAGE_SIZE].count(0) != PAGE_SIZE or sl.map[:].count(0) != sl.size:
                return False
        # the system area: the IST/ring-0 stack holds the last frames; every
        # other page the guest wrote (KVM's dirty log says which) must still
        # read back as kvmlite wrote it (a CPL0 snippet can write it)
        base, image, sysmap = self._system.gpa, self._sys_image, self._system.map
        stack = base + _SYS_STACK_TOP - PAGE_SIZE if self.mode != 'real' else None
        if stack is not None:
            self._system.view[stack - base:stack - base + PAGE_SIZE] = bytes(PAGE_SIZE)
        for page in vm.get_dirty_log(self._system):
            off = page - base
            if page != stack and sysmap[off:off + PAGE_SIZE] != (image[off:off + PAGE_SIZE]
                                                                 or _ZERO_PAGE):
                return False
        if not fresh.reset(v):
            return False
        vm.exit_counts.clear()
        for bus in (vm.pio, vm.mmio):                # the last user's accesses, counted
            bus.unclaimed.clear()
            bus.counts.clear()
            bus.unclaimed_other = bus.counts_other = bus.device_errors = 0
            bus.count_accesses = False
        _snippet_pool_give(self.kvm, self.mode, self.cpl, {
            '_vm': vm, '_vcpu': v, '_system': self._system, '_stubs': self._stubs,
            '_user_cs': self._user_cs, '_user_ss': self._user_ss, '_synced': self._synced,
            '_words': self._words,
            '_fast': self._synced and self.mode != 'real' and (self.mode == 'long64'
                                                               or not spares),
            '_frame': self._frame, '_fresh': fresh, '_spares': spares,
            '_tables_in_place': self._tables_in_place, '_sys_image': image,
            '_vm_ran': self._vm_ran or self._ran})
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the system area: GDT, TSS, IDT, stubs, page tables --------------------
    def _write_system_area(self):
        """(Re)create the system area. A new slot, not a rewrite: KVM's shadow
        MMU would keep using page tables that user space rewrote behind it."""
        if self._system is not None:
            self._vm.remove_memory(self._system)
        base, size = SNIPPET_SYSTEM[self.mode]
        # KVM logs the guest's writes to it: a reset checks just those pages
        self._system = self._vm.add_memory(base, size, dirty_log=True)
        self._sys_image = b''
        # guest address of vector 0's stub
        self._stubs = base + (_REAL_STUBS if self.mode == 'real' else _SYS_STUBS)
        stubs = _STUB * _SYSCALL_STUB + _PORT_STUB
        if self.mode == 'real':
            off = self._stubs - (_REAL_STUB_SEG << 4)
            ivt = b''.join(struct.pack('<HH', off + 4 * v, _REAL_STUB_SEG) for v in range(256))
            self._vm.write(base + _REAL_IVT, ivt)
            self._vm.write(base + _REAL_IVT - 512, ivt[512:])
            self._vm.write(self._stubs, stubs)
            self._sys_image = bytes(self._system.map)
            return
        gdt = SNIPPET_GDT + _tss_descriptor(base + _SYS_TSS, _TSS_LIMIT)
        self._vm.write(base + _SYS_GDT, struct.pack(f'<{len(gdt)}Q', *gdt))
        self._vm.write(base + _SYS_IDT, b''.join(self._gate(v) for v in range(256)))
        tss = bytearray(_TSS_LIMIT + 1)
        stack = base + _SYS_STACK_TOP
        if self.mode == 'long64':
            struct.pack_into('<QQ', tss, 4, stack, 0)      # RSP0
            struct.pack_into('<Q', tss, 0x24, stack)       # IST1: every gate uses it
        else:
            struct.pack_into('<II', tss, 4, stack, 0x18)   # ESP0, SS0
        struct.pack_into('<H', tss, 0x66, _IOPB)
        tss[-1] = 0xFF                                     # the bitmap's terminator
        self._vm.write(base + _SYS_TSS, bytes(tss))
        self._vm.write(self._stubs, stubs)
        if self.mode == 'long64':
            self._write_page_tables()
        else:
            self._sys_image = bytes(self._system.map)

    def _gate(self, vector):
        """An interrupt gate to ``vector``'s stub."""
        target = self._stubs + 4 * vector
        dpl = 3 if vector in _USER_GATES else 0
        kind = 0x8E | dpl << 5                             # present, interrupt gate
        if self.mode == 'long64':                          # IST 1, 64-bit code
            return struct.pack('<HHBBHIxxxx', target & 0xFFFF, 0x10, 1, kind,
                               target >> 16 & 0xFFFF, target >> 32)
        return struct.pack('<HHBBH', target & 0xFFFF, 0x08, 0, kind, target >> 16)

    def _enter_mode(self):
        """Set the vCPU straight into ``mode`` at ``cpl``: no code runs to get there."""
        s = self._sv()
        base = self._system.gpa
        if self.mode == 'real':
            for name in _SNIPPET_SEGS:
                seg = getattr(s, name)
                seg.selector, seg.base, seg.limit = 0, 0, 0xFFFF
            s.cr0 &= ~(CR0_PE | CR0_PG)
            s.idt.base, s.idt.limit = base + _REAL_IVT, 256 * 4 - 1
        else:
            code, data = _SNIPPET_SELECTORS[self.mode, self.cpl]
            long_mode = self.mode == 'long64'
            s.cs = segment(code, code=True, dpl=self.cpl, db=0 if long_mode else 1,
                           l=1 if long_mode else 0)
            for name in ('ds', 'es', 'fs', 'gs', 'ss'):
                setattr(s, name, segment(data, dpl=self.cpl))
            s.tr = kvm_segment(base=base + _SYS_TSS, limit=_TSS_LIMIT, selector=_SEL_TSS,
                               type=0xB, present=1)
            s.gdt.base, s.gdt.limit = base + _SYS_GDT, (len(SNIPPET_GDT) + 2) * 8 - 1
            s.idt.base, s.idt.limit = base + _SYS_IDT, 256 * (16 if long_mode else 8) - 1
            s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE
            s.cr4 = CR4_OSFXSR | CR4_OSXMMEXCPT
            s.efer = 0
            if long_mode:
                s.cr0 |= CR0_PG | CR0_WP
                s.cr4 |= CR4_PAE
                s.cr3 = base + _SYS_PAGE_TABLES
                s.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE
                self._vcpu.set_msrs({MSR_LSTAR: self._stubs + 4 * _SYSCALL_STUB,
                                    MSR_STAR: 0x10 << 32 | 0x23 << 48,
                                    MSR_SFMASK: 0x4700})   # TF, IF, DF, NT
        self._user_cs, self._user_ss = _copy(s.cs), _copy(s.ss)
        self._vcpu.set_sregs(s)
        # user code runs with interrupts on, as under any OS (and kvm_pvm's
        # R11 after a CPL3 syscall says IF=1 whatever RFLAGS said); none come
        self._vcpu.set_regs(kvm_regs(rflags=0x202 if self.cpl == 3 else 0x2))

    def _page_plan(self, hooked=()):
        """(address, size, PTE flags) of every range the guest may touch
        (the pages in ``hooked`` no-execute)."""
        sys = self._system.gpa
        plan = [(sys, _SYS_STUBS, PTE_P | PTE_RW | PTE_NX),          # GDT, IDT, TSS
                (self._stubs, PAGE_SIZE, PTE_P | PTE_US),            # stubs (LSTAR's at CPL3 too)
                (sys + _SYS_STACK_TOP - PAGE_SIZE, PAGE_SIZE, PTE_P | PTE_RW | PTE_NX)]  # stack
        for addr, size, perms in self._regions:
            nx = 0 if 'x' in perms else PTE_NX
            cuts = sorted(p for p in hooked if addr <= p < addr + size) if nx == 0 else ()
            for p in cuts:                     # code-hooked pages: no-execute for now
                if p > addr:
                    plan.append((addr, p - addr, PTE_P | PTE_RW | PTE_US))
                plan.append((p, PAGE_SIZE, PTE_P | PTE_RW | PTE_US | PTE_NX))
                size, addr = addr + size - p - PAGE_SIZE, p + PAGE_SIZE
            if size:
                plan.append((addr, size, PTE_P | PTE_RW | PTE_US | nx))
        return plan

    def _write_page_tables(self):
        """A 4-level identity map of the regions: 2 MiB pages where a region
        covers a whole aligned 2 MiB, 4 KiB pages elsewhere. With CPL3
        ranged code hooks armed (``_nx_pages``), a second map after it, the
        same but with their pages no-execute: CR3 switches between the two."""
        tables = {}                  # guest address -> table contents
        room = range(self._system.gpa + _SYS_PAGE_TABLES, self._system.end, PAGE_SIZE)

        def new(contents=None):
            if len(tables) == len(room):
                raise SnippetError(f'the regions need more than {len(room)} page tables: '
                                   'map fewer, larger or 2 MiB-aligned regions')
            a = room[len(tables)]
            tables[a] = contents if contents is not None else bytearray(PAGE_SIZE)
            return a

        def child(table, index):
            entry = struct.unpack_from('<Q', tables[table], index * 8)[0]
            if not entry:
                entry = new() | PTE_P | PTE_RW | PTE_US | PTE_AD
                struct.pack_into('<Q', tables[table], index * 8, entry)
            return entry & 0x000FFFFFFFFFF000

        for hooked in ((), self._nx_pages) if self._nx_pages else ((),):
            leaves = {}              # 2 MiB chunk -> big-page entry or a page table
            for addr, size, flags in self._page_plan(hooked):
                end = addr + size
                while addr < end:
                    chunk = addr >> 21
                    if not addr & 0x1FFFFF and end - addr >= 1 << 21:
                        leaves[chunk] = addr | flags | PTE_PS | PTE_AD
                        addr += 1 << 21
                        continue
                    table = leaves.setdefault(chunk, bytearray(PAGE_SIZE))
                    stop = min(end, (chunk + 1) << 21)
                    for a in range(addr, stop, PAGE_SIZE):
                        struct.pack_into('<Q', table, (a >> 12 & 511) * 8, a | flags | PTE_AD)
                    addr = stop
            pml4 = new()
            for chunk, leaf in sorted(leaves.items()):
                va = chunk << 21
                pd = child(child(pml4, va >> 39 & 511), va >> 30 & 511)
                entry = leaf if isinstance(leaf, int) else \
                    new(leaf) | PTE_P | PTE_RW | PTE_US | PTE_AD
                struct.pack_into('<Q', tables[pd], (va >> 21 & 511) * 8, entry)
        self._nx_cr3, self._nx_tables = pml4, self._nx_pages
        if self._nx_on:              # (a hook mapped memory): CR3 to the new second map
            self._set_nx(True)
        for a, contents in tables.items():
            self._vm.write(a, contents)
        self._tables_dirty = False
        self._tables_in_place = tuple(self._regions)
        # what kvmlite wrote (the pages up to the last table used, now or by an
        # earlier write of this slot); past it the area is zero (4 MiB: a copy
        # of all of it cost ~1 ms, twice in a process's first snippet)
        used = max(_SYS_PAGE_TABLES + len(tables) * PAGE_SIZE, len(self._sys_image))
        self._sys_image = bytes(self._system.map[:used])

    # -- memory ----------------------------------------------------------------
    def mem_map(self, addr, size, perms='rwx'):
        """Map ``size`` bytes of zeroed RAM at ``addr`` (both 4 KiB-aligned).
        Without 'w' the region is read-only: writes reach the MMIO hook.
        Without 'x' (long64 only: NX; prot32 and real refuse it) fetches
        fault with #PF. x86 pages are always readable, so ``perms`` must
        hold 'r'."""
        self._check_perms(perms)
        self._claim(addr, size, 'memory', keep=(addr, size, 'w' not in perms))
        self._settle()
        # a zeroed slot of the same shape that the VM's last user left: no ioctl
        if self._spares.pop((addr, size, 'w' not in perms), None) is None:
            self._vm.add_memory(addr, size, readonly='w' not in perms)
        self._add_region(addr, size, perms)
        if self._traps or 'mem_read' in self._hook_lists or 'mem_write' in self._hook_lists:
            self._retrap()

    def mem_unmap(self, addr, size):
        """Remove ``addr``..``addr + size`` (4 KiB-aligned) from the map, as
        unicorn's mem_unmap: it may cut a region (or several) and must lie in
        mapped memory or MMIO. The memory around it keeps its contents and
        permissions. Afterwards an access there is as to any unmapped
        address: #PF in long64, MMIO in prot32 and real."""
        self._reshape(addr, size, None, 'mem_unmap')

    def mem_protect(self, addr, size, perms):
        """Change the permissions of ``addr``..``addr + size`` (4 KiB-aligned,
        inside mapped RAM), as unicorn's mem_protect; contents are kept.
        Without 'w' writes reach the MMIO hook (a read-only KVM memory slot,
        every mode); without 'x' fetches fault with #PF (the page tables'
        NX bit: long64 only, as prot32 and real have no paging to say it)."""
        self._check_perms(perms)
        self._reshape(addr, size, perms, 'mem_protect')

    def mem_regions(self):
        """``[(begin, end, perms)]`` of every mapped range, sorted, as unicorn's
        mem_regions: ``end`` is the last byte (inclusive), ``perms`` 'rwx',
        'rw', 'r'... for RAM and '' for MMIO (mmio_map). kvmlite's own
        system area (SNIPPET_SYSTEM) is not listed."""
        return [(a, a + n - 1, p) for a, n, p in self._regions]

    def _check_perms(self, perms):
        if not isinstance(perms, str) or not set(perms) <= set('rwx') or 'r' not in perms:
            raise SnippetError(f"perms {perms!r}: use 'r' plus any of 'w', 'x' "
                               '(x86 memory is always readable)')
        if 'x' not in perms and self.mode != 'long64':
            raise SnippetError(f"perms {perms!r} in {self.mode}: no-execute needs the page "
                               f"tables' NX bit, and {self.mode} runs without paging; add 'x' "
                               "(or use mode='long64')")

    def _region_slot(self, addr, size):
        spares = self._spares.values()
        return next(s for s in self._vm.slots
                    if s.gpa == addr and s.size == size and s not in spares)

    def _reshape(self, addr, size, perms, what):
        """Unmap (``perms`` None) or re-permission ``addr``..``addr + size``:
        each region it touches is cut into the pieces outside it (as they
        were) and the piece inside it (``perms``, or gone). A KVM memory slot
        cannot be cut nor made read-only in place, so a touched RAM region
        gets new slots with its bytes copied over."""
        if addr % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or addr < 0:
            raise SnippetError(f'{what} at {addr:#x} of {size:#x} bytes: address and size must '
                               f'be multiples of {PAGE_SIZE:#x} (4 KiB), size above 0')
        end = addr + size
        hit = [r for r in self._regions if r[0] < end and addr < r[0] + r[1]]
        pos = addr
        for a, n, p in hit:
            if a > pos:
                break
            pos = a + n
        if pos < end:
            raise SnippetError(f'{what} at {addr:#x}-{end - 1:#x}: {pos:#x} is not mapped '
                               '(see mem_regions())')
        if perms is not None and any(not p for a, n, p in hit):
            a, n = next((a, n) for a, n, p in hit if not p)
            raise SnippetError(f'{what} at {addr:#x}-{end - 1:#x}: {a:#x}-{a + n - 1:#x} is '
                               'MMIO (mmio_map), which has no permissions: unmap it instead')
        self._settle()
        for a, n, p in hit:
            lo, hi = max(a, addr), min(a + n, end)
            pieces = [(a, lo - a, p), (lo, hi - lo, perms), (hi, a + n - hi, p)]
            pieces = [(pa, pn, pp) for pa, pn, pp in pieces if pn and pp is not None]
            self._regions.remove((a, n, p))
            if not p:                                    # MMIO: no slot behind it
                self._regions.extend(pieces)
                continue
            if pieces == [(a, n, perms)] and ('w' in perms) == ('w' in p):
                self._regions.append(pieces[0])          # only 'x' changed: the tables say it
                continue
            slot = self._region_slot(a, n)
            data = bytes(slot.map)
            self._vm.remove_memory(slot)
            for pa, pn, pp in pieces:
                new = self._vm.add_memory(pa, pn, readonly='w' not in pp)
                new.view[:] = data[pa - a:pa - a + pn]
                self._regions.append((pa, pn, pp))
        self._regions.sort()
        self._tables_dirty = self.mode == 'long64'
        if self._traps or 'mem_read' in self._hook_lists or 'mem_write' in self._hook_lists:
            self._retrap()              # the new slots are whole: cut the hooked pages out again

    def mmio_map(self, addr, size):
        """Make ``addr``..``addr + size`` device memory: no RAM, every access
        goes to the MMIO hook. (In real and prot32 mode, which run without
        paging, any unmapped address already does; in long64 only mapped
        pages are present, the rest faults with #PF.)"""
        self._claim(addr, size, 'MMIO')
        self._settle()
        self._add_region(addr, size, '')

    def _claim(self, addr, size, what, keep=None):
        if addr % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise SnippetError(f'{what} at {addr:#x} of {size:#x} bytes: address and size must '
                               f'be multiples of {PAGE_SIZE:#x} (4 KiB), size above 0')
        if self.mode == 'long64' and addr + size > 1 << 47:
            raise SnippetError(f'{what} at {addr:#x}-{addr + size - 1:#x}: long64 maps '
                               'identity pages below 0x800000000000 only')
        taken = [(a, s, 'MMIO' if not p else f'memory ({p})') for a, s, p in self._regions]
        taken.append((self._system.gpa, self._system.size, "kvmlite's system area"))
        for a, s, name in taken:
            if addr < a + s and a < addr + size:
                raise SnippetError(f'{what} at {addr:#x}-{addr + size - 1:#x} overlaps '
                                   f'{name} at {a:#x}-{a + s - 1:#x}')
        for key, slot in list(self._spares.items()):     # a last user's, not ours
            if key != keep and addr < slot.end and slot.gpa < addr + size:
                self._settle()
                self._vm.remove_memory(slot)
                del self._spares[key]

    def _add_region(self, addr, size, perms):
        self._regions.append((addr, size, perms))
        self._regions.sort()
        self._tables_dirty = self.mode == 'long64'

    def _ram_pieces(self, addr, size):
        """(address, length) pieces of ``addr``..``addr + size``, one per slot."""
        spares = self._spares.values()
        while size > 0:
            slot = next((s for s in self._vm.slots if s.gpa <= addr < s.end
                         and s not in spares), None)
            if slot is None:
                raise SnippetError(f'{addr:#x} is not in mapped memory (mem_map it first)')
            n = min(size, slot.end - addr)
            yield addr, n
            addr, size = addr + n, size - n

    def mem_write(self, addr, data):
        try:                  # the usual case: into the slot the last write went to
            gpa, end, view = self._last_slot
            if gpa <= addr and addr + len(data) <= end and self._waiting is None:
                view[addr - gpa:addr - gpa + len(data)] = data
                return
        except (TypeError, ValueError):      # none yet, a removed slot, not bytes
            pass
        if self._waiting is not None:
            self._settle()
        if type(data) is not bytes:
            data = bytes(data)
        n, spares = len(data), self._spares
        for slot in self._vm.slots:          # one slot holds it all
            off = addr - slot.gpa
            if 0 <= off and off + n <= slot.size and (not spares or slot not in spares.values()):
                slot.view[off:off + n] = data
                self._last_slot = (slot.gpa, slot.end, slot.view)
                return
        done = 0
        for a, n in list(self._ram_pieces(addr, len(data))):
            self._vm.write(a, data[done:done + n])
            done += n

    def mem_read(self, addr, size):
        return b''.join(self._vm.read(a, n) for a, n in self._ram_pieces(addr, size))

    def _peek(self, addr):
        """The byte at ``addr``, or None where no RAM is."""
        for slot in self._vm.slots:
            off = addr - slot.gpa
            if 0 <= off < slot.size:
                return slot.map[off]
        return None

    # -- registers -------------------------------------------------------------
    def reg_read(self, name):
        """A register by name: rax..r15 and their 32/16/8-bit views (eax, ax,
        al, ah, r8d...), rip/eip/ip, rflags/eflags/flags, cs..ss (selectors),
        cs_base..gs_base, cr0, cr2, cr3, cr4, cr8, efer, xmm0-xmm15 (128-bit
        ints) and mxcsr."""
        try:                                        # the usual case, straight from kvm_run
            return self._words[_SNIPPET_WORD[name]]
        except (KeyError, TypeError):               # not a 64-bit GPR, or not synced (None)
            pass
        if self._words is not None:
            key = _SNIPPET_VIEW.get(name) if type(name) is str else None
            if key is not None:
                return self._words[key[0]] >> key[1] & key[2]
        where, key = self._register(name)
        if where == 'gpr':
            field, shift, bits = key
            return getattr(self._rv(), field) >> shift & ((1 << bits) - 1)
        if where == 'xsave':
            raw = bytes(self._vcpu.get_xsave())
            return int.from_bytes(raw[key[0]:key[0] + key[1]], 'little')
        s = self._sv()
        if where == 'seg':
            seg, attr = key
            return getattr(getattr(s, seg), attr)
        return getattr(s, key)

    def reg_write(self, name, value):
        """Set a register (see :meth:`reg_read`). A narrow view keeps the other
        bits (as unicorn does); xmm registers take an int or 16 bytes. Segment
        selectors can be written in real mode only (the base follows)."""
        if self._waiting is None:
            try:                                     # the usual case: straight into kvm_run
                words = self._words
                words[_SNIPPET_WORD[name]] = value   # (ValueError: < 0 or >= 2**64)
                words[_WORD_DIRTY] |= KVM_SYNC_X86_REGS      # (Vcpu.mark_dirty)
                return
            except (KeyError, TypeError, ValueError):
                pass
        where, key = self._register(name)
        if self._waiting is not None:
            self._settle()
        if where == 'xsave':
            off, size = key
            if isinstance(value, (bytes, bytearray)):
                if len(value) != size:
                    raise SnippetError(f'{name} takes {size} bytes, got {len(value)}')
                value = int.from_bytes(value, 'little')
            raw = bytearray(bytes(self._vcpu.get_xsave()))
            raw[off:off + size] = (value & ((1 << 8 * size) - 1)).to_bytes(size, 'little')
            # a clear XSTATE_BV bit would make KVM load the SSE state as all zeros
            struct.pack_into('<Q', raw, _XSAVE_BV,
                             struct.unpack_from('<Q', raw, _XSAVE_BV)[0] | _XFEATURE_SSE)
            self._vcpu.set_xsave(bytes(raw))
            return
        if not isinstance(value, int):
            raise SnippetError(f'{name} takes an int, got {type(value).__name__}')
        if where == 'gpr':
            field, shift, bits = key
            if not -(1 << bits - 1) <= value < 1 << bits:
                raise SnippetError(f'{name} = {value:#x} does not fit in its {bits} bits')
            regs = self._rv()
            mask = ((1 << bits) - 1) << shift
            setattr(regs, field, getattr(regs, field) & ~mask | (value << shift) & mask)
            self._put_regs(regs)
            return
        if not -(1 << 63) <= value < 1 << 64:
            raise SnippetError(f'{name} = {value:#x} does not fit in 64 bits')
        value &= (1 << 64) - 1
        s = self._sv()
        if where == 'seg':
            seg, attr = key
            if attr == 'selector':
                if self.mode != 'real':
                    raise SnippetError(f'{name}: selectors are kvmlite\'s in {self.mode}; '
                                       f'write {name}_base instead')
                getattr(s, seg).base = (value & 0xFFFF) << 4
            setattr(getattr(s, seg), attr, value)
        else:
            setattr(s, key, value)
        self._vcpu.set_sregs(s)

    def _register(self, name):
        """(where, key) of a register name, or SnippetError."""
        n = name.lower() if isinstance(name, str) else ''
        if n in _SNIPPET_GPRS:
            return 'gpr', _SNIPPET_GPRS[n]
        if n in _SNIPPET_SEGS:
            return 'seg', (n, 'selector')
        if n.endswith('_base') and n[:-5] in _SNIPPET_SEGS:
            return 'seg', (n[:-5], 'base')
        if n in _SNIPPET_SREGS:
            return 'sreg', n
        if n.startswith('xmm') and n[3:].isdigit() and int(n[3:]) < 16:
            return 'xsave', (_XSAVE_XMM + 16 * int(n[3:]), 16)
        if n == 'mxcsr':
            return 'xsave', (_XSAVE_MXCSR, 4)
        raise SnippetError(f'unknown register {name!r}: use rax..r15 (or eax, ax, al...), rip, '
                           'rflags, cs..ss, fs_base, gs_base, cr0..cr4, efer, xmm0..xmm15, mxcsr')

    def flags(self):
        """The names of the status and control flags set in RFLAGS ('CF', 'ZF'...)."""
        rflags = self._rv().rflags
        return frozenset(f for f, bit in SNIPPET_FLAGS.items() if rflags >> bit & 1)

    def context_save(self):
        """The CPU state, as unicorn's context_save: every general, segment
        and control register, RIP, RFLAGS and the FPU/SSE/AVX state (not
        memory, not hooks). :meth:`context_restore` puts it back, here or
        in another Snippet of the same mode and CPL."""
        self._settle()
        v = self._vcpu
        return SnippetContext(self.mode, self.cpl, bytes(v.get_regs()), bytes(v.get_sregs()),
                              bytes(v.get_xsave()))

    def context_restore(self, context):
        """Put back a :meth:`context_save` (an 'mmio' stop's half-done
        access is given up, as by reg_write)."""
        if not isinstance(context, SnippetContext):
            raise SnippetError(f'context_restore takes what context_save returned, not '
                               f'{type(context).__name__}')
        if (context.mode, context.cpl) != (self.mode, self.cpl):
            raise SnippetError(f'context_restore: the context is of {context.mode} at CPL'
                               f'{context.cpl}, this Snippet {self.mode} at CPL{self.cpl}: the '
                               'segments and system registers would not fit')
        self._settle()
        v = self._vcpu
        v.set_sregs(kvm_sregs.from_buffer_copy(context.sregs))
        v.set_regs(kvm_regs.from_buffer_copy(context.regs))
        v.set_xsave(context.xsave)

    # -- hooks -----------------------------------------------------------------
    # Each hook gets the Snippet first, so it can read and write registers and
    # memory, or call stop(). A kind may have several hooks: they are called in
    # the order added until one answers (returns something other than None;
    # for hook_exception, True). Each hook_* returns a handle for hook_del.
    def _add_hook(self, kind, fn, arg=None):
        if not callable(fn):
            raise SnippetError(f'hook_{kind} takes a function, not {type(fn).__name__}')
        handle = self._hook_next
        self._hook_next += 1
        self._hook_lists.setdefault(kind, []).append((handle, fn, arg))
        self._hook_chain(kind)
        return handle

    def _hook_chain(self, kind):
        """Make ``self._hooks[kind]``: the one hook itself (no cost), or a
        function that asks each in turn."""
        entries = self._hook_lists.get(kind)
        if kind in ('mem_read', 'mem_write'):
            if not entries:
                self._hook_lists.pop(kind, None)
            self._retrap()              # (the handler reads _hook_lists itself)
            return
        if not entries:
            self._hooks.pop(kind, None)
            self._hook_lists.pop(kind, None)
            self._refast()
            return
        if kind == 'msr':               # each hook sees only the MSRs it asked for
            def chain(s, index, value):
                for _, fn, msrs in list(entries):
                    if msrs is None or index in msrs:
                        answer = fn(s, index, value)
                        if answer is not None:
                            return answer
                return None
        elif len(entries) == 1:
            chain = entries[0][1]
        elif kind == 'exception':
            def chain(s, stop):
                return any(fn(s, stop) for _, fn, _ in list(entries))
        else:
            def chain(s, *args):
                for _, fn, _ in list(entries):
                    answer = fn(s, *args)
                    if answer is not None:
                        return answer
                return None
        self._hooks[kind] = chain
        if kind == 'code':
            self._refast()

    def _refast(self):
        """run() may take its fast path unless a hook needs the run set up
        (code hooks step it)."""
        self._fast = self._synced and self.mode != 'real' and 'code' not in self._hooks \
            and (not self._spares or self.mode == 'long64')

    def hook_del(self, handle):
        """Remove the hook a hook_* call returned ``handle`` for (unicorn's
        hook_del). A cpuid hook can be removed before the first run only."""
        for kind, entries in self._hook_lists.items():
            for i, entry in enumerate(entries):
                if entry[0] == handle:
                    if kind == 'cpuid':
                        if self._ran:
                            raise SnippetError('hook_del of a cpuid hook after a run: KVM '
                                               'fixes the CPUID table once the vCPU has run')
                        del entries[i]
                        self._apply_cpuid(fresh=True)
                    else:
                        del entries[i]
                    self._hook_chain(kind)
                    return
        raise SnippetError(f'hook_del({handle!r}): no such hook (already removed, or not a '
                           'handle a hook_* call returned)')

    def __getattr__(self, name):
        # only for names not found: unicorn's calls kvmlite cannot offer say why
        why = _UNICORN_MISSING.get(name)
        if why is None:
            raise AttributeError(f'{type(self).__name__!r} object has no attribute {name!r}')
        raise SnippetUnsupported(f'Snippet.{name}: {why}')

    def hook_io(self, fn):
        """``fn(snippet, port, size, value)`` for each ``out`` (``value`` an
        int) and ``in`` (``value`` None: return the value; None reads all
        ones). Without a hook, port I/O goes to ``snippet.vm.pio``."""
        return self._add_hook('io', fn)

    def hook_mmio(self, fn):
        """``fn(snippet, address, size, value)`` for each access to memory
        no RAM backs (see mmio_map) and each write to read-only memory;
        ``value`` is None for a read: return the value (None reads all ones).
        Without a hook such an access stops the run ('mmio')."""
        return self._add_hook('mmio', fn)

    def hook_msr(self, fn, msrs=None):
        """``fn(snippet, index, value)`` for each ``rdmsr`` (``value`` None:
        return the value) and ``wrmsr`` of the MSRs in ``msrs`` (default: all).
        Return None to let KVM do what it would have done, False to make the
        instruction raise #GP. rdmsr and wrmsr are CPL0 instructions."""
        if msrs is not None:
            msrs = frozenset(msrs)
        everything = [m for _, _, m in self._hook_lists.get('msr', ())] + [msrs]
        union = None if None in everything else sorted(frozenset().union(*everything))
        if union is not None and len(union) > KVM_MSR_FILTER_MAX_RANGES:
            raise SnippetError(f'hook_msr takes at most {KVM_MSR_FILTER_MAX_RANGES} MSRs '
                               f'(one filter range each) over all MSR hooks, or None for all')
        self._vm.enable_cap(Cap.X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER |
                           KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL)
        both = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE
        # a filter bit of 0 denies the access, and a denied access exits to us;
        # KVM refuses a deny-all filter without ranges, hence the one empty range
        ranges = [(both, index, 1, b'\0') for index in (union if union is not None else [0])]
        self._vm.set_msr_filter(ranges, default_allow=union is not None)
        self._tainted = True           # VM-wide: this VM is closed, not recycled
        return self._add_hook('msr', fn, msrs)

    def hook_cpuid(self, fn, leaves=()):
        """``fn(snippet, leaf, subleaf)`` returns ``(eax, ebx, ecx, edx)`` or
        None (keep KVM's answer). KVM answers the guest's ``cpuid`` from a
        table that is fixed once the vCPU has run, so ``fn`` is asked now, for
        every leaf in KVM's table and in ``leaves`` (ints or (leaf, subleaf)),
        and the guest's ``cpuid`` then returns its answers. Answers that take
        away what the mode needs (long mode, the physical address width) stop
        the VM. On kvm_pvm a CPL3 ``cpuid`` bypasses KVM (the hook needs
        CPL0), and even at CPL0 leaf 1's ECX and EDX, leaf 7 and leaf 0xD
        report the host CPU's features whatever the table says."""
        if self._ran:
            raise SnippetError('hook_cpuid must come before the first run: KVM fixes the '
                               'CPUID table once the vCPU has run')
        if self.cpl == 3 and host_emulates_kernel_mode():
            raise SnippetError('hook_cpuid at CPL3: on kvm_pvm a CPL3 cpuid runs on the host '
                               'CPU and never reaches KVM (nor does CPUID faulting); use cpl=0')
        if not callable(fn):
            raise SnippetError(f'hook_cpuid takes a function, not {type(fn).__name__}')
        handle = self._hook_next
        self._hook_next += 1
        self._hook_lists.setdefault('cpuid', []).append((handle, fn, tuple(leaves)))
        try:
            self._apply_cpuid()
        except BaseException:
            self._hook_lists['cpuid'].pop()
            raise
        return handle

    def _apply_cpuid(self, fresh=False):
        """Set KVM's CPUID table from the cpuid hooks: the newest one's
        answers over the table the earlier ones made (``fresh``: ask them
        all again, from KVM's own table)."""
        hooks = self._hook_lists.get('cpuid', [])
        base = getattr(self, '_cpuid_table', None)
        if fresh or base is None:
            entries, ask = cpuid_entries(self.kvm), hooks
        else:
            entries, ask = [_copy(e) for e in base], hooks[-1:]
        for _, fn, leaves in ask:
            known = {(e.function, e.index) for e in entries}
            for leaf in leaves:
                leaf, sub = leaf if isinstance(leaf, tuple) else (leaf, 0)
                if (leaf, sub) not in known:
                    flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX if sub else 0
                    entries.append(kvm_cpuid_entry2(function=leaf, index=sub, flags=flags))
            for e in entries:
                answer = fn(self, e.function, e.index)
                if answer is not None:
                    e.eax, e.ebx, e.ecx, e.edx = (v & 0xFFFFFFFF for v in answer)
        if self._vm_ran:
            self._rebuild()                # KVM fixes CPUID once a vCPU has run
        self._vcpu.set_cpuid2(entries)
        self._cpuid_table = entries

    def hook_syscall(self, fn):
        """``fn(snippet)`` for each ``syscall`` (long64) and ``int 0x80``
        (at CPL3): it reads the arguments with reg_read and returns the result
        for RAX (None leaves RAX as it is). The snippet goes on after the
        instruction; SYSCALL's RCX and R11 hold the return RIP and RFLAGS, as
        on hardware. Without a hook a system call stops the run ('syscall')."""
        return self._add_hook('syscall', fn)

    def hook_exception(self, fn):
        """``fn(snippet, stop)`` for each exception (and software interrupt
        other than int3 and system calls): ``stop`` is the :class:`Stop` the
        run would return. Return True to go on (from the registers as the hook
        left them: a fault's RIP is the faulting instruction), else the run
        stops with ``stop``. With several, the first that returns True
        takes it and the rest are not asked."""
        return self._add_hook('exception', fn)

    # -- memory hooks: unicorn's UC_HOOK_MEM_READ / UC_HOOK_MEM_WRITE on RAM
    def hook_mem_read(self, fn, begin=1, end=0):
        """``fn(snippet, 'read', address, size, value)`` for each read of RAM
        at an address in ``begin``..``end`` (inclusive; ``begin > end``, the
        default, as in unicorn: all RAM); ``value`` is what the read finds.
        The hook may change memory (the read then gets the new bytes, as in
        unicorn, where the hook runs before the read) or call stop() (the
        run ends after the reading instruction). The pages the range touches
        leave RAM while the hook lasts (KVM has no memory slot there), so
        every access to them, in or out of the range, exits to kvmlite,
        which completes it: a VM exit each (see docs/snippets.md). Code
        cannot run from such a page: an instruction fetched there raises
        SnippetError. Several hooks may be added; each whose range holds
        the address is called, in the order added."""
        return self._mem_hook('mem_read', fn, begin, end)

    def hook_mem_write(self, fn, begin=1, end=0):
        """``fn(snippet, 'write', address, size, value)`` for each write to
        writable RAM at an address in ``begin``..``end`` (as hook_mem_read);
        ``value`` is the value written, already in memory when ``fn`` runs.
        The pages the range touches become read-only for KVM while the hook
        lasts: reads and code fetches stay at full speed, each write exits
        to kvmlite, which does it. A write to read-only memory (mem_map
        'r') is not done and goes to hook_mmio, as without this hook."""
        return self._mem_hook('mem_write', fn, begin, end)

    def hook_mem_unmapped(self, fn, begin=1, end=0):
        """``fn(snippet, access, address, size, value)`` for each access to an
        address in ``begin``..``end`` where nothing is mapped (no RAM, no
        mmio_map), as unicorn's UC_HOOK_MEM_UNMAPPED: ``access`` is
        'read_unmapped', 'write_unmapped' or 'fetch_unmapped'; ``value`` the
        value a write would write (0 for a read or fetch). Return True after
        mapping the address (mem_map) and the access is retried there and the
        run goes on; otherwise the run goes on as without this hook (a #PF
        in long64, hook_mmio or an 'mmio' stop for a read or write in prot32
        and real, an 'unmapped' stop for a fetch there). In long64, where
        the access is a #PF that tells neither its size nor a write's value,
        kvmlite runs the instruction once more with the page present and no
        memory behind it, so KVM reports the access (a page-table rewrite
        and a VM exit more); ``size`` and a write's ``value`` are None
        where that cannot be done (kvmlite's system area, addresses past
        the guest's physical width). A fetch's ``size`` is 1 (the first
        byte no memory backs) in every mode."""
        return self._mem_hook('mem_unmapped', fn, begin, end)

    def _mapped(self, address):
        """Whether a region (RAM or MMIO) holds ``address``."""
        return any(a <= address < a + n for a, n, _ in self._regions)

    def _unmapped(self, access, address, size, value):
        """Ask the unmapped hooks about an access where nothing is mapped.
        True when one answered True and ``address`` is mapped now."""
        for _, fn, rng in list(self._hook_lists.get('mem_unmapped', ())):
            if (rng is None or rng[0] <= address <= rng[1]) \
                    and fn(self, access, address, size, value):
                return self._mapped(address)
        return False

    def _mem_hook(self, kind, fn, begin, end):
        if not isinstance(begin, int) or not isinstance(end, int):
            raise SnippetError(f'hook_{kind} begin={begin!r}, end={end!r}: addresses are ints')
        return self._add_hook(kind, fn, (begin, end) if begin <= end else None)

    def _retrap(self):
        """Take the pages the memory hooks cover out of RAM (Vm.trap_pages:
        a read-only KVM slot for a write-hooked page, none for a read-hooked
        one) and put every other page back."""
        want, lists = {}, self._hook_lists
        for kind, trap in (('mem_write', 'write'), ('mem_read', 'access')):
            for _, _, rng in lists.get(kind, ()):
                for a, n, p in self._regions:
                    if not p or (trap == 'write' and 'w' not in p):
                        continue            # MMIO; read-only RAM, whose writes exit already
                    lo, hi = (a, a + n - 1) if rng is None else (max(a, rng[0]),
                                                                 min(a + n - 1, rng[1]))
                    for page in range(lo & -PAGE_SIZE, hi + 1, PAGE_SIZE):
                        want[page] = trap
        if want or self._traps:
            self._settle()
            self._vm.trap_pages(want)
        self._traps = want

    def _mem_hooked(self, exit, is_write):
        """An access to a page the memory hooks took out of RAM: do it in the
        page's memory and call the hooks. False: a write to read-only RAM
        (the MMIO path takes it, as without memory hooks)."""
        addr, vm = exit.addr, self._vm
        slot = vm._slot(addr, 1)
        off = addr - slot.gpa
        if is_write:
            if slot.readonly:
                return False
            data = exit.data
            n = len(data)
            slot.view[off:off + n] = data
            vm.mark_written(addr)
            kind, access, value = 'mem_write', 'write', exit.value
        else:
            n = len(exit.buf)
            kind, access = 'mem_read', 'read'
            value = int.from_bytes(slot.map[off:off + n], 'little')
        for _, fn, rng in list(self._hook_lists.get(kind, ())):
            if rng is None or rng[0] <= addr <= rng[1]:
                fn(self, access, addr, n, value)
        if not is_write:
            now = self._fetch(addr, n)      # what a hook wrote there is what the guest reads
            exit.set(int.from_bytes(now, 'little') if len(now) == n else value)
        return True

    def _fetch_hooked(self, linear, n=15):
        """The first address of ``linear``..``linear + n`` in a page a read
        hook took out of RAM, or None."""
        traps = self._traps
        for page in range(linear & -PAGE_SIZE, linear + n, PAGE_SIZE):
            if traps.get(page) == 'access':
                return max(page, linear)
        return None

    def _no_code_there(self, address):
        raise SnippetError(f'instruction fetch at {address:#x}: hook_mem_read has that page out '
                           'of RAM (every access to it exits to kvmlite, and KVM cannot run code '
                           'from a page that is not RAM); give the read hook a range that holds '
                           'no code, or hook_del it')

    # -- code hooks: a callback before each instruction (unicorn's UC_HOOK_CODE)
    def hook_code(self, fn, begin=1, end=0):
        """``fn(snippet, address, size)`` before each instruction whose
        address is in ``begin``..``end`` (inclusive; ``begin > end``, the
        default, as in unicorn: every instruction) runs; ``size`` is its
        length in bytes. The hook may read and write registers and memory,
        move RIP (the run goes on there), or call stop() (the run ends
        before the instruction, RIP at it). Each call costs a VM exit:
        kvmlite single-steps (KVM's single-step at CPL0 and in real mode;
        at CPL3 the trap flag, with kvmlite's own #DB handler), or, at CPL0
        and in real mode where every hook's range holds 4 addresses or
        fewer, puts KVM's hardware breakpoints on those addresses and runs
        at full speed in between. In long64 at CPL3, where every hook has
        a range (and no count= or until=), the pages the ranges touch are
        no-execute while the snippet runs elsewhere at full speed: a fetch
        there is a #PF that starts the stepping, which ends when the
        snippet leaves those pages. See docs/snippets.md."""
        if not isinstance(begin, int) or not isinstance(end, int):
            raise SnippetError(f'hook_code begin={begin!r}, end={end!r}: addresses are ints')
        return self._add_hook('code', fn, (begin, end) if begin <= end else None)

    def _arm_code(self, until, count):
        """Before a run with code hooks: choose how to stop before each
        hooked instruction, and call the hooks for the first one."""
        self._until, self._patched, self._steps, self._io_step = until, None, count, None
        self._step_last = self._step_op = None
        ranges = [arg for _, _, arg in self._hook_lists['code']]
        points = None
        if self._emulated() and count is None and None not in ranges:
            points = {until} if until is not None else set()
            for b, e in ranges:
                points.update(range(b, min(e, b + 4) + 1))
            points = sorted(points) if len(points) <= 4 else None
        self._bp_points, self._bp_past = points, False
        self._plain_handlers = self._handlers()
        if points is not None:
            self._stepping = 'bp'          # KVM's breakpoints: full speed in between
            self._debugged = True
            self._vcpu.set_guest_debug(breakpoints=points)
        elif self._emulated():
            self._stepping = 'kvm'         # KVM_GUESTDBG_SINGLESTEP: an exit per instruction
            self._debugged = True
            self._vcpu.set_guest_debug(singlestep=True)
        else:
            # CPL3: kvm_pvm's step and breakpoints do not reach the VMM there, so
            # the trap flag's #DB goes through kvmlite's IDT to its stub's exit
            self._stepping = 'tf'
            if self.mode == 'long64' and count is None and until is None and None not in ranges:
                # ranges only: the hooked pages are no-execute while the snippet
                # runs elsewhere (at full speed); a fetch there is a #PF that
                # starts the stepping, which ends where the snippet leaves them
                pages = set()
                for b, e in ranges:
                    for a, n, p in self._regions:
                        lo, hi = max(a, b), min(a + n - 1, e)
                        if 'x' in p and lo <= hi:
                            pages.update(range(lo & -PAGE_SIZE, hi + 1, PAGE_SIZE))
                self._nx_pages = frozenset(pages)
                if self._nx_tables != self._nx_pages:
                    if self._vm_ran or self._ran:
                        self._write_system_area()  # KVM may cache the old tables: a new slot
                    else:
                        self._write_page_tables()
                if self._linear(self._rv().rip) & -PAGE_SIZE not in pages:
                    self._stepping = 'nx'
                    self._set_nx(True)
        self._handler_table = self._step_handlers()
        go = True if points is not None or self._stepping == 'nx' else self._code_report(False)
        if not go:
            self._vcpu._map[1] = 1         # immediate_exit: the Stop is already made
        elif self._stepping == 'tf':
            self._vcpu.set_regs(rflags=self._rv().rflags | RFLAGS_TF)

    def _disarm_code(self):
        if self._stepping == 'tf':
            self._vcpu.set_regs(rflags=self._rv().rflags & ~RFLAGS_TF)
        elif self._stepping != 'nx':
            self._vcpu.set_guest_debug(enable=False)
        if self._nx_on:                        # back to the plain map
            self._set_nx(False)
        self._nx_pages = None
        self._handler_table = self._plain_handlers
        self._stepping = self._until = self._patched = self._steps = None

    def _set_nx(self, on):
        """Make the hooked pages no-execute (``on``) or as their regions say:
        CR3 to the one map or the other (both written when the hooks were
        armed), a register write rather than a page-table rewrite."""
        self._nx_on = on
        s = self._sv()
        s.cr3 = self._nx_cr3 if on else self._system.gpa + _SYS_PAGE_TABLES
        self._put_sregs(s)

    def _nx_enter(self):
        """A fetch from a no-execute hooked page: step from here (the exit
        handler then calls _code_continue, which calls its hooks)."""
        self._stepping = 'tf'
        self._set_nx(False)
        self._step_last = None
        return True

    def _nx_leave(self, regs):
        """The snippet steps out of the hooked pages: on at full speed."""
        self._stepping = 'nx'
        regs.rflags &= ~RFLAGS_TF
        self._put_regs(regs)
        self._set_nx(True)
        return True

    def _fetch(self, linear, n):
        """Up to ``n`` bytes of RAM from ``linear`` (fewer where RAM ends)."""
        for slot in self._vm.slots:
            off = linear - slot.gpa
            if 0 <= off < slot.size and not (self._spares and slot in self._spares.values()):
                data = bytes(slot.map[off:off + n])
                if len(data) < n:
                    data += self._fetch(slot.end, n - len(data))
                return data
        return b''

    def _fetch_ends(self, linear):
        """Where RAM ends inside the instruction at ``linear`` (the address
        of its first byte that no RAM backs), or None when it fits."""
        code = self._fetch(linear, 15)
        if len(code) == 15 or _insn_length(code, 64 if self.mode == 'long64' else 32) \
                is not None:
            return None
        return linear + len(code)

    def _code_report(self, completed):
        """The snippet is about to run the instruction at RIP: count the one
        it ``completed``, stop for ``until``, call the code hooks. True runs
        on, False ends the run (self._stop)."""
        regs = self._rv()
        rip = regs.rip
        tf = self._stepping == 'tf'
        if completed and tf and self._step_op == (0, 0x9C):
            # pushf pushed the trap flag kvmlite set: the snippet's copy has it clear
            sp = self._linear(regs.rsp) if self.mode != 'real' else self._sv().ss.base + (
                regs.rsp & 0xFFFF)
            b = self._peek(sp + 1)
            if b is not None and b & 1:
                self.mem_write(sp + 1, bytes((b & 0xFE,)))
        bits = {'real': 16, 'prot32': 32, 'long64': 64}[self.mode]
        dec = None
        for _ in range(64):                    # a hook that moves RIP: the new place's hooks
            linear = self._linear(rip)
            if completed and self._steps is not None:
                self._steps -= 1
                if self._steps <= 0:
                    return self._halt(Stop('count', rip))
            completed = False
            if self._nx_pages is not None and linear & -PAGE_SIZE not in self._nx_pages:
                return self._nx_leave(regs)
            if self._until is not None and linear == self._until:
                return self._halt(Stop('until', rip, address=linear))
            dec = _insn_length(self._fetch(linear, 15), bits)
            if dec is None:                    # not all in RAM: it faults when it runs
                return True
            self._step_last, self._step_op = linear, dec[1:]
            if tf:
                regs.rflags &= ~RFLAGS_TF
                self._put_regs(regs)
            for _, fn, rng in list(self._hook_lists.get('code', ())):
                if rng is None or rng[0] <= linear <= rng[1]:
                    fn(self, linear, dec[0])
            regs = self._rv()
            if tf:
                regs.rflags |= RFLAGS_TF
                self._put_regs(regs)
            if self._vcpu._map[1]:             # stop(): the run ends before this instruction
                return True
            if regs.rip == rip:
                break
            rip = regs.rip
        if not tf and dec[1:] == (0, 0xF4):
            # KVM's single-step and breakpoints step over hlt without KVM_EXIT_HLT
            self._set_rip(rip + dec[0])
            return self._halt(Stop('hlt', rip + dec[0]))
        return True

    def _consume_halt(self):
        """KVM's emulator stepped over a stub's hlt, but keeps its halt request
        and halts after the next instruction it runs unstepped (kvm_pvm runs
        all CPL0 code so): let it halt now, on the stub's nop, and put the
        registers back."""
        v = self._vcpu
        regs = kvm_regs.from_buffer_copy(self._rv())
        v.set_guest_debug(enable=False)
        try:
            fcntl.ioctl(v.fd, KVM_RUN)           # nop; then the pending halt: KVM_EXIT_HLT
        except OSError:
            pass
        v.set_regs(regs)
        if self._stepping == 'bp' and not self._bp_past:
            v.set_guest_debug(breakpoints=self._bp_points)
        else:
            v.set_guest_debug(singlestep=True)

    def _code_continue(self, completed):
        """A handler resumed the snippet while code hooks step it."""
        if self._stepping == 'nx':
            return True                        # outside the hooked pages: not stepping
        linear = self._linear(self._rv().rip)
        if self._stubs <= linear < self._stubs + 4 * (_SYSCALL_STUB + 1):
            return True                        # still in kvmlite's stubs: not the snippet's
        if self._stepping == 'bp':
            if self._bp_past:                  # the one step past a breakpoint is done
                self._bp_past = False
                self._vcpu.set_guest_debug(breakpoints=self._bp_points)
            return True
        if completed and self._io_step == linear:
            # the step an `out` or a write already counted, reported again (VMX hosts)
            self._io_step = None
            return True
        self._io_step = None
        return self._code_report(completed or linear != self._step_last)

    def _step_handlers(self):
        """The exit handlers of a run with code hooks: the plain ones, then
        the next instruction's hooks."""
        plain = self._plain_handlers
        table = dict(plain)

        def on_debug(vcpu, exit):
            off = exit.pc - self._stubs
            if 0 <= off < 4 * (_SYSCALL_STUB + 1):
                if off & 3 == 1 and off < 4 * _SYSCALL_STUB:
                    # KVM stepped over a stub's hlt: the snippet took vector off >> 2
                    self._consume_halt()
                    return self._on_hlt(vcpu, exit) and self._code_continue(False)
                return True                    # inside a stub (LSTAR's): not the snippet's
            if self._stepping == 'bp':
                if self._bp_past:
                    return self._code_continue(True)
                if exit.pc == self._until:
                    return self._halt(Stop('until', self._rv().rip, address=exit.pc))
                if not self._code_report(False):
                    return False
                if not self._vcpu._map[1]:     # past it: breakpoints off, one step
                    self._bp_past = True
                    self._vcpu.set_guest_debug(singlestep=True)
                return True
            return self._code_continue(True)

        def completes(handler):
            # out, an MMIO write, rdmsr/wrmsr: KVM reports them with RIP past
            # the instruction, and on kvm_pvm its step trap never comes: that step
            # is done. (in and MMIO reads stop at the instruction; the trap follows.)
            def on_exit(vcpu, exit):
                trap = type(exit) is IoOut and exit.port == SNIPPET_TRAP_PORT and self._in_stub()
                if not handler(vcpu, exit):
                    return False
                if trap:
                    regs = self._rv()
                    if regs.r11 & RFLAGS_TF and self._stepping == 'tf':
                        regs.r11 &= ~RFLAGS_TF         # SYSCALL saved kvmlite's trap flag
                        self._put_regs(regs)
                    return self._code_continue(True)
                if not self._code_continue(True):
                    return False
                if self._stepping != 'bp':
                    self._io_step = self._linear(self._rv().rip)
                return True
            return on_exit

        def on_hlt(vcpu, exit):
            if not self._on_hlt(vcpu, exit):
                return False
            return self._code_continue(False)

        def on_internal(vcpu, exit):
            return self._on_internal(vcpu, exit) and self._code_continue(True)

        table[Debug] = on_debug
        table[IoOut] = completes(plain[IoOut])
        table[MmioWrite] = completes(plain[MmioWrite])
        table[RdMsr] = completes(plain[RdMsr])
        table[WrMsr] = completes(plain[WrMsr])
        table[Hlt] = on_hlt
        table[InternalError] = on_internal
        return table

    def stop(self):
        """End the current run (from a hook or another thread): it returns
        Stop('stopped'). Unicorn calls this emu_stop."""
        self._vcpu.kick('stop')

    emu_stop = stop

    # -- running ---------------------------------------------------------------
    def run(self, start=None, until=None, timeout=1.0, count=None):
        """Run until something stops the snippet; returns a :class:`Stop`.

        ``start``: code bytes (written at SNIPPET_CODE_ADDR and run from
        there), an address, or None (go on from RIP). ``until``: stop on
        reaching this address (an instruction's). ``count``: stop after this
        many instructions (single-stepped: slow). ``timeout``: seconds (one
        by default: a longer run comes back with reason 'timeout'), or None
        for no limit.
        """
        if self._fast and until is None and count is None and self._waiting is None \
                and not self._tables_dirty:
            # The reused snippet's path (registers in kvm_run, nothing to set
            # up first): one KVM_RUN and no other system call. The snippet's
            # own `hlt` (at CPL3, the #GP frame it leaves on the stub's stack)
            # ends the run here; any other exit goes on in Vcpu._run_loop,
            # from the exit in hand, with the handlers _go uses. Registers,
            # the exit reason and the dirty classes are subscripts of the
            # vCPU's sync_words (a ctypes field costs twice as much); this is
            # inline, not a method, as every call costs here.
            v, words = self._vcpu, self._words
            lock = v._running
            if not lock.acquire(False):
                raise KvmliteError('this Snippet is already running in another thread: one '
                                   'run at a time (stop() ends that run)')
            exit = stop = d = None
            m = v._map
            try:
                try:
                    if start is not None:
                        try:
                            words[_SNIPPET_RIP] = start
                        except (TypeError, ValueError):  # code bytes, or an int out of range
                            if type(start) is int:
                                words[_SNIPPET_RIP] = start & 0xFFFFFFFFFFFFFFFF
                            elif isinstance(start, (bytes, bytearray, memoryview)):
                                self.mem_write(SNIPPET_CODE_ADDR, start)
                                words[_SNIPPET_RIP] = SNIPPET_CODE_ADDR
                            else:
                                raise SnippetError(f'run({start!r}): start is code bytes, an '
                                                   'address or None') from None
                        words[_WORD_DIRTY] |= KVM_SYNC_X86_REGS
                    self._ran = True
                    m[1] = 0                 # immediate_exit: a stop() between runs is spent
                    if timeout is not None:
                        # _watchdog.arm, whose lock only a sooner deadline needs
                        d = v._deadline = _monotonic() + timeout
                        if d < _watchdog._wake_at or not v._watched:
                            _watchdog.arm(v, d)
                    if v._buf is not None:
                        v._release_buf()
                    v._thread = _get_ident()
                    try:
                        fcntl.ioctl(v.fd, KVM_RUN)      # (no third argument: see _run_loop)
                        reason = words[1] & 0xFFFFFFFF
                    except OSError as e:
                        if e.errno not in (errno.EINTR, errno.EAGAIN):
                            raise KvmError(e.errno, 'KVM_RUN',
                                           _explain(KVM_RUN, e.errno, self._vm)) from None
                        m[1] = 0
                        reason = ExitReason.INTR
                    if reason == 5:                              # KVM_EXIT_HLT
                        rip = words[_SNIPPET_RIP]
                        at = rip - 1 - self._stubs               # RIP is after a stub's HLT
                        if at == 4 * 13:
                            frame = self._frame
                            if frame is not None:
                                # a CPL3 snippet's own `hlt` is a #GP (error code 0) at
                                # the hlt: its frame read at once from the stub's stack,
                                # the registers unwound in kvm_run (anything else: _on_trap)
                                unpack, cs, ss = frame
                                system = self._system
                                err, rip, _, rflags, rsp = unpack(system.view,
                                                                  words[_SNIPPET_RSP] - system.gpa)
                                if not err:
                                    try:                # _peek(rip): the code's slot first
                                        gpa, end, view = self._last_slot
                                        byte = view[rip - gpa] if gpa <= rip < end else \
                                            self._peek(rip)
                                    except (TypeError, ValueError):
                                        byte = self._peek(rip)
                                    if byte == 0xF4:
                                        words[_SNIPPET_RIP] = rip + 1
                                        words[_SNIPPET_RFLAGS] = rflags
                                        words[_SNIPPET_RSP] = rsp
                                        m[_SYNC_CS:_SYNC_CS + _SEGMENT_SIZE] = cs
                                        m[_SYNC_SS:_SYNC_SS + _SEGMENT_SIZE] = ss
                                        words[_WORD_DIRTY] |= _SYNC_REGS_SREGS
                                        rip += 1                # as at CPL0
                                        stop = self._hlt_stop
                                        if stop is None or stop.rip != rip:
                                            stop = self._hlt_stop = Stop('hlt', rip)
                        elif not 0 <= at < 4 * _SYSCALL_STUB or at & 3:
                            stop = self._hlt_stop        # the snippet's own HLT (CPL0)
                            if stop is None or stop.rip != rip:
                                stop = self._hlt_stop = Stop('hlt', rip)
                    if stop is not None:
                        v._pending = False
                        self._vm.exit_counts[_EXIT_HLT] += 1
                        self._stop = stop
                        return stop
                    self._stop = None            # (the handlers set it)
                    exit = v._run_loop(self._handlers(), None, reason)
                finally:
                    v._thread = None
                    lock.release()
                    if d is not None:
                        # _watchdog.disarm(v) without its lock: a scan that read d
                        # before this store read the clock before the one below,
                        # so while that clock is short of d no kick of this run is
                        # on its way; past d, a scan may be kicking: wait it out
                        v._deadline = None
                        if _monotonic() >= d:
                            lk = _watchdog._lock
                            lk.acquire()
                            fired = v._why == 'timeout'
                            lk.release()
                            if fired and type(exit) is not Interrupted:
                                m[1] = 0         # it fired after KVM_RUN returned: drop it
                                v._why = None
                if self._stop is None:
                    self._stop = self._final(exit)
            except BaseException:
                # as in _go: a hook that raised leaves the snippet as it was before
                # that instruction
                self._waiting = None
                self._settle(force=True)
                raise
            return self._stop
        if self._vcpu and self._vcpu.running:
            raise KvmliteError('this Snippet is already running in another thread: one run at '
                               'a time (stop() ends that run)')
        if self._waiting is not None:
            self._settle()
        if isinstance(start, (bytes, bytearray, memoryview)):
            self.mem_write(SNIPPET_CODE_ADDR, start)
            start = SNIPPET_CODE_ADDR
        if start is not None:
            self._jump(start)
        if count is not None and count < 1:
            raise SnippetError(f'count {count}: run at least one instruction, or pass None')
        return self._go(until, timeout, count)

    def resume(self, value=None, until=None, timeout=1.0, count=None):
        """Go on after an 'mmio' stop, finishing the access it stopped on.

        A read stop leaves RIP at the reading instruction, half done: this
        gives it ``value`` (an int, or None for all ones) and runs on from
        the next instruction. A write stop leaves RIP after the writing
        instruction; ``value`` must be None. Anything else that changes the
        snippet in between (reg_write, mem_write, mem_map, run) gives the
        access up, as if the instruction had never started: run() then
        starts exactly where and from what it is told (and run() with no
        start executes the read again). ``until``, ``timeout`` and ``count``
        are run()'s."""
        exit = self._waiting
        if exit is None:
            raise SnippetError('resume: no MMIO access is waiting (the last run did not stop '
                               "with reason 'mmio', or the snippet was changed since, which "
                               'gave the access up): use run()')
        if self._vcpu.running:
            raise KvmliteError('this Snippet is already running in another thread: one run at '
                               'a time (stop() ends that run)')
        if isinstance(exit, MmioWrite):
            if value is not None:
                raise SnippetError(f'resume: the stop was a write of {exit.value:#x} to '
                                   f'{exit.addr:#x}; there is no value to give (pass None)')
        else:
            n = exit.size
            if value is None:
                value = (1 << 8 * n) - 1
            if not isinstance(value, int) or not -(1 << 8 * n - 1) <= value < 1 << 8 * n:
                raise SnippetError(f'resume: {value!r} does not fit the {n}-byte read at '
                                   f'{exit.addr:#x}')
            self._vcpu._map[_RUN_U + 8:_RUN_U + 8 + n] = (value & (1 << 8 * n) - 1).to_bytes(
                n, 'little')
        self._waiting = None
        return self._go(until, timeout, count)

    def _go(self, until, timeout, count):
        if self._spares and self.mode != 'long64':
            # without paging a last user's spare RAM would be seen: MMIO is there
            for slot in self._spares.values():
                self._vm.remove_memory(slot)
            self._spares.clear()
            self._refast()
        if self._tables_dirty:
            if tuple(self._regions) == self._tables_in_place:
                self._tables_dirty = False   # a recycled VM's tables already map these
            elif self._vm_ran or self._ran:
                self._write_system_area()    # KVM may cache the old ones: a new slot
            else:                            # nothing cached yet: rewriting is enough
                self._write_page_tables()
        self._stop = None
        self._vcpu._map[1] = 0               # immediate_exit: a stop() between runs is spent
        if until is not None or count is not None or 'code' in self._hooks:
            self._arm(until, count)
        try:
            self._ran = True
            exit = self._vcpu.run_loop(self._handlers(), timeout=timeout)
            if self._stop is None:
                self._stop = self._final(exit)
        except BaseException:
            # a hook raised in the middle of an access: the snippet is left as
            # it was before that instruction, not half way through it
            self._waiting = None
            self._settle(force=True)
            raise
        finally:
            if self._until is not None or self._steps is not None or self._stepping:
                self._disarm()
        return self._stop

    def _settle(self, force=False):
        """Give up the access an 'mmio' stop left half done: let KVM finish
        it (Vcpu.complete_io: no guest code runs), then put back every
        register it changed, so the next run starts from exactly the state
        the stop reported and whatever the user set since."""
        if self._waiting is None and not force:
            return
        self._waiting = None
        v = self._vcpu
        if not v or not v.io_pending:
            return
        regs, sregs, events, xsave = v.get_regs(), v.get_sregs(), v.get_vcpu_events(), \
            v.get_xsave()
        # a string instruction finishes with this access (RCX is put back below)
        v.set_regs(rcx=1)
        v.complete_io()
        v.set_sregs(sregs)
        v.set_regs(regs)
        v.set_xsave(xsave)
        v.set_vcpu_events(events)

    def emu_start(self, begin, until, timeout=0, count=0):
        """unicorn's emu_start: ``timeout`` in microseconds and ``count`` in
        instructions, 0 for no limit. Returns the Stop."""
        return self.run(begin, until=until, timeout=timeout / 1e6 if timeout else None,
                        count=count or None)

    def _rv(self):
        """The registers: the live kvm_run view where KVM syncs them (change
        it in place, then vcpu.set_regs(it)), else a copy."""
        return self._vcpu.sync_regs if self._synced else self._vcpu.get_regs()

    def _sv(self):
        return self._vcpu.sync_sregs if self._synced else self._vcpu.get_sregs()

    def _put_regs(self, regs):
        """``regs`` (from _rv, changed) go in before the next entry."""
        if self._synced:
            self._vcpu.mark_dirty(KVM_SYNC_X86_REGS)
        else:
            self._vcpu.set_regs(regs)

    def _put_sregs(self, sregs):
        if self._synced:
            self._vcpu.mark_dirty(KVM_SYNC_X86_SREGS)
        else:
            self._vcpu.set_sregs(sregs)

    def _set_rip(self, rip):
        if self._synced:
            self._vcpu.sync_regs.rip = rip
            self._vcpu.mark_dirty(KVM_SYNC_X86_REGS)
        else:
            self._vcpu.set_regs(rip=rip)

    def _jump(self, address):
        if self.mode != 'real':
            self._set_rip(address)
            return
        cs = 0 if address < 0x10000 else address >> 4
        s = self._sv()
        s.cs.selector, s.cs.base = cs, cs << 4
        self._vcpu.set_sregs(s)
        self._set_rip(address - (cs << 4))

    def _emulated(self):
        return self.cpl == 0 or self.mode == 'real'

    def _arm(self, until, count):
        """``until``: KVM's hardware breakpoint where the code is emulated
        (kvm_pvm's CPL3 ignores it, and the emulator cannot run int3), an int3
        written over the target at CPL3. ``count``: the trap flag."""
        if 'code' in self._hooks:
            return self._arm_code(until, count)
        self._until, self._patched, self._steps = until, None, count
        if until is not None:
            if self._emulated():
                self._debugged = True        # a reset turns KVM's guest debugging off
                self._vcpu.set_guest_debug(breakpoints=[until])
            elif self._peek(until) is not None:
                self._patched = self._peek(until)
                self._vm.write(until, b'\xcc')
            elif self.mode != 'long64':      # long64 catches the fetch's #PF instead
                raise SnippetError(f'until {until:#x} is not in mapped memory')
        if count is not None:
            self._vcpu.set_regs(rflags=self._rv().rflags | RFLAGS_TF)

    def _disarm(self):
        if self._stepping:
            return self._disarm_code()
        if self._until is not None and self._emulated():
            self._vcpu.set_guest_debug(enable=False)
        if self._patched is not None:
            self._vm.write(self._until, bytes((self._patched,)))
        if self._steps is not None:
            self._vcpu.set_regs(rflags=self._rv().rflags & ~RFLAGS_TF)
        self._until = self._patched = self._steps = None

    def _handlers(self):
        if self._handler_table is not None:
            return self._handler_table
        self._handler_table = {
            IoOut: self._on_io, IoIn: self._on_io, MmioRead: self._on_mmio,
            MmioWrite: self._on_mmio, RdMsr: self._on_msr, WrMsr: self._on_msr,
            Debug: self._on_debug, InternalError: self._on_internal, Hlt: self._on_hlt}
        return self._handler_table

    def _halt(self, stop):
        """End the run with ``stop`` (a handler's return value)."""
        self._stop = stop
        return False

    def _resume(self):
        """Go on after a hook (a handler's return value); a hook that mapped
        memory needs the page tables to show it first."""
        if self._tables_dirty:
            self._write_system_area()
        return True

    def _final(self, exit):
        """The Stop for an exit no handler took."""
        rip = self._rv().rip
        if isinstance(exit, Hlt):
            return Stop('hlt', rip)
        if isinstance(exit, Interrupted):
            if exit.why == 'timeout' and self._in_stub():
                return self._finish_trap() or Stop('timeout', self._rv().rip)
            return Stop('timeout' if exit.why == 'timeout' else 'stopped', rip)
        if isinstance(exit, Shutdown):
            return Stop('shutdown', rip, exit=exit)
        linear = self._linear(rip)
        if isinstance(exit, InternalError) and exit.suberror == KVM_INTERNAL_ERROR_EMULATION \
                and self._traps:
            hooked = self._fetch_hooked(linear)
            if hooked is not None and hooked <= linear + len(exit.insn):
                self._no_code_there(hooked)
        if isinstance(exit, InternalError) and exit.suberror == KVM_INTERNAL_ERROR_EMULATION:
            missing = self._unmapped_fetch(exit, linear)
            if missing is not None:
                return Stop('unmapped', rip, address=missing, exit=exit)
        if isinstance(exit, InternalError) and self._peek(linear) == 0xCC:
            # the emulator cannot run int3: report it as the CPU would have
            self._set_rip(rip + 1)
            return Stop('breakpoint', rip + 1, address=linear)
        return Stop('error', rip, exit=exit)

    def _unmapped_fetch(self, exit, linear):
        """The address KVM's emulator could not fetch the instruction at
        ``linear`` from (prot32 and real have no paging to fault, so it ends
        in an emulation failure; for an instruction that runs past RAM's
        end KVM gives the bytes it got), or None."""
        missing = self._unbacked(linear, 15)
        if missing is not None and missing == linear + len(exit.insn) and (
                _insn_length(exit.insn, _SNIPPET_BITS[self.mode]) is None):
            return missing
        return None

    def _unbacked(self, linear, length):
        """The first of ``linear``..``linear + length`` that no RAM backs, or None."""
        return next((a for a in range(linear, linear + length) if self._peek(a) is None), None)

    def _linear(self, ip):
        if self.mode != 'real':
            return ip
        return self._sv().cs.base + ip

    def _in_stub(self):
        rip = self._linear(self._rv().rip)
        return self._stubs <= rip < self._stubs + 4 * (_SYSCALL_STUB + 1)

    def _finish_trap(self):
        """A timeout caught the vCPU inside a stub: let it reach the port
        write, so the registers read back as the snippet's. Returns the Stop
        the trap makes, or None."""
        exit = self._vcpu.run(timeout=1.0)
        handler = {IoOut: self._on_io, Hlt: self._on_hlt}.get(type(exit))
        if handler is not None and not handler(self._vcpu, exit):
            return self._stop
        return None

    # -- exit handlers: True runs on, False ends the run with self._stop -------
    def _on_hlt(self, vcpu, exit):
        regs = self._rv()
        at = self._linear(regs.rip) - 1 - self._stubs       # RIP is after the stub's HLT
        if 0 <= at < 4 * _SYSCALL_STUB and not at & 3:
            return self._on_trap(regs, self._sv(), at >> 2)
        return False                                         # the snippet's own HLT

    def _on_io(self, vcpu, exit):
        if exit.port == SNIPPET_TRAP_PORT and isinstance(exit, IoOut) and self._in_stub():
            regs, sregs = self._rv(), self._sv()
            return self._on_trap(regs, sregs, (self._linear(regs.rip) - 2 - self._stubs) // 4)
        hook, port, size = self._hooks.get('io'), exit.port, exit.size
        ones = (1 << 8 * size) - 1
        for i in range(exit.count):              # string I/O: one call per item
            item = slice(i * size, (i + 1) * size)
            if isinstance(exit, IoOut):
                value = int.from_bytes(exit.data[item], 'little')
                if hook:
                    hook(self, port, size, value)
                else:
                    self._vm.pio.write(port, size, value)
            else:
                value = hook(self, port, size, None) if hook else self._vm.pio.read(port, size)
                exit.buf[item] = (ones if value is None else value & ones).to_bytes(size, 'little')
        return self._resume()

    def _on_trap(self, regs, sregs, vector):
        """The snippet took ``vector`` (or, for _SYSCALL_STUB, a syscall)."""
        if vector == _SYSCALL_STUB:
            regs.rip, regs.rflags = regs.rcx, regs.r11    # where SYSRET would return
            sregs.cs, sregs.ss = _copy(self._user_cs), _copy(self._user_ss)
            self._put_sregs(sregs)
            self._put_regs(regs)
            return self._on_syscall()
        error_code, soft = self._unwind(regs, sregs, vector)
        rip = regs.rip
        linear = self._linear(rip)
        if vector == 6 and self._traps:
            # (prot32 at CPL3 on kvm_pvm: a fetch KVM could not do is a #UD)
            dec = _insn_length(self._fetch(linear, 15), _SNIPPET_BITS[self.mode])
            hooked = self._fetch_hooked(linear, dec[0] if dec else 15)
            if hooked is not None:
                self._no_code_there(hooked)
        if vector == 6:
            # KVM emulates a fetch that no RAM backs and raises #UD: say what it was
            # (kvm_pvm's prot32 CPL3 does so for an instruction running past RAM too)
            missing = linear if self._peek(linear) is None else \
                self._fetch_ends(linear) if self.mode != 'real' else None
            if missing is not None:
                if self._unmapped('fetch_unmapped', missing, 1, 0):
                    return self._resume()        # RIP is at the instruction: it runs again
                return self._halt(Stop('unmapped', rip, address=missing))
        op = self._peek(linear) if vector == 6 and self.cpl == 3 else None
        if op == 0xCD:
            # kvm_pvm raises #UD for `int n` at CPL3: deliver it as the CPU would
            n = self._peek(linear + 1)
            if n not in _USER_GATES:
                vector, error_code = 13, n * 8 + 2           # the gate's DPL is 0
            else:
                self._set_rip(rip + 2)
                rip, linear, vector, soft = rip + 2, linear + 2, n, True
        elif op == 0xCC or (op == 0xCE and self.mode == 'prot32'):
            # and for int3 and into where it emulates CPL3 code (prot32: no paging)
            self._set_rip(rip + 1)
            rip, linear, vector = rip + 1, linear + 1, 3 if op == 0xCC else 4
            if op == 0xCE and not regs.rflags & 1 << SNIPPET_FLAGS['OF']:
                return self._resume()                    # no overflow: into does nothing
        elif error_code is None and vector != 1 and self._int_before(linear, vector):
            soft = True                  # `int n` through the gate: RIP is after it
        if soft:
            return self._software_interrupt(rip, vector, linear - 2)
        if vector == 1 and self._stepping:
            return True                  # code hooks' step: _code_continue reports it
        if vector == 1 and self._steps is not None:
            if linear == self._stubs + 4 * _SYSCALL_STUB:
                return True              # a syscall's own step: its stub counts it
            self._steps -= 1
            return self._steps > 0 or self._halt(Stop('count', rip))
        if vector == 3:
            if self._patched is not None and linear - 1 == self._until:
                self._set_rip(rip - 1)
                return self._halt(Stop('until', rip - 1, address=self._until))
            return self._halt(Stop('breakpoint', rip, address=linear - 1))
        if vector == 13 and self.cpl == 3 and error_code == 0 and self._peek(linear) == 0xF4:
            self._set_rip(rip + 1)                  # where HLT leaves RIP at CPL0
            return self._halt(Stop('hlt', rip + 1))
        if vector == 0x80 and self.mode != 'real':
            return self._on_syscall()
        address = sregs.cr2 if vector == 14 else linear
        if vector == 14 and error_code & 0x11 == 0x11 and self._stepping == 'nx' \
                and address & -PAGE_SIZE in self._nx_pages:
            return self._nx_enter()              # a fetch from a code-hooked page
        if vector == 14 and address == self._until and error_code & 0x10:
            return self._halt(Stop('until', rip, address=address))   # fetched unmapped `until`
        if vector == 14 and not error_code & 1 and 'mem_unmapped' in self._hook_lists \
                and not self._mapped(address):
            # not present, where no region is: the unmapped hooks may map it
            # (a fault: RIP is at the instruction, which runs again)
            if error_code & 0x10:
                if self._unmapped('fetch_unmapped', address, 1, 0):
                    return self._resume()
            else:
                answer = self._probe_unmapped(address, error_code)
                if answer is not None:
                    return answer
        stop = Stop('exception', rip, vector, error_code, address)
        hook = self._hooks.get('exception')
        if hook and hook(self, stop):
            return self._resume()
        return self._halt(stop)

    def _unwind(self, regs, sregs, vector):
        """Pop the frame the CPU pushed for ``vector`` and put the snippet's
        RIP, RFLAGS, RSP, CS and SS back. Returns the error code, or None."""
        has_code = vector in _ERROR_CODE_VECTORS and self.mode != 'real'
        soft = False
        if self.mode == 'real':          # IP, CS, FLAGS on the snippet's stack
            sp = regs.rsp & 0xFFFF
            ip, cs, flags = struct.unpack('<3H', self._vm.read(sregs.ss.base + sp, 6))
            regs.rip, regs.rsp = ip, regs.rsp & ~0xFFFF | (sp + 6) & 0xFFFF
            regs.rflags = regs.rflags & ~0xFFFF | flags
            sregs.cs.selector, sregs.cs.base = cs, cs << 4
            error_code = None
        else:
            word, fmt = (8, '<Q') if self.mode == 'long64' else (4, '<I')
            sp = regs.rsp & (0xFFFFFFFF if word == 4 else ~0)
            n = 4 if has_code else 3

            try:                     # the most the CPU pushed, read at once
                frame = self._vm.read(sp, word * 5)
            except GuestMemoryError:     # 32-bit, same level: at the top of the snippet's RAM
                frame = self._vm.read(sp, word * n)

            def pop(i):
                return struct.unpack_from(fmt, frame, word * i)[0]
            if has_code and self.cpl == 0 and pop(1) == self._user_cs.selector \
                    and self._int_before(pop(0), vector):
                # `int 0xd` at CPL0 takes the gate of #GP but pushes no error code
                has_code, soft = False, True
                n = 3
            error_code = pop(0) if has_code else None
            regs.rip, cs, regs.rflags = pop(n - 3), pop(n - 2), pop(n - 1)
            if word == 8 or cs & 3:      # the CPU pushed SS:RSP too
                regs.rsp = pop(n)
            else:                        # 32-bit, same privilege: the frame was on its stack
                regs.rsp = sp + word * n
            sregs.cs, sregs.ss = self._user_cs, self._user_ss     # copied in
        self._put_sregs(sregs)
        self._put_regs(regs)
        return error_code, soft

    def _int_before(self, linear, vector):
        """Whether the two bytes before ``linear`` are `int vector`."""
        return self._peek(linear - 2) == 0xCD and self._peek(linear - 1) == vector

    def _software_interrupt(self, rip, vector, at):
        """The snippet ran `int vector` at ``at``; RIP is after it, where
        the interrupt's handler would return to."""
        if vector == 3:
            return self._halt(Stop('breakpoint', rip, address=at))
        if vector == 0x80 and self.mode != 'real':
            return self._on_syscall()
        stop = Stop('interrupt', rip, vector, None, at)
        hook = self._hooks.get('exception')
        if hook and hook(self, stop):
            return self._resume()
        return self._halt(stop)

    def _on_internal(self, vcpu, exit):
        """KVM's emulator cannot deliver `int n` in protected mode (kvm_pvm's
        CPL0): the run ends there with an emulation failure, RIP at the
        instruction. Report it as the interrupt, as the CPU would have taken it.
        A fetch where no memory is goes to the unmapped hooks, which may map it."""
        if exit.suberror == KVM_INTERNAL_ERROR_EMULATION and 'mem_unmapped' in self._hook_lists:
            missing = self._unmapped_fetch(exit, self._linear(self._rv().rip))
            if missing is not None and self._unmapped('fetch_unmapped', missing, 1, 0):
                return self._resume()          # RIP is at the instruction: it runs again
        if exit.suberror != KVM_INTERNAL_ERROR_EMULATION or exit.insn[:1] != b'\xcd' \
                or len(exit.insn) < 2:
            return False
        rip = self._rv().rip
        at = self._linear(rip)
        if self._peek(at) != 0xCD or self._peek(at + 1) != exit.insn[1]:
            return False
        self._set_rip(rip + 2)
        return self._software_interrupt(rip + 2, exit.insn[1], at)

    def _on_syscall(self):
        hook = self._hooks.get('syscall')
        if hook is None:
            return self._halt(Stop('syscall', self._rv().rip))
        result = hook(self)
        if result is not None:
            self._vcpu.set_regs(rax=result & 0xFFFFFFFFFFFFFFFF)
        if self._steps is not None:      # a system call is one step (its trap is lost)
            self._steps -= 1
            if not self._steps:
                return self._halt(Stop('count', self._rv().rip))
        return self._resume()

    def _on_mmio(self, vcpu, exit):
        is_write = isinstance(exit, MmioWrite)
        if self._traps and exit.addr & -PAGE_SIZE in self._traps \
                and self._mem_hooked(exit, is_write):
            return self._resume()
        size = len(exit.data) if is_write else len(exit.buf)
        if 'mem_unmapped' in self._hook_lists and not self._mapped(exit.addr) \
                and self._unmapped('write_unmapped' if is_write else 'read_unmapped', exit.addr,
                                   size, exit.value if is_write else 0) \
                and self._retried(exit, is_write, size):
            return self._resume()
        hook = self._hooks.get('mmio')
        if hook is None:
            # a read stops at its instruction, half done (resume() finishes it);
            # a write stops after its instruction, as KVM reports it
            self._waiting = (MmioWrite(exit.addr, bytes(exit.data)) if is_write
                             else _MmioReadStop(exit.addr, size))
            return self._halt(Stop('mmio', self._rv().rip, address=exit.addr,
                                   exit=self._waiting))
        value = hook(self, exit.addr, size, exit.value if is_write else None)
        if not is_write:
            exit.set((1 << 8 * size) - 1 if value is None else value)
        return self._resume()

    def _probe_unmapped(self, address, error_code):
        """A long64 read or write faulted where nothing is mapped; the #PF
        says neither its size nor a write's value. Run the instruction once
        more with the page present but without memory behind it (an MMIO
        page for a moment), so KVM exits with the access, and ask the
        unmapped hooks with it. Returns the handler's answer, or None: the
        hooks said no, and the snippet is as at the fault again."""
        v, page = self._vcpu, address & -PAGE_SIZE
        exit = None
        sys = self._system
        if page < self._phys_limit() and not sys.gpa <= page < sys.end:
            saved = v.get_regs(), v.get_sregs(), v.get_xsave(), v.get_vcpu_events()
            self._regions.append((page, PAGE_SIZE, ''))
            self._regions.sort()
            try:
                self._write_system_area()
                exit = v._run_loop(_RETURN_EVERY_EXIT, None)
            finally:
                self._regions.remove((page, PAGE_SIZE, ''))
                self._tables_dirty = True
            if type(exit) not in (MmioRead, MmioWrite) or exit.addr & -PAGE_SIZE != page:
                self._unprobe(saved, exit)     # something else came first: back to the fault
                exit = None
        if exit is None:
            access = 'write_unmapped' if error_code & 2 else 'read_unmapped'
            if self._unmapped(access, address, None, None if error_code & 2 else 0):
                return self._resume()
            return None
        is_write = isinstance(exit, MmioWrite)
        size = len(exit.data) if is_write else len(exit.buf)
        if self._unmapped('write_unmapped' if is_write else 'read_unmapped', exit.addr, size,
                          exit.value if is_write else 0):
            if self._retried(exit, is_write, size):
                return self._resume()
            return self._on_mmio(v, exit)      # MMIO now, or read-only: as any access there
        if not is_write:
            exit.set(0)
        self._unprobe(saved, exit)
        return None

    def _unprobe(self, saved, exit):
        """Give up the access _probe_unmapped made, and put the registers
        back as they were at the fault (a timeout or stop() that came
        instead is kept for the next entry)."""
        v = self._vcpu
        v._complete_pending()                  # (in an exit handler: this thread runs it)
        regs, sregs, xsave, events = saved
        v.set_sregs(sregs)
        v.set_regs(regs)
        v.set_xsave(xsave)
        v.set_vcpu_events(events)
        if isinstance(exit, Interrupted):
            v._why, v._map[1] = exit.why, 1

    def _phys_limit(self):
        """One past the highest guest-physical address the vCPU can map."""
        limit = getattr(self, '_phys_top', None)
        if limit is None:
            entries = self._cpuid_table or cpuid_entries(self.kvm)
            bits = next((e.eax & 0xFF for e in entries if e.function == 0x80000008), 36)
            limit = self._phys_top = 1 << bits
        return limit

    def _retried(self, exit, is_write, size):
        """An unmapped hook mapped ``exit``'s address: do the access there, as
        the instruction run again would. False where it is not plain RAM now
        (MMIO, or a write to read-only memory): the MMIO path takes it."""
        addr = exit.addr
        if self._traps and addr & -PAGE_SIZE in self._traps:
            return self._mem_hooked(exit, is_write)
        spares = self._spares.values()
        slot = next((sl for sl in self._vm.slots if sl.gpa <= addr < sl.end
                     and sl not in spares), None)
        if slot is None or (is_write and slot.readonly):
            return False
        off = addr - slot.gpa
        if is_write:
            slot.view[off:off + size] = exit.data
        else:
            exit.buf[:] = slot.map[off:off + size]
        return True

    def _on_msr(self, vcpu, exit):
        is_write = isinstance(exit, WrMsr)
        answer = self._hooks['msr'](self, exit.index, exit.data if is_write else None)
        if answer is False:
            exit.fail()
        elif answer is None:             # what KVM would have done
            try:
                if is_write:
                    vcpu.set_msrs({exit.index: exit.data})
                    exit.reply()
                else:
                    exit.reply(vcpu.get_msrs([exit.index])[exit.index])
            except KvmError:
                exit.fail()
        else:
            exit.reply(answer)
        return self._resume()

    def _on_debug(self, vcpu, exit):
        # only `until` arms KVM's debugging
        return self._halt(Stop('until', self._rv().rip, address=exit.pc, exit=exit))


# -- the pool: a Snippet takes a VM a closed Snippet left, reset and verified --

SNIPPET_POOL_SIZE = 2                # spare VMs kept per (Kvm, mode, cpl) in a process
_snippet_pool = {}                   # (pid, id(kvm), mode, cpl) -> [unit dicts]
_snippet_pool_lock = threading.Lock()
_process_kvm_fd = [None, None]       # the pid and the Kvm Snippets share when given none


def _process_kvm():
    """The /dev/kvm a process's Snippets share (opened once, left open)."""
    pid, kvm = _process_kvm_fd
    if pid != os.getpid() or kvm is None or kvm.fd < 0:
        kvm = Kvm()
        _process_kvm_fd[:] = [os.getpid(), kvm]
    return kvm


def _snippet_pool_take(kvm, mode, cpl):
    with _snippet_pool_lock:
        units = _snippet_pool.get((os.getpid(), id(kvm), mode, cpl))
        while units:
            unit = units.pop()
            if kvm.fd >= 0 and unit['_vm'].fd >= 0:
                return unit
            unit['_vm'].close()
    return None


def _snippet_pool_wants(kvm, mode, cpl):
    with _snippet_pool_lock:
        return kvm.fd >= 0 and len(_snippet_pool.get((os.getpid(), id(kvm), mode, cpl), ())) \
            < SNIPPET_POOL_SIZE


def _snippet_pool_give(kvm, mode, cpl, unit):
    with _snippet_pool_lock:
        # a fork's child gets the parent's units: they are not its VMs to use
        for key in [k for k in _snippet_pool if k[0] != os.getpid()]:
            del _snippet_pool[key]
        _snippet_pool.setdefault((os.getpid(), id(kvm), mode, cpl), []).append(unit)


def snippet_pool_clear():
    """Close every spare VM the pool keeps (the next Snippet makes a new one)."""
    with _snippet_pool_lock:
        units = [u for us in _snippet_pool.values() for u in us]
        _snippet_pool.clear()
    for unit in units:
        unit['_vm'].close()


_RESTORABLE_MSRS = {}                # id(kvm) -> MSR indices a reset writes back


def _restorable_msrs(vcpu):
    """The MSRs of KVM's index list that read back as written and stay put
    between two reads (the TSC does not): what a reset restores and checks."""
    kvm = vcpu.vm.kvm
    known = _RESTORABLE_MSRS.get(id(kvm))
    if known is not None:
        return known
    readable = _msrs_that_work(vcpu, KVM_GET_MSRS, {i: 0 for i in kvm.msr_index_list()})
    first = vcpu.get_msrs(readable)
    second = vcpu.get_msrs(readable)
    stable = {i: first[i] for i in readable if first[i] == second[i]}
    good = _msrs_that_work(vcpu, KVM_SET_MSRS, stable)     # each written as it was read
    if vcpu._sync:
        vcpu._refresh_sync()              # EFER, for one, is in the sregs
    _RESTORABLE_MSRS[id(kvm)] = good
    return good


def _msrs_that_work(vcpu, request, values):
    """The indices of ``values`` that KVM_GET_MSRS or KVM_SET_MSRS takes,
    found in a few calls: KVM stops at the first MSR it refuses and returns
    how many it did, so the rest goes again after that one."""
    vcpu._flush_sync()
    entries, good = list(values.items()), []
    while entries:
        buf = _msrs_type(len(entries))(nmsrs=len(entries))
        for i, (index, value) in enumerate(entries):
            buf.entries[i].index, buf.entries[i].data = index, value
        n = _ioctl(vcpu.fd, request, buf)
        good += [index for index, _ in entries[:n]]
        entries = entries[n + 1:]          # entry n was refused
    return good


class _FreshState:
    """A new vCPU's state, as a Snippet's setup left it: what a reset puts
    back (registers, segments, pending events, FPU/SSE, XCRs, debug
    registers, MSRs) and then reads back through the ioctls to check."""

    def __init__(self, vcpu):
        self.regs, self.sregs = bytes(vcpu.get_regs()), bytes(vcpu.get_sregs())
        self.events = bytes(vcpu.get_vcpu_events())
        self.xsave = bytes(vcpu.get_xsave())
        self.xcrs = bytes(vcpu.get_xcrs())
        self.debugregs = bytes(vcpu.get_debugregs())
        self.msrs = vcpu.get_msrs(_restorable_msrs(vcpu))
        # one KVM_GET_MSRS into this buffer reads them all; its bytes say if any moved
        self._msr_buf = _msrs_type(len(self.msrs))(nmsrs=len(self.msrs))
        for i, (index, value) in enumerate(self.msrs.items()):
            self._msr_buf.entries[i].index, self._msr_buf.entries[i].data = index, value
        self._msr_bytes = bytes(self._msr_buf)

    def _msrs_fresh(self, vcpu):
        vcpu._flush_sync()
        self._msr_buf.nmsrs = len(self.msrs)
        return (_ioctl(vcpu.fd, KVM_GET_MSRS, self._msr_buf) == len(self.msrs)
                and bytes(self._msr_buf) == self._msr_bytes)

    def reset(self, vcpu):
        """Put the fresh state back and read it back: True when KVM reports
        every part as fresh (regs, sregs and events go through the sync area,
        which KVM loads on the next entry, and are compared there). With the
        sync area a class that already reads as fresh there, and that no
        one marked dirty, is KVM's own state (copied out at the last exit,
        or read back after the last ioctl that could change it): it is not
        written again (KVM_SET_SREGS resets KVM's MMU: up to 130 us here)."""
        m = vcpu._map
        pending = _U64.unpack_from(m, _DIRTY_OFF)[0]  # the last user's changes not yet in KVM
        _U64.pack_into(m, _DIRTY_OFF, 0)             # dropped
        if not self._msrs_fresh(vcpu):
            now = vcpu.get_msrs(list(self.msrs))
            vcpu.set_msrs({i: v for i, v in self.msrs.items() if now[i] != v})
        for get, put, want, ctype in (
                (vcpu.get_xsave, vcpu.set_xsave, self.xsave, None),
                (vcpu.get_xcrs, vcpu.set_xcrs, self.xcrs, kvm_xcrs),
                (vcpu.get_debugregs, vcpu.set_debugregs, self.debugregs, kvm_debugregs)):
            if bytes(get()) != want:
                put(want if ctype is None else ctype.from_buffer_copy(want))
                if bytes(get()) != want:
                    return False
        runnable = vcpu.get_mp_state() == KVM_MP_STATE_RUNNABLE
        if not runnable:
            vcpu.set_mp_state(KVM_MP_STATE_RUNNABLE)
        synced = vcpu._sync == KVM_SYNC_X86_VALID_FIELDS     # what KVM loads on the next entry
        for cls, area, want, put, ctype in (
                (KVM_SYNC_X86_SREGS, vcpu.sync_sregs, self.sregs, vcpu.set_sregs, kvm_sregs),
                (KVM_SYNC_X86_REGS, vcpu.sync_regs, self.regs, vcpu.set_regs, kvm_regs),
                (KVM_SYNC_X86_EVENTS, vcpu.sync_events, self.events, vcpu.set_vcpu_events,
                 kvm_vcpu_events)):
            if not synced or pending & cls or bytes(area) != want:
                put(ctype.from_buffer_copy(want))
        m[0] = m[1] = 0                              # request_interrupt_window, immediate_exit
        if synced:
            regs, sregs, events = vcpu.sync_regs, vcpu.sync_sregs, vcpu.sync_events
        else:
            regs, sregs, events = vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_vcpu_events()
        return (bytes(regs) == self.regs and bytes(sregs) == self.sregs
                and bytes(events) == self.events and self._msrs_fresh(vcpu)
                and (runnable or vcpu.get_mp_state() == KVM_MP_STATE_RUNNABLE))


class _MmioReadStop(MmioRead):
    """The read an 'mmio' stop reports: its address and size, no buffer
    (the run is over; :meth:`Snippet.resume` gives the value)."""
    __slots__ = ('size',)

    def __init__(self, addr, size):
        super().__init__(addr, None)
        self.size = size

    def __repr__(self):
        return f'MmioRead(addr={self.addr:#x}, size={self.size})'

    def set(self, value):
        raise SnippetError('this run has stopped: give the read its value with '
                           'Snippet.resume(value)')


def _tss_descriptor(base, limit):
    """A 16-byte available 64-bit TSS descriptor (its first half serves 32-bit mode)."""
    low = (limit & 0xFFFF) | (base & 0xFFFFFF) << 16 | 0x89 << 40 | (limit >> 16 & 0xF) << 48 \
        | (base >> 24 & 0xFF) << 56
    return (low, base >> 32)


def _snippet_test_case():
    """SnippetTestCase, made on first use: importing unittest costs an idle
    VMM several MiB, so kvmlite only does it for a caller that asks."""
    import unittest

    class SnippetTestCase(unittest.TestCase):
        """A TestCase whose every test gets a fresh ``self.snippet`` (a
        :class:`Snippet` of the class's ``mode``, ``cpl`` and ``mem_size``),
        closed after the test. Where KVM cannot be used each test is skipped
        (one by one, so the runner counts them), saying why."""
        mode, cpl, mem_size = 'long64', 3, 0x100000

        def setUp(self):
            super().setUp()
            reason = kvm_unavailable()
            if reason:
                self.skipTest(reason)
            self.snippet = self.make_snippet()

        def make_snippet(self, mode=None, cpl=None, mem_size=None):
            """Another Snippet (other mode or CPL), closed after the test."""
            s = Snippet(mode or self.mode, self.cpl if cpl is None else cpl,
                        self.mem_size if mem_size is None else mem_size)
            self.addCleanup(s.close)
            return s
    SnippetTestCase.__module__ = __name__
    return SnippetTestCase


def _import_part(package, module):
    """``devices.serial`` from a checkout or zipapp, ``kvmlite_devices.serial``
    once installed (setup.py renames the packages to keep site-packages clean)."""
    import importlib
    try:
        return importlib.import_module(f'kvmlite_{package}.{module}')
    except ModuleNotFoundError:
        return importlib.import_module(f'{package}.{module}')


# The board's names that library users reach through this module (tools/pc.py).
_BOARD_NAMES = frozenset((
    'Machine', 'RunResult', 'load_kernel', 'detect_format', 'IRQCHIP_MODES', 'IDENTITY_MAP_ADDR', 'EXIT_OK',
    'EXIT_USAGE', 'EXIT_TRIPLE_FAULT', 'EXIT_INTERNAL', 'EXIT_VMM', 'EXIT_TIMEOUT',
    'EXIT_SIGNAL'))
__all__ += ['Machine', 'RunResult', 'main']


def __getattr__(name):
    # PEP 562: kvmlite.SnippetTestCase is built when first asked for, and the
    # board is imported only when a user asks for it (no import cycle: the
    # board imports this module, never the other way round at import time)
    if name == 'SnippetTestCase':
        cls = globals()['SnippetTestCase'] = _snippet_test_case()
        return cls
    if name in _BOARD_NAMES:
        value = globals()[name] = getattr(_import_part('tools', 'pc'), name)
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def main(argv=None):
    """The ``kvmlite`` command (``info``, ``run``): see tools/cli.py."""
    return _import_part('tools', 'cli').main(argv)
