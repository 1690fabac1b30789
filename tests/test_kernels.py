"""The LRN kernels (alexnet.kernels) against references computed other ways.

* the formula as a NumPy loop over channels (``helpers.lrn_numpy``, written apart from the package);
* :func:`alexnet.lrn.lrn_reference` in float64, whose autograd gives the reference gradient;
* ``torch.nn.functional.local_response_norm`` (it divides alpha by n: alpha = n * alpha_eff).

Every backend runs here: ``eager`` (the closed-form autograd Function, also gradchecked in
float64), ``cpu`` (the compiled C loops, where a C compiler exists) and ``triton`` (on CUDA if
present, else in Triton's interpreter on CPU tensors, small shapes only).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # run the Triton kernels in the interpreter; set before import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import alexnet.lrn as dispatch  # noqa: E402  (picks the backend)
from alexnet.kernels import lrn_autograd, lrn_cpu, lrn_triton  # noqa: E402
from alexnet.lrn import lrn_reference  # noqa: E402
from helpers import compile_for_sm90, lrn_numpy

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton_runs_here() -> bool:
    if not lrn_triton.available():
        return False
    if torch.cuda.is_available():
        return True
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(lrn_triton._lrn_planar_forward, InterpretedFunction)


BACKENDS = {
    "eager": (lrn_autograd.local_response_norm, None),
    "cpu": (
        lrn_cpu.local_response_norm,
        None if lrn_cpu.available() else f"no CPU kernel: {lrn_cpu.unavailable_reason()}",
    ),
    "triton": (
        lrn_triton.local_response_norm,
        None if _triton_runs_here() else "triton not importable (or not in interpreter mode without CUDA)",
    ),
}


TRITON = pytest.param("triton", marks=pytest.mark.slow)  # in Triton's interpreter without a GPU


def _backend(name):
    fn, skip = BACKENDS[name]
    if skip:
        pytest.skip(skip)
    return fn


def _device(name):
    return DEVICE if name == "triton" else "cpu"


def _input(shape, dtype=torch.float32, scale=30.0, seed=0, signed=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    return (x if signed else x.abs()).to(dtype)


def _layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


# alpha large enough that the normaliser (and its gradient) is far from the constant k
PARAMS = dict(alpha=2e-3, beta=0.75, k=2.0)

SHAPES = [  # (N, C, H, W), groups, size
    ((1, 1, 1, 1), 1, 5),
    ((2, 2, 1, 1), 2, 5),
    ((1, 5, 1, 3), 1, 4),
    ((3, 7, 2, 3), 1, 5),
    ((2, 10, 3, 2), 2, 3),
    ((2, 12, 4, 4), 2, 2),
    ((1, 96, 5, 5), 2, 5),
    ((2, 64, 3, 3), 1, 6),
    ((1, 300, 2, 2), 1, 5),
    ((1, 256, 9, 7), 2, 1),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,groups,size", SHAPES)
@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_forward_matches_numpy_formula(backend, shape, groups, size, layout):
    fn = _backend(backend)
    x = _layout(_input(shape), layout)
    out = fn(x, size, PARAMS["alpha"], PARAMS["beta"], PARAMS["k"], groups)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    expected = lrn_numpy(x.numpy(), size, groups=groups, **PARAMS)
    np.testing.assert_allclose(out.numpy(), expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6, 1.3])
@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_every_beta(backend, beta):
    """The C kernel has square-root paths for 0.75, 0.5 and 1; any other beta uses pow."""
    fn = _backend(backend)
    x = _input((2, 9, 3, 2))
    out = fn(x, 5, 0.01, beta, 1.5, 1)
    np.testing.assert_allclose(out.numpy(), lrn_numpy(x.numpy(), 5, 0.01, beta, 1.5), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("backend", ["eager", "cpu", TRITON])
def test_matches_torch_local_response_norm(backend, groups):
    """torch uses alpha / n; with groups each block of channels is torch's LRN on its own."""
    fn = _backend(backend)
    x = _input((2, 96, 6, 6)).to(_device(backend))
    alpha_eff = 1e-3
    out = fn(x, 5, alpha_eff, 0.75, 2.0, groups)
    blocks = x.reshape(2 * groups, 96 // groups, 6, 6)
    expected = F.local_response_norm(blocks, size=5, alpha=5 * alpha_eff, beta=0.75, k=2.0).reshape(x.shape)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def _check_gradient(fn, x, size, groups, params=PARAMS, rtol=1e-5, atol=1e-6, seed=1):
    """fn's input gradient for a random output gradient vs autograd of lrn_reference in float64."""
    grad_out = _input(x.shape, torch.float64, scale=1.0, seed=seed, signed=True)
    ref_x = x.detach().cpu().double().requires_grad_(True)
    ref = lrn_reference(ref_x, size, params["alpha"], params["beta"], params["k"], groups=groups)
    ref.backward(grad_out)
    xg = x.detach().clone().requires_grad_(True)
    out = fn(xg, size, params["alpha"], params["beta"], params["k"], groups)
    out.backward(grad_out.to(x.dtype).to(x.device))
    assert xg.grad.shape == x.shape and xg.grad.dtype == x.dtype
    torch.testing.assert_close(out.detach().cpu().double(), ref.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(xg.grad.cpu().double(), ref_x.grad, rtol=rtol, atol=atol)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,groups,size", SHAPES)
@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_backward_matches_autograd_of_reference(backend, shape, groups, size, layout):
    fn = _backend(backend)
    _check_gradient(fn, _layout(_input(shape), layout), size, groups)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape,groups,size", [SHAPES[3], SHAPES[4], SHAPES[5], SHAPES[6]])
@pytest.mark.slow  # Triton's interpreter without a GPU
def test_triton_forward_and_backward(shape, groups, size, layout):
    fn = _backend("triton")
    _check_gradient(fn, _layout(_input(shape), layout).to(DEVICE), size, groups)


@pytest.mark.parametrize("backend", ["eager", "cpu", TRITON])
def test_signed_inputs_and_large_alpha(backend):
    """LRN before ReLU (the original code's conv1) sees negative inputs; a large alpha makes
    the normaliser's own gradient a large part of the total."""
    fn = _backend(backend)
    params = dict(alpha=0.3, beta=0.75, k=2.0)
    x = _input((2, 8, 3, 3), scale=3.0, signed=True).to(_device(backend))
    _check_gradient(fn, x, 5, 2, params=params)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size,groups", [(5, 1), (5, 2), (4, 2), (3, 1), (1, 1)])
def test_gradcheck_autograd_function(size, groups, layout):
    x = _layout(_input((2, 6, 2, 3), torch.float64, scale=3.0, signed=True), layout).requires_grad_(True)
    fn = lambda t: lrn_autograd.LRNFunction.apply(t, size, 0.3, 0.75, 2.0, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    fn = lambda t: lrn_autograd.LRNFunction.apply(t, size, 0.05, 1.3, 0.7, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "cpu", TRITON])
def test_bfloat16_is_computed_in_float32(backend):
    fn = _backend(backend)
    x = _input((2, 16, 4, 4), torch.bfloat16).to(_device(backend))
    out = fn(x, 5, PARAMS["alpha"], PARAMS["beta"], PARAMS["k"], 2)
    assert out.dtype == torch.bfloat16
    expected = lrn_numpy(x.float().cpu().numpy(), 5, groups=2, **PARAMS)  # exact on bf16 inputs
    np.testing.assert_allclose(out.float().cpu().numpy(), expected, rtol=8e-3, atol=1e-2)
    _check_gradient(fn, x, 5, 2, rtol=3e-2, atol=2e-2)


@pytest.mark.parametrize("backend", ["eager", "cpu", TRITON])
def test_non_contiguous_inputs(backend):
    fn = _backend(backend)
    base = _input((3, 20, 6, 8)).to(_device(backend))
    views = [
        base[:, ::2],  # every other channel
        base[1:, :, 1:5, ::3],  # cropped and strided in space
        base.transpose(2, 3),  # H and W swapped
        base.permute(0, 1, 3, 2).contiguous(memory_format=torch.channels_last).transpose(2, 3),
    ]
    for x in views:
        assert not x.is_contiguous()
        _check_gradient(fn, x, 5, 2)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_other_ranks(backend):
    """(N, C) and (N, C, L) inputs, as torch's local_response_norm accepts, and (N, C, D, H, W)."""
    fn = _backend(backend)
    for shape in [(3, 10), (2, 10, 7), (2, 10, 3, 2, 2)]:
        x = _input(shape)
        out = fn(x, 5, PARAMS["alpha"], PARAMS["beta"], PARAMS["k"], 2)
        np.testing.assert_allclose(out.numpy(), lrn_numpy(x.numpy(), 5, groups=2, **PARAMS), rtol=2e-6, atol=1e-6)
    x = _input((2, 10, 3, 2, 2)).contiguous(memory_format=torch.channels_last_3d)
    _check_gradient(fn, x, 5, 2)


@pytest.mark.parametrize("backend", ["eager", "cpu"])
def test_empty_batch_and_no_grad(backend):
    fn = _backend(backend)
    empty = torch.zeros(0, 8, 3, 3, requires_grad=True)
    out = fn(empty, 5, 1e-4, 0.75, 2.0, 2)
    assert out.shape == empty.shape
    out.sum().backward()
    assert empty.grad.shape == empty.shape
    x = _input((2, 8, 3, 3))
    with torch.no_grad():
        out = fn(x, 5, 1e-4, 0.75, 2.0, 2)
    np.testing.assert_allclose(out.numpy(), lrn_numpy(x.numpy(), 5, 1e-4, 0.75, 2.0, 2), rtol=2e-6)


@pytest.mark.parametrize("shape", [(2, 96, 55, 55), (3, 256, 27, 27)])
@pytest.mark.parametrize("backend", ["cpu", "eager"])
def test_paper_shapes_against_torch(backend, shape):
    """conv1's and conv2's outputs (rows of 3025 positions span several NCHW tiles of the C
    kernel, 729 less than one), both layouts, forward and backward against torch's LRN."""
    fn = _backend(backend)
    n, c, h, w = shape
    x = torch.randn(shape).relu_() * 20
    g = torch.randn_like(x)
    blocks = x.reshape(2 * n, c // 2, h, w).clone().requires_grad_(True)
    expected = F.local_response_norm(blocks, 5, 5e-4, 0.75, 2.0)
    expected.backward(g.reshape(blocks.shape))
    for layout in ["contiguous", "channels_last"]:
        xl = _layout(x, layout).detach().clone().requires_grad_(True)
        out = fn(xl, 5, 1e-4, 0.75, 2.0, 2)
        out.backward(_layout(g, layout))
        torch.testing.assert_close(out, expected.detach().reshape(x.shape), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xl.grad, blocks.grad.reshape(x.shape), rtol=1e-5, atol=1e-6)


def test_dispatch_picks_a_backend_per_tensor():
    assert dispatch.backend_for(torch.zeros(1, 4, 2, 2, dtype=torch.float64)) == "eager"
    expected = "cpu" if lrn_cpu.available() else "eager"
    assert dispatch.backend_for(torch.zeros(1, 4, 2, 2)) == expected
    assert dispatch.backend_for(torch.zeros(1, 4, 2, 2, dtype=torch.bfloat16)) == expected
    if torch.cuda.is_available():
        expected = "triton" if lrn_triton.available() else "eager"
        assert dispatch.backend_for(torch.zeros(1, 4, 2, 2, device="cuda")) == expected


def test_falls_back_to_eager_with_a_warning_when_the_c_kernel_cannot_be_built(monkeypatch):
    def no_compiler():
        raise RuntimeError("no C compiler (cc or gcc) on PATH")

    monkeypatch.setattr(lrn_cpu.LIBRARY, "_compile", no_compiler)
    monkeypatch.setattr(lrn_cpu.LIBRARY, "loaded", None)
    monkeypatch.setattr(lrn_cpu.LIBRARY, "_error", None)
    x = _input((2, 6, 3, 3))
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert dispatch.backend_for(x) == "eager"
    assert "no C compiler" in lrn_cpu.unavailable_reason()
    out = dispatch.local_response_norm(x, 5, 1e-3, 0.75, 2.0, 2)
    np.testing.assert_allclose(out.numpy(), lrn_numpy(x.numpy(), 5, 1e-3, 0.75, 2.0, 2), rtol=2e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups"):
        dispatch.local_response_norm(torch.zeros(1, 5, 2, 2), 5, 1e-4, 0.75, 2.0, 2)
    with pytest.raises(ValueError, match="size"):
        dispatch.local_response_norm(torch.zeros(1, 4, 2, 2), 0, 1e-4, 0.75, 2.0)
    with pytest.raises(ValueError, match="shape"):
        dispatch.local_response_norm(torch.zeros(4), 5, 1e-4, 0.75, 2.0)


@pytest.mark.slow
def test_custom_ops_pass_torch_library_checks():
    """Schema, fake (meta) implementation and autograd registration, as torch.compile needs."""
    _backend("cpu")
    base = _input((2, 12, 3, 4))
    for x in [base, base[:, ::2], base.contiguous(memory_format=torch.channels_last)]:
        x = x.detach().requires_grad_(True)
        torch.library.opcheck(lrn_cpu.lrn_cpu, (x, 5, 1e-3, 0.75, 2.0, 2))
        g = _input(x.shape, seed=3, signed=True)
        torch.library.opcheck(lrn_cpu.lrn_cpu_backward, (g, x.detach(), 5, 1e-3, 0.75, 2.0, 2))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside torch.compile itself
def test_torch_compile_traces_through_the_dispatch():
    """fullgraph=True: choosing the backend and calling the kernel leave no graph break."""
    backend = "cpu" if lrn_cpu.available() else "eager"
    if backend == "eager":
        pytest.skip("the eager backend is plain torch")

    def loss(x):
        return (dispatch.local_response_norm(torch.relu(x), 5, 1e-2, 0.75, 2.0, 2) * 3).sum()

    x = _input((2, 8, 3, 3), scale=3.0, signed=True).requires_grad_(True)
    torch.compile(loss, fullgraph=True)(x).backward()
    ref_x = x.detach().double().requires_grad_(True)
    (lrn_reference(torch.relu(ref_x), 5, 1e-2, 0.75, 2.0, groups=2) * 3).sum().backward()
    torch.testing.assert_close(x.grad.double(), ref_x.grad, rtol=1e-5, atol=1e-6)


COMPILE_FOR_SM90 = """
from alexnet.kernels import lrn_triton as lt

planar = {"plane": "i32", "channels": "i32", "per_group": "i32", "alpha": "fp32", "beta": "fp32"}
interleaved = {"pixels": "i64", "alpha": "fp32", "beta": "fp32"}
for dt in ["fp32", "bf16"]:
    fwd = {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", "d_ptr": "*fp32"}
    bwd = {"g_ptr": f"*{dt}", "x_ptr": f"*{dt}", "d_ptr": "*fp32", "dx_ptr": f"*{dt}"}
    build(lt._lrn_planar_forward, {**fwd, **planar, "k": "fp32"}, {"SIZE": 5, "SAVE_D": True, "BLOCK": lt.BLOCK})
    build(lt._lrn_planar_backward, {**bwd, **planar}, {"SIZE": 5, "BLOCK": lt.BLOCK})
    for channels in [48, 96, 256]:
        tile = {"CHANNELS": channels, "PER_GROUP": channels // 2, "BLOCK_P": lt.PIXEL_ELEMENTS // triton.next_power_of_2(channels),
                "BLOCK_C": triton.next_power_of_2(channels)}
        build(lt._lrn_interleaved_forward, {**fwd, **interleaved, "k": "fp32"}, {"SIZE": 5, "SAVE_D": True, **tile})
        build(lt._lrn_interleaved_backward, {**bwd, **interleaved}, {"SIZE": 5, **tile})
"""


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter skips Triton's compiler; this runs it (to PTX and cubin for sm_90) and checks
    that no element pays for a 64-bit integer division (emulated on the GPU: 10x slower kernels)."""
    if not lrn_triton.available():
        pytest.skip("triton not importable")
    compile_for_sm90(COMPILE_FOR_SM90)


@pytest.mark.parametrize("backend", ["eager", "cpu", TRITON])
@pytest.mark.parametrize("outer", ["sum", "square"])
def test_second_derivative_matches_the_formula(backend, outer):
    """A gradient penalty differentiates the backward: with ``create_graph=True`` every backend's
    gradient must itself have the formula's gradient (lrn_reference's autograd in float64), whether
    the first backward's incoming gradient needs a graph (``square``) or not (``sum``: once it
    silently came back as a constant, so the penalty's gradient was zero)."""
    fn = _backend(backend)
    torch.manual_seed(0)
    size, alpha, beta, k, groups = 5, 0.3, 0.75, 1.5, 2
    x0 = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    w = torch.randn(2, 6, 3, 3, dtype=torch.float64)

    def penalty_grad(f, x):
        y = f(x)
        y = y.sum() if outer == "sum" else y.square().sum()
        (g,) = torch.autograd.grad(y, x, create_graph=True)
        assert g.requires_grad
        (gg,) = torch.autograd.grad((g * w.to(g.dtype)).sum() + g.square().sum(), x)
        return gg.double().cpu()

    dtype = torch.float64 if backend == "eager" else torch.float32
    x = x0.to(DEVICE, dtype).requires_grad_()
    got = penalty_grad(lambda t: fn(t, size, alpha, beta, k, groups), x)
    want = penalty_grad(lambda t: lrn_reference(t, size, alpha, beta, k, "paper", groups), x0.clone().requires_grad_())
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, **tol)


def test_gradgradcheck_float64():
    x = torch.randn(1, 5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: dispatch.local_response_norm(t, 4, 0.5, 0.75, 1.5, 1), (x,))
