"""Energy functions: losses and regularisers with one signature, summed with `+`.

Every energy is called as

    energy(rng, pred, target, params, hparams, state, hstate, info={}) -> (loss, metrics)

so a data loss (which reads `pred`, `target`) and a regulariser (which reads `params`
and `hparams`) are interchangeable and `loss_a + loss_b` is again an energy.
"""

from __future__ import annotations

import abc
from typing import Any, Optional

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
    from metax.energy.function import FunctionEnergy  # function.py imports this module

    return FunctionEnergy(other, "an energy added with +")
