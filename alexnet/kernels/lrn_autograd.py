"""LRN in eager torch with a closed-form backward: the fallback for every device and dtype.

With ``d_i = k + alpha * S_i`` (``S_i`` the window sum of squares of channel i) and
``b_i = a_i d_i^-beta``, differentiating gives

    dL/da_j = g_j d_j^-beta - 2 alpha beta a_j sum_{i: j in window(i)} g_i a_i d_i^(-beta-1)

where g = dL/db. The forward computes the window sum once and keeps ``d^-beta`` and ``d``
for the backward, which needs one more window sum (over the transposed window) and no
autograd graph of the dozen ops of :func:`alexnet.lrn.lrn_reference`. Arithmetic is in
float32 for half-precision inputs, in the input's dtype otherwise (float64 for gradcheck).

A second derivative (``create_graph=True``: gradient penalties, ``gradgradcheck``) takes
:func:`differentiable_backward`, the same closed form in differentiable torch ops computed
from ``x``; every backend's backward uses it then, so higher derivatives are exact too.
"""

from __future__ import annotations

import torch


def window_sum(t: torch.Tensor, size: int, groups: int = 1, transpose: bool = False) -> torch.Tensor:
    """``sum_{j in window(i)} t[:, j]`` for every channel i of ``t`` (N, C, ...).

    The window of channel i is [i - size//2, i + (size-1)//2], clipped at the edges of each of
    ``groups`` equal blocks of channels; ``transpose`` sums over {i : j in window(i)}, which is
    the mirrored window [j - (size-1)//2, j + size//2]. Keeps ``t``'s memory format.
    """
    cg = t.shape[1] // groups
    front, back = size // 2, (size - 1) // 2
    if transpose:
        front, back = back, front
    blocks = t.unflatten(1, (groups, cg))  # a view in both NCHW and channels_last
    total = blocks.clone()
    for shift in range(1, min(front, cg - 1) + 1):  # total[i] += t[i - shift]
        total[:, :, shift:] += blocks[:, :, : cg - shift]
    for shift in range(1, min(back, cg - 1) + 1):  # total[i] += t[i + shift]
        total[:, :, : cg - shift] += blocks[:, :, shift:]
    return total.flatten(1, 2)


def neg_pow(d: torch.Tensor, beta: float) -> torch.Tensor:
    """``d ** -beta``; square roots instead of pow for the paper's beta = 0.75."""
    if beta == 0.75:
        r = d.rsqrt()
        return r.mul_(r.sqrt())
    if beta == 0.5:
        return d.rsqrt()
    if beta == 1.0:
        return d.reciprocal()
    return d.pow(-beta)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def differentiable_backward(grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                            groups: int) -> torch.Tensor:
    """dL/dx from the closed form above in differentiable torch ops of ``x`` and ``grad``, for
    backward passes that build a graph of their own (second derivatives)."""
    dtype = _compute_dtype(x)
    xf, g = x.to(dtype), grad.to(dtype)
    d = window_sum(xf * xf, size, groups) * alpha + k
    p = d.pow(-beta)
    q = window_sum(g * xf * p / d, size, groups, transpose=True)
    return (g * p - (2.0 * alpha * beta) * xf * q).to(x.dtype)


class LRNFunction(torch.autograd.Function):
    """``LRNFunction.apply(x, size, alpha, beta, k, groups)``; alpha multiplies the plain sum."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k, groups):
        xf = x.to(_compute_dtype(x))
        d = window_sum(xf * xf, size, groups).mul_(alpha).add_(k)
        p = neg_pow(d, beta)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x, p, d)
        ctx.params = (size, alpha, beta, k, groups)
        return (xf * p).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        x, p, d = ctx.saved_tensors
        size, alpha, beta, k, groups = ctx.params
        if torch.is_grad_enabled():  # create_graph: a graph of the backward, for second derivatives
            return differentiable_backward(grad, x, size, alpha, beta, k, groups), None, None, None, None, None
        g = grad.to(p.dtype)
        xf = x.to(p.dtype)
        q = window_sum(g * xf * p / d, size, groups, transpose=True)
        dx = (g * p).addcmul_(xf, q, value=-2.0 * alpha * beta)
        return dx.to(x.dtype), None, None, None, None, None


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    return LRNFunction.apply(x, size, alpha, beta, k, groups)
