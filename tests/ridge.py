"""An inner problem with a closed form: linear regression pulled toward a learned centre.

Inner loss  L_in(w; theta) = (1/n) ||X w - y||^2 + (lam / 2) ||w - theta||^2   (support)
Outer loss  L_out(w)       = (1/m) ||X' w - y'||^2                              (query)

w*(theta) = A^{-1} (2/n X^T y + lam theta) with A = 2/n X^T X + lam I, so the exact
hypergradient is dL_out(w*)/dtheta = lam A^{-1} (2/m X'^T (X' w* - y')).
"""

import haiku as hk
import jax.numpy as jnp
import numpy as np

import metax

DIM, SHOTS_TRAIN, SHOTS_TEST, LAM = 5, 20, 15, 1.0


def ridge_module(reg_strength=LAM):
    net = hk.transform_with_state(lambda x, is_training: hk.Linear(1, with_bias=False, name="linear")(x))
    return metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), net, reg_strength=reg_strength, output_dim=1
    )


def ridge_task(seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=(DIM, 1))
    x = rng.normal(size=(SHOTS_TRAIN + SHOTS_TEST, DIM))
    y = x @ w_true + 0.3 * rng.normal(size=(SHOTS_TRAIN + SHOTS_TEST, 1))
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    return metax.data.MetaDataset(
        train=metax.data.Dataset(x[:SHOTS_TRAIN], y[:SHOTS_TRAIN]),
        test=metax.data.Dataset(x[SHOTS_TRAIN:], y[SHOTS_TRAIN:]),
    )


def theta_of(hparams):
    return np.asarray(hparams.base_learner_init["linear"]["w"])


def closed_form(task, theta, lam=LAM):
    """(w*, exact hypergradient) for the problem above, in numpy float64."""
    xs, ys = np.asarray(task.train.x, np.float64), np.asarray(task.train.y, np.float64)
    xq, yq = np.asarray(task.test.x, np.float64), np.asarray(task.test.y, np.float64)
    n, m = len(xs), len(xq)
    a = 2 / n * xs.T @ xs + lam * np.eye(DIM)
    w_star = np.linalg.solve(a, 2 / n * xs.T @ ys + lam * theta)
    grad_w = 2 / m * xq.T @ (xq @ w_star - yq)
    return w_star, lam * np.linalg.solve(a, grad_w), grad_w


def inner_lr(task, lam=LAM):
    """2 / (lambda_min + lambda_max) of A: the fastest safe gradient-descent step."""
    xs = np.asarray(task.train.x, np.float64)
    eig = np.linalg.eigvalsh(2 / len(xs) * xs.T @ xs + lam * np.eye(DIM))
    return 2 / (eig[0] + eig[-1])
