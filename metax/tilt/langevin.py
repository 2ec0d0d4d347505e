"""Langevin samplers of pi_beta: ULA and MALA on actions, MALA on (a, s').

One preconditioned Langevin kernel serves all three (and the annealed samplers):

    y = x + h M g(x) + sqrt(2 h M) z,     z ~ N(0, I),

with g the score of the target and M a fixed diagonal preconditioner. ULA keeps every
proposal (Roberts & Tweedie, "Exponential convergence of Langevin distributions and
their discrete approximations", Bernoulli 1996); MALA accepts it with the
Metropolis-Hastings ratio of target and proposal densities, which makes pi_beta
invariant for any step size h.

On actions the score is the product-of-experts score d/da log q(a|s) + beta Q'(a)
and s' is refreshed exactly from q(s'|a,s) after every step. `joint_mala` instead
moves (a, s') together under the score of the tilted joint. The step size is in
units of the preconditioner, M = sigma_a^2 for actions and M = (sigma_a^2,
sigma_s'^2) for the joint, so h = 0.1 means "a tenth of the prior variance".

For the Gaussian target (precision tau), ULA is an AR(1) chain whose stationary
variance is 1 / (tau (1 - h M tau / 2)): the bias vanishes as h -> 0.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .chains import SamplerResult, chain_result, run_chains
from .gaussian import GaussianTilt

Array = jax.Array
# x -> (log target(x) up to a constant, score at x); x is () for actions, (2,) for (a, s').
LogpAndScore = Callable[[Array], tuple[Array, Array]]


class LangevinState(NamedTuple):
    """Position of one chain with its cached target evaluation.

    Attributes:
      x: () action or (2,) (action, next state).
      logp: () unnormalised log target at x.
      score: like x, gradient of the log target at x.

    Example:
      >>> state = metax.tilt.LangevinState(x=jnp.zeros(2), logp=jnp.array(0.0), score=jnp.zeros(2))
      >>> state.x.shape, state.logp.shape
      ((2,), ())
    """

    x: Array
    logp: Array
    score: Array


def langevin_init(logp_and_score: LogpAndScore, x: Array) -> LangevinState:
    """Evaluates the target once at `x` (one evaluation).

    Example:
      >>> standard_normal = lambda x: (-0.5 * x**2, -x)  # log density and score
      >>> state = metax.tilt.langevin_init(standard_normal, jnp.array(1.0))
      >>> float(state.x), float(state.logp), float(state.score)
      (1.0, -0.5, -1.0)
    """
    return LangevinState(x, *logp_and_score(x))


def langevin_step(
    key: Array,
    state: LangevinState,
    logp_and_score: LogpAndScore,
    step_size: ArrayLike,
    precond: ArrayLike,
    adjusted: ArrayLike,
) -> tuple[LangevinState, Array]:
    """One ULA (`adjusted=False`) or MALA (`adjusted=True`) step; one evaluation.

    `adjusted` may be a traced boolean, so one compiled loop can switch between
    the two per annealing level. Returns the new state and whether it moved.

    Example:
      >>> standard_normal = lambda x: (-0.5 * x**2, -x)
      >>> state = metax.tilt.langevin_init(standard_normal, jnp.array(1.0))
      >>> new, moved = metax.tilt.langevin_step(rng, state, standard_normal, 0.1, 1.0, adjusted=False)
      >>> bool(moved), bool(new.logp == -0.5 * new.x**2)  # ULA always moves
      (True, True)
    """
    key_z, key_u = jax.random.split(key)
    hm = step_size * jnp.asarray(precond)
    fwd_mean = state.x + hm * state.score
    y = fwd_mean + jnp.sqrt(2.0 * hm) * jax.random.normal(key_z, state.x.shape)
    logp_y, score_y = logp_and_score(y)
    bwd_mean = y + hm * score_y
    log_q_fwd = -jnp.sum((y - fwd_mean) ** 2 / (4.0 * hm))
    log_q_bwd = -jnp.sum((state.x - bwd_mean) ** 2 / (4.0 * hm))
    log_ratio = logp_y - state.logp + log_q_bwd - log_q_fwd
    # A NaN ratio (overflow far in the tails) counts as a rejection.
    accept = jnp.logical_or(~jnp.asarray(adjusted), jnp.log(jax.random.uniform(key_u)) < log_ratio)
    new = LangevinState(y, logp_y, score_y)
    return jax.tree_util.tree_map(lambda n, o: jnp.where(accept, n, o), new, state), accept


def action_target(tilt: GaussianTilt, beta: ArrayLike) -> LogpAndScore:
    """log q(a|s) + beta Q(a) and its product-of-experts score."""
    return lambda a: (tilt.unnormalised_log_target(a, beta), tilt.score_tilted_action(a, beta))


def joint_target(tilt: GaussianTilt, beta: ArrayLike) -> LogpAndScore:
    """log of q(a|s) exp(beta Q(a)) q(s'|a,s) at x = (a, s') and its score."""

    def fn(x):
        a, s_next = x[0], x[1]
        logp = tilt.unnormalised_log_target(a, beta) + tilt.log_dynamics(s_next, a)
        return logp, jnp.stack(tilt.score_tilted_joint(a, s_next, beta))

    return fn


def _action_langevin(key, tilt, beta, n_chains, n_steps, step_size, adjusted):
    target = action_target(tilt, beta)
    precond = tilt.params.sigma_a**2

    def step(k, state):
        k_move, k_s = jax.random.split(k)
        state, accept = langevin_step(k_move, state, target, step_size, precond, adjusted)
        return state, (state.x, tilt.sample_next_state(k_s, state.x), accept)

    key_init, key_run = jax.random.split(key)
    a0 = tilt.sample_base_action(key_init, (n_chains,))
    _, traces = run_chains(step, key_run, jax.vmap(partial(langevin_init, target))(a0), n_steps)
    return chain_result(traces, n_steps + 1)


@partial(jax.jit, static_argnames=("n_chains", "n_steps"))
def ula(
    key: Array, tilt: GaussianTilt, beta: ArrayLike, n_chains: int, n_steps: int, step_size: ArrayLike = 0.1
) -> SamplerResult:
    """Unadjusted Langevin on actions with the PoE score, exact s' refresh.

    Args:
      key: PRNG key.
      tilt: the model.
      beta: () tilt strength.
      n_chains: independent chains, started at base draws a ~ q(a|s).
      n_steps: Langevin steps per chain.
      step_size: h in units of sigma_a^2.

    Returns:
      A `SamplerResult` with (n_chains, n_steps) traces; `n_steps + 1` score
      evaluations per action.
    """
    return _action_langevin(key, tilt, beta, n_chains, n_steps, step_size, False)


@partial(jax.jit, static_argnames=("n_chains", "n_steps"))
def mala(
    key: Array, tilt: GaussianTilt, beta: ArrayLike, n_chains: int, n_steps: int, step_size: ArrayLike = 0.1
) -> SamplerResult:
    """Metropolis-adjusted Langevin on actions, exact s' refresh (arguments as `ula`)."""
    return _action_langevin(key, tilt, beta, n_chains, n_steps, step_size, True)


@partial(jax.jit, static_argnames=("n_chains", "n_steps"))
def joint_mala(
    key: Array, tilt: GaussianTilt, beta: ArrayLike, n_chains: int, n_steps: int, step_size: ArrayLike = 0.1
) -> SamplerResult:
    """MALA on x = (a, s') targeting the tilted joint pi_beta(a, s'|s).

    The preconditioner is diag(sigma_a^2, sigma_s'^2); chains start at base-joint
    draws. Arguments and returns as `ula`.
    """
    target = joint_target(tilt, beta)
    precond = jnp.stack([tilt.params.sigma_a**2, tilt.params.sigma_sprime**2])

    def step(k, state):
        state, accept = langevin_step(k, state, target, step_size, precond, True)
        return state, (state.x[0], state.x[1], accept)

    key_a, key_s, key_run = jax.random.split(key, 3)
    a0 = tilt.sample_base_action(key_a, (n_chains,))
    x0 = jnp.stack([a0, tilt.sample_next_state(key_s, a0)], axis=-1)
    _, traces = run_chains(step, key_run, jax.vmap(partial(langevin_init, target))(x0), n_steps)
    return chain_result(traces, n_steps + 1)
