"""Figure 1 (section 3.1) as an experiment a user can rerun: steps to a training error, ReLU vs tanh.

"A four-layer convolutional neural network with ReLUs (solid line) reaches a 25% training error
rate on CIFAR-10 six times faster than an equivalent network with tanh neurons (dashed line).
The learning rates for each network were chosen independently to make training as fast as
possible. No regularization of any kind was employed."
:func:`relu_vs_tanh` trains the same network with each activation from the same initial weights
on the same batches, for several seeds, records the training error as measured during training
(about 20 times an epoch) and reports the steps each needs to reach the error level.

* ``net="four-layer"`` (default): :class:`~alexnet.experiments.four_layer.FourLayerNet`, batch
  128, constant lr. With several ``lrs`` the learning rate of each activation is chosen as the
  paper did: the first seed is trained at every lr and the one that reaches the level in the
  fewest steps (else the lowest final training error) is kept for the other seeds.
* ``net="alexnet"``: the small AlexNet of ``base`` (``TrainConfig(activation=...)``) through
  :func:`alexnet.training.train`, with everything the base recipe switches on; one point per epoch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from alexnet.atomic import atomic_write_bytes, atomic_write_json
from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.experiments.four_layer import POINTS_PER_EPOCH, train_four_layer
from alexnet.experiments.runs import (Log, count, experiment_folder, experiment_inputs, finite, mean_std, pct,
                                     read_json_table, train_or_resume)
from alexnet.data.loader import loader_threads

FOUR_LAYER_LRS = (0.003, 0.01, 0.03, 0.1)
OTHER_LEVELS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # also read off the same curves


def steps_to_level(points: Sequence[dict], level: float) -> int | None:
    """The step of the first point whose training error is at or below ``level`` (None: never)."""
    return next((p["step"] for p in points if p["train_error"] <= level), None)


def _lr_name(lr: float) -> str:
    return f"{lr:g}"


def relu_vs_tanh(
    data: str | Path | None,
    out: str | Path,
    *,
    seeds: int = 3,
    epochs: int = 5,
    level: float = 0.25,
    net: str = "four-layer",
    lrs: Sequence[float] | None = None,
    base: TrainConfig | None = None,
    batch_size: int = 128,
    show_progress: bool = True,
    log: Log = print,
) -> dict:
    """Figure 1 on ``data`` (None: the built-in data): writes relu_vs_tanh.{json,md,png} in ``out``.

    ``lrs``: one learning rate for both activations, or several to choose from per activation
    (default: :data:`FOUR_LAYER_LRS` for the four-layer net, the base recipe's lr for AlexNet)."""
    if net not in ("four-layer", "alexnet"):
        raise UserError(f"--net must be four-layer or alexnet, got {net!r}")
    if lrs is None:
        lrs = FOUR_LAYER_LRS if net == "four-layer" else None
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {epochs}")
    if not 0 < level < 1:  # also refuses NaN
        raise UserError(f"--error-level is a fraction of the training images, between 0 and 1 (e.g. 0.25), got {level}")
    if lrs is not None:
        if not lrs:
            raise UserError("--lr needs at least one learning rate")
        bad = [lr for lr in lrs if not (math.isfinite(lr) and lr > 0)]
        if bad:
            raise UserError(f"--lr {bad[0]}: learning rates must be positive finite numbers, e.g. --lr 0.01,0.03")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    with experiment_folder(out, "alexnet experiment relu-vs-tanh"):
        return _relu_vs_tanh(data, out, seeds=seeds, epochs=epochs, level=level, net=net, lrs=lrs, base=base,
                             batch_size=batch_size, show_progress=show_progress, log=log)


def _relu_vs_tanh(data, out, *, seeds, epochs, level, net, lrs, base, batch_size, show_progress, log) -> dict:
    from alexnet.figures.paper import plot_training_error
    from alexnet.training.recipe import store_identity

    out, data, builtin, store, base = experiment_inputs(data, out, base, show_progress=show_progress, log=log)
    lrs = [base.lr] if lrs is None else list(lrs)
    runs_dir = out / "runs"
    train_images = len(store.split("train"))
    if net == "four-layer" and batch_size > train_images:
        raise UserError(f"--batch-size {batch_size} is more than the {train_images} training images of {data}; "
                        f"use at most {train_images}")
    # a cached run counts only for the same settings on the same data: a digest of the store's manifest,
    # the same for a copy of the store elsewhere (a moved experiment folder keeps its runs)
    settings = dict(net=net, epochs=epochs, batch_size=batch_size,
                    points_every_steps=max(1, train_images // batch_size // POINTS_PER_EPOCH), store=store_identity(store))

    def one(activation: str, lr: float, seed: int) -> dict:
        name = f"{activation}-lr{_lr_name(lr)}-seed{seed}"
        if net == "alexnet":
            config = base.replace(activation=activation, lr=lr, seed=seed, epochs=epochs)
            return _alexnet_run(config, data, runs_dir / name, name, activation, lr, seed,
                                show_progress=show_progress, log=log)
        workers = max(1, loader_threads(base.loader_workers, "raw", torch.device("cpu")))
        return _four_layer_run(store, runs_dir / f"{name}.json", name, settings, activation, lr, seed, workers,
                               show_progress=show_progress, log=log)

    seed_list = list(range(seeds))
    chosen, tuning, runs = _runs_at_chosen_lrs(one, lrs, seed_list, level, log)
    per_seed = _per_seed(runs, seed_list, level)
    ratios = [p["speedup"] for p in per_seed if p["speedup"] is not None]
    summary = dict(
        experiment="relu-vs-tanh", net=net, data=str(data), builtin_data=builtin, epochs=epochs, seeds=seed_list,
        error_level=level, batch_size=batch_size if net == "four-layer" else base.batch_size_per_device,
        steps_per_epoch=None if net == "alexnet" else runs[0]["steps_per_epoch"], lr=chosen, lr_candidates=lrs,
        lr_tuning=tuning, per_seed=per_seed,
        speedup_mean=float(np.mean(ratios)) if ratios else None,
        speedup_std=finite(mean_std(ratios)[1]) if ratios else None, by_level=_by_level(runs, seed_list, level),
        base_config=base.to_dict() if net == "alexnet" else None,
        curves=[dict(activation=r["activation"], seed=r["seed"], lr=r["lr"], diverged=r["diverged"], points=r["points"])
                for r in runs],
    )
    atomic_write_json(out / "relu_vs_tanh.json", summary)
    atomic_write_bytes(out / "relu_vs_tanh.md", relu_vs_tanh_markdown(summary).encode())
    what = "four-layer CNN" if net == "four-layer" else "small AlexNet"
    plot_training_error(summary["curves"], level, out / "relu_vs_tanh.png",
                        title=f"{what}, lr relu {chosen['relu']:g} / tanh {chosen['tanh']:g}, {count(len(seed_list), 'seed')}")
    log(f"figure 1: {speedup_sentence(summary)}")
    log(f"figure 1: wrote {out / 'relu_vs_tanh.md'}, {out / 'relu_vs_tanh.json'}, {out / 'relu_vs_tanh.png'}")
    return summary


def _alexnet_run(config: TrainConfig, data, run_dir: Path, name: str, activation: str, lr: float, seed: int, *,
                 show_progress: bool, log: Log) -> dict:
    """One small AlexNet of ``config`` trained (or resumed) in ``run_dir``, one point per epoch; a
    run that diverges keeps the epochs it finished."""
    from alexnet.figures.report import read_metrics
    from alexnet.training import NonFiniteError

    log(f"figure 1: {name} (small AlexNet) in {run_dir}")
    diverged = False
    try:
        metrics = train_or_resume(config, data, run_dir, show_progress=show_progress, log=log)
    except NonFiniteError as e:
        log(f"figure 1: {name} diverged: {e}")
        metrics, diverged = read_metrics(run_dir), True
    points = [dict(step=m["global_step"], epoch=float(m["epoch"]), train_error=m["train_top1_error"],
                   train_loss=m["train_loss"]) for m in metrics]
    return dict(activation=activation, lr=lr, seed=seed, points=points, diverged=diverged)


def _four_layer_run(store, cached: Path, name: str, settings: dict, activation: str, lr: float, seed: int,
                    workers: int, *, show_progress: bool, log: Log) -> dict:
    """One four-layer CNN trained with ``settings``, or its result from ``cached`` when that was
    trained with the same settings and lr."""
    if cached.is_file():
        saved = read_json_table(cached)
        if saved.get("settings") == settings and saved.get("lr") == lr:
            log(f"figure 1: {name} done before, kept ({cached})")
            return saved
    log(f"figure 1: {name} (four-layer CNN)")
    result = train_four_layer(store, activation=activation, lr=lr, seed=seed, epochs=settings["epochs"],
                              batch_size=settings["batch_size"], points_every_steps=settings["points_every_steps"],
                              workers=workers, show_progress=show_progress)
    result = dict(activation=activation, lr=lr, seed=seed, settings=settings, **result)
    cached.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cached, result)
    return result


def _runs_at_chosen_lrs(one, lrs: list[float], seed_list: list[int], level: float, log: Log) -> tuple[dict, dict, list]:
    """Per activation, the first seed trained at every lr and the fastest to ``level`` (else the
    lowest final training error) kept for the other seeds: (lr chosen, the trials, the runs kept)."""
    def score(run: dict) -> tuple:
        reached = steps_to_level(run["points"], level)
        final = run["points"][-1]["train_error"] if run["points"] and not run["diverged"] else math.inf
        return (reached if reached is not None else math.inf, final)

    chosen, tuning, runs = {}, {}, []
    for activation in ("relu", "tanh"):
        trials = [one(activation, lr, seed_list[0]) for lr in lrs]
        best = min(trials, key=score)
        chosen[activation] = best["lr"]
        tuning[activation] = [dict(lr=t["lr"], steps_to_level=steps_to_level(t["points"], level),
                                   final_train_error=t["points"][-1]["train_error"] if t["points"] else None,
                                   diverged=t["diverged"]) for t in trials]
        if len(lrs) > 1:
            log(f"figure 1: {activation}: lr {best['lr']:g} chosen of {', '.join(map(_lr_name, lrs))} (fastest on seed {seed_list[0]})")
        runs += [best] + [one(activation, best["lr"], s) for s in seed_list[1:]]
    return chosen, tuning, runs


def _per_seed(runs: list[dict], seed_list: list[int], level: float) -> list[dict]:
    """Per seed, the steps (and epochs) each activation took to ``level`` and their ratio."""
    per_seed = []
    for seed in seed_list:
        r, t = _run(runs, "relu", seed), _run(runs, "tanh", seed)
        sr, st = steps_to_level(r["points"], level), steps_to_level(t["points"], level)
        per_seed.append(dict(seed=seed, relu_steps=sr, tanh_steps=st,
                             relu_epochs=_epoch_at(r["points"], sr), tanh_epochs=_epoch_at(t["points"], st),
                             speedup=(st / sr) if sr and st else None,
                             speedup_at_least=(t["points"][-1]["step"] / sr) if sr and st is None and t["points"] else None))
    return per_seed


def _by_level(runs: list[dict], seed_list: list[int], level: float) -> list[dict]:
    """The same runs read at other training-error levels: how many reached each, and the ratio."""
    by_level = []
    for lv in sorted(set(OTHER_LEVELS) | {level}, reverse=True):
        steps = [(steps_to_level(_run(runs, "relu", s)["points"], lv), steps_to_level(_run(runs, "tanh", s)["points"], lv))
                 for s in seed_list]
        both = [t / r for r, t in steps if r and t]
        by_level.append(dict(level=lv, relu_reached=sum(r is not None for r, _ in steps),
                             tanh_reached=sum(t is not None for _, t in steps),
                             speedup_mean=float(np.mean(both)) if both else None,
                             speedup_std=finite(mean_std(both)[1]) if both else None))
    return by_level


def _run(runs: list[dict], activation: str, seed: int) -> dict:
    return next(x for x in runs if x["activation"] == activation and x["seed"] == seed)


def _epoch_at(points: Sequence[dict], step: int | None) -> float | None:
    return next((p["epoch"] for p in points if p["step"] == step), None) if step is not None else None


def speedup_sentence(summary: dict) -> str:
    level, per_seed = summary["error_level"], summary["per_seed"]
    n = len(per_seed)
    relu_reached = sum(p["relu_steps"] is not None for p in per_seed)
    tanh_reached = sum(p["tanh_steps"] is not None for p in per_seed)
    parts = [f"ReLU reached {level:.0%} training error in {relu_reached} of {count(n, 'seed')}, "
             f"tanh in {tanh_reached} of {n} (within {count(summary['epochs'], 'epoch')})."]
    if summary["speedup_mean"] is not None:
        spread = f" (std {summary['speedup_std']:.2f})" if summary["speedup_std"] is not None else ""
        parts.append(f"Where both did, tanh needed {summary['speedup_mean']:.2f}x the steps of ReLU{spread}; "
                     "the paper reports about 6x.")
    bounds = [p["speedup_at_least"] for p in per_seed if p["speedup_at_least"] is not None]
    if bounds:
        parts.append(f"Where tanh never reached it, the speed-up is more than {min(bounds):.2f}x "
                     "(the whole run over ReLU's steps).")
    if relu_reached == 0:
        parts.append("ReLU never reached the level either: train longer (--epochs) or raise --error-level.")
    return " ".join(parts)


def relu_vs_tanh_markdown(s: dict) -> str:
    what = ("four-layer CNN (3 conv + 1 fc, no LRN/dropout/weight decay/augmentation)" if s["net"] == "four-layer"
            else "small AlexNet (the base recipe with activation=relu or tanh)")
    lines = [
        "# Figure 1: ReLU vs tanh",
        "",
        f"Network: {what}. Data: `{s['data']}`. {count(len(s['seeds']), 'seed')}, {count(s['epochs'], 'epoch')}, "
        f"batch {s['batch_size']}" + (f", {s['steps_per_epoch']} steps per epoch" if s["steps_per_epoch"] else "") + ".",
        f"Learning rate: ReLU {s['lr']['relu']:g}, tanh {s['lr']['tanh']:g}"
        + (f" (each chosen from {', '.join(map(_lr_name, s['lr_candidates']))} as the fastest to "
           f"{s['error_level']:.0%} on seed {s['seeds'][0]})." if len(s["lr_candidates"]) > 1 else " (equal)."),
        "",
        speedup_sentence(s),
        "",
        f"| seed | ReLU steps to {s['error_level']:.0%} | tanh steps | ReLU epochs | tanh epochs | tanh / ReLU |",
        "|---|---|---|---|---|---|",
    ]
    for p in s["per_seed"]:
        ratio = (f"{p['speedup']:.2f}" if p["speedup"] is not None
                 else f"> {p['speedup_at_least']:.2f} (tanh never reached it)" if p["speedup_at_least"] is not None
                 else "n/a")
        lines.append(f"| {p['seed']} | {p['relu_steps'] or 'never'} | {p['tanh_steps'] or 'never'} | "
                     f"{_num(p['relu_epochs'])} | {_num(p['tanh_epochs'])} | {ratio} |")
    if len(s["lr_candidates"]) > 1:
        lines += ["", f"Learning-rate choice (seed {s['seeds'][0]}):", "",
                  "| activation | lr | steps to level | final training error | diverged |", "|---|---|---|---|---|"]
        for act in ("relu", "tanh"):
            for t in s["lr_tuning"][act]:
                lines.append(f"| {act} | {t['lr']:g} | {t['steps_to_level'] or 'never'} | "
                             f"{pct(t['final_train_error']) if t['final_train_error'] is not None else 'n/a'}% | "
                             f"{'yes' if t['diverged'] else 'no'} |")
    lines += ["", "The same runs read at other training-error levels (tanh steps / ReLU steps, mean ± std over "
              "the seeds where both reached the level):", "",
              "| level | ReLU reached | tanh reached | tanh / ReLU |", "|---|---|---|---|"]
    n = len(s["seeds"])
    for b in s["by_level"]:
        ratio = "n/a" if b["speedup_mean"] is None else f"{b['speedup_mean']:.2f}" + (
            f" ± {b['speedup_std']:.2f}" if b["speedup_std"] is not None else "")
        lines.append(f"| {b['level']:.0%} | {b['relu_reached']}/{n} | {b['tanh_reached']}/{n} | {ratio} |")
    lines += ["", "![training error against epochs](relu_vs_tanh.png)", ""]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}"
