"""Run outputs that never lose data: atomic JSON writes and overwrite refusal."""

import argparse
import json
import os
import tempfile
from typing import Any


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`:
    readers see the old file or the new one, never half a file. The file gets the usual
    permissions of a new file (0666 less the umask), not the temporary file's 0600."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp", encoding="utf-8") as handle:
        try:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.chmod(handle.name, 0o666 & ~_umask())
        except BaseException:
            handle.close()
            os.unlink(handle.name)  # a failed write leaves neither a partial file nor debris
            raise
    os.replace(handle.name, path)


def write_json_atomic(path: str, payload: Any) -> None:
    """Writes `payload` as JSON, atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2))


def read_json(path: str) -> Any:
    """The JSON value in `path`.

    Raises:
      ConfigError: naming the file, for one that cannot be read or is not valid JSON
        (truncated, zero bytes, edited by hand), instead of a bare JSONDecodeError.

    Example:
      >>> read_json("runs/sinusoid-maml/summary.json")["steps"]  # doctest: +SKIP
      10000
    """
    from metax.experiment.errors import ConfigError

    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_overwrite(parser: argparse.ArgumentParser, out: str, overwrite: bool, name: str = "metrics.json") -> None:
    """Exits with status 2 (argparse's usage error) if `out/name` exists and `overwrite` is off."""
    if os.path.exists(os.path.join(out, name)) and not overwrite:
        parser.error(f"{os.path.join(out, name)} exists; pass --overwrite or choose another --out")


def save_npz_atomic(path: str, arrays: dict) -> None:
    """Writes `arrays` as an `.npz` under a temporary name, then renames it over `path`."""
    import numpy as np

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
