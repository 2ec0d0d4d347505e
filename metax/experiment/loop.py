"""The one training loop: many meta-steps per compiled call, tasks drawn on the device.

`train` meta-trains any learner on any task sampler. Each compiled call runs a chunk of
meta-steps as one `lax.while_loop` whose trip count is an argument, so a single
compilation serves every chunk length: the loop picks lengths that take about half a
second (or `chunk` steps), stops exactly at evaluation and checkpoint steps, and never
recompiles. Inside a step the meta-batch is drawn from keys folded from the step index,
so the data stream's position is the step and a resumed run sees the same tasks. Between
chunks the host writes metrics (`metrics.jsonl` / `metrics.csv`), evaluates the fixed
held-out tasks every `eval_every` steps (`eval.jsonl`), checkpoints atomically every
`checkpoint_every` steps, and updates a progress bar. At the end it writes
`summary.json` (held-out metrics with 95% intervals, meta-steps/s after compilation,
compile seconds, peak memory), the per-task scores (`eval_final.npz`) and plots.

A step whose watched metrics (the outer loss and meta-gradient norm by default) or
hparams are not finite ends the chunk there; `train` raises `RunError` naming the step,
the metric and the last good checkpoint, which it never overwrites.
"""

import functools
import math
import os
import platform
import resource
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from metax.data import MetaDataset, sample_metabatch
from metax.experiment import checkpoint as ckpt
from metax.experiment.errors import ConfigError, RunError
from metax.experiment.io import save_npz_atomic, write_json_atomic
from metax.experiment.signals import Interrupted, StopRequests
from metax.experiment.stats import format_interval, interval
from metax.experiment.writers import MetricsWriter
from metax.learner.base import MetaLearner, MetaLearnerState
from metax.parallel import task_mesh

TARGET_SECONDS = 0.5  # wall time of one compiled chunk when `chunk` is not set
MAX_CHUNK = 4096  # longest chunk (the length of the per-step metric buffers)


class TrainResult(NamedTuple):
    """What `train` returns.

    Example:
      >>> metax.experiment.TrainResult._fields
      ('meta_state', 'history', 'evals', 'summary', 'per_task')
    """

    meta_state: MetaLearnerState  # after the last meta-step
    history: dict[str, np.ndarray]  # per meta-step metrics of this call, `history["step"]` the indices
    evals: list[dict]  # held-out evaluations of this call: {"step", metric: {"mean", "ci95", "n"}}
    summary: dict  # what summary.json holds
    per_task: dict[str, np.ndarray]  # the final held-out scores, one per task


class Keys(NamedTuple):
    reset: jax.Array
    data: jax.Array
    update: jax.Array
    eval_tasks: jax.Array
    eval_adapt: jax.Array


def run_keys(seed: int) -> Keys:
    """The run's PRNG keys, all derived from the seed."""
    reset, data, update, held_out = jax.random.split(jax.random.PRNGKey(seed), 4)
    eval_tasks, eval_adapt = jax.random.split(held_out)
    return Keys(reset, data, update, eval_tasks, eval_adapt)


def _draw(sample_task: Callable, key: jax.Array, batch: Optional[int] = None) -> MetaDataset:
    """One task (or a meta-batch of `batch`), compiled; a sampler carrying its data as
    pytree leaves (`jax.tree_util.Partial`) is passed in rather than baked in."""
    draw = (lambda k, s: s(k)) if batch is None else (lambda k, s: sample_metabatch(k, s, batch))
    if isinstance(sample_task, jax.tree_util.Partial):
        return jax.jit(draw)(key, sample_task)
    return jax.jit(lambda k: draw(k, sample_task))(key)


def sample_held_out(key: jax.Array, sample_task: Callable, num_tasks: int, batch_size: int) -> MetaDataset:
    """`num_tasks` held-out tasks, drawn in batches of `batch_size` with keys folded from the
    batch index: the first tasks are the same whatever `num_tasks` is."""
    draw = lambda k: _draw(sample_task, k, batch_size)
    batches = [draw(jax.random.fold_in(key, b)) for b in range(math.ceil(num_tasks / batch_size))]
    return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves)[:num_tasks], *batches)


class HeldOutEvaluator:
    """Scores a fixed set of held-out tasks: per-task metrics after `steps` adaptation
    steps, `batch_size` tasks per compiled call (the last batch padded by wrapping).

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.01), optax.adam(1e-3))
      >>> evaluate = metax.experiment.HeldOutEvaluator(learner, metabatch, steps=1, key=rng)
      >>> evaluate.num_tasks  # `evaluate(meta_state)` then gives one score per task
      2
    """

    def __init__(self, learner: MetaLearner, tasks: MetaDataset, steps: int, key: jax.Array, batch_size: int = 250) -> None:
        self.tasks = tasks
        self.num_tasks = jax.tree_util.tree_leaves(tasks)[0].shape[0]
        self.batch_size = min(batch_size, self.num_tasks)
        self.key = key
        self._eval = jax.jit(functools.partial(learner.eval, steps=steps, per_task=True))

    def __call__(self, meta_state: MetaLearnerState) -> dict[str, np.ndarray]:
        """`{"loss_outer": (tasks,), ...}`: every per-task scalar metric."""
        leaf = jax.tree_util.tree_leaves(meta_state)[0]
        if len(getattr(getattr(leaf, "sharding", None), "device_set", ())) > 1:
            meta_state = jax.device_get(meta_state)  # replicated over a mesh: score on one device
        results = []
        for b, start in enumerate(range(0, self.num_tasks, self.batch_size)):
            index = np.arange(start, start + self.batch_size) % self.num_tasks
            batch = jax.tree_util.tree_map(lambda leaf: leaf[index], self.tasks)
            _, metrics = self._eval(jax.random.fold_in(self.key, b), meta_state, batch)
            results.append(jax.device_get(metrics))
        return {
            name: np.concatenate([r[name] for r in results])[: self.num_tasks]
            for name in results[0]
            if np.ndim(results[0][name]) == 1
        }


def _summarise(per_task: dict[str, np.ndarray], groups: Optional[tuple], labels: Optional[np.ndarray]) -> dict:
    summary = {name: interval(values) for name, values in per_task.items()}
    if groups is not None and labels is not None:
        _, names = groups
        summary["groups"] = {
            group: {name: interval(values[labels == g]) for name, values in per_task.items()}
            for g, group in enumerate(names)
        }
    return summary


def peak_memory_mib() -> dict:
    """Peak resident memory of this process (CPU) and, on accelerators, device memory."""
    peak = {"host_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    device = jax.local_devices()[0]  # in a multi-process run jax.devices()[0] may be another host's
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        peak["device"] = stats["peak_bytes_in_use"] / 2**20
    return peak


def _watched(metrics: dict, check_finite: Optional[Sequence[str]]) -> list[str]:
    if check_finite is not None:
        missing = [name for name in check_finite if name not in metrics]
        if missing:
            raise ConfigError(
                f"train.check_finite names {missing}, which this learner does not report; it reports: {', '.join(sorted(metrics))}."
            )
        return list(check_finite)
    if "gradnorm_outer" in metrics:
        return [name for name in ("loss_outer", "gradnorm_outer") if name in metrics]
    # Evolution strategies: one diverging member makes the population mean inf; the best does not.
    return [name for name in ("fitness_best",) if name in metrics]


def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_chunk(
    learner: MetaLearner,
    sample_task: Callable,
    meta_batch_size: int,
    keys: Keys,
    buffer: int,
    watch: Sequence[str],
    metric_shapes: dict,
    task_sharding: Optional[jax.sharding.Sharding] = None,
    update: Optional[Callable] = None,
) -> Callable:
    """`chunk(meta_state, start, n, sampler) -> (meta_state, metrics, done, finite)`: up to `n`
    meta-steps from step `start` in one `lax.while_loop`; `metrics` (shaped like
    `metric_shapes`, one step's metrics) are stacked `(buffer, ...)` with the first `done`
    rows filled; it stops early after a step whose watched metrics or hparams are not
    finite (`finite` is then False). With `task_sharding`, every meta-batch is split
    over devices along its task axis. `sampler` defaults to `sample_task`; a sampler that
    carries its data as pytree leaves (a `jax.tree_util.Partial`, e.g. few-shot tasks)
    is passed as an argument instead, so the data is not compiled in as a constant.
    `update` replaces `learner.update`: `jax.jit(learner.update)`, already traced for
    `metric_shapes` by `jax.eval_shape`, is not traced again (its trace is cached)."""
    update = learner.update if update is None else update

    def step(meta_state, index, sampler):
        metabatch = sample_metabatch(jax.random.fold_in(keys.data, index), sampler, meta_batch_size)
        if task_sharding is not None:  # each device adapts its share of the tasks
            metabatch = jax.lax.with_sharding_constraint(metabatch, task_sharding)
        return update(jax.random.fold_in(keys.update, index), meta_state, metabatch)

    def chunk(meta_state, start, n, sampler=None):
        sampler = sample_task if sampler is None else sampler
        stacked = jax.tree_util.tree_map(lambda s: jnp.zeros((buffer, *s.shape), s.dtype), metric_shapes)

        def cond(carry):
            i, _, _, finite = carry
            return (i < n) & finite

        def body(carry):
            i, meta_state, stacked, _ = carry
            meta_state, metrics = step(meta_state, start + i, sampler)
            finite = _all_finite(meta_state.hparams)
            for name in watch:
                finite = finite & jnp.all(jnp.isfinite(metrics[name]))
            stacked = jax.tree_util.tree_map(lambda buf, value: buf.at[i].set(value), stacked, metrics)
            return i + 1, meta_state, stacked, finite

        done, meta_state, stacked, finite = jax.lax.while_loop(
            cond, body, (jnp.int32(0), meta_state, stacked, jnp.array(True))
        )
        return meta_state, stacked, done, finite

    return chunk


def _mesh(devices: int, meta_batch_size: int):
    """`(mesh, replicated, by_task)` for `devices` devices, or Nones for one (see
    `metax.parallel.task_mesh`); bad counts become ConfigErrors."""
    try:
        found = task_mesh(devices, meta_batch_size)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return (None, None, None) if found is None else found


def _next_stop(step: int, steps: int, *periods: Optional[int]) -> int:
    stops = [steps] + [(step // p + 1) * p for p in periods if p]
    return min(stops)


def train(
    learner: MetaLearner,
    sample_task: Callable,
    *,
    steps: int,
    meta_batch_size: int = 25,
    seed: int = 0,
    eval_sample_task: Optional[Callable] = None,
    eval_tasks: Union[int, MetaDataset] = 500,
    eval_steps: Optional[int] = None,
    eval_every: Optional[int] = None,
    eval_batch_size: int = 250,
    out: Optional[str] = None,
    chunk: Optional[int] = None,
    checkpoint_every: Optional[int] = None,
    keep_checkpoints: int = 3,
    resume: bool = False,
    check_finite: Optional[Sequence[str]] = None,
    progress: bool = True,
    name: Optional[str] = None,
    groups: Optional[tuple[str, tuple[str, ...]]] = None,
    fingerprint: Union[None, str, Sequence[str]] = None,
    plots: bool = True,
    plot_tasks: int = 4,
    debug_nans: bool = False,
    devices: int = 1,
) -> TrainResult:
    """Meta-trains `learner` on tasks from `sample_task`, evaluating on fixed held-out tasks.

    Args:
      learner: any `MetaLearner`.
      sample_task: `sample_task(key) -> MetaDataset`, drawn on the device every step.
      steps: meta-steps in all (a resumed run continues up to it).
      meta_batch_size: tasks per meta-step.
      seed: derives every key: initial hparams, the task stream, the update keys and the
        held-out tasks (`run_keys`).
      eval_sample_task: sampler of held-out tasks (default `sample_task`; e.g. the same
        family with more query points, or held-out classes).
      eval_tasks: how many held-out tasks (>= 2), or the tasks themselves.
      eval_steps: adaptation steps at evaluation (default `learner.steps_inner`).
      eval_every: evaluate every this many meta-steps (always before the first and after
        the last).
      eval_batch_size: held-out tasks per compiled evaluation call.
      out: run folder for metrics, checkpoints, summary and plots (None: write nothing).
      chunk: meta-steps per compiled call (default: about half a second's worth).
      checkpoint_every: checkpoint period in meta-steps (always at the end with `out`).
      keep_checkpoints: how many of the newest checkpoints to keep.
      resume: continue from the newest checkpoint in `out/checkpoints`.
      check_finite: metrics that must stay finite (default: `loss_outer` and
        `gradnorm_outer`, or `fitness_best` for evolution strategies); hparams always.
      progress: show a progress bar.
      name: the run's name (progress bar, summary).
      groups: `(info_key, names)`: also summarise held-out scores per group.
      fingerprint: a string identifying the configuration (or several accepted ones, the
        first written); a checkpoint written under another fingerprint is refused on resume.
      plots: draw the learning curves (and, for 1-D regression, adapted fits) into `out`.
      plot_tasks: held-out tasks drawn in the fit plot.
      debug_nans: run step by step with JAX's NaN/Inf checks; at the first bad step,
        rerun it op by op and name the operation (slow: resume near the failure).
      devices: split every meta-batch over this many devices (a mesh with one task axis;
        the meta-state is replicated). With `jax.distributed` initialised, the devices
        of every process count, and only process 0 writes files.

    Returns:
      A `TrainResult`.

    Raises:
      RunError: when a watched metric or the hparams turn non-finite.
      ConfigError: for bad arguments, or a checkpoint that does not fit on resume.

    Its runnable example, a trained and a resumed run, is the quick start guide's
    (docs/quickstart.rst), so the examples compile one training loop, not two.
    """
    for label, value in (("steps", steps), ("meta_batch_size", meta_batch_size), ("eval_batch_size", eval_batch_size),
                         ("keep_checkpoints", keep_checkpoints)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive int, got {value!r}.")
    for label, value in (("chunk", chunk), ("eval_every", eval_every), ("checkpoint_every", checkpoint_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{label} must be a positive int or None, got {value!r}.")
    if resume and out is None:
        raise ConfigError("resume=True needs the run folder `out` that holds the checkpoints.")
    name = name or type(learner).__name__
    eval_steps = learner.steps_inner if eval_steps is None else eval_steps
    keys = run_keys(seed)
    eval_sample_task = sample_task if eval_sample_task is None else eval_sample_task

    # Held-out tasks: fixed for the whole run (and for every resume of it).
    if isinstance(eval_tasks, MetaDataset):
        held_out = eval_tasks
    else:
        if isinstance(eval_tasks, bool) or not isinstance(eval_tasks, int) or eval_tasks < 2:
            raise ConfigError(f"eval_tasks must be an int >= 2 (for an interval) or a MetaDataset, got {eval_tasks!r}.")
        held_out = sample_held_out(keys.eval_tasks, eval_sample_task, eval_tasks, eval_batch_size)
    labels = None
    if groups is not None:
        labels = np.asarray(held_out.test.info[groups[0]])[:, 0]
    run_eval = HeldOutEvaluator(learner, held_out, eval_steps, keys.eval_adapt, eval_batch_size)

    mesh, replicated, by_task = _mesh(devices, meta_batch_size)
    primary = jax.process_index() == 0  # the process that writes files and shows progress
    # A sampler that carries its data (a Partial) is an argument of compiled functions.
    sampler_arg = sample_task if isinstance(sample_task, jax.tree_util.Partial) else None
    sample_input = _draw(sample_task, keys.data).train.x
    meta_state = learner.reset(keys.reset, sample_input)
    start = 0
    checkpoints = os.path.join(out, "checkpoints") if out is not None else None
    if out is not None and primary:
        os.makedirs(checkpoints, exist_ok=True)
        ckpt.clean_temporary(checkpoints)
    fingerprints = (fingerprint,) if isinstance(fingerprint, str) else tuple(fingerprint or ())
    initial_eval = None  # the held-out scores before meta-training ("before" in summaries)
    if resume:
        # The newest intact checkpoint; damaged newer ones are moved aside by the writer.
        restored = ckpt.restore_latest(checkpoints, meta_state, fingerprints=fingerprints, set_aside=primary)
        if restored is not None:
            meta_state, record = jax.device_put(restored.tree), restored.record
            start = record["step"]
            initial_eval = record.get("held_out_initial")
            if start > steps:
                raise ConfigError(f"the checkpoint is at step {start}, beyond steps={steps}; raise steps to continue.")

    # Compile once: every chunk length runs the same program.
    batch_shape = jax.eval_shape(lambda k: sample_metabatch(k, sample_task, meta_batch_size), keys.data)
    # Traced once: the chunk's call of the same jitted update reuses this trace.
    update = jax.jit(learner.update)
    probe = jax.eval_shape(update, keys.update, meta_state, batch_shape)[1]
    watch = _watched(probe, check_finite)
    buffer = chunk if chunk is not None else min(steps, MAX_CHUNK)
    run_chunk = make_chunk(learner, sample_task, meta_batch_size, keys, buffer, watch, probe, by_task, update)
    if mesh is not None:
        meta_state = jax.device_put(meta_state, replicated)
    compile_start = time.perf_counter()
    if debug_nans:
        compiled = _DebugNaNSteps(learner, sample_task, meta_batch_size, keys, probe, name)
    else:
        sharded = {} if mesh is None else {"out_shardings": replicated}
        lowered = jax.jit(run_chunk, donate_argnums=0, **sharded).lower(meta_state, np.int32(0), np.int32(1), sampler_arg)
        executable = lowered.compile()

        def compiled(meta_state, start, n):
            return executable(meta_state, start, n, sampler_arg)
    compile_seconds = time.perf_counter() - compile_start

    writes = out is not None and primary
    writer = MetricsWriter(out, keep_before=start) if writes else None
    # The evaluation at the resume step was written before its checkpoint: keep it.
    eval_writer = MetricsWriter(out, "eval", keep_before=start + 1 if start < steps else start) if writes else None
    history: dict[str, list] = {}
    evals: list[dict] = []
    last_checkpoint = ckpt.latest_checkpoint(checkpoints) if out is not None else None

    def record_eval(step, meta_state, per_task=None):
        per_task = run_eval(meta_state) if per_task is None else per_task
        summary = {"step": step, **_summarise(per_task, None, None)}
        evals.append(summary)
        if eval_writer is not None:
            row = {"step": step}
            for metric, entry in summary.items():
                if metric != "step":
                    row[metric], row[f"{metric}_ci95"] = entry["mean"], entry["ci95"]
            eval_writer.write([row])
        return summary

    def save(step, meta_state):
        for metric_writer in (writer, eval_writer):
            metric_writer.sync()  # every row up to the checkpoint is durable before it is
        record = {"fingerprint": fingerprints[0] if fingerprints else None, "seed": seed, "name": name,
                  "data_key": np.asarray(keys.data).tolist(), "held_out_initial": initial_eval}
        return ckpt.save_checkpoint(checkpoints, step, meta_state, record, keep_checkpoints)

    bar = _progress(progress and primary, steps, start, name)
    per_step_seconds, train_seconds, steps_run = None, 0.0, 0
    step = start
    saved_step = start if last_checkpoint is not None else None
    signals = StopRequests()
    try:
        signals.__enter__()
        if step == 0 and initial_eval is None:  # (a run stopped at step 0 has it in its checkpoint)
            first = record_eval(0, meta_state)
            initial_eval = {k: v for k, v in first.items() if k != "step"}
            bar.set_postfix_str(f"held-out {_headline(first)}")
        while step < steps:
            if signals.requested:  # between compiled calls: nothing is in flight
                path = save(step, meta_state) if writes and saved_step != step else last_checkpoint
                raise Interrupted(signals.signum, step, path)
            stop = _next_stop(step, steps, eval_every, checkpoint_every if out is not None else None)
            if chunk is not None:
                n = min(chunk, stop - step)
            else:
                guess = 2 if per_step_seconds is None else int(TARGET_SECONDS / max(per_step_seconds, 1e-9))
                n = max(1, min(guess, buffer, stop - step))
            tick = time.perf_counter()
            meta_state, stacked, done, finite = compiled(meta_state, np.int32(step), np.int32(n))
            done = int(done)
            stacked = jax.device_get(stacked)
            seconds = time.perf_counter() - tick
            train_seconds += seconds
            steps_run += done
            measured = seconds / max(done, 1)
            per_step_seconds = measured if per_step_seconds is None else 0.5 * (per_step_seconds + measured)

            rows = _rows(stacked, step, done)
            for key, values in _columns(stacked, step, done).items():
                history.setdefault(key, []).append(values)
            if writer is not None:
                writer.write(rows)
            step += done
            bar.update(done)
            if not bool(finite):
                _raise_nonfinite(rows[-1], watch, name, learner, last_checkpoint)
            bar.set_postfix_str(_postfix(rows, evals))
            if eval_every is not None and step % eval_every == 0 and step < steps:
                record_eval(step, meta_state)
                bar.set_postfix_str(_postfix(rows, evals))
            if writes and checkpoint_every is not None and step % checkpoint_every == 0 and step < steps:
                last_checkpoint, saved_step = save(step, meta_state), step
        if signals.requested:
            path = save(step, meta_state) if writes and saved_step != step else last_checkpoint
            raise Interrupted(signals.signum, step, path)
    finally:
        signals.__exit__()
        bar.close()

    per_task_final = run_eval(meta_state)
    record_eval(step, meta_state, per_task_final)
    final = _summarise(per_task_final, groups, labels)

    baselines = {}
    if jnp.issubdtype(held_out.train.y.dtype, jnp.floating) and held_out.train.y.ndim == 3:
        # A reference without any model: predict every query target by the support mean.
        mean = jnp.mean(held_out.train.y, axis=1, keepdims=True)
        baselines["support_mean"] = interval(np.asarray(jnp.mean(jnp.square(held_out.test.y - mean), axis=(1, 2))))
    summary = {
        "name": name,
        "learner": type(learner).__name__,
        "steps": step,
        "resumed_from": start if resume else None,
        "seed": seed,
        "held_out": {"tasks": int(len(next(iter(per_task_final.values())))), "adaptation_steps": eval_steps, **final},
        "held_out_initial": initial_eval,
        "held_out_baselines": baselines,
        "meta_steps_per_second": steps_run / train_seconds if train_seconds > 0 else None,
        "train_seconds": train_seconds,
        "compile_seconds": compile_seconds,
        "peak_memory_mib": peak_memory_mib(),
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.platform(),
        "jax": jax.__version__,
    }
    if not plots:
        summary["plots"] = []  # none asked for; a summary without the key lost its plots to a kill
    history_arrays = {key: np.concatenate(parts) for key, parts in history.items()}
    if writes:
        save(step, meta_state)
        save_npz_atomic(os.path.join(out, "eval_final.npz"), {**per_task_final, **({"group": labels} if labels is not None else {})})
        write_json_atomic(os.path.join(out, "summary.json"), summary)
        if plots:
            from metax.experiment import plots as plotting

            summary["plots"] = plotting.plot_run(out, learner=learner, meta_state=meta_state, held_out=held_out,
                                                 steps=eval_steps, key=keys.eval_adapt, num_tasks=plot_tasks)
            write_json_atomic(os.path.join(out, "summary.json"), summary)
    return TrainResult(meta_state, history_arrays, evals, summary, per_task_final)


class _DebugNaNSteps:
    """Stands in for the compiled chunk under `debug_nans`: one jitted step at a time with
    JAX's NaN/Inf checks on; the first bad step is rerun op by op to name the operation."""

    def __init__(self, learner, sample_task, meta_batch_size, keys, metric_shapes, name):
        def step(meta_state, index):
            metabatch = sample_metabatch(jax.random.fold_in(keys.data, index), sample_task, meta_batch_size)
            return learner.update(jax.random.fold_in(keys.update, index), meta_state, metabatch)

        self.step, self.jitted, self.shapes, self.name = step, jax.jit(step), metric_shapes, name
        self.learner = type(learner).__name__

    def __call__(self, meta_state, start, n):
        rows = []
        for index in range(int(start), int(start) + int(n)):
            try:
                with jax.debug_nans(True), jax.debug_infs(True):
                    new_state, metrics = self.jitted(meta_state, np.int32(index))
            except FloatingPointError as error:
                raise RunError(self._locate(meta_state, index, error)) from error
            meta_state = new_state
            rows.append(jax.device_get(metrics))
        stacked = {k: np.stack([r[k] for r in rows]) for k in self.shapes}
        return meta_state, stacked, np.int32(len(rows)), np.array(True)

    def _locate(self, meta_state, index, error) -> str:
        import traceback

        where = ""
        try:
            with jax.debug_nans(True), jax.debug_infs(True), jax.disable_jit():
                self.step(meta_state, np.int32(index))
        except FloatingPointError as eager_error:
            frames = [f for f in traceback.extract_tb(eager_error.__traceback__) if "/jax/" not in f.filename]
            if frames:
                frame = frames[-1]
                where = f"; the first bad operation is at {frame.filename}:{frame.lineno}: {frame.line}"
            error = eager_error
        return f"{self.name}: non-finite value at meta-step {index} ({self.learner}): {error}{where}."


# -- host-side helpers -----------------------------------------------------------------------


def _scalar_names(stacked: dict) -> list[str]:
    return [name for name, values in stacked.items() if np.ndim(values) == 1]


def _rows(stacked: dict, start: int, done: int) -> list[dict]:
    names = _scalar_names(stacked)
    return [{"step": start + i, **{name: float(stacked[name][i]) for name in names}} for i in range(done)]


def _columns(stacked: dict, start: int, done: int) -> dict:
    columns = {name: np.asarray(values[:done]) for name, values in stacked.items()}
    columns["step"] = np.arange(start, start + done)
    return columns


def _headline(summary: dict) -> str:
    for metric in ("acc_outer", "loss_outer"):
        if metric in summary:
            return f"{metric} {format_interval(summary[metric])}"
    return ""


def _postfix(rows: list[dict], evals: list[dict]) -> str:
    parts = []
    if rows and "loss_outer" in rows[-1]:
        parts.append(f"loss {np.mean([r['loss_outer'] for r in rows]):.4g}")
    if evals:
        parts.append(f"held-out {_headline(evals[-1])} @ {evals[-1]['step']}")
    return ", ".join(parts)


def _raise_nonfinite(row: dict, watch: Sequence[str], name: str, learner: MetaLearner, last_checkpoint: Optional[str]) -> None:
    bad = [metric for metric in watch if not np.all(np.isfinite(row.get(metric, 0.0)))]
    what = ", ".join(f"{metric} = {row[metric]}" for metric in bad) if bad else "hparams after the update"
    # Resuming with the same settings replays the same steps, and so the same failure.
    where = (
        f"the last good checkpoint, {last_checkpoint}, is intact; resume from it with lower learning rates"
        if last_checkpoint
        else "no checkpoint had been written yet; start again with lower learning rates"
    )
    raise RunError(
        f"{name}: non-finite {what} at meta-step {row['step']} ({type(learner).__name__}); {where}, "
        "clip gradients, or rerun with --debug-nans to find the first bad operation."
    )


class _NoBar:
    def update(self, n):
        pass

    def set_postfix_str(self, text):
        pass

    def close(self):
        pass


def _progress(enabled: bool, total: int, initial: int, name: str):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True, smoothing=0.1)
