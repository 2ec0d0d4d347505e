"""Haiku networks with the hooks metax modules need."""

from metax.models.conv import Conv4
from metax.models.conv import ConvBlock
from metax.models.convolution import CONV_IMPLS
from metax.models.convolution import Conv2D
from metax.models.convolution import conv2d
from metax.models.linear import Linear
from metax.models.linear import LinearBlock
from metax.models.mlp import MultilayerPerceptron
from metax.models.mlp import mlp_fn
from metax.models.norm import BATCH_NORM_POLICIES
from metax.models.norm import BatchNorm
from metax.models.vae import BernoulliVAE
from metax.models.vae import bernoulli_vae

__all__ = [
    "BATCH_NORM_POLICIES",
    "BatchNorm",
    "BernoulliVAE",
    "CONV_IMPLS",
    "Conv2D",
    "Conv4",
    "ConvBlock",
    "Linear",
    "LinearBlock",
    "MultilayerPerceptron",
    "bernoulli_vae",
    "conv2d",
    "mlp_fn",
]
