"""The gdb remote stub (tools/gdbstub.py, ``run --gdb``).

Three levels: the packet layer alone (bytes in, events out, no KVM); the
stub in this process, driven packet by packet over a real socket, on a real
guest under KVM (malformed packets, bad checksums, a second client, a
dropped connection, Ctrl-C, the stub's own step over an armed breakpoint);
and the real gdb (``gdb -batch``) against ``kvmlite.py run --gdb 0 -S -c 2``
on a 32-bit protected-mode and a 64-bit long-mode ELF (skipped when gdb is
not installed). The guests run at CPL0, emulated on this host at about 1M
instructions/s: each is a few dozen instructions.
"""

import contextlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import xml.etree.ElementTree as ET

import kvmlite
from devices.console import MemoryBackend
from tests.guest import requires_kvm
from tests.test_boot_kvm import make_elf
from tools import cli, gdbstub
from tools.asm import assemble_with_labels
from tools.pc import EXIT_SIGNAL
from tools.gdbstub import PacketReader, encode, parse_address, target_xml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOAD = 0x100000
DEBUG_EXIT_STATUS = 0x2A << 1 | 1          # the guests write 0x2A to port 0xF4

# Prints AL (set to 'x' at bp1), then the string at msg, then exits.
PRINTER = '''
start:
    mov edx, 0x3f8
    mov eax, 'a'
bp1:
    mov eax, 'x'
after:
    out dx, al
    mov esi, msg
next:
    lodsb
    test al, al
    jz done
    out dx, al
    jmp next
done:
    mov al, 0x2a
    out 0xf4, al
    cli
    hlt
msg: db 'm=?', 10, 0
'''

SPINNER = '''
start:
    mov ecx, 0
spin:
    inc ecx
    jmp spin
'''

# Two vCPUs through one address: the boot CPU starts the AP (INIT, startup IPI
# to a real-mode trampoline copied to 0x8000 that enters 32-bit protected mode
# on the boot CPU's GDT), both meet at `arrived` and run into hit together;
# the boot CPU waits for the AP to pass too, prints and exits.
TRAMPOLINE = '''
bits 16
    cli
    mov ax, cs
    mov ds, ax
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:AP32
gdtr: dw 0
    dd 0
'''
TRAMPOLINE_GDTR = 0x8000 + 0x1A         # where gdtr lands in the copy (checked below)

TWO_CPUS = '''
start:
    mov esi, tramp
    mov edi, 0x8000
    mov ecx, tramp_end - tramp
    rep movsb
    sgdt [GDTR]
    xor ebp, ebp                ; 0: the boot CPU
    mov ebx, 0xfee00000         ; the local APIC
    mov dword [ebx + 0xf0], 0x1ff
    mov dword [ebx + 0x310], 0x01000000
    mov dword [ebx + 0x300], 0x4500     ; INIT to APIC id 1
    mov dword [ebx + 0x310], 0x01000000
    mov dword [ebx + 0x300], 0x4608     ; startup IPI: 0800:0000
common:
    lock inc dword [arrived]
meet:
    cmp dword [arrived], 2
    jne meet
hit:
    nop
    lock inc dword [passed]
    test ebp, ebp
    jnz ap_done
wait_ap:
    cmp dword [passed], 2
    jne wait_ap
    mov dx, 0x3f8
    mov al, '2'
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0x2a
    out 0xf4, al
ap_done:
    cli
    hlt
ap32:
    mov ax, 0x18
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000
    mov ebp, 1
    jmp common
arrived: dd 0
passed: dd 0
tramp:
    db TRAMP
tramp_end:
'''

# The guest's own int3s, each answered by its own #BP handler, which prints H
# and returns past the int3 (by popping the frame: on a host that emulates
# kernel mode, iret at CPL0 is an emulation failure too).
OWN_INT3 = '''
start:
    lidt [idtr]
    mov edx, 0x3f8
    mov al, 'a'
    out dx, al
    int3
back:
    mov al, 'b'
    out dx, al
    int3
last:
    mov al, 'c'
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0x2a
    out 0xf4, al
    cli
    hlt
handler:
    pop eax                     ; the return address: just past an int3
    add esp, 4
    popfd
    mov cl, 'H'
    cmp byte [eax - 1], 0xcc
    je .said
    mov cl, '!'
.said:
    xchg eax, ecx
    out dx, al
    jmp ecx
idt:
    times 3 dq 0
    dd (0x08 << 16) | (handler & 0xffff)
    dd (handler & 0xffff0000) | 0x8e00
idtr:
    dw 31
    dd idt
'''

# Writes 5 to counter, reads it back, prints it; then a write and a read of
# another dword of counter's page (not watched); prints that too.
WATCHED = '''
start:
    mov dword [counter], 5
wrote:
    mov eax, [counter]
read_done:
    mov edx, 0x3f8
    add al, '0'
    out dx, al
    mov dword [other], 1
    mov eax, [other]
    add al, '0'
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0x2a
    out 0xf4, al
    cli
    hlt
align 4096
counter: dd 0
other: dd 0
'''


def watched_guest():
    code, labels = assemble_with_labels(WATCHED, bits=32, origin=LOAD)
    return make_elf(32, [(LOAD, LOAD, code, 0x2000)], LOAD), labels, code


def two_cpu_guest():
    """The TWO_CPUS ELF: its labels and code (the trampoline assembled
    against where ap32 lands)."""
    def build(ap32):
        tramp, tl = assemble_with_labels(TRAMPOLINE, bits=16, origin=0, symbols={'AP32': ap32})
        assert 0x8000 + tl["gdtr"] == TRAMPOLINE_GDTR, tl
        src = TWO_CPUS.replace('TRAMP', ', '.join(str(b) for b in tramp))
        return assemble_with_labels(src, bits=32, origin=LOAD, symbols={'GDTR': TRAMPOLINE_GDTR})
    _, labels = build(0)
    code, labels = build(labels['ap32'])
    return make_elf(32, [(LOAD, LOAD, code, 0x1000)], LOAD), labels, code


def guest(source, bits):
    code, labels = assemble_with_labels(source, bits=bits, origin=LOAD)
    return make_elf(bits, [(LOAD, LOAD, code, 0x1000)], LOAD), labels, code


class PacketLayerTest(unittest.TestCase):
    def test_encode_sums_the_bytes_modulo_256(self):
        self.assertEqual(encode('OK'), b'$OK#9a')
        self.assertEqual(encode(''), b'$#00')
        self.assertEqual(encode(b'\xff' * 2), b'$\xff\xff#fe')

    def test_encode_escapes_the_four_special_bytes(self):
        self.assertEqual(encode(b'a#b$c}d*'), b'$a}\x03b}\x04c}]d}\n#' + b'%02x' % (
            sum(b'a}\x03b}\x04c}]d}\n') & 0xFF))

    def test_packets_acks_and_interrupts_in_pieces(self):
        r = PacketReader()
        stream = b'+junk$qSupported:x#' + b'%02x' % (sum(b'qSupported:x') & 0xFF) + b'-\x03$g#67'
        events = []
        for i in range(len(stream)):               # one byte at a time
            events += r.feed(stream[i:i + 1])
        self.assertEqual(events, [('ack', b'+'), ('packet', b'qSupported:x'), ('nak', b'-'),
                                  ('interrupt', b'\x03'), ('packet', b'g')])

    def test_a_bad_checksum_is_reported_not_taken(self):
        r = PacketReader()
        self.assertEqual(r.feed(b'$g#68'), [('bad', b'$g#68')])
        self.assertEqual(r.feed(b'$g#zz'), [('bad', b'$g#zz')])
        self.assertEqual(r.feed(b'$g#+7'), [('bad', b'$g#+7')])     # int() would take '+7'
        self.assertEqual(r.feed(b'$g#67'), [('packet', b'g')])       # and the stream goes on

    def test_a_cut_packet_and_an_endless_one_are_dropped(self):
        r = PacketReader(limit=16)
        self.assertEqual(r.feed(b'$abc$g#67'), [('bad', b'$abc'), ('packet', b'g')])
        events = r.feed(b'$' + b'A' * 100 + b'#00$g#67')
        self.assertEqual([k for k, _ in events], ['bad', 'packet'])
        self.assertEqual(events[-1], ('packet', b'g'))

    def test_binary_data_round_trips_through_the_escapes(self):
        data = bytes(range(256))
        self.assertEqual(PacketReader().feed(encode(b'X0,100:' + data)), [('packet', b'X0,100:' + data)])

    def test_gdb_addresses(self):
        self.assertEqual(parse_address('1234'), ('127.0.0.1', 1234))
        self.assertEqual(parse_address('0.0.0.0:99'), ('0.0.0.0', 99))
        self.assertEqual(parse_address('[::1]:5'), ('::1', 5))
        self.assertEqual(parse_address(':7'), ('127.0.0.1', 7))
        for bad in ('', 'x', '65536', 'host:', '-1'):
            with self.assertRaises(ValueError, msg=bad):
                parse_address(bad)

    def test_the_target_description_follows_the_mode(self):
        for bits, arch, pc, first, xmms in ((32, 'i386', 'eip', 'eax', 8),
                                            (64, 'i386:x86-64', 'rip', 'rax', 16)):
            root = ET.fromstring(target_xml(bits))
            self.assertEqual(root.find('architecture').text, arch)
            regs = [(r.get('name'), int(r.get('bitsize'))) for r in root.iter('reg')]
            self.assertEqual(regs[0], (first, bits))
            self.assertEqual(regs[8 if bits == 32 else 16], (pc, bits))
            self.assertEqual(regs[[n for n, _ in regs].index('st0')], ('st0', 80))
            self.assertEqual(sum(n.startswith('xmm') for n, _ in regs), xmms)
            features = [f.get('name') for f in root.iter('feature')]
            self.assertEqual(features[:2], ['org.gnu.gdb.i386.core', 'org.gnu.gdb.i386.sse'])


class _Client:
    """A minimal gdb: sends packets, acknowledges and returns replies."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=30)
        self.reader = PacketReader()
        self.pending = []

    def _events(self):
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError('the stub closed the connection')
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    def raw(self, data):
        self.sock.sendall(data)

    def ack(self):
        return self._events()

    def reply(self):
        kind, body = self._events()
        while kind == 'ack':
            kind, body = self._events()
        assert kind == 'packet', (kind, body)
        self.sock.sendall(b'+')
        return body.decode('latin-1')

    def rpc(self, text, expect_reply=True):
        self.sock.sendall(encode(text))
        self.assertAck()
        return self.reply() if expect_reply else None

    def assertAck(self):
        kind, body = self._events()
        assert kind == 'ack', (kind, body)

    def close(self):
        self.sock.close()


@requires_kvm
class StubTest(unittest.TestCase):
    """The stub in this process, on a real guest, one packet at a time."""

    def start(self, source=PRINTER, bits=32, cpus=2):
        image, self.labels, self.code = guest(source, bits)
        return self.start_image(image, cpus)

    def start_image(self, image, cpus=2):
        self.console = MemoryBackend()
        self.machine = kvmlite.Machine(mem_size=64 << 20, cpus=cpus, console=self.console)
        self.addCleanup(self.machine.close)
        kvmlite.load_kernel(self.machine, image)
        self.server = gdbstub.GdbServer(self.machine, '127.0.0.1', 0, hold=True).start()
        self.addCleanup(self.server.close)
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.addCleanup(self._end)
        client = _Client(self.server.address)
        self.addCleanup(client.close)
        return client

    def _run(self):
        self.result = self.machine.run(timeout=60)

    def _end(self):
        self.machine.stop(EXIT_SIGNAL, 'the test is over')
        self.thread.join(10)

    def wait_end(self):
        self.thread.join(30)
        self.assertFalse(self.thread.is_alive(), 'the guest did not end')
        return self.result

    def pc(self, c, bits=32):
        return int.from_bytes(bytes.fromhex(c.rpc(f'p{8 if bits == 32 else 16:x}')), 'little')

    def test_answers_after_bad_and_malformed_packets(self):
        c = self.start()
        self.assertEqual(c.rpc('?'), 'T05thread:1;')
        c.raw(b'$g#00')
        self.assertEqual(c.ack(), ('nak', b'-'))
        for bad, want in (('mzz,4', 'E16'), ('Z0,nothex,1', 'E16'), ('p1000', 'E16'),
                          ('Hg99', 'E16'), ('Mx', 'E16'), ('M100000,2:00', 'E16'),
                          ('vCont;q', 'E16'), ('qXfer:features:read:other.xml:0,10', 'E00'),
                          ('Qnothing', ''), ('!', ''), ('Z5,100000,4', ''),
                          ('Z2,100000,0', 'E0e'), ('Z3,f0000000,4', 'E0e')):
            self.assertEqual(c.rpc(bad), want, bad)
        self.assertEqual(self.pc(c), LOAD)                 # and the vCPU is still where it was
        # memory that does not translate to RAM (the local APIC page; past RAM) is an error
        self.assertEqual(c.rpc('mfee00000,4'), 'E0e')
        self.assertEqual(c.rpc('mf0000000,4'), 'E0e')
        self.assertEqual(c.rpc(f'm{LOAD:x},4'), self.code[:4].hex())
        c.rpc('k', expect_reply=False)
        self.assertEqual(self.wait_end().status, EXIT_SIGNAL)

    def test_a_second_client_is_refused_and_the_first_goes_on(self):
        c = self.start()
        self.assertEqual(c.rpc('qfThreadInfo'), 'm1,2')
        other = socket.create_connection(self.server.address, timeout=10)
        other.sendall(encode('?'))
        try:
            self.assertEqual(other.recv(100), b'')          # closed without an answer
        except ConnectionResetError:
            pass                                            # (or reset: it had sent data)
        other.close()
        self.assertEqual(c.rpc('qsThreadInfo'), 'l')
        self.assertEqual(c.rpc('vCont;c'), 'W55')
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'xm=?\n')

    def test_a_dropped_connection_lets_the_guest_run_on(self):
        c = self.start()
        self.assertEqual(c.rpc(f'Z0,{self.labels["bp1"]:x},1'), 'OK')
        c.close()                                           # the breakpoint goes with it
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'xm=?\n')

    def test_resuming_on_an_armed_breakpoint_steps_past_it(self):
        c = self.start()
        bp1 = self.labels['bp1']
        self.assertEqual(c.rpc(f'Z0,{bp1:x},1'), 'OK')
        self.assertEqual(c.rpc('c'), 'T05thread:1;hwbreak:;')
        self.assertEqual(self.pc(c), bp1)
        self.assertEqual(c.rpc('s'), 'T05thread:1;')       # the step, despite DR0 on it
        self.assertEqual(self.pc(c), self.labels['after'])
        self.assertEqual(c.rpc('G' + 'zz'), 'E16')
        # registers: AL = 'R'; memory: the '?' of the message; then on, breakpoint still set
        regs = bytearray(bytes.fromhex(c.rpc('g')))
        regs[0] = ord('R')
        self.assertEqual(c.rpc('G' + regs.hex()), 'OK')
        self.assertEqual(c.rpc(f'M{self.labels["msg"] + 2:x},1:5a'), 'OK')
        self.assertEqual(c.rpc('c'), 'W55')
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'Rm=Z\n')

    def test_a_planted_int3_stops_and_is_hidden(self):
        c = self.start()
        decoys = [LOAD + 1, LOAD + 2, LOAD + 3, LOAD + 4]   # inside the first instruction: never hit
        for a in decoys + [self.labels['after']]:
            self.assertEqual(c.rpc(f'Z0,{a:x},1'), 'OK')
        after = self.labels['after']
        self.assertEqual(c.rpc(f'm{after:x},1'), self.code[after - LOAD:after - LOAD + 1].hex())
        self.assertEqual(self.machine.vm.read(after, 1), b'\xcc')     # planted, shown as before
        self.assertEqual(c.rpc('c'), 'T05thread:1;swbreak:;')
        self.assertEqual(self.pc(c), after)
        self.assertEqual(c.rpc('c'), 'W55')                 # it steps over its own int3
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'xm=?\n')

    def test_ctrl_c_stops_a_spinning_guest_and_k_kills_it(self):
        c = self.start(SPINNER, bits=64, cpus=1)
        self.assertEqual(c.rpc('qXfer:features:read:target.xml:0,3fff')[:1], 'l')
        c.raw(encode('vCont;c'))
        c.assertAck()
        time.sleep(0.3)
        c.raw(b'\x03')
        self.assertEqual(c.reply(), 'T02thread:1;')
        self.assertIn(self.pc(c, 64), (self.labels['spin'], self.labels['spin'] + 2))
        first = int.from_bytes(bytes.fromhex(c.rpc('p2')), 'little')     # rcx counts
        self.assertGreater(first, 0)
        self.assertEqual(c.rpc('vCont;s:1'), 'T05thread:1;')
        c.rpc('k', expect_reply=False)
        self.assertEqual(self.wait_end().status, EXIT_SIGNAL)

    def _both_at_hit(self):
        """TWO_CPUS with a breakpoint at hit, where the kicks that stop the
        vCPU not reported first reach it only once it has met the
        breakpoint itself: what a host running the guest at native speed
        sees (here, where kernel mode is emulated, the kick usually comes
        first). Returns the client, the first stop's vCPU and the other's."""
        image, self.labels, self.code = two_cpu_guest()
        self.console = MemoryBackend()
        self.machine = kvmlite.Machine(mem_size=64 << 20, cpus=2, console=self.console)
        self.addCleanup(self.machine.close)
        kvmlite.load_kernel(self.machine, image)
        self.server = gdbstub.GdbServer(self.machine, '127.0.0.1', 0, hold=True).start()
        self.addCleanup(self.server.close)
        dbg, hit, deadline = self.server.debugger, self.labels['hit'], time.monotonic() + 20
        for v in self.machine.vm.vcpus:
            def late_kick(why='kick', v=v, kick=v.kick):
                first = dbg.event[0] if dbg.event else None
                if first not in (None, v.index) and v.index not in dbg.pending \
                        and time.monotonic() < deadline:
                    return                      # not yet: it has not met the breakpoint
                kick(why)
            v.kick = late_kick
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.addCleanup(self._end)
        c = _Client(self.server.address)
        self.addCleanup(c.close)
        self.assertEqual(c.rpc(f'Z0,{hit:x},1'), 'OK')
        first = re.fullmatch(r'T05thread:(\d);hwbreak:;', c.rpc('vCont;c'))
        self.assertTrue(first)
        a = int(first.group(1))
        return c, a, 3 - a

    def test_a_second_breakpoint_stop_is_told_at_the_next_continue(self):
        c, a, b = self._both_at_hit()
        hit, passed = self.labels['hit'], self.labels['passed']
        self.assertEqual(self.server.debugger.pending, {b - 1: ('hwbreak', hit)})
        # gdb steps the reported vCPU over the breakpoint alone, then continues all:
        # the pending stop is the reply, and no instruction ran for it
        self.assertEqual(c.rpc(f'vCont;s:{a}'), f'T05thread:{a};')
        self.assertEqual(c.rpc(f'Hg{a}'), 'OK')
        after_step = self.pc(c)
        self.assertNotEqual(after_step, hit)
        self.assertEqual(c.rpc('vCont;c'), f'T05thread:{b};hwbreak:;')
        self.assertEqual(self.pc(c), hit)                      # the stop names b
        self.assertEqual(c.rpc(f'Hg{a}'), 'OK')
        self.assertEqual(self.pc(c), after_step)               # and a did not run
        self.assertEqual(c.rpc(f'm{passed:x},4'), '00000000')  # a stepped the nop alone
        self.assertEqual(c.rpc('vCont;c'), 'W55')
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'2\n')

    def test_a_pending_stop_goes_with_its_breakpoint(self):
        c, a, b = self._both_at_hit()
        self.assertEqual(c.rpc(f'z0,{self.labels["hit"]:x},1'), 'OK')
        self.assertEqual(c.rpc('vCont;c'), 'W55')             # b's stop is gone with it
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'2\n')

    def test_write_and_read_watchpoints_stop_after_the_access(self):
        image, self.labels, self.code = watched_guest()
        c = self.start_image(image)
        counter, m = self.labels['counter'], self.machine
        slots = [(s.gpa, s.size) for s in m.vm.slots]
        self.assertEqual(c.rpc(f'Z2,{counter:x},4'), 'OK')
        self.assertEqual(c.rpc('c'), f'T05thread:1;watch:{counter:x};')
        self.assertEqual(self.pc(c), self.labels['wrote'])          # the write is done
        self.assertEqual(c.rpc(f'm{counter:x},4'), '05000000')
        self.assertEqual(c.rpc(f'z2,{counter:x},4'), 'OK')
        self.assertEqual(c.rpc(f'Z3,{counter:x},4'), 'OK')
        self.assertEqual(c.rpc('c'), f'T05thread:1;rwatch:{counter:x};')
        self.assertEqual(self.pc(c), self.labels['read_done'])
        self.assertEqual(c.rpc('p0'), '05000000')                   # eax: the value read
        self.assertEqual(c.rpc(f'z3,{counter:x},4'), 'OK')
        self.assertEqual([s.parts for s in m.vm.slots], [None] * len(m.vm.slots))
        self.assertIsNone(m.vm.mmio.find(counter))
        self.assertEqual(c.rpc('c'), 'W55')
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'51\n')
        self.assertEqual([(s.gpa, s.size) for s in m.vm.slots], slots)

    def test_an_unwatched_dword_of_a_watched_page_runs_through(self):
        image, self.labels, self.code = watched_guest()
        c = self.start_image(image)
        other = self.labels['other']
        self.assertEqual(c.rpc(f'Z4,{other + 8:x},4'), 'OK')          # the page, never that dword
        self.assertEqual(c.rpc(f'Z2,{LOAD:x},4'), 'OK')               # the code page: read-only
        self.assertEqual(c.rpc('c'), 'W55')
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'51\n')

    def test_gdb_going_away_gives_a_watched_page_back(self):
        image, self.labels, self.code = watched_guest()
        c = self.start_image(image)
        self.assertEqual(c.rpc(f'Z3,{self.labels["counter"]:x},4'), 'OK')
        self.assertIsNotNone(self.machine.vm.slots[0].parts)
        c.close()
        self.assertEqual(self.wait_end().status, DEBUG_EXIT_STATUS)
        self.assertEqual(bytes(self.console.output), b'51\n')
        self.assertEqual([s.parts for s in self.machine.vm.slots], [None] * len(self.machine.vm.slots))
        self.assertIsNone(self.machine.vm.mmio.find(self.labels['counter']))

    def test_a_snapshot_pauses_with_gdb_attached_and_gdb_keeps_its_stop(self):
        # the debugger's stop and the snapshot's pause are one mechanism: a
        # pause inside a debugger stop leaves the vCPUs held, one while the
        # guest runs lets it run on
        c = self.start(SPINNER, bits=64, cpus=2)
        self.assertEqual(c.rpc('?'), 'T05thread:1;')
        held = io.BytesIO()
        self.machine.snapshot(held)
        self.assertEqual(self.pc(c, 64), LOAD)              # not one instruction ran
        self.assertEqual(c.rpc('p2'), '00' * 8)
        c.raw(encode('vCont;c'))
        c.assertAck()
        time.sleep(0.2)
        running = io.BytesIO()
        self.machine.snapshot(running)
        time.sleep(0.2)
        c.raw(b'\x03')
        self.assertEqual(c.reply(), 'T02thread:1;')
        self.assertGreater(int.from_bytes(bytes.fromhex(c.rpc('p2')), 'little'), 0)
        self.assertGreater(len(held.getvalue()), 0)
        self.assertGreater(len(running.getvalue()), 0)
        c.rpc('k', expect_reply=False)
        self.assertEqual(self.wait_end().status, EXIT_SIGNAL)


@requires_kvm
class GuestInt3Test(unittest.TestCase):
    """A guest's own int3 reaches its own #BP handler, with or without gdb."""

    def run_guest(self, stub):
        image, labels, _ = guest(OWN_INT3, 32)
        console = MemoryBackend()
        with kvmlite.Machine(mem_size=16 << 20, console=console) as m:
            kvmlite.load_kernel(m, image)
            if not stub:
                return m.run(timeout=30), bytes(console.output)
            server = gdbstub.GdbServer(m, '127.0.0.1', 0, hold=True).start()
            self.addCleanup(server.close)
            result = []
            t = threading.Thread(target=lambda: result.append(m.run(timeout=30)), daemon=True)
            t.start()
            c = _Client(server.address)
            self.addCleanup(c.close)
            # the four debug registers inside the first instruction, then int3s the stub plants
            for a in [LOAD + 1, LOAD + 2, LOAD + 3, LOAD + 4, labels['back'], labels['last']]:
                self.assertEqual(c.rpc(f'Z0,{a:x},1'), 'OK')
            self.assertEqual(m.vm.read(labels['back'], 1), b'\xcc')
            self.assertEqual(c.rpc('c'), 'T05thread:1;swbreak:;')
            self.assertEqual(bytes(console.output), b'aH')
            self.assertEqual(c.rpc('c'), 'T05thread:1;swbreak:;')
            self.assertEqual(bytes(console.output), b'aHbH')
            self.assertEqual(c.rpc('c'), 'W55')
            t.join(30)
            return result[0], bytes(console.output)

    def test_without_gdb(self):
        result, out = self.run_guest(stub=False)
        self.assertEqual(out, b'aHbHc\n', result)
        self.assertEqual(result.status, DEBUG_EXIT_STATUS, result)

    def test_with_the_stub_and_its_own_breakpoints_elsewhere(self):
        result, out = self.run_guest(stub=True)
        self.assertEqual(out, b'aHbHc\n', result)
        self.assertEqual(result.status, DEBUG_EXIT_STATUS, result)


@requires_kvm
class TrapPagesTest(unittest.TestCase):
    """Vm.trap_pages: pages out of RAM and back, the dirty log kept whole."""

    def test_writes_and_accesses_exit_and_the_dirty_log_goes_on(self):
        code, _ = assemble_with_labels('''
            mov dword [0x3000], 1
            mov dword [0x5000], 2
            mov eax, [0x5000]
            mov ebx, [0x7000]
            mov dword [0x9000], 3
            hlt
            mov dword [0x5000], 4
            hlt
        ''', bits=32, origin=0x1000)
        with kvmlite.Kvm() as k, k.create_vm() as vm:
            slot = vm.add_memory(0, 1 << 20, dirty_log=True)
            v = vm.create_vcpu()
            vm.write(0x1000, code)
            vm.write(0x7000, b'\x77' * 4)
            kvmlite.setup_protected_mode(v, vm, 0x1000)
            vm.get_dirty_log(slot)
            vm.trap_pages({0x5000: 'write', 0x7000: 'access'})
            self.assertEqual([p[1:3] for p in slot.parts],
                             [(0, 0x5000), (0x5000, 0x1000), (0x6000, 0x1000), (0x8000, 0xF8000)])
            self.assertEqual(vm.slots, [slot])
            seen = []
            while True:
                e = v.run(timeout=10)
                if isinstance(e, kvmlite.MmioWrite):
                    seen.append(('w', e.addr))
                    vm.write(e.addr, e.data)
                    vm.mark_written(e.addr)
                elif isinstance(e, kvmlite.MmioRead):
                    seen.append(('r', e.addr))
                    e.set(vm.read_int(e.addr, len(e.buf)))
                else:
                    break
            self.assertIsInstance(e, kvmlite.Hlt)
            self.assertEqual(seen, [('w', 0x5000), ('r', 0x7000)])   # the read of 0x5000 is RAM
            self.assertEqual(v.get_regs().rbx, 0x77777777)
            self.assertEqual(vm.get_dirty_log(slot)[-3:], [0x3000, 0x5000, 0x9000])
            vm.trap_pages({})
            self.assertIsNone(slot.parts)
            self.assertIsInstance(v.run(timeout=10), kvmlite.Hlt)     # the page is RAM again
            self.assertEqual(vm.read_int(0x5000, 4), 4)
            self.assertIn(0x5000, vm.get_dirty_log(slot))
            with self.assertRaises(kvmlite.GuestMemoryError):
                vm.trap_pages({0x200000: 'write'})


@requires_kvm
class CliTest(unittest.TestCase):
    """The command line's refusals: one line, status 2 (main() in this process)."""

    def run_cli(self, *args):
        with contextlib.redirect_stderr(io.StringIO()) as err:
            status = cli.main(['run', '--console', 'none', *args])
        return status, err.getvalue()

    def test_bad_addresses_and_a_lone_hold_are_refused(self):
        for args, want in ((['--gdb', 'x'], "gdb address 'x'"), (['--gdb', '1:99999'], '99999'),
                           (['-S'], '-S holds every vCPU until gdb continues it')):
            status, err = self.run_cli(*args)
            self.assertEqual(status, 2, err)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith('kvmlite: ') and want in err, err)

    def test_a_port_in_use_is_refused(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        try:
            taken.bind(('127.0.0.1', 1234))           # -s is --gdb 1234
            taken.listen()
            ports = [('-s',), ('--gdb', '1234')]
        except OSError:                                 # someone else has 1234: use another
            taken.bind(('127.0.0.1', 0))
            taken.listen()
            ports = [('--gdb', str(taken.getsockname()[1]))]
        for args in ports:
            status, err = self.run_cli(*args)
            self.assertEqual(status, 2, err)
            self.assertRegex(err, r'^kvmlite: --gdb 127\.0\.0\.1:\d+: cannot listen there: .*give another port')


def _gdb():
    return shutil.which('gdb')


@requires_kvm
@unittest.skipUnless(_gdb(), 'gdb is not installed (the Debian package gdb): the real-gdb tests need it')
class RealGdbTest(unittest.TestCase):
    """gdb -batch against ``python3 kvmlite.py run --gdb 0 -S -c 2 -k GUEST``."""

    def session(self, image, commands):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, 'guest.elf')
        with open(path, 'wb') as f:
            f.write(image)
        vmm = subprocess.Popen([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '--gdb', '0',
                                '-S', '-c', '2', '-k', path], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: vmm.poll() is None and vmm.kill())
        line = vmm.stderr.readline().decode()
        m = re.search(r'listening on 127\.0\.0\.1:(\d+)', line)
        self.assertTrue(m, f'no listening line from kvmlite: {line!r}')
        argv = [_gdb(), '-nx', '-batch', '-ex', 'set confirm off', '-ex',
                f'target remote 127.0.0.1:{m.group(1)}']
        for cmd in commands:
            argv += ['-ex', cmd]
        g = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        out, err = vmm.communicate(timeout=60)
        return g.stdout + g.stderr, out, err.decode(), vmm.returncode

    def values(self, text):
        """The $N = value lines of gdb's output, in order."""
        return re.findall(r'^\$\d+ = (.*)$', text, re.M)

    def test_gdb_drives_a_32_bit_guest(self):
        image, labels, code = guest(PRINTER, 32)
        bp1, after, msg = labels['bp1'], labels['after'], labels['msg']
        text, out, err, status = self.session(image, [
            'p/x $pc', 'x/4xb 0x100000', 'info threads', f'break *{bp1:#x}', 'continue', 'p/x $pc',
            'stepi', 'p/x $pc', 'set $eax = 0x52', f'set {{char}}{msg + 2:#x} = 0x5a', 'delete',
            'continue'])
        self.assertEqual(self.values(text)[:3], [hex(LOAD), hex(bp1), hex(after)], text)
        self.assertIn('0x100000:\t' + '\t'.join(f'0x{b:02x}' for b in code[:4]), text)
        self.assertEqual(len(re.findall(r'^\*?\s+\d+\s+Thread \d+', text, re.M)), 2, text)
        self.assertIn('hit Breakpoint 1', text)
        self.assertIn('exited with code 0125', text)        # octal: 0x2A << 1 | 1
        self.assertEqual(out, b'Rm=Z\n', text + err)
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)

    def test_gdb_drives_a_64_bit_guest_past_the_four_debug_registers(self):
        image, labels, code = guest(PRINTER, 64)
        # four breakpoints inside the first instruction (never reached) take DR0-DR3:
        # the one at bp1 is a planted int3 (on this host: reported through the internal error)
        decoys = [f'break *{LOAD + i:#x}' for i in range(1, 5)]
        text, out, err, status = self.session(image, decoys + [
            f'break *{labels["bp1"]:#x}', 'continue', 'p/x $pc', 'info registers rip',
            'stepi', 'p/x $pc', 'p $eflags', 'delete', 'continue'])
        self.assertIn('0x000000000010000a in ?? ()', text)     # gdb took the 64-bit description
        self.assertEqual(self.values(text)[:2], [hex(labels['bp1']), hex(labels['after'])], text)
        self.assertIn('hit Breakpoint 5', text)
        self.assertRegex(text, r'rip\s+0x10000a')
        self.assertEqual(out, b'xm=?\n', text + err)
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)

    def test_the_guests_own_int3_goes_to_its_handler_under_gdb(self):
        image, labels, code = guest(OWN_INT3, 32)
        decoys = [f'hbreak *{LOAD + i:#x}' for i in range(1, 5)]
        text, out, err, status = self.session(image, decoys + [
            f'break *{labels["back"]:#x}', f'break *{labels["last"]:#x}', 'continue', 'p/x $pc',
            'continue', 'p/x $pc', 'continue'])
        self.assertEqual(self.values(text)[:2], [hex(labels['back']), hex(labels['last'])], text)
        self.assertIn('hit Breakpoint 5', text)
        self.assertIn('hit Breakpoint 6', text)
        self.assertNotIn('SIGTRAP', text)               # gdb never saw the guest's own int3s
        self.assertEqual(out, b'aHbHc\n', text + err)
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)

    def test_watch_and_rwatch(self):
        image, labels, code = watched_guest()
        counter = labels['counter']
        text, out, err, status = self.session(image, [
            f'watch *(int*){counter:#x}', 'continue', 'p/x $pc', 'delete',
            f'rwatch *(int*){counter:#x}', 'continue', 'p/x $pc', 'delete', 'continue'])
        self.assertIn(f'Hardware watchpoint 1: *(int*){counter:#x}\n\nOld value = 0\nNew value = 5', text)
        self.assertIn(f'Hardware read watchpoint 2: *(int*){counter:#x}\n\nValue = 5', text)
        self.assertEqual(self.values(text)[:2], [hex(labels['wrote']), hex(labels['read_done'])], text)
        self.assertEqual(out, b'51\n', text + err)
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)

    def test_two_vcpus_meeting_one_breakpoint_are_both_reported(self):
        # both vCPUs reach hit within a few instructions of each other: the one
        # that is not reported first stays pending and is the next continue's
        # stop, without the guest running (as gdbserver does)
        image, labels, code = two_cpu_guest()
        bp = labels['hit']
        text, out, err, status = self.session(image, [
            f'break *{bp:#x}', 'continue', 'p/x $pc', 'p $_thread', 'continue', 'p/x $pc',
            'p $_thread', 'delete', 'continue'])
        hits = re.findall(r'^Thread (\d+) hit Breakpoint 1, ', text, re.M)
        self.assertEqual(sorted(hits), ['1', '2'], text + err)
        values = self.values(text)
        self.assertEqual(values[0::2][:2], [hex(bp), hex(bp)], text)
        self.assertEqual(sorted(values[1::2][:2]), ['1', '2'], text)
        self.assertEqual(out, b'2\n', text + err)
        self.assertEqual(status, DEBUG_EXIT_STATUS, err)


if __name__ == '__main__':
    unittest.main()
