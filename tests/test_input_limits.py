"""Hostile or broken inputs end with exit 2 and a message naming the file or key, never a
raw exception, unbounded memory or a silent exit 0; `validate` refuses what `run` refuses.
"""

import json
import os

import numpy as np
import pytest
import yaml

from metax.experiment.cli import main
from metax.experiment.schema import _key_lines
from conftest import tiny_config

# The suite's tiny config, first key on line 1 (the line numbers below count from it).
TINY = tiny_config("{steps: 2, meta_batch_size: 2}", steps_inner=1, hidden_dims="[4]").lstrip("\n")


def alias_bomb(depth: int) -> str:
    """Each level refers three times to the one below: 3**depth paths through a small file."""
    lines = ["a0: &a0 {x: 1}"] + [f"a{i}: &a{i} {{p: *a{i - 1}, q: *a{i - 1}, r: *a{i - 1}}}" for i in range(1, depth + 1)]
    return "\n".join(lines) + "\n"


def run_cli(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_the_key_line_map_does_not_follow_aliases():
    # 3**12 = 531,441 paths; the map has one entry per key written in the file.
    lines = _key_lines(yaml.compose(alias_bomb(12)))
    assert len(lines) < 100 and lines["a12.p"] == 13


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("bomb.yaml", alias_bomb(30), "a0: unknown key"),
        ("deep.yaml", "task: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to read"),
        ("dup.yaml", TINY + "train: {steps: 5}\n", "line 11: duplicate key 'train' (also on line 9)"),
        ("seed.yaml", TINY + f"seed: {2**70}\n", "line 11: seed: must be at most 2**63 - 1"),
        ("nan.yaml", TINY.replace("learning_rate: 0.05", "learning_rate: .nan"), "learning_rate: must be a finite number, got nan"),
        ("inf.yaml", TINY.replace("learning_rate: 0.01", "learning_rate: .inf"), "learning_rate: must be a finite number, got inf"),
        ("plugin.yaml", TINY + "plugins: [notes.txt]\n", "notes.txt is not a Python file (*.py)"),
        ("exits.yaml", TINY + "plugins: [exits.py]\n", "exits.py called sys.exit(0); a plugin must only define"),
    ],
)
def test_a_bad_config_exits_2_naming_the_file(tmp_path, capsys, name, text, message):
    (tmp_path / "notes.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    path = tmp_path / name
    path.write_text(text)
    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--no-plots"]):
        code, err = run_cli(command, capsys)
        assert code == 2 and message in err and str(path) in err and "Traceback" not in err, (command, err)
    assert not (tmp_path / "run").exists()  # nothing written


def test_validate_refuses_what_run_refuses(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    code, err = run_cli(["validate", str(path), "--set", "train.check_finite=[loss_outr]"], capsys)
    assert code == 2 and "train.check_finite names ['loss_outr'], which this learner does not report" in err
    code, err = run_cli(["validate", str(path), "--set", "train.meta_batch_size=1000000000"], capsys)
    assert code == 2 and "train.meta_batch_size=1,000,000,000: the tasks' data alone would take" in err


def test_a_device_file_is_refused_not_read(capsys):
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    code, err = run_cli(["run", "/dev/zero"], capsys)
    assert code == 2 and "/dev/zero is not a regular file" in err


def test_a_damaged_summary_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "eval_final.npz", loss_outer=np.ones(3, np.float32))
    (run / "summary.json").write_text('{"steps": 10, "held_out": {"loss_')  # truncated
    code, err = run_cli(["compare", str(run), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 2 and f"{run / 'summary.json'} cannot be read as JSON" in err
    (run / "summary.json").write_text(json.dumps({"steps": 10}))
    (run / "eval_final.npz").write_bytes(b"PK\x03\x04 not a zip")
    code, err = run_cli(["compare", str(run), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 2 and f"{run / 'eval_final.npz'} cannot be read" in err


def test_eval_and_plot_of_a_run_folder_say_which_plugins_they_load(tmp_path, capsys):
    plugin = tmp_path / "harmless_plugin.py"
    plugin.write_text("VALUE = 1\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TINY + f"name: tiny\nplugins: [{plugin}]\n")
    for command in ("eval", "plot"):
        code, err = run_cli([command, str(run)], capsys)
        assert f"{run / 'config.yaml'} loads plugin code: {plugin}" in err
        assert code == 2 and "has no checkpoint yet" in err
