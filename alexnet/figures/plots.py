"""Pictures a person would rather look at than read: training curves and conv1's kernels (figure 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from alexnet.atomic import atomic_write, file_in_the_way
from alexnet.errors import UserError

# What the first bytes of each figure format are: an existing file is replaced only if it is one.
FIGURE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".pdf": (b"%PDF",), ".svg": (b"<?xml", b"<svg"),
                ".html": (b"<!DOCTYPE html", b"<!doctype html"), ".htm": (b"<!DOCTYPE html", b"<!doctype html")}
FORMAT_NAMES = {".png": "a PNG image", ".pdf": "a PDF", ".svg": "an SVG drawing", ".html": "an HTML page",
                ".htm": "an HTML page"}


def output_file(out: str | Path | None, default: str | Path, *, suffixes: tuple[str, ...] = (".png",),
                flag: str = "--out") -> Path:
    """The file a figure or page goes to, checked before any work is done; one-line UserError otherwise.

    ``out`` None or empty: ``default``. A folder (one that exists, or a name ending in '/'): the
    default's name inside it. The ending must be one of ``suffixes`` (the format is taken from
    it). A file already there is replaced only if it is of that format (or empty), so a mistyped
    ``--out`` never writes over a checkpoint, a recipe or an image of another kind. A file where
    a folder of the path should be is named. Nothing goes into an export folder, which holds its
    export alone.
    """
    from alexnet.trained import is_export_dir

    default = Path(default)
    if not out:
        path = default
    elif str(out).endswith("/") or Path(out).is_dir():
        path = Path(out) / default.name
    else:
        path = Path(out)
    if path.suffix.lower() not in suffixes:
        raise UserError(f"{flag} {path}: the ending names the format; use "
                        f"{' or '.join(s for s in suffixes)} (e.g. {path.with_suffix(suffixes[0]).name})")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder; name a file inside it")
    if (blocker := file_in_the_way(path)) is not None:
        raise UserError(f"{flag} {path}: {blocker} is a file, not a folder")
    export = next((p for p in path.absolute().parents if is_export_dir(p)), None)
    if export is not None:
        raise UserError(f"{flag} {path} is inside the export folder {export}, which must hold only the export; "
                        "write it elsewhere")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise UserError(f"{flag} {path} exists and cannot be read ({e.strerror}); choose another {flag}") from None
        if head and not head.lstrip().startswith(FIGURE_MAGIC[path.suffix.lower()]):
            raise UserError(f"{flag} {path} exists and is not {FORMAT_NAMES[path.suffix.lower()]}; refusing to "
                            f"write over it (a checkpoint, a recipe or data?); choose another {flag}")
    return path


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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def plot_curves(metrics: Sequence[dict], path: str | Path, *, top5: bool = True) -> Path:
    """Loss and error per epoch (train and validation) and the learning rate, as one PNG; the
    validation top-5 error only with ``top5`` (see :func:`alexnet.evaluate.top5_is_informative`).

    A row without a measure (a run of another version, a damaged line) leaves a gap in that line only."""
    def series(key: str, scale: float = 1.0) -> tuple[list, list]:
        points = [(m["epoch"], scale * m[key]) for m in metrics if _number(m.get("epoch")) and _number(m.get(key))]
        return [x for x, _ in points], [y for _, y in points]

    fig = new_figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    axes[0].plot(*series("train_loss"), marker="o", label="train loss")
    axes[0].set_title("training loss")
    axes[1].plot(*series("train_top1_error", 100), marker="o", label="train top-1")
    axes[1].plot(*series("val_top1_error", 100), marker="o", label="val top-1")
    if top5:
        axes[1].plot(*series("val_top5_error", 100), marker="o", label="val top-5")
    axes[1].set_title("error (%)")
    axes[1].legend()
    lrs = series("lr")
    axes[2].plot(*lrs, marker="o")
    if any(v > 0 for v in lrs[1]):
        axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


TOWER_LABEL_PX = 14  # the line above each tower's block


def filter_grid(weight: torch.Tensor, towers: int = 2, columns: int = 12, scale: int = 4, gap_px: int = 1) -> np.ndarray:
    """conv1's kernels as one uint8 image, one block per tower (the layout of figure 3), each block
    under a label ("tower 1: kernels 1-48") when there are several.

    Each kernel is stretched to 0-255 on its own (as the paper's figure), shown in RGB (or gray
    for one input channel), enlarged ``scale`` times with nearest-neighbour pixels.
    """
    from PIL import Image, ImageDraw

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
    label_h = TOWER_LABEL_PX if towers > 1 else 0
    block_h = label_h + rows * cell_h
    grid = np.full((towers * block_h + gap_px, columns * cell_w + gap_px, 3), 255, dtype=np.uint8)
    for t in range(towers):
        top = t * block_h + label_h
        for i in range(per_tower):
            r, c = divmod(i, columns)
            y, x = top + r * cell_h + gap_px, c * cell_w + gap_px
            grid[y : y + kh * scale, x : x + kw * scale] = w[t * per_tower + i]
    if label_h:
        image = Image.fromarray(grid)
        draw = ImageDraw.Draw(image)
        for t in range(towers):
            draw.text((gap_px + 1, t * block_h + 2), f"tower {t + 1}: kernels {t * per_tower + 1}-{(t + 1) * per_tower}",
                      fill=(60, 60, 60))
        grid = np.asarray(image).copy()
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
