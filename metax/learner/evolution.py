"""Evolution strategies as meta-learners, through evosax (>= 0.3).

The hparams pytree is the search space: evosax ravels it to a vector and back. Each
generation asks the strategy for a population, scores every member by its mean outer
loss over the meta-batch (population x tasks in one vmapped, jitted call, with the same
task keys for every member) and tells the strategy the fitness. No gradient of the outer
loss is taken, so anything the outer loss depends on can be evolved, including
hparams that act only through the inner optimiser.

The evolution engine (`metax.learner.evolution_engine.EvolutionEngine`) is shared with
the ES estimators of `LearnedKernel`; this file holds only the learner.

Lange. "evosax: JAX-based Evolution Strategies", 2022, https://arxiv.org/abs/2212.04180.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.data import MetaDataset
from metax.learner.base import MetaLearner, MetaLearnerState
from metax.learner.evolution_engine import EvolutionEngine
from metax.learner.evolution_engine import EvolutionState  # noqa: F401  (re-exported by metax.learner)
from metax.learner.evolution_engine import generation_metrics
from metax.learner.evolution_engine import population_hstate
from metax.learner.evolution_engine import strategy_class
from metax.module.base import MetaModule


class Evosax(MetaLearner):
    """Meta-learning by an evosax evolution strategy.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, extra_metrics: see `MetaLearner`
        (no gradient is taken: no truncation/remat).
      input_shape: shape of one input (without the sample axis); `reset` and `update`
        check the data against it.
      algorithm: an evosax strategy name (`"Open_ES"`, `"CMA_ES"`, `"SNES"`, ...; the
        pre-0.3 names such as `"OpenES"` work too).
      evosax_kwargs: passed to the strategy's constructor (`population_size`, `optimizer`,
        `std_schedule`, ...) or, for fields of its params, to those; the pre-0.3 keys
        `popsize`, `sigma_init`, `opt_name`, `lrate_init` and `elite_ratio` are translated
        (see `EvolutionEngine`).
      report: which hparams the meta-state carries: "mean" (the search distribution's
        mean), "best" (the best member seen so far), or None (default): "mean" where the
        strategy has one, "best" for population-based strategies.

    Example:
      >>> learner = metax.learner.Evosax(meta_model, None, 5, optax.sgd(0.01), input_shape=(1,),
      ...     algorithm="CMA_ES", evosax_kwargs=dict(popsize=8, elite_ratio=0.1))
    """

    can_learn_optimizer = True

    def __init__(
        self,
        meta_model: MetaModule,
        batch_size: Optional[int],
        steps_inner: int,
        optim_fn_inner: optax.GradientTransformation,
        input_shape: Sequence[int],
        algorithm: str,
        evosax_kwargs: Optional[dict] = None,
        *,
        report: Optional[str] = None,
        **options: Any,
    ) -> None:
        # The strategy is the outer optimiser: optim_fn_outer has nothing to do.
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optax.set_to_zero(), **options)
        if isinstance(input_shape, int) or not all(isinstance(d, (int, np.integer)) and d > 0 for d in input_shape):
            raise ValueError(
                f"input_shape must be a tuple of positive ints, one input's shape without the sample "
                f"axis (e.g. (1,) for sinusoids), got {input_shape!r}."
            )
        self.input_shape = tuple(int(d) for d in input_shape)
        if evosax_kwargs is not None and not isinstance(evosax_kwargs, dict):
            raise TypeError(f"evosax_kwargs must be a dict, got {type(evosax_kwargs).__name__}.")
        self.engine = EvolutionEngine(strategy_class(algorithm), evosax_kwargs or {}, report=report)
        self.report = self.engine.report
        # The strategy over hparams as reset builds them from inputs of input_shape (traced
        # abstractly: no compute). update uses the one matching the actual hparams' dtype.
        sample = jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.result_type(float))
        self.strategy = self.engine.strategy(jax.eval_shape(self.meta_model.reset_hparams, jax.random.PRNGKey(0), sample)[0])
        self.population_based = self.engine.population_based

    def _check_input_shape(self, shape: tuple, argument: str) -> None:
        if tuple(shape) != self.input_shape:
            raise ValueError(
                f"Evosax was built for input_shape={self.input_shape} but {argument} has inputs of "
                f"shape {tuple(shape)}; pass input_shape={tuple(shape)}."
            )

    def reset(self, rng: jax.Array, sample_input: jax.Array) -> MetaLearnerState:
        if hasattr(sample_input, "shape"):
            self._check_input_shape(np.shape(sample_input)[1:], "sample_input")
        rng_hparams, rng_strategy, rng_population = jax.random.split(rng, 3)
        hparams, hstate = self.reset_hparams(rng_hparams, sample_input)
        optim = self.engine.init(rng_strategy, hparams, rng_population)
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=optim)

    def grad(self, rng, hstate, hparams, metadataset):
        raise NotImplementedError("Evosax estimates no gradient; it updates hparams in update().")

    def update(self, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        metabatch = self.check_metabatch("update", rng, meta_state, metabatch)
        self._check_input_shape(np.shape(metabatch.train.x)[2:], "metabatch.train.x")
        rng_ask, rng_tell, rng_tasks = jax.random.split(rng, 3)
        task_rngs = jax.random.split(rng_tasks, metabatch.train.x.shape[0])

        def member(hparams):
            over_tasks = jax.vmap(self.outer_loss, in_axes=(0, None, None, 0, None))
            losses, (outcome, metrics) = over_tasks(task_rngs, meta_state.hstate, hparams, metabatch, self.steps_inner)
            return jnp.mean(losses), (outcome.hstate, metrics)

        optim, fitness, (hstates, metrics) = self.engine.generation(
            rng_ask, rng_tell, meta_state.optim, meta_state.hparams, jax.vmap(member)
        )
        hparams = self.engine.solution(optim, meta_state.hparams)
        # loss_outer: averaged over the population and the tasks.
        metrics = generation_metrics(fitness, metrics)
        return MetaLearnerState(hparams=hparams, hstate=population_hstate(hstates), optim=optim), metrics
