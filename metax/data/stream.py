"""Meta-batches from any task sampler: `sample_task(key) -> MetaDataset`, vmapped."""

from typing import Any, Callable, Iterator, Optional

import jax

from metax.data.base import MetaDataset
from metax.data.tasks import SampleTask


def sample_metabatch(rng: jax.Array, sample_task: SampleTask, meta_batch_size: int) -> MetaDataset:
    """Draws `meta_batch_size` tasks in one vmapped call; leaves get a leading task axis.

    Example:
      >>> sample_task = metax.data.make_task_sampler("sinusoid", shots_train=5, shots_test=5)
      >>> batch = jax.jit(lambda key: metax.data.sample_metabatch(key, sample_task, 8))(jax.random.PRNGKey(0))
      >>> batch.train.x.shape
      (8, 5, 1)
    """
    return jax.vmap(sample_task)(jax.random.split(rng, meta_batch_size))


def _compile(fn: Callable[[jax.Array, SampleTask], Any], sample_task: SampleTask) -> Callable[[jax.Array], Any]:
    """`jit(fn)` as a function of the key alone. A sampler that is a `jax.tree_util.Partial`
    (e.g. `FewShotSplits.sampler`) is passed in as an argument, so the data it carries is
    not compiled into the program as a constant (slow to compile and held twice)."""
    if isinstance(sample_task, jax.tree_util.Partial):
        compiled = jax.jit(fn)
        return lambda key: compiled(key, sample_task)
    return jax.jit(lambda key: fn(key, sample_task))


class MetaBatchStream:
    """An endless (or `num_batches`-long) stream of meta-batches from a task sampler.

    Users add a task distribution by writing one pure function, no subclassing:

    >>> def sample_task(key):  # a random line through the origin, 10 points
    ...     slope = jax.random.normal(key)
    ...     x = jnp.linspace(-1.0, 1.0, 10)[:, None]
    ...     data = metax.data.Dataset(x, slope * x)
    ...     return metax.data.MetaDataset(train=data, test=data)
    >>> stream = metax.data.MetaBatchStream(sample_task, meta_batch_size=4, rng=jax.random.PRNGKey(0))
    >>> next(iter(stream)).train.x.shape
    (4, 10, 1)

    The sampler is compiled once; each batch uses a fresh key folded from `rng` and the
    batch index, so iterating twice gives the same batches.

    Attributes:
      sample_input: one task's support inputs, for `MetaLearner.reset`.
      input_shape: the shape of one input, without the sample axis.
      output_dim: the size of the last target axis.
    """

    def __init__(
        self,
        sample_task: SampleTask,
        meta_batch_size: int,
        rng: jax.Array,
        num_batches: Optional[int] = None,
    ) -> None:
        if meta_batch_size < 1:
            raise ValueError(f"meta_batch_size must be >= 1, got {meta_batch_size}.")
        self.sample_task = sample_task
        self.meta_batch_size = meta_batch_size
        self.rng = rng
        self.num_batches = num_batches
        self._sample = _compile(lambda key, task_fn: sample_metabatch(key, task_fn, meta_batch_size), sample_task)
        example = jax.eval_shape(sample_task, rng)
        if not isinstance(example, MetaDataset):
            raise TypeError(
                f"sample_task must return a metax.data.MetaDataset, got {type(example).__name__}."
            )
        self.input_shape = tuple(example.train.x.shape[1:])
        self.output_dim = example.train.y.shape[-1] if example.train.y.ndim > 1 else 1
        self._sample_input = None

    @property
    def sample_input(self) -> jax.Array:
        if self._sample_input is None:
            # Compiled: an eager sampler dispatches op by op, which costs seconds.
            self._sample_input = _compile(lambda key, task_fn: task_fn(key), self.sample_task)(self.rng).train.x
        return self._sample_input

    def batch(self, index: int) -> MetaDataset:
        """The meta-batch number `index` (deterministic given the stream's key)."""
        return self._sample(jax.random.fold_in(self.rng, index))

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("This stream is endless (num_batches=None) and has no length.")
        return self.num_batches

    def __iter__(self) -> Iterator[MetaDataset]:
        index = 0
        while self.num_batches is None or index < self.num_batches:
            yield self.batch(index)
            index += 1
