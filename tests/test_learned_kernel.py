"""Learned update rules: MetadynamicKernel, CoordinatewiseKernel and the LearnedKernel learner."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import learned_init, sinusoid_batch, tiny_mlp, x64
from metax.module.base import MetaModule

# The README's JAX version of Torch-MetaDyn's quick start, line for line.
QUICKSTART = '''import haiku as hk
import jax
import jax.numpy as jnp
from metax.kernel import MetadynamicKernel

compute_some_loss = lambda z: jnp.sum((z - 1.0) ** 2)  # stands in for your objective

# Setup
state_dim = 32
latent_z = jax.random.normal(jax.random.PRNGKey(0), (1, state_dim))
objective, grad = jax.value_and_grad(compute_some_loss)(latent_z)

# --- Old Way (Fixed Dynamic) ---
# lr = 0.1
# delta_z_fixed = -lr * grad

# --- New Way (Learned Dynamic) ---
# Kernel is a Haiku module; its weights psi are a pytree you train with the rest of your model
f_psi = hk.without_apply_rng(hk.transform(lambda z, g: MetadynamicKernel(state_dim=32, grad_dim=32)(z, g)))
psi = f_psi.init(jax.random.PRNGKey(1), latent_z, grad)
delta_z_learned = f_psi.apply(psi, jax.lax.stop_gradient(latent_z), grad)

# psi is trained jointly with the rest of your model (metax.learner.LearnedKernel does it
# across problems); see experiments/noisy_inference for a complete, working study.
'''


def test_quickstart_snippet_runs_and_starts_as_gradient_descent():
    namespace = {}
    exec(compile(QUICKSTART, "quick start", "exec"), namespace)
    z, grad, delta = namespace["latent_z"], namespace["grad"], namespace["delta_z_learned"]
    np.testing.assert_allclose(grad, 2 * (z - 1.0), rtol=1e-6)
    assert delta.shape == (1, 32) and delta.dtype == jnp.float32
    np.testing.assert_allclose(delta, -0.1 * grad, rtol=1e-6)  # the old way, before training


def kernel_fn(state_dim=3, grad_dim=3, **kwargs):
    def fn(z, g, memory=None, t=None):
        return metax.kernel.MetadynamicKernel(state_dim, grad_dim, (8,), **kwargs)(z, g, memory, t)

    return hk.without_apply_rng(hk.transform(fn))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_metadynamic_kernel_shapes_dtypes_and_gradient_descent_at_init(dtype):
    with x64():
        dtype = jnp.dtype(dtype)
        z = jax.random.normal(jax.random.PRNGKey(0), (5, 3), dtype)
        g = jax.random.normal(jax.random.PRNGKey(1), (5, 3), dtype)
        plain = kernel_fn()
        recurrent = kernel_fn(memory_size=4, step_fraction=True, output_scale=0.5)

        # Every init and apply in one compiled program (eagerly, each op compiled alone).
        @jax.jit
        def outputs(z, g):
            delta_plain = plain.apply(plain.init(jax.random.PRNGKey(2), z, g), z, g)
            psi = recurrent.init(jax.random.PRNGKey(2), z, g, None, 0.0)
            delta, memory = recurrent.apply(psi, z, g, None, 0.25)
            delta_later, _ = recurrent.apply(psi, z, g, memory, 0.25)
            delta_t, _ = recurrent.apply(psi, z, g, None, 0.75)
            return delta_plain, psi, delta, memory, delta_later, delta_t

        delta, psi, delta_recurrent, memory, delta_later, delta_t = outputs(z, g)
        assert delta.shape == (5, 3) and delta.dtype == dtype
        np.testing.assert_allclose(delta, -0.1 * g, rtol=1e-6)  # moves z along -grad

        assert all(leaf.dtype == dtype for leaf in jax.tree_util.tree_leaves(psi))
        delta = delta_recurrent
        assert delta.shape == (5, 3) and delta.dtype == dtype and memory.shape == (5, 4) and memory.dtype == dtype
        # With a non-zero output scale the network, the memory and t all change the update.
        assert float(jnp.max(jnp.abs(delta + 0.1 * g))) > 1e-3
        assert float(jnp.max(jnp.abs(delta_later - delta))) > 1e-4 and float(jnp.max(jnp.abs(delta_t - delta))) > 1e-4


def test_coordinatewise_kernel_adapts_any_pytree_and_starts_as_sgd():
    kernel = metax.kernel.CoordinatewiseKernel(hidden_sizes=(8,), step_size=0.05)
    mlp = {"w": jnp.ones((3, 2)), "b": jnp.zeros((2,)), "scale": jnp.ones(())}
    other = {"conv": jnp.ones((2, 2, 1, 4))}
    grads = jax.tree_util.tree_map(lambda p: jnp.arange(p.size, dtype=p.dtype).reshape(p.shape) - 2.0, mlp)

    # Everything in one compiled program (eagerly, each op compiled alone).
    @jax.jit
    def outputs():
        theta = kernel.init(jax.random.PRNGKey(0), mlp)
        optimizer = kernel.optimizer(theta)
        updates, state = optimizer.update(grads, optimizer.init(mlp), mlp)
        # A non-zero output scale lets the network act on the same params.
        scaled = {**theta, "~": {**theta["~"], "output_scale": jnp.asarray(0.3)}}
        moved = kernel.optimizer(scaled).update(grads, kernel.optimizer(scaled).init(mlp), mlp)[0]
        return theta, kernel.init(jax.random.PRNGKey(0), other), updates, state, moved

    theta, theta_other, updates, state, moved = outputs()
    # One theta, shared by every coordinate, whatever the params' shapes.
    shapes = jax.tree_util.tree_map(jnp.shape, theta)
    assert shapes == jax.tree_util.tree_map(jnp.shape, theta_other)
    assert jax.tree_util.tree_map(lambda u: (u.shape, u.dtype), updates) == jax.tree_util.tree_map(lambda p: (p.shape, p.dtype), mlp)
    for u, g in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(grads)):
        np.testing.assert_allclose(u, -0.05 * g, rtol=1e-6)
    assert int(state.count) == 1 and len(state.momenta) == 3
    np.testing.assert_allclose(state.momenta[0]["w"], 0.5 * grads["w"], rtol=1e-6)  # decay 0.5
    assert float(jnp.max(jnp.abs(moved["w"] + 0.05 * grads["w"]))) > 1e-3


# -- meta-gradients -----------------------------------------------------------------------


def perturb(tree, scale, seed):
    flat, unravel = ravel_pytree(tree)
    noise = jax.random.uniform(jax.random.PRNGKey(seed), flat.shape, flat.dtype, -scale, scale)
    return unravel(flat + noise)


def fd_gradient(loss_of, flat, eps):
    """Central differences of `loss_of(flat)`, all coordinates in one vmapped call."""
    steps = eps * jnp.eye(flat.size, dtype=flat.dtype)
    values = jax.jit(jax.vmap(loss_of))(jnp.concatenate([flat + steps, flat - steps]))
    return np.asarray((values[: flat.size] - values[flat.size:]) / (2 * eps))


KERNELS = {
    "coordinatewise": lambda: metax.kernel.CoordinatewiseKernel(hidden_sizes=(4,), step_size=0.1, output_scale=0.3, decays=(0.5, 0.9)),
    "metadynamic_memory": lambda: metax.kernel.MetadynamicOptimizer(
        13, (6,), step_size=0.1, output_scale=0.3, memory_size=2, step_fraction=True, horizon=3
    ),
}


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_meta_gradient_matches_finite_differences(float64, kernel_name):
    learner = metax.learner.LearnedKernel(learned_init(), None, 3, KERNELS[kernel_name](), optax.sgd(1.0))
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(0, 1, dtype=jnp.float64))
    meta_state = learner.reset(jax.random.PRNGKey(1), task.train.x)
    hparams = perturb(meta_state.hparams, 0.05, seed=2)
    flat, unravel = ravel_pytree(hparams)
    rng = jax.random.PRNGKey(3)
    hgrads, _, _ = jax.jit(learner.grad)(rng, meta_state.hstate, hparams, task)
    fd = fd_gradient(lambda f: learner.outer_loss(rng, meta_state.hstate, unravel(f), task, 3)[0], flat, 1e-6)
    analytic = np.asarray(ravel_pytree(hgrads)[0])
    assert np.linalg.norm(analytic - fd) / np.linalg.norm(fd) < 1e-6
    # The kernel's own weights (network included) receive a real gradient.
    assert np.linalg.norm(ravel_pytree(hgrads.optimizer)[0]) > 1e-4


def test_remat_and_truncation_reach_the_shared_loop(float64):
    kernel = KERNELS["coordinatewise"]
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(4, 1, dtype=jnp.float64))
    learners = {
        name: metax.learner.LearnedKernel(learned_init(), None, 3, kernel(), optax.sgd(1.0), **kwargs)
        for name, kwargs in {"full": {}, "remat": {"remat": True}, "truncated": {"truncation": 1}}.items()
    }
    meta_state = learners["full"].reset(jax.random.PRNGKey(1), task.train.x)
    hparams = perturb(meta_state.hparams, 0.05, seed=5)
    grads = {name: l.grad(jax.random.PRNGKey(6), meta_state.hstate, hparams, task)[0] for name, l in learners.items()}
    flat = {name: np.asarray(ravel_pytree(g)[0]) for name, g in grads.items()}
    np.testing.assert_allclose(flat["remat"], flat["full"], rtol=1e-10, atol=1e-14)
    # The initialisation acts only through the carry, which truncation cuts: its
    # meta-gradient vanishes, while the kernel's (which acts in the last step) does not.
    init_grad = lambda name: np.asarray(ravel_pytree(grads[name].module)[0])
    assert np.linalg.norm(init_grad("full")) > 1e-3 and np.all(init_grad("truncated") == 0)
    assert np.linalg.norm(ravel_pytree(grads["truncated"].optimizer)[0]) > 1e-4


def test_continue_descent_resumes_the_optimiser_state_exactly(float64):
    """Two segments of 2 steps == one loop of 4 steps, optimiser state (momenta, count) included."""
    learner = metax.learner.LearnedKernel(learned_init(), None, 4, KERNELS["coordinatewise"](), optax.sgd(1.0), estimator="pes", truncation=2, es_kwargs={"population_size": 2})
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(7, 1, dtype=jnp.float64))
    meta_state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    hparams = perturb(meta_state.hparams, 0.05, seed=8)
    carry = learner._start(jax.random.PRNGKey(1), meta_state.hstate, hparams, task)
    energy = learner.support_energy(meta_state.hstate, task.train)
    optimizer = learner.inner_optimizer(hparams)
    for segment in range(2):
        carry, _ = learner.continue_descent(jax.random.PRNGKey(segment), carry, hparams, energy, optimizer, 2)
    # Reference: the optax loop written out by hand.
    params, state = learner.meta_model.reset_params(jax.random.PRNGKey(1), hparams, meta_state.hstate, task.train.x)
    opt_state = optimizer.init(params)
    for _ in range(4):
        grads = jax.grad(lambda p: energy(jax.random.PRNGKey(0), state, p, hparams)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(ravel_pytree(carry.params)[0], ravel_pytree(params)[0], rtol=1e-12)
    np.testing.assert_allclose(ravel_pytree(carry.opt_state.momenta)[0], ravel_pytree(opt_state.momenta)[0], rtol=1e-12)
    assert int(carry.opt_state.count) == 4


def summing_optimizer():
    """Leaves theta where it is and sums the gradients it is given in its state."""
    return optax.GradientTransformation(
        lambda params: jnp.zeros_like(params), lambda grads, total, params=None: (jnp.zeros_like(grads), total + grads)
    )


@pytest.mark.parametrize("estimator", ["pes", "noise_reuse"])
def test_es_estimate_matches_backprop_of_the_segment_objective(float64, estimator):
    steps, unroll = 4, 2
    model = learned_init(base_learner=tiny_mlp(hidden=(2,)))
    kernel = lambda: metax.kernel.CoordinatewiseKernel(hidden_sizes=(3,), step_size=0.1, output_scale=0.3, decays=(0.9,))
    es = metax.learner.LearnedKernel(
        model, None, steps, kernel(), summing_optimizer(), estimator=estimator, truncation=unroll,
        es_kwargs={"population_size": 8000, "sigma_init": 1e-3},
    )
    batch = sinusoid_batch(11, 2, dtype=jnp.float64)
    meta_state = es.reset(jax.random.PRNGKey(0), batch.train.x[0])
    hparams = perturb(meta_state.hparams, 0.05, seed=12)
    strategy = es.strategy(hparams)
    meta_state = meta_state._replace(hparams=hparams, optim=meta_state.optim._replace(
        strategy_state=strategy.init(jax.random.PRNGKey(1), hparams, meta_state.optim.strategy_params)))
    new_state, metrics = jax.jit(es.update)(jax.random.PRNGKey(2), meta_state, batch)
    estimate = np.asarray(new_state.optim.strategy_state.opt_state)
    np.testing.assert_array_equal(ravel_pytree(new_state.hparams)[0], ravel_pytree(hparams)[0])

    # Reference: the query loss at each segment end, averaged over segments and tasks,
    # for one theta throughout, by backpropagation through a hand-written loop.
    flat, unravel = ravel_pytree(hparams)

    def objective(flat):
        hp = unravel(flat)
        optimizer, total = es.inner_optimizer(hp), 0.0
        for t in range(2):
            task = jax.tree_util.tree_map(lambda a: a[t], batch)
            params, state = es.meta_model.reset_params(jax.random.PRNGKey(0), hp, meta_state.hstate, task.train.x)
            opt_state = optimizer.init(params)
            for step in range(steps):
                grads = jax.grad(lambda p: es.inner_loss(jax.random.PRNGKey(0), state, meta_state.hstate, p, hp, task.train)[0])(params)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                params = optax.apply_updates(params, updates)
                if (step + 1) % unroll == 0:
                    total += es.query_energy(jax.random.PRNGKey(0), state, meta_state.hstate, params, hp, task.test)[0]
        return total / (2 * steps // unroll)

    # Value and gradient in one compiled program (jitting each apart compiled it twice).
    objective_value, reference = jax.jit(jax.value_and_grad(objective))(flat)
    reference = np.asarray(reference)
    cosine = estimate @ reference / (np.linalg.norm(estimate) * np.linalg.norm(reference))
    assert cosine > 0.97, cosine
    assert abs(np.linalg.norm(estimate) / np.linalg.norm(reference) - 1) < 0.15
    np.testing.assert_allclose(float(metrics["loss_outer_segments"]), float(objective_value), rtol=1e-3)


# -- the seed's claim on a toy with a known optimum --------------------------------------------


class NoisyQuadratic(metax.energy.EnergyFunction):
    """0.5 * sum a (z - z*)^2 (as 0.5 * |pred - target|^2), plus a linear term whose
    gradient is Gaussian noise of std `sigma` per coordinate, drawn afresh every call."""

    def __init__(self, sigma):
        super().__init__("sum")
        self.sigma = sigma

    def __call__(self, rng, pred, target, params, hparams, state, hstate, info=None):
        loss = 0.5 * jnp.sum((pred - target) ** 2)
        if self.sigma:
            noise = self.sigma * jax.random.normal(rng, params.shape, params.dtype)
            loss = loss + jnp.sum(jax.lax.stop_gradient(noise) * params)
        return loss, {"loss": loss}


class QuadraticInference(MetaModule):
    """Infers z from z0 = 0; a task's x holds the curvatures a, y holds sqrt(a) * z*."""

    def __call__(self, rng, state, hstate, params, hparams, input, is_training):
        return jnp.sqrt(input) * params[None, :], (state, hstate)

    def reset_hparams(self, rng, sample_input):
        return {}, {}

    def reset_params(self, rng, hparams, hstate, sample_input):
        return jnp.zeros(sample_input.shape[-1], sample_input.dtype), {}


def quadratic_tasks(key, n, dim):
    key_a, key_z = jax.random.split(key)
    a = jax.random.uniform(key_a, (n, 1, dim), minval=0.5, maxval=1.5)
    z_star = jax.random.normal(key_z, (n, 1, dim))
    data = metax.data.Dataset(a, jnp.sqrt(a) * z_star)
    return metax.data.MetaDataset(data, data)


def test_meta_trained_kernel_with_memory_beats_tuned_gradient_descent_at_high_noise():
    dim, steps, sigma = 4, 20, 2.0  # noise norm 2 * sqrt(dim): twice the typical gradient norm at z0
    module = lambda: QuadraticInference(NoisyQuadratic(sigma), NoisyQuadratic(0.0))
    kernel = metax.kernel.MetadynamicOptimizer(
        dim, (32,), step_size=0.07, memory_size=8, step_fraction=True, horizon=steps, check_finite=False
    )
    learner = metax.learner.LearnedKernel(module(), None, steps, kernel, optax.adam(3e-3))
    held_out = quadratic_tasks(jax.random.PRNGKey(99), 2000, dim)
    meta_state = learner.reset(jax.random.PRNGKey(0), held_out.train.x[0])

    def meta_step(state, step):  # the tasks are drawn inside the scan: one compiled program
        batch = quadratic_tasks(jax.random.PRNGKey(1000 + step), 64, dim)
        return learner.update(jax.random.PRNGKey(step), state, batch)[0], None

    meta_state, _ = jax.jit(lambda state: jax.lax.scan(meta_step, state, jnp.arange(300)))(meta_state)
    rng = jax.random.PRNGKey(7)  # the same gradient noise for every method
    learned = float(jax.jit(learner.eval, static_argnames="steps")(rng, meta_state, held_out, steps)[1]["loss_outer"])

    # Gradient descent with its learning rate tuned on the held-out problems themselves.
    sgd = metax.learner.ModelAgnosticMetaLearning(module(), None, steps, metax.kernel.ScalarLR(0.1), optax.sgd(0.0))
    sgd_state = sgd.reset(jax.random.PRNGKey(0), held_out.train.x[0])
    evaluate = lambda lr: sgd.eval(rng, sgd_state._replace(hparams=sgd_state.hparams._replace(optimizer=jnp.log(lr))), held_out, steps)[1]["loss_outer"]
    rates = np.geomspace(0.02, 0.3, 15)
    gd = np.asarray(jax.jit(jax.vmap(evaluate))(jnp.asarray(rates)))
    assert 0 < np.argmin(gd) < len(rates) - 1  # the best rate is inside the grid
    optimum = 0.5 * 4 * 1.0 / (1 + steps / sigma**2)  # Bayes error of z* ~ N(0, I) given steps noisy gradients, a = 1
    assert learned < 0.95 * gd.min(), (learned, gd.min())
    assert learned > 0.9 * optimum  # sanity: nothing beats the posterior (approximately, a varies)


# -- bad input ----------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors():
    z, g = jnp.zeros((2, 3)), jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, state_dim=4\), got \(2, 3\); pass state_dim=3"):
        kernel_fn(4, 4).init(jax.random.PRNGKey(0), z, jnp.ones((2, 4)))
    with pytest.raises(ValueError, match=r"grad must have shape \(batch, grad_dim=3\), got \(2, 5\)"):
        kernel_fn(3, 3).init(jax.random.PRNGKey(0), z, jnp.ones((2, 5)))
    with pytest.raises(ValueError, match="needs grad_dim == state_dim.*step_size=None"):
        kernel_fn(3, 5).init(jax.random.PRNGKey(0), z, jnp.ones((2, 5)))
    delta = kernel_fn(3, 5, step_size=None).apply(kernel_fn(3, 5, step_size=None).init(jax.random.PRNGKey(0), z, jnp.ones((2, 5))), z, jnp.ones((2, 5)))
    assert delta.shape == (2, 3) and float(jnp.max(jnp.abs(delta))) == 0.0  # output scale 0: no move
    optimizer = metax.kernel.MetadynamicOptimizer(5)
    with pytest.raises(ValueError, match="state_dim=5 but the params have 3 entries per row.*pass state_dim=3"):
        optimizer.init(jax.random.PRNGKey(0), z)

    # With the opt-in debugging check, a non-finite gradient names its step, eagerly and under jit.
    kernel = metax.kernel.MetadynamicOptimizer(3, check_finite=True)
    opt = kernel.optimizer(kernel.init(jax.random.PRNGKey(0), z))
    state = opt.init(z)
    _, state = opt.update(g, state, z)
    with pytest.raises(ValueError, match=r"non-finite gradient at inner step 1 \(counting from 0\)"):
        opt.update(g.at[0, 1].set(jnp.nan), state, z)
    learner = metax.learner.LearnedKernel(learned_init(), None, 3, metax.kernel.CoordinatewiseKernel(check_finite=True), optax.sgd(0.1))
    batch = sinusoid_batch(0, 2)
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    poisoned = batch._replace(train=batch.train._replace(y=batch.train.y.at[1, 0, 0].set(jnp.inf)))
    with pytest.raises(Exception, match=r"CoordinatewiseKernel: non-finite gradient at inner step 0"):
        jax.block_until_ready(jax.jit(learner.eval, static_argnames="steps")(jax.random.PRNGKey(0), meta_state, poisoned, 3))

    sgd = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"truncation=5 must lie in \[1, steps_inner=3\]"):
        metax.learner.LearnedKernel(learned_init(), None, 3, metax.kernel.MetaSGD(0.1), sgd, truncation=5)
    with pytest.raises(ValueError, match="truncation=2 steps, which must divide steps_inner=3"):
        metax.learner.LearnedKernel(learned_init(), None, 3, metax.kernel.MetaSGD(0.1), sgd, estimator="pes", truncation=2)
    with pytest.raises(ValueError, match="population_size must be an even int"):
        metax.learner.LearnedKernel(learned_init(), None, 2, metax.kernel.MetaSGD(0.1), sgd, estimator="pes", es_kwargs={"population_size": 5})
    with pytest.raises(ValueError, match="estimator must be one of"):
        metax.learner.LearnedKernel(learned_init(), None, 2, metax.kernel.MetaSGD(0.1), sgd, estimator="reinforce")
    with pytest.raises(ValueError, match="remat and first_order apply to estimator='backprop'"):
        metax.learner.LearnedKernel(learned_init(), None, 2, metax.kernel.MetaSGD(0.1), sgd, estimator="noise_reuse", remat=True)
    with pytest.raises(TypeError, match="needs a learned update rule.*ModelAgnosticMetaLearning"):
        metax.learner.LearnedKernel(learned_init(), None, 2, sgd, sgd)


# -- with other modules ------------------------------------------------------------------------


def gainmod():
    def body(x, is_training, gain=None, shift=None):
        return metax.models.MultilayerPerceptron([8], activate_final=True)(x, is_training, gain=gain, shift=shift)

    sq = metax.energy.SquaredError
    return metax.module.GainMod(sq(), sq(), hk.transform_with_state(body), [8], 1, adapt_head=True)


def cavia():
    sq = metax.energy.SquaredError
    return metax.module.CAVIA(sq(), sq(), metax.models.mlp_fn([8], 1), embedding_dim=2)


@pytest.mark.parametrize(
    "module, estimator, kernel",
    [
        (gainmod, "backprop", lambda: metax.kernel.CoordinatewiseKernel(output_scale=0.01)),
        (cavia, "pes", lambda: metax.kernel.CoordinatewiseKernel(output_scale=0.01)),
        (learned_init, "noise_reuse", lambda: metax.kernel.MetaSGD(0.05)),
    ],
)
def test_learned_kernel_with_other_modules(module, estimator, kernel):
    kwargs = {} if estimator == "backprop" else {"truncation": 1, "es_kwargs": {"population_size": 4, "sigma_init": 0.01}}
    learner = metax.learner.LearnedKernel(module(), None, 2, kernel(), optax.adam(1e-2), estimator=estimator, **kwargs)
    sample_task = metax.data.make_task_sampler("family", 6, 4)
    meta_state = learner.reset(jax.random.PRNGKey(0), sample_task(jax.random.PRNGKey(1)).train.x)
    start = meta_state
    layout = jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), meta_state.hparams)
    update = jax.jit(learner.update)
    for step in range(2):
        metabatch = metax.data.sample_metabatch(jax.random.PRNGKey(10 + step), sample_task, 3)
        meta_state, metrics = update(jax.random.PRNGKey(step), meta_state, metabatch)
        assert np.isfinite(float(metrics["loss_outer"]))
    assert jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), meta_state.hparams) == layout
    moved = ravel_pytree(meta_state.hparams.optimizer)[0] - ravel_pytree(start.hparams.optimizer)[0]
    assert float(jnp.max(jnp.abs(moved))) > 0  # the kernel's weights are meta-learned


def test_quickstart_snippet_is_in_the_readme():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "```python\n" + QUICKSTART + "```" in readme
