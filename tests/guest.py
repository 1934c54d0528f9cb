"""Helpers for tests that run guest code under real KVM (/dev/kvm).

``Guest(code, mode=...)`` makes a VM with RAM at guest-physical 0, one or
more vCPUs in real, 32-bit protected or 64-bit long mode (or 64-bit user
mode, CPL3), and ``code`` assembled by ``tools.asm`` at :data:`CODE`.
``guest.expect(cls, **fields)`` runs a vCPU once and fails the test with the
whole exit (and the guest's registers) when the exit is not the one asked
for. Tests that need KVM are decorated with :data:`requires_kvm`: it skips
them, saying why, only when /dev/kvm does not exist; if it exists and cannot
be used, the tests fail.

Guest-physical layout (kvmlite's CPU setup owns 0x500-0xEFFF):
  0x0500 GDT and empty IDT (kvmlite.GDT_ADDR), 0x1000 IDT for tests that take
  interrupts, 0x8FF0 stack top, 0x9000 page tables, 0x10000 code, 0x20000
  data, RAM up to 2 MiB; long mode maps [0, 4 GiB) one-to-one so MMIO
  addresses (0xD0000000, the LAPIC at 0xFEE00000) are reachable.
"""

import os
import struct
import unittest

import kvmlite as K
from tools.asm import assemble_with_labels

KVM_PATH = '/dev/kvm'
requires_kvm = unittest.skipUnless(
    os.path.exists(KVM_PATH),
    f'{KVM_PATH} does not exist on this host (no KVM): the guest tests need it')

IDT = 0x1000
STACK = 0x8FF0
CODE = 0x10000
DATA = 0x20000
RAM_SIZE = 2 << 20
MMIO = 0xD0000000           # an address no slot backs

BITS = {'real': 16, 'prot32': 32, 'long64': 64, 'user64': 64}

# user64: long mode at CPL3 (kvmlite.setup_long_mode(cpl=3))

_kvm = None


def kvm():
    """The process's one open /dev/kvm (opening it is not free)."""
    global _kvm
    if _kvm is None:
        _kvm = K.Kvm(KVM_PATH)
    return _kvm


def require_cap(test, *caps):
    """Skip ``test``, naming the capability, when this host's KVM lacks one
    of ``caps`` (kvmlite.Cap members)."""
    for cap in caps:
        if not kvm().check_extension(cap):
            cap = K.Cap(K.cap_number(cap))
            test.skipTest(f"this host's KVM lacks KVM_CAP_{cap.name} ({int(cap)})")


def asm(text, mode='long64', origin=CODE):
    """Assemble guest code for ``mode``: (bytes, {label: address}). Real-mode
    code runs at CS:0 with CS = CODE >> 4, so it is assembled at origin 0."""
    if mode == 'real' and origin == CODE:
        origin = 0
    return assemble_with_labels(text, bits=BITS[mode], origin=origin)


class Guest:
    """A VM with ``ram`` bytes at 0 and ``vcpus`` vCPUs, each entering
    ``code`` (assembly text or bytes) at CODE in ``mode``: 'real', 'prot32',
    'long64', or 'user64' (long mode at CPL3, pages user-accessible).
    ``irqchip`` is None, 'split' or 'kernel'. A context manager."""

    def __init__(self, code='', mode='long64', ram=RAM_SIZE, irqchip=None, vcpus=1, **regs):
        self.mode = mode
        self.vm = kvm().create_vm()
        try:
            if irqchip == 'split':
                self.vm.create_split_irqchip()
            elif irqchip == 'kernel':
                self.vm.create_irqchip()
            self.ram = self.vm.add_memory(0, ram)
            #: the code's labels, by name (guest addresses, or offsets in real mode)
            self.labels = {}
            if isinstance(code, str):
                code, self.labels = asm(code, mode)
            if code:
                self.vm.write(CODE, code)
            for i in range(vcpus):
                vcpu = self.vm.create_vcpu()
                vcpu.set_cpuid2(K.cpuid_entries(kvm(), i))
                self._enter(vcpu, **regs)
        except BaseException:
            self.vm.close()
            raise
        self.vcpu = self.vm.vcpus[0]

    def _enter(self, vcpu, **regs):
        if self.mode == 'real':
            K.setup_real_mode(vcpu, cs=CODE >> 4, ip=0, sp=STACK)
        elif self.mode == 'prot32':
            K.setup_protected_mode(vcpu, self.vm, CODE, STACK)
        else:
            K.setup_long_mode(vcpu, self.vm, CODE, STACK, cpl=3 if self.mode == 'user64' else 0)
        if regs:
            vcpu.set_regs(**regs)

    def set_handler(self, vector, address):
        """Point IDT entry ``vector`` (64-bit interrupt gate at IDT) at
        ``address`` and load the IDT into every vCPU."""
        gate = struct.pack('<HHBBHII', address & 0xFFFF, K.SEL_CODE64, 0, 0x8E,
                           (address >> 16) & 0xFFFF, address >> 32, 0)
        self.vm.write(IDT + 16 * vector, gate)
        for vcpu in self.vm.vcpus:
            s = vcpu.get_sregs()
            s.idt.base, s.idt.limit = IDT, 256 * 16 - 1
            vcpu.set_sregs(s)

    def close(self):
        self.vm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def expect(self, cls, vcpu=None, timeout=10, **fields):
        """Run ``vcpu`` (default the first) once; return the exit, failing
        with the exit and the registers unless it is a ``cls`` whose
        attributes equal ``fields``."""
        vcpu = vcpu or self.vcpu
        exit = vcpu.run(timeout=timeout)
        check_exit(vcpu, exit, cls, **fields)
        return exit


def describe(vcpu, exit):
    """One line that says where the guest was and what the exit carried."""
    text = repr(exit)
    if isinstance(exit, K.InternalError):
        text += f' ({exit.describe()})'
    try:
        r = vcpu.get_regs()
        s = vcpu.get_sregs()
        text += (f'; RIP {r.rip:#x} RAX {r.rax:#x} RSP {r.rsp:#x} RFLAGS {r.rflags:#x}'
                 f' CS {s.cs.selector:#x} CR0 {s.cr0:#x}')
    except K.KvmError as e:
        text += f'; registers unreadable: {e}'
    return text


def check_exit(vcpu, exit, cls, **fields):
    if not isinstance(exit, cls):
        raise AssertionError(f'expected {cls.__name__}, got {describe(vcpu, exit)}')
    for name, want in fields.items():
        got = getattr(exit, name)
        if got != want:
            raise AssertionError(f'{cls.__name__}.{name} is {got!r}, expected {want!r}: '
                                 f'{describe(vcpu, exit)}')


def open_fds():
    """The number of file descriptors this process has open."""
    return len(os.listdir('/proc/self/fd'))
