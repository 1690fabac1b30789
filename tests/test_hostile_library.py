"""The library used the wrong way: every mistake ends in one ValueError or TypeError naming what is
wrong, never a traceback from deep inside torch, a silently wrong result or a silent no-op.

Results are compared with references computed another way: the LRN formula as a NumPy loop, the
paper's update rule as a hand-written loop.
"""

from __future__ import annotations

import copy
import io
import re

import numpy as np
import pytest
import torch

from alexnet import AlexNet, LocalResponseNorm, MilestoneSchedule, PaperSGD, PlateauSchedule, init_weights_
from alexnet.errors import UserError
from alexnet.inference import expand_image_paths, predict_files
from alexnet.kernels import lrn_cpu
from alexnet.lrn import SpatialResponseNorm
from helpers import lrn_numpy

SMALL = dict(in_channels=1, input_size=28, stem="small", width=0.125)


def small_net(**kw) -> AlexNet:
    torch.manual_seed(0)
    return AlexNet(10, **{**SMALL, **kw}).eval()


# --- AlexNet's arguments -------------------------------------------------------------------------

BAD_ARGS = [
    ("towers", 2.0), ("towers", True), ("towers", "2"),
    ("lrn", "no"), ("lrn", None), ("overlapping_pool", "no"), ("cnorm2", 1), ("lrn_before_relu", "yes"),
    ("dropout", "0.5"), ("dropout", True), ("dropout", float("nan")),
    ("width", float("nan")), ("width", float("inf")), ("width", "1"),
    ("input_size", 28.0), ("input_size", "28"), ("input_size", True),
    ("conv_channels", 48), ("conv_channels", "abcde"),
    ("stem", []), ("activation", None), ("lrn_convention", ["paper"]), ("dropout_style", None),
]


@pytest.mark.parametrize("name,value", BAD_ARGS, ids=[f"{n}={v!r}" for n, v in BAD_ARGS])
def test_bad_constructor_arguments_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        AlexNet(10, **{**SMALL, name: value})


def test_numpy_whole_numbers_are_accepted_as_ints():
    net = AlexNet(np.int64(10), **SMALL, conv_channels=np.array([8, 16, 16, 16, 16]), fc_units=np.int64(32))
    assert [net.features.conv1.out_channels, net.classifier.fc6.out_features, net.classifier.fc8.out_features] == [8, 32, 10]
    assert type(net.num_classes) is int


# --- AlexNet.forward and fc7_features on inputs it cannot take ---------------------------------------

BAD_INPUTS = [
    ("not a tensor", lambda x: x.numpy(), TypeError, "torch.Tensor"),
    ("uint8 images", lambda x: (x * 50).clamp(0, 255).to(torch.uint8), TypeError, "floating-point"),
    ("one image without the batch axis", lambda x: x[0], ValueError, r"x\[None\]"),
    ("5-d", lambda x: x[None], ValueError, r"\(N, C, H, W\)"),
    ("three channels for a grayscale net", lambda x: x.expand(-1, 3, -1, -1), ValueError, "1-channel"),
    ("larger crops than built for", lambda x: torch.nn.functional.pad(x, (2, 2, 2, 2)), ValueError, "input_size=28"),
    ("a crop too small for the pools", lambda x: x[..., :4, :4], ValueError, "input_size=28"),
    ("float64 images for float32 weights", lambda x: x.double(), TypeError, r"weights are torch.float32 and the "
     r"images torch.float64: convert the images \(x.to\(torch.float32\)\)"),
    ("images on another device", lambda x: x.to("meta"), ValueError, "weights are on cpu and the images on meta"),
]


def test_images_of_another_float_type_run_under_autocast():
    """autocast casts the float32 weights to the images' bfloat16 itself: no refusal there."""
    net = small_net().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.randn(2, 1, 28, 28).bfloat16()).shape == (2, 10)


@pytest.mark.parametrize("method", ["forward", "fc7_features"])
@pytest.mark.parametrize("what,make,error,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_inputs_the_network_cannot_take_are_refused_in_one_line(method, what, make, error, words):
    net = small_net()
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(error, match=words):
        getattr(net, method)(make(x))


def test_crops_that_pool_to_the_same_side_still_work():
    """A 227 crop on a network built for 224 (Caffe's crop) gives conv5 the same 6x6 maps."""
    torch.manual_seed(0)
    net = AlexNet(10, width=0.0625).eval()
    assert net(torch.randn(1, 3, 227, 227)).shape == (1, 10)


@pytest.mark.parametrize("batch", [0, 1])
def test_batches_of_zero_and_one(batch):
    net = small_net()
    x = torch.randn(3, 1, 28, 28)
    out = net(x[:batch])
    assert out.shape == (batch, 10)
    if batch:  # a row does not depend on the rest of the batch in eval mode
        torch.testing.assert_close(out, net(x)[:batch], rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit is deprecated, still shipped
def test_torchscript_runs_the_same_network():
    """torch.jit.script compiles the network (LRN as the plain formula, not the C kernel) and the
    saved script reloads: the same outputs as eager mode."""
    net = small_net(cnorm2=True, lrn_convention="caffe")
    x = torch.randn(2, 1, 28, 28)
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer)
    with torch.no_grad():
        want = net(x)
        torch.testing.assert_close(scripted(x), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(reloaded(x), want, rtol=1e-5, atol=1e-6)


def test_copies_and_state_dict_round_trip():
    net = small_net()
    x = torch.randn(2, 1, 28, 28)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = AlexNet(10, **SMALL)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    with torch.no_grad():
        want = net(x)
        for other in (copy.deepcopy(net), fresh.eval()):
            torch.testing.assert_close(other(x), want, rtol=0, atol=0)


# --- LocalResponseNorm ---------------------------------------------------------------------------

BAD_LRN = [
    ("size", 2.5), ("size", True), ("size", "5"), ("groups", 2.0), ("groups", "2"),
    ("alpha", "x"), ("alpha", float("nan")), ("alpha", -1e-4), ("beta", float("inf")), ("k", 0.0), ("k", -1.0),
]


@pytest.mark.parametrize("name,value", BAD_LRN, ids=[f"{n}={v!r}" for n, v in BAD_LRN])
def test_bad_lrn_arguments_are_named(name, value):
    with pytest.raises(ValueError, match=name):
        LocalResponseNorm(**{name: value})


@pytest.mark.parametrize("x", [torch.ones(1, 4, 2, 2, dtype=torch.int64), torch.ones(1, 4, 2, 2, dtype=torch.bool),
                               torch.ones(1, 4, 2, 2, dtype=torch.complex64)], ids=["int64", "bool", "complex64"])
def test_lrn_refuses_non_float_tensors(x):
    """Integers were normalised in float32 and truncated back to integers (all zeros, mostly)."""
    with pytest.raises(TypeError, match="floating-point"):
        LocalResponseNorm()(x)


def test_lrn_refuses_arrays():
    with pytest.raises(TypeError, match="torch.Tensor"):
        LocalResponseNorm()(np.ones((1, 4, 2, 2), np.float32))


@pytest.mark.parametrize("shape", [(3, 6), (2, 6, 4), (2, 6, 2, 3, 4)], ids=["2d", "3d", "5d"])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_lrn_on_any_rank_and_layout_matches_numpy(shape, layout):
    torch.manual_seed(0)
    x = torch.randn(*shape[:1], 2 * shape[1], *shape[2:]) * 5
    x = x[:, ::2] if layout == "strided" else x[:, : shape[1]]
    out = LocalResponseNorm(3, 0.05, 0.75, 1.5, groups=2)(x)
    np.testing.assert_allclose(out.numpy(), lrn_numpy(x.numpy(), 3, 0.05, 0.75, 1.5, groups=2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)])
def test_lrn_low_and_high_precision_match_numpy(dtype, tol):
    torch.manual_seed(0)
    x = (torch.randn(2, 6, 3, 3) * 5).to(dtype)
    out = LocalResponseNorm(5, 0.05, 0.75, 2.0)(x)
    assert out.dtype == dtype
    np.testing.assert_allclose(out.double().numpy(), lrn_numpy(x.double().numpy(), 5, 0.05, 0.75, 2.0), rtol=tol, atol=tol)


def test_spatial_norm_refuses_inputs_without_a_map():
    with pytest.raises(ValueError, match=r"\(\[N,\] C, H, W\)"):
        SpatialResponseNorm()(torch.ones(4, 4))


def test_cpu_kernel_refuses_groups_that_do_not_divide_the_channels():
    """Called directly, the C kernel read 6 channels as 4 blocks of 1 and returned garbage."""
    if not lrn_cpu.available():
        pytest.skip("no C compiler here")
    with pytest.raises(ValueError, match="groups=4"):
        lrn_cpu.local_response_norm(torch.ones(1, 6, 2, 2), 5, 1e-4, 0.75, 2.0, 4)


def test_gradient_penalty_through_the_network_is_not_silently_zero():
    """d/dx of |dL/dx|^2 through LRN (the C kernel on float32 CPU tensors) equals the same through a
    copy whose LRN layers are the plain formula in float64 autograd."""
    from alexnet.lrn import lrn_reference

    class Formula(torch.nn.Module):
        def __init__(self, lrn):
            super().__init__()
            self.lrn = lrn

        def forward(self, x):
            return lrn_reference(x, self.lrn.size, self.lrn.alpha, self.lrn.beta, self.lrn.k, self.lrn.convention,
                                 self.lrn.groups)

    net = small_net(dropout=0.0)
    ref = copy.deepcopy(net).double()
    for name in ("lrn1", "lrn2"):
        setattr(ref.features, name, Formula(getattr(net.features, name)))
    x = torch.randn(2, 1, 28, 28)

    def penalty_grad(model, x):
        x = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        (gg,) = torch.autograd.grad(g.square().sum(), x)
        return gg.double()

    torch.testing.assert_close(penalty_grad(net, x), penalty_grad(ref, x.double()), rtol=1e-3, atol=1e-6)


# --- PaperSGD ------------------------------------------------------------------------------------

def _param(n=3):
    return torch.nn.Parameter(torch.ones(n))


BAD_SGD = [("lr", "0.1", "learning rate"), ("lr", None, "learning rate"), ("lr", float("nan"), "learning rate"),
           ("lr", float("inf"), "learning rate"), ("weight_decay", float("nan"), "weight decay"),
           ("weight_decay", "x", "weight decay"), ("momentum", 1.0, "momentum")]


@pytest.mark.parametrize("name,value,words", BAD_SGD, ids=[f"{n}={v!r}" for n, v, _ in BAD_SGD])
@pytest.mark.parametrize("where", ["constructor", "group", "add_param_group", "load_state_dict"])
def test_bad_hyperparameters_are_refused_wherever_they_come_from(name, value, words, where):
    """Groups and loaded states were never checked: a group's lr of -1 trained uphill silently."""
    p = _param()
    with pytest.raises(ValueError, match=words):
        if where == "constructor":
            PaperSGD([p], **{name: value})
        elif where == "group":
            PaperSGD([dict(params=[p], **{name: value})])
        elif where == "add_param_group":
            PaperSGD([p]).add_param_group(dict(params=[_param()], **{name: value}))
        else:
            state = PaperSGD([p]).state_dict()
            state["param_groups"][0][name] = value
            PaperSGD([p]).load_state_dict(state)


def test_a_parameter_listed_twice_is_refused():
    """It was stepped twice per step: w went 0 -> -4 where one step of lr 1 gives -1."""
    p = _param()
    with pytest.raises(ValueError, match="twice"):
        PaperSGD([p, p])


def test_sparse_gradients_are_refused_before_any_group_moves():
    dense = _param(2)
    embedding = torch.nn.Embedding(3, 2, sparse=True)
    opt = PaperSGD([dict(params=[dense]), dict(params=embedding.parameters())], lr=1.0)
    dense.grad = torch.ones(2)
    embedding(torch.tensor([0])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert dense.tolist() == [1.0, 1.0]


def test_state_of_another_network_is_refused_and_the_optimizer_left_as_it_was():
    small, large = _param(4), _param(5)
    saved = PaperSGD([small], lr=0.1)
    small.grad = torch.ones(4)
    saved.step()
    fresh = PaperSGD([large], lr=0.5)
    with pytest.raises(ValueError, match="another network"):
        fresh.load_state_dict(saved.state_dict())
    assert fresh.param_groups[0]["lr"] == 0.5 and not fresh.state


def test_groups_and_a_state_dict_round_trip_follow_the_paper_rule():
    """v <- m v - wd lr w - lr g; w <- w + v per group, by hand in float64; halfway the state is
    saved and loaded into a fresh optimizer over fresh parameters, which carries on identically."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(2, 3))
    hyper = [dict(lr=0.1, momentum=0.9, weight_decay=0.01), dict(lr=0.02, momentum=0.5, weight_decay=0.0)]
    opt = PaperSGD([dict(params=[a], **hyper[0]), dict(params=[b], **hyper[1])])
    ref_w = [a.detach().double().clone(), b.detach().double().clone()]
    ref_v = [torch.zeros_like(w) for w in ref_w]
    params = [a, b]
    for step in range(6):
        grads = [torch.randn_like(p) for p in params]
        if step == 3:  # a new process: fresh parameters, a fresh optimizer with other defaults, the saved state
            state = copy.deepcopy(opt.state_dict())
            params = [torch.nn.Parameter(p.detach().clone()) for p in params]
            opt = PaperSGD([dict(params=[params[0]]), dict(params=[params[1]])], lr=9.0, momentum=0.0)
            opt.load_state_dict(state)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (h, g) in enumerate(zip(hyper, grads)):
            ref_v[i] = h["momentum"] * ref_v[i] - h["weight_decay"] * h["lr"] * ref_w[i] - h["lr"] * g.double()
            ref_w[i] = ref_w[i] + ref_v[i]
    for p, w in zip(params, ref_w):
        torch.testing.assert_close(p.detach().double(), w, rtol=1e-5, atol=1e-6)


def test_parameters_without_gradients_are_left_alone():
    p, q = _param(), _param()
    opt = PaperSGD([p, q], lr=1.0)
    p.grad = torch.ones(3)
    opt.step()
    assert q.tolist() == [1.0, 1.0, 1.0] and q not in opt.state
    assert p.tolist() != [1.0, 1.0, 1.0]


# --- inference entry points ----------------------------------------------------------------------

def test_one_path_given_bare_is_refused_not_read_letter_by_letter(tmp_path):
    """``expand_image_paths("cat.jpg")`` returned ["c", "a", "t", ...]."""
    with pytest.raises(TypeError, match="list of paths"):
        expand_image_paths(str(tmp_path))
    with pytest.raises(TypeError, match="list of paths"):
        next(predict_files(str(tmp_path / "none.pt"), "cat.jpg", device=torch.device("cpu")))


@pytest.mark.parametrize("top", ["3", 2.5, 0, True])
def test_top_must_be_a_whole_number(top, tmp_path):
    with pytest.raises(UserError, match="--top"):
        next(predict_files(str(tmp_path / "none.pt"), ["cat.jpg"], device=torch.device("cpu"), top=top))


# --- the schedules and init_weights_ -------------------------------------------------------------

def _opt():
    return PaperSGD([_param()], lr=1.0)


BAD_SCHEDULES = [
    ("plateau factor str", lambda: PlateauSchedule(_opt(), factor="0.1"), ValueError, "factor"),
    ("plateau threshold nan", lambda: PlateauSchedule(_opt(), threshold=float("nan")), ValueError, "threshold"),
    ("plateau patience 1.5", lambda: PlateauSchedule(_opt(), patience_epochs=1.5), ValueError, "patience"),
    ("plateau max_reductions 2.5", lambda: PlateauSchedule(_opt(), max_reductions=2.5), ValueError, "max_reductions"),
    ("plateau on a model", lambda: PlateauSchedule(torch.nn.Linear(2, 2)), TypeError, "optimizer"),
    ("plateau step str", lambda: PlateauSchedule(_opt()).step("0.5"), TypeError, "validation error"),
    ("plateau empty state", lambda: PlateauSchedule(_opt()).load_state_dict({}), ValueError, "best"),
    ("milestones one int", lambda: MilestoneSchedule(_opt(), 30), ValueError, "milestones"),
    ("milestones a str", lambda: MilestoneSchedule(_opt(), "30"), ValueError, "milestones"),
    ("milestones 30.5", lambda: MilestoneSchedule(_opt(), [30.5]), ValueError, "milestones"),
    ("milestones 0", lambda: MilestoneSchedule(_opt(), [0, 5]), ValueError, "milestones"),
    ("milestones twice", lambda: MilestoneSchedule(_opt(), [30, 30]), ValueError, "each epoch once"),
    ("milestones empty state", lambda: MilestoneSchedule(_opt()).load_state_dict({}), ValueError, "epochs_done"),
    ("init_weights_ on a Linear", lambda: init_weights_(torch.nn.Linear(2, 2)), TypeError, "AlexNet"),
]


@pytest.mark.parametrize("what,call,error,words", BAD_SCHEDULES, ids=[b[0] for b in BAD_SCHEDULES])
def test_schedule_and_init_mistakes_are_refused_in_one_line(what, call, error, words):
    """``MilestoneSchedule(opt, "30")`` reduced the lr after epoch 3 (the milestones were the letters),
    ``threshold=nan`` reduced it every ``patience`` epochs, a float patience or an optimizer that is
    not one failed only epochs later."""
    with pytest.raises(error, match=words):
        call()


def test_milestones_reduce_after_the_listed_epochs():
    opt = _opt()
    schedule = MilestoneSchedule(opt, [np.int64(2), 4], factor=0.5)
    lrs = []
    for _ in range(5):
        schedule.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [1.0, 0.5, 0.5, 0.25, 0.25]


def test_a_parameter_listed_twice_in_a_generator_group_is_refused():
    p = _param()
    with pytest.raises(ValueError, match="twice"):
        PaperSGD([dict(params=(q for q in [p, p]))])
    opt = PaperSGD([dict(params=(q for q in [p]))])  # a generator group is taken whole
    assert opt.param_groups[0]["params"] == [p]


# --- the training entry point and its config, built in code ------------------------------------


@pytest.mark.parametrize("changes, says", [
    (dict(epochs="2"), "config key 'epochs' wants an integer, got '2'"),
    (dict(lr="0.1"), "config key 'lr' wants a number"),
    (dict(lrn="no"), "config key 'lrn' wants true or false"),
    (dict(freeze="conv1"), "config key 'freeze' wants a list of strings"),
    (dict(epochs=True), "config key 'epochs' wants an integer, got True"),
    (dict(channels=(48.5, 128, 192, 192, 256)), "config key 'channels' wants a list of integers"),
])
def test_a_config_built_in_code_refuses_values_of_the_wrong_type(changes, says):
    from alexnet.config import TrainConfig
    from alexnet.errors import UserError

    with pytest.raises(UserError, match=re.escape(says)):
        TrainConfig(**changes)


def test_a_config_built_in_code_takes_numpy_numbers_lists_and_whole_floats():
    from alexnet.config import TrainConfig

    config = TrainConfig(lr=1, epochs=np.int64(3), lrn=np.bool_(False), freeze=["conv1"])
    assert (config.lr, config.epochs, config.lrn, config.freeze) == (1.0, 3, False, ("conv1",))
    assert (type(config.lr), type(config.epochs), type(config.lrn)) == (float, int, bool)


@pytest.mark.parametrize("call, says", [
    (lambda train, c, d, r: train("epochs=2", d, r), "train takes a TrainConfig"),
    (lambda train, c, d, r: train(dict(epochs=2), d, r), "train takes a TrainConfig"),
    (lambda train, c, d, r: train(c, d, None), "train's run_dir is a folder path"),
    (lambda train, c, d, r: train(c, 5, r), "train's data is a folder path"),
    (lambda train, c, d, r: train(c, d, r, resume="no"), "train's resume is True or False"),
    (lambda train, c, d, r: train(c, d, r, log=None), "train's log is a function"),
    (lambda train, c, d, r: train(c, d, r, stop_requested=True), "train's stop_requested is a function"),
])
def test_train_refuses_arguments_of_the_wrong_type_before_touching_anything(call, says, tmp_path):
    from alexnet.config import TrainConfig
    from alexnet.training import train

    with pytest.raises(TypeError, match=re.escape(says)):
        call(train, TrainConfig(), str(tmp_path / "data"), str(tmp_path / "run"))
    assert not list(tmp_path.iterdir())


def test_evaluation_of_no_network_says_so():
    from alexnet.evaluate import evaluate, probabilities

    with pytest.raises(ValueError, match="needs at least one network"):
        probabilities([], torch.zeros(1, 8, 8, 3, dtype=torch.uint8), ten_crop=False)
    with pytest.raises(ValueError, match="needs at least one network"):
        evaluate([], [])
