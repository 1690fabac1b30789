"""``alexnet prepare`` on generated sources of every layout, checked against independent computations."""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet import cli
from alexnet.data import builtin_fashion_mnist, open_store
from alexnet.data import pool as pool_module
from alexnet.errors import UserError
from helpers import make_tree, noise_image, quiet_prepare, write_bad_files, write_convertible_files

S = 16


def run(source, out, **kw):
    return quiet_prepare(source, out, **{"image_size": S, **kw})


def test_tree_with_bad_files(tmp_path):
    src = make_tree(tmp_path / "src")
    bad = write_bad_files(src / "train" / "cat")
    converted = write_convertible_files(src / "train" / "dog")
    result = run(src, tmp_path / "store", workers=2)
    store = result.store

    report = json.loads((tmp_path / "store" / "report.json").read_text())
    reasons = {os.path.basename(item["path"]): item["reason"] for item in report["skipped"]}
    assert set(reasons) == set(bad), "every bad file is listed, and only those"
    for name, prefix in bad.items():
        assert reasons[name].startswith(prefix), (name, reasons[name])
    assert f"skipped {len(bad)} files" in result.summary and "report.json" in result.summary
    assert report["conversions"]["CMYK converted to RGB"] == 1

    train = store.split("train")
    assert len(train) == 2 * 4 + len(converted)
    assert store.channels == 3 and store.classes == ["cat", "dog"]
    assert np.bincount(train.labels).tolist() == [4, 4 + len(converted)]
    assert store.manifest["splits"]["train"]["per_class"] == [4, 4 + len(converted)]
    # the converted images are in the store, converted right (found by their decoded content)
    for name, check in converted.items():
        assert any(check(image) for image in train.images[train.labels == 1]), name
    assert not train.images.flags.writeable


def test_mean_and_pca_against_numpy(tmp_path):
    src = make_tree(tmp_path / "src", per_class=6)
    store = run(src, tmp_path / "store", workers=2).store
    images = np.asarray(store.split("train").images, np.float64)
    np.testing.assert_allclose(store.mean_image, images.mean(axis=0), rtol=0, atol=1e-4)
    covariance = np.cov(images.reshape(-1, 3).T)
    np.testing.assert_allclose(store.pixel_covariance, covariance, rtol=1e-9)
    values, vectors = np.linalg.eigh(covariance)
    np.testing.assert_allclose(store.pca_eigenvalues, values[::-1], rtol=1e-5)
    for k in range(3):  # the same axes, up to sign
        assert abs(float(store.pca_eigenvectors[:, k] @ vectors[:, 2 - k])) == pytest.approx(1, abs=1e-5)
    assert store.mean_image.dtype == np.float32 and store.mean_image.shape == (S, S, 3)


def test_grayscale_set_stays_one_channel(tmp_path):
    src = make_tree(tmp_path / "src", mode="L")
    store = run(src, tmp_path / "store").store
    assert store.channels == 1 and store.split("train").images.shape == (8, S, S, 1)
    assert store.pca_eigenvectors.shape == (1, 1)


def test_held_out_fraction(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("a", "b", "c"):
        (tmp_path / "src" / c).mkdir(parents=True)
        for i in range(10):
            noise_image(rng, 20, 20).save(tmp_path / "src" / c / f"{i}.png")
    first = run(tmp_path / "src", tmp_path / "s1", val_fraction=0.2, seed=3).store
    again = run(tmp_path / "src", tmp_path / "s2", val_fraction=0.2, seed=3).store
    other = run(tmp_path / "src", tmp_path / "s3", val_fraction=0.2, seed=4).store
    assert first.split("val").labels.tolist().count(0) == 2 and len(first.split("val")) == 6
    assert len(first.split("train")) == 24
    np.testing.assert_array_equal(first.split("val").images, again.split("val").images)
    assert not np.array_equal(first.split("val").images, other.split("val").images)
    train_rows = {bytes(x) for x in first.split("train").images.reshape(24, -1)}
    assert not any(bytes(x) in train_rows for x in first.split("val").images.reshape(6, -1)), "val and train are disjoint"


def test_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no class folders"):
        run(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    (tmp_path / "hollow" / "b").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no files"):
        run(tmp_path / "hollow", tmp_path / "out")
    single = tmp_path / "single" / "only"
    single.mkdir(parents=True)
    noise_image(np.random.default_rng(0), 20, 20).save(single / "x.png")
    with pytest.raises(UserError, match="single class"):
        run(tmp_path / "single", tmp_path / "out")


def test_class_emptied_by_skipping_is_an_error(tmp_path):
    src = make_tree(tmp_path / "src")
    (src / "train" / "bird").mkdir()
    (src / "train" / "bird" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(UserError, match="'bird' has no usable training image"):
        run(src, tmp_path / "store")
    with pytest.raises(UserError, match="alexnet prepare"):
        open_store(tmp_path / "store")
    report = json.loads((tmp_path / "store" / "report.json").read_text())
    assert [os.path.basename(s["path"]) for s in report["skipped"]] == ["broken.jpg"]


def test_existing_store_needs_force(tmp_path):
    src = make_tree(tmp_path / "src")
    run(src, tmp_path / "store")
    with pytest.raises(UserError, match="--force"):
        run(src, tmp_path / "store")
    store = run(src, tmp_path / "store", force=True, image_size=8).store
    assert store.image_size == 8


def test_open_store_refuses_incomplete(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        open_store(tmp_path / "missing")
    src = make_tree(tmp_path / "src")
    run(src, tmp_path / "store")
    open_store(tmp_path / "store")
    os.unlink(tmp_path / "store" / "manifest.json")
    with pytest.raises(UserError, match="alexnet prepare"):
        open_store(tmp_path / "store")


def test_decoder_crash_skips_only_that_file(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src", per_class=6)
    crash = src / "train" / "cat" / "3.png"
    real = pool_module.decode_file

    def decode_or_die(path, *args):
        if str(path) == str(crash):
            os._exit(3)  # a segfaulting decoder, as the forked worker sees it
        return real(path, *args)

    monkeypatch.setattr(pool_module, "decode_file", decode_or_die)
    result = run(src, tmp_path / "store", workers=2, chunk_size=4)
    assert [(s["path"], s["reason"]) for s in result.skipped] == [("train/cat/3.png", "the decoder crashed on this file (its process died)")]
    assert len(result.store.split("train")) == 11


def test_cli_prepare(tmp_path, capsys):
    src = make_tree(tmp_path / "src")
    assert cli.main(["prepare", str(src), str(tmp_path / "store"), "--image-size", "8", "--workers", "0", "--quiet"]) == 0
    assert "prepared" in capsys.readouterr().out
    assert cli.main(["prepare", str(src), str(tmp_path / "store"), "--image-size", "8", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["prepare", str(tmp_path / "nope"), str(tmp_path / "s2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


# --- ILSVRC-2012 layout ----------------------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n02119789"]
COLOURS = {"n01440764": (250, 10, 10), "n01443537": (10, 250, 10), "n02119789": (10, 10, 250)}


def mat_element(kind, payload):
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_matrix(mx_class, dims, body, name=b""):
    flags = mat_element(6, struct.pack("<II", mx_class, 0))
    return mat_element(14, flags + mat_element(5, struct.pack(f"<{len(dims)}i", *dims)) + mat_element(1, name) + body)


def write_meta_mat(path, id_to_wnid, compress):
    """A MATLAB 5 file with a 1xN struct array 'synsets' (fields ILSVRC2012_ID, WNID), written by hand."""
    fields = [b"ILSVRC2012_ID", b"WNID"]
    body = mat_element(5, struct.pack("<i", 32)) + mat_element(1, b"".join(f.ljust(32, b"\0") for f in fields))
    for i, wnid in id_to_wnid.items():
        body += mat_matrix(6, (1, 1), mat_element(9, struct.pack("<d", i)))
        body += mat_matrix(4, (1, len(wnid)), mat_element(4, wnid.encode("utf-16-le")))
    matrix = mat_matrix(2, (1, len(id_to_wnid)), body, b"synsets")
    header = b"MATLAB 5.0 MAT-file, written by the tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    if compress:
        packed = zlib.compress(matrix)
        matrix = struct.pack("<II", 15, len(packed)) + packed
    path.write_bytes(header + matrix)


def make_ilsvrc(root, val_wnids):
    for w in WNIDS:
        (root / "train" / w).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (24, 20), COLOURS[w]).save(root / "train" / w / f"{w}_{i}.JPEG", quality=95)
    (root / "val").mkdir()
    for k, w in enumerate(val_wnids, start=1):
        Image.new("RGB", (20, 24), COLOURS[w]).save(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", quality=95)
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn02119789 kit fox, Vulpes macrotis\n")


def check_val_labels(store):
    val = store.split("val")
    for image, label in zip(val.images, val.labels):
        assert np.abs(image[8, 8].astype(int) - COLOURS[WNIDS[label]]).max() <= 6
    return val


@pytest.mark.parametrize("compress", [False, True])
def test_ilsvrc_ground_truth_with_devkit_ids(tmp_path, compress):
    val_wnids = ["n02119789", "n01440764", "n01443537", "n02119789"]
    make_ilsvrc(tmp_path / "src", val_wnids)
    devkit_ids = {1: "n02119789", 2: "n01443537", 3: "n01440764"}  # not the sorted order, as in the devkit
    data = tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    write_meta_mat(data / "meta.mat", devkit_ids, compress)
    wnid_to_id = {w: i for i, w in devkit_ids.items()}
    ids = [wnid_to_id[w] for w in val_wnids] + [1] * (50_000 - len(val_wnids))  # the devkit's file has 50,000 lines
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    store = run(tmp_path / "src", tmp_path / "store").store
    assert store.class_ids == WNIDS and store.classes == ["tench", "goldfish", "kit fox"]
    val = check_val_labels(store)
    assert [WNIDS[i] for i in val.labels] == val_wnids
    assert store.manifest["source_kind"] == "ilsvrc"


def test_ilsvrc_ground_truth_without_meta_is_an_error(tmp_path):
    make_ilsvrc(tmp_path / "src", ["n01440764"])
    (tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data").mkdir(parents=True)
    (tmp_path / "src" / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(UserError, match="meta.mat"):
        run(tmp_path / "src", tmp_path / "store")


def test_ilsvrc_val_labels_file(tmp_path):
    val_wnids = ["n01443537", "n02119789", "n01440764"]
    make_ilsvrc(tmp_path / "src", val_wnids)
    # all 50,000 names, as a complete file has; the third image's class is not among train/'s
    labels = val_wnids[:2] + ["n09999999"] + ["n01440764"] * (50_000 - 3)
    lines = [f"ILSVRC2012_val_{k:08d}.JPEG {w}" for k, w in enumerate(labels, start=1)]
    (tmp_path / "src" / "val_labels.txt").write_text("\n".join(lines) + "\n")
    result = run(tmp_path / "src", tmp_path / "store", val_labels=tmp_path / "src" / "val_labels.txt")
    val = check_val_labels(result.store)
    assert [WNIDS[i] for i in val.labels] == val_wnids[:2]
    assert result.skipped == [{"split": "val", "path": "val/ILSVRC2012_val_00000003.JPEG",
                               "reason": "label n09999999 is not one of the training classes"}]


# --- IDX (Fashion-MNIST) ---------------------------------------------------------------------


def write_idx_by_hand(path, array):
    data = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


@pytest.mark.parametrize("ext", ["", ".gz"])
def test_idx_reader(tmp_path, ext):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", 30), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        labels = np.arange(n) % 3
        write_idx_by_hand(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx_by_hand(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        arrays[prefix] = images, labels
    store = run(tmp_path, tmp_path / "store", image_size=8, workers=2).store
    assert store.channels == 1 and store.classes == ["0", "1", "2"]
    for split, prefix in (("train", "train"), ("val", "t10k")):
        np.testing.assert_array_equal(store.split(split).images[..., 0], arrays[prefix][0])  # S = 8: no resampling
        np.testing.assert_array_equal(store.split(split).labels, arrays[prefix][1])


def test_idx_without_test_files_holds_out_a_fraction(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    write_idx_by_hand(tmp_path / "train-images-idx3-ubyte", images)
    write_idx_by_hand(tmp_path / "train-labels-idx1-ubyte", np.arange(40) % 2)
    store = run(tmp_path, tmp_path / "store", image_size=8, val_fraction=0.25).store
    assert len(store.split("train")) == 30 and np.bincount(store.split("val").labels).tolist() == [5, 5]
    rows = {bytes(r) for r in store.split("train").images.reshape(30, -1)} | {bytes(r) for r in store.split("val").images.reshape(10, -1)}
    assert rows == {bytes(r) for r in images.reshape(40, -1)}


def test_builtin_fashion_mnist():
    folder = builtin_fashion_mnist()
    assert (folder / "LICENSE").is_file() and "Zalando" in (folder / "LICENSE").read_text()
    for prefix, per_class in (("train", 1200), ("t10k", 200)):
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz") as f:
            labels = np.frombuffer(f.read()[8:], np.uint8)
        assert np.bincount(labels).tolist() == [per_class] * 10
    assert sum(f.stat().st_size for f in folder.iterdir()) < 6.5e6


@pytest.mark.slow
def test_builtin_fashion_mnist_prepares(tmp_path):
    store = run(builtin_fashion_mnist(), tmp_path / "store", image_size=32, workers=2).store
    assert len(store.split("train")) == 12000 and len(store.split("val")) == 2000
    assert store.classes[0] == "T-shirt/top" and store.image_size == 32 and store.channels == 1
