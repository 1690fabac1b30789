"""The training set's statistics: the mean image (section 2) and the pixel PCA (section 4.1).

Both come from two integer sums over the training images, accumulated exactly in int64 chunk by
chunk as the images are decoded (:mod:`alexnet.data.pool`): the sum image and the sum of the
outer products x x^T of every pixel's C values. Integer sums do not depend on the order in which
chunks finish nor on interruptions (:mod:`alexnet.data.prepare` resumes with them), and the float
covariance is formed only once, at the end, from the exact totals.
"""

from __future__ import annotations

import numpy as np


def pixel_sums(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int64 sum image (S, S, C) and int64 sum of x x^T (C, C) over every pixel of uint8 images (N, S, S, C)."""
    c = images.shape[-1]
    sum_image = images.sum(axis=0, dtype=np.int64)
    sum_outer = np.zeros((c, c), np.int64)
    for image in images:  # float64 is exact here: one image sums to < 2^53
        px = image.reshape(-1, c).astype(np.float64)
        sum_outer += np.rint(px.T @ px).astype(np.int64)
    return sum_image, sum_outer


def pixel_statistics(sum_image: np.ndarray, sum_outer: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    """Mean image, and the eigen-decomposition of the C x C covariance of all pixel values.

    Section 2's mean image is ``sum_image / count``. Section 4.1's PCA is over every pixel of the
    training set, as (unbiased) np.cov of the (count * S * S, C) pixel matrix would give; it is
    formed here in exact integer arithmetic from the sums and only then converted to float.
    Eigenvalues come largest first; each eigenvector (a column) has its largest component positive.
    """
    c = sum_outer.shape[0]
    mean_image = (sum_image / count).astype(np.float32)
    pixels = count * sum_image.shape[0] * sum_image.shape[1]
    sx = [int(v) for v in sum_image.sum(axis=(0, 1), dtype=np.int64)]
    sxx = [[int(v) for v in row] for row in sum_outer]
    covariance = np.array([[(pixels * sxx[i][j] - sx[i] * sx[j]) / (pixels * (pixels - 1)) for j in range(c)] for i in range(c)])
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = np.clip(eigenvalues[order], 0, None), eigenvectors[:, order]
    signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(c)])
    eigenvectors = eigenvectors * np.where(signs == 0, 1, signs)
    return mean_image, eigenvalues.astype(np.float32), eigenvectors.astype(np.float32), covariance
