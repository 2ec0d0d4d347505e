"""CAVIA: fast context adaptation; a per-task context vector is the only adapted quantity.

Zintgraf, Shiarlis, Kurin, Hofmann, Whiteson. "Fast Context Adaptation via Meta-Learning",
ICML 2019, https://arxiv.org/abs/1810.03642.

All network weights are meta-learned; each task adapts an `embedding_dim`-vector of
context parameters, reset to zero (or to a meta-learned vector) at the start of every
task. How the context reaches the network:

- by default it is appended to every input row: inputs `(samples, *input_shape)` are
  flattened to `(samples, d)` and the network sees `(samples, d + embedding_dim)`, so a
  plain `f(x, is_training)` such as an MLP works unchanged (the paper's regression set-up);
- with `context_as_argument=True` the network is called as `f(x, is_training, context=c)`
  with `c` of shape `(embedding_dim,)`, for models that inject it elsewhere (e.g. FiLM
  layers, or after a batch-normalised first layer, which would cancel a constant input).

The network's haiku state is meta-state, handled as in `AlmostNoInnerLoop`.
"""

import functools
from typing import NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from metax import energy
from metax.module.base import MetaModule, as_transformed_with_state, check_positive_int, ignores, is_traced


class CAVIAMetaParams(NamedTuple):
    """Meta-parameters (hparams) of `CAVIA`, trained by the outer loop.

    Example:
      >>> metax.module.CAVIAMetaParams._fields
      ('base', 'context_init')
    """

    base: hk.Params  # all weights of base_model (meta-learned, never adapted)
    context_init: Optional[jax.Array]  # (embedding_dim,) start of every task's context if learn_init, else None (zeros)


class CAVIAMetaState(NamedTuple):
    """Meta-state (hstate) of `CAVIA`, shared by all tasks and averaged over the meta-batch.

    Example:
      >>> metax.module.CAVIAMetaState._fields
      ('base',)
    """

    base: hk.State  # base_model's haiku state (batch-norm statistics), averaged over tasks


class CAVIAParams(NamedTuple):
    """One task's parameters (params) of `CAVIA`, adapted by the inner loop.

    Example:
      >>> metax.module.CAVIAParams._fields
      ('context',)
    """

    context: jax.Array  # (embedding_dim,) the task's context parameters


class CAVIAState(NamedTuple):
    """One task's model state of `CAVIA`, carried through the inner loop.

    Example:
      >>> metax.module.CAVIAState._fields
      ('base',)
    """

    base: hk.State  # the task's copy of base_model's state, updated by training-mode passes


def _widen(input: jax.Array, context: jax.Array) -> jax.Array:
    """`(samples, *input_shape)`, `(embedding_dim,)` -> `(samples, d + embedding_dim)`."""
    dtype = jnp.result_type(input.dtype, context.dtype)  # integer inputs become floats
    rows = input.reshape(input.shape[0], -1).astype(dtype)
    return jnp.concatenate([rows, jnp.broadcast_to(context.astype(dtype), (rows.shape[0], context.shape[-1]))], -1)


class CAVIA(MetaModule):
    """Meta-learns a network that takes a context; the inner loop adapts only the context.

    Args:
      loss_fn_inner, loss_fn_outer: see `MetaModule`.
      base_model: `hk.transform_with_state` (or `hk.transform`) of `f(x, is_training)`, which
        receives inputs `(samples, d + embedding_dim)` (see the module docstring), or of
        `f(x, is_training, context)` with `context_as_argument=True`.
      embedding_dim: number of context parameters, >= 1 (checked at reset).
      learn_init: meta-learn the context every task starts from (`hparams.context_init`,
        initially zero) instead of resetting it to zero.
      context_as_argument: pass the context as the keyword `context` instead of appending it
        to the inputs.

    Example:
      >>> meta_model = CAVIA(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     base_model=metax.models.mlp_fn([40, 40], output_dim=1), embedding_dim=4)
      >>> learner = metax.learner.MAML(meta_model, None, 2, optax.sgd(1.0), optax.adam(1e-3))
    """

    def __init__(
        self,
        loss_fn_inner: energy.EnergyFunction,
        loss_fn_outer: energy.EnergyFunction,
        base_model: hk.TransformedWithState,
        embedding_dim: int,
        *,
        learn_init: bool = False,
        context_as_argument: bool = False,
    ) -> None:
        super().__init__(loss_fn_inner, loss_fn_outer)
        self.base_model = as_transformed_with_state(base_model, "base_model")
        self.embedding_dim = embedding_dim
        self.learn_init = bool(learn_init)
        self.context_as_argument = bool(context_as_argument)

    @property
    def init_keys(self) -> dict[str, str]:
        return {"context": "context_init"} if self.learn_init else {}

    @property
    def hparams_fields(self) -> tuple[str, ...]:
        return ("base", "context_init") if self.learn_init else ("base",)

    def _apply(self, weights, base_state, rng, input, context, is_training):
        if self.context_as_argument:
            return self.base_model.apply(weights, base_state, rng, input, is_training, context=context)
        return self.base_model.apply(weights, base_state, rng, _widen(input, context), is_training)

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        output, base_state = self._apply(hparams.base, state.base, rng, input, params.context, is_training)
        return output, (CAVIAState(base_state), CAVIAMetaState(base_state))

    def reset_hparams(self, rng, sample_input):
        check_positive_int(
            self.embedding_dim, "embedding_dim", "CAVIA needs at least one context parameter (e.g. 4)."
        )
        context = self._zero_context(sample_input)
        weights, base_state = self._init_base(rng, sample_input, context)
        output_of = functools.partial(self._apply, weights, base_state, rng, sample_input, is_training=True)
        if not is_traced(weights):
            output, tangent = jax.jvp(lambda c: output_of(c)[0], (context,), (jnp.ones_like(context),))
            if ignores(tangent, output):
                raise ValueError(
                    f"base_model's output does not depend on the {self.embedding_dim} context "
                    "parameters (in training mode), so the inner loop cannot adapt them. A "
                    "batch-normalised first layer removes a context appended to every row; use "
                    "a first layer without batch norm, or context_as_argument=True and add the "
                    "context after normalisation."
                )
        context_init = context if self.learn_init else None
        return CAVIAMetaParams(weights, context_init), CAVIAMetaState(base_state)

    def reset_params(self, rng, hparams, hstate, sample_input):
        context = hparams.context_init if self.learn_init else self._zero_context(sample_input)
        return CAVIAParams(context), CAVIAState(hstate.base)

    def _zero_context(self, sample_input: jax.Array) -> jax.Array:
        floating = jnp.issubdtype(sample_input.dtype, jnp.floating)
        return jnp.zeros((self.embedding_dim,), sample_input.dtype if floating else jnp.float32)

    def _init_base(self, rng, sample_input, context):
        if self.context_as_argument:
            init = lambda: self.base_model.init(rng, sample_input, is_training=True, context=context)
            how = (
                "CAVIA(context_as_argument=True) calls base_model as f(x, is_training, context=c) "
                f"with c of shape ({self.embedding_dim},)"
            )
            fix = "give f a `context` argument, or drop context_as_argument to append it to the inputs."
        else:
            widened = _widen(sample_input, context)
            init = lambda: self.base_model.init(rng, widened, is_training=True)
            how = (
                f"CAVIA appends embedding_dim={self.embedding_dim} context parameters to every "
                f"input row, so base_model receives inputs of shape {tuple(widened.shape)} instead "
                f"of {tuple(sample_input.shape)}"
            )
            fix = (
                "use a network that infers its input width (e.g. an MLP), or pass "
                "context_as_argument=True and take the context as f(x, is_training, context)."
            )
        try:
            return init()
        except (TypeError, ValueError) as error:
            kind = TypeError if isinstance(error, TypeError) else ValueError
            raise kind(f"{how}, and it failed: {error}. To fix: {fix}") from error
