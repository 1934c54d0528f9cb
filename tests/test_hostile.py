"""Hostile guests and hostile input against kvmlite (issue #6).

What a guest can do through kvmlite must end in a clear RunResult while the
VMM stays healthy: its devices consistent (check() empty), its resident set
and file descriptors flat. The guests here sweep every port and the unmapped
guest-physical space, triple-fault, run ``rep outsb``/``rep insb`` with
enormous counts, storm interrupts, write garbage to the PIC, PIT, IOAPIC and
UART, and write to a read-only slot; a device that raises, a timer that
raises, timeouts at CPL0 and CPL3 (the run ends by its timeout), and
malformed kernel images through the command line complete the set (signals
to the command line on a pty: tests/test_terminal.py).

No test here asserts how fast something happens: a loaded host (2 CPUs,
shared with other test runs) breaks any such bound. How late a run comes back
after its timeout (issue #6: within 50 ms) is tools/bench.py's timeout figure
(``python3 tools/bench.py --no-qemu --only timeout``); the tests check what
load cannot change (the run ends with its timeout, never before it) and
guard against a hang with HANG_S.
"""

import contextlib
import io
import os
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import unittest

import kvmlite as K
from devices.console import MemoryBackend
from tools import pc
from tests.guest import Guest, check_exit, kvm, open_fds, requires_kvm
from tools.asm import assemble_with_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEM = 16 << 20              # guest RAM of the hostile machines
CODE = 0x100000             # where their code goes (long mode, CPL0)
IDT = 0x1000                # 256 interrupt gates, for the guests that take interrupts
COUNTER = 0x20000           # a qword the guests' interrupt handlers count in
TABLE = 0x200000            # data the host hands a guest (garbage to write)
RSS_SLACK_KIB = 2048        # how much a run may grow the VMM's resident set
# a run still going this long after its timeout hangs: a guard against a hang,
# not a speed (how late a timeout returns is tools/bench.py --only timeout)
HANG_S = 60


class BusBoundsTest(unittest.TestCase):

    def test_unclaimed_counters_keep_a_bounded_number_of_addresses(self):
        # regression: every unclaimed MMIO address got its own Counter entry,
        # so a guest sweeping 4 GiB grew the VMM by ~70 bytes per address
        for bus in (K.PioBus(), K.MmioBus()):
            limit = K.BUS_COUNTED_ADDRESSES
            for addr in range(limit + 1000):
                self.assertEqual(bus.read(addr, 2), 0xFFFF)
                bus.write(addr, 1, 0)
            bus.write(7, 4, 0)                     # a counted address still counts
            self.assertEqual(len(bus.unclaimed), limit)
            self.assertEqual(bus.unclaimed[7], 3)
            self.assertEqual(bus.unclaimed_other, 2000)

    def test_access_counting_keeps_a_bounded_number_of_addresses(self):
        bus = K.MmioBus()
        bus.count_accesses = True
        for addr in range(0, (K.BUS_COUNTED_ADDRESSES + 10) * 4096, 4096):
            bus.read(addr, 4)
        self.assertEqual(len(bus.counts), K.BUS_COUNTED_ADDRESSES)
        self.assertEqual(bus.counts_other, 10)


def rss_kib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1])
    raise AssertionError('no VmRSS in /proc/self/status')


def problems(m):
    """Every device's check() of machine ``m``, as 'device: problem' strings."""
    devs = [('PIC', m.pic), ('PIT', m.pit), ('IOAPIC', m.ioapic), ('RTC', m.rtc),
            ('8042', m.i8042), ('POST', m.post), ('debug exit', m.debug_exit), ('PCI', m.pci),
            ('fw_cfg', m.fw_cfg)] + [(f'COM{i + 1}', s) for i, s in enumerate(m.serials)]
    return [f'{name}: {p}' for name, dev in devs if dev is not None for p in dev.check()]


# 256 interrupt gates at IDT, all to `handler` (which the guest defines)
IDT_SETUP = f'''
    mov rdi, {IDT}
    mov ecx, 256
    mov rax, handler
fill_idt:
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], {K.SEL_CODE64}
    mov word ptr [rdi + 4], 0x8e00
    mov rbx, rax
    shr rbx, 16
    mov word ptr [rdi + 6], bx
    mov qword ptr [rdi + 8], 0
    add rdi, 16
    dec ecx
    jnz fill_idt
    lidt [idtr]
'''
IDTR = f'''
idtr:
    dw 4095
    dq {IDT}
'''
# both 8259As: vectors 0x20-0x2F, cascade on IRQ 2, 8086 mode, nothing masked
PIC_INIT = '''
    mov al, 0x11
    out 0x20, al
    out 0xa0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1
    out 0x21, al
    out 0xa1, al
    xor al, al
    out 0x21, al
    out 0xa1, al
'''
# count an interrupt, EOI both 8259As, return
COUNTING_HANDLER = f'''
handler:
    push rax
    mov rax, {COUNTER}
    inc qword ptr [rax]
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop rax
    iretq
'''
DEBUG_EXIT_7 = '''
    mov al, 7
    out 0xf4, al
'''


class HostileCase(unittest.TestCase):
    """Machines with hostile code at CODE in long mode (CPL0), and the
    measures that say the VMM came through: devices consistent, fds and
    resident set flat."""

    @classmethod
    def setUpClass(cls):
        # the first machine of the process imports and caches what every one uses
        with K.Machine(mem_size=MEM, kvm=kvm(), console=MemoryBackend()) as m:
            code, _ = assemble_with_labels('cli\nhlt', bits=64, origin=CODE)
            m.vm.write(CODE, code)
            K.setup_mode(m.vm.vcpus[0], m.vm, 'long64', CODE)
            m.run(timeout=5)

    def machine(self, src, irqchip='split', user=False, **kw):
        m = K.Machine(mem_size=MEM, irqchip=irqchip, kvm=kvm(), console=MemoryBackend(), **kw)
        self.addCleanup(m.close)
        code, m.labels = assemble_with_labels(src, bits=64, origin=CODE)
        m.vm.write(CODE, code)
        # user: CPL3 with IOPL 3, so the guest reaches the ports
        K.setup_long_mode(m.vm.vcpus[0], m.vm, CODE, cpl=3 if user else 0,
                          rflags=0x3002 if user else 0x2)
        return m

    @contextlib.contextmanager
    def flat(self):
        """The block leaks no fd or thread and grows the RSS by at most RSS_SLACK_KIB."""
        fds, threads, rss = open_fds(), threading.active_count(), rss_kib()
        yield
        self.assertEqual(open_fds(), fds, 'file descriptors leaked')
        self.assertEqual(threading.active_count(), threads, 'threads left running')
        self.assertLessEqual(rss_kib() - rss, RSS_SLACK_KIB, 'resident set grew')

    def run_machine(self, m, timeout):
        """Run ``m`` once; returns (RunResult, seconds). Its devices must be consistent."""
        start = time.monotonic()
        result = m.run(timeout=timeout)
        took = time.monotonic() - start
        self.assertEqual(problems(m), [])
        self.assertNotIn('\n', result.reason)
        return result, took

    def run_to_the_end(self, m, progress, chunk=20):
        """Run ``m`` in runs of ``chunk`` seconds until it ends, as long as
        each run moved ``progress()`` on: a loaded host makes a long guest
        slower, never wrong, so no one run's timeout is what it must finish
        in. Returns the last RunResult (a timeout: the guest stopped moving)."""
        last = progress()
        while True:
            result, _ = self.run_machine(m, timeout=chunk)
            now = progress()
            if result.status != K.EXIT_TIMEOUT or now == last:
                return result
            last = now

    def assertResult(self, result, status, reason):
        self.assertEqual(result.status, status, result.reason)
        self.assertRegex(result.reason, reason)


@requires_kvm
class SweepTest(HostileCase):

    def test_every_port_read_and_written_in_every_size_ends_in_the_guests_exit(self):
        # the writes skip only the debug-exit ports, the guest's own way out
        src = '''
            xor edx, edx
        reads:
            in al, dx
            in ax, dx
            in eax, dx
            inc edx
            cmp edx, 0x10000
            jne reads
            xor edx, edx
            mov eax, 0x5a5a5a5a
        writes:
            cmp edx, 0xf4
            jb write
            cmp edx, 0xf8
            jb skip
        write:
            out dx, al
            out dx, ax
            out dx, eax
        skip:
            inc edx
            cmp edx, 0x10000
            jne writes
        ''' + DEBUG_EXIT_7
        with self.flat():
            m = self.machine(src)
            result = self.run_to_the_end(m, lambda: m.vm.vcpus[0].get_regs().rdx)
            self.assertResult(result, 15, 'debug-exit port: exit status 15$')
            self.assertEqual(m.vm.vcpus[0].get_regs().rdx, 0x10000)
            self.assertLessEqual(len(m.vm.pio.unclaimed), K.BUS_COUNTED_ADDRESSES)
            self.assertGreater(m.vm.pio.unclaimed_other, 0)
            m.close()

    def test_unmapped_guest_physical_space_reads_all_ones_and_ends_in_the_guests_exit(self):
        # every MiB from the end of RAM to the IOAPIC, every page from there
        # to 0xFF000000, every 64 KiB above; reads that nothing claims float
        # high (folded into r9, r10d and r11b by size)
        src = f'''
            mov r9, -1
            mov r10, -1
            mov r11, -1
            mov rsi, {MEM}
            mov rcx, 0xfec00000
        coarse:
            and r10d, dword ptr [rsi]
            and r11b, byte ptr [rsi + 3]
            and r9, qword ptr [rsi + 8]
            mov dword ptr [rsi], 0x5a5a5a5a
            mov word ptr [rsi + 6], 0x1234
            add rsi, 0x100000
            cmp rsi, rcx
            jb coarse
            mov rcx, 0xff000000
        fine:
            mov eax, dword ptr [rsi]
            mov dword ptr [rsi + 0x10], 0x5a5a5a5a
            add rsi, 0x1000
            cmp rsi, rcx
            jb fine
            mov rcx, 0x100000000
        top:
            and r9, qword ptr [rsi]
            mov byte ptr [rsi + 1], 0xa5
            add rsi, 0x10000
            cmp rsi, rcx
            jb top
        ''' + DEBUG_EXIT_7
        with self.flat():
            m = self.machine(src)
            result = self.run_to_the_end(m, lambda: m.vm.vcpus[0].get_regs().rsi)
            self.assertResult(result, 15, 'debug-exit port: exit status 15$')
            regs = m.vm.vcpus[0].get_regs()
            self.assertEqual((regs.rsi, regs.r9, regs.r10, regs.r11 & 0xFF),
                             (1 << 32, (1 << 64) - 1, 0xFFFFFFFF, 0xFF))
            self.assertEqual(len(m.vm.mmio.unclaimed), K.BUS_COUNTED_ADDRESSES)
            self.assertGreater(m.vm.mmio.unclaimed_other, 0)
            m.close()


@requires_kvm
class CrashTest(HostileCase):

    def test_a_triple_fault_ends_the_run_with_status_4_naming_the_rip(self):
        src = '''
            lidt [empty]
        crash:
            ud2
        empty:
            dw 0
            dq 0
        '''
        for irqchip in K.IRQCHIP_MODES:
            with self.subTest(irqchip=irqchip), self.flat():
                m = self.machine(src, irqchip)
                result, _ = self.run_machine(m, timeout=10)
                self.assertResult(result, K.EXIT_TRIPLE_FAULT,
                                  f'^triple fault on vCPU 0 at RIP {m.labels["crash"]:#x}$')
                m.close()

    def test_a_guest_that_sends_itself_init_through_the_ioapic_ends_with_a_clear_outcome(self):
        # pin 2 (the PIT) as INIT: the CPU resets to a reset vector with no
        # firmware behind it, which KVM cannot run
        src = '''
            mov rdi, 0xfec00000
            mov dword ptr [rdi], 0x14
            mov dword ptr [rdi + 0x10], 0x500
            mov al, 0x34
            out 0x43, al
            mov al, 0xff
            out 0x40, al
            out 0x40, al
        wait:
            pause
            jmp wait
        '''
        with self.flat():
            m = self.machine(src)
            result, _ = self.run_machine(m, timeout=10)
            self.assertResult(result, K.EXIT_INTERNAL, r'^internal error on vCPU 0 at RIP 0xfff0')
            m.close()


@requires_kvm
class StringIoTest(HostileCase):

    def test_rep_outsb_and_insb_with_enormous_counts_run_until_the_timeout(self):
        # each starts a page below the end of RAM and goes on into unmapped
        # space; on this host rep outsb at CPL0 exits once per byte. Every
        # 0.5 s run ends with its timeout, and the runs go on, as many as a
        # loaded host needs, until the string is past the end of RAM
        start, counts = MEM - 0x1000, {1: 0x10000000000, 4: 0x4000000000}
        cases = {       # name: (source, the register that walks, bytes an element)
            'outsb': (f'mov rsi, {start}\n mov rcx, {counts[1]}\n mov dx, 0x3f8\n'
                      f' rep outsb\n hlt', 'rsi', 1),
            'insb': (f'mov rdi, {start}\n mov rcx, {counts[1]}\n mov dx, 0x3f8\n'
                     f' rep insb\n hlt', 'rdi', 1),
            'outsd': (f'mov rsi, {start}\n mov rcx, {counts[4]}\n mov dx, 0x80\n'
                      f' rep outsd\n hlt', 'rsi', 4),
        }
        for name, (src, reg, size) in cases.items():
            with self.subTest(instruction=name), self.flat():
                m = self.machine(src)
                give_up = time.monotonic() + HANG_S
                while True:
                    result, took = self.run_machine(m, timeout=0.5)
                    self.assertResult(result, K.EXIT_TIMEOUT, '^timeout after 0.5 s$')
                    self.assertLess(took, 0.5 + HANG_S)
                    regs = m.vm.vcpus[0].get_regs()
                    if getattr(regs, reg) > MEM or time.monotonic() > give_up:
                        break
                walked = getattr(regs, reg) - start
                self.assertGreater(walked, 0x1000, f'{name} never got past the end of RAM')
                # stopped between two elements: the count went down by as many
                # elements as the pointer went up
                self.assertEqual(walked % size, 0)
                self.assertEqual(counts[size] - regs.rcx, walked // size)
                self.assertLessEqual(len(m.console.output), m.console.limit)
                self.assertLessEqual(len(m.vm.mmio.unclaimed), K.BUS_COUNTED_ADDRESSES)
                m.close()


@requires_kvm
class InterruptStormTest(HostileCase):
    # PIT counter 0 at its shortest period (count 2, 1.7 us), the RTC's
    # periodic interrupt at its fastest (122 us), and COM1's THRE interrupt
    # level-triggered through the ELCR, never cleared: after each EOI it is
    # due again
    STORM = IDT_SETUP + PIC_INIT + '''
        mov al, 0x34
        out 0x43, al
        mov al, 2
        out 0x40, al
        xor al, al
        out 0x40, al
        mov al, 0x0a
        out 0x70, al
        mov al, 0x23
        out 0x71, al
        mov al, 0x0b
        out 0x70, al
        mov al, 0x42
        out 0x71, al
        mov al, 0x10
        mov dx, 0x4d0
        out dx, al
        mov dx, 0x3fc
        mov al, 0x08
        out dx, al
        mov dx, 0x3f9
        mov al, 0x02
        out dx, al
        sti
    idle:
        hlt
        jmp idle
    ''' + COUNTING_HANDLER + IDTR

    def test_an_interrupt_storm_leaves_the_vmm_responsive_to_its_timeout(self):
        for irqchip in K.IRQCHIP_MODES:
            with self.subTest(irqchip=irqchip), self.flat():
                m = self.machine(self.STORM, irqchip)
                ticks = TickCounter()
                m._timed.append(ticks)          # ticked with the devices, once a round
                result, took = self.run_machine(m, timeout=0.5)
                interrupts = m.vm.read_int(COUNTER, 8)
                print(f'\n  {irqchip} interrupt storm: {interrupts} interrupts, '
                      f'{ticks.n} timer rounds in {took:.2f} s', file=sys.stderr)
                self.assertResult(result, K.EXIT_TIMEOUT, '^timeout after 0.5 s$')
                self.assertLess(took, 0.5 + HANG_S)
                self.assertGreater(interrupts, 0, 'the storm never reached the guest')
                # regression: before the timer thread slept at least
                # MIN_TIMER_SLEEP_S a round, a 1.7 us PIT period kept it busy,
                # and the GIL from the vCPU thread (4 interrupts in 0.5 s).
                # The sleep bounds its rounds by the time the run took (a
                # loaded host makes fewer, never more), plus a few for the
                # wake-ups of the guest's device writes and the halt polls
                most = took / pc.MIN_TIMER_SLEEP_S + 4 * (took / pc.HALT_POLL_S + 1) + 50
                self.assertLessEqual(ticks.n, most, f'the timer thread ran {ticks.n} rounds '
                                     f'in {took:.2f} s: it did not sleep between them')
                m.close()


class TickCounter:
    """A timed device that counts the timer thread's rounds and has no deadline."""

    def __init__(self):
        self.n = 0

    def tick(self):
        self.n += 1


def garbage(seed, n):
    """``n`` seeded writes of random values to the PIC, ELCR, PIT, port 0x61,
    COM1 and the IOAPIC's window, with a few reads, as 8-byte records
    (kind, 0, port or offset, value) for GARBAGE below; kind 3 ends it.
    IOAPIC entries never get INIT or SMI delivery, which would take the
    CPU away from the guest (CrashTest covers INIT)."""
    rng = random.Random(seed)
    ports = [0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61] + \
        list(range(0x3F8, 0x400))
    out = bytearray()
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            out += struct.pack('<BxHI', 0, rng.choice(ports), rng.getrandbits(8))
        elif r < 0.85:
            value = rng.getrandbits(32)
            if (value >> 8) & 7 in (2, 5):
                value &= ~0x700
            offset = rng.choice((0, 0x10, 0x10, 0x40, rng.randrange(0, 0x100, 4)))
            out += struct.pack('<BxHI', 1, offset, value)
        else:
            out += struct.pack('<BxHI', 2, rng.choice(ports), 0)
    return bytes(out + struct.pack('<BxHI', 3, 0, 0))


GARBAGE = IDT_SETUP + f'''
    STI_OR_CLI
    mov rsi, {TABLE}
    mov r8, 0xfec00000
next:
    movzx ecx, byte ptr [rsi]
    movzx edx, word ptr [rsi + 2]
    mov eax, dword ptr [rsi + 4]
    add rsi, 8
    cmp ecx, 0
    je do_out
    cmp ecx, 1
    je do_mmio
    cmp ecx, 2
    je do_in
''' + DEBUG_EXIT_7 + '''
do_out:
    out dx, al
    jmp next
do_mmio:
    mov dword ptr [r8 + rdx], eax
    jmp next
do_in:
    in al, dx
    jmp next
''' + COUNTING_HANDLER + IDTR


@requires_kvm
class GarbageTest(HostileCase):

    def test_garbage_to_the_pic_pit_ioapic_and_uart_leaves_them_consistent(self):
        for irqchip in K.IRQCHIP_MODES:
            for sti in ('cli', 'sti'):
                with self.subTest(irqchip=irqchip, interrupts=sti), self.flat():
                    m = self.machine(GARBAGE.replace('STI_OR_CLI', sti), irqchip)
                    m.vm.write(TABLE, garbage(f'{irqchip}/{sti}', 3000))
                    result, _ = self.run_machine(m, timeout=30)
                    self.assertResult(result, 15, 'debug-exit port: exit status 15$')
                    m.close()


@requires_kvm
class ReadOnlySlotTest(HostileCase):

    def test_writes_to_a_read_only_slot_exit_as_mmio_and_leave_it_unchanged(self):
        rom_at = 0xE0000000
        src = f'''
            mov rdi, {rom_at}
            mov rax, 0x1122334455667788
            mov qword ptr [rdi], rax
            mov byte ptr [rdi + 0x123], 0x55
            mov word ptr [rdi + 0xffe], 0x6666
            lea rdi, [rdi + 0x200]
            mov ecx, 0x100
            rep stosb
            mov rdi, {rom_at}
            mov rax, qword ptr [rdi]
            mov rbx, {COUNTER}
            mov qword ptr [rbx], rax
            mov al, byte ptr [rdi + 0x123]
            mov byte ptr [rbx + 8], al
        ''' + DEBUG_EXIT_7
        with self.flat():
            m = self.machine(src)
            m.vm.add_memory(rom_at, 0x2000, readonly=True)
            pattern = bytes(range(256)) * 32
            m.vm.write(rom_at, pattern)
            result, _ = self.run_machine(m, timeout=10)
            self.assertResult(result, 15, 'debug-exit port: exit status 15$')
            self.assertEqual(m.vm.read(rom_at, 0x2000), pattern)
            self.assertEqual(m.vm.read(COUNTER, 9), pattern[:8] + pattern[0x123:0x124])
            unclaimed = m.vm.mmio.unclaimed
            self.assertEqual([unclaimed[rom_at + off] for off in (0, 0x123, 0xFFE)], [1, 1, 1])
            self.assertEqual(sum(unclaimed[rom_at + 0x200 + i] for i in range(0x100)), 0x100)
            m.close()


class Raising:
    """A device that fails on every write (a bug in a device model)."""
    SIZE = 4

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        raise ZeroDivisionError('division by zero')

    def tick(self):
        raise RuntimeError('the timer went wrong')


@requires_kvm
class DeviceErrorTest(HostileCase):

    def test_a_raising_port_device_ends_the_run_with_status_8_naming_port_vcpu_and_rip(self):
        src = '''
            mov dx, 0x300
            mov al, 1
        boom:
            out dx, al
            hlt
        '''
        with self.flat():
            m = self.machine(src)
            m.vm.pio.register(0x300, Raising(), name='broken device')
            result, _ = self.run_machine(m, timeout=10)
            boom = m.labels['boom']
            self.assertResult(result, K.EXIT_VMM, r'^device error: broken device raised '
                              r'ZeroDivisionError: division by zero on a 1-byte write of 0x1 '
                              r'at port 0x300 \(vCPU 0, guest RIP (0x[0-9a-f]+)\)$')
            rip = int(result.reason.rpartition('RIP ')[2].rstrip(')'), 16)
            self.assertIn(rip, (boom, boom + 1))          # at the out, or just after it
            m.close()

    def test_device_error_carries_bus_address_vcpu_and_rip_and_the_vm_runs_on(self):
        src = '''
            mov rdi, 0xd0000000
        boom:
            mov dword ptr [rdi + 2], 0x1234
        after:
            mov al, 3
            out 0x10, al
        '''
        m = self.machine(src)
        m.vm.mmio.register(0xD0000000, Raising(), name='broken MMIO device')
        vcpu = m.vm.vcpus[0]
        runs_on = {K.Interrupted: lambda v, e: e.why != 'timeout'}   # the PIC's INTR kicks
        with self.assertRaises(K.DeviceError) as cm:
            vcpu.run_loop(runs_on, timeout=10)
        e = cm.exception
        self.assertEqual((e.bus, e.addr, e.vcpu), ('mmio', 0xD0000002, 0))
        self.assertIn(e.rip, (m.labels['boom'], m.labels['after']))
        self.assertIn(f'at mmio 0xd0000002 (vCPU 0, guest RIP {e.rip:#x})', str(e))
        m.vm.mmio.unregister(0xD0000000)
        vcpu.set_regs(rip=m.labels['after'])
        exit = vcpu.run_loop({**runs_on, K.IoOut: lambda v, e: False}, timeout=10)  # it runs on
        check_exit(vcpu, exit, K.IoOut, port=0x10, value=3)
        m.close()

    def test_a_device_whose_tick_raises_ends_the_run_with_status_8(self):
        # regression: the exception killed the timer thread with a traceback
        # and the run went on without timers until its timeout (the status
        # says which: such a run ends with EXIT_TIMEOUT, however long it took)
        with self.flat():
            m = self.machine('spin:\n jmp spin')
            m._timed.append(Raising())
            result, _ = self.run_machine(m, timeout=HANG_S)
            self.assertResult(result, K.EXIT_VMM, r'^device error in the timer thread: '
                              r'Raising.tick\(\) raised RuntimeError: the timer went wrong$')
            m.close()


@requires_kvm
class ReuseTest(HostileCase):

    def test_a_run_with_a_timeout_leaves_no_thread_behind(self):
        # regression: Machine.run cancelled its timeout Timer without joining
        # it, so its thread was still alive when run() returned
        m = self.machine('cli\nhlt')
        threads = threading.active_count()
        self.assertResult(m.run(timeout=10), K.EXIT_OK, 'halted with interrupts disabled')
        self.assertEqual(threading.active_count(), threads, threading.enumerate())

    def test_one_vcpu_is_put_in_every_mode_in_turn(self):
        # regression: after long mode, setup_protected_mode and setup_real_mode
        # kept EFER.LME/LMA (and CS.L), and KVM_SET_SREGS failed with EINVAL,
        # so a machine could not load a 32-bit image after a 64-bit one
        codes = {'real': (16, 0x10000), 'prot32': (32, 0x100000), 'long64': (64, 0x200000)}
        with Guest('', ram=4 << 20) as g:
            for mode, (bits, at) in codes.items():
                code, _ = assemble_with_labels(f'mov al, {bits}\nout 0x10, al\nhlt', bits=bits,
                                               origin=0 if mode == 'real' else at)
                g.vm.write(at, code)
            for mode in ('long64', 'prot32', 'long64', 'real', 'long64', 'real', 'prot32', 'real'):
                bits, at = codes[mode]
                K.setup_mode(g.vcpu, g.vm, mode, 0 if mode == 'real' else at,
                             cs=at >> 4 if mode == 'real' else 0)
                g.expect(K.IoOut, port=0x10, value=bits)


SPIN = '''
    mov rbx, 1
spin:
    inc rax
    jmp spin
'''


@requires_kvm
class TimeoutTest(HostileCase):
    """run(timeout=...) ends by its timeout while the guest spins at CPL0
    (emulated here) and at CPL3 (native), with no exit of its own to come
    back on: Vcpu.run, and Machine.run in every irqchip mode, three runs each,
    none back before its timeout. How late they come back (issue #6: within
    50 ms) is a figure a loaded host changes: ``python3 tools/bench.py
    --no-qemu --only timeout`` measures it."""

    def check_runs(self, run, timeout=0.2):
        for _ in range(3):
            start = time.monotonic()
            run(timeout)
            took = time.monotonic() - start
            self.assertGreaterEqual(took, timeout, 'back before its timeout')
            self.assertLess(took, timeout + HANG_S)

    def test_vcpu_run_ends_by_its_timeout_at_cpl0_and_cpl3(self):
        for mode in ('long64', 'user64'):
            with self.subTest(cpl=3 if mode == 'user64' else 0), Guest(SPIN, mode=mode) as g:
                def run(timeout):
                    check_exit(g.vcpu, g.vcpu.run(timeout=timeout), K.Interrupted, why='timeout')
                self.check_runs(run)
                self.assertEqual(g.vcpu.get_sregs().cs.selector & 3, 3 if mode == 'user64' else 0)
                self.assertGreater(g.vcpu.get_regs().rax, 0)        # it spun

    def test_machine_run_ends_by_its_timeout_at_cpl0_and_cpl3(self):
        for irqchip in K.IRQCHIP_MODES:
            for user in (False, True):
                with self.subTest(irqchip=irqchip, cpl=3 if user else 0):
                    m = self.machine(SPIN, irqchip, user=user)

                    def run(timeout):
                        self.assertResult(m.run(timeout=timeout), K.EXIT_TIMEOUT,
                                          f'^timeout after {timeout} s$')
                    self.check_runs(run)
                    self.assertEqual(m.vm.vcpus[0].get_sregs().cs.selector & 3, 3 if user else 0)
                    self.assertGreater(m.vm.vcpus[0].get_regs().rax, 0)
                    m.close()


@requires_kvm
class MalformedImageTest(HostileCase):
    """Mutated and truncated images (tests/test_boot.py's seeded mutator)
    loaded into a real machine, and handed to the command line."""

    FORMATS = {'elf32': 'elf', 'elf64': 'elf', 'multiboot-aout': 'multiboot',
               'multiboot-elf': 'multiboot', 'bzimage': 'bzimage', 'pvh': 'pvh',
               'pvh-section': 'pvh'}

    def test_mutated_images_load_or_fail_with_one_line_and_no_huge_allocation(self):
        from tests.test_boot import VALID_IMAGES, mutate
        rng = random.Random(6)
        m = self.machine('hlt')
        outcomes = set()
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        for name, (_, make) in VALID_IMAGES.items():
            image = make()
            for i in range(60):
                bad = mutate(rng, image)
                fmt = self.FORMATS[name] if i % 2 else 'auto'
                initrd = rng.choice((None, b'', rng.randbytes(rng.randrange(1, 5000))))
                tracemalloc.reset_peak()
                try:
                    K.load_kernel(m, bad, fmt=fmt, initrd=initrd)
                    outcomes.add('loaded')
                except K.GuestMemoryError as e:        # a write outside the guest's RAM
                    self.fail(f'{name} mutation {i} ({fmt}): {e}')
                except ValueError as e:                # BootError is a ValueError
                    self.assertRegex(str(e), r'^[^\n]+$', f'{name} mutation {i}')
                    outcomes.add('refused')
                peak = tracemalloc.get_traced_memory()[1]
                self.assertLess(peak, 2 * MEM + 4 * len(bad), f'{name} mutation {i} ({fmt})')
        self.assertEqual(outcomes, {'loaded', 'refused'})

    def cli(self, *args):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = K.main(['run', '--console', 'none', '-m', '16', '--timeout', '0.05', *args])
        return status, err.getvalue()

    def test_malformed_images_on_the_command_line_say_what_is_wrong_in_one_line(self):
        from tests.test_boot import make_bzimage, make_multiboot_aout, make_pvh
        tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(tmp, f)) for f in os.listdir(tmp)]
                        and os.rmdir(tmp))

        def file(name, data):
            path = os.path.join(tmp, name)
            with open(path, 'wb') as f:
                f.write(data)
            return path
        bz = make_bzimage(kernel=b'\xf4' * 0x400, pref=0x100000, init_size=0x10000)
        sparse = file('sparse', b'')
        os.truncate(sparse, 1 << 40)                   # a terabyte of nothing
        cases = [
            (['-k', file('bz-cut', bz[:0x300]), '--format', 'bzimage'], 'bzImage'),
            (['-k', file('mb-cut', make_multiboot_aout()[:40]), '--format', 'multiboot'],
             'ultiboot'),
            (['-k', file('pvh-cut', make_pvh()[:100]), '--format', 'pvh'], 'truncated'),
            (['-k', file('empty', b'')], 'empty'),
            (['-k', os.path.join(tmp, 'missing')], 'cannot read kernel'),
            (['-k', tmp], 'cannot read kernel'),
            (['-k', file('bz', bz), '-i', file('huge-initrd', b'\0' * (17 << 20))], 'initrd'),
            (['-k', sparse], "kernel '" + sparse + "' is larger than the guest's 16 MiB of RAM"),
        ]
        for args, words in cases:
            with self.subTest(args=args[1]):
                status, err = self.cli(*args)
                self.assertEqual(status, K.EXIT_USAGE, err)
                self.assertRegex(err, r'^kvmlite: [^\n]+\n$')
                self.assertIn(words, err)
                self.assertNotIn('Traceback', err)

    def test_an_endless_kernel_file_is_refused_without_reading_it_all(self):
        # regression: the command line read the whole file first, so -k
        # /dev/zero grew the VMM until it ran out of memory (a 2 GiB address
        # space limit makes that a MemoryError here); now it is refused
        # unread, as every file that is not a regular one
        code = ('import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); '
                'import kvmlite; sys.exit(kvmlite.main(sys.argv[1:]))')
        p = subprocess.run([sys.executable, '-c', code, 'run', '-k', '/dev/zero', '-m', '16',
                            '--console', 'none'], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
        self.assertEqual((p.returncode, p.stderr),
                         (K.EXIT_USAGE, "kvmlite: cannot read kernel '/dev/zero': not a regular "
                                        "file but a character device: give the kernel as a "
                                        "regular file\n"))

if __name__ == '__main__':
    unittest.main()
