"""Datasets, task families and meta-batch samplers."""

from metax.data.base import Dataset
from metax.data.base import MetaDataset
from metax.data.base import check_metabatch
from metax.data.base import get_batch
from metax.data.base import split_dataset
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
    "Dataset",
    "FAMILY_NAMES",
    "MetaBatchStream",
    "MetaDataset",
    "SyntheticMetaDataloader",
    "TASK_FAMILIES",
    "check_metabatch",
    "create_synthetic_metadataset",
    "family",
    "get_batch",
    "get_task_family",
    "linear",
    "load_mnist",
    "make_task_sampler",
    "sample_metabatch",
    "sinusoid",
    "split_dataset",
]
