"""The standard workload against a pure-JAX reference of the same computation.

    python benchmarks/standard_workload.py                 # K = 1, 5, 20, 50; first and second order; mb 25
    python benchmarks/standard_workload.py --meta-batch 1024 --inner 5

MAML on `sinusoid` (MLP 40-40, 10 support / 10 query points, inner SGD lr 0.01, Adam 1e-3
outside, fresh tasks every step). Three paths, timed in the same run:

- reference: hand-written JAX with no metax import (parameters as arrays, the inner loop
  a `lax.scan`, `jax.grad` outside, Adam by hand), `chunk` meta-steps per compiled call
  with tasks drawn on the device;
- runner: the compiled chunk of `metax.experiment.train` (the same function the `metax`
  command runs), `chunk` meta-steps per call;
- per-step: `jax.jit(learner.update)` called once per meta-step, tasks drawn by a jitted
  sampler (what a user's own Python loop gets).

Each figure is the median meta-steps/s over timed windows after compilation, the windows
of the three paths interleaved (one of each in turn) so that the shared machine's load
changes hit all three alike. Appends
rows to RESULTS.md ("Standard workload").
"""

import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import append_rows, interleaved_rates, peak_memory_mib  # noqa: E402

HIDDEN = (40, 40)
SHOTS = 10
LR_INNER, LR_OUTER = 0.01, 1e-3


# -- the pure-JAX reference ---------------------------------------------------------------


def reference_init(key):
    sizes = (1, *HIDDEN, 1)
    params = []
    for key, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
        w = jax.random.truncated_normal(key, -2.0, 2.0, (fan_in, fan_out)) / math.sqrt(fan_in)
        params.append((w, jnp.zeros(fan_out)))
    return params


def forward(params, x):
    for i, (w, b) in enumerate(params):
        x = x @ w + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def mse(params, x, y):
    return jnp.mean(jnp.square(forward(params, x) - y))


def sample_task(key):
    k_amp, k_phase, k_x = jax.random.split(key, 3)
    amplitude = jax.random.uniform(k_amp, (), minval=0.1, maxval=5.0)
    phase = jax.random.uniform(k_phase, (), minval=0.0, maxval=math.pi)
    x = jax.random.uniform(k_x, (2 * SHOTS, 1), minval=-5.0, maxval=5.0)
    y = amplitude * jnp.sin(x - phase)
    return x[:SHOTS], y[:SHOTS], x[SHOTS:], y[SHOTS:]


def reference_chunk(steps_inner, first_order, meta_batch):
    def task_loss(init, task):
        x_s, y_s, x_q, y_q = task

        def inner(params, _):
            grads = jax.grad(mse)(params, x_s, y_s)
            if first_order:
                grads = jax.lax.stop_gradient(grads)
            return jax.tree_util.tree_map(lambda p, g: p - LR_INNER * g, params, grads), None

        adapted, _ = jax.lax.scan(inner, init, None, length=steps_inner)
        return mse(adapted, x_q, y_q)

    def meta_step(carry, index):
        params, m, v, count = carry
        keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(1), index), meta_batch)
        tasks = jax.vmap(sample_task)(keys)
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(jax.vmap(task_loss, (None, 0))(p, tasks)))(params)
        count = count + 1
        m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
        step = lambda p, m, v: p - LR_OUTER * (m / (1 - 0.9**count)) / (jnp.sqrt(v / (1 - 0.999**count)) + 1e-8)
        return (jax.tree_util.tree_map(step, params, m, v), m, v, count), loss

    def chunk(carry, start, n):
        return jax.lax.scan(meta_step, carry, start + jnp.arange(n))

    return chunk


# -- metax ----------------------------------------------------------------------------------


def metax_learner(steps_inner, first_order):
    import optax

    import metax

    module = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn(list(HIDDEN), 1), output_dim=1
    )
    return metax.learner.ModelAgnosticMetaLearning(
        module, None, steps_inner, optax.sgd(LR_INNER), optax.adam(LR_OUTER), first_order
    )


def measure(steps_inner, first_order, meta_batch, chunk, windows):
    import metax
    from metax.experiment import loop

    # Reference.
    ref_chunk = reference_chunk(steps_inner, first_order, meta_batch)
    params = reference_init(jax.random.PRNGKey(0))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry = (params, zeros, zeros, jnp.int32(0))
    fused = jax.jit(ref_chunk, static_argnums=2)
    start, cpu = time.perf_counter(), time.process_time()
    carry = jax.block_until_ready(fused(carry, 0, chunk))[0]
    ref_compile = (time.perf_counter() - start, time.process_time() - cpu)
    state = {"carry": carry}

    def run_reference():
        state["carry"] = jax.block_until_ready(fused(state["carry"], 0, chunk))[0]

    # The runner's compiled chunk.
    learner = metax_learner(steps_inner, first_order)
    sample = metax.data.make_task_sampler("sinusoid", SHOTS, SHOTS)
    keys = loop.run_keys(0)
    meta_state = learner.reset(keys.reset, jax.jit(sample)(keys.data).train.x)
    batch = jax.eval_shape(lambda k: metax.data.sample_metabatch(k, sample, meta_batch), keys.data)
    shapes = jax.eval_shape(learner.update, keys.update, meta_state, batch)[1]
    run_chunk = loop.make_chunk(learner, sample, meta_batch, keys, chunk, ["loss_outer", "gradnorm_outer"], shapes)
    start, cpu = time.perf_counter(), time.process_time()
    compiled = jax.jit(run_chunk, donate_argnums=0).lower(meta_state, np.int32(0), np.int32(1)).compile()
    runner_compile = (time.perf_counter() - start, time.process_time() - cpu)
    state["meta"] = compiled(meta_state, np.int32(0), np.int32(chunk))[0]

    def run_runner():
        state["meta"] = jax.block_until_ready(compiled(state["meta"], np.int32(0), np.int32(chunk))[0])

    # One jitted update per meta-step.
    update = jax.jit(learner.update)
    draw = jax.jit(lambda k: metax.data.sample_metabatch(k, sample, meta_batch))
    state["step"] = jax.block_until_ready(update(keys.update, state["meta"], draw(keys.data))[0])

    def run_per_step():
        meta = state["step"]
        for i in range(chunk):
            meta, _ = update(jax.random.fold_in(keys.update, i), meta, draw(jax.random.fold_in(keys.data, i)))
        state["step"] = jax.block_until_ready(meta)

    # Windows of the three paths interleaved: a change of load on a shared machine hits all three.
    runs = {"reference": run_reference, "runner": run_runner, "per_step": run_per_step}
    rates = interleaved_rates(runs, dict.fromkeys(runs, chunk), windows)
    return rates["reference"], rates["runner"], rates["per_step"], ref_compile, runner_compile


def seconds(wall_cpu) -> str:
    """`wall (cpu)`: on a shared machine the process's CPU seconds are the steadier figure
    (XLA compiles on one thread, so on an idle machine the two agree)."""
    return f"{wall_cpu[0]:.2f} ({wall_cpu[1]:.2f} cpu)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", default="1,5,20,50", help="comma list of inner-step counts K")
    parser.add_argument("--order", default="second,first", help="comma list of second / first")
    parser.add_argument("--meta-batch", type=int, default=25)
    parser.add_argument("--chunk", type=int, default=100, help="meta-steps per compiled call and per timed window")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    rows = []
    for order in args.order.split(","):
        for k in (int(v) for v in args.inner.split(",")):
            reference, runner, per_step, ref_compile, runner_compile = measure(
                k, order == "first", args.meta_batch, args.chunk, args.windows
            )
            row = [f"{'SO' if order == 'second' else 'FO'}-MAML K={k} mb={args.meta_batch}", f"{reference:.0f}", f"{runner:.0f}",
                   f"{runner / reference:.2f}", f"{per_step:.0f}", f"{per_step / runner:.2f}", seconds(runner_compile),
                   seconds(ref_compile)]
            print(" | ".join(row), flush=True)
            rows.append(row)
    if not args.no_record:
        append_rows(
            "Standard workload: runner vs pure-JAX reference",
            ["workload", "reference steps/s", "runner steps/s", "runner / reference", "per-step update steps/s",
             "per-step / runner", "runner compile s", "reference compile s"],
            [row + [] for row in rows],
            note="MAML on sinusoid, MLP 40-40, 10/10 shots, inner SGD 0.01, Adam 1e-3; medians of timed windows of "
            "`--chunk` meta-steps after compilation (`benchmarks/standard_workload.py`). Peak memory of the process: "
            f"{peak_memory_mib():.0f} MiB.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
