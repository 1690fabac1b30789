"""Training-batch throughput: the prepared store + Loader + TrainAugment against per-image decoding.

Both sides produce the same thing, float32 batches of random 224x224 crops, reflected half the
time, normalised, from the same 256x256 RGB images:

    ours      uint8 store (memmap) -> Loader's index batches -> TrainAugment.from_store: one C
              pass per batch on ``--workers`` threads cuts the crops straight out of the memory
              map, reflects, adds the colour shift and subtracts the mean patch into a reused
              buffer (what training on the CPU does)
    baseline  the images as JPEG files -> torch.utils.data.DataLoader with ``--workers`` worker
              processes, each image decoded with Pillow, cropped, flipped, converted to a tensor
              and normalised one at a time (what a torchvision ImageFolder pipeline does)

Two more lines for reference: the loader's threads gathering whole uint8 images into batches
(what the CPU does when the augmentation runs on a GPU: "loader only"), and those batches then
augmented on the CPU ("gathered+augment"). It also times forward + backward + update of the
paper's network at batch 32 on the CPU, since the data only needs to outrun the training step.
Every pipeline first runs one epoch untimed (the steady state of training: store pages mapped,
workers started); then the pipelines take turns (``--rounds``) so that load from elsewhere on the
machine hits all of them, and the median round counts. Prints images/s, ours / baseline
(target >= 10) and ours / training step (target >= 20).

    python benchmarks/bench_loader.py                     # about 1.5 minutes on 2 cores
    python benchmarks/bench_loader.py --images 4096 --workers 8 --batches 10

Measured with the defaults on the 2-core CPU machine (no GPU), quiet:

    ours 6464 img/s, baseline 630 img/s:          ours / baseline 10.3x  (target 10x)
    AlexNet training step 13.9 img/s:             ours / training step 465x (target 20x)
    loader only 4251 img/s; gathered+augment 2098 img/s

and on the H200 machine's 16 cores with --workers 8 (before the warm-up epoch was added):
ours 47,300 img/s, baseline 8,900 img/s (5.3x: the baseline's decoding scales with cores,
ours is bound by memory bandwidth), training step on the CPU 124 img/s.

Where the time goes: writing the output. A batch of 128 float32 224x224x3 crops is 77 MB; the
C pass streams it to memory (non-temporal stores, no read of the destination first) and reads
only the crop rows of each image, so it runs at the machine's memory bandwidth: one thread
already reaches it here (1 and 2 threads both give 6-7k img/s). Eager torch, five passes over
the batch, managed 600-800 img/s single-threaded on the same batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.data import Loader, TrainAugment, prepare_store
from alexnet.model import AlexNet
from alexnet.optim import PaperSGD


def write_jpegs(folder: Path, count: int, size: int, classes: int, seed: int) -> None:
    """Smooth random colour fields with a little noise: JPEGs of a natural photo's size (~15-30 kB)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-12, 13, (size, size, 3), dtype=np.int16)
        target = folder / f"class{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(target / f"{i:06d}.jpg", quality=90)


class JpegFolder(torch.utils.data.Dataset):
    """The baseline: decode, crop, flip, to tensor and normalise, one image at a time."""

    MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def __init__(self, root: Path, crop: int) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        self.crop = crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
            w, h = img.size
            top, left = np.random.randint(0, h - self.crop + 1), np.random.randint(0, w - self.crop + 1)
            img = img.crop((left, top, left + self.crop, top + self.crop))
            if np.random.rand() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255)
        return (x - self.MEAN) / self.STD, int(self.files[i].parent.name[5:])


def rate(batches, count: int, batch_size: int) -> float:
    """Images per second over ``count`` batches of an iterator (after it has produced one)."""
    next(batches)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return count * batch_size / (time.perf_counter() - start)


def endless(make):
    while True:
        yield from make()


def training_step_rate(steps: int, batch: int, seed: int) -> float:
    torch.manual_seed(seed)
    model = AlexNet(num_classes=1000)
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, 224, 224) * 50, torch.randint(0, 1000, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images in the generated data set")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch")
    parser.add_argument("--batches", type=int, default=12, help="batches timed per round and pipeline")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the two pipelines")
    parser.add_argument("--workers", type=int, default=2, help="loader and kernel threads (ours), DataLoader worker processes (baseline)")
    parser.add_argument("--train-steps", type=int, default=3, help="AlexNet training steps timed at batch 32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    size, crop = 256, 224

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        write_jpegs(tmp / "jpeg", args.images, size, classes=8, seed=args.seed)
        result = prepare_store(tmp / "jpeg", tmp / "store", image_size=size, val_fraction=0.0, progress_bar=False, log=lambda m: None)
        store = result.store
        print(f"data: {args.images} {size}x{size} RGB images as JPEG and as a store ({time.perf_counter() - start:.0f} s to make)")

        augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=crop)
        loader = Loader(store.split("train"), args.batch_size, shuffle=True, seed=args.seed, drop_last=True, workers=args.workers)
        generator = torch.Generator().manual_seed(args.seed)

        images_u8, labels_all = store.split("train").images, loader.labels
        reused = torch.empty((args.batch_size, crop, crop, 3))

        def ours():  # what training on the CPU does: crops cut from the memory map into one buffer
            for epoch in range(1 << 30):
                loader.set_epoch(epoch)
                for indices in loader.index_batches():
                    yield augment.from_store(images_u8, indices, generator, out=reused), torch.from_numpy(labels_all[indices])

        def gathered(augmented: bool = True):  # uint8 batches from the loader's threads (the GPU path's CPU side)
            for epoch in range(1 << 30):
                loader.set_epoch(epoch)
                for images, labels in loader:
                    yield (augment(images, generator, out=reused) if augmented else images), labels

        baseline_loader = torch.utils.data.DataLoader(
            JpegFolder(tmp / "jpeg", crop), batch_size=args.batch_size, shuffle=True, drop_last=True,
            num_workers=args.workers, persistent_workers=args.workers > 0,
        )
        pipelines = {"ours": ours(), "baseline": endless(lambda: iter(baseline_loader)),
                     "gathered+augment": gathered(), "loader only": gathered(augmented=False)}
        rates = {name: [] for name in pipelines}
        warmup = len(loader)  # one epoch each: the steady state of training (store pages mapped, workers up)
        for name, batches in pipelines.items():
            torch.set_num_threads(args.workers if name != "baseline" else 1)
            for _ in range(warmup):
                next(batches)
        for r in range(args.rounds):
            for name, batches in pipelines.items():
                # our kernel runs on as many threads as the baseline has worker processes
                torch.set_num_threads(args.workers if name != "baseline" else 1)
                rates[name].append(rate(batches, args.batches, args.batch_size))
            print(f"round {r + 1}: " + "   ".join(f"{name} {v[-1]:7.0f} img/s" for name, v in rates.items()))
        ours_rate, baseline_rate, gathered_rate, loader_rate = (
            statistics.median(rates[n]) for n in ("ours", "baseline", "gathered+augment", "loader only"))
        del pipelines, baseline_loader

    torch.set_num_threads(default_threads)
    step_rate = training_step_rate(args.train_steps, 32, args.seed)
    print(f"cores {os.cpu_count()}; pipelines: {args.workers} loader threads / kernel threads / DataLoader workers, "
          f"batch {args.batch_size}; training step: torch threads {default_threads}")
    print(f"ours (store + Loader + TrainAugment.from_store, as training on the CPU) {ours_rate:8.0f} img/s")
    print(f"ours, loader's uint8 batches then TrainAugment {gathered_rate:8.0f} img/s")
    print(f"baseline (Pillow per image, DataLoader) {baseline_rate:8.0f} img/s")
    print(f"AlexNet training step, CPU, batch 32    {step_rate:8.1f} img/s")
    print(f"loader only (uint8 batches, for augmenting on the model's device) {loader_rate:8.0f} img/s")
    print(f"ours / baseline      {ours_rate / baseline_rate:6.1f}x   (target >= 10)")
    print(f"ours / training step {ours_rate / step_rate:6.1f}x   (target >= 20)")
    print(f"loader only / baseline {loader_rate / baseline_rate:6.1f}x")


if __name__ == "__main__":
    main()
