"""tools/boot.py and tools/platform_tables.py: loaders against images built here.

The images are made with struct.pack in this file (ELF32/ELF64, multiboot in
both forms, a bzImage setup header, a PVH-noted ELF); when an assembler and
linker are present, real ones too. A bytearray-backed FakeMem stands in for
guest memory and fails the test on any write outside its RAM.
"""

import os
import random
import shutil
import struct
import subprocess
import tempfile
import unittest

from tools import boot, platform_tables as pt
from tools.boot import BootError, MiB, GiB

PAGE = 4096


class FakeMem:
    """Guest memory over sparse 4 KiB pages; ``ram`` like the core's slots.
    A write must stay inside one region (as the core's Vm.write requires)."""

    def __init__(self, size=64 * MiB, ram=None):
        low = min(size, 3 * GiB)
        self.ram = ram or [(0, low)] + ([(4 * GiB, size - low)] if size > low else [])
        self.pages = {}
        self.writes = []

    def _region_check(self, gpa, n):
        if not any(s <= gpa and gpa + n <= s + size for s, size in self.ram):
            raise AssertionError(f'write of {n} bytes at {gpa:#x} is outside one RAM region')

    def write(self, gpa, data):
        data = bytes(data)
        self._region_check(gpa, len(data))
        self.writes.append((gpa, len(data)))
        pos = 0
        while pos < len(data):
            page, off = divmod(gpa + pos, PAGE)
            n = min(PAGE - off, len(data) - pos)
            chunk = data[pos:pos + n]
            if page in self.pages:
                self.pages[page][off:off + n] = chunk
            elif chunk.count(0) != n:            # absent pages read as zero
                self.pages[page] = bytearray(PAGE)
                self.pages[page][off:off + n] = chunk
            pos += n

    def read(self, gpa, size):
        out = bytearray()
        while len(out) < size:
            page, off = divmod(gpa + len(out), PAGE)
            n = min(PAGE - off, size - len(out))
            out += self.pages.get(page, bytes(PAGE))[off:off + n]
        return bytes(out)

    def u(self, fmt, gpa):
        return struct.unpack(fmt, self.read(gpa, struct.calcsize(fmt)))

    def cstr(self, gpa):
        data = self.read(gpa, 4096)
        return data[:data.index(b'\0')]


# --- image builders ----------------------------------------------------------

def xen_note(entry, size=4, name=b'Xen', ntype=18):
    desc = entry.to_bytes(size, 'little')
    return (struct.pack('<III', len(name) + 1, size, ntype) + name + b'\0'
            + bytes(-(len(name) + 1) % 4) + desc + bytes(-size % 4))


def make_elf(bits, segments, entry, notes=b'', notes_in_section=False, machine=None,
             e_type=2):
    """segments: [(paddr, data, memsz[, vaddr])]. Notes go in a PT_NOTE
    segment, or only in an SHT_NOTE section when ``notes_in_section``."""
    ehsize, phentsize, shentsize = (52, 32, 40) if bits == 32 else (64, 56, 64)
    machine = machine if machine is not None else (3 if bits == 32 else 62)
    nph = len(segments) + (1 if notes and not notes_in_section else 0)
    offset = ehsize + nph * phentsize
    body, phdrs = bytearray(), []
    for seg in segments:
        paddr, data, memsz = seg[:3]
        vaddr = seg[3] if len(seg) > 3 else paddr
        offset = (offset + 15) // 16 * 16
        phdrs.append((1, offset, vaddr, paddr, len(data), memsz, 7, 16))
        body += bytes(offset - ehsize - nph * phentsize - len(body)) + data
        offset += len(data)
    note_off = offset
    body += notes
    if notes and not notes_in_section:
        phdrs.append((4, note_off, 0, 0, len(notes), len(notes), 4, 4))
    shoff, shnum = 0, 0
    if notes_in_section:
        shoff, shnum = ehsize + nph * phentsize + len(body), 2
        fmt = '<IIIIIIIIII' if bits == 32 else '<IIQQQQIIQQ'
        body += bytes(shentsize) + struct.pack(fmt, 0, 7, 0, 0, note_off, len(notes), 0, 0, 4, 0)
    ident = b'\x7fELF' + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    if bits == 32:
        ehdr = struct.pack('<16sHHIIIIIHHHHHH', ident, e_type, machine, 1, entry, ehsize, shoff,
                           0, ehsize, phentsize, nph, shentsize, shnum, 0)
        ph = b''.join(struct.pack('<IIIIIIII', *p) for p in phdrs)
    else:
        ehdr = struct.pack('<16sHHIQQQIHHHHHH', ident, e_type, machine, 1, entry, ehsize, shoff,
                           0, ehsize, phentsize, nph, shentsize, shnum, 0)
        ph = b''.join(struct.pack('<IIQQQQQQ', t, f, o, v, p, fs, ms, a)
                      for t, o, v, p, fs, ms, f, a in phdrs)
    return ehdr + ph + bytes(body)


def mb_header(flags, extra=b''):
    return struct.pack('<III', 0x1BADB002, flags, -(0x1BADB002 + flags) & 0xFFFFFFFF) + extra


def make_multiboot_aout(text=b'\xf4' * 64, load=0x100000, bss=0x2000, header_at=0):
    """A flat kernel whose multiboot header (at file offset ``header_at``)
    gives its load addresses; the whole file is loaded at ``load``."""
    flags = 0x10003
    end = load + header_at + 32 + len(text)
    header = mb_header(flags, struct.pack('<5I', load + header_at, load, end, end + bss,
                                          load + header_at + 32))
    return bytes(header_at) + header + text


def make_multiboot_elf(code=b'\xf4' * 32, paddr=0x100000):
    return make_elf(32, [(paddr, mb_header(0x3) + code, 0x3000)], paddr + 0xC)


def make_bzimage(kernel=b'\xf4' * 0x3000, version=0x020F, setup_sects=4, pref=0x1000000,
                 init_size=0x200000, relocatable=1, alignment=0x200000, xloadflags=0x3,
                 loadflags=0x01, initrd_max=0x7FFFFFFF, cmdline_size=0x7FF):
    setup = bytearray((setup_sects or 4) * 512 + 512)
    setup[0x1F1] = setup_sects
    struct.pack_into('<I', setup, 0x1F4, (len(kernel) + 15) // 16)        # syssize
    struct.pack_into('<H', setup, 0x1FE, 0xAA55)                          # boot_flag
    setup[0x200:0x202] = bytes([0xEB, 0x6A])                              # jump: header to 0x26C
    setup[0x202:0x206] = b'HdrS'
    struct.pack_into('<H', setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into('<I', setup, 0x214, 0x100000)                        # code32_start
    struct.pack_into('<I', setup, 0x22C, initrd_max)
    struct.pack_into('<IBBHI', setup, 0x230, alignment, relocatable, 21, xloadflags, cmdline_size)
    struct.pack_into('<QI', setup, 0x258, pref, init_size)
    return bytes(setup) + kernel


def make_pvh(entry=0x1000100, note_size=4, in_section=False, bits=64):
    code = b'\xf4' * 0x400
    return make_elf(bits, [(0x1000000, code, 0x4000, 0xFFFFFFFF81000000 if bits == 64 else 0xC1000000)],
                    0xFFFFFFFF81000000 if bits == 64 else 0xC1000000,
                    notes=xen_note(entry, note_size), notes_in_section=in_section)


# --- flat and ELF -------------------------------------------------------------

class FlatTest(unittest.TestCase):
    def test_flat_binary_lands_at_cs_times_16_plus_ip_in_real_mode(self):
        mem = FakeMem()
        b = boot.load_flat(b'\xb0\x41\xf4', mem, cs=0x2000, ip=0x100)
        self.assertEqual(mem.read(0x20100, 3), b'\xb0\x41\xf4')
        self.assertEqual((b.mode, b.cs, b.entry, b.stack), ('real', 0x2000, 0x100, None))

    def test_flat_default_entry_is_1000_colon_0(self):
        mem = FakeMem()
        b = boot.load_flat(b'\xf4', mem)
        self.assertEqual(mem.read(0x10000, 1), b'\xf4')
        self.assertEqual((b.cs, b.entry), (0x1000, 0))

    def test_flat_binary_reaching_the_ebda_is_refused_and_nothing_is_written(self):
        mem = FakeMem()
        with self.assertRaisesRegex(BootError, r'at 0x10000-0x9FFFF overlaps the extended BIOS '
                                    r'data area \(EBDA\) at 0x9FC00-0x9FFFF, a fixed area: link it '
                                    r'in free RAM \(0x500-0x9FBFF, or 0x100000 and up\)'):
            boot.load_flat(bytes(0x90000), mem)
        self.assertEqual(mem.writes, [])

    def test_flat_rejects_selectors_beyond_16_bits_and_empty_images(self):
        with self.assertRaisesRegex(BootError, '16-bit'):
            boot.load_flat(b'\xf4', FakeMem(), cs=0x10000)
        with self.assertRaisesRegex(BootError, 'empty'):
            boot.load_flat(b'', FakeMem())


class ElfTest(unittest.TestCase):
    def test_elf32_segments_load_by_physical_address_with_bss_zeroed(self):
        mem = FakeMem()
        mem.write(0x200000, b'\xAA' * 0x3000)                 # stale bytes where bss goes
        mem.writes.clear()
        image = make_elf(32, [(0x100000, b'CODE', 4, 0xC0100000),
                              (0x200000, b'DATA', 0x3000)], 0xC0100002)
        b = boot.load_elf(image, mem)
        self.assertEqual(mem.read(0x100000, 4), b'CODE')
        self.assertEqual(mem.read(0x200000, 8), b'DATA\0\0\0\0')
        self.assertEqual(mem.read(0x200000 + 0x2FFF, 1), b'\0')
        self.assertEqual((b.mode, b.entry, b.stack), ('prot32', 0x100002, boot.BOOT_STACK))

    def test_elf64_enters_long_mode_at_the_physical_entry(self):
        image = make_elf(64, [(0x400000, b'\x90' * 16, 16, 0xFFFFFFFF80400000)],
                         0xFFFFFFFF80400008)
        b = boot.load_elf(image, FakeMem())
        self.assertEqual((b.mode, b.entry), ('long64', 0x400008))

    def test_not_an_elf_message_names_the_magic(self):
        with self.assertRaises(BootError) as cm:
            boot.load_elf(b'MZ\x90\x00' + bytes(60), FakeMem())
        self.assertEqual(str(cm.exception),
                         "not an ELF file: bad magic b'MZ\\x90\\x00' (expected b'\\x7fELF')")

    def test_a_bzimage_given_as_elf_gets_a_hint(self):
        with self.assertRaisesRegex(BootError, 'looks like a bzImage'):
            boot.load_elf(make_bzimage(), FakeMem())

    def test_segment_in_the_reserved_bios_area_is_refused_and_memory_untouched(self):
        mem = FakeMem()
        image = make_elf(32, [(0x100000, b'ok', 2), (0xF0000, b'bad', 3)], 0x100000)
        with self.assertRaisesRegex(BootError, r'segment 1 at 0xF0000-0xF0002 overlaps the BIOS '
                                    r'area \(MP and ACPI tables\) at 0xF0000-0xFFFFF'):
            boot.load_elf(image, mem)
        self.assertEqual(mem.writes, [])

    def test_boot_structures_move_out_of_a_low_linked_image(self):
        # an ELF64 over the default boot area and page tables: they move to
        # the lowest free pages, and the image gets the addresses it asked for
        mem = FakeMem()
        image = make_elf(64, [(0x7000, b'\x90' * 0x8000, 0x8000)], 0x7000)
        b = boot.load_elf(image, mem)
        self.assertEqual(mem.read(0x7000, 0x8000), b'\x90' * 0x8000)
        self.assertEqual((b.mode, b.entry, b.stack, b.page_tables),
                         ('long64', 0x7000, 0x1000 + 0x1FF0, 0xF000))
        self.assertIn('the boot information and stack moved to 0x1000', b.describe)
        self.assertIn("kvmlite's boot page tables moved to 0xF000", b.describe)
        b = boot.load_elf(make_elf(64, [(0x100000, b'\x90', 1)], 0x100000), FakeMem())
        self.assertEqual((b.stack, b.page_tables), (boot.BOOT_STACK, boot.CORE_PAGE_TABLES_START))
        b = boot.load_elf(make_elf(32, [(0x9000, b'x', 1)], 0x9000), FakeMem())
        self.assertEqual(b.page_tables, None)         # prot32: no page tables to place

    def test_multiboot_info_moves_out_of_an_image_at_0x8000(self):
        mem = FakeMem()
        image = make_multiboot_elf(paddr=0x8000)
        b = boot.load_multiboot(image, mem, cmdline=b'low', modules=[(b'M' * 10, b'mod')])
        info = b.regs['rbx']
        self.assertEqual(info, 0x1000)
        self.assertEqual(b.stack, info + 0x1FF0)
        flags, = mem.u('<I', info)
        mods_count, mods_addr = mem.u('<II', info + 20)
        mmap_len, mmap_addr = mem.u('<II', info + 44)
        name_addr, = mem.u('<I', info + 64)
        self.assertEqual((mods_count, mods_addr, mmap_addr), (1, info + 0x1400, info + 0x1000))
        self.assertEqual(mem.read(name_addr, 8), b'kvmlite\0')
        cmd, = mem.u('<I', info + 16)
        self.assertEqual(mem.read(cmd, 12), b'kvmlite low\0')
        start, end = mem.u('<II', mods_addr)
        self.assertEqual(mem.read(start, end - start), b'M' * 10)
        self.assertTrue(all(not (lo < 0x8000 + 0x1000 and 0x8000 < hi) for lo, hi in
                            ((info, info + 0x2000), (cmd, cmd + 12), (start, end))))

    def test_an_image_on_the_ivt_or_the_boot_gdt_is_refused_naming_it(self):
        with self.assertRaisesRegex(BootError, r'at 0x400-0x400 overlaps the real-mode interrupt '
                                    r'vector table and BIOS data area \(IVT/BDA\) at 0x0-0x4FF'):
            boot.load_elf(make_elf(32, [(0x400, b'x', 1)], 0x400), FakeMem())
        with self.assertRaisesRegex(BootError, r"overlaps kvmlite's boot GDT and IDT at 0x500-0x5FF"):
            boot.load_elf(make_elf(32, [(0x580, b'x', 1)], 0x580), FakeMem())
        b = boot.load_flat(b'\xf4', FakeMem(), cs=0, ip=0x580)   # real mode: no GDT written
        self.assertEqual(b.cs * 16 + b.entry, 0x580)

    def test_no_room_for_the_boot_structures_says_so(self):
        mem = FakeMem(ram=[(0, 0x9F000)])
        image = make_elf(32, [(0x1000, b'x', 0x9E000 - 0x1000)], 0x1000)
        with self.assertRaisesRegex(BootError, r'no free guest RAM below 0x100000000 for the boot '
                                    r'information and stack \(8 KiB\) beside the image: give more --mem'):
            boot.load_elf(image, mem)
        self.assertEqual(mem.writes, [])

    def test_huge_size_fields_fail_fast_without_allocating(self):
        image = bytearray(make_elf(64, [(0x100000, b'x' * 8, 8)], 0x100000))
        phdr = 64
        huge = bytearray(image)
        struct.pack_into('<QQ', huge, phdr + 32, 4 * GiB, 4 * GiB)   # p_filesz, p_memsz
        with self.assertRaisesRegex(BootError, 'truncated'):
            boot.load_elf(bytes(huge), FakeMem())
        huge = bytearray(image)
        struct.pack_into('<Q', huge, phdr + 40, 1 << 62)          # p_memsz
        with self.assertRaisesRegex(BootError, 'outside guest RAM'):
            boot.load_elf(bytes(huge), FakeMem())

    def test_segment_beyond_ram_says_to_give_more_memory(self):
        image = make_elf(32, [(0x5000000, b'x', 1)], 0x5000000)
        with self.assertRaisesRegex(BootError, r'outside guest RAM \(0x0-0x3FFFFFF\): give more --mem'):
            boot.load_elf(image, FakeMem(64 * MiB))

    def test_foreign_and_non_executable_elfs_are_refused(self):
        cases = [
            (make_elf(64, [(0x100000, b'x', 1)], 0x100000, machine=183), 'machine 183'),
            (make_elf(32, [(0x100000, b'x', 1)], 0x100000, e_type=3), 'not ET_EXEC'),
            (b'\x7fELF\x01\x02\x01' + bytes(60), 'not little-endian'),
            (b'\x7fELF\x03\x01\x01' + bytes(60), 'unknown ELF class 3'),
            (make_elf(32, [], 0x100000), 'no PT_LOAD'),
            (make_elf(32, [(0x100000, b'x', 1)], 0x300000), 'entry point 0x300000 is not inside'),
        ]
        for image, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(BootError, message):
                boot.load_elf(image, FakeMem())

    def test_filesz_larger_than_memsz_is_refused(self):
        image = make_elf(32, [(0x100000, b'abcd', 2)], 0x100000)
        with self.assertRaisesRegex(BootError, 'p_filesz 0x4 exceeds p_memsz 0x2'):
            boot.load_elf(image, FakeMem())


# --- multiboot ----------------------------------------------------------------

class MultibootTest(unittest.TestCase):
    def test_aout_kludge_loads_text_zeroes_bss_and_sets_eax_ebx(self):
        mem = FakeMem()
        mem.write(0x100000 + 96, b'\xAA' * 16)                 # stale bytes in the bss
        image = make_multiboot_aout()
        b = boot.load_multiboot(image, mem)
        self.assertEqual(mem.read(0x100000, len(image)), image)
        self.assertEqual(mem.read(0x100000 + 96, 16), bytes(16))
        self.assertEqual((b.mode, b.entry), ('prot32', 0x100000 + 32))
        self.assertEqual(b.regs, {'rax': 0x2BADB002, 'rbx': boot.BOOT_INFO})

    def test_header_may_sit_anywhere_aligned_in_the_first_8k(self):
        image = make_multiboot_aout(header_at=0x1000)
        b = boot.load_multiboot(image, FakeMem())
        self.assertEqual(b.entry, 0x100000 + 0x1000 + 32)

    def test_info_struct_has_memory_cmdline_mmap_and_loader_name(self):
        mem = FakeMem(128 * MiB)
        boot.load_multiboot(make_multiboot_elf(), mem, cmdline=b'console=ttyS0', name=b'kern')
        info = boot.BOOT_INFO
        flags, lower, upper, _, cmdline = mem.u('<5I', info)
        self.assertEqual(flags, 1 | 4 | 64 | 512)              # mem, cmdline, mmap, loader name
        self.assertEqual((lower, upper), (639, 127 * 1024))
        self.assertEqual(mem.cstr(cmdline), b'kern console=ttyS0')
        mmap_length, mmap_addr = mem.u('<II', info + 44)
        entries = [mem.u('<IQQI', mmap_addr + off) for off in range(0, mmap_length, 24)]
        self.assertEqual([e[1:] for e in entries], boot.e820_map(mem.ram))
        self.assertTrue(all(e[0] == 20 for e in entries))
        self.assertEqual(mem.cstr(mem.u('<I', info + 64)[0]), b'kvmlite')

    def test_elf_kernel_loads_its_segments(self):
        mem = FakeMem()
        b = boot.load_multiboot(make_multiboot_elf(b'\xfa\xf4'), mem)
        self.assertEqual(mem.read(0x10000C, 2), b'\xfa\xf4')
        self.assertEqual(b.entry, 0x10000C)
        self.assertIn('ELF32', b.describe)

    def test_modules_are_page_aligned_after_the_kernel_with_their_strings(self):
        mem = FakeMem()
        mods = [(b'A' * 5000, b'first.mod arg=1'), (b'B' * 3, b'second')]
        boot.load_multiboot(make_multiboot_elf(), mem, modules=mods)
        flags, count, addr = mem.u('<I', boot.BOOT_INFO)[0], *mem.u('<II', boot.BOOT_INFO + 20)
        self.assertTrue(flags & 8)
        self.assertEqual(count, 2)
        (s0, e0, str0, _), (s1, e1, str1, _) = mem.u('<4I', addr), mem.u('<4I', addr + 16)
        self.assertEqual((s0, e0), (0x103000, 0x103000 + 5000))  # kernel ends at 0x103000
        self.assertEqual((s1, e1), (0x105000, 0x105003))
        self.assertEqual(mem.read(s0, 5000), b'A' * 5000)
        self.assertEqual(mem.read(s1, 3), b'BBB')
        self.assertEqual((mem.cstr(str0), mem.cstr(str1)), (b'first.mod arg=1', b'second'))

    def test_missing_or_damaged_headers_are_refused_with_reasons(self):
        good = make_multiboot_aout()
        bad_sum = bytearray(good)
        bad_sum[8] ^= 1
        cases = [
            (b'\0' * 9000 + good, 'no multiboot header'),
            (bytes(bad_sum), 'bad checksum'),
            (mb_header(0x4 | 0x10000, bytes(40)), 'video mode'),
            (mb_header(0x8 | 0x10000, bytes(40)), r'flag bits 0x8'),
            (mb_header(0x3), 'not an ELF file'),
        ]
        for image, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(BootError, message):
                boot.load_multiboot(image, FakeMem())

    def test_aout_fields_that_disagree_are_refused(self):
        def image(header_addr, load, load_end, bss_end, entry):
            return mb_header(0x10000, struct.pack('<5I', header_addr, load, load_end, bss_end,
                                                  entry)) + bytes(64)
        cases = [
            (image(0x100000, 0x100010, 0, 0, 0x100020), 'load_addr 0x100010 is above'),
            (image(0x100040, 0x100000, 0, 0, 0x100040), 'before the start of the file'),
            (image(0x100000, 0x100000, 0x200000, 0, 0x100000), 'truncated'),
            (image(0x100000, 0x100000, 0, 0x100001, 0x100000), 'bss_end_addr'),
            (image(0x100000, 0x100000, 0, 0, 0x900000), 'entry_addr 0x900000 is outside'),
        ]
        for img, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(BootError, message):
                boot.load_multiboot(img, FakeMem())


# --- bzImage ------------------------------------------------------------------

class BzImageTest(unittest.TestCase):
    def test_kernel_at_pref_address_entry_at_startup_64_with_rsi_zero_page(self):
        mem = FakeMem()
        image = make_bzimage()
        b = boot.load_bzimage(image, mem)
        self.assertEqual(mem.read(0x1000000, 0x3000), image[5 * 512:])
        self.assertEqual((b.mode, b.entry, b.regs), ('long64', 0x1000200, {'rsi': 0x7000}))

    def test_zero_page_carries_the_header_and_the_loader_fields(self):
        mem = FakeMem(256 * MiB)
        image = make_bzimage()
        boot.load_bzimage(image, mem, cmdline=b'console=ttyS0 panic=-1', rsdp=0xF8000)
        zp = mem.read(0x7000, 4096)
        self.assertEqual(zp[0x1F1:0x1FA], image[0x1F1:0x1FA])   # the header, copied
        self.assertEqual(zp[0x1FC:0x210], image[0x1FC:0x210])
        self.assertEqual(zp[0x211:0x218], image[0x211:0x218])
        self.assertEqual(zp[0x210], 0xFF)                        # type_of_loader: undefined
        self.assertEqual(struct.unpack_from('<H', zp, 0x1FA)[0], 0xFFFF)
        cmd_ptr = struct.unpack_from('<I', zp, 0x228)[0]
        self.assertEqual(cmd_ptr, boot.CMDLINE)
        self.assertEqual(mem.cstr(cmd_ptr), b'console=ttyS0 panic=-1')
        self.assertEqual(struct.unpack_from('<Q', zp, 0x70)[0], 0xF8000)
        self.assertEqual(zp[0x26C:0x290], bytes(0x24))            # nothing past the header
        n = zp[0x1E8]
        table = [struct.unpack_from('<QQI', zp, 0x2D0 + 20 * i) for i in range(n)]
        self.assertEqual(table, [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                                 (0x100000, 255 * MiB, 1)])

    def test_initrd_goes_to_the_top_of_ram_below_initrd_addr_max(self):
        mem = FakeMem(256 * MiB)
        boot.load_bzimage(make_bzimage(), mem, initrd=b'R' * 10000)
        addr, size = mem.u('<II', 0x7000 + 0x218)
        self.assertEqual((addr, size), ((256 * MiB - 10000) // PAGE * PAGE, 10000))
        self.assertEqual(mem.read(addr, 10000), b'R' * 10000)
        mem = FakeMem(2 * GiB)
        boot.load_bzimage(make_bzimage(initrd_max=0x37FFFFFF), mem, initrd=b'R' * 10000)
        addr, _ = mem.u('<II', 0x7000 + 0x218)
        self.assertEqual(addr, (0x38000000 - 10000) // PAGE * PAGE)

    def test_initrd_too_big_says_how_much_and_what_to_do(self):
        with self.assertRaises(BootError) as cm:
            boot.load_bzimage(make_bzimage(initrd_max=0x37FFFFFF), FakeMem(256 * MiB),
                              initrd=bytes(300 * MiB))
        self.assertEqual(str(cm.exception), 'initrd of 300 MiB does not fit below initrd_addr_max '
                                            '0x37FFFFFF with 256 MiB of RAM: give more --mem')

    def test_initrd_never_overlaps_the_kernel_decompression_space(self):
        with self.assertRaisesRegex(BootError, 'initrd of 16 MiB does not fit'):
            boot.load_bzimage(make_bzimage(init_size=40 * MiB), FakeMem(64 * MiB),
                              initrd=bytes(16 * MiB))

    def test_setup_sects_0_means_4(self):
        kernel = bytes(range(251)) * 64                  # no repeat at a 512-byte stride
        mem = FakeMem()
        boot.load_bzimage(make_bzimage(kernel=kernel, setup_sects=0), mem)
        self.assertEqual(mem.read(0x1000000, len(kernel)), kernel)

    def test_old_protocol_message(self):
        with self.assertRaises(BootError) as cm:
            boot.load_bzimage(make_bzimage(version=0x0202), FakeMem())
        self.assertEqual(str(cm.exception), 'bzImage setup header: boot protocol 2.02 is too old; '
                                            'kvmlite needs 2.06 or newer')

    def test_protocol_2_06_kernel_loads_at_1_mib_with_entry_plus_0x200(self):
        image = make_bzimage(version=0x0206, relocatable=0)
        b = boot.load_bzimage(image, FakeMem())
        self.assertEqual(b.entry, 0x100200)

    def test_relocatable_kernel_is_raised_to_kernel_alignment(self):
        b = boot.load_bzimage(make_bzimage(pref=0x100000, alignment=0x400000), FakeMem())
        self.assertEqual(b.entry, 0x400200)
        b = boot.load_bzimage(make_bzimage(pref=0x100000, relocatable=0), FakeMem())
        self.assertEqual(b.entry, 0x100200)

    def test_header_problems_are_refused_with_reasons(self):
        cases = [
            (make_bzimage(xloadflags=0), 'XLF_KERNEL_64'),
            (make_bzimage(loadflags=0), 'zImage'),
            (make_bzimage(alignment=0x300000), 'not a power of two'),
            (make_bzimage(init_size=64 * MiB), 'outside guest RAM'),
            (make_bzimage(pref=0xF0000, relocatable=0), r'overlaps the BIOS area \(MP and ACPI tables\) at 0xF0000-0xFFFFF'),
            (make_bzimage()[:0x800], 'truncated'),
            (make_bzimage()[:0x1800], 'syssize'),
            (b'\0' * 0x1000, 'no "HdrS"'),
            (b'HdrS', 'too short'),
        ]
        for image, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(BootError, message):
                boot.load_bzimage(image, FakeMem())

    def test_command_line_longer_than_cmdline_size_is_refused(self):
        with self.assertRaisesRegex(BootError, 'cmdline_size'):
            boot.load_bzimage(make_bzimage(cmdline_size=8), FakeMem(), cmdline=b'x' * 9)
        with self.assertRaisesRegex(BootError, 'NUL'):
            boot.load_bzimage(make_bzimage(), FakeMem(), cmdline=b'a\0b')


# --- PVH ----------------------------------------------------------------------

class PvhTest(unittest.TestCase):
    def test_entry_from_the_note_and_start_info_fields(self):
        mem = FakeMem(128 * MiB)
        b = boot.load_pvh(make_pvh(), mem, cmdline=b'console=ttyS0', initrd=b'I' * 5000,
                          rsdp=0xF8000)
        self.assertEqual((b.mode, b.entry, b.regs), ('prot32', 0x1000100, {'rbx': 0x7000}))
        (magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries,
         reserved) = mem.u(boot.HVM_START_INFO_FMT, 0x7000)
        self.assertEqual((magic, version, flags, reserved), (0x336EC578, 1, 0, 0))
        self.assertEqual(mem.cstr(cmdline), b'console=ttyS0')
        self.assertEqual(rsdp, 0xF8000)
        self.assertEqual(nr_modules, 1)
        paddr, size, mod_cmdline, _ = mem.u('<QQQQ', modlist)
        self.assertEqual((size, mod_cmdline), (5000, 0))
        self.assertEqual(paddr, (128 * MiB - 5000) // PAGE * PAGE)
        self.assertEqual(mem.read(paddr, 5000), b'I' * 5000)
        table = [mem.u('<QQII', memmap + 24 * i) for i in range(entries)]
        self.assertEqual([t[:3] for t in table], boot.e820_map(mem.ram))
        self.assertEqual(mem.read(0x1000000, 4), b'\xf4' * 4)
        self.assertEqual(mem.read(0x1000400, 16), bytes(16))      # bss zeroed

    def test_no_initrd_means_no_modules(self):
        mem = FakeMem()
        boot.load_pvh(make_pvh(), mem)
        self.assertEqual(mem.u('<IQ', 0x7000 + 12), (0, 0))

    def test_note_found_in_a_section_and_with_an_8_byte_value(self):
        self.assertEqual(boot.load_pvh(make_pvh(in_section=True), FakeMem()).entry, 0x1000100)
        self.assertEqual(boot.load_pvh(make_pvh(note_size=8), FakeMem()).entry, 0x1000100)
        self.assertEqual(boot.load_pvh(make_pvh(bits=32), FakeMem()).entry, 0x1000100)

    def test_vmlinux_without_the_pvh_note_says_to_boot_the_bzimage(self):
        image = make_elf(64, [(0x1000000, b'x', 1)], 0x1000000, notes=xen_note(5, ntype=6))
        with self.assertRaisesRegex(BootError, 'built without CONFIG_PVH; boot the bzImage instead'):
            boot.load_pvh(image, FakeMem())

    def test_bad_notes_are_refused(self):
        cases = [
            (make_pvh(entry=1 << 40, note_size=8), 'above 4 GiB'),
            (make_elf(64, [(0x1000000, b'x', 1)], 0x1000000,
                      notes=xen_note(5, size=4)[:12] + b'Xen\0' + b'\1\2'), 'runs past'),
        ]
        for image, message in cases:
            with self.subTest(message=message), self.assertRaisesRegex(BootError, message):
                boot.load_pvh(image, FakeMem())


# --- e820 and memory checks ---------------------------------------------------

class MemoryMapTest(unittest.TestCase):
    def test_low_ram_is_split_around_the_legacy_hole(self):
        self.assertEqual(boot.e820_map([(0, 64 * MiB)]),
                         [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
                          (0x100000, 63 * MiB, 1)])

    def test_ram_above_4g_and_adjacent_slots(self):
        ram = [(4 * GiB, GiB), (0, MiB), (MiB, 3 * GiB - MiB)]
        self.assertEqual(boot.e820_map(ram)[-2:],
                         [(0x100000, 3 * GiB - MiB, 1), (4 * GiB, GiB, 1)])

    def test_writes_spanning_two_adjacent_slots_are_split(self):
        mem = FakeMem(ram=[(0, 0x180000), (0x180000, 0x3E80000)])
        image = make_elf(32, [(0x17F000, b'Z' * 0x2000, 0x2000)], 0x17F000)
        boot.load_elf(image, mem)
        self.assertEqual(mem.read(0x17F000, 0x2000), b'Z' * 0x2000)

    def test_command_line_area_overflow_is_refused(self):
        with self.assertRaisesRegex(BootError, 'command-line area'):
            boot.load_pvh(make_pvh(), FakeMem(), cmdline=b'x' * 0x10000)


# --- platform tables ----------------------------------------------------------

def sdt(mem, addr):
    length = mem.u('<I', addr + 4)[0]
    return mem.read(addr, length)


class MpTableTest(unittest.TestCase):
    def setUp(self):
        self.mem = FakeMem()
        self.tables = pt.write_platform_tables(self.mem, 4, acpi=False)

    def test_floating_pointer_checksums_and_points_at_the_config_table(self):
        fp = self.mem.read(self.tables.mp, 16)
        self.assertEqual(fp[:4], b'_MP_')
        self.assertEqual((fp[8], fp[9], sum(fp) & 0xFF), (1, 4, 0))
        config = struct.unpack_from('<I', fp, 4)[0]
        length = self.mem.u('<H', config + 4)[0]
        table = self.mem.read(config, length)
        self.assertEqual((table[:4], table[6], sum(table) & 0xFF), (b'PCMP', 4, 0))
        self.assertEqual(struct.unpack_from('<I', table, 36)[0], 0xFEE00000)

    def entries(self):
        config = self.mem.u('<I', self.tables.mp + 4)[0]
        count = self.mem.u('<H', config + 34)[0]
        pos, out = config + 44, []
        for _ in range(count):
            kind = self.mem.read(pos, 1)[0]
            size = 20 if kind == 0 else 8
            out.append(self.mem.read(pos, size))
            pos += size
        return out

    def test_processors_bus_ioapic_and_interrupt_entries(self):
        entries = self.entries()
        cpus = [e for e in entries if e[0] == 0]
        self.assertEqual([(e[1], e[3]) for e in cpus], [(0, 3), (1, 1), (2, 1), (3, 1)])
        self.assertIn(b'\x01\x00ISA   ', entries)
        ioapic = [e for e in entries if e[0] == 2]
        self.assertEqual(ioapic, [struct.pack('<BBBBI', 2, 4, 0x11, 1, 0xFEC00000)])
        routes = {e[5]: (e[1], e[6], e[7]) for e in entries if e[0] == 3}
        self.assertEqual(routes[0], (0, 4, 2))                  # IRQ0 -> IOAPIC pin 2
        self.assertEqual(sorted(routes), [i for i in range(16) if i != 2])
        self.assertTrue(all(routes[i] == (0, 4, i) for i in routes if i))
        lints = [(e[1], e[6], e[7]) for e in entries if e[0] == 4]
        self.assertEqual(lints, [(3, 0xFF, 0), (1, 0xFF, 1)])    # LINT0 ExtINT, LINT1 NMI

    def test_cpu_count_and_ioapic_id_limits(self):
        with self.assertRaisesRegex(BootError, '1 to 254'):
            pt.mp_tables(255, 255)
        with self.assertRaisesRegex(BootError, 'collides'):
            pt.mp_tables(4, 3)


class AcpiTableTest(unittest.TestCase):
    def setUp(self):
        self.mem = FakeMem()
        self.mem.write(0xF8000 + 0x1000, b'stale')
        self.tables = pt.write_platform_tables(self.mem, 2)

    def test_rsdp_checksums_and_both_root_tables_list_fadt_and_madt(self):
        rsdp = self.mem.read(self.tables.rsdp, 36)
        self.assertEqual(rsdp[:8], b'RSD PTR ')
        self.assertEqual((sum(rsdp[:20]) & 0xFF, sum(rsdp) & 0xFF, rsdp[15]), (0, 0, 2))
        rsdt_addr, length, xsdt_addr = struct.unpack_from('<IIQ', rsdp, 16)
        self.assertEqual(length, 36)
        rsdt, xsdt = sdt(self.mem, rsdt_addr), sdt(self.mem, xsdt_addr)
        self.assertEqual((sum(rsdt) & 0xFF, sum(xsdt) & 0xFF), (0, 0))
        self.assertEqual(list(struct.unpack_from('<2I', rsdt, 36)),
                         list(struct.unpack_from('<2Q', xsdt, 36)))
        signatures = [sdt(self.mem, a)[:4] for a in struct.unpack_from('<2Q', xsdt, 36)]
        self.assertEqual(signatures, [b'FACP', b'APIC'])

    def table(self, signature):
        xsdt = sdt(self.mem, self.mem.u('<Q', self.tables.rsdp + 24)[0])
        for addr in struct.unpack_from('<2Q', xsdt, 36):
            if sdt(self.mem, addr)[:4] == signature:
                return sdt(self.mem, addr)

    def test_fadt_points_at_dsdt_and_facs_with_hw_reduced_clear(self):
        fadt = self.table(b'FACP')
        self.assertEqual((len(fadt), fadt[8], sum(fadt) & 0xFF), (276, 6, 0))
        facs, dsdt = struct.unpack_from('<II', fadt, 36)
        self.assertEqual(struct.unpack_from('<QQ', fadt, 132), (facs, dsdt))
        flags = struct.unpack_from('<I', fadt, 112)[0]
        self.assertFalse(flags & (1 << 20))
        self.assertEqual(struct.unpack_from('<H', fadt, 46)[0], 9)               # SCI_INT
        self.assertEqual(struct.unpack_from('<7I', fadt, 56),                   # PM1a, PM timer
                         (0x600, 0, 0x604, 0, 0, 0x608, 0))                     # (tests/test_acpi_pm.py)
        self.assertEqual(sdt(self.mem, dsdt)[:4] + bytes([sum(sdt(self.mem, dsdt)) & 0xFF]),
                         b'DSDT\0')
        self.assertIn(b'_S5_', sdt(self.mem, dsdt))                             # the \_S5 package
        self.assertEqual((self.mem.read(facs, 4), facs % 64), (b'FACS', 0))

    def test_madt_lists_cpus_ioapic_overrides_and_nmi(self):
        madt = self.table(b'APIC')
        self.assertEqual(sum(madt) & 0xFF, 0)
        self.assertEqual(struct.unpack_from('<II', madt, 36), (0xFEE00000, 1))
        pos, found = 44, []
        while pos < len(madt):
            found.append(madt[pos:pos + madt[pos + 1]])
            pos += madt[pos + 1]
        self.assertEqual(found, [
            struct.pack('<BBBBI', 0, 8, 0, 0, 1), struct.pack('<BBBBI', 0, 8, 1, 1, 1),
            struct.pack('<BBBBII', 1, 12, 2, 0, 0xFEC00000, 0),
            struct.pack('<BBBBIH', 2, 10, 0, 0, 2, 0),
            struct.pack('<BBBBIH', 2, 10, 0, 9, 9, 0xD),       # level, active high
            struct.pack('<BBBHB', 4, 6, 0xFF, 0, 1),
        ])

    def test_the_bios_area_is_cleared_before_writing(self):
        self.assertEqual(self.mem.read(0xF9000, 5), bytes(5))
        self.assertEqual(self.tables, pt.PlatformTables(mp=0xF0000, rsdp=0xF8000))

    def test_tables_need_the_bios_area_in_ram(self):
        with self.assertRaisesRegex(BootError, 'not guest RAM'):
            pt.write_platform_tables(FakeMem(ram=[(0, 0xA0000)]), 1)

    @unittest.skipUnless(shutil.which('iasl'), 'no iasl (acpica-tools) on this host')
    def test_iasl_disassembles_every_table_with_good_checksums(self):
        decoded = {}
        with tempfile.TemporaryDirectory() as tmp:
            for _, data in pt.acpi_tables(2)[1:]:
                name = data[:4].decode()
                path = os.path.join(tmp, name + '.dat')
                with open(path, 'wb') as f:
                    f.write(data)
                r = subprocess.run(['iasl', '-d', path], capture_output=True, text=True, cwd=tmp)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertNotIn('Incorrect checksum', r.stdout + r.stderr)
                with open(path[:-4] + '.dsl') as f:
                    decoded[name] = ' '.join(f.read().split())
        self.assertEqual(sorted(decoded), ['APIC', 'DSDT', 'FACP', 'FACS', 'RSDT', 'XSDT'])
        self.assertIn('Hardware Reduced (V5) : 0', decoded['FACP'])
        self.assertIn('SCI Interrupt : 0009', decoded['FACP'])
        self.assertEqual(decoded['APIC'].count('[Processor Local APIC]'), 2)
        self.assertEqual(decoded['APIC'].count('[Interrupt Source Override]'), 2)
        self.assertIn('Interrupt Input LINT : 01', decoded['APIC'])


# --- hostile images -----------------------------------------------------------

VALID_IMAGES = {
    'elf32': (boot.load_elf, lambda: make_elf(32, [(0x100000, b'\xf4' * 64, 0x200)], 0x100000)),
    'elf64': (boot.load_elf, lambda: make_elf(64, [(0x100000, b'\xf4' * 64, 0x200)], 0x100000)),
    'multiboot-aout': (boot.load_multiboot, make_multiboot_aout),
    'multiboot-elf': (boot.load_multiboot, make_multiboot_elf),
    'bzimage': (boot.load_bzimage, lambda: make_bzimage(kernel=b'\xf4' * 0x400, pref=0x100000,
                                                         init_size=0x10000)),
    'pvh': (boot.load_pvh, make_pvh),
    'pvh-section': (boot.load_pvh, lambda: make_pvh(in_section=True)),
}
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x100000, 0x9FC00, 0xF0000, 0x3FFFF000)


def mutate(rng, image):
    data = bytearray(image)
    choice = rng.randrange(4)
    if choice == 0:                                   # truncate
        return bytes(data[:rng.randrange(len(data))])
    for _ in range(rng.randrange(1, 4)):
        hot = min(len(data), 0x300)                   # headers live near the start
        pos = rng.randrange(hot if rng.random() < 0.8 else len(data))
        if choice == 1:
            data[pos] ^= 1 << rng.randrange(8)
        elif choice == 2:
            data[pos] = rng.randrange(256)
        else:
            pos -= pos % 4
            struct.pack_into('<I', data, min(pos, len(data) - 4), rng.choice(INTERESTING))
    return bytes(data)


class HostileImageTest(unittest.TestCase):
    def check_load(self, loader, image, label):
        mem = FakeMem(32 * MiB)
        extra = {boot.load_bzimage: {'initrd': b'I' * 100}, boot.load_pvh: {'initrd': b'I' * 100},
                 boot.load_multiboot: {'modules': [(b'M' * 5000, b'mod')]}}.get(loader, {})
        try:
            b = loader(image, mem, **extra)
        except BootError as e:
            self.assertTrue(str(e), label)
            self.assertEqual(mem.writes, [], f'{label}: refused but wrote {mem.writes[:3]}')
            return False
        except Exception as e:                          # noqa: BLE001 - the point of the test
            self.fail(f'{label}: {type(e).__name__}: {e}')
        self.assertIn(b.mode, ('real', 'prot32', 'long64'), label)
        self.assertTrue(any(s <= b.entry < s + n for s, n in mem.ram), label)
        return True

    def test_the_valid_images_load(self):
        for name, (loader, make) in VALID_IMAGES.items():
            with self.subTest(name=name):
                self.assertTrue(self.check_load(loader, make(), name))

    def test_every_mutation_gives_a_boot_or_a_boot_error_and_writes_only_ram(self):
        rng = random.Random(20261125)
        for name, (loader, make) in VALID_IMAGES.items():
            image, outcomes = make(), set()
            for i in range(1000):
                outcomes.add(self.check_load(loader, mutate(rng, image), f'{name} mutation {i}'))
            self.assertEqual(outcomes, {True, False}, name)   # the mutator hits both ways

    def test_every_truncation_is_refused_cleanly(self):
        for name, (loader, make) in VALID_IMAGES.items():
            image = make()
            for size in range(0, len(image), 7):
                self.check_load(loader, image[:size], f'{name} cut to {size}')


# --- images from a real toolchain (skipped without as/ld) ----------------------

TOOLS = all(shutil.which(t) for t in ('as', 'ld', 'readelf'))

MULTIBOOT_ASM = """
    .section .multiboot, "a"
    .align 4
    .long 0x1BADB002, 0x00000003, -(0x1BADB002 + 0x00000003)
    .text
    .globl _start
_start:
    cli
    hlt
    .bss
    .skip 8192
"""

PVH_ASM = """
    .pushsection .note.Xen, "a", @note
    .align 4
    .long 4, 8, 18
    .asciz "Xen"
    .align 4
    .quad pvh_entry - 0xffffffff80000000
    .popsection
    .text
    .code32
pvh_entry:
    hlt
"""


@unittest.skipUnless(TOOLS, 'no as/ld/readelf on this host')
class ToolchainImageTest(unittest.TestCase):
    def build(self, source, as_flags, ld_flags):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        src, obj, out = (os.path.join(tmp, n) for n in ('k.s', 'k.o', 'k.elf'))
        with open(src, 'w') as f:
            f.write(source)
        subprocess.run(['as', *as_flags, src, '-o', obj], check=True, capture_output=True)
        subprocess.run(['ld', *ld_flags, obj, '-o', out], check=True, capture_output=True)
        header = subprocess.run(['readelf', '-h', out], check=True, capture_output=True,
                                text=True).stdout
        entry = int(header.split('Entry point address:')[1].split()[0], 16)
        with open(out, 'rb') as f:
            return f.read(), entry

    def test_ld_built_multiboot_kernel_loads_and_enters_at_readelf_entry(self):
        image, entry = self.build(MULTIBOOT_ASM, ['--32'],
                                  ['-m', 'elf_i386', '-n', '-Ttext', '0x100100', '--section-start',
                                   '.multiboot=0x100000', '-e', '_start'])
        mem = FakeMem()
        b = boot.load_multiboot(image, mem, cmdline=b'hello')
        self.assertEqual(b.entry, entry)
        self.assertEqual(mem.read(entry, 2), b'\xfa\xf4')
        self.assertEqual(boot.load_elf(image, FakeMem()).mode, 'prot32')

    def test_headers_that_ld_maps_below_1_mib_are_refused_with_the_fix(self):
        image, _ = self.build(MULTIBOOT_ASM, ['--32'], ['-m', 'elf_i386', '-Ttext', '0x100000',
                                                        '-e', '_start'])
        elf = boot._parse_elf(image)
        low = [s for s in elf.segments if s.type == boot.PT_LOAD and s.paddr < 0x100000]
        if not low:
            self.skipTest('this ld keeps the ELF headers out of the loaded segments')
        with self.assertRaisesRegex(BootError, r'maps the ELF headers .* "ld -n"'):
            boot.load_elf(image, FakeMem())

    def test_ld_built_higher_half_pvh_kernel_enters_at_the_note(self):
        script = ('SECTIONS { . = 0xffffffff81000000; '
                  '.text : AT(0x1000000) { *(.text) } '
                  '.notes : AT(0x1001000) { *(.note.Xen) } }')
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        lds = os.path.join(tmp, 'k.lds')
        with open(lds, 'w') as f:
            f.write(script)
        image, _ = self.build(PVH_ASM, ['--64'], ['-m', 'elf_x86_64', '-T', lds,
                                                  '-e', 'pvh_entry'])
        mem = FakeMem()
        b = boot.load_pvh(image, mem)
        # the note holds pvh_entry - __START_KERNEL_map, as Linux's does
        self.assertEqual((b.mode, b.entry), ('prot32', 0x1000000))
        self.assertEqual(mem.read(b.entry, 1), b'\xf4')


# --- the project's Linux kernel, when one has been built ------------------------

LINUX_DIR = os.environ.get('KVMLITE_LINUX_KERNEL_DIR', '')


@unittest.skipUnless(LINUX_DIR and os.path.isdir(LINUX_DIR), 'set KVMLITE_LINUX_KERNEL_DIR to the '
                     'output of shared/linux/build.sh to check real kernels')
class RealLinuxTest(unittest.TestCase):
    def image(self, name):
        path = os.path.join(LINUX_DIR, name)
        if not os.path.exists(path):
            self.skipTest(f'{path} not built')
        with open(path, 'rb') as f:
            return f.read()

    def test_bzimage_loads_with_its_own_header_values(self):
        image = self.image('bzImage-b')
        mem = FakeMem(256 * MiB)
        b = boot.load_bzimage(image, mem, cmdline=b'console=ttyS0', initrd=b'\0' * 4096)
        pref = struct.unpack_from('<Q', image, 0x258)[0]
        self.assertEqual((b.mode, b.entry), ('long64', pref + 0x200))
        setup = ((image[0x1F1] or 4) + 1) * 512
        self.assertEqual(mem.read(pref, 4096), image[setup:setup + 4096])

    def test_vmlinux_loads_by_pvh_note(self):
        image = self.image('vmlinux-b')
        mem = FakeMem(256 * MiB)
        b = boot.load_pvh(image, mem, cmdline=b'console=ttyS0')
        self.assertEqual(b.mode, 'prot32')
        self.assertTrue(0x1000000 <= b.entry < 0x4000000, hex(b.entry))
        if shutil.which('readelf'):                      # the note as binutils reads it
            notes = subprocess.run(['readelf', '-n', os.path.join(LINUX_DIR, 'vmlinux-b')],
                                   capture_output=True, text=True, check=True).stdout
            xen = notes.split('(0x00000012)')[1].split('description data:')[1].split('\n')[0]
            self.assertEqual(b.entry, int.from_bytes(bytes.fromhex(xen), 'little'))


if __name__ == '__main__':
    unittest.main()
