"""What watches a run as it learns: non-finite values, and the loss stuck at chance.

Both guards read values that live on the device. Reading one forces the host to wait for the
GPU, so the checks run every ``sync_every_steps`` steps (and at the epoch's end and before a
checkpoint), not every step; the flag of a non-finite step is kept on the device until then.
The policy is the same on every device; only the default interval differs
(:func:`sync_interval`), and the tests run the GPU's interval on the CPU.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from alexnet.errors import UserError

GPU_SYNC_EVERY_STEPS = 20


class NonFiniteError(UserError):
    pass


def sync_interval(configured: int, device: torch.device, on_nonfinite: str) -> int:
    """Steps between host reads: ``configured``, else 1 on the CPU (reads are free there) or when
    non-finite steps are skipped (the step must be known before its update), else 20."""
    if configured:
        return configured
    return 1 if device.type == "cpu" or on_nonfinite == "skip" else GPU_SYNC_EVERY_STEPS


def grads_finite(model: nn.Module) -> torch.Tensor:
    """Whether every gradient of ``model`` is finite, as a 0-d bool tensor (no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(torch._foreach_norm(grads)).isfinite().all()


class NonFiniteGuard:
    """Stops the run, or skips the step, when the loss or a gradient is NaN or inf.

    Call :meth:`observe` after every backward and :meth:`verdict` at every synced step; with
    ``policy == "skip"`` the interval must be 1, so the verdict comes before the update.
    ``any_rank`` combines the flag over all ranks so that every rank stops or skips together.
    """

    def __init__(self, policy: str, any_rank: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.policy, self.any_rank = policy, any_rank
        self.pending = torch.zeros((), dtype=torch.bool, device=device)

    def observe(self, loss: torch.Tensor, model: nn.Module, grads_flag: torch.Tensor | None = None) -> None:
        """Note whether ``loss`` or a gradient of ``model`` is non-finite (on the device). ``grads_flag``:
        a device-side flag that the update already set for a non-finite gradient (the one-pass
        update's, ``FusedPaperSGD.checked_nonfinite``); it is read and cleared instead of a pass
        over the gradients."""
        finite = torch.isfinite(loss.detach()).to(self.pending.device)
        if grads_flag is None:
            finite &= grads_finite(model).to(self.pending.device)
        else:
            finite &= grads_flag.reshape(()).to(self.pending.device) == 0
            grads_flag.zero_()
        self.pending |= ~finite

    def verdict(self, where: str, keeps: str) -> bool:
        """True when the step(s) since the last verdict had non-finite values and are to be skipped.

        Raises :class:`NonFiniteError` under the ``stop`` policy; ``where`` names the step and
        ``keeps`` what the run directory still holds."""
        bad = bool(self.any_rank(self.pending))
        if not bad:
            return False
        if self.policy == "stop":
            raise NonFiniteError(f"the loss or a gradient became non-finite at {where}; {keeps}. "
                                 "Lower --lr, or pass --on-nonfinite skip to skip such steps")
        self.pending.zero_()
        return True


class StallWatch:
    """Says when the training loss sits at ln(classes), the trap of the paper's init (PAPER.md)."""

    def __init__(self, num_classes: int, patience_steps: int) -> None:
        self.chance_loss = math.log(num_classes)
        self.patience_steps = max(1, patience_steps)
        self.since_step: int | None = None

    def observe(self, global_step: int, mean_loss: float) -> bool:
        """Feed the mean loss of the steps up to ``global_step``; True when it is time to warn."""
        if abs(mean_loss - self.chance_loss) > 0.05 * self.chance_loss:
            self.since_step = None
            return False
        if self.since_step is None:
            self.since_step = global_step
        return global_step - self.since_step >= self.patience_steps

    def message(self, global_step: int) -> str:
        steps = global_step - (self.since_step or global_step)
        return (
            f"warning: the training loss has stayed at ln(classes) = {self.chance_loss:.3f} (chance) for "
            f"{steps} steps. The paper's init (weights N(0, 0.01), biases 1) is known to stall like this; "
            "try --init he, --input-scale 0.0039 (pixels in 0-1), or a lower --lr."
        )
