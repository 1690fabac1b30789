"""The ``alexnet`` command: a thin dispatcher over :mod:`alexnet.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from alexnet import __version__
from alexnet.commands import COMMANDS
from alexnet.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton, 2012): prepare data, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"alexnet.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"alexnet.commands.{name}":
                continue  # command not built into this install
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"alexnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # unwritable output, disk full, missing file: the user's to fix
        if args.debug:
            traceback.print_exc()
        print(f"alexnet {args.command}: error: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
