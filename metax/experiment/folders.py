"""Output folders: one rule for every command that writes, a lock, and a run's log.

Every command that writes (`run`, `resume`, `sweep`, `compare`, `eval`, `plot`) writes only
into the folder the user named (or its default), and only when that folder is new,
empty, or already of its own kind (a run to resume, a sweep to continue, an earlier
comparison to replace); anything else is refused with exit status 2, naming what is
there, and nothing is changed. A run folder is locked while a process trains in it, so
two resumes of one folder cannot interleave their rows.
"""

import datetime
import fcntl
import json
import os
from typing import Callable, Optional

from metax.experiment.errors import ConfigError

LOCK_NAME = ".metax.lock"  # ignored when deciding whether a folder is empty
RUN_LOG = "run_log.jsonl"  # a run's stops and resumes, one JSON object a line
COMPARE_FILES = ("compare.md", "compare.json", "compare.png")


def contents(folder: str) -> list[str]:
    """The entries of `folder` (none if it does not exist), the lock file left out."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name != LOCK_NAME)


def check_output(folder: str, what: str, own: Callable[[str, list[str]], bool], kind: str) -> bool:
    """Applies the rule: `folder` may be new or empty, or hold `own` contents.

    Args:
      folder: the output folder.
      what: how the user named it, for messages (e.g. "--out runs/x").
      own: `own(folder, entries)` is True for a folder of this command's own kind.
      kind: that kind in words ("a metax sweep").

    Returns:
      True when the folder already holds `kind`, False when it is new or empty.

    Raises:
      ConfigError: when `folder` is a file, or holds anything else (named).
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{what} is a file; give a new or empty folder.")
    entries = contents(folder)
    if not entries:
        return False
    if own(folder, entries):
        return True
    raise ConfigError(f"{what} holds {listing(entries)}, which is not {kind}; choose a new or empty folder (nothing was changed).")


def listing(entries: list[str]) -> str:
    """The first five entries and how many more, for messages that name what a folder holds."""
    return ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")


def is_run(folder: str, entries: Optional[list[str]] = None) -> bool:
    """A `metax run` folder: it has the config.yaml the run recorded."""
    return "config.yaml" in (contents(folder) if entries is None else entries)


def is_seeds(folder: str, entries: Optional[list[str]] = None) -> bool:
    """A `metax run --seeds` folder: seed-<k> run folders and the comparison of them."""
    entries = contents(folder) if entries is None else entries
    seeds = [e for e in entries if e.startswith("seed-") and is_run(os.path.join(folder, e))]
    return bool(seeds) and all(e in seeds or e in COMPARE_FILES for e in entries)


def is_comparison(folder: str, entries: Optional[list[str]] = None) -> bool:
    """A folder `metax compare --out` wrote (or a seeds folder, which holds one)."""
    entries = contents(folder) if entries is None else entries
    ours = "compare.json" in entries and all(e in COMPARE_FILES for e in entries)
    return ours or is_seeds(folder, entries)


def is_sweep(folder: str, entries: Optional[list[str]] = None) -> bool:
    """A `metax sweep` folder: sweep.json, runs/ and summary.json, nothing else."""
    entries = contents(folder) if entries is None else entries
    return "sweep.json" in entries and all(e in ("sweep.json", "runs", "summary.json") for e in entries)


class FolderLock:
    """An exclusive lock on a folder (`fcntl.flock` on its `.metax.lock`), held while a
    process writes a run there; the kernel drops it when the process dies, so a killed
    run never leaves the folder locked."""

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, LOCK_NAME)
        self._descriptor: Optional[int] = None

    def __enter__(self) -> "FolderLock":
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(descriptor)
            folder = os.path.dirname(self.path)
            raise ConfigError(
                f"{folder} is in use by process {holder} (it holds {self.path}); wait for that run to end "
                "or stop it, then resume (nothing was changed)."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        self._descriptor = descriptor
        return self

    def __exit__(self, *exc) -> None:
        if self._descriptor is not None:
            fcntl.flock(self._descriptor, fcntl.LOCK_UN)
            os.close(self._descriptor)
            self._descriptor = None


def log_event(folder: str, event: str, **fields) -> None:
    """Appends `{"event", "time", **fields}` to the run's log, synced (a few lines a run)."""
    entry = {"event": event, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **fields}
    with open(os.path.join(folder, RUN_LOG), "a") as handle:
        handle.write(json.dumps(entry) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_events(folder: str) -> list[dict]:
    """The run's log, oldest first (a torn last line is skipped)."""
    from metax.experiment.writers import read_jsonl

    return read_jsonl(os.path.join(folder, RUN_LOG))
