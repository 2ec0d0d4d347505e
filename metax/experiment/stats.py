"""Intervals and tables shared by the runner, `metax compare` and the study scripts."""

import math
from typing import Any, Optional, Sequence

import numpy as np

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def interval(values: Any) -> dict:
    """Mean and half-width of a 95% normal interval (1.96 standard errors of the mean).

    Non-finite values are counted, not averaged: a diverged task makes the mean `inf`
    or `nan` visibly rather than disappearing.

    Returns:
      `{"mean", "ci95", "n"}` (`ci95` is nan for fewer than two values).

    Example:
      >>> entry = metax.experiment.interval([1.0, 2.0, 3.0])
      >>> entry["mean"], entry["n"], round(entry["ci95"], 3)
      (2.0, 3, 1.132)
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the spread is nan, as intended
        mean = float(values.mean())
        half = float(Z95 * values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci95": half, "n": int(n)}


def format_interval(entry: dict, digits: int = 3) -> str:
    """`0.123 ± 0.004` (or just the mean when there is no interval).

    Example:
      >>> metax.experiment.format_interval({"mean": 0.1234, "ci95": 0.0042, "n": 100})
      '0.123 ± 0.004'
    """
    mean, half = entry.get("mean", float("nan")), entry.get("ci95", float("nan"))
    if half is None or not np.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[Sequence[str]] = None) -> str:
    """A Markdown table; `align` holds "l" or "r" per column (default: first left, rest right).

    Example:
      >>> print(metax.experiment.markdown_table(["learner", "MSE"], [["maml", "0.31"], ["reptile", "0.52"]]))
      | learner | MSE |
      | --- | ---: |
      | maml | 0.31 |
      | reptile | 0.52 |
    """
    align = align or ["l"] + ["r"] * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(map(str, header)) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
