"""``alexnet experiment relu-vs-tanh|ablations``: figure 1 and the paper's ablation claims, rerun."""

from __future__ import annotations

import argparse

from alexnet import config as cfg
from alexnet.commands import CommaList
from alexnet.errors import UserError

DATA_HELP = "prepared data (default: the built-in set, in DIR/data)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment",
        help="rerun the paper's figure 1 (ReLU vs tanh) or its ablations",
        description="Reproduce the paper's claims on a prepared data set: 'relu-vs-tanh' (figure 1) and "
        "'ablations' (LRN, overlapping pooling, dropout, PCA lighting, two towers, ReLU). Rerunning the same "
        "command continues an interrupted experiment; one with another recipe or data set in the same --out is "
        "refused, and one process at a time works in a --out.",
    )
    kinds = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    r = kinds.add_parser(
        "relu-vs-tanh",
        help="figure 1: epochs to a training-error level with ReLU vs tanh",
        description="Figure 1: the same network with ReLU and with tanh, from the same initial weights on the "
        "same batches, for several seeds. Plots training error (as measured during training) against epochs "
        "and reports how many steps each needs to reach --error-level, and the ratio tanh/ReLU. "
        "Writes DIR/relu_vs_tanh.{md,json,png}.",
    )
    r.add_argument("data", metavar="DATA", nargs="?", help=DATA_HELP)
    r.add_argument("--out", metavar="DIR", required=True, help="folder for the runs, the table and the figure")
    r.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 per activation (default 3)")
    r.add_argument("--epochs", type=int, default=5, metavar="N", help="passes over the training set per run (default 5)")
    r.add_argument("--error-level", type=float, default=0.25, metavar="X",
                   help="training error to reach, a fraction (default 0.25)")
    r.add_argument("--net", choices=("four-layer", "alexnet"), default="four-layer",
                   help="figure 1's CNN or an AlexNet (default four-layer)")
    r.add_argument("--lr", action=CommaList, item=float, metavar="LR[,LR...]",
                   help="learning rates; several: the fastest per activation")
    r.add_argument("--batch-size", type=int, default=128, metavar="N",
                   help="images per step of the four-layer net (default 128)")
    r.add_argument("--base-config", metavar="FILE", help="recipe keys over the base recipe, for --net alexnet")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=run_relu_vs_tanh)

    a = kinds.add_parser(
        "ablations",
        help="the paper's ablations as a table: each feature removed in turn, several seeds",
        description="Train the base recipe and one variant per feature the paper credits (no LRN, no overlapping "
        "pooling, no dropout, no PCA lighting, one tower, tanh), each for several seeds, and tabulate top-1/top-5 "
        "validation error (mean and std over seeds) and the train-validation gap beside the paper's reported "
        "effect. Each variant x seed is a run directory DIR/VARIANT/seed-N; finished runs are skipped and a "
        "partial one resumed when the command is run again with the same recipe and data (more --epochs continue "
        "them; another recipe or data set is refused: choose another --out). Writes DIR/ablations.md and "
        "DIR/ablations.json.",
    )
    a.add_argument("data", metavar="DATA", nargs="?", help=DATA_HELP)
    a.add_argument("--out", metavar="DIR", required=True, help="folder for the runs and the table")
    a.add_argument("--seeds", type=int, default=2, metavar="N", help="seeds 0..N-1 per variant (default 2)")
    a.add_argument("--epochs", type=int, metavar="N", help="epochs per run (default: the base recipe's)")
    a.add_argument("--base-config", metavar="FILE", help="recipe keys over the base recipe; a config.json works")
    a.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="one recipe key, e.g. width=0.125; repeatable")
    from alexnet.experiments.ablations import DEFAULT_VARIANTS, VARIANTS

    a.add_argument("--variants", action=CommaList, choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                   metavar="NAME[,NAME...]",
                   help=f"default: all but {', '.join(v for v in VARIANTS if v not in DEFAULT_VARIANTS)}")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    a.set_defaults(func=run_ablations)


def _base(args: argparse.Namespace):
    """The base recipe: None (the default for the data) unless a file, --set or --epochs changes it."""
    from alexnet.builtin import base_recipe

    changes = cfg.load_file(args.base_config) if args.base_config else {}
    for item in getattr(args, "set", []):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set wants KEY=VALUE, got {item!r}")
        key = key.strip().lstrip("-").replace("-", "_")
        if key == "seed":
            raise UserError("--set seed: each variant runs seeds 0..N-1 (--seeds N), so a base seed would be ignored; "
                            "leave it out")
        changes[key] = value.strip()
    if getattr(args, "epochs", None) is not None:
        changes["epochs"] = args.epochs
    if not changes:
        return None
    return cfg.from_dict(changes, base_recipe(args.data))


def _apply_process_settings(base) -> None:
    """The recipe's thread count and deterministic mode, for this whole process (the CLI's to set)."""
    if base is not None:
        from alexnet.devices import apply_process_settings

        apply_process_settings(base.cpu_threads, base.deterministic, log=print)


def run_relu_vs_tanh(args: argparse.Namespace) -> int:
    from alexnet.experiments.figure1 import relu_vs_tanh

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    base = None
    if args.base_config:
        from alexnet.builtin import base_recipe

        base = cfg.from_dict(cfg.load_file(args.base_config), base_recipe(args.data))
        if args.net == "four-layer":
            print("note: --base-config shapes only --net alexnet runs; the four-layer network has its own recipe "
                  "(no LRN, dropout, weight decay or augmentation); only its runtime keys (threads) apply")
    _apply_process_settings(base)
    relu_vs_tanh(args.data, args.out, seeds=args.seeds, epochs=args.epochs, level=args.error_level, net=args.net,
                 lrs=args.lr, base=base, batch_size=args.batch_size, show_progress=not args.quiet)
    return 0


def run_ablations(args: argparse.Namespace) -> int:
    from alexnet.experiments.ablations import ablations

    if args.epochs is not None and args.epochs < 1:
        raise UserError("--epochs must be at least 1")
    base = _base(args)
    _apply_process_settings(base)
    ablations(args.data, args.out, base=base, seeds=args.seeds, variants=args.variants,
              show_progress=not args.quiet)
    return 0
