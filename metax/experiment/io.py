"""Run outputs that never lose data: atomic writes (re-exported from `metax.utils.io`,
where the library's own writers find them too) and overwrite refusal for study scripts."""

import argparse
import os
from typing import Any

from metax.utils.io import atomic_write
from metax.utils.io import dumps_json
from metax.utils.io import json_float
from metax.utils.io import read_json as _read_json
from metax.utils.io import save_npz_atomic
from metax.utils.io import write_json_atomic
from metax.utils.io import write_text_atomic

__all__ = [
    "atomic_write",
    "dumps_json",
    "json_float",
    "read_json",
    "read_npz",
    "refuse_overwrite",
    "save_npz_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def read_json(path: str) -> Any:
    """The JSON value in `path`, or a `ConfigError` that names the file.

    Raises:
      ConfigError: naming the file, for one that cannot be read or is not valid JSON
        (truncated, zero bytes, edited by hand), instead of a bare JSONDecodeError.

    Example:
      >>> read_json("runs/sinusoid-maml/summary.json")["steps"]  # doctest: +SKIP
      10000
    """
    from metax.experiment.errors import ConfigError

    try:
        return _read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(
            f"{path} cannot be read as JSON ({type(error).__name__}: {error}); the file is damaged: "
            "restore it, or rerun the run it belongs to into a new folder."
        ) from error


def read_npz(path: str) -> dict:
    """The arrays of an `.npz` file, loaded in full.

    Raises:
      ConfigError: naming the file, for one that is missing, truncated or not an `.npz`.
    """
    import numpy as np

    from metax.experiment.errors import ConfigError

    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except Exception as error:  # zipfile, numpy and OS errors all mean "damaged or missing"
        raise ConfigError(f"{path} cannot be read ({type(error).__name__}: {error}); the file is damaged or missing.") from error


def refuse_overwrite(parser: argparse.ArgumentParser, out: str, overwrite: bool, name: str = "metrics.json") -> None:
    """Exits with status 2 (argparse's usage error) if `out/name` exists and `overwrite` is off.

    Example:
      >>> import argparse, tempfile
      >>> metax.experiment.refuse_overwrite(argparse.ArgumentParser(), tempfile.mkdtemp(), overwrite=False)  # nothing there: fine
    """
    if os.path.exists(os.path.join(out, name)) and not overwrite:
        parser.error(f"{os.path.join(out, name)} exists; pass --overwrite or choose another --out")
