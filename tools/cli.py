"""The command line: ``kvmlite info`` and ``kvmlite run``.

``python3 kvmlite.py ...``, ``python3 -m kvmlite ...``, the installed
``kvmlite`` script and the zipapp all end in :func:`main`. Argument parsing
follows argparse's conventions (status 2 for a usage error); every outcome
of a run is an exit status from :mod:`tools.pc` with a one-line reason on
stderr. Sources: the KVM API text (Documentation/virt/kvm/api.rst) for what
``info`` reports; QEMU's isa-debug-exit for the odd statuses.
"""

import argparse
import decimal
import errno
import os
import signal
import stat
import struct
import sys
import threading

from kvmlite import (EMULATOR_UNSAFE_FEATURES, PAGE_SIZE, Cap, Kvm, KvmError, KvmliteError,
                     _import_part, host_emulates_kernel_mode)

from .pc import (CONSOLE_DEVICES, EXIT_OK, EXIT_SIGNAL, EXIT_TIMEOUT, EXIT_USAGE, IRQCHIP_MODES,
                 Machine, load_kernel)

__all__ = ['main']


#: The most guest RAM -m takes: KVM holds a memory slot of at most
#: KVM_MEM_MAX_NR_PAGES = 2**31 - 1 pages (include/linux/kvm_host.h), and the
#: RAM above the 3 GiB hole is one slot.
MEM_MAX = 8 << 40
_MEM_ALLOWED = ('give 1 MiB to 8 TiB in whole 4 KiB pages: a number of MiB, '
                'or a size like 512M or 2G')


def _mem_size(text):
    """-m: '256' (MiB, as lkvm), '512M', '2G', '1536K' -> bytes."""
    units = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
    t = text.strip().upper().removesuffix('B').removesuffix('I')
    unit = units.get(t[-1:])
    try:
        n = decimal.Decimal(t[:-1] if unit else t)    # exact, and no float to overflow
    except decimal.InvalidOperation:
        n = decimal.Decimal('nan')
    unit = unit or 1 << 20
    size = 0
    if n.is_finite() and 0 < n <= MEM_MAX // unit:     # '1e999999' is refused, not computed
        with decimal.localcontext() as exact:
            exact.traps[decimal.Inexact] = True         # no digit of the size is rounded away
            try:
                size = n * unit
            except decimal.Inexact:
                pass
    if not (1 << 20 <= size <= MEM_MAX and size % PAGE_SIZE == 0):
        raise argparse.ArgumentTypeError(f'memory size {text!r}: {_MEM_ALLOWED}')
    return int(size)


def _cpus(text):
    """-c: a whole number of vCPUs, 1 to what this host's KVM allows."""
    try:
        with Kvm() as kvm:
            most = kvm.max_vcpus()              # KVM_CAP_MAX_VCPUS
    except KvmError:
        most = None                             # no KVM: the run says so when it opens it
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or most is not None and n > most:
        allowed = f"1 to {most} (this host's KVM_CAP_MAX_VCPUS)" if most is not None else '1 or more'
        raise argparse.ArgumentTypeError(f'vCPU count {text!r}: give {allowed}')
    return n


def _timeout(text):
    """--timeout: seconds above 0. 'inf', or more than a thread can wait
    (threading.TIMEOUT_MAX, 292 years), means no timeout."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float('nan')
    if not seconds > 0:                         # also NaN
        raise argparse.ArgumentTypeError(f'timeout {text!r}: give a number of seconds above 0, '
                                         f'or inf for none')
    return seconds if seconds <= threading.TIMEOUT_MAX else None


def _size_text(n):
    return next(f'{n / u:.4g} {name}' for u, name in ((1 << 40, 'TiB'), (1 << 30, 'GiB'),
                                                       (1 << 20, 'MiB'), (1, 'bytes')) if n >= u)


def _read_input_file(path, what, limit):
    """A kernel's or initrd's bytes, refused past ``limit`` (the guest's RAM,
    which no image can exceed) before more than that is read.

    os.stat decides before the file is opened: only a regular file, whose
    size is checked against the limit, is read; anything else (a character
    device such as /dev/zero, whose size stat cannot tell, a FIFO, which
    would block the open, a directory, a socket) is refused unread."""
    try:
        st = os.stat(path)
        kind = stat.S_IFMT(st.st_mode)
        if kind != stat.S_IFREG:
            raise ValueError(f'cannot read {what} {path!r}: not a regular file but '
                             f'{_FILE_KINDS.get(kind, "a special file")}: give the {what} as '
                             f'a regular file')
        if st.st_size > limit:
            data = None
        else:
            # O_NONBLOCK: should a FIFO replace the file now, the open does not wait
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # never written
            with open(fd, 'rb') as f:
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                    raise ValueError(f'cannot read {what} {path!r}: it changed while being opened')
                data = f.read(limit + 1)
    except OSError as e:
        raise ValueError(f'cannot read {what} {path!r}: {e.strerror}') from None
    if data is None or len(data) > limit:
        raise ValueError(f'{what} {path!r} is larger than the guest\'s {limit >> 20} MiB of RAM: '
                         f'give more memory (-m)')
    return data


_FILE_KINDS = {stat.S_IFDIR: 'a directory', stat.S_IFIFO: 'a FIFO', stat.S_IFSOCK: 'a socket',
               stat.S_IFBLK: 'a block device', stat.S_IFCHR: 'a character device'}


def _gdb_address(text):
    """--gdb: [HOST:]PORT, loopback unless a host is given."""
    try:
        return _import_part('tools', 'gdbstub').parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _check_run_args(args):
    """What no single option can check: the built-in demo takes no initrd or
    format."""
    if args.kernel is None:
        if args.format != 'auto':
            raise ValueError(f'--format needs --kernel: the built-in demo has its own '
                             f'(--format {args.format} was given)')
        if args.initrd is not None:
            raise ValueError('--initrd needs --kernel: the built-in demo takes no initrd')


def _open_disks(specs):
    """--disk FILE[,ro] ...: the opened images (devices.virtio_blk.DiskImage),
    in order; a bad one raises ValueError (the others are closed)."""
    disk_image = _import_part('devices', 'virtio_blk').DiskImage
    disks = []
    try:
        for spec in specs:
            path, *opts = spec.split(',')
            unknown = [o for o in opts if o != 'ro']
            if unknown or not path:
                raise ValueError(f'--disk {spec!r}: give FILE or FILE,ro '
                                 f'({"no file" if not path else "unknown option " + repr(unknown[0])})')
            disks.append(disk_image(path, readonly='ro' in opts))
    except BaseException:
        for d in disks:
            d.close()
        raise
    return disks


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
            # a number kvmlite has no name for is shown as the number
            p(f'  {cap.name if isinstance(cap, Cap) else f"{cap} (unnamed)":32} {value}')
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


def _check_debug_args(args):
    """-S needs a gdb to let the vCPUs go; --trace-filter a --trace. For a
    new machine and a restored one alike."""
    if args.gdb_1234 and args.gdb is None:
        args.gdb = ('127.0.0.1', 1234)
    if args.hold and args.gdb is None:
        raise ValueError('-S holds every vCPU until gdb continues it: give --gdb PORT (or -s) too')
    if args.trace_filter is not None:
        if args.trace is None:
            raise ValueError('--trace-filter selects what --trace writes: give --trace FILE (or -) too')
        args.trace_filter = _import_part('tools', 'trace').parse_filter(args.trace_filter)


def _cmd_run(args):
    console, disks = None, []
    try:
        _check_debug_args(args)
        if args.restore is not None:
            machine = console = None
            machine, console = _restore(args)
            image = initrd = cmdline = None
        else:
            _check_run_args(args)
            args.console = args.console or 'stdio'
            cmdline = args.append.encode()
            image = _read_input_file(args.kernel, 'kernel', args.mem) if args.kernel else None
            initrd = _read_input_file(args.initrd, 'initrd', args.mem) if args.initrd else None
            disks = _open_disks(args.disk)
            console = _make_console(args.console)
            machine = Machine(mem_size=args.mem, cpus=args.cpus, irqchip=args.irqchip, console=console,
                              cpuid_policy=args.cpuid, cmdline=cmdline,
                              cpu_vendor=args.cpu_vendor, disks=disks, rng=args.rng,
                              console_device=args.console_device,
                              ioeventfd=args.virtio_path != 'exits', irqfd=args.virtio_path == 'eventfd')
    except (ValueError, OSError) as e:            # KvmError is an OSError
        if console is not None:
            console.stop()
        for d in disks:
            d.close()
        if isinstance(e, (ValueError, KvmError)):
            reason = e
        elif e.errno == errno.ENOMEM:               # the mmap of the guest's RAM
            reason = _no_ram(args.mem)
        else:
            raise
        print(f'kvmlite: {reason}', file=sys.stderr)
        return EXIT_USAGE
    with machine:
        try:
            if args.restore is not None:
                pass                                 # the guest is where the snapshot left it
            elif image is None:
                demo = _import_part('tools', 'demo')
                demo.load(machine)
            else:
                load_kernel(machine, image, args.format, cmdline, initrd)
        except ValueError as e:                      # BootError is a ValueError
            console.stop()
            print(f'kvmlite: {e}', file=sys.stderr)
            return EXIT_USAGE
        profiler = machine.profile() if args.stats else None
        try:
            tracer = _make_tracer(args, machine)
        except ValueError as e:
            console.stop()
            print(f'kvmlite: {e}', file=sys.stderr)
            return EXIT_USAGE
        server = None
        if args.gdb is not None:
            host, port = args.gdb
            try:
                server = _import_part('tools', 'gdbstub').GdbServer(machine, host, port, hold=args.hold)
            except OSError as e:
                console.stop()
                print(f'kvmlite: --gdb {host}:{port}: cannot listen there: {e.strerror or e}: '
                      f'give another port (or 0 for any free one)', file=sys.stderr)
                return EXIT_USAGE
            server.start()
            host, port = server.address
            print(f'kvmlite: gdb stub listening on {host}:{port}'
                  f'{" (vCPUs held until gdb continues)" if args.hold else ""}', file=sys.stderr)
        machine.console_spec = args.console
        notes = []
        with _SignalsEndTheRun(machine, console):
            prev_usr2 = _arm_snapshot_signal(machine, args, console)
            try:
                console.start()
                result = machine.run(timeout=args.timeout)
                if args.snapshot_on_exit and result.status in (EXIT_TIMEOUT, EXIT_SIGNAL):
                    notes.append(_snapshot_on_exit(machine, args.snapshot_on_exit))
                if profiler is not None:        # while the vCPUs (and their KVM statistics) exist
                    notes += [f'stats: {line}' for line in profiler.text()]
            finally:
                console.stop()          # the one place the terminal's modes go back
                if server is not None:
                    server.close()
                if prev_usr2 is not None:
                    signal.signal(signal.SIGUSR2, prev_usr2)
                if tracer is not None and tracer.out is not sys.stderr:
                    try:
                        tracer.out.close()
                    except OSError:
                        pass            # the tracer has said why it stopped
    if result.status != EXIT_OK or args.verbose or notes:
        lines = [result.reason] + result.report + notes   # the report: after a timeout
        # after a console line the guest left open, kvmlite's own start on a fresh one
        fresh = '\n' if _same_line(console, sys.stderr) else ''
        sys.stderr.write(fresh + ''.join(f'kvmlite: {line}\n' for line in lines))
        sys.stderr.flush()
    return result.status


class _SignalsEndTheRun:
    """While a run lasts, each signal that would end the process (the
    console's ENDING_SIGNALS: SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1,
    SIGALRM ...) ends the run instead: the machine stops with status
    128 + the signal's number (the shell's convention) and a one-line
    reason, the console gives up waiting for a stalled reader, and the run's
    own ``finally`` restores the terminal. A signal that is ignored (nohup's
    SIGHUP, Python's SIGXFSZ) stays ignored. Installed before the console
    starts, so the console leaves these signals to us."""

    def __init__(self, machine, console):
        self.machine, self.console = machine, console
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self         # only the main thread may set handlers: main() run from a thread
        for signum in _import_part('devices', 'console').ENDING_SIGNALS:
            if signal.getsignal(signum) != signal.SIG_IGN:      # nohup's SIGHUP stays ignored
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def _on_signal(self, signum, frame):
        self.console.cancel()           # a dying run does not wait for a reader
        self.machine.stop(128 + signum, f'stopped by {signal.Signals(signum).name}')
# -- snapshots: run --snapshot / --snapshot-on-exit / --restore --

_MACHINE_OPTIONS = (('kernel', '-k'), ('initrd', '-i'), ('append', '-p'), ('mem', '-m'),
                    ('cpus', '-c'), ('irqchip', '--irqchip'), ('format', '--format'),
                    ('cpuid', '--cpuid'), ('cpu_vendor', '--cpu-vendor'), ('rng', '--rng'),
                    ('console_device', '--console-device'), ('virtio_path', '--virtio-path'))


def _restore(args):
    """The machine of ``run --restore FILE`` and its console: the file says
    which machine (and console, unless --console is given) and which disk
    images it had, opened again unless --disk gives others in their place."""
    snapshot = _import_part('tools', 'snapshot')
    given = [flag for name, flag in _MACHINE_OPTIONS if getattr(args, name) != args.defaults[name]]
    if given:
        raise ValueError(f'--restore takes the machine from the snapshot: drop {", ".join(given)}')
    snap = snapshot.open_snapshot(args.restore)
    console, disks = None, None
    try:
        disks = _open_disks(args.disk) if args.disk else None
        args.console = args.console or snap.config['console'] or 'stdio'
        console = _make_console(args.console)
        machine = Machine.restore(snap, console=console, disks=disks)
    except BaseException:
        if console is not None:
            console.stop()
        for d in disks or ():
            d.close()
        raise
    finally:
        snap.close()
    for note in machine.restore_notes:
        print(f'kvmlite: {note}', file=sys.stderr)
    return machine, console


def _arm_snapshot_signal(machine, args, console):
    """--snapshot FILE: SIGUSR2 (and Ctrl-A s on the terminal) has the
    machine write FILE and run on.
    Returns the previous handler (None if not armed)."""
    if not args.snapshot:
        return None
    path = args.snapshot

    def done(target, error):
        if error is not None or args.verbose:
            what = f'snapshot {target} not written: {error}' if error else f'snapshot written to {target}'
            end = _line_end(sys.stderr)             # the terminal is raw while the run goes on
            fresh = end if _same_line(console, sys.stderr) else ''
            sys.stderr.write(f'{fresh}kvmlite: {what}{end}')
            sys.stderr.flush()
    if console is not None:
        console.on_snapshot = lambda: machine.request_snapshot(path, done)     # Ctrl-A s
    return signal.signal(signal.SIGUSR2, lambda *a: machine.request_snapshot(path, done))


def _snapshot_on_exit(machine, path):
    try:
        machine.snapshot(path)
    except (KvmliteError, OSError) as e:
        return f'snapshot {path} not written: {e}'
    return f'snapshot written to {path}: resume with kvmlite run --restore {path}'


def _make_tracer(args, machine):
    if args.trace is None:
        return None
    if args.trace == '-':
        out = sys.stderr
    else:
        try:
            out = open(args.trace, 'w', encoding='utf-8')
        except OSError as e:
            raise ValueError(f'trace file {args.trace!r}: {e.strerror}: give a file to write, '
                             f'or - for stderr') from None
    return _import_part('tools', 'trace').Tracer(out, args.trace_filter).attach(machine)


def _line_end(stream):
    """'\\r\\n' while ``stream`` is a terminal in raw mode, else '\\n'."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return '\n'
    return _import_part('devices', 'console').line_end(fd)


def _same_line(console, stream):
    """True if ``stream`` shows the console's output and its last line is open."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):      # io.UnsupportedOperation is both
        return False
    return console.mid_line_on(fd)


def _no_ram(mem):
    """Why mapping the guest's RAM failed with ENOMEM."""
    host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    return (f'the host cannot give the guest {_size_text(mem)} of RAM (out of memory; the host has '
            f'{_size_text(host)}): give less with -m')


def _make_console(spec):
    console = _import_part('devices', 'console')
    if spec == 'stdio':
        return console.TerminalBackend()
    if spec == 'none':
        return console.MemoryBackend(limit=0)
    try:
        return console.FileBackend(spec)
    except OSError as e:
        raise ValueError(f'console file {spec!r}: {e.strerror}: give stdio, none or a file '
                         f'to append to') from None


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become :class:`_UsageError`: main prints
    one ``kvmlite: ...`` line and returns status 2, as for every other
    refusal, instead of argparse's usage text and SystemExit."""

    def error(self, message):
        raise _UsageError(message)


class _UsageError(Exception):
    pass


def main(argv=None):
    ap = _Parser(prog='kvmlite', description='Drive Linux KVM from pure Python.')
    sub = ap.add_subparsers(dest='command')
    sub.add_parser('info', help='show the KVM API version, capabilities, CPUID and MSRs')
    r = sub.add_parser('run', help='boot a kernel (with no --kernel: the built-in demo guest)')
    r.add_argument('-k', '--kernel', help='kernel image: bzImage, PVH vmlinux, multiboot, ELF or flat')
    r.add_argument('-i', '--initrd', help='initrd / initramfs (a multiboot module for multiboot kernels)')
    r.add_argument('-p', '--append', default='', help='kernel command line')
    r.add_argument('-m', '--mem', type=_mem_size, default='256',
                   help='guest RAM in MiB, or a size like 1G: 1 MiB to 8 TiB in whole pages (default 256)')
    r.add_argument('-c', '--cpus', type=_cpus, default=1,
                   help="number of vCPUs: 1 to the host's KVM_CAP_MAX_VCPUS (default 1)")
    r.add_argument('--irqchip', choices=IRQCHIP_MODES, default='split',
                   help='interrupt controllers: split (default), user or kernel')
    r.add_argument('--console', default=None, metavar='{stdio,none,FILE}',
                   help="COM1: the terminal (default; Ctrl-A x quits, Ctrl-A h lists the escapes), "
                        "'none', or a file to append to")
    r.add_argument('--console-device', default='com1', choices=CONSOLE_DEVICES,
                   help="the guest device the console is: com1 (the 16550A UART, Linux's ttyS0; "
                        "default) or hvc (a virtio console, hvc0: Linux gets console=hvc0 unless -p "
                        "names a console; COM1's output still reaches the console)")
    r.add_argument('--format', default='auto', choices=('auto', 'flat', 'elf', 'multiboot', 'bzimage', 'pvh'),
                   help='kernel format (default: detected)')
    r.add_argument('--cpuid', default='auto', choices=('auto', 'safe', 'host'),
                   help='CPUID policy: auto hides emulator-unsafe features on hosts that need it')
    r.add_argument('--cpu-vendor', default='host', choices=('host', 'intel', 'amd'),
                   help="CPUID vendor the guest sees (leaves 0 and 0x80000000): the host's (default), intel or amd")
    r.add_argument('--timeout', type=_timeout, metavar='SECONDS',
                   help='stop the guest after this many seconds, above 0 (inf: never, the default)')
    r.add_argument('--disk', action='append', default=[], metavar='FILE[,ro]',
                   help='a raw disk image as a virtio-blk disk (vda, vdb, ... in order; ",ro": '
                        'read-only); repeatable')
    r.add_argument('--rng', action='store_true',
                   help='a virtio-rng entropy device (the guest\'s /dev/hwrng) fed from os.urandom')
    r.add_argument('--virtio-path', default='eventfd', choices=('eventfd', 'no-irqfd', 'exits'),
                   help='how virtio notifications and interrupts travel in split and kernel mode: '
                        'KVM_IOEVENTFD and KVM_IRQFD (default); no-irqfd: the interrupt through the '
                        'board\'s IRQ line as before; exits: notifications as MMIO exits too (to compare)')
    r.add_argument('-v', '--verbose', action='store_true', help='say why the run ended even when it went well')
    r.add_argument('--gdb', type=_gdb_address, metavar='[HOST:]PORT',
                   help='serve the gdb remote protocol on PORT (127.0.0.1 unless HOST is given; 0: any free port)')
    r.add_argument('--trace', metavar='FILE',
                   help='write one line per exit and device access to FILE (- for stderr)')
    r.add_argument('--trace-filter', metavar='KIND[:LO-HI],...',
                   help='what --trace writes: kinds io, mmio, hlt, eoi, intr, irq (IRQ lines, '
                        'injections), debug, internal, shutdown, system, fail; io/mmio/irq with a '
                        'range (io:0x3f8-0x3ff is COM1, irq:4 its IRQ)')
    r.add_argument('--stats', action='store_true',
                   help='at the end, print the exits by reason, device accesses by name, IRQs '
                        'raised per line and KVM statistics')
    r.add_argument('-s', dest='gdb_1234', action='store_true', help='the same as --gdb 1234')
    r.add_argument('-S', dest='hold', action='store_true',
                   help='hold every vCPU before its first instruction until gdb continues (needs --gdb or -s)')
    r.add_argument('--snapshot', metavar='FILE',
                   help='on SIGUSR2, write a snapshot of the whole machine to FILE; the run goes on')
    r.add_argument('--snapshot-on-exit', metavar='FILE',
                   help='write a snapshot to FILE when the run ends by its timeout or Ctrl-A x')
    r.add_argument('--restore', metavar='FILE',
                   help='resume the machine of a snapshot (it holds memory size, vCPUs, irqchip, console)')
    try:
        args = ap.parse_args(argv)
        if args.command == 'info':
            return _cmd_info(args)
        if args.command in (None, 'run'):
            if args.command is None:
                args = r.parse_args([])
            # what the machine options are when not given (argparse converts a string default)
            args.defaults = {name: r.get_default(name) for name, _ in _MACHINE_OPTIONS}
            args.defaults['mem'] = _mem_size(args.defaults['mem'])
            return _cmd_run(args)
    except (KvmError, _UsageError) as e:
        print(f'kvmlite: {e}', file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        sys.stderr.close()           # the reader went away (| head): nothing to say
        return EXIT_OK
    return EXIT_USAGE


if __name__ == '__main__':
    sys.exit(main())
