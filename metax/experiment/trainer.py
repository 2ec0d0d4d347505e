"""The runner's host side: a `Trainer` compiles the chunk once, then runs chunks up to the
next stop and calls its periodic actions between them; `train` builds one and runs it.

A chunk ends exactly at every evaluation and checkpoint step (the actions' `next_stop`),
at the last step, or earlier (about half a second of steps, or `chunk` steps). Between
chunks the actions write metrics (`metrics.jsonl` / `metrics.csv`, and the speed in
`timing.jsonl` / `timing.csv`), evaluate the fixed held-out tasks every `eval_every`
steps (`eval.jsonl`), checkpoint atomically every `checkpoint_every` steps, update a
progress bar and, when asked, write TensorBoard scalars (`tensorboard/`) and a
`jax.profiler` trace of a few chunks (`profile/`). At the end it writes `summary.json`
(held-out metrics with 95% intervals, meta-steps/s after compilation, compile seconds,
peak memory), the per-task scores (`eval_final.npz`) and plots.

A step whose watched metrics or hparams are not finite ends the chunk there; the run
raises `RunError` naming the step, the metric and the last good checkpoint, which it
never overwrites. SIGINT / SIGTERM stop it between chunks after a checkpoint.
"""

import inspect
import os
import platform
import time
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from metax.data import MetaDataset, sample_metabatch
from metax.experiment import actions as act
from metax.experiment import checkpoint as ckpt
from metax.experiment import loop
from metax.experiment.errors import ConfigError
from metax.experiment.io import save_npz_atomic, write_json_atomic
from metax.experiment.loop import TrainResult
from metax.experiment.signals import Interrupted, StopRequests
from metax.experiment.stats import interval
from metax.experiment.writers import MetricsWriter, read_jsonl
from metax.learner.base import MetaLearner


class Trainer:
    """Meta-trains `learner` on tasks from `sample_task`: `train`'s arguments, plus more
    periodic `actions` (`metax.experiment.PeriodicAction`) called after every chunk.

    `compile()` sets the run up (held-out tasks, the meta-state or the checkpoint it
    resumes, the compiled chunk) and may be called first to time it; `run()` trains and
    returns a `TrainResult`. The standard actions are in `actions` after `run()` starts.

    Example:
      >>> learner = metax.learner.ModelAgnosticMetaLearning(meta_model, None, 1, optax.sgd(0.01), optax.adam(1e-3))
      >>> sample_task = metax.data.make_task_sampler("sinusoid", 5, 5)
      >>> trainer = metax.experiment.Trainer(learner, sample_task, steps=5, meta_batch_size=2, eval_tasks=2,
      ...                                    eval_every=2, chunk=4, progress=False)
      >>> result = trainer.run()
      >>> result.history["step"].tolist(), [e["step"] for e in result.evals]  # chunks: 0-1, 2-3, 4
      ([0, 1, 2, 3, 4], [0, 2, 4, 5])
    """

    def __init__(self, learner: MetaLearner, sample_task: Callable, *, actions: Sequence[act.PeriodicAction] = (),
                 **options) -> None:
        bound = inspect.signature(train).bind(learner, sample_task, **options)  # train's signature and defaults
        bound.apply_defaults()
        vars(self).update(bound.arguments)
        self.extra_actions = list(actions)
        self._check_arguments()
        self.name = self.name or type(learner).__name__
        self.eval_steps = learner.steps_inner if self.eval_steps is None else self.eval_steps
        self.eval_sample_task = sample_task if self.eval_sample_task is None else self.eval_sample_task
        self.keys = loop.run_keys(self.seed)
        self.primary = jax.process_index() == 0  # the process that writes files and shows progress
        self.writes = self.out is not None and self.primary
        self.fingerprints = (self.fingerprint,) if isinstance(self.fingerprint, str) else tuple(self.fingerprint or ())
        self.compiled: Optional[Callable] = None
        self.actions: list = []
        self.history: dict = {}
        self.evals: list = []
        if self.tensorboard and self.writes:
            act.summary_writer_class()  # refused before any work when tensorboardX is missing

    def _check_arguments(self) -> None:
        for label in ("steps", "meta_batch_size", "eval_batch_size", "keep_checkpoints"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a positive int, got {value!r}.")
        for label in ("chunk", "eval_every", "checkpoint_every"):
            value = getattr(self, label)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{label} must be a positive int or None, got {value!r}.")
        if isinstance(self.profile_chunks, bool) or not isinstance(self.profile_chunks, int) or self.profile_chunks < 0:
            raise ConfigError(f"profile_chunks must be an int >= 0, got {self.profile_chunks!r}.")
        if self.resume and self.out is None:
            raise ConfigError("resume=True needs the run folder `out` that holds the checkpoints.")

    # -- set-up ----------------------------------------------------------------------------

    def compile(self) -> "Trainer":
        """Draws the held-out tasks, builds (or restores) the meta-state and compiles the
        chunk once; does nothing when called again."""
        if self.compiled is not None:
            return self
        self._started = time.perf_counter()
        self._held_out()
        mesh, replicated, by_task = loop._mesh(self.devices, self.meta_batch_size)
        # A sampler that carries its data (a Partial) is an argument of compiled functions.
        self.sampler_arg = self.sample_task if isinstance(self.sample_task, jax.tree_util.Partial) else None
        self._restore()
        batch_shape = jax.eval_shape(lambda k: sample_metabatch(k, self.sample_task, self.meta_batch_size), self.keys.data)
        update = loop.jitted_update(self.learner)  # traced once (by `build.trace` too): the chunk reuses it
        probe = jax.eval_shape(update, self.keys.update, self.meta_state, batch_shape)[1]
        self.watch = loop.watched_metrics(probe, self.check_finite)
        self.buffer = self.chunk if self.chunk is not None else min(self.steps, loop.MAX_CHUNK)
        if mesh is not None:
            self.meta_state = jax.device_put(self.meta_state, replicated)
        tick = time.perf_counter()
        if self.debug_nans:
            self.compiled = loop._DebugNaNSteps(self.learner, self.sample_task, self.meta_batch_size, self.keys, probe, self.name)
        else:
            run_chunk = loop.make_chunk(self.learner, self.sample_task, self.meta_batch_size, self.keys, self.buffer,
                                        self.watch, probe, by_task, update)
            sharded = {} if mesh is None else {"out_shardings": replicated}
            executable = jax.jit(run_chunk, donate_argnums=0, **sharded).lower(
                self.meta_state, np.int32(0), np.int32(1), self.sampler_arg).compile()
            self.compiled = lambda meta_state, start, n: executable(meta_state, start, n, self.sampler_arg)
        self.compile_seconds = time.perf_counter() - tick
        return self

    def _held_out(self) -> None:
        """The held-out tasks: fixed for the whole run (and for every resume of it)."""
        if isinstance(self.eval_tasks, MetaDataset):
            self.held_out = self.eval_tasks
        else:
            if isinstance(self.eval_tasks, bool) or not isinstance(self.eval_tasks, int) or self.eval_tasks < 2:
                raise ConfigError(f"eval_tasks must be an int >= 2 (for an interval) or a MetaDataset, got {self.eval_tasks!r}.")
            self.held_out = loop.sample_held_out(self.keys.eval_tasks, self.eval_sample_task, self.eval_tasks, self.eval_batch_size)
        self.labels = None
        if self.groups is not None:
            self.labels = np.asarray(self.held_out.test.info[self.groups[0]])[:, 0]
        self.score = loop.HeldOutEvaluator(self.learner, self.held_out, self.eval_steps, self.keys.eval_adapt, self.eval_batch_size)

    def _restore(self) -> None:
        """The initial meta-state, or the newest intact checkpoint's when resuming."""
        sample_input = loop.sample_input(self.sample_task, self.keys.data)
        self.meta_state = self.learner.reset(self.keys.reset, sample_input)
        self.start = 0
        self.initial_eval = None  # the held-out scores before meta-training ("before" in summaries)
        self.checkpoints = os.path.join(self.out, "checkpoints") if self.out is not None else None
        if self.out is not None and self.primary:
            os.makedirs(self.checkpoints, exist_ok=True)
            ckpt.clean_temporary(self.checkpoints)
        if self.resume:
            # Damaged newer checkpoints are moved aside by the reader.
            restored = ckpt.restore_latest(self.checkpoints, self.meta_state, fingerprints=self.fingerprints,
                                           set_aside=self.primary)
            if restored is not None:
                self.meta_state, record = jax.device_put(restored.tree), restored.record
                self.start = record["step"]
                self.initial_eval = record.get("held_out_initial")
                if self.start > self.steps:
                    raise ConfigError(f"the checkpoint is at step {self.start}, beyond steps={self.steps}; raise steps to continue.")
        self.step = self.start

    def _save(self, step: int, meta_state) -> str:
        for writer in (self.writers[0], self.writers[2]):  # metrics and evaluations (the timing rows may lag)
            writer.sync()  # every row up to the checkpoint is durable before it is
        record = {"fingerprint": self.fingerprints[0] if self.fingerprints else None, "seed": self.seed, "name": self.name,
                  "data_key": np.asarray(self.keys.data).tolist(), "held_out_initial": self.initial_eval}
        return ckpt.save_checkpoint(self.checkpoints, step, meta_state, record, self.keep_checkpoints)

    def _standard_actions(self) -> list:
        """Metric files, evaluation, checkpoints, progress, then TensorBoard and the profiler."""
        out, start = self.out, self.start
        self.writers = []
        if self.writes:
            # The evaluation at the resume step was written before its checkpoint: keep it.
            self.writers = [MetricsWriter(out, keep_before=start), MetricsWriter(out, "timing", keep_before=start),
                            MetricsWriter(out, "eval", keep_before=start + 1 if start < self.steps else start)]
            timing = read_jsonl(self.writers[1].jsonl)
            self._elapsed_before = float(timing[-1]["elapsed_s"]) if timing else 0.0  # the earlier attempts' time
        else:
            self._elapsed_before = 0.0
        self.evaluation = act.Evaluate(self.eval_every, self.score, self.writers[2] if self.writes else None)
        last = ckpt.latest_checkpoint(self.checkpoints) if out is not None else None
        # Every process ends its chunks at checkpoint steps (one program); process 0 writes.
        self.checkpointer = act.Checkpoint(self.checkpoint_every if out is not None else None, self._save, last,
                                           start if last is not None else None, write=self.writes)
        found = ([act.WriteMetrics(*self.writers[:2])] if self.writes else []) + [self.evaluation, self.checkpointer]
        if self.progress and self.primary:
            found.append(act.ProgressBar(self.steps, start, self.name))
        if self.tensorboard and self.writes:
            found.append(act.TensorBoard(os.path.join(out, "tensorboard"), self.evaluation, purge_step=start))
        if self.profile_chunks and self.writes:
            found.append(act.Profile(os.path.join(out, "profile"), self.profile_chunks))
        return found + self.extra_actions

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Trains up to `steps` (from the checkpoint when resuming) and finishes the run."""
        self.compile()
        try:
            self.actions = self._standard_actions()
            with StopRequests() as signals:
                for action in self.actions:
                    action.start(self)
                per_step_seconds, self.train_seconds, self.steps_run = None, 0.0, 0
                while self.step < self.steps:
                    self._stop_if_asked(signals)
                    # Chunks end exactly where an action is due (evaluation, checkpoint steps).
                    stop = min([self.steps] + [s for s in (a.next_stop(self.step) for a in self.actions) if s is not None])
                    per_step_seconds = self._run_chunk(self._length(stop, per_step_seconds), per_step_seconds)
                self._stop_if_asked(signals)
            result = self._finish()
            for action in self.actions:
                action.end(self)
            return result
        finally:
            for action in self.actions:
                action.close()

    def _stop_if_asked(self, signals: StopRequests) -> None:
        if signals.requested:  # between compiled calls: nothing is in flight
            raise Interrupted(signals.signum, self.step, self.checkpointer.save_now(self))

    def _length(self, stop: int, per_step_seconds: Optional[float]) -> int:
        """The next chunk's length: `chunk`, or about `TARGET_SECONDS` of steps, never past `stop`."""
        if self.chunk is not None:
            return min(self.chunk, stop - self.step)
        guess = 2 if per_step_seconds is None else int(loop.TARGET_SECONDS / max(per_step_seconds, 1e-9))
        return max(1, min(guess, self.buffer, stop - self.step))

    def _run_chunk(self, n: int, per_step_seconds: Optional[float]) -> float:
        """Runs `n` meta-steps, records them, calls the actions; the new per-step estimate."""
        for action in self.actions:
            action.before_chunk(self)
        tick = time.perf_counter()
        self.meta_state, stacked, done, finite = self.compiled(self.meta_state, np.int32(self.step), np.int32(n))
        done = int(done)
        stacked = jax.device_get(stacked)
        seconds = time.perf_counter() - tick
        self.train_seconds += seconds
        self.steps_run += done
        measured = seconds / max(done, 1)
        per_step_seconds = measured if per_step_seconds is None else 0.5 * (per_step_seconds + measured)

        names = [name for name, values in stacked.items() if np.ndim(values) == 1]  # scalars: the metric files
        rows = [{"step": self.step + i, **{name: float(stacked[name][i]) for name in names}} for i in range(done)]
        for key, values in stacked.items():
            self.history.setdefault(key, []).append(np.asarray(values[:done]))
        self.history.setdefault("step", []).append(np.arange(self.step, self.step + done))
        chunk = act.Chunk(self.step, self.step + done, rows, bool(finite), seconds,
                          self._elapsed_before + time.perf_counter() - self._started)
        self.step += done
        for action in self.actions:
            action(self, chunk)
        if not chunk.finite:
            act.raise_nonfinite(rows[-1], self.watch, self.name, self.learner, self.checkpointer.last)
        return per_step_seconds

    def _finish(self) -> TrainResult:
        """The final evaluation, summary, checkpoint, scores and plots."""
        per_task_final = self.score(self.meta_state)
        self.evaluation.evaluate(self, self.step, per_task_final)
        final = loop.summarise(per_task_final, self.groups, self.labels)
        held_out = self.held_out
        baselines = {}
        if jnp.issubdtype(held_out.train.y.dtype, jnp.floating) and held_out.train.y.ndim == 3:
            # A reference without any model: predict every query target by the support mean.
            mean = jnp.mean(held_out.train.y, axis=1, keepdims=True)
            baselines["support_mean"] = interval(np.asarray(jnp.mean(jnp.square(held_out.test.y - mean), axis=(1, 2))))
        summary = {
            "name": self.name,
            "learner": type(self.learner).__name__,
            "steps": self.step,
            "resumed_from": self.start if self.resume else None,
            "seed": self.seed,
            "held_out": {"tasks": int(len(next(iter(per_task_final.values())))), "adaptation_steps": self.eval_steps, **final},
            "held_out_initial": self.initial_eval,
            "held_out_baselines": baselines,
            "meta_steps_per_second": self.steps_run / self.train_seconds if self.train_seconds > 0 else None,
            "train_seconds": self.train_seconds,
            "compile_seconds": self.compile_seconds,
            "peak_memory_mib": loop.peak_memory_mib(),
            "device": str(jax.devices()[0].device_kind),
            "platform": platform.platform(),
            "jax": jax.__version__,
        }
        if not self.plots:
            summary["plots"] = []  # none asked for; a summary without the key lost its plots to a kill
        history = {key: np.concatenate(parts) for key, parts in self.history.items()}
        if self.writes:
            out = self.out
            self._save(self.step, self.meta_state)
            scores = {**per_task_final, **({"group": self.labels} if self.labels is not None else {})}
            save_npz_atomic(os.path.join(out, "eval_final.npz"), scores)
            write_json_atomic(os.path.join(out, "summary.json"), summary)
            if self.plots:
                from metax.experiment import plots as plotting

                summary["plots"] = plotting.plot_run(out, learner=self.learner, meta_state=self.meta_state, held_out=held_out,
                                                     steps=self.eval_steps, key=self.keys.eval_adapt, num_tasks=self.plot_tasks)
                write_json_atomic(os.path.join(out, "summary.json"), summary)
        return TrainResult(self.meta_state, history, self.evals, summary, per_task_final)


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
    tensorboard: bool = False,
    profile_chunks: int = 0,
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
      tensorboard: also write the metrics, evaluations and speed as TensorBoard scalars
        into `out/tensorboard/` (needs tensorboardX: `pip install 'metax[tensorboard]'`).
      profile_chunks: trace this many chunks, from the second, with `jax.profiler` into
        `out/profile/` (view with TensorBoard's profile plugin or Perfetto); 0: none.

    Returns:
      A `TrainResult`.

    Raises:
      RunError: when a watched metric or the hparams turn non-finite.
      ConfigError: for bad arguments, or a checkpoint that does not fit on resume.

    `Trainer(learner, sample_task, **arguments).run()` is the same, with more actions
    possible. Its runnable example, a trained and a resumed run, is the quick start guide's
    (docs/quickstart.rst), so the examples compile one training loop, not two.
    """
    options = {key: value for key, value in locals().items() if key not in ("learner", "sample_task")}
    return Trainer(learner, sample_task, **options).run()
