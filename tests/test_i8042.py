"""Tests for devices.i8042: the sequences Linux uses on the 8042's data and
command ports, snapshots mid-command, seeded random accesses."""

import json
import random
import unittest

from devices import IrqLine
from devices.i8042 import I8042

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


if __name__ == '__main__':
    unittest.main()
