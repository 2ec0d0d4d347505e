"""Names every doctest sees (docstring examples in metax/ and the guides in docs/).

Examples may use `jax`, `jnp`, `np`, `hk`, `optax` and `metax` without importing them.
The XLA flag matches tests/conftest.py: doctests are tiny programs whose cost is compile
time, which optimisation level 0 cuts by about a third.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import tempfile  # noqa: E402

import pytest  # noqa: E402

# The same persistent compilation cache as tests/conftest.py, so a doctest run alone (e.g.
# `pytest metax docs`) reuses compiled programs across examples and runs too.
os.environ.setdefault("METAX_COMPILATION_CACHE", os.path.join(tempfile.gettempdir(), f"metax-pytest-jax-cache-{os.getuid()}"))


def pytest_configure(config):
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["METAX_COMPILATION_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Modules that import optional dependencies at import time; skipped by doctest collection
# when the dependency is missing rather than failing it.
collect_ignore_glob = []
try:
    import pyarrow  # noqa: F401
except ImportError:
    collect_ignore_glob.append("metax/dynamics/*")
collect_ignore = ["docs/conf.py", "docs/_ext", "docs/_build"]


_EXAMPLE_NAMES = {}


def example_names() -> dict:
    """The names every example may use without defining them (built once per process).

    Besides the imports: `meta_model`, a `LearnedInit` over a tiny MLP for 1-D regression;
    `metabatch`, two sinusoid tasks with 5 support and 5 query points each; `sample_input`,
    one task's support inputs (what `MetaLearner.reset` takes); `rng`, a PRNG key.
    """
    if not _EXAMPLE_NAMES:
        import haiku as hk
        import jax
        import jax.numpy as jnp
        import numpy as np
        import optax

        import metax

        sample_task = metax.data.make_task_sampler("sinusoid", shots_train=5, shots_test=5)
        metabatch = jax.jit(lambda key: metax.data.sample_metabatch(key, sample_task, 2))(jax.random.PRNGKey(0))
        meta_model = metax.module.LearnedInit(
            loss_fn_inner=metax.energy.SquaredError(),
            loss_fn_outer=metax.energy.SquaredError(),
            base_learner=metax.models.MultilayerPerceptron([8, 1]),
            output_dim=1,
        )
        _EXAMPLE_NAMES.update(
            jax=jax, jnp=jnp, np=np, hk=hk, optax=optax, metax=metax,
            meta_model=meta_model, metabatch=metabatch, sample_input=metabatch.train.x[0],
            rng=jax.random.PRNGKey(42),
        )
    return _EXAMPLE_NAMES


OMNIGLOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data", "omniglot")


@pytest.fixture(autouse=True)
def _doctest_names(request):
    # Only doctests get the names (and pay for building them), not the ordinary tests.
    if request.node.__class__.__name__ == "DoctestItem":
        namespace = request.getfixturevalue("doctest_namespace")
        namespace.update(example_names())
        if request.node.name.startswith("metax.data.omniglot"):
            # The Omniglot examples read the files users download, by their own names: run
            # them beside the project's copy (the module's examples share one namespace,
            # so `data` and `runs` carry from one docstring to the next), else skip.
            folder = os.environ.get("METAX_OMNIGLOT_DIR", OMNIGLOT_DIR)
            if not os.path.exists(os.path.join(folder, "all_runs.zip")):
                pytest.skip(f"Omniglot files not found at {folder}")
            request.getfixturevalue("monkeypatch").chdir(folder)


# The longest tests, started first: with `-n 2`, a long test picked up last keeps one
# core busy while the other idles at the end of the run. (Measured under load in a full
# run; order only, so a stale entry costs nothing.)
LONGEST_FIRST = (
    "tests/test_reliability.py::test_sigkill",
    "tests/test_configs.py::test_main_job",
    "tests/test_reliability.py::test_debug_nans",
    "tests/test_readme.py::test_readme_snippets_run",
    "tests/test_noisy_inference.py::test_quick_run",
    "tests/test_dynamics.py::test_study_script_smoke",
    "tests/test_learned_kernel.py::test_meta_trained_kernel",
    "tests/test_convolution.py::test_maml_meta_gradient",
    "tests/test_modules.py::test_cavia_contexts",
    "tests/test_parallel.py",  # three two-process runs
    "tests/test_maml.py::test_update_averages",
    "tests/test_toy_md_cli.py::test_quick_run",
    "tests/test_readme.py::test_training_from_python",
    "tests/test_properties.py::test_task_samplers",
    "tests/test_run_folders.py::test_sigint_and_sigterm",
    "tests/test_trainer.py",
    "tests/test_convolution.py::test_values_and_derivatives",
    "tests/test_learned_kernel.py::test_es_estimate",
    "tests/test_modules.py::test_batch_norm_state",
    "tests/test_learned_lr.py::test_meta_training",
    "tests/test_fewshot_baselines.py",
    "tests/test_configs.py::test_config_validates",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
