"""torchvision's AlexNet layout: a state dict in torchvision's keys and shapes, built here (nothing is
downloaded), must land where torchvision's forward uses it. The reference is a forward written with
torch.nn.functional alone, reading that state dict by torchvision's names."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet.cli import main
from alexnet.data.idx import read_idx
from alexnet.evaluate import Member, probabilities
from alexnet.model import count_parameters
from alexnet.trained import build_network, preprocess_for
from alexnet.torchvision_alexnet import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    TorchvisionAlexNet,
    from_torchvision_state_dict,
    import_checkpoint_payload,
    to_torchvision_state_dict,
)
from helpers import torchvision_forward

ASSETS = Path(__file__).resolve().parents[1] / "alexnet" / "assets" / "fashion_mnist"
# torchvision.models.alexnet's parameters, by torchvision's names
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,),
}


def torchvision_state_dict(num_classes: int = 1000, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in TORCHVISION_SHAPES.items():
        if key.startswith("classifier.6"):
            shape = (num_classes,) + shape[1:]
        if key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    state["classifier.6.weight"] *= 0.3  # logits of a few units: a softmax that is not saturated
    return state


@pytest.mark.slow
def test_parameter_count_is_torchvisions():
    model = TorchvisionAlexNet()
    assert count_parameters(model) == 61_100_840 == sum(math.prod(s) for s in TORCHVISION_SHAPES.values())
    assert {k: tuple(v.shape) for k, v in to_torchvision_state_dict(model.state_dict()).items()} == TORCHVISION_SHAPES


@pytest.mark.parametrize("side", [224, 100])  # 224: 6x6 before the average pool; 100: the adaptive pool repeats cells
@pytest.mark.slow
def test_every_tensor_lands_where_torchvisions_forward_uses_it(side):
    sd = torchvision_state_dict()
    model = build_network({"arch": "torchvision", "num_classes": 1000})
    model.load_state_dict(from_torchvision_state_dict(sd))
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        expected = torchvision_forward(sd, x)
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-4, atol=1e-4)
        # fc7 features: the activations before fc8
        h = model.fc7_features(x)
        torch.testing.assert_close(F.linear(h, sd["classifier.6.weight"], sd["classifier.6.bias"]), expected, rtol=1e-4, atol=1e-4)


def test_dropout_sits_before_fc6_and_fc7():
    names = [n for n, _ in TorchvisionAlexNet().classifier.named_children()]
    assert names.index("drop5") < names.index("fc6") < names.index("drop6") < names.index("fc7") < names.index("fc8")
    assert not any(n.startswith("drop") for n in names[names.index("fc7"):])


def test_key_conversion_round_trips_and_rejects_other_networks():
    sd = torchvision_state_dict(10)
    assert all(torch.equal(a, b) for a, b in zip(to_torchvision_state_dict(from_torchvision_state_dict(sd)).values(), sd.values()))
    assert list(to_torchvision_state_dict(from_torchvision_state_dict(sd))) == list(sd)
    with pytest.raises(KeyError, match="features.1.weight"):
        from_torchvision_state_dict({**sd, "features.1.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="classifier.4.bias"):
        from_torchvision_state_dict({k: v for k, v in sd.items() if k != "classifier.4.bias"})


def real_rgb_images(count: int, side: int) -> torch.Tensor:
    """(count, side, side, 3) uint8 Fashion-MNIST images, enlarged and coloured per channel."""
    images = read_idx(ASSETS / "t10k-images-idx3-ubyte.gz")[:count].astype(np.float32)
    up = side // 28
    images = images.repeat(up, axis=1).repeat(up, axis=2)
    rgb = np.stack([images, 255 - images, images * 0.5 + 60], axis=-1)
    return torch.from_numpy(np.ascontiguousarray(rgb.clip(0, 255).astype(np.uint8)))


@pytest.mark.slow
def test_imported_checkpoint_evaluates_as_torchvision_would():
    """(x / 255 - mean) / std on the centre 224 crop, then torchvision's forward = our checkpoint's test path."""
    sd = torchvision_state_dict(10)
    payload = import_checkpoint_payload(sd, [f"c{i}" for i in range(10)], image_size=252, crop_size=224)
    model = build_network(payload["model_args"])
    model.load_state_dict(payload["model"])
    member = Member(model.eval(), preprocess_for(payload, torch.device("cpu")), payload["data"]["classes"])
    images = real_rgb_images(3, 252)
    got = probabilities([member], images, ten_crop=False)
    x = images[:, 14:238, 14:238].permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN_RGB).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD_RGB).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.softmax(torchvision_forward(sd, x), dim=1)
    assert expected.max() < 0.999
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-6)


@pytest.mark.slow
def test_cli_import_predict_show_and_export_back(tmp_path, capsys):
    sd = torchvision_state_dict(10)
    # as torchvision's reference scripts save it: under "model", with DistributedDataParallel's prefix
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "alexnet-owt.pth")
    (tmp_path / "classes.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    ckpt = tmp_path / "tv.pt"
    assert main(["import-torchvision", str(tmp_path / "alexnet-owt.pth"), "--out", str(ckpt),
                 "--classes", str(tmp_path / "classes.txt")]) == 0
    assert main(["import-torchvision", str(tmp_path / "alexnet-owt.pth"), "--out", str(ckpt)]) == 2  # exists
    from PIL import Image

    Image.fromarray(real_rgb_images(1, 280)[0].numpy()).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(tmp_path / "a.png"), "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["images"][0]["top"]) == 5 and result["images"][0]["top"][0]["class"].startswith("class ")
    assert main(["show", "filters", str(ckpt), "--out", str(tmp_path / "f.png")]) == 0
    assert main(["export", str(ckpt), "--format", "torchvision", "--out", str(tmp_path / "back")]) == 0
    back = torch.load(tmp_path / "back" / "torchvision_alexnet.pth", weights_only=True)
    assert list(back) == list(sd)
    for key in sd:  # conv1 gets torchvision's std back
        torch.testing.assert_close(back[key], sd[key], rtol=1e-6, atol=0)


def tiny_torchvision_keys(fc8_outputs: int = 10) -> dict:
    """torchvision's keys with tiny tensors (all the refusals need; files of a few kB)."""
    state = {k: torch.zeros(2) for k in TORCHVISION_SHAPES}
    state["features.0.weight"] = torch.zeros(4, 3, 3, 3)
    state["classifier.6.weight"] = torch.zeros(fc8_outputs, 8)
    return state


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_cli_import_refuses_what_is_not_torchvisions_alexnet(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sd = tiny_torchvision_keys()
    torch.save({k: v for k, v in sd.items() if not k.startswith("classifier.6")}, tmp_path / "headless.pth")
    torch.save({**sd, "features.1.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    torch.save(sd, tmp_path / "other.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 100)
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    (tmp_path / "notes.txt").write_text("some text, not weights\n")  # torch's unpickler said "pop from empty list"
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({**sd, "x": _RunsCode()}, tmp_path / "evil.pth", _use_new_zipfile_serialization=False)
    out = str(tmp_path / "x.pt")
    for argv, message in [
        (["headless.pth"], "no classifier.6.weight"),
        (["extra.pth"], "'features.1.weight' is not a key of torchvision's AlexNet"),
        (["garbage.pth"], "is not a PyTorch file"),
        (["notes.txt"], "is a text file, not torchvision's AlexNet weights"),
        (["legacy.pth"], "other shapes"),  # PyTorch's pre-1.6 format, as torchvision's published weights: read
        (["evil.pth"], "would run code"),
        (["list.pth"], "does not hold a state dict"),
        (["other.pth"], "other shapes"),
        (["other.pth", "--classes", str(tmp_path / "three.txt")], "has 3 names, the network 10 outputs"),
        (["other.pth", "--classes", str(tmp_path / "nowhere")], "does not exist"),
        (["other.pth", "--crop-size", "300"], "--crop-size 300 must be between"),
        (["missing.pth"], "does not exist"),
    ]:
        capsys.readouterr()
        assert main(["import-torchvision", str(tmp_path / argv[0]), *argv[1:], "--out", out]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert "weights_only" not in err  # torch's advice to load unsafely is never passed on
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "PWNED").exists()
