"""torch.hub.load(source="local") on this checkout builds the networks of alexnet.model and alexnet.torchvision_alexnet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from alexnet.model import AlexNet, count_parameters
from alexnet.torchvision_alexnet import TorchvisionAlexNet, to_torchvision_state_dict

REPO = str(Path(__file__).resolve().parents[1])


def hub(entry: str, **kwargs):
    return torch.hub.load(REPO, entry, source="local", verbose=False, **kwargs)


def test_paper_network_and_variants_by_keyword():
    with torch.device("meta"):  # shapes only: the paper's 61 M parameters need no memory here
        model = hub("alexnet")
        assert isinstance(model, AlexNet) and count_parameters(model) == 60_965_224 == count_parameters(AlexNet())
        variant = hub("alexnet", num_classes=10, towers=1, lrn=False, width=0.5)
        reference = AlexNet(10, towers=1, lrn=False, width=0.5)
    assert variant.towers == 1 and variant.num_classes == 10
    assert {k: v.shape for k, v in variant.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert not any("lrn" in type(m).__name__.lower() for m in variant.modules())
    small = hub("alexnet", num_classes=10, in_channels=1, input_size=28, stem="small", width=0.125)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="no pretrained weights"):
        hub("alexnet", pretrained=True)


def test_torchvision_layout_with_torchvision_weights_file(tmp_path):
    source = TorchvisionAlexNet(10)
    torch.save(to_torchvision_state_dict(source.state_dict()), tmp_path / "alexnet-owt.pth")
    model = hub("torchvision_alexnet", num_classes=10, weights=str(tmp_path / "alexnet-owt.pth")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))


def test_trained_network_from_a_checkpoint(tmp_path):
    # dropout 0: the same test-time function in either dropout style, whatever the checkpoint's age
    args = dict(num_classes=4, in_channels=1, input_size=24, stem="small", width=0.125, towers=1, dropout=0.0)
    net = AlexNet(**args)
    data = dict(classes=list("abcd"), image_size=28, channels=1, mean_image=torch.zeros(28, 28, 1))
    checkpoint.save(tmp_path / "best.pt", dict(model_args=args, model=net.state_dict(), data=data, config=dict(crop_size=24)))
    model = hub("trained", path=str(tmp_path))  # a run folder: its best.pt
    x = torch.randn(3, 1, 24, 24)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x))
