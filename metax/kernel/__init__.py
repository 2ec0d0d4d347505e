"""Learned inner optimisers: meta-parameters in, optax optimiser out."""

from metax.kernel.base import LearnedOptimizer
from metax.kernel.base import LearnedOptimizerHParams
from metax.kernel.base import WithLearnedOptimizer
from metax.kernel.base import check_theta_matches
from metax.kernel.base import is_learned_optimizer
from metax.kernel.lr import LayerStepLR
from metax.kernel.lr import MetaSGD
from metax.kernel.lr import ScalarLR

__all__ = [
    "LayerStepLR",
    "LearnedOptimizer",
    "LearnedOptimizerHParams",
    "MetaSGD",
    "ScalarLR",
    "WithLearnedOptimizer",
    "check_theta_matches",
    "is_learned_optimizer",
]
