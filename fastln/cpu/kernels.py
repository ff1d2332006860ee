"""The CPU kernels every norm runs: forward (optionally with the residual add) and backward.

``centered`` picks the norm's statistics (LayerNorm's moments or RMSNorm's mean square,
from :mod:`.layer_norm` and :mod:`.rms_norm`); everything else is shared.  Each kernel
comes as a ``(parallel, serial)`` pair compiled from one body (see :func:`._jit.twins`).

Arguments (all C-contiguous; a length-0 first dimension means "absent")::

    x, y, gy, gx   (rows, cols)  float32 or float64
    res, h, gres   (rows, cols) or (0, cols): residual in, residual_out (x + res), and the
                   gradient of residual_out, added into gx
    w, b           (cols,) or (0,): weight, bias, in the data's dtype
    mean           (rows,) or (0,) (RMSNorm keeps none); float32 for float32 data
    rstd           (rows,)
    dw_part, db_part  (n_chunks, cols) float64 zeroed, or (n_chunks, 0) for no parameter grads
    dw, db         (cols,) or (0,): parameter gradients, in the data's dtype

Row kernels give each row (forward) or fixed chunk of rows (backward) to one task.  Column
kernels (``*_cols``) split few very wide rows into ``COL_BLOCK`` pieces so every thread
works and backward needs no per-chunk partials: each task owns its columns of dw/db.
Chunks and blocks depend on the shape only, so results are bitwise identical for any
thread count.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from fastln._config import BLOCK, COL_BLOCK, FLUSH_ROWS
from fastln.cpu import _jit
from fastln.cpu import layer_norm as ln
from fastln.cpu import rms_norm as rms
from fastln.cpu._half import FLOAT16, compute, narrow, widen
from fastln.cpu._rows import (
    add_into,
    add_rows,
    backward_row_sums,
    backward_sweep,
    backward_sweep_pair,
    block_backward_sums,
    flush,
    forward_sweep,
    forward_sweep_pair,
    reduce_partials,
)
from fastln.cpu._stream import store_fence, stream_store, streaming

#: Half-precision rows per task (each task widens its rows into float32 buffers).
HALF_CHUNK_ROWS = 64
#: Backward sweeps rows in pairs when it accumulates parameter gradients of rows of at
#: least ``PAIR_ROW_BYTES`` (:func:`_backward_pair`), never across a flush of the
#: accumulators.  A row's sweep touches six row-sized arrays (x, dy, dx, w and the two
#: accumulators); from 8 KiB rows on they overflow a 32 KiB L1 cache, and pairing halves
#: the reads of w and the accumulators.  Measured side by side (``python
#: tools/kernel_ab.py --only backward``): 1.17-1.19x at 2048x2048 float32; on narrower rows
#: it bought nothing (0.89-1.08x), so they keep one row at a time.
PAIRED_BACKWARD = FLUSH_ROWS % 2 == 0
PAIR_ROW_BYTES = 8 << 10
#: Rows per task when outputs are streamed (each task has its own row buffers).
STREAM_CHUNK_ROWS = 32
#: The forward sweeps rows in pairs (:func:`._rows.forward_sweep_pair`) when it has a weight,
#: no residual, and rows of at least ``PAIR_FORWARD_ROW_BYTES``: a wide row's sweep reads
#: ``w`` and ``b`` as large as the row itself, which no longer stay in the L2 cache beside
#: it, and pairing halves those reads.
PAIR_FORWARD_ROW_BYTES = 32 << 10


# ---------------------------------------------------------------------------------------
# Per-row pieces
# ---------------------------------------------------------------------------------------
@_jit.inline
def _row_statistics(xr, eps, centered):
    """The norm's statistics of one row: ``(pivot, mean - pivot, rstd)`` in float64
    (zeros for the mean of RMSNorm)."""
    cols = xr.shape[0]
    if centered:
        certified = False
        if ln.is_float32(xr) and cols >= ln.F32_MIN_COLS:
            certified, pivot, mean_d, m2 = ln.row_moments_f32(xr)
        if not certified:
            pivot, mean_d, m2 = ln.row_moments(xr)
        var = m2 / cols
    else:
        pivot = 0.0
        mean_d = 0.0
        var = rms.sum_squares(xr) / cols
    return pivot, mean_d, 1.0 / np.sqrt(var + eps)


@_jit.inline
def _forward_row(xr, w, b, eps, centered, yr, fmt):
    """Normalise one row into ``yr`` (of xr's dtype, or half bits of format ``fmt``);
    returns its ``(mean, rstd)`` in float64."""
    pivot, mean_d, r = _row_statistics(xr, eps, centered)
    cast = xr.dtype.type
    mean_t = cast(pivot + mean_d)
    resid_t = cast((pivot - np.float64(mean_t)) + mean_d)
    forward_sweep(xr, yr, mean_t, resid_t, cast(r), w, b, fmt)
    return pivot + mean_d, r


@_jit.sweep
def _forward_pair(x, w, b, eps, centered, y, mean, rstd, i):
    """Rows ``i`` and ``i + 1`` of :func:`_forward_row` (with a weight, no residual), swept
    together (:func:`._rows.forward_sweep_pair`); bitwise the two rows one after the other.

    A function of its own, not inlined: inlined, it doubled the parallel forward's compile
    time (15 -> 29 s), and a call per pair of rows of 32 KiB or more costs nothing measurable."""
    cast = x.dtype.type
    st = np.empty(6)  # one statistics call in a loop: inlined once, not twice
    for k in range(2):
        pivot, mean_d, r = _row_statistics(x[i + k], eps, centered)
        st[3 * k] = pivot
        st[3 * k + 1] = mean_d
        st[3 * k + 2] = r
        if mean.shape[0] != 0:
            mean[i + k] = pivot + mean_d
        rstd[i + k] = r
    mean0 = cast(st[0] + st[1])
    mean1 = cast(st[3] + st[4])
    forward_sweep_pair(
        x[i], y[i], mean0, cast((st[0] - np.float64(mean0)) + st[1]), cast(st[2]),
        x[i + 1], y[i + 1], mean1, cast((st[3] - np.float64(mean1)) + st[4]), cast(st[5]), w, b,
    )


@_jit.inline
def _forward_at(x, res, w, b, eps, centered, yr, hr, has_res, mean, rstd, i):
    """Row ``i`` into ``yr``; with a residual, ``h = x + res`` into ``hr`` first, and the
    norm of ``h`` (read back from cache).  ``yr``/``hr`` are the output rows themselves or
    buffers that the caller streams out."""
    if has_res:
        add_rows(x[i], res[i], hr)
        xr = hr
    else:
        xr = x[i]
    m, r = _forward_row(xr, w, b, eps, centered, yr, 0)
    if mean.shape[0] != 0:
        mean[i] = m
    rstd[i] = r


@_jit.inline
def _coefficients(s_d, s_g, s_gd, r, inv_c, centered):
    """``(corr, c1, c2)`` of the backward sweep for the chosen norm."""
    if centered:
        return ln.backward_coefficients(s_d, s_g, s_gd, r, inv_c)
    return 0.0, rms.backward_coefficients(s_gd, r, inv_c), 0.0


@_jit.inline
def _backward_terms(xr, gr, mean, rstd, i, w, centered, inv_c, fmt):
    """Row ``i``'s sweep constants in the row's compute dtype (float32 for half rows of
    format ``fmt``), ``(m, corr, rstd, c1, c2)``: float64 row sums, then the norm's
    coefficients."""
    m = compute(xr, mean[i]) if centered else compute(xr, 0.0)
    r = np.float64(rstd[i])
    s_d, s_g, s_gd = backward_row_sums(xr, gr, w, m, fmt)
    corr, c1, c2 = _coefficients(s_d, s_g, s_gd, r, inv_c, centered)
    return m, compute(xr, corr), compute(xr, r), compute(xr, c1), compute(xr, c2)


@_jit.inline
def _backward_row(xr, gr, gxr, mean, rstd, i, w, centered, inv_c, acc_w, acc_b, fmt):
    """Row ``i``'s backward: its constants (:func:`_backward_terms`), then the sweep in the
    row's dtype (writes ``gxr``, or half bits of format ``fmt`` into a uint16 ``gxr``; adds
    into ``acc_w``/``acc_b`` when they have length)."""
    m, corr, r, c1, c2 = _backward_terms(xr, gr, mean, rstd, i, w, centered, inv_c, fmt)
    backward_sweep(xr, gr, gxr, m, corr, r, c1, c2, w, acc_w, acc_b, fmt)


@_jit.inline
def _backward_short_row(xr, gr, gxr, mean, rstd, i, w, centered, inv_c, acc_w, acc_b):
    """:func:`_backward_row` of a row of at most ``BLOCK`` elements: its sums are one block's
    (the same bits), with no loop over blocks in the kernel's row loop.  Where that loop is
    there, even untaken, LLVM keeps the row loop's arrays reference-counted and reloaded:
    measured 60 -> 49 ns a row at 20 columns, 1.14-1.16x at 128-512 (serial kernel)."""
    cast = xr.dtype.type
    m = cast(mean[i]) if centered else cast(0.0)
    r = np.float64(rstd[i])
    a, b, c = block_backward_sums(xr, gr, w, m, 0)
    corr, c1, c2 = _coefficients(np.float64(a), np.float64(b), np.float64(c), r, inv_c, centered)
    backward_sweep(xr, gr, gxr, m, cast(corr), cast(r), cast(c1), cast(c2), w, acc_w, acc_b, 0)


@_jit.inline
def _backward_pair(x, gy, gx, mean, rstd, i, w, centered, inv_c, acc_w, acc_b):
    """Rows ``i`` and ``i + 1`` of :func:`_backward_row`, swept together
    (:func:`._rows.backward_sweep_pair`); bitwise the two rows one after the other."""
    m0, corr0, r0, c10, c20 = _backward_terms(x[i], gy[i], mean, rstd, i, w, centered, inv_c, 0)
    m1, corr1, r1, c11, c21 = _backward_terms(x[i + 1], gy[i + 1], mean, rstd, i + 1, w, centered, inv_c, 0)
    backward_sweep_pair(x[i], gy[i], gx[i], m0, corr0, r0, c10, c20,
                        x[i + 1], gy[i + 1], gx[i + 1], m1, corr1, r1, c11, c21, w, acc_w, acc_b)


@_jit.inline
def _backward_chunk(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, chunk, rows_per_chunk):
    """Rows ``[chunk * rows_per_chunk, ...)``: writes gx, accumulates dw/db partials.

    Row sums are float64; the sweep runs in the data's dtype.  dw/db gather ``FLUSH_ROWS``
    rows in the data's dtype (full SIMD width) before being added into the float64
    partials, so rounding grows with 32 rows, not with the chunk.  With parameter
    gradients of wide rows, rows are swept in pairs (``PAIRED_BACKWARD``; a pair never
    straddles a flush: ``FLUSH_ROWS`` is even).
    """
    rows, cols = x.shape
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    inv_c = 1.0 / cols
    n = dw_part.shape[1]
    acc_w = np.zeros(n, x.dtype)
    acc_b = np.zeros(n, x.dtype)
    paired = PAIRED_BACKWARD and n != 0 and cols * x.itemsize >= PAIR_ROW_BYTES
    i = start
    while i < stop:
        if paired and i + 1 < stop:
            _backward_pair(x, gy, gx, mean, rstd, i, w, centered, inv_c, acc_w, acc_b)
            done = 2
        else:
            _backward_row(x[i], gy[i], gx[i], mean, rstd, i, w, centered, inv_c, acc_w, acc_b, 0)
            done = 1
        if gres.shape[0] != 0:
            for k in range(i, i + done):
                add_into(gx[k], gres[k])
        i += done
        if n != 0 and ((i - start) % FLUSH_ROWS == 0 or i == stop):
            flush(acc_w, dw_part[chunk])
            flush(acc_b, db_part[chunk])


@_jit.inline
def _backward_chunk_short_rows(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, chunk, rows_per_chunk):
    """:func:`_backward_chunk` for the serial kernels, with rows of at most ``BLOCK`` elements
    in a row loop of their own (:func:`_backward_short_row`; the same bits): 1.06-1.23x
    faster at 20-512 columns (``python tools/kernel_ab.py --only short``).  The parallel
    kernels keep the general loop alone: through Numba's parallel pipeline the short loop
    bought nothing (1.00x) and cost 55% more compile time."""
    rows, cols = x.shape
    if cols > BLOCK:
        _backward_chunk(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, chunk, rows_per_chunk)
        return
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    inv_c = 1.0 / cols
    n = dw_part.shape[1]
    acc_w = np.zeros(n, x.dtype)
    acc_b = np.zeros(n, x.dtype)
    for i in range(start, stop):
        _backward_short_row(x[i], gy[i], gx[i], mean, rstd, i, w, centered, inv_c, acc_w, acc_b)
        if gres.shape[0] != 0:
            add_into(gx[i], gres[i])
        if n != 0 and ((i + 1 - start) % FLUSH_ROWS == 0 or i + 1 == stop):
            flush(acc_w, dw_part[chunk])
            flush(acc_b, db_part[chunk])


# ---------------------------------------------------------------------------------------
# Row kernels
# ---------------------------------------------------------------------------------------
def _forward_rows(x, res, w, b, eps, centered, y, h, mean, rstd):
    """Fused forward, one task per row (per pair of rows of ``PAIR_FORWARD_ROW_BYTES`` and
    more, with a weight); or, for outputs too big for the last-level cache, one task per
    ``STREAM_CHUNK_ROWS`` rows, each row computed into buffers in L1 cache and streamed out
    (:mod:`._stream`).  Results are bitwise the same either way."""
    rows, cols = x.shape
    has_res = h.shape[0] != 0
    if streaming((y.size + h.size) * y.itemsize, cols * y.itemsize):
        for c in prange((rows + STREAM_CHUNK_ROWS - 1) // STREAM_CHUNK_ROWS):
            ys = np.empty(cols, y.dtype)
            hs = np.empty(cols if has_res else 0, h.dtype)
            for i in range(c * STREAM_CHUNK_ROWS, min(rows, (c + 1) * STREAM_CHUNK_ROWS)):
                _forward_at(x, res, w, b, eps, centered, ys, hs, has_res, mean, rstd, i)
                if has_res:
                    stream_store(h[i], hs)
                stream_store(y[i], ys)
            store_fence()
    else:
        step = 2 if not has_res and w.shape[0] != 0 and cols * y.itemsize >= PAIR_FORWARD_ROW_BYTES else 1
        for t in prange((rows + step - 1) // step):
            i = t * step
            if step == 2 and i + 1 < rows:
                _forward_pair(x, w, b, eps, centered, y, mean, rstd, i)
            else:
                _forward_at(x, res, w, b, eps, centered, y[i], h[i] if has_res else y[i], has_res, mean, rstd, i)


def _backward_rows(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db, rows_per_chunk):
    """Fused backward, one task per fixed chunk of rows, then dw/db reduced in chunk order."""
    for c in prange(dw_part.shape[0]):
        _backward_chunk(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, c, rows_per_chunk)
    if dw.shape[0] != 0:
        reduce_partials(dw_part, db_part, dw, db)


def _forward_half(xu, ru, w, b, eps, centered, yu, hu, mean, rstd, fmt):
    """Half-precision forward (uint16 bits of format ``fmt``, see :mod:`._half`), rows
    widened into a float32 buffer in cache; the sweep rounds each output as it writes it
    (no float32 output row, no pass of its own): float16 1.08-1.58x faster than rounding
    after, bfloat16 level (0.96-1.18x; its rounding is integer work the sweep then does),
    ``python tools/half_bench.py --kernels``.

    ``w``/``b`` are float32.  With a residual, ``h = x + res`` is rounded to the half type
    (what torch's add gives) and normalised from that rounded value.
    """
    rows, cols = xu.shape
    has_res = hu.shape[0] != 0
    for c in prange((rows + HALF_CHUNK_ROWS - 1) // HALF_CHUNK_ROWS):
        xf = np.empty(cols, np.float32)
        rf = np.empty(cols if has_res else 0, np.float32)
        for i in range(c * HALF_CHUNK_ROWS, min(rows, (c + 1) * HALF_CHUNK_ROWS)):
            widen(xu[i], xf, fmt)
            if has_res:
                widen(ru[i], rf, fmt)
                add_rows(xf, rf, xf)
                narrow(xf, hu[i], fmt)
                widen(hu[i], xf, fmt)
            m, r = _forward_row(xf, w, b, eps, centered, yu[i], fmt)  # rounded as it is written
            if mean.shape[0] != 0:
                mean[i] = m
            rstd[i] = r


@_jit.inline
def _backward_half_chunk(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, c, rows_per_chunk, fmt):
    """Chunk ``c`` of :func:`_backward_half`: its rows of gx, its row of the partials.

    The row sums and the sweep read the half rows of x and dy in place, widening each
    element as they load it (:func:`._half.get`): no float32 copies of the rows, and no
    passes of their own to make them.  With parameter gradients, 2 threads, against widening
    x and dy into float32 rows first, the same bits (``python tools/half_bench.py
    --kernels``, two runs of 21 rounds): float16 1.06-1.13x at 512x768 and 1.38-2.04x from
    4096x1024 up, bfloat16 1.11-1.16x and 1.43-1.58x.
    float16 gx without a residual's gradient is rounded by the sweep as it writes it (no
    float32 row, no pass of its own): 1.04-1.19x faster than rounding after.  bfloat16's
    rounding is integer work that slowed the sweep as much as it saved (0.92-1.06x), so
    bfloat16 gx, and any gx with a residual's gradient (added in float32 before the one
    rounding, as the upcast computation does), go through a float32 row."""
    rows, cols = xu.shape
    has_gres = gresu.shape[0] != 0
    n = dw_part.shape[1]
    inv_c = 1.0 / cols
    via_f32 = has_gres or fmt != FLOAT16
    gxf = np.empty(cols if via_f32 else 0, np.float32)
    rf = np.empty(cols if has_gres else 0, np.float32)
    acc_w = np.zeros(n, np.float32)
    acc_b = np.zeros(n, np.float32)
    start = c * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    for i in range(start, stop):
        if via_f32:
            _backward_row(xu[i], gyu[i], gxf, mean, rstd, i, w, centered, inv_c, acc_w, acc_b, fmt)
            if has_gres:
                widen(gresu[i], rf, fmt)
                add_into(gxf, rf)
            narrow(gxf, gxu[i], fmt)
        else:
            _backward_row(xu[i], gyu[i], gxu[i], mean, rstd, i, w, centered, inv_c, acc_w, acc_b, fmt)  # rounded as written
        if n != 0 and ((i - start + 1) % FLUSH_ROWS == 0 or i == stop - 1):
            flush(acc_w, dw_part[c])
            flush(acc_b, db_part[c])


def _backward_half(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, dw, db, rows_per_chunk, fmt):
    """Half-precision backward (uint16 bits of format ``fmt``): the float32 row kernel's own
    :func:`_backward_row` run on the half rows of x and dy, each element widened as it is
    loaded (in the same chunks), gx rounded once.
    Bitwise what upcasting the tensors to float32 and rounding gx gives, without the copies.
    ``w``, ``mean``, ``rstd``, ``dw``, ``db`` are float32."""
    for c in prange(dw_part.shape[0]):
        _backward_half_chunk(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, c, rows_per_chunk, fmt)
    if dw.shape[0] != 0:
        reduce_partials(dw_part, db_part, dw, db)


@_jit.sweep
def backward_half_chunks(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, rows_per_chunk, first, stop, fmt):
    """Chunks ``first..stop-1`` of :func:`_backward_half`, one after another, into the
    caller's float64 partials (zeroed), as :func:`backward_chunks` for the float kernels."""
    for c in range(first, stop):
        _backward_half_chunk(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, c, rows_per_chunk, fmt)


# ---------------------------------------------------------------------------------------
# Column kernels: few, very wide rows
# ---------------------------------------------------------------------------------------
def _forward_cols(x, res, w, b, eps, centered, y, h, mean, rstd):
    """Forward with rows cut into ``COL_BLOCK`` pieces: block statistics in parallel,
    merged per row in block order (Chan), then the sweep in parallel."""
    rows, cols = x.shape
    nb = (cols + COL_BLOCK - 1) // COL_BLOCK
    has_res = h.shape[0] != 0
    part = np.zeros((rows * nb, 3))
    for t in prange(rows * nb):
        i = t // nb
        lo = (t - i * nb) * COL_BLOCK
        hi = min(lo + COL_BLOCK, cols)
        if has_res:
            add_rows(x[i, lo:hi], res[i, lo:hi], h[i, lo:hi])
            seg = h[i, lo:hi]
        else:
            seg = x[i, lo:hi]
        if centered:
            p, md, m2 = ln.row_moments(seg)
            part[t, 0] = p
            part[t, 1] = md
            part[t, 2] = m2
        else:
            part[t, 2] = rms.sum_squares(seg)
    stats = np.empty((rows, 3))  # pivot, mean - pivot, rstd
    for i in range(rows):
        pivot = 0.0
        mean_d = 0.0
        m2 = 0.0
        if centered:
            pivot = part[i * nb, 0]  # the row's first element
            count = 0.0
            for k in range(nb):
                t = i * nb + k
                n_k = min(COL_BLOCK, cols - k * COL_BLOCK)
                count, mean_d, m2 = ln.chan_merge(count, mean_d, m2, n_k, (part[t, 0] - pivot) + part[t, 1], part[t, 2])
        else:
            for k in range(nb):
                m2 += part[i * nb + k, 2]
        r = 1.0 / np.sqrt(max(m2, 0.0) / cols + eps)
        stats[i, 0] = pivot
        stats[i, 1] = mean_d
        stats[i, 2] = r
        if mean.shape[0] != 0:
            mean[i] = pivot + mean_d
        rstd[i] = r
    cast = x.dtype.type
    for t in prange(rows * nb):
        i = t // nb
        lo = (t - i * nb) * COL_BLOCK
        hi = min(lo + COL_BLOCK, cols)
        pivot = stats[i, 0]
        mean_d = stats[i, 1]
        mean_t = cast(pivot + mean_d)
        resid_t = cast((pivot - np.float64(mean_t)) + mean_d)
        seg = h[i, lo:hi] if has_res else x[i, lo:hi]
        forward_sweep(seg, y[i, lo:hi], mean_t, resid_t, cast(stats[i, 2]), w[lo:hi], b[lo:hi], 0)


def _backward_cols(gy, x, mean, rstd, w, centered, gres, gx, dw, db):
    """Backward with rows cut into ``COL_BLOCK`` pieces: block row sums in parallel, summed
    per row in block order; then one task per column block sweeps every row, owning its
    columns of dw/db outright (float64 sums, flushed every ``FLUSH_ROWS`` rows)."""
    rows, cols = x.shape
    nb = (cols + COL_BLOCK - 1) // COL_BLOCK
    cast = x.dtype.type
    part = np.empty((rows * nb, 3))
    for t in prange(rows * nb):
        i = t // nb
        lo = (t - i * nb) * COL_BLOCK
        hi = min(lo + COL_BLOCK, cols)
        m = cast(mean[i]) if centered else cast(0.0)
        s_d, s_g, s_gd = backward_row_sums(x[i, lo:hi], gy[i, lo:hi], w[lo:hi], m, 0)
        part[t, 0] = s_d
        part[t, 1] = s_g
        part[t, 2] = s_gd
    coef = np.empty((rows, 3))
    inv_c = 1.0 / cols
    for i in range(rows):
        s_d = 0.0
        s_g = 0.0
        s_gd = 0.0
        for k in range(nb):
            s_d += part[i * nb + k, 0]
            s_g += part[i * nb + k, 1]
            s_gd += part[i * nb + k, 2]
        corr, c1, c2 = _coefficients(s_d, s_g, s_gd, np.float64(rstd[i]), inv_c, centered)
        coef[i, 0] = corr
        coef[i, 1] = c1
        coef[i, 2] = c2
    params = dw.shape[0] != 0
    has_gres = gres.shape[0] != 0
    for k in prange(nb):
        lo = k * COL_BLOCK
        hi = min(lo + COL_BLOCK, cols)
        n = hi - lo if params else 0
        acc_w = np.zeros(n, x.dtype)
        acc_b = np.zeros(n, x.dtype)
        sum_w = np.zeros(n)
        sum_b = np.zeros(n)
        for i in range(rows):
            m = cast(mean[i]) if centered else cast(0.0)
            backward_sweep(
                x[i, lo:hi], gy[i, lo:hi], gx[i, lo:hi], m, cast(coef[i, 0]), cast(rstd[i]),
                cast(coef[i, 1]), cast(coef[i, 2]), w[lo:hi], acc_w, acc_b, 0,
            )
            if has_gres:
                add_into(gx[i, lo:hi], gres[i, lo:hi])
            if params and ((i + 1) % FLUSH_ROWS == 0 or i == rows - 1):
                flush(acc_w, sum_w)
                flush(acc_b, sum_b)
        for j in range(n):
            dw[lo + j] = sum_w[j]
            db[lo + j] = sum_b[j]


@_jit.sweep
def backward_chunks(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, rows_per_chunk, first, stop):
    """Chunks ``first..stop-1`` of :func:`_backward_rows`, one after another, into the
    caller's float64 partials (zeroed): for callers that run the chunks on threads of their
    own (the torch bridge's glue runs them on torch's pool) and then reduce the partials in
    chunk order with :func:`._rows.reduce_partials`.  Each chunk's work is the parallel
    kernel's, so the results are bitwise the same."""
    for c in range(first, stop):
        _backward_chunk_short_rows(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, c, rows_per_chunk)


forward_parallel, forward_serial = _jit.twins(_forward_rows, serial=_jit.serial_fast)
backward_parallel, backward_serial = _jit.twins(_backward_rows, serial_globals={"_backward_chunk": _backward_chunk_short_rows})
forward_half_parallel, forward_half_serial = _jit.twins(_forward_half)
backward_half_parallel, backward_half_serial = _jit.twins(_backward_half)
forward_cols_parallel, forward_cols_serial = _jit.twins(_forward_cols)
backward_cols_parallel, backward_cols_serial = _jit.twins(_backward_cols)
