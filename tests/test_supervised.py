"""The supervised driver: `gradient_step` is one optimiser step, `fit` runs steps in
chunks with keys that do not depend on how the run is cut."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metax.learner import fit, gradient_step


def noisy_quadratic(w, key, target):
    """A loss whose gradient depends on the key: (w - target - noise)^2 / 2."""
    return 0.5 * jnp.sum((w - target - 0.1 * jax.random.normal(key, w.shape)) ** 2)


def hand_loop(w, rng, steps, lr, target, first=0):
    """The same run written step by step, the keys fold_in(rng, first + i)."""
    losses = []
    for i in range(first, first + steps):
        key = jax.random.fold_in(rng, i)
        noise = 0.1 * np.asarray(jax.random.normal(key, w.shape))
        losses.append(0.5 * np.sum((w - target - noise) ** 2))
        w = w - lr * (w - target - noise)
    return w, np.asarray(losses)


def test_fit_equals_a_hand_written_loop_however_the_run_is_cut():
    rng, lr, target = jax.random.PRNGKey(3), 0.3, jnp.array([1.0, -2.0, 0.5])
    step = gradient_step(noisy_quadratic, optax.sgd(lr))
    w0 = jnp.zeros(3)
    expected_w, expected_losses = hand_loop(np.zeros(3), rng, 7, lr, np.asarray(target))

    (w, _), losses = fit(step, (w0, optax.sgd(lr).init(w0)), rng, 7, target, chunk=3)
    np.testing.assert_allclose(w, expected_w, rtol=1e-5)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    assert losses.shape == (7,)

    # Cut in two calls (the second continues at first=4): the same run.
    carry, head = fit(step, (w0, optax.sgd(lr).init(w0)), rng, 4, target, chunk=5)
    (w_cut, _), tail = fit(step, carry, rng, 3, target, first=4, chunk=2)
    np.testing.assert_allclose(w_cut, expected_w, rtol=1e-5)
    np.testing.assert_allclose(np.concatenate([head, tail]), expected_losses, rtol=1e-5)


def test_fit_reaches_the_least_squares_solution():
    x = jax.random.normal(jax.random.PRNGKey(0), (20, 3))
    y = x @ jnp.array([0.5, -1.0, 2.0]) + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (20,))
    loss = lambda w, key: jnp.mean((x @ w - y) ** 2)
    optimizer = optax.adam(0.1)
    w0 = jnp.zeros(3)
    (w, _), losses = fit(gradient_step(loss, optimizer), (w0, optimizer.init(w0)), jax.random.PRNGKey(2), 400, chunk=100)
    np.testing.assert_allclose(w, np.linalg.lstsq(np.asarray(x), np.asarray(y), rcond=None)[0], atol=1e-3)
    assert losses[-1] < losses[0]


def test_aux_values_progress_and_zero_steps():
    loss = lambda w, key: (jnp.sum(w**2), {"w": w})
    step = gradient_step(loss, optax.sgd(0.5), has_aux=True)
    carry = (jnp.ones(2), optax.sgd(0.5).init(jnp.ones(2)))

    class Bar:
        done = 0

        def update(self, n):
            self.done += n

    bar = Bar()
    (w, _), (losses, aux) = fit(step, carry, jax.random.PRNGKey(0), 3, chunk=2, progress=bar)
    assert bar.done == 3
    np.testing.assert_allclose(losses, [2.0, 0.0, 0.0])  # w -> w - 0.5 * 2w = 0 after one step
    np.testing.assert_allclose(aux["w"], [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    same, (empty, empty_aux) = fit(step, carry, jax.random.PRNGKey(0), 0)
    assert same is carry and empty.shape == (0,) and empty_aux["w"].shape == (0, 2)


@pytest.mark.parametrize("kwargs", [dict(steps=-1), dict(steps=2, chunk=0), dict(steps=2, first=-3)])
def test_bad_counts_are_refused(kwargs):
    step = gradient_step(lambda w, key: jnp.sum(w**2), optax.sgd(0.1))
    steps = kwargs.pop("steps")
    with pytest.raises(ValueError, match="fit needs steps >= 0"):
        fit(step, (jnp.ones(1), optax.sgd(0.1).init(jnp.ones(1))), jax.random.PRNGKey(0), steps, **kwargs)
