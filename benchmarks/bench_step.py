"""A full training step of the paper's network, with and without LRN, side by side in one run.

One step = forward, cross-entropy, backward, PaperSGD update, on random 224x224 images:

    ours    AlexNet() with alexnet.kernels.local_response_norm (the default)
    torch   AlexNet() with torch.nn.functional.local_response_norm swapped in (alpha * n)
    no-LRN  AlexNet(lrn=False), the ceiling for any LRN

The variants take turns step by step, so that load from elsewhere on the machine hits all of
them alike. It prints

* images/s per variant (median step) and the achieved FLOP/s against a 2048x2048 float32
  matmul timed in the same run. FLOPs count the convolutions and linear layers only, 2 per
  multiply-add, and the backward as twice the forward (3x forward per step; conv1 needs no
  input gradient, so this overcounts slightly);
* ours/no-LRN (target >= 0.9) and ours/torch, from the medians and from the fastest steps (on
  a shared machine the fastest step is the least disturbed one);
* the share of our LRN kernels in a profiled step of "ours", the least noisy estimate of what
  LRN costs when other work shares the machine.

    python benchmarks/bench_step.py                  # CPU, batch 32 (about two minutes on 2 cores)
    python benchmarks/bench_step.py --device cuda --amp --channels-last --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lrn import sync, torch_lrn  # noqa: E402

import alexnet.kernels  # noqa: E402
from alexnet.model import AlexNet  # noqa: E402
from alexnet.optim import PaperSGD  # noqa: E402


def forward_flops(model: nn.Module, image_size: int) -> int:
    """Multiply-add FLOPs (x2) of the convolutions and linear layers for one image."""
    flops = 0

    def hook(module, inputs, output):
        nonlocal flops
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            flops += 2 * output[0].numel() * (module.in_channels // module.groups) * kh * kw
        elif isinstance(module, nn.Linear):
            flops += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    model.train()
    return flops


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n x n float32 matmul, the best of ``repeats``."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 2):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


class Variant:
    def __init__(self, name, model, lrn_fn, device, fmt, amp, batch, image_size):
        self.name, self.lrn_fn, self.amp = name, lrn_fn, amp
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = PaperSGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, image_size, image_size, generator=g).mul_(50).to(device).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, 1000, (batch,), generator=g).to(device)
        self.times: list[float] = []

    def step(self) -> None:
        original = alexnet.kernels.local_response_norm
        alexnet.kernels.local_response_norm = self.lrn_fn or original
        try:
            with self.amp:
                loss = nn.functional.cross_entropy(self.model(self.images), self.labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        finally:
            alexnet.kernels.local_response_norm = original


def lrn_share(variant: Variant, device: torch.device, steps: int = 2) -> float:
    """The fraction of a profiled step spent in our LRN kernels (forward and backward)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            variant.step()
        sync(device)
        total = time.perf_counter() - start
    if device.type == "cuda":  # the Triton kernels' time on the GPU
        lrn_us = sum(e.device_time_total for e in prof.key_averages() if "_lrn_" in e.key)  # the Triton kernels: _lrn_planar_forward, ...)
    else:  # the custom ops, children included
        lrn_us = sum(e.cpu_time_total for e in prof.key_averages() if e.key in ("alexnet::lrn_cpu", "alexnet::lrn_cpu_backward"))
    return lrn_us / 1e6 / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the torch-LRN variant")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    image_size = 224

    def build(lrn: bool) -> AlexNet:
        torch.manual_seed(0)
        return AlexNet(lrn=lrn)

    variants = [Variant("ours", build(True), None, device, fmt, amp, args.batch, image_size)]
    if not args.skip_torch:
        variants.append(Variant("torch", build(True), torch_lrn, device, fmt, amp, args.batch, image_size))
    variants.append(Variant("no-LRN", build(False), None, device, fmt, amp, args.batch, image_size))
    flops_per_image = 3 * forward_flops(AlexNet(lrn=False), image_size)

    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} amp={args.amp} "
          f"channels_last={args.channels_last} torch={torch.__version__}")
    print(f"LRN backend: {alexnet.kernels.backend_for(torch.zeros(1, 2, device=device, dtype=torch.bfloat16 if args.amp else torch.float32))}")
    peak = matmul_peak(device)
    for _ in range(args.warmup):
        for v in variants:
            v.step()
    sync(device)
    for _ in range(args.steps):
        for v in variants:
            sync(device)
            start = time.perf_counter()
            v.step()
            sync(device)
            v.times.append(time.perf_counter() - start)
    share = lrn_share(variants[0], device)
    peak = max(peak, matmul_peak(device))  # measured before and after: the better of the two

    rate = {v.name: args.batch / statistics.median(v.times) for v in variants}
    print(f"matmul 2048^2 fp32 peak: {peak / 1e9:.1f} GFLOP/s;  conv+linear FLOPs per image (fwd+bwd): {flops_per_image / 1e9:.2f} G")
    for v in variants:
        achieved = rate[v.name] * flops_per_image
        print(f"  {v.name:7s} {rate[v.name]:7.2f} images/s  (median step {statistics.median(v.times) * 1e3:7.1f} ms, "
              f"min {min(v.times) * 1e3:7.1f} ms)  {achieved / 1e9:6.1f} GFLOP/s = {achieved / peak:5.1%} of matmul peak")
    best = {v.name: min(v.times) for v in variants}  # the least disturbed step of each
    print(f"ours / no-LRN = {rate['ours'] / rate['no-LRN']:.3f} (medians), "
          f"{best['no-LRN'] / best['ours']:.3f} (fastest steps)   (target >= 0.9)")
    if "torch" in rate:
        print(f"ours / torch  = {rate['ours'] / rate['torch']:.2f} (medians), {best['torch'] / best['ours']:.2f} (fastest steps)")
    print(f"our LRN kernels take {share:.1%} of a profiled step of 'ours' "
          f"(so removing them would leave ours / no-LRN = {1 - share:.3f}; less noisy on a shared machine)")


if __name__ == "__main__":
    main()
