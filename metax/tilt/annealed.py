"""Annealed predictor-corrector samplers of pi_lambda over K noise levels.

Guided sampling from a diffusion policy, in the toy where every score is exact.
The path (noise sigma_k, strength beta_k, k = 0..K) comes from `schedules`; level k
targets p_k(a) ∝ q_{sigma_k}(a|s) exp(beta_k Q(a)) and the clean level K is
pi_lambda. Following Song et al., "Score-Based Generative Modeling through Stochastic
Differential Equations" (ICLR 2021), each level k = 1..K runs

1. predictor: one reverse variance-exploding SDE step from sigma_{k-1} to sigma_k
   with the guided score of level k-1,
   a <- a + (sigma_{k-1}^2 - sigma_k^2) g_{k-1}(a) + sqrt(sigma_{k-1}^2 - sigma_k^2) z;
2. corrector: `action_steps_per_level` Langevin steps on p_k (`langevin_step`,
   step h in units of the level's prior variance sigma_a^2 + sigma_k^2):
   ULA (`pc_ula`), MALA (`pc_mala`), or MALA on (a, s') under p_k(a) q(s'|a,s)
   (`pc_joint_mala`, preconditioner diag(sigma_a^2 + sigma_k^2, sigma_s'^2));
3. `refresh_L` exact state refreshes s' ~ q(s'|a,s).

By conditional invariance one refresh at the clean level already gives the exact
s'|a; with `refresh_L = 0` the action samplers keep the s' drawn at the start (a
stale state, which the state KL exposes), while `pc_joint_mala` moves s' itself and
gains from refreshes only through faster mixing of the correlated pair.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .chains import SamplerResult
from .gaussian import GaussianTilt, check_normalisable
from .langevin import action_target, joint_target, langevin_init, langevin_step
from .schedules import Levels, make_levels

Array = jax.Array
PC_SAMPLERS = ("pc_ula", "pc_mala", "pc_joint_mala")


def validate_levels(tilt: GaussianTilt, levels: Levels) -> None:
    """Raises `ValueError` if some level's target p_k is not normalisable.

    Example:
      >>> tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams(qA=-0.2))
      >>> metax.tilt.validate_levels(tilt, metax.tilt.make_levels("linear", 2.0, K=4, sigma_a=1.0))
      >>> try:
      ...     metax.tilt.validate_levels(tilt, metax.tilt.make_levels("linear", 10.0, K=2, sigma_a=1.0))
      ... except ValueError as error:
      ...     print(error)
      tilted target is not normalisable: precision 1/(sigma_a^2 + 1^2) + beta*qA = 0.5 + 5*(-0.2) = -0.5 <= 0; with qA=-0.2 keep beta < 2.5
    """
    sigma_a = float(tilt.params.sigma_a)
    for sigma, beta in zip(levels.sigma, levels.beta):
        label = f"1/(sigma_a^2 + {float(sigma):g}^2)"
        check_normalisable(1.0 / (sigma_a**2 + float(sigma) ** 2), float(tilt.params.qA), [beta], label)


def annealed_pc(
    key: Array,
    tilt: GaussianTilt,
    sampler: str,
    *,
    lambda_scale: float,
    schedule: str = "linear",
    K: int = 10,
    refresh_L: int = 1,
    action_steps_per_level: int = 10,
    step_size: float = 0.1,
    n_chains: int = 2000,
    sigma_max: float | None = None,
) -> SamplerResult:
    """Runs `sampler` in `PC_SAMPLERS` over the K-level path of `schedule`.

    Builds and checks the path on the host (so `tilt` must hold concrete numbers),
    then runs one jitted computation: `jax.vmap` over chains of `lax.scan` over levels.

    Args:
      key: PRNG key.
      tilt: the clean model.
      sampler: "pc_ula", "pc_mala" or "pc_joint_mala".
      lambda_scale: beta at the clean level.
      schedule: one of `schedules.SCHEDULES`.
      K: number of levels.
      refresh_L: exact s' refreshes per level (>= 0).
      action_steps_per_level: corrector steps per level (>= 0).
      step_size: corrector step in units of the level's prior variance.
      n_chains: independent chains, started at a ~ q_{sigma_max}(a|s), s' ~ q(s'|a,s).
      sigma_max: starting noise (default `schedules.SIGMA_MAX_RATIO * sigma_a`).

    Returns:
      A `SamplerResult` with (n_chains, K) traces (column k-1 after level k),
      acceptance over all corrector steps and K (action_steps_per_level + 2)
      evaluations per action (predictor, corrector start, corrector steps).

    Example:
      >>> tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams())
      >>> shapes = jax.eval_shape(lambda key: metax.tilt.annealed_pc(
      ...     key, tilt, "pc_mala", lambda_scale=1.0, K=2, action_steps_per_level=1, n_chains=4), rng)
      >>> shapes.actions.shape, shapes.action_trace.shape
      ((4,), (4, 2))
    """
    if sampler not in PC_SAMPLERS:
        raise ValueError(f"unknown annealed sampler {sampler!r}; valid: {', '.join(PC_SAMPLERS)}")
    if int(refresh_L) < 0 or int(action_steps_per_level) < 0:
        raise ValueError(
            f"refresh_L and action_steps_per_level must be >= 0, got {refresh_L} and {action_steps_per_level}"
        )
    levels = make_levels(schedule, lambda_scale, K, float(tilt.params.sigma_a), sigma_max)
    validate_levels(tilt, levels)
    adjusted = np.full(K, sampler != "pc_ula")
    adjusted[-1] |= levels.final_mala
    dtype = jnp.result_type(float, *tilt.params)  # the model's float dtype (float64 under x64)
    return _annealed(
        key,
        tilt,
        jnp.asarray(levels.sigma, dtype),
        jnp.asarray(levels.beta, dtype),
        jnp.asarray(adjusted),
        jnp.asarray(refresh_L, jnp.int32),
        jnp.asarray(action_steps_per_level, jnp.int32),
        step_size,
        n_chains=n_chains,
        joint=sampler == "pc_joint_mala",
    )


@partial(jax.jit, static_argnames=("n_chains", "joint"))
def _annealed(
    key: Array,
    tilt: GaussianTilt,
    sigma: Array,
    beta: Array,
    adjusted: Array,
    refresh_L: Array,
    n_steps: Array,
    step_size: ArrayLike,
    *,
    n_chains: int,
    joint: bool,
) -> SamplerResult:
    K = adjusted.shape[0]
    var_a, var_s = tilt.params.sigma_a**2, tilt.params.sigma_sprime**2

    def level(carry, inputs):
        a, s_next = carry
        key, sig_prev, beta_prev, sig, beta_k, adj = inputs
        k_pred, k_corr, k_ref = jax.random.split(key, 3)
        # Predictor: reverse VE-SDE step with the previous level's guided score.
        dv = sig_prev**2 - sig**2
        score = tilt.noised(sig_prev).score_tilted_action(a, beta_prev)
        a = a + dv * score + jnp.sqrt(dv) * jax.random.normal(k_pred)
        # Corrector at the current level.
        level_tilt = tilt.noised(sig)
        if joint:
            target, x = joint_target(level_tilt, beta_k), jnp.stack([a, s_next])
            precond = jnp.stack([var_a + sig**2, var_s])
        else:
            target, x, precond = action_target(level_tilt, beta_k), a, var_a + sig**2

        def corrector(i, c):
            state, n_acc = c
            state, acc = langevin_step(jax.random.fold_in(k_corr, i), state, target, step_size, precond, adj)
            return state, n_acc + acc

        state, n_acc = jax.lax.fori_loop(0, n_steps, corrector, (langevin_init(target, x), 0))
        a, s_next = (state.x[0], state.x[1]) if joint else (state.x, s_next)
        # Exact refreshes; each redraw replaces the last (conditional invariance).
        s_next = jax.lax.fori_loop(
            0, refresh_L, lambda i, s: tilt.sample_next_state(jax.random.fold_in(k_ref, i), a), s_next
        )
        return (a, s_next), (a, s_next, n_acc)

    def one_chain(chain_key, a0, s0):
        inputs = (jax.random.split(chain_key, K), sigma[:-1], beta[:-1], sigma[1:], beta[1:], adjusted)
        _, traces = jax.lax.scan(level, (a0, s0), inputs)
        return traces

    key_a, key_s, key_run = jax.random.split(key, 3)
    a0 = tilt.noised(sigma[0]).sample_base_action(key_a, (n_chains,))
    s0 = tilt.sample_next_state(key_s, a0)
    a_tr, s_tr, n_acc = jax.vmap(one_chain)(jax.random.split(key_run, n_chains), a0, s0)
    accept_rate = jnp.sum(n_acc, axis=1) / jnp.maximum(n_steps * K, 1)
    return SamplerResult(
        actions=a_tr[:, -1],
        states=s_tr[:, -1],
        weights=jnp.full((n_chains,), 1.0 / n_chains),
        action_trace=a_tr,
        state_trace=s_tr,
        accept_rate=accept_rate,
        evals_per_action=(K * (n_steps + 2)).astype(a_tr.dtype),
    )
