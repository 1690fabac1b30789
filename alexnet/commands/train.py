"""``alexnet train DATA --out RUN``: section 5's recipe, every choice a flag."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading

from alexnet import config as cfg
from alexnet.commands import CommaList


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on a prepared data set (the paper's recipe, or one fitted to a small data set)",
        usage="%(prog)s DATA --out RUN [--config FILE] [--resume] [flags below]",
        description="Train AlexNet on a store made by 'alexnet prepare'. Defaults are the paper's recipe, or, for "
        "a data set far smaller than ImageNet or of images smaller than its crops, the small-data recipe (said "
        "at the start; --recipe paper forces the paper's); every flag below overrides one choice (the README "
        "explains each). Under torchrun every process runs this same command.",
    )
    p.add_argument("data", metavar="DATA", help="prepared data set (a folder made by 'alexnet prepare')")
    first = p.add_argument_group(cfg.HELP_GROUPS["run"])
    first.add_argument("--out", metavar="RUN", required=True, help="run directory: config, metrics, checkpoints, plots")
    first.add_argument("--config", metavar="FILE", help="JSON or TOML file of recipe keys; flags override it")
    first.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    groups = add_recipe_flags(p, {"run": first})
    groups["checks"].add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


_METAVARS = {int: "N", float: "X", str: "NAME"}
_SHOWN_DEFAULTS = {"recipe": "by data size"}  # the command picks it; TrainConfig's own default is the paper's


def add_recipe_flags(parser: argparse.ArgumentParser, groups: dict | None = None) -> dict:
    """One flag per recipe key, in its key's group of the help (:data:`alexnet.config.HELP_GROUPS`,
    made here unless ``groups`` has it); returns the groups. The defaults stay None so that only
    the flags given override the recipe."""
    groups = dict(groups or {})
    for key, title in cfg.HELP_GROUPS.items():
        if key not in groups:
            groups[key] = parser.add_argument_group(title)
    for f in dataclasses.fields(cfg.TrainConfig):
        kind, choices = cfg.key_type(f.name), f.metadata["choices"]
        shown = ",".join(map(str, f.default)) if kind is tuple else _SHOWN_DEFAULTS.get(f.name, str(f.default))
        spec = dict(dest=f.name, default=None, help=f.metadata["help"] + (f" (default: {shown})" if shown else ""))
        if kind is bool:
            spec.update(action=argparse.BooleanOptionalAction)
        elif kind is tuple:  # one word, items joined by commas; the config checks the items
            spec.update(action=CommaList, metavar="A,B,...")
        elif choices:
            spec.update(type=str, choices=[str(c) for c in choices])
        else:
            spec.update(type=str, metavar=f.metadata["metavar"] or _METAVARS[kind])
        groups[f.metadata["group"]].add_argument("--" + f.name.replace("_", "-"), **spec)
    return groups


def _fitted_recipe(args: argparse.Namespace) -> dict | None:
    """The keys of the small-data recipe (:mod:`alexnet.small_data`) when ``--recipe small`` asks for
    it, or when DATA is a small data set and neither the flags nor the ``--config`` file name a
    recipe, a parent to fine-tune or an architecture; None (the paper's recipe) otherwise. The flags
    and the file win over its keys."""
    from alexnet.data import open_store
    from alexnet.errors import UserError
    from alexnet.small_data import is_small, small_data_recipe

    named = cfg.load_file(args.config) if args.config else {}
    recipe = args.recipe if getattr(args, "recipe", None) is not None else named.get("recipe")
    if recipe != "small" and (recipe is not None or any(getattr(args, key, None) is not None or key in named
                                                        for key in ("init_from", "arch"))):
        return None  # the paper's recipe, the authors', or a parent's network: nothing to fit
    try:
        store = open_store(args.data)
    except UserError:
        return None  # train() says what is wrong with DATA, after the flags are checked
    images = len(store.split("train")) if "train" in store.splits else 0
    if recipe != "small" and not is_small(images, store.image_size):
        return None
    fitted = dict(batch=getattr(args, "batch_size_per_device", None) or named.get("batch_size_per_device"),
                  epochs=getattr(args, "epochs", None) or named.get("epochs"))
    try:
        fitted = {k: int(v) for k, v in fitted.items() if v is not None and int(v) >= 1}
    except (TypeError, ValueError):
        fitted = {}  # the config's own check says what is wrong with it
    return small_data_recipe(images, store.image_size, **fitted)


@contextlib.contextmanager
def stop_on_sigterm():
    """While the block runs, SIGTERM (a scheduler's preemption, ``kill``, torchrun passing one on)
    only sets a flag that training reads at its next synced step, checkpoints and stops; yields
    the flag's reader. Ctrl-C still interrupts at once."""
    arrived = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield arrived.is_set
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: arrived.set())
    try:
        yield arrived.is_set
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(args: argparse.Namespace) -> int:
    from alexnet.data import open_store
    from alexnet.devices import apply_process_settings, validate_device_name
    from alexnet.distributed import cleanup, collective_errors_explained
    from alexnet.evaluate import top5_is_informative
    from alexnet.training import Stopped, train
    from alexnet.training.run_dir import saved_recipe

    base, fitted = None, None
    if args.resume and (saved := saved_recipe(args.out)) is not None:
        base = cfg.from_dict(saved)  # the run's own recipe; flags may change e.g. --epochs
    else:
        fitted = _fitted_recipe(args)
    config = cfg.from_args(args, base, fitted)
    validate_device_name(config.device)  # before anything is opened or written
    apply_process_settings(config.cpu_threads, config.deterministic, log=print)
    try:
        with stop_on_sigterm() as asked, collective_errors_explained():  # a lost peer, in one line
            metrics = train(config, args.data, args.out, resume=args.resume, show_progress=not args.quiet,
                            stop_requested=asked)
    except Stopped as stopped:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"alexnet train: SIGTERM: {stopped}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        cleanup()
    if metrics and int(os.environ.get("RANK", "0")) == 0:
        last = metrics[-1]
        top5 = f", top-5 {last['val_top5_error']:.2%}" if top5_is_informative(open_store(args.data).num_classes) else ""
        skipped = sum(m.get("skipped_images", 0) for m in metrics)
        print(f"done: {last['epoch']} epoch{'s' * (last['epoch'] != 1)}, val top-1 error {last['val_top1_error']:.2%}"
              f"{top5}" + (f"; {skipped} damaged images skipped (see metrics.jsonl)" if skipped else "")
              + f"; run directory {args.out}")
        for line in what_comes_next(args.out, args.data):
            print(line)
    return 0


def what_comes_next(run: str, data: str) -> list[str]:
    """The commands to try a trained run: its best checkpoint evaluated with ten crops, used on
    images, exported (each path quoted for the shell)."""
    import shlex
    from pathlib import Path

    best = Path(run) / "best.pt"
    if not best.exists():
        best = Path(run) / "last.pt"
    q = shlex.quote
    return [f"next: alexnet evaluate {q(str(best))} {q(str(data))} --ten-crop",
            f"      alexnet predict {q(str(best))} IMAGE_OR_FOLDER ...",
            f"      alexnet export {q(str(best))} --out {q(str(Path('exported') / (Path(run).resolve().name or 'run')))}",
            f"      alexnet report {q(str(run))}   (one HTML page: curves, kernels, recipe)"]
