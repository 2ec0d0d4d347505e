"""Property tests: pytree utilities, the synthetic task samplers and the config parser."""

import copy
import os
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import metax
from metax.experiment.cli import main
from metax.experiment.schema import dump_config, parse_config
from metax.utils import get_field, set_field, tree_add, tree_length, tree_mean_keep_dtype, tree_scale, tree_sub

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- pytree utilities ---------------------------------------------------------------------

dtypes = st.sampled_from([np.float32, np.float64, np.int32])
leading = st.integers(1, 4)


@st.composite
def trees(draw, length=None):
    """A dict / tuple tree of arrays that share a leading axis."""
    n = draw(leading) if length is None else length
    leaves = draw(st.lists(st.tuples(dtypes, st.lists(st.integers(1, 3), max_size=2)), min_size=1, max_size=4))
    arrays = [draw(st.integers(0, 2**31 - 1)) for _ in leaves]
    made = [np.random.default_rng(seed).normal(size=(n, *shape)).astype(dtype) * 5 for seed, (dtype, shape) in zip(arrays, leaves)]
    return {"a": tuple(made[: len(made) // 2]), "b": {"c": made[len(made) // 2 :]}}


@FAST
@given(trees())
def test_tree_mean_keeps_each_dtype_and_means_floats(tree):
    mean = tree_mean_keep_dtype(tree)
    for leaf, reduced in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(mean)):
        assert reduced.dtype == jnp.asarray(leaf).dtype and reduced.shape == leaf.shape[1:]  # float64 is float32 without x64
        expected = leaf.astype(np.float64).mean(axis=0)
        if np.issubdtype(leaf.dtype, np.floating):
            np.testing.assert_allclose(reduced, expected, rtol=1e-5, atol=1e-5)
        else:  # integer counters stay integers: the mean truncated toward zero
            np.testing.assert_array_equal(reduced, np.trunc(expected).astype(reduced.dtype))
    assert tree_length(tree) == jax.tree_util.tree_leaves(tree)[0].shape[0]


@FAST
@given(trees(length=2), st.floats(-3, 3))
def test_tree_arithmetic_is_leafwise(tree, factor):
    twice = tree_add(tree, tree)
    for leaf, doubled, zero, scaled in zip(
        jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(twice),
        jax.tree_util.tree_leaves(tree_sub(twice, tree_scale(tree, 2))), jax.tree_util.tree_leaves(tree_scale(tree, factor)),
    ):
        np.testing.assert_allclose(doubled, 2 * np.asarray(leaf), rtol=1e-6)
        np.testing.assert_allclose(zero, 0, atol=1e-5)
        np.testing.assert_allclose(scaled, np.asarray(leaf) * factor, rtol=1e-5, atol=1e-5)


@FAST
@given(st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=5), st.integers(), min_size=1), st.integers())
def test_set_field_replaces_one_entry_and_copies(container, value):
    key = sorted(container)[0]
    updated = set_field(container, key, value)
    assert get_field(updated, key) == value and container[key] == get_field(container, key)
    assert {k: v for k, v in updated.items() if k != key} == {k: v for k, v in container.items() if k != key}
    with pytest.raises(KeyError):
        get_field(container, key + "_missing")


# -- task samplers ------------------------------------------------------------------------


@FAST
@given(st.sampled_from(["sinusoid", "linear", "family"]), st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_task_samplers_shapes_ranges_and_determinism(family, shots_train, shots_test, seed):
    sample = metax.data.make_task_sampler(family, shots_train, shots_test)
    key = jax.random.PRNGKey(seed)
    task = sample(key)
    assert task.train.x.shape == (shots_train, 1) and task.test.y.shape == (shots_test, 1)
    x = np.concatenate([task.train.x, task.test.x])
    assert np.all((x >= -5) & (x <= 5)) and np.all(np.isfinite(task.test.y))
    jax.tree_util.tree_map(np.testing.assert_array_equal, task, sample(key))  # a key is a task
    if family == "linear":  # one line through every point of the task
        y = np.concatenate([task.train.y, task.test.y])[:, 0]
        if np.ptp(x) > 1e-3:
            slope, offset = np.polyfit(x[:, 0], y, 1)
            assert abs(slope) <= 5 + 1e-3 and abs(offset) <= 5 + 1e-3
            np.testing.assert_allclose(slope * x[:, 0] + offset, y, atol=1e-3)
    if family == "family":
        ids = np.concatenate([task.train.info["family"], task.test.info["family"]])
        assert ids.min() == ids.max() and 0 <= ids[0] < 5


# -- the config parser ------------------------------------------------------------------

VALID = {
    "task": [{"name": "sinusoid"}, {"name": "linear", "shots_train": 7}, {"name": "family", "shots_test": 3}],
    "model": [{"name": "mlp", "hidden_dims": [4]}, {"name": "mlp", "hidden_dims": [3, 5], "activation": "tanh"}],
    "module": [{"name": "learned_init"}, {"name": "learned_init", "reg_strength": 0.5}, {"name": "anil"},
               {"name": "gainmod"}],
    "learner": [
        {"name": "maml", "steps_inner": 1, "optim_fn_inner": {"name": "sgd", "learning_rate": 0.1},
         "optim_fn_outer": {"name": "adam", "learning_rate": 0.001}},
        {"name": "reptile", "steps_inner": 2, "optim_fn_inner": {"name": "sgd", "learning_rate": 0.1},
         "optim_fn_outer": {"name": "sgd", "learning_rate": 0.5}},
        {"name": "maml", "steps_inner": 3, "first_order": True, "optim_fn_inner": {"name": "meta_sgd", "lr_init": 0.1},
         "optim_fn_outer": {"name": "adamw", "learning_rate": 0.01, "weight_decay": 0.0}},
    ],
}


@st.composite
def valid_configs(draw):
    config = {section: copy.deepcopy(draw(st.sampled_from(choices))) for section, choices in VALID.items()}
    config["seed"] = draw(st.integers(0, 1000))
    config["train"] = {"steps": draw(st.integers(1, 10**6)), "meta_batch_size": draw(st.integers(1, 64)),
                       "chunk": draw(st.one_of(st.none(), st.integers(1, 100)))}
    config["eval"] = {"tasks": draw(st.integers(2, 1000)), "steps": draw(st.one_of(st.none(), st.integers(0, 20)))}
    return config


@FAST
@given(valid_configs())
def test_random_valid_configs_round_trip_through_their_resolved_yaml(config):
    import yaml

    resolved = parse_config(config, name="random")
    again = parse_config(yaml.safe_load(dump_config(resolved)))
    assert again == resolved and dump_config(again) == dump_config(resolved)
    for section in ("task", "model", "module", "learner"):
        for key, value in config[section].items():
            if key != "name" and not isinstance(value, dict):
                assert resolved.to_dict()[section][key] == (list(value) if isinstance(value, tuple) else value)


def corruptions():
    keys = st.text(string.ascii_lowercase + "_", min_size=3, max_size=12)
    return st.one_of(
        st.tuples(st.just("unknown key"), st.sampled_from(["task", "model", "module", "learner", "train", "eval"]), keys),
        st.tuples(st.just("bad size"), st.sampled_from(["steps", "meta_batch_size"]), st.integers(-10, 0)),
        st.tuples(st.just("bad type"), st.sampled_from(["steps", "meta_batch_size"]), st.sampled_from(["ten", 2.5, [1], True])),
        st.tuples(st.just("unknown name"), st.sampled_from(["task", "model", "module", "learner"]), keys),
    )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_configs(), corruptions())
def test_random_invalid_configs_exit_2(tmp_path, capsys, config, corruption):
    import yaml

    kind, where, value = corruption
    if kind == "unknown key":
        section = config.setdefault(where, {})
        if where in ("train", "eval"):
            import dataclasses

            from metax.experiment.schema import EvalConfig, TrainConfig

            known = {f.name for f in dataclasses.fields(TrainConfig if where == "train" else EvalConfig)}
        else:
            known = {p.name for p in metax.experiment.registry(where + "s").get(section["name"]).params} | {"name"}
        if value in known:
            return
        section[value] = 1
    elif kind in ("bad size", "bad type"):
        config["train"][where] = value
    else:
        if value in metax.experiment.registry(where + "s").names():
            return
        config[where]["name"] = value
    path = tmp_path / f"c{abs(hash(str(config)))}.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metax: error: ") and "Traceback" not in err
    os.unlink(path)
