"""Section 4.1's augmentation and test-time crops, each checked against slicing in NumPy by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alexnet.data.augment import EvalPreprocess, TrainAugment, ten_crop_probabilities

S, CROP, C = 12, 8, 3


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, S, S, C), dtype=np.uint8)
    mean = rng.uniform(0, 255, (S, S, C)).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(C, C)))
    eigenvalues = np.array([5000.0, 800.0, 90.0], np.float32)
    return images, mean, eigenvalues, q.astype(np.float32)


def reference(images, mean, eigenvalues, eigenvectors, top, left, flip, alpha, scale=1.0, pca_scale="sqrt", shrink=1.0):
    """Per image in NumPy: slice, reflect, add P (alpha * sqrt(lambda)) (or P (alpha * lambda / 255)),
    subtract the same patch of the mean, divide by ``shrink``, multiply by ``scale``."""
    magnitude = np.sqrt(eigenvalues.astype(np.float64)) if pca_scale == "sqrt" else eigenvalues / 255.0
    out = []
    for n in range(len(images)):
        t, l = int(top[n]), int(left[n])
        patch = images[n, t : t + CROP, l : l + CROP].astype(np.float64)
        m = mean[t : t + CROP, l : l + CROP].astype(np.float64)
        if flip[n]:
            patch, m = patch[:, ::-1], m[:, ::-1]
        shift = eigenvectors.astype(np.float64) @ (alpha[n].astype(np.float64) * magnitude)
        out.append(((patch + shift - m) / shrink * scale).transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("channels, pca_scale, shrink", [(3, "sqrt", False), (1, "sqrt", False), (3, "fb", False),
                                                        (3, "sqrt", True)])
def test_train_augment_against_numpy(data, channels, pca_scale, shrink):
    images, mean, eigenvalues, eigenvectors = data
    if channels == 1:  # a grayscale set: one eigenvalue, eigenvector [1]
        images, mean, eigenvalues, eigenvectors = images[..., :1], mean[..., :1], eigenvalues[:1], np.ones((1, 1), np.float32)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, input_scale=0.5, pca_scale=pca_scale,
                           lighting_shrink=shrink)
    out = augment(torch.from_numpy(np.ascontiguousarray(images)), torch.Generator().manual_seed(7))
    top, left, flip, alpha = (t.numpy() for t in augment.draw(len(images), torch.Generator().manual_seed(7)))
    assert out.shape == (64, channels, CROP, CROP) and out.dtype == torch.float32
    assert flip.any() and not flip.all() and np.abs(alpha).max() > 0
    want = reference(images, mean, eigenvalues, eigenvectors, top, left, flip, alpha, scale=0.5, pca_scale=pca_scale,
                     shrink=1.1 if shrink else 1.0)
    np.testing.assert_allclose(out.numpy(), want, rtol=0, atol=1e-3)
    reused = torch.full((64, CROP, CROP, channels), float("nan"))
    again = augment(torch.from_numpy(np.ascontiguousarray(images)), torch.Generator().manual_seed(7), out=reused)
    assert again.data_ptr() == reused.data_ptr()
    np.testing.assert_allclose(again.numpy(), want, rtol=0, atol=1e-3)


def released_reference(images, mean, eigenvalues, eigenvectors, top, left, flip, alpha, chunk):
    """convdata.py's training crops written out chunk by chunk: the crop position and reflection of each chunk
    of ``chunk`` images (the draws of its first image), minus the mean image's centre patch whatever the crop and
    reflection (``data_mean_crop``), plus each image's own colour noise, all divided by 1 + 0.1."""
    border = (S - CROP) // 2
    centre = mean[border : border + CROP, border : border + CROP].astype(np.float64)
    out = np.empty((len(images), images.shape[3], CROP, CROP))
    for c in range(0, len(images), chunk):
        end = min(c + chunk, len(images))
        t, l = int(top[c]), int(left[c])
        pic = images[c:end, t : t + CROP, l : l + CROP].astype(np.float64)
        if flip[c]:
            pic = pic[:, :, ::-1]
        noise = (alpha[c:end].astype(np.float64) * np.sqrt(eigenvalues.astype(np.float64))) @ eigenvectors.T
        out[c:end] = ((pic - centre + noise[:, None, None, :]) / 1.1).transpose(0, 3, 1, 2)
    return out


@pytest.mark.parametrize("chunk", [1, 24, 64])
def test_released_crops_per_chunk_and_the_centre_mean_against_numpy(data, chunk):
    images, mean, eigenvalues, eigenvectors = data
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, lighting_shrink=True,
                           mean_centre_patch=True, crop_chunk_images=chunk)
    out = augment(torch.from_numpy(images), torch.Generator().manual_seed(5))
    top, left, flip, alpha = (t.numpy() for t in augment.draw(len(images), torch.Generator().manual_seed(5)))
    np.testing.assert_allclose(out.numpy(), released_reference(images, mean, eigenvalues, eigenvectors, top, left,
                                                               flip, alpha, chunk), rtol=0, atol=1e-3)
    # the draws: one position and reflection per chunk (a shorter last one), then every image's colour noise
    g, chunks, reach = torch.Generator().manual_seed(5), -(-len(images) // chunk), S - CROP + 1
    per_chunk = [torch.randint(0, reach, (chunks,), generator=g), torch.randint(0, reach, (chunks,), generator=g),
                 torch.rand(chunks, generator=g) < 0.5]
    for drawn, want in zip((top, left, flip), per_chunk):
        np.testing.assert_array_equal(drawn, np.repeat(want.numpy(), chunk)[: len(images)])
    np.testing.assert_array_equal(alpha, (torch.randn(len(images), C, generator=g) * 0.1).numpy())


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


@pytest.mark.parametrize("pca_scale", ["sqrt", "fb"])
def test_lighting_noise_statistics(data, pca_scale):
    """Over many draws the shift's standard deviation along eigenvector i is 0.1 * sqrt(lambda_i)
    (the authors' code) or 0.1 * lambda_i / 255 (the fb.resnet.torch reading), in grey levels."""
    _, mean, eigenvalues, eigenvectors = data
    flat = np.full((4000, S, S, C), 100, np.uint8)
    augment = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, subtract_mean=False, pca_lighting_std=0.1,
                           pca_scale=pca_scale)
    shift = augment(torch.from_numpy(flat), torch.Generator().manual_seed(2))[:, :, 0, 0].double().numpy() - 100
    components = shift @ eigenvectors.astype(np.float64)  # the shift along p1, p2, p3
    lam = eigenvalues.astype(np.float64)
    want = 0.1 * np.sqrt(lam) if pca_scale == "sqrt" else 0.1 * lam / 255.0
    np.testing.assert_allclose(components.std(axis=0), want, rtol=0.06)
    np.testing.assert_allclose(components.mean(axis=0) / want, 0, atol=0.06)
    assert abs(np.corrcoef(components.T)[0, 1]) < 0.06


def test_imagenet_shift_in_grey_levels():
    """The figures quoted in the docs: ImageNet's shipped sqrt(lambda) = 121.8, 37.1, 19.7 give shifts of
    12.2 / 3.7 / 2.0 grey levels (std) under "sqrt" and about 5.8 / 0.54 / 0.15 under "fb"."""
    from alexnet.data.augment import lighting_magnitudes

    lam = torch.tensor([121.8, 37.1, 19.7], dtype=torch.float64) ** 2
    np.testing.assert_allclose((0.1 * lighting_magnitudes(lam, "sqrt")).numpy(), [12.18, 3.71, 1.97], rtol=1e-6)
    np.testing.assert_allclose((0.1 * lighting_magnitudes(lam, "fb")).numpy(), [5.82, 0.54, 0.152], rtol=0.01)


def test_lighting_switched_off_between_calls(data):
    """``lighting_on = False`` drops the colour noise and the shrink, and draws the same random numbers."""
    images, mean, eigenvalues, eigenvectors = data
    batch = torch.from_numpy(images)
    lit = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, lighting_shrink=True)
    lit.lighting_on = False
    plain = TrainAugment(mean, eigenvalues, eigenvectors, crop_size=CROP, pca_lighting_std=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(lit(batch, g1), plain(batch, torch.Generator().manual_seed(3)))
    lit.draw(len(images), g2)
    assert torch.equal(g1.get_state(), g2.get_state())


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
