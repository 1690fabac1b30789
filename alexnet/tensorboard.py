"""TensorBoard logging of a run (``alexnet train --tensorboard``, the ``tensorboard`` extra).

Per epoch, the scalars of the metrics.jsonl line under the same names (:data:`SCALARS`, step =
epoch) and conv1's kernels as one image, drawn as ``alexnet show filters`` draws them (figure 3).
Event files go to ``RUN/tensorboard``; view them with ``tensorboard --logdir RUN/tensorboard``.
Only rank 0 should make one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from alexnet.errors import UserError

SCALARS = ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error", "lr", "images_per_s")
FILTERS_TAG = "conv1_filters"
SUBDIR = "tensorboard"


def summary_writer_class():
    """torch's SummaryWriter, or a one-line UserError when the extra is not installed; training
    calls this before it builds or writes anything, so a run never fails on it half-way."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install 'alexnet[tensorboard]'") from None
    return SummaryWriter


class TensorBoardWriter:
    """Writes one run's epochs for TensorBoard.

    Args:
        run_dir: the run folder; events go to ``run_dir/tensorboard``.
        purge_step: on resume, the first epoch this process will write: TensorBoard then hides
            what an interrupted run wrote for that epoch and later ones, so no epoch shows twice.
    """

    def __init__(self, run_dir: str | Path, purge_step: int | None = None) -> None:
        SummaryWriter = summary_writer_class()
        self.log_dir = Path(run_dir) / SUBDIR
        if self.log_dir.exists() and not self.log_dir.is_dir():
            raise UserError(f"{self.log_dir} is a file, where --tensorboard writes its folder of events; move or "
                            "delete it, or train without --tensorboard")
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def log_epoch(self, line: dict, conv1_weight: torch.Tensor | None = None, towers: int = 1) -> None:
        """Write the metrics.jsonl ``line`` of an epoch (its ``epoch`` is the step) and conv1's kernels."""
        from alexnet.figures.plots import filter_image

        step = int(line["epoch"])
        for key in SCALARS:
            if key in line:
                self._writer.add_scalar(key, float(line[key]), step)
        if conv1_weight is not None:
            self._writer.add_image(FILTERS_TAG, filter_image(conv1_weight, towers=towers), step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
