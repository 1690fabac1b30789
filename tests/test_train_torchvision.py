"""Fine-tuning torchvision's imported AlexNet: ``alexnet train DATA --arch torchvision --init-from IMPORTED.pt``.

The parent is made the way ``alexnet import-torchvision`` makes one, from a state dict in torchvision's
own keys and shapes written out below (nothing is downloaded); the layer names and conv1's folded
``1 / std`` are checked against that dict directly, not through the package's key translation.
torchvision's layout has fixed widths (57M parameters at 10 classes), so each run here is one epoch
of two steps of batch 2 on 64 px crops, and the tests that train are marked slow.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from alexnet import checkpoint
from alexnet import config as cfg
from alexnet.cli import main
from alexnet.config import TrainConfig
from alexnet.data import open_store
from alexnet.errors import UserError
from alexnet.model import AlexNet
from alexnet.torchvision_alexnet import TorchvisionAlexNet, import_checkpoint_payload
from helpers import QUIET, TINY, torchvision_forward

PARENT_CLASSES = 10
# torchvision.models.alexnet's parameters by torchvision's names, and the layer each is here
TORCHVISION_LAYERS = {
    "features.0": ("conv1", (64, 3, 11, 11)),
    "features.3": ("conv2", (192, 64, 5, 5)),
    "features.6": ("conv3", (384, 192, 3, 3)),
    "features.8": ("conv4", (256, 384, 3, 3)),
    "features.10": ("conv5", (256, 256, 3, 3)),
    "classifier.1": ("fc6", (4096, 9216)),
    "classifier.4": ("fc7", (4096, 4096)),
    "classifier.6": ("fc8", (PARENT_CLASSES, 4096)),
}
IMAGENET_STD = (0.229, 0.224, 0.225)  # torchvision's normalisation; the import folds 1 / std into conv1
ONE_255 = 1 / 255  # the imported checkpoint's input scale
TRUNK = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7")


def _ours(torchvision_key: str) -> str:
    """``features.3.weight`` -> ``features.conv2.weight``."""
    layer, _, kind = torchvision_key.rpartition(".")
    return f"{layer.split('.')[0]}.{TORCHVISION_LAYERS[layer][0]}.{kind}"


def _expected_trunk(tv: dict) -> dict:
    """The trunk an imported checkpoint holds, by our names: torchvision's tensors, conv1 divided by std."""
    out = {}
    for key, tensor in tv.items():
        if _ours(key).split(".")[1] in TRUNK:
            out[_ours(key)] = tensor / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) if key == "features.0.weight" \
                else tensor
    return out


@pytest.fixture(scope="module")
def store(shared_store):
    """The new task: three classes of 64 px images."""
    return shared_store(size=72, image_size=64)


@pytest.fixture(scope="module")
def torchvision_weights():
    g = torch.Generator().manual_seed(7)
    tv = {}
    for layer, (_, shape) in TORCHVISION_LAYERS.items():
        tv[f"{layer}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        tv[f"{layer}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return tv


@pytest.fixture(scope="module")
def parent(tmp_path_factory, torchvision_weights):
    """What 'alexnet import-torchvision' writes for those weights (10 classes)."""
    path = tmp_path_factory.mktemp("imported") / "imported.pt"
    payload = import_checkpoint_payload(torchvision_weights, [f"c{i}" for i in range(PARENT_CLASSES)], image_size=64,
                                        crop_size=64)
    checkpoint.save(path, payload)
    return path


@pytest.fixture(scope="module")
def paper_parent(tmp_path_factory, store):
    """A small network of the paper's layout, as 'alexnet train' writes one."""
    s = open_store(store)
    net = AlexNet(3, stem="small", input_size=TINY.crop_size, width=TINY.width)
    path = tmp_path_factory.mktemp("paper") / "paper.pt"
    checkpoint.save(path, dict(model_args=dict(num_classes=3, stem="small", input_size=TINY.crop_size, width=TINY.width,
                                               in_channels=3, dropout_style="paper"),
                               model=net.state_dict(),
                               data=dict(classes=list(s.classes), image_size=s.image_size, channels=3,
                                         mean_image=torch.zeros(s.image_size, s.image_size, 3)),
                               config=TINY.to_dict()))
    return path


def tv_config(parent, **changes) -> TrainConfig:
    return TrainConfig(arch="torchvision", init_from=str(parent), crop_size=64, input_scale=ONE_255,
                       batch_size_per_device=2, max_steps_per_epoch=2, epochs=1, loader_workers=1,
                       device="cpu").replace(**changes)


@pytest.fixture(scope="module")
def run(tmp_path_factory, store, parent):
    """One epoch of two steps fine-tuning the imported network with conv1 frozen and no weight decay
    (so every change of a weight is the gradient's)."""
    out = tmp_path_factory.mktemp("runs") / "tv"
    from alexnet.training import train

    torch.manual_seed(0)
    metrics = train(tv_config(parent, freeze=("conv1",), weight_decay=0.0), store, out, **QUIET)
    return out, metrics


def _train_cli(store, out, *flags) -> int:
    return main(["train", str(store), "--out", str(out), "--quiet", "--batch-size-per-device", "2", "--epochs", "1",
                 "--loader-workers", "1", "--crop-size", "64", *flags])


def _refused(capsys, store, tmp_path, flags, message):
    out = tmp_path / "runs" / "new"
    capsys.readouterr()
    code = _train_cli(store, out, *flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()  # refused before training: no run folder left behind
    return err


# --- the recipe -----------------------------------------------------------------------------------


def test_arch_is_a_recipe_key_and_torchvision_refuses_what_shapes_only_the_papers_network():
    assert TrainConfig().arch == "alexnet" and "arch" not in cfg.RUNTIME_KEYS
    assert TrainConfig(arch="torchvision", dropout=0.3, dropout_style="inverted", freeze=("conv1",)).arch == "torchvision"
    for changes, names in [
        (dict(towers=1), "towers 1"),
        (dict(lrn=False, width=0.5), "lrn False, width 0.5"),
        (dict(stem="small", channels=(8, 8, 8, 8, 8), fc_units=64, conv6_channels=8), "stem 'small', channels"),
        (dict(tower_parallel=True), "tower_parallel True"),
        (dict(activation="tanh", overlapping_pool=False, cnorm2=True), "cnorm2 True, overlapping_pool False, activation 'tanh'"),
    ]:
        with pytest.raises(UserError, match=f"arch 'torchvision' is torchvision's fixed one-tower layout, and {names}"):
            TrainConfig(arch="torchvision", **changes)
    with pytest.raises(UserError, match="recipe 'original' sets lrn_convention, lrn_before_relu, cnorm2"):
        cfg.from_dict(dict(arch="torchvision", recipe="original"))
    with pytest.raises(UserError, match="arch must be one of alexnet, torchvision"):
        TrainConfig(arch="vgg")


def test_the_smallest_crop_is_the_smallest_torchvisions_layout_takes():
    with torch.device("meta"):  # shapes only
        net = TorchvisionAlexNet(2)
        assert net(torch.zeros(1, 3, 63, 63)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            net(torch.zeros(1, 3, 62, 62))
    assert TrainConfig(arch="torchvision", crop_size=63).crop_size == 63
    with pytest.raises(UserError, match="crop_size 62 is too small for torchvision's layout .needs at least 63 px"):
        TrainConfig(arch="torchvision", crop_size=62)


def test_model_args_are_torchvisions(store):
    from alexnet.trained import build_network
    from alexnet.training.recipe import model_args

    args = model_args(TrainConfig(arch="torchvision", dropout=0.25, crop_size=64), open_store(store))
    assert args == dict(arch="torchvision", num_classes=3, dropout=0.25, in_channels=3)
    with torch.device("meta"):
        assert isinstance(build_network(args), TorchvisionAlexNet)


# --- the network at step 0 --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_trunk_is_the_imported_one_bit_for_bit_and_fc8_is_drawn_by_the_recipe(store, parent, torchvision_weights):
    from alexnet.training.recipe import build_model

    said = []
    torch.manual_seed(0)
    model = build_model(tv_config(parent), open_store(store), log=said.append)
    assert isinstance(model, TorchvisionAlexNet)
    assert "loaded conv1, conv2, conv3, conv4, conv5, fc6, fc7; drawn afresh fc8" in said[0]
    state = model.state_dict()
    expected = _expected_trunk(torchvision_weights)
    assert len(expected) == 14
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    torch.manual_seed(0)  # the same recipe from scratch draws the same fc8: the parent's 10 outputs are not used
    fresh = build_model(tv_config(parent, init_from=""), open_store(store), log=said.append).state_dict()
    assert state["classifier.fc8.weight"].shape == (3, 4096)
    for kind in ("weight", "bias"):
        assert torch.equal(state[f"classifier.fc8.{kind}"], fresh[f"classifier.fc8.{kind}"])
    assert not torch.equal(fresh["features.conv2.weight"], state["features.conv2.weight"])
    torch.manual_seed(0)
    zero = build_model(tv_config(parent, fc8_bias_zero=True), open_store(store), log=said.append)
    assert not zero.classifier.fc8.bias.any() and torch.equal(zero.features.conv5.weight, state["features.conv5.weight"])


def test_parameter_groups_and_freezing_name_torchvisions_layers(store):
    from alexnet.training.recipe import build_optimizer

    with torch.device("meta"):
        net = TorchvisionAlexNet(3)
    optimizer, _ = build_optimizer(TrainConfig(arch="torchvision", param_groups="caffe", freeze=("conv1", "fc6")), net)
    layers = {(g["layer"], g["kind"]): len(g["params"]) for g in optimizer.param_groups}
    assert layers == {("conv1", "weights"): 1, ("conv1", "biases"): 1, ("fc6", "weights"): 1, ("fc6", "biases"): 1,
                      (None, "weights"): 6, (None, "biases"): 6}


# --- refusals, each one line and no run folder ---------------------------------------------------------


@pytest.mark.slow
def test_a_parent_of_the_other_layout_is_refused_with_the_flags_that_fit_it(store, parent, paper_parent, tmp_path,
                                                                           capsys):
    from alexnet.training.recipe import read_parent

    err = _refused(capsys, store, tmp_path, ["--init-from", str(parent), "--crop-size", "64"],
                   "is a network of torchvision's layout, this run builds the paper's network.*fine-tune it with "
                   r"--arch torchvision --input-scale 0\.00392156862745098 ")
    flags = err.split("fine-tune it with ")[1].split(" (run with --debug")[0].split()
    config = cfg.from_args(_parse(["train", str(store), "--out", "x", "--init-from", str(parent), *flags]))
    assert config.arch == "torchvision" and config.input_scale == ONE_255
    assert read_parent(str(parent), config)["model_args"]["arch"] == "torchvision"  # the advice is enough
    _refused(capsys, store, tmp_path, ["--init-from", str(parent), "--arch", "torchvision"],
             r"trained with input_scale 0\.00392156862745098, this run has 1\.0.*give --input-scale "
             r"0\.00392156862745098 as the parent had it")
    _refused(capsys, store, tmp_path, ["--init-from", str(paper_parent), "--arch", "torchvision", "--input-scale",
                                       str(ONE_255)],
             "is the paper's network, this run builds torchvision's layout, whose layers compute something else; "
             r"leave out --arch torchvision and give --input-scale 0\.015625")


def test_step_kernels_and_paper_network_flags_are_refused_for_torchvisions_layout(store, parent, tmp_path, capsys):
    tv = ["--arch", "torchvision", "--init-from", str(parent), "--input-scale", str(ONE_255), "--crop-size", "64"]
    _refused(capsys, store, tmp_path, tv + ["--step-kernels", "conv1-s2d"],
             "--step-kernels conv1-s2d: --step-kernels are for the paper's network, and this run trains "
             "torchvision's layout")
    _refused(capsys, store, tmp_path, tv + ["--towers", "1", "--no-lrn"], "towers 1, lrn False apply only to the paper's")
    _refused(capsys, store, tmp_path, tv + ["--tower-parallel"], "tower_parallel True apply only")
    _refused(capsys, store, tmp_path, tv + ["--crop-size", "62"], "too small for torchvision's layout")


def _parse(argv):
    from alexnet.cli import build_parser

    return build_parser().parse_args(argv)


# --- a run ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_epoch_fine_tunes_everything_but_the_frozen_conv1(run, torchvision_weights):
    out, metrics = run
    assert len(metrics) == 1 and math.isfinite(metrics[0]["train_loss"]) and metrics[0]["global_step"] == 2
    last = checkpoint.load(out / "last.pt")
    assert last["model_args"] == dict(arch="torchvision", num_classes=3, dropout=0.5, in_channels=3)
    assert json.loads((out / "config.json").read_text())["arch"] == "torchvision"
    expected = _expected_trunk(torchvision_weights)
    for name, tensor in expected.items():
        if name.startswith("features.conv1."):
            assert torch.equal(last["model"][name], tensor), name  # frozen: bit for bit the parent's
        else:
            assert not torch.equal(last["model"][name], tensor), name  # the gradient reached every other layer


@pytest.mark.slow
def test_the_run_is_evaluated_exported_and_drawn_as_any_network(run, store, tmp_path, capsys):
    from safetensors.torch import load_file

    out, metrics = run
    capsys.readouterr()
    assert main(["evaluate", str(out), str(store), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1_error"] == pytest.approx(metrics[0]["val_top1_error"])
    assert main(["export", str(out), "--format", "safetensors", "--out", str(tmp_path / "export")]) == 0
    best = checkpoint.load(out / "best.pt")["model"]
    exported = load_file(str(tmp_path / "export" / "model.safetensors"))
    assert exported.keys() == best.keys() and all(torch.equal(exported[k], best[k]) for k in best)
    assert json.loads((tmp_path / "export" / "alexnet.json").read_text())["input_scale"] == ONE_255
    capsys.readouterr()
    assert main(["show", "filters", str(out), "--out", str(tmp_path / "filters.png")]) == 0
    assert "64 conv1 kernels (1 tower(s))" in capsys.readouterr().out


@pytest.mark.slow
def test_a_resume_refuses_another_arch_and_leaves_the_run_alone(run, store, capsys):
    out, _ = run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    code = _train_cli(store, out, "--resume", "--arch", "alexnet", "--epochs", "2")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "arch 'torchvision' -> 'alexnet'" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_a_parent_of_other_channels_says_which_store_fits(capsys, store, parent, tmp_path):
    """torchvision's layout has no crop- or width-dependent layer: only the channel count can misfit."""
    from alexnet.data.prepare import prepare_store

    gray = tmp_path / "gray"
    prepare_store(store.parent / "src", gray, image_size=64, channels="1", progress_bar=False, log=lambda s: None)
    err = _refused(capsys, gray, tmp_path, ["--arch", "torchvision", "--init-from", str(parent),
                                            "--input-scale", str(ONE_255)], r"conv1 fit only in part")
    assert "a store of its 3 channel(s)" in err and "--width" not in err


# --- keeping the parent's preprocessing: --mean-image parent ---------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)


@pytest.fixture(scope="module")
def parent256(tmp_path_factory, torchvision_weights):
    """An import at torchvision's own 256 px: its mean image is one value per channel, of another size than the store's."""
    path = tmp_path_factory.mktemp("imported256") / "imported.pt"
    checkpoint.save(path, import_checkpoint_payload(torchvision_weights, [f"c{i}" for i in range(PARENT_CLASSES)]))
    return path


@pytest.mark.slow
def test_a_fine_tune_keeping_the_parents_mean_exports_a_drop_in_torchvision_network(store, parent256, tmp_path):
    """Trained with ImageNet's channel means (spread over the store's 64 px), resumed after its parent
    is gone, exported: the .pth, given torchvision's normalisation, computes what the run computes."""
    from alexnet.training import train

    moved = tmp_path / "parent.pt"
    moved.write_bytes(parent256.read_bytes())
    out = tmp_path / "run"
    torch.manual_seed(0)
    train(tv_config(moved, mean_image="parent", lr=1e-4), store, out, **QUIET)
    moved.unlink()  # a resume reads the mean image from the run's own checkpoint
    train(tv_config(moved, mean_image="parent", lr=1e-4, epochs=2), store, out, resume=True, **QUIET)
    best = checkpoint.load(out / "last.pt")
    channel_means = torch.tensor(IMAGENET_MEAN) * 255
    assert torch.allclose(best["data"]["mean_image"], channel_means.expand(64, 64, 3))
    assert best["data"]["input_std_folded_into_conv1"] == pytest.approx(IMAGENET_STD)

    assert main(["export", str(out / "last.pt"), "--format", "torchvision,safetensors", "--out", str(tmp_path / "tv")]) == 0
    meta = json.loads((tmp_path / "tv" / "alexnet.json").read_text())
    assert meta["torchvision"]["preprocessing"] == "torchvision's ImageNet normalisation"
    tv = torch.load(tmp_path / "tv" / "torchvision_alexnet.pth", weights_only=True)
    pixels = torch.from_numpy(open_store(store).split("val").images[:2].copy()).permute(0, 3, 1, 2).float()
    normalised = (pixels / 255 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = torchvision_forward(tv, normalised)

    net = TorchvisionAlexNet(num_classes=3).eval()
    net.load_state_dict(best["model"])
    with torch.no_grad():
        ours = net((pixels - best["data"]["mean_image"].permute(2, 0, 1)) * ONE_255)
    assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    # and an export of the export keeps the std: the safetensors folder is a parent and a source as well
    assert main(["export", str(tmp_path / "tv"), "--format", "torchvision", "--out", str(tmp_path / "again")]) == 0
    again = torch.load(tmp_path / "again" / "torchvision_alexnet.pth", weights_only=True)
    assert all(torch.equal(again[k], tv[k]) for k in tv)


def test_the_parents_mean_needs_a_parent_that_is_centred():
    with pytest.raises(UserError, match="mean_image 'parent' subtracts the mean image of the init_from checkpoint: give --init-from"):
        TrainConfig(mean_image="parent")
    with pytest.raises(UserError, match="drop --no-subtract-mean"):
        TrainConfig(mean_image="parent", init_from="/x.pt", subtract_mean=False)


def test_a_per_pixel_mean_of_another_size_is_refused_before_the_run_folder(capsys, store, tmp_path):
    s = open_store(store)
    net = AlexNet(3, stem="small", input_size=TINY.crop_size, width=TINY.width)
    paper = tmp_path / "paper.pt"
    checkpoint.save(paper, dict(model_args=dict(num_classes=3, stem="small", input_size=TINY.crop_size,
                                                width=TINY.width, in_channels=3, dropout_style="paper"),
                                model=net.state_dict(),
                                data=dict(classes=list(s.classes), image_size=32, channels=3,
                                          mean_image=torch.rand(32, 32, 3) * 255),
                                config=TINY.to_dict()))
    _refused(capsys, store, tmp_path, ["--stem", "small", "--width", str(TINY.width), "--init-from", str(paper),
                                       "--input-scale", str(TINY.input_scale), "--mean-image", "parent"],
             r"--mean-image parent: the parent's mean image is a per-pixel mean of 32 px images, the store holds 64 px "
             r"ones; prepare the data with --image-size 32, or use --mean-image store")
