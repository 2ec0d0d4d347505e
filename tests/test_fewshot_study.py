"""experiments/fewshot/plot.py: the study's table holds the numbers its runs wrote."""

import importlib.util
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _summary(acc, ci, acc_before, ci_before):
    score = lambda m, c: {"acc_outer": {"mean": m, "ci95": c, "n": 600}, "loss_outer": {"mean": 1.0, "ci95": 0.1, "n": 600}}
    held_out = {**score(acc, ci), "adaptation_steps": 5}
    return {"held_out": held_out, "held_out_initial": score(acc_before, ci_before), "steps": 1000,
            "train_seconds": 10.0, "compile_seconds": 2.0}


def test_plot_tabulates_each_run_and_the_baselines_by_shot_count(tmp_path):
    spec = importlib.util.spec_from_file_location("fewshot_plot", ROOT / "experiments/fewshot/plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    for name, summary in {"maml-1shot": _summary(0.724, 0.008, 0.756, 0.009),
                          "maml-5shot": _summary(0.902, 0.005, 0.878, 0.006),
                          "reptile-5shot": _summary(0.92, 0.004, 0.855, 0.007)}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "baselines").mkdir()
    entry = lambda m, c: {"acc_mean": m, "acc_ci95": c, "acc_per_task": [m] * 3}
    (tmp_path / "baselines" / "metrics.json").write_text(json.dumps({"results": {
        "5way_1shot": {"scratch": entry(0.82, 0.007), "finetune": entry(0.708, 0.008)},
        "5way_5shot": {"scratch": entry(0.95, 0.003), "finetune": entry(0.894, 0.004)},
    }}))
    plot.main([str(tmp_path)])
    rows = {line.split(" | ")[0].lstrip("| "): line.strip(" |").split(" | ")[1:]
            for line in (tmp_path / "results.md").read_text().splitlines()[2:]}
    # columns: after 1-shot, after 5-shot, before 1-shot, before 5-shot
    assert rows["MAML"] == ["72.4 ± 0.8", "90.2 ± 0.5", "75.6 ± 0.9", "87.8 ± 0.6"]
    assert rows["Reptile"] == ["n/a", "92.0 ± 0.4", "n/a", "85.5 ± 0.7"]
    assert rows["scratch (no meta-learning)"][:2] == ["82.0 ± 0.7", "95.0 ± 0.3"]
    assert rows["finetune (pre-train + new head)"][:2] == ["70.8 ± 0.8", "89.4 ± 0.4"]
    assert set(rows) == {"MAML", "Reptile", "scratch (no meta-learning)", "finetune (pre-train + new head)"}
    assert (tmp_path / "fewshot.png").stat().st_size > 1000
