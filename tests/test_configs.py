"""Every config in configs/ validates and runs; the main job and Koi's quick path learn."""

import json
import pathlib

import jax
import numpy as np
import pytest

import metax
from metax.experiment.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
SHORT = [
    "--set", "train.steps=2", "--set", "train.meta_batch_size=2", "--set", "train.checkpoint_every=1",
    "--set", "train.eval_every=null", "--set", "eval.tasks=2", "--set", "eval.batch_size=2",
]
# `metax run` builds and traces the config as `metax validate` does (cli._load), at the short
# run's sizes, so `validate` itself is run on one config only (~1 s of tracing each saved).
VALIDATED = "linear-reptile"


def test_there_is_a_config_for_every_learner_and_module():
    configs = [metax.experiment.load_config(str(path)) for path in CONFIGS]
    learners = {c.learner["name"] for c in configs}
    modules = {c.module["name"] for c in configs}
    registry = metax.experiment.registry
    assert learners == set(registry("learners").names())
    assert modules == set(registry("modules").names())
    kernels = {c.learner.get("optim_fn_inner", {}).get("name") for c in configs} | {c.learner.get("kernel", {}).get("name") for c in configs}
    assert {"meta_sgd", "layer_step_lr", "coordinatewise"} <= kernels
    assert {c.task["name"] for c in configs} == {"sinusoid", "family", "linear", "fewshot", "omniglot"}
    for path in CONFIGS:  # each says what it shows
        assert path.read_text().startswith("# "), path.name


def _omniglot_data(path) -> list[str]:
    """`--set task.path=...` pointing an omniglot config at the data beside the repository;
    skips when the files it names are not there (the GPU recipes need the full set)."""
    from test_omniglot import shared_omniglot

    root = shared_omniglot()
    files = [pathlib.Path(p).name for p in metax.experiment.load_config(str(path)).task["path"]]
    if root is None or not all((root / f).is_file() for f in files):
        pytest.skip(f"{path.name} reads {files}, not found beside the repository")
    return ["--set", "task.path=[" + ", ".join(str(root / f) for f in files) + "]"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_and_a_short_run_writes_its_metrics(path, tmp_path, capsys):
    if path.name.startswith("omniglot-"):
        # Real data: validated (built and traced) only; tests/test_omniglot.py runs the task.
        assert main(["validate", str(path), *_omniglot_data(path)]) == 0
        return
    if path.stem == VALIDATED:
        assert main(["validate", str(path)]) == 0
        assert "valid" in capsys.readouterr().out
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-plots", *SHORT]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["held_out"]["loss_outer"]["mean"])


def test_main_job_learns_sinusoids(tmp_path):
    # The main job's protocol, shortened to 1,000 meta-steps (measured: 4.57 -> 1.03): predicting
    # the mean function (the best task-independent predictor) scores about 3.0 on these tasks,
    # so half of that is reached only by adapting from a learned initialisation.
    config = metax.experiment.load_config(str(ROOT / "configs/sinusoid-maml.yaml"), ["train.steps=1000", "eval.tasks=200"])
    experiment = metax.experiment.build(config)
    result = metax.experiment.train(
        experiment.learner, experiment.task.sample_task, steps=1000, meta_batch_size=25, eval_tasks=200,
        progress=False,
    )
    tasks = metax.experiment.loop.sample_held_out(metax.experiment.loop.run_keys(0).eval_tasks, experiment.task.sample_task, 200, 200)
    x, y = np.asarray(tasks.test.x), np.asarray(tasks.test.y)
    baseline = float(np.mean((y - 2.55 * (2 / np.pi) * np.sin(x - np.pi / 2)) ** 2))
    assert 2.5 < baseline < 3.5
    assert result.summary["held_out_initial"]["loss_outer"]["mean"] > 3.0
    assert result.summary["held_out"]["loss_outer"]["mean"] < 1.5


def test_koi_quick_path_learns_the_mean_line(tmp_path):
    # Seed 003: Reptile on y = a x + b, a, b ~ U[-5, 5]; the initialisation it converges to
    # is the mean task, slope and offset near 0, and adapting from it beats the random start.
    out = tmp_path / "koi"
    assert main(["run", str(ROOT / "configs/linear-reptile.yaml"), "--out", str(out), "--no-progress", "--no-plots",
                 "--set", "train.steps=400", "--set", "train.meta_batch_size=8", "--set", "eval.tasks=100"]) == 0
    run = metax.experiment.open_run(str(out))
    weights = jax.tree_util.tree_leaves(run.meta_state.hparams)
    slope, offset = float(weights[1].ravel()[0]), float(weights[0].ravel()[0])  # haiku orders b before w
    assert abs(slope) < 0.5 and abs(offset) < 0.5, (slope, offset)
    summary = json.loads((out / "summary.json").read_text())
    # Five small steps fit only part of a line, so the gain is modest, but it is a gain.
    assert summary["held_out"]["loss_outer"]["mean"] < summary["held_out_initial"]["loss_outer"]["mean"]
