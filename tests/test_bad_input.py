"""Every bad input the input-contract issue lists: a one-line error naming the argument and
the fix, raised before anything compiles (construction, reset, or the first trace).

Each row of BAD_INPUT is (id, thunk, exception type, pattern the message must contain).
"""

import warnings

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metax

SQ = metax.energy.SquaredError
SGD = optax.sgd(0.1)


def learned_init(output_dim=1, loss=SQ, width=1):
    return metax.module.LearnedInit(loss(), loss(), metax.models.mlp_fn([4], width), output_dim=output_dim)


def anil():
    return metax.module.ANIL(SQ(), SQ(), metax.models.MultilayerPerceptron([4], activate_final=True), output_dim=1)


def maml(module=None, **kwargs):
    return metax.learner.ModelAgnosticMetaLearning(module or learned_init(), None, 2, SGD, SGD, **kwargs)


def batch(x_train=(2, 5, 1), x_test=(2, 3, 1), y_train=(2, 5, 1), y_test=(2, 3, 1), x_dtype=jnp.float32, y_dtype=jnp.float32):
    def data(x_shape, y_shape):
        x = jnp.linspace(-1.0, 1.0, int(np.prod(x_shape))).reshape(x_shape).astype(x_dtype)
        y = jnp.ones(y_shape, y_dtype)
        return metax.data.Dataset(x, y)

    return metax.data.MetaDataset(data(x_train, y_train), data(x_test, y_test))


def update_with(data, learner=None, sample_input=None):
    """Resets on float inputs of the right shape, then calls update on `data`."""
    learner = learner or maml()
    sample = jnp.ones((5, 1)) if sample_input is None else sample_input
    state = learner.reset(jax.random.PRNGKey(0), sample)
    return learner.update(jax.random.PRNGKey(1), state, data)


def reset_then(call):
    learner = maml()
    state = learner.reset(jax.random.PRNGKey(0), jnp.ones((5, 1)))
    return call(learner, state, batch())


def tilt_run(sampler="gibbs", beta=1.0, **params):
    tilt = metax.tilt.GaussianTilt(metax.tilt.TiltParams(**params))
    config = metax.tilt.SamplerConfig(beta=beta, n_chains=8, n_steps=2, K=2)
    return metax.tilt.run_sampler(sampler, jax.random.PRNGKey(0), tilt, config)


def evosax(algorithm="Open_ES", kwargs=None, input_shape=(1,), **extra):
    kwargs = {"population_size": 4} if kwargs is None else kwargs
    return metax.learner.Evosax(learned_init(), None, 2, SGD, input_shape, algorithm, kwargs, **extra)


BAD_INPUT = [
    # -- data entering update / eval / reset -------------------------------------------------
    ("target (N,) against output (N, 1)", lambda: update_with(batch(y_train=(2, 5), y_test=(2, 3))),
     ValueError, r"metabatch\.train\.y has shape \(5,\) per task but the model outputs \(5, 1\)"),
    ("1-wide network, 3-wide targets", lambda: update_with(batch(y_train=(2, 5, 3), y_test=(2, 3, 3))),
     ValueError, r"metabatch\.train\.y has shape \(5, 3\) per task but the model outputs \(5, 1\).*last layer 3 wide"),
    ("query targets only", lambda: update_with(batch(y_test=(2, 3))),
     ValueError, r"metabatch\.test\.y has shape \(3,\)"),
    ("integer inputs at update", lambda: update_with(batch(x_dtype=jnp.int32)),
     TypeError, r"metabatch\.train\.x has dtype int32; .*astype\(jnp\.float32\)"),
    ("integer inputs at reset", lambda: maml().reset(jax.random.PRNGKey(0), jnp.ones((5, 1), jnp.int32)),
     TypeError, r"sample_input has dtype int32"),
    ("empty support set", lambda: update_with(batch(x_train=(2, 0, 1), y_train=(2, 0, 1))),
     ValueError, r"metabatch\.train has 0 samples per task.*support set is empty"),
    ("empty query set", lambda: update_with(batch(x_test=(2, 0, 1), y_test=(2, 0, 1))),
     ValueError, r"metabatch\.test has 0 samples per task.*query set is empty"),
    ("empty sample_input", lambda: maml().reset(jax.random.PRNGKey(0), jnp.ones((0, 1))),
     ValueError, r"sample_input has shape \(0, 1\)"),
    ("query width differs", lambda: update_with(batch(x_test=(2, 3, 2))),
     ValueError, r"metabatch\.train\.x has inputs of shape \(1,\) but metabatch\.test\.x has \(2,\)"),
    ("inputs wider than at reset", lambda: update_with(batch(x_train=(2, 5, 2), x_test=(2, 3, 2))),
     ValueError, r"the model cannot be applied to metabatch\.train\.x .*Were the meta-parameters built by reset"),
    ("CrossEntropy with float targets",
     lambda: update_with(batch(y_train=(2, 5), y_test=(2, 3)), maml(learned_init(None, metax.energy.CrossEntropy, 3))),
     TypeError, r"metabatch\.train\.y has dtype float32; CrossEntropy takes integer class labels of shape \(5,\)"),
    ("CrossEntropy with (N, 1) labels",
     lambda: update_with(batch(y_train=(2, 5, 1), y_test=(2, 3, 1), y_dtype=jnp.int32), maml(learned_init(None, metax.energy.CrossEntropy, 3))),
     ValueError, r"CrossEntropy needs labels of shape \(5,\)"),
    ("update(meta_state, rng, metabatch)", lambda: reset_then(lambda l, s, b: l.update(s, jax.random.PRNGKey(0), b)),
     TypeError, r"update: argument 'rng' got a MetaLearnerState; the order is update\(rng, meta_state, metabatch\)"),
    ("update(rng, metabatch, meta_state)", lambda: reset_then(lambda l, s, b: l.update(jax.random.PRNGKey(0), b, s)),
     TypeError, r"update: argument 'meta_state' got a MetaDataset"),
    ("eval(rng, metabatch, meta_state, steps)", lambda: reset_then(lambda l, s, b: l.eval(jax.random.PRNGKey(0), b, s, 1)),
     TypeError, r"eval: argument 'meta_state' got a MetaDataset; the order is eval"),
    ("rng not a key", lambda: reset_then(lambda l, s, b: l.update(0, s, b)),
     TypeError, r"update: rng must be a PRNG key"),
    ("adapt on an empty dataset",
     lambda: reset_then(lambda l, s, b: l.adapt(jax.random.PRNGKey(0), {}, s.hstate, None, s.hparams, metax.data.Dataset(jnp.ones((0, 1)), jnp.ones((0, 1))), 1)),
     ValueError, r"dataset is empty"),
    # -- losses and modules ------------------------------------------------------------------
    ("optax loss as an energy", lambda: metax.module.LearnedInit(optax.l2_loss, SQ(), metax.models.mlp_fn([4], 1)),
     TypeError, r"loss_fn_inner must be a loss called as fn\(rng, pred, target, params, hparams, state, hstate, info\).*l2_loss\(predictions"),
    ("optax loss with reg_strength", lambda: metax.module.ANIL(SQ(), optax.l2_loss, metax.models.mlp_fn([4], 4), 1, reg_strength=1.0),
     TypeError, r"loss_fn_outer must be a loss called as fn\(rng"),
    ("output_dim=0", lambda: learned_init(output_dim=0), ValueError, r"output_dim must be a positive int, got 0"),
    # -- learner constructors ------------------------------------------------------------------
    ("negative inner learning rate", lambda: metax.learner.MAML(learned_init(), None, 2, optax.sgd(-0.1), SGD),
     ValueError, r"optim_fn_inner moves parameters up the gradient.*learning rate negative"),
    ("negative outer learning rate", lambda: metax.learner.Reptile(learned_init(), None, 2, SGD, optax.adam(-1e-3)),
     ValueError, r"optim_fn_outer moves parameters up the gradient"),
    ("negative nudged learning rate", lambda: metax.learner.EquilibriumPropagation(learned_init_reg(), None, 2, 2, SGD, optax.sgd(-0.1), SGD, 0.1),
     ValueError, r"optim_fn_nudged moves parameters up the gradient"),
    ("optim_fn_nudged not optax", lambda: metax.learner.EquilibriumPropagation(learned_init_reg(), None, 2, 2, SGD, "sgd", SGD, 0.1),
     TypeError, r"optim_fn_nudged must be an optax\.GradientTransformation"),
    ("steps_nudged=0", lambda: metax.learner.SymmetricEquilibriumPropagation(learned_init_reg(), None, 2, 0, SGD, SGD, SGD, 0.1),
     ValueError, r"steps_nudged must be a positive int"),
    ("beta=inf", lambda: metax.learner.EquilibriumPropagation(learned_init_reg(), None, 2, 2, SGD, SGD, SGD, float("inf")),
     ValueError, r"beta must be > 0 and finite"),
    ("steps_cg with a solver function",
     lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, 20, SGD, SGD, linsolver=metax.learner.solve_cg(5)),
     ValueError, r"steps_cg=20 would be ignored: linsolver is a function.*pass steps_cg=None"),
    ("steps_cg=None with a named solver", lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, None, SGD, SGD),
     ValueError, r"steps_cg=None needs a linsolver function"),
    ("steps_cg=0", lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, 0, SGD, SGD),
     ValueError, r"steps_cg must be >= 1"),
    ("cg_damping=0", lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, 3, SGD, SGD, cg_damping=0.0),
     ValueError, r"cg_damping must be > 0"),
    ("cg_reg<0", lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, 3, SGD, SGD, cg_reg=-1.0),
     ValueError, r"cg_reg must be a finite number >= 0"),
    ("steps_rbp<0", lambda: metax.learner.RecurrentBackpropagation(learned_init_reg(), None, 2, -1, SGD, SGD, 0.1),
     ValueError, r"steps_rbp must be >= 0"),
    ("steps_rbp a string", lambda: metax.learner.RecurrentBackpropagation(learned_init_reg(), None, 2, "3", SGD, SGD, 0.1),
     TypeError, r"steps_rbp must be a Python int"),
    ("alpha<=0", lambda: metax.learner.RecurrentBackpropagation(learned_init_reg(), None, 2, 3, SGD, SGD, -0.1),
     ValueError, r"alpha must be > 0 and finite \(the Neumann step\)"),
    ("implicit learner, init-only module", lambda: metax.learner.T1T2(learned_init(), None, 2, SGD, SGD),
     ValueError, r"T1T2 differentiates at the inner loop's end point.*'base_learner_init'.*reg_strength"),
    ("truncation on Reptile", lambda: metax.learner.Reptile(learned_init(), None, 2, SGD, SGD, truncation=1),
     ValueError, r"Reptile takes no gradient through the inner loop, so truncation=1 would change nothing"),
    ("remat on ConjugateGradient", lambda: metax.learner.ConjugateGradient(learned_init_reg(), None, 2, 3, SGD, SGD, remat=True),
     ValueError, r"ConjugateGradient takes no gradient through the inner loop, so remat=True"),
    ("remat on Evosax", lambda: evosax(remat=True), ValueError, r"Evosax takes no gradient through the inner loop"),
    ("truncation > steps_inner", lambda: maml(truncation=3), ValueError, r"truncation=3 must lie in \[1, steps_inner=2\]"),
    ("extra_metrics not a bool", lambda: maml(extra_metrics="yes"), TypeError, r"extra_metrics must be True or False"),
    ("first_order not a bool", lambda: maml(first_order="no"), TypeError, r"first_order must be True or False"),
    ("batch_size=True", lambda: metax.learner.MAML(learned_init(), True, 2, SGD, SGD), ValueError, r"batch_size must be None"),
    # -- evolution ---------------------------------------------------------------------------
    ("report='mean' for a population-based strategy", lambda: evosax("SimpleGA", report="mean"),
     ValueError, r"report='mean': SimpleGA is population-based.*report='best'"),
    ("elite_ratio on Open_ES", lambda: evosax("Open_ES", {"popsize": 4, "elite_ratio": 0.5}),
     ValueError, r"evosax_kwargs\['elite_ratio'\] has no effect on Open_ES"),
    ("elite_ratio out of range", lambda: evosax("CMA_ES", {"popsize": 4, "elite_ratio": 1.5}),
     ValueError, r"evosax_kwargs\['elite_ratio'\] must lie in \(0, 1\]"),
    ("input_shape not a shape", lambda: evosax(input_shape=1), ValueError, r"input_shape must be a tuple of positive ints"),
    ("input_shape against sample_input", lambda: evosax().reset(jax.random.PRNGKey(0), jnp.ones((5, 2))),
     ValueError, r"Evosax was built for input_shape=\(1,\) but sample_input has inputs of shape \(2,\); pass input_shape=\(2,\)"),
    ("evosax_kwargs not a dict", lambda: evosax(kwargs=[("popsize", 4)]), TypeError, r"evosax_kwargs must be a dict"),
    ("population_size=1", lambda: evosax(kwargs={"population_size": 1}), ValueError, r"population_size'\] must be an int >= 2"),
    # -- learned update rules ------------------------------------------------------------------
    ("num_steps without step_fraction", lambda: metax.kernel.CoordinatewiseKernel(num_steps=5),
     ValueError, r"num_steps=5 is the run length T of the feature t / T, read only with step_fraction=True"),
    ("horizon without step_fraction", lambda: metax.kernel.MetadynamicOptimizer(3, horizon=5),
     ValueError, r"horizon=5 is the run length T .* read only with step_fraction=True"),
    ("negative Meta-SGD rate", lambda: metax.kernel.MetaSGD(-0.1), ValueError, r"MetaSGD: lr_init=-0\.1 is a negative learning rate"),
    # -- tilt samplers -------------------------------------------------------------------------
    ("negative sigma_sprime", lambda: tilt_run("ula", sigma_sprime=-0.5),
     ValueError, r"run_sampler\('ula'\): tilt\.params\.sigma_sprime must be a positive standard deviation, got -0\.5"),
    ("negative sigma_a, annealed", lambda: tilt_run("pc_ula", sigma_a=-1.0),
     ValueError, r"run_sampler\('pc_ula'\): tilt\.params\.sigma_a must be a positive standard deviation"),
    ("qA makes the precision non-positive", lambda: tilt_run("gibbs", beta=2.0, qA=-0.6),
     ValueError, r"not normalisable: precision 1/sigma_a\^2 \+ beta\*qA = 1 \+ 2\*\(-0\.6\) = -0\.2 <= 0.*tilt\.params\.qA=-0\.6, config\.beta=2"),
    ("step_size<=0", lambda: metax.tilt.run_sampler("mala", jax.random.PRNGKey(0), metax.tilt.GaussianTilt(metax.tilt.TiltParams()), metax.tilt.SamplerConfig(step_size=0.0)),
     ValueError, r"config\.step_size must be positive"),
]


def learned_init_reg():
    return metax.module.LearnedInit(SQ(), SQ(), metax.models.mlp_fn([4], 1), reg_strength=1.0, output_dim=1)


@pytest.mark.parametrize("thunk, error, pattern", [row[1:] for row in BAD_INPUT], ids=[row[0] for row in BAD_INPUT])
def test_bad_input_gives_one_line_naming_the_argument(thunk, error, pattern):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error, match=pattern) as info:
            thunk()
    assert "\n" not in str(info.value), str(info.value)


def test_the_table_is_unique_and_covers_each_entry_point():
    ids = [row[0] for row in BAD_INPUT]
    assert len(ids) == len(set(ids))
    assert len(BAD_INPUT) >= 50


def test_the_checks_run_at_trace_time():
    """A bad meta-batch fails while jit traces `update`, so nothing is lowered or compiled."""
    learner = maml()
    state = learner.reset(jax.random.PRNGKey(0), jnp.ones((5, 1)))
    with pytest.raises(ValueError, match="per task but the model outputs"):
        jax.jit(learner.update).trace(jax.random.PRNGKey(1), state, batch(y_train=(2, 5), y_test=(2, 3)))
