"""Memory layouts the LRN kernels handle: contiguous (NCHW) and channels_last (NHWC)."""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True for channels_last (NHWC) or channels_last_3d tensors that are not also contiguous."""
    if x.is_contiguous():
        return False
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d)


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    if not is_channels_last(x):
        return torch.contiguous_format
    return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
