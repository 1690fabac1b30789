"""A newcomer's own photo folder, trained with the small-data recipe and with the paper's, side by side.

There is no photograph data set on this machine, so the folder is made from the built-in
Fashion-MNIST images, shaped like a user's photos: each item, upscaled and tinted, placed at a
random spot on a photo-sized canvas (300-500 px a side) of a smooth random colour with sensor-like
noise, saved as JPEG: ``--per-class`` training photos (default 20) of each of ``--classes`` (default
three of distinct shapes), and ``--val-per-class`` validation photos (default 30, in a val/ folder,
so that the error is measured on more than the handful of images a tenth of 60 would give),
prepared as a user would (``alexnet prepare FOLDER DATA``: 256 px), then trained by the CLI, per seed:

    small   ``alexnet train DATA --out RUN``: the recipe it picks for this data (the small-data one)
    paper   ``alexnet train DATA --out RUN --recipe paper --batch-size-per-device 16 --epochs E``
            (the paper's recipe with the batch lowered to fit 54 images, as a user would have to)

and prints, per run, the final and best validation error, the last training loss and the minutes,
then the median [min-max] over seeds. ``--json FILE`` writes every run's figures. Whatever it shows
is the result: there is no expected outcome written here.

    python benchmarks/small_data.py                              # 3 x 20 photos, 3 seeds (about 15 minutes on 2 cores)
    python benchmarks/small_data.py --classes T-shirt/top,Trouser,Pullover --paper-epochs 10
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from measure import spread


def photo_folder(out: Path, classes: list[str], per_class: int, seed: int, val_per_class: int = 0) -> Path:
    """A folder per Fashion-MNIST class named in ``classes`` of ``per_class`` photo-like JPEGs; with
    ``val_per_class``, as ``out/train/<class>`` and ``out/val/<class>`` (that many validation images)."""
    from alexnet.data import builtin_fashion_mnist

    root = builtin_fashion_mnist()
    images = np.frombuffer(gzip.open(root / "train-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(root / "train-labels-idx1-ubyte.gz").read()[8:], np.uint8)
    names = (root / "classes.txt").read_text(encoding="utf-8").split("\n")
    rng = np.random.default_rng(seed)
    for name in classes:
        c = names.index(name)
        name = name.replace("/", "-").replace(" ", "_")
        chosen = rng.choice(np.flatnonzero(labels == c), per_class + val_per_class, replace=False)
        for split, indices in (("train", chosen[:per_class]), ("val", chosen[per_class:])):
            folder = (out / split / name) if val_per_class else (out / name)
            folder.mkdir(parents=True, exist_ok=True)
            for i in indices:
                _photo(images[i], rng).save(folder / f"{i}.jpg", quality=90)
    return out


def _photo(item: np.ndarray, rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(300, 501, 2))
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    corners = rng.uniform(40, 215, (3, 3))  # a smooth colour field: per channel a + b x + c y
    canvas = corners[:, 0, None, None] + corners[:, 1, None, None] * (xx - 0.5) + corners[:, 2, None, None] * (yy - 0.5)
    canvas = canvas.transpose(1, 2, 0) + rng.normal(0, 8, (h, w, 3))
    side = int(min(w, h) * rng.uniform(0.5, 0.85))
    mask = np.asarray(Image.fromarray(item).resize((side, side), Image.BICUBIC), np.float64)[..., None] / 255
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    tint = rng.uniform(0, 255, 3)
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = patch * (1 - mask) + tint * mask
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def train(data: Path, run: Path, flags: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "alexnet", "train", str(data), "--out", str(run), "--quiet", *flags],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training failed: {done.stderr.strip()}")
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first = next((line for line in done.stdout.splitlines() if line.startswith("recipe:")), "recipe: the paper's")
    return dict(final_val_error=metrics[-1]["val_top1_error"], best_val_error=min(m["val_top1_error"] for m in metrics),
                last_train_loss=metrics[-1]["train_loss"], epochs=len(metrics),
                minutes=(time.perf_counter() - started) / 60, recipe_line=first,
                warnings=[line for line in done.stdout.splitlines() if line.startswith("warning")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default="Trouser,Sneaker,Bag",
                        help="Fashion-MNIST classes, joined by commas (default: three of distinct shapes)")
    parser.add_argument("--per-class", type=int, default=20, help="training photos per class")
    parser.add_argument("--val-per-class", type=int, default=30,
                        help="validation photos per class, in a val/ folder (0: prepare holds out a tenth)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (the folder is the same for all)")
    parser.add_argument("--paper-epochs", type=int, default=15, help="epochs of the paper's recipe (its 90 take an hour)")
    parser.add_argument("--recipes", default="small,paper")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    recipes = {"small": [], "paper": ["--recipe", "paper", "--batch-size-per-device", "16",
                                      "--epochs", str(args.paper_epochs)]}
    results = {name: [] for name in args.recipes.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photo_folder(tmp / "photos", args.classes.split(","), args.per_class, seed=0, val_per_class=args.val_per_class)
        subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(tmp / "photos"), str(tmp / "data"), "--quiet"],
                       check=True, capture_output=True)
        for seed in range(args.seeds):
            for name in results:
                r = train(tmp / "data", tmp / f"{name}-{seed}", [*recipes[name], "--seed", str(seed)])
                results[name].append(r)
                print(f"{name} seed {seed}: final val error {r['final_val_error']:.1%}, best {r['best_val_error']:.1%}, "
                      f"last train loss {r['last_train_loss']:.3f}, {r['epochs']} epochs in {r['minutes']:.1f} min"
                      + (f"; {len(r['warnings'])} warning(s): {r['warnings'][0]}" if r["warnings"] else ""), flush=True)
    for name, runs in results.items():
        print(f"{name}: {runs[0]['recipe_line']}")
        print(f"  final val error {spread([100 * r['final_val_error'] for r in runs], '.1f', '%')}, best "
              f"{spread([100 * r['best_val_error'] for r in runs], '.1f', '%')}, minutes "
              f"{spread([r['minutes'] for r in runs], '.1f')}, last train loss "
              f"{spread([r['last_train_loss'] for r in runs], '.3f')}")
    if args.json:
        args.json.write_text(json.dumps(dict(args=vars(args) | {"json": str(args.json)}, results=results), indent=1))


if __name__ == "__main__":
    main()
