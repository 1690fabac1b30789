"""Section 3.2 on processes: the towers on two ranks against the single-device grouped model.

The reference is :class:`alexnet.model.AlexNet`, where the towers are grouped convolutions on
one device; the tower-parallel model gets the same weights and must give the same logits,
the same gradients and, with data parallelism over replicas, the same PaperSGD steps.
Ranks are CPU processes joined over gloo on 127.0.0.1.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from alexnet.distributed import make_process_groups
from alexnet.errors import UserError
from alexnet.model import AlexNet, init_weights_
from alexnet.optim import PaperSGD
from alexnet.towers import (
    TowerParallelAlexNet,
    _sum_slices,
    all_gather_towers,
    grouped_state_dict_from_towers,
    split_sizes,
    tower_state_dict_from_grouped,
)
from helpers import run_ranks

SMALL = dict(num_classes=10, stem="small", input_size=32, width=0.125)
# Odd unit and class counts: fc6/fc7 have 451 units, fc8 7 classes, so the towers differ in size.
UNEVEN = dict(num_classes=7, stem="small", input_size=32, width=0.11, lrn_before_relu=True, lrn_convention="caffe")
# Section 6's sixth convolution (crosses the towers, as conv3) with an odd kernel count, and cnorm2.
CONV6 = dict(num_classes=10, stem="small", input_size=32, width=0.125, conv6_channels=7, cnorm2=True)


def _gather_objects(obj) -> list:
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- checkpoints, one process


@pytest.mark.parametrize("kwargs", [SMALL, UNEVEN, CONV6], ids=["even", "uneven", "conv6"])
def test_state_dict_round_trip_is_exact(kwargs):
    grouped = AlexNet(**kwargs).state_dict()
    towers = [tower_state_dict_from_grouped(grouped, t) for t in range(2)]
    back = grouped_state_dict_from_towers(towers)
    assert list(back) == list(grouped)
    for name in grouped:
        assert torch.equal(back[name], grouped[name]), name
        assert towers[0][name].shape[0] + towers[1][name].shape[0] == grouped[name].shape[0]
        assert towers[0][name].shape[1:] == grouped[name].shape[1:]


def test_tower_slices_compute_the_grouped_layers():
    """Tower t's slices, applied to what tower t sees, give the grouped layers' outputs for tower t."""
    model = AlexNet(**SMALL)
    c1, c2, c3, c4, c5 = model.channels
    sd = [tower_state_dict_from_grouped(model.state_dict(), t) for t in range(2)]
    f = model.features
    x = torch.randn(2, c1, 8, 8)  # conv2 sees only its tower's maps of conv1
    for t in range(2):
        own = x[:, t * c1 // 2 : (t + 1) * c1 // 2]
        out = F.conv2d(own, sd[t]["features.conv2.weight"], sd[t]["features.conv2.bias"], padding=2)
        torch.testing.assert_close(out, f.conv2(x)[:, t * c2 // 2 : (t + 1) * c2 // 2])
    x = torch.randn(2, c2, 5, 5)  # conv3 sees all maps of conv2, in the order [tower 0, tower 1]
    for t in range(2):
        out = F.conv2d(x, sd[t]["features.conv3.weight"], sd[t]["features.conv3.bias"], padding=1)
        torch.testing.assert_close(out, f.conv3(x)[:, t * c3 // 2 : (t + 1) * c3 // 2])
    pooled = torch.randn(2, c5, 3, 3)  # fc6 sees both towers' pooled maps, flattened channel-major
    units = model.fc_units // 2
    for t in range(2):
        halves = [pooled[:, :c5 // 2].flatten(1), pooled[:, c5 // 2 :].flatten(1)]
        out = F.linear(torch.cat(halves, 1), sd[t]["classifier.fc6.weight"], sd[t]["classifier.fc6.bias"])
        torch.testing.assert_close(out, model.classifier.fc6(pooled.flatten(1))[:, t * units : (t + 1) * units])


def test_split_sizes():
    assert split_sizes(4096, 2) == [2048, 2048]
    assert split_sizes(7, 2) == [4, 3]
    assert [len(p) for p in torch.arange(7).tensor_split(2)] == split_sizes(7, 2)


def test_single_column_checkpoint_is_refused():
    with pytest.raises(UserError, match="towers=1"):
        tower_state_dict_from_grouped(AlexNet(**SMALL, towers=1).state_dict(), 0)
    with pytest.raises(UserError, match="not an AlexNet"):
        tower_state_dict_from_grouped({"weight": torch.zeros(1)}, 0)


# ---------------------------------------------------------------- two towers on two ranks


def _exchange(d) -> None:
    """The gather and its backward against sums written out by hand, both backward paths."""
    sizes = [3, 2]
    torch.manual_seed(d.rank)
    x = torch.randn(2, sizes[d.rank], 4, requires_grad=True)
    y = all_gather_towers(x, dist.group.WORLD, dim=1, sizes=sizes)
    xs = _gather_objects(x.detach())
    torch.testing.assert_close(y, torch.cat(xs, 1))
    g = torch.randn_like(y)  # a different downstream gradient on each rank
    y.backward(g)
    gs = _gather_objects(g)
    lo = sum(sizes[: d.rank])
    expected = sum(gr[:, lo : lo + sizes[d.rank]] for gr in gs)
    torch.testing.assert_close(x.grad, expected)
    for reduce_scatter in (True, False):
        torch.testing.assert_close(_sum_slices(g, 1, sizes, dist.group.WORLD, reduce_scatter), expected)
    # Replicated downstream: the same gradient on every rank is sliced, not summed.
    x.grad = None
    y = all_gather_towers(x, dist.group.WORLD, sizes=sizes, replicated_downstream=True)
    y.backward(gs[0])
    torch.testing.assert_close(x.grad, gs[0][:, lo : lo + sizes[d.rank]])


@pytest.mark.slow
def test_exchange_and_its_gradient():
    run_ranks(_exchange, 2)


def _matches_grouped(d, kwargs) -> None:
    torch.manual_seed(0)  # the same grouped weights, batch and labels on both ranks
    grouped = AlexNet(**kwargs, dropout=0.0).double()
    rng = torch.get_rng_state()
    model = TowerParallelAlexNet.from_grouped(grouped, dist.group.WORLD, d.rank)
    assert torch.equal(torch.get_rng_state(), rng)  # the ranks' generators stay together
    assert [p.dtype for p in model.parameters()] == [torch.float64] * len(list(model.parameters()))
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, grouped.num_classes, (3,))

    logits = model(x)
    expected = grouped(x)
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-12)
    F.cross_entropy(logits, y).backward()
    F.cross_entropy(expected, y).backward()
    grads = model.gather_grouped({n: p.grad for n, p in model.named_parameters()})
    for name, p in grouped.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-9, atol=1e-14, msg=name)
        assert p.grad.abs().sum() > 0, name

    with torch.no_grad():
        torch.testing.assert_close(model.fc7_features(x), grouped.fc7_features(x))
        # with the paper's dropout, fc6's outputs enter fc7 scaled by 1 - p at test time, on towers too
        for m in (model, grouped):
            m.classifier.drop6.p = 0.5
        torch.testing.assert_close(model.fc7_features(x), grouped.fc7_features(x))
        for m in (model, grouped):
            m.classifier.drop6.p = 0.0
    # Checkpoints: gathered on every rank, or joined from each rank's own state dict.
    full = model.grouped_state_dict()
    joined = grouped_state_dict_from_towers(_gather_objects(model.state_dict()))
    for name, t in grouped.state_dict().items():
        assert torch.equal(full[name], t) and torch.equal(joined[name], t), name
    model.load_grouped_state_dict({n: t + 1 for n, t in full.items()})
    own = tower_state_dict_from_grouped(full, d.rank)
    assert torch.equal(model.features.conv1.bias, own["features.conv1.bias"] + 1)


@pytest.mark.slow
def test_two_towers_match_the_grouped_model():
    run_ranks(_matches_grouped, 2, SMALL)


@pytest.mark.slow
def test_uneven_towers_match_the_grouped_model():
    run_ranks(_matches_grouped, 2, UNEVEN)


@pytest.mark.slow
def test_a_sixth_convolution_crosses_the_towers_like_the_grouped_model():
    run_ranks(_matches_grouped, 2, CONV6)


def _dropout(d) -> None:
    torch.manual_seed(0)
    grouped = init_weights_(AlexNet(**SMALL), "he")
    after_grouped = torch.get_rng_state()
    torch.manual_seed(0)
    model = TowerParallelAlexNet(**SMALL, init="he", tower_group=dist.group.WORLD, tower=d.rank, dropout=0.5)
    assert torch.equal(torch.get_rng_state(), after_grouped)  # the same draws as the grouped model
    assert torch.equal(model.grouped_state_dict()["classifier.fc6.weight"], grouped.classifier.fc6.weight)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1 + d.rank)  # each tower draws its own masks
    logits = model.train()(x)
    logits.sum().backward()
    assert torch.isfinite(logits).all()
    assert torch.equal(*_gather_objects(logits.detach()))  # every tower returns the same logits
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.slow
def test_dropout_in_training_gives_every_tower_the_same_logits():
    run_ranks(_dropout, 2)


def _paper_size(d) -> None:
    torch.manual_seed(0)
    grouped = AlexNet().eval()
    model = TowerParallelAlexNet.from_grouped(grouped, dist.group.WORLD, d.rank).eval()
    assert sum(p.numel() for p in model.parameters()) * 2 == 60_965_224
    x = torch.randn(1, 3, 224, 224) * 50
    with torch.no_grad():
        torch.testing.assert_close(model(x), grouped(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_paper_size_forward():
    run_ranks(_paper_size, 2)


# ---------------------------------------------------------------- 2 replicas x 2 towers


def _replicas_of_towers(d) -> None:
    groups = make_process_groups(4, 2)
    torch.manual_seed(0)
    grouped = AlexNet(**SMALL, dropout=0.0).double()
    x = torch.randn(2, 8, 3, 32, 32, dtype=torch.float64)  # two steps of a combined batch of 8
    y = torch.randint(0, 10, (2, 8))
    model = TowerParallelAlexNet.from_grouped(grouped, groups.tower_group, groups.tower)
    ddp = DistributedDataParallel(model, process_group=groups.data_parallel_group)
    opt = PaperSGD(ddp.parameters(), lr=0.05)
    ref_opt = PaperSGD(grouped.parameters(), lr=0.05)
    mine = slice(4 * groups.replica, 4 * (groups.replica + 1))  # this replica's half of each batch
    for step in range(2):
        opt.zero_grad()
        F.cross_entropy(ddp(x[step, mine]), y[step, mine]).backward()  # DDP averages over replicas
        opt.step()
        ref_opt.zero_grad()
        F.cross_entropy(grouped(x[step]), y[step]).backward()
        ref_opt.step()
    expected = tower_state_dict_from_grouped(grouped.state_dict(), groups.tower)
    for name, p in model.state_dict().items():
        torch.testing.assert_close(p, expected[name], rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.slow
def test_two_replicas_of_two_towers_step_like_one_device():
    run_ranks(_replicas_of_towers, 4)
