"""MetadynamicKernel: a learned inference update `delta_z = f_psi(z, grad)`.

Torch-MetaDyn (seed 000) replaces the fixed inference step `z <- z - lr * grad` by a small
network trained across problems. The idea is iterative amortised inference:
Marino, Yue, Mandt. "Iterative Amortized Inference", ICML 2018,
https://arxiv.org/abs/1807.09356, which learns the update of a latent variable from its
current value and the gradient of the objective; and learned optimisers in general,
Andrychowicz et al. "Learning to learn by gradient descent by gradient descent",
NeurIPS 2016, https://arxiv.org/abs/1606.04474.

The update rule, for z of shape `(batch, state_dim)` and grad of shape `(batch, grad_dim)`:

    features = [z, grad / rms(grad), log rms(grad), (t / T)]
    memory'  = GRU(features, memory)                       (memory_size > 0 only)
    delta_z  = -exp(log_step) * grad + scale * MLP([features, memory'])

`log_step` starts at `log(step_size)` and `scale` at `output_scale` (0 by default), so the
untrained kernel is exactly gradient descent with step `step_size`; meta-training grows
the network's share. `MetadynamicOptimizer` turns the kernel into a learned optimiser
(`metax.kernel.LearnedOptimizer`), so the shared inner loop and `LearnedKernel` run it.
"""

from typing import Any, Callable, NamedTuple, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from metax.kernel.base import LearnedOptimizer

GRAD_NORMALIZATIONS = ("rms", "none")
_EPS = 1e-8


def _raise_if_nonfinite(finite: np.ndarray, step: np.ndarray, name: str, dtype) -> np.ndarray:
    finite, step = np.asarray(finite), np.asarray(step)
    if not finite.all():
        first = int(np.min(np.where(finite, np.iinfo(np.int32).max, step)))
        raise ValueError(
            f"{name}: non-finite gradient at inner step {first} (counting from 0). The "
            "objective or its gradient overflowed or is NaN there; check the inputs, lower "
            "the step size or clip the objective."
        )
    return np.ones(finite.shape, dtype)


def finite_gradient_guard(grads: Any, step: jax.Array, name: str, dtype: Any) -> jax.Array:
    """A scalar 1 of `dtype` to multiply the update by; raises `ValueError` naming `step`
    if any gradient entry is NaN or infinite. A debugging aid (the kernels' opt-in
    `check_finite`): a learner's `nonfinite_inner` metric is the way to watch training.

    Eagerly the check is immediate. Under `jit` / `vmap` / `scan` it is a vectorised
    `jax.pure_callback` (one host call per step, however many tasks or ES members are
    batched); the error then reaches the caller as the same ValueError, possibly wrapped
    in a `jax.errors.JaxRuntimeError`. Multiplying the update by the returned 1 keeps
    the check from being compiled away; its derivative is zero.

    Example:
      >>> metax.kernel.finite_gradient_guard({"w": jnp.ones(2)}, jnp.array(0), "demo", jnp.float32)
      Array(1., dtype=float32)
      >>> metax.kernel.finite_gradient_guard({"w": jnp.array([jnp.nan])}, jnp.array(3), "demo", jnp.float32)
      Traceback (most recent call last):
        ...
      ValueError: ...
    """
    leaves = jax.tree_util.tree_leaves(grads)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))
    if not isinstance(finite, jax.core.Tracer) and not isinstance(step, jax.core.Tracer):
        return jnp.asarray(_raise_if_nonfinite(finite, step, name, dtype))
    return jax.pure_callback(
        lambda f, s: _raise_if_nonfinite(f, s, name, dtype),
        jax.ShapeDtypeStruct((), dtype),
        finite,
        step,
        vmap_method="broadcast_all",
    )


def _check_last_dim(array: jax.Array, dim: int, what: str, argument: str) -> None:
    if jnp.ndim(array) != 2 or array.shape[-1] != dim:
        raise ValueError(
            f"MetadynamicKernel: {what} must have shape (batch, {argument}={dim}), got "
            f"{tuple(jnp.shape(array))}; pass {argument}={jnp.shape(array)[-1] if jnp.ndim(array) else '?'} "
            f"or reshape {what} to (batch, {dim})."
        )


class MetadynamicKernel(hk.Module):
    """The learned update `delta_z = f_psi(z, grad)` of seed 000 (a Haiku module).

    Args:
      state_dim: size of the last axis of z (and of delta_z).
      grad_dim: size of the last axis of the gradient input. The gradient-descent path
        needs `grad_dim == state_dim`; otherwise pass `step_size=None`.
      hidden_sizes: widths of the MLP's hidden layers.
      step_size: initial step of the built-in gradient-descent path `-step * grad` (a
        learned, log-parameterised scalar); None leaves the update to the network alone.
      output_scale: initial value of the learned scalar multiplying the network's
        output. 0 (default) makes the untrained kernel exactly `-step_size * grad`.
      grad_normalization: "rms" feeds the network `grad / rms(grad)` and `log rms(grad)`
        (per row), so its input has unit scale whatever the objective's; "none" feeds
        the raw gradient.
      memory_size: width of a recurrent memory (a GRU) carried across steps, which lets
        the kernel learn momentum and noise filtering; 0 for a memoryless kernel.
      step_fraction: also feed the fraction `t / T` of the inference run done, so the
        kernel can learn a schedule.
      activation: the MLP's activation.

    Call:
      `kernel(z, grad, memory=None, t=None)` with z `(batch, state_dim)`, grad
      `(batch, grad_dim)`, memory `(batch, memory_size)` (zeros when None) and t a scalar
      or `(batch,)` step fraction (required with `step_fraction=True`). Returns delta_z
      `(batch, state_dim)`, or `(delta_z, memory)` when `memory_size > 0`.

    Example:
      >>> from metax.kernel import MetadynamicKernel
      >>> z, grad = jnp.zeros((1, 32)), jnp.ones((1, 32))
      >>> f_psi = hk.without_apply_rng(hk.transform(lambda z, g: MetadynamicKernel(32, 32)(z, g)))
      >>> psi = jax.jit(f_psi.init)(jax.random.PRNGKey(0), z, grad)
      >>> delta_z = jax.jit(f_psi.apply)(psi, z, grad)
      >>> bool(jnp.allclose(delta_z, -0.1 * grad, atol=1e-6))  # untrained: a small gradient step
      True
    """

    def __init__(
        self,
        state_dim: int,
        grad_dim: int,
        hidden_sizes: Sequence[int] = (32, 32),
        *,
        step_size: Optional[float] = 0.1,
        output_scale: float = 0.0,
        grad_normalization: str = "rms",
        memory_size: int = 0,
        step_fraction: bool = False,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name=name)
        for value, argument in ((state_dim, "state_dim"), (grad_dim, "grad_dim")):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"MetadynamicKernel: {argument} must be a positive int, got {value!r}.")
        if not isinstance(memory_size, (int, np.integer)) or memory_size < 0:
            raise ValueError(f"MetadynamicKernel: memory_size must be an int >= 0, got {memory_size!r}.")
        if grad_normalization not in GRAD_NORMALIZATIONS:
            raise ValueError(
                f"MetadynamicKernel: grad_normalization must be one of {GRAD_NORMALIZATIONS}, got {grad_normalization!r}."
            )
        if step_size is not None:
            if not step_size > 0:
                raise ValueError(f"MetadynamicKernel: step_size must be > 0 or None, got {step_size!r}.")
            if grad_dim != state_dim:
                raise ValueError(
                    f"MetadynamicKernel: the gradient-descent path -step_size * grad needs grad_dim == "
                    f"state_dim, got grad_dim={grad_dim}, state_dim={state_dim}; pass step_size=None."
                )
        self.state_dim = int(state_dim)
        self.grad_dim = int(grad_dim)
        self.hidden_sizes = tuple(int(h) for h in hidden_sizes)
        self.step_size = step_size
        self.output_scale = float(output_scale)
        self.grad_normalization = grad_normalization
        self.memory_size = int(memory_size)
        self.step_fraction = bool(step_fraction)
        self.activation = activation

    def __call__(self, z: jax.Array, grad: jax.Array, memory: Optional[jax.Array] = None, t: Any = None):
        _check_last_dim(z, self.state_dim, "z", "state_dim")
        _check_last_dim(grad, self.grad_dim, "grad", "grad_dim")
        if grad.shape[0] != z.shape[0]:
            raise ValueError(f"MetadynamicKernel: z has batch {z.shape[0]} but grad has batch {grad.shape[0]}.")
        dtype = jnp.result_type(z, grad)
        z, grad = z.astype(dtype), grad.astype(dtype)
        batch = z.shape[0]

        if self.grad_normalization == "rms":
            rms = jnp.sqrt(jnp.mean(grad**2, axis=-1, keepdims=True) + _EPS)
            features = [z, grad / rms, jnp.log(rms)]
        else:
            features = [z, grad]
        if self.step_fraction:
            if t is None:
                raise ValueError("MetadynamicKernel: step_fraction=True needs t, the fraction t / T of the run done.")
            features.append(jnp.broadcast_to(jnp.reshape(jnp.asarray(t, dtype), (-1, 1)), (batch, 1)))
        features = jnp.concatenate(features, axis=-1)

        if self.memory_size:
            if memory is None:
                memory = jnp.zeros((batch, self.memory_size), dtype)
            elif jnp.shape(memory) != (batch, self.memory_size):
                raise ValueError(
                    f"MetadynamicKernel: memory must have shape (batch, memory_size) = "
                    f"{(batch, self.memory_size)}, got {tuple(jnp.shape(memory))}."
                )
            _, memory = hk.GRU(self.memory_size, name="memory")(features, memory.astype(dtype))
            features = jnp.concatenate([features, memory], axis=-1)

        net = hk.nets.MLP(self.hidden_sizes + (self.state_dim,), activation=self.activation, name="net")(features)
        scale = hk.get_parameter("output_scale", (), dtype, init=hk.initializers.Constant(self.output_scale))
        delta = scale * net
        if self.step_size is not None:
            log_step = hk.get_parameter("log_step_size", (), dtype, init=hk.initializers.Constant(np.log(self.step_size)))
            delta = delta - jnp.exp(log_step) * grad
        return (delta, memory) if self.memory_size else delta


class MetadynamicState(NamedTuple):
    """State of `MetadynamicOptimizer`'s transformation.

    Example:
      >>> metax.kernel.MetadynamicState._fields
      ('memory', 'count')
    """

    memory: jax.Array  # (batch, memory_size): the kernel's recurrent memory ((batch, 0) without one)
    count: jax.Array  # int32 scalar: the inner step about to be taken


class MetadynamicOptimizer(LearnedOptimizer):
    """The MetadynamicKernel as a learned optimiser: theta in, optax optimiser out.

    The params it adapts are either one array of shape `(batch, state_dim)` (a batch of
    latent vectors, updated row by row) or any pytree, raveled into one vector of
    `state_dim` entries (a batch of one). theta is the kernel's Haiku params.

    Args:
      state_dim: the size of a latent vector (or of the raveled params).
      hidden_sizes, step_size, output_scale, grad_normalization, memory_size:
        see `MetadynamicKernel` (grad_dim is state_dim here).
      horizon: with `step_fraction=True`, the run length T of the input `t / T`; the inner
        loop may then not run longer than `horizon` steps.
      step_fraction: feed `t / T` (needs `horizon`).
      check_finite: debugging aid, off by default: raise, naming the step, on a NaN or
        infinite gradient. Under `jit` the check is a host callback on every inner step
        (see `finite_gradient_guard`); in training read the learner's `nonfinite_inner`
        metric instead, which costs nothing and never raises.

    Example:
      >>> kernel = metax.kernel.MetadynamicOptimizer(state_dim=4, hidden_sizes=(8,))
      >>> params = jnp.zeros((2, 4))  # two latent vectors, updated row by row
      >>> theta = jax.jit(kernel.init)(jax.random.PRNGKey(0), params)
      >>> @jax.jit
      ... def step(theta, grads, params):
      ...     rule = kernel.optimizer(theta)
      ...     return rule.update(grads, rule.init(params), params)[0]
      >>> updates = step(theta, jnp.ones((2, 4)), params)
      >>> bool(jnp.allclose(updates, -0.1 * jnp.ones((2, 4)), atol=1e-6))  # untrained: a 0.1 step
      True
    """

    def __init__(
        self,
        state_dim: int,
        hidden_sizes: Sequence[int] = (32, 32),
        *,
        step_size: Optional[float] = 0.1,
        output_scale: float = 0.0,
        grad_normalization: str = "rms",
        memory_size: int = 0,
        step_fraction: bool = False,
        horizon: Optional[int] = None,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        check_finite: bool = False,
    ) -> None:
        if step_fraction and (not isinstance(horizon, int) or horizon < 1):
            raise ValueError(f"MetadynamicOptimizer: step_fraction=True needs horizon, a positive int; got {horizon!r}.")
        if horizon is not None and not step_fraction:
            raise ValueError(
                f"MetadynamicOptimizer: horizon={horizon!r} is the run length T of the input t / T, "
                "read only with step_fraction=True; pass step_fraction=True or drop horizon."
            )
        self.state_dim = state_dim
        self.memory_size = memory_size
        self.step_fraction = step_fraction
        self.num_steps = horizon if step_fraction else None
        self.check_finite = check_finite
        kwargs = dict(
            hidden_sizes=hidden_sizes, step_size=step_size, output_scale=output_scale,
            grad_normalization=grad_normalization, memory_size=memory_size,
            step_fraction=step_fraction, activation=activation,
        )
        # Fail at construction on bad arguments, not at the first trace.
        hk.transform(lambda: MetadynamicKernel(state_dim, state_dim, **kwargs)).init(None)

        def apply(z, grad, memory, t):
            out = MetadynamicKernel(state_dim, state_dim, **kwargs, name="metadynamic_kernel")(z, grad, memory, t)
            return out if memory_size else (out, memory)

        self.kernel = hk.without_apply_rng(hk.transform(apply))

    def _as_batch(self, tree: Any, what: str) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
        """`(batch, state_dim)` view of params or grads, and the map back."""
        leaves = jax.tree_util.tree_leaves(tree)
        if len(leaves) == 1 and jnp.ndim(leaves[0]) == 2:
            leaf = leaves[0]
            treedef = jax.tree_util.tree_structure(tree)
            z, back = leaf, lambda delta: jax.tree_util.tree_unflatten(treedef, [delta.astype(leaf.dtype)])
        else:
            flat, unravel = ravel_pytree(tree)
            z, back = flat[None, :], lambda delta: unravel(delta[0].astype(flat.dtype))
        if z.shape[-1] != self.state_dim:
            raise ValueError(
                f"MetadynamicOptimizer: state_dim={self.state_dim} but the {what} have "
                f"{z.shape[-1]} entries per row (shape {tuple(z.shape)}); pass state_dim={z.shape[-1]}."
            )
        return z, back

    def init(self, rng: jax.Array, params: Any) -> Any:
        z, _ = self._as_batch(params, "params")
        memory = jnp.zeros((z.shape[0], self.memory_size), z.dtype)
        return self.kernel.init(rng, z, jnp.zeros_like(z), memory, jnp.zeros((), z.dtype))

    def optimizer(self, theta: Any) -> optax.GradientTransformation:
        def init_fn(params):
            z, _ = self._as_batch(params, "params")
            return MetadynamicState(jnp.zeros((z.shape[0], self.memory_size), z.dtype), jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None):
            if params is None:
                raise ValueError("MetadynamicOptimizer: the kernel reads z, so update() needs params.")
            z, back = self._as_batch(params, "params")
            g, _ = self._as_batch(grads, "gradients")
            t = state.count.astype(z.dtype) / (self.num_steps or 1)
            delta, memory = self.kernel.apply(theta, z, g, state.memory, t)
            if self.check_finite:
                delta = delta * finite_gradient_guard(g, state.count, "MetadynamicOptimizer", delta.dtype)
            return back(delta), MetadynamicState(memory.astype(state.memory.dtype), state.count + 1)

        return optax.GradientTransformation(init_fn, update_fn)
