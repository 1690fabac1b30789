"""The training input path (``alexnet.data.augment.device_batches``): uint8 batches from the store to augmented
batches on the device, as the augmentation alone would make them; on a GPU, the copies on their own
stream give the very batches that copies on the step's stream give, however busy the step keeps it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data import open_store
from alexnet.data.augment import device_batches
from alexnet.data.loader import Loader


@pytest.fixture(scope="module")
def store(shared_store):
    return open_store(shared_store(per_class=12, size=40))


def _augment(store, device):
    from alexnet.data.augment import TrainAugment

    return TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=28).to(device)


def _batches(store, device, **kw):
    loader = Loader(store.split("train"), 8, shuffle=True, seed=3, drop_last=True, workers=2,
                    pin_memory=device.type == "cuda")
    generator = torch.Generator(device).manual_seed(5)
    return device_batches(loader, _augment(store, device), generator, device, False, **kw)


def test_batches_are_the_augmentation_of_the_loaders_batches(store):
    """Each batch is TrainAugment of the loader's uint8 batch with the same random stream, labels unchanged."""
    cpu = torch.device("cpu")
    loader = Loader(store.split("train"), 8, shuffle=True, seed=3, drop_last=True, workers=0)
    generator = torch.Generator().manual_seed(5)
    augment = _augment(store, cpu)
    expected = [(augment(images, generator).clone(), labels) for images, labels in loader]
    got = [(x.clone(), y) for x, y in _batches(store, cpu)]
    assert len(got) == len(expected) == len(store.split("train")) // 8
    for (x, y), (ex, ey) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
        assert np.isin(y.numpy(), np.arange(store.num_classes)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_copies_on_their_own_stream_give_the_same_batches_under_a_busy_step(store):
    device = torch.device("cuda")
    reference = [(x.cpu(), y.cpu()) for x, y in _batches(store, device, copy_stream=False)]
    busy = torch.randn(4096, 4096, device=device)
    got = []
    for x, y in _batches(store, device, copy_stream=True):
        for _ in range(4):  # a step that keeps its stream busy, so that it lags behind the next copies
            busy = torch.tanh(busy @ busy / 64)
        got.append((x.clone(), y.clone()))  # on the step's stream, after the busy kernels; no host sync
    torch.cuda.synchronize(device)
    assert len(got) == len(reference)
    for (x, y), (ex, ey) in zip(got, reference):
        assert torch.equal(x.cpu(), ex) and torch.equal(y.cpu(), ey)
