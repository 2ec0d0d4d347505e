"""The shifted-view convolution against XLA's: values, first and second derivatives (both
modes), inside vmap and jit, and MAML meta-gradients through Conv4."""

import contextlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import x64
from jax import lax

import metax
from metax.models.convolution import conv2d

DN = ("NHWC", "HWIO", "NHWC")
# Every stride / padding the models use (Conv4: SAME, stride 1 with pooling, 2 without),
# with odd and even image sides (SAME pads unevenly with stride 2 on an even side).
CASES = [(1, "SAME", 5), (2, "SAME", 5), (2, "SAME", 4)]
IMPLS = ["shifted"]


def reference(x, w, stride, padding):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)


def problem(side, dtype, cin=2, cout=3, key=0):
    kx, kw, kr = jax.random.split(jax.random.PRNGKey(key), 3)
    x = jax.random.normal(kx, (2, side, side, cin), dtype)
    w = jax.random.normal(kw, (3, 3, cin, cout), dtype) / 3
    return x, w, kr


def second_order(conv):
    """Reverse-over-reverse and forward-over-reverse (as MAML and the implicit learners use
    them) of a smooth scalar of the convolution."""

    def loss(x, w):
        return jnp.sum(jnp.tanh(conv(x, w)) ** 2)

    def meta(x, w):  # one inner gradient step on w, then the loss again: MAML's shape
        gx, gw = jax.grad(loss, argnums=(0, 1))(x, w)
        return loss(x - 0.1 * gx, w - 0.1 * gw)

    def hvp(x, w):
        return jax.jvp(jax.grad(loss, argnums=1), (x, w), (jnp.ones_like(x), w))[1]

    return jax.grad(meta, argnums=(0, 1)), hvp


def assert_close(a, b, dtype):
    """Equal to float rounding, relative to the largest entry of `b` (a leaf that is zero
    in exact arithmetic, such as a bias's gradient before batch norm, is rounding only)."""
    rtol = 1e-10 if dtype == jnp.float64 else 2e-5
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    scale = max(float(jnp.max(jnp.abs(v))) for v in leaves_b)
    for u, v in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=rtol * scale)


def all_quantities(conv, x, w, r):
    """Values, first derivatives (reverse and forward) and second derivatives of `conv`."""
    fwd = lambda x, w: conv(x, w)  # noqa: E731
    grad, hvp = second_order(conv)
    return fwd(x, w), jax.vjp(fwd, x, w)[1](r), jax.jvp(fwd, (x, w), (x, w))[1], grad(x, w), hvp(x, w)


@pytest.mark.parametrize("use_x64", [False, True])
def test_values_and_derivatives_equal_xla(use_x64):
    with x64() if use_x64 else contextlib.nullcontext():
        dtype = jnp.float64 if use_x64 else jnp.float32
        problems = []
        for stride, padding, side in CASES:
            x, w, kr = problem(side, dtype)
            r = jax.random.normal(kr, reference(x, w, stride, padding).shape, dtype)
            problems.append((x, w, r))

        # One compiled program for every case and implementation: compiling is what costs here.
        @jax.jit
        def everything(problems):
            out = {}
            for (stride, padding, _), (x, w, r) in zip(CASES, problems):
                for impl in ("xla", *IMPLS):
                    conv = lambda x, w: conv2d(x, w, stride, padding, impl=impl)  # noqa: E731
                    out[impl, stride, padding, x.shape[1]] = all_quantities(conv, x, w, r)
            return out

        out = everything(problems)
        for stride, padding, side in CASES:
            plain = out["xla", stride, padding, side]
            np.testing.assert_array_equal(  # "xla" is lax.conv_general_dilated itself
                plain[0], reference(*problems[CASES.index((stride, padding, side))][:2], stride, padding)
            )
            for impl in IMPLS:
                fast = out[impl, stride, padding, side]
                assert fast[0].dtype == dtype and fast[0].shape == plain[0].shape
                assert_close(fast, plain, dtype)


def test_vmap_over_per_task_kernels():
    # MAML's case: every task has its own kernel after the inner step.
    x, w, _ = problem(6, jnp.float32)
    xs, ws = jnp.stack([x, -x]), jnp.stack([w, 2 * w])

    @jax.jit
    def both(xs, ws):
        out = []
        for stride in (1, 2):
            for conv in (lambda x, w: conv2d(x, w, stride, impl="shifted"), lambda x, w: reference(x, w, stride, "SAME")):
                batched = jax.vmap(conv)
                out.append((batched(xs, ws), jax.grad(lambda xs, ws: jnp.sum(batched(xs, ws) ** 2), (0, 1))(xs, ws)))
        return out

    fast1, plain1, fast2, plain2 = both(xs, ws)
    assert_close(fast1, plain1, jnp.float32)
    assert_close(fast2, plain2, jnp.float32)


def test_auto_is_shifted_on_cpu_and_names_are_checked():
    assert metax.models.convolution.resolve_conv_impl("auto") == ("shifted" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        hk.transform(lambda x: metax.models.Conv2D(4, impl="fast")(x)).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))
    with pytest.raises(ValueError, match="matching channels"):
        conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 4)))


def test_module_has_hk_conv2d_parameters_and_values():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 3))

    @jax.jit  # both strides, both modules in one program: eagerly every op compiles on its own
    def both(x):
        out = []
        for stride in (1, 2):
            ours = hk.transform(lambda x: metax.models.Conv2D(4, 3, stride=stride, name="conv")(x))
            theirs = hk.transform(lambda x: hk.Conv2D(4, 3, stride=stride, name="conv")(x))
            params, expected = ours.init(jax.random.PRNGKey(0), x), theirs.init(jax.random.PRNGKey(0), x)
            shifted = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a nonzero bias
            out.append((params, expected, ours.apply(shifted, None, x), theirs.apply(shifted, None, x)))
        return out

    for params, expected, got, want in both(x):
        assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(expected)  # names: conv/w, conv/b
        jax.tree_util.tree_map(np.testing.assert_array_equal, params, expected)  # shapes and initial values
        assert_close(got, want, jnp.float32)


def _conv4_meta_grad(conv_impl, dtype):
    """MAML's second-order meta-gradient for one task (one inner SGD step) through Conv4,
    written out with `jax.grad`: a small program, since compiling is what costs here (the
    learners' own meta-gradients are checked in test_maml and test_learners_ground_truth).
    To be called under `jax.jit`, initialisation included (eagerly, every op of Conv4's
    init compiles on its own)."""
    net = hk.transform_with_state(
        lambda x, is_training: metax.models.Conv4(2, readout=2, name="net", conv_impl=conv_impl)(x, is_training)
    )
    images = jax.random.uniform(jax.random.PRNGKey(3), (8, 8, 8, 1), dtype)
    labels = jnp.tile(jnp.arange(2), 4)
    (xs, xq), (ys, yq) = (images[:4], images[4:]), (labels[:4], labels[4:])
    params, state = net.init(jax.random.PRNGKey(0), xs, True)

    def loss(params, x, y):
        logits, _ = net.apply(params, state, None, x, True)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    def meta_loss(params):
        grads = jax.grad(loss)(params, xs, ys)
        return loss(jax.tree_util.tree_map(lambda p, g: p - 0.4 * g, params, grads), xq, yq)

    return jax.grad(meta_loss)(params)


def test_maml_meta_gradient_through_conv4_unchanged():
    # Strides and paddings are covered above; this checks the wiring through Conv4.
    with x64():  # both in one compiled program
        fast, plain = jax.jit(lambda: (_conv4_meta_grad("auto", jnp.float64), _conv4_meta_grad("xla", jnp.float64)))()
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(plain)) > 1e-3  # not trivially zero
    assert_close(fast, plain, jnp.float64)
