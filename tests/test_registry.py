"""The registry reads a builder's config keys from its signature and follows `**options`
(and `*args`) to the base class's constructor."""

import inspect
from typing import Literal

import pytest
import yaml

import metax
from metax.experiment.registry import builder_parameters
from metax.learner.remat import Remat
from conftest import tiny_config


class ScaledMAML(metax.learner.ModelAgnosticMetaLearning):
    """MAML that lists only its own argument and hands the rest on (as metax's learners do)."""

    def __init__(self, meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, *, scale: float = 0.5, **options):
        super().__init__(meta_model, batch_size, steps_inner, optim_fn_inner, optim_fn_outer, **options)
        self.scale = scale


@pytest.fixture(autouse=True, scope="module")
def scaled_maml_registered():
    """Registered for this module's tests only: the registry is global, and other tests
    (a config for every registered learner) must not see it."""
    metax.experiment.register("learner", "test_scaled_maml", ScaledMAML)
    yield
    metax.experiment.registry("learners")._entries.pop("test_scaled_maml")


def _learner_config(**learner) -> dict:
    config = yaml.safe_load(tiny_config(learner="test_scaled_maml", hidden_dims="[4]"))
    config["learner"].update(learner)
    return config


def test_options_expose_the_base_keyword_arguments_with_their_defaults_and_types():
    entry = metax.experiment.registry("learners").get("test_scaled_maml")
    names = [p.name for p in entry.params]
    assert names == ["batch_size", "steps_inner", "optim_fn_inner", "optim_fn_outer", "scale", "first_order",
                     "extra_metrics", "truncation", "remat"]
    # Independently: the constructors' own signatures, where each key is declared.
    declared = {**inspect.signature(metax.learner.MetaLearner.__init__).parameters,
                **inspect.signature(metax.learner.ModelAgnosticMetaLearning.__init__).parameters}
    for name in ("first_order", "extra_metrics", "truncation", "remat"):
        assert entry.param(name).default == declared[name].default, name
    assert entry.param("remat").annotation == Remat
    assert entry.param("extra_metrics").annotation is bool
    assert entry.param("scale").default == 0.5 and entry.param("scale").annotation is float
    assert entry.param("optim_fn_inner").components == ("optimizers", "kernels")
    assert entry.context == ("meta_model",)


def test_forwarded_keys_are_type_checked_built_and_unknown_ones_refused():
    config = metax.experiment.parse_config(_learner_config(remat="block", truncation=1, scale=2.0), name="t")
    assert (config.learner["remat"], config.learner["truncation"], config.learner["extra_metrics"]) == ("block", 1, False)
    learner = metax.experiment.build(config).learner
    assert (learner.remat, learner.truncation, learner.scale) == ("block", 1, 2.0)
    with pytest.raises(metax.experiment.ConfigError, match=r"learner\.truncation: expected .*int.*got 'x'"):
        metax.experiment.parse_config(_learner_config(truncation="x"), name="t")
    with pytest.raises(metax.experiment.ConfigError, match=r"learner\.extra_metric: .*did you mean 'extra_metrics'"):
        metax.experiment.parse_config(_learner_config(extra_metric=True), name="t")


def test_args_forward_the_base_positional_arguments():
    class Base:
        def __init__(self, a: int, b: float = 1.0, *, c: bool = False) -> None:
            pass

    class Child(Base):
        def __init__(self, *args, d: Literal["x", "y"] = "x", **options) -> None:
            super().__init__(*args, **options)

    class Fixed(Base):  # no **options: the base's keyword-only arguments are not its keys
        def __init__(self, a: int) -> None:
            super().__init__(a, 2.0)

    found = [(p.name, p.default, hint) for p, hint in builder_parameters(Child)]
    assert found == [("d", "x", Literal["x", "y"]), ("a", inspect.Parameter.empty, int), ("b", 1.0, float), ("c", False, bool)]
    assert [p.name for p, _ in builder_parameters(Fixed)] == ["a"]


def test_metax_learners_keep_every_config_key():
    """Each learner's keys: its constructor's and, through **options, MetaLearner's
    keyword-only ones, once each (ConjugateGradient as the example)."""
    entry = metax.experiment.registry("learners").get("cg")
    assert [p.name for p in entry.params] == ["batch_size", "steps_inner", "steps_cg", "optim_fn_inner", "optim_fn_outer",
                                             "cg_damping", "cg_reg", "linsolver", "extra_metrics", "truncation", "remat"]
    evosax = metax.experiment.registry("learners").get("evosax")
    assert "optim_fn_outer" not in [p.name for p in evosax.params]  # Evosax passes its own
