"""Training from a JPEG store on a GPU: the data path's efficiency, and CPU decoding vs nvJPEG.

Side by side in one run, the paper's network (bf16 autocast, channels_last, batch ``--batch``,
PaperSGD) trained on:

1. synthetic: uint8 batches already on the device (no data path at all);
2. end to end: a JPEG store of ``--images`` photo-like 256x256 images (written first, with the
   store code of ``alexnet prepare``), read by :class:`alexnet.data.Loader` with ``--threads``
   decoding threads into pinned uint8 batches, copied asynchronously, augmented on the device.
   Data-path efficiency = (2) / (1) (target >= 0.9);

and the decoders alone, without training:

3. CPU: the Loader's threads (simplejpeg) decoding the store into uint8 batches, images/s;
4. nvJPEG: ``torchvision.io.decode_jpeg(device="cuda")`` on batches of the same payloads, when a
   CUDA build of torchvision is importable (it is not a dependency; otherwise the line says so).

    python benchmarks/bench_jpeg_gpu.py --json out.json                     # one H200: about 3 minutes
    DEVICE=cpu python benchmarks/bench_jpeg_gpu.py --images 512 --batch 16 --steps 3 --warmup 1   # check the script
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHUNK = 256


def _write_chunk(job) -> np.ndarray:
    """One part of the store: photo-like images (32 drawn, the rest derived), encoded, written."""
    from bench_store import photos

    from alexnet.data import jpeg

    folder, k, n, size = job
    images = photos(n, size, seed=k, unique=32)
    jpeg.write_part(Path(folder) / jpeg.part_name(k), [jpeg.encode(im) for im in images])
    return jpeg.part_index(Path(folder), k, n)


def write_jpeg_store(root: Path, n: int, size: int, classes: int = 1000, workers: int | None = None) -> Path:
    from alexnet.atomic import atomic_write_json
    from alexnet.data.statistics import pixel_statistics, pixel_sums

    from bench_store import photos

    (root / "train_jpeg").mkdir(parents=True)
    jobs = [(str(root / "train_jpeg"), k, min(CHUNK, n - s), size) for k, s in enumerate(range(0, n, CHUNK))]
    with ProcessPoolExecutor(workers) as pool:
        rows = list(pool.map(_write_chunk, jobs))
    np.save(root / "train_index.npy", np.concatenate(rows))
    labels = (np.arange(n) % classes).astype(np.int64)
    np.save(root / "train_labels.npy", labels)
    mean_image, eigenvalues, eigenvectors, covariance = pixel_statistics(*pixel_sums(photos(64, size, seed=0, unique=64)), 64)
    np.savez(root / "stats.npz", mean_image=mean_image, pca_eigenvalues=eigenvalues, pca_eigenvectors=eigenvectors,
             pixel_covariance=covariance)
    atomic_write_json(root / "manifest.json", {
        "format": "alexnet-store", "format_version": 1, "complete": True, "image_size": size, "channels": 3,
        "encoding": "jpeg", "classes": [f"c{c}" for c in range(classes)], "class_ids": [f"c{c}" for c in range(classes)],
        "splits": {"train": {"count": n, "per_class": np.bincount(labels, minlength=classes).tolist()}}})
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Step:
    """The training step: augment on the device, forward/backward in bf16 (CUDA), PaperSGD."""

    def __init__(self, store, device: torch.device, classes: int) -> None:
        from alexnet.data.augment import TrainAugment
        from alexnet.model import AlexNet, init_weights_
        from alexnet.optim import PaperSGD

        self.device = device
        self.cuda = device.type == "cuda"
        self.model = init_weights_(AlexNet(classes)).to(device, memory_format=torch.channels_last if self.cuda else torch.preserve_format)
        self.opt = PaperSGD(self.model.parameters(), lr=0.01)
        self.augment = TrainAugment(store.mean_image, store.pca_eigenvalues, store.pca_eigenvectors, crop_size=224).to(device)
        self.gen = torch.Generator(device).manual_seed(0)

    def __call__(self, images_u8: torch.Tensor, labels: torch.Tensor) -> None:
        x = self.augment(images_u8.to(self.device, non_blocking=True), self.gen)
        y = labels.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def synthetic_rate(step: Step, store, batch: int, steps: int, warmup: int) -> float:
    images = torch.from_numpy(store.split("train").images[:batch]).to(step.device)
    labels = torch.from_numpy(store.split("train").labels[:batch]).to(step.device)
    for _ in range(warmup):
        step(images, labels)
    _sync(step.device)
    t = time.perf_counter()
    for _ in range(steps):
        step(images, labels)
    _sync(step.device)
    return steps * batch / (time.perf_counter() - t)


def end_to_end_rate(step: Step, store, batch: int, steps: int, warmup: int, threads: int) -> float:
    from alexnet.data import Loader

    loader = Loader(store.split("train"), batch, shuffle=True, seed=0, drop_last=True, workers=threads,
                    prefetch_batches=2 * threads, pin_memory=step.cuda)
    it = iter(loader)
    for _ in range(warmup):
        step(*next(it))
    _sync(step.device)
    t = time.perf_counter()
    done = 0
    for _ in range(steps):
        try:
            images, labels = next(it)
        except StopIteration:
            loader.set_epoch(loader.epoch + 1)
            it = iter(loader)
            images, labels = next(it)
        step(images, labels)
        done += len(labels)
    _sync(step.device)
    return done / (time.perf_counter() - t)


def cpu_decode_rate(store, batch: int, threads: int, limit: int) -> float:
    from alexnet.data import Loader

    loader = Loader(store.split("train"), batch, shuffle=True, seed=1, drop_last=True, workers=threads,
                    prefetch_batches=2 * threads, pin_memory=torch.cuda.is_available())
    t = time.perf_counter()
    done = 0
    for _, labels in loader:
        done += len(labels)
        if done >= limit:
            break
    return done / (time.perf_counter() - t)


def nvjpeg_rate(store, batch: int, limit: int, device: torch.device) -> tuple[float | None, str]:
    try:
        import torchvision
        from torchvision.io import decode_jpeg
    except Exception as e:  # not installed, or built for another torch
        return None, f"torchvision not importable ({type(e).__name__}): nvJPEG not measured"
    if device.type != "cuda":
        return None, "nvJPEG needs CUDA: not measured"
    images = store.split("train").images
    order = np.random.default_rng(2).permutation(len(images))[:limit]
    batches = [[torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in images._payloads(order[s : s + batch])]
               for s in range(0, len(order), batch)]
    try:
        decode_jpeg(batches[0], device=device)  # warm-up (and a check that this build has nvJPEG)
        _sync(device)
        t = time.perf_counter()
        for b in batches:
            decode_jpeg(b, device=device)
        _sync(device)
    except Exception as e:
        return None, f"torchvision {torchvision.__version__} could not decode on the GPU ({str(e).splitlines()[0]})"
    return len(order) / (time.perf_counter() - t), f"torchvision {torchvision.__version__}, payloads in host memory"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=os.environ.get("DEVICE", "cuda"))
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="decoding threads (default: one per core)")
    p.add_argument("--dir", default=None, help="where to write the store (default: a temporary folder)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    device = torch.device(a.device)
    threads = a.threads or len(os.sched_getaffinity(0))
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        t = time.perf_counter()
        from alexnet.data import open_store

        store = open_store(write_jpeg_store(Path(tmp) / "store", a.images, 256))
        size = sum(f.stat().st_size for f in (store.path / "train_jpeg").iterdir())
        print(f"data: JPEG store of {a.images} photo-like 256x256 images, {size / a.images / 1000:.1f} KB each, written in "
              f"{time.perf_counter() - t:.0f} s; {threads} decoding threads; {device}", flush=True)
        step = Step(store, device, 1000)
        synthetic = synthetic_rate(step, store, a.batch, a.steps, a.warmup)
        print(f"synthetic (uint8 batches on the device): {synthetic:,.0f} img/s", flush=True)
        e2e = end_to_end_rate(step, store, a.batch, a.steps, a.warmup, threads)
        print(f"end to end from the JPEG store:          {e2e:,.0f} img/s; data-path efficiency {e2e / synthetic:.2f} (target >= 0.9)", flush=True)
        limit = min(a.images, max(20 * a.batch, 4096))
        cpu = cpu_decode_rate(store, a.batch, threads, limit)
        print(f"CPU decode, {threads} threads (simplejpeg):  {cpu:,.0f} img/s ({cpu / threads:,.0f} per thread)", flush=True)
        gpu, how = nvjpeg_rate(store, a.batch, limit, device)
        print(f"nvJPEG decode: {f'{gpu:,.0f} img/s ({how})' if gpu else how}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(dict(device=str(device), images=a.images, batch=a.batch, threads=threads,
                                                synthetic=synthetic, end_to_end=e2e, efficiency=e2e / synthetic,
                                                cpu_decode=cpu, nvjpeg=gpu, nvjpeg_note=how), indent=1))


if __name__ == "__main__":
    main()
