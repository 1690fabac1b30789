"""Does the full-size paper network learn with the paper's recipe? Four runs side by side.

The paper's init (weights N(0, 0.01), biases 1) is known to stall at loss ln(classes) in many
reimplementations. This trains the paper's network at full size (224 crops of 256, two towers,
LRN, overlapping pooling, dropout 0.5, PCA lighting, PaperSGD at lr 0.01, batch 128, paper
init) on the built-in Fashion-MNIST subset prepared at 256x256 (12,000 training and 2,000 test
images, 10 classes), four times:

    dropout    colour noise
    inverted   sqrt   (shift P(alpha sqrt(lambda)), the authors' scale)
    paper      sqrt   (the defaults)
    paper      fb     (P(alpha lambda / 255))
    inverted   fb     (the recipe before these choices existed)

and prints, per run, the first epoch whose training loss is more than 5% below ln(10) (the
stall watch's margin; "never" if none), the training loss of every epoch, and the final
validation accuracy. ``--json FILE`` writes the same. Whatever it shows is the result: there is
no expected outcome written here.

    python benchmarks/learning_check.py --epochs 12                  # on a GPU: a few minutes
    python benchmarks/learning_check.py --device cpu --quick         # a dry run of the script (toy sizes)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

VARIANTS = (("inverted", "sqrt"), ("paper", "sqrt"), ("paper", "fb"), ("inverted", "fb"))


def prepare(out: Path, image_size: int) -> Path:
    """The built-in data set prepared at ``image_size`` into ``out/data-<size>`` (kept between runs)."""
    from alexnet.data import builtin_fashion_mnist, open_store, prepare_store
    from alexnet.errors import UserError

    store = out / f"data-{image_size}"
    try:
        open_store(store)
    except UserError:
        prepare_store(builtin_fashion_mnist(), store, image_size=image_size, progress_bar=False, force=True,
                      log=lambda line: None)
    return store


def left_chance_epoch(losses: list[float], classes: int) -> int | None:
    """The first epoch (1-based) whose training loss is more than 5% below ln(classes)."""
    chance = math.log(classes)
    return next((i + 1 for i, loss in enumerate(losses) if loss < 0.95 * chance), None)


def run(store: Path, out: Path, base, variants=VARIANTS, log=print) -> list[dict]:
    from alexnet.training import train

    rows = []
    for dropout_style, pca_scale in variants:
        name = f"dropout-{dropout_style}_pca-{pca_scale}"
        config = base.replace(dropout_style=dropout_style, pca_scale=pca_scale)
        started = time.perf_counter()
        metrics = train(config, store, out / name, show_progress=False, log=lambda line: None)
        losses = [m["train_loss"] for m in metrics]
        row = dict(run=name, dropout_style=dropout_style, pca_scale=pca_scale,
                   left_chance_epoch=left_chance_epoch(losses, 10), train_loss=losses,
                   val_accuracy=1 - metrics[-1]["val_top1_error"], seconds=time.perf_counter() - started)
        rows.append(row)
        log(f"{name:30s} loss leaves ln(10) at epoch {row['left_chance_epoch'] or 'never'}; "
            f"val accuracy {row['val_accuracy']:.2%}; losses {' '.join(f'{x:.3f}' for x in losses)} "
            f"({row['seconds']:.0f} s)")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="'cuda' (default) or 'cpu'")
    p.add_argument("--epochs", type=int, default=12, help="epochs per run (default 12)")
    p.add_argument("--out", default="learning-check", help="folder for the prepared data and the four runs")
    p.add_argument("--quick", action="store_true", help="toy sizes (32 px, small stem, 1/8 width, 2 epochs of 5 "
                                                        "steps): checks the script, measures nothing")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()

    from alexnet.config import TrainConfig

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        store = prepare(out, 32)
        base = TrainConfig(stem="small", width=0.125, crop_size=28, batch_size_per_device=32, epochs=2,
                           max_steps_per_epoch=5, device=args.device, loader_workers=2)
    else:
        store = prepare(out, 256)
        base = TrainConfig(epochs=args.epochs, device=args.device, loader_workers=8)  # the paper's recipe
    runs = out / ("runs-quick" if args.quick else "runs")
    if runs.exists():
        import shutil

        shutil.rmtree(runs)  # every invocation measures afresh
    print(f"learning check: paper recipe, {'quick toy sizes' if args.quick else f'{args.epochs} epochs'}, "
          f"device {args.device}, data {store}")
    rows = run(store, runs, base)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(epochs=base.epochs, quick=args.quick, runs=rows), indent=2))


if __name__ == "__main__":
    main()
