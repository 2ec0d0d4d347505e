"""Hostile input to the `metax` command: one message each, exit status 2, no traceback
unless --debug, and nothing already on disk changed (nor anything new written)."""

import hashlib
import os
import pathlib

import numpy as np
import pytest

from conftest import tiny_config
from metax.experiment.cli import main

GOOD = tiny_config()


def edit(old, new):
    assert old in GOOD, old
    return GOOD.replace(old, new)


# (id, config text or None for GOOD, extra argv, expected fragment of the message)
CONFIG_CASES = [
    ("malformed-yaml", "task: {name: sinusoid\nmodel: [", [], "line 2"),
    ("not-a-mapping", "- task\n- model\n", [], "must be a mapping"),
    ("empty-file", "", [], "is empty"),
    ("unknown-section", GOOD + "trian: {steps: 3}\n", [], "did you mean 'train'"),
    ("unknown-learner", edit("name: maml", "name: mamll"), [], "did you mean 'maml'"),
    ("unknown-module", edit("name: learned_init", "name: learnd_init"), [], "did you mean 'learned_init'"),
    ("unknown-task", edit("name: sinusoid", "name: sinusiod"), [], "did you mean 'sinusoid'"),
    ("unknown-model", edit("name: mlp", "name: mpl"), [], "did you mean 'mlp'"),
    ("unknown-optimizer", edit("name: adam", "name: adma"), [], "did you mean 'adam'"),
    ("unknown-argument", edit("steps_inner: 2", "stepsinner: 2"), [], "did you mean 'steps_inner'"),
    ("string-for-int", edit("steps_inner: 2", "steps_inner: five"), [], "expected int"),
    ("int-for-list", edit("hidden_dims: [8]", "hidden_dims: 8"), [], "expected list of positive int"),
    ("string-for-bool", edit("name: maml", "name: maml\n  first_order: 'yes'"), [], "expected bool"),
    ("zero-steps", edit("steps: 3", "steps: 0"), [], "must be > 0"),
    ("negative-meta-batch", edit("meta_batch_size: 2", "meta_batch_size: -1"), [], "must be > 0"),
    ("negative-inner-steps", edit("steps_inner: 2", "steps_inner: -1"), [], "steps_inner must be >= 0"),
    ("zero-shots", edit("shots_train: 5", "shots_train: 0"), [], "must be > 0"),
    ("one-eval-task", edit("tasks: 2", "tasks: 1"), [], "must be >= 2"),
    ("zero-width", edit("hidden_dims: [8]", "hidden_dims: [0]"), [], "must be > 0"),
    ("bad-float", edit("learning_rate: 0.05", "learning_rate: fast"), [], "expected float"),
    ("missing-optimizer", edit("  optim_fn_outer: {name: adam, learning_rate: 0.01}\n", ""), [], "needs 'optim_fn_outer'"),
    ("missing-section", GOOD.split("learner:")[0], [], "learner: is required"),
    ("impossible-pair", edit("name: learned_init", "name: cavia, embedding_dim: 2").replace("name: maml", "name: reptile"), [],
     "no params that start from an hparam"),
    ("unknown-strategy", edit("name: maml", "name: evosax\n  algorithm: OpenESS\n  evosax_kwargs: {popsize: 4}").replace(
        "  optim_fn_outer: {name: adam, learning_rate: 0.01}\n", ""), [], "Unknown evolution strategy"),
    ("unknown-activation", edit("hidden_dims: [8]", "hidden_dims: [8], activation: rleu"), [], "did you mean 'relu'"),
    ("no-body", edit("name: mlp, hidden_dims: [8]", "name: linear").replace("name: learned_init", "name: anil"), [],
     "no hidden layer"),
    ("wrong-input-shape", edit("name: mlp, hidden_dims: [8]", "name: conv4"), [], "images"),
    ("missing-plugin", GOOD + "plugins: [nowhere.py]\n", [], "nowhere.py does not exist"),
    ("broken-plugin", GOOD + "plugins: [broken.py]\n", [], "ZeroDivisionError"),
    ("set-without-value", None, ["--set", "train.steps"], "expected key=value"),
    ("set-into-a-value", None, ["--set", "train.steps.x=1"], "not a section"),
    ("set-unknown-key", None, ["--set", "train.stepz=3"], "did you mean 'steps'"),
    ("set-bad-type", None, ["--set", "train.steps=many"], "expected positive int"),
    ("zero-seeds", None, ["--seeds", "0"], "--seeds must be >= 1"),
]


def snapshot(root: pathlib.Path) -> dict:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            files[str(path.relative_to(root))] = "dir"
    return files


def assert_refused(argv, fragment, capsys, root):
    before = snapshot(root)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("metax: error: "), err
    assert fragment in err, err
    assert snapshot(root) == before  # nothing changed, nothing written


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(case, tmp_path, capsys):
    _, text, extra, fragment = case
    (tmp_path / "broken.py").write_text("1 / 0\n")
    config = tmp_path / "config.yaml"
    config.write_text(GOOD if text is None else text)
    assert_refused(["run", str(config), "--out", str(tmp_path / "out"), "--no-progress", *extra], fragment, capsys, tmp_path)


def make_run(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(GOOD)
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress", "--no-plots"]) == 0
    return config


def test_folder_errors(tmp_path, capsys):
    config = make_run(tmp_path)
    capsys.readouterr()
    run = str(tmp_path / "run")
    other = tmp_path / "other.yaml"
    other.write_text(edit("steps_inner: 2", "steps_inner: 3"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (["run", str(config), "--out", run], "holds a run of 'config'; pass --resume"),
        (["run", str(other), "--out", run, "--resume"], "learner.steps_inner is 2 there, 3 here"),
        (["run", str(config), "--out", str(tmp_path / "notes")], "holds no metax run"),
        (["run", str(config), "--out", str(tmp_path / "a_file")], "is a file"),
        (["run", str(tmp_path)], "is a directory"),
        (["run", str(tmp_path / "missing.yaml")], "does not exist"),
        (["validate", str(tmp_path / "missing.yaml")], "does not exist"),
        (["eval", str(tmp_path / "empty")], "holds no metax run"),
        (["eval", run, "--tasks", "1"], "--tasks must be >= 2"),
        (["plot", str(tmp_path / "notes")], "holds no metax run"),
        (["compare", str(tmp_path / "notes")], "holds no finished run"),
        (["list", "lerners"], "did you mean 'learners'"),
        (["frobnicate"], "invalid choice"),
        (["run"], "the following arguments are required"),
    ]
    for argv, fragment in cases:
        assert_refused(argv, fragment, capsys, tmp_path)


def test_corrupt_checkpoint_and_unwritable_folder(tmp_path, capsys, monkeypatch):
    config = make_run(tmp_path)
    capsys.readouterr()
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    checkpoints[-1].write_bytes(b"not a zip file")
    assert_refused(["eval", str(tmp_path / "run")], "is damaged (not a complete zip archive)", capsys, tmp_path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    if os.geteuid() == 0:  # root ignores permission bits: make the folder unwritable by hand
        monkeypatch.setattr(os, "makedirs", refuse)
        target = tmp_path / "locked" / "run"
    else:
        (tmp_path / "locked").mkdir()
        os.chmod(tmp_path / "locked", 0o555)
        target = tmp_path / "locked" / "run"
    assert_refused(["run", str(config), "--out", str(target)], "choose a writable --out", capsys, tmp_path)


def test_debug_shows_the_traceback(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(edit("name: maml", "name: mamll"))
    assert main(["--debug", "run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_at_least_thirty_cases():
    assert len(CONFIG_CASES) + 14 + 2 >= 30
    assert np.all([len(case) == 4 for case in CONFIG_CASES])
