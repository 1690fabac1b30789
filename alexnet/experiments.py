"""The paper's claims as experiments a user can rerun: figure 1 (ReLU vs tanh) and the ablations.

Figure 1 (section 3.1): "A four-layer convolutional neural network with ReLUs (solid line)
reaches a 25% training error rate on CIFAR-10 six times faster than an equivalent network with
tanh neurons (dashed line). The learning rates for each network were chosen independently to
make training as fast as possible. No regularization of any kind was employed."
:func:`relu_vs_tanh` trains the same network with each activation from the same initial weights
on the same batches, for several seeds, records the training error as measured during training
(about 20 times an epoch) and reports the steps each needs to reach the error level.

* ``net="four-layer"`` (default): :class:`FourLayerNet`, three 5x5 convolutions (32, 32, 64
  kernels, each followed by the activation and 3/2 max-pooling) and a softmax layer: four
  learnable layers, no LRN, no dropout, no weight decay, no augmentation (the paper: "no
  regularization of any kind"). Init N(0, 1/fan_in), biases 0 (LeCun's, the usual one for
  tanh, so the comparison does not favour ReLU). PaperSGD, batch 128, momentum 0.9, constant lr.
  With several ``lrs`` the learning rate of each activation is chosen as the paper did: the
  first seed is trained at every lr and the one that reaches the level in the fewest steps
  (else the lowest final training error) is kept for the other seeds.
* ``net="alexnet"``: the small AlexNet of ``base`` (``TrainConfig(activation=...)``) through
  :func:`alexnet.train.train`, with everything the base recipe switches on; one point per epoch.

:func:`ablations` trains the base recipe and one variant per feature the paper credits, for
several seeds, each a run directory made by :func:`alexnet.train.train`, and tabulates top-1 and
top-5 validation error (centre crop, last epoch) and the train-validation gap beside the paper's
reported effect. Finished runs are skipped and a partial run is resumed, so an interrupted
experiment continues where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.config import TrainConfig, from_dict
from alexnet.data import Store, builtin_fashion_mnist, open_store
from alexnet.data.augment import EvalPreprocess
from alexnet.data.loader import Loader
from alexnet.errors import UserError
from alexnet.figures import spread_indices, split_batches
from alexnet.optim import PaperSGD

Log = Callable[[str], None]
FIGURE1_INPUT_SCALE = 1 / 64  # centred 0-255 pixels to about unit size, as the demo recipe
FOUR_LAYER_LRS = (0.003, 0.01, 0.03, 0.1)
POINTS_PER_EPOCH = 20  # training-error points recorded per epoch, about (figure 1)
OTHER_LEVELS = (0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05)  # also read off the same curves


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else math.nan


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{100 * x:+.2f}" if signed else f"{100 * x:.2f}"


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# --- figure 1: ReLU vs tanh ----------------------------------------------------------------------


class FourLayerNet(nn.Module):
    """Three 5x5 convolutions (32, 32, 64 kernels; pad 2), each with the activation and a 3/2
    max-pool, then a fully-connected softmax layer: the four-layer CNN of figure 1, no LRN or dropout."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, activation: str) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        layers, channels = [], in_channels
        side = image_size
        for out in (32, 32, 64):
            layers += [nn.Conv2d(channels, out, 5, padding=2), act(), nn.MaxPool2d(3, 2)]
            channels, side = out, (side - 3) // 2 + 1
        if side < 1:
            raise UserError(f"images of {image_size} px are too small for the four-layer network (at least 15 px)")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * side * side, num_classes)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    m.weight.normal_(0.0, m.weight[0].numel() ** -0.5)  # N(0, 1/fan_in)
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def train_four_layer(store: Store, *, activation: str, lr: float, seed: int, epochs: int, batch_size: int = 128,
                     points_every_steps: int | None = None, workers: int = 2, show_progress: bool = False) -> dict:
    """Train :class:`FourLayerNet` and return the training error measured along the way.

    Inputs are the whole stored images, mean-subtracted and scaled by 1/64, in the same seeded
    order for either activation; ``torch.manual_seed(seed)`` makes the initial weights the same.
    Returns ``points`` [{"step", "epoch", "train_error", "train_loss"}], each the mean over the
    ``points_every_steps`` steps since the previous point (default: 1/20 of an epoch; the points
    run across epoch ends so that every one averages as many images), and ``diverged`` (a
    non-finite loss stopped the run)."""
    torch.manual_seed(seed)
    model = FourLayerNet(store.channels, store.num_classes, store.image_size, activation)
    optimizer = PaperSGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
    loader = Loader(store.split("train"), batch_size, shuffle=True, seed=seed, drop_last=True, workers=workers)
    preprocess = EvalPreprocess(store.mean_image, crop_size=store.image_size, input_scale=FIGURE1_INPUT_SCALE)
    steps_per_epoch = len(loader)
    every = points_every_steps or max(1, steps_per_epoch // POINTS_PER_EPOCH)
    points, step, diverged = [], 0, False
    wrong = seen = 0
    loss_sum = 0.0
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, desc=f"{activation} lr {lr:g} seed {seed}", unit="step",
                   leave=False, dynamic_ncols=True)
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in loader:
            logits = model(preprocess.center(images))
            loss = F.cross_entropy(logits, labels)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            wrong += int((logits.detach().argmax(1) != labels).sum())
            seen += len(labels)
            loss_sum += float(loss.detach()) * len(labels)
            if step % every == 0 or step == epochs * steps_per_epoch:
                points.append(dict(step=step, epoch=step / steps_per_epoch, train_error=wrong / seen,
                                   train_loss=loss_sum / seen))
                wrong = seen = 0
                loss_sum = 0.0
            if bar is not None:
                bar.update(1)
        if diverged:
            break
    if bar is not None:
        bar.close()
    return dict(points=points, steps_per_epoch=steps_per_epoch, diverged=diverged)


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
    from alexnet.demo import DEMO_CONFIG
    from alexnet.figures import plot_training_error

    if net not in ("four-layer", "alexnet"):
        raise UserError(f"--net must be four-layer or alexnet, got {net!r}")
    if lrs is None:
        lrs = FOUR_LAYER_LRS if net == "four-layer" else None
    if seeds < 1 or epochs < 1 or not 0 < level < 1 or (lrs is not None and (not lrs or min(lrs) <= 0)):
        raise UserError("--seeds and --epochs must be at least 1, --error-level in (0, 1), learning rates positive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, builtin = prepared_data(data, out, show_progress=show_progress, log=log)
    store = open_store(data)
    base = base or (DEMO_CONFIG if builtin else TrainConfig())
    lrs = [base.lr] if lrs is None else list(lrs)
    runs_dir = out / "runs"
    every = max(1, len(store.split("train")) // batch_size // POINTS_PER_EPOCH)
    settings = dict(net=net, epochs=epochs, batch_size=batch_size, points_every_steps=every, data=str(data))

    def one(activation: str, lr: float, seed: int) -> dict:
        name = f"{activation}-lr{_lr_name(lr)}-seed{seed}"
        if net == "alexnet":
            from alexnet.run_state import RunFiles
            from alexnet.train import NonFiniteError

            config = base.replace(activation=activation, lr=lr, seed=seed, epochs=epochs)
            log(f"figure 1: {name} (small AlexNet) in {runs_dir / name}")
            diverged = False
            try:
                metrics = train_or_resume(config, data, runs_dir / name, show_progress=show_progress, log=log)
            except NonFiniteError as e:
                log(f"figure 1: {name} diverged: {e}")
                metrics, diverged = RunFiles(runs_dir / name, write=False).read_metrics(), True
            points = [dict(step=m["global_step"], epoch=float(m["epoch"]), train_error=m["train_top1_error"],
                           train_loss=m["train_loss"]) for m in metrics]
            return dict(activation=activation, lr=lr, seed=seed, points=points, diverged=diverged)
        cached = runs_dir / f"{name}.json"
        if cached.is_file():
            saved = json.loads(cached.read_text())
            if saved.get("settings") == settings:
                log(f"figure 1: {name} done before, kept ({cached})")
                return saved
        log(f"figure 1: {name} (four-layer CNN)")
        result = train_four_layer(store, activation=activation, lr=lr, seed=seed, epochs=epochs,
                                  batch_size=batch_size, points_every_steps=every, workers=max(1, base.loader_workers),
                                  show_progress=show_progress)
        result = dict(activation=activation, lr=lr, seed=seed, settings=settings, **result)
        runs_dir.mkdir(parents=True, exist_ok=True)
        _write_json(cached, result)
        return result

    def score(run: dict) -> tuple:
        reached = steps_to_level(run["points"], level)
        final = run["points"][-1]["train_error"] if run["points"] and not run["diverged"] else math.inf
        return (reached if reached is not None else math.inf, final)

    seed_list = list(range(seeds))
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

    steps_per_epoch = None if net == "alexnet" else runs[0]["steps_per_epoch"]
    per_seed = []
    for seed in seed_list:
        r, t = _run(runs, "relu", seed), _run(runs, "tanh", seed)
        sr, st = steps_to_level(r["points"], level), steps_to_level(t["points"], level)
        per_seed.append(dict(seed=seed, relu_steps=sr, tanh_steps=st,
                             relu_epochs=_epoch_at(r["points"], sr), tanh_epochs=_epoch_at(t["points"], st),
                             speedup=(st / sr) if sr and st else None,
                             speedup_at_least=(t["points"][-1]["step"] / sr) if sr and st is None and t["points"] else None))
    ratios = [p["speedup"] for p in per_seed if p["speedup"] is not None]
    by_level = []  # the same runs read at other error levels
    for lv in sorted(set(OTHER_LEVELS) | {level}, reverse=True):
        steps = [(steps_to_level(_run(runs, "relu", s)["points"], lv), steps_to_level(_run(runs, "tanh", s)["points"], lv))
                 for s in seed_list]
        both = [t / r for r, t in steps if r and t]
        by_level.append(dict(level=lv, relu_reached=sum(r is not None for r, _ in steps),
                             tanh_reached=sum(t is not None for _, t in steps),
                             speedup_mean=float(np.mean(both)) if both else None,
                             speedup_std=_finite(_mean_std(both)[1]) if both else None))
    summary = dict(
        experiment="relu-vs-tanh", net=net, data=str(data), builtin_data=builtin, epochs=epochs, seeds=seed_list,
        error_level=level, batch_size=batch_size if net == "four-layer" else base.batch_size_per_device,
        steps_per_epoch=steps_per_epoch, lr=chosen, lr_candidates=lrs, lr_tuning=tuning, per_seed=per_seed,
        speedup_mean=float(np.mean(ratios)) if ratios else None,
        speedup_std=_finite(_mean_std(ratios)[1]) if ratios else None, by_level=by_level,
        base_config=base.to_dict() if net == "alexnet" else None,
        curves=[dict(activation=r["activation"], seed=r["seed"], lr=r["lr"], diverged=r["diverged"], points=r["points"])
                for r in runs],
    )
    _write_json(out / "relu_vs_tanh.json", summary)
    (out / "relu_vs_tanh.md").write_text(relu_vs_tanh_markdown(summary))
    what = "four-layer CNN" if net == "four-layer" else "small AlexNet"
    plot_training_error(summary["curves"], level, out / "relu_vs_tanh.png",
                        title=f"{what}, lr relu {chosen['relu']:g} / tanh {chosen['tanh']:g}, {len(seed_list)} seeds")
    log(f"figure 1: {speedup_sentence(summary)}")
    log(f"figure 1: wrote {out / 'relu_vs_tanh.md'}, {out / 'relu_vs_tanh.json'}, {out / 'relu_vs_tanh.png'}")
    return summary


def _run(runs: list[dict], activation: str, seed: int) -> dict:
    return next(x for x in runs if x["activation"] == activation and x["seed"] == seed)


def _epoch_at(points: Sequence[dict], step: int | None) -> float | None:
    return next((p["epoch"] for p in points if p["step"] == step), None) if step is not None else None


def speedup_sentence(summary: dict) -> str:
    level, per_seed = summary["error_level"], summary["per_seed"]
    n = len(per_seed)
    relu_reached = sum(p["relu_steps"] is not None for p in per_seed)
    tanh_reached = sum(p["tanh_steps"] is not None for p in per_seed)
    parts = [f"ReLU reached {level:.0%} training error in {relu_reached} of {_count(n, 'seed')}, "
             f"tanh in {tanh_reached} of {n} (within {_count(summary['epochs'], 'epoch')})."]
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
        f"Network: {what}. Data: `{s['data']}`. {_count(len(s['seeds']), 'seed')}, {_count(s['epochs'], 'epoch')}, "
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
                             f"{_pct(t['final_train_error']) if t['final_train_error'] is not None else 'n/a'}% | "
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


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _num(x: float | None) -> str:
    return "never" if x is None else f"{x:.2f}"


# --- ablations -------------------------------------------------------------------------------------

# name: (changes to the base recipe, what the paper reports for the feature)
VARIANTS: dict[str, tuple[dict, str]] = {
    "full": ({}, "the paper's model (the base recipe)"),
    "no-lrn": (dict(lrn=False), "LRN lowers top-1 by 1.4%, top-5 by 1.2% (section 3.3)"),
    "no-overlap": (dict(overlapping_pool=False), "overlapping pooling lowers top-1 by 0.4%, top-5 by 0.3% (section 3.4)"),
    "no-dropout": (dict(dropout=0.0), "without dropout the network overfits substantially (section 4.2)"),
    "no-pca": (dict(pca_lighting_std=0.0), "PCA lighting lowers top-1 by over 1% (section 4.1)"),
    "one-tower": (dict(towers=1), "two towers lower top-1 by 1.7%, top-5 by 1.2% vs a one-GPU net with half "
                                  "the kernels in conv1-4 (section 3.2)"),
    "tanh": (dict(activation="tanh"), "ReLU trains about 6x faster than tanh (figure 1)"),
    # not run by default: the other reading of section 3.2's one-GPU net (every layer halved)
    "one-tower-half": (dict(towers=1, width=0.5), "as one-tower; here every layer has half the kernels and units"),
}
DEFAULT_VARIANTS = ("full", "no-lrn", "no-overlap", "no-dropout", "no-pca", "one-tower", "tanh")


def variant_config(base: TrainConfig, name: str, seed: int) -> TrainConfig:
    changes = dict(VARIANTS[name][0])
    if "width" in changes:
        changes["width"] = base.width * changes["width"]
    return base.replace(seed=seed, **changes)


def run_result(run_dir: Path, store: Store, metrics: list[dict], *, batch_size: int = 256) -> dict:
    """The numbers of one finished run: the last epoch's validation error (centre crop) and the
    error on an equal-sized, evenly spread part of the training set measured the same way (eval
    mode, centre crop), whose difference is the train-validation gap."""
    from alexnet.evaluate import evaluate, load_member

    last = metrics[-1]
    member = load_member(str(run_dir / "last.pt"), torch.device("cpu"))
    train_split = store.split("train")
    idx = spread_indices(len(train_split), min(len(store.split("val")), 10000))
    batches = ((images, labels) for images, labels, _ in split_batches(train_split, idx, batch_size))
    on_train = evaluate([member], batches)
    return dict(epochs=last["epoch"], val_top1_error=last["val_top1_error"], val_top5_error=last["val_top5_error"],
                train_top1_error=on_train["top1_error"], train_images=on_train["images"],
                gap_top1=last["val_top1_error"] - on_train["top1_error"],
                train_top1_error_during_training=last["train_top1_error"],
                best_val_top1_error=min(m["val_top1_error"] for m in metrics),
                seconds=sum(m["epoch_seconds"] for m in metrics))


def ablations(
    data: str | Path | None,
    out: str | Path,
    *,
    base: TrainConfig | None = None,
    seeds: int = 2,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    show_progress: bool = True,
    log: Log = print,
) -> dict:
    """Every variant x seed as a run directory ``out/<variant>/seed-<n>``; writes ablations.{md,json}."""
    from alexnet.demo import DEMO_CONFIG

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, builtin = prepared_data(data, out, show_progress=show_progress, log=log)
    store = open_store(data)
    base = base or (DEMO_CONFIG if builtin else TrainConfig())
    variants = list(dict.fromkeys(variants))
    plan = [(v, s) for v in variants for s in range(seeds)]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    started = time.perf_counter()
    for i, (variant, seed) in enumerate(plan, 1):
        run_dir = out / variant / f"seed-{seed}"
        config = variant_config(base, variant, seed)
        result_file = run_dir / "result.json"
        if result_file.is_file():
            saved = json.loads(result_file.read_text())
            if saved.get("config") == json.loads(json.dumps(config.to_dict())):
                log(f"[{i}/{len(plan)}] {variant}, seed {seed}: finished before, skipped ({run_dir})")
                results[variant].append(saved)
                continue
        state = "resuming" if (run_dir / "last.pt").exists() else "training"
        log(f"[{i}/{len(plan)}] {variant}, seed {seed}: {state} in {run_dir}")
        metrics = train_or_resume(config, data, run_dir, show_progress=show_progress, log=log)
        result = dict(variant=variant, seed=seed, config=config.to_dict(),
                      **run_result(run_dir, store, metrics, batch_size=max(64, config.batch_size_per_device)))
        _write_json(result_file, result)
        results[variant].append(result)
    summary = summarize(results, base=base, data=str(data), seeds=list(range(seeds)))
    summary["minutes"] = (time.perf_counter() - started) / 60
    _write_json(out / "ablations.json", summary)
    (out / "ablations.md").write_text(ablations_markdown(summary))
    log(f"ablations: wrote {out / 'ablations.md'} and {out / 'ablations.json'}")
    return summary


def summarize(results: dict[str, list[dict]], *, base: TrainConfig, data: str, seeds: list[int]) -> dict:
    """Mean and sample std over seeds of each variant's numbers, and the change from "full"."""
    rows = []
    for variant, runs in results.items():
        row = dict(variant=variant, changes=VARIANTS[variant][0], paper=VARIANTS[variant][1], seeds=[r["seed"] for r in runs])
        for key in ("val_top1_error", "val_top5_error", "train_top1_error", "gap_top1"):
            mean, std = _mean_std([r[key] for r in runs])
            row[key] = dict(mean=mean, std=_finite(std), values=[r[key] for r in runs])
        rows.append(row)
    full = next((r for r in rows if r["variant"] == "full"), None)
    for row in rows:
        for key in ("val_top1_error", "val_top5_error"):
            row[key]["minus_full"] = row[key]["mean"] - full[key]["mean"] if full else None
    return dict(experiment="ablations", data=data, seeds=seeds, epochs=base.epochs, base_config=base.to_dict(),
                variants=rows)


def ablations_markdown(s: dict) -> str:
    n = len(s["seeds"])
    lines = [
        "# Ablations",
        "",
        f"Data: `{s['data']}`. {_count(n, 'seed')} per variant, {_count(s['epochs'], 'epoch')} each. Errors in % on the "
        "validation split, centre crop, after the last epoch: mean ± sample std over seeds. "
        "\"vs full\": the variant's mean minus the full model's (positive: the feature helped). "
        "Gap: validation top-1 minus top-1 on as many training images, both in eval mode.",
        "",
        "| variant | change | top-1 error | top-5 error | top-1 vs full | top-5 vs full | train-val gap (top-1) | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["variants"]:
        change = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "none"
        cells = [f"{_pct(r[k]['mean'])} ± {_pct(r[k]['std'])}" for k in ("val_top1_error", "val_top5_error")]
        deltas = [_pct(r[k]["minus_full"], signed=True) if r["variant"] != "full" else "" for k in ("val_top1_error", "val_top5_error")]
        gap = f"{_pct(r['gap_top1']['mean'], signed=True)} ± {_pct(r['gap_top1']['std'])}"
        lines.append(f"| {r['variant']} | {change} | {cells[0]} | {cells[1]} | {deltas[0]} | {deltas[1]} | {gap} | {r['paper']} |")
    from alexnet.report import paper_differences

    changed = paper_differences(s["base_config"])
    lines += ["", "Base recipe, where it differs from the paper's: "
              + (", ".join(f"`{k}={_value(v)}` (paper: `{_value(p)}`)" for k, (p, v) in changed.items()) or "none")
              + ".", ""]
    return "\n".join(lines)
