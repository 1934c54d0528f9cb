"""``run --console-device hvc`` from the command line (real subprocesses):
the virtio console is the terminal's, on a real pty, and keeps the UART's
promise to a slow pipe reader; bad values are one line and status 2.

The guest is an ELF64 entered in long mode at CPL0 that drives the
virtio console as Linux's hvc does, without interrupts: each transmit
chain is made available, notified, and waited for by polling the used
ring. No assertion depends on how long anything takes: the sleep only
makes the reader slow, the timeouts only guard against a hang."""

import os
import subprocess
import sys
import time
import unittest

from tests.guest import requires_kvm
from tests.pcguest import VIRTIO_MMIO
from tests.test_console_edges import HANG_S, CliCase, pattern
from tests.test_terminal import Session
from tools.asm import assemble_with_labels
from tools.demo import elf64
from tools.layout import PC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGIN = 0x100000
EXIT_VALUE = 0x2A
EXIT_STATUS = EXIT_VALUE << 1 | 1
CHUNK = 1000                        # bytes per transmit chain of the flood

GUEST = r'''
bits 64
VIO equ {vio}
start:
    mov rbx, VIO
    mov edx, 3                      ; DeviceID: console (else: exit 0x21)
    call virtio_start
    jz fail
    xor eax, eax                    ; the receiveq and the transmitq, 4 entries each
    mov ecx, 4
    lea rsi, [rxq]
    call virtio_queue
    mov eax, 1
    lea rsi, [txq]
    call virtio_queue
    mov dword [rbx + 0x70], 15      ; DRIVER_OK
    lea rax, [prompt]
    mov edx, prompt_end - prompt
    call send
    mov ecx, {flood}                ; the flood: pattern bytes, CHUNK per chain
    lea r12, [data]
.flood:
    test ecx, ecx
    jz .read
    mov edx, {chunk}
    cmp ecx, edx
    cmovb edx, ecx
    sub ecx, edx
    mov rax, r12
    add r12, rdx
    push rcx
    call send
    pop rcx
    jmp .flood
.read:
    cmp byte [echo], 0
    je done
    lea rax, [rxbuf]                ; one receive buffer for a line
    mov [rxq], rax
    mov dword [rxq + 8], 64
    mov word [rxq + 12], 2          ; WRITE
    mov word [rxq + 0x40 + 4], 0
    mov word [rxq + 0x40 + 2], 1
    mov dword [rbx + 0x50], 0       ; QueueNotify(receiveq)
.wait:
    cmp word [rxq + 0x80 + 2], 1    ; used.idx: the host's input is in
    jb .wait
    lea rax, [got]
    mov edx, got_end - got
    call send
    lea rax, [rxbuf]
    mov edx, [rxq + 0x80 + 8]       ; used.ring[0].len
    call send
done:
    mov al, {exit}
    out 0xf4, al
fail:
    mov al, 0x21
    out 0xf4, al

send:                               ; rax buffer, edx length; returns once the host used it
    movzx ecx, word [txq + 0x40 + 2]
    mov edi, ecx
    and edi, 3
    shl edi, 4
    mov [txq + rdi], rax
    mov [txq + rdi + 8], edx
    mov word [txq + rdi + 12], 0
    shr edi, 4
    mov edx, ecx
    and edx, 3
    mov [txq + 0x40 + 4 + rdx*2], di
    inc ecx
    mov [txq + 0x40 + 2], cx
    mov dword [rbx + 0x50], 1       ; QueueNotify(transmitq)
.poll:
    cmp [txq + 0x80 + 2], cx        ; used.idx: as Linux's hvc, spin until the host took it
    jb .poll
    ret
''' + VIRTIO_MMIO + r'''
echo: db {echo}
prompt: db 'hvc0 login: '
prompt_end:
got: db 'got: '
got_end:
align 16
rxq: times 0xc0 db 0
align 16
txq: times 0xc0 db 0
rxbuf: times 64 db 0
align 16
data:
'''


def hvc_guest(flood=0, echo=True):
    """The ELF image: prompt, ``flood`` bytes of pattern(), then (with
    ``echo``) one line of input echoed back after 'got: '."""
    source = GUEST.format(vio=PC.device('virtio_console').mmio[0][1], flood=flood, chunk=CHUNK,
                          exit=EXIT_VALUE, echo=1 if echo else 0)
    code, labels = assemble_with_labels(source, bits=64, origin=ORIGIN)
    assert len(code) == labels['data'] - ORIGIN
    return elf64(code + pattern(flood), ORIGIN, labels['start'])


class HvcCase(CliCase):
    def hvc(self, kernel, *args):
        return self.command(kernel, '--console-device', 'hvc', *args, fmt='elf')


@requires_kvm
class HvcSlowReaderTest(HvcCase):

    COUNT = 128_000         # more than a pipe (64 KiB) and the console's buffer (32 KiB) hold

    def test_a_pipe_whose_reader_sleeps_gets_every_byte_in_order(self):
        kernel = self.file('flood.elf', hvc_guest(self.COUNT, echo=False))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        p = self.start(self.hvc(kernel, '--console', 'stdio'), stdin=subprocess.DEVNULL,
                       stdout=w, stderr=subprocess.PIPE)
        os.close(w)
        time.sleep(3)                   # the reader is slow: the guest must wait for it
        data = self.read_all(r)
        err = p.communicate(timeout=HANG_S)[1].decode()
        self.assertEqual(p.returncode, EXIT_STATUS, err)
        self.assert_same_bytes(data, b'hvc0 login: ' + pattern(self.COUNT))

    def test_without_hvc_the_guest_finds_no_console(self):
        kernel = self.file('echo.elf', hvc_guest())
        p = subprocess.run(self.command(kernel, '--console', 'none', fmt='elf'), cwd=ROOT,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=HANG_S)
        self.assertEqual(p.returncode, 0x21 << 1 | 1, p.stderr)


@requires_kvm
class HvcTerminalTest(HvcCase):

    def test_a_line_typed_on_the_terminal_reaches_hvc0(self):
        kernel = self.file('echo.elf', hvc_guest())
        s = Session(self, kernel, '--format', 'elf', '--console-device', 'hvc')
        s.read_until(b'hvc0 login: ')
        self.assertTrue(s.is_raw(), 'the console did not go raw')
        s.type(b'root\r')
        s.read_until(b'got: root\r')
        status, err = s.finish()
        self.assertEqual(status, EXIT_STATUS, err)


class HvcOptionTests(unittest.TestCase):

    def test_an_unknown_console_device_is_one_line_and_status_2(self):
        p = subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run',
                            '--console-device', 'ttyS1'], capture_output=True, text=True,
                           timeout=HANG_S)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertEqual(len(p.stderr.splitlines()), 1, p.stderr)
        self.assertIn("invalid choice: 'ttyS1'", p.stderr)
        self.assertTrue(p.stderr.startswith('kvmlite: '), p.stderr)


if __name__ == '__main__':
    unittest.main()
