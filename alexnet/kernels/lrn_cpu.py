"""LRN forward and backward for float32 CPU tensors: one fused C loop each, built on first use.

Eager torch needs ten or more passes over memory for the forward and backward of LRN (square,
window sum, normaliser, its power, products), each one a full-size temporary. On a CPU these
tensors are far larger than the caches (conv1's output at batch 32 is 37 MB), so the passes,
not the arithmetic, set the cost. The loops below read every input once and write every output
once; the window sum, the normaliser and its power live in a small per-thread scratch that
stays in cache.

* NCHW (contiguous): a tile of ``TILE`` positions is processed for all the channels of one
  block at a time, the window sum running down the channel axis, vectorised along positions.
* NHWC (channels_last): the channels of one pixel are contiguous; the window sum is ``size``
  shifted loads from a zero-padded copy of the squares, vectorised along channels.

The backward recomputes the window sum from ``x`` in cache instead of saving the normaliser:
the forward then allocates only its output (fresh 37 MB buffers cost page faults on every
step), and ``x`` is usually alive anyway: the ReLU before LRN keeps it for its own backward.

The source is compiled with the system C compiler (``cc -O3 -march=native``) into a
per-user cache directory and loaded with :mod:`ctypes`; ctypes releases the GIL and the work
is split over ``torch.get_num_threads()`` POSIX threads. Where no compiler is found or the
build fails, :func:`available` is False and the caller falls back to eager torch.
"""

from __future__ import annotations

import ctypes

import torch

from alexnet.kernels.cbuild import HELPERS_C, CLibrary
from alexnet.kernels.compile_marks import constant_result
from alexnet.kernels.layout import memory_format_of

SOURCE = HELPERS_C + r"""
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TILE 1024         /* NCHW: positions per tile, 4 KB of each channel row */

typedef struct {
    long size, front, back;   /* the window of channel i is [i - front, i + back] */
    float alpha, beta, k;
    int pow_mode;             /* 1: beta = 0.75, 2: beta = 0.5, 3: beta = 1, 0: other */
} lrn_params;

/* s[t] = sum over r < size of rows[r * stride + t], for n values */
static void window(float *restrict s, const float *restrict rows, long stride, long size, long n) {
    long t, r;
    for (t = 0; t < n; t++) s[t] = rows[t];
    for (r = 1; r < size; r++)
        for (t = 0; t < n; t++) s[t] += rows[r * stride + t];
}

/* Forward, from the window sums s: y = x d^-beta with d = k + alpha s. Square roots instead
   of powf for the usual betas: with r = d^-1/2, d^-3/4 = r sqrt(r). */
static void forward_row(float *restrict y, const float *restrict x, const float *restrict s,
                        long n, const lrn_params *q) {
    const float k = q->k, alpha = q->alpha, beta = q->beta;
    long t;
    switch (q->pow_mode) {
    case 1: for (t = 0; t < n; t++) { float r = 1.0f / sqrtf(k + alpha * s[t]); y[t] = x[t] * (r * sqrtf(r)); } break;
    case 2: for (t = 0; t < n; t++) y[t] = x[t] / sqrtf(k + alpha * s[t]); break;
    case 3: for (t = 0; t < n; t++) y[t] = x[t] / (k + alpha * s[t]); break;
    default: for (t = 0; t < n; t++) y[t] = x[t] * powf(k + alpha * s[t], -beta);
    }
}

/* Backward, first half, from the window sums s: p = d^-beta and gq = g x d^(-beta-1). */
static void backward_row(float *restrict p, float *restrict gq, const float *restrict g,
                         const float *restrict x, const float *restrict s, long n,
                         const lrn_params *q) {
    const float k = q->k, alpha = q->alpha, beta = q->beta;
    long t;
    switch (q->pow_mode) {
    case 1:
        for (t = 0; t < n; t++) {
            float r = 1.0f / sqrtf(k + alpha * s[t]), pt = r * sqrtf(r);
            p[t] = pt;
            gq[t] = g[t] * x[t] * (pt * r * r);
        }
        break;
    case 2:
        for (t = 0; t < n; t++) { float r = 1.0f / sqrtf(k + alpha * s[t]); p[t] = r; gq[t] = g[t] * x[t] * (r * r * r); }
        break;
    case 3:
        for (t = 0; t < n; t++) { float r = 1.0f / (k + alpha * s[t]); p[t] = r; gq[t] = g[t] * x[t] * (r * r); }
        break;
    default:
        for (t = 0; t < n; t++) {
            float d = k + alpha * s[t], pt = powf(d, -beta);
            p[t] = pt;
            gq[t] = g[t] * x[t] * (pt / d);
        }
    }
}

typedef struct { long first, last; } span;
typedef struct {
    span items;               /* this thread's share: tiles (NCHW) or pixels (NHWC) */
    const float *x, *g;       /* g is NULL for the forward */
    float *y;
    long groups, cg, len;     /* channels per group; NCHW: positions per channel */
    const lrn_params *q;
} job;

/* NCHW. A tile of positions of one group of channels streams down the channels; rings of
   `size` rows hold the latest squares and (backward) the latest g x d^(-beta-1), so the
   scratch stays in cache and x, g, y are each read or written once. The rings start zeroed
   and take zero rows past the last channel, which clips the window at both ends. */
static void *planar(void *arg) {
    const job *jb = arg;
    const lrn_params *q = jb->q;
    const long cg = jb->cg, len = jb->len, size = q->size, front = q->front, back = q->back;
    const long tiles = (len + TILE - 1) / TILE;
    const int backward = jb->g != NULL;
    const float c2 = -2.0f * q->alpha * q->beta;
    float *scratch = malloc((2 * size + front + 2) * TILE * sizeof(float));
    if (!scratch) return (void *)1;
    float *sq = scratch, *qg = sq + size * TILE, *w = qg + size * TILE;
    float *p = w + TILE;     /* front + 1 rows: d^-beta of channels i - front .. i */
    for (long item = jb->items.first; item < jb->items.last; item++) {
        const long block = item / tiles, l0 = (item % tiles) * TILE;
        const long n = len - l0 < TILE ? len - l0 : TILE;
        const float *x = jb->x + block * cg * len + l0;
        const float *g = backward ? jb->g + block * cg * len + l0 : NULL;
        float *y = jb->y + block * cg * len + l0;
        long s, t;
        memset(scratch, 0, 2 * size * TILE * sizeof(float));
        for (s = 0; s < cg + back + (backward ? front : 0); s++) {
            float *sqrow = sq + (s % size) * TILE;
            if (s < cg) for (t = 0; t < n; t++) sqrow[t] = x[s * len + t] * x[s * len + t];
            else memset(sqrow, 0, n * sizeof(float));
            const long i = s - back;   /* the window of channel i is now in the ring */
            if (!backward) {
                if (i < 0) continue;
                window(w, sq, TILE, size, n);
                forward_row(y + i * len, x + i * len, w, n, q);
                continue;
            }
            if (i >= 0) {
                float *qrow = qg + (i % size) * TILE;
                if (i < cg) {
                    window(w, sq, TILE, size, n);
                    backward_row(p + (i % (front + 1)) * TILE, qrow, g + i * len, x + i * len, w, n, q);
                } else {
                    memset(qrow, 0, n * sizeof(float));
                }
            }
            const long j = i - front;   /* the transposed window [j - back, j + front] is in */
            if (j < 0) continue;
            const float *pj = p + (j % (front + 1)) * TILE;
            window(w, qg, TILE, size, n);
            for (t = 0; t < n; t++) y[j * len + t] = g[j * len + t] * pj[t] + c2 * x[j * len + t] * w[t];
        }
    }
    free(scratch);
    return NULL;
}

/* NHWC. The channels of a pixel are contiguous: the window sum is `size` shifted reads of a
   zero-padded copy of the squares (backward: of g x d^(-beta-1), padded the other way). */
static void *interleaved(void *arg) {
    const job *jb = arg;
    const lrn_params *q = jb->q;
    const long cg = jb->cg, rows = cg + q->size - 1;
    const int backward = jb->g != NULL;
    const float c2 = -2.0f * q->alpha * q->beta;
    float *scratch = calloc(2 * rows + 2 * cg, sizeof(float));
    if (!scratch) return (void *)1;
    float *sq = scratch, *qg = sq + rows, *w = qg + rows, *p = w + cg;
    for (long pix = jb->items.first; pix < jb->items.last; pix++)
        for (long grp = 0; grp < jb->groups; grp++) {
            const long off = (pix * jb->groups + grp) * cg;
            const float *x = jb->x + off;
            float *y = jb->y + off;
            long c;
            for (c = 0; c < cg; c++) sq[q->front + c] = x[c] * x[c];
            window(w, sq, 1, q->size, cg);
            if (!backward) {
                forward_row(y, x, w, cg, q);
                continue;
            }
            const float *g = jb->g + off;
            backward_row(p, qg + q->back, g, x, w, cg, q);
            window(w, qg, 1, q->size, cg);
            for (c = 0; c < cg; c++) y[c] = g[c] * p[c] + c2 * x[c] * w[c];
        }
    free(scratch);
    return NULL;
}

/* x, y (and g) laid out as NCHW blocks (interleaved = 0: outer = N * groups blocks of cg x len)
   or NHWC pixels (interleaved = 1: outer = N * H * W pixels of groups x cg channels). Returns
   nonzero if a scratch buffer could not be allocated. */
int lrn_cpu(const float *x, const float *g, float *y, int interleaved_layout, long outer,
            long groups, long cg, long len, long size, float alpha, float beta, float k, int threads) {
    lrn_params q = {size, size / 2, (size - 1) / 2, alpha, beta, k, 0};
    q.pow_mode = beta == 0.75f ? 1 : beta == 0.5f ? 2 : beta == 1.0f ? 3 : 0;
    void *(*fn)(void *) = interleaved_layout ? interleaved : planar;
    long items = interleaved_layout ? outer : outer * ((len + TILE - 1) / TILE);
    job jobs[MAX_THREADS];
    advise_huge_pages(y, (size_t)(interleaved_layout ? outer * groups * cg : outer * cg * len) * sizeof(float));
    threads = clamp_threads(threads, items);
    for (int i = 0; i < threads; i++)
        jobs[i] = (job){{items * i / threads, items * (i + 1) / threads}, x, g, y, groups, cg, len, &q};
    return run_jobs(fn, jobs, sizeof(job), threads);
}
"""

def _declare(lib) -> None:
    ptr, long, f32 = ctypes.c_void_p, ctypes.c_long, ctypes.c_float
    lib.lrn_cpu.argtypes = [ptr, ptr, ptr, ctypes.c_int, long, long, long, long, long, f32, f32, f32, ctypes.c_int]
    lib.lrn_cpu.restype = ctypes.c_int


LIBRARY = CLibrary("lrn_cpu", SOURCE, _declare, fallback="eager torch, several times slower")


def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on the first call; None (and one warning) where impossible."""
    return LIBRARY.get()


@constant_result  # torch.compile evaluates it once instead of tracing it
def available() -> bool:
    """Whether the kernels can run here; the first call builds them (about a second)."""
    return LIBRARY.loaded is not None or LIBRARY.available()


def unavailable_reason() -> str | None:
    """Why the kernels could not be built (None when they were)."""
    return LIBRARY.unavailable_reason()


def _run(x: torch.Tensor, grad: torch.Tensor | None, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """Forward (grad None) or backward of float32 x in one of the two layouts the C code reads."""
    if x.dim() < 2 or groups < 1 or x.shape[1] % groups:  # the C code would read the blocks wrongly
        raise ValueError(f"LRN needs an input of shape (N, C, ...) with C divisible by groups={groups}, got {tuple(x.shape)}")
    lib = LIBRARY.loaded or library()
    if lib is None:
        raise RuntimeError(f"the LRN CPU kernels are unavailable: {LIBRARY.unavailable_reason()}")
    x = x.float()
    # channels_last (NHWC) or channels_last_3d that is not also contiguous: the channels interleaved
    interleaved = not x.is_contiguous() and (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                             or x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d))
    if not interleaved:
        x = x.contiguous()
    y = torch.empty_like(x)  # x's strides
    if grad is not None:
        grad = grad.float()
        if grad.stride() != x.stride():
            grad = torch.empty_like(x).copy_(grad)
    if x.numel() == 0:
        return y
    n, c = x.shape[0], x.shape[1]
    spatial = x.numel() // (n * c)
    outer = n * spatial if interleaved else n * groups
    failed = lib.lrn_cpu(
        x.data_ptr(), None if grad is None else grad.data_ptr(), y.data_ptr(), int(interleaved),
        outer, groups, c // groups, spatial, size, alpha, beta, k,
        1 if x.numel() < 65536 else torch.get_num_threads(),  # a thread costs more than small work
    )
    if failed:
        raise MemoryError("the LRN CPU kernel could not allocate its scratch memory")
    return y


@torch.library.custom_op("alexnet::lrn_cpu", mutates_args=(), device_types="cpu")
def lrn_cpu(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    return _run(x, None, size, alpha, beta, k, groups).to(x.dtype)


@torch.library.custom_op("alexnet::lrn_cpu_backward", mutates_args=(), device_types="cpu")
def lrn_cpu_backward(
    grad: torch.Tensor, x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    return _run(x, grad, size, alpha, beta, k, groups).to(x.dtype)


@lrn_cpu.register_fake
def _(x, size, alpha, beta, k, groups):
    return torch.empty_like(x, memory_format=memory_format_of(x))


@lrn_cpu_backward.register_fake
def _(grad, x, size, alpha, beta, k, groups):
    return torch.empty_like(x, memory_format=memory_format_of(x))


def _setup_context(ctx, inputs, output):
    x, *params = inputs
    ctx.save_for_backward(x)  # the window sum is recomputed from x: no normaliser is stored
    ctx.params = params


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the backward in differentiable ops (second derivatives)
        from alexnet.kernels.lrn_autograd import differentiable_backward

        size, alpha, beta, k, groups = ctx.params
        return differentiable_backward(grad, x, size, alpha, beta, k, groups), None, None, None, None, None
    return lrn_cpu_backward(grad, x, *ctx.params), None, None, None, None, None


lrn_cpu.register_autograd(_backward, setup_context=_setup_context)


def local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1) -> torch.Tensor:
    """LRN of a CPU tensor with the compiled kernels; any float dtype, float32 arithmetic."""
    return lrn_cpu(x, size, float(alpha), float(beta), float(k), groups)
