"""The training step's speed levers, each alone and all together, and what today's step spends its time on.

Levers (alexnet/kernels/):

    s2d     conv1 by space-to-depth, a 3x3 stride-1 conv over 48 channels (conv1_s2d.py)
    fused   bias + ReLU + LRN + max-pool 3/2 of conv1 and conv2 as one kernel each way (fused_blocks.py)
    sgd     PaperSGD in one pass over flat buffers, non-finite flag on the device (fused_sgd.py)
    bf16w   with sgd: the same pass also writes bfloat16 weights, which the forward pass reads instead
            of autocast's casts (bf16_weights.py; bf16 steps only, and measured as sgd+bf16w)
    grouped the towers' grouped convolutions conv2, conv4, conv5 computed the way ``--grouped-impl`` says
            (speed/grouped.py; by default the fastest per layer in part 7)
    graph   the whole step (forward, backward, update) captured once as a CUDA graph and replayed (CUDA only)
    all     the six together

Printed, each figure a median over ``--runs`` runs [min-max]:

1. images/s of a training step (bf16 autocast and channels_last on CUDA, the paper's network and
   recipe, random batches already on the device) for today's step and for every lever, at each
   ``--batch``; MFU against the device's spec dense peak (benchmarks/peaks.py) and against a measured
   matmul; the variants take turns step by step so that other load hits all of them alike;
2. the input path's host syncs: device-side augmentation with the reflection by ``nonzero()`` and an
   unpinned label copy, against the sync-free reflection and pinned labels;
3. conv1 forward+backward: cuDNN as today, input channels zero-padded 3 -> 8, space-to-depth, and
   (``--max-autotune``) ``torch.compile(mode="max-autotune")``;
4. the block tail at conv1's and conv2's shapes, forward+backward, fused vs today's chain (bias in the
   conv, ReLU, our LRN kernel, pool), GPU time only (``triton.testing.do_bench``), against the bytes the
   fused kernels must move and the time those take at the device's spec memory bandwidth;
5. the all-levers step against today's over 20 steps from the same weights: the largest relative
   difference of the losses (bf16 tolerance);
6. a torch.profiler table of today's step: the kernels by time, their share, and whether each is a
   tensor-core kernel (judged from its name);
7. the grouped convolutions at conv2's (27x27, 96 -> 256, 5x5 pad 2), conv4's (13x13, 384 -> 384, 3x3)
   and conv5's (13x13, 384 -> 256) shapes, forward + backward (input, weight and bias gradients),
   each computed three ways: cuDNN's ``groups=2`` as today, two dense halves, one dense
   block-diagonal weight; GPU time only, time against today's, and the fastest per layer. With
   ``--grouped-impl auto`` (the default) and part 1 or 5 asked for, part 7 runs first and its
   fastest way per layer is the ``grouped`` lever.

    python benchmarks/bench_levers.py --device cuda                 # about two minutes on an H200
    python benchmarks/bench_levers.py --device cpu --quick          # a dry run of every part, tiny sizes
    python benchmarks/bench_levers.py --parts 7                     # the grouped convolutions alone
    python benchmarks/bench_levers.py --device cpu --parts 1,3,7 --batch 16 --levers s2d,grouped   # a CPU's levers
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys

_argv = " ".join(sys.argv[1:]).replace("=", " ")
if "--device cpu" in _argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton kernels on the CPU (set before triton is imported)

import torch
import torch.nn.functional as F

from alexnet.data.augment import TrainAugment
from alexnet.speed import fused_blocks
from alexnet.speed.bf16_weights import Bf16Weights, reading_copies
from alexnet.speed.fused_blocks import fuse_blocks, fused_block
from alexnet.speed.conv1_s2d import space_to_depth_conv2d, use_space_to_depth_conv1
from alexnet.speed.grouped import GROUPED_CONV_IMPLS, GROUPED_LAYERS, grouped_conv2d, use_grouped_conv
from alexnet.speed.fused_sgd import FusedPaperSGD
from alexnet.model import AlexNet, init_weights_
from alexnet.optim import PaperSGD
from bench_step import forward_flops
from measure import check_runs, ratios, runs_argument, spread, sync, timed
from peaks import device_name, matmul_flops, mfu, peak_lines, step_precision

LEVERS = ("s2d", "fused", "sgd", "bf16w", "grouped", "graph")
# spec memory bandwidth, TB/s (NVIDIA datasheets); the first match on the device name wins
SPEC_BANDWIDTH_TBPS = [(r"H200 NVL", 4.8), (r"\bH200\b", 4.8), (r"H100 NVL", 3.9), (r"H100.*PCIe", 2.0),
                       (r"\bH100\b", 3.35), (r"A100.*80GB", 2.039), (r"\bA100\b", 1.555)]
TENSOR_CORE_NAMES = re.compile(r"xmma|hmma|wgmma|gmma|tensorop|_tc_|s16816|s1688|h16816|bf16.*gemm|cutlass.*16x8", re.I)


def spec_bandwidth(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    for pattern, tbps in SPEC_BANDWIDTH_TBPS:
        if re.search(pattern, device_name(device)):
            return tbps * 1e12
    return None


class Setup:
    """One variant of the training step: a model with some levers swapped in, its optimizer, a batch."""

    def __init__(self, name: str, levers: set[str], args, batch: int, device: torch.device) -> None:
        self.name, self.levers, self.device = name, levers, device
        torch.manual_seed(0)
        model = AlexNet(num_classes=args.classes, width=args.width, input_size=args.image_size)
        if "s2d" in levers:
            use_space_to_depth_conv1(model)
        if "fused" in levers:
            fuse_blocks(model)
        if "grouped" in levers:  # after fuse_blocks, which rebuilds conv2
            use_grouped_conv(model, args.grouped_impl)
        self.model = model.to(device, memory_format=args.fmt).train()
        if "sgd" in levers or "bf16w" in levers:
            self.opt = FusedPaperSGD(self.model.parameters(), lr=0.01, check_finite=True, flat_grads=True,
                                     bf16_copy="bf16w" in levers)
        else:
            self.opt = PaperSGD(self.model.parameters(), lr=0.01)
        self.copies = Bf16Weights(self.model, self.opt) if "bf16w" in levers else None
        g = torch.Generator().manual_seed(1)
        side = args.image_size
        self.images = torch.randn(batch, 3, side, side, generator=g).mul_(50).to(device).contiguous(memory_format=args.fmt)
        self.labels = torch.randint(0, args.classes, (batch,), generator=g).to(device)
        self.amp = args.amp
        self.graph = None
        self.loss = None
        if "graph" in levers:
            self._capture()

    def _forward_weights(self):
        return reading_copies(self.copies)

    def _eager_step(self) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp), self._forward_weights():
            logits = self.model(self.images)
        loss = F.cross_entropy(logits.float(), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _capture(self) -> None:
        """Warm up on a side stream, then capture one whole step (PyTorch's whole-network recipe)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=not isinstance(self.opt, FusedPaperSGD))
        with torch.cuda.graph(self.graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp), self._forward_weights():
                logits = self.model(self.images)
            self.loss = F.cross_entropy(logits.float(), self.labels)
            if isinstance(self.opt, FusedPaperSGD):
                self.opt.zero_grad()  # the flat gradient buffer zeroed inside the graph
            self.loss.backward()
            self.opt.step()

    def step(self) -> torch.Tensor:
        if self.graph is not None:
            self.graph.replay()
            return self.loss
        return self._eager_step()


def lever_sets(device: torch.device, levers: tuple[str, ...] = LEVERS, amp: bool = True) -> list[tuple[str, set[str]]]:
    """Today's step, each of ``levers`` alone (bf16w with sgd), and all of them together (no CUDA
    graph off CUDA, no bf16w without bf16 autocast)."""
    levers = tuple(lever for lever in levers if (device.type == "cuda" or lever != "graph") and (amp or lever != "bf16w"))
    sets = [("today", set())] + [("sgd+bf16w", {"sgd", "bf16w"}) if lever == "bf16w" else (lever, {lever})
                                 for lever in levers]
    return sets + [("all", set(levers))] if len(levers) > 1 else sets


def bench_steps(args, device: torch.device, batch: int, flops_per_image: float, spec, measured) -> None:
    setups = []
    for name, levers in lever_sets(device, args.levers, args.amp):
        try:
            setups.append(Setup(name, levers, args, batch, device))
        except Exception as error:  # a lever that cannot run here is reported, the others still measured
            print(f"  {name}: cannot run here ({type(error).__name__}: {str(error).splitlines()[0]})")
    for s in list(setups):
        try:
            for _ in range(args.warmup):
                s.step()
        except Exception as error:
            print(f"  {s.name}: cannot run here ({type(error).__name__}: {str(error).splitlines()[0]})")
            setups.remove(s)
    rates = {s.name: [] for s in setups}
    for _ in range(args.runs):
        times = {s.name: [] for s in setups}
        for _ in range(args.steps):
            for s in setups:
                times[s.name].append(timed(s.step, device))
        for s in setups:
            rates[s.name].append(batch / statistics.median(times[s.name]))
    print(f"\n[1] training step, batch {batch}: images/s and MFU ({args.runs} runs of {args.steps} steps, median step each)")
    for s in setups:
        achieved = [r * flops_per_image for r in rates[s.name]]
        print(f"  {s.name:9s} {spread(rates[s.name], ',.0f', 'images/s')}   {mfu(achieved, spec, measured)}")
    if "today" in rates:
        for s in setups[1:]:
            print(f"  {s.name:9s} / today = {spread(ratios(rates[s.name], rates['today']), '.3f')}")
    if "sgd" in rates and "sgd+bf16w" in rates:  # what the bf16 weights add to the one-pass update
        print(f"  sgd+bf16w / sgd = {spread(ratios(rates['sgd+bf16w'], rates['sgd']), '.3f')}")
    del setups
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_input_path(args, device: torch.device, batch: int) -> None:
    """Augmentation on the device with and without the reflection's host sync and the unpinned label copy."""
    side, crop = (256, 224) if not args.quick else (72, 64)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, side, side, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, args.classes, (batch,), generator=g)
    pinned = device.type == "cuda"
    images_pinned = images.pin_memory() if pinned else images
    labels_pinned = labels.pin_memory() if pinned else labels
    mean = torch.rand(side, side, 3).mul_(255)
    eigenvectors, eigenvalues = torch.linalg.qr(torch.randn(3, 3))[0], torch.tensor([14000.0, 1200.0, 300.0])
    gen = torch.Generator(device=device).manual_seed(0)
    variants = {}
    for name, sync_free in (("nonzero flip, unpinned labels", False), ("sync-free flip, pinned labels", True)):
        augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=crop).to(device)
        augment.sync_free_flip = sync_free
        src_labels = labels_pinned if sync_free else labels

        def run(augment=augment, src_labels=src_labels):
            x = augment(images_pinned.to(device, non_blocking=True), gen)
            return x, src_labels.to(device, non_blocking=True)

        variants[name] = run
    for run in variants.values():
        run()
    rates = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, run in variants.items():
            rates[name].append(batch / statistics.median([timed(run, device) for _ in range(max(3, args.steps))]))
    print(f"\n[2] input path on the device (uint8 batch in pinned memory -> augmented batch and labels), batch {batch}")
    for name, r in rates.items():
        print(f"  {name:32s} {spread(r, ',.0f', 'images/s')}")
    names = list(rates)
    print(f"  sync-free / nonzero = {spread(ratios(rates[names[1]], rates[names[0]]), '.3f')}")


def gpu_time(fn, device: torch.device, args) -> list[float]:
    """Seconds per call of ``fn``: triton.testing.do_bench (GPU time) on CUDA, wall time elsewhere; one figure per run."""
    out = []
    for _ in range(args.runs):
        if device.type == "cuda":
            import triton.testing

            out.append(triton.testing.do_bench(fn, warmup=25, rep=100) / 1e3)
        else:
            fn()
            out.append(statistics.median([timed(fn, device) for _ in range(3)]))
    return out


def bench_conv1(args, device: torch.device, batch: int) -> None:
    dtype = torch.bfloat16 if args.amp else torch.float32
    side = args.image_size + 3  # after the stride padding (224 -> 227)
    out = (side - 11) // 4 + 1
    x = torch.randn(batch, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=args.fmt)
    w = (torch.randn(96, 3, 11, 11, device=device, dtype=dtype) * 0.01).requires_grad_()
    b = torch.zeros(96, device=device, dtype=dtype, requires_grad=True)
    x8 = F.pad(x, (0, 0, 0, 0, 0, 5)).contiguous(memory_format=args.fmt)  # channels 3 -> 8, zeros
    g = torch.randn(batch, 96, out, out, device=device, dtype=dtype).contiguous(memory_format=args.fmt)

    def run(conv):
        def fn():
            conv().backward(g)
            w.grad = b.grad = None
        return fn

    variants = {
        "cuDNN as today": run(lambda: F.conv2d(x, w, b, stride=4)),
        "channels padded to 8": run(lambda: F.conv2d(x8, F.pad(w, (0, 0, 0, 0, 0, 5)), b, stride=4)),
        "space-to-depth": run(lambda: space_to_depth_conv2d(x, w, b, 4)),
    }
    if args.max_autotune:
        compiled = torch.compile(lambda x, w, b: F.conv2d(x, w, b, stride=4), mode="max-autotune")
        variants["max-autotune"] = run(lambda: compiled(x, w, b))
    times = {name: gpu_time(fn, device, args) for name, fn in variants.items()}
    print(f"\n[3] conv1 forward + weight backward, batch {batch}, {dtype}, {'channels_last' if args.channels_last else 'NCHW'}")
    base = times["cuDNN as today"]
    for name, t in times.items():
        print(f"  {name:22s} {spread([s * 1e3 for s in t], '.3f', 'ms')}   today / this = {spread(ratios(base, t), '.2f')}")


def bench_block(args, device: torch.device, batch: int) -> None:
    from alexnet.lrn import local_response_norm

    dtype = torch.bfloat16 if args.amp else torch.float32
    c1 = (args.image_size + 3 - 11) // 4 + 1  # 55 at 224
    c2 = (c1 - 3) // 2 + 1  # 27
    shapes = {"conv1": (batch, 2 * round(48 * args.width), c1, c1), "conv2": (batch, 2 * round(128 * args.width), c2, c2)}
    bandwidth = spec_bandwidth(device)
    print(f"\n[4] block tail forward + backward (bias, ReLU, LRN per tower, max-pool 3/2), {dtype}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}; target at conv1 <= 0.25 ms (batch 128)")
    for layer, shape in shapes.items():
        n, c, h, w = shape
        z = torch.randn(shape, device=device, dtype=dtype).mul_(3).contiguous(memory_format=args.fmt).requires_grad_()
        bias = torch.ones(c, device=device, requires_grad=True)
        ho, wo = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        g = torch.randn(n, c, ho, wo, device=device, dtype=dtype).contiguous(memory_format=args.fmt)

        def fused():
            fused_block(z, bias, 5, 1e-4, 0.75, 2.0, 2).backward(g)
            z.grad = bias.grad = None

        def today():
            a = F.relu(z + bias.view(1, -1, 1, 1).to(dtype))
            F.max_pool2d(local_response_norm(a, 5, 1e-4, 0.75, 2.0, 2), 3, 2).backward(g)
            z.grad = bias.grad = None

        t_fused, t_today = gpu_time(fused, device, args), gpu_time(today, device, args)
        size = z.element_size()
        # as written: forward z in, pooled out + 1-byte codes; backward kernel 1 z, pooled gradient and codes in,
        # the scratch t out; kernel 2 z, t, pooled gradient and codes in, dz out. At least: z in twice, dz out,
        # the pooled tensors twice
        must_move = n * c * (h * w * size * 6 + ho * wo * (size + 1) * 3)
        least = n * c * (h * w * size * 3 + ho * wo * (size + 1) * 2)
        print(f"  {layer} {tuple(shape)}: fused {spread([t * 1e3 for t in t_fused], '.3f', 'ms')}   "
              f"today {spread([t * 1e3 for t in t_today], '.3f', 'ms')}   today / fused = {spread(ratios(t_today, t_fused), '.2f')}")
        line = (f"    bytes: {must_move / 1e6:,.1f} MB as written (with the backward's scratch), "
                f"{least / 1e6:,.1f} MB at least; fused moves {spread([must_move / t / 1e9 for t in t_fused], ',.0f', 'GB/s')}")
        if bandwidth:
            line += f"; at the spec {bandwidth / 1e12:.2f} TB/s: {must_move / bandwidth * 1e3:.3f} ms ({least / bandwidth * 1e3:.3f} ms at least)"
        print(line)


def grouped_shapes(args) -> dict[str, tuple[int, int, int, int, int]]:
    """conv2's, conv4's and conv5's (input maps, output maps, kernel, padding, side) in the benchmark's network."""
    c1, c2, c3, c4, c5 = AlexNet(num_classes=args.classes, width=args.width, input_size=args.image_size).channels
    side1 = -(-(args.image_size - 11) // 4) + 1  # 55 at 224 (conv1 after the stride padding)
    side2 = (side1 - 3) // 2 + 1  # 27
    side4 = (side2 - 3) // 2 + 1  # 13
    return {"conv2": (c1, c2, 5, 2, side2), "conv4": (c3, c4, 3, 1, side4), "conv5": (c4, c5, 3, 1, side4)}


def bench_grouped(args, device: torch.device, batch: int) -> dict[str, str]:
    """The grouped convolutions three ways, forward + backward; returns the fastest way per layer."""
    dtype = torch.bfloat16 if args.amp else torch.float32
    one_run = argparse.Namespace(runs=1)  # the ways take turns run by run, so that other load hits them alike
    fastest = {}
    print(f"\n[7] grouped convolutions (2 towers) forward + backward (input, weight, bias gradients), batch {batch}, "
          f"{'bf16 autocast' if args.amp else 'float32'}, {'channels_last' if args.channels_last else 'NCHW'}; "
          f"fp32 weights as in the model")
    for layer, (c_in, c_out, k, pad, side) in grouped_shapes(args).items():
        x = torch.randn(batch, c_in, side, side, device=device, dtype=dtype).contiguous(memory_format=args.fmt).requires_grad_()
        w = (torch.randn(c_out, c_in // 2, k, k, device=device) * 0.01).contiguous(memory_format=args.fmt).requires_grad_()
        b = torch.ones(c_out, device=device, requires_grad=True)
        g = torch.randn(batch, c_out, side, side, device=device, dtype=dtype).contiguous(memory_format=args.fmt)

        def run(impl):
            def fn():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
                    y = grouped_conv2d(x, w, b, 1, pad, 1, 2, impl)
                y.backward(g)
                x.grad = w.grad = b.grad = None
            return fn

        fns = {impl: run(impl) for impl in GROUPED_CONV_IMPLS}
        times = {impl: [] for impl in GROUPED_CONV_IMPLS}
        for _ in range(args.runs):
            for impl, fn in fns.items():
                times[impl] += gpu_time(fn, device, one_run)
        flops = 3 * 2 * batch * c_out * side * side * (c_in // 2) * k * k  # the useful multiply-adds, fwd + bwd
        print(f"  {layer} ({batch}, {c_in}, {side}, {side}) -> {c_out} maps, {k}x{k} pad {pad}, groups 2 "
              f"({flops / 1e9:.3g} useful GFLOP):")
        base = times["grouped"]
        for impl, t in times.items():
            print(f"    {impl:15s} {spread([s * 1e3 for s in t], '.3f', 'ms')}   "
                  f"{spread([flops / s / 1e12 for s in t], '.3g', 'useful TFLOP/s')}   "
                  f"grouped / this = {spread(ratios(base, t), '.2f')}")
        fastest[layer] = min(times, key=lambda impl: statistics.median(times[impl]))
        print(f"    fastest: {fastest[layer]}")
    return fastest


def parse_grouped_impl(text: str) -> str | dict[str, str]:
    """``--grouped-impl``: ``auto``, one way for the three layers, or ``conv2=halves,conv4=block_diagonal,...``."""
    if text == "auto" or text in GROUPED_CONV_IMPLS:
        return text
    mapping = {}
    for item in text.split(","):
        layer, sep, impl = item.strip().partition("=")
        if not sep or layer not in GROUPED_LAYERS or impl not in GROUPED_CONV_IMPLS:
            raise SystemExit(f"--grouped-impl {text!r}: give auto, one of {', '.join(GROUPED_CONV_IMPLS)}, or "
                             f"LAYER=WAY pairs such as conv2=halves,conv4=block_diagonal (layers {', '.join(GROUPED_LAYERS)})")
        mapping[layer] = impl
    return mapping


def parse_levers(text: str) -> tuple[str, ...]:
    levers = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in levers if x not in LEVERS]
    if unknown or not levers:
        raise SystemExit(f"--levers {text!r}: give some of {', '.join(LEVERS)}, comma-separated")
    return levers


def describe_grouped_impl(impl: str | dict[str, str]) -> str:
    return impl if isinstance(impl, str) else ", ".join(f"{layer}={way}" for layer, way in impl.items())


def check_all_levers(args, device: torch.device, batch: int, steps: int = 20) -> None:
    """Today's step and the all-levers step from the same weights on the same batches: loss differences."""
    today, fast = Setup("today", set(), args, batch, device), None
    levers = set(args.levers) - {"graph"} - (set() if args.amp else {"bf16w"})  # the graph replays a fixed batch
    fast = Setup("all", levers, args, batch, device)
    init_weights_(today.model, "he")  # gradients reach every layer (the paper's init first stalls at ln(classes))
    fast.model.load_state_dict(today.model.state_dict())
    worst = 0.0
    start = {name: p.detach().float().clone() for name, p in today.model.named_parameters()}
    g = torch.Generator().manual_seed(7)
    for _ in range(steps):
        fresh = torch.randn(today.images.shape, generator=g).mul_(50).to(device)
        today.images.copy_(fresh)
        fast.images.copy_(fresh)
        torch.manual_seed(11)
        a = today.step()
        torch.manual_seed(11)  # the same dropout masks
        b = fast.step()
        worst = max(worst, abs(float(a) - float(b)) / max(abs(float(a)), 1e-6))
    flag = getattr(fast.opt, "nonfinite", None)
    fast_params = dict(fast.model.named_parameters())
    print(f"\n[5] all eager levers ({', '.join(sorted(levers))}) vs today, {steps} steps from the same weights and "
          f"batches: largest relative loss difference {worst:.2e} (bf16 tolerance ~1e-2); "
          f"non-finite flag {int(flag) if flag is not None else 'n/a'}")
    print("    what the steps changed, levers vs today: |dw_levers - dw_today| / |dw_today| per layer (weights)")
    for name, p in today.model.named_parameters():
        if name.endswith("weight"):
            moved = p.detach().float() - start[name]
            other = fast_params[name].detach().float() - start[name]
            size = float(moved.norm())
            print(f"    {name:22s} " + (f"{float((other - moved).norm()) / size:.2e}" if size > 0 else "unchanged by today's steps"))


def profile_today(args, device: torch.device, batch: int) -> None:
    setup = Setup("today", set(), args, batch, device)
    for _ in range(2):
        setup.step()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            setup.step()
        sync(device)
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [(e.key, e.device_time_total, e.count) for e in events if e.device_time_total > 0 and str(getattr(e, "device_type", "")).endswith("CUDA")]
    else:
        kernels = [(e.key, e.self_cpu_time_total, e.count) for e in events if e.key.startswith("aten::") or "alexnet::" in e.key]
    total = sum(t for _, t, _ in kernels) or 1.0
    kernels.sort(key=lambda k: -k[1])
    clock = "GPU" if device.type == "cuda" else "CPU self"
    print(f"\n[6] today's step, batch {batch}: {clock} time by {'kernel' if device.type == 'cuda' else 'operation'} over "
          f"{args.profile_steps} profiled steps ({total / 1e3 / args.profile_steps:.2f} ms a step); TC = tensor-core kernel by its name")
    print(f"  {'share':>6s} {'ms/step':>8s} {'calls':>6s} TC  name")
    for name, t, count in kernels[: args.profile_rows]:
        tc = "yes" if TENSOR_CORE_NAMES.search(name) else ""
        print(f"  {t / total * 100:5.1f}% {t / 1e3 / args.profile_steps:8.3f} {count // args.profile_steps:6d} {tc:3s} {name[:110]}")
    tc_share = sum(t for name, t, _ in kernels if TENSOR_CORE_NAMES.search(name)) / total
    print(f"  tensor-core kernels (by name): {tc_share * 100:.1f}% of the time")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", default="128,256", help="comma-separated batch sizes (default 128,256)")
    runs_argument(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant in each run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script itself")
    parser.add_argument("--max-autotune", action="store_true", help="add torch.compile(mode='max-autotune') to the conv1 comparison (minutes)")
    parser.add_argument("--parts", default="1,2,3,4,5,6,7", help="which parts to run (default all: 1,2,3,4,5,6,7)")
    parser.add_argument("--grouped-impl", default="auto", type=parse_grouped_impl,
                        help="how the 'grouped' lever computes conv2, conv4, conv5: auto (the fastest per layer in part 7, "
                             f"which then runs first), one of {', '.join(GROUPED_CONV_IMPLS)}, or pairs such as "
                             "conv2=halves,conv4=block_diagonal,conv5=grouped")
    parser.add_argument("--levers", default=",".join(LEVERS), type=parse_levers,
                        help=f"the levers of parts 1 and 5 (default all: {','.join(LEVERS)}); on a CPU the Triton "
                             "ones (fused, sgd, bf16w) run in Triton's interpreter, far too slow at full size")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast on a CPU too (always on CUDA)")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args(argv)
    check_runs(args.runs)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: CUDA is not available here; use --device cpu --quick for a dry run")
        torch.backends.cudnn.benchmark = True
    args.amp = device.type == "cuda" or args.amp
    args.channels_last = True
    args.fmt = torch.channels_last
    args.classes, args.width, args.image_size = (1000, 1.0, 224) if not args.quick else (10, 1 / 16, 67)
    if args.quick:
        args.steps, args.warmup, args.profile_steps = 1, 1, 1
    batches = [int(b) for b in args.batch.split(",")] if not args.quick else [2]
    parts = {int(p) for p in args.parts.split(",")}
    precision = step_precision(device, args.amp)
    print(f"device={device} ({device_name(device)}) batches={batches} amp={args.amp} channels_last=True runs={args.runs} "
          f"torch={torch.__version__} triton={'yes' if fused_blocks.available() else 'NO'}"
          f"{' TRITON_INTERPRET=1' if os.environ.get('TRITON_INTERPRET') == '1' else ''}{' QUICK (toy sizes)' if args.quick else ''}")
    flops_per_image = 3 * forward_flops(AlexNet(num_classes=args.classes, width=args.width, lrn=False,
                                                input_size=args.image_size), args.image_size)
    measured = matmul_flops(device, precision, n=None if not args.quick else 256)
    spec, lines = peak_lines(device, precision, measured)
    print(f"conv+linear FLOPs per image (fwd+bwd): {flops_per_image / 1e9:.2f} G; step precision: {precision}")
    for line in lines:
        print(line)
    grouped_done = False
    if args.grouped_impl == "auto" and parts & {1, 5}:
        args.grouped_impl = bench_grouped(args, device, batches[0])  # the lever needs its winner first
        grouped_done = True
    elif args.grouped_impl == "auto":
        args.grouped_impl = "grouped"  # no step part asked for: the lever is not used
    if parts & {1, 5}:
        ways = {args.grouped_impl} if isinstance(args.grouped_impl, str) else set(args.grouped_impl.values())
        note = " (today's way in every layer: this lever changes nothing)" if ways <= {"grouped"} else ""
        print(f"\nthe grouped lever: {describe_grouped_impl(args.grouped_impl)}{note}")
    for batch in batches:
        if 1 in parts:
            bench_steps(args, device, batch, flops_per_image, spec, measured)
    batch = batches[0]
    if 2 in parts:
        bench_input_path(args, device, batch)
    if 3 in parts:
        bench_conv1(args, device, batch)
    if 4 in parts:
        bench_block(args, device, batch)
    if 5 in parts:
        check_all_levers(args, device, batch, steps=20 if not args.quick else 2)
    if 6 in parts:
        profile_today(args, device, batch)
    if 7 in parts and not grouped_done:
        bench_grouped(args, device, batch)


if __name__ == "__main__":
    main()
