"""The PC's pair of Intel 8259A programmable interrupt controllers.

Follows the Intel 8259A/8259A-2/8259A-8 Programmable Interrupt Controller
datasheet (Intel order number 231468), and, for the edge/level control
registers, the ELCR1/ELCR2 description in Intel's 82371FB/SB (PIIX/PIIX3)
datasheet, which the ICH family keeps unchanged.

Wiring as on a PC: the master decodes ports 0x20-0x21, the slave 0xA0-0xA1
and sits on the master's IR2; ELCR1/ELCR2 are ports 0x4D0-0x4D1.  The
master's INT output drives ``intr`` (INTR to the CPU); ``acknowledge()`` is
the CPU's INTA cycle and returns the vector to inject.

Choices where the datasheet leaves room, or the PC differs from it:

* Trigger mode comes from the ELCR alone (as on a PIIX, where ICW1's LTIM
  bit has no function); LTIM is stored but ignored.  ELCR bits for IRQ 0, 1,
  2, 8 and 13 are fixed at 0, so the cascade input IR2 is edge-triggered.
* An edge-triggered IRR bit is latched on the rising edge and stays set until
  the request is acknowledged (the datasheet asks the input to stay high
  until the first INTA; the latch lets a device that only pulses its line,
  ``IrqLine.pulse()``, still be served).  A level-triggered IRR bit follows
  the input.  A request that is gone (level dropped, or masked) by the time
  of INTA gives the spurious IR7 vector with no ISR bit set.  If the master
  latched IR2 but the slave has nothing left, the master still sets ISR bit 2
  and the slave returns its IR7 vector (IRQ 15), so the guest owes the master
  an EOI, as on the hardware.
* Because IR2 is edge-triggered, a slave whose INT stays high across INTA
  (auto-EOI or special mask mode on the slave, with more requests waiting)
  gives the master no new edge; Linux keeps the slave out of auto-EOI.
* The cascade is wired to IR2; ICW3 and ICW4's BUF and M/S bits are stored
  (and snapshotted) but do not rewire it.  Vectors are always in 8086 form
  (ICW2 & 0xF8 | IR): 8080/8085 CALL sequences are not modelled.
* ICW1 clears ISR, IRR (edge latches) and the rotate-in-auto-EOI flag as well
  as what the datasheet lists (IMR, priority, special mask, read select), so
  a re-initialised chip starts idle.
* In special mask mode every unmasked level not itself in service may
  interrupt, whatever else is in service (datasheet: "enables interrupts from
  all other levels (lower as well as higher) that are not masked").
* Special fully nested mode lets the master take a new request on IR2 while
  IR2 is in service (a higher-priority slave interrupt).
* Poll: the next read at either port after OCW3 P=1 returns the poll word and
  acknowledges like INTA (auto-EOI included).
* Accesses wider than a byte act as successive byte accesses at successive
  ports (low byte first); bytes past the device's ports are dropped on write
  and read as 0xFF.
"""

__all__ = ['PicPair', 'CASCADE_IRQ', 'ELCR_WRITABLE']

from . import Device, IrqLine, read_bytes, write_bytes, check_state_version

# ICW1 (write to A0=0 with D4=1).
ICW1_IC4 = 0x01       # ICW4 will follow
ICW1_SNGL = 0x02      # single chip: no ICW3
ICW1_ADI = 0x04       # call address interval (8080/8085 only; stored)
ICW1_LTIM = 0x08      # level-triggered mode (replaced by ELCR on a PIIX)
ICW1_SELECT = 0x10    # D4: this write is ICW1, not an OCW

ICW2_VECTOR = 0xF8    # T7-T3: vector of IR0; IR number fills bits 2-0

ICW4_UPM = 0x01       # 8086/8088 mode
ICW4_AEOI = 0x02      # automatic end of interrupt
ICW4_MS = 0x04        # buffered mode: master (1) or slave (0)
ICW4_BUF = 0x08       # buffered mode
ICW4_SFNM = 0x10      # special fully nested mode
ICW4_MASK = 0x1F      # D7-D5 are always 0

OCW3_SELECT = 0x08    # with D4=0: D3=1 is OCW3, D3=0 is OCW2
OCW3_RIS = 0x01       # read ISR (1) or IRR (0), when RR is set
OCW3_RR = 0x02        # read register: apply RIS
OCW3_P = 0x04         # poll: next read returns the poll word
OCW3_SMM = 0x20       # special mask mode on (1) / off (0), when ESMM is set
OCW3_ESMM = 0x40      # enable special mask mode change

OCW2_LEVEL = 0x07     # L2-L0: the IR level for specific commands
# OCW2 R, SL, EOI (bits 7-5) as one 3-bit command.
OCW2_ROTATE_AEOI_CLEAR = 0      # clear rotate in automatic EOI mode
OCW2_NONSPECIFIC_EOI = 1        # non-specific EOI
OCW2_NOP = 2                    # no operation
OCW2_SPECIFIC_EOI = 3           # specific EOI of level L
OCW2_ROTATE_AEOI_SET = 4        # set rotate in automatic EOI mode
OCW2_ROTATE_NONSPECIFIC_EOI = 5  # rotate on non-specific EOI
OCW2_SET_PRIORITY = 6           # set priority: L becomes the lowest
OCW2_ROTATE_SPECIFIC_EOI = 7    # rotate on specific EOI of level L

POLL_I = 0x80         # poll word: an interrupt is requesting (W2-W0 = level)

# Initialisation state: which word the next A0=1 write is.
INIT_READY, INIT_ICW2, INIT_ICW3, INIT_ICW4 = range(4)

CASCADE_IRQ = 2       # master input the slave's INT drives
SPURIOUS_IRQ = 7      # level reported when no request survives to INTA
ELCR_WRITABLE = (0xF8, 0xDE)  # IRQ 0, 1, 2 and IRQ 8, 13 are always edge

_BYTE_FIELDS = ('irr', 'isr', 'imr', 'lines', 'elcr', 'icw1', 'vector_base',
                'icw3', 'icw4')
_SMALL_FIELDS = ('init_state', 'lowest')
_FLAG_FIELDS = ('rotate_aeoi', 'special_mask', 'read_isr', 'poll')


class _Pic:
    """One 8259A: the registers and the priority resolver, no wiring."""

    SIZE = 2

    def __init__(self, pair, is_master):
        self._pair = pair
        self.is_master = is_master
        self.lines = 0     # input pin levels, kept across reset
        self.reset()

    def reset(self):
        self.elcr = 0            # all edge-triggered at power-on
        self.irr = 0
        self.isr = 0
        # Undefined at power-on; masked here, so that nothing reaches the CPU
        # with vector base 0 before the guest's ICW1 (which clears the mask)
        self.imr = 0xFF
        self.icw1 = 0
        self.vector_base = 0
        self.icw3 = 0
        self.icw4 = 0
        self.init_state = INIT_READY
        self.lowest = 7          # IR with the lowest priority
        self.rotate_aeoi = False
        self.special_mask = False
        self.read_isr = False
        self.poll = False

    # -- priority resolver -------------------------------------------------

    def _priority(self, irq):
        """0 for the highest priority level, 7 for the lowest."""
        return (irq - self.lowest - 1) & 7

    def _highest(self, bits):
        for step in range(1, 9):
            irq = (self.lowest + step) & 7
            if bits >> irq & 1:
                return irq
        return None

    def candidate(self):
        """The IR that INTA would serve now, or None."""
        requests = self.irr & ~self.imr
        if self.special_mask:
            return self._highest(requests & ~self.isr)
        irq = self._highest(requests)
        if irq is None:
            return None
        top = self._highest(self.isr)
        if top is None or self._priority(irq) < self._priority(top):
            return irq
        if (irq == top == CASCADE_IRQ and self.is_master
                and self.icw4 & ICW4_SFNM):
            return irq
        return None

    def vector(self, irq):
        return (self.vector_base & ICW2_VECTOR) | irq

    def ack(self, irq):
        """INTA (or poll) of ``irq``: move it from IRR to ISR."""
        bit = 1 << irq
        if not self.elcr & bit:
            self.irr &= ~bit        # edge latch consumed; level follows pin
        if self.icw4 & ICW4_AEOI:
            if self.rotate_aeoi:
                self.lowest = irq
        else:
            self.isr |= bit

    def set_line(self, irq, level):
        bit = 1 << irq
        rising = level and not self.lines & bit
        self.lines = (self.lines | bit) if level else (self.lines & ~bit)
        if self.elcr & bit:
            self.irr = (self.irr & ~bit) | (self.lines & bit)
        elif rising:
            self.irr |= bit

    def set_elcr(self, value):
        self.elcr = value & ELCR_WRITABLE[0 if self.is_master else 1]
        # Lines now level-triggered show their level; edge ones keep IRR.
        self.irr = (self.irr & ~self.elcr) | (self.lines & self.elcr)

    # -- register interface --------------------------------------------------

    def read(self, offset, size):
        value = read_bytes(self._read_byte, self.SIZE, offset, size)
        self._pair._update_irq()
        return value

    def write(self, offset, size, value):
        write_bytes(self._write_byte, self.SIZE, offset, size, value)
        self._pair._update_irq()

    def _read_byte(self, port):
        if self.poll:
            self.poll = False
            irq = self.candidate()
            if irq is None:
                return 0
            self.ack(irq)
            return POLL_I | irq
        if port == 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def _write_byte(self, port, value):
        if port == 1:
            self._write_data(value)
        elif value & ICW1_SELECT:
            self._icw1(value)
        elif value & OCW3_SELECT:
            self._ocw3(value)
        else:
            self._ocw2(value)

    def _icw1(self, value):
        self.icw1 = value
        self.irr = self.lines & self.elcr   # edge sense latches reset
        self.isr = 0
        self.imr = 0
        self.lowest = 7
        self.rotate_aeoi = False
        self.special_mask = False
        self.read_isr = False
        self.poll = False
        self.icw4 = 0                       # cleared unless ICW4 follows
        self.init_state = INIT_ICW2

    def _write_data(self, value):
        state = self.init_state
        if state == INIT_READY:
            self.imr = value                # OCW1
            return
        if state == INIT_ICW2:
            self.vector_base = value & ICW2_VECTOR
        elif state == INIT_ICW3:
            self.icw3 = value
        else:
            self.icw4 = value & ICW4_MASK
        self.init_state = self._next_icw(state)

    def _next_icw(self, state):
        if state == INIT_ICW2 and not self.icw1 & ICW1_SNGL:
            return INIT_ICW3
        if state in (INIT_ICW2, INIT_ICW3) and self.icw1 & ICW1_IC4:
            return INIT_ICW4
        return INIT_READY

    def _ocw2(self, value):
        command = value >> 5
        level = value & OCW2_LEVEL
        if command in (OCW2_ROTATE_AEOI_CLEAR, OCW2_ROTATE_AEOI_SET):
            self.rotate_aeoi = command == OCW2_ROTATE_AEOI_SET
        elif command in (OCW2_NONSPECIFIC_EOI, OCW2_ROTATE_NONSPECIFIC_EOI):
            top = self._highest(self.isr)
            if top is not None:
                self.isr &= ~(1 << top)
                if command == OCW2_ROTATE_NONSPECIFIC_EOI:
                    self.lowest = top
        elif command in (OCW2_SPECIFIC_EOI, OCW2_ROTATE_SPECIFIC_EOI):
            self.isr &= ~(1 << level)
            if command == OCW2_ROTATE_SPECIFIC_EOI:
                self.lowest = level
        elif command == OCW2_SET_PRIORITY:
            self.lowest = level

    def _ocw3(self, value):
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_P:
            self.poll = True

    # -- snapshot and invariants --------------------------------------------

    def state(self):
        fields = _BYTE_FIELDS + _SMALL_FIELDS + _FLAG_FIELDS
        return {name: getattr(self, name) for name in fields}

    def load(self, state):
        for name in _BYTE_FIELDS:
            setattr(self, name, int(state[name]) & 0xFF)
        self.init_state = int(state['init_state']) & 3
        self.lowest = int(state['lowest']) & 7
        for name in _FLAG_FIELDS:
            setattr(self, name, bool(state[name]))
        self.set_elcr(self.elcr)

    def check(self, name):
        problems = []
        for field in _BYTE_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or not 0 <= value <= 0xFF:
                problems.append(f'{name}.{field} out of byte range: {value!r}')
        if self.init_state not in range(4):
            problems.append(f'{name}.init_state invalid: {self.init_state!r}')
        if self.lowest not in range(8):
            problems.append(f'{name}.lowest invalid: {self.lowest!r}')
        if self.vector_base & ~ICW2_VECTOR:
            problems.append(f'{name}.vector_base has low bits set')
        if self.icw4 & ~ICW4_MASK:
            problems.append(f'{name}.icw4 has reserved bits set')
        mask = ELCR_WRITABLE[0 if self.is_master else 1]
        if self.elcr & ~mask:
            problems.append(f'{name}.elcr sets fixed-edge bits')
        if (self.irr ^ self.lines) & self.elcr:
            problems.append(f'{name}: level-triggered IRR differs from input')
        return problems


class _Elcr:
    """ELCR1 (offset 0, IRQ 0-7) and ELCR2 (offset 1, IRQ 8-15): 1 = level."""

    SIZE = 2

    def __init__(self, pair):
        self._pair = pair

    def _chip(self, port):
        return self._pair.master if port == 0 else self._pair.slave

    def read(self, offset, size):
        return read_bytes(lambda port: self._chip(port).elcr,
                           self.SIZE, offset, size)

    def write(self, offset, size, value):
        write_bytes(lambda port, byte: self._chip(port).set_elcr(byte),
                     self.SIZE, offset, size, value)
        self._pair._update_irq()


class PicPair(Device):
    """Master and slave 8259A with ELCR, as on a PC.

    ``master`` (ports 0x20-0x21), ``slave`` (0xA0-0xA1) and ``elcr``
    (0x4D0-0x4D1) are the bus-facing objects (the pair itself has no
    ``read``/``write``: reset, snapshot and check go through it).  Devices drive ``set_irq``;
    ``intr`` follows the master's INT output; ``acknowledge()`` is INTA.
    """

    def __init__(self, intr=None):
        self.intr = intr if intr is not None else IrqLine()
        self.master = _Pic(self, is_master=True)
        self.slave = _Pic(self, is_master=False)
        self.elcr = _Elcr(self)
        self.reset()

    def reset(self):
        """Power-on state; the input pin levels stay what the devices drive."""
        self.master.reset()
        self.slave.reset()
        self._update_irq()

    def _update_irq(self):
        """The one recompute point: slave INT to master IR2, master INT out."""
        self.master.set_line(CASCADE_IRQ, self.slave.candidate() is not None)
        self.intr.set(self.master.candidate() is not None)

    def set_irq(self, irq, level):
        """Drive ISA IRQ ``irq`` (0-15) to ``level``.

        IRQ 2 is the cascade input, which no device can drive (ISA IRQ 2
        devices appear on IRQ 9); it and out-of-range numbers are ignored.
        """
        if not isinstance(irq, int) or not 0 <= irq < 16 or irq == CASCADE_IRQ:
            return
        chip = self.slave if irq >= 8 else self.master
        chip.set_line(irq & 7, 1 if level else 0)
        self._update_irq()

    def acknowledge(self):
        """The CPU's INTA cycle: return the vector and move IRR to ISR."""
        master, slave = self.master, self.slave
        irq = master.candidate()
        if irq is None:
            vector = master.vector(SPURIOUS_IRQ)
        elif irq == CASCADE_IRQ:
            master.ack(irq)
            slave_irq = slave.candidate()
            if slave_irq is None:
                slave_irq = SPURIOUS_IRQ
            else:
                slave.ack(slave_irq)
            vector = slave.vector(slave_irq)
        else:
            master.ack(irq)
            vector = master.vector(irq)
        self._update_irq()
        return vector

    def pending(self):
        """True while INTR to the CPU is asserted."""
        return bool(self.intr.level)

    def state(self):
        return {'version': 1, 'master': self.master.state(),
                'slave': self.slave.state()}

    @classmethod
    def from_state(cls, state, intr=None):
        check_state_version('PicPair', state)
        pair = cls()
        pair.master.load(state['master'])
        pair.slave.load(state['slave'])
        # Attach the caller's line only now, so it sees no power-on glitch.
        pair.intr = intr if intr is not None else IrqLine()
        pair._update_irq()
        return pair

    def check(self):
        """Violated internal invariants, as strings (empty when consistent)."""
        problems = self.master.check('master') + self.slave.check('slave')
        slave_out = self.slave.candidate() is not None
        if bool(self.master.lines >> CASCADE_IRQ & 1) != slave_out:
            problems.append('master IR2 input differs from slave INT output')
        if bool(self.intr.level) != (self.master.candidate() is not None):
            problems.append('INTR differs from master INT output')
        return problems
