"""AlmostNoInnerLoop (ANIL): a meta-learned feature body, a linear head adapted per task.

Raghu, Raghu, Bengio, Vinyals. "Rapid Learning or Feature Reuse? Towards Understanding
the Effectiveness of MAML", ICLR 2020, https://arxiv.org/abs/1909.09157.

The inner loop touches only the last, linear layer; the body's weights change only in the
outer loop. The body's haiku state (e.g. batch-norm statistics) is meta-state: every task
starts from `hstate.body`, carries its own copy through the inner loop, and the query pass
hands that copy back as the task's hstate, which the learner averages over the meta-batch.
"""

import functools
from typing import NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from metax import energy
from metax.module.base import (
    MetaModule,
    as_transformed_with_state,
    check_energies,
    check_features,
    check_positive_int,
    init_training,
    linear_head,
)


class AlmostNoInnerLoopMetaParams(NamedTuple):
    """Meta-parameters (hparams) of `AlmostNoInnerLoop`, trained by the outer loop.

    Example:
      >>> metax.module.AlmostNoInnerLoopMetaParams._fields
      ('body', 'head_init')
    """

    body: hk.Params  # the feature extractor's weights (meta-learned, never adapted)
    head_init: hk.Params  # the linear head every task starts from: w (features, output_dim), b (output_dim,)


class AlmostNoInnerLoopMetaState(NamedTuple):
    """Meta-state (hstate) of `AlmostNoInnerLoop`, shared by all tasks and averaged over the meta-batch.

    Example:
      >>> metax.module.AlmostNoInnerLoopMetaState._fields
      ('body',)
    """

    body: hk.State  # the body's haiku state (batch-norm statistics), averaged over tasks


class AlmostNoInnerLoopParams(NamedTuple):
    """One task's parameters (params) of `AlmostNoInnerLoop`, adapted by the inner loop.

    Example:
      >>> metax.module.AlmostNoInnerLoopParams._fields
      ('head',)
    """

    head: hk.Params  # the task's adapted linear head


class AlmostNoInnerLoopState(NamedTuple):
    """One task's model state of `AlmostNoInnerLoop`, carried through the inner loop.

    Example:
      >>> metax.module.AlmostNoInnerLoopState._fields
      ('body',)
    """

    body: hk.State  # the task's copy of the body state, updated by training-mode passes


class AlmostNoInnerLoop(MetaModule):
    """Meta-learns a feature body and a head initialisation; the inner loop adapts the head only.

    Prediction for inputs `x` of shape `(samples, *input_shape)`:
    `head(body(x))` with `body(x)` of shape `(samples, features)` and the head a linear map
    to `(samples, output_dim)`.

    Args:
      loss_fn_inner, loss_fn_outer: see `MetaModule`.
      body: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)` returning
        features `(samples, features)`; its weights are hparams.
      output_dim: width of the linear head.
      reg_strength: if given, adds `(reg_strength / 2) * ||head - head_init||^2` to the inner
        loss (iMAML), so implicit learners can meta-learn `head_init` too.

    Example:
      >>> body = hk.transform_with_state(lambda x, is_training: metax.models.MultilayerPerceptron(
      ...     [40, 40], activate_final=True)(x, is_training))
      >>> meta_model = AlmostNoInnerLoop(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     body=body, output_dim=1)
      >>> learner = metax.learner.MAML(meta_model, None, 5, optax.sgd(0.01), optax.adam(1e-3))
    """

    def __init__(
        self,
        loss_fn_inner: energy.EnergyFunction,
        loss_fn_outer: energy.EnergyFunction,
        body: hk.TransformedWithState,
        output_dim: int,
        reg_strength: Optional[float] = None,
    ) -> None:
        loss_fn_inner, loss_fn_outer = check_energies(loss_fn_inner, loss_fn_outer)
        if reg_strength is not None:
            loss_fn_inner = loss_fn_inner + energy.iMAML(reg_strength, key_map=self.init_keys)
        super().__init__(loss_fn_inner, loss_fn_outer)
        self.body = as_transformed_with_state(body, "body")
        self.output_dim = check_positive_int(output_dim, "output_dim", "set it to the target width.")
        self.reg_strength = reg_strength
        self.head = linear_head(output_dim)

    @property
    def init_keys(self) -> dict[str, str]:
        return {"head": "head_init"}

    @property
    def anchors_init(self) -> bool:
        return self.reg_strength is not None

    @property
    def hparams_fields(self) -> tuple[str, ...]:
        return AlmostNoInnerLoopMetaParams._fields

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        features, body_state = self.body.apply(hparams.body, state.body, rng, input, is_training)
        output = self.head.apply(params.head, features)
        return output, (AlmostNoInnerLoopState(body_state), AlmostNoInnerLoopMetaState(body_state))

    def reset_hparams(self, rng, sample_input):
        rng_body, rng_head = jax.random.split(rng)
        weights, body_state = init_training(self.body, rng_body, sample_input)
        apply = functools.partial(self.body.apply, is_training=True)
        features = jax.eval_shape(apply, weights, body_state, rng_body, sample_input)[0]
        check_features(features, sample_input, "body")
        head_init = self.head.init(rng_head, jnp.zeros(features.shape, features.dtype))
        return AlmostNoInnerLoopMetaParams(weights, head_init), AlmostNoInnerLoopMetaState(body_state)

    def reset_params(self, rng, hparams, hstate, sample_input):
        return AlmostNoInnerLoopParams(hparams.head_init), AlmostNoInnerLoopState(hstate.body)


ANIL = AlmostNoInnerLoop
