"""GainMod: per-unit gains and shifts of a meta-learned body, adapted per task.

The gain-modulation model of contrastive meta-learning: Zucchet, Schug, von Oswald, Zhao,
Sacramento. "A contrastive rule for meta-learning", NeurIPS 2022,
https://arxiv.org/abs/2104.01677.

Every hidden layer `l` of the body computes `act(gain_l * (W_l h + b_l) + shift_l)`; the
weights `W_l, b_l` are meta-learned, the gains and shifts (and, by choice, the linear
readout) are adapted per task from meta-learned initial values. The body's haiku state is
meta-state, handled as in `AlmostNoInnerLoop`.
"""

from typing import NamedTuple, Optional, Sequence

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
    ignores,
    is_traced,
    linear_head,
)


class GainModMetaParams(NamedTuple):
    """Meta-parameters (hparams) of `GainMod`, trained by the outer loop.

    Example:
      >>> metax.module.GainModMetaParams._fields
      ('body', 'gain_init', 'shift_init', 'head_init')
    """

    body: hk.Params  # the body's weights (meta-learned, never adapted)
    gain_init: tuple[jax.Array, ...]  # one (hidden_dims[l],) gain per hidden layer, initially ones
    shift_init: tuple[jax.Array, ...]  # one (hidden_dims[l],) shift per hidden layer, initially zeros
    head_init: hk.Params  # linear readout: w (hidden_dims[-1], output_dim), b (output_dim,)


class GainModMetaState(NamedTuple):
    """Meta-state (hstate) of `GainMod`, shared by all tasks and averaged over the meta-batch.

    Example:
      >>> metax.module.GainModMetaState._fields
      ('body',)
    """

    body: hk.State  # the body's haiku state (batch-norm statistics), averaged over tasks


class GainModParams(NamedTuple):
    """One task's parameters (params) of `GainMod`, adapted by the inner loop.

    Example:
      >>> metax.module.GainModParams._fields
      ('gain', 'shift', 'head')
    """

    gain: tuple[jax.Array, ...]  # the task's gains, shapes as gain_init
    shift: tuple[jax.Array, ...]  # the task's shifts, shapes as shift_init
    head: Optional[hk.Params]  # the task's readout if adapt_head, else None (head_init is used)


class GainModState(NamedTuple):
    """One task's model state of `GainMod`, carried through the inner loop.

    Example:
      >>> metax.module.GainModState._fields
      ('body',)
    """

    body: hk.State  # the task's copy of the body state, updated by training-mode passes


def _only_layer(vectors: tuple[jax.Array, ...], layer: int) -> tuple[jax.Array, ...]:
    """A tangent that is one on the vector of `layer` and zero on the others."""
    return tuple(jnp.full_like(vector, float(i == layer)) for i, vector in enumerate(vectors))


class GainMod(MetaModule):
    """Meta-learns a body and initial gains/shifts; the inner loop adapts gains and shifts.

    Args:
      loss_fn_inner, loss_fn_outer: see `MetaModule`.
      body: `hk.transform_with_state` (or `hk.transform`) of
        `f(x, is_training, gain=None, shift=None)` returning the last hidden layer's
        features `(samples, hidden_dims[-1])`; `gain` and `shift` are sequences with one
        `(hidden_dims[l],)` array per hidden layer, e.g. `metax.models.MultilayerPerceptron`
        with `activate_final=True`.
      hidden_dims: the widths of the body's hidden layers, one gain/shift vector each.
      output_dim: width of the linear readout.
      adapt_head: also adapt the readout per task (from `head_init`); otherwise the readout
        is meta-learned like the body.
      reg_strength: if given, adds `(reg_strength / 2) * ||adapted - init||^2` over gains,
        shifts (and the head if adapted) to the inner loss (iMAML).

    Example:
      >>> def body_fn(x, is_training, gain=None, shift=None):
      ...     mlp = metax.models.MultilayerPerceptron([40, 40], activate_final=True)
      ...     return mlp(x, is_training, gain=gain, shift=shift)
      >>> meta_model = GainMod(metax.energy.SquaredError(), metax.energy.SquaredError(),
      ...     body=hk.transform_with_state(body_fn), hidden_dims=[40, 40], output_dim=1,
      ...     adapt_head=True, reg_strength=None)
    """

    def __init__(
        self,
        loss_fn_inner: energy.EnergyFunction,
        loss_fn_outer: energy.EnergyFunction,
        body: hk.TransformedWithState,
        hidden_dims: Sequence[int],
        output_dim: int,
        adapt_head: bool = False,
        reg_strength: Optional[float] = None,
    ) -> None:
        loss_fn_inner, loss_fn_outer = check_energies(loss_fn_inner, loss_fn_outer)
        self.adapt_head = bool(adapt_head)
        if reg_strength is not None:
            loss_fn_inner = loss_fn_inner + energy.iMAML(reg_strength, key_map=self.init_keys)
        super().__init__(loss_fn_inner, loss_fn_outer)
        self.body = as_transformed_with_state(body, "body")
        self.hidden_dims = hidden_dims
        self.output_dim = check_positive_int(output_dim, "output_dim", "set it to the target width.")
        self.reg_strength = reg_strength
        self.head = linear_head(output_dim)

    @property
    def init_keys(self) -> dict[str, str]:
        keys = {"gain": "gain_init", "shift": "shift_init"}
        if self.adapt_head:
            keys["head"] = "head_init"
        return keys

    @property
    def anchors_init(self) -> bool:
        return self.reg_strength is not None

    @property
    def hparams_fields(self) -> tuple[str, ...]:
        return GainModMetaParams._fields

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        features, body_state = self.body.apply(
            hparams.body, state.body, rng, input, is_training, gain=params.gain, shift=params.shift
        )
        output = self.head.apply(params.head if self.adapt_head else hparams.head_init, features)
        return output, (GainModState(body_state), GainModMetaState(body_state))

    def reset_hparams(self, rng, sample_input):
        hidden_dims = self._checked_hidden_dims()
        dtype = sample_input.dtype if jnp.issubdtype(sample_input.dtype, jnp.floating) else jnp.float32
        gain = tuple(jnp.ones((width,), dtype) for width in hidden_dims)
        shift = tuple(jnp.zeros((width,), dtype) for width in hidden_dims)
        rng_body, rng_head = jax.random.split(rng)
        weights, body_state = self._init_body(rng_body, sample_input, gain, shift)

        def features_of(gain, shift):
            return self.body.apply(weights, body_state, rng_body, sample_input, True, gain=gain, shift=shift)[0]

        features = jax.eval_shape(features_of, gain, shift)
        check_features(features, sample_input, "body")
        if features.shape[-1] != hidden_dims[-1]:
            raise ValueError(
                f"hidden_dims={list(hidden_dims)} ends in {hidden_dims[-1]} but the body returns "
                f"features of shape {tuple(features.shape)}; list the body's hidden widths in "
                "hidden_dims, last one included, and leave out its readout layer."
            )
        if not is_traced(weights):
            self._check_every_layer_modulated(features_of, gain, shift)
        head_init = self.head.init(rng_head, jnp.zeros(features.shape, features.dtype))
        return GainModMetaParams(weights, gain, shift, head_init), GainModMetaState(body_state)

    def reset_params(self, rng, hparams, hstate, sample_input):
        head = hparams.head_init if self.adapt_head else None
        return GainModParams(hparams.gain_init, hparams.shift_init, head), GainModState(hstate.body)

    # -- checks at reset -------------------------------------------------------------------

    def _checked_hidden_dims(self) -> tuple[int, ...]:
        dims = self.hidden_dims
        if isinstance(dims, int) or not dims:
            raise ValueError(f"hidden_dims must be a non-empty list of layer widths, got {dims!r}.")
        hint = "list the width of every hidden layer of the body."
        return tuple(check_positive_int(width, f"hidden_dims[{i}]", hint) for i, width in enumerate(dims))

    def _init_body(self, rng, sample_input, gain, shift):
        try:
            return self.body.init(rng, sample_input, is_training=True, gain=gain, shift=shift)
        except TypeError as error:
            if "argument" not in str(error):
                raise
            raise TypeError(
                "GainMod calls body as f(x, is_training, gain=..., shift=...), but the body does "
                f"not accept these keywords ({error}); pass them on, e.g. "
                "MultilayerPerceptron(hidden_dims, activate_final=True)(x, is_training, gain=gain, shift=shift)."
            ) from error
        except ValueError as error:
            raise ValueError(
                f"hidden_dims={list(self.hidden_dims)} does not match the body's hidden layers: "
                f"multiplying them by gains of these widths failed ({error}). Set hidden_dims to "
                "the body's hidden widths, in order."
            ) from error

    def _check_every_layer_modulated(self, features_of, gain, shift) -> None:
        features, linear = jax.linearize(features_of, gain, shift)
        for layer, width in enumerate(self.hidden_dims):
            if ignores(linear(_only_layer(gain, layer), _only_layer(shift, layer)), features):
                raise ValueError(
                    f"The gain and shift of hidden layer {layer} (hidden_dims[{layer}]={width}) do not "
                    f"change the body's features: the body has fewer than {len(self.hidden_dims)} "
                    "modulated hidden layers or ignores gain/shift. Make hidden_dims list exactly "
                    "the body's hidden widths."
                )
