"""Decoding chunks of a split in a process pool, for :mod:`alexnet.data.prepare`.

Each worker writes its rows straight into the memory-mapped output file and returns only the
failures, conversion notes and integer pixel sums of its chunk. A file that cannot be used is a
failure of that file (:class:`~alexnet.data.images.BadImage`); any other exception is a bug in
our code and stops the run as :class:`DecodingBug`, naming the file, so that it is never
reported as every file being corrupt. A worker that dies (a decoder
crash, the out-of-memory killer) does not stop the run: the chunks that were in flight are
decoded again alone, then file by file, each in a fresh process, and a file that still kills
its process is reported as skipped.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from alexnet.data import idx, jpeg
from alexnet.data.images import BadImage, decode_array, decode_file
from alexnet.data.statistics import pixel_sums
from alexnet.display import printable


class DecodingBug(RuntimeError):
    """An exception in our decoding code (not caused by the file): prepare stops, reported as an internal error."""


@dataclass
class Task:
    """One chunk: items [start, start + n) of a split."""

    split: str
    chunk: int
    start: int
    out_file: str
    size: int
    channels: int
    max_pixels: int
    with_stats: bool
    paths: list[str] | None = None
    idx_file: str | None = None
    rows: np.ndarray | None = None
    encoding: str = "raw"  # "jpeg": out_file is the chunk's part file (alexnet.data.jpeg)
    quality: int = 90

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.rows)

    def one(self, i: int) -> "Task":
        """The task for item i alone."""
        fields = dict(self.__dict__, start=self.start + i)
        if self.paths is not None:
            fields["paths"] = [self.paths[i]]
        else:
            fields["rows"] = self.rows[i : i + 1]
        return Task(**fields)


@dataclass
class ChunkResult:
    split: str
    chunk: int
    start: int
    failures: list[tuple[int, str]]  # (item index within the split, reason)
    notes: Counter
    sum_image: np.ndarray | None  # int64 (S, S, C) over the good images
    sum_outer: np.ndarray | None  # int64 (C, C): sum of x x^T over their pixels
    count: int

    def merge(self, other: "ChunkResult") -> None:
        self.failures += other.failures
        self.notes.update(other.notes)
        self.count += other.count
        if other.sum_image is not None:
            self.sum_image = other.sum_image if self.sum_image is None else self.sum_image + other.sum_image
            self.sum_outer = other.sum_outer if self.sum_outer is None else self.sum_outer + other.sum_outer


# --- workers ---------------------------------------------------------------------------------


def _worker_init(max_pixels: int, parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    Image.MAX_IMAGE_PIXELS = max_pixels
    if sys.platform.startswith("linux"):
        try:  # die with the parent, even when it is SIGKILLed
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)


@lru_cache(maxsize=4)
def _output(path: str, inode: int) -> np.memmap:
    return np.load(path, mmap_mode="r+")


@lru_cache(maxsize=2)
def _idx_images(path: str, size: int, mtime: int) -> np.ndarray:
    return idx.read_idx(path)


def decoded_images(task: Task, notes: Counter, failures: list) -> Iterator[tuple[int, np.ndarray | None]]:
    """(i, pixels) for every image of the chunk, in order; pixels None for a file that cannot be
    used, whose reason is appended to ``failures``. A failure of alexnet's own code is no bad
    file: it stops the run as a :class:`DecodingBug` naming the file."""
    size, c = task.size, task.channels
    if task.idx_file is not None:
        st = os.stat(task.idx_file)
        idx_images = _idx_images(task.idx_file, st.st_size, st.st_mtime_ns)
    for i in range(len(task)):
        try:
            if task.paths is not None:
                pixels, image_notes = decode_file(task.paths[i], size, c, task.max_pixels)
                notes.update(image_notes)
            else:
                pixels = decode_array(idx_images[task.rows[i]], size, c)
        except BadImage as e:
            failures.append((task.start + i, str(e)))
            yield i, None
            continue
        except Exception as e:  # our own code failed, not the file: stop and say so
            item = task.paths[i] if task.paths is not None else f"row {task.rows[i]} of {task.idx_file}"
            raise DecodingBug(f"decoding {printable(str(item))} failed in alexnet's own code, not because of the file "
                              f"({type(e).__name__}: {printable(str(e))})") from e
        yield i, pixels


def decode_chunk(task: Task) -> ChunkResult:
    """Decode one chunk into its rows of the output, or for a JPEG store encode each image into the
    chunk's part file (:mod:`alexnet.data.jpeg`), whose pixel sums are then those of the images as
    they decode from the JPEGs (what training will see); runs in a worker process."""
    if task.encoding == "jpeg":
        rows, payloads = np.zeros((len(task), task.size, task.size, task.channels), np.uint8), []
    else:  # the inode: a rebuilt file is a new map
        rows, payloads = _output(task.out_file, os.stat(task.out_file).st_ino)[task.start : task.start + len(task)], None
    failures, notes = [], Counter()
    good = np.ones(len(task), bool)
    for i, pixels in decoded_images(task, notes, failures):
        good[i] = pixels is not None
        if payloads is None:
            rows[i] = 0 if pixels is None else pixels
            continue
        payloads.append(b"" if pixels is None else jpeg.encode(pixels, task.quality))
        if pixels is not None:
            jpeg.decode_into(payloads[-1], rows[i])
    if payloads is not None:
        jpeg.write_part(Path(task.out_file), payloads)
    result = ChunkResult(task.split, task.chunk, task.start, failures, notes, None, None, int(good.sum()))
    if task.with_stats:
        result.sum_image, result.sum_outer = pixel_sums(rows[good])
    return result


# --- the pool --------------------------------------------------------------------------------


def _pool(workers: int, max_pixels: int) -> ProcessPoolExecutor:
    # fork starts workers without re-importing torch; the pool is created before this run
    # starts any thread of its own
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(max_pixels, os.getpid()))


def _isolated(task: Task, max_pixels: int) -> ChunkResult:
    """Decode a chunk that took a worker down: alone, then file by file, each in a fresh process."""
    try:
        with _pool(1, max_pixels) as pool:
            return pool.submit(decode_chunk, task).result()
    except BrokenProcessPool:
        pass
    merged = ChunkResult(task.split, task.chunk, task.start, [], Counter(), None, None, 0)
    for i in range(len(task)):
        try:
            with _pool(1, max_pixels) as pool:
                merged.merge(pool.submit(decode_chunk, task.one(i)).result())
        except BrokenProcessPool:
            merged.failures.append((task.start + i, "the decoder crashed on this file (its process died)"))
    return merged


def run_tasks(tasks: Iterable[Task], workers: int, max_pixels: int, on_result: Callable[[ChunkResult], None]) -> None:
    """Decode every task, calling ``on_result`` in the parent as each finishes."""
    queue = deque(tasks)
    if workers == 0:
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
        try:
            for task in queue:
                on_result(decode_chunk(task))
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
        return
    workers = min(workers, len(queue))  # --workers 500 for 3 chunks starts 3 processes, not 500
    while queue:
        suspects = []
        with _pool(workers, max_pixels) as pool:
            running = {}
            try:
                while (queue or running) and not suspects:
                    while queue and len(running) < 2 * workers:
                        task = queue.popleft()
                        running[pool.submit(decode_chunk, task)] = task
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        task = running.pop(future)
                        try:
                            result = future.result()
                        except BrokenProcessPool:  # a worker died (a decoder crash, the OOM killer)
                            suspects.append(task)
                        else:
                            on_result(result)
                suspects += running.values()  # the pool is broken: nothing else still running returns
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        for task in sorted(suspects, key=lambda t: (t.split, t.chunk)):
            on_result(_isolated(task, max_pixels))


def clear_caches() -> None:
    """Forget the open output maps and IDX arrays (of a finished run, in this process)."""
    _output.cache_clear()
    _idx_images.cache_clear()
