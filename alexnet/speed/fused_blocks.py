"""conv1's and conv2's tails, bias + ReLU + LRN + 3/2 max-pool, as one Triton kernel forward and two backward.

Eagerly the tail of a block is four passes over the conv output (bias add, ReLU, LRN, pool), each
reading and writing a full-size tensor, and the pool saves 64-bit indices. Here:

forward (one kernel)
    a program holds a tile of pooled outputs by channels; for each of the 9 window positions it
    computes a = relu(z + bias) at the 5 channels of the LRN window, the normaliser
    d = k + alpha sum a^2, y = a d^-beta (two ``rsqrt`` for the paper's beta = 0.75), rounds y to
    the storage dtype and keeps the window's maximum. Written: the pooled output and a 1-byte code
    (which of the 9 positions won). Saved for the backward: the conv output z and the codes.
backward (two kernels)
    1. per input position: the pooled gradient routed back through the codes (each position is in
       at most 4 windows), dy; then, recomputing a and d, the LRN's cross term
       t = dy a d^(-beta-1), stored in z's dtype (one scratch tensor the size of z);
    2. per input position: dy and d again, dz = [dy d^-beta - 2 alpha beta a sum_{i: j in window(i)} t_i] (a > 0),
       and per-program partial sums of dz over positions for the bias gradient (summed afterwards,
       in a fixed order: the result is deterministic).
    Recomputing costs loads that the cache serves; what goes to memory is z three times, t twice,
    dz once and the pooled gradient and codes twice.

The max follows PyTorch's rule exactly: windows are scanned row by row, a later value replaces the
running maximum only when strictly greater, and NaN always replaces it. A window of equal values
(all zeros after the ReLU are common) so sends its gradient to its top-left position, as
``torch.nn.functional.max_pool2d`` does. Values are compared after rounding to the output dtype, as
an eager pool sees them.

Arithmetic is float32 whatever the storage dtype (bf16 or fp32 in and out). Any memory layout is
accepted (the kernels take strides; NCHW and channels_last are the ones that matter). With
``TRITON_INTERPRET=1`` the kernels run on CPU tensors, which is how the tests check them.

:func:`fuse_blocks` swaps the fused blocks into an :class:`alexnet.model.AlexNet` without changing
its parameters or their names.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from alexnet.kernels.layout import memory_format_of
from alexnet.speed.swap import rebuilt_as

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None

POOL_KERNEL, POOL_STRIDE = 3, 2
BLOCK_P = 32  # pooled outputs (forward) or input positions (backward) per program
MAX_BLOCK_C = 64  # channels per program (channel tiles need no halo: neighbours are loaded, masked at group edges)


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def round_to_bf16(x):
        """float32 x rounded to the nearest bfloat16 (ties to even), still as float32; NaN kept.

        Written out in integer arithmetic so that the rounding is the same on a GPU and in Triton's
        interpreter (whose ``.to(tl.bfloat16)`` truncates).
        """
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return tl.where(x != x, x, u.to(tl.float32, bitcast=True))

    @triton.jit
    def _to_storage(y, dtype: tl.constexpr):
        """y (float32) as the value a store in ``dtype`` keeps, still float32."""
        if dtype == tl.bfloat16:
            return round_to_bf16(y)
        else:
            return y.to(dtype).to(tl.float32)

    @triton.jit
    def _activation(z_ptr, b_ptr, pix, ch, cin, valid, szc, shift, PER_GROUP):
        """relu(z + bias) at channel ch + shift (0 outside the channel's group); NaN passes through."""
        ok = (cin + shift >= 0) & (cin + shift < PER_GROUP)
        m = valid & ok[None, :]
        z = tl.load(z_ptr + pix[:, None] + (ch + shift)[None, :] * szc, mask=m, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + ch + shift, mask=ok, other=0.0).to(tl.float32)
        a = z + b[None, :]
        a = tl.where(a < 0.0, 0.0, a)
        return tl.where(m, a, 0.0)

    @triton.jit
    def _normaliser(z_ptr, b_ptr, pix, ch, cin, valid, szc, PER_GROUP, alpha, k,
                    SIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """(a, d): the activation at ch and d = k + alpha * sum of a^2 over its LRN window."""
        s = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        centre = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for t in tl.static_range(SIZE):  # window [c - SIZE//2, c + (SIZE-1)//2]
            a = _activation(z_ptr, b_ptr, pix, ch, cin, valid, szc, t - SIZE // 2, PER_GROUP)
            s += a * a
            if t == SIZE // 2:
                centre = a
        return centre, k + alpha * s

    @triton.jit
    def _neg_pow(d, beta, BETA_075: tl.constexpr):
        """d^-beta: rsqrt(d) * sqrt(rsqrt(d)) for beta = 0.75, exp2/log2 otherwise."""
        if BETA_075:
            r = tl.rsqrt(d)
            return r * tl.sqrt(r)
        else:
            return tl.exp2(-beta * tl.log2(d))

    @triton.jit
    def _block_forward(
        z_ptr, b_ptr, y_ptr, code_ptr,
        W, HO, WO, C, PER_GROUP,
        szn, szc, szh, szw, syn, syc, syh, syw,
        alpha, beta, k,
        SIZE: tl.constexpr, BETA_075: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        n = tl.program_id(1).to(tl.int64)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        ho, wo = p // WO, p % WO
        cin = ch % PER_GROUP
        valid = (p < HO * WO)[:, None] & (ch < C)[None, :]
        z_img = z_ptr + n * szn
        best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), tl.float32)
        code = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.int32)
        for i in tl.static_range(3):
            for j in tl.static_range(3):
                pix = (2 * ho + i).to(tl.int64) * szh + (2 * wo + j).to(tl.int64) * szw
                a, d = _normaliser(z_img, b_ptr, pix, ch, cin, valid, szc, PER_GROUP, alpha, k, SIZE, BLOCK_P, BLOCK_C)
                y = _to_storage(a * _neg_pow(d, beta, BETA_075), y_ptr.dtype.element_ty)
                take = (y > best) | (y != y)  # PyTorch's rule: strictly greater, or NaN
                best = tl.where(take, y, best)
                code = tl.where(take, 3 * i + j, code)
        at = n * syn + ho.to(tl.int64)[:, None] * syh + wo.to(tl.int64)[:, None] * syw + ch[None, :].to(tl.int64) * syc
        tl.store(y_ptr + at, best.to(y_ptr.dtype.element_ty), mask=valid)
        tl.store(code_ptr + at, code.to(tl.uint8), mask=valid)

    @triton.jit
    def _routed_gradient(g_ptr, code_ptr, n, h, w, ch, valid, HO, WO, syn, syc, syh, syw,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """dy at input positions (h, w): the pooled gradients of the windows whose code names them."""
        chy = ch[None, :].to(tl.int64) * syc
        dy = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for di in tl.static_range(2):  # the windows holding row h: ho = h // 2 and h // 2 - 1
            for dj in tl.static_range(2):
                ho = h // 2 - di
                wo = w // 2 - dj
                i, j = h - 2 * ho, w - 2 * wo
                ok = (ho >= 0) & (ho < HO) & (i < 3) & (wo >= 0) & (wo < WO) & (j < 3)
                m = valid & ok[:, None]
                at = n * syn + ho.to(tl.int64)[:, None] * syh + wo.to(tl.int64)[:, None] * syw + chy
                g = tl.load(g_ptr + at, mask=m, other=0.0).to(tl.float32)
                won = tl.load(code_ptr + at, mask=m, other=255).to(tl.int32)
                dy += tl.where(won == (3 * i + j)[:, None], g, 0.0)
        return dy

    @triton.jit
    def _backward_position(
        g_ptr, code_ptr, z_ptr, b_ptr, H, W, HO, WO, C, PER_GROUP, szn, szc, szh, szw, syn, syc, syh, syw,
        alpha, k, SIZE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """What both backward kernels start from, for this program's tile of input positions and
        channels: the pooled gradient routed back (dy) and the recomputed activation and normaliser."""
        n = tl.program_id(1).to(tl.int64)
        q = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        h, w = q // W, q % W
        cin = ch % PER_GROUP
        valid = (q < H * W)[:, None] & (ch < C)[None, :]
        dy = _routed_gradient(g_ptr, code_ptr, n, h, w, ch, valid, HO, WO, syn, syc, syh, syw, BLOCK_P, BLOCK_C)
        pix = n * szn + h.to(tl.int64) * szh + w.to(tl.int64) * szw
        a, d = _normaliser(z_ptr, b_ptr, pix, ch, cin, valid, szc, PER_GROUP, alpha, k, SIZE, BLOCK_P, BLOCK_C)
        return n, ch, cin, valid, pix, dy, a, d

    @triton.jit
    def _block_backward_terms(
        g_ptr, code_ptr, z_ptr, b_ptr, t_ptr,
        H, W, HO, WO, C, PER_GROUP,
        szn, szc, szh, szw, syn, syc, syh, syw,
        alpha, beta, k,
        SIZE: tl.constexpr, BETA_075: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """t = dy a d^(-beta-1) at every input position (stored in z's dtype), dy routed back by the codes."""
        n, ch, cin, valid, pix, dy, a, d = _backward_position(
            g_ptr, code_ptr, z_ptr, b_ptr, H, W, HO, WO, C, PER_GROUP, szn, szc, szh, szw, syn, syc, syh, syw,
            alpha, k, SIZE, BLOCK_P, BLOCK_C)
        t = dy * a * _neg_pow(d, beta, BETA_075) / d
        at = pix[:, None] + ch[None, :].to(tl.int64) * szc
        tl.store(t_ptr + at, _to_storage(t, t_ptr.dtype.element_ty).to(t_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _block_backward_input(
        g_ptr, code_ptr, z_ptr, b_ptr, t_ptr, dz_ptr, db_ptr,
        H, W, HO, WO, C, PER_GROUP, TILES,
        szn, szc, szh, szw, syn, syc, syh, syw,
        alpha, beta, k,
        SIZE: tl.constexpr, BETA_075: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        """dz = [dy d^-beta - 2 alpha beta a sum_{i: j in window(i)} t_i] (a > 0); per-program bias partial sums."""
        n, ch, cin, valid, pix, dy, a, d = _backward_position(
            g_ptr, code_ptr, z_ptr, b_ptr, H, W, HO, WO, C, PER_GROUP, szn, szc, szh, szw, syn, syc, syh, syw,
            alpha, k, SIZE, BLOCK_P, BLOCK_C)
        acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
        for s in tl.static_range(SIZE):  # every i whose window holds c: [c - (SIZE-1)//2, c + SIZE//2]
            shift = s - (SIZE - 1) // 2
            ok = (cin + shift >= 0) & (cin + shift < PER_GROUP)
            m = valid & ok[None, :]
            acc += tl.load(t_ptr + pix[:, None] + (ch + shift)[None, :].to(tl.int64) * szc, mask=m, other=0.0).to(tl.float32)
        at = pix[:, None] + ch[None, :].to(tl.int64) * szc
        dz = tl.where(a > 0.0, dy * _neg_pow(d, beta, BETA_075) - 2.0 * alpha * beta * a * acc, 0.0)
        tl.store(dz_ptr + at, _to_storage(dz, dz_ptr.dtype.element_ty).to(dz_ptr.dtype.element_ty), mask=valid)
        partial = tl.sum(tl.where(valid, dz, 0.0), axis=0)
        row = n * TILES + tl.program_id(0)
        tl.store(db_ptr + row * C + ch, partial, mask=ch < C)


def pooled_size(side: int) -> int:
    return (side - POOL_KERNEL) // POOL_STRIDE + 1


def _grid(positions: int, n: int, channels: int) -> tuple[tuple[int, int, int], int]:
    block_c = min(MAX_BLOCK_C, triton.next_power_of_2(channels))
    return (triton.cdiv(positions, BLOCK_P), n, triton.cdiv(channels, block_c)), block_c


def _bias_of(z: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros(z.shape[1], dtype=torch.float32, device=z.device) if bias is None else bias.contiguous()


def block_forward(z, bias, size, alpha, beta, k, groups) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled output, uint8 codes) of relu(z + bias) -> LRN -> max-pool 3/2; z is (N, C, H, W)."""
    n, c, h, w = z.shape
    ho, wo = pooled_size(h), pooled_size(w)
    fmt = memory_format_of(z)
    y = torch.empty((n, c, ho, wo), dtype=z.dtype, device=z.device).contiguous(memory_format=fmt)
    code = torch.empty_like(y, dtype=torch.uint8)
    if y.numel():
        grid, block_c = _grid(ho * wo, n, c)
        _block_forward[grid](
            z, _bias_of(z, bias), y, code, w, ho, wo, c, c // groups, *z.stride(), *y.stride(),
            alpha, beta, k, SIZE=size, BETA_075=beta == 0.75, BLOCK_P=BLOCK_P, BLOCK_C=block_c,
        )
    return y, code


def block_backward(grad, code, z, bias, size, alpha, beta, k, groups) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dz in z's dtype and layout, dL/dbias in float32)."""
    n, c, h, w = z.shape
    ho, wo = code.shape[-2:]
    grad = grad.contiguous(memory_format=memory_format_of(code))
    if grad.stride() != code.stride():  # e.g. size-1 dimensions: make the layouts agree exactly
        grad = torch.empty_like(code, dtype=grad.dtype).copy_(grad)
    dz = torch.empty_like(z)
    t = torch.empty_like(z)  # scratch in z's dtype: the small LRN cross term
    b = _bias_of(z, bias)
    if not z.numel():
        return dz.zero_(), torch.zeros(c, dtype=torch.float32, device=z.device)
    grid, block_c = _grid(h * w, n, c)
    common = dict(SIZE=size, BETA_075=beta == 0.75, BLOCK_P=BLOCK_P, BLOCK_C=block_c)
    _block_backward_terms[grid](
        grad, code, z, b, t, h, w, ho, wo, c, c // groups, *z.stride(), *code.stride(), alpha, beta, k, **common,
    )
    partials = torch.empty((n * grid[0], c), dtype=torch.float32, device=z.device)
    _block_backward_input[grid](
        grad, code, z, b, t, dz, partials, h, w, ho, wo, c, c // groups, grid[0], *z.stride(), *code.stride(),
        alpha, beta, k, **common,
    )
    return dz, partials.sum(0)


class FusedBlockFunction(torch.autograd.Function):
    """``FusedBlockFunction.apply(z, bias, size, alpha, beta, k, groups)``; alpha multiplies the plain sum."""

    @staticmethod
    def forward(ctx, z, bias, size, alpha, beta, k, groups):
        z = z.contiguous(memory_format=memory_format_of(z))
        y, code = block_forward(z, bias, size, alpha, beta, k, groups)
        ctx.save_for_backward(z, bias, code)
        ctx.params = (size, alpha, beta, k, groups)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, bias, code = ctx.saved_tensors
        dz, db = block_backward(grad, code, z, bias, *ctx.params)
        db = None if bias is None or not ctx.needs_input_grad[1] else db.to(bias.dtype)
        return dz, db, None, None, None, None, None


@torch.compiler.disable  # torch.compile runs the rest of the network and calls this as it is
def fused_block(z: torch.Tensor, bias: torch.Tensor | None, size: int = 5, alpha: float = 1e-4,
                beta: float = 0.75, k: float = 2.0, groups: int = 1) -> torch.Tensor:
    """``max_pool2d(LRN(relu(z + bias)), 3, 2)`` in one kernel; ``alpha`` multiplies the plain sum of squares."""
    if triton is None:
        raise RuntimeError("triton is not installed; the fused block needs it")
    if z.dim() != 4:
        raise ValueError(f"the fused block needs an (N, C, H, W) input, got {tuple(z.shape)}")
    if z.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the fused block takes float32 or bfloat16, got {z.dtype}")
    if groups < 1 or z.shape[1] % groups:
        raise ValueError(f"{z.shape[1]} channels do not split into {groups} LRN groups")
    if min(z.shape[-2:]) < POOL_KERNEL:
        raise ValueError(f"the 3x3 pool needs at least 3x3 positions, got {tuple(z.shape[-2:])}")
    if bias is not None and bias.shape != (z.shape[1],):
        raise ValueError(f"bias of shape {tuple(bias.shape)} for {z.shape[1]} channels")
    return FusedBlockFunction.apply(z, bias, int(size), float(alpha), float(beta), float(k), int(groups))


def block_reference(z, bias, size=5, alpha=1e-4, beta=0.75, k=2.0, groups=1) -> torch.Tensor:
    """The same tail in eager torch ops (the model's own modules do this)."""
    from alexnet.lrn import lrn_reference

    a = F.relu(z if bias is None else z + bias.view(1, -1, 1, 1).to(z.dtype))
    return F.max_pool2d(lrn_reference(a, size, alpha, beta, k, "paper", groups), POOL_KERNEL, POOL_STRIDE)


class FusedConvBlock(nn.Conv2d):
    """A convolution followed by its block's bias + ReLU + LRN + max-pool 3/2, the tail fused.

    An ``nn.Conv2d`` holding the convolution's own weight and bias (same objects, same names), so
    swapping it in leaves state dicts, checkpoints and optimizers as they were. The LRN's
    constants are kept as plain attributes; ``space_to_depth`` runs the convolution as
    :mod:`alexnet.speed.conv1_s2d` does.
    """

    @classmethod
    def from_layers(cls, conv: nn.Conv2d, lrn: nn.Module) -> "FusedConvBlock":
        from alexnet.speed.conv1_s2d import SpaceToDepthConv1
        from alexnet.lrn import effective_alpha

        new = rebuilt_as(cls, conv)
        new.space_to_depth = isinstance(conv, SpaceToDepthConv1)
        new.stride_pad = bool(getattr(conv, "stride_pad", False))
        new.lrn_size, new.lrn_beta, new.lrn_k, new.lrn_groups = lrn.size, lrn.beta, lrn.k, lrn.groups
        new.lrn_alpha = effective_alpha(lrn.alpha, lrn.size, lrn.convention)
        return new

    def conv_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        if self.space_to_depth:
            from alexnet.speed.conv1_s2d import space_to_depth_conv2d

            return space_to_depth_conv2d(x, self.weight, None, self.stride[0], self.padding[0], self.stride_pad)
        return F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv_without_bias(x)
        return fused_block(z, self.bias, self.lrn_size, self.lrn_alpha, self.lrn_beta, self.lrn_k, self.lrn_groups)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", fused relu+lrn(size={self.lrn_size}, alpha={self.lrn_alpha}, "
                f"beta={self.lrn_beta}, k={self.lrn_k}, groups={self.lrn_groups})+maxpool(3, 2)"
                + (", space_to_depth=True" if self.space_to_depth else ""))


def _fusable(features: nn.Module, block: int) -> str | None:
    """Why block ``block`` of ``features`` cannot be fused, or None."""
    from alexnet.lrn import LocalResponseNorm

    names = [name for name, _ in features.named_children()]
    wanted = [f"conv{block}", f"act{block}", f"lrn{block}", f"pool{block}"]
    if not all(w in names for w in wanted):
        return f"block {block} lacks one of {wanted}"
    at = names.index(wanted[0])
    if names[at : at + 4] != wanted:
        return f"block {block} runs {names[at:at + 4]}, not conv, ReLU, LRN, pool"
    act, lrn, pool = (getattr(features, w) for w in wanted[1:])
    if not isinstance(act, nn.ReLU):
        return f"block {block}'s activation is {act}, not ReLU"
    if not isinstance(lrn, LocalResponseNorm):
        return f"block {block} has no LRN"
    if not (isinstance(pool, nn.MaxPool2d) and pool.kernel_size in (3, (3, 3)) and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode):
        return f"block {block}'s pool is {pool}, not max-pool 3/2"
    return None


def fuse_blocks(model: nn.Module, blocks: tuple[int, ...] = (1, 2)) -> nn.Module:
    """Swap the fused tails into an AlexNet's conv1 and conv2 blocks, in place; returns ``model``.

    Each ``convN`` becomes a :class:`FusedConvBlock` and ``actN``, ``lrnN``, ``poolN`` become
    ``nn.Identity``; parameters and their names do not change. A conv1 already swapped for
    :class:`alexnet.speed.conv1_s2d.SpaceToDepthConv1` keeps its space-to-depth. Raises
    ValueError for a model whose blocks are not conv, ReLU, LRN, max-pool 3/2 (e.g. ``lrn=False``,
    ``lrn_before_relu=True``, ``activation="tanh"`` or the non-overlapping pool).
    """
    features = model.features
    for block in blocks:
        if isinstance(getattr(features, f"conv{block}", None), FusedConvBlock):
            continue
        why = _fusable(features, block)
        if why:
            raise ValueError(f"cannot fuse: {why}")
        conv, lrn = getattr(features, f"conv{block}"), getattr(features, f"lrn{block}")
        setattr(features, f"conv{block}", FusedConvBlock.from_layers(conv, lrn))
        for name in (f"act{block}", f"lrn{block}", f"pool{block}"):
            setattr(features, name, nn.Identity())
    return model
