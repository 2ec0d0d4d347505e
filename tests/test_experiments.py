"""The experiment scripts run end to end, write their outputs and refuse to overwrite."""

import importlib.util
import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load(relative):
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_"), ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reptile_linear_moves_the_init_toward_the_mean_task(tmp_path, capsys):
    script = load("experiments/reptile_linear/run.py")
    out = tmp_path / "run"
    assert script.main(["--out", str(out), "--iterations", "400", "--meta-batch-size", "8", "--seed", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    printed = capsys.readouterr().out
    assert "Output before training" in printed and "Output after training" in printed
    # a, b ~ U[-5, 5]: the init Reptile converges to is near the mean task a = b = 0.
    init = metrics["learned_init"]
    assert abs(init["slope"]) < 0.5 and abs(init["offset"]) < 0.5, init
    # Adapting from it moves the prediction toward the new task's target.
    gap_before = abs(metrics["output_after_training"] - metrics["probe_target"])
    gap_after = abs(metrics["output_after_adaptation"] - metrics["probe_target"])
    assert gap_after < gap_before
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(out)])
    assert exit_info.value.code == 2
    assert json.loads((out / "metrics.json").read_text()) == metrics  # untouched


def test_maml_sinusoid_short_run_writes_metrics_and_plots(tmp_path):
    script = load("experiments/maml_sinusoid/run.py")
    out = tmp_path / "run"
    assert script.main(["--out", str(out), "--steps", "300", "--eval-tasks", "100"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["query_mse_after"] < metrics["query_mse_before"]
    assert (out / "loss_curve.png").stat().st_size > 0 and (out / "predictions.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(out), "--steps", "0"])
    assert exit_info.value.code == 2


def test_meta_sgd_study_smoke(tmp_path):
    script = load("experiments/meta_sgd/run.py")
    out = tmp_path / "run"
    assert script.main(["--out", str(out), "--steps", "30", "--seeds", "1", "--shots", "5", "--eval-tasks", "64"]) == 0
    results = json.loads((out / "metrics.json").read_text())["results"]
    assert set(results) == {"maml", "meta_sgd", "per_step_lr"}
    for by_shot in results.values():
        entry = by_shot["5"]
        assert 0 < entry["mse"] < 20 and entry["ci95"] > 0 and len(entry["seed_means"]) == 1
    assert (out / "meta_sgd.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--out", str(tmp_path / "other"), "--methods", "maml,reptile"])
    assert exit_info.value.code == 2
