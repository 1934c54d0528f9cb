"""PCI configuration mechanism #1 on an empty bus, with the PIIX reset
control register.

Follows the PCI Local Bus Specification 3.0, section 3.2.2.3.2
(configuration mechanism #1), and the Intel 82371FB/SB (PIIX/PIIX3)
datasheet's Reset Control Register at 0xCF9.

====== ====================== ============================================
port   object                 what lives there
====== ====================== ============================================
0xCF8  ``PciConfig``          CONFIG_ADDRESS (dword); 0xCF9 byte: PIIX RCR
0xCFC  ``PciConfig``          CONFIG_DATA: no devices, reads all ones
====== ====================== ============================================
"""

from . import Device, check_state_version

__all__ = ['PciConfig']

PCI_CONFIG_ADDRESS = 0      # 0xCF8: dword, the configuration address
PIIX_RCR = 1                # 0xCF9: byte, the PIIX Reset Control Register
PCI_CONFIG_DATA = 4         # 0xCFC-0xCFF: the addressed configuration dword

PCI_CONFIG_ENABLE = 0x80000000    # bit 31: configuration space mapping on
PCI_CONFIG_ADDRESS_MASK = 0xFFFFFFFC   # bits 1:0 are reserved, read 0

PIIX_RCR_SRST = 0x02        # system reset: 1 hard (CPURST#), 0 soft (INIT)
PIIX_RCR_RCPU = 0x04        # reset CPU: 0 to 1 starts the reset SRST picks


class PciConfig(Device):
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
