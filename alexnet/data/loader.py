"""Batches of uint8 images from a store split, in a seeded order, sharded across ranks.

The order of an epoch is a permutation drawn from (seed, epoch) alone, so every rank of a
distributed run computes the same one without talking to the others, and a run resumed at
(epoch, step) sees exactly the batches it would have seen. Rank r takes positions r, r + W,
r + 2W, ... of the permutation (W = world size): the shards are disjoint and, together, the
whole split. With ``drop_last`` every rank gets the same number of full batches (what
training needs); without it every image comes exactly once per epoch, and ranks may differ by
one batch.

Background threads gather the batches from the memory-mapped images with ``np.take``, which
releases the GIL, so the threads overlap with each other and with the training step; each
image is one contiguous block of the file, so reading a batch in epoch order costs no more
than reading it sorted. At most ``prefetch_batches`` batches wait in memory.
"""

from __future__ import annotations

import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import torch

from alexnet.data.store import Split


class Loader:
    """Iterate over (images uint8 (B, S, S, C), labels int64 (B,)) of ``split``.

    Args:
        split: a store split (``store.split("train")``).
        batch_size: images per batch on this rank.
        shuffle: a new permutation every epoch (else file order).
        seed: with the epoch, fixes the permutation.
        rank, world_size: this process's shard of every epoch.
        drop_last: leave out the last, partial batch (the same batch count on every rank).
        workers: threads that gather batches (0: in the calling thread).
        prefetch_batches: batches gathered ahead of the consumer.
        pin_memory: page-locked batches, for fast asynchronous copies to a GPU.
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
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.images, self.labels = split.images, np.asarray(split.labels)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.workers, self.prefetch_batches = workers, max(1, prefetch_batches)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        if pin_memory and not self.pin_memory:
            warnings.warn("pin_memory needs CUDA; batches stay in pageable memory", stacklevel=2)
        self.epoch, self.start_step = 0, 0
        n = len(self.labels)
        if drop_last:
            self.shard_size = (n // world_size) // batch_size * batch_size
        else:
            self.shard_size = len(range(rank, n, world_size))
        if self.shard_size == 0 and drop_last:
            raise ValueError(f"{n} images are too few for {world_size} rank(s) of full batches of {batch_size}")

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Use the order of ``epoch`` and skip its first ``start_step`` batches (to resume mid-epoch)."""
        if not 0 <= start_step <= len(self):
            raise ValueError(f"start_step {start_step} is outside the epoch's {len(self)} batches")
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        """Batches per epoch on this rank (including any skipped by ``start_step``)."""
        return -(-self.shard_size // self.batch_size)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The image indices of this rank's epoch, in the order they are served."""
        n = len(self.labels)
        epoch = self.epoch if epoch is None else epoch
        perm = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        return perm[self.rank :: self.world_size][: self.shard_size]

    def _gather(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=self.pin_memory)
        np.take(self.images, indices, axis=0, out=images.numpy())  # one copy, straight from the memmap
        return images, torch.from_numpy(self.labels[indices])

    def index_batches(self) -> Iterator[np.ndarray]:
        """The image numbers of each batch of the epoch, from ``start_step`` on; what ``iter``
        gathers. For a consumer that reads the images itself: :meth:`TrainAugment.from_store`
        cuts the training crops straight out of the memory map, on the CPU in one pass."""
        order = self.order()
        starts = range(self.start_step * self.batch_size, len(order), self.batch_size)
        return (order[s : s + self.batch_size] for s in starts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.index_batches()
        if self.workers == 0:
            for indices in batches:
                yield self._gather(indices)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="alexnet-loader") as pool:
            pending = deque()
            try:
                for indices in batches:
                    pending.append(pool.submit(self._gather, indices))
                    if len(pending) >= self.prefetch_batches:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # the consumer stopped early: drop what was gathered ahead
                for future in pending:
                    future.cancel()
