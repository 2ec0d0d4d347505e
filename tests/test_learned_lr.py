"""Learned inner optimisers (Meta-SGD, per-step rates, scalar rate) through the learners."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import learned_init, sinusoid_batch
from test_maml import central_differences, one_task
from ridge import ridge_module


def maml(optimizer, steps=2, first_order=False, meta_model=None):
    return metax.learner.ModelAgnosticMetaLearning(
        meta_model or learned_init(), None, steps, optimizer, optax.sgd(1.0), first_order=first_order
    )


def perturbed(meta_state, scale=0.1, seed=0):
    """Distinct per-entry rates, so the test sees more than the initial constant."""
    theta = meta_state.hparams.optimizer
    flat, unravel = ravel_pytree(theta)
    noise = jax.random.uniform(jax.random.PRNGKey(seed), flat.shape, flat.dtype, -scale, scale)
    return meta_state._replace(hparams=meta_state.hparams._replace(optimizer=unravel(flat + noise * jnp.abs(flat))))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda: metax.kernel.MetaSGD(0.1),
        lambda: metax.kernel.MetaSGD(0.1, parameterization="log"),
        lambda: metax.kernel.LayerStepLR(0.1, num_steps=2, parameterization="softplus"),
        lambda: metax.kernel.ScalarLR(0.1),
    ],
)
def test_meta_gradient_matches_finite_differences(float64, make_optimizer):
    learner = maml(make_optimizer())
    task = one_task(sinusoid_batch(0, 1, dtype=jnp.float64))
    meta_state = perturbed(learner.reset(jax.random.PRNGKey(1), task.train.x))
    flat, unravel = ravel_pytree(meta_state.hparams)
    rng = jax.random.PRNGKey(2)
    hgrads, _, _ = jax.jit(learner.grad)(rng, meta_state.hstate, meta_state.hparams, task)  # eagerly: a compile per op
    loss_of = jax.jit(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, 2)[0])
    fd = central_differences(lambda f: float(loss_of(f)), np.asarray(flat), eps=1e-6)
    analytic = np.asarray(ravel_pytree(hgrads)[0])
    assert np.linalg.norm(analytic - fd) / np.linalg.norm(fd) < 1e-5
    # The rates themselves receive a real gradient.
    assert np.linalg.norm(ravel_pytree(hgrads.optimizer)[0]) > 1e-6


def test_frozen_meta_sgd_reproduces_maml_with_sgd(float64):
    alpha = 0.07
    task = one_task(sinusoid_batch(3, 1, dtype=jnp.float64))
    rng = jax.random.PRNGKey(4)
    learned, plain = maml(metax.kernel.MetaSGD(alpha), steps=3), maml(optax.sgd(alpha), steps=3)
    state_learned = learned.reset(jax.random.PRNGKey(5), task.train.x)
    state_plain = plain.reset(jax.random.PRNGKey(5), task.train.x)
    np.testing.assert_array_equal(
        ravel_pytree(state_learned.hparams.module)[0], ravel_pytree(state_plain.hparams)[0]
    )
    g_learned, g_plain = jax.jit(lambda: (  # one program; eagerly every op compiles on its own
        learned.grad(rng, state_learned.hstate, state_learned.hparams, task)[0],
        plain.grad(rng, state_plain.hstate, state_plain.hparams, task)[0],
    ))()
    np.testing.assert_allclose(ravel_pytree(g_learned.module)[0], ravel_pytree(g_plain)[0], rtol=1e-12, atol=1e-14)


def test_first_order_still_differentiates_the_rates(float64):
    # One step: p1 = p0 - lr * g(p0), so dL(p1)/dlr = -g(p0) * grad L(p1) in both orders.
    task = one_task(sinusoid_batch(6, 1, dtype=jnp.float64))
    learner = maml(metax.kernel.MetaSGD(0.05), steps=1, first_order=True)
    meta_state = learner.reset(jax.random.PRNGKey(7), task.train.x)
    model = learner.meta_model.module
    p0 = meta_state.hparams.module.base_learner_init
    mse = lambda w, data: jnp.mean((model.base_learner.apply(w, {}, None, data.x, False)[0] - data.y) ** 2)

    @jax.jit  # the learner and the hand-written reference in one program, not one per op
    def both():
        hgrads = learner.grad(jax.random.PRNGKey(8), meta_state.hstate, meta_state.hparams, task)[0]
        g0 = jax.grad(mse)(p0, task.train)
        p1 = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, p0, g0)
        return hgrads, jax.tree_util.tree_map(lambda a, b: -a * b, g0, jax.grad(mse)(p1, task.test))

    hgrads, expected = both()
    np.testing.assert_allclose(
        ravel_pytree(hgrads.optimizer.base_learner)[0], ravel_pytree(expected)[0], rtol=1e-9, atol=1e-12
    )


def test_meta_training_learns_rates_that_beat_the_initial_ones():
    sample_task = metax.data.make_task_sampler("sinusoid", 10, 10)
    learner = metax.learner.ModelAgnosticMetaLearning(
        learned_init(base_learner=metax.models.mlp_fn([40, 40], 1)), None, 1,
        metax.kernel.MetaSGD(0.01), optax.adam(1e-3),
    )
    # 200 steps: measured loss ratio 0.61 (bound 0.9) and rates moved by 0.25 (bound 0.005);
    # 600 steps gave 0.42 and 0.50 for three times the time.
    stream = metax.data.MetaBatchStream(sample_task, 25, jax.random.PRNGKey(0), num_batches=200)
    meta_state = learner.reset(jax.random.PRNGKey(1), stream.sample_input)
    update = jax.jit(learner.update)
    for step, metabatch in enumerate(stream):
        meta_state, _ = update(jax.random.PRNGKey(step), meta_state, metabatch)

    rates = learner.learned_optimizer.rates(meta_state.hparams.optimizer)
    flat_rates = np.asarray(ravel_pytree(rates)[0])
    assert np.max(np.abs(flat_rates - 0.01)) > 0.005  # the rates moved

    held_out = metax.data.sample_metabatch(jax.random.PRNGKey(77), sample_task, 500)
    evaluate = jax.jit(learner.eval, static_argnames="steps")
    learned = float(evaluate(jax.random.PRNGKey(2), meta_state, held_out, 1)[1]["loss_outer"])
    params, _ = learner.meta_model.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, held_out.train.x[0])
    initial_theta = learner.learned_optimizer.init(None, params)
    frozen = meta_state._replace(hparams=meta_state.hparams._replace(optimizer=initial_theta))
    with_initial_rates = float(evaluate(jax.random.PRNGKey(2), frozen, held_out, 1)[1]["loss_outer"])
    assert learned < 0.9 * with_initial_rates, (learned, with_initial_rates)


def test_learners_that_cannot_learn_an_optimizer_refuse():
    sgd = optax.sgd(0.1)
    meta_sgd = metax.kernel.MetaSGD(0.1)
    builders = {
        "Reptile": lambda: metax.learner.Reptile(ridge_module(), None, 2, meta_sgd, sgd),
        "BufferedReptile": lambda: metax.learner.BufferedReptile(ridge_module(), None, 2, meta_sgd, sgd),
        "ConjugateGradient": lambda: metax.learner.ConjugateGradient(ridge_module(), None, 2, 2, meta_sgd, sgd),
        "RecurrentBackpropagation": lambda: metax.learner.RecurrentBackpropagation(ridge_module(), None, 2, 2, meta_sgd, sgd, 0.1),
        "T1T2": lambda: metax.learner.T1T2(ridge_module(), None, 2, meta_sgd, sgd),
        "EquilibriumPropagation": lambda: metax.learner.EquilibriumPropagation(ridge_module(), None, 2, 2, meta_sgd, sgd, sgd, 0.1),
        "SymmetricEquilibriumPropagation": lambda: metax.learner.SymmetricEquilibriumPropagation(ridge_module(), None, 2, 2, meta_sgd, sgd, sgd, 0.1),
    }
    for name, build in builders.items():
        with pytest.raises(ValueError, match=f"{name} cannot learn the inner optimiser MetaSGD.*ModelAgnosticMetaLearning"):
            build()


def test_evosax_evolves_the_rates():
    learner = metax.learner.Evosax(
        learned_init(), None, 2, metax.kernel.ScalarLR(0.05), (1,), "Open_ES", {"population_size": 8, "sigma_init": 0.05}
    )
    batch = sinusoid_batch(9, 4)
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    new_state, metrics = jax.jit(learner.update)(jax.random.PRNGKey(1), meta_state, batch)
    assert np.isfinite(metrics["loss_outer"])
    assert float(new_state.hparams.optimizer) != float(meta_state.hparams.optimizer)


def test_bad_learned_optimizer_input():
    for parameterization in ("log", "softplus"):
        for lr in (0.0, -0.1):
            with pytest.raises(ValueError, match=f"lr_init={lr}"):
                metax.kernel.MetaSGD(lr, parameterization=parameterization)
    with pytest.raises(ValueError, match="parameterization"):
        metax.kernel.MetaSGD(0.1, parameterization="sigmoid")
    with pytest.raises(ValueError, match="num_steps=2, shorter than steps_inner=3"):
        maml(metax.kernel.LayerStepLR(0.1, num_steps=2), steps=3)
    short = maml(metax.kernel.LayerStepLR(0.1, num_steps=2), steps=2)
    batch = sinusoid_batch(10, 2)
    meta_state = short.reset(jax.random.PRNGKey(0), batch.train.x[0])
    with pytest.raises(ValueError, match="schedule of 2 steps"):
        short.eval(jax.random.PRNGKey(0), meta_state, batch, 5)
    # A theta built for other params names the first differing tree path.
    learner = maml(metax.kernel.MetaSGD(0.1))
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    wrong = {"base_learner": {"other/linear": {"w": jnp.zeros((1, 1))}}}
    with pytest.raises(ValueError, match=r"theta does not match the parameter tree \(params.*has no entry"):
        learner.learned_optimizer.optimizer(wrong).init(meta_state.hparams.module.base_learner_init)


def test_truncated_rate_gradient_equals_restarting_from_a_constant(float64):
    """d/dlr with truncation=2 of a 4-step loop == d/dlr of 2 steps started from the
    (constant) params the first 2 steps reach."""
    learner = maml(metax.kernel.ScalarLR(0.05), steps=4)
    task = one_task(sinusoid_batch(21, 1, dtype=jnp.float64))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    energy = learner.support_energy(meta_state.hstate, task.train)
    p0, state = learner.meta_model.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)
    rng = jax.random.PRNGKey(3)
    rngs = jax.random.split(rng, 4)
    h = meta_state.hparams

    def truncated(theta):
        hp = h._replace(optimizer=theta)
        opt = learner.inner_optimizer(hp)
        _, adapted, _, _ = learner.descend(rng, state, p0, hp, energy, opt, 4, truncation=2)
        return learner.query_energy(rng, state, meta_state.hstate, adapted, hp, task.test)[0]

    def restarted(theta):
        hp = h._replace(optimizer=theta)
        opt = learner.inner_optimizer(hp)
        params = p0
        for i in range(4):
            if i == 2:
                params = jax.lax.stop_gradient(params)
            grads = jax.grad(lambda p: energy(rngs[i], state, p, hp)[0])(params)
            updates, _ = opt.update(grads, opt.init(params), params)
            params = optax.apply_updates(params, updates)
        return learner.query_energy(rng, state, meta_state.hstate, params, hp, task.test)[0]

    theta = h.optimizer
    # One compiled program for both (eagerly, every op of both loops compiles on its own).
    got, want = jax.jit(lambda theta: (jax.grad(truncated)(theta), jax.grad(restarted)(theta)))(theta)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert abs(float(got)) > 1e-6
