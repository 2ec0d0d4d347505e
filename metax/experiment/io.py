"""Run outputs that never lose data: atomic JSON writes and overwrite refusal."""

import argparse
import json
import os
import tempfile
from typing import Any


def write_json_atomic(path: str, payload: Any) -> None:
    """Writes `payload` as JSON to a temporary file beside `path`, then renames it over
    `path`: readers see the old file or the new one, never half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        try:
            json.dump(payload, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            handle.close()
            os.unlink(handle.name)  # a failed write leaves neither a partial file nor debris
            raise
    # NamedTemporaryFile creates 0600; give the file the mode a plain open() would.
    os.chmod(handle.name, 0o666 & ~_umask())
    os.replace(handle.name, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def refuse_overwrite(parser: argparse.ArgumentParser, out: str, overwrite: bool, name: str = "metrics.json") -> None:
    """Exits with status 2 (argparse's usage error) if `out/name` exists and `overwrite` is off."""
    if os.path.exists(os.path.join(out, name)) and not overwrite:
        parser.error(f"{os.path.join(out, name)} exists; pass --overwrite or choose another --out")
