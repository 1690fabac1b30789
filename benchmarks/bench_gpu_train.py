"""End-to-end training throughput on a GPU: one training step, fed three ways, so that only the data path differs.

The step is the training loop's: the recipe's network and PaperSGD over its parameter groups (built
by ``alexnet.training.recipe`` as ``train()`` builds them), the precision and layout that
``resolve_runtime`` picks (bf16 autocast and channels_last on CUDA), the loss in fp32, the non-finite
check kept on the device (``alexnet.training.step.Step``), optionally torch.compile. The same model and optimizer
take every step. The feeds:

    synthetic  one uint8 batch already on the device, augmented there every step: no loading (the ceiling)
    ours       the training loop's input path (``alexnet.data.augment.device_batches``): the Loader's
               threads gather uint8 batches from the memory-mapped store into pinned memory, copied
               asynchronously on a stream of their own, cropped, reflected, lit and centred on the device
    ours, one stream   (on a GPU) the same with the copies on the step's stream
    baseline   torch DataLoader worker processes decode each JPEG with Pillow and augment it on its own
               (benchmarks/pillow_baseline.py: the same augmentation), float batches pinned and copied

The feeds take turns, ``--runs`` times (at least 3), each timing ``--steps`` steps after its warm-up.
For reference it also runs the training loop itself, ``train()`` for two epochs (images/s of epoch 2),
once per run. Printed per feed and per ratio: median over the runs [min-max]; the data-path
efficiency is ours / synthetic (goal >= 0.9). ``--json FILE`` also writes every run's figures.
Runs on the CPU too (tiny sizes) to check the script.

    python benchmarks/bench_gpu_train.py --images 20000 --steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from measure import check_runs, ratios, runs_argument, spread, sync
from pillow_baseline import PillowAugmentFolder, write_jpegs


class TrainStep:
    """The training loop's step (:class:`alexnet.training.step.Step`, with the run's speed levers), on
    whatever batches it is given; the non-finite flag stays on the device until the end."""

    def __init__(self, config, store, device: torch.device) -> None:
        from alexnet.runtime import resolve_runtime
        from alexnet.speed import levers
        from alexnet.training.recipe import build_model, build_optimizer, model_args
        from alexnet.training.step import Step

        self.rt = resolve_runtime(config, device)
        levers.check(config, model_args(config, store), device, 1)
        torch.manual_seed(0)
        self.model = build_model(config, store).to(device, memory_format=self.rt.memory_format).train()
        levers.use_step_kernels(self.model, config)
        self.optimizer, _ = build_optimizer(config, self.model)
        step_model = torch.compile(self.model, mode=config.compile_mode) if config.compile else self.model
        self.step = Step(step_model, self.optimizer, self.rt, "stop", lambda flag: flag, keeps=lambda: "")
        levers.speed_up(self.step, self.model, config)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        self.step(x, labels, read=False, where=lambda: "")


def synthetic_feed(store, augment, rt, batch: int):
    """One uint8 batch on the device, augmented there every step."""
    generator = torch.Generator(rt.device).manual_seed(0)
    images = torch.from_numpy(np.array(store.split("train").images[:batch])).to(rt.device)
    labels = torch.from_numpy(np.asarray(store.split("train").labels[:batch])).to(rt.device)
    while True:
        x = augment(images, generator)
        yield (x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x), labels


def our_feed(store, augment, rt, batch: int, workers: int, copy_stream: bool = True):
    """The training loop's input path, epoch after epoch (``copy_stream``: copies on a stream of their own)."""
    from alexnet.data import Loader
    from alexnet.data.augment import device_batches

    loader = Loader(store.split("train"), batch, shuffle=True, seed=0, drop_last=True, workers=workers,
                    pin_memory=rt.device.type == "cuda")
    generator = torch.Generator(rt.device).manual_seed(0)
    for epoch in range(1 << 30):
        loader.set_epoch(epoch)
        yield from device_batches(loader, augment, generator, rt.device, rt.channels_last, copy_stream=copy_stream)


def baseline_feed(root: Path, store, rt, config, workers: int):
    """DataLoader + per-image Pillow decoding and augmentation; float batches pinned and copied."""
    dataset = PillowAugmentFolder(root / "train", store, config.crop_size, pca_lighting_std=config.pca_lighting_std,
                                  input_scale=config.input_scale)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size_per_device, shuffle=True, num_workers=workers, pin_memory=rt.device.type == "cuda",
        drop_last=True, persistent_workers=workers > 0)
    while True:
        for x, labels in loader:
            x = x.to(rt.device, non_blocking=True)
            yield (x.contiguous(memory_format=torch.channels_last) if rt.channels_last else x), labels.to(rt.device, non_blocking=True)


def steps_per_second(step: TrainStep, feed, steps: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(feed))
    sync(device)
    return steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20000, help="training images to generate")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="images per step")
    p.add_argument("--steps", type=int, default=100, help="timed steps per feed and run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per feed first")
    runs_argument(p)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader threads / DataLoader workers")
    p.add_argument("--size", type=int, default=256, help="prepared image side (the paper: 256)")
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"))
    p.add_argument("--cuda-graph", action="store_true", help="the whole step as one CUDA graph, as 'alexnet train "
                                                              "--cuda-graph' (CUDA only)")
    p.add_argument("--step-kernels", default="", metavar="LIST",
                   help="the step's faster kernels, as 'alexnet train --step-kernels' (e.g. all)")
    p.add_argument("--skip-train", action="store_true", help="leave out the train() reference runs")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", help="where to write the images and the store (default: a temp dir)")
    p.add_argument("--json", help="also write the results to this file")
    a = p.parse_args(argv)
    check_runs(a.runs)

    from alexnet.config import TrainConfig
    from alexnet.data import open_store, prepare_store
    from alexnet.runtime import pick_device
    from alexnet.training import train
    from alexnet.training.recipe import build_augment

    device = pick_device(a.device)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="alexnet-bench-"))
    src, store_dir = work / "jpeg", work / "store"
    t = time.perf_counter()
    if not (src / "train").exists():
        write_jpegs(src, a.images, a.classes, a.size, val_every=10, wider=40)
    if not (store_dir / "manifest.json").exists():
        prepare_store(src, store_dir, image_size=a.size, progress_bar=False, log=lambda s: None)
    print(f"data: {a.images} JPEGs and their store in {time.perf_counter() - t:.0f} s ({work})", flush=True)
    store = open_store(store_dir)
    config = TrainConfig(epochs=2, batch_size_per_device=a.batch, crop_size=a.crop, loader_workers=a.workers,
                         compile=a.compile, compile_mode=a.compile_mode, device=str(device), cuda_graph=a.cuda_graph,
                         step_kernels=tuple(filter(None, a.step_kernels.split(","))))  # the paper's recipe otherwise
    step = TrainStep(config, store, device)
    rt = step.rt
    augment, _ = build_augment(config, store, device)
    feeds = {"synthetic": synthetic_feed(store, augment, rt, a.batch),
             "ours": our_feed(store, augment, rt, a.batch, a.workers),
             "baseline": baseline_feed(src, store, rt, config, a.workers)}
    if device.type == "cuda":  # the same path with the copies on the step's stream: what the copy stream pays
        feeds["ours, one stream"] = our_feed(store, augment, rt, a.batch, a.workers, copy_stream=False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, batch {a.batch}, precision {rt.precision}, channels_last {rt.channels_last}, "
          f"compile {a.compile} ({a.compile_mode}), step kernels {','.join(config.step_kernels) or 'none'}, cuda graph {a.cuda_graph}, workers {a.workers}, runs {a.runs} x {a.steps} steps", flush=True)
    for feed in feeds.values():
        for _ in range(a.warmup):
            step(*next(feed))
    rates: dict[str, list[float]] = {k: [] for k in feeds}
    rates["train()"] = []
    for r in range(a.runs):
        for key, feed in feeds.items():
            rates[key].append(a.batch * steps_per_second(step, feed, a.steps, device))
        if not a.skip_train:
            with tempfile.TemporaryDirectory() as run:
                metrics = train(config, store_dir, Path(run) / "run", show_progress=False, log=lambda s: None)
            rates["train()"].append(metrics[-1]["images_per_s"])
        print(f"run {r + 1}: " + "   ".join(f"{k} {v[-1]:,.0f}" for k, v in rates.items() if v) + " images/s", flush=True)
    if bool(step.step.guard.pending):  # the flag the step kept on the device, read once here
        print("warning: a non-finite loss or gradient occurred during the timed steps")

    print(f"synthetic, uint8 batch on the device        {spread(rates['synthetic'], ',.0f', 'images/s')}")
    print(f"ours, the training input path from the store {spread(rates['ours'], ',.0f', 'images/s')}")
    print(f"baseline, DataLoader + Pillow per image      {spread(rates['baseline'], ',.0f', 'images/s')}")
    if rates["train()"]:
        print(f"train(), the whole loop, epoch 2             {spread(rates['train()'], ',.0f', 'images/s')}")
    if "ours, one stream" in rates:
        print(f"ours with the copies on the step's stream  {spread(rates['ours, one stream'], ',.0f', 'images/s')}"
              f"; ours / it: {spread(ratios(rates['ours'], rates['ours, one stream']), '.3f')}")
    efficiency = ratios(rates["ours"], rates["synthetic"])
    print(f"data-path efficiency, ours / synthetic: {spread(efficiency, '.2f')}  (goal >= 0.9)")
    print(f"ours / baseline: {spread(ratios(rates['ours'], rates['baseline']), '.1f')}x")
    if rates["train()"]:
        print(f"train() / synthetic: {spread(ratios(rates['train()'], rates['synthetic']), '.2f')}")
    results = {"device": name, "batch": a.batch, "compile": a.compile, "compile_mode": a.compile_mode,
               "step_kernels": list(config.step_kernels), "cuda_graph": a.cuda_graph, "precision": rt.precision,
               "images_per_s": rates, "data_path_efficiency": efficiency}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
