"""Serial port back ends: where guest output goes and input comes from.

Every back end is an output sink for :class:`devices.serial.Serial`
(``write(data)``, ``room()``) and an input source: ``fileno()`` is the
descriptor to poll for input (None when there is none; it may change, so ask
each time) and ``read_input()`` returns what is waiting without blocking
(b'' if nothing).  ``start()`` and ``stop()`` take and release what the back
end holds; every back end is a context manager.

Output is lossless, with back-pressure, as on a serial line with flow
control: no write blocks the VMM, what the reader has not taken yet waits in
a buffer of at most ``limit`` bytes, and ``room()`` says how much more fits.
The UART reports its transmitter empty (LSR.THRE) only while there is room
for a whole transmit FIFO, so a guest waits for a slow reader instead of
losing its output.  Whoever runs the back end drains it: while
``output_fileno()`` is not None it waits for that descriptor to turn
writable and calls ``flush()`` (the board's timer thread does), and
``wake``, when set, is called as output starts to wait.  ``stop()`` writes
what still waits, however long the reader takes, unless ``cancel()`` was
called (a signal handler may).  Only a writer that ignores ``room()`` loses
bytes, counted in ``dropped``.  When the reader goes away (EPIPE) or the
descriptor fails, ``output_error`` holds the errno and output is discarded
from then on.  The pty back end, which may never get a reader, and the
socket back end without a client discard rather than hold the guest.

Input is read in chunks of at most ``READ_CHUNK`` bytes; the caller hands
them to ``Serial.receive()`` and keeps what the guest has no room for.

The terminal back end's escape keys follow QEMU's ``-serial mon:stdio``
habit: Ctrl-A x quits, Ctrl-A h lists the escapes (on the terminal, not to
the guest), Ctrl-A Ctrl-A sends one Ctrl-A.  Its input is ``interactive``:
whoever runs it reads it even while the guest takes none, so the escape keys
work whatever is typed ahead (what the guest has no room for past a bound is
dropped and counted in ``input_dropped``, as a UART without flow control
overruns).  ``restore_terminal()`` is the one place the terminal's modes go
back; it runs on stop(), at interpreter exit, and on a signal in
``ENDING_SIGNALS`` that nobody else handles (then the process still dies of
it, as without us).  Sources: termios(3) for raw mode and tcsetattr; signal(7)
for which signals end a process by default.
"""

__all__ = ['MemoryBackend', 'FileBackend', 'TerminalBackend',
           'SocketBackend', 'PtyBackend', 'EscapeFilter', 'OUTPUT_LIMIT', 'ENDING_SIGNALS',
           'STOP_SIGNALS', 'ESCAPE_HELP', 'line_end']

import atexit
import errno
import os
import select
import signal
import stat
import termios
import time
import tty

OUTPUT_LIMIT = 32 * 1024    # bytes of output that may wait for a reader
READ_CHUNK = 4096           # bytes taken from an input descriptor at a time
MEMORY_LIMIT = 1 << 20      # bytes a MemoryBackend keeps
ALWAYS_ROOM = 1 << 62       # room() of a sink that never holds the guest
DRAIN_SLICE_S = 0.1         # stop() looks for cancel() this often while it waits
ESCAPE_KEY = 0x01           # Ctrl-A
QUIT_KEYS = b'xX'           # after the escape key: quit
HELP_KEYS = b'hH?'          # after the escape key: list the escapes
SNAPSHOT_KEYS = b'sS'       # after the escape key: write the run's --snapshot file
SUSPEND_KEYS = b'zZ'        # after the escape key: suspend kvmlite (SIGTSTP), as Ctrl-Z in a shell
ESCAPE_HELP = ('kvmlite console escapes:\r\n'
               '  Ctrl-A x        quit (exit status 130)\r\n'
               '  Ctrl-A h        show this list\r\n'
               '  Ctrl-A s        write a snapshot (with run --snapshot FILE)\r\n'
               '  Ctrl-A z        suspend kvmlite (fg resumes it)\r\n'
               '  Ctrl-A Ctrl-A   send one Ctrl-A to the guest\r\n')

#: Signals whose default action ends the process (signal(7): Term or Core),
#: other than those a process cannot catch or that Python handles itself
#: (SIGINT raises KeyboardInterrupt; SIGPIPE is ignored, a write gets EPIPE).
#: The command line ends a run on each with status 128 + the signal number.
ENDING_SIGNALS = tuple(getattr(signal, name) for name in (
    'SIGHUP', 'SIGINT', 'SIGQUIT', 'SIGTERM', 'SIGUSR1', 'SIGUSR2', 'SIGALRM', 'SIGVTALRM',
    'SIGPROF', 'SIGXCPU', 'SIGXFSZ', 'SIGIO', 'SIGPWR', 'SIGSYS') if hasattr(signal, name))

#: Job-control signals whose default action stops the process (signal(7):
#: Stop): while stopped, the terminal has its saved modes back.
STOP_SIGNALS = (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


def line_end(fd):
    """The line ending a message written to ``fd`` needs: '\\r\\n' on a
    terminal that does not turn '\\n' into '\\r\\n' itself (one in raw
    mode: OPOST or ONLCR off, termios(3)), else '\\n'."""
    try:
        oflag = termios.tcgetattr(fd)[1]
    except (termios.error, OSError, ValueError, TypeError):
        return '\n'                    # not a terminal
    return '\n' if oflag & termios.OPOST and oflag & termios.ONLCR else '\r\n'


def _readable(fd):
    """True if a read from fd would not block (data, EOF or an error)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _open_writer(fd):
    """A descriptor of our own for fd's file on which writes never block.

    O_NONBLOCK belongs to the open file description, which stdout shares with
    the shell: re-opening the file gives a description only we use.
    """
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return os.dup(fd)       # disk writes end; keep the shared offset
    try:
        return os.open(f'/proc/self/fd/{fd}', os.O_WRONLY | os.O_NOCTTY
                       | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        new = os.dup(fd)        # a socket cannot be re-opened: share it
        os.set_blocking(new, False)
        return new


def _file_id(fd):
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Backend:
    """The shared part: a bounded, lossless output buffer and a polled input fd."""

    #: stop() waits for the reader to take what waits (False: it is dropped)
    drain_on_stop = True
    #: input is a person typing: read it even while the guest takes none (so
    #: an escape key always gets through), dropping what cannot wait
    interactive = False

    def __init__(self, limit=OUTPUT_LIMIT):
        self.limit = limit
        self.dropped = 0        # output lost: written past room(), or no reader
        self.input_dropped = 0  # input the guest had no room for (see ``interactive``)
        self.eof = False        # the input side has ended
        self.output_error = None    # errno that ended the output (EPIPE...)
        self.at_line_start = True   # the last byte of output was a newline
        self.wake = None        # called when output starts to wait (the board's wake-up)
        self._pending = bytearray()
        self._out_fd = None     # where output goes (non-blocking), or None
        self._out_id = None     # (st_dev, st_ino) of the output's file
        self._in_fd = None      # where input comes from, or None
        self._owned = []        # descriptors stop() closes
        self._cancelled = False

    def start(self):
        return self

    def stop(self):
        if self.drain_on_stop:
            self.drain()
        else:
            self.flush()
        self.dropped += len(self._pending)      # the reader never took it
        self._pending.clear()
        for fd in self._owned:
            os.close(fd)
        self._owned = []
        self._out_fd = self._in_fd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    # -- output --

    def _set_output(self, fd):
        self._out_fd = fd
        if fd is not None:
            self._out_id = _file_id(fd)

    def room(self):
        """How many bytes write() takes now without dropping any."""
        if self._out_fd is None or self.output_error is not None:
            return ALWAYS_ROOM          # discarding: never hold the guest
        return self.limit - len(self._pending)

    def write(self, data):
        if not data:
            return
        if self._out_fd is None or self.output_error is not None:
            self.dropped += len(data)
            return
        pending = self._pending
        if not pending:
            # nothing waits: straight to the reader, as far as it takes it now
            try:
                written = os.write(self._out_fd, data)
            except (BlockingIOError, InterruptedError):
                written = 0
            except OSError as e:
                self._lost_output(e.errno)
                self.dropped += len(data)
                return
            self.at_line_start = data[-1] == 10
            if written == len(data):
                return
            data = data[written:]
            if self.wake is not None:
                self.wake()             # the drainer now waits for the fd
        room = self.limit - len(pending)
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        if data:
            pending += data
            self.at_line_start = data[-1] == 10

    def output_fileno(self):
        """The descriptor to wait on for writability while output waits, else None."""
        return self._out_fd if self._pending and self.output_error is None else None

    def flush(self):
        """Write what waits, as far as the reader takes it now."""
        while self._pending and self._out_fd is not None:
            try:
                written = os.write(self._out_fd, self._pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._lost_output(e.errno)
                return
            del self._pending[:written]

    def drain(self, timeout=None):
        """Wait until all output is written, the reader goes away, cancel()
        is called, or ``timeout`` seconds pass; returns True if nothing waits."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.flush()
            fd = self.output_fileno()
            if fd is None or self._cancelled:
                break
            wait = DRAIN_SLICE_S
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            try:
                select.select([], [fd], [], wait)
            except (OSError, ValueError):
                break
        return not self._pending

    def cancel(self):
        """Give up on what waits (stop() then drops it); safe in a signal handler."""
        self._cancelled = True

    def restore_terminal(self):
        """Put back a terminal's modes, if this back end changed them (safe in
        a signal handler; stop() does it too)."""

    def _lost_output(self, err=errno.EIO):
        # The reader is gone (EIO, EPIPE...): what waits can never go.
        self.output_error = err
        self.dropped += len(self._pending)
        self._pending.clear()
        if self.wake is not None:
            self.wake()                 # let the board see it and end the run

    def mid_line_on(self, fd):
        """True if the output's last byte was not a newline and ``fd`` is the
        same file: a message on ``fd`` should begin with a newline."""
        return (not self.at_line_start and self._out_id is not None
                and self._out_id == _file_id(fd))

    # -- input --

    def fileno(self):
        return None if self.eof else self._in_fd

    def read_input(self):
        fd = self.fileno()
        if fd is None or not _readable(fd):
            return b''
        try:
            data = os.read(fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return b''
        except OSError:
            data = b''          # EIO: the other side hung up
        if not data:
            self.eof = True
        return data


class MemoryBackend(Backend):
    """Output into ``output`` (at most ``limit`` bytes, the rest dropped and
    counted: it never holds the guest); input from feed()."""

    def __init__(self, limit=MEMORY_LIMIT):
        super().__init__(limit)
        self.output = bytearray()
        self.input = bytearray()

    def room(self):
        return ALWAYS_ROOM

    def write(self, data):
        room = max(0, self.limit - len(self.output))
        self.dropped += max(0, len(data) - room)
        self.output += data[:room]
        if data:
            self.at_line_start = data[-1] == 10

    def feed(self, data):
        """Queue bytes for read_input() (the test plays the host user)."""
        self.input += data

    def read_input(self):
        data = bytes(self.input[:READ_CHUNK])
        del self.input[:READ_CHUNK]
        return data


class FileBackend(Backend):
    """Append output to the file at ``path``; no input.  A regular file
    always has room; a FIFO's reader may hold the guest like a pipe's."""

    def __init__(self, path, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        self.path = path
        self._set_output(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                 | os.O_NONBLOCK | os.O_CLOEXEC, 0o644))
        self._owned = [self._out_fd]


class EscapeFilter:
    """Takes the console's escape keys out of the input stream.

    Ctrl-A x (or X) requests quit; Ctrl-A h (H, ?) calls ``on_help``;
    Ctrl-A s (S) calls ``on_snapshot``; Ctrl-A z (Z) calls ``on_suspend``;
    Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A and any other key are both
    dropped.  An escape key at the end of one chunk applies to the first
    byte of the next.
    """

    def __init__(self, key=ESCAPE_KEY, on_help=None, on_snapshot=None, on_suspend=None):
        self.key = key
        self.on_help = on_help
        self.on_snapshot = on_snapshot
        self.on_suspend = on_suspend
        self.armed = False      # the last byte seen was the escape key

    def filter_input(self, data):
        """Returns (bytes_for_guest, quit_requested)."""
        out = bytearray()
        for byte in data:
            if self.armed:
                self.armed = False
                if byte in QUIT_KEYS:
                    return bytes(out), True     # nothing after quit goes in
                if byte in HELP_KEYS and self.on_help is not None:
                    self.on_help()
                elif byte in SNAPSHOT_KEYS and self.on_snapshot is not None:
                    self.on_snapshot()
                elif byte in SUSPEND_KEYS and self.on_suspend is not None:
                    self.on_suspend()
                elif byte == self.key:
                    out.append(byte)
            elif byte == self.key:
                self.armed = True
            else:
                out.append(byte)
        return bytes(out), False


class TerminalBackend(Backend):
    """The controlling terminal (stdin/stdout by default), in raw mode.

    ``start()`` puts ``in_fd`` in raw mode if it is a tty, so keys such as
    Ctrl-C reach the guest.  :meth:`restore_terminal` puts the saved modes
    back: ``stop()`` calls it, and so do an exit of the interpreter (atexit)
    and each signal of ``ENDING_SIGNALS`` whose handler was the default when
    ``start()`` ran (the handler restores, then the process dies of the
    signal as it would have).  A signal someone else handles is theirs: the
    command line's ends the run, and its ``stop()`` restores.  Input from a
    tty goes through ``escape``; after Ctrl-A x, ``quit_requested`` is True;
    Ctrl-A h writes :data:`ESCAPE_HELP` to the terminal; Ctrl-A s calls
    ``on_snapshot`` (set by whoever can take one: run --snapshot FILE), or
    says on the terminal that no snapshot file was given.

    Job control: in raw mode Ctrl-Z is a key for the guest, so Ctrl-A z
    suspends kvmlite instead (SIGTSTP to itself). On each of
    ``STOP_SIGNALS`` (that Ctrl-A z, ``kill -TSTP``, a background read or
    write) whose handler was the default, the saved modes go back before the
    process stops, as it would have; on SIGCONT (``fg``), the terminal goes
    raw again if the process is in its foreground. A stop the kernel
    discards (an orphaned process group) leaves the terminal raw.
    """

    def __init__(self, in_fd=0, out_fd=1, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        self.in_fd = in_fd
        self.out_fd = out_fd
        tty_in = os.isatty(in_fd)
        self.escape = EscapeFilter(on_help=self._show_help, on_snapshot=self._snapshot_key,
                                   on_suspend=self._suspend) if tty_in else None
        self.on_snapshot = None
        self.interactive = tty_in
        self.quit_requested = False
        self._saved = None          # termios attributes while in raw mode
        self._raw = False           # the terminal is in raw mode now (not while stopped)
        self._handled = {}          # signal -> its handler before ours (always SIG_DFL)
        self._started = False

    def start(self):
        if self._started:
            return self
        self._started = True
        self._cancelled = False
        try:
            self._set_output(_open_writer(self.out_fd))
            self._owned = [self._out_fd]
            self._in_fd = self.in_fd
            if self.escape is not None:
                self._saved = termios.tcgetattr(self.in_fd)
                # The ways back are in place before the terminal changes.
                atexit.register(self.stop)
                self._install_signals()
                tty.setraw(self.in_fd, termios.TCSANOW)
                self._raw = True
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        try:
            # the output first, while the terminal is as the guest's bytes expect
            if self._started and self.drain_on_stop:
                self.drain()
        finally:
            self.restore_terminal()
            self._saved = None
            atexit.unregister(self.stop)
            self._restore_signals()
            self._started = False
            super().stop()

    def restore_terminal(self):
        saved = self._saved
        if saved is not None:
            self._raw = False
            try:
                termios.tcsetattr(self.in_fd, termios.TCSANOW, saved)
            except termios.error:
                pass            # the terminal is gone (hangup)

    def _install_signals(self):
        handlers = [(signum, self._on_signal) for signum in ENDING_SIGNALS]
        handlers += [(signum, self._on_stop) for signum in STOP_SIGNALS]
        handlers.append((signal.SIGCONT, self._on_continue))
        for signum, handler in handlers:
            try:
                if signal.getsignal(signum) == signal.SIG_DFL:
                    self._handled[signum] = signal.signal(signum, handler)
            except (ValueError, OSError):
                return          # not the main thread: atexit still restores

    def _restore_signals(self):
        handled, self._handled = self._handled, {}
        for signum, previous in handled.items():
            if signal.getsignal(signum) not in (self._on_signal, self._on_stop, self._on_continue):
                continue        # someone stacked on us: theirs now
            try:
                signal.signal(signum, previous)
            except (ValueError, OSError):
                pass

    def _on_signal(self, signum, frame):
        # the default action would end the process with the terminal raw:
        # restore it, then die of the signal as without us
        self.cancel()
        self.restore_terminal()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    def _on_stop(self, signum, frame):
        # the default action would stop the process with the terminal raw:
        # put the saved modes back, stop as without us, and on waking go raw again
        if self._raw:
            self.restore_terminal()
        signal.signal(signum, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signum)        # the process stops here until SIGCONT
        finally:
            if self._handled and signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, self._on_stop)
        self._back_to_raw()

    def _on_continue(self, signum, frame):
        self._back_to_raw()

    def _back_to_raw(self):
        """Raw mode again after a stop, if the run goes on and the process
        is in the terminal's foreground (a background job leaves the modes
        to the shell until ``fg`` continues it)."""
        if self._saved is None or self._raw or not self._started:
            return
        try:
            foreground = os.tcgetpgrp(self.in_fd) == os.getpgrp()
        except OSError:
            foreground = True           # not our controlling terminal: no job control on it
        if foreground:
            try:
                tty.setraw(self.in_fd, termios.TCSANOW)
                self._raw = True
            except termios.error:
                pass

    def _suspend(self):
        """Ctrl-A z: stop kvmlite as Ctrl-Z stops a program in a cooked terminal."""
        if signal.SIGTSTP in self._handled:
            os.kill(os.getpid(), signal.SIGTSTP)    # _on_stop, in the main thread
        elif signal.getsignal(signal.SIGTSTP) == signal.SIG_DFL:
            # no handler of ours (started outside the main thread): the same, here
            if self._raw:
                self.restore_terminal()
            os.kill(os.getpid(), signal.SIGTSTP)
            self._back_to_raw()

    def _show_help(self):
        self._tell(ESCAPE_HELP)

    def _snapshot_key(self):
        if self.on_snapshot is not None:
            self.on_snapshot()
        else:
            self._tell('kvmlite: no snapshot file: start the run with --snapshot FILE\r\n')

    def _tell(self, text):
        """Show ``text`` on the terminal (not to the guest), on a fresh line."""
        data = (text if self.at_line_start else '\r\n' + text).encode()
        if self.room() >= len(data):     # a terminal that takes nothing would not show it
            self.write(data)

    def filter_input(self, data):
        """Returns (bytes_for_guest, quit_requested) for raw input bytes."""
        if self.escape is None:
            return bytes(data), False
        return self.escape.filter_input(data)

    def read_input(self):
        data, quit_requested = self.filter_input(super().read_input())
        self.quit_requested |= quit_requested
        return data


class SocketBackend(Backend):
    """A TCP server for one client at a time (``nc 127.0.0.1 PORT``).

    ``address`` is the (host, port) it listens on.  While no client is
    connected, ``fileno()`` is the listening socket and output is dropped;
    ``read_input()`` accepts a waiting client.  Further clients wait in the
    backlog until the current one leaves.  A connected client that reads
    slowly holds the guest; what waits for it at stop() is dropped.
    """

    drain_on_stop = False

    def __init__(self, host='127.0.0.1', port=0, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        import socket       # here, not at the top: most runs have no socket console
        self._listener = socket.create_server((host, port), backlog=1)
        self._listener.setblocking(False)
        self.address = self._listener.getsockname()[:2]
        self._client = None

    @property
    def connected(self):
        return self._client is not None

    def stop(self):
        self.flush()
        self._drop_client()
        self._listener.close()
        super().stop()

    def fileno(self):
        if self._client is not None:
            return self._client.fileno()
        return None if self._listener.fileno() < 0 else self._listener.fileno()

    def read_input(self):
        if self._client is None:
            self._accept()
            return b''
        try:
            data = self._client.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return b''
        except OSError:
            data = b''
        if not data:
            self._drop_client()
        return data

    def _accept(self):
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, OSError):
            return
        client.setblocking(False)
        self._client = client
        self._set_output(client.fileno())

    def _drop_client(self):
        client, self._client = self._client, None
        self._out_fd = None
        # what waited was for that client
        self.dropped += len(self._pending)
        self._pending.clear()
        if client is not None:
            client.close()

    def _lost_output(self, err=errno.EIO):
        # A send failed: the client is gone; the next one gets what follows.
        self._drop_client()


class PtyBackend(Backend):
    """A pseudo-terminal: programs open ``slave_name`` (screen, minicom).

    The back end keeps the slave open itself, in raw mode, so output queues
    (boundedly) before anyone attaches and the line discipline never echoes
    the guest's output back as its input.  Nobody may ever attach, so the
    guest is never held: what does not fit is dropped and counted.
    """

    drain_on_stop = False

    def __init__(self, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        master, slave = os.openpty()
        self._owned = [master, slave]
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self.slave_name = os.ttyname(slave)
        self._in_fd = master
        self._set_output(master)

    def room(self):
        return ALWAYS_ROOM
