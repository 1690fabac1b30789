"""A store is checked when it is opened: each kind of damage, built here by hand, ends in one line
that names the damaged file and says to prepare the store again (never a crash later on)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest

from alexnet.data import open_store, prepare_store
from alexnet.data.jpeg import index_file
from alexnet.errors import UserError
from helpers import make_tree


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_tree(root / "src", classes=("cat", "dog", "emu"), per_class=3, val_per_class=2)
    prepare_store(root / "src", root / "store", image_size=8, workers=0, progress_bar=False, log=lambda s: None)
    return root / "store"


@pytest.fixture
def store(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "store")
    return tmp_path / "store"


def refused(store, file: str, *words: str) -> str:
    with pytest.raises(UserError) as e:
        open_store(store)
    message = str(e.value)
    assert "\n" not in message
    assert str(store / file) in message and "alexnet prepare" in message, message
    for word in words:
        assert word in message, message
    return message


def edit_manifest(store, change) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    change(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))


def test_the_undamaged_store_opens(pristine):
    store = open_store(pristine)
    assert store.num_classes == 3 and len(store.split("train")) == 9 and len(store.split("val")) == 6


# --- array files -----------------------------------------------------------------------------


def test_truncated_images_file(store):
    path = store / "train_images.npy"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - 10)
    refused(store, "train_images.npy", "truncated", str(size - 10), str(size))


def test_images_file_longer_than_its_header(store):
    with open(store / "val_images.npy", "ab") as f:
        f.write(b"\0" * 7)
    refused(store, "val_images.npy", "7 bytes more")


def test_images_of_the_wrong_dtype(store):
    images = np.load(store / "train_images.npy")
    np.save(store / "train_images.npy", images.astype(np.float32))
    refused(store, "train_images.npy", "float32")


def test_images_header_garbage(store):
    (store / "train_images.npy").write_bytes(b"not an npy file at all")
    refused(store, "train_images.npy", "header")


def test_missing_labels_file(store):
    (store / "val_labels.npy").unlink()
    refused(store, "val_labels.npy", "missing")


def test_labels_of_the_wrong_dtype(store):
    labels = np.load(store / "train_labels.npy")
    np.save(store / "train_labels.npy", labels.astype(np.int32))
    refused(store, "train_labels.npy", "int32")


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_out_of_range(store, bad):
    labels = np.load(store / "train_labels.npy")
    labels[0] = bad  # 3 classes: 0..2
    np.save(store / "train_labels.npy", labels)
    refused(store, "train_labels.npy", "outside 0..2")


def test_labels_that_disagree_with_the_manifest(store):
    labels = np.load(store / "train_labels.npy")
    labels[labels == 0] = 1  # in range, but the per-class counts no longer match
    np.save(store / "train_labels.npy", labels)
    refused(store, "train_labels.npy", "per class")


# --- statistics ------------------------------------------------------------------------------


def test_stats_missing(store):
    (store / "stats.npz").unlink()
    refused(store, "stats.npz", "missing")


def test_stats_garbage(store):
    (store / "stats.npz").write_bytes(b"PK\x03\x04 garbage, not a zip")
    refused(store, "stats.npz", "cannot be read")


def rewrite_stats(store, **changes):
    with np.load(store / "stats.npz") as f:
        stats = {k: f[k] for k in f.files}
    stats.update(changes)
    stats = {k: v for k, v in stats.items() if v is not None}
    np.savez(store / "stats.npz", **stats)


def test_stats_lacking_an_array(store):
    rewrite_stats(store, pca_eigenvectors=None)
    refused(store, "stats.npz", "lacks pca_eigenvectors")


def test_stats_of_the_wrong_shape(store):
    rewrite_stats(store, mean_image=np.zeros((4, 4, 3), np.float32))
    refused(store, "stats.npz", "mean_image", "(8, 8, 3)")


def test_stats_not_finite(store):
    rewrite_stats(store, pca_eigenvalues=np.array([1.0, np.nan, 2.0], np.float32))
    refused(store, "stats.npz", "NaN")


def test_stats_holding_a_pickle(store):
    rewrite_stats(store, pixel_covariance=np.array([{"code": 1}], dtype=object))
    refused(store, "stats.npz", "pixel_covariance", "object", "expected floats")


def test_stats_header_claiming_a_huge_array(store):
    """The header is checked before loading: a crafted shape does not decide the allocation."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**6, 10**6)})
    with np.load(store / "stats.npz") as f:
        stats = {k: f[k] for k in f.files}
    with zipfile.ZipFile(store / "stats.npz", "w") as z:
        for k, v in stats.items():
            member = io.BytesIO()
            np.save(member, v)
            z.writestr(f"{k}.npy", buf.getvalue() if k == "mean_image" else member.getvalue())
    refused(store, "stats.npz", "mean_image", "(1000000, 1000000)")


# --- the manifest ----------------------------------------------------------------------------


def test_manifest_not_json(store):
    (store / "manifest.json").write_text('{"format": "alexnet-store", ')
    refused(store, "manifest.json", "damaged")


def test_manifest_not_an_object(store):
    (store / "manifest.json").write_text("[1, 2, 3]")
    refused(store, "manifest.json", "not the manifest")


def test_manifest_of_another_version(store):
    edit_manifest(store, lambda m: m.update(format_version=99))
    refused(store, "manifest.json", "format 99")


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.update(format_version=True), ["format True"]),  # True == 1 in Python: refused all the same
        (lambda m: m.update(image_size="8"), ["image_size"]),
        (lambda m: m.update(image_size=8.0), ["image_size"]),
        (lambda m: m.update(image_size=-8), ["image_size"]),
        (lambda m: m.update(channels=2), ["channels"]),
        (lambda m: m.update(classes="cat dog emu"), ["classes"]),
        (lambda m: m.update(class_ids=["cat", "dog"]), ["class_ids"]),
        (lambda m: m.update(class_ids=["cat", "cat", "emu"]), ["twice"]),
        (lambda m: m.update(splits=[]), ["splits"]),
        (lambda m: m["splits"].pop("train"), ["splits"]),
        (lambda m: m["splits"].update({"../../etc": m["splits"]["val"]}), ["splits"]),
        (lambda m: m["splits"]["val"].update(count="6"), ["count"]),
        (lambda m: m["splits"]["val"].update(count=-6), ["count"]),
        (lambda m: m["splits"]["val"].update(per_class=[2, 2]), ["per_class"]),
        (lambda m: m["splits"]["val"].update(per_class=[2, 2, 3]), ["per_class"]),
        (lambda m: m.update(encoding=5), ["encoding"]),
        (lambda m: m.update(encoding="webp"), ["webp"]),
    ],
)
def test_manifest_with_wrong_types(store, change, words):
    edit_manifest(store, change)
    refused(store, "manifest.json", *words)


def test_manifest_count_disagreeing_with_the_files(store):
    def more(m):
        m["splits"]["val"]["count"] = 7
        m["splits"]["val"]["per_class"][0] += 1

    edit_manifest(store, more)
    refused(store, "val_images.npy", "shape")


def test_a_jpeg_store_is_checked_too(tmp_path):
    make_tree(tmp_path / "src", classes=("cat", "dog"), per_class=3, val_per_class=1)
    prepare_store(tmp_path / "src", tmp_path / "store", image_size=8, workers=0, progress_bar=False, log=lambda s: None,
                  encoding="jpeg")
    store = tmp_path / "store"
    assert open_store(store).manifest["encoding"] == "jpeg"
    index = store / index_file("train")
    with open(index, "ab") as f:
        f.write(b"\0" * 3)
    refused(store, index.name, "3 bytes more")
    index.write_bytes(index.read_bytes()[:-3])
    labels = np.load(store / "val_labels.npy")
    np.save(store / "val_labels.npy", labels + 5)
    refused(store, "val_labels.npy", "outside 0..1")
