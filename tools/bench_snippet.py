"""The Snippet runner's benchmark: kvmlite against unicorn, a C floor and
its own previous figures.

    python3 tools/bench_snippet.py [--reps N] [--quick] [--save] [--figures FILE]

People use ``kvmlite.Snippet`` where they would use unicorn: to run a few
bytes of machine code from a unit test. What such a test does most is what
is measured here, each in this one process, medians of ``--reps`` rounds
(``mov eax, ebx; add eax, ecx; hlt`` style code in 64-bit long mode):

``life``   create a Snippet with no RAM, map one page, write the code, run
           it, read EAX, close (unicorn: Uc, mem_map, mem_write, emu_start,
           reg_read, drop);
``reused`` on one Snippet: write the code and two registers, run, read two
           registers (unicorn: the same on one Uc);
``loop``   a 100M-iteration ``dec ecx; jnz`` loop (CPL3 only: CPL0 code is
           emulated on kvm_pvm hosts, about a thousand times slower);
``first``  a fresh ``python3`` process with PYTHONDONTWRITEBYTECODE=1 (as in
           many CI containers): start, import, create, run, exit; and
           ``import``: ``python3 -c 'import kvmlite'`` alone;

each at CPL3 (native on every host) and CPL0 (emulated on kvm_pvm). The
floor is a C program (written and compiled here with ``cc``) that does the
``reused`` run on the same guest state, as kvmlite leaves it after its
first run: code written into the mapping, registers through the kvm_run
sync area, one KVM_RUN, the stop unwound the same way, two registers read.
The reused run and the floor take turns, round by round, and "vs floor" is
the median of the rounds' own ratios (this host's speed drifts by tens of
percent within a minute).

unicorn is looked up by name and used when importable (``pip install
unicorn``); kvmlite never needs it. The figures of a run can be saved
(``--save``) to ``tools/bench_snippet.json``; later runs print them next to
the new ones, with the ratio, so a change can be measured on a host
without unicorn. Nothing here asserts a speed: a loaded host would break
it (tests/test_bench_snippet.py checks that the table comes out).
"""

import argparse
import ctypes
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import kvmlite as K                     # noqa: E402
from tools.bench import compile_c       # noqa: E402

FIGURES = os.path.join(ROOT, 'tools', 'bench_snippet.json')
AT = 0x1000
LIFE_CODE = bytes.fromhex('b82a000000f4')                 # mov eax, 42; hlt
REUSED_CODE = bytes.fromhex('89d801c8f4')                 # mov eax, ebx; add eax, ecx; hlt
LOOP_ITERS = 100_000_000
LOOP_CODE = bytes.fromhex('b9') + LOOP_ITERS.to_bytes(4, 'little') + \
    bytes.fromhex('ffc975fcf4')                           # mov ecx, N; l: dec ecx; jnz l; hlt


def _unicorn():
    try:
        return importlib.import_module('unicorn')
    except ImportError:
        return None


def median_us(fn, n, reps):
    """Median over ``reps`` rounds of ``n`` calls: microseconds per call."""
    rounds = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(rounds)


# -- kvmlite ----------------------------------------------------------------

def kvmlite_life(cpl, kvm):
    def once():
        s = K.Snippet('long64', cpl=cpl, mem_size=0, kvm=kvm)
        s.mem_map(AT, 0x1000)
        s.mem_write(AT, LIFE_CODE)
        stop = s.run(AT)
        if s.reg_read('eax') != 42 or stop.reason != 'hlt':
            raise RuntimeError(f'life-cycle snippet: {stop}, eax {s.reg_read("eax"):#x}')
        s.close()
    return once


def kvmlite_reused(cpl, kvm):
    s = K.Snippet('long64', cpl=cpl, mem_size=0x10000, kvm=kvm)
    state = {'i': 0}

    def once():
        i = state['i'] = state['i'] + 1
        s.mem_write(AT, REUSED_CODE)
        s.reg_write('rbx', i)
        s.reg_write('rcx', 1)
        s.run(AT)
        if s.reg_read('rax') != i + 1 or s.reg_read('rbx') != i:
            raise RuntimeError(f'reused snippet: rax {s.reg_read("rax"):#x}, not {i + 1:#x}')
    return s, once


def kvmlite_loop(kvm):
    with K.Snippet('long64', cpl=3, kvm=kvm) as s:
        t = time.perf_counter()
        stop = s.run(LOOP_CODE, timeout=60)
        took = time.perf_counter() - t
        if stop.reason != 'hlt':
            raise RuntimeError(f'loop snippet: {stop}')
    return took * 1e3


# a code hook on every instruction: mov ecx, N; top: dec ecx; jnz top; hlt
STEP_LOOPS = 100
STEP_CODE = bytes.fromhex('b9') + STEP_LOOPS.to_bytes(4, 'little') + bytes.fromhex('ffc975fcf4')
STEP_INSNS = 2 * STEP_LOOPS + 2


def kvmlite_step_us(cpl, kvm):
    """One run of STEP_CODE with a code hook on every instruction: us per
    hooked instruction (an exit each)."""
    with K.Snippet('long64', cpl=cpl, kvm=kvm) as s:
        seen = [0]

        def hook(s, address, size):
            seen[0] += 1
        s.hook_code(hook)
        t = time.perf_counter()
        stop = s.run(STEP_CODE, timeout=60)
        took = time.perf_counter() - t
        if stop.reason != 'hlt' or seen[0] != STEP_INSNS:
            raise RuntimeError(f'stepped snippet: {stop}, {seen[0]} hook calls')
    return took * 1e6 / STEP_INSNS


def unicorn_step_us(uc):
    mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
    mu.mem_map(0, 0x10000)
    mu.mem_write(AT, STEP_CODE)
    seen = [0]

    def hook(mu, address, size, data):
        seen[0] += 1
    mu.hook_add(uc.UC_HOOK_CODE, hook)
    t = time.perf_counter()
    mu.emu_start(AT, AT + len(STEP_CODE) - 1)
    took = time.perf_counter() - t
    return took * 1e6 / max(seen[0], 1)


# -- unicorn ----------------------------------------------------------------

def unicorn_life(uc):
    def once():
        mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
        mu.mem_map(AT, 0x1000)
        mu.mem_write(AT, LIFE_CODE)
        mu.emu_start(AT, AT + len(LIFE_CODE) - 1)
        if mu.reg_read(uc.x86_const.UC_X86_REG_EAX) != 42:
            raise RuntimeError('unicorn life cycle went wrong')
        del mu
    return once


def unicorn_reused(uc):
    x = uc.x86_const
    mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
    mu.mem_map(0, 0x10000)
    state = {'i': 0}

    def once():
        i = state['i'] = state['i'] + 1
        mu.mem_write(AT, REUSED_CODE)
        mu.reg_write(x.UC_X86_REG_RBX, i)
        mu.reg_write(x.UC_X86_REG_RCX, 1)
        mu.emu_start(AT, AT + len(REUSED_CODE) - 1)
        if mu.reg_read(x.UC_X86_REG_RAX) != i + 1 or mu.reg_read(x.UC_X86_REG_RBX) != i:
            raise RuntimeError('unicorn reused run went wrong')
    return once


def unicorn_loop(uc):
    mu = uc.Uc(uc.UC_ARCH_X86, uc.UC_MODE_64)
    mu.mem_map(0, 0x10000)
    mu.mem_write(AT, LOOP_CODE)
    t = time.perf_counter()
    mu.emu_start(AT, AT + len(LOOP_CODE) - 1)
    return (time.perf_counter() - t) * 1e3


# -- whole processes --------------------------------------------------------

FIRST_KVMLITE = ('import kvmlite\n'
                 's = kvmlite.Snippet("long64", cpl={cpl}, mem_size=0)\n'
                 's.mem_map(0x1000, 0x1000)\n'
                 'assert s.run(bytes.fromhex("b82a000000f4")).reason == "hlt"\n'
                 'assert s.reg_read("eax") == 42\n')
FIRST_UNICORN = ('import unicorn\nfrom unicorn.x86_const import UC_X86_REG_EAX\n'
                 'mu = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)\n'
                 'mu.mem_map(0x1000, 0x1000)\n'
                 'mu.mem_write(0x1000, bytes.fromhex("b82a000000f4"))\n'
                 'mu.emu_start(0x1000, 0x1005)\n'
                 'assert mu.reg_read(UC_X86_REG_EAX) == 42\n')


def process_ms(script, reps):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE='1')
    env['PYTHONPATH'] = os.pathsep.join(p for p in (ROOT, env.get('PYTHONPATH')) if p)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                           text=True)
        times.append((time.perf_counter() - t) * 1e3)
        if r.returncode:
            raise RuntimeError(f'fresh process failed: {r.stderr.strip().splitlines()[-1:]}')
    return statistics.median(times)


# -- the C floor ------------------------------------------------------------

FLOOR_C = r'''
/* The floor of a reused snippet run: what kvmlite's reused run does, in C.
   Input: a state file (kvm_regs and kvm_sregs of the Snippet after a run,
   the sregs it enters with, its memory slots, its CPUID, its MSRs); then N
   times: write the code, set RBX and RCX and RIP through the kvm_run sync
   area (and the entry sregs, as the unwound stop needs), one KVM_RUN, read
   RAX and RBX. Prints the nanoseconds per run. */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(2); }

int main(int argc, char **argv)
{
    uint32_t head[6];   /* sizes of regs, sregs, cpuid entry; cpuid entries, slots, msrs */
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    FILE *f = argc == 3 ? fopen(argv[1], "rb") : NULL;
    long n = argc == 3 ? atol(argv[2]) : 0;
    if (!f || n <= 0) die("usage: floor STATE N");
    if (fread(head, 4, 6, f) != 6 || head[0] != sizeof regs || head[1] != sizeof sregs
        || head[2] != sizeof(struct kvm_cpuid_entry2)) {
        fprintf(stderr, "floor: state file does not match <linux/kvm.h>\n");
        return 2;
    }
    if (fread(&regs, sizeof regs, 1, f) != 1 || fread(&sregs, sizeof sregs, 1, f) != 1)
        die("state file");
    struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + head[3] * sizeof(struct kvm_cpuid_entry2));
    cpuid->nent = head[3];
    if (fread(cpuid->entries, sizeof cpuid->entries[0], head[3], f) != head[3]) die("cpuid");
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");
    ioctl(vm, KVM_SET_TSS_ADDR, 0xFFFBD000);
    uint8_t *code_page = NULL;
    for (uint32_t i = 0; i < head[4]; i++) {
        uint64_t gpa, size;
        if (fread(&gpa, 8, 1, f) != 1 || fread(&size, 8, 1, f) != 1) die("slot");
        uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) die("mmap");
        if (fread(mem, 1, size, f) != size) die("slot contents");
        struct kvm_userspace_memory_region r = {
            .slot = i, .guest_phys_addr = gpa, .memory_size = size, .userspace_addr = (uintptr_t)mem };
        if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0) die("KVM_SET_USER_MEMORY_REGION");
        if (gpa <= AT && AT < gpa + size) code_page = mem + (AT - gpa);
    }
    struct kvm_msrs *msrs = calloc(1, sizeof *msrs + head[5] * sizeof(struct kvm_msr_entry));
    msrs->nmsrs = head[5];
    for (uint32_t i = 0; i < head[5]; i++)
        if (fread(&msrs->entries[i].index, 4, 1, f) != 1 || fread(&msrs->entries[i].data, 8, 1, f) != 1)
            die("msr");
    fclose(f);
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    if (ioctl(vcpu, KVM_SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_MSRS, msrs) != (int)head[5]) die("KVM_SET_MSRS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
    long run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED || !code_page) die("mmap kvm_run");
    static const uint8_t code[] = { 0x89, 0xd8, 0x01, 0xc8, 0xf4 };  /* mov eax, ebx; add eax, ecx; hlt */
    run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS | KVM_SYNC_X86_EVENTS;
    run->immediate_exit = 1;
    ioctl(vcpu, KVM_RUN, 0);                      /* fills the sync area; EINTR */
    run->immediate_exit = 0;
    struct timespec t0, t1;
    uint64_t bad = 0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 1; i <= n; i++) {
        memcpy(code_page, code, sizeof code);
        struct kvm_regs *r = &run->s.regs.regs;
        *r = regs;                                /* the stop is unwound: the entry state */
        r->rbx = i; r->rcx = 1; r->rip = AT;
        run->s.regs.sregs.cs = sregs.cs;
        run->s.regs.sregs.ss = sregs.ss;
        run->kvm_dirty_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
        if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
        run->kvm_dirty_regs = 0;
        if (run->exit_reason != KVM_EXIT_HLT && run->exit_reason != KVM_EXIT_IO) {
            fprintf(stderr, "floor: exit reason %u\n", run->exit_reason);
            return 4;
        }
        bad += (run->s.regs.regs.rax & 0xFFFFFFFF) != (uint64_t)(i + 1)
               || run->s.regs.regs.rbx != (uint64_t)i;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (bad) { fprintf(stderr, "floor: %lu wrong results\n", (unsigned long)bad); return 5; }
    printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
    return 0;
}
'''


def build_floor(workdir):
    """Compile the floor: (path, None) or (None, why not)."""
    return compile_c(workdir, FLOOR_C, {'AT': AT})


def write_floor_state(path, cpl, kvm):
    """The guest state of a reused Snippet after its first run: entry regs
    and sregs, slots, CPUID and the MSRs kvmlite set."""
    import struct
    with K.Snippet('long64', cpl=cpl, mem_size=0x10000, kvm=kvm) as s:
        s.mem_write(AT, REUSED_CODE)
        s.run(AT)
        s.reg_write('rip', AT)
        v = s.vcpu
        regs, sregs = v.get_regs(), v.get_sregs()
        entries = v.get_cpuid2()
        msrs = v.get_msrs([K.MSR_STAR, K.MSR_LSTAR, K.MSR_SFMASK])
        slots = [(sl.gpa, sl.size) for sl in s.vm.slots]
        with open(path, 'wb') as f:
            f.write(struct.pack('<6I', ctypes.sizeof(K.kvm_regs), ctypes.sizeof(K.kvm_sregs),
                                ctypes.sizeof(K.kvm_cpuid_entry2), len(entries), len(slots),
                                len(msrs)))
            f.write(bytes(regs) + bytes(sregs) + b''.join(bytes(e) for e in entries))
            for gpa, size in slots:
                f.write(struct.pack('<QQ', gpa, size) + s.vm.read(gpa, size))
            for index, value in msrs.items():
                f.write(struct.pack('<IQ', index, value))


def floor_round_us(exe, state, n):
    """One round of the floor: microseconds per run."""
    r = subprocess.run([exe, state, str(n)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f'floor: {r.stderr.strip()} (status {r.returncode})')
    return float(r.stdout) / 1e3


def reused_against_floor(cpl, kvm, exe, n, reps, workdir):
    """The reused run and the floor, round by round in turn (this host's
    speed drifts by tens of percent within a minute): (kvmlite's median,
    the floor's median or None, the median of the rounds' ratios or None)."""
    state = None
    if exe is not None:
        state = os.path.join(workdir, f'state{cpl}')
        write_floor_state(state, cpl, kvm)
    s, once = kvmlite_reused(cpl, kvm)
    mine, floor, ratios = [], [], []
    with s:
        for _ in range(n // 10):         # warm up: the first runs write page tables
            once()
        for _ in range(reps):
            mine.append(median_us(once, n, 1))
            if state is not None:
                floor.append(floor_round_us(exe, state, n))
                ratios.append(mine[-1] / floor[-1])
    if state is None:
        return statistics.median(mine), None, None
    return statistics.median(mine), statistics.median(floor), statistics.median(ratios)


# -- the table --------------------------------------------------------------

def measure(a, say):
    """{figure name: value} (ms or us, as the name says); skipped: [lines]."""
    uc = _unicorn()
    figures, skipped = {}, []
    n_life, n_reused = (20, 200) if a.quick else (100, 2000)
    with K.Kvm() as kvm, tempfile.TemporaryDirectory() as work:
        exe, why = build_floor(work)
        if exe is None:
            skipped.append(f'C floor: {why}')
        for cpl in (3, 0):
            say(f'life cycle, CPL{cpl}')
            figures[f'life cpl{cpl} us'] = median_us(kvmlite_life(cpl, kvm), n_life, a.reps)
            say(f'reused run, CPL{cpl}' + (', the C floor in turn' if exe else ''))
            mine, floor, ratio = reused_against_floor(cpl, kvm, exe, n_reused, a.reps, work)
            figures[f'reused cpl{cpl} us'] = mine
            if floor is not None:
                figures[f'floor reused cpl{cpl} us'] = floor
                figures[f'reused cpl{cpl} vs floor'] = ratio
        for cpl in (3, 0):
            say(f'code hook on every instruction, CPL{cpl}')
            figures[f'step cpl{cpl} us'] = statistics.median(
                kvmlite_step_us(cpl, kvm) for _ in range(a.reps))
        if not a.quick:
            say('100M-iteration loop, CPL3')
            figures['loop cpl3 ms'] = statistics.median(kvmlite_loop(kvm) for _ in range(3))
    for cpl in (3, 0):
        say(f'fresh process, CPL{cpl}')
        figures[f'first cpl{cpl} ms'] = process_ms(FIRST_KVMLITE.format(cpl=cpl), a.reps)
    figures['import ms'] = process_ms('import kvmlite', a.reps)
    figures['python ms'] = process_ms('pass', a.reps)
    if uc is None:
        skipped.append('unicorn: not importable (pip install unicorn to compare)')
    else:
        say('unicorn')
        figures['unicorn life us'] = median_us(unicorn_life(uc), n_life, a.reps)
        figures['unicorn reused us'] = median_us(unicorn_reused(uc), n_reused, a.reps)
        figures['unicorn step us'] = statistics.median(unicorn_step_us(uc) for _ in range(a.reps))
        if not a.quick:
            figures['unicorn loop ms'] = statistics.median(unicorn_loop(uc) for _ in range(3))
        figures['unicorn first ms'] = process_ms(FIRST_UNICORN, a.reps)
    return figures, skipped


ROWS = (   # (title, kvmlite figure, unicorn figure, floor figure, unit)
    ('create + map + write + run + read eax + close, CPL3', 'life cpl3 us', 'unicorn life us', None, 'us'),
    ('create + map + write + run + read eax + close, CPL0', 'life cpl0 us', 'unicorn life us', None, 'us'),
    ('reused: write code + 2 regs, run, read 2 regs, CPL3', 'reused cpl3 us', 'unicorn reused us',
     'floor reused cpl3 us', 'us'),
    ('reused: write code + 2 regs, run, read 2 regs, CPL0', 'reused cpl0 us', 'unicorn reused us',
     'floor reused cpl0 us', 'us'),
    ('hook_code on every instruction: per instruction, CPL3', 'step cpl3 us', 'unicorn step us',
     None, 'us'),
    ('hook_code on every instruction: per instruction, CPL0', 'step cpl0 us', 'unicorn step us',
     None, 'us'),
    ('100M-iteration loop, CPL3', 'loop cpl3 ms', 'unicorn loop ms', None, 'ms'),
    ('fresh process: start, import, create, run, exit, CPL3', 'first cpl3 ms', 'unicorn first ms',
     None, 'ms'),
    ('fresh process, CPL0', 'first cpl0 ms', 'unicorn first ms', None, 'ms'),
    ("python3 -c 'import kvmlite' (no bytecode cache)", 'import ms', None, 'python ms', 'ms'),
)


def table(figures, previous):
    def num(key):
        v = figures.get(key) if key else None
        return v

    def cell(v, unit):
        return '-' if v is None else f'{v:.1f} {unit}' if v < 100 else f'{v:.0f} {unit}'

    def ratio(a, b):
        return '-' if a is None or not b else f'{a / b:.2f}x'
    head = ('what', 'kvmlite', 'previous', 'vs previous', 'unicorn', 'vs unicorn', 'floor',
            'vs floor')
    rows = [head]
    for title, mine, theirs, floor, unit in ROWS:
        v, p = num(mine), previous.get(mine)
        u, fl = num(theirs), num(floor)
        # against the floor: the median of the rounds' own ratios, where measured so
        in_turn = figures.get(f'{mine} vs floor'.replace(' us vs', ' vs'))
        rows.append((title, cell(v, unit), cell(p, unit), ratio(v, p), cell(u, unit),
                     ratio(v, u), cell(fl, unit),
                     ratio(v, fl) if in_turn is None else f'{in_turn:.2f}x'))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def main(argv=None, out=None):
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog='bench_snippet.py', description=__doc__.split('\n')[0])
    p.add_argument('--reps', type=int, default=5, help='rounds per figure (median)')
    p.add_argument('--quick', action='store_true', help='fewer runs, no 100M loop')
    p.add_argument('--save', action='store_true', help=f'save the figures to {FIGURES}')
    p.add_argument('--figures', default=FIGURES, help='the previous figures (JSON)')
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error('--reps must be at least 1')
    reason = K.kvm_unavailable()
    if reason:
        print(f'bench_snippet: {reason}', file=out)
        return 1
    figures, skipped = measure(a, lambda what: print(f'... {what}', file=sys.stderr))
    try:
        with open(a.figures) as f:
            previous = json.load(f).get('figures', {})
    except (OSError, ValueError):
        previous = {}
    print(f'host: {platform.node()}, {platform.machine()}, '
          f'kvm_pvm: {K.host_emulates_kernel_mode()}, python {platform.python_version()}',
          file=out)
    print(table(figures, previous), file=out)
    for line in skipped:
        print(f'skipped: {line}', file=out)
    if a.save:
        with open(a.figures, 'w') as f:
            json.dump({'host': platform.node(), 'figures': figures}, f, indent=1, sort_keys=True)
            f.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
