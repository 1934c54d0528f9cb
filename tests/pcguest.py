"""Guest programs that run in a whole :class:`kvmlite.Machine`, for the tests
of the wired devices (PIT, PIC, IOAPIC, UART, RTC, 8042) under real KVM.

A guest is 64-bit long-mode code at CPL0, assembled by tools.asm after
:data:`RUNTIME` and entered at ``start``: it loads an IDT, calls the test's
``main`` and ends with main's return value (al) written to the debug-exit
port, so a run that gets to the end has the odd status ``(al << 1) | 1``.
64-bit mode because the emulator here runs ``iretq`` but not a 32-bit
``iret`` (shared/DESIGN.md); the guests stay a few thousand instructions
long because CPL0 code is emulated at about 1M instructions/s, and they wait
for interrupts with ``sti; hlt``.

The runtime's routines (each saves what it uses unless it says otherwise):

* ``putc`` (al), ``print`` (the NUL-terminated string after the ``call``),
  ``puts`` (rsi), ``puthex`` (rax, cl digits), ``hex2`` (al), ``putdec``
  (rax): output on COM1.
* ``handlers``: 256 quadwords; the interrupt entry calls
  ``handlers[vector]`` with the vector in rdi (a handler may clobber rax,
  rcx, rdx, rsi, rdi, r8-r11); an empty slot, or an exception, prints
  ``unexpected vector NN`` and exits with 0x7F.
* ``irq_setup``: both 8259As initialised (IRQ n at vector 0x20 + n) and
  masked; then, if ``want_ioapic`` is set and there is a local APIC (not so
  in 'user' mode; CPUID at CPL0 reports the host's bits on this host, so the
  guest also reads the APIC's version register), the local APIC on and
  ``use_ioapic`` = 1: ISA IRQ n then arrives at IOAPIC pin n (pin 2 for
  IRQ 0, the PC's interrupt source override) with vector 0x30 + n.
  ``irq_handler`` (edi IRQ, rsi handler) fills both vectors; ``irq_unmask``
  (edi IRQ, esi IOAPIC trigger bits: 0 edge, ``LEVEL``), ``irq_mask`` (edi)
  and ``irq_eoi`` (edi) act on whichever path is in use.
* ``wait_for``: sleeps (``sti; hlt``) until the qword at [rsi] >= rcx;
  returns with interrupts off.
* ``rdtsc64``: rax = the TSC.

Guest-physical layout: kvmlite's GDT at 0x500, IDT at 0x1000 (written by
:func:`run_guest`), stack below 0x8FF0, page tables from 0x9000, the image
(code and data) at :data:`CODE`.
"""

import struct
import time

import kvmlite
from devices.console import MemoryBackend
from tests.guest import kvm
from tools.asm import assemble_with_labels

__all__ = ['MODES', 'RUNTIME', 'VIRTIO_MMIO', 'VIRTIO_DRIVER', 'PASSED', 'STATUS_PASSED', 'GuestRun', 'run_guest', 'load_guest',
           'run_in_every_mode', 'PromptedInput']

MODES = kvmlite.IRQCHIP_MODES
CODE = 0x10000
IDT = 0x1000
STACK = 0x8FF0
MEM_SIZE = 4 << 20
STUB_VECTORS = list(range(0x40)) + [0xFF]      # exceptions, PIC, IOAPIC, APIC spurious
PASSED = 0x10                   # what a guest's main returns when it got to its end
STATUS_PASSED = PASSED << 1 | 1

_STUBS = '\n'.join(f'isr_{v:02x}:\n    push {v}\n    jmp isr_common' for v in STUB_VECTORS)

RUNTIME = r'''
bits 64
LEVEL equ 0x8000                ; IOAPIC redirection entry: level-triggered
start:
    lidt [idtr]
    call main
exit:
    out 0xf4, al                ; debug exit: the run ends with (al << 1) | 1
    cli
    hlt
    jmp exit

; -- COM1 output: kvmlite's UART sends at once, so THR is always empty --
putc:
    push rdx
    mov dx, 0x3f8
    out dx, al
    pop rdx
    ret

print:                          ; prints the string after the call, returns past it
    xchg rsi, [rsp]
    call puts                   ; leaves rsi past the NUL: the return address
    xchg rsi, [rsp]
    ret

puthex:                         ; rax in cl hex digits
    push rax
    push rbx
    push rcx
    push rdx
    mov rbx, rax
    movzx edx, cl
    shl edx, 2
.digit:
    sub edx, 4
    mov rax, rbx
    mov cl, dl
    shr rax, cl
    and eax, 0xf
    mov al, [hexdigits + rax]
    call putc
    test edx, edx
    jnz .digit
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret
hexdigits: db '0123456789abcdef'

hex2:                           ; al in two hex digits
    push rcx
    mov cl, 2
    call puthex
    pop rcx
    ret

puts:                           ; the NUL-terminated string at rsi (rsi moves past it)
    push rax
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    pop rax
    ret

putdec:                         ; rax, unsigned decimal
    push rax
    push rbx
    push rcx
    push rdx
    mov ebx, 10
    xor ecx, ecx
.div:
    xor edx, edx
    div rbx
    push rdx
    inc ecx
    test rax, rax
    jnz .div
.out:
    pop rax
    add al, '0'
    call putc
    loop .out
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

rdtsc64:
    push rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    pop rdx
    ret

wait_for:                       ; sti; hlt until qword [rsi] >= rcx
    cli
    cmp [rsi], rcx
    jae .done
    sti                         ; the STI shadow covers HLT: no lost wake-up
    hlt
    jmp wait_for
.done:
    ret

; -- interrupts: stubs push their vector and come here --
isr_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, [rsp + 72]
    mov rax, [handlers + rdi*8]
    test rax, rax
    jz unexpected
    call rax
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 8
    iretq
unexpected:
    call print
    db 'unexpected vector ', 0
    mov rax, rdi
    mov cl, 2
    call puthex
    mov al, 10
    call putc
    mov al, 0x7f
    jmp exit

; -- the two ways an ISA IRQ reaches the CPU --
irq_setup:
    push rax
    push rbx
    push rcx
    push rdx
    mov al, 0x11                ; ICW1: edge, cascade, ICW4 follows
    out 0x20, al
    out 0xa0, al
    mov al, 0x20                ; ICW2: vectors 0x20-0x27 and 0x28-0x2f
    out 0x21, al
    mov al, 0x28
    out 0xa1, al
    mov al, 4                   ; ICW3: slave on IR2
    out 0x21, al
    mov al, 2
    out 0xa1, al
    mov al, 1                   ; ICW4: 8086 mode, normal EOI
    out 0x21, al
    out 0xa1, al
    mov al, 0xff                ; everything masked
    out 0x21, al
    out 0xa1, al
    cmp byte [want_ioapic], 0
    je .done
    mov eax, 1
    cpuid
    bt edx, 9                   ; CPUID.1:EDX.APIC
    jnc .done
    mov eax, 0xfee00030         ; CPL0 CPUID shows the host's bits here, so also
    cmp dword [rax], -1         ; look: no local APIC, no register (all ones)
    je .done
    mov eax, 0xfee000f0         ; spurious vector register: APIC on, vector 0xff
    mov dword [rax], 0x1ff
    mov byte [use_ioapic], 1
.done:
    pop rdx
    pop rcx
    pop rbx
    pop rax
    ret

irq_handler:                    ; edi = ISA IRQ, rsi = handler
    mov [handlers + 0x100 + rdi*8], rsi
    mov [handlers + 0x180 + rdi*8], rsi
    ret

ioapic_select:                  ; ecx = pin for ISA IRQ edi
    mov ecx, edi
    test ecx, ecx
    jnz .done
    mov ecx, 2
.done:
    ret

irq_unmask:                     ; edi = ISA IRQ, esi = IOAPIC trigger bits
    push rax
    push rcx
    push rdx
    cmp byte [use_ioapic], 0
    jne .ioapic
    cmp edi, 8
    jae .slave
    in al, 0x21
    btr eax, edi
    out 0x21, al
    jmp .done
.slave:
    lea ecx, [rdi - 8]
    in al, 0xa1
    btr eax, ecx
    out 0xa1, al
    in al, 0x21
    and al, 0xfb                ; the cascade input
    out 0x21, al
    jmp .done
.ioapic:
    call ioapic_select
    lea ecx, [rcx*2 + 0x11]     ; IOREDTBL high half: destination APIC ID 0
    mov eax, 0xfec00000
    mov [rax], ecx
    mov dword [rax + 0x10], 0
    dec ecx                     ; low half: vector 0x30 + IRQ, fixed, unmasked
    mov [rax], ecx
    lea edx, [rdi + 0x30]
    or edx, esi
    mov [rax + 0x10], edx
.done:
    pop rdx
    pop rcx
    pop rax
    ret

irq_mask:                       ; edi = ISA IRQ
    push rax
    push rcx
    cmp byte [use_ioapic], 0
    jne .ioapic
    mov ecx, edi
    and ecx, 7
    cmp edi, 8
    jae .slave
    in al, 0x21
    bts eax, ecx
    out 0x21, al
    jmp .done
.slave:
    in al, 0xa1
    bts eax, ecx
    out 0xa1, al
    jmp .done
.ioapic:
    call ioapic_select
    lea ecx, [rcx*2 + 0x10]
    mov eax, 0xfec00000
    mov [rax], ecx
    or dword [rax + 0x10], 0x10000
.done:
    pop rcx
    pop rax
    ret

irq_eoi:                        ; edi = ISA IRQ
    push rax
    cmp byte [use_ioapic], 0
    jne .lapic
    mov al, 0x20                ; OCW2: non-specific EOI
    cmp edi, 8
    jb .master
    out 0xa0, al
.master:
    out 0x20, al
    pop rax
    ret
.lapic:
    mov eax, 0xfee000b0         ; local APIC EOI register
    mov dword [rax], 0
    pop rax
    ret

''' + _STUBS + r'''

align 8
idtr:
    dw 256 * 16 - 1
    dq ''' + f'{IDT:#x}' + r'''
want_ioapic: db 0
use_ioapic: db 0
align 8
handlers: times 256 dq 0
'''


#: A virtio-mmio driver's first steps (virtio 1.2: 4.2.2 the registers,
#: 3.1.1 the driver's initialisation, 2.7 split virtqueues), for any 64-bit
#: guest (it uses nothing of :data:`RUNTIME`); rbx holds the device's base:
#:
#: * ``virtio_start`` (edx: the DeviceID wanted): checks MagicValue and
#:   DeviceID, resets the device, sets ACKNOWLEDGE and DRIVER, accepts
#:   VIRTIO_F_VERSION_1 alone and sets FEATURES_OK; eax = 1 (ZF clear) if the
#:   device kept FEATURES_OK, 0 (ZF set) if it is absent, another device or
#:   refused the features. DRIVER_OK is the caller's, after its queues.
#: * ``virtio_queue`` (eax: queue, ecx: size, rsi: its area, below 4 GiB):
#:   the descriptor table at rsi, the available ring at rsi + 16 * size, the
#:   used ring at rsi + 32 * size, then QueueReady. Keeps every register.
VIRTIO_MMIO = r'''
virtio_start:
    xor eax, eax
    cmp dword [rbx], 0x74726976     ; MagicValue
    jne .done
    cmp [rbx + 8], edx              ; DeviceID
    jne .done
    mov dword [rbx + 0x70], 0       ; Status: reset, ACKNOWLEDGE, DRIVER
    mov dword [rbx + 0x70], 1
    mov dword [rbx + 0x70], 3
    mov dword [rbx + 0x24], 1       ; DriverFeatures[63:32] = VERSION_1
    mov dword [rbx + 0x20], 1
    mov dword [rbx + 0x24], 0       ; DriverFeatures[31:0] = none
    mov dword [rbx + 0x20], 0
    mov dword [rbx + 0x70], 11      ; FEATURES_OK
    mov eax, [rbx + 0x70]           ; 32-bit registers: read them whole
    shr eax, 3                      ; did the device keep FEATURES_OK?
    and eax, 1
.done:
    test eax, eax
    ret

virtio_queue:
    push rax
    mov [rbx + 0x30], eax           ; QueueSel
    mov [rbx + 0x38], ecx           ; QueueNum
    mov [rbx + 0x80], esi           ; QueueDesc
    mov dword [rbx + 0x84], 0
    mov eax, ecx
    shl eax, 4
    add eax, esi
    mov [rbx + 0x90], eax           ; QueueDriver: the available ring
    mov dword [rbx + 0x94], 0
    mov eax, ecx
    shl eax, 5
    add eax, esi
    mov [rbx + 0xa0], eax           ; QueueDevice: the used ring
    mov dword [rbx + 0xa4], 0
    mov dword [rbx + 0x44], 1       ; QueueReady
    pop rax
    ret
'''

#: :data:`VIRTIO_MMIO` and, for a guest on :data:`RUNTIME`,
#: ``virtio_irq_on`` (rbx: the device, edi: its ISA IRQ): irq_setup (with
#: the IOAPIC where there is one), then the IRQ, edge-triggered, to
#: ``virtio_isr``, which reads InterruptStatus, writes it to InterruptACK,
#: counts the interrupt in the qword ``virtio_irqs`` and sends the EOI.
VIRTIO_DRIVER = VIRTIO_MMIO + r'''
virtio_irq_on:
    mov [virtio_dev], rbx
    mov [virtio_irq], edi
    mov byte [want_ioapic], 1
    call irq_setup
    lea rsi, [virtio_isr]
    call irq_handler
    xor esi, esi
    jmp irq_unmask

virtio_isr:
    mov rsi, [virtio_dev]
    mov eax, [rsi + 0x60]           ; InterruptStatus
    mov [rsi + 0x64], eax           ; InterruptACK
    inc qword [virtio_irqs]
    mov edi, [virtio_irq]
    jmp irq_eoi

align 8
virtio_dev: dq 0
virtio_irqs: dq 0
virtio_irq: dd 0
'''

class GuestRun:
    """What a run left behind: ``status`` and ``reason`` (kvmlite.RunResult),
    ``output`` (COM1 bytes), ``labels``, the guest image's memory after the
    run, ``rip`` where the guest stopped, ``tsc_khz``, ``seconds`` (wall time
    of the run), ``cpu_seconds`` (the process's CPU time during it),
    ``problems`` (every device's ``check()`` after the run) and, from
    :func:`run_guest`, ``exit_counts`` (the VM's exits by ExitReason)."""

    def __init__(self, mode, result, output, labels, memory, rip, tsc_khz, seconds, cpu_seconds,
                 problems):
        self.mode, self.status, self.reason = mode, result.status, result.reason
        self.output, self.labels, self.memory, self.rip = output, labels, memory, rip
        self.tsc_khz, self.seconds, self.cpu_seconds = tsc_khz, seconds, cpu_seconds
        self.problems = problems

    def ms(self, tsc_ticks):
        """A TSC difference in milliseconds."""
        return tsc_ticks / self.tsc_khz

    def _at(self, label, offset):
        return self.labels[label] - CODE + offset

    def u8(self, label, index=0):
        return self.memory[self._at(label, index)]

    def u64(self, label, index=0):
        return struct.unpack_from('<Q', self.memory, self._at(label, 8 * index))[0]

    def u64s(self, label, count):
        return list(struct.unpack_from(f'<{count}Q', self.memory, self._at(label, 0)))

    def where(self):
        """The RIP as label+offset (the nearest label at or below it)."""
        below = [(addr, name) for name, addr in self.labels.items() if addr <= self.rip]
        if not below:
            return f'{self.rip:#x}'
        addr, name = max(below)
        return f'{self.rip:#x} ({name}+{self.rip - addr:#x})'

    def describe(self):
        return (f'{self.mode} mode: status {self.status} ({self.reason}) after '
                f'{self.seconds:.2f} s at RIP {self.where()}; COM1 output {bytes(self.output)!r}')


def _idt(labels):
    table = bytearray(256 * 16)
    for v in STUB_VECTORS:
        addr = labels[f'isr_{v:02x}']
        struct.pack_into('<HHBBHII', table, 16 * v, addr & 0xFFFF, kvmlite.SEL_CODE64, 0, 0x8E,
                         (addr >> 16) & 0xFFFF, addr >> 32, 0)
    return bytes(table)


def assemble(source, symbols=None):
    """The image and labels of RUNTIME + ``source`` (which defines main)."""
    return assemble_with_labels(RUNTIME + source, bits=64, origin=CODE, symbols=symbols)


def load_guest(m, source, symbols=None):
    """Assemble RUNTIME + ``source`` into Machine ``m`` with its IDT and put
    vCPU 0 at ``start``; returns (code, labels)."""
    code, labels = assemble(source, symbols)
    m.vm.write(CODE, code)
    m.vm.write(IDT, _idt(labels))
    kvmlite.setup_mode(m.vm.vcpus[0], m.vm, 'long64', labels['start'], stack=STACK)
    return code, labels


def run_guest(source, mode, timeout=20, console=None, symbols=None, setup=None, **machine):
    """Run RUNTIME + ``source`` in a fresh Machine in irqchip ``mode`` with
    ``console`` on COM1 (default a MemoryBackend) and the Machine arguments
    ``machine``; ``setup(machine)``, if given, runs before the guest (to
    write firmware tables, say). Returns a :class:`GuestRun`."""
    console = console if console is not None else MemoryBackend()
    with kvmlite.Machine(mem_size=MEM_SIZE, irqchip=mode, console=console, kvm=kvm(),
                         **machine) as m:
        code, labels = load_guest(m, source, symbols)
        if setup is not None:
            setup(m)
        if isinstance(console, PromptedInput):
            console.wake = m.wake
        started, cpu = time.monotonic(), time.process_time()
        result = m.run(timeout=timeout)
        seconds, cpu = time.monotonic() - started, time.process_time() - cpu
        problems = []
        for name in ('pic', 'pit', 'ioapic', 'rtc', 'i8042'):
            dev = getattr(m, name)
            if dev is not None:
                problems += [f'{name}: {p}' for p in dev.check()]
        for i, s in enumerate(m.serials):
            problems += [f'COM{i + 1}: {p}' for p in s.check()]
        vcpu = m.vm.vcpus[0]
        run = GuestRun(mode, result, bytes(console.output), labels, m.vm.read(CODE, len(code)),
                       vcpu.get_regs().rip, vcpu.get_tsc_khz(), seconds, cpu, problems)
        run.exit_counts = dict(m.vm.exit_counts)    # kvmlite's count of exits, by ExitReason
        return run


def run_in_every_mode(test, source, output, status=STATUS_PASSED, console=None, **kw):
    """Run ``source`` in each irqchip mode (a subTest each); check that it
    ends with ``status``, prints exactly ``output`` (so the same in every
    mode) and leaves every device consistent. ``console`` may be a factory
    (a fresh back end per run). Returns {mode: GuestRun} of the runs."""
    runs = {}
    for mode in MODES:
        with test.subTest(mode=mode):
            run = run_guest(source, mode, console=console() if callable(console) else console, **kw)
            runs[mode] = run
            test.assertEqual(run.output.decode(errors='replace'), output, run.describe())
            test.assertEqual(run.status, status, run.describe())
            test.assertEqual(run.problems, [], run.describe())
    return runs


class PromptedInput(MemoryBackend):
    """A console user who types each answer as soon as its prompt appears in
    the guest's output: ``script`` is a list of (prompt, answer) bytes.
    Typing wakes the machine's timer thread (``wake``, set by
    :func:`run_guest`), as a terminal's descriptor turning readable does."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)
        self.wake = None
        self._searched = 0

    def write(self, data):
        super().write(data)
        if self.script:
            prompt, answer = self.script[0]
            found = self.output.find(prompt, self._searched)
            if found >= 0:
                self._searched = found + len(prompt)
                self.script.pop(0)
                self.feed(answer)
                if self.wake is not None:
                    self.wake()
