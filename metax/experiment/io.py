"""Run outputs that never lose data: atomic writes (re-exported from `metax.utils.io`,
where the library's own writers find them too) and the output-folder rule for study scripts."""

import argparse
import fnmatch
import os
from typing import Any, Optional, Sequence

from metax.experiment.folders import contents, listing
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
    "study_folder_problem",
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


def study_folder_problem(out: str, overwrite: bool, writes: Sequence[str] = ("metrics.json",),
                         result: str = "metrics.json") -> Optional[str]:
    """Why a study script may not write into `out`, or None when it may.

    The rule every command that writes follows (`metax.experiment.folders`): `out` is new or
    empty, or holds only what this study writes (an earlier run of it, or one it was stopped
    in). Anything else there is named and refused, even with `--overwrite`, which only
    permits replacing the study's own earlier `result`.

    Args:
      out: the folder the user named with `--out`.
      overwrite: the study's `--overwrite` flag.
      writes: the names (shell patterns, e.g. `"*.png"`) of what the study writes into `out`.
      result: the file whose presence marks a finished earlier run.

    Example:
      >>> import tempfile
      >>> out = tempfile.mkdtemp()
      >>> metax.experiment.io.study_folder_problem(out, overwrite=False) is None  # empty: fine
      True
      >>> _ = open(f"{out}/notes.txt", "w").write("mine")
      >>> print(metax.experiment.io.study_folder_problem(out, overwrite=True).split(";")[0].replace(out, "OUT"))
      --out OUT holds notes.txt, which this study did not write
    """
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} is a file; give a new or empty folder"
    foreign = [entry for entry in contents(out) if not any(fnmatch.fnmatchcase(entry, pattern) for pattern in writes)]
    if foreign:
        return (f"--out {out} holds {listing(foreign)}, which this study did not write; choose a new or empty folder "
                "(nothing was changed)")
    if os.path.exists(os.path.join(out, result)) and not overwrite:
        return f"{os.path.join(out, result)} exists; pass --overwrite or choose another --out"
    return None


def refuse_overwrite(parser: argparse.ArgumentParser, out: str, overwrite: bool, name: str = "metrics.json",
                     writes: Optional[Sequence[str]] = None) -> None:
    """Exits with status 2 (argparse's usage error) when the study may not write into `out`:
    see `study_folder_problem` (`writes` defaults to `name` alone).

    Example:
      >>> import argparse, tempfile
      >>> metax.experiment.refuse_overwrite(argparse.ArgumentParser(), tempfile.mkdtemp(), overwrite=False)  # nothing there: fine
    """
    problem = study_folder_problem(out, overwrite, (name,) if writes is None else writes, name)
    if problem is not None:
        parser.error(problem)
