"""Readers for the three source layouts: what files (or IDX rows) make up each split, with labels.

* an image-folder tree: ``SOURCE/train/<class>/**`` and ``SOURCE/val/<class>/**``, or just
  ``SOURCE/<class>/**`` (or ``SOURCE/train/<class>`` without ``val/``), in which case a
  class-stratified fraction of each class is held out as the validation split;
* the ILSVRC-2012 layout: ``train/<wnid>/*.JPEG`` and ``val/*.JPEG`` flat, the validation labels
  read from exactly one of two places, never searched for (:mod:`alexnet.data.val_labels`):
  - the devkit unpacked into SOURCE: ``ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt``
    (the 1-based ILSVRC2012_ID of image number k on line k) with ``meta.mat`` beside it, which
    maps the IDs to WNIDs;
  - a file named with ``--val-labels FILE``: "filename label" lines (space- or comma-separated,
    as Kaggle's ``LOC_val_solution.csv``), the label a WNID or a class number whose origin (0 or
    1) ``--val-labels-base`` must state; or the devkit's ground-truth file itself.
  Class names come from ``LOC_synset_mapping.txt`` or ``synset_words.txt`` ("wnid name, other
  name") when present (display only);
* Fashion-MNIST / MNIST IDX files: ``train-images-idx3-ubyte[.gz]`` and
  ``train-labels-idx1-ubyte[.gz]`` (and ``t10k-*`` for the validation split); one file of a
  pair without the other, a file shorter than its header says, or classes with no training
  label are refused.

Class indices follow the sorted class-folder names (WNIDs sort into the usual ImageNet order).

What is listed (nothing is dropped silently: whatever is not read is in ``report.json``):

* files are listed recursively in sorted order, names as the file system gives them (a name
  that is not valid UTF-8 keeps its bytes, as ``os.fsdecode``'s surrogate escapes; shown with
  replacement characters);
* hidden files and folders (names starting with "."), folders beside ``train/`` and ``val/``,
  and things that are not regular files (FIFOs, sockets, devices) are ignored, with the reason;
  files outside any class folder are skipped, with the reason;
* symbolic links: a link to a file or folder outside SOURCE is followed; a link whose target lies
  inside SOURCE, or inside a folder the layout reads (train/, val/, a class folder, wherever
  links put them), is not: the target is listed once, under its own folder, so a link can never
  add another class's images under a new label, or training images to the validation split; a
  folder reached a second time (a link loop, or two links to one folder) is not walked again, and
  two class folders that are one folder are refused; a broken link is reported as not found.
* class names (for display: reports, figures, checkpoints) are the synset file's first name or
  the folder name, with replacement characters for bytes that are not UTF-8; a name that two
  classes share gets the class id added ("crane (n02012849)": ImageNet has two cranes).
* every split must end up with images: a source too small to hold out a validation split, or
  ``--val-fraction 0``, is refused (training validates every epoch).
* a folder named ``train`` or ``val`` decides the layout; when it holds image files where class
  folders belong, beside other folders, it is probably a class of that name, and the refusal says
  to rename it. A folder that cannot be listed (the source, a class folder) is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alexnet.data import idx
from alexnet.data.images import image_size_of
from alexnet.data.val_labels import DEVKIT_DATA, GROUND_TRUTH, find_val_labels
from alexnet.display import printable
from alexnet.errors import UserError

SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")
DEFAULT_VAL_FRACTION = 0.1
SMALL_IMAGE_PIXELS = 64  # a shorter side under this suggests the demo's small-image recipe
SIZE_SAMPLE = 64  # files whose headers are read to judge the image size


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
    class_ids: list[str]  # folder names as the file system gives them (surrogate escapes kept)
    class_names: list[str]  # for display: printable
    splits: dict[str, SplitPlan]
    notes: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # files refused before decoding
    ignored: list[dict] = field(default_factory=list)  # entries not read, by the listing policy
    val_labels: dict | None = None  # the file the validation labels came from (ILSVRC layout)
    grayscale: bool | None = None  # known from the format (IDX), else None

    def fingerprint(self, image_size: int) -> str:
        """Identifies the work: same source listing, labels and size -> same store."""
        h = hashlib.sha256(json.dumps([self.kind, str(self.source), self.class_ids, image_size]).encode())
        for name, split in self.splits.items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(split.labels, np.int64).tobytes())
            if split.idx_file:
                h.update(split.idx_file.encode("utf-8", "surrogateescape"))
                h.update(str(os.path.getsize(split.idx_file)).encode())
                h.update(np.ascontiguousarray(split.rows, np.int64).tobytes())
            for p in split.paths:
                h.update(p.encode("utf-8", "surrogateescape") + b"\0")
        return h.hexdigest()


def read_source(source: str | os.PathLike, *, val_fraction: float | None = None, seed: int = 0,
                val_labels: str | os.PathLike | None = None, val_labels_base: int | None = None,
                image_size: int | None = None) -> Plan:
    """Work out the layout of ``source`` and list its splits.

    ``val_labels`` / ``val_labels_base``: the file labelling a flat ``val/`` folder and the number
    of its first class (see :mod:`alexnet.data.val_labels`). ``image_size``: when given, a note
    suggests the small-image recipe if the images are much smaller than that.
    """
    source = Path(source).expanduser()
    shown = printable(str(source))
    if not source.exists():
        raise UserError(f"{shown} does not exist: give a folder of class folders, an ILSVRC-2012 tree or Fashion-MNIST IDX files")
    if not source.is_dir():
        raise UserError(f"{shown} is a file: give the folder that holds the data set")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must be above 0 and below 1 (training validates every epoch), got {val_fraction}")
    source = source.resolve()
    _require_listable(source, "the source folder")
    for prefix in ("train", "t10k"):  # an IDX file without its partner: the other one is missing, not "no class folders"
        half = idx.half_pair(source, prefix)
        if half:
            raise UserError(f"{shown} holds {half[0]} but no {half[1]}: IDX images and labels come in pairs; add the missing file")
    if idx.find_idx_pair(source, "train"):
        if val_labels is not None or val_labels_base is not None:
            raise UserError("--val-labels and --val-labels-base are for a flat val/ folder of images (the ILSVRC-2012 layout)")
        plan = _read_idx(source, val_fraction, seed)
    else:
        plan = _read_folders(source, val_fraction, seed, val_labels, val_labels_base)
    if len(plan.class_ids) < 2:
        raise UserError(f"{shown} has a single class; classification needs at least two")
    for name, split in plan.splits.items():
        if len(split) == 0:
            raise UserError(f"the {name} split of {shown} has no images; training needs both a training and a validation split")
    if plan.ignored:
        plan.notes.append(f"{len(plan.ignored)} hidden files, links or other entries were not read; report.json lists each with the reason")
    if image_size is not None and plan.kind != "idx":
        note = small_image_note(plan, image_size)
        if note:
            plan.notes.append(note)
    return plan


# --- listing files ---------------------------------------------------------------------------


def _require_listable(folder: Path, what: str) -> None:
    """One line for a folder whose entries cannot be listed (no read or search permission)."""
    try:
        os.scandir(folder).close()
    except OSError as e:
        raise UserError(f"{what} {printable(str(folder))} cannot be read ({e.strerror}); fix its permissions") from None


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class _Lister:
    """Lists files under the source by the policy in the module docstring, recording what it passes over."""

    def __init__(self, source: Path, ignored: list[dict]) -> None:
        self.source = source
        # the tree: the source and every folder that the layout reads (train/, val/, the class
        # folders), wherever links put them; a link into any of them is not followed
        self.roots: list[str] = [os.path.realpath(source)]
        self.ignored = ignored
        self.quiet = False
        self.walked: set[str] = set()  # real paths of the folders walked: none twice, so no loops
        self.linked: set[str] = set()  # real paths of the files reached through links

    def add_root(self, folder: Path) -> None:
        self.roots.append(os.path.realpath(folder))

    def ignore(self, path: str, reason: str) -> None:
        if not self.quiet:
            self.ignored.append({"path": _relative(path, self.source), "reason": reason})

    def entry_kind(self, entry: os.DirEntry) -> str | None:
        """"dir", "file", or None (ignored, with the reason recorded). Only links cost a system
        call: for the rest, the folder listing says what they are."""
        path = entry.path
        if not _visible(entry.name):
            self.ignore(path, "hidden (the name starts with '.')")
            return None
        try:
            link = entry.is_symlink()
            mode = os.stat(path).st_mode if link else (
                stat.S_IFDIR if entry.is_dir(follow_symlinks=False) else
                stat.S_IFREG if entry.is_file(follow_symlinks=False) else entry.stat(follow_symlinks=False).st_mode)
        except FileNotFoundError:
            self.ignore(path, "not found (a broken link)" if os.path.islink(path) else "not found")
            return None
        except OSError as e:
            self.ignore(path, f"unreadable: {e.strerror}")
            return None
        if link:
            target = os.path.realpath(path)
            if any(_inside(target, root) for root in self.roots):
                self.ignore(path, f"a link to {_relative(target, self.source)}, inside the source: not followed "
                                  "(what it points to is listed under its own folder)")
                return None
            if stat.S_ISDIR(mode) and any(_inside(root, target) for root in self.roots):
                self.ignore(path, "a link to a folder that holds the source: not followed (a loop)")
                return None
            if stat.S_ISREG(mode):
                if target in self.linked:
                    self.ignore(path, "a second link to a file already listed: not read twice")
                    return None
                if not self.quiet:
                    self.linked.add(target)
        if stat.S_ISDIR(mode):
            return "dir"
        if stat.S_ISREG(mode):
            return "file"
        self.ignore(path, "not a regular file (a FIFO, socket or device)")
        return None

    def _entries(self, folder) -> list[os.DirEntry]:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)

    def peek_folders(self, folder: Path) -> list[str]:
        """The sub-folders that :meth:`folders` would give, recording nothing."""
        self.quiet = True
        try:
            return self.folders(folder)[0]
        finally:
            self.quiet = False

    def folders(self, folder: Path) -> tuple[list[str], list[str]]:
        """The sub-folders (names) and files (paths) directly in ``folder``, sorted."""
        dirs, files = [], []
        for entry in self._entries(folder):
            kind = self.entry_kind(entry)
            if kind == "dir":
                dirs.append(entry.name)
            elif kind == "file":
                files.append(entry.path)
        return dirs, files

    def files(self, folder: Path) -> list[str]:
        """Every file under ``folder``, recursively, in sorted order."""
        found: list[str] = []
        self._walk(str(folder), found)
        return found

    def _walk(self, folder: str, found: list[str]) -> None:
        real = os.path.realpath(folder)
        if real in self.walked:
            self.ignore(folder, "a folder already listed (reached again through a link): not read twice")
            return
        self.walked.add(real)
        stack = [folder]
        while stack:
            current = stack.pop()
            try:
                entries = self._entries(current)
            except OSError as e:
                self.ignore(current, f"unreadable folder: {e.strerror}")
                continue
            subfolders = []
            for entry in entries:
                kind = self.entry_kind(entry)
                if kind == "file":
                    found.append(entry.path)
                elif kind == "dir":
                    real = os.path.realpath(entry.path)
                    if real in self.walked:
                        self.ignore(entry.path, "a folder already listed (reached again through a link): not read twice")
                    else:
                        self.walked.add(real)
                        subfolders.append(entry.path)
            # depth first in sorted order, files of a folder before its sub-folders' files
            stack.extend(reversed(subfolders))
        return None


def _relative(path: str | os.PathLike, source: Path) -> str:
    try:
        return str(Path(path).relative_to(source))
    except ValueError:
        return str(path)


# --- image folders and ILSVRC ----------------------------------------------------------------


def _read_folders(source: Path, val_fraction: float | None, seed: int, val_labels: str | os.PathLike | None,
                  val_labels_base: int | None) -> Plan:
    ignored: list[dict] = []
    lister = _Lister(source, ignored)
    top_dirs, top_files = lister.folders(source)
    has_train = "train" in top_dirs
    train_root = source / "train" if has_train else source
    val_root = source / "val" if "val" in top_dirs else None
    skipped = []
    if has_train:
        for name in top_dirs:
            if name not in ("train", "val", DEVKIT_DATA.parts[0]):
                lister.ignore(str(source / name), "a folder beside train/ and val/: only those two are read")
        for path in top_files:
            if os.path.basename(path) not in SYNSET_FILES:
                lister.ignore(path, "a file at the source root: only train/ and val/ are read")
        lister.add_root(train_root)
        class_ids, root_files = lister.folders(train_root)
    else:
        class_ids = [d for d in top_dirs if d != "val"]
        root_files = [f for f in top_files if os.path.basename(f) not in SYNSET_FILES]  # names, read below
    val_classes = lister.peek_folders(val_root) if val_root is not None else []
    if val_root is not None:
        lister.add_root(val_root)
    seen: dict[str, str] = {}
    for c in class_ids:
        other = seen.setdefault(os.path.realpath(train_root / c), c)
        if other != c:
            raise UserError(f"class folders {printable(other)!r} and {printable(c)!r} of {printable(str(train_root))} are one "
                            "folder (through a link): keep one, or copy the images if both classes are meant")
        lister.add_root(train_root / c)
    for c in val_classes:
        lister.add_root(val_root / c)
    skipped += [{"split": "train", "path": _relative(f, source), "reason": "outside any class folder"} for f in root_files]
    _refuse_a_class_named_like_a_split(source, top_dirs, has_train, class_ids, root_files, val_root, val_classes, val_labels)
    shown = printable(str(train_root))
    if not class_ids:
        raise UserError(
            f"no class folders in {shown}: expected {shown}/<class>/<image files> "
            "(or train/ and val/ folders of class folders)"
        )
    index = {c: i for i, c in enumerate(class_ids)}
    paths, labels = [], []
    for c in class_ids:
        files = lister.files(train_root / c)
        if not files:
            _require_listable(train_root / c, "class folder")
            raise UserError(f"class folder {printable(str(train_root / c))} holds no files: add images or remove the folder")
        paths += files
        labels += [index[c]] * len(files)
    if len(class_ids) < 2:
        raise UserError(f"{printable(str(source))} has a single class ({printable(class_ids[0])!r}); classification needs at least two class folders")
    train = SplitPlan("train", np.asarray(labels, np.int64), paths)
    plan = Plan("image-folder", source, class_ids, _class_names(source, class_ids), {"train": train},
                skipped=skipped, ignored=ignored)
    if val_root is not None and val_fraction is not None:
        raise UserError(f"{printable(str(source))} has a val/ folder; --val-fraction is only for sources without one")
    flat_val = val_root is not None and not val_classes
    if (val_labels is not None or val_labels_base is not None) and not flat_val:
        raise UserError("--val-labels and --val-labels-base are for a val/ folder of unsorted images (the ILSVRC-2012 "
                        f"layout); {printable(str(source))} has {'class folders in val/' if val_root else 'no val/ folder'}")
    if val_root is None:
        plan.splits.update(_hold_out(train, DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction, seed, plan))
    elif flat_val:
        plan.kind = "ilsvrc"
        plan.splits["val"] = _ilsvrc_val(source, val_root, lister, plan, val_labels, val_labels_base)
    else:
        plan.splits["val"] = _val_class_folders(source, val_root, val_classes, index, lister, plan)
    return plan


def _val_class_folders(source: Path, val_root: Path, val_classes: list[str], index: dict[str, int],
                       lister: "_Lister", plan: Plan) -> SplitPlan:
    """The validation split of a val/ folder of class folders (``index``: the training classes)."""
    unknown = sorted(set(val_classes) - set(index))
    if unknown:
        raise UserError(f"{printable(str(val_root))} has class folders that train/ lacks: {printable(', '.join(unknown[:5]))}; make the two lists match")
    _, val_files = lister.folders(val_root)
    plan.skipped += [{"split": "val", "path": _relative(f, source), "reason": "outside any class folder"} for f in val_files]
    paths, labels = [], []
    for c in val_classes:
        files = lister.files(val_root / c)
        if not files:
            _require_listable(val_root / c, "validation class folder")
        paths += files
        labels += [index[c]] * len(files)
    return SplitPlan("val", np.asarray(labels, np.int64), paths)


def _refuse_a_class_named_like_a_split(source: Path, top_dirs: list[str], has_train: bool, class_ids: list[str],
                                      root_files: list[str], val_root: Path | None, val_classes: list[str],
                                      val_labels) -> None:
    """A folder of classes one of which is named ``train`` or ``val`` reads as the train/ + val/
    layout; say so, rather than that train/ holds no class folders or that val/ lacks labels."""
    beside = [d for d in top_dirs if d not in ("train", "val", DEVKIT_DATA.parts[0])]
    if has_train and beside and root_files and len(class_ids) < 2:
        name, held = "train", "no class folders" if not class_ids else f"one folder ({printable(class_ids[0])})"
    elif (not has_train and val_root is not None and not val_classes and val_labels is None and class_ids
          and not (source / DEVKIT_DATA / GROUND_TRUTH).is_file() and _has_entries(val_root)):
        name, held = "val", "no class folders"
    else:
        return
    shown = ", ".join(printable(d) for d in beside[:3]) + (", ..." if len(beside) > 3 else "")
    layout = "a train/ + val/ layout" if name == "train" else "class folders with a val/ folder of validation images"
    raise UserError(
        f"{printable(str(source))} holds a folder named {name}/, so it reads as {layout}, but {name}/ "
        f"holds image files and {held}, beside the folders {shown}: if '{name}' is one of your classes, rename that "
        f"folder (e.g. to {name}_class); else put {name}/'s images into class folders"
        + (" or give their labels with --val-labels FILE" if name == "val" else "")
    )


def _has_entries(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(True for _ in it)
    except OSError:
        return False


def _hold_out(train: SplitPlan, fraction: float, seed: int, plan: Plan) -> dict[str, SplitPlan]:
    """Move ``fraction`` of each class (chosen by ``seed``) to val: at least one image of every class
    that has two or more, and never a class's last one."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(train), bool)
    for c in range(int(train.labels.max()) + 1):
        members = np.flatnonzero(train.labels == c)
        take = min(len(members) - 1, max(1, int(round(fraction * len(members)))))
        is_val[rng.permutation(members)[:take]] = True
    if not is_val.any():
        smallest = int(np.bincount(train.labels).min())
        raise UserError(
            f"{printable(str(plan.source))} has too few images to hold out a validation split (every class has "
            f"{smallest} image, and a class keeps its last one for training): add images, or add a val/ folder"
        )
    plan.notes.append(f"held out {fraction:g} of each class as the validation split (seed {seed})")

    def subset(name, mask):
        keep = np.flatnonzero(mask)
        return SplitPlan(name, train.labels[keep], [train.paths[i] for i in keep])

    return {"train": subset("train", ~is_val), "val": subset("val", is_val)}


def _class_names(source: Path, class_ids: list[str]) -> list[str]:
    """First name of each WNID from a synset-words file (in SOURCE, its devkit's data/ or up to three
    parents, where Kaggle's LOC_synset_mapping.txt sits), else the folder names; printable. Names are
    for display only: labels never come from a file found this way."""
    dirs = [source, source / "val", *sorted(source.glob("*devkit*/data")), *list(source.parents)[:3]]
    path = next((d / n for d in dirs for n in SYNSET_FILES if (d / n).is_file()), None)
    names = {}
    if path is not None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2:
                names[parts[0]] = parts[1].split(",")[0].strip()
    return _unique([printable(names.get(c, c)) for c in class_ids], class_ids)


def _unique(names: list[str], class_ids: list[str]) -> list[str]:
    """Names that tell every class apart: a repeated one gets its id added ("crane (n02012849)",
    as ImageNet has two cranes), and ids that print alike show their bytes escaped."""
    repeated = {n for n in names if names.count(n) > 1}
    names = [f"{n} ({printable(c)})" if n in repeated and n != printable(c) else n for n, c in zip(names, class_ids)]
    repeated = {n for n in names if names.count(n) > 1}
    escaped = [c.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for c in class_ids]
    return [e if n in repeated else n for n, e in zip(names, escaped)]


def _ilsvrc_val(source: Path, val_root: Path, lister: _Lister, plan: Plan, named, base) -> SplitPlan:
    """Flat val/ images labelled by the devkit or by the file the user named."""
    files = lister.files(val_root)
    if not files:
        raise UserError(f"{printable(str(val_root))} is empty: add the validation images or remove the folder")
    labels_of = find_val_labels(source, val_root, plan.class_ids, named, base)
    plan.val_labels = labels_of.record
    plan.notes.append(f"validation labels from {printable(labels_of.record['file'])} ({labels_of.record['kind']})")
    index = {c: i for i, c in enumerate(plan.class_ids)}
    paths, labels = [], []
    for f in files:
        rel = _relative(f, source)
        if os.path.realpath(f) == str(labels_of.file):
            lister.ignore(f, "the validation labels file")
            continue
        wnid = labels_of.label_of(f)
        if wnid is None:
            plan.skipped.append({"split": "val", "path": rel, "reason": labels_of.missing_reason(f)})
        elif wnid not in index:
            plan.skipped.append({"split": "val", "path": rel, "reason": f"label {printable(wnid)} is not one of the training classes"})
        else:
            paths.append(f)
            labels.append(index[wnid])
    if not paths:
        raise UserError(f"no file in {printable(str(val_root))} has a usable label; check the labels file's file names and classes")
    return SplitPlan("val", np.asarray(labels, np.int64), paths)


# --- a hint for small images -----------------------------------------------------------------


def small_image_note(plan: Plan, image_size: int) -> str | None:
    """A suggestion of a smaller stored size when the images are small: their median
    shorter side (from the headers of up to SIZE_SAMPLE files spread over the training split)
    under SMALL_IMAGE_PIXELS, and ``image_size`` above it rounded up to a multiple of 8."""
    paths = plan.splits["train"].paths
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, min(SIZE_SAMPLE, len(paths))).astype(int))
    sides = [min(s) for s in (image_size_of(paths[i]) for i in picks) if s is not None]
    if not sides:
        return None
    from alexnet.model import feature_map_size

    side = int(np.median(sides))
    # the smallest crop the small stem takes, and a stored size that keeps 7/8 of it (224 of 256
    # in proportion, as the demo's 28 of 32): the images' own size rounded up to a multiple of 8
    smallest = next(s for s in range(1, SMALL_IMAGE_PIXELS) if feature_map_size(s, "small") >= 1)
    size = max(8, -(-side // 8) * 8)
    while size * 7 // 8 < smallest:
        size += 8
    if side >= SMALL_IMAGE_PIXELS or image_size <= size:
        return None
    return (
        f"the images are small (median shorter side {side} px) and are being upscaled to {image_size}; consider "
        f"preparing again with --image-size {size} --force: alexnet train fits its small-data recipe to them "
        "either way, and smaller stored images train many times faster"
    )


# --- IDX -------------------------------------------------------------------------------------


def _read_idx(source: Path, val_fraction: float | None, seed: int) -> Plan:
    splits = {}
    for prefix, name in (("train", "train"), ("t10k", "val")):
        pair = idx.find_idx_pair(source, prefix)
        if pair is None:
            continue
        images_file, labels_file = pair
        try:
            shape = idx.check_idx_data(images_file)
            labels = idx.read_idx(labels_file).astype(np.int64)
        except (idx.IdxError, OSError, EOFError) as e:
            raise UserError(f"cannot read {images_file.name} / {labels_file.name}: {e}") from None
        if len(shape) != 3 or labels.ndim != 1 or shape[0] != len(labels):
            raise UserError(f"{images_file.name} ({shape}) and {labels_file.name} ({labels.shape}) do not match: expected N images of HxW and N labels")
        splits[name] = SplitPlan(name, labels, idx_file=str(images_file), rows=np.arange(len(labels)))
    num_classes = int(max(s.labels.max() for s in splits.values())) + 1
    names_file = source / "classes.txt"
    if names_file.is_file():
        names = [printable(line.strip()) for line in names_file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    elif "fashion" in source.name.lower() and num_classes == len(idx.FASHION_MNIST_CLASSES):
        names = list(idx.FASHION_MNIST_CLASSES)
    else:
        names = [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise UserError(f"{names_file} names {len(names)} classes but the labels go up to {num_classes - 1}")
    untrained = sorted(set(range(len(names))) - set(splits["train"].labels.tolist()))
    if untrained:
        where = ", ".join(f"{c} ({names[c]})" if names[c] != str(c) else str(c) for c in untrained[:5])
        said = (f"{names_file.name} names {len(names)} classes" if names_file.is_file() and len(names) > num_classes
                else f"the labels go up to {num_classes - 1}")
        raise UserError(f"{said}, but no training label is class {where}{', ...' if len(untrained) > 5 else ''}; "
                        "every class needs training images: check the label files (and classes.txt)")
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
