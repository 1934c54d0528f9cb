"""virtio-rng: the entropy device over virtio-mmio, filled from ``os.urandom`` (``run --rng``).

Source: *Virtual I/O Device (VIRTIO) Version 1.2*, OASIS CS01, 5.4 Entropy
Device: device ID 4, one virtqueue (requestq), no feature bits and no
configuration space; the device fills the driver's device-writable buffers
with random bytes and returns how many it wrote (5.4.6.1: it MAY write
fewer than the buffer holds). The transport is devices/virtio_mmio.py.
"""

from .virtio_mmio import VirtioMmio

__all__ = ['VirtioRng', 'DEVICE_ID_RNG', 'MAX_FILL']

DEVICE_ID_RNG = 4
#: the most bytes one request gets (the rest of a larger buffer stays unused)
MAX_FILL = 64 << 10


class VirtioRng(VirtioMmio):
    """Entropy for the guest's /dev/hwrng. Wiring: ``irq``, ``memory``;
    ``entropy(n) -> bytes`` is the source (the board hands ``os.urandom``
    with ``--rng``; None leaves the slot an empty placeholder, DeviceID 0).
    ``given`` counts the bytes handed out."""

    QUEUES = 1
    COUNTERS = VirtioMmio.COUNTERS + ('given',)

    def __init__(self, irq=None, memory=None, entropy=None):
        self.entropy = entropy
        self.given = 0
        super().__init__(irq=irq, memory=memory)

    @property
    def DEVICE_ID(self):                # noqa: N802 - the transport's class constant
        return DEVICE_ID_RNG if self.entropy is not None else 0

    def serve(self, queue, chain):
        n = min(chain.writable_size, MAX_FILL)
        written = chain.write_all(self.entropy(n)) if n else 0
        self.given += written
        return written

    def device_state(self):
        return {'given': self.given}

    def load_device_state(self, state):
        self.given = int(state['given'])
