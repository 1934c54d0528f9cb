"""Tests for tools.asm: byte-for-byte against GNU as where it is installed,
and labels, jump sizing, expressions, directives and errors on their own."""

import os
import re
import shutil
import subprocess
import tempfile
import unittest

from tools.asm import AsmError, Assembler, assemble, assemble_with_labels

HAVE_GAS = bool(shutil.which('as') and shutil.which('objcopy'))

ALU = ['add', 'or', 'adc', 'sbb', 'and', 'sub', 'xor', 'cmp']
CCS = ['o', 'no', 'b', 'c', 'nae', 'ae', 'nb', 'nc', 'e', 'z', 'ne', 'nz', 'be', 'na',
       'a', 'nbe', 's', 'ns', 'p', 'pe', 'np', 'po', 'l', 'nge', 'ge', 'nl', 'le', 'ng',
       'g', 'nle']


def every_mode(m, mb):
    """Lines valid in 16, 32 and 64-bit mode; m and mb are memory operands."""
    lines = []
    for op in ALU:
        lines += [f'{op} bl, cl', f'{op} si, dx', f'{op} edi, ebx', f'{op} al, 5',
                  f'{op} ax, 0x1234', f'{op} eax, 0x12345678', f'{op} eax, 5',
                  f'{op} bl, 0x7f', f'{op} si, -2', f'{op} edi, 300', f'{op} edi, 0xffffffff',
                  f'{op} ax, 0xfff0', f'{op} byte {m}, 1', f'{op} word {m}, 0x100',
                  f'{op} dword {m}, -1', f'{op} {m}, edi', f'{op} si, {m}', f'{op} {mb}, bl']
    lines += [
        'mov al, 1', 'mov bx, 0x1234', 'mov ecx, 0x12345678', 'mov dh, 0xff', 'mov eax, ebx',
        'mov al, ah', f'mov byte {m}, 7', f'mov word {m}, 0x1234', f'mov dword {m}, 0x12345678',
        f'mov {m}, al', f'mov {m}, bx', f'mov {m}, edx', f'mov cl, {m}', f'mov si, {mb}',
        f'mov ebp, {mb}', 'mov ds, ax', 'mov es, dx', 'mov ss, ax', 'mov fs, ax', 'mov gs, ax',
        'mov ds, eax', 'mov ax, ds', 'mov eax, ss', 'mov dx, cs', f'mov {m}, fs', f'mov gs, {m}',
        'movzx eax, bl', 'movzx ax, bl', 'movzx ecx, dx', f'movzx esi, byte {m}',
        f'movzx eax, word {m}', 'movsx eax, bl', 'movsx ax, bl', 'movsx ecx, dx',
        f'movsx esi, byte {m}', f'movsx di, byte {m}', f'lea eax, {m}', f'lea si, {mb}',
        'test al, 1', 'test ax, 1', 'test eax, 0x100', 'test bl, 0x80', 'test si, 3',
        'test edi, edi', 'test bl, al', f'test {m}, ecx', f'test ecx, {m}', f'test byte {m}, 1',
        f'test dword {m}, 0x10000',
        'inc al', 'inc bx', 'inc ecx', f'inc byte {m}', f'inc dword {m}', 'dec ah', 'dec si',
        'dec edi', f'dec word {m}', 'neg eax', 'not bl', f'neg word {m}', f'not dword {m}',
        'mul cl', 'mul bx', 'mul esi', f'mul dword {m}', 'div cl', 'div ecx', f'idiv byte {m}',
        'idiv ebx', 'imul cl', 'imul ecx', f'imul word {m}', 'imul eax, ebx', f'imul si, {m}',
        'imul ecx, edx, 5', 'imul ecx, edx, 500', f'imul eax, {m}, -3', 'imul eax, 7',
        'imul bx, 1000', 'imul ax, bx, -129',
        'xchg eax, ebx', 'xchg ebx, eax', 'xchg ax, cx', 'xchg al, bl', 'xchg ebx, ecx',
        'xchg bx, dx', f'xchg {m}, eax', f'xchg eax, {m}', f'xchg {m}, cl',
        'push si', 'pop si', 'push fs', 'pop fs', 'push gs', 'pop gs', 'push 5', 'push -1',
        'push 0x1234', 'cli', 'sti', 'cld', 'std', 'clc', 'stc', 'cmc', 'hlt', 'nop', 'int3',
        'int 0x80', 'int 3', 'ret', 'ret 8', 'retf', 'retf 4', 'iret', 'iretd', 'pushf',
        'popf', 'leave', 'cpuid', 'rdtsc', 'rdtscp', 'rdmsr', 'wrmsr', 'syscall', 'sysenter',
        'pause', 'ud2', 'wbinvd', 'invd', 'clac', 'stac', 'fninit', 'fwait', 'finit', 'lahf',
        'sahf', 'mfence', 'lfence', 'sfence', 'clts', 'cbw', 'cwde', 'cwd', 'cdq',
        'in al, 0x60', 'in ax, 0x70', 'in eax, 0xcf', 'in al, dx', 'in ax, dx', 'in eax, dx',
        'out 0x80, al', 'out 0x71, ax', 'out 0xcf, eax', 'out dx, al', 'out dx, ax',
        'out dx, eax', 'insb', 'insw', 'insd', 'outsb', 'outsw', 'outsd', 'rep insb',
        'rep outsw', 'rep insd', 'movsb', 'movsw', 'movsd', 'stosb', 'stosw', 'stosd', 'lodsb',
        'lodsw', 'lodsd', 'cmpsb', 'scasb', 'scasd', 'rep movsb', 'rep movsd', 'rep stosw',
        'repe cmpsb', 'repne scasb', 'repz cmpsd', 'repnz scasw',
        f'cmpxchg {m}, ecx', 'cmpxchg bl, cl', f'cmpxchg {m}, dx', f'lock cmpxchg {m}, ebx',
        f'xadd {m}, eax', 'xadd bl, cl', f'lock xadd {m}, ecx', f'lock add dword {m}, 1',
        f'lock inc dword {m}', f'lock or {m}, eax', f'lock add word {m}, 1', f'cmpxchg8b {m}',
        f'lock cmpxchg8b {m}', 'bswap eax', 'bswap edi', 'bt eax, 3', 'bt eax, ecx',
        f'bt dword {m}, 31', f'bts {m}, eax', 'btr cx, dx', 'btc eax, 1', f'bts word {m}, 2',
        f'btr dword {m}, 5', 'bsf eax, ecx', 'bsr ax, bx',
        f'lgdt {m}', f'lidt {m}', f'sgdt {m}', f'sidt {m}', f'invlpg {m}', 'ltr ax', 'lldt dx',
        f'ltr {m}', f'lldt {mb}', 'str ax', 'sldt dx',
        'shl eax, 1', 'shl eax, 4', 'shl eax, cl', 'shr bl, 1', 'shr bl, 3', 'shr bl, cl',
        'sar dx, 1', 'sar dx, 15', 'sar dx, cl', f'rol byte {m}, 1', f'ror word {m}, 3',
        f'rcl dword {m}, cl', 'rcr esi, 2', f'shl dword {mb}, 1', 'sal eax, 2',
        'movd xmm0, eax', 'movd eax, xmm1', f'movd xmm2, {m}', f'movd {m}, xmm3',
        'movq xmm0, xmm1', f'movq xmm4, {m}', f'movq {m}, xmm5', 'movdqa xmm0, xmm1',
        f'movdqa xmm2, {m}', f'movdqa {m}, xmm3', 'movdqu xmm0, xmm7', f'movdqu xmm6, {m}',
        f'movdqu {m}, xmm1', 'movaps xmm0, xmm1', f'movaps xmm2, {m}', f'movaps {m}, xmm3',
        'movups xmm4, xmm5', f'movups xmm6, {m}', f'movups {m}, xmm7', 'paddd xmm0, xmm1',
        f'paddd xmm2, {m}', 'paddq xmm3, xmm4', 'psubd xmm5, xmm6', 'pxor xmm0, xmm0',
        'pand xmm1, xmm2', 'por xmm3, xmm4', f'pxor xmm7, {m}', 'addps xmm0, xmm1',
        'addpd xmm2, xmm3', 'mulps xmm4, xmm5', 'mulpd xmm6, xmm7', 'xorps xmm0, xmm1',
        f'addps xmm0, {m}', 'pshufd xmm0, xmm1, 0x1b', f'pshufd xmm2, {m}, 0',
        'cvtsi2sd xmm0, eax', f'cvtsi2sd xmm1, dword {m}', 'cvttsd2si eax, xmm0',
        f'cvttsd2si ecx, {m}', 'addsd xmm0, xmm1', f'addsd xmm2, {m}', 'mulsd xmm3, xmm4',
        'divsd xmm5, xmm6', 'sqrtsd xmm7, xmm0', f'sqrtsd xmm1, {m}', 'movsd xmm0, xmm1',
        f'movsd xmm2, {m}', f'movsd {m}, xmm3', 'subsd xmm0, xmm1', 'ucomisd xmm0, xmm1',
        'movss xmm0, xmm1', 'cvtsd2si eax, xmm1', 'pcmpeqd xmm0, xmm1',
    ]
    lines += [f'set{cc} al' for cc in CCS] + [f'set{cc} byte {m}' for cc in CCS[:4]]
    lines += [f'cmov{cc} eax, ecx' for cc in CCS] + [f'cmove si, {m}', f'cmovl ebx, {m}']
    return lines


def addressing(bits, forms):
    reg = {16: 'ax', 32: 'eax', 64: 'rax'}[bits]
    size = {16: 'word', 32: 'dword', 64: 'qword'}[bits]
    lines = []
    for m in forms:
        lines += [f'mov {reg}, {m}', f'add {m}, cx', f'inc {size} {m}', f'lea {reg}, {m}',
                  f'mov byte {m}, 1', f'movdqu xmm1, {m}']
    return lines


MEM16 = ['[bx+si]', '[bx+di]', '[bp+si]', '[bp+di]', '[si]', '[di]', '[bx]', '[bp]',
         '[bp+4]', '[bx+si+0x10]', '[bp+di-2]', '[si+0x1234]', '[0x7c00]', '[di+0x80]',
         '[di-0x80]', 'es:[di]', '[ds:si+2]', 'fs:[bx+0x100]', '[si+bx]', '[di+bp+1]']
MEM32 = ['[eax]', '[ebx+4]', '[ecx-8]', '[edx+0x100]', '[esp]', '[esp+8]', '[ebp]',
         '[ebp-4]', '[esi+edi]', '[eax+ebx*2]', '[eax+ecx*4+0x10]', '[ebx*8+0x1000]',
         '[esp+eax*8-0x80]', '[ebp+esi*1]', '[0x1000]', '[edi+0x7f]', '[edi+0x80]',
         '[edi-0x80]', '[edi-0x81]', 'fs:[eax]', 'gs:[ebx+4]', '[es:edi]', '[cs:0x10]',
         'ss:[ebp+8]', 'ds:[esp]', '[eax + 2*ecx + 3]', '[(1+2)*4 + ebx]', '[ebx + 0x10 - 4]']
MEM64 = ['[rax]', '[rbx+4]', '[rsp]', '[rbp]', '[r12]', '[r13]', '[r12+8]', '[r13+0x100]',
         '[rax+r8*2]', '[r15+r14*8-16]', '[rsp+rax*4]', '[rbp+rcx]', '[r9+rax]', '[0x1000]',
         '[rbx*4+0x40]', '[eax]', '[r8d+ecx*2]', 'fs:[rax]', 'gs:[0x28]', '[rax+0x7fffffff]',
         '[rsi-0x80000000]', '[r11+r12*8+0x1234]', '[esp]', '[r13d+8]']

ONLY16 = [
    'mov eax, cr0', 'mov cr0, eax', 'mov cr3, ebx', 'mov cr4, ecx', 'mov edx, cr2',
    'mov ax, [0x1000]', 'mov [0x1234], al', 'mov eax, [0x10]', 'mov ax, es:[0x10]',
    'mov ax, 0x1234', 'mov eax, 0x12345678', 'mov [bx], ax', 'mov ax, [bp+2]',
    'mov eax, [eax]', 'mov [ebx+ecx*4], edx', 'mov ax, [esp+4]', 'mov ax, cs', 'mov eax, ds',
    'push ax', 'push eax', 'pop edx', 'push cs', 'push ds', 'pop ds', 'push es', 'pop es',
    'push ss', 'pop ss', 'pushfd', 'popfd', 'pusha', 'popa', 'pushad', 'popad', 'into',
    'inc ax', 'inc eax', 'dec si', 'dec edi', 'add ax, 5', 'add eax, 5', 'xchg ax, bx',
    'xchg eax, ebx', 'lea ax, [bx+si+4]', 'lea eax, [ebx+ecx]', 'lgdt [0x7c00]', 'lidt [bx]',
    'lgdt [cs:0x100]', 'movzx eax, word [bx]', 'movsx edx, byte [si]', 'rep movsw',
    'rep movsd', 'rep stosd', 'lock add word [bx], 1', 'imul ax, bx, 3', 'shl ax, 4',
    'jmp ax', 'jmp [bx]', 'jmp word [si+2]', 'call bx', 'call [bp+di]', 'call word [bx]',
    'jmp 0x08:0x1000', 'call 0xf000:0xfff0', 'jmp far [bx]', 'call far [si]', 'jmp eax',
]
ONLY32 = [
    'mov eax, cr0', 'mov cr0, eax', 'mov cr3, edi', 'mov cr4, eax', 'mov eax, [0x1000]',
    'mov [0x2000], eax', 'mov al, [0x10]', 'mov [0x10], ax', 'mov eax, fs:[0x10]',
    'mov ax, [bx+si]', 'mov ax, [bp]', 'mov eax, [di+4]', 'push eax', 'pop ebx', 'push ax',
    'push cs', 'push ds', 'pop ds', 'push es', 'pop es', 'push ss', 'pop ss',
    'push dword [eax]', 'pop dword [ebx]', 'push word [eax]', 'push 0x12345678', 'pushfd',
    'popfd', 'pusha', 'popa', 'pushad', 'popad', 'into', 'lgdt [0x1000]', 'lidt [eax]',
    'sgdt [esp]', 'invlpg [ebx]', 'xchg eax, eax', 'xchg ax, ax', 'inc eax', 'dec ax',
    'jmp eax', 'call eax', 'jmp [eax]', 'jmp dword [ebx+4]', 'call esi', 'call [ebp-8]',
    'jmp ax', 'jmp 0x08:0x12345678', 'call 0x10:0x100', 'jmp far [eax]', 'call far [ebx]',
    'sysexit',
]
ONLY64 = [
    'mov rax, rbx', 'mov r8, r9', 'mov rax, 5', 'mov rax, -1', 'mov rax, 0x123456789',
    'mov r15, 0x7fffffff', 'mov rcx, 0x80000000', 'mov rdx, 0xffffffffffffffff',
    'mov r10d, 1', 'mov r11w, 2', 'mov r12b, 3', 'mov sil, 4', 'mov dil, al', 'mov spl, bpl',
    'mov al, r8b', 'mov qword [rax], 5', 'mov qword [rax], -5', 'mov [rbx], rax',
    'mov rax, [rbx]', 'mov r8, [r9+r10*4]', 'mov rax, [0x1000]', 'mov eax, [0x1000]',
    'mov al, [0x10]', 'mov [0x1000], rax', 'mov rax, cr0', 'mov cr0, rax', 'mov cr3, rax',
    'mov rbx, cr2', 'mov cr4, rcx', 'mov cr8, rax', 'mov rax, cr8', 'mov r9, cr3',
    'mov cr3, r10', 'mov ds, ax', 'mov ax, ds', 'mov rax, ds', 'mov es, ax', 'mov r9w, fs',
    'movzx rax, bl', 'movzx r8, word [rax]', 'movzx r9d, r10b', 'movsx rax, cl',
    'movsx rcx, word [rbx]', 'movsxd rax, ecx', 'movsxd r8, dword [rsi]', 'movsx rax, ecx',
    'add rax, rbx', 'add rax, 5', 'add rax, 0x1000', 'add rax, -0x80000000', 'add r8, r9',
    'add r10d, 1', 'sub rsp, 8', 'sub rsp, 0x100', 'and rax, -16', 'or r12, [r13]',
    'xor r14d, r14d', 'cmp qword [rax], 0', 'cmp r15b, 1', 'adc r8w, 3', 'sbb rcx, [rsp+8]',
    'add [rax+r11*8], r12', 'add byte [rsi], 3', 'add r8b, 0x80', 'add sil, dil',
    'lea r8, [r9+r10*2+3]', 'lea eax, [rax+rbx]', 'lea rsp, [rsp+8]', 'lea ax, [rbx]',
    'test rax, rax', 'test r8, 1', 'test r9b, r10b', 'test qword [rax], 0x10',
    'test rax, 0x100', 'inc rax', 'inc r8', 'inc eax', 'inc ax', 'dec r9d', 'dec qword [rax]',
    'neg r10', 'not r11', 'mul r12', 'div r13', 'idiv qword [rsp]', 'imul rax, rbx',
    'imul r8, [r9], 10', 'imul rax, rcx, 0x1000', 'imul r12', 'shl rax, 1', 'shl r8, 12',
    'shr r9, cl', 'sar qword [rax], 3', 'rol r10b, 1', 'ror r11w, cl',
    'push rax', 'push r8', 'push r15', 'pop rbx', 'pop r12', 'push qword [rax]',
    'pop qword [rbx]', 'push 5', 'push 0x1000', 'push -1', 'push fs', 'pop fs', 'push gs',
    'pop gs', 'push ax', 'pop r9w', 'push word [rax]', 'pushf', 'popf', 'pushfq', 'popfq',
    'iretq', 'iret', 'iretd', 'cdqe', 'cqo', 'swapgs', 'movsq', 'stosq', 'lodsq',
    'rep movsq', 'rep stosq', 'scasq', 'cmpsq', 'rep outsd',
    'xchg rax, rbx', 'xchg r8, rax', 'xchg rcx, rdx', 'xchg r9, [rax]', 'xchg eax, eax',
    'xchg rax, r8', 'xchg ax, r9w', 'xchg r10b, al',
    'cmpxchg [rax], rcx', 'lock cmpxchg [rdi], r8', 'cmpxchg16b [rax]',
    'lock cmpxchg16b [rdi+16]', 'cmpxchg8b [rsi]', 'xadd [rax], r9',
    'lock xadd qword [rbx], rax', 'bswap rax', 'bswap r9', 'bswap r10d', 'bt rax, 63',
    'bts r8, r9', 'btr qword [rax], 1', 'btc r11, rcx', 'bsf r8, r9', 'bsr rax, [rbx]',
    'sete r8b', 'setne sil', 'cmovz r8, r9', 'cmovg rax, [rbx]', 'cmovb r10d, ecx',
    'lgdt [rax]', 'sgdt [r8]', 'sidt [rsp]', 'invlpg [rax]', 'invlpg [r12+8]', 'ltr ax',
    'ltr r9w', 'lldt [rax]', 'movq xmm0, rax', 'movq rax, xmm0', 'movq xmm8, r9',
    'movq r10, xmm11', 'movq xmm9, xmm10', 'movq xmm1, [rax]', 'movq [r8], xmm12',
    'movd xmm8, eax', 'movd r9d, xmm1', 'movd xmm0, r8d', 'movdqa xmm8, xmm15',
    'movdqa xmm9, [r9]', 'movdqu [rax+r8], xmm10', 'movups xmm13, xmm2', 'paddd xmm8, xmm9',
    'paddq xmm14, [rax]', 'psubd xmm0, xmm15', 'pxor xmm15, xmm15', 'pand xmm8, xmm1',
    'por xmm1, xmm8', 'addps xmm9, xmm10', 'addpd xmm11, [r11]', 'mulps xmm12, xmm13',
    'mulpd xmm14, xmm15', 'xorps xmm8, xmm8', 'pshufd xmm8, xmm9, 0x4e',
    'cvtsi2sd xmm0, rax', 'cvtsi2sd xmm8, r9', 'cvtsi2sd xmm1, qword [rax]',
    'cvtsi2sd xmm2, r10d', 'cvttsd2si rax, xmm0', 'cvttsd2si r8, xmm9',
    'cvttsd2si r9d, [rax]', 'addsd xmm8, xmm9', 'mulsd xmm10, [rbx]', 'divsd xmm11, xmm12',
    'sqrtsd xmm13, xmm14', 'movsd xmm8, [rax]', 'movsd [r9], xmm10', 'movsd xmm1, xmm9',
    'mov byte [r8], 1', 'mov word [r9+2], 0x1234', 'mov dword [r10+r11], 0x12345678',
    'lock inc qword [rax]', 'lock add [rbx], rcx', 'mov eax, fs:[rbx]', 'mov rax, gs:[0]',
    'jmp rax', 'jmp r11', 'jmp [rax]', 'jmp qword [rbx+8]', 'call rsi', 'call r12',
    'call [rsp]', 'jmp far [rax]', 'call [r13+8]',
]


def jumps(bits):
    """Labels, short and near jumps in both directions; GNU as relaxes the same way."""
    lines = ['top:', 'jmp top', 'jmp fwd', 'call top', 'call fwd', 'loop top', 'loope top',
             'loopne fwd', 'loopz top', 'loopnz top']
    lines += [f'j{cc} top' for cc in CCS] + [f'j{cc} fwd' for cc in CCS[:6]]
    lines += ['jmp far_away', 'jne far_away', 'call far_away', 'fwd:', 'nop']
    lines += ['nop'] * 300
    lines += ['far_away:', 'jmp top', 'je top', 'jmp fwd', 'jz fwd2', 'fwd2:',
              'jmp fwd2', 'jmp fwd3']
    lines += {16: ['jcxz fwd2', 'jecxz fwd2'], 32: ['jecxz fwd2', 'jcxz fwd2'],
              64: ['jrcxz fwd2', 'jecxz fwd2']}[bits]
    lines += ['inc eax'] * 60 + ['fwd3:']
    if bits == 64:
        lines += ['mov eax, [rel top]', 'lea rax, [rel fwd]',
                  'mov dword [rel top], 5', 'cmp byte [rel fwd2], 1', 'add qword [rel fwd], 0x100',
                  'movaps xmm12, [rel top]', 'pshufd xmm0, [rel far_away], 1',
                  'lidt [rel fwd]', 'jmp [rel top]', 'call [rel data]', 'mov r8, [rel data+8]',
                  'data:']
    return lines


def gas_syntax(line):
    """Our syntax as GNU as's Intel dialect writes it."""
    line = re.sub(r'\b(byte|word|dword|qword|far)\s+(?=\[|[a-z]s:)', r'\1 ptr ', line)
    line = re.sub(r'\[([c-gs]s):', r'\1:[', line)
    return line.replace('[rel ', '[rip + ')


def gas(lines, bits):
    """Bytes GNU as makes of `lines` in `bits` mode."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, out = (os.path.join(tmp, name) for name in ('a.s', 'a.o', 'a.bin'))
        with open(src, 'w') as f:
            f.write(f'.intel_syntax noprefix\n.code{bits}\n')
            f.write('\n'.join(gas_syntax(line) for line in lines) + '\n')
        run = subprocess.run(['as', '--64' if bits == 64 else '--32', '-o', obj, src],
                             capture_output=True, text=True)
        if run.returncode:
            raise AssertionError(f'GNU as refused the sample: {run.stderr}')
        subprocess.run(['objcopy', '-O', 'binary', '-j', '.text', obj, out], check=True)
        with open(out, 'rb') as f:
            return f.read()


@unittest.skipUnless(HAVE_GAS, 'GNU as and objcopy are not installed')
class AgainstGnuAs(unittest.TestCase):
    """Every mnemonic and addressing form, byte for byte against GNU as."""

    def assert_same_as_gas(self, bits, lines):
        marked = []
        for i, line in enumerate(lines):
            marked += [f'L{i}:', line]
        ours, where = assemble_with_labels('\n'.join(marked), bits)
        theirs = gas(lines, bits)
        if ours == theirs:
            return
        first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b),
                     min(len(ours), len(theirs)))
        i = max(i for i in range(len(lines)) if where[f'L{i}'] <= first)
        at = where[f'L{i}']
        end = where.get(f'L{i + 1}', len(ours))
        self.fail(f"bits {bits}: '{lines[i]}' gives {ours[at:end].hex()}, "
                  f'GNU as gives {theirs[at:at + end - at + 4].hex()}...')

    def test_every_mode_lines_in_bits16(self):
        self.assert_same_as_gas(16, every_mode('[bx+si]', '[bp+4]'))

    def test_every_mode_lines_in_bits32(self):
        self.assert_same_as_gas(32, every_mode('[eax]', '[ebx+4]'))

    def test_every_mode_lines_in_bits64(self):
        self.assert_same_as_gas(64, every_mode('[rax]', '[r9+4]'))

    def test_addressing_forms_in_bits16(self):
        self.assert_same_as_gas(16, addressing(16, MEM16 + MEM32))

    def test_addressing_forms_in_bits32(self):
        self.assert_same_as_gas(32, addressing(32, MEM32 + MEM16))

    def test_addressing_forms_in_bits64(self):
        self.assert_same_as_gas(64, addressing(64, MEM64))

    def test_mode_specific_lines_in_bits16(self):
        self.assert_same_as_gas(16, ONLY16)

    def test_mode_specific_lines_in_bits32(self):
        self.assert_same_as_gas(32, ONLY32)

    def test_mode_specific_lines_in_bits64(self):
        self.assert_same_as_gas(64, ONLY64)

    def test_jumps_and_labels_in_bits16(self):
        self.assert_same_as_gas(16, jumps(16))

    def test_jumps_and_labels_in_bits32(self):
        self.assert_same_as_gas(32, jumps(32))

    def test_jumps_and_labels_in_bits64(self):
        self.assert_same_as_gas(64, jumps(64))


if __name__ == '__main__':
    unittest.main()
