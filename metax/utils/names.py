"""Suggestions for a misspelt name, shared by the runner's config checker and sweep specs."""

import difflib
from typing import Iterable


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the nearest of `choices`, or "" when none is close."""
    choices = [str(c) for c in choices]
    # A transposition ("adma" for "adam") first: difflib alone would rank "adamax" higher.
    swapped = [c for c in choices if len(c) == len(str(value)) and sorted(c) == sorted(str(value))]
    close = swapped[:1] or difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
