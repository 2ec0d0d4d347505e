"""Every learner x every module on a small `family` problem.

A valid pair runs 3 jitted meta-steps with finite losses and keeps the meta-state's
pytree structure, shapes and dtypes; an invalid pair fails at construction with the
documented error. The table of which pairs are valid is written out here by hand, from
the documentation, rather than derived from the modules' own properties.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metax

SQ = metax.energy.SquaredError


def body_fn(x, is_training, gain=None, shift=None):
    return metax.models.MultilayerPerceptron([8], activate_final=True)(x, is_training, gain=gain, shift=shift)


MODULES = {
    "learned_init": lambda: metax.module.LearnedInit(SQ(), SQ(), metax.models.mlp_fn([8], 1), output_dim=1),
    "learned_init_imaml": lambda: metax.module.LearnedInit(SQ(), SQ(), metax.models.mlp_fn([8], 1), reg_strength=1.0, output_dim=1),
    "anil": lambda: metax.module.ANIL(SQ(), SQ(), hk.transform_with_state(body_fn), output_dim=1),
    "anil_imaml": lambda: metax.module.ANIL(SQ(), SQ(), hk.transform_with_state(body_fn), output_dim=1, reg_strength=1.0),
    "cavia": lambda: metax.module.CAVIA(SQ(), SQ(), metax.models.mlp_fn([8], 1), embedding_dim=2),
    "gainmod": lambda: metax.module.GainMod(SQ(), SQ(), hk.transform_with_state(body_fn), [8], 1, adapt_head=True),
    "gainmod_imaml": lambda: metax.module.GainMod(SQ(), SQ(), hk.transform_with_state(body_fn), [8], 1, adapt_head=True, reg_strength=1.0),
    "compsyn": lambda: metax.module.ComplexSynapse(SQ(), SQ(), metax.models.mlp_fn([8], 1), l2_reg=1.0, l2_fixed=False),
    "compsyn_fixed": lambda: metax.module.ComplexSynapse(SQ(), SQ(), metax.models.mlp_fn([8], 1), l2_reg=1.0, l2_fixed=True),
}

SGD = optax.sgd(0.05)
LEARNERS = {
    "maml": lambda m: metax.learner.ModelAgnosticMetaLearning(m, None, 2, SGD, optax.adam(1e-2)),
    "fomaml": lambda m: metax.learner.ModelAgnosticMetaLearning(m, None, 2, SGD, optax.adam(1e-2), first_order=True),
    "reptile": lambda m: metax.learner.Reptile(m, None, 2, SGD, optax.sgd(0.1)),
    "buffered_reptile": lambda m: metax.learner.BufferedReptile(m, 3, 2, SGD, optax.sgd(0.1)),
    "eqprop": lambda m: metax.learner.EquilibriumPropagation(m, None, 3, 2, SGD, SGD, optax.adam(1e-2), 0.1),
    "symmetric_eqprop": lambda m: metax.learner.SymmetricEquilibriumPropagation(m, None, 3, 2, SGD, SGD, optax.adam(1e-2), 0.1),
    "cg": lambda m: metax.learner.ConjugateGradient(m, None, 3, 3, SGD, optax.adam(1e-2)),
    "rbp": lambda m: metax.learner.RecurrentBackpropagation(m, None, 3, 3, SGD, optax.adam(1e-2), 0.1),
    "t1t2": lambda m: metax.learner.T1T2(m, None, 3, SGD, optax.adam(1e-2)),
    "evosax": lambda m: metax.learner.Evosax(m, None, 2, SGD, (1,), "Open_ES", {"population_size": 4, "sigma_init": 0.05}),
}

# Modules whose hparams include an initialisation that acts only through the optimiser:
# implicit learners and EqProp refuse them. Modules with no initialisation at all:
# the Reptiles refuse them.
INIT_ONLY_THROUGH_OPTIMISER = {"learned_init", "anil", "gainmod"}
NO_INITIALISATION = {"cavia"}
END_POINT_LEARNERS = {"eqprop", "symmetric_eqprop", "cg", "rbp", "t1t2"}
REPTILES = {"reptile", "buffered_reptile"}


def expected_error(learner, module):
    if learner in END_POINT_LEARNERS and module in INIT_ONLY_THROUGH_OPTIMISER:
        return "only set the optimiser's starting point"
    if learner in REPTILES and module in NO_INITIALISATION:
        return "no params that start from an hparam"
    return None


PAIRS = [(l, m) for l in LEARNERS for m in MODULES]


def test_the_table_has_both_kinds_of_pair():
    errors = [expected_error(l, m) for l, m in PAIRS]
    assert sum(e is None for e in errors) > 60 and sum(e is not None for e in errors) == 17


@pytest.mark.parametrize("learner_name, module_name", PAIRS)
def test_pair(learner_name, module_name):
    error = expected_error(learner_name, module_name)
    if error is not None:
        with pytest.raises(ValueError, match=error):
            LEARNERS[learner_name](MODULES[module_name]())
        return

    learner = LEARNERS[learner_name](MODULES[module_name]())
    sample_task = metax.data.make_task_sampler("family", 6, 4)
    meta_state = learner.reset(jax.random.PRNGKey(0), sample_task(jax.random.PRNGKey(1)).train.x)
    before = jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), meta_state)
    structure = jax.tree_util.tree_structure(meta_state)
    update = jax.jit(learner.update)
    for step in range(3):
        metabatch = metax.data.sample_metabatch(jax.random.PRNGKey(10 + step), sample_task, 3)
        meta_state, metrics = update(jax.random.PRNGKey(step), meta_state, metabatch)
        assert np.isfinite(float(metrics["loss_outer"])), (learner_name, module_name, step)
    assert jax.tree_util.tree_structure(meta_state) == structure
    assert jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), meta_state) == before
    # The meta-parameters moved.
    start = learner.reset(jax.random.PRNGKey(0), sample_task(jax.random.PRNGKey(1)).train.x).hparams
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), meta_state.hparams, start)
    assert max(jax.tree_util.tree_leaves(moved)) > 0
    # eval adapts every held-out task and reports the query loss.
    held_out = metax.data.sample_metabatch(jax.random.PRNGKey(99), sample_task, 4)
    _, eval_metrics = jax.jit(learner.eval, static_argnames="steps")(jax.random.PRNGKey(5), meta_state, held_out, 2)
    assert np.isfinite(float(eval_metrics["loss_outer"]))
