"""The POST diagnostic port 0x80.

Follows the IBM PC/AT POST diagnostic port 0x80 (IBM Personal Computer AT
Technical Reference, 1984): firmware writes progress codes that a
diagnostic card displays.

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0x80   ``PostCode``           POST code latch (a diagnostic card's display)
====== ====================== ============================================
"""

from . import Device, check_state_version, size_mask

__all__ = ['PostCode']


class PostCode(Device):
    """Port 0x80: firmware and kernels write progress codes here.

    Linux also writes it as an I/O delay (``outb_p``).  Writes latch the
    low byte and count; reads return the last byte written (as a POST card
    that reads back does), wider reads give 0xFF in the bytes above, which
    belong to the DMA page registers at 0x81 and up (not modelled).
    """

    SIZE = 1

    def __init__(self):
        self.reset()

    def reset(self):
        self.last = 0
        self.count = 0

    def read(self, offset, size):
        size = max(1, min(int(size), 8))
        if offset != 0:
            return size_mask(size)
        return self.last | (size_mask(size) & ~0xFF)

    def write(self, offset, size, value):
        if offset == 0 and size >= 1:
            self.last = int(value) & 0xFF
            self.count += 1

    def state(self):
        return {'version': 1, 'last': self.last, 'count': self.count}

    @classmethod
    def from_state(cls, state):
        check_state_version('PostCode', state)
        dev = cls()
        dev.last = int(state['last']) & 0xFF
        dev.count = state['count']
        return dev

    def check(self):
        if not 0 <= self.last <= 0xFF:
            return [f'POST code {self.last!r} is not a byte']
        if self.count < 0:
            return [f'write count {self.count} is negative']
        return []
