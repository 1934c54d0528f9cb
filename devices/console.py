"""Serial port back ends: where guest output goes and input comes from.

Every back end is an output sink for :class:`devices.serial.Serial`
(``write(data)``) and an input source: ``fileno()`` is the descriptor to
poll for input (None when there is none; it may change, so ask each time)
and ``read_input()`` returns what is waiting without blocking (b'' if
nothing).  ``start()`` and ``stop()`` take and release what the back end
holds; every back end is a context manager.

No write blocks the VMM: output waits in a buffer of at most ``limit`` bytes
for a slow reader, what does not fit is dropped and counted in ``dropped``,
and ``flush()`` retries what waits.  Input is read in chunks of at most
``READ_CHUNK`` bytes; the caller hands them to ``Serial.receive()`` and keeps
what the guest has no room for.

The terminal back end's escape keys follow QEMU's ``-serial mon:stdio``
habit: Ctrl-A x quits, Ctrl-A Ctrl-A sends one Ctrl-A.
"""

__all__ = ['MemoryBackend', 'FileBackend', 'TerminalBackend',
           'SocketBackend', 'PtyBackend', 'EscapeFilter', 'OUTPUT_LIMIT']

import atexit
import os
import select
import signal
import stat
import termios
import tty

OUTPUT_LIMIT = 64 * 1024    # bytes of output that may wait for a reader
READ_CHUNK = 4096           # bytes taken from an input descriptor at a time
MEMORY_LIMIT = 1 << 20      # bytes a MemoryBackend keeps
ESCAPE_KEY = 0x01           # Ctrl-A
QUIT_KEYS = b'xX'           # after the escape key: quit


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


class Backend:
    """The shared part: a bounded output buffer and a polled input fd."""

    def __init__(self, limit=OUTPUT_LIMIT):
        self.limit = limit
        self.dropped = 0        # output lost to a full buffer or no reader
        self.eof = False        # the input side has ended
        self._pending = bytearray()
        self._out_fd = None     # where output goes (non-blocking), or None
        self._in_fd = None      # where input comes from, or None
        self._owned = []        # descriptors stop() closes

    def start(self):
        return self

    def stop(self):
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

    def write(self, data):
        if self._out_fd is None:
            self.dropped += len(data)
            return
        room = max(0, self.limit - len(self._pending))
        if len(data) > room:
            self.dropped += len(data) - room
            data = data[:room]
        self._pending += data
        self.flush()

    def flush(self):
        """Write what waits, as far as the reader takes it now."""
        while self._pending and self._out_fd is not None:
            try:
                written = os.write(self._out_fd, self._pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost_output()
                return
            del self._pending[:written]

    def _lost_output(self):
        # The reader is gone (EIO, EPIPE...): what waits can never go.
        self.dropped += len(self._pending)
        self._pending.clear()

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
    """Output into ``output`` (at most ``limit`` bytes); input from feed()."""

    def __init__(self, limit=MEMORY_LIMIT):
        super().__init__(limit)
        self.output = bytearray()
        self.input = bytearray()

    def write(self, data):
        room = max(0, self.limit - len(self.output))
        self.dropped += max(0, len(data) - room)
        self.output += data[:room]

    def feed(self, data):
        """Queue bytes for read_input() (the test plays the host user)."""
        self.input += data

    def read_input(self):
        data = bytes(self.input[:READ_CHUNK])
        del self.input[:READ_CHUNK]
        return data


class FileBackend(Backend):
    """Append output to the file at ``path``; no input."""

    def __init__(self, path, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        self.path = path
        self._out_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        self._owned = [self._out_fd]


class EscapeFilter:
    """Takes the console's escape keys out of the input stream.

    Ctrl-A x (or X) requests quit; Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A and
    any other key are both dropped.  An escape key at the end of one chunk
    applies to the first byte of the next.
    """

    def __init__(self, key=ESCAPE_KEY):
        self.key = key
        self.armed = False      # the last byte seen was the escape key

    def filter_input(self, data):
        """Returns (bytes_for_guest, quit_requested)."""
        out = bytearray()
        for byte in data:
            if self.armed:
                self.armed = False
                if byte in QUIT_KEYS:
                    return bytes(out), True     # nothing after quit goes in
                if byte == self.key:
                    out.append(byte)
            elif byte == self.key:
                self.armed = True
            else:
                out.append(byte)
        return bytes(out), False


class TerminalBackend(Backend):
    """The controlling terminal (stdin/stdout by default), in raw mode.

    ``start()`` puts ``in_fd`` in raw mode if it is a tty, so keys such as
    Ctrl-C reach the guest; ``stop()`` restores the saved attributes, and so
    do an exit of the interpreter (atexit) and SIGTERM (the handler restores,
    then does what the previous handler would have).  Input from a tty goes
    through ``escape``; after Ctrl-A x, ``quit_requested`` is True.
    """

    def __init__(self, in_fd=0, out_fd=1, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.escape = EscapeFilter() if os.isatty(in_fd) else None
        self.quit_requested = False
        self._saved = None          # termios attributes while in raw mode
        self._prev_sigterm = None
        self._started = False

    def start(self):
        if self._started:
            return self
        self._started = True
        try:
            self._out_fd = _open_writer(self.out_fd)
            self._owned = [self._out_fd]
            self._in_fd = self.in_fd
            if self.escape is not None:
                self._saved = termios.tcgetattr(self.in_fd)
                # The ways back are in place before the terminal changes.
                atexit.register(self.stop)
                self._install_sigterm()
                tty.setraw(self.in_fd, termios.TCSANOW)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        if self._saved is not None:
            try:
                termios.tcsetattr(self.in_fd, termios.TCSANOW, self._saved)
            except termios.error:
                pass            # the terminal is gone (hangup)
            self._saved = None
        atexit.unregister(self.stop)
        self._restore_sigterm()
        self._started = False
        super().stop()

    def _install_sigterm(self):
        try:
            self._prev_sigterm = signal.signal(signal.SIGTERM,
                                               self._on_sigterm)
        except ValueError:
            pass                # not the main thread: atexit still restores

    def _restore_sigterm(self):
        if signal.getsignal(signal.SIGTERM) != self._on_sigterm:
            return              # never installed, or someone stacked on us
        try:
            signal.signal(signal.SIGTERM, self._prev_sigterm or signal.SIG_DFL)
        except ValueError:
            pass

    def _on_sigterm(self, signum, frame):
        previous = self._prev_sigterm
        self.stop()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            os.kill(os.getpid(), signum)    # die of it, as without us

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
    backlog until the current one leaves.
    """

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
        self._out_fd = client.fileno()

    def _drop_client(self):
        client, self._client = self._client, None
        self._out_fd = None
        Backend._lost_output(self)      # what waited was for that client
        if client is not None:
            client.close()

    def _lost_output(self):
        # A send failed: the client is gone.
        self._drop_client()


class PtyBackend(Backend):
    """A pseudo-terminal: programs open ``slave_name`` (screen, minicom).

    The back end keeps the slave open itself, in raw mode, so output queues
    (boundedly) before anyone attaches and the line discipline never echoes
    the guest's output back as its input.
    """

    def __init__(self, limit=OUTPUT_LIMIT):
        super().__init__(limit)
        master, slave = os.openpty()
        self._owned = [master, slave]
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self.slave_name = os.ttyname(slave)
        self._in_fd = self._out_fd = master
