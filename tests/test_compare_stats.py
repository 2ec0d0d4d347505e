"""`metax compare`: intervals over seeds reflect seed-to-seed variation (Student's t over
seed means), one seed's interval says it is over tasks, a copied run is not a second seed.

Run folders are written by hand (summary.json + eval_final.npz) with known numbers, so
every interval is checked against its closed form.
"""

import json
import math

import numpy as np
import pytest
import scipy.stats

from metax.experiment.cli import main
from metax.experiment.stats import interval_over_seeds


def fake_run(folder, losses, seed=0):
    """A finished run folder holding `losses` as its per-task held-out scores."""
    folder.mkdir(parents=True)
    np.savez(folder / "eval_final.npz", loss_outer=np.asarray(losses, dtype=np.float32))
    summary = {"steps": 10, "seed": seed, "meta_steps_per_second": 100.0,
               "held_out": {"loss_outer": {"mean": float(np.mean(losses)), "ci95": 0.0, "n": len(losses)}},
               "held_out_initial": {"loss_outer": {"mean": 5.0, "ci95": 0.0, "n": len(losses)}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def spread(center, n=50, seed=0):
    """`n` task scores with mean exactly `center` (so seed means are known)."""
    values = np.random.default_rng(seed).normal(0.0, 0.3, n)
    return center + values - values.mean()


def compare(tmp_path, *paths):
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "cmp")]) == 0
    return json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"], (tmp_path / "cmp" / "compare.md").read_text()


def test_two_seeds_give_the_t_interval_over_their_means(tmp_path):
    # The numbers: seeds at 0.920 and 1.596 were reported as 1.258 +- 0.109 (pooled).
    fake_run(tmp_path / "runs" / "seed-0", spread(0.920, seed=1))
    fake_run(tmp_path / "runs" / "seed-1", spread(1.596, seed=2), seed=1)
    (run,), table = compare(tmp_path, tmp_path / "runs")
    entry = run["loss_outer"]
    # k = 2: mean +- t_{0.975, 1} * |a - b| / 2 = 12.706 * 0.338
    assert entry["mean"] == pytest.approx(1.258, abs=1e-6)
    assert entry["ci95"] == pytest.approx(12.7062047 * 0.676 / 2, rel=1e-5)
    assert entry["n"] == 2 and entry["over"] == "seeds" and run["tasks"] == 100
    assert "t over 2 seed means" in table and "1.258 ± 4.295" in table


def test_three_seeds_closed_form_and_one_seed_is_over_tasks(tmp_path):
    centers = [0.5, 0.7, 1.2]
    for k, center in enumerate(centers):
        fake_run(tmp_path / "three" / f"seed-{k}", spread(center, seed=k), seed=k)
    one = spread(0.9, n=40, seed=9)
    fake_run(tmp_path / "one", one)
    (three, single), table = compare(tmp_path, tmp_path / "three", tmp_path / "one")
    half = scipy.stats.t.ppf(0.975, 2) * np.std(centers, ddof=1) / math.sqrt(3)
    assert three["loss_outer"]["ci95"] == pytest.approx(half, rel=1e-5)
    assert three["loss_outer"]["mean"] == pytest.approx(np.mean(centers), rel=1e-6)
    # One seed: a normal interval over its tasks, and the table says so.
    assert single["loss_outer"]["over"] == "tasks" and single["loss_outer"]["n"] == 40
    assert single["loss_outer"]["ci95"] == pytest.approx(1.959964 * scipy.stats.sem(one.astype(np.float32)), rel=1e-4)
    assert "normal over 40 tasks of 1 seed" in table


def test_a_copied_run_is_not_a_second_seed(tmp_path):
    values = spread(1.0, seed=3)
    fake_run(tmp_path / "alone" / "seed-0", values)
    fake_run(tmp_path / "doubled" / "seed-0", values)
    fake_run(tmp_path / "doubled" / "copy", values)
    (alone, doubled), table = compare(tmp_path, tmp_path / "alone", tmp_path / "doubled")
    assert doubled["seeds"] == 1 and doubled["loss_outer"] == alone["loss_outer"]  # no narrower interval
    assert "identical held-out scores): counted once" in table


def test_interval_over_seeds_keeps_a_diverged_seed_visible():
    entry = interval_over_seeds([[1.0, 2.0], [np.inf, 1.0]])
    assert np.isinf(entry["mean"]) and entry["over"] == "seeds"
