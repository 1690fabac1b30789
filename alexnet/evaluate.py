"""Testing (section 4.1): centre crop or ten crops, single nets or averaged ensembles.

"At test time, the network makes a prediction by extracting five 224x224 patches (the four corner
patches and the center patch) as well as their horizontal reflections (hence ten patches in all),
and averaging the predictions made by the network's softmax layer on the ten patches."
Ensembles (section 6: "averaging the predictions of five similar CNNs") average softmax too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from alexnet.data.augment import EvalPreprocess, ten_crop_probabilities
from alexnet.errors import UserError
from alexnet.faults import kill_point
from alexnet.runtime import autocast_for


@dataclass
class Member:
    """One network of an ensemble with the preprocessing it was trained for
    (:func:`alexnet.trained.load_member` reads one)."""

    model: nn.Module
    preprocess: EvalPreprocess
    classes: list[str]
    source: str = ""
    image_size: int = 0  # side of the stored images the network was trained from
    channels: int = 3


def check_compatible(members: Sequence[Member], classes: Sequence[str] | None = None) -> None:
    first = members[0]
    for m in members[1:]:
        if m.classes != first.classes:
            raise UserError(f"{m.source} was trained on other classes than {first.source}; an ensemble needs the same classes")
    if classes is not None and list(classes) != first.classes:
        raise UserError(f"{first.source} was trained on other classes than this data set's ({len(classes)} classes)")


def check_distinct(members: Sequence[Member]) -> None:
    """One line when two members are the same network (the same file named twice, a run folder and its
    best.pt, an export of a checkpoint beside it): its softmax would count twice in the average."""
    states = [m.model.state_dict() for m in members]
    for j in range(1, len(members)):
        for i in range(j):
            a, b = states[i], states[j]
            if type(members[i].model) is type(members[j].model) and a.keys() == b.keys() and all(
                    a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a):
                raise UserError(f"{members[j].source} is the same network as {members[i].source} (identical weights); "
                                "an ensemble averages different networks, so name each once")


def check_store(member: Member, store, data_name: str) -> None:
    """One line when ``member`` was trained on images of another size or channel count than ``store`` holds."""
    if (member.image_size, member.channels) != (store.image_size, store.channels):
        raise UserError(f"{member.source} was trained on {member.image_size} px images with {member.channels} "
                        f"channel(s), {data_name} holds {store.image_size} px images with {store.channels}; "
                        "give the data set it was trained on (or one prepared with the same --image-size and --channels)")


@torch.no_grad()
def probabilities(members: Sequence[Member], images_u8: torch.Tensor, *, ten_crop: bool, precision: str = "fp32") -> torch.Tensor:
    """Mean softmax over the members (and over the ten crops when asked), float32 (N, classes)."""
    if not members:
        raise ValueError("probabilities needs at least one network (a list of Member)")
    total = None
    for m in members:
        device = next(m.model.parameters()).device
        x = images_u8.to(device, non_blocking=True)
        with autocast_for(device, precision):
            if ten_crop:
                p = ten_crop_probabilities(m.model, m.preprocess.ten_crops(x))
            else:
                p = torch.softmax(m.model(m.preprocess.center(x)).float(), dim=1)
        p = p.float()
        total = p if total is None else total + p.to(total.device)
    return total / len(members)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of top-1 and top-k hits, as 0-d tensors on probs' device (no host sync)."""
    k = min(k, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    hits = top == labels.to(probs.device)[:, None]
    return hits[:, 0].sum(), hits.any(dim=1).sum()


def evaluate(
    members: Sequence[Member],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    ten_crop: bool = False,
    precision: str = "fp32",
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict:
    """Top-1 and top-5 error of the (averaged) members over ``batches`` of uint8 images.

    ``reduce`` sums the counts across ranks in a distributed run. Images whose output holds NaN or
    inf are counted as ``nonfinite_images`` (present only when there are any): their classes
    have no order, so callers must not report the error rates as a result then.
    """
    if not members:
        raise ValueError("evaluate needs at least one network (a list of Member)")
    for m in members:
        m.model.eval()
    counts = torch.zeros(4, dtype=torch.float64)
    for images, labels in progress(batches):
        kill_point("evaluate")
        probs = probabilities(members, images, ten_crop=ten_crop, precision=precision)
        top1, top5 = topk_correct(probs, labels)
        nonfinite = (~torch.isfinite(probs)).any(dim=1).sum()
        counts += torch.stack([top1.cpu().double(), top5.cpu().double(), torch.tensor(float(len(labels)), dtype=torch.float64),
                               nonfinite.cpu().double()])
    counts = reduce(counts)
    top1, top5, seen, nonfinite = counts.tolist()
    if seen == 0:
        raise UserError("the evaluation split has no images")
    result = {"top1_error": 1 - top1 / seen, "top5_error": 1 - top5 / seen, "images": int(seen)}
    if nonfinite:  # such rows rank their classes arbitrarily: the error rates above mean nothing
        result["nonfinite_images"] = int(nonfinite)
    return result


def top5_is_informative(num_classes: int) -> bool:
    """Whether top-5 error says anything: with 5 classes or fewer every label is among the top five."""
    return num_classes > 5


def top5_table(probs: np.ndarray, classes: Sequence[str], k: int = 5) -> list[list[tuple[str, float]]]:
    """For each row of ``probs``, the k most probable (class, probability) pairs."""
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
