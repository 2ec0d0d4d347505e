"""Pytree helpers: metric-key suffixes, leading-axis length, dtype-preserving means."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp


def append_keys(metrics: Mapping[str, Any], suffix: str) -> dict[str, Any]:
    """Returns `metrics` with `_suffix` appended to every key (`loss` -> `loss_outer`).

    Example:
      >>> metax.utils.append_keys({"loss": 1.0, "acc": 0.5}, "outer")
      {'loss_outer': 1.0, 'acc_outer': 0.5}
    """
    return {f"{key}_{suffix}": value for key, value in metrics.items()}


def tree_length(tree: Any) -> int:
    """The shared size of the leading axis of all leaves of `tree`.

    Raises:
      ValueError: if the tree has no array leaves or the leaves disagree.

    Example:
      >>> metax.utils.tree_length({"x": jnp.zeros((3, 2)), "y": jnp.zeros((3,))})
      3
    """
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree) if jnp.ndim(leaf) > 0]
    if not leaves:
        raise ValueError("tree_length needs at least one leaf with a leading axis.")
    lengths = {leaf.shape[0] for leaf in leaves}
    if len(lengths) != 1:
        raise ValueError(f"Leaves disagree on the leading axis: sizes {sorted(lengths)}.")
    return lengths.pop()


def tree_mean_keep_dtype(tree: Any, axis: int = 0) -> Any:
    """Means every leaf over `axis`, then casts it back to its own dtype.

    Used to reduce per-task model state (batch-norm statistics, step counters) over a
    meta-batch: a mean of int counters stays an int counter.

    Example:
      >>> metax.utils.tree_mean_keep_dtype({"n": jnp.array([1, 2, 4], dtype=jnp.int32)})
      {'n': Array(2, dtype=int32)}
    """

    def mean_same_dtype(leaf):
        leaf = jnp.asarray(leaf)
        return jnp.mean(leaf, axis=axis).astype(leaf.dtype)

    return jax.tree_util.tree_map(mean_same_dtype, tree)


def get_field(container: Any, key: str) -> Any:
    """Reads `key` from a NamedTuple (attribute) or a mapping (item).

    Example:
      >>> metax.utils.get_field({"w": 1}, "w"), metax.utils.get_field(metax.learner.TaskOutcome(1, 2, 3), "params")
      (1, 2)
    """
    if isinstance(container, Mapping):
        if key not in container:
            raise KeyError(f"No entry {key!r}; available: {sorted(container)}.")
        return container[key]
    if not hasattr(container, key):
        fields = getattr(container, "_fields", None)
        raise KeyError(f"No field {key!r} on {type(container).__name__}; fields: {fields}.")
    return getattr(container, key)


def set_field(container: Any, key: str, value: Any) -> Any:
    """A copy of a NamedTuple or mapping with `key` replaced by `value`.

    Example:
      >>> metax.utils.set_field(metax.learner.TaskOutcome(1, 2, 3), "params", 0)
      TaskOutcome(state=1, params=0, hstate=3)
    """
    get_field(container, key)  # same error as a read for a missing key
    if isinstance(container, Mapping):
        return {**container, key: value}
    return container._replace(**{key: value})


def tree_add(a: Any, b: Any) -> Any:
    """Leafwise `a + b` of two pytrees of the same structure.

    >>> metax.utils.tree_add({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, 0.5])})
    {'w': Array([1.5, 2.5], dtype=float32)}
    """
    return jax.tree_util.tree_map(jnp.add, a, b)


def tree_sub(a: Any, b: Any) -> Any:
    """Leafwise `a - b` of two pytrees of the same structure.

    >>> metax.utils.tree_sub({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([0.5, 0.5])})
    {'w': Array([0.5, 1.5], dtype=float32)}
    """
    return jax.tree_util.tree_map(jnp.subtract, a, b)


def tree_scale(tree: Any, factor: Any) -> Any:
    """Every leaf of `tree` times `factor` (a scalar, or an array that broadcasts).

    >>> metax.utils.tree_scale({"w": jnp.array([1.0, 2.0])}, 0.5)
    {'w': Array([0.5, 1. ], dtype=float32)}
    """
    return jax.tree_util.tree_map(lambda leaf: leaf * factor, tree)
