"""``alexnet prepare``: decode a source data set once into a store (section 2).

Every image is rescaled so that its shorter side is S and centre-cropped to S x S
(:mod:`alexnet.data.images`), then written either as uint8 into memory-mapped ``.npy`` files
(``raw``, :mod:`alexnet.data.store`) or as one JPEG per image in part files (``jpeg``,
:mod:`alexnet.data.jpeg`). ``encoding="auto"`` picks raw when the raw store would take less than
``AUTO_RAW_BYTES`` (4 GiB: the built-in data, small folders) and JPEG otherwise (ImageNet: about
240 GB raw, about 40 GB as JPEG). Training then reads stored pixels or stored JPEGs, never sources.

How the work is done:

* The splits are cut into chunks of consecutive images. A process pool (all cores) decodes
  chunks (:mod:`alexnet.data.pool`); each worker writes its rows straight into the
  memory-mapped output (raw) or its chunk's part file (JPEG; the sums are then of the pixels as
  they decode from the JPEGs, what training sees) and returns only failures, conversion notes
  and integer sums of the pixels, so memory does not grow with the data set.
* The mean image and the pixel covariance come from those sums, accumulated exactly in int64
  (the float64 covariance is formed once at the end), so they do not depend on the order in
  which chunks finish or on interruptions (:mod:`alexnet.data.statistics`).
* A progress record (``prepare-progress.npz``: which chunks are done, the sums, the failures;
  :mod:`alexnet.data.progress`) is replaced atomically every ``checkpoint_seconds`` (10), after
  the image files are fsynced. A rerun after any interruption, SIGKILL included, redoes only
  the chunks not recorded; a rerun with a different source listing or size, or whose decoded files
  changed since (their size, modification time or inode, one stat per file), starts again cleanly.
* A file that cannot be used is skipped and listed with its reason; the run never stops on
  one file. Its row is filled by the last good image of the split before the file is
  truncated, so row order is file order except at those rows (in a JPEG store only the index
  rows move).
* ``manifest.json`` is written last, atomically, with the digest of the store's content
  (:func:`alexnet.data.store.content_digest`); until then :func:`open_store` refuses the folder.
* ``force`` rebuilds a complete store beside it (``.OUT.rebuild``, where an interrupted rebuild
  resumes) and swaps the new one in whole (:func:`alexnet.atomic.replace_folder`): until then
  OUT is the old store, intact. It is refused while a run reads the store (its shared lock).
* OUT is a new or empty folder (or a store, rebuilt with ``force``), never a folder that SOURCE's
  layout reads (SOURCE itself, a class folder, train/ or val/), whose store files the next
  prepare of SOURCE would list as images; a folder beside train/ and val/ or beside IDX files, or
  a hidden one, is fine. ``image_size`` is at most ``MAX_IMAGE_SIZE`` (the statistics' memory
  grows with its square).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from alexnet.atomic import (atomic_save_npy, atomic_savez, atomic_write_json, can_replace_folder, fsync_dir, replace_folder,
                            sweep_dead_temporaries)
from alexnet.data import jpeg
from alexnet.data.images import DEFAULT_MAX_PIXELS, MAX_IMAGE_SIZE, is_grayscale_file
from alexnet.data.pool import ChunkResult, Task, clear_caches, run_tasks
from alexnet.display import on_terminal
from alexnet.data.progress import PROGRESS, Progress, can_resume, changed_chunks, clear_store, files_digest
from alexnet.data.sources import Plan, read_source
from alexnet.data.statistics import pixel_statistics
from alexnet.data.store import (FORMAT, FORMAT_VERSION, MANIFEST, REPORT, STATS, Store, content_digest, foreign_entries,
                                images_file, labels_file, open_store, set_npy_rows)
from alexnet.display import printable
from alexnet.errors import UserError
from alexnet.runlock import holds_folder

FILE_CHUNK = 64  # images per task when decoding files
IDX_CHUNK = 1024  # rows per task for IDX sources (tiny images)
JPEG_FILE_CHUNK = 256  # images per task, and per part file, when files are encoded as JPEG
AUTO_RAW_BYTES = 4 * 2**30  # encoding "auto": raw below this many bytes of raw images, JPEG above
ENCODINGS = ("auto", "raw", "jpeg")


@dataclass
class PrepareResult:
    store: Store
    skipped: list[dict]
    resumed_chunks: int
    summary: str
    notes: list[str] = field(default_factory=list)

# --- preparing -------------------------------------------------------------------------------


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _choose_channels(plan: Plan, channels: str) -> int:
    """1 when every image of the set is grayscale, else 3. Only the headers are read, and the
    scan stops at the first colour image; palette images count as colour."""
    if channels in ("1", "3"):
        return int(channels)
    if plan.grayscale is not None:
        return 1 if plan.grayscale else 3
    readable = 0
    for split in plan.splits.values():
        for path in split.paths:
            gray = is_grayscale_file(path)
            if gray is False:
                return 3
            readable += gray is True
    return 1 if readable else 3


def _tasks(plan: Plan, out: Path, size: int, channels: int, max_pixels: int, chunk_size: int, done: dict[str, np.ndarray],
           encoding: str = "raw", quality: int = jpeg.QUALITY) -> list[Task]:
    tasks = []
    for name, split in plan.splits.items():
        for chunk, start in enumerate(range(0, len(split), chunk_size)):
            if done[name][chunk]:
                continue
            stop = min(start + chunk_size, len(split))
            target = out / jpeg.part_dir(name) / jpeg.part_name(chunk) if encoding == "jpeg" else out / images_file(name)
            task = Task(name, chunk, start, str(target), size, channels, max_pixels, name == "train", encoding=encoding, quality=quality)
            if split.idx_file:
                task.idx_file, task.rows = split.idx_file, split.rows[start:stop]
            else:
                task.paths = split.paths[start:stop]
            tasks.append(task)
    return tasks


def _refuse_out_in_source(source: Path, out: Path) -> None:
    """Refuse an OUT that is SOURCE or lies in a folder that SOURCE's layout reads: the store's own
    files would be listed as images (a class folder of their own, or skipped files) by the next
    prepare of SOURCE. A folder beside train/ and val/ or beside IDX files, or a hidden one (a name
    starting with "."), is not read: allowed."""
    if not source.is_dir():
        return  # read_source says what is wrong with it
    src, dst = os.path.realpath(source), os.path.realpath(out)
    if not (dst == src or dst.startswith(src.rstrip(os.sep) + os.sep)):
        return
    if dst != src:
        from alexnet.data import idx

        if any(part.startswith(".") for part in Path(os.path.relpath(dst, src)).parts):
            return  # a hidden folder is never listed
        if idx.find_idx_pair(Path(src), "train"):
            return
        if (Path(src) / "train").is_dir():
            read = [os.path.realpath(Path(src) / name) for name in ("train", "val")]
            if not any(dst == r or dst.startswith(r + os.sep) for r in read):
                return
    where = "is the source folder itself" if dst == src else f"lies inside the source folder {printable(str(source))}"
    raise UserError(f"OUT {printable(str(out))} {where}, where the store's files would be read as "
                    "images by the next prepare of it; choose an OUT outside the source (or beside its train/ and val/)")


def _reserve_disk(path: Path) -> None:
    """Allocate the file's blocks now: a full disk is then one clear error here, not a worker
    killed by SIGBUS when it writes into a memory-mapped hole."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "rb+") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                size = os.fstat(f.fileno()).st_size
                shown = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"
                raise UserError(f"not enough free disk space in {path.parent} for {path.name} ({shown}); "
                                "free some or choose another OUT") from None
            # file systems without fallocate: the space is taken as the rows are written


def choose_encoding(encoding: str, plan: Plan, size: int, channels: str) -> str:
    """``auto``: raw when the raw images would take under AUTO_RAW_BYTES, else JPEG."""
    if encoding != "auto":
        return encoding
    c = 1 if channels == "1" else 3
    raw_bytes = sum(len(split) for split in plan.splits.values()) * size * size * c
    return "raw" if raw_bytes < AUTO_RAW_BYTES else "jpeg"


def _clear_jpeg(out: Path) -> None:
    """Remove a JPEG store's parts and indexes (after clear_store has removed the manifest)."""
    for name in ("train", "val"):
        try:
            os.unlink(out / jpeg.index_file(name))
        except FileNotFoundError:
            pass
        shutil.rmtree(out / jpeg.part_dir(name), ignore_errors=True)


def _warn_if_short_of_disk(out: Path, raw_bytes: int, log: Callable[[str], None]) -> None:
    """A JPEG store's size is known only once written; at 256x256 photographs take about an eighth
    of their raw bytes (the README's figures), so say so up front when less than a sixth is free."""
    need, free = raw_bytes / 6, shutil.disk_usage(out).free
    if free < need:
        log(f"note: {out} has {free / 1e9:.1f} GB free; a JPEG store of these images may need about {need / 1e9:.1f} GB "
            "(a full disk stops the run, which then resumes when rerun)")


def _can_resume_jpeg(progress: Progress | None, plan: Plan, out: Path, fingerprint: str, chunk_size: int, channels: str) -> bool:
    if progress is None or progress.fingerprint != fingerprint or progress.chunk_size != chunk_size:
        return False
    if channels != "auto" and int(channels) != progress.channels:
        return False
    if set(progress.done) != set(plan.splits) or not all((out / jpeg.part_dir(name)).is_dir() for name in plan.splits):
        return False
    return all((out / jpeg.part_dir(name) / jpeg.part_name(k)).is_file() for name, d in progress.done.items() for k in np.flatnonzero(d))


@holds_folder("out", "alexnet prepare", advice="wait for it or choose another OUT folder")
def prepare_store(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    image_size: int = 256,
    val_fraction: float | None = None,
    seed: int = 0,
    force: bool = False,
    workers: int | None = None,
    channels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_size: int | None = None,
    progress_bar: bool = True,
    checkpoint_seconds: float = 10.0,
    log: Callable[[str], None] = _say,
    encoding: str = "auto",
    quality: int | None = None,
    val_labels: str | os.PathLike | None = None,
    val_labels_base: int | None = None,
) -> PrepareResult:
    """Decode ``source`` into a store at ``out`` (see the module docstring); returns the opened store.

    ``encoding``: ``raw``, ``jpeg`` (at ``quality``, 1-100; None: ``jpeg.QUALITY``) or ``auto`` (see the
    module docstring). A ``quality`` given with ``encoding="raw"`` is refused: it would do nothing.
    ``val_labels`` / ``val_labels_base``: the file labelling a flat ``val/`` folder and the number of
    its first class (:mod:`alexnet.data.val_labels`); recorded in the manifest's ``val_labels``.
    """
    _check_settings(image_size, max_pixels, seed, encoding, quality, channels)
    quality_given = quality is not None
    quality = jpeg.QUALITY if quality is None else int(quality)
    channels = str(channels)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    out = Path(out).expanduser()
    _check_out(Path(source).expanduser(), out, force)
    plan = read_source(source, val_fraction=val_fraction, seed=seed, val_labels=val_labels, val_labels_base=val_labels_base,
                       image_size=image_size)
    out.mkdir(parents=True, exist_ok=True)
    sweep_dead_temporaries(out.parent, out.name)  # an old store that a killed rebuild left beside it
    work = _rebuild_folder(out, log) if (out / MANIFEST).exists() else out
    size = image_size
    chosen = choose_encoding(encoding, plan, size, channels)
    if chosen == "raw" and quality_given:  # only auto gets here: an explicit raw with a quality is refused above
        log("note: --jpeg-quality is ignored: the store is raw (chosen by --encoding auto for a small set)")
    encoding = chosen
    if encoding == "jpeg":
        jpeg._simplejpeg()  # a missing decoder is one clear line now, not a failure in every worker
    chunk_size = chunk_size or (IDX_CHUNK if plan.kind == "idx" else JPEG_FILE_CHUNK if encoding == "jpeg" else FILE_CHUNK)
    fingerprint = f"{plan.fingerprint(size)}:{max_pixels}" + (f":jpeg{quality}" if encoding == "jpeg" else "")
    progress, resumed = _progress_to_continue(plan, work, size, channels, encoding, fingerprint, chunk_size, log)
    c = progress.channels

    if progress.state == "decoding":
        _decode_all(plan, work, size, c, max_pixels, chunk_size, workers, progress, progress_bar, checkpoint_seconds, encoding, quality)
        missing = sum(int((~d).sum()) for d in progress.done.values())
        if missing:
            raise RuntimeError(f"{missing} chunks were not decoded")
    store, skipped = _finish(plan, work, size, c, progress, encoding, quality)
    if work != out:  # the rebuilt store replaces the old one whole
        replace_folder(work, out)
        store = open_store(out)
    summary = _summary(store, skipped, out)
    return PrepareResult(store, skipped, resumed, summary, list(plan.notes))


def _check_settings(image_size: int, max_pixels: int, seed: int, encoding: str, quality: int | None, channels) -> None:
    """Refuse settings out of range, in the words of the flags that give them."""
    if image_size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}")
    if image_size > MAX_IMAGE_SIZE:
        raise UserError(f"--image-size {image_size} is over the limit of {MAX_IMAGE_SIZE} pixels: the store would take "
                        f"{image_size * image_size * 3 / 2**20:,.0f} MiB per image and its exact statistics "
                        f"{image_size * image_size * 3 * 8 / 2**20:,.0f} MiB of memory in each decoding process (the paper stores 256)")
    if max_pixels < 1:
        raise UserError(f"--max-image-pixels must be a positive number of pixels, got {max_pixels}")
    if seed < 0:
        raise UserError(f"--seed must be 0 or more, got {seed}")
    if encoding not in ENCODINGS:
        raise UserError(f"--encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    if encoding == "raw" and quality is not None:
        raise UserError(f"--jpeg-quality {quality} applies to JPEG stores only and --encoding raw stores raw pixels; "
                        "drop --jpeg-quality, or use --encoding jpeg")
    if quality is not None and not 1 <= int(quality) <= 100:
        raise UserError(f"--jpeg-quality must be between 1 and 100, got {quality}")
    if str(channels) not in ("auto", "1", "3"):
        raise UserError(f"--channels must be auto, 1 or 3, got {channels}")


def _check_out(source: Path, out: Path, force: bool) -> None:
    """Refuse an OUT that is a file, a complete store (without ``force``), a folder of other files,
    or a folder that ``source``'s layout reads."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the store")
    if (out / MANIFEST).exists() and not force:
        raise UserError(f"{out} already holds a prepared store; add --force to rebuild it, or choose another folder")
    foreign = foreign_entries(out) if out.is_dir() else []
    if foreign:  # --force rebuilds a store, never writes one among other files
        raise UserError(f"{out} holds other files than a store ({', '.join(map(printable, foreign[:3]))}"
                        f"{', ...' if len(foreign) > 3 else ''}); prepare into a new or empty folder")
    _refuse_out_in_source(source, out)


def _rebuild_folder(out: Path, log: Callable[[str], None]) -> Path:
    """Where ``force`` builds the store that replaces the complete one at ``out``: beside it, in
    ``.NAME.rebuild`` (resumed there after an interruption), so that ``out`` stays a whole store
    until the new one is and replaces it in one step; where no rename can replace ``out``
    (:func:`alexnet.atomic.can_replace_folder`), ``out`` itself, emptied first."""
    if not can_replace_folder(out):
        log(f"note: {out} cannot be swapped for a rebuilt store (a mount point, or this process's current "
            "folder): the old store is deleted first")
        clear_store(out)
        _clear_jpeg(out)
        return out
    work = out.parent / f".{out.name}.rebuild"
    if work.exists() and not work.is_dir():
        raise UserError(f"{work} is a file, where --force builds the new store; move it away and rerun")
    work.mkdir(exist_ok=True)
    return work


def _progress_to_continue(plan: Plan, out: Path, size: int, channels: str, encoding: str, fingerprint: str,
                          chunk_size: int, log: Callable[[str], None]) -> tuple[Progress, int]:
    """The progress record of an interrupted prepare of the same data and settings and the chunks it
    has done; otherwise a new record over an emptied folder (a raw store's arrays allocated) and 0."""
    chunks = {name: -(-len(split) // chunk_size) for name, split in plan.splits.items()}
    progress = Progress.load(out / PROGRESS)
    if encoding == "jpeg":
        resumable = _can_resume_jpeg(progress, plan, out, fingerprint, chunk_size, channels)
    else:
        resumable = can_resume(progress, plan, out, size, fingerprint, chunk_size, channels)
    changed = changed_chunks(progress, plan) if resumable and progress.state == "decoding" else 0
    if changed:
        log(f"starting {out} afresh: files of {changed} chunks changed since the interrupted run decoded them")
        resumable = False
    if resumable:
        resumed = int(sum(d.sum() for d in progress.done.values()))
        log(f"resuming an interrupted prepare of {out}: {resumed} of {sum(chunks.values())} chunks already done")
        return progress, resumed
    leftovers = any((out / f).exists() for s in ("train", "val") for f in (images_file(s), jpeg.part_dir(s)))
    if not changed and (progress is not None or leftovers):
        log(f"starting {out} afresh (the previous, unfinished run was for other data or settings)")
    clear_store(out)
    _clear_jpeg(out)
    c = _choose_channels(plan, channels)
    progress = Progress(fingerprint, c, chunk_size, chunks, size)
    if encoding == "jpeg":
        _warn_if_short_of_disk(out, sum(len(split) for split in plan.splits.values()) * size * size * c, log)
    for name, split in plan.splits.items():
        if encoding == "jpeg":
            (out / jpeg.part_dir(name)).mkdir()
            continue
        np.lib.format.open_memmap(out / images_file(name), mode="w+", dtype=np.uint8, shape=(len(split), size, size, c))
        _reserve_disk(out / images_file(name))
    progress.save(out / PROGRESS)
    return progress, 0


def _decode_all(plan, out, size, c, max_pixels, chunk_size, workers, progress: Progress, progress_bar, checkpoint_seconds,
                encoding: str = "raw", quality: int = jpeg.QUALITY) -> None:
    tasks = _tasks(plan, out, size, c, max_pixels, chunk_size, progress.done, encoding, quality)
    total = sum(len(s) for s in plan.splits.values())
    files = [] if encoding == "jpeg" else [open(out / images_file(name), "rb+") for name in plan.splits]
    last_save = time.monotonic()

    def checkpoint() -> None:
        for f in files:
            os.fsync(f.fileno())  # the workers' rows reach the disk before the record says so
        if encoding == "jpeg":
            for name in plan.splits:  # each part was fsynced by its worker; now its rename
                fsync_dir(out / jpeg.part_dir(name))
        progress.save(out / PROGRESS)

    bar = None

    def on_result(result: ChunkResult) -> None:
        nonlocal last_save, bar
        if bar is None:  # made once the workers exist: tqdm starts a thread, and they are forked
            bar = tqdm(total=total, initial=total - remaining, unit="img", desc="prepare", file=sys.stderr, disable=not (progress_bar and on_terminal()), dynamic_ncols=True)
        progress.add(result)
        split = plan.splits[result.split]
        if split.paths:
            progress.files[result.split][result.chunk] = files_digest(split.paths[result.start : result.start + chunk_size])
        bar.update(min(chunk_size, len(plan.splits[result.split]) - result.start))
        if time.monotonic() - last_save >= checkpoint_seconds:
            checkpoint()
            last_save = time.monotonic()

    remaining = sum(len(t) for t in tasks)
    try:
        run_tasks(tasks, workers, max_pixels, on_result)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UserError(f"the disk holding {out} is full; free some space (or choose another OUT) and rerun the same command to resume") from None
        raise
    finally:
        if bar is not None:
            bar.close()
        checkpoint()
        for f in files:
            f.close()
        clear_caches()


def _finish(plan: Plan, out: Path, size: int, c: int, progress: Progress, encoding: str = "raw", quality: int = jpeg.QUALITY) -> tuple[Store, list[dict]]:
    """Check the classes, fill the skipped rows, write labels, statistics, report, then the manifest."""
    bad, skipped = _skipped(plan, out, progress)
    moves = _moves(plan, out, bad)
    if progress.state == "decoding" and encoding == "raw":
        for name, (n_good, holes_in, sources) in moves.items():
            if len(holes_in):
                images = np.load(out / images_file(name), mmap_mode="r+")
                for k in range(0, len(holes_in), 256):  # a bounded number of rows in memory at a time
                    images[holes_in[k : k + 256]] = images[sources[k : k + 256]]
                images.flush()
                del images
        progress.state = "filled"  # rows below n_good are final; the sources above are never written again
        progress.save(out / PROGRESS)
    splits_info = {name: _write_split(plan, name, out, progress, moves[name], encoding) for name in plan.splits}
    if "val" in splits_info:
        unmeasured = [printable(plan.class_names[i]) for i, n in enumerate(splits_info["val"]["per_class"]) if n == 0]
        if unmeasured:
            plan.notes.append(f"{len(unmeasured)} of {len(plan.class_ids)} classes have no validation image "
                              f"({', '.join(unmeasured[:5])}{', ...' if len(unmeasured) > 5 else ''}): "
                              "the validation error says nothing about them")

    mean_image, eigenvalues, eigenvectors, covariance = pixel_statistics(progress.sum_image, progress.sum_outer, progress.count)
    atomic_savez(out / STATS, mean_image=mean_image, pca_eigenvalues=eigenvalues, pca_eigenvectors=eigenvectors, pixel_covariance=covariance)
    manifest = _manifest(plan, size, c, encoding, quality, splits_info, len(skipped))
    manifest["content_digest"] = content_digest(out, manifest)  # what a run's resume compares
    atomic_write_json(out / MANIFEST, manifest)  # last: from here on the store is complete
    os.unlink(out / PROGRESS)
    return open_store(out), skipped


def _skipped(plan: Plan, out: Path, progress: Progress) -> tuple[dict[str, dict[int, str]], list[dict]]:
    """The rows that could not be decoded ({split: {row: reason}}) and every file skipped with its
    reason, the latter written into the store's report with the files ignored and the conversions."""
    bad = {name: {} for name in plan.splits}
    for split, i, reason in progress.failures:
        bad[split][i] = reason
    skipped = list(plan.skipped)
    for name, split in plan.splits.items():
        for i, reason in sorted(bad[name].items()):
            item = split.paths[i] if split.paths else f"{os.path.basename(split.idx_file)}[{split.rows[i]}]"
            skipped.append({"split": name, "path": _relative(item, plan.source), "reason": reason})
    report = {"source": str(plan.source), "skipped": skipped, "ignored": plan.ignored,
              "conversions": dict(sorted(progress.notes.items()))}
    atomic_write_json(out / REPORT, report)
    return bad, skipped


def _moves(plan: Plan, out: Path, bad: dict[str, dict[int, str]]) -> dict[str, tuple]:
    """Per split (rows kept, the skipped rows below that count, the kept rows above it that fill
    them), once every class has a usable training image and the validation split one image."""
    keep = {}
    for name, split in plan.splits.items():
        mask = np.ones(len(split), bool)
        mask[list(bad[name])] = False
        keep[name] = mask
    train_counts = np.bincount(plan.splits["train"].labels[keep["train"]], minlength=len(plan.class_ids))
    if train_counts.sum() == 0:
        raise UserError(f"none of the images in {plan.source} could be read; the reasons are in {out / REPORT}")
    empty = [plan.class_ids[i] for i in np.flatnonzero(train_counts == 0)]
    if empty:
        raise UserError(
            f"class {empty[0]!r}{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''} has no usable training image: "
            f"every file was skipped (reasons in {out / REPORT}); fix or remove those files, or remove the class folder"
        )
    if "val" in keep and not keep["val"].any():  # training validates every epoch: no store without val images
        raise UserError(f"none of the validation images could be read (reasons in {out / REPORT}); fix them, or add readable ones")
    moves = {}
    for name in plan.splits:
        holes = np.flatnonzero(~keep[name])
        n_good = int(keep[name].sum())
        holes_in = holes[holes < n_good]
        sources = np.flatnonzero(keep[name][n_good:]) + n_good
        moves[name] = (n_good, holes_in, sources)
    return moves


def _write_split(plan: Plan, name: str, out: Path, progress: Progress, move: tuple, encoding: str) -> dict:
    """Cut split ``name`` to its kept rows (a JPEG store's index, a raw store's array) and write its
    labels in the same order; returns its count and images per class."""
    split = plan.splits[name]
    n_good, holes_in, sources = move
    if encoding == "jpeg":
        folder = out / jpeg.part_dir(name)
        step = progress.chunk_size
        try:
            index = np.concatenate([jpeg.part_index(folder, k, min(step, len(split) - k * step)) for k in range(len(progress.done[name]))])
        except (OSError, ValueError) as e:
            raise UserError(f"a part of the unfinished store {out} is missing or damaged ({e}); rerun with --force to start afresh") from None
        index[holes_in] = index[sources]
        atomic_save_npy(out / jpeg.index_file(name), index[:n_good])
    else:
        set_npy_rows(out / images_file(name), n_good)
    labels = split.labels.copy()
    labels[holes_in] = split.labels[sources]
    labels = labels[:n_good]
    atomic_save_npy(out / labels_file(name), labels)
    return {"count": n_good, "per_class": np.bincount(labels, minlength=len(plan.class_ids)).tolist()}


def _manifest(plan: Plan, size: int, c: int, encoding: str, quality: int, splits_info: dict, skipped: int) -> dict:
    """What ``manifest.json`` says of the store: its format, source, images, splits and notes."""
    from alexnet import __version__

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": True,
        "created_by": f"alexnet {__version__}",
        "source": str(plan.source),
        "source_kind": plan.kind,
        "image_size": size,
        "channels": c,
        "encoding": encoding,
        "classes": plan.class_names,
        "class_ids": plan.class_ids,
        "splits": splits_info,
        "skipped": skipped,
        "preprocessing": (
            f"shorter side rescaled to {size} (Lanczos), central {size}x{size} kept; "
            "transparency composited on white; 16-bit scaled to 8-bit; EXIF orientation applied"
        ),
        "notes": plan.notes,
        "val_labels": plan.val_labels,  # the file the validation labels came from (ILSVRC layout), else None
    }
    if encoding == "jpeg":
        manifest["jpeg_quality"] = quality
        manifest["preprocessing"] += f"; stored as JPEG, quality {quality}, " + ("grayscale" if c == 1 else "4:2:0 chroma")
    return manifest


def _relative(path: str, source: Path) -> str:
    try:
        return str(Path(path).relative_to(source))
    except ValueError:
        return path


def _summary(store: Store, skipped: list[dict], out: Path) -> str:
    counts = ", ".join(f"{len(store.split(s))} {s}" for s in store.splits)
    s = store.image_size
    stored = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    size = f"{stored / 2**30:.2f} GiB" if stored >= 2**30 else f"{stored / 2**20:.1f} MiB"
    line = f"prepared {out}: {counts} images of {store.num_classes} classes, {s}x{s}x{store.channels}, {store.encoding} ({size})"
    if not skipped:
        return line + "; no file skipped"
    kinds = Counter(item["reason"].split(":")[0].split(" (")[0] for item in skipped)
    listed = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return f"{line}; skipped {len(skipped)} files ({listed}), listed with reasons in {out / REPORT}"
