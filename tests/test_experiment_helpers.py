"""Shared study helpers: intervals, tables and checked argparse types."""

import argparse

import numpy as np
import pytest
import scipy.stats

from metax.experiment import format_interval, interval, markdown_table
from metax.experiment.args import comma_list, non_negative_float, positive_int, study_parser


def test_interval_is_the_normal_95_percent_interval_of_the_mean():
    values = np.random.default_rng(0).normal(3.0, 2.0, size=57)
    entry = interval(values)
    low, high = scipy.stats.norm.interval(0.95, loc=values.mean(), scale=scipy.stats.sem(values))
    assert entry["n"] == 57 and entry["mean"] == pytest.approx(values.mean())
    assert entry["ci95"] == pytest.approx((high - low) / 2, rel=1e-9)
    assert np.isnan(interval([1.0])["ci95"]) and interval([])["n"] == 0
    assert np.isinf(interval([1.0, np.inf])["mean"])  # a diverged task shows, it is not dropped
    assert format_interval({"mean": 0.12345, "ci95": 0.01}) == "0.123 ± 0.010"


def test_markdown_table():
    assert markdown_table(["a", "b"], [[1, "x"]]).splitlines() == ["| a | b |", "| --- | ---: |", "| 1 | x |"]


def test_argparse_types_check_values():
    parser = study_parser("demo", "runs/demo")
    parser.add_argument("--k", type=positive_int, default=1)
    parser.add_argument("--levels", type=comma_list(non_negative_float), default="0,1")
    args = parser.parse_args(["--levels", "0.5, 2"])
    assert args.levels == [0.5, 2.0] and args.out == "runs/demo" and args.seed == 0 and args.k == 1
    assert parser.parse_args([]).levels == [0.0, 1.0]  # string defaults are parsed too
    for bad in (["--k", "0"], ["--k", "two"], ["--levels", "1,-1"], ["--levels", ","], ["--seed", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="expected an int > 0, got 0"):
        positive_int("0")
