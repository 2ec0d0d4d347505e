"""Closed-form Gaussian tilt and its samplers: the toy mirror-descent study (seed 004).

`GaussianTilt` gives the exact laws of pi_beta(a|s) ∝ q(a|s) exp(beta Q(a)) and of the
tilted joint over (a, s'); the samplers approximate them and `metrics` measures how
well. `experiments/toy_md/run_toy_md.py` runs the whole study.
"""

from .annealed import PC_SAMPLERS as PC_SAMPLERS
from .annealed import annealed_pc as annealed_pc
from .annealed import validate_levels as validate_levels
from .chains import SamplerResult as SamplerResult
from .chains import run_chains as run_chains
from .gaussian import GaussianTilt as GaussianTilt
from .gaussian import TiltParams as TiltParams
from .gaussian import check_normalisable as check_normalisable
from .gaussian import validate_params as validate_params
from .langevin import LangevinState as LangevinState
from .langevin import joint_mala as joint_mala
from .langevin import langevin_init as langevin_init
from .langevin import langevin_step as langevin_step
from .langevin import mala as mala
from .langevin import ula as ula
from .run import SAMPLERS as SAMPLERS
from .run import SamplerConfig as SamplerConfig
from .run import check_sampler as check_sampler
from .run import run_sampler as run_sampler
from .samplers import gibbs as gibbs
from .samplers import importance as importance
from .samplers import independence_mh as independence_mh
from .samplers import resample as resample
from .schedules import SCHEDULES as SCHEDULES
from .schedules import Levels as Levels
from .schedules import check_schedule as check_schedule
from .schedules import make_levels as make_levels
from . import metrics as metrics

__all__ = [
    "GaussianTilt",
    "LangevinState",
    "Levels",
    "PC_SAMPLERS",
    "SAMPLERS",
    "SCHEDULES",
    "SamplerConfig",
    "SamplerResult",
    "TiltParams",
    "annealed_pc",
    "check_normalisable",
    "check_sampler",
    "check_schedule",
    "gibbs",
    "importance",
    "independence_mh",
    "joint_mala",
    "langevin_init",
    "langevin_step",
    "make_levels",
    "mala",
    "metrics",
    "resample",
    "run_chains",
    "run_sampler",
    "ula",
    "validate_levels",
    "validate_params",
]
