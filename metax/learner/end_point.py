"""Which hparams can a learner that differentiates at the inner loop's end point learn?

Implicit differentiation and equilibrium propagation see no dependence of the end point
on an hparam that only sets where the inner loop starts; `check_implicit_compatible`
refuses a module none of whose hparams could learn and warns about those that stay fixed.
"""

import warnings
from typing import TYPE_CHECKING, Any, Optional

import jax

if TYPE_CHECKING:  # the learner base imports this module
    from metax.learner.base import MetaLearner


def _hparams_fields(hparams: Any) -> Optional[tuple[str, ...]]:
    """The fields of an hparams NamedTuple or dict that hold at least one leaf."""
    if isinstance(hparams, tuple) and hasattr(hparams, "_fields"):
        items = hparams._asdict().items()
    elif isinstance(hparams, dict):
        items = hparams.items()
    else:
        return None
    return tuple(key for key, value in items if jax.tree_util.tree_leaves(value))


def check_implicit_compatible(learner: "MetaLearner", hparams: Any = None) -> bool:
    """Which hparams can a learner that differentiates at the inner loop's end point learn?

    Such learners (implicit differentiation, equilibrium propagation) see no dependence of
    the end point on an hparam that only sets where the inner loop starts (an entry of
    the module's `init_keys`), unless the inner loss itself pulls toward it
    (`anchors_init`, e.g. iMAML's `reg_strength`): its meta-gradient is exactly zero.
    `MetaLearner.__init__` calls this for learners with `end_point_gradient`, with the
    fields the module declares (`hparams_fields`), and `reset` again with the real
    hparams when the module declares none.

    Returns:
      True if the check could be made (fields known), False if it must wait for `reset`.

    Raises:
      ValueError: if no hparam could receive a meta-gradient, saying what to use instead.

    Warns:
      UserWarning: naming the hparams that stay at their initial values when others learn.
    """
    module = learner.meta_model
    if not module.init_keys or module.anchors_init:
        return True
    fields = module.hparams_fields if hparams is None else _hparams_fields(hparams)
    if fields is None:
        return False
    init_only = set(module.init_keys.values())
    fixed = [field for field in fields if field in init_only]
    learnable = [field for field in fields if field not in init_only]
    name, module_name = type(learner).__name__, type(module).__name__
    if not learnable:
        listed = ", ".join(repr(f) for f in fixed or sorted(init_only))
        raise ValueError(
            f"{name} differentiates at the inner loop's end point, where {module_name}'s hparams "
            f"{listed} have no effect: they only set the optimiser's starting point, so nothing "
            "would learn. Add a pull toward them in the inner loss (e.g. "
            "LearnedInit(..., reg_strength=1.0), iMAML) or use ModelAgnosticMetaLearning, "
            "Reptile or Evosax."
        )
    if fixed:
        warnings.warn(
            f"{name} with {module_name}: hparams {', '.join(repr(f) for f in fixed)} only set the inner "
            f"loop's starting point, so they get no meta-gradient and stay at their initial values; "
            f"{', '.join(repr(f) for f in learnable)} are meta-learned. To learn them too, pass "
            "reg_strength to the module (iMAML) or use ModelAgnosticMetaLearning.",
            UserWarning,
            stacklevel=4,
        )
    return True
