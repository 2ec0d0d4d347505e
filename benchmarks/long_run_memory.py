"""Long runs keep constant memory: 20,000 meta-steps of the standard workload through the
runner, resident memory sampled as it goes; after warm-up it must stay within 5%.

    python benchmarks/long_run_memory.py [--steps 20000]

Appends a row to RESULTS.md ("Long run: resident memory") and exits 1 if the target is missed.
"""

import argparse
import os
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import optax  # noqa: E402

import metax  # noqa: E402
from common import append_rows, rss_mib  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--warmup", type=float, default=1 / 3, help="fraction of the run (time) treated as warm-up")
    args = parser.parse_args(argv)
    module = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn([40, 40], 1), output_dim=1
    )
    learner = metax.learner.ModelAgnosticMetaLearning(module, None, 5, optax.sgd(0.01), optax.adam(1e-3))
    sample_task = metax.data.make_task_sampler("sinusoid", 10, 10)
    samples, done = [], threading.Event()

    def watch():
        while not done.is_set():
            samples.append((time.perf_counter(), rss_mib()))
            time.sleep(0.25)

    thread = threading.Thread(target=watch, daemon=True)
    start = time.perf_counter()
    thread.start()
    with tempfile.TemporaryDirectory() as out:
        result = metax.experiment.train(
            learner, sample_task, steps=args.steps, meta_batch_size=25, eval_tasks=100, eval_every=args.steps // 10,
            checkpoint_every=args.steps // 10, out=out, progress=False, plots=False,
        )
    done.set()
    thread.join()
    seconds = time.perf_counter() - start
    times = np.array([t - start for t, _ in samples])
    rss = np.array([r for _, r in samples])
    settled = rss[times >= args.warmup * seconds]
    spread = (settled.max() - settled.min()) / settled.min()
    print(f"{args.steps} meta-steps in {seconds:.0f} s; RSS after warm-up {settled.min():.0f}-{settled.max():.0f} MiB "
          f"(spread {100 * spread:.1f}%, first sample {rss[0]:.0f} MiB)")
    append_rows(
        "Long run: resident memory",
        ["meta-steps", "seconds", "RSS after warm-up (MiB)", "spread", "target <= 5%"],
        [[args.steps, f"{seconds:.0f}", f"{settled.min():.0f}-{settled.max():.0f}", f"{100 * spread:.1f}%", "met" if spread <= 0.05 else "MISSED"]],
        note="Standard workload (SO-MAML, sinusoid, MLP 40-40, meta-batch 25, K=5) through `metax.experiment.train` "
        "with evaluation and checkpoints every 10% of the run; RSS sampled every 0.25 s, the first third of the run "
        "counted as warm-up.",
    )
    del result
    return 0 if spread <= 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
