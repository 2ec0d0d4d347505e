"""The `metax` command's argument parser: its subcommands and their flags.

Example:
  >>> from metax.experiment.parser import _parser
  >>> _parser().parse_args(["run", "configs/sinusoid-maml.yaml", "--set", "train.steps=5"]).overrides
  ['train.steps=5']
"""

import argparse

from metax.experiment.errors import ConfigError


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
