"""The I/O APIC, delivering its interrupts as MSI messages.

Follows the Intel 82093AA I/O Advanced Programmable Interrupt Controller
(IOAPIC) datasheet (order number 290566) for the registers, with two
changes that later Intel IOAPICs (the ICH family's, version 0x20) made and
that Linux and KVM expect: the version register reads 0x20, and a directed
EOI register sits at offset 0x40.  Messages go out in the MSI format of the
Intel 64 and IA-32 Architectures Software Developer's Manual, Vol. 3,
section 11.11 ("Message Signalled Interrupts"), because the wiring hands
them to the in-kernel local APIC with KVM_SIGNAL_MSI.

MMIO window (``SIZE`` = 0x100 bytes; the platform places it, at 0xFEC00000 on a PC):

* 0x00 IOREGSEL: index of the indirect register that IOWIN reaches.
* 0x10 IOWIN: the selected indirect register (32 bits).
* 0x40 EOI: writing a vector ends every level interrupt with that vector.

Indirect registers: 0x00 IOAPICID (ID in bits 24-27), 0x01 IOAPICVER
(0x00170020: 24 pins, version 0x20), 0x02 IOAPICARB (arbitration ID, loaded
from the ID when the ID is written), 0x10-0x3F the redirection table, two
32-bit halves per pin.

Choices where the datasheet leaves room:

* The registers are 32 bits wide and meant for aligned dword accesses.  A
  read of any other size or offset returns the addressed bytes of the
  registers (IOWIN reads have no side effect), and bytes that no register
  backs, like every undefined offset, read 0.  Writes take effect for
  IOREGSEL and EOI at any size at their exact offset (both hold a byte), and
  for IOWIN only as a 32- or 64-bit write at 0x10 (the low dword is used);
  other writes are ignored and counted in ``ignored_writes``.
* Reserved bits of a redirection entry (17-55) keep what the guest wrote
  and read it back, as KVM's in-kernel IOAPIC (Linux
  arch/x86/kvm/ioapic.c, ``ioapic_write_indirect``: it stores both halves
  whole and restores only the read-only fields) and QEMU's do, so a guest
  reads the same entry in every irqchip mode.  The two bits the datasheet
  makes read-only ignore writes: delivery status (bit 12) always reads 0,
  because a message goes out synchronously and is never held up, and
  remote IRR (bit 14) changes only by delivery, EOI, or a switch to edge.
  Reserved delivery modes (3 and 6) send nothing.
* An edge pin delivers on a rising edge of its input (after the polarity
  inversion) while unmasked; an edge that arrives while masked is lost.
  Changing the polarity bit is not an edge.
* A level pin delivers while its input is asserted, unmasked and remote IRR
  is clear, and delivery sets remote IRR.  ``eoi(vector)`` clears remote IRR
  for every level pin with that vector; a pin still asserted then delivers
  again.  Switching a pin to edge clears its remote IRR (Linux relies on
  this to clear a stuck remote IRR on IOAPICs without an EOI register).
* Delivery is iterative: ``msi()`` may call back into the IOAPIC (an EOI, a
  new line level) without recursing.  At most ``MAX_BURST`` messages go out
  per call into the device; what is still due after that (a guest that EOIs
  from inside delivery with its line stuck high) goes out on the next
  ``write``, ``set_irq`` or ``eoi``.
* ``reset()`` masks every pin and clears ID, index, pending edges and the
  round-robin start (pin 0 first, as on a fresh chip); the input pin levels
  stay what the devices drive.
"""

__all__ = ['IoApic', 'msi_message']

from . import Device, check_state_version

NUM_PINS = 24                 # redirection entries (max redirection entry 23)
MAX_BURST = 64                # messages per call before the rest is deferred

# MMIO window offsets.
IOREGSEL = 0x00               # I/O register select (index, bits 7:0)
IOWIN = 0x10                  # I/O window: the selected register
IOAPIC_EOI = 0x40             # EOI register (version 0x20): vector in 7:0

# Indirect registers (IOREGSEL values).
IOAPICID = 0x00               # identification: ID in bits 27:24
IOAPICVER = 0x01              # version (read-only)
IOAPICARB = 0x02              # arbitration ID in bits 27:24 (read-only)
IOREDTBL = 0x10               # redirection table: 0x10 + 2 * pin (+1: high)

IOAPIC_ID_SHIFT = 24
IOAPIC_ID_MASK = 0x0F         # 4-bit APIC ID
IOAPIC_VERSION = 0x20         # ICH-style IOAPIC with an EOI register
IOAPICVER_VALUE = ((NUM_PINS - 1) << 16) | IOAPIC_VERSION

# Redirection entry fields (bit positions in the 64-bit entry).
IOREDTBL_VECTOR = 0xFF                # INTVEC: interrupt vector
IOREDTBL_DELMOD_SHIFT = 8             # DELMOD: delivery mode, bits 10:8
IOREDTBL_DELMOD = 0x7 << 8
IOREDTBL_DESTMOD = 1 << 11            # DESTMOD: 0 physical, 1 logical
IOREDTBL_DELIVS = 1 << 12             # DELIVS: send pending (read-only)
IOREDTBL_INTPOL = 1 << 13             # INTPOL: 1 = active low
IOREDTBL_REMOTE_IRR = 1 << 14         # remote IRR (read-only)
IOREDTBL_TRIGGER = 1 << 15            # TRIGGER: 0 edge, 1 level
IOREDTBL_MASK = 1 << 16               # interrupt mask
IOREDTBL_DEST_SHIFT = 56              # destination field, bits 63:56
IOREDTBL_WRITABLE_LO = 0xFFFFAFFF     # all low bits but DELIVS and remote IRR
IOREDTBL_WRITABLE_HI = 0xFFFFFFFF     # destination and the reserved bits 32-55
IOREDTBL_RESET = IOREDTBL_MASK        # power-on: masked, everything else 0

# Delivery modes (DELMOD).
DELMOD_FIXED = 0              # to the destination's vector
DELMOD_LOWEST = 1             # lowest priority among the destinations
DELMOD_SMI = 2                # system management interrupt
DELMOD_NMI = 4                # non-maskable interrupt
DELMOD_INIT = 5               # INIT
DELMOD_EXTINT = 7             # vector from an external 8259A
DELMOD_VALID = frozenset((DELMOD_FIXED, DELMOD_LOWEST, DELMOD_SMI,
                          DELMOD_NMI, DELMOD_INIT, DELMOD_EXTINT))

# MSI format (SDM Vol. 3, 11.11.1 and 11.11.2).
MSI_ADDR_BASE = 0xFEE00000    # bits 31:20 are 0xFEE
MSI_ADDR_DEST_SHIFT = 12      # destination ID, bits 19:12
MSI_ADDR_DM = 1 << 2          # destination mode: 1 logical
MSI_DATA_DELMOD_SHIFT = 8     # delivery mode, bits 10:8
MSI_DATA_LEVEL = 1 << 14      # level: 1 assert (meaningful for level mode)
MSI_DATA_TRIGGER = 1 << 15    # trigger mode: 1 level


def msi_message(entry):
    """The (address, data) MSI pair a redirection entry sends.

    The redirection hint (address bit 3) stays 0; a level-triggered entry
    sends an assert message (data bit 14 set).
    """
    dest = (entry >> IOREDTBL_DEST_SHIFT) & 0xFF
    address = MSI_ADDR_BASE | (dest << MSI_ADDR_DEST_SHIFT)
    if entry & IOREDTBL_DESTMOD:
        address |= MSI_ADDR_DM
    mode = (entry & IOREDTBL_DELMOD) >> IOREDTBL_DELMOD_SHIFT
    data = (entry & IOREDTBL_VECTOR) | (mode << MSI_DATA_DELMOD_SHIFT)
    if entry & IOREDTBL_TRIGGER:
        data |= MSI_DATA_TRIGGER | MSI_DATA_LEVEL
    return address, data


def _deliverable(entry):
    """Unmasked, and a delivery mode that sends a message."""
    mode = (entry & IOREDTBL_DELMOD) >> IOREDTBL_DELMOD_SHIFT
    return not entry & IOREDTBL_MASK and mode in DELMOD_VALID


class IoApic(Device):
    """An 82093AA-style IOAPIC with 24 pins that sends MSI messages.

    ``msi(address, data)`` is called for each message.  Devices drive
    ``set_irq(pin, level)``; the wiring calls ``eoi(vector)`` on
    KVM_EXIT_IOAPIC_EOI.
    """

    SIZE = 0x100

    def __init__(self, msi=None):
        self.msi = msi
        self.pins = [0] * NUM_PINS    # raw input levels, kept across reset
        self.delivered = 0            # messages sent
        self.ignored_writes = 0       # writes that hit nothing writable
        self._busy = False            # inside the delivery loop
        self.reset()

    def reset(self):
        """Power-on state: every pin masked, ID 0, nothing pending."""
        self.ioapic_id = 0
        self.arb_id = 0
        self.regsel = 0
        self.entries = [IOREDTBL_RESET] * NUM_PINS
        self.edge_pending = 0         # bit per pin: rising edge not yet sent
        self.deferred = False         # a burst stopped with work still due
        self._next_pin = 0            # round-robin start for fairness

    # -- bus side ---------------------------------------------------------

    def read(self, offset, size):
        """Read ``size`` bytes of the register window; see the module doc."""
        if size not in (1, 2, 4, 8):
            return 0
        value = 0
        for i in range(size):
            pos = offset + i
            reg = self._window_register(pos & ~3)
            value |= ((reg >> (8 * (pos & 3))) & 0xFF) << (8 * i)
        return value

    def _window_register(self, offset):
        if offset == IOREGSEL:
            return self.regsel
        if offset == IOWIN:
            return self._read_indirect(self.regsel)
        return 0          # EOI is write-only; the rest is undefined

    def write(self, offset, size, value):
        """Write the register window; see the module doc for odd sizes."""
        if size not in (1, 2, 4, 8):
            self.ignored_writes += 1
            return
        value &= (1 << (8 * size)) - 1
        if offset == IOREGSEL:
            self.regsel = value & 0xFF
        elif offset == IOWIN and size in (4, 8):
            self._write_indirect(self.regsel, value & 0xFFFFFFFF)
        elif offset == IOAPIC_EOI:
            self.eoi(value & 0xFF)
            return
        else:
            self.ignored_writes += 1
        self._deliver_due()

    def _read_indirect(self, index):
        if index == IOAPICID:
            return self.ioapic_id << IOAPIC_ID_SHIFT
        if index == IOAPICVER:
            return IOAPICVER_VALUE
        if index == IOAPICARB:
            return self.arb_id << IOAPIC_ID_SHIFT
        pin, high = self._entry_index(index)
        if pin is None:
            return 0
        return (self.entries[pin] >> (32 if high else 0)) & 0xFFFFFFFF

    def _write_indirect(self, index, value):
        if index == IOAPICID:
            # The datasheet loads the arbitration ID with the same data.
            self.ioapic_id = (value >> IOAPIC_ID_SHIFT) & IOAPIC_ID_MASK
            self.arb_id = self.ioapic_id
            return
        pin, high = self._entry_index(index)
        if pin is None:
            self.ignored_writes += 1      # read-only or undefined register
            return
        entry = self.entries[pin]
        if high:
            entry = (entry & 0xFFFFFFFF) | (
                (value & IOREDTBL_WRITABLE_HI) << 32)
        else:
            keep = entry & ~IOREDTBL_WRITABLE_LO
            entry = keep | (value & IOREDTBL_WRITABLE_LO)
        self._set_entry(pin, entry)

    @staticmethod
    def _entry_index(index):
        """(pin, high half?) for a redirection-table index, else (None, 0)."""
        if IOREDTBL <= index < IOREDTBL + 2 * NUM_PINS:
            return (index - IOREDTBL) >> 1, index & 1
        return None, 0

    def _set_entry(self, pin, entry):
        if not entry & IOREDTBL_TRIGGER:
            entry &= ~IOREDTBL_REMOTE_IRR     # edge mode has no remote IRR
        if entry & IOREDTBL_TRIGGER or not _deliverable(entry):
            self.edge_pending &= ~(1 << pin)
        self.entries[pin] = entry

    # -- wiring side ------------------------------------------------------

    def set_irq(self, pin, level):
        """Drive input ``pin`` (0-23) to ``level``; other pins are ignored."""
        if not isinstance(pin, int) or not 0 <= pin < NUM_PINS:
            return
        level = 1 if level else 0
        old = self.pins[pin]
        self.pins[pin] = level
        entry = self.entries[pin]
        if (not entry & IOREDTBL_TRIGGER and _deliverable(entry)
                and self._asserted(pin) and old != level):
            self.edge_pending |= 1 << pin
        self._deliver_due()

    def edge_message(self, pin):
        """The (address, data) MSI message a rising input on ``pin`` sends
        right now, when that is all it does: the entry is edge-triggered,
        active high, unmasked, and delivers fixed or lowest priority. Else
        None (masked, level, active low, or an NMI/INIT/SMI/ExtINT entry:
        only :meth:`set_irq` gets those right). The wiring may send such an
        edge by another path (a KVM_IRQFD route built from this message)
        and record the input with :meth:`note_level`."""
        entry = self.entries[pin]
        mode = (entry & IOREDTBL_DELMOD) >> IOREDTBL_DELMOD_SHIFT
        if (entry & (IOREDTBL_TRIGGER | IOREDTBL_INTPOL | IOREDTBL_MASK)
                or mode not in (DELMOD_FIXED, DELMOD_LOWEST)):
            return None
        return msi_message(entry)

    def note_level(self, pin, level):
        """Record input ``pin``'s level and send nothing: its edge went out
        by another path (see :meth:`edge_message`). A later switch of the
        entry to level mode sees the level, as it would after set_irq."""
        if isinstance(pin, int) and 0 <= pin < NUM_PINS:
            self.pins[pin] = 1 if level else 0

    def eoi(self, vector):
        """End of interrupt for ``vector``: clear remote IRR, redeliver."""
        vector &= 0xFF
        for pin, entry in enumerate(self.entries):
            if (entry & IOREDTBL_TRIGGER
                    and (entry & IOREDTBL_VECTOR) == vector):
                self.entries[pin] = entry & ~IOREDTBL_REMOTE_IRR
        self._deliver_due()

    def _asserted(self, pin):
        """The pin's input after the polarity inversion."""
        low = 1 if self.entries[pin] & IOREDTBL_INTPOL else 0
        return bool(self.pins[pin] ^ low)

    def _due(self, pin):
        """True when ``pin`` should send a message now."""
        entry = self.entries[pin]
        if not entry & IOREDTBL_TRIGGER:
            return bool(self.edge_pending >> pin & 1)
        return (_deliverable(entry) and self._asserted(pin)
                and not entry & IOREDTBL_REMOTE_IRR)

    def _next_due(self):
        for i in range(NUM_PINS):
            pin = (self._next_pin + i) % NUM_PINS
            if self._due(pin):
                return pin
        return None

    def _deliver_due(self):
        """The one recompute point: send every message that is due.

        A loop, not recursion: a call that arrives from inside ``msi()``
        only changes state, and the loop already running picks it up.
        """
        if self._busy:
            return
        self._busy = True
        try:
            for _ in range(MAX_BURST):
                pin = self._next_due()
                if pin is None:
                    self.deferred = False
                    return
                self._send(pin)
            self.deferred = self._next_due() is not None
        finally:
            self._busy = False

    def _send(self, pin):
        entry = self.entries[pin]
        self._next_pin = (pin + 1) % NUM_PINS
        if entry & IOREDTBL_TRIGGER:
            self.entries[pin] = entry | IOREDTBL_REMOTE_IRR
        else:
            self.edge_pending &= ~(1 << pin)
        self.delivered += 1
        if self.msi is not None:
            self.msi(*msi_message(entry))

    @property
    def sending_pin(self):
        """Inside ``msi()``: the pin whose message it is (a trace names it)."""
        return (self._next_pin - 1) % NUM_PINS

    def routes(self):
        """The (address, data) message of each pin's entry, in pin order.

        In split-irqchip mode KVM exits with KVM_EXIT_IOAPIC_EOI only for
        vectors of level-triggered MSI routes on GSIs below the reserved
        IOAPIC pin count, so the wiring mirrors this list into
        KVM_SET_GSI_ROUTING (GSI = pin) whenever it changes after a guest
        write; masked pins may stay listed, which costs at most an exit.
        """
        return [msi_message(entry) for entry in self.entries]

    # -- snapshot and invariants -----------------------------------------

    def state(self):
        return {'version': 1, 'id': self.ioapic_id, 'arb': self.arb_id,
                'regsel': self.regsel, 'entries': list(self.entries),
                'pins': list(self.pins), 'edge_pending': self.edge_pending,
                'deferred': self.deferred, 'delivered': self.delivered,
                'ignored_writes': self.ignored_writes,
                'next_pin': self._next_pin}

    @classmethod
    def from_state(cls, state, msi=None):
        check_state_version('IoApic', state)
        dev = cls()
        dev.ioapic_id = state['id'] & IOAPIC_ID_MASK
        dev.arb_id = state['arb'] & IOAPIC_ID_MASK
        dev.regsel = state['regsel'] & 0xFF
        dev.entries = [int(e) & ((1 << 64) - 1) for e in state['entries']]
        dev.pins = [1 if p else 0 for p in state['pins']]
        dev.edge_pending = state['edge_pending']
        dev.deferred = bool(state['deferred'])
        dev.delivered = state['delivered']
        dev.ignored_writes = state['ignored_writes']
        dev._next_pin = state['next_pin'] % NUM_PINS
        # Attach the caller's sink only now, so nothing is sent while loading.
        dev.msi = msi
        return dev

    def check(self):
        """Violated internal invariants, as strings (empty when consistent)."""
        problems = []
        if len(self.entries) != NUM_PINS or len(self.pins) != NUM_PINS:
            return [f'{len(self.entries)} entries and {len(self.pins)} pins,'
                    f' not {NUM_PINS}']
        for pin, entry in enumerate(self.entries):
            if entry & IOREDTBL_DELIVS or entry >> 64 or entry < 0:
                problems.append(f'pin {pin}: DELIVS set or not 64 bits'
                                f' in {entry:#x}')
            if entry & IOREDTBL_REMOTE_IRR and not entry & IOREDTBL_TRIGGER:
                problems.append(f'pin {pin}: remote IRR set in edge mode')
            if self.pins[pin] not in (0, 1):
                problems.append(f'pin {pin}: input level {self.pins[pin]!r}')
        if self.edge_pending >> NUM_PINS or self.edge_pending < 0:
            problems.append(f'edge_pending {self.edge_pending:#x} past pin 23')
        if not self._busy and not self.deferred:
            for pin in range(NUM_PINS):
                if self._due(pin):
                    problems.append(f'pin {pin}: due but not delivered')
        if not 0 <= self.regsel <= 0xFF:
            problems.append(f'IOREGSEL {self.regsel:#x} wider than a byte')
        if not 0 <= self.ioapic_id <= IOAPIC_ID_MASK:
            problems.append(f'ID {self.ioapic_id:#x} wider than 4 bits')
        return problems
