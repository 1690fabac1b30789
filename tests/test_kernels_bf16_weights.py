"""Step kernel ``bf16-weights``: the forward pass on the bfloat16 weights the one-pass update writes.

The reference is bf16 autocast casting the float32 weights itself: with the copies, the losses,
gradients and weights must be the same bit for bit (the copy is the weight rounded as autocast
rounds it, and the gradient reaches the float32 weight as through autocast's cast), also after
anything but the update wrote the weights (a restore, the reference update of a group).
Without a GPU the update runs in Triton's interpreter (tests/conftest.py) and autocast on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.speed import fused_sgd
from alexnet.speed.bf16_weights import Bf16Weights, reading_copies
from alexnet.speed.fused_blocks import fuse_blocks
from alexnet.speed.conv1_s2d import use_space_to_depth_conv1
from alexnet.speed.grouped import use_grouped_conv
from alexnet.speed.fused_sgd import FusedPaperSGD
from alexnet.model import AlexNet

pytestmark = [pytest.mark.skipif(not fused_sgd.available(), reason="needs triton"),
              pytest.mark.slow]  # the one-pass update runs in Triton's interpreter without a GPU
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _pair(**kw) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    net = AlexNet(num_classes=4, width=1 / 24, input_size=67, dropout=0.0, **kw).to(DEVICE)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(20)  # weights large enough that the steps move the loss
    return net, copy.deepcopy(net)


def _step(model, opt, x, y, copies: Bf16Weights | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), reading_copies(copies):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    return loss.detach(), grads


def _batches(n: int):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(2, 3, 67, 67, generator=g).to(DEVICE), torch.randint(0, 4, (2,), generator=g).to(DEVICE))
            for _ in range(n)]


@pytest.mark.parametrize("swap", ["plain", "conv1-s2d and dense halves", "fused blocks"])
def test_steps_on_the_copies_are_autocasts_steps_bit_for_bit(swap):
    ours, theirs = _pair()
    for net in (ours, theirs):
        if swap == "conv1-s2d and dense halves":
            use_grouped_conv(use_space_to_depth_conv1(net), "halves")
        elif swap == "fused blocks":
            fuse_blocks(net)
    opt = FusedPaperSGD(ours.parameters(), lr=0.01, flat_grads=True, bf16_copy=True)
    ref = FusedPaperSGD(theirs.parameters(), lr=0.01, flat_grads=True)
    copies = Bf16Weights(ours, opt)
    for x, y in _batches(2 if swap == "fused blocks" else 3):  # fused blocks: slow in the interpreter
        loss, grads = _step(ours, opt, x, y, copies)
        ref_loss, ref_grads = _step(theirs, ref, x, y, None)
        assert torch.equal(loss, ref_loss)
        for g, h in zip(grads, ref_grads, strict=True):
            assert torch.equal(g, h)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)
    used = [layer._parameters["weight"] for layer in copies.layers]
    assert len(used) == 8 and all(p.dtype == torch.float32 for p in used)


def test_the_forward_pass_reads_the_copies_inside_the_step_only():
    net, _ = _pair()
    opt = FusedPaperSGD(net.parameters(), lr=0.01, flat_grads=True, bf16_copy=True)
    copies = Bf16Weights(net, opt)
    conv1 = net.features.conv1
    with torch.autocast(DEVICE, dtype=torch.bfloat16), copies.active():
        assert conv1.weight is conv1._parameters["weight"]  # before the first update there is no copy
    _step(net, opt, *_batches(1)[0], copies)
    with torch.autocast(DEVICE, dtype=torch.bfloat16), copies.active():
        assert conv1.weight.dtype == torch.bfloat16 and conv1.weight.grad_fn is not None
    with copies.active():  # no autocast (validation in float32, say): the float32 weight
        assert conv1.weight is conv1._parameters["weight"]
    with torch.autocast(DEVICE, dtype=torch.float16), copies.active():  # not bf16: autocast casts as it would
        assert conv1.weight is conv1._parameters["weight"]
    assert conv1.weight is conv1._parameters["weight"] and isinstance(conv1.weight, nn.Parameter)
    assert type(conv1).__name__ == "Conv2d" and isinstance(conv1, nn.Conv2d)
    assert list(net.state_dict()) == list(AlexNet(num_classes=4, width=1 / 24, input_size=67).state_dict())


@pytest.mark.parametrize("writer", ["a restored checkpoint", "the reference update of a group"])
def test_weights_written_by_anything_but_the_update_are_cast_again(writer):
    ours, theirs = _pair()
    opt = FusedPaperSGD(ours.parameters(), lr=0.01, flat_grads=True, bf16_copy=True)
    ref = FusedPaperSGD(theirs.parameters(), lr=0.01, flat_grads=True)
    copies = Bf16Weights(ours, opt)
    batches = _batches(3)
    _step(ours, opt, *batches[0], copies)
    _step(theirs, ref, *batches[0], None)
    if writer == "a restored checkpoint":
        other, _ = _pair()
        state = {k: v * 0.5 for k, v in other.state_dict().items()}
        ours.load_state_dict(state)
        theirs.load_state_dict(state)
    else:  # a group with a parameter without gradient is stepped by PaperSGD's own in-place arithmetic
        for net, o, c in ((ours, opt, copies), (theirs, ref, None)):
            o.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16), reading_copies(c):
                F.cross_entropy(net(batches[1][0]).float(), batches[1][1]).backward()
            net.classifier.fc8.bias.grad = None
            o.step()
    loss, _ = _step(ours, opt, *batches[2], copies)
    ref_loss, _ = _step(theirs, ref, *batches[2], None)
    assert torch.equal(loss, ref_loss)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)


def test_an_optimizer_without_copies_is_refused():
    net, _ = _pair()
    with pytest.raises(ValueError, match="bf16_copy=True"):
        Bf16Weights(net, FusedPaperSGD(net.parameters(), lr=0.01))
    with pytest.raises(ValueError, match="bf16_copy=True"):
        FusedPaperSGD(net.parameters(), lr=0.01).bf16_weights_now()
