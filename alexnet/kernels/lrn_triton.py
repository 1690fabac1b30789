"""LRN forward and backward as two fused Triton kernels, for CUDA tensors.

Each program handles ``BLOCK`` consecutive elements in memory order (NCHW or channels_last)
and reads the ``size`` neighbours of each along the channel axis, which the cache serves:
DRAM sees every input once and every output once. The forward writes ``b = a d^-beta`` and,
when a gradient is wanted, the normaliser ``d = k + alpha * S`` in float32; the backward
reads ``d`` back instead of summing the window again:

    dL/da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i d_i^(-beta-1)

Arithmetic is float32 whatever the storage dtype (bf16 and fp16 under autocast). The launches
are wrapped as ``torch.library`` custom ops, so ``torch.compile`` keeps them whole. With
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors, which is how the tests check them
on machines without a GPU.
"""

from __future__ import annotations

import torch

from alexnet.kernels.layout import is_channels_last, memory_format_of

try:
    import triton
    import triton.language as tl
except ImportError:  # the CUDA path then falls back to eager torch
    triton = None

BLOCK = 1024


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _channel_of(offs, channels, plane, CHANNELS_LAST: tl.constexpr):
        """The channel of each flat offset: the fastest axis (NHWC) or the second (NCHW)."""
        if CHANNELS_LAST:
            c = offs % channels
        else:
            c = (offs // plane) % channels
        return c

    @triton.jit
    def _lrn_forward_kernel(
        x_ptr, y_ptr, d_ptr, numel, channels, per_group, plane, alpha, beta, k,
        SIZE: tl.constexpr, CHANNELS_LAST: tl.constexpr, SAVE_D: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < numel
        channel_step = 1 if CHANNELS_LAST else plane
        c = _channel_of(offs, channels, plane, CHANNELS_LAST) % per_group  # within its group
        s = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):  # window [c - SIZE//2, c + (SIZE-1)//2]
            shift = j - SIZE // 2
            m = inside & (c + shift >= 0) & (c + shift < per_group)
            v = tl.load(x_ptr + offs + shift * channel_step, mask=m, other=0.0).to(tl.float32)
            s += v * v
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        d = k + alpha * s
        y = x * tl.exp2(-beta * tl.log2(d))
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=inside)
        if SAVE_D:
            tl.store(d_ptr + offs, d, mask=inside)

    @triton.jit
    def _lrn_backward_kernel(
        g_ptr, x_ptr, d_ptr, dx_ptr, numel, channels, per_group, plane, alpha, beta,
        SIZE: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < numel
        channel_step = 1 if CHANNELS_LAST else plane
        c = _channel_of(offs, channels, plane, CHANNELS_LAST) % per_group
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):  # every i whose window holds c: [c - (SIZE-1)//2, c + SIZE//2]
            shift = j - (SIZE - 1) // 2
            m = inside & (c + shift >= 0) & (c + shift < per_group)
            at = offs + shift * channel_step
            gi = tl.load(g_ptr + at, mask=m, other=0.0).to(tl.float32)
            xi = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
            di = tl.load(d_ptr + at, mask=m, other=1.0)
            acc += gi * xi * tl.exp2((-beta - 1.0) * tl.log2(di))
        g = tl.load(g_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        d = tl.load(d_ptr + offs, mask=inside, other=1.0)
        dx = g * tl.exp2(-beta * tl.log2(d)) - 2.0 * alpha * beta * x * acc
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=inside)


def _geometry(x: torch.Tensor, groups: int) -> tuple[int, int, int, bool]:
    channels = x.shape[1]
    plane = x.numel() // max(1, x.shape[0] * channels)
    return channels, channels // groups, plane, is_channels_last(x)


@torch.library.custom_op("alexnet::lrn_triton", mutates_args=())
def lrn_triton(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save_d: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, d): the output and, if ``save_d``, the float32 normaliser (else an empty tensor)."""
    x = x.contiguous(memory_format=memory_format_of(x))
    y = torch.empty_like(x)
    d = torch.empty_like(x, dtype=torch.float32) if save_d else x.new_empty(0, dtype=torch.float32)
    if x.numel():
        channels, per_group, plane, cl = _geometry(x, groups)
        _lrn_forward_kernel[(triton.cdiv(x.numel(), BLOCK),)](
            x, y, d if save_d else y, x.numel(), channels, per_group, plane, alpha, beta, k,
            SIZE=size, CHANNELS_LAST=cl, SAVE_D=save_d, BLOCK=BLOCK,
        )
    return y, d


@lrn_triton.register_fake
def _(x, size, alpha, beta, k, groups, save_d):
    fmt = memory_format_of(x)
    d = torch.empty_like(x, dtype=torch.float32, memory_format=fmt) if save_d else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x, memory_format=fmt), d


@torch.library.custom_op("alexnet::lrn_triton_backward", mutates_args=())
def lrn_triton_backward(
    grad: torch.Tensor, x: torch.Tensor, d: torch.Tensor, size: int, alpha: float, beta: float, groups: int
) -> torch.Tensor:
    fmt = memory_format_of(d)
    x = x.contiguous(memory_format=fmt)
    grad = grad.contiguous(memory_format=fmt)
    dx = torch.empty_like(x)
    if x.numel():
        channels, per_group, plane, cl = _geometry(x, groups)
        _lrn_backward_kernel[(triton.cdiv(x.numel(), BLOCK),)](
            grad, x, d, dx, x.numel(), channels, per_group, plane, alpha, beta,
            SIZE=size, CHANNELS_LAST=cl, BLOCK=BLOCK,
        )
    return dx


@lrn_triton_backward.register_fake
def _(grad, x, d, size, alpha, beta, groups):
    return torch.empty_like(x, memory_format=memory_format_of(d))


class LRNTritonFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):
        y, d = lrn_triton(x, size, alpha, beta, k, groups, ctx.needs_input_grad[0])
        ctx.save_for_backward(x, d)
        ctx.params = (size, alpha, beta, groups)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        size, alpha, beta, groups = ctx.params
        return lrn_triton_backward(grad, x, d, size, alpha, beta, groups), None, None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN with the Triton kernels (CUDA tensors, or any tensors with ``TRITON_INTERPRET=1``)."""
    if triton is None:
        raise RuntimeError("triton is not installed; use alexnet.kernels.local_response_norm")
    return LRNTritonFunction.apply(x, size, float(alpha), float(beta), float(k), groups)
