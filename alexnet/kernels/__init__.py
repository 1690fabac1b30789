"""Fast kernels behind the paper's operations.

``local_response_norm(x, size, alpha, beta, k, groups)`` takes the *effective* alpha (the one
that multiplies the plain sum of squares; see :func:`alexnet.lrn.effective_alpha`) and picks
the fastest implementation that handles ``x``:

========  ======================================================  ===================
backend   used for                                                module
========  ======================================================  ===================
triton    float32/bf16/fp16 CUDA tensors when triton is installed  :mod:`.lrn_triton`
cpu       float32/bf16/fp16 CPU tensors when a C compiler exists   :mod:`.lrn_cpu`
eager     everything else (float64, other devices)                :mod:`.lrn_autograd`
========  ======================================================  ===================

All three compute the formula in float32 or better with a closed-form backward; a backward
that builds a graph (``create_graph=True``: second derivatives) is the same closed form in
differentiable torch ops (:func:`.lrn_autograd.differentiable_backward`), whatever the backend.
``tests/test_kernels.py`` checks each against the formula in NumPy and against torch's LRN.
Inputs must be floating-point tensors of shape (N, C, ...) with C divisible by ``groups``.
"""

from __future__ import annotations

import torch

from alexnet.kernels import lrn_autograd, lrn_cpu
from alexnet.kernels.compile_marks import constant_result

BACKENDS = ("triton", "cpu", "eager")


@constant_result
def _triton_available() -> bool:
    from alexnet.kernels import lrn_triton  # imported on first use: importing triton takes ~1 s

    return lrn_triton.available()


def backend_for(x: torch.Tensor) -> str:
    """The backend :func:`local_response_norm` uses for ``x``."""
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return "eager"  # float64 stays exact; the fast kernels compute in float32
    if x.device.type == "cuda" and _triton_available():
        return "triton"
    if x.device.type == "cpu" and lrn_cpu.available():
        return "cpu"
    return "eager"


def _check(x: torch.Tensor, size: int, groups: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"LRN needs a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():  # integers would be truncated, booleans and complex numbers have no LRN
        raise TypeError(f"LRN needs a floating-point tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"LRN needs an input of shape (N, C, ...), got {tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"LRN size must be a whole number >= 1, got {size!r}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} LRN groups")


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1
) -> torch.Tensor:
    """``x / (k + alpha * window_sum(x^2)) ** beta`` over channel windows, per channel group."""
    _check(x, size, groups)
    backend = backend_for(x)
    if backend == "triton":
        from alexnet.kernels import lrn_triton

        return lrn_triton.local_response_norm(x, size, alpha, beta, k, groups)
    if backend == "cpu":
        return lrn_cpu.local_response_norm(x, size, alpha, beta, k, groups)
    return lrn_autograd.local_response_norm(x, size, alpha, beta, k, groups)
