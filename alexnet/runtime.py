"""Where and how the arithmetic runs: the device, the precision and the memory layout.

One home for these choices, made from the recipe's runtime keys (``device``, ``precision``,
``channels_last``) and the machine. The model itself never chooses (STYLE.md: a pure nn.Module).

* device ``auto``: this process's GPU if CUDA is available, else the CPU; ``cuda``: GPU
  ``LOCAL_RANK`` under torchrun; ``cuda:N``: one GPU, for a single process only.
* precision ``auto``: bf16 autocast on CUDA (the weights, the update and the loss stay fp32),
  fp32 elsewhere.
* channels_last ``auto``: on CUDA, where cuDNN's convolutions run fastest in NHWC.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from alexnet.devices import validate_device_name
from alexnet.errors import UserError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # "fp32" or "bf16"
    channels_last: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        return autocast_for(self.device, self.precision, cache)


def resolve_device(device: str | torch.device, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """``"auto"``: this process's GPU if there is one, else the CPU; ``"cuda"``: GPU ``local_rank``."""
    name = str(device)
    validate_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(name)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} was asked for but CUDA is not available: use --device cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank)
        elif world_size > 1:
            raise UserError(
                f"--device {name} puts every one of the {world_size} processes on one GPU: "
                "use --device cuda (or auto) and let torchrun's LOCAL_RANK choose each process's GPU"
            )
        if resolved.index >= torch.cuda.device_count():
            raise UserError(f"device {resolved} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return resolved


def pick_device(name: str = "auto") -> torch.device:
    """The device for a single process: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ``cuda:N``."""
    try:
        return resolve_device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def resolve_runtime(config, device: torch.device) -> Runtime:
    """The precision and layout that ``config`` (a TrainConfig) asks for on ``device``."""
    precision = config.precision if config.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    channels_last = config.channels_last == "on" or (config.channels_last == "auto" and device.type == "cuda")
    return Runtime(device, precision, channels_last)


def autocast_for(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision == "bf16"``, nothing otherwise. ``cache=False``: autocast
    keeps no casts of the weights between its operations (as a CUDA graph's capture needs)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()
