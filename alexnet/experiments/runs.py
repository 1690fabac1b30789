"""What the experiments share: the data to run on, runs that resume, and the numbers' formatting.

:func:`train_or_resume` is how every AlexNet run of an experiment is made: a run directory of
:func:`alexnet.training.train`, continued where an interrupted experiment left it, refused when it
holds another recipe. :func:`experiment_inputs` gives the experiments their folder, data (the
built-in data by default) and base recipe.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alexnet.builtin import base_recipe, prepare_builtin
from alexnet.config import TrainConfig
from alexnet.data import Store, open_store

Log = Callable[[str], None]


def experiment_inputs(data: str | Path | None, out: str | Path, base: TrainConfig | None, *, show_progress: bool,
                      log: Log) -> tuple[Path, Path, bool, Store, TrainConfig]:
    """What an experiment starts from: its output folder (made), the store's path (``data``, or the
    built-in data prepared on first use into ``out/data``), whether that is the built-in data, the
    opened store, and the base recipe (``base``, else :func:`alexnet.builtin.base_recipe`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builtin = data is None
    if builtin:
        data = out / "data"
        store = prepare_builtin(data, show_progress=show_progress, log=log)
    else:
        store = open_store(data)
    return out, Path(data), builtin, store, base or base_recipe(builtin)


def train_or_resume(config: TrainConfig, data: str | Path, run_dir: Path, *, show_progress: bool, log: Log) -> list[dict]:
    """:func:`alexnet.training.train` into ``run_dir``, continuing a run that is already there (a run
    of another recipe is refused by the resume's own check). Step kernels that this run's network
    cannot take (a variant without LRN has no block to fuse) are left out of it, with a note."""
    from alexnet.runtime import pick_device
    from alexnet.training import train
    from alexnet.training.recipe import model_args
    from alexnet.training.step_kernels import fitting_step_kernels

    if config.step_kernels:
        kept, left_out = fitting_step_kernels(config, model_args(config, open_store(data)), pick_device(config.device))
        for line in left_out:
            log(f"note: {Path(run_dir).name} runs without it: {line.rsplit('; leave', 1)[0]}")
        config = config.replace(step_kernels=kept)
    resume = (Path(run_dir) / "last.pt").exists()
    return train(config, data, run_dir, resume=resume, show_progress=show_progress, log=log)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
