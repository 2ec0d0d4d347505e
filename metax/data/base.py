"""The data contract: `Dataset(x, y, info)` and `MetaDataset(train, test)` pytrees.

A single task's dataset has a leading sample axis on every leaf: `x` is
`(samples, *input_shape)`, `y` is `(samples, *target_shape)`, and every entry of `info`
is `(samples, ...)` too (masks, family labels, hard targets), so that slicing samples
slices everything consistently. A meta-batch is a `MetaDataset` whose leaves carry one
more leading axis, the task axis: `x` is `(tasks, samples, *input_shape)`.
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class _DatasetFields(NamedTuple):
    x: Any
    y: Any
    info: dict


def _leading(array: Any) -> Optional[int]:
    shape = getattr(array, "shape", None)
    if shape is None or len(shape) == 0:
        return None
    return shape[0]


class Dataset(_DatasetFields):
    """Inputs `x`, targets `y` and optional per-sample `info`, all sharing the leading axis.

    Args:
      x: inputs, shape `(samples, *input_shape)` (a meta-batch adds a task axis in front).
      y: targets, shape `(samples, *target_shape)`; integer labels may be `(samples,)`.
      info: optional dict of per-sample arrays, e.g. `{"mask": (samples,)}`.

    Raises:
      ValueError: if `x` and `y` (or an `info` entry) disagree on the leading axis.

    Example:
      >>> data = metax.data.Dataset(jnp.zeros((4, 2)), jnp.ones((4, 1)))
      >>> data.x.shape, data.y.shape, data.info
      ((4, 2), (4, 1), {})
    """

    __slots__ = ()

    def __new__(cls, x: Any, y: Any, info: Optional[dict] = None) -> "Dataset":
        info = {} if info is None else info
        n_x, n_y = _leading(x), _leading(y)
        # JAX rebuilds pytrees with placeholder leaves; only check real shapes.
        if n_x is not None and n_y is not None and n_x != n_y:
            raise ValueError(
                f"Dataset x and y disagree on the number of samples: x has shape "
                f"{tuple(x.shape)}, y has shape {tuple(y.shape)}. The leading axis of both "
                "must be the sample axis (or the task axis of a meta-batch)."
            )
        if isinstance(info, dict) and n_x is not None:
            for key, value in info.items():
                n_info = _leading(value)
                if n_info is not None and n_info != n_x:
                    raise ValueError(
                        f"Dataset info[{key!r}] has shape {tuple(value.shape)} but x has "
                        f"{n_x} samples; every info entry must be per sample (leading axis "
                        f"{n_x})."
                    )
        return super().__new__(cls, x, y, info)


class MetaDataset(NamedTuple):
    """A task's support set `train` and query set `test` (or a meta-batch of them).

    Example:
      >>> task = metax.data.sinusoid(jax.random.PRNGKey(0), shots_train=5, shots_test=15)
      >>> task.train.x.shape, task.test.x.shape
      ((5, 1), (15, 1))
    """

    train: Dataset
    test: Dataset


def check_metabatch(metabatch: Any, name: str = "metabatch") -> None:
    """Checks that `metabatch` is a `MetaDataset` with a leading task axis everywhere.

    Shapes are static under `jit`, so this runs (once) at trace time.

    Raises:
      TypeError: if it is not a `MetaDataset` of `Dataset` pairs.
      ValueError: if a leaf lacks the task axis or the task counts disagree.

    Example:
      >>> metax.data.check_metabatch(metabatch)  # two tasks: fine
      >>> metax.data.check_metabatch(metabatch.train)
      Traceback (most recent call last):
        ...
      TypeError: ...
    """
    if not isinstance(metabatch, MetaDataset):
        raise TypeError(
            f"{name} must be a metax.data.MetaDataset(train=Dataset, test=Dataset), got "
            f"{type(metabatch).__name__}."
        )
    tasks = {}
    for split in ("train", "test"):
        dataset = getattr(metabatch, split)
        if not isinstance(dataset, Dataset):
            raise TypeError(f"{name}.{split} must be a metax.data.Dataset, got {type(dataset).__name__}.")
        x_shape, y_shape = np.shape(dataset.x), np.shape(dataset.y)
        if len(x_shape) < 3:
            raise ValueError(
                f"{name}.{split}.x has shape {x_shape}; a meta-batch needs a leading task "
                "axis, (tasks, samples, *input_shape). For one task add the axis with "
                "jax.tree_util.tree_map(lambda a: a[None], metadataset), or draw a batch "
                "with metax.data.sample_metabatch."
            )
        if len(y_shape) < 2 or y_shape[:2] != x_shape[:2]:
            raise ValueError(
                f"{name}.{split}.y has shape {y_shape} but x has shape {x_shape}; both need "
                "the same (tasks, samples) leading axes."
            )
        tasks[split] = x_shape[0]
    if tasks["train"] != tasks["test"]:
        raise ValueError(
            f"{name}.train has {tasks['train']} tasks but {name}.test has {tasks['test']}; "
            "support and query sets must come in pairs."
        )


def get_batch(rng: jax.Array, dataset: Dataset, batch_size: int) -> Dataset:
    """Draws `batch_size` samples of one task's `dataset` without replacement.

    Raises:
      ValueError: if `batch_size` exceeds the samples the dataset has.

    Example:
      >>> data = metax.data.Dataset(jnp.arange(6.0)[:, None], jnp.arange(6.0)[:, None])
      >>> metax.data.get_batch(jax.random.PRNGKey(0), data, 4).x.shape
      (4, 1)
    """
    num_samples = dataset.x.shape[0]
    if batch_size > num_samples:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {num_samples} samples of the "
            "support set; use batch_size=None for full-batch steps or a smaller batch."
        )
    idx = jax.random.permutation(rng, num_samples)[:batch_size]
    return jax.tree_util.tree_map(lambda leaf: jnp.take(leaf, idx, axis=0), dataset)


def split_dataset(dataset: Dataset, shots_train: int, shots_test: Optional[int] = None) -> MetaDataset:
    """Splits one task's samples into a support set of `shots_train` and a query set.

    The query set takes the next `shots_test` samples (all the rest when None). For a
    meta-batch, `jax.vmap` this function.

    Raises:
      ValueError: if the shots ask for more samples than the dataset has.

    Example:
      >>> data = metax.data.Dataset(jnp.arange(6.0)[:, None], jnp.arange(6.0)[:, None])
      >>> task = metax.data.split_dataset(data, shots_train=2)
      >>> task.train.x[:, 0], task.test.x[:, 0]
      (Array([0., 1.], dtype=float32), Array([2., 3., 4., 5.], dtype=float32))
    """
    num_samples = dataset.x.shape[0]
    shots_test = num_samples - shots_train if shots_test is None else shots_test
    if shots_train < 1 or shots_test < 0:
        raise ValueError(f"shots_train must be >= 1 and shots_test >= 0, got {shots_train}, {shots_test}.")
    if shots_train + shots_test > num_samples:
        raise ValueError(
            f"shots_train={shots_train} + shots_test={shots_test} exceeds the {num_samples} "
            "samples the dataset has; ask for fewer shots or supply more samples."
        )
    take = lambda start, stop: jax.tree_util.tree_map(lambda leaf: leaf[start:stop], dataset)
    return MetaDataset(train=take(0, shots_train), test=take(shots_train, shots_train + shots_test))
