"""`MetaLearner.eval(..., per_task=True)` returns one score per task."""

import jax
import numpy as np
import optax

import metax
from conftest import learned_init, sinusoid_batch


def test_per_task_scores_equal_a_loop_over_tasks_and_average_to_the_mean():
    learner = metax.learner.ModelAgnosticMetaLearning(learned_init(), None, 2, optax.sgd(0.1), optax.adam(1e-3))
    tasks = sinusoid_batch(0, 5)
    meta_state = learner.reset(jax.random.PRNGKey(0), tasks.train.x[0])
    evaluate = jax.jit(learner.eval, static_argnames=("steps", "per_task"))
    rng = jax.random.PRNGKey(3)
    _, per_task = evaluate(rng, meta_state, tasks, steps=2, per_task=True)
    _, mean = evaluate(rng, meta_state, tasks, steps=2)
    assert per_task["loss_outer"].shape == (5,)
    np.testing.assert_allclose(per_task["loss_outer"].mean(), mean["loss_outer"], rtol=1e-6)
    # Independent: adapt and score each task on its own, with the key eval gives it.
    rngs = jax.random.split(rng, 5)
    for i in range(5):
        task = jax.tree_util.tree_map(lambda a: a[i], tasks)
        loss, _ = learner.outer_loss(rngs[i], meta_state.hstate, meta_state.hparams, task, 2)
        np.testing.assert_allclose(per_task["loss_outer"][i], loss, rtol=1e-5)
