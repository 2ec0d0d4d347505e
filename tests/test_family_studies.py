"""experiments/family_studies/run.py: each study runs in --quick mode, writes finite metrics
and its plot, and the script refuses to overwrite an earlier run."""

import importlib.util
import json
import math
import pathlib

import pytest

import metax

ROOT = pathlib.Path(__file__).resolve().parents[1]
STUDIES = ("cavia_cg", "anil_evosax", "compsyn_eqprop", "gainmod_reptile")
# Studies whose 200 quick meta-steps already lower the held-out error significantly
# (paired over the same 64 tasks). GainMod + Reptile needs the full budget for that.
LEARNS_IN_QUICK = {"cavia_cg", "anil_evosax", "compsyn_eqprop"}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("family_studies_run", ROOT / "experiments/family_studies/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_finite_interval(entry):
    assert math.isfinite(entry["mean"]) and math.isfinite(entry["ci95"]) and entry["ci95"] >= 0, entry


@pytest.mark.parametrize("study", STUDIES)
def test_quick_study_writes_finite_metrics_and_plot(tmp_path, script, study):
    assert script.main(["--study", study, "--quick", "--out", str(tmp_path)]) == 0
    out = tmp_path / study
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / f"{study}.png").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [study]  # one study, one folder

    assert metrics["study"] == study and metrics["config"]["quick"] is True
    assert metrics["train_seconds"] > 0 and metrics["wall_seconds"] >= metrics["train_seconds"]
    curve = metrics["loss_outer_curve"]
    assert len(curve) == metrics["config"]["settings"]["steps"] == 200
    assert all(math.isfinite(value) for value in curve)

    held = metrics["held_out"]
    assert held["tasks"] == 64 and held["query_points"] == 50
    for key in ("before", "after", "improvement", "support_mean_baseline"):
        assert_finite_interval(held[key])
    assert held["improvement"]["mean"] == pytest.approx(held["before"]["mean"] - held["after"]["mean"], abs=1e-6)

    # Every held-out task lands in exactly one family, and the per-family means recombine
    # into the overall mean.
    per_family = held["per_family"]
    assert list(per_family) == list(metax.data.FAMILY_NAMES)
    assert sum(entry["tasks"] for entry in per_family.values()) == 64
    for when in ("before", "after"):
        pooled = sum(entry["tasks"] * entry[when]["mean"] for entry in per_family.values()) / 64
        assert pooled == pytest.approx(held[when]["mean"], rel=1e-5)
        for entry in per_family.values():
            assert entry["tasks"] >= 2 and math.isfinite(entry[when]["mean"])

    # Adapting the meta-trained model beats predicting each task's support mean ...
    assert held["after"]["mean"] < held["support_mean_baseline"]["mean"]
    # ... and, where 200 steps suffice, meta-training lowered the error significantly.
    if study in LEARNS_IN_QUICK:
        assert held["improvement"]["mean"] > held["improvement"]["ci95"], held


def test_refuses_to_overwrite_any_existing_study(tmp_path, script):
    existing = tmp_path / "compsyn_eqprop" / "metrics.json"
    existing.parent.mkdir()
    existing.write_text('{"from": "an earlier run"}')
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--study", "all", "--quick", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert existing.read_text() == '{"from": "an earlier run"}'
    # Refused before any study ran: no other study's folder was created.
    assert [p.name for p in tmp_path.iterdir()] == ["compsyn_eqprop"]

    with pytest.raises(SystemExit) as exit_info:
        script.main(["--study", "maml_family", "--out", str(tmp_path / "other")])
    assert exit_info.value.code == 2
