"""From a checked config to library objects: the task samplers, the module, the learner.

The library never reads a config; this is the one place that turns one into plain
constructor calls. Everything is traced abstractly (`jax.eval_shape`) before a run, so
a shape that does not fit fails here, before anything compiles.
"""

import dataclasses
from typing import Callable

import jax

import metax.data
import metax.energy
import metax.learner
from metax.data import MetaDataset
from metax.experiment.components import LOSSES, ModelFactory, TaskSpec
from metax.experiment.errors import ConfigError
from metax.experiment.schema import ExperimentConfig, build_component


@dataclasses.dataclass
class Experiment:
    """A built experiment: what `metax.experiment.train` needs, and where it came from.

    Example:
      >>> import pathlib
      >>> path = pathlib.Path(metax.__file__).resolve().parents[1] / "configs" / "sinusoid-maml.yaml"
      >>> experiment = metax.experiment.build(metax.experiment.load_config(str(path)))
      >>> isinstance(experiment, metax.experiment.Experiment), experiment.task.loss
      (True, 'squared_error')
    """

    config: ExperimentConfig
    learner: metax.learner.MetaLearner
    task: TaskSpec  # meta-training tasks
    eval_task: TaskSpec  # held-out tasks (the task's test split, with eval.task overrides)
    model: ModelFactory
    input_shape: tuple[int, ...]
    output_dim: int

    @property
    def eval_steps(self) -> int:
        steps = self.config.eval.steps
        return self.learner.steps_inner if steps is None else steps


def _loss(name: str) -> Callable[[], metax.energy.EnergyFunction]:
    if name == "squared_error":
        return metax.energy.SquaredError
    if name == "cross_entropy":
        return metax.energy.CrossEntropy
    raise ConfigError(f"task loss {name!r} is not one of {LOSSES}.")


def _task(config: ExperimentConfig, split: str) -> TaskSpec:
    resolved = config.task if split == "train" else {**config.task, **config.eval.task}
    path = "task" if split == "train" else "eval.task"
    spec = build_component(resolved, ("tasks",), {"split": lambda: split}, path)
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"{path}: the task builder {resolved['name']!r} must return a metax.experiment.TaskSpec, got {type(spec).__name__}.")
    try:
        example = jax.eval_shape(spec.sample_task, jax.random.PRNGKey(0))
    except Exception as error:
        raise ConfigError(f"{path} ({resolved['name']}): drawing a task failed: {error}") from error
    if not isinstance(example, MetaDataset):
        raise ConfigError(f"{path} ({resolved['name']}): sample_task must return a metax.data.MetaDataset, got {type(example).__name__}.")
    return spec


def build(config: ExperimentConfig) -> Experiment:
    """Builds the task samplers, model, module and learner of a checked config.

    Raises:
      ConfigError: naming the section whose builder (or the library) refused it.

    Example:
      >>> import pathlib
      >>> path = pathlib.Path(metax.__file__).resolve().parents[1] / "configs" / "sinusoid-maml.yaml"
      >>> experiment = metax.experiment.build(metax.experiment.load_config(str(path)))
      >>> type(experiment.learner).__name__, experiment.eval_steps
      ('ModelAgnosticMetaLearning', 5)
    """
    task = _task(config, "train")
    eval_task = _task(config, "test")
    example = jax.eval_shape(task.sample_task, jax.random.PRNGKey(0))
    input_shape = tuple(example.train.x.shape[1:])
    targets = example.train.y
    output_dim = task.output_dim or (targets.shape[-1] if len(targets.shape) > 1 else 1)

    model = build_component(config.model, ("models",), {}, "model")
    if not isinstance(model, ModelFactory):
        raise ConfigError(f"model: the builder {config.model['name']!r} must return a metax.experiment.ModelFactory, got {type(model).__name__}.")
    loss = _loss(task.loss)
    module_context = {
        "loss_fn_inner": loss,
        "loss_fn_outer": loss,
        "base_learner": lambda: model.build(output_dim),
        "base_model": lambda: model.build(output_dim),
        "body": lambda: model.build(None),
        "hidden_dims": lambda: list(model.hidden_dims),
        "output_dim": lambda: output_dim,
        "input_shape": lambda: input_shape,
    }
    meta_model = build_component(config.module, ("modules",), module_context, "module")
    learner_context = {"meta_model": lambda: meta_model, "input_shape": lambda: input_shape}
    learner = build_component(config.learner, ("learners",), learner_context, "learner")
    return Experiment(config, learner, task, eval_task, model, input_shape, output_dim)


def trace(experiment: Experiment) -> None:
    """Traces reset, update and eval abstractly (no compilation, no compute), so shape
    and pairing errors surface before a run starts.

    Raises:
      ConfigError: with the library's message.
    """
    learner = experiment.learner
    config = experiment.config
    from metax.experiment.loop import _mesh, jitted_update, watched_metrics

    _mesh(config.train.devices, config.train.meta_batch_size)  # device count and split, before any run
    try:
        batch = jax.eval_shape(
            lambda key: metax.data.sample_metabatch(key, experiment.task.sample_task, config.train.meta_batch_size),
            jax.random.PRNGKey(0),
        )
        check_fits_memory(batch, config.train.meta_batch_size, config.eval.tasks)
        sample_input = jax.ShapeDtypeStruct(batch.train.x.shape[1:], batch.train.x.dtype)
        meta_state = jax.eval_shape(learner.reset, jax.random.PRNGKey(0), sample_input)
        # Through the runner's jitted update: the run's own trace of it is then a cache hit.
        metrics = jax.eval_shape(jitted_update(learner), jax.random.PRNGKey(0), meta_state, batch)[1]
        watched_metrics(metrics, config.train.check_finite)  # the names `run` checks, checked by `validate` too
        if config.train.tensorboard:  # its package, before `run` starts
            from metax.experiment.actions import summary_writer_class

            summary_writer_class()
    except ConfigError:
        raise
    except Exception as error:  # the library's own message, attributed to the config
        raise ConfigError(
            f"{config.learner['name']} with {config.module['name']} on {config.task['name']}: {type(error).__name__}: {error}"
        ) from error


def available_memory_bytes() -> int:
    """The memory one device can hold: an accelerator's limit, else the host's RAM."""
    import os

    stats = getattr(jax.local_devices()[0], "memory_stats", lambda: None)()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits_memory(batch: jax.ShapeDtypeStruct, meta_batch_size: int, eval_tasks: int) -> None:
    """Refuses a meta-batch, or a held-out set, whose data alone would take more than half
    the memory (the learner's activations come on top): XLA would fail mid-run with a raw
    RESOURCE_EXHAUSTED, or the host would swap.

    Args:
      batch: the abstract meta-batch (shapes only).
      meta_batch_size: tasks in it; eval_tasks: held-out tasks (data of the same size each).

    Raises:
      ConfigError: naming the key to lower.
    """
    per_task = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(batch)) / max(meta_batch_size, 1)
    budget = available_memory_bytes() / 2
    for key, tasks in (("train.meta_batch_size", meta_batch_size), ("eval.tasks", eval_tasks)):
        if per_task * tasks > budget:
            raise ConfigError(
                f"{key}={tasks:,}: the tasks' data alone would take {per_task * tasks / 2**30:,.1f} GiB, more than "
                f"half of the {2 * budget / 2**30:,.1f} GiB this device has; lower {key} "
                f"(at most about {int(budget // per_task):,} tasks here)."
            )


def describe(experiment: Experiment) -> str:
    """One line per component, for `metax validate` and the start of a run."""
    config = experiment.config
    count = lambda tree: sum(getattr(leaf, "size", 1) for leaf in jax.tree_util.tree_leaves(tree))
    sample = jax.ShapeDtypeStruct((2, *experiment.input_shape), jax.numpy.float32)
    hparams = jax.eval_shape(experiment.learner.reset, jax.random.PRNGKey(0), sample).hparams
    return "\n".join(
        [
            f"task     {config.task['name']}: inputs {experiment.input_shape}, outputs {experiment.output_dim}, loss {experiment.task.loss}",
            f"model    {config.model['name']}",
            f"module   {config.module['name']} ({type(experiment.learner.meta_model).__name__}): {count(hparams):,} meta-parameters",
            f"learner  {config.learner['name']} ({type(experiment.learner).__name__}), {experiment.learner.steps_inner} inner steps",
            f"train    {config.train.steps} meta-steps x {config.train.meta_batch_size} tasks; held-out {config.eval.tasks} tasks, {experiment.eval_steps} adaptation steps",
        ]
    )
