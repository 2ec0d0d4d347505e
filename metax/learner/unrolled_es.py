"""Evolution strategies over partial unrolls of the inner loop: `LearnedKernel`'s "pes"
and "noise_reuse" estimators.

- "pes": Persistent Evolution Strategies (Vicol, Metz, Sohl-Dickstein, "Unbiased
  Gradient Estimation in Unrolled Computation Graphs with Persistent Evolution
  Strategies", ICML 2021, https://arxiv.org/abs/2112.13835), evosax's `PersistentES`.
- "noise_reuse": Noise-Reuse ES (Li, Vicol et al., "Noise-Reuse in Online Evolution
  Strategies", NeurIPS 2023, https://arxiv.org/abs/2304.12180), evosax's `NoiseReuseES`.

ES over partial unrolls, as implemented here. One `update` call runs one whole inner
trajectory of `steps_inner` steps on the meta-batch it is given, cut into
`S = steps_inner / truncation` segments of `truncation` steps. Before each segment the
strategy is asked for a population (PES: fresh antithetic noise every segment,
accumulated per member; NRES: one noise draw reused for the whole trajectory); every
member continues its own inner state (params, model state and the learned optimiser's
state: memory, running averages, step count) from where its previous segment ended, runs
`truncation` steps of the shared loop, and is scored by the query loss at the segment's
end (mean over tasks, divided by S); the strategy is then told the fitness and moves
its mean through `optim_fn_outer`. The objective estimated is therefore the query loss
averaged over the S segment ends (with `truncation=None`, S = 1: the query loss after the
last step, the same objective as "backprop"), with theta updated S times per trajectory.
Unlike learned_optimization's truncated trainers, trajectories are not kept across
`update` calls (a call starts every member afresh on the new meta-batch), so successive
segments of one trajectory are never interleaved with other trajectories.
"""

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metax.data import MetaDataset
from metax.learner.base import MetaLearnerState, _check_steps
from metax.learner.evolution_engine import EvolutionEngine, EvolutionState, evosax_algorithms, generation_metrics, population_hstate
from metax.utils import append_keys

STRATEGIES = {"pes": "PersistentES", "noise_reuse": "NoiseReuseES"}  # evosax class names


class InnerCarry(NamedTuple):
    """One member's inner trajectory between ES segments (leaves per member and task).

    Example:
      >>> from metax.learner.unrolled_es import InnerCarry
      >>> InnerCarry._fields
      ('state', 'params', 'opt_state')
    """

    state: Any  # model state
    params: Any  # adapted params
    opt_state: Any  # the learned optimiser's state (memory, running averages, step count)


class UnrolledES:
    """A `LearnedKernel` estimator: ES over `steps_inner / truncation` partial unrolls.

    Args:
      estimator: "pes" or "noise_reuse".
      steps_inner: the learner's (checked) inner steps, >= 1.
      truncation: the length of a partial unroll (must divide `steps_inner`); None: one
        unroll of the whole loop.
      es_kwargs: `population_size` (even; default 16), `sigma_init` or `std_schedule`,
        `fitness_shaping_fn`.
      optim_fn_outer: moves the strategy's mean by its gradient estimate.

    Example:
      >>> from metax.learner.unrolled_es import UnrolledES
      >>> es = UnrolledES("pes", 20, 10, {"population_size": 4}, optax.adam(1e-3))
      >>> es.unroll, es.segments
      (10, 2)
    """

    def __init__(
        self, estimator: str, steps_inner: int, truncation: Optional[int], es_kwargs: Optional[dict],
        optim_fn_outer: optax.GradientTransformation,
    ) -> None:
        if steps_inner < 1:
            raise ValueError(f"estimator={estimator!r} needs steps_inner >= 1, got {steps_inner}.")
        unroll = steps_inner if truncation is None else _check_steps(truncation, "truncation")
        if not 1 <= unroll <= steps_inner or steps_inner % unroll:
            raise ValueError(
                f"estimator={estimator!r} cuts the inner loop into partial unrolls of truncation="
                f"{unroll} steps, which must divide steps_inner={steps_inner}."
            )
        self.unroll = unroll
        self.segments = steps_inner // self.unroll
        es_kwargs = {"population_size": 16, **(es_kwargs or {})}
        for key in ("optimizer", "lrate_init", "opt_name", "T", "K"):
            if key in es_kwargs:
                raise ValueError(
                    f"es_kwargs[{key!r}] is set by LearnedKernel: the ES update goes through "
                    "optim_fn_outer, and T / K are steps_inner / truncation."
                )
        size = es_kwargs.get("population_size", es_kwargs.get("popsize"))
        if not isinstance(size, int) or size < 2 or size % 2:
            raise ValueError(f"estimator={estimator!r} samples antithetic pairs: population_size must be an even int >= 2, got {size!r}.")
        es_kwargs["optimizer"] = optim_fn_outer
        self.engine = EvolutionEngine(
            getattr(evosax_algorithms(), STRATEGIES[estimator]), es_kwargs, fixed_params={"T": steps_inner, "K": self.unroll}, report="mean"
        )

    def init(self, rng: jax.Array, hparams: Any) -> EvolutionState:
        """The strategy's state around `hparams` (the outer state `reset` stores)."""
        return self.engine.init(jax.random.fold_in(rng, 2), hparams)

    def _segment(self, learner, rng, hstate, hparams, task: MetaDataset, carry: InnerCarry, first: jax.Array):
        """One member on one task: `unroll` steps from `carry` (from its start if `first`)."""
        rng_start, rng_steps, rng_query, rng_final = jax.random.split(rng, 4)
        start = learner._start(rng_start, hstate, hparams, task)
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), start, carry)
        energy = learner.support_energy(hstate, task.train)
        carry, losses = learner.continue_descent(rng_steps, carry, hparams, energy, learner.inner_optimizer(hparams), self.unroll)
        loss, ((_, new_hstate), metrics) = learner.query_energy(rng_query, carry.state, hstate, carry.params, hparams, task.test)
        inner = learner.inner_metrics(rng_final, carry.state, hstate, carry.params, hparams, task.train, losses)
        return carry, loss, new_hstate, {**append_keys(metrics, "outer"), **inner}

    def update(self, learner, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        """One meta-update of `learner`: one whole inner trajectory cut into
        `steps_inner / truncation` segments, with an ask / tell of the strategy per
        segment (see the module docstring). Metrics: `loss_outer` after the last step
        (population and task mean), `loss_outer_segments` (the ES objective),
        `loss_inner_init` before the first step, `nonfinite_inner` over all segments,
        `fitness_best` / `fitness_std` of the last segment."""
        metabatch = learner.check_metabatch("update", rng, meta_state, metabatch)
        num_tasks = metabatch.train.x.shape[0]
        over_tasks = jax.vmap(functools.partial(self._segment, learner), in_axes=(0, None, None, 0, 0, None))
        over_members = jax.vmap(over_tasks, in_axes=(None, None, 0, None, 0, None))

        # Every member's carry, shaped (members, tasks, ...); the first segment replaces it.
        population_shape = jax.eval_shape(lambda: self.engine.ask(rng, meta_state.optim, meta_state.hparams)[0])
        start = jax.vmap(jax.vmap(learner._start, in_axes=(0, None, None, 0)), in_axes=(None, None, 0, None))
        carry_shape = jax.eval_shape(start, jax.random.split(rng, num_tasks), meta_state.hstate, population_shape, metabatch)
        carry = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), carry_shape)

        def segment(loop, inputs):
            optim, carry = loop
            index, rng_segment = inputs
            rng_ask, rng_tell, rng_tasks = jax.random.split(rng_segment, 3)
            # The same task keys for every member (common random numbers).
            task_rngs = jax.random.split(rng_tasks, num_tasks)

            def score(population):
                new_carry, losses, hstates, metrics = over_members(
                    task_rngs, meta_state.hstate, population, metabatch, carry, index == 0
                )
                return jnp.mean(losses, axis=1) / self.segments, (new_carry, jnp.mean(losses), hstates, metrics)

            optim, fitness, (carry, mean_loss, hstates, metrics) = self.engine.generation(
                rng_ask, rng_tell, optim, meta_state.hparams, score
            )
            return (optim, carry), (mean_loss, fitness, hstates, metrics)

        inputs = (jnp.arange(self.segments), jax.random.split(rng, self.segments))
        (optim, _), (segment_losses, fitness, hstates, metrics) = jax.lax.scan(segment, (meta_state.optim, carry), inputs)
        last = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[-1], tree)
        # After all steps_inner steps, except what describes the whole trajectory.
        out = generation_metrics(fitness[-1], last(metrics), scale=self.segments)
        if "loss_inner_init" in metrics:
            out["loss_inner_init"] = jnp.mean(metrics["loss_inner_init"][0])
        out["nonfinite_inner"] = jnp.sum(metrics["nonfinite_inner"])
        out["loss_outer_segments"] = jnp.mean(segment_losses)  # the ES objective
        hparams = self.engine.solution(optim, meta_state.hparams)
        return MetaLearnerState(hparams=hparams, hstate=population_hstate(last(hstates)), optim=optim), out
