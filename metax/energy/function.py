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

# The wrapper lives beside EnergyFunction, whose `+` wraps plain functions too (one module,
# so the two never import each other); this module keeps the convention's own name.
from metax.energy.base import SIGNATURE, FunctionEnergy, as_energy, check_signature

__all__ = ["SIGNATURE", "FunctionEnergy", "as_energy", "check_signature"]
