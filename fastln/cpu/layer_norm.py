r"""LayerNorm's math: centred statistics and the backward's coefficients.

Per row of ``C`` elements (biased variance, as ``torch.nn.LayerNorm``)::

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

Statistics read the row once.  float32 rows take :func:`row_moments_f32` (float32 SIMD lanes,
certified per row, with a proven error bound); rows it cannot certify, and float64 rows, take
:func:`row_moments` (float64 blocks merged with Chan's formula).
Everything else (the output sweep, the backward sweep, parameter gradients, threading) is
shared with the other norms in :mod:`fastln.cpu.kernels`.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from fastln._config import BLOCK
from fastln.cpu import _jit
from fastln.cpu._lanes import LANES, head_mean_f32, shifted_sums_f32


@_jit.reduce
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


@_jit.inline
def chan_merge(count, mean_d, m2, nb, block_mean, block_m2):
    """Chan et al.: merge ``(count, mean_d, m2)`` with ``(nb, block_mean, block_m2)``."""
    total = count + nb
    delta = block_mean - mean_d
    return total, mean_d + delta * (nb / total), m2 + block_m2 + delta * delta * (count * nb / total)


@_jit.inline
def row_moments(xr):
    """Moments of one row: ``(pivot, mean - pivot, M2)``, all float64.

    Each block of ``BLOCK`` elements is summed once, shifted by its first element ``p``:
    ``s = sum(d)``, ``q = sum(d*d)`` with ``d = x - p``, so ``M2_block = q - s*s/nb``.
    Shifting by a member of the block bounds the cancellation: ``p``'s own deviation is a
    term of ``M2_block``, so ``(mean_block - p)**2 <= M2_block`` and
    ``q = M2_block + nb * (mean_block - p)**2 <= (1 + nb) * M2_block``; the subtraction
    loses at most a factor ``1 + nb`` in float64 (about 3e-11 relative for nb = 512, far
    below float32's 6e-8).  Blocks are merged with Chan et al.'s formula, and everything is
    float64: rows of 1e18 or with a mean of 1e4 and a std of 1e-2 lose nothing.  Loops run
    over 0-based block views: with ``range(start, stop)`` Numba's negative-index wraparound
    hides the unit stride from LLVM and it emits gathers.
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
        count, mean_d, m2 = chan_merge(count, mean_d, m2, nb, (p - pivot) + s / nb, q - s * (s / nb))
    return pivot, mean_d, max(m2, 0.0)


@_jit.inline
def backward_coefficients(s_d, s_g, s_gd, r, inv_c):
    """``(corr, c1, c2)`` from the row sums ``sum(x - m)``, ``sum(wdy)``, ``sum(wdy*(x - m))``.

    ``m`` is the stored mean (rounded to float32 for float32 data); ``corr = sum(x - m)/C``
    refines it, so that ``x_hat = (x - m - corr) * rstd`` stays exact for large offsets.
    """
    corr = s_d * inv_c
    return corr, (s_gd - corr * s_g) * r * inv_c, s_g * inv_c


def is_float32(a):
    """Whether ``a`` is a float32 array: a compile-time constant inside kernels."""
    return a.dtype == np.float32


@overload(is_float32, inline="always")
def _is_float32(a):
    answer = isinstance(a, types.Array) and a.dtype == types.float32
    return lambda a: answer


#: The float32 statistics are kept only when ``sum(d**2) <= CERTIFY * M2`` (see
#: :func:`row_moments_f32`): the cancellation factor their error bound is stated for.
CERTIFY = 2.0
#: ... and when the mean of ``d**2`` is at least this: smaller products are subnormal in
#: float32 and lose bits (rows of magnitude 1e-20 take the float64 path).
TINY_MEAN_SQUARE = 1e-25
#: float32 rows shorter than this take :func:`row_moments`: the float32 lanes' fixed cost per
#: row (pivot, lane folds, certificate) outweighs their speed there.  Per row, one thread,
#: rows in cache (``python tools/kernel_ab.py --only hot``): 32 columns 12.9 against 7.8 ns,
#: 64 columns 14.3 against 13.8, 128 columns 18.8 against 19.5, 256 columns 24.8 against 34.6.
F32_MIN_COLS = 96
#: Elements of the row that choose the pivot (one vector: :func:`._lanes.head_mean_f32`).
PIVOT_SAMPLE = LANES


@_jit.inline
def row_moments_f32(xr):
    r"""Moments of one float32 row in float32 lanes: ``(certified, pivot, mean - pivot, M2)``.

    The pivot ``p`` is the mean of the row's first :data:`PIVOT_SAMPLE` elements, rounded to
    float32.  Each block of ``BLOCK`` elements gives ``s_b = sum(d)`` and ``q_b = sum(d*d)``,
    ``d = fl(x - p)``, summed in float32 over 64 lanes (32 without AVX-512) in an order
    written out (:func:`._lanes.shifted_sums_f32`: the same in every kernel, so kernels that
    promise the same bits get them whatever LLVM does around the call); the block sums are
    added in float64, and ``M2 = q - s*s/C``.  float32 lanes hold twice the elements
    of float64 ones and need no conversions: the whole forward ran 1.11-1.34x faster than with
    :func:`row_moments` (512x768 to 64x65536, 2 threads, both compiled in one process and
    timed side by side), most at 4096x1024, where the float64 sums were the limit.

    **Error bound.**  Write ``u = 2**-24`` and ``g_k = k*u / (1 - k*u)``.  ``fl(x - p)`` is
    ``d (1 + e)``, ``|e| <= u`` (exact by Sterbenz when ``x`` is within a factor 2 of ``p``).
    A float32 sum of at most ``B = BLOCK`` terms in any order errs by at most ``g_(B-1)``
    times the sum of the terms' magnitudes, so, neglecting float64 rounding (``2**-53``)::

        |q^ - q| <= g_(B+2) q
        |s^ - s| <= g_B sum|d| <= g_B sqrt(C q)          (Cauchy-Schwarz)
        |s^^2 - s^2| / C <= (2 + g_B) g_B q

    hence ``|M2^ - M2| <= 3 g_(B+2) q``.  The row is *certified* only when the computed
    ``q <= CERTIFY * M2`` (the pivot was close to the mean, so the subtraction ``q - s*s/C``
    cancels at most a factor ``CERTIFY``); then::

        |M2^ - M2| / M2 <= 3 CERTIFY g_(B+2) / (1 - 3 CERTIFY g_(B+2))

    For any summation order that is 1.8e-4 with ``B = 512``; for the order
    :func:`._lanes.shifted_sums_f32` fixes on AVX-512 CPUs (64 lanes, each at most ``B/64 = 8``
    terms deep, then a 2 + 4 = 6-level tree: depth 14, so ``g_16`` above) it is 5.7e-6, and
    on others (32 lanes 16 deep, 1 + 4 levels: depth 21) 8.2e-6; ``rstd`` errs by half of
    that.  Rounding errors of independent terms mostly cancel, so the error met in practice is about ``sqrt(depth) u`` (tests/test_numerics.py measures
    below 1e-6 in the variance over thousands of random rows, and keeps the 2e-6 output target
    on the hard rows).  Rows that are not certified (a far pivot: an outlier among the first
    elements; offsets beyond 1e6 standard deviations), whose mean square is tiny (subnormal
    products) or not finite (overflow, NaN, Inf), return ``certified=False`` and the caller
    runs :func:`row_moments` on them.
    """
    cols = xr.shape[0]
    if cols == 0:
        return False, 0.0, 0.0, 0.0
    if cols >= PIVOT_SAMPLE:
        p = head_mean_f32(xr)
    else:
        a = 0.0
        for k in range(cols):
            a += np.float64(xr[k])
        p = np.float32(a / cols)
    if cols <= BLOCK:  # one block, no view (short rows are common; see row_moments)
        bs, bq = shifted_sums_f32(xr, p)
        s = np.float64(bs)
        q = np.float64(bq)
    else:
        s = 0.0
        q = 0.0
        for start in range(0, cols, BLOCK):
            bs, bq = shifted_sums_f32(xr[start : start + BLOCK], p)
            s += np.float64(bs)
            q += np.float64(bq)
    m2 = q - s * (s / cols)
    # comparisons with NaN are False; q <= inf would not be
    certified = TINY_MEAN_SQUARE * cols <= q < np.inf and q <= CERTIFY * m2
    return certified, np.float64(p), s / cols, m2
