"""What a run keeps on disk and restores on resume: position, RNG states, velocities, files."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from alexnet.atomic import atomic_write_bytes
from alexnet.config import TrainConfig
from alexnet.errors import UserError


@dataclass
class Position:
    """Where a run stands; saved in every checkpoint so that a resume continues exactly."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    global_step: int = 0
    loss_sum: float = 0.0  # training sums over the current epoch so far
    correct: float = 0.0
    seen: float = 0.0
    skipped_steps: int = 0
    best_val_top1_error: float = math.inf
    stall_warned: bool = False


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

    def message(self, steps: int) -> str:
        return (
            f"warning: the training loss has stayed at ln(classes) = {self.chance_loss:.3f} (chance) for "
            f"{steps} steps. The paper's init (weights N(0, 0.01), biases 1) is known to stall like this; "
            "try --init he, --input-scale 0.0039 (pixels in 0-1), or a lower --lr."
        )


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


class RunFiles:
    """The files of a run directory; only rank 0 writes."""

    def __init__(self, run_dir: Path, write: bool) -> None:
        self.dir, self.write = Path(run_dir), write
        self.metrics, self.last, self.best = self.dir / "metrics.jsonl", self.dir / "last.pt", self.dir / "best.pt"

    def start(self, config: TrainConfig, resume: bool, epochs_done: int) -> None:
        if not self.write:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.dir, os.W_OK):
            raise UserError(f"run directory {self.dir} is not writable; choose another --out")
        # These two writes also reach the crash tests' "checkpoint-write" kill point, as checkpoints do.
        atomic_write_bytes(self.dir / "config.json", json.dumps(config.to_dict(), indent=2).encode(),
                           fault_point="checkpoint-write")
        # Keep only the metrics of epochs the checkpoint holds (a crash may have written one more).
        lines = self.read_metrics() if resume else []
        kept = "".join(json.dumps(m) + "\n" for m in lines if m["epoch"] <= epochs_done)
        atomic_write_bytes(self.metrics, kept.encode(), fault_point="checkpoint-write")

    def read_metrics(self) -> list[dict]:
        if not self.metrics.exists():
            return []
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def append_metrics(self, line: dict) -> None:
        if self.write:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
