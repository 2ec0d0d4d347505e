"""The noisy-inference study runs end to end; the MNIST IDX loader reads what it is given."""

import gzip
import importlib.util
import json
import pathlib

import numpy as np
import pytest

import metax
from metax.data.mnist import load_idx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("noisy_inference_run", ROOT / "experiments/noisy_inference/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_metrics_and_plot_and_refuses_to_overwrite(tmp_path):
    script = load_script()
    out = tmp_path / "run"
    assert script.main(["--quick", "--out", str(out), "--noise-levels", "0,2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "sklearn_digits" and metrics["eval_images"] == 64
    assert metrics["typical_grad_norm"] > 0
    steps = metrics["config"]["steps"]
    for level in ("0.0", "2.0"):
        entry = metrics["results"][level]
        assert set(entry["methods"]) == {"gd", "momentum", "adam", "kernel"}
        for method, summary in entry["methods"].items():
            assert np.isfinite(summary["final_objective"]) and summary["final_objective_ci95"] > 0
            assert 0.0 <= summary["fraction_within_tolerance"] <= 1.0
            gap = np.asarray(summary["curve_gap_mean"])
            assert gap.shape == (steps + 1,) and np.all(gap >= 0)  # f* is the best value any run reached
            assert gap[-1] < gap[0], (level, method)  # inference lowers the objective
        assert entry["tuning"]["gd"]["lr"] in entry["tuning"]["gd"]["rates"]
        # The tuned rate is the grid's best on the tuning images.
        scores = entry["tuning"]["gd"]["scores"]
        assert scores[entry["tuning"]["gd"]["rates"].index(entry["tuning"]["gd"]["lr"])] == min(scores)
    # Noise makes every fixed method worse at the end.
    for method in ("gd", "momentum", "adam"):
        assert metrics["results"]["2.0"]["methods"][method]["final_objective"] > metrics["results"]["0.0"]["methods"][method]["final_objective"]
    assert (out / "inference_comparison_noisy.png").stat().st_size > 0
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--quick", "--out", str(out)])
    assert exit_info.value.code == 2
    assert json.loads((out / "metrics.json").read_text()) == metrics  # untouched


def write_idx(path, array, code):
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    dtype = {0x08: ">u1", 0x0D: ">f4"}[code]
    data = header + np.asarray(array, dtype).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def test_idx_loader_reads_plain_and_gzipped_files(tmp_path):
    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    labels = np.array([7, 0, 3], np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 0x08)
    x, y = metax.data.load_mnist(str(tmp_path), "train")
    assert x.shape == (3, 2, 2) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x, images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [7, 0, 3])
    floats = np.array([[1.5, -2.0], [0.25, 1e6]], np.float32)
    write_idx(tmp_path / "floats.idx", floats, 0x0D)
    np.testing.assert_array_equal(load_idx(str(tmp_path / "floats.idx")), floats)

    # The study reads MNIST through the same loader, flattened.
    script = load_script()
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:2], 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:2], 0x08)
    args, parser = script.parse_args(["--quick", "--out", str(tmp_path / "out"), "--mnist", str(tmp_path), "--eval-images", "2"])
    train, held_out, name = script.load_images(args, parser)
    assert name == "mnist" and train.shape == (3, 4) and held_out.shape == (2, 4)


def test_idx_loader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="No train-images-idx3-ubyte"):
        metax.data.load_mnist(str(tmp_path), "train")
    with pytest.raises(ValueError, match="split must be one of"):
        metax.data.load_mnist(str(tmp_path), "validation")
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="bad.idx is not an IDX file"):
        load_idx(str(bad))
    write_idx(tmp_path / "short.idx", np.zeros((4, 3), np.uint8), 0x08)
    (tmp_path / "short.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"short.idx: the header declares shape \(4, 3\).*10 bytes follow"):
        load_idx(str(tmp_path / "short.idx"))
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8), 0x08)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((2,), np.uint8), 0x08)
    with pytest.raises(ValueError, match="has 3 images but .* has 2 labels"):
        metax.data.load_mnist(str(tmp_path), "train")
