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


# --- wrong arguments and wrong files: one line saying what to pass instead ------------------------------


@pytest.mark.parametrize("kwargs, words", [
    (dict(num_classes=0), "num_classes must be a whole number of at least 1"),
    (dict(num_classes="10"), "num_classes must be a whole number"),
    (dict(weights="alexnet-owt.pth"), "no pretrained weights ship with this code"),
    (dict(widht=0.5), "AlexNet takes no argument 'widht'"),
])
def test_paper_network_refuses_wrong_arguments_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words) as e:
        hub("alexnet", **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_torchvision_entry_reads_a_weights_file_and_refuses_wrong_files_and_arguments_in_one_line(tmp_path):
    from alexnet.errors import UserError

    source = TorchvisionAlexNet(10)
    weights = tmp_path / "owt10.pth"
    torch.save(to_torchvision_state_dict(source.state_dict()), weights)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(hub("torchvision_alexnet", num_classes=10, weights=str(weights)).eval()(x), source.eval()(x))
    # fc8's outputs come from the file; another num_classes is refused, not a page of size mismatches
    assert hub("torchvision_alexnet", weights=str(weights)).num_classes == 10
    with pytest.raises(ValueError, match="has 10 outputs in its last layer, not num_classes=1000"):
        hub("torchvision_alexnet", num_classes=1000, weights=str(weights))
    with pytest.raises(UserError, match=r"conv1\.weight is \(64, 3, 11, 11\), not \(64, 1, 11, 11\)"):
        hub("torchvision_alexnet", weights=str(weights), in_channels=1)
    # a training checkpoint's state dict under "state_dict" with DDP's "module." prefix loads the same
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in to_torchvision_state_dict(source.state_dict()).items()}},
               wrapped)
    with torch.no_grad():
        assert torch.equal(hub("torchvision_alexnet", weights=str(wrapped)).eval()(x), source.eval()(x))
    # this package's own checkpoint is pointed at the 'trained' entry
    args = dict(num_classes=4, in_channels=1, input_size=24, stem="small", width=0.125, towers=1, dropout=0.0)
    data = dict(classes=list("abcd"), image_size=28, channels=1, mean_image=torch.zeros(28, 28, 1))
    checkpoint.save(tmp_path / "best.pt", dict(model_args=args, model=AlexNet(**args).state_dict(), data=data,
                                               config=dict(crop_size=24)))
    with pytest.raises(UserError, match="checkpoint of this package.*'trained' entry"):
        hub("torchvision_alexnet", weights=str(tmp_path / "best.pt"))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(UserError, match="is not torchvision's AlexNet: 'conv.weight'"):
        hub("torchvision_alexnet", weights=str(other))
    with pytest.raises(UserError, match="not found"):
        hub("torchvision_alexnet", weights=str(tmp_path / "missing.pth"))
    for kwargs, words in ((dict(pretrained=True), "no pretrained weights ship"), (dict(lrn=False), "takes no argument 'lrn'")):
        with pytest.raises(ValueError, match=words):
            hub("torchvision_alexnet", **kwargs)


def test_trained_entry_names_what_it_was_given(tmp_path):
    from alexnet.errors import UserError

    (tmp_path / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    for path, words in ((tmp_path / "missing.pt", "not found"), (tmp_path, "no best.pt or last.pt"),
                        (tmp_path / "photo.png", "PNG image, not an alexnet checkpoint")):
        with pytest.raises(UserError, match=words):
            hub("trained", path=str(path))
