"""The built-in demo: the paper's system end to end on real data, in minutes on a laptop CPU.

It prepares the built-in data set (:mod:`alexnet.builtin`: 12,000 training and 2,000 test
images of Fashion-MNIST at 32x32), trains the paper's network with every feature on and the
few changes a 28-pixel data set needs (the small-data recipe, :mod:`alexnet.small_data`, which
``alexnet train`` fits to any data set this small), then tests it
with the centre crop and with ten crops. The test accuracy is that of the last epoch's weights
(no choice of epoch on the test images). Running it again continues the finished run and only
re-evaluates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from alexnet.builtin import BUILTIN_RECIPE, prepare_builtin
from alexnet.config import TrainConfig


def run_demo(out: str | Path = "runs/demo", *, log: Callable[[str], None] = print, show_progress: bool = True,
             config: TrainConfig = BUILTIN_RECIPE) -> dict:
    """Prepare the built-in data, train, evaluate (centre crop and ten crops), draw the figures."""
    from alexnet.data.loader import Loader
    from alexnet.evaluate import evaluate
    from alexnet.experiments.runs import refuse_foreign_out
    from alexnet.figures.plots import save_filters
    from alexnet.runtime import pick_device
    from alexnet.trained import load_member
    from alexnet.training import train

    out = Path(out)
    refuse_foreign_out(out, "the demo")
    pick_device(config.device)  # a device this machine lacks is refused before minutes of preparing data
    started = time.perf_counter()
    data = out / "data"
    store = prepare_builtin(data, show_progress=show_progress, log=log)
    log(f"demo: {len(store.split('train'))} training and {len(store.split('val'))} test images, "
        f"{store.num_classes} classes, {store.image_size}x{store.image_size}x{store.channels}")
    run = out / "run"

    def train_log(line: str) -> None:  # a finished run is evaluated again; the demo has no --epochs to go on with
        log(f"demo: {run} holds the finished run; evaluating it again (remove that folder to train anew)"
            if line.startswith(f"{run} has finished") else line)

    train(config, data, run, resume=(run / "last.pt").exists(), show_progress=show_progress, log=train_log)
    member = load_member(str(run / "last.pt"), pick_device(config.device))
    results = {}
    for ten_crop in (False, True):
        loader = Loader(store.split("val"), 256, shuffle=False, seed=0, drop_last=False)
        loader.set_epoch(0)
        results["ten_crop" if ten_crop else "centre"] = evaluate([member], loader, ten_crop=ten_crop)
    save_filters(member.model.features.conv1.weight, run / "filters.png", towers=config.towers)
    centre, ten = (1 - results["centre"]["top1_error"]), (1 - results["ten_crop"]["top1_error"])
    minutes = (time.perf_counter() - started) / 60
    log(f"demo: curves in {run / 'curves.png'}, conv1 kernels in {run / 'filters.png'} ({minutes:.1f} minutes)")
    log(f"demo: test accuracy {centre:.2%} (centre crop), {ten:.2%} (ten crops); run directory {run}")
    log(f"next: your own photos (PHOTOS/<class>/*.jpg): alexnet prepare PHOTOS data/mine, then alexnet train "
        f"data/mine --out runs/mine; or alexnet predict {run / 'last.pt'} IMAGE, alexnet report {run}")
    return dict(centre_accuracy=centre, ten_crop_accuracy=ten, run_dir=str(run), minutes=minutes)
