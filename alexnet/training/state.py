"""The run state: everything a resumed run needs to continue exactly where it stood.

It is the weights, PaperSGD's velocities, the learning rates, the schedule, the position in the
data (epoch, step in the epoch) with the epoch's partial sums, every rank's random streams, and
the layout the checkpoint was written in (:class:`~alexnet.training.layout.LayoutInfo`).
Weights and velocities are stored in the single-device layout, so a run resumes on any layout
with the same global batch (then step k of an epoch covers the same images: the loader's
shards are strided over the global order). The random streams continue exactly only in the
same layout; in another they are reseeded from the seed and the global step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from alexnet.training.layout import DataParallel, LayoutInfo


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint so that a resume continues exactly."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    global_step: int = 0
    loss_sum: float = 0.0  # training sums over the current epoch so far, over all replicas
    correct: float = 0.0
    seen: float = 0.0
    skipped_steps: int = 0
    best_val_top1_error: float = math.inf
    stall_warned: bool = False
    diverging_warned: bool = False

    def next_epoch(self, val_top1_error: float) -> "Position":
        return Position(epoch=self.epoch + 1, global_step=self.global_step, skipped_steps=self.skipped_steps,
                        best_val_top1_error=min(self.best_val_top1_error, val_top1_error),
                        stall_warned=self.stall_warned, diverging_warned=self.diverging_warned)


@dataclass
class RunState:
    model: nn.Module  # this rank's part, on its device
    optimizer: torch.optim.Optimizer
    schedule: object  # PlateauSchedule or MilestoneSchedule
    generator: torch.Generator  # the augmentation's draws
    pos: Position

    def checkpoint(self, layout: DataParallel, batch_size_per_device: int) -> dict:
        """The resumable part of a checkpoint, in the single-device layout (collective: every rank
        calls it; the result is complete on rank 0)."""
        rng = layout.gather_objects({k: v.cpu() for k, v in rng_state(layout.device, self.generator).items()})
        progress = asdict(self.pos)
        sums = layout.reduce(torch.tensor([self.pos.loss_sum, self.pos.correct, self.pos.seen], dtype=torch.float64))
        progress.update(zip(("loss_sum", "correct", "seen"), sums.tolist()))
        return dict(model=layout.to_single(self.model, self.model.state_dict()),
                    velocity=layout.to_single(self.model, velocities(self.model, self.optimizer)),
                    lrs=[g["lr"] for g in self.optimizer.param_groups], schedule=self.schedule.state_dict(),
                    rng=rng, progress=progress, layout=asdict(layout.info(batch_size_per_device)))

    def restore(self, saved: dict, layout: DataParallel, *, seed: int, batch_size_per_device: int,
                keep_lrs: bool) -> None:
        """Continue from ``saved`` (a checkpoint the caller checked is of this run)."""
        self.model.load_state_dict(layout.from_single(saved["model"]))
        load_velocities(self.model, self.optimizer, layout.from_single(saved["velocity"]))
        self.schedule.load_state_dict(saved["schedule"])
        if keep_lrs:
            for group, lr in zip(self.optimizer.param_groups, saved["lrs"], strict=True):
                group["lr"] = lr
        self.pos = Position(**saved["progress"])
        if layout.groups.replica > 0:  # the saved partial sums cover every replica: count them once
            self.pos.loss_sum = self.pos.correct = self.pos.seen = 0.0
        old = LayoutInfo.from_checkpoint(saved)
        if old == layout.info(batch_size_per_device) and len(saved["rng"]) == layout.proc.world_size:
            set_rng_state(saved["rng"][layout.proc.rank], layout.device, self.generator)
        else:  # another layout of the ranks: reseed from where the run stands
            layout.seed(seed, self.generator, global_step=self.pos.global_step)


def rng_state(device: torch.device, generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "augment": generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["augment"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def velocities(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """PaperSGD's velocity of every parameter, by parameter name (a layout-independent form)."""
    return {n: optimizer.state[p]["velocity"] for n, p in model.named_parameters() if "velocity" in optimizer.state[p]}


def load_velocities(model: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, torch.Tensor]) -> None:
    for n, p in model.named_parameters():
        if n in saved:
            optimizer.state[p]["velocity"] = saved[n].to(p.device, p.dtype).clone()
