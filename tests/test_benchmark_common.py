"""The benchmark scripts' shared helpers (benchmarks/common.py): rows land in their own
section of RESULTS.md, and interleaved windows compute work / seconds per path."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def common():
    spec = importlib.util.spec_from_file_location("bench_common", os.path.join(HERE, "..", "benchmarks", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_append_to_their_own_section(common, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", str(tmp_path / "RESULTS.md"))
    monkeypatch.setattr(common, "machine", lambda: "test machine")
    common.append_rows("A", ["x"], [[1]], note="about A")
    common.append_rows("B", ["y"], [[2]])
    common.append_rows("A", ["x"], [[3]], note="about A")
    text = open(common.RESULTS).read()
    section_a = text[text.index("## A"):text.index("## B")]
    assert section_a.count("| date | machine | x |") == 1 and section_a.count("about A") == 1
    assert [line.split("|")[3].strip() for line in section_a.splitlines() if "test machine" in line] == ["1", "3"]
    assert "| 2 |" in text[text.index("## B"):] and "| 3 |" not in text[text.index("## B"):]


def test_interleaved_rates_alternate_paths(common, monkeypatch):
    clock, calls = [0.0], []

    def path(name, seconds):
        def run():
            calls.append(name)
            clock[0] += seconds

        return run

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    rates = common.interleaved_rates({"a": path("a", 2.0), "b": path("b", 0.5)}, {"a": 10, "b": 10}, windows=3)
    assert calls == ["a", "b"] * 3
    assert rates == {"a": 5.0, "b": 20.0}
