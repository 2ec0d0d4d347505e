"""The input contract's policies, the non-finite metrics, the shared loop's options and the
extension points (metax compatibility of models, end-point checks, descend's trajectory)."""

import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import learned_init, sinusoid_batch, x64
from ridge import inner_lr, ridge_module, ridge_task, theta_of

SQ = metax.energy.SquaredError


def maml(module=None, steps=2, inner=None, **kwargs):
    return metax.learner.ModelAgnosticMetaLearning(module or learned_init(), None, steps, inner or optax.sgd(0.1), optax.adam(1e-2), **kwargs)


# -- dtype policy ---------------------------------------------------------------------------------


def test_half_precision_sample_input_keeps_float32_meta_parameters_and_says_so():
    learner = maml()
    batch = sinusoid_batch(0, 2)
    with pytest.warns(UserWarning, match="sample_input is float16: metax keeps meta-parameters .* in float32"):
        state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0].astype(jnp.float16))
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}  # hparams and the outer Adam state
    # float16 data is cast to the meta-parameters' dtype, which never changes.
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), batch)
    checked = learner.check_metabatch("update", jax.random.PRNGKey(1), state, half)
    assert checked.train.x.dtype == checked.test.y.dtype == jnp.float32
    new_state, _ = jax.jit(learner.update)(jax.random.PRNGKey(1), state, half)
    assert jax.tree_util.tree_map(lambda a: a.dtype, new_state) == jax.tree_util.tree_map(lambda a: a.dtype, state)


def test_float64_data_is_cast_to_float32_meta_parameters():
    with x64():
        learner = maml()
        batch = sinusoid_batch(1, 2, dtype=jnp.float64)
        state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0].astype(jnp.float32))
        assert learner.check_metabatch("eval", jax.random.PRNGKey(1), state, batch).train.y.dtype == jnp.float32
        new_state, metrics = jax.jit(learner.update)(jax.random.PRNGKey(1), state, batch)
        assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(new_state.hparams)} == {jnp.dtype(jnp.float32)}
        assert metrics["loss_outer"].dtype == jnp.float32


# -- non-finite metrics ---------------------------------------------------------------------------------


def poisoned(batch, task=1):
    return batch._replace(train=batch.train._replace(y=batch.train.y.at[task, 0, 0].set(jnp.nan)))


def test_nan_in_the_data_is_counted_not_raised():
    learner = maml(steps=3)
    batch = sinusoid_batch(2, 3)
    state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    # The update and the evaluation in one compiled program, called on clean and poisoned data.
    update_and_eval = jax.jit(lambda batch: (learner.update(jax.random.PRNGKey(1), state, batch)[1],
                                             learner.eval(jax.random.PRNGKey(2), state, batch, 3, per_task=True)[1]))
    clean, clean_per_task = update_and_eval(batch)
    assert int(clean["nonfinite_inner"]) == 0 and int(clean["nonfinite_outer"]) == 0
    np.testing.assert_array_equal(clean_per_task["nonfinite_inner"], [0, 0, 0])
    bad, per_task = update_and_eval(poisoned(batch))
    # One task of three: its 3 inner losses are NaN, and so is its meta-gradient.
    assert int(bad["nonfinite_inner"]) == 3 and int(bad["nonfinite_outer"]) == 1
    np.testing.assert_array_equal(per_task["nonfinite_inner"], [0, 3, 0])


@pytest.mark.parametrize(
    "make",
    [
        lambda m: metax.learner.Evosax(m, None, 2, optax.sgd(0.1), (1,), "Open_ES", {"population_size": 4}),
        lambda m: metax.learner.LearnedKernel(m, None, 2, metax.kernel.MetaSGD(0.1), optax.sgd(0.1), estimator="pes",
                                              es_kwargs={"population_size": 4}, extra_metrics=True),
    ],
    ids=["evosax", "learned_kernel_pes"],
)
def test_evolution_strategies_count_nonfinite_inner_losses_over_members(make):
    learner = make(learned_init())
    batch = sinusoid_batch(3, 2)
    state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    _, metrics = jax.jit(learner.update)(jax.random.PRNGKey(1), state, poisoned(batch))
    assert int(metrics["nonfinite_inner"]) == 4 * 2  # 4 members x 2 steps on the poisoned task
    assert int(metrics["nonfinite_outer"]) == 4
    if isinstance(learner, metax.learner.LearnedKernel):  # extra_metrics is honoured under ES
        assert "loss_inner_final" in metrics and "gradnorm_inner_final" in metrics


def test_the_kernels_no_longer_raise_from_a_callback_by_default():
    learner = metax.learner.LearnedKernel(learned_init(), None, 2, metax.kernel.CoordinatewiseKernel(), optax.sgd(0.1))
    batch = sinusoid_batch(4, 2)
    state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    _, metrics = jax.jit(learner.eval, static_argnames="steps")(jax.random.PRNGKey(0), state, poisoned(batch, 0), 2)
    assert int(metrics["nonfinite_inner"]) == 2


def test_divergent_neumann_series_shows_in_its_metric(float64):
    # The ratio of the last Neumann term to the first is (1 - alpha lambda)^steps along an eigenvector.
    hessian = jnp.diag(jnp.array([1.0, 4.0]))
    solve, diverging = (metax.learner.linear_solve.neumann_series(20, alpha) for alpha in (0.25, 0.6))

    def three_solves(hessian, e_0, e_1):  # one compiled program (run eagerly, each scan compiles on its own)
        matvec = lambda v: hessian @ v
        return solve(matvec, e_1), solve(matvec, e_0), diverging(matvec, e_1)

    (_, ratio), (x, ratio_1), (_, ratio_2) = jax.jit(three_solves)(hessian, jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(ratio, 0.0, atol=1e-12)  # (1 - 0.25 * 4)^20
    np.testing.assert_allclose(ratio_1, 0.75**20, rtol=1e-12)
    np.testing.assert_allclose(x, [1 - 0.75**21, 0.0], rtol=1e-12)  # -> H^{-1} b = (1, 0)
    np.testing.assert_allclose(ratio_2, 1.4**20, rtol=1e-12)  # alpha > 2 / lambda_max: diverges
    # RecurrentBackpropagation reports it for its own solve.
    task = ridge_task(0)
    learner = metax.learner.RecurrentBackpropagation(ridge_module(), None, 2, 20, optax.sgd(inner_lr(task)), optax.sgd(0.1), 5.0)
    state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    _, metrics = jax.jit(learner.update)(jax.random.PRNGKey(1), state, jax.tree_util.tree_map(lambda a: a[None], task))
    assert float(metrics["neumann_ratio"]) > 1e3


# -- end-point learners: fixed initialisations, deferred checks, user learners ---------------------


def anil_module(hidden=3):
    return metax.module.ANIL(SQ(), SQ(), metax.models.MultilayerPerceptron([hidden], activation=jnp.tanh, activate_final=True), output_dim=1)


def test_anil_with_an_end_point_learner_warns_once_about_head_init():
    sgd = optax.sgd(0.1)
    builders = {
        "ConjugateGradient": lambda m: metax.learner.ConjugateGradient(m, None, 2, 2, sgd, sgd),
        "RecurrentBackpropagation": lambda m: metax.learner.RecurrentBackpropagation(m, None, 2, 2, sgd, sgd, 0.1),
        "T1T2": lambda m: metax.learner.T1T2(m, None, 2, sgd, sgd),
        "EquilibriumPropagation": lambda m: metax.learner.EquilibriumPropagation(m, None, 2, 2, sgd, sgd, sgd, 0.1),
        "SymmetricEquilibriumPropagation": lambda m: metax.learner.SymmetricEquilibriumPropagation(m, None, 2, 2, sgd, sgd, sgd, 0.1),
    }
    for name, build in builders.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build(anil_module())
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and messages[0].startswith(f"{name} with AlmostNoInnerLoop: hparams 'head_init'"), messages
        assert "'body' are meta-learned" in messages[0]
    # With the iMAML pull nothing stays fixed: no warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metax.learner.T1T2(metax.module.ANIL(SQ(), SQ(), metax.models.mlp_fn([3], 3), 1, reg_strength=1.0), None, 2, sgd, sgd)


def test_anil_body_gets_the_exact_implicit_meta_gradient(float64):
    """At the head's exact inner optimum, d L_out(head*(body), body) / d body by central
    differences (head* by least squares) equals ConjugateGradient's and a converged RBP's
    meta-gradient; head_init gets exactly none."""
    sample_task = metax.data.make_task_sampler("sinusoid", 20, 10)
    task = jax.tree_util.tree_map(lambda a: a[0].astype(jnp.float64), metax.data.sample_metabatch(jax.random.PRNGKey(0), sample_task, 1))
    module = anil_module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cg = metax.learner.ConjugateGradient(module, None, 1, 10, optax.sgd(1e-3), optax.sgd(1.0))
    hparams, hstate = module.reset_hparams(jax.random.PRNGKey(1), task.train.x)
    body_flat, unravel_body = ravel_pytree(hparams.body)

    def features(body, x):
        return module.body.apply(body, hstate.body, None, x, True)[0]

    def head_star(body):  # least squares for [w; b]
        design = jnp.concatenate([features(body, task.train.x), jnp.ones((20, 1))], axis=1)
        solution = jnp.linalg.solve(design.T @ design, design.T @ task.train.y)
        return {"head": {"w": solution[:-1], "b": solution[-1]}}

    def outer(body_flat):
        body = unravel_body(body_flat)
        head = head_star(body)
        pred = features(body, task.test.x) @ head["head"]["w"] + head["head"]["b"]
        return jnp.mean((pred - task.test.y) ** 2)

    def by_hand(body_flat, eps=1e-6):  # one compiled program (eagerly: one compile per op)
        directions = jnp.eye(body_flat.size, dtype=body_flat.dtype)
        fd = jax.vmap(lambda e: (outer(body_flat + eps * e) - outer(body_flat - eps * e)) / (2 * eps))(directions)
        body = unravel_body(body_flat)
        return fd, head_star(body), jnp.concatenate([features(body, task.train.x), jnp.ones((20, 1))], axis=1)

    fd, head, design = jax.device_get(jax.jit(by_hand)(body_flat))
    hparams = hparams._replace(head_init=head)  # the inner loop starts at its optimum
    eig = np.linalg.eigvalsh(2 / 20 * design.T @ design)
    alpha, terms = 1.0 / eig[-1], int(30 * eig[-1] / eig[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rbp = metax.learner.RecurrentBackpropagation(module, None, 1, terms, optax.sgd(1e-3), optax.sgd(1.0), alpha)
    both = jax.jit(lambda hstate, hparams, task: [learner.grad(jax.random.PRNGKey(2), hstate, hparams, task)[0] for learner in (cg, rbp)])
    for hgrads, learner, tolerance in zip(both(hstate, hparams, task), (cg, rbp), (1e-6, 1e-5)):
        analytic = np.asarray(ravel_pytree(hgrads.body)[0])
        assert np.linalg.norm(analytic - fd) / np.linalg.norm(fd) < tolerance, type(learner).__name__
        assert np.all(ravel_pytree(hgrads.head_init)[0] == 0.0)


class ShiftModule(metax.module.MetaModule):
    """Meta-learned weights w and an initial shift; per task only the shift adapts. It
    declares no hparams_fields, so end-point checks wait for reset."""

    def __init__(self, with_weights=True):
        super().__init__(SQ(), SQ())
        self.with_weights = with_weights

    @property
    def init_keys(self):
        return {"shift": "shift_init"}

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        w = hparams["w"] if self.with_weights else jnp.ones((input.shape[-1], 1), input.dtype)
        return input @ w + params["shift"], (state, hstate)

    def reset_hparams(self, rng, sample_input):
        hparams = {"shift_init": jnp.zeros((), sample_input.dtype)}
        if self.with_weights:
            hparams["w"] = jnp.ones((sample_input.shape[-1], 1), sample_input.dtype)
        return hparams, {}

    def reset_params(self, rng, hparams, hstate, sample_input):
        return {"shift": hparams["shift_init"]}, {}


def test_user_implicit_learners_get_the_end_point_check_automatically():
    class MyImplicit(metax.learner.ImplicitDifferentiation):
        def __init__(self, meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, *, terms=5):
            super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer)
            self.linear_solve = metax.learner.solve_neumann(terms, 0.1)

    class MyEndPoint(metax.learner.MetaLearner):
        end_point_gradient = True

        def grad(self, rng, hstate, hparams, metadataset):
            raise NotImplementedError

    sgd = optax.sgd(0.1)
    for cls in (MyImplicit, MyEndPoint):
        with pytest.raises(ValueError, match=f"{cls.__name__} differentiates at the inner loop's end point"):
            cls(learned_init(), None, 2, sgd, sgd)
        # A module without hparams_fields: decided at reset, from the real hparams.
        x = jnp.ones((4, 2))
        learner = cls(ShiftModule(with_weights=False), None, 2, sgd, sgd)
        with pytest.raises(ValueError, match="'shift_init' have no effect"):
            learner.reset(jax.random.PRNGKey(0), x)
        learner = cls(ShiftModule(), None, 2, sgd, sgd)
        with pytest.warns(UserWarning, match="hparams 'shift_init' only set the inner loop's starting point.*'w' are meta-learned"):
            learner.reset(jax.random.PRNGKey(0), x)


# -- the shared loop: truncation, remat, trajectory ----------------------------------------------------


def test_truncation_and_remat_are_options_of_the_shared_loop(float64):
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(5, 1, dtype=jnp.float64))
    learner = maml(steps=2, inner=metax.kernel.ScalarLR(0.05), truncation=1, remat=True)
    assert (learner.truncation, learner.remat) == (1, True)
    state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    grads = jax.jit(learner.grad)(jax.random.PRNGKey(1), state.hstate, state.hparams, task)[0]  # eagerly: one compile per op
    # The initialisation acts only through the carry that truncation cuts; the rate acts in the last step.
    assert np.all(np.asarray(ravel_pytree(grads.module)[0]) == 0)
    assert abs(float(grads.optimizer)) > 1e-6
    # One engine: no learner overrides the shared adapt.
    for name in metax.learner.__all__:
        obj = getattr(metax.learner, name)
        if isinstance(obj, type) and issubclass(obj, metax.learner.MetaLearner) and obj is not metax.learner.MetaLearner:
            assert "adapt" not in vars(obj), name


def test_descend_returns_the_trajectory_of_a_hand_written_loop(float64):
    learner = maml(steps=3)
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(6, 1, dtype=jnp.float64))
    state = learner.reset(jax.random.PRNGKey(0), task.train.x)

    def descend_and_by_hand(hparams, hstate, task):  # one compiled program (eagerly: one compile per op)
        params, net_state = learner.meta_model.reset_params(jax.random.PRNGKey(0), hparams, hstate, task.train.x)
        energy = learner.support_energy(hstate, task.train)
        descended = learner.descend(jax.random.PRNGKey(1), net_state, params, hparams, energy, optax.sgd(0.1), 3, return_trajectory=True)
        expected = [params]
        for _ in range(3):
            grads = jax.grad(lambda p: energy(jax.random.PRNGKey(0), net_state, p, hparams)[0])(expected[-1])
            expected.append(jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, expected[-1], grads))
        return descended, expected[1:]

    (_, final, losses, _, trajectory), expected = jax.jit(descend_and_by_hand)(state.hparams, state.hstate, task)
    for k in range(3):
        np.testing.assert_allclose(ravel_pytree(jax.tree_util.tree_map(lambda a: a[k], trajectory))[0], ravel_pytree(expected[k])[0], rtol=1e-12)
    np.testing.assert_array_equal(ravel_pytree(final)[0], ravel_pytree(jax.tree_util.tree_map(lambda a: a[-1], trajectory))[0])
    assert losses.shape == (3,)


# -- pieces in their place -------------------------------------------------------------------------------


def test_with_learned_optimizer_lives_with_the_learners_and_forwards_the_base_properties():
    module = metax.module.ANIL(SQ(), SQ(), metax.models.mlp_fn([3], 3), 1, reg_strength=1.0)
    wrapped = metax.learner.WithLearnedOptimizer(module, metax.kernel.MetaSGD(0.1))
    assert wrapped.init_keys == {"head": "head_init"} and wrapped.anchors_init is True
    assert wrapped.output_dim == 1  # plain attributes still come through __getattr__
    assert not hasattr(metax.kernel, "WithLearnedOptimizer")
    import pathlib

    for path in pathlib.Path(metax.kernel.__file__).parent.glob("*.py"):
        imports = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "metax.module" in line or "metax.learner" in line], path.name


# -- metax compatibility -----------------------------------------------------------------------------------


def test_models_called_outside_a_transform_are_metax_pairs_and_modules_inside_one():
    x = jnp.linspace(-1, 1, 10).reshape(5, 2)
    pair = metax.models.MultilayerPerceptron([4, 3], activate_final=True)
    assert isinstance(pair, hk.TransformedWithState)
    params, state = pair.init(jax.random.PRNGKey(0), x, True)
    inside = hk.transform_with_state(lambda x, t: metax.models.MultilayerPerceptron([4, 3], activate_final=True)(x, t))
    assert jax.tree_util.tree_structure(inside.init(jax.random.PRNGKey(0), x, True)[0]) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(pair.apply(params, state, None, x, True)[0], inside.apply(params, state, None, x, True)[0])
    first = params["multilayer_perceptron/~/linear_0/linear"]
    hidden = jax.nn.relu(x @ first["w"] + first["b"])
    last = params["multilayer_perceptron/~/linear_1/linear"]
    np.testing.assert_allclose(pair.apply(params, state, None, x, True)[0], jax.nn.relu(hidden @ last["w"] + last["b"]), rtol=1e-6)
    # Linear, LinearBlock and Conv4 (metax's positional decay) likewise.
    linear = metax.models.Linear(2)
    lp, _ = linear.init(jax.random.PRNGKey(1), x, True)
    np.testing.assert_allclose(linear.apply(lp, {}, None, x, True)[0], x @ lp["linear/linear"]["w"] + lp["linear/linear"]["b"], rtol=1e-6)
    assert isinstance(metax.models.LinearBlock(3, batch_norm=True), hk.TransformedWithState)
    conv = metax.models.Conv4(2, 0.5, readout=3)
    cp, _ = jax.eval_shape(lambda x: conv.init(jax.random.PRNGKey(2), x, True), jnp.ones((2, 8, 8, 1)))
    assert cp["conv4/readout"]["w"].shape == (2, 3)  # 8x8 pooled four times: 1x1x2 features
    decay = hk.transform(lambda: metax.models.Conv4(2, 0.5, readout=3).blocks[0].decay).apply({}, None)
    assert decay == 0.5  # metax's second positional argument is batch norm's decay
    with pytest.raises(ValueError, match="output_sizes must be positive"):
        metax.models.MultilayerPerceptron([])  # constructor checks still run at once


def test_metax_style_model_code_builds_modules():
    """metax's examples pass the constructors straight to modules (ANIL's and GainMod's body;
    tests/test_conformance.py trains every learner on such bodies)."""
    x = jnp.ones((6, 1))
    anil = metax.module.AlmostNoInnerLoop(SQ(), SQ(), body=metax.models.MultilayerPerceptron([8, 8], activate_final=True), output_dim=1)
    # Shapes only: traced, not run (eagerly every initialiser op would compile on its own).
    hparams, _ = jax.eval_shape(anil.reset_hparams, jax.random.PRNGKey(0), x)
    assert hparams.head_init["head"]["w"].shape == (8, 1)
    gainmod = metax.module.GainMod(SQ(), SQ(), body=metax.models.MultilayerPerceptron([8, 8], activate_final=True),
                                   hidden_dims=[8, 8], output_dim=1, adapt_head=True, reg_strength=0.01)
    hparams, _ = jax.eval_shape(gainmod.reset_hparams, jax.random.PRNGKey(0), x)
    assert [g.shape for g in hparams.gain_init] == [(8,), (8,)]


# -- evolution: elite_ratio on evosax 0.3 ------------------------------------------------------------------


def test_cma_es_elite_ratio_puts_the_weights_on_the_best_members():
    module = learned_init(base_learner=metax.models.mlp_fn([2], 1))
    learner = metax.learner.Evosax(module, None, 1, optax.sgd(0.1), (1,), "CMA_ES", dict(popsize=8, elite_ratio=0.25))
    weights = np.asarray(learner.engine.params(learner.strategy).weights)
    assert learner.strategy.num_elites == 2
    assert np.all(weights[:2] > 0) and np.all(weights[2:] == 0) and weights[0] > weights[1]
    np.testing.assert_allclose(weights.sum(), 1.0, rtol=1e-6)
    # elite_ratio=0.1 of 8 is one elite: the new mean is the best member (c_mean = 1).
    learner = metax.learner.Evosax(module, None, 1, optax.sgd(0.1), (1,), "CMA_ES", dict(popsize=8, elite_ratio=0.1))
    batch = sinusoid_batch(7, 2)
    state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    rng = jax.random.PRNGKey(1)

    def update_and_by_hand(rng, state, batch):  # the update, and every member's fitness by hand: one compiled program
        population, _ = learner.strategy.ask(jax.random.split(rng, 3)[0], *state.optim)
        losses = jax.vmap(lambda h: jnp.mean(jax.vmap(learner.outer_loss, in_axes=(0, None, None, 0, None))(
            jax.random.split(jax.random.split(rng, 3)[2], 2), state.hstate, h, batch, 1)[0]))(population)
        return learner.update(rng, state, batch), population, losses

    (new_state, metrics), population, losses = jax.jit(update_and_by_hand)(rng, state, batch)
    best = int(jnp.argmin(losses))
    np.testing.assert_allclose(ravel_pytree(new_state.hparams)[0], ravel_pytree(jax.tree_util.tree_map(lambda a: a[best], population))[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["fitness_best"], losses[best], rtol=1e-5)


def test_report_defaults_to_the_mean_or_the_best_member():
    module = learned_init(base_learner=metax.models.mlp_fn([2], 1))
    make = lambda algorithm, **kw: metax.learner.Evosax(module, None, 1, optax.sgd(0.1), (1,), algorithm, {"popsize": 4}, **kw)
    assert make("Open_ES").report == "mean" and make("SimpleGA").report == "best"
    assert make("Open_ES", report="best").report == "best"
