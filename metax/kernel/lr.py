"""Meta-learned learning rates: Meta-SGD, MAML++'s per-step rates, a learned scalar rate.

- Meta-SGD: Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning", 2017, https://arxiv.org/abs/1707.09835. One learning rate per parameter
  entry, learned with the initialisation: params <- params - lr * grad (elementwise).
- Per-layer, per-step rates: Antoniou, Edwards, Storkey. "How to train your MAML",
  ICLR 2019, https://arxiv.org/abs/1810.09502 (MAML++, "LSLR").

Rates are stored raw and mapped to the rate by a parameterisation: "identity" (the raw
value is the rate, may turn negative), "softplus" or "log" (both keep it positive).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metax.kernel.base import LearnedOptimizer, check_theta_matches

PARAMETERIZATIONS = ("identity", "softplus", "log")


def _to_raw(lr: float, parameterization: str, name: str) -> float:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"{name}: parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}.")
    if parameterization == "identity" and not lr >= 0:
        raise ValueError(
            f"{name}: lr_init={lr} is a negative learning rate (the inner loop would climb the "
            "loss); pass lr_init >= 0."
        )
    if parameterization != "identity" and not lr > 0:
        raise ValueError(
            f"{name}: lr_init={lr} cannot be represented under the {parameterization!r} "
            "parameterization, which keeps rates positive; pass lr_init > 0 or "
            "parameterization='identity'."
        )
    if parameterization == "log":
        return float(jnp.log(lr))
    if parameterization == "softplus":
        return float(jnp.log(jnp.expm1(lr)))
    return float(lr)


def _to_rate(raw: jax.Array, parameterization: str) -> jax.Array:
    if parameterization == "log":
        return jnp.exp(raw)
    if parameterization == "softplus":
        return jax.nn.softplus(raw)
    return raw


class MetaSGD(LearnedOptimizer):
    """Per-parameter learning rates (theta has the params' tree and shapes).

    Args:
      lr_init: the initial rate of every entry.
      parameterization: "identity", "softplus" or "log".

    Example:
      >>> kernel = metax.kernel.MetaSGD(lr_init=0.1)
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> theta = kernel.init(jax.random.PRNGKey(0), params)  # one rate per entry, meta-learned
      >>> sgd = kernel.optimizer(theta)
      >>> sgd.update({"w": jnp.array([1.0, -1.0])}, sgd.init(params), params)[0]
      {'w': Array([-0.1,  0.1], dtype=float32)}
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, kernel, optax.adam(1e-3))
    """

    def __init__(self, lr_init: float, parameterization: str = "identity") -> None:
        self.parameterization = parameterization
        self.raw_init = _to_raw(lr_init, parameterization, "MetaSGD")
        self.lr_init = lr_init

    def init(self, rng, params):
        return jax.tree_util.tree_map(lambda p: jnp.full_like(p, self.raw_init), params)

    def rates(self, theta):
        return jax.tree_util.tree_map(lambda raw: _to_rate(raw, self.parameterization), theta)

    def optimizer(self, theta) -> optax.GradientTransformation:
        rates = self.rates(theta)

        def init_fn(params):
            check_theta_matches(theta, params, "MetaSGD")
            return optax.EmptyState()

        def update_fn(grads, state, params=None):
            return jax.tree_util.tree_map(lambda lr, g: -lr * g, rates, grads), state

        return optax.GradientTransformation(init_fn, update_fn)


class ScalarLR(LearnedOptimizer):
    """One learned learning rate for all parameters (plain SGD with a meta-learned step).

    Example:
      >>> kernel = metax.kernel.ScalarLR(lr_init=0.1)
      >>> theta = kernel.init(jax.random.PRNGKey(0), {"w": jnp.zeros(2)})
      >>> theta.shape, round(float(jnp.exp(theta)), 4)  # the "log" parameterisation
      ((), 0.1)
    """

    def __init__(self, lr_init: float, parameterization: str = "log") -> None:
        self.parameterization = parameterization
        self.raw_init = _to_raw(lr_init, parameterization, "ScalarLR")

    def init(self, rng, params):
        return jnp.asarray(self.raw_init, dtype=jax.tree_util.tree_leaves(params)[0].dtype)

    def optimizer(self, theta) -> optax.GradientTransformation:
        if jnp.ndim(theta) != 0:
            raise ValueError(f"ScalarLR: theta must be a scalar, got shape {jnp.shape(theta)}.")
        return optax.sgd(_to_rate(theta, self.parameterization))


class LayerStepState(NamedTuple):
    count: jax.Array  # int32 scalar: the inner step about to be taken


class LayerStepLR(LearnedOptimizer):
    """One learning rate per parameter tensor (each layer's weights and biases) and step.

    theta has the params' tree with one `(num_steps,)` vector per tensor; step k uses
    entry k. The inner loop may not run longer than `num_steps`.

    Args:
      lr_init: initial rate of every tensor at every step.
      num_steps: the schedule's length, at least the learner's `steps_inner`.
      parameterization: "identity", "softplus" or "log".

    Example:
      >>> kernel = metax.kernel.LayerStepLR(lr_init=0.1, num_steps=3)
      >>> theta = kernel.init(jax.random.PRNGKey(0), {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)})
      >>> jax.tree_util.tree_map(jnp.shape, theta)  # one rate per tensor and step
      {'b': (3,), 'w': (3,)}
    """

    def __init__(self, lr_init: float, num_steps: int, parameterization: str = "identity") -> None:
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"LayerStepLR: num_steps must be a positive int, got {num_steps!r}.")
        self.parameterization = parameterization
        self.raw_init = _to_raw(lr_init, parameterization, "LayerStepLR")
        self.num_steps = num_steps

    def init(self, rng, params):
        return jax.tree_util.tree_map(lambda p: jnp.full((self.num_steps,), self.raw_init, p.dtype), params)

    def optimizer(self, theta) -> optax.GradientTransformation:
        rates = jax.tree_util.tree_map(lambda raw: _to_rate(raw, self.parameterization), theta)

        def init_fn(params):
            check_theta_matches(theta, params, "LayerStepLR")
            for path, leaf in jax.tree_util.tree_leaves_with_path(theta):
                if jnp.shape(leaf) != (self.num_steps,):
                    raise ValueError(
                        f"LayerStepLR: theta{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}, "
                        f"expected ({self.num_steps},): one rate per step."
                    )
            return LayerStepState(count=jnp.zeros((), jnp.int32))

        def update_fn(grads, state, params=None):
            updates = jax.tree_util.tree_map(lambda lr, g: -lr[state.count] * g, rates, grads)
            return updates, LayerStepState(count=state.count + 1)

        return optax.GradientTransformation(init_fn, update_fn)
