"""Every tilt sampler by name, with one configuration and its default budget."""

from __future__ import annotations

from typing import NamedTuple

import jax

from .annealed import PC_SAMPLERS, annealed_pc
from .chains import SamplerResult
from .gaussian import GaussianTilt
from .langevin import joint_mala, mala, ula
from .samplers import gibbs, importance, independence_mh

Array = jax.Array
SAMPLERS = ("importance", "imh", "ula", "mala", "joint_mala", "gibbs") + PC_SAMPLERS


class SamplerConfig(NamedTuple):
    """Settings shared by the samplers; each reads the fields it needs.

    Attributes:
      beta: tilt strength of the target (lambda_scale for the annealed samplers).
      n_chains: chains, or base draws for `importance`.
      n_steps: steps per chain of the plain MCMC samplers.
      step_size: Langevin step in units of the prior variance.
      schedule: beta schedule of the annealed samplers (`schedules.SCHEDULES`).
      K: annealing levels.
      refresh_L: exact s' refreshes per level.
      action_steps_per_level: corrector steps per level.
      sigma_max: starting noise of the annealed samplers (None: 2 sigma_a).
    """

    beta: float = 1.0
    n_chains: int = 2000
    n_steps: int = 100
    step_size: float = 0.1
    schedule: str = "linear"
    K: int = 10
    refresh_L: int = 1
    action_steps_per_level: int = 10
    sigma_max: float | None = None


def check_sampler(name: str) -> None:
    """Raises `ValueError` naming the valid samplers if `name` is not one."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")


def run_sampler(name: str, key: Array, tilt: GaussianTilt, config: SamplerConfig = SamplerConfig()) -> SamplerResult:
    """Runs the sampler called `name` on pi_{config.beta} of `tilt`."""
    check_sampler(name)
    c = config
    if name == "importance":
        return importance(key, tilt, c.beta, c.n_chains)
    if name == "imh":
        return independence_mh(key, tilt, c.beta, c.n_chains, c.n_steps)
    if name == "gibbs":
        return gibbs(key, tilt, c.beta, c.n_chains, c.n_steps)
    if name in ("ula", "mala", "joint_mala"):
        fn = {"ula": ula, "mala": mala, "joint_mala": joint_mala}[name]
        return fn(key, tilt, c.beta, c.n_chains, c.n_steps, c.step_size)
    return annealed_pc(
        key,
        tilt,
        name,
        lambda_scale=c.beta,
        schedule=c.schedule,
        K=c.K,
        refresh_L=c.refresh_L,
        action_steps_per_level=c.action_steps_per_level,
        step_size=c.step_size,
        n_chains=c.n_chains,
        sigma_max=c.sigma_max,
    )
