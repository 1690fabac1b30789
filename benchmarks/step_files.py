"""Which of the package's files one default training step runs code in.

A step is measured from the start of one ``optimizer.step()`` to the start of the next (the
update, then loader, augmentation, forward, loss, backward and bookkeeping), on every thread,
with ``sys.setprofile``: a file counts when a Python function defined in it is called. The run is
the built-in data set's recipe on the CPU, one process, every other choice at its default.

    python benchmarks/step_files.py            # the list, and how many
    python benchmarks/step_files.py --step 5   # trace between steps 5 and 6 instead of 3 and 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import alexnet
from alexnet.builtin import BUILTIN_RECIPE, prepare_builtin
from alexnet.optim import PaperSGD
from alexnet.training import train

PACKAGE = Path(alexnet.__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step", type=int, default=3, help="trace from this step's update to the next one's")
    args = parser.parse_args()

    seen: set[str] = set()
    tracing = threading.Event()

    def profile(frame, event, arg):
        if event == "call" and tracing.is_set():
            seen.add(frame.f_code.co_filename)

    original, calls = PaperSGD.step, [0]

    def step(self, *a, **k):
        calls[0] += 1
        if calls[0] == args.step:
            tracing.set()
        elif calls[0] == args.step + 1:
            tracing.clear()
        return original(self, *a, **k)

    PaperSGD.step = step
    with tempfile.TemporaryDirectory() as tmp:
        prepare_builtin(Path(tmp) / "data", show_progress=False, log=lambda line: None)
        threading.setprofile(profile)
        sys.setprofile(profile)
        try:
            train(BUILTIN_RECIPE.replace(epochs=1, max_steps_per_epoch=args.step + 2, device="cpu"),
                  Path(tmp) / "data", Path(tmp) / "run", show_progress=False, log=lambda line: None,
                  stop_requested=lambda: False)  # as the CLI asks (SIGTERM)
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
    files = sorted({str(Path(f).resolve().relative_to(PACKAGE.parent)) for f in seen
                    if Path(f).resolve().is_relative_to(PACKAGE)})
    print(f"{len(files)} files of the package run code between update {args.step} and update {args.step + 1}:")
    for f in files:
        print(f"  {f}")


if __name__ == "__main__":
    main()
