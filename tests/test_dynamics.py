"""metax.dynamics: logged dynamics against a hand-written loop, sweeps that resume without
retraining or overwriting, the Parquet dataset, the predictor against naive baselines, the
controller's bounds, and clear errors on bad input."""

import gzip
import importlib.util
import json
import os
import pathlib
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

import metax.dynamics as dyn
from metax.dynamics import sweep as sweep_module
from metax.experiment import write_json_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]

SMALL_SPEC = {
    "architectures": [{"kind": "mlp", "depth": 1, "width": [8, 16], "activation": "tanh"}],
    "optimizers": ["adam"],
    "learning_rates": [0.003, 0.03],
    "seeds": [0, 1],
    "epochs": 3,
    "batch_size": 32,
    "val_every": 5,
}


class CountingTrainer:
    """Wraps `train_runs` to count the runs it trains; optionally interrupts a call."""

    def __init__(self, interrupt_on_call=None):
        self.runs, self.calls, self.interrupt_on_call = 0, 0, interrupt_on_call

    def __call__(self, arch, optimizer, learning_rates, seeds, data, **kwargs):
        self.calls += 1
        if self.calls == self.interrupt_on_call:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during this group
        self.runs += len(seeds)
        return dyn.train_runs(arch, optimizer, learning_rates, seeds, data, **kwargs)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder, "runs").glob("*"))}


def build_small_sweep(out):
    """A 2-architecture x 2-rate x 2-seed sweep, interrupted after its first group, then resumed."""
    spec = dyn.SweepSpec.from_dict(SMALL_SPEC)
    patch = pytest.MonkeyPatch()
    interrupted = CountingTrainer(interrupt_on_call=2)
    patch.setattr(sweep_module, "train_runs", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            dyn.run_sweep(spec, str(out), progress=False)
        after_interrupt = snapshot(out)
        resumed = CountingTrainer()
        patch.setattr(sweep_module, "train_runs", resumed)
        result = dyn.run_sweep(spec, str(out), resume=True, progress=False)
    finally:
        patch.undo()
    return {
        "after_interrupt": {name: content.hex() for name, content in after_interrupt.items()},
        "resumed_runs": resumed.runs,
        "trained": list(result.trained),
        "skipped": list(result.skipped),
    }


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory, request):
    """The small sweep, built once per test session even under pytest-xdist: the first
    worker to take the lock builds it in the session's shared temp folder, others wait."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if hasattr(request.config, "workerinput") else base
    out, info, lock = root / "dynamics_sweep", root / "dynamics_sweep.json", root / "dynamics_sweep.lock"
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL))
        try:
            record = build_small_sweep(out)
        except BaseException as error:
            record = {"error": repr(error)}
            raise
        finally:
            write_json_atomic(str(info), record)
    except FileExistsError:
        deadline = time.time() + 600
        while not info.exists():
            assert time.time() < deadline, "timed out waiting for another worker's sweep"
            time.sleep(0.2)
        record = json.loads(info.read_text())
    assert "error" not in record, record
    record["after_interrupt"] = {name: bytes.fromhex(content) for name, content in record["after_interrupt"].items()}
    return {"out": out, "spec": dyn.SweepSpec.from_dict(SMALL_SPEC), **record}


# --- logging inside the compiled step ---------------------------------------------------


def test_logged_norms_equal_a_hand_written_loop():
    """Full-batch momentum SGD on a 1-hidden-layer tanh MLP: every logged norm, ratio, loss
    and accuracy against numpy / plain-jax recomputation of the same 3 steps."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(24, 4, 4, 1)).astype(np.float32)
    labels = rng.integers(0, 3, size=24).astype(np.int32)
    data = dyn.ClassificationData(images[:16], labels[:16], images[16:], labels[16:], images[16:], labels[16:], 3)
    arch = dyn.Architecture("mlp", 1, 5, "tanh")
    lr, epochs = 0.3, 3
    result = dyn.train_runs(arch, "momentum", [lr], [7], data, epochs=epochs, batch_size=16, val_every=100)
    logs = {name: values[0] for name, values in result.logs.items()}

    params = dyn.training.init_params(arch, 3, images[:1], 7)
    names = sorted(params)  # hidden layer, readout
    (w0, b0), (w1, b1) = [(np.asarray(params[n]["w"], np.float64), np.asarray(params[n]["b"], np.float64)) for n in names]

    def forward(p, x):
        hidden = jnp.tanh(x.reshape(len(x), -1) @ p[0] + p[1])
        return hidden @ p[2] + p[3]

    def loss(p, x, y):
        logits = forward(p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), y])

    theta = [w0, b0, w1, b1]
    velocity = [np.zeros_like(t) for t in theta]
    x, y = data.train_x.astype(np.float64), data.train_y
    norm = lambda arrays: np.sqrt(sum(np.sum(a**2) for a in arrays))
    previous = None
    for t in range(epochs):
        value = float(loss([jnp.asarray(a) for a in theta], x, y))
        grads = [np.asarray(g, np.float64) for g in jax.grad(loss)([jnp.asarray(a) for a in theta], x, y)]
        velocity = [g + 0.9 * v for g, v in zip(grads, velocity)]  # heavy-ball trace, then -lr
        updates = [-lr * v for v in velocity]
        layers = lambda arrays: np.array([norm(arrays[:2]), norm(arrays[2:])])
        np.testing.assert_allclose(logs["loss"][t], value, rtol=1e-5)
        np.testing.assert_allclose(logs["grad_norm_layers"][t], layers(grads), rtol=1e-4)
        np.testing.assert_allclose(logs["grad_norm"][t], norm(grads), rtol=1e-4)
        np.testing.assert_allclose(logs["weight_norm_layers"][t], layers(theta), rtol=1e-5)
        np.testing.assert_allclose(logs["weight_norm"][t], norm(theta), rtol=1e-5)
        np.testing.assert_allclose(logs["update_norm_layers"][t], layers(updates), rtol=1e-4)
        np.testing.assert_allclose(logs["update_ratio"][t], norm(updates) / norm(theta), rtol=1e-4)
        np.testing.assert_allclose(logs["update_ratio_layers"][t], layers(updates) / layers(theta), rtol=1e-4)
        if previous is not None:
            np.testing.assert_allclose(logs["loss_delta"][t], value - previous, rtol=1e-4, atol=1e-6)
        previous = value
        theta = [a + u for a, u in zip(theta, updates)]
        logits = np.asarray(forward([jnp.asarray(a) for a in theta], data.val_x.astype(np.float64)))
        np.testing.assert_allclose(logs["val_acc"][t], np.mean(logits.argmax(-1) == data.val_y), atol=1e-6)
    assert np.isnan(logs["loss_delta"][0])
    np.testing.assert_allclose(logs["lr"], lr)
    np.testing.assert_array_equal(logs["epoch"], np.arange(epochs))
    assert (logs["depth"][0], logs["width"][0], logs["optimizer"][0]) == (1, 5, dyn.OPTIMIZER_NAMES.index("momentum"))
    np.testing.assert_allclose(result.val_acc_epochs[0], logs["val_acc"])


# --- sweeps: resume, never overwrite ---------------------------------------------------


def test_interrupted_sweep_resumes_without_retraining(small_sweep):
    total = len(small_sweep["spec"].runs())
    first_group = len(small_sweep["after_interrupt"])
    assert first_group == 4  # one architecture's 2 rates x 2 seeds were written before Ctrl-C
    assert not [n for n in small_sweep["after_interrupt"] if not n.endswith(".npz")]  # no debris
    assert small_sweep["resumed_runs"] == total - first_group
    assert len(small_sweep["trained"]) == total - first_group and len(small_sweep["skipped"]) == first_group
    assert not set(small_sweep["trained"]) & {name[: -len(".npz")] for name in small_sweep["after_interrupt"]}
    # The runs finished before the interruption are byte for byte the same files.
    now = snapshot(small_sweep["out"])
    assert all(now[name] == content for name, content in small_sweep["after_interrupt"].items())
    summary = json.loads((small_sweep["out"] / "summary.json").read_text())
    assert len(summary["runs"]) == total


def test_a_sweep_never_overwrites_results(small_sweep, monkeypatch):
    out, spec = small_sweep["out"], small_sweep["spec"]
    before = snapshot(out)
    counter = CountingTrainer()
    monkeypatch.setattr(sweep_module, "train_runs", counter)
    with pytest.raises(FileExistsError, match="resume"):
        dyn.run_sweep(spec, str(out), progress=False)
    changed = dyn.SweepSpec.from_dict({**SMALL_SPEC, "epochs": 4})
    with pytest.raises(dyn.SpecError, match="epochs"):
        dyn.run_sweep(changed, str(out), resume=True, progress=False)
    assert dyn.run_sweep(spec, str(out), resume=True, progress=False).trained == ()
    assert counter.runs == 0 and snapshot(out) == before
    run = spec.runs()[0]
    with pytest.raises(FileExistsError):
        sweep_module._write_run(str(out), run, {"run_id": run.run_id}, {"x": np.zeros(2)})
    assert snapshot(out) == before


# --- dataset ---------------------------------------------------------------------------


@pytest.mark.parametrize("split_by", ["run", "architecture"])
def test_dataset_splits_by_run_and_round_trips(small_sweep, tmp_path, split_by):
    runs = dyn.load_sweep(str(small_sweep["out"]))
    table = dyn.build_dataset(runs, k=4, target_accuracy=0.5, split_by=split_by, val_fraction=0.5)
    train, val = dyn.split_tables(table)
    train_ids, val_ids = set(train.column("run_id").to_pylist()), set(val.column("run_id").to_pylist())
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == {r.run_id for r in runs}
    if split_by == "architecture":
        arch = lambda ids: {i.split("-adam")[0] for i in ids}
        assert not arch(train_ids) & arch(val_ids)
    # Targets are the run's own later values.
    run = runs[0]
    rows = table.filter(np.asarray(table.column("run_id").to_pylist()) == run.run_id)
    loss = rows.column("loss").to_numpy()
    np.testing.assert_array_equal(rows.column("next_loss").to_numpy()[:-1], loss[1:])
    np.testing.assert_array_equal(rows.column("loss_ahead").to_numpy()[:-4], loss[4:])
    assert np.all(np.isnan(rows.column("loss_ahead").to_numpy()[-4:]))
    first = np.flatnonzero(run.val_acc_epochs >= 0.5)
    expected = first[0] + 1.0 if first.size else np.nan
    np.testing.assert_array_equal(rows.column("epochs_to_target").to_numpy(), np.full(rows.num_rows, expected, np.float32))
    np.testing.assert_allclose(np.array(rows.column("grad_norm_layers").to_pylist()), run.logs["grad_norm_layers"])

    path = tmp_path / "dynamics.parquet"
    dyn.write_dataset(table, str(path))
    back = dyn.read_dataset(str(path))
    assert back.schema.equals(dyn.dataset_schema(4, 0.5), check_metadata=True)
    assert pq.read_schema(path).field("grad_norm").metadata[b"description"]
    for name in table.column_names:
        a, b = table.column(name).to_pylist(), back.column(name).to_pylist()
        assert all(x == y or (x != x and y != y) for x, y in zip(a, b)), name
    with pytest.raises(FileExistsError):
        dyn.write_dataset(table, str(path))


# --- predictor and controller ----------------------------------------------------------


@pytest.fixture(scope="module")
def fitted(small_sweep):
    table = dyn.build_dataset(dyn.load_sweep(str(small_sweep["out"])), k=5, split_by="run", val_fraction=0.25, seed=1)
    train, val = dyn.split_tables(table)
    config, predictor = dyn.fit_predictor(train, epochs=small_sweep["spec"].epochs, steps=600, hidden=(32, 32))
    return table, val, config, predictor


def test_linear_extrapolation_matches_polyfit():
    series = np.array([5.0, 4.0, 3.5, 3.4, 2.0, 1.9, 1.0])
    out = dyn.linear_extrapolation(series, ahead=2, window=3)
    assert np.all(np.isnan(out[:2]))
    for t in range(2, len(series)):
        slope, intercept = np.polyfit(np.arange(3), series[t - 2 : t + 1], 1)
        np.testing.assert_allclose(out[t], intercept + slope * 4, rtol=1e-10)


def test_predictor_beats_the_last_value_on_held_out_runs(fitted):
    _, val, config, predictor = fitted
    evaluation = dyn.evaluate_predictor(config, predictor, val)
    loss = evaluation["loss_ahead"]
    assert evaluation["runs"] == 2 and loss["predictor"]["rows"] > 100
    assert loss["predictor"]["mae"] < loss["last_value"]["mae"], loss
    assert loss["predictor"]["mae"] < loss["linear_extrapolation"]["mae"], loss


def test_controller_keeps_the_rate_within_bounds_and_stops_at_the_target():
    # An untrained predictor: whatever it prefers, the rate must stay inside the bounds.
    config = dyn.PredictorConfig(k=5, target_accuracy=0.9, epochs=3, hidden=(8,))
    width = len(dyn.FEATURE_NAMES)
    params = dyn.predictor._network(config).init(jax.random.PRNGKey(3), jnp.zeros((1, width)))
    predictor = dyn.Predictor(params, jnp.zeros(width), jnp.ones(width), jnp.zeros(3), jnp.ones(3))
    data = sweep_module.load_sweep_data(dyn.SweepSpec.from_dict(SMALL_SPEC))
    # Extreme multipliers: every decision lands on a bound unless the clip is wrong.
    controller = dyn.LRController(config, 1e-3, 2e-2, multipliers=(0.01, 100.0), interval=7, warmup=7)
    arch = dyn.Architecture("mlp", 1, 12, "tanh")
    result = dyn.train_with_controller(arch, "adam", 3e-3, [0, 1], data, controller, predictor, epochs=2, batch_size=32, val_every=5)
    for lr in result.logs["lr"]:
        assert np.all(lr >= 1e-3 * (1 - 1e-6)) and np.all(lr <= 2e-2 * (1 + 1e-6))
        changed = np.flatnonzero(np.diff(lr) != 0)  # lr[t+1] != lr[t]: a decision after step t
        assert changed.size > 0 and np.all((changed + 1) % 7 == 0), changed
        assert np.all(np.isclose(lr[7:], 1e-3) | np.isclose(lr[7:], 2e-2))
    # Early stop: a target every run meets after one epoch ends training there.
    stopped = dyn.train_with_controller(
        arch, "adam", 3e-3, [0, 1], data, controller, predictor, epochs=3, batch_size=32, val_every=5, target_accuracy=0.0
    )
    np.testing.assert_array_equal(stopped.epochs_to_target, [1, 1])
    assert stopped.logs["lr"].shape[1] == data.train_x.shape[0] // 32
    with pytest.raises(ValueError, match="bounds"):
        dyn.train_with_controller(arch, "adam", 0.5, [0, 1], data, controller, predictor, epochs=1, batch_size=32, val_every=5)


# --- bad input -------------------------------------------------------------------------


def write_idx(path, array, code=0x08, truncate=0):
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = (header + array.astype(">u1").tobytes())[: -truncate or None]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(payload)


def mnist_folder(root, n_train=6, n_labels=None, truncate=0, drop=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte.gz": (rng.integers(0, 256, (n_train, 28, 28)), truncate),
        "train-labels-idx1-ubyte.gz": (rng.integers(0, 10, (n_labels or n_train,)), 0),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (3, 28, 28)), 0),
        "t10k-labels-idx1-ubyte": (rng.integers(0, 10, (3,)), 0),
    }
    for name, (array, cut) in files.items():
        if name != drop:
            write_idx(root / name, array, truncate=cut)
    return str(root)


def test_mnist_idx_files_feed_a_sweep(tmp_path):
    data = dyn.load_classification_data("mnist", mnist_path=mnist_folder(tmp_path / "mnist", n_train=10), val_fraction=0.2)
    assert data.train_x.shape == (8, 28, 28, 1) and data.val_x.shape == (2, 28, 28, 1) and data.test_x.shape == (3, 28, 28, 1)
    assert 0.0 <= data.train_x.min() and data.train_x.max() <= 1.0


def _spec(**changes):
    return lambda tmp: dyn.SweepSpec.from_dict({**SMALL_SPEC, **changes})


def _mnist_sweep(**folder_kwargs):
    def make(tmp):
        folder = mnist_folder(tmp / "mnist", **folder_kwargs)
        spec = dyn.SweepSpec.from_dict({**SMALL_SPEC, "dataset": "mnist", "mnist_path": folder})
        return dyn.run_sweep(spec, str(tmp / "out"), progress=False)

    return make


BAD_INPUT = [
    ("missing IDX file", _mnist_sweep(drop="train-labels-idx1-ubyte.gz"), FileNotFoundError, "train-labels"),
    ("truncated IDX file", _mnist_sweep(truncate=100), ValueError, "truncated"),
    ("images and labels of different counts", _mnist_sweep(n_train=6, n_labels=5), ValueError, "labels"),
    ("empty architecture grid", _spec(architectures=[]), dyn.SpecError, "architectures"),
    ("empty seed list", _spec(seeds=[]), dyn.SpecError, "seeds"),
    ("empty rates for an optimizer", _spec(learning_rates={"adam": []}), dyn.SpecError, "adam"),
    ("empty axis inside a grid", _spec(architectures=[{"kind": "mlp", "depth": [], "width": 8, "activation": "relu"}]), dyn.SpecError, "depth"),
    ("misspelt key", _spec(epoch=3), dyn.SpecError, "did you mean 'epochs'"),
    ("misspelt optimizer", _spec(optimizers=["adma"], learning_rates=[0.1]), dyn.SpecError, "did you mean 'adam'"),
    ("misspelt architecture key", _spec(architectures=[{"kind": "mlp", "depht": 1, "width": 8, "activation": "relu"}]), dyn.SpecError, "did you mean 'depth'"),
    ("wrong type", _spec(epochs="ten"), dyn.SpecError, "'epochs' must be an int"),
    ("non-positive batch size", _spec(batch_size=0), dyn.SpecError, "'batch_size' must be positive"),
    ("non-positive width", _spec(architectures=[{"kind": "mlp", "depth": 1, "width": 0, "activation": "relu"}]), dyn.SpecError, "'width' must be positive"),
    ("negative rate", _spec(learning_rates=[-0.1]), dyn.SpecError, "positive"),
    ("mnist without a path", _spec(dataset="mnist"), dyn.SpecError, "mnist_path"),
    ("validation fraction out of range", _spec(val_fraction=1.5), dyn.SpecError, "val_fraction"),
    ("unknown dataset", _spec(dataset="cifar"), dyn.SpecError, "dataset"),
]


@pytest.mark.parametrize("case, make, error, match", BAD_INPUT, ids=[case[0] for case in BAD_INPUT])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, case, make, error, match):
    with pytest.raises(error, match=match):
        make(tmp_path)
    assert not (tmp_path / "out").exists()


def test_spec_round_trips_and_the_study_sweep_has_30_to_100_runs():
    spec = dyn.load_sweep_spec(str(ROOT / "experiments/dynamics/sweep.yaml"))
    assert 30 <= len(spec.runs()) <= 100
    assert {a.kind for a in spec.architectures} == {"mlp", "conv"} and len(spec.optimizers) >= 2
    assert dyn.SweepSpec.from_dict(spec.to_dict()) == spec
    assert len({run.run_id for run in spec.runs()}) == len(spec.runs())


# --- the study script ------------------------------------------------------------------


def test_study_script_smoke(small_sweep, tmp_path):
    import yaml

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL_SPEC))
    loader = importlib.util.spec_from_file_location("dynamics_study", ROOT / "experiments/dynamics/run.py")
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    out = tmp_path / "study"
    argv = ["--out", str(out), "--spec", str(spec_path), "--sweep-dir", str(small_sweep["out"]), "--k", "5",
            "--predictor-steps", "200", "--held-out", "mlp-d1-w12-tanh", "--seeds", "5,6", "--base-lr", "0.003",
            "--epochs", "3", "--interval", "7", "--no-progress"]
    assert script.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sweep"]["trained_now"] == 0 and metrics["sweep"]["runs"] == 8
    row = metrics["controller"]["per_seed"][0]
    for epochs, acc in ((row["baseline_epochs"], None), (row["controller_epochs"], row["controller_val_acc_at_stop"])):
        assert all(e != e or 1 <= e <= 3 for e in epochs)
    for e, acc, target in zip(row["controller_epochs"], row["controller_val_acc_at_stop"], row["target_val_acc"]):
        assert e != e or acc >= target  # a stop is at the target
    for name in ("loss_curves.png", "predicted_vs_actual.png", "epochs_to_target.png", "dataset.parquet"):
        assert (out / name).stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2


def test_metax_sweep_command_trains_refuses_and_resumes(small_sweep, tmp_path, capsys):
    import shutil

    import yaml

    from metax.experiment.cli import main

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL_SPEC))
    out = tmp_path / "sweep"
    shutil.copytree(small_sweep["out"], out)  # a finished sweep of this spec
    before = sorted(p.name for p in (out / "runs").iterdir())
    assert main(["sweep", str(spec_path), "--out", str(out), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sweep", str(spec_path), "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "trained 0 run(s), 8 already there" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "runs").iterdir()) == before
    spec_path.write_text(yaml.safe_dump({**SMALL_SPEC, "epochz": 3}))
    assert main(["sweep", str(spec_path), "--out", str(tmp_path / "new"), "--no-progress"]) == 2
    assert "epochs" in capsys.readouterr().err and not (tmp_path / "new").exists()
