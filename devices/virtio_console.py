"""virtio-console: the guest's hvc0 over virtio-mmio (``run --console-device hvc``).

Source: *Virtual I/O Device (VIRTIO) Version 1.2*, OASIS CS01, 5.3 Console
Device: device ID 3; 5.3.2 Virtqueues: 0 receiveq (port 0), 1 transmitq
(port 0), then the control queues and the further ports, which exist only
with VIRTIO_CONSOLE_F_MULTIPORT; 5.3.3 Feature bits: VIRTIO_CONSOLE_F_SIZE
0, _MULTIPORT 1, _EMERG_WRITE 2, none of which this device offers (one
port, no size, no emergency write: every byte goes through the transmitq
and its back-pressure); 5.3.4 Device configuration layout: ``le16 cols;
le16 rows; le32 max_nr_ports; le32 emerg_wr``, each field meaningful only
with its feature (here cols = rows = 0, max_nr_ports = 1); 5.3.6 Device
Operation: the driver places empty buffers in the receiveq for input and
buffers holding its output in the transmitq, and a used receive buffer's
bytes are the port's input; 5.3.6.1 Driver Requirements: the driver MUST NOT
put a device-readable buffer in a receiveq nor a device-writable one in a
transmitq (either is refused here: DEVICE_NEEDS_RESET, as for any broken
ring; devices/virtio_mmio.py is the transport).

Back-pressure, the promise the UART keeps (devices/serial.py): nothing is
lost to a slow reader.

* Output: a transmit chain goes to the sink (``out``: ``write(bytes)``
  and optionally ``room()``, a devices.console back end) only as far as the
  sink has room. A chain that does not fit stays in the available ring, the
  bytes already written counted in ``tx_done``, and the device stops taking
  transmit buffers (``tx_waiting``) until :meth:`tick` (the board runs it as
  the sink drains) finds room again; only then is the chain put in the used
  ring. A guest that waits for its used buffers (Linux's hvc does) waits
  for the reader; one that fills the ring waits for free descriptors. At
  most :data:`TX_BUDGET` bytes go out per notification or tick, so a
  hostile chain of gigabytes cannot hold the VMM; the rest follows at the
  next tick.
* Input: :meth:`receive` puts the host's bytes into the receive buffers the
  driver has posted and returns how many it took; what finds no buffer (no
  driver yet, or all buffers in use) stays with the caller, which offers it
  again later (the board keeps it, as it does for the UART's FIFO). Nothing
  is dropped here.

``out`` None leaves the slot an empty placeholder (DeviceID 0), which Linux
is not told about: the board hands the console to this device with
``--console-device hvc``.
"""

from .virtio_mmio import (F_EVENT_IDX, S_DRIVER_OK, S_NEEDS_RESET, DmaError, VirtioMmio,
                          VirtioRefusal)

__all__ = ['VirtioConsole', 'DEVICE_ID_CONSOLE', 'RECEIVEQ', 'TRANSMITQ', 'TX_BUDGET']

DEVICE_ID_CONSOLE = 3
RECEIVEQ, TRANSMITQ = 0, 1          # port 0's queues (5.3.2)
TX_BUDGET = 1 << 20                 # bytes sent per notification or tick at most
TX_CHUNK = 64 << 10                 # bytes read from guest memory at a time
ALWAYS_ROOM = 1 << 62               # room() of a sink without one


class VirtioConsole(VirtioMmio):
    """One console port. Wiring: ``irq``, ``memory``, ``out`` (the console
    back end, None for a placeholder) and ``clock`` (nanoseconds: tick()
    asks to be run again at once while output waits only for its budget).
    Counters: ``bytes_out``, ``bytes_in``, ``tx_stalls`` (times output
    began to wait for a full sink)."""

    QUEUES = 2
    QUEUE_SIZE = 64
    COUNTERS = VirtioMmio.COUNTERS + ('bytes_out', 'bytes_in', 'tx_stalls')
    _STATS = ('bytes_out', 'bytes_in', 'tx_stalls')

    def __init__(self, irq=None, memory=None, out=None, clock=None):
        self.out, self.clock = out, clock
        for k in self._STATS:
            setattr(self, k, 0)
        super().__init__(irq=irq, memory=memory)

    @property
    def DEVICE_ID(self):                # noqa: N802 - the transport's class constant
        return DEVICE_ID_CONSOLE if self.out is not None else 0

    def config_bytes(self):
        return (0).to_bytes(2, 'little') * 2 + (1).to_bytes(4, 'little') + bytes(4)

    def device_reset(self):
        self.tx_done = 0                # bytes of the transmitq's next chain already sent
        self.tx_waiting = False         # output waits for the sink (or for its budget)

    def device_state(self):
        state = {k: getattr(self, k) for k in self._STATS}
        # 'present': the board wires a restored machine's console to hvc0 again
        state.update(tx_done=self.tx_done, tx_waiting=self.tx_waiting,
                     present=self.out is not None)
        return state

    def load_device_state(self, state):
        for k in self._STATS:
            setattr(self, k, int(state[k]))
        self.tx_done = int(state['tx_done'])
        self.tx_waiting = bool(state['tx_waiting'])

    def check(self):
        problems = super().check()
        if self.tx_done < 0:
            problems.append(f'tx_done {self.tx_done} is negative')
        return problems

    # -- the two queues --
    def _live(self, index):
        return (self.out is not None and self.status & S_DRIVER_OK
                and not self.status & S_NEEDS_RESET
                and self.queues[index].ready)

    def process(self, index, limit=None):
        """QueueNotify: the transmitq sends what the sink takes; a notify of
        the receiveq only says buffers were posted (receive() fills them)."""
        if index == TRANSMITQ:
            self._transmit()

    def _room(self):
        room = getattr(self.out, 'room', None)
        return ALWAYS_ROOM if room is None else max(0, room())

    def _transmit(self):
        """Send transmit chains while the sink has room, at most TX_BUDGET
        bytes; raises VirtioRefusal / DmaError for a broken ring."""
        q, budget = self.queues[TRANSMITQ], TX_BUDGET
        was_waiting, self.tx_waiting = self.tx_waiting, False
        while self.pending(TRANSMITQ):
            head = self.memory.read_int(q.avail + 4 + 2 * (q.last_avail % q.num), 2)
            chain = self.walk(q, head)          # peeked: taken only once it is all sent
            if chain.writable:
                raise VirtioRefusal('a device-writable buffer in the transmitq')
            total = chain.readable_size
            while self.tx_done < total:
                n = min(total - self.tx_done, self._room(), budget, TX_CHUNK)
                if n <= 0:
                    break
                self.out.write(_read_span(chain, self.tx_done, n))
                self.tx_done += n
                self.bytes_out += n
                budget -= n
            if self.tx_done < total:
                if budget > 0 and not was_waiting:
                    self.tx_stalls += 1         # the sink is full: output waits for its reader
                self.tx_waiting = True
                break
            q.last_avail = (q.last_avail + 1) & 0xFFFF
            self.tx_done = 0
            self.put_used(TRANSMITQ, head, 0)
            self.served += 1
        if self.driver_features & F_EVENT_IDX:     # 2.7.10: kick me when you pass this
            self.memory.write_int(q.used + 4 + 8 * q.num, 2, q.last_avail)
        self.signal_used(TRANSMITQ)

    def tick(self):
        """Output that waited for room goes on; returns 'now' (the clock's
        time) while more waits only for its budget, else None."""
        if not self.tx_waiting or not self._live(TRANSMITQ):
            return None
        try:
            self._transmit()
        except (VirtioRefusal, DmaError) as e:
            self.refuse(f'queue {TRANSMITQ}: {e}')
            return None
        if self.tx_waiting and self._room() > 0 and self.clock is not None:
            return self.clock()
        return None

    def receive(self, data):
        """Put host input into the posted receive buffers; returns how many
        bytes were taken (the rest waits with the caller)."""
        if not data or not self._live(RECEIVEQ):
            return 0
        q, taken = self.queues[RECEIVEQ], 0
        try:
            while taken < len(data) and self.pending(RECEIVEQ):
                chain = self.take(RECEIVEQ)
                if chain.readable or not chain.writable_size:
                    raise VirtioRefusal('a receive buffer that is not device-writable')
                n = chain.write_all(data[taken:])
                self.put_used(RECEIVEQ, chain.head, n)
                self.served += 1
                taken += n
            if self.driver_features & F_EVENT_IDX:
                self.memory.write_int(q.used + 4 + 8 * q.num, 2, q.last_avail)
            self.signal_used(RECEIVEQ)
        except (VirtioRefusal, DmaError) as e:
            self.refuse(f'queue {RECEIVEQ}: {e}')
        self.bytes_in += taken
        return taken


def _read_span(chain, skip, n):
    """``n`` device-readable bytes of ``chain`` from byte ``skip`` on."""
    out, pos = bytearray(), 0
    for gpa, length in chain.readable:
        if pos + length <= skip:
            pos += length
            continue
        start = max(0, skip - pos)
        take = min(length - start, n - len(out))
        out += chain.memory.read(gpa + start, take)
        pos += length
        if len(out) >= n:
            break
    return bytes(out)
