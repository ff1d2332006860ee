"""Row helpers shared by every norm: output sweep, backward sums and sweep, partials.

A norm is its statistics (``layer_norm.py``, ``rms_norm.py``); everything here takes the
statistics as numbers and is the same for all of them.  ``w``/``b``/``res`` of length 0
mean "absent": no ones/zeros vectors are ever allocated for a missing parameter.
"""

from __future__ import annotations

import numpy as np

from fastln._config import BLOCK
from fastln.cpu import _jit
from fastln.cpu._half import compute, get, put


@_jit.inline
def forward_sweep(xr, yr, mean_t, resid_t, r_t, w, b, fmt):
    """``yr = ((x - mean_t) - resid_t) * r_t * w + b``, in the data's dtype; a uint16 ``yr``
    takes the result as half bits of format ``fmt`` (:func:`._half.put`), else ``fmt`` is unused.

    Centring on ``mean_t`` (the mean rounded to the data's dtype) keeps ``x - mean_t`` exact
    by Sterbenz for values near the mean, and the small residual ``mean - mean_t`` is taken
    away after: ``x - mean`` in one step would lose a large offset's low bits.  RMSNorm passes
    zeros, which leaves ``x * r_t * w`` exactly.
    """
    cols = xr.shape[0]
    if w.shape[0] != 0 and b.shape[0] != 0:
        for j in range(cols):
            put(yr, j, (((xr[j] - mean_t) - resid_t) * r_t) * w[j] + b[j], fmt)
    elif w.shape[0] != 0:
        for j in range(cols):
            put(yr, j, (((xr[j] - mean_t) - resid_t) * r_t) * w[j], fmt)
    elif b.shape[0] != 0:
        for j in range(cols):
            put(yr, j, (((xr[j] - mean_t) - resid_t) * r_t) + b[j], fmt)
    else:
        for j in range(cols):
            put(yr, j, ((xr[j] - mean_t) - resid_t) * r_t, fmt)


@_jit.inline
def forward_sweep_pair(x0, y0, mean0, resid0, r0, x1, y1, mean1, resid1, r1, w, b):
    """:func:`forward_sweep` of two rows in one loop, with a weight (``b`` may be absent):
    ``w`` and ``b`` are read once per two rows.  Each element's arithmetic is the single
    row's, so the results are bitwise the same."""
    if b.shape[0] != 0:
        for j in range(x0.shape[0]):
            wj = w[j]
            bj = b[j]
            y0[j] = (((x0[j] - mean0) - resid0) * r0) * wj + bj
            y1[j] = (((x1[j] - mean1) - resid1) * r1) * wj + bj
    else:
        for j in range(x0.shape[0]):
            wj = w[j]
            y0[j] = (((x0[j] - mean0) - resid0) * r0) * wj
            y1[j] = (((x1[j] - mean1) - resid1) * r1) * wj


@_jit.inline
def add_rows(xr, rr, hr):
    """``hr = xr + rr`` in the data's dtype (the pre-norm block's residual add)."""
    for j in range(xr.shape[0]):
        hr[j] = xr[j] + rr[j]


@_jit.reduce
def block_backward_sums(xr, gr, w, m, fmt):
    """``(sum(d), sum(wdy), sum(wdy * d))`` of one block, in the data's dtype (full SIMD
    width: float32 lanes hold twice as many elements as float64 ones).  Half rows (uint16
    bits of format ``fmt``) are read in place and summed in float32 (:func:`._half.get`)."""
    zero = compute(xr, 0)
    s_d = zero
    s_g = zero
    s_gd = zero
    if w.shape[0] != 0:
        for j in range(xr.shape[0]):
            d = get(xr, j, fmt) - m
            wdy = get(gr, j, fmt) * w[j]
            s_d += d
            s_g += wdy
            s_gd += wdy * d
    else:
        for j in range(xr.shape[0]):
            d = get(xr, j, fmt) - m
            wdy = get(gr, j, fmt)
            s_d += d
            s_g += wdy
            s_gd += wdy * d
    return s_d, s_g, s_gd


@_jit.inline
def backward_row_sums(xr, gr, w, m, fmt):
    """``(sum(d), sum(wdy), sum(wdy * d))`` in float64, with ``d = x - m``, ``wdy = w * dy``.

    Each block of ``BLOCK`` elements is summed in the data's dtype (its SIMD lanes, about 8
    deep for a 512-element block, each term rounded once: ``x - m`` is exact near the mean by
    Sterbenz), and the block sums are added in float64, so rounding grows with a block, not
    with the row.  Measured 1.08-1.12x faster than float64 sums over the whole row
    (backward, float32, 512x768 and 32768x768, 2 threads), with the same errors against a
    float64 reference (tests/test_backward.py holds them to it).
    """
    cols = xr.shape[0]
    if cols <= BLOCK:  # one block, no views: a view per row costs ~25 ns of reference counting
        a, b, c = block_backward_sums(xr, gr, w, m, fmt)
        return np.float64(a), np.float64(b), np.float64(c)
    s_d = 0.0
    s_g = 0.0
    s_gd = 0.0
    for start in range(0, cols, BLOCK):
        stop = min(start + BLOCK, cols)
        a, b, c = block_backward_sums(xr[start:stop], gr[start:stop], w[start:stop] if w.shape[0] != 0 else w, m, fmt)
        s_d += np.float64(a)
        s_g += np.float64(b)
        s_gd += np.float64(c)
    return s_d, s_g, s_gd


@_jit.inline
def backward_sweep(xr, gr, gxr, m, corr_t, r_t, c1_t, c2_t, w, acc_w, acc_b, fmt):
    """``gx = (wdy - (x_hat * c1 + c2)) * rstd``; with ``acc_w`` of nonzero length also
    ``acc_w += dy * x_hat`` and ``acc_b += dy`` (parameter gradients, in the data's dtype).
    Half rows (uint16 bits of format ``fmt``) are read in place (:func:`._half.get`), and a
    uint16 ``gxr`` takes gx as half bits (:func:`._half.put`)."""
    cols = xr.shape[0]
    if acc_w.shape[0] != 0:
        if w.shape[0] != 0:
            for j in range(cols):
                g = get(gr, j, fmt)
                x_hat = ((get(xr, j, fmt) - m) - corr_t) * r_t
                put(gxr, j, (g * w[j] - (x_hat * c1_t + c2_t)) * r_t, fmt)
                acc_w[j] += g * x_hat
                acc_b[j] += g
        else:
            for j in range(cols):
                g = get(gr, j, fmt)
                x_hat = ((get(xr, j, fmt) - m) - corr_t) * r_t
                put(gxr, j, (g - (x_hat * c1_t + c2_t)) * r_t, fmt)
                acc_w[j] += g * x_hat
                acc_b[j] += g
    elif w.shape[0] != 0:
        for j in range(cols):
            x_hat = ((get(xr, j, fmt) - m) - corr_t) * r_t
            put(gxr, j, (get(gr, j, fmt) * w[j] - (x_hat * c1_t + c2_t)) * r_t, fmt)
    else:
        for j in range(cols):
            x_hat = ((get(xr, j, fmt) - m) - corr_t) * r_t
            put(gxr, j, (get(gr, j, fmt) - (x_hat * c1_t + c2_t)) * r_t, fmt)


@_jit.inline
def backward_sweep_pair(x0, g0, gx0, m0, corr0, r0, c10, c20, x1, g1, gx1, m1, corr1, r1, c11, c21, w, acc_w, acc_b):
    """:func:`backward_sweep` of two consecutive rows, with parameter gradients, in one
    loop: ``w``, ``acc_w`` and ``acc_b`` are read (and the accumulators written) once per
    two rows instead of once per row, where a row's sweep reads five arrays and writes three.
    The accumulators take the first row's term, then the second's: the order of one row at
    a time, so the results are bitwise the same."""
    cols = x0.shape[0]
    if w.shape[0] != 0:
        for j in range(cols):
            wj = w[j]
            ga = g0[j]
            gb = g1[j]
            xa = ((x0[j] - m0) - corr0) * r0
            xb = ((x1[j] - m1) - corr1) * r1
            gx0[j] = (ga * wj - (xa * c10 + c20)) * r0
            gx1[j] = (gb * wj - (xb * c11 + c21)) * r1
            acc_w[j] = (acc_w[j] + ga * xa) + gb * xb
            acc_b[j] = (acc_b[j] + ga) + gb
    else:
        for j in range(cols):
            ga = g0[j]
            gb = g1[j]
            xa = ((x0[j] - m0) - corr0) * r0
            xb = ((x1[j] - m1) - corr1) * r1
            gx0[j] = (ga - (xa * c10 + c20)) * r0
            gx1[j] = (gb - (xb * c11 + c21)) * r1
            acc_w[j] = (acc_w[j] + ga * xa) + gb * xb
            acc_b[j] = (acc_b[j] + ga) + gb


@_jit.inline
def add_into(gxr, gres_r):
    """``gx += grad_residual_out``: the residual's gradient joins the norm's."""
    for j in range(gxr.shape[0]):
        gxr[j] += gres_r[j]


@_jit.inline
def flush(acc, part):
    """``part += acc`` (float64 partials), then ``acc = 0``."""
    for j in range(acc.shape[0]):
        part[j] += acc[j]
        acc[j] = 0


#: Columns of grad_weight/grad_bias summed per pass of :func:`reduce_partials` (its float64
#: sums stay in the L1 cache, and its scratch is small whatever the width).
REDUCE_COLUMNS = 1024


@_jit.sweep
def reduce_partials(dw_part, db_part, dw, db):
    """dw/db = sum of the chunk partials, in chunk order (the same for any thread count).

    A block of :data:`REDUCE_COLUMNS` columns at a time, chunk by chunk, each a vectorised
    pass into float64 sums: the same additions in the same order per column as a
    column-by-column loop, whose chain of dependent adds ran at the adder's latency and
    strode a row at a time (14 chunks of 768 columns: 12.5 -> 3.8 us; 16 of 1024: 54.8 ->
    4.6 us; 16 of 4096: 218 -> 20-35 us; 4 of 65536: level, the partials' memory traffic;
    ``python tools/kernel_ab.py --only reduce``).  Sums over whole rows at once, in scratch
    as wide as the row, cost a fresh megabyte at 65536 columns (587 us against 138 us).
    """
    n = dw.shape[0]
    if n == 0:
        return
    width = min(n, REDUCE_COLUMNS)
    sw = np.empty(width)
    sb = np.empty(width)
    for lo in range(0, n, width):
        hi = min(lo + width, n)
        for j in range(hi - lo):
            sw[j] = 0.0
            sb[j] = 0.0
        for c in range(dw_part.shape[0]):
            pw = dw_part[c, lo:hi]
            pb = db_part[c, lo:hi]
            for j in range(hi - lo):
                sw[j] += pw[j]
                sb[j] += pb[j]
        for j in range(hi - lo):
            dw[lo + j] = sw[j]
            db[lo + j] = sb[j]
