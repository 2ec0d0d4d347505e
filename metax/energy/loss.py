"""Data losses: squared error and cross-entropy, plain and masked.

Convention: `SquaredError` is the plain mean squared error, mean over all elements of
(pred - target)^2 (not half of it), everywhere in metax; the reported `loss` is the MSE.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from metax.energy.base import EnergyFunction


def accuracy(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Fraction of samples whose arg-max logit equals the integer label."""
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    if mask is None:
        return jnp.mean(hits)
    return jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1)


class SquaredError(EnergyFunction):
    """Mean squared error, mean over samples and output dims of (pred - target)^2.

    Shapes: `pred` and `target` both `(samples, output_dim)`.
    """

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        loss = self._reduce(jnp.square(pred - target))
        return loss, {"loss": loss}


class SquaredErrorMasked(EnergyFunction):
    """`SquaredError` over the samples where `info["mask"]` (shape `(samples,)`) is 1."""

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        loss = self._reduce(jnp.square(pred - target), _mask(info))
        return loss, {"loss": loss}


class CrossEntropy(EnergyFunction):
    """Softmax cross-entropy with integer labels; also reports accuracy `acc`.

    Shapes: `pred` logits `(samples, classes)`, `target` ints `(samples,)`.
    `info["hard_targets"]` (if present) is used for the accuracy.
    """

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        info = {} if info is None else info
        loss = self._reduce(optax.softmax_cross_entropy_with_integer_labels(pred, target))
        return loss, {"loss": loss, "acc": accuracy(pred, info.get("hard_targets", target))}


class CrossEntropyMasked(EnergyFunction):
    """`CrossEntropy` over the samples where `info["mask"]` is 1."""

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        mask = _mask(info)
        loss = self._reduce(optax.softmax_cross_entropy_with_integer_labels(pred, target), mask)
        acc = accuracy(pred, (info or {}).get("hard_targets", target), mask)
        return loss, {"loss": loss, "acc": acc}


def _mask(info: Optional[dict]) -> jax.Array:
    if not info or "mask" not in info:
        raise KeyError(
            "A masked loss needs info['mask'] of shape (samples,) in the Dataset; use the "
            "unmasked loss if every sample counts."
        )
    return info["mask"]
