"""tools/cpio.py: newc archives checked by our reader and, when present, the host's cpio."""

import gzip
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

from tools import cpio

HERE = os.path.dirname(os.path.abspath(__file__))
CPIO_PY = os.path.join(HERE, '..', 'tools', 'cpio.py')
HOST_CPIO = shutil.which('cpio') or shutil.which('bsdcpio')


def sample_entries():
    return [
        cpio.directory('bin'),
        cpio.file('bin/hello', b'#!/bin/sh\necho hi\n', 0o755),
        cpio.symlink('bin/sh', '/bin/busybox'),
        cpio.char_device('dev/console', 5, 1),
        cpio.block_device('dev/vda', 254, 0, 0o660),
        cpio.file('etc/odd', b'12345'),          # a size that needs padding
    ]


def members(data):
    """(offset, name) of each member, walking the raw format independently."""
    out, pos = [], 0
    while True:
        assert data[pos:pos + 6] == b'070701', pos
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        out.append((pos, name))
        if name == 'TRAILER!!!':
            return out
        pos = (pos + 110 + namesize + 3) // 4 * 4
        pos = (pos + size + 3) // 4 * 4


class BuildTest(unittest.TestCase):
    def test_round_trip_keeps_files_dirs_symlinks_and_device_nodes(self):
        got = {e.name: e for e in cpio.read_cpio(cpio.build(sample_entries()))}
        self.assertEqual(got['bin/hello'].data, b'#!/bin/sh\necho hi\n')
        self.assertEqual(got['bin/hello'].mode, stat.S_IFREG | 0o755)
        self.assertEqual(got['bin/sh'].mode, stat.S_IFLNK | 0o777)
        self.assertEqual(got['bin/sh'].data, b'/bin/busybox')
        self.assertEqual((got['dev/console'].mode, got['dev/console'].rdev),
                         (stat.S_IFCHR | 0o600, (5, 1)))
        self.assertEqual((got['dev/vda'].mode, got['dev/vda'].rdev),
                         (stat.S_IFBLK | 0o660, (254, 0)))
        self.assertEqual(got['etc/odd'].data, b'12345')

    def test_members_start_on_4_byte_boundaries_and_end_with_the_trailer(self):
        data = cpio.build(sample_entries())
        found = members(data)
        self.assertTrue(all(off % 4 == 0 for off, _ in found))
        self.assertEqual(found[-1][1], 'TRAILER!!!')
        self.assertEqual(len(data) % 4, 0)

    def test_header_fields_are_uppercase_hex_with_root_owner_and_nlink(self):
        data = cpio.build([cpio.directory('d'), cpio.file('d/f', b'x')])
        dir_hdr, file_hdr = data[:110], data[members(data)[1][0]:][:110]
        self.assertEqual(dir_hdr[38:46], b'00000002')            # nlink of a directory
        self.assertEqual(file_hdr[38:46], b'00000001')           # files: no hard-link wait
        self.assertEqual(file_hdr[22:38], b'0' * 16)             # uid, gid 0
        self.assertEqual(file_hdr[14:22], b'%08X' % (stat.S_IFREG | 0o644))

    def test_missing_parent_directories_come_before_their_children(self):
        names = [e.name for e in cpio.read_cpio(cpio.build([cpio.file('/a/b/c', b'x')]))]
        self.assertEqual(names, ['a', 'a/b', 'a/b/c'])

    def test_leading_slashes_and_dots_are_dropped_from_names(self):
        names = [e.name for e in cpio.read_cpio(cpio.build([cpio.file('//x/./y', b'')]))]
        self.assertEqual(names, ['x', 'x/y'])

    def test_bad_entries_are_refused(self):
        for entries in ([cpio.file('a', b''), cpio.file('a', b'')],          # twice
                        [cpio.file('../escape', b'')],                       # climbs out
                        [cpio.Entry('d', stat.S_IFDIR | 0o755, b'data')],    # data on a dir
                        [cpio.Entry('x', 0o644)],                            # no file type
                        [cpio.Entry('l', stat.S_IFLNK | 0o777)]):            # no target
            with self.subTest(entries=entries), self.assertRaises(ValueError):
                cpio.build(entries)

    def test_the_same_entries_give_the_same_bytes(self):
        self.assertEqual(cpio.build(sample_entries()), cpio.build(sample_entries()))


class DirectoryTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)
        self.src = os.path.join(self.tmp, 'root')
        os.makedirs(os.path.join(self.src, 'sub', 'deeper'))
        for rel, data in (('top', b'top'), ('sub/a', b'a' * 5), ('sub/deeper/b', b'')):
            with open(os.path.join(self.src, rel), 'wb') as f:
                f.write(data)
        os.chmod(os.path.join(self.src, 'top'), 0o751)
        os.symlink('deeper/b', os.path.join(self.src, 'sub', 'link'))
        os.mkfifo(os.path.join(self.src, 'fifo'))

    def test_directory_tree_is_archived_with_modes_and_symlinks(self):
        got = {e.name: e for e in cpio.read_cpio(cpio.build_from_directory(self.src))}
        self.assertEqual(sorted(got), ['fifo', 'sub', 'sub/a', 'sub/deeper', 'sub/deeper/b',
                                       'sub/link', 'top'])
        self.assertEqual(got['top'].mode, stat.S_IFREG | 0o751)
        self.assertEqual(got['sub/link'].data, b'deeper/b')
        self.assertTrue(stat.S_ISFIFO(got['fifo'].mode))
        self.assertEqual((got['sub/a'].uid, got['sub/a'].gid, got['sub/a'].mtime), (0, 0, 0))

    def test_every_parent_precedes_its_children(self):
        names = [e.name for e in cpio.read_cpio(cpio.build_from_directory(self.src))]
        for i, name in enumerate(names):
            if '/' in name:
                self.assertIn(name.rsplit('/', 1)[0], names[:i])

    def test_a_file_instead_of_a_directory_is_refused(self):
        with self.assertRaises(ValueError):
            cpio.build_from_directory(os.path.join(self.src, 'top'))

    @unittest.skipUnless(HOST_CPIO, 'no cpio or bsdcpio on this host')
    def test_host_cpio_extracts_the_same_tree(self):
        archive = cpio.build_from_directory(self.src)
        out = os.path.join(self.tmp, 'out')
        os.mkdir(out)
        subprocess.run([HOST_CPIO, '-idm', '--quiet'], input=archive, cwd=out, check=True,
                       stderr=subprocess.PIPE)
        with open(os.path.join(out, 'sub', 'a'), 'rb') as f:
            self.assertEqual(f.read(), b'aaaaa')
        self.assertEqual(os.readlink(os.path.join(out, 'sub', 'link')), 'deeper/b')
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(out, 'top')).st_mode), 0o751)


class HostCpioTest(unittest.TestCase):
    @unittest.skipUnless(HOST_CPIO, 'no cpio or bsdcpio on this host')
    def test_host_cpio_lists_every_member_with_its_type(self):
        listing = subprocess.run([HOST_CPIO, '-tv', '--quiet'], input=cpio.build(sample_entries()),
                                 capture_output=True, check=True).stdout.decode()
        lines = {line.split()[-1] if '->' not in line else line.split()[-3]: line
                 for line in listing.splitlines()}
        self.assertEqual(sorted(lines), ['bin', 'bin/hello', 'bin/sh', 'dev', 'dev/console',
                                         'dev/vda', 'etc', 'etc/odd'])
        self.assertTrue(lines['dev/console'].startswith('crw-------'))
        self.assertIn('5,', lines['dev/console'])
        self.assertTrue(lines['dev/vda'].startswith('brw-rw----'))
        self.assertIn('-> /bin/busybox', lines['bin/sh'])


class ReaderTest(unittest.TestCase):
    def test_gzip_archives_are_read_transparently(self):
        data = cpio.build(sample_entries())
        self.assertEqual(cpio.read_cpio(gzip.compress(data)), cpio.read_cpio(data))

    def test_damaged_archives_raise_value_error(self):
        data = cpio.build(sample_entries())
        bad_hex = data[:20] + b'ZZ' + data[22:]
        for damaged in (data[:50], data[:len(data) - 120], bad_hex, b'not an archive'):
            with self.subTest(size=len(damaged)), self.assertRaises(ValueError):
                cpio.read_cpio(damaged)


class CommandTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.tmp)

    def path(self, name, data=None):
        p = os.path.join(self.tmp, name)
        if data is not None:
            with open(p, 'wb') as f:
                f.write(data)
        return p

    def read(self, name):
        with open(self.path(name), 'rb') as f:
            return {e.name: e for e in cpio.read_cpio(f.read())}

    def test_busybox_layout_has_init_console_applets_and_mount_points(self):
        busybox = self.path('busybox', b'\x7fELF fake busybox')
        init = self.path('init.sh', b'#!/bin/sh\necho marker\npoweroff -f\n')
        out = self.path('initrd.cpio')
        self.assertEqual(cpio.main(['-o', out, '--busybox', busybox, '--init-script', init]), 0)
        got = self.read('initrd.cpio')
        self.assertEqual(got['bin/busybox'].data, b'\x7fELF fake busybox')
        self.assertEqual(got['bin/busybox'].mode, stat.S_IFREG | 0o755)
        self.assertEqual((got['init'].data, got['init'].mode),
                         (b'#!/bin/sh\necho marker\npoweroff -f\n', stat.S_IFREG | 0o755))
        self.assertEqual((got['dev/console'].mode, got['dev/console'].rdev),
                         (stat.S_IFCHR | 0o600, (5, 1)))
        for applet in ('bin/sh', 'sbin/poweroff', 'bin/mount'):
            self.assertEqual(got[applet].data, b'/bin/busybox')
        for d in ('proc', 'sys', 'dev'):
            self.assertTrue(stat.S_ISDIR(got[d].mode))

    def test_directory_overlays_the_busybox_layout(self):
        src = os.path.join(self.tmp, 'extra')
        os.makedirs(os.path.join(src, 'bin'))
        with open(os.path.join(src, 'bin', 'tool'), 'wb') as f:
            f.write(b'tool')
        busybox = self.path('busybox', b'bb')
        self.assertEqual(cpio.main(['-o', self.path('o.cpio'), '--busybox', busybox, src]), 0)
        got = self.read('o.cpio')
        self.assertEqual(got['bin/tool'].data, b'tool')
        self.assertIn(b'mount -t proc', got['init'].data)      # the default init

    def test_gzip_output_is_a_gzip_stream_of_the_same_archive(self):
        src = os.path.join(self.tmp, 'tree')
        os.makedirs(src)
        self.path('tree/f', b'data')
        self.assertEqual(cpio.main(['-o', self.path('a.cpio.gz'), '--gzip', src]), 0)
        with open(self.path('a.cpio.gz'), 'rb') as f:
            raw = f.read()
        self.assertEqual(raw[:2], b'\x1f\x8b')
        self.assertEqual(gzip.decompress(raw), cpio.build_from_directory(src))

    def test_runs_as_a_script_and_reports_a_missing_directory(self):
        missing = os.path.join(self.tmp, 'nope')
        r = subprocess.run([sys.executable, CPIO_PY, '-o', self.path('x.cpio'), missing],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn('is not a directory', r.stderr)
        self.assertFalse(os.path.exists(self.path('x.cpio')))


if __name__ == '__main__':
    unittest.main()
