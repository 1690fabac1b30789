"""``alexnet show filters|neighbours``: figures 3 and 4 of the paper from a trained network."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="draw the paper's figures from a checkpoint: conv1 kernels (figure 3), nearest neighbours (figure 4)",
        description="Figures of a trained network: 'filters' (figure 3) and 'neighbours' (figure 4).",
    )
    kinds = p.add_subparsers(dest="figure", metavar="FIGURE", required=True)

    f = kinds.add_parser(
        "filters",
        help="figure 3: conv1's kernels as an image grid, one block per tower",
        description="Figure 3: conv1's kernels, each stretched to the full 0-255 range, one block per tower "
        "(the paper's first tower learned largely colour-agnostic kernels, the second colour-specific ones).",
    )
    f.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run directory")
    f.add_argument("--out", metavar="PNG", help="PNG image to write, or a folder to write filters.png into (default: "
                   "filters.png beside the checkpoint; for an export folder EXPORT, EXPORT-filters.png in the "
                   "current folder); an existing file is replaced only if it is a PNG image")
    f.set_defaults(func=run_filters)

    n = kinds.add_parser(
        "neighbours",
        help="figure 4: validation images, their top-5 predictions and the 6 nearest training images in fc7 space",
        description="Figure 4: for K validation images (spread evenly over the split), the image, its top-5 "
        "predictions (centre crop), and the training images whose fc7 features (the last hidden layer) are "
        "nearest in Euclidean distance. Training features are computed in batches and never all held in memory.",
    )
    n.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or run directory")
    n.add_argument("data", metavar="DATA", help="the prepared data set the network was trained on")
    n.add_argument("--images", type=int, default=5, metavar="K", help="validation images, one row each (default 5, at most 50)")
    n.add_argument("--neighbours", type=int, default=6, metavar="N", help="training images per row (default 6, as the paper; at most 50)")
    n.add_argument("--max-train", type=int, metavar="N",
                   help="search only N training images spread evenly over the split (default: all of them)")
    n.add_argument("--split", default="val", help="split the query images come from (default: val)")
    n.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    n.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    n.add_argument("--out", metavar="PNG", help="image to write, .png, .pdf or .svg, or a folder to write "
                   "neighbours.png into (default: neighbours.png beside the checkpoint; for an export folder EXPORT, "
                   "EXPORT-neighbours.png in the current folder); an existing file is replaced only if it is of "
                   "that format")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=run_neighbours)


MAX_FIGURE_CELLS = 50  # rows (--images) or columns (--neighbours) of figure 4


def _default_out(checkpoint: str, name: str) -> Path:
    """``name`` beside the checkpoint (in a run folder, or the folder of a checkpoint file), but never
    inside an export folder, which must hold only the export: there, ``<folder name>-<name>`` in the
    current folder."""
    from alexnet.display import printable
    from alexnet.errors import UserError
    from alexnet.trained import is_export_dir

    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    if not is_export_dir(folder):
        return folder / name
    export = folder.resolve()
    if Path.cwd().resolve().is_relative_to(export):
        raise UserError(f"{printable(str(folder))} is an export folder (it must hold only the export) and the current "
                        "folder is inside it, where the figure would go; give --out with a PNG path outside it")
    return Path(f"{export.name or 'export'}-{name}")


def _out(args: argparse.Namespace, name: str, suffixes: tuple[str, ...] = (".png",)) -> Path:
    """The figure's file (:func:`alexnet.figures.plots.output_file`: never inside an export folder)."""
    from alexnet.figures.plots import output_file

    return output_file(args.out, Path(name) if args.out else _default_out(args.checkpoint, name), suffixes=suffixes)


@contextlib.contextmanager
def _writing(out: Path):
    """A failed write of ``out`` (full disk, no permission) as one line naming it, not a temporary file."""
    from alexnet.display import printable
    from alexnet.errors import UserError

    try:
        yield
    except OSError as e:
        raise UserError(f"could not write {printable(str(out))}: {e.strerror or e}; nothing was written") from None


def run_filters(args: argparse.Namespace) -> int:
    from alexnet.errors import UserError
    from alexnet.figures.plots import save_filters
    from alexnet.trained import load

    out = _out(args, "filters.png")
    payload = load(args.checkpoint)
    weight = payload["model"].get("features.conv1.weight")
    if weight is None:
        raise UserError(f"{args.checkpoint} holds no conv1 weights (features.conv1.weight); is it an AlexNet checkpoint?")
    towers = int(payload.get("model_args", {}).get("towers", 1))
    if weight.ndim != 4:
        raise UserError(f"{args.checkpoint}: features.conv1.weight is {tuple(weight.shape)}, not a convolution's kernels")
    with _writing(out):
        out = save_filters(weight, out, towers=towers)
    print(f"{weight.shape[0]} conv1 kernels ({towers} tower(s)) in {out}")
    return 0


def run_neighbours(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from alexnet.data import open_store
    from alexnet.errors import UserError
    from alexnet.evaluate import check_compatible, check_store, probabilities
    from alexnet.figures.paper import features, nearest_training_images, plot_neighbours, spread_indices
    from alexnet.inference import progress_bar
    from alexnet.runtime import pick_device
    from alexnet.trained import load_member

    for flag, value in (("--images", args.images), ("--neighbours", args.neighbours), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1")
    # One row per image and one column per neighbour: past this the figure is too large to draw,
    # which would be found only after the whole training set had gone through the network.
    for flag, value in (("--images", args.images), ("--neighbours", args.neighbours)):
        if value > MAX_FIGURE_CELLS:
            raise UserError(f"{flag} {value} is more than one figure can show (at most {MAX_FIGURE_CELLS}); "
                            "draw several figures instead")
    if args.max_train is not None and args.max_train < args.neighbours:
        raise UserError(f"--max-train must be at least --neighbours ({args.neighbours})")
    out = _out(args, "neighbours.png", suffixes=(".png", ".pdf", ".svg"))
    device = pick_device(args.device)
    member = load_member(args.checkpoint, device)  # first: a data set named first is said to be one
    store = open_store(args.data)
    check_store(member, store, args.data)
    check_compatible([member], store.classes)
    queries = store.split(args.split)
    train = store.split("train")
    q_idx = spread_indices(len(queries), args.images)
    images = torch.from_numpy(np.ascontiguousarray(queries.images[q_idx]))
    probs = probabilities([member], images, ten_crop=False).cpu().numpy()
    if not np.isfinite(probs).all():
        raise UserError(f"{args.checkpoint} gives NaN or infinite outputs on these {args.split} images, so there "
                        "are no predictions to draw; use an earlier checkpoint")
    q_features = features(member, images)
    t_idx = spread_indices(len(train), args.max_train)
    nn_idx, nn_dist = nearest_training_images(
        member, train, q_features, k=min(args.neighbours, len(t_idx)), batch_size=args.batch_size, indices=t_idx,
        progress=lambda it, total: progress_bar(it, total, "training features", enabled=not args.quiet))
    top = np.argsort(-probs, axis=1)[:, : min(5, store.num_classes)]
    rows = []
    for r, qi in enumerate(q_idx):
        rows.append(dict(image=np.asarray(queries.images[qi]), label=int(queries.labels[qi]),
                         top=[(int(c), float(probs[r, c])) for c in top[r]],
                         neighbours=[(np.asarray(train.images[j]), int(train.labels[j]), float(d))
                                     for j, d in zip(nn_idx[r], nn_dist[r]) if j >= 0]))
    with _writing(out):
        out = plot_neighbours(rows, store.classes, out)
    print(f"{len(rows)} {args.split} images and their {nn_idx.shape[1]} nearest of {len(t_idx)} training images in {out}")
    return 0
