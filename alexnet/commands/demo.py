"""``alexnet demo``: the whole system on the built-in data set; no arguments, no network."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="prepare the built-in Fashion-MNIST subset, train a small AlexNet, evaluate it (minutes on a CPU)",
        description="Prepare the built-in Fashion-MNIST subset, train a small AlexNet with every feature of the "
        "paper on, evaluate it with the centre crop and ten crops, and draw its curves and conv1 kernels.",
    )
    p.add_argument("--out", default="runs/demo", help="folder for the prepared data and the run (default runs/demo)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.demo import run_demo

    run_demo(args.out, show_progress=not args.quiet)
    return 0
