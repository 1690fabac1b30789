"""The training step's speed levers against eager torch: space-to-depth conv1, the fused conv block
tail (bias + ReLU + LRN + max-pool), the one-pass PaperSGD, and the reflection without a host sync.

Without a GPU the Triton kernels run in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes are small.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alexnet.data.augment import TrainAugment
from alexnet.speed import fused_blocks, fused_sgd
from alexnet.speed.fused_blocks import FusedConvBlock, block_reference, fuse_blocks, fused_block
from alexnet.speed.conv1_s2d import SpaceToDepthConv1, space_to_depth_conv2d, use_space_to_depth_conv1
from alexnet.speed.fused_sgd import FusedPaperSGD
from alexnet.lrn import lrn_reference
from alexnet.model import AlexNet, StridePad
from alexnet.optim import PaperSGD
from helpers import compile_for_sm90


def needs_triton(test):
    """Skipped without triton (a GPU, or TRITON_INTERPRET=1); slow, as Triton's interpreter runs it without a GPU."""
    return pytest.mark.slow(pytest.mark.skipif(
        not fused_blocks.available() or not (torch.cuda.is_available() or __import__("os").environ.get("TRITON_INTERPRET") == "1"),
        reason="needs triton (a GPU, or TRITON_INTERPRET=1)",
    )(test))


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FORMATS = [torch.contiguous_format, torch.channels_last]


# --- conv1 by space-to-depth --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size,kernel,stride,channels", [(227, 11, 4, 3), (224, 11, 4, 3), (37, 5, 3, 2), (30, 4, 2, 1)])
def test_space_to_depth_matches_strided_conv(fmt, size, kernel, stride, channels):
    """Same outputs and gradients (input, weight, bias) as the strided conv after StridePad, in float64."""
    x = torch.randn(2, channels, size, size + 1, dtype=torch.float64).contiguous(memory_format=fmt)
    w = torch.randn(6, channels, kernel, kernel, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = space_to_depth_conv2d(*leaves, stride, stride_pad=True)
    ref = F.conv2d(StridePad(kernel, stride)(ref_leaves[0]), *ref_leaves[1:], stride=stride)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    for a, r in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-11, atol=1e-11)


def test_space_to_depth_module_swaps_into_alexnet():
    model = AlexNet(num_classes=10, width=0.125).double()
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    use_space_to_depth_conv1(model)
    assert isinstance(model.features.conv1, SpaceToDepthConv1) and isinstance(model.features.pad1, nn.Identity)
    assert list(model.state_dict()) == keys  # checkpoints load either way
    assert "conv1" in model.learnable_layers()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    torch.testing.assert_close(model.features[:3](x), reference.features[:3](x), rtol=1e-10, atol=1e-10)
    model.load_state_dict(reference.state_dict())


def test_space_to_depth_refuses_other_convolutions():
    with pytest.raises(ValueError, match="space-to-depth"):
        SpaceToDepthConv1.from_conv(nn.Conv2d(3, 8, 3, stride=1, padding=1))
    with pytest.raises(ValueError, match="space-to-depth"):
        SpaceToDepthConv1.from_conv(nn.Conv2d(4, 8, 5, stride=2, groups=2))


def test_space_to_depth_shares_parameters():
    conv = nn.Conv2d(3, 8, 11, stride=4)
    s2d = SpaceToDepthConv1.from_conv(conv)
    assert s2d.weight is conv.weight and s2d.bias is conv.bias


# --- fused block tail ---------------------------------------------------------------------------

def _block_case(z, bias, dtype, groups, alpha=1e-4, **kw):
    """Our block and the eager one on the same values: outputs and gradients (z, bias)."""
    z = z.to(dtype)
    ours_z, ref_z = z.clone().requires_grad_(), z.clone().float().requires_grad_()
    ours_b = None if bias is None else bias.clone().requires_grad_()
    ref_b = None if bias is None else bias.clone().requires_grad_()
    y = fused_block(ours_z, ours_b, groups=groups, alpha=alpha, **kw)
    ref = block_reference(ref_z, ref_b, groups=groups, alpha=alpha, **kw)
    g = torch.rand_like(ref)
    y.backward(g.to(dtype))
    ref.backward(g)
    return y, ref, ours_z, ref_z, ours_b, ref_b


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("groups", [1, 2])
def test_fused_block_matches_eager_fp32(fmt, groups):
    z = torch.randn(2, 12, 11, 9, device=DEVICE).contiguous(memory_format=fmt)
    bias = torch.randn(12, device=DEVICE) * 0.3
    # a large alpha so that the normaliser really depends on the neighbours
    y, ref, oz, rz, ob, rb = _block_case(z, bias, torch.float32, groups, alpha=0.3)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=fmt)
    assert oz.grad.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(oz.grad, rz.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ob.grad, rb.grad, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_block_bf16_and_other_beta(fmt):
    """bf16 in and out (fp32 arithmetic), and the exp2/log2 path for beta other than 0.75."""
    z = torch.randn(1, 6, 8, 10, device=DEVICE).contiguous(memory_format=fmt)
    y, ref, oz, rz, _, _ = _block_case(z, None, torch.bfloat16, 1, alpha=0.3, beta=0.6, k=1.5, size=3)
    assert y.dtype == oz.grad.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(oz.grad.float(), rz.grad, rtol=2e-2, atol=2e-2)


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_block_ties_follow_pytorch(fmt):
    """All-zero windows after the ReLU, and equal positive values: the gradient goes where max_pool2d sends it."""
    z = -torch.rand(2, 8, 9, 9, device=DEVICE)
    z[:, :, 4:, 4:] = 1.0  # a plateau of exact ties across overlapping windows
    z[1, :, :2, :] = 0.5
    z = z.contiguous(memory_format=fmt)
    y, ref, oz, rz, _, _ = _block_case(z, None, torch.float32, 2)
    torch.testing.assert_close(y, ref, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(oz.grad, rz.grad, rtol=2e-6, atol=1e-7)
    # where the LRN's slope is zero (a = 0) the gradient is 0 whichever position wins, so check the
    # routing itself: pooled gradients land on exactly the positions torch's pool indices name
    a = F.relu(z)
    _, idx = F.max_pool2d(lrn_reference(a, groups=2), 3, 2, return_indices=True)
    _, code = fused_blocks.block_forward(z.contiguous(memory_format=fmt), None, 5, 1e-4, 0.75, 2.0, 2)
    ho, wo = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    ours = (2 * ho.to(DEVICE) + code.long() // 3) * 9 + 2 * wo.to(DEVICE) + code.long() % 3
    assert torch.equal(ours, idx)


@needs_triton
def test_fused_block_nan_propagates():
    z = torch.randn(1, 4, 7, 7, device=DEVICE)
    z[0, 1, 3, 3] = float("nan")
    y = fused_block(z, None, alpha=0.1)
    ref = block_reference(z, None, alpha=0.1)
    assert torch.equal(y.isnan(), ref.isnan()) and y.isnan().any()


@needs_triton
def test_fused_block_refuses_bad_inputs():
    with pytest.raises(ValueError, match="groups"):
        fused_block(torch.randn(1, 5, 7, 7, device=DEVICE), None, groups=2)
    with pytest.raises(ValueError, match="3x3"):
        fused_block(torch.randn(1, 4, 2, 7, device=DEVICE), None)


@needs_triton
@pytest.mark.parametrize("towers", [1, 2])
def test_fused_blocks_in_alexnet(towers):
    """A small AlexNet with both levers swapped in: same features, same gradients, same parameter names."""
    torch.manual_seed(0)
    model = AlexNet(num_classes=4, towers=towers, width=1 / 24, input_size=67).to(DEVICE)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30)  # activations large enough for the LRN to matter
    reference = copy.deepcopy(model)
    keys = list(model.state_dict())
    fuse_blocks(use_space_to_depth_conv1(model))
    assert list(model.state_dict()) == keys
    assert isinstance(model.features.conv1, FusedConvBlock) and model.features.conv1.space_to_depth
    assert isinstance(model.features.conv2, FusedConvBlock) and isinstance(model.features.pool2, nn.Identity)
    x = torch.randn(2, 3, 67, 67, device=DEVICE)
    out, ref = model.features(x), reference.features(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        if p.grad is not None or q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-3, msg=name)


def test_fuse_blocks_refuses_other_blocks():
    with pytest.raises(ValueError, match="LRN"):
        fuse_blocks(AlexNet(num_classes=4, width=1 / 16, lrn=False))
    with pytest.raises(ValueError, match="not conv, ReLU"):
        fuse_blocks(AlexNet(num_classes=4, width=1 / 16, lrn_before_relu=True))
    with pytest.raises(ValueError, match="max-pool 3/2"):
        fuse_blocks(AlexNet(num_classes=4, width=1 / 16, overlapping_pool=False, input_size=227))


# --- one-pass PaperSGD --------------------------------------------------------------------------

def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).to(DEVICE)


def _two_groups(net: nn.Module) -> list[dict]:
    """The conv and the linear layer of :func:`_tiny_net` as two parameter groups."""
    return [dict(params=list(net[0].parameters())), dict(params=list(net[3].parameters()))]


def _train(model, opt, steps, lr_change_at=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if step == lr_change_at:
            for group in opt.param_groups:
                group["lr"] *= 0.1
        x = torch.randn(3, 3, 8, 8, generator=g).to(DEVICE)
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()


@needs_triton
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("flat_grads", [False, True])
def test_fused_sgd_matches_paper_sgd(fmt, flat_grads):
    """Same weights and velocities as PaperSGD over steps with a change of lr and two groups (float32 rounding apart)."""
    ref_model = _tiny_net().to(memory_format=fmt)
    model = copy.deepcopy(ref_model)

    def groups(m):
        return [dict(params=[m[0].weight, m[3].weight], lr=0.05), dict(params=[m[0].bias, m[3].bias], lr=0.1, weight_decay=0.0)]

    ref_opt = PaperSGD(groups(ref_model), lr=0.05)
    opt = FusedPaperSGD(groups(model), lr=0.05, flat_grads=flat_grads)
    _train(ref_model, ref_opt, 6, lr_change_at=3)
    _train(model, opt, 6, lr_change_at=3)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert p.stride() == q.stride()
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt.state[p]["velocity"], ref_opt.state[q]["velocity"], rtol=1e-5, atol=1e-8)
    if flat_grads:
        assert all(p.grad.data_ptr() == gv.data_ptr() for p, gv in zip(opt.param_groups[0]["params"], opt._flat[0].g_views))


@needs_triton
def test_fused_sgd_one_update_exactly():
    """One update from the same w, g, v against the four-pass formula evaluated op by op."""
    w, g, v = (torch.randn(5000, device=DEVICE) for _ in range(3))
    expected_v = ((v * 0.9) + (-5e-4 * 0.01) * w) + (-0.01) * g
    expected_w = w + expected_v
    fused_sgd.fused_update_(w, g, v, 0.01, 0.9, 5e-4)
    torch.testing.assert_close(v, expected_v, rtol=2e-7, atol=1e-9)
    torch.testing.assert_close(w, expected_w, rtol=2e-7, atol=1e-9)


@needs_triton
def test_fused_sgd_state_dict_round_trips_with_paper_sgd():
    model = _tiny_net()
    opt = FusedPaperSGD(model.parameters(), lr=0.05)
    _train(model, opt, 2)
    state = opt.state_dict()
    plain_model = copy.deepcopy(model)
    plain = PaperSGD(plain_model.parameters(), lr=0.05)
    plain.load_state_dict(state)  # a fused run's checkpoint resumes under PaperSGD ...
    back = FusedPaperSGD(model.parameters(), lr=0.05)
    back.load_state_dict(copy.deepcopy(plain.state_dict()))  # ... and the other way round (torch shares loaded tensors)
    _train(plain_model, plain, 2, seed=5)
    _train(model, back, 2, seed=5)
    for p, q in zip(model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # loading into an optimizer that already stepped replaces the velocities in its flat buffer
    opt.load_state_dict(back.state_dict())
    for p, q in zip(model.parameters(), model.parameters()):
        torch.testing.assert_close(opt.state[p]["velocity"], back.state[q]["velocity"])


@needs_triton
def test_fused_sgd_flags_nonfinite_and_keeps_bf16_copy():
    model = _tiny_net()
    opt = FusedPaperSGD(model.parameters(), lr=0.05, check_finite=True, bf16_copy=True)
    _train(model, opt, 1)
    assert int(opt.nonfinite) == 0
    for p, w16 in zip(model.parameters(), opt.bf16_weights()):
        assert w16.dtype == torch.bfloat16 and w16.shape == p.shape
        assert torch.equal(w16, p.detach().to(torch.bfloat16))
    model(torch.randn(1, 3, 8, 8, device=DEVICE)).sum().backward()
    model[3].weight.grad[0, 0] = float("inf")
    opt.step()
    assert int(opt.nonfinite) == 1
    opt.reset_nonfinite()
    assert int(opt.nonfinite) == 0


@needs_triton
def test_fused_sgd_skips_parameters_without_gradients_like_paper_sgd():
    model, ref = _tiny_net(), None
    ref = copy.deepcopy(model)
    opt, ref_opt = FusedPaperSGD(model.parameters(), lr=0.1), PaperSGD(ref.parameters(), lr=0.1)
    for m, o in ((model, opt), (ref, ref_opt)):
        m(torch.ones(1, 3, 8, 8, device=DEVICE)).sum().backward()
        m[0].bias.grad = None
        o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


# --- reflection without a host sync -------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_sync_free_flip_is_bit_identical(channels):
    rng = np.random.default_rng(0)
    size, crop, n = 20, 16, 9
    mean = rng.uniform(0, 255, (size, size, channels))
    cov = np.cov(rng.normal(size=(channels, 50)))
    eigenvalues, eigenvectors = np.linalg.eigh(np.atleast_2d(cov))
    images = torch.from_numpy(rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8))
    results = []
    for sync_free in (False, True):
        augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=crop)
        augment.sync_free_flip = sync_free
        results.append(augment(images, torch.Generator().manual_seed(3)).clone())
    flips = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=crop).draw(n, torch.Generator().manual_seed(3))[2]
    assert 0 < int(flips.sum()) < n  # both kinds of image are in the batch
    assert torch.equal(results[0], results[1])


# --- the levers together ------------------------------------------------------------------------

@needs_triton
def test_training_steps_with_all_levers_match_eager():
    """Two PaperSGD steps of a small AlexNet: space-to-depth + fused blocks + one-pass SGD vs eager."""
    torch.manual_seed(0)
    reference = AlexNet(num_classes=4, width=1 / 24, input_size=67, dropout=0.0).to(DEVICE)
    with torch.no_grad():
        for p in reference.parameters():
            p.mul_(20)
    model = fuse_blocks(use_space_to_depth_conv1(copy.deepcopy(reference)))
    start = {n: p.detach().clone() for n, p in reference.named_parameters()}
    ref_opt, opt = PaperSGD(reference.parameters(), lr=0.01), FusedPaperSGD(model.parameters(), lr=0.01, flat_grads=True)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        x = torch.randn(2, 3, 67, 67, generator=g).to(DEVICE)
        y = torch.randint(0, 4, (2,), generator=g).to(DEVICE)
        losses = []
        for m, o in ((reference, ref_opt), (model, opt)):
            o.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            o.step()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        moved, other = p.detach() - start[name], q.detach() - start[name]
        assert float((moved - other).norm()) <= 1e-3 * float(moved.norm()) + 1e-7, name


@needs_triton
@pytest.mark.parametrize("flat_grads", [False, True])
def test_fused_sgd_leaves_a_frozen_group_alone_like_paper_sgd(flat_grads):
    """The recipe freezes layers by marking their groups frozen (--freeze, the last epochs of conv1)."""
    model = _tiny_net()
    ref = copy.deepcopy(model)
    opt = FusedPaperSGD(_two_groups(model), lr=0.05, flat_grads=flat_grads)
    ref_opt = PaperSGD(_two_groups(ref), lr=0.05)
    _train(model, opt, 2)
    _train(ref, ref_opt, 2)
    frozen = [p.detach().clone() for p in model[0].parameters()]
    for o in (opt, ref_opt):
        o.param_groups[0]["frozen"] = True
    _train(model, opt, 2, seed=3)
    _train(ref, ref_opt, 2, seed=3)
    for p, before in zip(model[0].parameters(), frozen):
        assert torch.equal(p, before)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@needs_triton
def test_fused_sgd_takes_velocities_set_from_outside():
    """A resume sets state[p]["velocity"] to fresh tensors (training/state.py): the next step uses them."""
    model = _tiny_net()
    ref = copy.deepcopy(model)
    opt, ref_opt = FusedPaperSGD(model.parameters(), lr=0.05), PaperSGD(ref.parameters(), lr=0.05)
    _train(model, opt, 1)
    _train(ref, ref_opt, 1)
    for p, q in zip(model.parameters(), ref.parameters()):
        v = torch.randn_like(p)
        opt.state[p]["velocity"] = v.clone()
        ref_opt.state[q]["velocity"] = v.clone()
    _train(model, opt, 1, seed=4)
    _train(ref, ref_opt, 1, seed=4)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


COMPILE_LEVERS_FOR_SM90 = """
from alexnet.speed import fused_blocks as bt, fused_sgd as st

ints = lambda names: {n: "i32" for n in names}
strides = ints(["szn", "szc", "szh", "szw", "syn", "syc", "syh", "syw"])
scalars = {"alpha": "fp32", "beta": "fp32", "k": "fp32"}
tile = {"SIZE": 5, "BETA_075": True, "BLOCK_P": bt.BLOCK_P, "BLOCK_C": bt.MAX_BLOCK_C}  # conv1's and conv2's
tensors = {"g_ptr": "*bf16", "code_ptr": "*u8", "z_ptr": "*bf16", "b_ptr": "*fp32", "t_ptr": "*bf16"}
build(bt._block_forward, {"z_ptr": "*bf16", "b_ptr": "*fp32", "y_ptr": "*bf16", "code_ptr": "*u8",
                          **ints(["W", "HO", "WO", "C", "PER_GROUP"]), **strides, **scalars}, tile)
build(bt._block_backward_terms, {**tensors, **ints(["H", "W", "HO", "WO", "C", "PER_GROUP"]), **strides, **scalars}, tile)
build(bt._block_backward_input, {**tensors, "dz_ptr": "*bf16", "db_ptr": "*fp32",
                                 **ints(["H", "W", "HO", "WO", "C", "PER_GROUP", "TILES"]), **strides, **scalars}, tile)
# the update as training runs it: the gradients' check under --on-nonfinite stop, the copies with bf16-weights
for write_bf16, check in ((False, False), (False, True), (True, True)):
    build(st._paper_sgd, {"w_ptr": "*fp32", "g_ptr": "*fp32", "v_ptr": "*fp32", "w16_ptr": "*bf16",
                          "flag_ptr": "*i32", "numel": "i64", "momentum": "fp32", "decay_step": "fp32",
                          "lr_step": "fp32"}, {"WRITE_BF16": write_bf16, "CHECK": check, "BLOCK": st.BLOCK})
"""


@pytest.mark.slow
def test_lever_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter skips Triton's compiler: this runs it for the fused block (bf16, as training on a
    GPU uses it) and the one-pass update, to PTX for sm_90, with no 64-bit integer division per element."""
    if not fused_blocks.available():
        pytest.skip("triton not importable")
    compile_for_sm90(COMPILE_LEVERS_FOR_SM90)
