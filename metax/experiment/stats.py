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


def interval_over_seeds(seed_values: Sequence[Any]) -> dict:
    """A 95% interval that reflects seed-to-seed variation: Student's t over seed means.

    Each seed's tasks are averaged first; the interval is then the t interval over those
    means, `mean +- t_{0.975, k-1} * sd(means) / sqrt(k)` for k seeds. Pooling seeds x
    tasks as independent samples instead would ignore that tasks of one seed share its
    meta-parameters (two seeds at 0.92 and 1.60 must not give 1.26 +- 0.11). With one
    seed there is no seed-to-seed spread to measure, and the interval is `interval`'s
    over that seed's tasks.

    Args:
      seed_values: one array of per-task values per seed.

    Returns:
      `{"mean", "ci95", "n", "over"}`: `n` counts seeds (`over` "seeds") or, for one seed,
      tasks (`over` "tasks").

    Example:
      >>> entry = interval_over_seeds([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
      >>> entry["mean"], round(entry["ci95"], 3), entry["n"], entry["over"]
      (2.0, 2.484, 3, 'seeds')
    """
    parts = [np.asarray(values, dtype=np.float64).ravel() for values in seed_values]
    if len(parts) == 1:
        return {**interval(parts[0]), "over": "tasks"}
    from scipy import stats  # a dependency already; imported here to keep `metax` startup light

    with np.errstate(invalid="ignore", over="ignore"):
        means = np.array([part.mean() if part.size else np.nan for part in parts])
        k = means.size
        half = float(stats.t.ppf(0.975, k - 1) * means.std(ddof=1) / math.sqrt(k))
    return {"mean": float(means.mean()), "ci95": half, "n": int(k), "over": "seeds"}


def describe_interval(entry: dict) -> str:
    """What an interval is over, for table headers and notes: "t over 3 seeds" or "500 tasks"."""
    if entry.get("over") == "seeds":
        return f"t over {entry['n']} seed means"
    return f"normal over {entry.get('n', '?')} tasks of 1 seed"


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
