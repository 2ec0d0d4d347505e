"""The runner object: chunk boundaries exactly at evaluation and checkpoint steps, no
step lost or written twice (across a resume too), the speed rows, TensorBoard scalars
read back from the event file, and the profiler trace."""

import glob
import json
import os
import struct
import sys

import numpy as np
import optax
import pytest

import metax
from conftest import tiny_config
from metax.experiment import checkpoint as ckpt
from metax.experiment.cli import main

SAMPLE_TASK = metax.data.make_task_sampler("sinusoid", 5, 5)


def tiny_learner():
    module = metax.module.LearnedInit(
        metax.energy.SquaredError(), metax.energy.SquaredError(), metax.models.mlp_fn([8], 1), output_dim=1
    )
    return metax.learner.ModelAgnosticMetaLearning(module, None, 2, optax.sgd(0.05), optax.adam(0.01))  # tiny_config's


class Boundaries(metax.experiment.PeriodicAction):
    """Notes every chunk's (first step, steps done after it)."""

    def __init__(self):
        super().__init__()
        self.chunks = []

    def apply(self, trainer, chunk):
        self.chunks.append((chunk.start, chunk.step))


def rows(path):
    return [json.loads(line) for line in open(path).read().splitlines()]


def test_chunks_stop_exactly_at_eval_and_checkpoint_steps_and_no_step_is_lost_across_a_resume(tmp_path):
    # One chunk buffer (5) in every test of this file: one compiled program serves them all.
    out, every = str(tmp_path / "run"), dict(checkpoint_every=3, eval_every=4, keep_checkpoints=10, chunk=5)
    common = dict(meta_batch_size=2, eval_tasks=2, out=out, progress=False, plots=False, **every)
    first, second = Boundaries(), Boundaries()
    part = metax.experiment.Trainer(tiny_learner(), SAMPLE_TASK, steps=7, actions=[first], **common).run()
    whole = metax.experiment.Trainer(tiny_learner(), SAMPLE_TASK, steps=11, resume=True, actions=[second], **common).run()

    # Chunks tile [0, 7) and then [7, 11) without a gap or an overlap, and every multiple of
    # an action's period is a boundary (the adaptive length never runs past one).
    for notes, start, end in ((first, 0, 7), (second, 7, 11)):
        assert notes.chunks[0][0] == start and notes.chunks[-1][1] == end
        assert all(a[1] == b[0] for a, b in zip(notes.chunks, notes.chunks[1:]))
        ends = {step for _, step in notes.chunks}
        assert {s for s in range(start + 1, end) if s % 3 == 0 or s % 4 == 0} <= ends
    # The files: every step once, evaluations at the multiples of 4 and the ends, checkpoints
    # at the multiples of 3 and at the end of each call.
    assert [r["step"] for r in rows(os.path.join(out, "metrics.jsonl"))] == list(range(11))
    assert [r["step"] for r in rows(os.path.join(out, "eval.jsonl"))] == [0, 4, 7, 8, 11]
    assert [step for step, _ in ckpt.list_checkpoints(os.path.join(out, "checkpoints"))] == [3, 6, 7, 9, 11]
    assert part.history["step"].tolist() == list(range(7)) and whole.history["step"].tolist() == list(range(7, 11))
    assert [e["step"] for e in whole.evals] == [8, 11]

    # One timing row per chunk, at its last step; the speed times the chunks' own seconds.
    timing = rows(os.path.join(out, "timing.jsonl"))
    assert [r["step"] for r in timing] == [step - 1 for _, step in first.chunks + second.chunks]
    later = [r for r in timing if r["step"] >= 7]
    sizes = np.diff([7] + [step for _, step in second.chunks])
    np.testing.assert_allclose(sum(n / r["steps_per_s"] for n, r in zip(sizes, later)), whole.summary["train_seconds"], rtol=1e-6)
    elapsed = [r["elapsed_s"] for r in timing]
    assert all(b > a for a, b in zip(elapsed, elapsed[1:]))  # the resumed run continues the count
    assert elapsed[-1] > whole.summary["train_seconds"]


def test_chunk_lengths_follow_the_chunk_setting_and_stops(tmp_path):
    notes = Boundaries()
    result = metax.experiment.Trainer(tiny_learner(), SAMPLE_TASK, steps=10, meta_batch_size=2, eval_tasks=2, chunk=5,
                                      eval_every=6, progress=False, actions=[notes]).run()
    assert notes.chunks == [(0, 5), (5, 6), (6, 10)]
    assert result.history["step"].tolist() == list(range(10))
    assert [e["step"] for e in result.evals] == [0, 6, 10]


def read_scalars(folder):
    """`{tag: [(step, value)]}` of the TFRecord event files in `folder`, read with the
    protobuf classes tensorboardX ships (each record: length, its CRC, data, data CRC)."""
    from tensorboardX.proto import event_pb2

    found = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data, position = open(path, "rb").read(), 0
        while position < len(data):
            (length,) = struct.unpack("<Q", data[position:position + 8])
            event = event_pb2.Event.FromString(data[position + 12:position + 12 + length])
            position += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def test_tensorboard_scalars_equal_the_metric_files(tmp_path):
    pytest.importorskip("tensorboardX")
    config = tmp_path / "c.yaml"
    config.write_text(tiny_config("{steps: 5, meta_batch_size: 2, eval_every: 2, chunk: 5, tensorboard: true}", "{tasks: 2}"))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    scalars = read_scalars(out / "tensorboard")
    metrics, evals, timing = (rows(out / f"{stem}.jsonl") for stem in ("metrics", "eval", "timing"))
    for group, written, names in (("train", metrics, ["loss_outer", "gradnorm_outer"]), ("eval", evals, ["loss_outer", "loss_outer_ci95"]),
                                  ("speed", timing, ["steps_per_s", "elapsed_s"])):
        for name in names:
            logged = scalars[f"{group}/{name}"]
            assert [step for step, _ in logged] == [r["step"] for r in written]
            np.testing.assert_array_equal([v for _, v in logged], np.float32([r[name] for r in written]))
    assert [r["step"] for r in evals] == [0, 2, 4, 5]


def test_tensorboard_without_its_package_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(metax.experiment.ConfigError, match=r"metax\[tensorboard\].*train.tensorboard: false"):
        metax.experiment.train(tiny_learner(), SAMPLE_TASK, steps=2, meta_batch_size=2, eval_tasks=2,
                               out=str(tmp_path / "run"), tensorboard=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_profile_chunks_writes_a_trace(tmp_path):
    out = tmp_path / "run"
    metax.experiment.train(tiny_learner(), SAMPLE_TASK, steps=3, meta_batch_size=2, eval_tasks=2, chunk=5, out=str(out),
                           eval_every=1, profile_chunks=1, progress=False, plots=False)  # chunks of 1 step
    traces = glob.glob(str(out / "profile" / "**" / "*.xplane.pb"), recursive=True)
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_observing_keys_leave_the_fingerprint_and_resume_alone(tmp_path):
    from metax.experiment.resume import fingerprints, resume_changes

    config = metax.experiment.parse_config(
        {"task": {"name": "linear"}, "model": {"name": "mlp"}, "module": {"name": "learned_init"},
         "learner": {"name": "reptile", "steps_inner": 1, "optim_fn_inner": {"name": "sgd", "learning_rate": 0.1},
                     "optim_fn_outer": {"name": "sgd", "learning_rate": 1.0}}}, name="demo").to_dict()
    older = json.loads(json.dumps(config))  # a folder written before the keys existed
    for key in ("tensorboard", "profile_chunks"):
        del older["train"][key]
    assert fingerprints(config)[0] == fingerprints(older)[0]
    assert resume_changes(str(tmp_path), older, config) == []
    config["train"]["tensorboard"] = True
    assert fingerprints(config)[0] == fingerprints(older)[0]
    assert resume_changes(str(tmp_path), older, config) == [{"key": "train.tensorboard", "from": "<unset>", "to": True}]
