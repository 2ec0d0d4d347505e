"""Shared fixtures: float64 mode for finite-difference checks, tiny regression problems."""

import contextlib
import os
import tempfile

# The suite's programs are tiny and mostly run a few steps, so XLA's compile time is most
# of its cost: its CPU backend at optimisation level 0 compiles them about a third faster
# (measured: conformance + configs + maml files 243 s -> 158 s, cold cache). Set before
# jax starts its backend; subprocesses the tests start inherit it. Numerics tests compare
# against independent computations with tolerances that hold at any level.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import haiku as hk  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

import metax  # noqa: E402

# Compiled programs are shared between tests (and later runs of the suite): many tests
# build the same tiny learners. The cache key is the program, so a stale entry never
# matches changed code.
_CACHE = os.path.join(tempfile.gettempdir(), f"metax-pytest-jax-cache-{os.getuid()}")
os.environ.setdefault("METAX_COMPILATION_CACHE", _CACHE)
jax.config.update("jax_compilation_cache_dir", os.environ["METAX_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@contextlib.contextmanager
def x64():
    """Enables float64 for the duration of a block and restores the previous setting."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def float64():
    with x64():
        yield


def tiny_mlp(hidden=(4,), output_dim=1, activation=jnp.tanh):
    """A smooth (tanh) MLP, so finite differences see no kinks."""
    sizes = tuple(hidden) + (output_dim,)
    return hk.transform_with_state(
        lambda x, is_training: metax.models.MultilayerPerceptron(sizes, activation=activation)(x, is_training)
    )


def learned_init(base_learner=None, reg_strength=None):
    return metax.module.LearnedInit(
        loss_fn_inner=metax.energy.SquaredError(),
        loss_fn_outer=metax.energy.SquaredError(),
        base_learner=tiny_mlp() if base_learner is None else base_learner,
        reg_strength=reg_strength,
        output_dim=1,
    )


def sinusoid_batch(seed, tasks, shots_train=6, shots_test=5, dtype=None):
    sample_task = metax.data.make_task_sampler("sinusoid", shots_train, shots_test)
    batch = metax.data.sample_metabatch(jax.random.PRNGKey(seed), sample_task, tasks)
    if dtype is not None:
        batch = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, batch)
    return batch


def tiny_config(
    train: str = "{steps: 3, meta_batch_size: 2}",
    eval: str = "{tasks: 2}",
    *,
    steps_inner: int = 2,
    hidden_dims: str = "[8]",
    optim_fn_outer: str = "{name: adam, learning_rate: 0.01}",
    learner: str = "maml",
) -> str:
    """The suite's tiny runner config as YAML text: MAML on a learned initialisation of an
    8-unit MLP, 5-shot sinusoids. The runner's tests vary only the `train` and `eval`
    sections and a few learner settings, so one copy serves them all (it starts with a
    newline: the config's first key is on line 2)."""
    return f"""
task: {{name: sinusoid, shots_train: 5, shots_test: 5}}
model: {{name: mlp, hidden_dims: {hidden_dims}}}
module: {{name: learned_init}}
learner:
  name: {learner}
  steps_inner: {steps_inner}
  optim_fn_inner: {{name: sgd, learning_rate: 0.05}}
  optim_fn_outer: {optim_fn_outer}
train: {train}
eval: {eval}
"""
