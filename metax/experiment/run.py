"""Reopening a run folder: its config, the built experiment and the newest meta-state."""

import os
from typing import Any, NamedTuple, Sequence

import jax

from metax.experiment import checkpoint as ckpt
from metax.experiment.build import Experiment, build
from metax.experiment.errors import ConfigError
from metax.experiment.loop import Keys, run_keys
from metax.experiment.schema import ExperimentConfig, apply_overrides, config_from_dict, read_yaml


class Run(NamedTuple):
    """A run folder, reopened."""

    config: ExperimentConfig
    experiment: Experiment
    meta_state: Any  # the newest checkpoint's MetaLearnerState
    record: dict  # that checkpoint's record (step, seed, ...)
    keys: Keys  # the run's PRNG keys (held-out tasks, adaptation)


def open_run(run_dir: str, eval_overrides: Sequence[str] = ()) -> Run:
    """Rebuilds the experiment of a run folder from its `config.yaml` and restores its
    newest checkpoint, e.g. to evaluate or plot it, or to study what it learned.

    `eval_overrides` (`"eval.task.ways=20"`, ...) change how held-out tasks are drawn and
    scored (keys under `eval.` only: the training task, model and learner stay the run's).

    Raises:
      ConfigError: if the folder holds no run or no checkpoint yet.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"{run_dir} holds no metax run (no config.yaml); give a folder written by `metax run`.")
    data, _ = read_yaml(config_path)
    for override in eval_overrides:
        if not override.split("=", 1)[0].strip().startswith("eval."):
            raise ConfigError(
                f"--set {override}: only eval.* keys can change when scoring a finished run "
                "(e.g. eval.task.ways=20, eval.tasks=600)."
            )
    data = apply_overrides(data, list(eval_overrides))
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
