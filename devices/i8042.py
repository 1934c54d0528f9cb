"""The PC/AT keyboard controller: an Intel 8042 with no keyboard or mouse.

Follows the IBM Personal Computer AT Technical Reference (1984), "Keyboard
Controller" (the Intel 8042 with IBM's firmware): the status register, the
command byte, the controller commands and the output port.

Port map (the wiring registers each view at its port):

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0x60   ``I8042.data_port``    8042 data: output buffer / input buffer
0x61   (not here)             system control port B: the PIT model owns it
0x62   (nothing)              8042 on a PC/XT only (PPI port C); undecoded
0x63   (nothing)              8042 on a PC/XT only (PPI control); undecoded
0x64   ``I8042.command_port`` 8042 status (read) / command (write)
====== ====================== ============================================

The two port objects are views: reset, snapshot and check the ``I8042``.
"""

from . import Device, IrqLine, check_state_version, size_mask

__all__ = ['I8042', 'I8042Port']

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
            return size_mask(max(1, min(int(size), 8)))
        return (self.controller.read(self.offset, 1)
                | (size_mask(min(size, 8)) & ~0xFF))

    def write(self, offset, size, value):
        if offset == 0 and size >= 1:
            self.controller.write(self.offset, 1, value & 0xFF)

    def check(self):
        return self.controller.check()


class I8042(Device):
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
