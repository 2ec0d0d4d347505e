"""Plain functions as energies: metax's loss convention.

In metax a loss is any callable

    loss_fn(rng, pred, target, params, hparams, state, hstate, info) -> (loss, metrics)

`as_energy` accepts such a function where an `EnergyFunction` is expected and wraps it in
a `FunctionEnergy`, so it composes with `+` (a module adds its regulariser that way) and
its result is checked the first time it is traced with the model's shapes.

Example:
  >>> import jax.numpy as jnp
  >>> def mse(rng, pred, target, params, hparams, state, hstate, info):
  ...     loss = jnp.mean((pred - target) ** 2)
  ...     return loss, {"loss": loss}
  >>> energy = as_energy(mse, "loss_fn_inner")
  >>> float(energy(None, jnp.ones(2), jnp.zeros(2), None, None, None, None, {})[0])
  1.0
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from metax.energy.base import EnergyFunction

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

