"""Swapping a layer for a faster one without changing what the model holds."""

from __future__ import annotations

from torch import nn


def rebuilt_as(cls: type, layer: nn.Module) -> nn.Module:
    """An instance of ``cls`` (a subclass of ``layer``'s class) with ``layer``'s settings and its very
    Parameter and buffer objects: state dicts, checkpoints and an optimizer built before the swap
    are unaffected. ``cls.__init__`` is not run."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.__dict__.update({k: v for k, v in layer.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")})
    new._parameters = dict(layer._parameters)
    new._buffers = dict(layer._buffers)
    new._modules = dict(layer._modules)
    return new
