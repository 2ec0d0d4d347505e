"""argparse pieces shared by the study scripts: checked number types, comma lists, and a
parser with the flags every study has (`--out`, `--overwrite`, `--seed`)."""

import argparse
from typing import Callable, Optional


def _number(kind: Callable, low: float, inclusive: bool, what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (value == low and not inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, False, "an int > 0")
non_negative_int = _number(int, 0, True, "an int >= 0")
positive_float = _number(float, 0.0, False, "a number > 0")
non_negative_float = _number(float, 0.0, True, "a number >= 0")


def comma_list(item: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type for `a,b,c`, each part parsed (and checked) by `item`."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        try:
            return [item(part) for part in parts]
        except (argparse.ArgumentTypeError, ValueError) as error:
            raise argparse.ArgumentTypeError(f"in {text!r}: {error}") from None

    return parse


def study_parser(description: str, default_out: str, seed: Optional[int] = 0) -> argparse.ArgumentParser:
    """A parser with `--out` (default `default_out`), `--overwrite` and `--seed`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's results in --out")
    if seed is not None:
        parser.add_argument("--seed", type=non_negative_int, default=seed)
    return parser
