"""Learning (section 5): the paper's SGD rule and its learning-rate schedule.

Section 5 writes the update with the learning rate *inside* the velocity:

    v <- 0.9 v - 0.0005 eps w - eps dL/dw
    w <- w + v

``torch.optim.SGD`` keeps eps outside (v <- m v + g + wd w; w <- w - eps v). The two agree while
eps is constant and differ after every change of eps: with the paper's rule the velocity built
up at the old rate keeps its size and decays, with torch's it is rescaled at once.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

import torch
from torch import nn
from torch.optim import Optimizer


HYPERPARAMETERS = ("lr", "momentum", "weight_decay")


def check_hyperparameters(group: dict) -> None:
    """A ValueError naming the first of ``lr`` (>= 0), ``momentum`` ([0, 1)) and ``weight_decay``
    (>= 0) that is not a finite number in its range."""
    lr, momentum, wd = (group[key] for key in HYPERPARAMETERS)
    for name, value in (("learning rate", lr), ("momentum", momentum), ("weight decay", wd)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if lr < 0:
        raise ValueError(f"learning rate must be >= 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if wd < 0:
        raise ValueError(f"weight decay must be >= 0, got {wd}")


class PaperSGD(Optimizer):
    """Stochastic gradient descent with momentum and weight decay exactly as section 5 writes it.

    Per parameter group: ``lr`` (eps), ``momentum`` (0.9), ``weight_decay`` (0.0005).
    The velocity is kept in ``state[p]["velocity"]`` and starts at zero. A group with
    ``frozen=True`` is not updated at all (its weights and velocities stay as they are), as
    cuda-convnet skips a layer whose rate is 0; a group's ``lr_scale`` (1 if absent) multiplies
    its ``lr`` in the update, a per-layer rate that the schedule's divisions leave as it is (the
    released run's conv1 at a tenth of the others' rate); see :func:`parameter_groups`.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        check_hyperparameters(defaults)
        super().__init__(params, defaults)  # each group is checked by add_param_group

    def add_param_group(self, param_group: dict) -> None:
        """As torch's, with the group's lr, momentum and weight decay checked, and a parameter
        named twice refused (its velocity would be updated twice a step)."""
        if isinstance(param_group, dict):
            check_hyperparameters({key: param_group.get(key, self.defaults[key]) for key in HYPERPARAMETERS})
            params = param_group.get("params")
            if params is not None and not isinstance(params, (torch.Tensor, set)):  # torch refuses a set
                params = list(params)  # a generator is read once, here
                param_group["params"] = params  # as torch's own add_param_group does
            if isinstance(params, list) and len({id(p) for p in params}) != len(params):
                raise ValueError("a parameter is listed twice in one PaperSGD group; list each once")
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, refusing hyperparameters out of range and velocities whose shape is not
        their parameter's (a state saved for another network)."""
        saved_groups = state_dict.get("param_groups", ())
        for group in saved_groups:
            check_hyperparameters({key: group.get(key, self.defaults[key]) for key in HYPERPARAMETERS})
        if len(saved_groups) == len(self.param_groups):  # torch refuses other group counts and sizes itself
            state = state_dict.get("state", {})
            for saved, group in zip(saved_groups, self.param_groups):
                for index, p in zip(saved.get("params", ()), group["params"]):
                    v = state.get(index, {}).get("velocity")
                    if isinstance(v, torch.Tensor) and v.shape != p.shape:
                        raise ValueError(f"the optimizer state holds a velocity of shape {tuple(v.shape)} for a "
                                         f"parameter of shape {tuple(p.shape)}: it was saved for another network")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if any(p.grad is not None and p.grad.is_sparse for group in self.param_groups for p in group["params"]):
            # refused before any group is updated: a half-made step would be lost in the error
            raise TypeError("PaperSGD does not support sparse gradients (nn.Embedding(sparse=True) and the like)")
        for group in self.param_groups:
            if group.get("frozen", False):
                continue
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            grads = [p.grad for p in params]
            lr, m, wd = group["lr"] * group.get("lr_scale", 1.0), group["momentum"], group["weight_decay"]
            # v <- m v - wd lr w - lr g ; w <- w + v   (one fused pass per group)
            torch._foreach_mul_(velocities, m)
            if wd != 0:
                torch._foreach_add_(velocities, params, alpha=-wd * lr)
            torch._foreach_add_(velocities, grads, alpha=-lr)
            torch._foreach_add_(params, velocities)
        return loss


GROUP_SCHEMES = ("paper", "uniform", "cuda-convnet", "caffe", "original")


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, scheme: str = "paper",
                     own_layers: tuple[str, ...] = ()) -> list[dict]:
    """Parameter groups for :class:`PaperSGD`.

    * ``"paper"``: every parameter at the same lr (section 5); the weights with weight decay, the
      biases without: section 5 writes the decay for the weights w, and the authors' configs put
      none on biases (``wball=0``).
    * ``"uniform"``: every parameter with the same lr and weight decay, biases included.
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
    split_biases = scheme != "uniform"
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
                group.update(weight_decay=0.0)
                if scheme != "paper":
                    group.update(lr=2 * lr, fixed_lr=scheme == "cuda-convnet")
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
        check_optimizer(optimizer)
        check_factor(factor)
        if not _whole(patience_epochs) or patience_epochs < 1:
            raise ValueError(f"patience must be a whole number of epochs >= 1, got {patience_epochs!r}")
        if not _finite(threshold) or threshold < 0:
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if not _whole(max_reductions) or max_reductions < 0:
            raise ValueError(f"max_reductions must be a whole number >= 0, got {max_reductions!r}")
        self.optimizer = optimizer
        self.factor, self.patience_epochs = factor, patience_epochs
        self.threshold, self.max_reductions = threshold, max_reductions
        self.best = float("inf")
        self.epochs_without_improvement = 0
        self.reductions = 0

    def step(self, val_error: float) -> bool:
        if isinstance(val_error, bool) or not isinstance(val_error, numbers.Real):
            raise TypeError(f"PlateauSchedule.step takes the epoch's validation error as a number, got {val_error!r}")
        if val_error < self.best - self.threshold:  # NaN never improves
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
        _check_keys("PlateauSchedule", state, ("best", "epochs_without_improvement", "reductions"))
        self.best = float(state["best"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.reductions = int(state["reductions"])


class MilestoneSchedule:
    """Multiply the learning rate by ``factor`` after each epoch listed in ``milestones``.

    Call :meth:`step` once at the end of every epoch (the validation error is ignored).
    ``milestones=(30, 60, 80)`` gives three reductions in 90 epochs, as the paper's run had.
    """

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int] = (30, 60, 80), *, factor: float = 0.1) -> None:
        check_optimizer(optimizer)
        check_factor(factor)
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Iterable):
            raise ValueError(f"milestones must be a list of epochs, got {milestones!r}")
        milestones = tuple(milestones)
        if not all(_whole(m) and m >= 1 for m in milestones):  # "30" would be the epochs 3 and 0
            raise ValueError(f"milestones must be whole numbers of epochs >= 1, got {milestones!r}")
        if len(set(milestones)) != len(milestones):
            raise ValueError(f"milestones must list each epoch once, got {milestones!r} (factor sets how much "
                             "one milestone divides the lr)")
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
        _check_keys("MilestoneSchedule", state, ("epochs_done",))
        self.epochs_done = int(state["epochs_done"])


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_factor(factor) -> None:
    if not _finite(factor) or not 0 < factor < 1:
        raise ValueError(f"factor must be a number in (0, 1), got {factor!r}")


def check_optimizer(optimizer) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"a schedule needs the optimizer whose learning rates it changes, got {type(optimizer).__name__}")


def _check_keys(owner: str, state, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"not a {owner} state: it lacks {', '.join(missing)}")


def scale_lr_(optimizer: Optimizer, factor: float) -> None:
    """Multiply every group's lr by ``factor``, except groups marked ``fixed_lr`` (the biases of the
    ``"cuda-convnet"`` scheme)."""
    for group in optimizer.param_groups:
        if not group.get("fixed_lr", False):
            group["lr"] *= factor
