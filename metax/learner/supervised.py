"""Plain (non-meta) training: one optimiser step, and the host driver that runs any step.

`gradient_step` turns a loss into a pure step function; `fit` runs a step function for
many steps as a `lax.scan` over compiled chunks, so the host is visited once per chunk
(a progress bar that still moves, few round-trips). Step `i` gets the key
`fold_in(rng, first + i)`: a run cut into several `fit` calls (`first` = steps done)
sees the same keys as one long call, and a run's keys do not depend on the chunk size.
Supervised pre-training, a VAE, or a meta-objective written as a loss (backpropagation
through an inner loop) all train through this pair.
"""

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

# step(carry, key, *args) -> (carry, value); `value` is any pytree of arrays.
Step = Callable[..., tuple[Any, Any]]


def gradient_step(loss: Callable[..., Any], optimizer: optax.GradientTransformation, *, has_aux: bool = False) -> Step:
    """`step((params, opt_state), key, *args) -> ((params, opt_state), value)`: one update
    of `optimizer` on the gradient of `loss(params, key, *args)`.

    `value` is the loss before the update (with `has_aux`, `loss` returns `(scalar, aux)`
    and `value` is that pair). The optimiser sees `params` (for weight decay and the like).

    Example:
      >>> loss = lambda w, key: jnp.sum((w - 3.0) ** 2)
      >>> step = metax.learner.gradient_step(loss, optax.sgd(0.25))
      >>> w = jnp.zeros(2)
      >>> (w, _), value = step((w, optax.sgd(0.25).init(w)), jax.random.PRNGKey(0))
      >>> w.tolist(), float(value)  # w - 0.25 * 2 (w - 3) = 1.5, loss at the old w
      ([1.5, 1.5], 18.0)
    """
    grad_fn = jax.value_and_grad(loss, has_aux=has_aux)

    def step(carry, key, *args):
        params, opt_state = carry
        value, grads = grad_fn(params, key, *args)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step


@functools.lru_cache(maxsize=32)
def _compiled_chunk(step: Step) -> Callable:
    # One jit per step function (cached), so repeated `fit` calls with the same step (a
    # run resumed, one meta-training per noise level) compile once per chunk length.
    def chunk(carry, rng, indices, *args):
        return jax.lax.scan(lambda c, i: step(c, jax.random.fold_in(rng, i), *args), carry, indices)

    return jax.jit(chunk)


def fit(
    step: Step,
    carry: Any,
    rng: jax.Array,
    steps: int,
    *args: Any,
    first: int = 0,
    chunk: int = 50,
    progress: Optional[Any] = None,
) -> tuple[Any, Any]:
    """Runs `carry, value = step(carry, fold_in(rng, first + i), *args)` for `i < steps`.

    Steps run as a `lax.scan` over chunks of `chunk` steps, compiled once for full chunks
    and once for a shorter last chunk, whatever `rng` and `args` are (pass data and
    per-run settings as `args`, not as constants closed over, to reuse the compilation).

    Args:
      step: e.g. `gradient_step(loss, optimizer)`; a module-level or long-lived function
        (its compilation is cached by identity).
      carry: the initial state, e.g. `(params, optimizer.init(params))`.
      rng: the run's key; step `i` gets `fold_in(rng, first + i)`.
      steps: how many steps (0 returns `carry` unchanged).
      *args: passed to every step (traced: changing them does not recompile).
      first: the index of the first step, to continue an earlier call.
      chunk: steps per compiled call.
      progress: anything with `update(n)` (a tqdm bar), told after each chunk.

    Returns:
      `(carry, values)`: the final carry and every step's value stacked on the host,
      leaves `(steps, ...)` numpy arrays.

    Example:
      >>> step = metax.learner.gradient_step(lambda w, key: jnp.sum((w - 3.0) ** 2), optax.sgd(0.25))
      >>> w = jnp.zeros(())
      >>> (w, _), losses = metax.learner.fit(step, (w, optax.sgd(0.25).init(w)), jax.random.PRNGKey(0), 5, chunk=2)
      >>> losses.round(4).tolist()  # the error halves each step: 9 (1/4)^t
      [9.0, 2.25, 0.5625, 0.1406, 0.0352]
    """
    if steps < 0 or chunk < 1 or first < 0:
        raise ValueError(f"fit needs steps >= 0, first >= 0 and chunk >= 1, got steps={steps}, first={first}, chunk={chunk}.")
    run = _compiled_chunk(step)
    values = []
    for start in range(first, first + steps, chunk):
        indices = jnp.arange(start, min(start + chunk, first + steps))
        carry, chunk_values = run(carry, rng, indices, *args)
        values.append(jax.device_get(chunk_values))
        if progress is not None:
            progress.update(len(indices))
    if not values:  # no step ran: empty values of the step's output structure
        shapes = jax.eval_shape(step, carry, rng, *args)[1]
        return carry, jax.tree_util.tree_map(lambda s: np.zeros((0, *s.shape), s.dtype), shapes)
    return carry, jax.tree_util.tree_map(lambda *parts: np.concatenate(parts), *values)
