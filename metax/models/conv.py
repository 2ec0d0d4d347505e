"""The 4-block convolutional network of few-shot image classification.

Vinyals et al. "Matching Networks for One Shot Learning", NeurIPS 2016: four blocks of
3x3 convolution, batch norm, ReLU and 2x2 max-pooling, then an optional linear readout.
"""

from typing import Optional

import haiku as hk
import jax

from metax.models.norm import BatchNorm, check_batch_norm_policy
from metax.models.transform import TransformOutsideHaiku


class ConvBlock(hk.Module):
    """3x3 conv -> batch norm (optional gain/shift as scale/offset) -> ReLU -> 2x2 max-pool.

    `batch_norm_policy` / `batch_norm_steps` choose what batch norm uses in the inner loop
    and the query pass (see `Conv4` and `metax.models.norm`).
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
    ) -> None:
        check_batch_norm_policy(batch_norm_policy, batch_norm_steps)
        super().__init__(name=name)
        self.batch_norm_policy = batch_norm_policy
        self.batch_norm_steps = batch_norm_steps
        self.channels = channels
        self.decay = decay
        self.max_pool = max_pool

    def __call__(self, inputs: jax.Array, is_training: bool, gain=None, shift=None) -> jax.Array:
        stride = 1 if self.max_pool else 2
        out = hk.Conv2D(self.channels, kernel_shape=3, stride=stride, name="conv")(inputs)
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
    ) -> None:
        super().__init__(name=name)
        self.readout = readout
        self.blocks = tuple(
            ConvBlock(
                channels, decay, max_pool, name=f"block_{i}",
                batch_norm_policy=batch_norm_policy, batch_norm_steps=batch_norm_steps,
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
