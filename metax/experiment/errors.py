"""The runner's errors: bad configs and input (exit code 2) and runs that fail (exit code 3)."""

import difflib
from typing import Iterable, Optional


class ConfigError(ValueError):
    """A config, a command-line argument or an input the runner cannot use.

    The message says which key or file is at fault and what to do instead; the `metax`
    command prints it without a traceback and exits with status 2.

    Example:
      >>> try:
      ...     metax.experiment.registry("learners").get("mamll")
      ... except metax.experiment.ConfigError as error:
      ...     print("did you mean 'maml'" in str(error))
      True
    """


class RunError(RuntimeError):
    """A run that started and could not go on (e.g. a non-finite loss); exit status 3."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the nearest of `choices`, or "" when none is close."""
    choices = [str(c) for c in choices]
    # A transposition ("adma" for "adam") first: difflib alone would rank "adamax" higher.
    swapped = [c for c in choices if len(c) == len(str(value)) and sorted(c) == sorted(str(value))]
    close = swapped[:1] or difflib.get_close_matches(str(value), choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(kind: str, value: str, choices: Iterable[str], where: Optional[str] = None) -> ConfigError:
    """The error for a name that is not among `choices`: the nearest one and the list."""
    choices = sorted(choices)
    prefix = f"{where}: " if where else ""
    return ConfigError(
        f"{prefix}unknown {kind} {value!r}{did_you_mean(value, choices)}; known: {', '.join(choices)}."
    )
