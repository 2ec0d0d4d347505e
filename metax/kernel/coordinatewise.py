"""A coordinate-wise learned update rule for any parameter pytree.

One small MLP, shared by every scalar parameter, maps per-coordinate features (the
gradient and its running averages at several decays, normalised by a running RMS of the
gradient, the parameter's value and optionally the step fraction t / T) to that
coordinate's update. Because the network sees one coordinate at a time it applies to
params of any shape and tree: the same theta adapts an MLP, a conv net or a latent vector.

Andrychowicz et al. "Learning to learn by gradient descent by gradient descent",
NeurIPS 2016, https://arxiv.org/abs/1606.04474 (coordinate-wise learned optimiser);
Metz et al. "Understanding and correcting pathologies in the training of learned
optimizers", ICML 2019, https://arxiv.org/abs/1810.10180 (per-parameter MLP on momentum
features, the design followed here).

The update of a coordinate with gradient g, parameter p, momenta m_k (decays b_k) and
second moment v (decay b_v, bias-corrected to v_hat):

    m_k <- b_k m_k + (1 - b_k) g            v <- b_v v + (1 - b_v) g^2
    features = [g, m_1, ..., m_K] / sqrt(v_hat + eps), p, (t / T)
    delta    = -exp(log_step) * g + scale * MLP(features)

`log_step` starts at `log(step_size)` and `scale` at `output_scale` (0 by default): the
untrained rule is plain SGD with step `step_size`.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metax.kernel.base import LearnedOptimizer
from metax.kernel.metadyn import finite_gradient_guard

_EPS = 1e-8


class CoordinatewiseState(NamedTuple):
    """State of `CoordinatewiseKernel`'s transformation (pytrees shaped like params).

    Example:
      >>> metax.kernel.CoordinatewiseState._fields
      ('momenta', 'second_moment', 'count')
    """

    momenta: tuple  # one params-shaped pytree per decay: running averages of the gradient
    second_moment: Any  # params-shaped: running average of the squared gradient
    count: jax.Array  # int32 scalar: the inner step about to be taken


class CoordinatewiseKernel(LearnedOptimizer):
    """A learned per-coordinate update rule for arbitrary params (a `LearnedOptimizer`).

    theta holds the shared network's weights, the learned step of the SGD path and the
    learned output scale; it does not depend on the params' shapes, so one theta serves
    any model.

    Args:
      hidden_sizes: widths of the shared MLP's hidden layers.
      step_size: initial step of the SGD path `-step * g` (learned, log-parameterised);
        None leaves the update to the network alone.
      output_scale: initial value of the learned scale of the network's output.
      decays: decays of the gradient's running averages fed as features.
      second_moment_decay: decay of the running average of g^2 used to normalise them.
      num_steps: with `step_fraction=True`, the run length T of the input t / T; the inner
        loop may then not run longer.
      step_fraction: feed t / T.
      param_feature: feed the parameter's value.
      activation: the MLP's activation.
      check_finite: debugging aid, off by default: raise, naming the step, on a NaN or
        infinite gradient. Under `jit` the check is a host callback on every inner step
        (see `finite_gradient_guard`); in training read the learner's `nonfinite_inner`
        metric instead, which costs nothing and never raises.

    Example:
      >>> kernel = metax.kernel.CoordinatewiseKernel(hidden_sizes=(16,), step_size=0.01)
      >>> learner = metax.learner.LearnedKernel(meta_model, None, 10, kernel, optax.adam(1e-3))
    """

    def __init__(
        self,
        hidden_sizes: Sequence[int] = (16,),
        *,
        step_size: Optional[float] = 0.01,
        output_scale: float = 0.0,
        decays: Sequence[float] = (0.5, 0.9, 0.99),
        second_moment_decay: float = 0.999,
        num_steps: Optional[int] = None,
        step_fraction: bool = False,
        param_feature: bool = True,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        check_finite: bool = False,
    ) -> None:
        if step_size is not None and not step_size > 0:
            raise ValueError(f"CoordinatewiseKernel: step_size must be > 0 or None, got {step_size!r}.")
        for decay in tuple(decays) + (second_moment_decay,):
            if not 0.0 <= decay < 1.0:
                raise ValueError(f"CoordinatewiseKernel: decays must lie in [0, 1), got {decay!r}.")
        if step_fraction and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"CoordinatewiseKernel: step_fraction=True needs num_steps, a positive int; got {num_steps!r}.")
        if num_steps is not None and not step_fraction:
            raise ValueError(
                f"CoordinatewiseKernel: num_steps={num_steps!r} is the run length T of the feature t / T, "
                "read only with step_fraction=True; pass step_fraction=True or drop num_steps."
            )
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.step_size = step_size
        self.output_scale = float(output_scale)
        self.decays = tuple(float(d) for d in decays)
        self.second_moment_decay = float(second_moment_decay)
        self.step_fraction = bool(step_fraction)
        self.num_steps = num_steps if step_fraction else None
        self.param_feature = bool(param_feature)
        self.activation = activation
        self.check_finite = check_finite
        self.num_features = 1 + len(self.decays) + int(self.param_feature) + int(self.step_fraction)
        self.network = hk.without_apply_rng(hk.transform(self._network))

    def _network(self, features: jax.Array, grads: jax.Array) -> jax.Array:
        """features `(n, num_features)`, grads `(n,)` -> delta `(n,)`."""
        dtype = features.dtype
        out = hk.nets.MLP(self.hidden_sizes + (1,), activation=self.activation, name="net")(features)
        scale = hk.get_parameter("output_scale", (), dtype, init=hk.initializers.Constant(self.output_scale))
        delta = scale * out[:, 0]
        if self.step_size is not None:
            log_step = hk.get_parameter("log_step_size", (), dtype, init=hk.initializers.Constant(np.log(self.step_size)))
            delta = delta - jnp.exp(log_step) * grads
        return delta

    def init(self, rng: jax.Array, params: Any) -> Any:
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves:
            raise ValueError("CoordinatewiseKernel: params have no leaves to adapt.")
        dtype = jnp.result_type(*leaves)
        return self.network.init(rng, jnp.zeros((1, self.num_features), dtype), jnp.zeros((1,), dtype))

    def features(self, grads: Any, state: CoordinatewiseState, params: Any, count: jax.Array) -> jax.Array:
        """The `(coordinates, num_features)` features of all leaves (in leaf order), given
        the state after this step's averages were updated and the step index `count`."""
        leaves = lambda tree: [jnp.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)]
        g = jnp.concatenate(leaves(grads))
        correction = 1.0 - self.second_moment_decay ** (count + 1).astype(g.dtype)
        norm = jax.lax.rsqrt(jnp.concatenate(leaves(state.second_moment)) / correction + _EPS)
        columns = [g * norm] + [jnp.concatenate(leaves(m)) * norm for m in state.momenta]
        if self.param_feature:
            columns.append(jnp.concatenate(leaves(params)).astype(g.dtype))
        if self.step_fraction:
            columns.append(jnp.full_like(g, count.astype(g.dtype) / self.num_steps))
        return jnp.stack(columns, axis=-1)

    def optimizer(self, theta: Any) -> optax.GradientTransformation:
        def init_fn(params):
            zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
            return CoordinatewiseState(tuple(zeros for _ in self.decays), zeros, jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None):
            if params is None:
                raise ValueError("CoordinatewiseKernel: the rule reads the parameters, so update() needs params.")
            ema = lambda decay, avg, x: jax.tree_util.tree_map(lambda a, b: decay * a + (1 - decay) * b, avg, x)
            momenta = tuple(ema(d, m, grads) for d, m in zip(self.decays, state.momenta))
            second = ema(self.second_moment_decay, state.second_moment, jax.tree_util.tree_map(jnp.square, grads))
            new_state = CoordinatewiseState(momenta, second, state.count + 1)

            features = self.features(grads, new_state, params, state.count)
            leaves, treedef = jax.tree_util.tree_flatten(grads)
            flat_grads = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves]).astype(features.dtype)
            delta = self.network.apply(theta, features, flat_grads)
            if self.check_finite:
                delta = delta * finite_gradient_guard(grads, state.count, "CoordinatewiseKernel", delta.dtype)
            sizes = np.cumsum([leaf.size for leaf in leaves])[:-1]
            pieces = jnp.split(delta, sizes)
            updates = [piece.reshape(leaf.shape).astype(leaf.dtype) for piece, leaf in zip(pieces, leaves)]
            return jax.tree_util.tree_unflatten(treedef, updates), new_state

        return optax.GradientTransformation(init_fn, update_fn)
