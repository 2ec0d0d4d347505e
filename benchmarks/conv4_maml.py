"""Conv4 second-order MAML on CPU: metax's runner against pure JAX and PyTorch, plus one conv.

    pip install torch==2.13.0        # benchmark only (CPU wheel); never a metax dependency
    python benchmarks/conv4_maml.py              # both tables, appended to RESULTS.md
    python benchmarks/conv4_maml.py --skip-conv  # the meta-step table only

The workload (the literature's, and the Omniglot issue's): Conv4 with 64 channels on
28x28x1 images, batch norm on each batch's own statistics, one inner SGD step (lr 0.4)
on 5-way 1-shot support sets, cross-entropy on 15 queries per class, meta-batch 2,
second order, Adam 1e-3 outside. Paths, timed in one run with interleaved windows:

- runner: the compiled chunk of `metax.experiment.train` (`loop.make_chunk`), tasks of
  random images drawn on the device;
- reference (xla conv / shifted conv): hand-written JAX, no metax import, with
  `lax.conv_general_dilated` or with the same shifted-view convolution as metax on CPU;
- torch: PyTorch autograd with `create_graph=True`, a Python loop over the 2 tasks,
  `torch.set_num_threads(2)`.

The single-convolution table: a 3x3 convolution, batch 160, 28x28, 64 -> 64 channels:
forward, input gradient and weight gradient in GFLOP/s for XLA's convolution, the
shifted-view convolution and PyTorch.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402

from common import append_rows  # noqa: E402

CHANNELS, WAYS, SHOTS, QUERIES, META_BATCH, SIDE = 64, 5, 1, 15, 2, 28
LR_INNER, LR_OUTER = 0.4, 1e-3
DN = ("NHWC", "HWIO", "NHWC")


def task_arrays(key):
    """A 5-way 1-shot 15-query task of random 28x28 images (the timing does not depend on
    them): (support x, support y, query x, query y)."""
    k_train, k_test = jax.random.split(key)
    xs = jax.random.uniform(k_train, (WAYS * SHOTS, SIDE, SIDE, 1))
    xq = jax.random.uniform(k_test, (WAYS * QUERIES, SIDE, SIDE, 1))
    return xs, jnp.repeat(jnp.arange(WAYS, dtype=jnp.int32), SHOTS), xq, jnp.repeat(jnp.arange(WAYS, dtype=jnp.int32), QUERIES)


def sample_task(key):
    """The same task as metax's `MetaDataset`, for the runner."""
    from metax.data import Dataset, MetaDataset

    xs, ys, xq, yq = task_arrays(key)
    return MetaDataset(Dataset(xs, ys), Dataset(xq, yq))


def draw_tasks(key):
    """`META_BATCH` tasks for the reference, with a leading task axis."""
    return jax.vmap(task_arrays)(jax.random.split(key, META_BATCH))


# -- the pure-JAX reference ---------------------------------------------------------------


def xla_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def shifted_conv(x, w):
    """The shifted-view convolution, written out again (no metax import): one matrix
    product over the nine shifted views side by side (im2col)."""
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, w_ = x.shape[1], x.shape[2]
    patches = jnp.concatenate([padded[:, i : i + h, j : j + w_] for i in range(3) for j in range(3)], axis=-1)
    return jnp.einsum("nhwk,kd->nhwd", patches, w.reshape(-1, w.shape[-1]))


def reference_init(key):
    params, cin = [], 1
    for k in jax.random.split(key, 4):
        w = jax.random.truncated_normal(k, -2.0, 2.0, (3, 3, cin, CHANNELS)) / np.sqrt(9 * cin)
        params.append(dict(w=w, b=jnp.zeros(CHANNELS), scale=jnp.ones(CHANNELS), offset=jnp.zeros(CHANNELS)))
        cin = CHANNELS
    features = CHANNELS * 2 * 2  # 28 -> 14 -> 7 -> 4 -> 2 after four SAME 2x2 poolings
    params.append(dict(w=jax.random.normal(key, (features, WAYS)) / np.sqrt(features), b=jnp.zeros(WAYS)))
    return params


def forward(conv, params, x):
    for p in params[:4]:
        x = conv(x, p["w"]) + p["b"]
        mean, var = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2))
        x = (x - mean) * lax.rsqrt(var + 1e-5) * p["scale"] + p["offset"]
        x = jax.nn.relu(x)
        x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
    return x.reshape(x.shape[0], -1) @ params[4]["w"] + params[4]["b"]


def cross_entropy(conv, params, x, y):
    logits = forward(conv, params, x)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def reference_chunk(conv, steps):
    """`steps` meta-steps (tasks drawn on the device, Adam by hand) in one compiled call."""

    def task_loss(params, xs, ys, xq, yq):
        grads = jax.grad(cross_entropy, argnums=1)(conv, params, xs, ys)
        adapted = jax.tree_util.tree_map(lambda p, g: p - LR_INNER * g, params, grads)
        return cross_entropy(conv, adapted, xq, yq)

    def meta_loss(params, tasks):
        return jnp.mean(jax.vmap(task_loss, in_axes=(None, 0, 0, 0, 0))(params, *tasks))

    def step(carry, key):
        params, m, v, t = carry
        loss, grads = jax.value_and_grad(meta_loss)(params, draw_tasks(key))
        t = t + 1
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        params = jax.tree_util.tree_map(
            lambda p, m, v: p - LR_OUTER * (m / (1 - 0.9**t)) / (jnp.sqrt(v / (1 - 0.999**t)) + 1e-8), params, m, v
        )
        return (params, m, v, t), loss

    def chunk(carry, key):
        return lax.scan(step, carry, jax.random.split(key, steps))

    return jax.jit(chunk)


# -- metax --------------------------------------------------------------------------------


def metax_runner(steps, conv_impl="auto"):
    """The runner's compiled chunk on this workload: (run, seconds from reset to compiled)."""
    import haiku as hk
    import optax

    import metax
    from metax.experiment import loop

    net = hk.transform_with_state(
        lambda x, is_training: metax.models.Conv4(
            CHANNELS, readout=WAYS, batch_norm_policy="transductive", conv_impl=conv_impl
        )(x, is_training)
    )
    module = metax.module.LearnedInit(
        loss_fn_inner=metax.energy.CrossEntropy(), loss_fn_outer=metax.energy.CrossEntropy(), base_learner=net, output_dim=WAYS
    )
    learner = metax.learner.ModelAgnosticMetaLearning(
        meta_model=module, batch_size=None, steps_inner=1, optim_fn_inner=optax.sgd(LR_INNER),
        optim_fn_outer=optax.adam(LR_OUTER), first_order=False,
    )
    keys = loop.run_keys(0)
    # As `metax.experiment.train` starts a run, timed from the reset to the compiled chunk.
    start = time.perf_counter()
    meta_state = learner.reset(keys.reset, jax.jit(sample_task)(keys.data).train.x)
    batch = jax.eval_shape(lambda k: metax.data.sample_metabatch(k, sample_task, META_BATCH), keys.data)
    update = jax.jit(learner.update)
    probe = jax.eval_shape(update, keys.update, meta_state, batch)[1]
    chunk = loop.make_chunk(learner, sample_task, META_BATCH, keys, steps, loop.watched_metrics(probe), probe, None, update)
    compiled = jax.jit(chunk).lower(meta_state, np.int32(0), np.int32(steps)).compile()
    compile_s = time.perf_counter() - start
    state = {"meta": meta_state, "start": 0}

    def run():
        state["meta"] = jax.block_until_ready(compiled(state["meta"], np.int32(state["start"]), np.int32(steps))[0])
        state["start"] += steps

    return run, compile_s


# -- PyTorch ------------------------------------------------------------------------------


def torch_step_fn():
    """A PyTorch meta-step of the same workload ((run, first-call seconds)); None without torch."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    params, cin = [], 1
    for _ in range(4):
        w = (torch.randn(CHANNELS, cin, 3, 3, generator=gen) / np.sqrt(9 * cin)).requires_grad_()
        params += [w, torch.zeros(CHANNELS, requires_grad=True), torch.ones(CHANNELS, requires_grad=True),
                   torch.zeros(CHANNELS, requires_grad=True)]
        cin = CHANNELS
    params += [(torch.randn(WAYS, CHANNELS * 4, generator=gen) / 16).requires_grad_(), torch.zeros(WAYS, requires_grad=True)]
    optim = torch.optim.Adam(params, lr=LR_OUTER)

    def net(p, x):
        for i in range(4):
            w, b, scale, offset = p[4 * i : 4 * i + 4]
            x = F.conv2d(x, w, b, padding=1)
            x = F.batch_norm(x, None, None, scale, offset, training=True, eps=1e-5)
            x = F.max_pool2d(F.relu(x), 2, ceil_mode=True)  # ceil: as SAME pooling (7 -> 4)
        return F.linear(x.flatten(1), p[16], p[17])

    def tasks():
        xs = torch.rand(META_BATCH, WAYS * SHOTS, 1, SIDE, SIDE, generator=gen)
        xq = torch.rand(META_BATCH, WAYS * QUERIES, 1, SIDE, SIDE, generator=gen)
        ys = torch.arange(WAYS).repeat_interleave(SHOTS)
        yq = torch.arange(WAYS).repeat_interleave(QUERIES)
        return xs, ys, xq, yq

    def step():
        xs, ys, xq, yq = tasks()
        optim.zero_grad()
        total = 0.0
        for t in range(META_BATCH):
            loss = F.cross_entropy(net(params, xs[t]), ys)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            adapted = [p - LR_INNER * g for p, g in zip(params, grads)]
            total = total + F.cross_entropy(net(adapted, xq[t]), yq) / META_BATCH
        total.backward()
        optim.step()

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


# -- single convolution -------------------------------------------------------------------


def conv_table(windows):
    n, c = 160, 64
    flop = 2 * n * SIDE * SIDE * c * c * 9
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (n, SIDE, SIDE, c))
    w = jax.random.normal(kw, (3, 3, c, c)) * 0.05
    g = jax.random.normal(kg, (n, SIDE, SIDE, c))
    runs = {}
    for name, conv in (("XLA conv", xla_conv), ("shifted conv", shifted_conv)):
        passes = {
            "forward": jax.jit(conv),
            "input grad": jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
            "weight grad": jax.jit(lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]),
        }
        for pass_, fn in passes.items():
            args = (x, w) if pass_ == "forward" else (x, w, g)
            jax.block_until_ready(fn(*args))
            runs[name, pass_] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(2)
        tx, tw, tg = (torch.from_numpy(np.array(a)) for a in (x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)))
        tx, tw, tg = tx.contiguous(), tw.contiguous(), tg.contiguous()
        runs["PyTorch", "forward"] = lambda: F.conv2d(tx, tw, padding=1)
        runs["PyTorch", "input grad"] = lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, padding=1)
        runs["PyTorch", "weight grad"] = lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, padding=1)
        for run in [r for k, r in runs.items() if k[0] == "PyTorch"]:
            run()
    except ImportError:
        pass
    times = {k: [] for k in runs}
    for _ in range(windows):
        for k, run in runs.items():
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    return {k: flop / statistics.median(v) / 1e9 for k, v in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="meta-steps per timed window (JAX paths)")
    parser.add_argument("--skip-conv", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    load = os.getloadavg()

    if not args.skip_conv:
        gflops = conv_table(args.windows)
        rows = []
        for name in ("XLA conv", "shifted conv", "PyTorch"):
            if (name, "forward") in gflops:
                rows.append([name, *(f"{gflops[name, p]:.1f}" for p in ("forward", "input grad", "weight grad")), f"{load[0]:.1f}"])
        for row in rows:
            print(row)
        if not args.no_write:
            append_rows("Conv4 on CPU: one convolution", ["conv", "forward GFLOP/s", "input grad GFLOP/s", "weight grad GFLOP/s", "load (1 min)"], rows,
                        note="3x3, batch 160, 28x28, 64 -> 64 channels, float32; medians of interleaved windows (benchmarks/conv4_maml.py). "
                        "PyTorch: torch.nn.grad.conv2d_input / conv2d_weight, 2 threads.")

    runs, first = {}, {}
    run, first["runner"] = metax_runner(args.steps)
    runs["runner"] = run
    params = reference_init(jax.random.PRNGKey(0))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    for name, conv in (("reference (shifted conv)", shifted_conv), ("reference (xla conv)", xla_conv)):
        chunk = reference_chunk(conv, args.steps)
        state = {"carry": (params, zeros, zeros, jnp.float32(0)), "key": jax.random.PRNGKey(1)}
        start = time.perf_counter()
        chunk = chunk.lower(state["carry"], state["key"]).compile()
        first[name] = time.perf_counter() - start

        def run(chunk=chunk, state=state):
            state["key"], key = jax.random.split(state["key"])
            state["carry"] = jax.block_until_ready(chunk(state["carry"], key)[0])

        run()
        runs[name] = run
    torch_step = torch_step_fn()
    work = {name: args.steps for name in runs}
    if torch_step is not None:
        runs["torch"], first["torch"] = torch_step[0], torch_step[1]
        work["torch"] = 1
    times = {k: [] for k in runs}
    for _ in range(args.windows):
        for k, run in runs.items():
            start = time.perf_counter()
            run()
            times[k].append(work[k] / (time.perf_counter() - start))
    rates = {k: statistics.median(v) for k, v in times.items()}
    load_end = os.getloadavg()
    torch_rate = rates.get("torch", float("nan"))
    rows = []
    for name, rate in rates.items():
        rows.append([name, f"{rate:.2f}", f"{rate / torch_rate:.2f}", f"{rate / rates['reference (shifted conv)']:.2f}",
                     f"{first[name]:.1f}", f"{load[0]:.1f} / {load_end[0]:.1f}"])
        print(rows[-1])
    if not args.no_write:
        append_rows(
            "Conv4 on CPU: second-order MAML meta-step",
            ["path", "steps/s", "x torch", "x reference (shifted)", "first call / compile s", "load (1 min) start / end"],
            rows,
            note="Conv4 64 channels, 28x28x1, batch norm on batch statistics, 1 inner SGD step (0.4), 5-way 1-shot 15-query, "
            "meta-batch 2, Adam 1e-3; medians of interleaved windows (benchmarks/conv4_maml.py). JAX paths: compile time of the "
            f"{args.steps}-step chunk; torch: its first step. torch 2 threads.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
