"""Pre-train, then fine-tune (section 6): ``alexnet train NEW_DATA --init-from CHECKPOINT [--freeze ...]``."""

from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

from alexnet import checkpoint
from alexnet import config as cfg
from alexnet.commands.train import add_recipe_flags
from alexnet.data import open_store
from alexnet.errors import UserError
from alexnet.model import AlexNet
from helpers import QUIET, TINY

TRUNK = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


@pytest.fixture(scope="module")
def store(shared_store):
    """The new task: three classes."""
    return shared_store()


@pytest.fixture(scope="module")
def parent(tmp_path_factory, store):
    """A 10-class network of TINY's shape, saved as a checkpoint (written the way training writes one)."""
    torch.manual_seed(123)
    s = open_store(store)
    net = AlexNet(10, stem="small", input_size=TINY.crop_size, width=TINY.width, in_channels=s.channels)
    path = tmp_path_factory.mktemp("parent") / "parent.pt"
    args = dict(num_classes=10, stem="small", input_size=TINY.crop_size, width=TINY.width, in_channels=s.channels,
                dropout_style="paper")
    checkpoint.save(path, dict(model_args=args, model=net.state_dict(),
                               data=dict(classes=[f"c{i}" for i in range(10)], image_size=s.image_size,
                                         channels=s.channels, mean_image=torch.zeros(s.image_size, s.image_size,
                                                                                      s.channels)),
                               config=TINY.to_dict()))
    return path


def _layer(name: str) -> str:
    return name.split(".")[-2]


def test_trunk_is_bit_identical_at_step_0_and_fc8_is_new(store, parent):
    from alexnet.training.recipe import build_model

    config = TINY.replace(init_from=str(parent))
    theirs = checkpoint.load(parent)["model"]
    said = []
    torch.manual_seed(0)
    model = build_model(config, open_store(store), log=said.append)
    for name, tensor in model.state_dict().items():
        if _layer(name) in TRUNK:
            assert torch.equal(tensor, theirs[name]), name
    assert model.classifier.fc8.weight.shape == (3, model.fc_units) and theirs["classifier.fc8.weight"].shape[0] == 10
    assert "loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7; drawn afresh fc8" in said[0]
    # a resumed run does not load the parent again (its weights come from its own checkpoint)
    torch.manual_seed(0)
    fresh = build_model(config, open_store(store), new_run=False, log=said.append)
    assert not torch.equal(fresh.features.conv1.weight, theirs["features.conv1.weight"]) and len(said) == 1


@pytest.mark.slow
def test_it_trains_records_the_parent_and_freezes_what_it_is_told(store, parent, tmp_path):
    from alexnet.training import train

    theirs = checkpoint.load(parent)["model"]
    config = TINY.replace(init_from=str(parent), epochs=1, max_steps_per_epoch=3, freeze=("conv1", "conv2"))
    metrics = train(config, store, tmp_path / "run", **QUIET)
    assert len(metrics) == 1 and torch.isfinite(torch.tensor(metrics[0]["train_loss"]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["init_from"] == str(parent) and saved["freeze"] == ["conv1", "conv2"]
    ckpt = checkpoint.load(tmp_path / "run" / "last.pt")
    assert ckpt["config"]["init_from"] == str(parent)
    for name, tensor in ckpt["model"].items():
        if _layer(name) in ("conv1", "conv2"):
            assert torch.equal(tensor, theirs[name]), name  # frozen: still the parent's
        elif _layer(name) in ("conv3", "fc6", "fc7"):
            assert not torch.equal(tensor, theirs[name]), name  # trained from the parent's
    # the velocities of the frozen layers never started
    assert "features.conv1.weight" not in ckpt["velocity"] and "features.conv3.weight" in ckpt["velocity"]
    # resuming it is a resume, not a second fine-tuning: the parent may be gone
    moved = parent.with_name("moved.pt")
    parent.rename(moved)
    try:
        train(config.replace(epochs=2), store, tmp_path / "run", resume=True, **QUIET)
    finally:
        moved.rename(parent)


def test_the_flag_records_an_absolute_path_and_freeze_takes_a_list(parent, monkeypatch):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_recipe_flags(parser)
    monkeypatch.chdir(parent.parent)
    config = cfg.from_args(parser.parse_args(["--init-from", parent.name, "--freeze", "conv1,conv2"]))
    assert config.init_from == str(parent.resolve()) and config.freeze == ("conv1", "conv2")
    assert cfg.from_args(parser.parse_args(["--freeze", "conv1", "--freeze", "fc6"])).freeze == ("conv1", "fc6")


def test_a_parent_that_does_not_fit_is_one_line(store, parent, tmp_path):
    from alexnet.training.recipe import build_model

    with pytest.raises(UserError, match="--init-from: .*not found"):
        build_model(TINY.replace(init_from=str(tmp_path / "none.pt")), open_store(store), log=lambda m: None)
    with pytest.raises(UserError, match="no layer of that network fits"):
        build_model(TINY.replace(init_from=str(parent), width=0.25), open_store(store),
                    log=lambda m: None)


@pytest.mark.slow
def test_a_parent_is_read_as_any_network_source_and_refused_when_it_would_compute_something_else(
        store, parent, tmp_path, capsys):
    """An export folder works as a parent; torchvision's layout, another input scale or another
    channel count is one line naming the cause, and a refused run leaves no folder behind."""
    from alexnet.cli import main
    from alexnet.export import write_export
    from alexnet.torchvision_alexnet import TorchvisionAlexNet
    from alexnet.training.recipe import build_model

    write_export(checkpoint.load(parent), tmp_path / "export", ["safetensors"], source=str(parent))
    said = []
    torch.manual_seed(0)
    model = build_model(TINY.replace(init_from=str(tmp_path / "export")), open_store(store), log=said.append)
    assert torch.equal(model.features.conv1.weight, checkpoint.load(parent)["model"]["features.conv1.weight"])
    assert "loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7" in said[0]

    tv = TorchvisionAlexNet(3)  # an 'import-torchvision' checkpoint: same layer names, other computation
    s = open_store(store)
    checkpoint.save(tmp_path / "tv.pt", dict(model_args=dict(arch="torchvision", num_classes=3), model=tv.state_dict(),
                                             data=dict(classes=list(s.classes), image_size=s.image_size,
                                                       channels=3, mean_image=torch.zeros(s.image_size, s.image_size, 3)),
                                             config=dict(crop_size=28, input_scale=1 / 255, subtract_mean=True)))
    one_channel = dict(checkpoint.load(parent))
    one_channel.pop("format"), one_channel.pop("version")
    net = AlexNet(10, stem="small", input_size=TINY.crop_size, width=TINY.width, in_channels=1)
    one_channel.update(model=net.state_dict(), model_args={**one_channel["model_args"], "in_channels": 1},
                       data={**one_channel["data"], "channels": 1,
                             "mean_image": one_channel["data"]["mean_image"][..., :1].contiguous()})
    checkpoint.save(tmp_path / "gray.pt", one_channel)
    flags = ["--stem", "small", "--width", str(TINY.width), "--crop-size", str(TINY.crop_size),
             "--batch-size-per-device", "16", "--epochs", "1", "--input-scale", str(TINY.input_scale)]
    for extra, message in [
        (["--init-from", str(tmp_path / "tv.pt")], "is a network of torchvision's layout"),
        (["--init-from", str(parent), "--input-scale", "0.5"],
         "trained with input_scale 0.015625, this run has 0.5.*give --input-scale 0.015625 as"),
        (["--init-from", str(tmp_path / "gray.pt")], r"conv1 fit only in part \(features.conv1.weight is \(12, 1, 3, 3\)"),
        (["--init-from", str(tmp_path / "nothing.pt")], "not found"),
    ]:
        out = tmp_path / "runs" / "new"
        capsys.readouterr()
        code = main(["train", str(store), "--out", str(out), *flags, *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
        assert not out.exists()  # refused before training: no empty run folder left behind
