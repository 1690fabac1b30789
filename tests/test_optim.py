"""Learning (section 5): PaperSGD against a hand-written loop and against torch.optim.SGD;
the plateau and milestone schedules against sequences worked out by hand."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from alexnet.optim import MilestoneSchedule, PaperSGD, PlateauSchedule, parameter_groups, scale_lr_

DTYPE = torch.float64


class Quadratic:
    """L(w) = sum over tensors of 0.5 * |A w - b|^2: a deterministic gradient A^T (A w - b)."""

    def __init__(self, shapes, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.init = [torch.randn(*s, generator=g, dtype=DTYPE) for s in shapes]
        self.a = [torch.randn(s[0], s[0], generator=g, dtype=DTYPE) / s[0] ** 0.5 for s in shapes]
        self.b = [torch.randn(*s, generator=g, dtype=DTYPE) for s in shapes]

    def params(self):
        return [nn.Parameter(w.clone()) for w in self.init]

    def loss(self, params):
        return sum(0.5 * ((a @ w - b) ** 2).sum() for a, w, b in zip(self.a, params, self.b))

    def grad(self, i, w):
        return self.a[i].T @ (self.a[i] @ w - self.b[i])


def _step(opt, problem, params):
    opt.zero_grad()
    problem.loss(params).backward()
    opt.step()


SHAPES = [(4, 3), (5,), (3, 2), (6,)]
# two groups with different lr and weight decay; lr changes at steps 3 and 7 (different per group)
GROUPS = [dict(idx=[0, 1], lr=0.05, wd=5e-4), dict(idx=[2, 3], lr=0.2, wd=0.01)]
LR_CHANGES = {3: [0.1, 0.5], 7: [0.1, 0.1]}  # step -> per-group factor applied before that step


def test_matches_hand_written_loop_through_lr_changes():
    problem = Quadratic(SHAPES)
    params = problem.params()
    opt = PaperSGD(
        [dict(params=[params[i] for i in g["idx"]], lr=g["lr"], weight_decay=g["wd"]) for g in GROUPS],
        momentum=0.9,
    )
    # the reference: plain tensors, the rule of section 5 written out
    w = [t.clone() for t in problem.init]
    v = [torch.zeros_like(t) for t in w]
    lrs = [g["lr"] for g in GROUPS]
    for step in range(10):
        if step in LR_CHANGES:
            for gi, factor in enumerate(LR_CHANGES[step]):
                lrs[gi] *= factor
                opt.param_groups[gi]["lr"] *= factor
        for gi, g in enumerate(GROUPS):
            for i in g["idx"]:
                grad = problem.grad(i, w[i])
                v[i] = 0.9 * v[i] - g["wd"] * lrs[gi] * w[i] - lrs[gi] * grad
                w[i] = w[i] + v[i]
        _step(opt, problem, params)
        for i in range(len(SHAPES)):
            torch.testing.assert_close(params[i].detach(), w[i], rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(opt.state[params[i]]["velocity"], v[i], rtol=1e-13, atol=1e-13)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05 * 0.1 * 0.1, 0.2 * 0.5 * 0.1])


def test_equals_torch_sgd_while_lr_is_constant_and_differs_after_a_change():
    """torch: b <- m b + g + wd w; w <- w - eps b.  Paper: v <- m v - eps (g + wd w); w <- w + v.

    At constant eps, v = -eps b, so the two agree. When eps changes from e1 to e2 (with equal
    weights before the step), the paper's step minus torch's is m v_prev (1 - e2 / e1).
    """
    problem = Quadratic(SHAPES, seed=1)
    p_paper, p_torch = problem.params(), problem.params()
    lr1, lr2, m, wd = 0.05, 0.005, 0.9, 5e-4
    paper = PaperSGD(p_paper, lr=lr1, momentum=m, weight_decay=wd)
    sgd = torch.optim.SGD(p_torch, lr=lr1, momentum=m, weight_decay=wd)
    for _ in range(6):
        _step(paper, problem, p_paper)
        _step(sgd, problem, p_torch)
        for a, b in zip(p_paper, p_torch):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(paper.state[a]["velocity"], -lr1 * sgd.state[b]["momentum_buffer"])

    v_prev = [paper.state[p]["velocity"].clone() for p in p_paper]
    before = [p.detach().clone() for p in p_paper]
    scale_lr_(paper, lr2 / lr1)
    scale_lr_(sgd, lr2 / lr1)
    _step(paper, problem, p_paper)
    _step(sgd, problem, p_torch)
    for a, b, v, w0 in zip(p_paper, p_torch, v_prev, before):
        expected = m * v * (1 - lr2 / lr1)
        torch.testing.assert_close(a.detach() - b.detach(), expected, rtol=1e-9, atol=1e-12)
        # and the difference is a real fraction of the step, not rounding
        assert (a.detach() - b.detach()).abs().max() > 0.5 * (a.detach() - w0).abs().max()


def test_state_dict_round_trip_continues_identically():
    problem = Quadratic(SHAPES, seed=2)
    params = problem.params()
    opt = PaperSGD(parameter_groups(_Holder(params), 0.05, 5e-4, "original"))
    for _ in range(4):
        _step(opt, problem, params)
    buffer = io.BytesIO()
    torch.save({"weights": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
    for _ in range(4):
        _step(opt, problem, params)

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = [nn.Parameter(w) for w in saved["weights"]]
    opt2 = PaperSGD(parameter_groups(_Holder(resumed), 0.05, 5e-4, "original"))
    opt2.load_state_dict(saved["opt"])
    for _ in range(4):
        _step(opt2, problem, resumed)
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)


class _Holder(nn.Module):
    """A module whose parameters are the given tensors, named as weights and biases alternately."""

    def __init__(self, params):
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"t{i}_{'weight' if i % 2 == 0 else 'bias'}", p)


def test_lr_changes_in_param_groups_are_honoured():
    problem = Quadratic([(3,)], seed=3)
    (w,) = params = problem.params()
    opt = PaperSGD(params, lr=0.1, momentum=0.9, weight_decay=0.0)
    _step(opt, problem, params)
    v = opt.state[w]["velocity"].clone()
    w0 = w.detach().clone()
    opt.param_groups[0]["lr"] = 0.0  # with eps inside the velocity, only momentum moves w now
    _step(opt, problem, params)
    torch.testing.assert_close(w.detach(), w0 + 0.9 * v)
    opt.param_groups[0]["lr"] = 0.3
    w1, v1 = w.detach().clone(), opt.state[w]["velocity"].clone()
    _step(opt, problem, params)
    torch.testing.assert_close(w.detach(), w1 + 0.9 * v1 - 0.3 * problem.grad(0, w1))


def test_zero_lr_from_the_start_leaves_weights_alone():
    problem = Quadratic(SHAPES)
    params = problem.params()
    opt = PaperSGD(params, lr=0.0)
    for _ in range(3):
        _step(opt, problem, params)
    for p, w in zip(params, problem.init):
        assert torch.equal(p.detach(), w)


def test_parameters_without_gradient_are_skipped():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = PaperSGD([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    torch.testing.assert_close(a.detach(), torch.ones(2) - 0.1 * (1 + 5e-4))


def test_closure_returns_the_loss():
    w = nn.Parameter(torch.tensor([2.0]))
    opt = PaperSGD([w], lr=0.1, weight_decay=0.0)

    def closure():
        opt.zero_grad()
        loss = (w**2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 4.0
    torch.testing.assert_close(w.detach(), torch.tensor([2.0 - 0.1 * 4.0]))


def test_defaults_and_bad_arguments():
    opt = PaperSGD([nn.Parameter(torch.zeros(1))])
    assert {k: opt.defaults[k] for k in ("lr", "momentum", "weight_decay")} == dict(lr=0.01, momentum=0.9, weight_decay=5e-4)
    for kwargs in (dict(lr=-1.0), dict(momentum=1.0), dict(momentum=-0.1), dict(weight_decay=-1.0)):
        with pytest.raises(ValueError):
            PaperSGD([nn.Parameter(torch.zeros(1))], **kwargs)


def _net():
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 3))


@pytest.mark.parametrize("scheme, bias_lr", [("paper", 0.01), ("original", 0.02)])
def test_parameter_groups_decay_the_weights_and_not_the_biases(scheme, bias_lr):
    """paper: the biases at the weights' lr (the paper's one rate), without decay (section 5 writes it for w;
    the released configs' wball=0); original (caffe's): at twice that rate. A schedule scales both alike."""
    model = _net()
    weights, biases = parameter_groups(model, 0.01, 5e-4, scheme)
    assert weights["params"] == [model[0].weight, model[2].weight] and biases["params"] == [model[0].bias, model[2].bias]
    assert (weights["lr"], weights["weight_decay"], biases["lr"], biases["weight_decay"]) == (0.01, 5e-4, bias_lr, 0.0)

    # in use: a bias moves by -bias_lr g with no decay; a weight by -eps (g + wd w)
    opt = PaperSGD([weights, biases])
    w0, b0 = model[2].weight.detach().clone(), model[2].bias.detach().clone()
    model(torch.randn(4, 1, 3, 3)).sum().backward()
    gw, gb = model[2].weight.grad.clone(), model[2].bias.grad.clone()
    opt.step()
    torch.testing.assert_close(model[2].bias.detach(), b0 - bias_lr * gb)
    torch.testing.assert_close(model[2].weight.detach(), w0 - 0.01 * (gw + 5e-4 * w0))
    scale_lr_(opt, 0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, bias_lr / 10])


def test_parameter_groups_uniform_and_bad_scheme():
    model = _net()
    (group,) = parameter_groups(model, 0.01, 5e-4, "uniform")
    assert len(group["params"]) == 4 and group["lr"] == 0.01 and group["weight_decay"] == 5e-4
    with pytest.raises(ValueError, match="scheme"):
        parameter_groups(model, 0.01, 5e-4, "adam")


def test_lr_scale_multiplies_a_groups_rate_in_the_update_and_nothing_else():
    """v <- 0.9 v - wd (s eps) w - (s eps) g for a group with lr_scale s; the schedule scales eps alone."""
    problem = Quadratic(SHAPES[:2])
    params = problem.params()
    opt = PaperSGD([dict(params=[params[0]], lr=0.05, lr_scale=0.1), dict(params=[params[1]], lr=0.05)],
                   weight_decay=5e-4)
    w = [t.clone() for t in problem.init]
    v = [torch.zeros_like(t) for t in w]
    for _ in range(3):
        _step(opt, problem, params)
        for i, eps in enumerate((0.005, 0.05)):
            v[i] = 0.9 * v[i] - 5e-4 * eps * w[i] - eps * problem.grad(i, w[i])
            w[i] = w[i] + v[i]
    for p, ref in zip(params, w):
        torch.testing.assert_close(p.detach(), ref)
    scale_lr_(opt, 0.1)
    assert [(g["lr"], g.get("lr_scale")) for g in opt.param_groups] == [(pytest.approx(0.005), 0.1),
                                                                         (pytest.approx(0.005), None)]


@pytest.mark.slow
def test_fused_sgd_scales_a_groups_lr_like_paper_sgd():
    """--step-kernels fused-sgd honours lr_scale (conv1's tenth of --recipe original) as PaperSGD does."""
    import os

    pytest.importorskip("triton")
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        pytest.skip("needs a GPU, or TRITON_INTERPRET=1")
    from alexnet.speed.fused_sgd import FusedPaperSGD

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).to(device)
    ref = copy.deepcopy(model)

    def groups(net):
        return [dict(params=list(net[0].parameters()), lr_scale=0.1), dict(params=list(net[2].parameters()))]

    fused, paper = FusedPaperSGD(groups(model), lr=0.05), PaperSGD(groups(ref), lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(3, 3, 8, 8, generator=g).to(device)
        for net, opt in ((model, fused), (ref, paper)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    assert fused._flat  # the one-pass update ran, not its fallback
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


# --- schedules -----------------------------------------------------------------------------


def _opt(lr=0.01):
    return PaperSGD(parameter_groups(_net(), lr, 5e-4, "original"))


def _lrs(schedule, errors):
    """The weights' lr after each epoch's step."""
    out = []
    for e in errors:
        schedule.step(e)
        out.append(round(schedule.optimizer.param_groups[0]["lr"], 12))
    return out


def test_plateau_divides_by_ten_after_patience_epochs():
    opt = _opt()
    sched = PlateauSchedule(opt, patience_epochs=3, threshold=0.01, max_reductions=3)
    errors = [0.9, 0.8, 0.7, 0.7, 0.695, 0.7, 0.6, 0.65, 0.6, 0.595, 0.59]
    #         imp  imp  imp  1    2(<thr) 3->cut imp  1  2  3 (0.595 not < 0.59)->cut, 1
    expected = [0.01, 0.01, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001, 0.001, 0.0001, 0.0001]
    assert _lrs(sched, errors) == expected
    assert sched.reductions == 2
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])


def test_plateau_counter_resets_after_a_reduction_and_stops_at_max():
    opt = _opt()
    sched = PlateauSchedule(opt, patience_epochs=2, threshold=0.0, max_reductions=2)
    reduced = [sched.step(0.5) for _ in range(9)]
    # first epoch improves on inf; then cuts every 2 flat epochs, but at most twice
    assert reduced == [False, False, True, False, True, False, False, False, False]
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert sched.reductions == 2


def test_plateau_gains_below_threshold_accumulate():
    """An error that falls by 0.6 x threshold every epoch is still improving: each second epoch
    is more than threshold below the best counted so far, so the lr is never cut."""
    sched = PlateauSchedule(_opt(), patience_epochs=2, threshold=0.01, max_reductions=3)
    errors = [0.5 - 0.006 * i for i in range(20)]
    assert not any(sched.step(e) for e in errors)
    assert sched.optimizer.param_groups[0]["lr"] == 0.01


def test_plateau_improvement_must_exceed_threshold():
    sched = PlateauSchedule(_opt(), patience_epochs=1, threshold=0.01)
    sched.step(0.5)
    assert sched.step(0.4901)  # 0.0099 better: not an improvement, patience 1 -> cut
    assert not sched.step(0.4799)  # 0.0201 below 0.5: an improvement


def test_plateau_bad_arguments():
    for kwargs in (dict(factor=1.0), dict(factor=0.0), dict(patience_epochs=0), dict(threshold=-0.1), dict(max_reductions=-1)):
        with pytest.raises(ValueError):
            PlateauSchedule(_opt(), **kwargs)
    with pytest.raises(ValueError):
        MilestoneSchedule(_opt(), (30,), factor=10.0)


def test_milestones():
    opt = _opt(0.01)
    sched = MilestoneSchedule(opt, (5, 2), factor=0.1)
    reduced = [sched.step() for _ in range(7)]
    assert reduced == [False, True, False, False, True, False, False]
    assert _lrs(MilestoneSchedule(_opt(0.01), (2, 5)), [None] * 7) == [0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001, 0.0001]
    assert opt.param_groups[1]["lr"] == pytest.approx(2e-4)


def test_paper_milestones_reduce_three_times_in_90_epochs():
    sched = MilestoneSchedule(_opt())
    assert sum(sched.step() for _ in range(90)) == 3


@pytest.mark.parametrize("kind", ["plateau", "milestones"])
def test_schedule_state_dict_round_trip_mid_run(kind):
    def make():
        opt = _opt(0.01)
        if kind == "plateau":
            return opt, PlateauSchedule(opt, patience_epochs=2, threshold=0.01, max_reductions=3)
        return opt, MilestoneSchedule(opt, (3, 6, 11))

    errors = [0.9, 0.8, 0.8, 0.8, 0.79, 0.7, 0.7, 0.71, 0.7, 0.69, 0.6, 0.6, 0.6, 0.6, 0.6]
    _, uninterrupted = make()
    expected = _lrs(uninterrupted, errors)
    assert len(set(expected)) >= 3  # the run spans at least two reductions

    opt, sched = make()
    first = _lrs(sched, errors[:7])
    saved = copy.deepcopy({"opt": opt.state_dict(), "sched": sched.state_dict()})
    opt2, sched2 = make()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert first + _lrs(sched2, errors[7:]) == expected


# --- the released configs' bias rate, caffe's, and frozen layers -------------------------------------


def test_cuda_convnet_biases_keep_their_rate_while_the_weights_fall():
    """layer-params-145.cfg ends with epsW 0.00001 and epsB 0.02 after the log's three reductions from
    epsW 0.01: the biases' rate is twice the initial weights' rate and stays there; no decay on biases."""
    from alexnet.optim import MilestoneSchedule

    model = _net()
    opt = PaperSGD(parameter_groups(model, 0.01, 5e-4, "cuda-convnet"))
    schedule = MilestoneSchedule(opt, (1, 2, 3))
    for _ in range(3):
        schedule.step()
    lrs = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert lrs == pytest.approx({"weights": 1e-5, "biases": 0.02})
    assert {g["kind"]: g["weight_decay"] for g in opt.param_groups} == {"weights": 5e-4, "biases": 0.0}
    # one step at these rates, by hand: a bias moves by -0.02 g, a weight by -1e-5 (g + wd w)
    w0, b0 = model[2].weight.detach().clone(), model[2].bias.detach().clone()
    model(torch.randn(4, 1, 3, 3)).sum().backward()
    gw, gb = model[2].weight.grad.clone(), model[2].bias.grad.clone()
    opt.step()
    torch.testing.assert_close(model[2].bias.detach(), b0 - 0.02 * gb)
    torch.testing.assert_close(model[2].weight.detach(), w0 - 1e-5 * (gw + 5e-4 * w0))


def test_caffe_and_its_old_name_scale_biases_with_the_weights():
    for scheme in ("caffe", "original"):
        opt = PaperSGD(parameter_groups(_net(), 0.01, 5e-4, scheme))
        scale_lr_(opt, 0.1)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.002])


def test_own_layers_get_their_own_groups_and_frozen_groups_do_not_move():
    """A frozen group keeps its weights and its velocity, as cuda-convnet skips a layer with rate 0."""
    from alexnet.model import AlexNet

    model = AlexNet(10, stem="small", input_size=32, width=0.125)
    groups = parameter_groups(model, 0.01, 5e-4, "cuda-convnet", own_layers=("conv1",))
    assert [(g["layer"], g["kind"]) for g in groups] == [("conv1", "weights"), ("conv1", "biases"),
                                                         (None, "weights"), (None, "biases")]
    assert groups[0]["params"] == [model.features.conv1.weight] and groups[1]["params"] == [model.features.conv1.bias]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = PaperSGD(groups)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for frozen in (False, True):
        for g in opt.param_groups:
            g["frozen"] = frozen and g["layer"] == "conv1"
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        v_before = opt.state[model.features.conv1.weight].get("velocity")
        v_before = None if v_before is None else v_before.clone()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert ("features.conv1.weight" in moved) is not frozen and "features.conv2.weight" in moved
        if frozen:
            assert torch.equal(opt.state[model.features.conv1.weight]["velocity"], v_before)
    with pytest.raises(ValueError, match="no layer"):
        parameter_groups(model, 0.01, 5e-4, "paper", own_layers=("conv9",))
