"""``alexnet experiment``: figure 1 (ReLU vs tanh) and the ablation table, on a tiny data set."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.cli import main
from alexnet.data import open_store
from alexnet.data.prepare import prepare_store
from alexnet.errors import UserError
from alexnet.experiments import ablations as ablation_runs
from alexnet.experiments import figure1, runs
from alexnet.experiments.ablations import DEFAULT_VARIANTS
from alexnet.experiments.figure1 import steps_to_level
from alexnet.experiments.four_layer import FourLayerNet
from helpers import QUIET, TINY, write_image_folder


@pytest.fixture(scope="module")
def store_dir(shared_store) -> Path:
    return shared_store()


@pytest.mark.slow
def test_ablation_table_has_every_variant_with_numpy_means_and_stds(store_dir, tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({k: v for k, v in TINY.to_dict().items() if k != "epochs"}))
    out = tmp_path / "abl"
    assert main(["experiment", "ablations", str(store_dir), "--out", str(out), "--seeds", "2", "--epochs", "1",
                 "--base-config", str(base), "--quiet"]) == 0
    summary = json.loads((out / "ablations.json").read_text())
    assert [r["variant"] for r in summary["variants"]] == list(DEFAULT_VARIANTS)
    table = (out / "ablations.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    for row in summary["variants"]:
        runs = [json.loads((out / row["variant"] / f"seed-{s}" / "result.json").read_text()) for s in (0, 1)]
        assert [r["config"]["seed"] for r in runs] == [0, 1]
        for key in ("val_top1_error", "val_top5_error", "gap_top1"):
            values = np.array([r[key] for r in runs])
            assert row[key]["mean"] == pytest.approx(values.mean())
            assert row[key]["std"] == pytest.approx(values.std(ddof=1))
        for key in ("val_top1_error", "val_top5_error", "train_top1_error"):
            assert all(0 <= r[key] <= 1 for r in runs)
            assert 0 <= row[key]["mean"] <= 1
        # the Markdown row shows the same numbers, in percent
        cells = [c.strip() for c in rows[row["variant"]].split("|")[1:-1]]
        mean, std = (float(x) for x in re.findall(r"-?\d+\.\d+", cells[2]))
        assert mean == pytest.approx(100 * row["val_top1_error"]["mean"], abs=0.006)
        assert std == pytest.approx(100 * row["val_top1_error"]["std"], abs=0.006)
        full = summary["variants"][0]["val_top5_error"]["mean"]
        assert row["val_top5_error"]["minus_full"] == pytest.approx(row["val_top5_error"]["mean"] - full)
    # each variant changed exactly its switch
    configs = {v: json.loads((out / v / "seed-0" / "config.json").read_text()) for v in DEFAULT_VARIANTS}
    assert configs["no-lrn"]["lrn"] is False and configs["full"]["lrn"] is True
    assert configs["one-gpu"]["towers"] == 1 and configs["tanh"]["activation"] == "tanh"
    # the one-GPU net of section 3.2: half of the full model's kernels in conv1-4 (96 x 1/8 = 12 -> 6), conv5 kept
    assert configs["one-gpu"]["channels"] == [6, 16, 24, 24, 32] and configs["full"]["channels"] == []
    assert configs["no-pca"]["pca_lighting_std"] == 0 and configs["no-dropout"]["dropout"] == 0
    assert configs["no-overlap"]["overlapping_pool"] is False and configs["full"]["width"] == 0.125


@pytest.mark.slow
def test_interrupted_ablation_skips_finished_runs_and_resumes_the_partial_one(store_dir, tmp_path, monkeypatch):
    base = TINY.replace(epochs=2)
    real = ablation_runs.train_or_resume

    def interrupted(config, data, run_dir, **kw):
        if config.lrn is False:  # the second run stops after its first epoch
            real(config.replace(epochs=1), data, run_dir, **kw)
            raise KeyboardInterrupt
        return real(config, data, run_dir, **kw)

    monkeypatch.setattr(ablation_runs, "train_or_resume", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablation_runs.ablations(store_dir, tmp_path, base=base, seeds=1, variants=["full", "no-lrn"], **QUIET)
    finished = tmp_path / "full" / "seed-0"
    stamp = (finished / "result.json").stat().st_mtime_ns, (finished / "last.pt").stat().st_mtime_ns
    assert not (tmp_path / "no-lrn" / "seed-0" / "result.json").exists()

    calls, lines = [], []

    def spy(config, data, run_dir, **kw):
        calls.append(Path(run_dir))
        return real(config, data, run_dir, **kw)

    monkeypatch.setattr(ablation_runs, "train_or_resume", spy)
    summary = ablation_runs.ablations(store_dir, tmp_path, base=base, seeds=1, variants=["full", "no-lrn"],
                                    show_progress=False, log=lines.append)
    assert calls == [tmp_path / "no-lrn" / "seed-0"]
    assert ((finished / "result.json").stat().st_mtime_ns, (finished / "last.pt").stat().st_mtime_ns) == stamp
    assert any("full, seed 0: finished before, skipped" in line for line in lines)
    assert any("resuming" in line and "epoch 2" in line for line in lines)
    metrics = (tmp_path / "no-lrn" / "seed-0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]
    assert [r["variant"] for r in summary["variants"]] == ["full", "no-lrn"]


def test_resuming_into_another_recipe_is_a_clear_error(store_dir, tmp_path, capsys):
    runs.train_or_resume(TINY, store_dir, tmp_path / "run", **QUIET)
    with pytest.raises(UserError, match="another recipe"):
        runs.train_or_resume(TINY.replace(lrn=False), store_dir, tmp_path / "run", **QUIET)
    assert main(["experiment", "ablations", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_steps_to_level_and_same_initial_weights():
    points = [dict(step=5, train_error=0.6), dict(step=10, train_error=0.3), dict(step=15, train_error=0.2)]
    assert steps_to_level(points, 0.25) == 15 and steps_to_level(points, 0.3) == 10 and steps_to_level(points, 0.1) is None
    never = dict(error_level=0.25, epochs=3, speedup_mean=None, speedup_std=None,
                 per_seed=[dict(relu_steps=40, tanh_steps=None, speedup=None, speedup_at_least=300 / 40)])
    sentence = figure1.speedup_sentence(never)
    assert "tanh in 0 of 1" in sentence and "never reached it" in sentence and "more than 7.50x" in sentence
    torch.manual_seed(3)
    relu = FourLayerNet(1, 10, 28, "relu")
    torch.manual_seed(3)
    tanh = FourLayerNet(1, 10, 28, "tanh")
    for (name, a), (_, b) in zip(relu.state_dict().items(), tanh.state_dict().items()):
        assert torch.equal(a, b), name
    x = torch.randn(2, 1, 28, 28)
    assert relu(x).shape == (2, 10) and not torch.equal(relu(x), tanh(x))
    conv = relu.features[0]  # N(0, 1/fan_in): fan-in 25 for a 5x5 kernel on one channel
    assert conv.weight.std().item() == pytest.approx(25 ** -0.5, rel=0.35)


@pytest.mark.slow
def test_relu_vs_tanh_four_layer(store_dir, tmp_path):
    out = tmp_path / "fig1"
    assert main(["experiment", "relu-vs-tanh", str(store_dir), "--out", str(out), "--seeds", "2", "--epochs", "2",
                 "--batch-size", "8", "--lr", "0.01,0.05", "--quiet"]) == 0
    s = json.loads((out / "relu_vs_tanh.json").read_text())
    assert s["lr"]["relu"] in (0.01, 0.05) and s["lr"]["tanh"] in (0.01, 0.05)
    assert sorted((c["activation"], c["seed"]) for c in s["curves"]) == [("relu", 0), ("relu", 1), ("tanh", 0), ("tanh", 1)]
    for c in s["curves"]:
        assert all(0 <= p["train_error"] <= 1 for p in c["points"])
        assert c["points"][-1]["epoch"] == pytest.approx(2.0) or c["diverged"]
    for p in s["per_seed"]:  # the table agrees with the curves
        relu = next(c for c in s["curves"] if c["activation"] == "relu" and c["seed"] == p["seed"])
        first = next((q["step"] for q in relu["points"] if q["train_error"] <= 0.25), None)
        assert p["relu_steps"] == first
        if p["relu_steps"] and p["tanh_steps"]:
            assert p["speedup"] == pytest.approx(p["tanh_steps"] / p["relu_steps"])
    assert "tanh / ReLU" in (out / "relu_vs_tanh.md").read_text()
    assert Image.open(out / "relu_vs_tanh.png").size == (640, 440)
    # a second call keeps every finished run
    lines = []
    figure1.relu_vs_tanh(store_dir, out, seeds=2, epochs=2, lrs=(0.01, 0.05), batch_size=8,
                             show_progress=False, log=lines.append)
    assert sum("done before, kept" in line for line in lines) == 6


@pytest.mark.slow
def test_relu_vs_tanh_small_alexnet(store_dir, tmp_path):
    s = figure1.relu_vs_tanh(store_dir, tmp_path, seeds=1, epochs=2, net="alexnet", base=TINY, **QUIET)
    assert s["lr"] == {"relu": TINY.lr, "tanh": TINY.lr}
    for act in ("relu", "tanh"):
        run = tmp_path / "runs" / f"{act}-lr{TINY.lr:g}-seed0"
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        curve = next(c for c in s["curves"] if c["activation"] == act)
        assert [p["train_error"] for p in curve["points"]] == [m["train_top1_error"] for m in metrics]
        assert json.loads((run / "config.json").read_text())["activation"] == act
    steps_per_epoch = len(open_store(store_dir).split("train")) // TINY.batch_size_per_device
    assert [p["step"] for p in s["curves"][0]["points"]] == [steps_per_epoch, 2 * steps_per_epoch]


# --- a hostile user: reruns with other settings, other data, two processes, bad numbers -------------------


def _result(out: Path, variant: str = "full") -> str:
    return (out / variant / "seed-0" / "result.json").read_text()


@pytest.mark.slow
def test_rerun_with_another_lr_or_other_data_is_refused_and_keeps_the_table_true(store_dir, shared_store, tmp_path):
    out = tmp_path / "abl"
    ablation_runs.ablations(store_dir, out, base=TINY, seeds=1, variants=["full"], **QUIET)
    before = _result(out)
    assert json.loads(before)["config"]["lr"] == TINY.lr
    # training's resume takes a new lr "from here on"; an experiment's finished run must not be relabelled with it
    with pytest.raises(UserError, match=r"another recipe.*lr 0\.01 -> 0\.05"):
        ablation_runs.ablations(store_dir, out, base=TINY.replace(lr=0.05), seeds=1, variants=["full"], **QUIET)
    assert _result(out) == before
    (out / "full" / "seed-0" / "config.json").write_text("{")  # damaged: the checkpoint's recipe is compared
    with pytest.raises(UserError, match=r"another recipe.*lr 0\.01 -> 0\.05"):
        ablation_runs.ablations(store_dir, out, base=TINY.replace(lr=0.05), seeds=1, variants=["full"], **QUIET)
    # the same recipe on another store is not a "finished before" result of this one
    other = shared_store(classes=4)
    with pytest.raises(UserError, match="another store"):
        ablation_runs.ablations(other, out, base=TINY, seeds=1, variants=["full"], **QUIET)
    assert _result(out) == before
    # more epochs continue the run, as before
    lines = []
    ablation_runs.ablations(store_dir, out, base=TINY.replace(epochs=2), seeds=1, variants=["full"],
                            show_progress=False, log=lines.append)
    assert any("resuming" in line for line in lines) and json.loads(_result(out))["epochs"] == 2


def test_a_second_experiment_on_the_same_folder_stops_before_it_trains(store_dir, tmp_path):
    from alexnet.runlock import run_lock

    out = tmp_path / "shared"
    with run_lock(out, "alexnet experiment ablations"):  # another process's lock (flock is per open file)
        for call in (lambda: ablation_runs.ablations(store_dir, out, base=TINY, seeds=1, variants=["full"], **QUIET),
                     lambda: figure1.relu_vs_tanh(store_dir, out, seeds=1, epochs=1, lrs=(0.01,), batch_size=8, **QUIET)):
            with pytest.raises(UserError, match="is in use by 'alexnet experiment ablations'"):
                call()
    assert not out.exists()  # nothing was written: the lock's folder is gone with it


@pytest.mark.slow
def test_four_layer_runs_are_kept_only_for_the_same_store(tmp_path):
    def prepare(classes):
        src = tmp_path / f"src{classes}"
        write_image_folder(src, classes, per_class=16, size=36)
        prepare_store(src, tmp_path / "data", image_size=32, progress_bar=False, force=True, log=lambda s: None)

    prepare(3)
    out = tmp_path / "fig1"
    settings = dict(seeds=1, epochs=1, lrs=(0.01,), batch_size=8, show_progress=False)
    figure1.relu_vs_tanh(tmp_path / "data", out, log=lambda s: None, **settings)
    prepare(4)  # another data set prepared into the same folder
    lines = []
    s = figure1.relu_vs_tanh(tmp_path / "data", out, log=lines.append, **settings)
    assert not any("done before, kept" in line for line in lines)
    assert s["steps_per_epoch"] == len(open_store(tmp_path / "data").split("train")) // 8
    lines.clear()
    figure1.relu_vs_tanh(tmp_path / "data", out, log=lines.append, **settings)
    assert sum("done before, kept" in line for line in lines) == 2
    # a copy of the folder and of the store elsewhere keeps them too
    import shutil

    shutil.copytree(out, tmp_path / "moved" / "fig1")
    shutil.copytree(tmp_path / "data", tmp_path / "moved" / "data")
    lines.clear()
    figure1.relu_vs_tanh(tmp_path / "moved" / "data", tmp_path / "moved" / "fig1", log=lines.append, **settings)
    assert sum("done before, kept" in line for line in lines) == 2


@pytest.mark.parametrize("argv, words", [
    (["relu-vs-tanh", "{data}", "--lr", "nan"], "--lr nan"),
    (["relu-vs-tanh", "{data}", "--lr", "inf"], "--lr inf"),
    (["relu-vs-tanh", "{data}", "--error-level", "nan"], "--error-level"),
    (["relu-vs-tanh", "{data}", "--seeds", "0"], "--seeds must be at least 1"),
    (["relu-vs-tanh", "{data}", "--batch-size", "100000"], "--batch-size 100000 is more than the 36 training images"),
    (["relu-vs-tanh", "{data}", "--out", "{file}"], "is a file, not a folder"),
    (["ablations", "{data}", "--out", "{file}"], "is a file, not a folder"),
    (["ablations", "{data}", "--out", "{data}"], "holds a prepared data set; give another folder"),
    (["relu-vs-tanh", "{data}", "--out", "{run}"], "holds a training run; give another folder"),
    (["ablations", "{data}", "--set", "seed=3"], "--set seed"),
    (["ablations", "{data}", "--set", "nokey=1"], "unknown config key"),
    (["ablations", "{data}", "--base-config", "{file}"], "not valid JSON"),
])
def test_bad_experiment_arguments_end_in_one_line(store_dir, tmp_path, capsys, argv, words):
    file = tmp_path / "notes.txt"
    file.write_text("not a recipe\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    argv = [a.format(data=store_dir, file=file, run=run) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "out")]
    assert main(["experiment", *argv, *out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "out" / "runs").exists()


def test_the_builtin_data_folder_of_an_experiment_is_not_another_data_set(store_dir, tmp_path):
    import shutil

    out = tmp_path / "exp"
    shutil.copytree(store_dir, out / "data")  # a store of 3 classes where the built-in data would be
    with pytest.raises(UserError, match="holds another prepared data set .*not the built-in Fashion-MNIST"):
        ablation_runs.ablations(None, out, base=TINY, seeds=1, variants=["full"], **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["data"]
    assert open_store(out / "data").num_classes == 3  # left as it was
