"""The command line: ``kvmlite info`` and ``kvmlite run``.

``python3 kvmlite.py ...``, ``python3 -m kvmlite ...``, the installed
``kvmlite`` script and the zipapp all end in :func:`main`. Argument parsing
follows argparse's conventions (status 2 for a usage error); every outcome
of a run is an exit status from :mod:`tools.pc` with a one-line reason on
stderr. Sources: the KVM API text (Documentation/virt/kvm/api.rst) for what
``info`` reports; QEMU's isa-debug-exit for the odd statuses.
"""

import os
import signal
import struct
import sys

from kvmlite import (EMULATOR_UNSAFE_FEATURES, Kvm, KvmError, _import_part,
                     host_emulates_kernel_mode)

from .pc import EXIT_OK, EXIT_SIGNAL, EXIT_USAGE, IRQCHIP_MODES, Machine, load_kernel

__all__ = ['main']


def _parse_size(text):
    """'256', '256M', '1G', '65536K' -> bytes (a bare number means MiB, as lkvm)."""
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}
    t = text.strip().upper().removesuffix('B').removesuffix('I')
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t) << 20
    except ValueError:
        raise ValueError(f'memory size {text!r}: give a number of MiB or a size like 512M or 2G') from None


def _read_input_file(path, what, limit):
    """A kernel's or initrd's bytes, refused past ``limit`` (the guest's RAM,
    which no image can exceed) before reading more: not /dev/zero's endless
    stream nor a sparse file's terabytes are read into memory."""
    try:
        with open(path, 'rb') as f:          # read-only: kvmlite never writes inputs
            size = os.fstat(f.fileno()).st_size      # 0 for a pipe or a device
            data = f.read(limit + 1) if size <= limit else None
    except OSError as e:
        raise ValueError(f'cannot read {what} {path!r}: {e.strerror}') from None
    if data is None or len(data) > limit:
        raise ValueError(f'{what} {path!r} is larger than the guest\'s {limit >> 20} MiB of RAM: '
                         f'give more memory (-m)')
    return data


def _cmd_info(args, out=sys.stdout):
    with Kvm() as kvm:
        p = lambda *a: print(*a, file=out)  # noqa: E731
        p(f'KVM API version: {kvm.api_version}')
        p(f'vCPUs: recommended {kvm.recommended_vcpus()}, maximum {kvm.max_vcpus()}')
        p(f'vCPU mmap size: {kvm.vcpu_mmap_size} bytes')
        emulated = host_emulates_kernel_mode()
        p(f'host: {"guest kernel mode emulated by KVM (kvm_pvm)" if emulated else "hardware virtualization"}')
        p('capabilities:')
        for cap, value in sorted(kvm.capabilities().items()):
            p(f'  {cap.name:32} {value}')
        entries = kvm.supported_cpuid()
        vendor = next((struct.pack('<III', e.ebx, e.edx, e.ecx).decode('ascii', 'replace')
                       for e in entries if e.function == 0), '?')
        maxleaf = max((e.function for e in entries if e.function < 0x40000000), default=0)
        p(f'CPUID: {len(entries)} entries, vendor {vendor}, highest basic leaf {maxleaf:#x}')
        leaf1 = next((e for e in entries if e.function == 1), None)
        if leaf1:
            names = {('edx', 0): 'fpu', ('edx', 9): 'apic', ('edx', 25): 'sse', ('edx', 26): 'sse2',
                     ('ecx', 0): 'sse3', ('ecx', 9): 'ssse3', ('ecx', 13): 'cx16', ('ecx', 19): 'sse4.1',
                     ('ecx', 20): 'sse4.2', ('ecx', 21): 'x2apic', ('ecx', 23): 'popcnt',
                     ('ecx', 26): 'xsave', ('ecx', 28): 'avx'}
            have = [n for (reg, bit), n in names.items() if getattr(leaf1, reg) >> bit & 1]
            p(f'  leaf 1 features: {" ".join(have)}')
        policy = 'hides ' + ', '.join(f[4] for f in EMULATOR_UNSAFE_FEATURES) if emulated else 'hides nothing'
        p(f'  CPUID policy "auto" {policy} (run --cpuid safe|host to choose)')
        msrs = kvm.msr_index_list()
        p(f'MSRs: {len(msrs)} saved/restored, {len(kvm.msr_feature_index_list())} feature MSRs')
    return 0


def _cmd_run(args):
    console = None
    try:
        mem = _parse_size(args.mem)
        cmdline = args.append.encode()
        image = _read_input_file(args.kernel, 'kernel', mem) if args.kernel else None
        initrd = _read_input_file(args.initrd, 'initrd', mem) if args.initrd else None
        console = _make_console(args.console)
        machine = Machine(mem_size=mem, cpus=args.cpus, irqchip=args.irqchip, console=console,
                          cpuid_policy=args.cpuid, cmdline=cmdline)
    except (ValueError, KvmError) as e:
        if console is not None:
            console.stop()
        print(f'kvmlite: {e}', file=sys.stderr)
        return EXIT_USAGE
    with machine:
        try:
            if image is None:
                demo = _import_part('tools', 'demo')
                demo.load(machine)
            else:
                load_kernel(machine, image, args.format, cmdline, initrd)
        except ValueError as e:                      # BootError is a ValueError
            console.stop()
            print(f'kvmlite: {e}', file=sys.stderr)
            return EXIT_USAGE
        prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *a: machine.stop(EXIT_SIGNAL, 'stopped by SIGTERM'))
        try:
            console.start()
            result = machine.run(timeout=args.timeout)
        finally:
            console.stop()
            signal.signal(signal.SIGTERM, prev)
    if result.status != EXIT_OK or args.verbose:
        print(f'kvmlite: {result.reason}', file=sys.stderr)
    return result.status


def _make_console(spec):
    console = _import_part('devices', 'console')
    if spec == 'stdio':
        return console.TerminalBackend()
    if spec == 'none':
        return console.MemoryBackend(limit=0)
    return console.FileBackend(spec)


def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(prog='kvmlite', description='Drive Linux KVM from pure Python.')
    sub = ap.add_subparsers(dest='command')
    sub.add_parser('info', help='show the KVM API version, capabilities, CPUID and MSRs')
    r = sub.add_parser('run', help='boot a kernel (with no --kernel: the built-in demo guest)')
    r.add_argument('-k', '--kernel', help='kernel image: bzImage, PVH vmlinux, multiboot, ELF or flat')
    r.add_argument('-i', '--initrd', help='initrd / initramfs (a multiboot module for multiboot kernels)')
    r.add_argument('-p', '--append', default='', help='kernel command line')
    r.add_argument('-m', '--mem', default='256', help='guest RAM in MiB, or a size like 1G (default 256)')
    r.add_argument('-c', '--cpus', type=int, default=1, help='number of vCPUs (default 1)')
    r.add_argument('--irqchip', choices=IRQCHIP_MODES, default='split',
                   help='interrupt controllers: split (default), user or kernel')
    r.add_argument('--console', default='stdio', metavar='{stdio,none,FILE}',
                   help="COM1: the terminal (default; Ctrl-A x quits), 'none', or a file to append to")
    r.add_argument('--format', default='auto', choices=('auto', 'flat', 'elf', 'multiboot', 'bzimage', 'pvh'),
                   help='kernel format (default: detected)')
    r.add_argument('--cpuid', default='auto', choices=('auto', 'safe', 'host'),
                   help='CPUID policy: auto hides emulator-unsafe features on hosts that need it')
    r.add_argument('--timeout', type=float, help='stop the guest after this many seconds')
    r.add_argument('-v', '--verbose', action='store_true', help='say why the run ended even when it went well')
    args = ap.parse_args(argv)
    try:
        if args.command == 'info':
            return _cmd_info(args)
        if args.command in (None, 'run'):
            if args.command is None:
                args = r.parse_args([])
            return _cmd_run(args)
    except KvmError as e:
        print(f'kvmlite: {e}', file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        sys.stderr.close()           # the reader went away (| head): nothing to say
        return EXIT_OK
    return EXIT_USAGE


if __name__ == '__main__':
    sys.exit(main())
