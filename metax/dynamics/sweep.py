"""Running a sweep: many small classifiers, their dynamics logged, one file per finished run.

Layout of a sweep folder:

    sweep.json        the spec and the training signature the runs were made under
    runs/<run>.npz    one finished run: every logged array `(steps, ...)` plus its config
    summary.json      final accuracy and loss of every run present (rewritten at the end)

A run's file is written to a temporary name and published with a hard link that fails
if the name exists, so a file under `runs/` is always complete and is never replaced.
Resuming skips every run whose file exists and trains the rest.
"""

import dataclasses
import glob
import json
import os
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from metax.dynamics.data import ClassificationData, load_classification_data
from metax.dynamics.spec import RunConfig, SpecError, SweepSpec
from metax.dynamics.training import steps_per_epoch, train_runs
from metax.utils.io import save_npz_atomic, write_json_atomic

SPEC_FILE = "sweep.json"
SUMMARY_FILE = "summary.json"
RUNS_DIR = "runs"


class SweepResult(NamedTuple):
    """What `run_sweep` did: the run ids it trained now and those it found finished.

    Example:
      >>> from metax.dynamics import SweepResult
      >>> result = SweepResult("sweeps/digits", trained=("mlp-d1-w8-relu-sgd-lr0.1-s1",),
      ...                      skipped=("mlp-d1-w8-relu-sgd-lr0.1-s0",), seconds=12.5)
      >>> len(result.trained) + len(result.skipped)  # every run of the spec
      2
    """

    out_dir: str
    trained: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float


class RunLog(NamedTuple):
    """One finished run read back: its config (a dict) and logged arrays (`(steps, ...)`).

    Example:
      >>> from metax.dynamics import RunLog
      >>> run = RunLog("mlp-d1-w8-relu-sgd-lr0.1-s0", {"kind": "mlp", "depth": 1}, {"loss": np.array([2.3, 2.0, 1.8])},
      ...              val_acc_epochs=np.array([0.6]), test_acc_epochs=np.array([0.58]), layer_names=("linear_0", "linear_1"))
      >>> run.logs["loss"].shape, float(run.val_acc_epochs[-1])
      ((3,), 0.6)
    """

    run_id: str
    config: dict
    logs: dict
    val_acc_epochs: np.ndarray
    test_acc_epochs: np.ndarray
    layer_names: tuple


def run_path(out_dir: str, run_id: str) -> str:
    return os.path.join(out_dir, RUNS_DIR, f"{run_id}.npz")


def load_sweep_data(spec: SweepSpec) -> ClassificationData:
    return load_classification_data(
        spec.dataset,
        mnist_path=spec.mnist_path,
        val_fraction=spec.val_fraction,
        test_fraction=spec.test_fraction,
        max_train=spec.max_train,
        seed=spec.data_seed,
    )


def _prepare_folder(spec: SweepSpec, out_dir: str, resume: bool) -> None:
    spec_path = os.path.join(out_dir, SPEC_FILE)
    existing = glob.glob(os.path.join(out_dir, RUNS_DIR, "*.npz"))
    if not resume and (os.path.exists(spec_path) or existing):
        raise FileExistsError(
            f"{out_dir} already holds a sweep ({len(existing)} finished runs); pass resume=True "
            "(`--resume`) to continue it, or choose another output folder. Nothing was changed."
        )
    if os.path.exists(spec_path):
        with open(spec_path) as handle:
            stored = json.load(handle).get("signature", {})
        wanted = json.loads(json.dumps(spec.training_signature()))
        differing = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        if differing:
            raise SpecError(
                f"{spec_path} was written with different training settings ({', '.join(f'{k}: {stored.get(k)!r} -> {wanted.get(k)!r}' for k in differing)}); "
                "its runs would not be comparable. Resume with the original settings or choose another output folder."
            )
    os.makedirs(os.path.join(out_dir, RUNS_DIR), exist_ok=True)
    for debris in glob.glob(os.path.join(out_dir, RUNS_DIR, "*.tmp*")):
        os.unlink(debris)  # a write interrupted before its rename (this version's names and older ones): never a result
    write_json_atomic(spec_path, {"spec": spec.to_dict(), "signature": spec.training_signature()})


def _write_run(out_dir: str, run: RunConfig, config: dict, arrays: dict) -> None:
    """Writes one run's npz under a temporary name, then publishes it without overwriting."""
    final = run_path(out_dir, run.run_id)
    try:
        save_npz_atomic(final, {"config": np.asarray(json.dumps(config)), **arrays}, overwrite=False)
    except FileExistsError:
        raise FileExistsError(f"{final} appeared while this sweep ran; it was left as it was.") from None


def load_run(path: str) -> RunLog:
    """Reads one run file written by `run_sweep`.

    Example:
      A file in `run_sweep`'s format (the config as JSON, each log as `log_<name>`):

      >>> import json, os, tempfile
      >>> from metax.dynamics import load_run
      >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
      >>> config = {"run_id": "mlp-d1-w8-relu-sgd-lr0.1-s0", "layer_names": ["linear_0", "linear_1"]}
      >>> np.savez(path, config=json.dumps(config), log_loss=np.array([2.3, 2.0, 1.8]), log_lr=np.full(3, 0.1),
      ...          val_acc_epochs=np.array([0.6]), test_acc_epochs=np.array([0.58]))
      >>> run = load_run(path)
      >>> run.run_id, sorted(run.logs), run.layer_names
      ('mlp-d1-w8-relu-sgd-lr0.1-s0', ['loss', 'lr'], ('linear_0', 'linear_1'))
    """
    with np.load(path) as data:
        config = json.loads(str(data["config"]))
        logs = {name[4:]: data[name] for name in data.files if name.startswith("log_")}
        return RunLog(config["run_id"], config, logs, data["val_acc_epochs"], data["test_acc_epochs"], tuple(config["layer_names"]))


def load_sweep(out_dir: str) -> list[RunLog]:
    """Every finished run in a sweep folder, sorted by run id.

    Example:
      >>> import json, os, tempfile
      >>> from metax.dynamics import load_sweep
      >>> out_dir = tempfile.mkdtemp()
      >>> os.makedirs(os.path.join(out_dir, "runs"))
      >>> for seed in (1, 0):
      ...     config = {"run_id": f"mlp-d1-w8-relu-sgd-lr0.1-s{seed}", "layer_names": ["linear_0", "linear_1"]}
      ...     np.savez(os.path.join(out_dir, "runs", config["run_id"] + ".npz"), config=json.dumps(config),
      ...              log_loss=np.array([2.3, 2.0]), val_acc_epochs=np.array([0.6]), test_acc_epochs=np.array([0.6]))
      >>> [run.run_id for run in load_sweep(out_dir)]
      ['mlp-d1-w8-relu-sgd-lr0.1-s0', 'mlp-d1-w8-relu-sgd-lr0.1-s1']
      >>> load_sweep(tempfile.mkdtemp())
      Traceback (most recent call last):
        ...
      FileNotFoundError: no finished runs in ...; run the sweep first.
    """
    paths = sorted(glob.glob(os.path.join(out_dir, RUNS_DIR, "*.npz")))
    if not paths:
        raise FileNotFoundError(f"no finished runs in {os.path.join(out_dir, RUNS_DIR)}; run the sweep first.")
    return [load_run(path) for path in paths]


def run_sweep(
    spec: SweepSpec, out_dir: str, *, resume: bool = False, progress: bool = True, on_epoch: Optional[Callable[[int], None]] = None
) -> SweepResult:
    """Trains every run of `spec` that `out_dir` does not already hold and writes its logs.

    Runs sharing an architecture and optimiser train in parallel under `jax.vmap`; a tqdm
    bar counts finished runs and estimates the time left. Existing results are never
    overwritten: without `resume` a folder that already holds a sweep is an error; with it,
    finished runs are skipped (and a changed training signature is an error).

    `on_epoch(epochs_done)` is called between compiled epochs (the `metax` command stops
    there on a signal: an exception it raises leaves every finished run's file in place).

    Returns:
      a `SweepResult` naming the runs trained by this call and the runs skipped.

    Example:
      A real sweep trains for seconds to hours; its data is read first, so a bad data path
      fails before anything is written:

      >>> import os, tempfile
      >>> from metax.dynamics import SweepSpec, run_sweep
      >>> spec = SweepSpec.from_dict({
      ...     "architectures": [{"kind": "mlp", "depth": 1, "width": 8, "activation": "relu"}],
      ...     "optimizers": ["sgd"], "learning_rates": [0.1], "seeds": [0, 1], "epochs": 1,
      ...     "dataset": "mnist", "mnist_path": os.path.join(tempfile.mkdtemp(), "no-mnist-here"),
      ... })
      >>> out_dir = os.path.join(tempfile.mkdtemp(), "sweep")
      >>> run_sweep(spec, out_dir, progress=False)
      Traceback (most recent call last):
        ...
      FileNotFoundError: ...
      >>> os.path.exists(out_dir)
      False
    """
    from tqdm.auto import tqdm

    start = time.time()
    data = load_sweep_data(spec)  # bad data paths fail before anything is written
    steps = steps_per_epoch(data, spec.batch_size)
    _prepare_folder(spec, out_dir, resume)
    runs = spec.runs()
    todo = [run for run in runs if not os.path.exists(run_path(out_dir, run.run_id))]
    skipped = tuple(run.run_id for run in runs if run not in todo)
    groups: dict[tuple, list[RunConfig]] = {}
    for run in todo:
        groups.setdefault((run.arch, run.optimizer), []).append(run)
    trained = []
    with tqdm(total=len(runs), initial=len(skipped), unit="run", desc="sweep", disable=not progress) as bar:
        for (arch, optimizer), members in groups.items():
            bar.set_postfix_str(f"{arch.name} {optimizer} x{len(members)}")
            result = train_runs(
                arch,
                optimizer,
                [run.learning_rate for run in members],
                [run.seed for run in members],
                data,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                val_every=spec.val_every,
                on_epoch=on_epoch,
            )
            for index, run in enumerate(members):
                config = {
                    "run_id": run.run_id,
                    **dataclasses.asdict(run.arch),
                    "optimizer": run.optimizer,
                    "learning_rate": run.learning_rate,
                    "seed": run.seed,
                    "steps_per_epoch": steps,
                    "layer_names": list(result.layer_names),
                    "signature": spec.training_signature(),
                }
                arrays = {f"log_{name}": values[index] for name, values in result.logs.items()}
                arrays["val_acc_epochs"] = result.val_acc_epochs[index]
                arrays["test_acc_epochs"] = result.test_acc_epochs[index]
                _write_run(out_dir, run, config, arrays)
                trained.append(run.run_id)
            bar.update(len(members))
    _write_summary(out_dir)
    return SweepResult(out_dir, tuple(trained), skipped, time.time() - start)


def _write_summary(out_dir: str) -> None:
    rows = []
    for run in load_sweep(out_dir):
        config = {k: v for k, v in run.config.items() if k not in ("layer_names", "signature")}
        rows.append(
            {
                **config,
                "final_val_acc": float(run.val_acc_epochs[-1]),
                "final_test_acc": float(run.test_acc_epochs[-1]),
                "final_loss_ema": float(run.logs["loss_ema"][-1]),
            }
        )
    write_json_atomic(os.path.join(out_dir, SUMMARY_FILE), {"runs": rows})


def sweep_summary(out_dir: str) -> Optional[dict]:
    """The summary.json of a sweep folder, or None if there is none yet."""
    path = os.path.join(out_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)
