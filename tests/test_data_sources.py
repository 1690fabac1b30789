"""What a source becomes: ILSVRC-2012 validation labels only from documented files, checked; a bug in
our decoding code is a bug, not "corrupt files"; odd paths (non-UTF-8 names, symlinks, loops,
hidden files, FIFOs) listed by the documented policy; no store without a validation split; a
note for small images. Every source is built here by hand."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet import cli
from alexnet.data import images as images_module

from alexnet.data.images import BadImage, decode_file
from alexnet.data.pool import DecodingBug
from alexnet.errors import UserError
from helpers import make_tree, noise_image, quiet_prepare

S = 8


def run(source, out, **kw):
    return quiet_prepare(source, out, **{"image_size": S, **kw})


def report(out) -> dict:
    return json.loads((out / "report.json").read_text())


# --- ILSVRC-2012 validation labels -----------------------------------------------------------

WNIDS = ["n01440764", "n01443537", "n02119789"]  # sorted: class numbers 0, 1, 2
COLOURS = {"n01440764": (250, 10, 10), "n01443537": (10, 250, 10), "n02119789": (10, 10, 250)}
DEVKIT_IDS = {1: "n02119789", 2: "n01443537", 3: "n01440764"}  # the devkit's IDs are not the sorted order
VAL_WNIDS = ["n02119789", "n01440764", "n01443537", "n02119789"]  # the class of val image k = 1..4
N_VAL = 50_000


def mat_element(kind, payload):
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat_matrix(mx_class, dims, body, name=b""):
    flags = mat_element(6, struct.pack("<II", mx_class, 0))
    return mat_element(14, flags + mat_element(5, struct.pack(f"<{len(dims)}i", *dims)) + mat_element(1, name) + body)


def write_meta_mat(path, id_to_wnid):
    """A MATLAB 5 file with a 1xN struct array 'synsets' (fields ILSVRC2012_ID, WNID), compressed."""
    fields = [b"ILSVRC2012_ID", b"WNID"]
    body = mat_element(5, struct.pack("<i", 32)) + mat_element(1, b"".join(f.ljust(32, b"\0") for f in fields))
    for i, wnid in id_to_wnid.items():
        body += mat_matrix(6, (1, 1), mat_element(9, struct.pack("<d", i)))
        body += mat_matrix(4, (1, len(wnid)), mat_element(4, wnid.encode("utf-16-le")))
    packed = zlib.compress(mat_matrix(2, (1, len(id_to_wnid)), body, b"synsets"))
    header = b"MATLAB 5.0 MAT-file, written by the tests".ljust(116) + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    path.write_bytes(header + struct.pack("<II", 15, len(packed)) + packed)


def make_ilsvrc(root):
    """train/<wnid>/ (2 images each) and a flat val/ of ILSVRC2012_val_0000000k.JPEG, one colour per class."""
    for w in WNIDS:
        (root / "train" / w).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (12, 10), COLOURS[w]).save(root / "train" / w / f"{w}_{i}.JPEG", quality=95)
    (root / "val").mkdir()
    for k, w in enumerate(VAL_WNIDS, start=1):
        Image.new("RGB", (10, 12), COLOURS[w]).save(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG", quality=95)
    return root


def devkit(root, ids, meta=True):
    """The devkit's data/ folder under ``root`` with a ground-truth file of ``ids`` (one per line)."""
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    if meta:
        write_meta_mat(data / "meta.mat", DEVKIT_IDS)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{i}\n" for i in ids))
    return data / "ILSVRC2012_validation_ground_truth.txt"


def true_ids(n=N_VAL):
    """The devkit IDs of VAL_WNIDS, then filler for the images that this small tree does not hold."""
    wnid_to_id = {w: i for i, w in DEVKIT_IDS.items()}
    return [wnid_to_id[w] for w in VAL_WNIDS] + [1] * (n - len(VAL_WNIDS))


def val_classes_by_colour(store) -> list[str]:
    """The class of each stored val image read from its pixels, independently of any label file."""
    val = store.split("val")
    names = []
    for image in val.images:
        pixel = image[S // 2, S // 2].astype(int)
        names.append(min(COLOURS, key=lambda w: np.abs(pixel - COLOURS[w]).sum()))
    return names


def test_devkit_labels_are_read_and_recorded(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    gt = devkit(src, true_ids())
    store = run(src, tmp_path / "store").store
    val = store.split("val")
    assert [WNIDS[i] for i in val.labels] == VAL_WNIDS == val_classes_by_colour(store)
    record = store.manifest["val_labels"]
    assert record["file"] == str(gt.resolve()) and record["entries"] == N_VAL
    assert record["sha256"] == hashlib.sha256(gt.read_bytes()).hexdigest()
    assert record["mapped_by"] == str((gt.parent / "meta.mat").resolve())


@pytest.mark.parametrize("ids, words", [
    (true_ids(N_VAL - 1), ["49999 entries", "50,000"]),  # the wrong count
    (true_ids(N_VAL + 4), ["50004 entries"]),
    (true_ids()[:-1] + [1001], ["out of the range 1..1000", "1001"]),  # out of range
    ([i - 1 for i in true_ids()], ["counts from 1"]),  # a 0-based file where the devkit's 1-based one belongs
])
def test_devkit_file_refused(tmp_path, ids, words):
    src = make_ilsvrc(tmp_path / "src")
    devkit(src, ids)
    with pytest.raises(UserError) as e:
        run(src, tmp_path / "store")
    assert all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "store" / "manifest.json").exists()


def test_devkit_without_meta_mat_is_refused(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    devkit(src, true_ids(), meta=False)
    with pytest.raises(UserError, match="meta.mat"):
        run(src, tmp_path / "store")


def test_labels_are_never_searched_for_in_parent_folders(tmp_path):
    src = make_ilsvrc(tmp_path / "data" / "src")
    devkit(tmp_path / "data", true_ids())  # a devkit beside SOURCE, not in it
    (tmp_path / "data" / "val_labels.txt").write_text("ILSVRC2012_val_00000001.JPEG n02119789\n")
    with pytest.raises(UserError, match="holds images but no labels"):
        run(src, tmp_path / "store")


def test_a_labels_file_in_source_is_suggested_not_used(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    (src / "val_labels.txt").write_text("ILSVRC2012_val_00000001.JPEG n02119789\n")
    with pytest.raises(UserError, match="val_labels.txt is there: name it with --val-labels"):
        run(src, tmp_path / "store")


def labels_file(path, labels, names=None):
    """'filename label' lines for all 50,000 ILSVRC2012_val names (the first ones are our images)."""
    labels = list(labels) + [labels[0]] * (N_VAL - len(labels))
    names = names or [f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1, N_VAL + 1)]
    path.write_text("".join(f"{n} {label}\n" for n, label in zip(names, labels)))
    return path


def test_val_images_that_are_links_to_elsewhere(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    (tmp_path / "disk").mkdir()
    for f in sorted((src / "val").iterdir()):  # val/ images kept on another disk, linked in
        f.rename(tmp_path / "disk" / f.name)
        f.symlink_to(tmp_path / "disk" / f.name)
    devkit(src, true_ids())
    store = run(src, tmp_path / "store").store
    assert [WNIDS[i] for i in store.split("val").labels] == VAL_WNIDS == val_classes_by_colour(store)


def test_user_file_of_wnids(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    f = labels_file(tmp_path / "mine.txt", VAL_WNIDS)
    store = run(src, tmp_path / "store", val_labels=f).store
    assert [WNIDS[i] for i in store.split("val").labels] == VAL_WNIDS == val_classes_by_colour(store)
    assert store.manifest["val_labels"]["file"] == str(f.resolve())
    assert store.manifest["val_labels"]["first_class_number"] is None


@pytest.mark.parametrize("base", [0, 1])
def test_user_file_of_class_numbers_with_its_base(tmp_path, base):
    src = make_ilsvrc(tmp_path / "src")
    f = labels_file(tmp_path / "numbers.txt", [WNIDS.index(w) + base for w in VAL_WNIDS])
    store = run(src, tmp_path / "store", val_labels=f, val_labels_base=base).store
    assert [WNIDS[i] for i in store.split("val").labels] == VAL_WNIDS == val_classes_by_colour(store)
    assert store.manifest["val_labels"]["first_class_number"] == base


def test_user_file_of_class_numbers_without_a_base_is_refused(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    f = labels_file(tmp_path / "numbers.txt", [WNIDS.index(w) + 1 for w in VAL_WNIDS])  # 1..3 for 3 classes
    with pytest.raises(UserError, match="--val-labels-base 0 or --val-labels-base 1"):
        run(src, tmp_path / "store", val_labels=f)


@pytest.mark.parametrize("labels, base", [
    ([1, 2, 3, 3], 0),  # 1-based read as 0-based: 3 is past the last of 3 classes
    ([0, 1, 2, 2], 1),  # 0-based read as 1-based: 0 is before the first
    ([0, 1, 7, 2], 0),
])
def test_user_file_out_of_range_is_refused(tmp_path, labels, base):
    src = make_ilsvrc(tmp_path / "src")
    f = labels_file(tmp_path / "numbers.txt", labels)
    with pytest.raises(UserError, match="out of range"):
        run(src, tmp_path / "store", val_labels=f, val_labels_base=base)


def test_user_file_of_the_wrong_count_is_refused(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    f = tmp_path / "partial.txt"
    f.write_text("".join(f"ILSVRC2012_val_{k:08d}.JPEG {w}\n" for k, w in enumerate(VAL_WNIDS, start=1)))
    with pytest.raises(UserError, match="labels 4 ILSVRC2012_val images.*50,000.*subset of the classes too.*skipped"):
        run(src, tmp_path / "store", val_labels=f)


def test_user_file_labelling_a_file_twice_is_refused(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    f = tmp_path / "twice.txt"
    f.write_text("a.JPEG n01440764\nb.JPEG n01443537\na.JPEG n02119789\n")
    with pytest.raises(UserError, match="line 3: a.JPEG is labelled twice"):
        run(src, tmp_path / "store", val_labels=f)


def test_kaggle_csv_with_header(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    f = tmp_path / "LOC_val_solution.csv"
    rows = [f"ILSVRC2012_val_{k:08d},{w} 1 2 30 40 {w} 5 6 7 8" for k, w in enumerate(VAL_WNIDS + ["n01440764"] * (N_VAL - 4), start=1)]
    f.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    store = run(src, tmp_path / "store", val_labels=f).store
    assert [WNIDS[i] for i in store.split("val").labels] == VAL_WNIDS == val_classes_by_colour(store)


def test_cli_val_labels_flags(tmp_path, capsys):
    src = make_ilsvrc(tmp_path / "src")
    f = labels_file(tmp_path / "numbers.txt", [WNIDS.index(w) + 1 for w in VAL_WNIDS])
    base = ["prepare", str(src), str(tmp_path / "store"), "--image-size", str(S), "--workers", "0", "--quiet", "--val-labels", str(f)]
    assert cli.main(base) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--val-labels-base" in err
    assert cli.main(base + ["--val-labels-base", "1"]) == 0
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["val_labels"]["file"] == str(f.resolve()) and manifest["val_labels"]["first_class_number"] == 1


def _not_text(kind: str, folder) -> "os.PathLike":
    """A file a user may give by mistake as --val-labels."""
    import io

    import torch

    if kind == "random bytes":
        path, data = folder / "labels.txt", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.new("RGB", (10, 12), COLOURS[WNIDS[0]]).save(buf, "JPEG")
        path, data = folder / "ILSVRC2012_val_00000001.JPEG", buf.getvalue()
    elif kind == "checkpoint":
        buf = io.BytesIO()
        torch.save({"model": {"w": torch.ones(3)}}, buf)
        path, data = folder / "best.pt", buf.getvalue()
    elif kind == "utf-16 text":  # what some editors call 'Unicode'
        path, data = folder / "val.txt", "".join(f"ILSVRC2012_val_{k:08d}.JPEG {w}\n" for k, w in
                                                  enumerate(VAL_WNIDS, start=1)).encode("utf-16")
    else:  # binary under the devkit's name, found in SOURCE
        path, data = folder / "ILSVRC2012_validation_ground_truth.txt", np.arange(256, dtype=np.uint8).tobytes() * 8
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["random bytes", "jpeg", "checkpoint", "utf-16 text", "devkit name"])
def test_a_labels_file_that_is_not_text_is_one_line(tmp_path, capsys, kind):
    src = make_ilsvrc(tmp_path / "src")
    if kind == "devkit name":
        data = devkit(src, true_ids()).parent
        f, flag = _not_text(kind, data), []
    else:
        f = _not_text(kind, tmp_path)
        flag = ["--val-labels", str(f)]
    argv = ["prepare", str(src), str(tmp_path / "store"), "--image-size", str(S), "--workers", "0", "--quiet"]
    assert cli.main(argv + flag) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert f"{f.resolve()} is not a text file" in err[0], err
    if flag:
        assert "--val-labels" in err[0] and "'filename label' lines" in err[0] and "one field" not in err[0], err
    else:
        assert "one ILSVRC2012_ID per line" in err[0], err
    assert not (tmp_path / "store").exists()


def test_labels_file_with_a_byte_order_mark_or_names_that_are_not_utf8(tmp_path):
    src = make_ilsvrc(tmp_path / "src")
    bom = labels_file(tmp_path / "bom.txt", VAL_WNIDS)  # written by a Windows editor: the BOM is not in the name
    bom.write_bytes(b"\xef\xbb\xbf" + bom.read_bytes())
    store = run(src, tmp_path / "store", val_labels=bom).store
    assert [WNIDS[i] for i in store.split("val").labels] == VAL_WNIDS == val_classes_by_colour(store)
    # a listing in Latin-1 for a file named in Latin-1 on disk: the bytes match, so it is used
    val = os.fsencode(src / "val")
    os.rename(os.path.join(val, b"ILSVRC2012_val_00000001.JPEG"), os.path.join(val, b"caf\xe9.JPEG"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"caf\xe9.JPEG n02119789\n" + b"".join(b"ILSVRC2012_val_%08d.JPEG %s\n" % (k, w.encode())
                                                             for k, w in enumerate(VAL_WNIDS[1:], start=2)))
    store = run(src, tmp_path / "store2", val_labels=latin1).store
    labels = [WNIDS[i] for i in store.split("val").labels]
    assert len(labels) == 4 and labels == val_classes_by_colour(store)


def test_val_labels_flag_needs_a_flat_val_folder(tmp_path):
    src = make_tree(tmp_path / "src")
    f = tmp_path / "labels.txt"
    f.write_text("0.png cat\n")
    with pytest.raises(UserError, match="--val-labels"):
        run(src, tmp_path / "store", val_labels=f)


# --- a bug in our decoding code is a bug -----------------------------------------------------


def broken_center_square(img, size):
    raise TypeError("a bug in our resampling code")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bug_in_decoding_stops_prepare_as_a_bug(tmp_path, monkeypatch, workers):
    src = make_tree(tmp_path / "src")
    monkeypatch.setattr(images_module, "center_square", broken_center_square)  # forked workers inherit it
    with pytest.raises(DecodingBug, match="alexnet's own code.*TypeError: a bug in our resampling code"):
        run(src, tmp_path / "store", workers=workers)
    assert not (tmp_path / "store" / "report.json").exists()  # nothing reported as a bad file


def test_cli_reports_an_internal_error_not_corrupt_files(tmp_path, monkeypatch, capsys):
    src = make_tree(tmp_path / "src")
    monkeypatch.setattr(images_module, "center_square", broken_center_square)
    args = ["prepare", str(src), str(tmp_path / "store"), "--image-size", str(S), "--workers", "0", "--quiet"]
    assert cli.main(args) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "internal error" in lines[0] and "corrupt" not in captured.out + captured.err
    assert cli.main(["--debug", *args, "--force"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_our_errors_after_loading_propagate_and_bad_files_do_not(tmp_path, monkeypatch):
    good = tmp_path / "good.png"
    noise_image(np.random.default_rng(0), 20, 20).save(good)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:60])  # truncated pixel data
    with pytest.raises(BadImage, match="corrupt or truncated"):
        decode_file(broken, S, 3)
    with pytest.raises(BadImage, match="^not found$"):
        decode_file(tmp_path / "gone.png", S, 3)

    def broken_to_8bit(img, notes):
        raise ValueError("a bug in our conversion")

    monkeypatch.setattr(images_module, "to_8bit", broken_to_8bit)
    with pytest.raises(ValueError, match="a bug in our conversion"):
        decode_file(good, S, 3)


# --- odd paths -------------------------------------------------------------------------------


def image(path, rng, size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(rng, size, size).save(path)


def test_names_that_are_not_utf8(tmp_path, capsys):
    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    latin1 = b"caf\xe9"  # "café" in Latin-1: not valid UTF-8
    root = os.fsencode(src / "train")
    for cls in (latin1, b"dog"):
        for i in range(3):
            os.makedirs(os.path.join(root, cls), exist_ok=True)
            noise_image(rng, 20, 20).save(os.fsdecode(os.path.join(root, cls, b"%d\xff.png" % i)))
    bad_name = os.path.join(root, latin1, b"broken\xfe.png")
    with open(bad_name, "wb") as f:
        f.write(b"not an image")
    args = ["prepare", str(src), str(tmp_path / "store"), "--image-size", str(S), "--workers", "0", "--quiet"]
    assert cli.main(args) == 0
    printed = capsys.readouterr()
    (printed.out + printed.err).encode("utf-8")  # everything printed can be written as UTF-8
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert [os.fsencode(c) for c in manifest["class_ids"]] == [latin1, b"dog"]  # the original bytes
    assert manifest["classes"] == ["caf\ufffd", "dog"]  # shown with the replacement character
    skipped = report(tmp_path / "store")["skipped"]
    assert [os.fsencode(s["path"]) for s in skipped] == [os.path.relpath(bad_name, os.fsencode(src))]
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["val"]["count"] == 6


def test_class_names_that_would_print_alike_stay_apart(tmp_path):
    rng = np.random.default_rng(0)
    root = os.fsencode(tmp_path / "src")
    for cls in (b"a\xff", b"a\xfe", b"n02012849", b"n03126707"):  # the last two: ImageNet's two cranes
        for i in range(2):
            os.makedirs(os.path.join(root, cls), exist_ok=True)
            noise_image(rng, 20, 20).save(os.fsdecode(os.path.join(root, cls, b"%d.png" % i)))
    (tmp_path / "src" / "synset_words.txt").write_text("n02012849 crane\nn03126707 crane\n")
    store = run(tmp_path / "src", tmp_path / "store").store
    assert [os.fsencode(c) for c in store.class_ids] == [b"a\xfe", b"a\xff", b"n02012849", b"n03126707"]
    assert store.classes == ["a\\xfe", "a\\xff", "crane (n02012849)", "crane (n03126707)"]
    assert report(tmp_path / "store")["skipped"] == []  # the names file is read, not skipped


def test_symlinks_follow_the_policy(tmp_path):
    rng = np.random.default_rng(0)
    src, outside = tmp_path / "src", tmp_path / "elsewhere"
    for cls in ("cat", "dog"):
        for i in range(4):
            image(src / "train" / cls / f"{i}.png", rng)
    for i in range(2):
        image(outside / "birds" / f"{i}.png", rng)
    image(outside / "one.png", rng)
    train = src / "train"
    (train / "dog" / "stolen.png").symlink_to(train / "cat" / "0.png")  # another class's image: not re-added
    (train / "kitten").symlink_to(train / "cat")  # a folder link inside the tree: not a new class
    (train / "cat" / "loop").symlink_to(train / "cat")  # a loop
    (train / "cat" / "up").symlink_to(src)  # a link to the source's own root
    (train / "cat" / "above").symlink_to(tmp_path)  # a folder that holds the source
    (train / "dog" / "outside.png").symlink_to(outside / "one.png")  # outside the tree: followed
    (train / "cat" / "again.png").symlink_to(outside / "one.png")  # the same outside file again: not twice
    (train / "bird").symlink_to(outside / "birds")  # a class folder outside the tree: followed
    (train / "dog" / "dangling.png").symlink_to(tmp_path / "missing.png")
    result = run(src, tmp_path / "store", image_size=S)
    store = result.store
    assert store.class_ids == ["bird", "cat", "dog"]
    counts = np.add(store.manifest["splits"]["train"]["per_class"], store.manifest["splits"]["val"]["per_class"])
    assert counts.tolist() == [2, 5, 4]  # bird: 2 linked; cat: its 4 + again.png (listed first); dog: its 4
    ignored = {item["path"]: item["reason"] for item in report(tmp_path / "store")["ignored"]}
    assert "inside the source" in ignored["train/dog/stolen.png"]
    assert "inside the source" in ignored["train/kitten"]
    assert "inside the source" in ignored["train/cat/loop"] and "inside the source" in ignored["train/cat/up"]
    assert "holds the source" in ignored["train/cat/above"]
    assert "not read twice" in ignored["train/dog/outside.png"] and "train/cat/again.png" not in ignored
    assert "not found" in ignored["train/dog/dangling.png"]


def test_links_inside_a_linked_train_folder_do_not_relabel(tmp_path):
    rng = np.random.default_rng(0)
    real = tmp_path / "disk" / "train"  # train/ itself lives elsewhere, linked in
    for cls in ("cat", "dog"):
        for i in range(3):
            image(real / cls / f"{i}.png", rng)
    (real / "dog" / "copy.png").symlink_to(real / "cat" / "0.png")
    (real / "mouse").symlink_to(real / "cat")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "train").symlink_to(real)
    store = run(tmp_path / "src", tmp_path / "store").store
    assert store.class_ids == ["cat", "dog"]
    counts = np.add(store.manifest["splits"]["train"]["per_class"], store.manifest["splits"]["val"]["per_class"])
    assert counts.tolist() == [3, 3]
    ignored = {item["path"]: item["reason"] for item in report(tmp_path / "store")["ignored"]}
    assert "not followed" in ignored["train/dog/copy.png"] and "not followed" in ignored["train/mouse"]


def test_two_class_folders_that_are_one_folder_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        image(tmp_path / "photos" / f"{i}.png", rng)
        image(tmp_path / "src" / "dog" / f"{i}.png", rng)
    (tmp_path / "src" / "cat").symlink_to(tmp_path / "photos")
    (tmp_path / "src" / "kitten").symlink_to(tmp_path / "photos")
    with pytest.raises(UserError, match="'cat' and 'kitten' .* are one folder"):
        run(tmp_path / "src", tmp_path / "store")


def test_hidden_files_root_files_and_fifos_are_listed(tmp_path):
    src = make_tree(tmp_path / "src", per_class=3)
    (src / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (src / "train" / ".cache").mkdir()
    (src / "README.txt").write_text("about this data\n")
    (src / "test").mkdir()
    (src / "train" / "stray.png").write_bytes((src / "train" / "cat" / "0.png").read_bytes())
    os.mkfifo(src / "train" / "dog" / "pipe.png")  # opening it would wait forever
    run(src, tmp_path / "store")
    r = report(tmp_path / "store")
    ignored = {item["path"]: item["reason"] for item in r["ignored"]}
    assert ignored["train/cat/.DS_Store"].startswith("hidden") and ignored["train/.cache"].startswith("hidden")
    assert "source root" in ignored["README.txt"]
    assert "beside train/ and val/" in ignored["test"]
    assert "not a regular file" in ignored["train/dog/pipe.png"]
    assert {"split": "train", "path": "train/stray.png", "reason": "outside any class folder"} in r["skipped"]


def test_files_at_the_root_of_a_class_folder_source_are_skipped_with_a_reason(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(4):
            image(tmp_path / "src" / cls / f"{i}.png", rng)
    (tmp_path / "src" / "notes.txt").write_text("hello\n")
    result = run(tmp_path / "src", tmp_path / "store")
    assert {"split": "train", "path": "notes.txt", "reason": "outside any class folder"} in result.skipped


# --- every store has a validation split ------------------------------------------------------


def test_too_few_images_to_hold_out_a_validation_split(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        image(tmp_path / "src" / cls / "0.png", rng)
    with pytest.raises(UserError, match="too few images to hold out a validation split"):
        run(tmp_path / "src", tmp_path / "store")


def test_val_fraction_zero_is_refused(tmp_path):
    src = make_tree(tmp_path / "src", val_per_class=0)
    with pytest.raises(UserError, match="--val-fraction must be above 0"):
        run(src, tmp_path / "store", val_fraction=0.0)


def test_empty_val_class_folders_are_refused(tmp_path):
    src = make_tree(tmp_path / "src", val_per_class=0)
    (src / "val" / "cat").mkdir(parents=True, exist_ok=True)
    with pytest.raises(UserError, match="the val split .* has no images"):
        run(src, tmp_path / "store")


def test_unreadable_val_images_are_refused(tmp_path):
    src = make_tree(tmp_path / "src", val_per_class=1)
    for f in (src / "val").rglob("*.png"):
        f.write_bytes(b"not an image")
    with pytest.raises(UserError, match="none of the validation images could be read"):
        run(src, tmp_path / "store")


# --- small images ----------------------------------------------------------------------------


def test_small_images_get_a_note_with_the_size_to_store_them_at(tmp_path):
    src = make_tree(tmp_path / "src")  # 16..39 px a side: median shorter side about 27 px
    notes = run(src, tmp_path / "a", image_size=256).notes
    small = [n for n in notes if "are small" in n]
    assert len(small) == 1, notes
    side, size = map(int, re.search(r"shorter side (\d+) px.*--image-size (\d+) --force", small[0]).groups())
    assert size % 8 == 0 and side <= size < side + 8  # their own size, rounded up to a multiple of 8
    assert not any("are small" in n for n in run(src, tmp_path / "b", image_size=16).notes)


def test_large_images_get_no_note(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(4):
            image(tmp_path / "src" / cls / f"{i}.png", rng, size=80)
    assert not any("are small" in n for n in run(tmp_path / "src", tmp_path / "store", image_size=256).notes)
