"""The Loader: every image once per epoch, disjoint shards, an order fixed by (seed, epoch), resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data import Loader, Split
from helpers import make_tree

N, S = 103, 4


@pytest.fixture
def split():
    # image i is filled with i % 256 in channel 0 and i // 256 in channel 1; its label is i
    i = np.arange(N)
    images = np.zeros((N, S, S, 2), np.uint8)
    images[..., 0] = (i % 256)[:, None, None]
    images[..., 1] = (i // 256)[:, None, None]
    return Split("train", images, i.astype(np.int64))


def served(loader, epoch=0, start_step=0):
    loader.set_epoch(epoch, start_step)
    ids = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        from_pixels = images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()
        assert torch.equal(from_pixels, labels), "images and labels travel together"
        ids.append(labels.tolist())
    return ids


@pytest.mark.parametrize("workers", [0, 3])
def test_every_image_once_per_epoch(split, workers):
    loader = Loader(split, 10, shuffle=True, seed=1, drop_last=False, workers=workers, prefetch_batches=2)
    batches = served(loader)
    assert len(batches) == len(loader) == 11 and [len(b) for b in batches] == [10] * 10 + [3]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(N)) and flat != list(range(N))


def test_order_depends_on_seed_and_epoch_only(split):
    a = Loader(split, 10, shuffle=True, seed=1, drop_last=False, workers=2)
    b = Loader(split, 10, shuffle=True, seed=1, drop_last=False, workers=0)
    assert served(a, epoch=3) == served(b, epoch=3)
    assert served(a, epoch=3) != served(a, epoch=4)
    assert served(a, epoch=3) != served(Loader(split, 10, shuffle=True, seed=2, drop_last=False), epoch=3)
    assert [i for batch in served(Loader(split, 10, shuffle=False, seed=0, drop_last=False)) for i in batch] == list(range(N))


@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint(split, drop_last):
    world = 3
    loaders = [Loader(split, 8, shuffle=True, seed=5, rank=r, world_size=world, drop_last=drop_last, workers=1) for r in range(world)]
    shards = [[i for batch in served(loader, epoch=2) for i in batch] for loader in loaders]
    seen = [i for shard in shards for i in shard]
    assert len(seen) == len(set(seen)), "no image on two ranks"
    if drop_last:
        assert len({len(loader) for loader in loaders}) == 1 and len(loaders[0]) == (N // world) // 8
        assert all(len(b) == 8 for loader in loaders for b in served(loader, epoch=2))
    else:
        assert sorted(seen) == list(range(N))
    # every rank derives its shard from the same permutation
    perm = np.random.default_rng([5, 2]).permutation(N)
    for r, shard in enumerate(shards):
        assert shard == perm[r::world][: len(shard)].tolist()


def test_resume_with_start_step(split):
    loader = Loader(split, 10, shuffle=True, seed=7, drop_last=True, workers=2)
    full = served(loader, epoch=1)
    assert len(full) == len(loader) == 10
    assert served(loader, epoch=1, start_step=4) == full[4:]
    assert served(loader, epoch=1, start_step=10) == []
    with pytest.raises(ValueError):
        loader.set_epoch(1, start_step=11)


def test_stopping_early_does_not_hang(split):
    loader = Loader(split, 4, shuffle=True, seed=0, drop_last=True, workers=2, prefetch_batches=2)
    for k, _ in enumerate(loader):
        if k == 2:
            break
    assert len(served(loader)) == len(loader)


def test_pin_memory_without_cuda_warns(split):
    if torch.cuda.is_available():
        loader = Loader(split, 8, shuffle=False, seed=0, drop_last=False, pin_memory=True)
        assert next(iter(loader))[0].is_pinned()
    else:
        with pytest.warns(UserWarning, match="pin_memory"):
            loader = Loader(split, 8, shuffle=False, seed=0, drop_last=False, pin_memory=True)
        assert len(served(loader)) == len(loader)


def test_store_loader_augment_end_to_end(tmp_path):
    from alexnet.data import TrainAugment, open_store, prepare_store
    src = make_tree(tmp_path / "src", per_class=5)
    prepare_store(src, tmp_path / "store", image_size=16, workers=0, progress_bar=False, log=lambda m: None)
    store = open_store(tmp_path / "store")
    loader = Loader(store.split("train"), 4, shuffle=True, seed=0, drop_last=True, workers=2)
    augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=12)
    generator = torch.Generator().manual_seed(0)
    batches = [augment(images, generator) for images, _ in loader]
    assert len(batches) == 2 and batches[0].shape == (4, 3, 12, 12) and torch.isfinite(batches[0]).all()
