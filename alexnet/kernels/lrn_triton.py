"""LRN forward and backward as two fused Triton kernels, for CUDA tensors.

In NCHW a program handles ``BLOCK`` positions of one channel plane (the channel is one number
per program); in channels_last a tile of pixels by all channels (the channel is the tile's
column). Either way no element needs an integer division to find its channel: 64-bit
divisions, emulated on the GPU, made an earlier one-dimensional version ten times slower than
memory. Each element reads the ``size`` neighbours along the channel axis, which the cache
serves: DRAM sees every input once and every output once. The forward writes ``b = a d^-beta`` and,
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

BLOCK = 256  # NCHW: positions of one channel plane per program (conv1: 3025 = 12 blocks, conv2: 729 = 3)
PIXEL_ELEMENTS = 2048  # NHWC: pixels x (channels rounded up to a power of 2) per program


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _store_forward(x_ptr, y_ptr, d_ptr, at, inside, s, alpha, beta, k, SAVE_D: tl.constexpr):
        """y = x d^-beta with d = k + alpha s, from the window sums s (and d, if the backward needs it)."""
        x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
        d = k + alpha * s
        tl.store(y_ptr + at, (x * tl.exp2(-beta * tl.log2(d))).to(y_ptr.dtype.element_ty), mask=inside)
        if SAVE_D:
            tl.store(d_ptr + at, d, mask=inside)

    @triton.jit
    def _neighbour_term(g_ptr, x_ptr, d_ptr, at, m, beta):
        """g_i a_i d_i^(-beta-1) of the neighbours at ``at`` (0 where ``m`` is off)."""
        gi = tl.load(g_ptr + at, mask=m, other=0.0).to(tl.float32)
        xi = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
        di = tl.load(d_ptr + at, mask=m, other=1.0)
        return gi * xi * tl.exp2((-beta - 1.0) * tl.log2(di))

    @triton.jit
    def _store_backward(g_ptr, x_ptr, d_ptr, dx_ptr, at, inside, acc, alpha, beta):
        """dL/da_j = g_j d_j^-beta - 2 alpha beta a_j acc_j, acc_j the sum of the neighbours' terms."""
        g = tl.load(g_ptr + at, mask=inside, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
        d = tl.load(d_ptr + at, mask=inside, other=1.0)
        dx = g * tl.exp2(-beta * tl.log2(d)) - 2.0 * alpha * beta * x * acc
        tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _lrn_planar_forward(
        x_ptr, y_ptr, d_ptr, plane, channels, per_group, alpha, beta, k,
        SIZE: tl.constexpr, SAVE_D: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """NCHW: program (row, block) handles BLOCK positions of the plane row = n * channels + c."""
        row = tl.program_id(0)
        c = row % channels % per_group  # the channel within its group: one scalar per program
        pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = pos < plane
        at = row.to(tl.int64) * plane + pos
        s = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):  # window [c - SIZE//2, c + (SIZE-1)//2]
            shift = j - SIZE // 2
            neighbour = c + shift + tl.zeros([BLOCK], dtype=tl.int32)  # the scalar, as a block
            m = inside & (neighbour >= 0) & (neighbour < per_group)
            v = tl.load(x_ptr + at + shift * plane, mask=m, other=0.0).to(tl.float32)
            s += v * v
        _store_forward(x_ptr, y_ptr, d_ptr, at, inside, s, alpha, beta, k, SAVE_D)

    @triton.jit
    def _lrn_planar_backward(
        g_ptr, x_ptr, d_ptr, dx_ptr, plane, channels, per_group, alpha, beta,
        SIZE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        c = row % channels % per_group
        pos = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = pos < plane
        at = row.to(tl.int64) * plane + pos
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in tl.static_range(SIZE):  # every i whose window holds c: [c - (SIZE-1)//2, c + SIZE//2]
            shift = j - (SIZE - 1) // 2
            neighbour = c + shift + tl.zeros([BLOCK], dtype=tl.int32)
            m = inside & (neighbour >= 0) & (neighbour < per_group)
            acc += _neighbour_term(g_ptr, x_ptr, d_ptr, at + shift * plane, m, beta)
        _store_backward(g_ptr, x_ptr, d_ptr, dx_ptr, at, inside, acc, alpha, beta)

    @triton.jit
    def _lrn_interleaved_forward(
        x_ptr, y_ptr, d_ptr, pixels, alpha, beta, k,
        CHANNELS: tl.constexpr, PER_GROUP: tl.constexpr, SIZE: tl.constexpr, SAVE_D: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """NHWC: a tile of BLOCK_P pixels x all channels; the window runs along the tile's rows."""
        pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_C)
        c = ch % PER_GROUP  # by a constant: no division at run time
        inside = (pix[:, None] < pixels) & (ch[None, :] < CHANNELS)
        at = pix[:, None] * CHANNELS + ch[None, :]
        s = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for j in tl.static_range(SIZE):
            shift = j - SIZE // 2
            ok = (c + shift >= 0) & (c + shift < PER_GROUP)
            v = tl.load(x_ptr + at + shift, mask=inside & ok[None, :], other=0.0).to(tl.float32)
            s += v * v
        _store_forward(x_ptr, y_ptr, d_ptr, at, inside, s, alpha, beta, k, SAVE_D)

    @triton.jit
    def _lrn_interleaved_backward(
        g_ptr, x_ptr, d_ptr, dx_ptr, pixels, alpha, beta,
        CHANNELS: tl.constexpr, PER_GROUP: tl.constexpr, SIZE: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        pix = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_C)
        c = ch % PER_GROUP
        inside = (pix[:, None] < pixels) & (ch[None, :] < CHANNELS)
        at = pix[:, None] * CHANNELS + ch[None, :]
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for j in tl.static_range(SIZE):
            shift = j - (SIZE - 1) // 2
            ok = (c + shift >= 0) & (c + shift < PER_GROUP)
            m = inside & ok[None, :]
            acc += _neighbour_term(g_ptr, x_ptr, d_ptr, at + shift, m, beta)
        _store_backward(g_ptr, x_ptr, d_ptr, dx_ptr, at, inside, acc, alpha, beta)


def _launch(x: torch.Tensor, groups: int):
    """(kernel family, grid, layout arguments) for ``x``: no per-element integer division on the GPU."""
    n, channels = x.shape[0], x.shape[1]
    plane = x.numel() // max(1, n * channels)
    if is_channels_last(x):
        block_c = triton.next_power_of_2(channels)
        block_p = max(1, PIXEL_ELEMENTS // block_c)
        meta = dict(CHANNELS=channels, PER_GROUP=channels // groups, BLOCK_P=block_p, BLOCK_C=block_c)
        return "interleaved", (triton.cdiv(n * plane, block_p),), (n * plane,), meta
    return "planar", (n * channels, triton.cdiv(plane, BLOCK)), (plane, channels, channels // groups), dict(BLOCK=BLOCK)


def _forward(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save_d: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous(memory_format=memory_format_of(x))
    y = torch.empty_like(x)
    d = torch.empty_like(x, dtype=torch.float32) if save_d else x.new_empty(0, dtype=torch.float32)
    if x.numel():
        family, grid, layout, meta = _launch(x, groups)
        kernel = _lrn_interleaved_forward if family == "interleaved" else _lrn_planar_forward
        kernel[grid](x, y, d if save_d else y, *layout, alpha, beta, k, SIZE=size, SAVE_D=save_d, **meta)
    return y, d


@torch.library.custom_op("alexnet::lrn_triton", mutates_args=())
def lrn_triton(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save_d: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, d): the output and, if ``save_d``, the float32 normaliser (else an empty tensor)."""
    return _forward(x, size, alpha, beta, k, groups, save_d)


@lrn_triton.register_fake
def _(x, size, alpha, beta, k, groups, save_d):
    fmt = memory_format_of(x)
    d = torch.empty_like(x, dtype=torch.float32, memory_format=fmt) if save_d else x.new_empty(0, dtype=torch.float32)
    return torch.empty_like(x, memory_format=fmt), d


def _backward(
    grad: torch.Tensor, x: torch.Tensor, d: torch.Tensor, size: int, alpha: float, beta: float, groups: int
) -> torch.Tensor:
    fmt = memory_format_of(d)
    x = x.contiguous(memory_format=fmt)
    grad = grad.contiguous(memory_format=fmt)
    dx = torch.empty_like(x)
    if x.numel():
        family, grid, layout, meta = _launch(x, groups)
        kernel = _lrn_interleaved_backward if family == "interleaved" else _lrn_planar_backward
        kernel[grid](grad, x, d, dx, *layout, alpha, beta, SIZE=size, **meta)
    return dx


@torch.library.custom_op("alexnet::lrn_triton_backward", mutates_args=())
def lrn_triton_backward(
    grad: torch.Tensor, x: torch.Tensor, d: torch.Tensor, size: int, alpha: float, beta: float, groups: int
) -> torch.Tensor:
    return _backward(grad, x, d, size, alpha, beta, groups)


@lrn_triton_backward.register_fake
def _(grad, x, d, size, alpha, beta, groups):
    return torch.empty_like(x, memory_format=memory_format_of(d))


class LRNTritonFunction(torch.autograd.Function):
    """The custom ops when torch.compile traces the model (it keeps them whole); in eager mode the
    launches directly, without the custom ops' dispatch (tens of microseconds a call on the host)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):
        forward = lrn_triton if torch.compiler.is_compiling() else _forward
        y, d = forward(x, size, alpha, beta, k, groups, ctx.needs_input_grad[0])
        ctx.save_for_backward(x, d)
        ctx.params = (size, alpha, beta, groups)
        ctx.k = k
        return y

    @staticmethod
    def backward(ctx, grad):
        x, d = ctx.saved_tensors
        size, alpha, beta, groups = ctx.params
        if torch.is_grad_enabled():  # create_graph: the kernel has no graph, so differentiable ops of x
            from alexnet.kernels.lrn_autograd import differentiable_backward

            return differentiable_backward(grad, x, size, alpha, beta, ctx.k, groups), None, None, None, None, None
        backward = lrn_triton_backward if torch.compiler.is_compiling() else _backward
        return backward(grad, x, d, size, alpha, beta, groups), None, None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN with the Triton kernels (CUDA tensors, or any tensors with ``TRITON_INTERPRET=1``)."""
    if triton is None:
        raise RuntimeError("triton is not installed; use alexnet.kernels.local_response_norm")
    return LRNTritonFunction.apply(x, size, float(alpha), float(beta), float(k), groups)
