"""MP and ACPI tables that tell a guest OS about its CPUs and interrupt routing.

A firmware-less VM has no BIOS to describe the machine, so kvmlite writes the
tables an OS looks for into the BIOS area (0xF0000-0xFFFFF, reserved in the
e820 map; see ``boot.py`` for the whole layout):

* ``mp_tables``: Intel MultiProcessor Specification, version 1.4 (May 1997),
  chapter 4: the MP floating pointer structure (found by the scan of
  0xF0000-0xFFFFF), the configuration table header, and processor, bus,
  I/O APIC, I/O interrupt assignment and local interrupt assignment entries.
* ``acpi_tables``: ACPI Specification 6.x, section 5.2: RSDP (revision 2),
  XSDT and RSDT, FADT (revision 6) with its FACS, a DSDT and the MADT
  ("APIC") with processor local APIC, I/O APIC, interrupt source override and
  local APIC NMI entries. The RSDP is 16-byte aligned below 1 MiB, where an OS
  scans for it.

The platform's ``acpi_pm`` device (devices/acpi_pm.py) is the fixed hardware
the FADT describes (5.2.9): PM1a_EVT_BLK, PM1a_CNT_BLK and PM_TMR_BLK with
their lengths and X_ generic address structures (5.2.3.2), all at the
device's port plus the offsets the device class gives; its IRQ is SCI_INT.
RESET_REG is the ``pci`` device's PIIX reset control register (0xCF9 on the
PC; RESET_REG_SUP). The DSDT holds two objects, the \\_S3 and \\_S5 packages
(7.4.2) with the SLP_TYP values the device honours, in AML (section 20.2).
FIX_RTC is clear: the RTC alarm is the fixed RTC_STS/RTC_EN event, a wake
source from S3. The FACS (5.2.10) is where an OS puts its waking vector;
:func:`facs_address` tells the board where to look on a wake. A platform
without ``acpi_pm`` gets the FADT without PM blocks, no SCI and an empty
DSDT.

Interrupt routing described (as on a PC with an IOAPIC): ISA IRQ 0 (the PIT)
reaches IOAPIC pin 2, the other ISA IRQs the pin of their number; ISA IRQ 2 is
the 8259 cascade and is never raised, so it gets no entry (its pin belongs to
IRQ 0). The ACPI SCI (IRQ 9 on the PC) is level-triggered and active-high in
the MADT. LINT0 of every local APIC is ExtINT (the 8259) and LINT1 is NMI.

Each builder returns ``[(gpa, bytes)]``; ``write_platform_tables`` checks and
writes them through the guest-memory object the loaders use.
"""

import struct
from collections import namedtuple

from .boot import BootError, _merge, _write
from .layout import PC

__all__ = ['PlatformTables', 'mp_tables', 'acpi_tables', 'write_platform_tables', 'checksum',
           'facs_address', 'FACS_FIRMWARE_WAKING_VECTOR', 'FACS_X_FIRMWARE_WAKING_VECTOR']

MAX_CPUS = 254                    # 8-bit APIC ids; 0xFF is "all" and the IOAPIC needs one

# --- MP specification 1.4 -----------------------------------------------------
MP_FLOATING_SIGNATURE = b'_MP_'
MP_CONFIG_SIGNATURE = b'PCMP'
MP_SPEC_REV = 4                   # version 1.4
MP_OEM_ID = b'KVMLITE '           # 8 bytes, space padded
MP_PRODUCT_ID = b'KVMLITE     '   # 12 bytes
MP_PROCESSOR = 0                  # entry types
MP_BUS = 1
MP_IOAPIC = 2
MP_IOINTR = 3
MP_LINTR = 4
MP_CPU_EN = 1 << 0                # processor entry flags: usable
MP_CPU_BP = 1 << 1                # the bootstrap processor
MP_IOAPIC_EN = 1 << 0             # I/O APIC usable
MP_INT = 0                        # interrupt types: vectored by the APIC
MP_NMI = 1
MP_EXTINT = 3                     # vectored by the 8259
MP_FLAGS_CONFORM = 0              # polarity/trigger conform to the bus (ISA: edge, high)
MP_ALL_LAPICS = 0xFF              # destination: every local APIC
ISA_BUS_ID = 0
ISA_BUS_TYPE = b'ISA   '
LAPIC_VERSION = 0x14              # integrated local APIC
IOAPIC_VERSION = 0x11             # 82093AA-compatible I/O APIC
CPU_SIGNATURE = 0x600             # family 6
CPU_FEATURES = (1 << 0) | (1 << 9)  # CPUID.1:EDX FPU and APIC

# --- ACPI 6.x -------------------------------------------------------------------
ACPI_OEM_ID = b'KVMLTE'           # 6 bytes
ACPI_OEM_TABLE_ID = b'KVMLITE '   # 8 bytes
ACPI_CREATOR_ID = b'KVML'
SDT_HEADER_SIZE = 36
FADT_SIZE = 276                   # through the hypervisor vendor identity
FADT_REVISION, FADT_MINOR = 6, 0
FADT_WBINVD = 1 << 0              # flags: WBINVD works (required since ACPI 2.0)
FADT_PWR_BUTTON = 1 << 4          # flags: no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5          # flags: no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6             # flags: the RTC alarm is no fixed event (left clear: RTC_STS)
FADT_TMR_VAL_EXT = 1 << 8         # flags: the PM timer is 32 bits wide, not 24
FADT_RESET_REG_SUP = 1 << 10      # flags: RESET_REG resets the machine
FADT_HW_REDUCED_ACPI = 1 << 20    # flags: left clear: this is a PC with legacy devices
GAS_SYSTEM_IO = 1                 # generic address structure: address space
GAS_BYTE, GAS_WORD, GAS_DWORD = 1, 2, 3   # generic address structure: access sizes
AML_NAME_OP, AML_PACKAGE_OP = 0x08, 0x12  # section 20.2.5
AML_ZERO_OP, AML_ONE_OP, AML_BYTE_PREFIX = 0x00, 0x01, 0x0A   # section 20.2.3
IAPC_LEGACY_DEVICES = 1 << 0      # IA-PC boot arch: ISA devices present
IAPC_8042 = 1 << 1                # IA-PC boot arch: an 8042 keyboard controller
MADT_PCAT_COMPAT = 1 << 0         # MADT flags: dual 8259s present
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
MADT_ENABLED = 1 << 0             # local APIC flags: usable
MPS_ACTIVE_HIGH = 0b01            # MPS INTI flags, polarity bits 1:0
MPS_LEVEL = 0b11 << 2             # MPS INTI flags, trigger bits 3:2


# mp: address of the MP floating pointer structure, 0 if none;
# rsdp: address of the ACPI RSDP, 0 if none (pass it to the loaders)
PlatformTables = namedtuple('PlatformTables', 'mp rsdp')


def checksum(data):
    """The byte that makes ``data`` sum to 0 mod 256 (its own slot holding 0)."""
    return -sum(data) & 0xFF


def _check_ids(cpus, ioapic_id):
    if not 1 <= cpus <= MAX_CPUS:
        raise BootError(f'{cpus} CPUs: the MP and ACPI tables describe 1 to {MAX_CPUS} '
                        '(8-bit APIC ids)')
    if not cpus <= ioapic_id <= 0xFE:
        raise BootError(f'IOAPIC id {ioapic_id} collides with a CPU APIC id (0-{cpus - 1}) '
                        'or is out of range: use an id from the CPU count up to 254')


def _isa_routes(platform):
    """(ISA IRQ, IOAPIC pin) for every ISA IRQ but the cascade, whose pin
    belongs to the IRQ the platform overrides onto it (the PIT's IRQ 0)."""
    return [(irq, platform.ioapic_pin(irq)) for irq in range(16) if irq != platform.cascade_irq]


def _mp_entries(cpus, ioapic_id, platform):
    entries = [struct.pack('<BBBBII8x', MP_PROCESSOR, i, LAPIC_VERSION,
                           MP_CPU_EN | (MP_CPU_BP if i == 0 else 0), CPU_SIGNATURE, CPU_FEATURES)
               for i in range(cpus)]
    entries.append(struct.pack('<BB6s', MP_BUS, ISA_BUS_ID, ISA_BUS_TYPE))
    entries.append(struct.pack('<BBBBI', MP_IOAPIC, ioapic_id, IOAPIC_VERSION, MP_IOAPIC_EN,
                               platform.ioapic_addr))
    for irq, pin in _isa_routes(platform):
        entries.append(struct.pack('<BBHBBBB', MP_IOINTR, MP_INT, MP_FLAGS_CONFORM,
                                   ISA_BUS_ID, irq, ioapic_id, pin))
    for kind, lint in ((MP_EXTINT, 0), (MP_NMI, 1)):
        entries.append(struct.pack('<BBHBBBB', MP_LINTR, kind, MP_FLAGS_CONFORM,
                                   ISA_BUS_ID, 0, MP_ALL_LAPICS, lint))
    return entries


def mp_tables(cpus, ioapic_id=None, platform=PC, base=None):
    """The MP floating pointer at ``base`` (default: the start of the
    platform's BIOS area) and the configuration table after it."""
    ioapic_id = platform.ioapic_id(cpus) if ioapic_id is None else ioapic_id
    base = platform.hole('bios').start if base is None else base
    _check_ids(cpus, ioapic_id)
    entries = _mp_entries(cpus, ioapic_id, platform)
    body = b''.join(entries)
    config = bytearray(struct.pack('<4sHBB8s12sIHHIHBx', MP_CONFIG_SIGNATURE, 44 + len(body),
                                   MP_SPEC_REV, 0, MP_OEM_ID, MP_PRODUCT_ID, 0, 0, len(entries),
                                   platform.lapic_addr, 0, 0) + body)
    config[7] = checksum(config)
    config_addr = base + 16
    # length 1 (16-byte units); feature bytes 0: the configuration table is
    # present and IMCRP clear, i.e. virtual wire mode.
    floating = bytearray(struct.pack('<4sIBBB5s', MP_FLOATING_SIGNATURE, config_addr, 1,
                                     MP_SPEC_REV, 0, bytes(5)))
    floating[10] = checksum(floating)
    return [(base, bytes(floating)), (config_addr, bytes(config))]


def _sdt(signature, revision, body):
    """An ACPI system description table: the 36-byte header, then ``body``."""
    table = bytearray(struct.pack('<4sIBB6s8sI4sI', signature, SDT_HEADER_SIZE + len(body),
                                  revision, 0, ACPI_OEM_ID, ACPI_OEM_TABLE_ID, 1,
                                  ACPI_CREATOR_ID, 1) + body)
    table[9] = checksum(table)
    return bytes(table)


def _slot(platform, name):
    """The platform's device ``name`` and the module of devices/ its part
    comes from, or (None, None) if the platform has no such device."""
    slot = next((s for s in platform.devices if s.name == name), None)
    if slot is None:
        return None, None
    from kvmlite import _import_part      # the board's way to devices/, installed or not
    return slot, _import_part('devices', slot.part.rpartition('.')[0])


def _part(slot, module):
    """The device class a slot's part names."""
    return getattr(module, slot.part.rpartition('.')[2])


def _port(slot):
    """The base port of a device's own range (attribute '')."""
    return next(base for attr, base, _ in slot.pio if attr == '')


def _gas(space, bit_width, access_size, address):
    """A generic address structure (section 5.2.3.2), bit offset 0."""
    return struct.pack('<BBBBQ', space, bit_width, 0, access_size, address)


def _fadt(facs, dsdt, platform):
    body = bytearray(FADT_SIZE - SDT_HEADER_SIZE)

    def put(offset, fmt, value):          # offsets as in the spec's FADT table
        struct.pack_into(fmt, body, offset - SDT_HEADER_SIZE, value)
    flags = FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON
    put(36, '<I', facs)                   # FIRMWARE_CTRL
    put(40, '<I', dsdt)                   # DSDT
    put(46, '<H', platform.sci_irq or 0)  # SCI_INT; no SMI_CMD: already in ACPI mode
    pm, pm_module = _slot(platform, 'acpi_pm')
    if pm is not None:                    # the fixed hardware: PM1a event, PM1a control, PM timer
        base, pm_part = _port(pm), _part(pm, pm_module)
        for legacy, length_at, extended, block, length, access in (
                (56, 88, 148, pm_part.PM1_EVT_BLK, pm_part.PM1_EVT_LEN, GAS_WORD),
                (64, 89, 172, pm_part.PM1_CNT_BLK, pm_part.PM1_CNT_LEN, GAS_WORD),
                (76, 91, 208, pm_part.PM_TMR_BLK, pm_part.PM_TMR_LEN, GAS_DWORD)):
            put(legacy, '<I', base + block)   # PM1a_EVT_BLK, PM1a_CNT_BLK, PM_TMR_BLK
            put(length_at, '<B', length)      # PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN
            put(extended, '12s', _gas(GAS_SYSTEM_IO, 8 * length, access, base + block))  # X_...
        flags &= ~FADT_PWR_BUTTON         # PWRBTN_STS is a fixed event now
        flags |= FADT_TMR_VAL_EXT if pm_part.TMR_VAL_EXT else 0   # FIX_RTC clear: RTC_STS
    pci, rcr = _slot(platform, 'pci')
    if pci is not None:                   # RESET_REG: the PIIX reset control register
        put(116, '12s', _gas(GAS_SYSTEM_IO, 8, GAS_BYTE, _port(pci) + rcr.PIIX_RCR))
        put(128, '<B', rcr.PIIX_RCR_SRST | rcr.PIIX_RCR_RCPU)   # RESET_VALUE: hard reset
        flags |= FADT_RESET_REG_SUP
    put(109, '<H', IAPC_LEGACY_DEVICES | IAPC_8042)   # IAPC_BOOT_ARCH
    put(112, '<I', flags)                 # Flags
    put(131, '<B', FADT_MINOR)            # FADT Minor Version
    put(132, '<Q', facs)                  # X_FIRMWARE_CTRL
    put(140, '<Q', dsdt)                  # X_DSDT
    return _sdt(b'FACP', FADT_REVISION, bytes(body))


def _aml_integer(value):
    """A small AML integer constant: ZeroOp, OneOp or BytePrefix + byte."""
    if value in (0, 1):
        return bytes((AML_ZERO_OP if value == 0 else AML_ONE_OP,))
    return bytes((AML_BYTE_PREFIX, value))


def _sleep_package(name, slp_typ):
    """``Name (name, Package (4) {SLP_TYPa, SLP_TYPb, 0, 0})`` (section
    7.4.2's system state package; PM1b has no block, so its value is the
    same and unused).

    AML (section 20.2): DefName := NameOp NameString DataRefObject;
    DefPackage := PackageOp PkgLength NumElements PackageElementList, where a
    one-byte PkgLength (below 64) counts itself and what follows it."""
    value = _aml_integer(slp_typ)
    package = bytes((4,)) + value + value + _aml_integer(0) + _aml_integer(0)
    return bytes((AML_NAME_OP,)) + name + bytes((AML_PACKAGE_OP, 1 + len(package))) + package


def _dsdt_body(platform):
    """The DSDT's AML: the \\_S3 and \\_S5 packages with the device's
    SLP_TYP values, or nothing without a PM block."""
    pm, pm_module = _slot(platform, 'acpi_pm')
    if pm is None:
        return b''
    part = _part(pm, pm_module)
    return _sleep_package(b'\\_S3_', part.SLP_TYP_S3) + _sleep_package(b'\\_S5_', part.SLP_TYP_S5)


def _madt(cpus, ioapic_id, platform):
    body = struct.pack('<II', platform.lapic_addr, MADT_PCAT_COMPAT)
    for i in range(cpus):                 # processor UID i, APIC id i
        body += struct.pack('<BBBBI', MADT_LOCAL_APIC, 8, i, i, MADT_ENABLED)
    body += struct.pack('<BBBxII', MADT_IO_APIC, 12, ioapic_id, platform.ioapic_addr, 0)  # GSI 0
    for irq, pin in _isa_routes(platform):
        if irq != pin:                    # an interrupt source override: ISA IRQ -> GSI
            body += struct.pack('<BBBBIH', MADT_ISO, 10, ISA_BUS_ID, irq, pin, MP_FLAGS_CONFORM)
    sci = platform.sci_irq
    if sci is not None:                   # the SCI: level, active high (not ISA's edge)
        body += struct.pack('<BBBBIH', MADT_ISO, 10, ISA_BUS_ID, sci, platform.ioapic_pin(sci),
                            MPS_LEVEL | MPS_ACTIVE_HIGH)
    body += struct.pack('<BBBHB', MADT_LAPIC_NMI, 6, 0xFF, MP_FLAGS_CONFORM, 1)  # all CPUs, LINT1
    return _sdt(b'APIC', 4, body)


# FACS (5.2.10): where an OS puts the address the firmware jumps to on a wake
FACS_SIZE = 64
FACS_HARDWARE_SIGNATURE = 8
FACS_FIRMWARE_WAKING_VECTOR = 12      # 32 bits: real mode, CS:IP = vector >> 4 : vector & 0xF
FACS_FLAGS = 20                       # 64BIT_WAKE_SUPPORTED_F clear: no 64-bit wake
FACS_X_FIRMWARE_WAKING_VECTOR = 24    # 64 bits: 32-bit protected mode, flat, paging off
FACS_VERSION = 2


def _acpi_base(platform, base):
    bios = platform.hole('bios')
    return (bios.start + bios.end) // 2 if base is None else base


def facs_address(platform=PC, base=None):
    """Where :func:`acpi_tables` puts the FACS (for the RSDP at ``base``):
    the first 64-byte boundary past the RSDP's 64 bytes, whatever the CPU
    count. The board reads the waking vector there on a wake from S3."""
    return -(-(_acpi_base(platform, base) + 64) // 64) * 64


def acpi_tables(cpus, ioapic_id=None, platform=PC, base=None):
    """RSDP at ``base`` (16-byte aligned; default: half-way into the
    platform's BIOS area), then FACS, DSDT, FADT, MADT, RSDT, XSDT."""
    ioapic_id = platform.ioapic_id(cpus) if ioapic_id is None else ioapic_id
    base = _acpi_base(platform, base)
    _check_ids(cpus, ioapic_id)
    if base % 16:
        raise BootError(f'ACPI RSDP address {base:#x} is not 16-byte aligned')
    out, addr = [], base + 64

    def place(data, align=16):
        nonlocal addr
        addr = -(-addr // align) * align
        out.append((addr, data))
        addr += len(data)
        return addr - len(data)
    facs = place(struct.pack('<4sIIIIIQB3xI24x', b'FACS', FACS_SIZE, 0, 0, 0, 0, 0, FACS_VERSION, 0),
                 align=64)
    assert facs == facs_address(platform, base)
    dsdt = place(_sdt(b'DSDT', 2, _dsdt_body(platform)))
    fadt = place(_fadt(facs, dsdt, platform))
    madt = place(_madt(cpus, ioapic_id, platform))
    rsdt = place(_sdt(b'RSDT', 1, struct.pack('<II', fadt, madt)))
    xsdt = place(_sdt(b'XSDT', 1, struct.pack('<QQ', fadt, madt)))
    rsdp = bytearray(struct.pack('<8sB6sBIIQB3x', b'RSD PTR ', 0, ACPI_OEM_ID, 2, rsdt, 36,
                                 xsdt, 0))
    rsdp[8] = checksum(rsdp[:20])         # ACPI 1.0 checksum over the first 20 bytes
    rsdp[32] = checksum(rsdp)             # extended checksum over all 36
    return [(base, bytes(rsdp))] + out


def write_platform_tables(mem, cpus, mp=True, acpi=True, ioapic_id=None, platform=PC):
    """Clear the platform's BIOS area and write the MP and/or ACPI tables
    into it.

    Returns :class:`PlatformTables` with their addresses; give ``.rsdp`` to
    ``load_bzimage``/``load_pvh``. The IOAPIC id defaults to the platform's.
    """
    bios = platform.hole('bios')
    mp_blobs = mp_tables(cpus, ioapic_id, platform) if mp else []
    acpi_blobs = acpi_tables(cpus, ioapic_id, platform) if acpi else []
    for gpa, data in mp_blobs + acpi_blobs:
        if not (bios.start <= gpa and gpa + len(data) <= bios.end):
            raise BootError(f'platform table at {gpa:#x} ({len(data)} bytes) leaves the BIOS area')
    if not any(s <= bios.start and bios.end <= s + n for s, n in _merge(mem.ram)):
        raise BootError(f'the BIOS area {bios.start:#x}-{bios.end - 1:#x} is not guest RAM: give '
                        'at least 1 MiB of --mem')
    _write(mem, bios.start, bytes(bios.end - bios.start))   # no stale tables from a last boot
    for gpa, data in mp_blobs + acpi_blobs:
        _write(mem, gpa, data)
    return PlatformTables(mp=mp_blobs[0][0] if mp else 0, rsdp=acpi_blobs[0][0] if acpi else 0)
