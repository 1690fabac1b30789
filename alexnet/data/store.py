"""The prepared data store: uint8 images memory-mapped from disk, labels and the training statistics.

A store is a folder::

    manifest.json         written last and atomically; without it the store is incomplete
    train_images.npy      uint8 (N, S, S, C), opened memory-mapped and read-only (a raw store)
    train_jpeg/, train_index.npy   the images as JPEGs instead (a JPEG store, :mod:`alexnet.data.jpeg`)
    train_labels.npy      int64 (N,)
    val_images.npy        (when there is a validation split)
    val_labels.npy
    stats.npz             mean_image float32 (S, S, C): the per-pixel mean of the training set
                          (section 2); pca_eigenvalues (C,) and pca_eigenvectors (C, C),
                          columns, largest first: the covariance of pixel values in 0-255 units
                          over every pixel of the training set (section 4.1); pixel_covariance
    report.json           files skipped (path and reason) and conversions made

The manifest's ``encoding`` says which (``raw`` when absent). ``split.images`` reads alike for
both: indexing gives uint8 arrays, and :meth:`Split.read` fills a batch buffer. A raw store's
batches are read with ``pread``, not through the memory map, so that a file truncated or replaced
under a running reader is one clear error (:class:`StoreChanged`), never a SIGBUS.

The manifest's ``content_digest`` (:func:`content_digest`, computed once by prepare) names what
the store holds: a copy of the store elsewhere has the same, a store rebuilt from other images
another. A reader that runs for long (training, evaluation) opens the store with ``hold=True``: a
shared lock (:func:`alexnet.runlock.shared_lock`) that ``prepare --force`` waits for.

``alexnet prepare`` writes it (:mod:`alexnet.data.prepare`); :func:`open_store` reads it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.data.jpeg import JpegImages, check_jpeg_index, index_file, part_dir
from alexnet.display import printable
from alexnet.errors import UserError

FORMAT = "alexnet-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
REPORT = "report.json"
ENCODINGS = ("raw", "jpeg")


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


def encoding_of(manifest: dict) -> str:
    """The manifest's image encoding; stores written before there was a choice are raw."""
    encoding = manifest.get("encoding", "raw")
    if encoding not in ENCODINGS:
        raise UserError(f"the store's images are encoded as {encoding!r}, which this version cannot read (it reads {', '.join(ENCODINGS)})")
    return encoding


def payload_file(manifest: dict, split: str, count: int) -> tuple[str, tuple[int, ...]]:
    """The .npy file that holds (raw) or indexes (JPEG) a split's images, and its shape."""
    if encoding_of(manifest) == "jpeg":
        return index_file(split), (count, 4)
    s, c = manifest["image_size"], manifest["channels"]
    return images_file(split), (count, s, s, c)


class StoreChanged(UserError):
    """A store file changed on disk while this process read it."""


class RawRows:
    """The rows of a raw split's image file, read with ``pread`` (which releases the GIL): a file
    truncated, replaced or rewritten while it is read is a :class:`StoreChanged`, where a memory
    map would take a SIGBUS at the first row past the new end."""

    def __init__(self, file: Path, images: np.memmap) -> None:
        self.file, self.shape = file, images.shape
        self.offset, self.row_bytes = images.offset, math.prod(images.shape[1:])
        self.fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        weakref.finalize(self, os.close, self.fd)
        self.stat = self._stats()

    def _stats(self) -> tuple:
        try:
            now = os.stat(self.file)
        except OSError:
            now = None
        held = os.fstat(self.fd)
        return (held.st_size, held.st_mtime_ns) + ((now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns) if now else ())

    def _check(self) -> None:
        if self._stats() != self.stat:
            raise StoreChanged(f"{printable(str(self.file))} changed on disk while this process read it (rewritten, "
                               "truncated or replaced); stopped rather than mix two data sets: let whatever "
                               "rewrites the store finish, then start again")

    def read(self, indices: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows ``indices`` into ``out`` (C-contiguous), one ``pread`` per run of consecutive rows."""
        self._check()
        indices = np.asarray(indices, np.int64)
        rows = out.reshape(len(indices), -1)
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), len(indices)]):
            target, at = memoryview(rows[a:b]).cast("B"), self.offset + int(indices[a]) * self.row_bytes
            while len(target):  # a read may return less than asked (at most 2 GiB at a time on Linux)
                done = os.preadv(self.fd, [target], at)
                if done == 0:
                    self._check()
                    raise StoreChanged(f"{printable(str(self.file))} ends before its rows: it was truncated while "
                                       "this process read it; let whatever rewrites the store finish, then start again")
                target, at = target[done:], at + done
        self._check()  # a rewrite during the reads
        return out


@dataclass(frozen=True)
class Split:
    """One split of a store: ``images`` uint8 (N, S, S, C) and ``labels`` int64 (N,).

    ``images`` is a read-only memmap in a raw store and a :class:`alexnet.data.jpeg.JpegImages`
    in a JPEG one; both index like an array (``images[i]``, ``images[idx_array]``, slices).
    ``rows`` reads a raw split's batches (:class:`RawRows`), where ``os.preadv`` exists.
    """

    name: str
    images: "np.memmap | JpegImages"
    labels: np.ndarray
    rows: RawRows | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def encoding(self) -> str:
        return "jpeg" if isinstance(self.images, JpegImages) else "raw"

    def read(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Images ``indices`` into ``out`` ((len, S, S, C) uint8, C-contiguous; made if None).
        A JPEG split raises :class:`alexnet.data.jpeg.CorruptImage` for damaged images; a raw
        one :class:`StoreChanged` for a file changed under it."""
        if isinstance(self.images, JpegImages):
            return self.images.read(indices, out)
        if out is None:
            out = np.empty((len(indices), *self.images.shape[1:]), np.uint8)
        if self.rows is not None:
            return self.rows.read(indices, out)
        np.take(self.images, indices, axis=0, out=out)  # releases the GIL: one copy from the memmap
        return out


class Store:
    """A prepared data set; open one with :func:`open_store`. ``lock``: the fd of the shared lock
    held while the store is read (``hold``), closed with the store."""

    def __init__(self, path: Path, manifest: dict, lock: int | None = None) -> None:
        self.path = path
        self._lock = weakref.finalize(self, os.close, lock) if lock is not None else None
        self.manifest = manifest
        self.classes: list[str] = list(manifest["classes"])
        self.class_ids: list[str] = list(manifest["class_ids"])
        self.num_classes = len(self.classes)
        self.image_size: int = int(manifest["image_size"])
        self.channels: int = int(manifest["channels"])
        self.splits: tuple[str, ...] = tuple(manifest["splits"])
        self.encoding: str = encoding_of(manifest)
        with np.load(path / STATS) as stats:
            self.mean_image = stats["mean_image"].astype(np.float32)
            self.pca_eigenvalues = stats["pca_eigenvalues"].astype(np.float32)
            self.pca_eigenvectors = stats["pca_eigenvectors"].astype(np.float32)
            self.pixel_covariance = stats["pixel_covariance"].astype(np.float64)
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UserError(f"the data set {self.path} has no {name!r} split (it has {', '.join(self.splits)})")
        if name not in self._splits:
            if self.encoding == "jpeg":
                index = np.load(self.path / index_file(name))
                images = JpegImages(self.path / part_dir(name), index, self.image_size, self.channels, name)
                rows = None
            else:
                images = np.load(self.path / images_file(name), mmap_mode="r")
                rows = RawRows(self.path / images_file(name), images) if hasattr(os, "preadv") else None
            labels = np.load(self.path / labels_file(name))
            self._splits[name] = Split(name, images, labels, rows)
        return self._splits[name]

    def close(self) -> None:
        """Let go of the shared lock (also done when the store is garbage collected)."""
        if self._lock is not None:
            self._lock()

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {self.manifest['splits'][s]['count']}" for s in self.splits)
        return f"Store({str(self.path)!r}: {self.num_classes} classes, {self.image_size}x{self.image_size}x{self.channels} {self.encoding}, {counts})"


def open_store(path: str | os.PathLike, *, hold: bool = False) -> Store:
    """Open a store written by ``alexnet prepare``, checked first: a missing, incomplete or damaged
    store is a UserError naming the file, never a crash later (see :func:`check_store`).

    ``hold``: keep a shared lock on it while the Store lives (a run reading it for hours), so that
    ``prepare --force`` cannot replace it meanwhile; refused while a prepare writes it."""
    from alexnet.runlock import shared_lock

    path = Path(path).expanduser()
    lock = shared_lock(path) if hold and (path / MANIFEST).is_file() else None
    try:
        return Store(path, check_store(path), lock)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise


def content_digest(path: Path, manifest: dict) -> str:
    """A digest of what the store at ``path`` holds: its classes and image format, and every
    split's labels and images (a JPEG store's index and part files), read in full. The same for
    any copy of the store, another for a store rebuilt from other images."""
    what = [manifest["classes"], manifest["class_ids"], manifest["image_size"], manifest["channels"],
            encoding_of(manifest)]
    digest = hashlib.sha256(json.dumps(what).encode())
    for name in sorted(manifest["splits"]):
        files = [labels_file(name)]
        if encoding_of(manifest) == "jpeg":
            files += [index_file(name)] + sorted(f"{part_dir(name)}/{p}" for p in os.listdir(path / part_dir(name))
                                                    if not p.startswith("."))
        else:
            files.append(images_file(name))
        for file in files:
            digest.update(file.encode() + b"\0")
            with open(path / file, "rb") as f:
                while chunk := f.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()[:16]


# --- checks on open --------------------------------------------------------------------------
# Every damage ends in one line that names the file and says to prepare the store again. The
# checks read the headers of the image files (not the pixels), the labels and the statistics.

MAX_IMAGE_SIZE = 1 << 16  # a side larger than this is not something prepare writes
SPLIT_NAMES = ("train", "val")


PROGRESS_FILE = "prepare-progress.npz"  # an unfinished prepare's record (alexnet.data.progress)


def foreign_entries(path: Path) -> list[str]:
    """The names in the folder ``path`` that no store writes: a store's folder holds the store alone,
    so a folder with any of these is someone's other data, never to be prepared into."""
    from alexnet.runlock import LOCK_FILE

    own = {MANIFEST, STATS, REPORT, PROGRESS_FILE, LOCK_FILE}
    own |= {name(s) for s in SPLIT_NAMES for name in (images_file, labels_file, index_file, part_dir)}
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if n not in own and not (n.startswith(".") and n.endswith(".tmp")))


def check_store(path: Path) -> dict:
    """The manifest of the store at ``path`` after checking the manifest's schema and version,
    each split's files (sizes against their headers, dtypes, shapes), the labels (range against
    the class list, counts against the manifest) and the statistics (present, shapes, finite)."""
    shown = printable(str(path))
    redo = f"run 'alexnet prepare SOURCE {shown}' (add --force to rebuild it)"
    manifest = _read_manifest(path, redo)
    _check_schema(path / MANIFEST, manifest, redo)
    encoding = manifest.get("encoding", "raw")
    if encoding not in IMAGE_CHECKS:
        raise UserError(f"{printable(str(path / MANIFEST))}: the images are encoded as {printable(repr(encoding))}, which "
                        f"this version cannot read (it reads {', '.join(IMAGE_CHECKS)}); {redo}")
    for name, info in manifest["splits"].items():
        IMAGE_CHECKS[encoding](path, manifest, name, info["count"], redo)
        _check_labels(path, manifest, name, info, redo)
    _check_stats(path, manifest, redo)
    return manifest


def _damaged(file: Path, what: str, redo: str) -> UserError:
    return UserError(f"{printable(str(file))} {what}; {redo}")


def _read_manifest(path: Path, redo: str) -> dict:
    manifest_path = path / MANIFEST
    if path.exists() and not path.is_dir():  # a checkpoint, an image, a text: never a store, never to prepare into
        raise UserError(f"{printable(str(path))} is a file, not a prepared data set (the folder 'alexnet prepare' "
                        "writes); name that folder")
    if not manifest_path.is_file():
        if path.is_dir() and foreign_entries(path):  # a photo folder, a run folder: no advice to prepare into it
            shown = printable(str(path))
            raise UserError(f"{shown} is not a prepared data set (no manifest.json); name the folder 'alexnet prepare' "
                            f"wrote (if {shown} holds your images, make one: alexnet prepare {shown} NEW_FOLDER)")
        what = "does not exist" if not path.exists() else "is not a complete prepared store (no manifest.json)"
        raise UserError(f"{printable(str(path))} {what}; {redo}")
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, OSError):
        raise _damaged(manifest_path, "is damaged (not readable JSON)", redo) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _damaged(manifest_path, "is not the manifest of a prepared store", redo)
    if manifest.get("complete") is not True:
        raise UserError(f"{printable(str(path))} is not a complete prepared store; {redo}")
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise _damaged(manifest_path, f"has store format {printable(repr(version))}; this version reads {FORMAT_VERSION}", redo)
    return manifest


def _is_int(value, low: int, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value <= high)


def _check_schema(file: Path, m: dict, redo: str) -> None:
    """Types and ranges of the fields that the code reads; bool is not taken for an int."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _damaged(file, f"is damaged: {what}", redo)

    need(_is_int(m.get("image_size"), 1, MAX_IMAGE_SIZE), "'image_size' must be a whole number of pixels")
    need(m.get("channels") in (1, 3) and type(m.get("channels")) is int, "'channels' must be 1 or 3")
    classes, class_ids = m.get("classes"), m.get("class_ids")
    need(isinstance(classes, list) and all(isinstance(c, str) for c in classes), "'classes' must be a list of names")
    need(isinstance(class_ids, list) and all(isinstance(c, str) for c in class_ids), "'class_ids' must be a list of names")
    need(len(classes) == len(class_ids) >= 2, "'classes' and 'class_ids' must name the same two or more classes")
    need(len(set(class_ids)) == len(class_ids), "'class_ids' names a class twice")
    splits = m.get("splits")
    need(isinstance(splits, dict) and "train" in splits and set(splits) <= set(SPLIT_NAMES),
         "'splits' must map 'train' (and 'val') to their counts")
    for name, info in splits.items():
        need(isinstance(info, dict) and _is_int(info.get("count"), 1), f"split {name!r} needs a positive 'count'")
        per_class = info.get("per_class")
        need(isinstance(per_class, list) and len(per_class) == len(classes) and all(_is_int(n, 0) for n in per_class)
             and sum(per_class) == info["count"], f"split {name!r}: 'per_class' must give one count per class, summing to 'count'")
    need(isinstance(m.get("encoding", "raw"), str), "'encoding' must be a name")
    need(isinstance(m.get("content_digest", ""), str), "'content_digest' must be a string")


def _check_npy(file: Path, shape: tuple[int, ...], dtype: np.dtype | None, redo: str) -> None:
    """An .npy file's header (shape, dtype, C order) and its size against the header."""
    try:
        with open(file, "rb") as f:
            _, found, fortran, found_dtype = _read_npy_header(f)
            data_offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise _damaged(file, "is missing", redo) from None
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise _damaged(file, f"is damaged (its header cannot be read: {printable(str(e).splitlines()[0] if str(e) else type(e).__name__)})", redo) from None
    if found != shape:
        raise _damaged(file, f"has shape {found}, the manifest says {shape}", redo)
    if dtype is not None and found_dtype != dtype:
        raise _damaged(file, f"holds {found_dtype}, expected {dtype}", redo)
    if fortran or found_dtype.hasobject:
        raise _damaged(file, "is not a plain C-ordered array", redo)
    expected = data_offset + math.prod(shape) * found_dtype.itemsize  # Python ints: no overflow
    if size < expected:
        raise _damaged(file, f"is truncated: {size} bytes, its header needs {expected}", redo)
    if size > expected:
        raise _damaged(file, f"has {size - expected} bytes more than its header describes", redo)


def _check_raw_images(path: Path, manifest: dict, name: str, count: int, redo: str) -> None:
    s, c = manifest["image_size"], manifest["channels"]
    _check_npy(path / images_file(name), (count, s, s, c), np.dtype(np.uint8), redo)


def _check_jpeg_images(path: Path, manifest: dict, name: str, count: int, redo: str) -> None:
    """The JPEG encoding (:mod:`alexnet.data.jpeg`): the index file's header, shape and size, then
    every part file it names present and long enough for its images (file sizes only; each
    image's CRC-32 is checked when it is read)."""
    file, shape = payload_file(manifest, name, count)
    _check_npy(path / file, shape, np.dtype(np.int64), redo)
    problem = check_jpeg_index(path / part_dir(name), np.load(path / file, mmap_mode="r"))
    if problem:
        raise _damaged(path / file, problem, redo)


# one check per image encoding of the manifest ("raw" when absent); an encoding not here is refused
IMAGE_CHECKS = {"raw": _check_raw_images, "jpeg": _check_jpeg_images}


def _check_labels(path: Path, manifest: dict, name: str, info: dict, redo: str) -> None:
    file = path / labels_file(name)
    _check_npy(file, (info["count"],), np.dtype(np.int64), redo)
    try:
        labels = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise _damaged(file, f"cannot be read ({printable(str(e))})", redo) from None
    num_classes = len(manifest["class_ids"])
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise _damaged(file, f"holds labels from {labels.min()} to {labels.max()}, outside 0..{num_classes - 1} for {num_classes} classes", redo)
    if np.bincount(labels, minlength=num_classes).tolist() != info["per_class"]:
        raise _damaged(file, "does not match the manifest's count of images per class", redo)


def _check_stats(path: Path, manifest: dict, redo: str) -> None:
    file = path / STATS
    s, c = manifest["image_size"], manifest["channels"]
    shapes = {"mean_image": (s, s, c), "pca_eigenvalues": (c,), "pca_eigenvectors": (c, c), "pixel_covariance": (c, c)}
    if not file.is_file():
        raise _damaged(file, "is missing", redo)
    try:
        # the headers first: a damaged header must not decide how much memory loading allocates
        with zipfile.ZipFile(file) as z:
            for key, shape in shapes.items():
                if f"{key}.npy" not in z.namelist():
                    raise _damaged(file, f"lacks {key}", redo)
                with z.open(f"{key}.npy") as f:
                    found, dtype = _read_npy_header(f)[1::2]
                if found != shape or dtype.kind != "f":
                    raise _damaged(file, f"holds {key} of shape {found} and type {dtype}, expected floats of shape {shape}", redo)
        with np.load(file, allow_pickle=False) as stats:
            arrays = {key: stats[key] for key in shapes}
    except (OSError, ValueError, EOFError, KeyError, SyntaxError, zipfile.BadZipFile, zlib.error) as e:
        raise _damaged(file, f"cannot be read ({printable(str(e).splitlines()[0] if str(e) else type(e).__name__)})", redo) from None
    for key, a in arrays.items():
        if not np.isfinite(a).all():
            raise _damaged(file, f"holds {key} with NaN or infinite values", redo)


# --- files -----------------------------------------------------------------------------------


def _read_npy_header(f) -> tuple[tuple[int, int], tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    return version, tuple(shape), fortran, dtype


def npy_shape(path: Path) -> tuple[int, ...]:
    with open(path, "rb") as f:
        return _read_npy_header(f)[1]


def set_npy_rows(path: Path, rows: int) -> None:
    """Shrink an .npy file to its first ``rows`` rows in place: rewrite the header's shape (padded
    to the same length) and truncate. Running it again is harmless."""
    with open(path, "r+b") as f:
        version, shape, fortran, dtype = _read_npy_header(f)
        data_offset = f.tell()
        header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (rows, *shape[1:])})
        prefix = 10 if version == (1, 0) else 12
        room = data_offset - prefix
        if len(header) + 1 > room:
            raise ValueError(f"{path}: new header does not fit")
        f.seek(prefix)
        f.write((header + " " * (room - len(header) - 1) + "\n").encode("latin-1"))
        f.flush()
        os.fsync(f.fileno())
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    os.truncate(path, data_offset + rows * row_bytes)
