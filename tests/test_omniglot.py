"""Omniglot: the reader on tiny zips the tests write, alphabet splits, Lake's runs scoring,
the `omniglot` task and `metax eval --omniglot-runs` through the runner, bad input, and
(where ../shared/data/omniglot exists) counts and the pixel nearest-neighbour figure on
the real files."""

import io
import json
import os
import pathlib
import shutil
import textwrap
import zipfile

import jax
import numpy as np
import pytest
from PIL import Image

import metax
from metax.data import omniglot as om
from metax.experiment.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 8  # synthetic images: 8x8, decoded at 8x8 (no resampling)
PIXEL_NN_ERROR = 0.79  # experiments/omniglot/README.md: raw-pixel nearest neighbour on Lake's runs, 28x28


def shared_omniglot():
    """The real data beside the repository (../shared/data/omniglot), if any."""
    for candidate in (os.environ.get("METAX_OMNIGLOT_DIR"), ROOT.parent / "shared/data/omniglot", "/work/shared/data/omniglot"):
        if candidate and (pathlib.Path(candidate) / "all_runs.zip").is_file():
            return pathlib.Path(candidate)
    return None


def glyph(alphabet: int, character: int, drawer: int) -> np.ndarray:
    """An 8x8 black-on-white character: ink at one pixel per (alphabet, character), plus the
    drawer's mark in the last row; uint8 (0 ink, 255 paper)."""
    image = np.full((SIZE, SIZE), 255, np.uint8)
    image[alphabet, character] = 0
    image[SIZE - 1, drawer] = 0
    return image


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


ALPHABETS = {"Alpha": 0, "Beta": 1, "Gamma": 2, "Delta": 3, "Epsilon": 4}


def write_set(path, top, alphabets, characters=3, drawers=4, extra=None):
    """An Omniglot-layout zip `top/<alphabet>/characterNN/<id>_<drawer>.png`."""
    with zipfile.ZipFile(path, "w") as archive:
        for name in alphabets:
            for c in range(characters):
                for d in range(drawers):
                    member = f"{top}/{name}/character{c + 1:02d}/{ALPHABETS[name]:02d}{c:02d}_{d + 1:02d}.png"
                    archive.writestr(member, png(glyph(ALPHABETS[name], c, d)))
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
    return str(path)


def write_sets(folder):
    one = write_set(folder / "small1.zip", "images_background_small1", ["Alpha", "Beta", "Gamma"])
    two = write_set(folder / "small2.zip", "images_background_small2", ["Gamma", "Delta", "Epsilon"])
    return one, two


@pytest.fixture
def sets(tmp_path, monkeypatch):
    monkeypatch.setenv("METAX_CACHE_DIR", str(tmp_path / "cache"))
    return write_sets(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny 20-way omniglot run through `metax run`, shared by the eval tests."""
    folder = tmp_path_factory.mktemp("omniglot_run")
    previous = os.environ.get("METAX_CACHE_DIR")
    os.environ["METAX_CACHE_DIR"] = str(folder / "cache")
    try:
        sets = write_sets(folder)
        run = folder / "run"
        assert main(["run", str(omniglot_config(folder, sets)), "--out", str(run), "--no-progress", "--no-plots"]) == 0
    finally:
        if previous is None:
            os.environ.pop("METAX_CACHE_DIR")
        else:
            os.environ["METAX_CACHE_DIR"] = previous
    return run


def test_reader_combines_sources_counts_duplicates_once_and_keeps_pixels(sets, tmp_path):
    one, two = sets
    data = metax.data.load_omniglot([one, two], size=SIZE)
    assert data.alphabets == ("Alpha", "Beta", "Delta", "Epsilon", "Gamma")
    assert len(data.class_names) == 15 and data.x.shape == (60, SIZE, SIZE, 1)  # Gamma's 3 characters once
    assert np.bincount(data.y).tolist() == [4] * 15
    for label, name in enumerate(data.class_names):
        alphabet, character = name.split("/")
        assert data.alphabets[data.class_alphabet[label]] == alphabet
        images = data.x[data.y == label, :, :, 0]
        expected = np.stack([1.0 - glyph(ALPHABETS[alphabet], int(character[-2:]) - 1, d) / 255.0 for d in range(4)])
        np.testing.assert_allclose(images, expected, atol=1e-6)  # ink is 1, decoded once per drawer
    # An unpacked tree reads the same as its zip.
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(one).extractall(folder)
    from_zip = metax.data.load_omniglot(one, size=SIZE, cache=False)
    from_folder = metax.data.load_omniglot(folder / "images_background_small1", size=SIZE, cache=False)
    assert from_folder.class_names == from_zip.class_names
    np.testing.assert_array_equal(from_folder.x, from_zip.x)


def test_cache_is_written_atomically_outside_the_sources_and_rebuilt_on_change(sets, tmp_path, monkeypatch):
    one, _ = sets
    first = metax.data.load_omniglot(one, size=SIZE)
    cached = list((tmp_path / "cache").glob("omniglot-*.npz"))
    assert len(cached) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    def refuse(*args):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(om, "_decode_png", refuse)
    again = metax.data.load_omniglot(one, size=SIZE)
    np.testing.assert_array_equal(again.x, first.x)
    assert again.class_names == first.class_names
    os.utime(one, ns=(1, 1))  # the source changed: decode again
    with pytest.raises(AssertionError, match="decoded although cached"):
        metax.data.load_omniglot(one, size=SIZE)


def test_alphabet_split_keeps_every_alphabet_on_one_side(sets):
    data = metax.data.load_omniglot(list(sets), size=SIZE)
    classes = metax.data.alphabet_classes(data, test=["Delta", "Epsilon"], valid=["Beta"])
    side = {}
    for split, labels in classes.items():
        for label in labels:
            side.setdefault(data.class_names[label].split("/")[0], set()).add(split)
    assert side == {"Alpha": {"train"}, "Gamma": {"train"}, "Beta": {"valid"}, "Delta": {"test"}, "Epsilon": {"test"}}
    assert sorted(sum(classes.values(), [])) == list(range(15))
    drawn = metax.data.alphabet_classes(data, num_test=2, seed=3)
    test_alphabets = {data.class_names[c].split("/")[0] for c in drawn["test"]}
    train_alphabets = {data.class_names[c].split("/")[0] for c in drawn["train"]}
    assert len(test_alphabets) == 2 and not test_alphabets & train_alphabets
    with pytest.raises(ValueError, match="'Gamma'"):
        metax.data.alphabet_classes(data, test=["Gama"])
    with pytest.raises(ValueError, match="both test and valid"):
        metax.data.alphabet_classes(data, test=["Beta"], valid=["Beta"])
    with pytest.raises(ValueError, match="Cannot hold out 5"):
        metax.data.alphabet_classes(data, num_test=5)


def test_task_rotates_meta_train_characters_only(sets):
    builder = metax.experiment.registry("tasks").get("omniglot").target
    kwargs = dict(path=list(sets), ways=3, shots=1, queries=3, image_size=SIZE, test_alphabets=["Delta"], held_out="test")
    upright = metax.data.load_omniglot(list(sets), size=SIZE)
    train = builder("train", **kwargs).sample_task
    held_out = builder("test", **kwargs).sample_task
    keys = jax.random.split(jax.random.PRNGKey(0), 40)
    draw = jax.jit(lambda k, sampler: jax.vmap(sampler)(k).train.x)
    turned_images = np.asarray(draw(keys, train))
    upright_images = np.asarray(draw(keys, held_out))
    flat = upright.x.reshape(len(upright.x), -1)
    is_upright = lambda image: bool((np.abs(flat - image.reshape(-1)).max(axis=1) < 1e-6).any())
    assert all(is_upright(image) for image in upright_images.reshape(-1, SIZE, SIZE, 1))
    assert not all(is_upright(image) for image in turned_images.reshape(-1, SIZE, SIZE, 1))
    # Every meta-train image is an upright image turned by some quarter turn.
    for image in turned_images.reshape(-1, SIZE, SIZE, 1)[:30]:
        assert any(is_upright(np.rot90(image, k, axes=(0, 1))) for k in range(4))


# -- Lake's runs -------------------------------------------------------------------------------------


def write_runs(root, runs=2, mapping=None):
    """A runs folder: run k's class c is glyph (c // 8, c % 8) of a per-run drawer, its
    test item i the same character by another drawer; class_labels.txt maps item i to
    class `mapping[i]` (a permutation)."""
    root = pathlib.Path(root)
    for r in range(runs):
        name = f"run{r + 1:02d}"
        order = np.random.default_rng(r).permutation(20) if mapping is None else np.asarray(mapping)
        for part in ("training", "test"):
            (root / name / part).mkdir(parents=True, exist_ok=True)
        lines = []
        for c in range(20):
            Image.fromarray(glyph(c // 8, c % 8, 0)).save(root / name / "training" / f"class{c + 1:02d}.png")
        for i, c in enumerate(order):
            Image.fromarray(glyph(c // 8, c % 8, 1)).save(root / name / "test" / f"item{i + 1:02d}.png")
            lines.append(f"{name}/test/item{i + 1:02d}.png {name}/training/class{c + 1:02d}.png")
        (root / name / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root


def test_lake_runs_scoring_has_the_known_answer(tmp_path):
    root = write_runs(tmp_path / "runs")
    runs = metax.data.load_lake_runs(root, size=SIZE)
    assert runs.names == ("run01", "run02") and runs.tasks.train.x.shape == (2, 20, SIZE, SIZE, 1)
    for r in range(2):  # labels follow class_labels.txt, 0-based
        np.testing.assert_array_equal(runs.tasks.test.y[r], np.random.default_rng(r).permutation(20))
    perfect = metax.data.score_lake_runs(metax.data.pixel_nearest_neighbour, runs)
    assert perfect.per_run.tolist() == [0.0, 0.0] and perfect.mean == 0.0
    reversed_ = metax.data.score_lake_runs(lambda tasks: 19 - metax.data.pixel_nearest_neighbour(tasks), runs)
    assert reversed_.per_run.tolist() == [1.0, 1.0]  # 19 - c == c never holds for integers
    # Half right: the first ten items answered correctly, the rest shifted by one class.
    half = lambda tasks: np.concatenate(
        [metax.data.pixel_nearest_neighbour(tasks)[:, :10], (metax.data.pixel_nearest_neighbour(tasks)[:, 10:] + 1) % 20], 1
    )
    assert metax.data.score_lake_runs(half, runs).per_run.tolist() == [0.5, 0.5]
    # The predictor never sees the answers.
    seen = []
    metax.data.score_lake_runs(lambda tasks: seen.append(np.asarray(tasks.test.y)) or np.zeros((2, 20), int), runs)
    assert (seen[0] == -1).all()
    # The zip reads the same.
    archive = shutil.make_archive(str(tmp_path / "all_runs"), "zip", root)
    from_zip = metax.data.load_lake_runs(archive, size=SIZE)
    np.testing.assert_array_equal(from_zip.tasks.test.y, runs.tasks.test.y)
    np.testing.assert_array_equal(from_zip.tasks.train.x, runs.tasks.train.x)
    score = metax.data.lake_score([0.1, 0.3])
    assert score.mean == pytest.approx(0.2) and score.ci95 == pytest.approx(1.959964 * np.std([0.1, 0.3], ddof=1) / np.sqrt(2))


# -- through the runner -------------------------------------------------------------------------------


def test_fewshot_task_reads_an_image_folder_through_the_runner(tmp_path, sets, capsys):
    # The folder source used to fail: load_image_folder returns (x, y, names).
    zipfile.ZipFile(sets[0]).extractall(tmp_path / "tree")
    config = tmp_path / "folder.yaml"
    config.write_text(textwrap.dedent(f"""\
        task: {{name: fewshot, source: folder, path: {tmp_path / 'tree' / 'images_background_small1'}, ways: 2, shots: 1,
                queries: 2, rotations: false, fractions: [0.67, 0.0, 0.33]}}
        model: {{name: mlp, hidden_dims: [8]}}
        module: {{name: learned_init}}
        learner: {{name: maml, steps_inner: 1, optim_fn_inner: {{name: sgd, learning_rate: 0.1}}, optim_fn_outer: {{name: adam, learning_rate: 0.01}}}}
        train: {{steps: 2, meta_batch_size: 2}}
        eval: {{tasks: 2, batch_size: 2}}
    """))
    # `metax validate` builds the task and traces a meta-step, as `metax run` does before its
    # first step (where the unpacking failed); the full run is exercised by the omniglot task.
    assert main(["validate", str(config)]) == 0
    config_obj = metax.experiment.load_config(str(config))
    experiment = metax.experiment.build(config_obj)
    assert experiment.input_shape == (SIZE, SIZE, 1) and experiment.output_dim == 2


def omniglot_config(tmp_path, sets, **task):
    fields = {"path": list(sets), "ways": 20, "shots": 1, "queries": 1, "image_size": SIZE,
              "test_alphabets": ["Delta", "Epsilon"], "valid_alphabets": ["Beta"], **task}
    config = tmp_path / "omniglot.yaml"
    config.write_text(textwrap.dedent(f"""\
        task: {json.dumps({"name": "omniglot", **fields})}
        model: {{name: mlp, hidden_dims: [8]}}
        module: {{name: learned_init}}
        learner: {{name: maml, steps_inner: 1, optim_fn_inner: {{name: sgd, learning_rate: 0.1}}, optim_fn_outer: {{name: adam, learning_rate: 0.01}}}}
        train: {{steps: 2, meta_batch_size: 2}}
        eval: {{tasks: 2, batch_size: 2, task: {{ways: 3}}}}
    """))
    return config


def test_omniglot_run_and_lake_runs_eval_through_the_cli(tmp_path, trained, capsys):
    run = trained
    runs = write_runs(tmp_path / "runs")
    assert main(["eval", str(run), "--omniglot-runs", str(runs)]) == 0
    out = capsys.readouterr().out
    record = json.loads(next((run / "evals").glob("omniglot-runs_*.json")).read_text())
    assert record["runs"] == ["run01", "run02"] and len(record["error_per_run"]) == 2
    assert record["error_mean"] == pytest.approx(np.mean(record["error_per_run"]))
    assert "mean error" in out and "38.8" in out
    # Held-out test alphabets, scored once with other task settings.
    assert main(["eval", str(run), "--set", "eval.task.held_out=test", "--set", "eval.task.ways=5", "--tasks", "4"]) == 0
    assert list((run / "evals").glob("tasks-4_*held-out=test*ways=5*.json"))


# -- bad input: exit 2, the file or key named, nothing written ------------------------------------------


def _refused(argv, capsys, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err


def test_bad_omniglot_sources_exit_2_and_write_nothing(tmp_path, sets, capsys):
    one, two = sets
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as archive:
        archive.writestr("Greek/0001_01.png", png(glyph(0, 0, 0)))
    corrupt = write_set(tmp_path / "corrupt.zip", "top", ["Alpha"], extra={"top/Alpha/character09/bad_01.png": b"not a png"})
    cases = [
        ({"path": [str(flat)]}, [str(flat), "layout"]),
        ({"path": [corrupt]}, ["bad_01.png", "Cannot decode"]),
        ({"test_alphabets": ["Deltaa"]}, ["'Deltaa'", "did you mean 'Delta'"]),
        ({"test_alphabets": ["Alpha", "Gamma", "Delta", "Epsilon"]}, ["No alphabet is left for meta-training"]),
        ({"path": [str(tmp_path / "missing.zip")]}, ["missing.zip"]),
    ]
    for task, needles in cases:
        config = omniglot_config(tmp_path, sets, **task)
        out = tmp_path / "refused"
        _refused(["run", str(config), "--out", str(out), "--no-progress"], capsys, *needles)
        assert not out.exists()


def test_bad_runs_folder_exits_2_and_writes_nothing(tmp_path, trained, capsys):
    run = trained
    before = sorted(p.name for p in (run / "evals").glob("*")) if (run / "evals").exists() else []
    missing = write_runs(tmp_path / "missing")
    os.unlink(missing / "run02" / "test" / "item07.png")
    malformed = write_runs(tmp_path / "malformed")
    (malformed / "run01" / "class_labels.txt").write_text("run01/test/item01.png\n")
    short = write_runs(tmp_path / "short")
    text = (short / "run02" / "class_labels.txt").read_text().splitlines()
    (short / "run02" / "class_labels.txt").write_text("\n".join(text[:-1]) + "\n")
    for path, needles in [
        (missing, ["run02/test/item07.png", "missing"]),
        (malformed, ["run01/class_labels.txt", "line 1"]),
        (short, ["run02/class_labels.txt", "[20]"]),
        (tmp_path / "nowhere", ["nowhere"]),
    ]:
        _refused(["eval", str(run), "--omniglot-runs", str(path)], capsys, *needles)
    after = sorted(p.name for p in (run / "evals").glob("*")) if (run / "evals").exists() else []
    assert after == before


# -- the real files --------------------------------------------------------------------------------------


@pytest.mark.skipif(shared_omniglot() is None, reason="no ../shared/data/omniglot beside the repository")
def test_real_minimal_sets_and_pixel_nearest_neighbour_on_lake_runs():
    root = shared_omniglot()
    data = metax.data.load_omniglot([root / "images_background_small1.zip", root / "images_background_small2.zip"])
    assert len(data.alphabets) == 8 and len(data.class_names) == 242 and data.x.shape == (4840, 28, 28, 1)
    assert np.bincount(data.y).tolist() == [20] * 242
    assert len(metax.data.load_omniglot(root / "images_background_small1.zip").class_names) == 136
    runs = metax.data.load_lake_runs(root / "all_runs.zip")
    assert runs.names == tuple(f"run{k:02d}" for k in range(1, 21))
    score = metax.data.score_lake_runs(metax.data.pixel_nearest_neighbour, runs)
    assert score.mean == pytest.approx(PIXEL_NN_ERROR, abs=1e-9)
