"""Optimisation dynamics: log many training runs, learn to predict them, train faster.

Seed 002 (MetaLearner): sweeps of small classifiers whose per-step dynamics are logged
inside the compiled step (`training`), a Parquet dataset of those dynamics (`dataset`), a
meta-predictor of the loss ahead and of convergence (`predictor`), and a learning-rate
controller that uses it during a new run (`controller`). `run_sweep(SweepSpec, out_dir)`
is the entry point of `metax sweep SPEC.yaml`.
"""

from metax.dynamics.architectures import ACTIVATION_NAMES
from metax.dynamics.architectures import KINDS
from metax.dynamics.architectures import OPTIMIZER_NAMES
from metax.dynamics.architectures import Architecture
from metax.dynamics.architectures import SmallConvNet
from metax.dynamics.architectures import build_network
from metax.dynamics.architectures import make_optimizer
from metax.dynamics.controller import LRController
from metax.dynamics.controller import train_with_controller
from metax.dynamics.data import ClassificationData
from metax.dynamics.data import load_classification_data
from metax.dynamics.dataset import assign_splits
from metax.dynamics.dataset import build_dataset
from metax.dynamics.dataset import dataset_schema
from metax.dynamics.dataset import dataset_settings
from metax.dynamics.dataset import epochs_to_target
from metax.dynamics.dataset import read_dataset
from metax.dynamics.dataset import split_tables
from metax.dynamics.dataset import write_dataset
from metax.dynamics.predictor import FEATURE_NAMES
from metax.dynamics.predictor import Predictor
from metax.dynamics.predictor import PredictorConfig
from metax.dynamics.predictor import evaluate_predictor
from metax.dynamics.predictor import features
from metax.dynamics.predictor import fit_predictor
from metax.dynamics.predictor import linear_extrapolation
from metax.dynamics.predictor import predict
from metax.dynamics.spec import RunConfig
from metax.dynamics.spec import SpecError
from metax.dynamics.spec import SweepSpec
from metax.dynamics.spec import load_sweep_spec
from metax.dynamics.sweep import RunLog
from metax.dynamics.sweep import SweepResult
from metax.dynamics.sweep import load_run
from metax.dynamics.sweep import load_sweep
from metax.dynamics.sweep import run_sweep
from metax.dynamics.training import RunState
from metax.dynamics.training import TrainResult
from metax.dynamics.training import init_runs
from metax.dynamics.training import layer_norms
from metax.dynamics.training import make_epoch_fn
from metax.dynamics.training import train_runs

__all__ = [
    "ACTIVATION_NAMES",
    "Architecture",
    "ClassificationData",
    "FEATURE_NAMES",
    "KINDS",
    "LRController",
    "OPTIMIZER_NAMES",
    "Predictor",
    "PredictorConfig",
    "RunConfig",
    "RunLog",
    "RunState",
    "SmallConvNet",
    "SpecError",
    "SweepResult",
    "SweepSpec",
    "TrainResult",
    "assign_splits",
    "build_dataset",
    "build_network",
    "dataset_schema",
    "dataset_settings",
    "epochs_to_target",
    "evaluate_predictor",
    "features",
    "fit_predictor",
    "init_runs",
    "layer_norms",
    "linear_extrapolation",
    "load_classification_data",
    "load_run",
    "load_sweep",
    "load_sweep_spec",
    "make_epoch_fn",
    "make_optimizer",
    "predict",
    "read_dataset",
    "run_sweep",
    "split_tables",
    "train_runs",
    "train_with_controller",
    "write_dataset",
]
