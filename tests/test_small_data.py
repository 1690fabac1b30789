"""A newcomer's small data set: the recipe ``alexnet train`` fits to it, the lines that say what is
wrong (a diverging loss, a stall at chance) and what comes next, and quiet output in a log file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from alexnet.builtin import BUILTIN_RECIPE
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.small_data import is_small, small_data_recipe
from alexnet.training import LossWatch, train
from helpers import QUIET, make_tree

QUICK = ["--epochs", "1", "--max-steps-per-epoch", "2", "--loader-workers", "0"]


@pytest.fixture(scope="module")
def store(shared_store) -> Path:
    return shared_store(per_class=12)  # 3 classes of 32 px images: small in both ways


# Written by hand from the rules in alexnet/small_data.py: batch the power of two of about 1/256 of the
# images (8 to 128), lr 0.01 per 32 images, epochs round(6000 / steps per epoch) within 16..90,
# milestones at 60% and 85% of them; crops 7/8 of the image, the paper's stem (and a quarter of its width)
# where the crops are large enough for it (64 px), else conv1 3x3 stride 1 (and an eighth).
@pytest.mark.parametrize("images, size, expected", [
    (12000, 32, dict(stem="small", width=0.125, crop_size=28, batch_size_per_device=32, lr=0.01, epochs=16,
                     milestones_epochs=(10, 14))),
    (54, 256, dict(stem="paper", width=0.25, crop_size=224, batch_size_per_device=8, lr=0.0025, epochs=90,
                   milestones_epochs=(54, 76))),
    (5000, 128, dict(stem="paper", width=0.25, crop_size=112, batch_size_per_device=16, lr=0.005, epochs=19,
                     milestones_epochs=(11, 16))),
    (90000, 64, dict(stem="small", width=0.125, crop_size=56, batch_size_per_device=128, lr=0.04, epochs=16,
                     milestones_epochs=(10, 14))),
    (20000, 80, dict(stem="paper", width=0.25, crop_size=70, batch_size_per_device=64, lr=0.02, epochs=19,
                     milestones_epochs=(11, 16))),
])
def test_the_recipe_fits_the_data_as_written(images, size, expected):
    recipe = small_data_recipe(images, size)
    assert {k: recipe[k] for k in expected} == expected
    assert recipe["init"] == "he" and recipe["input_scale"] == 1 / 64 and recipe["schedule"] == "milestones"
    TrainConfig().replace(**recipe)  # a valid recipe


def test_given_batch_and_epochs_are_kept_and_the_rest_fitted_around_them():
    recipe = small_data_recipe(54, 256, batch=16, epochs=40)
    assert (recipe["batch_size_per_device"], recipe["lr"], recipe["epochs"], recipe["milestones_epochs"]) == \
        (16, 0.005, 40, (24, 34))
    assert small_data_recipe(54, 256, epochs=1)["milestones_epochs"] == (1,)  # no milestone listed twice


def test_imagenet_keeps_the_papers_recipe_and_the_demo_is_the_small_data_recipe():
    assert not is_small(1_281_167, 256) and is_small(99_999, 256) and is_small(1_281_167, 64)
    assert BUILTIN_RECIPE == TrainConfig().replace(**small_data_recipe(12000, 32), loader_workers=1)


def test_train_fits_the_recipe_to_a_small_store_says_so_and_records_it(store, tmp_path, capsys):
    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--quiet", *QUICK]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("recipe: small data (") and "--recipe paper" in out[0]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    images = len(json.loads((store / "manifest.json").read_text())["splits"]["train"]["labels"]) \
        if "labels" in json.loads((store / "manifest.json").read_text())["splits"]["train"] else None
    fitted = small_data_recipe(images or 30, 32, epochs=1)
    assert saved["recipe"] == "small" and saved["init"] == "he" and saved["stem"] == "small"
    assert saved["crop_size"] == 28 and saved["batch_size_per_device"] == fitted["batch_size_per_device"] == 8
    assert "recipe: small data" in (tmp_path / "run" / "log.txt").read_text()


def test_what_the_user_gives_wins_and_the_lr_follows_a_given_batch(store, tmp_path, capsys):
    assert main(["train", str(store), "--out", str(tmp_path / "a"), "--quiet", "--lr", "0.5", *QUICK]) == 0
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    assert a["lr"] == 0.5 and a["recipe"] == "small" and a["init"] == "he"
    assert main(["train", str(store), "--out", str(tmp_path / "b"), "--quiet", "--batch-size-per-device", "4",
                 *QUICK]) == 0
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (b["batch_size_per_device"], b["lr"]) == (4, 0.01 * 4 / 32)
    (tmp_path / "c.json").write_text(json.dumps({"init": "paper"}))
    assert main(["train", str(store), "--out", str(tmp_path / "c"), "--quiet", "--config", str(tmp_path / "c.json"),
                 *QUICK]) == 0
    c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert c["init"] == "paper" and c["recipe"] == "small"


def test_recipe_paper_forces_the_papers_recipe(store, tmp_path, capsys):
    # the paper's 224 px crops do not fit 32 px images: the paper's recipe it is, refused in one line
    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--recipe", "paper", *QUICK]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--crop-size 224 is larger than the prepared images (32 px)" in err[0]
    assert main(["train", str(store), "--out", str(tmp_path / "run"), "--recipe", "paper", "--stem", "small",
                 "--crop-size", "28", "--width", "0.125", "--batch-size-per-device", "8", "--quiet", *QUICK]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["recipe"] == "paper" and saved["init"] == "paper" and saved["lr"] == 0.01
    assert not capsys.readouterr().out.startswith("recipe:")


def test_a_run_ends_with_what_comes_next(store, tmp_path, capsys):
    run = tmp_path / "my run"
    assert main(["train", str(store), "--out", str(run), "--quiet", *QUICK]) == 0
    lines = capsys.readouterr().out.splitlines()
    nxt = [line.strip() for line in lines[lines.index(next(x for x in lines if x.startswith("next:"))):]]
    assert nxt[0] == f"next: alexnet evaluate '{run / 'best.pt'}' {store} --ten-crop"
    assert any(x.startswith(f"alexnet predict '{run / 'best.pt'}' ") for x in nxt)
    assert f"alexnet export '{run / 'best.pt'}' --out 'exported/my run'" in nxt
    assert main(["evaluate", str(run / "best.pt"), str(store), "--ten-crop"]) == 0  # it works as printed


def test_prepare_ends_with_the_train_command_and_says_the_data_set_is_small(tmp_path, capsys):
    src = make_tree(tmp_path / "photos", per_class=6)  # 2 classes of 6 + 2 images of 16..39 px, upscaled to 48
    assert main(["prepare", str(src), str(tmp_path / "data"), "--image-size", "48", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    upscaled = [line for line in out if "were upscaled" in line]
    assert len(upscaled) == 1 and upscaled[0].startswith("note: 16 images were smaller than 48 px")
    assert any(line.startswith("note: 12 training images is a small data set") for line in out)
    assert "note: 4 validation images: each is 25 points of the validation error; a val/ folder with more" \
        in "\n".join(out)
    assert out[-1] == f"next: alexnet train {tmp_path / 'data'} --out runs/data"


def test_a_diverging_loss_is_named_once_with_what_to_change(store, tmp_path, monkeypatch):
    watch = LossWatch(3, patience_steps=100, config=TrainConfig(lr=0.02))
    chance = math.log(3)
    assert not watch.diverging(chance) and not watch.diverging(chance + 0.9) and watch.diverging(chance + 1.1)
    assert LossWatch(1000, 100).diverging(2 * math.log(1000) + 0.1) and not LossWatch(1000, 100).diverging(12)
    message = watch.diverging_message(13.2)
    assert "climbed to 13.20" in message and "diverging" in message and "--lr 0.002" in message
    assert "--init he --input-scale 0.015625" in message  # the paper's init: that first
    he = LossWatch(3, 100, config=TrainConfig(init="he", input_scale=1 / 64, lr=0.01)).diverging_message(9.0)
    assert "--lr 0.001" in he and "--init he" not in he
    monkeypatch.setattr(LossWatch, "diverging", lambda self, loss: True)
    config = TrainConfig(stem="small", width=0.125, crop_size=28, batch_size_per_device=4, epochs=2,
                         loader_workers=0)
    train(config, store, tmp_path / "run", **QUIET)
    said = [line for line in (tmp_path / "run" / "log.txt").read_text().splitlines() if "diverging" in line]
    assert len(said) == 1


def test_no_progress_bar_redraws_when_the_output_is_not_a_terminal(store, tmp_path, capsys):
    assert main(["train", str(store), "--out", str(tmp_path / "run"), *QUICK]) == 0  # no --quiet
    out, err = capsys.readouterr()
    assert "\r" not in err and "\r" not in out and "epoch 1:" in out


def test_the_report_of_a_three_class_run_has_no_top5_no_second_kernel_figure_and_no_absolute_path(store, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(store), "--out", str(run), "--quiet", *QUICK]) == 0
    assert main(["show", "filters", str(run)]) == 0  # filters.png in the run folder
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "top-5" not in page and str(tmp_path) not in page
    assert page.count("<img") == 2 and "<h2>filters.png</h2>" not in page  # the curves and the kernels, once each
    assert page.index("Training curves") < page.index("Recipe")


def test_recipe_small_fits_a_store_of_any_size_and_a_large_store_keeps_the_papers(store, tmp_path, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr("alexnet.small_data.PAPER_SIZED_IMAGES", 10)  # this store now counts as large
    monkeypatch.setattr("alexnet.small_data.PAPER_CROP", 16)
    assert main(["train", str(store), "--out", str(tmp_path / "paper"), *QUICK]) == 2  # the paper's 224 px crops
    assert "--crop-size 224 is larger" in capsys.readouterr().err
    assert main(["train", str(store), "--out", str(tmp_path / "small"), "--recipe", "small", "--quiet", *QUICK]) == 0
    saved = json.loads((tmp_path / "small" / "config.json").read_text())
    assert saved["recipe"] == "small" and saved["crop_size"] == 28 and saved["init"] == "he"


def test_a_network_that_memorised_its_training_images_is_named_at_the_end():
    watch = LossWatch(3, 100)
    line = lambda train, val: dict(train_top1_error=train, val_top1_error=val)  # noqa: E731
    said = watch.memorised([line(0.6, 0.7), line(0.1, 0.8), line(0.05, 0.67)], 6)
    assert said.startswith("note: the network fits the training images (training error 5%) but did no better than "
                           "chance (67%) on the 6 validation images")
    assert watch.memorised([line(0.6, 0.7), line(0.05, 0.5)], 6) is None  # it learnt something once
    assert watch.memorised([line(0.6, 0.7), line(0.5, 0.7)], 6) is None  # it fits nothing either: other lines say so
