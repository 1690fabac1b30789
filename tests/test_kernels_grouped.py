"""The towers' grouped convolutions computed three ways (alexnet/speed/grouped.py) against
torch's ``F.conv2d(groups=g)`` in float64 and against a per-group im2col loop written out here."""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.speed import fused_blocks
from alexnet.speed.grouped import (
    GROUPED_CONV_IMPLS,
    GroupedConv2d,
    block_diagonal_weight,
    grouped_conv2d,
    grouped_impl_of,
    use_grouped_conv,
)
from alexnet.lrn import LocalResponseNorm
from alexnet.model import AlexNet
from alexnet.optim import PaperSGD

FORMATS = [torch.contiguous_format, torch.channels_last]
OTHER_IMPLS = [impl for impl in GROUPED_CONV_IMPLS if impl != "grouped"]


def im2col_grouped_conv(x, weight, bias, stride, padding, groups):
    """A grouped convolution by hand: per group, unfold the group's input maps into columns and
    multiply by the group's kernels as a matrix."""
    n, c, h, w = x.shape
    o, cg, k, _ = weight.shape
    og = o // groups
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    outs = []
    for t in range(groups):
        cols = F.unfold(x[:, t * cg:(t + 1) * cg], k, padding=padding, stride=stride)  # (n, cg k k, L)
        kernels = weight[t * og:(t + 1) * og].reshape(og, cg * k * k)
        y = (kernels @ cols).reshape(n, og, out_h, out_w)
        if bias is not None:
            y = y + bias[t * og:(t + 1) * og].view(1, og, 1, 1)
        outs.append(y)
    return torch.cat(outs, 1)


def _grads(fn, leaves, g):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    y = fn(*leaves)
    y.backward(g)
    return y, [t.grad for t in leaves]


@pytest.mark.parametrize("impl", GROUPED_CONV_IMPLS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("groups,c,o,k,stride,padding,size", [
    (2, 6, 10, 5, 1, 2, (9, 7)),  # conv2's kernel at odd sizes
    (2, 4, 6, 3, 1, 1, (5, 6)),  # conv4/conv5's kernel
    (2, 2, 4, 3, 2, 0, (7, 8)),  # strided, no padding
    (1, 3, 5, 3, 1, 1, (6, 5)),  # one group: every way is the dense convolution
])
def test_matches_references_forward_and_backward(impl, fmt, groups, c, o, k, stride, padding, size):
    x = torch.randn(3, c, *size, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(o, c // groups, k, k, dtype=torch.float64)
    b = torch.randn(o, dtype=torch.float64)
    ref = F.conv2d(x, w, b, stride, padding, 1, groups)
    g = torch.randn_like(ref)
    y, grads = _grads(lambda x, w, b: grouped_conv2d(x, w, b, stride, padding, 1, groups, impl), (x, w, b), g)
    for reference in (lambda x, w, b: F.conv2d(x, w, b, stride, padding, 1, groups),
                      lambda x, w, b: im2col_grouped_conv(x, w, b, stride, padding, groups)):
        r, ref_grads = _grads(reference, (x, w, b), g)
        torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
        for a, e in zip(grads, ref_grads):
            torch.testing.assert_close(a, e, rtol=1e-11, atol=1e-11)
    if fmt == torch.channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    assert grads[1].shape == w.shape


@pytest.mark.parametrize("impl", OTHER_IMPLS)
def test_float32_channels_last_without_bias(impl):
    x = torch.randn(2, 8, 11, 13).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 4, 3, 3)
    y = grouped_conv2d(x, w, None, 1, 1, 1, 2, impl)
    torch.testing.assert_close(y, F.conv2d(x.double(), w.double(), None, 1, 1, 1, 2).float(), rtol=1e-5, atol=1e-5)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True])
def test_block_diagonal_weight_holds_the_groups_on_its_diagonal(channels_last):
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64)  # 3 groups of 2 kernels over 2 maps each
    dense = block_diagonal_weight(w, 3, channels_last=channels_last)
    assert dense.shape == (6, 6, 3, 3)
    assert dense.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    for t in range(3):
        for s in range(3):
            block = dense[2 * t:2 * t + 2, 2 * s:2 * s + 2]
            assert torch.equal(block, w[2 * t:2 * t + 2] if s == t else torch.zeros_like(block))


def test_swap_shares_parameters_and_keeps_state_dict_keys():
    model = AlexNet(num_classes=4, width=1 / 16, input_size=67)
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    for impl in OTHER_IMPLS + ["grouped"]:
        use_grouped_conv(model, impl)
        for name in ("conv2", "conv4", "conv5"):
            layer = getattr(model.features, name)
            assert isinstance(layer, GroupedConv2d) and grouped_impl_of(layer) == impl
        assert list(model.state_dict()) == keys
        assert all(p is params[n] for n, p in model.named_parameters())
        assert list(model.learnable_layers()) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert type(model.features.conv3) is nn.Conv2d  # crosses the towers: never swapped


def test_a_way_per_layer():
    model = AlexNet(num_classes=4, width=1 / 16, input_size=67).double()
    x = torch.randn(2, 3, 67, 67, dtype=torch.float64)
    model.eval()
    expected = model(x)
    use_grouped_conv(model, {"conv2": "halves", "conv5": "block_diagonal"})
    assert [grouped_impl_of(getattr(model.features, n)) for n in ("conv2", "conv4", "conv5")] == \
        ["halves", "grouped", "block_diagonal"]
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no grouped layer 'conv3'"):
        use_grouped_conv(model, {"conv3": "halves"})
    with pytest.raises(ValueError, match="unknown grouped convolution"):
        use_grouped_conv(model, {"conv4": "dense"})


def test_one_tower_and_grouped_are_no_ops():
    single = AlexNet(num_classes=4, width=1 / 16, input_size=67, towers=1)
    before = [type(m) for m in single.features]
    assert use_grouped_conv(single, "halves") is single
    assert [type(m) for m in single.features] == before
    model = AlexNet(num_classes=4, width=1 / 16, input_size=67)
    before = [type(m) for m in model.features]
    use_grouped_conv(model, "grouped")
    assert [type(m) for m in model.features] == before


def test_whole_network_same_logits_and_gradients():
    torch.manual_seed(0)
    reference = AlexNet(num_classes=4, width=1 / 16, input_size=67).double()
    x = torch.randn(2, 3, 67, 67, dtype=torch.float64) * 10
    labels = torch.tensor([1, 3])

    def run(model):
        torch.manual_seed(5)  # the same dropout masks
        loss = F.cross_entropy(model(x), labels)
        model.zero_grad()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(reference)
    for impl in OTHER_IMPLS:
        model = use_grouped_conv(copy.deepcopy(reference), impl)
        loss, grads = run(model)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=f"{impl}: {name}")


def test_paper_sgd_keeps_the_off_diagonal_blocks_zero():
    """The zeros are not parameters: momentum and weight decay never reach them."""
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    layer = GroupedConv2d.from_conv(conv, "block_diagonal")
    opt = PaperSGD(layer.parameters(), lr=0.1, weight_decay=0.5)
    assert sum(p.numel() for p in layer.parameters()) == 6 * 2 * 9 + 6
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 4, 5, 5)).square().sum().backward()
        opt.step()
    dense = layer.dense_weight().detach()
    assert torch.count_nonzero(dense[:3, 2:]) == 0 and torch.count_nonzero(dense[3:, :2]) == 0
    assert torch.equal(dense[:3, :2], conv.weight.detach()[:3]) and torch.equal(dense[3:, 2:], conv.weight.detach()[3:])


def test_unknown_impl_refused():
    model = AlexNet(num_classes=4, width=1 / 16, input_size=67)
    with pytest.raises(ValueError, match="grouped, halves, block_diagonal"):
        use_grouped_conv(model, "quarters")
    with pytest.raises(ValueError, match="unknown grouped convolution"):
        GroupedConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), "dense")
    with pytest.raises(ValueError, match="unknown grouped convolution"):
        grouped_conv2d(torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3), None, groups=2, impl="Halves")
    with pytest.raises(ValueError, match="no AlexNet features"):
        use_grouped_conv(nn.Linear(2, 2), "halves")
    with pytest.raises(ValueError, match="zero padding"):
        GroupedConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2, padding=1, padding_mode="reflect"), "halves")


# --- together with the fused conv2 block (fused_blocks) --------------------------------------------

needs_triton = pytest.mark.skipif(
    not fused_blocks.available() or not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
    reason="needs triton (a GPU, or TRITON_INTERPRET=1)",
)


class _Block2(nn.Module):
    """conv2's block alone, named as in AlexNet.features, small enough for Triton's interpreter."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv2", nn.Conv2d(4, 6, 5, padding=2, groups=2)),
            ("act2", nn.ReLU()),
            ("lrn2", LocalResponseNorm(5, 0.3, 0.75, 2.0, groups=2)),
            ("pool2", nn.MaxPool2d(3, 2)),
        ]))

    def forward(self, x):
        return self.features(x)


@needs_triton
@pytest.mark.slow  # Triton's interpreter without a GPU
def test_after_fuse_blocks_the_fused_tail_stays_and_the_conv_changes():
    reference = _Block2()
    x = torch.randn(2, 4, 7, 7)
    keys = list(reference.state_dict())
    g = torch.rand(2, 6, 3, 3)
    x_ref = x.clone().requires_grad_()
    reference(x_ref).backward(g)
    for impl in OTHER_IMPLS:
        model = copy.deepcopy(reference)
        model.zero_grad()
        fused_blocks.fuse_blocks(model, blocks=(2,))
        use_grouped_conv(model, impl)
        conv2 = model.features.conv2
        assert isinstance(conv2, fused_blocks.FusedConvBlock) and grouped_impl_of(conv2) == impl
        assert conv2.weight is model.features.conv2.weight and list(model.state_dict()) == keys
        xi = x.clone().requires_grad_()
        y = model(xi)
        y.backward(g)
        torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(xi.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(conv2.weight.grad, reference.features.conv2.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(conv2.bias.grad, reference.features.conv2.bias.grad, rtol=1e-5, atol=1e-6)


def test_fuse_blocks_after_the_swap_falls_back_and_says_so():
    """fuse_blocks rebuilds conv2 as a plain FusedConvBlock (cuDNN's groups=g): grouped_impl_of says
    so, and calling use_grouped_conv again puts the chosen way back."""
    model = use_grouped_conv(_Block2(), "halves")
    fused_blocks.fuse_blocks(model, blocks=(2,))
    assert grouped_impl_of(model.features.conv2) == "grouped"
    use_grouped_conv(model, "halves")
    assert grouped_impl_of(model.features.conv2) == "halves"
    assert isinstance(model.features.conv2, fused_blocks.FusedConvBlock)
