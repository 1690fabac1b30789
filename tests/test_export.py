"""Export: safetensors round trip bit for bit; ONNX through onnxruntime vs PyTorch on real Fashion-MNIST images.

The ONNX graph is checked against the network's own PyTorch path (alexnet.evaluate.probabilities,
which runs the fused C LRN kernel) and ONNX's LRN constant against the formula in NumPy.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alexnet import checkpoint
from alexnet.cli import main
from alexnet.data.idx import read_idx
from alexnet.errors import UserError
from alexnet.evaluate import probabilities
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet, init_weights_
from alexnet.trained import build_network, build_trained, load, load_member
from helpers import lrn_numpy

ASSETS = Path(__file__).resolve().parents[1] / "alexnet" / "assets" / "fashion_mnist"
TOLERANCE = 1e-5  # max abs difference of probabilities, fp32


def real_images(count: int, upscale: int = 1, *, train: bool = False) -> np.ndarray:
    """(count, 28 x upscale, 28 x upscale, 1) uint8 Fashion-MNIST images from the package's assets."""
    name = "train-images-idx3-ubyte.gz" if train else "t10k-images-idx3-ubyte.gz"
    images = read_idx(ASSETS / name)[:count]
    return images.repeat(upscale, axis=1).repeat(upscale, axis=2)[..., None].copy()


def make_payload(model_args: dict, image_size: int, crop_size: int, *, input_scale: float = 1.0) -> dict:
    """A checkpoint payload for a fan-in initialised network whose logits on real images have std ~2."""
    model = build_network(model_args)  # as loading will rebuild it (it may fill in defaults of older versions)
    init_weights_(model, "he")
    mean = torch.from_numpy(real_images(300, image_size // 28, train=True).astype(np.float32).mean(axis=0))
    images = torch.from_numpy(real_images(32, image_size // 28)).float()
    top = (image_size - crop_size) // 2
    x = (images[:, top : top + crop_size, top : top + crop_size] - mean[top : top + crop_size, top : top + crop_size])
    with torch.no_grad():
        std = model.eval()(x.permute(0, 3, 1, 2) * input_scale).std()
        model.classifier.fc8.weight.mul_(2.0 / std)
        model.classifier.fc8.bias.zero_()
    classes = [f"class {i}" for i in range(model_args["num_classes"])]
    return dict(
        model_args=model_args,
        data=dict(classes=classes, image_size=image_size, channels=1, mean_image=mean),
        config=dict(crop_size=crop_size, subtract_mean=True, input_scale=input_scale),
        model=model.state_dict(),
    )


PAPER_STEM = dict(num_classes=10, in_channels=1, input_size=75, width=0.125)  # images 84 px
SMALL_STEM = dict(num_classes=10, in_channels=1, input_size=24, width=0.125, stem="small")  # images 28 px


def variant(args: dict) -> tuple[dict, int, int]:
    return (args, 84, 75) if args.get("stem", "paper") == "paper" else (args, 28, 24)


VARIANTS = {
    "towers2-lrn": variant(dict(PAPER_STEM, towers=2, lrn=True)),
    "towers1-lrn": variant(dict(PAPER_STEM, towers=1, lrn=True)),
    "towers2-nolrn": variant(dict(PAPER_STEM, towers=2, lrn=False)),
    "towers1-nolrn": variant(dict(PAPER_STEM, towers=1, lrn=False)),
    "small-stem": variant(dict(SMALL_STEM, towers=2, lrn=True)),
}


def export_folder(tmp_path: Path, payload: dict, formats: list[str]) -> tuple[Path, Path]:
    from alexnet.export import write_export

    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, payload)
    out = tmp_path / "export"
    write_export(checkpoint.load(ckpt), out, formats, source=str(ckpt))
    return ckpt, out


# --- safetensors ------------------------------------------------------------------------------


def test_safetensors_round_trip_is_bit_identical(tmp_path):
    args, size, crop = VARIANTS["towers2-lrn"]
    ckpt, out = export_folder(tmp_path, make_payload(args, size, crop), ["safetensors"])
    meta = json.loads((out / "alexnet.json").read_text())
    assert meta["model_args"] == args and meta["crop_size"] == crop and meta["image_size"] == size
    assert meta["mean_image"]["file"] == "mean_image.safetensors"

    original, exported = checkpoint.load(ckpt), load(out)
    model, mean = build_trained(exported), exported["data"]["mean_image"]
    for name, tensor in original["model"].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert torch.equal(mean, original["data"]["mean_image"])

    # The whole test-time path, from the checkpoint and from the export: the same bits.
    images = torch.from_numpy(real_images(8, size // 28))
    a = probabilities([load_member(str(ckpt), torch.device("cpu"))], images, ten_crop=True)
    b = probabilities([load_member(str(out), torch.device("cpu"))], images, ten_crop=True)
    assert torch.equal(a, b)


def test_safetensors_holds_plain_tensors_readable_without_alexnet(tmp_path):
    from safetensors.numpy import load_file

    args, size, crop = VARIANTS["towers1-nolrn"]
    payload = make_payload(args, size, crop)
    _, out = export_folder(tmp_path, payload, ["safetensors"])
    weights = load_file(out / "model.safetensors")
    assert set(weights) == set(payload["model"])
    np.testing.assert_array_equal(weights["features.conv1.weight"], payload["model"]["features.conv1.weight"].numpy())


def test_export_refuses_to_mix_with_an_existing_export(tmp_path):
    from alexnet.export import write_export

    args, size, crop = VARIANTS["towers1-nolrn"]
    payload = make_payload(args, size, crop)
    write_export(payload, tmp_path / "e", ["safetensors"])
    with pytest.raises(UserError, match="already holds an export"):
        write_export(payload, tmp_path / "e", ["safetensors"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        write_export(payload, tmp_path / "file", ["safetensors"])
    with pytest.raises(UserError, match="unknown export format"):
        write_export(payload, tmp_path / "f", ["pickle"])
    with pytest.raises(UserError, match="torchvision's layout"):
        write_export(payload, tmp_path / "g", ["torchvision"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir()}
    with pytest.raises(UserError, match="is the export being read"):  # --overwrite would delete what it reads
        write_export(payload, tmp_path / "e", ["safetensors"], source=str(tmp_path / "e" / "."), overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "e").iterdir()} == before


def test_onnx_export_without_the_extra_is_one_clear_line(tmp_path, monkeypatch):
    import importlib.util

    from alexnet.export import write_export

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    args, size, crop = VARIANTS["towers1-nolrn"]
    with pytest.raises(UserError, match=r"needs onnxscript: pip install 'alexnet\[onnx\]'"):
        write_export(make_payload(args, size, crop), tmp_path / "e", ["safetensors", "onnx"])
    assert not (tmp_path / "e").exists()  # refused before anything was written


def test_damaged_exports_are_one_clear_error(tmp_path):
    args, size, crop = VARIANTS["towers1-nolrn"]
    _, out = export_folder(tmp_path, make_payload(args, size, crop), ["safetensors"])
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load(out)
    (out / "alexnet.json").write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        load_member(str(out), torch.device("cpu"))


# --- ONNX -------------------------------------------------------------------------------------

# The ONNX tests need the 'onnx' extra (make test installs it); without it they are skipped, the rest run.
HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs the 'onnx' extra: pip install 'alexnet[onnx]'")


def run_onnx(proto, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# (convention, alpha, size, groups) and the alpha that multiplies the plain sum of squares
LRN_CASES = [("paper", 1e-4, 5, 1), ("paper", 1e-4, 5, 2), ("caffe", 1e-3, 5, 2), ("paper", 1e-4, 4, 2)]
PLAIN_ALPHA = [1e-4, 1e-4, 2e-4, 1e-4]


class LRNCases(nn.Module):
    """Every case of LRN_CASES applied to the same input, stacked: one export covers them all."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            LocalResponseNorm(size, alpha, 0.75, 2.0, convention=convention, groups=groups)
            for convention, alpha, size, groups in LRN_CASES
        )

    def forward(self, x):
        return torch.stack([layer(x) for layer in self.layers])


@needs_onnx
@pytest.mark.slow
def test_onnx_lrn_matches_the_formula():
    """ONNX's LRN divides alpha by size: the exported constant must undo that (checked at activations where it matters)."""
    from alexnet.export import onnx_model, plain_torch_copy

    x = (torch.randn(3, 12, 5, 5) * 150).numpy()
    proto = onnx_model(plain_torch_copy(LRNCases()), torch.from_numpy(x[:2]))
    lrn_alphas = [next(a.f for a in n.attribute if a.name == "alpha") for n in proto.graph.node if n.op_type == "LRN"]
    # odd sizes map to ONNX's LRN, one node per tower; the even size (ONNX's window differs) to primitive ops
    assert lrn_alphas == pytest.approx([5e-4] + [5e-4] * 2 + [1e-3] * 2, rel=1e-6)
    got = run_onnx(proto, x)
    for case, (_, _, size, groups) in enumerate(LRN_CASES):
        plain_alpha = PLAIN_ALPHA[case]
        expected = lrn_numpy(x, size, plain_alpha, 0.75, 2.0, groups)
        np.testing.assert_allclose(got[case], expected, rtol=1e-5, atol=1e-5, err_msg=str(LRN_CASES[case]))
        # The conversion matters here: alpha as ONNX reads it (divided by size) would be far off.
        wrong = lrn_numpy(x, size, plain_alpha / size, 0.75, 2.0, groups)
        assert np.abs(wrong - expected).max() > 100 * 1e-5 * np.abs(expected).max()


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_onnx_matches_pytorch_on_real_images(tmp_path, name):
    import onnx
    import onnxruntime

    args, size, crop = VARIANTS[name]
    ckpt, out = export_folder(tmp_path, make_payload(args, size, crop), ["onnx"])
    proto = onnx.load(out / "model.onnx")
    onnx.checker.check_model(proto)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"}
    assert next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert {n.domain for n in proto.graph.node} <= {""}  # no custom kernels, only standard operators
    assert ("LRN" in {n.op_type for n in proto.graph.node}) == args["lrn"]
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["alexnet"])
    assert meta["classes"] == [f"class {i}" for i in range(10)] and meta["opset"] == 18

    images = real_images(24, size // 28)
    expected = probabilities([load_member(str(ckpt), torch.device("cpu"))], torch.from_numpy(images), ten_crop=False).numpy()
    assert expected.max() < 0.999  # not saturated: the comparison can see differences
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(["probabilities"], {"images": images[i : i + n]})[0]
                          for i, n in ((0, 1), (1, 16), (17, 7))])  # the batch axis is free
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.abs(got - expected).max() <= TOLERANCE


@needs_onnx
@pytest.mark.slow
def test_onnx_exports_the_within_map_normalisation_of_cnorm2(tmp_path):
    """cnorm2 (the released code's 5x5 within-map normalisation after conv2's LRN) through onnxruntime."""
    import onnx

    args, size, crop = variant(dict(SMALL_STEM, towers=2, lrn=True, cnorm2=True))
    payload = make_payload(args, size, crop)
    ckpt, out = export_folder(tmp_path, payload, ["onnx"])
    proto = onnx.load(out / "model.onnx")
    onnx.checker.check_model(proto)
    assert {n.domain for n in proto.graph.node} <= {""}  # standard operators only
    images = real_images(12, size // 28)
    expected = probabilities([load_member(str(ckpt), torch.device("cpu"))], torch.from_numpy(images), ten_crop=False).numpy()
    assert expected.max() < 0.999  # not saturated: the comparison can see differences
    got = run_onnx(proto, images)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE
    # cnorm2 matters for these weights and images: the same network without it is far from both
    from alexnet.export import InferencePath

    plain = build_network({**args, "cnorm2": False})
    plain.load_state_dict(payload["model"])
    with torch.no_grad():
        path = InferencePath(plain.eval(), payload["data"]["mean_image"], image_size=size, crop_size=crop)
        without = path(torch.from_numpy(images)).numpy()
    assert np.abs(without - expected).max() > 100 * TOLERANCE


@needs_onnx
@pytest.mark.slow
def test_onnx_exports_the_test_time_function_of_either_dropout_style(tmp_path):
    """A dropout that scales at test time (the paper's 'multiply by 0.5') exports as what eval() computes."""
    from alexnet.export import InferencePath, onnx_model, plain_torch_copy

    class TestTimeScaledDropout(nn.Module):
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):
            if self.training:
                return x * (torch.rand_like(x) >= self.p)
            return x * (1 - self.p)

    args, size, crop = VARIANTS["small-stem"]
    payload = make_payload(args, size, crop)
    model = AlexNet(**args)
    model.load_state_dict(payload["model"])
    model.classifier.drop6 = TestTimeScaledDropout(0.5)
    model.classifier.drop7 = TestTimeScaledDropout(0.5)
    model.train()  # export must not depend on the mode the caller left the network in
    path = InferencePath(plain_torch_copy(model), payload["data"]["mean_image"], image_size=size, crop_size=crop)
    images = real_images(8, 1)
    proto = onnx_model(path, torch.from_numpy(images[:2]))
    got = run_onnx(proto, images)
    with torch.no_grad():
        x = torch.from_numpy(images).float()[:, 2:26, 2:26].permute(0, 3, 1, 2) - path.mean_patch
        expected = torch.softmax(model.eval()(x), dim=1).numpy()
    assert np.abs(got - expected).max() <= TOLERANCE
    assert any(n.op_type == "Mul" for n in proto.graph.node)


# --- command line -----------------------------------------------------------------------------


def _png(path: Path, image: np.ndarray) -> str:
    from PIL import Image

    Image.fromarray(image[..., 0]).save(path)
    return str(path)


@needs_onnx
@pytest.mark.slow
def test_cli_export_then_predict_from_checkpoint_safetensors_and_onnx(tmp_path, capsys):
    args, size, crop = VARIANTS["small-stem"]
    ckpt = tmp_path / "model.pt"
    checkpoint.save(ckpt, make_payload(args, size, crop))
    assert main(["export", str(ckpt), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "ox")]) == 0
    assert main(["export", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "ox")]) == 2  # no silent overwrite
    capsys.readouterr()
    images = [_png(tmp_path / f"{i}.png", im) for i, im in enumerate(real_images(3))]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    results = {}
    for source in (ckpt, tmp_path / "st", tmp_path / "ox"):
        code = main(["predict", str(source), *images, str(tmp_path / "bad.png"), "--json", "--device", "cpu", "--top", "10"])
        assert code == 1  # one image could not be read
        results[source.name] = json.loads(capsys.readouterr().out)  # one JSON object
    reference = results["model.pt"]
    assert [r["image"] for r in reference["images"]] == images + [str(tmp_path / "bad.png")]
    assert "error" in reference["images"][-1] and reference["failed"] == 1
    assert results["st"]["images"] == reference["images"]  # safetensors: the same numbers exactly
    for onnx_row, row in zip(results["ox"]["images"][:-1], reference["images"][:-1]):
        got = {t["class"]: t["probability"] for t in onnx_row["top"]}
        for t in row["top"]:
            assert abs(got[t["class"]] - t["probability"]) <= TOLERANCE
    assert main(["predict", str(tmp_path / "ox"), images[0], "--ten-crop"]) == 2
