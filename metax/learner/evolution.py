"""Evolution strategies as meta-learners, through evosax (>= 0.3).

The hparams pytree is the search space: evosax ravels it to a vector and back. Each
generation asks the strategy for a population, scores every member by its mean outer
loss over the meta-batch (population x tasks in one vmapped, jitted call, with the same
task keys for every member) and tells the strategy the fitness. No gradient of the outer
loss is taken, so anything the outer loss depends on can be evolved, including
hparams that act only through the inner optimiser.

`EvolutionEngine` is the one evolution engine of metax: `Evosax` and the ES estimators
of `LearnedKernel` both reset, ask, tell, average the population's hstate and write the
fitness metrics through it.

Lange. "evosax: JAX-based Evolution Strategies", 2022, https://arxiv.org/abs/2212.04180.
"""

import inspect
from typing import Any, Callable, NamedTuple, Optional, Sequence

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.data import MetaDataset
from metax.learner.base import MetaLearner, MetaLearnerState, Remat, reduce_task_metrics
from metax.learner.contract import float_dtype
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
    """`MetaLearnerState.optim` of the evolution learners.

    Example:
      >>> metax.learner.EvolutionState._fields
      ('strategy_state', 'strategy_params')
    """

    strategy_state: Any  # evosax state (mean, std, covariance, archive, ...)
    strategy_params: Any  # evosax params (fixed hyperparameters of the strategy)


def evosax_algorithms():
    """`evosax.algorithms`, imported on first use: importing it creates JAX arrays, which
    starts the XLA backend, and `jax.distributed.initialize` (multi-host runs) must come
    before that."""
    return importlib.import_module("evosax.algorithms")


def strategy_class(algorithm: str) -> type:
    """The evosax class for a current or legacy name.

    Raises:
      ValueError: for an unknown name, listing the valid ones.
    """
    table = evosax_algorithms().algorithms
    name = LEGACY_NAMES.get(algorithm, algorithm)
    if name not in table:
        raise ValueError(
            f"Unknown evolution strategy {algorithm!r}. Valid names: {', '.join(sorted(table))} "
            f"(legacy names also accepted: {', '.join(sorted(set(LEGACY_NAMES) - set(table)))})."
        )
    return table[name]


def _uses_elites(cls: type) -> bool:
    """Does the strategy read `num_elites` (evosax 0.3's form of the elite ratio)?"""
    return any(
        "num_elites" in inspect.getsource(klass)
        for klass in cls.__mro__
        if klass.__module__.startswith("evosax") and klass.__name__ != "EvolutionaryAlgorithm"
    )


def _is_cma(cls: type) -> bool:
    return issubclass(cls, evosax_algorithms().CMA_ES)


class EvolutionEngine:
    """One evosax strategy searching over hparams-shaped solutions.

    Args:
      strategy_cls: the evosax class.
      kwargs: constructor arguments or fields of the strategy's params; the evosax 0.1
        keys `popsize`, `sigma_init`, `opt_name`, `lrate_init` and `elite_ratio` are
        translated (`elite_ratio` sets evosax 0.3's `elite_ratio` attribute and, for the
        CMA family, puts the recombination weights on the best `elite_ratio` of the
        population, as evosax 0.1's CMA-ES did).
      fixed_params: params fields the caller sets itself (e.g. PES's `T` and `K`).
      report: "mean" (the search distribution's mean), "best" (the best member seen so
        far) or None: "mean" where the strategy has one, else "best".

    Raises:
      ValueError: for kwargs that are neither constructor arguments nor params fields,
        an `elite_ratio` the strategy would ignore, or `report="mean"` for a
        population-based strategy.
    """

    def __init__(
        self, strategy_cls: type, kwargs: dict, *, fixed_params: Optional[dict] = None, report: Optional[str] = None
    ) -> None:
        self.strategy_cls = strategy_cls
        self.constructor, self.param_overrides, self.init_std, self.elite_ratio = _translate_kwargs(strategy_cls, dict(kwargs))
        self.param_overrides.update(fixed_params or {})
        self.population_based = not hasattr(strategy_cls, "get_mean")
        if report not in (None, "mean", "best"):
            raise ValueError(f"report must be 'mean', 'best' or None, got {report!r}.")
        if report == "mean" and self.population_based:
            raise ValueError(
                f"report='mean': {strategy_cls.__name__} is population-based and has no search mean; "
                "use report='best' (or None, which picks it)."
            )
        self.report = report or ("best" if self.population_based else "mean")
        self._strategies = {}

    def strategy(self, template: Any):
        """The strategy over solutions shaped like `template` (cached by shapes and dtypes)."""
        leaves, treedef = jax.tree_util.tree_flatten(template)
        key = (treedef, tuple((tuple(jnp.shape(leaf)), jnp.result_type(leaf)) for leaf in leaves))
        if key not in self._strategies:
            zeros = jax.tree_util.tree_unflatten(treedef, [jnp.zeros(shape, dtype) for shape, dtype in key[1]])
            strategy = self.strategy_cls(solution=zeros, **self.constructor)
            if self.elite_ratio is not None:
                strategy.elite_ratio = self.elite_ratio
            self._strategies[key] = strategy
        return self._strategies[key]

    def params(self, strategy: Any) -> Any:
        """The strategy's params: its defaults with the user's and the caller's overrides."""
        params = strategy.default_params
        overrides = dict(self.param_overrides)
        if self.elite_ratio is not None and _is_cma(self.strategy_cls):
            n, mu = strategy.population_size, strategy.num_elites
            ranks = jnp.arange(1, n + 1)
            prime = jnp.maximum(jnp.log((n + 1) / 2) - jnp.log(ranks), 0.0) * (ranks <= mu)
            overrides["weights"] = (prime / jnp.sum(prime)).astype(jnp.result_type(params.weights))
        return params.replace(**overrides) if overrides else params

    def init(self, rng: jax.Array, hparams: Any, rng_population: Optional[jax.Array] = None) -> EvolutionState:
        """The strategy's state around `hparams` (a population-based strategy's first
        population is drawn around them with `rng_population`, not yet scored), in
        `hparams`' float dtype."""
        strategy = self.strategy(hparams)
        dtype = float_dtype(hparams)
        params = _strongly_typed(self.params(strategy), dtype)
        if self.population_based:
            rng_population = jax.random.fold_in(rng, 1) if rng_population is None else rng_population
            flat = strategy._ravel_solution(hparams)
            noise = jax.random.normal(rng_population, (strategy.population_size, flat.size), flat.dtype)
            population = jax.vmap(strategy._unravel_solution)(flat + self.init_std * noise)
            fitness = jnp.full((strategy.population_size,), jnp.inf, flat.dtype)
            return EvolutionState(_strongly_typed(strategy.init(rng, population, fitness, params), dtype), params)
        return EvolutionState(_strongly_typed(strategy.init(rng, hparams, params), dtype), params)

    def ask(self, rng: jax.Array, optim: EvolutionState, template: Any) -> tuple[Any, Any]:
        """The strategy's next population (leaves `(members, *template_leaf.shape)`) in the
        dtypes of `template`'s leaves, and the strategy state after asking."""
        population, state = self.strategy(template).ask(rng, optim.strategy_state, optim.strategy_params)
        # evosax draws its noise in JAX's default float (float64 under jax_enable_x64),
        # which would promote every member's inner loop from float32 to float64.
        population = jax.tree_util.tree_map(lambda member, leaf: member.astype(jnp.result_type(leaf)), population, template)
        return population, state

    def generation(
        self, rng_ask: jax.Array, rng_tell: jax.Array, optim: EvolutionState, template: Any, score: Callable
    ) -> tuple[EvolutionState, jax.Array, Any]:
        """Ask for a population, `score(population) -> (fitness, aux)` it (lower is
        better), tell the strategy. Returns the new state, the fitness and `aux`."""
        population, state = self.ask(rng_ask, optim, template)
        fitness, aux = score(population)
        state, _ = self.strategy(template).tell(rng_tell, population, fitness, state, optim.strategy_params)
        return EvolutionState(_strongly_typed(state, float_dtype(template)), optim.strategy_params), fitness, aux

    def solution(self, optim: EvolutionState, template: Any) -> Any:
        """The hparams the meta-state carries: the mean or the best member (`report`)."""
        strategy = self.strategy(template)
        if self.report == "mean":
            return strategy.get_mean(optim.strategy_state)
        return strategy._unravel_solution(optim.strategy_state.best_solution)


def _strongly_typed(tree: Any, dtype: Any) -> Any:
    """`tree` with every leaf an array of a fixed type, floating leaves in `dtype`.

    evosax fills some state fields with Python scalars (weakly typed) at init or in `tell`,
    and others not; fixing every leaf's type keeps a jitted update from compiling twice
    (once for the initial state, once for every later one). Its defaults and fresh arrays
    take JAX's default float (float64 under jax_enable_x64): casting floating leaves to
    the solution's dtype keeps a float32 search in float32."""

    def typed(leaf):
        leaf_dtype = jnp.result_type(leaf)
        return jnp.asarray(leaf, dtype=dtype if jnp.issubdtype(leaf_dtype, jnp.floating) else leaf_dtype)

    return jax.tree_util.tree_map(typed, tree)


def population_hstate(hstates: Any) -> Any:
    """The mean hstate over a `(members, tasks, ...)` population, dtypes kept."""
    return tree_mean_keep_dtype(tree_mean_keep_dtype(hstates))


def generation_metrics(fitness: jax.Array, metrics: dict, scale: float = 1.0) -> dict:
    """A generation's metrics from `(members, tasks)` task metrics: means over both
    (`nonfinite_*` summed), `nonfinite_outer` (members x tasks with a non-finite query
    loss) and the fitness `fitness_best` / `fitness_std` (times `scale`)."""
    out = reduce_task_metrics(metrics, axes=(0, 1))
    if "loss_outer" in metrics:
        out["nonfinite_outer"] = jnp.sum(~jnp.isfinite(metrics["loss_outer"])).astype(jnp.int32)
    out["fitness_best"] = jnp.min(fitness) * scale
    out["fitness_std"] = jnp.std(fitness) * scale
    return out


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
        extra_metrics: bool = False,
        truncation: Optional[int] = None,
        remat: Remat = False,
    ) -> None:
        # The strategy is the outer optimiser: optim_fn_outer has nothing to do.
        super().__init__(
            meta_model, batch_size, steps_inner, optim_fn_inner, optax.set_to_zero(),
            extra_metrics=extra_metrics, truncation=truncation, remat=remat,
        )
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


def _translate_kwargs(cls: type, kwargs: dict) -> tuple[dict, dict, float, Optional[float]]:
    """Splits user kwargs into constructor kwargs and params overrides (legacy keys mapped).

    Returns:
      `(constructor_kwargs, params_overrides, init_std, elite_ratio)`.
    """
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "solution"}
    if "popsize" in kwargs:
        kwargs["population_size"] = kwargs.pop("popsize")
    init_std = float(kwargs.pop("sigma_init", 0.1))
    if not (np.isfinite(init_std) and init_std > 0):
        raise ValueError(f"evosax_kwargs['sigma_init'] must be > 0 (the initial search std), got {init_std!r}.")
    elite_ratio = kwargs.pop("elite_ratio", None)
    if elite_ratio is not None:
        if isinstance(elite_ratio, bool) or not isinstance(elite_ratio, (int, float)) or not 0 < elite_ratio <= 1:
            raise ValueError(f"evosax_kwargs['elite_ratio'] must lie in (0, 1], got {elite_ratio!r}.")
        if not _uses_elites(cls):
            raise ValueError(
                f"evosax_kwargs['elite_ratio'] has no effect on {cls.__name__}, which does not select "
                "elites; drop it (CMA_ES, Sep_CMA_ES, SimpleES, SimpleGA, ARS, ... use it)."
            )
        elite_ratio = float(elite_ratio)
    if "std_schedule" in accepted and "std_schedule" not in kwargs:
        kwargs["std_schedule"] = optax.constant_schedule(init_std)
    if "lrate_init" in kwargs or "opt_name" in kwargs:
        optimizer = getattr(optax, kwargs.pop("opt_name", "adam"))
        kwargs["optimizer"] = optimizer(kwargs.pop("lrate_init", 0.01))
    if "population_size" not in kwargs:
        raise ValueError("evosax_kwargs needs population_size (or the legacy popsize).")
    size = kwargs["population_size"]
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"evosax_kwargs['population_size'] must be an int >= 2, got {size!r}.")

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
    return constructor, rest, init_std, elite_ratio
