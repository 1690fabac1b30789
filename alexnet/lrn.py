"""Local response normalisation (section 3.3 of the paper).

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

with k=2, n=5, alpha=1e-4, beta=0.75, and N the number of kernel maps. The sum runs over
``n`` adjacent maps at the same spatial position, clipped at the first and the last map.

Three conventions are one switch apart here. They differ in how alpha is read and in k:

============== ============================ ===== =============================================
convention     alpha multiplies             k     where
============== ============================ ===== =============================================
``paper``      the plain sum of squares     2     section 3.3 as printed (the default)
``cuda-convnet`` the sum divided by n       2     the authors' released code (``cmrnorm``,
                                                  ``minDiv=2``: layer-params-145.cfg)
``caffe``      the sum divided by n         1     Caffe's bvlc_alexnet (and the default k of
                                                  ``torch.nn.LocalResponseNorm``)
============== ============================ ===== =============================================

:class:`LocalResponseNorm` takes k as an argument, so there the convention only says how alpha
is read (``"cuda-convnet"`` and ``"caffe"`` both divide it by n);
:data:`CONVENTION_K` is the k that goes with each convention, which the network uses.
``LocalResponseNorm(alpha=5e-4, convention="cuda-convnet")`` equals the paper's ``alpha=1e-4``.

Within-map ("spatial") response normalisation, :class:`SpatialResponseNorm`, is the other
normalisation of the released code (``rnorm``, layer ``cnorm2`` after conv2's LRN; not in the
paper): each map is divided by (1 + scale / size^2 * sum of squares over a size x size window
of the same map, clipped at the borders) ** power, with scale 0.001, size 5, power 0.75.

With two towers each GPU of the paper normalised over its own maps only, so the window
never crosses from one tower to the other. ``groups`` reproduces that on one device: the
channels are split into ``groups`` equal blocks and each block is normalised on its own.

The computation runs in fused forward and backward kernels (:mod:`alexnet.kernels`), picked by
:func:`local_response_norm` for each input:

========  ======================================================  ==================================
backend   used for                                                module
========  ======================================================  ==================================
triton    float32/bf16/fp16 CUDA tensors when triton is installed  :mod:`alexnet.kernels.lrn_triton`
cpu       float32/bf16/fp16 CPU tensors when a C compiler exists   :mod:`alexnet.kernels.lrn_cpu`
eager     everything else (float64, other devices)                :mod:`alexnet.kernels.lrn_autograd`
========  ======================================================  ==================================

All three compute the formula in float32 or better with a closed-form backward; a backward that
builds a graph (``create_graph=True``: second derivatives) is the same closed form in
differentiable torch ops, whatever the backend. :func:`lrn_reference` is the plain formula, kept
for tests.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
import torch.nn.functional as F

from alexnet.kernels import lrn_autograd, lrn_cpu
from alexnet.kernels.compile_marks import constant_result

CONVENTIONS = ("paper", "cuda-convnet", "caffe")
CONVENTION_K = {"paper": 2.0, "cuda-convnet": 2.0, "caffe": 1.0}


def effective_alpha(alpha: float, size: int, convention: str) -> float:
    """The alpha that multiplies the plain sum of squares under ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {CONVENTIONS}, got {convention!r}")
    return alpha if convention == "paper" else alpha / size


def whole_number(name: str, value) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` (no floats, no booleans)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def real_number(name: str, value) -> float:
    """``value`` as a finite float, or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def window_sum_of_squares(x: torch.Tensor, size: int, groups: int = 1) -> torch.Tensor:
    """sum_{j in window(i)} x[:, j]^2 for every channel i, windows clipped at block edges.

    The window of channel i is [i - size//2, i + (size-1)//2], which is the paper's
    [i - n/2, i + n/2] for odd n and torch's convention for even n.
    """
    if x.shape[1] % groups:
        raise ValueError(f"{x.shape[1]} channels do not split into {groups} LRN groups")
    return _window_sum_of_squares(x, size, groups)


def _window_sum_of_squares(x: torch.Tensor, size: int, groups: int) -> torch.Tensor:
    """:func:`window_sum_of_squares` without its check, in ops TorchScript compiles."""
    n, c = x.shape[0], x.shape[1]
    cg = c // groups
    positions = 1
    for side in x.shape[2:]:
        positions *= side
    sq = (x * x).reshape([n * groups, cg, positions])
    padded = F.pad(sq, [0, 0, size // 2, (size - 1) // 2])  # zero channels beyond the edges
    total = padded[:, 0:cg]
    for j in range(1, size):
        total = total + padded[:, j : j + cg]
    return total.reshape(x.shape)


def lrn_reference(
    x: torch.Tensor,
    size: int = 5,
    alpha: float = 1e-4,
    beta: float = 0.75,
    k: float = 2.0,
    convention: str = "paper",
    groups: int = 1,
) -> torch.Tensor:
    """The formula of section 3.3 in plain differentiable torch ops."""
    a = effective_alpha(alpha, size, convention)
    return x / (k + a * window_sum_of_squares(x, size, groups)).pow(beta)


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


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        groups: int = 1) -> torch.Tensor:
    """``x / (k + alpha * window_sum(x^2)) ** beta`` over channel windows, per channel group, by
    the fastest kernel that handles ``x``. ``alpha`` is the *effective* one, which multiplies the
    plain sum of squares (:func:`effective_alpha`). ``x``: floating point, (N, C, ...), C divisible
    by ``groups``."""
    _check_kernel_input(x, size, groups)
    backend = backend_for(x)
    if backend == "cpu":
        return lrn_cpu.local_response_norm(x, size, alpha, beta, k, groups)
    if backend == "triton":
        from alexnet.kernels import lrn_triton

        return lrn_triton.local_response_norm(x, size, alpha, beta, k, groups)
    return lrn_autograd.local_response_norm(x, size, alpha, beta, k, groups)


def _check_kernel_input(x: torch.Tensor, size: int, groups: int) -> None:
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


class LocalResponseNorm(nn.Module):
    """LRN across channels, the paper's formula by default (alpha not divided by n).

    Args:
        size: n, the number of adjacent maps summed over.
        alpha, beta, k: the formula's constants (paper: 1e-4, 0.75, 2).
        convention: ``"paper"`` (alpha as written), or ``"cuda-convnet"`` / ``"caffe"`` (alpha
            divided by n; the two differ only in k, which is given here).
        groups: normalise each of ``groups`` equal blocks of channels on its own (one per tower).
    """

    def __init__(
        self,
        size: int = 5,
        alpha: float = 1e-4,
        beta: float = 0.75,
        k: float = 2.0,
        *,
        convention: str = "paper",
        groups: int = 1,
    ) -> None:
        super().__init__()
        size, groups = whole_number("LRN size", size), whole_number("LRN groups", groups)
        alpha, beta, k = real_number("LRN alpha", alpha), real_number("LRN beta", beta), real_number("LRN k", k)
        if alpha < 0 or k <= 0:  # k + alpha * (sum of squares) must stay positive
            raise ValueError(f"LRN needs alpha >= 0 and k > 0 (the denominator k + alpha * sum must be positive), "
                             f"got alpha={alpha}, k={k}")
        effective_alpha(alpha, size, convention)  # validates the convention
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript: the formula in plain torch ops
            a = self.alpha if self.convention == "paper" else self.alpha / self.size
            return x / (self.k + a * _window_sum_of_squares(x, self.size, self.groups)).pow(self.beta)
        return self._kernel(x)

    @torch.jit.unused
    def _kernel(self, x: torch.Tensor) -> torch.Tensor:
        a = effective_alpha(self.alpha, self.size, self.convention)
        return local_response_norm(x, self.size, a, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"convention={self.convention!r}, groups={self.groups}"
        )


class SpatialResponseNorm(nn.Module):
    """Within-map response normalisation (cuda-convnet's ``rnorm``; the released configs' ``cnorm2``).

        b[c, y, x] = a[c, y, x] / (k + scale / size^2 * sum_{window} a[c, y', x']^2) ** power

    where the window is the size x size square around (y, x) (rows y - size//2 .. y - size//2 +
    size - 1, the same for columns) clipped at the map's borders, and k = 1. The released configs
    use size 5, scale 0.001, power 0.75 after conv2's cross-map LRN. It has no parameters and works
    on each map alone, so it needs no tower groups.
    """

    def __init__(self, size: int = 5, scale: float = 1e-3, power: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        size = whole_number("spatial normalisation size", size)
        scale, power, k = (real_number(f"spatial normalisation {name}", value)
                           for name, value in (("scale", scale), ("power", power), ("k", k)))
        if scale < 0 or k <= 0:
            raise ValueError(f"spatial normalisation needs scale >= 0 and k > 0, got scale={scale}, k={k}")
        self.size, self.scale, self.power, self.k = size, scale, power, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            _check_spatial_input(x)
        s = self.size
        lo = s // 2  # cuda-convnet's window starts at -size/2 and spans size pixels
        padded = F.pad(x * x, (lo, s - 1 - lo, lo, s - 1 - lo))  # zeros outside the map: the window is clipped
        total = F.avg_pool2d(padded, s, stride=1) * (s * s)
        return x / (self.k + (self.scale / (s * s)) * total).pow(self.power)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale={self.scale}, power={self.power}, k={self.k}"


@torch.jit.unused
def _check_spatial_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 3:
        raise ValueError("spatial normalisation needs a floating-point tensor of shape ([N,] C, H, W), got "
                         + (f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__))
