"""The evolution learner on evosax >= 0.3: names, kwargs, one compiled population call, progress."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax


def sinusoid_model():
    return metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn([8, 8], 1), output_dim=1
    )


def make(algorithm="Open_ES", kwargs=None, **extra):
    kwargs = {"population_size": 16, "sigma_init": 0.1} if kwargs is None else kwargs
    return metax.learner.Evosax(sinusoid_model(), None, 5, optax.sgd(0.01), (1,), algorithm, kwargs, **extra)


SAMPLE_TASK = metax.data.make_task_sampler("sinusoid", 10, 10)


# CMA-ES halves the loss in 100 generations already (its generations cost most of the
# test's time, its covariance update and eigendecomposition each); Open-ES takes 200.
@pytest.mark.parametrize(
    "algorithm, kwargs, generations",
    [
        ("Open_ES", {"population_size": 16, "sigma_init": 0.1, "optimizer": optax.adam(0.05)}, 200),
        ("CMA_ES", {"population_size": 16, "sigma_init": 0.2}, 100),
    ],
)
def test_strategy_halves_the_outer_loss_within_200_generations(algorithm, kwargs, generations):
    learner = make(algorithm, kwargs)
    stream = metax.data.MetaBatchStream(SAMPLE_TASK, 16, jax.random.PRNGKey(0))
    held_out = metax.data.sample_metabatch(jax.random.PRNGKey(9), SAMPLE_TASK, 200)
    meta_state = learner.reset(jax.random.PRNGKey(1), stream.sample_input)
    assert jax.tree_util.tree_leaves(meta_state.hparams)[0].dtype == jnp.float32
    evaluate = jax.jit(learner.eval, static_argnames="steps")
    before = float(evaluate(jax.random.PRNGKey(2), meta_state, held_out, 5)[1]["loss_outer"])
    update = jax.jit(learner.update)
    for generation, metabatch in zip(range(generations), stream):
        meta_state, metrics = update(jax.random.PRNGKey(generation), meta_state, metabatch)
    after = float(evaluate(jax.random.PRNGKey(2), meta_state, held_out, 5)[1]["loss_outer"])
    # Measured on these seeds: Open_ES 3.86 -> 1.35 (200 generations; 1.85 after 150),
    # CMA_ES 3.86 -> 1.46 (100 generations; 1.07 after 200).
    assert after < 0.5 * before, (before, after)
    assert metrics["fitness_best"] <= metrics["loss_outer"]


def test_population_is_scored_in_one_vmapped_call(monkeypatch):
    learner = make()
    batch = metax.data.sample_metabatch(jax.random.PRNGKey(0), SAMPLE_TASK, 4)
    meta_state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    traces = []
    original = learner.outer_loss

    def counting(*args, **kwargs):
        traces.append(args[2])  # the member's hparams, a tracer under vmap
        return original(*args, **kwargs)

    monkeypatch.setattr(learner, "outer_loss", counting)
    jax.make_jaxpr(learner.update)(jax.random.PRNGKey(0), meta_state, batch)
    # One trace for all 16 members and 4 tasks: a Python loop would trace 16 (or 64) times.
    assert len(traces) == 1
    leaf = jax.tree_util.tree_leaves(traces[0])[0]
    assert leaf.shape == jax.tree_util.tree_leaves(meta_state.hparams)[0].shape


def test_fitness_is_mean_outer_loss_and_mean_is_reported():
    learner = make()
    batch = metax.data.sample_metabatch(jax.random.PRNGKey(0), SAMPLE_TASK, 3)
    meta_state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    new_state, metrics = jax.jit(learner.update)(jax.random.PRNGKey(5), meta_state, batch)
    # Re-ask with the same key: the population the update scored.
    rng_ask, _, rng_tasks = jax.random.split(jax.random.PRNGKey(5), 3)
    population, _ = learner.strategy.ask(rng_ask, *meta_state.optim)
    task_rngs = jax.random.split(rng_tasks, 3)
    outer = jax.jit(learner.outer_loss, static_argnums=4)
    task = lambda t: jax.tree_util.tree_map(lambda a: a[t], batch)
    all_fitness = []
    for m in range(16):
        member = jax.tree_util.tree_map(lambda a: a[m], population)
        all_fitness.append(np.mean([outer(task_rngs[t], meta_state.hstate, member, task(t), 5)[0] for t in range(3)]))
    np.testing.assert_allclose(metrics["fitness_best"], min(all_fitness), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_outer"], np.mean(all_fitness), rtol=1e-5)
    mean = learner.strategy.get_mean(new_state.optim.strategy_state)
    np.testing.assert_array_equal(ravel_pytree(mean)[0], ravel_pytree(new_state.hparams)[0])


def test_report_best_member():
    learner = make(report="best")
    batch = metax.data.sample_metabatch(jax.random.PRNGKey(0), SAMPLE_TASK, 3)
    meta_state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    new_state, metrics = jax.jit(learner.update)(jax.random.PRNGKey(5), meta_state, batch)
    np.testing.assert_array_equal(ravel_pytree(new_state.hparams)[0], new_state.optim.strategy_state.best_solution)
    assert float(new_state.optim.strategy_state.best_fitness) == pytest.approx(float(metrics["fitness_best"]))


def test_legacy_names_and_kwargs_work():
    legacy = {"popsize": 8, "sigma_init": 0.05, "opt_name": "adam", "lrate_init": 0.01}
    learner = make("OpenES", legacy)
    assert type(learner.strategy).__name__ == "Open_ES" and learner.strategy.population_size == 8
    assert float(learner.strategy.std_schedule(0)) == pytest.approx(0.05)
    cma = make("CMA_ES", {"popsize": 8, "sigma_init": 0.3})
    assert float(cma.engine.params(cma.strategy).std_init) == pytest.approx(0.3)
    batch = metax.data.sample_metabatch(jax.random.PRNGKey(0), SAMPLE_TASK, 2)
    for strategy in (learner, cma, make("SimpleGA", {"popsize": 8, "sigma_init": 0.1})):
        meta_state = strategy.reset(jax.random.PRNGKey(1), batch.train.x[0])
        meta_state, metrics = jax.jit(strategy.update)(jax.random.PRNGKey(2), meta_state, batch)
        assert np.isfinite(metrics["loss_outer"]), type(strategy.strategy).__name__


def test_bad_strategy_configuration():
    with pytest.raises(ValueError, match="Open_ES"):
        make("OpenAI_ES")
    with pytest.raises(ValueError, match="population_size"):
        make("Open_ES", {"sigma_init": 0.1})
    with pytest.raises(ValueError, match="not_a_knob"):
        make("Open_ES", {"population_size": 16, "not_a_knob": 1})
    with pytest.raises(ValueError, match="report"):
        make(report="median")
