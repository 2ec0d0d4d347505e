"""metax: a functional meta-learning framework in JAX and Haiku."""

from metax import _interrupts

_interrupts.begin()  # a Ctrl-C during the imports below is not lost (see metax/_interrupts.py)

# Any order works: each floor imports the floors it builds on itself (the runner,
# `experiment`, imports the library; nothing in the library imports the runner).
from metax import data
from metax import dynamics
from metax import energy
from metax import experiment
from metax import kernel
from metax import learner
from metax import models
from metax import module
from metax import parallel
from metax import tilt
from metax import utils

_interrupts.end()

__version__ = "0.1.0"

__all__ = [
    "data",
    "dynamics",
    "energy",
    "experiment",
    "kernel",
    "learner",
    "models",
    "module",
    "parallel",
    "tilt",
    "utils",
]
