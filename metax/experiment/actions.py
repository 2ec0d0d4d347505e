"""Periodic actions: what the runner does on the host between compiled chunks.

The idea is clu's periodic actions: an object called after every chunk that decides for
itself whether it is due: every chunk, at multiples of `every_steps` meta-steps (the
runner ends a chunk there, so the action sees exactly that step), or once `every_secs`
seconds have passed. `Trainer` builds the standard list (metric files, held-out
evaluation, checkpoints, the progress bar, and optionally TensorBoard and a profiler
trace) and takes more through `actions=`.

Each action may define hooks beside `apply`: `start(trainer)` before the first chunk,
`before_chunk(trainer)`, `end(trainer)` after the final evaluation of a run that
finished, and `close()` always (after an error too).
"""

import os
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from metax.experiment.errors import ConfigError, RunError
from metax.experiment.stats import format_interval


class Chunk(NamedTuple):
    """What one compiled call did, as the actions see it.

    Example:
      >>> chunk = metax.experiment.Chunk(start=4, step=6, rows=[{"step": 4}, {"step": 5}], finite=True, seconds=0.5, elapsed=9.0)
      >>> len(chunk.rows) / chunk.seconds  # its meta-steps per second
      4.0
    """

    start: int  # its first meta-step
    step: int  # meta-steps done after it (start + len(rows))
    rows: list  # one `{"step": i, metric: float}` per meta-step
    finite: bool  # False: it stopped at a step whose watched values were not finite
    seconds: float  # its wall time (the compilation is not in it: the runner compiles ahead)
    elapsed: float  # wall seconds of the run when it ended (resumed runs continue the count)


class PeriodicAction:
    """Runs `apply(trainer, chunk)` after a chunk when it is due: after every chunk (the
    default), when the chunk ends on a multiple of `every_steps` before the last step,
    or when `every_secs` seconds have passed since it last ran (`clock` gives the time).
    `next_stop` tells the runner where a chunk must end for `every_steps`.

    Example:
      >>> seen = []
      >>> class Note(metax.experiment.PeriodicAction):
      ...     def apply(self, trainer, chunk):
      ...         seen.append(chunk.step)
      >>> note, trainer = Note(every_steps=3), type("T", (), {"steps": 9})()
      >>> for start, step in ((0, 2), (2, 3), (3, 6), (6, 7), (7, 9)):
      ...     note(trainer, metax.experiment.Chunk(start, step, [], True, 0.0, 0.0))
      >>> seen, note.next_stop(4)  # not at 9: the end of a run has its own step
      ([3, 6], 6)
    """

    def __init__(self, every_steps: Optional[int] = None, every_secs: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps, self.every_secs, self.clock = every_steps, every_secs, clock
        self._last_time = clock()

    def next_stop(self, step: int) -> Optional[int]:
        """The first multiple of `every_steps` after `step` (None without a period)."""
        return (step // self.every_steps + 1) * self.every_steps if self.every_steps else None

    def due(self, trainer, chunk: Chunk) -> bool:
        if self.every_steps is None and self.every_secs is None:
            return True
        if self.every_steps is not None and chunk.step % self.every_steps == 0 and chunk.step < trainer.steps:
            return True
        return self.every_secs is not None and self.clock() - self._last_time >= self.every_secs

    def __call__(self, trainer, chunk: Chunk) -> None:
        if self.due(trainer, chunk):
            self._last_time = self.clock()
            self.apply(trainer, chunk)

    def apply(self, trainer, chunk: Chunk) -> None:
        raise NotImplementedError

    def start(self, trainer) -> None:
        pass

    def before_chunk(self, trainer) -> None:
        pass

    def end(self, trainer) -> None:
        pass

    def close(self) -> None:
        pass


class WriteMetrics(PeriodicAction):
    """Appends every meta-step's metrics to `metrics.jsonl` / `.csv`, and one row per
    chunk to `timing.jsonl` / `.csv`: its last step, `steps_per_s` (the chunk's steps over
    its wall time, compilation excluded) and `elapsed_s` (the run's wall seconds). The
    timing stays out of the metric files, so two runs of one config write them bit-equal."""

    def __init__(self, metrics, timing) -> None:
        super().__init__()
        self.metrics, self.timing = metrics, timing

    def apply(self, trainer, chunk: Chunk) -> None:
        self.metrics.write(chunk.rows)
        if chunk.rows:
            self.timing.write([timing_row(chunk)])


def timing_row(chunk: Chunk) -> dict:
    return {"step": chunk.step - 1, "steps_per_s": len(chunk.rows) / max(chunk.seconds, 1e-9),
            "elapsed_s": chunk.elapsed}


class Evaluate(PeriodicAction):
    """Scores the held-out tasks (`score(meta_state) -> {metric: (tasks,)}`) every
    `every_steps` meta-steps, and through `evaluate` before the first and after the last,
    appending to `trainer.evals` and `eval.jsonl`."""

    def __init__(self, every_steps: Optional[int], score: Callable, writer=None) -> None:
        super().__init__(every_steps)
        self.score, self.writer, self.rows = score, writer, []

    def due(self, trainer, chunk: Chunk) -> bool:
        # Neither an evaluation nor a checkpoint of a state that is not finite.
        return self.every_steps is not None and chunk.finite and super().due(trainer, chunk)

    def start(self, trainer) -> None:
        if trainer.step == 0 and trainer.initial_eval is None:  # (a run stopped at step 0 has it in its checkpoint)
            first = self.evaluate(trainer, 0)
            trainer.initial_eval = {k: v for k, v in first.items() if k != "step"}

    def apply(self, trainer, chunk: Chunk) -> None:
        self.evaluate(trainer, chunk.step)

    def evaluate(self, trainer, step: int, per_task: Optional[dict] = None) -> dict:
        """Records the scores at `step` (`per_task`, or the trainer's meta-state scored now)."""
        from metax.experiment.loop import summarise

        per_task = self.score(trainer.meta_state) if per_task is None else per_task
        summary = {"step": step, **summarise(per_task)}
        trainer.evals.append(summary)
        row = {"step": step}
        for metric, entry in summary.items():
            if metric != "step":
                row[metric], row[f"{metric}_ci95"] = entry["mean"], entry["ci95"]
        self.rows.append(row)
        if self.writer is not None:
            self.writer.write([row])
        return summary


class Checkpoint(PeriodicAction):
    """Saves the meta-state every `every_steps` meta-steps with `save(step, meta_state)`
    (`write=False`: a process that does not write files still ends its chunks there)."""

    def __init__(self, every_steps: Optional[int], save: Callable, last: Optional[str], saved_step: Optional[int],
                 write: bool = True) -> None:
        super().__init__(every_steps)
        self.save, self.last, self.saved_step, self.write = save, last, saved_step, write

    def due(self, trainer, chunk: Chunk) -> bool:
        return self.write and self.every_steps is not None and chunk.finite and super().due(trainer, chunk)

    def apply(self, trainer, chunk: Chunk) -> None:
        self.save_now(trainer)

    def save_now(self, trainer) -> Optional[str]:
        """Saves at the trainer's step unless a checkpoint of it exists; the newest path."""
        if self.write and self.saved_step != trainer.step:
            self.last, self.saved_step = self.save(trainer.step, trainer.meta_state), trainer.step
        return self.last


class ProgressBar(PeriodicAction):
    """A tqdm bar of meta-steps, its text the mean loss of the last chunk and the newest
    held-out score."""

    def __init__(self, total: int, initial: int, name: str) -> None:
        super().__init__()
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True, smoothing=0.1)

    def start(self, trainer) -> None:
        if trainer.evals:
            self.bar.set_postfix_str(f"held-out {_headline(trainer.evals[-1])}")

    def apply(self, trainer, chunk: Chunk) -> None:
        self.bar.update(len(chunk.rows))
        parts = []
        if chunk.rows and "loss_outer" in chunk.rows[-1]:
            parts.append(f"loss {np.mean([r['loss_outer'] for r in chunk.rows]):.4g}")
        if trainer.evals:
            parts.append(f"held-out {_headline(trainer.evals[-1])} @ {trainer.evals[-1]['step']}")
        self.bar.set_postfix_str(", ".join(parts))

    def close(self) -> None:
        self.bar.close()


def _headline(summary: dict) -> str:
    for metric in ("acc_outer", "loss_outer"):
        if metric in summary:
            return f"{metric} {format_interval(summary[metric])}"
    return ""


def summary_writer_class() -> type:
    """tensorboardX's `SummaryWriter`, or a ConfigError saying how to install it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError as error:
        raise ConfigError(
            "train.tensorboard: true needs the tensorboardX package, which is not installed: "
            "pip install 'metax[tensorboard]' (or pip install tensorboardX), or set train.tensorboard: false."
        ) from error
    return SummaryWriter


class TensorBoard(PeriodicAction):
    """Writes the metric files' values as TensorBoard scalars into `folder`: `train/NAME`
    per meta-step, `eval/NAME` (and `eval/NAME_ci95`) per evaluation, `speed/steps_per_s`
    and `speed/elapsed_s` per chunk. On resume (`purge_step`), TensorBoard hides what an
    earlier attempt logged from that step on (the resumed run logs it again)."""

    def __init__(self, folder: str, evaluation: Evaluate, purge_step: Optional[int] = None) -> None:
        super().__init__()
        self.writer = summary_writer_class()(folder, purge_step=purge_step or None)
        self.evaluation, self._logged = evaluation, 0

    def _evals(self) -> None:
        for row in self.evaluation.rows[self._logged:]:
            self._scalars("eval", row)
        self._logged = len(self.evaluation.rows)

    def _scalars(self, group: str, row: dict) -> None:
        for name, value in row.items():
            if name != "step":
                self.writer.add_scalar(f"{group}/{name}", float(value), row["step"])

    def apply(self, trainer, chunk: Chunk) -> None:
        for row in chunk.rows:
            self._scalars("train", row)
        if chunk.rows:
            timing = timing_row(chunk)
            self._scalars("speed", {"step": timing["step"], "steps_per_s": timing["steps_per_s"],
                                    "elapsed_s": timing["elapsed_s"]})
        self._evals()

    def end(self, trainer) -> None:
        self._evals()  # the final evaluation

    def close(self) -> None:
        self._evals()
        self.writer.close()


class Profile(PeriodicAction):
    """A `jax.profiler` trace of `chunks` chunks into `folder`, from this run's second
    chunk (the first carries one-time costs) or its first when `skip=0`."""

    def __init__(self, folder: str, chunks: int, skip: int = 1) -> None:
        super().__init__()
        self.folder, self.chunks, self.skip = folder, chunks, skip
        self.seen, self.tracing, self.traced = 0, False, 0

    def before_chunk(self, trainer) -> None:
        if not self.tracing and self.seen == self.skip and self.traced < self.chunks:
            import jax

            os.makedirs(self.folder, exist_ok=True)
            jax.profiler.start_trace(self.folder)
            self.tracing = True

    def apply(self, trainer, chunk: Chunk) -> None:
        self.seen += 1
        if self.tracing:
            self.traced += 1
            if self.traced >= self.chunks:
                self.close()

    def end(self, trainer) -> None:
        if self.traced == 0:
            print(f"metax: train.profile_chunks: the run ended after {self.seen} chunk(s), before the traced ones; "
                  "no trace written (run more steps, or a smaller train.chunk).", file=sys.stderr)

    def close(self) -> None:
        if self.tracing:
            import jax

            jax.profiler.stop_trace()  # the chunk's results were fetched: its work is done
            self.tracing = False


def raise_nonfinite(row: dict, watch: Sequence[str], name: str, learner: Any, last_checkpoint: Optional[str]) -> None:
    """Raises the RunError of a run stopped at `row`'s step."""
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
