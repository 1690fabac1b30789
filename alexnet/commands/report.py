"""``alexnet report RUN``: one self-contained HTML page about a run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one HTML page with a run's recipe, metrics, curves, conv1 kernels and evaluation results",
        description="Gather a run directory into one self-contained HTML page (images embedded): the recipe with "
        "the values that differ from the paper's highlighted, the metrics of every epoch, the training curves, "
        "conv1's kernels (figure 3), and evaluation results found in the run directory (*.json with top1_error, "
        "e.g. 'alexnet evaluate RUN DATA --json > RUN/eval.json') and any other PNG there.",
    )
    p.add_argument("run", metavar="RUN", help="run directory (the --out of 'alexnet train')")
    p.add_argument("--out", metavar="FILE", help="HTML file or folder (default RUN/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alexnet.display import printable
    from alexnet.errors import UserError
    from alexnet.figures.report import build_report

    try:
        out = build_report(args.run, args.out)
    except OSError as e:  # the page's own write: name the page, not the temporary file beside it
        where = printable(str(args.out or args.run))
        raise UserError(f"could not write the report ({where}): {e.strerror or e}; nothing was written") from None
    print(f"report of {args.run} in {out}")
    return 0
