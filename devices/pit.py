"""The PC's Intel 8254 programmable interval timer and system control port B.

Follows the Intel 8254 Programmable Interval Timer datasheet (Intel order
number 231164), and, for port 0x61, the NMI status and control register of
Intel's PIIX/ICH southbridge datasheets (the PC/AT's "port B").

Wiring as on a PC: :class:`Pit` decodes ports 0x40-0x43 (counters 0-2 and
the control word register); its ``port61`` attribute, a
:class:`SystemControlPort`, decodes port 0x61.  The input clock is
1193182 Hz.  Counter 0's OUT drives ``irq`` (IRQ 0); the gates of counters 0
and 1 are tied high; counter 2's gate is bit 0 of port 0x61 and its OUT is
read back in bit 5.

Time: nothing runs in the background.  Each counter remembers the ``clock()``
time at which its count was loaded (or its gate last changed) and computes
its count and OUT level from the CLK pulses elapsed since then.  ``tick()``
brings IRQ 0 up to date and returns the absolute ns at which it next changes.

Choices where the datasheet leaves room:

* The count loads at the write (or gate trigger) itself rather than on the
  next CLK edge, so every event comes one 838 ns CLK period earlier than on
  the chip (mode 0's OUT rises N, not N + 1, CLKs after the write).  NULL
  COUNT is therefore set only after a control word until a count is written,
  while a two-byte count is half written, while modes 1 and 5 wait for a
  gate trigger, and while modes 2 and 3 hold a new count for the end of the
  current period (mode 3: half-cycle), as the datasheet says they do.
* IRQ 0 follows OUT0, and every rising edge of OUT0 gives one low-to-high
  transition on the line.  When several periods pass between two looks
  (nobody polls continuously) they are coalesced into one edge, as QEMU and
  KVM's PIT do with missed ticks.  The one-CLK low pulses of modes 2, 4 and 5
  are folded into the rising edge that ends them, so ``tick()`` asks to be
  called once per period, not twice.
* ``tick()`` reports only counter 0: OUT1 drives nothing and OUT2 is
  computed when port 0x61 is read.
* A count of 1, illegal in modes 2 and 3, counts as 2.  BCD digits above 9
  are taken at face value (modulo 10000).
* A control word resets the counter's control logic: flip-flops, any
  latched count or status, and OUT.  The chip powers up undefined; here
  every counter powers up in mode 0, LSB then MSB, binary, with no count and
  OUT high (as a BIOS leaves a periodic timer between pulses), so that a
  guest's first control word for mode 2, 3 or 4 makes no early IRQ 0 edge,
  as with KVM's PIT; a mode 0 control word lowers OUT as the datasheet says.
* Port 0x61's refresh bit (bit 4) toggles every 18 CLKs (15.09 us), the
  PC/AT refresh period; it is derived from the clock, not from counter 1.
  Its phase (where in the 36-CLK cycle of two toggles the clock is) is part
  of the state, so a restored Pit toggles when the saved one would have.
"""

__all__ = ['Pit', 'SystemControlPort', 'PIT_FREQ_HZ']

from . import ByteRegisters, Device, check_state_version

PIT_FREQ_HZ = 1193182           # the PC's CLK input (14.31818 MHz / 12)
NS_PER_S = 1_000_000_000

# Control word register (port 0x43), datasheet figure "Control Word Format".
CW_SC_SHIFT = 6                 # SC1-SC0: select counter
CW_RW_SHIFT = 4                 # RW1-RW0: read/write access
CW_M_SHIFT = 1                  # M2-M0: mode
CW_BCD = 0x01                   # BCD: count in 4 decades
SC_READ_BACK = 3                # SC = 11: read-back command
RW_LATCH = 0                    # counter latch command
RW_LSB = 1                      # read/write least significant byte only
RW_MSB = 2                      # read/write most significant byte only
RW_LSB_MSB = 3                  # LSB first, then MSB

# Read-back command: the count and status bits are active low.
RB_COUNT_N = 0x20               # /COUNT: 0 = latch count of selected counters
RB_STATUS_N = 0x10              # /STATUS: 0 = latch status of selected counters
RB_CNT0 = 0x02                  # select counter 0 (CNT1 = 0x04, CNT2 = 0x08)

# Status byte returned after a read-back status latch.
ST_OUTPUT = 0x80                # state of the OUT pin
ST_NULL_COUNT = 0x40            # last count written not yet loaded into CE
ST_RW_SHIFT = 4                 # RW1-RW0 as programmed
ST_M_SHIFT = 1                  # M2-M0 as programmed

# System control port B (port 0x61).
P61_GATE2 = 0x01                # timer 2 gate
P61_SPKR_DATA = 0x02            # speaker data enable (OUT2 AND this -> speaker)
P61_PCK_DIS = 0x04              # parity/SERR# check disable (NMI source)
P61_IOCHK_DIS = 0x08            # IOCHK# disable (NMI source)
P61_WRITABLE = 0x0F
P61_REFRESH = 0x10              # refresh cycle toggle (read only)
P61_OUT2 = 0x20                 # timer 2 OUT (read only)
REFRESH_CLKS = 18               # PC/AT DRAM refresh: one request per 18 CLKs
# The refresh bit in exact integer units of ns * Hz: it toggles each time
# now * PIT_FREQ_HZ + offset passes a multiple of REFRESH_UNIT.
REFRESH_UNIT = REFRESH_CLKS * NS_PER_S
REFRESH_CYCLE = 2 * REFRESH_UNIT    # low, then high

PORT_CONTROL = 3                # offset of the control word register


def _from_bcd(raw):
    """A 16-bit BCD count as a number (digits above 9 taken at face value)."""
    value = 0
    for shift in (12, 8, 4, 0):
        value = value * 10 + ((raw >> shift) & 0xF)
    return value % 10000


def _to_bcd(value):
    return int(str(value % 10000), 16)


class _Counter:
    """One 8254 counter: programming, latches, flip-flops and its current run.

    A *run* is one loaded count counting down: ``period`` CLKs per cycle,
    and the run's CLK count is ``base`` at ``seg_ns``, the clock time at
    which the current stretch of counting began (``base`` goes negative when
    a held count loads mid-stretch: see ``sync``).  ``edge_base`` counts OUT's
    rising edges in earlier runs, so that edges are never lost when a run is
    replaced between two looks.
    """

    _FIELDS = ('gate', 'mode_bits', 'rw', 'bcd', 'cr', 'cr_valid', 'null_count',
               'write_msb', 'read_msb', 'lsb', 'latched_count',
               'latched_status', 'period', 'base', 'reload_at', 'out_idle',
               'hold', 'edge_base')

    def __init__(self, gate):
        self.power_on(gate)

    def power_on(self, gate):
        self.gate = gate
        self.mode_bits = 0          # M2-M0 as written (6 and 7 alias 2 and 3)
        self.rw = RW_LSB_MSB
        self.bcd = False
        self.cr = 0                 # count register: last count written
        self.cr_valid = False       # a whole count written since the control word
        self.null_count = True
        self.write_msb = False      # write flip-flop: next byte is the MSB
        self.read_msb = False       # read flip-flop: next byte is the MSB
        self.lsb = 0                # LSB held until its MSB arrives
        self.latched_count = None   # output latch, held until read
        self.latched_status = None
        self.period = None          # CLKs per cycle of the run; None: no run
        self.base = 0
        self.seg_ns = 0
        self.reload_at = None       # modes 2/3: CLK at which CR loads into CE
        self.out_idle = True        # OUT while there is no run: high, see reset()
        self.hold = 0               # CE value shown while there is no run
        self.edge_base = 0

    @property
    def mode(self):
        return self.mode_bits - 4 if self.mode_bits >= 6 else self.mode_bits

    @property
    def modulus(self):
        return 10000 if self.bcd else 65536

    # -- time ---------------------------------------------------------------

    def counting(self):
        """Whether CLK pulses decrement the CE (modes 1 and 5 ignore the level)."""
        return self.period is not None and (self.gate or self.mode in (1, 5))

    def elapsed(self, now):
        """CLK pulses counted in the current run up to ``now``."""
        if not self.counting():
            return self.base
        return self.base + max(0, now - self.seg_ns) * PIT_FREQ_HZ // NS_PER_S

    def tick_ns(self, clk):
        """The clock time at which the run has counted ``clk`` pulses."""
        return self.seg_ns + -(-(clk - self.base) * NS_PER_S // PIT_FREQ_HZ)

    def sync(self, now):
        """Load a count that modes 2 and 3 held for the end of a (half) cycle."""
        if self.reload_at is None or not self.counting():
            return
        at = self.reload_at
        if self.elapsed(now) >= at:
            half = self.mode == 3 and at % self.period != 0
            shift, seg_ns = self.base - at, self.seg_ns
            self._begin_run(seg_ns, at, half)
            # count on from the same segment start, so no CLK is lost to
            # rounding the boundary to whole ns
            self.base += shift

    def _begin_run(self, at_ns, old_clk, half=False):
        """Load CR into the CE at ``at_ns``; ``old_clk`` ends the old run."""
        if self.period is not None:
            self.edge_base += self._edges_at(old_clk)
        count = (_from_bcd(self.cr) if self.bcd else self.cr) or self.modulus
        if self.mode in (2, 3):
            count = max(count, 2)
        self.period = count
        self.base = (count + 1) // 2 if half else 0   # mode 3: start low half
        self.seg_ns = at_ns
        self.reload_at = None
        self.null_count = False

    def _end_run(self, now, out):
        """Stop counting with OUT at ``out`` and the CE frozen."""
        if self.period is not None:
            self.hold = self._count_at(self.elapsed(now))
            self.edge_base += self._edges_at(self.elapsed(now))
        self.period = None
        self.reload_at = None
        self.out_idle = out

    # -- OUT and CE as functions of the CLKs counted ------------------------

    def _out_at(self, clk):
        mode, n = self.mode, self.period
        if mode in (2, 3) and not self.gate:
            return True                     # gate low forces OUT high
        if mode in (0, 1):
            return clk >= n                 # high at terminal count
        if mode == 2:
            return clk % n != n - 1         # low for the CLK at count 1
        if mode == 3:
            return clk % n < (n + 1) // 2   # high half first (longer if odd)
        return clk != n                     # modes 4, 5: one-CLK strobe

    def _edges_at(self, clk):
        """Rising edges of OUT in the current run after ``clk`` CLKs."""
        mode, n = self.mode, self.period
        if mode in (0, 1):
            return int(clk >= n)
        if mode in (2, 3):
            return clk // n
        return int(clk > n)

    def _count_at(self, clk):
        mode, n = self.mode, self.period
        if mode == 2:
            value = n - clk % n             # N .. 1, then reload
        elif mode == 3:
            pos, high = clk % n, (n + 1) // 2
            step = pos if pos < high else pos - high
            # even N: N, N-2 .. 2 each half; odd N: N-1, N-3 .. (datasheet)
            value = (n if n % 2 == 0 else n - 1) - 2 * step
        else:
            value = n - clk                 # wraps after terminal count
        return value % self.modulus

    def out(self, now):
        if self.period is None:
            return self.out_idle
        return self._out_at(self.elapsed(now))

    def edges(self, now):
        if self.period is None:
            return self.edge_base
        return self.edge_base + self._edges_at(self.elapsed(now))

    def count(self, now):
        """The CE as the guest reads it (BCD-encoded in BCD mode)."""
        value = self.hold if self.period is None else self._count_at(self.elapsed(now))
        return _to_bcd(value) if self.bcd else value

    def next_event_ns(self, now):
        """When OUT next rises, or falls into a low phase of more than a CLK."""
        if not self.counting():
            return None
        mode, n, clk = self.mode, self.period, self.elapsed(now)
        if mode in (0, 1):
            target = n if clk < n else None
        elif mode == 2:
            target = (clk // n + 1) * n
        elif mode == 3:
            pos, high = clk % n, (n + 1) // 2
            target = clk - pos + (high if pos < high else n)
        else:
            target = n + 1 if clk <= n else None
        return None if target is None else self.tick_ns(target)

    def status(self, now):
        return ((ST_OUTPUT if self.out(now) else 0)
                | (ST_NULL_COUNT if self.null_count else 0)
                | self.rw << ST_RW_SHIFT | self.mode_bits << ST_M_SHIFT
                | (CW_BCD if self.bcd else 0))

    # -- guest operations ---------------------------------------------------

    def program(self, now, rw, mode_bits, bcd):
        """A control word for this counter: reset its logic, set OUT's level."""
        self._end_run(now, out=False)
        self.rw, self.mode_bits, self.bcd = rw, mode_bits, bcd
        self.hold %= self.modulus
        self.out_idle = self.mode != 0      # mode 0 starts low, others high
        self.cr_valid = False
        self.null_count = True
        self.write_msb = self.read_msb = False
        self.latched_count = self.latched_status = None

    def latch_count(self, now):
        if self.latched_count is None:      # a second latch before the read
            self.latched_count = self.count(now)    # is ignored

    def latch_status(self, now):
        if self.latched_status is None:
            self.latched_status = self.status(now)

    def read_byte(self, now):
        if self.latched_status is not None:
            value, self.latched_status = self.latched_status, None
            return value
        count = self.latched_count
        if count is None:
            count = self.count(now)
        if self.rw == RW_LSB_MSB:
            self.read_msb = not self.read_msb
            done = not self.read_msb
            byte = count >> 8 if done else count & 0xFF
        else:
            done = True
            byte = count >> 8 if self.rw == RW_MSB else count & 0xFF
        if done:
            self.latched_count = None
        return byte

    def write_byte(self, now, value):
        if self.rw == RW_LSB:
            self.cr = value
        elif self.rw == RW_MSB:
            self.cr = value << 8
        elif not self.write_msb:
            self.lsb, self.write_msb = value, True
            if self.mode == 0 and self.period is not None:
                self._end_run(now, out=False)   # first byte stops mode 0
            return
        else:
            self.cr, self.write_msb = self.lsb | value << 8, False
        self._load(now)

    def _load(self, now):
        """A whole count is in CR: when it reaches the CE depends on the mode."""
        self.cr_valid = True
        self.null_count = True
        mode = self.mode
        if mode in (0, 4) or (mode in (2, 3) and self.period is None):
            self._begin_run(now, self.elapsed(now))
        elif mode in (2, 3):                # at the end of this (half) cycle
            clk, n = self.elapsed(now), self.period
            pos, high = clk % n, (n + 1) // 2
            if mode == 2 or pos >= high:
                self.reload_at = clk - pos + n
            else:
                self.reload_at = clk - pos + high
        # modes 1 and 5 wait for a rising edge on the gate

    def set_gate(self, now, level):
        level = bool(level)
        if level == self.gate:
            return
        clk = self.elapsed(now)
        self.gate = level
        if level and self.mode in (1, 2, 3, 5) and self.cr_valid:
            self._begin_run(now, clk)       # a trigger reloads the CE from CR
        elif self.mode in (0, 2, 3, 4):     # the level pauses or resumes the CE
            self.base, self.seg_ns = clk, now
        # (edges are counted for IRQ 0 only, and counter 0's gate never moves,
        # so OUT forced high by a falling gate needs no edge bookkeeping)

    # -- snapshot and invariants --------------------------------------------

    def state(self, now):
        fields = {name: getattr(self, name) for name in self._FIELDS}
        fields['seg_age_ns'] = now - self.seg_ns
        return fields

    def restore(self, fields, now):
        for name in self._FIELDS:
            setattr(self, name, fields[name])
        self.seg_ns = now - int(fields['seg_age_ns'])

    def check(self, name, now):
        problems = []
        def require(ok, what):
            if not ok:
                problems.append(f'{name}: {what}')
        require(0 <= self.mode_bits <= 7, f'mode bits {self.mode_bits}')
        require(self.rw in (RW_LSB, RW_MSB, RW_LSB_MSB), f'access {self.rw}')
        require(0 <= self.cr <= 0xFFFF and 0 <= self.lsb <= 0xFF, 'CR out of range')
        require(0 <= self.hold < self.modulus, f'held CE {self.hold}')
        require(self.latched_count is None or 0 <= self.latched_count <= 0xFFFF,
                'latched count out of range')
        require(self.latched_status is None or 0 <= self.latched_status <= 0xFF,
                'latched status out of range')
        require(not self.write_msb or self.rw == RW_LSB_MSB,
                'write flip-flop set outside LSB-then-MSB access')
        require(not self.read_msb or self.rw == RW_LSB_MSB,
                'read flip-flop set outside LSB-then-MSB access')
        if self.period is not None:
            low = 2 if self.mode in (2, 3) else 1
            require(low <= self.period <= self.modulus, f'period {self.period}')
            require(self.elapsed(now) >= 0, 'negative CLK count')
        require(self.reload_at is None or (self.period is not None
                                           and self.mode in (2, 3)
                                           and self.null_count),
                'pending reload outside a mode 2/3 run')
        require(self.edge_base >= 0, 'negative edge count')
        return problems


class Pit(ByteRegisters, Device):
    """The 8254 at ports 0x40-0x43; ``port61`` is port 0x61 beside it.

    ``clock()`` returns nanoseconds; ``irq`` (a :class:`devices.IrqLine`)
    follows counter 0's OUT.  The wiring registers ``pit`` at 0x40 and
    ``pit.port61`` at 0x61, and calls ``tick()`` when the time it returned
    has come (or whenever convenient: a late tick coalesces missed edges).
    """

    SIZE = 4

    def __init__(self, clock, irq=None):
        self._clock = clock
        self._irq = irq
        self._counters = [_Counter(True), _Counter(True), _Counter(False)]
        self.port61 = SystemControlPort(self)
        self.reset()

    def reset(self):
        """Power-on: every counter waiting for a count in mode 0, OUT high."""
        for index, counter in enumerate(self._counters):
            counter.power_on(gate=index != 2)
        self.port61.bits = 0
        self.port61._refresh_offset = 0
        self._edges_seen = 0
        self._update_irq(self._clock())

    # -- guest accesses -----------------------------------------------------

    def _read_byte(self, offset):
        if offset == PORT_CONTROL:
            return 0xFF                     # the control word is write-only
        now = self._clock()
        counter = self._counters[offset]
        counter.sync(now)
        return counter.read_byte(now)

    def _write_byte(self, offset, value):
        now = self._clock()
        for counter in self._counters:
            counter.sync(now)
        if offset == PORT_CONTROL:
            self._control_word(now, value)
        else:
            self._counters[offset].write_byte(now, value)
        self._update_irq(now)

    def _control_word(self, now, value):
        select = value >> CW_SC_SHIFT
        if select == SC_READ_BACK:
            for index, counter in enumerate(self._counters):
                if value & (RB_CNT0 << index):
                    if not value & RB_COUNT_N:
                        counter.latch_count(now)
                    if not value & RB_STATUS_N:
                        counter.latch_status(now)
            return
        counter = self._counters[select]
        rw = (value >> CW_RW_SHIFT) & 3
        if rw == RW_LATCH:
            counter.latch_count(now)
        else:
            counter.program(now, rw, (value >> CW_M_SHIFT) & 7,
                            bool(value & CW_BCD))

    def _set_gate2(self, level):
        now = self._clock()
        counter = self._counters[2]
        counter.sync(now)
        counter.set_gate(now, level)

    def _out2(self):
        now = self._clock()
        counter = self._counters[2]
        counter.sync(now)
        return counter.out(now)

    # -- time ---------------------------------------------------------------

    def _update_irq(self, now):
        """Drive IRQ 0 from OUT0; a rising edge since the last look gives one
        low-to-high transition even if OUT0 has been high again since."""
        counter = self._counters[0]
        counter.sync(now)
        edges, level = counter.edges(now), counter.out(now)
        if edges != self._edges_seen:
            self._edges_seen = edges
            if self._irq is not None:
                self._irq.set(0)
                self._irq.set(1)
        if self._irq is not None:
            self._irq.set(level)

    def tick(self):
        """Bring IRQ 0 up to date; the absolute ns of its next change, or None."""
        now = self._clock()
        self._update_irq(now)
        return self._counters[0].next_event_ns(now)

    # -- snapshot and invariants --------------------------------------------

    def state(self):
        now = self._clock()
        self._update_irq(now)
        for counter in self._counters:
            counter.sync(now)
        return {'version': 1,
                'counters': [c.state(now) for c in self._counters],
                'port61': self.port61.bits,
                'refresh_phase': self.port61.refresh_phase(now),
                'edges_seen': self._edges_seen}

    @classmethod
    def from_state(cls, state, clock, irq=None):
        """Rebuild a Pit; the time saved in ``state`` resumes at ``clock()``."""
        check_state_version('Pit', state)
        pit = cls(clock, irq)
        now = clock()
        for counter, fields in zip(pit._counters, state['counters']):
            counter.restore(fields, now)
        pit.port61.bits = state['port61'] & P61_WRITABLE
        if 'refresh_phase' in state:        # a state saved before it was recorded: any phase
            pit.port61.set_refresh_phase(int(state['refresh_phase']), now)
        pit._edges_seen = state['edges_seen']
        pit._update_irq(now)
        return pit

    def check(self):
        """Violated internal invariants, as strings (empty when consistent)."""
        problems, now = [], self._clock()
        for index, counter in enumerate(self._counters):
            problems += counter.check(f'counter {index}', now)
        if not (self._counters[0].gate and self._counters[1].gate):
            problems.append('gates of counters 0 and 1 are tied high')
        if self._counters[2].gate != bool(self.port61.bits & P61_GATE2):
            problems.append('counter 2 gate differs from port 0x61 bit 0')
        if self.port61.bits & ~P61_WRITABLE:
            problems.append(f'port 0x61 holds read-only bits {self.port61.bits:#x}')
        counter = self._counters[0]
        counter.sync(now)
        if self._edges_seen > counter.edges(now):
            problems.append('IRQ 0 saw more edges than OUT0 made')
        return problems


class SystemControlPort(ByteRegisters):
    """Port 0x61 (PC/AT port B): timer 2 gate and speaker, refresh, OUT2.

    Created by :class:`Pit` as ``pit.port61``; its bits are part of the
    Pit's state.  Bits 2-3 (NMI source disables) are stored for the guest;
    bits 6-7 (IOCHK and SERR# NMI status) read 0: nothing raises them.
    """

    SIZE = 1

    def __init__(self, pit):
        self._pit = pit
        self.bits = 0                       # the writable bits 0-3
        self._refresh_offset = 0            # ns * Hz added to the clock's (a restored phase)

    def refresh_phase(self, now):
        """Where the refresh toggle is at ``now``: 0 to REFRESH_CYCLE - 1
        (ns * Hz), below REFRESH_UNIT while bit 4 reads 0."""
        return (now * PIT_FREQ_HZ + self._refresh_offset) % REFRESH_CYCLE

    def set_refresh_phase(self, phase, now):
        """Make ``refresh_phase(now)`` return ``phase`` (a saved one)."""
        self._refresh_offset = (phase - now * PIT_FREQ_HZ) % REFRESH_CYCLE

    def _read_byte(self, offset):
        now = self._pit._clock()
        refresh = (now * PIT_FREQ_HZ + self._refresh_offset) // REFRESH_UNIT & 1
        return (self.bits
                | (P61_REFRESH if refresh else 0)
                | (P61_OUT2 if self._pit._out2() else 0))

    def _write_byte(self, offset, value):
        self.bits = value & P61_WRITABLE
        self._pit._set_gate2(value & P61_GATE2)
