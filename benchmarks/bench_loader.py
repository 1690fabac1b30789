"""Training-batch throughput on the CPU: the prepared store + Loader + TrainAugment against per-image Pillow.

Both sides produce the same thing, float32 (N, 3, 224, 224) batches of section 4.1's augmentation
(random crops, reflected half the time, the mean image under the crop subtracted, the PCA colour
shift added) from the same 256x256 RGB images:

    ours      uint8 store (memmap) -> the Loader's threads gather uint8 batches -> TrainAugment,
              eager torch, a whole batch at a time, into a reused buffer (what training on the CPU does)
    baseline  the images as JPEG files -> torch.utils.data.DataLoader with ``--workers`` worker
              processes, each image decoded with Pillow and augmented on its own
              (benchmarks/pillow_baseline.py, what a torchvision ImageFolder pipeline does)

One more line for reference: the loader's uint8 batches alone (what the CPU does when the
augmentation runs on a GPU: "loader only"). It also times forward + backward + update of the
paper's network at batch 32 on the CPU, since the data only needs to outrun the training step.
Every pipeline first runs one epoch untimed (the steady state of training: store pages mapped,
workers started); then the pipelines take turns, ``--runs`` times (at least 3), so that load from
elsewhere on the machine hits all of them alike. Printed per pipeline and per ratio: median over
the runs [min-max].

    python benchmarks/bench_loader.py                     # 2 minutes on 2 busy cores
    python benchmarks/bench_loader.py --images 4096 --workers 8 --batches 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from alexnet.data import Loader, TrainAugment, prepare_store
from alexnet.model import AlexNet
from alexnet.optim import PaperSGD
from measure import check_runs, ratios, runs_argument, spread
from pillow_baseline import PillowAugmentFolder, write_jpegs


def rate(batches, count: int, batch_size: int, drain: int) -> float:
    """Images per second over ``count`` batches of an iterator, after taking ``drain`` batches first:
    the batches its threads or workers made ahead while the other pipelines ran are not counted."""
    for _ in range(drain):
        next(batches)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - start)


def endless(make):
    while True:
        yield from make()


def training_step_rates(runs: int, steps: int, batch: int, seed: int) -> list[float]:
    """Images/s of the paper's network's training step on the CPU, one figure (median step) per run."""
    torch.manual_seed(seed)
    model = AlexNet(num_classes=1000)
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, 224, 224) * 50, torch.randint(0, 1000, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    rates = []
    for _ in range(runs):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        rates.append(batch / statistics.median(times))
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images in the generated data set")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch")
    parser.add_argument("--batches", type=int, default=8, help="batches timed per run and pipeline")
    runs_argument(parser)
    parser.add_argument("--workers", type=int, default=2,
                        help="loader threads and torch threads (ours), DataLoader worker processes (baseline)")
    parser.add_argument("--train-steps", type=int, default=2, help="AlexNet training steps timed per run at batch 32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_runs(args.runs)
    default_threads = torch.get_num_threads()
    size, crop = 256, 224

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_jpegs(tmp / "jpeg", args.images, classes=8, size=size, seed=args.seed, val_every=10)
        store = prepare_store(tmp / "jpeg", tmp / "store", image_size=size, progress_bar=False, log=lambda m: None).store
        print(f"data: {args.images} {size}x{size} RGB images as JPEG and as a store ({time.perf_counter() - start:.0f} s to make)")

        augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=crop)
        loader = Loader(store.split("train"), args.batch_size, shuffle=True, seed=args.seed, drop_last=True, workers=args.workers)
        generator = torch.Generator().manual_seed(args.seed)
        reused = torch.empty((args.batch_size, crop, crop, 3))

        def gathered(augmented: bool):  # uint8 batches from the loader's threads, then (or not) the augmentation
            for epoch in range(1 << 30):
                loader.set_epoch(epoch)
                for images, labels in loader:
                    yield (augment(images, generator, out=reused) if augmented else images), labels

        baseline_loader = torch.utils.data.DataLoader(
            PillowAugmentFolder(tmp / "jpeg" / "train", store, crop), batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.workers, persistent_workers=args.workers > 0,
        )
        pipelines = {"ours": gathered(augmented=True), "baseline": endless(lambda loader=baseline_loader: iter(loader)),
                     "loader only": gathered(augmented=False)}
        threads = {"ours": args.workers, "baseline": 1, "loader only": args.workers}  # torch threads in this process
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        warmup = len(loader)  # one epoch each: the steady state of training (store pages mapped, workers up)
        drain = max(loader.prefetch_batches, loader.workers, 2 * args.workers) + 1  # more than either side makes ahead
        for name, batches in pipelines.items():
            torch.set_num_threads(threads[name])
            for _ in range(warmup):
                next(batches)
        for r in range(args.runs):
            for name, batches in pipelines.items():
                torch.set_num_threads(threads[name])
                rates[name].append(rate(batches, args.batches, args.batch_size, drain))
            print(f"run {r + 1}: " + "   ".join(f"{name} {v[-1]:7.0f} img/s" for name, v in rates.items()))
        del pipelines, baseline_loader

    torch.set_num_threads(default_threads)
    step = training_step_rates(args.runs, args.train_steps, 32, args.seed)
    print(f"cores {os.cpu_count()}; pipelines: {args.workers} loader threads and torch threads (ours) / "
          f"DataLoader worker processes (baseline), batch {args.batch_size}; training step: torch threads {default_threads}")
    print(f"ours (store + Loader + TrainAugment)     {spread(rates['ours'], ',.0f', 'img/s')}")
    print(f"baseline (DataLoader + Pillow per image) {spread(rates['baseline'], ',.0f', 'img/s')}")
    print(f"loader only (uint8 batches)              {spread(rates['loader only'], ',.0f', 'img/s')}")
    print(f"AlexNet training step, CPU, batch 32     {spread(step, ',.1f', 'img/s')}")
    print(f"ours / baseline        {spread(ratios(rates['ours'], rates['baseline']), '.1f')}x")
    print(f"ours / training step   {spread(ratios(rates['ours'], step), '.0f')}x")
    print(f"loader only / baseline {spread(ratios(rates['loader only'], rates['baseline']), '.1f')}x")


if __name__ == "__main__":
    main()
