"""MAML meta-gradients against finite differences, first-order identity, batching, jit."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import learned_init, sinusoid_batch, tiny_mlp


def one_task(batch, i=0):
    return jax.tree_util.tree_map(lambda a: a[i], batch)


def make_maml(steps, first_order=False, lr=0.1, outer=None, **kwargs):
    return metax.learner.ModelAgnosticMetaLearning(
        meta_model=kwargs.pop("meta_model", None) or learned_init(),
        batch_size=kwargs.pop("batch_size", None),
        steps_inner=steps,
        optim_fn_inner=optax.sgd(lr),
        optim_fn_outer=outer or optax.sgd(1.0),
        first_order=first_order,
        **kwargs,
    )


def central_differences(fn, flat, eps):
    grads = np.zeros_like(flat)
    for i in range(flat.size):
        step = np.zeros_like(flat)
        step[i] = eps
        grads[i] = (fn(flat + step) - fn(flat - step)) / (2 * eps)
    return grads


@pytest.mark.parametrize("steps", [1, 3])
def test_second_order_meta_gradient_matches_finite_differences(float64, steps):
    learner = make_maml(steps)
    task = one_task(sinusoid_batch(0, 1, dtype=jnp.float64))
    rng = jax.random.PRNGKey(1)
    meta_state = learner.reset(jax.random.PRNGKey(2), task.train.x)
    flat, unravel = ravel_pytree(meta_state.hparams)
    assert flat.dtype == jnp.float64

    hgrads, _, _ = learner.grad(rng, meta_state.hstate, meta_state.hparams, task)
    loss_of = jax.jit(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, steps)[0])
    fd = central_differences(lambda f: float(loss_of(f)), np.asarray(flat), eps=1e-6)

    analytic = np.asarray(ravel_pytree(hgrads)[0])
    rel_err = np.linalg.norm(analytic - fd) / np.linalg.norm(fd)
    assert rel_err < 1e-5, rel_err
    # Sanity: the inner loop matters, so the meta-gradient differs from the gradient at init.
    no_adapt = jax.grad(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, 0)[0])(flat)
    assert np.linalg.norm(np.asarray(no_adapt) - analytic) > 1e-3 * np.linalg.norm(analytic)


def test_first_order_equals_outer_gradient_at_adapted_params(float64):
    steps = 3
    learner = make_maml(steps, first_order=True)
    task = one_task(sinusoid_batch(3, 1, dtype=jnp.float64))
    rng = jax.random.PRNGKey(4)
    meta_state = learner.reset(jax.random.PRNGKey(5), task.train.x)
    hgrads, _, _ = learner.grad(rng, meta_state.hstate, meta_state.hparams, task)

    # Independent route: adapt explicitly, then differentiate the query loss at the end point.
    model = learner.meta_model
    params, state = model.reset_params(rng, meta_state.hparams, meta_state.hstate, task.train.x)
    (state, adapted), _ = learner.adapt(rng, state, meta_state.hstate, params, meta_state.hparams, task.train, steps)

    def query_loss(weights):
        pred, _ = model.base_learner.apply(weights, state.base_learner, None, task.test.x, False)
        return jnp.mean((pred - task.test.y) ** 2)

    expected = jax.grad(query_loss)(adapted.base_learner)
    np.testing.assert_allclose(
        ravel_pytree(hgrads.base_learner_init)[0], ravel_pytree(expected)[0], rtol=1e-10, atol=1e-12
    )
    # And it is not the second-order gradient.
    full = make_maml(steps).grad(rng, meta_state.hstate, meta_state.hparams, task)[0]
    assert not np.allclose(ravel_pytree(full)[0], ravel_pytree(hgrads)[0], rtol=1e-3)


def test_update_averages_per_task_meta_gradients_and_jit_matches_eager():
    learner = make_maml(2, outer=optax.sgd(1.0))
    batch = sinusoid_batch(6, 4)
    meta_state = learner.reset(jax.random.PRNGKey(7), batch.train.x[0])
    rng = jax.random.PRNGKey(8)

    new_state, metrics = learner.update(rng, meta_state, batch)
    new_state_jit, metrics_jit = jax.jit(learner.update)(rng, meta_state, batch)

    rngs = jax.random.split(rng, 4)
    grad = jax.jit(learner.grad)  # one program for the four tasks (eagerly, each op compiles alone)
    per_task = [grad(rngs[i], meta_state.hstate, meta_state.hparams, one_task(batch, i)) for i in range(4)]
    mean_grad = jax.tree_util.tree_map(lambda *g: sum(g) / 4, *[g for g, _, _ in per_task])
    expected = jax.tree_util.tree_map(lambda h, g: h - g, meta_state.hparams, mean_grad)

    flat = lambda tree: np.asarray(ravel_pytree(tree)[0])
    np.testing.assert_allclose(flat(new_state.hparams), flat(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat(new_state_jit.hparams), flat(new_state.hparams), rtol=1e-5, atol=1e-6)
    mean_loss = np.mean([float(m["loss_outer"]) for _, _, m in per_task])
    np.testing.assert_allclose(metrics["loss_outer"], mean_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics_jit["loss_outer"], metrics["loss_outer"], rtol=1e-5)
    np.testing.assert_allclose(metrics["gradnorm_outer"], np.linalg.norm(flat(mean_grad)), rtol=1e-5)


def test_eval_with_zero_steps_scores_the_initialisation():
    learner = make_maml(3)
    batch = sinusoid_batch(9, 5)
    meta_state = learner.reset(jax.random.PRNGKey(10), batch.train.x[0])
    (_, params), metrics = jax.jit(learner.eval, static_argnames="steps")(jax.random.PRNGKey(0), meta_state, batch, 0)
    apply = learner.meta_model.base_learner.apply
    pred, _ = jax.vmap(lambda x: apply(meta_state.hparams.base_learner_init, {}, None, x, False))(batch.test.x)
    np.testing.assert_allclose(metrics["loss_outer"], jnp.mean((pred - batch.test.y) ** 2), rtol=1e-5)
    # params come back per task, with a leading task axis.
    assert jax.tree_util.tree_leaves(params)[0].shape[0] == 5


def test_adapt_reduces_inner_loss_and_extra_metrics_are_exact():
    learner = make_maml(20, lr=0.05, extra_metrics=True)
    task = one_task(sinusoid_batch(11, 1, shots_train=20))
    meta_state = learner.reset(jax.random.PRNGKey(12), task.train.x)
    params, state = learner.meta_model.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)
    plain = make_maml(20, lr=0.05)
    apply = learner.meta_model.base_learner.apply
    mse = lambda w: jnp.mean((apply(w, {}, None, task.train.x, True)[0] - task.train.y) ** 2)

    # Both loops and the reference losses in one compiled program (eagerly, each op compiles alone).
    @jax.jit
    def adapt_both(state, params):
        (state, adapted), metrics = learner.adapt(
            jax.random.PRNGKey(0), state, meta_state.hstate, params, meta_state.hparams, task.train, 20
        )
        _, plain_metrics = plain.adapt(jax.random.PRNGKey(0), state, meta_state.hstate, params, meta_state.hparams, task.train, 20)
        return metrics, plain_metrics, mse(params.base_learner), mse(adapted.base_learner)

    metrics, plain_metrics, mse_init, mse_adapted = adapt_both(state, params)
    np.testing.assert_allclose(metrics["loss_inner_init"], mse_init, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_inner_final"], mse_adapted, rtol=1e-5)
    assert metrics["loss_inner_final"] < 0.9 * metrics["loss_inner_init"]
    # Without extra_metrics no extra pass is made and no final metric is reported.
    assert set(plain_metrics) == {"loss_inner_init", "nonfinite_inner"}
    assert int(plain_metrics["nonfinite_inner"]) == 0


def test_minibatch_inner_loop_uses_random_subsets():
    task = one_task(sinusoid_batch(13, 1, shots_train=12))
    full = make_maml(1, lr=0.1)
    mini = make_maml(1, lr=0.1, batch_size=3)
    meta_state = full.reset(jax.random.PRNGKey(14), task.train.x)
    params, state = full.meta_model.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)
    args = (state, meta_state.hstate, params, meta_state.hparams)

    # All four loops in one compiled program (eagerly, each op compiles alone).
    @jax.jit
    def adapted_params(subset):
        adapt = lambda learner, key, data: learner.adapt(jax.random.PRNGKey(key), *args, data, 1)[0][1]
        return adapt(full, 0, task.train), adapt(mini, 0, task.train), adapt(mini, 1, task.train), adapt(full, 0, subset)

    # A minibatch step equals a full-batch step on the chosen subset: the gradient of the
    # mean over 3 samples lies in the span of per-sample gradients, so check one concrete
    # case by re-deriving the subset from the same key.
    rng_step = jax.random.split(jax.random.split(jax.random.PRNGKey(0))[0], 1)[0]
    rng_batch, _ = jax.random.split(rng_step)
    subset = metax.data.get_batch(rng_batch, task.train, 3)
    p_full, p_a, p_b, p_subset = adapted_params(subset)
    flat = lambda tree: np.asarray(ravel_pytree(tree)[0])
    assert not np.allclose(flat(p_full), flat(p_a))
    assert not np.allclose(flat(p_a), flat(p_b))
    np.testing.assert_allclose(flat(p_a), flat(p_subset), rtol=1e-6)


def test_bad_input_errors():
    learner = make_maml(1)
    batch = sinusoid_batch(15, 2)
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    with pytest.raises(ValueError, match="task axis"):
        learner.update(jax.random.PRNGKey(0), meta_state, one_task(batch))
    with pytest.raises(TypeError, match="static"):
        jax.jit(learner.eval)(jax.random.PRNGKey(0), meta_state, batch, 3)
    with pytest.raises(TypeError, match="optax"):
        make_maml(1, outer="adam")
    with pytest.raises(ValueError, match="batch_size"):
        make_maml(1, batch_size=0)
    with pytest.raises(ValueError, match="steps_inner"):
        make_maml(-1)
    too_big = make_maml(1, batch_size=50)
    with pytest.raises(ValueError, match="batch_size=50"):
        too_big.update(jax.random.PRNGKey(0), meta_state, batch)
    wrong_width = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(),
        base_learner=learned_init().base_learner, output_dim=3,
    )
    with pytest.raises(ValueError, match="output_dim=3"):
        wrong_width.reset_hparams(jax.random.PRNGKey(0), batch.train.x[0])
    with pytest.raises(TypeError, match="haiku transform"):
        metax.module.LearnedInit(metax.energy.SquaredError(), metax.energy.SquaredError(), base_learner=lambda x: x)


def test_reg_strength_adds_the_imaml_pull():
    module = learned_init(reg_strength=2.0)
    learner = make_maml(1, meta_model=module)
    task = one_task(sinusoid_batch(16, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    params, state = module.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)
    shifted = jax.tree_util.tree_map(lambda p: p + 0.1, params)
    value, (_, metrics) = learner.inner_loss(jax.random.PRNGKey(0), state, meta_state.hstate, shifted, meta_state.hparams, task.train)
    n_params = ravel_pytree(params)[0].size
    np.testing.assert_allclose(metrics["loss_reg"], 0.5 * 2.0 * n_params * 0.01, rtol=1e-4)
    np.testing.assert_allclose(value, metrics["loss"] + metrics["loss_reg"], rtol=1e-6)


def test_truncation_and_remat_of_the_shared_loop(float64):
    """Truncated backprop equals differentiating only the last k steps from a constant
    start; remat changes memory, not values."""
    learner = make_maml(4)
    task = one_task(sinusoid_batch(20, 1, dtype=jnp.float64))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    energy = learner.support_energy(meta_state.hstate, task.train)
    params, state = learner.meta_model.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)
    rng = jax.random.PRNGKey(3)

    def query_loss_after(h, **kwargs):
        p0 = learner.meta_model.reset_params(jax.random.PRNGKey(0), h, meta_state.hstate, task.train.x)[0]
        _, adapted, _, _ = learner.descend(rng, state, p0, h, energy, optax.sgd(0.1), 4, **kwargs)
        return learner.query_energy(rng, state, meta_state.hstate, adapted, h, task.test)[0]

    flat = lambda t: np.asarray(ravel_pytree(t)[0])
    full = jax.grad(query_loss_after)(meta_state.hparams)
    np.testing.assert_allclose(flat(jax.grad(lambda h: query_loss_after(h, remat=True))(meta_state.hparams)), flat(full), rtol=1e-12)
    np.testing.assert_allclose(flat(jax.grad(lambda h: query_loss_after(h, truncation=4))(meta_state.hparams)), flat(full), rtol=1e-12)
    # LearnedInit's hparams act only through the start, which truncation cuts off: zero.
    truncated = jax.grad(lambda h: query_loss_after(h, truncation=2))(meta_state.hparams)
    assert np.all(flat(truncated) == 0)
    with pytest.raises(ValueError, match="truncation=5"):
        query_loss_after(meta_state.hparams, truncation=5)


def test_first_order_classification_by_hand(float64):
    """Few-shot classification (the Omniglot setting): the first-order meta-gradient is the
    query cross-entropy's gradient at hand-written SGD's end point (0 steps: at the init),
    for all weights (LearnedInit) and for ANIL, whose body gets the query gradient and
    whose head follows SGD on the fixed body's features."""
    ways, lr, steps = 3, 0.5, 2
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    labels = jnp.arange(ways)
    task = metax.data.MetaDataset(
        metax.data.Dataset(jax.random.normal(keys[0], (ways, 4), jnp.float64), labels),
        metax.data.Dataset(jax.random.normal(keys[1], (2 * ways, 4), jnp.float64), jnp.tile(labels, 2)),
    )
    ce = lambda logits, y: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    sgd = lambda tree, grads: jax.tree_util.tree_map(lambda w, g: w - lr * g, tree, grads)
    flat = lambda tree: np.asarray(ravel_pytree(tree)[0])
    xent = metax.energy.CrossEntropy()

    # Each case's meta-gradient and its hand-written reference in one compiled program
    # (run eagerly, the reference compiled every op on its own).
    net = tiny_mlp((5,), ways)
    full = metax.module.LearnedInit(xent, xent, base_learner=net)
    for k in (0, steps):
        learner = make_maml(k, first_order=True, lr=lr, meta_model=full)
        meta_state = learner.reset(keys[2], task.train.x)

        @jax.jit
        def meta_gradient_and_reference(meta_state):
            hgrads = learner.grad(keys[2], meta_state.hstate, meta_state.hparams, task)[0]
            forward = lambda w, x: net.apply(w, meta_state.hstate.base_learner, None, x, True)[0]
            weights = meta_state.hparams.base_learner_init
            for _ in range(k):
                weights = sgd(weights, jax.grad(lambda w: ce(forward(w, task.train.x), task.train.y))(weights))
            return hgrads, jax.grad(lambda w: ce(forward(w, task.test.x), task.test.y))(weights)

        hgrads, expected = meta_gradient_and_reference(meta_state)
        np.testing.assert_allclose(flat(hgrads), flat(expected), rtol=1e-10, atol=1e-12)

    body = tiny_mlp((5,), 4)
    anil = metax.module.AlmostNoInnerLoop(xent, xent, body=body, output_dim=ways)
    learner = make_maml(steps, first_order=True, lr=lr, meta_model=anil)
    meta_state = learner.reset(keys[2], task.train.x)

    @jax.jit
    def anil_meta_gradient_and_reference(meta_state):
        hgrads = learner.grad(keys[2], meta_state.hstate, meta_state.hparams, task)[0]
        features = lambda b, x: body.apply(b, meta_state.hstate.body, None, x, True)[0]
        logits = lambda b, head, x: features(b, x) @ head["head"]["w"] + head["head"]["b"]
        head = meta_state.hparams.head_init
        for _ in range(steps):
            head = sgd(head, jax.grad(lambda h: ce(logits(meta_state.hparams.body, h, task.train.x), task.train.y))(head))
        test_loss = lambda b, h: ce(logits(b, h, task.test.x), task.test.y)
        return hgrads, jax.grad(test_loss, argnums=(0, 1))(meta_state.hparams.body, head)

    hgrads, (body_grad, head_grad) = anil_meta_gradient_and_reference(meta_state)
    np.testing.assert_allclose(flat(hgrads.body), flat(body_grad), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(flat(hgrads.head_init), flat(head_grad), rtol=1e-10, atol=1e-12)
