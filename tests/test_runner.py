"""The runner: the fused training loop, checkpoints and resume, the registry and plugins."""

import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

import metax
from conftest import tiny_config
from metax.experiment import checkpoint as ckpt
from metax.experiment.cli import main
from metax.experiment.loop import run_keys

TINY = tiny_config("{steps: 12, meta_batch_size: 3, checkpoint_every: 4, eval_every: 6}", "{tasks: 6, batch_size: 4, plot_tasks: 2}")


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def tiny_learner():
    module = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn([8], 1), output_dim=1
    )
    return metax.learner.ModelAgnosticMetaLearning(module, None, 2, optax.sgd(0.05), optax.adam(0.01))


SAMPLE_TASK = metax.data.make_task_sampler("sinusoid", 5, 5)


def hparams_leaves(meta_state):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(meta_state.hparams)]


def test_fused_loop_equals_calling_update_step_by_step_with_the_same_tasks():
    learner = tiny_learner()
    result = metax.experiment.train(
        learner, SAMPLE_TASK, steps=7, meta_batch_size=3, seed=4, eval_tasks=2, chunk=3, progress=False
    )
    # By hand: the same keys (folded from the step index), one jitted update per step.
    keys = run_keys(4)
    meta_state = learner.reset(keys.reset, jax.jit(SAMPLE_TASK)(keys.data).train.x)
    update = jax.jit(learner.update)
    losses = []
    for step in range(7):
        batch = metax.data.sample_metabatch(jax.random.fold_in(keys.data, step), SAMPLE_TASK, 3)
        meta_state, metrics = update(jax.random.fold_in(keys.update, step), meta_state, batch)
        losses.append(float(metrics["loss_outer"]))
    for fused, manual in zip(hparams_leaves(result.meta_state), hparams_leaves(meta_state)):
        np.testing.assert_allclose(fused, manual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.history["loss_outer"], losses, rtol=1e-5)
    np.testing.assert_array_equal(result.history["step"], np.arange(7))


def test_chunking_does_not_change_the_result_and_the_loop_compiles_once():
    def run(steps, chunk):
        learner, traces = tiny_learner(), []
        update = learner.update
        learner.update = lambda *args: (traces.append(1), update(*args))[1]  # counts traces
        result = metax.experiment.train(learner, SAMPLE_TASK, steps=steps, meta_batch_size=3, eval_tasks=2,
                                        chunk=chunk, progress=False)
        return result, len(traces)

    one_chunk, traces_one = run(6, 6)
    six_chunks, traces_six = run(6, 1)
    _, traces_two = run(2, 1)
    # Six chunks trace `update` as often as one or two: later chunks reuse the program.
    # Once: the compilation reuses the shape probe's trace of the jitted update.
    assert traces_one == traces_six == traces_two == 1
    for a, b in zip(hparams_leaves(one_chunk.meta_state), hparams_leaves(six_chunks.meta_state)):
        np.testing.assert_array_equal(a, b)  # bitwise: the same compiled step


def test_eval_scores_every_held_out_task_and_summary_intervals_are_right(tmp_path):
    learner = tiny_learner()
    result = metax.experiment.train(learner, SAMPLE_TASK, steps=3, meta_batch_size=3, eval_tasks=7, eval_batch_size=3,
                                    out=str(tmp_path / "run"), progress=False, plots=False)
    per_task = result.per_task["loss_outer"]
    assert per_task.shape == (7,)  # 3 + 3 + 1 (the last batch padded, then cut)
    entry = result.summary["held_out"]["loss_outer"]
    assert entry["mean"] == pytest.approx(per_task.astype(np.float64).mean(), rel=1e-12)
    assert entry["ci95"] == pytest.approx(scipy.stats.norm.ppf(0.975) * scipy.stats.sem(per_task), rel=1e-6)
    # Independent: adapt each held-out task by itself with the key its batch gave it.
    keys = run_keys(0)
    tasks = metax.experiment.loop.sample_held_out(keys.eval_tasks, SAMPLE_TASK, 7, 3)
    rngs = jax.random.split(jax.random.fold_in(keys.eval_adapt, 2), 3)
    task = jax.tree_util.tree_map(lambda a: a[6], tasks)
    loss, _ = learner.outer_loss(rngs[0], result.meta_state.hstate, result.meta_state.hparams, task, 2)
    np.testing.assert_allclose(per_task[6], loss, rtol=1e-5)
    saved = np.load(tmp_path / "run" / "eval_final.npz")
    np.testing.assert_array_equal(saved["loss_outer"], per_task)
    # The model-free reference: predict each query target by the task's support mean.
    y_train, y_test = np.asarray(tasks.train.y, np.float64), np.asarray(tasks.test.y, np.float64)
    baseline = np.mean((y_test - y_train.mean(axis=1, keepdims=True)) ** 2, axis=(1, 2))
    assert result.summary["held_out_baselines"]["support_mean"]["mean"] == pytest.approx(baseline.mean(), rel=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of TINY (with plots), shared by the tests that read it."""
    folder = tmp_path_factory.mktemp("tiny")
    config = write(folder / "tiny.yaml", TINY)
    assert main(["run", config, "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run"


def test_run_writes_metrics_checkpoints_summary_and_plots(tiny_run, tmp_path):
    out = tiny_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    csv_lines = (out / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("step,") and len(csv_lines) == 13
    evals = [json.loads(line)["step"] for line in (out / "eval.jsonl").read_text().splitlines()]
    assert evals == [0, 6, 12]
    assert [step for step, _ in ckpt.list_checkpoints(out / "checkpoints")] == [4, 8, 12]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and np.isfinite(summary["held_out"]["loss_outer"]["mean"])
    assert summary["compile_seconds"] > 0 and summary["meta_steps_per_second"] > 0
    assert {os.path.basename(p) for p in summary["plots"]} == {"learning_curves.png", "fits.png"}
    resolved = (out / "config.yaml").read_text()
    assert "optim_fn_outer" in resolved and "b1: 0.9" in resolved  # every default written out
    # The resolved config alone reruns the run: same final hparams.
    assert main(["run", str(out / "config.yaml"), "--out", str(tmp_path / "rerun"), "--no-progress", "--no-plots"]) == 0
    a = np.load(ckpt.latest_checkpoint(out / "checkpoints"))
    b = np.load(ckpt.latest_checkpoint(tmp_path / "rerun" / "checkpoints"))
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name]) if name != "__checkpoint__" else None


def test_interrupted_run_resumes_to_the_uninterrupted_hparams_bitwise(tiny_run, tmp_path, monkeypatch):
    config = write(tmp_path / "tiny.yaml", TINY)

    # Interrupt right after the checkpoint of step 8 is on disk (as Ctrl-C would).
    save = ckpt.save_checkpoint

    def save_then_interrupt(directory, step, *args, **kwargs):
        path = save(directory, step, *args, **kwargs)
        if step == 8:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_interrupt)
    assert main(["run", config, "--out", str(tmp_path / "cut"), "--no-progress", "--no-plots"]) == 130
    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    assert not (tmp_path / "cut" / "summary.json").exists()
    assert main(["run", config, "--out", str(tmp_path / "cut"), "--no-progress", "--no-plots"]) == 2  # needs --resume
    assert main(["run", config, "--out", str(tmp_path / "cut"), "--no-progress", "--no-plots", "--resume"]) == 0

    whole = np.load(ckpt.latest_checkpoint(tiny_run / "checkpoints"))
    cut = np.load(ckpt.latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    for name in whole.files:
        if name != "__checkpoint__":
            np.testing.assert_array_equal(whole[name], cut[name])
    rows = [json.loads(line)["step"] for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(12))  # no step lost or written twice
    first = (tiny_run / "metrics.jsonl").read_text()
    assert first == (tmp_path / "cut" / "metrics.jsonl").read_text()
    # Resuming a finished run does nothing.
    assert main(["run", config, "--out", str(tmp_path / "cut"), "--no-progress", "--resume"]) == 0


def test_checkpoints_round_trip_prune_and_refuse_another_structure(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32),)}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), step, jax.tree_util.tree_map(lambda x: x * step, tree), {"seed": 7}, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path))] == [2, 3]
    restored, record = ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)), tree)
    np.testing.assert_array_equal(restored["a"], np.arange(3.0) * 3)
    assert record["step"] == 3 and record["seed"] == 7
    (tmp_path / "step_000000009.npz.tmp-123").write_bytes(b"half a file")
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("step_000000003.npz")
    assert ckpt.clean_temporary(str(tmp_path)) and not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(metax.experiment.ConfigError, match="expects"):
        ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)), {"a": jnp.arange(4.0), "b": (jnp.ones((2, 2), jnp.int32),)})


PLUGIN = '''
import jax
import metax


@metax.experiment.register("learner", "{name}", description="MAML with a scaled meta-gradient, as a plugin")
class ScaledMAML(metax.learner.MetaLearner):
    """Backprop through the inner loop, meta-gradient times `scale`."""

    def __init__(self, meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, *, scale: float = 1.0):
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer)
        self.scale = scale

    def grad(self, rng, hstate, hparams, metadataset):
        grad_fn = jax.grad(self.outer_loss, argnums=2, has_aux=True)
        hgrads, (outcome, metrics) = grad_fn(rng, hstate, hparams, metadataset, self.steps_inner)
        return jax.tree_util.tree_map(lambda g: self.scale * g, hgrads), outcome.hstate, metrics
'''


@pytest.fixture
def plugin_name():
    """A learner name the plugin registers, taken out of the process's registry afterwards
    (left there, it would show in the every-config-for-every-learner check run later by
    the same worker)."""
    name = f"plugin_maml_{os.getpid()}"
    yield name
    metax.experiment.registry("learners")._entries.pop(name, None)


def test_a_plugin_learner_runs_from_a_config_and_shows_in_list(tmp_path, capsys, plugin_name):
    name = plugin_name
    (tmp_path / "my_learner.py").write_text(PLUGIN.replace("{name}", name))
    config = TINY.replace("name: maml", f"name: {name}\n  scale: 0.0") + "plugins: [my_learner.py]\n"
    path = write(tmp_path / "plugged.yaml", config)
    assert main(["run", path, "--out", str(tmp_path / "run"), "--no-progress", "--no-plots", "--set", "train.steps=3"]) == 0
    # scale 0: the plugin's meta-gradient is zero, so Adam leaves the hparams where they started.
    restored = np.load(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints"))
    learner = tiny_learner()
    keys = run_keys(0)
    start = learner.reset(keys.reset, jax.jit(SAMPLE_TASK)(keys.data).train.x)
    for i, leaf in enumerate(jax.tree_util.tree_leaves(start.hparams)):
        np.testing.assert_array_equal(restored[f"leaf_{i:05d}"], leaf)
    capsys.readouterr()
    assert main(["list", "learners", "--plugin", str(tmp_path / "my_learner.py")]) == 0
    assert name in capsys.readouterr().out


def test_compare_intervals_are_over_seeds(tmp_path, capsys):
    config = write(tmp_path / "tiny.yaml", TINY)
    out = tmp_path / "seeds"
    assert main(["run", config, "--out", str(out), "--seeds", "2", "--no-progress", "--no-plots", "--set", "train.steps=2"]) == 0
    assert sorted(os.listdir(out))[:2] == ["compare.json", "compare.md"]
    pooled = np.concatenate([np.load(out / f"seed-{s}" / "eval_final.npz")["loss_outer"] for s in (0, 1)])
    result = json.loads((out / "compare.json").read_text())["runs"][0]
    assert result["seeds"] == 2 and result["loss_outer"]["n"] == 2
    assert result["loss_outer"]["mean"] == pytest.approx(pooled.mean())
    seed_means = [np.load(out / f"seed-{s}" / "eval_final.npz")["loss_outer"].mean() for s in (0, 1)]
    t_half = scipy.stats.t.ppf(0.975, 1) * np.std(seed_means, ddof=1) / np.sqrt(2)  # over seeds, not tasks
    assert result["loss_outer"]["ci95"] == pytest.approx(t_half, rel=1e-4) and result["tasks"] == 12
    assert "| seeds |" in (out / "compare.md").read_text()
    capsys.readouterr()
    assert main(["eval", str(out / "seed-1"), "--tasks", "6"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "seed-1" / "summary.json").read_text())
    assert metax.experiment.format_interval(summary["held_out"]["loss_outer"]) in printed  # same tasks, same keys


def test_every_registered_name_is_described_and_list_prints_them(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    from metax.experiment.registry import KINDS, registry

    for kind in KINDS:
        for entry in registry(kind).entries():
            assert entry.description, (kind, entry.name)
            assert f"  {entry.name} " in printed
    for learner in metax.learner.__all__:
        cls = getattr(metax.learner, learner)
        if isinstance(cls, type) and issubclass(cls, metax.learner.MetaLearner) and cls is not metax.learner.MetaLearner:
            if cls.__name__ in ("ImplicitDifferentiation",):
                continue
            assert any(e.target is cls for e in registry("learners").entries()), cls


def test_a_chain_of_optimisers_from_a_config_is_optax_chain():
    from metax.experiment.schema import build_component, resolve_component

    spec = {"name": "chain", "transforms": [{"name": "clip_by_global_norm", "max_norm": 1.0}, {"name": "sgd", "learning_rate": 0.5}]}
    resolved = resolve_component(spec, ("optimizers",), "optim")
    assert resolved["transforms"][1] == {"name": "sgd", "learning_rate": 0.5, "momentum": None, "nesterov": False, "accumulator_dtype": None}
    built = build_component(resolved, ("optimizers",), {}, "optim")
    grads = {"w": jnp.array([3.0, 4.0])}  # norm 5: clipped to norm 1, then times -0.5
    updates, _ = built.update(grads, built.init(grads))
    np.testing.assert_allclose(updates["w"], [-0.3, -0.4], rtol=1e-6)
    with pytest.raises(metax.experiment.ConfigError, match="chain needs at least one transform"):
        build_component(resolve_component({"name": "chain", "transforms": []}, ("optimizers",), "optim"), ("optimizers",), {}, "optim")
