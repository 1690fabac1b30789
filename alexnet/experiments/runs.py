"""What the experiments share: the data to run on, runs that resume, and the numbers' formatting.

:func:`train_or_resume` is how every AlexNet run of an experiment is made: a run directory of
:func:`alexnet.train.train`, continued where an interrupted experiment left it, refused when it
holds another recipe. :func:`experiment_inputs` gives the experiments their folder, data (the
built-in data by default) and base recipe.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from alexnet.config import TrainConfig, from_dict
from alexnet.data import Store, builtin_fashion_mnist, open_store
from alexnet.errors import UserError

Log = Callable[[str], None]


def prepared_data(data: str | Path | None, out: Path, *, show_progress: bool, log: Log) -> tuple[Path, bool]:
    """The store to use and whether it is the built-in data: ``data``, or the built-in
    Fashion-MNIST subset prepared on first use into ``out/data`` (as ``alexnet demo`` does)."""
    if data is not None:
        open_store(data)  # a clear error now rather than after the first run
        return Path(data), False
    from alexnet.data.prepare import prepare_store
    from alexnet.demo import DEMO_IMAGE_SIZE

    store = out / "data"
    try:
        open_store(store)
    except UserError:
        log(f"preparing the built-in Fashion-MNIST subset into {store}")
        prepare_store(builtin_fashion_mnist(), store, image_size=DEMO_IMAGE_SIZE, progress_bar=show_progress,
                      force=True, log=log)
    return store, True


def experiment_inputs(data: str | Path | None, out: str | Path, base: TrainConfig | None, *, show_progress: bool,
                      log: Log) -> tuple[Path, Path, bool, Store, TrainConfig]:
    """What an experiment starts from: its output folder (made), the store's path, whether that is
    the built-in data (:func:`prepared_data`), the opened store, and the base recipe: ``base``,
    else the demo recipe on the built-in data and the paper's otherwise."""
    from alexnet.demo import DEMO_CONFIG

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, builtin = prepared_data(data, out, show_progress=show_progress, log=log)
    store = open_store(data)
    base = base or (DEMO_CONFIG if builtin else TrainConfig())
    return out, data, builtin, store, base


def train_or_resume(config: TrainConfig, data: str | Path, run_dir: Path, *, show_progress: bool, log: Log) -> list[dict]:
    """:func:`alexnet.train.train` into ``run_dir``, resuming a run that is already there.

    A run of another recipe (other than its epochs and runtime settings) is an error rather than
    something to continue."""
    from alexnet.train import train

    run_dir = Path(run_dir)
    resume = (run_dir / "last.pt").exists()
    if resume and (run_dir / "config.json").is_file():
        try:
            saved = from_dict(json.loads((run_dir / "config.json").read_text()))
        except (UserError, json.JSONDecodeError):
            saved = None
        if saved is None or _recipe(saved) != _recipe(config):
            raise UserError(f"{run_dir} holds a run of another recipe; choose another --out or remove that folder")
        done = len([line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]) \
            if (run_dir / "metrics.jsonl").exists() else 0
        if done > config.epochs:
            raise UserError(f"{run_dir} has {done} epochs, more than the {config.epochs} asked; ask for {done} or more")
    return train(config, data, run_dir, resume=resume, show_progress=show_progress, log=log)


def _recipe(config: TrainConfig) -> dict:
    """What a run learns from: every key but its length and the runtime settings."""
    from alexnet.report import RUNTIME_KEYS

    return {f.name: getattr(config, f.name) for f in fields(config) if f.name not in RUNTIME_KEYS + ("epochs",)}


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
