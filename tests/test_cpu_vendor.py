"""The CPUID vendor a guest sees: ``Machine(cpu_vendor=...)`` and ``run
--cpu-vendor intel|amd|host``, presented as QEMU's ``-cpu host,vendor=``
does (the vendor string in leaves 0 and 0x80000000, and the few leaves that
differ by vendor; see kvmlite._set_vendor).

The guests ask at CPL0, where KVM answers CPUID from the vCPU's table on
every host (on kvm_pvm a CPL3 ``cpuid`` runs on the host CPU and shows the
host's vendor whatever the table says)."""

import os
import struct
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import kvmlite
from tests.guest import kvm, requires_kvm
from tests.pcguest import PASSED, STATUS_PASSED, run_guest
from tools.asm import assemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

VENDOR = r'''
; prints the vendor strings of leaf 0 and leaf 0x80000000, one a line
main:
    xor eax, eax
    call vendor
    mov eax, 0x80000000
    call vendor
    mov al, PASSED
    ret

vendor:                         ; eax = leaf: EBX, EDX, ECX as 12 characters
    cpuid
    mov [text], ebx
    mov [text + 4], edx
    mov [text + 8], ecx
    mov rsi, text
    call puts
    mov al, 10
    call putc
    ret

text: times 13 db 0
'''

# the same in real mode, as a flat binary for the command line
FLAT = r'''
bits 16
    xor eax, eax
    call vendor
    mov eax, 0x80000000
    call vendor
    mov al, 0x10
    out 0xf4, al
    cli
    hlt
vendor:
    cpuid
    mov [text], ebx
    mov [text + 4], edx
    mov [text + 8], ecx
    mov si, text
    mov dx, 0x3f8
    mov cx, 12
.next:
    lodsb
    out dx, al
    loop .next
    mov al, 10
    out dx, al
    ret
text: times 12 db 0
'''


def host_vendor():
    entry = next(e for e in kvm().supported_cpuid() if e.function == 0)
    return struct.pack('<III', entry.ebx, entry.edx, entry.ecx)


def leaf(entries, function, index=0):
    return next((e for e in entries if e.function == function and e.index == index), None)


@requires_kvm
class CpuidTableTest(unittest.TestCase):
    """What cpuid_entries gives KVM for each vendor."""

    def test_the_vendor_string_goes_in_leaf_0_and_0x80000000(self):
        for vendor, text in kvmlite.CPU_VENDORS.items():
            with self.subTest(vendor=vendor):
                entries = kvmlite.cpuid_entries(kvm(), vendor=vendor)
                for function in (0, 0x80000000):
                    e = leaf(entries, function)
                    self.assertEqual(struct.pack('<III', e.ebx, e.edx, e.ecx), text)
                host = kvmlite.cpuid_entries(kvm())
                self.assertEqual(leaf(entries, 0).eax, leaf(host, 0).eax)   # the leaf counts stay
                self.assertEqual(leaf(entries, 0x80000000).eax, leaf(host, 0x80000000).eax)

    def test_host_keeps_kvms_vendor(self):
        e = leaf(kvmlite.cpuid_entries(kvm()), 0)
        self.assertEqual(struct.pack('<III', e.ebx, e.edx, e.ecx), host_vendor())

    def test_vendor_specific_leaves(self):
        intel = kvmlite.cpuid_entries(kvm(), vendor='intel')
        amd = kvmlite.cpuid_entries(kvm(), vendor='amd')
        self.assertEqual(leaf(intel, 0x80000001).ecx & 2, 0)          # no CmpLegacy on Intel
        aliases = 0x0183F3FF
        self.assertEqual(leaf(amd, 0x80000001).edx & aliases, leaf(amd, 1).edx & aliases)
        for function in (2, 4):
            e = leaf(amd, function)
            if e is not None:
                self.assertEqual((e.eax, e.ebx, e.ecx, e.edx), (0, 0, 0, 0))

    def test_an_unknown_vendor_is_refused(self):
        with self.assertRaisesRegex(ValueError, "CPU vendor 'via': use 'host', 'intel' or 'amd'"):
            kvmlite.cpuid_entries(kvm(), vendor='via')


@requires_kvm
class GuestVendorTest(unittest.TestCase):
    def test_cpuid_in_the_guest_returns_the_chosen_vendor(self):
        for vendor in ('intel', 'amd', 'host'):
            text = host_vendor() if vendor == 'host' else kvmlite.CPU_VENDORS[vendor]
            for mode in ('split', 'kernel'):
                with self.subTest(vendor=vendor, mode=mode):
                    run = run_guest(VENDOR, mode, symbols={'PASSED': PASSED}, cpu_vendor=vendor)
                    self.assertEqual(run.output, text + b'\n' + text + b'\n', run.describe())
                    self.assertEqual(run.status, STATUS_PASSED, run.describe())

    def test_a_refusal_by_kvm_is_a_clear_value_error(self):
        # no vendor is refused by the KVMs this ran on; if KVM_SET_CPUID2 says
        # no, the Machine says which vendor and what to do
        refusal = kvmlite.KvmError(22, 'KVM_SET_CPUID2: Invalid argument')
        with mock.patch.object(kvmlite.Vcpu, 'set_cpuid2', side_effect=refusal):
            with self.assertRaisesRegex(ValueError, r'KVM refused CPUID with vendor intel on '
                                        r'this host \(.*\): run with --cpu-vendor host'):
                kvmlite.Machine(mem_size=4 << 20, cpu_vendor='intel', kvm=kvm())


@requires_kvm
class CliVendorTest(unittest.TestCase):
    def run_cli(self, *args):
        with tempfile.TemporaryDirectory() as d:
            kernel, console = os.path.join(d, 'flat'), os.path.join(d, 'com1')
            with open(kernel, 'wb') as f:
                f.write(assemble(FLAT, bits=16))
            p = subprocess.run([sys.executable, os.path.join(ROOT, 'kvmlite.py'), 'run', '-k',
                                kernel, '-m', '4', '--console', console, '--timeout', '30',
                                *args], capture_output=True, text=True, timeout=90,
                               stdin=subprocess.DEVNULL)
            output = b''
            if os.path.exists(console):
                with open(console, 'rb') as f:
                    output = f.read()
        return p, output

    def test_run_cpu_vendor_sets_what_the_guest_reads(self):
        for vendor, text in (('intel', b'GenuineIntel'), ('amd', b'AuthenticAMD'),
                             ('host', host_vendor())):
            with self.subTest(vendor=vendor):
                p, output = self.run_cli('--cpu-vendor', vendor)
                self.assertEqual((p.returncode, output), (0x21, text + b'\n' + text + b'\n'),
                                 p.stderr)

    def test_a_bad_vendor_is_one_line_and_status_2(self):
        p, _ = self.run_cli('--cpu-vendor', 'cyrix')
        self.assertEqual(p.returncode, 2)
        self.assertEqual(p.stderr.strip().splitlines(),
                         ["kvmlite: argument --cpu-vendor: invalid choice: 'cyrix' "
                          "(choose from 'host', 'intel', 'amd')"])


if __name__ == '__main__':
    unittest.main()
