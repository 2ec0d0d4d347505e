"""Reading MNIST from the IDX files (or an `.npz`) a user already has (no download).

LeCun, Bottou, Bengio, Haffner. "Gradient-based learning applied to document
recognition", Proc. IEEE 1998; the IDX format is described at
http://yann.lecun.com/exdb/mnist/. An IDX file is a 4-byte magic number (two zero
bytes, a type code, the number of dimensions), one big-endian int32 per dimension, then
the data in row-major order, big-endian.

The reader also accepts the byte-swapped layout that tools writing native little-endian
integers produce (magic bytes `ndim, code, 0, 0`, little-endian dimensions and data): the
two layouts cannot be confused, since a valid magic number has its two zero bytes at one
end only. Gzipped files are recognised by their content (`1f 8b`), whatever their name.
"""

import gzip
import os
import zlib
from typing import Optional, Sequence

import numpy as np

# IDX type code -> numpy dtype, without byte order (the file's layout sets it).
IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: "i2", 0x0C: "i4", 0x0D: "f4", 0x0E: "f8"}

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.startswith(_GZIP_MAGIC):
        if path.endswith(".gz"):
            raise ValueError(
                f"{path} ends in .gz but is not gzip-compressed (it starts with {raw[:4]!r}, not "
                "1f 8b); rename it without .gz if it is a plain IDX file."
            )
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
        raise ValueError(
            f"{path}: the gzip stream is corrupt or truncated ({len(raw)} compressed bytes; "
            f"{error}). Re-download or re-compress the file."
        ) from None


def _parse_magic(path: str, raw: bytes) -> tuple[str, int, int]:
    """Returns `(byte order, type code, number of dimensions)` from the first 4 bytes."""
    if len(raw) < 4:
        raise ValueError(f"{path} is not an IDX file: it has {len(raw)} bytes, fewer than the 4 of the magic number.")
    if raw[0] == 0 and raw[1] == 0:
        order, code, ndim = ">", raw[2], raw[3]
    elif raw[2] == 0 and raw[3] == 0 and raw[1] in IDX_DTYPES:
        order, code, ndim = "<", raw[1], raw[0]  # int32 0x00000803 written little-endian
    else:
        raise ValueError(
            f"{path} is not an IDX file: its magic number must be two zero bytes, a type code and "
            f"the number of dimensions (e.g. 00 00 08 03), got {raw[:4].hex(' ')}."
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x} in the magic number; known codes: {known}.")
    if ndim < 1:
        raise ValueError(f"{path}: the magic number declares {ndim} dimensions; an IDX array has at least one.")
    return order, code, ndim


def load_idx(path: str) -> np.ndarray:
    """Reads one IDX file (plain or gzipped) into an array of its declared shape and type.

    Args:
      path: the file; gzip is detected from the content, so `.gz` in the name is optional.

    Returns:
      The array in native byte order, with the shape and dtype the header declares.

    Raises:
      ValueError: naming the file and the numbers at fault, if the magic number, type code
        or dimensions are invalid, the gzip stream is corrupt, or the data is shorter or
        longer than the header declares.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny-idx1-ubyte")
      >>> with open(path, "wb") as f:  # magic 00 00 08 01 (uint8, 1 dim), size 3, data
      ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
      >>> metax.data.load_idx(path)
      array([7, 2, 1], dtype=uint8)
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    order, code, ndim = _parse_magic(path, raw)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(
            f"{path}: truncated header: {ndim} dimensions need {header} header bytes, the file has {len(raw)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, order + "i4", count=ndim, offset=4))
    if min(shape) < 0:
        raise ValueError(
            f"{path}: the header declares a negative dimension, shape {shape}; the file is corrupt."
        )
    dtype = np.dtype(order + IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "followed by extra bytes"
        raise ValueError(
            f"{path}: the header declares shape {shape} of {dtype.name} ({expected} bytes) but "
            f"{found} bytes follow; the file is {what} or not an IDX file."
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(folder: str, stem: str) -> Optional[str]:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


def check_labelled(images: np.ndarray, labels: np.ndarray, images_from: str, labels_from: str) -> None:
    """Raises unless `labels` are one integer per image.

    Args:
      images, labels: the arrays; `images_from` / `labels_from` name where each came from
        (a file, an `.npz` key) for the error message.
    """
    if labels.ndim != 1:
        raise ValueError(f"{labels_from} must hold one label per example, shape (n,); got shape {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_from} must hold integer class labels, got dtype {labels.dtype}.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_from} has {images.shape[0]} images but {labels_from} has {labels.shape[0]} labels; "
            "they must pair up one to one."
        )
    if labels.size and labels.min() < 0:
        raise ValueError(f"{labels_from} holds a negative label ({labels.min()}); class labels must be >= 0.")


def _as_unit_floats(images: np.ndarray) -> np.ndarray:
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return images.astype(np.float32) / scale


def load_mnist(folder: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images and labels from the IDX files in `folder`.

    Args:
      folder: a directory holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
        `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each may end in `.gz`; the
        `train-images.idx3-ubyte` spelling works too).
      split: "train", "test", or "all" (both, concatenated: few-shot studies split by class).

    Returns:
      `(images, labels)`: float32 images in [0, 1] of shape `(n, rows, cols)` and int32
      labels of shape `(n,)`.

    Raises:
      FileNotFoundError: naming the file that is missing.
      ValueError: for a bad split, a malformed file, or images and labels that disagree.

    Example:
      >>> import os, tempfile
      >>> folder = tempfile.mkdtemp()
      >>> def write_idx(name, array):
      ...     header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
      ...     with open(os.path.join(folder, name), "wb") as f:
      ...         _ = f.write(header + array.astype(np.uint8).tobytes())
      >>> write_idx("train-images-idx3-ubyte", np.full((2, 3, 3), 255))
      >>> write_idx("train-labels-idx1-ubyte", np.array([4, 9]))
      >>> images, labels = metax.data.load_mnist(folder, "train")
      >>> images.shape, images.dtype, float(images.max()), labels
      ((2, 3, 3), dtype('float32'), 1.0, array([4, 9], dtype=int32))
    """
    if split == "all":
        parts = [load_mnist(folder, name) for name in MNIST_FILES]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES) + ['all']}, got {split!r}.")
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
    if images.ndim != 3:
        raise ValueError(f"{paths[0]} must hold (n, rows, cols) images; got shape {images.shape}.")
    check_labelled(images, labels, paths[0], paths[1])
    return _as_unit_floats(images), labels.astype(np.int32)


NPZ_KEY_PAIRS = (("x", "y"), ("images", "labels"), ("x_train", "y_train"))


def load_labelled_npz(
    path: str, *, x_key: Optional[str] = None, y_key: Optional[str] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (or feature vectors) and integer labels from an `.npz` file.

    Without `x_key` / `y_key` the first pair present of `("x", "y")`, `("images",
    "labels")` and `("x_train", "y_train")` is read; for the last one (the layout of
    keras' `mnist.npz`) `x_test` / `y_test` are appended when present, since few-shot
    studies split by class, not by the file's train/test split.

    Args:
      path: the `.npz` file (`numpy.savez` / `savez_compressed`).
      x_key, y_key: the keys to read instead of the defaults (give both).

    Returns:
      `(x, y)`: `x` as float32 (uint8 images scaled to [0, 1]) with its stored shape, e.g.
      `(n, rows, cols)`, and int32 labels `(n,)`.

    Raises:
      FileNotFoundError: if there is no such file.
      KeyError: naming the keys the file has, if the expected ones are missing.
      ValueError: if the labels are not one non-negative integer per example.

    Example:
      >>> import os, tempfile
      >>> path = os.path.join(tempfile.mkdtemp(), "tiny.npz")
      >>> np.savez(path, images=np.full((3, 2, 2), 255, np.uint8), labels=np.array([0, 1, 1]))
      >>> x, y = metax.data.load_labelled_npz(path)
      >>> x.shape, x.dtype, float(x.max()), y
      ((3, 2, 2), dtype('float32'), 1.0, array([0, 1, 1], dtype=int32))
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No .npz file at {path!r}.")
    if (x_key is None) != (y_key is None):
        raise ValueError(f"Give both x_key and y_key or neither; got x_key={x_key!r}, y_key={y_key!r}.")
    with np.load(path, allow_pickle=False) as archive:
        keys = sorted(archive.files)
        pairs: Sequence[tuple[str, str]] = NPZ_KEY_PAIRS if x_key is None else ((x_key, y_key),)
        pair = next((p for p in pairs if p[0] in archive.files and p[1] in archive.files), None)
        if pair is None:
            wanted = " or ".join(f"({a!r}, {b!r})" for a, b in pairs)
            raise KeyError(f"{path} has keys {keys}; expected {wanted}. Name them with x_key= and y_key=.")
        x, y = archive[pair[0]], archive[pair[1]]
        if pair == ("x_train", "y_train") and x_key is None and {"x_test", "y_test"} <= set(archive.files):
            check_labelled(archive["x_test"], archive["y_test"], f"{path}['x_test']", f"{path}['y_test']")
            x = np.concatenate([x, archive["x_test"]])
            y = np.concatenate([y, archive["y_test"]])
    check_labelled(x, y, f"{path}[{pair[0]!r}]", f"{path}[{pair[1]!r}]")
    return _as_unit_floats(x), y.astype(np.int32)
