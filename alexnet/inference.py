"""Using a trained network: device choice, and top-k predictions for image files."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from alexnet.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """The device for a single process: ``auto`` (a GPU if there is one), ``cpu``, ``cuda``, ``cuda:N``."""
    from alexnet.distributed import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None


def progress_bar(iterable: Iterable, total: int, desc: str, enabled: bool = True) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def predict_files(
    checkpoint_path: str, paths: Sequence[str], *, device: torch.device, ten_crop: bool = False, top: int = 5
) -> Iterator[tuple[str, list[tuple[str, float]] | str]]:
    """Yield (path, [(class, probability)...]) per image, or (path, reason) for one that can't be read.

    Each image is prepared as the training set was (shorter side to the stored size, centre
    crop, same channels), then evaluated like a validation image.
    """
    from alexnet.data.images import BadImage, decode_file
    from alexnet.evaluate import load_member, probabilities, top5_table

    if top < 1:
        raise UserError("--top must be at least 1")
    member = load_member(checkpoint_path, device)
    for path in paths:
        try:
            image, _ = decode_file(path, member.image_size, member.channels)
        except BadImage as e:
            yield path, str(e)
            continue
        probs = probabilities([member], torch.from_numpy(np.array(image))[None], ten_crop=ten_crop)
        yield path, top5_table(probs.cpu().numpy(), member.classes, k=min(top, len(member.classes)))[0]
