"""The data contract, the synthetic task families, meta-batch streams and loaders.

Values are checked against independent computations: least-squares fits recover each
task's generating parameters, split/batch contents are compared with numpy indexing, and
the sinusoid second moment is compared with its closed form under a variance bound.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax.data import (
    Dataset,
    MetaBatchStream,
    MetaDataset,
    check_metabatch,
    create_synthetic_metadataset,
    get_batch,
    get_task_family,
    make_task_sampler,
    sample_metabatch,
    split_dataset,
)
from metax.data import tasks as tasks_mod

KEY = jax.random.PRNGKey(0)


def _jit_metabatch(name, shots_train, shots_test, tasks, seed):
    sample_task = make_task_sampler(name, shots_train, shots_test)
    return jax.tree_util.tree_map(
        np.asarray, jax.jit(lambda k: sample_metabatch(k, sample_task, tasks))(jax.random.PRNGKey(seed))
    )


@pytest.fixture(scope="module")
def sinusoid_batch():
    """4000 sinusoid tasks of 10 support and 6 query points (compiled once)."""
    return _jit_metabatch("sinusoid", 10, 6, 4000, 11)


@pytest.fixture(scope="module")
def family_batch():
    return _jit_metabatch("family", 8, 4, 500, 2)


def _np(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _sinusoid_fit(x, y):
    """Least squares y = c1 sin x + c2 cos x; returns (A, phi, max abs residual).

    A sin(x - phi) = A cos(phi) sin x - A sin(phi) cos x, so c1 = A cos phi, c2 = -A sin phi.
    """
    x = np.asarray(x, np.float64).reshape(-1)
    y = np.asarray(y, np.float64).reshape(-1)
    design = np.stack([np.sin(x), np.cos(x)], axis=1)
    (c1, c2), *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = np.max(np.abs(design @ np.array([c1, c2]) - y))
    return math.hypot(c1, c2), math.atan2(-c2, c1), residual


# --------------------------------------------------------------------------- contract


def test_dataset_and_metadataset_construction():
    x = jnp.arange(6.0).reshape(3, 2)
    y = jnp.array([[1.0], [2.0], [3.0]])
    ds = Dataset(x, y)
    assert ds.info == {}
    np.testing.assert_array_equal(ds.x, np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(ds.y, [[1.0], [2.0], [3.0]])
    meta = MetaDataset(train=ds, test=Dataset(x[:1], y[:1], {"mask": jnp.ones(1)}))
    # It is a pytree: tree_map keeps the types and applies to every leaf.
    doubled = jax.tree_util.tree_map(lambda a: 2 * a, meta)
    assert isinstance(doubled, MetaDataset) and isinstance(doubled.train, Dataset)
    np.testing.assert_array_equal(doubled.train.y, [[2.0], [4.0], [6.0]])
    np.testing.assert_array_equal(doubled.test.info["mask"], [2.0])
    assert len(jax.tree_util.tree_leaves(meta)) == 5


def test_dataset_rejects_mismatched_leading_axes():
    with pytest.raises(ValueError) as err:
        Dataset(jnp.zeros((3, 1)), jnp.zeros((4, 1)))
    assert "(3, 1)" in str(err.value) and "(4, 1)" in str(err.value)


def test_dataset_rejects_mismatched_info_entry():
    with pytest.raises(ValueError) as err:
        Dataset(jnp.zeros((3, 1)), jnp.zeros((3, 1)), {"mask": jnp.ones((5,))})
    message = str(err.value)
    assert "mask" in message and "(5,)" in message and "3" in message


def _metabatch(tasks_train=2, tasks_test=2, shots=4):
    train = Dataset(jnp.zeros((tasks_train, shots, 1)), jnp.ones((tasks_train, shots, 1)))
    test = Dataset(jnp.zeros((tasks_test, shots, 1)), jnp.ones((tasks_test, shots, 1)))
    return MetaDataset(train, test)


def test_check_metabatch_accepts_a_valid_batch():
    assert check_metabatch(_metabatch()) is None


def test_check_metabatch_requires_task_axis():
    single = MetaDataset(Dataset(jnp.zeros((4, 1)), jnp.zeros((4, 1))), Dataset(jnp.zeros((4, 1)), jnp.zeros((4, 1))))
    with pytest.raises(ValueError, match="task axis"):
        check_metabatch(single)


def test_check_metabatch_task_counts_must_agree():
    with pytest.raises(ValueError) as err:
        check_metabatch(_metabatch(tasks_train=3, tasks_test=2))
    assert "3 tasks" in str(err.value) and "2" in str(err.value)


def test_check_metabatch_y_must_share_leading_axes():
    bad = MetaDataset(
        Dataset(jnp.zeros((2, 4, 1)), jnp.zeros((2, 4, 1))),
        # Five query targets per task but four inputs: leading axes match (2) only on tasks.
        Dataset(jnp.zeros((2, 4, 1)), jnp.zeros((2, 5, 1))),
    )
    with pytest.raises(ValueError, match="same"):
        check_metabatch(bad)


@pytest.mark.parametrize("value", [(1, 2), "batch", Dataset(jnp.zeros((2, 4, 1)), jnp.zeros((2, 4, 1)))])
def test_check_metabatch_type_error(value):
    with pytest.raises(TypeError, match="MetaDataset"):
        check_metabatch(value)


def _indexed_dataset(n=10):
    x = jnp.arange(n, dtype=jnp.float32)[:, None]
    return Dataset(x, 10.0 * x, {"id": jnp.arange(n)})


def test_get_batch_without_replacement():
    ds = _indexed_dataset(10)
    batch = _np(get_batch(jax.random.PRNGKey(3), ds, 6))
    ids = batch.info["id"]
    assert len(set(ids.tolist())) == 6
    assert set(ids.tolist()) <= set(range(10))
    # Every leaf is gathered with the same indices, so the pairing survives.
    np.testing.assert_array_equal(batch.x[:, 0], ids.astype(np.float32))
    np.testing.assert_array_equal(batch.y, 10.0 * batch.x)
    # A full-size batch is a permutation of all samples.
    full = _np(get_batch(jax.random.PRNGKey(4), ds, 10))
    assert sorted(full.info["id"].tolist()) == list(range(10))
    # Different keys give different draws.
    other = _np(get_batch(jax.random.PRNGKey(5), ds, 6))
    assert not np.array_equal(other.info["id"], ids)


def test_get_batch_too_large():
    with pytest.raises(ValueError, match="batch_size=11"):
        get_batch(KEY, _indexed_dataset(10), 11)


def test_split_dataset_values():
    ds = _indexed_dataset(10)
    meta = _np(split_dataset(ds, 3, 4))
    np.testing.assert_array_equal(meta.train.x[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(meta.test.x[:, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(meta.test.y[:, 0], [30, 40, 50, 60])
    np.testing.assert_array_equal(meta.test.info["id"], [3, 4, 5, 6])
    rest = _np(split_dataset(ds, 3))
    np.testing.assert_array_equal(rest.test.info["id"], np.arange(3, 10))
    # vmapped over a task axis.
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, a + 100]), ds)
    batched = _np(jax.vmap(lambda d: split_dataset(d, 2, 2))(stacked))
    np.testing.assert_array_equal(batched.test.x[:, :, 0], [[2, 3], [102, 103]])


def test_split_dataset_too_many_shots():
    with pytest.raises(ValueError, match="exceeds the 10 samples"):
        split_dataset(_indexed_dataset(10), 6, 5)


# ----------------------------------------------------------------------- task families


def test_sinusoid_recovers_amplitude_and_phase(sinusoid_batch):
    batch = sinusoid_batch
    assert batch.train.x.shape == (4000, 10, 1) and batch.test.x.shape == (4000, 6, 1)
    xs = np.concatenate([batch.train.x, batch.test.x], axis=1)
    assert xs.min() >= -5.0 and xs.max() <= 5.0
    xs = xs[:200]
    ys = np.concatenate([batch.train.y, batch.test.y], axis=1)[:200]
    amps, phases = [], []
    for x, y in zip(xs, ys):
        amp, phase, residual = _sinusoid_fit(x, y)
        assert residual < 1e-4 * max(amp, 1.0)
        amps.append(amp)
        phases.append(phase)
    amps, phases = np.array(amps), np.array(phases)
    assert amps.min() >= 0.1 - 1e-4 and amps.max() <= 5.0 + 1e-4
    assert phases.min() >= -1e-4 and phases.max() <= math.pi + 1e-4
    # The ranges are covered, not collapsed (200 uniform draws; the chance of missing a
    # 10%-wide end interval is 0.9**200 ~ 7e-10).
    assert amps.min() < 0.59 and amps.max() > 4.51
    assert phases.min() < 0.1 * math.pi and phases.max() > 0.9 * math.pi


def test_sinusoid_second_moment_matches_closed_form(sinusoid_batch):
    tasks, shots = 4000, 16
    batch = sinusoid_batch
    y = np.concatenate([batch.train.y, batch.test.y], axis=1).astype(np.float64)[..., 0]
    assert y.shape == (tasks, shots)
    estimate = np.mean(y**2)
    lo, hi = 0.1, 5.0
    ea2 = (lo**2 + lo * hi + hi**2) / 3.0  # E[A^2], A ~ U[lo, hi]
    ea4 = (hi**5 - lo**5) / (5.0 * (hi - lo))  # E[A^4]
    # E[sin^2(x - phi)] = 1/2 exactly: E[cos(2x - 2phi)] = E cos2x E cos2phi + E sin2x E sin2phi
    # and E cos(2 phi) = 0 on [0, pi], E sin(2x) = 0 on [-5, 5].
    expected = ea2 / 2.0
    # Per task, m = A^2 s with s = mean sin^2 over shots, A independent of s:
    # Var(m) = E[A^4] E[s^2] - E[A^2]^2 / 4, and E[s^2] <= 1/4 + 1/(4 shots) + (sin(10)/10)^2 / 8
    # (sin^2 is in [0, 1] so its conditional variance is <= 1/4; the last term is Var(E[s|phi])).
    es2 = 0.25 + 0.25 / shots + (math.sin(10.0) / 10.0) ** 2 / 8.0
    sigma = math.sqrt((ea4 * es2 - ea2**2 / 4.0) / tasks)
    assert abs(estimate - expected) < 5 * sigma, (estimate, expected, sigma)
    assert 5 * sigma < 0.1 * expected  # the check is informative


def test_linear_tasks_are_exact_lines():
    batch = _jit_metabatch("linear", 5, 5, 100, 0)
    xs = np.concatenate([batch.train.x, batch.test.x], axis=1)[..., 0].astype(np.float64)
    ys = np.concatenate([batch.train.y, batch.test.y], axis=1)[..., 0].astype(np.float64)
    assert xs.min() >= -5.0 and xs.max() <= 5.0
    slopes, offsets = [], []
    for x, y in zip(xs, ys):
        slope, offset = np.polyfit(x, y, 1)
        np.testing.assert_allclose(slope * x + offset, y, atol=1e-4)
        slopes.append(slope)
        offsets.append(offset)
    slopes, offsets = np.array(slopes), np.array(offsets)
    assert np.all(np.abs(slopes) <= 5 + 1e-4) and np.all(np.abs(offsets) <= 5 + 1e-4)
    assert slopes.min() < -3 and slopes.max() > 3 and offsets.min() < -3 and offsets.max() > 3


def test_family_ids_are_uniform_and_labels_consistent(family_batch):
    tasks = 500
    batch = family_batch
    train_ids, test_ids = batch.train.info["family"], batch.test.info["family"]
    assert train_ids.shape == (tasks, 8) and test_ids.shape == (tasks, 4)
    assert np.issubdtype(train_ids.dtype, np.integer)
    # One id per task, repeated for every sample of both splits.
    ids = train_ids[:, 0]
    assert np.all(train_ids == ids[:, None]) and np.all(test_ids == ids[:, None])
    assert ids.min() >= 0 and ids.max() <= 4
    counts = np.bincount(ids, minlength=5)
    assert counts.shape == (5,) and np.all(counts > 0)
    # Binomial(500, 0.2): mean 100, sd ~8.9; 5 sd either side.
    sd = math.sqrt(tasks * 0.2 * 0.8)
    assert np.all(np.abs(counts - tasks * 0.2) < 5 * sd), counts
    # Family 1 (lines with small slope) are exact lines with slope in [-0.2, 0.2].
    xs = np.concatenate([batch.train.x, batch.test.x], axis=1)[..., 0].astype(np.float64)
    ys = np.concatenate([batch.train.y, batch.test.y], axis=1)[..., 0].astype(np.float64)
    for x, y in zip(xs[ids == 1], ys[ids == 1]):
        slope, offset = np.polyfit(x, y, 1)
        np.testing.assert_allclose(slope * x + offset, y, atol=1e-5)
        assert abs(slope) <= 0.2 + 1e-5 and abs(offset) <= 1 + 1e-5
    # Family 2 (rescaled quadratics) stays in [-1, 1].
    assert np.all(np.abs(ys[ids == 2]) <= 1 + 1e-5)


def test_quadratic_family_is_rescaled_to_unit_range():
    grid = jnp.linspace(-5.0, 5.0, 4001)[:, None]
    keys = jax.random.split(jax.random.PRNGKey(7), 64)
    values = np.asarray(jax.jit(jax.vmap(lambda k: tasks_mod._quadratic(k, grid)))(keys))[..., 0]  # eagerly: a compile per op
    assert np.all(values <= 1 + 1e-5) and np.all(values >= -1 - 1e-5)
    np.testing.assert_allclose(values.max(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(values.min(axis=1), -1.0, atol=1e-3)
    # Each curve is an exact quadratic in x.
    x = np.asarray(grid[:, 0], np.float64)
    for v in values[:8]:
        coef = np.polyfit(x, v, 2)
        np.testing.assert_allclose(np.polyval(coef, x), v, atol=1e-4)


def test_sample_metabatch_vmap_and_jit():
    sample_task = make_task_sampler("sinusoid", 5, 3)
    eager = _np(sample_metabatch(KEY, sample_task, 7))
    jitted = _np(jax.jit(lambda k: sample_metabatch(k, sample_task, 7))(KEY))
    assert eager.train.x.shape == (7, 5, 1) and eager.test.y.shape == (7, 3, 1)
    check_metabatch(eager)
    # Bit-identical for the sinusoid (the line families differ by an ulp where XLA fuses
    # a*x + b into an FMA under jit).
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_array_equal(a, b)
    # vmap equals the per-task loop over the same split keys.
    for i, key in list(enumerate(jax.random.split(KEY, 7)))[::3]:
        one = _np(sample_task(key))
        np.testing.assert_allclose(eager.train.x[i], one.train.x, rtol=1e-6)
        np.testing.assert_allclose(eager.test.y[i], one.test.y, rtol=1e-5, atol=1e-6)


def test_get_task_family_unknown_name():
    assert get_task_family("sinusoid") is tasks_mod.sinusoid
    with pytest.raises(ValueError) as err:
        get_task_family("tangent")
    message = str(err.value)
    for name in ("sinusoid", "family", "linear", "tangent"):
        assert name in message


# ------------------------------------------------------------------------------ stream


def _line_task(key):
    """y = 2 x + b with b ~ U[0, 1] per task; 3 support and 2 query points."""
    key_x, key_b = jax.random.split(key)
    x = jax.random.uniform(key_x, (5, 1))
    offset = jax.random.uniform(key_b, ())
    y = 2.0 * x + offset
    return MetaDataset(Dataset(x[:3], y[:3]), Dataset(x[3:], y[3:]))


def test_metabatch_stream_values_and_determinism():
    rng = jax.random.PRNGKey(42)
    stream = MetaBatchStream(_line_task, meta_batch_size=4, rng=rng, num_batches=3)
    assert len(stream) == 3
    first = [_np(b) for b in stream]
    second = [_np(b) for b in stream]
    assert len(first) == 3
    for a, b in zip(first, second):
        for la, lb in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
            np.testing.assert_array_equal(la, lb)
    batch = first[0]
    assert batch.train.x.shape == (4, 3, 1) and batch.test.x.shape == (4, 2, 1)
    # y - 2x is one constant per task, shared by support and query, within [0, 1].
    off_train = batch.train.y - 2 * batch.train.x
    off_test = batch.test.y - 2 * batch.test.x
    np.testing.assert_allclose(off_train, np.broadcast_to(off_train[:, :1], off_train.shape), atol=1e-6)
    np.testing.assert_allclose(off_test, np.broadcast_to(off_train[:, :1], off_test.shape), atol=1e-6)
    assert off_train.min() >= 0 and off_train.max() <= 1
    # Batches differ from one another; batch i is the vmapped sampler at fold_in(rng, i).
    assert not np.allclose(first[0].train.x, first[1].train.x)
    assert not np.allclose(first[1].train.x, first[2].train.x)
    # Compiled, as the stream's sampler is (eagerly, a compile per op costs seconds).
    direct = _np(jax.jit(lambda key: sample_metabatch(key, _line_task, 4))(jax.random.fold_in(rng, 2)))
    np.testing.assert_allclose(first[2].train.y, direct.train.y, rtol=1e-6)
    # Attributes.
    np.testing.assert_array_equal(np.asarray(stream.sample_input), np.asarray(jax.jit(_line_task)(rng).train.x))
    assert stream.sample_input.shape == (3, 1)
    assert stream.input_shape == (1,)
    assert stream.output_dim == 1


def test_metabatch_stream_shapes_of_multidimensional_tasks():
    def task(key):
        x = jax.random.normal(key, (6, 2, 3))
        y = jnp.sum(x, axis=2)[:, :1] * jnp.ones((1, 4))  # (6, 4)
        return MetaDataset(Dataset(x[:4], y[:4]), Dataset(x[4:], y[4:]))

    stream = MetaBatchStream(task, meta_batch_size=2, rng=KEY)
    assert stream.input_shape == (2, 3) and stream.output_dim == 4
    batch = _np(stream.batch(0))
    np.testing.assert_allclose(batch.train.y[..., 0], batch.train.x[:, :, 0, :].sum(-1), rtol=1e-5, atol=1e-6)


def test_endless_stream_has_no_length():
    stream = MetaBatchStream(_line_task, meta_batch_size=2, rng=KEY)
    with pytest.raises(TypeError, match="endless"):
        len(stream)
    iterator = iter(stream)
    batches = [_np(next(iterator)) for _ in range(5)]  # keeps going past any length
    assert not np.allclose(batches[0].train.x, batches[4].train.x)


def test_stream_rejects_bad_arguments():
    with pytest.raises(ValueError, match="meta_batch_size"):
        MetaBatchStream(_line_task, meta_batch_size=0, rng=KEY)
    with pytest.raises(TypeError, match="MetaDataset"):
        MetaBatchStream(lambda k: (jnp.zeros((2, 1)), jnp.zeros((2, 1))), meta_batch_size=2, rng=KEY)


# ----------------------------------------------------------------------------- loaders


def _synthetic(**overrides):
    kwargs = dict(
        name="sinusoid", meta_batch_size=5, train_test_split=True, shots_train=10, shots_test=7,
        num_tasks_train=20, num_tasks_test=8, num_tasks_valid=4,
    )
    kwargs.update(overrides)
    return create_synthetic_metadataset(**kwargs)


def test_create_synthetic_metadataset():
    out = _synthetic()
    assert len(out) == 5 and out[3] is None and out[4] is None
    train, test, valid = out[:3]
    assert len(train) == 4
    train_batches = [_np(b) for b in train]
    assert len(train_batches) == 4
    for batch in train_batches:
        assert batch.train.x.shape == (5, 10, 1) and batch.test.x.shape == (5, 7, 1)
        assert batch.train.y.shape == (5, 10, 1) and batch.test.y.shape == (5, 7, 1)
    test_batches = [_np(b) for b in test]
    assert len(test_batches) == 1
    assert test_batches[0].train.x.shape == (8, 10, 1) and test_batches[0].test.x.shape == (8, 7, 1)
    valid_batches = [_np(b) for b in valid]
    assert len(valid_batches) == 1 and valid_batches[0].test.y.shape == (4, 7, 1)
    assert train.sample_input.shape == (10, 1)
    assert train.output_dim == 1 and train.input_shape == (1,)
    # Support and query come from the same sinusoid: one fit explains both.
    batch = train_batches[0]
    for i in range(5):
        x = np.concatenate([batch.train.x[i], batch.test.x[i]])
        y = np.concatenate([batch.train.y[i], batch.test.y[i]])
        amp, _, residual = _sinusoid_fit(x, y)
        assert residual < 1e-4 * max(amp, 1.0) and 0.1 - 1e-4 <= amp <= 5 + 1e-4
    # Train and test loaders draw different tasks.
    assert not np.allclose(train_batches[0].train.x[:5], test_batches[0].train.x[:5])


def test_create_synthetic_metadataset_without_split():
    train, test, *_ = _synthetic(train_test_split=False)
    for batch in train:
        batch = _np(batch)
        assert batch.train.x.shape == (5, 10, 1)
        np.testing.assert_array_equal(batch.train.x, batch.test.x)
        np.testing.assert_array_equal(batch.train.y, batch.test.y)
    # The test loader still splits.
    test_batch = _np(next(iter(test)))
    assert test_batch.test.x.shape == (8, 7, 1)
    assert not np.allclose(test_batch.train.x[:, :7], test_batch.test.x)


def test_create_synthetic_metadataset_errors():
    with pytest.raises(ValueError, match="multiple"):
        _synthetic(num_tasks_train=22)
    with pytest.raises(ValueError) as err:
        _synthetic(name="square_wave")
    assert "sinusoid" in str(err.value) and "linear" in str(err.value)
    with pytest.raises(ValueError, match="out-of-distribution"):
        _synthetic(num_tasks_ood=4)
