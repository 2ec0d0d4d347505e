"""`metax compare`: the final held-out scores of runs (or folders of seed runs) side by
side, with 95% intervals over seeds, written as compare.md, compare.json and compare.png."""

import os
from typing import Optional, Sequence

from metax.experiment.errors import ConfigError


def _run_folders(path: str) -> list[str]:
    if os.path.exists(os.path.join(path, "summary.json")):
        return [path]
    if os.path.isdir(path):
        found = sorted(
            os.path.join(path, name) for name in os.listdir(path)
            if os.path.exists(os.path.join(path, name, "summary.json"))
        )
        if found:
            return found
    raise ConfigError(f"{path} holds no finished run (no summary.json in it or its subfolders).")


def _duplicate_runs(folders: Sequence[str], scores: dict) -> dict:
    """`{index: index of the earlier run it copies}` for runs whose held-out scores are
    bit-identical to an earlier one's (a copied folder, or one seed run twice)."""
    import numpy as np

    duplicates = {}
    for i in range(len(folders)):
        for j in range(i):
            if j not in duplicates and all(np.array_equal(parts[i], parts[j]) for parts in scores.values()):
                duplicates[i] = j
                break
    return duplicates


def compare_runs(run_dirs: Sequence[str], out: Optional[str], metric: Optional[str] = None) -> str:
    """The final held-out scores of each run (or each folder of seed runs) with 95%
    intervals over seeds (`stats.interval_over_seeds`); writes compare.md, compare.json and
    compare.png to `out`; returns the table.

    Example:
      >>> print(compare_runs(["runs/maml-seeds"], None))  # doctest: +SKIP
    """
    import numpy as np

    from metax.experiment.io import read_json, read_npz, write_json_atomic, write_text_atomic
    from metax.experiment.plots import plot_comparison
    from metax.experiment.stats import describe_interval, format_interval, interval_over_seeds, markdown_table

    groups = []
    for path in run_dirs:
        folders = _run_folders(path)
        scores, seed_means, summaries, labels = {}, {}, [], []
        for folder in folders:
            data = read_npz(os.path.join(folder, "eval_final.npz"))
            for name, values in data.items():
                if name != "group":
                    scores.setdefault(name, []).append(np.asarray(values, dtype=np.float64))
            labels.append(data.get("group"))
            summaries.append(read_json(os.path.join(folder, "summary.json")))
        duplicates = _duplicate_runs(folders, scores)
        if duplicates:  # a copy of a run is not another seed: count it once
            keep = [i for i in range(len(folders)) if i not in duplicates]
            scores = {name: [parts[i] for i in keep] for name, parts in scores.items()}
            summaries, labels = [summaries[i] for i in keep], [labels[i] for i in keep]
        group = {"label": os.path.basename(os.path.normpath(path)), "path": path, "seeds": len(folders) - len(duplicates),
                 "duplicates": [f"{folders[i]} = {folders[j]}" for i, j in duplicates.items()]}
        for name, parts in scores.items():
            group[name] = interval_over_seeds(parts)
            group["tasks"] = int(sum(np.size(p) for p in parts))
            seed_means[name] = [float(np.mean(p)) for p in parts]
        group["seed_means"] = seed_means
        initial = [s.get("held_out_initial") or {} for s in summaries]
        group["before"] = {
            name: float(np.mean([i[name]["mean"] for i in initial if name in i]))
            for name in scores if all(name in i for i in initial)
        }
        names = (summaries[0].get("held_out") or {}).get("groups")
        if names and all(label is not None for label in labels):
            group["groups"] = {
                group_name: {
                    name: interval_over_seeds([part[label == index] for part, label in zip(parts, labels)])
                    for name, parts in scores.items()
                }
                for index, group_name in enumerate(names)
            }
        group["steps"] = summaries[0].get("steps")
        rates = [s.get("meta_steps_per_second") for s in summaries if s.get("meta_steps_per_second")]
        group["meta_steps_per_second"] = float(np.mean(rates)) if rates else None
        groups.append(group)

    metrics = [m for m in ("loss_outer", "acc_outer") if all(m in g for g in groups)]
    if not metrics:
        raise ConfigError("the runs share no held-out metric (loss_outer or acc_outer); compare runs of similar tasks.")
    header = ["run", "seeds", "tasks x seeds"] + [f"{m} (95% CI)" for m in metrics] + ["interval"] + [f"{m} before" for m in metrics] + ["meta-steps", "steps/s"]
    rows = []
    for g in groups:
        rows.append(
            [g["label"], g["seeds"], g["tasks"]]
            + [format_interval(g[m]) for m in metrics]
            + [describe_interval(g[metrics[0]])]
            + [f"{g['before'][m]:.3f}" if m in g["before"] else "" for m in metrics]
            + [g["steps"], f"{g['meta_steps_per_second']:.0f}" if g["meta_steps_per_second"] else ""]
        )
    table = markdown_table(header, rows)
    if all("groups" in g for g in groups) and len({tuple(g["groups"]) for g in groups}) == 1:
        names = list(groups[0]["groups"])
        table += f"\n\n{metrics[0]} per group:\n\n" + markdown_table(
            ["run"] + names, [[g["label"]] + [format_interval(g["groups"][n][metrics[0]]) for n in names] for g in groups]
        )
    table += (
        "\n\nIntervals: with several seeds, Student's t over the seed means (each seed's tasks "
        "averaged first), so they reflect seed-to-seed variation; with one seed, a normal "
        "interval over its held-out tasks (it says nothing about other seeds)."
    )
    for g in groups:
        for pair in g["duplicates"]:
            table += f"\n{g['label']}: {pair} (identical held-out scores): counted once."
    if out is not None:
        chosen = metric or ("acc_outer" if "acc_outer" in metrics else "loss_outer")
        if chosen not in metrics:
            raise ConfigError(f"--metric {chosen!r} is not reported by every run; choose one of {metrics}.")
        os.makedirs(out, exist_ok=True)
        write_text_atomic(os.path.join(out, "compare.md"), table + "\n")
        write_json_atomic(os.path.join(out, "compare.json"), {"runs": groups})
        plot_comparison(groups, chosen, os.path.join(out, "compare.png"))
        table += f"\n\nwritten {os.path.join(out, 'compare.md')}, compare.json, compare.png"
    return table


def command_compare(args) -> int:
    from metax.experiment.folders import check_output, is_comparison

    if args.out is not None:  # written only where the user says, never beside the runs
        check_output(args.out, f"--out {args.out}", is_comparison, "an earlier `metax compare` output")
    print(compare_runs(args.run_dirs, args.out, args.metric))
    if args.out is None:
        print("(printed only; pass --out DIR to write compare.md, compare.json and compare.png)")
    return 0
