"""Argument checks shared by the learners' constructors: one-line errors naming the
argument at fault and what to pass instead.

Example:
  >>> from metax.learner.checks import _check_steps
  >>> _check_steps(3, "steps_inner")
  3
"""

import operator
from typing import Any

import jax.numpy as jnp
import numpy as np


def _check_optimizer(optimizer: Any, argument: str) -> None:
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"{argument} must be an optax.GradientTransformation such as optax.sgd(0.01), "
            f"got {type(optimizer).__name__}."
        )
    # Probe one step: a descent optimiser moves against a positive gradient. Optimisers
    # that need more than (grads, state, params), e.g. a line search, are not probed.
    params = jnp.zeros((2,), jnp.float32)
    try:
        updates, _ = optimizer.update(jnp.ones_like(params), optimizer.init(params), params)
        step = np.asarray(updates, np.float64)
    except Exception:  # noqa: BLE001 (any failure just means "cannot probe")
        return
    if step.shape == params.shape and np.any(step > 0):
        raise ValueError(
            f"{argument} moves parameters up the gradient (a step of {step[0]:+g} for a gradient "
            "of +1): is its learning rate negative? Pass a positive learning rate, e.g. optax.sgd(0.01)."
        )


def _check_steps(steps: Any, argument: str) -> int:
    if isinstance(steps, bool):
        raise TypeError(f"{argument} must be a Python int, got {steps!r}.")
    try:
        steps = operator.index(steps)
    except TypeError:
        raise TypeError(
            f"{argument} must be a Python int (the length of the inner loop), got "
            f"{type(steps).__name__}; under jax.jit mark it static, e.g. "
            "jax.jit(learner.eval, static_argnames='steps')."
        ) from None
    if steps < 0:
        raise ValueError(f"{argument} must be >= 0, got {steps}.")
    return steps


def _check_bool(value: Any, argument: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be True or False, got {value!r}.")
    return bool(value)


def _check_positive(value: Any, argument: str, meaning: str) -> float:
    """A finite float > 0, or a one-line error naming `argument`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be a number ({meaning}), got {value!r}.") from None
    if isinstance(value, bool) or not (np.isfinite(number) and number > 0):
        raise ValueError(f"{argument} must be > 0 and finite ({meaning}), got {value!r}.")
    return number
