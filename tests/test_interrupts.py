"""A Ctrl-C while metax is imported stops the program, even where Python swallows it."""

import signal

import pytest

from metax import _interrupts


class _SwallowsAnInterrupt:
    """Like JAX's garbage-collection callback: an exception raised while it runs is
    reported as "Exception ignored" and dropped."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        for _ in range(100):  # the handler runs between these bytecodes, inside __del__
            pass


@pytest.fixture
def default_sigint():
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh `python`
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_swallowed_interrupt_is_raised_again_when_the_import_ends(default_sigint):
    _interrupts.begin()
    _SwallowsAnInterrupt()  # its KeyboardInterrupt is dropped here, as in the real import
    with pytest.raises(KeyboardInterrupt, match="while metax was being imported"):
        _interrupts.end()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_without_an_interrupt_the_import_ends_quietly_and_restores_the_handler(default_sigint):
    _interrupts.begin()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    _interrupts.end()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_program_s_own_handler_is_left_alone():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        _interrupts.begin()
        assert signal.getsignal(signal.SIGINT) is mine
        _interrupts.end()
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


STUDY = """
import atexit, os, signal, sys, time
from metax.experiment.signals import run_study
atexit.register(lambda: print("interpreter shutdown ran", flush=True))

def main():
    os.kill(os.getpid(), signal.SIG{name})
    time.sleep(30)  # the signal lands here, as in a long compiled call
    return 0

sys.exit(run_study(main, "demo.py"))
"""


def test_a_study_script_stops_with_one_line_and_skips_the_shutdown_that_crashed():
    # Interrupted in a compilation, experiments/dynamics/run.py died with SIGSEGV during the
    # interpreter's shutdown; run_study leaves through os._exit, so no shutdown runs at all.
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", STUDY.format(name="INT")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 130, result.stderr
    assert "demo.py: stopped by SIGINT; files written before the stop are kept" in result.stderr
    assert "interpreter shutdown ran" not in result.stdout
    assert "Traceback" not in result.stderr
