"""Metric files written as a run goes: one JSON object per line, and the same as CSV.

Rows are appended and flushed after every chunk of meta-steps, so a crash loses at most
the chunk in flight. On resume, rows from steps after the checkpoint are dropped (the
resumed run writes them again) by rewriting the file under a temporary name.
"""

import csv
import json
import os
from typing import Iterable, Optional

from metax.utils.io import atomic_write, dumps_json


class MetricsWriter:
    """Appends rows `{"step": int, name: float, ...}` to `<stem>.jsonl` and `<stem>.csv`."""

    def __init__(self, folder: str, stem: str = "metrics", keep_before: Optional[int] = None) -> None:
        self.jsonl = os.path.join(folder, f"{stem}.jsonl")
        self.csv = os.path.join(folder, f"{stem}.csv")
        self.columns: Optional[list[str]] = None
        if keep_before is not None:
            self._truncate(keep_before)
        if os.path.exists(self.csv) and os.path.getsize(self.csv) > 0:
            with open(self.csv, newline="") as handle:
                self.columns = next(csv.reader(handle), None)

    def _truncate(self, step: int) -> None:
        for path in (self.jsonl, self.csv):
            if not os.path.exists(path):
                continue
            with open(path, newline="") as handle:
                lines = handle.readlines()
            if path.endswith(".csv"):
                kept = lines[:1] + [line for line in lines[1:] if _csv_step(line) < step]
            else:
                kept = [line for line in lines if line.strip() and _json_step(line) < step]
            with atomic_write(path, newline="") as handle:
                handle.writelines(kept)

    def write(self, rows: Iterable[dict]) -> None:
        rows = [{key: (value if key == "step" else float(value)) for key, value in row.items()} for row in rows]
        if not rows:
            return
        with open(self.jsonl, "a") as handle:
            for row in rows:
                handle.write(dumps_json(row, indent=None) + "\n")  # non-finite: null; the CSV keeps nan / inf
            handle.flush()
        if self.columns is None:
            self.columns = list(rows[0])
            with open(self.csv, "w", newline="") as handle:
                csv.writer(handle).writerow(self.columns)
        with open(self.csv, "a", newline="") as handle:
            writer = csv.writer(handle)
            for row in rows:
                writer.writerow([row.get(column, "") for column in self.columns])


def _json_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return 1 << 62  # a torn last line from a crash sorts after every checkpoint: dropped


def _csv_step(line: str) -> int:
    try:
        return int(line.split(",", 1)[0])
    except ValueError:
        return 1 << 62  # a torn line sorts after every checkpoint, so it is dropped


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSON-lines file, skipping a torn last line."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows
