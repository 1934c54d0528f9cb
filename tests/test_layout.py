"""The platform description (tools/layout.py) is the one place the PC's
numbers live: change one entry and the wiring, the MP/ACPI tables, the e820
map and the demo guest all follow."""

import struct
import unittest

import kvmlite
from devices.console import MemoryBackend
from tests.test_boot import FakeMem, make_bzimage
from tools import boot, demo, platform_tables
from tools.layout import E820_RAM, E820_RESERVED, PC, Hole

MiB, GiB = 1 << 20, 1 << 30


def _tables(mem, rsdp):
    """{signature: bytes} of the ACPI tables the XSDT at ``rsdp`` lists."""
    xsdt = struct.unpack_from('<Q', mem.read(rsdp + 24, 8))[0]
    length = struct.unpack_from('<I', mem.read(xsdt + 4, 4))[0]
    out = {}
    for (addr,) in struct.iter_unpack('<Q', mem.read(xsdt + 36, length - 36)):
        size = struct.unpack_from('<I', mem.read(addr + 4, 4))[0]
        table = mem.read(addr, size)
        out[table[:4]] = table
    return out


def _madt_entries(madt):
    pos, found = 44, []
    while pos < len(madt):
        found.append(madt[pos:pos + madt[pos + 1]])
        pos += madt[pos + 1]
    return found


def _mp_entries(mem, mp):
    config = struct.unpack_from('<I', mem.read(mp + 4, 4))[0]
    length, count = struct.unpack_from('<H', mem.read(config + 4, 2))[0], \
        struct.unpack_from('<H', mem.read(config + 34, 2))[0]
    body, pos, out = mem.read(config + 44, length - 44), 0, []
    for _ in range(count):
        size = 20 if body[pos] == 0 else 8
        out.append(body[pos:pos + size])
        pos += size
    return out, mem.read(config, 44)


class DescriptionTest(unittest.TestCase):
    def test_changing_one_device_leaves_the_original_alone(self):
        moved = PC.with_device('com1', irq=5)
        self.assertEqual(moved.device('com1').irq, 5)
        self.assertEqual(PC.device('com1').irq, 4)
        self.assertEqual([s.name for s in moved.devices], [s.name for s in PC.devices])

    def test_an_unknown_device_name_says_which_there_are(self):
        with self.assertRaisesRegex(KeyError, 'com1'):
            PC.device('hpet')

    def test_e820_follows_the_holes_and_the_ram_split(self):
        ram = PC.ram_regions(4 * GiB)
        self.assertEqual(ram, [(0, 3 * GiB), (4 * GiB, 1 * GiB)])
        low = PC.replace(low_ram_max=2 * GiB)
        self.assertEqual(low.ram_regions(3 * GiB), [(0, 2 * GiB), (4 * GiB, 1 * GiB)])
        ebda = PC.replace(holes=(Hole('ebda', 0x9F000, 0xA0000, E820_RESERVED, 'EBDA'),)
                          + PC.holes[1:])
        self.assertEqual(ebda.e820([(0, 64 * MiB)])[:2],
                         [(0, 0x9F000, E820_RAM), (0x9F000, 0x1000, E820_RESERVED)])

    def test_a_loaders_e820_map_is_the_platforms(self):
        # the bzImage loader's zero-page e820 table for a platform with a bigger EBDA
        ebda = PC.replace(holes=(Hole('ebda', 0x98000, 0xA0000, E820_RESERVED, 'EBDA'),)
                          + PC.holes[1:])
        mem = FakeMem(64 * MiB)
        boot.load_bzimage(make_bzimage(), mem, platform=ebda)
        n = mem.u('<B', boot.BOOT_INFO + boot.ZP_E820_ENTRIES)[0]
        table = [mem.u('<QQI', boot.BOOT_INFO + boot.ZP_E820_TABLE + 20 * i) for i in range(n)]
        self.assertEqual(table, ebda.e820(mem.ram))
        self.assertIn((0, 0x98000, E820_RAM), table)
        self.assertNotEqual(table, PC.e820(mem.ram))

    def test_tables_follow_the_ioapic_address_and_an_irq_override(self):
        moved = PC.with_device('ioapic', mmio=(('', 0xFEC10000, 'IOAPIC'),)).replace(
            isa_overrides={0: 2, 5: 20})
        mem = FakeMem(16 * MiB)
        t = platform_tables.write_platform_tables(mem, 2, platform=moved)
        madt = _tables(mem, t.rsdp)[b'APIC']
        entries = _madt_entries(madt)
        ioapics = [struct.unpack_from('<BBBxII', e) for e in entries if e[0] == 1]
        self.assertEqual(ioapics, [(1, 12, 2, 0xFEC10000, 0)])
        overrides = [struct.unpack_from('<BBBBIH', e)[3:5] for e in entries if e[0] == 2]
        self.assertIn((0, 2), overrides)
        self.assertIn((5, 20), overrides)
        mp, header = _mp_entries(mem, t.mp)
        self.assertEqual([struct.unpack_from('<BBBBI', e)[4] for e in mp if e[0] == 2], [0xFEC10000])
        routes = {e[5]: e[7] for e in mp if e[0] == 3}           # source IRQ -> IOAPIC pin
        self.assertEqual((routes[0], routes[5], routes[4]), (2, 20, 4))
        self.assertNotIn(2, routes)                               # the cascade


@unittest.skipIf(kvmlite.kvm_unavailable(), 'needs /dev/kvm')
class WiringFollowsTest(unittest.TestCase):
    def run_demo(self, platform, irqchip='split'):
        con = MemoryBackend()
        with kvmlite.Machine(mem_size=32 * MiB, irqchip=irqchip, console=con,
                             platform=platform) as m:
            demo.load(m)
            result = m.run(timeout=120)
            buses = {name: m.vm.pio.find(base) for name, base in
                     (('com1', platform.device('com1').pio[0][1]),)}
            ioapic = m.vm.mmio.find(platform.ioapic_addr)
        return result, con.output.decode(), buses, ioapic

    def test_com1_on_another_irq_interrupts_the_demo_there(self):
        moved = PC.with_device('com1', irq=5)
        for mode, route in (('split', 'IOAPIC pin 5 -> vector 0x35'),
                            ('user', 'PIC IRQ 5 -> vector 0x25')):
            with self.subTest(mode=mode):
                result, out, _, _ = self.run_demo(moved, mode)
                self.assertEqual(result.status, kvmlite.EXIT_OK, out)
                self.assertIn(f'THR-empty interrupts via {route}', out)

    def test_the_ioapic_elsewhere_is_wired_there_and_the_demo_finds_it(self):
        moved = PC.with_device('ioapic', mmio=(('', 0xFEC10000, 'IOAPIC'),))
        result, out, _, ioapic = self.run_demo(moved)
        self.assertEqual(result.status, kvmlite.EXIT_OK, out)
        self.assertEqual(ioapic[1:], (0xFEC10000, 'IOAPIC'))
        self.assertIn('via IOAPIC pin 2 -> vector 0x30', out)

    def test_kernel_mode_refuses_an_ioapic_kvm_cannot_move(self):
        moved = PC.with_device('ioapic', mmio=(('', 0xFEC10000, 'IOAPIC'),))
        with self.assertRaisesRegex(ValueError, 'in-kernel IOAPIC sits at 0xfec00000'):
            kvmlite.Machine(mem_size=8 * MiB, irqchip='kernel', platform=moved)

    def test_every_device_of_the_platform_is_on_its_bus(self):
        with kvmlite.Machine(mem_size=8 * MiB) as m:
            for slot in PC.devices:
                self.assertIs(m.devices[slot.name], getattr(m, slot.name))
                for attr, base, label in slot.pio:
                    self.assertEqual(m.vm.pio.find(base)[1:], (base, label))
                for attr, base, label in slot.mmio:
                    self.assertEqual(m.vm.mmio.find(base)[1:], (base, label))


if __name__ == '__main__':
    unittest.main()
