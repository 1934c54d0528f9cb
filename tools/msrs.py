"""What a guest sees in the common MSRs, under kvmlite and under QEMU.

    python3 tools/msrs.py [--qemu-cpu MODEL] [--no-qemu] [--keep DIR]

One Multiboot (v1) image, written in tools.asm, runs in 32-bit protected
mode at CPL0 under both VMMs (kvmlite: ``python3 kvmlite.py run -k IMAGE``;
QEMU 7.2: ``-M microvm -accel kvm -cpu MODEL``, default ``qemu64``). For each
MSR of its table it executes ``rdmsr`` and, when that did not fault,
``wrmsr`` of the value it read (Intel SDM Vol. 2B, RDMSR/WRMSR: #GP(0) for a
reserved or unimplemented MSR, or a value that sets reserved bits), and
prints one line on COM1::

    msr 0000001b r 00000000fee00900 w ok
    msr c0000103 r GP

A #GP is caught by the guest's own handler (vector 13: it drops the frame
and jumps to where the access resumes; no ``iret``, which KVM's emulator
does not run in 32-bit mode on hosts that emulate kernel mode). The table is
KVM_GET_MSR_INDEX_LIST (the MSRs KVM saves and emulates, from the kernel's
Documentation/virt/kvm/api.rst) plus the architectural MSRs a kernel touches
at boot (SDM Vol. 4, chapter 2) and one that exists nowhere (0x4b564dff, in
KVM's paravirtual range: a #GP in every VMM, the check that the handler
works). Then :func:`diff` names the MSRs whose read or write faults in one
VMM and not in the other, and those whose values differ (the values of
counters, time and addresses of per-run structures differ from run to run and
are listed apart, as ``volatile``).

The differences have two sources: the CPUID each VMM gives (kvmlite gives
what KVM supports, less what KVM's emulator cannot run; QEMU the model's),
since KVM refuses MSRs whose CPUID feature is absent; and a VMM's MSR
filter. kvmlite's Machine sets no MSR filter (KVM_X86_SET_MSR_FILTER) and
does not enable KVM_CAP_X86_USER_SPACE_MSR, so every MSR behaves as KVM's
default for the CPUID it was given; docs/benchmarks.md has a run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.asm import assemble      # noqa: E402

#: Architectural MSRs a kernel reads or writes early (SDM Vol. 4, table 2-2,
#: and AMD's APM Vol. 2 for the 0xC000xxxx ones), beyond KVM's list.
COMMON_MSRS = (
    0x10,           # IA32_TIME_STAMP_COUNTER
    0x1B,           # IA32_APIC_BASE
    0x3A,           # IA32_FEATURE_CONTROL
    0x48,           # IA32_SPEC_CTRL
    0x8B,           # IA32_BIOS_SIGN_ID (microcode revision)
    0xFE,           # IA32_MTRRCAP
    0x174, 0x175, 0x176,    # IA32_SYSENTER_CS/ESP/EIP
    0x179,          # IA32_MCG_CAP
    0x17A,          # IA32_MCG_STATUS
    0x1A0,          # IA32_MISC_ENABLE
    0x200, 0x201,   # IA32_MTRR_PHYSBASE0/PHYSMASK0
    0x250,          # IA32_MTRR_FIX64K_00000
    0x277,          # IA32_PAT
    0x2FF,          # IA32_MTRR_DEF_TYPE
    0x6E0,          # IA32_TSC_DEADLINE
    0xDA0,          # IA32_XSS
    0xC0000080,     # EFER
    0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,   # STAR, LSTAR, CSTAR, SFMASK
    0xC0000100, 0xC0000101, 0xC0000102,   # FS_BASE, GS_BASE, KERNEL_GS_BASE
    0xC0000103,     # TSC_AUX
)
NOWHERE = 0x4B564DFF        # in KVM's PV range (0x4b564d00-...), never defined
#: Where QEMU's defaults differ from KVM's, which kvmlite keeps (listed in
#: docs/benchmarks.md, "MSRs against QEMU"): QEMU writes them with
#: KVM_SET_MSRS or KVM_X86_SETUP_MCE, kvmlite leaves what KVM starts with.
KNOWN = {
    0x8B: 'IA32_BIOS_SIGN_ID: QEMU invents a microcode revision (0x1000065 on AMD); KVM starts at 0',
    0x179: 'IA32_MCG_CAP: QEMU sets 10 banks with MCG_CTL_P and MCG_SER_P (KVM_X86_SETUP_MCE); '
           'KVM starts with 32 banks and no MCG_CTL_P',
    0x17B: 'IA32_MCG_CTL: exists only with MCG_CTL_P in MCG_CAP, so #GP under KVM\'s default',
}
#: Values that change by themselves or hold per-run addresses.
VOLATILE = {0x10, 0xE7, 0xE8, 0x6E0, 0x3B, 0x4B564D00, 0x4B564D01, 0x12, 0x11,
            0x4B564D02, 0x4B564D03, 0x4B564D04, 0x4B564D06, 0x4B564D07, 0x4B564D05}

GUEST = r'''
bits 32
org 0x100000
MB_MAGIC    equ 0x1BADB002
MB_AOUT     equ 0x00010000
header: dd MB_MAGIC, MB_AOUT, -(MB_MAGIC + MB_AOUT)
        dd header, header, end, end, start

start:  cli
        mov esp, stack_top
        mov ebx, idt                ; 32 interrupt gates, CS as the loader left it
        xor ecx, ecx
.gate:  mov eax, other
        cmp ecx, 13
        jne .set
        mov eax, gp
.set:   mov [ebx + ecx*8], ax
        mov word [ebx + ecx*8 + 2], cs
        mov word [ebx + ecx*8 + 4], 0x8E00
        shr eax, 16
        mov [ebx + ecx*8 + 6], ax
        inc ecx
        cmp ecx, 32
        jne .gate
        lidt [idtr]
        mov esi, table
next:   mov ecx, [esi]
        cmp ecx, 0xFFFFFFFF
        je done
        mov edi, s_msr
        call puts
        mov eax, ecx
        call hex32
        mov edi, s_r
        call puts
        mov byte [faulted], 0
        mov dword [resume], after_rd
        xor eax, eax
        xor edx, edx
        rdmsr
after_rd:
        cmp byte [faulted], 0
        jne rd_gp
        push eax
        mov eax, edx
        call hex32
        pop eax
        call hex32
        mov edi, s_w
        call puts
        mov dword [resume], after_wr
        wrmsr
after_wr:
        mov edi, s_ok
        cmp byte [faulted], 0
        je line_end
rd_gp:  mov edi, s_gp
line_end:
        call puts
        add esi, 4
        jmp next
done:   mov edi, s_end
        call puts
        mov al, 1
        out 0xF4, al
halt:   hlt
        jmp halt

gp:     add esp, 16                 ; error code, EIP, CS, EFLAGS
        mov byte [faulted], 1
        jmp dword [resume]
other:  mov edi, s_exc              ; any other exception: say so and end
        call puts
        mov al, 2
        out 0xF4, al
        jmp halt

puts:   push eax                    ; the NUL-terminated string at edi
        push edx
        mov dx, 0x3F8
.c:     mov al, [edi]
        test al, al
        jz .e
        out dx, al
        inc edi
        jmp .c
.e:     pop edx
        pop eax
        ret

hex32:  push eax                     ; eax as 8 hex digits
        push ebx
        push ecx
        push edx
        mov ebx, eax
        mov ecx, 8
        mov dx, 0x3F8
.d:     rol ebx, 4
        mov eax, ebx
        and eax, 15
        mov al, [digits + eax]
        out dx, al
        dec ecx
        jnz .d
        pop edx
        pop ecx
        pop ebx
        pop eax
        ret

digits: db '0123456789abcdef'
s_msr:  db 'msr ', 0
s_r:    db ' r ', 0
s_w:    db ' w ', 0
s_ok:   db 'ok', 10, 0
s_gp:   db 'GP', 10, 0
s_end:  db 'end', 10, 0
s_exc:  db 'unexpected exception', 10, 0
align 4
faulted: dd 0
resume: dd 0
idtr:   dw 32 * 8 - 1
        dd idt
align 8
idt:    times 32 * 8 db 0
table:  TABLE
        dd 0xFFFFFFFF
        times 512 db 0
stack_top:
end:
'''


def msr_table(kvm=None):
    """KVM_GET_MSR_INDEX_LIST, the common architectural MSRs and NOWHERE,
    sorted, once each."""
    import kvmlite
    own = kvm is None
    kvm = kvm or kvmlite.Kvm()
    try:
        listed = kvm.msr_index_list()
    finally:
        if own:
            kvm.close()
    return sorted(set(listed) | set(COMMON_MSRS) | {NOWHERE})


def build_guest(msrs):
    """The Multiboot image (bytes) that reads and writes back ``msrs``."""
    table = '\n        '.join(f'dd {m:#x}' for m in msrs)
    return assemble(GUEST.replace('TABLE', table), bits=32)


def parse(text):
    """{msr: (value or None for #GP on read, write ok: bool or None)} from
    the guest's output; raises ValueError if it did not get to its end."""
    out = {}
    lines = text.splitlines()
    if 'end' not in lines:
        raise ValueError(f'the MSR guest did not finish: {text[-200:]!r}')
    for line in lines:
        f = line.split()
        if len(f) >= 4 and f[0] == 'msr':
            idx = int(f[1], 16)
            if f[3] == 'GP':
                out[idx] = (None, None)
            else:
                out[idx] = (int(f[3], 16), f[5] == 'ok')
    return out


def run_kvmlite(image_path, timeout=120):
    cmd = [sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '-k', image_path,
           '-m', '64', '--console', 'none']
    with tempfile.NamedTemporaryFile('rb') as out:
        cmd[-1] = out.name
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        text = out.read().decode(errors='replace')      # the same file, reopened by kvmlite
    if r.returncode != 3:
        raise RuntimeError(f'kvmlite ended with status {r.returncode}: {r.stderr.decode()[-300:]}')
    return text


def run_qemu(image_path, cpu='qemu64', qemu=None, timeout=120):
    qemu = qemu or shutil.which('qemu-system-x86_64')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'com1')
        cmd = [qemu, '-M', 'microvm', '-accel', 'kvm', '-cpu', cpu, '-m', '64',
               '-kernel', image_path, '-nodefaults', '-nographic', '-serial', f'file:{path}',
               '-device', 'isa-debug-exit,iobase=0xf4,iosize=4']
        r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        text = ''
        if os.path.exists(path):
            with open(path, 'rb') as f:
                text = f.read().decode(errors='replace')
    if r.returncode != 3:
        raise RuntimeError(f'QEMU ended with status {r.returncode}: {r.stderr.decode()[-300:]}')
    return text


def _show(entry):
    value, write = entry
    if value is None:
        return 'read #GP'
    return f'{value:#x}, write {"ok" if write else "#GP"}'


def diff(a, b, names=('kvmlite', 'QEMU')):
    """[(msr, kind, a's, b's)]: kind 'fault' (a read or write faults in one
    only), 'value' (both read, values differ) or 'volatile' (a value that
    changes by itself or with the run)."""
    rows = []
    for msr in sorted(set(a) | set(b)):
        x, y = a.get(msr, (None, None)), b.get(msr, (None, None))
        if (x[0] is None) != (y[0] is None) or x[1] != y[1]:
            rows.append((msr, 'fault', _show(x), _show(y)))
        elif x[0] != y[0]:
            rows.append((msr, 'volatile' if msr in VOLATILE else 'value', _show(x), _show(y)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog='msrs.py', description=__doc__.split('\n\n')[0])
    ap.add_argument('--qemu-cpu', default='qemu64', help='QEMU -cpu model (default qemu64)')
    ap.add_argument('--no-qemu', action='store_true', help='run kvmlite only')
    a = ap.parse_args(argv)
    msrs = msr_table()
    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, 'msrs.mb')
        with open(image, 'wb') as f:
            f.write(build_guest(msrs))
        mine = parse(run_kvmlite(image))
        print(f'{len(msrs)} MSRs; kvmlite: {sum(v is not None for v, _ in mine.values())} read, '
              f'{sum(bool(w) for _, w in mine.values())} written back')
        qemu = shutil.which('qemu-system-x86_64')
        if a.no_qemu or not qemu:
            print('QEMU: ' + ('--no-qemu' if a.no_qemu else 'qemu-system-x86_64 not found '
                              '(Debian: qemu-system-x86)'))
            for msr in msrs:
                print(f'  {msr:#010x}  {_show(mine[msr])}')
            return 0
        theirs = parse(run_qemu(image, a.qemu_cpu, qemu))
        rows = diff(mine, theirs)
        print(f'QEMU -M microvm -accel kvm -cpu {a.qemu_cpu}: '
              f'{sum(v is not None for v, _ in theirs.values())} read, '
              f'{sum(bool(w) for _, w in theirs.values())} written back')
        print(f'{"MSR":10}  {"differs in":10}  {"kvmlite":32}  QEMU')
        for msr, kind, x, y in rows:
            print(f'{msr:#010x}  {kind:10}  {x:32}  {y}')
            if msr in KNOWN and kind != 'volatile':
                print(f'            known: {KNOWN[msr]}')
        print(f'{sum(k == "fault" for _, k, _, _ in rows)} differ in faulting, '
              f'{sum(k == "value" for _, k, _, _ in rows)} in value, '
              f'{sum(k == "volatile" for _, k, _, _ in rows)} volatile')
    return 0


if __name__ == '__main__':
    sys.exit(main())
