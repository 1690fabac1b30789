"""Data augmentation (section 4.1) and the mean subtraction of section 2, on whole batches.

Everything works on a uint8 batch (N, S, S, C), as the loader yields it, on whatever device it
is on (move the batch to the model's device first and the work happens there), and returns
float32 (N, C, crop, crop). Per image, with every step switchable:

1. a random crop x crop patch (section 4.1: "extracting random 224 x 224 patches ... from the
   256 x 256 images"); every offset 0..S-crop equally likely; off: the centre patch;
2. a horizontal reflection with probability 0.5;
3. PCA lighting: to every pixel add P (alpha * lambda'), with P the eigenvectors (columns) of the
   training set's pixel covariance, alpha ~ N(0, pca_lighting_std) drawn per image per call;
4. subtraction of the mean image, cropped (and reflected) like the image;
5. multiplication by ``input_scale`` (1 in the paper: raw centred 0-255 values).

About lambda' in step 3. The paper adds [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with the eigenvalues
l_i. The store holds the eigenvalues of the covariance of 0-255 pixel values (ImageNet: roughly
14000, 1200, 300, from the commonly quoted [0, 1]-scale values); added literally, the colour shift would have a standard deviation near 1400
gray levels, far beyond the 0-255 range. Reimplementations that reproduce the paper use the
eigenvalues of pixel values scaled to [0, 1] and add the shift in that scale (fb.resnet.torch:
0.2175, 0.0188, 0.0045 with alpha std 0.1). In 0-255 units that is
255 * P (alpha * l / 255^2) = P (alpha * l / 255), so lambda' = l / 255 here (ImageNet: about
55, 5, 1 gray levels per unit of alpha).

Unlike the original code, which drew one crop and reflection per chunk of 32 images and took
the colour noise from a precomputed set, every image gets its own draws.

The crop is one indexing operation over the whole batch (:func:`crop_rows`, in the spirit of
airbench's ``batch_crop``), and so is the matching patch of the mean image; there is no Python
loop over images. Work happens in NHWC order, where every row of a patch is one contiguous run;
the result is returned as an (N, C, H, W) view of channels_last memory. On the CPU all of it
is instead one pass in C (:mod:`alexnet.kernels.augment_cpu`, the same roundings), which
can also cut the crops straight out of a memory-mapped store (:meth:`TrainAugment.from_store`).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from alexnet.kernels import augment_cpu

LIGHTING_SCALE = 255.0  # see "About lambda'" above
BACKENDS = ("auto", "torch")


def _as_tensor(array, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=dtype)


def crop_rows(images: torch.Tensor, rows: torch.Tensor, left: torch.Tensor, size: int, *, select=None, out=None) -> torch.Tensor:
    """Patches of a (B, H, W, C) batch, in one gather: ``out[n, r] = images[select[n], rows[n, r], left[n] : left[n] + size]``.

    Each (image, row) pair is one contiguous run of size * C values, which is what makes this
    single indexing operation fast on a CPU as well as on a GPU. ``select`` picks the source
    image of each patch (default: patch n from image n). Returns (N, size, size, C).
    """
    b, h, w, c = images.shape
    images = images.contiguous()
    runs = images.as_strided((b, h, w - size + 1, size * c), (h * w * c, w * c, c, 1))
    select = torch.arange(len(rows), device=images.device) if select is None else select
    index = (select[:, None], rows, left[:, None])
    if out is None:
        return runs[index].view(len(rows), size, size, c)
    torch.ops.aten.index.Tensor_out(runs, list(index), out=out.view(len(rows), size, size * c))
    return out


def lighting_shift(alpha: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor) -> torch.Tensor:
    """Section 4.1's per-image colour shift P (alpha * lambda / 255), (N, C), in 0-255 units."""
    return (alpha * (eigenvalues / LIGHTING_SCALE)) @ eigenvectors.T


class _Scratch:
    """Per-thread work buffers reused from call to call: on a CPU, fresh 20-100 MB tensors cost
    more in page faults than the arithmetic done in them."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, name: str, shape, dtype, device) -> torch.Tensor:
        buffers = self._local.__dict__.setdefault("buffers", {})
        t = buffers.get(name)
        if t is None or t.shape != torch.Size(shape) or t.dtype != dtype or t.device != torch.device(device):
            t = buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return t


class _MeanImage:
    """The mean image and its reflection, (2, S, S, C), to subtract the patch under each crop."""

    def __init__(self, mean_image) -> None:
        mean = _as_tensor(mean_image)
        if mean.ndim != 3:
            raise ValueError(f"mean image must be (S, S, C), got shape {tuple(mean.shape)}")
        self.both = torch.stack([mean, mean.flip(1)]).contiguous()

    def to(self, device) -> None:
        self.both = self.both.to(device)

    def under(self, rows: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, size: int, out: torch.Tensor) -> torch.Tensor:
        """(N, size, size, C) into ``out``: the mean under each crop, reflected where the image is."""
        s = self.both.shape[1]
        # a reflected crop at column `left` is the reflected mean's crop at column s - size - left
        left = torch.where(flip, s - size - left, left)
        return crop_rows(self.both, rows, left, size, select=flip.long(), out=out)


class TrainAugment:
    """Random crop, reflection, PCA lighting, mean subtraction and scaling of a uint8 batch.

    Args:
        mean_image: (S, S, C) float, the training set's per-pixel mean (store.mean_image).
        pca_eigenvalues: (C,) eigenvalues of the pixel covariance in 0-255 units (store.pca_eigenvalues).
        pca_eigenvectors: (C, C), eigenvectors as columns (store.pca_eigenvectors).
        crop_size: side of the output patches, in pixels (224 in the paper).
        random_crop: random offsets (else the centre patch).
        flip: horizontal reflection with probability 0.5.
        pca_lighting_std: standard deviation of the alphas; 0 turns lighting off.
        subtract_mean: subtract the mean image.
        input_scale: multiply the result by this.
        backend: "auto" (the fused C kernel of :mod:`alexnet.kernels.augment_cpu` for CPU
            batches when it can be built, else eager torch) or "torch" (always eager torch).

    Call it as ``augment(images_u8, generator)``; ``images_u8`` is (N, S, S, C) on any device,
    ``generator`` a torch.Generator (on the CPU or on the images' device). The result is
    (N, C, crop, crop) float32 in channels_last memory order.
    """

    def __init__(
        self,
        mean_image,
        pca_eigenvalues,
        pca_eigenvectors,
        *,
        crop_size: int,
        random_crop: bool = True,
        flip: bool = True,
        pca_lighting_std: float = 0.1,
        subtract_mean: bool = True,
        input_scale: float = 1.0,
        backend: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.mean = _MeanImage(mean_image)
        self.scratch = _Scratch()
        self.size = int(self.mean.both.shape[1])
        if not 1 <= crop_size <= self.size:
            raise ValueError(f"crop size {crop_size} must be between 1 and the image size {self.size}")
        if pca_lighting_std < 0:
            raise ValueError(f"pca_lighting_std must be >= 0, got {pca_lighting_std}")
        self.crop_size = crop_size
        self.random_crop, self.flip = random_crop, flip
        self.pca_lighting_std, self.subtract_mean, self.input_scale = pca_lighting_std, subtract_mean, input_scale
        self.eigenvalues = _as_tensor(pca_eigenvalues)
        self.eigenvectors = _as_tensor(pca_eigenvectors)

    def to(self, device) -> "TrainAugment":
        self.mean.to(device)
        self.scratch = _Scratch()
        self.eigenvalues = self.eigenvalues.to(device)
        self.eigenvectors = self.eigenvectors.to(device)
        return self

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The random choices for n images: top, left, flip, alpha (on the generator's device)."""
        device, reach = generator.device, self.size - self.crop_size + 1
        if self.random_crop:
            top = torch.randint(0, reach, (n,), generator=generator, device=device)
            left = torch.randint(0, reach, (n,), generator=generator, device=device)
        else:
            top = left = torch.full((n,), (self.size - self.crop_size) // 2, device=device)
        flip = torch.rand(n, generator=generator, device=device) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool, device=device)
        channels = self.eigenvalues.numel()
        if self.pca_lighting_std > 0:
            alpha = torch.randn(n, channels, generator=generator, device=device) * self.pca_lighting_std
        else:
            alpha = torch.zeros(n, channels, device=device)
        return top, left, flip, alpha

    def __call__(self, images: torch.Tensor, generator: torch.Generator, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """Augment ``images``; ``out``, if given, is a float32 (N, crop, crop, C) tensor to write the
        result into (reusing one across steps saves allocating ~77 MB per 128 images on a CPU)."""
        _check_batch(images, self.size, self.eigenvalues.numel())
        device = images.device
        top, left, flip, alpha = (t.to(device) for t in self.draw(images.shape[0], generator))
        return self.apply(images, top, left, flip, alpha, out=out)

    def from_store(self, images, indices, generator: torch.Generator, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``self(images[indices], generator)`` without first copying whole images into a batch.

        ``images`` is a split's (M, S, S, C) uint8 array on the CPU (``split.images``, memory-
        mapped), ``indices`` the batch's image numbers. With the C kernel only the crop rows
        are read, straight from the memory map; elsewhere this gathers the batch, then augments
        it. The draws and the result are those of ``self(images[indices], generator)``.
        """
        indices = torch.as_tensor(np.asarray(indices), dtype=torch.int64)
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1:3] != (self.size, self.size) or shape[3] != self.eigenvalues.numel():
            raise ValueError(f"expected uint8 images (M, {self.size}, {self.size}, {self.eigenvalues.numel()}), got {shape}")
        if not self._fused("cpu"):
            batch = torch.from_numpy(np.take(np.asarray(images), indices.numpy(), axis=0))
            return self(batch, generator, out=out)
        top, left, flip, alpha = self.draw(len(indices), generator)
        return self._apply_fused(images, indices, top, left, flip, alpha, out)

    def fused_on_cpu(self) -> bool:
        """Whether CPU batches go through the one-pass C kernel (backend "auto" and a C compiler)."""
        return self._fused("cpu")

    def _fused(self, device: torch.device | str) -> bool:
        return (self.backend == "auto" and torch.device(device).type == "cpu" and self.mean.both.device.type == "cpu"
                and augment_cpu.available())

    def _apply_fused(self, images, index, top, left, flip, alpha, out) -> torch.Tensor:
        n, size, c = len(top), self.crop_size, self.eigenvalues.numel()
        out = self._output(out, (n, size, size, c), torch.device("cpu"))
        shift = lighting_shift(alpha, self.eigenvalues, self.eigenvectors) if self.pca_lighting_std > 0 else None
        mean = self.mean.both if self.subtract_mean else None
        augment_cpu.augment_cpu(images, index, top, left, flip, shift, mean, self.input_scale, out)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def _output(out: torch.Tensor | None, shape, device) -> torch.Tensor:
        if out is None:
            return torch.empty(shape, dtype=torch.float32, device=device)
        if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != device:
            raise ValueError(f"out must be a contiguous float32 tensor of shape {shape} (N, crop, crop, C) on {device}")
        return out

    def apply(self, images: torch.Tensor, top, left, flip, alpha, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The augmentation for given draws (what ``__call__`` does after drawing)."""
        size, device = self.crop_size, images.device
        n, c = images.shape[0], images.shape[3]
        shape = (n, size, size, c)
        if self._fused(device):
            return self._apply_fused(images.contiguous(), None, top, left, flip, alpha, out)
        rows = top[:, None] + torch.arange(size, device=device)
        crops = crop_rows(images, rows, left, size, out=self.scratch.get("crops", shape, torch.uint8, device))
        flipped = flip.nonzero().squeeze(1)
        if len(flipped):
            k = len(flipped)
            chosen = torch.index_select(crops, 0, flipped, out=self.scratch.get("chosen", shape, torch.uint8, device)[:k])
            mirrored = torch.ops.aten.flip.out(chosen, [2], out=self.scratch.get("mirrored", shape, torch.uint8, device)[:k])
            crops.index_copy_(0, flipped, mirrored)
        out = self._output(out, shape, device)
        out.copy_(crops)
        if self.subtract_mean:
            out.sub_(self.mean.under(rows, left, flip, size, self.scratch.get("mean", shape, torch.float32, device)))
        if self.pca_lighting_std > 0:
            shift = lighting_shift(alpha, self.eigenvalues, self.eigenvectors)  # (N, C)
            # added to whole rows ([s0 s1 s2 s0 s1 s2 ...]): a broadcast over a long inner dimension is fast
            out.view(len(out), size, -1).add_(shift.repeat(1, size)[:, None, :])
        if self.input_scale != 1.0:
            out.mul_(self.input_scale)
        return out.permute(0, 3, 1, 2)


class EvalPreprocess:
    """Test-time crops of a uint8 batch (N, S, S, C): the centre patch, or section 4.1's ten patches.

    "At test time, the network makes a prediction by extracting five 224 x 224 patches (the four
    corner patches and the center patch) as well as their horizontal reflections ... and
    averaging the predictions made by the network's softmax layer on the ten patches."
    """

    def __init__(self, mean_image, *, crop_size: int, subtract_mean: bool = True, input_scale: float = 1.0) -> None:
        self.mean = _MeanImage(mean_image)
        self.size = int(self.mean.both.shape[1])
        if not 1 <= crop_size <= self.size:
            raise ValueError(f"crop size {crop_size} must be between 1 and the image size {self.size}")
        self.crop_size, self.subtract_mean, self.input_scale = crop_size, subtract_mean, input_scale

    def to(self, device) -> "EvalPreprocess":
        self.mean.to(device)
        return self

    def positions(self) -> list[tuple[int, int]]:
        """(top, left) of the top-left, top-right, bottom-left, bottom-right and centre patches."""
        far, mid = self.size - self.crop_size, (self.size - self.crop_size) // 2
        return [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]

    def _patch(self, images: torch.Tensor, top: int, left: int, out: torch.Tensor) -> torch.Tensor:
        size = self.crop_size
        out.copy_(images[:, top : top + size, left : left + size].permute(0, 3, 1, 2))
        if self.subtract_mean:
            out.sub_(self.mean.both[0, top : top + size, left : left + size].permute(2, 0, 1))
        if self.input_scale != 1.0:
            out.mul_(self.input_scale)
        return out

    def center(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, crop, crop): the centre patch."""
        _check_batch(images, self.size, self.mean.both.shape[3])
        n, _, _, c = images.shape
        out = torch.empty((n, c, self.crop_size, self.crop_size), dtype=torch.float32, device=images.device)
        return self._patch(images, *self.positions()[4], out)

    def ten_crops(self, images: torch.Tensor) -> torch.Tensor:
        """(10, N, C, crop, crop): TL, TR, BL, BR, centre, then the same five reflected."""
        _check_batch(images, self.size, self.mean.both.shape[3])
        n, _, _, c = images.shape
        out = torch.empty((10, n, c, self.crop_size, self.crop_size), dtype=torch.float32, device=images.device)
        for k, (top, left) in enumerate(self.positions()):
            self._patch(images, top, left, out[k])
            # reflecting a centred patch = reflected patch minus reflected mean
            out[k + 5] = out[k].flip(-1)
        return out


def ten_crop_probabilities(model: torch.nn.Module, ten_crop_batch: torch.Tensor, *, max_images_per_forward: int | None = None) -> torch.Tensor:
    """(N, classes): the mean over the ten views of the softmax probabilities (not the logits).

    ``ten_crop_batch`` is (10, N, C, H, W) from :meth:`EvalPreprocess.ten_crops`. The views go
    through ``model`` as one batch of 10N images, or in batches of ``max_images_per_forward``.
    Put the model in eval mode first (dropout off).
    """
    views, n = ten_crop_batch.shape[:2]
    flat = ten_crop_batch.reshape(views * n, *ten_crop_batch.shape[2:])
    step = max_images_per_forward or len(flat)
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(flat[i : i + step]).float(), dim=1) for i in range(0, len(flat), step)])
    return probs.view(views, n, -1).mean(dim=0)


def _check_batch(images: torch.Tensor, size: int, channels: int | None = None) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != size or images.shape[2] != size:
        raise ValueError(f"expected a uint8 batch (N, {size}, {size}, C), got {images.dtype} {tuple(images.shape)}")
    if channels is not None and images.shape[3] != channels:
        raise ValueError(f"images have {images.shape[3]} channels, the statistics {channels}")
