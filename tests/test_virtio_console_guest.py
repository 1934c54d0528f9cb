"""A real guest uses the virtio console (hvc0) under KVM, in every irqchip
mode: a long-mode CPL0 program (tests/pcguest.py's runtime) negotiates
VIRTIO_F_VERSION_1, sets up the receiveq and the transmitq (4 entries
each), posts a 16-byte receive buffer, sends a greeting through the
transmitq and sleeps (sti; hlt, woken by the used-buffer interrupt on the
virtio_console slot's ISA IRQ, tools/layout.py) until the used ring says
the host took it, then until the host's input (typed before the guest had
any buffer: it waited) fills the receive buffer, and echoes that input back
through the transmitq."""

import unittest

from devices.console import MemoryBackend
from tests import pcguest
from tests.guest import requires_kvm
from tools.layout import PC

HVC = PC.device('virtio_console')
GREETING = b'hvc0 says hello\n'
TYPED = b'typed early\n'

GUEST = r'''
VIO equ %d
VIRQ equ %d
main:
    mov rbx, VIO
    mov edi, VIRQ
    call virtio_irq_on
    mov edx, 3                      ; DeviceID: console
    call virtio_start
    jz fail
    xor eax, eax                    ; queue 0: the receiveq, 4 entries
    mov ecx, 4
    lea rsi, [rxdesc]
    call virtio_queue
    mov eax, 1                      ; queue 1: the transmitq
    lea rsi, [txdesc]
    call virtio_queue
    mov dword [rbx + 0x70], 15      ; DRIVER_OK
    ; one 16-byte receive buffer (descriptor 0 of the receiveq: WRITE)
    lea rax, [rxbuf]
    mov [rxdesc], rax
    mov dword [rxdesc + 8], 16
    mov word [rxdesc + 12], 2
    mov word [rxdesc + 0x40 + 4], 0 ; avail.ring[0] = 0
    mov word [rxdesc + 0x40 + 2], 1 ; avail.idx = 1
    mov dword [rbx + 0x50], 0       ; QueueNotify(receiveq)
    ; the greeting through the transmitq
    lea rax, [greeting]
    mov edx, GREETING_LEN
    call send
    ; the input, typed before any buffer was posted, arrives now
    lea rsi, [rxdesc + 0x80 + 2]    ; receiveq used.idx
    mov ecx, 1
    call wait_used
    mov edx, [rxdesc + 0x80 + 8]    ; used.ring[0].len
    cmp edx, 16
    ja fail
    lea rax, [rxbuf]
    call send                       ; echo it
    mov al, %d
    ret
fail:
    call print
    db 'virtio console guest failed', 10, 0
    mov al, 0x21
    ret

send:                               ; rax buffer, edx length: one chain, then wait until used
    movzx ecx, word [txdesc + 0x40 + 2]
    mov edi, ecx
    and edi, 3
    shl edi, 4
    mov [txdesc + rdi], rax         ; descriptor (idx %% 4): readable
    mov [txdesc + rdi + 8], edx
    mov word [txdesc + rdi + 12], 0
    shr edi, 4
    mov edx, ecx
    and edx, 3
    mov [txdesc + 0x40 + 4 + rdx*2], di
    inc ecx
    mov [txdesc + 0x40 + 2], cx     ; avail.idx
    mov dword [rbx + 0x50], 1       ; QueueNotify(transmitq)
    lea rsi, [txdesc + 0x80 + 2]    ; transmitq used.idx
    call wait_used
    ret

wait_used:                          ; sleep until the word at [rsi] reaches cx
    cli
    cmp [rsi], cx
    jae .done
    sti                             ; the STI shadow covers HLT: no lost wake-up
    hlt
    jmp wait_used
.done:
    ret

greeting: db %s
GREETING_LEN equ $ - greeting
align 16
rxdesc: times 0xc0 db 0
align 16
txdesc: times 0xc0 db 0
rxbuf: times 16 db 0
''' + pcguest.VIRTIO_DRIVER


def guest_source():
    return GUEST % (HVC.mmio[0][1], HVC.irq, pcguest.PASSED, ', '.join(str(b) for b in GREETING))


def typed_console():
    console = MemoryBackend()
    console.feed(TYPED)                 # before the guest has a driver: it must wait
    return console


@requires_kvm
class VirtioConsoleGuestTest(unittest.TestCase):

    def test_output_and_waiting_input_in_every_mode(self):
        # (how many interrupts the guest takes is not fixed: its queue thread may
        # fill the used ring before the guest looks, and it then does not sleep)
        pcguest.run_in_every_mode(self, guest_source(), (GREETING + TYPED).decode(),
                                  console=typed_console, console_device='hvc')

    def test_without_hvc_the_slot_is_empty(self):
        run = pcguest.run_guest(guest_source(), 'split')
        self.assertEqual(run.output, b'virtio console guest failed\n', run.describe())


if __name__ == '__main__':
    unittest.main()
