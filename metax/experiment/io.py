"""Run outputs that never lose data: atomic writes (re-exported from `metax.utils.io`,
where the library's own writers find them too) and overwrite refusal for study scripts."""

import argparse
import os

from metax.utils.io import atomic_write
from metax.utils.io import dumps_json
from metax.utils.io import json_float
from metax.utils.io import read_json
from metax.utils.io import save_npz_atomic
from metax.utils.io import write_json_atomic
from metax.utils.io import write_text_atomic

__all__ = [
    "atomic_write",
    "dumps_json",
    "json_float",
    "read_json",
    "refuse_overwrite",
    "save_npz_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def refuse_overwrite(parser: argparse.ArgumentParser, out: str, overwrite: bool, name: str = "metrics.json") -> None:
    """Exits with status 2 (argparse's usage error) if `out/name` exists and `overwrite` is off.

    Example:
      >>> import argparse, tempfile
      >>> metax.experiment.refuse_overwrite(argparse.ArgumentParser(), tempfile.mkdtemp(), overwrite=False)  # nothing there: fine
    """
    if os.path.exists(os.path.join(out, name)) and not overwrite:
        parser.error(f"{os.path.join(out, name)} exists; pass --overwrite or choose another --out")
