"""A full training step of the paper's network, with and without LRN, side by side in one run.

One step = forward, cross-entropy, backward, PaperSGD update, on random 224x224 images:

    ours    AlexNet() with alexnet.lrn.local_response_norm (the default)
    torch   AlexNet() with a torch-only LRN swapped in (bench_lrn.torch_lrn: the same constants,
            alpha * n, computed in the activations' memory layout, so with --channels-last no
            layer after it pays for an NCHW copy: only the LRN differs)
    no-LRN  AlexNet(lrn=False), the ceiling for any LRN

The variants take turns step by step, so that load from elsewhere on the machine hits all of
them alike, and the whole measurement is repeated ``--runs`` times (at least 3). Each run gives
images/s per variant (from its median step); printed per variant and per ratio: median over the
runs [min-max]. Also printed:

* MFU: the FLOP/s achieved against the device's spec dense peak for the precision the step runs
  in (bf16 with --amp; on CUDA without --amp the convolutions run in TF32, PyTorch's default), from
  benchmarks/peaks.py's table of GPUs, and against a square matmul measured in the same precision
  (the only reference on a CPU; measured before and after the runs, the better of the two). FLOPs
  count the convolutions and linear layers only, 2 per multiply-add, and the backward as twice the
  forward (3x forward per step; conv1 needs no input gradient, so this overcounts slightly);
* ours/no-LRN (target >= 0.9) and ours/torch;
* the share of our LRN kernels in a profiled step of "ours", the least noisy estimate of what
  LRN costs when other work shares the machine.

    python benchmarks/bench_step.py                  # CPU, batch 32 (7 minutes on 2 busy cores)
    python benchmarks/bench_step.py --device cuda --amp --channels-last --batch 128
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

import alexnet.lrn
from alexnet.model import AlexNet
from alexnet.optim import PaperSGD
from bench_lrn import torch_lrn
from measure import check_runs, ratios, runs_argument, spread, timed
from peaks import matmul_flops, mfu, peak_lines, step_precision


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


class Variant:
    def __init__(self, name, model, lrn_fn, device, fmt, amp, batch, image_size):
        self.name, self.lrn_fn, self.amp = name, lrn_fn, amp
        self.model = model.to(device, memory_format=fmt).train()
        self.opt = PaperSGD(self.model.parameters(), lr=0.01)
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(batch, 3, image_size, image_size, generator=g).mul_(50).to(device).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, 1000, (batch,), generator=g).to(device)

    def step(self) -> None:
        original = alexnet.lrn.local_response_norm
        alexnet.lrn.local_response_norm = self.lrn_fn or original
        try:
            with self.amp:  # as training does: the loss in fp32, outside autocast
                logits = self.model(self.images)
            loss = nn.functional.cross_entropy(logits.float(), self.labels)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        finally:
            alexnet.lrn.local_response_norm = original


def lrn_share(variant: Variant, device: torch.device, steps: int = 2) -> float:
    """The fraction of a profiled step spent in our LRN kernels (forward and backward)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        total = timed(lambda: [variant.step() for _ in range(steps)], device)
    if device.type == "cuda":  # the Triton kernels' time on the GPU (_lrn_planar_forward, ...)
        lrn_us = sum(e.device_time_total for e in prof.key_averages() if "_lrn_" in e.key)
    else:  # the custom ops, children included
        lrn_us = sum(e.cpu_time_total for e in prof.key_averages() if e.key in ("alexnet::lrn_cpu", "alexnet::lrn_cpu_backward"))
    return lrn_us / 1e6 / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per step (default 32)")
    runs_argument(parser)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant in each run (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations and weights")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the torch-LRN variant")
    args = parser.parse_args(argv)
    check_runs(args.runs)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    precision = step_precision(device, args.amp)
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
          f"channels_last={args.channels_last} runs={args.runs} steps={args.steps} torch={torch.__version__}")
    print(f"LRN backend: {alexnet.lrn.backend_for(torch.zeros(1, 2, device=device, dtype=torch.bfloat16 if args.amp else torch.float32))}")
    measured = matmul_flops(device, precision)
    for _ in range(args.warmup):
        for v in variants:
            v.step()
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    shares = []
    for _ in range(args.runs):
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(args.steps):
            for v in variants:
                times[v.name].append(timed(v.step, device))
        for v in variants:
            rates[v.name].append(args.batch / statistics.median(times[v.name]))
        shares.append(lrn_share(variants[0], device))
    measured = max(measured, matmul_flops(device, precision))  # before and after the runs: the better
    spec, lines = peak_lines(device, precision, measured)

    print(f"conv+linear FLOPs per image (fwd+bwd): {flops_per_image / 1e9:.2f} G; step precision: {precision}")
    for line in lines:
        print(line)
    for v in variants:
        achieved = [r * flops_per_image for r in rates[v.name]]
        print(f"  {v.name:7s} {spread(rates[v.name], ',.1f', 'images/s')}   {mfu(achieved, spec, measured)}")
    print(f"ours / no-LRN = {spread(ratios(rates['ours'], rates['no-LRN']), '.3f')}   (target >= 0.9)")
    if "torch" in rates:
        print(f"ours / torch  = {spread(ratios(rates['ours'], rates['torch']), '.2f')}")
    print(f"our LRN kernels take {spread([s * 100 for s in shares], '.1f')} % of a profiled step of 'ours' "
          f"(removing them would leave ours / no-LRN = {spread([1 - s for s in shares], '.3f')}; less noisy on a shared machine)")


if __name__ == "__main__":
    main()
