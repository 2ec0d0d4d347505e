"""Haiku networks against manual numpy forward passes built from their own params."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metax.models import Conv4, MultilayerPerceptron, mlp_fn

KEY = jax.random.PRNGKey(0)
# Non-zero biases so a forward pass that dropped them would be caught.
B_INIT = hk.initializers.RandomNormal(0.5)


def relu(a):
    return np.maximum(a, 0.0)


def _mlp(sizes, name="mlp", **kwargs):
    def forward(x, is_training, gain=None, shift=None, skip_readout=False):
        net = MultilayerPerceptron(sizes, b_init=B_INIT, name=name, **kwargs)
        return net(x, is_training, gain=gain, shift=shift, skip_readout=skip_readout)

    return _jitted(hk.transform_with_state(forward), static_argnames="skip_readout")


def _jitted(net, **static):
    """`net` with compiled init and apply (is_training and `static` names static): run
    eagerly, every op of a call compiles on its own, which costs seconds per test."""
    return hk.TransformedWithState(jax.jit(net.init, static_argnums=2), jax.jit(net.apply, static_argnums=4, **static))


def _layers(params, prefix, count):
    """[(w, b)] in layer order, as float64 numpy."""
    return [
        (np.asarray(params[f"{prefix}/~/linear_{i}/linear"]["w"], np.float64),
         np.asarray(params[f"{prefix}/~/linear_{i}/linear"]["b"], np.float64))
        for i in range(count)
    ]


def _manual_mlp(layers, x, gain=(), shift=(), skip_readout=False):
    out = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    num = len(layers) - (1 if skip_readout else 0)
    for i in range(num):
        w, b = layers[i]
        out = out @ w + b
        if i < len(gain):
            out = out * np.asarray(gain[i])
        if i < len(shift):
            out = out + np.asarray(shift[i])
        if i < len(layers) - 1:
            out = relu(out)
    return out


@pytest.fixture(scope="module")
def mlp_setup():
    sizes = (5, 4, 3)
    net = _mlp(sizes)
    # Inputs (batch, 2, 3) are flattened to 6 features.
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 2, 3))
    params, state = net.init(KEY, x, True)
    return net, x, params, state, _layers(params, "mlp", 3)


def test_mlp_matches_manual_forward(mlp_setup):
    net, x, params, state, layers = mlp_setup
    assert [w.shape for w, _ in layers] == [(6, 5), (5, 4), (4, 3)]
    out, new_state = net.apply(params, state, None, x, False)
    assert out.shape == (7, 3)
    assert new_state == {}
    expected = _manual_mlp(layers, np.asarray(x))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # No activation after the last layer: some outputs are negative.
    assert np.min(expected) < 0


def test_mlp_gain_and_shift(mlp_setup):
    net, x, params, state, layers = mlp_setup
    rng = np.random.default_rng(3)
    gain = [jnp.asarray(rng.uniform(0.5, 2.0, size=5), jnp.float32), jnp.asarray(rng.uniform(0.5, 2.0, size=4), jnp.float32)]
    shift = [jnp.asarray(rng.normal(size=5), jnp.float32)]
    out, _ = net.apply(params, state, None, x, False, gain, shift)
    expected = _manual_mlp(layers, np.asarray(x), gain=gain, shift=shift)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    plain, _ = net.apply(params, state, None, x, False)
    assert not np.allclose(out, plain)
    # Unit gain and zero shift on every layer change nothing.
    ones = [jnp.ones(5), jnp.ones(4), jnp.ones(3)]
    zeros = [jnp.zeros(5), jnp.zeros(4), jnp.zeros(3)]
    same, _ = net.apply(params, state, None, x, False, ones, zeros)
    np.testing.assert_allclose(same, plain, rtol=1e-6, atol=1e-6)


def test_mlp_skip_readout(mlp_setup):
    net, x, params, state, layers = mlp_setup
    features, _ = net.apply(params, state, None, x, False, skip_readout=True)
    assert features.shape == (7, 4)
    expected = _manual_mlp(layers, np.asarray(x), skip_readout=True)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)
    assert np.min(features) >= 0  # the hidden features are post-ReLU
    # The readout applied to these features gives the network output.
    out, _ = net.apply(params, state, None, x, False)
    w, b = layers[-1]
    np.testing.assert_allclose(out, np.asarray(features, np.float64) @ w + b, rtol=1e-5, atol=1e-5)


def test_mlp_batch_norm_state():
    net = _mlp((3, 2), batch_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 4))
    x2 = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(2), (16, 4))
    params, state = net.init(KEY, x, True)
    ema_keys = {"mlp/~/linear_0/batch_norm/~/mean_ema", "mlp/~/linear_0/batch_norm/~/var_ema",
                "mlp/~/linear_1/batch_norm/~/mean_ema", "mlp/~/linear_1/batch_norm/~/var_ema"}
    assert ema_keys <= set(state)
    # Training mode: a one-layer view shows the normalised pre-activations of layer 0
    # (scale 1, offset 0 at init) have batch mean 0 and variance 1 per unit.
    features, new_state = net.apply(params, state, None, x2, True, skip_readout=True)
    w, b = _layers(params, "mlp", 1)[0]
    pre = np.asarray(x2, np.float64) @ w + b
    normed = (pre - pre.mean(0)) / np.sqrt(pre.var(0) + 1e-5)
    np.testing.assert_allclose(features, relu(normed), rtol=1e-4, atol=1e-4)
    # The state changed: the step counter advanced and the (debiased, first-step) moving
    # average of the mean is this batch's mean.
    mean_ema = new_state["mlp/~/linear_0/batch_norm/~/mean_ema"]
    assert int(mean_ema["counter"]) == int(state["mlp/~/linear_0/batch_norm/~/mean_ema"]["counter"]) + 1
    np.testing.assert_allclose(np.asarray(mean_ema["average"])[0], pre.mean(0), rtol=1e-4, atol=1e-4)
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), state, new_state)
    assert any(jax.tree_util.tree_leaves(changed))
    # Evaluation mode leaves the state alone.
    _, eval_state = net.apply(params, new_state, None, x2, False)
    for a, b in zip(jax.tree_util.tree_leaves(eval_state), jax.tree_util.tree_leaves(new_state)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("sizes", [(), (4, 0), (3, -1, 2)])
def test_mlp_invalid_output_sizes(sizes):
    net = hk.transform_with_state(lambda x: MultilayerPerceptron(sizes)(x, False))
    with pytest.raises(ValueError, match="output_sizes"):
        net.init(KEY, jnp.ones((2, 3)))


def test_mlp_fn_builds_stated_sizes():
    net = _jitted(mlp_fn([7, 5], output_dim=2, b_init=B_INIT))
    x = jax.random.normal(jax.random.PRNGKey(4), (6, 3))
    params, state = net.init(KEY, x, False)
    layers = _layers(params, "multilayer_perceptron", 3)
    assert [w.shape for w, _ in layers] == [(3, 7), (7, 5), (5, 2)]
    assert [b.shape for _, b in layers] == [(7,), (5,), (2,)]
    assert len(params) == 3
    out, _ = net.apply(params, state, None, x, False)
    assert out.shape == (6, 2)
    np.testing.assert_allclose(out, _manual_mlp(layers, np.asarray(x)), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- Conv4


def test_conv4_readout_and_state():
    channels = 8

    def forward(x, is_training, readout):
        return Conv4(channels=channels, readout=readout, name="net")(x, is_training)

    full = hk.transform_with_state(lambda x, t: forward(x, t, 5))
    trunk = hk.transform_with_state(lambda x, t: forward(x, t, None))
    x = jax.random.normal(jax.random.PRNGKey(5), (2, 28, 28, 1))

    @jax.jit  # one program: eagerly every op of Conv4 compiles on its own (measured 8.9 -> 4.2 CPU s)
    def run(x):
        params, state = full.init(KEY, x, True)
        out, new_state = full.apply(params, state, None, x, True)
        trunk_params = {k: v for k, v in params.items() if "readout" not in k}
        features, _ = trunk.apply(trunk_params, state, None, x, True)
        return params, state, out, new_state, features

    params, state, out, new_state, features = run(x)
    norm_states = [k for k in state if "/norm/" in k]
    assert len(norm_states) == 8  # mean and var EMA for each of the four blocks
    assert out.shape == (2, 5)
    # 28 -> 14 -> 7 -> 4 -> 2 after four SAME 2x2 max-pools: 2 * 2 * channels features.
    assert features.shape == (2, 2 * 2 * channels)
    assert np.min(features) >= 0  # ReLU then max-pool
    readout = params["net/readout"]
    expected = np.asarray(features, np.float64) @ np.asarray(readout["w"], np.float64) + np.asarray(readout["b"])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # Training updated the batch-norm statistics.
    assert int(new_state["net/~/block_0/norm/~/mean_ema"]["counter"]) == 1


def test_conv4_rejects_non_image_input():
    net = hk.transform_with_state(lambda x: Conv4(channels=4, readout=2)(x, True))
    with pytest.raises(ValueError, match="Conv4 expects images"):
        net.init(KEY, jnp.ones((2, 28, 28)))


def test_conv4_unit_gain_and_zero_shift_are_identity():
    x = jax.random.normal(jax.random.PRNGKey(6), (2, 28, 28, 1))
    ones, zeros = [jnp.ones(8)] * 4, [jnp.zeros(8)] * 4
    plain = hk.transform_with_state(lambda x: Conv4(channels=8, readout=5, name="net")(x, True))
    hooked = hk.transform_with_state(lambda x: Conv4(channels=8, readout=5, name="net")(x, True, ones, zeros))

    @jax.jit  # one program, not one per op
    def run(x):
        params, state = plain.init(KEY, x)
        hooked_params, _ = hooked.init(KEY, x)
        return hooked_params, hooked.apply(params, state, None, x)[0], plain.apply(params, state, None, x)[0]

    # Call-time gains/shifts replace batch norm's own scale/offset (initialised to 1 / 0).
    hooked_params, out, expected = run(x)
    assert not any("scale" in leaf for module in hooked_params.values() for leaf in module)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
