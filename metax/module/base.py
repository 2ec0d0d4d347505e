"""`MetaModule`: what is meta-learned (hparams, hstate) and what is adapted (params, state).

A module is the model side of a meta-learning algorithm. It owns two pairs of pytrees:

- `hparams` / `hstate`: meta-parameters and meta-state, shared by all tasks and trained by
  the learner's outer loop;
- `params` / `state`: per-task parameters and model state (e.g. batch-norm statistics),
  created from the hparams by `reset_params` and adapted by the learner's inner loop.

This mirrors haiku's `transform_with_state` split of parameters and state. Learners never
look inside a module; they call it and its two losses.

The inner loop carries `state` from step to step but keeps `hstate` fixed (it belongs to
all tasks). Statistics that adaptation should update, such as batch-norm averages,
therefore live in the task's `state`, started from `hstate` by `reset_params`; the query
forward pass returns the task's copy as its new `hstate`, and the learner averages those
over the meta-batch (keeping dtypes). Every module treats its network's haiku state this
way, so a batch-norm policy (`metax.models.norm`: "running", "support", "per_step",
"transductive") means the same in each.
"""

import abc
from typing import Any, Optional

import haiku as hk
import jax
import jax.numpy as jnp

from metax.energy import EnergyFunction
from metax.energy.function import as_energy

Params = Any
State = Any
HParams = Any
HState = Any


class MetaModule(abc.ABC):
    """Base class of meta-learned models.

    Args:
      loss_fn_inner: the energy the inner loop minimises over `params` (support set): an
        `EnergyFunction` or, as in metax, any function `fn(rng, pred, target, params,
        hparams, state, hstate, info) -> (loss, metrics)` (wrapped by `as_energy`).
      loss_fn_outer: the energy the outer loop minimises over `hparams` (query set), the same.

    Example:
      >>> hparams, hstate = meta_model.reset_hparams(jax.random.PRNGKey(0), sample_input)
      >>> params, state = meta_model.reset_params(jax.random.PRNGKey(1), hparams, hstate, sample_input)
      >>> output, _ = meta_model(rng, state, hstate, params, hparams, sample_input, is_training=True)
      >>> output.shape
      (5, 1)
    """

    def __init__(self, loss_fn_inner: EnergyFunction, loss_fn_outer: EnergyFunction) -> None:
        self.loss_fn_inner, self.loss_fn_outer = check_energies(loss_fn_inner, loss_fn_outer)

    @property
    def init_keys(self) -> dict[str, str]:
        """``{params_field: hparams_field}`` for params whose starting value is an hparam.

        Learners that move an initialisation (Reptile) need this to be non-empty; implicit
        learners refuse to learn these hparams unless `anchors_init` says the inner loss
        also depends on them (otherwise their implicit gradient is zero).
        """
        return {}

    @property
    def anchors_init(self) -> bool:
        """True if the inner loss itself pulls params toward their hparams initialisation."""
        return False

    @property
    def hparams_fields(self) -> Optional[tuple[str, ...]]:
        """The names of the hparams' fields that hold meta-parameters, if known without data.

        Learners that differentiate at the inner loop's end point read it at construction
        to tell which hparams can learn (those not in `init_keys`, unless `anchors_init`);
        None (the default) defers that check to `reset`, which sees the hparams.
        """
        return None

    @abc.abstractmethod
    def __call__(
        self,
        rng: jax.Array,
        state: State,
        hstate: HState,
        params: Params,
        hparams: HParams,
        input: jax.Array,
        is_training: bool,
    ) -> tuple[jax.Array, tuple[State, HState]]:
        """Applies the model to `input` `(samples, *input_shape)`; returns output and new states."""

    @abc.abstractmethod
    def reset_hparams(self, rng: jax.Array, sample_input: jax.Array) -> tuple[HParams, HState]:
        """Initial meta-parameters and meta-state."""

    @abc.abstractmethod
    def reset_params(
        self, rng: jax.Array, hparams: HParams, hstate: HState, sample_input: jax.Array
    ) -> tuple[Params, State]:
        """A task's starting params and state, derived from the meta-parameters."""


def check_energies(loss_fn_inner: Any, loss_fn_outer: Any) -> tuple[EnergyFunction, EnergyFunction]:
    """Both losses as energies: an `EnergyFunction` as it is, a plain function with metax's
    loss signature `fn(rng, pred, target, params, hparams, state, hstate, info) -> (loss,
    metrics)` wrapped (`metax.energy.as_energy`). A module calls it before adding a
    regulariser, so a callable of another signature fails here, naming the argument.

    Example:
      >>> inner, outer = check_energies(SquaredError(), my_loss_function)  # doctest: +SKIP
    """
    return as_energy(loss_fn_inner, "loss_fn_inner"), as_energy(loss_fn_outer, "loss_fn_outer")


def as_transformed_with_state(fn: Any, argument: str) -> hk.TransformedWithState:
    """Accepts `hk.transform_with_state(f)` or `hk.transform(f)` (given empty state).

    Raises:
      TypeError: if `fn` is neither, naming the constructor `argument`.
    """
    if isinstance(fn, hk.TransformedWithState):
        return fn
    if isinstance(fn, hk.Transformed):
        return hk.with_empty_state(fn)
    raise TypeError(
        f"{argument} must be a haiku transform of a function f(x, is_training), e.g. "
        f"hk.transform_with_state(lambda x, is_training: hk.nets.MLP([64, 1])(x)); got "
        f"{type(fn).__name__}."
    )


def check_output_dim(output: jax.Array, output_dim: Optional[int], argument: str) -> None:
    """Raises if the network's last output axis is not the declared `output_dim`."""
    if output_dim is not None and output.shape[-1] != output_dim:
        raise ValueError(
            f"output_dim={output_dim} but {argument} produces outputs of shape "
            f"{tuple(output.shape)}; make the network's last layer {output_dim} wide or "
            "fix output_dim."
        )


# -- helpers shared by the modules ---------------------------------------------------


def linear_head(output_dim: int) -> hk.Transformed:
    """A stateless, rng-free linear layer over flattened features: `apply(params, features)`."""
    return hk.without_apply_rng(
        hk.transform(lambda features: hk.Linear(output_dim, name="head")(hk.Flatten(preserve_dims=1)(features)))
    )


def check_positive_int(value, argument: str, hint: str) -> int:
    """Returns `value` if it is a positive int, else raises naming `argument` and `hint`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}; {hint}")
    return value


def check_features(features: jax.ShapeDtypeStruct, sample_input: jax.Array, argument: str) -> None:
    """Raises unless the body maps `(samples, ...)` inputs to `(samples, ...)` features."""
    if features.ndim < 2 or features.shape[0] != sample_input.shape[0]:
        raise ValueError(
            f"{argument} must return features of shape (samples, features); for inputs of shape "
            f"{tuple(sample_input.shape)} it returned {tuple(features.shape)}. Drop the readout "
            "layer, e.g. MultilayerPerceptron(hidden_dims, activate_final=True)."
        )


def is_traced(value) -> bool:
    """True under a JAX transformation, where value checks must be skipped."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(value))


def ignores(output_tangent: jax.Array, output: jax.Array) -> bool:
    """True if a directional derivative is negligible relative to the output's scale."""
    scale = 1.0 + float(_max_abs(output))
    return float(_max_abs(output_tangent)) <= 1e-4 * scale


# One compiled program per shape instead of two eager ones (abs, max); a maximum is exact.
_max_abs = jax.jit(lambda a: jnp.max(jnp.abs(a)))


def init_training(net: hk.TransformedWithState, rng: jax.Array, sample_input: jax.Array) -> tuple[hk.Params, hk.State]:
    """`net.init(rng, sample_input, is_training=True)` as one compiled program.

    Run eagerly, an init executes (and compiles) the network's forward pass op by op: for
    Conv4 that was most of a run's start-up. Compiled once, the forward pass, whose
    values init does not return, is dropped by XLA. Same values as the eager call.

    Example:
      >>> net = hk.transform_with_state(lambda x, is_training: hk.Linear(2)(x))
      >>> params, state = init_training(net, jax.random.PRNGKey(0), jnp.ones((3, 4)))
      >>> params["linear"]["w"].shape
      (4, 2)
    """
    return jax.jit(lambda r, x: net.init(r, x, is_training=True))(rng, sample_input)
