"""A real guest drives virtio-blk through MMIO under KVM, in every irqchip
mode: a long-mode CPL0 program (tests/pcguest.py's runtime) negotiates
VIRTIO_F_VERSION_1, sets up an 8-entry split queue, reads sector 1 of a
real image file, waits for the used-buffer interrupt (ISA IRQ 5, the vda
slot of tools/layout.py), acks it, prints the sector's text and then
writes sector 2, which the host finds in the file."""

import io
import os
import tempfile
import unittest

import kvmlite
from devices.console import MemoryBackend
from devices.virtio_blk import DiskImage
from tests import pcguest
from tests.guest import kvm, requires_kvm
from tools.layout import PC
from tools.trace import Tracer, parse_filter

VDA = PC.device('vda')
GUEST = r'''
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
    mov eax, [rbx]
    cmp eax, 0x74726976             ; MagicValue
    jne fail
    cmp dword [rbx + 8], 2          ; DeviceID: block
    jne fail
    mov dword [rbx + 0x70], 0       ; reset, ACKNOWLEDGE, DRIVER
    mov dword [rbx + 0x70], 1
    mov dword [rbx + 0x70], 3
    mov dword [rbx + 0x24], 1       ; DriverFeatures[63:32] = VERSION_1
    mov dword [rbx + 0x20], 1
    mov dword [rbx + 0x70], 11      ; FEATURES_OK
    mov eax, [rbx + 0x70]
    test al, 8
    jz fail
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
    lea rsi, [irqs]
    call wait_for
    ret

vio_irq:
    mov eax, [rbx + 0x60]           ; InterruptStatus
    mov [rbx + 0x64], eax           ; InterruptACK
    inc qword [irqs]
    mov edi, VIRQ
    call irq_eoi
    ret

align 8
irqs: dq 0
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
'''


@requires_kvm
class VirtioBlkGuestTest(unittest.TestCase):

    def run_guest(self, mode, path, **machine):
        """Run the guest on the image at ``path``; returns (result, output,
        the vda device's counters, MMIO writes to its QueueNotify that
        reached kvmlite, notifications its queue thread served)."""
        source = GUEST % (VDA.mmio[0][1], VDA.irq, pcguest.PASSED)
        code, labels = pcguest.assemble(source)
        console = MemoryBackend()
        notify = VDA.mmio[0][1] + 0x50
        trace = io.StringIO()
        with kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=console,
                             kvm=kvm(), disks=[DiskImage(path)], **machine) as m:
            m.vm.write(pcguest.CODE, code)
            m.vm.write(pcguest.IDT, pcguest._idt(labels))
            kvmlite.setup_mode(m.vm.vcpus[0], m.vm, 'long64', labels['start'],
                               stack=pcguest.STACK)
            Tracer(trace, parse_filter(f'mmio:{notify:#x}-{notify + 3:#x}')).attach(m)
            result = m.run(timeout=30)
            vda = m.devices['vda']
            worker = m.workers.get('vda')
            counts = dict(reads=vda.reads, writes=vda.writes, refused=vda.refused,
                          problems=vda.check(), interrupts=vda.interrupts,
                          irqfd='vda' in m._irqfds)
            return (result, bytes(console.output), counts, trace.getvalue().count('mmio-write'),
                    worker.notified if worker is not None else None)

    def test_notifications_reach_the_queue_thread_without_an_exit(self):
        """split and kernel mode: KVM_IOEVENTFD takes the guest's two
        QueueNotify writes (none reaches kvmlite as an MMIO exit) and the
        device's thread serves them; in kernel mode the completions come
        back through KVM_IRQFD. user mode, and ioeventfd=False: two exits."""
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
                self.assertEqual(counts['irqfd'], fast and mode == 'kernel', what)

    def test_guest_reads_and_writes_a_real_file_in_every_mode(self):
        text = b'sector one says hello\n'
        for mode in pcguest.MODES:
            with self.subTest(mode=mode), tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, 'disk.img')
                image = bytearray(os.urandom(8 * 512))
                image[512:512 + len(text) + 1] = text + b'\0'
                with open(path, 'wb') as f:
                    f.write(image)
                source = GUEST % (VDA.mmio[0][1], VDA.irq, pcguest.PASSED)
                code, labels = pcguest.assemble(source)
                console = MemoryBackend()
                with kvmlite.Machine(mem_size=pcguest.MEM_SIZE, irqchip=mode, console=console,
                                     kvm=kvm(), disks=[DiskImage(path)]) as m:
                    m.vm.write(pcguest.CODE, code)
                    m.vm.write(pcguest.IDT, pcguest._idt(labels))
                    kvmlite.setup_mode(m.vm.vcpus[0], m.vm, 'long64', labels['start'],
                                       stack=pcguest.STACK)
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


if __name__ == '__main__':
    unittest.main()
