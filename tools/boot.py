"""Boot image loaders for kvmlite: flat binaries, ELF, Multiboot, Linux bzImage, PVH.

Each loader parses an image (bytes) and writes what it needs into guest memory
through a ``mem`` object -- ``write(gpa, data)``, ``read(gpa, size)`` and
``ram``, a list of ``(start, size)`` RAM regions -- then returns a :class:`Boot`
that tells the core which CPU mode, entry point and registers to start with.
Loaders never touch KVM. Every placement is checked before the first write, so
an image that is refused (:class:`BootError`) leaves guest memory as it was,
and nothing is ever written outside ``mem.ram``.

Specifications followed:

* ELF: the System V ABI / ELF generic ABI (gABI), "ELF Header", "Program
  Header" and "Note Section"; x86 specifics from the i386 and AMD64 psABIs.
* Multiboot Specification version 0.6.96 (header, a.out kludge, boot
  information format, memory map, modules, machine state).
* Linux ``Documentation/arch/x86/boot.rst`` (the x86 boot protocol: the setup
  header and the 64-bit boot protocol) and ``Documentation/arch/x86/
  zero-page.rst`` (struct boot_params).
* Xen's PVH ABI: ``docs/misc/pvh.pandoc`` and
  ``xen/include/public/arch-x86/hvm/start_info.h`` (hvm_start_info version 1,
  hvm_modlist_entry, hvm_memmap_table_entry); the entry point comes from the
  ``XEN_ELFNOTE_PHYS32_ENTRY`` ELF note of ``xen/include/public/elfnote.h``.
* MP and ACPI tables: see ``platform_tables.py``.

Guest physical memory at boot (the named constants below):

==================  =========  ================================================
range               owner      contents
==================  =========  ================================================
0x00000-0x004FF     fixed      real-mode IVT and BIOS data area (left alone)
0x00500-0x005FF     fixed      GDT and IDT of the CPU setup (not in real mode)
0x07000-0x07FFF     movable    zero page / multiboot info / hvm_start_info
0x08000-0x083FF     movable    memory map (multiboot mmap, PVH memmap)
0x08400-0x087FF     movable    module list (multiboot mods, PVH modlist)
0x08800-0x08FEF     movable    boot stack, initial stack pointer 0x8FF0
0x09000-0x0EFFF     movable    identity-mapped page tables for 64-bit entry
0x10000-...         image      flat binaries at cs*16+ip (default 0x1000:0)
0x20000-0x2FFFF     movable    command lines, NUL-terminated (64 KiB)
0x9FC00-0x9FFFF     fixed      EBDA
0xA0000-0xEFFFF     fixed      VGA memory and option ROMs (not RAM in e820)
0xF0000-0xFFFFF     fixed      BIOS area: MP tables, ACPI RSDP and tables
0x100000-...        image      kernels and modules; initrd near top of low RAM
3 GiB-4 GiB         MMIO       IOAPIC 0xFEC00000, local APIC 0xFEE00000
==================  =========  ================================================

The fixed areas are the platform's (``Platform.fixed_areas``: the IVT/BDA,
EBDA, VGA window and BIOS area) and the GDT the CPU setup writes; an image
that overlaps one is refused with the area's name. The movable ones are
kvmlite's own boot structures: each loader plans the image first, then puts
each structure at its address in the table if that is free, else in the
lowest free RAM the image and its modules leave (a Multiboot kernel linked
at 0x8000 gets its boot information at 0x1000), so images may be linked
anywhere in RAM outside the fixed areas. A structure a loader does not need
is not placed (no page tables unless the entry is in long mode, nothing in
low memory for a flat binary).
"""

import struct
from collections import namedtuple

from .layout import PC

__all__ = [
    'Boot', 'BootError', 'load_flat', 'load_elf', 'load_multiboot',
    'load_bzimage', 'load_pvh', 'has_pvh_note', 'e820_map',
]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE = 4 * KiB

# --- The low-memory layout (see the table above) ---------------------------
CORE_GDT_START = 0x500            # GDT/IDT of the core's CPU setup (fixed)
CORE_GDT_END = 0x600
# The boot area: one block, at BOOT_INFO unless the image is there.
BOOT_INFO = 0x7000                # zero page / multiboot info / hvm_start_info
BOOT_INFO_SIZE = 0x1000
BOOT_MEMMAP = 0x8000              # memory map for multiboot and PVH
BOOT_MEMMAP_SIZE = 0x400
BOOT_MODLIST = 0x8400             # multiboot module list / PVH modlist
BOOT_MODLIST_SIZE = 0x400
BOOT_STACK = 0x8FF0               # initial stack pointer, grows down
BOOT_AREA_END = 0x9000
BOOT_AREA_SIZE = BOOT_AREA_END - BOOT_INFO
CORE_PAGE_TABLES_START = 0x9000   # identity-mapped page tables (64-bit entry)
CORE_PAGE_TABLES_END = 0xF000     # PML4, PDPT and 4 page directories: 4 GiB
FLAT_CS = 0x1000                  # default real-mode segment of flat binaries
CMDLINE = 0x20000                 # command lines
CMDLINE_MAX = 0x10000
KERNEL_START = 0x100000           # kernels load at 1 MiB and up (the boot protocols)
LOWEST_MOVED = 0x1000             # a moved structure goes no lower (page 0: IVT, GDT)
# The memory map, the fixed areas and the e820 types are the platform's
# (tools/layout.py); every loader takes ``platform`` (default: the PC).


def _fixed_areas(platform, gdt=True):
    """Areas no image may overlap: (start, end, what lives there). ``gdt``:
    the CPU setup writes its GDT (every entry mode but real mode)."""
    areas = platform.fixed_areas
    if gdt:
        areas += ((CORE_GDT_START, CORE_GDT_END, "kvmlite's boot GDT and IDT"),)
    return tuple(sorted(areas))


def _free_low(fixed):
    """The free stretches of the low megabyte between ``fixed`` areas, as
    text for a message: '0x600-0x9FBFF'."""
    out, at = [], 0
    for lo, hi, _ in fixed:
        if lo >= KERNEL_START:
            break
        if lo > at:
            out.append(_span(at, lo - at))
        at = max(at, hi)
    if at < KERNEL_START:
        out.append(_span(at, KERNEL_START - at))
    return out


class _BootArea:
    """Where this boot's boot-area structures are: the block at ``base``
    (BOOT_INFO when it is free), laid out as at the default address."""

    def __init__(self, base):
        self.base = base
        self.info = base                                    # zero page, MBI, start info
        self.loader_name = base + (MBI_LOADER_NAME_ADDR - BOOT_INFO)
        self.memmap = base + (BOOT_MEMMAP - BOOT_INFO)
        self.modlist = base + (BOOT_MODLIST - BOOT_INFO)
        self.stack = base + (BOOT_STACK - BOOT_INFO)


def virtio_mmio_cmdline(cmdline, devices):
    """``cmdline`` (bytes) with ``virtio_mmio.device=SIZE@ADDR:IRQ`` for
    each ``(size, addr, irq)`` of ``devices`` (Linux
    drivers/virtio/virtio_mmio.c, VIRTIO_MMIO_CMDLINE_DEVICES), unless the
    user already named that address."""
    words = [cmdline] if cmdline else []
    for size, addr, irq in devices:
        if f'@{addr:#x}:'.encode() not in cmdline:
            words.append(f'virtio_mmio.device={size}@{addr:#x}:{irq}'.encode())
    return b' '.join(words)


class BootError(ValueError):
    """An image (or a loader argument) that cannot be booted; the message says
    what is wrong and what to do."""


class Boot:
    """How to start the CPU after a loader ran.

    ``mode`` is 'real' (``cs`` is the code segment selector, base cs*16, and
    ``entry`` the ip relative to it; the core gives DS/ES/SS the same
    selector), 'prot32' (flat 32-bit segments, paging off) or 'long64'
    (identity-mapped long mode, code selector 0x10, data 0x18: the Linux boot
    protocol's __BOOT_CS/__BOOT_DS). ``regs`` are general registers to set
    (others zero); ``stack`` is the initial rsp, or None to leave it 0;
    ``page_tables`` is where the identity map goes in 'long64' (the loader
    keeps those pages free of the image).
    (A plain class, not a dataclass: dataclasses and typing would cost every
    kvmlite run a few MiB of resident memory.)
    """
    __slots__ = ('mode', 'entry', 'cs', 'regs', 'stack', 'describe', 'page_tables')

    def __init__(self, mode, entry, cs=0, regs=None, stack=None, describe='', page_tables=None):
        self.mode, self.entry, self.cs = mode, entry, cs
        self.regs = {} if regs is None else regs
        self.stack, self.describe = stack, describe
        self.page_tables = page_tables

    def __eq__(self, other):
        return type(other) is Boot and all(getattr(self, k) == getattr(other, k)
                                           for k in self.__slots__)

    def __repr__(self):
        return 'Boot(' + ', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__) + ')'


# --- Small helpers ---------------------------------------------------------

def _hex(value):
    return f'0x{value:X}'


def _span(gpa, size):
    return f'{_hex(gpa)}-{_hex(gpa + max(size, 1) - 1)}'


def _size(n):
    """A size for a message: '300 MiB', '1.5 MiB', '12 KiB', '7 bytes'."""
    for unit, name in ((GiB, 'GiB'), (MiB, 'MiB'), (KiB, 'KiB')):
        if n >= unit:
            return f'{n // unit} {name}' if n % unit == 0 else f'{n / unit:.1f} {name}'
    return f'{n} bytes'


def _align_up(value, align):
    return (value + align - 1) // align * align


def _as_bytes(data, what):
    if isinstance(data, str):
        data = data.encode()
    try:
        return bytes(data)
    except TypeError:
        raise BootError(f'{what} must be bytes, not {type(data).__name__}') from None


def _unpack(fmt, image, offset, what):
    """struct.unpack_from that reports a short file as a BootError."""
    size = struct.calcsize(fmt)
    if offset < 0 or offset + size > len(image):
        raise BootError(f'{what} is truncated: it needs bytes {_hex(offset)}-'
                        f'{_hex(offset + size - 1)} but the file has {len(image)} bytes')
    return struct.unpack_from(fmt, image, offset)


def _merge(ram):
    """RAM regions sorted, with adjacent or overlapping ones joined."""
    out = []
    for start, size in sorted((int(s), int(n)) for s, n in ram if n > 0):
        if out and start <= out[-1][0] + out[-1][1]:
            last = out.pop()
            start, size = last[0], max(last[0] + last[1], start + size) - last[0]
        out.append((start, size))
    return out


def _write(mem, gpa, data):
    """mem.write split at the edges of mem.ram's regions (memory slots), so
    data that spans two adjacent slots is written one slot at a time."""
    data = memoryview(data)
    for start, size in sorted(mem.ram):
        lo, hi = max(gpa, start), min(gpa + len(data), start + size)
        if lo < hi:
            mem.write(lo, bytes(data[lo - gpa:hi - gpa]))


def _low_ram_end(ram, platform=PC):
    """End of the RAM region at address 0 (at most the platform's low RAM)."""
    for start, size in ram:
        if start == 0:
            return min(size, platform.low_ram_max)
    raise BootError('guest RAM has no region at address 0: the loaders need low memory')


def _describe_ram(ram):
    return ', '.join(_span(s, n) for s, n in ram) or 'none'


def e820_map(ram, platform=PC):
    """The BIOS-style memory map for RAM regions ``[(start, size)]``: sorted
    ``(addr, size, type)``, RAM minus the platform's holes of the low
    megabyte, the EBDA and the BIOS area (which holds the MP and ACPI tables)
    listed as reserved, the VGA/option-ROM window left out, as a PC BIOS does.
    """
    return platform.e820(_merge(ram))


class _Plan:
    """The writes a loader will make, each checked when added and all made at
    the end, so a refused image leaves guest memory untouched; and the places
    of kvmlite's movable boot structures (:meth:`place`), chosen around
    what the image claimed first."""

    _ZEROS = bytes(MiB)

    def __init__(self, mem, platform, gdt=True):
        self.mem, self.platform = mem, platform
        self.ram = _merge(mem.ram)
        self.fixed = _fixed_areas(platform, gdt)
        self.placed = []            # (start, end, what): kvmlite's structures
        self.claimed = []           # (start, end): what the image and its parts use
        self.moved = []             # (what, address) of structures off their default
        self.writes = []

    def claim(self, gpa, size, what, own=False):
        """Refuse [gpa, gpa+size) unless it lies inside one RAM region and off
        the fixed areas and the structures placed so far (``own``: a write
        into one of those structures)."""
        if size <= 0:
            return
        end = gpa + size
        if gpa < 0 or not any(s <= gpa and end <= s + n for s, n in self.ram):
            raise BootError(f'{what} at {_span(gpa, size)} is outside guest RAM '
                            f'({_describe_ram(self.ram)}): give more --mem or place it lower')
        for lo, hi, name in self.fixed:
            if gpa < hi and lo < end:
                free = ' or '.join(_free_low(self.fixed))
                raise BootError(f'{what} at {_span(gpa, size)} overlaps {name} at '
                                f'{_span(lo, hi - lo)}, a fixed area: link it in free RAM '
                                f'({free}, or {_hex(KERNEL_START)} and up)')
        if own:
            return
        for lo, hi, name in self.placed:
            if gpa < hi and lo < end:
                raise BootError(f'{what} at {_span(gpa, size)} overlaps {name} '
                                f'({_span(lo, hi - lo)}): give more --mem or a smaller image')
        self.claimed.append((gpa, end))

    def _free(self, gpa, size):
        end = gpa + size
        if not any(s <= gpa and end <= s + n for s, n in self.ram):
            return False
        busy = [(lo, hi) for lo, hi, _ in self.fixed + tuple(self.placed)] + self.claimed
        return not any(gpa < hi and lo < end for lo, hi in busy)

    def place(self, size, what, prefer, limit=4 * GiB):
        """An address for ``size`` bytes of ``what``: ``prefer`` if it is free,
        else the lowest free page-aligned address at or above LOWEST_MOVED
        that ends below ``limit``. The area is then kept from later claims."""
        addr = prefer if self._free(prefer, size) else None
        if addr is None:
            busy = sorted([(lo, hi) for lo, hi, _ in self.fixed + tuple(self.placed)]
                          + self.claimed)
            for start, n in self.ram:
                at = _align_up(max(start, LOWEST_MOVED), PAGE)
                for lo, hi in busy:
                    if hi <= at:
                        continue
                    if lo >= at + size:
                        break
                    at = _align_up(hi, PAGE)
                if at + size <= min(start + n, limit):
                    addr = at
                    break
        if addr is None:
            raise BootError(f'no free guest RAM below {_hex(limit)} for {what} '
                            f'({_size(size)}) beside the image: give more --mem')
        if addr != prefer:
            self.moved.append((what, addr))
        self.placed.append((addr, addr + size, what))
        return addr

    def boot_area(self):
        """Place the boot area (boot information, memory map, module list,
        stack); returns its :class:`_BootArea`."""
        return _BootArea(self.place(BOOT_AREA_SIZE, 'the boot information and stack', BOOT_INFO))

    def page_tables(self):
        """Place the identity map's page tables (long-mode entry)."""
        return self.place(CORE_PAGE_TABLES_END - CORE_PAGE_TABLES_START,
                          "kvmlite's boot page tables", CORE_PAGE_TABLES_START)

    def describe_moved(self):
        """', boot information and stack at 0x1000' for each moved structure."""
        return ''.join(f', {what} moved to {_hex(addr)}' for what, addr in self.moved)

    def put(self, gpa, data, what, own=False):
        self.claim(gpa, len(data), what, own)
        if len(data):
            self.writes.append((gpa, data))

    def zero(self, gpa, size, what):
        self.claim(gpa, size, what)
        if size > 0:
            self.writes.append((gpa, size))

    def commit(self):
        for gpa, data in self.writes:
            if isinstance(data, int):       # a zero fill, written in chunks
                for done in range(0, data, len(self._ZEROS)):
                    _write(self.mem, gpa + done, self._ZEROS[:min(data - done, len(self._ZEROS))])
            else:
                _write(self.mem, gpa, data)


class _Strings:
    """NUL-terminated strings packed one after another in the command-line
    area (placed at CMDLINE if that is free)."""

    def __init__(self, plan, size=CMDLINE_MAX):
        base = plan.place(size, 'the command-line area', CMDLINE)
        self.plan, self.base, self.next, self.end = plan, base, base, base + size

    def add(self, text, what):
        text = _as_bytes(text, what)
        if b'\0' in text:
            raise BootError(f'{what} contains a NUL byte: remove it')
        addr = self.next
        if addr + len(text) + 1 > self.end:
            raise BootError(f'{what} ({_size(len(text))}) does not fit in the '
                            f'{_size(self.end - self.base)} command-line area: shorten it')
        self.plan.put(addr, text + b'\0', what, own=True)
        self.next = addr + len(text) + 1
        return addr


def _place_initrd(plan, initrd, floor, limit, where):
    """Put the initrd at the highest page-aligned address below ``limit`` (and
    the top of low RAM) that stays at or above ``floor``; return its address."""
    size = len(initrd)
    top = min(_low_ram_end(plan.ram, plan.platform), limit)
    addr = (top - size) // PAGE * PAGE
    if size > top or addr < floor:
        total = sum(n for _, n in plan.ram)
        raise BootError(f'initrd of {_size(size)} does not fit {where} with '
                        f'{_size(total)} of RAM: give more --mem')
    plan.put(addr, initrd, f'the initrd ({_size(size)})')
    return addr


# --- Flat binaries ---------------------------------------------------------

def load_flat(image, mem, cs=FLAT_CS, ip=0, platform=PC):
    """Load a flat binary at cs*16+ip and enter it in real mode (as lkvm does)."""
    image = _as_bytes(image, 'flat binary')
    if not (0 <= cs <= 0xFFFF and 0 <= ip <= 0xFFFF):
        raise BootError(f'real-mode entry {cs:#x}:{ip:#x} is not a 16-bit selector and offset')
    if not image:
        raise BootError('flat binary is empty: nothing to run')
    addr = cs * 16 + ip
    plan = _Plan(mem, platform, gdt=False)     # real mode: no GDT, no boot area
    plan.put(addr, image, f'flat binary of {_size(len(image))}')
    plan.commit()
    return Boot('real', ip, cs=cs,
                describe=f'flat binary of {_size(len(image))} at {cs:04X}:{ip:04X} '
                         f'({_hex(addr)}), real mode')


# --- ELF -------------------------------------------------------------------

ELFMAG = b'\x7fELF'               # e_ident[EI_MAG0..3]
ELFCLASS32 = 1                    # e_ident[EI_CLASS]: 32-bit objects
ELFCLASS64 = 2                    # 64-bit objects
ELFDATA2LSB = 1                   # e_ident[EI_DATA]: little-endian
ET_EXEC = 2                       # e_type: executable file
EM_386 = 3                        # e_machine: Intel 80386
EM_X86_64 = 62                    # e_machine: AMD x86-64
PT_LOAD = 1                       # p_type: loadable segment
PT_NOTE = 4                       # p_type: auxiliary information (notes)
SHT_NOTE = 7                      # sh_type: notes section

# Per class: ELF header, program header and section header layouts, machine.
_ELF_LAYOUT = {
    ELFCLASS32: ('<16sHHIIIIIHHHHHH', '<IIIIIIII', '<IIIIIIIIII', EM_386, 'EM_386'),
    ELFCLASS64: ('<16sHHIQQQIHHHHHH', '<IIQQQQQQ', '<IIQQQQIIQQ', EM_X86_64, 'EM_X86_64'),
}


_Segment = namedtuple('_Segment', 'index type offset vaddr paddr filesz memsz align')
_Elf = namedtuple('_Elf', 'bits entry segments shoff shentsize shnum')


def _parse_elf(image, what='ELF file'):
    """Parse and check the ELF header and program headers of an x86 image."""
    if bytes(image[:4]) != ELFMAG:
        hint = ' (it looks like a bzImage: use the bzImage loader)' \
            if bytes(image[0x202:0x206]) == b'HdrS' else ''
        raise BootError(f'not an ELF file: bad magic {bytes(image[:4])!r} '
                        f'(expected {ELFMAG!r}){hint}')
    ident = _unpack('<16s', image, 0, 'ELF identification')[0]
    layout = _ELF_LAYOUT.get(ident[4])
    if layout is None:
        raise BootError(f'{what}: unknown ELF class {ident[4]} (expected 1 for ELF32 or 2 for '
                        'ELF64)')
    if ident[5] != ELFDATA2LSB:
        raise BootError(f'{what}: EI_DATA is {ident[5]}, not little-endian: not an x86 image')
    ehdr, phdr, _, machine, machine_name = layout
    (_, e_type, e_machine, _, entry, phoff, shoff, _, _, phentsize, phnum,
     shentsize, shnum, _) = _unpack(ehdr, image, 0, 'ELF header')
    bits = 32 if ident[4] == ELFCLASS32 else 64
    if e_type != ET_EXEC:
        raise BootError(f'{what}: ELF type {e_type} is not ET_EXEC (2): link a static, non-PIE '
                        'executable')
    if e_machine != machine:
        raise BootError(f'{what}: ELF{bits} file for machine {e_machine} '
                        f'(expected {machine_name}, {machine})')
    if phnum and phentsize < struct.calcsize(phdr):
        raise BootError(f'{what}: e_phentsize {phentsize} is smaller than an ELF{bits} program '
                        'header')
    if phoff + phnum * phentsize > len(image):
        raise BootError(f'{what} is truncated: {phnum} program headers at {_hex(phoff)} '
                        f'run past the end of the {len(image)}-byte file')
    segments = []
    for i in range(phnum):
        fields = struct.unpack_from(phdr, image, phoff + i * phentsize)
        if bits == 32:
            p_type, off, vaddr, paddr, filesz, memsz, _, align = fields
        else:
            p_type, _, off, vaddr, paddr, filesz, memsz, align = fields
        segments.append(_Segment(i, p_type, off, vaddr, paddr, filesz, memsz, align))
    return _Elf(bits, entry, segments, shoff, shentsize, shnum)


def _plan_segments(plan, elf, image, what):
    """Plan the PT_LOAD segments at their physical addresses, bss zeroed;
    returns the (lowest, highest) physical addresses loaded."""
    loads = [s for s in elf.segments if s.type == PT_LOAD and s.memsz]
    if not loads:
        raise BootError(f'{what} has no PT_LOAD segment to load')
    for s in loads:
        label = f'{what} segment {s.index}'
        if s.filesz > s.memsz:
            raise BootError(f'{label}: p_filesz {_hex(s.filesz)} exceeds p_memsz {_hex(s.memsz)}')
        if s.offset + s.filesz > len(image):
            raise BootError(f'{label} is truncated: its bytes {_span(s.offset, s.filesz)} run '
                            f'past the end of the {len(image)}-byte file')
        low, high, _ = plan.platform.reserved_low
        if s.offset == 0 and s.filesz and low < s.paddr + s.memsz and s.paddr < high:
            # GNU ld -Ttext 0x100000 maps the ELF headers in a page just below
            raise BootError(f'{label} maps the ELF headers at {_span(s.paddr, s.memsz)}, in the '
                            'reserved BIOS area: link with "ld -n" or a linker script so that '
                            f'nothing lies below {_hex(KERNEL_START)}')
        plan.claim(s.paddr, s.memsz, label)
        plan.put(s.paddr, memoryview(image)[s.offset:s.offset + s.filesz], label)
        plan.zero(s.paddr + s.filesz, s.memsz - s.filesz, f'{label} bss')
    return min(s.paddr for s in loads), max(s.paddr + s.memsz for s in loads)


def _elf_entry(elf, what):
    """The physical entry address: e_entry translated through the segment whose
    virtual range holds it (linkers put virtual entries in higher-half kernels)."""
    loads = [s for s in elf.segments if s.type == PT_LOAD and s.memsz]
    for base in ('vaddr', 'paddr'):
        for s in loads:
            start = getattr(s, base)
            if start <= elf.entry < start + s.memsz:
                return s.paddr + (elf.entry - start)
    raise BootError(f'{what}: entry point {_hex(elf.entry)} is not inside any PT_LOAD segment')


def load_elf(image, mem, platform=PC):
    """Load an ELF32 (entered in 'prot32') or ELF64 (entered in 'long64')
    executable by physical address; the entry point is e_entry."""
    image = _as_bytes(image, 'ELF image')
    elf = _parse_elf(image)
    plan = _Plan(mem, platform)
    lo, hi = _plan_segments(plan, elf, image, f'ELF{elf.bits}')
    entry = _elf_entry(elf, f'ELF{elf.bits}')
    if entry >= 4 * GiB:
        raise BootError(f'ELF{elf.bits} entry point {_hex(entry)} is above 4 GiB, '
                        'outside the identity map: link it lower')
    area = plan.boot_area()
    mode = 'prot32' if elf.bits == 32 else 'long64'
    tables = plan.page_tables() if mode == 'long64' else None
    plan.commit()
    return Boot(mode, entry, stack=area.stack, page_tables=tables,
                describe=f'ELF{elf.bits} at {_span(lo, hi - lo)}, entry {_hex(entry)} ({mode})'
                         + plan.describe_moved())


# --- Multiboot 0.6.96 ------------------------------------------------------

MULTIBOOT_HEADER_MAGIC = 0x1BADB002      # in the OS image's header
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002  # in EAX at entry
MULTIBOOT_SEARCH = 8192                  # the header lies in the first 8 KiB
MB_PAGE_ALIGN = 1 << 0                   # header flag: modules on 4 KiB pages
MB_MEMORY_INFO = 1 << 1                  # header flag: mem_* fields wanted
MB_VIDEO_MODE = 1 << 2                   # header flag: a video mode wanted
MB_AOUT_KLUDGE = 1 << 16                 # header flag: load addresses in header
MB_KNOWN_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO
MBI_MEMORY = 1 << 0                      # info flag: mem_lower/mem_upper valid
MBI_CMDLINE = 1 << 2                     # info flag: cmdline valid
MBI_MODS = 1 << 3                        # info flag: mods_count/mods_addr valid
MBI_MMAP = 1 << 6                        # info flag: mmap_length/mmap_addr valid
MBI_LOADER_NAME = 1 << 9                 # info flag: boot_loader_name valid
MBI_SIZE = 116                           # struct multiboot_info, through framebuffer
MBI_LOADER_NAME_ADDR = BOOT_INFO + 0x100  # the boot loader name, after the info
LOADER_NAME = b'kvmlite'


def _find_multiboot_header(image):
    """Offset and flags of the first valid header (4-byte aligned, whole in
    the first 8192 bytes, magic + flags + checksum == 0 mod 2**32)."""
    bad = None
    for off in range(0, min(len(image), MULTIBOOT_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from('<III', image, off)
        if magic != MULTIBOOT_HEADER_MAGIC:
            continue
        if (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
        bad = off if bad is None else bad
    if bad is not None:
        raise BootError(f'multiboot header at offset {_hex(bad)} has a bad checksum '
                        '(magic + flags + checksum must be 0 mod 2**32): rebuild the image')
    raise BootError(f'no multiboot header: magic {_hex(MULTIBOOT_HEADER_MAGIC)} not found '
                    f'4-byte aligned in the first {MULTIBOOT_SEARCH} bytes')


def _check_multiboot_flags(flags):
    if flags & MB_VIDEO_MODE:
        raise BootError('multiboot header requires a video mode (flag bit 2); kvmlite has no '
                        'framebuffer: build the kernel without the video-mode request')
    unknown = flags & 0xFFFF & ~MB_KNOWN_REQUIRED
    if unknown:
        raise BootError(f'multiboot header requires features kvmlite does not know '
                        f'(flag bits {_hex(unknown)}): it cannot be booted')


def _plan_aout(plan, image, off):
    """Plan an image whose header carries its load addresses (flag bit 16);
    returns (entry, lowest, highest) physical addresses."""
    if off + 32 > MULTIBOOT_SEARCH:
        raise BootError('multiboot header address fields run past the first 8192 bytes')
    header_addr, load_addr, load_end, bss_end, entry = \
        _unpack('<5I', image, off + 12, 'multiboot header address fields')
    if load_addr > header_addr:
        raise BootError(f'multiboot load_addr {_hex(load_addr)} is above header_addr '
                        f'{_hex(header_addr)}')
    start = off - (header_addr - load_addr)
    if start < 0:
        raise BootError(f'multiboot header_addr - load_addr ({_hex(header_addr - load_addr)}) '
                        f'puts the text before the start of the file')
    if load_end and load_end < load_addr:
        raise BootError(f'multiboot load_end_addr {_hex(load_end)} is below load_addr '
                        f'{_hex(load_addr)}')
    size = load_end - load_addr if load_end else len(image) - start
    if start + size > len(image):
        raise BootError(f'multiboot image is truncated: load_end_addr asks for {_size(size)} '
                        f'from file offset {_hex(start)} but the file has {len(image)} bytes')
    end = load_addr + size
    if bss_end and bss_end < end:
        raise BootError(f'multiboot bss_end_addr {_hex(bss_end)} is below the end of the text '
                        f'{_hex(end)}')
    top = max(end, bss_end)
    plan.claim(load_addr, top - load_addr, 'multiboot kernel')
    plan.put(load_addr, memoryview(image)[start:start + size], 'multiboot kernel')
    plan.zero(end, top - end, 'multiboot kernel bss')
    if not load_addr <= entry < end:
        raise BootError(f'multiboot entry_addr {_hex(entry)} is outside the loaded text '
                        f'{_span(load_addr, size)}')
    return entry, load_addr, top


def _plan_modules(plan, strings, modules, after):
    """Place modules page-aligned after the kernel (or, where kvmlite's
    structures are, in the next free RAM); returns the module list."""
    entries = []
    addr = _align_up(max(after, KERNEL_START), PAGE)
    for i, module in enumerate(modules):
        try:
            data, args = module
        except (TypeError, ValueError):
            raise BootError(f'module {i} must be a (bytes, command line) pair') from None
        data = _as_bytes(data, f'module {i}')
        what = f'module {i} ({_size(len(data))})'
        for lo, hi, _ in sorted(plan.placed):       # step over kvmlite's structures
            if addr < hi and lo < addr + len(data):
                addr = _align_up(hi, PAGE)
        plan.put(addr, data, what)
        string = strings.add(args, f'module {i} command line')
        entries.append(struct.pack('<IIII', addr, addr + len(data), string, 0))
        addr = _align_up(addr + len(data), PAGE)
    table = b''.join(entries)
    if len(table) > BOOT_MODLIST_SIZE:
        raise BootError(f'{len(modules)} modules do not fit the module list '
                        f'(at most {BOOT_MODLIST_SIZE // 16}): pack them into fewer')
    return table


def _multiboot_info(ram, cmdline, nmods, mmap_len, platform, area):
    """struct multiboot_info at ``area.info``, pointing at the boot area's parts."""
    low_end = _low_ram_end(ram, platform)
    flags = MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME
    flags |= MBI_MODS if nmods else 0
    info = bytearray(MBI_SIZE)
    struct.pack_into('<IIIIIII', info, 0, flags,
                     min(low_end, platform.holes[0].start) // KiB,   # mem_lower, KiB below 640K
                     max(low_end - KERNEL_START, 0) // KiB,    # mem_upper, KiB above 1M
                     0, cmdline, nmods, area.modlist if nmods else 0)
    struct.pack_into('<II', info, 44, mmap_len, area.memmap)   # mmap_length, mmap_addr
    struct.pack_into('<I', info, 64, area.loader_name)         # boot_loader_name
    return bytes(info)


def load_multiboot(image, mem, cmdline=b'', modules=(), name=b'kvmlite', platform=PC):
    """Load a Multiboot (v1) kernel, a.out-kludge or ELF, with its modules
    (``[(data, b'name args')]``); enter it in 'prot32' with EAX=0x2BADB002
    and EBX=the multiboot info. The command line starts with ``name``."""
    image = _as_bytes(image, 'multiboot image')
    off, flags = _find_multiboot_header(image)
    _check_multiboot_flags(flags)
    plan = _Plan(mem, platform)
    if flags & MB_AOUT_KLUDGE:
        entry, lo, hi = _plan_aout(plan, image, off)
        kind = 'a.out kludge'
    else:
        elf = _parse_elf(image, 'multiboot kernel (no a.out kludge, so ELF)')
        lo, hi = _plan_segments(plan, elf, image, 'multiboot ELF')
        entry, kind = _elf_entry(elf, 'multiboot ELF'), f'ELF{elf.bits}'
        if entry >= 4 * GiB:
            raise BootError(f'multiboot entry point {_hex(entry)} is above 4 GiB: link it lower')
    area = plan.boot_area()
    strings = _Strings(plan)
    name = _as_bytes(name, 'kernel name')
    cmdline = _as_bytes(cmdline, 'command line')
    cmd_addr = strings.add(name + (b' ' + cmdline if cmdline else b''), 'the command line')
    modlist = _plan_modules(plan, strings, modules, hi)
    mmap = b''.join(struct.pack('<IQQI', 20, a, n, t) for a, n, t in e820_map(plan.ram, platform))
    if len(mmap) > BOOT_MEMMAP_SIZE:
        raise BootError(f'guest RAM has too many regions for the memory map ({len(plan.ram)})')
    plan.put(area.info, _multiboot_info(plan.ram, cmd_addr, len(modules), len(mmap), platform,
                                        area), 'the multiboot info', own=True)
    plan.put(area.loader_name, LOADER_NAME + b'\0', 'the boot loader name', own=True)
    plan.put(area.memmap, mmap, 'the memory map', own=True)
    plan.put(area.modlist, modlist, 'the module list', own=True)
    plan.commit()
    return Boot('prot32', entry, regs={'rax': MULTIBOOT_BOOTLOADER_MAGIC, 'rbx': area.info},
                stack=area.stack,
                describe=f'multiboot {kind} at {_span(lo, hi - lo)}, entry {_hex(entry)}, '
                         f'{len(modules)} module(s)' + plan.describe_moved())


# --- Linux bzImage, 64-bit boot protocol -------------------------------------

BZ_MAGIC = b'HdrS'                  # setup header signature at 0x202
BZ_BOOT_FLAG = 0xAA55               # boot_flag at 0x1FE
BZ_MIN_VERSION = 0x0206             # cmdline_size and a sane header from here on
LOADED_HIGH = 1 << 0                # loadflags: protected-mode code at 0x100000
XLF_KERNEL_64 = 1 << 0              # xloadflags: 64-bit entry at load address + 0x200
STARTUP_64_OFFSET = 0x200           # startup_64 from the protected-mode kernel start
LOADER_TYPE_UNDEFINED = 0xFF        # type_of_loader: a loader with no assigned id
VID_MODE_NORMAL = 0xFFFF            # vid_mode: "normal" (80x25)
DEFAULT_INITRD_ADDR_MAX = 0x37FFFFFF
# struct boot_params (zero-page.rst); the setup header fields sit at the same
# offsets in the file and in the zero page.
ZP_ACPI_RSDP_ADDR = 0x070           # acpi_rsdp_addr, 8 bytes
ZP_E820_ENTRIES = 0x1E8             # e820_entries, 1 byte
ZP_SETUP_HEADER = 0x1F1             # struct setup_header
ZP_SETUP_HEADER_MAX_END = 0x290     # edd_mbr_sig_buffer follows the header
ZP_E820_TABLE = 0x2D0               # e820_table, 20-byte entries
ZP_E820_MAX = 128

# Setup header fields read by the loader: name -> (offset, format, protocol).
_SETUP_FIELDS = {
    'setup_sects': (0x1F1, 'B', 0), 'syssize': (0x1F4, 'I', 0),
    'boot_flag': (0x1FE, 'H', 0), 'header': (0x202, '4s', 0),
    'version': (0x206, 'H', 0), 'loadflags': (0x211, 'B', 0),
    'initrd_addr_max': (0x22C, 'I', 0x203), 'kernel_alignment': (0x230, 'I', 0x205),
    'relocatable_kernel': (0x234, 'B', 0x205), 'cmdline_size': (0x238, 'I', 0x206),
    'pref_address': (0x258, 'Q', 0x20A), 'init_size': (0x260, 'I', 0x20A),
    'xloadflags': (0x236, 'H', 0x20C),
}


def _version(v):
    return f'{v >> 8}.{v & 0xFF:02d}'


def _setup_header(image):
    """Read and check the setup header; fields newer than the kernel's protocol
    version read as 0. Returns (fields, header end offset)."""
    if len(image) < 0x208:
        raise BootError(f'not a bzImage: {len(image)} bytes is too short for a setup header')
    if bytes(image[0x202:0x206]) != BZ_MAGIC or image[0x1FE:0x200] != b'\x55\xAA':
        raise BootError(f'not a bzImage: no "HdrS" setup header at 0x202 with boot_flag 0xAA55 '
                        f'(found {bytes(image[0x202:0x206])!r})')
    version = struct.unpack_from('<H', image, 0x206)[0]
    if version < BZ_MIN_VERSION:
        raise BootError(f'bzImage setup header: boot protocol {_version(version)} is too old; '
                        f'kvmlite needs {_version(BZ_MIN_VERSION)} or newer')
    end = min(0x202 + image[0x201], ZP_SETUP_HEADER_MAX_END)
    hdr = {}
    for name, (off, fmt, since) in _SETUP_FIELDS.items():
        if version < since:
            hdr[name] = 0
            continue
        if off + struct.calcsize(fmt) > end:
            raise BootError(f'bzImage setup header ends at {_hex(end)}, too short for {name} '
                            f'of protocol {_version(version)}: the image is damaged')
        hdr[name] = _unpack('<' + fmt, image, off, 'bzImage setup header')[0]
    return hdr, end


def _kernel_address(hdr):
    """Where the protected-mode kernel goes: pref_address (protocol 2.10+,
    where the kernel decompresses itself anyway) or 1 MiB, raised to
    kernel_alignment when the kernel is relocatable."""
    addr = hdr['pref_address'] if hdr['version'] >= 0x20A else KERNEL_START
    if hdr['relocatable_kernel']:
        align = hdr['kernel_alignment']
        if align == 0 or align & (align - 1):
            raise BootError(f'bzImage setup header: kernel_alignment {_hex(align)} is not a power '
                            'of two')
        addr = _align_up(max(addr, KERNEL_START), align)
    return addr


def _check_bzimage(hdr, image, setup_size):
    version = _version(hdr['version'])
    if not hdr['loadflags'] & LOADED_HIGH:
        raise BootError('bzImage setup header: LOADED_HIGH is clear, so this is a zImage '
                        '(loaded at 0x10000); kvmlite boots bzImages only')
    if hdr['version'] >= 0x20C and not hdr['xloadflags'] & XLF_KERNEL_64:
        raise BootError(f'bzImage (protocol {version}) has no 64-bit entry point '
                        '(XLF_KERNEL_64 clear): build an x86-64 kernel')
    if setup_size + STARTUP_64_OFFSET >= len(image):
        raise BootError(f'bzImage is truncated: {setup_size} bytes of setup code '
                        f'(setup_sects) and no startup_64 after them in {len(image)} bytes')
    if hdr['syssize'] * 16 > len(image) - setup_size + 15:
        claimed = _size(hdr['syssize'] * 16)
        raise BootError(f'bzImage is truncated: syssize says {claimed} of kernel '
                        f'but the file holds {_size(len(image) - setup_size)} after the setup code')


def _zero_page(image, hdr_end, cmd_addr, initrd_addr, initrd_size, ram, rsdp, platform):
    """struct boot_params: the image's setup header plus what the loader fills in."""
    zp = bytearray(BOOT_INFO_SIZE)
    zp[ZP_SETUP_HEADER:hdr_end] = image[ZP_SETUP_HEADER:hdr_end]
    struct.pack_into('<H', zp, 0x1FA, VID_MODE_NORMAL)              # vid_mode
    struct.pack_into('<B', zp, 0x210, LOADER_TYPE_UNDEFINED)        # type_of_loader
    struct.pack_into('<II', zp, 0x218, initrd_addr, initrd_size)    # ramdisk_image, _size
    struct.pack_into('<I', zp, 0x228, cmd_addr)                     # cmd_line_ptr
    struct.pack_into('<Q', zp, ZP_ACPI_RSDP_ADDR, rsdp)
    table = e820_map(ram, platform)
    if len(table) > ZP_E820_MAX:
        raise BootError(f'guest RAM has too many regions for the e820 table ({len(ram)})')
    zp[ZP_E820_ENTRIES] = len(table)
    for i, entry in enumerate(table):
        struct.pack_into('<QQI', zp, ZP_E820_TABLE + 20 * i, *entry)
    return bytes(zp)


def load_bzimage(image, mem, cmdline=b'', initrd=None, rsdp=0, platform=PC):
    """Load a Linux bzImage by the 64-bit boot protocol: kernel at its
    preferred address, zero page in the boot area, command line, initrd below
    initrd_addr_max; enter 'long64' at startup_64 with RSI = the zero page.
    ``rsdp`` is the ACPI RSDP address, if tables were written (else 0)."""
    image = _as_bytes(image, 'bzImage')
    hdr, hdr_end = _setup_header(image)
    setup_size = ((hdr['setup_sects'] or 4) + 1) * 512
    _check_bzimage(hdr, image, setup_size)
    kernel = memoryview(image)[setup_size:]
    plan = _Plan(mem, platform)
    load = _kernel_address(hdr)
    need = max(len(kernel), hdr['init_size'])
    plan.claim(load, need, f'the kernel with its init_size of {_size(need)}')
    plan.put(load, kernel, 'the protected-mode kernel')
    if load + STARTUP_64_OFFSET >= 4 * GiB:
        raise BootError(f'bzImage pref_address {_hex(load)} is above 4 GiB, outside the identity '
                        'map')
    area = plan.boot_area()
    tables = plan.page_tables()
    cmdline = _as_bytes(cmdline, 'command line')
    if hdr['cmdline_size'] < len(cmdline):
        raise BootError(f'command line of {len(cmdline)} bytes is longer than the kernel\'s '
                        f'cmdline_size ({hdr["cmdline_size"]}): shorten it')
    cmd_addr = _Strings(plan).add(cmdline, 'the command line')
    initrd_addr, initrd = 0, _as_bytes(initrd or b'', 'initrd')
    if initrd:
        limit = hdr['initrd_addr_max'] or DEFAULT_INITRD_ADDR_MAX
        initrd_addr = _place_initrd(plan, initrd, load + need, limit + 1,
                                    f'below initrd_addr_max {_hex(limit)}')
    zp = _zero_page(image, hdr_end, cmd_addr, initrd_addr, len(initrd), plan.ram, rsdp, platform)
    plan.put(area.info, zp, 'the zero page', own=True)
    plan.commit()
    entry = load + STARTUP_64_OFFSET
    what = f'bzImage protocol {_version(hdr["version"])}, kernel at {_hex(load)} ' \
        f'({_size(len(kernel))}), entry {_hex(entry)}'
    if initrd:
        what += f', initrd {_size(len(initrd))} at {_hex(initrd_addr)}'
    return Boot('long64', entry, regs={'rsi': area.info}, stack=area.stack, page_tables=tables,
                describe=what + plan.describe_moved())


# --- PVH (Xen's direct boot ABI, used by Linux's vmlinux) ---------------------

XEN_ELFNOTE_PHYS32_ENTRY = 18       # note type: 32-bit physical entry point
XEN_NOTE_NAME = b'Xen'
HVM_START_MAGIC = 0x336EC578        # hvm_start_info.magic ("xEn3" with 0x80 on 'E')
HVM_START_VERSION = 1               # the version with the memory map
HVM_START_INFO_FMT = '<IIIIQQQQII'  # magic .. reserved, 56 bytes
HVM_MODLIST_FMT = '<QQQQ'           # paddr, size, cmdline_paddr, reserved
HVM_MEMMAP_FMT = '<QQII'            # addr, size, type, reserved
HVM_MEMMAP_TYPE_RAM = 1
HVM_MEMMAP_TYPE_RESERVED = 2


def _notes(image, offset, size, align, what):
    """Yield (name, type, desc) for each note in a PT_NOTE/SHT_NOTE area."""
    end = offset + size
    if end > len(image):
        raise BootError(f'{what} at {_span(offset, size)} runs past the end of the '
                        f'{len(image)}-byte file: the image is truncated')
    step = 8 if align == 8 else 4
    while offset + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from('<III', image, offset)
        desc = offset + 12 + _align_up(namesz, step)
        if desc + descsz > end:
            raise BootError(f'{what}: a note at {_hex(offset)} runs past the end of its area')
        yield bytes(image[offset + 12:offset + 12 + namesz]).rstrip(b'\0'), ntype, \
            bytes(image[desc:desc + descsz])
        offset = desc + _align_up(descsz, step)


def _note_areas(image, elf):
    """The note areas of an ELF: PT_NOTE segments, then SHT_NOTE sections."""
    for s in elf.segments:
        if s.type == PT_NOTE:
            yield s.offset, s.filesz, s.align, f'PT_NOTE segment {s.index}'
    shdr = _ELF_LAYOUT[ELFCLASS32 if elf.bits == 32 else ELFCLASS64][2]
    if not elf.shnum or not elf.shoff:
        return
    if elf.shentsize < struct.calcsize(shdr) or elf.shoff + elf.shnum * elf.shentsize > len(image):
        raise BootError(f'ELF section headers at {_hex(elf.shoff)} are damaged or truncated')
    for i in range(elf.shnum):
        fields = struct.unpack_from(shdr, image, elf.shoff + i * elf.shentsize)
        if fields[1] == SHT_NOTE:
            yield fields[4], fields[5], fields[8], f'SHT_NOTE section {i}'


def _pvh_entry(image, elf):
    for offset, size, align, what in _note_areas(image, elf):
        for name, ntype, desc in _notes(image, offset, size, align, what):
            if name != XEN_NOTE_NAME or ntype != XEN_ELFNOTE_PHYS32_ENTRY:
                continue
            if len(desc) not in (4, 8):
                raise BootError(f'PVH entry note has a {len(desc)}-byte value (expected 4 or 8)')
            entry = int.from_bytes(desc, 'little')
            if entry >= 4 * GiB:
                raise BootError(f'PVH entry point {_hex(entry)} is above 4 GiB: not a 32-bit entry')
            return entry
    raise BootError('no PVH entry: the ELF has no "Xen" note of type 18 '
                    '(XEN_ELFNOTE_PHYS32_ENTRY), so the kernel was built without CONFIG_PVH; '
                    'boot the bzImage instead')


def has_pvh_note(image):
    """True if ``image`` is an ELF that carries a Xen PHYS32 entry note, even a
    damaged one (so that format detection sends it to load_pvh, which says
    what is wrong with it)."""
    try:
        elf = _parse_elf(image)
        areas = list(_note_areas(image, elf))
    except BootError:
        return False
    for offset, size, align, what in areas:
        try:
            for name, ntype, _ in _notes(image, offset, size, align, what):
                if name == XEN_NOTE_NAME and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                    return True
        except BootError:
            pass
    return False


def load_pvh(image, mem, cmdline=b'', initrd=None, rsdp=0, platform=PC):
    """Load an ELF kernel (a Linux vmlinux) by Xen's PVH ABI: segments by
    physical address, hvm_start_info in the boot area with the command line, the
    initrd as module 0 and the memory map; enter 'prot32' at the PHYS32 entry
    with EBX = the start info. ``rsdp`` is the ACPI RSDP address, or 0."""
    image = _as_bytes(image, 'PVH kernel')
    elf = _parse_elf(image, 'PVH kernel')
    entry = _pvh_entry(image, elf)
    plan = _Plan(mem, platform)
    lo, hi = _plan_segments(plan, elf, image, 'vmlinux')
    if not any(s.type == PT_LOAD and s.paddr <= entry < s.paddr + s.filesz for s in elf.segments):
        raise BootError(f'PVH entry point {_hex(entry)} is not in the loaded code of any PT_LOAD '
                        'segment')
    area = plan.boot_area()
    cmd_addr = _Strings(plan).add(cmdline, 'the command line')
    initrd = _as_bytes(initrd or b'', 'initrd')
    nmods = 0
    if initrd:
        kernel_end = _align_up(hi, PAGE)
        addr = _place_initrd(plan, initrd, kernel_end, platform.low_ram_max,
                             f'in low RAM above the kernel (which ends at {_hex(kernel_end)})')
        plan.put(area.modlist, struct.pack(HVM_MODLIST_FMT, addr, len(initrd), 0, 0),
                 'the module list', own=True)
        nmods = 1
    memmap = e820_map(plan.ram, platform)   # PVH memory types 1 and 2 equal e820's
    table = b''.join(struct.pack(HVM_MEMMAP_FMT, a, n, t, 0) for a, n, t in memmap)
    if len(table) > BOOT_MEMMAP_SIZE:
        raise BootError(f'guest RAM has too many regions for the memory map ({len(plan.ram)})')
    plan.put(area.memmap, table, 'the memory map', own=True)
    info = struct.pack(HVM_START_INFO_FMT, HVM_START_MAGIC, HVM_START_VERSION, 0, nmods,
                       area.modlist if nmods else 0, cmd_addr, rsdp, area.memmap, len(memmap), 0)
    plan.put(area.info, info, 'the hvm_start_info', own=True)
    plan.commit()
    return Boot('prot32', entry, regs={'rbx': area.info}, stack=area.stack,
                describe=f'PVH ELF{elf.bits} at {_span(lo, hi - lo)}, entry {_hex(entry)}'
                         + (f', initrd {_size(len(initrd))}' if initrd else '')
                         + plan.describe_moved())
