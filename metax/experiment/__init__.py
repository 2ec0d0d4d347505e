"""Running experiments: output handling shared by the study scripts."""

from metax.experiment.io import refuse_overwrite
from metax.experiment.io import write_json_atomic

__all__ = [
    "refuse_overwrite",
    "write_json_atomic",
]
