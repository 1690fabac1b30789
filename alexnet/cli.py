"""The ``alexnet`` command: a thin dispatcher over :mod:`alexnet.commands`.

Every error a user can cause ends in one line on stderr and exit status 2; ``--debug`` (anywhere
on the command line) adds the traceback, or the usage for a flag error. Flags must be spelt out:
prefix abbreviations are off on every parser, so a misspelt flag is an error, never another flag.
Process-wide choices are made here, at the entry, and nowhere in the library: matplotlib's
file-only Agg backend (no display needed); thread counts and deterministic kernels are set by
the commands through :func:`alexnet.devices.apply_process_settings`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import os
import sys
import traceback
from pathlib import Path

from alexnet import __version__
from alexnet.commands import COMMANDS, CommaList
from alexnet.display import printable
from alexnet.errors import UserError

DEBUG_FLAG = "--debug"
TRACEBACK_HINT = "run with --debug for the traceback"
USAGE_HINT = "see '{prog} --help'; --debug also prints the usage"


class UsageError(Exception):
    """A command line argparse refused; ``parser`` is the (sub)parser that refused it."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


def _is_number(word: str) -> bool:
    try:
        float(word)
        return True
    except ValueError:
        return False


class Parser(argparse.ArgumentParser):
    """An ArgumentParser without prefix abbreviations whose errors are raised, not printed and exited.

    ``add_subparsers`` makes its subparsers of the parent's class, so every parser under the
    ``alexnet`` command is one of these.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        self.given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _chosen_actions(self, given: list[str]) -> list[argparse.Action]:
        """This parser's actions and those of the subcommands named in ``given`` (the top parser
        reports the words a subcommand left over)."""
        actions = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word in given:
                    if word in action.choices:
                        actions += action.choices[word]._chosen_actions(given)
                        break
        return actions

    def error(self, message: str):  # argparse's contract: does not return
        if "arguments are required" in message:
            given = getattr(self, "given", [])
            flags = {flag for a in self._chosen_actions(given) for flag in a.option_strings}
            dashed = [w for w in given if w.startswith("-") and w != "--" and w.split("=", 1)[0] not in flags
                      and not _is_number(w)]
            if dashed:  # argparse takes a name that starts with '-' for a flag
                message += f" ({dashed[0]} was read as a flag: put names that start with '-' after '--', or write ./{dashed[0]})"
        if "unrecognized arguments" in message:
            given = getattr(self, "given", [])
            flags = {flag for a in self._chosen_actions(given) if isinstance(a, CommaList) for flag in a.option_strings}
            # a list written as several words leaves all but its first to the positionals
            spread = [word for i, word in enumerate(given[:-2]) if word in flags and not given[i + 2].startswith("-")]
            if spread:
                message += f" ({spread[0]} takes one word: join its items with commas, {spread[0]} a,b,c)"
        raise UsageError(self, message)


def build_parser() -> Parser:
    parser = Parser(
        prog="alexnet",
        description="AlexNet (Krizhevsky, Sutskever & Hinton, 2012): prepare data, train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true",
                        help="show full tracebacks for errors (accepted anywhere on the command line)")
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


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (wherever it stands before a ``--``), and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    head = [a for a in argv[:end] if a != DEBUG_FLAG]
    return head + argv[end:], len(head) < end


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)parser that ``args`` went through, e.g. that of ``alexnet experiment ablations``."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if chosen not in getattr(action, "choices", {}):
            return parser
        parser = action.choices[chosen]


def _unrecognized(parser: argparse.ArgumentParser, extras: list[str]):
    """Refuse ``extras`` in the words of the parser they were given to, with the nearest real flag."""
    import difflib

    message = f"unrecognized arguments: {' '.join(extras)}"
    flags = [s for a in parser._actions for s in a.option_strings if s.startswith("--")] + [DEBUG_FLAG]
    first = next((x.split("=")[0] for x in extras if x.startswith("--")), None)
    near = difflib.get_close_matches(first, flags, n=1) if first else []
    if near:
        message += f"; did you mean {near[0]}?"
    parser.error(message)


def _os_error(e: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` as ``x: no space left on device``."""
    advice = "; free some space, or write somewhere else" if e.errno == errno.ENOSPC else ""
    if e.strerror and e.filename is not None:
        where = f"{os.fsdecode(e.filename)}" + (f" -> {os.fsdecode(e.filename2)}" if e.filename2 is not None else "")
        return f"{where}: {e.strerror[:1].lower()}{e.strerror[1:]}{advice}"
    return (e.strerror or str(e) or type(e).__name__) + advice


def printable_streams() -> None:
    """stdout and stderr write a name that is not valid UTF-8 with '?' instead of failing mid-output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="replace")
        except (AttributeError, ValueError, io.UnsupportedOperation):
            pass  # a stream replaced by a caller (a test's capture, a pipe wrapper): left as it is


def use_file_backend() -> None:
    """matplotlib's Agg backend for this process: figures go to files, no display is needed."""
    os.environ["MPLBACKEND"] = "Agg"
    if "matplotlib" in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def _interrupt_advice(name: str, args) -> str:
    """How to go on after Ctrl-C stopped the command ``name`` (nothing for commands that keep no state)."""
    if name == "alexnet train":
        if getattr(args, "out", None) and (Path(args.out) / "last.pt").is_file():
            return "; add --resume to the same command to go on from the last checkpoint"
        return "; no checkpoint was written yet: run the same command again to start over"
    if name.startswith("alexnet experiment"):
        return "; run the same command again: finished runs are kept and the unfinished one resumes"
    return {"alexnet prepare": "; run the same command again to resume where it stopped",
            "alexnet demo": "; run it again to go on where it stopped"}.get(name, "")


def _say_error(command: str, message: str, hint: str) -> None:
    text = " ".join(printable(str(message)).split())  # one line, whatever the message held
    rank = ""
    if "RANK" in os.environ:  # every process of a run prints its own errors: say whose line it is
        from alexnet.distributed import rank_prefix

        rank = rank_prefix()
    sys.stderr.write(f"{rank}{command}: error: {text} ({hint})\n")  # one write: ranks' lines do not interleave
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    argv, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        if extras:
            _unrecognized(_chosen_parser(parser, args), extras)
    except UsageError as e:
        if debug:
            e.parser.print_usage(sys.stderr)
        _say_error(e.parser.prog, str(e), USAGE_HINT.format(prog=e.parser.prog))
        return 2
    args.debug = debug
    if args.command is None:
        if debug:
            parser.print_usage(sys.stderr)
        _say_error("alexnet", "give a command, e.g. 'alexnet demo'", USAGE_HINT.format(prog="alexnet"))
        return 2
    use_file_backend()
    printable_streams()
    name = _chosen_parser(parser, args).prog  # e.g. "alexnet experiment ablations"
    try:
        code = args.func(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        _say_error(name, str(e), TRACEBACK_HINT)
        return 2
    except BrokenPipeError:  # the reader went away (alexnet predict ... | head): not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE, as the shell reports a process killed by it
    except OSError as e:  # unwritable output, disk full, missing file: the user's to fix
        if debug:
            traceback.print_exc()
        _say_error(name, _os_error(e), TRACEBACK_HINT)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted{_interrupt_advice(name, args)}", file=sys.stderr)
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        _say_error(name, "out of memory; use a smaller --batch-size or a smaller model", TRACEBACK_HINT)
        return 2
    except Exception as e:  # a bug, not the user's doing: one line here too, the traceback on request
        if debug:
            traceback.print_exc()
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch here
            _say_error(name, "the device ran out of memory; use a smaller --batch-size-per-device/--batch-size",
                       TRACEBACK_HINT)
            return 2
        first = str(e).splitlines()[0] if str(e) else ""
        _say_error(name, f"internal error {type(e).__name__}: {first}; please report it with the traceback",
                   TRACEBACK_HINT)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
