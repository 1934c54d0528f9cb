"""QEMU's isa-debug-exit device at port 0xF4.

Follows QEMU's hw/misc/debugexit.c: a write of v makes QEMU exit with
status (v << 1) | 1; reads return 0.

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0xF4   ``DebugExit``          isa-debug-exit, iobase 0xf4 iosize 4
====== ====================== ============================================
"""

from . import Device, check_state_version, size_mask

__all__ = ['DebugExit']


class DebugExit(Device):
    """QEMU's isa-debug-exit: a write of v asks to exit with (v << 1) | 1.

    A write of any size at any of the 4 ports calls ``on_exit(status)``
    with v the written value (the access size's bits, at most 8 bytes); the
    status is always odd, so it never looks like kvmlite's own even
    outcomes.  Reads return 0, as QEMU's read handler does.  A process exit
    status keeps only its low 8 bits: the wiring decides what to do with
    the rest.
    """

    SIZE = 4

    def __init__(self, on_exit=None):
        self.on_exit = on_exit
        self.reset()

    def reset(self):
        self.last_status = None     # the last exit status requested
        self.writes = 0

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        if size < 1:
            return
        status = ((int(value) & size_mask(min(int(size), 8))) << 1) | 1
        self.last_status = status
        self.writes += 1
        if self.on_exit is not None:
            self.on_exit(status)

    def state(self):
        return {'version': 1, 'last_status': self.last_status,
                'writes': self.writes}

    @classmethod
    def from_state(cls, state, on_exit=None):
        check_state_version('DebugExit', state)
        dev = cls(on_exit=on_exit)
        dev.last_status = state['last_status']
        dev.writes = state['writes']
        return dev

    def check(self):
        status = self.last_status
        if status is not None and (status < 1 or not status & 1
                                   or status >> 65):
            return [f'exit status {status!r} is not (v << 1) | 1 of a qword']
        if (status is None) != (self.writes == 0):
            return ['exit status and write count disagree']
        return []
