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
    The row is cut into blocks of ``BLOCK`` elements; each block's count, mean and M2 come
    from one vectorised sweep of float64 sums shifted by the block's first element, and the
    blocks are merged with Chan's formula (see ``_row_moments`` for the error bound).  The
    row's first element is the pivot of the result, so constant rows give exactly zero and
    large offsets cancel before anything is rounded.  Welford's per-element division never
    appears.

Kernels see only C-contiguous 2-D arrays and scalars; ``fastln._checks`` makes them.
Each kernel comes as a parallel and a serial twin (two tiny functions, so Numba's on-disk
cache keeps them apart); small inputs take the serial one.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastln._config import BLOCK, CACHE, FLUSH_ROWS, REDUCE_FASTMATH, SWEEP_FASTMATH

# Fast-math flags are per function and survive inlining, so reductions and sweeps live in
# separate functions with separate policies (see fastln._config).
_jit = dict(cache=CACHE, fastmath=SWEEP_FASTMATH, nogil=True, error_model="numpy")
_jit_reduce = dict(_jit, fastmath=REDUCE_FASTMATH)
# Row helpers are inlined in Numba's IR: a call per row that passes array views costs
# ~75 ns of reference counting, which dominates rows of a few dozen elements.
_inline = dict(_jit, inline="always")


# ---------------------------------------------------------------------------------------
# Row helpers (inlined by LLVM into the kernels)
# ---------------------------------------------------------------------------------------
@njit(**_jit_reduce)
def _block_sums(blk):
    """``(p, sum(d), sum(d*d))`` with ``d = x - p``, ``p = blk[0]``: one vectorised sweep."""
    p = np.float64(blk[0])
    s = 0.0
    q = 0.0
    for k in range(blk.shape[0]):
        d = np.float64(blk[k]) - p
        s += d
        q += d * d
    return p, s, q


@njit(**_inline)
def _row_moments(xr):
    """Moments of one row: ``(pivot, mean - pivot, M2)``, all float64.

    Each block of ``BLOCK`` elements is summed once, shifted by its first element ``p``:
    ``s = sum(d)``, ``q = sum(d*d)`` with ``d = x - p``, so ``M2_block = q - s*s/nb``.
    Shifting by a member of the block bounds the cancellation: ``p``'s own deviation is a
    term of ``M2_block``, so ``(mean_block - p)**2 <= M2_block`` and
    ``q = M2_block + nb * (mean_block - p)**2 <= (1 + nb) * M2_block``; the subtraction
    loses at most a factor ``1 + nb`` in float64 (about 3e-11 relative for nb = 512, far
    below float32's 6e-8).  Blocks are merged with Chan et al.'s formula, as in Welford's
    algorithm, and everything is float64: rows of 1e18 or with a mean of 1e4 and a std of
    1e-2 lose nothing.  Loops run over 0-based block views: with ``range(start, stop)``
    Numba's negative-index wraparound hides the unit stride from LLVM and it emits gathers.
    """
    cols = xr.shape[0]
    if cols <= BLOCK:  # one block: no view to make, no merge (short rows are common)
        if cols == 0:
            return 0.0, 0.0, 0.0
        p, s, q = _block_sums(xr)
        return p, s / cols, max(q - s * (s / cols), 0.0)
    pivot = np.float64(xr[0])
    count = 0.0
    mean_d = 0.0  # mean of (x - pivot) over the blocks merged so far
    m2 = 0.0
    for start in range(0, cols, BLOCK):
        blk = xr[start : start + BLOCK]
        nb = blk.shape[0]
        p, s, q = _block_sums(blk)
        block_mean = (p - pivot) + s / nb
        block_m2 = q - s * (s / nb)
        # Chan et al.: merge (count, mean_d, m2) with (nb, block_mean, block_m2).
        total = count + nb
        delta = block_mean - mean_d
        mean_d += delta * (nb / total)
        m2 += block_m2 + delta * delta * (count * nb / total)
        count = total
    return pivot, mean_d, max(m2, 0.0)


@njit(**_inline)
def _forward_row(xr, w, b, eps, yr):
    """Normalise one row into ``yr``; returns its ``(mean, rstd)`` in float64.

    The statistics are float64; the output sweep runs in the data's dtype (twice the SIMD
    width for float32).  It stays accurate by centring on ``mean_t``, the mean rounded to
    that dtype: ``x - mean_t`` is exact by Sterbenz for values near the mean and only
    relatively rounded for far ones, and the small residual ``mean - mean_t`` (float64,
    then rounded) is taken away after.  ``x - mean`` in one step would lose a large
    offset's low bits; centring on ``x[0]`` would lose them when ``x[0]`` is an outlier.
    """
    cols = xr.shape[0]
    pivot, mean_d, m2 = _row_moments(xr)
    r = 1.0 / np.sqrt(m2 / cols + eps)
    mean = pivot + mean_d
    cast = xr.dtype.type
    mean_t = cast(mean)
    resid_t = cast((pivot - np.float64(mean_t)) + mean_d)
    r_t = cast(r)
    for j in range(cols):
        x_hat = ((xr[j] - mean_t) - resid_t) * r_t
        yr[j] = x_hat * w[j] + b[j]
    return mean, r


@njit(**_jit_reduce)
def _backward_row_sums(xr, gr, w, m):
    """``(sum(d), sum(wdy), sum(wdy * d))`` in float64, with ``d = x - m``, ``wdy = w * dy``."""
    s_d = 0.0
    s_g = 0.0
    s_gd = 0.0
    for j in range(xr.shape[0]):
        d = np.float64(xr[j] - m)
        wdy = np.float64(gr[j] * w[j])
        s_d += d
        s_g += wdy
        s_gd += wdy * d
    return s_d, s_g, s_gd


@njit(**_inline)
def _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, chunk, rows_per_chunk, param_grads):
    """Rows ``[chunk * rows_per_chunk, ...)``: writes gx, accumulates dw/db partials.

    Row sums are float64; the per-element sweep runs in the data's dtype, as in forward.
    dw/db gather ``FLUSH_ROWS`` rows in the data's dtype (full SIMD width, no conversions)
    before being added into the float64 partials, so rounding grows with 16 rows, not with
    the chunk.
    """
    rows, cols = x.shape
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    inv_c = 1.0 / cols
    cast = x.dtype.type
    dw = dw_part[chunk]
    db = db_part[chunk]
    acc_w = np.zeros(dw.shape[0], x.dtype)
    acc_b = np.zeros(db.shape[0], x.dtype)
    for i in range(start, stop):
        xr = x[i]
        gr = gy[i]
        gxr = gx[i]
        m = cast(mean[i])
        r = np.float64(rstd[i])
        # `corr` refines a mean stored in float32: the exact mean is m + corr, which keeps
        # x_hat right for rows with a large offset.
        s_d, s_g, s_gd = _backward_row_sums(xr, gr, w, m)
        corr = s_d * inv_c
        c1 = (s_gd - corr * s_g) * r * inv_c
        c2 = s_g * inv_c
        corr_t, c1_t, c2_t, r_t = cast(corr), cast(c1), cast(c2), cast(r)
        if param_grads:
            for j in range(cols):
                g = gr[j]
                x_hat = ((xr[j] - m) - corr_t) * r_t
                gxr[j] = (g * w[j] - (x_hat * c1_t + c2_t)) * r_t
                acc_w[j] += g * x_hat
                acc_b[j] += g
            if (i - start + 1) % FLUSH_ROWS == 0 or i == stop - 1:
                for j in range(cols):
                    dw[j] += acc_w[j]
                    db[j] += acc_b[j]
                    acc_w[j] = 0.0
                    acc_b[j] = 0.0
        else:
            for j in range(cols):
                x_hat = ((xr[j] - m) - corr_t) * r_t
                gxr[j] = (gr[j] * w[j] - (x_hat * c1_t + c2_t)) * r_t


@njit(**_inline)
def _forward_at(x, w, b, eps, y, mean, rstd, i):
    """Row ``i`` of the 2-D arrays: y, mean and rstd."""
    m, r = _forward_row(x[i], w, b, eps, y[i])
    mean[i] = m
    rstd[i] = r


# ---------------------------------------------------------------------------------------
# Kernels
#   x, y, gy, gx : (rows, cols) float32 or float64, C-contiguous
#   w, b         : (cols,) the data's dtype (ones / zeros when the caller has none)
#   mean, rstd   : (rows,) float32 for float32 data, float64 for float64 data
#   dw_part, db_part : (n_chunks, cols) float64, zeroed by the caller
#   dw, db       : (cols,) the data's dtype, or (0,) for no parameter gradients
# ---------------------------------------------------------------------------------------
@njit(parallel=True, **_jit)
def forward_parallel(x, w, b, eps, y, mean, rstd):
    """Fused LayerNorm forward, rows spread over Numba's threads."""
    for i in prange(x.shape[0]):
        _forward_at(x, w, b, eps, y, mean, rstd, i)


@njit(**_jit)
def forward_serial(x, w, b, eps, y, mean, rstd):
    """Fused LayerNorm forward on the calling thread."""
    for i in range(x.shape[0]):
        _forward_at(x, w, b, eps, y, mean, rstd, i)


@njit(**_jit)
def _reduce_partials(dw_part, db_part, dw, db):
    """dw/db = sum of the chunk partials, in chunk order (the same for any thread count)."""
    for j in range(dw.shape[0]):
        sw = 0.0
        sb = 0.0
        for c in range(dw_part.shape[0]):
            sw += dw_part[c, j]
            sb += db_part[c, j]
        dw[j] = sw
        db[j] = sb


@njit(parallel=True, **_jit)
def backward_parallel(gy, x, mean, rstd, w, gx, dw_part, db_part, dw, db, rows_per_chunk):
    """Fused LayerNorm backward, one task per fixed chunk of rows, then dw/db reduced.

    ``dw``/``db`` of length 0 skip the parameter gradients.
    """
    param_grads = dw.shape[0] > 0
    for c in prange(dw_part.shape[0]):
        _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, c, rows_per_chunk, param_grads)
    _reduce_partials(dw_part, db_part, dw, db)


@njit(**_jit)
def backward_serial(gy, x, mean, rstd, w, gx, dw_part, db_part, dw, db, rows_per_chunk):
    """Fused LayerNorm backward on the calling thread (same chunks, same order)."""
    param_grads = dw.shape[0] > 0
    for c in range(dw_part.shape[0]):
        _backward_rows(gy, x, mean, rstd, w, gx, dw_part, db_part, c, rows_per_chunk, param_grads)
    _reduce_partials(dw_part, db_part, dw, db)


# ---------------------------------------------------------------------------------------
# bfloat16 forward (for the torch bridge): bf16 is the top half of a float32, so rows are
# widened into a float32 buffer in cache and the output narrowed with round-to-nearest-even,
# instead of upcasting the whole tensor to a float32 copy and back.
#   xu, yu : (rows, cols) uint16 holding bfloat16 bits;  w, b : (cols,) float32
# ---------------------------------------------------------------------------------------
BF16_CHUNK_ROWS = 64


@njit(**_jit)
def _bf16_to_f32(u16, out):
    bits = out.view(np.uint32)
    for j in range(u16.shape[0]):
        bits[j] = np.uint32(u16[j]) << np.uint32(16)


@njit(**_jit)
def _f32_to_bf16(f32, out):
    bits = f32.view(np.uint32)
    for j in range(f32.shape[0]):
        b = bits[j]
        if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep sign, stay quiet
            out[j] = np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
        else:
            out[j] = np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(**_jit)
def _forward_bf16_chunk(xu, w, b, eps, yu, mean, rstd, chunk):
    rows, cols = xu.shape
    xf = np.empty(cols, np.float32)
    yf = np.empty(cols, np.float32)
    for i in range(chunk * BF16_CHUNK_ROWS, min(rows, (chunk + 1) * BF16_CHUNK_ROWS)):
        _bf16_to_f32(xu[i], xf)
        m, r = _forward_row(xf, w, b, eps, yf)
        _f32_to_bf16(yf, yu[i])
        mean[i] = m
        rstd[i] = r


@njit(parallel=True, **_jit)
def forward_bf16_parallel(xu, w, b, eps, yu, mean, rstd):
    """bfloat16 forward, chunks of rows spread over Numba's threads."""
    for c in prange((xu.shape[0] + BF16_CHUNK_ROWS - 1) // BF16_CHUNK_ROWS):
        _forward_bf16_chunk(xu, w, b, eps, yu, mean, rstd, c)


@njit(**_jit)
def forward_bf16_serial(xu, w, b, eps, yu, mean, rstd):
    """bfloat16 forward on the calling thread."""
    for c in range((xu.shape[0] + BF16_CHUNK_ROWS - 1) // BF16_CHUNK_ROWS):
        _forward_bf16_chunk(xu, w, b, eps, yu, mean, rstd, c)
