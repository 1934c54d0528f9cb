"""The ACPI power-management block: PM1 event and control registers and the
PM timer, laid out as in the Intel PIIX4's power-management I/O space.

Follows the ACPI Specification 6.x (section numbers as in 6.4):

* 4.8.1 and 4.8.4.1-4.8.4.3: the fixed-hardware register blocks. PM1_STS
  and PM1_EN (the PM1 event block, PM1_EVT_LEN 4: two 16-bit halves), PM1_CNT
  (the PM1 control block, PM1_CNT_LEN 2) and PM_TMR (PM_TMR_LEN 4); the bits
  of tables 4.11 (status), 4.12 (enable) and 4.13 (control).
* 4.8.2.1 / 4.8.4.3: the power-management timer, a free-running counter at
  3.579545 MHz whose TMR_STS sets each time its last bit toggles.
* 4.8.3.1.1: the fixed power button (PWRBTN_STS / PWRBTN_EN).
* 4.8.3.4: the SCI: a level, shareable interrupt raised while any status
  bit and its enable bit are both set and SCI_EN says ACPI mode.
* 4.8.3.2 / 7.4.2: sleeping: OSPM writes the SLP_TYP value it found in the
  ``\\_Sx`` package of the state, then SLP_EN.
* 5.2.9: the FADT fields that describe this block (tools/platform_tables.py
  writes them from the constants below: PM1a_EVT_BLK, PM1a_CNT_BLK,
  PM_TMR_BLK and their lengths and X_ generic addresses; TMR_VAL_EXT clear).

And the Intel 82371AB (PIIX4) datasheet, power-management I/O registers:
PMSTS at PMBASE+00h, PMEN at +02h, PMCNTRL at +04h, PMTMR at +08h (24 bits),
SUS_TYP 000 = soft off, 001 = suspend to RAM; QEMU's pc machine puts this
block at 0x600 and its firmware (SeaBIOS) advertises ``\\_S5`` as SLP_TYP 0
and ``\\_S3`` as 1 to match.

====== ========= ============================================================
offset register  what it does here
====== ========= ============================================================
+0     PM1_STS   TMR_STS (bit 0), PWRBTN_STS (8), RTC_STS (10), WAK_STS
                 (15); write 1 to clear
+2     PM1_EN    TMR_EN (0), GBL_EN (5), PWRBTN_EN (8), RTC_EN (10)
+4     PM1_CNT   SCI_EN (0), BM_RLD (1), GBL_RLS (2, write-only), SLP_TYP
                 (12:10), SLP_EN (13, write-only: starts the sleep)
+6     --        reserved, reads 0
+8     PM_TMR    the 24-bit count, bits 31:24 read 0; read-only
====== ========= ============================================================

Choices where the sources leave room:

* The timer is 24 bits wide, as the PIIX4's (the FADT leaves TMR_VAL_EXT
  clear): TMR_STS sets when bit 23 toggles, every 2**23 counts (2.34 s).
  It counts ``clock()`` nanoseconds since the last reset, so ``reset()``
  restarts it at 0 (the specification leaves the starting value open).
* SCI_EN reads 1 from power-on: no firmware runs and the FADT has no
  SMI_CMD, so the platform is in ACPI mode from the start (a PIIX4 BIOS
  would set it on the OS's ACPI-enable request). It stays writable, as on
  the PIIX4; clearing it masks the SCI (there is no SMI to route events to).
* TMR_STS, PWRBTN_STS, RTC_STS and WAK_STS set. RTC_STS is the RTC
  alarm's fixed event (4.8.3.1.2; the FADT leaves FIX_RTC clear): the
  board calls :meth:`rtc_alarm` when the RTC raises its alarm interrupt
  (AF with AIE, the IRQ8 assertion the PIIX4's RTC_STS follows). GBL_EN is
  stored so that an OS sees it stick, but nothing raises GBL_STS; BM_STS and
  the other status bits read 0.
* SLP_EN with SLP_TYP = :data:`SLP_TYP_S5` (soft off) calls
  ``on_poweroff()``. SLP_TYP = :data:`SLP_TYP_S3` (suspend to RAM: PIIX4
  SUS_TYP 001, the value QEMU's pc machine and its firmware's ``\\_S3``
  use) puts the block in S3 and calls ``on_suspend()``: the board stops
  every vCPU and keeps RAM and the devices as they are. The DSDT
  advertises both. Other SLP_TYP values are ignored (no S1, S2 or S4).
* Waking (chapter 16, "Waking and Sleeping": 16.1, the sleeping states
  and the sequence into S3; 16.3, initialization, where firmware waking
  from S2/S3 jumps to the FACS's waking vector, 5.2.10 for
  Firmware_Waking_Vector and X_Firmware_Waking_Vector): a wake event in S3 sets WAK_STS and calls ``on_wake()``; the board then
  enters the waking vector as firmware would and calls :meth:`resumed`.
  The wake events: the RTC alarm while RTC_EN is set (RTC_STS sets either
  way), the power button (whatever PWRBTN_EN says, 4.8.3.1.1), and
  :meth:`wake` for a wake from elsewhere (the board's console input; QEMU's
  ``system_wakeup`` likewise sets WAK_STS alone). While the block sleeps
  the SCI stays low (no OS runs to take it); after the wake it follows the
  status bits again, so an OS that left RTC_EN set sees the SCI for
  RTC_STS until it clears it.
* Every access is split into byte accesses at successive ports, as the ISA
  bus does, but a wide read samples all its bytes at one instant (a dword
  read of PM_TMR is never torn). Bytes past the block float high (0xFF).
"""

from . import Device, check_state_version, read_bytes, write_bytes

__all__ = ['AcpiPm', 'SLP_TYP_S3', 'SLP_TYP_S5', 'PM_TIMER_HZ', 'WORKING', 'SLEEPING', 'WOKEN']

NS_PER_S = 1_000_000_000
PM_TIMER_HZ = 3_579_545         # 4.8.2.1: a quarter of the PC's 14.31818 MHz
TIMER_BITS = 24                 # TMR_VAL_EXT clear
TIMER_MASK = (1 << TIMER_BITS) - 1
TIMER_MSB_PERIOD = 1 << (TIMER_BITS - 1)   # counts between toggles of bit 23

# PM1_STS (table 4.11) and PM1_EN (table 4.12): status and enable share bit positions
TMR_STS = TMR_EN = 1 << 0
GBL_STS = GBL_EN = 1 << 5
PWRBTN_STS = PWRBTN_EN = 1 << 8
RTC_STS = RTC_EN = 1 << 10
WAK_STS = 1 << 15
STS_BITS = TMR_STS | PWRBTN_STS | RTC_STS | WAK_STS   # the status bits that ever set here
EN_BITS = TMR_EN | GBL_EN | PWRBTN_EN | RTC_EN

# PM1_CNT (table 4.13)
SCI_EN = 1 << 0
BM_RLD = 1 << 1
GBL_RLS = 1 << 2                # write-only: would signal the firmware's global lock
SLP_TYP_SHIFT = 10
SLP_TYP_MASK = 0b111 << SLP_TYP_SHIFT
SLP_EN = 1 << 13                # write-only
CNT_BITS = SCI_EN | BM_RLD | SLP_TYP_MASK   # what PM1_CNT stores and reads back

#: The SLP_TYP of S5 (soft off): PIIX4 SUS_TYP 000. tools/platform_tables.py
#: writes it into the DSDT's \_S5 package, so an OS asks for what this honours.
SLP_TYP_S5 = 0
#: The SLP_TYP of S3 (suspend to RAM): PIIX4 SUS_TYP 001, the DSDT's \_S3.
SLP_TYP_S3 = 1

#: Where the block is in a sleep cycle (``AcpiPm.sleep``): the working state;
#: in S3 (every vCPU stopped); woken (a wake event came, the platform has yet
#: to enter the waking vector and call :meth:`AcpiPm.resumed`).
WORKING, SLEEPING, WOKEN = 0, 1, 2

# offsets in the block (PIIX4 layout)
PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0, 2, 4, 8


class AcpiPm(Device):
    """The PM1a event and control blocks and the PM timer at one base port.

    ``clock()`` returns nanoseconds; ``irq`` (a :class:`devices.IrqLine`) is
    the SCI, a level; ``on_poweroff()`` is called when the guest enters S5,
    ``on_suspend()`` when it enters S3 and ``on_wake()`` when a wake event
    ends S3 (the platform then resumes the processors at the FACS waking
    vector and calls :meth:`resumed`).
    The wiring calls :meth:`tick` when the time it returned has come: a late
    tick only delays the SCI, TMR_STS is never lost.
    """

    SIZE = 12
    # Where each FADT block starts in the device and how long it is
    # (tools/platform_tables.py adds the slot's base port)
    PM1_EVT_BLK, PM1_EVT_LEN = PM1_STS, 4
    PM1_CNT_BLK, PM1_CNT_LEN = PM1_CNT, 2
    PM_TMR_BLK, PM_TMR_LEN = PM_TMR, 4
    TMR_VAL_EXT = TIMER_BITS == 32
    SLP_TYP_S5 = SLP_TYP_S5     # what S5 is here and in the DSDT's \_S5
    SLP_TYP_S3 = SLP_TYP_S3     # what S3 is here and in the DSDT's \_S3

    def __init__(self, clock, irq=None, on_poweroff=None, on_suspend=None, on_wake=None):
        self._clock = clock
        self._irq = irq
        self.on_poweroff = on_poweroff
        self.on_suspend = on_suspend
        self.on_wake = on_wake
        self.reset()

    def reset(self):
        """Power-on state: statuses and enables clear, ACPI mode (SCI_EN),
        the timer restarted at 0."""
        now = self._clock()
        self._origin_ns = now           # the timer counts from here
        self._seen_ns = now             # TMR_STS is caught up to this time
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN
        self.sleep = WORKING
        self._update_sci()

    # -- the timer --------------------------------------------------------

    def _now(self):
        return max(self._clock(), self._seen_ns)    # never run the timer backwards

    def _ticks(self, now):
        """Counts at 3.579545 MHz since the timer started (unwrapped)."""
        return (now - self._origin_ns) * PM_TIMER_HZ // NS_PER_S

    def _advance(self, now):
        """Set TMR_STS if bit 23 toggled between the last look and ``now``."""
        if now <= self._seen_ns:
            return
        if self._ticks(now) // TIMER_MSB_PERIOD > self._ticks(self._seen_ns) // TIMER_MSB_PERIOD:
            self.sts |= TMR_STS         # sets whether or not TMR_EN is on
        self._seen_ns = now

    def timer(self):
        """The count PM_TMR shows now."""
        now = self._now()
        self._advance(now)
        self._update_sci()
        return self._ticks(now) & TIMER_MASK

    def tick(self):
        """Catch TMR_STS up; the ns at which bit 23 next toggles, or None
        while TMR_EN is off (no SCI can come from the timer)."""
        now = self._now()
        self._advance(now)
        self._update_sci()
        if not self.en & TMR_EN:
            return None
        toggle = (self._ticks(now) // TIMER_MSB_PERIOD + 1) * TIMER_MSB_PERIOD
        return self._origin_ns - (-toggle * NS_PER_S // PM_TIMER_HZ)   # rounded up

    # -- the SCI and the power button ---------------------------------------

    def sci(self):
        """The SCI's level: an enabled status bit while in ACPI mode and
        awake."""
        return bool(self.cnt & SCI_EN and self.sts & self.en and self.sleep == WORKING)

    def _update_sci(self):
        if self._irq is not None:
            self._irq.set(self.sci())

    def press_power_button(self):
        """The fixed power button was pressed (4.8.3.1.1): PWRBTN_STS."""
        self._advance(self._now())
        self.sts |= PWRBTN_STS
        self._wake()                    # a wake event whatever PWRBTN_EN says
        self._update_sci()

    def rtc_alarm(self):
        """The RTC raised its alarm interrupt: RTC_STS, and a wake from S3
        while RTC_EN is set."""
        self._advance(self._now())
        self.sts |= RTC_STS
        if self.en & RTC_EN:
            self._wake()
        self._update_sci()

    def wake(self):
        """A wake event from outside the block (the board's console input):
        ends S3 with WAK_STS alone. Does nothing while awake."""
        self._wake()
        self._update_sci()

    def _wake(self):
        if self.sleep != SLEEPING:
            return
        self.sts |= WAK_STS
        self.sleep = WOKEN
        if self.on_wake is not None:
            self.on_wake()

    def resumed(self):
        """The platform entered the waking vector: back to the working state
        (the SCI follows the status bits again)."""
        if self.sleep == WOKEN:
            self.sleep = WORKING
        self._update_sci()

    # -- guest accesses -----------------------------------------------------

    def read(self, offset, size):
        now = self._now()
        self._advance(now)
        self._update_sci()
        regs = (self.sts.to_bytes(2, 'little') + self.en.to_bytes(2, 'little')
                + self.cnt.to_bytes(2, 'little') + bytes(2)
                + (self._ticks(now) & TIMER_MASK).to_bytes(4, 'little'))
        return read_bytes(regs.__getitem__, self.SIZE, offset, size)

    def write(self, offset, size, value):
        self._advance(self._now())
        write_bytes(self._write_byte, self.SIZE, offset, size, value)
        self._update_sci()

    def _write_byte(self, port, value):
        shift = 8 * (port & 1)
        byte_mask = 0xFF << shift
        value = value << shift
        if port in (PM1_STS, PM1_STS + 1):
            self.sts &= ~(value & STS_BITS)             # write 1 to clear
        elif port in (PM1_EN, PM1_EN + 1):
            self.en = (self.en & ~byte_mask) | (value & EN_BITS & byte_mask)
        elif port in (PM1_CNT, PM1_CNT + 1):
            # GBL_RLS would tell the firmware the global lock is free: no firmware
            self.cnt = (self.cnt & ~byte_mask) | (value & CNT_BITS & byte_mask)
            if value & SLP_EN:
                self._sleep((self.cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT)
        # reserved bytes and the read-only PM_TMR ignore writes

    def _sleep(self, slp_typ):
        if slp_typ == self.SLP_TYP_S5:
            if self.on_poweroff is not None:
                self.on_poweroff()
        elif slp_typ == self.SLP_TYP_S3 and self.sleep == WORKING:
            self.sleep = SLEEPING
            if self.on_suspend is not None:
                self.on_suspend()
        # Any other SLP_TYP: ignored. The DSDT advertises \_S3 and \_S5;
        # S1, S2 and S4 are not implemented.

    # -- snapshot and invariants ----------------------------------------------

    def state(self):
        now = self._now()
        self._advance(now)
        self._update_sci()
        return {'version': 1, 'sts': self.sts, 'en': self.en, 'cnt': self.cnt,
                'timer_age_ns': now - self._origin_ns, 'sleep': self.sleep}

    @classmethod
    def from_state(cls, state, clock, irq=None, on_poweroff=None, on_suspend=None, on_wake=None):
        """Rebuild an AcpiPm; its timer resumes at ``clock()`` from the count
        saved in ``state``, as if no time passed in between. A block saved
        in S3 (or woken, not yet resumed) is so again; no callback is
        called for it (the board looks at ``sleep``)."""
        check_state_version('AcpiPm', state)
        dev = cls(clock, irq, on_poweroff, on_suspend, on_wake)
        now = dev._seen_ns
        dev.sts = int(state['sts']) & STS_BITS
        dev.en = int(state['en']) & EN_BITS
        dev.cnt = int(state['cnt']) & CNT_BITS
        sleep = state.get('sleep', WORKING)     # absent in a state saved before S3 was modelled
        dev.sleep = sleep if sleep in (WORKING, SLEEPING, WOKEN) else WORKING
        dev._origin_ns = now - max(0, int(state['timer_age_ns']))
        dev._update_sci()
        return dev

    def check(self):
        problems = []
        if self.sts & ~STS_BITS:
            problems.append(f'PM1_STS {self.sts:#x} holds bits that never set')
        if self.en & ~EN_BITS:
            problems.append(f'PM1_EN {self.en:#x} holds reserved bits')
        if self.cnt & ~CNT_BITS:
            problems.append(f'PM1_CNT {self.cnt:#x} keeps write-only or reserved bits')
        if self._seen_ns < self._origin_ns:
            problems.append('the timer was last looked at before it started')
        if self.sleep not in (WORKING, SLEEPING, WOKEN):
            problems.append(f'sleep state {self.sleep!r}')
        if self._irq is not None and self._irq.level != self.sci():
            problems.append('the SCI line differs from PM1_STS & PM1_EN with SCI_EN')
        return problems
