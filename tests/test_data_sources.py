"""Data sources on files the tests write: IDX (both byte orders, gzip), .npz, image folders.

Expected values come from the arrays written, never from the readers themselves.
"""

import gzip
import os

import numpy as np
import pytest
from PIL import Image

import metax
from metax.data import folder as folder_mod
from metax.data import load_idx, load_image_folder, load_labelled_npz, load_mnist

CODES = {np.dtype("u1"): 0x08, np.dtype("i1"): 0x09, np.dtype("i2"): 0x0B, np.dtype("i4"): 0x0C,
         np.dtype("f4"): 0x0D, np.dtype("f8"): 0x0E}


def idx_bytes(array, order=">"):
    """An IDX file by hand: big-endian (the standard) or every integer little-endian."""
    array = np.asarray(array)
    code = CODES[array.dtype.newbyteorder("=")]
    if order == ">":
        magic = bytes([0, 0, code, array.ndim])
    else:  # the int32 0x0000_08_03 written little-endian
        magic = bytes([array.ndim, code, 0, 0])
    dims = np.asarray(array.shape, order + "i4").tobytes()
    return magic + dims + array.astype(array.dtype.newbyteorder(order)).tobytes()


def write(path, data, compress=False):
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
def test_idx_reads_both_byte_orders_of_every_type(tmp_path, order, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if dtype[0] in "ui" else None
    if info is not None:
        array = rng.integers(info.min, info.max, size=(3, 2, 5), endpoint=True).astype(dtype)
    else:
        array = (rng.normal(size=(3, 2, 5)) * 1e3).astype(dtype)
    read = load_idx(write(tmp_path / "a.idx", idx_bytes(array, order)))
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative and read.shape == (3, 2, 5)
    np.testing.assert_array_equal(read, array)


def test_idx_gzip_is_recognised_by_content(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(4, 6)
    for name in ("a.idx.gz", "b.idx"):  # a gzipped file without .gz in its name reads too
        np.testing.assert_array_equal(load_idx(write(tmp_path / name, idx_bytes(array), compress=True)), array)


def test_mnist_folder_and_all_split(tmp_path):
    images = (np.arange(3 * 2 * 2) * 20).astype(np.uint8).reshape(3, 2, 2)
    write(tmp_path / "train-images-idx3-ubyte.gz", idx_bytes(images), compress=True)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.array([7, 0, 3], np.uint8), "<"))
    write(tmp_path / "t10k-images.idx3-ubyte", idx_bytes(images[:1]))
    write(tmp_path / "t10k-labels.idx1-ubyte", idx_bytes(np.array([5], np.uint8)))
    x, y = load_mnist(str(tmp_path), "all")
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (4, 2, 2)
    np.testing.assert_allclose(x, np.concatenate([images, images[:1]]) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(y, [7, 0, 3, 5])


def test_npz_keys_are_documented_and_checked(tmp_path):
    x = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    np.savez(tmp_path / "plain.npz", x=x, y=np.array([1, 0, 1]))
    got_x, got_y = load_labelled_npz(tmp_path / "plain.npz")
    np.testing.assert_allclose(got_x, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(got_y, [1, 0, 1])
    # keras' mnist.npz layout: train and test are joined.
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=np.array([1, 0, 1]), x_test=x[:2], y_test=np.array([2, 2]))
    got_x, got_y = load_labelled_npz(tmp_path / "keras.npz")
    assert got_x.shape == (5, 2, 2)
    np.testing.assert_array_equal(got_y, [1, 0, 1, 2, 2])
    np.savez(tmp_path / "named.npz", feats=np.ones((2, 3), np.float32), cls=np.array([4, 5]))
    got_x, got_y = load_labelled_npz(tmp_path / "named.npz", x_key="feats", y_key="cls")
    np.testing.assert_array_equal(got_x, np.ones((2, 3))) and np.testing.assert_array_equal(got_y, [4, 5])


def png_tree(root, sizes=None):
    """root/<group>/<class>/<i>.png with grey levels 10 * (class index) + i."""
    layout = {"alpha": ["a1", "a2"], "beta": ["b1"]}
    expected = []
    for group, classes in layout.items():
        for cls in classes:
            os.makedirs(root / group / cls)
            for i in range(3):
                level = 10 * len(expected) + i
                Image.fromarray(np.full(sizes or (4, 5), level, np.uint8)).save(root / group / cls / f"{i}.png")
            expected.append(f"{group}/{cls}")
    return expected


def test_image_folder_reads_labels_and_pixels_and_caches_outside_the_tree(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = png_tree(root)
    before = sorted(str(p) for p in root.rglob("*"))
    x, y, class_names = load_image_folder(root, cache_dir=str(cache))
    assert class_names == names == ["alpha/a1", "alpha/a2", "beta/b1"]
    assert x.shape == (9, 4, 5, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.repeat([0, 1, 2], 3))
    levels = 10 * np.repeat([0, 1, 2], 3) + np.tile([0, 1, 2], 3)
    np.testing.assert_allclose(x[:, 0, 0, 0], levels / 255.0, rtol=1e-6)
    np.testing.assert_allclose(x, np.broadcast_to(x[:, :1, :1], x.shape))
    assert sorted(str(p) for p in root.rglob("*")) == before  # nothing written into the tree
    cached = list(cache.glob("image_folder-*.npz"))
    assert len(cached) == 1

    # A second call reads the cache: decoding is not needed (and would fail).
    def refuse(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(folder_mod, "_decode", refuse)
    again = load_image_folder(root, cache_dir=str(cache))
    np.testing.assert_array_equal(again[0], x) and np.testing.assert_array_equal(again[1], y)
    monkeypatch.undo()
    # Changing the tree invalidates the cache: the new image shows up.
    Image.fromarray(np.full((4, 5), 200, np.uint8)).save(root / "beta" / "b1" / "3.png")
    x, y, _ = load_image_folder(root, cache_dir=str(cache))
    assert x.shape[0] == 10 and y[-1] == 2 and np.isclose(x[-1, 0, 0, 0], 200 / 255.0)
    # Options: inversion, resizing (a constant image stays constant), no cache written.
    x, _, _ = load_image_folder(root, size=2, invert=True, cache=False, cache_dir=str(tmp_path / "none"))
    assert x.shape == (10, 2, 2, 1) and not (tmp_path / "none").exists()
    np.testing.assert_allclose(x[:9, 0, 0, 0], 1 - levels / 255.0, atol=1e-6)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("METAX_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert metax.data.default_cache_dir() == os.path.join(str(tmp_path), "metax")
    monkeypatch.setenv("METAX_CACHE_DIR", str(tmp_path / "mine"))
    assert metax.data.default_cache_dir() == str(tmp_path / "mine")


# -- bad input: every error names the file or the numbers ----------------------------------


def _truncated(tmp_path):
    data = idx_bytes(np.zeros((4, 3), np.uint8))
    return write(tmp_path / "short.idx", data[:-2])


def _truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8).reshape(10, 20)))
    return write(tmp_path / "cut.idx.gz", data[: len(data) // 2])


def _mismatched_mnist(tmp_path):
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((3, 2, 2), np.uint8)))
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros((2,), np.uint8)))
    return str(tmp_path)


def _empty_tree(tmp_path):
    os.makedirs(tmp_path / "root" / "group" / "class")
    (tmp_path / "root" / "group" / "notes.txt").write_text("no images here")
    return str(tmp_path / "root")


def _empty_class(tmp_path):
    png_tree(tmp_path / "root")
    os.makedirs(tmp_path / "root" / "beta" / "b2")
    return str(tmp_path / "root")


def _mixed_sizes(tmp_path):
    png_tree(tmp_path / "root")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "root" / "beta" / "b1" / "9.png")
    return str(tmp_path / "root")


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return str(tmp_path / "d.npz")


BAD_FILES = [
    ("idx bad magic", lambda p: load_idx(write(p / "bad.idx", b"\x01\x02\x08\x01" + bytes(8))),
     ValueError, r"bad.idx is not an IDX file: .* got 01 02 08 01"),
    ("idx unknown type code", lambda p: load_idx(write(p / "code.idx", b"\x00\x00\x07\x01" + bytes(8))),
     ValueError, r"code.idx: unknown IDX type code 0x07"),
    ("idx truncated data", lambda p: load_idx(_truncated(p)),
     ValueError, r"short.idx: the header declares shape \(4, 3\) of uint8 \(12 bytes\) but 10 bytes follow; the file is truncated"),
    ("idx trailing bytes", lambda p: load_idx(write(p / "long.idx", idx_bytes(np.zeros(3, np.uint8)) + b"\x00")),
     ValueError, r"long.idx: .* \(3 bytes\) but 4 bytes follow; the file is followed by extra bytes"),
    ("idx truncated header", lambda p: load_idx(write(p / "head.idx", b"\x00\x00\x08\x03" + bytes(5))),
     ValueError, r"head.idx: truncated header: 3 dimensions need 16 header bytes, the file has 9"),
    ("idx negative dimension", lambda p: load_idx(write(p / "neg.idx", b"\x00\x00\x08\x01" + np.array([-3], ">i4").tobytes())),
     ValueError, r"neg.idx: the header declares a negative dimension, shape \(-3,\)"),
    ("idx truncated gzip", lambda p: load_idx(_truncated_gzip(p)),
     ValueError, r"cut.idx.gz: the gzip stream is corrupt or truncated"),
    ("idx named .gz but plain", lambda p: load_idx(write(p / "x.idx.gz", idx_bytes(np.zeros(2, np.uint8)))),
     ValueError, r"x.idx.gz ends in .gz but is not gzip-compressed"),
    ("mnist images/labels count mismatch", lambda p: load_mnist(_mismatched_mnist(p), "train"),
     ValueError, r"train-images-idx3-ubyte has 3 images but .*train-labels-idx1-ubyte has 2 labels"),
    ("mnist missing file", lambda p: load_mnist(str(p), "test"), FileNotFoundError, r"No t10k-images-idx3-ubyte"),
    ("npz images/labels count mismatch", lambda p: load_labelled_npz(_npz(p, x=np.zeros((4, 2)), y=np.zeros(3, int))),
     ValueError, r"d.npz\['x'\] has 4 images but .*d.npz\['y'\] has 3 labels"),
    ("npz missing keys", lambda p: load_labelled_npz(_npz(p, a=np.zeros(2), b=np.zeros(2))),
     KeyError, r"d.npz has keys \['a', 'b'\]; expected \('x', 'y'\) or"),
    ("npz float labels", lambda p: load_labelled_npz(_npz(p, x=np.zeros((2, 2)), y=np.zeros(2))),
     ValueError, r"d.npz\['y'\] must hold integer class labels, got dtype float64"),
    ("folder with no images", lambda p: load_image_folder(_empty_tree(p), cache=False),
     ValueError, r"No images under '.*root': expected the layout root/<group>/<class>/\*.png"),
    ("class folder with no images", lambda p: load_image_folder(_empty_class(p), cache=False),
     ValueError, r"The class folder '.*root/beta/b2' holds no images"),
    ("images of different sizes", lambda p: load_image_folder(_mixed_sizes(p), cache=False),
     ValueError, r"9.png' is 6x6 but '.*0.png' is 5x4; pass size="),
    ("missing folder", lambda p: load_image_folder(str(p / "nowhere"), cache=False), FileNotFoundError, r"No image folder at"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[case[0] for case in BAD_FILES])
def test_bad_files_give_errors_naming_the_file_and_numbers(tmp_path, case):
    _, make, error, pattern = case
    with pytest.raises(error, match=pattern):
        make(tmp_path)
