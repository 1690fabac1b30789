"""JPEG stores: the same data as a raw store within JPEG's error, read by every consumer, resumable,
corruption reported by index and file, and the windowed shuffle's order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data import Loader, Split, open_store, prepare_store
from alexnet.data import jpeg
from alexnet.data.prepare import choose_encoding
from alexnet.data.progress import PROGRESS, Progress
from alexnet.errors import UserError
from helpers import TINY, wait_for_orphans, prepare_killed_mid_run

pytest.importorskip("simplejpeg")

REPO = Path(__file__).resolve().parent.parent
ARGS = dict(image_size=32, progress_bar=False, log=lambda message: None)


def photo(rng: np.random.Generator, size: int, label: int) -> np.ndarray:
    """A smooth, photo-like image (gradient, a disc, a little texture) whose colour depends on the label."""
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.array([(60, 160, 90), (180, 80, 60), (70, 90, 190), (160, 160, 60)][label % 4], float)
    img = base + 60 * np.stack([x, y, x * y], -1) * rng.uniform(-1, 1, 3)
    cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.15, 0.3)]
    img[(x - cx) ** 2 + (y - cy) ** 2 < r * r] += rng.uniform(-70, 70, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photos(root: Path, classes: int = 4, per_class: int = 16, size: int = 40, seed: int = 0) -> Path:
    """PNGs under root/{train,val}/c{k}: three of four to train, one to val (64 images by default)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            folder = root / ("val" if i % 4 == 0 else "train") / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(photo(rng, size, c)).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpeg")
    src = write_photos(root / "src")
    (src / "train" / "c1" / "5b.png").write_bytes(b"")  # skipped mid-split: its row is refilled
    raw = prepare_store(src, root / "raw", encoding="raw", workers=0, **ARGS)
    jpg = prepare_store(src, root / "jpg", encoding="jpeg", workers=2, chunk_size=5, **ARGS)
    assert raw.skipped == jpg.skipped and [s["path"] for s in jpg.skipped] == ["train/c1/5b.png"]
    return src, raw.store, jpg.store


def test_jpeg_store_holds_the_raw_stores_images_within_jpeg_error(stores):
    _, raw, jpg = stores
    assert (raw.encoding, jpg.encoding) == ("raw", "jpeg")
    manifest = json.loads((jpg.path / "manifest.json").read_text())
    assert manifest["encoding"] == "jpeg" and manifest["jpeg_quality"] == 90
    for name in ("train", "val"):
        a, b = raw.split(name), jpg.split(name)
        np.testing.assert_array_equal(a.labels, b.labels)
        x, y = np.asarray(a.images, np.float64), np.asarray(b.images, np.float64)
        assert x.shape == y.shape
        assert np.abs(x - y).mean() < 4.0 and np.abs(x - y).max() < 80  # quality 90, 4:2:0 chroma; texture noise std 3
    # the mean image of the JPEG store is that of its decoded images, and close to the raw one
    decoded = np.asarray(jpg.split("train").images, np.float64)
    np.testing.assert_allclose(jpg.mean_image, decoded.mean(axis=0), atol=1e-3)
    assert np.abs(jpg.mean_image - raw.mean_image).max() < 4.0
    np.testing.assert_allclose(jpg.pca_eigenvalues, raw.pca_eigenvalues, rtol=0.05)


def test_jpeg_images_index_like_an_array(stores):
    _, _, jpg = stores
    images = jpg.split("train").images
    every = np.asarray(images)
    assert every.dtype == np.uint8 and every.shape == images.shape == (48, 32, 32, 3)
    np.testing.assert_array_equal(images[5], every[5])
    np.testing.assert_array_equal(images[-1], every[-1])
    np.testing.assert_array_equal(images[3:9:2], every[3:9:2])
    np.testing.assert_array_equal(images[np.array([[7, 1], [1, 40]])], every[np.array([[7, 1], [1, 40]])])
    mask = jpg.split("train").labels == 2
    np.testing.assert_array_equal(images[mask], every[mask])
    out = np.empty((2, 32, 32, 3), np.uint8)
    assert jpg.split("train").read(np.array([9, 2]), out) is out
    np.testing.assert_array_equal(out, every[[9, 2]])
    with pytest.raises(IndexError):
        images[48]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_serves_both_encodings_alike(stores, workers):
    _, raw, jpg = stores
    served = {}
    for store in (raw, jpg):
        loader = Loader(store.split("train"), 10, shuffle=True, seed=3, drop_last=False, workers=workers)
        loader.set_epoch(2)
        batches = list(loader)
        served[store.encoding] = (torch.cat([b for b, _ in batches]), torch.cat([lab for _, lab in batches]), loader.order())
    raw_images, raw_labels, raw_order = served["raw"]
    jpg_images, jpg_labels, jpg_order = served["jpeg"]
    np.testing.assert_array_equal(raw_order, jpg_order)
    assert sorted(raw_order.tolist()) == list(range(48))
    assert torch.equal(raw_labels, jpg_labels)
    assert (raw_images.double() - jpg_images.double()).abs().mean() < 4.0


@pytest.mark.slow
def test_train_evaluate_ten_crop_and_neighbours_on_a_jpeg_store(stores, tmp_path, capsys):
    from alexnet.evaluate import evaluate
    from alexnet.trained import load_member
    from alexnet.training import train

    _, raw, jpg = stores
    train(TINY.replace(epochs=1), jpg.path, tmp_path / "run", show_progress=False, log=lambda s: None)
    member = load_member(str(tmp_path / "run" / "last.pt"), torch.device("cpu"))
    errors = {}
    for store in (raw, jpg):
        for ten_crop in (False, True):
            loader = Loader(store.split("val"), 8, shuffle=False, seed=0, drop_last=False, workers=1)
            errors[store.encoding, ten_crop] = evaluate([member], loader, ten_crop=ten_crop)
    for ten_crop in (False, True):
        assert errors["jpeg", ten_crop]["images"] == errors["raw", ten_crop]["images"] == 16
    assert main(["show", "neighbours", str(tmp_path / "run"), str(jpg.path), "--images", "2", "--max-train", "10",
                 "--out", str(tmp_path / "nb.png")]) == 0
    assert (tmp_path / "nb.png").stat().st_size > 0


def test_auto_encoding_is_raw_for_small_sets_and_jpeg_for_imagenet_sized_ones(stores):
    class FakePlan:  # only the split sizes matter
        def __init__(self, n):
            self.splits = {"train": range(n)}

    assert choose_encoding("auto", FakePlan(14_000), 32, "auto") == "raw"  # the built-in data
    assert choose_encoding("auto", FakePlan(1_281_167), 256, "auto") == "jpeg"  # ILSVRC-2012
    assert choose_encoding("raw", FakePlan(1_281_167), 256, "auto") == "raw"
    src, raw, _ = stores
    assert raw.encoding == "raw"
    with pytest.raises(UserError, match="encoding"):
        prepare_store(src, src.parent / "x", encoding="png", **ARGS)
    with pytest.raises(UserError, match="quality"):
        prepare_store(src, src.parent / "x", encoding="jpeg", quality=0, **ARGS)


def test_cli_encoding_flags(stores, tmp_path, capsys):
    src, _, _ = stores
    assert main(["prepare", str(src), str(tmp_path / "q"), "--image-size", "16", "--encoding", "jpeg",
                 "--jpeg-quality", "50", "--workers", "0", "--quiet"]) == 0
    assert "jpeg" in capsys.readouterr().out
    store = open_store(tmp_path / "q")
    assert store.encoding == "jpeg" and store.manifest["jpeg_quality"] == 50
    # rebuilt raw in the same folder: no JPEG file of the old store is left behind
    assert main(["prepare", str(src), str(tmp_path / "q"), "--image-size", "16", "--encoding", "raw", "--force",
                 "--workers", "0", "--quiet"]) == 0
    assert open_store(tmp_path / "q").encoding == "raw"
    assert not list(tmp_path.joinpath("q").glob("*_jpeg")) and not list(tmp_path.joinpath("q").glob("*_index.npy"))


def test_jpeg_quality_given_with_raw_is_refused_and_noted_under_auto(stores, tmp_path, capsys):
    src, _, _ = stores
    out = tmp_path / "r"
    argv = ["prepare", str(src), str(out), "--image-size", "16", "--workers", "0", "--quiet"]
    for quality in ("50", "90"):  # the default's value, given, is given
        assert main(argv + ["--encoding", "raw", "--jpeg-quality", quality]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "applies to JPEG stores only" in err[0] and "--encoding jpeg" in err[0], err
        assert not out.exists()  # nothing written
    with pytest.raises(UserError, match="applies to JPEG stores only"):
        prepare_store(src, out, encoding="raw", quality=90, **ARGS)
    assert not out.exists()
    # --encoding auto decides: this small set goes raw and the unused quality is a note
    assert main(argv + ["--jpeg-quality", "50"]) == 0
    assert "note: --jpeg-quality is ignored: the store is raw (chosen by --encoding auto" in capsys.readouterr().err
    assert open_store(out).encoding == "raw"
    assert main(argv + ["--force"]) == 0  # no quality given: no note
    assert "--jpeg-quality" not in capsys.readouterr().err


def corrupt_copy(store, tmp_path: Path, image: int) -> Path:
    """A copy of ``store`` with bytes in the middle of one image's JPEG payload flipped."""
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(store.path, copy)
    part, offset, length, _ = (int(v) for v in store.split("train").images.index[image])
    path = copy / "train_jpeg" / jpeg.part_name(part)
    data = bytearray(path.read_bytes())
    for k in range(offset + length // 2, offset + length // 2 + 8):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    return copy


def test_a_corrupt_payload_is_reported_by_index_and_file_never_decoded_silently(stores, tmp_path, capsys):
    _, _, jpg = stores
    damaged = open_store(corrupt_copy(jpg, tmp_path, 17))
    split = damaged.split("train")
    part = int(split.images.index[17, 0])
    found = split.images.verify()
    assert len(found) == 1 and "image 17 " in found[0] and jpeg.part_name(part) in found[0]
    with pytest.raises(jpeg.CorruptImage) as e:
        split.read(np.arange(48))
    assert [(p, i) for p, i, _ in e.value.bad] == [(17, 17)]
    with pytest.raises(UserError, match="image 17 of split 'train' is corrupt.*--force"):
        split.images[15:20]  # what figures and show neighbours do: one clear line

    # training's rule: the image is left out of its batch, with a line naming it; nothing else changes
    loader = Loader(split, 10, shuffle=True, seed=0, drop_last=False, workers=2)
    batches = list(loader)
    seen = torch.cat([lab for _, lab in batches])
    assert len(seen) == 47 and loader.skipped == {17}
    assert len(batches) == len(loader) and sorted(len(b) for b, _ in batches) == [8, 9, 10, 10, 10]
    err = capsys.readouterr().err
    assert "skipped image 17 of split 'train' is corrupt" in err and jpeg.part_name(part) in err
    expected = np.delete(loader.order(), np.flatnonzero(loader.order() == 17))
    np.testing.assert_array_equal(seen.numpy(), split.labels[expected])

    strict = Loader(split, 10, shuffle=False, seed=0, drop_last=False, workers=0, on_corrupt="fail")
    with pytest.raises(UserError, match="image 17 .*--force"):
        list(strict)


def test_missing_or_truncated_parts_are_one_clear_error(stores, tmp_path):
    _, _, jpg = stores
    damaged = corrupt_copy(jpg, tmp_path, 0)
    parts = sorted((damaged / "train_jpeg").iterdir())
    opened = open_store(damaged).split("train")
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"train_index.npy names bytes up to .*{parts[1].name}.*--force"):
        open_store(damaged)
    parts[1].unlink()
    with pytest.raises(UserError, match=f"train_index.npy names .*{parts[1].name}, which is missing"):
        open_store(damaged)
    lost = int(np.flatnonzero(opened.images.index[:, 0] == int(parts[1].stem.split("-")[1]))[0])
    with pytest.raises(UserError, match="cannot be read.*--force"):  # gone after the store was opened
        opened.images[lost]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses fork")
def test_a_killed_jpeg_prepare_resumes_to_the_same_store(tmp_path):
    src = write_photos(tmp_path / "src", classes=3, per_class=12)
    out = tmp_path / "store"
    prepare_killed_mid_run(src, out, image_size=24, chunk_size=4, workers=2, encoding="jpeg")
    progress = Progress.load(out / PROGRESS)
    assert 3 <= sum(int(d.sum()) for d in progress.done.values()) < sum(len(d) for d in progress.done.values())
    with pytest.raises(UserError, match="alexnet prepare"):
        open_store(out)
    wait_for_orphans(out)

    args = dict(image_size=24, chunk_size=4, encoding="jpeg", progress_bar=False, log=lambda m: None)
    resumed = prepare_store(src, out, workers=2, **args)
    assert resumed.resumed_chunks >= 3
    clean = prepare_store(src, tmp_path / "clean", workers=0, **args)
    for split in ("train", "val"):
        np.testing.assert_array_equal(resumed.store.split(split).images.index, clean.store.split(split).images.index)
        np.testing.assert_array_equal(np.asarray(resumed.store.split(split).images), np.asarray(clean.store.split(split).images))
        np.testing.assert_array_equal(resumed.store.split(split).labels, clean.store.split(split).labels)
    np.testing.assert_array_equal(resumed.store.mean_image, clean.store.mean_image)
    assert not (out / PROGRESS).exists()


# --- the windowed shuffle ----------------------------------------------------------------------


def sorted_split(n: int, classes: int) -> Split:
    """A split in class order, as a prepared folder tree is (image i has label i * classes // n)."""
    return Split("train", np.zeros((n, 1, 1, 1), np.uint8), (np.arange(n) * classes // n).astype(np.int64))


@pytest.mark.parametrize("drop_last", [False, True])
def test_windowed_shuffle_shards_every_image_once_by_blocks(drop_last):
    n, world, block, window = 1003, 3, 16, 128
    split = sorted_split(n, 20)
    loaders = [Loader(split, 8, shuffle=True, seed=4, rank=r, world_size=world, drop_last=drop_last, workers=0,
                      shuffle_window=window, block_images=block) for r in range(world)]
    for epoch in (0, 1):
        orders = [lo.order(epoch) for lo in loaders]
        together = np.concatenate(orders)
        assert len(set(together.tolist())) == len(together), "no image twice"
        if drop_last:
            assert len({len(lo) for lo in loaders}) == 1 and all(len(o) % 8 == 0 for o in orders)
        else:
            assert sorted(together.tolist()) == list(range(n))
        owners = {}  # a rank reads whole blocks of its own: each block's images all land on one rank
        for r, o in enumerate(orders):
            for b in set((o // block).tolist()):
                owners.setdefault(b, set()).add(r)
        assert all(len(ranks) == 1 for ranks in owners.values())
        for o in orders:  # an image stays within its window: each window draws on a few whole blocks
            for s in range(0, len(o), window):
                assert len(set((o[s : s + window] // block).tolist())) <= window // block + 2
    a, b = loaders[0].order(0), loaders[0].order(1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, loaders[0].order(0))  # (seed, epoch) fixes it: resumable


def test_windowed_shuffle_mixes_classes_almost_like_a_full_shuffle():
    """Effect on the order: in a class-sorted split, a batch of the windowed order holds nearly as many
    classes as one of a full shuffle, and far more than file order; neighbours in the order are far apart."""
    n, classes, batch = 8192, 64, 32
    split = sorted_split(n, classes)

    def classes_per_batch(**kw):
        loader = Loader(split, batch, shuffle=kw.pop("shuffle", True), seed=1, drop_last=True, workers=0, **kw)
        order = loader.order(0)
        labels = split.labels[order]
        return np.mean([len(set(labels[s : s + batch].tolist())) for s in range(0, len(order), batch)]), order

    full, _ = classes_per_batch()
    windowed, order = classes_per_batch(shuffle_window=2048, block_images=16)
    in_file_order, _ = classes_per_batch(shuffle=False)
    assert in_file_order <= 2 and windowed >= 0.8 * full and full > 20
    jumps = np.abs(np.diff(order))
    assert np.median(jumps) > n / 10  # consecutive images come from distant parts of the split
