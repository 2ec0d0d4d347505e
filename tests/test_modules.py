"""ANIL, CAVIA, GainMod, ComplexSynapse: MAML meta-gradients against finite differences,
what each module adapts (checked against hand-written forward passes), batch-norm state,
CAVIA's context as a task code, and errors for bad input."""

import copy

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import sinusoid_batch, tiny_mlp
from metax.utils import get_field

SE = metax.energy.SquaredError


def one_task(batch, i=0):
    return jax.tree_util.tree_map(lambda a: a[i], batch)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def mlp_body(hidden=(3,), batch_norm=False, activation=jnp.tanh):
    """Hidden layers only (activated), passing gain/shift on: a body for ANIL and GainMod."""

    def body(x, is_training, gain=None, shift=None):
        mlp = metax.models.MultilayerPerceptron(
            hidden, activation=activation, activate_final=True, batch_norm=batch_norm
        )
        return mlp(x, is_training, gain=gain, shift=shift)

    return hk.transform_with_state(body)


def context_after_norm_model(x, is_training, context):
    """A CAVIA network that adds the context after a batch-normalised first layer."""
    hidden = metax.models.MultilayerPerceptron((8,), batch_norm=True)(x, is_training)
    hidden = jnp.tanh(hidden + hk.Linear(8, with_bias=False)(context))
    return hk.Linear(1)(hidden)


MODULES = {
    "anil": lambda: metax.module.ANIL(SE(), SE(), mlp_body(), output_dim=1),
    "anil_reg": lambda: metax.module.ANIL(SE(), SE(), mlp_body(), output_dim=1, reg_strength=0.5),
    "cavia": lambda: metax.module.CAVIA(SE(), SE(), tiny_mlp((4,)), embedding_dim=2),
    "cavia_learn_init": lambda: metax.module.CAVIA(SE(), SE(), tiny_mlp((4,)), 2, learn_init=True),
    "gainmod": lambda: metax.module.GainMod(SE(), SE(), mlp_body((3, 3)), (3, 3), 1, False, None),
    "gainmod_head_reg": lambda: metax.module.GainMod(SE(), SE(), mlp_body((3, 3)), (3, 3), 1, True, 0.5),
    "compsyn": lambda: metax.module.ComplexSynapse(SE(), SE(), tiny_mlp((3,)), l2_reg=0.5, l2_fixed=False),
    "compsyn_fixed": lambda: metax.module.ComplexSynapse(SE(), SE(), tiny_mlp((3,)), l2_reg=0.5, l2_fixed=True),
}

# Which hparams fields each configuration meta-learns (and must receive a gradient).
LEARNED_FIELDS = {
    "anil": ("body", "head_init"),
    "anil_reg": ("body", "head_init"),
    "cavia": ("base",),
    "cavia_learn_init": ("base", "context_init"),
    "gainmod": ("body", "gain_init", "shift_init", "head_init"),
    "gainmod_head_reg": ("body", "gain_init", "shift_init", "head_init"),
    "compsyn": ("omega", "log_lambda"),
    "compsyn_fixed": ("omega",),
}


def maml(module, steps, lr=0.3, outer=None):
    return metax.learner.MAML(module, None, steps, optax.sgd(lr), outer or optax.sgd(0.1))


def central_differences(fn, flat_params, eps=1e-6):
    grads = np.zeros_like(flat_params)
    for i in range(flat_params.size):
        step = np.zeros_like(flat_params)
        step[i] = eps
        grads[i] = (fn(flat_params + step) - fn(flat_params - step)) / (2 * eps)
    return grads


# -- meta-gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODULES))
def test_maml_meta_gradient_matches_finite_differences(float64, name):
    steps = 2
    learner = maml(MODULES[name](), steps)
    task = one_task(sinusoid_batch(0, 1, dtype=jnp.float64))
    rng = jax.random.PRNGKey(1)
    meta_state = learner.reset(jax.random.PRNGKey(2), task.train.x)
    flat_h, unravel = ravel_pytree(meta_state.hparams)
    assert flat_h.dtype == jnp.float64

    hgrads, _, _ = learner.grad(rng, meta_state.hstate, meta_state.hparams, task)
    loss_of = jax.jit(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, steps)[0])
    fd = central_differences(lambda f: float(loss_of(f)), np.asarray(flat_h))
    analytic = flat(hgrads)
    assert np.linalg.norm(analytic - fd) / np.linalg.norm(fd) < 1e-5

    # Every meta-learned field gets a gradient, and adaptation changes it.
    for field in LEARNED_FIELDS[name]:
        assert np.linalg.norm(flat(getattr(hgrads, field))) > 1e-8, field
    no_adapt = jax.grad(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, 0)[0])(flat_h)
    assert np.linalg.norm(np.asarray(no_adapt) - analytic) > 1e-3 * np.linalg.norm(analytic)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_init_keys_name_the_starting_values_and_anchors_init_the_pull(name):
    module = MODULES[name]()
    learner = maml(module, 1)
    task = one_task(sinusoid_batch(1, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    hparams, hstate = meta_state.hparams, meta_state.hstate
    params, state = module.reset_params(jax.random.PRNGKey(1), hparams, hstate, task.train.x)
    expected = {
        "anil": {"head": "head_init"}, "anil_reg": {"head": "head_init"},
        "cavia": {}, "cavia_learn_init": {"context": "context_init"},
        "gainmod": {"gain": "gain_init", "shift": "shift_init"},
        "gainmod_head_reg": {"gain": "gain_init", "shift": "shift_init", "head": "head_init"},
        "compsyn": {"base_learner": "omega"}, "compsyn_fixed": {"base_learner": "omega"},
    }[name]
    assert module.init_keys == expected
    for p_key, h_key in module.init_keys.items():
        np.testing.assert_array_equal(flat(get_field(params, p_key)), flat(get_field(hparams, h_key)))

    # anchors_init <=> with params moved off their start, the inner loss depends on the start.
    moved = jax.tree_util.tree_map(lambda p: p + 0.1, params)

    def inner(hp):
        return learner.inner_loss(jax.random.PRNGKey(2), state, hstate, moved, hp, task.train)[0]

    grads = jax.jit(jax.grad(inner))(hparams)
    pulls = [np.linalg.norm(flat(get_field(grads, h_key))) > 0 for h_key in module.init_keys.values()]
    assert module.anchors_init == (bool(pulls) and all(pulls)), (pulls, module.anchors_init)


# -- what each module adapts -------------------------------------------------------------


def test_anil_adapts_only_the_head_as_least_squares_descent_on_frozen_features():
    module = metax.module.AlmostNoInnerLoop(SE(), SE(), mlp_body((8,)), output_dim=1)
    steps, lr = 3, 0.1
    learner = maml(module, steps, lr=lr)
    task = one_task(sinusoid_batch(2, 1, shots_train=10))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    body_before = copy.deepcopy(jax.device_get(meta_state.hparams.body))
    params, state = module.reset_params(jax.random.PRNGKey(1), meta_state.hparams, meta_state.hstate, task.train.x)
    assert flat(params).size == 8 + 1  # the head's w (8, 1) and b (1,), nothing of the body
    (_, adapted), _ = learner.adapt(
        jax.random.PRNGKey(3), state, meta_state.hstate, params, meta_state.hparams, task.train, steps
    )
    jax.tree_util.tree_map(np.testing.assert_array_equal, meta_state.hparams.body, body_before)

    # Reference: gradient descent on the squared error of a linear map of fixed features.
    features = np.asarray(module.body.apply(body_before, {}, None, task.train.x, True)[0], np.float64)
    w = np.asarray(params.head["head"]["w"], np.float64)
    b = np.asarray(params.head["head"]["b"], np.float64)
    y, n = np.asarray(task.train.y, np.float64), task.train.x.shape[0]
    for _ in range(steps):
        residual = features @ w + b - y
        w, b = w - lr * 2 / n * features.T @ residual, b - lr * 2 / n * residual.sum(0)
    np.testing.assert_allclose(adapted.head["head"]["w"], w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(adapted.head["head"]["b"], b, rtol=1e-4, atol=1e-6)
    assert np.abs(flat(adapted) - flat(params)).max() > 1e-3


def test_cavia_context_starts_at_zero_or_its_learned_value_and_alone_is_adapted():
    module = metax.module.CAVIA(SE(), SE(), tiny_mlp((8,)), embedding_dim=3)
    learner = maml(module, 1, lr=0.5)
    task = one_task(sinusoid_batch(3, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    assert meta_state.hparams.context_init is None
    params, state = module.reset_params(jax.random.PRNGKey(1), meta_state.hparams, meta_state.hstate, task.train.x)
    assert isinstance(params, metax.module.CAVIAParams) and len(jax.tree_util.tree_leaves(params)) == 1
    np.testing.assert_array_equal(params.context, np.zeros(3))
    (_, adapted), _ = learner.adapt(
        jax.random.PRNGKey(2), state, meta_state.hstate, params, meta_state.hparams, task.train, 1
    )

    # Reference: one SGD step on c of the network applied to [x, c] (c repeated on every row).
    x, y = task.train.x, task.train.y

    def loss(context):
        widened = jnp.concatenate([x, jnp.tile(context, (x.shape[0], 1))], axis=1)
        return jnp.mean((module.base_model.apply(meta_state.hparams.base, {}, None, widened, True)[0] - y) ** 2)

    expected = -0.5 * jax.grad(loss)(jnp.zeros(3))
    np.testing.assert_allclose(adapted.context, expected, rtol=1e-5, atol=1e-7)
    assert np.abs(expected).max() > 1e-3

    learned = metax.module.CAVIA(SE(), SE(), tiny_mlp((8,)), embedding_dim=3, learn_init=True)
    hparams, hstate = learned.reset_hparams(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(hparams.context_init, np.zeros(3))
    hparams = hparams._replace(context_init=jnp.array([0.3, -0.2, 0.1]))
    np.testing.assert_array_equal(learned.reset_params(None, hparams, hstate, x)[0].context, hparams.context_init)


def test_cavia_context_as_argument_reaches_the_model():
    def model(x, is_training, context):
        return hk.Linear(1, name="x")(x) + hk.Linear(1, with_bias=False, name="c")(context)

    module = metax.module.CAVIA(SE(), SE(), hk.transform_with_state(model), 2, context_as_argument=True)
    x = jnp.linspace(-1.0, 1.0, 5)[:, None]
    hparams, hstate = module.reset_hparams(jax.random.PRNGKey(0), x)
    params = metax.module.CAVIAParams(jnp.array([0.5, -1.5]))
    out, _ = module(None, metax.module.CAVIAState({}), hstate, params, hparams, x, True)
    w_x, b_x, w_c = hparams.base["x"]["w"], hparams.base["x"]["b"], hparams.base["c"]["w"]
    np.testing.assert_allclose(out, x @ w_x + b_x + params.context @ w_c, rtol=1e-6)


def gainmod_reference(hparams, gain, shift, head, x):
    """The GainMod network written out: tanh((h W + b) * gain + shift) per layer, then linear."""
    hidden = x
    for layer, (g, s) in enumerate(zip(gain, shift)):
        weights = hparams.body[f"multilayer_perceptron/~/linear_{layer}/linear"]
        hidden = jnp.tanh((hidden @ weights["w"] + weights["b"]) * g + s)
    return hidden @ head["head"]["w"] + head["head"]["b"]


@pytest.mark.parametrize("adapt_head", [False, True])
def test_gainmod_adapts_gains_shifts_and_the_head_only_if_asked(adapt_head):
    module = metax.module.GainMod(SE(), SE(), mlp_body((5, 4)), [5, 4], 1, adapt_head, None)
    lr = 0.2
    learner = maml(module, 1, lr=lr)
    task = one_task(sinusoid_batch(4, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    hparams = meta_state.hparams
    for vector, width, value in zip(hparams.gain_init + hparams.shift_init, (5, 4, 5, 4), (1, 1, 0, 0)):
        np.testing.assert_array_equal(vector, np.full(width, value))
    params, state = module.reset_params(jax.random.PRNGKey(1), hparams, meta_state.hstate, task.train.x)
    assert (params.head is None) == (not adapt_head)
    (_, adapted), _ = learner.adapt(jax.random.PRNGKey(2), state, meta_state.hstate, params, hparams, task.train, 1)

    def loss(gain, shift, head):
        return jnp.mean((gainmod_reference(hparams, gain, shift, head, task.train.x) - task.train.y) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(hparams.gain_init, hparams.shift_init, hparams.head_init)
    step = lambda start, grad: jax.tree_util.tree_map(lambda a, g: a - lr * g, start, grad)
    np.testing.assert_allclose(flat(adapted.gain), flat(step(hparams.gain_init, grads[0])), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(flat(adapted.shift), flat(step(hparams.shift_init, grads[1])), rtol=1e-5, atol=1e-7)
    if adapt_head:
        np.testing.assert_allclose(flat(adapted.head), flat(step(hparams.head_init, grads[2])), rtol=1e-5, atol=1e-7)
    assert np.abs(flat(adapted.gain) - 1).max() > 1e-4

    # The prediction uses the adapted head if adapt_head, otherwise the meta-learned head_init.
    pred, _ = module(None, state, meta_state.hstate, adapted, hparams, task.test.x, False)
    head = adapted.head if adapt_head else hparams.head_init
    reference = gainmod_reference(hparams, adapted.gain, adapted.shift, head, task.test.x)
    np.testing.assert_allclose(pred, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("adapt_head", [False, True])
def test_gainmod_reg_strength_adds_the_imaml_pull(adapt_head):
    module = metax.module.GainMod(SE(), SE(), mlp_body((5, 4)), (5, 4), 1, adapt_head, 2.0)
    learner = maml(module, 1)
    task = one_task(sinusoid_batch(5, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    params, state = module.reset_params(jax.random.PRNGKey(0), meta_state.hparams, meta_state.hstate, task.train.x)

    def inner(p):
        return learner.inner_loss(jax.random.PRNGKey(0), state, meta_state.hstate, p, meta_state.hparams, task.train)

    _, (_, metrics) = inner(params)
    assert float(metrics["loss_reg"]) == 0.0
    value, (_, metrics) = inner(jax.tree_util.tree_map(lambda p: p + 0.1, params))
    pulled = 2 * (5 + 4) + (4 * 1 + 1 if adapt_head else 0)  # gains, shifts (and head w, b)
    np.testing.assert_allclose(metrics["loss_reg"], 0.5 * 2.0 * pulled * 0.01, rtol=1e-5)
    np.testing.assert_allclose(value, metrics["loss"] + metrics["loss_reg"], rtol=1e-6)


@pytest.mark.parametrize("l2_fixed", [False, True])
def test_complex_synapse_regulariser_value(l2_fixed):
    module = metax.module.ComplexSynapse(SE(), SE(), tiny_mlp((4,)), l2_reg=0.7, l2_fixed=l2_fixed)
    learner = maml(module, 1)
    task = one_task(sinusoid_batch(6, 1))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    hparams = meta_state.hparams
    omega, unravel = ravel_pytree(hparams.omega)
    if l2_fixed:
        assert hparams.log_lambda is None
    else:
        np.testing.assert_allclose(flat(hparams.log_lambda), np.full(omega.size, np.log(0.7)), rtol=1e-6)
        hparams = hparams._replace(log_lambda=unravel(jax.random.normal(jax.random.PRNGKey(1), omega.shape)))
    weights = omega + 0.3 * jax.random.normal(jax.random.PRNGKey(2), omega.shape)
    params, state = module.reset_params(jax.random.PRNGKey(0), hparams, meta_state.hstate, task.train.x)
    np.testing.assert_array_equal(flat(params), omega)  # every task starts at omega
    params = metax.module.ComplexSynapseParams(unravel(weights))
    rng = jax.random.PRNGKey(0)
    value, (_, metrics) = learner.inner_loss(rng, state, meta_state.hstate, params, hparams, task.train)

    diff2 = np.square(np.asarray(weights, np.float64) - np.asarray(omega, np.float64))
    strength = 0.7 if l2_fixed else np.exp(flat(hparams.log_lambda).astype(np.float64))
    np.testing.assert_allclose(metrics["loss_reg"], 0.5 * np.sum(strength * diff2), rtol=1e-5)
    np.testing.assert_allclose(value, metrics["loss"] + metrics["loss_reg"], rtol=1e-6)
    assert module.anchors_init and module.init_keys == {"base_learner": "omega"}


# -- haiku state ---------------------------------------------------------------------------

BN_MODULES = {
    "anil": lambda: metax.module.ANIL(SE(), SE(), mlp_body((6,), batch_norm=True), 1),
    "gainmod": lambda: metax.module.GainMod(SE(), SE(), mlp_body((6, 5), batch_norm=True), (6, 5), 1, True, None),
    "cavia": lambda: metax.module.CAVIA(
        SE(), SE(), hk.transform_with_state(context_after_norm_model), 2, context_as_argument=True
    ),
    "compsyn": lambda: metax.module.ComplexSynapse(SE(), SE(), metax.models.mlp_fn([6], 1, batch_norm=True), 1.0),
    "learned_init": lambda: metax.module.LearnedInit(SE(), SE(), metax.models.mlp_fn([6], 1, batch_norm=True)),
}


@pytest.mark.parametrize("name", sorted(BN_MODULES))
def test_batch_norm_state_runs_through_the_inner_loop_and_the_meta_batch_keeps_dtypes(name):
    module, steps = BN_MODULES[name](), 3
    learner = maml(module, steps, lr=0.05, outer=optax.adam(1e-3))
    batch = sinusoid_batch(7, 4, shots_train=8)
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    rng = jax.random.PRNGKey(3)
    (task_states, _), _ = jax.jit(learner.eval, static_argnames="steps")(rng, meta_state, batch, steps)
    _, start = module.reset_params(jax.random.PRNGKey(1), meta_state.hparams, meta_state.hstate, batch.train.x[0])

    # Each training-mode step, and the settling pass on the whole support set after the
    # last one, feed the batch-norm moving averages (their zero-debiased `hidden` sums
    # move) and tick their counters; the query pass (is_training=False) does not.
    before, after = jax.tree_util.tree_leaves_with_path(start), jax.tree_util.tree_leaves(task_states)
    assert len(before) == len(after) >= 6  # (mean, var) x (average, counter, hidden) per layer
    for (path, old), new in zip(before, after):
        if "counter" in jax.tree_util.keystr(path):
            np.testing.assert_array_equal(new, int(old) + steps + 1)
        elif "hidden" in jax.tree_util.keystr(path):
            assert np.abs(np.asarray(new) - np.asarray(old)).max(axis=(1, 2)).min() > 1e-3, path

    new_meta_state, metrics = jax.jit(learner.update)(rng, meta_state, batch)
    assert np.isfinite(metrics["loss_outer"])
    old_leaves = jax.tree_util.tree_leaves(meta_state.hstate)
    new_leaves = jax.tree_util.tree_leaves(new_meta_state.hstate)
    assert [leaf.dtype for leaf in new_leaves] == [leaf.dtype for leaf in old_leaves]
    assert jax.tree_util.tree_structure(new_meta_state.hstate) == jax.tree_util.tree_structure(meta_state.hstate)
    # The shared statistics become the task average of each task's adapted statistics
    # (update and eval split `rng` over tasks the same way).
    for mean, per_task in zip(new_leaves, after):
        expected = np.mean(np.asarray(per_task, np.float64), axis=0)
        np.testing.assert_allclose(np.asarray(mean, np.float64), expected.astype(per_task.dtype), rtol=1e-5, atol=1e-6)
    assert any(int(leaf) == steps + 1 for leaf in new_leaves if leaf.dtype == jnp.int32)


# -- CAVIA's context is a task representation ----------------------------------------------


def nearest_centroid_accuracy(fit_x, fit_y, test_x, test_y, classes=5):
    centroids = np.stack([fit_x[fit_y == k].mean(0) for k in range(classes)])
    pred = np.argmin(((test_x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float(np.mean(pred == test_y))


def knn_accuracy(fit_x, fit_y, test_x, test_y, k=5, classes=5):
    nearest = np.argsort(((test_x[:, None] - fit_x[None]) ** 2).sum(-1), axis=1)[:, :k]
    votes = np.apply_along_axis(np.bincount, 1, fit_y[nearest], minlength=classes)
    return float(np.mean(votes.argmax(1) == test_y))


@pytest.mark.slow
def test_cavia_contexts_separate_task_families_after_meta_training():
    sample_task = metax.data.make_task_sampler("family", 20, 10)
    module = metax.module.CAVIA(SE(), SE(), metax.models.mlp_fn([32, 32], 1), embedding_dim=8)
    learner = metax.learner.MAML(module, None, 3, optax.sgd(1.0), optax.adam(3e-3))
    meta_state = learner.reset(jax.random.PRNGKey(0), sample_task(jax.random.PRNGKey(0)).train.x)

    @jax.jit
    def train(meta_state, rng):
        def step(meta_state, key):
            key_batch, key_update = jax.random.split(key)
            batch = metax.data.sample_metabatch(key_batch, sample_task, 16)
            meta_state, metrics = learner.update(key_update, meta_state, batch)
            return meta_state, metrics["loss_outer"]

        return jax.lax.scan(step, meta_state, jax.random.split(rng, 300))

    held_out = metax.data.sample_metabatch(jax.random.PRNGKey(99), sample_task, 600)
    labels = np.asarray(held_out.train.info["family"][:, 0])
    evaluate = jax.jit(learner.eval, static_argnames="steps")

    def probes(meta_state):
        (_, params), metrics = evaluate(jax.random.PRNGKey(5), meta_state, held_out, 3)
        contexts = np.asarray(params.context)
        split = (contexts[:300], labels[:300], contexts[300:], labels[300:])
        return nearest_centroid_accuracy(*split), knn_accuracy(*split), float(metrics["loss_outer"])

    _, knn_untrained, loss_untrained = probes(meta_state)
    trained, losses = train(meta_state, jax.random.PRNGKey(2))
    centroid, knn, loss = probes(trained)
    assert loss < 0.5 * loss_untrained
    # Chance is 20% (five families, 300 test tasks: one standard error is 2.3 points).
    # Families whose parameters are symmetric about zero (offsets, phases) share a mean
    # context, which caps what class means alone can do; neighbours see the full layout.
    assert centroid > 0.28, centroid
    assert knn > 0.55, knn
    assert knn > knn_untrained + 0.15, (knn, knn_untrained)


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_errors_name_the_value_and_the_fix():
    x = jnp.linspace(-1.0, 1.0, 6)[:, None]
    rng = jax.random.PRNGKey(0)
    gainmod = lambda body, dims: metax.module.GainMod(SE(), SE(), body, dims, 1, False, None)
    with pytest.raises(ValueError, match=r"hidden_dims=\[4\] does not match"):
        gainmod(mlp_body((8,)), [4]).reset_hparams(rng, x)
    with pytest.raises(ValueError, match=r"hidden layer 2 \(hidden_dims\[2\]=4\)"):
        gainmod(mlp_body((4, 4)), [4, 4, 4]).reset_hparams(rng, x)
    with pytest.raises(ValueError, match=r"ends in 4 but the body returns features of shape \(6, 6\)"):
        gainmod(mlp_body((4, 6)), [4]).reset_hparams(rng, x)
    with pytest.raises(TypeError, match="gain=..., shift=..."):
        gainmod(tiny_mlp((4,)), [4]).reset_hparams(rng, x)
    with pytest.raises(ValueError, match="hidden_dims must be a non-empty list"):
        gainmod(mlp_body((4,)), []).reset_hparams(rng, x)

    for bad in (0, -2):
        module = metax.module.CAVIA(SE(), SE(), tiny_mlp(), embedding_dim=bad)  # accepted until reset
        with pytest.raises(ValueError, match=f"embedding_dim must be a positive int, got {bad}"):
            maml(module, 1).reset(rng, x)
    fixed_width = hk.transform_with_state(lambda x, is_training: hk.Linear(1)(x.reshape(x.shape[0], 1)))
    with pytest.raises(TypeError, match=r"appends embedding_dim=2 .* shape \(6, 3\) instead of \(6, 1\)"):
        metax.module.CAVIA(SE(), SE(), fixed_width, 2).reset_hparams(rng, x)
    with pytest.raises(TypeError, match="context_as_argument=True.*give f a `context` argument"):
        metax.module.CAVIA(SE(), SE(), tiny_mlp(), 2, context_as_argument=True).reset_hparams(rng, x)
    normed_first = metax.models.mlp_fn([8], 1, batch_norm=True)
    with pytest.raises(ValueError, match="does not depend on the 2 context parameters"):
        metax.module.CAVIA(SE(), SE(), normed_first, 2).reset_hparams(rng, x)

    with pytest.raises(ValueError, match="output_dim must be a positive int, got 0"):
        metax.module.ANIL(SE(), SE(), mlp_body(), output_dim=0)
    flat_body = hk.transform_with_state(lambda x, is_training: jnp.sum(hk.Linear(3)(x), axis=1))
    with pytest.raises(ValueError, match=r"features of shape \(samples, features\).*returned \(6,\)"):
        metax.module.ANIL(SE(), SE(), flat_body, 1).reset_hparams(rng, x)
    with pytest.raises(ValueError, match="l2_reg=0 .* must be > 0"):
        metax.module.ComplexSynapse(SE(), SE(), tiny_mlp(), l2_reg=0, l2_fixed=False)
    with pytest.raises(TypeError, match="haiku transform"):
        metax.module.ANIL(SE(), SE(), lambda x: x, 1)


def test_compiled_init_equals_eager_init():
    """`init_training` (LearnedInit's, ANIL's and ComplexSynapse's reset) gives the eager
    `init`'s parameters and batch-norm state."""
    from metax.module.base import init_training

    net = metax.models.Conv4(channels=2, readout=3)
    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1))
    key = jax.random.PRNGKey(0)
    compiled, eager = init_training(net, key, x), net.init(key, x, is_training=True)
    assert jax.tree_util.tree_structure(compiled) == jax.tree_util.tree_structure(eager)
    for a, b in zip(jax.tree_util.tree_leaves(compiled), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
