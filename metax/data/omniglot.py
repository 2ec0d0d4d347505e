"""Omniglot as users have it: the repository's zip files (or unpacked trees), split by alphabet.

Omniglot (Lake, Salakhutdinov, Tenenbaum. "Human-level concept learning through
probabilistic program induction", Science 350(6266), 2015; data and code under the MIT
license at https://github.com/brendenlake/omniglot) holds 1,623 handwritten characters
of 50 alphabets, each drawn by 20 people, as 105x105 black-on-white PNGs laid out
`images_background/<alphabet>/<character>/<id>_<drawer>.png`. This module reads the
background / evaluation sets, `images_background*.zip` or their unpacked folders
(`load_omniglot`): decoded once at a chosen size (28x28, the literature's, by default),
ink = 1.0 on a 0.0 background, and cached in metax's cache folder (see
`metax.data.default_cache_dir`); several sources combine into one set, a character
present in more than one (Greek and Latin are in both "minimal" sets) counted once.
Lake et al.'s 20 one-shot runs (`all_runs.zip`) and their scoring are in
`metax.data.omniglot_runs`.

Splits are made by alphabet (`alphabet_classes`): a random split of characters would
let alphabet style leak into the held-out classes. Rotation augmentation (four classes
per character, turned by 0/90/180/270 degrees; `metax.data.FewShotSplits(rotations=
True)`) is the task builder's choice; metax's `omniglot` task applies it to the
meta-train split only by default (held-out alphabets and Lake's runs are scored on
upright characters).

Example:
  >>> data = metax.data.load_omniglot(["images_background_small1.zip", "images_background_small2.zip"])
  >>> len(data.class_names), len(data.alphabets), data.x.shape
  (242, 8, (4840, 28, 28, 1))
  >>> classes = metax.data.alphabet_classes(data, test=["Korean", "Tagalog"], valid=["Balinese"])
  >>> splits = metax.data.FewShotSplits(data.x, data.y, classes=classes)
"""

import difflib
import hashlib
import io
import json
import os
import zipfile
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from metax.data.folder import _read_cache, _write_cache, default_cache_dir

CACHE_VERSION = 1
PathLike = Union[str, os.PathLike]


class OmniglotData(NamedTuple):
    """Omniglot characters as arrays.

    Attributes:
      x: float32 images `(n, size, size, 1)`, ink 1.0 on background 0.0.
      y: int32 labels `(n,)` indexing `class_names`.
      class_names: `"alphabet/character"` per label, sorted.
      alphabets: the alphabets, sorted.
      class_alphabet: int32 `(classes,)`: each class's index into `alphabets`.

    Example:
      >>> data = metax.data.OmniglotData(
      ...     x=np.zeros((2, 28, 28, 1), np.float32), y=np.array([0, 1], np.int32),
      ...     class_names=("Greek/character01", "Latin/character01"),
      ...     alphabets=("Greek", "Latin"), class_alphabet=np.array([0, 1], np.int32))
      >>> [data.alphabets[a] for a in data.class_alphabet]
      ['Greek', 'Latin']
    """

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    alphabets: tuple[str, ...]
    class_alphabet: np.ndarray


def _is_png(name: str) -> bool:
    return name.lower().endswith(".png")


def _source_files(source: str) -> tuple[str, list[str]]:
    """`(kind, relative PNG paths)` of a zip file or folder, checked for the layout."""
    if os.path.isdir(source):
        names = []
        for folder, dirs, files in os.walk(source):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = os.path.relpath(folder, source)
            names += [os.path.join(rel, f).replace(os.sep, "/").removeprefix("./") for f in sorted(files) if _is_png(f)]
        kind = "folder"
    elif os.path.isfile(source):
        try:
            with zipfile.ZipFile(source) as archive:
                names = [n for n in archive.namelist() if _is_png(n) and not n.startswith("__MACOSX/")]
        except zipfile.BadZipFile as error:
            raise ValueError(f"{source!r} is not a readable zip file ({error}); give Omniglot's zip or its unpacked folder.") from None
        kind = "zip"
    else:
        raise FileNotFoundError(f"No Omniglot zip file or folder at {source!r}.")
    return kind, sorted(names)


def _layout(source: str, names: list[str]) -> dict[str, list[str]]:
    """`{"alphabet/character": [relative PNG paths]}`: every PNG must sit at
    `[prefix/]<alphabet>/<character>/<file>.png`, with one prefix for the whole source."""
    expected = "[<top folder>/]<alphabet>/<character>/*.png (e.g. images_background/Greek/character01/0394_01.png)"
    if not names:
        raise ValueError(f"{source!r} holds no PNG images; expected the Omniglot layout {expected}.")
    prefixes = {tuple(n.split("/")[:-3]) for n in names}
    shallow = [n for n in names if n.count("/") < 2]
    if shallow or len(prefixes) != 1:
        bad = shallow[0] if shallow else sorted(names, key=lambda n: n.count("/"))[-1]
        raise ValueError(
            f"{source!r} does not have the Omniglot layout {expected}: {bad!r} is not two folders below a common "
            "top folder; give the zip as downloaded or the folder holding the alphabet folders."
        )
    classes: dict[str, list[str]] = {}
    for name in names:
        alphabet, character = name.split("/")[-3:-1]
        classes.setdefault(f"{alphabet}/{character}", []).append(name)
    return classes


def _decode_png(data: bytes, where: str, size: int) -> np.ndarray:
    from PIL import Image  # Pillow (a matplotlib dependency, listed in metax's own)

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            image = image.convert("L").resize((size, size), Image.Resampling.LANCZOS)
            array = np.asarray(image, np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as error:
        raise ValueError(f"Cannot decode the image {where}: {error}; replace the file (or the zip) with an intact copy.") from None
    return (1.0 - array)[..., None]  # ink (black, 0) becomes 1.0


def _reader(source: str, kind: str):
    if kind == "zip":
        archive = zipfile.ZipFile(source)
        return archive.read, archive.close
    return (lambda rel: open(os.path.join(source, rel), "rb").read()), (lambda: None)


def _fingerprint(sources: Sequence[str], listings: Sequence[list[str]], size: int) -> str:
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "size": size}).encode())
    for source, names in zip(sources, listings):
        if os.path.isfile(source):
            stat = os.stat(source)
            digest.update(f"{source}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        else:
            for rel in names:
                stat = os.stat(os.path.join(source, rel))
                digest.update(f"{source}/{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_omniglot(
    sources: Union[PathLike, Sequence[PathLike]],
    *,
    size: int = 28,
    cache: bool = True,
    cache_dir: Optional[str] = None,
) -> OmniglotData:
    """Reads Omniglot characters from zip files and/or unpacked folders into arrays.

    Each source is a zip file as downloaded (`images_background_small1.zip`, ...) or a
    folder; PNGs must sit at `[top folder/]<alphabet>/<character>/*.png`. A character
    (same alphabet and character folder names) found in several sources is read from the
    first only. The first call decodes and resizes every image (Lanczos) and caches the
    arrays in `<cache_dir>/omniglot-<hash>.npz` (atomic write); later calls with the same
    sources and size read the cache unless a source changed (size or modification time of
    the zip, or of any image of a folder). Nothing is written beside the sources.

    Example:
      >>> data = load_omniglot("images_background_small1.zip", size=28)
      >>> data.x.shape, data.alphabets[:2]
      ((2720, 28, 28, 1), ('Balinese', 'Early_Aramaic'))

    Args:
      sources: one path or several.
      size: decoded images are `size x size` (28 in the literature, 105 as stored).
      cache: read and write the cache; False decodes every time and writes nothing.
      cache_dir: default `metax.data.default_cache_dir()`.

    Returns:
      `OmniglotData` (images, labels, `"alphabet/character"` class names, alphabets).

    Raises:
      FileNotFoundError: a source that does not exist.
      ValueError: naming the source or file: not a zip, no PNGs, PNGs outside the layout,
        an image that does not decode, a non-positive size.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.path.abspath(os.fspath(s)) for s in sources]
    if not sources:
        raise ValueError("load_omniglot needs at least one source (a zip file or folder).")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int (28 in the literature), got {size!r}.")
    kinds, listings, layouts = [], [], []
    for source in sources:
        kind, names = _source_files(source)
        kinds.append(kind)
        listings.append(names)
        layouts.append(_layout(source, names))
    fingerprint = _fingerprint(sources, listings, size)
    cache_path = None
    if cache:
        key = hashlib.sha256(json.dumps({"sources": sources, "size": size}).encode()).hexdigest()[:20]
        cache_path = os.path.join(cache_dir or default_cache_dir(), f"omniglot-{key}.npz")
        cached = _read_cache(cache_path, fingerprint)
        if cached is not None:
            return _assemble(*cached)
    chosen: dict[str, tuple[int, list[str]]] = {}
    for index, layout in enumerate(layouts):
        for name, files in layout.items():
            chosen.setdefault(name, (index, files))  # duplicates across sources: the first wins
    names = sorted(chosen)
    images, labels = [], []
    readers = [_reader(source, kind) for source, kind in zip(sources, kinds)]
    try:
        for label, name in enumerate(names):
            index, files = chosen[name]
            read = readers[index][0]
            for rel in files:
                where = f"{rel!r} in {sources[index]!r}" if kinds[index] == "zip" else repr(os.path.join(sources[index], rel))
                images.append(_decode_png(read(rel), where, int(size)))
                labels.append(label)
    finally:
        for _, close in readers:
            close()
    x, y = np.stack(images), np.asarray(labels, np.int32)
    if cache_path is not None:
        _write_cache(cache_path, x, y, names, fingerprint)
    return _assemble(x, y, names)


def _assemble(x: np.ndarray, y: np.ndarray, names: Sequence[str]) -> OmniglotData:
    names = tuple(str(n) for n in names)
    alphabets = tuple(sorted({n.split("/")[0] for n in names}))
    class_alphabet = np.asarray([alphabets.index(n.split("/")[0]) for n in names], np.int32)
    return OmniglotData(x, y, names, alphabets, class_alphabet)


def _check_alphabets(data: OmniglotData, names: Sequence[str], argument: str) -> list[str]:
    names = [str(n) for n in names]
    for name in names:
        if name not in data.alphabets:
            close = difflib.get_close_matches(name, data.alphabets, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{argument} names the alphabet {name!r}, which the data does not hold{hint} "
                f"Its alphabets: {', '.join(data.alphabets)}."
            )
    return names


def alphabet_classes(
    data: OmniglotData,
    *,
    test: Optional[Sequence[str]] = None,
    valid: Sequence[str] = (),
    num_test: int = 2,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Splits the characters by alphabet: `{"train", "valid", "test"}` lists of labels,
    for `metax.data.FewShotSplits(data.x, data.y, classes=...)`.

    Example:
      >>> data = load_omniglot(["images_background_small1.zip", "images_background_small2.zip"])
      >>> classes = alphabet_classes(data, test=["Korean", "Tagalog"], valid=["Balinese"])
      >>> sorted({data.class_names[c].split("/")[0] for c in classes["test"]})
      ['Korean', 'Tagalog']

    Args:
      data: from `load_omniglot`.
      test: the held-out alphabets; None draws `num_test` of them with `seed` (after
        `valid` is set aside).
      valid: alphabets for choosing hyperparameters (may be empty).
      num_test: how many alphabets to draw when `test` is None.
      seed: the draw's seed.

    Returns:
      Labels per split; every alphabet not named goes to "train".

    Raises:
      ValueError: an alphabet the data does not hold (naming the closest), an alphabet in
        both `test` and `valid`, or too few alphabets left for meta-training.
    """
    valid = _check_alphabets(data, valid, "valid")
    if test is None:
        left = [a for a in data.alphabets if a not in valid]
        if num_test < 1 or len(left) < num_test + 1:
            raise ValueError(
                f"Cannot hold out {num_test} alphabet(s): the data has {len(data.alphabets)} ({', '.join(data.alphabets)}), "
                f"{len(valid)} set aside for validation, and meta-training needs at least one; add sources or hold out fewer."
            )
        test = sorted(np.random.default_rng(seed).choice(left, num_test, replace=False).tolist())
    test = _check_alphabets(data, test, "test")
    both = sorted(set(test) & set(valid))
    if both:
        raise ValueError(f"The alphabet {both[0]!r} is named in both test and valid; an alphabet belongs to one split.")
    if not test:
        raise ValueError("test names no alphabet; hold out at least one alphabet for the held-out split.")
    train = [a for a in data.alphabets if a not in test and a not in valid]
    if not train:
        raise ValueError(
            f"No alphabet is left for meta-training: the data's {len(data.alphabets)} alphabets are all in test "
            f"{list(test)} or valid {list(valid)}; hold out fewer or add sources."
        )
    split_of = {a: "train" for a in train} | {a: "valid" for a in valid} | {a: "test" for a in test}
    classes: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for label, alphabet in enumerate(data.class_alphabet):
        classes[split_of[data.alphabets[alphabet]]].append(label)
    return classes
