"""Guest programs under real KVM that use the PC's timers through kvmlite's
wiring, in every irqchip mode: PIT ticks through the 8259A and through the
IOAPIC, an interrupt that waits for the guest's STI (the interrupt window),
the 8254's counter latch and read-back commands, and a TSC calibration
against counter 2 through port 0x61 (Linux's pit_calibrate_tsc).

Each guest (tests/pcguest.py) prints what it found on COM1; the output must
be the same in 'split' (kvmlite's PIC, PIT and IOAPIC, KVM's local APIC),
'user' (kvmlite's PIC and PIT, no APIC) and 'kernel' (KVM's PIC, IOAPIC and
PIT) mode.  Times the guest took with the TSC are checked against the
programmed periods from below (a tick never comes early), never from above:
a loaded host delays and coalesces ticks by any amount, so no test here
bounds how late something comes.  A timer thread that fails to wake for its
deadlines while the vCPU halts would be rescued by the 0.25 s halt poll:
the tests that would show it run with that poll off (``no_halt_poll``), where
such a tick never comes and the run ends at its timeout.
The IOAPIC path exists only with an in-kernel local APIC: in 'user' mode the
guest finds no APIC (its version register reads all ones) and takes the
PIC path, printing the same lines.
"""

import contextlib
import unittest
from unittest import mock

import kvmlite
from tests.guest import requires_kvm
from tests.pcguest import MODES, PASSED, run_guest, run_in_every_mode
from tools import pc

PIT_HZ = 1193182
# A guest-measured interval may fall short of the programmed one by this
# much and still count as on time: the guest measures with the TSC (at the
# rate KVM reports), the devices count with the host's monotonic clock, and
# the two need not agree to better than a fraction of a percent on every
# host; a tick that comes early by a whole period is far outside it.
EARLY_SLACK = 0.05


@contextlib.contextmanager
def no_halt_poll():
    """Machines run without the timer thread's 0.25 s halt poll, which
    would otherwise stand in, late, for a deadline the thread slept through."""
    with mock.patch.object(pc, 'HALT_POLL_S', 3600.0):
        yield


class TickCounter:
    """A timed device with no deadline: counts the timer thread's rounds."""

    def __init__(self):
        self.n = 0

    def tick(self):
        self.n += 1


@contextlib.contextmanager
def counting_timer_rounds():
    """Machines made in the block count their timer thread's rounds (a
    TickCounter among their timed devices, which the thread ticks once a
    round); yields the list of counters, one a machine."""
    counters = []

    class Counting(pc.Machine):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            counters.append(TickCounter())
            self._timed.append(counters[-1])
    with mock.patch.object(kvmlite, 'Machine', Counting):
        yield counters

TICKS = r'''
; PIT counter 0 periodic at PERIOD CLKs in mode PITMODE, IRQ 0 through the
; IOAPIC if WANT_IOAPIC and there is one, else through the PIC; NTICKS of them
main:
    mov byte [want_ioapic], WANT_IOAPIC
    call irq_setup
    xor edi, edi
    mov rsi, tick
    call irq_handler
    mov al, PITMODE << 1 | 0x30 ; counter 0, LSB then MSB, binary
    out 0x43, al
    mov al, PERIOD & 0xff
    out 0x40, al
    mov al, PERIOD >> 8
    out 0x40, al
    call rdtsc64
    mov [programmed], rax
    xor edi, edi
    xor esi, esi                ; edge-triggered, as ISA IRQ 0 is
    call irq_unmask
    mov rsi, ticks
    mov ecx, NTICKS
    call wait_for
    xor edi, edi
    call irq_mask
    call print
    db 'PIT mode ', 0
    mov eax, PITMODE
    call putdec
    call print
    db ': ', 0
    mov rax, [ticks]
    call putdec
    call print
    db ' ticks', 10, 0
    cmp byte [want_ioapic], 0
    jne .done
    call print
    db 'ISR in the handler ', 0
    mov al, [isr_in]
    call hex2
    call print
    db ', after EOI ', 0
    mov al, [isr_after]
    call hex2
    mov al, 10
    call putc
.done:
    mov al, PASSED
    ret

tick:
    mov [vector], dil
    call rdtsc64
    mov rcx, [ticks]
    mov [stamps + rcx*8], rax
    inc rcx
    mov [ticks], rcx
    xor edi, edi
    cmp byte [use_ioapic], 0
    jne irq_eoi
    mov al, 0x0b                ; OCW3: read the master's ISR
    out 0x20, al
    in al, 0x20
    or [isr_in], al
    call irq_eoi
    in al, 0x20
    or [isr_after], al
    mov al, 0x0a                ; OCW3: back to reading IRR
    out 0x20, al
    ret

align 8
programmed: dq 0
ticks: dq 0
stamps: times NTICKS dq 0
vector: db 0
isr_in: db 0
isr_after: db 0
'''

LATCH = r'''
; counter 2 read back with the latch and read-back commands while counter 0
; ticks every 5 ms (IRQ 0 through the PIC) to let time pass
PERIOD equ 5966
main:
    call irq_setup
    xor edi, edi
    mov rsi, tick
    call irq_handler
    mov al, 0x34                ; counter 0, LSB then MSB, mode 2
    out 0x43, al
    mov al, PERIOD & 0xff
    out 0x40, al
    mov al, PERIOD >> 8
    out 0x40, al
    xor edi, edi
    xor esi, esi
    call irq_unmask
    mov ecx, 1                  ; the first tick: from here on a tick is a period
    call ticks_after
    in al, 0x61                 ; gate 2 on, speaker off
    and al, 0xfc
    or al, 1
    out 0x61, al
    mov al, 0xb0                ; counter 2, LSB then MSB, mode 0, count 0xffff
    out 0x43, al
    mov al, 0xff
    out 0x42, al
    out 0x42, al
    mov al, 0xe8                ; read-back: status of counter 2
    out 0x43, al
    in al, 0x42
    mov [st_loaded], al
    mov al, 0x80                ; counter latch, counter 2
    out 0x43, al
    mov al, 0x80                ; a second latch before the first is read is ignored
    out 0x43, al
    mov ecx, 3                  ; at least one whole period passes, even if the first
    call ticks_after            ; tick is the last period's, raised late by a busy host
    call read2
    mov [held], rax
    mov al, 0x80
    out 0x43, al
    call read2
    mov [latched], rax
    call read2                  ; no latch: the counter as it runs
    mov [running], rax
    mov al, 0xca                ; read-back: count and status of counters 0 and 2
    out 0x43, al
    in al, 0x40                 ; status first, then the count
    mov [st_ch0], al
    in al, 0x40
    mov [rb_ch0], al
    in al, 0x40
    mov [rb_ch0 + 1], al
    in al, 0x42
    mov [st_ch2], al
    call read2
    mov [rb_ch2], rax
    mov al, 0xb0                ; counter 2: count 100, terminal count in 84 us
    out 0x43, al
    mov al, 100
    out 0x42, al
    xor eax, eax
    out 0x42, al
    mov ecx, 2                  ; a whole period (5 ms >> 84 us), even if the first
    call ticks_after            ; tick is one a busy host raised late, at once
    mov al, 0xe8
    out 0x43, al
    in al, 0x42
    mov [st_done], al
    in al, 0x61
    mov [port61], al
    xor edi, edi
    call irq_mask
    call report
    mov al, PASSED
    ret

report:
    call print
    db 'counter 2 status after the count ', 0
    mov al, [st_loaded]
    call hex2
    call print
    db 10, 'latched count held over a period ', 0
    mov rax, [held]
    sub rax, [latched]
    cmp rax, PERIOD
    call yes_if_ae
    call print
    db ', unlatched count runs ', 0
    mov rax, [latched]
    cmp rax, [running]
    call yes_if_a
    call print
    db 10, 'read-back status counter 0 ', 0
    mov al, [st_ch0]
    and al, 0x7f                ; OUT: KVM's mode 2 shows it inverted, see the test
    call hex2
    call print
    db ' count in its period ', 0
    mov rax, [rb_ch0]
    dec rax
    cmp rax, PERIOD
    call yes_if_b
    call print
    db ', counter 2 ', 0
    mov al, [st_ch2]
    call hex2
    call print
    db ' count runs ', 0
    mov rax, [latched]          ; both latched: an unlatched read may be torn
    cmp rax, [rb_ch2]
    call yes_if_a
    call print
    db 10, 'counter 2 status at terminal count ', 0
    mov al, [st_done]
    call hex2
    call print
    db ', port 61 OUT2 and gate ', 0
    mov al, [port61]
    and al, 0x21                ; not the refresh toggle
    call hex2
    mov al, 10
    jmp putc

yes_if_ae:
    mov al, 'y'
    jae putc
    mov al, 'n'
    jmp putc
yes_if_a:
    mov al, 'y'
    ja putc
    mov al, 'n'
    jmp putc
yes_if_b:
    mov al, 'y'
    jb putc
    mov al, 'n'
    jmp putc

ticks_after:                    ; sleep until rcx more ticks came
    add rcx, [ticks]
    mov rsi, ticks
    jmp wait_for

read2:                          ; rax = counter 2, LSB then MSB
    xor eax, eax
    in al, 0x42
    mov ah, al
    in al, 0x42
    xchg al, ah
    ret

tick:
    inc qword [ticks]
    xor edi, edi
    jmp irq_eoi

align 8
ticks: dq 0
held: dq 0
latched: dq 0
running: dq 0
rb_ch0: dq 0
rb_ch2: dq 0
st_loaded: db 0
st_ch0: db 0
st_ch2: db 0
st_done: db 0
port61: db 0
'''

CALIBRATE = r'''
; the TSC against counter 2 in mode 0, gated and read through port 0x61, as
; Linux's pit_calibrate_tsc does it
LATCH equ 11932                 ; 10 ms
main:
    in al, 0x61                 ; gate 2 on, speaker off
    and al, 0xfc
    or al, 1
    out 0x61, al
    mov al, 0xb0                ; counter 2, LSB then MSB, mode 0
    out 0x43, al
    mov al, LATCH & 0xff
    out 0x42, al
    mov al, LATCH >> 8
    out 0x42, al
    call rdtsc64
    mov rbx, rax
    xor ecx, ecx
.poll:
    in al, 0x61
    inc rcx
    test al, 0x20               ; OUT2
    jz .poll
    call rdtsc64
    sub rax, rbx
    mov [tsc_delta], rax
    mov [polls], rcx
    in al, 0x61
    mov [after], al
    or al, 2                    ; speaker data on: reads back
    out 0x61, al
    in al, 0x61
    mov [speaker], al
    and al, 0xfc
    out 0x61, al
    in al, 0x61
    mov [gate_off], al
    call print
    db 'counter 2: OUT2 low at first ', 0
    cmp qword [polls], 1
    mov al, 'y'
    ja .first
    mov al, 'n'
.first:
    call putc
    call print
    db ', then high with the gate ', 0
    mov al, [after]
    and al, 0x23                ; OUT2, speaker data, gate (not the refresh toggle)
    call hex2
    call print
    db ', speaker on ', 0
    mov al, [speaker]
    and al, 0x03
    call hex2
    call print
    db ', both off ', 0
    mov al, [gate_off]
    and al, 0x03
    call hex2
    mov al, 10
    call putc
    mov al, PASSED
    ret

align 8
tsc_delta: dq 0
polls: dq 0
after: db 0
speaker: db 0
gate_off: db 0
'''


WINDOW = r'''
; a one-shot PIT interrupt (mode 0, 1 ms) arrives while interrupts are off:
; the guest sees it in the PIC's IRR, turns interrupts on and spins, with no
; exit of its own ('user' mode must ask KVM for the interrupt window)
SPIN equ 200000                 ; 1000 times the 200 rounds it takes here (run with no halt poll)
main:
    call irq_setup
    xor edi, edi
    mov rsi, tick
    call irq_handler
    xor edi, edi
    xor esi, esi
    call irq_unmask
    mov al, 0x30                ; counter 0, LSB then MSB, mode 0: one rising edge
    out 0x43, al
    mov al, 1193 & 0xff
    out 0x40, al
    mov al, 1193 >> 8
    out 0x40, al
    mov al, 0x0a                ; OCW3: read IRR
    out 0x20, al
.poll:
    in al, 0x20
    test al, 1
    jz .poll
    xor ecx, ecx
    sti
.spin:
    inc rcx
    cmp qword [taken], 0
    jne .got
    cmp rcx, SPIN
    jb .spin
.got:
    cli
    mov [spins], rcx
    call print
    db 'IRQ 0 in IRR with IF clear, taken while spinning after STI ', 0
    mov al, 'y'
    cmp qword [spins], SPIN
    jb .said
    mov al, 'n'
.said:
    call putc
    call print
    db ', times ', 0
    mov rax, [taken]
    call putdec
    mov al, 10
    call putc
    mov al, PASSED
    ret

tick:
    inc qword [taken]
    xor edi, edi
    jmp irq_eoi

align 8
taken: dq 0
spins: dq 0
'''


def symbols(**values):
    return dict({'PASSED': PASSED, 'NTICKS': 20}, **values)


@requires_kvm
class PitTicksTest(unittest.TestCase):
    """Periodic PIT interrupts reach a halted guest on time in every mode."""

    def check_times(self, runs, period, nticks=20):
        """The guest took ``nticks`` ticks no faster than programmed, in
        order. (That they came at all, with the halt poll off, says the timer
        thread woke for them while the vCPU halted; how late they came is
        the host's load.)"""
        for mode, run in runs.items():
            with self.subTest(mode=mode, check='times'):
                stamps = run.u64s('stamps', nticks)
                self.assertEqual(stamps, sorted(stamps), run.describe())
                self.assertGreater(stamps[0], 0, run.describe())
                last_ms = run.ms(stamps[-1] - run.u64('programmed'))
                period_ms = 1000 * period / PIT_HZ
                # the Python PIT may deliver the control word's OUT edge at
                # once (tick 1), KVM's first tick comes after a period
                self.assertGreaterEqual(last_ms, (1 - EARLY_SLACK) * (nticks - 1) * period_ms,
                                        run.describe())

    def test_pit_ticks_reach_the_cpu_through_the_pic(self):
        with no_halt_poll():
            runs = run_in_every_mode(
                self, TICKS, 'PIT mode 2: 20 ticks\nISR in the handler 01, after EOI 00\n',
                symbols=symbols(WANT_IOAPIC=0, PITMODE=2, PERIOD=5966))
        for mode, run in runs.items():
            with self.subTest(mode=mode):
                self.assertEqual(run.u8('vector'), 0x20, run.describe())
        self.check_times(runs, 5966)

    def test_pit_ticks_reach_the_cpu_through_the_ioapic_where_there_is_one(self):
        # square wave (mode 3) at 2 ms: ISA IRQ 0 is IOAPIC pin 2, the PIC stays masked
        with no_halt_poll():
            runs = run_in_every_mode(self, TICKS, 'PIT mode 3: 20 ticks\n',
                                     symbols=symbols(WANT_IOAPIC=1, PITMODE=3, PERIOD=2386))
        for mode, run in runs.items():
            with self.subTest(mode=mode):
                ioapic = mode != 'user'
                self.assertEqual(run.u8('use_ioapic'), ioapic, run.describe())
                self.assertEqual(run.u8('vector'), 0x30 if ioapic else 0x20, run.describe())
        self.check_times(runs, 2386)

    def test_irq_pending_while_interrupts_are_off_is_taken_once_they_are_on(self):
        # (kvm_pvm emulates CPL0 code and takes an interrupt at most some 200
        # loop rounds after STI here, in every mode, KVM's own PIC included:
        # a count of instructions, which a loaded host does not raise. The
        # halt poll is off, or its kick could deliver the interrupt, late,
        # where the interrupt window failed)
        with no_halt_poll():
            run_in_every_mode(
                self, WINDOW,
                'IRQ 0 in IRR with IF clear, taken while spinning after STI y, times 1\n',
                symbols=symbols())

    def test_timer_thread_sleeps_while_the_guest_halts(self):
        # regression: in 'user' mode the timer thread's halt-poll deadline
        # never advanced, so 0.25 s into a run it spun on select(timeout=0),
        # a host CPU busy for as long as the guest slept (here 0.5 s of
        # ticks every 10 ms). Counted in rounds of the timer thread, not in
        # CPU time (which a loaded or nested host inflates): it wakes for a
        # tick's edges, a halt poll and the guest's device writes, some 60
        # rounds here; spinning, it made 25,000 and more
        period = 11932
        for mode in MODES:
            with self.subTest(mode=mode), counting_timer_rounds() as rounds:
                run = run_guest(TICKS, mode, symbols=symbols(WANT_IOAPIC=0, PITMODE=2,
                                                             PERIOD=period, NTICKS=50))
                self.assertEqual(run.output, b'PIT mode 2: 50 ticks\nISR in the handler 01, '
                                 b'after EOI 00\n', run.describe())
                # a late wake-up coalesces ticks: a loaded host makes fewer rounds, never more
                most = (3 * run.seconds * PIT_HZ / period
                        + 4 * (run.seconds / pc.HALT_POLL_S + 1) + 50)
                self.assertEqual(len(rounds), 1)
                self.assertLessEqual(rounds[0].n, most,
                                     f'{run.describe()}: {rounds[0].n} timer rounds')


@requires_kvm
class PitCounterTest(unittest.TestCase):
    """The guest reads the 8254's counters back as the datasheet says."""

    def test_latch_and_read_back_commands(self):
        runs = run_in_every_mode(
            self, LATCH,
            'counter 2 status after the count 30\n'
            'latched count held over a period y, unlatched count runs y\n'
            'read-back status counter 0 34 count in its period y, counter 2 30 count runs y\n'
            'counter 2 status at terminal count b0, port 61 OUT2 and gate 21\n',
            symbols=symbols())
        for mode, run in runs.items():
            if mode != 'kernel':
                # datasheet: in mode 2 OUT is high but for one CLK a period;
                # KVM's in-kernel PIT (like QEMU's) reports it low instead
                with self.subTest(mode=mode, check='mode 2 OUT'):
                    self.assertEqual(run.u8('st_ch0'), 0xB4, run.describe())

    def test_tsc_calibrates_against_counter_2_through_port_61(self):
        runs = run_in_every_mode(
            self, CALIBRATE,
            'counter 2: OUT2 low at first y, then high with the gate 21, speaker on 03, '
            'both off 00\n', symbols=symbols())
        for mode, run in runs.items():
            with self.subTest(mode=mode, check='calibration'):
                # OUT2 rises 11932 CLKs (10 ms) after the count was written;
                # a busy host may notice it late (by any amount: no bound on
                # that), never early. That it rose, after polls that saw it
                # low, the output says
                ms = run.ms(run.u64('tsc_delta'))
                self.assertGreaterEqual(ms, (1 - EARLY_SLACK) * 10, run.describe())
                self.assertGreater(run.u64('polls'), 1, run.describe())


if __name__ == '__main__':
    unittest.main()
