"""Timing and reporting shared by the benchmarks: device syncs, and every figure as a median with its range.

Each benchmark repeats its measurement (``--runs``, at least 3) and reports, per configuration and per
ratio, the median over the runs and the range (min-max). A ratio is computed within each run (both
sides measured side by side, so that load from elsewhere on the machine hits both alike) and then
summarised over the runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Sequence

import torch

MIN_RUNS = 3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds that ``fn()`` takes, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def runs_argument(parser: argparse.ArgumentParser, default: int = MIN_RUNS) -> None:
    parser.add_argument("--runs", type=int, default=default,
                        help=f"repetitions of the whole measurement (at least {MIN_RUNS}); median and range reported")


def check_runs(runs: int) -> None:
    if runs < MIN_RUNS:
        raise SystemExit(f"--runs {runs}: a median and a range need at least {MIN_RUNS} runs")


def spread(values: Sequence[float], fmt: str = ",.0f", unit: str = "") -> str:
    """``median [min-max] unit`` of ``values``, e.g. ``6,464 [6,101-6,702] img/s``."""
    med, lo, hi = statistics.median(values), min(values), max(values)
    unit = f" {unit}" if unit else ""
    return f"{med:{fmt}} [{lo:{fmt}}-{hi:{fmt}}]{unit}"


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Run-by-run ratios of two measurements taken side by side."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]
