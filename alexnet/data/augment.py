"""Data augmentation (section 4.1) and the mean subtraction of section 2, on whole batches.

Everything works on a uint8 batch (N, S, S, C), as the loader yields it, on whatever device it
is on (move the batch to the model's device first and the work happens there), and returns
float32 (N, C, crop, crop). Per image, with every step switchable:

1. a random crop x crop patch (section 4.1: "extracting random 224 x 224 patches ... from the
   256 x 256 images"); every offset 0..S-crop equally likely; off: the centre patch;
2. a horizontal reflection with probability 0.5 (1 and 2 drawn per image, or, with
   ``crop_chunk_images``, once for each chunk of that many images of the batch);
3. PCA lighting: to every pixel add P (alpha * lambda'), with P the eigenvectors (columns) of the
   training set's pixel covariance, alpha ~ N(0, pca_lighting_std) drawn per image per call;
4. subtraction of the mean image, cropped (and reflected) like the image, or
   (``mean_centre_patch``) its centre patch, whatever the crop and reflection;
5. optionally (``lighting_shrink``, the released code) division of the centred, lit patch by
   1 + pca_lighting_std (1.1) while the colour noise is on;
6. multiplication by ``input_scale`` (1 in the paper: raw centred 0-255 values).

About lambda' in step 3 (``pca_scale``). The paper adds [p1 p2 p3][a1 l1, a2 l2, a3 l3]^T with
the eigenvalues l_i, which is dimensionally inconsistent (l is in pixel^2 units): the store holds
the eigenvalues of the covariance of 0-255 pixel values, and added literally they would shift
colours by hundreds of grey levels. Two readings are offered:

* ``"sqrt"`` (the default): lambda' = sqrt(l), the standard deviation along each eigenvector, in
  0-255 units. This is the authors' code (convdata.py: ``pca_vecs . (randn(3) * stdevs)`` times
  the noise coefficient 0.1). With ImageNet's shipped values sqrt(l) = 121.8, 37.1, 19.7 the shift
  has standard deviations 12.2, 3.7, 2.0 grey levels along p1..p3.
* ``"fb"``: lambda' = l / 255, the fb.resnet.torch convention (eigenvalues of [0, 1] pixels,
  0.2175, 0.0188, 0.0045, the shift added in [0, 1] units: 255 * P (alpha * l / 255^2)). On
  ImageNet about 5.8, 0.54, 0.15 grey levels: 2x weaker in brightness, 7-13x weaker in colour.

The released code (convdata.py) drew one crop position and one reflection per chunk of 32
images (``crop_chunk_images=32``) and subtracted the mean image's centre patch from every crop
and reflection (``mean_centre_patch``). Its colour noise came from a pool of 1024 draws that a
thread made afresh for every batch of data, each image taking a draw of its own: per image, as
here.

The crop is one indexing operation over the whole batch (:func:`crop_rows`, in the spirit of
airbench's ``batch_crop``), and so is the matching patch of the mean image; there is no Python
loop over images. Work happens in NHWC order, where every row of a patch is one contiguous run;
the result is returned as an (N, C, H, W) view of channels_last memory. The same code runs on
a CPU and on a GPU: on a CPU the training step of the paper's network takes ~30 ms per image,
and this augmentation well under 1 ms, so a dedicated CPU kernel would not pay for itself.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

LIGHTING_SCALE = 255.0  # the "fb" reading: see "About lambda'" above
PCA_SCALES = ("sqrt", "fb")


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


def lighting_magnitudes(eigenvalues: torch.Tensor, pca_scale: str = "sqrt") -> torch.Tensor:
    """lambda' of section 4.1's shift P (alpha * lambda') under ``pca_scale``, in 0-255 units:
    sqrt(lambda) (``"sqrt"``, the authors' code) or lambda / 255 (``"fb"``)."""
    if pca_scale == "sqrt":
        return eigenvalues.clamp(min=0).sqrt()  # a rounding-negative eigenvalue has no spread
    if pca_scale == "fb":
        return eigenvalues / LIGHTING_SCALE
    raise ValueError(f"pca_scale must be one of {PCA_SCALES}, got {pca_scale!r}")


def lighting_shift(alpha: torch.Tensor, eigenvalues: torch.Tensor, eigenvectors: torch.Tensor,
                   pca_scale: str = "sqrt") -> torch.Tensor:
    """Section 4.1's per-image colour shift P (alpha * lambda'), (N, C), in 0-255 units."""
    return (alpha * lighting_magnitudes(eigenvalues, pca_scale)) @ eigenvectors.T


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
        pca_scale: ``"sqrt"`` (shift P (alpha sqrt(lambda)), the authors' code) or ``"fb"``
            (P (alpha lambda / 255)); see "About lambda'" in the module's docstring.
        lighting_shrink: divide the centred, lit patch by 1 + pca_lighting_std while the noise is
            on (the released code, to keep the input's scale near the test input's).
        subtract_mean: subtract the mean image.
        input_scale: multiply the result by this.
        mean_centre_patch: subtract the mean image's centre patch from every crop and reflection
            (the released code), not the patch under the crop.
        crop_chunk_images: consecutive images of a batch that share one crop position and one
            reflection (32 in the released code; 1: every image its own).

    ``lighting_on`` (an attribute, True at first) switches the colour noise, and with it the
    shrink, off and on between calls (the released recipe turns it off for its last epochs);
    the alphas are drawn either way, so the random streams do not depend on it.

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
        pca_scale: str = "sqrt",
        lighting_shrink: bool = False,
        subtract_mean: bool = True,
        input_scale: float = 1.0,
        mean_centre_patch: bool = False,
        crop_chunk_images: int = 1,
    ) -> None:
        if pca_scale not in PCA_SCALES:
            raise ValueError(f"pca_scale must be one of {PCA_SCALES}, got {pca_scale!r}")
        self.pca_scale, self.lighting_shrink, self.lighting_on = pca_scale, lighting_shrink, True
        self.mean = _MeanImage(mean_image)
        self.scratch = _Scratch()
        self.size = int(self.mean.both.shape[1])
        if not 1 <= crop_size <= self.size:
            raise ValueError(f"crop size {crop_size} must be between 1 and the image size {self.size}")
        if pca_lighting_std < 0:
            raise ValueError(f"pca_lighting_std must be >= 0, got {pca_lighting_std}")
        if crop_chunk_images < 1:
            raise ValueError(f"crop_chunk_images must be >= 1, got {crop_chunk_images}")
        self.crop_size, self.mean_centre_patch, self.crop_chunk_images = crop_size, mean_centre_patch, crop_chunk_images
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
        """The random choices for n images: top, left, flip, alpha (on the generator's device);
        top, left and flip drawn once per chunk of ``crop_chunk_images`` images."""
        device, reach = generator.device, self.size - self.crop_size + 1
        chunks = -(-n // self.crop_chunk_images)
        if self.random_crop:
            top = torch.randint(0, reach, (chunks,), generator=generator, device=device)
            left = torch.randint(0, reach, (chunks,), generator=generator, device=device)
        else:
            top = left = torch.full((chunks,), (self.size - self.crop_size) // 2, device=device)
        if self.flip:
            flip = torch.rand(chunks, generator=generator, device=device) < 0.5
        else:
            flip = torch.zeros(chunks, dtype=torch.bool, device=device)
        if self.crop_chunk_images > 1:
            top, left, flip = (t.repeat_interleave(self.crop_chunk_images)[:n] for t in (top, left, flip))
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

    @staticmethod
    def _output(out: torch.Tensor | None, shape, device) -> torch.Tensor:
        if out is None:
            return torch.empty(shape, dtype=torch.float32, device=device)
        if tuple(out.shape) != shape or out.dtype != torch.float32 or not out.is_contiguous() or out.device != device:
            raise ValueError(f"out must be a contiguous float32 tensor of shape {shape} (N, crop, crop, C) on {device}")
        return out

    # reflect without a host sync: None = on every device but the CPU (where nonzero() costs nothing)
    sync_free_flip: bool | None = None

    def apply(self, images: torch.Tensor, top, left, flip, alpha, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The augmentation for given draws (what ``__call__`` does after drawing)."""
        size, device = self.crop_size, images.device
        n, c = images.shape[0], images.shape[3]
        shape = (n, size, size, c)
        rows = top[:, None] + torch.arange(size, device=device)
        crops = crop_rows(images, rows, left, size, out=self.scratch.get("crops", shape, torch.uint8, device))
        if device.type != "cpu" if self.sync_free_flip is None else self.sync_free_flip:
            # mirror every crop and keep the flipped ones: nonzero() would make the host wait for
            # the device (and cannot be captured in a CUDA graph); the same bytes either way
            mirrored = torch.ops.aten.flip.out(crops, [2], out=self.scratch.get("mirrored", shape, torch.uint8, device))
            torch.where(flip[:, None, None, None], mirrored, crops, out=crops)
        elif len(flipped := flip.nonzero().squeeze(1)):
            k = len(flipped)
            chosen = torch.index_select(crops, 0, flipped, out=self.scratch.get("chosen", shape, torch.uint8, device)[:k])
            mirrored = torch.ops.aten.flip.out(chosen, [2], out=self.scratch.get("mirrored", shape, torch.uint8, device)[:k])
            crops.index_copy_(0, flipped, mirrored)
        out = self._output(out, shape, device)
        out.copy_(crops)
        if self.subtract_mean and self.mean_centre_patch:
            centre = (self.size - size) // 2
            out.sub_(self.mean.both[0, centre : centre + size, centre : centre + size])
        elif self.subtract_mean:
            out.sub_(self.mean.under(rows, left, flip, size, self.scratch.get("mean", shape, torch.float32, device)))
        lit = self.pca_lighting_std > 0 and self.lighting_on
        if lit:
            shift = lighting_shift(alpha, self.eigenvalues, self.eigenvectors, self.pca_scale)  # (N, C)
            # added to whole rows ([s0 s1 s2 s0 s1 s2 ...]): a broadcast over a long inner dimension is fast
            out.view(len(out), size, -1).add_(shift.repeat(1, size)[:, None, :])
        scale = self.input_scale / (1.0 + self.pca_lighting_std) if lit and self.lighting_shrink else self.input_scale
        if scale != 1.0:
            out.mul_(scale)
        return out.permute(0, 3, 1, 2)


def device_batches(loader, augment: TrainAugment, generator: torch.Generator, device: torch.device,
                   channels_last: bool, *, copy_stream: bool = True):
    """The training input path: (images float32 (B, C, crop, crop), labels int64 (B,)) on ``device``
    from the uint8 batches of ``loader`` (a :class:`~alexnet.data.loader.Loader`), augmented there.

    The images are channels_last in memory (the augmentation works in NHWC; ``channels_last``
    makes sure of it). On a GPU each batch is copied on a stream of its own (``copy_stream``), so
    the next batch travels while the current step computes (on the step's stream it would wait for
    the step, and the step for it). On a CPU the float output buffer is reused from step to step,
    since every step is done with its input before the next batch is made."""
    reuse = device.type == "cpu"
    out = None
    copies = torch.cuda.Stream(device) if device.type == "cuda" and copy_stream else None
    for images, labels in loader:
        if copies is None:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
        else:
            with torch.cuda.stream(copies):  # overlaps the step that the consumer has just queued
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
            step = torch.cuda.current_stream(device)
            step.wait_stream(copies)  # this batch's augmentation starts once it has arrived
            images.record_stream(step)  # made on the copy stream, used on the step's: not reused before
            labels.record_stream(step)
        if out is not None and out.shape[0] != images.shape[0]:
            out = None
        x = augment(images, generator, out=out)
        if reuse:
            out = x.permute(0, 2, 3, 1)  # the (B, crop, crop, C) storage behind x
        yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), labels


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
