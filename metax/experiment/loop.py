"""The compiled part of the runner: many meta-steps per call, tasks drawn on the device.

`make_chunk` builds the chunk: a run of meta-steps as one `lax.while_loop` whose trip
count is an argument, so a single compilation serves every chunk length. Inside a step
the meta-batch is drawn from keys folded from the step index, so the data stream's
position is the step and a resumed run sees the same tasks. A step whose watched metrics
(`watched_metrics`: the outer loss and meta-gradient norm by default) or hparams are not
finite ends the chunk there. `HeldOutEvaluator` scores the fixed held-out tasks.

The host side (`metax.experiment.trainer.Trainer`, which `train` runs) calls the chunk
up to the next evaluation or checkpoint step and runs its periodic actions in between
(`metax.experiment.actions`).
"""

import functools
import math
import resource
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metax.data import MetaDataset, sample_metabatch
from metax.experiment.errors import ConfigError, RunError
from metax.experiment.stats import interval
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


@jax.jit
def _split_keys(root: jax.Array) -> Keys:
    # One compiled program instead of four eager ones (two splits, two unstacks), once per
    # process. Threefry is integer arithmetic, so the keys are the same.
    reset, data, update, held_out = jax.random.split(root, 4)
    eval_tasks, eval_adapt = jax.random.split(held_out)
    return Keys(reset, data, update, eval_tasks, eval_adapt)


def run_keys(seed: int) -> Keys:
    """The run's PRNG keys, all derived from the seed."""
    return _split_keys(jax.random.PRNGKey(seed))  # the seed stays a Python int (any size)


def _compiled(draw: Callable, sample_task: Callable) -> Callable:
    """`jit(draw)` as a function of the remaining arguments; a sampler carrying its data as
    pytree leaves (`jax.tree_util.Partial`) is passed in rather than baked in."""
    if isinstance(sample_task, jax.tree_util.Partial):
        compiled = jax.jit(draw)
        return lambda *args: compiled(*args, sample_task)
    return jax.jit(lambda *args: draw(*args, sample_task))


def sample_input(sample_task: Callable, key: jax.Array) -> jax.Array:
    """One task's support inputs `train.x`, what `MetaLearner.reset` takes: the values of
    `sample_task(key).train.x`. Compiled with `train.x` alone as output, XLA drops the rest
    of the task (for the family mix, the five-way switch of targets): 1.4 s -> 0.4 s of
    compilation."""
    return _compiled(lambda k, s: s(k).train.x, sample_task)(key)


def sample_held_out(key: jax.Array, sample_task: Callable, num_tasks: int, batch_size: int) -> MetaDataset:
    """`num_tasks` held-out tasks, drawn in batches of `batch_size` with keys folded from the
    batch index: the first tasks are the same whatever `num_tasks` is."""
    # A lone batch is cut to `num_tasks` in the program (eager, the cut compiled a program
    # per leaf). The fold stays eager: its one program serves every run of a process.
    keep = min(batch_size, num_tasks)
    cut = lambda batch: jax.tree_util.tree_map(lambda leaf: leaf[:keep], batch)
    draw = _compiled(lambda k, s: cut(sample_metabatch(k, s, batch_size)), sample_task)
    batches = [draw(jax.random.fold_in(key, b)) for b in range(math.ceil(num_tasks / batch_size))]
    if len(batches) == 1:
        return batches[0]
    return jax.tree_util.tree_map(lambda *leaves: jnp.concatenate(leaves)[:num_tasks], *batches)


@jax.jit
def _take(tasks: MetaDataset, index: jax.Array) -> MetaDataset:
    # The tasks at `index`, one compiled gather for every leaf instead of eager ones per leaf.
    return jax.tree_util.tree_map(lambda leaf: leaf[index], tasks)


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
            whole = self.batch_size == self.num_tasks  # one batch of every task, in order
            batch = self.tasks if whole else _take(self.tasks, index)
            _, metrics = self._eval(jax.random.fold_in(self.key, b), meta_state, batch)
            results.append(jax.device_get(metrics))
        return {
            name: np.concatenate([r[name] for r in results])[: self.num_tasks]
            for name in results[0]
            if np.ndim(results[0][name]) == 1
        }


def summarise(per_task: dict[str, np.ndarray], groups: Optional[tuple] = None, labels: Optional[np.ndarray] = None) -> dict:
    """`{metric: interval(values)}` of per-task scores, and per group with `groups`
    (`(info_key, names)`) and each task's group index in `labels`.

    Example:
      >>> metax.experiment.loop.summarise({"loss_outer": np.array([1.0, 3.0])})["loss_outer"]["mean"]
      2.0
    """
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


def jitted_update(learner: MetaLearner) -> Callable:
    """`jax.jit(learner.update)`, one object per learner: JAX caches a trace per jitted
    object, so the config check before a run (`metax.experiment.build.trace`) and the
    runner's compilation share one trace of `update` instead of tracing it twice.

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.01), optax.adam(1e-3))
      >>> metax.experiment.loop.jitted_update(learner) is metax.experiment.loop.jitted_update(learner)
      True
    """
    # Kept on the learner (a plain reference cycle the garbage collector frees with it),
    # not in a module-level table that would keep every learner and its compilations alive.
    jitted = learner.__dict__.get("_jitted_update")
    if jitted is None:
        jitted = learner.__dict__["_jitted_update"] = jax.jit(learner.update)
    return jitted


def watched_metrics(metrics: dict, check_finite: Optional[Sequence[str]] = None) -> list[str]:
    """The metrics a run stops on when they turn non-finite: `check_finite` if given (each
    must be one of `metrics`), else the outer loss and meta-gradient norm, or the best
    fitness for evolution strategies (one diverging member makes the mean inf).

    Example:
      >>> metax.experiment.watched_metrics({"loss_outer": 0.0, "gradnorm_outer": 0.0, "loss_inner": 0.0})
      ['loss_outer', 'gradnorm_outer']
    """
    if check_finite is not None:
        missing = [name for name in check_finite if name not in metrics]
        if missing:
            raise ConfigError(
                f"train.check_finite names {missing}, which this learner does not report; it reports: {', '.join(sorted(metrics))}."
            )
        return list(check_finite)
    if "gradnorm_outer" in metrics:
        return [name for name in ("loss_outer", "gradnorm_outer") if name in metrics]
    return [name for name in ("fitness_best",) if name in metrics]


def all_finite(tree: Any) -> jax.Array:
    """True if every floating-point leaf of `tree` is finite (a traceable check).

    Example:
      >>> bool(metax.experiment.all_finite({"w": jnp.ones(2), "n": jnp.arange(3)})), bool(metax.experiment.all_finite(jnp.array([jnp.inf])))
      (True, False)
    """
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_step(
    learner: MetaLearner,
    sample_task: Callable,
    meta_batch_size: int,
    keys: Keys,
    task_sharding: Optional[jax.sharding.Sharding] = None,
    update: Optional[Callable] = None,
) -> Callable:
    """`step(meta_state, index, sampler=None) -> (meta_state, metrics)`: meta-step `index`
    on the meta-batch drawn from `keys.data` folded with `index` (the one step the chunk
    and the `debug_nans` path both run). `update` replaces `learner.update`: passing
    `jax.jit(learner.update)`, already traced by `jax.eval_shape` for the metric shapes,
    saves tracing it again (jit caches its trace).

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.01), optax.adam(1e-3))
      >>> sample_task = metax.data.make_task_sampler("sinusoid", 5, 5)
      >>> keys = metax.experiment.loop.run_keys(0)
      >>> step = metax.experiment.loop.make_step(learner, sample_task, 2, keys)
      >>> _, metrics = jax.jit(step)(learner.reset(keys.reset, sample_input), 0)
      >>> metrics["loss_outer"].shape
      ()
    """

    def step(meta_state, index, sampler=None):
        sampler = sample_task if sampler is None else sampler
        metabatch = sample_metabatch(jax.random.fold_in(keys.data, index), sampler, meta_batch_size)
        if task_sharding is not None:  # each device adapts its share of the tasks
            metabatch = jax.lax.with_sharding_constraint(metabatch, task_sharding)
        return (learner.update if update is None else update)(jax.random.fold_in(keys.update, index), meta_state, metabatch)

    return step


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
    `update`: as in `make_step`."""

    step = make_step(learner, sample_task, meta_batch_size, keys, task_sharding, update)

    def chunk(meta_state, start, n, sampler=None):
        sampler = sample_task if sampler is None else sampler
        stacked = jax.tree_util.tree_map(lambda s: jnp.zeros((buffer, *s.shape), s.dtype), metric_shapes)

        def cond(carry):
            i, _, _, finite = carry
            return (i < n) & finite

        def body(carry):
            i, meta_state, stacked, _ = carry
            meta_state, metrics = step(meta_state, start + i, sampler)
            finite = all_finite(meta_state.hparams)
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


class _DebugNaNSteps:
    """Stands in for the compiled chunk under `debug_nans`: one jitted step at a time with
    JAX's NaN/Inf checks on; the first bad step is rerun op by op to name the operation."""

    def __init__(self, learner, sample_task, meta_batch_size, keys, metric_shapes, name):
        step = make_step(learner, sample_task, meta_batch_size, keys)
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
