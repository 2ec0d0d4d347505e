"""Files that are never half-written, and one JSON policy for numbers JSON cannot spell.

Every file metax writes (run summaries, metric rows, checkpoints, sweep runs, datasets,
plots, caches) goes through `atomic_write`: the bytes go to a temporary file beside the
target, are synced to disk, and the file is then renamed over the target (or, with
`overwrite=False`, hard-linked to it, which fails if the target exists). A reader sees the
old file or the new one, never a prefix of either; a writer killed half-way leaves a
`<name>.tmp-*` file that the run folder's owners clean on their next start.

Non-finite numbers in JSON: written as `null`. RFC 8259 has no NaN or infinity, so the
alternatives are a non-standard token (Python's bare `NaN`, which `jq`, JavaScript's
`JSON.parse`, orjson and Go reject, making the whole file unreadable to them) or a string
(`"nan"`, which every tool reads but as text: a pandas column of losses becomes `object`).
`null` is what JavaScript's own `JSON.stringify(NaN)` writes, every JSON reader accepts it,
and `pandas.read_json` reads it back as NaN in a numeric column. What is lost is which
non-finite value it was (nan, inf or -inf); the runner's CSV metric files keep the exact
token beside the JSON lines, and the runner's NaN stop names the value in its message.
Python readers turn a field back into a float with `json_float`.

This module is below everything that writes files (the runner, the dynamics sweeps, the
data caches): it imports nothing from metax.
"""

import contextlib
import glob
import json
import math
import os
import tempfile
from typing import IO, Any, Iterator, Optional

import numpy as np

__all__ = [
    "atomic_write",
    "clean_temporary",
    "dumps_json",
    "finite_or_none",
    "fsync_directory",
    "json_float",
    "read_json",
    "save_npz_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMPORARY_MARK = ".tmp-"  # `<name>.tmp-<random>`: matched by the cleaners' `*.tmp-*` / `*.tmp*` globs


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", *, overwrite: bool = True, newline: Optional[str] = None) -> Iterator[IO]:
    """Opens a temporary file beside `path`; on a clean exit publishes it as `path`.

    The temporary file is flushed and synced before it is renamed, and the folder is
    synced after, so a crash at any point leaves the old file or the new one. On an
    exception inside the block the temporary file is removed and `path` is untouched.
    The published file gets the permissions of a new file (0666 less the umask), not the
    0600 of a temporary file.

    Args:
      path: the file to write; its folder is created if missing.
      mode: "w" (text, UTF-8) or "wb" (bytes).
      overwrite: replace an existing `path` (default); if False, publish with a hard link,
        which fails with FileExistsError if `path` exists (a result is never replaced).
      newline: as for `open` in text mode ("" for csv, which writes its own line ends).

    Yields:
      the open temporary file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + TEMPORARY_MARK)
    try:
        with os.fdopen(descriptor, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.chmod(temporary, 0o666 & ~_umask())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)  # atomic, and refuses an existing name
            except FileExistsError:
                raise FileExistsError(f"{path} exists; it was left as it was.") from None
            finally:
                os.unlink(temporary)
        fsync_directory(folder)  # the rename itself survives a crash
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)  # a failed write leaves neither a partial file nor debris
        raise


def clean_temporary(directory: str) -> list[str]:
    """Removes the temporary files a killed writer left in `directory`; returns their paths.
    Only the folder's owner may call it, at a start, when no writer of its own is running."""
    leftovers = glob.glob(os.path.join(glob.escape(directory), "*" + TEMPORARY_MARK + "*"))
    for path in leftovers:
        os.unlink(path)
    return leftovers


def fsync_directory(directory: str) -> None:
    """Syncs a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is still atomic
    finally:
        os.close(descriptor)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- JSON ---------------------------------------------------------------------------------


def finite_or_none(tree: Any) -> Any:
    """`tree` with every non-finite float replaced by None (JSON `null`, see the module
    docstring); dicts, lists and tuples are walked, numpy scalars become Python numbers."""
    if isinstance(tree, dict):
        return {key: finite_or_none(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [finite_or_none(value) for value in tree]
    if isinstance(tree, (float, np.floating)):
        return float(tree) if math.isfinite(tree) else None
    if isinstance(tree, np.integer):
        return int(tree)
    if isinstance(tree, np.bool_):
        return bool(tree)
    return tree


def dumps_json(payload: Any, indent: Optional[int] = 2) -> str:
    """`payload` as strict JSON under the non-finite policy (`null`); `indent=None` gives
    one line (JSON-lines rows)."""
    return json.dumps(finite_or_none(payload), indent=indent, allow_nan=False)


def json_float(value: Any) -> float:
    """A number read back from metax's JSON as a float: `null` (a non-finite number when
    written) is NaN. Older files spelt non-finite numbers as strings ("nan", "inf") or
    bare tokens; `float` reads both."""
    return math.nan if value is None else float(value)


def read_json(path: str) -> Any:
    """The JSON value stored at `path` (files of every metax version, bare NaN included)."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# -- the writers --------------------------------------------------------------------------


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (see `atomic_write`)."""
    with atomic_write(path) as handle:
        handle.write(text)


def write_json_atomic(path: str, payload: Any) -> None:
    """Writes `payload` as indented JSON, atomically; non-finite numbers become `null`.

    Example:
      >>> import json, os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "summary.json")
      >>> metax.experiment.write_json_atomic(path, {"loss": float("nan"), "n": 3})
      >>> json.load(open(path))
      {'loss': None, 'n': 3}
    """
    write_text_atomic(path, dumps_json(payload))


def save_npz_atomic(path: str, arrays: dict, *, overwrite: bool = True) -> None:
    """Writes `arrays` as an uncompressed `.npz` at `path`, atomically (see `atomic_write`).

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "scores.npz")
      >>> metax.experiment.save_npz_atomic(path, {"loss": np.array([0.5, 0.25])})
      >>> np.load(path)["loss"]
      array([0.5 , 0.25])
    """
    with atomic_write(path, "wb", overwrite=overwrite) as handle:
        np.savez(handle, **arrays)
