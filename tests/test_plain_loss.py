"""metax's loss convention: a plain function `loss_fn(rng, pred, target, params, hparams,
state, hstate, info) -> (loss, metrics)` is a loss, in every module, with every learner.

Every learner trains on a module it supports (every module appears) with a plain function
that computes the mean squared error; under MAML two jitted updates give the same
meta-parameters as `metax.energy.SquaredError()`, and a spy pins the argument order.
Tiny problems from tests/test_conformance.py.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import metax
from conftest import x64
from test_conformance import END_POINT, LEARNER_OPTIMIZERS, LEARNERS, OPTIMIZERS, body, tanh_mlp, tasks

SQ = metax.energy.SquaredError


def mse(rng, pred, target, params, hparams, state, hstate, info):
    """A metax user's loss: a plain function, no EnergyFunction in sight."""
    loss = jnp.mean(jnp.square(pred - target))
    return loss, {"loss": loss}


def modules(loss):
    return {
        "learned_init": lambda: metax.module.LearnedInit(loss(), loss(), tanh_mlp(), output_dim=1),
        "learned_init_imaml": lambda: metax.module.LearnedInit(loss(), loss(), tanh_mlp(), reg_strength=1.0, output_dim=1),
        "anil": lambda: metax.module.ANIL(loss(), loss(), body(), output_dim=1),
        "cavia": lambda: metax.module.CAVIA(loss(), loss(), tanh_mlp(), embedding_dim=2),
        "gainmod": lambda: metax.module.GainMod(loss(), loss(), body(), [4], 1, adapt_head=True),
        "compsyn": lambda: metax.module.ComplexSynapse(loss(), loss(), tanh_mlp(), l2_reg=1.0),
    }


# Every learner once, and every module at least once, on pairs the learners support.
PAIRS = [
    ("maml", "cavia"),
    ("reptile", "gainmod"),
    ("buffered_reptile", "anil"),
    ("eqprop", "compsyn"),
    ("symmetric_eqprop", "learned_init_imaml"),
    ("cg", "anil"),
    ("rbp", "learned_init_imaml"),
    ("t1t2", "gainmod"),
    ("evosax", "learned_init"),
    ("learned_kernel", "learned_init"),
    ("learned_kernel_pes", "learned_init"),
]


def train(learner_name, module_name, loss, steps=2):
    module = modules(loss)[module_name]()
    optimizer = OPTIMIZERS[LEARNER_OPTIMIZERS.get(learner_name, ("sgd",))[0]]()
    learner = LEARNERS[learner_name](module, optimizer)
    batch = tasks(0)
    initial = state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
    update = jax.jit(learner.update)
    for step in range(steps):
        state, metrics = update(jax.random.PRNGKey(10 + step), state, batch)
    return (initial, state), metrics


@pytest.mark.parametrize("learner_name,module_name", PAIRS)
def test_a_plain_function_loss_trains_with_every_learner(learner_name, module_name):
    with x64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ANIL/GainMod under end-point learners warn by design
        (initial, state), metrics = train(learner_name, module_name, lambda: mse)
    got = ravel_pytree(state.hparams)[0]
    assert np.all(np.isfinite(got))
    assert all(np.all(np.isfinite(value)) for value in jax.tree_util.tree_leaves(metrics))
    assert np.abs(got - ravel_pytree(initial.hparams)[0]).max() > 1e-6  # it trained


def test_a_plain_function_loss_gives_the_energys_meta_parameters():
    """The same numbers as SquaredError: the wrapper adds and reorders nothing."""
    with x64():
        (_, state), _ = train("maml", "learned_init", lambda: mse)
        (_, reference), _ = train("maml", "learned_init", SQ)
    np.testing.assert_allclose(ravel_pytree(state.hparams)[0], ravel_pytree(reference.hparams)[0], rtol=1e-10)


def test_the_wrapper_passes_the_arguments_in_the_conventions_order():
    seen = {}

    def spy(rng, pred, target, params, hparams, state, hstate, info):
        seen.update(rng=rng, pred=pred, target=target, params=params, hparams=hparams, state=state, hstate=hstate, info=info)
        return jnp.float32(0.0), {}

    energy = metax.energy.as_energy(spy, "loss_fn_inner")
    names = ("rng", "pred", "target", "params", "hparams", "state", "hstate", "info")
    energy(*names)
    assert seen == {name: name for name in names}
    # `+` composes a plain function with an energy, either side first.
    pred, target = jnp.ones((3, 1)), jnp.zeros((3, 1))
    total = (mse + SQ())(None, pred, target, None, None, None, None, {})[0]
    assert float(total) == 2.0 and float((SQ() + mse)(None, pred, target, None, None, None, None)[0]) == 2.0


@pytest.mark.parametrize(
    "fn,error,match",
    [
        (lambda rng, pred, target, params, hparams, state, hstate, info: jnp.mean(pred), TypeError,
         r"loss_fn_outer \(.*<lambda>\) must return a pair \(loss, metrics\)"),
        (lambda rng, pred, target, params, hparams, state, hstate, info: (jnp.square(pred - target), {}), ValueError,
         r"loss_fn_outer \(.*\) returned a loss of shape \(3, 1\) for one task; it must be a scalar"),
        (lambda pred, target: (jnp.mean(pred), {}), TypeError,
         r"loss_fn_outer must be a loss called as fn\(rng, pred, target, params, hparams, state, hstate, info\)"),
        ("mse", TypeError, r"loss_fn_outer must be a loss called as .* got str, which is not callable"),
    ],
)
def test_a_plain_loss_with_the_wrong_shape_of_result_is_named(fn, error, match):
    with pytest.raises(error, match=match):
        module = metax.module.LearnedInit(SQ(), fn, tanh_mlp(), output_dim=1)
        learner = metax.learner.MAML(module, None, 1, OPTIMIZERS["sgd"](), OPTIMIZERS["sgd"]())
        batch = tasks(0)
        state = learner.reset(jax.random.PRNGKey(1), batch.train.x[0])
        jax.eval_shape(learner.update, jax.random.PRNGKey(0), state, batch)
