"""The towers' grouped convolutions (conv2, conv4, conv5) computed three ways, for speed alone.

The paper's two GPUs are grouped convolutions in :class:`alexnet.model.AlexNet` (``groups=towers``):
each output map of tower t sees only tower t's input maps. cuDNN runs ``groups=2`` as its own
kernels, which are not always its fastest; the same numbers come out of dense convolutions:

    grouped          ``F.conv2d(x, W, b, groups=g)``, as the model is written;
    halves           the input maps split into g parts, one dense convolution per part with that
                     tower's (O/g, C/g, k, k) slice of the weight and of the bias, the outputs
                     concatenated on the channel dim (channels_last when the input is);
    block_diagonal   one dense convolution with an (O, C, k, k) weight that holds tower t's kernels
                     in block (t, t) and zeros elsewhere: g times the multiply-adds, one kernel.

The block-diagonal weight is assembled at every forward, autograd-tracked, from the (O, C/g, k, k)
parameter (:func:`block_diagonal_weight`): its zeros are not parameters, so no gradient, weight
decay or momentum ever reaches them, and the gradient of the parameter is the diagonal blocks of
the dense weight's gradient. Each way computes the same sums; only their order and the kernels
that run differ (``benchmarks/bench_levers.py`` times them at the paper's shapes).

``GroupedConv2d.from_conv(conv, impl)`` is a drop-in for one of the model's convolutions (an
``nn.Conv2d`` subclass sharing the same weight and bias); :func:`use_grouped_conv` swaps the chosen
way into an AlexNet's grouped layers, including a conv2 that :func:`alexnet.speed.fused_blocks.fuse_blocks`
has fused with its tail (:class:`FusedGroupedConvBlock`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping

import torch
from torch import nn
import torch.nn.functional as F

from alexnet.kernels.layout import is_channels_last
from alexnet.speed.swap import rebuilt_as

GROUPED_CONV_IMPLS = ("grouped", "halves", "block_diagonal")
GROUPED_LAYERS = ("conv2", "conv4", "conv5")  # the layers of AlexNet that are per tower


def check_impl(impl: str) -> str:
    if impl not in GROUPED_CONV_IMPLS:
        raise ValueError(f"unknown grouped convolution {impl!r}; choose one of {', '.join(GROUPED_CONV_IMPLS)}")
    return impl


def block_diagonal_weight(weight: torch.Tensor, groups: int, channels_last: bool = False) -> torch.Tensor:
    """(O, C/g, k, k) grouped weight -> (O, C, k, k) dense weight, group t's kernels in block (t, t), zeros elsewhere.

    Autograd-tracked: the gradient of ``weight`` is the diagonal blocks of the dense weight's
    gradient. ``channels_last``: the result is laid out as channels_last (O, k, k, C) memory, so
    that a convolution of a channels_last input need not convert it.
    """
    if groups == 1:
        return weight
    o, cg, kh, kw = weight.shape
    if o % groups:
        raise ValueError(f"{o} output channels do not split into {groups} groups")
    og = o // groups
    w = weight.reshape(groups, og, cg, kh, kw)
    # diag_embed writes the last dim on the diagonal of two new dims (dim1, dim2) and zeros off it
    if channels_last:
        dense = torch.diag_embed(w.permute(1, 3, 4, 2, 0), dim1=0, dim2=4)  # (g, og, kh, kw, g, cg)
        return dense.reshape(o, kh, kw, groups * cg).permute(0, 3, 1, 2)
    dense = torch.diag_embed(w.permute(1, 2, 3, 4, 0), dim1=0, dim2=2)  # (g, og, g, cg, kh, kw)
    return dense.reshape(o, groups * cg, kh, kw)


def grouped_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    impl: str = "grouped",
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` computed the way ``impl`` names."""
    check_impl(impl)
    if impl == "grouped" or groups == 1:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    if impl == "block_diagonal":
        dense = block_diagonal_weight(weight, groups, channels_last=x.dim() == 4 and is_channels_last(x))
        return F.conv2d(x, dense, bias, stride, padding, dilation)
    c, o = x.shape[1], weight.shape[0]
    if c % groups or o % groups:
        raise ValueError(f"{c} input and {o} output channels do not split into {groups} groups")
    # split (not narrow): the backward of a split is one concatenation of the parts' gradients
    xs = x.split(c // groups, dim=1)
    ws = weight.split(o // groups, dim=0)
    bs = bias.split(o // groups) if bias is not None else (None,) * groups
    out = torch.cat([F.conv2d(xi, wi, bi, stride, padding, dilation) for xi, wi, bi in zip(xs, ws, bs)], dim=1)
    if x.dim() == 4 and is_channels_last(x) and not out.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def _check_conv(conv: nn.Conv2d) -> None:
    if conv.padding_mode != "zeros":
        raise ValueError(f"a grouped convolution by another way needs zero padding; got {conv}")


class GroupedConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose grouped convolution is computed as ``grouped_impl`` says (see the module).

    Same parameters, names and results as the convolution it replaces; only the kernels differ.
    """

    grouped_impl: str = "grouped"
    honours_grouped_impl = True  # a class attribute: a copy of this layer's __dict__ into another class drops it

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, impl: str) -> "GroupedConv2d":
        check_impl(impl)
        _check_conv(conv)
        new = rebuilt_as(cls, conv)
        new.grouped_impl = impl
        return new

    def dense_weight(self) -> torch.Tensor:
        """The (O, C, k, k) block-diagonal weight this layer's convolution amounts to (autograd-tracked)."""
        return block_diagonal_weight(self.weight, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grouped_conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                              self.grouped_impl)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", grouped_impl={self.grouped_impl}"


@functools.cache
def _fused_grouped_class() -> type:
    """:class:`FusedGroupedConvBlock`, built on first use: fused_blocks imports triton (about a second)."""
    from alexnet.speed.fused_blocks import FusedConvBlock

    class FusedGroupedConvBlock(FusedConvBlock):
        """A :class:`~alexnet.speed.fused_blocks.FusedConvBlock` (conv + fused bias, ReLU, LRN,
        pool) whose convolution is computed as ``grouped_impl`` says."""

        grouped_impl: str = "grouped"
        honours_grouped_impl = True

        @classmethod
        def from_block(cls, block: FusedConvBlock, impl: str) -> "FusedGroupedConvBlock":
            check_impl(impl)
            _check_conv(block)
            if block.space_to_depth:
                raise ValueError("a space-to-depth convolution has no groups to compute another way")
            new = rebuilt_as(cls, block)
            new.grouped_impl = impl
            return new

        def conv_without_bias(self, x: torch.Tensor) -> torch.Tensor:
            return grouped_conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups,
                                  self.grouped_impl)

        def extra_repr(self) -> str:
            return super().extra_repr() + f", grouped_impl={self.grouped_impl}"

    FusedGroupedConvBlock.__module__ = __name__
    FusedGroupedConvBlock.__qualname__ = "FusedGroupedConvBlock"
    return FusedGroupedConvBlock


def __getattr__(name: str):
    # FusedGroupedConvBlock is a module attribute (importable, picklable) made on first access
    if name == "FusedGroupedConvBlock":
        return _fused_grouped_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def grouped_impl_of(layer: nn.Module) -> str:
    """The way ``layer`` computes its convolution: ``grouped_impl`` for the classes of this module,
    ``"grouped"`` for any other (a plain ``FusedConvBlock`` built from a swapped layer included)."""
    return layer.grouped_impl if getattr(type(layer), "honours_grouped_impl", False) else "grouped"


def _is_fused_block(layer: nn.Module) -> bool:
    fused_blocks = sys.modules.get("alexnet.speed.fused_blocks")  # no fused block exists before its import
    return fused_blocks is not None and isinstance(layer, fused_blocks.FusedConvBlock)


def use_grouped_conv(model: nn.Module, impl: str | Mapping[str, str]) -> nn.Module:
    """Compute an AlexNet's grouped convolutions (conv2, conv4, conv5 with groups > 1) as ``impl``, in place.

    ``impl`` is one of :data:`GROUPED_CONV_IMPLS` for all three layers, or a mapping from layer
    name to one of them (``{"conv2": "halves", "conv4": "block_diagonal"}``; layers it does not
    name are left as they are). Each such layer becomes a :class:`GroupedConv2d`, or, where
    :func:`alexnet.speed.fused_blocks.fuse_blocks` already fused it with its tail, a
    :class:`FusedGroupedConvBlock` that keeps the fused tail. The parameters stay the same objects
    under the same names, so state dicts, checkpoints and an optimizer built before the swap are
    unaffected. Layers that already compute their ``impl`` are left as they are: a model with one
    tower, or ``"grouped"`` on an unswapped model, is unchanged. Calling it again with another
    ``impl`` switches. Raises ValueError for an unknown way or layer name.

    Order with ``fuse_blocks``: call this one *after* it. ``fuse_blocks`` rebuilds conv2 as a plain
    ``FusedConvBlock``, which computes cuDNN's ``groups=g`` whatever was swapped in before
    (:func:`grouped_impl_of` then says ``"grouped"``); a later call of this function puts ``impl``
    back. Returns ``model``.
    """
    if isinstance(impl, Mapping):
        unknown = sorted(set(impl) - set(GROUPED_LAYERS))
        if unknown:
            raise ValueError(f"no grouped layer {unknown[0]!r}; the grouped layers are {', '.join(GROUPED_LAYERS)}")
        wanted = {name: check_impl(way) for name, way in impl.items()}
    else:
        wanted = dict.fromkeys(GROUPED_LAYERS, check_impl(impl))
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Module):
        raise ValueError(f"{type(model).__name__} has no AlexNet features (conv1..conv5) to swap convolutions in")
    for name, way in wanted.items():
        layer = getattr(features, name, None)
        if not isinstance(layer, nn.Conv2d) or layer.groups == 1 or grouped_impl_of(layer) == way:
            continue
        if _is_fused_block(layer):
            setattr(features, name, _fused_grouped_class().from_block(layer, way))
        else:
            setattr(features, name, GroupedConv2d.from_conv(layer, way))
    return model
