"""End-to-end training throughput of the paper's network on a GPU, data included.

Three measurements side by side in one run, on the same GPU:

1. ours, end to end: ``alexnet.train.train`` from a prepared store (threads gather uint8 batches
   from the memory map into pinned memory, asynchronous copies, augmentation on the GPU,
   channels_last, bf16 autocast, optionally torch.compile); images/s of the second epoch.
2. ours, synthetic: the same training step on uint8 batches already on the GPU (no loading).
   Data-path efficiency = (1) / (2); the goal is >= 0.9.
3. a plain PyTorch baseline: torch DataLoader with per-image Pillow decode and transforms of the
   same images (JPEG files), fp32, NCHW, no compile, torch.optim.SGD.

Goal on one H200: (1) >= 20,000 images/s at efficiency >= 0.9. Prints one line per measurement
and the ratios; ``--json FILE`` also writes them. Runs on the CPU too (tiny sizes) to check it.

    python benchmarks/bench_gpu_train.py --images 20000 --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def write_jpegs(root: Path, images: int, classes: int, size: int, seed: int = 0) -> None:
    """Random-texture JPEGs of ``size`` px in ``classes`` folders (decode cost like real photos)."""
    jobs = [(root, i, classes, size, seed) for i in range(images)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_one, jobs, chunksize=64))


def _write_one(job) -> None:
    from PIL import Image

    root, i, classes, size, seed = job
    rng = np.random.default_rng([seed, i])
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size + 40, size), Image.BILINEAR)
    d = root / "train" / f"c{i % classes:03d}"
    d.mkdir(parents=True, exist_ok=True)
    img.save(d / f"{i}.jpg", quality=90)
    if i % 10 == 0:
        v = root / "val" / f"c{i % classes:03d}"
        v.mkdir(parents=True, exist_ok=True)
        img.save(v / f"{i}.jpg", quality=90)


def synthetic_rate(config, store, device, steps: int, warmup: int) -> float:
    """The training step of alexnet.train on GPU-resident uint8 batches."""
    from alexnet.data.augment import TrainAugment
    from alexnet.evaluate import autocast_for
    from alexnet.model import AlexNet, init_weights_
    from alexnet.optim import PaperSGD
    from alexnet.train import grads_finite, model_args, resolve_runtime

    rt = resolve_runtime(config, device)
    model = init_weights_(AlexNet(**model_args(config, store)), config.init).to(
        device, memory_format=torch.channels_last if rt.channels_last else torch.preserve_format)
    opt = PaperSGD(model.parameters(), lr=config.lr)
    step_model = torch.compile(model) if config.compile else model
    augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors,
                           crop_size=config.crop_size).to(device)
    gen = torch.Generator(device).manual_seed(0)
    b = config.batch_size_per_device
    images = torch.from_numpy(np.array(store.split("train").images[:b])).to(device)
    labels = torch.from_numpy(np.asarray(store.split("train").labels[:b])).to(device)
    flag = torch.zeros((), dtype=torch.bool, device=device)

    def step() -> None:
        nonlocal flag
        x = augment(images, gen)
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(device, rt.precision):
            logits = step_model(x)
        loss = F.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        flag = flag | ~(torch.isfinite(loss) & grads_finite(model))
        opt.step()

    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * b / (time.perf_counter() - t0)


def baseline_rate(root: Path, device, batch: int, workers: int, steps: int, warmup: int, classes: int) -> float:
    """DataLoader + per-image Pillow transforms, fp32, no compile, torch.optim.SGD."""
    from PIL import Image

    from alexnet.model import AlexNet

    files = sorted((root / "train").rglob("*.jpg"))
    mean = torch.tensor([124.0, 116.0, 104.0]).view(3, 1, 1)

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            img = Image.open(files[i]).convert("RGB")
            w, h = img.size
            s = 256 / min(w, h)
            img = img.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
            w, h = img.size
            img = img.crop(((w - 256) // 2, (h - 256) // 2, (w - 256) // 2 + 256, (h - 256) // 2 + 256))
            y, x = np.random.randint(0, 33, 2)
            img = img.crop((x, y, x + 224, y + 224))
            if np.random.rand() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            t = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
            return t - mean, int(files[i].parent.name[1:])

    loader = torch.utils.data.DataLoader(Folder(), batch_size=batch, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0)
    model = AlexNet(classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=5e-4)
    done, t0 = 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000, help="training images to generate")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="images per step")
    p.add_argument("--steps", type=int, default=150, help="timed steps of the synthetic and baseline runs")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader threads / DataLoader workers")
    p.add_argument("--size", type=int, default=256, help="prepared image side (the paper: 256)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--compile", action="store_true", help="torch.compile the step in both of our runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", help="where to write the images and the store (default: a temp dir)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)

    from alexnet.config import TrainConfig
    from alexnet.data import open_store, prepare_store
    from alexnet.inference import pick_device
    from alexnet.train import train

    device = pick_device(a.device)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="alexnet-bench-"))
    src, store_dir = work / "jpeg", work / "store"
    t = time.perf_counter()
    if not (src / "train").exists():
        write_jpegs(src, a.images, a.classes, a.size)
    if not (store_dir / "manifest.json").exists():
        prepare_store(src, store_dir, image_size=a.size, progress_bar=False, log=lambda s: None)
    print(f"data: {a.images} JPEGs and their store in {time.perf_counter() - t:.0f} s ({work})", flush=True)
    store = open_store(store_dir)
    steps_per_epoch = len(store.split("train")) // a.batch
    config = TrainConfig(epochs=2, batch_size_per_device=a.batch, crop_size=a.crop, loader_workers=a.workers,
                         compile=a.compile, device=str(device))  # the paper's init and lr
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "batch": a.batch, "compile": a.compile}
    results["synthetic_images_per_s"] = synthetic_rate(config, store, device, a.steps, warmup=10)
    print(f"ours, synthetic batches on the device: {results['synthetic_images_per_s']:,.0f} images/s", flush=True)
    with tempfile.TemporaryDirectory() as run:
        metrics = train(config, store_dir, Path(run) / "run", show_progress=False, log=lambda s: None)
    results["end_to_end_images_per_s"] = metrics[-1]["images_per_s"]
    print(f"ours, end to end from the store ({steps_per_epoch} steps/epoch, epoch 2): "
          f"{results['end_to_end_images_per_s']:,.0f} images/s", flush=True)
    results["baseline_images_per_s"] = baseline_rate(src, device, a.batch, a.workers, a.steps, 10, a.classes)
    print(f"baseline, DataLoader + per-image Pillow, fp32: {results['baseline_images_per_s']:,.0f} images/s", flush=True)
    results["data_path_efficiency"] = results["end_to_end_images_per_s"] / results["synthetic_images_per_s"]
    results["speedup_vs_baseline"] = results["end_to_end_images_per_s"] / results["baseline_images_per_s"]
    print(f"data-path efficiency (end to end / synthetic): {results['data_path_efficiency']:.2f}  (goal >= 0.9)")
    print(f"end to end vs baseline: {results['speedup_vs_baseline']:.1f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
