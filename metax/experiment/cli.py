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

This module holds the entry point (`main`) and `run` / `resume` / `validate`; the parser
is in `metax.experiment.parser`, the other commands in `evaluate` (eval, plot),
`compare` and `commands` (list, sweep), and the run folder's preparation in `run_folder`.
"""

import dataclasses
import os
import shutil
import sys
import traceback
from typing import Optional, Sequence

from metax.experiment.commands import command_list, command_sweep
from metax.experiment.compare import command_compare, compare_runs
from metax.experiment.errors import ConfigError, RunError
from metax.experiment.evaluate import _draw_plots, command_eval, command_plot
from metax.experiment.parser import _parser
from metax.experiment.run_folder import _prepare_folder
from metax.experiment.signals import install_handlers

EXIT_USAGE = 2
EXIT_RUN = 3
RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints")


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
    from metax.experiment.trainer import train

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
        tensorboard=config.train.tensorboard,
        profile_chunks=config.train.profile_chunks,
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


# -- validate ----------------------------------------------------------------------------------


def command_validate(args) -> int:
    from metax.experiment.build import describe

    config, experiment = _load(args.config, args.overrides)
    print(describe(experiment))
    print(f"{args.config}: valid")
    return 0


# eval, plot: metax.experiment.evaluate; list, sweep: .commands; compare: .compare.
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
