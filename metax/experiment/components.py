"""What task and model builders return to the runner."""

from typing import Callable, NamedTuple, Optional

import haiku as hk

from metax.data import MetaDataset

LOSSES = ("squared_error", "cross_entropy")


class TaskSpec(NamedTuple):
    """A task distribution as the runner sees it (what a task builder returns).

    Attributes:
      sample_task: `sample_task(key) -> MetaDataset`, pure and jit-able.
      loss: "squared_error" (regression) or "cross_entropy" (integer labels).
      output_dim: the model's output width; None reads it from the targets' last axis.
      groups: `(info_key, names)` when held-out scores should also be broken down by a
        per-sample integer in `info` (e.g. the function family of `family` tasks).

    Example:
      >>> spec = metax.experiment.TaskSpec(metax.data.make_task_sampler("sinusoid", 5, 5))
      >>> spec.loss, spec.output_dim
      ('squared_error', None)
    """

    sample_task: Callable[..., MetaDataset]
    loss: str = "squared_error"
    output_dim: Optional[int] = None
    groups: Optional[tuple[str, tuple[str, ...]]] = None


class ModelFactory(NamedTuple):
    """A network family: `build(output_dim)` gives the network with a readout of that
    width, `build(None)` the network without readout (a body that returns features).

    The built network is `hk.transform_with_state` of `f(x, is_training, gain=None,
    shift=None)` where the model supports gain modulation (`hidden_dims` then gives the
    width of every modulated layer).

    Example:
      >>> factory = metax.experiment.registry("models").get("mlp").target(hidden_dims=(8,))
      >>> isinstance(factory, metax.experiment.ModelFactory), factory.hidden_dims
      (True, (8,))
    """

    build: Callable[[Optional[int]], hk.TransformedWithState]
    hidden_dims: tuple[int, ...] = ()
