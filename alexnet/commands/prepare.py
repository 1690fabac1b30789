"""``alexnet prepare SOURCE OUT``: decode a data set into a store (see :mod:`alexnet.data.prepare`)."""

from __future__ import annotations

import argparse

from alexnet.data.images import DEFAULT_MAX_PIXELS, MAX_IMAGE_SIZE
from alexnet.data.jpeg import QUALITY as JPEG_QUALITY
from alexnet.display import printable
from alexnet.errors import UserError

BUILTIN = "builtin:fashion-mnist"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prepare",
        help="decode images once into a store of SxS uint8 arrays for training",
        description=(
            "Rescale every image so its shorter side is S, keep the central SxS patch (section 2), and write "
            "the images, labels, the training set's mean image and pixel PCA into the folder OUT. Reads an "
            "image-folder tree (SOURCE/train/<class>/, SOURCE/val/<class>/, or SOURCE/<class>/), the ILSVRC-2012 "
            f"layout, or Fashion-MNIST IDX files; '{BUILTIN}' is the subset shipped with the package. An "
            "interrupted run resumes when rerun with the same arguments."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help=f"folder holding the data set, or {BUILTIN}")
    p.add_argument("out", metavar="OUT", help="new or empty folder, not one SOURCE's layout reads")
    p.add_argument("--image-size", type=int, default=256, metavar="S",
                   help=f"side of the stored images, up to {MAX_IMAGE_SIZE} (default: 256)")
    p.add_argument("--val-fraction", type=float, default=None, metavar="X",
                   help="share held out per class without val/ (default: 0.1)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed choosing the held-out images (default: 0)")
    p.add_argument("--val-labels", metavar="FILE", default=None, help="labels of a flat val/ folder (default: the devkit's)")
    p.add_argument("--val-labels-base", type=int, choices=(0, 1), default=None,
                   help="number of the first class in --val-labels")
    p.add_argument("--channels", choices=("auto", "1", "3"), default="auto",
                   help="1 (gray) or 3; auto (default): 1 if all are gray")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (default: one per core; 0: none)")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse larger images, as bombs (default: {DEFAULT_MAX_PIXELS})")
    p.add_argument("--encoding", choices=("auto", "raw", "jpeg"), default="auto",
                   help="raw uint8 or JPEG; auto (default): raw under 4 GiB")
    p.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help=f"quality of a JPEG store, 1-100 (default: {JPEG_QUALITY})")
    p.add_argument("--force", action="store_true", help="rebuild OUT even if it already holds a complete store")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.data import builtin_fashion_mnist, prepare_store

    source = builtin_fashion_mnist() if args.source == BUILTIN else args.source
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    result = prepare_store(
        source,
        args.out,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        seed=args.seed,
        force=args.force,
        workers=args.workers,
        channels=args.channels,
        max_pixels=args.max_image_pixels,
        progress_bar=not args.quiet,
        encoding=args.encoding,
        quality=args.jpeg_quality,
        val_labels=args.val_labels,
        val_labels_base=args.val_labels_base,
    )
    for note in result.notes:
        print(f"note: {printable(note)}")
    print(printable(result.summary))  # a path that is not valid UTF-8 is shown, not a crash
    for line in what_comes_next(result.store, args.out):
        print(printable(line))
    return 0


def what_comes_next(store, out: str) -> list[str]:
    """The lines that end a prepare: images that were upscaled, whether the data set is small, a
    validation split too small to measure much, and the ``alexnet train`` command to run next."""
    import json
    import shlex
    from pathlib import Path

    from alexnet.data.store import REPORT
    from alexnet.small_data import is_small

    lines = []
    try:
        conversions = json.loads((Path(out) / REPORT).read_text(encoding="utf-8")).get("conversions", {})
    except (OSError, ValueError):
        conversions = {}
    if conversions.get("upscaled"):
        lines.append(f"note: {conversions['upscaled']} images were smaller than {store.image_size} px on their "
                     f"shorter side and were upscaled ({REPORT} lists every conversion)")
    train = len(store.split("train")) if "train" in store.splits else 0
    if is_small(train, store.image_size):
        lines.append(f"note: {train:,} training images is a small data set (the paper's recipe is made for 1.2 "
                     "million): alexnet train fits its small-data recipe to it (--recipe paper for the paper's)")
    val = len(store.split("val")) if "val" in store.splits else 0
    if 0 < val < 30:
        lines.append(f"note: {val} validation images: each is {100 / val:.0f} points of the validation error; a "
                     "val/ folder with more, or a larger --val-fraction, measures the network better")
    name = Path(out).resolve().name or "run"
    lines.append(f"next: alexnet train {shlex.quote(str(out))} --out {shlex.quote(str(Path('runs') / name))}")
    return lines
