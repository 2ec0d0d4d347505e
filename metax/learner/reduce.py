"""Per-task metrics to meta-batch metrics (means, and sums of the `nonfinite_*` counts)."""

from typing import Any

import jax
import jax.numpy as jnp

Metrics = dict[str, jax.Array]


def reduce_task_metrics(metrics: Metrics, axes: Any = 0) -> Metrics:
    """Per-task metrics to meta-batch metrics: `nonfinite_*` counts are summed over `axes`,
    everything else is averaged."""
    return {
        key: jnp.sum(value, axis=axes) if key.startswith("nonfinite_") else jnp.mean(value, axis=axes)
        for key, value in metrics.items()
    }


def count_nonfinite(tree: Any) -> jax.Array:
    """1 if any leaf of `tree` holds a NaN or inf, else 0 (int32)."""
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        return jnp.zeros((), jnp.int32)
    bad = jnp.stack([jnp.any(~jnp.isfinite(leaf)) for leaf in leaves])
    return jnp.any(bad).astype(jnp.int32)
