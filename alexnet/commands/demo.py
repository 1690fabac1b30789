"""``alexnet demo``: the whole system on the built-in data set; no data to fetch, no network."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="prepare the built-in Fashion-MNIST subset, train a small AlexNet, evaluate it (minutes on a CPU)",
        description="Prepare the built-in Fashion-MNIST subset, train a small AlexNet with every feature of the "
        "paper on, evaluate it with the centre crop and ten crops, and draw its curves and conv1 kernels.",
    )
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="folder for the data and the run (default runs/demo)")
    p.add_argument("--device", default="auto", metavar="NAME", help="cpu, cuda or cuda:N; auto (default): a GPU if any")
    p.add_argument("--cpu-threads", type=int, default=0, metavar="N", help="CPU threads (default 0: one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.builtin import BUILTIN_RECIPE
    from alexnet.demo import run_demo
    from alexnet.devices import apply_process_settings

    config = BUILTIN_RECIPE.replace(device=args.device, cpu_threads=args.cpu_threads)  # validates both
    apply_process_settings(config.cpu_threads, config.deterministic, log=print)
    run_demo(args.out, show_progress=not args.quiet, config=config)
    return 0
