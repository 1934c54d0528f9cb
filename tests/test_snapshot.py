"""Snapshots, restores and fast resets of a whole machine, on real KVM.

A guest printing numbered lines is snapshotted while it runs; each restore
must print exactly the rest of what the original printed, byte for byte,
and end with the same status, in every irqchip mode; a guest taking PIT
interrupts in HLT is snapshotted between two ticks; two vCPUs; in-memory
checkpoints reset by the dirty log; every refusal of a bad file (truncated,
a flipped byte, foreign, a future version, a CPUID this host cannot give,
a run outside RAM, a crafted device or register state) before any vCPU
runs; an atomic write that a full disk cannot leave half done; and the CLI
(``run --snapshot`` + SIGUSR2, ``--restore``, ``--snapshot-on-exit``) as a
subprocess. No assertion depends on how long anything takes.
"""

import fcntl
import io
import json
import os
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib

import kvmlite
from devices.console import MemoryBackend
from devices.virtio_blk import BytesDisk, DiskImage
from tests.guest import kvm, requires_kvm
from tests import pcguest
from tools import snapshot
from tools.asm import assemble_with_labels
from tools.demo import elf64
from tools.layout import PC
from tools.pc import EXIT_TIMEOUT, load_kernel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_S = 60                     # guards against a hang only
ORIGIN = 0x100000
EXIT_VALUE = 0x21
EXIT_STATUS = EXIT_VALUE << 1 | 1
LINE = 16
F_SETPIPE_SZ = 1031             # fcntl.h: a pipe's capacity
#: KVMLITE_SNAPSHOT_ALL=1: every irqchip mode in the long cases (by default
#: split and kernel in-process, split through the CLI, to keep the suite fast)
ALL = os.environ.get('KVMLITE_SNAPSHOT_ALL') == '1'
LONG_MODES = pcguest.MODES if ALL else ('split', 'kernel')
CLI_MODES = ('split', 'kernel') if ALL else ('split',)


def lines_guest(count, before='', after='', data=''):
    """An ELF64 that prints ``count`` lines '00000 abcdefghi' .. numbered
    from 0, a line per ``rep outsb`` once the UART's THR is empty (a
    16-byte FIFO's worth), then writes EXIT_VALUE to the debug-exit port.
    ``before`` and ``after`` are code run before the first line and after
    the last, ``data`` more data after the line's."""
    src = f'''bits 64
start:
{before}
    mov ebx, {count}
next:
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov dx, 0x3f8
    mov rsi, line
    mov ecx, {LINE}
    rep outsb
    mov rdi, line + 4
.carry:
    inc byte [rdi]
    cmp byte [rdi], 58
    jb .counted
    mov byte [rdi], 48
    dec rdi
    jmp .carry
.counted:
    dec ebx
    jnz next
{after}
    mov al, {EXIT_VALUE}
    out 0xf4, al
    hlt
line:
    db '00000 abcdefghi', 10
{data}
'''
    code, labels = assemble_with_labels(src, bits=64, origin=ORIGIN)
    return elf64(code, ORIGIN, labels['start'])


def expected_lines(count):
    return b''.join(b'%05d abcdefghi\n' % i for i in range(count))


VDA = PC.device('vda')
DISK_SECTOR = 2
DISK_MARKER = b'written after the snapshot point\n'
#: virtio-blk on vda, driven by polling its used ring (no interrupts): the
#: device is set up before the first line (so a snapshot holds it running),
#: and after the last the guest writes DISK_MARKER to sector DISK_SECTOR
VIRTIO_SETUP = f'''
    mov rbx, {VDA.mmio[0][1]:#x}
    mov dword [rbx + 0x70], 0       ; reset, ACKNOWLEDGE, DRIVER
    mov dword [rbx + 0x70], 1
    mov dword [rbx + 0x70], 3
    mov dword [rbx + 0x24], 1       ; DriverFeatures[63:32] = VERSION_1
    mov dword [rbx + 0x20], 1
    mov dword [rbx + 0x70], 11      ; FEATURES_OK
    mov dword [rbx + 0x30], 0       ; queue 0: 8 entries
    mov dword [rbx + 0x38], 8
    mov rax, desc
    mov [rbx + 0x80], eax
    mov dword [rbx + 0x84], 0
    mov rax, avail
    mov [rbx + 0x90], eax
    mov dword [rbx + 0x94], 0
    mov rax, used
    mov [rbx + 0xa0], eax
    mov dword [rbx + 0xa4], 0
    mov dword [rbx + 0x44], 1       ; QueueReady
    mov dword [rbx + 0x70], 15      ; DRIVER_OK
'''
VIRTIO_WRITE = f'''
    mov rbx, {VDA.mmio[0][1]:#x}
    mov rdi, avail
    mov word [rdi + 4], 0           ; ring[0] = descriptor 0
    mov word [rdi + 2], 1           ; avail.idx
    mov dword [rbx + 0x50], 0       ; QueueNotify
    mov rdi, used
.poll:
    cmp word [rdi + 2], 1
    jne .poll
    mov rdi, status
    cmp byte [rdi], 0
    je .written
    mov al, 0x22                    ; the device said no
    out 0xf4, al
.written:
'''
VIRTIO_DATA = f'''
align 8
header: dd 1, 0                     ; VIRTIO_BLK_T_OUT
    dq {DISK_SECTOR}
status: db 0xff
align 16
desc:
    dq header
    dd 16
    dw 1, 1                         ; NEXT, next 1
    dq buffer
    dd 512
    dw 1, 2                         ; NEXT (device-readable), next 2
    dq status
    dd 1
    dw 2, 0                         ; WRITE
    times 5 dq 0, 0
align 16
avail: times 12 dw 0
align 16
used: times 20 dd 0
align 16
buffer: db {", ".join(str(b) for b in DISK_MARKER)}
    times {512 - len(DISK_MARKER)} db 0
'''


def disk_guest(count):
    return lines_guest(count, VIRTIO_SETUP, VIRTIO_WRITE, VIRTIO_DATA)


TICKS = r'''
; the PIT at 100 Hz on IRQ 0 (through the IOAPIC where there is one); each
; tick prints a '.', NTICKS of them, then ' done'
main:
    mov byte [want_ioapic], 1
    call irq_setup
    xor edi, edi
    mov rsi, tick
    call irq_handler
    mov al, 0x34                ; counter 0, LSB then MSB, mode 2
    out 0x43, al
    mov al, 11932 & 0xff
    out 0x40, al
    mov al, 11932 >> 8
    out 0x40, al
    xor edi, edi
    xor esi, esi
    call irq_unmask
    mov rsi, ticks
    mov ecx, NTICKS
    call wait_for
    call print
    db ' done', 10, 0
    mov al, PASSED
    ret
tick:
    inc qword [ticks]
    mov al, '.'
    call putc
    xor edi, edi
    jmp irq_eoi
ticks: dq 0
'''
NTICKS = 24


def until(predicate, what):
    give_up = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f'no {what} after {HANG_S} s')
        time.sleep(0.005)


class Running:
    """machine.run() in a thread, so the test can snapshot it meanwhile."""

    def __init__(self, machine):
        self.machine, self.result = machine, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.result = self.machine.run(timeout=HANG_S)

    def join(self):
        self.thread.join(HANG_S)
        return self.result


def lines_machine(mode, count, cpus=1, mem_size=16 << 20):
    con = MemoryBackend()
    m = kvmlite.Machine(mem_size=mem_size, cpus=cpus, irqchip=mode, console=con, kvm=kvm())
    load_kernel(m, lines_guest(count))
    return m, con


def ticks_machine(mode):
    code, labels = pcguest.assemble(TICKS, {'NTICKS': NTICKS, 'PASSED': pcguest.PASSED})
    con = MemoryBackend()
    m = kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=con, kvm=kvm())
    m.vm.write(pcguest.CODE, code)
    m.vm.write(pcguest.IDT, pcguest._idt(labels))
    kvmlite.setup_mode(m.vm.vcpus[0], m.vm, 'long64', labels['start'], stack=pcguest.STACK)
    return m, con


@requires_kvm
class SnapshotWhileRunningTest(unittest.TestCase):
    """Machine.snapshot() from another thread while the guest prints: the
    original goes on to print everything; each restore prints the rest."""

    def snapshot_midway(self, m, con, after):
        run = Running(m)
        until(lambda: len(con.output) >= after, f'{after} bytes of output')
        buf = io.BytesIO()
        m.snapshot(buf)
        result = run.join()
        return buf.getvalue(), result, bytes(con.output)

    def restore(self, data):
        con = MemoryBackend()
        with kvmlite.Machine.restore(io.BytesIO(data), console=con, kvm=kvm()) as m:
            return m.run(timeout=HANG_S), bytes(con.output)

    def assert_rest(self, full, rest):
        self.assertTrue(0 < len(rest) < len(full), f'{len(rest)} bytes restored of {len(full)}')
        self.assertEqual(full[len(full) - len(rest):], rest, 'a restore printed other bytes')

    def test_each_of_two_restores_prints_the_rest_in_every_mode(self):
        count = 1500
        for mode in LONG_MODES:
            with self.subTest(mode=mode):
                m, con = lines_machine(mode, count)
                with m:
                    data, result, full = self.snapshot_midway(m, con, 100 * LINE)
                self.assertEqual((result.status, full), (EXIT_STATUS, expected_lines(count)))
                for _ in range(2):
                    restored, rest = self.restore(data)
                    self.assertEqual(restored.status, EXIT_STATUS, restored.reason)
                    self.assert_rest(full, rest)

    def test_two_vcpus_restore(self):
        m, con = lines_machine('split', 1500, cpus=2)
        with m:
            data, result, full = self.snapshot_midway(m, con, 100 * LINE)
        restored, rest = self.restore(data)
        self.assertEqual(restored.status, EXIT_STATUS, restored.reason)
        self.assert_rest(full, rest)
        self.assertEqual(len(snapshot.open_snapshot(io.BytesIO(data)).state['vcpus']), 2)

    def test_a_guest_taking_timer_interrupts_in_hlt_resumes_its_ticks(self):
        for mode in pcguest.MODES:
            with self.subTest(mode=mode):
                m, con = ticks_machine(mode)
                with m:
                    data, result, full = self.snapshot_midway(m, con, NTICKS // 3)
                self.assertEqual((result.status, full), (pcguest.STATUS_PASSED, b'.' * NTICKS + b' done\n'))
                restored, rest = self.restore(data)
                self.assertEqual(restored.status, pcguest.STATUS_PASSED, restored.reason)
                self.assert_rest(full, rest)

    def test_a_restored_disk_device_has_its_memory_and_interrupt(self):
        """Machine.restore(disks=...): the rebuilt virtio-blk reaches guest
        RAM (the write after the snapshot lands in the disk given) and its
        interrupt line reaches the PIC (IRQ 5 is raised by the completion)."""
        con = MemoryBackend()
        disk = BytesDisk(bytes(64 << 10))
        m = kvmlite.Machine(mem_size=16 << 20, console=con, kvm=kvm(), disks=[disk])
        with m:
            load_kernel(m, disk_guest(1500))
            data, result, full = self.snapshot_midway(m, con, 100 * LINE)
        self.assertEqual(result.status, EXIT_STATUS, result.reason)
        marker = DISK_MARKER + bytes(512 - len(DISK_MARKER))
        self.assertEqual(disk.read(DISK_SECTOR * 512, 512), marker)
        with self.assertRaises(snapshot.SnapshotError) as cm:
            kvmlite.Machine.restore(io.BytesIO(data), kvm=kvm())
        self.assertIn('pass the disks', str(cm.exception))
        again = BytesDisk(bytes(64 << 10))
        con = MemoryBackend()
        with kvmlite.Machine.restore(io.BytesIO(data), console=con, kvm=kvm(), disks=[again]) as r:
            self.assertEqual(r.pic.state()['master']['lines'] & 1 << VDA.irq, 0)
            result = r.run(timeout=HANG_S)
            self.assertEqual(result.status, EXIT_STATUS, result.reason)
            self.assertEqual(again.read(DISK_SECTOR * 512, 512), marker)
            self.assertEqual(r.devices['vda'].writes, 1)
            self.assertTrue(r.pic.state()['master']['lines'] & 1 << VDA.irq, 'IRQ 5 never raised')
        self.assert_rest(full, bytes(con.output))

    def test_the_file_holds_only_the_pages_the_guest_used(self):
        m, con = lines_machine('split', 10, mem_size=256 << 20)
        with m:
            m.run(timeout=HANG_S)
            buf = io.BytesIO()
            m.snapshot(buf)
        self.assertLess(len(buf.getvalue()), 1 << 20, '256 MiB guest, a few pages used')


MSR_KVM_SYSTEM_TIME_NEW = 0x4B564D01
CLOCK_LINE = 17                 # 16 hex digits of kvmclock ns and a newline
CLOCK_RUN_ON_NS = 20_000_000    # the guest's clock must move this far before it ends


def clock_guest(count):
    """An ELF64 that turns on kvmclock (MSR_KVM_SYSTEM_TIME_NEW) and prints
    ``count`` lines, each the kvmclock time in ns as 16 hex digits, read from
    the pvclock page (TSC delta scaled by tsc_to_system_mul and tsc_shift,
    plus system_time, retried while the version is odd or moved). A time
    below the one before ends it with status 0x22 << 1 | 1; after the last
    line it spins until its clock has moved CLOCK_RUN_ON_NS on (a clock that
    stopped leaves it spinning), then writes EXIT_VALUE."""
    src = f'''bits 64
start:
    mov ecx, {MSR_KVM_SYSTEM_TIME_NEW:#x}
    mov rax, pvti
    or eax, 1                       ; enabled
    xor edx, edx
    wrmsr
    mov ebx, {count}
next:
    call read_clock
    cmp rax, [last]
    jb backwards
    mov [last], rax
    mov rdi, rax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    mov dx, 0x3f8
    mov ecx, 16
.digit:
    rol rdi, 4
    mov eax, edi
    and eax, 15
    mov rsi, digits
    mov al, [rsi + rax]
    out dx, al
    loop .digit
    mov al, 10
    out dx, al
    dec ebx
    jnz next
    call read_clock
    add rax, {CLOCK_RUN_ON_NS}
    mov r12, rax
.run_on:
    call read_clock
    cmp rax, r12
    jb .run_on
    mov al, {EXIT_VALUE}
    out 0xf4, al
    hlt
backwards:
    mov al, 0x22
    out 0xf4, al
    hlt
read_clock:                         ; rax = kvmclock ns (pvclock_vcpu_time_info)
    mov rsi, pvti
.retry:
    mov r8d, [rsi]                  ; version
    test r8d, 1
    jnz .retry
    lfence
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, [rsi + 8]              ; - tsc_timestamp
    movsx ecx, byte [rsi + 28]      ; tsc_shift
    test ecx, ecx
    js .right
    shl rax, cl
    jmp .scale
.right:
    neg ecx
    shr rax, cl
.scale:
    mov edx, [rsi + 24]             ; tsc_to_system_mul
    mul rdx                         ; rdx:rax = delta * mul
    shr rax, 32
    shl rdx, 32
    or rax, rdx
    add rax, [rsi + 16]             ; + system_time
    lfence
    cmp r8d, [rsi]
    jne .retry
    ret
digits: db '0123456789abcdef'
align 8
last: dq 0
align 64
pvti: times 32 db 0
'''
    code, labels = assemble_with_labels(src, bits=64, origin=ORIGIN)
    return elf64(code, ORIGIN, labels['start'])


@requires_kvm
class KvmclockTest(unittest.TestCase):
    """The guest's kvmclock after a restore: it goes on from where the
    snapshot stopped it (KVM_SET_CLOCK with the saved value), never back,
    and not on by the time the file sat unused; and it runs on."""

    COUNT = 300
    SIT_S = 0.5             # the snapshot sits this long before each restore

    def times(self, data):
        self.assertEqual(len(data) % CLOCK_LINE, 0, data[-40:])
        return [int(data[i:i + 16], 16) for i in range(0, len(data), CLOCK_LINE)]

    def test_kvmclock_runs_on_from_the_snapshot_after_each_restore(self):
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                con = MemoryBackend()
                m = kvmlite.Machine(mem_size=16 << 20, irqchip=mode, console=con, kvm=kvm())
                with m:
                    load_kernel(m, clock_guest(self.COUNT))
                    run = Running(m)
                    until(lambda: len(con.output) >= 50 * CLOCK_LINE, 'output')
                    buf = io.BytesIO()
                    m.snapshot(buf)
                    at_snapshot = len(con.output)
                    result = run.join()
                    full = bytes(con.output)
                self.assertEqual(result.status, EXIT_STATUS, result.reason)
                self.times(full)
                saved = snapshot.open_snapshot(io.BytesIO(buf.getvalue())).state['clock']
                for _ in range(2):
                    time.sleep(self.SIT_S)
                    con = MemoryBackend()
                    began = time.monotonic()
                    with kvmlite.Machine.restore(io.BytesIO(buf.getvalue()), console=con, kvm=kvm()) as r:
                        restored = r.run(timeout=HANG_S)
                    took_ns = int((time.monotonic() - began) * 1e9)
                    self.assertEqual(restored.status, EXIT_STATUS, restored.reason)   # never backwards
                    rest = bytes(con.output)
                    before = full[:len(full) - len(rest)]
                    self.assertGreaterEqual(len(before), at_snapshot - 16)
                    times = self.times(before + rest)      # whole lines, old ones then new
                    self.assertEqual(len(times), self.COUNT)
                    self.assertEqual(times, sorted(times), 'the clock went back across the restore')
                    after = times[len(before) // CLOCK_LINE + 1:]
                    self.assertTrue(after, 'no line read its clock after the restore')
                    # the restored clock starts at the saved value: however long the file
                    # sat, no reading after the restore exceeds it by more than the
                    # restored run's own time (both clocks are the host's monotonic one)
                    slack = took_ns // 100 + 1_000_000
                    self.assertLessEqual(max(after) - saved, took_ns + slack,
                                         f'the clock jumped: {(max(after) - saved) / 1e9:.3f} s on '
                                         f'in a restored run of {took_ns / 1e9:.3f} s')
                    self.assertGreaterEqual(min(after), saved - 1, 'the clock restarted lower')


SMP_DATA = 0x30000          # the AP's data segment: done flag, its count, its hash
SMP_AP = 0x20000            # SIPI vector 0x20: the AP starts in real mode at 2000:0000
SMP_BSP = 0x100000
SMP_TURNS = 60000
#: vCPU 0 (long mode) starts vCPU 1 with INIT and a startup IPI, then both
#: count to SMP_TURNS in memory, each folding its count into a hash; vCPU 1
#: (real mode) sets its done flag and halts; vCPU 0 waits for it, prints
#: both counts and hashes and writes EXIT_VALUE to the debug-exit port
SMP_BSP_SRC = r'''
bits 64
start:
    mov rbx, 0xfee00000             ; the local APIC
    mov dword [rbx + 0xf0], 0x1ff   ; SVR: software-enabled
    mov dword [rbx + 0x310], 1 << 24
    mov dword [rbx + 0x300], 0x4500 ; INIT
    mov dword [rbx + 0x310], 1 << 24
    mov dword [rbx + 0x300], 0x4620 ; startup IPI, vector 0x20
    xor ecx, ecx
    xor r13d, r13d
count:
    inc ecx
    mov [count0], ecx
    imul r13, r13, 31
    add r13, rcx
    cmp ecx, TURNS
    jb count
    mov [hash0], r13
wait_ap:
    cmp byte [DATA], 0
    je wait_ap
    mov eax, [count0]
    call hex
    mov eax, [hash0]
    call hex
    mov eax, [DATA + 4]
    call hex
    mov eax, [DATA + 8]
    call hex
    mov dx, 0x3f8
    mov al, 10
    out dx, al
    mov al, EXIT
    out 0xf4, al
    hlt
hex:                                ; eax as 8 hex digits and a space
    mov ecx, 8
    mov dx, 0x3f8
.digit:
    rol eax, 4
    mov esi, eax
    and esi, 15
    mov r8b, [digits + rsi]
    xchg eax, r8d
    out dx, al
    xchg eax, r8d
    loop .digit
    mov al, 32
    out dx, al
    ret
digits: db '0123456789abcdef'
align 8
count0: dq 0
hash0: dq 0
'''
SMP_AP_SRC = r'''
bits 16
ap_start:
    mov ax, 0x3000
    mov ds, ax
    xor ecx, ecx
    xor edx, edx
.count:
    inc ecx
    mov [4], ecx
    imul edx, edx, 31
    add edx, ecx
    cmp ecx, TURNS
    jb .count
    mov [8], edx
    mov byte [0], 1
    cli
    hlt
'''


def smp_machine(mode):
    con = MemoryBackend()
    m = kvmlite.Machine(mem_size=16 << 20, cpus=2, irqchip=mode, console=con, kvm=kvm())
    symbols = {'TURNS': SMP_TURNS, 'DATA': SMP_DATA, 'EXIT': EXIT_VALUE}
    bsp, _ = assemble_with_labels(SMP_BSP_SRC, bits=64, origin=SMP_BSP, symbols=symbols)
    ap, _ = assemble_with_labels(SMP_AP_SRC, bits=16, origin=0, symbols=symbols)
    m.vm.write(SMP_BSP, bsp)
    m.vm.write(SMP_AP, ap)
    kvmlite.setup_long_mode(m.vm.vcpus[0], m.vm, SMP_BSP)
    return m, con


def smp_counts(m):
    """(vCPU 0's count, vCPU 1's count) in the guest's memory."""
    return m.vm.read_int(SMP_COUNT0, 4), m.vm.read_int(SMP_DATA + 4, 4)


SMP_COUNT0 = assemble_with_labels(SMP_BSP_SRC, bits=64, origin=SMP_BSP, symbols={
    'TURNS': SMP_TURNS, 'DATA': SMP_DATA, 'EXIT': EXIT_VALUE})[1]['count0']


def smp_expected():
    h0 = h1 = 0
    for i in range(1, SMP_TURNS + 1):
        h0, h1 = (h0 * 31 + i) & (1 << 64) - 1, (h1 * 31 + i) & 0xFFFFFFFF
    return b'%08x %08x %08x %08x \n' % (SMP_TURNS, h0 & 0xFFFFFFFF, SMP_TURNS, h1)


@requires_kvm
class SmpSnapshotTest(unittest.TestCase):
    """Two vCPUs, both counting when the snapshot is taken: each of two
    restores finishes both counts (the same counts and hashes as the
    original), in split and kernel mode."""

    def test_both_vcpus_run_on_after_each_restore(self):
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                m, con = smp_machine(mode)
                with m:
                    run = Running(m)
                    until(lambda: min(smp_counts(m)) >= SMP_TURNS // 10, 'both vCPUs counting')
                    buf = io.BytesIO()
                    m.snapshot(buf)
                    result = run.join()
                self.assertEqual(result.status, EXIT_STATUS, result.reason)
                self.assertEqual(bytes(con.output), smp_expected())
                for _ in range(2):
                    con = MemoryBackend()
                    with kvmlite.Machine.restore(io.BytesIO(buf.getvalue()), console=con, kvm=kvm()) as r:
                        at = smp_counts(r)
                        self.assertTrue(all(0 < c < SMP_TURNS for c in at),
                                        f'counts {at} at the snapshot: not both midway')
                        restored = r.run(timeout=HANG_S)
                        self.assertEqual(restored.status, EXIT_STATUS, restored.reason)
                        self.assertEqual(bytes(con.output), smp_expected())
                        self.assertEqual(smp_counts(r), (SMP_TURNS, SMP_TURNS))


@requires_kvm
class CheckpointTest(unittest.TestCase):
    """checkpoint() / reset_to(): the guest runs again from the checkpoint,
    and only the pages it dirtied are copied back."""

    def test_reset_to_a_checkpoint_taken_before_the_run_runs_it_again(self):
        for mode in pcguest.MODES:
            with self.subTest(mode=mode):
                m, con = lines_machine(mode, 100, mem_size=64 << 20)
                with m:
                    cp = m.checkpoint()
                    first = m.run(timeout=HANG_S)
                    self.assertEqual(first.status, EXIT_STATUS, first.reason)
                    for _ in range(2):
                        copied = m.reset_to(cp)
                        self.assertTrue(1 <= copied <= 4, f'{copied} pages copied back')
                        con.output.clear()
                        again = m.run(timeout=HANG_S)
                        self.assertEqual(again.status, EXIT_STATUS, again.reason)
                        self.assertEqual(bytes(con.output), expected_lines(100))

    def test_a_checkpoint_taken_while_running_resets_to_that_point(self):
        m, con = lines_machine('kernel', 1500)
        with m:
            run = Running(m)
            until(lambda: len(con.output) >= 50 * LINE, 'output')
            cp = m.checkpoint()
            run.join()
            full = bytes(con.output)
            m.reset_to(cp)
            con.output.clear()
            self.assertEqual(m.run(timeout=HANG_S).status, EXIT_STATUS)
            rest = bytes(con.output)
        self.assertTrue(0 < len(rest) < len(full))
        self.assertEqual(full[len(full) - len(rest):], rest)

    def test_pages_the_guest_wrote_come_back(self):
        src = r'''
main:
    mov rdi, 0x200000
    mov ecx, 64
.fill:
    mov qword [rdi], rcx
    add rdi, 4096
    loop .fill
    mov al, PASSED
    ret
'''
        code, labels = pcguest.assemble(src, {'PASSED': pcguest.PASSED})
        with kvmlite.Machine(mem_size=pcguest.MEM_SIZE, console=MemoryBackend(), kvm=kvm()) as m:
            m.vm.write(pcguest.CODE, code)
            m.vm.write(pcguest.IDT, pcguest._idt(labels))
            kvmlite.setup_mode(m.vm.vcpus[0], m.vm, 'long64', labels['start'], stack=pcguest.STACK)
            cp = m.checkpoint()
            self.assertEqual(m.run(timeout=HANG_S).status, pcguest.STATUS_PASSED)
            self.assertEqual(m.vm.read_int(0x200000, 8), 64)
            copied = m.reset_to(cp)
            self.assertGreaterEqual(copied, 64)
            self.assertEqual(m.vm.read(0x200000, 64 * 4096), bytes(64 * 4096))

    def test_tracing_and_profiling_go_on_after_a_reset(self):
        """A reset rebuilds the devices: the tracer's recording proxies and
        the profiler's counters are put back around the new ones."""
        from tools.trace import Profiler, Tracer
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                m, con = lines_machine(mode, 20)
                with m:
                    out = io.StringIO()
                    Tracer(out).attach(m)
                    profiler = Profiler().attach(m)
                    cp = m.checkpoint()
                    self.assertEqual(m.run(timeout=HANG_S).status, EXIT_STATUS)
                    first = out.getvalue().count('io-out 0x3f8 1')
                    com1 = profiler.devices['COM1 16550A'][0]
                    self.assertGreaterEqual(first, 20 * LINE)
                    m.reset_to(cp)
                    out.seek(0)
                    out.truncate()
                    self.assertEqual(m.run(timeout=HANG_S).status, EXIT_STATUS)
                    self.assertEqual(out.getvalue().count('io-out 0x3f8 1'), first)
                    self.assertGreater(profiler.devices['COM1 16550A'][0], com1)

    def test_irq_tracing_goes_on_after_a_reset(self):
        """The demo (COM1's THRE interrupt) traced with --trace-filter irq:4:
        after a reset the rebuilt IOAPIC's KVM_SIGNAL_MSI (split), the
        PIC's KVM_INTERRUPT (user) and KVM_IRQ_LINE (kernel) are traced as
        in the first run, with the same lines."""
        from tools import demo
        from tools.trace import Tracer, parse_filter
        how = {'split': 'KVM_SIGNAL_MSI', 'user': 'KVM_INTERRUPT', 'kernel': 'KVM_IRQ_LINE'}
        for mode in pcguest.MODES:
            with self.subTest(mode=mode), \
                    kvmlite.Machine(irqchip=mode, console=MemoryBackend(), kvm=kvm()) as m:
                demo.load(m)
                out = io.StringIO()
                Tracer(out, parse_filter('irq:4')).attach(m)
                cp = m.checkpoint()
                runs = []
                for _ in range(2):
                    self.assertEqual(m.run(timeout=HANG_S).status, 0)
                    events = [line.split(None, 2)[2] for line in out.getvalue().splitlines()]
                    runs.append(sorted(set(events)))
                    injects = [e for e in events if e.startswith('irq-inject')]
                    self.assertGreater(len(injects), 10, events[:10])
                    self.assertTrue(all(e.endswith(how[mode]) for e in injects), injects[:5])
                    m.reset_to(cp)
                    out.seek(0)
                    out.truncate()
                self.assertEqual(runs[0], runs[1])

    def test_reset_to_refuses_another_machines_checkpoint(self):
        a, _ = lines_machine('split', 1)
        b, _ = lines_machine('split', 1)
        with a, b:
            with self.assertRaises(kvmlite.KvmliteError):
                b.reset_to(a.checkpoint())


def relayout(data, change):
    """The snapshot ``data`` with ``change(meta)`` applied to its metadata,
    its header, offsets and checksums consistent again: a crafted file."""
    fields = snapshot.HEADER.unpack_from(data)
    meta_off, meta_len = fields[3], fields[4]
    meta = json.loads(data[meta_off:meta_off + meta_len])
    change(meta)
    pages = [data[off:off + n * 4096] for _, n, off, _ in meta['memory']]
    data_off = None
    while True:         # the runs' offsets are in the metadata, whose length moves them
        blob = json.dumps(meta).encode()
        new_off = (meta_off + len(blob) + 4095) // 4096 * 4096
        if new_off == data_off:
            break
        data_off = off = new_off
        for run in meta['memory']:
            run[2] = off
            off += run[1] * 4096
    head = snapshot.HEADER.pack(snapshot.MAGIC, snapshot.VERSION, snapshot.HEADER.size, meta_off,
                                len(blob), data_off, off, zlib.crc32(blob), 0)
    head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
    out = head.ljust(meta_off, b'\0') + blob
    out = out.ljust(data_off, b'\0') + b''.join(pages)
    return out


def with_header(data, **changes):
    names = ('magic', 'version', 'header_size', 'meta_offset', 'meta_length', 'data_offset',
             'file_length', 'meta_crc', 'header_crc')
    fields = dict(zip(names, snapshot.HEADER.unpack_from(data)))
    fields.update(changes)
    head = snapshot.HEADER.pack(*fields.values())
    head = head[:-4] + struct.pack('<I', zlib.crc32(head[:-4]))
    return head + data[len(head):]


def flip(data, offset):
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:]


@requires_kvm
class RefusalTest(unittest.TestCase):
    """Every bad file is refused with a SnapshotError (a ValueError) saying
    why, before any vCPU runs; the CLI says it in one line, status 2."""

    @classmethod
    def setUpClass(cls):
        m, con = lines_machine('split', 20)
        with m:
            m.run(timeout=HANG_S)
            buf = io.BytesIO()
            m.snapshot(buf)
        cls.good = buf.getvalue()
        meta_off, meta_len = snapshot.HEADER.unpack_from(cls.good)[3:5]
        cls.meta = json.loads(cls.good[meta_off:meta_off + meta_len])

    def refused(self, data, *words):
        with self.assertRaises(snapshot.SnapshotError) as cm:
            kvmlite.Machine.restore(io.BytesIO(data), console=MemoryBackend(), kvm=kvm())
        for w in words:
            self.assertIn(w, str(cm.exception))
        return str(cm.exception)

    def test_the_good_file_restores(self):
        with kvmlite.Machine.restore(io.BytesIO(self.good), console=MemoryBackend(), kvm=kvm()) as m:
            self.assertEqual(m.mem_size, 16 << 20)

    def test_truncated(self):
        self.refused(self.good[:-100], 'truncated')
        self.refused(self.good[:20], 'truncated')

    def test_flipped_byte_in_the_metadata(self):
        self.refused(flip(self.good, snapshot.META_OFFSET + 40), 'corrupt', 'metadata checksum')

    def test_flipped_byte_in_a_page(self):
        self.refused(flip(self.good, len(self.good) - 5), 'corrupt', 'memory run')

    def test_flipped_byte_in_the_header(self):
        self.refused(flip(self.good, 13), 'corrupt', 'header checksum')

    def test_foreign_file(self):
        self.refused(b'\x7fELF' + bytes(8000), 'not a kvmlite snapshot')
        self.refused(b'', 'not a kvmlite snapshot')

    def test_future_and_unknown_versions(self):
        self.refused(with_header(self.good, version=snapshot.VERSION + 1), 'newer')
        self.refused(with_header(self.good, version=0), 'which no kvmlite wrote')
        self.refused(with_header(self.good, version=1), 'did not record the --disk images')

    def test_bytes_past_the_end(self):
        self.refused(self.good + b'\0', 'past its end')

    def test_a_cpuid_this_host_cannot_give(self):
        def change(meta):
            for e in meta['state']['vcpus'][0]['cpuid']:
                if e['function'] == 7 and e['index'] == 0:
                    e['ebx'] = 0xFFFFFFFF
        self.refused(relayout(self.good, change), 'CPUID', 'cannot give')

    def test_a_memory_run_outside_ram(self):
        def change(meta):
            meta['memory'][0][0] = 0x7FFF0000000
        self.refused(relayout(self.good, change), 'outside the guest\'s RAM')

    def test_overlapping_memory_runs(self):
        def change(meta):
            meta['memory'].append(list(meta['memory'][-1]))
        self.refused(relayout(self.good, change), 'overlaps')

    def test_a_crafted_register_or_device_state(self):
        def regs(meta):
            meta['state']['vcpus'][0]['regs']['rip'] = 'exec(1)'
        self.refused(relayout(self.good, regs), 'not an integer')

        def wide(meta):
            meta['state']['vcpus'][0]['regs']['rax'] = 1 << 64
        self.refused(relayout(self.good, wide), 'does not fit')

        def device(meta):
            meta['state']['devices']['com1'] = {'version': 1}
        self.refused(relayout(self.good, device), 'device state')

        def msr(meta):
            meta['state']['vcpus'][0]['msrs'].append([0xDEAD0000, 0])
        self.refused(relayout(self.good, msr), 'MSR 0xdead0000')

        def mode(meta):
            meta['config']['irqchip'] = 'bogus'
        self.refused(relayout(self.good, mode), 'irqchip mode')

    def test_the_cli_says_why_in_one_line_with_status_2(self):
        with tempfile.TemporaryDirectory() as tmp:
            for name, data, word in (('truncated', self.good[:-1], 'truncated'),
                                     ('flipped', flip(self.good, snapshot.META_OFFSET + 9), 'corrupt'),
                                     ('future', with_header(self.good, version=9), 'newer')):
                path = os.path.join(tmp, name)
                with open(path, 'wb') as f:
                    f.write(data)
                p = subprocess.run([sys.executable, 'kvmlite.py', 'run', '--restore', path],
                                   cwd=ROOT, capture_output=True, stdin=subprocess.DEVNULL,
                                   timeout=HANG_S)
                with self.subTest(name=name):
                    self.assertEqual(p.returncode, 2, p.stderr)
                    self.assertEqual(p.stdout, b'')
                    lines = p.stderr.decode().splitlines()
                    self.assertEqual(len(lines), 1, lines)
                    self.assertTrue(lines[0].startswith('kvmlite: snapshot '), lines)
                    self.assertIn(word, lines[0])


@requires_kvm
class AtomicWriteTest(unittest.TestCase):
    def test_a_full_disk_midway_leaves_the_old_file_and_no_temporary(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'machine.snap')
            with open(path, 'wb') as f:
                f.write(b'the previous snapshot')
            m, _ = lines_machine('split', 20)
            with m:
                m.run(timeout=HANG_S)
                soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
                prev = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, hard))   # writes past 16 KiB fail
                try:
                    with self.assertRaises(snapshot.SnapshotError) as cm:
                        m.snapshot(path)
                finally:
                    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
                    signal.signal(signal.SIGXFSZ, prev)
                self.assertIn('cannot write snapshot', str(cm.exception))
                with open(path, 'rb') as f:
                    self.assertEqual(f.read(), b'the previous snapshot')
                self.assertEqual(os.listdir(tmp), ['machine.snap'])
                m.snapshot(path)                       # and with room it is replaced whole
            with kvmlite.Machine.restore(path, kvm=kvm()) as restored:
                self.assertEqual(restored.mode, 'split')


@requires_kvm
class CliTest(unittest.TestCase):
    """``kvmlite run`` as a subprocess, its stdout a pipe of one page that
    the test stops reading: the guest waits for the reader (the console is
    lossless), so the snapshot lands midway whatever the host's speed."""

    COUNT = 4000            # 64000 bytes: more than the pipe and the console buffer hold
    LONG = 8000             # 128000 bytes: the guest cannot end before a timeout while nobody reads

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.kernel = os.path.join(self.tmp, 'lines.elf')
        with open(self.kernel, 'wb') as f:
            f.write(lines_guest(self.COUNT))

    def start(self, *args):
        r, w = os.pipe()
        fcntl.fcntl(r, F_SETPIPE_SZ, 4096)
        p = subprocess.Popen([sys.executable, 'kvmlite.py', 'run', *args], cwd=ROOT, stdout=w,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        os.close(w)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        self.addCleanup(os.close, r)
        self.addCleanup(p.stderr.close)
        return p, r

    def read(self, fd, lines=None):
        data, give_up = bytearray(), time.monotonic() + HANG_S
        while lines is None or data.count(b'\n') < lines:
            self.assertLess(time.monotonic(), give_up, 'the run hangs')
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
        return bytes(data)

    def restore(self, path):
        p = subprocess.run([sys.executable, 'kvmlite.py', 'run', '--restore', path], cwd=ROOT,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=HANG_S)
        return p.returncode, p.stdout

    def test_sigusr2_snapshots_midway_and_two_restores_print_the_rest(self):
        for mode in CLI_MODES:
            with self.subTest(mode=mode):
                snap = os.path.join(self.tmp, f'{mode}.snap')
                p, out = self.start('-k', self.kernel, '--irqchip', mode, '--snapshot', snap)
                first = self.read(out, lines=100)
                p.send_signal(signal.SIGUSR2)
                until(lambda: os.path.exists(snap), 'snapshot file')
                full = first + self.read(out)
                self.assertEqual(p.wait(HANG_S), EXIT_STATUS, p.stderr.read())
                self.assertEqual(full, expected_lines(self.COUNT))
                self.assertLess(os.path.getsize(snap), (256 << 20) // 100)
                for _ in range(2):
                    status, rest = self.restore(snap)
                    self.assertEqual(status, EXIT_STATUS)
                    self.assertTrue(0 < len(rest) < len(full), f'{len(rest)} of {len(full)} bytes')
                    self.assertEqual(full[len(full) - len(rest):], rest)

    def test_snapshot_on_exit_at_a_timeout_resumes_where_the_run_stopped(self):
        snap = os.path.join(self.tmp, 'exit.snap')
        kernel = os.path.join(self.tmp, 'long.elf')
        with open(kernel, 'wb') as f:
            f.write(lines_guest(self.LONG))
        p, out = self.start('-k', kernel, '--timeout', '0.6', '--snapshot-on-exit', snap)
        time.sleep(1.2)                 # nobody reads: the guest waits, then the timeout ends it
        before = self.read(out)
        self.assertEqual(p.wait(HANG_S), EXIT_TIMEOUT)
        self.assertIn(b'resume with kvmlite run --restore', p.stderr.read())
        status, rest = self.restore(snap)
        self.assertEqual(status, EXIT_STATUS)
        self.assertEqual(before + rest, expected_lines(self.LONG))

    def disk_image(self, name, size=64 << 10):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(os.urandom(size))
        with open(path, 'rb') as f:
            return path, f.read()

    def sector(self, path):
        with open(path, 'rb') as f:
            f.seek(DISK_SECTOR * 512)
            return f.read(512)

    def put_back(self, path, image):
        with open(path, 'r+b') as f:
            f.write(image)

    def restore_with(self, *args):
        return subprocess.run([sys.executable, 'kvmlite.py', 'run', '--restore', *args], cwd=ROOT,
                              capture_output=True, stdin=subprocess.DEVNULL, timeout=HANG_S)

    def test_restore_reopens_the_disks_and_each_restore_repeats_the_write(self):
        """The guest drives vda from before the snapshot point and writes a
        sector after it: --restore (no --disk) opens the image the snapshot
        names, and each restore writes that sector again."""
        kernel = os.path.join(self.tmp, 'disk.elf')
        with open(kernel, 'wb') as f:
            f.write(disk_guest(self.COUNT))
        disk, image = self.disk_image('vda.img')
        marker = DISK_MARKER + bytes(512 - len(DISK_MARKER))
        snap = os.path.join(self.tmp, 'disk.snap')
        p, out = self.start('-k', kernel, '--disk', disk, '--snapshot', snap)
        first = self.read(out, lines=100)
        p.send_signal(signal.SIGUSR2)
        until(lambda: os.path.exists(snap), 'snapshot file')
        full = first + self.read(out)
        self.assertEqual(p.wait(HANG_S), EXIT_STATUS, p.stderr.read())
        self.assertEqual(full, expected_lines(self.COUNT))
        self.assertEqual(self.sector(disk), marker)
        opened = snapshot.open_snapshot(snap)
        disks = opened.config['disks']
        opened.close()
        self.assertEqual([(d['slot'], d['path'], d['readonly'], d['size']) for d in disks],
                         [('vda', os.path.abspath(disk), False, len(image))])
        for _ in range(2):
            self.put_back(disk, image)                  # the write is undone
            r = self.restore_with(snap)
            self.assertEqual(r.returncode, EXIT_STATUS, r.stderr)
            self.assertTrue(0 < len(r.stdout) < len(full))
            self.assertEqual(full[len(full) - len(r.stdout):], r.stdout)
            self.assertEqual(self.sector(disk), marker, 'the restore did not write the disk')
            self.assertIn(b'disk vda', r.stderr)        # its mtime moved: a note says so
            with open(disk, 'rb') as f:
                after = f.read()
            self.assertEqual(after[:1024] + after[1536:], image[:1024] + image[1536:])
        # --disk in its place: a copy of the same size takes the write
        copy = os.path.join(self.tmp, 'copy.img')
        self.put_back(disk, image)
        with open(copy, 'wb') as f:
            f.write(image)
        r = self.restore_with(snap, '--disk', copy)
        self.assertEqual(r.returncode, EXIT_STATUS, r.stderr)
        self.assertEqual((self.sector(copy), self.sector(disk)), (marker, image[1024:1536]))

    def test_restore_refuses_a_missing_disk_or_one_of_another_size(self):
        disk, image = self.disk_image('small.img')
        m = kvmlite.Machine(mem_size=16 << 20, console=MemoryBackend(), kvm=kvm(),
                            disks=[DiskImage(disk, readonly=True)])
        with m:
            load_kernel(m, lines_guest(1))
            snap = m.snapshot(os.path.join(self.tmp, 'small.snap'))
        with open(disk, 'ab') as f:
            f.write(bytes(512))
        r = self.restore_with(snap)
        moved = disk + '.moved'
        os.rename(disk, moved)
        r2 = self.restore_with(snap)
        r3 = self.restore_with(snap, '--disk', moved)
        r4 = self.restore_with(snap, '--disk', moved + ',ro', '--disk', moved + ',ro')
        for run, words in ((r, ('disk vda', f'{len(image) + 512} bytes', f'{len(image)} when')),
                           (r2, ('disk vda', 'does not exist')), (r3, ('read-only',)),
                           (r4, ('1 disks', 'not 2'))):
            with self.subTest(words=words):
                lines = run.stderr.decode().splitlines()
                self.assertEqual((run.returncode, run.stdout, len(lines)), (2, b'', 1), lines)
                self.assertTrue(lines[0].startswith('kvmlite: snapshot '), lines)
                for w in words:
                    self.assertIn(w, lines[0])

    def test_restore_takes_no_machine_options(self):
        snap = os.path.join(self.tmp, 'none.snap')
        p = subprocess.run([sys.executable, 'kvmlite.py', 'run', '--restore', snap, '-m', '512',
                            '--irqchip', 'kernel'], cwd=ROOT, capture_output=True, timeout=HANG_S)
        self.assertEqual(p.returncode, 2)
        self.assertEqual(p.stderr.decode().strip(),
                         'kvmlite: --restore takes the machine from the snapshot: drop -m, --irqchip')
        p = subprocess.run([sys.executable, 'kvmlite.py', 'run', '--restore', snap], cwd=ROOT,
                           capture_output=True, timeout=HANG_S)
        self.assertEqual(p.returncode, 2)
        self.assertIn('cannot read snapshot', p.stderr.decode())


if __name__ == '__main__':
    unittest.main()
