"""Names every doctest sees (docstring examples in metax/ and the guides in docs/).

Examples may use `jax`, `jnp`, `np`, `hk`, `optax` and `metax` without importing them.
The XLA flag matches tests/conftest.py: doctests are tiny programs whose cost is compile
time, which optimisation level 0 cuts by about a third.
"""

import os

if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest  # noqa: E402

# Modules that import optional dependencies at import time; skipped by doctest collection
# when the dependency is missing rather than failing it.
collect_ignore_glob = []
try:
    import pyarrow  # noqa: F401
except ImportError:
    collect_ignore_glob.append("metax/dynamics/*")
collect_ignore = ["docs/conf.py", "docs/_ext", "docs/_build"]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    import haiku as hk
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import metax

    doctest_namespace.update(jax=jax, jnp=jnp, np=np, hk=hk, optax=optax, metax=metax)
