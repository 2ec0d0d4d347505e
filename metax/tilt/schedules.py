"""Noise levels and beta (guidance-strength) schedules for the annealed samplers.

The annealed samplers imitate guided sampling from a diffusion policy. Level
k = 0..K has progress t_k = k / K and noise sigma_k = sigma_max (1 - t_k): level 0 is
the fully noised start, level K the clean level (sigma_K = 0). At level k the
sampler targets

    p_k(a) ∝ q_{sigma_k}(a | s) exp(beta_k Q(a)),   q_sigma = q(.|s) * N(0, sigma^2),

so only the clean level is the mirror-descent target pi_lambda with
lambda = `lambda_scale`, the strength at the clean level. The seed names five
schedules for beta_k; this is what each one is here (lambda = lambda_scale):

- ``linear``: beta_k = lambda t_k. Guidance grows in proportion to progress.
- ``late_constant``: beta_k = 0 while t_k < 1/2, then lambda. No guidance while the
  action is mostly noise, full strength over the late (low-noise) half.
- ``late_ramp``: beta_k = 0 while t_k < 1/2, then a linear ramp from 0 to lambda at
  t = 1. Like `late_constant`, but the switch-on is gradual.
- ``tfg_plus_final_mala``: beta_k = lambda at every level, applied by unadjusted
  Langevin correctors, as training-free guidance (TFG; Ye et al., "TFG: Unified
  Training-Free Guidance for Diffusion Models", NeurIPS 2024) does; then the clean
  level's corrector is Metropolis-adjusted (MALA) whatever the sampler, removing
  the discretisation bias at the end.
- ``sigma_power``: beta_k = lambda (sigma_a^2 / (sigma_a^2 + sigma_k^2))^p, p = 2.
  The guidance is damped by a power of the signal fraction at noise sigma_k and
  reaches lambda exactly at sigma = 0.

`late_*` switch at t = `LATE_START`; `sigma_power` uses p = `SIGMA_POWER`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SCHEDULES = ("linear", "late_constant", "late_ramp", "tfg_plus_final_mala", "sigma_power")
LATE_START = 0.5
SIGMA_POWER = 2.0
# sigma_max = SIGMA_MAX_RATIO * sigma_a unless given: the start is a 2.2x wider prior.
SIGMA_MAX_RATIO = 2.0


class Levels(NamedTuple):
    """The annealing path; index 0 is the start, index K the clean level.

    Attributes:
      t: (K + 1,) progress in [0, 1].
      sigma: (K + 1,) noise standard deviation, sigma[K] = 0.
      beta: (K + 1,) tilt strength, beta[K] = lambda_scale.
      final_mala: whether the clean level's corrector is Metropolis-adjusted
        regardless of the sampler (`tfg_plus_final_mala`).

    Example:
      >>> levels = metax.tilt.make_levels("late_constant", 2.0, K=4, sigma_a=1.0)
      >>> isinstance(levels, metax.tilt.Levels), levels.beta, levels.final_mala
      (True, array([0., 0., 2., 2., 2.]), False)
    """

    t: np.ndarray
    sigma: np.ndarray
    beta: np.ndarray
    final_mala: bool


def check_schedule(name: str) -> None:
    """Raises `ValueError` naming the valid schedules if `name` is not one.

    Example:
      >>> metax.tilt.check_schedule("linear")  # a valid name: no output
      >>> try:
      ...     metax.tilt.check_schedule("cosine")
      ... except ValueError as error:
      ...     print(error)
      unknown beta schedule 'cosine'; valid schedules: linear, late_constant, late_ramp, tfg_plus_final_mala, sigma_power
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown beta schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")


def beta_schedule(name: str, lambda_scale: float, t: np.ndarray, sigma: np.ndarray, sigma_a: float) -> np.ndarray:
    """beta at progress `t` and noise `sigma` (arrays of equal shape); see module doc."""
    check_schedule(name)
    t = np.asarray(t, dtype=np.float64)
    if name == "linear":
        frac = t
    elif name == "late_constant":
        frac = (t >= LATE_START).astype(np.float64)
    elif name == "late_ramp":
        frac = np.clip((t - LATE_START) / (1.0 - LATE_START), 0.0, 1.0)
    elif name == "tfg_plus_final_mala":
        frac = np.ones_like(t)
    else:  # sigma_power
        frac = (sigma_a**2 / (sigma_a**2 + np.asarray(sigma, dtype=np.float64) ** 2)) ** SIGMA_POWER
    return lambda_scale * frac


def make_levels(
    name: str, lambda_scale: float, K: int, sigma_a: float, sigma_max: float | None = None
) -> Levels:
    """Builds the K-level path of schedule `name` (host-side, plain numpy).

    Example:
      >>> levels = metax.tilt.make_levels("linear", 2.0, K=4, sigma_a=1.0)
      >>> levels.t, levels.sigma, levels.beta
      (array([0.  , 0.25, 0.5 , 0.75, 1.  ]), array([2. , 1.5, 1. , 0.5, 0. ]), array([0. , 0.5, 1. , 1.5, 2. ]))
    """
    check_schedule(name)
    if int(K) < 1:
        raise ValueError(f"K must be at least 1, got {K}")
    sigma_max = SIGMA_MAX_RATIO * sigma_a if sigma_max is None else float(sigma_max)
    if sigma_max < 0:
        raise ValueError(f"sigma_max must be non-negative, got {sigma_max:g}")
    t = np.arange(K + 1, dtype=np.float64) / K
    sigma = sigma_max * (1.0 - t)
    beta = beta_schedule(name, lambda_scale, t, sigma, sigma_a)
    return Levels(t=t, sigma=sigma, beta=beta, final_mala=name == "tfg_plus_final_mala")
