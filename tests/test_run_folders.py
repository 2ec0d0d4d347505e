"""Run folders, resume and signals: nothing lost, nothing overwritten, nothing refused
that a resume may safely do (issue 27)."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from metax.experiment import checkpoint as ckpt
from metax.experiment import plots
from metax.experiment.cli import main
from metax.experiment.writers import MetricsWriter
from conftest import tiny_config
from test_cli_errors import assert_refused, snapshot

CONFIG = tiny_config("{steps: 4, meta_batch_size: 2, checkpoint_every: 2, chunk: 2}", "{tasks: 2, plot_tasks: 1}", steps_inner=1)

SWEEP = """
dataset: digits
architectures: [{kind: mlp, depth: 1, width: 8, activation: relu}]
optimizers: [adam]
learning_rates: {adam: [0.001]}
seeds: [0]
epochs: 3000
batch_size: 32
val_every: 10
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step run (checkpoints at 2 and 4), copied by the tests that change it."""
    root = tmp_path_factory.mktemp("finished")
    (root / "c.yaml").write_text(CONFIG)
    assert main(["run", str(root / "c.yaml"), "--out", str(root / "run"), "--no-progress", "--no-plots"]) == 0
    return root


def copy_run(finished, tmp_path, name="run"):
    shutil.copytree(finished / "run", tmp_path / name)
    shutil.copy(finished / "c.yaml", tmp_path / "c.yaml")
    return tmp_path / name


def steps_in(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_every_writing_command_refuses_a_folder_it_did_not_make(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    (tmp_path / "spec.yaml").write_text(SWEEP)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "named.yaml").write_text(CONFIG + "name: ../../escaped\n")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    spec = str(tmp_path / "spec.yaml")
    cases = [
        (["sweep", spec, "--out", str(run)], "which is not a metax sweep"),  # a run's summary.json
        (["sweep", spec, "--out", str(tmp_path / "notes")], "holds todo.txt, which is not a metax sweep"),
        (["sweep", spec, "--out", str(tmp_path / "a_file")], "is a file"),
        (["compare", str(run), "--out", str(tmp_path / "notes")], "holds todo.txt"),
        (["compare", str(run), "--out", str(tmp_path / "a_file")], "is a file"),
        (["run", str(tmp_path / "named.yaml")], "name '../../escaped' is not a plain folder name"),
        (["run", str(tmp_path / "c.yaml"), "--seeds", "2", "--resume", "--out", str(tmp_path / "notes")],
         "which is not a folder of seed runs"),
        (["resume", str(tmp_path / "notes")], "holds no metax run"),
    ]
    for argv, fragment in cases:
        assert_refused(argv, fragment, capsys, tmp_path)
    # compare writes only where it is told: printed without --out, files in a new --out.
    before = snapshot(tmp_path)
    assert main(["compare", str(run)]) == 0 and snapshot(tmp_path) == before
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0
    assert main(["compare", str(run), "--out", str(tmp_path / "cmp")]) == 0  # its own output: replaced
    assert sorted(os.listdir(tmp_path / "cmp")) == ["compare.json", "compare.md", "compare.png"]


def _damage(path, how):
    data = path.read_bytes()
    if how == "zero":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit flipped amid the largest array's values: only the zip's CRC notices
        import zipfile

        with zipfile.ZipFile(path) as archive:
            member = max(archive.infolist(), key=lambda info: info.file_size)
        start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
        index = start + member.file_size - 4
        path.write_bytes(data[:index] + bytes([data[index] ^ 0x10]) + data[index + 1:])


@pytest.mark.parametrize("how", ["zero", "truncated", "bitflip"])
def test_restore_latest_skips_a_damaged_newest_checkpoint(tmp_path, capsys, how):
    tree = {"w": jnp.arange(64.0)}
    for step in (1, 2):
        ckpt.save_checkpoint(str(tmp_path), step, {"w": tree["w"] * step}, keep=3)
    newest = tmp_path / "step_000000002.npz"
    _damage(newest, how)
    reader = ckpt.restore_latest(str(tmp_path), tree)  # e.g. `metax eval`: moves nothing
    assert reader.record["step"] == 1 and newest.exists()
    np.testing.assert_array_equal(reader.tree["w"], np.arange(64.0))
    writer = ckpt.restore_latest(str(tmp_path), tree, set_aside=True)
    assert writer.record["step"] == 1 and not newest.exists() and (tmp_path / "step_000000002.npz.damaged").exists()
    err = capsys.readouterr().err
    assert "step_000000002.npz is damaged" in err and "using" in err and "allow_pickle" not in err
    _damage(tmp_path / "step_000000001.npz", how)  # none intact: an error naming the file, nothing moved
    with pytest.raises(ckpt.ConfigError, match="no intact checkpoint.*step_000000001.npz is damaged"):
        ckpt.restore_latest(str(tmp_path), tree, set_aside=True)
    assert (tmp_path / "step_000000001.npz").exists()


def test_a_checkpoint_pruned_while_eval_loads_it_is_not_an_error(tmp_path, monkeypatch):
    tree = {"w": jnp.arange(3.0)}
    for step in (1, 2):
        ckpt.save_checkpoint(str(tmp_path), step, tree, keep=3)
    load = ckpt.load_checkpoint

    def pruned_under_us(path, template):  # the training run prunes step 2 after a newer save
        if path.endswith("step_000000002.npz"):
            ckpt.save_checkpoint(str(tmp_path), 3, tree, keep=1)
            os.unlink(path) if os.path.exists(path) else None
            raise FileNotFoundError(path)
        return load(path, template)

    monkeypatch.setattr(ckpt, "load_checkpoint", pruned_under_us)
    assert ckpt.restore_latest(str(tmp_path), tree).record["step"] == 3


def test_resume_falls_back_past_a_damaged_checkpoint_and_keeps_it(finished, tmp_path, capsys):
    run = copy_run(finished, tmp_path)
    os.unlink(run / "summary.json")  # as if killed after the last checkpoint
    _damage(run / "checkpoints" / "step_000000004.npz", "bitflip")
    capsys.readouterr()
    assert main(["resume", str(run), "--no-progress", "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "step_000000004.npz is damaged" in err and "moved aside" in err and "step_000000002.npz" in err
    assert (run / "checkpoints" / "step_000000004.npz.damaged").exists()
    assert steps_in(run / "metrics.jsonl") == [0, 1, 2, 3]
    whole = np.load(finished / "run" / "checkpoints" / "step_000000004.npz")
    redone = np.load(run / "checkpoints" / "step_000000004.npz")
    for name in whole.files:
        if name != "__checkpoint__":
            np.testing.assert_array_equal(whole[name], redone[name])


def test_metrics_rows_torn_or_beyond_the_checkpoint_are_repaired_on_resume(tmp_path, capsys):
    writer = MetricsWriter(str(tmp_path), keep_before=0)
    writer.write([{"step": s, "loss_outer": 0.5 + s / 3} for s in range(7)])
    jsonl = tmp_path / "metrics.jsonl"
    whole = jsonl.read_text().splitlines(keepends=True)
    # A crash tore row 4 (which belongs to the checkpoint at step 5) in the JSON file.
    jsonl.write_text("".join(whole[:4]) + whole[4][:12])
    MetricsWriter(str(tmp_path), keep_before=5)
    assert jsonl.read_text() == "".join(whole[:5])  # row 4 restored from the CSV, 5 and 6 dropped
    assert [line.split(",")[0] for line in (tmp_path / "metrics.csv").read_text().splitlines()] == ["step", "0", "1", "2", "3", "4"]
    assert "is torn" in capsys.readouterr().err


def test_resume_extends_a_finished_run_and_refuses_other_changes(finished, tmp_path, capsys, monkeypatch):
    run = copy_run(finished, tmp_path)
    before = json.loads((run / "summary.json").read_text())["held_out_initial"]
    assert before is not None
    capsys.readouterr()
    assert_refused(["resume", str(run), "--set", "learner.steps_inner=2"], "learner.steps_inner is 1 there, 2 here", capsys, tmp_path)
    assert_refused(["resume", str(run), "--set", "learner.optim_fn_outer.learning_rate=0.001"],
                   "only after a non-finite stop", capsys, tmp_path)
    assert_refused(["resume", str(run), "--set", "train.steps=3"], "only larger", capsys, tmp_path)
    order = []
    sync, save = MetricsWriter.sync, ckpt.save_checkpoint
    monkeypatch.setattr(MetricsWriter, "sync", lambda self: order.append("sync") or sync(self))
    monkeypatch.setattr(ckpt, "save_checkpoint", lambda *a, **k: order.append("save") or save(*a, **k))
    assert main(["resume", str(run), "--set", "train.steps=6", "--no-progress", "--no-plots"]) == 0
    assert order == ["sync", "sync", "save"]  # rows durable before the checkpoint they belong to
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["held_out_initial"] == before  # the "before" figure kept
    assert "before meta-training" in out
    assert steps_in(run / "metrics.jsonl") == list(range(6))
    assert "steps: 6" in (run / "config.yaml").read_text()
    log = [json.loads(line) for line in (run / "run_log.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "resume" and log[-1]["changes"] == [{"key": "train.steps", "from": 4, "to": 6}]


def test_a_second_process_cannot_resume_a_locked_run(finished, tmp_path, capsys):
    from metax.experiment.folders import FolderLock

    run = copy_run(finished, tmp_path)
    capsys.readouterr()
    with FolderLock(str(run)):
        assert_refused(["resume", str(run), "--set", "train.steps=6"], f"is in use by process {os.getpid()}", capsys, tmp_path)


def test_a_kill_while_plots_are_drawn_is_finished_by_resume(tmp_path, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text(CONFIG.replace("steps: 4", "steps: 2"))
    draw = plots.plot_run

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_run", killed)
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 130
    monkeypatch.setattr(plots, "plot_run", draw)
    assert main(["resume", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "drew the missing plots" in capsys.readouterr().out
    assert (tmp_path / "run" / "learning_curves.png").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["plots"]


def test_a_run_that_died_before_its_first_step_does_not_block_a_rerun(tmp_path, capsys, monkeypatch):
    import metax.experiment.cli as cli

    (tmp_path / "c.yaml").write_text(CONFIG)
    def dies(*args, **kwargs):  # e.g. a plugin's bug, or a kill, before the first step
        raise RuntimeError("died")

    monkeypatch.setattr(cli, "_train", dies)
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    assert (tmp_path / "run" / "config.yaml").exists()
    monkeypatch.undo()
    (tmp_path / "c.yaml").write_text(CONFIG.replace("steps: 4", "steps: 2"))  # the fixed config
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"), "--no-progress", "--no-plots"]) == 0
    assert "ended before its first step" in capsys.readouterr().out


POISON = '''
import jax
import jax.numpy as jnp
import optax

import metax


def rate_limited_sgd(learning_rate: float, after: int) -> optax.GradientTransformation:
    """SGD whose updates turn NaN from step `after` on, unless the rate is below 0.006."""

    def update(grads, count, params=None):
        scale = jnp.where((count >= after) & (learning_rate > 0.006), jnp.nan, -learning_rate)
        return jax.tree_util.tree_map(lambda g: scale * g, grads), count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)


metax.experiment.register("optimizer", "rate_limited_sgd", rate_limited_sgd)
'''


def test_a_non_finite_stop_prints_a_resume_command_with_a_lower_rate_that_works(tmp_path, capsys):
    (tmp_path / "poison.py").write_text(POISON)
    config = CONFIG.replace("{name: adam, learning_rate: 0.01}", "{name: rate_limited_sgd, learning_rate: 0.01, after: 3}")
    (tmp_path / "c.yaml").write_text(config + "plugins: [poison.py]\n")
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(run), "--no-progress", "--no-plots"]) == 3
    err = capsys.readouterr().err
    assert "resume continues" not in err and "lower learning rates" in err
    command = err.split("To resume with lower learning rates: ")[1].strip()
    assert command == f"metax resume {run} --set learner.optim_fn_outer.learning_rate=0.005"
    assert main(shlex.split(command)[1:] + ["--no-progress", "--no-plots"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    assert steps_in(run / "metrics.jsonl") == [0, 1, 2, 3]


def test_a_run_folder_plugin_resolves_against_the_folder(finished, tmp_path, monkeypatch):
    run = copy_run(finished, tmp_path)
    (run / "extra.py").write_text("LOADED = True\n")
    text = (run / "config.yaml").read_text().replace("plugins: []", "plugins: [extra.py]")
    (run / "config.yaml").write_text(text)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", str(run)]) == 0
    assert main(["resume", str(run), "--no-progress", "--no-plots"]) == 0  # the same plugin, found in the folder


def _wait_for(predicate, child, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and child.poll() is None and not predicate():
        time.sleep(0.01)
    assert child.poll() is None, child.communicate()


STEPS = 1000


def test_sigint_and_sigterm_save_the_stop_and_print_a_command_that_resumes(tmp_path):
    # 1,000 steps of ~1-2 ms each: the SIGTERM, sent after the third, must land mid-training (at 60 steps
    # a fast machine had finished them all before the signal arrived).
    (tmp_path / "c.yaml").write_text(CONFIG.replace("steps: 4", f"steps: {STEPS}").replace("chunk: 2", "chunk: 1")
                                     .replace("checkpoint_every: 2", "checkpoint_every: 1000"))
    (tmp_path / "spec.yaml").write_text(SWEEP)
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    python = [sys.executable, "-m", "metax"]
    # Started together, to share their start-up time: a run (SIGTERM) and a sweep (SIGINT).
    child = subprocess.Popen(python + ["run", str(tmp_path / "c.yaml"), "--out", str(run), "--no-progress", "--no-plots"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    swept = subprocess.Popen(python + ["sweep", str(tmp_path / "spec.yaml"), "--out", str(sweep), "--no-progress"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3, child)
    child.send_signal(signal.SIGTERM)
    _wait_for(lambda: (sweep / "sweep.json").exists(), swept)  # written as its first epoch compiles
    swept.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    done = len(steps_in(run / "metrics.jsonl"))
    assert 3 <= done < STEPS, done
    saved = f"{run}/checkpoints/step_{done:09d}.npz"
    assert f"stopped by SIGTERM at meta-step {done}; checkpoint {saved} holds the state" in err, err
    assert os.path.exists(saved)  # the state after the last completed chunk
    _, sweep_err = swept.communicate(timeout=60)
    assert swept.returncode == 130, sweep_err
    assert f"continue with: metax sweep {tmp_path / 'spec.yaml'} --out {sweep} --resume" in sweep_err
    command = err.split("continue with: ")[1].strip()
    assert command == f"metax resume {run}"
    assert main(shlex.split(command)[1:] + ["--no-progress", "--no-plots"]) == 0
    assert steps_in(run / "metrics.jsonl") == list(range(STEPS))
