"""The prepared data store: uint8 images memory-mapped from disk, labels and the training statistics.

A store is a folder::

    manifest.json         written last and atomically; without it the store is incomplete
    train_images.npy      uint8 (N, S, S, C), opened memory-mapped and read-only
    train_labels.npy      int64 (N,)
    val_images.npy        (when there is a validation split)
    val_labels.npy
    stats.npz             mean_image float32 (S, S, C): the per-pixel mean of the training set
                          (section 2); pca_eigenvalues (C,) and pca_eigenvectors (C, C),
                          columns, largest first: the covariance of pixel values in 0-255 units
                          over every pixel of the training set (section 4.1); pixel_covariance
    report.json           files skipped (path and reason) and conversions made

``alexnet prepare`` writes it (:mod:`alexnet.data.prepare`); :func:`open_store` reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.errors import UserError

FORMAT = "alexnet-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STATS = "stats.npz"
REPORT = "report.json"


def images_file(split: str) -> str:
    return f"{split}_images.npy"


def labels_file(split: str) -> str:
    return f"{split}_labels.npy"


@dataclass(frozen=True)
class Split:
    """One split of a store: ``images`` (read-only memmap, uint8 (N, S, S, C)) and ``labels`` (int64 (N,))."""

    name: str
    images: np.memmap
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


class Store:
    """A prepared data set; open one with :func:`open_store`."""

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        self.classes: list[str] = list(manifest["classes"])
        self.class_ids: list[str] = list(manifest["class_ids"])
        self.num_classes = len(self.classes)
        self.image_size: int = int(manifest["image_size"])
        self.channels: int = int(manifest["channels"])
        self.splits: tuple[str, ...] = tuple(manifest["splits"])
        with np.load(path / STATS) as stats:
            self.mean_image = stats["mean_image"].astype(np.float32)
            self.pca_eigenvalues = stats["pca_eigenvalues"].astype(np.float32)
            self.pca_eigenvectors = stats["pca_eigenvectors"].astype(np.float32)
            self.pixel_covariance = stats["pixel_covariance"].astype(np.float64)
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise UserError(f"store {self.path} has no {name!r} split (it has {', '.join(self.splits)})")
        if name not in self._splits:
            images = np.load(self.path / images_file(name), mmap_mode="r")
            labels = np.load(self.path / labels_file(name))
            self._splits[name] = Split(name, images, labels)
        return self._splits[name]

    def __repr__(self) -> str:
        counts = ", ".join(f"{s} {self.manifest['splits'][s]['count']}" for s in self.splits)
        return f"Store({str(self.path)!r}: {self.num_classes} classes, {self.image_size}x{self.image_size}x{self.channels}, {counts})"


def open_store(path: str | os.PathLike) -> Store:
    """Open a store written by ``alexnet prepare``; a missing or incomplete one is a UserError."""
    path = Path(path).expanduser()
    redo = f"run 'alexnet prepare SOURCE {path}' (add --force to rebuild it)"
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        what = "does not exist" if not path.exists() else "is not a complete prepared store (no manifest.json)"
        raise UserError(f"{path} {what}; {redo}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{manifest_path} is damaged; {redo}") from None
    if manifest.get("format") != FORMAT or manifest.get("complete") is not True:
        raise UserError(f"{path} is not a complete prepared store; {redo}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path} has store format {manifest.get('format_version')}, this version reads {FORMAT_VERSION}; {redo}")
    s, c = manifest["image_size"], manifest["channels"]
    for name, info in manifest["splits"].items():
        for file, shape in ((images_file(name), (info["count"], s, s, c)), (labels_file(name), (info["count"],))):
            try:
                found = npy_shape(path / file)
            except (OSError, ValueError):
                raise UserError(f"{path / file} is missing or damaged; {redo}") from None
            if found != shape:
                raise UserError(f"{path / file} has shape {found}, the manifest says {shape}; {redo}")
    if not (path / STATS).is_file():
        raise UserError(f"{path / STATS} is missing; {redo}")
    return Store(path, manifest)


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
