"""Readers for the three source layouts: what files (or IDX rows) make up each split, with labels.

* an image-folder tree: ``SOURCE/train/<class>/**`` and ``SOURCE/val/<class>/**``, or just
  ``SOURCE/<class>/**`` (or ``SOURCE/train/<class>`` without ``val/``), in which case a
  class-stratified fraction of each class is held out as the validation split;
* the ILSVRC-2012 layout: ``train/<wnid>/*.JPEG`` and ``val/*.JPEG`` flat, labelled by one of
  - ``val_labels.txt`` / ``val.txt`` / ``LOC_val_solution.csv`` (lines "filename wnid", or
    "filename index" with a 0-based index into the sorted WNIDs, as Caffe's ``val.txt``),
  - ``ILSVRC2012_validation_ground_truth.txt`` (1-based ILSVRC2012_IDs, one per image in file
    name order) with the devkit's ``meta.mat`` beside it or in ``SOURCE``, which maps IDs to WNIDs;
  and named by ``LOC_synset_mapping.txt`` or ``synset_words.txt`` ("wnid name, other name")
  when present;
* Fashion-MNIST / MNIST IDX files: ``train-images-idx3-ubyte[.gz]`` and
  ``train-labels-idx1-ubyte[.gz]`` (and ``t10k-*`` for the validation split).

Class indices follow the sorted class-folder names (WNIDs sort into the usual ImageNet order).
Files are listed recursively in sorted order; names starting with "." are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet.data import idx
from alexnet.data.matfile import MatFileError, ilsvrc_id_to_wnid
from alexnet.errors import UserError

WNID = re.compile(r"^n\d{8}$")
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")
VAL_LABEL_FILES = ("val_labels.txt", "val_labels.csv", "val.txt", "LOC_val_solution.csv")
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEFAULT_VAL_FRACTION = 0.1


@dataclass
class SplitPlan:
    """The items of one split: file paths, or rows of an IDX file (``idx_file``)."""

    name: str
    labels: np.ndarray  # int64, one per item
    paths: list[str] = field(default_factory=list)  # absolute paths (files layouts)
    idx_file: str | None = None  # IDX images file (rows ``rows``)
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Plan:
    kind: str  # "image-folder", "ilsvrc" or "idx"
    source: Path
    class_ids: list[str]
    class_names: list[str]
    splits: dict[str, SplitPlan]
    notes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # files refused before decoding
    grayscale: bool | None = None  # known from the format (IDX), else None

    def fingerprint(self, image_size: int) -> str:
        """Identifies the work: same source listing, labels and size -> same store."""
        h = hashlib.sha256(json.dumps([self.kind, str(self.source), self.class_ids, image_size]).encode())
        for name, split in self.splits.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
            if split.idx_file:
                h.update(split.idx_file.encode())
                h.update(str(os.path.getsize(split.idx_file)).encode())
                h.update(np.ascontiguousarray(split.rows, np.int64).tobytes())
            for p in split.paths:
                h.update(p.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


def read_source(source: str | os.PathLike, *, val_fraction: float | None = None, seed: int = 0) -> Plan:
    """Work out the layout of ``source`` and list its splits."""
    source = Path(source).expanduser()
    if not source.exists():
        raise UserError(f"{source} does not exist: give a folder of class folders, an ILSVRC-2012 tree or Fashion-MNIST IDX files")
    if not source.is_dir():
        raise UserError(f"{source} is a file: give the folder that holds the data set")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    source = source.resolve()
    if idx.find_idx_pair(source, "train"):
        plan = _read_idx(source, val_fraction, seed)
    else:
        plan = _read_folders(source, val_fraction, seed)
    counts = np.bincount(plan.splits["train"].labels, minlength=len(plan.class_ids)) if "train" in plan.splits else None
    if counts is None or counts.sum() == 0:
        raise UserError(f"no images found in {source}")
    if len(plan.class_ids) < 2:
        raise UserError(f"{source} has a single class ({plan.class_ids[0]!r}); classification needs at least two class folders")
    return plan


# --- image folders and ILSVRC ----------------------------------------------------------------


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _list_files(folder: Path) -> list[str]:
    """All non-hidden files under ``folder``, recursively, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found.extend(os.path.join(root, f) for f in sorted(files) if _visible(f))
    return found


def _class_folders(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))


def _read_folders(source: Path, val_fraction: float | None, seed: int) -> Plan:
    train_root = source / "train" if (source / "train").is_dir() else source
    val_root = source / "val" if (source / "val").is_dir() else None
    class_ids = _class_folders(train_root)
    if train_root == source and val_root is not None:
        class_ids.remove("val")
    if not class_ids:
        raise UserError(
            f"no class folders in {train_root}: expected {train_root}/<class>/<image files> "
            "(or train/ and val/ folders of class folders)"
        )
    skipped = [
        {"split": "train", "path": str((train_root / f).relative_to(source)), "reason": "outside any class folder"}
        for f in sorted(os.listdir(train_root))
        if _visible(f) and (train_root / f).is_file() and train_root != source
    ]
    index = {c: i for i, c in enumerate(class_ids)}
    paths, labels = [], []
    for c in class_ids:
        files = _list_files(train_root / c)
        if not files:
            raise UserError(f"class folder {train_root / c} holds no files: add images or remove the folder")
        paths += files
        labels += [index[c]] * len(files)
    train = SplitPlan("train", np.asarray(labels, np.int64), paths)
    plan = Plan("image-folder", source, class_ids, _class_names(source, class_ids), {"train": train}, skipped=skipped)

    flat_val = val_root is not None and not _class_folders(val_root)
    if val_root is not None and val_fraction is not None:
        raise UserError(f"{source} has a val/ folder; --val-fraction is only for sources without one")
    if val_root is None:
        plan.splits.update(_hold_out(train, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, seed, plan))
    elif flat_val:
        plan.kind = "ilsvrc"
        plan.splits["val"] = _ilsvrc_val(source, val_root, class_ids, plan)
    else:
        val_classes = _class_folders(val_root)
        unknown = sorted(set(val_classes) - set(class_ids))
        if unknown:
            raise UserError(f"{val_root} has class folders that train/ lacks: {', '.join(unknown[:5])}; make the two lists match")
        paths, labels = [], []
        for c in val_classes:
            files = _list_files(val_root / c)
            paths += files
            labels += [index[c]] * len(files)
        plan.splits["val"] = SplitPlan("val", np.asarray(labels, np.int64), paths)
    return plan


def _hold_out(train: SplitPlan, fraction: float, seed: int, plan: Plan) -> dict[str, SplitPlan]:
    """Move ``fraction`` of each class (chosen by ``seed``, at least one image left) to val."""
    if fraction == 0:
        plan.notes.append("no validation split (--val-fraction 0)")
        return {}
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(train), bool)
    for c in range(int(train.labels.max()) + 1):
        members = np.flatnonzero(train.labels == c)
        take = min(len(members) - 1, int(round(fraction * len(members))))
        is_val[rng.permutation(members)[:take]] = True
    plan.notes.append(f"held out {fraction:g} of each class as the validation split (seed {seed})")

    def subset(name, mask):
        keep = np.flatnonzero(mask)
        return SplitPlan(name, train.labels[keep], [train.paths[i] for i in keep])

    return {"train": subset("train", ~is_val), "val": subset("val", is_val)}


def _find(source: Path, names: tuple[str, ...], extra_dirs: tuple[Path, ...] = ()) -> Path | None:
    # the source, its val/ and devkit folders, then up to three parents (Kaggle's
    # LOC_synset_mapping.txt sits three levels above ILSVRC/Data/CLS-LOC)
    dirs = [source, source / "val", *extra_dirs, *sorted(source.glob("*devkit*/data")), *list(source.parents)[:3]]
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return d / n
    return None


def _class_names(source: Path, class_ids: list[str]) -> list[str]:
    """First name of each WNID from a synset-words file, else the folder names."""
    path = _find(source, SYNSET_FILES)
    if path is None:
        return list(class_ids)
    names = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            names[parts[0]] = parts[1].split(",")[0].strip()
    return [names.get(c, c) for c in class_ids]


def _ilsvrc_val(source: Path, val_root: Path, class_ids: list[str], plan: Plan) -> SplitPlan:
    """Flat val/ images labelled by a labels file or the devkit ground truth."""
    files = _list_files(val_root)
    if not files:
        raise UserError(f"{val_root} is empty: add the validation images or remove the folder")
    index = {c: i for i, c in enumerate(class_ids)}
    labels_file = _find(source, VAL_LABEL_FILES)
    ground_truth = _find(source, (GROUND_TRUTH,))
    if labels_file is not None:
        by_name = _read_val_labels(labels_file, class_ids)
        plan.notes.append(f"validation labels from {labels_file}")
        wnid_of = {}
        for f in files:
            name = os.path.basename(f)
            wnid_of[f] = by_name.get(name, by_name.get(os.path.splitext(name)[0]))
    elif ground_truth is not None:
        meta = _find(source, ("meta.mat",), (ground_truth.parent,))
        if meta is None:
            raise UserError(
                f"{ground_truth} holds devkit IDs, whose order is not the sorted WNIDs; put the devkit's "
                f"data/meta.mat beside it (or give val labels as {source}/val_labels.txt, lines 'filename wnid')"
            )
        try:
            id_to_wnid = ilsvrc_id_to_wnid(meta)
        except MatFileError as e:
            raise UserError(f"{e}; use the meta.mat of the ILSVRC2012 devkit") from None
        ids = [int(t) for t in ground_truth.read_text().split()]
        images = [f for f in files if re.search(r"ILSVRC2012_val_\d+", os.path.basename(f))]
        if len(ids) != len(images):
            raise UserError(f"{ground_truth} has {len(ids)} labels for {len(images)} ILSVRC2012_val_* images in {val_root}")
        wnid_of = {f: id_to_wnid.get(i) for f, i in zip(sorted(images, key=os.path.basename), ids)}
        plan.notes.append(f"validation labels from {ground_truth} mapped by {meta}")
    else:
        raise UserError(
            f"{val_root} holds images but no labels: add {source}/val_labels.txt ('filename wnid' lines), "
            f"or the devkit's {GROUND_TRUTH} with meta.mat, or sort val/ into class folders"
        )
    paths, labels = [], []
    label_files = {str(p) for p in (labels_file, ground_truth) if p is not None}
    for f in files:
        if f in label_files:
            continue
        wnid = wnid_of.get(f)
        rel = str(Path(f).relative_to(source))
        if wnid is None:
            plan.skipped.append({"split": "val", "path": rel, "reason": "no label for this file"})
        elif wnid not in index:
            plan.skipped.append({"split": "val", "path": rel, "reason": f"label {wnid} is not one of the training classes"})
        else:
            paths.append(f)
            labels.append(index[wnid])
    if not paths:
        raise UserError(f"no file in {val_root} has a usable label; check the labels file's file names and WNIDs")
    return SplitPlan("val", np.asarray(labels, np.int64), paths)


def _read_val_labels(path: Path, class_ids: list[str]) -> dict[str, str]:
    """{file name or stem: wnid} from 'name wnid', 'name,wnid ...' or 'name index' lines."""
    out = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.reader(f, delimiter="," if path.suffix == ".csv" else " ", skipinitialspace=True):
            row = [t for cell in row for t in cell.split()]
            if len(row) < 2:
                continue
            name, label = row[0], row[1]
            if WNID.match(label) or label in class_ids:
                out[name] = label
            elif label.isdigit() and int(label) < len(class_ids):
                out[name] = class_ids[int(label)]
    if not out:
        raise UserError(f"{path} has no 'filename label' lines that name a training class")
    return out


# --- IDX -------------------------------------------------------------------------------------


def _read_idx(source: Path, val_fraction: float | None, seed: int) -> Plan:
    splits = {}
    for prefix, name in (("train", "train"), ("t10k", "val")):
        pair = idx.find_idx_pair(source, prefix)
        if pair is None:
            continue
        images_file, labels_file = pair
        try:
            shape = idx.read_idx_header(images_file)
            labels = idx.read_idx(labels_file).astype(np.int64)
        except (idx.IdxError, OSError, EOFError) as e:
            raise UserError(f"cannot read {images_file.name} / {labels_file.name}: {e}") from None
        if len(shape) != 3 or labels.ndim != 1 or shape[0] != len(labels):
            raise UserError(f"{images_file.name} ({shape}) and {labels_file.name} ({labels.shape}) do not match: expected N images of HxW and N labels")
        splits[name] = SplitPlan(name, labels, idx_file=str(images_file), rows=np.arange(len(labels)))
    num_classes = int(max(s.labels.max() for s in splits.values())) + 1
    names_file = source / "classes.txt"
    if names_file.is_file():
        names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    elif "fashion" in source.name.lower() and num_classes == len(idx.FASHION_MNIST_CLASSES):
        names = list(idx.FASHION_MNIST_CLASSES)
    else:
        names = [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise UserError(f"{names_file} names {len(names)} classes but the labels go up to {num_classes - 1}")
    class_ids = [str(i) for i in range(len(names))]
    plan = Plan("idx", source, class_ids, names, splits, grayscale=True)
    if "val" not in splits:
        if val_fraction is None:
            val_fraction = DEFAULT_VAL_FRACTION
        plan.splits.update(_hold_out_rows(splits["train"], val_fraction, seed, plan))
    elif val_fraction is not None:
        raise UserError(f"{source} has t10k-* files for validation; --val-fraction is only for sources without them")
    return plan


def _hold_out_rows(train: SplitPlan, fraction: float, seed: int, plan: Plan) -> dict[str, SplitPlan]:
    as_paths = SplitPlan("train", train.labels, [str(r) for r in train.rows])
    held = _hold_out(as_paths, fraction, seed, plan)
    return {
        name: SplitPlan(name, s.labels, idx_file=train.idx_file, rows=np.asarray([int(p) for p in s.paths], np.int64))
        for name, s in held.items()
    }
