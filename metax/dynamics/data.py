"""Image classification data for the sweeps: scikit-learn's 8x8 digits (offline) or MNIST IDX files."""

from typing import NamedTuple, Optional

import numpy as np

from metax.data.mnist import load_mnist

DATASETS = ("digits", "mnist")


class ClassificationData(NamedTuple):
    """Train / validation / test images `(n, H, W, 1)` float32 in [0, 1] and int32 labels `(n,)`.

    Example:
      >>> from metax.dynamics import ClassificationData
      >>> x, y = np.zeros((4, 8, 8, 1), np.float32), np.arange(4, dtype=np.int32)
      >>> data = ClassificationData(x, y, x[:2], y[:2], x[:2], y[:2], num_classes=10)
      >>> data.train_x.shape, data.val_y.tolist(), data.num_classes
      ((4, 8, 8, 1), [0, 1], 10)
    """

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int


def load_classification_data(
    dataset: str = "digits",
    *,
    mnist_path: Optional[str] = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    max_train: Optional[int] = None,
    seed: int = 0,
) -> ClassificationData:
    """Loads and splits the images a sweep trains on.

    Args:
      dataset: "digits" (`sklearn.datasets.load_digits`: 1,797 8x8 images, shipped with
        scikit-learn) or "mnist" (28x28, read from the IDX files in `mnist_path` with
        `metax.data.load_mnist`; its test files give the test split).
      mnist_path: the folder holding the MNIST IDX files; required for "mnist".
      val_fraction, test_fraction: fractions held out of the (shuffled) training images for
        validation and, for digits, for testing.
      max_train: keep at most this many training images (a CPU-sized MNIST sweep).
      seed: the shuffle, fixed so every run of a sweep sees the same split.

    Example:
      >>> from metax.dynamics import load_classification_data
      >>> data = load_classification_data("digits", max_train=100)
      >>> data.train_x.shape, data.val_x.shape, data.test_x.shape, data.num_classes
      ((100, 8, 8, 1), (288, 8, 8, 1), (359, 8, 8, 1), 10)
      >>> float(data.train_x.min()), float(data.train_x.max()), data.train_y.dtype
      (0.0, 1.0, dtype('int32'))
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}.")
    if not 0 < val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) with a sum below 1.")
    if max_train is not None and max_train < 1:
        raise ValueError(f"max_train must be a positive int or None, got {max_train}.")
    rng = np.random.default_rng(seed)
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = (digits.images / 16.0).astype(np.float32)
        labels = digits.target.astype(np.int32)
        order = rng.permutation(len(labels))
        n_test = int(round(test_fraction * len(labels)))
        test, rest = order[:n_test], order[n_test:]
        test_x, test_y = images[test], labels[test]
        images, labels = images[rest], labels[rest]
    else:
        if mnist_path is None:
            raise ValueError("dataset 'mnist' needs mnist_path: the folder holding the MNIST IDX files.")
        images, labels = load_mnist(mnist_path, "train")
        test_x, test_y = load_mnist(mnist_path, "test")
        order = rng.permutation(len(labels))
        images, labels = images[order], labels[order]
    n_val = max(1, int(round(val_fraction * len(labels))))
    train_x, train_y = images[n_val:], labels[n_val:]
    if max_train is not None:
        train_x, train_y = train_x[:max_train], train_y[:max_train]
    return ClassificationData(
        train_x[..., None], train_y, images[:n_val, ..., None], labels[:n_val], test_x[..., None], test_y, 10
    )
