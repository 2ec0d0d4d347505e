"""Ctrl-C while `import metax` runs is never lost.

Importing jax runs Python code inside garbage-collection callbacks, and Python drops a
`KeyboardInterrupt` raised there ("Exception ignored in ..."): a Ctrl-C that lands in one
while `metax` (or the `metax` command) starts up would vanish, and the command would go
on to train for hours. While `metax/__init__.py` runs, SIGINT still raises as usual but is
also noted; if the import ends normally although one arrived, `end` raises it again, at a
point where nothing swallows it. Standard library only: this runs before jax is imported.
"""

import signal
import threading
from typing import Any, Optional

_noted: list[Optional[int]] = [None]
_previous: list[Any] = []


def _note(signum: int, frame: Any) -> None:
    _noted[0] = signum
    raise KeyboardInterrupt


def begin() -> None:
    """Starts noting SIGINT (only where Python's default handler is installed and only on
    the main thread, so a program's own handler is left alone)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        _noted[0] = None
        _previous.append(signal.signal(signal.SIGINT, _note))


def end() -> None:
    """Restores the handler `begin` replaced; raises `KeyboardInterrupt` if a SIGINT
    arrived since `begin` (its own `KeyboardInterrupt` may have been swallowed)."""
    if not _previous:
        return
    signal.signal(signal.SIGINT, _previous.pop())
    if _noted[0] is not None:
        _noted[0] = None
        raise KeyboardInterrupt("interrupted while metax was being imported")
