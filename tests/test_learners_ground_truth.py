"""Every gradient-based learner against the closed-form ridge hypergradient (tests/ridge.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metax
from ridge import closed_form, inner_lr, ridge_module, ridge_task, theta_of

STEPS = 120  # gradient descent on the ridge problem contracts ~0.6x per step: converged


def setup(learner_cls, seed=0, **kwargs):
    task = ridge_task(seed)
    lr = inner_lr(task)
    learner = learner_cls(
        meta_model=kwargs.pop("meta_model", None) or ridge_module(),
        batch_size=None,
        steps_inner=kwargs.pop("steps_inner", STEPS),
        optim_fn_inner=optax.sgd(lr),
        optim_fn_outer=optax.sgd(1.0),
        **kwargs,
    )
    meta_state = learner.reset(jax.random.PRNGKey(seed), task.train.x)
    # Move the centre away from the random init so the problem is generic.
    meta_state = meta_state._replace(
        hparams=jax.tree_util.tree_map(lambda w: w + 0.5, meta_state.hparams)
    )
    hgrads, _, metrics = jax.jit(learner.grad)(jax.random.PRNGKey(1), meta_state.hstate, meta_state.hparams, task)
    _, exact, grad_w = closed_form(task, theta_of(meta_state.hparams))
    return learner, theta_of(hgrads), exact, grad_w, metrics, task, meta_state, lr


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_conjugate_gradient_matches_exact_hypergradient(float64):
    for solver in ("cg", "gmres", "bicgstab"):
        _, hgrad, exact, *_ = setup(metax.learner.ConjugateGradient, steps_cg=20, linsolver=solver)
        assert rel_err(hgrad, exact) < 1e-4, solver


def test_conjugate_gradient_takes_a_solver_function(float64):
    _, hgrad, exact, *_ = setup(metax.learner.ConjugateGradient, steps_cg=None, linsolver=metax.learner.solve_cg(20))
    assert rel_err(hgrad, exact) < 1e-4


def test_cg_damping_and_reg_solve_the_stated_system(float64):
    learner, hgrad, exact, grad_w, _, task, meta_state, _ = setup(
        metax.learner.ConjugateGradient, steps_cg=30, cg_damping=2.0, cg_reg=0.5
    )
    xs = np.asarray(task.train.x)
    a = 2 / len(xs) * xs.T @ xs + np.eye(5)
    x = np.linalg.solve(a / 2.0 + 0.5 * np.eye(5), grad_w)
    assert rel_err(hgrad, 1.0 * x) < 1e-6


def test_recurrent_backprop_converges_with_more_steps(float64):
    errors = []
    for steps in (2, 8, 40):
        _, hgrad, exact, *_ = setup(metax.learner.RecurrentBackpropagation, steps_rbp=steps, alpha=0.2)
        errors.append(rel_err(hgrad, exact))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3


def test_t1t2_equals_its_formula(float64):
    # d_h L_out = 0 and d_p d_h L_in = -lam I, so T1-T2 gives lam * d_p L_out(w*).
    _, hgrad, exact, grad_w, *_ = setup(metax.learner.T1T2)
    np.testing.assert_allclose(hgrad, 1.0 * grad_w, rtol=1e-8)
    assert rel_err(hgrad, exact) > 1e-2  # and it is an approximation, not the exact gradient


@pytest.mark.parametrize(
    "learner_cls, order", [(metax.learner.EquilibriumPropagation, 1), (metax.learner.SymmetricEquilibriumPropagation, 2)]
)
def test_equilibrium_propagation_error_rate_in_beta(float64, learner_cls, order):
    betas = (0.1, 0.05, 0.025)
    errors = []
    for beta in betas:
        task = ridge_task(0)
        _, hgrad, exact, *_ = setup(
            learner_cls, steps_nudged=STEPS, optim_fn_nudged=optax.sgd(0.8 * inner_lr(task)), beta=beta
        )
        errors.append(np.linalg.norm(hgrad - exact))
    ratios = np.array(errors[1:]) / np.array(errors[:-1])
    # Halving beta halves an O(beta) error and quarters an O(beta^2) one.
    np.testing.assert_allclose(ratios, 0.5**order, atol=0.06)
    # Measured at beta = 0.025: 4.5% (plain) and 0.22% (symmetric) relative error.
    assert errors[-1] / np.linalg.norm(exact) < (0.06 if order == 1 else 0.005)


def test_reptile_one_sgd_step_is_lr_times_inner_gradient(float64):
    task = ridge_task(3)
    lr = 0.05
    learner = metax.learner.Reptile(ridge_module(reg_strength=None), None, 1, optax.sgd(lr), optax.sgd(1.0))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    hgrads, _, _ = jax.jit(learner.grad)(jax.random.PRNGKey(1), meta_state.hstate, meta_state.hparams, task)
    # Reptile adapts on support and query together.
    x = np.concatenate([task.train.x, task.test.x])
    y = np.concatenate([task.train.y, task.test.y])
    theta = theta_of(meta_state.hparams)
    inner_grad = 2 / len(x) * x.T @ (x @ theta - y)
    np.testing.assert_allclose(theta_of(hgrads), lr * inner_grad, rtol=1e-10)


def test_buffered_reptile_sums_partial_gradients_of_non_init_hparams(float64):
    # With the iMAML pull the inner loss depends on theta; only the initialisation is an
    # hparam here, so the displacement wins and BufferedReptile equals Reptile.
    task = ridge_task(4)
    args = (ridge_module(), None, 5, optax.sgd(0.05), optax.sgd(1.0))
    plain, buffered = metax.learner.Reptile(*args), metax.learner.BufferedReptile(*args)
    meta_state = plain.reset(jax.random.PRNGKey(0), task.train.x)
    g_plain, g_buffered = jax.jit(lambda key: (  # one program; eagerly every op compiles on its own
        plain.grad(key, meta_state.hstate, meta_state.hparams, task)[0],
        buffered.grad(key, meta_state.hstate, meta_state.hparams, task)[0],
    ))(jax.random.PRNGKey(1))
    np.testing.assert_allclose(theta_of(g_plain), theta_of(g_buffered), rtol=1e-12)


def test_converged_maml_agrees_with_conjugate_gradient(float64):
    _, maml, exact, *_ = setup(metax.learner.ModelAgnosticMetaLearning, first_order=False)
    _, cg, *_ = setup(metax.learner.ConjugateGradient, steps_cg=20)
    assert rel_err(maml, cg) < 1e-6
    assert rel_err(maml, exact) < 1e-6


def test_learners_update_under_jit_and_lower_the_outer_loss():
    task = ridge_task(5, dtype=jnp.float32)
    batch = jax.tree_util.tree_map(lambda a: jnp.stack([a, a]), task)
    lr = float(inner_lr(task))
    common = dict(batch_size=None, steps_inner=60, optim_fn_inner=optax.sgd(lr), optim_fn_outer=optax.sgd(0.1))
    learners = [
        metax.learner.ConjugateGradient(ridge_module(), steps_cg=10, **common),
        metax.learner.RecurrentBackpropagation(ridge_module(), steps_rbp=20, alpha=0.2, **common),
        metax.learner.T1T2(ridge_module(), **common),
        metax.learner.EquilibriumPropagation(ridge_module(), steps_nudged=30, optim_fn_nudged=optax.sgd(lr), beta=0.1, **common),
        metax.learner.SymmetricEquilibriumPropagation(ridge_module(), steps_nudged=30, optim_fn_nudged=optax.sgd(lr), beta=0.1, **common),
        metax.learner.Reptile(ridge_module(reg_strength=None), **{**common, "steps_inner": 3, "optim_fn_inner": optax.sgd(0.05)}),
        metax.learner.BufferedReptile(ridge_module(reg_strength=None), **{**common, "steps_inner": 3, "optim_fn_inner": optax.sgd(0.05)}),
    ]
    for learner in learners:
        meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
        update = jax.jit(learner.update)
        losses = []
        for step in range(15):
            meta_state, metrics = update(jax.random.PRNGKey(step), meta_state, batch)
            losses.append(float(metrics["loss_outer"]))
        assert np.all(np.isfinite(losses)), type(learner).__name__
        assert losses[-1] < losses[0], (type(learner).__name__, losses)


class _ShiftOnly(metax.module.MetaModule):
    """Meta-learned weights; per task only an output shift, started at zero."""

    def __init__(self):
        super().__init__(metax.energy.SquaredError(), metax.energy.SquaredError())

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        return input @ hparams["w"] + params["shift"], (state, hstate)

    def reset_hparams(self, rng, sample_input):
        return {"w": jnp.zeros((sample_input.shape[-1], 1))}, {}

    def reset_params(self, rng, hparams, hstate, sample_input):
        return {"shift": jnp.zeros(())}, {}


def test_bad_learner_configurations_fail_at_construction():
    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match="no params that start from an hparam"):
        metax.learner.Reptile(_ShiftOnly(), None, 1, sgd, sgd)
    with pytest.raises(ValueError, match="reg_strength"):
        metax.learner.ConjugateGradient(ridge_module(reg_strength=None), None, 5, 5, sgd, sgd)
    with pytest.raises(ValueError, match="reg_strength"):
        metax.learner.EquilibriumPropagation(ridge_module(reg_strength=None), None, 5, 5, sgd, sgd, sgd, 0.1)
    for beta in (0.0, -0.1):
        with pytest.raises(ValueError, match="beta must be > 0"):
            metax.learner.SymmetricEquilibriumPropagation(ridge_module(), None, 5, 5, sgd, sgd, sgd, beta)
    with pytest.raises(ValueError, match="linsolver"):
        metax.learner.ConjugateGradient(ridge_module(), None, 5, 5, sgd, sgd, linsolver="lu")
    # The shift-only module is fine for implicit learners: its hparams act in the loss.
    metax.learner.T1T2(_ShiftOnly(), None, 5, sgd, sgd)
