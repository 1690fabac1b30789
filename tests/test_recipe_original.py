"""``--recipe original``: the authors' released recipe, each element its own key, against the configs.

The expected values below are read off layers-145.cfg / layer-params-145.cfg / convdata.py (and the
run's log at the end of layer-params-145.cfg and layer-params-145-2010.cfg), written out here by
hand rather than imported.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from alexnet import config as cfg
from alexnet.commands.train import add_recipe_flags
from alexnet.config import TrainConfig, from_dict
from alexnet.lrn import LocalResponseNorm, SpatialResponseNorm
from helpers import QUIET, TINY

# Each element of the released recipe and its value; docs/recipe.md's table lists the same.
RELEASED = dict(
    lrn_convention="cuda-convnet",  # cmrnorm: scale / size, minDiv = 2
    lrn_before_relu=True,  # rnorm1 takes conv1 (no neuron); the ReLU comes with pool1
    cnorm2=True,  # rnorm after rnorm2: size 5, scale 0.001, pow 0.75
    init="original",  # initW 0.03 in conv3-conv5
    fc8_bias_zero=True,  # fc1000 has no initB
    param_groups="cuda-convnet",  # epsB 0.02 fixed while epsW falls; biases without decay
    dropout_style="paper",  # hs layers: unscaled while training
    pca_scale="sqrt",  # pca_vecs . (randn * stdevs) * 0.1
    lighting_shrink=True,  # cropped /= 1 + color_noise_coeff
    mean_centre_patch=True,  # data_mean_crop: the centre patch of data_mean, subtracted from every crop
    crop_chunk_images=32,  # crop_chunk = 32: one crop position and reflection per 32 images
    epochs=91,  # log: "epoch 91: killed"
    schedule="milestones",  # log: epsW set by hand
    milestones_epochs=(25, 51, 79),  # log: epsW 0.01 -> 0.001 at 25, 0.0001 at 51, 0.00001 at 79
    lighting_off_last_epochs=24,  # log: colour noise 0 after epoch 67 of 91
    conv1_lr_tenth_last_epochs=24,  # log: conv1's epsW 0.00001 after epoch 67 (the others' 0.0001)
    freeze_conv1_last_epochs=19,  # log: conv1's epsW 0 after epoch 72
)


def _parse(argv: list[str], base: TrainConfig | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_recipe_flags(parser)
    return cfg.from_args(parser.parse_args(argv), base)


def test_every_element_is_visible_in_the_resolved_config():
    config = _parse(["--recipe", "original"])
    assert config.recipe == "original"
    assert {k: getattr(config, k) for k in RELEASED} == RELEASED
    saved = config.to_dict()  # what config.json holds
    assert {k: saved[k] for k in RELEASED} == RELEASED
    assert from_dict(json.loads(json.dumps(saved))) == config  # and it reads back as the same recipe
    # the paper's recipe is still the default
    paper = TrainConfig()
    assert paper.recipe == "paper" and all(getattr(paper, k) != v for k, v in RELEASED.items()
                                           if k not in ("dropout_style", "pca_scale", "fc8_bias_zero"))


def test_each_element_is_also_its_own_flag_and_flags_given_win(tmp_path):
    argv = ["--lrn-convention", "cuda-convnet", "--lrn-before-relu", "--cnorm2", "--init", "original",
            "--fc8-bias-zero", "--param-groups", "cuda-convnet", "--dropout-style", "paper", "--pca-scale", "sqrt",
            "--lighting-shrink", "--lighting-off-last-epochs", "24", "--freeze-conv1-last-epochs", "19",
            "--mean-centre-patch", "--crop-chunk-images", "32", "--epochs", "91", "--schedule", "milestones",
            "--milestones-epochs", "25,51,79", "--conv1-lr-tenth-last-epochs", "24"]
    by_flags = _parse(argv)
    assert {k: getattr(by_flags, k) for k in RELEASED} == RELEASED and by_flags.recipe == "paper"

    mixed = _parse(["--recipe", "original", "--lrn-convention", "paper", "--no-cnorm2"])
    assert mixed.lrn_convention == "paper" and mixed.cnorm2 is False
    assert mixed.param_groups == "cuda-convnet" and mixed.lighting_off_last_epochs == 24

    # a key of the --config file wins over a recipe named on the command line, and the reverse
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"lighting_off_last_epochs": 5}))
    from_file = _parse(["--config", str(path), "--recipe", "original"])
    assert from_file.lighting_off_last_epochs == 5 and from_file.freeze_conv1_last_epochs == 19
    path.write_text(json.dumps({"recipe": "original"}))
    assert _parse(["--config", str(path), "--init", "he"]).init == "he"
    assert _parse(["--config", str(path)]).init == "original"


def test_recipe_over_the_builtin_base_keeps_the_base_elsewhere():
    from alexnet.builtin import BUILTIN_RECIPE

    config = from_dict({"recipe": "original"}, BUILTIN_RECIPE)
    assert config.width == BUILTIN_RECIPE.width and config.stem == "small"
    assert {k: getattr(config, k) for k in RELEASED} == RELEASED


def test_recipes_saved_by_the_earlier_version_read_as_they_ran():
    """A config.json written before dropout_style existed: inverted dropout, lambda/255 colour noise,
    and 'caffe' LRN (then alpha/n with k=2) now called 'cuda-convnet'."""
    new_keys = ("recipe", "cnorm2", "dropout_style", "channels", "fc_units", "conv6_channels", "fc8_bias_zero",
                "init_from", "freeze", "pca_scale", "lighting_shrink", "lighting_off_last_epochs",
                "freeze_conv1_last_epochs", "conv1_lr_tenth_last_epochs", "mean_centre_patch", "crop_chunk_images")
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in new_keys}
    old.update(lrn_convention="caffe", param_groups="original")
    read = from_dict(old)
    assert (read.dropout_style, read.pca_scale, read.lrn_convention, read.param_groups, read.fc8_bias_zero) == \
        ("inverted", "fb", "cuda-convnet", "original", False)
    assert from_dict(dict(old, param_groups="paper")).param_groups == "uniform"  # then: the biases decayed too
    # a partial file of the new version is read as written
    assert from_dict({"lrn_convention": "caffe"}).lrn_convention == "caffe"
    assert from_dict({"dropout": 0.5}).dropout_style == "paper"
    assert from_dict({"conv6_channels": 256, "tower_parallel": True}).conv6_channels == 256  # conv6 crosses towers


# The recipe 'original' as the version before the authors' schedule saved it (its other keys: the defaults).
ORIGINAL_THEN = dict(recipe="original", lrn_convention="cuda-convnet", lrn_before_relu=True, cnorm2=True,
                     init="original", fc8_bias_zero=True, param_groups="cuda-convnet", lighting_shrink=True,
                     lighting_off_last_epochs=24, freeze_conv1_last_epochs=19)
KEYS_SINCE = ("conv1_lr_tenth_last_epochs", "mean_centre_patch", "crop_chunk_images")


def _saved_then(**changes) -> dict:
    """A config.json of the version before fc8's bias of 0: every key of today's but those added since, with
    that version's default fc8_bias_zero (off: fc8's bias 1) and param_groups 'paper' (every parameter decayed)."""
    then = {k: v for k, v in TrainConfig().to_dict().items() if k not in KEYS_SINCE}
    return json.loads(json.dumps({**then, "fc8_bias_zero": False, "param_groups": "paper", **changes}))


def test_recipes_saved_before_fc8s_bias_of_0_read_as_they_ran(tmp_path):
    """fc8's bias of 1 unless the file says 0, every parameter decayed under 'paper' (now 'uniform'), and the
    recipe 'original' of then: 90 epochs on the plateau schedule, conv1 never slowed, the mean under each crop,
    draws per image."""
    read = from_dict(_saved_then())
    assert (read.fc8_bias_zero, read.param_groups) == (False, "uniform")
    assert (read.conv1_lr_tenth_last_epochs, read.mean_centre_patch, read.crop_chunk_images) == (0, False, 1)
    original = from_dict(_saved_then(**ORIGINAL_THEN))
    assert (original.epochs, original.schedule, original.milestones_epochs) == (90, "plateau", (30, 60, 80))
    assert (original.fc8_bias_zero, original.param_groups, original.freeze_conv1_last_epochs) == \
        (True, "cuda-convnet", 19)
    assert (original.conv1_lr_tenth_last_epochs, original.mean_centre_patch, original.crop_chunk_images) == \
        (0, False, 1)
    assert from_dict(_saved_then(fc8_bias_zero=True)).fc8_bias_zero
    # a file that names some keys, and a recipe saved now, are read as written
    assert from_dict({"param_groups": "paper"}).param_groups == "paper" and from_dict({}).fc8_bias_zero
    now = from_dict({"recipe": "original"})
    assert from_dict(json.loads(json.dumps(now.to_dict()))) == now
    # a flag of a newer key given with the saved file does not make the file new
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_saved_then()))
    assert _parse(["--config", str(path), "--crop-chunk-images", "4"]).param_groups == "uniform"


@pytest.mark.slow
def test_a_run_of_the_version_before_resumes_as_it_was_trained(tmp_path):
    """A run written before fc8's bias of 0, when param_groups 'paper' decayed every parameter in one group:
    resumed as the command does (its config.json as the base), it goes on with its one group and one learning
    rate; the paper's recipe of today is another recipe for it, refused by name."""
    from alexnet import checkpoint
    from alexnet.errors import UserError
    from alexnet.training import train
    from alexnet.training.run_dir import saved_recipe
    from helpers import make_store

    store, run = make_store(tmp_path / "data"), tmp_path / "run"
    train(from_dict(dict(param_groups="uniform", fc8_bias_zero=False, epochs=1, max_steps_per_epoch=1), TINY),
          store, run, **QUIET)
    then = _saved_then(**{k: v for k, v in json.loads((run / "config.json").read_text()).items()
                          if k not in KEYS_SINCE + ("param_groups", "fc8_bias_zero")})
    (run / "config.json").write_text(json.dumps(then))
    last = checkpoint.load(run / "last.pt")
    checkpoint.save(run / "last.pt", dict(last, config=then))
    with pytest.raises(UserError, match=r"fc8_bias_zero False -> True; param_groups 'uniform' -> 'paper'\."):
        train(TINY.replace(epochs=2, max_steps_per_epoch=1), store, run, resume=True, **QUIET)
    train(from_dict(saved_recipe(run)).replace(epochs=2), store, run, resume=True, **QUIET)
    resumed = checkpoint.load(run / "last.pt")
    assert resumed["progress"]["epoch"] == 2 and len(resumed["lrs"]) == 1


@pytest.mark.parametrize("bad,match", [({"freeze": "conv9"}, "no layer"), ({"freeze": "conv6"}, "no layer"),
                                       ({"channels": "48,128"}, "five"), ({"channels": "47,128,192,192,256"}, "divide"),
                                       ({"recipe": "authors"}, "recipe"), ({"pca_scale": "linear"}, "pca_scale"),
                                       ({"lighting_off_last_epochs": -1}, ">= 0"),
                                       ({"conv1_lr_tenth_last_epochs": -1}, ">= 0"),
                                       ({"crop_chunk_images": 0}, "at least 1")])
def test_bad_values_are_one_line_errors(bad, match):
    from alexnet.errors import UserError

    with pytest.raises(UserError, match=match):
        from_dict(bad)


@pytest.mark.slow
def test_released_lrn_conventions_against_the_formula():
    """cuda-convnet: x / (2 + alpha/n * sum)^beta; Caffe's bvlc_alexnet: x / (1 + alpha/n * sum)^beta."""
    from alexnet.model import AlexNet

    rng = np.random.default_rng(0)
    x = rng.normal(0, 30, (2, 8, 3, 3))
    n, alpha, beta = 5, 1e-4, 0.75

    def formula(k):
        out = np.empty_like(x)
        for c in range(8):
            lo, hi = max(0, c - n // 2), min(7, c + n // 2)
            out[:, c] = x[:, c] / (k + alpha / n * (x[:, lo:hi + 1] ** 2).sum(1)) ** beta
        return out

    for convention, k in (("cuda-convnet", 2.0), ("caffe", 1.0)):
        lrn = AlexNet(lrn_convention=convention, towers=1).features.lrn1
        assert lrn.k == k
        got = LocalResponseNorm(lrn.size, lrn.alpha, lrn.beta, lrn.k, convention=lrn.convention)(torch.from_numpy(x))
        np.testing.assert_allclose(got.numpy(), formula(k), rtol=1e-10)


@pytest.mark.parametrize("side", [3, 7])
def test_spatial_normalisation_against_a_numpy_loop(side):
    """cnorm2 as cuda-convnet computes it: window rows/columns y-2 .. y+2 clipped at the borders,
    denominator 1 + 0.001/25 * sum of squares, to the power 0.75, each map on its own."""
    rng = np.random.default_rng(side)
    x = rng.normal(0, 40, (2, 4, side, side))
    want = np.empty_like(x)
    for b in range(2):
        for c in range(4):
            for y in range(side):
                for xx in range(side):
                    total = 0.0
                    for yy in range(y - 2, y + 3):
                        for xc in range(xx - 2, xx + 3):
                            if 0 <= yy < side and 0 <= xc < side:
                                total += x[b, c, yy, xc] ** 2
                    want[b, c, y, xx] = x[b, c, y, xx] / (1.0 + 0.001 / 25 * total) ** 0.75
    got = SpatialResponseNorm(5, 1e-3, 0.75, 1.0)(torch.from_numpy(x))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    grad_check = torch.from_numpy(x[:1, :2]).requires_grad_()
    assert torch.autograd.gradcheck(SpatialResponseNorm(), (grad_check / 10,))


def test_per_epoch_settings_of_the_paper_recipe_and_of_frozen_layers():
    from alexnet.training.recipe import epoch_settings

    paper = [epoch_settings(TrainConfig(), e) for e in range(90)]
    assert all(s.lighting and s.frozen == () and s.slowed == () for s in paper)
    config = from_dict({"recipe": "original"})
    assert epoch_settings(config.replace(freeze=("conv1", "conv2")), 90).frozen == ("conv1", "conv2")


@pytest.fixture(scope="module")
def store(shared_store):
    return shared_store()


# The logs at the end of layer-params-145.cfg and layer-params-145-2010.cfg, written out by hand: the rate of
# each layer group, as (first epoch, last epoch, rate), epochs counted from 1, "epoch N: set ..." holding from
# epoch N + 1. 145: "epoch 25: set epsw to 0.001 from 0.01", "epoch 51: ... 0.0001", "epoch 67: set epsw to
# 0.00001 from 0.0001 on conv1, set color noise to 0", "epoch 72: set epsw to 0 on conv1", "epoch 79: set epsw
# to 0.00001", "epoch 91: killed"; its cfg ends with conv1 epsW 0 epsB 0, the others epsW 0.00001 epsB 0.02.
LOG_145 = {
    ("conv1", "weights"): [(1, 25, 0.01), (26, 51, 0.001), (52, 67, 1e-4), (68, 72, 1e-5), (73, 91, 0.0)],
    ("conv1", "biases"): [(1, 72, 0.02), (73, 91, 0.0)],
    (None, "weights"): [(1, 25, 0.01), (26, 51, 0.001), (52, 79, 1e-4), (80, 91, 1e-5)],
    (None, "biases"): [(1, 91, 0.02)],
    "colour noise": [(1, 67, True), (68, 91, False)],
}
# 2010: 23, 51, conv1 and colour noise at 68, conv1 frozen at 72, 78, killed at 93 (its epsB 0.002 is not offered)
LOG_2010 = {
    ("conv1", "weights"): [(1, 23, 0.01), (24, 51, 0.001), (52, 68, 1e-4), (69, 72, 1e-5), (73, 93, 0.0)],
    (None, "weights"): [(1, 23, 0.01), (24, 51, 0.001), (52, 78, 1e-4), (79, 93, 1e-5)],
    "colour noise": [(1, 68, True), (69, 93, False)],
}
FLAGS_2010 = dict(epochs=93, milestones_epochs=(23, 51, 78), conv1_lr_tenth_last_epochs=25,
                  freeze_conv1_last_epochs=21, lighting_off_last_epochs=25)


@pytest.mark.parametrize("log, changes", [(LOG_145, {}), (LOG_2010, FLAGS_2010)], ids=["145", "2010"])
def test_the_schedule_of_a_whole_run_against_the_log(store, log, changes):
    """Epoch by epoch, as train() does: the epoch's settings, then the schedule's step at its end."""
    from alexnet.data import open_store
    from alexnet.training.recipe import apply_epoch_settings, build_augment, build_model, build_optimizer, epoch_settings

    config = from_dict({"recipe": "original", **changes}, TINY)
    s = open_store(store)
    optimizer, schedule = build_optimizer(config, build_model(config, s, log=lambda m: None))
    augment, _ = build_augment(config, s, torch.device("cpu"))
    seen = {key: [] for key in log}
    for epoch in range(config.epochs):
        apply_epoch_settings(epoch_settings(config, epoch), optimizer, augment)
        for g in optimizer.param_groups:
            seen.setdefault((g["layer"], g["kind"]), []).append(0.0 if g["frozen"] else g["lr"] * g["lr_scale"])
        seen["colour noise"].append(augment.lighting_on)
        schedule.step(0.5)
    for key, spans in log.items():
        want = [value for first, last, value in spans for _ in range(first, last + 1)]
        assert seen[key] == (want if key == "colour noise" else pytest.approx(want, rel=1e-12)), key


def test_the_network_and_optimizer_the_recipe_builds(store):
    from alexnet.data import open_store
    from alexnet.training.recipe import (EpochSettings, apply_epoch_settings, build_augment, build_model,
                                         build_optimizer)

    config = from_dict({"recipe": "original"}, TINY)
    s = open_store(store)
    torch.manual_seed(0)
    model = build_model(config, s, log=lambda m: None)
    names = [n for n, _ in model.features.named_children()]
    assert names.index("lrn1") < names.index("act1") and names.index("lrn2") + 1 == names.index("cnorm2")
    assert model.features.lrn1.convention == "cuda-convnet" and model.features.lrn1.k == 2.0
    assert model.classifier.fc8.bias.eq(0).all() and model.classifier.fc7.bias.eq(1).all()
    assert model.features.conv1.bias.eq(0).all() and model.features.conv2.bias.eq(1).all()
    optimizer, _ = build_optimizer(config, model)
    kinds = [(g["layer"], g["kind"], g["lr"], g["weight_decay"], g.get("fixed_lr")) for g in optimizer.param_groups]
    assert kinds == [("conv1", "weights", 0.01, 5e-4, None), ("conv1", "biases", 0.02, 0.0, True),
                     (None, "weights", 0.01, 5e-4, None), (None, "biases", 0.02, 0.0, True)]
    augment, _ = build_augment(config, s, torch.device("cpu"))
    assert augment.pca_scale == "sqrt" and augment.lighting_shrink
    assert augment.mean_centre_patch and augment.crop_chunk_images == 32
    apply_epoch_settings(EpochSettings(lighting=False, frozen=("conv1",)), optimizer, augment)
    assert not augment.lighting_on and [g["frozen"] for g in optimizer.param_groups] == [True, True, False, False]
    apply_epoch_settings(EpochSettings(lighting=True, frozen=(), slowed=("conv1",)), optimizer, augment)
    assert [g["lr_scale"] for g in optimizer.param_groups] == [0.1, 1.0, 1.0, 1.0]


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_run_applies_the_same_epoch_settings(store, tmp_path, monkeypatch):
    """Two epochs straight, or one, a stop and a resume, cross the change of settings alike: the same
    weights, bit for bit (the settings come from the epoch number, not from the process's history)."""
    from alexnet import checkpoint
    from alexnet.training import train
    from alexnet.training.run_dir import RunDir

    config = from_dict(dict(recipe="original", epochs=2, max_steps_per_epoch=2, lighting_off_last_epochs=1,
                            freeze_conv1_last_epochs=1), TINY)
    train(config, store, tmp_path / "straight", **QUIET)

    def stop_after_first_checkpoint(self, *args, **kwargs):  # end of epoch 1: last.pt is written, then the process "dies"
        raise _Stop

    with monkeypatch.context() as m:
        m.setattr(RunDir, "plot", stop_after_first_checkpoint)
        with pytest.raises(_Stop):
            train(config, store, tmp_path / "stopped", **QUIET)
    after_one = checkpoint.load(tmp_path / "stopped" / "last.pt")
    assert after_one["progress"]["epoch"] == 1
    train(config, store, tmp_path / "stopped", resume=True, **QUIET)
    a = checkpoint.load(tmp_path / "straight" / "last.pt")["model"]
    b = checkpoint.load(tmp_path / "stopped" / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the last epoch froze conv1 (weights and biases) and trained the rest
    for name in a:
        assert torch.equal(a[name], after_one["model"][name]) == name.startswith("features.conv1."), name


@pytest.mark.parametrize("epochs", [1, 20, 30, 40, 48, 49, 91])
def test_a_run_shorter_than_the_released_one_is_told_what_its_last_epochs_cover(epochs):
    """The notes agree with epoch_settings, counted epoch by epoch: said when half the run or more is affected."""
    from alexnet.training.recipe import epoch_settings, schedule_notes

    config = cfg.from_dict({"recipe": "original", "epochs": epochs})
    runs = [epoch_settings(config, e) for e in range(epochs)]
    dark, frozen = sum(not s.lighting for s in runs), sum("conv1" in s.frozen for s in runs)
    slowed = sum("conv1" in s.slowed for s in runs)
    notes = schedule_notes(config)
    assert any("--lighting-off-last-epochs" in n for n in notes) == (2 * dark >= epochs)
    assert any("--conv1-lr-tenth-last-epochs" in n for n in notes) == (2 * slowed >= epochs)
    assert any("--freeze-conv1-last-epochs" in n for n in notes) == (2 * frozen >= epochs)
    assert any("all of its epochs" in n for n in notes) == (epochs in (frozen, dark, slowed))
    # milestones count from the start: said for a run of another length than the log's 91 epochs
    taken = ", ".join(str(m) for m in (25, 51, 79) if m < epochs) or "none"
    told = [] if epochs == 91 else [f"note: --recipe original's log is of 91 epochs; in --epochs {epochs} the lr is "
                                    f"divided after epoch(s) {taken} (--milestones-epochs count from the start), "
                                    "and the last-epochs settings count back from the end"]
    assert schedule_notes(config.replace(lighting_off_last_epochs=0, conv1_lr_tenth_last_epochs=0,
                                         freeze_conv1_last_epochs=0)) == told
    assert schedule_notes(config.replace(schedule="plateau", lighting_off_last_epochs=0,
                                         conv1_lr_tenth_last_epochs=0, freeze_conv1_last_epochs=0)) == []
