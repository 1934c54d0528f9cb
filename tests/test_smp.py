"""Several vCPUs: the guest starts its APs as on a PC, with INIT and a
startup IPI through the (in-kernel) local APIC, and they run at once."""

import unittest

import kvmlite
from devices.console import MemoryBackend
from tests.guest import kvm, requires_kvm
from tools.asm import assemble_with_labels

FLAGS = 0x30000             # one byte per AP, set by the AP when it runs
AP_CODE = 0x20000           # SIPI vector 0x20: the AP starts in real mode at 2000:0000
BSP_CODE = 0x100000

BSP = r'''
bits 64
start:
    mov rbx, 0xfee00000         ; the local APIC (xAPIC MMIO)
    mov dword [rbx + 0xf0], 0x1ff   ; SVR: APIC software-enabled
    mov r12d, 1                 ; next AP's APIC id
next_ap:
    cmp r12d, CPUS
    jae all_started
    mov eax, r12d
    shl eax, 24
    mov dword [rbx + 0x310], eax        ; ICR high: destination
    mov dword [rbx + 0x300], 0x4500     ; INIT, assert
    mov dword [rbx + 0x310], eax
    mov dword [rbx + 0x300], 0x4620     ; startup IPI, vector 0x20
wait_ap:                        ; no count of turns: how many an AP's start takes
    cmp byte [FLAGS + r12], 0   ; depends on the host's load and on whether
    jne ap_up                   ; this loop is emulated; the run's timeout is
    pause                       ; the hang guard
    jmp wait_ap
ap_up:
    inc r12d
    jmp next_ap
all_started:
    mov dx, 0x3f8
    mov al, 'B'
    out dx, al
    mov al, 10
    out dx, al
    mov al, 0x10
    out 0xf4, al                ; status 0x21
    hlt
'''

AP = r'''
bits 16
ap_start:
    mov ax, 0x3000
    mov ds, ax
    mov eax, 1
    cpuid                       ; EBX[31:24]: this CPU's initial APIC id
    shr ebx, 24
    mov byte [bx], 1            ; FLAGS + id
    cli
    hlt
'''


@requires_kvm
class ApStartupTest(unittest.TestCase):
    def run_smp(self, mode, cpus):
        con = MemoryBackend()
        with kvmlite.Machine(mem_size=16 << 20, cpus=cpus, irqchip=mode, console=con,
                             kvm=kvm()) as m:
            bsp, _ = assemble_with_labels(BSP, bits=64, origin=BSP_CODE,
                                          symbols={'CPUS': cpus, 'FLAGS': FLAGS})
            ap, _ = assemble_with_labels(AP, bits=16, origin=0)
            m.vm.write(BSP_CODE, bsp)
            m.vm.write(AP_CODE, ap)
            kvmlite.setup_long_mode(m.vm.vcpus[0], m.vm, BSP_CODE)
            result = m.run(timeout=60)
            flags = m.vm.read(FLAGS, cpus)
        return result, bytes(con.output), flags

    def test_bsp_starts_every_ap_with_init_and_sipi(self):
        for mode in ('split', 'kernel'):
            with self.subTest(mode=mode):
                result, out, flags = self.run_smp(mode, 3)
                # APs 1 and 2 ran, each its own id
                self.assertEqual(flags, b'\x00\x01\x01', f'an AP never ran: {result.reason}')
                self.assertEqual(result.status, 0x21, result.reason)
                self.assertEqual(out, b'B\n')

    def test_more_than_one_vcpu_needs_a_local_apic(self):
        with self.assertRaisesRegex(ValueError, 'local APIC'):
            kvmlite.Machine(cpus=2, irqchip='user', kvm=kvm())


if __name__ == '__main__':
    unittest.main()
