"""Learned inner optimisers: meta-parameters in, optax optimiser out."""

from metax.kernel.base import LearnedOptimizer
from metax.kernel.base import check_theta_matches
from metax.kernel.base import is_learned_optimizer
from metax.kernel.coordinatewise import CoordinatewiseKernel
from metax.kernel.coordinatewise import CoordinatewiseState
from metax.kernel.lr import LayerStepLR
from metax.kernel.lr import MetaSGD
from metax.kernel.lr import ScalarLR
from metax.kernel.metadyn import MetadynamicKernel
from metax.kernel.metadyn import MetadynamicOptimizer
from metax.kernel.metadyn import MetadynamicState
from metax.kernel.metadyn import finite_gradient_guard

__all__ = [
    "CoordinatewiseKernel",
    "CoordinatewiseState",
    "LayerStepLR",
    "LearnedOptimizer",
    "MetaSGD",
    "MetadynamicKernel",
    "MetadynamicOptimizer",
    "MetadynamicState",
    "ScalarLR",
    "check_theta_matches",
    "finite_gradient_guard",
    "is_learned_optimizer",
]
