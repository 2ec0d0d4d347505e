"""Energy functions: losses and regularisers with one signature, summed with `+`.

Every energy is called as

    energy(rng, pred, target, params, hparams, state, hstate, info={}) -> (loss, metrics)

so a data loss (which reads `pred`, `target`) and a regulariser (which reads `params`
and `hparams`) are interchangeable and `loss_a + loss_b` is again an energy.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp

REDUCTIONS = ("mean", "sum", "none")


class EnergyFunction(abc.ABC):
    """Base class of all losses and regularisers.

    Args:
      reduction: how per-element values are combined: "mean", "sum" or "none".

    Example:
      >>> class AbsoluteError(metax.energy.EnergyFunction):
      ...     def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
      ...         loss = self._reduce(jnp.abs(pred - target))
      ...         return loss, {"loss": loss}
      >>> AbsoluteError()(None, jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0]), None, None, None, None)
      (Array(2., dtype=float32), {'loss': Array(2., dtype=float32)})
    """

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        self.reduction = reduction

    def __add__(self, other: Any) -> EnergySum:
        # A plain function with the loss signature is an energy too (metax's convention):
        # it is wrapped, so `SquaredError() + my_loss` and `my_loss + iMAML(...)` both work.
        other = _as_energy_or_none(other)
        if other is None:
            return NotImplemented
        return EnergySum(self, other)

    def __radd__(self, other: Any) -> EnergySum:
        other = _as_energy_or_none(other)
        if other is None:
            return NotImplemented
        return EnergySum(other, self)

    @abc.abstractmethod
    def __call__(
        self,
        rng: Optional[jax.Array],
        pred: Any,
        target: Any,
        params: Any,
        hparams: Any,
        state: Any,
        hstate: Any,
        info: Optional[dict] = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns the scalar energy and a dict of metrics."""

    def check_target(self, pred: jax.ShapeDtypeStruct, target: jax.ShapeDtypeStruct, argument: str) -> None:
        """Raises if `target` cannot be scored against predictions shaped like `pred`.

        Learners call this once per call (at trace time under `jit`) with one task's
        shapes, so a target that would broadcast against the model's output fails with a
        message naming `argument` instead of training on. The default accepts anything:
        regularisers do not read targets; data losses override it.
        """

    def _reduce(self, value: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        """Reduces `value` per `self.reduction`; a mask weights (and counts) elements."""
        if mask is not None:
            mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (value.ndim - mask.ndim)), value.shape)
            value = value * mask
            if self.reduction == "mean":
                return jnp.sum(value) / jnp.maximum(jnp.sum(mask), 1)
        if self.reduction == "mean":
            return jnp.mean(value)
        if self.reduction == "sum":
            return jnp.sum(value)
        return value


class EnergySum(EnergyFunction):
    """The sum of several energies; metrics are merged (a repeated key gets `_2`, `_3`, ...).

    Example:
      >>> total = metax.energy.SquaredError() + metax.energy.SquaredError(reduction="sum")
      >>> loss, metrics = total(None, jnp.array([[1.0], [3.0]]), jnp.zeros((2, 1)), None, None, None, None)
      >>> float(loss), sorted(metrics)
      (15.0, ['loss', 'loss_2'])
    """

    def __init__(self, *energies: EnergyFunction) -> None:
        super().__init__()
        flat = []
        for energy in energies:
            flat.extend(energy.energies if isinstance(energy, EnergySum) else [energy])
        self.energies = tuple(flat)

    def check_target(self, pred, target, argument):
        for energy in self.energies:
            energy.check_target(pred, target, argument)

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        rngs = [None] * len(self.energies) if rng is None else jax.random.split(rng, len(self.energies))
        total, metrics = 0.0, {}
        for energy, rng_energy in zip(self.energies, rngs):
            value, energy_metrics = energy(rng_energy, pred, target, params, hparams, state, hstate, info)
            total = total + value
            for key, metric in energy_metrics.items():
                name, count = key, 1
                while name in metrics:
                    count += 1
                    name = f"{key}_{count}"
                metrics[name] = metric
        return total, metrics


def _as_energy_or_none(other: Any) -> Optional[EnergyFunction]:
    """`other` as an energy for `+`, or None if it is not callable (numbers and the like)."""
    if isinstance(other, EnergyFunction):
        return other
    if not callable(other):
        return None
    return FunctionEnergy(other, "an energy added with +")


# -- plain functions as energies (metax's loss convention; see metax.energy.function) --

SIGNATURE = "fn(rng, pred, target, params, hparams, state, hstate, info) -> (loss, metrics)"
_ARGUMENTS = ("rng", "pred", "target", "params", "hparams", "state", "hstate", "info")


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def check_signature(fn: Any, argument: str) -> None:
    """Raises TypeError unless `fn` can be called with metax's eight loss arguments.

    Args:
      fn: the candidate loss.
      argument: the constructor argument it was passed as (named in the error).
    """
    if not callable(fn):
        raise TypeError(f"{argument} must be a loss called as {SIGNATURE}; got {type(fn).__name__}, which is not callable.")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        return
    try:
        signature.bind(*_ARGUMENTS)
    except TypeError as error:
        raise TypeError(
            f"{argument} must be a loss called as {SIGNATURE}; {_name(fn)}{signature} cannot take "
            f"those eight positional arguments ({error}). Wrap it, e.g. lambda rng, pred, target, "
            "params, hparams, state, hstate, info: (loss(pred, target).mean(), {}), or use "
            "metax.energy.SquaredError() / CrossEntropy()."
        ) from None


class FunctionEnergy(EnergyFunction):
    """An energy made from a plain function with metax's loss signature.

    The result is checked at trace time (free under `jit`): a scalar loss and a mapping of
    metrics; anything else fails with a message naming the function and the argument it
    was passed as, instead of an opaque error inside `jax.grad`.

    Args:
      fn: `fn(rng, pred, target, params, hparams, state, hstate, info) -> (loss, metrics)`.
      argument: where it was passed (e.g. "loss_fn_inner"), for error messages.

    Example:
      >>> def mse(rng, pred, target, params, hparams, state, hstate, info):
      ...     return jnp.mean((pred - target) ** 2), {}
      >>> energy = metax.energy.FunctionEnergy(mse, "loss_fn_inner")
      >>> loss, metrics = energy(None, jnp.ones(3), jnp.zeros(3), None, None, None, None)
      >>> float(loss)
      1.0
    """

    def __init__(self, fn: Callable, argument: str = "loss_fn") -> None:
        super().__init__()
        check_signature(fn, argument)
        self.fn = fn
        self.argument = argument

    def __repr__(self) -> str:
        return f"FunctionEnergy({_name(self.fn)})"

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        # The order is the convention's: a wrapper that swapped two arguments would train
        # on silently, so the tests pin it against a hand-written loss.
        result = self.fn(rng, pred, target, params, hparams, state, hstate, {} if info is None else info)
        return self._checked(result)

    def _checked(self, result: Any) -> tuple[jax.Array, dict]:
        where = f"{self.argument} ({_name(self.fn)})"
        if not (isinstance(result, tuple) and len(result) == 2):
            raise TypeError(
                f"{where} must return a pair (loss, metrics), got {type(result).__name__}; "
                "return e.g. (loss, {'loss': loss})."
            )
        loss, metrics = result
        if jnp.shape(loss) != ():
            raise ValueError(
                f"{where} returned a loss of shape {jnp.shape(loss)} for one task; it must be a "
                "scalar: reduce it (e.g. .mean()) inside the function."
            )
        if not isinstance(metrics, Mapping):
            raise TypeError(f"{where} must return metrics as a dict of arrays, got {type(metrics).__name__}.")
        return loss, dict(metrics)


def as_energy(fn: Any, argument: str = "loss_fn") -> EnergyFunction:
    """`fn` itself if it is an `EnergyFunction`, else `fn` wrapped in a `FunctionEnergy`.

    Raises:
      TypeError: if `fn` cannot be called with metax's eight loss arguments.

    Example:
      >>> from metax.energy import SquaredError
      >>> energy = SquaredError()
      >>> as_energy(energy) is energy
      True
    """
    if isinstance(fn, EnergyFunction):
        return fn
    return FunctionEnergy(fn, argument)

