"""metax: a functional meta-learning framework in JAX and Haiku."""

from metax import data
from metax import energy
from metax import kernel
from metax import learner
from metax import models
from metax import module
from metax import parallel
from metax import tilt
from metax import utils

# Last: the runner builds on every part above.
from metax import experiment  # noqa: E402

# After the runner: sweeps write their files with its atomic writer.
from metax import dynamics  # noqa: E402

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
