"""The PC's COM port UART: a National Semiconductor PC16550D.

Follows the datasheet "PC16550D Universal Asynchronous Receiver/Transmitter
with FIFOs" (National Semiconductor, June 1995): its register map, the
interrupt identification priorities, the FIFO control and trigger levels, and
the receiver FIFO's character timeout.  A PC wires four of them as COM1-COM4
(their ports and IRQs are the platform's: tools/layout.py), each decoding eight ports, with the chip's INTR reaching the
ISA IRQ only through a buffer that the OUT2 pin enables.

Where the model differs from the chip, or the datasheet leaves room:

* Transmission is instantaneous while the host side keeps up: a THR write
  goes straight to the output sink (or, in loopback, to the receiver).  The
  sink's ``room()`` is the line's flow control: while it is below a whole
  transmitter FIFO (16 bytes), the transmitter counts as busy (THRE and TEMT
  read 0, no THRE interrupt), and once the sink has room again (found on an
  LSR read or a ``tick()``, which the board runs as the sink drains) the
  THR empties: THRE and TEMT read 1 and the THRE interrupt becomes pending.
  A polled guest thus waits for a slow reader, and an interrupt-driven one
  (Linux writes 16 bytes per THRE interrupt) gets its next interrupt when
  they fit.  A byte written while the transmitter is busy still goes to the
  sink, which drops what exceeds its bound.  The THRE interrupt also becomes
  pending after each THR write that leaves room and when ETBEI goes from 0
  to 1 with the THR empty; reading IIR while it is the reported source
  clears it.  The sink is asked for room once per ~room() bytes, not per
  byte; a sink without ``room()`` always has room.
* The host feeds the receiver with ``receive()``, which accepts only what fits
  (16 bytes with FIFOs on, one holding byte with them off) and leaves the rest
  to the caller, so an overrun (OE) can only come from loopback.  In loopback
  the serial input is disconnected, so ``receive()`` accepts nothing.
* An emulated line has no parity or framing errors; PE and FE stay 0.  A break
  (BI) can be injected with ``receive_break()``: it queues a zero character
  that raises BI when it reaches the top of the FIFO.  LSR bit 7 reads 1 while
  such a character is in the FIFO.
* Characters pass as 8 bits whatever the LCR word length: a guest that
  never programs LCR (power-on value: 5 bits) still prints what it writes.
* The character timeout uses 10 bits per character at 115200/divisor baud.
  Without a clock it fires as soon as data sits below the trigger level.
* The IRQ line is (an interrupt is pending) AND OUT2.  In loopback the
  datasheet forces the modem control output pins inactive, so on a PC the
  line stays low (the interrupt is still visible in IIR).
* Modem inputs outside loopback read CTS, DSR and DCD asserted, RI off: the
  host side is always ready.
* ``thr_may_buffer()`` is True while IER is 0: then a THR write raises no
  interrupt, and everything else it does (the byte to the sink or, in
  loopback, to the receiver; THRE/TEMT; the divisor latch with DLAB set)
  shows only in what a later read returns. So the board may let KVM buffer
  those writes (coalesced PIO on the THR port) as long as it applies them, in
  order, before any read of the UART is answered: the output and every LSR
  value stay exactly those of one exit per write.  ``read_ahead()`` is the
  one exception it allows: an LSR read that up to N waiting THR writes
  cannot change (IER 0, no loopback, no DLAB, the transmitter not busy and
  the sink's known room less N still a whole FIFO, so none of them would
  ask the sink) is answered before they are applied; ``write_bytes()``
  then takes them as one run, writing the sink in chunks cut where a
  byte-by-byte run would ask it for room.
* Accesses wider than a byte act as successive byte accesses at successive
  ports (low byte first); bytes past the device's ports are dropped on write
  and read as 0xFF.
"""

__all__ = ['Serial', 'FIFO_SIZE', 'TX_ROOM']

from . import ByteRegisters, Device, check_state_version

# Register offsets from the base port.
UART_RBR = 0        # receiver buffer (read, DLAB=0)
UART_THR = 0        # transmitter holding (write, DLAB=0)
UART_DLL = 0        # divisor latch, low byte (DLAB=1)
UART_IER = 1        # interrupt enable (DLAB=0)
UART_DLM = 1        # divisor latch, high byte (DLAB=1)
UART_IIR = 2        # interrupt identification (read)
UART_FCR = 2        # FIFO control (write)
UART_LCR = 3        # line control
UART_MCR = 4        # modem control
UART_LSR = 5        # line status
UART_MSR = 6        # modem status
UART_SCR = 7        # scratch

UART_IER_ERBFI = 0x01   # enable received data (and timeout) interrupt
UART_IER_ETBEI = 0x02   # enable transmitter holding register empty interrupt
UART_IER_ELSI = 0x04    # enable receiver line status interrupt
UART_IER_EDSSI = 0x08   # enable modem status interrupt
UART_IER_MASK = 0x0F    # bits 4-7 are always 0

# IIR bit 0 is 0 while an interrupt is pending; bits 1-3 say which, in
# priority order: line status, received data, character timeout, THR empty,
# modem status.
UART_IIR_NO_INT = 0x01  # no interrupt pending
UART_IIR_RLSI = 0x06    # receiver line status (OE, PE, FE or BI)
UART_IIR_RDI = 0x04     # received data available / trigger level reached
UART_IIR_CTI = 0x0C     # character timeout (FIFO mode only)
UART_IIR_THRI = 0x02    # transmitter holding register empty
UART_IIR_MSI = 0x00     # modem status (a delta bit set in MSR)
UART_IIR_FIFO = 0xC0    # bits 6-7: FIFOs enabled

UART_FCR_ENABLE = 0x01      # FIFO enable; other bits are ignored without it
UART_FCR_CLEAR_RX = 0x02    # clear the receiver FIFO (self-clearing)
UART_FCR_CLEAR_TX = 0x04    # clear the transmitter FIFO (self-clearing)
UART_FCR_DMA = 0x08         # DMA mode select (RXRDY/TXRDY pins; stored only)
UART_FCR_TRIGGER = 0xC0     # receiver trigger level, see RX_TRIGGER_LEVELS
UART_FCR_KEPT = UART_FCR_ENABLE | UART_FCR_DMA | UART_FCR_TRIGGER
RX_TRIGGER_LEVELS = (1, 4, 8, 14)   # by FCR bits 6-7

UART_LCR_WLS = 0x03     # word length select: 5 + value bits
UART_LCR_STB = 0x04     # stop bits (1, or 1.5/2)
UART_LCR_PEN = 0x08     # parity enable
UART_LCR_EPS = 0x10     # even parity select
UART_LCR_STICK = 0x20   # stick parity
UART_LCR_SBRK = 0x40    # set break (drives the serial output low)
UART_LCR_DLAB = 0x80    # divisor latch access bit

UART_MCR_DTR = 0x01     # data terminal ready
UART_MCR_RTS = 0x02     # request to send
UART_MCR_OUT1 = 0x04    # user output 1
UART_MCR_OUT2 = 0x08    # user output 2: gates INTR onto the ISA IRQ on a PC
UART_MCR_LOOP = 0x10    # loopback diagnostic mode
UART_MCR_MASK = 0x1F    # bits 5-7 are always 0

UART_LSR_DR = 0x01      # data ready
UART_LSR_OE = 0x02      # overrun error
UART_LSR_PE = 0x04      # parity error
UART_LSR_FE = 0x08      # framing error
UART_LSR_BI = 0x10      # break interrupt
UART_LSR_THRE = 0x20    # transmitter holding register empty
UART_LSR_TEMT = 0x40    # transmitter empty
UART_LSR_FIFOE = 0x80   # error in receiver FIFO (FIFO mode)
UART_LSR_ERRORS = UART_LSR_OE | UART_LSR_PE | UART_LSR_FE | UART_LSR_BI

UART_MSR_DCTS = 0x01    # delta clear to send
UART_MSR_DDSR = 0x02    # delta data set ready
UART_MSR_TERI = 0x04    # trailing edge ring indicator (RI went 1 -> 0)
UART_MSR_DDCD = 0x08    # delta data carrier detect
UART_MSR_DELTAS = 0x0F
UART_MSR_CTS = 0x10     # clear to send (RTS in loopback)
UART_MSR_DSR = 0x20     # data set ready (DTR in loopback)
UART_MSR_RI = 0x40      # ring indicator (OUT1 in loopback)
UART_MSR_DCD = 0x80     # data carrier detect (OUT2 in loopback)
UART_MSR_INPUTS = 0xF0

HOST_MODEM_INPUTS = UART_MSR_CTS | UART_MSR_DSR | UART_MSR_DCD

FIFO_SIZE = 16          # receiver FIFO depth
TX_ROOM = 16            # sink room that makes the THR empty: a whole transmitter FIFO
NO_LIMIT = 1 << 62      # transmit credit of a sink without room()
BAUD_BASE = 115200      # 1.8432 MHz crystal / 16: the baud rate at divisor 1
CHAR_BITS = 10          # start + 8 data + stop, for the timeout
TIMEOUT_CHARS = 4       # character timeout after 4 character times
RESET_DIVISOR = 12      # 9600 baud, as a PC BIOS leaves it
RX_BREAK = 0x100        # flag on a queued character: received as a break

_BYTE = [bytes((i,)) for i in range(256)]   # THR output without a new bytes per character


def _loop_inputs(mcr):
    """MSR input bits that the MCR outputs drive in loopback."""
    return (((mcr & UART_MCR_RTS) << 3)       # RTS -> CTS
            | ((mcr & UART_MCR_DTR) << 5)     # DTR -> DSR
            | ((mcr & UART_MCR_OUT1) << 4)    # OUT1 -> RI
            | ((mcr & UART_MCR_OUT2) << 4))   # OUT2 -> DCD


class Serial(ByteRegisters, Device):
    """One 16550A UART.

    ``irq``: an IrqLine-like object with ``set(level)``; ``out``: a sink with
    ``write(bytes)`` and optionally ``room()`` (None discards); ``clock``: a
    callable returning ns.
    """

    SIZE = 8
    UNTIMED_WRITES = (UART_THR,)    # output; IER, FCR, LCR may start a character timeout

    def __init__(self, irq=None, out=None, clock=None):
        self.irq = irq
        self.out = out
        self.clock = clock
        self._level = 0
        self.reset()

    def reset(self):
        """The power-on state (master reset, plus a BIOS-like 9600 divisor)."""
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.fcr = 0
        self.scr = 0
        self.divisor = RESET_DIVISOR
        self.lsr_errors = 0         # latched OE/PE/FE/BI, cleared by LSR read
        self.msr = HOST_MODEM_INPUTS
        self.rx = []                # characters, RX_BREAK-flagged for a break
        self.thr_pending = False    # THRE interrupt source, before ETBEI
        self.tx_busy = False        # the sink had no room: THRE and TEMT read 0
        self._tx_credit = 0         # bytes known to fit in the sink (0: ask it)
        self.timeout_at = 0         # ns when queued data times out
        self._update_irq()

    # -- guest access --------------------------------------------------

    def read(self, offset, size):
        # LSR without detours: a polled console driver reads it before every byte
        if offset == UART_LSR and size == 1:
            return self._read_lsr()
        return ByteRegisters.read(self, offset, size)

    def write(self, offset, size, value):
        # the other half of a polled console's byte: THR, DLAB off
        if offset == UART_THR and size == 1 and not self.lcr & UART_LCR_DLAB:
            self._write_thr(int(value) & 0xFF)
            self._update_irq()
            return
        ByteRegisters.write(self, offset, size, value)

    def _read_byte(self, port):
        dlab = self.lcr & UART_LCR_DLAB
        if port == UART_RBR:
            return self.divisor & 0xFF if dlab else self._read_rbr()
        if port == UART_IER:
            return self.divisor >> 8 if dlab else self.ier
        if port == UART_IIR:
            return self._read_iir()
        if port == UART_LCR:
            return self.lcr
        if port == UART_MCR:
            return self.mcr
        if port == UART_LSR:
            return self._read_lsr()
        if port == UART_MSR:
            value = self.msr
            self.msr &= UART_MSR_INPUTS
            self._update_irq()
            return value
        return self.scr

    def _write_byte(self, port, value):
        dlab = self.lcr & UART_LCR_DLAB
        if port == UART_THR:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._write_thr(value)
        elif port == UART_IER:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | (value << 8)
            else:
                self._write_ier(value)
        elif port == UART_FCR:
            self._write_fcr(value)
        elif port == UART_LCR:
            self.lcr = value
        elif port == UART_MCR:
            self.mcr = value & UART_MCR_MASK
            self._update_msr()
        elif port == UART_SCR:
            self.scr = value
        # LSR and MSR writes: factory test only; ignored.
        self._update_irq()

    def _read_lsr(self):
        if self.tx_busy:
            self._poll_tx()
        value = self._lsr()
        self.lsr_errors = 0         # reading LSR clears the latched errors
        self._update_irq()
        return value

    def _read_rbr(self):
        if not self.rx:
            return 0
        char = self.rx.pop(0) & 0xFF
        if self.rx:
            self._reveal_top()
            self._restart_timeout()
        self._update_irq()
        return char

    def _read_iir(self):
        iid = self._interrupt_id()
        if iid == UART_IIR_THRI:
            # Reading IIR while THRE is the reported source acknowledges it.
            self.thr_pending = False
            self._update_irq()
        return iid | (UART_IIR_FIFO if self._fifo_on() else 0)

    def _write_thr(self, value):
        if self.mcr & UART_MCR_LOOP:
            self._push_rx(value)
        elif self.out is not None:
            self.out.write(_BYTE[value])
            self._tx_credit -= 1
            if self._tx_credit < TX_ROOM:
                # no room for a whole FIFO: THR stays full until the sink drains
                self.tx_busy = not self._sink_has_room()
        # The character left at once: THR is empty again (unless the sink is full).
        self.thr_pending = not self.tx_busy

    def _sink_has_room(self):
        """Ask the sink how much it takes now; True if a whole FIFO fits."""
        room = getattr(self.out, 'room', None)
        self._tx_credit = NO_LIMIT if room is None else room()
        return self._tx_credit >= TX_ROOM

    def _poll_tx(self):
        # the transmitter is busy: has the sink drained since?
        if self.out is None or self._sink_has_room():
            self.tx_busy = False
            self.thr_pending = True     # the THR just emptied

    def _write_ier(self, value):
        value &= UART_IER_MASK
        if value & ~self.ier & UART_IER_ETBEI and not self.tx_busy:
            # Enabling ETBEI while THR is empty raises THRE (Linux's 8250
            # startup test and its console write path rely on it).
            self.thr_pending = True
        self.ier = value

    def _write_fcr(self, value):
        enable = value & UART_FCR_ENABLE
        if enable != self.fcr & UART_FCR_ENABLE:
            self.rx.clear()     # switching 16450 <-> FIFO mode empties FIFOs
        if not enable:
            self.fcr = 0        # other bits are not programmed without FCR0
            return
        self.fcr = value & UART_FCR_KEPT
        if value & UART_FCR_CLEAR_RX:
            self.rx.clear()
        # CLEAR_TX: the transmitter FIFO is always empty here.

    def thr_may_buffer(self):
        """True while THR writes need not reach the UART at once (IER 0; see
        the module doc)."""
        return not self.ier

    def write_bytes(self, offset, size, data):
        """Byte writes of ``data`` at ``offset``, one after the other: the
        same effect as ``write(offset, 1, b)`` for each byte. THR bytes with
        IER 0, outside loopback and DLAB, reach the sink in as few writes as
        the sink's room allows: a chunk ends where a byte-by-byte run would
        ask the sink for room, and the room is asked there, so THRE/TEMT and
        what the sink gets are those of one write per byte."""
        out = self.out
        if (offset != UART_THR or size != 1 or self.ier
                or self.lcr & UART_LCR_DLAB or self.mcr & UART_MCR_LOOP):
            for value in data:
                self.write(offset, 1, value)
            return
        i, n = 0, len(data) if out is not None else 0      # no sink: the bytes go nowhere
        while i < n:
            # the bytes up to the one after which the credit drops below a FIFO
            k = min(n - i, max(1, self._tx_credit - TX_ROOM + 1))
            out.write(bytes(data[i:i + k]))
            i += k
            self._tx_credit -= k
            if self._tx_credit < TX_ROOM:
                self.tx_busy = not self._sink_has_room()
        self.thr_pending = not self.tx_busy
        # IER is 0: no interrupt is enabled and the line stays low (as
        # _update_irq, which every change of IER runs, left it)

    def read_ahead(self, offset, pending):
        """What a one-byte read at ``offset`` would return once up to
        ``pending`` THR writes still buffered (see thr_may_buffer) were
        applied, read now (its side effects too); None when they might
        change it. Only an LSR read is answered: with IER 0, outside
        loopback and DLAB, THR writes change LSR only through THRE/TEMT,
        which stay 1 while the sink's known room, less the pending bytes,
        is still a whole FIFO (no byte among them would ask the sink)."""
        if (offset != UART_LSR or self.ier or self.tx_busy or self.lcr & UART_LCR_DLAB
                or self.mcr & UART_MCR_LOOP
                or (self._tx_credit - pending < TX_ROOM and self.out is not None)):
            return None
        if self.rx:
            value = self._lsr()
        else:
            value = self.lsr_errors | UART_LSR_THRE | UART_LSR_TEMT    # _lsr() without a call
        self.lsr_errors = 0         # as _read_lsr; with IER 0 the line stays low
        return value

    # -- host side -----------------------------------------------------

    def rx_room(self):
        """How many characters receive() would accept now."""
        if self.mcr & UART_MCR_LOOP:
            return 0            # serial input is disconnected in loopback
        return self._rx_capacity() - len(self.rx)

    def receive(self, data):
        """Queue bytes from the back end; returns how many were taken."""
        taken = max(0, min(len(data), self.rx_room()))
        for char in data[:taken]:
            self._push_rx(char)
        self._update_irq()
        return taken

    def receive_break(self):
        """Queue a break (a zero character with BI); False if no room."""
        if self.rx_room() <= 0:
            return False
        self._push_rx(RX_BREAK)
        self._update_irq()
        return True

    def tick(self):
        """Recompute the line for clock() (and, while the transmitter is
        busy, whether the sink has drained); returns the next ns at which a
        character timeout may fire, or None."""
        if self.tx_busy:
            self._poll_tx()
        self._update_irq()
        if (self.clock is None or not self.ier & UART_IER_ERBFI
                or not self._fifo_on() or not self.rx):
            return None
        return self.timeout_at if self.clock() < self.timeout_at else None

    # -- internals -----------------------------------------------------

    def _fifo_on(self):
        return bool(self.fcr & UART_FCR_ENABLE)

    def _rx_capacity(self):
        return FIFO_SIZE if self._fifo_on() else 1

    def _trigger(self):
        if not self._fifo_on():
            return 1
        return RX_TRIGGER_LEVELS[(self.fcr >> 6) & 3]

    def _push_rx(self, char):
        if len(self.rx) >= self._rx_capacity():
            self.lsr_errors |= UART_LSR_OE
            if self._fifo_on():
                return          # the new character is lost
            self.rx.clear()     # 16450 mode: it overwrites the holding byte
        self.rx.append(char)
        if len(self.rx) == 1:
            self._reveal_top()
        self._restart_timeout()

    def _reveal_top(self):
        # A break shows in LSR once its character is the next to be read.
        if self.rx[0] & RX_BREAK:
            self.lsr_errors |= UART_LSR_BI

    def _char_ns(self):
        return CHAR_BITS * max(self.divisor, 1) * 1_000_000_000 // BAUD_BASE

    def _restart_timeout(self):
        now = self.clock() if self.clock is not None else 0
        self.timeout_at = now + TIMEOUT_CHARS * self._char_ns()

    def _timed_out(self):
        if not self._fifo_on() or not self.rx:
            return False
        return self.clock is None or self.clock() >= self.timeout_at

    def _lsr(self):
        value = self.lsr_errors
        if not self.tx_busy:
            value |= UART_LSR_THRE | UART_LSR_TEMT
        if self.rx:
            value |= UART_LSR_DR
            if self._fifo_on() and any(c & RX_BREAK for c in self.rx):
                value |= UART_LSR_FIFOE
        return value

    def _update_msr(self):
        old = self.msr
        if self.mcr & UART_MCR_LOOP:
            new = _loop_inputs(self.mcr)
        else:
            new = HOST_MODEM_INPUTS
        changed = old ^ new
        delta = old & UART_MSR_DELTAS
        if changed & UART_MSR_CTS:
            delta |= UART_MSR_DCTS
        if changed & UART_MSR_DSR:
            delta |= UART_MSR_DDSR
        if changed & UART_MSR_DCD:
            delta |= UART_MSR_DDCD
        if old & ~new & UART_MSR_RI:
            delta |= UART_MSR_TERI
        self.msr = new | delta

    def _interrupt_id(self, with_timeout=True):
        """The highest-priority pending and enabled interrupt, as IIR bits."""
        ier = self.ier
        if ier & UART_IER_ELSI and self.lsr_errors:
            return UART_IIR_RLSI
        if ier & UART_IER_ERBFI:
            if len(self.rx) >= self._trigger():
                return UART_IIR_RDI
            if with_timeout and self._timed_out():
                return UART_IIR_CTI
        if ier & UART_IER_ETBEI and self.thr_pending:
            return UART_IIR_THRI
        if ier & UART_IER_EDSSI and self.msr & UART_MSR_DELTAS:
            return UART_IIR_MSI
        return UART_IIR_NO_INT

    def _line(self, with_timeout=True):
        # OUT2 enables the ISA IRQ buffer; loopback forces the pin inactive.
        if (self.mcr & (UART_MCR_OUT2 | UART_MCR_LOOP)) != UART_MCR_OUT2:
            return 0
        return int(self._interrupt_id(with_timeout) != UART_IIR_NO_INT)

    def _update_irq(self):
        """The one place the IRQ line changes; drives it only on a change."""
        level = self._line()
        if level != self._level:
            self._level = level
            if self.irq is not None:
                self.irq.set(level)

    # -- snapshots and invariants ----------------------------------------

    def state(self):
        now = self.clock() if self.clock is not None else 0
        waiting = self._fifo_on() and self.rx
        return {
            'version': 1,
            'ier': self.ier, 'lcr': self.lcr, 'mcr': self.mcr,
            'fcr': self.fcr, 'scr': self.scr, 'divisor': self.divisor,
            'lsr_errors': self.lsr_errors, 'msr': self.msr,
            'rx': list(self.rx), 'thr_pending': self.thr_pending,
            'tx_busy': self.tx_busy,
            # Time left, not a deadline: the restoring clock may differ.
            'timeout_in': max(0, self.timeout_at - now) if waiting else 0,
        }

    @classmethod
    def from_state(cls, state, irq=None, out=None, clock=None):
        check_state_version('Serial', state)
        dev = cls(out=out, clock=clock)
        for name in ('ier', 'lcr', 'mcr', 'fcr', 'scr', 'divisor',
                     'lsr_errors', 'msr'):
            setattr(dev, name, int(state[name]))
        dev.rx = [int(c) for c in state['rx']]
        dev.thr_pending = bool(state['thr_pending'])
        dev.tx_busy = bool(state.get('tx_busy', False))     # absent before flow control
        now = clock() if clock is not None else 0
        dev.timeout_at = now + int(state['timeout_in'])
        dev._update_irq()       # no line attached yet: only caches the level
        problems = dev.check()
        if problems:
            raise ValueError('inconsistent Serial state: '
                             + '; '.join(problems))
        # Attach the caller's line only now, so it sees no power-on glitch.
        dev.irq = irq
        if irq is not None:
            irq.set(dev._level)
        return dev

    def check(self):
        """Violated internal invariants, as strings (empty when consistent)."""
        problems = []
        for name, mask in (('ier', UART_IER_MASK), ('mcr', UART_MCR_MASK),
                           ('fcr', UART_FCR_KEPT), ('lcr', 0xFF),
                           ('scr', 0xFF), ('divisor', 0xFFFF),
                           ('lsr_errors', UART_LSR_ERRORS), ('msr', 0xFF)):
            value = getattr(self, name)
            if value & ~mask or value < 0:
                problems.append(f'{name} {value!r} outside mask {mask:#x}')
        if self.fcr and not self.fcr & UART_FCR_ENABLE:
            problems.append(f'fcr {self.fcr:#x} programmed with FIFOs off')
        if len(self.rx) > self._rx_capacity():
            problems.append(f'{len(self.rx)} characters queued, '
                            f'capacity {self._rx_capacity()}')
        if self.tx_busy and self.thr_pending:
            problems.append('THRE interrupt pending while the transmitter is busy')
        if any(not 0 <= c <= 0xFF | RX_BREAK for c in self.rx):
            problems.append('receiver holds a value that is not a character')
        expected = (_loop_inputs(self.mcr) if self.mcr & UART_MCR_LOOP
                    else HOST_MODEM_INPUTS)
        if self.msr & UART_MSR_INPUTS != expected:
            problems.append(f'MSR inputs {self.msr & 0xF0:#x} differ from '
                            f'{expected:#x}')
        # The line may lag a timeout that tick() has not seen yet, no more.
        if not self._line(False) <= self._level <= self._line(True):
            problems.append(f'IRQ line {self._level} differs from the '
                            'pending interrupts')
        return problems
