"""The installed `metax` console script (pyproject's `[project.scripts]`) starts and works.

Every other CLI test calls `main(argv)` in-process; this one proves the entry point a user
types exists and reaches the same `main`.
"""

import shutil
import subprocess

import pytest


def test_the_installed_metax_command_lists_the_registry():
    executable = shutil.which("metax")
    if executable is None:
        pytest.skip("the metax console script is not installed (pip install -e .)")
    done = subprocess.run([executable, "list", "learners"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "maml" in done.stdout and "learned_kernel" in done.stdout
