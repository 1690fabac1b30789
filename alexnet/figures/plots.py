"""Pictures a person would rather look at than read: training curves and conv1's kernels (figure 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from alexnet.atomic import atomic_write


def new_figure(**kwargs):
    """A matplotlib Figure that belongs to no window and no backend (``kwargs`` as for ``Figure``).

    Not pyplot: a Figure made directly draws itself to a file with Agg, so the plotting functions
    work headless and change no process-wide matplotlib state (the backend is the CLI's choice),
    and nothing has to be closed to free it.
    """
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` atomically to ``path`` (its folder made if missing; format from the ending) and return the path.

    A failed write (full disk, killed process) leaves the previous file as it was."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    return path


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """A uint8 (H, W, 3) array as a PNG file, written atomically."""
    from PIL import Image

    path = Path(path)
    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
    return path


def plot_curves(metrics: Sequence[dict], path: str | Path) -> Path:
    """Loss and error per epoch (train and validation) and the learning rate, as one PNG."""
    epochs = [m["epoch"] for m in metrics]
    fig = new_figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    axes[0].plot(epochs, [m["train_loss"] for m in metrics], marker="o", label="train loss")
    axes[0].set_title("training loss")
    axes[1].plot(epochs, [100 * m["train_top1_error"] for m in metrics], marker="o", label="train top-1")
    axes[1].plot(epochs, [100 * m["val_top1_error"] for m in metrics], marker="o", label="val top-1")
    axes[1].plot(epochs, [100 * m["val_top5_error"] for m in metrics], marker="o", label="val top-5")
    axes[1].set_title("error (%)")
    axes[1].legend()
    axes[2].plot(epochs, [m["lr"] for m in metrics], marker="o")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def filter_grid(weight: torch.Tensor, towers: int = 2, columns: int = 12, scale: int = 4, gap_px: int = 1) -> np.ndarray:
    """conv1's kernels as one uint8 image, one block per tower (the layout of figure 3).

    Each kernel is stretched to 0-255 on its own (as the paper's figure), shown in RGB (or gray
    for one input channel), enlarged ``scale`` times with nearest-neighbour pixels.
    """
    w = weight.detach().float().cpu()
    out_ch, in_ch, kh, kw = w.shape
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = ((w - lo) / (hi - lo).clamp_min(1e-12) * 255).round().to(torch.uint8)
    w = w.permute(0, 2, 3, 1).numpy()  # (out, kh, kw, in)
    if in_ch == 1:
        w = np.repeat(w, 3, axis=3)
    elif in_ch != 3:
        w = np.repeat(w.mean(axis=3, keepdims=True).astype(np.uint8), 3, axis=3)
    w = w.repeat(scale, axis=1).repeat(scale, axis=2)
    per_tower = out_ch // towers
    rows = -(-per_tower // columns)
    cell_h, cell_w = kh * scale + gap_px, kw * scale + gap_px
    tower_gap = 3 * cell_h
    height = towers * rows * cell_h + (towers - 1) * tower_gap + gap_px
    grid = np.full((height, columns * cell_w + gap_px, 3), 255, dtype=np.uint8)
    for t in range(towers):
        top = t * (rows * cell_h + tower_gap)
        for i in range(per_tower):
            r, c = divmod(i, columns)
            y, x = top + r * cell_h + gap_px, c * cell_w + gap_px
            grid[y : y + kh * scale, x : x + kw * scale] = w[t * per_tower + i]
    return grid


def filter_image(weight: torch.Tensor, towers: int = 2) -> np.ndarray:
    """:func:`filter_grid` with a layout for viewing: each kernel about 48 px, gaps in proportion,
    at most 12 kernels a row and no empty columns."""
    scale = max(1, 48 // weight.shape[-1])
    columns = min(12, max(1, weight.shape[0] // towers))
    return filter_grid(weight, towers=towers, columns=columns, scale=scale, gap_px=max(1, scale // 8))


def save_filters(weight: torch.Tensor, path: str | Path, towers: int = 2) -> Path:
    """Figure 3 (:func:`filter_image`) as a PNG file, written atomically."""
    return save_png(filter_image(weight, towers=towers), path)
