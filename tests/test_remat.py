"""Block rematerialisation of the shared inner loop: the same meta-gradients as the plain
loop, less memory, and clear errors for bad block lengths."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import learned_init, sinusoid_batch, tiny_mlp

SGD = optax.sgd(0.1)


def maml(steps, **kwargs):
    return metax.learner.ModelAgnosticMetaLearning(learned_init(), None, steps, SGD, SGD, False, **kwargs)


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


@pytest.fixture
def task():
    return jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(4, 1, dtype=jnp.float64))


def test_block_lengths():
    length = metax.learner.base.remat_block_length
    # ceil(sqrt(K)); an int is taken as given; True / False use no blocks.
    assert [length("block", k) for k in (1, 4, 5, 9, 10, 500)] == [1, 2, 3, 3, 4, 23]
    assert (length(3, 7), length(True, 7), length(False, 7)) == (3, None, None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"remat": "block"},  # K=5: blocks of 3, then a remainder of 2
        {"remat": 2, "truncation": 4},  # blocks of 2, 2, a remainder of 1; the cut inside the first block
    ],
    ids=["block", "truncated"],
)
def test_block_remat_meta_gradient_equals_the_plain_loop(float64, task, kwargs):
    """Second-order MAML with a learned learning rate (ScalarLR), so that the meta-gradient
    flows through every step, truncated or not; K=5 is divisible by no block used."""

    def learner(**options):
        return metax.learner.ModelAgnosticMetaLearning(
            learned_init(), None, 5, metax.kernel.ScalarLR(0.1), SGD, False, **options
        )

    plain, blocked = learner(truncation=kwargs.get("truncation")), learner(**kwargs)
    state = plain.reset(jax.random.PRNGKey(0), task.train.x)
    rng = jax.random.PRNGKey(1)
    expected, _, metrics = jax.jit(plain.grad)(rng, state.hstate, state.hparams, task)
    got, _, got_metrics = jax.jit(blocked.grad)(rng, state.hstate, state.hparams, task)
    # The rate gets a meta-gradient through the steps after the cut; the initialisation
    # through the carry, unless truncation cuts it off (then it is exactly zero).
    assert abs(float(expected.optimizer)) > 1e-3
    assert (np.linalg.norm(flat(expected.module)) > 1e-3) == ("truncation" not in kwargs)
    np.testing.assert_allclose(flat(got), flat(expected), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got_metrics["loss_outer"], metrics["loss_outer"], rtol=1e-12)


def test_block_remat_keeps_every_step_in_order(float64, task):
    """The loop's outputs (losses, the trajectory, the final params) equal the plain
    scan's step by step, remainder included: a block that skipped, repeated or reordered
    steps would show here even where a gradient might hide it. `descend` (public) checks
    the block against the loop it runs; `adapt` caps it (eval may run shorter loops)."""
    learner = maml(5, remat=5)
    state = learner.reset(jax.random.PRNGKey(0), task.train.x)
    params, model_state = learner.meta_model.reset_params(jax.random.PRNGKey(0), state.hparams, state.hstate, task.train.x)
    energy = learner.support_energy(state.hstate, task.train)

    def run(remat):
        return learner.descend(
            jax.random.PRNGKey(2), model_state, params, state.hparams, energy, SGD, 5, remat=remat, return_trajectory=True
        )

    _, final, losses, _, trajectory = run(False)
    assert np.all(np.diff(np.asarray(losses)) < 0)  # the steps do something
    for remat in ("block", 2):
        _, got_final, got_losses, _, got_trajectory = run(remat)
        np.testing.assert_allclose(got_losses, losses, rtol=1e-13)
        np.testing.assert_allclose(flat(got_trajectory), flat(trajectory), rtol=1e-13)
        np.testing.assert_allclose(flat(got_final), flat(final), rtol=1e-13)
    with pytest.raises(ValueError, match=r"remat=4 .* must lie in \[1, steps=3\]"):
        learner.descend(jax.random.PRNGKey(0), model_state, params, state.hparams, energy, SGD, 3, remat=4)
    assert (learner._remat_for(3), learner._remat_for(5), maml(5, remat="block")._remat_for(3)) == (3, 5, "block")


def test_block_remat_needs_less_memory():
    """XLA's own accounting of the compiled meta-gradient: with K=36 steps a plain loop
    stores all 36 steps' params, blocks of 6 only 6 boundaries plus one block. A block
    that was not checkpointed would give equal values but no saving."""
    steps, width = 36, 16
    module = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), tiny_mlp((width, width)), output_dim=1
    )
    task = jax.tree_util.tree_map(lambda a: a[0], sinusoid_batch(0, 1))

    def temp_bytes(remat):
        learner = metax.learner.ModelAgnosticMetaLearning(module, None, steps, SGD, SGD, False, remat=remat)
        state = learner.reset(jax.random.PRNGKey(0), task.train.x)
        compiled = jax.jit(learner.grad).lower(jax.random.PRNGKey(1), state.hstate, state.hparams, task).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, block = temp_bytes(False), temp_bytes("block")
    params_bytes = 4 * (width + width + width * width + width + width + 1)
    assert plain > steps * params_bytes  # the plain loop keeps every step's params
    assert block < plain / 2, (block, plain)


@pytest.mark.parametrize(
    "remat, error, message",
    [
        (3, ValueError, r"remat=3 \(the block length of rematerialisation\) must lie in \[1, steps_inner=2\]; use remat=\"block\""),
        (0, ValueError, r"remat=0 \(the block length .*\) must lie in \[1, steps_inner=2\]"),
        (-1, ValueError, r"remat=-1 \(the block length .*\) must lie in \[1, steps_inner=2\]"),
        ("blocks", ValueError, r"remat='blocks' is not an option: use False, True \(every step\), \"block\""),
        (2.0, TypeError, r"remat must be False, True, \"block\" or an int block length, got 2.0 \(float\)"),
        (None, TypeError, r"remat must be False, True, \"block\" or an int block length, got None"),
    ],
)
def test_bad_remat_fails_at_construction(remat, error, message):
    with pytest.raises(error, match=message):
        maml(2, remat=remat)


@pytest.mark.parametrize("remat", ["block", 2, True])
def test_learners_without_a_gradient_through_the_loop_refuse_remat(remat):
    for build in (
        lambda: metax.learner.Reptile(learned_init(), None, 2, SGD, SGD, remat=remat),
        lambda: metax.learner.T1T2(learned_init(reg_strength=1.0), None, 2, SGD, SGD, remat=remat),
    ):
        with pytest.raises(ValueError, match=rf"takes no gradient through the inner loop, so remat={remat!r} would change nothing"):
            build()
