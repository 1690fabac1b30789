"""Section 4.1's augmentation and test-time crops, each checked against slicing in NumPy by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data.augment import EvalPreprocess, TrainAugment, ten_crop_probabilities
from alexnet.kernels import augment_cpu

S, CROP, C = 12, 8, 3


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, S, S, C), dtype=np.uint8)
    mean = rng.uniform(0, 255, (S, S, C)).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(C, C)))
    eigenvalues = np.array([5000.0, 800.0, 90.0], np.float32)
    return images, mean, eigenvalues, q.astype(np.float32)


def reference(images, mean, eigenvalues, eigenvectors, top, left, flip, alpha, scale=1.0):
    """Per image in NumPy: slice, reflect, add P (alpha * lambda / 255), subtract the same patch of the mean."""
    out = []
    for n in range(len(images)):
        t, l = int(top[n]), int(left[n])
        patch = images[n, t : t + CROP, l : l + CROP].astype(np.float64)
        m = mean[t : t + CROP, l : l + CROP].astype(np.float64)
        if flip[n]:
            patch, m = patch[:, ::-1], m[:, ::-1]
        shift = eigenvectors.astype(np.float64) @ (alpha[n].astype(np.float64) * eigenvalues / 255.0)
        out.append(((patch + shift - m) * scale).transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("channels", [3, 1])
def test_train_augment_against_numpy(data, channels, backend):
    images, mean, eigenvalues, eigenvectors = data
    if channels == 1:  # a grayscale set: one eigenvalue, eigenvector [1]
        images, mean, eigenvalues, eigenvectors = images[..., :1], mean[..., :1], eigenvalues[:1], np.ones((1, 1), np.float32)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, input_scale=0.5, backend=backend)
    out = augment(torch.from_numpy(np.ascontiguousarray(images)), torch.Generator().manual_seed(7))
    top, left, flip, alpha = (t.numpy() for t in augment.draw(len(images), torch.Generator().manual_seed(7)))
    assert out.shape == (64, channels, CROP, CROP) and out.dtype == torch.float32
    assert flip.any() and not flip.all() and np.abs(alpha).max() > 0
    want = reference(images, mean, eigenvalues, eigenvectors, top, left, flip, alpha, scale=0.5)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-3)
    reused = torch.full((64, CROP, CROP, channels), float("nan"))
    again = augment(torch.from_numpy(np.ascontiguousarray(images)), torch.Generator().manual_seed(7), out=reused)
    assert again.data_ptr() == reused.data_ptr()
    np.testing.assert_allclose(again.numpy(), want, rtol=0, atol=1e-3)


def test_every_crop_offset_is_reached_equally(data):
    images, mean, eigenvalues, eigenvectors = data
    # pixel value = 16 * row + column, so the first output pixel names the crop's offset
    rows, cols = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
    coded = np.repeat((16 * rows + cols).astype(np.uint8)[None, :, :, None], 4000, axis=0).repeat(C, axis=3)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, flip=False, pca_lighting_std=0, subtract_mean=False)
    corner = augment(torch.from_numpy(coded), torch.Generator().manual_seed(0))[:, 0, 0, 0].long().numpy()
    counts = np.bincount(corner, minlength=16 * S).reshape(S, 16)[: S - CROP + 1, : S - CROP + 1]
    assert counts.sum() == 4000 and counts.min() > 0
    expected = 4000 / counts.size
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 60, chi2  # 24 degrees of freedom: p(chi2 > 60) is about 1e-4


def test_flips_reflect_and_happen_half_the_time(data):
    images, mean, eigenvalues, eigenvectors = data
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=S, random_crop=False, pca_lighting_std=0, subtract_mean=False)
    batch = np.repeat(images[:1], 2000, axis=0)
    out = augment(torch.from_numpy(batch), torch.Generator().manual_seed(1)).numpy()
    plain = images[0].transpose(2, 0, 1).astype(np.float32)
    is_plain = np.all(out == plain, axis=(1, 2, 3))
    is_flipped = np.all(out == plain[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(is_plain ^ is_flipped)
    assert abs(is_flipped.mean() - 0.5) < 0.05


def test_lighting_noise_statistics(data):
    _, mean, eigenvalues, eigenvectors = data
    flat = np.full((4000, S, S, C), 100, np.uint8)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, subtract_mean=False, pca_lighting_std=0.1)
    shift = augment(torch.from_numpy(flat), torch.Generator().manual_seed(2))[:, :, 0, 0].double().numpy() - 100
    # shift = P (alpha * lambda / 255): recover alpha and check it is N(0, 0.1) per component
    alpha = (shift @ eigenvectors.astype(np.float64)) / (eigenvalues / 255.0)
    np.testing.assert_allclose(alpha.std(axis=0), 0.1, rtol=0.06)
    np.testing.assert_allclose(alpha.mean(axis=0), 0, atol=0.01)
    assert abs(np.corrcoef(alpha.T)[0, 1]) < 0.06


def test_switches_off_give_the_centre_patch(data):
    images, mean, eigenvalues, eigenvectors = data
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, random_crop=False, flip=False, pca_lighting_std=0, subtract_mean=False)
    out = augment(torch.from_numpy(images), torch.Generator().manual_seed(0)).numpy()
    a = (S - CROP) // 2
    np.testing.assert_array_equal(out, images[:, a : a + CROP, a : a + CROP].transpose(0, 3, 1, 2))
    only_mean = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, random_crop=False, flip=False, pca_lighting_std=0)
    got = only_mean(torch.from_numpy(images), torch.Generator()).numpy()
    want = (images.astype(np.float64) - mean)[:, a : a + CROP, a : a + CROP].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_same_seed_same_batch_and_to_device(data):
    images, mean, eigenvalues, eigenvectors = data
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP).to("cpu")
    x = torch.from_numpy(images)
    assert torch.equal(augment(x, torch.Generator().manual_seed(3)), augment(x, torch.Generator().manual_seed(3)))
    assert not torch.equal(augment(x, torch.Generator().manual_seed(3)), augment(x, torch.Generator().manual_seed(4)))
    with pytest.raises(ValueError, match="uint8"):
        augment(x.float(), torch.Generator())


def test_ten_crops_are_the_right_regions(data):
    images, mean, _, _ = data
    pre = EvalPreprocess(mean, crop_size=CROP, input_scale=2.0)
    views = pre.ten_crops(torch.from_numpy(images)).numpy()
    assert views.shape == (10, 64, C, CROP, CROP)
    centred = (images.astype(np.float64) - mean) * 2.0
    far, mid = S - CROP, (S - CROP) // 2
    by_hand = [
        centred[:, :CROP, :CROP],  # top left
        centred[:, :CROP, far:],  # top right
        centred[:, far:, :CROP],  # bottom left
        centred[:, far:, far:],  # bottom right
        centred[:, mid : mid + CROP, mid : mid + CROP],  # centre
    ]
    by_hand += [v[:, :, ::-1] for v in by_hand]
    for k in range(10):
        np.testing.assert_allclose(views[k], by_hand[k].transpose(0, 3, 1, 2), atol=1e-3, err_msg=f"view {k}")
    np.testing.assert_allclose(pre.center(torch.from_numpy(images)).numpy(), views[4])


def test_ten_crop_probabilities_average_softmax_not_logits():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * CROP * CROP, 5))
    batch = torch.randn(10, 6, C, CROP, CROP) * 3
    probs = ten_crop_probabilities(model, batch)
    by_hand = torch.stack([torch.softmax(model(batch[k]), dim=1) for k in range(10)]).mean(0)
    torch.testing.assert_close(probs, by_hand)
    torch.testing.assert_close(ten_crop_probabilities(model, batch, max_images_per_forward=7), by_hand)
    torch.testing.assert_close(probs.sum(1), torch.ones(6))
    from_logits = torch.softmax(torch.stack([model(batch[k]) for k in range(10)]).mean(0), dim=1)
    assert not torch.allclose(probs, from_logits, atol=1e-4)


SWITCHES = [
    dict(),
    dict(flip=False),
    dict(pca_lighting_std=0.0),
    dict(subtract_mean=False),
    dict(random_crop=False, input_scale=0.017),
    dict(flip=False, pca_lighting_std=0.0, subtract_mean=False, input_scale=1 / 64),
]


@pytest.mark.skipif(not augment_cpu.available(), reason="no C compiler for the CPU kernel")
@pytest.mark.parametrize("channels", [3, 1, 2])
@pytest.mark.parametrize("switches", SWITCHES, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()) or "paper")
def test_the_c_kernel_matches_eager_torch_bit_for_bit(data, channels, switches):
    """The fused C pass and the eager torch passes: same draws, same float32 roundings."""
    images, mean, eigenvalues, eigenvectors = data
    images, mean = np.ascontiguousarray(images[..., :channels]), np.ascontiguousarray(mean[..., :channels])
    eigenvalues, eigenvectors = eigenvalues[:channels], np.linalg.qr(np.random.default_rng(1).normal(size=(channels, channels)))[0]
    kw = dict(crop_size=CROP, **switches)
    fused = TrainAugment(mean, eigenvalues, eigenvectors, **kw)
    eager = TrainAugment(mean, eigenvalues, eigenvectors, backend="torch", **kw)
    batch = torch.from_numpy(images)
    a = fused(batch, torch.Generator().manual_seed(3))
    b = eager(batch, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.stride() == b.stride()  # both channels_last views of (N, crop, crop, C)


@pytest.mark.skipif(not augment_cpu.available(), reason="no C compiler for the CPU kernel")
@pytest.mark.parametrize("channels", [3, 1, 4])
@pytest.mark.parametrize("size,crop", [(40, 37), (64, 33), (21, 16)])
def test_the_c_kernel_reflects_wide_rows_like_numpy(channels, size, crop):
    """Rows long enough for the vectorised reflection (5 RGB or 16 gray pixels a shuffle) and its tail."""
    rng = np.random.default_rng(size + channels)
    images = rng.integers(0, 256, (9, size, size, channels), dtype=np.uint8)
    mean = rng.uniform(0, 255, (size, size, channels)).astype(np.float32)
    augment = TrainAugment(mean, np.ones(channels, np.float32), np.eye(channels, dtype=np.float32), crop_size=crop,
                           pca_lighting_std=0.0)
    top, left = torch.tensor(rng.integers(0, size - crop + 1, 9)), torch.tensor(rng.integers(0, size - crop + 1, 9))
    top[-1] = left[-1] = size - crop  # the crop's row ends where the last image ends
    flip, alpha = torch.ones(9, dtype=torch.bool), torch.zeros(9, channels)
    got = augment.apply(torch.from_numpy(images), top, left, flip, alpha).numpy()
    for n in range(9):
        t, l = int(top[n]), int(left[n])
        want = (images[n, t : t + crop, l : l + crop] - mean[t : t + crop, l : l + crop].astype(np.float64))[:, ::-1]
        np.testing.assert_allclose(got[n], want.transpose(2, 0, 1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_from_store_equals_augmenting_the_gathered_batch(data, tmp_path, backend):
    images, mean, eigenvalues, eigenvectors = data
    path = tmp_path / "images.npy"
    np.save(path, images)
    mapped = np.load(path, mmap_mode="r")
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, backend=backend)
    indices = np.array([5, 63, 0, 5, 17, 40, 2])  # any order, repeats allowed
    got = augment.from_store(mapped, indices, torch.Generator().manual_seed(11))
    want = augment(torch.from_numpy(images[indices]), torch.Generator().manual_seed(11))
    assert torch.equal(got, want)
    top, left, flip, alpha = (t.numpy() for t in augment.draw(len(indices), torch.Generator().manual_seed(11)))
    np.testing.assert_allclose(got.numpy(), reference(images[indices], mean, eigenvalues, eigenvectors, top, left, flip, alpha),
                               rtol=0, atol=1e-3)


@pytest.mark.skipif(not augment_cpu.available(), reason="no C compiler for the CPU kernel")
def test_the_c_kernel_refuses_reads_outside_the_images(data):
    images, mean, *_ = data
    source = torch.from_numpy(images)
    out = torch.empty(2, CROP, CROP, C)
    ok = dict(top=torch.tensor([0, 4]), left=torch.tensor([4, 0]), flip=torch.tensor([True, False]),
              shift=None, mean=torch.from_numpy(np.stack([mean, mean[:, ::-1]])), scale=1.0, out=out)
    augment_cpu.augment_cpu(source, torch.tensor([0, 63]), **ok)
    with pytest.raises(ValueError, match="index"):
        augment_cpu.augment_cpu(source, torch.tensor([0, 64]), **ok)
    with pytest.raises(ValueError, match="index"):
        augment_cpu.augment_cpu(source, torch.tensor([-1, 0]), **ok)
    with pytest.raises(ValueError, match="offsets"):
        augment_cpu.augment_cpu(source, None, **{**ok, "top": torch.tensor([0, S - CROP + 1])})
    with pytest.raises(ValueError, match="offsets"):
        augment_cpu.augment_cpu(source, None, **{**ok, "left": torch.tensor([-1, 0])})
    with pytest.raises(ValueError, match="out"):
        augment_cpu.augment_cpu(source, None, **{**ok, "out": torch.empty(2, CROP, CROP, C, dtype=torch.float64)})


def test_without_a_compiler_the_eager_path_is_used(data, monkeypatch):
    images, mean, eigenvalues, eigenvectors = data

    def no_compiler():
        raise RuntimeError("no C compiler (cc or gcc) on PATH")

    monkeypatch.setattr(augment_cpu.LIBRARY, "_compile", no_compiler)
    monkeypatch.setattr(augment_cpu.LIBRARY, "_library", None)
    monkeypatch.setattr(augment_cpu.LIBRARY, "_error", None)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        got = augment(torch.from_numpy(images), torch.Generator().manual_seed(5))
    want = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, backend="torch")(
        torch.from_numpy(images), torch.Generator().manual_seed(5))
    assert torch.equal(got, want)
