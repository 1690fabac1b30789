"""Local response normalisation (section 3.3 of the paper).

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

with k=2, n=5, alpha=1e-4, beta=0.75, and N the number of kernel maps. The sum runs over
``n`` adjacent maps at the same spatial position, clipped at the first and the last map.

Two conventions exist for alpha, and they are one switch apart here:

* ``"paper"`` (the default): alpha multiplies the plain sum of squares, as the formula
  above is written.
* ``"caffe"``: alpha is divided by n first, as cuda-convnet, Caffe and
  ``torch.nn.LocalResponseNorm`` do. ``LocalResponseNorm(alpha=5e-4, convention="caffe")``
  equals the paper's ``alpha=1e-4``.

With two towers each GPU of the paper normalised over its own maps only, so the window
never crosses from one tower to the other. ``groups`` reproduces that on one device: the
channels are split into ``groups`` equal blocks and each block is normalised on its own.

The computation itself lives in :mod:`alexnet.kernels` (fused forward and backward kernels:
C on the CPU, Triton on CUDA, an eager closed-form fallback elsewhere); :func:`lrn_reference` is
the plain formula, kept for tests.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

CONVENTIONS = ("paper", "caffe")


def effective_alpha(alpha: float, size: int, convention: str) -> float:
    """The alpha that multiplies the plain sum of squares under ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"LRN convention must be one of {CONVENTIONS}, got {convention!r}")
    return alpha if convention == "paper" else alpha / size


def window_sum_of_squares(x: torch.Tensor, size: int, groups: int = 1) -> torch.Tensor:
    """sum_{j in window(i)} x[:, j]^2 for every channel i, windows clipped at block edges.

    The window of channel i is [i - size//2, i + (size-1)//2], which is the paper's
    [i - n/2, i + n/2] for odd n and torch's convention for even n.
    """
    n, c = x.shape[:2]
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} LRN groups")
    sq = (x * x).reshape(n * groups, c // groups, *x.shape[2:])
    front, back = size // 2, (size - 1) // 2
    padded = F.pad(sq.flatten(2), (0, 0, front, back))  # zero channels beyond the edges
    cg = c // groups
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


class LocalResponseNorm(nn.Module):
    """LRN across channels, the paper's formula by default (alpha not divided by n).

    Args:
        size: n, the number of adjacent maps summed over.
        alpha, beta, k: the formula's constants (paper: 1e-4, 0.75, 2).
        convention: ``"paper"`` or ``"caffe"`` (alpha divided by n, as torch/Caffe/cuda-convnet).
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
        if size < 1:
            raise ValueError(f"LRN size must be at least 1, got {size}")
        if groups < 1:
            raise ValueError(f"LRN groups must be at least 1, got {groups}")
        effective_alpha(alpha, size, convention)  # validates the convention
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from alexnet.kernels import local_response_norm

        a = effective_alpha(self.alpha, self.size, self.convention)
        return local_response_norm(x, self.size, a, self.beta, self.k, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"convention={self.convention!r}, groups={self.groups}"
        )
