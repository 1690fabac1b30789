"""The network of section 3 / figure 2 and the initialisation of section 5.

The full-size network is built only for shapes, the parameter count and the init statistics;
everything else runs on small variants (the 3x3 stem on 28-64 px images, reduced width).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.model import AlexNet, feature_map_size, init_weights_
from alexnet.optim import PaperSGD

# The paper's layer table: (name, kernels, kernel side, input maps seen by each kernel).
PAPER_CONVS = [
    ("conv1", 96, 11, 3),
    ("conv2", 256, 5, 48),  # its own tower's 96/2 maps
    ("conv3", 384, 3, 256),  # all maps of conv2: crosses towers
    ("conv4", 384, 3, 192),
    ("conv5", 256, 3, 192),
]
PAPER_FCS = [("fc6", 4096, 6 * 6 * 256), ("fc7", 4096, 4096), ("fc8", 1000, 4096)]
GROUPED = {"conv2": 2, "conv4": 2, "conv5": 2}


def paper_parameter_count(towers=2, num_classes=1000):
    total = 0
    for name, out, side, fan_in in PAPER_CONVS:
        if towers == 1 and name in GROUPED:
            fan_in *= GROUPED[name]  # one column: each kernel sees every map of the layer below
        total += out * side * side * fan_in + out
    for name, out, fan_in in PAPER_FCS:
        out = num_classes if name == "fc8" else out
        total += out * fan_in + out
    return total


@pytest.fixture(scope="module")
def paper_model():
    return AlexNet()


def small(**kwargs):
    """A small model: the 3x3 stem on 32 px images at 1/8 width, unless overridden."""
    args = dict(num_classes=10, stem="small", input_size=32, width=0.125)
    args.update(kwargs)
    return AlexNet(**args)


def _record_shapes(model, x):
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
        for part in (model.features, model.classifier)
        for name, m in part.named_children()
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return shapes


@pytest.mark.parametrize("side", [224, 227])
def test_layer_output_shapes(paper_model, side):
    with torch.no_grad():
        shapes = _record_shapes(paper_model.eval(), torch.randn(1, 3, side, side))
    expected = {
        "conv1": (96, 55, 55),
        "lrn1": (96, 55, 55),
        "pool1": (96, 27, 27),
        "conv2": (256, 27, 27),
        "pool2": (256, 13, 13),
        "conv3": (384, 13, 13),
        "conv4": (384, 13, 13),
        "conv5": (256, 13, 13),
        "pool5": (256, 6, 6),
        "fc6": (4096,),
        "fc7": (4096,),
        "fc8": (1000,),
    }
    assert {k: shapes[k] for k in expected} == expected
    assert feature_map_size(side) == 6


def test_a_227_model_is_the_same_network():
    """input_size=227 builds the same layers as 224 (fc6 sees 6x6 maps either way)."""
    shapes = [
        {n: p.shape for n, p in AlexNet(input_size=side, width=0.125).named_parameters()} for side in (224, 227)
    ]
    assert shapes[0] == shapes[1]
    assert AlexNet(input_size=227, width=0.125).classifier.fc6.in_features == 32 * 6 * 6


def test_224_is_padded_right_and_bottom_to_227(paper_model):
    """conv1 on a 224 crop equals conv1 on the crop with 3 zero columns/rows added right and bottom."""
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        conv1 = paper_model.features.conv1
        out = paper_model.features[: [n for n, _ in paper_model.features.named_children()].index("conv1") + 1](x)
        expected = F.conv2d(F.pad(x, (0, 3, 0, 3)), conv1.weight, conv1.bias, stride=4)
    torch.testing.assert_close(out, expected)


def test_parameter_count(paper_model):
    assert paper_parameter_count() == 60_965_224  # the table itself against the known total
    assert sum(p.numel() for p in paper_model.parameters()) == 60_965_224
    per_layer = {name: m.weight.numel() + m.bias.numel() for name, m in paper_model.learnable_layers().items()}
    for name, out, side, fan_in in PAPER_CONVS:
        assert per_layer[name] == out * side * side * fan_in + out, name
    for name, out, fan_in in PAPER_FCS:
        assert per_layer[name] == out * fan_in + out, name


@pytest.mark.slow
def test_one_tower_differs_exactly_by_the_grouped_kernels():
    one = AlexNet(towers=1)
    extra = sum(out * side * side * fan_in for name, out, side, fan_in in PAPER_CONVS if name in GROUPED)
    assert extra == 307_200 + 663_552 + 442_368
    assert sum(p.numel() for p in one.parameters()) == 60_965_224 + extra == paper_parameter_count(towers=1)
    assert one.features.conv2.weight.shape == (256, 96, 5, 5)


def test_weight_shapes_show_the_towers(paper_model):
    f = paper_model.features
    assert f.conv1.weight.shape == (96, 3, 11, 11)
    assert f.conv2.weight.shape == (256, 48, 5, 5) and f.conv2.groups == 2
    assert f.conv3.weight.shape == (384, 256, 3, 3) and f.conv3.groups == 1
    assert f.conv4.weight.shape == (384, 192, 3, 3) and f.conv4.groups == 2
    assert f.conv5.weight.shape == (256, 192, 3, 3) and f.conv5.groups == 2
    assert paper_model.classifier.fc6.weight.shape == (4096, 9216)


def _run(model, first, last, h):
    layers = dict(model.features.named_children())
    names = list(layers)
    with torch.no_grad():
        for name in names[names.index(first) : names.index(last) + 1]:
            h = layers[name](h)
    return h


@pytest.mark.parametrize("first,last", [("act1", "pool2"), ("conv2", "conv2"), ("conv4", "pool5"), ("conv5", "conv5")])
def test_towers_are_isolated(first, last):
    """Changing tower 0's input maps leaves tower 1's outputs untouched, and vice versa.

    act1..pool2 covers LRN1 and LRN2 (per tower) and conv2; conv4..pool5 covers conv4 and conv5.
    """
    model = small().eval()
    c1, c2, c3, c4, c5 = model.channels
    in_maps = {"act1": c1, "conv2": c1, "conv4": c3, "conv5": c4}[first]
    side = 15
    h = torch.randn(2, in_maps, side, side) * 5
    out = _run(model, first, last, h)
    for tower in (0, 1):
        bumped = h.clone()
        half = in_maps // 2
        bumped[:, tower * half : (tower + 1) * half] += torch.randn(2, half, side, side) * 5
        out_b = _run(model, first, last, bumped)
        n = out.shape[1] // 2
        same, other = slice(tower * n, (tower + 1) * n), slice((1 - tower) * n, (2 - tower) * n)
        assert torch.equal(out_b[:, other], out[:, other]), f"tower {tower} leaks into tower {1 - tower}"
        assert not torch.allclose(out_b[:, same], out[:, same])


def test_conv3_crosses_towers():
    model = small().eval()
    c2 = model.channels[1]
    h = torch.randn(2, c2, 7, 7)
    bumped = h.clone()
    bumped[:, : c2 // 2] += 1.0  # tower 0 only
    out, out_b = _run(model, "conv3", "conv3", h), _run(model, "conv3", "conv3", bumped)
    n = out.shape[1] // 2
    assert not torch.allclose(out[:, :n], out_b[:, :n])
    assert not torch.allclose(out[:, n:], out_b[:, n:])


def _mean_std_ok(t, std):
    n = t.numel()
    mean, sample_std = t.mean().item(), t.std().item()
    return abs(mean) < 6 * std / math.sqrt(n) and abs(sample_std - std) < 6 * std / math.sqrt(2 * n) + 1e-3 * std


def test_paper_init_statistics(paper_model):
    layers = paper_model.learnable_layers()
    assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    for name, layer in layers.items():
        w = layer.weight.detach()
        assert _mean_std_ok(w, 0.01), (name, w.mean().item(), w.std().item())
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0  # fc8 is no hidden layer
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, bias)), name


@pytest.mark.slow
def test_original_init_statistics():
    model = init_weights_(AlexNet(), "original")
    for name, layer in model.learnable_layers().items():
        std = 0.03 if name in ("conv3", "conv4", "conv5") else 0.01
        assert _mean_std_ok(layer.weight.detach(), std), name
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.equal(layer.bias.detach(), torch.full_like(layer.bias, bias)), name


@pytest.mark.slow
def test_he_init_is_fan_in_scaled():
    model = init_weights_(AlexNet(), "he")
    fan_in = {name: side * side * maps for name, _, side, maps in PAPER_CONVS}
    fan_in.update({name: maps for name, _, maps in PAPER_FCS})
    for name, layer in model.learnable_layers().items():
        std = 0.01 if name == "fc8" else math.sqrt(2.0 / fan_in[name])  # small logits at the start
        assert _mean_std_ok(layer.weight.detach(), std), name
        bias = 0.0 if name == "fc8" else 0.1
        assert torch.allclose(layer.bias.detach(), torch.full_like(layer.bias, bias)), name


def test_init_scheme_is_checked():
    with pytest.raises(ValueError, match="init scheme"):
        init_weights_(small(), "xavier")


@pytest.mark.parametrize("style", ["paper", "inverted"])
def test_fc7_features_are_the_fc7_activations(style):
    model = init_weights_(small(dropout_style=style), "he")
    x = torch.randn(3, 3, 32, 32)
    c = model.classifier
    keep = 0.5 if style == "paper" else 1.0  # the paper's dropout multiplies fc6's outputs by 0.5 at test time
    with torch.no_grad():
        model.eval()
        h = model.features(x).flatten(1)
        h = F.relu(F.linear(h, c.fc6.weight, c.fc6.bias)) * keep
        manual = F.relu(F.linear(h, c.fc7.weight, c.fc7.bias))
        torch.testing.assert_close(model.fc7_features(x), manual)
        assert manual.shape == (3, model.fc_units)
        torch.testing.assert_close(F.linear(manual * keep, c.fc8.weight, c.fc8.bias), model(x))
        model.train()  # no dropout in the features, whatever the mode
        torch.testing.assert_close(model.fc7_features(x), manual)
        torch.testing.assert_close(model.fc7_features(x), model.fc7_features(x))
        assert not torch.allclose(model(x), model(x))  # while the forward pass does drop units


def test_fc7_features_are_4096_wide(paper_model):
    with torch.no_grad():
        assert paper_model.fc7_features(torch.randn(1, 3, 224, 224)).shape == (1, 4096)


VARIANTS = {
    "base": {},
    "tanh": dict(activation="tanh"),
    "no_lrn": dict(lrn=False),
    "pool_2_2": dict(overlapping_pool=False),
    "one_tower": dict(towers=1),
    "lrn_before_relu": dict(lrn_before_relu=True),
    "caffe_lrn": dict(lrn_convention="caffe"),
    "small_28_gray": dict(input_size=28, in_channels=1),
    "small_28_rgb": dict(input_size=28, in_channels=3),
    "small_32_gray": dict(input_size=32, in_channels=1),
    "small_64_gray": dict(input_size=64, in_channels=1),
    "small_64_rgb": dict(input_size=64, in_channels=3),
    "width_0.25": dict(width=0.25),
    "paper_stem_64": dict(stem="paper", input_size=64, width=0.25),
}


@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_variant_builds_runs_and_learns(kwargs):
    model = init_weights_(small(**kwargs), "he")
    size, channels = model.input_size, kwargs.get("in_channels", 3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, channels, size, size, generator=g)
    y = torch.arange(8) % model.num_classes

    out = model(x)
    assert out.shape == (8, model.num_classes)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} receives no gradient"

    # a few steps of the paper's SGD on the fixed batch lower the loss (no dropout: no noise)
    model = init_weights_(small(dropout=0.0, **kwargs), "he")
    before = F.cross_entropy(model(x), y).item()
    opt = PaperSGD(model.parameters(), lr=0.01)
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.9 * before, (before, after)


def test_paper_init_gives_every_parameter_a_gradient():
    model = small(width=0.25)
    x = torch.randn(4, 3, 32, 32)
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_variant_structure():
    assert isinstance(small(activation="tanh").features.act1, nn.Tanh)
    assert isinstance(small(lrn=False).features.lrn1, nn.Identity)
    assert small(overlapping_pool=False).features.pool1.kernel_size == 2
    assert small().features.pool1.kernel_size == 3 and small().features.pool1.stride == 2
    names = [n for n, _ in small(lrn_before_relu=True).features.named_children()]
    assert names.index("lrn1") < names.index("act1") and names.index("act2") < names.index("lrn2")
    assert small(lrn_convention="caffe").features.lrn1.convention == "caffe"
    assert small().features.lrn1.convention == "paper" and small().features.lrn2.groups == 2
    assert small(towers=1).features.lrn1.groups == 1
    assert small(width=0.25).channels == (24, 64, 96, 96, 64) and small(width=0.25).fc_units == 1024


def test_dropout_zero_makes_train_and_eval_equal():
    model = small(dropout=0.0)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x), rtol=0, atol=0)


def test_dropout_is_inverted_and_only_at_training_time():
    model = small(dropout=0.5)
    assert model.classifier.drop6.p == 0.5 and model.classifier.drop7.p == 0.5
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("p,style", [(0.5, "inverted"), (0.3, "inverted"), (0.5, "paper"), (0.3, "paper")])
def test_dropout_keeps_each_unit_scaled_by_exactly_one_over_keep_probability(p, style):
    """fc6's and fc7's outputs in training: x * mask / (1 - p) (inverted) or x * mask, unscaled (the
    paper's), against the mask drawn by hand.

    On a CPU, torch's dropout draws its mask as ``empty_like(x).bernoulli_(1 - p)`` from the global
    generator, drop6 first, then drop7; nothing before them in the forward pass draws random numbers.
    So the same generator state, replayed, gives the masks the model used.
    """
    model = small(dropout=p, dropout_style=style).train()
    seen = {}
    hooks = [getattr(model.classifier, name).register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
             for name in ("drop6", "drop7")]
    x = torch.randn(8, 3, 32, 32)
    state = torch.get_rng_state()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    torch.set_rng_state(state)
    scale = 1.0 / (1.0 - p) if style == "inverted" else 1.0
    for name in ("drop6", "drop7"):
        given, out = seen[name]
        mask = torch.empty_like(given).bernoulli_(1.0 - p)
        torch.testing.assert_close(out, given * mask * scale, rtol=0, atol=0)
        kept = mask.bool() & (given != 0)
        assert kept.any() and (~mask.bool() & (given != 0)).any()
        torch.testing.assert_close(out[kept] / given[kept], torch.full((int(kept.sum()),), scale), rtol=1e-6, atol=0)
        # the mask keeps about 1 - p of the units (binomial, 5 standard deviations)
        n = mask.numel()
        assert abs(mask.sum().item() - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("style", ["inverted", "paper"])
def test_dropout_keeps_the_expected_output_of_the_layer_after_it(style):
    """Mean of the training-mode logits over many drop7 masks = the eval-mode logits, in both styles.

    fc8 is linear and each kept unit is scaled by s (1/(1-p) inverted, 1 the paper's), so
    E[fc8(drop7(a))] = fc8((1-p) s a): fc8(a) for inverted dropout, fc8((1-p) a) for the paper's, which
    is what each computes at test time. The tolerance is 5 standard errors of the mean, computed from
    fc8's weights: var = p (1-p) s^2 * sum_i (W_ji a_i)^2 per draw.
    """
    p, draws = 0.5, 4000
    s = 1 / (1 - p) if style == "inverted" else 1.0
    model = small(dropout=p, dropout_style=style).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).double()
        a = model.fc7_features(x)  # what drop7 sees
        drop7, fc8 = model.classifier.drop7.train(), model.classifier.fc8
        logits = fc8(drop7(a.repeat(draws, 1))).double().view(draws, *expected.shape)
    mean = logits.mean(0)
    w = fc8.weight.double()
    std_error = (p * (1 - p) * s * s * (a.double().square() @ w.square().T) / draws).sqrt()
    tolerance = 5 * std_error + 1e-5 * expected.abs()
    assert ((mean - expected).abs() <= tolerance).all(), (mean - expected).abs().div(std_error).max()
    # the test can tell: one draw, or the other style's scale, misses by far more
    other = (1 - p) if style == "inverted" else 1 / (1 - p)
    assert ((logits[0] - expected).abs() > tolerance).any()
    assert ((other * (mean - fc8.bias.double()) + fc8.bias.double() - expected).abs() > tolerance).any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(towers=3), "towers"),
        (dict(activation="sigmoid"), "activation"),
        (dict(input_size=32), "too small"),  # the 11x11 stride-4 stem needs at least 64 px
        (dict(stem="small", input_size=14), "too small"),
        (dict(stem="tiny"), "stem"),
        (dict(dropout=1.0), "dropout"),
        (dict(width=0.0), "width"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlexNet(**kwargs)


def test_smallest_inputs_build():
    assert feature_map_size(63) == 0 and feature_map_size(64) == 1
    assert small(stem="small", input_size=15, width=0.125)(torch.randn(1, 3, 15, 15)).shape == (1, 10)


# --- dropout styles, the paper's other networks, the released code's normalisation ----------------


def test_paper_dropout_at_test_time_multiplies_by_keep_probability():
    """Section 4.2: "at test time, we use all the neurons but multiply their outputs by 0.5"."""
    for p in (0.5, 0.3):
        model = small(dropout=p, dropout_style="paper").eval()
        a = torch.rand(4, model.fc_units) + 0.1
        with torch.no_grad():
            torch.testing.assert_close(model.classifier.drop6(a), a * (1 - p), rtol=0, atol=0)
            model.classifier.drop6.train()
            out = model.classifier.drop6(a)
        assert set(torch.unique(out / a).tolist()) <= {0.0, 1.0}  # kept units are not scaled
    inverted = small(dropout=0.5, dropout_style="inverted").eval()
    a = torch.rand(4, inverted.fc_units)
    torch.testing.assert_close(inverted.classifier.drop6(a), a, rtol=0, atol=0)


def test_the_two_styles_give_the_same_test_time_function_for_equivalent_weights():
    """A paper-dropout network at test time equals the inverted-dropout network whose fc7 and fc8
    weights are (1 - p) times as large (the biases unchanged); fc7 features are the same too."""
    torch.manual_seed(0)
    paper = small(dropout=0.5, dropout_style="paper").eval()
    inverted = small(dropout=0.5, dropout_style="inverted").eval()
    inverted.load_state_dict(paper.state_dict())
    with torch.no_grad():
        for name in ("fc7", "fc8"):
            getattr(inverted.classifier, name).weight.mul_(0.5)
        x = torch.randn(3, 3, 32, 32)
        torch.testing.assert_close(paper(x), inverted(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(paper.fc7_features(x), inverted.fc7_features(x), rtol=1e-5, atol=1e-6)
        paper.train()  # features are the test-time ones in any mode
        torch.testing.assert_close(paper.fc7_features(x), inverted.fc7_features(x), rtol=1e-5, atol=1e-6)
        same = small(dropout=0.5, dropout_style="inverted").eval()
        same.load_state_dict(paper.state_dict())
        assert not torch.allclose(paper.eval()(x), same(x))  # the same weights are not the same function


@pytest.mark.slow
def test_old_checkpoints_keep_inverted_dropout_and_their_lrn():
    """model_args written before dropout_style existed rebuild the network they were trained as."""
    from alexnet.lrn import LocalResponseNorm
    from alexnet.model import PaperDropout
    from alexnet.trained import build_network

    old = build_network(dict(num_classes=10, stem="small", input_size=32, width=0.125, lrn_convention="caffe"))
    assert isinstance(old.classifier.drop6, nn.Dropout) and isinstance(old.classifier.drop7, nn.Dropout)
    assert old.features.lrn1.convention == "cuda-convnet" and old.features.lrn1.k == 2.0
    new = build_network(dict(num_classes=10, stem="small", input_size=32, width=0.125, lrn_convention="caffe",
                             dropout_style="paper"))
    assert isinstance(new.classifier.drop6, PaperDropout) and new.features.lrn1.k == 1.0
    assert isinstance(AlexNet().features.lrn1, LocalResponseNorm) and AlexNet().features.lrn1.k == 2.0


def _conv(out, side, fan_in):
    return out * side * side * fan_in + out


@pytest.mark.slow
def test_one_gpu_baseline_parameter_count():
    """Section 3.2's one-GPU net: half the kernels of conv1-conv4 in one column; footnote 2 (and
    layers-145-half.cfg): conv5 and the FC layers as in the two-GPU net."""
    net = AlexNet(towers=1, conv_channels=(48, 128, 192, 192, 256))
    by_hand = (_conv(48, 11, 3) + _conv(128, 5, 48) + _conv(192, 3, 128) + _conv(192, 3, 192) + _conv(256, 3, 192)
               + (6 * 6 * 256 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000))
    assert by_hand == 59_798_312
    assert sum(p.numel() for p in net.parameters()) == by_hand
    assert net.features.conv2.groups == 1 and net.features.lrn1.groups == 1


@pytest.mark.slow
def test_sixth_conv_layer_parameter_count_and_shapes():
    """Section 6: "an extra sixth convolutional layer over the last pooling layer" (layers-146-2011.cfg:
    256 kernels 3x3, pad 1, seeing both towers' maps, then fc6 on its 6x6x256 output)."""
    net = AlexNet(conv6_channels=256)
    by_hand = 60_965_224 + 256 * 3 * 3 * 256 + 256
    assert sum(p.numel() for p in net.parameters()) == by_hand == 61_555_304
    assert net.features.conv6.groups == 1 and net.classifier.fc6.in_features == 6 * 6 * 256
    shapes = _record_shapes(net.eval(), torch.randn(1, 3, 224, 224))
    assert shapes["pool5"] == (256, 6, 6) and shapes["conv6"] == (256, 6, 6)
    init_weights_(net, "original")
    assert net.features.conv6.bias.eq(1).all() and 0.025 < net.features.conv6.weight.std() < 0.035


def test_per_layer_channels_and_units():
    net = small(conv_channels=[8, 16, 24, 24, 16], fc_units=64)
    assert net.channels == (8, 16, 24, 24, 16) and net.fc_units == 64
    assert net.classifier.fc7.weight.shape == (64, 64) and net.features.conv3.weight.shape == (24, 16, 3, 3)
    with pytest.raises(ValueError, match="divide"):
        small(conv_channels=(9, 16, 24, 24, 16))
    with pytest.raises(ValueError, match="five"):
        small(conv_channels=(8, 16))


def test_cnorm2_sits_after_conv2s_lrn():
    names = [n for n, _ in small(cnorm2=True).features.named_children()]
    assert names.index("lrn2") + 1 == names.index("cnorm2") and names.index("cnorm2") + 1 == names.index("pool2")
    assert "cnorm2" not in [n for n, _ in small().features.named_children()]


@pytest.mark.parametrize("build", [
    lambda: AlexNet(0), lambda: AlexNet(-3), lambda: AlexNet(2.5), lambda: AlexNet(True), lambda: AlexNet(3, in_channels=0),
])
def test_class_and_channel_counts_must_be_whole_and_positive(build):
    with pytest.raises(ValueError, match="must be a whole number >= 1"):
        build()
