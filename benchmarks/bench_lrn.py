"""LRN forward+backward: our kernels vs torch.nn.functional.local_response_norm, side by side.

At the paper's two LRN layers (after conv1: N x 96 x 55 x 55, after conv2: N x 256 x 27 x 27,
both normalised per tower, groups=2) it times, interleaved over the same repeats:

    ours    alexnet.kernels.local_response_norm (the backend picked for the tensor)
    eager   the closed-form autograd Function in eager torch (the fallback backend)
    torch   F.local_response_norm with the same constants (alpha = n * alpha_eff) per tower
    conv    the convolution that precedes the LRN, forward+backward, for scale

and prints medians, the speed-up over torch (target: >= 5x) and the cost relative to the conv.

    python benchmarks/bench_lrn.py                     # CPU, batch 32 (about a minute on 2 cores)
    python benchmarks/bench_lrn.py --device cuda --amp --channels-last
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from alexnet.kernels import backend_for, local_response_norm
from alexnet.kernels.lrn_autograd import local_response_norm as eager_lrn

SIZE, ALPHA, BETA, K, GROUPS = 5, 1e-4, 0.75, 2.0, 2  # the paper's constants, one group per tower


def torch_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """torch's LRN with our signature: alpha multiplies the plain sum, groups normalised apart."""
    n, c = x.shape[:2]
    blocks = x.reshape(n * groups, c // groups, *x.shape[2:])
    return F.local_response_norm(blocks, size, alpha * size, beta, k).reshape(x.shape)


def layers(batch: int) -> dict[str, dict]:
    """conv1 and conv2 of the paper with the shapes of their inputs."""
    return {
        "conv1": dict(conv=torch.nn.Conv2d(3, 96, 11, stride=4), input=(batch, 3, 227, 227), input_grad=False),
        "conv2": dict(conv=torch.nn.Conv2d(96, 256, 5, padding=2, groups=2), input=(batch, 96, 27, 27), input_grad=True),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], None], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per variant first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations")
    parser.add_argument("--skip-torch", action="store_true", help="leave out torch's LRN (slow on CPU)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    torch.manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} amp={args.amp} "
          f"channels_last={args.channels_last} torch={torch.__version__}")
    for name, spec in layers(args.batch).items():
        conv = spec["conv"].to(device, memory_format=fmt)
        x_in = torch.randn(spec["input"], device=device).contiguous(memory_format=fmt) * 50
        x_in.requires_grad_(spec["input_grad"])
        with amp, torch.no_grad():
            act = F.relu(conv(x_in))  # a realistic LRN input: a ReLU output
        grad = torch.randn_like(act)
        print(f"\n{name}: LRN input {tuple(act.shape)} {act.dtype}, backend '{backend_for(act)}'")

        def lrn_step(fn):
            def run():
                a = act.detach().requires_grad_(True)
                with amp:
                    out = fn(a, SIZE, ALPHA, BETA, K, GROUPS)
                out.backward(grad)
            return run

        def conv_step():
            conv.zero_grad(set_to_none=True)
            with amp:
                out = conv(x_in)
            out.backward(grad)

        variants = {"ours": lrn_step(local_response_norm), "eager": lrn_step(eager_lrn)}
        if not args.skip_torch:
            variants["torch"] = lrn_step(torch_lrn)
        variants["conv"] = conv_step
        for fn in variants.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits all alike
            for key, fn in variants.items():
                times[key].append(timed(fn, device))
        med = {k: statistics.median(v) for k, v in times.items()}
        for key in variants:
            print(f"  {key:6s} fwd+bwd  median {med[key] * 1e3:9.2f} ms   min {min(times[key]) * 1e3:9.2f} ms")
        best = {k: min(v) for k, v in times.items()}
        if "torch" in med:
            print(f"  torch / ours = {med['torch'] / med['ours']:.1f}x (medians), "
                  f"{best['torch'] / best['ours']:.1f}x (fastest)   (target >= 5x)")
        print(f"  eager / ours = {med['eager'] / med['ours']:.1f}x")
        print(f"  ours / {name} = {med['ours'] / med['conv']:.2f}   (LRN cost relative to the conv before it)")
        if "torch" in med:
            print(f"  torch / {name} = {med['torch'] / med['conv']:.2f}")


if __name__ == "__main__":
    main()
