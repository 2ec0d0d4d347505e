"""Atomic checkpoints: one `.npz` per step, written beside its final name and renamed.

A checkpoint holds every leaf of a pytree (the meta-state: hparams, hstate and the outer
optimiser's state) plus a small JSON record (step, keys, config fingerprint). A reader
sees a complete checkpoint or none: the file is written under a temporary name, synced
to disk and renamed, and the folder is synced after the rename. The newest `keep`
checkpoints stay; older ones are removed only after a newer one is durable, and
temporary files left by a killed writer are cleaned up on the next start.

Restoring needs a template of the same structure (the runner rebuilds it from the
config): leaves are matched in order and checked for shape and dtype.
"""

import json
import os
import re
import zipfile
from typing import Any, Optional

import jax
import numpy as np

from metax.experiment.errors import ConfigError
from metax.utils.io import clean_temporary  # noqa: F401  (the runner cleans its checkpoint folder with it)
from metax.utils.io import dumps_json, save_npz_atomic

_NAME = re.compile(r"^step_(\d{9})\.npz$")
_META_KEY = "__checkpoint__"


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
    """The JSON record of a checkpoint (step, keys, fingerprint, ...)."""
    try:
        with np.load(path) as data:
            return json.loads(bytes(data[_META_KEY]).decode())
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ConfigError(f"checkpoint {path} cannot be read ({error}); it is not a metax checkpoint or is damaged.") from error


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
    with np.load(path) as data:
        for i, leaf in enumerate(leaves):
            array = data[f"leaf_{i:05d}"]
            if array.shape != np.shape(leaf) or array.dtype != np.asarray(leaf).dtype:
                raise ConfigError(
                    f"checkpoint {path}: array {i} has shape {array.shape} and dtype {array.dtype}, but this "
                    f"config expects {np.shape(leaf)} and {np.asarray(leaf).dtype}; it was written by a different config."
                )
            restored.append(array)
    return jax.tree_util.tree_unflatten(treedef, restored), record
