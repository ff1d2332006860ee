r"""Numba CPU kernels for LayerNorm.

Math (per row of ``C`` elements, biased variance, as ``torch.nn.LayerNorm``)::

    mean  = sum(x) / C
    var   = sum((x - mean)**2) / C
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * w + b

Backward, with ``wdy = w * dy``::

    c1 = sum(x_hat * wdy) / C
    c2 = sum(wdy) / C
    dx = (wdy - (x_hat * c1 + c2)) * rstd
    dw = sum over rows of dy * x_hat
    db = sum over rows of dy

Statistics (single read of the row from memory)
    The row is shifted by a pivot ``p = x[0]`` (so constant rows are exactly zero and large
    offsets cancel before anything is summed), then cut into blocks of ``BLOCK`` elements.
    Each block gets an exact two-pass mean and M2 while it sits in L1, and blocks are merged
    with Chan's formula.  All accumulation is float64, so float32 rows with a mean of 1e4 and
    a std of 1e-2, or values of 1e18, lose nothing.  The inner loops are plain sums that LLVM
    vectorises (``reassoc``); Welford's per-element division never appears.

Kernels see only C-contiguous 2-D arrays and scalars; ``fastln._checks`` makes them.
Each kernel comes as a parallel and a serial twin (two tiny functions, so Numba's on-disk
cache keeps them apart); small inputs take the serial one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastln._config import BLOCK, CACHE, FASTMATH

_jit = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy")


# ---------------------------------------------------------------------------------------
# Row helpers (inlined by LLVM into the kernels)
# ---------------------------------------------------------------------------------------
@njit(**_jit)
def _row_moments(x, i):
    """Shifted mean and M2 of row ``i``: returns ``(pivot, mean - pivot, M2)`` in float64."""
    cols = x.shape[1]
    pivot = np.float64(x[i, 0]) if cols > 0 else 0.0
    count = 0.0
    mean_d = 0.0  # mean of (x - pivot) over the blocks merged so far
    m2 = 0.0
    for start in range(0, cols, BLOCK):
        stop = min(start + BLOCK, cols)
        nb = np.float64(stop - start)
        s = 0.0
        for j in range(start, stop):
            s += np.float64(x[i, j]) - pivot
        block_mean = s / nb
        q = 0.0
        for j in range(start, stop):
            d = (np.float64(x[i, j]) - pivot) - block_mean
            q += d * d
        # Chan et al.: merge (count, mean_d, m2) with (nb, block_mean, q).
        total = count + nb
        delta = block_mean - mean_d
        mean_d += delta * (nb / total)
        m2 += q + delta * delta * (count * nb / total)
        count = total
    return pivot, mean_d, m2


@njit(**_jit)
def _forward_row(x, w, b, eps, y, mean, rstd, i):
    cols = x.shape[1]
    pivot, mean_d, m2 = _row_moments(x, i)
    r = 1.0 / np.sqrt(m2 / cols + eps)
    mean[i] = pivot + mean_d
    rstd[i] = r
    # (x - pivot) - mean_d, not x - mean: mean rounded to one number loses the low bits
    # that a large offset leaves, the two-step difference keeps them.
    for j in range(cols):
        x_hat = ((np.float64(x[i, j]) - pivot) - mean_d) * r
        y[i, j] = x_hat * w[j] + b[j]


@njit(**_jit)
def _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, chunk, rows_per_chunk, param_grads):
    """Rows ``[chunk * rows_per_chunk, ...)``: writes gx, accumulates dw/db partials."""
    rows, cols = x.shape
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    inv_c = 1.0 / cols
    for i in range(start, stop):
        m = np.float64(mean[i])
        r = np.float64(rstd[i])
        # One pass for the row sums.  `corr` refines a mean stored in float32: the exact
        # float64 mean is m + corr, which keeps x_hat right for rows with a large offset.
        s_d = 0.0
        s_g = 0.0
        s_gd = 0.0
        for j in range(cols):
            d = np.float64(x[i, j]) - m
            wdy = np.float64(gy[i, j]) * w[j]
            s_d += d
            s_g += wdy
            s_gd += wdy * d
        corr = s_d * inv_c
        c1 = (s_gd - corr * s_g) * r * inv_c
        c2 = s_g * inv_c
        shift = m + corr
        if param_grads:
            for j in range(cols):
                g = np.float64(gy[i, j])
                x_hat = (np.float64(x[i, j]) - shift) * r
                gx[i, j] = (g * w[j] - (x_hat * c1 + c2)) * r
                dw_part[chunk, j] += g * x_hat
                db_part[chunk, j] += g
        else:
            for j in range(cols):
                x_hat = (np.float64(x[i, j]) - shift) * r
                gx[i, j] = (np.float64(gy[i, j]) * w[j] - (x_hat * c1 + c2)) * r


# ---------------------------------------------------------------------------------------
# Kernels
#   x, y, gy, gx : (rows, cols) float32 or float64, C-contiguous
#   w, b         : (cols,) float64 (ones / zeros when the caller has none)
#   mean, rstd   : (rows,) float32 for float32 data, float64 for float64 data
#   dw_part, db_part : (n_chunks, cols) float64, zeroed by the caller
# ---------------------------------------------------------------------------------------
@njit(parallel=True, **_jit)
def forward_parallel(x, w, b, eps, y, mean, rstd):
    """Fused LayerNorm forward, rows spread over Numba's threads."""
    for i in prange(x.shape[0]):
        _forward_row(x, w, b, eps, y, mean, rstd, i)


@njit(**_jit)
def forward_serial(x, w, b, eps, y, mean, rstd):
    """Fused LayerNorm forward on the calling thread."""
    for i in range(x.shape[0]):
        _forward_row(x, w, b, eps, y, mean, rstd, i)


@njit(parallel=True, **_jit)
def backward_parallel(gy, x, mean, rstd, w, gx, dw_part, db_part, rows_per_chunk, param_grads):
    """Fused LayerNorm backward, one task per fixed chunk of rows."""
    for c in prange(dw_part.shape[0]):
        _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, c, rows_per_chunk, param_grads)


@njit(**_jit)
def backward_serial(gy, x, mean, rstd, w, gx, dw_part, db_part, rows_per_chunk, param_grads):
    """Fused LayerNorm backward on the calling thread (same chunks, same order)."""
    for c in range(dw_part.shape[0]):
        _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, c, rows_per_chunk, param_grads)
