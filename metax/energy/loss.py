"""Data losses: squared error and cross-entropy, plain and masked.

Convention: `SquaredError` is the plain mean squared error, mean over all elements of
(pred - target)^2 (not half of it), everywhere in metax; the reported `loss` is the MSE.
"""

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from metax.energy.base import EnergyFunction


def check_same_shape(pred: jax.ShapeDtypeStruct, target: jax.ShapeDtypeStruct, argument: str, name: str) -> None:
    """A regression target must have exactly the prediction's shape: anything else broadcasts."""
    if tuple(target.shape) != tuple(pred.shape):
        try:
            broadcast = f"they would broadcast to {jnp.broadcast_shapes(tuple(pred.shape), tuple(target.shape))}"
        except ValueError:
            broadcast = "they do not even broadcast"
        raise ValueError(
            f"{argument} has shape {tuple(target.shape)} per task but the model outputs "
            f"{tuple(pred.shape)}; {name} needs equal shapes ({broadcast}). Reshape the targets "
            f"(e.g. y[..., None] for (samples,) targets) or make the network's last layer "
            f"{target.shape[-1] if len(target.shape) > 1 else 1} wide."
        )
    if not jnp.issubdtype(target.dtype, jnp.floating):
        raise TypeError(f"{argument} has dtype {target.dtype}; {name} takes floating targets: use y.astype(jnp.float32).")


def check_class_labels(pred: jax.ShapeDtypeStruct, target: jax.ShapeDtypeStruct, argument: str, name: str) -> None:
    """Class labels are integers of the logits' shape without the class axis."""
    if not jnp.issubdtype(target.dtype, jnp.integer):
        raise TypeError(
            f"{argument} has dtype {target.dtype}; {name} takes integer class labels of shape "
            f"{tuple(pred.shape[:-1])}: use y.astype(jnp.int32) (for one-hot targets, y.argmax(-1))."
        )
    if tuple(target.shape) != tuple(pred.shape[:-1]):
        raise ValueError(
            f"{argument} has shape {tuple(target.shape)} per task but the model outputs logits "
            f"{tuple(pred.shape)}; {name} needs labels of shape {tuple(pred.shape[:-1])} (e.g. y[..., 0] "
            "for (samples, 1) labels)."
        )


def accuracy(logits: jax.Array, labels: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
    """Fraction of samples whose arg-max logit equals the integer label.

    Example:
      >>> metax.energy.accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0]))
      Array(0.5, dtype=float32)
    """
    hits = (jnp.argmax(logits, axis=-1) == labels).astype(logits.dtype)
    if mask is None:
        return jnp.mean(hits)
    return jnp.sum(hits * mask) / jnp.maximum(jnp.sum(mask), 1)


class SquaredError(EnergyFunction):
    """Mean squared error, mean over samples and output dims of (pred - target)^2.

    Shapes: `pred` and `target` both `(samples, output_dim)`.

    Example:
      >>> loss, metrics = metax.energy.SquaredError()(
      ...     None, jnp.array([[1.0], [3.0]]), jnp.zeros((2, 1)), None, None, None, None)
      >>> float(loss)
      5.0
    """

    def check_target(self, pred, target, argument):
        check_same_shape(pred, target, argument, "SquaredError")

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        loss = self._reduce(jnp.square(pred - target))
        return loss, {"loss": loss}


class SquaredErrorMasked(EnergyFunction):
    """`SquaredError` over the samples where `info["mask"]` (shape `(samples,)`) is 1.

    Example:
      >>> loss, _ = metax.energy.SquaredErrorMasked()(
      ...     None, jnp.array([[1.0], [3.0]]), jnp.zeros((2, 1)), None, None, None, None,
      ...     info={"mask": jnp.array([1.0, 0.0])})
      >>> float(loss)  # the second sample is padding
      1.0
    """

    def check_target(self, pred, target, argument):
        check_same_shape(pred, target, argument, "SquaredErrorMasked")

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        loss = self._reduce(jnp.square(pred - target), _mask(info))
        return loss, {"loss": loss}


class CrossEntropy(EnergyFunction):
    """Softmax cross-entropy with integer labels; also reports accuracy `acc`.

    Shapes: `pred` logits `(samples, classes)`, `target` ints `(samples,)`.
    `info["hard_targets"]` (if present) is used for the accuracy.

    Example:
      >>> loss, metrics = metax.energy.CrossEntropy()(
      ...     None, jnp.array([[10.0, 0.0], [0.0, 10.0]]), jnp.array([0, 0]), None, None, None, None)
      >>> round(float(loss), 2), float(metrics["acc"])
      (5.0, 0.5)
    """

    def check_target(self, pred, target, argument):
        check_class_labels(pred, target, argument, "CrossEntropy")

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        info = {} if info is None else info
        loss = self._reduce(optax.softmax_cross_entropy_with_integer_labels(pred, target))
        return loss, {"loss": loss, "acc": accuracy(pred, info.get("hard_targets", target))}


class CrossEntropyMasked(EnergyFunction):
    """`CrossEntropy` over the samples where `info["mask"]` is 1.

    Example:
      >>> loss, metrics = metax.energy.CrossEntropyMasked()(
      ...     None, jnp.array([[10.0, 0.0], [0.0, 10.0]]), jnp.array([0, 0]), None, None, None, None,
      ...     info={"mask": jnp.array([1.0, 0.0])})
      >>> float(metrics["acc"])
      1.0
    """

    def check_target(self, pred, target, argument):
        check_class_labels(pred, target, argument, "CrossEntropyMasked")

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
