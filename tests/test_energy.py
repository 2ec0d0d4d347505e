"""Losses and regularisers against direct numpy / scipy computations."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import log_softmax

from metax.energy import (
    CrossEntropy,
    CrossEntropyMasked,
    EnergyFunction,
    EnergySum,
    LearnedL2,
    SquaredError,
    SquaredErrorMasked,
    accuracy,
    iMAML,
)

RNG = np.random.default_rng(0)


def call(energy, pred=None, target=None, params=None, hparams=None, info=None, rng=None):
    """Calls an energy with the full signature (state and hstate unused here)."""
    return energy(rng, pred, target, params, hparams, None, None, info)


def _regression(samples=6, dims=2):
    pred = RNG.normal(size=(samples, dims)).astype(np.float32)
    target = RNG.normal(size=(samples, dims)).astype(np.float32)
    return pred, target


def _classification(samples=8, classes=4):
    logits = RNG.normal(scale=2.0, size=(samples, classes)).astype(np.float32)
    labels = RNG.integers(0, classes, size=samples)
    return logits, labels


# ------------------------------------------------------------------------------ losses


def test_squared_error_is_full_mse():
    pred, target = _regression()
    loss, metrics = call(SquaredError(), pred, target)
    expected = np.mean((pred.astype(np.float64) - target) ** 2)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-6)
    # Hand-checkable: one residual of 2 among four elements -> 4 / 4 = 1 (half-MSE would be 0.5).
    loss, _ = call(SquaredError(), jnp.array([[2.0, 0.0], [0.0, 0.0]]), jnp.zeros((2, 2)))
    assert float(loss) == 1.0


def test_squared_error_sum_and_none():
    pred, target = _regression()
    sq = (pred.astype(np.float64) - target) ** 2
    loss_sum, _ = call(SquaredError(reduction="sum"), pred, target)
    np.testing.assert_allclose(loss_sum, sq.sum(), rtol=1e-6)
    loss_none, _ = call(SquaredError(reduction="none"), pred, target)
    assert loss_none.shape == sq.shape
    np.testing.assert_allclose(loss_none, sq, rtol=1e-6)


def test_squared_error_masked():
    pred, target = _regression(samples=6, dims=2)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    sq = (pred.astype(np.float64) - target) ** 2
    loss, metrics = call(SquaredErrorMasked(), pred, target, info={"mask": jnp.asarray(mask)})
    np.testing.assert_allclose(loss, sq[mask.astype(bool)].mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["loss"], loss)
    loss_sum, _ = call(SquaredErrorMasked(reduction="sum"), pred, target, info={"mask": jnp.asarray(mask)})
    np.testing.assert_allclose(loss_sum, sq[mask.astype(bool)].sum(), rtol=1e-6)
    # An all-ones mask is the plain MSE.
    loss_ones, _ = call(SquaredErrorMasked(), pred, target, info={"mask": jnp.ones(6)})
    np.testing.assert_allclose(loss_ones, sq.mean(), rtol=1e-6)


@pytest.mark.parametrize("info", [None, {}, {"other": jnp.ones(6)}])
def test_masked_losses_require_mask(info):
    pred, target = _regression()
    with pytest.raises(KeyError, match=r"info\['mask'\]"):
        call(SquaredErrorMasked(), pred, target, info=info)
    logits, labels = _classification(samples=6)
    with pytest.raises(KeyError, match="mask"):
        call(CrossEntropyMasked(), logits, labels, info=info)


def test_cross_entropy_and_accuracy():
    logits, labels = _classification()
    per_sample = -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(len(labels)), labels]
    expected_acc = np.mean(np.argmax(logits, axis=-1) == labels)
    loss, metrics = call(CrossEntropy(), logits, labels)
    np.testing.assert_allclose(loss, per_sample.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["acc"], expected_acc, rtol=1e-6)
    loss_sum, _ = call(CrossEntropy(reduction="sum"), logits, labels)
    np.testing.assert_allclose(loss_sum, per_sample.sum(), rtol=1e-5)
    # Hand-checkable accuracy: two of four right.
    logits4 = jnp.eye(3)[jnp.array([0, 1, 2, 0])] * 5.0
    _, m = call(CrossEntropy(), logits4, jnp.array([0, 1, 0, 2]))
    assert float(m["acc"]) == 0.5
    # info["hard_targets"] takes over for accuracy, not for the loss.
    _, m_hard = call(CrossEntropy(), logits4, jnp.array([0, 1, 0, 2]), info={"hard_targets": jnp.array([0, 1, 2, 0])})
    assert float(m_hard["acc"]) == 1.0


def test_cross_entropy_masked():
    logits, labels = _classification(samples=8)
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1], np.float32)
    keep = mask.astype(bool)
    per_sample = -log_softmax(logits.astype(np.float64), axis=-1)[np.arange(8), labels]
    loss, metrics = call(CrossEntropyMasked(), logits, labels, info={"mask": jnp.asarray(mask)})
    np.testing.assert_allclose(loss, per_sample[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["acc"], np.mean(np.argmax(logits[keep], -1) == labels[keep]), rtol=1e-6)


def test_accuracy_helper_with_mask():
    logits = jnp.eye(3)[jnp.array([0, 1, 2, 1])]
    labels = jnp.array([0, 2, 2, 1])  # right, wrong, right, right
    assert float(accuracy(logits, labels)) == 0.75
    assert float(accuracy(logits, labels, jnp.array([0.0, 1.0, 1.0, 0.0]))) == 0.5


def test_invalid_reduction():
    with pytest.raises(ValueError, match="reduction"):
        SquaredError(reduction="avg")
    with pytest.raises(ValueError, match="reduction"):
        iMAML(1.0, {"a": "b"}, reduction="bogus")
    with pytest.raises(ValueError, match="reduction"):
        LearnedL2({"a": "b"}, reduction="median")


# -------------------------------------------------------------------------------- sums


def test_sum_of_energies():
    pred, target = _regression()
    params = {"w": jnp.array([1.0, 2.0])}
    hparams = {"w0": jnp.array([0.0, 4.0])}
    reg = iMAML(2.0, {"w": "w0"})
    total = SquaredError() + reg
    assert isinstance(total, EnergySum) and isinstance(total, EnergyFunction)
    value, metrics = call(total, pred, target, params, hparams, rng=jax.random.PRNGKey(0))
    mse = np.mean((pred.astype(np.float64) - target) ** 2)
    reg_value = 0.5 * 2.0 * (1.0 + 4.0)
    np.testing.assert_allclose(value, mse + reg_value, rtol=1e-6)
    assert set(metrics) == {"loss", "loss_reg"}
    np.testing.assert_allclose(metrics["loss"], mse, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_reg"], reg_value, rtol=1e-6)


def test_sum_repeated_metric_keys_get_suffixes():
    pred, target = _regression()
    mse = np.mean((pred.astype(np.float64) - target) ** 2)
    sse = np.sum((pred.astype(np.float64) - target) ** 2)
    value, metrics = call(SquaredError() + SquaredError(reduction="sum"), pred, target)
    np.testing.assert_allclose(value, mse + sse, rtol=1e-6)
    assert set(metrics) == {"loss", "loss_2"}
    np.testing.assert_allclose(metrics["loss"], mse, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_2"], sse, rtol=1e-6)


def test_nested_sums_flatten():
    a, b, c = SquaredError(), SquaredError(reduction="sum"), SquaredError()
    left = (a + b) + c
    right = a + (b + c)
    assert left.energies == (a, b, c) and right.energies == (a, b, c)
    pred, target = _regression()
    sq = (pred.astype(np.float64) - target) ** 2
    value, metrics = call(left, pred, target, rng=jax.random.PRNGKey(1))
    np.testing.assert_allclose(value, 2 * sq.mean() + sq.sum(), rtol=1e-6)
    assert set(metrics) == {"loss", "loss_2", "loss_3"}
    np.testing.assert_allclose(metrics["loss_2"], sq.sum(), rtol=1e-6)


def test_adding_a_non_energy():
    energy = SquaredError()
    assert energy.__add__(1.0) is NotImplemented
    with pytest.raises(TypeError):
        energy + 1.0
    with pytest.raises(TypeError, match="cannot take those eight positional arguments"):
        energy + (lambda pred, target: (0.0, {}))


# -------------------------------------------------------------------------- regularisers


class Params(NamedTuple):
    base_learner: dict
    other: jnp.ndarray


class HParams(NamedTuple):
    base_learner_init: dict
    lam: dict


def _pytrees():
    p = {"w": RNG.normal(size=(3, 2)).astype(np.float32), "b": RNG.normal(size=(2,)).astype(np.float32)}
    o = {"w": RNG.normal(size=(3, 2)).astype(np.float32), "b": RNG.normal(size=(2,)).astype(np.float32)}
    return jax.tree_util.tree_map(jnp.asarray, p), jax.tree_util.tree_map(jnp.asarray, o)


def test_imaml_value_and_gradient():
    p, o = _pytrees()
    params = Params(base_learner=p, other=jnp.ones(4) * 100.0)  # "other" is not regularised
    hparams = HParams(base_learner_init=o, lam={})
    reg = iMAML(reg_strength=0.3, key_map={"base_learner": "base_learner_init"})
    value, metrics = call(reg, params=params, hparams=hparams)
    sq = sum(np.sum((np.asarray(p[k], np.float64) - np.asarray(o[k])) ** 2) for k in ("w", "b"))
    np.testing.assert_allclose(value, 0.5 * 0.3 * sq, rtol=1e-6)
    np.testing.assert_allclose(metrics["loss_reg"], value)
    # Gradient wrt params: lambda (p - o) on the mapped field, zero elsewhere.
    grads = jax.grad(lambda prm: call(reg, params=prm, hparams=hparams)[0])(params)
    for k in ("w", "b"):
        np.testing.assert_allclose(grads.base_learner[k], 0.3 * (np.asarray(p[k]) - np.asarray(o[k])), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(grads.other, np.zeros(4))
    # Same value with dict containers; "mean" divides by the number of parameters (8).
    reg_dict = iMAML(0.3, {"theta": "omega"}, reduction="mean")
    value_mean, _ = call(reg_dict, params={"theta": p}, hparams={"omega": o})
    np.testing.assert_allclose(value_mean, 0.5 * 0.3 * sq / 8, rtol=1e-6)


def test_imaml_rejects_negative_strength_and_missing_field():
    with pytest.raises(ValueError, match="reg_strength"):
        iMAML(-1.0, {"a": "b"})
    p, o = _pytrees()
    with pytest.raises(KeyError, match="omega"):
        call(iMAML(1.0, {"theta": "omega"}), params={"theta": p}, hparams={"init": o})


def test_learned_l2_with_omega_and_log_lambda():
    p, o = _pytrees()
    log_lambda = {"w": jnp.asarray(RNG.normal(size=(3, 2)), jnp.float32), "b": jnp.asarray(RNG.normal(size=(2,)), jnp.float32)}
    reg = LearnedL2({"base_learner": {"omega": "base_learner_init", "log_lambda": "lam"}})
    params = Params(base_learner=p, other=jnp.zeros(1))
    hparams = HParams(base_learner_init=o, lam=log_lambda)
    value, metrics = call(reg, params=params, hparams=hparams)
    expected = 0.5 * sum(
        np.sum(np.exp(np.asarray(log_lambda[k], np.float64)) * (np.asarray(p[k], np.float64) - np.asarray(o[k])) ** 2)
        for k in ("w", "b")
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_reg"], value)
    # With log_lambda = log(l) constant it reduces to iMAML with strength l.
    const = jax.tree_util.tree_map(lambda a: jnp.full_like(a, np.log(0.7)), log_lambda)
    value_c, _ = call(reg, params=params, hparams=HParams(base_learner_init=o, lam=const))
    value_i, _ = call(iMAML(0.7, {"base_learner": "base_learner_init"}), params=params, hparams=hparams)
    np.testing.assert_allclose(value_c, value_i, rtol=1e-5)


def test_learned_l2_string_key_map_centres_at_zero():
    p, _ = _pytrees()
    log_lambda = {"w": jnp.full((3, 2), np.log(2.0), jnp.float32), "b": jnp.array([0.0, 1.0], jnp.float32)}
    reg = LearnedL2({"theta": "log_lam"})
    value, _ = call(reg, params={"theta": p}, hparams={"log_lam": log_lambda})
    expected = 0.5 * (
        np.sum(2.0 * np.asarray(p["w"], np.float64) ** 2)
        + np.sum(np.exp([0.0, 1.0]) * np.asarray(p["b"], np.float64) ** 2)
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    grads = jax.grad(lambda prm: call(reg, params=prm, hparams={"log_lam": log_lambda})[0])({"theta": p})
    np.testing.assert_allclose(grads["theta"]["w"], 2.0 * np.asarray(p["w"]), rtol=1e-5)
