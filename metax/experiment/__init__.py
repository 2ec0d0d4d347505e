"""Running experiments: configs, the registry, the one training loop, the `metax` command.

The library below never reads a config: this package turns one into plain constructor
calls (`build`), trains with `train`, and writes run folders (metrics, checkpoints,
summary, plots).
"""

# The built-in names register on import, before anything can look one up or a plugin can
# register beside them (the registry itself imports no registrations).
from metax.experiment import builtins  # noqa: F401
from metax.experiment.actions import Chunk
from metax.experiment.actions import PeriodicAction
from metax.experiment.build import Experiment
from metax.experiment.build import build
from metax.experiment.components import ModelFactory
from metax.experiment.components import TaskSpec
from metax.experiment.errors import ConfigError
from metax.experiment.errors import RunError
from metax.experiment.io import refuse_overwrite
from metax.experiment.io import save_npz_atomic
from metax.experiment.io import write_json_atomic
from metax.experiment.loop import HeldOutEvaluator
from metax.experiment.loop import TrainResult
from metax.experiment.loop import all_finite
from metax.experiment.loop import watched_metrics
from metax.experiment.registry import load_plugin
from metax.experiment.run import Run
from metax.experiment.run import open_run
from metax.experiment.registry import register
from metax.experiment.registry import registry
from metax.experiment.schema import ExperimentConfig
from metax.experiment.schema import NonNegativeFloat
from metax.experiment.schema import NonNegativeInt
from metax.experiment.schema import PositiveFloat
from metax.experiment.schema import PositiveInt
from metax.experiment.schema import load_config
from metax.experiment.schema import parse_config
from metax.experiment.stats import format_interval
from metax.experiment.stats import interval
from metax.experiment.stats import markdown_table
from metax.experiment.trainer import Trainer
from metax.experiment.trainer import train

__all__ = [
    "Chunk",
    "ConfigError",
    "Experiment",
    "ExperimentConfig",
    "HeldOutEvaluator",
    "ModelFactory",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PeriodicAction",
    "PositiveFloat",
    "PositiveInt",
    "Run",
    "RunError",
    "TaskSpec",
    "TrainResult",
    "Trainer",
    "all_finite",
    "build",
    "format_interval",
    "interval",
    "load_config",
    "load_plugin",
    "markdown_table",
    "open_run",
    "parse_config",
    "refuse_overwrite",
    "register",
    "registry",
    "save_npz_atomic",
    "train",
    "watched_metrics",
    "write_json_atomic",
]
