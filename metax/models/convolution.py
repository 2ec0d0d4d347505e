"""2-D convolution written as matrix products over shifted views, fast where XLA is slow.

XLA:CPU computes a convolution's weight gradient about five times slower than a matrix
product of the same size (openxla/xla#34273, jax-ml/jax#23783), and a convolution whose
kernel is batched by `vmap` (MAML's per-task weights) becomes a grouped convolution,
slower still. MAML differentiates through the inner loop, so it pays for both several
times per meta-step.

Here a `kh x kw` convolution is one matrix product over the strided views of the padded
input that meet each kernel offset `(i, j)`, laid side by side (im2col):
`out = concat_ij(view_ij(pad(x))) @ w.reshape(kh * kw * in, out)`. Everything is slices,
pads, a concatenation and a `dot_general`, so JAX's own rules give every derivative,
forward and reverse, to any order (MAML's second order, the implicit learners'
`linearize` of a gradient): the weight gradient becomes `patches^T g`, one matrix product
whose inner dimension is the batch times the image, and under `vmap` a batched one. Values equal `jax.lax.conv_general_dilated`'s up to float rounding (the
products are summed in a different order).

`conv2d(..., impl="auto")` uses the shifted views on CPU and XLA's convolution elsewhere
(chosen by `jax.default_backend()` when traced); `impl="xla"` or `"shifted"` forces one.
"""

from typing import Optional, Sequence, Tuple, Union

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

CONV_IMPLS = ("auto", "xla", "shifted")

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

Padding = Union[str, Sequence[Tuple[int, int]]]


def resolve_conv_impl(impl: str = "auto") -> str:
    """The implementation `impl` names: "auto" is "shifted" on CPU, "xla" on other backends.

    Example:
      >>> resolve_conv_impl("xla")
      'xla'
    """
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}.")
    if impl == "auto":
        # Measured faster on CPU only (benchmarks/conv4_maml.py); accelerators have fast
        # convolution kernels of their own.
        return "shifted" if jax.default_backend() == "cpu" else "xla"
    return impl


def _shifted_views(inputs: jax.Array, kernel_hw: Tuple[int, int], stride: Tuple[int, int], padding: Padding):
    """The `kh * kw` strided slices of the padded input that meet kernel tap `(i, j)`."""
    kh, kw = kernel_hw
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(inputs.shape[1:3], kernel_hw, stride, padding)
    (top, bottom), (left, right) = padding
    padded = jnp.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, hp, wp, c = padded.shape
    ho, wo = (hp - kh) // stride[0] + 1, (wp - kw) // stride[1] + 1
    return [
        lax.slice(
            padded,
            (0, i, j, 0),
            (n, i + stride[0] * (ho - 1) + 1, j + stride[1] * (wo - 1) + 1, c),
            (1, stride[0], stride[1], 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]


def conv2d(
    inputs: jax.Array,
    kernel: jax.Array,
    stride: Union[int, Tuple[int, int]] = 1,
    padding: Padding = "SAME",
    *,
    impl: str = "auto",
) -> jax.Array:
    """`lax.conv_general_dilated(inputs, kernel, stride, padding)` for NHWC inputs, HWIO kernels.

    Args:
      inputs: images `(batch, height, width, in_channels)`.
      kernel: `(kh, kw, in_channels, out_channels)`, as `hk.Conv2D`'s `w`.
      stride: an int or a pair (rows, columns).
      padding: "SAME", "VALID" or ((top, bottom), (left, right)).
      impl: "auto" (shifted views on CPU, XLA elsewhere), "xla" or "shifted" (one matrix
        product over the kernel taps' shifted views side by side).

    Returns:
      `(batch, out_height, out_width, out_channels)`.

    Example:
      >>> x, w = jnp.ones((2, 5, 5, 3)), jnp.ones((3, 3, 3, 4))
      >>> conv2d(x, w, impl="shifted").shape
      (2, 5, 5, 4)
    """
    stride = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if inputs.ndim != 4 or kernel.ndim != 4 or inputs.shape[-1] != kernel.shape[2]:
        raise ValueError(
            f"conv2d takes inputs (batch, height, width, channels) and a kernel (kh, kw, in, out) "
            f"with matching channels; got shapes {inputs.shape} and {kernel.shape}."
        )
    impl = resolve_conv_impl(impl)
    if impl == "xla":
        return lax.conv_general_dilated(inputs, kernel, stride, padding, dimension_numbers=_DIMENSION_NUMBERS)
    # One matrix product over the taps' views side by side (im2col): (N*H*W, kh*kw*Cin)
    # by (kh*kw*Cin, Cout), whose rows follow the kernel's (i, j, c) order. Against one
    # product per tap it halves the meta-step's HLO, cuts XLA's compile time by a third
    # and runs 1.6x faster (benchmarks/RESULTS.md): the weight gradient is one GEMM with
    # a 576 x 64 output instead of nine 64 x 64 ones.
    patches = jnp.concatenate(_shifted_views(inputs, kernel.shape[:2], stride, padding), axis=-1)
    return jnp.einsum("nhwk,kd->nhwd", patches, kernel.reshape(-1, kernel.shape[-1]))


class Conv2D(hk.Module):
    """`hk.Conv2D` (NHWC, same parameter names, shapes and initialisation) computed by `conv2d`.

    Parameters are `w: (kh, kw, in_channels, output_channels)` and `b: (output_channels,)`,
    so a checkpoint of `hk.Conv2D(..., name=n)` loads into `Conv2D(..., name=n)`.

    Example:
      >>> f = hk.transform(lambda x: Conv2D(4, 3, name="conv")(x))
      >>> params = f.init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 2)))
      >>> params["conv"]["w"].shape
      (3, 3, 2, 4)
    """

    def __init__(
        self,
        output_channels: int,
        kernel_shape: Union[int, Tuple[int, int]] = 3,
        stride: Union[int, Tuple[int, int]] = 1,
        padding: Padding = "SAME",
        with_bias: bool = True,
        name: Optional[str] = None,
        *,
        impl: str = "auto",
    ) -> None:
        super().__init__(name=name)
        resolve_conv_impl(impl)  # fail at construction on a misspelt name
        self.output_channels = output_channels
        self.kernel_shape = (kernel_shape, kernel_shape) if isinstance(kernel_shape, int) else tuple(kernel_shape)
        self.stride = stride
        self.padding = padding
        self.with_bias = with_bias
        self.impl = impl

    def __call__(self, inputs: jax.Array) -> jax.Array:
        w_shape = self.kernel_shape + (inputs.shape[-1], self.output_channels)
        # hk.Conv2D's default initialiser, so the same key gives the same parameters.
        stddev = 1.0 / np.sqrt(np.prod(w_shape[:-1]))
        w = hk.get_parameter("w", w_shape, inputs.dtype, init=hk.initializers.TruncatedNormal(stddev=stddev))
        out = conv2d(inputs, w, self.stride, self.padding, impl=self.impl)
        if self.with_bias:
            out = out + hk.get_parameter("b", (self.output_channels,), inputs.dtype, init=jnp.zeros)
        return out
