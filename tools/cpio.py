#!/usr/bin/env python3
"""Build initramfs images: cpio archives in the "newc" format (magic 070701).

Format: the SVR4 portable ASCII format without checksums, as the Linux kernel
unpacks it (Documentation/driver-api/early-userspace/buffer-format.rst and
cpio(5)): per entry a 110-byte header -- the magic "070701" then 13 fields of
8 hex digits (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
rdevmajor, rdevminor, namesize including the NUL, check = 0) -- then the
NUL-terminated name padded to a multiple of 4 bytes (counting the header),
then the data (a symlink's data is its target) padded to 4 bytes. The archive
ends with an entry named "TRAILER!!!".

Archives are reproducible: owner root, mtime 0 unless given, inode numbers in
entry order, regular files with nlink 1 (so the kernel never waits for hard
link partners).

As a module: ``build(entries)``, ``build_from_directory(path)``,
``busybox_entries(...)``, ``read_cpio(data)``. As a command::

    python3 tools/cpio.py -o initrd.cpio DIR
    python3 tools/cpio.py -o initrd.cpio --busybox /bin/busybox --init-script init.sh [DIR]
    ... --gzip                       # gzip the archive (the kernel unpacks it
                                     # about 10x slower in emulated kernels)
"""

import argparse
import gzip
import os
import stat
import sys
from dataclasses import dataclass

__all__ = ['Entry', 'file', 'directory', 'symlink', 'char_device', 'block_device',
           'build', 'build_from_directory', 'entries_from_directory', 'busybox_entries',
           'read_cpio', 'main']

NEWC_MAGIC = b'070701'            # newc; "070702" is the same with a checksum
CRC_MAGIC = b'070702'
HEADER_SIZE = 110
TRAILER = 'TRAILER!!!'
NAME_MAX = 4095                   # the kernel's PATH_MAX less the NUL
GZIP_MAGIC = b'\x1f\x8b'

DEFAULT_APPLETS = (               # the busybox applets linked in /bin and /sbin
    'bin/sh', 'bin/ash', 'bin/cat', 'bin/cp', 'bin/dd', 'bin/dmesg', 'bin/echo', 'bin/false',
    'bin/grep', 'bin/hostname', 'bin/kill', 'bin/ln', 'bin/ls', 'bin/mkdir', 'bin/mknod',
    'bin/mount', 'bin/mv', 'bin/ps', 'bin/pwd', 'bin/rm', 'bin/rmdir', 'bin/sed', 'bin/sleep',
    'bin/stty', 'bin/sync', 'bin/touch', 'bin/true', 'bin/umount', 'bin/uname', 'bin/vi',
    'bin/head', 'bin/tail', 'bin/wc', 'bin/date', 'bin/test', 'bin/[', 'bin/printf',
    'bin/hexdump', 'bin/od', 'bin/env', 'bin/chmod', 'bin/free', 'bin/uptime',
    'sbin/init', 'sbin/halt', 'sbin/poweroff', 'sbin/reboot', 'sbin/mdev', 'sbin/ifconfig',
)
DEFAULT_INIT = b"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "kvmlite initramfs: init running"
exec /bin/sh
"""


@dataclass
class Entry:
    """One archive member. ``mode`` holds the file type bits and permissions
    (``stat.S_IFREG | 0o644``); ``data`` is a file's contents or a symlink's
    target; ``rdev`` is (major, minor) of a device node."""
    name: str
    mode: int
    data: bytes = b''
    rdev: tuple = (0, 0)
    uid: int = 0
    gid: int = 0
    mtime: int = 0


def file(name, data, mode=0o644):
    return Entry(name, stat.S_IFREG | mode, bytes(data))


def directory(name, mode=0o755):
    return Entry(name, stat.S_IFDIR | mode)


def symlink(name, target):
    return Entry(name, stat.S_IFLNK | 0o777, os.fsencode(target))


def char_device(name, major, minor, mode=0o600):
    return Entry(name, stat.S_IFCHR | mode, rdev=(major, minor))


def block_device(name, major, minor, mode=0o600):
    return Entry(name, stat.S_IFBLK | mode, rdev=(major, minor))


def _clean_name(name):
    """'/bin//sh' -> 'bin/sh'; refuses names that climb out with '..'."""
    parts = [p for p in os.fsdecode(name).split('/') if p not in ('', '.')]
    if '..' in parts:
        raise ValueError(f'cpio entry {name!r}: ".." is not allowed in archive names')
    cleaned = '/'.join(parts) or '.'
    if '\0' in cleaned or len(os.fsencode(cleaned)) > NAME_MAX:
        raise ValueError(f'cpio entry {name!r}: names must be NUL-free and at most {NAME_MAX} '
                         'bytes')
    return cleaned


def _check(entry):
    kind = stat.S_IFMT(entry.mode)
    if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFCHR, stat.S_IFBLK,
                    stat.S_IFIFO, stat.S_IFSOCK):
        raise ValueError(f'cpio entry {entry.name!r}: mode {entry.mode:#o} has no file type')
    if entry.data and kind not in (stat.S_IFREG, stat.S_IFLNK):
        raise ValueError(f'cpio entry {entry.name!r}: only files and symlinks carry data')
    if kind == stat.S_IFLNK and not entry.data:
        raise ValueError(f'cpio entry {entry.name!r}: a symlink needs a target')
    for value in (entry.mode, entry.uid, entry.gid, entry.mtime, len(entry.data), *entry.rdev):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f'cpio entry {entry.name!r}: {value} does not fit a newc field')


def _pad4(n):
    return -n % 4


def _member(ino, entry, nlink):
    name = os.fsencode(entry.name) + b'\0'
    fields = (ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime, len(entry.data),
              0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
    header = NEWC_MAGIC + b''.join(b'%08X' % v for v in fields)
    return b''.join((header, name, bytes(_pad4(HEADER_SIZE + len(name))),
                     entry.data, bytes(_pad4(len(entry.data)))))


def _with_parents(entries):
    """The entries in order, each preceded by directories for missing parents
    (the kernel's unpacker does not create them)."""
    seen, out = set(), []
    for entry in entries:
        name = _clean_name(entry.name)
        if name in seen:
            raise ValueError(f'cpio entry {name!r} appears twice')
        parts = name.split('/')
        for i in range(1, len(parts)):
            parent = '/'.join(parts[:i])
            if parent not in seen:
                seen.add(parent)
                out.append(directory(parent))
        seen.add(name)
        out.append(Entry(name, entry.mode, bytes(entry.data), tuple(entry.rdev), entry.uid,
                         entry.gid, entry.mtime))
    return out


def build(entries):
    """A newc archive (bytes) of ``entries``, with the trailer; missing parent
    directories are added (mode 0755) before their first child."""
    chunks = []
    for ino, entry in enumerate(_with_parents(entries), start=1):
        _check(entry)
        nlink = 2 if stat.S_ISDIR(entry.mode) else 1
        chunks.append(_member(ino, entry, nlink))
    chunks.append(_member(0, Entry(TRAILER, 0), 1))
    return b''.join(chunks)


def entries_from_directory(path):
    """Entries for everything under ``path`` (not ``path`` itself), parents
    first, sorted by name, owned by root; symlinks are stored, not followed."""
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        rel_root = os.path.relpath(root, path)
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            rel = name if rel_root == '.' else f'{rel_root}/{name}'
            st = os.lstat(full)
            mode = stat.S_IFMT(st.st_mode) | stat.S_IMODE(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(full, 'rb') as f:
                    out.append(Entry(rel, mode, f.read()))
            elif stat.S_ISLNK(st.st_mode):
                out.append(Entry(rel, mode, os.fsencode(os.readlink(full))))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out.append(Entry(rel, mode, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev))))
            else:
                out.append(Entry(rel, mode))
    # os.walk lists a directory's files before its subdirectories' contents,
    # so sort by path components to keep each parent before its children.
    return sorted(out, key=lambda e: e.name.split('/'))


def build_from_directory(path):
    """A newc archive of the tree under ``path``."""
    if not os.path.isdir(path):
        raise ValueError(f'{path} is not a directory')
    return build(entries_from_directory(path))


def busybox_entries(busybox, init_script=DEFAULT_INIT, applets=DEFAULT_APPLETS):
    """The usual busybox initramfs: /bin/busybox, symlinks for the applets,
    /dev/console (char 5:1), /init, and /proc, /sys, /dev, /tmp, /root."""
    entries = [directory(d) for d in ('bin', 'sbin', 'dev', 'proc', 'sys', 'root', 'etc')]
    entries += [directory('tmp', 0o1777),
                file('bin/busybox', busybox, 0o755),
                char_device('dev/console', 5, 1, 0o600),   # TTY major 5, minor 1
                file('init', init_script, 0o755)]
    entries += [symlink(applet, '/bin/busybox') for applet in applets]
    return entries


def _field(header, i, offset):
    text = header[6 + 8 * i:14 + 8 * i]
    try:
        if len(text) != 8 or not all(c in b'0123456789abcdefABCDEF' for c in text):
            raise ValueError
        return int(text, 16)
    except ValueError:
        raise ValueError(f'cpio header at offset {offset:#x}: field {i} {text!r} is not 8 hex '
                         'digits') from None


def read_cpio(data):
    """Parse a newc (or 070702) archive, gzipped or not, up to its first
    trailer; returns the entries (hard-link ino/nlink are not kept)."""
    data = bytes(data)
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    out, pos = [], 0
    while True:
        header = data[pos:pos + HEADER_SIZE]
        if len(header) < HEADER_SIZE or header[:6] not in (NEWC_MAGIC, CRC_MAGIC):
            raise ValueError(f'cpio: no newc header at offset {pos:#x} (truncated, or no trailer)')
        (_, mode, uid, gid, _, mtime, size, _, _, rmajor, rminor, namesize, _) = \
            (_field(header, i, pos) for i in range(13))
        name_end = pos + HEADER_SIZE + namesize
        if namesize < 1 or name_end > len(data) or data[name_end - 1] != 0:
            raise ValueError(f'cpio header at offset {pos:#x}: bad name size {namesize}')
        name = os.fsdecode(data[pos + HEADER_SIZE:name_end - 1])
        start = name_end + _pad4(HEADER_SIZE + namesize)
        if start + size > len(data):
            raise ValueError(f'cpio entry {name!r}: {size} bytes of data run past the end')
        if name == TRAILER:
            return out
        out.append(Entry(name, mode, data[start:start + size], (rmajor, rminor), uid, gid, mtime))
        pos = start + size + _pad4(size)


def main(argv=None):
    parser = argparse.ArgumentParser(description='Build a newc cpio initramfs.')
    parser.add_argument('-o', '--output', required=True, help='archive to write')
    parser.add_argument('directory', nargs='?', help='tree to archive (added last, so it wins)')
    parser.add_argument('--busybox', help='busybox binary for the usual layout')
    parser.add_argument('--init-script', help='file to install as /init (with --busybox)')
    parser.add_argument('--gzip', action='store_true', help='gzip the archive')
    args = parser.parse_args(argv)
    if not args.directory and not args.busybox:
        parser.error('give a DIR, --busybox, or both')
    if args.init_script and not args.busybox:
        parser.error('--init-script goes with --busybox (put init in DIR otherwise)')
    try:
        entries = {}
        if args.busybox:
            init = DEFAULT_INIT
            if args.init_script:
                with open(args.init_script, 'rb') as f:
                    init = f.read()
            with open(args.busybox, 'rb') as f:
                entries.update((e.name, e) for e in busybox_entries(f.read(), init))
        if args.directory:
            if not os.path.isdir(args.directory):
                raise ValueError(f'{args.directory} is not a directory')
            entries.update((e.name, e) for e in entries_from_directory(args.directory))
        data = build(sorted(entries.values(), key=lambda e: e.name.split('/')))
    except (OSError, ValueError) as e:
        print(f'cpio.py: {e}', file=sys.stderr)
        return 2
    if args.gzip:
        data = gzip.compress(data, mtime=0)
    with open(args.output, 'wb') as f:
        f.write(data)
    return 0


if __name__ == '__main__':
    sys.exit(main())
