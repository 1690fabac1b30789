"""LRN forward+backward: our kernels vs a torch-only LRN in the same memory layout, side by side.

At the paper's two LRN layers (after conv1: N x 96 x 55 x 55, after conv2: N x 256 x 27 x 27,
both normalised per tower, groups=2) it times, interleaved over the same repeats:

    ours    alexnet.kernels.local_response_norm (the backend picked for the tensor)
    eager   the closed-form autograd Function in eager torch (the fallback backend)
    torch   torch-only LRN with the same constants (alpha = n * alpha_eff), per tower, that keeps
            the input's memory layout: on NCHW it is torch.nn.functional.local_response_norm; on
            channels_last it sums the channel window with avg_pool1d over the innermost (channel)
            dimension, so no NCHW copy is made (F.local_response_norm computes its window in NCHW,
            and splitting a channels_last batch into towers copies it to NCHW); checked equal to
            F.local_response_norm, values and gradients, before timing
    conv    the convolution that precedes the LRN, forward+backward, for scale

The whole measurement is repeated ``--runs`` times (at least 3); each run's figure is the median of
its ``--repeats``. Printed per variant and per ratio: median over the runs [min-max].

    python benchmarks/bench_lrn.py                     # CPU, batch 32 (3 minutes on 2 busy cores)
    python benchmarks/bench_lrn.py --device cuda --amp --channels-last
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from alexnet.lrn import backend_for, local_response_norm
from alexnet.kernels.lrn_autograd import local_response_norm as eager_lrn
from measure import check_runs, ratios, runs_argument, spread, timed

SIZE, ALPHA, BETA, K, GROUPS = 5, 1e-4, 0.75, 2.0, 2  # the paper's constants, one group per tower


def torch_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN from torch operations only, in ``x``'s memory layout; alpha multiplies the plain sum, groups apart.

    The same arithmetic as F.local_response_norm (square, average over the zero-padded window, times
    n * alpha, plus k, to the power beta, divide), computed where the channels lie in memory.
    """
    n, c, h, w = x.shape
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        blocks = x.reshape(n * groups, c // groups, h, w)  # a view of an NCHW tensor
        return F.local_response_norm(blocks, size, alpha * size, beta, k).reshape(x.shape)
    nhwc = x.permute(0, 2, 3, 1)  # channels_last: the same memory as an NHWC contiguous tensor
    square = (nhwc * nhwc).reshape(n * h * w * groups, 1, c // groups)
    mean = F.avg_pool1d(F.pad(square, (size // 2, (size - 1) // 2)), size, stride=1).reshape(n, h, w, c)
    return (nhwc / mean.mul(alpha * size).add(k).pow(beta)).permute(0, 3, 1, 2)


def check_torch_lrn(device: torch.device) -> None:
    """torch_lrn equals F.local_response_norm (values and gradients) and keeps the layout, in both layouts."""
    x = torch.randn(3, 12, 5, 7, device=device, dtype=torch.float64) * 30
    for groups in (1, 2):
        reference_input = x.detach().clone().requires_grad_(True)
        blocks = reference_input.reshape(3 * groups, 12 // groups, 5, 7)
        reference = F.local_response_norm(blocks, SIZE, ALPHA * SIZE, BETA, K).reshape(x.shape)
        grad = torch.randn_like(reference)
        reference.backward(grad)
        for fmt in (torch.contiguous_format, torch.channels_last):
            given = x.detach().contiguous(memory_format=fmt).requires_grad_(True)
            out = torch_lrn(given, SIZE, ALPHA, BETA, K, groups)
            out.backward(grad)
            torch.testing.assert_close(out, reference, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(given.grad, reference_input.grad, rtol=1e-12, atol=1e-12)
            assert out.is_contiguous(memory_format=fmt), f"torch_lrn changed the layout ({fmt}, groups {groups})"


def layers(batch: int) -> dict[str, dict]:
    """conv1 and conv2 of the paper with the shapes of their inputs."""
    return {
        "conv1": dict(conv=torch.nn.Conv2d(3, 96, 11, stride=4), input=(batch, 3, 227, 227), input_grad=False),
        "conv2": dict(conv=torch.nn.Conv2d(96, 256, 5, padding=2, groups=2), input=(batch, 96, 27, 27), input_grad=True),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    runs_argument(parser)
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant in each run (median taken)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed repetitions per variant first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations")
    parser.add_argument("--skip-torch", action="store_true", help="leave out the torch-only LRN")
    args = parser.parse_args(argv)
    check_runs(args.runs)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)
    check_torch_lrn(device)
    torch.manual_seed(0)

    print(f"device={device} threads={torch.get_num_threads()} batch={args.batch} amp={args.amp} "
          f"channels_last={args.channels_last} runs={args.runs} repeats={args.repeats} torch={torch.__version__}")
    print("torch-only LRN checked equal to F.local_response_norm (values, gradients) in both layouts")
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
                return out
            return run

        def conv_step():
            conv.zero_grad(set_to_none=True)
            with amp:
                out = conv(x_in)
            out.backward(grad)
            return out

        variants = {"ours": lrn_step(local_response_norm), "eager": lrn_step(eager_lrn)}
        if not args.skip_torch:
            variants["torch"] = lrn_step(torch_lrn)
        variants["conv"] = conv_step
        for key, fn in variants.items():
            for _ in range(args.warmup):
                out = fn()
            if key != "conv" and not out.is_contiguous(memory_format=fmt):
                print(f"  note: {key} returns another memory layout than its input's")
        per_run: dict[str, list[float]] = {k: [] for k in variants}  # each run's median seconds
        for _ in range(args.runs):
            times: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):  # interleaved, so that load from elsewhere hits all alike
                for key, fn in variants.items():
                    times[key].append(timed(fn, device))
            for key in variants:
                per_run[key].append(statistics.median(times[key]))
        for key in variants:
            print(f"  {key:6s} fwd+bwd  {spread([t * 1e3 for t in per_run[key]], '.2f', 'ms')}")
        if "torch" in per_run:
            print(f"  torch / ours = {spread(ratios(per_run['torch'], per_run['ours']), '.1f')}x   (target >= 5x)")
        print(f"  eager / ours = {spread(ratios(per_run['eager'], per_run['ours']), '.1f')}x")
        print(f"  ours / {name} = {spread(ratios(per_run['ours'], per_run['conv']), '.2f')}   (LRN cost relative to the conv before it)")
        if "torch" in per_run:
            print(f"  torch / {name} = {spread(ratios(per_run['torch'], per_run['conv']), '.2f')}")


if __name__ == "__main__":
    main()
