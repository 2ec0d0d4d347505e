"""The `metax` command: run, evaluate, plot, validate, list and compare experiments.

    metax run CONFIG.yaml [--set key=value ...] [--out DIR] [--resume] [--seeds N]
    metax eval RUN_DIR [--tasks N] [--steps K]
    metax plot RUN_DIR
    metax validate CONFIG.yaml [--set key=value ...]
    metax list [learners|modules|tasks|models|optimizers|kernels] [--plugin FILE]
    metax compare RUN_DIR ... [--out DIR] [--metric NAME]
    metax sweep SPEC.yaml [--out DIR] [--resume]

Exit status: 0 done; 2 bad input (a config, an argument, a folder), with a one-paragraph
message and no traceback unless `--debug`; 3 a run stopped on a non-finite value; 130
interrupted (resume with `--resume`).
"""

import argparse
import dataclasses
import hashlib
import os
import shutil
import sys
import traceback
from typing import Optional, Sequence

from metax.experiment.errors import ConfigError, RunError

EXIT_USAGE = 2
EXIT_RUN = 3
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints")


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of exiting, so `main` owns exit codes."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def _version() -> str:
    """The installed package's version (the source tree's pyproject when not installed)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("metax")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metax", description="Run and compare metax meta-learning experiments.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("--version", action="version", version=f"metax {_version()}", help="print metax's version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="meta-train from a YAML config")
    run.add_argument("config", help="YAML config file (see configs/)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key, e.g. --set train.steps=100 (repeatable)")
    run.add_argument("--out", help="run folder (default runs/<config name>)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    run.add_argument("--seeds", type=int, default=1, help="run seeds seed, seed+1, ... into --out/seed-<k> and compare them")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--no-plots", action="store_true", help="write no plots (metax plot RUN_DIR draws them later)")
    run.add_argument("--debug-nans", action="store_true", help="step by step with jax_debug_nans, to find the first bad operation")
    run.add_argument("--devices", type=int, help="split each meta-batch over N devices (same as --set train.devices=N)")
    run.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host: the address of process 0 (jax.distributed)")
    run.add_argument("--num-processes", type=int, help="multi-host: how many processes take part")
    run.add_argument("--process-id", type=int, help="multi-host: this process's index (0 writes the files)")
    run.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    evaluate = commands.add_parser("eval", help="score a run's newest checkpoint on held-out tasks")
    evaluate.add_argument("run_dir", help="a run folder written by metax run")
    evaluate.add_argument("--tasks", type=int, help="held-out tasks (default: the run's eval.tasks)")
    evaluate.add_argument("--steps", type=int, help="adaptation steps (default: the run's eval steps)")
    evaluate.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    plot = commands.add_parser("plot", help="draw a run's learning curves and fits")
    plot.add_argument("run_dir", help="a run folder written by metax run")
    plot.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    validate = commands.add_parser("validate", help="check a config without running it")
    validate.add_argument("config", help="YAML config file (see configs/)")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a config key, as for metax run (repeatable)")
    validate.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    listing = commands.add_parser("list", help="registered learners, modules, tasks, models, optimizers, kernels")
    listing.add_argument("kind", nargs="?", help="one kind (default: all)")
    listing.add_argument("--plugin", action="append", default=[], help="also load this plugin file (repeatable)")
    listing.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    sweep = commands.add_parser("sweep", help="train a grid of small classifiers and log their dynamics (metax.dynamics)")
    sweep.add_argument("spec", help="YAML sweep spec (see experiments/dynamics/sweep.yaml)")
    sweep.add_argument("--out", help="sweep folder (default runs/<spec name>)")
    sweep.add_argument("--resume", action="store_true", help="skip the runs the folder already holds")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    compare = commands.add_parser("compare", help="held-out metrics of several runs with 95%% intervals")
    compare.add_argument("run_dirs", nargs="+", help="run folders, or folders of seed runs")
    compare.add_argument("--out", help="where compare.md / .json / .png go (default: the runs' common parent)")
    compare.add_argument("--metric", help="metric to plot (default acc_outer if present, else loss_outer)")
    compare.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def enable_compilation_cache() -> Optional[str]:
    """Keeps compiled programs on disk (JAX's persistent cache), so a resumed or repeated
    run skips most of its compilation. `METAX_COMPILATION_CACHE` sets the folder
    (default ~/.cache/metax/jax) or turns it off ("off"); a folder the user already gave
    JAX is left alone."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    path = os.environ.get("METAX_COMPILATION_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "metax", "jax"))
    if path.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the `metax` command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    enable_compilation_cache()
    try:
        args = _parser().parse_args(argv)
        if args.command is None:
            _parser().print_help()
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except ConfigError as error:
        if debug:
            traceback.print_exc()
        print(f"metax: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except RunError as error:
        if debug:
            traceback.print_exc()
        print(f"metax: run stopped: {error}", file=sys.stderr)
        return EXIT_RUN
    except BrokenPipeError:  # the reader went away (`metax list | head`)
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("metax: interrupted; continue with `metax run CONFIG --out DIR --resume`.", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, or a failure the checks above did not foresee
        if debug:
            raise
        if "RESOURCE_EXHAUSTED" in str(error):  # XLA ran out of memory: the config asks for too much
            print(f"metax: error: out of memory ({str(error).splitlines()[0][:300]}); lower train.meta_batch_size, "
                  "eval.batch_size or the model's size, or use more devices (--devices).", file=sys.stderr)
            return EXIT_USAGE
        print(f"metax: error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


# -- run ---------------------------------------------------------------------------------


def fingerprint(config) -> str:
    from metax.experiment.schema import dump_config

    return hashlib.sha256(dump_config(config).encode()).hexdigest()[:16]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, path + ".")
        elif a != b:
            found.append(f"{path} is {a!r} there, {b!r} here")
    return found


def _prepare_folder(out: str, config, resume: bool) -> bool:
    """Checks that `out` may receive this run and writes its config.yaml.

    Returns:
      True if it holds a run of this config to resume, False for a new run.

    Raises:
      ConfigError: if `out` is a file, holds another run (or other files), or cannot be
        written; nothing in it is changed.
    """
    import yaml

    from metax.experiment.io import write_text_atomic
    from metax.experiment.schema import dump_config

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the run.")
    existing = os.listdir(out) if os.path.isdir(out) else []
    config_path = os.path.join(out, "config.yaml")
    if existing:
        if not os.path.exists(config_path):
            raise ConfigError(f"--out {out} is not empty and holds no metax run; choose a new or empty folder.")
        try:
            with open(config_path) as handle:
                previous = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{config_path} cannot be read ({error}); choose another --out.") from error
        if not resume:
            raise ConfigError(
                f"--out {out} holds a run of {previous.get('name', '?')!r}; pass --resume to continue it, "
                "or choose another --out (nothing was changed)."
            )
        differences = _differences(previous or {}, config.to_dict())
        if differences:
            raise ConfigError(
                f"--resume: {out} holds a run of a different config ({'; '.join(differences[:5])}"
                f"{'; ...' if len(differences) > 5 else ''}); resume with the same config and --set values, "
                "or choose another --out."
            )
        return True
    try:
        os.makedirs(out, exist_ok=True)
        write_text_atomic(config_path, dump_config(config))
    except OSError as error:
        raise ConfigError(f"cannot write the run folder {out}: {error.strerror or error}; choose a writable --out.") from error
    return False


def _load(path: str, overrides: Sequence[str]):
    from metax.experiment.build import build, trace
    from metax.experiment.schema import load_config

    config = load_config(path, overrides)
    experiment = build(config)
    trace(experiment)
    return config, experiment


def _run_one(config, experiment, out: str, resume: bool, progress: bool, debug_nans: bool, plots: bool = True) -> dict:
    import jax

    from metax.experiment.build import describe

    existed = os.path.exists(out)
    created = not (existed and (not os.path.isdir(out) or os.listdir(out)))  # this call fills the folder
    if jax.process_index() == 0:
        resuming = _prepare_folder(out, config, resume)
    else:  # process 0 owns the folder; the others read its checkpoints when resuming
        resuming = resume
    summary_path = os.path.join(out, "summary.json")
    if resuming and os.path.exists(summary_path):
        from metax.experiment.io import read_json

        summary = read_json(summary_path)
        if summary.get("steps") == config.train.steps:
            print(f"{out}: already complete ({summary['steps']} meta-steps); nothing to do.")
            return summary
    print(describe(experiment))
    print(f"run folder {out}" + (" (resuming)" if resuming else ""))
    try:
        result = _train(config, experiment, out, resuming, progress, debug_nans, plots)
    except ConfigError:
        if created and jax.process_index() == 0 and not os.path.exists(os.path.join(out, "metrics.jsonl")):
            # Refused before the first step: leave no half-made run behind.
            for name in os.listdir(out) if existed else []:
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
        raise
    _print_summary(result.summary)
    return result.summary


def _train(config, experiment, out, resuming, progress, debug_nans, plots):
    from metax.experiment.loop import train

    return train(
        experiment.learner,
        experiment.task.sample_task,
        steps=config.train.steps,
        meta_batch_size=config.train.meta_batch_size,
        seed=config.seed,
        eval_sample_task=experiment.eval_task.sample_task,
        eval_tasks=config.eval.tasks,
        eval_steps=experiment.eval_steps,
        eval_every=config.train.eval_every,
        eval_batch_size=config.eval.batch_size,
        out=out,
        chunk=1 if debug_nans else config.train.chunk,
        debug_nans=debug_nans,
        checkpoint_every=config.train.checkpoint_every,
        keep_checkpoints=config.train.keep_checkpoints,
        resume=resuming,
        check_finite=config.train.check_finite,
        progress=progress,
        name=config.name,
        groups=experiment.task.groups,
        fingerprint=fingerprint(config),
        plots=plots,
        plot_tasks=config.eval.plot_tasks,
        devices=config.train.devices,
    )


def _print_summary(summary: dict) -> None:
    from metax.experiment.stats import format_interval

    held = summary["held_out"]
    before = summary.get("held_out_initial") or {}
    for metric in ("loss_outer", "acc_outer"):
        if metric in held:
            line = f"held-out {metric} after {summary['steps']} meta-steps: {format_interval(held[metric])}"
            if metric in before:
                line += f" (before meta-training {format_interval(before[metric])})"
            print(line + f" over {held['tasks']} tasks, {held['adaptation_steps']} adaptation steps")
    rate = summary.get("meta_steps_per_second")
    memory = summary["peak_memory_mib"]
    print(
        f"{rate:.1f} meta-steps/s after {summary['compile_seconds']:.1f} s of compilation; peak memory "
        + ", ".join(f"{kind} {value:.0f} MiB" for kind, value in memory.items())
        if rate
        else "no meta-steps run in this call"
    )
    if summary.get("plots"):
        print("plots: " + ", ".join(summary["plots"]))


def _distributed(args) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`) when asked to."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if all(value is None for value in given):
        return
    if any(value is None for value in given):
        raise ConfigError("multi-host runs need all of --coordinator HOST:PORT, --num-processes and --process-id.")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        raise ConfigError(f"--process-id must lie in [0, {args.num_processes}) and --num-processes be >= 1.")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)


def command_run(args) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}.")
    overrides = list(args.overrides) + ([f"train.devices={args.devices}"] if args.devices is not None else [])
    _distributed(args)
    config, experiment = _load(args.config, overrides)
    out = args.out or os.path.join("runs", config.name)
    if args.seeds == 1:
        _run_one(config, experiment, out, args.resume, not args.no_progress, args.debug_nans, not args.no_plots)
        return 0
    from metax.experiment.build import build

    if os.path.isdir(out) and os.listdir(out) and not args.resume:
        raise ConfigError(f"--out {out} is not empty; pass --resume to continue its seeds, or choose another --out.")
    folders = []
    for offset in range(args.seeds):
        seeded = dataclasses.replace(config, seed=config.seed + offset)
        folder = os.path.join(out, f"seed-{seeded.seed}")
        print(f"== seed {seeded.seed} ({offset + 1}/{args.seeds})")
        experiment = experiment if offset == 0 else build(seeded)
        _run_one(seeded, experiment, folder, args.resume, not args.no_progress, args.debug_nans, not args.no_plots)
        folders.append(folder)
    table = compare_runs([out], out)
    print(table)
    return 0


# -- eval, plot ------------------------------------------------------------------------------


def _open_run(run_dir: str):
    from metax.experiment.run import open_run

    run = open_run(run_dir)
    return run.config, run.experiment, run.meta_state, run.record, run.keys


def command_eval(args) -> int:
    from metax.experiment.io import write_json_atomic
    from metax.experiment.loop import HeldOutEvaluator, sample_held_out
    from metax.experiment.stats import format_interval, interval, markdown_table

    for name in ("tasks", "steps"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "tasks" else 0):
            raise ConfigError(f"--{name} must be >= {2 if name == 'tasks' else 0}, got {value}.")
    config, experiment, meta_state, record, keys = _open_run(args.run_dir)
    num_tasks = args.tasks or config.eval.tasks
    steps = experiment.eval_steps if args.steps is None else args.steps
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, num_tasks, config.eval.batch_size)
    per_task = HeldOutEvaluator(experiment.learner, held_out, steps, keys.eval_adapt, config.eval.batch_size)(meta_state)
    results = {metric: interval(values) for metric, values in per_task.items()}
    rows = [[metric, format_interval(entry), entry["n"]] for metric, entry in results.items()]
    print(f"{args.run_dir} at meta-step {record['step']}, {steps} adaptation steps:")
    print(markdown_table(["metric", "mean ± 95% CI", "tasks"], rows))
    path = os.path.join(args.run_dir, "evals", f"tasks-{num_tasks}_steps-{steps}_step-{record['step']}.json")
    write_json_atomic(path, {"step": record["step"], "tasks": num_tasks, "adaptation_steps": steps, "metrics": results})
    print(f"written {path}")
    return 0


def command_plot(args) -> int:
    from metax.experiment import plots

    config, experiment, meta_state, record, keys = _open_run(args.run_dir)
    from metax.experiment.loop import sample_held_out

    tasks = max(config.eval.plot_tasks, 1)
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, max(tasks, 2), max(tasks, 2))
    paths = plots.plot_run(args.run_dir, learner=experiment.learner, meta_state=meta_state, held_out=held_out,
                           steps=experiment.eval_steps, key=keys.eval_adapt, num_tasks=config.eval.plot_tasks)
    print("\n".join(paths) if paths else "nothing to plot yet")
    return 0


# -- validate, list ----------------------------------------------------------------------------


def command_validate(args) -> int:
    from metax.experiment.build import describe

    config, experiment = _load(args.config, args.overrides)
    print(describe(experiment))
    print(f"{args.config}: valid")
    return 0


def command_list(args) -> int:
    from metax.experiment.registry import KINDS, load_plugin, registry

    for path in args.plugin:
        load_plugin(path)
    kinds = KINDS
    if args.kind is not None:
        kind = args.kind if args.kind.endswith("s") else args.kind + "s"
        if kind not in KINDS:
            from metax.experiment.errors import unknown_name

            raise unknown_name("kind", args.kind, KINDS)
        kinds = (kind,)
    for kind in kinds:
        print(kind)
        for entry in registry(kind).entries():
            origin = "" if entry.source == "metax" else f"  [{os.path.basename(entry.source)}]"
            print(f"  {entry.name:<18} {entry.description}{origin}")
    return 0


# -- compare -----------------------------------------------------------------------------------


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
        os.makedirs(out, exist_ok=True)
        write_text_atomic(os.path.join(out, "compare.md"), table + "\n")
        write_json_atomic(os.path.join(out, "compare.json"), {"runs": groups})
        chosen = metric or ("acc_outer" if "acc_outer" in metrics else "loss_outer")
        if chosen not in metrics:
            raise ConfigError(f"--metric {chosen!r} is not reported by every run; choose one of {metrics}.")
        plot_comparison(groups, chosen, os.path.join(out, "compare.png"))
        table += f"\n\nwritten {os.path.join(out, 'compare.md')}, compare.json, compare.png"
    return table


def command_compare(args) -> int:
    out = args.out or os.path.commonpath([os.path.abspath(p) for p in args.run_dirs])
    print(compare_runs(args.run_dirs, out, args.metric))
    return 0


def command_sweep(args) -> int:
    from metax import dynamics
    from metax.experiment.schema import read_yaml

    data, _ = read_yaml(args.spec)
    try:
        spec = dynamics.SweepSpec.from_dict(data)
    except ValueError as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.spec))[0])
    try:
        result = dynamics.run_sweep(spec, out, resume=args.resume, progress=not args.no_progress)
    except FileExistsError as error:
        raise ConfigError(f"{error} Pass --resume to add the missing runs, or choose another --out.") from error
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    print(f"{out}: trained {len(result.trained)} run(s), {len(result.skipped)} already there, in {result.seconds:.0f} s")
    return 0


COMMANDS = {
    "sweep": command_sweep,
    "run": command_run,
    "eval": command_eval,
    "plot": command_plot,
    "validate": command_validate,
    "list": command_list,
    "compare": command_compare,
}
