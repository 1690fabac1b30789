"""TensorBoard: the event files, read back with tensorboard's own reader, hold the metrics lines and conv1's kernels."""

from __future__ import annotations

import importlib.util
import io
import sys

import numpy as np
import pytest
import torch

from alexnet.errors import UserError

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
needs_tensorboard = pytest.mark.skipif(not HAS_TENSORBOARD, reason="needs the 'tensorboard' extra")


def lines(epochs: int) -> list[dict]:
    return [dict(epoch=e, train_loss=2.3 / e, train_top1_error=0.9 / e, val_top1_error=0.8 / e, val_top5_error=0.5 / e,
                 lr=0.01 / 10 ** (e // 2), images_per_s=1000.0 + e, epoch_seconds=3.0, global_step=10 * e)
            for e in range(1, epochs + 1)]


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@needs_tensorboard
def test_event_files_hold_the_metrics_lines_and_the_filter_image(tmp_path):
    from PIL import Image

    from alexnet.figures.plots import filter_image
    from alexnet.tensorboard import SCALARS, TensorBoardWriter

    weights = [torch.randn(12, 3, 5, 5) for _ in range(2)]
    writer = TensorBoardWriter(tmp_path)
    for line, w in zip(lines(2), weights):
        writer.log_epoch(line, w, towers=2)
    writer.close()

    acc = read_events(tmp_path / "tensorboard")
    assert set(SCALARS) <= set(acc.Tags()["scalars"])
    for key in SCALARS:
        events = acc.Scalars(key)
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [line[key] for line in lines(2)], rtol=1e-6)
    assert "epoch_seconds" not in acc.Tags()["scalars"]  # only the listed keys
    images = acc.Images("conv1_filters")
    assert [im.step for im in images] == [1, 2]
    for im, w in zip(images, weights):
        png = np.asarray(Image.open(io.BytesIO(im.encoded_image_string)).convert("RGB"))
        np.testing.assert_array_equal(png, filter_image(w, towers=2))


@needs_tensorboard
def test_resume_hides_what_an_interrupted_run_wrote_after_it(tmp_path):
    from alexnet.tensorboard import TensorBoardWriter

    first = TensorBoardWriter(tmp_path)
    for line in lines(3):
        first.log_epoch(line)
    first.close()
    again = TensorBoardWriter(tmp_path, purge_step=3)  # resumed at epoch 3: its first value is gone
    again.log_epoch(dict(lines(3)[2], train_loss=9.0))
    again.close()
    events = read_events(tmp_path / "tensorboard").Scalars("train_loss")
    assert [(e.step, round(e.value, 4)) for e in events] == [(1, 2.3), (2, 1.15), (3, 9.0)]


def test_missing_extra_is_one_clear_line(tmp_path, monkeypatch):
    from alexnet.tensorboard import TensorBoardWriter

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import fails as when the package is absent
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard.writer", raising=False)
    with pytest.raises(UserError, match=r"pip install 'alexnet\[tensorboard\]'"):
        TensorBoardWriter(tmp_path)


def test_train_without_the_extra_stops_before_touching_the_run(tmp_path, monkeypatch, capsys, shared_store):
    """``alexnet train --tensorboard`` without the package: one line, exit 2, no run folder, nothing built."""
    from alexnet.cli import main
    from alexnet.training import loop

    store = shared_store(per_class=4)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard.writer", raising=False)
    monkeypatch.setattr(loop, "build_model", lambda *a, **k: pytest.fail("built a network before refusing"))
    code = main(["train", str(store), "--out", str(tmp_path / "run"), "--stem", "small", "--width", "0.125",
                 "--crop-size", "28", "--batch-size-per-device", "4", "--tensorboard"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "pip install 'alexnet[tensorboard]'" in err, err
    assert not (tmp_path / "run").exists()
