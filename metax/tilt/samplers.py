"""Samplers of pi_beta that need no gradients: importance, independence MH, Gibbs.

- `importance`: draw (a, s') from the base joint q and weight by exp(beta Q(a)).
  This is the discrete mirror-descent update itself (w ∝ exp(beta Q)), applied to a
  sample instead of a density; s' keeps its base draw, which is exact because
  pi_beta(s'|a) = q(s'|a).
- `independence_mh`: Metropolis-Hastings with the state-free proposal a' ~ q(a|s);
  the base densities cancel and the acceptance is min{1, exp[beta (Q(a') - Q(a))]}.
- `gibbs`: alternate s' ~ q(s'|a,s) and a ~ pi_beta(a|s',s) on the tilted joint;
  both conditionals are Gaussian (`GaussianTilt.action_given_state`).

All chains start from base draws a ~ q(a|s), so a short run shows the bias of
starting at the prior and a long one the convergence to pi_beta.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .chains import SamplerResult, chain_result, run_chains
from .gaussian import GaussianTilt

Array = jax.Array


@partial(jax.jit, static_argnames=("n",))
def importance(key: Array, tilt: GaussianTilt, beta: ArrayLike, n: int) -> SamplerResult:
    """Self-normalised importance reweighting of n base draws toward pi_beta.

    Args:
      key: PRNG key.
      tilt: the model.
      beta: () tilt strength.
      n: number of base draws.

    Returns:
      A `SamplerResult` whose `weights` are the normalised exp(beta Q(a_i)); one
      evaluation of Q per draw. The effective sample size is `1 / sum(weights**2)`
      (`metrics.importance_ess`).
    """
    key_a, key_s = jax.random.split(key)
    a = tilt.sample_base_action(key_a, (n,))
    s_next = tilt.sample_next_state(key_s, a)
    weights = jax.nn.softmax(jnp.asarray(beta) * tilt.value(a))
    return SamplerResult(
        actions=a,
        states=s_next,
        weights=weights,
        action_trace=a[:, None],
        state_trace=s_next[:, None],
        accept_rate=jnp.full((n,), jnp.nan),
        evals_per_action=jnp.asarray(1.0),
    )


def resample(key: Array, result: SamplerResult) -> tuple[Array, Array]:
    """Multinomial resampling of weighted (a, s') pairs into an unweighted sample.

    Pairs are kept together, so the resampled s' still follow q(s'|a,s).

    Example:
      >>> tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams())
      >>> weighted = metax.tilt.run_sampler("importance", rng, tilt, metax.tilt.SamplerConfig(n_chains=6))
      >>> actions, states = metax.tilt.resample(jax.random.PRNGKey(1), weighted)
      >>> actions.shape, bool(jnp.isin(actions, weighted.actions).all())
      ((6,), True)
    """
    n = result.actions.shape[0]
    idx = jax.random.choice(key, n, (n,), p=result.weights)
    return result.actions[idx], result.states[idx]


@partial(jax.jit, static_argnames=("n_chains", "n_steps"))
def independence_mh(
    key: Array, tilt: GaussianTilt, beta: ArrayLike, n_chains: int, n_steps: int
) -> SamplerResult:
    """Independence Metropolis-Hastings on actions with proposal q(a|s).

    Each step proposes a' ~ q(a|s), accepts with probability
    min{1, exp[beta (Q(a') - Q(a))]} and then refreshes s' ~ q(s'|a,s) exactly.

    Returns:
      A `SamplerResult` with traces of shape (n_chains, n_steps); Q(a) is cached, so
      one evaluation per step plus one at the start.
    """
    beta = jnp.asarray(beta)

    def step(k, carry):
        a, q_a = carry
        k_prop, k_acc, k_s = jax.random.split(k, 3)
        proposal = tilt.sample_base_action(k_prop)
        q_prop = tilt.value(proposal)
        accept = jnp.log(jax.random.uniform(k_acc)) < beta * (q_prop - q_a)
        a, q_a = jnp.where(accept, proposal, a), jnp.where(accept, q_prop, q_a)
        return (a, q_a), (a, tilt.sample_next_state(k_s, a), accept)

    key_init, key_run = jax.random.split(key)
    a0 = tilt.sample_base_action(key_init, (n_chains,))
    _, traces = run_chains(step, key_run, (a0, tilt.value(a0)), n_steps)
    return chain_result(traces, n_steps + 1)


@partial(jax.jit, static_argnames=("n_chains", "n_steps"))
def gibbs(key: Array, tilt: GaussianTilt, beta: ArrayLike, n_chains: int, n_steps: int) -> SamplerResult:
    """Two-block Gibbs sampler on the tilted joint pi_beta(a, s'|s).

    One step: s' ~ q(s'|a,s) (exact refresh), then a ~ N(mu_post(s'), var_post) with
    precision tau_beta + alpha^2/sigma_s'^2. The emitted pair (a, s') is a draw of
    the joint once the chain has mixed; the a-chain is AR(1) with coefficient
    alpha^2 var_beta / (alpha^2 var_beta + sigma_s'^2).

    Returns:
      A `SamplerResult` with traces of shape (n_chains, n_steps); one closed-form
      conditional per step.
    """

    def step(k, a):
        k_s, k_a = jax.random.split(k)
        s_next = tilt.sample_next_state(k_s, a)
        mean, var = tilt.action_given_state(s_next, beta)
        a = mean + jnp.sqrt(var) * jax.random.normal(k_a)
        return a, (a, s_next, jnp.array(True))

    key_init, key_run = jax.random.split(key)
    a0 = tilt.sample_base_action(key_init, (n_chains,))
    _, traces = run_chains(step, key_run, a0, n_steps)
    return chain_result(traces, n_steps)
