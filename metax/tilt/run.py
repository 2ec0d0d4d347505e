"""Every tilt sampler by name, with one configuration and its default budget."""

from __future__ import annotations

from typing import NamedTuple

import math

import jax

from .annealed import PC_SAMPLERS, annealed_pc
from .chains import SamplerResult
from .gaussian import GaussianTilt, validate_params
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

    Example:
      >>> config = metax.tilt.SamplerConfig(beta=2.0, n_chains=16)
      >>> config.beta, config.n_chains, config.n_steps, config._replace(K=3).K
      (2.0, 16, 100, 3)
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
    """Raises `ValueError` naming the valid samplers if `name` is not one.

    Example:
      >>> metax.tilt.check_sampler("mala")  # a valid name: no output
      >>> try:
      ...     metax.tilt.check_sampler("hmc")
      ... except ValueError as error:
      ...     print(error)
      unknown sampler 'hmc'; valid samplers: importance, imh, ula, mala, joint_mala, gibbs, pc_ula, pc_mala, pc_joint_mala
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(SAMPLERS)}")


def check_config(name: str, tilt: GaussianTilt, config: SamplerConfig) -> None:
    """Raises `ValueError` naming the argument if `tilt` or `config` is ill-posed for `name`.

    Checks what every sampler needs: positive standard deviations, a normalisable target
    pi_{config.beta} (positive tilted precision 1/sigma_a^2 + beta qA) and sane budgets.
    Traced parameters (under `jax.jit`) are not checked.
    """
    if not isinstance(tilt, GaussianTilt):
        raise TypeError(f"tilt must be a metax.tilt.GaussianTilt, got {type(tilt).__name__}")
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a metax.tilt.SamplerConfig, got {type(config).__name__}")
    if any(isinstance(v, jax.core.Tracer) for v in (*tilt.params, config.beta)):
        return
    try:
        validate_params(tilt.params, [config.beta])
    except ValueError as error:
        message = str(error)
        # Name the argument: the fields live in tilt.params, beta in config.
        if message.split(" ")[0] in tilt.params._fields:
            message = f"tilt.params.{message}"
        elif "not normalisable" in message:
            message += f" (tilt.params.qA={tilt.params.qA:g}, config.beta={config.beta:g}: lower beta or raise qA)"
        raise ValueError(f"run_sampler({name!r}): {message}") from None
    minimum = {"n_chains": 1, "n_steps": 1, "K": 1, "refresh_L": 0, "action_steps_per_level": 0}
    for field, low in minimum.items():
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"run_sampler({name!r}): config.{field} must be an int >= {low}, got {value!r}")
    if not (math.isfinite(config.step_size) and config.step_size > 0):
        raise ValueError(f"run_sampler({name!r}): config.step_size must be positive, got {config.step_size!r}")
    if config.sigma_max is not None and not config.sigma_max > 0:
        raise ValueError(f"run_sampler({name!r}): config.sigma_max must be positive or None, got {config.sigma_max!r}")


def run_sampler(name: str, key: Array, tilt: GaussianTilt, config: SamplerConfig = SamplerConfig()) -> SamplerResult:
    """Runs the sampler called `name` on pi_{config.beta} of `tilt`.

    Raises:
      ValueError: for an unknown sampler, a negative or zero standard deviation, a `qA`
        that makes the tilted precision non-positive, or a bad budget in `config`; the
        message names the argument (`tilt.params.sigma_sprime`, `config.step_size`, ...).

    Example:
      >>> tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams())
      >>> result = metax.tilt.run_sampler("importance", rng, tilt, metax.tilt.SamplerConfig(n_chains=6))
      >>> result.actions.shape, result.states.shape, round(float(result.weights.sum()), 4)
      ((6,), (6,), 1.0)
    """
    check_sampler(name)
    check_config(name, tilt, config)
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
