"""Tests for tools.asm: byte-for-byte against GNU as where it is installed,
and labels, jump sizing, expressions, directives and errors on their own."""

import os
import random
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
        f'movss {m}, xmm2', 'movapd xmm1, xmm2', f'movapd {m}, xmm3', f'movupd xmm4, {m}',
        'psubq xmm0, xmm1', 'psubb xmm1, xmm2', 'psubw xmm2, xmm3', 'paddb xmm3, xmm4',
        'paddw xmm4, xmm5', 'pandn xmm5, xmm6', 'pcmpeqb xmm6, xmm7', 'pmuludq xmm0, xmm1',
        'punpcklqdq xmm1, xmm2', 'unpcklpd xmm2, xmm3', 'subps xmm0, xmm1', 'subpd xmm1, xmm2',
        'subss xmm2, xmm3', 'divps xmm3, xmm4', 'divpd xmm4, xmm5', 'divss xmm5, xmm6',
        'sqrtps xmm6, xmm7', 'sqrtpd xmm7, xmm0', 'sqrtss xmm0, xmm1', 'addss xmm1, xmm2',
        'mulss xmm2, xmm3', 'xorpd xmm3, xmm4', 'andps xmm4, xmm5', 'andpd xmm5, xmm6',
        'orps xmm6, xmm7', 'orpd xmm7, xmm0', 'comisd xmm0, xmm1', 'ucomiss xmm1, xmm2',
        'comiss xmm2, xmm3', 'cvtsd2ss xmm3, xmm4', 'cvtss2sd xmm4, xmm5',
        'cvtsi2ss xmm5, ecx', 'cvttss2si edx, xmm6', 'cvtss2si esi, xmm7', 'verr ax',
        f'verw {m}', 'rsm', 'monitor', 'mwait', 'int1', 'rdpmc', 'cmpsw', 'cmpsd', 'scasw',
        'stosb', 'loop $', 'jmp $', 'jmp $+2', 'xadd bx, cx', f'cmpxchg {m}, bl',
        'vmcall', 'vmmcall', 'xgetbv', 'xsetbv', 'smsw ax', 'smsw eax', f'smsw {m}', 'lmsw ax',
        f'lmsw {m}', 'btc bx, 3', f'btc {m}, ecx', 'bsf si, di', f'bsr esi, {m}',
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

    def test_random_jump_mazes_relax_like_gnu_as(self):
        rng = random.Random(7)
        for bits in (16, 32, 64) * 4:
            lines, count = [], rng.randint(5, 40)
            for i in range(count):
                lines.append(f'M{i}:')
                if rng.random() < 0.5:
                    lines.append(f"{rng.choice(['jmp', 'je', 'jne', 'jl'])} M{rng.randrange(count)}")
                else:
                    lines += ['nop'] * rng.randint(0, 60)
            self.assert_same_as_gas(bits, lines)



def hexa(source, bits=64, **kw):
    return assemble(source, bits, **kw).hex(' ')


class Jumps(unittest.TestCase):
    """Labels, forward references and the short/near choice."""

    def test_forward_jump_within_127_bytes_is_short(self):
        code = assemble('jmp x\ntimes 127 nop\nx:')
        self.assertEqual(code[:2], bytes([0xEB, 127]))

    def test_forward_jump_128_bytes_ahead_is_near(self):
        code = assemble('jmp x\ntimes 128 nop\nx:')
        self.assertEqual(code[:5], bytes([0xE9, 128, 0, 0, 0]))

    def test_backward_jump_of_minus_128_is_short_and_minus_129_near(self):
        self.assertEqual(assemble('x: times 126 nop\njmp x')[-2:], bytes([0xEB, 0x80]))
        self.assertEqual(assemble('x: times 127 nop\njmp x')[-5:],
                         (-132).to_bytes(4, 'little', signed=True).rjust(5, b'\xe9'))

    def test_conditional_jump_grows_to_0f_8x(self):
        code = assemble('jne x\ntimes 200 nop\nx:', bits=32)
        self.assertEqual(code[:6], bytes([0x0F, 0x85, 200, 0, 0, 0]))

    def test_near_jump_in_bits16_takes_rel16(self):
        code = assemble('jmp x\ntimes 300 nop\nx: je x', bits=16)
        self.assertEqual(code[:3], bytes([0xE9, 0x2C, 0x01]))
        self.assertEqual(code[-2:], bytes([0x74, 0xFE]))

    def test_growing_jump_moves_the_labels_after_it(self):
        code, labels = assemble_with_labels('a: jmp c\nb: times 130 nop\nc: jmp b')
        self.assertEqual(labels, {'a': 0, 'b': 5, 'c': 135})
        self.assertEqual(code[-5:], bytes([0xE9]) + (5 - 140).to_bytes(4, 'little', signed=True))

    def test_chain_of_jumps_that_push_each_other_out_of_range_settles(self):
        source = '\n'.join(['jmp end'] * 70) + '\nend: ret'
        code = assemble(source)
        # the last jumps reach 'end' short, the first ones only near: each must land on it
        pc, end = 0, len(code) - 1
        while pc < end:
            if code[pc] == 0xEB:
                self.assertEqual(pc + 2 + int.from_bytes(code[pc + 1:pc + 2], 'little', signed=True), end)
                pc += 2
            else:
                self.assertEqual(code[pc], 0xE9)
                self.assertEqual(pc + 5 + int.from_bytes(code[pc + 1:pc + 5], 'little', signed=True), end)
                pc += 5
        self.assertEqual(pc, end)

    def test_short_and_near_keywords_force_the_size(self):
        self.assertEqual(hexa('jmp near x\nx:'), 'e9 00 00 00 00')
        self.assertEqual(hexa('jmp short x\nx:'), 'eb 00')
        with self.assertRaisesRegex(AsmError, 'short jump out of range'):
            assemble('jmp short x\ntimes 200 nop\nx:')

    def test_call_is_always_near(self):
        self.assertEqual(hexa('call x\nx:'), 'e8 00 00 00 00')
        self.assertEqual(hexa('call x\nx:', bits=16), 'e8 00 00')

    def test_labels_count_from_the_origin_and_jumps_stay_relative(self):
        code, labels = assemble_with_labels('start: nop\nloop: jmp start', origin=0x7C00)
        self.assertEqual(labels, {'start': 0x7C00, 'loop': 0x7C01})
        self.assertEqual(code, bytes([0x90, 0xEB, 0xFD]))

    def test_label_on_the_line_of_an_instruction_and_local_labels(self):
        code, labels = assemble_with_labels('f: .l: dec ecx\n jnz .l\ng: .l: jmp f.l')
        self.assertEqual(labels, {'f': 0, 'f.l': 0, 'g': 4, 'g.l': 4})
        self.assertEqual(code, bytes([0xFF, 0xC9, 0x75, 0xFC, 0xEB, 0xFA]))

    def test_rip_relative_counts_from_the_end_including_the_immediate(self):
        self.assertEqual(hexa('mov dword [rel x], 5\nx:'), 'c7 05 00 00 00 00 05 00 00 00')
        self.assertEqual(hexa('x: cmp byte [rel x], 1'), '80 3d f9 ff ff ff 01')
        self.assertEqual(hexa('lea rax, [rel x + 8]\nx:'), '48 8d 05 08 00 00 00')

    def test_label_immediates_and_displacements_take_the_full_field(self):
        self.assertEqual(hexa('add eax, x\nx:', bits=32), '05 05 00 00 00')
        self.assertEqual(hexa('mov eax, [ebx + x]\nx:', bits=32), '8b 83 06 00 00 00')
        self.assertEqual(hexa('mov rax, x\nx:'), '48 b8 0a 00 00 00 00 00 00 00')
        self.assertEqual(hexa('add eax, b - a\na: nop\nb:'), '83 c0 01 90')

    def test_far_jump_takes_ptr16_16_or_ptr16_32(self):
        self.assertEqual(hexa('jmp 0x08:x\nx:', bits=16, origin=0x7C00), 'ea 05 7c 08 00')
        self.assertEqual(hexa('jmp dword 0x08:x\nx:', bits=16), '66 ea 08 00 00 00 08 00')
        self.assertEqual(hexa('call 0x10:x\nx:', bits=32), '9a 07 00 00 00 10 00')
        with self.assertRaisesRegex(AsmError, 'far pointers need bits 16 or 32'):
            assemble('jmp 0x08:0')

    def test_real_to_long_mode_trampoline(self):
        code, labels = assemble_with_labels("""
            bits 16
            start:  cli
                    lgdt [gdtr]
                    mov eax, cr0
                    or al, 1
                    mov cr0, eax
                    jmp 0x08:pm
            bits 32
            pm:     mov ax, 0x10
                    mov ds, ax
                    mov eax, cr4
                    or eax, 1 << 5          ; PAE
                    mov cr4, eax
                    mov ecx, 0xC0000080     ; EFER
                    rdmsr
                    or eax, 1 << 8          ; LME
                    wrmsr
                    jmp 0x18:lm
            bits 64
            lm:     mov rax, 0x1122334455667788
                    hlt
                    align 8
            gdt:    dq 0, 0x00cf9a000000ffff, 0x00cf92000000ffff, 0x00af9a000000ffff
            gdtr:   dw $ - gdt - 1
                    dd gdt
        """, bits=16, origin=0x1000)
        self.assertEqual(code[:6], bytes.fromhex('fa 0f 01 16') + labels['gdtr'].to_bytes(2, 'little'))
        pm, lm = labels['pm'], labels['lm']
        self.assertEqual(code[pm - 0x1000 - 5:pm - 0x1000], bytes([0xEA]) + pm.to_bytes(2, 'little') + b'\x08\x00')
        self.assertEqual(code[lm - 0x1000 - 7:lm - 0x1000], bytes([0xEA]) + lm.to_bytes(4, 'little') + b'\x18\x00')
        self.assertEqual(code[lm - 0x1000:lm - 0x1000 + 10], bytes.fromhex('48b88877665544332211'))
        self.assertEqual(labels['gdt'] % 8, 0)
        self.assertEqual(code[-6:], (31).to_bytes(2, 'little') + labels['gdt'].to_bytes(4, 'little'))


class Expressions(unittest.TestCase):

    def value(self, expr, **symbols):
        return int.from_bytes(assemble(f'dq {expr}', symbols=symbols), 'little', signed=True)

    def test_precedence_and_parentheses(self):
        self.assertEqual(self.value('1 + 2 * 3'), 7)
        self.assertEqual(self.value('(1 + 2) * 3'), 9)
        self.assertEqual(self.value('1 << 4 | 1'), 17)
        self.assertEqual(self.value('1 | 2 ^ 3 & 6'), 1 | (2 ^ (3 & 6)))
        self.assertEqual(self.value('0x10 - 1 - 1'), 14)
        self.assertEqual(self.value('-(2 + 3) * ~0'), 5)
        self.assertEqual(self.value('0x100 >> 4'), 16)

    def test_number_forms(self):
        self.assertEqual(self.value('0x1F + 0b101 + 10 + 0ffh'), 31 + 5 + 10 + 255)
        self.assertEqual(self.value("'A'"), 65)
        self.assertEqual(self.value("'AB'"), 0x4241)
        self.assertEqual(self.value('1_000'), 1000)

    def test_division_truncates_toward_zero(self):
        self.assertEqual(self.value('-7 / 2'), -3)
        self.assertEqual(self.value('-7 % 2'), -1)
        self.assertEqual(self.value('7 / 2'), 3)

    def test_symbols_and_equ_including_forward_references(self):
        self.assertEqual(self.value('BASE + 4', BASE=0x1000), 0x1004)
        code, labels = assemble_with_labels('mov eax, SIZE\nSIZE equ COUNT * 4\nCOUNT equ 3', bits=32)
        self.assertEqual(code, bytes.fromhex('b80c000000'))
        self.assertEqual(labels, {'SIZE': 12, 'COUNT': 3})

    def test_dollar_is_this_statement_and_double_dollar_the_origin(self):
        self.assertEqual(hexa('nop\njmp $'), '90 eb fe')
        self.assertEqual(hexa('nop\nnop\ndw $, $ - $$', origin=0x100), '90 90 02 01 02 00')

    def test_constant_immediates_take_the_short_form(self):
        self.assertEqual(hexa('add eax, N\nN equ 4'), '83 c0 04')


class Directives(unittest.TestCase):

    def test_data_lists_strings_and_widths(self):
        self.assertEqual(assemble('db "Hi", 0, \'a;b\', -1\ndw 0x1234, \'ab\'\ndd 1\ndq -2'),
                         b'Hi\x00a;b\xff' + b'\x34\x12ab' + b'\x01\x00\x00\x00'
                         + b'\xfe' + b'\xff' * 7)

    def test_times_repeats_data_and_instructions(self):
        self.assertEqual(assemble('times 3 db 7\ntimes 2 nop\ntimes 0 hlt'), b'\x07\x07\x07\x90\x90')
        self.assertEqual(assemble('times 2 db \'a  b\''), b'a  ba  b')
        self.assertEqual(assemble('db "→", 0'), '→'.encode() + b'\0')

    def test_boot_sector_padding(self):
        code = assemble('org 0x7c00\njmp $\ntimes 510-($-$$) db 0\ndw 0xaa55', bits=16)
        self.assertEqual(len(code), 512)
        self.assertEqual(code[:2] + code[-2:], bytes([0xEB, 0xFE, 0x55, 0xAA]))

    def test_res_reserves_zeroed_space(self):
        self.assertEqual(assemble('resb 3\nresw 1\nresd 1\nresq 1'), bytes(17))

    def test_align_pads_code_with_nops_and_data_with_zeros(self):
        self.assertEqual(assemble('hlt\nalign 4'), bytes([0xF4, 0x90, 0x90, 0x90]))
        self.assertEqual(assemble('db 1\nalign 4'), bytes([1, 0, 0, 0]))
        self.assertEqual(assemble('db 1\nalign 4, 0xcc\nalign 4'), bytes([1, 0xCC, 0xCC, 0xCC]))

    def test_org_sets_the_origin_first_and_pads_later(self):
        code, labels = assemble_with_labels('org 0x100\nnop\norg 0x104\nx: nop')
        self.assertEqual(code, bytes([0x90, 0, 0, 0, 0x90]))
        self.assertEqual(labels['x'], 0x104)
        with self.assertRaisesRegex(AsmError, 'behind'):
            assemble('nop\nnop\norg 1', origin=0)

    def test_bits_switches_operand_size_mid_source(self):
        self.assertEqual(hexa('mov ax, 1\nbits 32\nmov ax, 1\n[bits 64]\nmov rax, rbx', bits=16),
                         'b8 01 00 66 b8 01 00 48 89 d8')

    def test_comments_and_blank_lines(self):
        self.assertEqual(assemble('; only a comment\n\n  nop # hash comment\n\tret ; done'),
                         bytes([0x90, 0xC3]))


class Encodings(unittest.TestCase):
    """Forms GNU as's Intel dialect spells differently, checked against the SDM."""

    def test_sized_push_immediates(self):
        self.assertEqual(hexa('push word 7\npush dword 0x12345', bits=32),
                         '66 6a 07 68 45 23 01 00')
        self.assertEqual(hexa('push dword 5', bits=16), '66 6a 05')

    def test_sysret_forms(self):
        self.assertEqual(hexa('sysret\nsysretq'), '0f 07 48 0f 07')

    def test_movsd_is_the_string_op_without_operands(self):
        self.assertEqual(hexa('movsd\nmovsd xmm0, xmm1'), 'a5 f2 0f 10 c1')

    def test_absolute_address_in_bits64_uses_sib_not_rip(self):
        self.assertEqual(hexa('mov eax, [0x1000]'), '8b 04 25 00 10 00 00')

    def test_address_beyond_64k_in_bits16_uses_the_address_size_prefix(self):
        self.assertEqual(hexa('mov ax, [0x12345]', bits=16), '67 a1 45 23 01 00')
        self.assertEqual(hexa('inc byte [0x12345]', bits=16), '67 fe 05 45 23 01 00')


class Errors(unittest.TestCase):

    def assert_error(self, source, reason, bits=64, lineno=1):
        with self.assertRaises(AsmError) as caught:
            assemble(source, bits)
        e = caught.exception
        self.assertEqual((e.lineno, e.reason), (lineno, reason))
        self.assertEqual(str(e), f"line {lineno} '{e.text}': {reason}")
        return e

    def test_message_names_line_number_text_and_reason(self):
        e = self.assert_error('nop\n\n   mov al, bx   ; oops\n', 'operand sizes differ', lineno=3)
        self.assertEqual(str(e), "line 3 'mov al, bx   ; oops': operand sizes differ")
        self.assertIsInstance(e, ValueError)

    def test_undefined_symbol(self):
        self.assert_error('jmp nowhere', "undefined symbol 'nowhere'")

    def test_unknown_instruction(self):
        self.assert_error('frob eax', "unknown instruction 'frob'")

    def test_size_must_be_given_for_memory_and_immediate(self):
        self.assert_error('mov [rax], 1', 'operand size not specified (use byte/word/dword/qword)')

    def test_64_bit_registers_outside_bits64(self):
        self.assert_error('mov r8d, 1', 'r8-r15, spl/bpl/sil/dil and REX need bits 64', bits=32)
        self.assert_error('mov rax, 1', '64-bit operands need bits 64', bits=16)

    def test_high_byte_registers_with_rex(self):
        self.assert_error('mov ah, sil', 'ah/bh/ch/dh cannot be used with a REX prefix')

    def test_label_defined_twice(self):
        self.assert_error('a: nop\na: nop', "'a' is defined twice", lineno=2)

    def test_values_out_of_range(self):
        self.assert_error('mov al, 300', 'value 0x12c does not fit in 8 bits')
        self.assert_error('add rax, 0x80000000',
                          'value 0x80000000 does not fit in a signed 32-bit field')
        self.assert_error('loop x\ntimes 200 nop\nx:', 'loop target out of range (200)')

    def test_bad_addresses(self):
        self.assert_error('mov ax, [bx+ax]', '[bx+ax] is not a 16-bit address form', bits=16)
        self.assert_error('mov eax, [ebx+ecx+edx]', "too many registers in 'ebx+ecx+edx'", bits=32)
        self.assert_error('mov eax, [rax+esp*2]', 'address registers of different sizes')
        self.assert_error('mov eax, [rax+rsp*2]', "'rsp' cannot be an index register")
        self.assert_error('mov eax, [rax*3]', 'scale must be 1, 2, 4 or 8, not 3')
        self.assert_error('mov eax, [rel 0x10]', 'rel needs bits 64 and no registers', bits=32)

    def test_instructions_invalid_in_the_mode(self):
        self.assert_error('push es', 'cannot push es in bits 64')
        self.assert_error('pusha', 'pusha is not valid in bits 64')
        self.assert_error('mov cs, ax', 'cs cannot be loaded with mov')

    def test_wrong_operand_count_and_kinds(self):
        self.assert_error('add eax', 'takes 2 operand(s), not 1')
        self.assert_error('lgdt eax', 'lgdt needs a memory operand')
        self.assert_error('mov 5, eax', 'invalid operands')

    def test_bad_mode_argument(self):
        with self.assertRaises(ValueError):
            Assembler(bits=8)
        self.assert_error('bits 8', 'bits must be 16, 32 or 64')

if __name__ == '__main__':
    unittest.main()
