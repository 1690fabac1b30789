"""One step of section 5: forward, the float32 loss, backward, the non-finite policy, the update.

The loop hands every batch to :class:`Step` and gets back whether the step was taken; the update
(``optimizer.step()``) happens here and nowhere else in training. What the step watches lives here
too: a non-finite loss or gradient (:class:`NonFiniteGuard`), the epoch's loss and hits summed on
the device (:class:`EpochSums`), and a loss stuck at chance or climbing above it (:class:`LossWatch`).

Values on a GPU are read by the host only every ``sync_every_steps`` steps (:func:`sync_interval`),
since each read waits for the GPU; the flag of a non-finite step is kept on the device until then.
The policy is the same on every device; only the default interval differs, and the tests run the
GPU's interval on the CPU.

The speed levers (:mod:`alexnet.speed`) change how a step computes, never what: ``weights`` (the
forward pass on the bfloat16 copies the one-pass update writes) and ``graph`` (the whole of
:meth:`Step.whole` captured once per epoch as a CUDA graph and replayed).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from alexnet.errors import UserError
from alexnet.runtime import Runtime

GPU_SYNC_EVERY_STEPS = 20


class Step:
    """``step(images, labels, read=..., where=...)``: one training step of ``model`` by ``optimizer``.

    ``on_nonfinite``: ``"stop"`` reads the non-finite flag after the update (the one-pass update
    checks the gradients as it reads them) and raises before any checkpoint holds a bad step;
    ``"skip"`` reads it before the update (every step) and leaves a bad step out. ``any_rank``
    combines a flag over the ranks, so that every rank stops or skips together; ``keeps`` says
    what the run folder still holds, for the message of a stop."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, rt: Runtime, on_nonfinite: str,
                 any_rank: Callable[[torch.Tensor], torch.Tensor], keeps: Callable[[], str]) -> None:
        self.model, self.optimizer, self.rt = model, optimizer, rt
        self.skip_bad = on_nonfinite == "skip"
        self.guard = NonFiniteGuard(on_nonfinite, any_rank, rt.device, keeps)
        self.sums = EpochSums(rt.device)
        self.autocast = rt.autocast()  # made once, entered every step
        self.weights: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        self.graph = None  # a speed.cuda_graph.GraphedStep replaying self.whole, when asked for
        self.loss: torch.Tensor | None = None  # the last step's loss, on the device

    def start_epoch(self) -> None:
        """The epoch's learning rate and frozen layers are set: a graph is captured afresh."""
        if self.graph is not None:
            self.graph.recapture()

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, read: bool,
                 where: Callable[[], str]) -> bool:
        """Train on one batch; False when the step was skipped for non-finite values. ``read``:
        this step reads the device's flags (a host sync); ``where`` names the step for a message."""
        if self.skip_bad:  # the verdict comes before the update (every step is read)
            loss, logits = self.forward_backward(images, labels)
            self.loss = loss
            self.guard.observe(loss, self.model)
            if self.guard.verdict(where):
                return False
            self.optimizer.step()
        else:  # 'stop': after it, so that the one-pass update checks the gradients as it reads them
            loss, logits = self.graph(images, labels) if self.graph is not None else self.whole(images, labels)
            checked = getattr(self.optimizer, "checked_nonfinite", None)
            self.guard.observe(loss, self.model, checked() if checked is not None else None)
            if read:
                self.guard.verdict(where)  # raises before any checkpoint holds a bad step
        self.sums.add(loss, logits, labels)
        self.loss = loss
        return True

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor, *,
                         for_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward under the runtime's autocast, the loss in float32, backward; the loss and logits.
        ``for_graph``: autocast keeps no casts of the weights and the gradients are zeroed in place
        (what a CUDA graph's capture needs)."""
        with self.rt.autocast(cache=False) if for_graph else self.autocast, self.weights():
            logits = self.model(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=not for_graph)
        loss.backward()
        return loss.detach(), logits.detach()

    def whole(self, images: torch.Tensor, labels: torch.Tensor, *,
              for_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and the update, with no look at the values: what a CUDA graph captures."""
        loss, logits = self.forward_backward(images, labels, for_graph=for_graph)
        self.optimizer.step()
        return loss, logits


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
    ``any_rank`` combines the flag over all ranks so that every rank stops or skips together;
    ``keeps()`` says what the run directory still holds.
    """

    def __init__(self, policy: str, any_rank: Callable[[torch.Tensor], torch.Tensor], device: torch.device,
                 keeps: Callable[[], str]) -> None:
        self.policy, self.any_rank, self.keeps = policy, any_rank, keeps
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

    def verdict(self, where: Callable[[], str]) -> bool:
        """True when the step(s) since the last verdict had non-finite values and are to be skipped.

        Raises :class:`NonFiniteError` under the ``stop`` policy, naming the step (``where()``) and
        what the run directory still holds (``keeps()``)."""
        bad = bool(self.any_rank(self.pending))
        if not bad:
            return False
        if self.policy == "stop":
            raise NonFiniteError(f"the loss or a gradient became non-finite at {where()}; {self.keeps()}. "
                                 "Lower --lr, or pass --on-nonfinite skip to skip such steps")
        self.pending.zero_()
        return True


class EpochSums:
    """The training loss and hits of an epoch, summed on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device, dtype=torch.float64)
        self.correct = torch.zeros((), device=device, dtype=torch.float64)
        self.seen = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss += loss.detach().double() * len(labels)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)

    def fold_into(self, pos) -> None:
        """Move the sums into ``pos`` (a :class:`~alexnet.training.state.Position`; one host sync)
        and start again from zero."""
        pos.loss_sum += self.loss.item()
        pos.correct += self.correct.item()
        pos.seen += self.seen
        self.loss.zero_()
        self.correct.zero_()
        self.seen = 0


class LossWatch:
    """Says when the training loss sits at ln(classes) (chance: the trap of the paper's init,
    PAPER.md) for ``patience_steps``, or climbs well above it (a diverging run), with what to change
    for ``config``'s recipe."""

    def __init__(self, num_classes: int, patience_steps: int, config=None) -> None:
        self.num_classes, self.chance_loss = num_classes, math.log(num_classes)
        self.patience_steps = max(1, patience_steps)
        self.since_step: int | None = None
        self.config = config

    def observe(self, global_step: int, mean_loss: float) -> bool:
        """Feed the mean loss of the steps up to ``global_step``; True when it is time to warn of a stall."""
        if abs(mean_loss - self.chance_loss) > 0.05 * self.chance_loss:
            self.since_step = None
            return False
        if self.since_step is None:
            self.since_step = global_step
        return global_step - self.since_step >= self.patience_steps

    def diverging(self, mean_loss: float) -> bool:
        """Whether ``mean_loss`` is well above chance: above ln(classes) + max(1, ln(classes))."""
        return mean_loss > self.chance_loss + max(1.0, self.chance_loss)

    def memorised(self, metrics: list[dict], val_images: int) -> str | None:
        """At the end of a run (``metrics``: its epochs' lines), a line when the network fits the
        training images but never did better than chance on the ``val_images`` validation images."""
        chance = 1 - 1 / self.num_classes
        best = min(m["val_top1_error"] for m in metrics)
        train = metrics[-1]["train_top1_error"]
        if best < chance - 0.05 or train > chance / 2:
            return None
        return (f"note: the network fits the training images (training error {train:.0%}) but did no better than "
                f"chance ({chance:.0%}) on the {val_images} validation images: it memorised them rather than learnt "
                "the classes; more images per class help most (and more validation images measure it better)")

    def message(self, global_step: int) -> str:
        steps = global_step - (self.since_step or global_step)
        return (f"warning: the training loss has stayed at ln(classes) = {self.chance_loss:.3f} (chance) for "
                f"{steps} steps; {self._advice()}")

    def diverging_message(self, mean_loss: float) -> str:
        return (f"warning: the training loss has climbed to {mean_loss:.2f}, well above ln(classes) = "
                f"{self.chance_loss:.3f} (chance): the run is diverging; {self._advice()}")

    def _advice(self) -> str:
        config = self.config
        lower = f"a lower --lr (--lr {config.lr / 10:g})" if config is not None else "a lower --lr"
        if config is None or config.init != "he" or config.input_scale == 1:
            return ("the paper's init (weights N(0, 0.01), biases 1) on raw pixels is known to do this; try "
                    f"--init he --input-scale 0.015625 (as the small-data recipe does), or {lower}")
        return f"try {lower}"
