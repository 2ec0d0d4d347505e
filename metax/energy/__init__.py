"""Losses and regularisers with one signature, composable with `+`."""

from metax.energy.base import EnergyFunction
from metax.energy.base import EnergySum
from metax.energy.function import FunctionEnergy
from metax.energy.function import as_energy
from metax.energy.loss import CrossEntropy
from metax.energy.loss import CrossEntropyMasked
from metax.energy.loss import SquaredError
from metax.energy.loss import SquaredErrorMasked
from metax.energy.loss import accuracy
from metax.energy.regularizer import LearnedL2
from metax.energy.regularizer import iMAML

__all__ = [
    "CrossEntropy",
    "CrossEntropyMasked",
    "EnergyFunction",
    "EnergySum",
    "FunctionEnergy",
    "LearnedL2",
    "SquaredError",
    "SquaredErrorMasked",
    "accuracy",
    "as_energy",
    "iMAML",
]
