"""Haiku networks with the hooks metax modules need."""

from metax.models.conv import Conv4
from metax.models.conv import ConvBlock
from metax.models.linear import Linear
from metax.models.linear import LinearBlock
from metax.models.mlp import MultilayerPerceptron
from metax.models.mlp import mlp_fn
from metax.models.norm import BATCH_NORM_POLICIES
from metax.models.norm import BatchNorm

__all__ = [
    "BATCH_NORM_POLICIES",
    "BatchNorm",
    "Conv4",
    "ConvBlock",
    "Linear",
    "LinearBlock",
    "MultilayerPerceptron",
    "mlp_fn",
]
