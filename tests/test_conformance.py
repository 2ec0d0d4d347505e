"""Conformance: every public learner x every module x {an optax optimiser, a learned one}.

haiku's integration-test idea (`jax_transforms_test.py`, `descriptors_test.py`) applied to
metax. For each valid pair, in float64 on a tiny problem (width-4 tanh networks, 2 tasks,
2 inner steps), one jitted `update` is compiled and

- vmap over tasks equals a Python loop over tasks: the vmapped update equals the
  per-task `grad` looped over the tasks and averaged;
- jit equals eager: the jitted update equals the un-jitted one (for every learner on one
  module and every module under MAML, see EAGER);
- the second jitted call, on new data of the same shapes, does not retrace;
- the meta-state keeps its structure, shapes and float64 dtypes;
- task 0's meta-gradient equals an independent computation: a hand-written Python loop
  of explicit update rules (p - lr * g, Meta-SGD's p - theta * g, the per-step rate
  theta[k] of LayerStepLR) differentiated by `jax.grad` (MAML, LearnedKernel), the
  Reptile displacement and partial gradients at the adapted params or summed along the
  loop (Reptile, BufferedReptile), dense Hessians and exact solves / truncated Neumann
  sums (implicit learners), the nudged hand-written loop (equilibrium propagation), or
  every member's fitness by hand (Evosax).

Invalid pairs fail at construction with the documented error. The suite fails when a
public learner or module is not covered. It replaces the former tests/test_matrix.py.
"""

import functools
import inspect
import warnings

import chex
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import x64

SQ = metax.energy.SquaredError
LR, STEPS, KEY = 0.1, 2, jax.random.PRNGKey(42)


def tanh_mlp(output_dim=1):
    return metax.models.mlp_fn([4], output_dim, activation=jnp.tanh)


def body():
    """metax's calling convention: the constructor, outside a transform, is the body."""
    return metax.models.MultilayerPerceptron([4], activation=jnp.tanh, activate_final=True)


MODULES = {
    "learned_init": lambda: metax.module.LearnedInit(SQ(), SQ(), tanh_mlp(), output_dim=1),
    "learned_init_imaml": lambda: metax.module.LearnedInit(SQ(), SQ(), tanh_mlp(), reg_strength=1.0, output_dim=1),
    "anil": lambda: metax.module.ANIL(SQ(), SQ(), body(), output_dim=1),
    "cavia": lambda: metax.module.CAVIA(SQ(), SQ(), tanh_mlp(), embedding_dim=2),
    "gainmod": lambda: metax.module.GainMod(SQ(), SQ(), body(), [4], 1, adapt_head=True),
    "compsyn": lambda: metax.module.ComplexSynapse(SQ(), SQ(), tanh_mlp(), l2_reg=1.0),
}

OPTIMIZERS = {
    "sgd": lambda: optax.sgd(LR),
    "meta_sgd": lambda: metax.kernel.MetaSGD(LR),
    "layer_step_lr": lambda: metax.kernel.LayerStepLR(LR, num_steps=STEPS),
    "scalar_lr": lambda: metax.kernel.ScalarLR(LR),  # log-parameterised: the rate is exp(theta)
    # Rules with networks inside: checked against central finite differences (FD_CHECKED).
    "coordinatewise": lambda: metax.kernel.CoordinatewiseKernel((4,), output_scale=0.1),
    "metadynamic": lambda: metax.kernel.MetadynamicOptimizer(13, (4,), output_scale=0.1),  # 13 params in tanh_mlp
}
FD_CHECKED = ("coordinatewise", "metadynamic")

OUTER = optax.sgd(1.0)  # the update moves hparams by exactly minus the mean meta-gradient
PES_SIGMA = 0.01
LEARNERS = {
    "maml": lambda m, o: metax.learner.ModelAgnosticMetaLearning(m, None, STEPS, o, OUTER),
    "reptile": lambda m, o: metax.learner.Reptile(m, None, STEPS, o, OUTER),
    "buffered_reptile": lambda m, o: metax.learner.BufferedReptile(m, None, STEPS, o, OUTER),
    "eqprop": lambda m, o: metax.learner.EquilibriumPropagation(m, None, STEPS, 2, o, optax.sgd(LR), OUTER, 0.1),
    "symmetric_eqprop": lambda m, o: metax.learner.SymmetricEquilibriumPropagation(m, None, STEPS, 2, o, optax.sgd(LR), OUTER, 0.1),
    "cg": lambda m, o: metax.learner.ConjugateGradient(m, None, STEPS, 20, o, OUTER),
    "rbp": lambda m, o: metax.learner.RecurrentBackpropagation(m, None, STEPS, 3, o, OUTER, 0.1),
    "t1t2": lambda m, o: metax.learner.T1T2(m, None, STEPS, o, OUTER),
    "evosax": lambda m, o: metax.learner.Evosax(m, None, STEPS, o, (1,), "Open_ES", {"population_size": 4, "sigma_init": 0.05}),
    "learned_kernel": lambda m, o: metax.learner.LearnedKernel(m, None, STEPS, o, OUTER),
    "learned_kernel_pes": lambda m, o: metax.learner.LearnedKernel(
        m, None, STEPS, o, OUTER, estimator="pes", truncation=1, es_kwargs={"population_size": 4, "sigma_init": PES_SIGMA}
    ),
}

# Which optimisers each learner is run with: a plain optax one, and the learned ones where
# its meta-gradient reaches them (LearnedKernel takes nothing but a learned rule).
LEARNER_OPTIMIZERS = {
    "maml": ("sgd", "meta_sgd", "layer_step_lr"),  # layer_step_lr on LAYER_STEP_ON only
    "evosax": ("sgd", "meta_sgd"),
    "learned_kernel": ("meta_sgd", "scalar_lr", "coordinatewise", "metadynamic"),  # the last three on RULES_ON
    "learned_kernel_pes": ("meta_sgd",),
}
ES_ONLY_ON = ("learned_init",)  # PES: one module is enough for the engine shared with Evosax
LAYER_STEP_ON = ("learned_init", "anil")  # per-step rates: one module of each kind
RULES_ON = ("learned_init",)  # the other learned rules: the kernel meets the loop, not the module

END_POINT = {"eqprop", "symmetric_eqprop", "cg", "rbp", "t1t2"}
REPTILES = {"reptile", "buffered_reptile"}
# From the documentation: LearnedInit without a pull has nothing but an initialisation
# (refused by end-point learners); CAVIA has no initialisation (refused by Reptile).
# ANIL's head_init and GainMod's gains/shifts/head are initialisations beside a body that
# does learn: end-point learners accept them with a warning.
ONLY_INITIALISATIONS = {"learned_init"}
INITIALISATIONS_BESIDE_OTHERS = {"anil", "gainmod"}
NO_INITIALISATION = {"cavia"}


def expected_error(learner, module):
    if learner in END_POINT and module in ONLY_INITIALISATIONS:
        return "only set the optimiser's starting point"
    if learner in REPTILES and module in NO_INITIALISATION:
        return "no params that start from an hparam"
    return None


PAIRS = [
    (learner, module, optimizer)
    for learner in LEARNERS
    for module in MODULES
    for optimizer in LEARNER_OPTIMIZERS.get(learner, ("sgd",))
    if not (learner == "learned_kernel_pes" and module not in ES_ONLY_ON)
    and not (optimizer == "layer_step_lr" and module not in LAYER_STEP_ON)
    and not (optimizer in ("scalar_lr",) + FD_CHECKED and module not in RULES_ON)
]

# jit == eager is checked for every learner on one module and for every module under
# MAML: eager and traced code differ only where Python branches on concrete values,
# which is either in a learner or in a module. (Eager runs cost as much as the rest of
# the battery together; this keeps the suite within its time budget.)
EAGER = {("maml", module, "sgd") for module in MODULES} | {
    (learner, "learned_init_imaml" if learner in END_POINT else "learned_init", LEARNER_OPTIMIZERS.get(learner, ("sgd",))[0])
    for learner in LEARNERS
}


# -- coverage ----------------------------------------------------------------------------------------

BASE_CLASSES = {metax.learner.MetaLearner, metax.learner.ImplicitDifferentiation, metax.module.MetaModule, metax.kernel.LearnedOptimizer}
# A public class that is covered through the one that wraps it.
WRAPPED_BY = {metax.kernel.MetadynamicKernel: metax.kernel.MetadynamicOptimizer}


def public_classes(package, base):
    classes = {getattr(package, name) for name in package.__all__}
    return {c for c in classes if inspect.isclass(c) and issubclass(c, base) and c not in BASE_CLASSES}


def build_every_learner():
    """One learner of each LEARNERS entry, on learned_init_imaml with its first optimiser."""
    with x64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            name: make(MODULES["learned_init_imaml"](), OPTIMIZERS[LEARNER_OPTIMIZERS.get(name, ("sgd",))[0]]())
            for name, make in LEARNERS.items()
        }


def test_every_public_learner_module_and_learned_optimizer_is_covered():
    with x64():
        modules = {type(make()) for make in MODULES.values()}
        optimizers = {type(make()) for make in OPTIMIZERS.values()}
    learners = {type(learner) for learner in build_every_learner().values()}
    assert public_classes(metax.module, metax.module.MetaModule) - modules == set()
    assert public_classes(metax.learner, metax.learner.MetaLearner) - learners == set()
    # metax.kernel: every learned optimiser, and every network a learned optimiser wraps.
    kernels = public_classes(metax.kernel, (metax.kernel.LearnedOptimizer, hk.Module))
    assert {k for k in kernels if WRAPPED_BY.get(k, k) not in optimizers} == set()
    # Every learner meets every module, and every optimiser appears in some pair.
    for learner in LEARNERS:
        if learner != "learned_kernel_pes":
            assert {m for l, m, _ in PAIRS if l == learner} == set(MODULES), learner
    assert {o for _, _, o in PAIRS} == set(OPTIMIZERS)
    # ImplicitDifferentiation is a base: with its default solver it is T1T2.
    assert metax.learner.ImplicitDifferentiation.linear_solve is metax.learner.T1T2.linear_solve


def test_the_tables_agree_with_what_the_learners_declare():
    """The battery's tables (which learners differentiate at the end point, which may
    learn the inner optimiser) against the learners' own declarations and behaviour: a
    learner that gains or loses a capability fails here until the tables follow."""
    learners = build_every_learner()
    assert END_POINT == {name for name, learner in learners.items() if learner.end_point_gradient}
    learning = {name for name, learner in learners.items() if learner.can_learn_optimizer}
    assert learning == {name for name in LEARNERS if "meta_sgd" in LEARNER_OPTIMIZERS.get(name, ())}
    for name in set(LEARNERS) - learning:  # the others refuse a learned rule at construction
        with x64(), warnings.catch_warnings(), pytest.raises(ValueError):
            warnings.simplefilter("ignore")
            LEARNERS[name](MODULES["learned_init_imaml"](), OPTIMIZERS["meta_sgd"]())
    assert EAGER <= set(PAIRS)


# -- hand-written references -------------------------------------------------------------------------

def tasks(seed, num=2):
    sample_task = metax.data.make_task_sampler("sinusoid", 6, 3)
    return metax.data.sample_metabatch(jax.random.PRNGKey(seed), sample_task, num)


def task(batch, i):
    return jax.tree_util.tree_map(lambda a: a[i], batch)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


def by_hand_step(optimizer, theta, k, params, grads):
    """The update rules written out: no optax, no metax.kernel."""
    if optimizer == "sgd":
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads)
    if optimizer == "scalar_lr":
        return jax.tree_util.tree_map(lambda p, g: p - jnp.exp(theta) * g, params, grads)
    if optimizer == "meta_sgd":
        return jax.tree_util.tree_map(lambda p, g, lr: p - lr * g, params, grads, theta)
    return jax.tree_util.tree_map(lambda p, g, lr: p - lr[k] * g, params, grads, theta)  # layer_step_lr


def by_hand_loop(learner, optimizer, hparams, hstate, data, params, steps, energy=None):
    """Plain Python loop of `steps` explicit steps; returns the params before every step and after the last."""
    state = learner.meta_model.reset_params(KEY, hparams, hstate, data.x)[1]
    energy = energy or (lambda p: learner.inner_loss(KEY, state, hstate, p, hparams, data)[0])
    theta = getattr(hparams, "optimizer", None)
    trajectory = [params]
    for k in range(steps):
        params = by_hand_step(optimizer, theta, k, params, jax.grad(energy)(params))
        trajectory.append(params)
    return trajectory


def start(learner, hparams, hstate, data):
    return learner.meta_model.reset_params(KEY, hparams, hstate, data.x)


def query_loss(learner, hparams, hstate, params, data):
    state = start(learner, hparams, hstate, data)[1]
    return learner.query_energy(KEY, state, hstate, params, hparams, data)[0]


def reference_maml(learner, optimizer, hstate, hparams, t):
    def outer(h):
        params = by_hand_loop(learner, optimizer, h, hstate, t.train, start(learner, h, hstate, t.train)[0], STEPS)[-1]
        return query_loss(learner, h, hstate, params, t.test)

    return jax.grad(outer)(hparams)


def reference_reptile(learner, optimizer, hstate, hparams, t, buffered):
    data = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), t.train, t.test)
    params0, state = start(learner, hparams, hstate, data)
    trajectory = by_hand_loop(learner, optimizer, hparams, hstate, data, params0, STEPS)
    partial = lambda p: jax.grad(lambda h: learner.inner_loss(KEY, state, hstate, p, h, data)[0])(hparams)
    if buffered:  # summed along the loop, at the params each step started from
        hgrads = functools.reduce(lambda a, b: jax.tree_util.tree_map(jnp.add, a, b), [partial(p) for p in trajectory[:-1]])
    else:  # at the adapted params
        hgrads = partial(trajectory[-1])
    for param_key, hparam_key in learner.meta_model.init_keys.items():
        displacement = jax.tree_util.tree_map(jnp.subtract, getattr(hparams, hparam_key), getattr(trajectory[-1], param_key))
        hgrads = hgrads._replace(**{hparam_key: displacement})
    return hgrads


def reference_implicit(learner, optimizer, hstate, hparams, t, kind):
    params0, state = start(learner, hparams, hstate, t.train)
    params = by_hand_loop(learner, optimizer, hparams, hstate, t.train, params0, STEPS)[-1]
    fp, unravel_p = ravel_pytree(params)
    fh, unravel_h = ravel_pytree(hparams)
    inner = lambda p, h: learner.inner_loss(KEY, state, hstate, unravel_p(p), unravel_h(h), t.train)[0]
    outer = lambda p, h: query_loss(learner, unravel_h(h), hstate, unravel_p(p), t.test)
    hessian = jax.hessian(inner)(fp, fh)
    mixed = jax.jacfwd(jax.grad(inner), argnums=1)(fp, fh)
    grad_p, grad_h = jax.grad(outer, argnums=(0, 1))(fp, fh)
    if kind == "cg":  # an exact dense solve
        x = jnp.linalg.solve(hessian, grad_p)
    elif kind == "rbp":  # alpha * sum_{k=0}^{3} (I - alpha H)^k b, alpha = 0.1
        step = jnp.eye(fp.size) - 0.1 * hessian
        x = 0.1 * sum(jnp.linalg.matrix_power(step, k) @ grad_p for k in range(4))
    else:  # t1t2
        x = grad_p
    return unravel_h(grad_h - mixed.T @ x)


def reference_eqprop(learner, optimizer, hstate, hparams, t, symmetric):
    params0, state = start(learner, hparams, hstate, t.train)
    free = by_hand_loop(learner, optimizer, hparams, hstate, t.train, params0, STEPS)[-1]

    def total(p, h, beta):
        return learner.inner_loss(KEY, state, hstate, p, h, t.train)[0] + beta * query_loss(learner, h, hstate, p, t.test)

    def end_point(beta):
        energy = lambda p: total(p, hparams, beta)
        return by_hand_loop(learner, "sgd", hparams, hstate, t.train, free, 2, energy=energy)[-1]

    partial = lambda p, beta: jax.grad(lambda h: total(p, h, beta))(hparams)
    betas = (0.1, -0.1) if symmetric else (0.1, 0.0)
    ends = [end_point(b) if b else free for b in betas]
    return jax.tree_util.tree_map(
        lambda a, b: (a - b) / (betas[0] - betas[1]), partial(ends[0], betas[0]), partial(ends[1], betas[1])
    )


def reference(name, learner, optimizer, hstate, hparams, t):
    if name in ("maml", "learned_kernel"):
        return reference_maml(learner, optimizer, hstate, hparams, t)
    if name in REPTILES:
        return reference_reptile(learner, optimizer, hstate, hparams, t, buffered=name == "buffered_reptile")
    if name in ("cg", "rbp", "t1t2"):
        return reference_implicit(learner, optimizer, hstate, hparams, t, name)
    return reference_eqprop(learner, optimizer, hstate, hparams, t, symmetric=name == "symmetric_eqprop")


def fitness_by_hand(learner, optimizer, state, batch, rng):
    """Every member's mean query loss over the tasks, adapted by the hand-written loop
    (vmapped over members and tasks: the loop itself is the independent part)."""
    rng_ask, _, _ = jax.random.split(rng, 3)
    population, _ = learner.engine.strategy(state.hparams).ask(rng_ask, *state.optim)

    def member_on_task(h, t):
        params = by_hand_loop(learner, optimizer, h, state.hstate, t.train, start(learner, h, state.hstate, t.train)[0], STEPS)[-1]
        return query_loss(learner, h, state.hstate, params, t.test)

    losses = jax.vmap(jax.vmap(member_on_task, in_axes=(None, 0)), in_axes=(0, None))(population, batch)
    return jnp.mean(losses, axis=1)


def pes_by_hand(learner, optimizer, state, batch, rng):
    """The hparams after one PES update, written out (Vicol et al. 2021, eq. 4 with
    antithetic pairs): over the S segments of `unroll` steps, member i runs from its own
    previous end point with hparams mean_s + eps_i^s, its fitness is the tasks' mean query
    loss / S, and the mean moves by minus (outer sgd(1.0)) the estimate

        g_s = sum over pairs i (f_i - f_{i+N/2}) (eps_i^1 + ... + eps_i^s) / (sigma^2 N).

    The noise eps^s is read from the strategy's `ask` as population minus its mean (evosax
    adds the same noise to any mean), with the keys `update` splits for segment s."""
    flat_start, unravel = ravel_pytree(state.hparams)
    members = learner.gradient_estimator.engine.strategy(state.hparams).population_size

    def one_segment(h, t, params):  # one member on one task: `unroll` steps on, then the query loss
        params = by_hand_loop(learner, optimizer, h, state.hstate, t.train, params, learner.gradient_estimator.unroll)[-1]
        return params, query_loss(learner, h, state.hstate, params, t.test)

    mean, accumulated, ends = flat_start, 0.0, None
    for segment, rng_segment in enumerate(jax.random.split(rng, learner.gradient_estimator.segments)):
        rng_ask, _, _ = jax.random.split(rng_segment, 3)
        population, _ = learner.gradient_estimator.engine.ask(rng_ask, state.optim, state.hparams)
        noise = jax.vmap(lambda member: ravel_pytree(member)[0])(population) - flat_start
        accumulated = accumulated + noise
        hparams = jax.vmap(unravel)(mean + noise)
        if segment == 0:  # every member starts afresh on every task
            ends = jax.vmap(jax.vmap(lambda h, t: start(learner, h, state.hstate, t.train)[0], (None, 0)), (0, None))(hparams, batch)
        ends, losses = jax.vmap(jax.vmap(one_segment, (None, 0, 0)), (0, None, 0))(hparams, batch, ends)
        fitness = jnp.mean(losses, axis=1) / learner.gradient_estimator.segments
        half = members // 2
        estimate = (fitness[:half] - fitness[half:]) @ accumulated[:half] / (PES_SIGMA**2 * members)
        mean = mean - estimate
    return unravel(mean), noise


def directional_derivative_by_fd(learner, rng, hstate, hparams, t, eps=1e-5):
    """`(d/da loss(hparams + a v) at a = 0, v)` by a central difference along a fixed random
    direction v: an autodiff-free check of a meta-gradient (`grad . v` must match)."""
    flat_h, unravel = ravel_pytree(hparams)
    v = jax.random.normal(jax.random.PRNGKey(7), flat_h.shape, flat_h.dtype)
    loss = jax.jit(lambda h: learner.outer_loss(rng, hstate, unravel(h), t, learner.steps_inner)[0])
    return float((loss(flat_h + eps * v) - loss(flat_h - eps * v)) / (2 * eps)), np.asarray(v)


# -- the battery --------------------------------------------------------------------------------------

def counting(fn):
    """`fn` with a trace counter: jax.jit retraces (and recompiles) only on a cache miss."""
    traces = []

    def traced(*args):
        traces.append(1)
        return fn(*args)

    return traced, traces


@pytest.mark.parametrize("learner_name, module_name, optimizer", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_pair(learner_name, module_name, optimizer):
    with x64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # end-point learners warn about fixed initialisations
        build = lambda: LEARNERS[learner_name](MODULES[module_name](), OPTIMIZERS[optimizer]())
        error = expected_error(learner_name, module_name)
        if error is not None:
            with pytest.raises(ValueError, match=error):
                build()
            return
        learner = build()
        run_battery(learner_name, learner, optimizer, eager=(learner_name, module_name, optimizer) in EAGER)


def run_battery(name, learner, optimizer, eager):
    batch, batch_2 = tasks(0), tasks(1)
    assert batch.train.x.dtype == jnp.float64
    state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    rng = jax.random.PRNGKey(2)

    def battery(rng, state, batch):
        """The update, and beside it (in the same compiled call) the independent reference."""
        new_state, metrics = learner.update(rng, state, batch)
        if name == "evosax":
            return new_state, metrics, fitness_by_hand(learner, optimizer, state, batch, rng)
        if name == "learned_kernel_pes":
            return new_state, metrics, pes_by_hand(learner, optimizer, state, batch, rng)
        if optimizer in FD_CHECKED:
            return new_state, metrics, None
        return new_state, metrics, reference(name, learner, optimizer, state.hstate, state.hparams, task(batch, 0))

    traced, traces = counting(battery)
    jitted = jax.jit(traced)
    new_state, metrics, expected = jitted(rng, state, batch)
    state_2, _, _ = jitted(jax.random.PRNGKey(3), new_state, batch_2)
    assert len(traces) == 1, "the second jitted call retraced"
    # Structure, shapes and float64 dtypes survive two updates.
    chex.assert_trees_all_equal_shapes_and_dtypes(state_2, state)
    floats = [a for a in jax.tree_util.tree_leaves(state_2.hparams) if jnp.issubdtype(a.dtype, jnp.floating)]
    assert floats and all(a.dtype == jnp.float64 for a in floats)
    chex.assert_tree_all_finite(state_2.hparams)
    chex.assert_shape(metrics["loss_outer"], ())
    assert np.isfinite(float(metrics["loss_outer"])) and int(metrics["nonfinite_inner"]) == 0

    if eager:  # jit == eager (to rounding: XLA fuses differently; CG stops on a tolerance)
        eager_state, eager_metrics = learner.update(rng, state, batch)
        np.testing.assert_allclose(flat(eager_state.hparams), flat(new_state.hparams), rtol=1e-7, atol=1e-10)
        np.testing.assert_allclose(eager_metrics["loss_outer"], metrics["loss_outer"], rtol=1e-9)

    if name == "evosax":  # every member's fitness by hand
        np.testing.assert_allclose(metrics["fitness_best"], np.min(expected), rtol=1e-9)
        np.testing.assert_allclose(metrics["loss_outer"], np.mean(expected), rtol=1e-9)
        return
    if name == "learned_kernel_pes":  # the ES update by hand, from the same noise
        hparams, noise = expected
        half = noise.shape[0] // 2
        np.testing.assert_allclose(noise[half:], -noise[:half], rtol=1e-9, atol=1e-15)  # antithetic pairs
        assert np.linalg.norm(flat(new_state.hparams) - flat(state.hparams)) > 1e-6
        np.testing.assert_allclose(flat(new_state.hparams), flat(hparams), rtol=1e-9, atol=1e-12)
        return
    # vmap over tasks == a Python loop over tasks (one compiled single-task grad), averaged:
    # the outer step is sgd(1.0).
    rngs = jax.random.split(rng, batch.train.x.shape[0])
    grad = jax.jit(learner.grad)
    grads = [grad(rngs[i], state.hstate, state.hparams, task(batch, i))[0] for i in range(len(rngs))]
    mean_grad = np.mean([flat(g) for g in grads], axis=0)
    # CG on an ill-conditioned or indefinite Hessian (GainMod, ANIL) amplifies the rounding
    # of a differently fused program to ~1e-8 (benchmarks/RESULTS.md, numerics per learner).
    loop_rtol = 1e-7 if name == "cg" else 1e-9
    np.testing.assert_allclose(flat(new_state.hparams), flat(state.hparams) - mean_grad, rtol=loop_rtol, atol=1e-12)
    if optimizer in FD_CHECKED:  # a rule with a network inside: finite differences along a direction
        derivative, direction = directional_derivative_by_fd(learner, rngs[0], state.hstate, state.hparams, task(batch, 0))
        assert abs(derivative) > 1e-6
        np.testing.assert_allclose(flat(grads[0]) @ direction, derivative, rtol=1e-6)
        return
    # Task 0's meta-gradient against the independent computation.
    assert np.linalg.norm(flat(expected)) > 1e-6
    np.testing.assert_allclose(flat(grads[0]), flat(expected), rtol=1e-6, atol=1e-9)
