"""A user who makes every mistake: each test is a command that once ended in a traceback, a
misleading message or quietly wrong data, and now ends in one clear line or the right result.
Sources are built by hand here, a few tiny files each."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest
from PIL import Image

from alexnet import cli
from alexnet.data import idx, pool
from alexnet.data.images import BadImage, decode_file
from alexnet.data.sources import read_source
from alexnet.errors import UserError
from alexnet.inference import expand_image_paths, unreadable_path
from helpers import make_tree, noise_image, quiet_prepare

S = 8


def run(source, out, **kw):
    return quiet_prepare(source, out, **{"image_size": S, **kw})


def flat_tree(root, per_class=3):
    """root/<class>/<i>.png, no train/ or val/ folder: every class folder is read."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            noise_image(rng, 12, 10).save(root / c / f"{i}.png")
    return root


def one_line_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and "internal error" not in err, err
    return err


def tree_listing(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- OUT inside SOURCE -----------------------------------------------------------------------


@pytest.mark.parametrize("where", [".", "cat", "cat/sub", "new"])
def test_out_in_a_folder_the_layout_reads_is_refused(tmp_path, where):
    # before: SOURCE/new became an empty "class" (a misleading "holds no files"), and
    # SOURCE/cat/sub was written, its .npy files then read as images by the next prepare
    src = flat_tree(tmp_path / "src")
    before = tree_listing(src)
    # SOURCE itself and a class folder hold files: refused as a folder of other data
    with pytest.raises(UserError, match="inside the source folder|holds other files than a store"):
        run(src, src / where)
    assert tree_listing(src) == before, "nothing is left in the source"


@pytest.mark.parametrize("where", ["train/x", "val/x", "val/cat/x"])
def test_out_in_train_or_val_is_refused(tmp_path, where):
    src = make_tree(tmp_path / "src")
    with pytest.raises(UserError, match="inside the source folder"):
        run(src, src / where)


def test_out_beside_train_and_val_or_idx_files_is_allowed(tmp_path):
    src = make_tree(tmp_path / "src")
    first = run(src, src / "store").store  # a folder beside train/ and val/ is not read
    again = run(src, tmp_path / "elsewhere").store
    assert len(first.split("train")) == len(again.split("train")) == 8
    assert np.array_equal(first.split("train").images[:], again.split("train").images[:])
    fashion = write_idx_source(tmp_path / "idx")
    assert len(run(fashion, fashion / "store").store.split("train")) > 0
    flat = flat_tree(tmp_path / "flat")
    run(flat, flat / ".store")  # hidden folders are never listed
    assert read_source(flat).class_ids == ["cat", "dog"] and len(read_source(flat).splits["train"]) == 4


def test_out_through_a_link_into_the_source_is_refused(tmp_path):
    src = flat_tree(tmp_path / "src")
    (tmp_path / "link").symlink_to(src / "cat")
    with pytest.raises(UserError, match="inside the source folder"):
        run(src, tmp_path / "link" / "store")


# --- flags -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--image-size", "100000"], "--image-size 100000 is over the limit"),  # was: "out of memory; use a smaller --batch-size"
    (["--max-image-pixels", "0"], "--max-image-pixels must be a positive"),  # was: every image "too large"
    (["--max-image-pixels", "-1"], "--max-image-pixels must be a positive"),
    (["--seed", "-1"], "--seed must be 0 or more"),  # was: internal error ValueError
])
def test_impossible_flag_values_are_one_line(tmp_path, capsys, flags, words):
    src = flat_tree(tmp_path / "src")
    err = one_line_error(capsys, ["prepare", str(src), str(tmp_path / "out"), "--workers", "0", "--quiet", *flags])
    assert words in err
    assert not (tmp_path / "out").exists()


def test_many_workers_for_few_chunks_start_few_processes(tmp_path, monkeypatch):
    seen = []
    real = pool._pool
    monkeypatch.setattr(pool, "_pool", lambda workers, max_pixels: seen.append(workers) or real(workers, max_pixels))
    src = flat_tree(tmp_path / "src")
    run(src, tmp_path / "out", workers=64)  # 4 train + 2 val images: one chunk per split
    assert seen == [2]


# --- unreadable folders ----------------------------------------------------------------------


def deny(monkeypatch, *folders):
    """os.scandir refuses these folders, as for a folder without read permission (the tests may run as root)."""
    real, denied = os.scandir, {os.fspath(f) for f in folders}

    def scandir(path="."):
        if os.fspath(path) in denied:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unreadable_class_folder_is_named_as_such(tmp_path, monkeypatch):
    src = flat_tree(tmp_path / "src")
    deny(monkeypatch, src / "dog")
    with pytest.raises(UserError, match=r"class folder .*dog cannot be read \(Permission denied\)"):
        read_source(src)  # before: "holds no files: add images or remove the folder"


def test_unreadable_source_is_named_as_such(tmp_path, monkeypatch):
    src = flat_tree(tmp_path / "src")
    deny(monkeypatch, src)
    with pytest.raises(UserError, match="source folder .* cannot be read"):
        read_source(src)  # before: a PermissionError on train-images-idx3-ubyte, a file that does not exist


def test_unreadable_val_class_folder_is_refused(tmp_path, monkeypatch):
    src = make_tree(tmp_path / "src")
    deny(monkeypatch, src / "val" / "dog")
    with pytest.raises(UserError, match=r"validation class folder .*dog cannot be read"):
        read_source(src)  # before: its images were quietly left out of the validation split


def test_predict_reports_folders_it_cannot_list(tmp_path, monkeypatch):
    top = tmp_path / "photos"
    (top / "locked").mkdir(parents=True)
    noise_image(np.random.default_rng(0), 8, 8).save(top / "a.png")
    noise_image(np.random.default_rng(1), 8, 8).save(top / "locked" / "b.png")
    deny(monkeypatch, top / "locked")
    paths = expand_image_paths([str(top)])
    assert paths == [str(top / "a.png"), str(top / "locked")]  # before: locked/ vanished from the output
    assert unreadable_path(str(top / "locked")) == "a folder that cannot be listed: Permission denied"


def test_predict_tells_a_link_loop_from_a_missing_file(tmp_path):
    (tmp_path / "a.jpg").symlink_to(tmp_path / "b.jpg")
    (tmp_path / "b.jpg").symlink_to(tmp_path / "a.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert unreadable_path(str(tmp_path / "a.jpg")) == "a loop of symbolic links"  # before: "not found"
    assert unreadable_path(str(tmp_path / "gone.jpg")) == "not found (a symbolic link to a missing file)"


# --- validation labels -----------------------------------------------------------------------


def ilsvrc_like(root, names):
    """train/<wnid>/ and a flat val/ whose files are named ``names``; returns the source."""
    rng = np.random.default_rng(0)
    for w in ("n01440764", "n01443537"):
        (root / "train" / w).mkdir(parents=True)
        for i in range(2):
            noise_image(rng, 10, 10).save(root / "train" / w / f"{i}.png")
    (root / "val").mkdir()
    for name in names:
        noise_image(rng, 10, 10).save(root / "val" / name)
    return root


NAMES = ["a photo.png", "b  two spaces.png", "c.png"]
TRUTH = {"a photo.png": "n01443537", "b  two spaces.png": "n01440764", "c.png": "n01443537"}


def stored_val_labels(src, out, labels_file) -> dict[str, str]:
    """What the store says each validation file is, from the manifest's class list and the labels,
    matched to the files through their pixels (rows may move when files are skipped)."""
    store = run(src, out, val_labels=labels_file).store
    classes = json.loads((out / "manifest.json").read_text())["class_ids"]
    by_pixels = {decode_file(src / "val" / n, S, 3)[0].tobytes(): n for n in NAMES}
    split = store.split("val")
    return {by_pixels[split.images[i].tobytes()]: classes[int(split.labels[i])] for i in range(len(split))}


def test_csv_file_names_with_spaces(tmp_path):
    # before: every cell was split at spaces, the first line taken for a header, then an error on line 2
    src = ilsvrc_like(tmp_path / "src", NAMES)
    f = tmp_path / "labels.csv"
    f.write_text("".join(f"{n},{w} 1 2 3 4\n" for n, w in TRUTH.items()))
    assert stored_val_labels(src, tmp_path / "out", f) == TRUTH


def test_space_separated_names_with_spaces_quoted_or_last_label(tmp_path):
    src = ilsvrc_like(tmp_path / "src", NAMES)
    f = tmp_path / "labels.txt"
    f.write_text('a photo.png n01443537\n"b  two spaces.png"\tn01440764\nc.png n01443537\n')
    assert stored_val_labels(src, tmp_path / "out", f) == TRUTH


def test_a_mistyped_label_on_the_first_line_is_no_header(tmp_path):
    src = ilsvrc_like(tmp_path / "src", ["c.png", "d.png"])
    f = tmp_path / "labels.txt"
    f.write_text("c.png n0l443537\nd.png n01440764\n")  # letter l for digit 1
    with pytest.raises(UserError, match="line 1: 'n0l443537' is neither"):
        run(src, tmp_path / "out", val_labels=f)  # before: line 1 dropped as a header, c.png quietly unlabelled


def test_names_given_with_a_folder_match_the_flat_val_folder(tmp_path):
    src = ilsvrc_like(tmp_path / "src", ["c.png", "d.png"])
    f = tmp_path / "labels.txt"
    f.write_text("val/c.png n01443537\n/data/src/val/d.png n01440764\n")
    store = run(src, tmp_path / "out", val_labels=f).store
    assert sorted(store.split("val").labels.tolist()) == [0, 1]  # before: "no file in val has a usable label"


def test_names_in_another_unicode_form_still_match(tmp_path):
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "café.png")  # as macOS writes it
    assert decomposed != "café.png"
    src = ilsvrc_like(tmp_path / "src", [decomposed, "c.png"])
    f = tmp_path / "labels.txt"
    f.write_text("café.png n01443537\nc.png n01440764\n", encoding="utf-8")  # composed, as typed
    store = run(src, tmp_path / "out", val_labels=f).store
    assert sorted(store.split("val").labels.tolist()) == [0, 1]  # before: café.png skipped, "no label"


# --- IDX -------------------------------------------------------------------------------------


def write_idx_source(root, n=30, classes=3, val_labels=None, gz=False):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    ext = ".gz" if gz else ""
    idx.write_idx(root / f"train-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 8, 8)).astype(np.uint8))
    idx.write_idx(root / f"train-labels-idx1-ubyte{ext}", (np.arange(n) % classes).astype(np.uint8))
    if val_labels is not None:
        idx.write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (len(val_labels), 8, 8)).astype(np.uint8))
        idx.write_idx(root / "t10k-labels-idx1-ubyte", np.asarray(val_labels, np.uint8))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_images_are_one_line(tmp_path, capsys, gz):
    src = write_idx_source(tmp_path / "src", gz=gz)
    f = src / f"train-images-idx3-ubyte{'.gz' if gz else ''}"
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    err = one_line_error(capsys, ["prepare", str(src), str(tmp_path / "out"), "--workers", "0", "--quiet", "--image-size", "8"])
    assert "truncated" in err  # before: internal error IdxError / EOFError from the decoding processes


def test_check_idx_data_against_the_header(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x", "x.gz"):
        idx.write_idx(tmp_path / name, a)
        assert idx.check_idx_data(tmp_path / name) == a.shape
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-1])
    with pytest.raises(idx.IdxError, match="23 of 24 bytes"):
        idx.check_idx_data(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-1]))
    with pytest.raises(idx.IdxError, match="23 of 24 bytes"):
        idx.check_idx_data(tmp_path / "short.gz")


def test_idx_classes_without_training_images_are_named(tmp_path):
    src = write_idx_source(tmp_path / "src", classes=3, val_labels=[0, 1, 7])
    with pytest.raises(UserError, match="no training label is class 3, 4, 5, 6, 7"):
        run(src, tmp_path / "out")  # before: "class '3' has no usable training image: every file was skipped"
    src = write_idx_source(tmp_path / "src2", classes=3, val_labels=[0, 1, 2])
    (src / "classes.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(UserError, match=r"classes.txt names 4 classes, but no training label is class 3 \(d\)"):
        run(src, tmp_path / "out2")


@pytest.mark.parametrize("remove, missing", [
    ("train-images-idx3-ubyte", "no train-images-idx3-ubyte"),  # was: "no class folders in SOURCE"
    ("t10k-labels-idx1-ubyte", "no t10k-labels-idx1-ubyte"),  # was: t10k images quietly unused, 10% of train held out
])
def test_an_idx_file_without_its_partner_is_named(tmp_path, remove, missing):
    src = write_idx_source(tmp_path / "src", val_labels=[0, 1, 2])
    (src / remove).unlink()
    with pytest.raises(UserError, match=missing):
        read_source(src)


# --- classes the validation split does not measure -------------------------------------------


def test_classes_without_validation_images_get_a_note(tmp_path):
    src = make_tree(tmp_path / "src", classes=("cat", "dog", "emu"))
    for c in ("dog", "emu"):  # empty validation folders of two classes
        for f in (src / "val" / c).iterdir():
            f.unlink()
    result = run(src, tmp_path / "out")
    note = "2 of 3 classes have no validation image (dog, emu)"
    assert any(n.startswith(note) for n in result.notes)
    assert any(n.startswith(note) for n in json.loads((tmp_path / "out" / "manifest.json").read_text())["notes"])
    per_class = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["val"]["per_class"]
    assert per_class == [2, 0, 0]
    assert not any("validation image" in n for n in run(make_tree(tmp_path / "full"), tmp_path / "out2").notes)


# --- pixels ----------------------------------------------------------------------------------


def test_32_bit_integer_images_out_of_16_bit_range_are_refused(tmp_path):
    big = np.full((6, 6), 100_000, np.int32)
    big[0, 0] = 0
    Image.fromarray(big).save(tmp_path / "counts.tif")
    assert Image.open(tmp_path / "counts.tif").mode == "I"
    with pytest.raises(BadImage, match="32-bit integer pixels"):
        decode_file(tmp_path / "counts.tif", 6, 1)  # before: clipped to 65535, a flat white image
    fits = (np.arange(36, dtype=np.int32).reshape(6, 6) * 1800)
    Image.fromarray(fits).save(tmp_path / "fits.tif")
    pixels, notes = decode_file(tmp_path / "fits.tif", 6, 1)
    assert np.array_equal(pixels[..., 0], np.floor(fits / 257 + 0.5).astype(np.uint8)) and "16-bit scaled to 8-bit" in notes


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP", "TIFF"])
def test_several_frames_take_the_first_with_a_note(tmp_path, fmt):
    frames = [Image.new("RGB", (8, 8), (v, v, v)) for v in (30, 220)]
    path = tmp_path / f"x.{fmt.lower()}"
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:], **({"lossless": True} if fmt == "WEBP" else {}))
    pixels, notes = decode_file(path, 8, 3)
    assert abs(int(pixels.mean()) - 30) <= 2 and "first frame of several used" in notes
    frames[0].save(tmp_path / "one.png")
    assert "first frame of several used" not in decode_file(tmp_path / "one.png", 8, 3)[1]


# --- a class named like a split --------------------------------------------------------------


@pytest.mark.parametrize("name, sub", [("train", False), ("train", True), ("val", False)])
def test_a_class_named_train_or_val_is_pointed_out(tmp_path, name, sub):
    # before: "no class folders in SOURCE/train", "a single class ('sub')", or "val/ holds images but no labels: unpack the devkit"
    src = tmp_path / "vehicles"
    rng = np.random.default_rng(0)
    for c in ("car", "plane", name):
        (src / c).mkdir(parents=True)
        for i in range(3):
            noise_image(rng, 10, 10).save(src / c / f"{i}.png")
    if sub:
        (src / name / "sub").mkdir()
        noise_image(rng, 10, 10).save(src / name / "sub" / "x.png")
    with pytest.raises(UserError, match=rf"if '{name}' is one of your classes, rename that folder"):
        read_source(src)
    (src / name).rename(src / f"{name}_class")
    assert read_source(src).class_ids == ["car", "plane", f"{name}_class"]


# --- a file changed between an interrupted prepare and its rerun ------------------------------


def interrupted_after(monkeypatch, chunks: int):
    """pool.decode_chunk raises KeyboardInterrupt (a Ctrl-C) when asked for chunk number ``chunks + 1``."""
    real, calls = pool.decode_chunk, []

    def decode_chunk(task):
        calls.append(task)
        if len(calls) > chunks:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(pool, "decode_chunk", decode_chunk)
    return lambda: monkeypatch.setattr(pool, "decode_chunk", real)


@pytest.mark.parametrize("change", [False, True])
def test_a_file_changed_before_the_rerun_is_not_mixed_in(tmp_path, monkeypatch, change):
    src = make_tree(tmp_path / "src", per_class=6)
    out, said = tmp_path / "store", []
    restore = interrupted_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(src, out, chunk_size=4)
    restore()
    first = sorted((src / "train" / "cat").iterdir())[0]  # decoded in the first chunk
    if change:  # the user fixes or replaces an image between the runs: same name, other pixels
        noise_image(np.random.default_rng(7), 30, 20).save(first)
    result = run(src, out, chunk_size=4, log=said.append)
    clean = run(src, tmp_path / "clean", chunk_size=4).store
    for split in ("train", "val"):
        np.testing.assert_array_equal(result.store.split(split).images[:], clean.split(split).images[:])
    np.testing.assert_array_equal(result.store.mean_image, clean.mean_image)
    # before: the rerun resumed and kept the old pixels of the replaced file
    assert result.resumed_chunks == (0 if change else 2)
    assert any("changed since the interrupted run" in line for line in said) == change
