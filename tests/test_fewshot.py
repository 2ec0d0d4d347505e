"""Few-shot task samplers: properties over random configurations, rotations, splits, errors.

Examples are 2x2 images whose pixels encode the example's index and the pixel position
(`4 * index + 2 * row + col`), so every sampled image can be traced back to the source
example, and its rotation compared with `np.rot90`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import metax
from metax.data import FewShotSplits, sample_metabatch

TASKS = 64


def coded_images(labels):
    """Images `(n, 2, 2, 1)` with pixel (r, c) of example i equal to 4 i + 2 r + c."""
    n = len(labels)
    pixels = 4 * np.arange(n)[:, None, None] + np.array([[0, 1], [2, 3]])[None]
    return pixels[..., None].astype(np.float32), np.asarray(labels, np.int32)


def decode(images):
    """The source index of each sampled image `(..., 2, 2, 1)`."""
    return (np.asarray(images).min(axis=(-3, -2, -1)) // 4).astype(np.int64)


def draw(splits, split, ways, shots, queries, seed, tasks=TASKS):
    sampler = splits.sampler(split, ways=ways, shots=shots, queries=queries)
    batch = jax.jit(lambda key, fn: sample_metabatch(key, fn, tasks))(jax.random.PRNGKey(seed), sampler)
    return jax.tree_util.tree_map(np.asarray, batch)


def check_tasks(batch, x, y, ways, shots, queries, rotations, allowed_classes):
    """Every property a task must have, checked against the source arrays."""
    for part, per_class in ((batch.train, shots), (batch.test, queries)):
        assert part.x.shape == (TASKS, ways * per_class, 2, 2, 1)
        assert part.y.dtype == np.int32
        # Labels 0..N-1, exactly `per_class` of each (class-major).
        np.testing.assert_array_equal(part.y, np.broadcast_to(np.repeat(np.arange(ways), per_class), part.y.shape))
    for task in range(TASKS):
        class_of_label, sources = {}, []
        for part in (batch.train, batch.test):
            source = decode(part.x[task])
            for image, index, label, class_id in zip(part.x[task], source, part.y[task], part.info["class_id"][task]):
                # The image is the source example, turned as its class says.
                turns = class_id % 4 if rotations else 0
                np.testing.assert_array_equal(image, np.rot90(x[index], turns, axes=(0, 1)))
                assert y[index] == (class_id // 4 if rotations else class_id)
                assert class_of_label.setdefault(label, class_id) == class_id  # one class per label
            # An example is a source image at its class's turn: two rotations of one digit
            # are two classes, which may show the same source image turned two ways.
            sources.append(list(zip(source.tolist(), part.info["class_id"][task].tolist())))
        assert len(set(class_of_label.values())) == ways  # N distinct classes
        assert set(class_of_label.values()) <= allowed_classes
        support, query = sources
        assert len(set(support) | set(query)) == len(support) + len(query)  # all distinct, disjoint


# No shrinking: every example compiles a sampler, so a failure is reported as found.
@settings(max_examples=5, deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate))
@given(
    num_labels=st.integers(3, 6),
    extra=st.lists(st.integers(0, 6), min_size=6, max_size=6),
    ways=st.integers(1, 4),
    shots=st.integers(1, 3),
    queries=st.integers(1, 3),
    rotations=st.booleans(),
    split=st.sampled_from(["train", "test"]),
    seed=st.integers(0, 2**16),
)
def test_sampled_tasks_have_every_property(num_labels, extra, ways, shots, queries, rotations, split, seed):
    # Classes of unequal sizes, each with at least shots + queries examples; labels need
    # not be 0..C-1. Two classes are held out for meta-test.
    counts = [shots + queries + e for e in extra[:num_labels]]
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_labels) * 3 + 1, counts))
    x, y = coded_images(labels)
    present = sorted(set(labels.tolist()))
    classes = {"train": present[:-2], "test": present[-2:]}
    splits = FewShotSplits(x, y, classes=classes, rotations=rotations)
    turns = 4 if rotations else 1
    assert splits.num_classes("train") == (num_labels - 2) * turns and splits.num_classes("valid") == 0
    if ways > splits.num_classes(split):
        with pytest.raises(ValueError, match=f"ways={ways} but the meta-{split} split has only"):
            splits.sampler(split, ways=ways, shots=shots, queries=queries)
        return
    batch = draw(splits, split, ways, shots, queries, seed)
    allowed = {c * 4 + t if rotations else c for c in classes[split] for t in range(turns)}
    check_tasks(batch, x, y, ways, shots, queries, rotations, allowed)


def test_splits_by_fraction_are_disjoint_deterministic_and_meta_test_classes_stay_unseen():
    x, y = metax.data.load_digits()
    splits = FewShotSplits(x, y, rotations=True, seed=3)
    again = FewShotSplits(x, y, rotations=True, seed=3)
    assert splits.labels == again.labels
    assert [len(splits.labels[s]) for s in ("train", "valid", "test")] == [6, 2, 2]
    assert sorted(sum(splits.labels.values(), ())) == list(range(10))
    assert FewShotSplits(x, y, seed=4).labels != splits.labels  # the seed matters
    assert (splits.num_classes("train"), splits.num_classes("valid"), splits.num_classes("test")) == (24, 8, 8)
    # Over many meta-train tasks no rotation of a meta-test digit appears, and vice versa.
    seen = {}
    for split in ("train", "test"):
        sampler = splits.sampler(split, ways=5, shots=1, queries=2)
        batch = jax.jit(lambda key, fn: sample_metabatch(key, fn, 300))(jax.random.PRNGKey(0), sampler)
        seen[split] = set(np.unique(np.asarray(batch.train.info["class_id"]) // 4).tolist())
        assert batch.train.x.shape == (300, 5, 8, 8, 1) and batch.test.x.shape == (300, 10, 8, 8, 1)
    assert seen["train"] == set(splits.labels["train"]) and seen["test"] == set(splits.labels["test"])


def test_classes_labels_and_examples_are_drawn_uniformly():
    # 3 classes of sizes 4, 5, 6; ways=2, shots=1, queries=1.
    labels = np.repeat([0, 1, 2], [4, 5, 6])
    x, y = coded_images(labels)
    splits = FewShotSplits(x, y, classes={"train": [0, 1, 2]})
    tasks = 6000
    sampler = splits.sampler("train", ways=2, shots=1, queries=1)
    batch = jax.jit(lambda key, fn: sample_metabatch(key, fn, tasks))(jax.random.PRNGKey(7), sampler)
    class_of_label0 = np.asarray(batch.train.info["class_id"])[:, 0]
    # Each class gets label 0 with probability 1/3.
    freq = np.bincount(class_of_label0, minlength=3) / tasks
    assert np.all(np.abs(freq - 1 / 3) < 5 * np.sqrt(2 / 9 / tasks)), freq
    # Within class 2 (6 examples), each is the support example with probability 1/6.
    support = decode(np.asarray(batch.train.x))[:, 0][class_of_label0 == 2]
    freq = np.bincount(support - 9, minlength=6) / len(support)
    assert len(freq) == 6 and np.all(np.abs(freq - 1 / 6) < 5 * np.sqrt(5 / 36 / len(support))), freq


def test_flat_features_and_batch_sampler():
    labels = np.repeat([0, 1, 2, 3], 5)
    x = np.stack([labels * 10.0, np.arange(20.0)], axis=1).astype(np.float32)  # (20, 2)
    splits = FewShotSplits(x, labels, classes={"train": [1, 2, 3], "test": [0]})
    task = jax.jit(splits.sampler("train", ways=3, shots=2, queries=3))(jax.random.PRNGKey(0))
    assert task.train.x.shape == (6, 2) and task.test.x.shape == (9, 2)
    np.testing.assert_array_equal(task.train.x[:, 0] / 10, task.train.info["class_id"])
    batch = jax.jit(splits.batch_sampler("train", batch_size=600))(jax.random.PRNGKey(1))
    # Labels are the class's index in the split (1, 2, 3 -> 0, 1, 2), drawn evenly.
    np.testing.assert_array_equal(batch.x[:, 0] / 10 - 1, batch.y)
    assert np.all(np.abs(np.bincount(batch.y) / 600 - 1 / 3) < 0.1)
    # With rotations a label says which class and which turn.
    images, image_labels = coded_images(np.repeat([5, 6], 3))
    rotated = FewShotSplits(images, image_labels, classes={"train": [5, 6]}, rotations=True)
    batch = jax.tree_util.tree_map(np.asarray, jax.jit(rotated.batch_sampler("train", batch_size=200))(jax.random.PRNGKey(2)))
    assert set(batch.y.tolist()) == set(range(8))
    for image, label in zip(batch.x, batch.y):
        source = decode(image)
        assert image_labels[source] == 5 + label // 4
        np.testing.assert_array_equal(image, np.rot90(images[source], label % 4, axes=(0, 1)))


def test_sampler_trains_in_a_stream_and_passes_its_data_as_an_argument():
    x, y = coded_images(np.repeat([0, 1, 2], 4))
    sampler = FewShotSplits(x, y, classes={"train": [0, 1, 2]}).sampler("train", ways=3, shots=1, queries=2)
    assert isinstance(sampler, jax.tree_util.Partial)
    assert any(leaf.shape == (3, 4, 2, 2, 1) for leaf in jax.tree_util.tree_leaves(sampler))
    stream = metax.data.MetaBatchStream(sampler, meta_batch_size=5, rng=jax.random.PRNGKey(0))
    batch = stream.batch(2)
    direct = jax.jit(lambda key, fn: sample_metabatch(key, fn, 5))(jax.random.fold_in(jax.random.PRNGKey(0), 2), sampler)
    np.testing.assert_array_equal(batch.train.x, direct.train.x)
    assert stream.sample_input.shape == (3, 2, 2, 1) and stream.input_shape == (2, 2, 1)


def _x_y(n=10, width=4):
    return np.zeros((n, width), np.float32), np.repeat(np.arange(5), n // 5)


BAD_INPUT = [
    ("ways above the split's classes",
     lambda: FewShotSplits(*_x_y(), classes={"train": [0, 1, 2], "test": [3, 4]}).sampler("test", ways=5, shots=1, queries=1),
     r"ways=5 but the meta-test split has only 2 classes \(labels \[3, 4\]\); use fewer ways, rotations=True"),
    ("shots + queries above a class's examples",
     lambda: FewShotSplits(*_x_y(), classes={"train": [0, 1, 2]}).sampler("train", ways=2, shots=1, queries=2),
     r"shots=1 \+ queries=2 = 3 examples per class, but class 0 of the meta-train split has only 2 examples"),
    ("x and y disagree in length",
     lambda: FewShotSplits(np.zeros((10, 4)), np.arange(9) % 3),
     r"x has shape \(10, 4\) but y has 9 labels"),
    ("float labels", lambda: FewShotSplits(np.zeros((4, 2)), np.zeros(4)), r"y must be integer class labels"),
    ("rotations of non-square images",
     lambda: FewShotSplits(np.zeros((4, 2, 3, 1)), np.arange(4), rotations=True), r"square images .* shape \(4, 2, 3, 1\)"),
    ("fractions that do not sum to 1",
     lambda: FewShotSplits(*_x_y(), fractions=(0.5, 0.2, 0.2)), r"summing to 1, got \(0.5, 0.2, 0.2\)"),
    ("overlapping explicit splits",
     lambda: FewShotSplits(*_x_y(), classes={"train": [0, 1], "test": [1, 2]}), r"Label 1 is in both classes\['train'\] and classes\['test'\]"),
    ("unknown explicit labels",
     lambda: FewShotSplits(*_x_y(), classes={"train": [0, 7]}), r"classes\['train'\] names labels \[7\]"),
    ("unknown split", lambda: FewShotSplits(*_x_y()).sampler("val", ways=1, shots=1, queries=1), r"split must be one of"),
    ("zero shots", lambda: FewShotSplits(*_x_y()).sampler("train", ways=1, shots=0, queries=1), r"shots must be a positive int"),
]


@pytest.mark.parametrize("make", [case[1] for case in BAD_INPUT], ids=[case[0] for case in BAD_INPUT])
def test_bad_sampler_input_names_the_numbers(make):
    pattern = dict((id(case[1]), case[2]) for case in BAD_INPUT)[id(make)]
    with pytest.raises(ValueError, match=pattern):
        make()
