"""The input path of training: uint8 batches from the store to augmented batches on the model's device.

The loader's threads gather uint8 batches (pinned when the model is on a GPU); each batch is
copied to the device asynchronously and cropped, reflected, lit and centred there, a whole
batch at a time (:class:`~alexnet.data.augment.TrainAugment`). On a CPU the same code runs in
place; the float output buffer is reused from step to step, since every step is done with its
input before the next batch is made.
"""

from __future__ import annotations

from typing import Iterator

import torch

from alexnet.data.augment import TrainAugment
from alexnet.data.loader import Loader
from alexnet.runtime import Runtime


def device_batches(loader: Loader, augment: TrainAugment, generator: torch.Generator,
                   rt: Runtime) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images float32 (B, C, crop, crop), labels int64 (B,)) on ``rt.device``; the images are
    channels_last in memory (the augmentation works in NHWC), and contiguous so when ``rt`` asks."""
    reuse = rt.device.type == "cpu"
    out = None
    for images, labels in loader:
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        if out is not None and out.shape[0] != images.shape[0]:
            out = None
        x = augment(images, generator, out=out)
        if reuse:
            out = x.permute(0, 2, 3, 1)  # the (B, crop, crop, C) storage behind x
        yield (x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x), labels
