"""Reopening a run folder: its config, the built experiment and the newest meta-state."""

import os
from typing import Any, NamedTuple

import jax

from metax.experiment import checkpoint as ckpt
from metax.experiment.build import Experiment, build
from metax.experiment.errors import ConfigError
from metax.experiment.loop import Keys, run_keys
from metax.experiment.schema import ExperimentConfig, config_from_dict, read_yaml


class Run(NamedTuple):
    """A run folder, reopened."""

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


def open_run(run_dir: str) -> Run:
    """Rebuilds the experiment of a run folder from its `config.yaml` and restores its
    newest checkpoint, e.g. to evaluate or plot it, or to study what it learned.

    Raises:
      ConfigError: if the folder holds no run or no checkpoint yet.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"{run_dir} holds no metax run (no config.yaml); give a folder written by `metax run`.")
    data, _ = read_yaml(config_path)
    announce_plugins(data, config_path)
    try:
        config = config_from_dict(data)
    except ConfigError as error:
        raise ConfigError(f"{config_path}: {error}") from error
    experiment = build(config)
    latest = ckpt.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if latest is None:
        raise ConfigError(f"{run_dir} has no checkpoint yet; run or resume it first.")
    keys = run_keys(config.seed)
    sample_input = jax.jit(experiment.task.sample_task)(keys.data).train.x
    template = experiment.learner.reset(keys.reset, sample_input)
    meta_state, record = ckpt.load_checkpoint(latest, template)
    return Run(config, experiment, jax.device_put(meta_state), record, keys)
