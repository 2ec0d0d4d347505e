"""The public surface: every exported name resolves; metax's constructor signatures hold."""

import importlib
import inspect

import pytest

import metax

SUBPACKAGES = ["data", "dynamics", "energy", "experiment", "kernel", "learner", "models", "module", "tilt", "utils"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_exported_name_resolves(name):
    package = importlib.import_module(f"metax.{name}")
    assert package.__all__ == sorted(package.__all__, key=str), f"metax.{name}.__all__ is not sorted"
    for symbol in package.__all__:
        assert getattr(package, symbol) is not None, f"metax.{name}.{symbol}"
    assert name in metax.__all__


# metax's public constructors: these leading arguments, in this order (DESIGN.md).
SIGNATURES = {
    "learner.ModelAgnosticMetaLearning": ["meta_model", "batch_size", "steps_inner", "optim_fn_inner", "optim_fn_outer", "first_order"],
    "learner.Reptile": ["meta_model", "batch_size", "steps_inner", "optim_fn_inner", "optim_fn_outer"],
    "learner.BufferedReptile": ["meta_model", "batch_size", "steps_inner", "optim_fn_inner", "optim_fn_outer"],
    "learner.EquilibriumPropagation": ["meta_model", "batch_size", "steps_inner", "steps_nudged", "optim_fn_inner", "optim_fn_nudged", "optim_fn_outer", "beta"],
    "learner.SymmetricEquilibriumPropagation": ["meta_model", "batch_size", "steps_inner", "steps_nudged", "optim_fn_inner", "optim_fn_nudged", "optim_fn_outer", "beta"],
    "learner.ConjugateGradient": ["meta_model", "batch_size", "steps_inner", "steps_cg", "optim_fn_inner", "optim_fn_outer", "cg_damping", "cg_reg", "linsolver"],
    "learner.RecurrentBackpropagation": ["meta_model", "batch_size", "steps_inner", "steps_rbp", "optim_fn_inner", "optim_fn_outer", "alpha"],
    "learner.T1T2": ["meta_model", "batch_size", "steps_inner", "optim_fn_inner", "optim_fn_outer"],
    "learner.Evosax": ["meta_model", "batch_size", "steps_inner", "optim_fn_inner", "input_shape", "algorithm", "evosax_kwargs"],
    "module.LearnedInit": ["loss_fn_inner", "loss_fn_outer", "base_learner", "reg_strength", "output_dim"],
    "module.AlmostNoInnerLoop": ["loss_fn_inner", "loss_fn_outer", "body", "output_dim"],
    "module.CAVIA": ["loss_fn_inner", "loss_fn_outer", "base_model", "embedding_dim"],
    "module.GainMod": ["loss_fn_inner", "loss_fn_outer", "body", "hidden_dims", "output_dim", "adapt_head", "reg_strength"],
    "module.ComplexSynapse": ["loss_fn_inner", "loss_fn_outer", "base_learner", "l2_reg", "l2_fixed"],
}


@pytest.mark.parametrize("path, expected", sorted(SIGNATURES.items()))
def test_metax_constructor_signatures(path, expected):
    package, name = path.split(".")
    cls = getattr(getattr(metax, package), name)
    params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
    positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional[: len(expected)] == expected
    # Anything added after metax's arguments is keyword-only (or **options passed on to the
    # base's keyword-only arguments) or has a default.
    for p in params[len(expected):]:
        assert p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) or p.default is not p.empty, f"{path}: {p.name}"
    assert cls.__doc__ and len(cls.__doc__.strip()) > 20, f"{path} lacks a docstring"


def test_learner_and_module_files_name_their_paper():
    for package in ("learner", "module"):
        for name in getattr(metax, package).__all__:
            obj = getattr(getattr(metax, package), name)
            if inspect.isclass(obj) and obj.__module__.split(".")[-1] not in ("base",):
                module_doc = inspect.getmodule(obj).__doc__ or ""
                assert "http" in module_doc, f"{obj.__module__} does not cite its paper"
