"""LearnedKernel: meta-learning a learned update rule, by backpropagation or by ES.

The inner loop is the shared one (`MetaLearner.descend`) running the optimiser that the
learned rule builds from its weights (`kernel.optimizer(theta)`, see `metax.kernel`);
theta travels in `hparams.optimizer` beside the module's own hparams. The meta-gradient
comes from one of three estimators:

- "backprop": through the unrolled inner loop, as MAML does (Andrychowicz et al.,
  "Learning to learn by gradient descent by gradient descent", NeurIPS 2016,
  https://arxiv.org/abs/1606.04474), optionally truncated to the last `truncation` steps
  and with rematerialisation (`remat="block"`: memory O(sqrt(K)) in the K steps).
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

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from metax.data import MetaDataset
from metax.kernel.base import is_learned_optimizer
from metax.learner.base import MetaLearnerState, Remat, _check_steps
from metax.learner.evolution_engine import EvolutionEngine, evosax_algorithms, generation_metrics, population_hstate
from metax.learner.maml import ModelAgnosticMetaLearning
from metax.module.base import MetaModule
from metax.utils import append_keys

ESTIMATORS = ("backprop", "pes", "noise_reuse")
_STRATEGIES = {"pes": "PersistentES", "noise_reuse": "NoiseReuseES"}  # evosax class names


class InnerCarry(NamedTuple):
    """One member's inner trajectory between ES segments (leaves per member and task)."""

    state: Any  # model state
    params: Any  # adapted params
    opt_state: Any  # the learned optimiser's state (memory, running averages, step count)


class LearnedKernel(ModelAgnosticMetaLearning):
    """Meta-learns a learned update rule (and the module's hparams) over any module.

    Args:
      meta_model, batch_size, steps_inner, extra_metrics: see `MetaLearner`.
      kernel: a learned optimiser (`metax.kernel.CoordinatewiseKernel`,
        `MetadynamicOptimizer`, `MetaSGD`, ...): `init(rng, params) -> theta`,
        `optimizer(theta) -> optax.GradientTransformation`.
      optim_fn_outer: the outer optimiser, applied to the backpropagated meta-gradient or
        to the ES gradient estimate.
      estimator: "backprop", "pes" or "noise_reuse" (see the module docstring).
      truncation: backprop: gradients flow through the last `truncation` inner steps
        only (the shared loop's option, see `MetaLearner`); ES: the length of a partial
        unroll (must divide `steps_inner`). None: the whole loop.
      remat: backprop only: what the backward pass recomputes (True: each step; "block" or
        an int: blocks of steps; see `MetaLearner`).
      first_order: backprop only: treat inner gradients as constants.
      es_kwargs: ES only: `population_size` (even; default 16), `sigma_init` (the
        perturbation std, default 0.1) or `std_schedule`, `fitness_shaping_fn`.

    Example:
      >>> kernel = metax.kernel.CoordinatewiseKernel(hidden_sizes=(16,), step_size=0.01)
      >>> learner = metax.learner.LearnedKernel(meta_model, None, 20, kernel, optax.adam(1e-3), truncation=10)
      >>> meta_state = learner.reset(jax.random.PRNGKey(0), sample_input)

    `jax.jit(learner.update)(rng, meta_state, metabatch)` then takes one meta-step.
    """

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        kernel: Any,
        optim_fn_outer: optax.GradientTransformation,
        *,
        estimator: str = "backprop",
        truncation: Optional[int] = None,
        remat: Remat = False,
        first_order: bool = False,
        es_kwargs: Optional[dict] = None,
        extra_metrics: bool = False,
    ) -> None:
        if not is_learned_optimizer(kernel):
            raise TypeError(
                f"LearnedKernel needs a learned update rule (metax.kernel.CoordinatewiseKernel, "
                f"MetadynamicOptimizer, MetaSGD, ...), got {type(kernel).__name__}; for a fixed "
                "optax optimiser use ModelAgnosticMetaLearning."
            )
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
        self.estimator = estimator
        if estimator == "backprop":
            if es_kwargs:
                raise ValueError("es_kwargs apply to estimator='pes' or 'noise_reuse', not 'backprop'.")
            super().__init__(
                meta_model, batch_size, steps_inner, kernel, optim_fn_outer, first_order,
                extra_metrics=extra_metrics, truncation=truncation, remat=remat,
            )
            return

        if remat is not False or first_order:
            raise ValueError(f"remat and first_order apply to estimator='backprop'; {estimator!r} takes no gradient.")
        super().__init__(meta_model, batch_size, steps_inner, kernel, optim_fn_outer, extra_metrics=extra_metrics)
        if self.steps_inner < 1:
            raise ValueError(f"estimator={estimator!r} needs steps_inner >= 1, got {self.steps_inner}.")
        unroll = self.steps_inner if truncation is None else _check_steps(truncation, "truncation")
        if not 1 <= unroll <= self.steps_inner or self.steps_inner % unroll:
            raise ValueError(
                f"estimator={estimator!r} cuts the inner loop into partial unrolls of truncation="
                f"{unroll} steps, which must divide steps_inner={self.steps_inner}."
            )
        self.unroll = unroll
        self.segments = self.steps_inner // self.unroll
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
            getattr(evosax_algorithms(), _STRATEGIES[estimator]), es_kwargs, fixed_params={"T": self.steps_inner, "K": self.unroll}, report="mean"
        )

    # -- ES over partial unrolls ------------------------------------------------------------

    def strategy(self, hparams: Any):
        """The evosax strategy searching over hparams shaped like `hparams` (cached)."""
        return self.engine.strategy(hparams)

    def reset(self, rng: jax.Array, sample_input: jax.Array) -> MetaLearnerState:
        if self.estimator == "backprop":
            return super().reset(rng, sample_input)
        hparams, hstate = self.reset_hparams(rng, sample_input)
        optim = self.engine.init(jax.random.fold_in(rng, 2), hparams)
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=optim)

    def continue_descent(self, rng, carry: InnerCarry, hparams, energy, optimizer, steps: int):
        """`steps` steps of the shared loop continuing `carry`, optimiser state included."""
        state, params, losses, _, opt_state = self.descend(
            rng, carry.state, carry.params, hparams, energy, optimizer, steps,
            opt_state=carry.opt_state, return_opt_state=True,
        )
        return InnerCarry(state, params, opt_state), losses

    def _start(self, rng, hstate, hparams, task: MetaDataset) -> InnerCarry:
        params, state = self.meta_model.reset_params(rng, hparams, hstate, task.train.x)
        return InnerCarry(state, params, self.inner_optimizer(hparams).init(params))

    def _segment(self, rng, hstate, hparams, task: MetaDataset, carry: InnerCarry, first: jax.Array):
        """One member on one task: `unroll` steps from `carry` (from its start if `first`)."""
        rng_start, rng_steps, rng_query, rng_final = jax.random.split(rng, 4)
        start = self._start(rng_start, hstate, hparams, task)
        carry = jax.tree_util.tree_map(lambda a, b: jnp.where(first, a, b), start, carry)
        energy = self.support_energy(hstate, task.train)
        carry, losses = self.continue_descent(rng_steps, carry, hparams, energy, self.inner_optimizer(hparams), self.unroll)
        loss, ((_, new_hstate), metrics) = self.query_energy(rng_query, carry.state, hstate, carry.params, hparams, task.test)
        inner = self.inner_metrics(rng_final, carry.state, hstate, carry.params, hparams, task.train, losses)
        return carry, loss, new_hstate, {**append_keys(metrics, "outer"), **inner}

    def update(self, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        """One meta-update: MAML's for "backprop"; for ES, one whole inner trajectory cut
        into `steps_inner / truncation` segments, with an ask / tell of the strategy per
        segment (see the module docstring). Metrics: `loss_outer` after the last step
        (population and task mean), `loss_outer_segments` (the ES objective),
        `loss_inner_init` before the first step, `nonfinite_inner` over all segments,
        `fitness_best` / `fitness_std` of the last segment."""
        if self.estimator == "backprop":
            return super().update(rng, meta_state, metabatch)
        metabatch = self.check_metabatch("update", rng, meta_state, metabatch)
        num_tasks = metabatch.train.x.shape[0]
        over_tasks = jax.vmap(self._segment, in_axes=(0, None, None, 0, 0, None))
        over_members = jax.vmap(over_tasks, in_axes=(None, None, 0, None, 0, None))

        # Every member's carry, shaped (members, tasks, ...); the first segment replaces it.
        population_shape = jax.eval_shape(lambda: self.engine.ask(rng, meta_state.optim, meta_state.hparams)[0])
        start = jax.vmap(jax.vmap(self._start, in_axes=(0, None, None, 0)), in_axes=(None, None, 0, None))
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
