"""The console at its edges: a reader slower than the guest (pipe, FIFO,
file, an in-process sink), a reader that goes away (``| head -1``), and
kvmlite's own messages after a console line the guest left open. The CLI cases run the real
``kvmlite.py run`` as a subprocess; the in-process ones the real library on
real KVM. No assertion depends on how long anything takes: the sleeps only
make the reader slow, and the timeouts only guard against a hang."""

import os
import select
import subprocess
import sys
import threading
import time
import unittest

from devices import IrqLine
from devices.console import MemoryBackend
from devices.serial import (UART_IER, UART_IER_ETBEI, UART_IIR, UART_IIR_NO_INT, UART_IIR_THRI,
                            UART_LSR, UART_LSR_TEMT, UART_LSR_THRE, UART_MCR, UART_MCR_OUT2,
                            UART_THR, Serial)
from tests import test_cli_edges as cli_edges
from tests.guest import requires_kvm
from tests.pcguest import MODES, PASSED, STATUS_PASSED, run_guest
from tools.asm import assemble, assemble_with_labels
from tools.demo import elf64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_S = 60             # guards against a hang only
EXIT_VALUE = 0x21       # what the printing guests write to the debug-exit port
EXIT_STATUS = EXIT_VALUE << 1 | 1

# -- guests (flat real mode at 0x1000:0 unless said) --


def pattern(count):
    """What print_guest(count) writes: byte i is (i ^ i >> 8 ^ i >> 16) & 0xFF,
    so a lost, repeated or reordered stretch shows (its period is 2**24)."""
    return bytes((i ^ i >> 8 ^ i >> 16) & 0xFF for i in range(count))


def print_guest(count):
    """Writes pattern(count) to COM1, polling LSR.THRE before each byte as a
    console driver does, then writes EXIT_VALUE to the debug-exit port."""
    return assemble(f'''
        bits 16
        start:  xor ebx, ebx
        .poll:  mov dx, 0x3fd
                in al, dx
                test al, 0x20
                jz .poll
                mov eax, ebx
                shr eax, 16
                xor al, bl
                xor al, bh
                mov dx, 0x3f8
                out dx, al
                inc ebx
                cmp ebx, {count}
                jne .poll
                mov al, {EXIT_VALUE}
                out 0xf4, al
                cli
                hlt
    ''', bits=16)


def forever_guest():
    """Writes 'y\\n' to COM1 forever (LSR polled)."""
    return assemble('''
        bits 16
        .poll:  mov dx, 0x3fd
                in al, dx
                test al, 0x20
                jz .poll
                mov dx, 0x3f8
                mov al, 'y'
                out dx, al
                mov al, 10
                out dx, al
                jmp .poll
    ''', bits=16)


def text_then(text, tail):
    """Writes ``text`` to COM1 (LSR polled), then runs ``tail`` (16-bit asm)."""
    data = ', '.join(str(b) for b in text)
    return assemble(f'''
        bits 16
        start:  mov si, text
        .next:  mov dx, 0x3fd
        .poll:  in al, dx
                test al, 0x20
                jz .poll
                lodsb
                test al, al
                jz after
                mov dx, 0x3f8
                out dx, al
                jmp .next
        after:
        {tail}
        text:   db {data}, 0
    ''', bits=16)


HALT_WITH_INTERRUPTS_ON = '''
                sti
        .halt:  hlt
                jmp .halt
'''

LONG_ORIGIN = 0x100000


def long_mode_elf(body):
    """An ELF64 that tools.boot enters in long mode at CPL0; ``body`` at its
    entry. Returns (image, labels)."""
    code, labels = assemble_with_labels('bits 64\nstart:\n' + body, bits=64, origin=LONG_ORIGIN)
    return elf64(code, LONG_ORIGIN, labels['start']), labels


class CliCase(cli_edges.CliCase):
    """A scratch directory and files (as in tests.test_cli_edges), and a run
    of the real CLI whose output is read as it comes."""

    def command(self, kernel, *args, fmt='flat'):
        return [sys.executable, 'kvmlite.py', 'run', '-k', kernel, '--format', fmt, *args]

    def start(self, cmd, **kw):
        p = subprocess.Popen(cmd, cwd=ROOT, **kw)
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait()))
        return p

    def read_all(self, fd):
        """Everything from ``fd`` until EOF (guarded against a hang)."""
        data, give_up = bytearray(), time.monotonic() + HANG_S
        while True:
            ready, _, _ = select.select([fd], [], [], max(0, give_up - time.monotonic()))
            if not ready:
                self.fail(f'no EOF after {HANG_S} s; {len(data)} bytes so far')
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return bytes(data)
            data += chunk

    def assert_same_bytes(self, got, expected):
        if got != expected:
            first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b),
                         min(len(got), len(expected)))
            self.fail(f'{len(got)} bytes of {len(expected)}; the first difference at byte {first}')


@requires_kvm
class SlowReaderTest(CliCase):
    """A reader slower than the guest holds the guest (its UART stops
    reporting THR empty); every byte arrives, in order."""

    COUNT = 128_000

    def test_a_pipe_whose_reader_sleeps_12_s_gets_all_128000_bytes_in_order(self):
        kernel = self.file('print', print_guest(self.COUNT))
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        p = self.start(self.command(kernel, '--console', 'stdio'), stdin=subprocess.DEVNULL,
                       stdout=w, stderr=subprocess.PIPE)
        os.close(w)
        time.sleep(12)                  # the reader is slow: the guest must wait for it
        data = self.read_all(r)
        err = p.communicate(timeout=HANG_S)[1].decode()
        self.assertEqual(p.returncode, EXIT_STATUS, err)
        self.assert_same_bytes(data, pattern(self.COUNT))
        self.assertNotIn('Traceback', err)

    def test_a_fifo_console_file_with_a_slow_reader_gets_every_byte(self):
        kernel = self.file('print', print_guest(self.COUNT))
        fifo = os.path.join(self.tmp, 'fifo')
        os.mkfifo(fifo)
        r = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, r)
        p = self.start(self.command(kernel, '--console', fifo), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(6)
        data = self.read_all(r)
        out, err = p.communicate(timeout=HANG_S)
        self.assertEqual(p.returncode, EXIT_STATUS, err)
        self.assert_same_bytes(data, pattern(self.COUNT))
        self.assertEqual(out, b'', 'with --console FILE nothing goes to stdout')

    def test_a_console_file_gets_every_byte_in_order(self):
        kernel = self.file('print', print_guest(self.COUNT))
        log = self.file('console.log', b'before\n')
        p = subprocess.run(self.command(kernel, '--console', log), cwd=ROOT,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=HANG_S)
        self.assertEqual(p.returncode, EXIT_STATUS, p.stderr)
        with open(log, 'rb') as f:
            self.assert_same_bytes(f.read(), b'before\n' + pattern(self.COUNT))


class SlowSink(MemoryBackend):
    """A console whose reader takes ``step`` bytes every ``period`` seconds
    from a buffer of ``capacity`` bytes: room() says what fits; what a
    writer puts past it is dropped and counted."""

    def __init__(self, capacity=64, step=32, period=0.002):
        super().__init__()
        self.capacity, self.step, self.period = capacity, step, period
        self.held = bytearray()
        self.peak = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def room(self):
        with self.lock:
            return self.capacity - len(self.held)

    def write(self, data):
        with self.lock:
            fits = data[:self.capacity - len(self.held)]
            self.dropped += len(data) - len(fits)
            self.held += fits
            self.peak = max(self.peak, len(self.held))

    def _read(self):
        while not self.done.wait(self.period):
            with self.lock:
                taken = self.held[:self.step]
                del self.held[:self.step]
                self.output += taken
            if taken and self.wake is not None:
                self.wake()             # as a descriptor turning writable wakes the board

    def finish(self):
        self.done.set()
        self.reader.join()
        self.output += self.held
        self.held.clear()


# The pcguest runtime's putc does not poll LSR: these guests write COM1 themselves.
POLLED_SOURCE = '''
main:
    xor ebx, ebx
.poll:
    mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jz .poll
    mov eax, ebx
    shr eax, 8
    xor al, bl
    mov dx, 0x3f8
    out dx, al
    inc ebx
    cmp ebx, COUNT
    jne .poll
    mov al, PASSED
    ret
'''

# Linux's 8250 way: on each THRE interrupt, up to 16 bytes without looking at LSR
INTERRUPT_SOURCE = '''
main:
    mov byte [want_ioapic], 1
    call irq_setup
    mov edi, 4
    mov rsi, thre
    call irq_handler
    mov edi, 4
    xor esi, esi
    call irq_unmask
    mov dx, 0x3fc
    mov al, 0x08                ; OUT2: the UART's interrupt reaches IRQ 4
    out dx, al
    mov dx, 0x3f9
    mov al, 0x02                ; ETBEI: THR is empty, so THRE is pending at once
    out dx, al
    mov rsi, done
    mov ecx, 1
    call wait_for
    mov al, PASSED
    ret

thre:
    mov dx, 0x3fa
    in al, dx                   ; IIR: acknowledges THRE
    mov dx, 0x3fd
    in al, dx
    test al, 0x20
    jz .eoi                     ; THR still full: the next THRE interrupt says when
    mov ecx, 16
.byte:
    mov rax, [sent]
    cmp rax, COUNT
    jae .finished
    mov r8, rax
    shr r8, 8
    xor al, r8b
    mov dx, 0x3f8
    out dx, al
    inc qword [sent]
    dec ecx
    jnz .byte
    jmp .eoi
.finished:
    mov dx, 0x3f9
    xor al, al
    out dx, al                  ; ETBEI off: nothing more to send
    mov qword [done], 1
.eoi:
    mov edi, 4
    call irq_eoi
    ret
align 8
sent: dq 0
done: dq 0
'''


@requires_kvm
class SlowSinkTest(unittest.TestCase):
    """In process: COM1 into a sink that takes 64 bytes at most and is read
    32 bytes at a time. A polled guest and an interrupt-driven one (16
    bytes per THRE interrupt, unchecked) both get every byte through, in
    order, in every irqchip mode, and the sink never overflows."""

    COUNT = 3000

    def check(self, source):
        expected = bytes((i ^ i >> 8) & 0xFF for i in range(self.COUNT))
        for mode in MODES:
            with self.subTest(mode=mode):
                sink = SlowSink()
                try:
                    run = run_guest(source, mode, timeout=HANG_S, console=sink,
                                    symbols={'COUNT': self.COUNT, 'PASSED': PASSED})
                finally:
                    sink.finish()
                self.assertEqual(run.status, STATUS_PASSED, run.describe())
                self.assertEqual(sink.dropped, 0, f'{sink.dropped} bytes written past room()')
                self.assertEqual(bytes(sink.output), expected)
                self.assertLessEqual(sink.peak, sink.capacity)
                self.assertEqual(run.problems, [])

    def test_a_polled_guest_waits_for_the_sink(self):
        self.check(POLLED_SOURCE)

    def test_an_interrupt_driven_guest_gets_thre_when_the_sink_drains(self):
        self.check(INTERRUPT_SOURCE)


class GateSink:
    """A sink of ``capacity`` bytes that the test empties."""

    def __init__(self, capacity):
        self.capacity, self.held, self.asked = capacity, bytearray(), 0

    def room(self):
        self.asked += 1
        return self.capacity - len(self.held)

    def write(self, data):
        self.held += data


class UartFlowControlTest(unittest.TestCase):
    """The UART alone: THR counts as full while its sink has no room for a
    whole FIFO, and empties (THRE, TEMT, the THRE interrupt) once it has."""

    def setUp(self):
        self.sink, self.irq = GateSink(40), IrqLine()
        self.uart = Serial(irq=self.irq, out=self.sink)
        self.uart.write(UART_MCR, 1, UART_MCR_OUT2)
        self.uart.write(UART_IER, 1, UART_IER_ETBEI)

    def iid(self):
        return self.uart.read(UART_IIR, 1) & 0x0F

    def empty(self):
        return self.uart.read(UART_LSR, 1) & (UART_LSR_THRE | UART_LSR_TEMT)

    def test_a_full_sink_holds_thre_and_its_draining_raises_it(self):
        self.assertEqual(self.iid(), UART_IIR_THRI)         # acknowledged by the read
        written = 0
        while self.empty():
            self.uart.write(UART_THR, 1, written & 0xFF)
            written += 1
        self.assertEqual(written, 40 - 16 + 1, 'busy once less than a FIFO fits')
        self.assertEqual(self.iid(), UART_IIR_NO_INT)
        self.assertEqual(self.irq.level, 0)
        self.assertEqual(self.uart.check(), [])
        twin = Serial.from_state(self.uart.state(), out=self.sink)
        self.assertEqual(twin.read(UART_LSR, 1) & UART_LSR_THRE, 0, 'busy survives a snapshot')
        self.uart.tick()                                    # nothing drained yet
        self.assertEqual((self.empty(), self.irq.level), (0, 0))
        self.sink.held.clear()                              # the reader took it
        self.uart.tick()                                    # as the board does after a drain
        self.assertEqual(self.irq.level, 1)
        self.assertEqual(self.empty(), UART_LSR_THRE | UART_LSR_TEMT)
        self.assertEqual(self.iid(), UART_IIR_THRI)
        self.assertEqual(bytes(self.sink.held), b'')
        self.assertEqual(self.uart.check(), [])

    def test_an_lsr_poll_sees_the_room_come_back(self):
        for i in range(30):
            self.uart.write(UART_THR, 1, i)
        self.assertEqual(self.empty(), 0)
        del self.sink.held[:20]
        self.assertEqual(self.empty(), UART_LSR_THRE | UART_LSR_TEMT)

    def test_the_sink_is_asked_once_per_room_not_per_byte(self):
        self.sink.capacity = 1 << 20
        for i in range(10000):
            self.uart.write(UART_THR, 1, i & 0xFF)
            self.sink.held.clear()
        self.assertLessEqual(self.sink.asked, 2)


@requires_kvm
class ReaderGoneTest(CliCase):
    def test_head_dash_1_ends_an_endless_guest_with_status_0(self):
        # `kvmlite run | head -1`: the run ends once the reader has gone, with
        # the status of a pipeline's writer whose reader had enough (0), no traceback
        kernel = self.file('forever', forever_guest())
        p = self.start(self.command(kernel, '--console', 'stdio', '-v'), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        head = subprocess.run(['head', '-1'], stdin=p.stdout, capture_output=True, timeout=HANG_S)
        p.stdout.close()
        self.assertEqual(head.stdout, b'y\n')
        try:
            status = p.wait(HANG_S)
        except subprocess.TimeoutExpired:
            self.fail(f'the run went on for {HANG_S} s after its reader left')
        err = p.stderr.read().decode()
        p.stderr.close()
        self.assertEqual(status, 0, err)
        self.assertNotIn('Traceback', err)
        self.assertEqual(err, "kvmlite: the console's reader went away (EPIPE)\n")


@requires_kvm
class FreshLineTest(CliCase):
    def run_open_line(self, *args, stderr=subprocess.STDOUT):
        kernel = self.file('open-line', text_then(b'kvmlite demo', HALT_WITH_INTERRUPTS_ON))
        return subprocess.run(self.command(kernel, '--console', 'stdio', '--timeout', '0.3', *args),
                              cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=stderr, timeout=HANG_S)

    def test_a_message_after_an_open_console_line_starts_a_new_line(self):
        p = self.run_open_line()                    # 2>&1: one stream
        self.assertEqual(p.returncode, 124, p.stdout)
        self.assertTrue(p.stdout.startswith(b'kvmlite demo\nkvmlite: timeout after 0.3 s\n'),
                        p.stdout)

    def test_no_newline_is_added_where_the_streams_are_apart(self):
        p = self.run_open_line(stderr=subprocess.PIPE)
        self.assertEqual(p.stdout, b'kvmlite demo', 'the guest\'s bytes are left as they were')
        self.assertTrue(p.stderr.startswith(b'kvmlite: timeout after 0.3 s\n'), p.stderr)

    def test_a_closed_line_gets_no_extra_newline(self):
        kernel = self.file('closed-line', text_then(b'done\n', HALT_WITH_INTERRUPTS_ON))
        p = subprocess.run(self.command(kernel, '--console', 'stdio', '--timeout', '0.3'),
                           cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=HANG_S)
        self.assertTrue(p.stdout.startswith(b'done\nkvmlite: timeout'), p.stdout)


if __name__ == '__main__':
    unittest.main()
