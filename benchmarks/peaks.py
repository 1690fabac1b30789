"""Model FLOP utilisation: achieved FLOP/s against the device's spec peak for the precision used.

As nanoGPT's ``estimate_mfu`` does, MFU divides the FLOP/s a step achieves by the vendor's dense peak
for the arithmetic the step runs in: the bf16 tensor-core peak for a bf16-autocast step, the TF32 peak
for an fp32 step whose convolutions cuDNN runs in TF32 (PyTorch's default on Ampere and later,
``torch.backends.cudnn.allow_tf32``), the plain fp32 peak otherwise. A second line gives the same
FLOP/s against a square matmul measured on the device in the same precision, which also covers GPUs
missing from the table, and CPUs (no spec table: measured matmul only).

The table: dense figures (without 2:4 structured sparsity), in TFLOP/s, from NVIDIA's datasheets and
architecture whitepapers. Datasheets list the tensor-core figures with sparsity, so the dense figure is
half of the one printed there:

* H100 SXM5 and H200 SXM (same GH100 compute): BF16 1,979 sparse -> 989.4, TF32 989 sparse -> 494.7,
  FP32 66.9 (NVIDIA H100 datasheet; H100 whitepaper table of peak rates; NVIDIA H200 datasheet).
* H100 PCIe: BF16 1,513 sparse -> 756.5, TF32 756 sparse -> 378, FP32 51.2 (H100 datasheet).
* H100 NVL and H200 NVL: BF16 1,671 sparse -> 835.5, TF32 835 sparse -> 417.5, FP32 60 (datasheets).
* A100 (SXM4 and PCIe, 40 and 80 GB): BF16 312 dense, TF32 156 dense, FP32 19.5 (A100 datasheet).
* A10: BF16 250 sparse -> 125, TF32 125 sparse -> 62.5, FP32 31.2 (A10 datasheet).
* L4: BF16 242 sparse -> 121, TF32 120 sparse -> 60, FP32 30.3 (L4 datasheet).
* L40S: BF16 733 sparse -> 366.5, TF32 366 sparse -> 183, FP32 91.6 (L40S datasheet).
* GeForce RTX 4090: BF16 with FP32 accumulate 165.2 dense, TF32 82.6 dense, FP32 82.6 (NVIDIA Ada
  Lovelace architecture whitepaper, appendix table for the RTX 4090).
"""

from __future__ import annotations

import re
import time

import torch

from measure import spread

# (pattern on torch.cuda.get_device_name(), label, dense TFLOP/s by precision); the first match wins,
# so the PCIe and NVL variants come before the SXM part that shares their name.
SPEC_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    (r"H200 NVL", "H200 NVL", dict(bf16=835.5, tf32=417.5, fp32=60.0)),
    (r"\bH200\b", "H200 SXM", dict(bf16=989.4, tf32=494.7, fp32=66.9)),
    (r"H100 NVL", "H100 NVL", dict(bf16=835.5, tf32=417.5, fp32=60.0)),
    (r"H100.*PCIe", "H100 PCIe", dict(bf16=756.5, tf32=378.0, fp32=51.2)),
    (r"\bH100\b", "H100 SXM", dict(bf16=989.4, tf32=494.7, fp32=66.9)),
    (r"\bA100\b", "A100", dict(bf16=312.0, tf32=156.0, fp32=19.5)),
    (r"\bA10\b", "A10", dict(bf16=125.0, tf32=62.5, fp32=31.2)),
    (r"\bL40S\b", "L40S", dict(bf16=366.5, tf32=183.0, fp32=91.6)),
    (r"\bL4\b", "L4", dict(bf16=121.0, tf32=60.0, fp32=30.3)),
    (r"RTX 4090", "GeForce RTX 4090", dict(bf16=165.2, tf32=82.6, fp32=82.6)),
]


def spec_peak(device_name: str, precision: str) -> tuple[str, float] | None:
    """(table label, dense peak FLOP/s) of a known GPU for ``precision`` (bf16, tf32, fp32), else None."""
    for pattern, label, peaks in SPEC_TFLOPS:
        if re.search(pattern, device_name):
            return label, peaks[precision] * 1e12
    return None


def step_precision(device: torch.device, bf16_autocast: bool) -> str:
    """The arithmetic most of a step's FLOPs (the convolutions) run in: bf16, tf32 or fp32."""
    if bf16_autocast:
        return "bf16"
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def matmul_flops(device: torch.device, precision: str, n: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of an n x n matmul on ``device`` in ``precision`` (bf16, else float32), the best of ``repeats``.

    On a GPU each timing covers 10 back-to-back matmuls of n = 8192 (launch overhead amortised);
    on a CPU one matmul of n = 2048. For tf32 the matmul runs with TF32 allowed, as cuDNN's
    convolutions do.
    """
    n = n or (8192 if device.type == "cuda" else 2048)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 10 if device.type == "cuda" else 1
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        best = float("inf")
        for _ in range(repeats + 1):  # the first is a warm-up
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return inner * 2 * n**3 / best


def peak_lines(device: torch.device, precision: str, measured_matmul: float) -> tuple[float | None, list[str]]:
    """The spec peak (None for a CPU or a GPU not in the table) and the lines that say which peaks MFU uses."""
    name = device_name(device)
    spec = spec_peak(name, precision) if device.type == "cuda" else None
    lines = []
    if spec is not None:
        lines.append(f"spec peak: {spec[0]}, dense {precision}, {spec[1] / 1e12:,.1f} TFLOP/s (benchmarks/peaks.py)")
    elif device.type == "cuda":
        lines.append(f"spec peak: {name!r} is not in benchmarks/peaks.py's table; MFU against the measured matmul only")
    lines.append(f"measured matmul: {precision}, {measured_matmul / 1e12:,.3f} TFLOP/s on this {name}")
    return (spec[1] if spec else None), lines


def mfu(achieved: list[float], spec: float | None, measured_matmul: float) -> str:
    """``MFU a [..] % of spec peak, b [..] % of matmul`` over the runs' achieved FLOP/s."""
    parts = [] if spec is None else [f"MFU {spread([x / spec * 100 for x in achieved], '.1f')} % of spec peak"]
    parts.append(f"{spread([x / measured_matmul * 100 for x in achieved], '.1f')} % of matmul")
    return ", ".join(parts)
