"""Train, evaluate, predict end to end (section 5 and the testing of section 4.1)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data import open_store
from alexnet.data.loader import Loader
from alexnet.evaluate import evaluate, probabilities
from alexnet.trained import load_member
from alexnet.training import LossWatch, train

SMALL = dict(stem="small", width=0.125, crop_size=28, batch_size_per_device=16, loader_workers=1, epochs=2)


@pytest.fixture(scope="module")
def store_dir(shared_store) -> Path:
    return shared_store(size=40)


@pytest.mark.slow
def test_cli_end_to_end(store_dir, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--stem", "small", "--width", "0.125", "--crop-size", "28", "--batch-size-per-device", "16",
             "--epochs", "2", "--loader-workers", "1", "--cpu-threads", "2", "--quiet"]
    try:
        assert main(["train", str(store_dir), "--out", str(run), *flags]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # as conftest.py set it
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(printed) == 2 and "; 1 epoch left, about " in printed[0] and "left" not in printed[1]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for key in ("train_loss", "train_top1_error", "val_top1_error", "val_top5_error", "lr", "images_per_s"):
        assert all(math.isfinite(m[key]) for m in lines), key
    saved = json.loads((run / "config.json").read_text())
    assert saved["width"] == 0.125 and saved["momentum"] == 0.9
    assert (run / "curves.png").stat().st_size > 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "last.pt"), str(store_dir), "--ten-crop", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["images"] == len(open_store(store_dir).split("val"))
    assert 0 <= result["top1_error"] <= 1 and "top5_error" not in result  # 3 classes: all are in the top five
    image = next((store_dir.parent / "src" / "val" / "class_1").glob("*.png"))
    assert main(["predict", str(run), str(image), "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["images"][0]
    probs = [t["probability"] for t in pred["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4


def test_unknown_flag_and_existing_run_are_clear_errors(store_dir, tmp_path, capsys):
    assert main(["train", str(store_dir), "--out", str(tmp_path / "r"), "--no-such-flag"]) == 2
    run = tmp_path / "r2"
    args = ["train", str(store_dir), "--out", str(run), "--stem", "small", "--width", "0.125", "--crop-size", "28",
            "--epochs", "1", "--batch-size-per-device", "16", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow  # a learning check
def test_paper_recipe_reaches_zero_training_error(store_dir, tmp_path):
    """PaperSGD, momentum 0.9, weight decay 5e-4, dropout 0.5: a small net fits a tiny set exactly."""
    config = TrainConfig(**{**SMALL, "epochs": 25, "batch_size_per_device": 8, "init": "he", "input_scale": 1 / 64,
                            "schedule": "milestones", "milestones_epochs": (20,)})
    train(config, store_dir, tmp_path / "run", show_progress=False, log=lambda s: None)
    member = load_member(str(tmp_path / "run" / "last.pt"), torch.device("cpu"))
    loader = Loader(open_store(store_dir).split("train"), 64, shuffle=False, seed=0, drop_last=False)
    loader.set_epoch(0)
    assert evaluate([member], loader)["top1_error"] == 0.0


@pytest.mark.slow
def test_resume_from_epoch_checkpoint_matches_uninterrupted(store_dir, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 3})
    quiet = dict(show_progress=False, log=lambda s: None)
    train(config, store_dir, tmp_path / "a", **quiet)
    train(config.replace(epochs=1), store_dir, tmp_path / "b", **quiet)
    train(config, store_dir, tmp_path / "b", resume=True, **quiet)
    a = checkpoint.load(tmp_path / "a" / "last.pt")
    b = checkpoint.load(tmp_path / "b" / "last.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    lines_a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    lines_b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 3


@pytest.mark.slow
def test_lr_given_on_resume_replaces_the_checkpoints_rate(store_dir, tmp_path):
    config = TrainConfig(**{**SMALL, "epochs": 1})
    train(config, store_dir, tmp_path / "r", show_progress=False, log=lambda s: None)
    said = []
    train(config.replace(epochs=2, lr=0.001), store_dir, tmp_path / "r", resume=True, show_progress=False, log=said.append)
    assert any("0.001 from --lr replaces the checkpoint's 0.01" in line for line in said), said
    # the new rate is the recipe now: a plain resume keeps it
    said.clear()
    metrics = train(config.replace(epochs=3, lr=0.001), store_dir, tmp_path / "r", resume=True, show_progress=False,
                    log=said.append)
    assert [m["lr"] for m in metrics] == [0.01, 0.001, 0.001]
    assert not any("replaces" in line for line in said)


def _log_lines(run: Path) -> list[str]:
    """log.txt's lines without their times (each starts 'YYYY-MM-DD HH:MM:SS ')."""
    lines = (run / "log.txt").read_text().splitlines()
    assert all(len(line) > 20 and line[4] == line[7] == "-" and line[13] == line[16] == ":" for line in lines), lines
    return [line[20:] for line in lines]


def test_log_txt_keeps_what_each_start_printed_and_how_it_ended(store_dir, tmp_path):
    """log.txt holds every line a run printed, with the time, over its starts and resumes, and how
    each ended; a start refused before the run writes anything (a resume that changes the recipe)
    adds nothing."""
    run, said = tmp_path / "run", []
    config = TrainConfig(**{**SMALL, "epochs": 1})
    train(config, store_dir, run, show_progress=False, log=said.append)
    first = _log_lines(run)
    assert first[0].startswith("alexnet ") and first[0].endswith(f": new run on {store_dir}")
    assert first[1:] == said + ["finished: 1 epoch"]
    assert first[1].startswith("network: ") and first[2].startswith("epoch 1: train loss")
    with pytest.raises(Exception, match="towers"):
        train(config.replace(epochs=2, towers=1), store_dir, run, resume=True, show_progress=False, log=said.append)
    assert _log_lines(run) == first
    with pytest.raises(ValueError, match="broken loader"):
        with pytest.MonkeyPatch.context() as m:
            m.setattr("alexnet.training.loop.device_batches", _broken_batches)
            train(config.replace(epochs=2), store_dir, run, resume=True, show_progress=False, log=said.append)
    lines = _log_lines(run)
    assert lines[:len(first)] == first
    assert lines[len(first)].endswith(": resume on " + str(store_dir))
    assert lines[-1] == "failed: ValueError: broken loader"
    assert any(line.startswith("resuming ") for line in lines[len(first):])


@pytest.mark.parametrize("log_txt", ["a folder", "a full disk"])
def test_a_log_txt_that_cannot_be_written_is_said_once_and_the_run_goes_on(store_dir, tmp_path, log_txt):
    run, said = tmp_path / "run", []
    run.mkdir()
    if log_txt == "a folder":
        (run / "log.txt").mkdir()
    else:
        if not os.path.exists("/dev/full"):
            pytest.skip("no /dev/full here")
        (run / "log.txt").symlink_to("/dev/full")  # every write fails with ENOSPC
    metrics = train(TrainConfig(**{**SMALL, "epochs": 1}), store_dir, run, show_progress=False, log=said.append)
    assert [m["epoch"] for m in metrics] == [1]
    warnings = [line for line in said if "log.txt" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "the run goes on without it" in warnings[0]
    assert ("Is a directory" if log_txt == "a folder" else "No space left") in warnings[0], warnings


@pytest.mark.parametrize("epochs, seconds_each, said", [
    (0, 5.0, ""), (2, 30.0, "; 2 epochs left, about 60 s"), (1, 600.0, "; 1 epoch left, about 10 min"),
    (87, 210.0, "; 87 epochs left, about 5.1 h")])
def test_time_left_at_the_pace_of_the_epochs_so_far(epochs, seconds_each, said):
    from alexnet.training.loop import _time_left

    assert _time_left(epochs, seconds_each) == said


def _broken_batches(*args, **kwargs):
    raise ValueError("broken loader\nsecond line")


# The paper's init at lr 1e-7 sits at ln(classes); batch 2 gives the watch's 100 steps of patience in 7 epochs.
AT_CHANCE = {**SMALL, "epochs": 7, "batch_size_per_device": 2, "lr": 1e-7, "dropout": 0.0, "flip": False,
             "pca_lighting_std": 0.0}


@pytest.mark.slow
def test_warnings_above_the_progress_bar_are_kept_in_log_txt(store_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("alexnet.training.loop.on_terminal", lambda: True)  # draw the bar, as on a terminal
    train(TrainConfig(**AT_CHANCE), store_dir, tmp_path / "run", show_progress=True, log=lambda s: None)
    assert any("ln(classes)" in line for line in _log_lines(tmp_path / "run"))


def _views_by_hand(image: np.ndarray, mean: np.ndarray, crop: int, scale: float) -> list[np.ndarray]:
    """The ten crops of section 4.1 cut with plain slicing: corners, centre, then reflections."""
    s = image.shape[0]
    centred = (image.astype(np.float32) - mean) * scale
    c = (s - crop) // 2
    corners = [(0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), (c, c)]
    views = [centred[y : y + crop, x : x + crop] for y, x in corners]
    views += [v[:, ::-1] for v in views]
    return [np.ascontiguousarray(v.transpose(2, 0, 1)) for v in views]


def test_ten_crop_is_mean_of_ten_softmaxes_by_hand(store_dir, tmp_path):
    train(TrainConfig(**{**SMALL, "epochs": 1}), store_dir, tmp_path / "run", show_progress=False, log=lambda s: None)
    member = load_member(str(tmp_path / "run" / "last.pt"), torch.device("cpu"))
    store = open_store(store_dir)
    images = np.array(store.split("val").images[:4])  # a writable copy of the memory map
    got = probabilities([member], torch.from_numpy(images), ten_crop=True)
    for n, image in enumerate(images):
        views = torch.from_numpy(np.stack(_views_by_hand(image, store.mean_image, 28, 1.0)))
        with torch.no_grad():
            expected = torch.softmax(member.model(views), dim=1).mean(0)
        torch.testing.assert_close(got[n], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_ensemble_is_mean_of_members_softmax(store_dir, tmp_path):
    quiet = dict(show_progress=False, log=lambda s: None)
    for seed in (1, 2):
        train(TrainConfig(**{**SMALL, "epochs": 1, "seed": seed}), store_dir, tmp_path / f"r{seed}", **quiet)
    members = [load_member(str(tmp_path / f"r{s}" / "last.pt"), torch.device("cpu")) for s in (1, 2)]
    images = torch.from_numpy(np.array(open_store(store_dir).split("val").images[:6]))  # a copy: the store is read-only
    each = [probabilities([m], images, ten_crop=False) for m in members]
    both = probabilities(members, images, ten_crop=False)
    torch.testing.assert_close(both, (each[0] + each[1]) / 2)
    assert not torch.allclose(each[0], each[1])


def test_stall_watch_fires_on_chance_loss_only():
    chance = math.log(10)
    watch = LossWatch(10, patience_steps=100)
    assert not any(watch.observe(step, chance + 0.01) for step in range(0, 100, 10))
    assert watch.observe(100, chance)
    interrupted = LossWatch(10, patience_steps=100)
    assert not any(interrupted.observe(step, chance) for step in range(0, 60, 10))
    assert not interrupted.observe(60, chance * 1.2)  # progress resets the count
    assert not any(interrupted.observe(step, chance) for step in range(70, 160, 10))
    assert interrupted.observe(170, chance)
    learning = LossWatch(10, patience_steps=100)
    assert not any(learning.observe(step, 1.2) for step in range(0, 300, 10))


@pytest.mark.slow
def test_paper_init_stall_is_reported(store_dir, tmp_path):
    """The trap of PAPER.md: N(0, 0.01) weights, biases 1, raw pixels and a tiny lr sit at ln(C)."""
    messages = []
    train(TrainConfig(**AT_CHANCE), store_dir, tmp_path / "run", show_progress=False, log=messages.append)
    assert sum("ln(classes)" in m and "--init he" in m for m in messages) == 1  # said once


def test_the_automatic_loader_threads_feed_a_gpu_from_a_jpeg_store(monkeypatch):
    """-1 (the default): 4 threads, but a JPEG store on a GPU decodes on every core of this process's share but one."""
    from alexnet.data import loader as inputs

    monkeypatch.setattr(inputs, "available_cores", lambda: 16)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert inputs.loader_threads(-1, "jpeg", cuda) == 15
    assert inputs.loader_threads(-1, "jpeg", cuda, processes_per_node=8) == 1
    assert inputs.loader_threads(-1, "jpeg", cuda, processes_per_node=4) == 3
    assert inputs.loader_threads(-1, "raw", cuda) == inputs.loader_threads(-1, "jpeg", cpu) == 4
    assert inputs.loader_threads(2, "jpeg", cuda) == 2 and inputs.loader_threads(0, "raw", cpu) == 0
