"""Numerics per learner: float32 meta-gradients agree with float64, and every output keeps
the input's dtype (float32 and bfloat16 in, the same out; nothing hard-coded inside).

The cases are the conformance suite's (benchmarks/numerics.py imports its pairs); the
tolerances come from the table that script writes (benchmarks/RESULTS.md, "Numerics per
learner"), which holds every pair and bfloat16 too.
"""

import os
import sys
import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import metax  # noqa: E402
import numerics  # noqa: E402
from conftest import x64  # noqa: E402

# float32 against float64: ||g32 - g64|| / ||g64|| stays below these. Each is the worst
# error the table measured for the learner over its modules and optimisers (in brackets),
# times ~10 for other platforms' summation orders; float32's unit roundoff is 6e-8, and the
# meta-gradients here take a few hundred roundings each. Where bfloat16 (unit roundoff 4e-3)
# shows what a learner's arithmetic costs, its worst error is given too.
F32_RTOL = {
    "maml": 1e-5,  # backpropagation through 2 inner steps [1.1e-6; bf16 1.8e-2]
    "learned_kernel": 1e-5,  # the same loop with Meta-SGD's learned rates [8.9e-7]
    # The displacement h - p_K is a difference of close numbers: harmless in float32
    # [6.9e-7], a digit over MAML in bfloat16 [7.8e-2].
    "reptile": 1e-5,
    "buffered_reptile": 1e-5,
    # A contrast of two partial gradients divided by beta = 0.1, a finite difference:
    # [1.4e-6] in float32; in bfloat16 the cancellation costs more than a digit [1.7e-1].
    "eqprop": 2e-5,
    "symmetric_eqprop": 2e-5,
    # CG solves H x = b and amplifies rounding by the Hessian's condition number, ~10 for
    # iMAML, CAVIA and ComplexSynapse here [1.4e-6] (ANIL, GainMod: CG_ILL_CONDITIONED).
    "cg": 2e-5,
    "rbp": 2e-5,  # a 3-term Neumann series: nothing to amplify rounding [1.5e-6]
    "t1t2": 1e-5,  # the identity for H^-1 [8.2e-7]
    # ES estimates from fixed noise: fitness differences of about sigma * |g| divided by
    # sigma (0.05 Evosax, 0.01 PES) [2.0e-6, 2.3e-6; bf16 1.1e-1, 1.6e-1].
    "evosax": 2e-5,
    "learned_kernel_pes": 3e-5,
}

# CG where the inner Hessian at the adapted params is not well conditioned positive
# definite (measured on this problem): ANIL's 5 head params see 6 correlated features,
# condition number 4e6; GainMod's is indefinite (eigenvalues -0.29 to 3.2), which CG is not
# built for. 20 float32 CG iterations (the 1e-10 tolerance is out of float32's reach) land
# elsewhere than float64's along the badly determined directions. The float64 solution is
# the one the conformance suite checks against a dense solve; these tolerances are the
# measured errors [7e-5, 1.3e-3] times ~10. (Condition numbers ~10 elsewhere.)
CG_ILL_CONDITIONED = {"anil": 1e-3, "gainmod": 2e-2}

# The cases that compile a float32 and a float64 meta-gradient here (the table has every
# case; two compilations per case cost ~1 s, the whole list ~70 s): every learner once,
# and together every module and every inner optimiser. The dtype test below traces all.
C = numerics.Case
VALUE_CASES = [
    C("maml", "anil", "layer_step_lr"),
    C("maml", "gainmod", "meta_sgd"),
    C("reptile", "compsyn", "sgd"),
    C("buffered_reptile", "learned_init", "sgd"),
    C("eqprop", "cavia", "sgd"),
    C("symmetric_eqprop", "gainmod", "sgd"),
    C("cg", "learned_init_imaml", "sgd"),
    C("rbp", "anil", "sgd"),
    C("t1t2", "compsyn", "sgd"),
    C("evosax", "cavia", "meta_sgd"),
    C("learned_kernel", "learned_init_imaml", "meta_sgd"),
    C("learned_kernel_pes", "learned_init", "meta_sgd"),
    # The learned kernels the conformance battery runs as inner optimisers.
    C("learned_kernel", "learned_init", "scalar_lr"),
    C("learned_kernel", "learned_init", "coordinatewise"),
    C("learned_kernel", "learned_init", "metadynamic"),
]
CASES = numerics.cases()


def tolerance(case: numerics.Case) -> float:
    if case.learner == "cg" and case.module in CG_ILL_CONDITIONED:
        return CG_ILL_CONDITIONED[case.module]
    return F32_RTOL[case.learner]


def test_the_cases_cover_every_learner_module_and_optimizer():
    assert {case.learner for case in CASES} == set(F32_RTOL)
    assert set(VALUE_CASES) <= set(CASES)
    for field in numerics.Case._fields:
        assert {getattr(c, field) for c in VALUE_CASES} == {getattr(c, field) for c in CASES}, field


@pytest.mark.parametrize("case", VALUE_CASES, ids=[case.name for case in VALUE_CASES])
def test_float32_meta_gradient_agrees_with_float64(case):
    with x64():
        problem = numerics.build(case)
        fn = numerics.meta_gradient_fn(case, problem.learner, numerics.FAST_COMPILE)
        reference = numerics.run(case, problem, "float64", fn)
        single = numerics.run(case, problem, "float32", fn)
    # Both ran, every floating output in the input's dtype, finite.
    assert reference.reason is None and single.reason is None, single.reason
    assert np.linalg.norm(ravel_pytree(reference.meta_gradient)[0]) > 1e-6
    rel, cosine = numerics.compare(single.meta_gradient, reference.meta_gradient)
    assert rel < tolerance(case), f"float32 relative error {rel:.2e}"
    assert cosine > 1 - tolerance(case)


def floating_dtypes(tree):
    return {jnp.dtype(leaf.dtype).name for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_outputs_keep_the_input_dtype(case):
    """Traced only (no compilation), with jax_enable_x64 on so that anything built in JAX's
    default float (float64 then) instead of the input's dtype shows up, as does a float32
    that a bfloat16 input meets."""
    with x64(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problem = numerics.build(case, abstract=True)
        learner, task = problem.learner, problem.task
        meta_gradient = numerics.meta_gradient_fn(case, learner)
        half = lambda tree: numerics.cast(tree, jnp.bfloat16)

        def outputs():
            # bfloat16 meta-parameters and data in: a bfloat16 meta-gradient and metrics.
            state64 = learner.reset(jax.random.PRNGKey(1), task.train.x)
            half_grad = meta_gradient(half(state64.hstate), half(state64.hparams), half(task))
            # The runner's path: a float32 meta-state from reset, and bfloat16 data, which
            # the dtype policy casts to float32 on entry: float32 state and metrics out.
            state = learner.reset(jax.random.PRNGKey(1), task.train.x.astype(jnp.float32))
            batch = jax.tree_util.tree_map(lambda a: a[None], half(task))
            return half_grad, state, learner.update(jax.random.PRNGKey(0), state, batch)

        half_grad, state, updated = jax.eval_shape(outputs)
    assert floating_dtypes(half_grad) == {"bfloat16"}
    assert floating_dtypes(state) == floating_dtypes(updated) == {"float32"}


# -- the parts no learner case reaches: every learned optimiser, energy and network ----------------

KERNELS = {
    "meta_sgd_log": lambda: metax.kernel.MetaSGD(0.1, "log"),
    "scalar_lr": lambda: metax.kernel.ScalarLR(0.1),
    "coordinatewise": lambda: metax.kernel.CoordinatewiseKernel((4,), num_steps=3, step_fraction=True, check_finite=True),
    "metadynamic": lambda: metax.kernel.MetadynamicOptimizer(8, (4,), memory_size=2, step_fraction=True, horizon=3),
}
ENERGIES = {
    "squared_error_masked": (lambda: metax.energy.SquaredErrorMasked(), "values"),
    "cross_entropy": (lambda: metax.energy.CrossEntropy(), "labels"),
    "cross_entropy_masked": (lambda: metax.energy.CrossEntropyMasked(), "labels"),
    "imaml": (lambda: metax.energy.iMAML(1.0, {"net": "init"}), "values"),
    "learned_l2": (lambda: metax.energy.LearnedL2({"net": {"omega": "init", "log_lambda": "log_lambda"}}), "values"),
    "learned_l2_at_zero": (lambda: metax.energy.LearnedL2({"net": "log_lambda"}, "mean"), "values"),
}
NETWORKS = {
    "conv4": lambda x, t: metax.models.Conv4(4, readout=3)(x, t),
    **{
        f"mlp_batch_norm_{policy}": lambda x, t, policy=policy: metax.models.MultilayerPerceptron(
            [4, 3], batch_norm=True, batch_norm_policy=policy, batch_norm_steps=2 if policy == "per_step" else None
        )(x, t)
        for policy in metax.models.BATCH_NORM_POLICIES
    },
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_kernels_energies_and_networks_keep_the_input_dtype(dtype):
    """Two steps of every learned optimiser, every energy, and init / train / query passes of
    every network, traced with jax_enable_x64 on: every floating output in `dtype`."""
    name, key = jnp.dtype(dtype).name, jax.random.PRNGKey(0)
    params = {"w": jnp.ones((3, 2), dtype), "b": jnp.zeros((2,), dtype)}
    with x64():
        for label, make in KERNELS.items():
            def two_steps(params, kernel=make()):
                theta = kernel.init(key, params)
                optimizer = kernel.optimizer(theta)
                updates, state = optimizer.update(params, optimizer.init(params), params)
                return theta, optimizer.update(updates, state, params)

            assert floating_dtypes(jax.eval_shape(two_steps, params)) == {name}, label
        pred = jnp.ones((5, 3), dtype)
        targets = {"values": jnp.ones((5, 3), dtype), "labels": jnp.zeros((5,), jnp.int32)}
        hparams = {"init": params, "log_lambda": params}
        for label, (make, target) in ENERGIES.items():
            energy = make()
            loss = lambda: energy(key, pred, targets[target], {"net": params}, hparams, {}, {}, {"mask": jnp.ones((5,), dtype)})
            assert floating_dtypes(jax.eval_shape(loss)) == {name}, label
        for label, forward in NETWORKS.items():
            network = hk.transform_with_state(forward)

            def passes(x):
                weights, state = network.init(key, x, True)
                train, state = network.apply(weights, state, key, x, True)
                query, state = network.apply(weights, state, key, x, False)
                return weights, state, train, query

            assert floating_dtypes(jax.eval_shape(passes, jnp.ones((4, 6, 6, 1), dtype))) == {name}, label
