"""kvmlite holds no ambient authority a guest or an input file could use
(issue #6): kernel and initrd files are opened read-only and left unchanged;
no product code hands anything to a shell, eval/exec or a deserializer (an
AST scan of kvmlite.py, devices/ and tools/); the socket console listens on
loopback unless told otherwise; KVM's descriptors do not leak into children.
"""

import ast
import contextlib
import inspect
import io
import os
import stat
import sys
import tempfile
import unittest

import kvmlite as K
from devices import console
from tests.guest import requires_kvm
from tests.test_boot import make_multiboot_aout
from tools.asm import assemble

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files the product ships: the module, the device plugins and the tools.
PRODUCT = ['kvmlite.py'] + [os.path.join(d, f) for d in ('devices', 'tools')
                            for f in sorted(os.listdir(os.path.join(ROOT, d)))
                            if f.endswith('.py')]
# Developer tools that build and benchmark kernels may run programs, never through a shell.
MAY_RUN_PROGRAMS = {os.path.join('tools', 'linux.py'), os.path.join('tools', 'bench.py'),
                    os.path.join('tools', 'bench_snippet.py'),
                    os.path.join('tools', 'bench_console.py'),   # cc, fresh python3 processes
                    os.path.join('tools', 'msrs.py')}            # kvmlite and QEMU side by side

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

_opens = None           # while a list: every file the process opens, as (path, mode, flags)


def _audit(event, args):
    if event == 'open' and _opens is not None:
        _opens.append(args)


sys.addaudithook(_audit)          # a hook stays for the process; it records only on demand


@contextlib.contextmanager
def recording_opens():
    global _opens
    _opens = []
    try:
        yield _opens
    finally:
        _opens = None


def calls(tree):
    """(dotted name, ast.Call) of every call in ``tree``: 'eval', 'os.system'."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f, parts = node.func, []
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                parts.append(f.id)
                yield '.'.join(reversed(parts)), node


def snapshot(path):
    with open(path, 'rb') as f:
        return os.stat(path).st_mtime_ns, f.read()


def parse(path):
    with open(os.path.join(ROOT, path)) as f:
        return ast.parse(f.read(), path)


class InputFileTest(unittest.TestCase):

    @requires_kvm
    def test_kernel_and_initrd_are_opened_read_only_and_left_unchanged(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(lambda: [os.unlink(os.path.join(tmp, f)) for f in os.listdir(tmp)]
                        and os.rmdir(tmp))
        code = assemble('mov al, 0\nout 0xf4, al\nhlt', bits=32, origin=0x100020)
        kernel, initrd = os.path.join(tmp, 'kernel'), os.path.join(tmp, 'initrd')
        for path, data in ((kernel, make_multiboot_aout(text=code + b'\xf4' * 32)),
                           (initrd, b'initrd data\n' * 100)):
            with open(path, 'wb') as f:
                f.write(data)
            os.chmod(path, stat.S_IRUSR)                 # read-only (root may still write)
        before = {p: snapshot(p) for p in (kernel, initrd)}
        with recording_opens() as opens, contextlib.redirect_stderr(io.StringIO()) as err:
            status = K.main(['run', '-k', kernel, '-i', initrd, '-m', '16', '--console', 'none',
                             '--timeout', '10'])
        self.assertEqual(status, 1, err.getvalue())      # the guest's debug exit: it booted
        ours = [(p, mode, flags) for p, mode, flags in opens if p in (kernel, initrd)]
        self.assertEqual(sorted({p for p, _, _ in ours}), sorted([kernel, initrd]))
        for path, mode, flags in ours:
            self.assertFalse(flags & WRITE_FLAGS, f'{path} opened with flags {flags:#o}')
            self.assertFalse(set(mode or '') & set('wax+'), f'{path} opened with mode {mode!r}')
        self.assertEqual({p: snapshot(p) for p in (kernel, initrd)}, before)


class NoShellTest(unittest.TestCase):

    def test_the_scan_covers_the_product(self):
        for path in ('kvmlite.py', 'devices/serial.py', 'tools/boot.py', 'tools/asm.py'):
            self.assertIn(os.path.normpath(path), PRODUCT)

    def test_no_product_code_evaluates_code_or_runs_a_shell(self):
        banned = {'eval', 'exec', 'compile', '__import__', 'os.system', 'os.popen', 'pty.spawn',
                  'os.startfile', 'code.interact'}
        banned_prefixes = ('os.exec', 'os.spawn', 'os.posix_spawn')
        found = []
        for path in PRODUCT:
            for name, node in calls(parse(path)):
                if name in banned or name.startswith(banned_prefixes):
                    found.append(f'{path}:{node.lineno}: {name}()')
                if any(k.arg == 'shell' and not (isinstance(k.value, ast.Constant)
                                                 and k.value.value is False)
                       for k in node.keywords):
                    found.append(f'{path}:{node.lineno}: {name}(shell=...)')
        self.assertEqual(found, [])

    def test_only_the_kernel_build_tools_run_programs(self):
        found = []
        for path in PRODUCT:
            tree = parse(path)
            modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
            if 'subprocess' in modules and path not in MAY_RUN_PROGRAMS:
                found.append(f'{path} imports subprocess')
            for bad in ('pickle', 'marshal', 'shelve'):     # loading one runs its code
                if bad in modules:
                    found.append(f'{path} imports {bad}')
        self.assertEqual(found, [])

    def test_the_scan_finds_what_it_looks_for(self):
        tree = ast.parse('import os, subprocess\nos.system("x")\nsubprocess.run("x", shell=True)\n'
                         'eval(s)\n')
        self.assertEqual([n for n, _ in calls(tree)], ['os.system', 'subprocess.run', 'eval'])
        self.assertTrue(any(k.arg == 'shell' for _, c in calls(tree) for k in c.keywords))


class ListenTest(unittest.TestCase):

    def test_the_socket_console_listens_on_loopback_by_default(self):
        self.assertEqual(inspect.signature(console.SocketBackend).parameters['host'].default,
                         '127.0.0.1')
        backend = console.SocketBackend()
        try:
            self.assertEqual(backend.address[0], '127.0.0.1')
            self.assertNotEqual(backend.address[1], 0)
        finally:
            backend.stop()

    def test_no_product_code_names_a_wildcard_address(self):
        found = []
        for path in PRODUCT:
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.Constant) and node.value in ('0.0.0.0', '::', 'INADDR_ANY'):
                    found.append(f'{path}:{node.lineno}: {node.value!r}')
        self.assertEqual(found, [])


@requires_kvm
class DescriptorTest(unittest.TestCase):

    def test_kvm_descriptors_are_not_inherited_by_child_processes(self):
        with K.Machine(mem_size=2 << 20, console=console.MemoryBackend()) as m:
            m.vm.vcpus[0].stats()
            fds = [m.kvm.fd, m.vm.fd, m.vm.vcpus[0].fd, m._wake_r, m._wake_w]
            self.assertEqual([fd for fd in fds if os.get_inheritable(fd)], [])
            kvm_fds = []
            for name in os.listdir('/proc/self/fd'):
                with contextlib.suppress(OSError):          # listdir's own fd is gone
                    if 'kvm' in os.readlink(f'/proc/self/fd/{name}'):
                        kvm_fds.append(int(name))
            self.assertGreaterEqual(len(kvm_fds), 4)         # /dev/kvm, VM, vCPU, stats
            self.assertEqual([fd for fd in kvm_fds if os.get_inheritable(fd)], [])


if __name__ == '__main__':
    unittest.main()
