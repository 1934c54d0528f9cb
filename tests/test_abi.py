"""The KVM ABI in kvmlite: struct sizes, field offsets and ioctl numbers.

Two layers of checks:

* pinned numbers (no compiler needed), taken from the x86-64 layouts of
  ``<linux/kvm.h>`` and ``<asm/kvm.h>`` (Linux 6.1 uapi) and the _IOC
  encoding of ``<asm-generic/ioctl.h>``;
* an oracle test that generates a C program printing ``sizeof``/``offsetof``
  of every struct and field kvmlite defines and the value of every ``KVM_*``
  constant (ioctls, flags, ``KVM_EXIT_*`` from :class:`ExitReason`,
  ``KVM_CAP_*`` from :class:`Cap`), compiles it with ``cc`` against the
  host's header and compares. It is skipped, saying why, only when ``cc`` or
  the header is missing.
"""

import ctypes
import inspect
import os
import shutil
import subprocess
import tempfile
import types
import unittest

import kvmlite as K

# --- pinned layouts (x86-64) ---------------------------------------------------

SIZES = {
    'kvm_regs': 144, 'kvm_segment': 24, 'kvm_dtable': 16, 'kvm_sregs': 312,
    'kvm_fpu': 416, 'kvm_msr_entry': 16, 'kvm_cpuid_entry2': 40,
    'kvm_pic_state': 16, 'kvm_ioapic_state': 216, 'kvm_irqchip': 520,
    'kvm_pit_channel_state': 24, 'kvm_pit_state2': 112, 'kvm_pit_config': 64,
    'kvm_debug_exit_arch': 32, 'kvm_guest_debug': 72, 'kvm_vcpu_events': 64,
    'kvm_debugregs': 128, 'kvm_xsave': 4096, 'kvm_xcr': 16, 'kvm_xcrs': 392,
    'kvm_lapic_state': 1024, 'kvm_userspace_memory_region': 32,
    'kvm_irq_level': 8, 'kvm_coalesced_mmio_zone': 16, 'kvm_coalesced_mmio': 24,
    'kvm_translation': 24, 'kvm_interrupt': 4, 'kvm_dirty_log': 16,
    'kvm_clear_dirty_log': 24, 'kvm_mp_state': 4, 'kvm_ioeventfd': 64,
    'kvm_enable_cap': 104, 'kvm_irq_routing_entry': 48, 'kvm_irqfd': 32,
    'kvm_clock_data': 48, 'kvm_msi': 32, 'kvm_stats_header': 24,
    'kvm_stats_desc': 16, 'kvm_msr_filter_range': 24, 'kvm_msr_filter': 392,
    'kvm_run': 2352,
    # the rest of the x86 API
    'kvm_sregs2': 320, 'kvm_x86_mce': 64, 'kvm_nested_state': 128, 'kvm_create_device': 12,
    'kvm_device_attr': 24, 'kvm_dirty_gfn': 16, 'kvm_xen_hvm_config': 56,
    'kvm_xen_hvm_attr': 72, 'kvm_xen_vcpu_attr': 72, 'kvm_hyperv_eventfd': 24,
    'kvm_pit_state': 72, 'kvm_reinject_control': 32, 'kvm_tpr_access_ctl': 40,
    'kvm_vapic_addr': 8, 'kvm_cpuid_entry': 24, 'kvm_one_reg': 16, 'kvm_enc_region': 16,
    'kvm_vmx_nested_state_hdr': 32, 'kvm_irq_routing_xen_evtchn': 12,
    # newer than Debian 12's header: these pins are all that checks them there
    'kvm_userspace_memory_region2': 160, 'kvm_memory_attributes': 32,
    'kvm_create_guest_memfd': 64, 'kvm_pre_fault_memory': 64,
}

# (struct, dotted ctypes path) -> offset
OFFSETS = {
    ('kvm_regs', 'rip'): 128, ('kvm_regs', 'rflags'): 136,
    ('kvm_sregs', 'gdt'): 192, ('kvm_sregs', 'cr0'): 224, ('kvm_sregs', 'efer'): 264,
    ('kvm_sregs', 'apic_base'): 272, ('kvm_sregs', 'interrupt_bitmap'): 280,
    ('kvm_segment', 'selector'): 12, ('kvm_segment', 'unusable'): 22,
    ('kvm_fpu', 'fcw'): 128, ('kvm_fpu', 'last_ip'): 136, ('kvm_fpu', 'xmm'): 152,
    ('kvm_fpu', 'mxcsr'): 416 - 8,
    ('kvm_vcpu_events', 'sipi_vector'): 16, ('kvm_vcpu_events', 'smi'): 24,
    ('kvm_vcpu_events', 'triple_fault_pending'): 28,
    ('kvm_vcpu_events', 'exception_has_payload'): 55,
    ('kvm_vcpu_events', 'exception_payload'): 56,
    ('kvm_irqchip', 'chip'): 8, ('kvm_ioapic_state', 'redirtbl'): 24,
    ('kvm_pit_channel_state', 'count_load_time'): 16,
    ('kvm_pit_state2', 'flags'): 72,
    ('kvm_guest_debug', 'arch'): 8,
    ('kvm_xcrs', 'xcrs'): 8, ('kvm_xcrs', 'padding'): 264,
    ('kvm_ioeventfd', 'flags'): 24, ('kvm_irqfd', 'resamplefd'): 12,
    ('kvm_enable_cap', 'args'): 8, ('kvm_msi', 'devid'): 16,
    ('kvm_irq_routing_entry', 'u'): 16,
    ('kvm_run', 'exit_reason'): 8, ('kvm_run', 'ready_for_interrupt_injection'): 12,
    ('kvm_run', 'if_flag'): 13, ('kvm_run', 'cr8'): 16, ('kvm_run', 'apic_base'): 24,
    ('kvm_run', 'u'): 32, ('kvm_run', 'kvm_valid_regs'): 288,
    ('kvm_run', 's'): 304,
    ('kvm_run', 'u.io.direction'): 32, ('kvm_run', 'u.io.size'): 33,
    ('kvm_run', 'u.io.port'): 34, ('kvm_run', 'u.io.count'): 36,
    ('kvm_run', 'u.io.data_offset'): 40,
    ('kvm_run', 'u.mmio.phys_addr'): 32, ('kvm_run', 'u.mmio.data'): 40,
    ('kvm_run', 'u.mmio.len'): 48, ('kvm_run', 'u.mmio.is_write'): 52,
    ('kvm_run', 'u.debug.pc'): 40, ('kvm_run', 'u.debug.dr6'): 48,
    ('kvm_run', 'u.internal.ndata'): 36, ('kvm_run', 'u.internal.data'): 40,
    ('kvm_run', 'u.system_event.data'): 40, ('kvm_run', 'u.hypercall.ret'): 88,
    ('kvm_run', 'u.msr.reason'): 40, ('kvm_run', 'u.msr.index'): 44,
    ('kvm_run', 'u.msr.data'): 48, ('kvm_run', 'u.eoi.vector'): 32,
    ('kvm_sregs2', 'flags'): 280, ('kvm_sregs2', 'pdptrs'): 288,
    ('kvm_x86_mce', 'mcg_status'): 24, ('kvm_x86_mce', 'bank'): 32,
    ('kvm_nested_state', 'hdr'): 8, ('kvm_nested_state', 'hdr.vmx.flags'): 28,
    ('kvm_nested_state', 'hdr.vmx.preemption_timer_deadline'): 32,
    ('kvm_device_attr', 'attr'): 8, ('kvm_device_attr', 'addr'): 16,
    ('kvm_dirty_gfn', 'offset'): 8, ('kvm_xen_hvm_attr', 'u'): 8,
    ('kvm_xen_vcpu_attr', 'u.timer.expires_ns'): 16,
    ('kvm_userspace_memory_region2', 'userspace_addr'): 24,
    ('kvm_userspace_memory_region2', 'guest_memfd_offset'): 32,
    ('kvm_userspace_memory_region2', 'guest_memfd'): 40,
    ('kvm_userspace_memory_region2', 'pad2'): 48,
    ('kvm_memory_attributes', 'attributes'): 16, ('kvm_create_guest_memfd', 'reserved'): 16,
    ('kvm_pre_fault_memory', 'flags'): 16,
}

IOCTLS = {
    'KVM_GET_API_VERSION': 0xAE00, 'KVM_CREATE_VM': 0xAE01,
    'KVM_CHECK_EXTENSION': 0xAE03, 'KVM_GET_VCPU_MMAP_SIZE': 0xAE04,
    'KVM_GET_MSR_INDEX_LIST': 0xC004AE02, 'KVM_GET_SUPPORTED_CPUID': 0xC008AE05,
    'KVM_CREATE_VCPU': 0xAE41, 'KVM_GET_DIRTY_LOG': 0x4010AE42,
    'KVM_SET_USER_MEMORY_REGION': 0x4020AE46, 'KVM_SET_TSS_ADDR': 0xAE47,
    'KVM_SET_IDENTITY_MAP_ADDR': 0x4008AE48, 'KVM_CREATE_IRQCHIP': 0xAE60,
    'KVM_IRQ_LINE': 0x4008AE61, 'KVM_GET_IRQCHIP': 0xC208AE62,
    'KVM_SET_IRQCHIP': 0x8208AE63, 'KVM_IRQ_LINE_STATUS': 0xC008AE67,
    'KVM_REGISTER_COALESCED_MMIO': 0x4010AE67, 'KVM_SET_GSI_ROUTING': 0x4008AE6A,
    'KVM_IRQFD': 0x4020AE76, 'KVM_CREATE_PIT2': 0x4040AE77,
    'KVM_IOEVENTFD': 0x4040AE79, 'KVM_GET_CLOCK': 0x8030AE7C,
    'KVM_GET_PIT2': 0x8070AE9F, 'KVM_SET_PIT2': 0x4070AEA0,
    'KVM_SIGNAL_MSI': 0x4020AEA5, 'KVM_CLEAR_DIRTY_LOG': 0xC018AEC0,
    'KVM_X86_SET_MSR_FILTER': 0x4188AEC6, 'KVM_GET_STATS_FD': 0xAECE,
    'KVM_ENABLE_CAP': 0x4068AEA3,
    'KVM_RUN': 0xAE80, 'KVM_GET_REGS': 0x8090AE81, 'KVM_SET_REGS': 0x4090AE82,
    'KVM_GET_SREGS': 0x8138AE83, 'KVM_SET_SREGS': 0x4138AE84,
    'KVM_TRANSLATE': 0xC018AE85, 'KVM_INTERRUPT': 0x4004AE86,
    'KVM_GET_MSRS': 0xC008AE88, 'KVM_SET_MSRS': 0x4008AE89,
    'KVM_SET_SIGNAL_MASK': 0x4004AE8B, 'KVM_GET_FPU': 0x81A0AE8C,
    'KVM_GET_LAPIC': 0x8400AE8E, 'KVM_SET_CPUID2': 0x4008AE90,
    'KVM_GET_MP_STATE': 0x8004AE98, 'KVM_NMI': 0xAE9A,
    'KVM_SET_GUEST_DEBUG': 0x4048AE9B, 'KVM_GET_VCPU_EVENTS': 0x8040AE9F,
    'KVM_GET_DEBUGREGS': 0x8080AEA1, 'KVM_GET_XSAVE': 0x9000AEA4,
    'KVM_GET_XCRS': 0x8188AEA6, 'KVM_GET_XSAVE2': 0x9000AECF,
    # the rest of the x86 API
    'KVM_SET_NR_MMU_PAGES': 0xAE44, 'KVM_GET_NR_MMU_PAGES': 0xAE45,
    'KVM_SET_BOOT_CPU_ID': 0xAE78, 'KVM_XEN_HVM_CONFIG': 0x4038AE7A,
    'KVM_SET_PMU_EVENT_FILTER': 0x4020AEB2, 'KVM_MEMORY_ENCRYPT_OP': 0xC008AEBA,
    'KVM_MEMORY_ENCRYPT_REG_REGION': 0x8010AEBB, 'KVM_HYPERV_EVENTFD': 0x4018AEBD,
    'KVM_RESET_DIRTY_RINGS': 0xAEC7, 'KVM_XEN_HVM_GET_ATTR': 0xC048AEC8,
    'KVM_XEN_HVM_SET_ATTR': 0x4048AEC9, 'KVM_XEN_HVM_EVTCHN_SEND': 0x400CAED0,
    'KVM_CREATE_DEVICE': 0xC00CAEE0, 'KVM_SET_DEVICE_ATTR': 0x4018AEE1,
    'KVM_GET_DEVICE_ATTR': 0x4018AEE2, 'KVM_HAS_DEVICE_ATTR': 0x4018AEE3,
    'KVM_SET_CPUID': 0x4008AE8A, 'KVM_TPR_ACCESS_REPORTING': 0xC028AE92,
    'KVM_SET_VAPIC_ADDR': 0x4008AE93, 'KVM_X86_SETUP_MCE': 0x4008AE9C,
    'KVM_X86_GET_MCE_CAP_SUPPORTED': 0x8008AE9D, 'KVM_X86_SET_MCE': 0x4040AE9E,
    'KVM_GET_ONE_REG': 0x4010AEAB, 'KVM_SET_ONE_REG': 0x4010AEAC, 'KVM_KVMCLOCK_CTRL': 0xAEAD,
    'KVM_GET_REG_LIST': 0xC008AEB0, 'KVM_GET_NESTED_STATE': 0xC080AEBE,
    'KVM_SET_NESTED_STATE': 0x4080AEBF, 'KVM_GET_SUPPORTED_HV_CPUID': 0xC008AEC1,
    'KVM_XEN_VCPU_GET_ATTR': 0xC048AECA, 'KVM_XEN_VCPU_SET_ATTR': 0x4048AECB,
    'KVM_GET_SREGS2': 0x8140AECC, 'KVM_SET_SREGS2': 0x4140AECD, 'KVM_CREATE_PIT': 0xAE64,
    'KVM_GET_PIT': 0xC048AE65, 'KVM_SET_PIT': 0x8048AE66, 'KVM_REINJECT_CONTROL': 0xAE71,
    # newer than Debian 12's header
    'KVM_SET_USER_MEMORY_REGION2': 0x40A0AE49, 'KVM_SET_MEMORY_ATTRIBUTES': 0x4020AED2,
    'KVM_CREATE_GUEST_MEMFD': 0xC040AED4, 'KVM_PRE_FAULT_MEMORY': 0xC040AED5,
}

NEW_CAPS = {
    'S390_PROTECTED_ASYNC_DISABLE': 224, 'DIRTY_LOG_RING_WITH_BITMAP': 225,
    'PMU_EVENT_MASKED_EVENTS': 226, 'COUNTER_OFFSET': 227, 'ARM_EAGER_SPLIT_CHUNK_SIZE': 228,
    'ARM_SUPPORTED_BLOCK_SIZES': 229, 'ARM_SUPPORTED_REG_MASK_RANGES': 230, 'USER_MEMORY2': 231,
    'MEMORY_FAULT_INFO': 232, 'MEMORY_ATTRIBUTES': 233, 'GUEST_MEMFD': 234, 'VM_TYPES': 235,
    'PRE_FAULT_MEMORY': 236, 'X86_APIC_BUS_CYCLES_NS': 237, 'X86_GUEST_MODE': 238,
    'ARM_WRITABLE_IMP_ID_REGS': 239, 'ARM_EL2': 240, 'ARM_EL2_E2H0': 241,
    'RISCV_MP_STATE_RESET': 242, 'ARM_CACHEABLE_PFNMAP_SUPPORTED': 243, 'GUEST_MEMFD_FLAGS': 244,
    'ARM_SEA_TO_USER': 245, 'S390_USER_OPEREXEC': 246,
}


def _field(ctype, path):
    """(offset, size) of a dotted ctypes field path inside ``ctype``; a part
    ``name[0]`` steps into element 0 of an array of structs."""
    offset = 0
    for name in path.split('.'):
        element = name.endswith('[0]')
        name = name.removesuffix('[0]')
        offset += getattr(ctype, name).offset
        ctype = dict((f[0], f[1]) for f in ctype._fields_)[name]
        if element:
            ctype = ctype._type_
    return offset, ctypes.sizeof(ctype)


class PinnedAbiTest(unittest.TestCase):
    """Sizes, offsets and ioctl numbers against numbers written down here."""

    def test_struct_sizes(self):
        for name, size in SIZES.items():
            with self.subTest(struct=name):
                self.assertEqual(ctypes.sizeof(getattr(K, name)), size)

    def test_flexible_array_headers(self):
        self.assertEqual(ctypes.sizeof(K.kvm_msrs(0)), 8)
        self.assertEqual(ctypes.sizeof(K.kvm_msrs(2)), 8 + 2 * 16)
        self.assertEqual(ctypes.sizeof(K.kvm_cpuid2(0)), 8)
        self.assertEqual(ctypes.sizeof(K.kvm_cpuid2(3)), 8 + 3 * 40)
        self.assertEqual(ctypes.sizeof(K.kvm_msr_list(0)), 4)
        self.assertEqual(ctypes.sizeof(K.kvm_irq_routing(1)), 8 + 48)
        self.assertEqual(ctypes.sizeof(K.kvm_signal_mask(8)), 12)

    def test_field_offsets(self):
        for (struct_name, path), offset in OFFSETS.items():
            with self.subTest(field=f'{struct_name}.{path}'):
                self.assertEqual(_field(getattr(K, struct_name), path)[0], offset)

    def test_ioctl_numbers(self):
        for name, number in IOCTLS.items():
            with self.subTest(ioctl=name):
                self.assertEqual(getattr(K, name), number, f'{name} = {getattr(K, name):#x}')

    def test_ioc_encoding(self):
        # direction in bits 30-31, size 16-29, type 8-15, number 0-7
        self.assertEqual(K._IOC(K._IOC_READ | K._IOC_WRITE, 0xAE, 0x12, 0x345),
                         (3 << 30) | (0x345 << 16) | (0xAE << 8) | 0x12)
        self.assertEqual(K._IOR(K.KVMIO, 0x81, K.kvm_regs) >> 30, K._IOC_READ)
        self.assertEqual(K._IOW(K.KVMIO, 0x82, K.kvm_regs) >> 30, K._IOC_WRITE)

    def test_fast_path_unpackers_match_kvm_run(self):
        # run_loop and _decode read the io and mmio exits with struct formats
        # at fixed offsets: they must agree with the ctypes kvm_run.
        self.assertEqual(K._RUN_U, 32)
        self.assertEqual(K._IO_EXIT.size, ctypes.sizeof(K._run_io))
        self.assertEqual(K._MMIO_EXIT.size, 8 + 8 + 4 + 1)
        self.assertEqual(_field(K.kvm_run, 'u.mmio.data')[0], 40)

    def test_ioctl_names_cover_shared_numbers(self):
        self.assertEqual(K._IOCTL_NAMES[K.KVM_GET_REGS], 'KVM_GET_REGS')
        self.assertEqual(K._IOCTL_NAMES[K.KVM_RUN], 'KVM_RUN')

    def test_capabilities_newer_than_the_debian_header(self):
        # KVM_CAP_* after Linux 6.1 (Debian 12's header stops at 223), from
        # include/uapi/linux/kvm.h of 6.19; the header test cannot see these
        for name, value in NEW_CAPS.items():
            with self.subTest(cap=name):
                self.assertEqual(K.Cap[name], value)
        self.assertEqual(len(K.Cap), 241)       # 0..246 less the six numbers never used
        self.assertEqual(sorted(set(range(247)) - {int(c) for c in K.Cap}), [5, 17, 19, 20, 27, 28])

    def test_exit_and_capability_numbers(self):
        self.assertEqual(K.ExitReason.IO, 2)
        self.assertEqual(K.ExitReason.MMIO, 6)
        self.assertEqual(K.ExitReason.INTERNAL_ERROR, 17)
        self.assertEqual(K.ExitReason.IOAPIC_EOI, 26)
        self.assertEqual(K.Cap.SPLIT_IRQCHIP, 121)
        self.assertEqual(K.Cap.BINARY_STATS_FD, 203)


# --- the oracle: the host's header, through a C compiler ----------------------------

HEADER = '/usr/include/linux/kvm.h'

# ctypes paths whose C spelling differs (anonymous unions, wrapper structs).
C_PATH = {
    ('kvm_run', 'u'): None,                         # an anonymous union in C
    ('kvm_run', 'u.hw'): 'hw.hardware_exit_reason',
    ('kvm_run', 'u.debug'): 'debug.arch',
    ('kvm_vcpu_events', 'triple_fault_pending'): 'triple_fault.pending',
}


def _c_path(struct_name, path):
    """The C member expression for a ctypes path, or None when C has no name."""
    parts = path.split('.')
    for i in range(len(parts), 0, -1):
        key = (struct_name, '.'.join(parts[:i]))
        if key in C_PATH:
            head = C_PATH[key]
            rest = parts[i:]
            if head is None:
                return '.'.join(rest) or None
            return '.'.join([head] + rest)
    return path


def _walk(ctype, prefix=''):
    """Yield (dotted path, ctype) for every field, nested ones included;
    for an array of structs, the fields of element 0 too."""
    for f in ctype._fields_:
        name, t = f[0], f[1]
        path = prefix + name
        yield path, t
        if issubclass(t, (ctypes.Structure, ctypes.Union)):
            yield from _walk(t, path + '.')
        elif issubclass(t, ctypes.Array) and issubclass(t._type_, (ctypes.Structure, ctypes.Union)):
            yield from ((p.replace(path + '.', path + '[0].', 1), tt)
                        for p, tt in _walk(t._type_, path + '.'))


def kvmlite_structs():
    """{C struct name: ctypes class} for every struct kvmlite defines, the
    flexible-array ones instantiated with no entries."""
    out = {}
    for name, value in vars(K).items():
        if not name.startswith('kvm_'):
            continue
        if isinstance(value, type) and issubclass(value, (ctypes.Structure, ctypes.Union)):
            out[name] = value
        elif isinstance(value, types.FunctionType) and \
                list(inspect.signature(value).parameters) == ['n']:
            out[name] = value(0)          # kvm_msrs(n), kvm_cpuid2(n), ...
    return out


def kvmlite_constants():
    """{C macro name: value} for every KVM_* constant kvmlite defines."""
    out = {n: v for n, v in vars(K).items()
           if n.startswith('KVM_') and isinstance(v, int) and not isinstance(v, bool)}
    out.update((f'KVM_EXIT_{m.name}', int(m)) for m in K.ExitReason)
    out.update((f'KVM_CAP_{m.name}', int(m)) for m in K.Cap)
    return out


def c_program(structs, constants):
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', '',
             '#define SZ(s) printf("size %s %zu\\n", #s, sizeof(struct s))',
             '#define OFF(s, m, p) printf("off %s %s %zu %zu\\n", #s, p, '
             'offsetof(struct s, m), sizeof(((struct s *)0)->m))',
             '#define FLEX(s, m, p) printf("off %s %s %zu 0\\n", #s, p, offsetof(struct s, m))',
             '#define VAL(c) printf("val %s %llu\\n", #c, (unsigned long long)(c))',
             'int main(void) {']
    for name, ctype in sorted(structs.items()):
        # a struct newer than the host's header names the macro that comes with it
        guard = getattr(ctype, '_guard', None)
        if guard:
            lines.append(f'#ifdef {guard}')
        lines.append(f'    SZ({name});')
        for path, t in _walk(ctype):
            c = _c_path(name, path)
            if c is None:
                continue
            # a flexible array member (entries[]) has an offset but no size
            flexible = issubclass(t, ctypes.Array) and t._length_ == 0
            lines.append(f'    {"FLEX" if flexible else "OFF"}({name}, {c}, "{path}");')
        if guard:
            lines += ['#else', f'    printf("nostruct {name}\\n");', '#endif']
    for name in sorted(constants):
        lines += [f'#ifdef {name}', f'    VAL({name});', '#else',
                  f'    printf("absent {name}\\n");', '#endif']
    lines += ['    return 0;', '}', '']
    return '\n'.join(lines)


@unittest.skipUnless(shutil.which('cc'), 'no C compiler (cc) on this host: the header check needs one')
@unittest.skipUnless(os.path.exists(HEADER), f'{HEADER} is missing (install linux-libc-dev)')
class HeaderAbiTest(unittest.TestCase):
    """Every struct, field and constant kvmlite defines, against <linux/kvm.h>."""

    @classmethod
    def setUpClass(cls):
        cls.structs = kvmlite_structs()
        cls.constants = kvmlite_constants()
        with tempfile.TemporaryDirectory() as tmp:
            src, exe = os.path.join(tmp, 'abi.c'), os.path.join(tmp, 'abi')
            with open(src, 'w') as f:
                f.write(c_program(cls.structs, cls.constants))
            cc = subprocess.run(['cc', '-o', exe, src], capture_output=True, text=True)
            if cc.returncode:
                raise AssertionError(f'the generated ABI program does not compile (a kvmlite '
                                     f'field or struct the header lacks?):\n{cc.stderr[:4000]}')
            out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
        cls.sizes, cls.fields, cls.values, cls.absent, cls.no_struct = {}, {}, {}, set(), set()
        for line in out.splitlines():
            kind, *rest = line.split()
            if kind == 'size':
                cls.sizes[rest[0]] = int(rest[1])
            elif kind == 'off':
                cls.fields[rest[0], rest[1]] = (int(rest[2]), int(rest[3]))
            elif kind == 'val':
                cls.values[rest[0]] = int(rest[1])
            elif kind == 'nostruct':
                cls.no_struct.add(rest[0])
            else:
                cls.absent.add(rest[0])

    def test_every_struct_size_matches(self):
        self.assertGreater(len(self.structs), 40)
        for name, ctype in self.structs.items():
            with self.subTest(struct=name):
                if name in self.no_struct:
                    self.skipTest(f'struct {name} is not in this host\'s {HEADER} (an older '
                                  'kernel): its pinned layout is checked instead')
                self.assertEqual(ctypes.sizeof(ctype), self.sizes[name])

    def test_every_field_offset_and_size_matches(self):
        checked = 0
        for name, ctype in self.structs.items():
            if name in self.no_struct:
                continue
            for path, t in _walk(ctype):
                if _c_path(name, path) is None:
                    continue
                checked += 1
                with self.subTest(field=f'{name}.{path}'):
                    self.assertEqual(_field(ctype, path), self.fields[name, path])
        self.assertGreater(checked, 300)

    def test_every_constant_matches(self):
        self.assertGreater(len(self.constants), 250)
        for name, value in sorted(self.constants.items()):
            with self.subTest(constant=name):
                if name in self.absent:
                    self.skipTest(f'{name} is not in this host\'s {HEADER} (an older kernel)')
                self.assertEqual(value, self.values[name], f'{name}: kvmlite {value:#x}, '
                                 f'header {self.values[name]:#x}')

    def test_pinned_numbers_agree_with_the_header(self):
        # the pins in this file are only as good as their source: check them too
        for name, size in SIZES.items():
            if name not in self.no_struct:
                self.assertEqual(self.sizes[name], size, name)
        for (name, path), offset in OFFSETS.items():
            if name not in self.no_struct and _c_path(name, path) is not None:
                self.assertEqual(self.fields[name, path][0], offset, f'{name}.{path}')
        for name, number in IOCTLS.items():
            if name not in self.absent:
                self.assertEqual(self.values[name], number, name)



if __name__ == '__main__':
    unittest.main()
