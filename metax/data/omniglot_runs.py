"""Lake et al.'s 20 one-shot classification runs of Omniglot: reading and scoring.

`all_runs.zip` of the Omniglot repository (Lake, Salakhutdinov, Tenenbaum, Science
350(6266), 2015; https://github.com/brendenlake/omniglot, MIT license) holds 20 runs,
each a 20-way 1-shot task *within one alphabet of the evaluation set*: `load_lake_runs`
reads them (zip or unpacked folder) as one meta-batch of tasks, `score_lake_runs` scores
any predictor on them (mean error over the 20 runs with a 95% interval), and
`pixel_nearest_neighbour` is the raw-pixel baseline. The characters themselves are read
by `metax.data.omniglot`.
"""

import os
import zipfile
from typing import Callable, NamedTuple, Sequence

import numpy as np

from metax.data.base import Dataset, MetaDataset
from metax.data.omniglot import PathLike, _decode_png

RUNS = 20  # Lake et al.'s one-shot runs
RUN_WAYS = 20  # classes (and test items) per run
PUBLISHED_LAKE_ERRORS = {  # error (%) on the 20 runs, as published
    "people (Lake et al. 2015)": 4.5,
    "Bayesian Program Learning (Lake et al. 2015)": 3.3,
    "modified-Hausdorff nearest neighbour (omniglot repository demo)": 38.8,
}


class LakeRuns(NamedTuple):
    """The 20-way 1-shot runs as one meta-batch of tasks.

    Attributes:
      tasks: `MetaDataset` with leaves `(runs, 20, ...)`: `train` the 20 training images
        (`classNN.png` labelled NN - 1), `test` the 20 test items (`itemNN.png`, NN - 1
        in order) labelled by `class_labels.txt`.
      names: the run folders (`run01`, ...).

    Example:
      >>> one = metax.data.Dataset(x=np.zeros((1, 20, 28, 28, 1), np.float32), y=np.zeros((1, 20), np.int32))
      >>> runs = metax.data.LakeRuns(tasks=metax.data.MetaDataset(train=one, test=one), names=("run01",))
      >>> runs.tasks.train.x.shape, runs.names
      ((1, 20, 28, 28, 1), ('run01',))
    """

    tasks: MetaDataset
    names: tuple[str, ...]


def _parse_labels(text: str, where: str, prefix: str) -> list[int]:
    """Test item k's class index from `class_labels.txt` (`run01/test/item01.png
    run01/training/class08.png` per line)."""
    found: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        item = parts[0].rsplit("/", 1)[-1] if parts else ""
        cls = parts[1].rsplit("/", 1)[-1] if len(parts) == 2 else ""
        if not (item.startswith("item") and item.endswith(".png") and cls.startswith("class") and cls.endswith(".png")):
            raise ValueError(
                f"{where} line {number} is {line.strip()!r}; each line must be '<run>/test/itemNN.png "
                "<run>/training/classNN.png'. Replace the file with the repository's."
            )
        try:
            i, c = int(item[4:-4]), int(cls[5:-4])
        except ValueError:
            raise ValueError(f"{where} line {number}: {line.strip()!r} has a non-numeric item or class number.") from None
        if not (1 <= i <= RUN_WAYS and 1 <= c <= RUN_WAYS) or i in found:
            raise ValueError(f"{where} line {number}: {line.strip()!r} names an item or class outside 1..{RUN_WAYS}, or an item twice.")
        found[i] = c - 1
    if sorted(found) != list(range(1, RUN_WAYS + 1)):
        missing = sorted(set(range(1, RUN_WAYS + 1)) - set(found))
        raise ValueError(f"{where} gives no class for test item(s) {missing}; it must map all {RUN_WAYS} items.")
    return [found[i] for i in range(1, RUN_WAYS + 1)]


def load_lake_runs(path: PathLike, *, size: int = 28) -> LakeRuns:
    """Reads Lake et al.'s 20 one-shot runs (`all_runs.zip` or its unpacked folder).

    Each `runNN/` holds `training/class01..20.png`, `test/item01..20.png` and
    `class_labels.txt`; images are decoded like `load_omniglot` (ink 1.0, `size x size`).

    Example:
      >>> runs = load_lake_runs("all_runs.zip")
      >>> runs.tasks.train.x.shape, runs.tasks.test.y[0, :3]
      ((20, 20, 28, 28, 1), array([7, 8, 1], dtype=int32))

    Raises:
      FileNotFoundError: no such file or folder.
      ValueError: naming the run and file: no `runNN` folders, a missing image or
        `class_labels.txt`, a malformed `class_labels.txt`, an image that does not decode.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        listing = []
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            rel = os.path.relpath(folder, path)
            listing += [os.path.join(rel, f).replace(os.sep, "/").removeprefix("./") for f in files]
        read, close = (lambda rel: open(os.path.join(path, rel), "rb").read()), (lambda: None)
    elif os.path.isfile(path):
        try:
            archive = zipfile.ZipFile(path)
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path!r} is not a readable zip file ({error}); give all_runs.zip or its folder.") from None
        listing, read, close = archive.namelist(), archive.read, archive.close
    else:
        raise FileNotFoundError(f"No Omniglot runs zip or folder at {path!r} (all_runs.zip from the omniglot repository).")
    present = set(listing)
    label_files = sorted(n for n in listing if n.rsplit("/", 1)[-1] == "class_labels.txt")
    try:
        if not label_files:
            raise ValueError(
                f"{path!r} holds no runNN/class_labels.txt; expected Lake et al.'s runs (all_runs.zip: run01..run20, "
                "each with training/, test/ and class_labels.txt)."
            )
        support, query, labels, names = [], [], [], []
        for labels_file in label_files:
            prefix = labels_file[: -len("class_labels.txt")]
            where = f"{labels_file!r} in {path!r}"
            labels.append(_parse_labels(read(labels_file).decode("utf-8", "replace"), where, prefix))
            images = {}
            for part, stem in (("training", "class"), ("test", "item")):
                images[part] = []
                for k in range(1, RUN_WAYS + 1):
                    rel = f"{prefix}{part}/{stem}{k:02d}.png"
                    if rel not in present:
                        raise ValueError(f"{rel!r} is missing from {path!r}; every run needs {part}/{stem}01..{RUN_WAYS}.png.")
                    images[part].append(_decode_png(read(rel), f"{rel!r} in {path!r}", int(size)))
            support.append(np.stack(images["training"]))
            query.append(np.stack(images["test"]))
            names.append(prefix.rstrip("/").rsplit("/", 1)[-1])
    finally:
        close()
    classes = np.tile(np.arange(RUN_WAYS, dtype=np.int32), (len(names), 1))
    tasks = MetaDataset(
        train=Dataset(np.stack(support), classes),
        test=Dataset(np.stack(query), np.asarray(labels, np.int32)),
    )
    return LakeRuns(tasks, tuple(names))


class LakeScore(NamedTuple):
    """Errors on Lake's runs: `per_run` `(runs,)` fractions, their `mean` and the half-width
    `ci95` of a normal 95% interval over runs (`1.96 * std / sqrt(runs)`).

    Example:
      >>> score = metax.data.lake_score([0.0, 0.5, 0.25, 0.25])
      >>> float(score.mean), score.per_run.shape
      (0.25, (4,))
    """

    per_run: np.ndarray
    mean: float
    ci95: float


def lake_score(per_run_error: Sequence[float]) -> LakeScore:
    """`LakeScore` of per-run error fractions.

    Example:
      >>> lake_score([0.1, 0.3]).mean
      0.2
    """
    per_run = np.asarray(per_run_error, np.float64)
    half = 1.959963984540054 * per_run.std(ddof=1) / np.sqrt(per_run.size) if per_run.size > 1 else float("nan")
    return LakeScore(per_run, float(per_run.mean()), float(half))


Predictor = Callable[[MetaDataset], np.ndarray]


def score_lake_runs(predict: Predictor, runs: LakeRuns) -> LakeScore:
    """Scores a predictor on the runs: error = share of each run's 20 test items whose
    predicted class differs from `class_labels.txt`'s.

    Example:
      >>> score = score_lake_runs(pixel_nearest_neighbour, load_lake_runs("all_runs.zip"))
      >>> round(100 * score.mean, 1)  # per cent error (the study's pixel-NN figure)
      79.0

    Args:
      predict: `tasks -> labels (runs, 20)`: for each run, a class index 0..19 (the
        support image `train.x[run, k]` is class `train.y[run, k]`) per test item of
        `tasks.test.x`. It must not read `tasks.test.y`.
      runs: from `load_lake_runs`.
    """
    hidden = runs.tasks._replace(test=runs.tasks.test._replace(y=np.full_like(runs.tasks.test.y, -1)))
    predicted = np.asarray(predict(hidden))
    if predicted.shape != runs.tasks.test.y.shape:
        raise ValueError(f"predict returned shape {predicted.shape}; it must give one class per test item, {runs.tasks.test.y.shape}.")
    return lake_score((predicted != np.asarray(runs.tasks.test.y)).mean(axis=1))


def pixel_nearest_neighbour(tasks: MetaDataset) -> np.ndarray:
    """Each query's class is that of the support image nearest in raw pixels (Euclidean).

    Example:
      >>> runs = load_lake_runs("all_runs.zip")
      >>> pixel_nearest_neighbour(runs.tasks).shape
      (20, 20)

    Args:
      tasks: leaves `(tasks, samples, ...)`.

    Returns:
      int32 predicted labels `(tasks, queries)`.
    """
    support = np.asarray(tasks.train.x, np.float64).reshape(tasks.train.x.shape[0], tasks.train.x.shape[1], -1)
    query = np.asarray(tasks.test.x, np.float64).reshape(tasks.test.x.shape[0], tasks.test.x.shape[1], -1)
    # |q - s|^2 = |q|^2 - 2 q.s + |s|^2, without the (tasks, queries, support, pixels) difference array
    distance = (query**2).sum(-1)[:, :, None] - 2 * np.einsum("tqp,tsp->tqs", query, support) + (support**2).sum(-1)[:, None, :]
    nearest = distance.argmin(-1)
    return np.take_along_axis(np.asarray(tasks.train.y), nearest, axis=1).astype(np.int32)
