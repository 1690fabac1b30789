"""The paper's ablations as an experiment: the base recipe and one variant per feature it credits.

:func:`ablations` trains the base recipe and one variant per feature (LRN, overlapping pooling,
dropout, PCA lighting, two towers, ReLU), for several seeds, each a run directory made by
:func:`alexnet.training.train`, and tabulates top-1 and top-5 validation error (centre crop, last
epoch) and the train-validation gap beside the paper's reported effect. Finished runs are
skipped and a partial run is resumed, so an interrupted experiment continues where it stopped;
a finished run counts only for the same recipe on the same store (its ``result.json`` records
both), and a run of another recipe or store is refused rather than relabelled.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch

from alexnet.atomic import atomic_write_bytes, atomic_write_json
from alexnet.config import TrainConfig
from alexnet.data import Store
from alexnet.errors import UserError
from alexnet.experiments.runs import (Log, count, experiment_folder, experiment_inputs, finite, mean_std, pct,
                                     read_json_table, train_or_resume)
from alexnet.figures.paper import spread_indices, split_batches

# name: (changes to the base recipe, what the paper reports for the feature)
VARIANTS: dict[str, tuple[dict, str]] = {
    "full": ({}, "the paper's model (the base recipe)"),
    "no-lrn": (dict(lrn=False), "LRN lowers top-1 by 1.4%, top-5 by 1.2% (section 3.3)"),
    "no-overlap": (dict(overlapping_pool=False), "overlapping pooling lowers top-1 by 0.4%, top-5 by 0.3% (section 3.4)"),
    "no-dropout": (dict(dropout=0.0), "without dropout the network overfits substantially (section 4.2)"),
    "no-pca": (dict(pca_lighting_std=0.0), "PCA lighting lowers top-1 by over 1% (section 4.1)"),
    "one-gpu": (dict(towers=1, channels="half of conv1-4"), "two towers lower top-1 by 1.7%, top-5 by 1.2% vs a "
                "one-GPU net with half the kernels in conv1-4 (section 3.2; conv5 and the FC layers kept, as the "
                "released layers-145-half.cfg)"),
    # not run by default: the two towers' kernels in one tower (no grouped convolutions)
    "one-tower": (dict(towers=1), "as two towers, without the towers' restricted connectivity"),
    "tanh": (dict(activation="tanh"), "ReLU trains about 6x faster than tanh (figure 1)"),
    # not run by default: the other reading of section 3.2's one-GPU net (every layer halved)
    "one-tower-half": (dict(towers=1, width=0.5), "as one-tower; here every layer has half the kernels and units"),
}
DEFAULT_VARIANTS = ("full", "no-lrn", "no-overlap", "no-dropout", "no-pca", "one-gpu", "tanh")


def variant_config(base: TrainConfig, name: str, seed: int) -> TrainConfig:
    changes = dict(VARIANTS[name][0])
    if changes.get("channels") == "half of conv1-4":
        from alexnet.model import PAPER_CONV_CHANNELS, _divisible

        conv = base.channels or tuple(_divisible(c * base.width, base.towers) for c in PAPER_CONV_CHANNELS)
        changes["channels"] = tuple(max(1, c // 2) for c in conv[:4]) + (conv[4],)
    if "width" in changes:
        changes["width"] = base.width * changes["width"]
    return base.replace(seed=seed, **changes)


def run_result(run_dir: Path, store: Store, metrics: list[dict], *, batch_size: int = 256) -> dict:
    """The numbers of one finished run: the last epoch's validation error (centre crop) and the
    error on an equal-sized, evenly spread part of the training set measured the same way (eval
    mode, centre crop), whose difference is the train-validation gap."""
    from alexnet.evaluate import evaluate
    from alexnet.trained import load_member

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
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    with experiment_folder(out, "alexnet experiment ablations"):
        return _ablations(data, out, base=base, seeds=seeds, variants=variants, show_progress=show_progress, log=log)


def _ablations(data, out, *, base, seeds, variants, show_progress, log) -> dict:
    from alexnet.training.recipe import store_identity

    out, data, _, store, base = experiment_inputs(data, out, base, show_progress=show_progress, log=log)
    identity = store_identity(store)
    variants = list(dict.fromkeys(variants))
    plan = [(v, s) for v in variants for s in range(seeds)]
    results: dict[str, list[dict]] = {v: [] for v in variants}
    started = time.perf_counter()
    for i, (variant, seed) in enumerate(plan, 1):
        run_dir = out / variant / f"seed-{seed}"
        config = variant_config(base, variant, seed)
        result_file = run_dir / "result.json"
        if result_file.is_file():
            saved = read_json_table(result_file)
            # a result counts only for the same recipe on the same data (a digest of the store's manifest)
            if saved.get("config") == json.loads(json.dumps(config.to_dict())) and saved.get("store") == identity:
                log(f"[{i}/{len(plan)}] {variant}, seed {seed}: finished before, skipped ({run_dir})")
                results[variant].append(saved)
                continue
        state = "resuming" if (run_dir / "last.pt").exists() else "training"
        log(f"[{i}/{len(plan)}] {variant}, seed {seed}: {state} in {run_dir}")
        metrics = train_or_resume(config, data, run_dir, show_progress=show_progress, log=log)
        result = dict(variant=variant, seed=seed, config=config.to_dict(), store=identity,
                      **run_result(run_dir, store, metrics, batch_size=max(64, config.batch_size_per_device)))
        atomic_write_json(result_file, result)
        results[variant].append(result)
    summary = summarize(results, base=base, data=str(data), seeds=list(range(seeds)))
    summary["minutes"] = (time.perf_counter() - started) / 60
    atomic_write_json(out / "ablations.json", summary)
    atomic_write_bytes(out / "ablations.md", ablations_markdown(summary).encode())
    log(f"ablations: wrote {out / 'ablations.md'} and {out / 'ablations.json'}")
    return summary


def summarize(results: dict[str, list[dict]], *, base: TrainConfig, data: str, seeds: list[int]) -> dict:
    """Mean and sample std over seeds of each variant's numbers, and the change from "full"."""
    rows = []
    for variant, runs in results.items():
        row = dict(variant=variant, changes=VARIANTS[variant][0], paper=VARIANTS[variant][1], seeds=[r["seed"] for r in runs])
        for key in ("val_top1_error", "val_top5_error", "train_top1_error", "gap_top1"):
            mean, std = mean_std([r[key] for r in runs])
            row[key] = dict(mean=mean, std=finite(std), values=[r[key] for r in runs])
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
        f"Data: `{s['data']}`. {count(n, 'seed')} per variant, {count(s['epochs'], 'epoch')} each. Errors in % on the "
        "validation split, centre crop, after the last epoch: mean ± sample std over seeds. "
        "\"vs full\": the variant's mean minus the full model's (positive: the feature helped). "
        "Gap: validation top-1 minus top-1 on as many training images, both in eval mode.",
        "",
        "| variant | change | top-1 error | top-5 error | top-1 vs full | top-5 vs full | train-val gap (top-1) | paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["variants"]:
        change = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "none"
        cells = [f"{pct(r[k]['mean'])} ± {pct(r[k]['std'])}" for k in ("val_top1_error", "val_top5_error")]
        deltas = [pct(r[k]["minus_full"], signed=True) if r["variant"] != "full" else "" for k in ("val_top1_error", "val_top5_error")]
        gap = f"{pct(r['gap_top1']['mean'], signed=True)} ± {pct(r['gap_top1']['std'])}"
        lines.append(f"| {r['variant']} | {change} | {cells[0]} | {cells[1]} | {deltas[0]} | {deltas[1]} | {gap} | {r['paper']} |")
    from alexnet.figures.report import paper_differences

    changed = paper_differences(s["base_config"])
    lines += ["", "Base recipe, where it differs from the paper's: "
              + (", ".join(f"`{k}={_value(v)}` (paper: `{_value(p)}`)" for k, (p, v) in changed.items()) or "none")
              + ".", ""]
    return "\n".join(lines)


def _value(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
