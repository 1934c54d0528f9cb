#!/usr/bin/env python3
"""Boot the small Linux test kernel to a busybox init with kvmlite, and time it.

What it does, each step skipped when its result is there already:

1. The kernel: ``--kernel-dir DIR`` holding ``vmlinux-V`` and ``bzImage-V``
   (V the variant, default ``b``), or else the cache, where it is built with
   the team's ``linux/build.sh`` (Linux 6.1 from Debian's linux-source-6.1,
   tinyconfig plus serial console, initramfs and PVH, four patches that step
   around this host's instruction emulator; about 90 s of make, and root to
   apt-get the build dependencies). The script is looked up in
   ``$KVMLITE_SHARED/linux/build.sh``, then in ``../shared/linux/build.sh``
   next to the checkout (where CI puts the shared folder).
2. busybox: ``--busybox PATH``, or else ``apt-get download busybox-static``
   into the cache, unpacked with ``dpkg-deb -x``.
3. The initramfs: an uncompressed newc cpio (tools/cpio.py; the kernel
   unpacks a gzipped one about 10x slower here) whose /init prints
   :data:`MARKER` and runs ``poweroff -f``.
4. The boot, once per format asked for (PVH ``vmlinux``, ``bzImage``)::

       python3 kvmlite.py run -k vmlinux-b -i initrd.cpio \\
           -p "console=ttyS0 panic=-1 reboot=k" --console stdio --timeout 600 -v

   The guest's console is echoed (unless ``-q``); at the end a line per boot
   gives the seconds to the marker and to the exit, and the exit status.

   Variant ``v`` (SMP and virtio-mmio) boots with ``-c 2``, a fresh random
   read-write vda (8 MiB) and read-only vdb (1 MiB) in ``CACHE/disks``, and
   ``--rng`` (``--irqchip`` picks the mode); its init (:data:`INIT_V`)
   prints the CPU count, the md5 of vda's first MiB and its sectors, writes
   :data:`DISK_MARKER` at sector :data:`MARKER_SECTOR` with ``conv=fsync``,
   tries to write vdb and reads 16 bytes of /dev/hwrng; the host then checks
   those lines and both files (:func:`check_virtio_run`).
   Without ACPI, ``poweroff -f`` ends in a halt with interrupts disabled,
   which kvmlite counts as a power-off: status 0.

Usage::

    python3 tools/linux.py [--format pvh|bzimage|both] [--kernel-dir DIR]
        [--busybox PATH] [--cache DIR] [--variant b|a|v] [--irqchip MODE] [--timeout S] [-q]

The cache is ``--cache``, else ``$KVMLITE_CACHE``, else ``~/.cache/kvmlite``.
Exit status: 0 when every boot reached the marker and exited with status 0,
1 when one did not, 2 when the kernel, busybox or initramfs could not be had.
``tests/test_linux.py`` runs the same boots when ``KVMLITE_LINUX=1``.

What the kernel needs from the VMM is in ``shared/linux/README.md``; the
boot protocols are Linux ``Documentation/arch/x86/boot.rst`` (bzImage) and
Xen's ``docs/misc/pvh.pandoc`` (vmlinux), both loaded by tools/boot.py.
"""

import argparse
import glob
import os
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

if __package__:
    from . import cpio
else:                                   # run as a script: tools/ is sys.path[0]
    import cpio

__all__ = ['MARKER', 'CMDLINE', 'LinuxError', 'BootRun', 'default_cache', 'find_build_script',
           'ensure_kernel', 'ensure_busybox', 'make_initramfs', 'run_command', 'boot', 'main']

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = b'KVMLITE-LINUX-INIT-OK'
CMDLINE = 'console=ttyS0 panic=-1 reboot=k'
VARIANT_CMDLINE = {'b': '', 'a': 'noapic nolapic', 'v': ''}   # variant a: PIC and PIT only
FORMATS = {'pvh': 'vmlinux', 'bzimage': 'bzImage'}    # --format -> file name stem
INIT = b'#!/bin/sh\necho ' + MARKER + b'\npoweroff -f\n'

# Variant v (SMP, virtio-mmio): booted with -c 2, a read-write vda, a read-only
# vdb and --rng; its init reports what it saw on lines the host checks
# (check_virtio_run), writes DISK_MARKER into vda at sector MARKER_SECTOR with
# conv=fsync and tries to write vdb.
DISK_MARKER = b'KVMLITE-DISK-MARKER\n'
MARKER_SECTOR = 2048
VDA_SIZE, VDB_SIZE = 8 << 20, 1 << 20
VIRTIO_CPUS = 2
INIT_V = b'''#!/bin/sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
echo "VIRTIO-CPUS $($B grep -c ^processor /proc/cpuinfo)"
echo "VIRTIO-MD5 $($B head -c 1048576 /dev/vda | $B md5sum)"
echo "VIRTIO-SECTORS $($B cat /sys/block/vda/size)"
if echo KVMLITE-DISK-MARKER | $B dd of=/dev/vda bs=512 seek=%d conv=sync,fsync 2>/dev/null
then echo VIRTIO-VDA-WRITE-OK; else echo VIRTIO-VDA-WRITE-FAILED; fi
if echo X | $B dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null
then echo VIRTIO-VDB-WRITE-OK; else echo VIRTIO-VDB-WRITE-REFUSED; fi
echo "VIRTIO-RNG $($B head -c 16 /dev/hwrng | $B od -An -tx1 | $B tr -d ' \\n')"
echo KVMLITE-LINUX-INIT-OK
$B poweroff -f
''' % MARKER_SECTOR
DEFAULT_TIMEOUT = 600.0


class LinuxError(Exception):
    """A step before the boot failed; the message says which and what to do."""


class BootRun(NamedTuple):
    """One boot: kvmlite's exit status, the guest's console output, seconds
    from start to exit and to the marker (None if it never came), argv."""
    status: int
    output: bytes
    seconds: float
    marker_seconds: float | None
    argv: list
    stderr: str

    @property
    def ok(self):
        return self.status == 0 and self.marker_seconds is not None


def log(text):
    print(f'linux.py: {text}', file=sys.stderr, flush=True)


def default_cache():
    return os.environ.get('KVMLITE_CACHE') or os.path.join(os.path.expanduser('~'), '.cache',
                                                             'kvmlite')


def find_build_script():
    """linux/build.sh in $KVMLITE_SHARED, or in ../shared next to the checkout."""
    env = os.environ.get('KVMLITE_SHARED')
    roots = [env] if env else []
    roots.append(os.path.join(os.path.dirname(REPO), 'shared'))
    for root in roots:
        path = os.path.join(root, 'linux', 'build.sh')
        if os.path.isfile(path):
            return path
    raise LinuxError(f'no linux/build.sh in {" or ".join(roots)}: set KVMLITE_SHARED to the '
                     'shared folder, or give --kernel-dir with a built kernel')


def kernel_files(directory, variant):
    return {fmt: os.path.join(directory, f'{stem}-{variant}') for fmt, stem in FORMATS.items()}


def ensure_kernel(kernel_dir, cache, variant='b', log=log):
    """{'pvh': vmlinux path, 'bzimage': bzImage path}; builds them into the
    cache when no ``kernel_dir`` is given and the cache has none."""
    if kernel_dir:
        files = kernel_files(kernel_dir, variant)
        missing = [p for p in files.values() if not os.path.isfile(p)]
        if missing:
            raise LinuxError(f'--kernel-dir {kernel_dir}: no {", ".join(missing)} '
                             f'(build.sh OUTDIR {variant} writes them)')
        return files
    out = os.path.join(cache, 'linux')
    files = kernel_files(out, variant)
    if all(os.path.isfile(p) for p in files.values()):
        return files
    script = find_build_script()
    log(f'building the kernel: bash {script} {out} {variant} (about 90 s of make)')
    run = subprocess.run(['bash', script, out, variant], stdin=subprocess.DEVNULL)
    if run.returncode != 0 or not all(os.path.isfile(p) for p in files.values()):
        raise LinuxError(f'{script} failed (status {run.returncode}): see its output above')
    return files


def ensure_busybox(busybox, cache, log=log):
    """A static busybox: ``busybox`` if given, else busybox-static from apt
    unpacked in the cache."""
    if busybox:
        if not os.path.isfile(busybox):
            raise LinuxError(f'--busybox {busybox}: no such file')
        return busybox
    where = os.path.join(cache, 'busybox')
    path = os.path.join(where, 'root', 'bin', 'busybox')
    if os.path.isfile(path):
        return path
    os.makedirs(where, exist_ok=True)
    debs = glob.glob(os.path.join(where, 'busybox-static_*.deb'))
    if not debs:
        log(f'fetching busybox: apt-get download busybox-static (in {where})')
        run = subprocess.run(['apt-get', 'download', 'busybox-static'], cwd=where,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
        debs = glob.glob(os.path.join(where, 'busybox-static_*.deb'))
        if run.returncode != 0 or not debs:
            raise LinuxError('apt-get download busybox-static failed: '
                             f'{run.stderr.strip() or run.returncode} '
                             '(apt-get update first, or give --busybox PATH)')
    run = subprocess.run(['dpkg-deb', '-x', sorted(debs)[-1], os.path.join(where, 'root')],
                         capture_output=True, text=True)
    if run.returncode != 0 or not os.path.isfile(path):
        raise LinuxError(f'dpkg-deb -x {debs[-1]} gave no bin/busybox: {run.stderr.strip()}')
    return path


def make_initramfs(busybox, path, init=INIT):
    """Write the uncompressed initramfs (busybox, an /init, by default one
    printing MARKER and powering off) to ``path``, unless it already holds
    exactly that."""
    with open(busybox, 'rb') as f:
        data = cpio.build(cpio.busybox_entries(f.read(), init))
    try:
        with open(path, 'rb') as f:
            if f.read() == data:
                return path
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'wb') as f:
        f.write(data)
    os.replace(path + '.tmp', path)
    return path


def run_command(kernel, initrd, cmdline=CMDLINE, timeout=DEFAULT_TIMEOUT, extra=()):
    """The kvmlite command line that boots ``kernel`` with ``initrd``."""
    script = os.path.join(REPO, 'kvmlite.py')
    prog = [sys.executable, script] if os.path.isfile(script) else [sys.executable, '-m', 'kvmlite']
    return prog + ['run', '-k', kernel, '-i', initrd, '-p', cmdline, '--console', 'stdio',
                   '--timeout', f'{timeout:g}', '-v', *extra]


def boot(kernel, initrd, cmdline=CMDLINE, timeout=DEFAULT_TIMEOUT, extra=(), echo=None):
    """Boot through the kvmlite command line; COM1 goes to ``echo`` (a binary
    stream) as it comes. Returns a :class:`BootRun`."""
    argv = run_command(kernel, initrd, cmdline, timeout, extra)
    start = time.monotonic()
    marker_at = None
    output = bytearray()
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        for chunk in iter(lambda: proc.stdout.read1(4096), b''):
            output += chunk
            if marker_at is None and MARKER in output:
                marker_at = time.monotonic() - start
            if echo is not None:
                echo.write(chunk)
                echo.flush()
        stderr = proc.stderr.read().decode(errors='replace')
        status = proc.wait()
    return BootRun(status, bytes(output), time.monotonic() - start, marker_at, argv, stderr)


def make_disks(directory):
    """Fresh random vda (read-write) and vdb (read-only) images in
    ``directory``: {'vda': path, 'vdb': path}."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for name, size in (('vda', VDA_SIZE), ('vdb', VDB_SIZE)):
        paths[name] = os.path.join(directory, f'{name}.img')
        with open(paths[name], 'wb') as f:
            f.write(os.urandom(size))
    return paths


def virtio_extra(disks, cpus=VIRTIO_CPUS, irqchip='split'):
    """The kvmlite options of a variant v boot."""
    return ['-c', str(cpus), '--irqchip', irqchip, '--disk', disks['vda'],
            '--disk', disks['vdb'] + ',ro', '--rng']


def check_virtio_run(run, before, disks, cpus=VIRTIO_CPUS):
    """What is wrong with a variant v boot, as a list of strings: ``before``
    is {'vda': bytes, 'vdb': bytes} of the images before the boot."""
    import hashlib
    import re
    out = run.output.decode(errors='replace')
    problems = []

    def line(key):
        m = re.search(rf'^{key} (\S*)', out, re.M)
        return m.group(1) if m else None
    after = {}
    for name, path in disks.items():
        with open(path, 'rb') as f:
            after[name] = f.read()
    want = {'VIRTIO-CPUS': str(cpus),
            'VIRTIO-MD5': hashlib.md5(before['vda'][:1 << 20]).hexdigest(),
            'VIRTIO-SECTORS': str(len(before['vda']) // 512)}
    for key, value in want.items():
        if line(key) != value:
            problems.append(f'{key}: the guest said {line(key)!r}, expected {value!r}')
    faults = re.findall(r'^.*segfault at .*$', out, re.M)
    if faults:
        problems.append(f'{len(faults)} process(es) died in the guest, first: {faults[0].strip()}')
    if 'VIRTIO-VDA-WRITE-OK' not in out:
        problems.append('the guest could not write vda')
    if 'VIRTIO-VDB-WRITE-REFUSED' not in out:
        problems.append('writing the read-only vdb did not fail in the guest')
    rng = line('VIRTIO-RNG') or ''
    if not re.fullmatch(r'[0-9a-f]{32}', rng) or rng == '0' * 32:
        problems.append(f'VIRTIO-RNG: {rng!r} is not 16 random bytes in hex')
    at = MARKER_SECTOR * 512
    marker = DISK_MARKER + bytes(512 - len(DISK_MARKER))
    expected = before['vda'][:at] + marker + before['vda'][at + 512:]
    if after['vda'] != expected:
        diff = [i for i in range(0, len(expected), 512)
                if after['vda'][i:i + 512] != expected[i:i + 512]]
        problems.append(f'vda: sectors {[i // 512 for i in diff[:8]]} differ from the image with '
                        f'the marker at sector {MARKER_SECTOR}')
    if after['vdb'] != before['vdb']:
        problems.append('the read-only vdb changed')
    return problems


def summary(name, run):
    marker = f'{run.marker_seconds:.1f} s' if run.marker_seconds is not None else 'never'
    return f'{name}: init marker after {marker}, kvmlite exit status {run.status} after ' \
        f'{run.seconds:.1f} s'


def main(argv=None):
    ap = argparse.ArgumentParser(description='Boot the small Linux test kernel to a busybox '
                                 'init with kvmlite, and time it.')
    ap.add_argument('--format', choices=('pvh', 'bzimage', 'both'), default='both',
                    help='which image to boot (default: both)')
    ap.add_argument('--kernel-dir', help='directory with vmlinux-V and bzImage-V (no build)')
    ap.add_argument('--busybox', help='a static busybox binary (no apt-get download)')
    ap.add_argument('--cache', default=default_cache(),
                    help='where built and fetched files go (default: $KVMLITE_CACHE or '
                    '~/.cache/kvmlite)')
    ap.add_argument('--variant', choices=('b', 'a', 'v'), default='b',
                    help='kernel variant of build.sh (default b: local APIC and IOAPIC; v: SMP '
                    'and virtio, booted with -c 2, two disks and --rng, its init checking them)')
    ap.add_argument('--irqchip', choices=('split', 'kernel', 'user'), default='split',
                    help='kvmlite --irqchip for variant v (default split)')
    ap.add_argument('--timeout', type=float, default=DEFAULT_TIMEOUT,
                    help=f'seconds per boot (default {DEFAULT_TIMEOUT:g})')
    ap.add_argument('-q', '--quiet', action='store_true', help="don't echo the guest console")
    args = ap.parse_args(argv)
    try:
        kernels = ensure_kernel(args.kernel_dir, args.cache, args.variant, log)
        busybox = ensure_busybox(args.busybox, args.cache, log)
        v = args.variant == 'v'
        initrd = make_initramfs(busybox, os.path.join(args.cache, 'initrd-v.cpio' if v else
                                                      'initrd.cpio'), INIT_V if v else INIT)
    except (LinuxError, OSError, ValueError) as e:
        log(str(e))
        return 2
    cmdline = f'{CMDLINE} {VARIANT_CMDLINE[args.variant]}'.strip()
    names = ('pvh', 'bzimage') if args.format == 'both' else (args.format,)
    runs = {}
    failed = False
    for name in names:
        extra, disks = (), None
        if v:
            disks = make_disks(os.path.join(args.cache, 'disks'))
            before = {}
            for disk, path in disks.items():
                with open(path, 'rb') as f:
                    before[disk] = f.read()
            extra = virtio_extra(disks, irqchip=args.irqchip)
        command = run_command(kernels[name], initrd, cmdline, args.timeout, extra)
        log(f'booting {name}: {shlex.join(command)}')
        runs[name] = run = boot(kernels[name], initrd, cmdline, args.timeout, extra,
                                echo=None if args.quiet else sys.stdout.buffer)
        sys.stderr.write(run.stderr)
        if v:
            for problem in check_virtio_run(run, before, disks):
                log(f'{name}: {problem}')
                failed = True
    for name, run in runs.items():
        log(summary(name, run))
    return 0 if all(r.ok for r in runs.values()) and not failed else 1


if __name__ == '__main__':
    sys.exit(main())
