"""Sphinx configuration for the metax documentation.

Build (strict: every warning, including a broken reference or a page missing from the
table of contents, is an error):

    sphinx-build -W --keep-going -b html docs docs/_build/html

Why Sphinx with autodoc + napoleon + autosummary: the libraries metax sits between (optax,
dm-haiku, jax itself) document their APIs this way, so their readers meet the same layout;
napoleon reads the Google-style ``Args:``/``Returns:`` sections metax's docstrings already
use; and the same ``>>>`` examples that Sphinx renders are collected by pytest
(``--doctest-modules`` over ``metax/``, ``--doctest-glob`` over these pages), so one
example is both documentation and test without a separate doctest build.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the metax checkout this page documents
sys.path.insert(0, os.path.join(HERE, "_ext"))

import metax  # noqa: E402

project = "metax"
author = "the metax authors"
copyright = "the metax authors"
release = metax.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "metax_reference",  # writes _generated/api/*.rst and _generated/config_reference.rst
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = []

# autodoc: signatures show types; docstrings are Google style.
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False}
autosummary_generate = False  # the pages are written by metax_reference, from __all__
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # NamedTuple fields are documented once, from Attributes:

# Cross-references to metax itself must resolve; references into jax, optax, haiku, numpy
# and typing cannot (the build is offline, without intersphinx) and are not checked.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"^(?!metax\.).*")]



def _internal_reference(app, domain, node):
    """Signatures mention internal metax types (a state NamedTuple's base, a schema
    marker) that are not public and so have no page. Those references are let through when
    the target really exists; a reference to a metax name that does not exist (a typo, a
    renamed class) still fails the build."""
    import importlib

    target = node.get("reftarget", "")
    if domain is None or domain.name != "py" or not target.startswith("metax."):
        return None
    parts = target.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attribute in parts[cut:]:
                obj = getattr(obj, attribute)
        except AttributeError:
            return None
        return True
    return None


def _escape_bars(app, what, name, obj, options, lines):
    """Docstrings write conditional densities as plain text, ``q(a|s)``; to reStructuredText
    a bar starts a substitution. Escape bars outside tables and literal blocks."""
    for i, line in enumerate(lines):
        if "|" in line and not line.lstrip().startswith(("|", "+", ">>>", "...")) and "``" not in line:
            lines[i] = line.replace("|", "\\|")


def setup(app):
    app.connect("warn-missing-reference", _internal_reference)
    app.connect("autodoc-process-docstring", _escape_bars)


html_theme = "alabaster"
html_title = f"metax {release}"
html_static_path = []
html_theme_options = {"description": "functional meta-learning in JAX + Haiku", "fixed_sidebar": True}
