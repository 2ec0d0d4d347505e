"""Atomic metric files and overwrite refusal."""

import argparse
import json
import pathlib
import signal

import pytest

from metax.experiment import refuse_overwrite, write_json_atomic
from metax.experiment.io import study_folder_problem


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


def test_study_folder_rule_refuses_what_the_study_did_not_write(tmp_path):
    out = tmp_path / "out"
    writes = ("metrics.json", "*.png", "sweep")
    assert study_folder_problem(str(out), False, writes) is None  # new
    out.mkdir()
    assert study_folder_problem(str(out), False, writes) is None  # empty
    (out / "curve.png").write_text("png")
    (out / "sweep").mkdir()
    assert study_folder_problem(str(out), False, writes) is None  # an earlier, unfinished run of the study
    (out / "metrics.json").write_text("{}")
    assert "metrics.json exists; pass --overwrite" in study_folder_problem(str(out), False, writes)
    assert study_folder_problem(str(out), True, writes) is None  # its own result, replaced on request
    (out / "thesis.tex").write_text("a user's file")
    for overwrite in (False, True):  # --overwrite never reaches files the study did not write
        problem = study_folder_problem(str(out), overwrite, writes)
        assert problem == f"--out {out} holds thesis.tex, which this study did not write; choose a new or empty folder (nothing was changed)"
    assert "is a file" in study_folder_problem(str(out / "thesis.tex"), True, writes)


STUDIES = {  # script: extra arguments it needs to reach its --out check
    "noisy_inference/run.py": [],
    "dynamics/run.py": [],
    "toy_md/run_toy_md.py": [],
    "fewshot/baselines.py": [],
    "omniglot/baselines.py": ["--config", "configs/omniglot-maml.yaml"],
}


@pytest.mark.parametrize("script", sorted(STUDIES))
def test_every_study_script_refuses_a_folder_it_did_not_write(script, tmp_path, capsys):
    import importlib.util

    root = pathlib.Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location(f"study_{script.replace('/', '_')[:-3]}", root / "experiments" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    argv = ["--out", str(out), "--overwrite", *[str(root / a) if a.endswith(".yaml") else a for a in STUDIES[script]]]
    def too_long(*_):  # a script that fails to refuse starts its whole study: stop it
        raise TimeoutError(f"{script} did not refuse --out {out}")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(60)
    try:
        status = module.main(argv)
    except SystemExit as error:  # argparse's parser.error
        status = error.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert status == 2
    assert f"--out {out} holds notes.txt, which this study did not write" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"
