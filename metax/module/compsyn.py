"""ComplexSynapse: every weight adapted, each pulled toward a meta-learned rest value.

The complex-synapse model of contrastive meta-learning: Zucchet, Schug, von Oswald, Zhao,
Sacramento. "A contrastive rule for meta-learning", NeurIPS 2022,
https://arxiv.org/abs/2104.01677.

Each synapse has a fast weight `w` (adapted per task, starting at `omega`) and two slow,
meta-learned quantities: its rest value `omega` and the strength of its pull toward it,
`exp(log_lambda)`. The inner loss adds

    (1/2) * sum_i exp(log_lambda_i) * (w_i - omega_i)^2          (l2_fixed=False)
    (l2_reg/2) * ||w - omega||^2                                 (l2_fixed=True, iMAML)

The network's haiku state (batch-norm statistics) is meta-state, handled as in
`AlmostNoInnerLoop` and `LearnedInit`.
"""

import functools
import math
from typing import NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from metax import energy
from metax.module.base import MetaModule, as_transformed_with_state, check_energies, init_training


class ComplexSynapseMetaParams(NamedTuple):
    """Meta-parameters (hparams) of `ComplexSynapse`, trained by the outer loop.

    Example:
      >>> metax.module.ComplexSynapseMetaParams._fields
      ('omega', 'log_lambda')
    """

    omega: hk.Params  # rest value and starting point of every weight
    log_lambda: Optional[hk.Params]  # per-weight log pull strength, as omega; None if l2_fixed


class ComplexSynapseMetaState(NamedTuple):
    """Meta-state (hstate) of `ComplexSynapse`, shared by all tasks and averaged over the meta-batch.

    Example:
      >>> metax.module.ComplexSynapseMetaState._fields
      ('base_learner',)
    """

    base_learner: hk.State  # the network's haiku state (batch-norm statistics), averaged over tasks


class ComplexSynapseParams(NamedTuple):
    """One task's parameters (params) of `ComplexSynapse`, adapted by the inner loop.

    Example:
      >>> metax.module.ComplexSynapseParams._fields
      ('base_learner',)
    """

    base_learner: hk.Params  # the task's adapted weights


class ComplexSynapseState(NamedTuple):
    """One task's model state of `ComplexSynapse`, carried through the inner loop.

    Example:
      >>> metax.module.ComplexSynapseState._fields
      ('base_learner',)
    """

    base_learner: hk.State  # the task's copy of the network state, updated by training-mode passes


class ComplexSynapse(MetaModule):
    """Meta-learns rest values (and pull strengths); the inner loop adapts all weights.

    Args:
      loss_fn_inner, loss_fn_outer: see `MetaModule`.
      base_learner: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)`.
      l2_reg: the pull strength: the initial value of every `exp(log_lambda)` (> 0), or with
        `l2_fixed` the one fixed strength (>= 0).
      l2_fixed: use one fixed strength `l2_reg` (iMAML) instead of meta-learned per-weight
        strengths.

    Example:
      >>> meta_model = ComplexSynapse(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     base_learner=metax.models.mlp_fn([40, 40], output_dim=1), l2_reg=1.0, l2_fixed=False)
      >>> learner = metax.learner.MAML(meta_model, None, 10, optax.sgd(0.05), optax.adam(1e-3))
    """

    def __init__(
        self,
        loss_fn_inner: energy.EnergyFunction,
        loss_fn_outer: energy.EnergyFunction,
        base_learner: hk.TransformedWithState,
        l2_reg: float,
        l2_fixed: bool = False,
    ) -> None:
        loss_fn_inner, loss_fn_outer = check_energies(loss_fn_inner, loss_fn_outer)
        self.l2_fixed = bool(l2_fixed)
        if self.l2_fixed:
            regularizer = energy.iMAML(l2_reg, key_map=self.init_keys)
        else:
            if not l2_reg > 0:
                raise ValueError(
                    f"l2_reg={l2_reg} sets the initial per-weight strength exp(log_lambda) and must "
                    "be > 0; for no pull use l2_fixed=True with l2_reg=0."
                )
            regularizer = energy.LearnedL2({"base_learner": {"omega": "omega", "log_lambda": "log_lambda"}})
        super().__init__(loss_fn_inner + regularizer, loss_fn_outer)
        self.base_learner = as_transformed_with_state(base_learner, "base_learner")
        self.l2_reg = l2_reg

    @property
    def init_keys(self) -> dict[str, str]:
        return {"base_learner": "omega"}

    @property
    def anchors_init(self) -> bool:
        return not self.l2_fixed or self.l2_reg > 0

    @property
    def hparams_fields(self) -> tuple[str, ...]:
        return ("omega",) if self.l2_fixed else ("omega", "log_lambda")

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        output, new_state = self.base_learner.apply(
            params.base_learner, state.base_learner, rng, input, is_training
        )
        return output, (ComplexSynapseState(new_state), ComplexSynapseMetaState(new_state))

    def reset_hparams(self, rng, sample_input):
        omega, net_state = init_training(self.base_learner, rng, sample_input)
        log_lambda = None
        if not self.l2_fixed:
            fill = functools.partial(jnp.full_like, fill_value=math.log(self.l2_reg))
            log_lambda = jax.tree_util.tree_map(fill, omega)
        return ComplexSynapseMetaParams(omega, log_lambda), ComplexSynapseMetaState(net_state)

    def reset_params(self, rng, hparams, hstate, sample_input):
        return ComplexSynapseParams(hparams.omega), ComplexSynapseState(hstate.base_learner)
