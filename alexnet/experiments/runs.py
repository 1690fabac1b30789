"""What the experiments share: the data to run on, runs that resume, and the numbers' formatting.

:func:`train_or_resume` is how every AlexNet run of an experiment is made: a run directory of
:func:`alexnet.training.train`, continued where an interrupted experiment left it, refused when it
holds another recipe. :func:`experiment_inputs` gives the experiments their folder, data (the
built-in data by default) and base recipe; :func:`experiment_folder` holds the folder for one
experiment process at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from alexnet.builtin import base_recipe, data_is_builtin, prepare_builtin
from alexnet.config import RUNTIME_KEYS, TrainConfig
from alexnet.data import Store, open_store
from alexnet.errors import UserError
from alexnet.runtime import pick_device

Log = Callable[[str], None]


def refuse_foreign_out(out: Path, what: str) -> None:
    """Refuse an --out that is a file, a prepared data set or a training run: the folders of
    ``what`` would be mixed into it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a folder for {what}")
    if (out / "manifest.json").is_file():
        raise UserError(f"--out {out} holds a prepared data set; give another folder for {what}")
    if (out / "last.pt").is_file() or (out / "metrics.jsonl").is_file():
        raise UserError(f"--out {out} holds a training run; give another folder for {what}")


@contextlib.contextmanager
def experiment_folder(out: str | Path, command: str) -> Iterator[Path]:
    """``out`` made and held by this process for the whole experiment: a second experiment on the
    same folder stops at once with one line instead of training the same runs and overwriting the
    other's tables. The runs inside hold their own folders as every training run does."""
    from alexnet.runlock import run_lock

    out = Path(out)
    refuse_foreign_out(out, "the experiment")
    with run_lock(out, command, advice="wait for it or choose another --out"):
        yield out


def experiment_inputs(data: str | Path | None, out: str | Path, base: TrainConfig | None, *, show_progress: bool,
                      log: Log) -> tuple[Path, Path, bool, Store, TrainConfig]:
    """What an experiment starts from: its output folder (made), the store's path (``data``, or the
    built-in data prepared on first use into ``out/data``), whether that is the built-in data (also
    when named as ``data``), the opened store, and the base recipe (``base``, else
    :func:`alexnet.builtin.base_recipe` for it: the built-in data's, the small-data recipe, or the paper's)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder; give a folder for the experiment")
    builtin = data_is_builtin(data)
    base = base or base_recipe(data)
    pick_device(base.device)  # a device this machine lacks is refused before any data is prepared
    out.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = out / "data"
        store = prepare_builtin(data, show_progress=show_progress, log=log)
    else:
        store = open_store(data)
    return out, Path(data), builtin, store, base


def train_or_resume(config: TrainConfig, data: str | Path, run_dir: Path, *, show_progress: bool, log: Log) -> list[dict]:
    """:func:`alexnet.training.train` into ``run_dir``, continuing a run that is already there. A run
    of another recipe is refused (:func:`check_same_recipe`): an experiment's run continues only
    with the recipe it started with, or more epochs. Step kernels that this run's network cannot
    take (a variant without LRN has no block to fuse) are left out of it, with a note."""
    from alexnet.training import train
    from alexnet.training.recipe import model_args
    from alexnet.speed.levers import fitting_step_kernels

    if config.step_kernels:
        kept, left_out = fitting_step_kernels(config, model_args(config, open_store(data)), pick_device(config.device))
        for line in left_out:
            log(f"note: {Path(run_dir).name} runs without it: {line.rsplit('; leave', 1)[0]}")
        config = config.replace(step_kernels=kept)
    resume = (Path(run_dir) / "last.pt").exists()
    if resume:
        check_same_recipe(config, run_dir)
    return train(config, data, run_dir, resume=resume, show_progress=show_progress, log=log)


def check_same_recipe(config: TrainConfig, run_dir: str | Path) -> None:
    """Refuse to continue the run in ``run_dir`` with a recipe other than its own.

    Training's resume accepts some changes (a new learning rate from here on), but a run of an
    experiment stands for one recipe: one trained at lr 0.01 and tabulated as lr 0.05 would be a
    wrong row. Only how it runs (the runtime keys) and its number of epochs may change."""
    from alexnet import checkpoint
    from alexnet.config import from_dict
    from alexnet.training.run_dir import saved_recipe

    try:
        saved = saved_recipe(run_dir)
    except UserError:
        saved = None  # a damaged config.json: the checkpoint holds the recipe too
    if saved is None:
        saved = checkpoint.load(Path(run_dir) / "last.pt").get("config")
    try:
        old = from_dict(saved, TrainConfig()).to_dict()
    except (UserError, TypeError):
        return  # a recipe this version cannot read: the resume's own check says what is wrong
    new = config.to_dict()
    changed = [k for k in new if k not in RUNTIME_KEYS and k != "epochs" and _plain(old.get(k)) != _plain(new[k])]
    if changed:
        diffs = ", ".join(f"{k} {_plain(old.get(k))} -> {_plain(new[k])}" for k in changed)
        raise UserError(f"{run_dir} holds a run of another recipe than this experiment asks ({diffs}); rerun with "
                        "the settings it was started with, or choose another --out for the new recipe")


def read_json_table(path: Path) -> dict:
    """A saved result or cached run (a JSON table), or {} when the file is not one (it is then made again)."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _plain(value):
    return json.loads(json.dumps(value))


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
