"""Atomic checkpoints: one `.npz` per step, written beside its final name and renamed.

A checkpoint holds every leaf of a pytree (the meta-state: hparams, hstate and the outer
optimiser's state) plus a small JSON record (step, keys, config fingerprint). A reader
sees a complete checkpoint or none: the file is written under a temporary name, synced
to disk and renamed, and the folder is synced after the rename. The newest `keep`
checkpoints stay; older ones are removed only after a newer one is durable, and
temporary files left by a killed writer are cleaned up on the next start.

Restoring needs a template of the same structure (the runner rebuilds it from the
config): leaves are matched in order and checked for shape and dtype. A damaged file
(truncated, emptied, bit-flipped: the zip's CRC catches flips) is not fatal while an
older checkpoint is intact: `restore_latest` falls back to the newest intact one, and
the resuming writer moves the damaged file aside (`*.damaged`), never deleting it.
"""

import json
import os
import re
import sys
import zipfile
import zlib
from typing import Any, NamedTuple, Optional

import jax
import numpy as np

from metax.experiment.errors import ConfigError
from metax.utils.io import clean_temporary  # noqa: F401  (the runner cleans its checkpoint folder with it)
from metax.utils.io import dumps_json, save_npz_atomic

_NAME = re.compile(r"^step_(\d{9})\.npz$")
_META_KEY = "__checkpoint__"
DAMAGED_SUFFIX = ".damaged"
# What reading a damaged .npz raises: a truncated or emptied file EOFError/BadZipFile, a
# flipped bit BadZipFile (CRC), a file that is no zip at all numpy's ValueError about pickles.
_READ_ERRORS = (EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError, OSError)


class DamagedCheckpoint(ConfigError):
    """A checkpoint file that cannot be read back (not one written by another config)."""

    def __init__(self, path: str, error: BaseException) -> None:
        self.path = path
        reason = "not a complete zip archive" if "pickle" in str(error) else f"{type(error).__name__}: {error}"
        super().__init__(f"checkpoint {path} is damaged ({reason})")


class Restored(NamedTuple):
    """What `restore_latest` found: the newest intact checkpoint and the damaged ones skipped."""

    tree: Any
    record: dict
    path: str
    damaged: list[str]  # damaged checkpoints newer than `path` (moved aside when asked to)


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:09d}.npz")


def save_checkpoint(directory: str, step: int, tree: Any, record: Optional[dict] = None, keep: int = 3) -> str:
    """Writes `tree` (and a JSON `record`) as the checkpoint of `step`, atomically.

    Returns:
      The checkpoint's path.
    """
    os.makedirs(directory, exist_ok=True)
    leaves = [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(jax.device_get(tree))]
    arrays = {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}
    record = {**(record or {}), "step": int(step), "leaves": len(leaves)}
    arrays[_META_KEY] = np.frombuffer(dumps_json(record, indent=None).encode(), dtype=np.uint8)
    path = checkpoint_path(directory, step)
    save_npz_atomic(path, arrays)  # synced, renamed, and the folder synced after the rename
    prune_checkpoints(directory, keep)
    return path


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """`(step, path)` of every complete checkpoint, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def latest_checkpoint(directory: str) -> Optional[str]:
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1][1] if checkpoints else None


def prune_checkpoints(directory: str, keep: int) -> None:
    """Removes all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        os.unlink(path)


def read_record(path: str) -> dict:
    """The JSON record of a checkpoint (step, keys, fingerprint, ...).

    Raises:
      FileNotFoundError: if the file is gone (e.g. pruned by a run still training).
      DamagedCheckpoint: if it cannot be read.
    """
    try:
        with np.load(path) as data:
            record = json.loads(bytes(data[_META_KEY]).decode())
    except FileNotFoundError:
        raise
    except _READ_ERRORS as error:
        raise DamagedCheckpoint(path, error) from error
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise DamagedCheckpoint(path, ValueError("its record has no step"))
    return record


def load_checkpoint(path: str, template: Any) -> tuple[Any, dict]:
    """Restores a checkpoint into the structure of `template`.

    Raises:
      ConfigError: if the file is unreadable, or its arrays do not match the template
        (count, shape or dtype): it was written by a different config.
    """
    record = read_record(path)
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if record.get("leaves") != len(leaves):
        raise ConfigError(
            f"checkpoint {path} holds {record.get('leaves')} arrays but this config's meta-state has "
            f"{len(leaves)}: it was written by a different learner, module or model."
        )
    restored = []
    try:
        with np.load(path) as data:
            for i, leaf in enumerate(leaves):
                array = data[f"leaf_{i:05d}"]  # reads the whole member: the zip checks its CRC
                if array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
                    raise ConfigError(
                        f"checkpoint {path}: array {i} has shape {array.shape} and dtype {array.dtype}, but this "
                        f"config expects {np.shape(leaf)} and {np.asarray(leaf).dtype}; it was written by a different config."
                    )
                restored.append(array)
    except (FileNotFoundError, ConfigError):
        raise
    except _READ_ERRORS as error:
        raise DamagedCheckpoint(path, error) from error
    return jax.tree_util.tree_unflatten(treedef, restored), record


def restore_latest(
    directory: str, template: Any, *, fingerprints: tuple = (), set_aside: bool = False, attempts: int = 5
) -> Optional[Restored]:
    """Restores the newest intact checkpoint in `directory`, or returns None if it has none.

    Damaged checkpoints newer than it are reported on stderr and, with `set_aside` (the
    run's own writer, holding its lock), renamed to `<name>.damaged` so that the run goes
    on from the intact one; a reader (`metax eval` while the run trains) leaves them be.
    A file pruned between listing and loading is not an error: the folder is listed again.

    Raises:
      ConfigError: if a checkpoint was written under a fingerprint not in `fingerprints`
        (another config), or if every checkpoint is damaged (naming each).
    """
    damaged: list[DamagedCheckpoint] = []
    for _ in range(attempts):
        candidates = [path for _, path in reversed(list_checkpoints(directory))]
        candidates = [path for path in candidates if path not in {d.path for d in damaged}]
        if not candidates and not damaged:
            return None
        try:
            for path in candidates:
                try:
                    record = read_record(path)
                    if fingerprints and record.get("fingerprint") not in (None, *fingerprints):
                        raise ConfigError(f"{path} was written by a different configuration; resume it with the config it was started with.")
                    tree, record = load_checkpoint(path, template)
                except DamagedCheckpoint as error:
                    damaged.append(error)
                    continue
                return Restored(tree, record, path, [_report(d, set_aside, path) for d in damaged])
        except FileNotFoundError:
            continue  # pruned while we looked (a run still training): list again
        break
    if not damaged:
        return None
    # None intact: leave every file where it is (a resume must not restart from step 0).
    raise ConfigError(
        f"no intact checkpoint in {directory}: {'; '.join(str(d) for d in damaged)}; "
        "nothing was changed; start the run again in a new folder."
    )


def _report(error: DamagedCheckpoint, set_aside: bool, fallback: Optional[str]) -> str:
    """Says on stderr what happened to a damaged checkpoint; returns where it now lies."""
    where = error.path
    if set_aside:
        where = error.path + DAMAGED_SUFFIX
        os.replace(error.path, where)  # kept for inspection, out of the listing
    note = f"; moved aside to {where}" if set_aside else ""
    then = f"; using {fallback} instead" if fallback else ""
    print(f"metax: {error}{note}{then}.", file=sys.stderr)
    return where
