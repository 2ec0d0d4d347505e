"""The `metax` command: run, evaluate, plot, validate, list and compare experiments.

    metax run CONFIG.yaml [--set key=value ...] [--out DIR] [--resume] [--seeds N]
    metax resume RUN_DIR [--set train.steps=N ...]
    metax eval RUN_DIR [--tasks N] [--steps K] [--set eval.KEY=VALUE ...] [--omniglot-runs PATH]
    metax plot RUN_DIR
    metax validate CONFIG.yaml [--set key=value ...]
    metax list [learners|modules|tasks|models|optimizers|kernels] [--plugin FILE]
    metax compare RUN_DIR ... [--out DIR] [--metric NAME]
    metax sweep SPEC.yaml [--out DIR] [--resume]

Exit status: 0 done; 2 bad input (a config, an argument, a folder), with a one-paragraph
message and no traceback unless `--debug`; 3 a run stopped on a non-finite value; 130 /
143 stopped by SIGINT / SIGTERM after saving a checkpoint (the message prints the
`metax resume` command that continues it).
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
from metax.experiment.signals import Interrupted, install_handlers

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

    resume = commands.add_parser("resume", help="continue a run folder (or a --seeds folder) with its own config")
    resume.add_argument("run_dir", help="a folder written by `metax run`")
    resume.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a safe change: train.steps=N (more steps), or learning rates after a non-finite stop")
    for flag, text in (("--no-progress", "no progress bar"), ("--no-plots", "write no plots"),
                       ("--debug-nans", "step by step with jax_debug_nans")):
        resume.add_argument(flag, action="store_true", help=text)
    resume.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    evaluate = commands.add_parser("eval", help="score a run's newest checkpoint on held-out tasks")
    evaluate.add_argument("run_dir", help="a run folder written by metax run")
    evaluate.add_argument("--tasks", type=int, help="held-out tasks (default: the run's eval.tasks)")
    evaluate.add_argument("--steps", type=int, help="adaptation steps (default: the run's eval steps)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.KEY=VALUE",
                          help="score other held-out tasks, e.g. --set eval.task.ways=20 --set eval.task.held_out=test")
    evaluate.add_argument("--omniglot-runs", metavar="PATH",
                          help="score Lake et al.'s 20 one-shot runs (all_runs.zip or its folder) instead of held-out tasks")
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
    compare.add_argument("--out", help="a new or empty folder for compare.md / .json / .png (default: print only)")
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
    code = _main(argv)
    if code != 0 and _JOINED[0]:
        # A failed process of a multi-process run (often: a peer died and a collective
        # failed) would wait in JAX's shutdown barrier for the dead peer, then abort with
        # SIGABRT: leave now, with the message already printed and the status it earned.
        print("metax: this process of a multi-process run stops now; if another process died, its log says why.",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


_JOINED = [False]  # whether this process joined a multi-process run (jax.distributed)


def _main(argv: Optional[Sequence[str]]) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    enable_compilation_cache()
    install_handlers()
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
    except KeyboardInterrupt as error:
        return _interrupted(error)
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
    """The fingerprint checkpoints of `config` are written under (see `resume.fingerprints`)."""
    from metax.experiment.resume import fingerprints

    return fingerprints(config.to_dict())[0]


def _untrained(out: str, entries: list[str]) -> bool:
    """A run that ended before its first checkpoint or metric row (a crash, a kill, a bad
    setting found late): nothing in it is worth keeping, so a rerun may start it afresh."""
    from metax.experiment import checkpoint as ckpt

    checkpoints = os.path.join(out, "checkpoints")
    if os.path.isdir(checkpoints) and any(not n.endswith(".tmp") and ".tmp-" not in n for n in os.listdir(checkpoints)):
        return False
    known = {"config.yaml", "checkpoints", "metrics.jsonl", "metrics.csv", "eval.jsonl", "eval.csv", "run_log.jsonl"}
    empty = lambda name: not os.path.exists(os.path.join(out, name)) or os.path.getsize(os.path.join(out, name)) == 0
    return set(entries) <= known and empty("metrics.jsonl") and not ckpt.list_checkpoints(checkpoints)


def _prepare_folder(out: str, config, resume: bool) -> tuple[bool, Optional[dict]]:
    """Checks that `out` may receive this run and writes its config.yaml (the caller
    holds the folder's lock).

    Returns:
      `(resuming, recorded)`: True and the recorded config if it holds a run of this
      config to resume (with accepted changes written into its config.yaml and log),
      False and None for a new run.

    Raises:
      ConfigError: if `out` is a file, holds another run (or other files), or cannot be
        written; nothing in it is changed.
    """
    import yaml

    from metax.experiment.folders import contents, log_event
    from metax.experiment.io import write_text_atomic
    from metax.experiment.resume import resume_changes
    from metax.experiment.schema import dump_config

    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the run.")
    existing = contents(out)
    config_path = os.path.join(out, "config.yaml")
    if existing and _untrained(out, existing):
        for name in existing:  # only files a run writes, none with a step in it
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        print(f"{out}: the run recorded there ended before its first step; starting it afresh.")
        existing = []
    if existing:
        if not os.path.exists(config_path):
            raise ConfigError(f"--out {out} is not empty and holds no metax run; choose a new or empty folder.")
        try:
            with open(config_path) as handle:
                previous = yaml.safe_load(handle)
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"{config_path} cannot be read ({error}); choose another --out.") from error
        if not isinstance(previous, dict):
            raise ConfigError(f"{config_path} is not a metax run config; choose another --out.")
        if not resume:
            raise ConfigError(
                f"--out {out} holds a run of {previous.get('name', '?')!r}; pass --resume to continue it, "
                "or choose another --out (nothing was changed)."
            )
        changes = resume_changes(out, previous, config.to_dict())
        if changes:
            write_text_atomic(config_path, dump_config(config))
            log_event(out, "resume", changes=changes)
            print(f"{out}: resuming with " + ", ".join(f"{c['key']} {c['from']} -> {c['to']}" for c in changes))
        return True, previous
    try:
        os.makedirs(out, exist_ok=True)
        write_text_atomic(config_path, dump_config(config))
    except OSError as error:
        raise ConfigError(f"cannot write the run folder {out}: {error.strerror or error}; choose a writable --out.") from error
    return False, None


def _load(path: str, overrides: Sequence[str]):
    from metax.experiment.build import build, trace
    from metax.experiment.schema import load_config

    config = load_config(path, overrides)
    experiment = build(config)
    trace(experiment)
    return config, experiment


def _run_one(config, experiment, out: str, resume: bool, progress: bool, debug_nans: bool, plots: bool = True) -> dict:
    """Runs (or resumes) one run into `out`, holding the folder's lock throughout."""
    import contextlib

    import jax

    from metax.experiment.folders import FolderLock, contents

    if jax.process_index() != 0:  # process 0 owns the folder; the others read its checkpoints when resuming
        return _run_locked(config, experiment, out, resume, resume, None, progress, debug_nans, plots)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the run.")
    existed, entries = os.path.exists(out), contents(out)
    if entries and "config.yaml" not in entries:  # not ours: do not even place a lock file there
        raise ConfigError(f"--out {out} is not empty and holds no metax run; choose a new or empty folder.")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot write the run folder {out}: {error.strerror or error}; choose a writable --out.") from error
    lock = FolderLock(out)
    try:
        with lock:
            resuming, recorded = _prepare_folder(out, config, resume)
            return _run_locked(config, experiment, out, resuming, resume, recorded, progress, debug_nans, plots)
    except ConfigError:
        if not entries and not os.path.exists(os.path.join(out, "config.yaml")):
            # Refused before anything was written: leave the folder as it was.
            with contextlib.suppress(OSError):
                os.unlink(lock.path)
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _run_locked(config, experiment, out, resuming, resume, recorded, progress, debug_nans, plots) -> dict:
    import jax

    from metax.experiment.build import describe
    from metax.experiment.folders import log_event
    from metax.experiment.resume import fingerprints, lower_rate_command

    primary = jax.process_index() == 0
    summary_path = os.path.join(out, "summary.json")
    if resuming and os.path.exists(summary_path):
        summary = _read_summary(summary_path)
        if summary.get("steps") == config.train.steps:
            if plots and "plots" not in summary and primary:  # stopped while drawing them: finish
                summary["plots"] = _draw_plots(out)
                from metax.experiment.io import write_json_atomic

                write_json_atomic(summary_path, summary)
                print(f"{out}: complete ({summary['steps']} meta-steps); drew the missing plots.")
                return summary
            print(f"{out}: already complete ({summary['steps']} meta-steps); nothing to do.")
            return summary
    print(describe(experiment))
    print(f"run folder {out}" + (" (resuming)" if resuming else ""))
    accepted = fingerprints(config.to_dict(), recorded)
    try:
        result = _train(config, experiment, out, resuming, progress, debug_nans, plots, accepted)
    except ConfigError:
        if not resuming and primary and not os.path.exists(os.path.join(out, "metrics.jsonl")):
            # Refused before the first step: leave no half-made run behind.
            for name in os.listdir(out):
                path = os.path.join(out, name)
                if name != ".metax.lock":
                    shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        raise
    except RunError as error:
        if primary:
            log_event(out, "nonfinite", message=str(error))
        raise RunError(f"{error} To resume with lower learning rates: {lower_rate_command(out, config.to_dict())}") from error
    except KeyboardInterrupt as error:  # Interrupted (a checkpoint saved), or Ctrl-C while plotting
        if primary:
            log_event(out, "interrupted", signal=getattr(error, "name", "SIGINT"), step=getattr(error, "step", None),
                      checkpoint=getattr(error, "checkpoint", None))
        error.folder = out
        raise
    _print_summary(result.summary)
    return result.summary


def _read_summary(path: str) -> dict:
    from metax.experiment.io import read_json

    summary = read_json(path)  # a damaged file: a ConfigError naming it
    if not isinstance(summary, dict):
        raise ConfigError(f"{path} is not a metax summary.")
    return summary


def _train(config, experiment, out, resuming, progress, debug_nans, plots, accepted=None):
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
        fingerprint=accepted or fingerprint(config),
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
    # A peer that dies must not leave the others in a barrier for minutes (JAX's defaults:
    # 100 s without heartbeats, 300 s at shutdown) before they abort: fail within ~20 s.
    timeout = int(os.environ.get("METAX_DISTRIBUTED_TIMEOUT", "20"))
    jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id,
                               heartbeat_timeout_seconds=timeout, shutdown_timeout_seconds=timeout)
    _JOINED[0] = True


def _default_out(name: str) -> str:
    """runs/<name>, refusing a name that would leave runs/ (`../x`, `a/b`, an absolute path)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or os.sep in name or name.startswith("~"):
        raise ConfigError(
            f"name {name!r} is not a plain folder name, so runs/<name> would lie elsewhere; "
            "use letters, digits, '-' and '_', or give --out."
        )
    return os.path.join("runs", name)


def command_run(args) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}.")
    overrides = list(args.overrides) + ([f"train.devices={args.devices}"] if args.devices is not None else [])
    _distributed(args)
    config, experiment = _load(args.config, overrides)
    out = args.out or _default_out(config.name)
    if args.seeds == 1:
        _run_one(config, experiment, out, args.resume, not args.no_progress, args.debug_nans, not args.no_plots)
        return 0
    return _run_seeds(config, experiment, out, args.seeds, args.resume, args)


def _run_seeds(config, experiment, out: str, seeds: int, resume: bool, args) -> int:
    """Seeds seed, seed+1, ... into out/seed-<k>, then their comparison into out."""
    from metax.experiment.build import build
    from metax.experiment.folders import check_output, is_seeds

    if check_output(out, f"--out {out}", is_seeds, "a folder of seed runs") and not resume:
        raise ConfigError(f"--out {out} holds seed runs; pass --resume to continue them, or choose another --out.")
    try:
        for offset in range(seeds):
            seeded = dataclasses.replace(config, seed=config.seed + offset)
            folder = os.path.join(out, f"seed-{seeded.seed}")
            print(f"== seed {seeded.seed} ({offset + 1}/{seeds})")
            experiment = experiment if offset == 0 else build(seeded)
            _run_one(seeded, experiment, folder, resume, not args.no_progress, args.debug_nans, not args.no_plots)
    except KeyboardInterrupt as error:
        error.folder = out  # `metax resume` of the seeds folder continues every seed
        raise
    print(compare_runs([out], out))
    return 0


def command_resume(args) -> int:
    """`metax resume RUN_DIR`: the folder's own config, with safe `--set` changes."""
    from metax.experiment.build import build, trace
    from metax.experiment.folders import contents, is_run, is_seeds
    from metax.experiment.run import read_run_config

    folder = args.run_dir
    args.out, args.resume = folder, True
    if is_run(folder):
        config = read_run_config(folder, args.overrides)
        experiment = build(config)
        trace(experiment)
        _run_one(config, experiment, folder, True, not args.no_progress, args.debug_nans, not args.no_plots)
        return 0
    if is_seeds(folder):
        seeds = sorted((e for e in contents(folder) if e.startswith("seed-")), key=lambda e: int(e[5:]) if e[5:].isdigit() else 0)
        try:
            for name in seeds:
                print(f"== {name}")
                config = read_run_config(os.path.join(folder, name), args.overrides)
                experiment = build(config)
                trace(experiment)
                _run_one(config, experiment, os.path.join(folder, name), True, not args.no_progress, args.debug_nans,
                         not args.no_plots)
        except KeyboardInterrupt as error:
            error.folder = folder
            raise
        print(compare_runs([folder], folder))
        return 0
    raise ConfigError(f"{folder} holds no metax run (no config.yaml, no seed-<k> runs); give a folder written by `metax run`.")


def _interrupted(error: KeyboardInterrupt) -> int:
    """The message and exit status of a run stopped by SIGINT (130) or SIGTERM (143)."""
    import shlex

    signal_name = getattr(error, "name", "SIGINT")
    code = getattr(error, "exit_code", 130)
    folder = getattr(error, "folder", None)
    command = getattr(error, "command", None) or (f"metax resume {shlex.quote(folder)}" if folder else None)
    step, checkpoint = getattr(error, "step", None), getattr(error, "checkpoint", None)
    where = f" at meta-step {step}" if step is not None else ""
    saved = f"; checkpoint {checkpoint} holds the state" if checkpoint else ""
    then = f"; continue with: {command}" if command else "; nothing to resume"
    print(f"metax: stopped by {signal_name}{where}{saved}{then}", file=sys.stderr)
    return code


def _draw_plots(run_dir: str) -> list[str]:
    """Draws a run folder's plots from its newest checkpoint; returns their paths."""
    from metax.experiment import plots
    from metax.experiment.loop import sample_held_out

    config, experiment, meta_state, record, keys = _open_run(run_dir)
    tasks = max(config.eval.plot_tasks, 1)
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, max(tasks, 2), max(tasks, 2))
    return plots.plot_run(run_dir, learner=experiment.learner, meta_state=meta_state, held_out=held_out,
                          steps=experiment.eval_steps, key=keys.eval_adapt, num_tasks=config.eval.plot_tasks)


# -- eval, plot ------------------------------------------------------------------------------


def _open_run(run_dir: str, overrides=()):
    from metax.experiment.run import open_run

    run = open_run(run_dir, overrides)
    return run.config, run.experiment, run.meta_state, run.record, run.keys


def command_eval(args) -> int:
    from metax.experiment.io import write_json_atomic
    from metax.experiment.loop import HeldOutEvaluator, sample_held_out
    from metax.experiment.stats import format_interval, interval, markdown_table

    for name in ("tasks", "steps"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "tasks" else 0):
            raise ConfigError(f"--{name} must be >= {2 if name == 'tasks' else 0}, got {value}.")
    config, experiment, meta_state, record, keys = _open_run(args.run_dir, args.overrides)
    if args.omniglot_runs:
        return _eval_omniglot_runs(args, config, experiment, meta_state, record, keys)
    num_tasks = args.tasks or config.eval.tasks
    steps = experiment.eval_steps if args.steps is None else args.steps
    held_out = sample_held_out(keys.eval_tasks, experiment.eval_task.sample_task, num_tasks, config.eval.batch_size)
    per_task = HeldOutEvaluator(experiment.learner, held_out, steps, keys.eval_adapt, config.eval.batch_size)(meta_state)
    results = {metric: interval(values) for metric, values in per_task.items()}
    rows = [[metric, format_interval(entry), entry["n"]] for metric, entry in results.items()]
    print(f"{args.run_dir} at meta-step {record['step']}, {steps} adaptation steps:")
    print(markdown_table(["metric", "mean ± 95% CI", "tasks"], rows))
    tag = _override_tag(args.overrides)
    path = os.path.join(args.run_dir, "evals", f"tasks-{num_tasks}_steps-{steps}_step-{record['step']}{tag}.json")
    write_json_atomic(path, {"step": record["step"], "tasks": num_tasks, "adaptation_steps": steps, "metrics": results,
                             "overrides": list(args.overrides)})
    print(f"written {path}")
    return 0


def _override_tag(overrides) -> str:
    """A file-name suffix that tells evaluations with different `--set` values apart."""
    if not overrides:
        return ""
    text = "_".join(o.removeprefix("eval.").removeprefix("task.") for o in overrides)
    return "_" + "".join(c if c.isalnum() or c in "=-." else "-" for c in text)[:80]


def _eval_omniglot_runs(args, config, experiment, meta_state, record, keys) -> int:
    """`metax eval RUN --omniglot-runs PATH`: Lake et al.'s 20 within-alphabet 20-way 1-shot
    runs, each adapted from the run's meta-learned state exactly like a held-out task."""
    import numpy as np

    import metax
    from metax.experiment.io import write_json_atomic
    from metax.experiment.loop import HeldOutEvaluator
    from metax.experiment.stats import markdown_table

    if experiment.task.loss != "cross_entropy" or experiment.output_dim < metax.data.omniglot_runs.RUN_WAYS:
        raise ConfigError(
            f"--omniglot-runs scores 20-way classification, but {args.run_dir} was trained for "
            f"{experiment.output_dim} outputs ({experiment.task.loss}); train with task.ways >= 20."
        )
    size = int(config.task.get("image_size") or experiment.input_shape[0])
    if experiment.input_shape[:2] != (size, size) or experiment.input_shape[-1] != 1:
        raise ConfigError(f"--omniglot-runs needs a run on square one-channel images; {args.run_dir} takes {experiment.input_shape}.")
    try:
        runs = metax.data.load_lake_runs(args.omniglot_runs, size=size)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"--omniglot-runs: {error}") from error
    steps = experiment.eval_steps if args.steps is None else args.steps
    per_task = HeldOutEvaluator(experiment.learner, runs.tasks, steps, keys.eval_adapt, len(runs.names))(meta_state)
    score = metax.data.lake_score(1.0 - per_task["acc_outer"])
    rows = [[name, f"{100 * e:.0f}"] for name, e in zip(runs.names, score.per_run)]
    print(f"{args.run_dir} at meta-step {record['step']}, {steps} adaptation steps, Lake's {len(runs.names)} one-shot runs:")
    print(markdown_table(["run", "error %"], rows))
    print(f"mean error {100 * score.mean:.1f} ± {100 * score.ci95:.1f} % (95% interval over runs); published: "
          + ", ".join(f"{k} {v}" for k, v in metax.data.PUBLISHED_LAKE_ERRORS.items()))
    path = os.path.join(args.run_dir, "evals", f"omniglot-runs_steps-{steps}_step-{record['step']}.json")
    write_json_atomic(path, {
        "step": record["step"], "adaptation_steps": steps, "runs": list(runs.names),
        "error_per_run": score.per_run.tolist(), "error_mean": score.mean, "error_ci95": score.ci95,
        "source": os.path.abspath(args.omniglot_runs),
    })
    print(f"written {path}")
    return 0


def command_plot(args) -> int:
    paths = _draw_plots(args.run_dir)
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


def command_sweep(args) -> int:
    from metax import dynamics
    from metax.experiment.schema import read_yaml

    data, _ = read_yaml(args.spec)
    try:
        spec = dynamics.SweepSpec.from_dict(data)
    except ValueError as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    from metax.experiment.folders import check_output, is_sweep
    from metax.experiment.signals import StopRequests

    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.spec))[0])
    check_output(out, f"--out {out}", is_sweep, "a metax sweep")
    try:
        # Signals are noted and acted on between epochs, when no computation is in flight.
        with StopRequests() as stop:
            result = dynamics.run_sweep(spec, out, resume=args.resume, progress=not args.no_progress,
                                        on_epoch=lambda epoch: stop.check())
    except Interrupted as error:
        import shlex

        error.command = f"metax sweep {shlex.quote(args.spec)} --out {shlex.quote(out)} --resume"
        raise
    except FileExistsError as error:
        raise ConfigError(f"{error} Pass --resume to add the missing runs, or choose another --out.") from error
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"{args.spec}: {error}") from error
    print(f"{out}: trained {len(result.trained)} run(s), {len(result.skipped)} already there, in {result.seconds:.0f} s")
    return 0


COMMANDS = {
    "sweep": command_sweep,
    "run": command_run,
    "resume": command_resume,
    "eval": command_eval,
    "plot": command_plot,
    "validate": command_validate,
    "list": command_list,
    "compare": command_compare,
}
