"""Checkpoints: atomic writes, refusal of code-carrying pickles, files named for what they are, and
crafted checkpoints refused (alexnet.trained) before anything is built from them."""

from __future__ import annotations

import functools
import io
import os
import pickle
import zipfile

import pytest
import torch
from PIL import Image

from alexnet import checkpoint, trained
from alexnet.errors import UserError
from alexnet.model import AlexNet

SMALL = dict(num_classes=4, stem="small", input_size=28, width=0.125, in_channels=3)
CLASSES = ["ant", "bee", "cat", "dog"]


def _payload(model: AlexNet, args: dict) -> dict:
    return dict(model_args=args, model=model.state_dict())


def _full(args: dict = SMALL) -> dict:
    """What 'alexnet train' writes for inference: the network, its data description and its recipe."""
    return dict(model_args=dict(args), model=AlexNet(**args).state_dict(),
                data=dict(classes=list(CLASSES), image_size=32, channels=3, mean_image=torch.full((32, 32, 3), 100.0)),
                config=dict(crop_size=28, subtract_mean=True, input_scale=1.0))


def test_round_trip(tmp_path):
    model = AlexNet(**SMALL)
    checkpoint.save(tmp_path / "c.pt", _payload(model, SMALL))
    loaded = checkpoint.load(tmp_path / "c.pt")
    assert loaded["format"] == checkpoint.FORMAT
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded["model"][name])
    checkpoint.save(tmp_path / "full.pt", _full())
    trained.load(tmp_path / "full.pt", for_inference=True)


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save(path, _payload(AlexNet(**SMALL), SMALL))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        checkpoint.load(path)
    path.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        checkpoint.load(path)


def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path):
    (tmp_path / "notes.txt").write_text("hello, a text file\n")
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image, "PNG")
    (tmp_path / "photo.pt").write_bytes(image.getvalue())
    image = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image, "JPEG")
    (tmp_path / "photo.jpg").write_bytes(image.getvalue())
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 4)
    for name, what in (("notes.txt", "is a text file"), ("photo.pt", "is a PNG image"), ("photo.jpg", "is a JPEG image"),
                       ("noise.bin", "not a PyTorch file")):
        with pytest.raises(UserError, match=what) as refused:
            checkpoint.load(tmp_path / name)
        assert "run code" not in str(refused.value)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an alexnet checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    with pytest.raises(UserError, match="checkpoint .*missing.pt not found"):
        trained.load(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="no best.pt or last.pt"):
        trained.load(tmp_path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_that_carries_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "version": 1, "payload": _RunsCode()}, path)
    with pytest.raises(UserError, match="run code"):
        checkpoint.load(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump(_RunsCode(), f)
    with pytest.raises(UserError, match="Python pickle"):  # refused unread: not torch.save's zip format
        checkpoint.load(tmp_path / "evil.pkl")
    assert not (tmp_path / "PWNED").exists()


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    first = AlexNet(**SMALL)
    checkpoint.save(path, _payload(first, SMALL))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(UserError, match="No space left"):
        checkpoint.save(path, _payload(AlexNet(**SMALL), SMALL))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind


# --- crafted checkpoints: each changes one thing of a valid one ---------------------------------


def _set(payload: dict, dotted: str, value) -> dict:
    *parents, key = dotted.split(".", 1) if dotted.startswith("model.") else dotted.split(".")  # tensor names hold dots
    node = payload
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value
    return payload


_DELETE = object()
HUGE = dict(num_classes=10**9)


def _nan_weight(payload):
    payload["model"]["classifier.fc8.weight"][0, 0] = float("nan")
    return payload


def _inf_bias(payload):
    payload["model"]["features.conv1.bias"][1] = float("inf")
    return payload


def _wide_fc8(payload):  # model_args that would build a far larger fc8 than the tensors saved
    payload["model_args"]["num_classes"] = 900_000  # 1.8 GB of fc8 if it were built
    return payload


CRAFTED = {
    "unknown model argument": (lambda p: _set(p, "model_args.depth", 50), "unknown model argument.*depth"),
    "num_classes out of range": (lambda p: _set(p, "model_args.num_classes", 10**9), r"num_classes=1000000000 is outside"),
    "width out of range": (lambda p: _set(p, "model_args.width", 1e6), r"width=1000000.0 is outside"),
    "input_size out of range": (lambda p: _set(p, "model_args.input_size", 10**7), "input_size=10000000 is outside"),
    "string where an int belongs": (lambda p: _set(p, "model_args.in_channels", "3"), "in_channels should be a int"),
    "bool where an int belongs": (lambda p: _set(p, "model_args.num_classes", True), "num_classes should be a int"),
    "unknown architecture": (lambda p: _set(p, "model_args.arch", "resnet"), "unknown architecture 'resnet'"),
    "model_args not a table": (lambda p: _set(p, "model_args", [1, 2]), "model_args must be a table"),
    "no model_args": (lambda p: _set(p, "model_args", _DELETE), "no 'model_args' section"),
    "fc8 far larger than saved": (_wide_fc8, r"classifier.fc8.weight is \(4, 512\) but its model arguments make it \(900000, 512\)"),
    "a tensor missing": (lambda p: _set(p, "model.classifier.fc8.bias", _DELETE), "missing \\['classifier.fc8.bias'\\]"),
    "an extra tensor": (lambda p: _set(p, "model.extra", torch.zeros(2)), "unexpected \\['extra'\\]"),
    "weights not tensors": (lambda p: _set(p, "model.features.conv1.bias", [0.0] * 12), "must map parameter names to tensors"),
    "NaN weight": (_nan_weight, "classifier.fc8.weight holds 1 NaN or infinite"),
    "inf bias": (_inf_bias, "features.conv1.bias holds 1 NaN or infinite"),
    "too few class names": (lambda p: _set(p, "data.classes", ["a", "b"]), "2 class names for a network of 4 outputs"),
    "a class named twice": (lambda p: _set(p, "data.classes", ["a", "a", "b", "c"]), "names a class twice"),
    "image size absurd": (lambda p: _set(p, "data.image_size", 10**6), "not a sane image format"),
    "mean image of another size": (lambda p: _set(p, "data.mean_image", torch.zeros(16, 16, 3)), r"mean_image is \(16, 16, 3\)"),
    "NaN mean image": (lambda p: _set(p, "data.mean_image", torch.full((32, 32, 3), float("nan"))), "mean_image holds NaN"),
    "channels differ from the network": (lambda p: _set(p, "data.channels", 1), "takes 3 channel"),
    "crop larger than the images": (lambda p: _set(p, "config.crop_size", 64), "crop_size 64 does not fit its 32 px"),
    "crop not the network's input": (lambda p: _set(p, "config.crop_size", 24), "takes 28 px crops, its recipe says 24"),
    "input_scale not a number": (lambda p: _set(p, "config.input_scale", "big"), "input_scale 'big' is not a positive"),
    "no data section": (lambda p: _set(p, "data", _DELETE), "no 'data' section"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_checkpoint_is_refused_before_any_network_is_built(tmp_path, monkeypatch, case):
    """Each fault is named in one line by trained.load; no real network is ever built from the
    crafted arguments (only meta-device ones, which hold no memory)."""
    craft, message = CRAFTED[case]
    path = tmp_path / "crafted.pt"
    checkpoint.save(path, craft(_full()))
    built = []
    real_init = AlexNet.__init__

    @functools.wraps(real_init)
    def spy(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device while the network is made
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(AlexNet, "__init__", spy)
    with pytest.raises(UserError, match=message) as refused:
        trained.load(path, for_inference=True)
    assert "\n" not in str(refused.value)
    assert all(device == "meta" for device in built), built


def test_zip_member_that_would_inflate_is_refused_unread(tmp_path):
    good = tmp_path / "good.pt"
    checkpoint.save(good, _full())
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(UserError, match="compressed or larger than the file"):
        checkpoint.load(bomb)


def test_load_member_refuses_a_store_of_another_image_size(tmp_path):
    from types import SimpleNamespace

    from alexnet.evaluate import check_store
    from alexnet.trained import load_member

    path = tmp_path / "c.pt"
    checkpoint.save(path, _full())
    member = load_member(str(path), torch.device("cpu"))
    assert (member.image_size, member.channels) == (32, 3)
    check_store(member, SimpleNamespace(image_size=32, channels=3), "data/same")
    for size, channels in ((64, 3), (32, 1)):
        with pytest.raises(UserError, match=rf"trained on 32 px images with 3 channel\(s\), data/other holds "
                                            rf"{size} px images with {channels}"):
            check_store(member, SimpleNamespace(image_size=size, channels=channels), "data/other")


def test_views_of_a_larger_storage_are_saved_standing_alone(tmp_path):
    """The one-pass PaperSGD holds weights as views of one flat buffer: each is saved as its own elements."""
    flat = torch.arange(30, dtype=torch.float32)
    weight, bias = flat[:24].view(4, 6), flat[24:]
    nhwc = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    checkpoint.save(tmp_path / "c.pt", dict(model={"w": weight, "b": bias}, extra=[nhwc], lrs=(0.1,)))
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    for got, want in ((loaded["model"]["w"], weight), (loaded["model"]["b"], bias), (loaded["extra"][0], nhwc)):
        assert torch.equal(got, want)
        assert got.untyped_storage().nbytes() == got.numel() * 4
    assert loaded["lrs"] == (0.1,) and flat.data_ptr() == weight.data_ptr()  # the caller's tensors are untouched


def test_a_full_disk_says_how_large_the_checkpoint_is_and_whether_one_is_kept(tmp_path, monkeypatch):
    import errno

    def full(path, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full)
    payload = dict(model={"w": torch.zeros(2**18)})  # 1 MiB of float32
    with pytest.raises(UserError, match=r"last.pt \(1.0 MiB\): No space left on device; none was written before"):
        checkpoint.save(tmp_path / "last.pt", payload)
    (tmp_path / "last.pt").write_bytes(b"an older checkpoint")
    with pytest.raises(UserError, match="; the previous checkpoint is kept"):
        checkpoint.save(tmp_path / "last.pt", payload)
