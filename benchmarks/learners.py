"""Every learner other than MAML: the runner's compiled chunk against one jitted `update` per step.

    python benchmarks/learners.py                      # meta-batch 25 and 1024, every learner
    python benchmarks/learners.py --meta-batch 25 --only reptile,evosax
    python benchmarks/learners.py --quick --no-record  # a smoke run: tiny, one window

Each learner is built from its config in `configs/` through the registry
(`metax.experiment.load_config` + `metax.experiment.build`), i.e. exactly what
`metax run configs/<name>.yaml` trains, with only the meta-batch overridden. At meta-batch
1024 the model is shrunk to MLP 16-16 and every inner loop (free, nudged, CG, RBP) to 5
steps (`LARGE_OVERRIDES`), so that a window fits on a shared 2-core CPU.

Two paths, timed in the same process (`common.time_runner_and_per_step`): the runner's
compiled chunk (many meta-steps per call, tasks drawn on the device) and a Python loop
calling `jax.jit(learner.update)` once per meta-step with a jitted sampler. Target: the
per-step path >= 0.9x the fused one on CPU. Appends rows to RESULTS.md ("Learners").
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import append_rows, peak_memory_mib, time_runner_and_per_step  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

# Learner label -> config file (sinusoid regression, 10 support / 10 query points).
LEARNERS = {
    "reptile": "sinusoid-reptile.yaml",
    "buffered_reptile": "sinusoid-buffered-reptile.yaml",
    "eqprop": "sinusoid-eqprop.yaml",
    "symmetric_eqprop": "sinusoid-symmetric-eqprop.yaml",
    "imaml_cg": "sinusoid-imaml-cg.yaml",
    "rbp": "sinusoid-anil-rbp.yaml",
    "t1t2": "sinusoid-imaml-t1t2.yaml",
    "evosax": "sinusoid-evosax.yaml",
    "learned_kernel": "sinusoid-learned-kernel.yaml",
    "meta_sgd": "sinusoid-metasgd.yaml",
}

# The loop lengths each learner has, shortened at meta-batch 1024.
STEP_KEYS = ("steps_inner", "steps_nudged", "steps_cg", "steps_rbp")


def overrides_for(path: str, meta_batch: int, quick: bool) -> list[str]:
    from metax.experiment.schema import read_yaml

    data, _ = read_yaml(path)
    sets = [f"train.meta_batch_size={meta_batch}"]
    if meta_batch > 64 or quick:
        sets.append("model.hidden_dims=[8, 8]" if quick else "model.hidden_dims=[16, 16]")
        cap = 1 if quick else 5
        sets += [f"learner.{key}={min(cap, data['learner'][key])}" for key in STEP_KEYS if key in data["learner"]]
        if quick and "evosax_kwargs" in data["learner"]:
            sets.append("learner.evosax_kwargs.population_size=4")
    return sets


def describe(experiment) -> str:
    learner = experiment.config.learner
    steps = "/".join(f"{key.split('_')[1]} {learner[key]}" for key in STEP_KEYS if key in learner)
    hidden = "-".join(str(h) for h in experiment.config.model.get("hidden_dims", []))
    return f"MLP {hidden}, {steps}"


def measure(label: str, meta_batch: int, windows: int, quick: bool) -> list:
    from metax.experiment import build, load_config

    path = os.path.join(CONFIGS, LEARNERS[label])
    config = load_config(path, overrides_for(path, meta_batch, quick))
    experiment = build(config)
    timing = time_runner_and_per_step(experiment.learner, experiment.task.sample_task, meta_batch, windows,
                                      target_seconds=0.05 if quick else 0.5)
    ratio = timing["per_step"] / timing["runner"]
    return [
        f"{label} ({LEARNERS[label]})", describe(experiment), meta_batch, f"{timing['runner']:.1f}",
        f"{timing['per_step']:.1f}", f"{ratio:.2f}", "met" if ratio >= 0.9 else "MISSED",
        f"{timing['runner_compile']:.2f}", f"{timing['per_step_compile']:.2f}", timing["steps"],
    ]


def profile(label: str, meta_batch: int, steps: int = 300, windows: int = 5) -> dict:
    """Where a per-step loop's time goes: milliseconds per step of the whole loop, of the
    jitted `update` alone (pre-drawn batch, pre-folded keys), of the jitted sampler alone,
    of the two eager `fold_in` calls alone, and of one compiled runner step."""
    import statistics
    import time

    import jax

    from common import time_runner_and_per_step
    from metax.data import sample_metabatch
    from metax.experiment import build, load_config, loop

    path = os.path.join(CONFIGS, LEARNERS[label])
    experiment = build(load_config(path, overrides_for(path, meta_batch, False)))
    learner, sample = experiment.learner, experiment.task.sample_task
    keys = loop.run_keys(0)
    draw = jax.jit(lambda k: sample_metabatch(k, sample, meta_batch))
    update = jax.jit(learner.update)
    meta = learner.reset(keys.reset, jax.jit(sample)(keys.data).train.x)
    batch = draw(keys.data)
    meta = jax.block_until_ready(update(keys.update, meta, batch)[0])
    folded = [jax.random.fold_in(keys.update, i) for i in range(steps)]

    def ms(run):
        times = []
        for _ in range(windows):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3 / steps)
        return statistics.median(times)

    def update_only():
        state = meta
        for key in folded:
            state, _ = update(key, state, batch)
        jax.block_until_ready(state)

    def draw_only():
        for key in folded:
            out = draw(key)
        jax.block_until_ready(out)

    def fold_only():
        for i in range(steps):
            out = (jax.random.fold_in(keys.update, i), jax.random.fold_in(keys.data, i))
        jax.block_until_ready(out)

    update_only(), draw_only(), fold_only()
    timing = time_runner_and_per_step(learner, sample, meta_batch, windows)
    return {"per-step loop": 1e3 / timing["per_step"], "update alone": ms(update_only), "sampler alone": ms(draw_only),
            "two eager fold_in": ms(fold_only), "runner (per step)": 1e3 / timing["runner"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", default="25,1024", help="comma list of meta-batch sizes")
    parser.add_argument("--only", default=",".join(LEARNERS), help=f"comma list of: {', '.join(LEARNERS)}")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny models, 1-step loops, one short window (a smoke run)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    parser.add_argument("--profile", action="store_true", help="split each --only learner's per-step time into its parts")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only.split(",") if name not in LEARNERS]
    if unknown:
        parser.error(f"--only: unknown learner(s) {unknown}; choose from {', '.join(LEARNERS)}.")
    windows = 1 if args.quick else args.windows
    if args.profile:
        for meta_batch in (int(v) for v in args.meta_batch.split(",")):
            for label in args.only.split(","):
                parts = profile(label, meta_batch)
                print(f"{label} mb={meta_batch}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in parts.items()), flush=True)
        return 0
    rows = []
    for meta_batch in (int(v) for v in args.meta_batch.split(",")):
        for label in args.only.split(","):
            row = measure(label, meta_batch, windows, args.quick)
            print(" | ".join(str(c) for c in row), flush=True)
            rows.append(row)
    if not args.no_record:
        append_rows(
            "Learners: runner chunk vs one jitted update per step",
            ["learner (config)", "model, loops", "meta-batch", "runner steps/s", "per-step steps/s",
             "per-step / runner", "target >= 0.9", "runner compile s", "per-step compile s", "steps per window"],
            rows,
            note="Each learner built from its config through the registry (`benchmarks/learners.py`); at meta-batch "
            "1024 MLP 16-16 and every loop capped at 5 steps. Median meta-steps/s over timed windows after "
            f"compilation. Peak RSS of the process: {peak_memory_mib():.0f} MiB.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
