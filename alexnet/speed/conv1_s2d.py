"""conv1 (11x11, stride 4, 3 input channels) as a stride-1 convolution that tensor cores can run.

With 3 input channels and a stride of 4, conv1 does not fit the shapes tensor-core convolution
kernels want. Space-to-depth rewrites it exactly: pad the stride-padded input (227 for a 224 crop,
see :class:`alexnet.model.StridePad`) by one more row and column to 228, fold every 4x4xC block of
pixels into one pixel of 16C channels (57x57x48 for RGB), zero-pad the 11x11 kernel to 12x12 and
fold it the same way into a 3x3 kernel over 16C channels. A 3x3 stride-1 convolution of the folded
input with the folded kernel gives the 55x55 output: every output is the same sum of products as
before, taken in another order, plus products with the zeros added by the padding.

    out[o, y, x] = sum_{c, i, j < 11} W[o, c, i, j] X[c, 4y + i, 4x + j]
                 = sum_{a, b < 3} sum_{p, q < 4, c} W12[o, c, 4a + p, 4b + q] Xs[(p, q, c), y + a, x + b]

The fold of the weight is a few autograd-tracked reshapes of a (96, C, 11, 11) tensor, so the
gradient flows back to the parameter the model, its checkpoints and its optimizer already hold.
Folded channels are ordered (p, q, c), which is a plain reshape of channels_last (NHWC) memory.

``SpaceToDepthConv1.from_conv(conv)`` is a drop-in for the model's conv1 (an ``nn.Conv2d``
subclass sharing the same weight and bias); :func:`use_space_to_depth_conv1` swaps it into an
:class:`alexnet.model.AlexNet` and lets it do the stride padding too.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from alexnet.speed.swap import rebuilt_as


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def fold_input(x: torch.Tensor, block: int) -> torch.Tensor:
    """(N, C, H, W) with H, W multiples of ``block`` -> (N, block^2 C, H/block, W/block), channels (p, q, c).

    The result is channels_last memory when ``x`` is (the fold is then a reshape of NHWC rows
    followed by one copy), NCHW otherwise.
    """
    n, c, h, w = x.shape
    hs, ws = h // block, w // block
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        rows = x.permute(0, 2, 3, 1).reshape(n, hs, block, ws, block, c)  # (n, h, p, w, q, c)
        folded = rows.permute(0, 1, 3, 2, 4, 5).reshape(n, hs, ws, block * block * c)
        return folded.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    t = x.reshape(n, c, hs, block, ws, block)  # (n, c, h, p, w, q)
    return t.permute(0, 3, 5, 1, 2, 4).reshape(n, block * block * c, hs, ws)


def fold_weight(weight: torch.Tensor, block: int) -> torch.Tensor:
    """(O, C, K, K) -> (O, block^2 C, ceil(K/block), ceil(K/block)), zero-padded, channels (p, q, c)."""
    o, c, kh, kw = weight.shape
    ph, pw = _ceil_to(kh, block), _ceil_to(kw, block)
    w = F.pad(weight, (0, pw - kw, 0, ph - kh))
    w = w.reshape(o, c, ph // block, block, pw // block, block)  # (o, c, a, p, b, q)
    return w.permute(0, 3, 5, 1, 2, 4).reshape(o, block * block * c, ph // block, pw // block)


def space_to_depth_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: int,
    padding: int = 0,
    stride_pad: bool = False,
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (square kernel and stride, no groups) computed
    as a stride-1 convolution of the space-to-depth folded input.

    ``stride_pad``: first pad right and bottom with zeros up to a whole stride, as
    :class:`alexnet.model.StridePad` does (so 224 -> 227 for 11/4), in the same single pad.
    """
    k = weight.shape[-1]
    if padding:
        x = F.pad(x, (padding,) * 4)
    h, w = x.shape[-2:]
    if stride_pad:
        h += (-(h - k)) % stride
        w += (-(w - k)) % stride
    if h < k or w < k:
        raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than the {k}x{k} kernel")
    out_h, out_w = (h - k) // stride + 1, (w - k) // stride + 1
    kp = _ceil_to(k, stride)
    need_h, need_w = (out_h - 1) * stride + kp, (out_w - 1) * stride + kp
    # zeros on the right and bottom (or a crop of rows and columns no output reads)
    x = F.pad(x, (0, need_w - x.shape[-1], 0, need_h - x.shape[-2]))
    return F.conv2d(fold_input(x, stride), fold_weight(weight, stride), bias)


class SpaceToDepthConv1(nn.Conv2d):
    """An ``nn.Conv2d`` (square kernel, square stride > 1, no groups or dilation) computed by space-to-depth.

    Same parameters, names and results as the convolution it replaces; only the order of the sums
    differs. ``stride_pad=True`` also does :class:`alexnet.model.StridePad`'s right/bottom padding.
    """

    stride_pad: bool = False

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, *, stride_pad: bool = False) -> "SpaceToDepthConv1":
        kh, kw = conv.kernel_size
        sh, sw = conv.stride
        ph, pw = conv.padding if isinstance(conv.padding, tuple) else (None, None)
        if kh != kw or sh != sw or sh < 2 or conv.groups != 1 or conv.dilation != (1, 1) \
                or ph is None or ph != pw or conv.padding_mode != "zeros":
            raise ValueError(f"space-to-depth needs a square kernel and stride >= 2, no groups or dilation, "
                             f"zero padding; got {conv}")
        new = rebuilt_as(cls, conv)  # the same Parameter objects: optimizer and checkpoints unchanged
        new.stride_pad = stride_pad
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth_conv2d(x, self.weight, self.bias, self.stride[0], self.padding[0], self.stride_pad)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", space_to_depth=True, stride_pad={self.stride_pad}"


def use_space_to_depth_conv1(model: nn.Module) -> nn.Module:
    """Swap an AlexNet's conv1 (and its stride padding) for :class:`SpaceToDepthConv1`, in place.

    The parameters stay the same objects under the same names, so state dicts, checkpoints and an
    optimizer built before the swap are unaffected. Returns ``model``.
    """
    features = model.features
    conv = features.conv1
    if isinstance(conv, SpaceToDepthConv1):
        return model
    pad = getattr(features, "pad1", None)
    stride_pad = pad is not None and not isinstance(pad, nn.Identity)
    if stride_pad and (pad.kernel, pad.stride) != (conv.kernel_size[0], conv.stride[0]):
        raise ValueError(f"pad1 {pad.kernel}/{pad.stride} does not match conv1 {conv}")
    features.conv1 = SpaceToDepthConv1.from_conv(conv, stride_pad=stride_pad)
    if stride_pad:
        features.pad1 = nn.Identity()
    return model
