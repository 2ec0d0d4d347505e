"""Learned inner optimisers: meta-parameters in, optax optimiser out.

A learned optimiser is any object with

    init(rng, params) -> theta                      # its meta-parameters for these params
    optimizer(theta) -> optax.GradientTransformation

(learned_optimization's `opt_fn(theta)` idea). Passed as `optim_fn_inner`, its `theta`
joins the module's hparams, and the shared inner loop simply runs the optimiser built
from the current theta, never asking whether its rule is learned. Learners whose
meta-gradient flows through the inner updates (MAML, first order included, and Evosax)
can learn theta; the others refuse at construction.
"""

import abc
from typing import Any, NamedTuple, Optional

import jax
import optax

from metax.energy import EnergyFunction
from metax.module.base import MetaModule

Theta = Any


class LearnedOptimizer(abc.ABC):
    """Base class of learned inner optimisers (duck typing works as well).

    Attributes:
      num_steps: for per-step rules, the length of the schedule (inner loops may not be
        longer); None for rules that apply at every step.
    """

    num_steps: Optional[int] = None

    @abc.abstractmethod
    def init(self, rng: jax.Array, params: Any) -> Theta:
        """Initial meta-parameters for the given params pytree."""

    @abc.abstractmethod
    def optimizer(self, theta: Theta) -> optax.GradientTransformation:
        """The optax optimiser this theta defines."""


def is_learned_optimizer(obj: Any) -> bool:
    """True for objects with `init` and `optimizer` (and no optax `update` of their own)."""
    return callable(getattr(obj, "optimizer", None)) and callable(getattr(obj, "init", None)) and not hasattr(obj, "update")


def check_theta_matches(theta_tree: Any, params: Any, name: str) -> None:
    """Raises if a per-parameter theta does not have the params' tree structure.

    Raises:
      ValueError: naming the first tree path that differs.
    """
    theta_paths = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(theta_tree)}
    param_paths = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(params)}
    missing = sorted(set(param_paths) - set(theta_paths))
    extra = sorted(set(theta_paths) - set(param_paths))
    if missing or extra:
        detail = f"params{missing[0]} has no entry in theta" if missing else f"theta{extra[0]} matches no parameter"
        raise ValueError(
            f"{name}: theta does not match the parameter tree ({detail}). Build theta with "
            f"{name}.init(rng, params) for the params being adapted."
        )


class LearnedOptimizerHParams(NamedTuple):
    """Hparams of a module run with a learned inner optimiser."""

    module: Any  # the module's own hparams
    optimizer: Theta  # the learned optimiser's meta-parameters


class _ModuleHParamsEnergy(EnergyFunction):
    """Calls an energy with the module's own hparams (the optimiser's theta stripped)."""

    def __init__(self, energy: EnergyFunction) -> None:
        super().__init__(energy.reduction)
        self.energy = energy

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        return self.energy(rng, pred, target, params, hparams.module, state, hstate, info)


class WithLearnedOptimizer(MetaModule):
    """A module whose hparams also carry a learned optimiser's theta.

    Learners build this themselves when `optim_fn_inner` is a learned optimiser; the
    wrapped module sees only its own hparams.
    """

    def __init__(self, module: MetaModule, learned_optimizer: Any) -> None:
        super().__init__(_ModuleHParamsEnergy(module.loss_fn_inner), _ModuleHParamsEnergy(module.loss_fn_outer))
        self.module = module
        self.learned_optimizer = learned_optimizer

    def __getattr__(self, name: str) -> Any:
        # Attributes of the wrapped module (base_learner, output_dim, ...) stay reachable.
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        return self.module(rng, state, hstate, params, hparams.module, input, is_training)

    def reset_hparams(self, rng, sample_input):
        # The module draws from `rng` itself: the same seed gives the same init with a
        # learned or a plain optimiser.
        rng_params, rng_theta = jax.random.split(jax.random.fold_in(rng, 1))
        hparams, hstate = self.module.reset_hparams(rng, sample_input)
        params, _ = self.module.reset_params(rng_params, hparams, hstate, sample_input)
        theta = self.learned_optimizer.init(rng_theta, params)
        self.learned_optimizer.optimizer(theta).init(params)  # fails early on a mismatched theta
        return LearnedOptimizerHParams(hparams, theta), hstate

    def reset_params(self, rng, hparams, hstate, sample_input):
        return self.module.reset_params(rng, hparams.module, hstate, sample_input)
