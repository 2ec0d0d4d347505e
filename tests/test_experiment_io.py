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
