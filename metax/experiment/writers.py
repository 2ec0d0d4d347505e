"""Metric files written as a run goes: one JSON object per line, and the same as CSV.

Rows are appended and flushed after every chunk of meta-steps, and synced to disk before
each checkpoint (`sync`), so every row up to a checkpoint survives any crash. On resume
the files are made to match the checkpoint again: rows from steps after it are dropped
(the resumed run writes them again), and a row torn by a crash in one file is restored
from the other file (or named on stderr when neither holds it); both files are rewritten
under a temporary name.
"""

import csv
import json
import os
import sys
from typing import Iterable, Optional

from metax.utils.io import dumps_json, write_text_atomic


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
        """Keeps the rows of steps before `step` in both files, each complete in both."""
        if not (os.path.exists(self.jsonl) or os.path.exists(self.csv)):
            return
        json_rows, json_torn = _read_json_rows(self.jsonl)
        header, csv_rows, csv_torn = _read_csv_rows(self.csv)
        steps = sorted(s for s in set(json_rows) | set(csv_rows) if s < step)
        for path, torn in ((self.jsonl, json_torn), (self.csv, csv_torn)):
            for number, text in torn:
                print(f"metax: {path} line {number} is torn ({text[:40]!r}); dropped.", file=sys.stderr)
        restored = [s for s in steps if (s in json_rows) != (s in csv_rows)]
        if restored:
            print(f"metax: rows of meta-steps {restored[:5]}{' ...' if len(restored) > 5 else ''} were missing from "
                  f"{self.jsonl} or {self.csv}; restored from the other file.", file=sys.stderr)
        rows = [json_rows[s] if s in json_rows else csv_rows[s] for s in steps]
        columns = header or (list(rows[0]) if rows else None)
        _rewrite(self.jsonl, "".join(dumps_json(row, indent=None) + "\n" for row in rows))
        if columns is not None:
            lines = [_csv_line(columns)] + [_csv_line([row.get(c, "") for c in columns]) for row in rows]
            _rewrite(self.csv, "".join(lines))

    def sync(self) -> None:
        """Forces the rows written so far to disk (before a checkpoint that they belong to)."""
        for path in (self.jsonl, self.csv):
            if os.path.exists(path):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())

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


def _read_json_rows(path: str) -> tuple[dict, list]:
    """`{step: row}` of a JSON-lines file and its torn lines `[(line number, text)]`."""
    rows, torn = {}, []
    if os.path.exists(path):
        with open(path, newline="") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                    rows[int(row["step"])] = row
                except (ValueError, KeyError, TypeError):
                    if line.strip():
                        torn.append((number, line))
    return rows, torn


def _read_csv_rows(path: str) -> tuple[Optional[list], dict, list]:
    """The header, `{step: row}` (values as the JSON rows hold them) and the torn lines of a CSV."""
    header, rows, torn = None, {}, []
    if not os.path.exists(path):
        return header, rows, torn
    with open(path, newline="") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, 1):
        cells = next(csv.reader([line]), [])
        if number == 1:
            header = cells or None
            continue
        complete = header is not None and len(cells) == len(header) and line.endswith("\n")
        try:
            row = {"step": int(cells[0]), **{name: _cell(value) for name, value in zip(header[1:], cells[1:])}}
        except (ValueError, IndexError, TypeError):
            complete = False
        if not complete:
            if line.strip():
                torn.append((number, line))
            continue
        rows[row["step"]] = row
    return header, rows, torn


def _cell(text: str):
    if text == "":
        return text  # a column this row did not have
    return float(text)  # "nan" / "inf" read back as floats: JSON writes them null, CSV as written


def _csv_line(cells: list) -> str:
    import io

    buffer = io.StringIO()
    csv.writer(buffer).writerow(cells)
    return buffer.getvalue()


def _rewrite(path: str, text: str) -> None:
    write_text_atomic(path, text)


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
