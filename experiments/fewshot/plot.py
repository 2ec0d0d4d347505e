"""The fewshot study's table and bar chart: four meta-learners against two baselines.

    python experiments/fewshot/plot.py runs/fewshot

Reads what `run.sh` wrote under the folder: `<method>-<K>shot/summary.json` of each
`metax run` (held-out accuracy after meta-training, and before it: the random
initialisation adapted the same way) and `baselines/metrics.json` of `baselines.py`
(scored on the same held-out tasks). Writes `results.md` (the README's table),
`results.json` (the same numbers) and `fewshot.png` to the folder.
"""

import argparse
import json
import os
import sys

import numpy as np

from metax.experiment import markdown_table
from metax.experiment.io import write_json_atomic, write_text_atomic
from metax.experiment.plots import pyplot, save_figure
from metax.experiment.signals import run_study

METHODS = {"maml": "MAML", "anil": "ANIL", "reptile": "Reptile", "cavia": "CAVIA"}
BASELINES = {"scratch": "scratch (no meta-learning)", "finetune": "finetune (pre-train + new head)"}


def _cell(entry: dict | None) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['ci95']:.1f}" if entry else "n/a"


def collect(folder: str, shots: list[int]) -> dict:
    """`{method: {K: {"after", "before", "loss_after", "loss_before", "seconds"}}}`, accuracies
    as `{"mean", "ci95", "n"}` fractions; baselines have only "after"."""
    results: dict = {}
    for method in METHODS:
        for k in shots:
            path = os.path.join(folder, f"{method}-{k}shot", "summary.json")
            if not os.path.exists(path):
                continue
            with open(path) as handle:
                summary = json.load(handle)
            before = summary.get("held_out_initial") or {}
            results.setdefault(method, {})[k] = {
                "after": summary["held_out"]["acc_outer"],
                "before": before.get("acc_outer"),
                "loss_after": summary["held_out"]["loss_outer"],
                "loss_before": before.get("loss_outer"),
                "adaptation_steps": summary["held_out"]["adaptation_steps"],
                "meta_steps": summary["steps"],
                "seconds": summary["train_seconds"] + summary["compile_seconds"],
            }
    path = os.path.join(folder, "baselines", "metrics.json")
    if os.path.exists(path):
        with open(path) as handle:
            metrics = json.load(handle)
        for key, by_method in metrics["results"].items():
            k = int(key.split("way_")[1].removesuffix("shot"))
            for method in BASELINES:
                entry = by_method[method]
                results.setdefault(method, {})[k] = {
                    "after": {"mean": entry["acc_mean"], "ci95": entry["acc_ci95"], "n": len(entry["acc_per_task"])}
                }
    return results


def table(results: dict, shots: list[int]) -> str:
    header = ["method"] + [f"5-way {k}-shot" for k in shots] + [f"before meta-training, {k}-shot" for k in shots]
    rows = []
    for method, label in {**BASELINES, **METHODS}.items():
        if method in results:
            row = [label] + [_cell(results[method].get(k, {}).get("after")) for k in shots]
            rows.append(row + [_cell(results[method].get(k, {}).get("before")) if method in METHODS else "" for k in shots])
    return markdown_table(header, rows)


def plot(results: dict, shots: list[int], path: str) -> None:
    plt = pyplot()
    methods = [m for m in {**BASELINES, **METHODS} if m in results]
    fig, axes = plt.subplots(1, len(shots), figsize=(4.2 * len(shots), 3.6), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], shots):
        xs = np.arange(len(methods))
        after = [results[m].get(k, {}).get("after") for m in methods]
        means = [100 * a["mean"] if a else np.nan for a in after]
        errors = [100 * a["ci95"] if a else 0.0 for a in after]
        colours = ["0.6" if m in BASELINES else "C0" for m in methods]
        ax.bar(xs, means, yerr=errors, color=colours, capsize=3)
        before = [results[m].get(k, {}).get("before") for m in methods]
        bx = [x for x, b in zip(xs, before) if b]
        by = [100 * b["mean"] for b in before if b]
        ax.plot(bx, by, "k_", markersize=18, markeredgewidth=2, label="before meta-training")
        ax.set_xticks(xs, [METHODS.get(m, m) for m in methods], rotation=30, ha="right")
        ax.set_title(f"5-way {k}-shot, held-out digits 5, 6, 7, 9")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("query accuracy (%), 600 tasks, 95% CI")
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the study's output folder (run.sh's argument)")
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    args = parser.parse_args(argv)
    results = collect(args.folder, args.shots)
    if not results:
        parser.error(f"{args.folder} holds none of the study's runs (<method>-<K>shot/summary.json, baselines/metrics.json).")
    text = table(results, args.shots)
    write_text_atomic(os.path.join(args.folder, "results.md"), text + "\n")
    write_json_atomic(os.path.join(args.folder, "results.json"), {m: {str(k): v for k, v in by_k.items()} for m, by_k in results.items()})
    plot(results, args.shots, os.path.join(args.folder, "fewshot.png"))
    print(text)
    print(f"\nwritten {os.path.join(args.folder, 'results.md')}, results.json, fewshot.png")


if __name__ == "__main__":
    sys.exit(run_study(main, "experiments/fewshot/plot.py"))
