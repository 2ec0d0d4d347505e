"""The Omniglot study's table and figures, from what run.sh wrote.

    python experiments/omniglot/report.py runs/omniglot --omniglot-runs ../shared/data/omniglot/all_runs.zip

Reads under the folder: each learner's run (`<learner>/` or `<learner>/seed-<k>/`): its
`eval.jsonl` (validation-alphabet accuracy during meta-training), `evals/*.json` written
by `metax eval` (test alphabets per episode type, tagged by their `--set` values; Lake's
runs), and `baselines*/metrics.json`. Writes `results.md` (the README's table),
`results.json`, `accuracy_vs_steps.png` and `episodes.png` (support and query images of a
held-out 5-way 1-shot task and of Lake's run 1) into the folder. Only finished
evaluations are reported; a missing one is shown as "not run". With several seeds, the
interval is Student's t over the seed means (seed-to-seed variation, as `metax
compare`); each seed's own figures are listed below it. `--from-json` rebuilds the
table (not the figures) from a `results.json` already in the folder.
"""

import argparse
import glob
import json
import os
import sys

import jax
import numpy as np

import metax
from metax.experiment.io import write_json_atomic, write_text_atomic
from metax.experiment.loop import run_keys, sample_held_out
from metax.experiment.plots import pyplot, save_figure
from metax.experiment.registry import registry
from metax.experiment.signals import run_study
from metax.experiment.stats import interval_over_seeds

LEARNERS = {"maml": "MAML (second order)", "fomaml": "first-order MAML", "reptile": "Reptile", "anil": "ANIL", "metasgd": "Meta-SGD"}
BASELINES = {"pixel_nn": "nearest neighbour, raw pixels", "scratch": "scratch (no meta-learning)",
             "finetune": "pre-train + fine-tune head"}
EPISODES = [(5, 1), (5, 5), (20, 1), (20, 5)]


def run_folders(folder: str, learner: str) -> list[str]:
    base = os.path.join(folder, learner)
    seeds = sorted(glob.glob(os.path.join(base, "seed-*")))
    return seeds or ([base] if os.path.isdir(base) else [])


def test_scores(run: str) -> dict:
    """`{(ways, shots): per-task accuracies}` and `"lake"`: per-run errors, from `evals/`."""
    found = {}
    for path in glob.glob(os.path.join(run, "evals", "*.json")):
        with open(path) as handle:
            record = json.load(handle)
        if "error_per_run" in record:
            found["lake"] = record
            continue
        overrides = dict(o.split("=", 1) for o in record.get("overrides", []))
        if overrides.get("eval.task.held_out") != "test":
            continue
        key = (int(overrides["eval.task.ways"]), int(overrides["eval.task.shots"]))
        found[key] = record["metrics"]["acc_outer"]
    return found


def cell(entry) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['ci95']:.1f}" if entry else "not run"


def seed_cell(entry, seed: int) -> str:
    """One seed's mean, with its interval over tasks where it was kept."""
    if not entry or seed >= len(entry.get("seed_means", [])):
        return "not run"
    half = (entry.get("seed_ci95") or [None] * (seed + 1))[seed]
    return cell({"mean": entry["seed_means"][seed], "ci95": half}) if half is not None else f"{100 * entry['seed_means'][seed]:.1f}"


def repool(results: dict) -> dict:
    """Recomputes every several-seed entry of a results.json from its seed means (for
    results written before the intervals over seeds were t intervals)."""
    for row in list(results["learners"].values()):
        for key, entry in row.items():
            if isinstance(entry, dict) and len(entry.get("seed_means", [])) > 1:
                row[key] = over_seeds(entry["seed_means"], entry.get("seed_ci95"))
    return results


def pooled(entries: list) -> dict | None:
    """One seed: its interval over tasks. Several: Student's t interval over the seed means
    (`metax.experiment.stats.interval_over_seeds`, as `metax compare`), which reflects
    seed-to-seed variation; the per-seed means and intervals are kept beside it."""
    if not entries:
        return None
    if len(entries) == 1:
        return {**entries[0], "seed_means": [entries[0]["mean"]]}
    return over_seeds([e["mean"] for e in entries], [e.get("ci95") for e in entries])


def over_seeds(means: list, halves: list | None = None) -> dict:
    """The t interval over seed means, with the seeds' own means (and task intervals)."""
    entry = interval_over_seeds([[m] for m in means])
    return {**entry, "seed_means": [float(m) for m in means], "seed_ci95": halves or [None] * len(means)}


def collect(folder: str) -> dict:
    results = {"learners": {}, "baselines": {}, "curves": {}}
    for learner in LEARNERS:
        runs = run_folders(folder, learner)
        if not runs:
            continue
        scores = [test_scores(r) for r in runs]
        row = {}
        for ways, shots in EPISODES:
            row[f"{ways}x{shots}"] = pooled([s[(ways, shots)] for s in scores if (ways, shots) in s])
        lakes = [s["lake"] for s in scores if "lake" in s]
        if lakes:
            errors = [metax.data.lake_score(lake["error_per_run"]) for lake in lakes]
            row["lake"] = pooled([{"mean": e.mean, "ci95": e.ci95, "n": 20} for e in errors])
        summaries = []
        for run in runs:
            path = os.path.join(run, "summary.json")
            if os.path.exists(path):
                with open(path) as handle:
                    summaries.append(json.load(handle))
        if summaries:
            row["valid_final"] = pooled([s["held_out"]["acc_outer"] for s in summaries])
            row["valid_before"] = pooled([s["held_out_initial"]["acc_outer"] for s in summaries if s.get("held_out_initial")])
            row["seconds"] = [s.get("train_seconds", 0) + s.get("compile_seconds", 0) for s in summaries]
            row["steps"] = summaries[0]["steps"]
        row["seeds"] = len(runs)
        results["learners"][learner] = row
        results["curves"][learner] = []
        for run in runs:
            path = os.path.join(run, "eval.jsonl")
            if os.path.exists(path):
                with open(path) as handle:
                    rows = [json.loads(line) for line in handle if line.strip()]
                results["curves"][learner].append([(r["step"], r["acc_outer"], r["acc_outer_ci95"]) for r in rows])
    # baselines/metrics.json, and any baselines-*/metrics.json (e.g. pixel NN alone, a cheap rerun)
    for path in sorted(glob.glob(os.path.join(folder, "baselines*", "metrics.json"))):
        with open(path) as handle:
            base = json.load(handle)
        for method in BASELINES:
            row = results["baselines"].setdefault(method, {f"{w}x{k}": None for w, k in EPISODES})
            for ways, shots in EPISODES:
                entry = base["results"].get(f"{ways}way_{shots}shot", {}).get(method)
                if entry is not None and row[f"{ways}x{shots}"] is None:
                    row[f"{ways}x{shots}"] = {k: entry[k] for k in ("mean", "ci95", "n")}
            lake = base.get("lake_runs", {}).get(method)
            if lake and "lake" not in row:
                row["lake"] = {"mean": lake["error_mean"], "ci95": lake["error_ci95"], "n": 20}
        results.setdefault("baselines_seconds", {})[os.path.basename(os.path.dirname(path))] = base.get("seconds")
    results["baselines"] = {m: r for m, r in results["baselines"].items() if any(v for v in r.values())}
    return results


def table(results: dict) -> str:
    header = "| method | 5-way 1-shot | 5-way 5-shot | 20-way 1-shot | 20-way 5-shot | Lake's 20 runs, error % |\n|---|---:|---:|---:|---:|---:|\n"
    lines = []
    for method, label in BASELINES.items():
        row = results["baselines"].get(method)
        if row:
            lines.append(f"| {label} | " + " | ".join(cell(row[f"{w}x{k}"]) for w, k in EPISODES) + f" | {cell(row.get('lake'))} |")
    for learner, label in LEARNERS.items():
        row = results["learners"].get(learner)
        if row:
            keys = [f"{w}x{k}" for w, k in EPISODES] + ["lake"]
            seeds = f" ({row['seeds']} seeds, t interval over seed means)" if row["seeds"] > 1 else ""
            lines.append(f"| {label}{seeds} | " + " | ".join(cell(row.get(key)) for key in keys) + " |")
            for seed in range(row["seeds"] if row["seeds"] > 1 else 0):
                lines.append(f"| {label}, seed {seed} | " + " | ".join(seed_cell(row.get(key), seed) for key in keys) + " |")
    for name, error in metax.data.PUBLISHED_LAKE_ERRORS.items():
        lines.append(f"| {name} (published) | | | | | {error} |")
    return header + "\n".join(lines) + "\n"


def plot_curves(results: dict, path: str) -> None:
    figure, axis = pyplot().subplots(figsize=(6.4, 4.2))
    for learner, curves in results["curves"].items():
        for seed, curve in enumerate(curves):
            steps, acc, half = (np.asarray(v) for v in zip(*curve))
            line, = axis.plot(steps, 100 * acc, marker="o", label=LEARNERS[learner] + (f" seed {seed}" if len(curves) > 1 else ""))
            axis.fill_between(steps, 100 * (acc - half), 100 * (acc + half), color=line.get_color(), alpha=0.15)
    axis.set_xlabel("meta-steps (8 tasks each)")
    axis.set_ylabel("20-way 1-shot accuracy, %")
    axis.set_title("Validation alphabet (Balinese) during meta-training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)


def image_row(axes, images, titles, fontsize: int) -> None:
    """One row of the episode figure: each image with its title."""
    for axis, image, title in zip(axes, images, titles):
        axis.imshow(image[:, :, 0], cmap="gray_r")
        axis.set_title(title, fontsize=fontsize)


def plot_episodes(config_path: str, runs_path: str | None, path: str, task_set: list[str]) -> None:
    config = metax.experiment.load_config(config_path, task_set)
    args = {k: v for k, v in config.task.items() if k != "name"}
    spec = registry("tasks").get("omniglot").target("test", **{**args, "ways": 5, "shots": 1, "queries": 3, "held_out": "test"})
    task = jax.device_get(jax.tree_util.tree_map(lambda a: a[0], sample_held_out(run_keys(0).eval_tasks, spec.sample_task, 2, 2)))
    rows = 2 + (2 if runs_path else 0)
    figure, axes = pyplot().subplots(rows, 10, figsize=(10, rows * 1.15))
    for axis in axes.ravel():
        axis.axis("off")
    image_row(axes[0, :5], task.train.x, [f"class {int(y)}" for y in task.train.y[:5]], 7)
    image_row(axes[1], task.test.x, [f"query: {int(y)}" for y in task.test.y[:10]], 7)
    axes[0, 5].text(0, 0.5, "held-out alphabets\n5-way 1-shot:\nsupport (top),\nqueries (below)", fontsize=7, va="center")
    if runs_path:
        runs = metax.data.load_lake_runs(runs_path, size=int(args.get("image_size", 28)))
        run = jax.tree_util.tree_map(lambda a: np.asarray(a)[0], runs.tasks)
        image_row(axes[2], run.train.x, [f"run01 class {c + 1}" for c in range(10)], 6)
        image_row(axes[3], run.test.x, [f"item {q + 1}: class {int(y) + 1}" for q, y in enumerate(run.test.y[:10])], 6)
    figure.tight_layout()
    save_figure(figure, path, dpi=110)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--omniglot-runs", help="all_runs.zip, for the episode figure")
    parser.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "../../configs/omniglot-maml.yaml"))
    parser.add_argument("--task-set", action="append", default=[])
    parser.add_argument("--from-json", action="store_true",
                        help="rebuild results.md (and results.json's intervals) from the folder's results.json; no figures")
    args = parser.parse_args(argv)
    if args.from_json:
        with open(os.path.join(args.folder, "results.json")) as handle:
            results = repool(json.load(handle))
    else:
        results = collect(args.folder)
    text = table(results)
    write_text_atomic(os.path.join(args.folder, "results.md"), text)
    write_json_atomic(os.path.join(args.folder, "results.json"), results)
    if args.from_json:  # the figures need the run folders and the data; keep the ones there
        print(text)
        return results
    if results["curves"]:
        plot_curves(results, os.path.join(args.folder, "accuracy_vs_steps.png"))
    plot_episodes(args.config, args.omniglot_runs, os.path.join(args.folder, "episodes.png"), args.task_set)
    print(text)
    return results


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/omniglot/report.py"))
