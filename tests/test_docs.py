"""The documentation covers the package: every public name has a docstring and a place in
the API reference, every registered component its keys in the config reference, and every
public class and function an example that runs."""

import importlib
import inspect
import pathlib
import sys

import pytest

import metax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import metax_reference  # noqa: E402  (docs/_ext: the generator the Sphinx build runs)

sys.path.pop(0)


def _public():
    for subpackage in metax_reference.SUBPACKAGES:
        package = importlib.import_module(f"metax.{subpackage}")
        for name in package.__all__:
            yield subpackage, name, getattr(package, name)


def test_the_reference_covers_every_subpackage_of_metax():
    assert sorted(metax_reference.SUBPACKAGES) == sorted(metax.__all__)
    toctree = (ROOT / "docs" / "api.rst").read_text()
    for subpackage in metax_reference.SUBPACKAGES:
        assert f"_generated/api/{subpackage}\n" in toctree, f"docs/api.rst does not list metax.{subpackage}"


@pytest.mark.parametrize("subpackage", metax_reference.SUBPACKAGES)
def test_every_public_name_is_in_the_api_reference_with_a_docstring(subpackage):
    page = metax_reference.api_page(subpackage)
    for name in metax_reference.public_names(subpackage):
        obj = getattr(importlib.import_module(f"metax.{subpackage}"), name)
        assert f"metax.{subpackage}.{name}\n" in page or f".. automodule:: {getattr(obj, '__name__', '')}\n" in page, (
            f"metax.{subpackage}.{name} is missing from the API reference"
        )
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            doc = obj.__doc__ or ""
            assert len(doc.strip()) > 10, f"metax.{subpackage}.{name} has no docstring"


def test_every_registered_component_and_key_is_in_the_config_reference():
    text = metax_reference.config_reference()
    components = metax_reference.registered_components()
    assert set(components) == {"learners", "modules", "tasks", "models", "optimizers", "kernels"}
    for kind, entries in components.items():
        assert entries, kind
        for entry in entries:
            anchor = f".. _config-{kind}-{entry.name}:"
            assert anchor in text, f"{kind} {entry.name!r} is missing from the config reference"
            section = text.split(anchor, 1)[1].split(".. _config-", 1)[0]
            for param in entry.params:
                assert f"``{param.name}``" in section, f"{kind} {entry.name}: key {param.name!r} is not documented"
    # The fixed sections too, read from the schema's dataclasses.
    from metax.experiment import schema
    import dataclasses

    for cls in (schema.ExperimentConfig, schema.TrainConfig, schema.EvalConfig):
        for field in dataclasses.fields(cls):
            assert f"``{field.name}``" in text, f"{cls.__name__}.{field.name} is not documented"


def test_a_component_registered_later_appears_in_the_config_reference():
    """The reference is generated, not written: a new registration shows up with its keys."""
    from metax.experiment.registry import REGISTRIES

    def docs_probe_sgd(learning_rate: float, probe_key: int = 3):
        """A probe optimiser."""
        import optax

        return optax.sgd(learning_rate)

    metax.experiment.register("optimizer", "docs_probe_sgd", docs_probe_sgd)
    try:
        text = metax_reference.config_reference()
        assert ".. _config-optimizers-docs_probe_sgd:" in text and "``probe_key``" in text
    finally:
        REGISTRIES["optimizers"]._entries.pop("docs_probe_sgd")


# Public classes and functions whose docstring has no runnable example yet: none now, and
# it stays so (a new public name without an example fails). Data containers (the modules' NamedTuples) are
# shown by their module's example instead.
WITHOUT_EXAMPLE: set[str] = set()  # empty: every public class and function has one


# Public functions whose runnable example lives in a guide instead (one compiled training
# loop for the examples, not two); the guide must call them.
EXAMPLE_IN_GUIDE = {"experiment.train": ("docs/quickstart.rst", "metax.experiment.train(")}


def test_examples_kept_in_guides_are_there():
    for path, (guide, call) in EXAMPLE_IN_GUIDE.items():
        text = (ROOT / guide).read_text()
        assert f">>> {call}" in text or f"= {call}" in text, f"{guide} no longer runs {path}"


def _lacks_example(obj) -> bool:
    return ">>>" not in (obj.__doc__ or "")


def test_every_public_class_and_function_has_an_example():
    missing, stale = [], []
    for subpackage, name, obj in _public():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        path = f"{subpackage}.{name}"
        if path in EXAMPLE_IN_GUIDE:
            continue
        if _lacks_example(obj) and path not in WITHOUT_EXAMPLE:
            missing.append(path)
        if not _lacks_example(obj) and path in WITHOUT_EXAMPLE:
            stale.append(path)
    assert not missing, f"public names without a '>>>' example in their docstring: {missing}"
    assert not stale, f"these now have examples; remove them from WITHOUT_EXAMPLE: {stale}"
