"""kvmlite's pytest plugin: the ``snippet`` and ``make_snippet`` fixtures.

Installed kvmlite registers it through the ``pytest11`` entry point (see
setup.py and pytest's "Writing plugins": a plugin named in that group is
loaded by pytest at start-up), so a test only names the fixture::

    def test_add(snippet):                      # long64, CPL3, 1 MiB of RAM
        assert snippet.run(b'\\x48\\xff\\xc0\\xf4').reason == 'hlt'   # inc rax; hlt
        assert snippet.reg_read('rax') == 1

    @pytest.mark.snippet(mode='real')           # Snippet()'s arguments
    def test_real(snippet): ...

From a checkout, load it with ``pytest -p tools.pytest_kvmlite``. Where
/dev/kvm cannot be used, every test that asks for a snippet is skipped with
the reason (``kvmlite.kvm_unavailable()``). Only pytest imports this module:
kvmlite itself imports nothing beyond the standard library.
"""

import pytest

import kvmlite

def pytest_configure(config):
    config.addinivalue_line(
        'markers', "snippet(mode='long64', cpl=3, mem_size=0x100000): the arguments of "
                   "the Snippet the kvmlite 'snippet' fixture makes")


def _usable():
    reason = kvmlite.kvm_unavailable()
    if reason:
        pytest.skip(f'kvmlite: KVM cannot be used here: {reason}')


@pytest.fixture
def make_snippet(request):
    """``make_snippet(mode=..., cpl=..., mem_size=...)``: a Snippet closed
    after the test (skips the test where KVM cannot be used)."""
    _usable()
    made = []

    def make(*args, **kwargs):
        if not args:                # long64 at CPL3 unless told (real mode is CPL0)
            kwargs.setdefault('mode', 'long64')
            if kwargs['mode'] != 'real':
                kwargs.setdefault('cpl', 3)
        s = kvmlite.Snippet(*args, **kwargs)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def snippet(request, make_snippet):
    """A fresh :class:`kvmlite.Snippet`: long64 at CPL3 with 1 MiB of RAM, or
    what the test's ``@pytest.mark.snippet(...)`` says; closed after the test."""
    marker = request.node.get_closest_marker('snippet')
    return make_snippet(*(marker.args if marker else ()), **(marker.kwargs if marker else {}))
