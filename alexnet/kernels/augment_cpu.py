"""Section 4.1's training input in one pass over memory, for batches on the CPU.

Eager torch does the crop, the reflection, the conversion to float, the mean subtraction, the
colour shift and the scaling as five or six passes over the batch, each reading or writing a
full-size tensor (77 MB of float32 for 128 crops of 224 x 224 x 3): the work is memory-bound
and most of the time goes to moving bytes. Here each output row is produced once, while its
source row is in cache:

    out[n, y, x, c] = ((float) src[image n][top_n + y, left_n + x', c] - mean[top_n + y, left_n + x', c]
                       + shift[n, c]) * scale,       x' = crop - 1 - x if flip_n else x

in the same order of float32 operations as eager torch (subtract, add, multiply, each rounded;
no fused multiply-add), so the two agree bit for bit. The source images are addressed through
an index (image n of the output is ``src[index[n]]``), so a batch can be cut straight out of a
memory-mapped store without first copying whole images into a uint8 batch. Images are split
over ``threads`` POSIX threads; ctypes releases the GIL for the call.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from alexnet.kernels.cbuild import HELPERS_C, CLibrary

SOURCE = HELPERS_C + r"""
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__) || defined(__SSSE3__)
#include <immintrin.h>
#endif

typedef struct {
    const uint8_t *src;
    const int64_t *index;             /* output image n comes from src image index[n] (NULL: n) */
    int64_t image_bytes, row_bytes, channels, crop;
    const int64_t *top, *left;
    const uint8_t *flip;
    const float *shift;               /* (N, C) or NULL */
    const float *mean;                /* (2, S, S, C): the mean image and its reflection, or NULL */
    float scale;
    int scaled;
    float *out;                       /* (N, crop, crop, C) */
    int64_t first, last;
} job;

/* A finished row (in L1) to the output. Streaming stores write whole cache lines without first
   reading them, and keep a batch far larger than the caches from evicting the images' rows
   and the mean image. */
static void store_row(float *dst, const float *row, int64_t n) {
    int64_t t = 0;
#if defined(__AVX__)
    if (((uintptr_t)dst & 31) == 0)
        for (; t + 8 <= n; t += 8) _mm256_stream_ps(dst + t, _mm256_loadu_ps(row + t));
#endif
    memcpy(dst + t, row + t, (size_t)(n - t) * sizeof(float));
}

/* r = the crop's row of pixels s in reverse order (crop pixels of c bytes). One byte shuffle per
   5 RGB or 16 gray pixels; r has 16 bytes of slack past the row. */
static void reflect_row(uint8_t *restrict r, const uint8_t *restrict s, int64_t crop, int64_t c) {
    int64_t x = 0;
#if defined(__SSSE3__)
    if (c == 3 || c == 1) {
        const int64_t per = c == 3 ? 5 : 16;  /* pixels per 16-byte shuffle */
        const __m128i mask = c == 3 ? _mm_setr_epi8(12, 13, 14, 9, 10, 11, 6, 7, 8, 3, 4, 5, 0, 1, 2, 15)
                                    : _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        for (; x + per <= crop; x += per) {
            /* output pixels x .. x + per - 1 are source pixels crop - 1 - x down to crop - per - x */
            const uint8_t *from = s + (crop - per - x) * c;
            __m128i v;
            if (c == 3 && x == 0) {  /* 16 bytes from here would read one byte past the crop */
                uint8_t last[16] = {0};
                memcpy(last, from, 15);
                v = _mm_loadu_si128((const __m128i *)last);
            } else {
                v = _mm_loadu_si128((const __m128i *)from);
            }
            /* RGB: the 16th byte stored is junk, overwritten by the next chunk or the tail below */
            _mm_storeu_si128((__m128i *)(r + x * c), _mm_shuffle_epi8(v, mask));
        }
    }
#endif
    for (; x < crop; x++)
        for (int64_t k = 0; k < c; k++) r[x * c + k] = s[(crop - 1 - x) * c + k];
}

static void *work(void *arg) {
    const job *j = arg;
    const int64_t c = j->channels, crop = j->crop, len = crop * c, size = j->row_bytes / c;
    float *scratch = malloc((size_t)len * 2 * sizeof(float) + (size_t)len + 16);
    if (!scratch) return (void *)1;
    float *shift_row = scratch, *row = scratch + len;
    uint8_t *reflected = (uint8_t *)(scratch + 2 * len);
    for (int64_t n = j->first; n < j->last; n++) {
        const int64_t source = j->index ? j->index[n] : n, top = j->top[n], left = j->left[n];
        const uint8_t *img = j->src + source * j->image_bytes + top * j->row_bytes + left * c;
        /* a reflected crop takes the reflected mean's patch at column size - crop - left */
        const float *mean = !j->mean ? NULL
            : j->flip[n] ? j->mean + size * j->row_bytes + top * j->row_bytes + (size - crop - left) * c
                         : j->mean + top * j->row_bytes + left * c;
        if (j->shift)
            for (int64_t t = 0; t < len; t++) shift_row[t] = j->shift[n * c + t % c];
        for (int64_t y = 0; y < crop; y++) {
            const uint8_t *s = img + y * j->row_bytes;
            const float *m = mean ? mean + y * j->row_bytes : NULL;
            int64_t t;
            if (j->flip[n]) {
                reflect_row(reflected, s, crop, c);
                s = reflected;
            }
            if (m) for (t = 0; t < len; t++) row[t] = (float)s[t] - m[t];
            else for (t = 0; t < len; t++) row[t] = (float)s[t];
            if (j->shift) for (t = 0; t < len; t++) row[t] += shift_row[t];
            if (j->scaled) for (t = 0; t < len; t++) row[t] *= j->scale;
            store_row(j->out + (n * crop + y) * len, row, len);
        }
    }
#if defined(__AVX__)
    _mm_sfence();  /* the streamed rows are visible before the caller reads the output */
#endif
    free(scratch);
    return NULL;
}

int augment_cpu(const uint8_t *src, const int64_t *index, int64_t image_size, int64_t channels, int64_t n,
                int64_t crop, const int64_t *top, const int64_t *left, const uint8_t *flip,
                const float *shift, const float *mean, float scale, float *out, int threads) {
    job jobs[MAX_THREADS];
    advise_huge_pages(out, (size_t)(n * crop * crop * channels) * sizeof(float));
    threads = clamp_threads(threads, n);
    for (int i = 0; i < threads; i++)
        jobs[i] = (job){src, index, image_size * image_size * channels, image_size * channels, channels, crop,
                        top, left, flip, shift, mean, scale, scale != 1.0f, out,
                        n * i / threads, n * (i + 1) / threads};
    return run_jobs(work, jobs, sizeof(job), threads);
}
"""


def _declare(lib: ctypes.CDLL) -> None:
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.augment_cpu.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ctypes.c_float, ptr, ctypes.c_int]
    lib.augment_cpu.restype = ctypes.c_int


LIBRARY = CLibrary("augment_cpu", SOURCE, _declare, fallback="eager torch (several passes over memory)",
                   flags=("-ffp-contract=off",))  # the same roundings as eager torch


def available() -> bool:
    """Whether the kernel can run here; the first call builds it (about a second)."""
    return LIBRARY.available()


def _address(array) -> int:
    return array.data_ptr() if isinstance(array, torch.Tensor) else array.__array_interface__["data"][0]


def augment_cpu(
    source,
    index: torch.Tensor | None,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    shift: torch.Tensor | None,
    mean: torch.Tensor | None,
    scale: float,
    out: torch.Tensor,
    threads: int | None = None,
) -> torch.Tensor:
    """Write the augmented crops of ``source[index]`` into ``out`` (N, crop, crop, C) float32 and return it.

    ``source`` is a C-contiguous uint8 (M, S, S, C) tensor or NumPy array (a memmap of a store
    split works: only the crop rows are read). ``index`` (N,) int64 picks the images (None:
    image n of ``source``); ``top``, ``left`` (N,) int64 place the crops, ``flip`` (N,) bool
    reflects them, ``shift`` (N, C) float32 is the colour shift, ``mean`` the (S, S, C)
    float32 mean image (None: none subtracted).
    """
    lib = LIBRARY.get()
    if lib is None:
        raise RuntimeError(f"the augmentation CPU kernel is unavailable: {LIBRARY.unavailable_reason()}")
    m, size, width, channels = source.shape
    n, crop = out.shape[0], out.shape[1]
    if size != width or source.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"source must be uint8 (M, S, S, C), got {source.dtype} {tuple(source.shape)}")
    if isinstance(source, torch.Tensor) and (source.device.type != "cpu" or not source.is_contiguous()):
        raise ValueError("source must be a contiguous CPU tensor")
    if isinstance(source, np.ndarray) and not source.flags.c_contiguous:
        raise ValueError("source must be a C-contiguous array")
    if out.shape != (n, crop, crop, channels) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous float32 (N, crop, crop, {channels}) tensor, got {tuple(out.shape)}")
    if n == 0:
        return out
    # the C code trusts every offset: check them here (reads outside the images would crash)
    top, left = top.to(torch.int64).contiguous(), left.to(torch.int64).contiguous()
    reach = size - crop
    if int(top.min()) < 0 or int(left.min()) < 0 or int(top.max()) > reach or int(left.max()) > reach:
        raise ValueError(f"crop offsets must lie in [0, {reach}]")
    if index is not None:
        index = index.to(torch.int64).contiguous()
        if len(index) != n or int(index.min()) < 0 or int(index.max()) >= m:
            raise ValueError(f"index must hold {n} image numbers in [0, {m})")
    elif m < n:
        raise ValueError(f"source holds {m} images, out {n}")
    flip = flip.to(torch.uint8).contiguous()
    if shift is not None:
        shift = shift.to(torch.float32).contiguous()
        if shift.shape != (n, channels):
            raise ValueError(f"shift must be (N, C) = ({n}, {channels}), got {tuple(shift.shape)}")
    if mean is not None:
        mean = mean.to(torch.float32).contiguous()
        if mean.shape != (2, size, size, channels):
            raise ValueError(f"mean must be (2, S, S, C) = (2, {size}, {size}, {channels}), got {tuple(mean.shape)}")
    if len(top) != n or len(left) != n or len(flip) != n:
        raise ValueError(f"top, left and flip must hold {n} values each")
    failed = lib.augment_cpu(
        _address(source), None if index is None else index.data_ptr(), size, channels, n, crop,
        top.data_ptr(), left.data_ptr(), flip.data_ptr(),
        None if shift is None else shift.data_ptr(), None if mean is None else mean.data_ptr(),
        float(scale), out.data_ptr(), threads or torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("the augmentation CPU kernel could not allocate its scratch memory")
    return out
