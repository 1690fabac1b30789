"""Outputs: every figure and page is written atomically, names that are not valid UTF-8 are drawn
with U+FFFD, plotting needs no display and no process-wide backend, and predict reads folders
recursively and tells a missing file from a corrupt one and a NaN from a prediction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.display import printable
from alexnet.model import AlexNet
from alexnet.figures.plots import plot_curves, save_filters
from alexnet.figures.report import build_report

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(num_classes=4, stem="small", input_size=28, width=0.125, in_channels=3)
BAD_UTF8 = os.fsdecode(b"caf\xe9")  # Latin-1 'café': not valid UTF-8, a surrogate escape in Python
METRICS = [dict(epoch=e, train_loss=2.0 / e, train_top1_error=0.5 / e, val_top1_error=0.6 / e, val_top5_error=0.1 / e,
                lr=0.01) for e in (1, 2)]


def _checkpoint(path: Path, classes=("ant", "bee", "cat", "dog"), fc8_scale: float | None = None) -> Path:
    model = AlexNet(**SMALL)
    state = model.state_dict()
    if fc8_scale is not None:
        state["classifier.fc8.weight"].fill_(fc8_scale)
    checkpoint.save(path, dict(model_args=dict(SMALL), model=state, config=dict(crop_size=28, subtract_mean=True, input_scale=1.0),
                               data=dict(classes=list(classes), image_size=32, channels=3, mean_image=torch.full((32, 32, 3), 120.0))))
    return path


def _disk_full(monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)


def test_failed_writes_keep_the_previous_figure_and_report(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 2}))
    curves = plot_curves(METRICS, run / "curves.png")
    filters = save_filters(torch.randn(12, 3, 3, 3), run / "filters.png", towers=2)
    report = build_report(run)
    before = {p: p.read_bytes() for p in (curves, filters, report)}
    assert Image.open(curves).format == "PNG" and Image.open(filters).format == "PNG"
    _disk_full(monkeypatch)
    for write in (lambda: plot_curves(METRICS[:1], curves), lambda: save_filters(torch.randn(12, 3, 3, 3), filters),
                  lambda: build_report(run)):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert {p: p.read_bytes() for p in before} == before
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "curves.png", "filters.png", "report.html"]


def test_the_report_shows_the_run_log_without_its_epoch_lines(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 2}))
    (run / "log.txt").write_bytes(
        b"2026-12-02 10:00:00 alexnet 0.1.0: new run on /data\n"
        b"2026-12-02 10:00:01 epoch 1: train loss 2.0000, train error 50.00%\n"
        b"2026-12-02 10:00:02 warning: the loss <sits> at ln(classes) \xff\n"
        b"2026-12-02 10:00:03 stopped at epoch 2, step 3 (global step 9)\n")
    page = build_report(run).read_text(encoding="utf-8")
    log = page.split("<h2>Run log</h2>")[1].split("</pre>")[0]
    assert "new run on /data" in log and "warning: the loss &lt;sits&gt; at ln(classes) \ufffd" in log
    assert "stopped at epoch 2" in log and "train loss" not in log


def test_names_that_are_not_utf8_are_shown_with_replacement_characters(tmp_path):
    assert printable(BAD_UTF8) == "caf\ufffd" and printable("café") == "café"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"epochs": 1}))
    _checkpoint(run / "last.pt", classes=(BAD_UTF8, "bee", "cat", "dog"))
    page = build_report(run).read_text(encoding="utf-8")  # valid UTF-8 throughout
    assert "caf\ufffd" in page
    from alexnet.figures.paper import plot_neighbours

    image = np.zeros((8, 8, 3), np.uint8)
    rows = [dict(image=image, label=0, top=[(0, 0.7), (1, 0.3)], neighbours=[(image, 0, 1.5)])]
    out = plot_neighbours(rows, [BAD_UTF8, "bee"], tmp_path / "neighbours.png")
    assert Image.open(out).size[0] > 0


@pytest.mark.slow
def test_plotting_needs_no_display_and_sets_no_backend(tmp_path):
    """A library user on a machine without a display: the plots draw, pyplot is never imported,
    and matplotlib's backend stays whatever the user had (here the default, chosen lazily)."""
    code = ("import sys, matplotlib; from alexnet.figures.plots import plot_curves; "
            f"plot_curves({METRICS!r}, sys.argv[1]); "
            "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot', "
            "matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["no", "pyplot", "None"]
    assert Image.open(tmp_path / "c.png").format == "PNG"


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = [folder / "a.png", folder / "sub" / "b.jpg", folder / "sub" / "deeper" / "c.PNG",
             folder / os.fsdecode(b"\xff-latin.png")]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(p, "PNG" if p.suffix.lower() == ".png" else "JPEG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(paths[0].read_bytes())
    return paths


def test_predict_on_a_folder_predicts_every_image_in_it_recursively(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "c.pt")
    expected = _images(tmp_path / "photos")
    assert main(["predict", str(ckpt), str(tmp_path / "photos"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(r["image"] for r in result["images"]) == sorted(map(str, expected))
    assert all(len(r["top"]) == 4 for r in result["images"])
    assert main(["predict", str(ckpt), str(tmp_path / "photos")]) == 0
    out = capsys.readouterr().out
    assert "\ufffd-latin.png" in out  # printed, not a UnicodeEncodeError


def test_predict_says_not_found_and_never_prints_a_nan_as_a_prediction(tmp_path, capsys):
    photo = _images(tmp_path / "photos")[0]
    ckpt = _checkpoint(tmp_path / "c.pt")
    assert main(["predict", str(ckpt), str(tmp_path / "missing.jpg"), str(photo)]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'missing.jpg'}: skipped: not found" in out and "corrupt" not in out
    overflowing = _checkpoint(tmp_path / "huge.pt", fc8_scale=3e38)  # finite weights, infinite logits
    assert main(["predict", str(overflowing), str(photo)]) == 1
    out = capsys.readouterr().out
    assert "NaN or infinite" in out and "%" not in out and "nan" not in out.lower().replace("nan or", "")
