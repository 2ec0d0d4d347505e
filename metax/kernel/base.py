"""Learned inner optimisers: meta-parameters in, optax optimiser out.

A learned optimiser is any object with

    init(rng, params) -> theta                      # its meta-parameters for these params
    optimizer(theta) -> optax.GradientTransformation

(learned_optimization's `opt_fn(theta)` idea). This package knows nothing of modules
or learners: passed as a learner's `optim_fn_inner`, the learner carries theta beside
the module's hparams (`metax.learner.WithLearnedOptimizer`) and its shared inner loop
simply runs the optimiser built from the current theta, never asking whether its rule is
learned. Learners whose meta-gradient flows through the inner updates (MAML, first order
included, and Evosax) can learn theta; the others refuse at construction.
"""

import abc
from typing import Any, Optional

import jax
import optax

Theta = Any


class LearnedOptimizer(abc.ABC):
    """Base class of learned inner optimisers (duck typing works as well).

    Attributes:
      num_steps: for per-step rules, the length of the schedule (inner loops may not be
        longer); None for rules that apply at every step.

    Example:
      >>> class HalfSGD(metax.kernel.LearnedOptimizer):  # SGD with a learned rate, halved
      ...     def init(self, rng, params):
      ...         return jnp.asarray(0.1)
      ...     def optimizer(self, theta):
      ...         return optax.sgd(theta / 2)
      >>> metax.kernel.is_learned_optimizer(HalfSGD())
      True
    """

    num_steps: Optional[int] = None

    @abc.abstractmethod
    def init(self, rng: jax.Array, params: Any) -> Theta:
        """Initial meta-parameters for the given params pytree."""

    @abc.abstractmethod
    def optimizer(self, theta: Theta) -> optax.GradientTransformation:
        """The optax optimiser this theta defines."""


def is_learned_optimizer(obj: Any) -> bool:
    """True for objects with `init` and `optimizer` (and no optax `update` of their own).

    Example:
      >>> metax.kernel.is_learned_optimizer(metax.kernel.MetaSGD(0.1)), metax.kernel.is_learned_optimizer(optax.sgd(0.1))
      (True, False)
    """
    return callable(getattr(obj, "optimizer", None)) and callable(getattr(obj, "init", None)) and not hasattr(obj, "update")


def check_theta_matches(theta_tree: Any, params: Any, name: str) -> None:
    """Raises if a per-parameter theta does not have the params' tree structure.

    Raises:
      ValueError: naming the first tree path that differs.

    Example:
      >>> metax.kernel.check_theta_matches({"w": jnp.zeros(2)}, {"b": jnp.zeros(2)}, "MetaSGD")
      Traceback (most recent call last):
        ...
      ValueError: ...
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
