"""What every tilt sampler returns, and the one chain loop they share.

A sampler runs `n_chains` independent chains: `jax.vmap` over chains of a
`jax.lax.scan` over steps. Each step emits the current (action, next state) pair and
whether its proposal was accepted; the loop is written once here so that the
samplers only define a step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
# step(key, carry) -> (carry, (action, next_state, accepted)), for a single chain.
StepFn = Callable[[Array, Any], tuple[Any, tuple[Array, Array, Array]]]


class SamplerResult(NamedTuple):
    """Samples and diagnostics of one sampler run (n = number of chains or draws).

    Attributes:
      actions: (n,) final action of every chain (or every importance draw).
      states: (n,) next state s' paired with each action.
      weights: (n,) normalised sample weights: uniform for MCMC, importance weights
        for `importance`. Histograms and moments should use them.
      action_trace: (n, T) action after each step (MCMC), level (annealed) or the
        draws themselves (importance, T = 1).
      state_trace: (n, T) the matching next states.
      accept_rate: (n,) fraction of accepted proposals per chain; 1 for moves that
        are never rejected (ULA, Gibbs), NaN where undefined (importance).
      evals_per_action: () evaluations of the target (one log density and/or score
        of q(a|s) exp(beta Q), or one closed-form conditional for Gibbs) spent per
        returned action. Exact s' refreshes are not counted.

    Example:
      >>> tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams())
      >>> result = metax.tilt.run_sampler("importance", rng, tilt, metax.tilt.SamplerConfig(n_chains=5))
      >>> isinstance(result, metax.tilt.SamplerResult), result.action_trace.shape, float(result.evals_per_action)
      (True, (5, 1), 1.0)
    """

    actions: Array
    states: Array
    weights: Array
    action_trace: Array
    state_trace: Array
    accept_rate: Array
    evals_per_action: Array


def run_chains(step: StepFn, key: Array, init: Any, n_steps: int) -> tuple[Any, tuple[Array, Array, Array]]:
    """Runs `step` for `n_steps` on every chain of `init` (leading axis = chains).

    Returns:
      The final carries (leading chain axis) and the per-step outputs
      `(actions, states, accepted)`, each of shape (n_chains, n_steps).

    Example:
      >>> def step(key, a):  # an AR(1) chain; s' = 2 a, every move accepted
      ...     a = 0.5 * a + jax.random.normal(key)
      ...     return a, (a, 2 * a, jnp.array(True))
      >>> final, (actions, states, accepted) = metax.tilt.run_chains(step, rng, jnp.zeros(3), n_steps=5)
      >>> final.shape, actions.shape, bool((states == 2 * actions).all()), bool(accepted.all())
      ((3,), (3, 5), True, True)
    """

    def one_chain(chain_key: Array, carry: Any):
        return jax.lax.scan(lambda c, k: step(k, c), carry, jax.random.split(chain_key, n_steps))

    n_chains = jax.tree_util.tree_leaves(init)[0].shape[0]
    return jax.vmap(one_chain)(jax.random.split(key, n_chains), init)


def chain_result(traces: tuple[Array, Array, Array], evals_per_action: float | Array) -> SamplerResult:
    """Packs the per-step outputs of `run_chains` into a `SamplerResult`."""
    a_trace, s_trace, accepted = traces
    n = a_trace.shape[0]
    return SamplerResult(
        actions=a_trace[:, -1],
        states=s_trace[:, -1],
        weights=jnp.full((n,), 1.0 / n),
        action_trace=a_trace,
        state_trace=s_trace,
        # The samples' dtype throughout: float64 chains report float64 diagnostics.
        accept_rate=jnp.mean(accepted.astype(a_trace.dtype), axis=1),
        evals_per_action=jnp.asarray(evals_per_action, dtype=a_trace.dtype),
    )
