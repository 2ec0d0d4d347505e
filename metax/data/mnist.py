"""Reading MNIST from the IDX files a user already has (no download).

LeCun, Bottou, Bengio, Haffner. "Gradient-based learning applied to document
recognition", Proc. IEEE 1998; the IDX format is described at
http://yann.lecun.com/exdb/mnist/. An IDX file is a 4-byte magic number (two zero
bytes, a type code, the number of dimensions), one big-endian int32 per dimension, then
the data in row-major order. Files may be gzipped.
"""

import gzip
import os
from typing import Optional

import numpy as np

# IDX type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_idx(path: str) -> np.ndarray:
    """Reads one IDX file (plain or `.gz`) into an array of its declared shape and type.

    Raises:
      ValueError: naming the file, if the magic number, type code or size is wrong.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file: it must start with two zero bytes, got {raw[:4]!r}.")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}; known: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes for {ndim} dimensions).")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: the header declares shape {shape} of {dtype.name} ({expected} bytes) but "
            f"{len(raw) - header} bytes follow; the file is truncated or not an IDX file."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


def load_mnist(folder: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images and labels from the IDX files in `folder`.

    Args:
      folder: a directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each may end in `.gz`; the
        `train-images.idx3-ubyte` spelling works too).
      split: "train" or "test".

    Returns:
      `(images, labels)`: float32 images in [0, 1] of shape `(n, rows, cols)` and int32
      labels of shape `(n,)`.

    Raises:
      FileNotFoundError: naming the file that is missing.
      ValueError: for a bad split, a malformed file, or images and labels that disagree.
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}.")
    paths = []
    for stem in MNIST_FILES[split]:
        path = _find(folder, stem)
        if path is None:
            raise FileNotFoundError(
                f"No {stem} (or {stem}.gz) in {folder!r}; point the loader at the folder holding "
                f"the MNIST IDX files ({', '.join(s for pair in MNIST_FILES.values() for s in pair)})."
            )
        paths.append(path)
    images, labels = load_idx(paths[0]), load_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"{paths[0]} must hold (n, rows, cols) images and {paths[1]} (n,) labels; got {images.shape}, {labels.shape}.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{paths[0]} has {images.shape[0]} images but {paths[1]} has {labels.shape[0]} labels.")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images.astype(np.float32) / scale), labels.astype(np.int32)
