"""The runner's errors: bad configs and input (exit code 2) and runs that fail (exit code 3)."""

from typing import Iterable, Optional

from metax.utils.names import did_you_mean  # noqa: F401  (the runner's errors use it; dynamics too)


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
    """A run that started and could not go on (e.g. a non-finite loss); exit status 3.

    Example:
      >>> issubclass(metax.experiment.RunError, RuntimeError)
      True
    """


def unknown_name(kind: str, value: str, choices: Iterable[str], where: Optional[str] = None) -> ConfigError:
    """The error for a name that is not among `choices`: the nearest one and the list."""
    choices = sorted(choices)
    prefix = f"{where}: " if where else ""
    return ConfigError(
        f"{prefix}unknown {kind} {value!r}{did_you_mean(value, choices)}; known: {', '.join(choices)}."
    )
