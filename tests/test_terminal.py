"""The terminal: ``python3 kvmlite.py run`` with a pseudo-terminal as its
stdin and stdout, as a user's shell gives it.

The console's escape keys (Ctrl-A x quits even with typed input the guest
never reads, Ctrl-A h lists the escapes on the terminal and not to the guest,
Ctrl-A Ctrl-A sends one Ctrl-A), and the terminal's modes after every way a
run ends: each signal that ends it (status 128 + the signal), a guest crash,
and an internal error. The modes are compared with termios.tcgetattr before
and after, on a terminal set to unusual modes first, so "restored" means
"exactly as they were", not "some default". Each run is a real subprocess on
a real pty (os.openpty); no assertion depends on how long anything takes
(the timeouts only guard against a hang).
"""

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
import unittest

from devices.console import ESCAPE_HELP
from tests.guest import requires_kvm
from tools.asm import assemble
from tools.demo import elf64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# A run started from a terminal's shell has these signals at their defaults;
# a test process started as a background job (``python3 -m unittest &``)
# ignores SIGINT and SIGQUIT, and its children would inherit that (kvmlite
# rightly leaves an ignored signal ignored). Give the children a terminal's.
_INHERITED = {}


def setUpModule():
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        if signal.getsignal(signum) == signal.SIG_IGN:
            _INHERITED[signum] = signal.signal(signum, signal.SIG_DFL)


def tearDownModule():
    for signum, previous in _INHERITED.items():
        signal.signal(signum, previous)
    _INHERITED.clear()
HANG_S = 60             # guards against a hang only
ELF_ADDR = 0x100000

# flat real-mode guests (loaded at 0x1000:0): each first writes 'R', so a
# test knows the guest runs and the terminal is raw
SPIN = assemble('''
    bits 16
    mov dx, 0x3f8
    mov al, 'R'
    out dx, al
spin:
    jmp spin                    ; never reads its UART
''', bits=16)

ECHO = assemble('''
    bits 16
    mov dx, 0x3f8
    mov al, 'R'
    out dx, al
rx:
    mov dx, 0x3fd               ; LSR
    in al, dx
    test al, 1                  ; DR: a byte received
    jz rx
    mov dx, 0x3f8
    in al, dx
    mov ah, al
tx:
    mov dx, 0x3fd
    in al, dx
    test al, 0x20               ; THRE
    jz tx
    mov al, ah
    mov dx, 0x3f8
    out dx, al                  ; every byte received goes back as it came
    jmp rx
''', bits=16)

# long mode (an ELF64): 'R', then #UD with an empty IDT: a triple fault
CRASH = elf64(assemble('''
    bits 64
    mov dx, 0x3f8
    mov al, 'R'
    out dx, al
    lidt [empty]
    ud2
empty:
    dw 0
    dq 0
''', bits=64, origin=ELF_ADDR), ELF_ADDR, ELF_ADDR)

# the command line with one bug put in: the board's handler for a kick out of
# KVM_RUN raises once the guest has input waiting (vCPU 0, the main thread)
BUGGY_MAIN = f'''
import sys
sys.path.insert(0, {ROOT!r})
from tools import pc
original = pc.Machine._on_interrupted
def buggy(self, vcpu, exit):
    if self._pending_input or self.serials[0].rx:
        raise RuntimeError('an injected bug')
    return original(self, vcpu, exit)
pc.Machine._on_interrupted = buggy
import kvmlite
sys.exit(kvmlite.main(sys.argv[1:]))
'''


def unusual_modes(fd):
    """Set the terminal at ``fd`` to cooked modes no default has (an erase
    key of ^H, no ECHOCTL, 9600 baud, VMIN 3), and return them."""
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHOCTL
    attrs[4] = attrs[5] = termios.B9600
    attrs[6][termios.VERASE] = b'\x08'
    attrs[6][termios.VMIN] = 3
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    return termios.tcgetattr(fd)


class Session:
    """One ``kvmlite run`` whose stdin and stdout are the slave of a pty."""

    def __init__(self, test, kernel_file, *args, argv=None, stderr_tty=False, **popen):
        self.test = test
        self.master, self.slave = os.openpty()
        test.addCleanup(os.close, self.master)
        test.addCleanup(os.close, self.slave)
        self.before = unusual_modes(self.slave)
        argv = argv or [sys.executable, os.path.join(ROOT, 'kvmlite.py')]
        self.proc = subprocess.Popen(argv + ['run', '-k', kernel_file, *args],
                                     stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave if stderr_tty else subprocess.PIPE,
                                     cwd=ROOT, **popen)
        test.addCleanup(self._reap)
        self.seen = b''

    def _reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def _read(self, wait):
        if select.select([self.master], [], [], wait)[0]:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:
                pass

    def read_until(self, marker):
        """Read the terminal until ``marker`` has appeared in it."""
        deadline = time.monotonic() + HANG_S
        while marker not in self.seen:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                self.test.fail(f'{marker!r} never came: {self.seen!r}, status '
                               f'{self.proc.wait()}, stderr '
                               f'{self.proc.stderr.read() if self.proc.stderr else "(the terminal)"!r}')
            self._read(0.1)

    def stopped(self):
        """True while the process is stopped (job control): /proc's state T."""
        with open(f'/proc/{self.proc.pid}/stat') as f:
            return f.read().rpartition(')')[2].split()[0] == 'T'

    def wait_for(self, what, predicate):
        deadline = time.monotonic() + HANG_S
        while not predicate():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.test.fail(f'never {what}: {self.seen!r}')
            self._read(0.02)

    def is_raw(self):
        lflag = termios.tcgetattr(self.slave)[3]
        return not lflag & (termios.ICANON | termios.ECHO | termios.ISIG)

    def type(self, data):
        os.write(self.master, data)

    def wait_taken(self):
        """Wait until kvmlite has read everything typed (the tty's input
        queue, FIONREAD on the slave, is empty)."""
        deadline = time.monotonic() + HANG_S
        while struct.unpack('i', fcntl.ioctl(self.slave, termios.FIONREAD, b'\0' * 4))[0]:
            if time.monotonic() > deadline:
                self.test.fail('kvmlite never read what was typed')
            self._read(0.01)

    def finish(self):
        """Wait for the run to end, reading its output meanwhile; returns
        (status, stderr) after checking the terminal's modes are as before."""
        deadline = time.monotonic() + HANG_S
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                self.test.fail(f'the run did not end: {self.seen!r}')
            self._read(0.05)
        self._read(0)
        err = self.proc.stderr.read().decode() if self.proc.stderr is not None else ''
        self.test.assertEqual(termios.tcgetattr(self.slave), self.before,
                              f'the terminal was not restored ({err!r})')
        return self.proc.returncode, err


@requires_kvm
class TerminalTest(unittest.TestCase):

    def kernel(self, image):
        fd, path = tempfile.mkstemp(suffix='.bin')
        os.write(fd, image)
        os.close(fd)
        self.addCleanup(os.unlink, path)
        return path

    def start(self, image, *args, **kw):
        s = Session(self, self.kernel(image), *args, **kw)
        s.read_until(b'R')
        self.assertTrue(s.is_raw(), 'the console did not go raw')
        return s

    def test_ctrl_a_x_quits_with_typed_input_the_guest_never_reads(self):
        s = self.start(SPIN, '--format', 'flat')
        # more than the UART's FIFO and more than kvmlite keeps for it: all
        # read (the tty's queue empties) before the escape comes
        s.type(b'typed ahead, never read. ' * 200)
        s.wait_taken()
        s.type(b'\x01x')
        self.assertEqual(s.finish(), (130, 'kvmlite: quit from the console (Ctrl-A x)\n'))

    def test_the_escapes_reach_the_terminal_and_the_guest_as_documented(self):
        s = self.start(ECHO, '--format', 'flat')
        s.type(b'a')
        s.read_until(b'Ra')
        # Ctrl-A h: the list on the terminal, on a line of its own; the guest sees nothing
        s.type(b'\x01h')
        s.read_until(ESCAPE_HELP.encode())
        s.type(b'b')
        s.read_until(ESCAPE_HELP.encode() + b'b')
        self.assertEqual(s.seen, b'Ra\r\n' + ESCAPE_HELP.encode() + b'b')
        # Ctrl-A Ctrl-A: one Ctrl-A to the guest; Ctrl-A and another key: neither
        s.type(b'\x01\x011\x01q2')
        s.read_until(b'b\x0112')
        self.assertEqual(s.seen, b'Ra\r\n' + ESCAPE_HELP.encode() + b'b\x0112')
        s.type(b'\x01x')
        self.assertEqual(s.finish(), (130, 'kvmlite: quit from the console (Ctrl-A x)\n'))

    def test_ctrl_a_s_writes_the_snapshot_and_the_run_goes_on(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        snap = os.path.join(tmp.name, 'run.snap')
        s = self.start(ECHO, '--format', 'flat', '--snapshot', snap)
        s.type(b'\x01s')
        for _ in range(600):                    # the timer thread writes it (rename: all or nothing)
            if os.path.exists(snap):
                break
            time.sleep(0.05)
        with open(snap, 'rb') as f:
            self.assertEqual(f.read(8), b'KVMLSNAP')
        s.type(b'a')                            # the guest still echoes
        s.read_until(b'Ra')
        s.type(b'\x01x')
        self.assertEqual(s.finish(), (130, 'kvmlite: quit from the console (Ctrl-A x)\n'))

    def test_ctrl_a_s_without_a_snapshot_file_says_so_on_the_terminal(self):
        s = self.start(ECHO, '--format', 'flat')
        s.type(b'\x01sb')
        s.read_until(b'b')
        self.assertEqual(s.seen, b'R\r\nkvmlite: no snapshot file: start the run with --snapshot FILE\r\nb')
        s.type(b'\x01x')
        self.assertEqual(s.finish(), (130, 'kvmlite: quit from the console (Ctrl-A x)\n'))

    def test_every_signal_that_ends_the_run_restores_the_terminal_and_gives_128_plus_it(self):
        signals = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1,
                   signal.SIGALRM)
        kernel = self.kernel(SPIN)
        # all runs at once: one start-up's wait, not six
        sessions = [Session(self, kernel, '--format', 'flat') for _ in signals]
        for signum, s in zip(signals, sessions):
            s.read_until(b'R')
            self.assertTrue(s.is_raw(), 'the console did not go raw')
            s.proc.send_signal(signum)
        for signum, s in zip(signals, sessions):
            name = signal.Signals(signum).name
            with self.subTest(signal=name):
                self.assertEqual(s.finish(), (128 + signum, f'kvmlite: stopped by {name}\n'))

    def test_a_signal_ignored_before_the_run_stays_ignored(self):
        # as under nohup: SIGHUP ignored when kvmlite starts does not end the run
        nohup = [sys.executable, '-c', f'import signal, sys; sys.path.insert(0, {ROOT!r}); '
                 f'signal.signal(signal.SIGHUP, signal.SIG_IGN); import kvmlite; '
                 f'sys.exit(kvmlite.main(sys.argv[1:]))']
        s = self.start(ECHO, '--format', 'flat', argv=nohup)
        s.proc.send_signal(signal.SIGHUP)
        s.type(b'z')
        s.read_until(b'Rz')             # the guest still runs, and echoes
        s.proc.send_signal(signal.SIGTERM)
        self.assertEqual(s.finish(), (128 + signal.SIGTERM, 'kvmlite: stopped by SIGTERM\n'))

    def test_a_stop_gives_the_terminal_back_and_continuing_makes_it_raw_again(self):
        # its own process group, with a parent in the session: a stop the
        # kernel carries out (an orphaned group's SIGTSTP is discarded)
        s = self.start(ECHO, '--format', 'flat', process_group=0)
        s.type(b'\x1a')                 # raw: Ctrl-Z is the guest's key, echoed back
        s.read_until(b'R\x1a')
        for how in ('kill -TSTP', 'Ctrl-A z'):
            with self.subTest(stop=how):
                if how == 'kill -TSTP':
                    s.proc.send_signal(signal.SIGTSTP)
                else:
                    s.type(b'\x01z')
                s.wait_for('stopped', s.stopped)
                # the shell's modes while stopped, exactly as they were
                self.assertEqual(termios.tcgetattr(s.slave), s.before)
                s.proc.send_signal(signal.SIGCONT)          # fg
                s.wait_for('raw again', lambda: s.is_raw() and not s.stopped())
        s.type(b'a')
        s.read_until(b'R\x1aa')          # the guest ran on, and the escape reached no guest
        self.assertEqual(s.seen, b'R\x1aa')
        s.type(b'\x01x')
        self.assertEqual(s.finish(), (130, 'kvmlite: quit from the console (Ctrl-A x)\n'))

    def test_kvmlites_messages_during_the_run_end_lines_for_a_raw_terminal(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        snap = os.path.join(tmp.name, 'run.snap')
        # stderr on the terminal too: the trace and the snapshot's note come while it is raw
        s = self.start(ECHO, '--format', 'flat', '--trace', '-', '--trace-filter', 'io:0x3f8',
                       '--snapshot', snap, '-v', stderr_tty=True)
        s.type(b'\x01s')
        s.read_until(b'kvmlite: snapshot written to ')
        s.type(b'a')
        s.read_until(b'0x3f8 1 0x61 COM1 16550A')
        s.read_until(b'0x3f8 1 0x61 COM1 16550A\r\n')
        self.assertTrue(s.is_raw())
        lines = s.seen.split(b'\r\n')
        self.assertNotIn(b'\n', b''.join(lines), s.seen)         # no line ends without its CR
        self.assertTrue(any(line.startswith(b'kvmlite: snapshot written to ') for line in lines),
                        s.seen)
        s.type(b'\x01x')
        s.finish()

    def test_a_guest_crash_restores_the_terminal(self):
        s = Session(self, self.kernel(CRASH))
        s.read_until(b'R')
        status, err = s.finish()
        self.assertEqual(status, 4, err)
        self.assertRegex(err, r'\Akvmlite: triple fault on vCPU 0 at RIP 0x[0-9a-f]+\n\Z')

    def test_an_internal_error_restores_the_terminal(self):
        s = self.start(SPIN, '--format', 'flat', argv=[sys.executable, '-c', BUGGY_MAIN])
        s.type(b'boom')
        status, err = s.finish()
        # a bug in a vCPU thread ends the run in one line that says where
        self.assertEqual(status, 8, err)
        self.assertRegex(err, r'\Akvmlite: vCPU 0 failed: RuntimeError: an injected bug at '
                              r'<string>:\d+ \(a kvmlite bug: please report it\)\n\Z')


if __name__ == '__main__':
    unittest.main()
