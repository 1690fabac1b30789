"""The run directory: what a run leaves on disk, written by rank 0 alone, owned by one process.

    config.json     the resolved recipe, rewritten when a resume changes a runtime key
    metrics.jsonl   one line per finished epoch
    log.txt         every line the run printed, with the time: starts, resumes, notes, warnings,
                    epochs, and how each process of the run ended (appended, never cut)
    last.pt         everything needed to resume (:mod:`alexnet.training.state`)
    best.pt         the weights of the epoch with the lowest validation error
    curves.png      the training and validation curves
    tensorboard/    the same scalars and conv1's kernels as TensorBoard events (``--tensorboard``)
    .alexnet.lock   held while a process trains into the directory (:mod:`alexnet.runlock`)

Every file is replaced atomically (:mod:`alexnet.atomic`); metrics lines are appended and
fsynced, and a resume keeps only the lines of the epochs its checkpoint holds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from alexnet import checkpoint
from alexnet.atomic import atomic_write_bytes, sweep_dead_temporaries
from alexnet.config import TrainConfig
from alexnet.errors import UserError
from alexnet.faults import kill_point
from alexnet.figures.report import read_metrics
from alexnet.runlock import LOCK_FILE


def saved_recipe(run_dir: str | Path) -> dict | None:
    """The recipe a run directory records (config.json), or None when it has none."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged; it is rewritten from the checkpoint if you resume with the run's flags") from None
    return values if isinstance(values, dict) else None


# What a run directory may hold besides temporary files of atomic writes: the run's own files,
# and what the other commands write beside them (demo, show, report, experiment ablations).
RUN_ENTRIES = frozenset({"config.json", "metrics.jsonl", "log.txt", "last.pt", "best.pt", "curves.png", "tensorboard",
                         LOCK_FILE,
                         "filters.png", "neighbours.png", "report.html", "result.json"})


def _foreign_entries(directory: Path) -> list[str]:
    """The names in ``directory`` that no run writes (a new run would mix with them)."""
    return sorted(e.name for e in directory.iterdir()
                  if e.name not in RUN_ENTRIES and not (e.name.startswith(".") and e.name.endswith(".tmp")))


class RunDir:
    """A run directory as one process (rank 0, the ``owner``) writes it; other ranks only read."""

    def __init__(self, path: str | Path, *, owner: bool, log: Callable[[str], None] = print) -> None:
        self.dir, self.owner, self.log = Path(path), owner, log
        self.config, self.metrics = self.dir / "config.json", self.dir / "metrics.jsonl"
        self.last, self.best, self.curves = self.dir / "last.pt", self.dir / "best.pt", self.dir / "curves.png"
        self.log_file = self.dir / "log.txt"
        self._lock = contextlib.ExitStack()  # the lock, log.txt and, when on, the TensorBoard writer
        self.tensorboard = None
        self._log_lines: list[str] | None = []  # recorded before start(): a run refused before it writes keeps none
        self._log = None
        self._log_broken = False

    def __enter__(self) -> "RunDir":
        if self.owner:
            from alexnet.runlock import run_lock

            if self.dir.exists() and not self.dir.is_dir():
                raise UserError(f"--out {self.dir} is a file; name a folder for the run")
            if (self.dir / "manifest.json").is_file():
                raise UserError(f"--out {self.dir} holds a prepared data set; name another folder for the run")
            if self.dir.is_dir() and not os.access(self.dir, os.W_OK):
                raise UserError(f"run directory {self.dir} is not writable; choose another --out")
            # run_lock makes the folder, and removes it again if the run fails before writing into it
            self._lock.enter_context(run_lock(self.dir, "alexnet train", log=lambda note: self.log(f"note: {note}")))
            sweep_dead_temporaries(self.dir)  # half-written files of a process that was killed
        return self

    def __exit__(self, *exc) -> None:
        self._lock.close()

    def checkpoint_to_resume(self, resume: bool) -> dict | None:
        """The checkpoint a resume continues from, or None for a new run; refuses the wrong mode."""
        if not resume:
            if self.last.exists():
                raise UserError(f"{self.dir} already holds a run; pass --resume to continue it or choose another --out")
            foreign = _foreign_entries(self.dir) if self.owner else []
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
                raise UserError(f"--out {self.dir} holds files that are not a run's ({shown}); "
                                "name a new or empty folder for the run")
            return None
        if not self.last.exists():
            raise UserError(f"nothing to resume: {self.last} does not exist; start without --resume")
        return checkpoint.load(self.last)

    def kept_metrics(self, epochs_done: int) -> list[dict]:
        """The metrics of the epochs a checkpoint holds (a crash may have appended one more line)."""
        return [m for m in read_metrics(self.dir) if m["epoch"] <= epochs_done]

    def start(self, config: TrainConfig, epochs_done: int) -> list[dict]:
        """Write the recipe and keep the metrics of the epochs the checkpoint holds (a crash may
        have appended one more line); returns those metrics. With ``config.tensorboard`` the
        TensorBoard events are opened too (hiding what a crash wrote past the checkpoint)."""
        kept = self.kept_metrics(epochs_done)
        if self.owner and config.tensorboard:
            from alexnet.tensorboard import TensorBoardWriter

            self.tensorboard = self._lock.enter_context(contextlib.closing(
                TensorBoardWriter(self.dir, purge_step=epochs_done + 1)))
        if self.owner:
            # These two writes also reach the crash tests' "checkpoint-write" kill point, as checkpoints do.
            atomic_write_bytes(self.config, json.dumps(config.to_dict(), indent=2).encode(),
                               fault_point="checkpoint-write")
            atomic_write_bytes(self.metrics, "".join(json.dumps(m) + "\n" for m in kept).encode(),
                               fault_point="checkpoint-write")
            try:
                self._log = self._lock.enter_context(open(self.log_file, "a", encoding="utf-8", errors="replace"))
            except OSError as e:
                self._log_broken = True
                self.log(f"warning: {self.log_file} cannot be opened ({e.strerror or e}); the run goes on without it")
            lines, self._log_lines = self._log_lines, None
            self._append(lines)
        return kept

    def record(self, message: str) -> None:
        """Append ``message`` to log.txt with the time (lines recorded before :meth:`start` are
        written by it; other ranks record nothing). A write that fails (a full disk) is said once
        and the run goes on without log.txt."""
        if not self.owner:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"{stamp} {line}\n" for line in str(message).splitlines() or [""]]
        if self._log_lines is not None:  # before start()
            self._log_lines.extend(lines)
        else:
            self._append(lines)

    def _append(self, lines: list[str]) -> None:
        if self._log_broken:
            return
        try:
            self._log.writelines(lines)
            self._log.flush()
        except OSError as e:  # a full disk: the run goes on (its next checkpoint says what to do)
            self._log_broken = True
            with contextlib.suppress(OSError):
                self._log.close()  # what it still buffers is dropped, not written again at the end
            self.log(f"warning: {self.log_file} could not be written ({e.strerror or e}); "
                     "the run goes on without it")

    def tee(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` that also records each line in log.txt."""
        def both(message: str) -> None:
            log(message)
            self.record(message)

        return both

    def append_metrics(self, line: dict) -> None:
        if self.owner:
            with open(self.metrics, "a") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
                os.fsync(f.fileno())
        kill_point("metrics-append")

    def save(self, path: Path, payload: dict) -> None:
        if self.owner:
            checkpoint.save(path, payload)

    def plot(self, metrics: list[dict], conv1_weight, towers: int, top5: bool = True) -> None:
        """The curves so far; the epoch's scalars and conv1's kernels for TensorBoard when it is on."""
        if self.owner:
            from alexnet.figures.plots import plot_curves

            plot_curves(metrics, self.curves, top5=top5)
            if self.tensorboard is not None:
                self.tensorboard.log_epoch(metrics[-1], conv1_weight, towers=towers)
