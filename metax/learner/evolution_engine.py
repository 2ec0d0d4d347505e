"""The evolution engine of metax: one evosax (>= 0.3) strategy over hparams-shaped solutions.

`Evosax` and the ES estimators of `LearnedKernel` both reset, ask, tell, average the
population's hstate and write the fitness metrics through `EvolutionEngine`. It reaches
evosax only through its public objects: the strategy classes (by name, through
`evosax.algorithms.algorithms`, with the pre-0.3 names mapped by one explicit table),
their `init` / `ask` / `tell` / `get_mean`, their `default_params`, and
`evosax.algorithms.base.get_ravel_fn` (the solution <-> vector map every strategy uses
internally), never private attributes or its source text.

Lange. "evosax: JAX-based Evolution Strategies", 2022, https://arxiv.org/abs/2212.04180.
"""

import importlib
import inspect
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.learner.base import reduce_task_metrics
from metax.learner.contract import float_dtype
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


# The evosax (>= 0.3) strategies that select elites (read `num_elites`, which evosax 0.3
# derives from `elite_ratio`), by their registry names; their subclasses (Sep_CMA_ES,
# MA_ES, LM_MA_ES, Rm_ES, SV_CMA_ES, iAMaLGaM_Univariate) inherit the selection.
ELITE_SELECTING = ("ARS", "CMA_ES", "SimpleES", "iAMaLGaM_Full", "SimpleGA", "SAMR_GA", "GESMR_GA", "LGA")


def _uses_elites(cls: type) -> bool:
    """Does the strategy select elites, so that `elite_ratio` changes what it does?"""
    table = evosax_algorithms().algorithms
    return any(issubclass(cls, table[name]) for name in ELITE_SELECTING if name in table)


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
            ravel, unravel = _ravel_fns(hparams)
            flat = ravel(hparams)
            noise = jax.random.normal(rng_population, (strategy.population_size, flat.size), flat.dtype)
            population = jax.vmap(unravel)(flat + self.init_std * noise)
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
        if self.report == "mean":
            return self.strategy(template).get_mean(optim.strategy_state)
        return _ravel_fns(template)[1](optim.strategy_state.best_solution)


def _ravel_fns(template: Any) -> tuple[Callable[[Any], jax.Array], Callable[[jax.Array], Any]]:
    """evosax's own `(ravel, unravel)` between solutions shaped like `template` and the flat
    vectors its strategies search over (the same map a strategy builds from its solution)."""
    return importlib.import_module("evosax.algorithms.base").get_ravel_fn(template)


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
