"""The PC that kvmlite builds, described once: memory map, ports, MMIO, IRQs.

One plain value, :data:`PC`, says where everything sits. The board
(``tools/pc.py``) wires its devices from it, the MP and ACPI tables
(``tools/platform_tables.py``) describe it to the guest, and the loaders
(``tools/boot.py``) derive the e820 map and the areas an image may not
overlap from it. Nothing else writes these numbers down: to move the IOAPIC or
give COM1 another IRQ, change one entry (``PC.with_device('com1', irq=3)``,
``PC.replace(lapic_addr=...)``) and hand the result to
``Machine(platform=...)``; the wiring, the tables and the e820 map follow.

Sources: the IBM PC/AT Technical Reference (the I/O port map, the ISA IRQ
assignments, the interrupt vector table and BIOS data area at 0-0x4FF),
the Intel MultiProcessor Specification 1.4, chapter 3 and section 5.1 (the
default APIC addresses, IRQ 0 on IOAPIC pin 2), the ACPI specification 6.x,
section 15 (the e820 address range types), and the KVM API text for
KVM_SET_IDENTITY_MAP_ADDR (a page Intel's VMX needs, kept out of RAM).
"""

from collections import namedtuple

__all__ = ['Platform', 'Slot', 'Hole', 'PC', 'E820_RAM', 'E820_RESERVED']

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# e820 / multiboot / PVH memory types (they agree on these two)
E820_RAM = 1                      # usable RAM
E820_RESERVED = 2                 # reserved, not for the OS

#: One device on the board.
#:
#: ``name``: how the board and the user call it (``machine.devices[name]``).
#: ``part``: ``'module.Class'`` in ``devices/``.
#: ``pio`` / ``mmio``: ``(attribute, base, label)`` for each range it puts on
#: the bus; attribute '' is the device itself, another names a part of it
#: (the PIC pair's ``master``), and the range's size is that object's SIZE.
#: ``irq``: its ISA IRQ, or None. ``modes``: the irqchip modes in which this
#: Python model is on the board (KVM models the PIC, PIT and IOAPIC in
#: 'kernel' mode). ``coalesce``: write-only ranges KVM may buffer (KVM's
#: coalesced PIO/MMIO), drained before any other exit is served.
#: A part of the low megabyte that is not RAM: ``e820`` is its type in the
#: memory map, or None to leave it out (as a BIOS does for the VGA window).
Hole = namedtuple('Hole', 'name start end e820 what')

Slot = namedtuple('Slot', 'name part pio mmio irq modes coalesce',
                  defaults=((), (), None, ('split', 'user', 'kernel'), False))

_PYTHON_IRQCHIP = ('split', 'user')


class Platform:
    """A PC's description: plain data, copied with :meth:`replace`.

    ``low_ram_max``: RAM above it moves to ``high_ram_base`` (the MMIO hole
    lies between). ``holes``: the :class:`Hole` entries of the low megabyte,
    in address order. ``fixed_low``: :class:`Hole` entries for the parts of
    low RAM that real-mode code owns by convention (the interrupt vector
    table and the BIOS data area): RAM in the e820 map, but no image is
    loaded over them. ``lapic_addr``: where every local APIC sits
    (the board sets each vCPU's APIC base MSR to it); ``ioapic_pins``: the
    IOAPIC's inputs; its address is its slot's (:attr:`ioapic_addr`), its
    id one past the last CPU's APIC id (:meth:`ioapic_id`). ``isa_overrides``: ISA IRQ -> IOAPIC pin
    where they differ (IRQ 0 reaches pin 2); ``cascade_irq``: the 8259
    cascade, never raised; the ACPI SCI is the ``acpi_pm`` device's IRQ
    (:attr:`sci_irq`). ``identity_map_addr``:
    the page KVM_SET_IDENTITY_MAP_ADDR takes. ``devices``: the :class:`Slot`
    of every device, in wiring order (the IOAPIC first, so that the lines of
    the devices after it reach it).
    """

    _FIELDS = ('low_ram_max', 'high_ram_base', 'holes', 'fixed_low', 'lapic_addr', 'ioapic_pins',
               'isa_overrides', 'cascade_irq', 'identity_map_addr', 'devices')
    __slots__ = _FIELDS

    def __init__(self, **fields):
        missing = set(self._FIELDS) - set(fields)
        unknown = set(fields) - set(self._FIELDS)
        if missing or unknown:
            raise TypeError(f'Platform: missing {sorted(missing)}, unknown {sorted(unknown)}')
        for k, v in fields.items():
            setattr(self, k, v)

    def replace(self, **changes):
        """A copy with ``changes`` (field names as in the constructor)."""
        fields = {k: getattr(self, k) for k in self._FIELDS}
        fields.update(changes)
        return Platform(**fields)

    def device(self, name):
        for slot in self.devices:
            if slot.name == name:
                return slot
        raise KeyError(f'no device {name!r} on this platform: '
                       f'{", ".join(s.name for s in self.devices)}')

    def with_device(self, name, **changes):
        """A copy whose device ``name`` has ``changes`` (Slot fields); a new
        name appends a device, given as ``with_device(name, part=..., ...)``."""
        if any(s.name == name for s in self.devices):
            devices = tuple(s._replace(**changes) if s.name == name else s for s in self.devices)
        else:
            devices = self.devices + (Slot(name, **changes),)
        return self.replace(devices=devices)

    def without_device(self, name):
        self.device(name)
        return self.replace(devices=tuple(s for s in self.devices if s.name != name))

    def hole(self, name):
        return next(h for h in self.holes if h.name == name)

    @property
    def reserved_low(self):
        """``(start, end, what)`` spanning every hole of the low megabyte."""
        return (self.holes[0].start, self.holes[-1].end,
                'the reserved ' + '/'.join(h.name.upper() for h in self.holes) + ' area')

    @property
    def fixed_areas(self):
        """``(start, end, what)`` of each fixed area of the low megabyte (the
        :attr:`fixed_low` ones, then the holes), in address order, each named
        by what it holds and its short name."""
        return tuple((h.start, h.end, h.what if h.name.upper() in h.what
                      else f'{h.what} ({h.name.upper()})')
                     for h in sorted(self.fixed_low + self.holes))

    @property
    def sci_irq(self):
        """The ACPI SCI: the IRQ of the ``acpi_pm`` device (the PM1 and PM
        timer block), or None on a platform without one."""
        return next((s.irq for s in self.devices if s.name == 'acpi_pm'), None)

    @property
    def ioapic_addr(self):
        return self.device('ioapic').mmio[0][1]

    def ioapic_pin(self, irq):
        """The IOAPIC pin (GSI) an ISA IRQ reaches."""
        return self.isa_overrides.get(irq, irq)

    def ioapic_id(self, cpus):
        """The IOAPIC's APIC id: one past the CPUs' ids 0..cpus-1."""
        return cpus

    def ram_regions(self, mem_size):
        """``[(start, size)]`` of guest RAM for ``mem_size`` bytes."""
        low = min(mem_size, self.low_ram_max)
        return [(0, low)] + ([(self.high_ram_base, mem_size - low)] if mem_size > low else [])

    def e820(self, ram):
        """The BIOS-style memory map of RAM regions ``[(start, size)]``:
        sorted ``(addr, size, type)``, RAM minus the holes, the holes that
        have a type listed with it."""
        out = []
        for start, size in ram:
            pieces = [(start, start + size, E820_RAM)]
            for _, lo, hi, kind, _ in self.holes:
                cut = []
                for a, b, t in pieces:
                    if t != E820_RAM or hi <= a or b <= lo:
                        cut.append((a, b, t))
                        continue
                    cut += [(a, lo, t), (hi, b, t)]
                    if kind is not None:
                        cut.append((max(a, lo), min(b, hi), kind))
                pieces = cut
            out += [(a, b - a, t) for a, b, t in pieces if a < b]
        return sorted(out)


#: The PC kvmlite builds. Ports follow the PC/AT map; see each part's module.
PC = Platform(
    low_ram_max=3 * GiB,             # the 32-bit MMIO hole starts at 3 GiB
    high_ram_base=4 * GiB,
    holes=(
        Hole('ebda', 0x9FC00, 0xA0000, E820_RESERVED, 'the extended BIOS data area'),
        Hole('vga', 0xA0000, 0xF0000, None, 'the VGA window and option ROMs'),
        Hole('bios', 0xF0000, 0x100000, E820_RESERVED, 'the BIOS area (MP and ACPI tables)'),
    ),
    fixed_low=(
        Hole('ivt/bda', 0x0, 0x500, E820_RAM, 'the real-mode interrupt vector table and BIOS data area'),
    ),
    lapic_addr=0xFEE00000,
    ioapic_pins=24,
    isa_overrides={0: 2},            # the PIT's IRQ 0 reaches IOAPIC pin 2
    cascade_irq=2,
    identity_map_addr=0xFEFFC000,
    devices=(
        Slot('ioapic', 'ioapic.IoApic', mmio=(('', 0xFEC00000, 'IOAPIC'),), modes=('split',)),
        Slot('pic', 'pic.PicPair', pio=(('master', 0x20, '8259A master PIC'),
                                        ('slave', 0xA0, '8259A slave PIC'),
                                        ('elcr', 0x4D0, 'ELCR')), modes=_PYTHON_IRQCHIP),
        Slot('pit', 'pit.Pit', pio=(('', 0x40, '8254 PIT'),
                                    ('port61', 0x61, 'port B (PIT gate 2, speaker)')),
             irq=0, modes=_PYTHON_IRQCHIP),
        Slot('i8042', 'i8042.I8042', pio=(('data_port', 0x60, '8042 data'),
                                          ('command_port', 0x64, '8042 status/command')), irq=1),
        Slot('rtc', 'rtc.Rtc', pio=(('', 0x70, 'CMOS RTC'),), irq=8),
        Slot('post', 'post.PostCode', pio=(('', 0x80, 'POST code'),), coalesce=True),
        Slot('debug_exit', 'debug_exit.DebugExit', pio=(('', 0xF4, 'debug exit'),)),
        Slot('pci', 'pci.PciConfig', pio=(('', 0xCF8, 'PCI configuration (no devices)'),)),
        Slot('acpi_pm', 'acpi_pm.AcpiPm', pio=(('', 0x600, 'ACPI PM (PIIX4 layout)'),), irq=9),
        Slot('fw_cfg', 'fw_cfg.FwCfg', pio=(('', 0x510, 'fw_cfg'),)),
        Slot('com1', 'serial.Serial', pio=(('', 0x3F8, 'COM1 16550A'),), irq=4),
        Slot('com2', 'serial.Serial', pio=(('', 0x2F8, 'COM2 16550A'),), irq=3),
        Slot('com3', 'serial.Serial', pio=(('', 0x3E8, 'COM3 16550A'),), irq=4),
        Slot('com4', 'serial.Serial', pio=(('', 0x2E8, 'COM4 16550A'),), irq=3),
        # virtio-mmio (devices/virtio_mmio.py) between the local APIC and the
        # identity-map page; a slot without its --disk / --rng / --console-device
        # hvc is an empty placeholder (DeviceID 0) that Linux is not told about
        Slot('vda', 'virtio_blk.VirtioBlk', mmio=(('', 0xFEF00000, 'virtio-blk vda'),), irq=5),
        Slot('vdb', 'virtio_blk.VirtioBlk', mmio=(('', 0xFEF01000, 'virtio-blk vdb'),), irq=6),
        Slot('vdc', 'virtio_blk.VirtioBlk', mmio=(('', 0xFEF02000, 'virtio-blk vdc'),), irq=10),
        Slot('vdd', 'virtio_blk.VirtioBlk', mmio=(('', 0xFEF03000, 'virtio-blk vdd'),), irq=11),
        Slot('virtio_rng', 'virtio_rng.VirtioRng', mmio=(('', 0xFEF04000, 'virtio-rng'),), irq=12),
        Slot('virtio_console', 'virtio_console.VirtioConsole',
             mmio=(('', 0xFEF05000, 'virtio-console hvc0'),), irq=14),
    ),
)
