"""The PC's CMOS real-time clock: an MC146818A at ports 0x70-0x71.

Follows the Motorola MC146818A Real-Time Clock Plus RAM (RTC) datasheet.
Port 0x70 selects a register (bits 0-6; bit 7 is the PC chipset's NMI mask,
recorded in ``nmi_masked``); port 0x71 reads and writes it.  Registers 0-9
hold the time, date and alarm, A-D control and status, and 0x0E-0x7F are
plain battery-backed RAM, with the century at 0x32 in BCD as a PC BIOS keeps
it.  IRQF (register C bit 7) drives ``irq`` (IRQ 8).

Time: the wall clock is ``base_epoch_seconds`` (UTC, default the host's
``time.time()`` at construction) plus the ``clock()`` ns elapsed since.  The
divider chain's second boundaries stay in phase with it; updates, the
periodic interrupt and UIP are computed from ``clock()`` when the guest looks
or ``tick()`` is called, and events missed in between are caught up: a flag
set several times before register C is read is simply still set.

Choices where the datasheet leaves room:

* While SET is clear the time registers always show the current time in the
  current data mode and hour format (changing DM or 24/12 takes effect at
  once; the chip itself would need the registers rewritten).  While SET is
  set they hold whatever was last written; clearing SET starts the clock
  from them.  Out-of-range values are clamped to the nearest valid date and
  time when the clock starts from them.
* The calendar is the chip's: every fourth year is a leap year, the year
  register runs 00-99 and the century byte (plain RAM) is never advanced.
  The day of week is a free-running 1-7 count (1 = Sunday) kept in step
  with the days, starting from whatever the guest last wrote.
* Only divider bits 11x (divider reset) stop the clock; any other DV value
  runs the 32.768 kHz time base.  After a reset is released the first
  update comes half a second later, as the datasheet says.
* The update cycle is instantaneous at each second boundary; UIP is high for
  the 244 us (t_BUC) before it.
* DSE (daylight saving) and SQWE (square-wave pin) are stored but have no
  effect: a PC runs its RTC in UTC or local time without DSE, and the SQW
  pin is not connected.
* ``reset()`` is the RESET pin, which is what a PC's power cycle does to a
  battery-backed chip: PIE, AIE, UIE, SQWE and the flags clear, the time and
  RAM survive.  It also clears the index and NMI mask (chipset state).
* ``state()`` carries the time the chip shows; ``from_state()`` resumes
  from it at the new ``clock()``, as if no time passed in between.
"""

import calendar
import math
import time
from datetime import date, timedelta

__all__ = ['Rtc']

from . import ByteRegisters, Device, check_state_version

NS_PER_S = 1_000_000_000

# Register indices (datasheet "Address Map").
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
CMOS_CENTURY = 0x32             # PC BIOS convention: century in BCD
CMOS_SIZE = 128
TIME_REGS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK,
             REG_DAY_OF_MONTH, REG_MONTH, REG_YEAR)

# Register A.
A_UIP = 0x80                    # update in progress (read only)
A_DV_MASK = 0x70                # DV2-DV0: divider control
A_DV_RESET = 0x60               # DV2-DV1 = 11: divider chain held in reset
A_DV_32KHZ = 0x20               # DV = 010: 32.768 kHz time base running
A_RS_MASK = 0x0F                # RS3-RS0: periodic interrupt rate select

# Register B.
B_SET = 0x80                    # inhibit updates so the time can be set
B_PIE = 0x40                    # periodic interrupt enable
B_AIE = 0x20                    # alarm interrupt enable
B_UIE = 0x10                    # update-ended interrupt enable
B_SQWE = 0x08                   # square-wave output enable
B_DM = 0x04                     # data mode: 1 = binary, 0 = BCD
B_24H = 0x02                    # 1 = 24-hour, 0 = 12-hour (PM in hour bit 7)
B_DSE = 0x01                    # daylight saving enable
B_RESET_CLEARS = B_PIE | B_AIE | B_UIE | B_SQWE

# Register C (read only; reading clears it).  PF, AF and UF sit at the same
# bit positions as their enables in register B.
C_IRQF = 0x80                   # interrupt request: some flag and its enable
C_PF = 0x40                     # periodic interrupt flag
C_AF = 0x20                     # alarm flag
C_UF = 0x10                     # update-ended flag
C_FLAGS = C_PF | C_AF | C_UF

D_VRT = 0x80                    # register D: valid RAM and time

HOUR_PM = 0x80                  # 12-hour mode: PM flag in the hours byte
ALARM_DONT_CARE = 0xC0          # alarm byte 11xxxxxx matches any value
INDEX_NMI_MASK = 0x80           # port 0x70 bit 7: NMI disabled
INDEX_MASK = 0x7F
PORT_INDEX, PORT_DATA = 0, 1

POWER_ON_A = A_DV_32KHZ | 0x06  # as a PC BIOS leaves it: 1024 Hz rate
POWER_ON_B = B_24H              # BCD, 24-hour
TIME_BASE_HZ = 32768
UIP_LEAD_NS = 244_141           # t_BUC: 8 cycles of the 32.768 kHz base

UNIX_2000 = 946_684_800         # Unix time of 2000-01-01 00:00:00 UTC
DAY0 = date(2000, 1, 1)         # a Saturday: day of week 7
DAYS_PER_CENTURY = 36525        # 00-99 with every fourth year leap
SECONDS_PER_DAY = 86400


def _clamp(value, low, high):
    return max(low, min(high, value))


def _bcd(value):
    return (value // 10) << 4 | value % 10


def _alarm_matches(alarm, byte):
    return alarm & ALARM_DONT_CARE == ALARM_DONT_CARE or alarm == byte


class Rtc(ByteRegisters, Device):
    """The CMOS RTC at ports 0x70 (index, NMI mask) and 0x71 (data).

    ``clock()`` returns nanoseconds; ``irq`` (a :class:`devices.IrqLine`)
    follows IRQF.  ``on_alarm()`` is called each time the alarm raises the
    interrupt (AF sets while AIE is on): the chipset's RTC_STS, an ACPI wake
    event.  The wiring calls ``tick()`` when the time it returned has come; a
    late tick only delays the interrupt, it loses no flag.
    """

    SIZE = 2

    def __init__(self, clock, irq=None, base_epoch_seconds=None, on_alarm=None):
        self._clock = clock
        self._irq = irq
        self.on_alarm = on_alarm
        if base_epoch_seconds is None:
            base_epoch_seconds = time.time()
        whole = math.floor(base_epoch_seconds)
        now = clock()
        seconds = whole - UNIX_2000
        # The divider's second boundaries fall on the wall clock's.
        self._div_ns = now - int((base_epoch_seconds - whole) * NS_PER_S)
        self._sec0 = seconds        # time shown at _div_ns, s since 2000
        self._dow_off = 6           # day of week = (days + off) % 7 + 1
        self._cmos = bytearray(CMOS_SIZE)
        self._cmos[REG_A] = POWER_ON_A
        self._cmos[REG_B] = POWER_ON_B
        century = 20 + seconds // SECONDS_PER_DAY // DAYS_PER_CENTURY
        self._cmos[CMOS_CENTURY] = _bcd(century % 100)
        self._flags = 0             # PF, AF, UF of register C
        self._seen_ns = now         # flags are caught up to this time
        self.reset()                # the index and NMI mask

    def reset(self):
        """The RESET pin: interrupt enables and flags clear; time and RAM stay."""
        self._advance(self._clock())
        self._cmos[REG_B] &= ~B_RESET_CLEARS & 0xFF
        self._flags = 0
        self._index = 0
        self.nmi_masked = False
        self._update_irq()

    # -- guest accesses -----------------------------------------------------

    def _read_byte(self, port):
        if port == PORT_INDEX:
            return 0xFF                     # write-only on a PC
        now = self._clock()
        self._advance(now)
        value = self._read_reg(now, self._index)
        self._update_irq()
        return value

    def _write_byte(self, port, value):
        if port == PORT_INDEX:
            self._index = value & INDEX_MASK
            self.nmi_masked = bool(value & INDEX_NMI_MASK)
            return
        now = self._clock()
        self._advance(now)
        self._write_reg(now, self._index, value)
        self._update_irq()

    def _read_reg(self, now, index):
        if index in TIME_REGS:
            if self._cmos[REG_B] & B_SET:
                return self._cmos[index]
            return self._encode(self._seconds(now))[index]
        if index == REG_A:
            return self._cmos[REG_A] | (A_UIP if self._uip(now) else 0)
        if index == REG_C:
            value = self._flags | (C_IRQF if self._irqf() else 0)
            self._flags = 0                 # reading C clears every flag
            return value
        if index == REG_D:
            return D_VRT
        return self._cmos[index]

    def _write_reg(self, now, index, value):
        if index in TIME_REGS:
            if self._cmos[REG_B] & B_SET:
                self._cmos[index] = value
            else:                           # set one field of the running time
                regs = self._encode(self._seconds(now))
                regs[index] = value
                self._start_from(now, regs)
        elif index == REG_A:
            self._write_a(now, value)
        elif index == REG_B:
            self._write_b(now, value)
        elif index not in (REG_C, REG_D):   # C and D are read-only
            self._cmos[index] = value

    def _write_a(self, now, value):
        was_running = self._running()
        shown = self._seconds(now)
        self._cmos[REG_A] = value & ~A_UIP
        if was_running and not self._running():
            self._sec0 = shown              # divider reset: time stands still
        elif not was_running and self._running():
            self._div_ns = now - NS_PER_S // 2  # first update 0.5 s later

    def _write_b(self, now, value):
        old = self._cmos[REG_B]
        if value & B_SET:
            value &= ~B_UIE                 # SET high clears UIE
            if not old & B_SET:             # freeze the registers as shown
                shown = self._encode(self._seconds(now))
                for index in TIME_REGS:
                    self._cmos[index] = shown[index]
        self._cmos[REG_B] = value
        if old & B_SET and not value & B_SET:
            self._start_from(now, {i: self._cmos[i] for i in TIME_REGS})

    # -- the clock ----------------------------------------------------------

    def _running(self):
        return self._cmos[REG_A] & A_DV_RESET != A_DV_RESET

    def _updates(self, now):
        """Update boundaries (divider seconds) from the phase origin to now."""
        return (now - self._div_ns) // NS_PER_S

    def _seconds(self, now):
        """The time the chip counts, in seconds since 2000-01-01 00:00:00."""
        if not self._running():
            return self._sec0
        return self._sec0 + self._updates(now)

    def _start_from(self, now, regs):
        seconds, self._dow_off = self._decode(regs)
        self._sec0 = seconds - (self._updates(now) if self._running() else 0)

    def _uip(self, now):
        if not self._running() or self._cmos[REG_B] & B_SET:
            return False
        next_update = self._div_ns + (self._updates(now) + 1) * NS_PER_S
        return next_update - now <= UIP_LEAD_NS

    def _period_clks(self):
        """Periodic interrupt period in 32.768 kHz cycles, or None (RS = 0)."""
        rate = self._cmos[REG_A] & A_RS_MASK
        if rate == 0:
            return None
        return 1 << (rate + 6 if rate <= 2 else rate - 1)

    def _periods(self, now, clks):
        return (now - self._div_ns) * TIME_BASE_HZ // (clks * NS_PER_S)

    # -- register formats ---------------------------------------------------

    def _enc(self, value):
        return value if self._cmos[REG_B] & B_DM else _bcd(value)

    def _dec(self, byte):
        return byte if self._cmos[REG_B] & B_DM else (byte >> 4) * 10 + (byte & 0xF)

    def _enc_hour(self, hour):
        if self._cmos[REG_B] & B_24H:
            return self._enc(hour)
        return self._enc(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)

    def _dec_hour(self, byte):
        if self._cmos[REG_B] & B_24H:
            return _clamp(self._dec(byte), 0, 23)
        hour = _clamp(self._dec(byte & ~HOUR_PM), 1, 12) % 12
        return hour + 12 if byte & HOUR_PM else hour

    def _encode(self, seconds):
        """The time registers showing ``seconds`` since 2000, current format."""
        days, tod = divmod(seconds, SECONDS_PER_DAY)
        day = DAY0 + timedelta(days=days % DAYS_PER_CENTURY)
        return {REG_SECONDS: self._enc(tod % 60),
                REG_MINUTES: self._enc(tod // 60 % 60),
                REG_HOURS: self._enc_hour(tod // 3600),
                REG_DAY_OF_WEEK: self._enc((days + self._dow_off) % 7 + 1),
                REG_DAY_OF_MONTH: self._enc(day.day),
                REG_MONTH: self._enc(day.month),
                REG_YEAR: self._enc(day.year % 100)}

    def _decode(self, regs):
        """Seconds since 2000 and the day-of-week offset shown by ``regs``,
        out-of-range fields clamped."""
        year = 2000 + _clamp(self._dec(regs[REG_YEAR]), 0, 99)
        month = _clamp(self._dec(regs[REG_MONTH]), 1, 12)
        mday = _clamp(self._dec(regs[REG_DAY_OF_MONTH]), 1,
                      calendar.monthrange(year, month)[1])
        days = (date(year, month, mday) - DAY0).days
        seconds = (days * SECONDS_PER_DAY + self._dec_hour(regs[REG_HOURS]) * 3600
                   + _clamp(self._dec(regs[REG_MINUTES]), 0, 59) * 60
                   + _clamp(self._dec(regs[REG_SECONDS]), 0, 59))
        weekday = _clamp(self._dec(regs[REG_DAY_OF_WEEK]), 1, 7)
        return seconds, (weekday - 1 - days) % 7

    # -- flags and interrupts -----------------------------------------------

    def _alarm(self):
        return (self._cmos[REG_HOURS_ALARM], self._cmos[REG_MINUTES_ALARM],
                self._cmos[REG_SECONDS_ALARM])

    def _alarm_possible(self):
        """Whether each alarm byte is don't-care or a value the time can show."""
        hour, minute, second = self._alarm()
        return (any(_alarm_matches(hour, self._enc_hour(h)) for h in range(24))
                and any(_alarm_matches(minute, self._enc(m)) for m in range(60))
                and any(_alarm_matches(second, self._enc(s)) for s in range(60)))

    def _next_alarm(self, after):
        """The first second after ``after`` whose time matches the alarm.

        Skips a whole hour or minute when that byte cannot match, so it
        takes at most a couple of hundred steps to search a day.
        """
        if not self._alarm_possible():
            return None
        hour, minute, second = self._alarm()
        seconds = after + 1
        while seconds <= after + SECONDS_PER_DAY:
            tod = seconds % SECONDS_PER_DAY
            if not _alarm_matches(hour, self._enc_hour(tod // 3600)):
                seconds += 3600 - tod % 3600
            elif not _alarm_matches(minute, self._enc(tod // 60 % 60)):
                seconds += 60 - tod % 60
            elif not _alarm_matches(second, self._enc(tod % 60)):
                seconds += 1
            else:
                return seconds
        return None

    def _advance(self, now):
        """Set the flags for what happened between the last look and now."""
        seen = self._seen_ns
        if now <= seen:
            return
        self._seen_ns = now
        if not self._running():
            return
        clks = self._period_clks()
        if clks and self._periods(now, clks) > self._periods(seen, clks):
            self._flags |= C_PF             # PF sets whether or not PIE is on
        if self._cmos[REG_B] & B_SET:
            return
        first, last = self._updates(seen), self._updates(now)
        if last > first:
            self._flags |= C_UF
            alarm = self._next_alarm(self._sec0 + first)
            if alarm is not None and alarm <= self._sec0 + last:
                self._flags |= C_AF
                if self._cmos[REG_B] & B_AIE and self.on_alarm is not None:
                    self.on_alarm()     # the alarm asserts IRQ8: RTC_STS

    def _irqf(self):
        return bool(self._flags & self._cmos[REG_B] & C_FLAGS)

    def _update_irq(self):
        if self._irq is not None:
            self._irq.set(self._irqf())

    def tick(self):
        """Catch the flags up; the next ns at which an enabled one may set."""
        now = self._clock()
        self._advance(now)
        self._update_irq()
        if not self._running():
            return None
        enables, times = self._cmos[REG_B], []
        clks = self._period_clks()
        if enables & B_PIE and clks:
            edge = (self._periods(now, clks) + 1) * clks * NS_PER_S
            times.append(self._div_ns - (-edge // TIME_BASE_HZ))
        if not enables & B_SET:
            shown = self._sec0 + self._updates(now)
            if enables & B_UIE:
                times.append(self._div_ns + (self._updates(now) + 1) * NS_PER_S)
            alarm = self._next_alarm(shown) if enables & B_AIE else None
            if alarm is not None:
                times.append(self._div_ns + (alarm - self._sec0) * NS_PER_S)
        return min(times, default=None)

    # -- snapshot and invariants --------------------------------------------

    def state(self):
        now = self._clock()
        self._advance(now)
        self._update_irq()
        return {'version': 1, 'cmos': list(self._cmos), 'index': self._index,
                'nmi_masked': self.nmi_masked, 'flags': self._flags,
                'seconds': self._sec0, 'dow_offset': self._dow_off,
                'divider_age_ns': now - self._div_ns}

    @classmethod
    def from_state(cls, state, clock, irq=None, on_alarm=None):
        """Rebuild an Rtc; the time saved in ``state`` resumes at ``clock()``."""
        check_state_version('Rtc', state)
        rtc = cls(clock, irq, base_epoch_seconds=UNIX_2000, on_alarm=on_alarm)
        cmos = bytearray(state['cmos'])
        if len(cmos) != CMOS_SIZE:
            raise ValueError(f'Rtc state has {len(cmos)} CMOS bytes, not 128')
        now = clock()
        rtc._cmos = cmos
        rtc._index = state['index'] & INDEX_MASK
        rtc.nmi_masked = bool(state['nmi_masked'])
        rtc._flags = state['flags'] & C_FLAGS
        rtc._sec0 = int(state['seconds'])
        rtc._dow_off = state['dow_offset'] % 7
        rtc._div_ns = now - int(state['divider_age_ns'])
        rtc._seen_ns = now
        rtc._update_irq()
        return rtc

    def check(self):
        """Violated internal invariants, as strings (empty when consistent)."""
        problems = []
        if len(self._cmos) != CMOS_SIZE:
            problems.append(f'CMOS holds {len(self._cmos)} bytes')
        if not 0 <= self._index < CMOS_SIZE:
            problems.append(f'index {self._index} out of range')
        if self._flags & ~C_FLAGS:
            problems.append(f'register C holds non-flag bits {self._flags:#x}')
        if self._cmos[REG_A] & A_UIP:
            problems.append('UIP stored in register A (it is computed)')
        if self._cmos[REG_C] or self._cmos[REG_D]:
            problems.append('registers C and D written into CMOS RAM')
        if self._cmos[REG_B] & B_SET and self._cmos[REG_B] & B_UIE:
            problems.append('UIE set while SET is set')
        if not 0 <= self._dow_off < 7:
            problems.append(f'day-of-week offset {self._dow_off}')
        if self._irq is not None and self._irq.level != self._irqf():
            problems.append('IRQ 8 line differs from IRQF')
        return problems
