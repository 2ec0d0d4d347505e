"""What the runner's compiled chunk costs beyond a plain `lax.scan` of `update`.

    python benchmarks/runner_overhead.py

The standard workload (benchmarks/standard_workload.py) at its cheapest settings, where
per-step overhead shows most. Four compiled loops of the same meta-steps, `chunk` steps per
call, windows interleaved:

- scan: `lax.scan` of sample-a-meta-batch + `learner.update`, nothing else (the ceiling);
- runner: `metax.experiment.loop.make_chunk`, the loop `metax run` uses (a `while_loop`
  with a dynamic trip count, every metric buffered per step, the watched metrics and the
  meta-parameters checked for non-finite values after every step);
- no hparams check: the runner's loop without the per-step check of the meta-parameters;
- packed metrics: the runner's loop with all metrics written as one vector per step.

Appends rows to RESULTS.md ("Runner loop overhead").
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import standard_workload as workload  # noqa: E402
from common import append_rows, interleaved_rates  # noqa: E402


def loops(learner, sample, meta_batch, keys, chunk, shapes, watch):
    from metax.data import sample_metabatch
    from metax.experiment import loop

    def step(meta_state, index):
        batch = sample_metabatch(jax.random.fold_in(keys.data, index), sample, meta_batch)
        return learner.update(jax.random.fold_in(keys.update, index), meta_state, batch)

    def while_chunk(write, buffers, check_hparams):
        def run(meta_state, start, n):
            def body(carry):
                i, meta_state, stacked, _ = carry
                meta_state, metrics = step(meta_state, start + i)
                finite = loop.all_finite(meta_state.hparams) if check_hparams else jnp.array(True)
                for name in watch:
                    finite = finite & jnp.all(jnp.isfinite(metrics[name]))
                return i + 1, meta_state, write(stacked, i, metrics), finite

            init = (jnp.int32(0), meta_state, buffers(), jnp.array(True))
            return jax.lax.while_loop(lambda c: (c[0] < n) & c[3], body, init)[1]

        return run

    per_metric = (
        lambda: jax.tree_util.tree_map(lambda s: jnp.zeros((chunk, *s.shape), s.dtype), shapes),
        lambda stacked, i, metrics: jax.tree_util.tree_map(lambda b, v: b.at[i].set(v), stacked, metrics),
    )
    names = sorted(shapes)
    packed = (
        lambda: jnp.zeros((chunk, len(names)), jnp.float32),
        lambda stacked, i, metrics: stacked.at[i].set(jnp.stack([metrics[k].astype(jnp.float32) for k in names])),
    )
    runner = loop.make_chunk(learner, sample, meta_batch, keys, chunk, watch, shapes)
    return {
        "scan": lambda m, s, n: jax.lax.scan(lambda c, i: step(c, i), m, s + jnp.arange(chunk))[0],
        "runner": lambda m, s, n: runner(m, s, n)[0],
        "no hparams check": while_chunk(per_metric[1], per_metric[0], False),
        "packed metrics": while_chunk(packed[1], packed[0], True),
    }


def measure(steps_inner, first_order, meta_batch=25, chunk=500, windows=7):
    import metax
    from metax.experiment import loop

    learner = workload.metax_learner(steps_inner, first_order)
    sample = metax.data.make_task_sampler("sinusoid", workload.SHOTS, workload.SHOTS)
    keys = loop.run_keys(0)
    meta_state = learner.reset(keys.reset, jax.jit(sample)(keys.data).train.x)
    batch = jax.eval_shape(lambda k: metax.data.sample_metabatch(k, sample, meta_batch), keys.data)
    shapes = jax.eval_shape(learner.update, keys.update, meta_state, batch)[1]
    runs, state = {}, {}
    for name, fn in loops(learner, sample, meta_batch, keys, chunk, shapes, ["loss_outer", "gradnorm_outer"]).items():
        compiled = jax.jit(fn).lower(meta_state, np.int32(0), np.int32(chunk)).compile()
        state[name] = compiled(meta_state, np.int32(0), np.int32(chunk))

        def run(name=name, compiled=compiled):
            state[name] = jax.block_until_ready(compiled(state[name], np.int32(0), np.int32(chunk)))

        runs[name] = run
    return interleaved_rates(runs, dict.fromkeys(runs, chunk), windows)


def main() -> int:
    rows = []
    load = os.getloadavg()[0]
    for steps_inner, first_order in ((1, True), (1, False), (5, True), (5, False)):
        rates = measure(steps_inner, first_order)
        label = f"{'FO' if first_order else 'SO'} K={steps_inner}"
        print(label, {k: f"{v:.0f} ({v / rates['scan']:.3f})" for k, v in rates.items()}, flush=True)
        rows.append([label, *(f"{rates[k]:.0f} ({rates[k] / rates['scan']:.3f})" for k in rates), f"{load:.1f}"])
    append_rows(
        "Runner loop overhead",
        ["workload (mb 25)", "scan steps/s", "runner (/ scan)", "no hparams check (/ scan)", "packed metrics (/ scan)", "load avg"],
        rows,
        note="`benchmarks/runner_overhead.py`: the runner's compiled chunk against a plain `lax.scan` of the same meta-steps, and two variants of the runner's loop; medians of 7 interleaved windows of 500 meta-steps.",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
