"""The meta-batch split over devices (a mesh with a task axis) and over processes
(`jax.distributed`) reaches the single-device meta-state."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_config
from metax.experiment import checkpoint as ckpt
from metax.experiment.cli import main

CONFIG = tiny_config("{steps: 8, meta_batch_size: 4, checkpoint_every: 4}", "{tasks: 4}")


def final_leaves(folder):
    with np.load(ckpt.latest_checkpoint(str(folder / "checkpoints"))) as data:
        return [data[name] for name in sorted(data.files) if name.startswith("leaf")]


def command(config, out, *extra):
    return [sys.executable, "-m", "metax", "run", str(config), "--out", str(out), "--no-progress", "--no-plots", *extra]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-device reference run, shared by both tests: one in-process run."""
    root = tmp_path_factory.mktemp("single")
    config = root / "c.yaml"
    config.write_text(CONFIG)
    assert main(["run", str(config), "--out", str(root / "one"), "--no-progress", "--no-plots"]) == 0
    return config, final_leaves(root / "one")


def test_four_devices_reach_the_single_device_meta_state(single, tmp_path, capsys):
    config, reference = single
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"}
    done = subprocess.run(command(config, tmp_path / "four", "--devices", "4"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for a, b in zip(reference, final_leaves(tmp_path / "four")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Wrong device counts and meta-batches that do not split say what to change. Checked
    # in this process (one CPU device), which refuses before it builds anything: a
    # subprocess each cost a start-up of about 4 s for the same code path.
    capsys.readouterr()
    for extra, message in ((["--devices", "3"], "does not split over 3 devices; use a multiple of 3 (e.g. 3 or 6)"),
                           (["--devices", "8"], "train.devices=8 but 1 device(s) are visible")):
        assert main(command(config, tmp_path / "bad", *extra)[3:]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_reach_the_single_process_meta_state(single, tmp_path):
    """`metax run --coordinator ... --num-processes 2`: two CPU processes (gloo collectives)
    each hold one device and half of every meta-batch; process 0 writes the run."""
    config, reference = single
    address = f"127.0.0.1:{free_port()}"
    workers = [
        subprocess.Popen(
            command(config, tmp_path / "two", "--devices", "2", "--coordinator", address,
                    "--num-processes", "2", "--process-id", str(rank)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in range(2)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr
    for a, b in zip(reference, final_leaves(tmp_path / "two")):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_killed_peer_stops_the_other_process_within_seconds_with_a_message(tmp_path):
    """Without metax's timeouts and early exit, the survivor waited 84 s in JAX's shutdown
    barrier and then died of SIGABRT."""
    import signal
    import time

    config = tmp_path / "long.yaml"
    config.write_text(tiny_config("{steps: 1000000, meta_batch_size: 2, chunk: 10}", "{tasks: 2}"))
    address, out = f"127.0.0.1:{free_port()}", tmp_path / "two"
    workers = [
        subprocess.Popen(command(config, out, "--devices", "2", "--coordinator", address, "--num-processes", "2",
                                 "--process-id", str(rank)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank in range(2)
    ]
    metrics, deadline = out / "metrics.jsonl", time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):  # both are training
        assert all(worker.poll() is None for worker in workers), workers[0].stderr.read()
        time.sleep(0.05)
    workers[1].send_signal(signal.SIGKILL)
    killed = time.time()
    _, stderr = workers[0].communicate(timeout=120)
    assert time.time() - killed < 45, time.time() - killed  # JAX's own default: 100 s, then SIGABRT
    assert workers[0].returncode == 1, (workers[0].returncode, stderr)
    assert "this process of a multi-process run stops now" in stderr, stderr
