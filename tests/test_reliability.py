"""Reliability of runs: non-finite values stop a run without losing its last checkpoint,
--debug-nans names the operation, runs are deterministic."""

import json

import numpy as np

from conftest import tiny_config
from metax.experiment import checkpoint as ckpt
from metax.experiment.cli import main

# An outer optimiser that turns its updates into NaN from its `after`-th step on: a
# failure at a known meta-step whose checkpoints are known.
PLUGIN = '''
import jax.numpy as jnp
import optax

import metax


def poisoned_sgd(learning_rate: float, after: int) -> optax.GradientTransformation:
    """SGD whose updates are NaN from step `after` on."""

    def update(grads, count, params=None):
        scale = jnp.where(count >= after, jnp.nan, -learning_rate)
        return jax.tree_util.tree_map(lambda g: scale * g, grads), count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)


import jax  # noqa: E402

metax.experiment.register("optimizer", "poisoned_sgd_{tag}", poisoned_sgd)
'''

CONFIG = "plugins: [poison.py]" + tiny_config(
    "{steps: 20, meta_batch_size: 2, checkpoint_every: 5, chunk: 4}",
    steps_inner=1,
    optim_fn_outer="{name: poisoned_sgd_{tag}, learning_rate: 0.01, after: 7}",
)


def setup(tmp_path, tag):
    (tmp_path / "poison.py").write_text(PLUGIN.replace("{tag}", tag))
    (tmp_path / "config.yaml").write_text(CONFIG.replace("{tag}", tag))
    return str(tmp_path / "config.yaml")


def test_a_non_finite_step_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    config = setup(tmp_path, "stop")
    out = tmp_path / "run"
    assert main(["run", config, "--out", str(out), "--no-progress", "--no-plots"]) == 3
    err = capsys.readouterr().err
    assert "non-finite hparams after the update at meta-step 7 (ModelAgnosticMetaLearning)" in err
    assert "step_000000005.npz, is intact" in err and "Traceback" not in err
    assert [s for s, _ in ckpt.list_checkpoints(out / "checkpoints")] == [5]
    with np.load(ckpt.latest_checkpoint(out / "checkpoints")) as data:  # loadable and finite
        assert all(np.all(np.isfinite(data[k])) for k in data.files if k.startswith("leaf") and data[k].dtype.kind == "f")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(8))  # up to and including the bad step
    assert not (out / "summary.json").exists()


def test_debug_nans_names_the_first_bad_operation(tmp_path, capsys):
    config = setup(tmp_path, "debug")
    out = tmp_path / "run"
    assert main(["run", config, "--out", str(out), "--no-progress", "--no-plots", "--debug-nans"]) == 3
    err = capsys.readouterr().err
    assert "meta-step 7" in err and "first bad operation is at" in err and "poison.py" in err, err


def test_same_seed_same_bits_other_seed_other_tasks(tmp_path):
    text = tiny_config("{steps: 6, meta_batch_size: 3, eval_every: 3}", "{tasks: 4}")
    (tmp_path / "c.yaml").write_text(text)
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / name), "--no-progress", "--no-plots",
                     "--set", f"seed={seed}"]) == 0
    read = lambda name, file: (tmp_path / name / file).read_text()
    assert read("a", "metrics.jsonl") == read("b", "metrics.jsonl")
    assert read("a", "eval.jsonl") == read("b", "eval.jsonl")
    first = lambda name: json.loads(read(name, "metrics.jsonl").splitlines()[0])
    assert first("a")["loss_outer"] != first("c")["loss_outer"]  # other tasks from the first step on


# 60 steps: the three kills below use about 10 (each waits for two new checkpoints), so
# the killed runs stay far from their end; every step writes a checkpoint (slow).
KILL_CONFIG = tiny_config(
    "{steps: 60, meta_batch_size: 2, checkpoint_every: 1, chunk: 1, keep_checkpoints: 2}",
    steps_inner=1,
    hidden_dims="[64, 64]",
    optim_fn_outer="{name: adam, learning_rate: 0.001}",
)


def _latest_step(folder):
    found = ckpt.list_checkpoints(str(folder))
    return found[-1][0] if found else None


def test_sigkill_at_random_moments_loses_at_most_the_unsaved_steps_and_resumes_exactly(tmp_path):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    config = tmp_path / "kill.yaml"
    config.write_text(KILL_CONFIG)
    # The uninterrupted reference checkpoints only at its end: the same one-step chunks
    # (so the same programs and bits) without a checkpoint write per step.
    assert main(["run", str(config), "--out", str(tmp_path / "whole"), "--no-progress", "--no-plots",
                 "--set", "train.checkpoint_every=60"]) == 0

    out, checkpoints = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    command = [sys.executable, "-m", "metax", "run", str(config), "--out", str(out), "--no-progress", "--no-plots"]
    chooser = random.Random(0)
    during_write = 0
    # Three kills (two aimed at a checkpoint being written, one at a random moment): each
    # costs a process start-up, and the damaged-checkpoint cases have their own tests
    # (test_run_folders, test_cli_errors).
    for trial in range(3):
        child = subprocess.Popen(command + (["--resume"] if trial else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        start = _latest_step(checkpoints) or 0
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None and (_latest_step(checkpoints) or 0) < start + 2:
            time.sleep(0.002)
        assert child.poll() is None, child.stderr.read().decode()
        if trial:  # aim at a checkpoint being written
            until = time.time() + 5
            while time.time() < until and not list(checkpoints.glob("*.tmp-*")):
                pass
        else:
            time.sleep(chooser.uniform(0.0, 0.05))
        child.send_signal(signal.SIGKILL)
        child.wait()
        during_write += bool(list(checkpoints.glob("*.tmp-*")))
        # Every checkpoint on disk loads completely, and only unsaved steps are lost.
        for step, path in ckpt.list_checkpoints(str(checkpoints)):
            with np.load(path) as data:
                record = ckpt.read_record(path)
                assert record["step"] == step and all(data[f"leaf_{i:05d}"].size >= 0 for i in range(record["leaves"]))
        rows = [line for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        written = max(json.loads(line)["step"] for line in rows if line.endswith("}")) + 1
        assert written - _latest_step(checkpoints) <= 1  # checkpoint_every = 1
    assert during_write >= 1  # at least one kill left a checkpoint half-written
    # The last resume in this process: the same resume code without a fourth start-up.
    assert main(command[3:] + ["--resume"]) == 0

    whole = np.load(ckpt.latest_checkpoint(str(tmp_path / "whole" / "checkpoints")))
    resumed = np.load(ckpt.latest_checkpoint(str(checkpoints)))
    for name in whole.files:
        if name != "__checkpoint__":
            np.testing.assert_array_equal(whole[name], resumed[name])
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(60))
    assert not list(checkpoints.glob("*.tmp-*"))
    assert os.path.exists(out / "summary.json")
