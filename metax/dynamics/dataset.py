"""The dataset of optimisation dynamics: one row per logged step, targets ahead, Parquet on disk.

A row holds what was measured at step t of a run (`loss`, `grad_norm`, `weight_norm`,
`update_ratio`, `lr`, the per-layer norms as lists, the architecture and optimiser codes)
and the targets a predictor learns: `next_loss` (the loss at t+1), `loss_ahead` (at t+k),
`final_val_acc` (the run's validation accuracy after its last epoch) and
`epochs_to_target` (the first epoch whose validation accuracy reached `target_accuracy`).
Targets a run does not reach (t+k past its end, a target never met) are NaN.

Rows are split into train and validation by run, never by row: every run lies wholly on
one side, and with `split_by="architecture"` every architecture does, so the validation
runs are of architectures the predictor never saw.
"""

import json
import os
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metax.dynamics.architectures import ACTIVATION_NAMES, KINDS, OPTIMIZER_NAMES
from metax.dynamics.sweep import RunLog
from metax.utils.io import atomic_write

SCHEMA_VERSION = 1
_F32, _I32, _I8 = pa.float32(), pa.int32(), pa.int8()
_LIST = pa.list_(pa.field("element", pa.float32()))  # Parquet's own name for list items: round-trips unchanged

FIELDS = [
    ("run_id", pa.string(), "the run: architecture-optimizer-rate-seed"),
    ("split", pa.string(), "'train' or 'val', one value per run"),
    ("step", _I32, "global step t (0-based)"),
    ("epoch", _I32, "epoch index (0-based)"),
    ("batch", _I32, "mini-batch index within the epoch"),
    ("progress", _F32, "epochs completed after step t"),
    ("loss", _F32, "mini-batch cross-entropy at step t (before the update)"),
    ("loss_delta", _F32, "loss_t - loss_{t-1} (NaN at t = 0)"),
    ("loss_ema", _F32, "exponential moving average of the loss, decay 0.9"),
    ("loss_ema_slow", _F32, "exponential moving average of the loss, decay 0.99"),
    ("train_acc", _F32, "mini-batch accuracy at step t"),
    ("acc_ema", _F32, "moving average of train_acc, decay 0.9"),
    ("val_acc", _F32, "validation accuracy after step t where measured, else NaN"),
    ("val_acc_last", _F32, "latest measured validation accuracy"),
    ("grad_norm", _F32, "||g_t||, all parameters"),
    ("weight_norm", _F32, "||W_t|| before the update"),
    ("update_norm", _F32, "||W_{t+1} - W_t||"),
    ("update_ratio", _F32, "update_norm / weight_norm"),
    ("grad_norm_layers", _LIST, "per-layer ||g_t||, layers in sorted module order"),
    ("weight_norm_layers", _LIST, "per-layer ||W_t||"),
    ("update_norm_layers", _LIST, "per-layer update norm"),
    ("update_ratio_layers", _LIST, "per-layer update / weight norm"),
    ("lr", _F32, "learning rate used at step t"),
    ("base_lr", _F32, "the run's initial learning rate"),
    ("seed", _I32, "initialisation / data-order seed"),
    ("optimizer", _I8, f"optimizer code: {dict(enumerate(OPTIMIZER_NAMES))}"),
    ("optimizer_name", pa.string(), "optimizer name"),
    ("depth", _I32, "hidden (MLP) or convolutional (conv) layers"),
    ("width", _I32, "units or channels per layer"),
    ("activation", _I8, f"activation code: {dict(enumerate(ACTIVATION_NAMES))}"),
    ("activation_name", pa.string(), "activation name"),
    ("kind", _I8, f"architecture kind code: {dict(enumerate(KINDS))}"),
    ("kind_name", pa.string(), "architecture kind"),
    ("next_loss", _F32, "target: loss at step t+1 (NaN at the last step)"),
    ("loss_ahead", _F32, "target: loss at step t+k (NaN past the run's end)"),
    ("final_val_acc", _F32, "target: validation accuracy after the run's last epoch"),
    ("epochs_to_target", _F32, "target: first epoch (1-based) with val accuracy >= target_accuracy, NaN if never"),
]


def dataset_schema(k: int, target_accuracy: float) -> pa.Schema:
    """The Parquet schema: column types, a description per column, and the settings (`k`,
    `target_accuracy`, the code tables) as schema metadata."""
    fields = [pa.field(name, dtype, metadata={"description": doc}) for name, dtype, doc in FIELDS]
    metadata = {
        "metax.dynamics.schema_version": str(SCHEMA_VERSION),
        "metax.dynamics.k": str(k),
        "metax.dynamics.target_accuracy": repr(float(target_accuracy)),
        "metax.dynamics.codes": json.dumps({"optimizer": OPTIMIZER_NAMES, "activation": ACTIVATION_NAMES, "kind": KINDS}),
    }
    return pa.schema(fields, metadata=metadata)


def assign_splits(runs: Sequence[RunLog], *, val_fraction: float = 0.25, split_by: str = "architecture", seed: int = 0) -> dict[str, str]:
    """Run id -> "train" / "val". Whole groups (one run, or every run of an architecture)
    go to one side; at least one group goes to each side."""
    if split_by not in ("run", "architecture"):
        raise ValueError(f"split_by must be 'run' or 'architecture', got {split_by!r}.")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    group_of = {run.run_id: (run.run_id if split_by == "run" else _arch_name(run.config)) for run in runs}
    groups = sorted(set(group_of.values()))
    if len(groups) < 2:
        raise ValueError(f"splitting by {split_by} needs at least two {split_by}s, got {groups}.")
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = min(max(1, int(round(val_fraction * len(groups)))), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    return {run_id: ("val" if group in val_groups else "train") for run_id, group in group_of.items()}


def _arch_name(config: dict) -> str:
    return f"{config['kind']}-d{config['depth']}-w{config['width']}-{config['activation']}"


def _shift(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(values.shape, np.nan, np.float32)
    if k < len(values):
        out[: len(values) - k] = values[k:]
    return out


def epochs_to_target(val_acc_epochs: np.ndarray, target_accuracy: float) -> float:
    """First epoch (1-based) whose validation accuracy is >= target_accuracy, NaN if none."""
    hits = np.flatnonzero(np.asarray(val_acc_epochs) >= target_accuracy)
    return float(hits[0] + 1) if hits.size else float("nan")


def build_dataset(
    runs: Sequence[RunLog],
    *,
    k: int = 10,
    target_accuracy: float = 0.9,
    val_fraction: float = 0.25,
    split_by: str = "architecture",
    seed: int = 0,
) -> pa.Table:
    """Rows of every step of every run, with targets k steps ahead, as a table with
    `dataset_schema(k, target_accuracy)`."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (steps ahead) must be a positive int, got {k!r}.")
    if not runs:
        raise ValueError("build_dataset needs at least one run.")
    splits = assign_splits(runs, val_fraction=val_fraction, split_by=split_by, seed=seed)
    columns: dict[str, list] = {name: [] for name, _, _ in FIELDS}
    for run in runs:
        logs, n = run.logs, len(run.logs["loss"])
        config = run.config
        per_run = {
            "run_id": [run.run_id] * n,
            "split": [splits[run.run_id]] * n,
            "base_lr": np.full(n, config["learning_rate"], np.float32),
            "seed": np.full(n, config["seed"], np.int32),
            "optimizer_name": [config["optimizer"]] * n,
            "activation_name": [config["activation"]] * n,
            "kind_name": [config["kind"]] * n,
            "next_loss": _shift(logs["loss"], 1),
            "loss_ahead": _shift(logs["loss"], k),
            "final_val_acc": np.full(n, run.val_acc_epochs[-1], np.float32),
            "epochs_to_target": np.full(n, epochs_to_target(run.val_acc_epochs, target_accuracy), np.float32),
        }
        for name, dtype, _ in FIELDS:
            if name in per_run:
                columns[name].append(per_run[name])
            elif dtype == _LIST:
                columns[name].append(list(np.asarray(logs[name], np.float32)))
            else:
                columns[name].append(np.asarray(logs[name]))
    schema = dataset_schema(k, target_accuracy)
    arrays = []
    for field in schema:
        parts = columns[field.name]
        if field.type == _LIST or field.type == pa.string():
            values = [item for part in parts for item in part]
            arrays.append(pa.array(values, type=field.type))
        else:
            arrays.append(pa.array(np.concatenate(parts).astype(field.type.to_pandas_dtype()), type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def write_dataset(table: pa.Table, path: str, *, overwrite: bool = False) -> None:
    """Writes the table as Parquet through a temporary file and a rename; refuses to replace
    an existing file unless `overwrite`."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path.")
    with atomic_write(path, "wb") as handle:
        pq.write_table(table, handle)


def read_dataset(path: str) -> pa.Table:
    """Reads a dataset file and checks its columns and types against the schema it declares."""
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    try:
        k = int(metadata[b"metax.dynamics.k"])
        target = float(metadata[b"metax.dynamics.target_accuracy"])
    except KeyError:
        raise ValueError(f"{path} is not a metax.dynamics dataset (no schema metadata).") from None
    expected = dataset_schema(k, target)
    if not table.schema.equals(expected, check_metadata=False):
        raise ValueError(f"{path}: columns differ from the dataset schema (version {SCHEMA_VERSION}); rebuild it with build_dataset.")
    return table


def dataset_settings(table: pa.Table) -> dict:
    """`k` and `target_accuracy` from a dataset table's schema metadata."""
    metadata = table.schema.metadata
    return {"k": int(metadata[b"metax.dynamics.k"]), "target_accuracy": float(metadata[b"metax.dynamics.target_accuracy"])}


def split_tables(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The (train, validation) rows of a dataset table."""
    split = table.column("split").to_numpy(zero_copy_only=False)
    return table.filter(pa.array(split == "train")), table.filter(pa.array(split == "val"))
