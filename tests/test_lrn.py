"""Local response normalisation (section 3.3) against the formula evaluated by a NumPy loop.

    b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2) ** beta

For odd n the window is [i - n//2, i + n//2]. The paper only uses n=5; for even n the sum runs
over n adjacent maps, [i - n//2, i + (n-1)//2], which is torch's convention (checked against
torch.nn.functional.local_response_norm below).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from alexnet.lrn import LocalResponseNorm, lrn_reference


def lrn_numpy(a, n, alpha, beta, k, convention="paper", groups=1):
    """The formula, one channel at a time, each block of channels normalised on its own."""
    a = np.asarray(a, dtype=np.float64)
    alpha_eff = alpha if convention == "paper" else alpha / n
    out = np.empty_like(a)
    channels = a.shape[1]
    per_group = channels // groups
    for g in range(groups):
        first = g * per_group
        for i in range(per_group):
            lo = max(0, i - n // 2)
            hi = min(per_group - 1, i + (n - 1) // 2)
            total = np.zeros_like(a[:, 0])
            for j in range(lo, hi + 1):
                total += a[:, first + j] ** 2
            out[:, first + i] = a[:, first + i] / (k + alpha_eff * total) ** beta
    return out


def _input(channels, size=(3, 4), batch=2, scale=30.0, dtype=torch.float64, seed=0):
    # ReLU outputs of conv1 on raw 0-255 pixels are tens to hundreds, so the normaliser matters.
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, channels, *size, generator=g, dtype=dtype) * scale).abs()


@pytest.mark.parametrize("convention", ["paper", "caffe"])
@pytest.mark.parametrize("size", [1, 3, 4, 5])
@pytest.mark.parametrize("channels", [1, 2, 5, 7, 96])
def test_module_matches_numpy_formula(channels, size, convention):
    x = _input(channels)
    # alpha large enough that a wrong window or a wrong alpha/n changes the result visibly
    for alpha, beta, k in [(1e-4, 0.75, 2.0), (2e-2, 0.5, 1.0)]:
        expected = lrn_numpy(x.numpy(), size, alpha, beta, k, convention)
        lrn = LocalResponseNorm(size, alpha, beta, k, convention=convention)
        np.testing.assert_allclose(lrn(x).numpy(), expected, rtol=1e-12, atol=0)
        ref = lrn_reference(x, size, alpha, beta, k, convention=convention)
        np.testing.assert_allclose(ref.numpy(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("convention", ["paper", "caffe"])
@pytest.mark.parametrize("size", [1, 3, 4, 5])
@pytest.mark.parametrize("channels", [2, 10, 96])
def test_groups_normalise_each_half_on_its_own(channels, size, convention):
    x = _input(channels)
    alpha, beta, k = 2e-2, 0.75, 2.0
    lrn = LocalResponseNorm(size, alpha, beta, k, convention=convention, groups=2)
    out = lrn(x).numpy()
    half = channels // 2
    np.testing.assert_allclose(out[:, :half], lrn_numpy(x[:, :half].numpy(), size, alpha, beta, k, convention), rtol=1e-12)
    np.testing.assert_allclose(out[:, half:], lrn_numpy(x[:, half:].numpy(), size, alpha, beta, k, convention), rtol=1e-12)
    np.testing.assert_allclose(
        lrn_reference(x, size, alpha, beta, k, convention=convention, groups=2).numpy(), out, rtol=1e-12
    )


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [1, 3, 4, 5])
def test_window_reaches_exactly_the_neighbouring_maps(size, groups):
    """Perturbing map j changes output map i iff j is in i's window (clipped at the edges)."""
    channels = 12
    per_group = channels // groups
    lrn = LocalResponseNorm(size, 0.1, 0.75, 2.0, groups=groups)
    x = torch.ones(1, channels, 1, 1, dtype=torch.float64)
    base = lrn(x)
    for j in range(channels):
        bumped = x.clone()
        bumped[:, j] += 1.0
        changed = {i for i in range(channels) if (lrn(bumped)[0, i] != base[0, i]).item()}
        expected = {
            i
            for i in range(channels)
            if i // per_group == j // per_group and i - size // 2 <= j <= i + (size - 1) // 2
        }
        assert changed == expected, f"bumping map {j}"


def test_channel_edges_sum_fewer_maps():
    """At the first and the last map the window is clipped, not wrapped or zero-extended wrongly."""
    x = torch.full((1, 7, 1, 1), 10.0, dtype=torch.float64)
    out = LocalResponseNorm(5, 1e-2, 1.0, 1.0)(x).flatten()
    maps_in_window = [3, 4, 5, 5, 5, 4, 3]
    expected = [10.0 / (1.0 + 1e-2 * m * 100.0) for m in maps_in_window]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-14)


def test_float32_and_channels_last():
    x = _input(96, size=(5, 5), dtype=torch.float32)
    expected = lrn_numpy(x.numpy(), 5, 1e-4, 0.75, 2.0)
    lrn = LocalResponseNorm()
    np.testing.assert_allclose(lrn(x).numpy(), expected, rtol=1e-5)
    out_cl = lrn(x.contiguous(memory_format=torch.channels_last))
    np.testing.assert_allclose(out_cl.detach().numpy(), expected, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    channels=st.integers(1, 16),
    size=st.integers(1, 7),
    groups=st.sampled_from([1, 2]),
    convention=st.sampled_from(["paper", "caffe"]),
    alpha=st.floats(1e-5, 1e-1),
    beta=st.floats(0.1, 1.5),
    k=st.floats(0.5, 3.0),
    seed=st.integers(0, 2**16),
)
def test_random_settings_match_numpy_formula(channels, size, groups, convention, alpha, beta, k, seed):
    channels *= groups
    x = _input(channels, size=(2, 3), batch=1, scale=5.0, seed=seed)
    lrn = LocalResponseNorm(size, alpha, beta, k, convention=convention, groups=groups)
    expected = lrn_numpy(x.numpy(), size, alpha, beta, k, convention, groups)
    np.testing.assert_allclose(lrn(x).numpy(), expected, rtol=1e-12)


def test_defaults_are_the_papers():
    lrn = LocalResponseNorm()
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.convention, lrn.groups) == (5, 1e-4, 0.75, 2.0, "paper", 1)
    x = _input(96)
    np.testing.assert_allclose(lrn(x).numpy(), lrn_numpy(x.numpy(), 5, 1e-4, 0.75, 2.0), rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_torch_local_response_norm(dtype):
    """torch divides alpha by n: its alpha=5e-4 is the paper's 1e-4."""
    x = _input(96, size=(6, 6), dtype=dtype)
    expected = F.local_response_norm(x, size=5, alpha=5e-4, beta=0.75, k=2.0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=0)
    torch.testing.assert_close(LocalResponseNorm(5, 5e-4, 0.75, 2.0, convention="caffe")(x), expected, **tol)
    torch.testing.assert_close(LocalResponseNorm(5, 1e-4, 0.75, 2.0, convention="paper")(x), expected, **tol)
    # and the two conventions really differ at equal alpha
    paper = LocalResponseNorm(5, 5e-4, 0.75, 2.0, convention="paper")(x)
    assert not torch.allclose(paper, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("size", [2, 3, 4, 6])
def test_caffe_convention_equals_torch_at_other_sizes(size):
    x = _input(11, size=(3, 3))
    expected = F.local_response_norm(x, size=size, alpha=0.05, beta=0.6, k=1.5)
    torch.testing.assert_close(LocalResponseNorm(size, 0.05, 0.6, 1.5, convention="caffe")(x), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("convention", ["paper", "caffe"])
def test_gradcheck(convention, groups):
    x = _input(6, size=(2, 3), scale=3.0).requires_grad_(True)
    # a large alpha so that the normaliser's own gradient is a large part of the total
    lrn = LocalResponseNorm(5, 0.3, 0.75, 2.0, convention=convention, groups=groups)
    assert torch.autograd.gradcheck(lrn, (x,), eps=1e-6, atol=1e-8, rtol=1e-6)
    # signed inputs too (LRN before ReLU, the original code's conv1)
    y = (torch.randn(2, 6, 2, 3, dtype=torch.float64) * 3).requires_grad_(True)
    assert torch.autograd.gradcheck(lrn, (y,), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradient_matches_numpy_finite_differences():
    """The backward pass against central differences of the NumPy formula (not of the module)."""
    x = _input(5, size=(1, 2), batch=1, scale=4.0)
    alpha, beta, k = 0.2, 0.75, 2.0
    w = torch.randn_like(x)  # a random linear functional of the output
    xr = x.clone().requires_grad_(True)
    (LocalResponseNorm(3, alpha, beta, k)(xr) * w).sum().backward()
    numeric = np.zeros(x.numel())
    flat = x.numpy().ravel()
    h = 1e-6
    for idx in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[idx] += h
        minus[idx] -= h
        f_plus = (lrn_numpy(plus.reshape(x.shape), 3, alpha, beta, k) * w.numpy()).sum()
        f_minus = (lrn_numpy(minus.reshape(x.shape), 3, alpha, beta, k) * w.numpy()).sum()
        numeric[idx] = (f_plus - f_minus) / (2 * h)
    np.testing.assert_allclose(xr.grad.numpy().ravel(), numeric, rtol=1e-6, atol=1e-9)


def test_bad_arguments():
    with pytest.raises(ValueError, match="convention"):
        LocalResponseNorm(convention="tensorflow")
    with pytest.raises(ValueError, match="size"):
        LocalResponseNorm(0)
    with pytest.raises(ValueError, match="groups"):
        LocalResponseNorm(groups=0)
    with pytest.raises(ValueError, match="groups"):
        LocalResponseNorm(groups=2)(torch.ones(1, 5, 2, 2))


def test_the_compile_mark_is_the_one_torch_sets():
    """``constant_result`` stands in for ``torch.compiler.assume_constant_result``, which imports dynamo."""
    from alexnet.kernels.compile_marks import constant_result

    def ours():
        return True

    def torchs():
        return True

    assert vars(constant_result(ours)) == vars(torch.compiler.assume_constant_result(torchs))


@pytest.mark.slow  # a second Python process that imports torch
def test_importing_the_package_and_its_kernels_leaves_dynamo_and_triton_unloaded():
    """They take about 1.5 s to import: every command would pay it before doing anything."""
    import subprocess
    import sys

    code = ("import sys, alexnet.cli, alexnet.kernels, alexnet.model, alexnet.training; "
            "print(sorted(m for m in ('torch._dynamo', 'triton') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
