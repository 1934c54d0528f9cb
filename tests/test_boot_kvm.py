"""Boot tiny kernels of every format under real KVM (issue #4).

Each guest is written here with tools.asm and wrapped in its container with
struct: a flat real-mode binary, an ELF32 (entered in 32-bit protected mode),
an ELF64 (entered in long mode), Multiboot v1 kernels with the a.out kludge
and with an ELF body, a fake bzImage (a setup header with "HdrS", protocol
2.15, XLF_KERNEL_64, and 64-bit code at +0x200 of the protected-mode part)
and a PVH ELF (the XEN_ELFNOTE_PHYS32_ENTRY note). The guests read what the
protocol hands them -- EAX=0x2BADB002 and the multiboot info, boot_params
through RSI, hvm_start_info through EBX -- print it on COM1 and end with a
write to the debug-exit port 0xF4. Every image boots through
kvmlite.load_kernel + Machine.run and through ``python3 kvmlite.py run``;
damaged images of each format must make the command line say what is wrong
in one line and exit with status 2.

Specifications: Multiboot 0.6.96 (boot information format), Linux
Documentation/arch/x86/boot.rst and zero-page.rst (setup header, 64-bit boot
protocol, boot_params offsets), Xen docs/misc/pvh.pandoc and
public/arch-x86/hvm/start_info.h (hvm_start_info, hvm_modlist_entry).

The guests run at CPL0, which this host emulates at about 1M instructions/s:
each prints a few hundred bytes with a few thousand instructions.
"""

import os
import re
import struct
import subprocess
import sys
import tempfile
import unittest

import kvmlite
from devices.console import MemoryBackend
from tests.guest import requires_kvm
from tools.asm import assemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM = 64 << 20                  # guest RAM of every test machine
MEM_UPPER = (MEM - (1 << 20)) >> 10   # multiboot mem_upper: KiB above 1 MiB
TIMEOUT = 30                    # seconds: a guest here needs well under one
COM1 = 0x3F8
DEBUG_EXIT = 0xF4

# e820 of 64 MiB as the loaders describe it (tools/boot.py's layout table)
E820_64M = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2),
            (0x100000, MEM - 0x100000, 1)]
MULTIBOOT_INFO_FLAGS = 0x24D    # memory, cmdline, mods, mmap, boot_loader_name
HVM_START_MAGIC = 0x336EC578
INITRD = b'INITRD-PAYLOAD-42'   # the initrd / module every guest prints back

# --- guest code ----------------------------------------------------------------

# Print helpers, appended to a guest. puts: NUL-terminated string at [e/r]si;
# putn: ecx bytes at [e/r]si; hex: the low ecx hex digits of [e/r]ax.
# They clobber eax, ecx, edx and esi only.
_HELPERS = '''
puts:
    mov dx, 0x3f8
.next:
    lodsb
    test al, al
    jz .done
    out dx, al
    jmp .next
.done:
    ret
putn:
    mov dx, 0x3f8
.next:
    test ecx, ecx
    jz .done
    lodsb
    out dx, al
    dec ecx
    jmp .next
.done:
    ret
hex:
    push rcx
    shl ecx, 2
    ror rax, cl                 ; the wanted digits to the top
    pop rcx
    mov dx, 0x3f8
.next:
    rol rax, 4
    push rax
    and al, 15
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    out dx, al
    pop rax
    dec ecx
    jnz .next
    ret
'''


def helpers(bits):
    text = _HELPERS
    if bits == 32:
        text = text.replace('rcx', 'ecx').replace('rax', 'eax')
    return text


class Guest:
    """Builds guest text: say('...') prints a literal, hex(reg_or_mem, n)
    prints n hex digits; the strings gather at the end."""

    def __init__(self, bits):
        self.bits, self.lines, self.strings = bits, [], []

    def __call__(self, text):
        self.lines.append(text)

    def say(self, text):
        label = f'str{len(self.strings)}'
        self.strings.append((label, text))
        self(f'    mov esi, {label}\n    call puts')

    def hex(self, source, digits):
        reg = 'eax' if digits <= 8 else 'rax'
        self(f'    mov {reg}, {source}\n    mov ecx, {digits}\n    call hex')

    def exit(self, value):
        self(f'    mov al, {value}\n    out {DEBUG_EXIT}, al\n    cli\n    hlt')

    def text(self):
        data = [f'{label}: db {", ".join(str(b) for b in s.encode())}, 0'
                for label, s in self.strings]
        return '\n'.join([f'bits {self.bits}'] + self.lines + [helpers(self.bits)] + data) + '\n'


def flat_code():
    """Real mode at 1000:0000: prints CR0.PE and CS."""
    return assemble('''
        bits 16
            mov si, msg
            mov dx, 0x3f8
        next:
            lodsb
            test al, al
            jz shown
            out dx, al
            jmp next
        shown:
            mov eax, cr0
            and al, 1
            add al, '0'
            out dx, al
            mov si, cs_msg
        next2:
            lodsb
            test al, al
            jz shown2
            out dx, al
            jmp next2
        shown2:
            mov bx, cs
            mov cx, 4
        digit:
            rol bx, 4
            mov al, bl
            and al, 15
            add al, '0'
            cmp al, '9'
            jbe put
            add al, 7
        put:
            out dx, al
            dec cx
            jnz digit
            mov al, 10
            out dx, al
            mov al, 0x11
            out 0xf4, al
            cli
            hlt
        msg: db 'flat: real mode, CR0.PE=', 0
        cs_msg: db ', CS=', 0
    ''', bits=16, origin=0)


FLAT_OUTPUT = b'flat: real mode, CR0.PE=0, CS=1000\n'
FLAT_STATUS = 0x11 << 1 | 1


def elf32_code(origin):
    """32-bit protected mode: prints CR0.PE, CR0.PG and ESP at entry."""
    g = Guest(32)
    g('    mov ebp, esp')
    g.say('elf32: protected mode, CR0=')
    g('    mov ebx, cr0')
    g.hex('ebx', 8)
    g.say(', ESP=')
    g.hex('ebp', 8)
    g.say('\n')
    g.exit(0x12)
    return assemble(g.text(), bits=32, origin=origin)


def elf64_code(origin):
    """Long mode: prints EFER and RSP at entry."""
    g = Guest(64)
    g('    mov rbp, rsp')
    g('    mov ecx, 0xc0000080\n    rdmsr')     # IA32_EFER
    g('    mov ebx, eax')
    g.say('elf64: long mode, EFER=')
    g.hex('ebx', 4)
    g.say(', RSP=')
    g.hex('rbp', 16)
    g.say('\n')
    g.exit(0x13)
    return assemble(g.text(), bits=64, origin=origin)


def multiboot_code(origin):
    """Checks EAX, then prints the multiboot info: flags, mem_upper, the
    command line, and module 0's string and bytes."""
    g = Guest(32)
    g('    cmp eax, 0x2badb002\n    jne bad_magic\n    mov ebp, ebx')
    g.say('multiboot: flags=')
    g.hex('[ebp]', 8)                       # flags
    g.say(' mem_upper=')
    g.hex('[ebp + 8]', 8)                   # mem_upper, KiB
    g.say('\ncmdline=')
    g('    mov esi, [ebp + 16]\n    call puts')
    g.say('\nmods=')
    g.hex('[ebp + 20]', 2)                  # mods_count
    g('    cmp dword [ebp + 20], 0\n    je no_mods\n    mov edi, [ebp + 24]')
    g.say(' string=')
    g('    mov esi, [edi + 8]\n    call puts')
    g.say(' bytes=')
    g('    mov esi, [edi]\n    mov ecx, [edi + 4]\n    sub ecx, esi\n    call putn')
    g('no_mods:')
    g.say('\n')
    g.exit(0x21)
    g('bad_magic:')
    g.say('multiboot: EAX is not 0x2BADB002\n')
    g.exit(0x3F)
    return assemble(g.text(), bits=32, origin=origin)


def multiboot_output(cmdline, module):
    line = f'multiboot: flags={MULTIBOOT_INFO_FLAGS:08X} mem_upper={MEM_UPPER:08X}\n' \
        f'cmdline=kvmlite {cmdline}\nmods=01 string=initrd bytes='
    return line.encode() + module + b'\n'


def bzimage_code(origin):
    """64-bit entry: prints boot_params' cmd_line_ptr string, the e820
    table, the initrd (address, size, bytes) and the 8 bytes at the RSDP."""
    g = Guest(64)
    g('    mov rbp, rsi')
    g.say('bzimage: boot_params=')
    g.hex('ebp', 8)
    g.say(' loader=')
    g.hex('[rbp + 0x210]', 2)               # type_of_loader
    g.say('\ncmdline=')
    g('    mov esi, [rbp + 0x228]\n    call puts')   # cmd_line_ptr
    g.say('\ne820=')
    g.hex('[rbp + 0x1e8]', 2)               # e820_entries
    g('    movzx ebx, byte [rbp + 0x1e8]\n    lea rdi, [rbp + 0x2d0]')
    g('e820_next:\n    test ebx, ebx\n    jz e820_done')
    g.say(' ')
    g.hex('[rdi]', 8)
    g.say('+')
    g.hex('[rdi + 8]', 8)
    g.say(':')
    g.hex('[rdi + 16]', 1)
    g('    add rdi, 20\n    dec ebx\n    jmp e820_next\ne820_done:')
    g.say('\ninitrd=')
    g.hex('[rbp + 0x218]', 8)               # ramdisk_image
    g.say(' size=')
    g.hex('[rbp + 0x21c]', 8)               # ramdisk_size
    g.say(' bytes=')
    g('    mov esi, [rbp + 0x218]\n    mov ecx, [rbp + 0x21c]\n    call putn')
    g.say('\nrsdp=')
    g('    mov rsi, [rbp + 0x70]\n    test rsi, rsi\n    jz no_rsdp')   # acpi_rsdp_addr
    g('    mov ecx, 8\n    call putn\nno_rsdp:')
    g.say('\n')
    g.exit(0x31)
    return assemble(g.text(), bits=64, origin=origin)


def pvh_code(origin):
    """32-bit PVH entry: prints hvm_start_info's magic, version, command
    line, module 0 and the 8 bytes at the RSDP."""
    g = Guest(32)
    g('    mov ebp, ebx')
    g.say('pvh: magic=')
    g.hex('[ebp]', 8)
    g.say(' version=')
    g.hex('[ebp + 4]', 1)
    g.say('\ncmdline=')
    g('    mov esi, [ebp + 24]\n    call puts')    # cmdline_paddr
    g.say('\nmodules=')
    g.hex('[ebp + 12]', 1)                  # nr_modules
    g('    cmp dword [ebp + 12], 0\n    je no_mods\n    mov edi, [ebp + 16]')  # modlist_paddr
    g.say(' size=')
    g.hex('[edi + 8]', 8)
    g.say(' bytes=')
    g('    mov esi, [edi]\n    mov ecx, [edi + 8]\n    call putn')
    g('no_mods:')
    g.say('\nmemmap entries=')
    g.hex('[ebp + 48]', 1)                  # memmap_entries
    g.say(' rsdp=')
    g('    mov esi, [ebp + 32]\n    test esi, esi\n    jz no_rsdp')   # rsdp_paddr
    g('    mov ecx, 8\n    call putn\nno_rsdp:')
    g.say('\n')
    g.exit(0x41)
    return assemble(g.text(), bits=32, origin=origin)


# --- containers ------------------------------------------------------------------

def make_elf(bits, segments, entry, notes=b''):
    """An ET_EXEC ELF: segments are (paddr, vaddr, data, memsz); notes go in
    a PT_NOTE segment."""
    ehsize, phentsize = (52, 32) if bits == 32 else (64, 56)
    nph = len(segments) + (1 if notes else 0)
    offset = ehsize + nph * phentsize
    body, phdrs = bytearray(), []
    for paddr, vaddr, data, memsz in segments:
        pad = -(offset + len(body)) % 16
        body += bytes(pad)
        phdrs.append((1, offset + len(body), vaddr, paddr, len(data), memsz, 7, 16))
        body += data
    if notes:
        phdrs.append((4, offset + len(body), 0, 0, len(notes), len(notes), 4, 4))
        body += notes
    ident = b'\x7fELF' + bytes([1 if bits == 32 else 2, 1, 1]) + bytes(9)
    if bits == 32:
        head = struct.pack('<16sHHIIIIIHHHHHH', ident, 2, 3, 1, entry, ehsize, 0, 0, ehsize,
                           phentsize, nph, 40, 0, 0)
        ph = b''.join(struct.pack('<IIIIIIII', *p) for p in phdrs)
    else:
        head = struct.pack('<16sHHIQQQIHHHHHH', ident, 2, 62, 1, entry, ehsize, 0, 0, ehsize,
                           phentsize, nph, 64, 0, 0)
        ph = b''.join(struct.pack('<IIQQQQQQ', t, fl, o, v, p, fs, ms, a)
                      for t, o, v, p, fs, ms, fl, a in phdrs)
    return head + ph + bytes(body)


def multiboot_header(flags):
    return struct.pack('<III', 0x1BADB002, flags, -(0x1BADB002 + flags) & 0xFFFFFFFF)


def make_multiboot_aout(load=0x100000):
    """Header (flags: page align, memory info, a.out kludge) at offset 0,
    the whole file loaded at ``load``, entry right after the header."""
    code = multiboot_code(load + 32)
    end = load + 32 + len(code)
    addresses = struct.pack('<5I', load, load, end, end + 0x1000, load + 32)
    return multiboot_header(0x10003) + addresses + code


def make_multiboot_elf(load=0x100000):
    """An ELF32 whose first segment starts with a header without the kludge."""
    code = multiboot_code(load + 12)
    return make_elf(32, [(load, load, multiboot_header(0x3) + code, 0x2000)], load + 12)


def make_bzimage(load=0x1000000, version=0x020F, xloadflags=0x3, setup_sects=4,
                 loadflags=0x01, truncate=0):
    """A setup area of ``setup_sects`` + 1 sectors with the setup header,
    then the protected-mode part: 0x200 bytes (the 32-bit entry, unused
    here) and the 64-bit code at +0x200, assembled for ``load``."""
    kernel = b'\xf4' * 0x200 + bzimage_code(load + 0x200)
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into('<I', setup, 0x1F4, (len(kernel) + 15) // 16)   # syssize
    struct.pack_into('<H', setup, 0x1FE, 0xAA55)                     # boot_flag
    setup[0x200:0x202] = bytes([0xEB, 0x6A])                         # jmp over the header
    setup[0x202:0x206] = b'HdrS'
    struct.pack_into('<H', setup, 0x206, version)
    setup[0x211] = loadflags                                         # LOADED_HIGH
    struct.pack_into('<I', setup, 0x214, 0x100000)                   # code32_start
    struct.pack_into('<I', setup, 0x22C, 0x7FFFFFFF)                 # initrd_addr_max
    struct.pack_into('<IBBHI', setup, 0x230, 0x200000, 1, 21, xloadflags, 0x7FF)
    struct.pack_into('<QI', setup, 0x258, load, 0x100000)            # pref_address, init_size
    image = bytes(setup) + kernel
    return image[:len(image) - truncate]


def xen_note(entry, size=4):
    value = (entry & ((1 << 8 * size) - 1)).to_bytes(size, 'little')
    return struct.pack('<III', 4, size, 18) + b'Xen\0' + value + bytes(-size % 4)


def make_pvh(paddr=0x1000000, note_size=4, entry_offset=0):
    """A vmlinux-like ELF64: linked high, loaded at ``paddr``, the 32-bit
    entry (at the start of the code) in a Xen PHYS32_ENTRY note."""
    vaddr = 0xFFFFFFFF81000000
    code = pvh_code(paddr)
    return make_elf(64, [(paddr, vaddr, code, 0x4000)], vaddr,
                    notes=xen_note(paddr + entry_offset, note_size))


def linux_cmdline(cmdline):
    """What a Linux-protocol kernel gets: where the CPUID policy hides
    features, clearcpuid and the glibc word for init's environment, before
    any ``--`` (the words after it are init's arguments)."""
    if not kvmlite.cpuid_restricted('auto'):
        return cmdline
    kernel, sep, init = cmdline.partition(' -- ')
    added = f'{kvmlite.LINUX_CLEARCPUID.decode()} {kvmlite.LINUX_USER_ENV.decode()}'
    return f'{kernel} {added}{sep}{init}'


# --- running ---------------------------------------------------------------------

def boot(image, fmt='auto', cmdline=b'', initrd=None, irqchip='split'):
    """load_kernel + Machine.run: (RunResult, COM1 bytes, Boot, zero page)."""
    console = MemoryBackend()
    with kvmlite.Machine(mem_size=MEM, irqchip=irqchip, console=console) as m:
        b = kvmlite.load_kernel(m, image, fmt, cmdline=cmdline, initrd=initrd)
        info = m.vm.read(0x7000, 0x1000)
        result = m.run(timeout=TIMEOUT)
    return result, bytes(console.output), b, info


class BootCase(unittest.TestCase):
    def assert_ran(self, result, output, status, expected=None):
        message = f'run ended with {result!r}; COM1 said {bytes(output)!r}'
        self.assertEqual(result.status, status, message)
        if expected is not None:
            self.assertEqual(bytes(output), expected, message)

    def cli(self, image, *args, initrd=None):
        """Run ``python3 kvmlite.py run -k FILE ...`` with the console in a
        file; returns (CompletedProcess, COM1 bytes)."""
        with tempfile.TemporaryDirectory() as d:
            kernel = os.path.join(d, 'kernel')
            console = os.path.join(d, 'console')
            with open(kernel, 'wb') as f:
                f.write(image)
            argv = [sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '-k', kernel,
                    '-m', str(MEM >> 20), '--console', console, '--timeout', str(TIMEOUT)]
            if initrd is not None:
                path = os.path.join(d, 'initrd')
                with open(path, 'wb') as f:
                    f.write(initrd)
                argv += ['-i', path]
            p = subprocess.run(argv + list(args), capture_output=True, text=True, cwd=d,
                               stdin=subprocess.DEVNULL, timeout=TIMEOUT + 30)
            output = b''
            if os.path.exists(console):
                with open(console, 'rb') as f:
                    output = f.read()
        return p, output

    def assert_cli_ran(self, p, output, status, expected):
        message = f'exit status {p.returncode}, stderr {p.stderr!r}, COM1 {output!r}'
        self.assertEqual(p.returncode, status, message)
        self.assertEqual(output, expected, message)
        self.assertEqual(p.stdout, '', 'with --console FILE nothing goes to stdout')
        self.assertNotIn('Traceback', p.stderr)


# --- the formats -------------------------------------------------------------------

@requires_kvm
class FlatBootTest(BootCase):
    def test_flat_binary_runs_in_real_mode_at_1000_0000(self):
        result, output, b, _ = boot(flat_code())
        self.assertEqual(b.mode, 'real')
        self.assert_ran(result, output, FLAT_STATUS, FLAT_OUTPUT)

    def test_flat_binary_through_the_cli(self):
        p, output = self.cli(flat_code())
        self.assert_cli_ran(p, output, FLAT_STATUS, FLAT_OUTPUT)
        self.assertEqual(p.stderr, 'kvmlite: the guest wrote 0x11 to the debug-exit port: '
                                   'exit status 35\n')


@requires_kvm
class ElfBootTest(BootCase):
    def elf32(self):
        return make_elf(32, [(0x100000, 0x100000, elf32_code(0x100000), 0x1000)], 0x100000)

    def elf64(self):
        # linked high like a kernel: entered at the physical address
        return make_elf(64, [(0x400000, 0xFFFFFFFF80400000, elf64_code(0x400000), 0x1000)],
                        0xFFFFFFFF80400000)

    def test_elf32_enters_protected_mode_without_paging_on_the_boot_stack(self):
        result, output, b, _ = boot(self.elf32())
        self.assertEqual(b.mode, 'prot32')
        self.assert_ran(result, output, 0x12 << 1 | 1)
        cr0 = int(re.search(rb'CR0=([0-9A-F]{8})', output).group(1), 16)
        self.assertEqual(cr0 & 0x80000001, 1, f'CR0 {cr0:#x}: PE set, PG clear')
        self.assertEqual(output, f'elf32: protected mode, CR0={cr0:08X}, ESP=00008FF0\n'.encode())

    def test_elf64_linked_high_enters_long_mode_at_its_physical_entry(self):
        result, output, b, _ = boot(self.elf64())
        self.assertEqual((b.mode, b.entry), ('long64', 0x400000))
        self.assert_ran(result, output, 0x13 << 1 | 1)
        efer = int(re.search(rb'EFER=([0-9A-F]{4})', output).group(1), 16)
        self.assertEqual(efer & 0x500, 0x500, f'EFER {efer:#x}: LME and LMA set')
        self.assertEqual(output, f'elf64: long mode, EFER={efer:04X}, '
                         f'RSP=0000000000008FF0\n'.encode())

    def test_elf64_linked_over_the_default_page_tables_runs_in_long_mode(self):
        # 0x8000-0xEFFF: over the boot area and the page tables' default place
        image = make_elf(64, [(0x8000, 0x8000, elf64_code(0x8000), 0x7000)], 0x8000)
        result, output, b, _ = boot(image)
        self.assertEqual((b.mode, b.entry, b.page_tables, b.stack), ('long64', 0x8000, 0xF000,
                                                                     0x2FF0))
        self.assert_ran(result, output, 0x13 << 1 | 1)
        self.assertRegex(output, rb'^elf64: long mode, EFER=[0-9A-F]{4}, RSP=0000000000002FF0\n$')

    def test_elf64_boots_in_every_irqchip_mode(self):
        for mode in kvmlite.IRQCHIP_MODES:
            with self.subTest(irqchip=mode):
                result, output, _, _ = boot(self.elf64(), irqchip=mode)
                self.assert_ran(result, output, 0x13 << 1 | 1)
                self.assertTrue(output.startswith(b'elf64: long mode'), output)

    def test_elf32_and_elf64_through_the_cli(self):
        cases = ((self.elf32(), 0x12 << 1 | 1,
                  rb'elf32: protected mode, CR0=[0-9A-F]{8}, ESP=00008FF0\n'),
                 (self.elf64(), 0x13 << 1 | 1,
                  rb'elf64: long mode, EFER=[0-9A-F]{4}, RSP=0000000000008FF0\n'))
        for image, status, pattern in cases:
            with self.subTest(pattern=pattern):
                p, output = self.cli(image)
                self.assertEqual(p.returncode, status, f'{p.stderr!r} {output!r}')
                self.assertRegex(output, b'^' + pattern + b'$')
                self.assertEqual(p.stdout, '')
                self.assertNotIn('Traceback', p.stderr)


@requires_kvm
class MultibootBootTest(BootCase):
    def test_aout_kludge_kernel_reads_magic_memory_cmdline_and_module(self):
        result, output, b, _ = boot(make_multiboot_aout(), cmdline=b'hello=world',
                                    initrd=INITRD)
        self.assertIn('a.out kludge', b.describe)
        self.assert_ran(result, output, 0x21 << 1 | 1, multiboot_output('hello=world', INITRD))

    def test_elf_body_kernel_reads_magic_memory_cmdline_and_module(self):
        result, output, b, _ = boot(make_multiboot_elf(), cmdline=b'quiet x=1',
                                    initrd=INITRD)
        self.assertIn('ELF32', b.describe)
        self.assert_ran(result, output, 0x21 << 1 | 1, multiboot_output('quiet x=1', INITRD))

    def test_without_a_module_mods_count_is_zero(self):
        result, output, _, _ = boot(make_multiboot_aout(), cmdline=b'a')
        self.assert_ran(result, output, 0x21 << 1 | 1)
        self.assertIn(b'cmdline=kvmlite a\nmods=00\n', output)

    def test_elf_kernel_linked_at_0x8000_runs_with_its_boot_information_moved(self):
        # real-mode test kernels sit at 0x8000, over kvmlite's default boot
        # area (0x7000-0x8FFF): the multiboot info moves to free low RAM
        image = make_multiboot_elf(load=0x8000)
        result, output, b, _ = boot(image, cmdline=b'low', initrd=INITRD)
        self.assertIn('the boot information and stack moved to 0x1000', b.describe)
        self.assertEqual(b.regs['rbx'], 0x1000)
        self.assert_ran(result, output, 0x21 << 1 | 1, multiboot_output('low', INITRD))
        p, output = self.cli(image, '-p', 'console=ttyS0', initrd=INITRD)
        self.assert_cli_ran(p, output, 0x21 << 1 | 1, multiboot_output('console=ttyS0', INITRD))

    def test_both_forms_through_the_cli_with_an_initrd_as_module(self):
        for name, image in (('aout', make_multiboot_aout()), ('elf', make_multiboot_elf())):
            with self.subTest(form=name):
                p, output = self.cli(image, '-p', 'console=ttyS0', initrd=INITRD)
                self.assert_cli_ran(p, output, 0x21 << 1 | 1,
                                    multiboot_output('console=ttyS0', INITRD))


@requires_kvm
class BzImageBootTest(BootCase):
    def expected(self, cmdline, initrd_addr):
        e820 = ''.join(f' {a:08X}+{n:08X}:{t}' for a, n, t in E820_64M)
        return (f'bzimage: boot_params=00007000 loader=FF\n'
                f'cmdline={linux_cmdline(cmdline)}\n'
                f'e820={len(E820_64M):02X}{e820}\n'
                f'initrd={initrd_addr:08X} size={len(INITRD):08X} bytes=').encode() \
            + INITRD + b'\nrsdp=RSD PTR \n'

    def test_64bit_entry_reads_cmdline_e820_initrd_and_rsdp_from_boot_params(self):
        result, output, b, zero_page = boot(make_bzimage(), cmdline=b'console=ttyS0 quiet',
                                            initrd=INITRD)
        self.assertEqual((b.mode, b.entry), ('long64', 0x1000200))
        initrd_addr = struct.unpack_from('<I', zero_page, 0x218)[0]
        self.assertGreaterEqual(initrd_addr, 0x1100000, 'initrd above the kernel')
        self.assert_ran(result, output, 0x31 << 1 | 1,
                        self.expected('console=ttyS0 quiet', initrd_addr))

    def test_without_an_initrd_the_ramdisk_fields_are_zero(self):
        result, output, _, _ = boot(make_bzimage(), cmdline=b'x')
        self.assert_ran(result, output, 0x31 << 1 | 1)
        self.assertIn(b'\ninitrd=00000000 size=00000000 bytes=\n', output)

    def test_user_irqchip_writes_no_acpi_tables(self):
        result, output, _, _ = boot(make_bzimage(), irqchip='user')
        self.assert_ran(result, output, 0x31 << 1 | 1)
        self.assertTrue(output.endswith(b'\nrsdp=\n'), output)

    def test_bzimage_through_the_cli(self):
        p, output = self.cli(make_bzimage(), '-p', 'console=ttyS0', initrd=INITRD)
        addr = re.search(rb'initrd=([0-9A-F]{8})', output)
        self.assertIsNotNone(addr, f'{p.stderr!r} {output!r}')
        self.assert_cli_ran(p, output, 0x31 << 1 | 1,
                            self.expected('console=ttyS0', int(addr.group(1), 16)))


@requires_kvm
class PvhBootTest(BootCase):
    def expected(self, cmdline, modules=True, rsdp=b'RSD PTR '):
        module = f' size={len(INITRD):08X} bytes='.encode() + INITRD if modules else b''
        return (f'pvh: magic={HVM_START_MAGIC:08X} version=1\n'
                f'cmdline={linux_cmdline(cmdline)}\n'
                f'modules={int(modules)}').encode() + module \
            + f'\nmemmap entries={len(E820_64M)} rsdp='.encode() + rsdp + b'\n'

    def test_phys32_entry_reads_hvm_start_info_through_ebx(self):
        result, output, b, _ = boot(make_pvh(), cmdline=b'console=hvc0', initrd=INITRD)
        self.assertEqual((b.mode, b.entry), ('prot32', 0x1000000))
        self.assert_ran(result, output, 0x41 << 1 | 1, self.expected('console=hvc0'))

    def test_without_an_initrd_there_are_no_modules(self):
        result, output, _, _ = boot(make_pvh(), cmdline=b'a')
        self.assert_ran(result, output, 0x41 << 1 | 1, self.expected('a', modules=False))

    def test_what_kvmlite_adds_goes_before_the_arguments_for_init(self):
        # Linux gives init every word after "--": clearcpuid and the glibc
        # word there would reach neither the kernel nor init's environment
        result, output, _, _ = boot(make_pvh(), cmdline=b'console=ttyS0 -- single x=1')
        self.assert_ran(result, output, 0x41 << 1 | 1,
                        self.expected('console=ttyS0 -- single x=1', modules=False))
        self.assertIn(b' -- single x=1\n', output)

    def test_format_elf_ignores_the_note_and_enters_long_mode_at_e_entry(self):
        with kvmlite.Machine(mem_size=MEM) as m:
            b = kvmlite.load_kernel(m, make_pvh(), 'elf')
        self.assertEqual((b.mode, b.entry), ('long64', 0x1000000))

    def test_pvh_through_the_cli(self):
        p, output = self.cli(make_pvh(), '-p', 'console=ttyS0', initrd=INITRD)
        self.assert_cli_ran(p, output, 0x41 << 1 | 1, self.expected('console=ttyS0'))


class DetectFormatTest(unittest.TestCase):
    def test_each_tiny_kernel_is_detected_as_its_format(self):
        images = {'flat': flat_code(), 'elf': make_elf(32, [(0x100000, 0x100000, b'\xf4', 1)],
                                                       0x100000),
                  'multiboot': make_multiboot_elf(), 'bzimage': make_bzimage(), 'pvh': make_pvh()}
        for fmt, image in images.items():
            self.assertEqual(kvmlite.detect_format(image), fmt)
        self.assertEqual(kvmlite.detect_format(make_multiboot_aout()), 'multiboot')


# --- damaged images through the command line -----------------------------------------

def damaged_images():
    """(what, image, extra CLI arguments, pattern the message must match)."""
    elf32 = make_elf(32, [(0x100000, 0x100000, b'\xf4', 0x1000)], 0x100000)
    no_ph = bytearray(elf32)
    struct.pack_into('<H', no_ph, 44, 40)                   # e_phnum: headers past the end
    foreign = bytearray(elf32)
    struct.pack_into('<H', foreign, 18, 40)                 # e_machine: ARM
    bios = make_elf(32, [(0xF8000, 0xF8000, b'\xf4', 0x1000)], 0xF8000)
    outside = make_elf(32, [(0x100000, 0x100000, b'\xf4', 0x1000)], 0x300000)
    aout = make_multiboot_aout()
    bad_sum = bytearray(aout)
    bad_sum[8] ^= 1                                         # checksum
    bad_entry = bytearray(aout)
    struct.pack_into('<I', bad_entry, 28, 0x500000)         # entry_addr outside the text
    video = bytearray(aout)
    struct.pack_into('<II', video, 4, 0x10007, -(0x1BADB002 + 0x10007) & 0xFFFFFFFF)
    return [
        ('empty flat binary', b'', [], r'flat binary is empty'),
        ('flat binary over the BIOS area', bytes(0x90000), [], r'overlaps the extended BIOS data area \(EBDA\)'),
        ('flat binary with an initrd', b'\xf4', ['-i', '{initrd}'], r'initrd needs a kernel'),
        ('ELF with headers past the end', bytes(no_ph), [], r'truncated'),
        ('ELF for another machine', bytes(foreign), [], r'machine 40 \(expected EM_386'),
        ('ELF in the BIOS area', bios, [], r'BIOS'),
        ('ELF entry outside its segments', outside, [], r'entry point 0x300000'),
        ('multiboot with a bad checksum', bytes(bad_sum), ['--format', 'multiboot'],
         r'bad checksum'),
        ('multiboot entry outside the text', bytes(bad_entry), [], r'entry_addr 0x500000'),
        ('multiboot asking for video', bytes(video), [], r'video mode'),
        ('not multiboot at all', b'\xf4' * 64, ['--format', 'multiboot'],
         r'no multiboot header'),
        ('bzImage protocol 2.05', make_bzimage(version=0x0205), [], r'too old'),
        ('bzImage without a 64-bit entry', make_bzimage(xloadflags=0), [],
         r'XLF_KERNEL_64'),
        ('zImage', make_bzimage(loadflags=0), [], r'zImage'),
        ('bzImage cut short', make_bzimage(truncate=0x100), [], r'truncated'),
        ('PVH note with a 3-byte value', make_pvh(note_size=3), ['--format', 'pvh'],
         r'3-byte value'),
        ('PVH entry outside the code', make_pvh(entry_offset=0x3000), [],
         r'not in the loaded code'),
        ('ELF without the PVH note', elf32, ['--format', 'pvh'], r'no PVH entry'),
        ('bzImage given as ELF', make_bzimage(), ['--format', 'elf'], r'looks like a bzImage'),
    ]


@requires_kvm
class DamagedImageCliTest(BootCase):
    def test_each_damaged_image_gets_one_line_and_status_2(self):
        for what, image, args, pattern in damaged_images():
            with self.subTest(what):
                with tempfile.NamedTemporaryFile() as rd:
                    args = [a.replace('{initrd}', rd.name) for a in args]
                    p, output = self.cli(image, *args)
                self.assertEqual(p.returncode, 2, f'{p.stderr!r}')
                self.assertNotIn('Traceback', p.stderr)
                self.assertRegex(p.stderr, r'^kvmlite: [^\n]+\n$')
                self.assertRegex(p.stderr, pattern)
                self.assertEqual((p.stdout, output), ('', b''), 'nothing ran')

    def test_missing_kernel_file_is_named(self):
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '-k',
                            '/nonexistent/kernel', '--console', 'none'],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertRegex(p.stderr, r"^kvmlite: cannot read kernel '/nonexistent/kernel'[^\n]*\n$")


if __name__ == '__main__':
    unittest.main()
