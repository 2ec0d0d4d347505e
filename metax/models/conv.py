"""The 4-block convolutional network of few-shot image classification.

Vinyals et al. "Matching Networks for One Shot Learning", NeurIPS 2016: four blocks of
3x3 convolution, batch norm, ReLU and 2x2 max-pooling, then an optional linear readout.
"""

from typing import Optional

import haiku as hk
import jax

from metax.models.convolution import Conv2D
from metax.models.norm import BatchNorm, check_batch_norm_policy
from metax.models.transform import TransformOutsideHaiku


class ConvBlock(hk.Module):
    """3x3 conv -> batch norm (optional gain/shift as scale/offset) -> ReLU -> 2x2 max-pool.

    `batch_norm_policy` / `batch_norm_steps` choose what batch norm uses in the inner loop
    and the query pass (see `Conv4` and `metax.models.norm`); `conv_impl` how the
    convolution is computed (see `Conv4`).

    Example:
      >>> block = hk.transform_with_state(lambda x: metax.models.ConvBlock(4)(x, is_training=True))
      >>> x = jnp.zeros((2, 8, 8, 1))
      >>> params, state = jax.eval_shape(block.init, rng, x)
      >>> jax.tree_util.tree_map(lambda p: p.shape, params)
      {'conv_block/conv': {'b': (4,), 'w': (3, 3, 1, 4)}, 'conv_block/norm': {'offset': (1, 1, 1, 4), 'scale': (1, 1, 1, 4)}}
      >>> out, _ = jax.eval_shape(block.apply, params, state, None, x)
      >>> out.shape  # 8x8 halved by the max-pool
      (2, 4, 4, 4)
    """

    def __init__(
        self,
        channels: int,
        decay: float = 0.9,
        max_pool: bool = True,
        name: Optional[str] = None,
        *,
        batch_norm_policy: str = "running",
        batch_norm_steps: Optional[int] = None,
        conv_impl: str = "auto",
    ) -> None:
        check_batch_norm_policy(batch_norm_policy, batch_norm_steps)
        super().__init__(name=name)
        self.conv_impl = conv_impl
        self.batch_norm_policy = batch_norm_policy
        self.batch_norm_steps = batch_norm_steps
        self.channels = channels
        self.decay = decay
        self.max_pool = max_pool

    def __call__(self, inputs: jax.Array, is_training: bool, gain=None, shift=None) -> jax.Array:
        stride = 1 if self.max_pool else 2
        # hk.Conv2D's parameters, computed as matrix products on CPU (metax.models.convolution).
        out = Conv2D(self.channels, kernel_shape=3, stride=stride, name="conv", impl=self.conv_impl)(inputs)
        # Given gains/shifts replace batch norm's own learned scale/offset.
        norm = BatchNorm(
            gain is None, shift is None, self.batch_norm_policy, self.batch_norm_steps, self.decay, name="norm"
        )
        out = norm(out, is_training, scale=gain, offset=shift)
        out = jax.nn.relu(out)
        if self.max_pool:
            out = hk.max_pool(out, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="SAME")
        return out


class Conv4(hk.Module, metaclass=TransformOutsideHaiku):
    """Four `ConvBlock`s on `(batch, height, width, channels)` images, flattened features out.

    Called as `net(images, is_training, gain=None, shift=None)`. Constructed outside
    `hk.transform` it returns `hk.transform_with_state` of that call, as in metax:
    `LearnedInit(..., base_learner=Conv4(32, 0.9, readout=5))`.

    Args:
      channels: filters per block (64 in the literature, 32 for MAML on miniImageNet).
      decay: batch norm's moving-average decay (metax's second argument).
      readout: if given, a final linear layer with this many outputs (e.g. the classes).
      max_pool: 2x2 max-pooling after each block (else stride-2 convolutions).
      batch_norm_policy: what batch norm uses in the inner loop (training-mode passes on
        the support set) and the query pass (evaluation mode): "running" (moving
        averages, the default), "support" (the support set's statistics at the adapted
        weights), "per_step" (MAML++ per-step running statistics; give
        `batch_norm_steps`, the number of inner steps) or "transductive" (each batch's
        own statistics, the query set's included). See `metax.models.norm`.
      batch_norm_steps: the number of inner steps, for "per_step" only.
      conv_impl: how the convolutions are computed (`metax.models.convolution.conv2d`):
        "auto" (matrix products over shifted views on CPU, where XLA's convolution
        gradients are slow; XLA's convolution elsewhere), "xla" or "shifted".
        Parameters and values are the same (up to float rounding) whichever is used.

    Example:
      >>> net = metax.models.Conv4(channels=8, readout=5)  # outside hk.transform: init/apply
      >>> x = jnp.zeros((2, 28, 28, 1))
      >>> params, state = jax.eval_shape(lambda key: net.init(key, x, True), rng)
      >>> sorted(params)[:3]
      ['conv4/readout', 'conv4/~/block_0/conv', 'conv4/~/block_0/norm']
      >>> logits, _ = jax.eval_shape(lambda p, s: net.apply(p, s, None, x, False), params, state)
      >>> logits.shape
      (2, 5)
    """

    def __init__(
        self,
        channels: int = 64,
        decay: float = 0.9,
        readout: Optional[int] = None,
        max_pool: bool = True,
        name: Optional[str] = None,
        *,
        batch_norm_policy: str = "running",
        batch_norm_steps: Optional[int] = None,
        conv_impl: str = "auto",
    ) -> None:
        super().__init__(name=name)
        self.readout = readout
        self.blocks = tuple(
            ConvBlock(
                channels, decay, max_pool, name=f"block_{i}",
                batch_norm_policy=batch_norm_policy, batch_norm_steps=batch_norm_steps,
                conv_impl=conv_impl,
            )
            for i in range(4)
        )

    def __call__(self, inputs: jax.Array, is_training: bool, gain=None, shift=None) -> jax.Array:
        if inputs.ndim != 4:
            raise ValueError(f"Conv4 expects images (batch, height, width, channels), got shape {inputs.shape}.")
        out = inputs
        for i, block in enumerate(self.blocks):
            out = block(out, is_training, None if gain is None else gain[i], None if shift is None else shift[i])
        out = out.reshape(out.shape[0], -1)
        if self.readout is not None:
            out = hk.Linear(self.readout, name="readout")(out)
        return out
