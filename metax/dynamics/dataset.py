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
    `target_accuracy`, the code tables) as schema metadata.

    Example:
      >>> from metax.dynamics import dataset_schema
      >>> schema = dataset_schema(k=10, target_accuracy=0.9)
      >>> schema.field("loss_ahead").type, schema.field("loss_ahead").metadata[b"description"]
      (DataType(float), b"target: loss at step t+k (NaN past the run's end)")
      >>> schema.metadata[b"metax.dynamics.k"], schema.metadata[b"metax.dynamics.target_accuracy"]
      (b'10', b'0.9')
    """
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
    go to one side; at least one group goes to each side.

    Example:
      >>> from metax.dynamics import RunLog, assign_splits
      >>> def run(width, seed):
      ...     config = {"kind": "mlp", "depth": 1, "width": width, "activation": "relu"}
      ...     return RunLog(f"mlp-d1-w{width}-relu-sgd-lr0.1-s{seed}", config, {}, np.zeros(1), np.zeros(1), ())
      >>> runs = [run(width, seed) for width in (8, 16) for seed in (0, 1)]
      >>> splits = assign_splits(runs, val_fraction=0.5)  # by architecture: both seeds on one side
      >>> splits["mlp-d1-w8-relu-sgd-lr0.1-s0"] == splits["mlp-d1-w8-relu-sgd-lr0.1-s1"]
      True
      >>> sorted(splits.values())
      ['train', 'train', 'val', 'val']
    """
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
    """First epoch (1-based) whose validation accuracy is >= target_accuracy, NaN if none.

    Example:
      >>> from metax.dynamics import epochs_to_target
      >>> epochs_to_target(np.array([0.5, 0.85, 0.92, 0.95]), 0.9)
      3.0
      >>> epochs_to_target(np.array([0.5, 0.85]), 0.9)
      nan
    """
    hits = np.flatnonzero(np.asarray(val_acc_epochs) >= target_accuracy)
    return float(hits[0] + 1) if hits.size else float("nan")


def example_run(width: int, steps: int = 6) -> RunLog:
    """A made-up MLP run's logs, as `train_runs` writes them, for examples and tests: every
    logged feature 1 except a loss falling on a line from 2 to 1 over `steps` steps (two
    epochs), and validation accuracies 0.5 then 0.95.

    Example:
      >>> from metax.dynamics.dataset import example_run
      >>> run = example_run(8)
      >>> run.run_id, np.round(run.logs["loss"], 2).tolist(), run.val_acc_epochs.tolist()
      ('mlp-d1-w8-relu-sgd-lr0.1-s0', [2.0, 1.8, 1.6, 1.4, 1.2, 1.0], [0.5, 0.95])
    """
    logs = {name: np.ones((steps, 2) if name.endswith("_layers") else steps, np.float32) for name, _, _ in FIELDS}
    logs.update(loss=np.linspace(2.0, 1.0, steps, dtype=np.float32), epoch=np.repeat([0, 1], steps // 2),
                kind=np.zeros(steps), activation=np.zeros(steps), optimizer=np.zeros(steps), width=np.full(steps, width))
    logs["loss_ema"] = logs["loss_ema_slow"] = logs["loss"]
    config = {"run_id": f"mlp-d1-w{width}-relu-sgd-lr0.1-s0", "kind": "mlp", "depth": 1, "width": width,
              "activation": "relu", "optimizer": "sgd", "learning_rate": 0.1, "seed": 0}
    return RunLog(config["run_id"], config, logs, np.array([0.5, 0.95]), np.array([0.5, 0.9]), ("a", "b"))


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
    `dataset_schema(k, target_accuracy)`.

    Example:
      >>> from metax.dynamics import build_dataset
      >>> from metax.dynamics.dataset import example_run  # a made-up run: a loss falling on a line
      >>> table = build_dataset([example_run(8), example_run(16)], k=2, target_accuracy=0.9, val_fraction=0.5)
      >>> table.num_rows, sorted(set(table.column("split").to_pylist()))  # 2 runs x 6 steps, one run per side
      (12, ['train', 'val'])
      >>> table.column("loss").to_pylist()[:6]
      [2.0, 1.8, 1.6, 1.4, 1.2, 1.0]
      >>> table.column("loss_ahead").to_pylist()[:6]  # k = 2 steps ahead, NaN past the run's end
      [1.6, 1.4, 1.2, 1.0, nan, nan]
      >>> table.column("epochs_to_target")[0].as_py(), table.column("final_val_acc")[0].as_py()
      (2.0, 0.95)
    """
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
    an existing file unless `overwrite`.

    Example:
      >>> import os, tempfile
      >>> from metax.dynamics import dataset_schema, read_dataset, write_dataset
      >>> path = os.path.join(tempfile.mkdtemp(), "dynamics.parquet")
      >>> write_dataset(dataset_schema(k=10, target_accuracy=0.9).empty_table(), path)  # no rows, same columns
      >>> read_dataset(path).num_columns
      37
      >>> write_dataset(dataset_schema(k=10, target_accuracy=0.9).empty_table(), path)
      Traceback (most recent call last):
        ...
      FileExistsError: ... exists; pass overwrite=True or choose another path.
    """
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True or choose another path.")
    with atomic_write(path, "wb") as handle:
        pq.write_table(table, handle)


def read_dataset(path: str) -> pa.Table:
    """Reads a dataset file and checks its columns and types against the schema it declares.

    Example:
      >>> import os, tempfile
      >>> import pyarrow as pa, pyarrow.parquet as pq
      >>> from metax.dynamics import dataset_schema, dataset_settings, read_dataset, write_dataset
      >>> folder = tempfile.mkdtemp()
      >>> write_dataset(dataset_schema(k=5, target_accuracy=0.8).empty_table(), os.path.join(folder, "ok.parquet"))
      >>> dataset_settings(read_dataset(os.path.join(folder, "ok.parquet")))
      {'k': 5, 'target_accuracy': 0.8}
      >>> pq.write_table(pa.table({"loss": [1.0]}), os.path.join(folder, "other.parquet"))
      >>> read_dataset(os.path.join(folder, "other.parquet"))
      Traceback (most recent call last):
        ...
      ValueError: ...other.parquet is not a metax.dynamics dataset (no schema metadata).
    """
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
    """`k` and `target_accuracy` from a dataset table's schema metadata.

    Example:
      >>> from metax.dynamics import dataset_schema, dataset_settings
      >>> dataset_settings(dataset_schema(k=10, target_accuracy=0.9).empty_table())
      {'k': 10, 'target_accuracy': 0.9}
    """
    metadata = table.schema.metadata
    return {"k": int(metadata[b"metax.dynamics.k"]), "target_accuracy": float(metadata[b"metax.dynamics.target_accuracy"])}


def split_tables(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The (train, validation) rows of a dataset table.

    Example:
      >>> import pyarrow as pa
      >>> from metax.dynamics import split_tables
      >>> table = pa.table({"run_id": ["a", "a", "b"], "split": ["train", "train", "val"], "loss": [2.0, 1.5, 2.2]})
      >>> train, val = split_tables(table)
      >>> train.column("loss").to_pylist(), val.column("run_id").to_pylist()
      ([2.0, 1.5], ['b'])
    """
    split = table.column("split").to_numpy(zero_copy_only=False)
    return table.filter(pa.array(split == "train")), table.filter(pa.array(split == "val"))
