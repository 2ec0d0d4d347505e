"""Stopping cleanly on SIGINT (Ctrl-C) and SIGTERM: finish the step, save, exit 130 / 143.

Python turns SIGINT into a `KeyboardInterrupt` wherever the main thread happens to be:
inside a garbage-collection callback of JAX (where it is ignored and the command goes on),
or while XLA's threads still run a dispatched computation, where unwinding and exiting
can crash the interpreter (a `metax sweep` interrupted this way died with SIGSEGV). The
training loops therefore only *note* a signal (`StopRequests`) and act on it between
compiled calls, when nothing is in flight: save a checkpoint of the state after the last
completed chunk and raise `Interrupted`. A second signal raises at once, for a user who
does not want to wait for the chunk.
"""

import os
import signal
import sys
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PENDING: list = [None]  # a signal raised outside the loops, in case something swallowed it


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; `exit_code` is 128 + the signal number (130, 143)."""

    def __init__(self, signum: int, step: Optional[int] = None, checkpoint: Optional[str] = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopRequests:
    """While active, SIGINT and SIGTERM are recorded instead of raised; `check()` raises
    `Interrupted` at a point the caller chose. Only the main thread can own signal
    handlers, so elsewhere this does nothing (signals keep their usual effect)."""

    def __init__(self) -> None:
        # A signal whose KeyboardInterrupt was swallowed earlier (JAX ignores one raised in
        # its garbage-collection callback) still stops the loop at its first check.
        self.signum: Optional[int] = _PENDING[0]
        self._previous: dict = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        if self.signum is not None:  # asked twice: stop now, without the checkpoint
            raise Interrupted(signum)
        self.signum = _PENDING[0] = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raises `Interrupted` if a signal arrived since entering."""
        if self.signum is not None:
            raise Interrupted(self.signum)


def install_handlers() -> None:
    """Outside the loops, SIGINT and SIGTERM raise `Interrupted` (exit 130 / 143; SIGTERM
    would otherwise kill the process silently, skipping every cleanup) and are remembered,
    so that one swallowed on the way still stops the next loop."""
    _PENDING[0] = None
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            _PENDING[0] = signum
            raise Interrupted(signum)

        for signum in SIGNALS:
            signal.signal(signum, handler)


def run_study(main: Callable[[], object], prog: str, rerun: str = "run the same command again to start over") -> int:
    """Runs a study script's `main()` and returns its exit status (its int result, else 0);
    on SIGINT / SIGTERM it prints one line (ending with `rerun`) and leaves at once with
    130 / 143.

    Study scripts call compiled programs for minutes. Interrupted there, the usual
    `KeyboardInterrupt` unwinds while XLA's threads may still hold the program, and the
    interpreter's shutdown can then crash (a study interrupted during a compilation died
    with SIGSEGV). Leaving with `os._exit` skips that shutdown; the scripts write their
    results atomically at the end, so nothing half-written stays behind.

    Example:
      >>> from metax.experiment.signals import run_study
      >>> run_study(lambda: None, "demo.py"), run_study(lambda: 3, "demo.py")  # None is success
      (0, 3)
    """
    install_handlers()
    try:
        code = main()
        return code if isinstance(code, int) else 0
    except KeyboardInterrupt as error:  # Interrupted from the handlers, or a plain Ctrl-C
        name = getattr(error, "name", "SIGINT")
        print(f"{prog}: stopped by {name}; files written before the stop are kept, nothing half-written; {rerun}",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(getattr(error, "exit_code", 130))
