"""QEMU's fw_cfg, the traditional I/O interface at ports 0x510-0x511.

Follows QEMU's docs/specs/fw_cfg.rst (the traditional I/O interface) and
the key numbers of Linux's include/uapi/linux/qemu_fw_cfg.h.

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0x510  ``FwCfg``              fw_cfg selector (16-bit) and, at 0x511, data
====== ====================== ============================================
"""

import struct

from . import Device, check_state_version

__all__ = ['FwCfg']

FW_CFG_SIGNATURE = 0x0000   # b'QEMU'
FW_CFG_ID = 0x0001          # feature bitmap, 32-bit LE
FW_CFG_RAM_SIZE = 0x0003    # RAM size in bytes, 64-bit LE
FW_CFG_NB_CPUS = 0x0005     # CPUs at boot, 16-bit LE
FW_CFG_MAX_CPUS = 0x000F    # CPUs possible, 16-bit LE
FW_CFG_CMDLINE_SIZE = 0x0014  # command line length with its NUL, 32-bit LE
FW_CFG_CMDLINE_DATA = 0x0015  # command line, NUL-terminated
FW_CFG_FILE_DIR = 0x0019    # file directory, big-endian (see add_file)
FW_CFG_FILE_FIRST = 0x0020  # selector of the first named file
FW_CFG_WRITE_CHANNEL = 0x4000  # selector bit 14: write mode (writes ignored)
FW_CFG_ARCH_LOCAL = 0x8000  # selector bit 15: architecture-specific item
FW_CFG_ENTRY_MASK = 0x3FFF  # item number within its (generic/arch) range

FW_CFG_ID_TRADITIONAL = 0x01  # bit 0: the I/O port interface (no DMA)
FW_CFG_MAX_FILE_PATH = 56   # file name bytes, NUL included
FW_CFG_FILE_ENTRY = struct.Struct('>IHH56s')   # size, select, reserved, name

FW_CFG_SELECTOR = 0         # 0x510: 16-bit selector, write-only
FW_CFG_DATA = 1             # 0x511: 8-bit data


class FwCfg(Device):
    """QEMU's fw_cfg through ports 0x510 (selector) and 0x511 (data).

    A 16-bit write at 0x510 selects an item and rewinds it; each byte read
    returns the next byte of the item, and 0 once past its end (or for an
    item that does not exist).  As in QEMU, which decodes the two ports as
    one register, a byte read at either port reads data and a byte write at
    either port is a data write, which QEMU ignores since v2.4 (so do we).
    Other accesses are ignored (reads give 0) and counted in ``ignored``.
    Selector bit 14 (write channel) does not change which item is read;
    bit 15 picks the architecture-specific range.

    Items are host configuration, not guest state: ``reset()`` only clears
    the selector and offset.  ``set_item(key, data)`` sets any item;
    ``add_file(name, data)`` adds a named item at the next selector from
    0x0020 and lists it in FW_CFG_FILE_DIR (count, then 64-byte entries of
    size, selector, reserved and a NUL-terminated name, all big-endian).
    """

    SIZE = 2

    def __init__(self, ram_size=0, cpus=1, cmdline=b''):
        if isinstance(cmdline, str):
            cmdline = cmdline.encode()
        self.items = {}             # item key (selector & 0xBFFF) -> bytes
        self.files = []             # (name bytes, selector), in order added
        self.ignored = 0
        self.items[FW_CFG_SIGNATURE] = b'QEMU'
        self.items[FW_CFG_ID] = struct.pack('<I', FW_CFG_ID_TRADITIONAL)
        self.items[FW_CFG_RAM_SIZE] = struct.pack('<Q', ram_size)
        self.items[FW_CFG_NB_CPUS] = struct.pack('<H', cpus)
        self.items[FW_CFG_MAX_CPUS] = struct.pack('<H', cpus)
        # As QEMU: the size counts the NUL that ends the data.
        self.items[FW_CFG_CMDLINE_SIZE] = struct.pack('<I', len(cmdline) + 1)
        self.items[FW_CFG_CMDLINE_DATA] = bytes(cmdline) + b'\0'
        self._rebuild_dir()
        self.reset()

    def reset(self):
        self.selector = 0
        self.offset = 0

    @staticmethod
    def _key(selector):
        return selector & ~FW_CFG_WRITE_CHANNEL & 0xFFFF

    def set_item(self, key, data):
        """Serve ``data`` (bytes) at selector ``key``."""
        key = self._key(int(key))
        if key == FW_CFG_FILE_DIR:
            raise ValueError('FW_CFG_FILE_DIR is built from add_file()')
        self.items[key] = bytes(data)
        self._rebuild_dir()         # a file's size may have changed
        self.offset = min(self.offset, len(self._current()))

    def add_file(self, name, data):
        """Serve ``data`` as file ``name``; return its selector."""
        if isinstance(name, str):
            name = name.encode()
        if not name or b'\0' in name or len(name) >= FW_CFG_MAX_FILE_PATH:
            raise ValueError(f'fw_cfg file name {name!r}: 1-55 bytes, no NUL')
        if any(name == known for known, _ in self.files):
            raise ValueError(f'fw_cfg file {name!r} already exists')
        select = FW_CFG_FILE_FIRST + len(self.files)
        if select > FW_CFG_ENTRY_MASK:
            raise ValueError('no fw_cfg selector left for another file')
        self.files.append((name, select))
        self.items[select] = bytes(data)
        self._rebuild_dir()
        return select

    def _rebuild_dir(self):
        parts = [struct.pack('>I', len(self.files))]
        for name, select in self.files:
            parts.append(FW_CFG_FILE_ENTRY.pack(
                len(self.items[select]), select, 0, name))
        self.items[FW_CFG_FILE_DIR] = b''.join(parts)

    def _current(self):
        return self.items.get(self._key(self.selector), b'')

    def read(self, offset, size):
        if size != 1 or offset not in (FW_CFG_SELECTOR, FW_CFG_DATA):
            self.ignored += 1
            return 0
        item = self._current()
        if self.offset >= len(item):
            return 0
        self.offset += 1
        return item[self.offset - 1]

    def write(self, offset, size, value):
        if size == 2 and offset == FW_CFG_SELECTOR:
            self.selector = int(value) & 0xFFFF
            self.offset = 0
        elif size == 1 and offset in (FW_CFG_SELECTOR, FW_CFG_DATA):
            pass                    # data write: ignored, as QEMU >= 2.4
        else:
            self.ignored += 1

    def state(self):
        return {'version': 1, 'selector': self.selector,
                'offset': self.offset, 'ignored': self.ignored,
                'items': [[key, data.hex()]
                          for key, data in sorted(self.items.items())],
                'files': [[name.decode('latin-1'), select]
                          for name, select in self.files]}

    @classmethod
    def from_state(cls, state):
        check_state_version('FwCfg', state)
        dev = cls()
        dev.items = {int(key): bytes.fromhex(data)
                     for key, data in state['items']}
        dev.files = [(name.encode('latin-1'), int(select))
                     for name, select in state['files']]
        dev.selector = int(state['selector']) & 0xFFFF
        dev.offset = int(state['offset'])
        dev.ignored = state['ignored']
        return dev

    def check(self):
        problems = []
        if not 0 <= self.selector <= 0xFFFF:
            problems.append(f'selector {self.selector!r} is not 16 bits')
        if not 0 <= self.offset <= len(self._current()):
            problems.append(f'offset {self.offset} outside the item'
                            f' ({len(self._current())} bytes)')
        directory = self.items.get(FW_CFG_FILE_DIR, b'')
        if len(directory) != 4 + FW_CFG_FILE_ENTRY.size * len(self.files):
            problems.append('file directory length does not match the files')
        elif struct.unpack_from('>I', directory)[0] != len(self.files):
            problems.append('file directory count does not match the files')
        for name, select in self.files:
            if select not in self.items:
                problems.append(f'file {name!r} has no item at {select:#x}')
        return problems
