"""Memory and time of the meta-gradient against the inner-loop length K.

    python benchmarks/remat_memory.py                      # the issue's workload, all K
    python benchmarks/remat_memory.py --inner 10,50 --no-record

Second-order MAML on `sinusoid` (MLP 256-256, 10 support / 10 query points, meta-batch 25,
inner SGD lr 0.01, Adam 1e-3 outside) with three settings of the shared loop's `remat`:
False (store every step), True (checkpoint each step alone) and "block" (checkpoint
blocks of ceil(sqrt(K)) steps); and, on the same workload, the learners that
differentiate at the inner loop's end point and so should stay flat in K: iMAML by
conjugate gradients (5 CG steps), recurrent backpropagation (5 Neumann steps), T1T2,
and equilibrium propagation (5 nudged steps); iMAML's pull toward the initialisation
(`reg_strength=1`) makes the initialisation learnable for them.

Memory is XLA's own accounting of the compiled `update` (`jax.jit(update).lower(...)
.compile().memory_analysis()`: temporaries + arguments + outputs - aliased), which needs
only compilation, so it is taken at full size for every K. On a GPU it is the buffer
assignment the device will allocate; on a CPU it is the same accounting (the process's
RSS would also count the Python runtime and XLA's compiler). Time is the median of
`--windows` timed `update` calls after a warm-up call, the variants taking turns window
by window (the machine is shared: a burst of load then hits all alike), on a meta-batch of
`--time-meta-batch` tasks and only for K <= `--time-max-k` (the plain loop at K=2000
would need 14 GiB). Appends rows to RESULTS.md and writes remat_memory.png.
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

from common import append_rows  # noqa: E402

HIDDEN = (256, 256)
SHOTS = 10
LR_INNER, LR_OUTER = 0.01, 1e-3
HERE = os.path.dirname(os.path.abspath(__file__))


def learners(steps_inner: int) -> dict:
    """name -> learner on the workload, for one K."""
    import optax

    import metax

    def module(reg_strength=None):
        return metax.module.LearnedInit(
            metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn(list(HIDDEN), 1),
            reg_strength=reg_strength, output_dim=1,
        )

    sgd, adam = optax.sgd(LR_INNER), optax.adam(LR_OUTER)
    maml = lambda remat: metax.learner.ModelAgnosticMetaLearning(module(), None, steps_inner, sgd, adam, False, remat=remat)
    return {
        "MAML SO, remat=False": maml(False),
        "MAML SO, remat=True (per step)": maml(True),
        'MAML SO, remat="block"': maml("block"),
        "iMAML CG": metax.learner.ConjugateGradient(module(1.0), None, steps_inner, 5, sgd, adam),
        "RBP": metax.learner.RecurrentBackpropagation(module(1.0), None, steps_inner, 5, sgd, adam, 0.01),
        "T1T2": metax.learner.T1T2(module(1.0), None, steps_inner, sgd, adam),
        "EqProp": metax.learner.EquilibriumPropagation(module(1.0), None, steps_inner, 5, sgd, sgd, adam, 0.1),
    }


def metabatch(tasks: int):
    import metax

    sample = metax.data.make_task_sampler("sinusoid", SHOTS, SHOTS)
    return jax.jit(lambda key: metax.data.sample_metabatch(key, sample, tasks))(jax.random.PRNGKey(0))


def compiled_update(learner, batch):
    meta_state = learner.reset(jax.random.PRNGKey(0), batch.train.x[0])
    start = time.perf_counter()
    compiled = jax.jit(learner.update).lower(jax.random.PRNGKey(1), meta_state, batch).compile()
    return compiled, meta_state, time.perf_counter() - start


def xla_mib(compiled) -> float:
    stats = compiled.memory_analysis()
    total = stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
    return total / 2**20


def interleaved_seconds(runs: dict, batch, windows: int) -> dict:
    """Median seconds per `update` call of each compiled learner in `runs` (name ->
    (compiled, meta_state)), after one warm-up call each. The windows take turns
    (A B C A B C ...), so a burst of load on the shared machine hits every variant alike."""
    states = {name: jax.block_until_ready(compiled(jax.random.PRNGKey(1), meta, batch)[0]) for name, (compiled, meta) in runs.items()}
    seconds = {name: [] for name in runs}
    for _ in range(windows):
        for name, (compiled, _) in runs.items():
            start = time.perf_counter()
            states[name] = jax.block_until_ready(compiled(jax.random.PRNGKey(1), states[name], batch)[0])
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def plot(results: dict, path: str, tasks: int, time_tasks: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in results.items():
        ks = sorted(points)
        style = "-o" if name.startswith("MAML") else "--s"
        ax_mem.plot(ks, [points[k]["mib"] for k in ks], style, label=name, markersize=4)
        timed = [k for k in ks if points[k].get("seconds") is not None]
        if timed:
            ax_time.plot(timed, [points[k]["seconds"] for k in timed], style, label=name, markersize=4)
    ax_mem.axhline(1024, color="grey", linewidth=0.8, linestyle=":")
    ax_mem.text(ax_mem.get_xlim()[1] / 1.1, 1100, "1 GiB", color="grey", fontsize=8, ha="right")
    for ax, label in ((ax_mem, "compiled update, XLA accounting (MiB)"), (ax_time, "seconds per meta-step")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("inner steps K")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_mem.set_title(f"memory (MLP 256-256, meta-batch {tasks})")
    ax_time.set_title(f"time ({jax.devices()[0].platform.upper()}, meta-batch {time_tasks})")
    ax_mem.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inner", default="10,50,200,500,2000", help="comma list of inner-step counts K")
    parser.add_argument("--meta-batch", type=int, default=25, help="tasks per meta-batch for the memory accounting")
    parser.add_argument("--time-meta-batch", type=int, default=25, help="tasks per meta-batch for the timing")
    parser.add_argument("--time-max-k", type=int, default=500, help="time only K up to this (0: no timing)")
    parser.add_argument("--time-only", default="MAML", help="time only learners whose name starts with this ('' for all)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md or plot")
    args = parser.parse_args(argv)

    load_start = os.getloadavg()[0]
    batch = metabatch(args.meta_batch)
    time_batch = batch if args.time_meta_batch == args.meta_batch else metabatch(args.time_meta_batch)
    results: dict = {}
    for k in (int(v) for v in args.inner.split(",")):
        timed = {}
        for name, learner in learners(k).items():
            compiled, meta_state, compile_s = compiled_update(learner, batch)
            results.setdefault(name, {})[k] = {"mib": xla_mib(compiled), "compile": compile_s, "seconds": None}
            if k <= args.time_max_k and name.startswith(args.time_only):
                if time_batch is not batch:
                    compiled, meta_state, _ = compiled_update(learner, time_batch)
                timed[name] = (compiled, meta_state)
            del compiled, meta_state
        for name, seconds in interleaved_seconds(timed, time_batch, args.windows).items():
            results[name][k]["seconds"] = seconds
        del timed
        for name in results:
            point = results[name][k]
            timing = f"{point['seconds']:.3f} s/step" if point["seconds"] is not None else "not timed"
            print(f"K={k:5d} {name:32s} {point['mib']:9.1f} MiB  compile {point['compile']:5.1f} s  {timing}", flush=True)
    load_end = os.getloadavg()[0]

    plain = results.get("MAML SO, remat=False", {})
    load = f"{load_start:.1f}-{load_end:.1f}"
    rows = []
    for name, points in results.items():
        for k, point in sorted(points.items()):
            base = plain.get(k)
            ratio_mib = f"{point['mib'] / base['mib']:.3f}" if base else "-"
            seconds = point["seconds"]
            ratio_s = f"{seconds / base['seconds']:.2f}" if seconds and base and base["seconds"] else "-"
            rows.append([name, k, f"{point['mib']:.1f}", ratio_mib, f"{seconds:.3f}" if seconds else "-", ratio_s,
                         args.time_meta_batch if seconds else "-", load])
    for k, target in ((500, "K=500 block <= 10% of plain at <= 1.3x the time"), (2000, "K=2000 block < 1 GiB")):
        block = results.get('MAML SO, remat="block"', {}).get(k)
        if block is None or k not in plain:
            continue
        if k == 500:
            t = block["seconds"] / plain[k]["seconds"] if block["seconds"] and plain[k]["seconds"] else None
            met = block["mib"] <= 0.1 * plain[k]["mib"] and (t is None or t <= 1.3)
            print(f"target {target}: memory {block['mib'] / plain[k]['mib']:.1%}, time "
                  f"{'not timed' if t is None else f'{t:.2f}x'}: {'met' if met else 'MISSED'}")
        else:
            print(f"target {target}: {block['mib']:.0f} MiB: {'met' if block['mib'] < 1024 else 'MISSED'}")
    if args.no_record:
        return 0
    append_rows(
        "Inner-loop memory and time against K (remat)",
        ["learner", "K", "XLA memory (MiB)", "/ plain", "s per meta-step", "time / plain", "timed meta-batch",
         "load avg (start-end)"],
        rows,
        note=(
            "SO-MAML on sinusoid, MLP 256-256, 10/10 shots, inner SGD 0.01, Adam 1e-3, and the end-point learners on "
            "the same workload (`benchmarks/remat_memory.py`). Memory: XLA's accounting of the compiled `update` "
            "(temporaries + arguments + outputs - aliased; on a CPU this is XLA's buffer assignment, not RSS), "
            f"meta-batch {args.meta_batch} at every K. Time: median of {args.windows} timed `update` calls after a "
            "warm-up, the variants taking turns window by window, on the meta-batch in its column ('-': not timed). Load: the machine's 1-minute load average "
            "at the start and end of the run (2 cores shared with other jobs)."
        ),
    )
    plot(results, os.path.join(HERE, "remat_memory.png"), args.meta_batch, args.time_meta_batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
