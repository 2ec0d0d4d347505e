"""Shared by the benchmark scripts: the machine's description, timing windows, memory
readings, and appending dated rows to benchmarks/RESULTS.md.

These machines are shared and noisy: every script measures the quantities it compares in
the same run, reports the median over several timed windows, and records ratios.
"""

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import jax

from metax.utils.io import write_text_atomic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
    """`cpu model (N cores)` or the accelerator's name, plus the JAX version."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as handle:
                names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
            model = names[0] if names else model
        except OSError:
            pass
        return f"{model}, {os.cpu_count()} cores, jax {jax.__version__}"
    return f"{device.device_kind} ({device.platform}), jax {jax.__version__}"


def rss_mib() -> float:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def peak_memory_mib() -> float:
    """Peak device memory on an accelerator, else the process's peak resident memory (the
    runner's own measurement, `metax.experiment.loop.peak_memory_mib`, as one number)."""
    from metax.experiment.loop import peak_memory_mib as peaks

    peak = peaks()
    return peak.get("device", peak["host_rss"])


def median_rate(run: Callable[[], None], work: float, windows: int = 5) -> float:
    """Median of `work / seconds` over `windows` timed calls of `run` (which must block)."""
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run()
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


def interleaved_rates(runs: dict, work: dict, windows: int = 5) -> dict:
    """Median `work[name] / seconds` per named `run` (each must block), timing one window of
    every run in turn, `windows` times: on a shared machine a change of load then hits
    every path alike instead of whichever happened to be timed at that moment."""
    rates = {name: [] for name in runs}
    for _ in range(windows):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            rates[name].append(work[name] / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def append_rows(section: str, header: Sequence[str], rows: Sequence[Sequence], note: Optional[str] = None) -> None:
    """Appends rows (each prefixed with the date and machine) to `section` of RESULTS.md,
    creating the section and its header the first time."""
    header = ["date", "machine", *header]
    stamp = datetime.date.today().isoformat()
    lines = [f"| {stamp} | {machine()} | " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n\nRows are appended by the scripts in this folder (`python benchmarks/<script>.py`); each gives the date, the machine and medians over timed windows.\n"
    title = f"\n## {section}\n"
    if title not in text:
        text += title + (f"\n{note}\n" if note else "") + "\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        text += "\n".join(lines) + "\n"
    else:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        end = len(text) if end < 0 else end
        block = text[start:end].rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        text = text[:start] + block + text[end:]
    write_text_atomic(RESULTS, text)  # an interrupted benchmark never truncates the results file


def time_runner_and_per_step(learner, sample_task, meta_batch: int, windows: int = 3, target_seconds: float = 0.5,
                             seed: int = 0) -> dict:
    """Times a learner two ways on tasks from `sample_task`, in the same process:

    - runner: the compiled chunk of `metax.experiment.train` (`Trainer.compile`: compiled
      once, a `lax.while_loop` over meta-steps with tasks drawn on the device);
    - per-step: `jax.jit(learner.update)` called once per meta-step, each meta-batch drawn
      by a jitted sampler (what a user's own Python loop gets).

    A window holds about `target_seconds` of meta-steps (calibrated on the runner). Returns
    `{"runner", "per_step"}` (median meta-steps/s), `{"runner_compile", "per_step_compile"}`
    (seconds: lowering + compiling the chunk; the first `update` call including its
    compilation) and `"steps"` per window.
    """
    import numpy as np

    from metax.data import sample_metabatch
    from metax.experiment import Trainer, loop

    keys = loop.run_keys(seed)
    carried = isinstance(sample_task, jax.tree_util.Partial)  # data-carrying samplers are arguments
    draw = jax.jit(lambda k, s: sample_metabatch(k, s, meta_batch)) if carried else \
        jax.jit(lambda k, s: sample_metabatch(k, sample_task, meta_batch))
    sampler_arg = sample_task if carried else None

    # Runner: the chunk `metax run` compiles, one program for every chunk length; its
    # buffer (steps) bounds a window's length.
    trainer = Trainer(learner, sample_task, steps=loop.MAX_CHUNK, meta_batch_size=meta_batch, seed=seed, eval_tasks=2,
                      progress=False).compile()
    meta_state, compiled, buffer = trainer.meta_state, trainer.compiled, trainer.buffer
    out = {"runner_compile": trainer.compile_seconds}
    state = {"meta": jax.tree_util.tree_map(lambda x: x.copy() if hasattr(x, "copy") else x, meta_state)}
    for _ in range(2):  # the first call still pays one-time costs: calibrate on the second
        tick = time.perf_counter()
        state["meta"] = jax.block_until_ready(compiled(state["meta"], np.int32(0), np.int32(2))[0])
        per_step_s = (time.perf_counter() - tick) / 2
    steps = int(max(2, min(buffer, target_seconds / max(per_step_s, 1e-6))))
    out["steps"] = steps

    def run_runner():
        state["meta"] = jax.block_until_ready(compiled(state["meta"], np.int32(0), np.int32(steps))[0])


    # One jitted update per meta-step.
    update = jax.jit(learner.update)
    start = time.perf_counter()
    state["step"] = jax.block_until_ready(update(keys.update, state["meta"], draw(keys.data, sampler_arg))[0])
    out["per_step_compile"] = time.perf_counter() - start

    def run_per_step(steps=steps):
        meta = state["step"]
        for i in range(steps):
            meta, _ = update(jax.random.fold_in(keys.update, i), meta, draw(jax.random.fold_in(keys.data, i), sampler_arg))
        state["step"] = jax.block_until_ready(meta)

    run_per_step(2)  # warm: the eager key folding compiles on first use
    out.update(interleaved_rates({"runner": run_runner, "per_step": run_per_step}, {"runner": steps, "per_step": steps}, windows))
    return out
