"""Small PC port-I/O pieces that guests touch: 8042, debug exit, POST code,
PCI configuration mechanism #1 with the PIIX reset control register, and
QEMU's fw_cfg.

Sources, per class:

* ``I8042``: the IBM Personal Computer AT Technical Reference (1984),
  "Keyboard Controller" (the Intel 8042 with IBM's firmware): status
  register, command byte, controller commands and the output port.
* ``DebugExit``: QEMU's ``isa-debug-exit`` device (hw/misc/debugexit.c):
  a write of v makes QEMU exit with status (v << 1) | 1; reads return 0.
* ``PostCode``: the IBM PC/AT POST diagnostic port 0x80.
* ``PciConfig``: the PCI Local Bus Specification 3.0, section 3.2.2.3.2
  (configuration mechanism #1), and the Intel 82371FB/SB (PIIX/PIIX3)
  datasheet's Reset Control Register at 0xCF9.
* ``FwCfg``: QEMU's docs/specs/fw_cfg.rst (the traditional I/O interface)
  and the key numbers of Linux's include/uapi/linux/qemu_fw_cfg.h.

Port map (the wiring registers each object at its base):

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0x60   ``I8042.data_port``    8042 data: output buffer / input buffer
0x61   (not here)             system control port B: the PIT model owns it
0x62   (nothing)              8042 on a PC/XT only (PPI port C); undecoded
0x63   (nothing)              8042 on a PC/XT only (PPI control); undecoded
0x64   ``I8042.command_port`` 8042 status (read) / command (write)
0x80   ``PostCode``           POST code latch (a diagnostic card's display)
0xF4   ``DebugExit``          isa-debug-exit, iobase 0xf4 iosize 4
0x510  ``FwCfg``              fw_cfg selector (16-bit) and, at 0x511, data
0xCF8  ``PciConfig``          CONFIG_ADDRESS (dword); 0xCF9 byte: PIIX RCR
0xCFC  ``PciConfig``          CONFIG_DATA: no devices, reads all ones
====== ====================== ============================================

Every object has ``SIZE``, ``read(offset, size)``, ``write(offset, size,
value)``, ``reset()``, ``state()``, ``from_state()`` and ``check()``.  The two
8042 port objects are views: reset, snapshot and check the ``I8042``.
"""

import struct

from . import IrqLine, check_state_version

__all__ = ['I8042', 'DebugExit', 'PostCode', 'PciConfig', 'FwCfg']


def _mask(size):
    return (1 << (8 * size)) - 1


# --------------------------------------------------------------------------
# 8042 keyboard controller
# --------------------------------------------------------------------------

# Status register (read at 0x64).
I8042_STR_OBF = 0x01        # output buffer full: a byte waits at 0x60
I8042_STR_IBF = 0x02        # input buffer full: never, we take bytes at once
I8042_STR_SYSFLAG = 0x04    # system flag: command byte bit 2
I8042_STR_CMDDAT = 0x08     # last write was to 0x64 (command), not 0x60
I8042_STR_KEYLOCK = 0x10    # 1 = keyboard not inhibited by the keylock
I8042_STR_AUXDATA = 0x20    # the output buffer holds auxiliary-device data

# Command byte (controller configuration, read 0x20 / write 0x60).
I8042_CTR_KBDINT = 0x01     # IRQ 1 when the output buffer fills
I8042_CTR_AUXINT = 0x02     # IRQ 12 for aux data (no mouse: not wired)
I8042_CTR_SYSFLAG = 0x04    # system flag, mirrored in the status register
I8042_CTR_KBDDIS = 0x10     # keyboard interface disabled
I8042_CTR_AUXDIS = 0x20     # aux interface disabled
I8042_CTR_XLATE = 0x40      # translate scan codes to set 1
I8042_CTR_RESET = I8042_CTR_KBDINT | I8042_CTR_SYSFLAG | I8042_CTR_XLATE

# Output port (read 0xD0 / write 0xD1).
I8042_OUT_RESET = 0x01      # CPU reset line, active low: 0 resets the CPU
I8042_OUT_A20 = 0x02        # A20 gate (not modelled: KVM memory has A20 on)
I8042_OUT_OBF = 0x10        # output buffer full (IRQ 1), read-only here
I8042_OUT_AUXOBF = 0x20     # aux output buffer full (IRQ 12), read-only here
I8042_OUT_RESET_VALUE = I8042_OUT_RESET | I8042_OUT_A20

# Controller commands (written to 0x64).
I8042_CMD_READ_CTR = 0x20   # command byte to the output buffer
I8042_CMD_WRITE_CTR = 0x60  # next data byte is the command byte
I8042_CMD_AUX_DISABLE = 0xA7
I8042_CMD_AUX_ENABLE = 0xA8
I8042_CMD_AUX_TEST = 0xA9   # aux interface test: 0x00 = no error
I8042_CMD_SELF_TEST = 0xAA  # controller self-test: 0x55 = passed
I8042_CMD_KBD_TEST = 0xAB   # keyboard interface test: 0x00 = no error
I8042_CMD_KBD_DISABLE = 0xAD
I8042_CMD_KBD_ENABLE = 0xAE
I8042_CMD_READ_OUT = 0xD0   # output port to the output buffer
I8042_CMD_WRITE_OUT = 0xD1  # next data byte is the output port
I8042_CMD_KBD_LOOP = 0xD2   # next data byte comes back as keyboard data
I8042_CMD_AUX_LOOP = 0xD3   # next data byte comes back as aux data
I8042_CMD_AUX_SEND = 0xD4   # next data byte goes to the aux device
I8042_CMD_PULSE = 0xF0      # 0xF0-0xFF: pulse output port bits 3-0 that are 0

I8042_SELF_TEST_OK = 0x55
I8042_TEST_OK = 0x00

# Commands whose parameter comes as the next write to 0x60.
_I8042_WITH_PARAM = (I8042_CMD_WRITE_CTR, I8042_CMD_WRITE_OUT,
                     I8042_CMD_KBD_LOOP, I8042_CMD_AUX_LOOP,
                     I8042_CMD_AUX_SEND)

I8042_DATA = 0              # offset of port 0x60 in the 0x60-0x64 span
I8042_COMMAND = 4           # offset of port 0x64


class I8042Port:
    """One port of the 8042 (SIZE 1), for the wiring to register alone.

    Wider accesses use the low byte; the other bytes belong to the next
    ports (not this device) and read as 0xFF.
    """

    SIZE = 1

    def __init__(self, controller, offset):
        self.controller = controller
        self.offset = offset

    def read(self, offset, size):
        if offset != 0 or size < 1:
            return _mask(max(1, min(int(size), 8)))
        return (self.controller.read(self.offset, 1)
                | (_mask(min(size, 8)) & ~0xFF))

    def write(self, offset, size, value):
        if offset == 0 and size >= 1:
            self.controller.write(self.offset, 1, value & 0xFF)

    def check(self):
        return self.controller.check()


class I8042:
    """The 8042 keyboard controller with no keyboard or mouse attached.

    It answers controller commands, resets the CPU (``on_reset()``) through
    command 0xFE or an output-port write with bit 0 clear, and drives ``irq``
    (IRQ 1) while a byte waits and the command byte enables it.  Bytes meant
    for the keyboard or the mouse get no answer (nothing is plugged in), as
    a guest's driver then finds after its timeout.  The output buffer holds
    one byte; a new reply replaces an unread one.

    ``SIZE`` spans 0x60-0x64 for a harness that maps the controller as one
    range; the PC wiring registers ``data_port`` (0x60) and ``command_port``
    (0x64) instead, because 0x61 is the PIT model's port B.  Offsets 1-3 of
    the span are not decoded: reads give 0xFF, writes are dropped.
    """

    SIZE = 5

    def __init__(self, on_reset=None, irq=None):
        self.on_reset = on_reset
        self.irq = irq if irq is not None else IrqLine()
        self.data_port = I8042Port(self, I8042_DATA)
        self.command_port = I8042Port(self, I8042_COMMAND)
        self.reset_requests = 0     # CPU resets the guest asked for
        self.dropped = 0            # bytes for devices that are not there
        self.reset()

    def reset(self):
        """Power-on state, with the command byte a BIOS would leave."""
        self.ctr = I8042_CTR_RESET
        self.outport = I8042_OUT_RESET_VALUE
        self.outb = 0               # output buffer contents
        self.obf = False            # output buffer full
        self.aux = False            # ... with aux-device data
        self.cmd_last = False       # last write went to 0x64
        self.pending = 0            # command waiting for its parameter
        self._update_irq()

    def _update_irq(self):
        """The one recompute point for IRQ 1."""
        self.irq.set(self.obf and not self.aux
                     and self.ctr & I8042_CTR_KBDINT)

    def status(self):
        value = I8042_STR_KEYLOCK | (self.ctr & I8042_CTR_SYSFLAG)
        if self.obf:
            value |= I8042_STR_OBF
        if self.obf and self.aux:
            value |= I8042_STR_AUXDATA
        if self.cmd_last:
            value |= I8042_STR_CMDDAT
        return value

    def read(self, offset, size):
        value = 0
        for i in range(max(1, min(int(size), 8))):
            value |= self._read_byte(offset + i) << (8 * i)
        return value

    def _read_byte(self, offset):
        if offset == I8042_COMMAND:
            return self.status()
        if offset != I8042_DATA:
            return 0xFF
        # Reading empties the buffer; the byte itself stays readable.
        self.obf = self.aux = False
        self._update_irq()
        return self.outb

    def write(self, offset, size, value):
        for i in range(max(1, min(int(size), 8))):
            byte = (int(value) >> (8 * i)) & 0xFF
            if offset + i == I8042_DATA:
                self._write_data(byte)
            elif offset + i == I8042_COMMAND:
                self._command(byte)
        self._update_irq()

    def _reply(self, byte, aux=False):
        self.outb, self.obf, self.aux = byte & 0xFF, True, aux

    def _command(self, cmd):
        self.cmd_last = True
        self.pending = 0
        if cmd in _I8042_WITH_PARAM:
            self.pending = cmd
        elif cmd == I8042_CMD_READ_CTR:
            self._reply(self.ctr)
        elif cmd == I8042_CMD_READ_OUT:
            out = self.outport & ~(I8042_OUT_OBF | I8042_OUT_AUXOBF)
            if self.obf:
                out |= I8042_OUT_AUXOBF if self.aux else I8042_OUT_OBF
            self._reply(out)
        elif cmd == I8042_CMD_SELF_TEST:
            self._reply(I8042_SELF_TEST_OK)
        elif cmd in (I8042_CMD_KBD_TEST, I8042_CMD_AUX_TEST):
            self._reply(I8042_TEST_OK)
        elif cmd in (I8042_CMD_KBD_DISABLE, I8042_CMD_KBD_ENABLE):
            self._set_ctr_bit(I8042_CTR_KBDDIS,
                              cmd == I8042_CMD_KBD_DISABLE)
        elif cmd in (I8042_CMD_AUX_DISABLE, I8042_CMD_AUX_ENABLE):
            self._set_ctr_bit(I8042_CTR_AUXDIS,
                              cmd == I8042_CMD_AUX_DISABLE)
        elif cmd >= I8042_CMD_PULSE:
            # A 0 in bit 0 pulses the reset line (0xFE: Linux reboot=k).
            if not cmd & I8042_OUT_RESET:
                self._request_reset()
        else:
            self.dropped += 1       # a command this 8042 does not know

    def _set_ctr_bit(self, bit, on):
        self.ctr = (self.ctr | bit) if on else (self.ctr & ~bit)

    def _write_data(self, byte):
        self.cmd_last = False
        cmd, self.pending = self.pending, 0
        if cmd == I8042_CMD_WRITE_CTR:
            self.ctr = byte
        elif cmd == I8042_CMD_WRITE_OUT:
            self.outport = byte & ~(I8042_OUT_OBF | I8042_OUT_AUXOBF)
            if not byte & I8042_OUT_RESET:
                self._request_reset()
        elif cmd == I8042_CMD_KBD_LOOP:
            self._reply(byte)
        elif cmd == I8042_CMD_AUX_LOOP:
            self._reply(byte, aux=True)
        else:
            self.dropped += 1       # to the keyboard or mouse: none attached

    def _request_reset(self):
        self.reset_requests += 1
        if self.on_reset is not None:
            self.on_reset()

    def state(self):
        return {'version': 1, 'ctr': self.ctr, 'outport': self.outport,
                'outb': self.outb, 'obf': self.obf, 'aux': self.aux,
                'cmd_last': self.cmd_last, 'pending': self.pending,
                'reset_requests': self.reset_requests,
                'dropped': self.dropped}

    @classmethod
    def from_state(cls, state, on_reset=None, irq=None):
        check_state_version('I8042', state)
        dev = cls()
        for name in ('ctr', 'outport', 'outb', 'pending'):
            setattr(dev, name, int(state[name]) & 0xFF)
        for name in ('obf', 'aux', 'cmd_last'):
            setattr(dev, name, bool(state[name]))
        dev.reset_requests = state['reset_requests']
        dev.dropped = state['dropped']
        # Attach the caller's wiring only now, so it sees no power-on glitch.
        dev.on_reset = on_reset
        dev.irq = irq if irq is not None else IrqLine()
        dev._update_irq()
        return dev

    def check(self):
        problems = []
        for name in ('ctr', 'outport', 'outb'):
            if not 0 <= getattr(self, name) <= 0xFF:
                problems.append(f'{name} {getattr(self, name)!r} not a byte')
        if self.pending not in (0,) + _I8042_WITH_PARAM:
            problems.append(f'pending command {self.pending:#x} takes no'
                            ' parameter')
        if self.aux and not self.obf:
            problems.append('aux data flagged with the output buffer empty')
        if self.outport & (I8042_OUT_OBF | I8042_OUT_AUXOBF):
            problems.append('stored output port holds buffer-full bits')
        want = bool(self.obf and not self.aux
                    and self.ctr & I8042_CTR_KBDINT)
        if bool(self.irq.level) != want:
            problems.append(f'IRQ 1 is {self.irq.level}, expected {int(want)}')
        return problems


# --------------------------------------------------------------------------
# isa-debug-exit
# --------------------------------------------------------------------------

class DebugExit:
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
        status = ((int(value) & _mask(min(int(size), 8))) << 1) | 1
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


# --------------------------------------------------------------------------
# POST code port
# --------------------------------------------------------------------------

class PostCode:
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
            return _mask(size)
        return self.last | (_mask(size) & ~0xFF)

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


# --------------------------------------------------------------------------
# PCI configuration mechanism #1 and the PIIX reset control register
# --------------------------------------------------------------------------

PCI_CONFIG_ADDRESS = 0      # 0xCF8: dword, the configuration address
PIIX_RCR = 1                # 0xCF9: byte, the PIIX Reset Control Register
PCI_CONFIG_DATA = 4         # 0xCFC-0xCFF: the addressed configuration dword

PCI_CONFIG_ENABLE = 0x80000000    # bit 31: configuration space mapping on
PCI_CONFIG_ADDRESS_MASK = 0xFFFFFFFC   # bits 1:0 are reserved, read 0

PIIX_RCR_SRST = 0x02        # system reset: 1 hard (CPURST#), 0 soft (INIT)
PIIX_RCR_RCPU = 0x04        # reset CPU: 0 to 1 starts the reset SRST picks


class PciConfig:
    """Ports 0xCF8-0xCFF: PCI configuration mechanism #1 on an empty bus.

    * A dword access at 0xCF8 reaches CONFIG_ADDRESS, which reads back what
      was written with bits 1:0 as 0.
    * Narrower (or unaligned) accesses at 0xCF8-0xCFB are ordinary I/O
      cycles, as on a PIIX/i440FX, where the host bridge claims only dword
      accesses: the byte at 0xCF9 is the PIIX Reset Control Register, and
      0xCF8, 0xCFA and 0xCFB read 0xFF (nothing decodes them) and ignore
      writes.
    * RCR: writing RCPU (bit 2) resets; SRST (bit 1) chooses a hard reset
      (Linux's reboot=pci writes bit 1, then bits 1 and 2).  A soft reset
      (INIT to the CPU) calls ``on_reset()`` too, as QEMU does, because a
      guest asking for it expects to start over.  RCPU reads back 0 (the
      reset happened); SRST reads back as written.
    * CONFIG_DATA reads all ones for every bus, device and function (no
      device answers, as for an empty slot), whatever CONFIG_ADDRESS holds;
      writes are ignored.
    """

    SIZE = 8

    def __init__(self, on_reset=None):
        self.on_reset = on_reset
        self.reset_requests = 0
        self.reset()

    def reset(self):
        self.config_address = 0
        self.rcr = 0

    def read(self, offset, size):
        if offset == PCI_CONFIG_ADDRESS and size == 4:
            return self.config_address
        value = 0
        for i in range(max(1, min(int(size), 8))):
            byte = self.rcr if offset + i == PIIX_RCR else 0xFF
            value |= byte << (8 * i)
        return value

    def write(self, offset, size, value):
        if offset == PCI_CONFIG_ADDRESS and size == 4:
            self.config_address = int(value) & PCI_CONFIG_ADDRESS_MASK
            return
        for i in range(max(1, min(int(size), 8))):
            if offset + i == PIIX_RCR:
                self._write_rcr((int(value) >> (8 * i)) & 0xFF)

    def _write_rcr(self, byte):
        self.rcr = byte & PIIX_RCR_SRST
        if byte & PIIX_RCR_RCPU:
            self.reset_requests += 1
            if self.on_reset is not None:
                self.on_reset()

    def state(self):
        return {'version': 1, 'config_address': self.config_address,
                'rcr': self.rcr, 'reset_requests': self.reset_requests}

    @classmethod
    def from_state(cls, state, on_reset=None):
        check_state_version('PciConfig', state)
        dev = cls(on_reset=on_reset)
        dev.config_address = (int(state['config_address'])
                              & PCI_CONFIG_ADDRESS_MASK)
        dev.rcr = int(state['rcr']) & PIIX_RCR_SRST
        dev.reset_requests = state['reset_requests']
        return dev

    def check(self):
        problems = []
        if self.config_address & ~PCI_CONFIG_ADDRESS_MASK:
            problems.append(f'CONFIG_ADDRESS {self.config_address:#x} has'
                            ' reserved bits or is wider than 32 bits')
        if self.rcr & ~PIIX_RCR_SRST:
            problems.append(f'RCR {self.rcr:#x} keeps more than SRST')
        return problems


# --------------------------------------------------------------------------
# QEMU fw_cfg (traditional I/O interface)
# --------------------------------------------------------------------------

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


class FwCfg:
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
