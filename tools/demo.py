"""kvmlite's built-in demo guest: what ``python3 kvmlite.py run`` boots with no kernel.

A 64-bit guest, written here as text for ``tools.asm`` and wrapped in an ELF64
image that ``tools.boot.load_elf`` loads at 1 MiB (so the demo goes through
the same loader and long-mode CPU setup as a user's ELF kernel). It drives
the PC's devices the way a small OS would and says on COM1 what it did:

* COM1: 115200 8N1 with FIFOs; every line goes out by polling LSR.THRE.
* Local APIC: detected by reading its version register at 0xFEE00030,
  which reads all ones when the machine has none ('user' irqchip mode).
  CPUID is no use for this here: the machine clears CPUID.1:EDX.APIC in
  'user' mode, but on a host that emulates ring 0 (kvm_pvm) a CPL0 ``cpuid``
  leaf 1 reports the host's EDX, APIC bit set. When there is a local APIC the
  guest software-enables it (SVR) and looks for the IOAPIC at 0xFEC00000
  (version register, all ones when absent).
* fw_cfg: signature, CPU count and RAM size (``rep insb`` at port 0x511).
* PIC: both 8259As initialised (ICW1-4, vectors 0x20-0x2F), then masked.
* PIT: counter 0 in mode 2 at ``hz``; the guest halts until ``ticks`` timer
  interrupts came in, through the IOAPIC (pin 2, edge, fixed, to this
  CPU's APIC ID; EOI to the local APIC) when there is one, else through the
  PIC (IRQ 0; EOI to the master).
* RTC: date and time, decoded as register B says (BCD or binary, 12- or
  24-hour), read twice until two reads agree.
* UART loopback (MCR.LOOP): a few bytes through the receiver FIFO with the
  trigger level set below their count, IIR read (received-data interrupt
  identified; on a PC the loopback IRQ line itself stays low, as OUT2 is
  forced inactive), then read back from RBR.
* UART interrupts: one line is sent by the IRQ 4 handler, one byte per
  transmitter-holding-register-empty interrupt (IER.ETBEI), on the same
  route as the timer.
* Then it masks its interrupt sources, stops the PIT and ends with
  ``cli; hlt``, which kvmlite reports as "the guest halted with interrupts
  disabled" (status 0). A CPU exception prints its vector and RIP and writes
  1 to the debug-exit port (status 3).

The output is the same in every irqchip mode except for the words that name
the interrupt route (``via IOAPIC pin 2 -> vector 0x30`` or ``via PIC IRQ 0 ->
vector 0x20``) and the line that says why that route was taken.

Specifications followed: Intel 8259A datasheet (231468), Intel 8254
datasheet (231164), Intel 82093AA IOAPIC datasheet (290566), Intel SDM
Vol. 3 chapter 6 (64-bit IDT gates, ``iretq``) and chapter 11 (local APIC
registers: ID, version, EOI, SVR), National Semiconductor PC16550D datasheet,
Motorola MC146818A datasheet (with the PC BIOS's century byte at CMOS 0x32,
BCD in either data mode, as kvmlite's RTC keeps it),
QEMU's ``docs/specs/fw_cfg.rst``, and the ELF gABI (ELF64 header and program
header) for the image.
"""

import re
import struct
from typing import NamedTuple

from . import boot
from .layout import PC
from .asm import assemble_with_labels

__all__ = ['Image', 'build', 'load', 'source', 'elf64', 'LOAD_ADDR']

LOAD_ADDR = 0x100000        # the image's one PT_LOAD segment, at 1 MiB
SEGMENT_OFFSET = 0x1000     # its file offset (page-aligned, after the headers)

# ELF64 (gABI): the few header values the image needs.
ELF_IDENT = b'\x7fELF' + bytes((2, 1, 1)) + bytes(9)   # ELFCLASS64, LSB, EV_CURRENT
ET_EXEC = 2                 # executable file
EM_X86_64 = 62              # AMD x86-64
PT_LOAD = 1                 # loadable segment
PF_RWX = 7                  # segment flags: read, write, execute
ELF64_EHDR = '<16sHHIQQQIHHHHHH'
ELF64_PHDR = '<IIQQQQQQ'

PIT_HZ = 1193182            # the 8254's input clock
ROUTES = ('auto', 'pic')    # 'pic': use the PIC even when there is an IOAPIC
IDT_SIZE = 256 * 16         # 256 16-byte gates

# Guest constants, handed to the assembler as `equ` lines (one source).
GUEST_EQUS = {
    'UART_RBR': 0, 'UART_THR': 0, 'UART_DLL': 0,    # receive / transmit / divisor low
    'UART_IER': 1, 'UART_DLM': 1,                   # interrupt enable / divisor high
    'UART_IIR': 2, 'UART_FCR': 2,                   # interrupt id / FIFO control
    'UART_LCR': 3, 'UART_MCR': 4, 'UART_LSR': 5,    # line control, modem control, status
    'IER_ERBFI': 0x01,      # received-data interrupt enable
    'IER_ETBEI': 0x02,      # THR-empty interrupt enable
    'IIR_ID': 0x0F,         # interrupt identification bits
    'IIR_THRI': 0x02,       # THR empty is the pending source
    'LCR_DLAB': 0x80,       # divisor latch access
    'LCR_8N1': 0x03,        # 8 data bits, no parity, 1 stop bit
    'FCR_NORMAL': 0xC7,     # FIFOs on, both cleared, RX trigger 14
    'FCR_LOOPBACK': 0x87,   # FIFOs on, both cleared, RX trigger 8
    'MCR_NORMAL': 0x0B,     # DTR, RTS, OUT2 (OUT2 gates INTR onto IRQ 4)
    'MCR_LOOPBACK': 0x13,   # DTR, RTS, LOOP
    'LSR_DR': 0x01,         # data ready
    'LSR_THRE': 0x20,       # transmitter holding register empty
    'ICW1_INIT': 0x11,      # ICW1: edge, cascade, ICW4 follows
    'ICW3_MASTER': 0x04,    # slave on IR2
    'ICW3_SLAVE': 0x02,     # slave identity 2
    'ICW4_8086': 0x01,      # 8086 mode, normal EOI
    'OCW2_EOI': 0x20,       # non-specific EOI
    'VEC_PIC': 0x20,        # master IR0 -> 0x20; slave IR0 -> 0x28
    'VEC_IOAPIC': 0x30,     # ISA IRQ n through the IOAPIC -> 0x30 + n
    'VEC_SPURIOUS': 0xFF,   # local APIC spurious vector
    'PIT_MODE2': 0x34,      # counter 0, LSB then MSB, mode 2 (rate generator), binary
    'PIT_STOP': 0x30,       # counter 0, mode 0, no count written: OUT0 stays low
    'RTC_A': 0x0A, 'RTC_A_UIP': 0x80,               # register A, update in progress
    'RTC_B_DM': 0x04,       # register B: binary data mode
    'RTC_B_24H': 0x02,      # register B: 24-hour clock
    'RTC_HOUR_PM': 0x80,    # 12-hour mode: PM flag in the hours byte
    'FW_CFG_SIGNATURE': 0x00, 'FW_CFG_RAM_SIZE': 0x03, 'FW_CFG_NB_CPUS': 0x05,
    'FW_CFG_QEMU': 0x554D4551,                      # b'QEMU' as a little-endian dword
    'LAPIC_ID': 0x20, 'LAPIC_VER': 0x30, 'LAPIC_EOI': 0xB0, 'LAPIC_SVR': 0xF0,
    'SVR_ENABLE': 0x100,    # APIC software enable
    'IOREGSEL': 0x00, 'IOWIN': 0x10,                # index and data window
    'IOAPICVER': 0x01,      # version; bits 16-23: highest redirection entry
    'IOREDTBL': 0x10,       # redirection entry n: indices 0x10 + 2n (low), + 1 (high)
    'IOAPIC_MASKED': 0x10000,                       # redirection entry mask bit
    'SEL_CODE64': 0x10,     # kvmlite's long-mode code selector
    'GATE_INTR64': 0x8E00,  # present, DPL 0, 64-bit interrupt gate
}



def _platform_equs(platform):
    """Where the demo finds the devices: the platform's own numbers."""
    def port(name, attr=''):
        return next(base for a, base, _ in platform.device(name).pio if a == attr)
    return {
        'COM1': port('com1'), 'COM1_IRQ': platform.device('com1').irq,     # 16550A
        'PIC1_CMD': port('pic', 'master'), 'PIC1_DATA': port('pic', 'master') + 1,
        'PIC2_CMD': port('pic', 'slave'), 'PIC2_DATA': port('pic', 'slave') + 1,
        'PIT_CH0': port('pit'), 'PIT_CTRL': port('pit') + 3,
        'PIT_IRQ': platform.device('pit').irq, 'PIT_PIN': platform.ioapic_pin(platform.device('pit').irq),
        'CMOS_INDEX': port('rtc'), 'CMOS_DATA': port('rtc') + 1,
        'FW_CFG_CTL': port('fw_cfg'), 'FW_CFG_DATA': port('fw_cfg') + 1,
        'LAPIC_BASE': platform.lapic_addr, 'IOAPIC_BASE': platform.ioapic_addr,
        'DEBUG_EXIT': port('debug_exit'),       # write v: kvmlite exits with status 2v + 1
    }


# Exceptions that push an error code (Intel SDM Vol. 3, table 6-1).
ERROR_CODE_VECTORS = {8, 10, 11, 12, 13, 14, 17, 21, 29, 30}

LOOPBACK_TEXT = 'hello, 16550A'
IRQ_TX_TEXT = '  UART    this line went out one byte per THR-empty interrupt\r\n'

# Console text: label -> string (NUL-terminated in the image).
MESSAGES = {
    'msg_banner': 'kvmlite demo: a 64-bit guest that tools/demo.py assembled and '
                  'loaded as ELF64\r\n',
    'msg_cpu': '  CPU     ', 'msg_crlf': '\r\n',
    'msg_irqs_ioapic': '  IRQs    via IOAPIC: ', 'msg_irqs_pic': '  IRQs    via PIC: ',
    'msg_no_lapic': 'no local APIC (its registers read all ones)\r\n',
    'msg_lapic': 'local APIC version ', 'msg_lapic_id': ' (ID ',
    'msg_ioapic': '), IOAPIC with ', 'msg_pins': ' pins\r\n', 'msg_no_ioapic': '), no IOAPIC\r\n',
    'msg_fw_cfg': '  fw_cfg  signature "QEMU", ', 'msg_no_fw_cfg': '  fw_cfg  none\r\n',
    'msg_cpu_count': ' CPU', 'msg_plural': 's', 'msg_ram': ', ', 'msg_mib': ' MiB of RAM\r\n',
    'msg_pic': '  PIC     8259A pair at vectors 0x20-0x2f (ICW1-4), IMRs read back ',
    'msg_space': ' ',
    'msg_pit': '  PIT     ', 'msg_tick': ' tick', 'msg_at': ' at ', 'msg_hz_via': ' Hz via ',
    'msg_via_ioapic': 'IOAPIC pin ', 'msg_via_pic': 'PIC IRQ ', 'msg_to_vector': ' -> vector ',
    'msg_rtc': '  RTC     ', 'msg_dash': '-', 'msg_colon': ':',
    'msg_bcd': ' (BCD, ', 'msg_binary': ' (binary, ', 'msg_24h': '24-hour clock)\r\n',
    'msg_12h': '12-hour clock)\r\n',
    'msg_loop': '  UART    loopback through the FIFO (MCR.LOOP): IIR ',
    'msg_loop_after': ' after ', 'msg_bytes': ' bytes\r\n',
    'msg_loop_sent': '          sent "', 'msg_loop_got': '", read back "',
    'msg_loop_same': '"\r\n', 'msg_loop_differs': '" (differs!)\r\n',
    'msg_tx_count': '          ^ ', 'msg_tx_via': ' THR-empty interrupts via ',
    'msg_stray': '  note    stray interrupts: ',
    'msg_bye': 'done: halting with interrupts off (cli; hlt), so kvmlite exits 0\r\n',
    'msg_exception': '\r\ndemo: CPU exception ', 'msg_at_rip': ' at RIP ',
    'loop_text': LOOPBACK_TEXT, 'irq_tx_text': IRQ_TX_TEXT,
}


# The entry point: each step prints one or two lines.
MAIN = r'''
start:
        cli
        cld
        lidt [idt_ptr]
        call uart_init
        mov rsi, msg_banner
        call puts
        call show_cpu
        call probe_apic
        call show_fw_cfg
        call pic_init
        call pit_ticks
        call show_rtc
        call uart_loopback
        call uart_irq_tx
        call show_stray
        mov rsi, msg_bye
        call puts
        cli
.halt:  hlt                             ; kvmlite stops the run here
        jmp .halt
'''


# COM1 output: polled transmit, numbers in decimal and hex.
CONSOLE = r'''
uart_init:                              ; 115200 8N1, FIFOs on, no interrupts
        mov dx, COM1 + UART_LCR
        mov al, LCR_DLAB
        out dx, al
        mov dx, COM1 + UART_DLL
        mov al, 1                       ; divisor 1: 115200 baud
        out dx, al
        mov dx, COM1 + UART_DLM
        xor al, al
        out dx, al
        mov dx, COM1 + UART_LCR
        mov al, LCR_8N1
        out dx, al
        mov dx, COM1 + UART_FCR
        mov al, FCR_NORMAL
        out dx, al
        mov dx, COM1 + UART_MCR
        mov al, MCR_NORMAL
        out dx, al
        mov dx, COM1 + UART_IER
        xor al, al
        out dx, al
        ret

putc:                                   ; al: the byte; waits for THRE
        push rdx
        push rax
        mov dx, COM1 + UART_LSR
.busy:  in al, dx
        test al, LSR_THRE
        jz .busy
        pop rax
        mov dx, COM1 + UART_THR
        out dx, al
        pop rdx
        ret

puts:                                   ; rsi: NUL-terminated string
        push rax
        push rsi
.next:  lodsb
        test al, al
        jz .done
        call putc
        jmp .next
.done:  pop rsi
        pop rax
        ret

put_dec:                                ; rax: unsigned number, in decimal
        push rax
        push rcx
        push rdx
        push r8
        mov ecx, 10
        xor r8d, r8d
.split: xor edx, edx
        div rcx
        push rdx                        ; digits come out lowest first
        inc r8d
        test rax, rax
        jnz .split
.emit:  pop rax
        add al, '0'
        call putc
        dec r8d
        jnz .emit
        pop r8
        pop rdx
        pop rcx
        pop rax
        ret

put_dec2:                               ; al: 0-99, as two digits
        push rax
        push rdx
        movzx eax, al
        mov dl, 10
        div dl                          ; al: tens, ah: ones
        add ax, 0x3030                  ; both to ASCII
        call putc
        mov al, ah
        call putc
        pop rdx
        pop rax
        ret

put_hex:                                ; rax: number, cl: digits; prints 0x...
        push rax
        push rcx
        push rdx
        mov rdx, rax
        mov al, '0'
        call putc
        mov al, 'x'
        call putc
        movzx ecx, cl
.digit: dec ecx
        mov rax, rdx
        push rcx
        shl ecx, 2
        shr rax, cl
        pop rcx
        and al, 0x0F
        cmp al, 10
        jb .num
        add al, 'a' - '0' - 10
.num:   add al, '0'
        call putc
        test ecx, ecx
        jnz .digit
        pop rdx
        pop rcx
        pop rax
        ret
'''


# The CPU's vendor, the local APIC and IOAPIC probe, the PIC's initialisation.
CONTROLLERS = r'''
show_cpu:                               ; the CPUID vendor string
        push rbx
        xor eax, eax
        cpuid
        mov [vendor], ebx
        mov [vendor + 4], edx
        mov [vendor + 8], ecx
        mov rsi, msg_cpu
        call puts
        mov rsi, vendor
        call puts
        mov rsi, msg_crlf
        call puts
        pop rbx
        ret

probe_apic:                             ; sets use_ioapic, lapic_id; prints the route
        mov edi, LAPIC_BASE             ; a 32-bit move: the address zero-extends
        mov eax, [rdi + LAPIC_VER]
        cmp eax, -1
        je .no_lapic
        mov [lapic_version], al
        mov eax, [rdi + LAPIC_ID]
        shr eax, 24
        mov [lapic_id], al
        mov dword [rdi + LAPIC_SVR], SVR_ENABLE | VEC_SPURIOUS
        mov edi, IOAPIC_BASE
        mov dword [rdi + IOREGSEL], IOAPICVER
        mov eax, [rdi + IOWIN]
        cmp eax, -1
        je .report
        shr eax, 16                     ; highest redirection entry
        inc al
        mov [ioapic_pins], al
        mov byte [use_ioapic], PREFER_IOAPIC
.report:
        mov rsi, msg_irqs_pic
        cmp byte [use_ioapic], 0
        je .route
        mov rsi, msg_irqs_ioapic
.route: call puts
        mov rsi, msg_lapic
        call puts
        movzx eax, byte [lapic_version]
        mov cl, 2
        call put_hex
        mov rsi, msg_lapic_id
        call puts
        movzx eax, byte [lapic_id]
        call put_dec
        mov rsi, msg_no_ioapic
        movzx eax, byte [ioapic_pins]
        test eax, eax
        jz .last
        mov rsi, msg_ioapic
        call puts
        call put_dec
        mov rsi, msg_pins
.last:  jmp puts
.no_lapic:
        mov rsi, msg_irqs_pic
        call puts
        mov rsi, msg_no_lapic
        jmp puts

pic_init:                               ; ICW1-4 on both chips, everything masked
        mov al, ICW1_INIT
        out PIC1_CMD, al
        out PIC2_CMD, al
        mov al, VEC_PIC                 ; ICW2: vector bases
        out PIC1_DATA, al
        mov al, VEC_PIC + 8
        out PIC2_DATA, al
        mov al, ICW3_MASTER
        out PIC1_DATA, al
        mov al, ICW3_SLAVE
        out PIC2_DATA, al
        mov al, ICW4_8086
        out PIC1_DATA, al
        out PIC2_DATA, al
        mov al, 0xFF                    ; OCW1: mask every IRQ
        out PIC1_DATA, al
        out PIC2_DATA, al
        mov rsi, msg_pic
        call puts
        mov cl, 2
        in al, PIC1_DATA
        movzx eax, al
        call put_hex
        mov rsi, msg_space
        call puts
        in al, PIC2_DATA
        movzx eax, al
        call put_hex
        mov rsi, msg_crlf
        jmp puts
'''


# fw_cfg: signature, CPU count and RAM size.
FW_CFG = r'''
fw_cfg_read:                            ; ax: item, rdi: buffer, ecx: bytes
        push rdx
        mov dx, FW_CFG_CTL
        out dx, ax                      ; select the item, from its first byte
        mov dx, FW_CFG_DATA
        rep insb
        pop rdx
        ret

show_fw_cfg:
        mov ax, FW_CFG_SIGNATURE
        mov rdi, fw_sig
        mov ecx, 4
        call fw_cfg_read
        mov rsi, msg_no_fw_cfg
        cmp dword [fw_sig], FW_CFG_QEMU
        jne .last
        mov ax, FW_CFG_NB_CPUS
        mov rdi, fw_cpus
        mov ecx, 2
        call fw_cfg_read
        mov ax, FW_CFG_RAM_SIZE
        mov rdi, fw_ram
        mov ecx, 8
        call fw_cfg_read
        mov rsi, msg_fw_cfg
        call puts
        movzx eax, word [fw_cpus]
        call put_dec
        mov rsi, msg_cpu_count
        call puts
        cmp eax, 1
        je .ram
        mov rsi, msg_plural
        call puts
.ram:   mov rsi, msg_ram
        call puts
        mov rax, [fw_ram]
        shr rax, 20
        call put_dec
        mov rsi, msg_mib
.last:  jmp puts
'''


# Unmasking, masking and EOI on the route in use (bl: the ISA IRQ).
ROUTING = r'''
ioapic_pin:                             ; ecx = the IOAPIC pin of IRQ bl
        movzx ecx, bl
        cmp ecx, PIT_IRQ
        jne .done
        mov ecx, PIT_PIN                ; the platform's override for the PIT's IRQ
.done:  ret

irq_enable:                             ; unmask IRQ bl on the route in use
        push rax
        push rcx
        push rdi
        cmp byte [use_ioapic], 0
        je .pic
        call ioapic_pin
        mov edi, IOAPIC_BASE
        lea eax, [rcx * 2 + IOREDTBL + 1]
        mov [rdi + IOREGSEL], eax
        movzx eax, byte [lapic_id]      ; high dword: destination APIC ID
        shl eax, 24
        mov [rdi + IOWIN], eax
        lea eax, [rcx * 2 + IOREDTBL]
        mov [rdi + IOREGSEL], eax
        movzx eax, bl                   ; low dword: fixed, physical, edge,
        add eax, VEC_IOAPIC             ; active high, unmasked
        mov [rdi + IOWIN], eax
        jmp .done
.pic:   mov cl, bl
        mov ah, 1
        shl ah, cl
        not ah
        in al, PIC1_DATA
        and al, ah
        out PIC1_DATA, al
.done:  pop rdi
        pop rcx
        pop rax
        ret

irq_disable:                            ; mask IRQ bl again
        push rax
        push rcx
        push rdi
        cmp byte [use_ioapic], 0
        je .pic
        call ioapic_pin
        mov edi, IOAPIC_BASE
        lea eax, [rcx * 2 + IOREDTBL]
        mov [rdi + IOREGSEL], eax
        mov dword [rdi + IOWIN], IOAPIC_MASKED
        jmp .done
.pic:   mov cl, bl
        mov ah, 1
        shl ah, cl
        in al, PIC1_DATA
        or al, ah
        out PIC1_DATA, al
.done:  pop rdi
        pop rcx
        pop rax
        ret

eoi:                                    ; end of interrupt, on the route in use
        cmp byte [use_ioapic], 0
        je .pic
        push rdi
        mov edi, LAPIC_BASE
        mov dword [rdi + LAPIC_EOI], 0
        pop rdi
        ret
.pic:   push rax
        mov al, OCW2_EOI
        out PIC1_CMD, al
        pop rax
        ret

put_route:                              ; "IOAPIC pin 2 -> vector 0x30" for IRQ bl
        push rax
        push rcx
        cmp byte [use_ioapic], 0
        je .pic
        mov rsi, msg_via_ioapic
        call puts
        call ioapic_pin
        mov eax, ecx
        call put_dec
        movzx eax, bl
        add eax, VEC_IOAPIC
        jmp .vector
.pic:   mov rsi, msg_via_pic
        call puts
        movzx eax, bl
        call put_dec
        add eax, VEC_PIC
.vector:
        mov rsi, msg_to_vector
        call puts
        mov cl, 2
        call put_hex
        mov rsi, msg_crlf
        call puts
        pop rcx
        pop rax
        ret
'''


# The PIT's ticks.
TIMER = r'''
pit_ticks:                              ; count TICKS timer interrupts, halting between
        mov bl, PIT_IRQ
        call irq_enable
        mov al, PIT_MODE2
        out PIT_CTRL, al
        mov ax, PIT_DIVISOR
        out PIT_CH0, al
        mov al, ah
        out PIT_CH0, al
.wait:  sti                             ; sti's shadow covers hlt: no lost wake-up
        hlt
        cli
        cmp dword [ticks], TICKS
        jb .wait
        mov al, PIT_STOP
        out PIT_CTRL, al
        call irq_disable
        mov rsi, msg_pit
        call puts
        mov eax, [ticks]
        call put_dec
        mov rsi, msg_tick
        call puts
        mov rsi, msg_plural
        cmp eax, 1
        je .one
        call puts
.one:   mov rsi, msg_at
        call puts
        mov eax, PIT_RATE
        call put_dec
        mov rsi, msg_hz_via
        call puts
        jmp put_route

timer_isr:
        inc dword [ticks]
        call eoi
        iretq
'''


# The RTC's date and time.
CLOCK = r'''
rtc_snapshot:                           ; rdi: 8 bytes <- the registers in rtc_regs
        push rcx
        push rsi
        mov rsi, rtc_regs
        mov ecx, 8
.next:  lodsb
        out CMOS_INDEX, al
        in al, CMOS_DATA
        stosb
        loop .next
        pop rsi
        pop rcx
        ret

bcd2bin:                                ; al: BCD -> binary
        push rcx
        mov cl, al
        and cl, 0x0F
        shr al, 4
        mov ch, 10
        mul ch
        add al, cl
        pop rcx
        ret

show_rtc:
.uip:   mov al, RTC_A                   ; wait for the update cycle to pass
        out CMOS_INDEX, al
        in al, CMOS_DATA
        test al, RTC_A_UIP
        jnz .uip
        mov rdi, rtc_now
        call rtc_snapshot
        mov rdi, rtc_again
        call rtc_snapshot
        mov rax, [rtc_now]
        cmp rax, [rtc_again]
        jne .uip                        ; a second ticked over between the two
        mov bl, [rtc_now + 7]           ; register B
        xor bh, bh                      ; bh: the 12-hour PM flag
        test bl, RTC_B_24H
        jnz .bcd
        mov bh, [rtc_now + 2]
        and bh, RTC_HOUR_PM
        and byte [rtc_now + 2], ~RTC_HOUR_PM & 0xFF
.bcd:   test bl, RTC_B_DM
        jnz .hours
        mov rsi, rtc_now
        mov rdi, rtc_now
        mov ecx, 6                      ; seconds to year
.conv:  lodsb
        call bcd2bin
        stosb
        loop .conv
.hours: test bl, RTC_B_24H
        jnz .print
        movzx eax, byte [rtc_now + 2]   ; 12 AM is 0, 12 PM is 12
        xor edx, edx
        mov ecx, 12
        div ecx
        test bh, bh
        jz .am
        add edx, 12
.am:    mov [rtc_now + 2], dl
.print: mov rsi, msg_rtc
        call puts
        mov al, [rtc_now + 6]           ; century: BCD in any data mode,
        call bcd2bin                    ; as a PC BIOS keeps it
        movzx eax, al
        test eax, eax
        jnz .century
        mov eax, 20
.century:
        imul eax, eax, 100
        movzx ecx, byte [rtc_now + 5]
        add eax, ecx
        call put_dec
        mov al, [rtc_now + 4]           ; month
        call .dash
        mov al, [rtc_now + 3]           ; day
        call .dash
        mov al, ' '
        call putc
        mov al, [rtc_now + 2]
        call put_dec2
        mov al, [rtc_now + 1]
        call .colon
        mov al, [rtc_now]
        call .colon
        mov rsi, msg_binary
        test bl, RTC_B_DM
        jnz .mode
        mov rsi, msg_bcd
.mode:  call puts
        mov rsi, msg_12h
        test bl, RTC_B_24H
        jz .hour_mode
        mov rsi, msg_24h
.hour_mode:
        jmp puts
.dash:  mov rsi, msg_dash
        call puts
        jmp put_dec2
.colon: mov rsi, msg_colon
        call puts
        jmp put_dec2
'''


# The UART's loopback and its THR-empty interrupts.
UART = r'''
uart_loopback:                          ; LOOPBACK_TEXT through the FIFO and back
        mov dx, COM1 + UART_MCR
        mov al, MCR_LOOPBACK
        out dx, al
        mov dx, COM1 + UART_FCR
        mov al, FCR_LOOPBACK
        out dx, al
        mov dx, COM1 + UART_IER
        mov al, IER_ERBFI               ; so that IIR names received data
        out dx, al
        mov rsi, loop_text
        call puts                       ; in loopback it goes to our own receiver
        mov dx, COM1 + UART_IIR
        in al, dx
        mov [loop_iir], al
        mov rdi, loop_buf
        xor ecx, ecx
.drain: mov dx, COM1 + UART_LSR
        in al, dx
        test al, LSR_DR
        jz .drained
        mov dx, COM1 + UART_RBR
        in al, dx
        stosb
        inc ecx
        cmp ecx, LOOP_BUF_SIZE - 1
        jb .drain
.drained:
        mov byte [rdi], 0
        mov dx, COM1 + UART_IER
        xor al, al
        out dx, al
        mov dx, COM1 + UART_FCR
        mov al, FCR_NORMAL
        out dx, al
        mov dx, COM1 + UART_MCR
        mov al, MCR_NORMAL
        out dx, al
        mov rsi, msg_loop
        call puts
        movzx eax, byte [loop_iir]
        mov cl, 2
        call put_hex
        mov rsi, msg_loop_after
        call puts
        mov eax, LOOP_TEXT_LEN
        call put_dec
        mov rsi, msg_bytes
        call puts
        mov rsi, msg_loop_sent
        call puts
        mov rsi, loop_text
        call puts
        mov rsi, msg_loop_got
        call puts
        mov rsi, loop_buf
        call puts
        mov rsi, loop_text              ; compare, NULs included
        mov rdi, loop_buf
        mov ecx, LOOP_TEXT_LEN + 1
        repe cmpsb
        mov rsi, msg_loop_same
        je .said
        mov rsi, msg_loop_differs
.said:  jmp puts

uart_irq_tx:                            ; irq_tx_text, one byte per THRE interrupt
        mov bl, COM1_IRQ
        call irq_enable
        mov dx, COM1 + UART_IER
        mov al, IER_ETBEI               ; THR is empty: the UART asks at once
        out dx, al
.wait:  sti
        hlt
        cli
        cmp byte [tx_done], 0
        je .wait
        call irq_disable
        mov rsi, msg_tx_count
        call puts
        mov eax, [tx_irqs]
        call put_dec
        mov rsi, msg_tx_via
        call puts
        jmp put_route

com1_isr:
        push rax
        push rdx
        push rsi
        mov dx, COM1 + UART_IIR
        in al, dx                       ; reading IIR acknowledges THRE
        and al, IIR_ID
        cmp al, IIR_THRI
        jne .eoi
        inc dword [tx_irqs]
        mov rsi, [tx_ptr]
        lodsb
        test al, al
        jz .last
        mov dx, COM1 + UART_THR
        out dx, al                      ; THR empties again: the next interrupt
        mov [tx_ptr], rsi
        jmp .eoi
.last:  mov dx, COM1 + UART_IER
        xor al, al
        out dx, al
        mov byte [tx_done], 1
.eoi:   call eoi
        pop rsi
        pop rdx
        pop rax
        iretq
'''


# Stray interrupts and CPU exceptions.
FAULTS = r'''
stray_isr:                              ; PIC IRQ 7/15 and APIC spurious: no EOI
        inc dword [stray]
        iretq

show_stray:
        mov eax, [stray]
        test eax, eax
        jz .none
        mov rsi, msg_stray
        call puts
        call put_dec
        mov rsi, msg_crlf
        call puts
.none:  ret

exception:                              ; [rsp]: vector, [rsp+8]: error code
        mov rsi, msg_exception
        call puts
        mov rax, [rsp]
        call put_dec
        mov rsi, msg_at_rip
        call puts
        mov rax, [rsp + 16]
        mov cl, 16
        call put_hex
        mov rsi, msg_crlf
        call puts
        mov al, 1
        out DEBUG_EXIT, al
        cli
.halt:  hlt
        jmp .halt
'''


def _exception_stubs():
    """One stub per exception vector: push a zero error code where the CPU
    pushes none, then the vector, so that ``exception`` sees one frame."""
    lines = []
    for vector in range(32):
        lines.append(f'exc_{vector}:')
        if vector not in ERROR_CODE_VECTORS:
            lines.append('        push 0')
        lines += [f'        push {vector}', '        jmp exception']
    return '\n'.join(lines)


def _handler(vector, platform):
    if vector < 32:
        return f'exc_{vector}'
    # ISA IRQ n arrives at VEC_PIC + n from the PIC, VEC_IOAPIC + n via the IOAPIC
    irq = {GUEST_EQUS['VEC_PIC'] + n: n for n in range(16)}
    irq.update({GUEST_EQUS['VEC_IOAPIC'] + n: n for n in range(16)})
    if vector in irq and irq[vector] == platform.device('pit').irq:
        return 'timer_isr'
    if vector in irq and irq[vector] == platform.device('com1').irq:
        return 'com1_isr'
    return 'stray_isr'


def _gate(handler):
    """A 64-bit interrupt gate (Intel SDM Vol. 3, figure 6-8) to ``handler``."""
    return struct.pack('<HHHHII', handler & 0xFFFF, GUEST_EQUS['SEL_CODE64'],
                       GUEST_EQUS['GATE_INTR64'], handler >> 16 & 0xFFFF, handler >> 32, 0)


def _fill_idt(code, labels, platform):
    """Write the 256 gates into the image's zeroed ``idt`` (built here rather
    than as 512 data lines: the assembler's passes would take longer)."""
    at = labels['idt'] - LOAD_ADDR
    code[at:at + IDT_SIZE] = b''.join(_gate(labels[_handler(v, platform)]) for v in range(256))


def _db(text):
    """``text`` as db operands: printable runs quoted, other bytes as numbers."""
    parts = []
    for run, other in re.findall(r"([ -&(-~]+)|(.)", text, re.S):
        parts.append(f"'{run}'" if run else str(ord(other)))
    return ', '.join(parts + ['0'])


def _data():
    lines = ['rtc_regs: db 0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32, 0x0B',
             '; sec, min, hour, day, month, year, century, register B',
             'align 8', 'rtc_now: dq 0', 'rtc_again: dq 0',
             'ticks: dd 0', 'tx_irqs: dd 0', 'stray: dd 0',
             'tx_ptr: dq irq_tx_text',
             'use_ioapic: db 0', 'lapic_id: db 0', 'lapic_version: db 0',
             'ioapic_pins: db 0', 'tx_done: db 0', 'loop_iir: db 0',
             'vendor: times 13 db 0', 'fw_sig: dd 0', 'fw_cpus: dw 0', 'fw_ram: dq 0',
             'loop_buf: times LOOP_BUF_SIZE db 0',
             'align 16', 'idt: resb IDT_SIZE',
             'idt_ptr: dw IDT_SIZE - 1', '        dq idt']
    lines += [f'{name}: db {_db(text)}' for name, text in MESSAGES.items()]
    return '\n'.join(lines)


class Image(NamedTuple):
    """The demo as built: ``elf`` (an ELF64 executable, one PT_LOAD segment at
    LOAD_ADDR), its physical ``entry`` and the guest's ``labels``."""
    elf: bytes
    entry: int
    labels: dict


def source(ticks=10, hz=100, route='auto', platform=PC):
    """The guest's assembly text (see build() for the arguments)."""
    if not 1 <= ticks <= 1000:
        raise ValueError(f'ticks {ticks}: give 1 to 1000 timer interrupts to wait for')
    divisor = round(PIT_HZ / hz) if hz > 0 else 0
    if not 2 <= divisor <= 0xFFFF:
        raise ValueError(f'PIT rate {hz} Hz: give 19 to 596591 Hz (a 16-bit divisor of '
                         f'{PIT_HZ} Hz)')
    if route not in ROUTES:
        raise ValueError(f'interrupt route {route!r}: use one of {", ".join(ROUTES)}')
    equs = dict(GUEST_EQUS, **_platform_equs(platform), TICKS=ticks, PIT_RATE=hz, PIT_DIVISOR=divisor,
                PREFER_IOAPIC=int(route == 'auto'), LOOP_TEXT_LEN=len(LOOPBACK_TEXT),
                LOOP_BUF_SIZE=32, IDT_SIZE=IDT_SIZE)
    head = ['bits 64'] + [f'{name} equ {value:#x}' for name, value in equs.items()]
    parts = [MAIN, CONSOLE, CONTROLLERS, FW_CFG, ROUTING, TIMER, CLOCK, UART, FAULTS,
             _exception_stubs(), _data()]
    return '\n'.join(head + parts) + '\n'


def build(ticks=10, hz=100, route='auto', platform=PC):
    """Assemble the demo and wrap it in an ELF64 image; returns an :class:`Image`.

    ``ticks``: timer interrupts to count; ``hz``: the PIT's rate; ``route``:
    'auto' (through the IOAPIC when there is one, else the PIC) or 'pic'
    (always the PIC, through LINT0's virtual wire when there is a local APIC);
    ``platform``: where the devices are (a tools.layout.Platform).
    """
    code, labels = assemble_with_labels(source(ticks, hz, route, platform), bits=64,
                                        origin=LOAD_ADDR)
    code = bytearray(code)
    _fill_idt(code, labels, platform)
    entry = labels['start']
    return Image(elf64(code, LOAD_ADDR, entry), entry, labels)


def elf64(code, addr, entry):
    """A minimal ELF64 executable: ``code`` in one RWX PT_LOAD segment at
    physical (and virtual) ``addr``."""
    ehdr_size, phdr_size = struct.calcsize(ELF64_EHDR), struct.calcsize(ELF64_PHDR)
    ehdr = struct.pack(ELF64_EHDR, ELF_IDENT, ET_EXEC, EM_X86_64, 1, entry,
                       ehdr_size, 0, 0, ehdr_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack(ELF64_PHDR, PT_LOAD, PF_RWX, SEGMENT_OFFSET, addr, addr,
                       len(code), len(code), 0x1000)
    head = ehdr + phdr
    return head + bytes(SEGMENT_OFFSET - len(head)) + bytes(code)


def load(machine, **options):
    """Put the demo in ``machine``'s memory with tools.boot.load_elf and set
    vCPU 0 at its entry in long mode; ``options`` go to build(). Returns the
    tools.boot.Boot."""
    image = build(platform=machine.platform, **options)
    b = boot.load_elf(image.elf, machine.vm, platform=machine.platform)
    machine.load(b)
    return b
