"""Evolution strategies as meta-learners, through evosax (>= 0.3).

The hparams pytree is the search space: evosax ravels it to a vector and back. Each
generation asks the strategy for a population, scores every member by its mean outer
loss over the meta-batch (population x tasks in one vmapped, jitted call, with the same
task keys for every member) and tells the strategy the fitness. No gradient of the outer
loss is taken, so anything the outer loss depends on can be evolved, including
hparams that act only through the inner optimiser.

Lange. "evosax: JAX-based Evolution Strategies", 2022, https://arxiv.org/abs/2212.04180.
"""

import inspect
from typing import Any, NamedTuple, Optional, Sequence

import evosax.algorithms
import jax
import jax.numpy as jnp
import optax

from metax.data import MetaDataset, check_metabatch
from metax.learner.base import MetaLearner, MetaLearnerState
from metax.module.base import MetaModule
from metax.utils import tree_mean_keep_dtype

# evosax 0.1/0.2 names (metax's `algorithm` strings) -> evosax >= 0.3 names.
LEGACY_NAMES = {
    "OpenES": "Open_ES",
    "CMA_ES": "CMA_ES",
    "Sep_CMA_ES": "Sep_CMA_ES",
    "SNES": "SNES",
    "xNES": "xNES",
    "PGPE": "PGPE",
    "ARS": "ARS",
    "ASEBO": "ASEBO",
    "SimpleES": "SimpleES",
    "SimpleGA": "SimpleGA",
    "PSO": "PSO",
    "DE": "DifferentialEvolution",
    "GLD": "GradientlessDescent",
    "SimAnneal": "SimulatedAnnealing",
    "RmES": "Rm_ES",
    "MA_ES": "MA_ES",
    "LM_MA_ES": "LM_MA_ES",
    "Full_iAMaLGaM": "iAMaLGaM_Full",
    "Indep_iAMaLGaM": "iAMaLGaM_Univariate",
    "GESMR_GA": "GESMR_GA",
    "SAMR_GA": "SAMR_GA",
    "MR15_GA": "MR15_GA",
    "ESMC": "ESMC",
    "PersistentES": "PersistentES",
    "NoiseReuseES": "NoiseReuseES",
    "GuidedES": "GuidedES",
    "CR_FM_NES": "CR_FM_NES",
    "DES": "DiscoveredES",
    "LES": "LearnedES",
    "LGA": "LearnedGA",
    "RandomSearch": "RandomSearch",
    "HillClimber": "HillClimbing",
}


class EvolutionState(NamedTuple):
    """`MetaLearnerState.optim` of the evolution learner."""

    strategy_state: Any  # evosax state (mean, std, covariance, archive, ...)
    strategy_params: Any  # evosax params (fixed hyperparameters of the strategy)


def strategy_class(algorithm: str) -> type:
    """The evosax class for a current or legacy name.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    table = evosax.algorithms.algorithms
    name = LEGACY_NAMES.get(algorithm, algorithm)
    if name not in table:
        raise ValueError(
            f"Unknown evolution strategy {algorithm!r}. Valid names: {', '.join(sorted(table))} "
            f"(legacy names also accepted: {', '.join(sorted(set(LEGACY_NAMES) - set(table)))})."
        )
    return table[name]


class Evosax(MetaLearner):
    """Meta-learning by an evosax evolution strategy.

    Args:
      meta_model, batch_size, steps_inner, optim_fn_inner, extra_metrics: see `MetaLearner`.
      input_shape: shape of one input (without the sample axis); the hparams template
        the strategy searches over is built from it.
      algorithm: an evosax strategy name (`"Open_ES"`, `"CMA_ES"`, `"SNES"`, ...; the
        pre-0.3 names such as `"OpenES"` work too).
      evosax_kwargs: passed to the strategy's constructor (`population_size`, `optimizer`,
        `std_schedule`, ...) or, for fields of its params, to those; the pre-0.3 keys
        `popsize`, `sigma_init`, `opt_name` and `lrate_init` are translated.
      report: which hparams the meta-state carries: "mean" (the search distribution's
        mean) or "best" (the best member seen so far). Population-based strategies have
        no mean and always report "best".

    Example:
      >>> learner = Evosax(meta_model, None, 5, optax.sgd(0.01), input_shape=(1,),
      ...     algorithm="Open_ES", evosax_kwargs={"population_size": 16, "std_schedule": optax.constant_schedule(0.05)})
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
        report: str = "mean",
        extra_metrics: bool = False,
    ) -> None:
        # The strategy is the outer optimiser: optim_fn_outer has nothing to do.
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optax.identity(), extra_metrics=extra_metrics)
        if report not in ("mean", "best"):
            raise ValueError(f"report must be 'mean' or 'best', got {report!r}.")
        cls = strategy_class(algorithm)
        self.input_shape = tuple(input_shape)
        # Only the hparams' shapes matter here: trace abstractly (no compute, and no input
        # checks on a placeholder input).
        abstract, _ = jax.eval_shape(
            self.meta_model.reset_hparams, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1,) + self.input_shape, jnp.float32)
        )
        template = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), abstract)
        kwargs, param_overrides, self.init_std = _translate_kwargs(cls, dict(evosax_kwargs or {}))
        self.strategy = cls(solution=template, **kwargs)
        self.population_based = not hasattr(self.strategy, "get_mean")
        self.report = "best" if self.population_based else report
        self._param_overrides = param_overrides

    def _strategy_params(self):
        params = self.strategy.default_params
        return params.replace(**self._param_overrides) if self._param_overrides else params

    def reset(self, rng: jax.Array, sample_input: jax.Array) -> MetaLearnerState:
        rng_hparams, rng_strategy, rng_population = jax.random.split(rng, 3)
        hparams, hstate = self.meta_model.reset_hparams(rng_hparams, sample_input)
        params = self._strategy_params()
        if self.population_based:
            # Start the population around the module's initial hparams, not yet scored.
            flat = self.strategy._ravel_solution(hparams)
            noise = jax.random.normal(rng_population, (self.strategy.population_size, flat.size), flat.dtype)
            population = jax.vmap(self.strategy._unravel_solution)(flat + self.init_std * noise)
            fitness = jnp.full((self.strategy.population_size,), jnp.inf)
            state = self.strategy.init(rng_strategy, population, fitness, params)
        else:
            state = self.strategy.init(rng_strategy, hparams, params)
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=EvolutionState(state, params))

    def grad(self, rng, hstate, hparams, metadataset):
        raise NotImplementedError("Evosax estimates no gradient; it updates hparams in update().")

    def update(self, rng: jax.Array, meta_state: MetaLearnerState, metabatch: MetaDataset):
        check_metabatch(metabatch)
        rng_ask, rng_tell, rng_tasks = jax.random.split(rng, 3)
        state, params = meta_state.optim
        population, state = self.strategy.ask(rng_ask, state, params)
        task_rngs = jax.random.split(rng_tasks, metabatch.train.x.shape[0])

        def member(hparams):
            over_tasks = jax.vmap(self.outer_loss, in_axes=(0, None, None, 0, None))
            losses, (outcome, metrics) = over_tasks(task_rngs, meta_state.hstate, hparams, metabatch, self.steps_inner)
            return jnp.mean(losses), outcome.hstate, metrics

        fitness, hstates, metrics = jax.vmap(member)(population)
        state, _ = self.strategy.tell(rng_tell, population, fitness, state, params)
        if self.report == "mean":
            hparams = self.strategy.get_mean(state)
        else:
            hparams = self.strategy._unravel_solution(state.best_solution)
        hstate = tree_mean_keep_dtype(tree_mean_keep_dtype(hstates))
        metrics = jax.tree_util.tree_map(lambda m: jnp.mean(m, axis=(0, 1)), metrics)
        metrics = {
            **metrics,  # loss_outer: averaged over the population and the tasks
            "fitness_best": jnp.min(fitness),
            "fitness_std": jnp.std(fitness),
        }
        return MetaLearnerState(hparams=hparams, hstate=hstate, optim=EvolutionState(state, params)), metrics


def _translate_kwargs(cls: type, kwargs: dict) -> tuple[dict, dict, float]:
    """Splits user kwargs into constructor kwargs and params overrides (legacy keys mapped).

    Returns:
      `(constructor_kwargs, params_overrides, init_std)`.
    """
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "solution"}
    if "popsize" in kwargs:
        kwargs["population_size"] = kwargs.pop("popsize")
    init_std = float(kwargs.pop("sigma_init", 0.1))
    if "std_schedule" in accepted and "std_schedule" not in kwargs:
        kwargs["std_schedule"] = optax.constant_schedule(init_std)
    if "lrate_init" in kwargs or "opt_name" in kwargs:
        optimizer = getattr(optax, kwargs.pop("opt_name", "adam"))
        kwargs["optimizer"] = optimizer(kwargs.pop("lrate_init", 0.01))
    if "population_size" not in kwargs:
        raise ValueError("evosax_kwargs needs population_size (or the legacy popsize).")

    constructor = {k: v for k, v in kwargs.items() if k in accepted}
    rest = {k: v for k, v in kwargs.items() if k not in accepted}
    probe = cls(solution=jnp.zeros(1), **constructor)
    param_fields = set(getattr(probe.default_params, "__dataclass_fields__", {}))
    if "std_init" in param_fields and "std_init" not in rest:
        rest["std_init"] = init_std
    unknown = set(rest) - param_fields
    if unknown:
        raise ValueError(
            f"evosax_kwargs {sorted(unknown)} are neither arguments of {cls.__name__} "
            f"({', '.join(sorted(accepted))}) nor fields of its params ({', '.join(sorted(param_fields))})."
        )
    return constructor, rest, init_std
