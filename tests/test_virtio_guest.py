"""A real guest drives virtio-blk through MMIO under KVM, in every irqchip
mode: a long-mode CPL0 program (tests/pcguest.py's runtime) negotiates
VIRTIO_F_VERSION_1, sets up an 8-entry split queue, reads sector 1 of a
real image file, waits for the used-buffer interrupt (ISA IRQ 5, the vda
slot of tools/layout.py), acks it, prints the sector's text and then
writes sector 2, which the host finds in the file."""

import io
import os
import tempfile
import threading
import time
import unittest

import kvmlite
from devices.console import MemoryBackend
from devices.virtio_blk import BytesDisk, DiskImage
from tests import pcguest
from tests.guest import kvm, requires_kvm
from tools.layout import PC
from tools.trace import Tracer, parse_filter

HANG_S = 60

VDA = PC.device('vda')
GUEST = r'''
VIO equ %d
VIRQ equ %d
main:
    mov rbx, VIO
    mov edi, VIRQ
    call virtio_irq_on
    mov edx, 2                      ; DeviceID: block
    call virtio_start
    jz fail
    xor eax, eax                    ; queue 0: 8 entries at desc (avail, used follow)
    mov ecx, 8
    lea rsi, [desc]
    call virtio_queue
    mov dword [rbx + 0x70], 15      ; DRIVER_OK
    ; request 1: read sector 1 (header, 512 bytes in, status)
    mov rcx, 1
    call request
    cmp byte [status], 0
    jne fail
    lea rsi, [buffer]
    call puts
    ; request 2: write sector 2 from the buffer after changing it
    mov dword [header], 1           ; VIRTIO_BLK_T_OUT
    mov qword [header + 8], 2
    mov dword [buffer], 'WROT'
    mov word [desc + 16 + 12], 1    ; data descriptor: device-readable, NEXT
    mov rcx, 2
    call request
    cmp byte [status], 0
    jne fail
    cmp word [used + 2], 2
    jne fail
    mov al, %d
    ret
fail:
    call print
    db 'virtio guest failed', 10, 0
    mov al, 0x21
    ret

request:                            ; rcx: interrupts to wait for
    mov byte [status], 0xff
    mov ax, [avail + 2]
    movzx edx, ax
    and edx, 7
    mov word [avail + 4 + rdx*2], 0 ; head descriptor 0
    inc ax
    mov [avail + 2], ax
    mov dword [rbx + 0x50], 0       ; QueueNotify
    lea rsi, [virtio_irqs]
    call wait_for
    ret

align 8
header: dd 0, 0
        dq 1
status: db 0xff
align 16
desc:
    dq header
    dd 16
    dw 1, 1                          ; NEXT, next 1
    dq buffer
    dd 512
    dw 3, 2                          ; WRITE | NEXT, next 2
    dq status
    dd 1
    dw 2, 0                          ; WRITE
    times 5 dq 0, 0
avail: dw 0, 0                      ; desc + 16 * 8
    times 62 dw 0
used: dw 0, 0                       ; desc + 32 * 8
    times 8 dq 0
    dw 0
align 16
buffer: times 512 db 0
''' + pcguest.VIRTIO_DRIVER


def guest_source():
    return GUEST % (VDA.mmio[0][1], VDA.irq, pcguest.PASSED)


@requires_kvm
class VirtioBlkGuestTest(unittest.TestCase):

    def run_guest(self, mode, path, **machine):
        """Run the guest on the image at ``path``; returns (result, output,
        the vda device's counters, MMIO writes to its QueueNotify that
        reached kvmlite, notifications its queue thread served)."""
        console = MemoryBackend()
        notify = VDA.mmio[0][1] + 0x50
        trace = io.StringIO()
        with kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=console,
                             kvm=kvm(), disks=[DiskImage(path)], **machine) as m:
            pcguest.load_guest(m, guest_source())
            Tracer(trace, parse_filter(f'mmio:{notify:#x}-{notify + 3:#x}')).attach(m)
            result = m.run(timeout=30)
            vda = m.devices['vda']
            worker = m.workers.get('vda')
            counts = dict(reads=vda.reads, writes=vda.writes, refused=vda.refused,
                          problems=vda.check(), interrupts=vda.interrupts,
                          irqfd=m.stats()['irqfd'].get('vda'),
                          ioapic_msis=m.ioapic.delivered if m.ioapic is not None else None)
            return (result, bytes(console.output), counts, trace.getvalue().count('mmio-write'),
                    worker.notified if worker is not None else None)

    def test_notifications_reach_the_queue_thread_without_an_exit(self):
        """split and kernel mode: KVM_IOEVENTFD takes the guest's two
        QueueNotify writes (none reaches kvmlite as an MMIO exit) and the
        device's thread serves them, and the two completions come back
        through KVM_IRQFD (split mode: on the MSI route of the pin's edge
        entry, so the Python IOAPIC sends nothing). user mode, and
        ioeventfd=False: two exits, and no irqfd."""
        text = b'sector one says hello\n'
        for mode, ioeventfd in (('split', True), ('kernel', True), ('user', True),
                                ('split', False)):
            with self.subTest(mode=mode, ioeventfd=ioeventfd), \
                    tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, 'disk.img')
                image = bytearray(8 * 512)
                image[512:512 + len(text) + 1] = text + b'\0'
                with open(path, 'wb') as f:
                    f.write(image)
                result, output, counts, exits, served = self.run_guest(mode, path,
                                                                       ioeventfd=ioeventfd)
                what = f'{mode}: {result} {output!r} {counts}'
                self.assertEqual(result.status, pcguest.STATUS_PASSED, what)
                self.assertEqual(output, text, what)
                self.assertEqual((counts['reads'], counts['writes'], counts['refused']), (1, 1, 0),
                                 what)
                self.assertEqual(counts['interrupts'], 2, what)
                fast = mode != 'user' and ioeventfd
                self.assertEqual(exits, 0 if fast else 2, what)
                self.assertEqual(served, 2 if fast else None, what)
                self.assertEqual(counts['irqfd'], 2 if fast else None, what)
                if mode == 'split':
                    self.assertEqual(counts['ioapic_msis'], 0 if fast else 2, what)

    def test_guest_reads_and_writes_a_real_file_in_every_mode(self):
        text = b'sector one says hello\n'
        for mode in pcguest.MODES:
            with self.subTest(mode=mode), tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, 'disk.img')
                image = bytearray(os.urandom(8 * 512))
                image[512:512 + len(text) + 1] = text + b'\0'
                with open(path, 'wb') as f:
                    f.write(image)
                console = MemoryBackend()
                with kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=console,
                                     kvm=kvm(), disks=[DiskImage(path)]) as m:
                    pcguest.load_guest(m, guest_source())
                    result = m.run(timeout=30)
                    vda = m.devices['vda']
                    what = f'{mode}: {result} output {bytes(console.output)!r}, {vda.state()}'
                    self.assertEqual(result.status, pcguest.STATUS_PASSED, what)
                    self.assertEqual(bytes(console.output), text, what)
                    self.assertEqual((vda.reads, vda.writes, vda.refused), (1, 1, 0), what)
                    self.assertEqual(vda.check(), [], what)
                with open(path, 'rb') as f:
                    after = f.read()
                written = b'WROT' + text[4:] + b'\0'
                self.assertEqual(after[1024:1024 + len(written)], written)
                self.assertEqual(after[:1024], bytes(image[:1024]))
                self.assertEqual(after[1536:], bytes(image[1536:]))
                self.assertEqual(after[1024 + len(written):1536], bytes(image[512 + len(written):1024]))



# The interrupt's paths, phase by phase (one read of sector 1 per request):
# A an edge entry: the interrupt arrives; B the entry masked: the edge is
# lost (datasheet), the guest polls the used ring and acks, unmasks, and
# the next request interrupts again; C a level entry, masked: the interrupt
# is held and unmasking delivers it; D level: a handler that sends its EOI
# without acking gets the interrupt again (the line is still high); E back
# to edge. Between A and B the guest prints 'A' and spins until the host
# sets [go], so a test can snapshot it there.
PHASES = r"""
VIO equ %d
VIRQ equ %d
main:
    mov byte [want_ioapic], 1
    call irq_setup
    mov edi, VIRQ
    lea rsi, [vio_irq]
    call irq_handler
    mov edi, VIRQ
    xor esi, esi
    call irq_unmask
    mov rbx, VIO
    mov dword [rbx + 0x70], 0       ; reset, ACKNOWLEDGE, DRIVER
    mov dword [rbx + 0x70], 1
    mov dword [rbx + 0x70], 3
    mov dword [rbx + 0x24], 1       ; VERSION_1
    mov dword [rbx + 0x20], 1
    mov dword [rbx + 0x70], 11      ; FEATURES_OK
    mov dword [rbx + 0x30], 0       ; queue 0: 8 entries
    mov dword [rbx + 0x38], 8
    lea rax, [desc]
    mov [rbx + 0x80], eax
    mov dword [rbx + 0x84], 0
    lea rax, [avail]
    mov [rbx + 0x90], eax
    mov dword [rbx + 0x94], 0
    lea rax, [used]
    mov [rbx + 0xa0], eax
    mov dword [rbx + 0xa4], 0
    mov dword [rbx + 0x44], 1       ; QueueReady
    mov dword [rbx + 0x70], 15      ; DRIVER_OK
    mov byte [phase], 'A'
    call request
    mov al, 'A'
    call putc
.spin:
    cmp byte [go], 0
    je .spin
    mov byte [phase], 'B'
    mov edi, VIRQ
    call irq_mask
    mov r12, [irqs]
    call request_polled
    call settle
    cmp [irqs], r12
    jne fail
    mov eax, [rbx + 0x60]
    mov [rbx + 0x64], eax           ; InterruptACK: the line falls
    mov edi, VIRQ
    xor esi, esi
    call irq_unmask
    call request
    mov byte [phase], 'C'
    mov edi, VIRQ
    mov esi, 0x18000                ; level, masked
    call irq_unmask
    mov r12, [irqs]
    call request_polled
    call settle
    cmp [irqs], r12
    jne fail
    mov rcx, [acks]
    inc rcx
    mov edi, VIRQ
    mov esi, LEVEL
    call irq_unmask                 ; the held interrupt comes now
    lea rsi, [acks]
    call wait_for
    mov byte [phase], 'D'
    mov byte [skip_ack], 1
    call request
    cmp qword [skipped], 1          ; its first delivery went unacked
    jne fail
    mov byte [phase], 'E'
    mov edi, VIRQ
    xor esi, esi
    call irq_unmask
    call request
    cmp word [used + 2], 6
    jne fail
    call print
    db 'BCDE', 10, 0
    mov al, %d
    ret
fail:
    call print
    db 'failed in phase ', 0
    mov al, [phase]
    call putc
    call print
    db ' after ', 0
    mov rax, [irqs]
    call putdec
    call print
    db ' interrupts', 10, 0
    mov al, 0x21
    jmp exit

submit:
    mov byte [status], 0xff
    mov ax, [avail + 2]
    movzx edx, ax
    and edx, 7
    mov word [avail + 4 + rdx*2], 0 ; head descriptor 0
    inc ax
    mov [avail + 2], ax
    mov dword [rbx + 0x50], 0       ; QueueNotify
    ret

request:                            ; wait for the interrupt that acks the completion
    mov rcx, [acks]
    inc rcx
    call submit
    lea rsi, [acks]
    call wait_for
    cmp byte [status], 0
    jne fail
    ret

request_polled:                     ; no interrupt expected: poll the used ring
    call submit
.poll:
    cmp [used + 2], ax
    jne .poll
    cmp byte [status], 0
    jne fail
    mov eax, [rbx + 0x60]           ; the device's line is high
    test eax, 1
    jz fail
    ret

settle:                             ; an interrupt already on its way is taken here
    sti
    nop
    nop
    nop
    cli
    ret

vio_irq:
    inc qword [irqs]
    mov eax, [rbx + 0x60]           ; InterruptStatus
    test eax, eax
    jz .eoi                         ; nothing to ack (a repeat after an early EOI)
    cmp byte [skip_ack], 0
    jne .no_ack
    mov [rbx + 0x64], eax           ; InterruptACK
    inc qword [acks]
    jmp .eoi
.no_ack:
    mov byte [skip_ack], 0
    inc qword [skipped]
.eoi:
    mov edi, VIRQ
    call irq_eoi
    ret

align 8
irqs: dq 0
acks: dq 0
skipped: dq 0
go: db 0
phase: db 0
skip_ack: db 0
align 8
header: dd 0, 0
        dq 1
status: db 0xff
align 16
desc:
    dq header
    dd 16
    dw 1, 1                          ; NEXT, next 1
    dq buffer
    dd 512
    dw 3, 2                          ; WRITE | NEXT, next 2
    dq status
    dd 1
    dw 2, 0                          ; WRITE
    times 5 dq 0, 0
align 16
avail: dw 0, 0
    times 9 dw 0
align 16
used: dw 0, 0
    times 8 dq 0
    dw 0
align 16
buffer: times 512 db 0
"""


def until(predicate, what):
    give_up = time.monotonic() + HANG_S
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError(f'no {what} after {HANG_S} s')
        time.sleep(0.005)


@requires_kvm
class VirtioInterruptPathTest(unittest.TestCase):
    """The virtio-blk interrupt through each irqchip mode's path, with the
    guest masking and reprogramming its IOAPIC entry (PHASES): split mode
    sends it with KVM_IRQFD on an MSI route built from the entry while that
    is edge and unmasked (the Python IOAPIC sends none of those), through
    the Python IOAPIC otherwise; kernel mode with a resampling irqfd. The
    counts come from the board and Machine.stats()."""

    def machine(self, mode, **kw):
        m = kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=MemoryBackend(),
                            kvm=kvm(), disks=[BytesDisk(bytes(8 * 512))], **kw)
        self.labels = pcguest.load_guest(m, PHASES % (VDA.mmio[0][1], VDA.irq, pcguest.PASSED))[1]
        return m

    def go(self, m):
        m.vm.write(self.labels['go'], b'\x01')

    def run_phases(self, m):
        """Run to the end, letting the guest past its spin after phase A;
        returns (result, the Python IOAPIC's messages by then)."""
        result = {}
        t = threading.Thread(target=lambda: result.update(r=m.run(timeout=HANG_S)), daemon=True)
        t.start()
        until(lambda: bytes(m.console.output).startswith(b'A') or not t.is_alive(), 'phase A')
        sent = m.ioapic.delivered if m.ioapic is not None else None
        self.go(m)
        t.join(HANG_S)
        return result['r'], sent

    def check_run(self, m, result, what=''):
        out = bytes(m.console.output)
        what = f'{m.mode}{what}: {result} {out!r}'
        self.assertEqual(result.status, pcguest.STATUS_PASSED, what)
        self.assertTrue(out.endswith(b'BCDE\n'), what)
        self.assertEqual(m.vda.reads, 6, what)
        self.assertEqual(m.vda.check(), [], what)

    def test_every_path_in_split_and_kernel_mode(self):
        for mode, irqfd in (('split', True), ('split', False), ('kernel', True), ('kernel', False)):
            with self.subTest(mode=mode, irqfd=irqfd), self.machine(mode, irqfd=irqfd) as m:
                result, sent_in_a = self.run_phases(m)
                self.check_run(m, result)
                stats = m.stats()
                signals = m.irqfd_signals.get('vda', 0)
                what = f'{mode} irqfd={irqfd}: {m.irqfd_signals}, stats {stats["irqfd"]}'
                self.assertEqual(stats['irqfd'], {'vda': signals} if irqfd else {}, what)
                # the QueueNotify writes never exit (KVM_IOEVENTFD): the MMIO exits are the
                # guest's register accesses and those of the IOAPIC (split mode)
                self.assertEqual(m.workers['vda'].notified, 6, what)
                if mode == 'split':
                    # phase A's interrupt: the irqfd's MSI route, or the Python IOAPIC
                    self.assertEqual(sent_in_a, 0 if irqfd else 1, what)
                    # A, the request after B, E: the irqfd; C and D: the Python IOAPIC (level)
                    self.assertEqual(signals, 3 if irqfd else 0, what)
                    self.assertGreaterEqual(m.ioapic.delivered, 3 if irqfd else 6, what)
                    self.assertEqual(stats['ioapic_msis'], m.ioapic.delivered, what)
                else:
                    self.assertIsNone(stats['ioapic_msis'])
                    # four rises on an edge entry (B's masked one is lost); C and D's
                    # level entry has the line held high with KVM_IRQ_LINE
                    self.assertEqual((signals, m.irq_line_rises), (4, 2) if irqfd else (0, 0), what)

    def test_snapshot_restore_and_reset_to_keep_the_paths(self):
        """Snapshotted (and checkpointed) in its spin after phase A, with its
        entry live on the irqfd route: each restore, and a reset_to after
        the original ended, runs phases B to E."""
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode), self.machine(mode) as m:
                t = threading.Thread(target=lambda: setattr(self, 'first', m.run(timeout=HANG_S)),
                                     daemon=True)
                t.start()
                until(lambda: bytes(m.console.output).startswith(b'A'), 'phase A')
                buf = io.BytesIO()
                m.snapshot(buf)
                cp = m.checkpoint()
                self.go(m)
                t.join(HANG_S)
                self.check_run(m, self.first)
                for n in range(2):
                    con = MemoryBackend()
                    with kvmlite.Machine.restore(io.BytesIO(buf.getvalue()), console=con, kvm=kvm(),
                                                 disks=[BytesDisk(bytes(8 * 512))]) as r:
                        self.go(r)
                        result = r.run(timeout=HANG_S)
                        r.console.output[:0] = b'A'     # printed before the snapshot
                        self.check_run(r, result, f' restore {n}')
                        self.assertEqual(r.vda.reads, 6)
                        self.assertEqual(r.irqfd_signals['vda'], 2 if mode == 'split' else 3)
                m.reset_to(cp)
                m.console.output.clear()
                m.console.output += b'A'
                self.go(m)
                self.check_run(m, m.run(timeout=HANG_S), ' after reset_to')


if __name__ == '__main__':
    unittest.main()
