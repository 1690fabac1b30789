"""Whether a resume continues the same run: the recipe in the checkpoint against the one given now.

Changes that keep the run's meaning are accepted and said: how it executes (the runtime keys
of :data:`alexnet.config.RUNTIME_KEYS`: device, threads, workers, checkpoint interval, ...),
more epochs, a new ``--lr`` (a hand-made step of the schedule, as the paper's authors took),
and another split of the same global batch over processes. Anything else would silently make
another run out of this one (the model's shape, its init, the schedule, the parameter groups,
the seed, the global batch, the augmentation, the data), so it is refused with one line naming
every changed key with its old and new value, before anything in the run directory is touched.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch

from alexnet import trained
from alexnet.config import RUNTIME_KEYS, TrainConfig, from_dict
from alexnet.errors import UserError
from alexnet.training.layout import LayoutInfo
from alexnet.training.recipe import epoch_settings
from alexnet.training.state import Position

# Keys a resume may change besides the runtime ones; each has its own rule below.
CONTINUING_KEYS = ("epochs", "lr", "batch_size_per_device")


def check_resumable(saved: dict, source: str) -> None:
    """That ``saved`` holds a whole run state, each part of the right kind, before anything uses it."""
    trained.validate(saved, source, for_inference=True)
    for key in ("velocity", "lrs", "schedule", "rng", "progress"):
        if key not in saved:
            raise UserError(f"{source} has no '{key}' section: it holds weights only, not a run to resume "
                            "(last.pt is what --resume continues)")
    progress, velocity, weights = saved["progress"], saved["velocity"], saved["model"]
    names = {f.name for f in fields(Position)}
    if not isinstance(progress, dict) or set(progress) - names or not {"epoch", "step_in_epoch", "global_step"} <= set(progress):
        raise UserError(f"{source}: its 'progress' section is damaged; resume from an earlier checkpoint or start anew")
    if not isinstance(velocity, dict) or any(
            n not in weights or not isinstance(v, torch.Tensor) or v.shape != weights[n].shape
            or not bool(torch.isfinite(v).all()) for n, v in velocity.items()):
        raise UserError(f"{source}: its velocities do not match its weights; resume from an earlier checkpoint")
    if not isinstance(saved["lrs"], list) or not all(isinstance(x, float) and math.isfinite(x) and x > 0
                                                     for x in saved["lrs"]):
        raise UserError(f"{source}: its learning rates are damaged; resume from an earlier checkpoint")


def check_resume(saved: dict, config: TrainConfig, layout: LayoutInfo, store_identity: str, source: str) -> list[str]:
    """Notes on the accepted changes; raises UserError naming every change that would alter the run.

    ``saved`` is the checkpoint (its ``config``, ``progress``, ``data`` and layout),
    ``layout`` the layout of the processes resuming it, ``store_identity`` the data's."""
    check_resumable(saved, source)
    try:
        old = from_dict(saved["config"])
    except UserError as e:
        raise UserError(f"{source} holds a recipe this version cannot read ({e}); start a new run") from None
    refused = [f"{f.name} {getattr(old, f.name)!r} -> {getattr(config, f.name)!r}" for f in fields(TrainConfig)
               if f.name not in RUNTIME_KEYS + CONTINUING_KEYS and getattr(old, f.name) != getattr(config, f.name)]
    old_layout = LayoutInfo.from_checkpoint(saved)
    if old_layout.global_batch_size != layout.global_batch_size:
        old_global = old_layout.global_batch_size
        if old_global % layout.replicas == 0:
            keep = f"keep {old_global} with --batch-size-per-device {old_global // layout.replicas}"
        else:
            splits = [r for r in range(1, old_global + 1) if old_global % r == 0 and r <= 64]
            keep = (f"{old_global} does not split over {layout.replicas} replicas: resume on "
                    f"{', '.join(map(str, splits[-6:]))} replica(s)")
        refused.append(f"global batch {old_global} -> {layout.global_batch_size} "
                       f"({layout.replicas} replica(s) x {layout.batch_size_per_device}; {keep})")
    old_store = saved.get("data", {}).get("store_identity")
    if old_store is not None and old_store != store_identity:
        refused.append("data: another store than the run was trained on (its images, labels or classes differ)")
    done = int(saved["progress"]["epoch"])
    if config.epochs < done:
        refused.append(f"epochs {old.epochs} -> {config.epochs} (the run has finished {done})")
    if refused:
        raise UserError(f"{source} is a run of another recipe; these changes would alter it: {'; '.join(refused)}. "
                        "Resume with the run's own settings, or start a new run with another --out")
    notes = [f"{f.name} {getattr(old, f.name)!r} -> {getattr(config, f.name)!r}" for f in fields(TrainConfig)
             if f.name in RUNTIME_KEYS + ("epochs", "batch_size_per_device")
             and getattr(old, f.name) != getattr(config, f.name)]
    return [f"resume: {n}" for n in notes + _settings_moved(old, config, done)]


def _settings_moved(old: TrainConfig, new: TrainConfig, done: int) -> list[str]:
    """A note when another ``epochs`` moves the recipe's last-epochs settings (they count back
    from the end: colour noise off, conv1 frozen) off epochs the run has already trained with
    another setting: a finished 3-epoch ``--recipe original`` run extended to 30 trained all its
    first epochs as a run's last ones."""
    moved = [e + 1 for e in range(done) if epoch_settings(old, e) != epoch_settings(new, e)]
    if not moved:
        return []
    flags = [f"--{f.name.replace('_', '-')} {getattr(new, f.name)}" for f in fields(TrainConfig)
             if f.name.endswith("_last_epochs") and getattr(new, f.name)]
    span = f"{moved[0]}-{moved[-1]}" if len(moved) > 1 else f"{moved[0]}"
    return [f"epochs {old.epochs} -> {new.epochs}: epoch{'s' * (len(moved) > 1)} {span} trained with the settings "
            f"that {', '.join(flags)} give the last epochs of a {old.epochs}-epoch run, and this run gives them "
            f"its own last epochs: it is not the run --epochs {new.epochs} trains from the start"]
