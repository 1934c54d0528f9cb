"""Tests for the 16550A UART (devices.serial) and its back ends
(devices.console)."""

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import textwrap
import unittest

from devices import IrqLine, SteppedClock
from tools.layout import PC
from devices.console import (EscapeFilter, FileBackend, MemoryBackend,
                             PtyBackend, SocketBackend, TerminalBackend)
from devices.serial import (
    BAUD_BASE, FIFO_SIZE, Serial,
    UART_FCR, UART_IER, UART_IIR, UART_LCR, UART_LSR, UART_MCR, UART_MSR,
    UART_RBR, UART_SCR, UART_THR, UART_DLL, UART_DLM,
    UART_IER_ERBFI, UART_IER_ETBEI, UART_IER_ELSI, UART_IER_EDSSI,
    UART_IIR_NO_INT, UART_IIR_RLSI, UART_IIR_RDI, UART_IIR_CTI,
    UART_IIR_THRI, UART_IIR_MSI, UART_IIR_FIFO,
    UART_FCR_ENABLE, UART_FCR_CLEAR_RX,
    UART_LCR_DLAB, UART_MCR_DTR, UART_MCR_RTS, UART_MCR_OUT1, UART_MCR_OUT2,
    UART_MCR_LOOP, UART_LSR_DR, UART_LSR_OE, UART_LSR_BI, UART_LSR_THRE,
    UART_LSR_TEMT, UART_LSR_FIFOE, UART_MSR_DCTS, UART_MSR_DDSR,
    UART_MSR_TERI, UART_MSR_DDCD, UART_MSR_CTS, UART_MSR_DSR, UART_MSR_RI,
    UART_MSR_DCD)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT_S = 10     # guard against a hang only; no assertion depends on time


def timeout_ns(divisor):
    """Four character times of 10 bits at 115200/divisor baud."""
    return 4 * (10 * divisor * 1_000_000_000 // BAUD_BASE)


def wait_readable(fd):
    readable, _, _ = select.select([fd], [], [], WAIT_S)
    if not readable:
        raise AssertionError(f'fd {fd} never became readable')


class Uart:
    """A Serial with a line, a memory sink and a stepped clock."""

    def __init__(self, fifo=False, divisor=1):
        self.irq = IrqLine()
        self.out = MemoryBackend()
        self.clock = SteppedClock()
        self.dev = Serial(irq=self.irq, out=self.out, clock=self.clock)
        self.set_divisor(divisor)
        if fifo:
            self.wr(UART_FCR, UART_FCR_ENABLE)

    def rd(self, reg):
        return self.dev.read(reg, 1)

    def wr(self, reg, value):
        self.dev.write(reg, 1, value)

    def set_divisor(self, divisor):
        lcr = self.rd(UART_LCR)
        self.wr(UART_LCR, lcr | UART_LCR_DLAB)
        self.wr(UART_DLL, divisor & 0xFF)
        self.wr(UART_DLM, divisor >> 8)
        self.wr(UART_LCR, lcr)

    def iid(self):
        """IIR without the FIFO bits."""
        return self.rd(UART_IIR) & 0x0F


def linux_autoconfig(u):
    """The probe steps of Linux's 8250 autoconfig(), reduced to the verdict."""
    saved_ier = u.rd(UART_IER)
    u.wr(UART_IER, 0)
    none = u.rd(UART_IER) & 0x0F
    u.wr(UART_IER, 0x0F)
    every = u.rd(UART_IER) & 0x0F
    u.wr(UART_IER, saved_ier)
    if none != 0 or every != 0x0F:
        return 'absent'
    saved_mcr = u.rd(UART_MCR)
    u.wr(UART_MCR, UART_MCR_LOOP | UART_MCR_OUT2 | UART_MCR_RTS)
    status = u.rd(UART_MSR) & 0xF0
    u.wr(UART_MCR, saved_mcr)
    if status != UART_MSR_DCD | UART_MSR_CTS:
        return 'no loopback'
    u.wr(UART_LCR, 0xBF)        # EFR access on the 16650 family
    u.wr(2, 0)                  # EFR = 0; here that is FCR = 0
    u.wr(UART_LCR, 0)
    u.wr(UART_FCR, UART_FCR_ENABLE)
    kind = u.rd(UART_IIR) >> 6
    if kind == 0:
        u.wr(UART_SCR, 0xA5)
        first = u.rd(UART_SCR)
        u.wr(UART_SCR, 0x5A)
        return '16450' if (first, u.rd(UART_SCR)) == (0xA5, 0x5A) else '8250'
    if kind != 3:
        return {1: 'unknown', 2: '16550'}[kind]
    u.wr(UART_FCR, UART_FCR_ENABLE | 0x20)      # 16750: 64-byte FIFO bit
    plain = u.rd(UART_IIR) >> 5
    u.wr(UART_LCR, UART_LCR_DLAB)
    u.wr(UART_FCR, UART_FCR_ENABLE | 0x20)
    with_dlab = u.rd(UART_IIR) >> 5
    u.wr(UART_LCR, 0)
    u.wr(UART_FCR, UART_FCR_ENABLE)
    if (plain, with_dlab) == (6, 7):
        return '16750'
    u.wr(UART_IER, 0x40)                        # XScale UUE bit
    if u.rd(UART_IER) & 0x40:
        return 'xscale'
    u.wr(UART_IER, 0)
    return '16550A'


class LinuxProbeTest(unittest.TestCase):
    def test_com_ports_are_the_pc_map(self):
        coms = [PC.device(f'com{i}') for i in range(1, 5)]
        self.assertEqual([(s.pio[0][1], s.irq) for s in coms],
                         [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)])
        self.assertEqual({s.part for s in coms}, {'serial.Serial'})
        self.assertEqual(Serial.SIZE, 8)

    def test_linux_autoconfig_finds_a_16550a(self):
        u = Uart()
        self.assertEqual(linux_autoconfig(u), '16550A')
        self.assertEqual(u.dev.check(), [])

    def test_iir_fifo_bits_read_0b11_only_with_fifos_on(self):
        u = Uart()
        self.assertEqual(u.rd(UART_IIR), UART_IIR_NO_INT)
        u.wr(UART_FCR, UART_FCR_ENABLE)
        self.assertEqual(u.rd(UART_IIR), UART_IIR_FIFO | UART_IIR_NO_INT)
        u.wr(UART_FCR, 0)
        self.assertEqual(u.rd(UART_IIR) >> 6, 0)

    def test_scratch_register_keeps_what_is_written(self):
        u = Uart()
        for pattern in (0xA5, 0x5A, 0x00, 0xFF):
            u.wr(UART_SCR, pattern)
            self.assertEqual(u.rd(UART_SCR), pattern)

    def test_loopback_probe_reads_cts_and_dcd(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_LOOP | UART_MCR_OUT2 | UART_MCR_RTS)
        self.assertEqual(u.rd(UART_MSR) & 0xF0, 0x90)
        u.wr(UART_MCR, 0)
        self.assertEqual(u.rd(UART_MSR) & 0xF0,
                         UART_MSR_CTS | UART_MSR_DSR | UART_MSR_DCD)

    def test_fifo_size_probe_in_loopback_counts_16(self):
        # Linux's size_fifo(): fill through loopback, count what comes back.
        u = Uart(fifo=True)
        u.wr(UART_MCR, UART_MCR_LOOP)
        for i in range(256):
            u.wr(UART_THR, i)
        got = []
        while u.rd(UART_LSR) & UART_LSR_DR:
            got.append(u.rd(UART_RBR))
        self.assertEqual(got, list(range(FIFO_SIZE)))
        self.assertEqual(u.out.output, b'')

    def test_baud_setup_through_dlab(self):
        u = Uart()
        u.wr(UART_IER, UART_IER_ERBFI)
        u.wr(UART_LCR, UART_LCR_DLAB | 0x03)
        u.wr(UART_DLL, 0x30)
        u.wr(UART_DLM, 0x01)
        self.assertEqual((u.rd(UART_DLL), u.rd(UART_DLM)), (0x30, 0x01))
        u.wr(UART_LCR, 0x03)
        self.assertEqual(u.rd(UART_IER), UART_IER_ERBFI)
        self.assertEqual(u.dev.divisor, 0x130)
        self.assertEqual(u.out.output, b'')

    def test_enabling_etbei_gives_the_thre_interrupt_linux_tests_for(self):
        # serial8250_do_startup(): IER=THRI, then IIR must show an interrupt
        # (else UART_BUG_TXEN); twice in a row (else UART_BUG_THRE).
        u = Uart(fifo=True)
        for _ in range(2):
            u.wr(UART_IER, UART_IER_ETBEI)
            self.assertTrue(u.rd(UART_LSR) & UART_LSR_TEMT)
            self.assertEqual(u.rd(UART_IIR), UART_IIR_FIFO | UART_IIR_THRI)
            u.wr(UART_IER, 0)
        self.assertEqual(u.rd(UART_IIR), UART_IIR_FIFO | UART_IIR_NO_INT)


class OutputTest(unittest.TestCase):
    def test_polled_output_reaches_the_sink(self):
        u = Uart()
        for byte in b'hello\r\n':
            self.assertTrue(u.rd(UART_LSR) & UART_LSR_THRE)
            u.wr(UART_THR, byte)
        self.assertEqual(u.out.output, b'hello\r\n')
        self.assertEqual(u.rd(UART_LSR) & (UART_LSR_THRE | UART_LSR_TEMT),
                         UART_LSR_THRE | UART_LSR_TEMT)

    def test_output_is_8_bit_whatever_the_word_length(self):
        u = Uart()
        self.assertEqual(u.rd(UART_LCR), 0)         # 5 bits at power-on
        u.wr(UART_THR, 0xFF)
        self.assertEqual(u.out.output, b'\xff')

    def test_output_without_sink_is_discarded(self):
        dev = Serial()
        dev.write(UART_THR, 1, 0x41)
        self.assertEqual(dev.check(), [])

    def test_thr_empty_raises_irq_when_enabled(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_OUT2)
        self.assertEqual(u.irq.level, 0)
        u.wr(UART_IER, UART_IER_ETBEI)
        self.assertEqual(u.irq.level, 1)
        self.assertEqual(u.iid(), UART_IIR_THRI)    # this read acknowledges
        self.assertEqual(u.irq.level, 0)
        self.assertEqual(u.iid(), UART_IIR_NO_INT)
        u.wr(UART_THR, ord('a'))
        self.assertEqual(u.irq.level, 1)
        u.wr(UART_THR, ord('b'))                    # still pending, one edge
        self.assertEqual(u.irq.raised, 2)

    def test_interrupt_driven_output_like_the_linux_isr(self):
        u = Uart(fifo=True)
        u.wr(UART_MCR, UART_MCR_OUT2)
        message = bytes(range(32, 127)) * 3
        queue = bytearray(message)
        u.wr(UART_IER, UART_IER_ETBEI)              # start_tx
        interrupts = 0
        while u.irq.level:
            interrupts += 1
            iir = u.rd(UART_IIR)
            self.assertEqual(iir & 0x0F, UART_IIR_THRI)
            if not queue:
                u.wr(UART_IER, 0)                   # stop_tx
                continue
            for byte in queue[:FIFO_SIZE]:          # tx_loadsz
                u.wr(UART_THR, byte)
            del queue[:FIFO_SIZE]
        self.assertEqual(u.out.output, message)
        self.assertEqual(interrupts, -(-len(message) // FIFO_SIZE) + 1)

    def test_console_write_with_ier_saved_resumes_thre_interrupts(self):
        # serial8250_console_write(): IER=0, poll THR, restore IER.
        u = Uart(fifo=True)
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ETBEI)
        u.rd(UART_IIR)
        saved = u.rd(UART_IER)
        u.wr(UART_IER, 0)
        u.wr(UART_THR, ord('k'))
        self.assertEqual(u.irq.level, 0)
        u.wr(UART_IER, saved)
        self.assertEqual(u.irq.level, 1)
        self.assertEqual(u.iid(), UART_IIR_THRI)


class InputTest(unittest.TestCase):
    def test_received_byte_raises_irq_without_fifo(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ERBFI)
        self.assertEqual(u.dev.receive(b'q'), 1)
        self.assertEqual(u.irq.level, 1)
        self.assertEqual(u.rd(UART_IIR), UART_IIR_RDI)
        self.assertTrue(u.rd(UART_LSR) & UART_LSR_DR)
        self.assertEqual(u.rd(UART_RBR), ord('q'))
        self.assertEqual(u.irq.level, 0)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_DR)

    def test_receive_without_fifo_takes_one_byte_at_a_time(self):
        u = Uart()
        self.assertEqual(u.dev.receive(b'abc'), 1)
        self.assertEqual(u.dev.rx_room(), 0)
        self.assertEqual(u.dev.receive(b'bc'), 0)
        self.assertEqual(u.rd(UART_RBR), ord('a'))
        self.assertEqual(u.dev.receive(b'bc'), 1)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_OE)

    def test_receive_is_bounded_by_the_fifo(self):
        u = Uart(fifo=True)
        self.assertEqual(u.dev.rx_room(), FIFO_SIZE)
        self.assertEqual(u.dev.receive(bytes(100)), FIFO_SIZE)
        self.assertEqual(u.dev.rx_room(), 0)
        self.assertEqual(u.dev.receive(b'more'), 0)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_OE)
        self.assertEqual(len(u.dev.rx), FIFO_SIZE)

    def test_caller_keeps_what_the_guest_has_no_room_for(self):
        u = Uart(fifo=True)
        host = MemoryBackend()
        host.feed(b'x' * 40)
        pending = host.read_input()
        received = bytearray()
        while pending:
            pending = pending[u.dev.receive(pending):]
            while u.rd(UART_LSR) & UART_LSR_DR:
                received.append(u.rd(UART_RBR))
        self.assertEqual(received, b'x' * 40)

    def test_fifo_trigger_levels(self):
        for bits, level in ((0x00, 1), (0x40, 4), (0x80, 8), (0xC0, 14)):
            with self.subTest(level=level):
                u = Uart()
                u.wr(UART_FCR, UART_FCR_ENABLE | bits)
                u.wr(UART_MCR, UART_MCR_OUT2)
                u.wr(UART_IER, UART_IER_ERBFI)
                u.dev.receive(bytes(level - 1))
                self.assertEqual(u.irq.level, 0)
                self.assertEqual(u.iid(), UART_IIR_NO_INT)
                u.dev.receive(b'!')
                self.assertEqual(u.irq.level, 1)
                self.assertEqual(u.rd(UART_IIR), UART_IIR_FIFO | UART_IIR_RDI)
                u.rd(UART_RBR)                      # below the trigger again
                self.assertEqual(u.irq.level, 0)

    def test_character_timeout_after_four_character_times(self):
        u = Uart(fifo=True, divisor=1)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0xC0)      # trigger at 14
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ERBFI)
        u.dev.receive(b'abc')
        deadline = timeout_ns(1)
        self.assertEqual(u.dev.tick(), deadline)
        u.clock.advance(deadline - 1)
        self.assertEqual(u.dev.tick(), deadline)
        self.assertEqual(u.irq.level, 0)
        u.clock.advance(1)
        self.assertIsNone(u.dev.tick())
        self.assertEqual(u.irq.level, 1)
        self.assertEqual(u.iid(), UART_IIR_CTI)
        self.assertEqual(u.rd(UART_RBR), ord('a'))  # a read restarts the timer
        self.assertEqual(u.irq.level, 0)
        self.assertEqual(u.dev.tick(), u.clock.now + deadline)
        self.assertEqual(u.rd(UART_RBR), ord('b'))
        self.assertEqual(u.rd(UART_RBR), ord('c'))
        self.assertIsNone(u.dev.tick())
        self.assertEqual(u.iid(), UART_IIR_NO_INT)

    def test_a_new_character_restarts_the_timeout(self):
        u = Uart(fifo=True, divisor=1)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0x80)
        u.wr(UART_IER, UART_IER_ERBFI)
        u.dev.receive(b'a')
        u.clock.advance(timeout_ns(1) - 5)
        u.dev.receive(b'b')
        self.assertEqual(u.dev.tick(), u.clock.now + timeout_ns(1))

    def test_timeout_scales_with_the_divisor(self):
        u = Uart(fifo=True, divisor=12)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0x40)
        u.wr(UART_IER, UART_IER_ERBFI)
        u.dev.receive(b'z')
        self.assertEqual(u.dev.tick(), timeout_ns(12))

    def test_no_timeout_without_fifo_or_without_erbfi(self):
        u = Uart(fifo=False)
        u.wr(UART_IER, UART_IER_ERBFI)
        u.dev.receive(b'a')
        self.assertIsNone(u.dev.tick())
        u = Uart(fifo=True)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0xC0)
        u.dev.receive(b'a')
        self.assertIsNone(u.dev.tick())

    def test_without_a_clock_the_timeout_is_immediate(self):
        irq = IrqLine()
        dev = Serial(irq=irq)
        dev.write(UART_FCR, 1, UART_FCR_ENABLE | 0xC0)
        dev.write(UART_MCR, 1, UART_MCR_OUT2)
        dev.write(UART_IER, 1, UART_IER_ERBFI)
        dev.receive(b'k')
        self.assertEqual(irq.level, 1)
        self.assertEqual(dev.read(UART_IIR, 1) & 0x0F, UART_IIR_CTI)
        self.assertIsNone(dev.tick())

    def test_fcr_clear_rx_and_mode_switch_empty_the_fifo(self):
        u = Uart(fifo=True)
        u.dev.receive(b'abc')
        u.wr(UART_FCR, UART_FCR_ENABLE | UART_FCR_CLEAR_RX)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_DR)
        u.dev.receive(b'abc')
        u.wr(UART_FCR, 0)
        self.assertEqual(u.dev.rx, [])
        self.assertEqual(u.dev.rx_room(), 1)

    def test_receive_is_8_bit_whatever_the_word_length(self):
        u = Uart()
        u.wr(UART_LCR, 0x02)        # 7 data bits
        u.dev.receive(b'\xff')
        self.assertEqual(u.rd(UART_RBR), 0xFF)


class PriorityTest(unittest.TestCase):
    def test_iir_reports_sources_in_priority_order(self):
        u = Uart(fifo=True, divisor=1)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0x40)      # trigger at 4
        u.wr(UART_MCR, UART_MCR_LOOP)               # modem inputs change
        for i in range(FIFO_SIZE + 1):              # the last one overruns
            u.wr(UART_THR, i)
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ERBFI | UART_IER_ETBEI | UART_IER_ELSI
             | UART_IER_EDSSI)
        self.assertEqual(u.irq.level, 1)
        self.assertEqual(u.iid(), UART_IIR_RLSI)
        self.assertTrue(u.rd(UART_LSR) & UART_LSR_OE)
        self.assertEqual(u.iid(), UART_IIR_RDI)
        for _ in range(FIFO_SIZE - 3):
            u.rd(UART_RBR)
        self.assertEqual(u.iid(), UART_IIR_THRI)    # timer restarted by reads
        u.wr(UART_IER, 0)
        u.wr(UART_IER, 0x0F)                        # THRE pending again
        u.clock.advance(timeout_ns(1))
        u.dev.tick()
        self.assertEqual(u.iid(), UART_IIR_CTI)
        for _ in range(3):
            u.rd(UART_RBR)
        self.assertEqual(u.iid(), UART_IIR_THRI)
        self.assertEqual(u.iid(), UART_IIR_MSI)
        self.assertEqual(u.irq.level, 1)
        u.rd(UART_MSR)
        self.assertEqual(u.iid(), UART_IIR_NO_INT)
        self.assertEqual(u.irq.level, 0)


class LineStatusTest(unittest.TestCase):
    def test_overrun_without_fifo_overwrites_and_lsr_read_clears_oe(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_LOOP)
        u.wr(UART_THR, ord('1'))
        u.wr(UART_THR, ord('2'))
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ELSI)
        self.assertEqual(u.irq.level, 1)
        lsr = u.rd(UART_LSR)
        self.assertEqual(lsr & (UART_LSR_OE | UART_LSR_DR),
                         UART_LSR_OE | UART_LSR_DR)
        self.assertEqual(u.irq.level, 0)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_OE)
        self.assertEqual(u.rd(UART_RBR), ord('2'))

    def test_overrun_with_fifo_keeps_the_fifo_and_loses_the_new_byte(self):
        u = Uart(fifo=True)
        u.wr(UART_MCR, UART_MCR_LOOP)
        for i in range(FIFO_SIZE + 2):
            u.wr(UART_THR, i)
        self.assertTrue(u.rd(UART_LSR) & UART_LSR_OE)
        self.assertEqual(u.dev.rx, list(range(FIFO_SIZE)))

    def test_break_shows_bi_when_its_character_is_next(self):
        u = Uart(fifo=True)
        u.dev.receive(b'ab')
        self.assertTrue(u.dev.receive_break())
        lsr = u.rd(UART_LSR)
        self.assertEqual(lsr & (UART_LSR_BI | UART_LSR_FIFOE), UART_LSR_FIFOE)
        u.rd(UART_RBR)
        u.rd(UART_RBR)
        lsr = u.rd(UART_LSR)
        self.assertEqual(lsr & (UART_LSR_BI | UART_LSR_DR | UART_LSR_FIFOE),
                         UART_LSR_BI | UART_LSR_DR | UART_LSR_FIFOE)
        self.assertFalse(u.rd(UART_LSR) & UART_LSR_BI)     # cleared on read
        self.assertEqual(u.rd(UART_RBR), 0)
        self.assertFalse(u.rd(UART_LSR) & (UART_LSR_FIFOE | UART_LSR_DR))

    def test_break_raises_the_line_status_interrupt(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_OUT2)
        u.wr(UART_IER, UART_IER_ELSI | UART_IER_ERBFI)
        u.dev.receive_break()
        self.assertEqual(u.iid(), UART_IIR_RLSI)
        u.rd(UART_LSR)
        self.assertEqual(u.iid(), UART_IIR_RDI)
        self.assertFalse(u.dev.receive_break())        # no room left


class ModemTest(unittest.TestCase):
    def test_loopback_msr_follows_mcr_with_delta_bits(self):
        u = Uart()
        u.wr(UART_MCR, UART_MCR_LOOP)
        self.assertEqual(u.rd(UART_MSR),
                         UART_MSR_DCTS | UART_MSR_DDSR | UART_MSR_DDCD)
        self.assertEqual(u.rd(UART_MSR), 0)             # deltas cleared
        u.wr(UART_MCR, UART_MCR_LOOP | UART_MCR_DTR | UART_MCR_OUT1)
        self.assertEqual(u.rd(UART_MSR),
                         UART_MSR_DSR | UART_MSR_RI | UART_MSR_DDSR)
        u.wr(UART_MCR, UART_MCR_LOOP | UART_MCR_DTR)   # RI trailing edge
        self.assertEqual(u.rd(UART_MSR), UART_MSR_DSR | UART_MSR_TERI)

    def test_modem_status_interrupt_on_a_delta(self):
        u = Uart()
        u.wr(UART_IER, UART_IER_EDSSI)
        u.wr(UART_MCR, UART_MCR_LOOP | UART_MCR_OUT2)
        self.assertEqual(u.irq.level, 0)                # gated in loopback
        self.assertEqual(u.iid(), UART_IIR_MSI)
        u.wr(UART_MCR, UART_MCR_OUT2)
        self.assertEqual(u.irq.level, 1)
        u.rd(UART_MSR)
        self.assertEqual(u.irq.level, 0)

    def test_loopback_sends_to_the_receiver_not_the_sink(self):
        u = Uart(fifo=True)
        u.wr(UART_MCR, UART_MCR_LOOP)
        self.assertEqual(u.dev.rx_room(), 0)            # input disconnected
        self.assertEqual(u.dev.receive(b'host'), 0)
        for byte in b'ping':
            u.wr(UART_THR, byte)
        self.assertEqual(bytes(u.rd(UART_RBR) for _ in range(4)), b'ping')
        self.assertEqual(u.out.output, b'')


class IrqLineTest(unittest.TestCase):
    def test_out2_gates_the_irq_line(self):
        u = Uart()
        u.wr(UART_IER, UART_IER_ERBFI)
        u.dev.receive(b'a')
        self.assertEqual(u.irq.level, 0)
        u.wr(UART_MCR, UART_MCR_OUT2)
        self.assertEqual(u.irq.level, 1)
        u.wr(UART_MCR, UART_MCR_DTR | UART_MCR_RTS)
        self.assertEqual(u.irq.level, 0)
        self.assertEqual(u.irq.raised, 1)

    def test_loopback_keeps_the_line_low(self):
        u = Uart()
        u.wr(UART_IER, UART_IER_ERBFI)
        u.wr(UART_MCR, UART_MCR_OUT2 | UART_MCR_LOOP)
        u.wr(UART_THR, 0x55)
        self.assertEqual(u.iid(), UART_IIR_RDI)
        self.assertEqual(u.irq.level, 0)

    def test_wide_access_is_byte_accesses_at_successive_ports(self):
        u = Uart()
        u.dev.write(UART_LCR, 2, 0x0B03)            # LCR=0x03, MCR=0x0B
        self.assertEqual(u.rd(UART_MCR), 0x0B)
        self.assertEqual(u.dev.read(UART_MSR, 4), 0xFFFF00B0)
        u.dev.write(9, 1, 0xFF)                     # past the ports: dropped
        self.assertEqual(u.dev.read(-1, 1), 0xFF)


class StateTest(unittest.TestCase):
    def busy_uart(self):
        u = Uart(fifo=True, divisor=3)
        u.wr(UART_FCR, UART_FCR_ENABLE | 0x80)
        u.wr(UART_SCR, 0x42)
        u.wr(UART_MCR, UART_MCR_LOOP)
        for i in range(FIFO_SIZE + 1):
            u.wr(UART_THR, i)
        u.wr(UART_MCR, UART_MCR_OUT2 | UART_MCR_DTR)
        u.wr(UART_IER, UART_IER_ERBFI | UART_IER_ETBEI)
        for _ in range(12):
            u.rd(UART_RBR)
        u.clock.advance(timeout_ns(3) // 2)
        return u

    def test_state_round_trip_mid_operation(self):
        u = self.busy_uart()
        state = json.loads(json.dumps(u.dev.state()))
        self.assertEqual(state['version'], 1)
        irq = IrqLine()
        twin = Serial.from_state(state, irq=irq, out=MemoryBackend(),
                                 clock=u.clock)
        self.assertEqual(twin.state(), u.dev.state())
        self.assertEqual(twin.check(), [])
        self.assertEqual(irq.level, u.irq.level)
        self.assertEqual(twin.tick(), u.dev.tick())
        u.clock.advance(timeout_ns(3))
        for reg in (UART_LSR, UART_IIR, UART_IIR, UART_MSR, UART_RBR,
                    UART_IIR, UART_SCR):
            self.assertEqual(twin.read(reg, 1), u.rd(reg), reg)
            self.assertEqual(irq.level, u.irq.level)

    def test_state_keeps_time_left_on_a_new_clock(self):
        u = self.busy_uart()
        clock = SteppedClock(now=10**12)
        twin = Serial.from_state(u.dev.state(), clock=clock)
        self.assertEqual(twin.tick() - clock.now, u.dev.tick() - u.clock.now)

    def test_from_state_refuses_other_versions_and_broken_state(self):
        state = Uart().dev.state()
        with self.assertRaises(ValueError):
            Serial.from_state(dict(state, version=2))
        with self.assertRaises(ValueError):
            Serial.from_state(dict(state, rx=[1, 2]))     # FIFOs are off
        with self.assertRaises(ValueError):
            Serial.from_state(dict(state, ier=0x1F))

    def test_reset_returns_to_power_on(self):
        u = self.busy_uart()
        u.dev.reset()
        self.assertEqual(u.dev.state(), Serial().state())
        self.assertEqual(u.irq.level, 0)


class FuzzTest(unittest.TestCase):
    def test_seeded_random_burst_leaves_check_empty(self):
        rng = random.Random(16550)
        u = Uart()
        for step in range(20000):
            action = rng.random()
            if action < 0.45:
                u.dev.write(rng.randrange(-2, 10),
                            rng.choice((1, 2, 4, 8, 0, 3)),
                            rng.randrange(-1, 1 << 64))
            elif action < 0.85:
                u.dev.read(rng.randrange(-2, 10), rng.choice((1, 2, 4, 8, 0)))
            elif action < 0.93:
                u.dev.receive(rng.randbytes(rng.randrange(0, 40)))
            elif action < 0.95:
                u.dev.receive_break()
            else:
                u.clock.advance(rng.randrange(0, 3_000_000))
                u.dev.tick()
            problems = u.dev.check()
            self.assertEqual(problems, [], f'step {step}')
            self.assertLessEqual(len(u.dev.rx), FIFO_SIZE)
        self.assertLessEqual(len(u.out.output), u.out.limit)


class EscapeFilterTest(unittest.TestCase):
    def test_ctrl_a_x_requests_quit(self):
        self.assertEqual(EscapeFilter().filter_input(b'ls\x01xrm'),
                         (b'ls', True))

    def test_ctrl_a_ctrl_a_sends_one_ctrl_a(self):
        self.assertEqual(EscapeFilter().filter_input(b'a\x01\x01b'),
                         (b'a\x01b', False))

    def test_escape_spans_chunks_and_other_keys_are_dropped(self):
        esc = EscapeFilter()
        self.assertEqual(esc.filter_input(b'q\x01'), (b'q', False))
        self.assertEqual(esc.filter_input(b'zw'), (b'w', False))
        self.assertEqual(esc.filter_input(b'\x01'), (b'', False))
        self.assertEqual(esc.filter_input(b'X'), (b'', True))


class TerminalBackendTest(unittest.TestCase):
    def setUp(self):
        self.master, self.slave = os.openpty()
        self.addCleanup(os.close, self.master)
        self.addCleanup(os.close, self.slave)
        self.cooked = termios.tcgetattr(self.slave)

    def is_raw(self):
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)

    def test_start_makes_the_tty_raw_and_stop_restores_it(self):
        term = TerminalBackend(in_fd=self.slave, out_fd=self.slave)
        self.assertFalse(self.is_raw())
        term.start()
        self.assertTrue(self.is_raw())
        term.stop()
        self.assertEqual(termios.tcgetattr(self.slave), self.cooked)

    def test_context_manager_restores_after_an_exception(self):
        with self.assertRaises(RuntimeError):
            with TerminalBackend(in_fd=self.slave, out_fd=self.slave):
                self.assertTrue(self.is_raw())
                raise RuntimeError('guest crashed')
        self.assertEqual(termios.tcgetattr(self.slave), self.cooked)

    def run_child(self, body):
        """Start a Python child that makes our pty raw; returns it then."""
        ready_r, ready_w = os.pipe()
        code = textwrap.dedent(f'''
            import os, signal, sys, termios
            sys.path.insert(0, {REPO!r})
            from devices.console import TerminalBackend
            term = TerminalBackend(in_fd={self.slave}, out_fd={self.slave})
            term.start()
            raw = not termios.tcgetattr({self.slave})[3] & termios.ICANON
            os.write({ready_w}, b'raw' if raw else b'cooked')
        ''') + textwrap.dedent(body)
        child = subprocess.Popen([sys.executable, '-c', code],
                                 pass_fds=(self.slave, ready_w))
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)     # runs first: a no-op once it exited
        os.close(ready_w)
        self.addCleanup(os.close, ready_r)
        self.assertEqual(os.read(ready_r, 6), b'raw')
        return child

    def test_sigterm_restores_the_tty_and_still_terminates(self):
        child = self.run_child('while True:\n    signal.pause()\n')
        self.assertTrue(self.is_raw())
        child.send_signal(signal.SIGTERM)
        self.assertEqual(child.wait(WAIT_S), -signal.SIGTERM)
        self.assertEqual(termios.tcgetattr(self.slave), self.cooked)

    def test_exit_without_stop_restores_the_tty(self):
        child = self.run_child('sys.exit(3)\n')
        self.assertEqual(child.wait(WAIT_S), 3)
        self.assertEqual(termios.tcgetattr(self.slave), self.cooked)

    def test_input_goes_through_the_escape_filter(self):
        with TerminalBackend(in_fd=self.slave, out_fd=self.slave) as term:
            os.write(self.master, b'ab\x01\x01c\x01x!')
            data = b''
            while not term.quit_requested:
                wait_readable(term.fileno())
                data += term.read_input()
            self.assertEqual(data, b'ab\x01c')

    def test_output_reaches_out_fd(self):
        with TerminalBackend(in_fd=self.slave, out_fd=self.slave) as term:
            term.write(b'boot\n')
            wait_readable(self.master)
            self.assertEqual(os.read(self.master, 100), b'boot\n')

    def test_stalled_terminal_holds_output_without_blocking(self):
        # nobody reads: write() never blocks, room() runs out, and what the
        # writer put past it (it ignored room()) is all that is lost
        with TerminalBackend(in_fd=self.slave, out_fd=self.slave) as term:
            sent = bytearray()
            while term.room() > 0:
                chunk = bytes([0x30 + len(sent) // 4096 % 40]) * 4096
                kept = chunk[:term.room()]
                term.write(kept)
                sent += kept
            self.assertEqual(term.dropped, 0)
            self.assertLessEqual(len(term._pending), term.limit)
            for _ in range(512):                    # 2 MiB past room(): dropped
                term.write(b'x' * 4096)
            self.assertEqual(term.dropped, 512 * 4096)
            self.assertLessEqual(len(term._pending), term.limit)
            # the reader comes back: everything kept arrives, in order
            got = bytearray()
            while len(got) < len(sent):
                term.flush()
                wait_readable(self.master)
                got += os.read(self.master, 65536)
            self.assertEqual(bytes(got), bytes(sent))

    def test_piped_stdin_is_left_alone(self):
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        with TerminalBackend(in_fd=r, out_fd=self.slave) as term:
            os.write(w, b'\x01x')
            os.close(w)
            self.assertEqual(term.read_input(), b'\x01x')
            self.assertFalse(term.quit_requested)
            self.assertEqual(term.read_input(), b'')
            self.assertIsNone(term.fileno())        # EOF: stop polling it


class SocketBackendTest(unittest.TestCase):
    def setUp(self):
        self.backend = SocketBackend()
        self.addCleanup(self.backend.stop)

    def connect(self):
        client = socket.create_connection(self.backend.address)
        self.addCleanup(client.close)
        wait_readable(self.backend.fileno())
        self.assertEqual(self.backend.read_input(), b'')
        self.assertTrue(self.backend.connected)
        return client

    def test_listens_on_loopback(self):
        host, port = self.backend.address
        self.assertEqual(host, '127.0.0.1')
        self.assertGreater(port, 0)

    def test_output_dropped_without_client_then_delivered(self):
        self.backend.write(b'lost')
        self.assertEqual(self.backend.dropped, 4)
        client = self.connect()
        self.backend.write(b'hello')
        self.assertEqual(client.recv(100), b'hello')
        client.sendall(b'typed')
        wait_readable(self.backend.fileno())
        self.assertEqual(self.backend.read_input(), b'typed')

    def test_disconnect_returns_to_listening(self):
        client = self.connect()
        client.close()
        wait_readable(self.backend.fileno())
        self.assertEqual(self.backend.read_input(), b'')
        self.assertFalse(self.backend.connected)
        again = self.connect()
        self.backend.write(b'2nd')
        self.assertEqual(again.recv(100), b'2nd')

    def test_a_client_that_never_reads_does_not_block_the_vmm(self):
        self.connect()
        for _ in range(512):                        # 32 MiB
            self.backend.write(b'y' * 65536)
        self.assertGreater(self.backend.dropped, 0)
        self.assertLessEqual(len(self.backend._pending), self.backend.limit)


class OtherBackendTest(unittest.TestCase):
    def test_pty_backend_carries_both_ways(self):
        with PtyBackend() as pty:
            self.assertTrue(pty.slave_name.startswith('/dev/'))
            fd = os.open(pty.slave_name, os.O_RDWR | os.O_NOCTTY)
            self.addCleanup(os.close, fd)
            pty.write(b'out')
            wait_readable(fd)
            self.assertEqual(os.read(fd, 10), b'out')
            os.write(fd, b'in')
            wait_readable(pty.fileno())
            self.assertEqual(pty.read_input(), b'in')
            self.assertFalse(termios.tcgetattr(fd)[3] & termios.ECHO)

    def test_pty_backend_bounds_output_nobody_reads(self):
        with PtyBackend() as pty:
            for _ in range(256):
                pty.write(b'z' * 4096)
            self.assertGreater(pty.dropped, 0)

    def test_file_backend_appends(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'console.log')
            with open(path, 'wb') as f:
                f.write(b'old\n')
            with FileBackend(path) as backend:
                backend.write(b'new\n')
                self.assertIsNone(backend.fileno())
                self.assertEqual(backend.read_input(), b'')
            with open(path, 'rb') as f:
                self.assertEqual(f.read(), b'old\nnew\n')

    def test_memory_backend_is_bounded(self):
        mem = MemoryBackend(limit=8)
        mem.write(b'0123456789')
        self.assertEqual(mem.output, b'01234567')
        self.assertEqual(mem.dropped, 2)

    def test_serial_output_into_a_backend(self):
        mem = MemoryBackend()
        dev = Serial(out=mem)
        for byte in b'ok':
            dev.write(UART_THR, 1, byte)
        self.assertEqual(mem.output, b'ok')


if __name__ == '__main__':
    unittest.main()


class ThrBufferingTest(unittest.TestCase):
    """thr_may_buffer(): the board lets KVM buffer THR writes only while
    they cannot raise an interrupt (IER 0), whatever LCR and MCR say."""

    def test_only_while_ier_is_0(self):
        uart = Serial(out=MemoryBackend())
        self.assertTrue(uart.thr_may_buffer())
        for bit in (UART_IER_ERBFI, UART_IER_ETBEI, UART_IER_ELSI, UART_IER_EDSSI):
            uart.write(UART_IER, 1, bit)
            self.assertFalse(uart.thr_may_buffer(), hex(bit))
        uart.write(UART_IER, 1, 0)
        uart.write(UART_LCR, 1, UART_LCR_DLAB)
        uart.write(UART_DLM, 1, 0xFF)           # the divisor latch, not IER
        self.assertTrue(uart.thr_may_buffer())
        uart.write(UART_LCR, 1, 0)
        uart.write(UART_MCR, 1, UART_MCR_LOOP)
        self.assertTrue(uart.thr_may_buffer())
        uart.write(UART_IER, 2, 0x0100)         # a word write at IER: IER = 0, LCR = 1
        self.assertTrue(uart.thr_may_buffer())
        uart.write(UART_THR, 2, 0x0200)         # a word write at THR reaches IER
        self.assertFalse(uart.thr_may_buffer())
        uart.reset()
        self.assertTrue(uart.thr_may_buffer())


class StepSink:
    """A sink of ``capacity`` bytes whose reader takes ``step`` of them each
    time it is asked for room: deterministic, so two UARTs fed alike see
    the same room at the same points. Records each write call."""

    def __init__(self, capacity, step):
        self.capacity, self.step = capacity, step
        self.held, self.output = bytearray(), bytearray()
        self.asked = self.dropped = self.writes = 0

    def room(self):
        self.asked += 1
        self.output += self.held[:self.step]
        del self.held[:self.step]
        return self.capacity - len(self.held)

    def write(self, data):
        self.writes += 1
        fits = bytes(data[:self.capacity - len(self.held)])
        self.dropped += len(data) - len(fits)
        self.held += fits

    def seen(self):
        return bytes(self.output + self.held), self.asked, self.dropped


class BufferedThrTest(unittest.TestCase):
    """write_bytes() (a run of THR writes from KVM's ring in one call) and
    read_ahead() (LSR answered before waiting THR writes are applied) do
    exactly what one write per byte, then the read, does: the same sink
    bytes, the same room() calls, the same LSR values and state, over
    seeded random histories with slow sinks, loopback, DLAB and IER."""

    def twins(self, capacity, step):
        a, b = StepSink(capacity, step), StepSink(capacity, step)
        return (Serial(irq=IrqLine(), out=a), a), (Serial(irq=IrqLine(), out=b), b)

    def same(self, ua, ub, sa, sb, what):
        self.assertEqual(ua.state(), ub.state(), what)
        self.assertEqual(ua._tx_credit, ub._tx_credit, what)
        self.assertEqual(sa.seen(), sb.seen(), what)
        self.assertEqual(ua.irq.level, ub.irq.level, what)
        self.assertEqual(ua.check(), [], what)

    def test_runs_and_reads_ahead_match_one_write_a_byte(self):
        rng = random.Random(19)
        counts = {'ahead': 0, 'declined': 0}
        for history in range(60):
            capacity = rng.choice((20, 40, 64, 300, 5000, 50000, 50000))
            (ua, sa), (ub, sb) = self.twins(capacity, rng.choice((0, 1, 7, 32)))
            sent = 0
            for op in range(60):
                kind = rng.random()
                what = f'history {history} op {op} kind {kind:.2f} capacity {capacity}'
                data = bytes((sent + i) & 0xFF for i in range(rng.randint(1, 120)))
                sent += len(data)
                if kind < 0.35:                         # a run from the ring
                    ua.write_bytes(UART_THR, 1, data)
                    for v in data:
                        ub.write(UART_THR, 1, v)
                elif kind < 0.75:                       # an LSR read with writes waiting
                    got = ua.read_ahead(UART_LSR, len(data))
                    counts['declined' if got is None else 'ahead'] += 1
                    if got is None:                     # the run loop drains, then reads
                        ua.write_bytes(UART_THR, 1, data)
                        got = ua.read(UART_LSR, 1)
                    else:                               # drained later
                        ua.write_bytes(UART_THR, 1, data)
                    for v in data:
                        ub.write(UART_THR, 1, v)
                    self.assertEqual(got, ub.read(UART_LSR, 1), what)
                    # the LSR read cleared what it reported; the later run did not
                    self.assertEqual(ua.lsr_errors, ub.lsr_errors, what)
                else:                                   # another register, as the guest may
                    reg, value = rng.choice((
                        (UART_IER, 0), (UART_IER, 0), (UART_IER, UART_IER_ETBEI),
                        (UART_MCR, 0), (UART_MCR, UART_MCR_OUT2), (UART_MCR, UART_MCR_LOOP),
                        (UART_MCR, UART_MCR_OUT2), (UART_LCR, 3), (UART_LCR, 3),
                        (UART_LCR, UART_LCR_DLAB | 3), (UART_FCR, UART_FCR_ENABLE),
                        (UART_LSR, None), (UART_RBR, None), (UART_IIR, None)))
                    if value is None:
                        self.assertEqual(ua.read(reg, 1), ub.read(reg, 1), what)
                    else:
                        ua.write(reg, 1, value)
                        ub.write(reg, 1, value)
                    if rng.random() < 0.3:
                        ua.tick()
                        ub.tick()
                self.same(ua, ub, sa, sb, what)
        # both paths ran, many times
        self.assertGreater(counts['ahead'], 150, counts)
        self.assertGreater(counts['declined'], 150, counts)

    def test_a_run_is_one_sink_write_while_room_lasts(self):
        sink = StepSink(1 << 20, 0)
        uart = Serial(out=sink)
        uart.write(UART_THR, 1, 0)                      # learns the room
        sink.writes = 0
        uart.write_bytes(UART_THR, 1, bytes(range(85)))
        self.assertEqual((sink.writes, sink.asked), (1, 1))
        # a slow sink: the run is cut where a byte-by-byte run asks for room
        sink = StepSink(40, 0)
        uart = Serial(out=sink)
        uart.write_bytes(UART_THR, 1, bytes(30))
        # the first byte asks (no credit yet), then 40 - 1 - 15 = 24 more go at once
        self.assertEqual(sink.writes, 1 + 1 + (30 - 1 - 24))
        self.assertEqual(uart.read(UART_LSR, 1) & UART_LSR_THRE, 0)

    def test_reading_ahead_declines_what_the_writes_could_change(self):
        uart = Serial(out=StepSink(1000, 0))
        self.assertIsNone(uart.read_ahead(UART_LSR, 1), 'no room known yet')
        uart.write(UART_THR, 1, 0x41)                   # room asked: 999 known
        self.assertEqual(uart.read_ahead(UART_LSR, 983), UART_LSR_THRE | UART_LSR_TEMT)
        self.assertIsNone(uart.read_ahead(UART_LSR, 984), 'the 984th byte would ask the sink')
        self.assertIsNone(uart.read_ahead(UART_IIR, 1), 'only LSR')
        for reg, value in ((UART_MCR, UART_MCR_LOOP), (UART_LCR, UART_LCR_DLAB),
                           (UART_IER, UART_IER_ETBEI)):
            uart.write(reg, 1, value)
            self.assertIsNone(uart.read_ahead(UART_LSR, 1), f'{reg} = {value:#x}')
            uart.write(reg, 1, 0)
        self.assertIsNotNone(uart.read_ahead(UART_LSR, 1))
        nowhere = Serial()
        self.assertEqual(nowhere.read_ahead(UART_LSR, 10000), UART_LSR_THRE | UART_LSR_TEMT)
