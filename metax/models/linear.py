"""A linear layer with optional batch norm: the building block of the MLP."""

from typing import Optional

import haiku as hk
import jax

from metax.models.norm import BatchNorm, check_batch_norm_policy
from metax.models.transform import TransformOutsideHaiku


class LinearBlock(hk.Module, metaclass=TransformOutsideHaiku):
    """`hk.Linear`, optionally followed by `hk.BatchNorm` (whose statistics are haiku state).

    Called as `block(inputs, is_training)`. Constructed outside `hk.transform` it returns
    `hk.transform_with_state` of that call (metax's convention, see `metax.models.transform`).

    Args:
      output_size: number of output units.
      with_bias: add a bias.
      batch_norm: normalise the outputs with batch statistics (state carried by haiku).
      w_init, b_init: haiku initialisers (defaults: haiku's truncated normal / zeros).
      batch_norm_policy: what batch norm uses in the inner loop and the query pass:
        "running" (default), "support", "per_step" or "transductive"; see
        `metax.models.norm`.
      batch_norm_steps: the number of inner steps, for "per_step" only.

    Example:
      >>> block = metax.models.LinearBlock(4, batch_norm=True)
      >>> weights, state = block.init(jax.random.PRNGKey(0), jnp.ones((5, 3)), is_training=True)
      >>> block.apply(weights, state, None, jnp.ones((5, 3)), True)[0].shape
      (5, 4)
    """

    def __init__(
        self,
        output_size: int,
        with_bias: bool = True,
        batch_norm: bool = False,
        w_init: Optional[hk.initializers.Initializer] = None,
        b_init: Optional[hk.initializers.Initializer] = None,
        name: Optional[str] = None,
        *,
        batch_norm_policy: str = "running",
        batch_norm_steps: Optional[int] = None,
    ) -> None:
        check_batch_norm_policy(batch_norm_policy, batch_norm_steps)
        super().__init__(name=name)
        self.batch_norm_policy = batch_norm_policy
        self.batch_norm_steps = batch_norm_steps
        self.output_size = output_size
        self.with_bias = with_bias
        self.batch_norm = batch_norm
        self.w_init = w_init
        self.b_init = b_init

    def __call__(self, inputs: jax.Array, is_training: bool) -> jax.Array:
        out = hk.Linear(self.output_size, self.with_bias, self.w_init, self.b_init, name="linear")(inputs)
        if self.batch_norm:
            norm = BatchNorm(True, True, self.batch_norm_policy, self.batch_norm_steps, decay=0.9, name="batch_norm")
            out = norm(out, is_training)
        return out


class Linear(LinearBlock):
    """A linear layer called as `layer(inputs, is_training)`: `LinearBlock` without batch norm
    (metax's `metax.models.Linear`; outside `hk.transform` a `hk.transform_with_state` pair).

    Example:
      >>> layer = metax.models.Linear(2)
      >>> weights, state = layer.init(jax.random.PRNGKey(0), jnp.ones((5, 3)), is_training=True)
      >>> layer.apply(weights, state, None, jnp.ones((5, 3)), True)[0].shape
      (5, 2)
    """

    def __init__(
        self,
        output_size: int,
        with_bias: bool = True,
        w_init: Optional[hk.initializers.Initializer] = None,
        b_init: Optional[hk.initializers.Initializer] = None,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(output_size, with_bias, False, w_init, b_init, name=name)
