"""Learning (section 5): the paper's SGD rule and its learning-rate schedule.

Section 5 writes the update with the learning rate *inside* the velocity:

    v <- 0.9 v - 0.0005 eps w - eps dL/dw
    w <- w + v

``torch.optim.SGD`` keeps eps outside (v <- m v + g + wd w; w <- w - eps v). The two agree while
eps is constant and differ after every change of eps: with the paper's rule the velocity built
up at the old rate keeps its size and decays, with torch's it is rescaled at once.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


class PaperSGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay exactly as section 5 writes it.

    Per parameter group: ``lr`` (eps), ``momentum`` (0.9), ``weight_decay`` (0.0005).
    The velocity is kept in ``state[p]["velocity"]`` and starts at zero. A group with
    ``frozen=True`` is not updated at all (its weights and velocities stay as they are), as
    cuda-convnet skips a layer whose rate is 0; see :func:`parameter_groups`.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("frozen", False):
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("PaperSGD does not support sparse gradients")
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            grads = [p.grad for p in params]
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            # v <- m v - wd lr w - lr g ; w <- w + v   (one fused pass per group)
            torch._foreach_mul_(velocities, m)
            if wd != 0:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)
        return loss


GROUP_SCHEMES = ("paper", "cuda-convnet", "caffe", "original")


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, scheme: str = "paper",
                     own_layers: tuple[str, ...] = ()) -> list[dict]:
    """Parameter groups for :class:`PaperSGD`.

    * ``"paper"``: every parameter with the same lr and weight decay (section 5).
    * ``"cuda-convnet"``: the released configs (layer-params-145.cfg): weights at ``lr`` with
      weight decay; biases at ``2 * lr`` with no weight decay, and that rate stays fixed while
      the schedule divides the weights' (the configs end with epsW 0.00001 and epsB 0.02, the
      run's log lowering only epsW). Bias groups carry ``fixed_lr=True``, which :func:`scale_lr_`
      leaves alone.
    * ``"caffe"``: Caffe's bvlc_alexnet (lr_mult 1 / 2, decay_mult 1 / 0): biases at twice the
      weights' rate with no weight decay, divided by the schedule alike, so the ratio stays 2.
      ``"original"`` is the old name of this scheme, kept so that recipes that name it load.

    ``own_layers`` names layers (``"conv1"``, ``"fc6"``, ...) whose parameters get groups of
    their own, so that they can be frozen (``frozen=True``) while the rest trains. Every group
    records which layer it holds in ``"layer"`` (None for the shared groups) and ``"kind"``.
    """
    if scheme not in GROUP_SCHEMES:
        raise ValueError(f"parameter group scheme must be one of {GROUP_SCHEMES}, got {scheme!r}")
    named = list(model.named_parameters())
    layer_of = {n: _layer_name(n) for n, _ in named}
    unknown = sorted(set(own_layers) - set(layer_of.values()))
    if unknown:
        raise ValueError(f"no layer named {', '.join(unknown)} in this network (layers: "
                         f"{', '.join(dict.fromkeys(layer_of.values()))})")
    split_biases = scheme != "paper"
    groups: list[dict] = []
    for layer in (*own_layers, None):
        for kind in (("weights", "biases") if split_biases else ("all",)):
            params = [p for n, p in named
                      if (layer_of[n] == layer if layer is not None else layer_of[n] not in own_layers)
                      and (kind == "all" or (kind == "biases") == n.endswith("bias"))]
            if not params:
                continue
            group = dict(params=params, lr=lr, weight_decay=weight_decay, layer=layer, kind=kind)
            if kind == "biases":
                group.update(lr=2 * lr, weight_decay=0.0, fixed_lr=scheme == "cuda-convnet")
            groups.append(group)
    return groups


def _layer_name(parameter_name: str) -> str:
    """``features.conv1.weight`` -> ``conv1``."""
    parts = parameter_name.split(".")
    return parts[-2] if len(parts) >= 2 else parts[0]


class PlateauSchedule:
    """Divide the learning rate by ``1/factor`` when validation error stops improving.

    Section 5: "divide the learning rate by 10 when the validation error rate stopped improving
    with the current learning rate ... reduced three times prior to termination".

    Call :meth:`step` once per epoch with that epoch's validation error. An epoch improves when
    its error is below ``best`` by more than ``threshold`` (absolute, in error units); ``best``
    moves only on such epochs, so gains smaller than ``threshold`` accumulate until they count
    and a slow, steady improvement is not taken for a plateau (as in torch's ReduceLROnPlateau).
    After ``patience_epochs`` epochs without improvement every group's lr is multiplied by
    ``factor``, at most ``max_reductions`` times. Returns True on the epochs it reduces.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        factor: float = 0.1,
        patience_epochs: int = 5,
        threshold: float = 1e-3,
        max_reductions: int = 3,
    ) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience_epochs < 1:
            raise ValueError(f"patience must be at least 1 epoch, got {patience_epochs}")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if max_reductions < 0:
            raise ValueError(f"max_reductions must be >= 0, got {max_reductions}")
        self.optimizer = optimizer
        self.factor, self.patience_epochs = factor, patience_epochs
        self.threshold, self.max_reductions = threshold, max_reductions
        self.best = float("inf")
        self.epochs_without_improvement = 0
        self.reductions = 0

    def step(self, val_error: float) -> bool:
        if val_error < self.best - self.threshold:
            self.best = val_error
            self.epochs_without_improvement = 0
            return False
        self.epochs_without_improvement += 1
        if self.epochs_without_improvement < self.patience_epochs or self.reductions >= self.max_reductions:
            return False
        scale_lr_(self.optimizer, self.factor)
        self.reductions += 1
        self.epochs_without_improvement = 0
        return True

    def state_dict(self) -> dict:
        return dict(
            best=self.best,
            epochs_without_improvement=self.epochs_without_improvement,
            reductions=self.reductions,
        )

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.reductions = int(state["reductions"])


class MilestoneSchedule:
    """Multiply the learning rate by ``factor`` after each epoch listed in ``milestones``.

    Call :meth:`step` once at the end of every epoch (the validation error is ignored).
    ``milestones=(30, 60, 80)`` gives three reductions in 90 epochs, as the paper's run had.
    """

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int] = (30, 60, 80), *, factor: float = 0.1) -> None:
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.optimizer = optimizer
        self.milestones = tuple(sorted(int(m) for m in milestones))
        self.factor = factor
        self.epochs_done = 0

    def step(self, val_error: float | None = None) -> bool:
        self.epochs_done += 1
        if self.epochs_done in self.milestones:
            scale_lr_(self.optimizer, self.factor)
            return True
        return False

    def state_dict(self) -> dict:
        return dict(epochs_done=self.epochs_done)

    def load_state_dict(self, state: dict) -> None:
        self.epochs_done = int(state["epochs_done"])


def scale_lr_(optimizer: Optimizer, factor: float) -> None:
    """Multiply every group's lr by ``factor``, except groups marked ``fixed_lr`` (the biases of the
    ``"cuda-convnet"`` scheme)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] *= factor
