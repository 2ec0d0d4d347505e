"""LearnedInit: a meta-learned initialisation of all network weights.

Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML 2017, https://arxiv.org/abs/1703.03400. With `reg_strength` the inner loss adds the
iMAML proximal term (Rajeswaran et al., NeurIPS 2019) that pulls the adapted weights back
toward the learned initialisation.

The network's haiku state (batch-norm statistics) is meta-state, handled as in
`AlmostNoInnerLoop`: every task starts from `hstate`, and the learner averages the tasks'
copies after the query pass, so running statistics run across tasks (see
`metax.models.norm` for the batch-norm policies).
"""

import functools
from typing import NamedTuple, Optional

import haiku as hk
import jax

from metax import energy
from metax.module.base import (
    MetaModule,
    as_transformed_with_state,
    check_energies,
    check_output_dim,
    check_positive_int,
    init_training,
)


class LearnedInitMetaParams(NamedTuple):
    """Meta-parameters (hparams) of `LearnedInit`, trained by the outer loop.

    Example:
      >>> metax.module.LearnedInitMetaParams._fields
      ('base_learner_init',)
    """

    base_learner_init: hk.Params  # the initial weights every task starts from


class LearnedInitMetaState(NamedTuple):
    """Meta-state (hstate) of `LearnedInit`, shared by all tasks and averaged over the meta-batch.

    Example:
      >>> metax.module.LearnedInitMetaState._fields
      ('base_learner',)
    """

    base_learner: hk.State  # the network's haiku state (batch-norm statistics), averaged over tasks


class LearnedInitParams(NamedTuple):
    """One task's parameters (params) of `LearnedInit`, adapted by the inner loop.

    Example:
      >>> metax.module.LearnedInitParams._fields
      ('base_learner',)
    """

    base_learner: hk.Params  # the task's adapted weights


class LearnedInitState(NamedTuple):
    """One task's model state of `LearnedInit`, carried through the inner loop.

    Example:
      >>> metax.module.LearnedInitState._fields
      ('base_learner',)
    """

    base_learner: hk.State  # the task's copy of the network state, updated by training-mode passes


class LearnedInit(MetaModule):
    """Meta-learns the starting weights of `base_learner`; the inner loop adapts all of them.

    Args:
      loss_fn_inner, loss_fn_outer: see `MetaModule`.
      base_learner: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)`.
      reg_strength: if given, adds `(reg_strength / 2) * ||params - init||^2` to the inner
        loss (iMAML).
      output_dim: optional; if given, `reset_hparams` checks the network's output width.

    Example:
      >>> meta_model = LearnedInit(
      ...     loss_fn_inner=metax.energy.SquaredError(),
      ...     loss_fn_outer=metax.energy.SquaredError(),
      ...     base_learner=hk.transform_with_state(lambda x, is_training: hk.nets.MLP([40, 40, 1])(x)),
      ...     output_dim=1,
      ... )
    """

    def __init__(
        self,
        loss_fn_inner: energy.EnergyFunction,
        loss_fn_outer: energy.EnergyFunction,
        base_learner: hk.TransformedWithState,
        reg_strength: Optional[float] = None,
        output_dim: Optional[int] = None,
    ) -> None:
        loss_fn_inner, loss_fn_outer = check_energies(loss_fn_inner, loss_fn_outer)
        if reg_strength is not None:
            loss_fn_inner = loss_fn_inner + energy.iMAML(reg_strength, key_map=self.init_keys)
        super().__init__(loss_fn_inner, loss_fn_outer)
        self.base_learner = as_transformed_with_state(base_learner, "base_learner")
        self.reg_strength = reg_strength
        if output_dim is not None:
            check_positive_int(output_dim, "output_dim", "set it to the target width, or None to skip the check.")
        self.output_dim = output_dim

    @property
    def init_keys(self) -> dict[str, str]:
        return {"base_learner": "base_learner_init"}

    @property
    def anchors_init(self) -> bool:
        return self.reg_strength is not None

    @property
    def hparams_fields(self) -> tuple[str, ...]:
        return LearnedInitMetaParams._fields

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        output, new_state = self.base_learner.apply(
            params.base_learner, state.base_learner, rng, input, is_training
        )
        return output, (LearnedInitState(new_state), LearnedInitMetaState(new_state))

    def reset_hparams(self, rng, sample_input):
        weights, net_state = init_training(self.base_learner, rng, sample_input)
        apply = functools.partial(self.base_learner.apply, is_training=True)
        output = jax.eval_shape(apply, weights, net_state, rng, sample_input)[0]
        check_output_dim(output, self.output_dim, "base_learner")
        return LearnedInitMetaParams(weights), LearnedInitMetaState(net_state)

    def reset_params(self, rng, hparams, hstate, sample_input):
        return LearnedInitParams(hparams.base_learner_init), LearnedInitState(hstate.base_learner)
