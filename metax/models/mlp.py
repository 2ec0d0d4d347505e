"""Multilayer perceptron with the gain / shift hooks that modulating modules need."""

from typing import Callable, Optional, Sequence

import haiku as hk
import jax

from metax.models.linear import LinearBlock
from metax.models.transform import TransformOutsideHaiku


class MultilayerPerceptron(hk.Module, metaclass=TransformOutsideHaiku):
    """An MLP over flattened inputs, `(batch, *input_shape) -> (batch, output_sizes[-1])`.

    Inside `hk.transform` this is a Haiku module; constructed outside one it returns
    `hk.transform_with_state` of its forward pass (metax's convention), which a module
    takes directly: `ANIL(..., body=MultilayerPerceptron([32, 32], activate_final=True))`.

    Gain modulation (Zucchet et al., 2022) multiplies each layer's pre-activation by a
    per-unit `gain` and adds a per-unit `shift`; both are passed in at call time so a
    module can own them as separate (meta-learned or adapted) parameters.

    Args:
      output_sizes: the width of every layer, the last one being the output.
      activation: applied after every layer but the last (and the last too if
        `activate_final`).
      with_bias, batch_norm, w_init, b_init: passed to each `LinearBlock`.
      batch_norm_policy, batch_norm_steps: with `batch_norm`, what it uses in the inner
        loop and the query pass ("running", "support", "per_step" with the number of
        inner steps, or "transductive"; see `metax.models.norm`).

    Example:
      >>> net = metax.models.MultilayerPerceptron([8, 1])  # outside hk.transform: an init/apply pair
      >>> weights, state = net.init(jax.random.PRNGKey(0), jnp.zeros((3, 2)), is_training=True)
      >>> net.apply(weights, state, None, jnp.zeros((3, 2)), True)[0].shape
      (3, 1)
    """

    def __init__(
        self,
        output_sizes: Sequence[int],
        w_init: Optional[hk.initializers.Initializer] = None,
        b_init: Optional[hk.initializers.Initializer] = None,
        with_bias: bool = True,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.relu,
        activate_final: bool = False,
        batch_norm: bool = False,
        name: Optional[str] = None,
        *,
        batch_norm_policy: str = "running",
        batch_norm_steps: Optional[int] = None,
    ) -> None:
        super().__init__(name=name)
        self.output_sizes = tuple(output_sizes)
        if not self.output_sizes or min(self.output_sizes) < 1:
            raise ValueError(f"output_sizes must be positive layer widths, got {self.output_sizes}.")
        self.activation = activation
        self.activate_final = activate_final
        self.layers = tuple(
            LinearBlock(
                size, with_bias, batch_norm, w_init, b_init, name=f"linear_{i}",
                batch_norm_policy=batch_norm_policy, batch_norm_steps=batch_norm_steps,
            )
            for i, size in enumerate(self.output_sizes)
        )

    def __call__(
        self,
        inputs: jax.Array,
        is_training: bool,
        gain: Optional[Sequence[jax.Array]] = None,
        shift: Optional[Sequence[jax.Array]] = None,
        skip_readout: bool = False,
    ) -> jax.Array:
        """Applies the network.

        Args:
          inputs: `(batch, *input_shape)`, flattened after the batch axis.
          is_training: passed to batch norm.
          gain, shift: optional per-layer arrays of shape `(output_sizes[i],)`; a list
            shorter than the number of layers modulates only the first layers.
          skip_readout: stop before the last layer (returns the last hidden features).
        """
        out = hk.Flatten(preserve_dims=1)(inputs)
        num_layers = len(self.layers) - (1 if skip_readout else 0)
        for i in range(num_layers):
            out = self.layers[i](out, is_training)
            if gain is not None and i < len(gain):
                out = out * gain[i]
            if shift is not None and i < len(shift):
                out = out + shift[i]
            if i < len(self.layers) - 1 or self.activate_final:
                out = self.activation(out)
        return out


def mlp_fn(hidden_dims: Sequence[int], output_dim: int, **kwargs) -> hk.TransformedWithState:
    """`hk.transform_with_state` of an MLP with call signature `(x, is_training)`.

    Example:
      >>> net = metax.models.mlp_fn([16], output_dim=3)
      >>> weights, _ = jax.eval_shape(lambda key, x: net.init(key, x, is_training=True),
      ...                             jax.random.PRNGKey(0), jnp.zeros((1, 4)))
      >>> [leaf.shape for leaf in jax.tree_util.tree_leaves(weights)]  # (b, w) per layer
      [(16,), (4, 16), (3,), (16, 3)]
    """
    sizes = tuple(hidden_dims) + (output_dim,)
    return hk.transform_with_state(lambda x, is_training: MultilayerPerceptron(sizes, **kwargs)(x, is_training))
