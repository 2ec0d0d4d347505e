"""metax-compatible loaders over the synthetic task families."""

from typing import Optional

import jax

from metax.data.base import MetaDataset
from metax.data.stream import MetaBatchStream
from metax.data.tasks import make_task_sampler


def _merge_support_query(sample_task):
    """Without a train/test split the query set is the support set itself."""

    def sample(rng: jax.Array) -> MetaDataset:
        task = sample_task(rng)
        return MetaDataset(train=task.train, test=task.train)

    return sample


class SyntheticMetaDataloader(MetaBatchStream):
    """A finite loader: `num_tasks` tasks served in meta-batches of `meta_batch_size`.

    Iterating twice yields the same tasks (the key is fixed), as metax's loaders do.

    Example:
      >>> loader = metax.data.SyntheticMetaDataloader(
      ...     "sinusoid", num_tasks=4, shots_train=5, shots_test=3, meta_batch_size=2,
      ...     train_test_split=True, rng=rng)
      >>> batches = list(loader)
      >>> len(loader), len(batches), batches[0].train.x.shape, batches[0].test.x.shape
      (2, 2, (2, 5, 1), (2, 3, 1))
    """

    def __init__(
        self,
        name: str,
        num_tasks: int,
        shots_train: int,
        shots_test: int,
        meta_batch_size: int,
        train_test_split: bool,
        rng: jax.Array,
    ) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}.")
        if meta_batch_size < 1 or num_tasks % meta_batch_size != 0:
            raise ValueError(
                f"num_tasks={num_tasks} must be a positive multiple of "
                f"meta_batch_size={meta_batch_size}."
            )
        sample_task = make_task_sampler(name, shots_train, shots_test if train_test_split else 0)
        if not train_test_split:
            sample_task = _merge_support_query(sample_task)
        super().__init__(sample_task, meta_batch_size, rng, num_batches=num_tasks // meta_batch_size)
        self.name = name
        self.num_tasks = num_tasks
        self.shots_train = shots_train
        self.shots_test = shots_test


def create_synthetic_metadataset(
    name: str,
    meta_batch_size: int,
    shots_train: int,
    shots_test: int,
    train_test_split: bool,
    num_tasks_train: int,
    num_tasks_test: int,
    num_tasks_valid: int,
    num_tasks_ood: Optional[int] = None,
    ood_sets_hot: Optional[list] = None,
    seed: int = 0,
    **unused_kwargs,
):
    """Train / test / valid loaders over a named synthetic task family (metax's signature).

    The train loader serves `num_tasks_train` tasks in meta-batches of `meta_batch_size`;
    test and valid serve theirs in one batch each, always with a support/query split.
    Each loader exposes `sample_input`, `input_shape`, `output_dim` and `len()`.

    Returns:
      `(train, test, valid, ood, aux)`; `ood` and `aux` are None (the synthetic families
      here define no out-of-distribution variants).

    Raises:
      ValueError: for an unknown family (listing the known ones), bad shot counts, task
        counts that are not multiples of the batch size, or an out-of-distribution request.

    Example:
      >>> train, test, valid, ood, aux = metax.data.create_synthetic_metadataset(
      ...     "sinusoid", meta_batch_size=2, shots_train=5, shots_test=3, train_test_split=True,
      ...     num_tasks_train=4, num_tasks_test=2, num_tasks_valid=2)
      >>> len(train), len(test), len(valid), ood, aux
      (2, 1, 1, None, None)
      >>> train.sample_input.shape, train.output_dim
      ((5, 1), 1)
    """
    if num_tasks_ood is not None or ood_sets_hot is not None:
        raise ValueError(
            "The synthetic task families define no out-of-distribution sets; leave "
            "num_tasks_ood and ood_sets_hot at None."
        )
    rng_train, rng_test, rng_valid = jax.random.split(jax.random.PRNGKey(seed), 3)
    common = dict(name=name, shots_train=shots_train, shots_test=shots_test)
    train = SyntheticMetaDataloader(
        num_tasks=num_tasks_train, meta_batch_size=meta_batch_size,
        train_test_split=train_test_split, rng=rng_train, **common,
    )
    test = SyntheticMetaDataloader(
        num_tasks=num_tasks_test, meta_batch_size=num_tasks_test,
        train_test_split=True, rng=rng_test, **common,
    )
    valid = SyntheticMetaDataloader(
        num_tasks=num_tasks_valid, meta_batch_size=num_tasks_valid,
        train_test_split=True, rng=rng_valid, **common,
    )
    return train, test, valid, None, None
