"""N-way K-shot classification tasks from labelled arrays, sampled on the device.

The few-shot protocol of Vinyals, Blundell, Lillicrap, Kavukcuoglu, Wierstra. "Matching
Networks for One Shot Learning", NeurIPS 2016, https://arxiv.org/abs/1606.04080, as used
by MAML (Finn et al. 2017): the classes of a data set are split into disjoint meta-train,
meta-validation and meta-test sets; a task draws `ways` classes of one split, labels them
0..ways-1 in a random order, and draws `shots` support and `queries` query examples of
each, all distinct. With `rotations=True` every class becomes four, its images turned by
0, 90, 180 and 270 degrees (Santoro et al. "Meta-Learning with Memory-Augmented Neural
Networks", ICML 2016, https://arxiv.org/abs/1605.06065): 10 digits give 40 classes. The
split is made over the original classes, so no rotation of a meta-test class is ever seen
in meta-training. A task may draw two rotations of one class; they are different classes,
and the same source image may then appear in both, turned two ways.

Each split's examples are stored per class as one padded array `(classes, max_examples,
...)` with per-class counts, so a jitted, vmappable `sample_task(key)` can draw examples
without replacement by taking the `shots + queries` largest of uniform scores, with the
padding scored below every real example.

Example:
  >>> x, y = metax.data.load_digits()
  >>> splits = metax.data.FewShotSplits(x, y, rotations=True, seed=0)
  >>> splits.num_classes("train"), splits.num_classes("test")
  (24, 8)
  >>> sample_task = splits.sampler("train", ways=5, shots=1, queries=15)
  >>> shapes = jax.eval_shape(lambda key: metax.data.sample_metabatch(key, sample_task, 16), jax.random.PRNGKey(0))
  >>> shapes.train.x.shape, shapes.test.y.shape
  ((16, 5, 8, 8, 1), (16, 75))
"""

import functools
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metax.data.base import Dataset, MetaDataset

SPLITS = ("train", "valid", "test")
TURNS = 4  # quarter turns per class with rotations


class ClassArrays(NamedTuple):
    """One split's examples arranged per class, padded to its largest class.

    Example:
      >>> classes = metax.data.arrange_by_class(np.zeros((3, 2)), np.array([0, 1, 0]), [0, 1])
      >>> isinstance(classes, metax.data.ClassArrays), classes.x.shape, classes.counts
      (True, (2, 2, 2), array([2, 1], dtype=int32))
    """

    x: jax.Array  # (classes, max_examples, *example_shape); rows at and past counts[c] are zeros
    counts: jax.Array  # (classes,) int32: the number of real examples of each class
    labels: jax.Array  # (classes,) int32: each class's label in the source data


def arrange_by_class(x: np.ndarray, y: np.ndarray, labels: Sequence[int]) -> ClassArrays:
    """Gathers the examples of each of `labels` into a padded `ClassArrays` (on the host).

    Args:
      x: examples `(n, *example_shape)`.
      y: integer labels `(n,)`.
      labels: the classes to keep, in the order they get indices 0, 1, ...

    Returns:
      `ClassArrays` with `x` of shape `(len(labels), max count, *example_shape)`.

    Example:
      >>> x = np.arange(12, dtype=np.float32).reshape(6, 2)
      >>> y = np.array([0, 1, 0, 2, 1, 0])
      >>> classes = metax.data.arrange_by_class(x, y, [0, 1])
      >>> classes.x.shape, classes.counts, classes.labels
      ((2, 3, 2), array([3, 2], dtype=int32), array([0, 1], dtype=int32))
      >>> classes.x[1]  # class 1: two examples, then a padding row
      array([[2., 3.],
             [8., 9.],
             [0., 0.]], dtype=float32)
    """
    labels = np.asarray(labels, np.int64)
    members = [np.flatnonzero(y == label) for label in labels]
    counts = np.array([len(m) for m in members], np.int32)
    padded = np.zeros((len(labels), max(counts, default=0)) + x.shape[1:], x.dtype)
    for row, index in enumerate(members):
        padded[row, : len(index)] = x[index]
    return ClassArrays(padded, counts, labels.astype(np.int32))


def _rotate(images: jax.Array, turns: jax.Array) -> jax.Array:
    """`images` `(m, H, W, C)` turned counter-clockwise by `turns` (traced) quarter turns."""
    branches = [functools.partial(jnp.rot90, k=k, axes=(1, 2)) for k in range(TURNS)]
    return jax.lax.switch(turns, branches, images)


def _as_float(x: jax.Array) -> jax.Array:
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def sample_fewshot_task(
    rng: jax.Array, *, classes: ClassArrays, ways: int, shots: int, queries: int, rotations: bool = False
) -> MetaDataset:
    """One N-way K-shot task from a split's `classes` (pure; jit and vmap it).

    Checks of the sizes are done once by `FewShotSplits.sampler`; call this directly only
    with `ways` <= the split's classes and `shots + queries` <= every class's count.

    Args:
      rng: the task's key.
      classes: the split's examples per class.
      ways: classes per task (N); they get labels 0..N-1 in a random order.
      shots: support examples per class (K).
      queries: query examples per class (Q).
      rotations: draw among `4 * classes` classes, class `c` at `t` quarter turns being
        class `4 c + t`.

    Returns:
      `MetaDataset(train=Dataset(x (N*K, ...), y (N*K,) int32), test=Dataset(x (N*Q, ...),
      y (N*Q,) int32))`, class-major (`y = [0]*K + [1]*K + ...`). Each `info["class_id"]`
      holds the example's class in the source: its label, or `4 * label + turns` with
      rotations.

    Example:
      >>> x = np.arange(12, dtype=np.float32).reshape(6, 2)
      >>> classes = metax.data.arrange_by_class(x, np.array([0, 1, 0, 2, 1, 0]), [0, 1])
      >>> task = metax.data.sample_fewshot_task(rng, classes=classes, ways=2, shots=1, queries=1)
      >>> task.train.x.shape, task.train.y, task.test.y
      ((2, 2), Array([0, 1], dtype=int32), Array([0, 1], dtype=int32))
    """
    num_classes, max_examples = classes.x.shape[0], classes.x.shape[1]
    rng_classes, rng_examples = jax.random.split(rng)
    num_drawn = num_classes * (TURNS if rotations else 1)
    # The `ways` largest of iid uniform scores: distinct classes in a uniformly random order.
    _, chosen = jax.lax.top_k(jax.random.uniform(rng_classes, (num_drawn,)), ways)  # label i is class chosen[i]
    rows = chosen // TURNS if rotations else chosen
    # Likewise `shots + queries` distinct examples per class, padding scored below them all.
    scores = jax.random.uniform(rng_examples, (ways, max_examples))
    scores = jnp.where(jnp.arange(max_examples) < classes.counts[rows][:, None], scores, -1.0)
    _, index = jax.lax.top_k(scores, shots + queries)  # (N, K + Q)
    x = _as_float(classes.x[rows[:, None], index])  # (N, K + Q, ...)
    if rotations:
        x = jax.vmap(_rotate)(x, chosen % TURNS)
    class_id = classes.labels[rows] * TURNS + chosen % TURNS if rotations else classes.labels[rows]

    def part(start, size):
        return Dataset(
            x[:, start : start + size].reshape((ways * size,) + x.shape[2:]),
            jnp.repeat(jnp.arange(ways, dtype=jnp.int32), size),
            {"class_id": jnp.repeat(class_id.astype(jnp.int32), size)},
        )

    return MetaDataset(train=part(0, shots), test=part(shots, queries))


def sample_class_batch(rng: jax.Array, *, classes: ClassArrays, batch_size: int, rotations: bool = False) -> Dataset:
    """`batch_size` labelled examples of a split, class-balanced, for plain supervised training.

    Each example draws its class uniformly (among `4 * classes` with rotations) and then an
    example of that class uniformly, with replacement. Labels are the class's index in the
    split, `0..num_classes - 1` (`4 * row + turns` with rotations), the same every call.

    Returns:
      `Dataset(x (batch_size, ...), y (batch_size,) int32)`.

    Example:
      >>> x = np.arange(12, dtype=np.float32).reshape(6, 2)
      >>> classes = metax.data.arrange_by_class(x, np.array([0, 1, 0, 2, 1, 0]), [0, 1])
      >>> batch = metax.data.sample_class_batch(rng, classes=classes, batch_size=4)
      >>> batch.x.shape, batch.y.dtype, bool(((batch.y == 0) | (batch.y == 1)).all())
      ((4, 2), dtype('int32'), True)
    """
    num_classes = classes.x.shape[0] * (TURNS if rotations else 1)
    rng_class, rng_example = jax.random.split(rng)
    label = jax.random.randint(rng_class, (batch_size,), 0, num_classes)
    row = label // TURNS if rotations else label
    index = jnp.floor(jax.random.uniform(rng_example, (batch_size,)) * classes.counts[row]).astype(jnp.int32)
    x = _as_float(classes.x[row, index])
    if rotations:
        x = jax.vmap(lambda image, turns: _rotate(image[None], turns)[0])(x, label % TURNS)
    return Dataset(x, label.astype(jnp.int32))


class FewShotSplits:
    """Labelled examples split by class into meta-train, meta-validation and meta-test.

    Args:
      x: images `(n, height, width, channels)` (`(n, height, width)` gets a channel axis)
        or feature vectors `(n, features)`; integer dtypes are cast to float32 as sampled.
      y: integer class labels `(n,)`.
      fractions: the shares of the classes in `("train", "valid", "test")`, summing to 1;
        the classes are shuffled with `seed` and cut in that order (counts rounded, the
        test split taking the rest). Ignored when `classes` is given.
      classes: explicit splits, `{"train": [labels], "valid": [...], "test": [...]}` (a split
        left out is empty); the labels must exist in `y` and be disjoint.
      seed: shuffles the classes before cutting them by `fractions`.
      rotations: turn every class into four, its images at 0/90/180/270 degrees (square
        images only); each split keeps all four turns of its own classes.

    Attributes:
      labels: `{split: tuple of source labels}`.
      example_shape: the shape of one example.

    Raises:
      ValueError: naming the argument and value at fault: `x` and `y` disagree in length,
        labels that are not integers, fractions that do not sum to 1, unknown or
        overlapping explicit classes, rotations of non-square images.

    Example:
      >>> x, y = np.zeros((20, 4, 4, 1), np.float32), np.arange(20) % 5
      >>> splits = metax.data.FewShotSplits(x, y, classes={"train": [0, 1, 2], "test": [3, 4]})
      >>> splits.labels["train"], splits.num_classes("valid"), splits.example_shape
      ((0, 1, 2), 0, (4, 4, 1))
      >>> try:
      ...     splits.sampler("train", ways=4, shots=1, queries=2)
      ... except ValueError as error:
      ...     print(error)
      ways=4 but the meta-train split has only 3 classes (labels [0, 1, 2]); use fewer ways, rotations=True or give the split more classes (fractions= or classes=).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        fractions: Sequence[float] = (0.6, 0.2, 0.2),
        classes: Optional[Mapping[str, Sequence[int]]] = None,
        seed: int = 0,
        rotations: bool = False,
    ) -> None:
        x, y = np.asarray(x), np.asarray(y)
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"y must be integer class labels of shape (n,), got {y.dtype} of shape {y.shape}.")
        if x.ndim < 2 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x has shape {x.shape} but y has {y.shape[0]} labels; x must be (n, features) or "
                "(n, height, width[, channels]) with one label per example."
            )
        if x.ndim == 3:
            x = x[..., None]
        if rotations and (x.ndim != 4 or x.shape[1] != x.shape[2]):
            raise ValueError(
                f"rotations=True turns images by quarter turns, which needs square images "
                f"(n, size, size, channels); x has shape {x.shape}."
            )
        self.rotations = bool(rotations)
        self.example_shape = x.shape[1:]
        self.labels = self._split(np.unique(y), fractions, classes, seed)
        self._x, self._y = x, y
        self._arrays: dict[str, ClassArrays] = {}

    @staticmethod
    def _split(present, fractions, classes, seed) -> dict[str, tuple[int, ...]]:
        if classes is not None:
            unknown = set(classes) - set(SPLITS)
            if unknown:
                raise ValueError(f"classes has unknown splits {sorted(unknown)}; use {list(SPLITS)}.")
            labels = {split: tuple(int(c) for c in classes.get(split, ())) for split in SPLITS}
            seen: dict[int, str] = {}
            for split, split_labels in labels.items():
                missing = sorted(set(split_labels) - set(present.tolist()))
                if missing:
                    raise ValueError(f"classes[{split!r}] names labels {missing} that y does not contain.")
                for label in split_labels:
                    if label in seen:
                        raise ValueError(
                            f"Label {label} is in both classes[{seen[label]!r}] and classes[{split!r}]; "
                            "splits must be disjoint."
                        )
                    seen[label] = split
            return labels
        fractions = tuple(float(f) for f in fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(
                f"fractions must be three non-negative shares (train, valid, test) summing to 1, got {fractions}."
            )
        order = np.random.default_rng(seed).permutation(present)
        n_train = int(np.floor(fractions[0] * len(order) + 0.5))
        n_valid = min(int(np.floor(fractions[1] * len(order) + 0.5)), len(order) - n_train)
        cuts = {"train": order[:n_train], "valid": order[n_train : n_train + n_valid], "test": order[n_train + n_valid :]}
        return {split: tuple(sorted(int(c) for c in cuts[split])) for split in SPLITS}

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}.")

    def num_classes(self, split: str) -> int:
        """The classes a task of `split` draws from (four per label with rotations)."""
        self._check_split(split)
        return len(self.labels[split]) * (TURNS if self.rotations else 1)

    def arrays(self, split: str) -> ClassArrays:
        """The split's examples per class, on the device (built on first use)."""
        self._check_split(split)
        if split not in self._arrays:
            arranged = arrange_by_class(self._x, self._y, self.labels[split])
            self._arrays[split] = jax.tree_util.tree_map(jnp.asarray, arranged)
        return self._arrays[split]

    def sampler(self, split: str, *, ways: int, shots: int, queries: int) -> jax.tree_util.Partial:
        """`sample_task(key) -> MetaDataset` for N-way K-shot tasks of one split.

        The sampler is a `jax.tree_util.Partial` carrying the split's arrays as pytree
        leaves: a pure function of the key, to jit and vmap (`sample_metabatch`), that
        can also be passed to a jitted function as an argument, so a large data set is
        not compiled into the program as a constant.

        Args:
          split: "train", "valid" or "test".
          ways, shots, queries: classes per task (N), support (K) and query (Q) examples
            per class.

        Raises:
          ValueError: naming the numbers: `ways` above the split's classes, `shots +
            queries` above the examples of one of its classes, or non-positive counts.
        """
        self._check_split(split)
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        available = self.num_classes(split)
        if ways > available:
            turns = f" x {TURNS} rotations" if self.rotations else ""
            raise ValueError(
                f"ways={ways} but the meta-{split} split has only {available} classes "
                f"(labels {list(self.labels[split])}{turns}); use fewer ways"
                f"{'' if self.rotations else ', rotations=True'} or give the split more classes "
                "(fractions= or classes=)."
            )
        arrays = self.arrays(split)
        counts = np.asarray(arrays.counts)
        smallest = int(np.argmin(counts))
        if counts[smallest] < shots + queries:
            raise ValueError(
                f"shots={shots} + queries={queries} = {shots + queries} examples per class, but class "
                f"{int(arrays.labels[smallest])} of the meta-{split} split has only {counts[smallest]} "
                "examples; lower shots or queries."
            )
        task = functools.partial(
            sample_fewshot_task, ways=int(ways), shots=int(shots), queries=int(queries), rotations=self.rotations
        )
        return jax.tree_util.Partial(task, classes=arrays)

    def batch_sampler(self, split: str, *, batch_size: int) -> jax.tree_util.Partial:
        """`sample_batch(key) -> Dataset` of class-balanced examples of `split` with labels
        `0..num_classes(split) - 1`, for pre-training a classifier (see `sample_class_batch`)."""
        if self.num_classes(split) == 0:
            raise ValueError(f"The meta-{split} split has no classes to draw a batch from.")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        batch = functools.partial(sample_class_batch, batch_size=int(batch_size), rotations=self.rotations)
        return jax.tree_util.Partial(batch, classes=self.arrays(split))
