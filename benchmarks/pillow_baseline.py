"""The baseline data path of the benchmarks: JPEG files decoded and augmented one image at a time with Pillow.

What a torchvision-style ImageFolder pipeline does, with the same augmentation as ours (section
4.1: a random crop, a reflection half the time, the mean image under the crop subtracted, the
PCA colour shift added, scaled), so that the two paths produce the same kind of batch:
float32 (N, 3, crop, crop), and differ only in how they make it.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_jpegs(root: Path, images: int, classes: int, size: int, *, seed: int = 0, val_every: int = 0,
                wider: int = 0) -> None:
    """``images`` JPEGs of ``size + wider`` x ``size`` px under ``root/train/c<class>/`` (and every
    ``val_every``-th also under ``root/val/``): smooth random colour fields with a little noise, which
    compress to a natural photo's size (~15-30 kB at 256 px). Written by all cores."""
    jobs = [(root, i, classes, size, seed, val_every, wider) for i in range(images)]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_write_one, jobs, chunksize=64))


def _write_one(job) -> None:
    root, i, classes, size, seed, val_every, wider = job
    rng = np.random.default_rng([seed, i])
    coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size + wider, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(coarse).astype(np.int16) + rng.integers(-12, 13, (size, size + wider, 3), dtype=np.int16)
    img = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    for split in ("train", "val") if val_every and i % val_every == 0 else ("train",):
        folder = root / split / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:06d}.jpg", quality=90)


class PillowAugmentFolder(torch.utils.data.Dataset):
    """Decode, rescale and centre-crop to the store's size, then crop, reflect, centre, light and scale,
    one image at a time in a DataLoader worker; returns (float32 (3, crop, crop), label)."""

    def __init__(self, root: Path, store, crop: int, *, pca_lighting_std: float = 0.1, input_scale: float = 1.0) -> None:
        self.files = sorted(root.glob("*/*.jpg"))
        self.classes = {name: i for i, name in enumerate(store.classes)}
        self.size, self.crop = store.image_size, crop
        self.mean = np.asarray(store.mean_image, np.float32)
        self.eigenvalues = np.asarray(store.pca_eigenvalues, np.float32)
        self.eigenvectors = np.asarray(store.pca_eigenvectors, np.float32)
        self.pca_lighting_std, self.input_scale = pca_lighting_std, input_scale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        s, crop = self.size, self.crop
        with Image.open(self.files[i]) as img:
            img = img.convert("RGB")
            w, h = img.size
            if (w, h) != (s, s):  # shorter side to s, then the centre square (what prepare does once)
                scale = s / min(w, h)
                img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.Resampling.BILINEAR)
                w, h = img.size
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
            top, left = (int(v) for v in torch.randint(0, s - crop + 1, (2,)))
            x = np.asarray(img.crop((left, top, left + crop, top + crop)), np.float32)
        x = x - self.mean[top : top + crop, left : left + crop]
        if torch.rand(()) < 0.5:
            x = x[:, ::-1]
        alpha = torch.randn(3).numpy() * self.pca_lighting_std
        x = (x + self.eigenvectors @ (alpha * self.eigenvalues)) * self.input_scale
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))), self.classes[self.files[i].parent.name]
