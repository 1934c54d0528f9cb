"""Tests for devices.legacy: the sequences guests use on the 8042, the
debug-exit port, port 0x80, PCI mechanism #1 with the PIIX reset register
and fw_cfg; snapshots mid-operation; seeded random accesses."""

import json
import random
import struct
import unittest

from devices import IrqLine
from devices.legacy import DebugExit, FwCfg, I8042, PciConfig, PostCode

STR_OBF, STR_IBF, STR_SYS, STR_CMD = 0x01, 0x02, 0x04, 0x08
STR_KEYLOCK, STR_AUX = 0x10, 0x20


def round_trip(dev, **wiring):
    state = json.loads(json.dumps(dev.state()))
    assert state['version'] == 1
    return type(dev).from_state(state, **wiring)


class Kbc:
    """An 8042 on its two ports, driven like Linux's i8042 helpers."""

    def __init__(self):
        self.resets = 0
        self.irq = IrqLine()
        self.kbc = I8042(on_reset=self._reset, irq=self.irq)

    def _reset(self):
        self.resets += 1

    def inb(self, port):
        view = {0x60: self.kbc.data_port, 0x64: self.kbc.command_port}[port]
        return view.read(0, 1)

    def outb(self, value, port):
        view = {0x60: self.kbc.data_port, 0x64: self.kbc.command_port}[port]
        view.write(0, 1, value)

    def kb_wait(self):
        """Linux's kb_wait(): spin until the input buffer is empty."""
        for _ in range(16):
            if not self.inb(0x64) & STR_IBF:
                return True
        return False

    def command(self, cmd, params=(), replies=0):
        """Linux's i8042_command(): command, parameters, then replies."""
        self.kb_wait()
        self.outb(cmd, 0x64)
        for byte in params:
            self.kb_wait()
            self.outb(byte, 0x60)
        out = []
        for _ in range(replies):
            if not self.inb(0x64) & STR_OBF:
                raise AssertionError(f'no reply to {cmd:#x}')
            out.append(self.inb(0x60))
        return out


class I8042Tests(unittest.TestCase):

    def setUp(self):
        self.k = Kbc()

    def test_linux_reboot_k_pulses_the_reset_line_with_0xfe(self):
        # native_machine_emergency_restart(), BOOT_KBD.
        self.assertTrue(self.k.kb_wait())
        self.k.outb(0xFE, 0x64)
        self.assertEqual(self.k.resets, 1)

    def test_pulse_commands_without_bit_0_low_do_not_reset(self):
        for cmd in (0xFF, 0xFD, 0xF1):
            self.k.outb(cmd, 0x64)
        self.assertEqual(self.k.resets, 0)

    def test_output_port_write_with_bit_0_clear_resets(self):
        self.k.command(0xD1, params=[0xFE])
        self.assertEqual(self.k.resets, 1)
        self.assertEqual(self.k.command(0xD0, replies=1), [0xCE])

    def test_linux_a20_gate_sequence_does_not_reset(self):
        # arch/x86/boot/a20.c enable_a20_kbc(): D1, 0xDF, then 0xFF.
        self.k.command(0xD1, params=[0xDF])
        self.k.outb(0xFF, 0x64)
        self.assertEqual(self.k.resets, 0)
        self.assertEqual(self.k.command(0xD0, replies=1)[0] & 0x03, 0x03)

    def test_output_port_read_shows_buffer_full_bit(self):
        self.k.outb(0xD0, 0x64)
        self.k.outb(0xD0, 0x64)                      # a reply is waiting
        self.assertEqual(self.k.inb(0x60) & 0x10, 0x10)

    def test_self_test_and_interface_tests_answer(self):
        self.assertEqual(self.k.command(0xAA, replies=1), [0x55])
        self.assertEqual(self.k.command(0xAB, replies=1), [0x00])
        self.assertEqual(self.k.command(0xA9, replies=1), [0x00])

    def test_linux_controller_init_reads_and_writes_command_byte(self):
        while self.k.inb(0x64) & STR_OBF:            # i8042_flush()
            self.k.inb(0x60)
        ctr = self.k.command(0x20, replies=1)[0]
        self.assertEqual(ctr, 0x45)
        new = (ctr | 0x30) & ~0x03                   # ports off, no IRQs
        self.k.command(0x60, params=[new])
        self.assertEqual(self.k.command(0x20, replies=1), [new])

    def test_status_register_tracks_buffer_and_last_port(self):
        self.assertEqual(self.k.inb(0x64), STR_KEYLOCK | STR_SYS)
        self.k.outb(0x20, 0x64)
        self.assertEqual(self.k.inb(0x64),
                         STR_KEYLOCK | STR_SYS | STR_CMD | STR_OBF)
        self.k.inb(0x60)
        self.assertEqual(self.k.inb(0x64), STR_KEYLOCK | STR_SYS | STR_CMD)
        self.k.command(0x60, params=[0x40])          # system flag off
        self.assertEqual(self.k.inb(0x64), STR_KEYLOCK)

    def test_irq1_follows_a_full_buffer_when_enabled(self):
        self.k.outb(0xAA, 0x64)
        self.assertEqual(self.k.irq.level, 1)
        self.k.inb(0x60)
        self.assertEqual(self.k.irq.level, 0)
        self.k.command(0x60, params=[0x44])          # KBDINT off
        self.k.outb(0xAA, 0x64)
        self.assertTrue(self.k.inb(0x64) & STR_OBF)
        self.assertEqual(self.k.irq.level, 0)
        self.assertEqual(self.k.irq.raised, 1)

    def test_enabling_interrupts_with_a_byte_waiting_raises_irq1(self):
        self.k.command(0x60, params=[0x44])
        self.k.outb(0xAB, 0x64)
        self.k.outb(0x60, 0x64)
        self.k.outb(0x45, 0x60)
        self.assertEqual(self.k.irq.level, 1)

    def test_disable_and_enable_commands_flip_command_byte_bits(self):
        self.k.command(0xAD)
        self.k.command(0xA7)
        self.assertEqual(self.k.command(0x20, replies=1)[0] & 0x30, 0x30)
        self.k.command(0xAE)
        self.k.command(0xA8)
        self.assertEqual(self.k.command(0x20, replies=1)[0] & 0x30, 0x00)

    def test_aux_loop_returns_aux_data_without_irq1(self):
        self.k.command(0xD3, params=[0x5A])
        self.assertEqual(self.k.inb(0x64) & (STR_OBF | STR_AUX),
                         STR_OBF | STR_AUX)
        self.assertEqual(self.k.irq.level, 0)
        self.assertEqual(self.k.inb(0x60), 0x5A)
        self.assertEqual(self.k.command(0xD2, params=[0xA5], replies=1),
                         [0xA5])

    def test_bytes_for_absent_keyboard_and_mouse_get_no_answer(self):
        self.k.outb(0xFF, 0x60)                      # keyboard reset
        self.k.command(0xD4, params=[0xF2])          # to the mouse
        self.assertFalse(self.k.inb(0x64) & STR_OBF)
        self.assertEqual(self.k.kbc.dropped, 2)

    def test_port_views_have_one_port_and_pad_wide_reads(self):
        self.assertEqual(self.k.kbc.data_port.SIZE, 1)
        self.assertEqual(self.k.kbc.command_port.SIZE, 1)
        self.assertEqual(self.k.kbc.command_port.read(0, 2),
                         0xFF00 | STR_KEYLOCK | STR_SYS)
        self.assertEqual(self.k.kbc.read(1, 1), 0xFF)   # 0x61: not ours

    def test_state_round_trip_between_command_and_parameter(self):
        self.k.outb(0xAA, 0x64)                      # reply waiting, IRQ up
        self.k.outb(0x60, 0x64)                      # parameter pending
        irq = IrqLine()
        copy = round_trip(self.k.kbc, irq=irq)
        self.assertEqual(copy.state(), self.k.kbc.state())
        self.assertEqual(irq.level, 1)
        self.assertEqual(copy.check(), [])
        copy.command_port.write(0, 1, 0xAA)           # replaces pending
        copy.data_port.write(0, 1, 0x00)
        self.assertEqual(copy.ctr, 0x45)
        copy = round_trip(self.k.kbc)
        copy.data_port.write(0, 1, 0x00)
        self.assertEqual(copy.ctr, 0x00)

    def test_reset_restores_power_on_state(self):
        self.k.command(0x60, params=[0x00])
        self.k.outb(0xD1, 0x64)
        self.k.kbc.reset()
        self.assertEqual(self.k.command(0x20, replies=1), [0x45])
        self.assertEqual(self.k.kbc.pending, 0)

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(8042)
        kbc = I8042(irq=IrqLine())
        for step in range(20000):
            offset = rng.choice((0, 4, rng.randrange(-1, 7)))
            size = rng.choice((1, 1, 1, 2, 4))
            if rng.random() < 0.5:
                kbc.write(offset, size, rng.choice(
                    (rng.randrange(256), rng.randrange(0xD0, 0x100),
                     rng.getrandbits(32))))
            else:
                kbc.read(offset, size)
            self.assertEqual(kbc.check(), [], f'step {step}')
        self.assertGreater(kbc.reset_requests, 0)


class DebugExitTests(unittest.TestCase):

    def test_test_kernel_byte_write_exits_with_odd_status(self):
        # -device isa-debug-exit,iobase=0xf4,iosize=0x04; outb(0x10, 0xf4).
        codes = []
        dev = DebugExit(on_exit=codes.append)
        dev.write(0, 1, 0x10)
        self.assertEqual(codes, [0x21])
        dev.write(0, 1, 0x11)                       # failure, by convention
        self.assertEqual(codes[-1], 0x23)

    def test_wide_writes_at_any_port_use_the_whole_value(self):
        codes = []
        dev = DebugExit(on_exit=codes.append)
        dev.write(0, 4, 0x12345678)
        dev.write(2, 2, 0xABCD)
        dev.write(3, 1, 0x1FF)                      # masked to the byte
        self.assertEqual(codes, [0x2468ACF1, 0x1579B, 0x1FF])

    def test_reads_return_zero_as_in_qemu(self):
        dev = DebugExit()
        for size in (1, 2, 4):
            self.assertEqual(dev.read(0, size), 0)

    def test_state_round_trip(self):
        dev = DebugExit()
        dev.write(0, 1, 3)
        codes = []
        copy = round_trip(dev, on_exit=codes.append)
        self.assertEqual(copy.state(), dev.state())
        self.assertEqual(copy.last_status, 7)
        copy.write(0, 1, 0)
        self.assertEqual(codes, [1])

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0xF4)
        dev = DebugExit()
        for _ in range(2000):
            size = rng.choice((0, 1, 2, 4, 8))
            if rng.random() < 0.5:
                dev.write(rng.randrange(4), size, rng.getrandbits(64))
            else:
                dev.read(rng.randrange(4), size)
            self.assertEqual(dev.check(), [])


class PostCodeTests(unittest.TestCase):

    def test_writes_are_latched_counted_and_read_back(self):
        dev = PostCode()
        for code in (0x01, 0x55, 0xAA):
            dev.write(0, 1, code)
        self.assertEqual((dev.last, dev.count), (0xAA, 3))
        self.assertEqual(dev.read(0, 1), 0xAA)
        self.assertEqual(dev.read(0, 2), 0xFFAA)

    def test_wide_write_latches_the_low_byte(self):
        dev = PostCode()
        dev.write(0, 2, 0x1234)
        self.assertEqual(dev.read(0, 1), 0x34)

    def test_state_round_trip_and_reset(self):
        dev = PostCode()
        dev.write(0, 1, 0x42)
        copy = round_trip(dev)
        self.assertEqual(copy.state(), dev.state())
        copy.reset()
        self.assertEqual((copy.read(0, 1), copy.count), (0, 0))

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0x80)
        dev = PostCode()
        for _ in range(2000):
            if rng.random() < 0.5:
                dev.write(rng.randrange(-1, 2), rng.choice((1, 2, 4)),
                          rng.getrandbits(32))
            else:
                dev.read(rng.randrange(-1, 2), rng.choice((1, 2, 4)))
            self.assertEqual(dev.check(), [])


class PciConfigTests(unittest.TestCase):

    def setUp(self):
        self.resets = 0
        self.pci = PciConfig(on_reset=self._reset)

    def _reset(self):
        self.resets += 1

    def test_linux_type1_probe_sees_config_address_read_back(self):
        # arch/x86/pci/direct.c pci_check_type1().
        self.pci.write(3, 1, 0x01)                   # outb(0x01, 0xCFB)
        tmp = self.pci.read(0, 4)
        self.pci.write(0, 4, 0x80000000)
        self.assertEqual(self.pci.read(0, 4), 0x80000000)
        self.pci.write(0, 4, tmp)
        self.assertEqual(self.pci.read(0, 4), tmp)
        self.assertEqual(self.resets, 0)

    def test_config_address_reserved_bits_read_zero(self):
        self.pci.write(0, 4, 0xFFFFFFFF)
        self.assertEqual(self.pci.read(0, 4), 0xFFFFFFFC)

    def test_config_data_reads_all_ones_for_every_function(self):
        for bus, dev, fn in ((0, 0, 0), (0, 1, 0), (0, 31, 7), (255, 0, 0)):
            self.pci.write(0, 4, 0x80000000 | bus << 16 | dev << 11 | fn << 8)
            self.assertEqual(self.pci.read(4, 4), 0xFFFFFFFF)
            self.assertEqual(self.pci.read(6, 2), 0xFFFF)
            self.assertEqual(self.pci.read(5, 1), 0xFF)
        self.pci.write(4, 4, 0)                      # ignored
        self.assertEqual(self.pci.read(4, 4), 0xFFFFFFFF)

    def test_linux_reboot_pci_resets_on_the_second_write(self):
        # BOOT_CF9_FORCE, warm reboot: request hard reset, then do it.
        cf9 = self.pci.read(1, 1) & ~0x06
        self.pci.write(1, 1, cf9 | 0x02)
        self.assertEqual(self.resets, 0)
        self.assertEqual(self.pci.read(1, 1), 0x02)
        self.pci.write(1, 1, cf9 | 0x06)
        self.assertEqual(self.resets, 1)
        self.assertEqual(self.pci.read(1, 1), 0x02)  # RCPU reads back 0

    def test_soft_reset_request_also_resets(self):
        self.pci.write(1, 1, 0x04)
        self.assertEqual(self.resets, 1)

    def test_narrow_accesses_at_cf8_leave_config_address_alone(self):
        self.pci.write(0, 4, 0x80001000)
        self.pci.write(0, 2, 0x00FF)                 # RCR gets 0x00
        self.pci.write(2, 2, 0xFFFF)
        self.assertEqual(self.pci.read(0, 4), 0x80001000)
        self.assertEqual(self.pci.read(0, 2), 0x00FF)   # 0xCF8: nothing
        self.assertEqual(self.pci.read(2, 1), 0xFF)
        self.assertEqual(self.resets, 0)

    def test_word_write_reaches_rcr_through_its_byte_lane(self):
        self.pci.write(0, 2, 0x0600)
        self.assertEqual(self.resets, 1)

    def test_state_round_trip(self):
        self.pci.write(0, 4, 0x8000F810)
        self.pci.write(1, 1, 0x02)
        resets = []
        copy = round_trip(self.pci, on_reset=lambda: resets.append(1))
        self.assertEqual(copy.state(), self.pci.state())
        self.assertEqual(copy.read(0, 4), 0x8000F810)
        copy.write(1, 1, 0x06)
        self.assertEqual(resets, [1])

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0xCF8)
        pci = PciConfig()
        for _ in range(5000):
            offset, size = rng.randrange(-1, 9), rng.choice((1, 2, 4))
            if rng.random() < 0.5:
                pci.write(offset, size, rng.getrandbits(32))
            else:
                pci.read(offset, size)
            self.assertEqual(pci.check(), [])
        self.assertGreater(pci.reset_requests, 0)


def cfg_select(cfg, key):
    cfg.write(0, 2, key)                             # outw(key, 0x510)


def cfg_read(cfg, length):
    return bytes(cfg.read(1, 1) for _ in range(length))  # insb(0x511)


class FwCfgTests(unittest.TestCase):

    def setUp(self):
        self.cfg = FwCfg(ram_size=256 << 20, cpus=2,
                         cmdline=b'console=ttyS0 panic=-1')

    def test_seabios_detection_reads_signature_and_id(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')
        cfg_select(self.cfg, 0x0001)
        ident = struct.unpack('<I', cfg_read(self.cfg, 4))[0]
        self.assertEqual(ident, 1)                   # no DMA interface

    def test_ram_size_and_cpu_counts(self):
        cfg_select(self.cfg, 0x0003)
        self.assertEqual(struct.unpack('<Q', cfg_read(self.cfg, 8))[0],
                         256 << 20)
        cfg_select(self.cfg, 0x0005)
        self.assertEqual(struct.unpack('<H', cfg_read(self.cfg, 2))[0], 2)
        cfg_select(self.cfg, 0x000F)
        self.assertEqual(struct.unpack('<H', cfg_read(self.cfg, 2))[0], 2)

    def test_command_line_size_counts_the_nul(self):
        cfg_select(self.cfg, 0x0014)
        size = struct.unpack('<I', cfg_read(self.cfg, 4))[0]
        cfg_select(self.cfg, 0x0015)
        self.assertEqual(cfg_read(self.cfg, size),
                         b'console=ttyS0 panic=-1\0')

    def test_file_directory_lists_files_as_seabios_reads_it(self):
        self.assertEqual(self.cfg.add_file('etc/boot-fail-wait',
                                           b'\x05\0\0\0'), 0x20)
        self.assertEqual(self.cfg.add_file('opt/org.kvmlite/x', b'hello'),
                         0x21)
        cfg_select(self.cfg, 0x0019)
        count = struct.unpack('>I', cfg_read(self.cfg, 4))[0]
        found = {}
        for _ in range(count):
            size, select, _, name = struct.unpack(
                '>IHH56s', cfg_read(self.cfg, 64))
            found[name.rstrip(b'\0')] = (select, size)
        self.assertEqual(found, {b'etc/boot-fail-wait': (0x20, 4),
                                 b'opt/org.kvmlite/x': (0x21, 5)})
        cfg_select(self.cfg, 0x21)
        self.assertEqual(cfg_read(self.cfg, 5), b'hello')

    def test_empty_directory_has_count_zero(self):
        cfg_select(self.cfg, 0x0019)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_set_item_replaces_data_and_updates_file_sizes(self):
        select = self.cfg.add_file('opt/a', b'1')
        self.cfg.set_item(select, b'12345')
        self.cfg.set_item(0x0005, struct.pack('<H', 4))
        cfg_select(self.cfg, 0x0019)
        self.assertEqual(struct.unpack('>I', cfg_read(self.cfg, 8)[4:])[0], 5)
        cfg_select(self.cfg, 0x0005)
        self.assertEqual(cfg_read(self.cfg, 2), b'\x04\0')
        with self.assertRaises(ValueError):
            self.cfg.set_item(0x0019, b'')

    def test_add_file_refuses_duplicates_and_long_names(self):
        self.cfg.add_file('opt/a', b'')
        with self.assertRaises(ValueError):
            self.cfg.add_file('opt/a', b'')
        with self.assertRaises(ValueError):
            self.cfg.add_file('x' * 56, b'')

    def test_reads_past_the_end_return_zero_and_select_rewinds(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 6), b'QEMU\0\0')
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(cfg_read(self.cfg, 2), b'QE')

    def test_unknown_item_reads_zero(self):
        cfg_select(self.cfg, 0x0123)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_write_channel_bit_reads_the_same_item(self):
        cfg_select(self.cfg, 0x4000)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')

    def test_arch_local_items_are_a_separate_range(self):
        self.cfg.set_item(0x8003, b'arch')
        cfg_select(self.cfg, 0x8003)
        self.assertEqual(cfg_read(self.cfg, 4), b'arch')
        cfg_select(self.cfg, 0x8000)
        self.assertEqual(cfg_read(self.cfg, 4), b'\0\0\0\0')

    def test_data_writes_and_wide_reads_are_ignored(self):
        cfg_select(self.cfg, 0x0000)
        self.cfg.write(1, 1, ord('X'))
        self.assertEqual(self.cfg.read(1, 2), 0)
        self.assertEqual(self.cfg.read(0, 4), 0)
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')
        self.cfg.write(0, 4, 0x0001)                 # not a selector write
        self.assertEqual(cfg_read(self.cfg, 1), b'\0')
        self.assertEqual(self.cfg.ignored, 3)

    def test_byte_read_at_selector_port_reads_data_as_in_qemu(self):
        cfg_select(self.cfg, 0x0000)
        self.assertEqual(self.cfg.read(0, 1), ord('Q'))

    def test_state_round_trip_mid_read(self):
        self.cfg.add_file('opt/blob', bytes(range(100)))
        cfg_select(self.cfg, 0x20)
        cfg_read(self.cfg, 10)
        copy = round_trip(self.cfg)
        self.assertEqual(copy.state(), self.cfg.state())
        self.assertEqual(cfg_read(copy, 3), bytes((10, 11, 12)))
        self.assertEqual(copy.check(), [])
        cfg_select(copy, 0x0019)
        self.assertEqual(cfg_read(copy, 4), b'\0\0\0\1')

    def test_reset_clears_selection_but_keeps_items(self):
        cfg_select(self.cfg, 0x0003)
        cfg_read(self.cfg, 2)
        self.cfg.reset()
        self.assertEqual(cfg_read(self.cfg, 4), b'QEMU')

    def test_seeded_random_accesses_leave_check_empty(self):
        rng = random.Random(0x510)
        cfg = FwCfg(ram_size=1 << 30, cpus=4, cmdline='quiet')
        cfg.add_file('opt/one', b'1' * 70)
        keys = (0x0000, 0x0001, 0x0003, 0x0015, 0x0019, 0x0020, 0x4019,
                0x8000, 0xFFFF)
        for step in range(10000):
            offset, size = rng.randrange(-1, 3), rng.choice((1, 1, 2, 4))
            if rng.random() < 0.2:
                value = rng.choice(keys + (rng.getrandbits(16),))
                cfg.write(offset, size, value)
            else:
                cfg.read(offset, size)
            self.assertEqual(cfg.check(), [], f'step {step}')


if __name__ == '__main__':
    unittest.main()
