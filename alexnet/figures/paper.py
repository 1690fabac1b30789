"""The paper's figures from a trained network: figure 1 (training error, ReLU vs tanh) and figure 4
(top-5 predictions and the training images nearest in fc7 feature space). Figure 3 (conv1's
kernels) is :func:`alexnet.figures.plots.save_filters`.

Figure 4 (section 6.1): "If two images produce feature activation vectors with a small Euclidean
separation, we can say that the higher levels of the neural network consider them to be similar.
Figure 4 shows five images from the test set and the six images from the training set that are
most similar to each of them according to this measure." The feature vector is the last hidden
layer, fc7 (4096-d in the paper; ``model.fc7_features``), of the centre crop in eval mode.

The nearest training images are found in one pass over the training set in batches, keeping only
the running k best per query, so memory holds one batch of features, never the whole set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from alexnet.data.store import Split
from alexnet.evaluate import Member
from alexnet.display import printable
from alexnet.figures.plots import new_figure, save_figure


def spread_indices(total: int, count: int | None) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when count is None or larger)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, max(count, 1)).round().astype(np.int64))


def split_batches(split: Split, indices: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
    """(uint8 images (B, S, S, C), labels (B,), indices (B,)) of ``split`` at ``indices``, in order."""
    for start in range(0, len(indices), batch_size):
        idx = np.asarray(indices[start : start + batch_size])
        yield torch.from_numpy(np.ascontiguousarray(split.images[idx])), torch.from_numpy(split.labels[idx]), idx


@torch.no_grad()
def features(member: Member, images_u8: torch.Tensor) -> torch.Tensor:
    """fc7 features (N, D) of the centre crops, float32 on the model's device (eval mode)."""
    member.model.eval()
    device = next(member.model.parameters()).device
    return member.model.fc7_features(member.preprocess.center(images_u8.to(device))).float()


@torch.no_grad()
def nearest_neighbours(
    queries: torch.Tensor,
    batches: Iterator[tuple[torch.Tensor, np.ndarray]],
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows nearest (Euclidean) to each query among all ``batches`` of (features, indices).

    Returns (indices (Q, k) int64, distances (Q, k) float64), nearest first; a row has fewer than
    k real entries (index -1, distance inf) only if fewer than k candidates were given. Candidates
    are ranked by |q|^2 + |b|^2 - 2 q.b in float64, one batch at a time; the distances returned are
    recomputed directly from the kept feature vectors.
    """
    q = queries.double()
    n_q, dim = q.shape
    best_d = torch.full((n_q, k), float("inf"), dtype=torch.float64, device=q.device)
    best_i = torch.full((n_q, k), -1, dtype=torch.int64, device=q.device)
    best_f = torch.zeros((n_q, k, dim), dtype=torch.float64, device=q.device)
    q_sq = (q * q).sum(1, keepdim=True)
    for feats, idx in batches:
        b = feats.to(q.device).double()
        d2 = (q_sq + (b * b).sum(1)[None, :] - 2 * q @ b.T).clamp_min(0)
        cand_d = torch.cat([best_d, d2], dim=1)
        cand_i = torch.cat([best_i, torch.as_tensor(idx, device=q.device).expand(n_q, -1)], dim=1)
        order = cand_d.topk(k, dim=1, largest=False).indices  # positions < k: kept ones; >= k: this batch
        best_d, best_i = cand_d.gather(1, order), cand_i.gather(1, order)
        kept = best_f.gather(1, order.clamp(max=k - 1)[:, :, None].expand(-1, -1, dim))
        best_f = torch.where((order < k)[:, :, None], kept, b[(order - k).clamp(min=0)])
    exact = (best_f - q[:, None, :]).norm(dim=2)
    exact = torch.where(best_i >= 0, exact, torch.full_like(exact, float("inf")))
    return best_i.cpu().numpy(), exact.cpu().numpy()


def nearest_training_images(
    member: Member,
    split: Split,
    query_features: torch.Tensor,
    *,
    k: int = 6,
    batch_size: int = 256,
    indices: np.ndarray | None = None,
    progress=lambda it, total: it,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` images of ``split`` (or of its ``indices``) whose fc7 features are nearest each query."""
    indices = np.arange(len(split)) if indices is None else np.asarray(indices)
    total = -(-len(indices) // batch_size)
    stream = ((features(member, images), idx) for images, _, idx in split_batches(split, indices, batch_size))
    return nearest_neighbours(query_features, progress(stream, total), k)


# --- drawing -----------------------------------------------------------------------------------


def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_neighbours(
    rows: Sequence[dict],
    classes: Sequence[str],
    path: str | Path,
    *,
    dpi: int = 100,
) -> Path:
    """Figure 4 as one PNG, a row per query image.

    Each row dict: ``image`` (S, S, C) uint8, ``label`` (int), ``top`` [(class index, probability)]
    (most probable first), ``neighbours`` [(image, label, distance)]. The bar of the correct class
    is red, the others blue (the paper marks the correct label's bar in red).
    """
    k = max((len(r["neighbours"]) for r in rows), default=0)
    top_k = max((len(r["top"]) for r in rows), default=0)
    classes = [printable(c) for c in classes]  # names that are not valid UTF-8 drawn with U+FFFD
    fig = new_figure(figsize=(1.3 * (k + 1) + 3.2, 1.45 * len(rows) + 0.3))
    grid = fig.add_gridspec(len(rows), k + 2, width_ratios=[1, 2.4] + [1] * k, wspace=0.15, hspace=0.45,
                            left=0.02, right=0.98, bottom=0.04, top=1 - 0.55 / (1.45 * len(rows) + 0.3))
    for r, row in enumerate(rows):
        ax = fig.add_subplot(grid[r, 0])
        _show(ax, row["image"])
        ax.set_title(classes[row["label"]], fontsize=8)
        bars = fig.add_subplot(grid[r, 1])
        top = list(row["top"])[::-1]
        bars.barh(range(len(top)), [p for _, p in top],
                  color=["#e87070" if c == row["label"] else "#8fb3dc" for c, _ in top])
        for y, (c, p) in enumerate(top):  # class names written on the bars, as in the paper
            bars.text(0.02, y, f"{classes[c]}  {p:.0%}", va="center", fontsize=7)
        bars.set_yticks([])
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
        for j, (image, label, distance) in enumerate(row["neighbours"]):
            ax = fig.add_subplot(grid[r, j + 2])
            _show(ax, image)
            ax.set_title(f"{classes[label]}\nd={distance:.3g}", fontsize=6)
    fig.suptitle(f"validation images, their top-{top_k} predictions, and the {k} training images nearest in fc7 "
                 "feature space (Euclidean distance d)", fontsize=8)
    return save_figure(fig, path, dpi)


def plot_training_error(curves: Sequence[dict], level: float, path: str | Path, *, title: str = "") -> Path:
    """Figure 1: training error against epochs, solid for ReLU and dashed for tanh, one line per seed.

    Each curve dict: ``activation``, ``seed``, ``points`` [{"epoch": float, "train_error": float}].
    A dotted horizontal line marks ``level`` (the paper's 25%).
    """
    fig = new_figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    colours = {"relu": "tab:blue", "tanh": "tab:red"}
    labelled = set()
    for c in curves:
        act = c["activation"]
        label = None if act in labelled else {"relu": "ReLU (solid)", "tanh": "tanh (dashed)"}.get(act, act)
        labelled.add(act)
        pts = c["points"]
        ax.plot([p["epoch"] for p in pts], [p["train_error"] for p in pts], color=colours.get(act, "k"),
                linestyle="-" if act == "relu" else "--", alpha=0.8, label=label)
    ax.axhline(level, color="k", linestyle=":", linewidth=1, label=f"{level:.0%} training error")
    ax.set_xlabel("epochs")
    ax.set_ylabel("training error rate")
    ax.set_ylim(0, min(1.0, max([p["train_error"] for c in curves for p in c["points"]] + [level]) * 1.05))
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(printable(title), fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)
