"""The resumable record of an ``alexnet prepare`` run, and the test of whether a rerun may use it.

``prepare-progress.npz`` in the store folder says which chunks of each split are decoded, holds
the exact integer pixel sums so far (:mod:`alexnet.data.statistics`), the files that failed and the
conversions made, and the stage reached (``decoding``, then ``filled`` once the skipped rows are
refilled). :mod:`alexnet.data.prepare` replaces it atomically after fsyncing the image files, so
a rerun after any interruption, SIGKILL included, redoes only the chunks it does not record, and
a rerun for other data or settings, or after a decoded file changed (:func:`changed_chunks`), starts
again cleanly (:func:`can_resume`, :func:`clear_store`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from alexnet.atomic import atomic_savez, fsync_dir, stale_temporaries
from alexnet.data.pool import ChunkResult
from alexnet.data.sources import Plan
from alexnet.data.store import MANIFEST, PROGRESS_FILE, REPORT, STATS, images_file, labels_file, npy_shape

PROGRESS = PROGRESS_FILE


class Progress:
    """The resumable state of one prepare run, saved as ``prepare-progress.npz``."""

    def __init__(self, fingerprint: str, channels: int, chunk_size: int, chunks: dict[str, int], size: int) -> None:
        self.fingerprint, self.channels, self.chunk_size = fingerprint, channels, chunk_size
        self.done = {name: np.zeros(n, bool) for name, n in chunks.items()}
        # per done chunk, a digest of its files' size, mtime and inode when they were decoded (0: not
        # recorded): a rerun whose files changed since then starts afresh rather than mix two versions
        self.files = {name: np.zeros(n, np.uint64) for name, n in chunks.items()}
        self.sum_image = np.zeros((size, size, channels), np.int64)
        self.sum_outer = np.zeros((channels, channels), np.int64)
        self.count = 0
        self.failures: list[tuple[str, int, str]] = []
        self.notes: Counter = Counter()
        self.state = "decoding"

    def add(self, r: ChunkResult) -> None:
        self.done[r.split][r.chunk] = True
        self.failures += [(r.split, i, reason) for i, reason in r.failures]
        self.notes.update(r.notes)
        if r.sum_image is not None:
            self.sum_image += r.sum_image
            self.sum_outer += r.sum_outer
            self.count += r.count

    def save(self, path: Path) -> None:
        arrays = {f"done_{k}": v for k, v in self.done.items()}
        arrays.update({f"files_{k}": v for k, v in self.files.items()})
        meta = dict(fingerprint=self.fingerprint, channels=self.channels, chunk_size=self.chunk_size, count=self.count, state=self.state, failures=self.failures, notes=dict(self.notes))
        atomic_savez(path, meta=np.array(json.dumps(meta)), sum_image=self.sum_image, sum_outer=self.sum_outer, **arrays)

    @classmethod
    def load(cls, path: Path) -> "Progress | None":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                done = {k[len("done_") :]: z[k] for k in z.files if k.startswith("done_")}
                p = cls(meta["fingerprint"], meta["channels"], meta["chunk_size"], {k: len(v) for k, v in done.items()}, z["sum_image"].shape[0])
                p.done, p.sum_image, p.sum_outer = done, z["sum_image"], z["sum_outer"]
                p.files.update({k: z[f"files_{k}"] for k in done if f"files_{k}" in z.files})  # older records: none
        except Exception:  # unreadable or from another version: start afresh
            return None
        p.count, p.state, p.notes = meta["count"], meta["state"], Counter(meta["notes"])
        p.failures = [tuple(f) for f in meta["failures"]]
        return p


def files_digest(paths: Iterable[str]) -> int:
    """A nonzero 64-bit digest of the files' size, modification time and inode, as they are now."""
    h = hashlib.blake2b(digest_size=8)
    for path in paths:
        try:
            st = os.stat(path)
            h.update(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}\0".encode())
        except OSError as e:
            h.update(f"{e.errno}\0".encode())
    return int.from_bytes(h.digest(), "little") | 1


def changed_chunks(progress: Progress, plan: Plan) -> int:
    """How many done chunks hold files that changed since they were decoded (one stat per file)."""
    changed = 0
    for name, split in plan.splits.items():
        if not split.paths:
            continue  # IDX: the file's size is in the fingerprint
        recorded = progress.files.get(name)
        for k in np.flatnonzero(progress.done[name]):
            if recorded is not None and recorded[k]:
                start = int(k) * progress.chunk_size
                changed += files_digest(split.paths[start : start + progress.chunk_size]) != int(recorded[k])
    return changed


def _store_files(splits: Iterable[str]) -> list[str]:
    names = [MANIFEST, STATS, REPORT, PROGRESS]
    for s in splits:
        names += [images_file(s), labels_file(s)]
    return names


def clear_store(out: Path) -> None:
    """Remove a previous store's files (manifest first, so no step leaves a complete-looking store)."""
    for name in _store_files(["train", "val"]):
        try:
            os.unlink(out / name)
        except FileNotFoundError:
            pass
        if name == MANIFEST:
            fsync_dir(out)
    for name in _store_files(["train", "val"]):
        for stale in stale_temporaries(out / name):  # left by an interrupted atomic write
            stale.unlink()


def can_resume(progress: Progress | None, plan: Plan, out: Path, size: int, fingerprint: str, chunk_size: int, channels: str) -> bool:
    """Whether ``progress`` records a run of this very source and these settings whose files are still there."""
    if progress is None or progress.fingerprint != fingerprint or progress.chunk_size != chunk_size:
        return False
    if channels != "auto" and int(channels) != progress.channels:
        return False
    for name, split in plan.splits.items():
        expected = (len(split), size, size, progress.channels)
        try:
            shape = npy_shape(out / images_file(name))
        except (OSError, ValueError):
            return False
        if shape != expected and not (progress.state == "filled" and shape[1:] == expected[1:]):
            return False
    return set(progress.done) == set(plan.splits)
