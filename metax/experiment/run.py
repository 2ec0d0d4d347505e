"""Reopening a run folder: its config, the built experiment and the newest meta-state."""

import os
from typing import Any, NamedTuple, Sequence

import jax

from metax.experiment import checkpoint as ckpt
from metax.experiment.build import Experiment, build
from metax.experiment.errors import ConfigError
from metax.experiment.loop import Keys, run_keys
from metax.experiment.schema import ExperimentConfig, apply_overrides, parse_config, read_yaml


class Run(NamedTuple):
    """A run folder, reopened.

    `open_run` returns one; its fields, in order:

    Example:
      >>> metax.experiment.Run._fields
      ('config', 'experiment', 'meta_state', 'record', 'keys')
    """

    config: ExperimentConfig
    experiment: Experiment
    meta_state: Any  # the newest checkpoint's MetaLearnerState
    record: dict  # that checkpoint's record (step, seed, ...)
    keys: Keys  # the run's PRNG keys (held-out tasks, adaptation)


def announce_plugins(data: Any, config_path: str) -> None:
    """Says on stderr which plugin files a run folder's config makes metax import.

    A plugin is Python code: `eval` and `plot` of a folder someone else wrote run it, so
    the user sees what is executed before it is.

    Example:
      >>> announce_plugins({"plugins": ["/abs/my_learner.py"]}, "runs/x/config.yaml")  # doctest: +SKIP
      metax: runs/x/config.yaml loads plugin code: /abs/my_learner.py
    """
    plugins = data.get("plugins") if isinstance(data, dict) else None
    if plugins:
        import sys

        shown = ", ".join(map(str, plugins)) if isinstance(plugins, list) else repr(plugins)
        print(f"metax: {config_path} loads plugin code: {shown}", file=sys.stderr)


def open_run(run_dir: str, eval_overrides: Sequence[str] = ()) -> Run:
    """Rebuilds the experiment of a run folder from its `config.yaml` and restores its
    newest checkpoint, e.g. to evaluate or plot it, or to study what it learned.

    A run still training may prune a checkpoint while it is read, and a damaged newest
    checkpoint is skipped (and named on stderr): the newest intact one is used.
    `eval_overrides` (`"eval.task.ways=20"`, ...) change how held-out tasks are drawn and
    scored (keys under `eval.` only: the training task, model and learner stay the run's).

    Raises:
      ConfigError: if the folder holds no run or no intact checkpoint yet.

    Example:
      >>> import os, tempfile
      >>> folder = tempfile.mkdtemp()
      >>> try:
      ...     metax.experiment.open_run(folder)
      ... except metax.experiment.ConfigError as error:
      ...     print(str(error).replace(folder, "<folder>"))
      <folder> holds no metax run (no config.yaml); give a folder written by `metax run`.
      >>> with open(os.path.join(folder, "config.yaml"), "w") as f:
      ...     _ = f.write("seed: 0")
      >>> try:  # only eval.* keys may change when reopening a run
      ...     metax.experiment.open_run(folder, ["train.steps=5"])
      ... except metax.experiment.ConfigError as error:
      ...     print(error)
      --set train.steps=5: only eval.* keys can change when scoring a finished run (e.g. eval.task.ways=20, eval.tasks=600).
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"{run_dir} holds no metax run (no config.yaml); give a folder written by `metax run`.")
    for override in eval_overrides:
        if not override.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(
                f"--set {override}: only eval.* keys can change when scoring a finished run "
                "(e.g. eval.task.ways=20, eval.tasks=600)."
            )
    config = read_run_config(run_dir, eval_overrides)
    experiment = build(config)
    keys = run_keys(config.seed)
    sample_input = jax.jit(experiment.task.sample_task)(keys.data).train.x
    template = experiment.learner.reset(keys.reset, sample_input)
    restored = ckpt.restore_latest(os.path.join(run_dir, "checkpoints"), template)  # a reader: moves nothing
    if restored is None:
        raise ConfigError(f"{run_dir} has no checkpoint yet; run or resume it first.")
    return Run(config, experiment, jax.device_put(restored.tree), restored.record, keys)


def read_run_config(run_dir: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The config a run folder recorded (`config.yaml`), with `overrides` applied.

    Its plugins resolve the same way in every command: a recorded path as written when
    it exists (`metax run` records absolute ones), else the file of that name in the
    run folder (a folder copied with its plugins), else relative to the run folder.

    Raises:
      ConfigError: naming config.yaml if it is missing or invalid.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"{run_dir} holds no metax run (no config.yaml); give a folder written by `metax run`.")
    data, _ = read_yaml(config_path)
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path} is not a metax run config (a mapping); give a folder written by `metax run`.")
    data = apply_overrides(data, list(overrides))
    plugins = data.get("plugins") or []
    if isinstance(plugins, list):
        data["plugins"] = [_plugin_path(run_dir, p) if isinstance(p, str) else p for p in plugins]
    announce_plugins(data, config_path)
    try:
        return parse_config(data, base_dir=run_dir)
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error


def _plugin_path(run_dir: str, path: str) -> str:
    if os.path.isabs(path) and os.path.isfile(path):
        return path
    beside = os.path.join(run_dir, os.path.basename(path))
    if os.path.isfile(beside):
        return os.path.abspath(beside)
    return os.path.abspath(os.path.join(run_dir, path))
