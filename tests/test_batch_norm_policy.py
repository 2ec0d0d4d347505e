"""Batch-norm policies: each normalises the query pass with what it says, in every module.

Reference values come from a numpy forward pass of the same weights with statistics
computed by hand (support set at the adapted weights, the query set itself, a hand-run
moving average), and the no-leak checks swap query examples and compare.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metax

SE = metax.energy.SquaredError
STEPS, DECAY, EPS = 2, 0.9, 1e-5


def mlp(policy, sizes=(4, 1), activate_final=False):
    steps = STEPS if policy == "per_step" else None
    return metax.models.MultilayerPerceptron(
        sizes, activation=jnp.tanh, activate_final=activate_final, batch_norm=True,
        batch_norm_policy=policy, batch_norm_steps=steps, name="mlp",
    )


def learned_init(policy):
    net = hk.transform_with_state(lambda x, is_training: mlp(policy)(x, is_training))
    return metax.module.LearnedInit(SE(), SE(), net)


def task_batch(seed, tasks=3, support=6, query=6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(tasks, support + query, 3)).astype(np.float32) * 2 + 1
    y = np.sin(x.sum(-1, keepdims=True)).astype(np.float32)
    data = lambda a, b: metax.data.Dataset(jnp.asarray(x[:, a:b]), jnp.asarray(y[:, a:b]))
    return metax.data.MetaDataset(data(0, support), data(support, support + query))


def learner_for(module):
    # First order: the one meta-update below compiles faster; eval is the same either way.
    return metax.learner.ModelAgnosticMetaLearning(module, None, STEPS, optax.sgd(0.1), optax.adam(1e-2), first_order=True)


EVAL = {}


def evaluate(learner, meta_state, batch, steps=STEPS):
    """Jitted eval, compiled once per learner."""
    key = id(learner)
    if key not in EVAL:
        EVAL[key] = jax.jit(learner.eval, static_argnames=("steps",))
    return EVAL[key](jax.random.PRNGKey(5), meta_state, batch, steps=steps)


# -- a numpy reference of the MLP ----------------------------------------------------------


def layers(params):
    out = []
    for i in range(2):
        lin, bn = params[f"mlp/~/linear_{i}/linear"], params[f"mlp/~/linear_{i}/batch_norm"]
        out.append(tuple(np.asarray(a, np.float64) for a in (lin["w"], lin["b"], bn["scale"][0], bn["offset"][0])))
    return out


def forward(params, x, stats=None):
    """Output of the MLP on `x`; `stats[i] = (mean, var)` per layer, or the batch's own.
    Returns the output and the statistics each layer used."""
    h, used = np.asarray(x, np.float64), []
    for i, (w, b, scale, offset) in enumerate(layers(params)):
        pre = h @ w + b
        mean, var = (pre.mean(0), pre.var(0)) if stats is None else stats[i]
        used.append((mean, var))
        h = (pre - mean) / np.sqrt(var + EPS) * scale + offset
        h = np.tanh(h) if i == 0 else h
    return h, used


def task(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def query_prediction(module, state, params, meta_state, x):
    pred, _ = module(jax.random.PRNGKey(0), state, meta_state.hstate, params, meta_state.hparams, x, False)
    return np.asarray(pred, np.float64)


def iterates(module, meta_state, batch):
    """The weights after 0..STEPS full-batch SGD steps on task 0's support set, by a
    hand-written loop (training passes normalise with the support batch in every policy)."""
    x, y = batch.train.x[0], batch.train.y[0]
    start = meta_state.hstate.base_learner

    def loss(weights):
        return jnp.mean((module.base_learner.apply(weights, start, None, x, True)[0] - y) ** 2)

    step = jax.jit(lambda w: jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, w, jax.grad(loss)(w)))
    thetas = [meta_state.hparams.base_learner_init]
    for _ in range(STEPS):
        thetas.append(step(thetas[-1]))
    return thetas


@pytest.fixture(scope="module")
def batch():
    return task_batch(0)


def fresh(policy, batch):
    module = learned_init(policy)
    learner = learner_for(module)
    return module, learner, learner.reset(jax.random.PRNGKey(1), batch.train.x[0])


# -- each policy does what it says -----------------------------------------------------------


def test_support_policy_normalises_the_query_with_the_support_statistics_of_the_adapted_net(batch):
    module, learner, meta_state = fresh("support", batch)
    (states, params), _ = evaluate(learner, meta_state, batch)
    for i in range(2):
        adapted = task(params, i).base_learner
        _, support_stats = forward(adapted, batch.train.x[i])
        expected, _ = forward(adapted, batch.test.x[i], support_stats)
        got = query_prediction(module, task(states, i), task(params, i), meta_state, batch.test.x[i])
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
        stored = task(states, i).base_learner["mlp/~/linear_0/batch_norm"]
        np.testing.assert_allclose(stored["mean"][0], support_stats[0][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stored["var"][0], support_stats[0][1], rtol=1e-4, atol=1e-5)


def test_transductive_policy_normalises_the_query_with_its_own_statistics(batch):
    module, learner, meta_state = fresh("transductive", batch)
    (states, params), _ = evaluate(learner, meta_state, batch)
    state, adapted = task(states, 0), task(params, 0)
    expected, _ = forward(adapted.base_learner, batch.test.x[0])
    got = query_prediction(module, state, adapted, meta_state, batch.test.x[0])
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    assert jax.tree_util.tree_leaves(state) == []  # it keeps no statistics


def test_running_policy_uses_the_moving_average_of_every_training_pass(batch):
    module, learner, meta_state = fresh("running", batch)
    (states, params), _ = evaluate(learner, meta_state, batch)
    # The inner loop's passes at theta_0, theta_1 and the settling pass at theta_2, folded
    # into a zero-debiased moving average by hand.
    stats = [forward(theta, batch.train.x[0])[1] for theta in iterates(module, meta_state, batch)]
    averages = []
    for layer in range(2):
        hidden = [0.0, 0.0]
        for step, per_layer in enumerate(stats, start=1):
            hidden = [DECAY * h + (1 - DECAY) * s for h, s in zip(hidden, per_layer[layer])]
        averages.append(tuple(h / (1 - DECAY**step) for h in hidden))
    state = task(states, 0).base_learner
    np.testing.assert_allclose(state["mlp/~/linear_0/batch_norm/~/mean_ema"]["average"][0], averages[0][0], rtol=1e-4, atol=1e-5)
    assert int(state["mlp/~/linear_0/batch_norm/~/mean_ema"]["counter"]) == STEPS + 1
    expected, _ = forward(task(params, 0).base_learner, batch.test.x[0], averages)
    got = query_prediction(module, task(states, 0), task(params, 0), meta_state, batch.test.x[0])
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_per_step_policy_keeps_one_running_average_per_step_across_tasks(batch):
    module, learner, meta_state = fresh("per_step", batch)
    (states, params), _ = evaluate(learner, meta_state, batch)
    thetas = iterates(module, meta_state, batch)
    state = task(states, 0).base_learner["mlp/~/linear_0/batch_norm"]
    # One update per slot from zero: weight 1 - decay, and slot t holds the support
    # statistics of the net after t steps; the query pass marked the task as ended.
    np.testing.assert_allclose(state["weight"], np.full(STEPS + 1, 1 - DECAY), rtol=1e-6)
    assert int(state["step"]) == STEPS + 1 and int(state["ended"]) == 1
    expected, _ = forward(thetas[-1], batch.test.x[0], forward(thetas[-1], batch.train.x[0])[1])
    got = query_prediction(module, task(states, 0), task(params, 0), meta_state, batch.test.x[0])
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    for t, theta in enumerate(thetas):
        mean, var = forward(theta, batch.train.x[0])[1][0]
        np.testing.assert_allclose(state["mean"][t, 0] / state["weight"][t], mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state["var"][t, 0] / state["weight"][t], var, rtol=1e-4, atol=1e-4)

    # After a meta-update the slots are the task average; the next task blends its own
    # statistics after STEPS steps into slot STEPS and normalises its query with that.
    new_meta_state, _ = jax.jit(learner.update)(jax.random.PRNGKey(2), meta_state, batch)
    for name in ("mean", "var"):
        per_task = np.asarray(states.base_learner["mlp/~/linear_1/batch_norm"][name], np.float64)
        shared = new_meta_state.hstate.base_learner["mlp/~/linear_1/batch_norm"][name]
        np.testing.assert_allclose(shared, per_task.mean(0), rtol=1e-4, atol=1e-6)
    other = task_batch(1)  # the same shapes: eval is not compiled again
    (states, params), _ = evaluate(learner, new_meta_state, other)
    adapted = task(params, 0)
    _, own = forward(adapted.base_learner, other.train.x[0])
    blended = []
    for layer in range(2):
        old = new_meta_state.hstate.base_learner[f"mlp/~/linear_{layer}/batch_norm"]
        weight = DECAY * old["weight"][STEPS] + (1 - DECAY)
        mean = (DECAY * old["mean"][STEPS, 0] + (1 - DECAY) * own[layer][0]) / weight
        var = (DECAY * old["var"][STEPS, 0] + (1 - DECAY) * own[layer][1]) / weight
        blended.append((np.asarray(mean, np.float64), np.asarray(var, np.float64)))
    expected, _ = forward(adapted.base_learner, other.test.x[0], blended)
    got = query_prediction(module, task(states, 0), adapted, new_meta_state, other.test.x[0])
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_per_step_slots_follow_the_number_of_inner_steps(batch):
    module, learner, meta_state = fresh("per_step", batch)
    (states, _), _ = evaluate(learner, meta_state, batch, steps=STEPS + 2)
    weight = np.asarray(task(states, 0).base_learner["mlp/~/linear_0/batch_norm"]["weight"])
    # Passes 0, 1 fill their slots; passes 2, 3 and the settling pass 4 all land in slot 2.
    np.testing.assert_allclose(weight, [1 - DECAY, 1 - DECAY, 1 - DECAY**3], rtol=1e-6)
    # A shorter inner loop: one step, then the settling pass at theta_1 fills slot 1,
    # and the query is normalised with it (the support statistics of theta_1).
    (states, params), _ = evaluate(learner, meta_state, batch, steps=1)
    weight = np.asarray(task(states, 0).base_learner["mlp/~/linear_0/batch_norm"]["weight"])
    np.testing.assert_allclose(weight, [1 - DECAY, 1 - DECAY, 0], rtol=1e-6)
    theta = task(params, 0).base_learner
    expected, _ = forward(theta, batch.test.x[0], forward(theta, batch.train.x[0])[1])
    got = query_prediction(module, task(states, 0), task(params, 0), meta_state, batch.test.x[0])
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)


def test_policy_arguments_are_checked():
    def build(**kwargs):
        net = hk.transform_with_state(lambda x: metax.models.BatchNorm(True, True, **kwargs)(x, True))
        return net.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))

    with pytest.raises(ValueError, match="batch_norm_policy must be one of"):
        build(policy="batch")
    with pytest.raises(ValueError, match="batch_norm_policy='per_step' keeps running statistics for each inner step, so it needs batch_norm_steps"):
        hk.transform_with_state(lambda x: metax.models.Conv4(4, batch_norm_policy="per_step")(x, True)).init(
            jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 1))
        )
    with pytest.raises(ValueError, match="batch_norm_steps=3 applies only to batch_norm_policy='per_step', not 'support'"):
        build(policy="support", steps=3)


# -- the same in every module; the query set never leaks ------------------------------------


def body(policy):
    def fn(x, is_training, gain=None, shift=None):
        return mlp(policy, (4, 3), activate_final=True)(x, is_training, gain=gain, shift=shift)

    return hk.transform_with_state(fn)


def cavia_model(policy):
    def fn(x, is_training, context):
        features = mlp(policy, (4,), activate_final=True)(x, is_training)
        return hk.Linear(1)(features + jnp.sum(context))

    return hk.transform_with_state(fn)


MODULES = {
    "learned_init": learned_init,
    "anil": lambda p: metax.module.ANIL(SE(), SE(), body(p), 1),
    "gainmod": lambda p: metax.module.GainMod(SE(), SE(), body(p), (4, 3), 1, adapt_head=True),
    "cavia": lambda p: metax.module.CAVIA(SE(), SE(), cavia_model(p), 2, context_as_argument=True),
    "compsyn": lambda p: metax.module.ComplexSynapse(
        SE(), SE(), hk.transform_with_state(lambda x, is_training: mlp(p)(x, is_training)), 1.0
    ),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_normalises_the_query_with_the_support_statistics_and_leaks_nothing(name, batch):
    module = MODULES[name]("per_step")
    learner = learner_for(module)
    meta_state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    # Query set = support set (as large as the query sets below: one compilation). In
    # evaluation mode the module must then reproduce the training-mode prediction on the
    # support set: slot STEPS holds exactly its statistics.
    own = batch._replace(test=batch.train)
    (states, params), _ = evaluate(learner, meta_state, own)
    state, adapted = task(states, 0), task(params, 0)
    rng = jax.random.PRNGKey(0)
    as_query, _ = module(rng, state, meta_state.hstate, adapted, meta_state.hparams, batch.train.x[0], False)
    as_batch, _ = module(rng, state, meta_state.hstate, adapted, meta_state.hparams, batch.train.x[0], True)
    np.testing.assert_allclose(as_query, as_batch, rtol=1e-4, atol=1e-5)

    # Replacing all query examples but the first changes neither its prediction nor the
    # statistics the next tasks start from.
    (states, params), _ = evaluate(learner, meta_state, batch)
    swapped = batch._replace(test=batch.test._replace(x=batch.test.x.at[:, 1:].set(-batch.test.x[:, 1:] * 3)))
    (states_swapped, params_swapped), _ = evaluate(learner, meta_state, swapped)
    for a, b in zip(jax.tree_util.tree_leaves(states), jax.tree_util.tree_leaves(states_swapped)):
        np.testing.assert_array_equal(a, b)
    first = lambda s, p, data: module(rng, task(s, 0), meta_state.hstate, task(p, 0), meta_state.hparams, data.test.x[0], False)[0][0]
    np.testing.assert_array_equal(first(states, params, batch), first(states_swapped, params_swapped, swapped))


@pytest.mark.parametrize("policy", ["running", "support", "transductive"])
def test_only_the_transductive_policy_lets_query_examples_see_each_other(policy, batch):
    module, learner, meta_state = fresh(policy, batch)
    (states, params), _ = evaluate(learner, meta_state, batch)
    state, adapted = task(states, 0), task(params, 0)
    x = np.asarray(batch.test.x[0])
    alone = query_prediction(module, state, adapted, meta_state, x)
    moved = query_prediction(module, state, adapted, meta_state, np.concatenate([x[:1], x[1:] * 3 - 2]))
    if policy == "transductive":
        assert np.abs(alone[0] - moved[0]).max() > 1e-3
    else:
        np.testing.assert_array_equal(alone[0], moved[0])
