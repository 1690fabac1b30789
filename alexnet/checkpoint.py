"""Checkpoints: written atomically, read without executing code.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``: a pickle that carries code is refused. It is written to a
temporary file in the same folder, flushed to disk, then renamed over the old one
(:mod:`alexnet.atomic`), so a crash at any moment leaves either the previous checkpoint or the
new one, never half of one.

Contents (``FORMAT`` marks the file as ours):
    format, version
    model_args        keyword arguments of alexnet.model.AlexNet (architecture and class count)
    data              classes, image_size, channels, mean_image (uint8-derived float tensor)
    config            the resolved TrainConfig as a dict
    model             the single-device (grouped) state dict
    optimizer, schedule, rng, progress   (for resuming; absent from exported weights)
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from alexnet.atomic import atomic_write_bytes
from alexnet.errors import UserError

FORMAT = "alexnet-checkpoint"
VERSION = 1


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Save a checkpoint atomically; ``payload`` must hold only tensors and plain values."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue(), fault_point="checkpoint-write")
    except OSError as e:
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept") from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without executing code; one-line UserError for anything else."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return load(path / name, map_location)
        raise UserError(f"{path} is a folder with no best.pt or last.pt; name a checkpoint file")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes); use an earlier checkpoint")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise UserError(
                f"refused to load {path}: it holds Python objects that would run code when loaded; "
                "only load checkpoints written by alexnet"
            ) from None
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt): {e}") from None
    except Exception as e:  # the unpickler raises many kinds on garbage: all mean "not readable"
        raise UserError(f"{path} is not a readable checkpoint (truncated, corrupt or not a checkpoint): {str(e).splitlines()[0]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is a PyTorch file but not an alexnet checkpoint")
    if payload.get("version", 0) > VERSION:
        raise UserError(f"{path} was written by a newer alexnet (format {payload['version']}); upgrade alexnet")
    return payload


def load_model_state(model: torch.nn.Module, state: dict, source: str) -> None:
    """``model.load_state_dict`` with a one-line explanation when the architecture differs."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(
            f"{source} is for a different architecture (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "use the model flags it was trained with"
        )
    for name, tensor in state.items():
        if own[name].shape != tensor.shape:
            raise UserError(
                f"{source} does not fit this model: {name} is {tuple(tensor.shape)} there and "
                f"{tuple(own[name].shape)} here (another class count, width or input size)"
            )
    model.load_state_dict(state)
