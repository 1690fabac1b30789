"""The forward pass on the bfloat16 weights the one-pass update writes (step kernel ``bf16-weights``).

Under bf16 autocast each convolution and linear layer casts its float32 weight to bfloat16 at every
forward: 4 bytes read and 2 written per weight, 61 million weights a step in the paper's network.
:class:`alexnet.speed.fused_sgd.FusedPaperSGD` (``bf16_copy=True``) writes those bfloat16 weights
in the pass that updates the float32 ones. Here, while :meth:`Bf16Weights.active` holds, each layer's
``weight`` reads as that copy, joined to the float32 parameter by :class:`UseCopy`, whose backward
hands the gradient to the parameter in float32, as the backward of autocast's cast does. The sums
are autocast's: the copy is the float32 weight rounded to the nearest bfloat16 (ties to even), as
autocast rounds it, and the gradient reaches the float32 parameter the same way.

The parameters stay the same objects under the same names (the layers' classes gain a ``weight``
property that reads ``_parameters["weight"]`` outside the step), so checkpoints, DDP, evaluation
and exports never see the copies. A copy is used only when it is current:
:meth:`FusedPaperSGD.bf16_weights_now` casts a group again when anything but the update wrote its
float32 weights (a restored checkpoint, a group stepped by the reference update), and before the
first update, when there is no copy yet, the layers read their float32 weights and autocast casts.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


class UseCopy(torch.autograd.Function):
    """``copy`` in the forward pass; in the backward, the gradient goes to ``weight`` in float32."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, copy: torch.Tensor) -> torch.Tensor:
        return copy.view_as(copy)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.to(torch.float32), None


class _CopyWeight:
    """Mixed into a layer's class: ``weight`` is the bfloat16 copy while one is set (during the step)."""

    _bf16_weight: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        weight = self._parameters["weight"]
        copy = self._bf16_weight
        kind = weight.device.type
        if copy is None or not torch.is_autocast_enabled(kind) or torch.get_autocast_dtype(kind) != torch.bfloat16:
            return weight  # no copy yet, or no bf16 autocast (float32 validation, float16 autocast)
        return UseCopy.apply(weight, copy)


_CLASSES: dict[type, type] = {}


def _with_copy_weight(cls: type) -> type:
    if issubclass(cls, _CopyWeight):
        return cls
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (_CopyWeight, cls), {"__module__": cls.__module__,
                                                                  "__qualname__": cls.__qualname__})
    return _CLASSES[cls]


class Bf16Weights:
    """The forward pass of ``model`` on the bfloat16 weights ``optimizer`` writes.

    ``optimizer`` is a FusedPaperSGD built with ``bf16_copy=True``; every convolution and linear
    layer of ``model`` whose float32 weight it updates reads its copy inside :meth:`active`.
    """

    def __init__(self, model: nn.Module, optimizer) -> None:
        if not getattr(optimizer, "bf16_copy", False):
            raise ValueError("Bf16Weights needs a FusedPaperSGD built with bf16_copy=True")
        self.optimizer = optimizer
        self.layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                       and isinstance(m._parameters.get("weight"), nn.Parameter)]
        for layer in self.layers:
            layer.__class__ = _with_copy_weight(type(layer))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The layers read their current bfloat16 copies (under bf16 autocast) until it closes."""
        copies = {id(p): copy for p, copy in self.optimizer.bf16_weights_now()}
        for layer in self.layers:
            layer._bf16_weight = copies.get(id(layer._parameters["weight"]))
        try:
            yield
        finally:
            for layer in self.layers:
                layer._bf16_weight = None


def reading_copies(copies: Bf16Weights | None) -> contextlib.AbstractContextManager:
    """``copies.active()``, or nothing when the run keeps no copies."""
    return copies.active() if copies is not None else contextlib.nullcontext()
