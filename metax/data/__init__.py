"""Datasets, task families and meta-batch samplers."""

from metax.data.base import Dataset
from metax.data.base import MetaDataset
from metax.data.base import check_metabatch
from metax.data.base import get_batch
from metax.data.base import split_dataset
from metax.data.digits import load_digits
from metax.data.fewshot import SPLITS
from metax.data.fewshot import ClassArrays
from metax.data.fewshot import FewShotSplits
from metax.data.fewshot import arrange_by_class
from metax.data.fewshot import sample_class_batch
from metax.data.fewshot import sample_fewshot_task
from metax.data.folder import default_cache_dir
from metax.data.folder import load_image_folder
from metax.data.mnist import load_idx
from metax.data.omniglot import OmniglotData
from metax.data.omniglot import alphabet_classes
from metax.data.omniglot import load_omniglot
from metax.data.omniglot_runs import LakeRuns
from metax.data.omniglot_runs import LakeScore
from metax.data.omniglot_runs import PUBLISHED_LAKE_ERRORS
from metax.data.omniglot_runs import lake_score
from metax.data.omniglot_runs import load_lake_runs
from metax.data.omniglot_runs import pixel_nearest_neighbour
from metax.data.omniglot_runs import score_lake_runs
from metax.data.mnist import load_labelled_npz
from metax.data.mnist import load_mnist
from metax.data.stream import MetaBatchStream
from metax.data.stream import sample_metabatch
from metax.data.synthetic import SyntheticMetaDataloader
from metax.data.synthetic import create_synthetic_metadataset
from metax.data.tasks import FAMILY_NAMES
from metax.data.tasks import TASK_FAMILIES
from metax.data.tasks import family
from metax.data.tasks import get_task_family
from metax.data.tasks import linear
from metax.data.tasks import make_task_sampler
from metax.data.tasks import sinusoid

__all__ = [
    "ClassArrays",
    "Dataset",
    "FAMILY_NAMES",
    "FewShotSplits",
    "LakeRuns",
    "LakeScore",
    "MetaBatchStream",
    "MetaDataset",
    "OmniglotData",
    "PUBLISHED_LAKE_ERRORS",
    "SPLITS",
    "SyntheticMetaDataloader",
    "TASK_FAMILIES",
    "alphabet_classes",
    "arrange_by_class",
    "check_metabatch",
    "create_synthetic_metadataset",
    "default_cache_dir",
    "family",
    "get_batch",
    "get_task_family",
    "lake_score",
    "linear",
    "load_digits",
    "load_idx",
    "load_image_folder",
    "load_labelled_npz",
    "load_lake_runs",
    "load_mnist",
    "load_omniglot",
    "make_task_sampler",
    "pixel_nearest_neighbour",
    "sample_class_batch",
    "sample_fewshot_task",
    "sample_metabatch",
    "score_lake_runs",
    "sinusoid",
    "split_dataset",
]
