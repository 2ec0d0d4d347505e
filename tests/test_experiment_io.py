"""Atomic metric files and overwrite refusal."""

import argparse
import json

import pytest

from metax.experiment import refuse_overwrite, write_json_atomic


def test_write_json_atomic_replaces_whole_files_and_keeps_old_ones_on_failure(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json_atomic(str(path), {"loss": 1.5})
    assert json.loads(path.read_text()) == {"loss": 1.5}
    write_json_atomic(str(path), {"loss": 0.5, "curve": [1, 2]})
    assert json.loads(path.read_text()) == {"loss": 0.5, "curve": [1, 2]}
    with pytest.raises(TypeError):
        write_json_atomic(str(path), {"loss": object()})  # not serialisable halfway through
    assert json.loads(path.read_text()) == {"loss": 0.5, "curve": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_refuse_overwrite_exits_with_usage_error(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="study")
    refuse_overwrite(parser, str(tmp_path), overwrite=False)  # nothing there yet: fine
    (tmp_path / "metrics.json").write_text("{}")
    refuse_overwrite(parser, str(tmp_path), overwrite=True)
    with pytest.raises(SystemExit) as exit_info:
        refuse_overwrite(parser, str(tmp_path), overwrite=False)
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


def _strict_json(text):
    """Parses as RFC 8259 JSON, which has no NaN / Infinity tokens."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_are_written_as_null_in_every_json_file(tmp_path):
    import math

    import numpy as np

    from metax.experiment.writers import MetricsWriter, read_jsonl
    from metax.utils.io import json_float

    payload = {"nan": float("nan"), "inf": [1.5, float("inf"), -np.inf], "f32": np.float32("nan"), "n": np.int64(3)}
    write_json_atomic(str(tmp_path / "s.json"), payload)
    assert _strict_json((tmp_path / "s.json").read_text()) == {"nan": None, "inf": [1.5, None, None], "f32": None, "n": 3}
    # The runner's metric rows: null in the JSON lines, the exact token in the CSV beside them.
    writer = MetricsWriter(str(tmp_path))
    writer.write([{"step": 0, "loss": 0.25, "bad": float("nan")}, {"step": 1, "loss": float("inf"), "bad": 1.0}])
    rows = [_strict_json(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 0, "loss": 0.25, "bad": None}, {"step": 1, "loss": None, "bad": 1.0}]
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss,bad", "0,0.25,nan", "1,inf,1.0"]
    assert math.isnan(json_float(read_jsonl(str(tmp_path / "metrics.jsonl"))[0]["bad"])) and json_float(2) == 2.0


def test_atomic_write_keeps_the_old_file_on_error_and_never_replaces_a_result_when_asked(tmp_path):
    from metax.utils.io import atomic_write, save_npz_atomic

    path = tmp_path / "run.npz"
    save_npz_atomic(str(path), {"a": [1, 2]}, overwrite=False)
    with pytest.raises(FileExistsError, match="left as it was"):
        save_npz_atomic(str(path), {"a": [3]}, overwrite=False)
    with pytest.raises(RuntimeError):
        with atomic_write(str(path), "wb") as handle:
            handle.write(b"half a fi")
            raise RuntimeError("killed half-way")
    import numpy as np

    with np.load(path) as data:
        assert data["a"].tolist() == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]  # no temporary file left
