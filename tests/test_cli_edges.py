"""Bad input on the ``kvmlite run`` command line: status 2 and one line on
stderr that says what was wrong and what is allowed, no traceback, and no
waiting on (or reading) a file that is not a kernel. Each case runs the real
command as a subprocess, as a user would."""

import os
import subprocess
import sys
import tempfile
import unittest

from tests.guest import requires_kvm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mov al, 21; out 0xf4, al; hlt -- a flat real-mode guest that asks for status 21 << 1 | 1
DEBUG_EXIT_21 = b'\xb0\x15\xe6\xf4\xf4'


def kvmlite_run(*args):
    return subprocess.run([sys.executable, 'kvmlite.py', 'run', *args], cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)


class CliCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name

    def file(self, name, data):
        path = os.path.join(self.tmp, name)
        with open(path, 'wb') as f:
            f.write(data)
        return path

    def assert_refused(self, args, *words):
        """``kvmlite run ARGS`` ends with status 2 and one 'kvmlite: ...' line
        holding each of ``words``."""
        with self.subTest(args=args):
            p = kvmlite_run(*args)
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertNotIn('Traceback', p.stderr)
            self.assertRegex(p.stderr, r'\Akvmlite: [^\n]+\n\Z')
            for w in words:
                self.assertIn(w, p.stderr)
            self.assertEqual(p.stdout, '', 'no guest ran')

    def assert_demo_ran(self, args):
        with self.subTest(args=args):
            p = kvmlite_run(*args, '--console', 'none')
            self.assertEqual((p.returncode, p.stderr), (0, ''))


class ParseTest(CliCase):
    """What argparse's types and the option combinations refuse: no KVM needed."""

    def test_memory_sizes_that_are_not_whole_pages_from_1_mib_to_8_tib(self):
        for mem in ('infG', '0', 'nan', '-5', '1.5K', '1e999999999', '9T', 'lots'):
            self.assert_refused(['-m', mem, '--console', 'none'],
                                f"memory size '{mem}'", '1 MiB to 8 TiB', '4 KiB pages')

    def test_timeouts_that_are_not_above_zero(self):
        for timeout in ('-1', 'nan', '0', 'soon'):
            self.assert_refused(['--timeout', timeout, '--console', 'none'],
                                f"timeout '{timeout}'", 'above 0', 'inf')

    def test_a_format_needs_a_kernel(self):
        self.assert_refused(['--format', 'multiboot', '--console', 'none'], '--format needs --kernel')

    def test_an_initrd_needs_a_kernel(self):
        initrd = self.file('initrd', b'initrd\n')
        self.assert_refused(['-i', initrd, '--console', 'none'], '--initrd needs --kernel')

    def test_an_unknown_option_is_one_line_too(self):
        self.assert_refused(['--bogus', '--console', 'none'], '--bogus')

    def test_a_missing_kernel_is_named(self):
        self.assert_refused(['-k', '/nonexistent', '--console', 'none'],
                            "cannot read kernel '/nonexistent'", 'No such file')

    def test_a_directory_is_no_kernel(self):
        self.assert_refused(['-k', self.tmp, '--console', 'none'],
                            f"cannot read kernel '{self.tmp}'", 'not a regular file', 'directory')

    def test_a_fifo_is_refused_without_waiting_for_a_writer(self):
        fifo = os.path.join(self.tmp, 'fifo')
        os.mkfifo(fifo)
        self.assert_refused(['-k', fifo, '--console', 'none'],
                            f"cannot read kernel '{fifo}'", 'not a regular file', 'FIFO')
        self.assert_refused(['-k', self.file('k', DEBUG_EXIT_21), '-i', fifo, '--console', 'none'],
                            f"cannot read initrd '{fifo}'", 'FIFO')

    def test_a_file_larger_than_the_guest_ram_is_refused_by_its_size(self):
        sparse = self.file('sparse', b'')
        os.truncate(sparse, 1 << 40)                    # a terabyte nobody reads
        self.assert_refused(['-k', sparse, '-m', '16', '--console', 'none'],
                            f"kernel '{sparse}' is larger than the guest's 16 MiB")

    def test_an_unusable_console_file_is_refused_before_the_machine_starts(self):
        self.assert_refused(['--console', '/nonexistent/dir/x'],
                            "console file '/nonexistent/dir/x'", 'stdio, none or a file')
        self.assert_refused(['--console', self.tmp], f"console file '{self.tmp}'", 'directory')

    def test_main_returns_status_2_rather_than_exiting(self):
        import contextlib
        import io
        from tools import cli
        with contextlib.redirect_stderr(io.StringIO()) as err:
            self.assertEqual(cli.main(['run', '-m', '0']), 2)
        self.assertRegex(err.getvalue(), r"\Akvmlite: argument -m/--mem: memory size '0'[^\n]*\n\Z")


@requires_kvm
class RunTest(CliCase):
    """What needs the host's KVM: its vCPU limit, the RAM it can map, a guest run."""

    def test_vcpu_counts_outside_what_kvm_allows_name_its_maximum(self):
        import kvmlite
        with kvmlite.Kvm() as kvm:
            most = kvm.max_vcpus()
        for cpus in ('-1', '0', str(max(2000, most + 1))):
            self.assert_refused(['-c', cpus, '--console', 'none'],
                                f"vCPU count '{cpus}'", f'1 to {most}', 'KVM_CAP_MAX_VCPUS')

    def test_one_vcpu_without_a_local_apic_stays_one_line(self):
        self.assert_refused(['--irqchip', 'user', '-c', '2', '--console', 'none'], 'local APIC')

    def test_64_gib_runs_or_says_the_host_cannot_give_it(self):
        p = kvmlite_run('-m', '65536', '--console', 'none')
        self.assertNotIn('Traceback', p.stderr)
        if p.returncode == 0:
            self.assertEqual(p.stderr, '')
        else:
            self.assertEqual(p.returncode, 2, p.stderr)
            self.assertRegex(p.stderr, r'\Akvmlite: the host cannot give the guest 64 GiB of RAM'
                                       r'[^\n]*give less with -m\n\Z')

    def test_an_endless_timeout_means_none(self):
        for timeout in ('inf', '1e300'):
            self.assert_demo_ran(['--timeout', timeout])

    def test_dev_zero_is_refused_as_kernel_and_initrd(self):
        kernel = self.file('kernel', DEBUG_EXIT_21)
        self.assert_refused(['-k', '/dev/zero', '-m', '16', '--console', 'none'],
                            "kernel '/dev/zero': not a regular file but a character device")
        self.assert_refused(['-k', kernel, '-i', '/dev/zero', '-m', '16', '--console', 'none'],
                            "initrd '/dev/zero': not a regular file but a character device")

    def test_a_debug_exit_names_the_value_written_and_the_status(self):
        kernel = self.file('kernel', DEBUG_EXIT_21)
        p = kvmlite_run('-k', kernel, '--format', 'flat', '-v', '--console', 'none')
        self.assertEqual((p.returncode, p.stderr),
                         (43, 'kvmlite: the guest wrote 0x15 to the debug-exit port: '
                              'exit status 43\n'))

    def test_a_debug_exit_past_eight_bits_says_the_status_the_process_keeps(self):
        kernel = self.file('kernel', b'\xb0\x80\xe6\xf4\xf4')    # mov al, 0x80; out 0xf4, al
        p = kvmlite_run('-k', kernel, '--format', 'flat', '--console', 'none')
        self.assertEqual((p.returncode, p.stderr),
                         (1, 'kvmlite: the guest wrote 0x80 to the debug-exit port: '
                             'exit status 1\n'))


# flat real-mode guests for the timeout report; the labels say where they stall
STALLED = {
    'spin': '''
        bits 16
        mov dx, 0x3f8
        mov al, 'R'
        out dx, al                  ; may wait in KVM's coalesced ring: no exit
        mov dx, 0x3fd
        in al, dx                   ; a read always exits
    spin:
        jmp spin
    ''',
    'poll': '''
        bits 16
    poll:
        mov dx, 0x3fd
        in al, dx
        test al, 1                  ; waits for a byte that never comes
        jz poll
    end:
        hlt
    ''',
    'halt': '''
        bits 16
        sti
    halt:
        hlt
        jmp halt
    ''',
}


@requires_kvm
class TimeoutReportTest(CliCase):
    """When --timeout expires, one line per vCPU after the timeout's own:
    where it was, what it was doing, and its last exits by device."""

    def run_stalled(self, cases):
        """Run each (guest, irqchip) with --timeout 1, all at once; returns
        {case: (its vCPU line, the guest's labels)}."""
        from tools.asm import assemble_with_labels
        procs = {}
        for guest, irqchip in cases:
            code, labels = assemble_with_labels(STALLED[guest], bits=16)
            kernel = self.file(f'{guest}-{irqchip}', code)
            procs[guest, irqchip] = labels, subprocess.Popen(
                [sys.executable, 'kvmlite.py', 'run', '-k', kernel, '--format', 'flat',
                 '--console', 'none', '--irqchip', irqchip, '--timeout', '1'],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True)
        results = {}
        for case, (labels, p) in procs.items():
            _, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 124, err)
            lines = err.splitlines()
            self.assertEqual(len(lines), 2, err)            # the timeout, then one vCPU
            self.assertEqual(lines[0], 'kvmlite: timeout after 1.0 s')
            results[case] = lines[1], labels
        return results

    def test_each_vcpu_says_where_it_was_and_what_it_was_doing(self):
        results = self.run_stalled([('spin', 'split'), ('spin', 'user'), ('poll', 'split'),
                                    ('halt', 'split'), ('halt', 'user')])
        for (guest, irqchip), (line, labels) in results.items():
            with self.subTest(guest=guest, irqchip=irqchip):
                self.assertRegex(line, r'^kvmlite: vCPU 0: real mode, CS:IP 1000:[0-9a-f]{4} '
                                       r'\(linear 0x1[0-9a-f]{4}\): ')
                if guest == 'spin':
                    at = f'1000:{labels["spin"]:04x}'
                    self.assertIn(f'CS:IP {at} ', line)
                    self.assertIn(f': spinning at {at}; ', line)
                    self.assertRegex(line, r'; last exits, newest first: COM1 16550A port 0x3fd'
                                           r'[ ,].* 0 MMIO exits in all\)$')
                elif guest == 'poll':
                    ip = int(line.split('CS:IP 1000:')[1][:4], 16)
                    self.assertTrue(labels['poll'] <= ip < labels['end'], line)
                    self.assertIn('waiting on I/O (polling COM1 16550A port 0x3fd); '
                                  'last exits, newest first: COM1 16550A port 0x3fd x8 (', line)
                else:
                    self.assertIn(': halted, interrupts on; last exits, newest first: none', line)


if __name__ == '__main__':
    unittest.main()
