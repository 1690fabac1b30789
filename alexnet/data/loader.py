"""Batches of uint8 images from a store split, in a seeded order, sharded across ranks.

The order of an epoch is drawn from (seed, epoch) alone, so every rank of a distributed run
computes the same plan without talking to the others, and a run resumed at (epoch, step) sees
exactly the batches it would have seen. With ``drop_last`` every rank gets the same number of
full batches (what training needs); without it every image comes exactly once per epoch, and
ranks may differ by one batch.

Two orders:

* full shuffle (default, the paper's SGD): a permutation of the whole split; rank r takes
  positions r, r + W, r + 2W, ... (W = world size). Right when the store is in the page cache
  or on a disk that serves small random reads fast (NVMe: a JPEG store's images are ~30 KB).
* windowed shuffle (``shuffle_window=N``, for stores much larger than memory on disks or file
  systems that want large reads): the split is cut into blocks of ``block_images`` consecutive
  images; the blocks are permuted and dealt to the ranks in turn (rank r gets blocks r, r + W,
  ... of the permutation, so it reads only its own shard, a block at a time); the leftover images
  (fewer than a block) go to one rank as a block at a random place. Each rank's sequence is then
  shuffled within consecutive windows of N images. A batch thus mixes images from about
  N / block_images random places of the split (a class-sorted ImageNet store with N = 16,384
  and blocks of 64: about 256 places per window), and an image moves at most N positions from
  its block's place. The order depends on the world size.

Background threads gather the batches: ``np.take`` from the memory map of a raw store, or
reading and decoding the JPEGs of a JPEG store (both release the GIL); each batch's JPEG reads
are made in file order, merging close payloads into one read. ``max(prefetch_batches, workers)``
batches are in flight ahead of the consumer (read-ahead).

A damaged JPEG (:class:`alexnet.data.jpeg.CorruptImage`) is never decoded silently: with
``on_corrupt="skip"`` (the default) the image is left out of its batch (which is one image
short) and a line naming its index and file is printed to stderr, ``loader.skipped`` holds its
index and ``loader.epoch_skipped`` counts the images skipped since the last ``set_epoch`` (what
a run's metrics and an evaluation's result report); with ``on_corrupt="fail"`` the first one
stops the run with that line.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from alexnet.data.jpeg import CorruptImage
from alexnet.data.store import Split
from alexnet.devices import available_cores
from alexnet.errors import UserError

ON_CORRUPT = ("skip", "fail")
AUTO_LOADER_THREADS = 4  # gathering a raw store's rows is copying: a few threads outrun any step


def loader_threads(requested: int, encoding: str, device: torch.device, processes_per_node: int = 1) -> int:
    """The loader's threads: ``requested`` when 0 or more; for -1 (auto), 4, or for a JPEG store
    feeding a GPU every core of this process's share of the machine but one (the training loop's
    own thread): each thread decodes about 2,400 images/s, and a GPU trains several times that."""
    if requested >= 0:
        return requested
    if encoding == "jpeg" and device.type == "cuda":
        return max(1, available_cores() // max(1, processes_per_node) - 1)
    return AUTO_LOADER_THREADS


def full_batches_shard(n: int, batch_size: int, world_size: int, shuffle_window: int = 0, block_images: int = 64) -> int:
    """Images per rank per epoch in full batches (training's ``drop_last``): a full shuffle deals
    every image; a windowed one whole blocks only. A UserError, saying what to lower, when that is
    not one batch (before any run folder is made)."""
    if shuffle_window > 0:
        block = max(1, min(block_images, n // world_size))
        usable = (n // block // world_size) * block
    else:
        usable = n // world_size
    if usable < batch_size:
        if shuffle_window > 0 and n // world_size >= batch_size:
            raise UserError(f"the windowed shuffle (--shuffle-window-images {shuffle_window}) deals whole blocks of "
                            f"{block} images, {usable} of the {n} training images per replica, fewer than one batch of "
                            f"{batch_size}; lower --batch-size-per-device to {usable} or less, or shuffle fully "
                            "(--shuffle-window-images 0)")
        raise UserError(f"{n} training images are too few for {world_size} replica(s) of full batches of {batch_size}; "
                        "lower --batch-size-per-device")
    return usable // batch_size * batch_size


class Loader:
    """Iterate over (images uint8 (B, S, S, C), labels int64 (B,)) of ``split``.

    Args:
        split: a store split (``store.split("train")``), raw or JPEG.
        batch_size: images per batch on this rank.
        shuffle: a new order every epoch (else file order).
        seed: with the epoch, fixes the order.
        rank, world_size: this process's shard of every epoch.
        drop_last: leave out the last, partial batch (the same batch count on every rank).
        workers: threads that gather batches (0: in the calling thread).
        prefetch_batches: batches gathered ahead of the consumer (at least ``workers`` are).
        pin_memory: page-locked batches, for fast asynchronous copies to a GPU.
        shuffle_window: 0 (default): shuffle the whole split; N: the windowed shuffle of the
            module docstring, in windows of N images.
        block_images: consecutive images per block of the windowed shuffle.
        on_corrupt: "skip" or "fail" on a damaged JPEG (see the module docstring).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool,
        workers: int = 4,
        prefetch_batches: int = 4,
        pin_memory: bool = False,
        shuffle_window: int = 0,
        block_images: int = 64,
        on_corrupt: str = "skip",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if shuffle_window < 0 or block_images < 1:
            raise UserError(f"the shuffle window ({shuffle_window}) must be 0 or more images and a block ({block_images}) at least 1")
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.split = split
        self.images, self.labels = split.images, np.asarray(split.labels)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.workers, self.prefetch_batches = workers, max(1, prefetch_batches)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pin_memory:
            warnings.warn("pin_memory needs CUDA; batches stay in pageable memory", stacklevel=2)
        self.on_corrupt = on_corrupt
        self.skipped: set[int] = set()
        self.epoch_skipped, self._skips = 0, threading.Lock()  # the loader's threads count together
        self.epoch, self.start_step = 0, 0
        n = len(self.labels)
        self.windowed = shuffle and shuffle_window > 0
        self.shuffle_window = shuffle_window
        self.block = max(1, min(block_images, n // world_size))
        if drop_last:
            self.shard_size = full_batches_shard(n, batch_size, world_size, shuffle_window if self.windowed else 0,
                                                 block_images)
        elif self.windowed:
            full = n // self.block
            self.shard_size = len(range(rank, full, world_size)) * self.block + (n - full * self.block if rank == full % world_size else 0)
        else:
            self.shard_size = len(range(rank, n, world_size))

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Use the order of ``epoch`` and skip its first ``start_step`` batches (to resume mid-epoch)."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step {start_step} is outside the epoch's {len(self)} batches")
        self.epoch, self.start_step, self.epoch_skipped = epoch, start_step, 0

    def __len__(self) -> int:
        """Batches per epoch on this rank (including any skipped by ``start_step``)."""
        return -(-self.shard_size // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The image indices of this rank's epoch, in the order they are served."""
        n = len(self.labels)
        epoch = self.epoch if epoch is None else epoch
        if not self.shuffle:
            return np.arange(n)[self.rank :: self.world_size][: self.shard_size]
        rng = np.random.default_rng([self.seed, epoch])
        if not self.windowed:
            return rng.permutation(n)[self.rank :: self.world_size][: self.shard_size]
        k, w = self.block, self.world_size
        full = n // k
        mine = rng.permutation(full)[self.rank :: w]
        blocks = [np.arange(b * k, (b + 1) * k) for b in mine]
        tail_at = int(rng.integers(0, len(range(full % w, full, w)) + 1))  # drawn by every rank alike
        if n > full * k and self.rank == full % w:
            blocks.insert(tail_at, np.arange(full * k, n))
        order = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        window_rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        for start in range(0, len(order), self.shuffle_window):
            order[start : start + self.shuffle_window] = window_rng.permutation(order[start : start + self.shuffle_window])
        return order[: self.shard_size]

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin_memory)
        try:
            self.split.read(indices, out=images.numpy())  # straight into the (pinned) batch
        except CorruptImage as e:
            return self._without_corrupt(images, indices, e)
        return images, self._labels(indices)

    def _labels(self, indices: np.ndarray) -> torch.Tensor:
        """The batch's labels, pinned with the images (an unpinned copy would make the host wait)."""
        labels = torch.from_numpy(self.labels[indices])
        return labels.pin_memory() if self.pin_memory else labels

    def _without_corrupt(self, images: torch.Tensor, indices: np.ndarray, error: CorruptImage):
        if self.on_corrupt == "fail":
            raise UserError(f"{error.bad[0][2]}; rebuild the store with 'alexnet prepare ... --force'") from None
        keep = np.ones(len(indices), bool)
        for position, index, text in error.bad:
            keep[position] = False
            self.skipped.add(index)
            print(f"warning: skipped {text}", file=sys.stderr, flush=True)
        with self._skips:
            self.epoch_skipped += len(error.bad)
        if not keep.any():
            raise UserError(f"every image of a batch is corrupt ({error.bad[0][2]}, ...); the store is damaged: rebuild it with 'alexnet prepare ... --force'")
        images = images[torch.from_numpy(keep)]
        if self.pin_memory:
            images = images.pin_memory()
        return images, self._labels(indices[keep])

    def index_batches(self) -> Iterator[np.ndarray]:
        """The image numbers of each batch of the epoch, from ``start_step`` on; what ``iter`` gathers."""
        order = self.order()
        starts = range(self.start_step * self.batch_size, len(order), self.batch_size)
        return (order[s : s + self.batch_size] for s in starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.index_batches()
        if self.workers == 0:
            for indices in batches:
                yield self._gather(indices)
            return
        ahead = max(self.prefetch_batches, self.workers)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="alexnet-loader") as pool:
            pending = deque()
            try:
                for indices in batches:
                    pending.append(pool.submit(self._gather, indices))
                    if len(pending) >= ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # the consumer stopped early: drop what was gathered ahead
                for future in pending:
                    future.cancel()
