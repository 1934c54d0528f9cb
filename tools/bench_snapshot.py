"""How much Machine.reset_to(checkpoint) costs: in proportion to the pages
the guest dirtied, not to its RAM.

    python3 tools/bench_snapshot.py [--mem MIB] [--rounds N] [--quick]

A guest of ``--mem`` MiB (default 256) in split mode writes one quadword to
each of N pages from 16 MiB up and ends (a debug-exit write). The machine is
checkpointed before the guest runs; each round runs the guest, then resets
it to the checkpoint:

* ``dirty log``: reset_to() as it is, which reads KVM's dirty log
  (KVM_GET_DIRTY_LOG on the slots, armed with KVM_MEM_LOG_DIRTY_PAGES at the
  checkpoint) and copies back only those pages;
* ``full copy``: the same reset with the log disarmed, so the whole RAM is
  copied back (what a reset without a dirty log costs).

Both put back the vCPU and device state too (the same ioctls). For N = 16
pages and N = 4096 pages (16 MiB) it prints the median time of each and the
ratio full copy / dirty log, then the size and the write and restore times of
a snapshot file of the machine. Nothing here is asserted: a loaded host
changes the times (tests/test_bench_snapshot.py checks only that the table
comes out and that every reset gives the guest its checkpoint back).

Sources: the KVM API text (Documentation/virt/kvm/api.rst), KVM_GET_DIRTY_LOG
and KVM_SET_USER_MEMORY_REGION's KVM_MEM_LOG_DIRTY_PAGES.
"""

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

if __package__ in (None, ''):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import kvmlite                                      # noqa: E402
from tools.asm import assemble_with_labels          # noqa: E402
from tools.demo import elf64                        # noqa: E402
from tools.pc import load_kernel                    # noqa: E402

ORIGIN = 0x100000
DIRTY_BASE = 16 << 20
EXIT_VALUE = 0x21
EXIT_STATUS = EXIT_VALUE << 1 | 1
CASES = (16, 4096)          # pages: 16 pages, and 16 MiB


def dirty_guest(pages):
    """An ELF64 that writes its page number to each of ``pages`` pages from
    DIRTY_BASE, then writes EXIT_VALUE to the debug-exit port."""
    src = f'''bits 64
start:
    mov rdi, {DIRTY_BASE}
    mov ecx, {pages}
.page:
    mov qword [rdi], rcx
    add rdi, 4096
    dec ecx
    jnz .page
    mov al, {EXIT_VALUE}
    out 0xf4, al
    hlt
'''
    code, labels = assemble_with_labels(src, bits=64, origin=ORIGIN)
    return elf64(code, ORIGIN, labels['start'])


def measure(mem_mib, pages, rounds, out):
    """[(dirty-log seconds, full-copy seconds)] per round, and the snapshot
    file's size, write and restore seconds."""
    with kvmlite.Machine(mem_size=mem_mib << 20) as m:
        load_kernel(m, dirty_guest(pages))
        cp = m.checkpoint()
        times = {'dirty log': [], 'full copy': []}
        copied = {}
        for _ in range(rounds):
            for how in times:
                result = m.run(timeout=600)
                if result.status != EXIT_STATUS:
                    raise RuntimeError(f'the guest ended with {result}')
                if how == 'full copy':
                    m._armed_checkpoint = None      # the log disarmed: reset_to copies all RAM
                started = time.perf_counter()
                copied[how] = m.reset_to(cp)
                times[how].append(time.perf_counter() - started)
                if m.vm.read_int(DIRTY_BASE, 8) != 0:
                    raise RuntimeError('reset_to left a page the guest dirtied')
        m.run(timeout=600)                          # dirtied, for the snapshot file
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'bench.snap')
            started = time.perf_counter()
            m.snapshot(path)
            write_s = time.perf_counter() - started
            size = os.path.getsize(path)
            started = time.perf_counter()
            with kvmlite.Machine.restore(path, console=None):
                restore_s = time.perf_counter() - started
    return times, copied, size, write_s, restore_s


def _ms(s):
    return f'{s * 1e3:.2f} ms'


def main(argv=None, out=sys.stdout):
    ap = argparse.ArgumentParser(prog='bench_snapshot', description=__doc__.split('\n\n')[0])
    ap.add_argument('--mem', type=int, default=256, help='guest RAM in MiB (default 256)')
    ap.add_argument('--rounds', type=int, default=5, help='rounds per case (default 5)')
    ap.add_argument('--quick', action='store_true', help='32 MiB, one round (for the unit test)')
    a = ap.parse_args(argv)
    mem, rounds = (32, 1) if a.quick else (a.mem, a.rounds)
    p = lambda *x: print(*x, file=out)  # noqa: E731
    p(f'reset_to(checkpoint), {mem} MiB guest, split mode, median of {rounds} rounds '
      f'(host: {"kvm_pvm" if kvmlite.host_emulates_kernel_mode() else "hardware virtualization"})')
    p(f'{"dirtied":>12}  {"dirty log":>12}  {"full copy":>12}  {"pages copied":>16}  ratio')
    for pages in CASES:
        times, copied, size, write_s, restore_s = measure(mem, pages, rounds, out)
        d, f = statistics.median(times['dirty log']), statistics.median(times['full copy'])
        what = f'{pages} pages' if pages < 256 else f'{pages * 4096 >> 20} MiB'
        p(f'{what:>12}  {_ms(d):>12}  {_ms(f):>12}  {copied["dirty log"]:>7} / {copied["full copy"]:<7}'
          f'  full copy {f / d:.1f}x the dirty log')
        p(f'{"":>12}  snapshot file {size >> 10} KiB of {mem} MiB: written in {_ms(write_s)}, '
          f'restored in {_ms(restore_s)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
