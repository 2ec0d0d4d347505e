"""Meta-steps/s of the runner with the meta-batch sharded over 1, 2 and 4 devices.

    python benchmarks/scaling.py                   # 4 forced CPU devices, mb 24 and 256
    python benchmarks/scaling.py --quick --no-record

Trains `configs/sinusoid-maml.yaml` (SO-MAML, MLP 40-40, K=5) through
`metax.experiment.train` exactly as `metax run ... --set train.devices=N` does, with
`train.devices` = 1, 2, 4 in turn (rounds interleaved so that load changes on a shared
machine hit every device count alike) and reports the median of the run summaries'
`meta_steps_per_second` (after compilation) and `compile_seconds`. It also checks that the
final meta-parameters of the sharded runs equal the single-device run's.

On a CPU the devices are forced (`XLA_FLAGS=--xla_force_host_platform_device_count=4`,
set here before JAX starts) and share the machine's cores: this measures what sharding
costs, not a speed-up. Appends rows to RESULTS.md ("Scaling over devices").
"""

import argparse
import os
import statistics
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from common import append_rows  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "sinusoid-maml.yaml")


def run(devices: int, meta_batch: int, steps: int, quick: bool) -> dict:
    from metax.experiment import build, load_config, train

    overrides = [f"train.meta_batch_size={meta_batch}", f"train.devices={devices}", f"train.steps={steps}"]
    if quick:
        overrides += ["model.hidden_dims=[8, 8]", "learner.steps_inner=1"]
    config = load_config(CONFIG, overrides)
    experiment = build(config)
    result = train(experiment.learner, experiment.task.sample_task, steps=steps, meta_batch_size=meta_batch,
                   seed=config.seed, eval_tasks=2, eval_batch_size=2, progress=False, devices=devices)
    summary = result.summary
    return {"rate": summary["meta_steps_per_second"], "compile": summary["compile_seconds"],
            "hparams": np.asarray(ravel_pytree(jax.device_get(result.meta_state.hparams))[0])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-batch", default="24,256", help="comma list (each divisible by 4)")
    parser.add_argument("--steps", type=int, default=1500, help="meta-steps per run at meta-batch 24 (scaled down for larger)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per device count (interleaved); the median counts")
    parser.add_argument("--quick", action="store_true", help="tiny model, 20 steps, one round (a smoke run)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    counts = [d for d in (1, 2, 4) if d <= len(jax.devices())]
    steps, rounds = (20, 1) if args.quick else (args.steps, args.rounds)
    rows = []
    for meta_batch in (int(v) for v in args.meta_batch.split(",")):
        results = {d: [] for d in counts}
        run_steps = steps if args.quick else max(100, steps * 24 // meta_batch)
        for _ in range(rounds):
            for d in counts:
                results[d].append(run(d, meta_batch, run_steps, args.quick))
        base = statistics.median(r["rate"] for r in results[1])
        for d in counts:
            rate = statistics.median(r["rate"] for r in results[d])
            compile_s = statistics.median(r["compile"] for r in results[d])
            gap = max(float(np.max(np.abs(r["hparams"] - results[1][0]["hparams"]))) for r in results[d])
            row = [f"{'quick: MLP 8-8 K=1' if args.quick else 'SO-MAML K=5 MLP 40-40'} mb={meta_batch}", d, f"{jax.devices()[0].platform} ({len(jax.devices())} forced)"
                   if jax.devices()[0].platform == "cpu" else jax.devices()[0].device_kind, run_steps, f"{rate:.0f}",
                   f"{rate / base:.2f}", f"{compile_s:.2f}", f"{gap:.1e}"]
            print(" | ".join(str(c) for c in row), flush=True)
            rows.append(row)
    if not args.no_record:
        append_rows(
            "Scaling over devices",
            ["workload", "devices", "device kind", "meta-steps per run", "meta-steps/s (median)", "vs 1 device",
             "compile s", "max |hparams - 1 device|"],
            rows,
            note="`benchmarks/scaling.py`: `metax.experiment.train` with `devices` = 1, 2, 4 (config "
            "sinusoid-maml.yaml, meta-batch overridden), rounds interleaved, medians of the summaries' "
            "meta-steps/s. Forced CPU devices share the same cores: the ratio is the sharding overhead, not a speed-up.",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
