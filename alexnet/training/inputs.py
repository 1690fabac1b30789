"""The input path of training: uint8 batches from the store to augmented batches on the model's device.

The loader's threads gather uint8 batches (pinned when the model is on a GPU); each batch is
copied to the device asynchronously and cropped, reflected, lit and centred there, a whole
batch at a time (:class:`~alexnet.data.augment.TrainAugment`). On a GPU the copy runs on a
stream of its own, so the next batch travels while the current step computes (on the step's
stream it would wait for the step, and the step for it). On a CPU the same code runs in place;
the float output buffer is reused from step to step, since every step is done with its input
before the next batch is made.
"""

from __future__ import annotations

from typing import Iterator

import torch

from alexnet.data.augment import TrainAugment
from alexnet.data.loader import Loader
from alexnet.devices import available_cores
from alexnet.runtime import Runtime


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


def device_batches(loader: Loader, augment: TrainAugment, generator: torch.Generator, rt: Runtime, *,
                   copy_stream: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images float32 (B, C, crop, crop), labels int64 (B,)) on ``rt.device``; the images are
    channels_last in memory (the augmentation works in NHWC), and contiguous so when ``rt`` asks.
    ``copy_stream``: on a GPU, copy on a stream of its own (False: on the step's stream)."""
    reuse = rt.device.type == "cpu"
    out = None
    copies = torch.cuda.Stream(rt.device) if rt.device.type == "cuda" and copy_stream else None
    for images, labels in loader:
        if copies is None:
            images = images.to(rt.device, non_blocking=True)
            labels = labels.to(rt.device, non_blocking=True)
        else:
            with torch.cuda.stream(copies):  # overlaps the step that the consumer has just queued
                images = images.to(rt.device, non_blocking=True)
                labels = labels.to(rt.device, non_blocking=True)
            step = torch.cuda.current_stream(rt.device)
            step.wait_stream(copies)  # this batch's augmentation starts once it has arrived
            images.record_stream(step)  # made on the copy stream, used on the step's: not reused before
            labels.record_stream(step)
        if out is not None and out.shape[0] != images.shape[0]:
            out = None
        x = augment(images, generator, out=out)
        if reuse:
            out = x.permute(0, 2, 3, 1)  # the (B, crop, crop, C) storage behind x
        yield (x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x), labels
