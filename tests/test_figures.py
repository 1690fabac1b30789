"""Figures 3 and 4 (``alexnet show``) and the run report (``alexnet report``) on a tiny trained network."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data import open_store
from alexnet.figures.plots import TOWER_LABEL_PX
from alexnet.figures.paper import features, nearest_neighbours, nearest_training_images, spread_indices
from alexnet.trained import load_member
from alexnet.training import train
from helpers import TINY, make_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_store) -> tuple[Path, Path]:
    store = shared_store()
    run = tmp_path_factory.mktemp("fig") / "run"
    train(TINY.replace(epochs=2), store, run, show_progress=False, log=lambda s: None)
    return store, run


def test_nearest_neighbours_match_brute_force_numpy():
    rng = np.random.default_rng(0)
    base, queries = rng.normal(size=(50, 7)), rng.normal(size=(4, 7))
    batches = [(torch.from_numpy(base[s : s + 16]).float(), np.arange(s, min(s + 16, 50))) for s in range(0, 50, 16)]
    idx, dist = nearest_neighbours(torch.from_numpy(queries).float(), iter(batches), k=6)
    base32, queries32 = base.astype(np.float32).astype(np.float64), queries.astype(np.float32).astype(np.float64)
    d = np.sqrt(((queries32[:, None, :] - base32[None, :, :]) ** 2).sum(-1))
    expected = np.argsort(d, axis=1)[:, :6]
    np.testing.assert_array_equal(idx, expected)
    np.testing.assert_allclose(dist, np.take_along_axis(d, expected, axis=1), rtol=1e-9)
    # fewer candidates than k: the missing places are empty
    two = torch.tensor([[2.0] * 7, [1.0] * 7])
    idx, dist = nearest_neighbours(torch.zeros(1, 7), iter([(two, np.array([5, 9]))]), k=3)
    assert list(idx[0]) == [9, 5, -1] and np.isinf(dist[0, 2])


def test_nearest_training_image_of_a_training_image_is_itself(trained):
    store_dir, run = trained
    member = load_member(str(run / "last.pt"), torch.device("cpu"))
    split = open_store(store_dir).split("train")
    picks = np.array([0, 7, 20, len(split) - 1])
    q = features(member, torch.from_numpy(np.ascontiguousarray(split.images[picks])))
    assert q.shape == (4, member.model.fc_units)
    idx, dist = nearest_training_images(member, split, q, k=6, batch_size=5)
    np.testing.assert_array_equal(idx[:, 0], picks)
    assert np.all(dist[:, 0] <= 1e-4 * (1 + q.norm(dim=1).numpy()))
    assert np.all(np.diff(dist, axis=1) >= 0) and np.all(dist[:, 1] > dist[:, 0])
    # a deterministic, evenly spread subsample
    sub = spread_indices(len(split), 10)
    assert len(sub) == 10 and sub[0] == 0 and sub[-1] == len(split) - 1
    assert np.array_equal(sub, spread_indices(len(split), 10))
    idx, _ = nearest_training_images(member, split, q, k=3, batch_size=4, indices=sub)
    assert set(idx.ravel()) <= set(sub)


def test_show_filters_and_neighbours_write_pngs(trained, tmp_path, capsys):
    store_dir, run = trained
    assert main(["show", "filters", str(run / "best.pt"), "--out", str(tmp_path / "f.png")]) == 0
    # 12 kernels of 3x3 (width 0.125): two towers of one row of 6, enlarged 16x with 2 px gaps,
    # each under its label line
    cell = 3 * 16 + 2
    assert Image.open(tmp_path / "f.png").size == (6 * cell + 2, 2 * (TOWER_LABEL_PX + cell) + 2)
    assert main(["show", "neighbours", str(run), str(store_dir), "--images", "3", "--max-train", "20",
                 "--out", str(tmp_path / "n.png"), "--quiet"]) == 0
    assert Image.open(tmp_path / "n.png").size == (round(100 * (1.3 * 7 + 3.2)), round(100 * (1.45 * 3 + 0.3)))
    assert "6 nearest of 20 training images" in capsys.readouterr().out
    assert main(["show", "filters", str(run)]) == 0  # default: beside the checkpoint
    assert (run / "filters.png").is_file()


def test_show_never_writes_into_an_export_folder_by_default(trained, tmp_path, monkeypatch, capsys):
    store_dir, run = trained
    export = tmp_path / "exp"
    assert main(["export", str(run), "--out", str(export)]) == 0
    files = sorted(p.name for p in export.iterdir())
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    capsys.readouterr()
    assert main(["show", "filters", str(export)]) == 0
    assert "in exp-filters.png" in capsys.readouterr().out  # the output line says where
    assert main(["show", "neighbours", str(export), str(store_dir), "--images", "1", "--neighbours", "2",
                 "--max-train", "4", "--quiet"]) == 0
    assert "in exp-neighbours.png" in capsys.readouterr().out
    assert sorted(p.name for p in here.iterdir()) == ["exp-filters.png", "exp-neighbours.png"]
    assert main(["show", "filters", str(run / "best.pt"), "--out", str(tmp_path / "best.png")]) == 0  # what was exported
    assert np.array_equal(np.asarray(Image.open(here / "exp-filters.png")), np.asarray(Image.open(tmp_path / "best.png")))
    assert sorted(p.name for p in export.iterdir()) == files
    assert main(["export", str(run), "--out", str(export), "--overwrite"]) == 0  # still only an export
    # from inside the export folder, the current folder is no way out: one line, nothing written
    monkeypatch.chdir(export)
    assert main(["show", "filters", "."]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is an export folder" in err[0] and "--out" in err[0], err
    assert sorted(p.name for p in export.iterdir()) == files
    assert main(["show", "filters", ".", "--out", str(here / "f.png")]) == 0  # where the user says


def test_show_neighbours_refuses_a_checkpoint_of_another_data_set(trained, tmp_path, capsys):
    _, run = trained
    other = make_store(tmp_path, classes=4, per_class=8, seed=1)
    assert main(["show", "neighbours", str(run), str(other), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other classes" in err[0]
    assert main(["show", "filters", str(tmp_path / "nothing.pt")]) == 2
    assert "nothing.pt not found" in capsys.readouterr().err


def test_report_gathers_recipe_metrics_curves_and_evaluation(trained, tmp_path, capsys):
    store_dir, run = trained
    (run / "eval.json").write_text(json.dumps({"top1_error": 0.125, "top5_error": 0.0, "images": 12}))
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out)]) == 0
    page = out.read_text()
    images = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    assert (run / "curves.png").read_bytes() in images  # the curves, embedded
    assert any(Image.open(__import__("io").BytesIO(b)).size[0] > 0 for b in images)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for m in metrics:
        assert f"<td>{100 * m['val_top1_error']:.2f}</td>" in page
        assert f"<td>{100 * m['train_top1_error']:.2f}</td>" in page
    # values that differ from the paper's recipe are marked, the others not
    assert '<tr class="changed"><td>width</td><td>0.125</td><td>1.0</td>' in page
    assert "<tr><td>momentum</td><td>0.9</td><td>0.9</td>" in page
    assert "eval.json" in page and "12.50%" in page
    assert "conv1 kernels" in page
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "no-such-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
