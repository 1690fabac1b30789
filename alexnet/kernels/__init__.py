"""Fast kernels behind the paper's operations.

``local_response_norm(x, size, alpha, beta, k, groups)`` takes the *effective* alpha (the one
that multiplies the plain sum of squares; see :func:`alexnet.lrn.effective_alpha`).
"""

from __future__ import annotations

import torch

from alexnet.lrn import window_sum_of_squares


def local_response_norm(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1
) -> torch.Tensor:
    return x / (k + alpha * window_sum_of_squares(x, size, groups)).pow(beta)
