"""Labelled images from a folder tree `root/<group>/<class>/*.png`, read once and cached.

This is the layout of Omniglot (Lake, Salakhutdinov, Tenenbaum. "Human-level concept
learning through probabilistic program induction", Science 2015,
https://github.com/brendenlake/omniglot): `images_background/<alphabet>/<character>/*.png`.
Every `<group>/<class>` folder is one class.

Decoding tens of thousands of small PNGs takes a while, so the arrays are cached in one
`.npz` file per (tree, options) in the cache folder (see `default_cache_dir`), never
inside the data tree. The cache records a fingerprint of the tree (every image's relative
path, size and modification time) and is rebuilt when the tree changes.
"""

import hashlib
import json
import os
from typing import Optional, Union

import numpy as np

from metax.utils.io import save_npz_atomic

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
CACHE_VERSION = 1


def default_cache_dir() -> str:
    """The folder metax caches decoded data sets in.

    `$METAX_CACHE_DIR` if set, else `$XDG_CACHE_HOME/metax`, else `~/.cache/metax`.

    Example:
      >>> import os
      >>> saved = os.environ.get("METAX_CACHE_DIR")
      >>> os.environ["METAX_CACHE_DIR"] = "/tmp/my-metax-cache"
      >>> metax.data.default_cache_dir()
      '/tmp/my-metax-cache'
      >>> _ = os.environ.pop("METAX_CACHE_DIR") if saved is None else os.environ.update(METAX_CACHE_DIR=saved)
    """
    if os.environ.get("METAX_CACHE_DIR"):
        return os.environ["METAX_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "metax")


def _scan(root: str) -> tuple[list[str], list[list[str]]]:
    """Class names `group/class` (sorted) and each class's image paths relative to root."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"No image folder at {root!r}; expected root/<group>/<class>/*.png.")
    names, files, empty = [], [], []
    for group in sorted(os.listdir(root)):
        group_dir = os.path.join(root, group)
        if not os.path.isdir(group_dir) or group.startswith("."):
            continue
        for cls in sorted(os.listdir(group_dir)):
            class_dir = os.path.join(group_dir, cls)
            if not os.path.isdir(class_dir) or cls.startswith("."):
                continue
            images = sorted(
                f for f in os.listdir(class_dir)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(class_dir, f))
            )
            if not images:
                empty.append(class_dir)
                continue
            names.append(f"{group}/{cls}")
            files.append([os.path.join(group, cls, f) for f in images])
    if not names:
        raise ValueError(
            f"No images under {root!r}: expected the layout root/<group>/<class>/*.png (e.g. Omniglot's "
            "images_background/<alphabet>/<character>/*.png), with image files two folders down."
        )
    if empty:
        raise ValueError(
            f"The class folder {empty[0]!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})"
            f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; remove it or add its images."
        )
    return names, files


def _fingerprint(root: str, files: list[list[str]], options: dict) -> str:
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **options}, sort_keys=True).encode())
    for class_files in files:
        for rel in class_files:
            stat = os.stat(os.path.join(root, rel))
            digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(root: str, rel: str, size: Optional[tuple[int, int]], grayscale: bool, invert: bool) -> np.ndarray:
    from PIL import Image  # Pillow comes with matplotlib; imported only when reading images

    path = os.path.join(root, rel)
    try:
        with Image.open(path) as image:
            image = image.convert("L" if grayscale else "RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(image, np.float32) / 255.0
    except OSError as error:
        raise ValueError(f"Cannot read the image {path!r}: {error}.") from None
    if grayscale:
        array = array[..., None]
    return 1.0 - array if invert else array


def load_image_folder(
    root: str,
    *,
    size: Optional[Union[int, tuple[int, int]]] = None,
    grayscale: bool = True,
    invert: bool = False,
    cache: bool = True,
    cache_dir: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads `root/<group>/<class>/*` images into arrays, one label per class folder.

    The first call decodes every image and writes the arrays to
    `<cache_dir>/image_folder-<hash>.npz`, where the hash covers the absolute path of `root`
    and the options; later calls load that file unless an image was added, removed,
    resized or touched since (then the cache is rebuilt). Nothing is written inside `root`.

    Args:
      root: the tree's top folder.
      size: resize every image to `(height, width)` (an int for squares), e.g. 28 for
        Omniglot; without it all images must share one size.
      grayscale: decode to one channel (else RGB, three).
      invert: return `1 - pixel` (Omniglot draws black strokes on white).
      cache: read and write the cache; False decodes every time and writes nothing.
      cache_dir: where the cache lives; default `default_cache_dir()` (`$METAX_CACHE_DIR`,
        else `$XDG_CACHE_HOME/metax`, else `~/.cache/metax`).

    Returns:
      `(x, y, class_names)`: float32 images in [0, 1] of shape `(n, height, width,
      channels)`, int32 labels `(n,)` indexing `class_names` (`"group/class"`, sorted).

    Raises:
      FileNotFoundError: if `root` is not a folder.
      ValueError: naming the folder or file at fault: no images at all, an empty class
        folder, an unreadable image, or images of different sizes without `size`.

    Example:
      >>> import os, tempfile
      >>> from PIL import Image
      >>> root = tempfile.mkdtemp()
      >>> for cls in ("a", "b"):
      ...     os.makedirs(os.path.join(root, "alphabet", cls))
      ...     for i in range(2):
      ...         Image.new("L", (6, 6), 255).save(os.path.join(root, "alphabet", cls, f"{i}.png"))
      >>> x, y, names = metax.data.load_image_folder(root, size=4, invert=True, cache=False)
      >>> x.shape, y, names, float(x.max())
      ((4, 4, 4, 1), array([0, 0, 1, 1], dtype=int32), ['alphabet/a', 'alphabet/b'], 0.0)
    """
    root = os.path.abspath(os.fspath(root))
    if isinstance(size, int):
        size = (size, size)
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}.")
    names, files = _scan(root)
    options = {"root": root, "size": None if size is None else list(size), "grayscale": grayscale, "invert": invert}
    fingerprint = _fingerprint(root, files, options)
    cache_path = None
    if cache:
        key = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:20]
        cache_path = os.path.join(cache_dir or default_cache_dir(), f"image_folder-{key}.npz")
        cached = _read_cache(cache_path, fingerprint)
        if cached is not None:
            return cached
    images, labels = [], []
    for label, class_files in enumerate(files):
        for rel in class_files:
            image = _decode(root, rel, size, grayscale, invert)
            if images and image.shape != images[0].shape:
                raise ValueError(
                    f"{os.path.join(root, rel)!r} is {image.shape[1]}x{image.shape[0]} but "
                    f"{os.path.join(root, files[0][0])!r} is {images[0].shape[1]}x{images[0].shape[0]}; "
                    "pass size=(height, width) to resize them all."
                )
            images.append(image)
            labels.append(label)
    x, y = np.stack(images), np.asarray(labels, np.int32)
    if cache_path is not None:
        _write_cache(cache_path, x, y, names, fingerprint)
    return x, y, names


def _read_cache(path: str, fingerprint: str) -> Optional[tuple[np.ndarray, np.ndarray, list[str]]]:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["fingerprint"]) != fingerprint:
                return None
            return archive["x"], archive["y"], [str(n) for n in archive["class_names"]]
    except (OSError, KeyError, ValueError):
        return None  # an unreadable cache is rebuilt, never trusted


def _write_cache(path: str, x: np.ndarray, y: np.ndarray, names: list[str], fingerprint: str) -> None:
    """Writes beside `path` and renames, so a reader never sees half a cache."""
    save_npz_atomic(path, {"x": x, "y": y, "class_names": np.asarray(names), "fingerprint": np.asarray(fingerprint)})
