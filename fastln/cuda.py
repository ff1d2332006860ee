r"""Numba CUDA kernels for LayerNorm and their launchers.

Imported only when device data arrives, so ``import fastln`` never needs CUDA.

Kernels (same math and names as :mod:`fastln.cpu`):

``forward``  one block per row (grid-stride over rows).  Each thread works on chunks of its
    strided share of the row in registers, in the data's dtype, and merges each chunk's
    statistics into float64 ones (the bounds are in ``_kernels``); the block merges the
    threads' in a fixed tree: warp shuffles then shared memory on real hardware,
    shared memory alone in the simulator, which has no shuffles.  The output sweep centres
    on the mean rounded to the data's dtype and takes the residual away after, as on the
    CPU.  Rows that fit in registers take ``_row_kernels`` instead.
``backward`` one block per row again; row sums by the same chunks and block reduction, then
    ``gx`` and per-block ``dw``/``db`` partials in the data's dtype: thread ``t`` owns
    columns ``t, t + T, ...`` of its block's partial row, so no atomics are needed.
``reduce``   adds the partial rows of each column in float64, in a fixed order: deterministic.

``config`` holds the threads per block; tests shrink it so the simulator stays fast.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import math

import numpy as np
from numba import cuda, float64

from fastln import _checks


class config:
    """Launch policy, patchable by tests (stumpy's pattern)."""

    #: Threads per block: a multiple of 32, a power of two, at most 512 (1024 failed to
    #: launch on an H200: too many registers a thread for that many threads).
    THREADS_PER_BLOCK = 32 if cuda.config.ENABLE_CUDASIM else 256
    #: The block-per-row backward's (rows too long for registers).  On an H200 (sweep of
    #: ``tools/gpu_suite.py``, kernels alone) 512 against 256 took 263 against 471 us at
    #: 64x65536 and 140 against 156 us at 256x16384.  The forward stays at 256: its one-read
    #: statistics take 147 registers a thread, too many for 512-thread blocks.
    BACKWARD_THREADS_PER_BLOCK = 32 if cuda.config.ENABLE_CUDASIM else 512
    #: Warp shuffles for the in-warp reduction (never in the simulator, which lacks them).
    USE_SHUFFLE = not cuda.config.ENABLE_CUDASIM
    #: Most blocks a backward launch uses (each keeps one row of dw/db partials).
    MAX_BACKWARD_BLOCKS = 256
    #: Elements a thread of the block-per-row kernels sums in the data's dtype before adding
    #: the sum into a float64 total (the error bound in ``_kernels``' docstring).
    STAT_CHUNK = 16
    #: The block-per-row LayerNorm forward reads a row once for its statistics (each
    #: chunk's count, mean and M2 in registers, merged in float64), or twice (mean, then
    #: M2 around it); see ``_kernels``.
    BLOCK_SINGLE_READ = True
    #: Rows that fit take the register kernels (``_row_kernels``): the row is read once into
    #: registers and its statistics are float32 (float64 data: float64) per thread, merged in
    #: float64.  False: every row takes the block-per-row kernels above (kept for wide rows).
    ROW_KERNELS = True
    #: Most elements of a row one thread keeps in registers; rows longer than
    #: ``MAX_ROW_THREADS * MAX_PER_THREAD`` take the block-per-row kernels.  Blocks of more
    #: than 256 threads would cap the registers a thread may use below what the compiler
    #: chose (there are 65536 a multiprocessor): the launch fails for lack of resources, as
    #: 1024-thread blocks of the block-per-row kernels did on an H200.
    MAX_PER_THREAD = 16
    MAX_ROW_THREADS = 256
    #: The backward's: 8 where the row fits (more threads a row, fewer registers a thread).
    #: On an H200 (``tools/gpu_suite.py`` sweep, kernels alone) 8 against 16 took 348 against
    #: 605 us at 32768x768 and 96 against 118 us at 4096x1024; the forward was faster with 16
    #: (132 against 167 us at 32768x768).
    BACKWARD_MAX_PER_THREAD = 8
    #: Elements a thread of the register kernels: the least power of two that covers the row
    #: (False), or the least count (True: 768 columns on 64 threads take 12 a thread, not 16,
    #: so no registers and no lanes go to padding; more kernels to compile).  On an H200 at
    #: 32768x768 (``tools/gpu_suite.py`` sweep, kernels alone): forward 119 against 132 us,
    #: backward 334 against 346.
    ROW_PER_EXACT = True
    #: Threads of a register-kernel block (several rows at once when a row needs fewer).
    ROW_BLOCK_THREADS = 64 if cuda.config.ENABLE_CUDASIM else 256
    #: Most bytes of the register backward's dw/db partials (one row per row group; counted
    #: as float64's, whatever the dtype), and the most row groups: the partials' rows are a
    #: function of the shape alone.
    PART_BYTES = 32 << 20
    MAX_GROUPS = 512
    #: Launch compiled kernels through cuda.core without Numba's per-call work (see
    #: ``raw_forward``); turned off for the process if anything about it is unexpected.
    RAW_LAUNCH = True
    #: Blocks of the register kernels a multiprocessor must fit (CUDA's launch bounds: the
    #: compiler keeps each thread under 65536 / (threads * blocks) registers); None lets the
    #: compiler choose.  Left to itself it took 229 registers a thread for the forward at
    #: 1024 columns (one 256-thread block a multiprocessor); with 3 blocks it takes 80 and
    #: spills 44 bytes (ptxas, sm_90; ``tools/compile_ptx.py``).  Hardware only.
    FORWARD_MIN_BLOCKS = 3
    BACKWARD_MIN_BLOCKS = 2


# ---------------------------------------------------------------------------------------
# Device helpers
# ---------------------------------------------------------------------------------------
@cuda.jit(device=True, inline=True)
def _chan(n_a, m_a, q_a, n_b, m_b, q_b):
    """Merge two (count, mean, M2) triples (Chan et al.)."""
    n = n_a + n_b
    if n == 0.0:
        return 0.0, 0.0, 0.0
    delta = m_b - m_a
    return n, m_a + delta * (n_b / n), q_a + q_b + delta * delta * (n_a * n_b / n)


@cuda.jit(device=True, inline=True)
def _sum3(a, b, c, d, e, f):
    """Component-wise sum of two triples."""
    return a + d, b + e, c + f


@cuda.jit(device=True, inline=True)
def _normalized(v, mean_t, resid_t, r_t, w, b, j, has_w, has_b):
    """Output element ``j`` of a row from its element ``v``: the CPU kernels' formula (centre
    on the mean's head in the data's dtype, then take the tail away)."""
    out = ((v - mean_t) - resid_t) * r_t
    if has_w:
        out = out * w[j]
    if has_b:
        out = out + b[j]
    return out


@cuda.jit(device=True, inline=True)
def _grad_coefficients(centered, s_d, s_g, s_gd, r, cols):
    """float64 ``(corr, c1, c2)`` of a row's input gradient from its float64 sums of
    ``x - m``, ``w dy`` and ``w dy (x - m)``: ``gx = (w dy - (x_hat c1 + c2)) r`` with
    ``x_hat = ((x - m) - corr) r`` (RMSNorm: ``m = corr = c2 = 0``)."""
    if centered:
        corr = s_d / cols
        return corr, (s_gd - corr * s_g) * r / cols, s_g / cols
    return 0.0, s_gd * r / cols, 0.0


#: Row slices of the partials that ``reduce`` adds at once (threads a column).
REDUCE_SLICES = 2 if cuda.config.ENABLE_CUDASIM else 8


@functools.cache
def _kernels(tpb: int, use_shuffle: bool, chunk: int, single_read: bool = True):
    r"""The block-per-row kernels: ``tpb`` threads a block, warp shuffles or not, ``chunk``
    elements a thread works on in the data's dtype before a float64 merge, and one read of
    the row for LayerNorm's statistics or two.  Compile-time constants are closed over, so
    each gets its own kernels.

    **Forward statistics, one read (``single_read``, LayerNorm).**  A thread loads ``chunk``
    of its elements into registers and computes the chunk's statistics in the dtype as
    :func:`_row_kernels` does a row's (``p`` the chunk's first element; its mean ``mc`` in
    float64, split into the dtype's head and tail), plus the corrected two-pass term: with
    ``d = fl(fl(x - mc_t) - mc_r)``, ``c = sum d`` and ``q = sum d^2`` (dtype), the chunk's
    mean is ``mc + c / n`` and its M2 ``q - c^2 / n`` (float64).  The chunks' (count, mean,
    M2) are merged in float64 (Chan), per thread and then across the block: no float64
    arithmetic per element, about a dozen float64 operations per chunk.  Error: ``q`` is
    within ``g_(chunk+5)`` of ``sum (x - mc)^2 = M2_c + n delta^2`` (``delta``: the first
    pass's error, second order), and the corrected mean is within ``g_(chunk+2) sum|x - mc|
    / n <= g_(chunk+2) sqrt(M2_c / n)`` of the chunk's mean, which enters Chan's merge as
    ``2 n |err| |mean_c - mean| <= g_(chunk+2) (M2_c + n (mean_c - mean)^2)``; summed over
    the chunks, ``|M2^ - M2| / M2 <= g_(chunk+5) + g_(chunk+2)`` plus second-order and
    float64 terms: for float32 and ``chunk = 16``, about ``2.3e-6``, whatever the row's
    length or offset.

    **Forward statistics, two reads (RMSNorm; LayerNorm without ``single_read``).**  As in
    :func:`_row_kernels`, with ``chunk`` in place of ``per``: pass 1 sums ``fl(x - p)`` (``p``
    the row's first element) ``chunk`` elements at a time, pass 2 sums ``d^2`` around the
    dtype's head and tail of the mean.  The float64 totals add the chunk sums (relative
    error about ``k u_64`` for ``k`` chunks, negligible), so ``|M2^ - M2| / M2 <=
    g_(chunk+5) + g_(chunk+1)^2 (C + 1)`` up to float64 roundoff, for a row of ``C``
    elements: for float32 and ``chunk = 16``, ``1.3e-6 + 1.0e-12 (C + 1)`` (2.3e-6 at a
    million columns).  One float64 add per ``chunk`` elements a pass.  RMSNorm's one pass
    sums ``x^2`` the same way.

    **Backward.**  The row sums are float64 totals of chunk sums in the dtype, as above.
    ``dw``/``db`` partials (one row a block, in the data's dtype) add the block's rows
    ``blk, blk + grid, ...`` in the dtype: the register backward's bound, ``g_k`` for ``k``
    rows a block.
    """
    warps = tpb // 32

    def block_reduce(combine):
        """A block-wide reduction of three float64 values by ``combine``, a fixed tree
        (deterministic): warp shuffles then shared memory on hardware, shared memory
        alone in the simulator.  Every thread gets the block's result."""

        @cuda.jit(device=True, inline=True)
        def reduce3(a, b, c, sh_a, sh_b, sh_c):
            tid = cuda.threadIdx.x
            if use_shuffle:
                offset = 16
                while offset > 0:
                    a_o = cuda.shfl_down_sync(0xFFFFFFFF, a, offset)
                    b_o = cuda.shfl_down_sync(0xFFFFFFFF, b, offset)
                    c_o = cuda.shfl_down_sync(0xFFFFFFFF, c, offset)
                    a, b, c = combine(a, b, c, a_o, b_o, c_o)
                    offset //= 2
                if tid % 32 == 0:
                    sh_a[tid // 32] = a
                    sh_b[tid // 32] = b
                    sh_c[tid // 32] = c
                cuda.syncthreads()
                if tid == 0:
                    for k in range(1, warps):
                        a, b, c = combine(a, b, c, sh_a[k], sh_b[k], sh_c[k])
                    sh_a[0] = a
                    sh_b[0] = b
                    sh_c[0] = c
            else:
                sh_a[tid] = a
                sh_b[tid] = b
                sh_c[tid] = c
                cuda.syncthreads()
                stride = tpb // 2
                while stride > 0:
                    if tid < stride:
                        a, b, c = combine(
                            sh_a[tid], sh_b[tid], sh_c[tid],
                            sh_a[tid + stride], sh_b[tid + stride], sh_c[tid + stride],
                        )
                        sh_a[tid] = a
                        sh_b[tid] = b
                        sh_c[tid] = c
                    cuda.syncthreads()
                    stride //= 2
            cuda.syncthreads()
            result = sh_a[0], sh_b[0], sh_c[0]
            cuda.syncthreads()  # the buffers are reused by the next row
            return result

        return reduce3

    block_moments = block_reduce(_chan)  # (count, mean, M2) triples
    block_sums = block_reduce(_sum3)

    @cuda.jit(device=True, inline=True)
    def chunked_sum(src, i, tid, cols, head, tail, square):
        """The float64 total, over thread ``tid``'s share of row ``i``, of ``chunk``-element
        sums in the dtype of ``d = (x - head) - tail`` (``square``: of ``d * d``)."""
        total = 0.0
        for j0 in range(tid, cols, tpb * chunk):
            c = src.dtype.type(0.0)
            for k in range(chunk):
                j = j0 + k * tpb
                if j >= cols:
                    break
                d = (src[i, j] - head) - tail
                c += d * d if square else d
            total += np.float64(c)
        return total

    @cuda.jit
    def forward(x, res, w, b, eps, centered, y, h, mean, rstd):
        # x, y: (rows, cols) float32|float64; res, h: (rows, cols) or (0, 0) without a
        # residual; w, b: (cols,) or (0,) when absent; mean: (rows,) or (0,) (RMSNorm); rstd: (rows,)
        sh_n = cuda.shared.array(tpb, float64)
        sh_m = cuda.shared.array(tpb, float64)
        sh_q = cuda.shared.array(tpb, float64)
        vals = cuda.local.array(chunk, x.dtype)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        cast = x.dtype.type
        has_res = h.shape[0] != 0
        has_w = w.shape[0] != 0
        has_b = b.shape[0] != 0
        src = h if has_res else x
        for i in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            if has_res:  # h = x + res, written and read back by the same thread
                for j in range(tid, cols, tpb):
                    h[i, j] = x[i, j] + res[i, j]
            mu = 0.0
            mean_t = cast(0.0)
            resid_t = cast(0.0)
            if centered and single_read:
                # One read: each chunk's (count, mean, M2) from registers in the dtype,
                # merged into the thread's float64 triple (Chan), then across the block.
                n = 0.0
                m2 = 0.0
                for j0 in range(tid, cols, tpb * chunk):
                    cnt = 0
                    for k in range(chunk):
                        j = j0 + k * tpb
                        v = cast(0.0)
                        if j < cols:
                            v = src[i, j]
                            cnt += 1
                        vals[k] = v
                    p = vals[0]
                    c = cast(0.0)
                    for k in range(chunk):
                        if k < cnt:
                            c += vals[k] - p
                    nb = np.float64(cnt)
                    mc = np.float64(p) + np.float64(c) / nb
                    mc_t = cast(mc)
                    mc_r = cast(mc - np.float64(mc_t))
                    c = cast(0.0)
                    q = cast(0.0)
                    for k in range(chunk):
                        if k < cnt:
                            d = (vals[k] - mc_t) - mc_r
                            c += d
                            q += d * d
                    # The corrected two-pass of the chunk: its mean moves by c / cnt, and
                    # its M2 loses c^2 / cnt.
                    cm = np.float64(c)
                    mc += cm / nb
                    nn = n + nb
                    f = nb / nn
                    delta = mc - mu
                    mu += delta * f
                    m2 += (np.float64(q) - cm * (cm / nb)) + delta * delta * (n * f)
                    n = nn
                n, mu, m2 = block_moments(n, mu, max(m2, 0.0), sh_n, sh_m, sh_q)
                mean_t = cast(mu)
                resid_t = cast(mu - np.float64(mean_t))
            else:
                # Two passes over the row (L1/L2-resident by the second), each thread
                # summing ``chunk`` of its elements in the data's dtype and adding each
                # chunk's sum into a float64 total (see ``_kernels``).
                if centered:
                    p = cast(0.0)
                    if cols > 0:
                        p = x[i, 0] + res[i, 0] if has_res else x[i, 0]
                    s = chunked_sum(src, i, tid, cols, p, cast(0.0), False)
                    s, _, _ = block_sums(s, 0.0, 0.0, sh_n, sh_m, sh_q)
                    mu = np.float64(p) + s / cols if cols > 0 else 0.0
                    mean_t = cast(mu)
                    resid_t = cast(mu - np.float64(mean_t))
                # RMSNorm: mean_t = resid_t = 0, the sum of squares of the elements
                q = chunked_sum(src, i, tid, cols, mean_t, resid_t, True)
                m2, _, _ = block_sums(q, 0.0, 0.0, sh_n, sh_m, sh_q)
            r = 1.0 / math.sqrt(m2 / cols + eps)
            r_t = cast(r)
            for j in range(tid, cols, tpb):
                y[i, j] = _normalized(src[i, j], mean_t, resid_t, r_t, w, b, j, has_w, has_b)
            if tid == 0:
                if mean.shape[0] != 0:
                    mean[i] = mu
                rstd[i] = r

    @cuda.jit
    def backward(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part):
        # gy, x, gx: (rows, cols); gres: (rows, cols) or (0, 0); mean: (rows,) or (0,);
        # rstd: (rows,); w: (cols,) or (0,);
        # dw_part, db_part: (blocks, cols) zeroed, in x's dtype, or (blocks, 0) for none
        sh_a = cuda.shared.array(tpb, float64)
        sh_b = cuda.shared.array(tpb, float64)
        sh_c = cuda.shared.array(tpb, float64)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        blk = cuda.blockIdx.x
        param_grads = dw_part.shape[1] > 0
        has_w = w.shape[0] != 0
        has_gres = gres.shape[0] != 0
        cast = x.dtype.type
        for i in range(blk, rows, cuda.gridDim.x):
            m = cast(mean[i]) if centered else cast(0.0)
            r = np.float64(rstd[i])
            s_d = 0.0
            s_g = 0.0
            s_gd = 0.0
            for j0 in range(tid, cols, tpb * chunk):  # chunk sums in the dtype, as the forward's
                c_d = cast(0.0)
                c_g = cast(0.0)
                c_gd = cast(0.0)
                for k in range(chunk):
                    j = j0 + k * tpb
                    if j < cols:
                        d = x[i, j] - m
                        wdy = gy[i, j] * w[j] if has_w else gy[i, j]
                        c_d += d
                        c_g += wdy
                        c_gd += wdy * d
                s_d += np.float64(c_d)
                s_g += np.float64(c_g)
                s_gd += np.float64(c_gd)
            s_d, s_g, s_gd = block_sums(s_d, s_g, s_gd, sh_a, sh_b, sh_c)
            corr, c1, c2 = _grad_coefficients(centered, s_d, s_g, s_gd, r, cols)
            c1 = cast(c1)
            c2 = cast(c2)
            corr_t = cast(corr)
            r_t = cast(r)
            for j in range(tid, cols, tpb):
                g = gy[i, j]
                x_hat = ((x[i, j] - m) - corr_t) * r_t
                wdy_t = g * w[j] if has_w else g
                v = (wdy_t - (x_hat * c1 + c2)) * r_t
                if has_gres:
                    v = v + gres[i, j]
                gx[i, j] = v
                if param_grads:
                    dw_part[blk, j] += g * x_hat
                    db_part[blk, j] += g

    @cuda.jit
    def reduce(dw_part, db_part, dw, db):
        # dw_part, db_part: (blocks, cols), dw, db: (cols,), in x's dtype, added in float64.
        # Block (32, SLICES):
        # thread (c, s) adds rows s, s + SLICES, ... of column c in order, then thread (c, 0)
        # adds the SLICES sums in order -- a fixed order (deterministic) that keeps
        # SLICES loads a column in flight, where one thread a column walked every row alone
        # (2048 rows of partials took 0.4 ms on an H200).
        sh_w = cuda.shared.array((REDUCE_SLICES, 32), float64)
        sh_b = cuda.shared.array((REDUCE_SLICES, 32), float64)
        c = cuda.threadIdx.x
        sl = cuda.threadIdx.y
        j = cuda.blockIdx.x * 32 + c
        sw = 0.0
        sb = 0.0
        if j < dw.shape[0]:
            for k in range(sl, dw_part.shape[0], REDUCE_SLICES):
                sw += dw_part[k, j]
                sb += db_part[k, j]
        sh_w[sl, c] = sw
        sh_b[sl, c] = sb
        cuda.syncthreads()
        if sl == 0 and j < dw.shape[0]:
            for k in range(1, REDUCE_SLICES):
                sw += sh_w[k, c]
                sb += sh_b[k, c]
            dw[j] = sw
            db[j] = sb

    return forward, backward, reduce


def row_plan(cols: int, max_per: int | None = None):
    """``(row_threads, per_thread)`` of the register forward for rows of ``cols``, or None
    when the row is too long for registers: the fewest threads (a power of two from 32) for
    which ``per_thread`` reaches ``max_per`` (default ``config.MAX_PER_THREAD``) or less;
    ``per_thread`` is the least power of two that covers the row (``config.ROW_PER_EXACT``:
    the least count)."""
    if not config.ROW_KERNELS or cols == 0:
        return None
    max_per = config.MAX_PER_THREAD if max_per is None else max_per
    row_threads = 32
    while row_threads * max_per < cols:
        row_threads *= 2
        if row_threads > config.MAX_ROW_THREADS:
            return None
    if config.ROW_PER_EXACT:
        return row_threads, -(-cols // row_threads)
    per = 1
    while row_threads * per < cols:
        per *= 2
    return row_threads, per


def backward_row_plan(cols: int):
    """:func:`row_plan` of the register backward: ``config.BACKWARD_MAX_PER_THREAD`` elements
    a thread where the row fits that, else as the forward."""
    return row_plan(cols, config.BACKWARD_MAX_PER_THREAD) or row_plan(cols)


def partials_zeroed(cols: int) -> bool:
    """Whether a backward over rows of ``cols`` needs its dw/db partials zeroed (the
    block-per-row kernels add into them; the register kernels write them whole)."""
    return backward_row_plan(cols) is None


def row_groups(rows: int, cols: int) -> int:
    """Row groups (rows worked on at once, one dw/db partial row each) of a register
    backward: a function of the shape alone, so dw/db are the same bits on every run."""
    return max(1, min(rows, config.MAX_GROUPS, config.PART_BYTES // (16 * max(cols, 1))))


def _bounded(block_threads: int, min_blocks):
    """``cuda.jit`` for a kernel launched with ``block_threads`` threads, with CUDA launch
    bounds asking for ``min_blocks`` blocks a multiprocessor where Numba takes them (not the
    simulator, nor Numba's built-in CUDA target)."""
    if min_blocks is None or cuda.config.ENABLE_CUDASIM:
        return cuda.jit
    if "launch_bounds" not in inspect.signature(cuda.jit).parameters:
        return cuda.jit
    options = {"launch_bounds": (block_threads, min_blocks)}

    def jit(fn):
        kernel = cuda.jit(**options)(fn)
        kernel._fastln_options = options  # for tools/compile_ptx.py, which compiles py_func
        return kernel

    return jit


@functools.cache
def _row_kernels(row_threads: int, per: int, block_threads: int, use_shuffle: bool,
                 forward_min_blocks=None, backward_min_blocks=None):
    r"""Forward and backward kernels that keep a row in registers.

    A *row group* of ``row_threads`` threads (a warp, or several) works on one row; a block
    holds ``block_threads // row_threads`` groups.  Thread ``t`` of a group holds the row's
    elements ``t, t + row_threads, ...`` (``per`` of them, a compile-time count, so the
    local arrays are registers), reads them from global memory once, and the row's sums
    are float64 merges (warp shuffles, then shared memory across the group's warps) of
    per-thread sums in the data's dtype: no float64 arithmetic per element, which consumer
    GPUs run at 1/32-1/64 of the float32 rate.

    **Forward statistics (two passes over registers).**  With ``p`` the row's first element
    and ``u`` the dtype's unit roundoff, pass 1 sums ``fl(x - p)`` per thread (at most
    ``per`` terms, error ``g_per * sum|x - p|``, ``g_k = k u / (1 - k u)``), merged in
    float64 into ``mu = p + S / C``; its error ``delta <= g_(per+1) sum|x - p| / C``.
    Pass 2 sums ``d^2`` with ``d = fl(fl(x - mean_t) - resid_t)`` (``mean_t``, ``resid_t``
    the dtype's head and tail of ``mu``), each ``d`` within ``2u`` of ``x - mu``, over at
    most ``per`` terms, merged in float64.  So ``M2^ = sum((x - mu^)^2) (1 + e)`` with
    ``|e| <= g_(per+5)``, and ``sum((x - mu^)^2) = M2 + C delta^2``, where ``C delta^2 <=
    g_(per+1)^2 sum((x - p)^2) <= g_(per+1)^2 (C + 1) M2`` (Cauchy-Schwarz, and
    ``(p - mean)^2 <= M2`` because ``p`` is one of the row's elements).  For float32 with
    the defaults (``per <= 16``, ``C <= 256 * 16``): ``|M2^ - M2| / M2 <= 1.3e-6 + 4.2e-9``
    (``g_21`` and ``g_17^2 * 4097``) -- with no cancellation and no certification: an offset
    of any size costs nothing.
    RMSNorm sums ``x^2`` the same way (``|e| <= g_(per+1)``).

    **Backward.**  ``sum(x_hat-ish)``, ``sum(w dy)`` and ``sum(w dy (x - m))`` are float32
    (float64 data: float64) per thread and merged in float64, as above.  ``dw``/``db`` are
    accumulated per thread over the rows its group takes (``ceil(rows / groups)`` of them;
    see :func:`row_groups`), in the data's dtype -- an error of at most ``g_k`` of the sum of
    the terms' magnitudes for ``k`` rows -- and written as one partial row per group, in the
    dtype, which holds the sums exactly; ``reduce`` adds the partial rows in float64, in a
    fixed order: deterministic.
    """
    groups = block_threads // row_threads
    warps = row_threads // 32
    FULL = 0xFFFFFFFF

    @cuda.jit(device=True, inline=True)
    def group_sum(v, sh, lane, group):
        """The float64 sum of ``v`` over a row group, the same bits on each of its threads;
        every thread of the block must call it (it synchronises the block)."""
        if use_shuffle:
            off = 16
            while off > 0:  # a butterfly: a + b == b + a exactly, so every lane agrees
                v += cuda.shfl_xor_sync(FULL, v, off)
                off //= 2
            if warps > 1:
                if lane % 32 == 0:
                    sh[group * warps + lane // 32] = v
                cuda.syncthreads()
                v = sh[group * warps]
                for k in range(1, warps):
                    v += sh[group * warps + k]
                cuda.syncthreads()
        else:  # the simulator has no shuffles: through shared memory, in thread order
            sh[group * row_threads + lane] = v
            cuda.syncthreads()
            v = sh[group * row_threads]
            for k in range(1, row_threads):
                v += sh[group * row_threads + k]
            cuda.syncthreads()
        return v

    @_bounded(block_threads, forward_min_blocks)
    def forward(x, res, w, b, eps, centered, y, h, mean, rstd):
        # The arguments of ``_kernels``' forward.
        sh = cuda.shared.array(block_threads, float64)
        vals = cuda.local.array(per, x.dtype)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        group = tid // row_threads
        lane = tid % row_threads
        cast = x.dtype.type
        has_res = h.shape[0] != 0
        has_w = w.shape[0] != 0
        has_b = b.shape[0] != 0
        step = cuda.gridDim.x * groups
        # The same trip count for every group of the block: group_sum synchronises it.
        for base in range(cuda.blockIdx.x * groups, rows, step):
            i = base + group
            active = i < rows
            ii = i if active else 0
            for k in range(per):
                j = lane + k * row_threads
                v = cast(0.0)
                if active and j < cols:
                    v = x[ii, j]
                    if has_res:
                        v = v + res[ii, j]
                        h[ii, j] = v
                vals[k] = v
            mu = 0.0
            mean_t = cast(0.0)
            resid_t = cast(0.0)
            q = cast(0.0)
            if centered:
                p = cast(0.0)
                if active and cols > 0:
                    p = x[ii, 0] + res[ii, 0] if has_res else x[ii, 0]
                s = cast(0.0)
                for k in range(per):
                    if lane + k * row_threads < cols:
                        s += vals[k] - p
                mu = np.float64(p) + group_sum(np.float64(s), sh, lane, group) / max(cols, 1)
                mean_t = cast(mu)
                resid_t = cast(mu - np.float64(mean_t))
                for k in range(per):
                    if lane + k * row_threads < cols:
                        d = (vals[k] - mean_t) - resid_t
                        q += d * d
            else:
                for k in range(per):
                    q += vals[k] * vals[k]  # the padding is zero
            m2 = group_sum(np.float64(q), sh, lane, group)
            r = 1.0 / math.sqrt(m2 / max(cols, 1) + eps)
            r_t = cast(r)
            if active:
                for k in range(per):
                    j = lane + k * row_threads
                    if j < cols:
                        y[ii, j] = _normalized(vals[k], mean_t, resid_t, r_t, w, b, j, has_w, has_b)
                if lane == 0:
                    if mean.shape[0] != 0:
                        mean[ii] = mu
                    rstd[ii] = r

    @_bounded(block_threads, backward_min_blocks)
    def backward(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part):
        # The arguments of ``_kernels``' backward, but dw_part, db_part: (groups, cols)
        # float64 (written whole, one row per row group), or (groups, 0) for none.
        sh = cuda.shared.array(block_threads, float64)
        xv = cuda.local.array(per, x.dtype)
        gv = cuda.local.array(per, x.dtype)
        acc_w = cuda.local.array(per, x.dtype)
        acc_b = cuda.local.array(per, x.dtype)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        group = tid // row_threads
        lane = tid % row_threads
        gid = cuda.blockIdx.x * groups + group
        n_groups = dw_part.shape[0]
        param_grads = dw_part.shape[1] > 0
        has_w = w.shape[0] != 0
        has_gres = gres.shape[0] != 0
        cast = x.dtype.type
        for k in range(per):
            acc_w[k] = cast(0.0)
            acc_b[k] = cast(0.0)
        # Group g takes rows g, g + n_groups, ...: the same trip count for the whole block.
        for base in range(0, rows, n_groups):
            i = base + gid
            active = gid < n_groups and i < rows
            ii = i if active else 0
            m = cast(0.0)
            r = 0.0
            if active:
                m = cast(mean[ii]) if centered else cast(0.0)
                r = np.float64(rstd[ii])
            s_d = cast(0.0)
            s_g = cast(0.0)
            s_gd = cast(0.0)
            for k in range(per):
                j = lane + k * row_threads
                xk = cast(0.0)
                gk = cast(0.0)
                if active and j < cols:
                    xk = x[ii, j]
                    gk = gy[ii, j]
                xv[k] = xk
                gv[k] = gk
                if j < cols:
                    d = xk - m
                    wdy = gk * w[j] if has_w else gk
                    s_d += d
                    s_g += wdy
                    s_gd += wdy * d
            t_d = group_sum(np.float64(s_d), sh, lane, group)
            t_g = group_sum(np.float64(s_g), sh, lane, group)
            t_gd = group_sum(np.float64(s_gd), sh, lane, group)
            if active:
                corr, c1, c2 = _grad_coefficients(centered, t_d, t_g, t_gd, r, cols)
                c1 = cast(c1)
                c2 = cast(c2)
                corr_t = cast(corr)
                r_t = cast(r)
                for k in range(per):
                    j = lane + k * row_threads
                    if j < cols:
                        g = gv[k]
                        x_hat = ((xv[k] - m) - corr_t) * r_t
                        wdy_t = g * w[j] if has_w else g
                        v = (wdy_t - (x_hat * c1 + c2)) * r_t
                        if has_gres:
                            v = v + gres[ii, j]
                        gx[ii, j] = v
                        acc_w[k] += g * x_hat
                        acc_b[k] += g
        if param_grads and gid < n_groups:
            for k in range(per):
                j = lane + k * row_threads
                if j < cols:
                    dw_part[gid, j] = acc_w[k]
                    db_part[gid, j] = acc_b[k]

    return forward, backward


def kernels():
    """The block-per-row (forward, backward, reduce) kernels for the current :class:`config`:
    the backward's blocks have ``config.BACKWARD_THREADS_PER_BLOCK`` threads."""
    forward, _, reduce = _kernels(config.THREADS_PER_BLOCK, config.USE_SHUFFLE, config.STAT_CHUNK,
                                  config.BLOCK_SINGLE_READ)
    backward = _kernels(config.BACKWARD_THREADS_PER_BLOCK, config.USE_SHUFFLE, config.STAT_CHUNK,
                        config.BLOCK_SINGLE_READ)[1]
    return forward, backward, reduce


# ---------------------------------------------------------------------------------------
# Launchers (no checks): 2-D C-contiguous device arrays in, results written in place
# ---------------------------------------------------------------------------------------
def _row_launch(cols: int, backward: bool = False):
    """``(kernel, groups_per_block, threads)`` of the register forward (or backward) for
    rows of ``cols``, or None (see :func:`row_plan`, :func:`backward_row_plan`)."""
    plan = backward_row_plan(cols) if backward else row_plan(cols)
    if plan is None:
        return None
    row_threads, per = plan
    block_threads = max(row_threads, config.ROW_BLOCK_THREADS // row_threads * row_threads)
    kernels = _row_kernels(row_threads, per, block_threads, config.USE_SHUFFLE,
                           config.FORWARD_MIN_BLOCKS, config.BACKWARD_MIN_BLOCKS)
    return kernels[1 if backward else 0], block_threads // row_threads, block_threads


def _forward_launch(rows: int, cols: int):
    """``(kernel, grid, block)`` of a forward over ``rows`` rows (at least one) of ``cols``."""
    row = _row_launch(cols)
    if row is not None:
        forward, groups, threads = row
        return forward, min(-(-rows // groups), 65535), threads
    return kernels()[0], min(rows, 65535), config.THREADS_PER_BLOCK


def _backward_launches(rows: int, cols: int, parts: int, param_grads: bool):
    """``[(kernel, grid, block, uses_reduce)]`` of a backward: the row kernel (none for no
    rows on the block-per-row kernels), then the reduction of the partials."""
    launches = []
    block = kernels()  # once a call: each lookup builds two cache keys
    row = _row_launch(cols, backward=True)
    if row is not None:  # launched for no rows too: it writes the partials (zeros) whole
        backward, groups, threads = row
        launches.append((backward, -(-parts // groups), threads, False))
    elif rows:
        launches.append((block[1], parts, config.BACKWARD_THREADS_PER_BLOCK, False))
    if param_grads:
        launches.append((block[2], -(-cols // 32), (32, REDUCE_SLICES), True))
    return launches


def launch_forward(x2, res2, w, b, eps, centered, y, h, mean, rstd, stream=0, device=None):
    """Forward kernel on 2-D C-contiguous device arrays (see ``_kernels`` for the shapes).
    ``device`` (a device number) lets later calls from the same device launch the kernel
    compiled here through :func:`raw_forward`."""
    rows, cols = x2.shape
    if rows == 0:
        return
    kernel, grid, block = _forward_launch(rows, cols)
    kernel[grid, block, stream](x2, res2, w, b, eps, centered, y, h, mean, rstd)
    _remember(kernel, x2.dtype, device, 0)


def backward_blocks(rows: int, cols: int | None = None) -> int:
    """Rows of the dw/db partials of a backward launch (blocks, or the register kernels'
    row groups): a function of the shape only (deterministic dw/db)."""
    if cols is not None and not partials_zeroed(cols):
        return row_groups(rows, cols)
    return max(1, min(rows, config.MAX_BACKWARD_BLOCKS))


def launch_backward(gy2, x2, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db, stream=0,
                    device=None):
    """Backward kernel, then the fixed-order reduction of the partials.  ``dw_part`` and
    ``db_part`` have ``backward_blocks(rows, cols)`` rows; the block-per-row kernels need
    them zeroed, the register kernels write them whole.  ``device``: as for
    :func:`launch_forward`."""
    rows, cols = x2.shape
    for kernel, grid, block, is_reduce in _backward_launches(rows, cols, dw_part.shape[0], dw.shape[0] != 0):
        if is_reduce:
            kernel[grid, block, stream](dw_part, db_part, dw, db)
        else:
            kernel[grid, block, stream](gy2, x2, mean, rstd, w, centered, gres, gx, dw_part, db_part)
        _remember(kernel, dw.dtype if is_reduce else x2.dtype, device, 2 if is_reduce else 1)


# ---------------------------------------------------------------------------------------
# Launches without Numba's per-call work
# ---------------------------------------------------------------------------------------
# A Numba launch costs about 60 us of Python on an H200 machine (numba-cuda 0.30: typing
# each argument, a context check per array), and importing each torch tensor through the
# CUDA Array Interface as much again: ten times torch's whole op on a mid-size tensor.  Once
# a kernel has been compiled and launched the ordinary way, these launch its compiled code
# through cuda.core (what numba-cuda itself calls) with the arguments packed as Numba packs
# them: for an array, (meminfo, parent, size, itemsize, data, *shape, *strides).  They are a
# fast path only: anything unexpected turns them off for the process, and the ordinary
# launch runs instead.  tests/test_gpu.py checks that both give the same bits.

#: Compiled kernels that can be launched raw: (dispatcher, dtype, device) -> cuda.core kernel.
_RAW: dict = {}
_RAW_LAUNCH: list = []  # [launch, LaunchConfig] once imported
#: Calls of raw_forward/raw_backward that launched raw (tests read it).
RAW_CALLS = {"forward": 0, "backward": 0}


class RawArray(tuple):
    """A C-contiguous device array described by ``(data pointer, shape, itemsize)``."""

    __slots__ = ()

    def __new__(cls, ptr: int, shape: tuple, itemsize: int):
        return super().__new__(cls, (ptr, tuple(shape), itemsize))


def _packed(a: RawArray) -> list:
    ptr, shape, itemsize = a
    size = 1
    for n in shape:
        size *= n
    strides = []
    step = itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return [0, 0, size, itemsize, ptr, *shape, *reversed(strides)]


def _is_c_array(t, dtype=None) -> bool:
    """Whether Numba type ``t`` is a mutable C-contiguous array (of ``dtype``).  Duck-typed:
    numba-cuda has its own type classes."""
    return (getattr(t, "layout", None) == "C" and getattr(t, "mutable", False)
            and (dtype is None or str(getattr(t, "dtype", "")) == dtype))


def _remember(kernel, dtype, device, dtype_arg: int) -> None:
    """Keep ``kernel``'s compiled code for raw launches on ``device`` where its argument
    ``dtype_arg`` has ``dtype`` (one compiled signature must match)."""
    if device is None or not config.RAW_LAUNCH or cuda.config.ENABLE_CUDASIM:
        return
    name = np.dtype(dtype).name
    key = (kernel, name, device)
    if key in _RAW:
        return
    try:
        if not _RAW_LAUNCH:
            from cuda.core import LaunchConfig, launch

            _RAW_LAUNCH[:] = [launch, LaunchConfig]
        found = [k for sig, k in kernel.overloads.items()
                 if _is_c_array(sig[dtype_arg], name)
                 and all(_is_c_array(t) for t in sig if hasattr(t, "layout"))]
        if len(found) == 1:
            _RAW[key] = found[0]._codelibrary.get_cufunc().kernel
    except Exception:  # noqa: BLE001 - another numba-cuda: keep its ordinary launches
        config.RAW_LAUNCH = False


_FLOAT = {4: "float32", 8: "float64"}
_CONFIGS: dict = {}  # (grid, block) -> cuda.core LaunchConfig


def _raw(launches, device, stream) -> bool:
    """Launch each ``(kernel, grid, block, args, dtype_arg)`` raw on stream handle ``stream``
    (an int); False, with nothing launched, unless every kernel is known for its arguments'
    dtype on ``device``."""
    if not config.RAW_LAUNCH:
        return False
    compiled = []
    for kernel, grid, block, args, dtype_arg in launches:
        code = _RAW.get((kernel, _FLOAT.get(args[dtype_arg][2]), device))
        if code is None:
            return False
        params = []
        for a in args:
            if isinstance(a, RawArray):
                params.extend(_packed(a))
            else:
                params.append(a)
        compiled.append((code, grid, block, params))
    for n, (code, grid, block, params) in enumerate(compiled):
        try:
            _core_launch(code, grid, block, params, device, stream)
        except Exception:
            config.RAW_LAUNCH = False
            if n == 0:  # nothing ran: the caller launches the ordinary way
                return False
            raise  # the first kernel ran: repeating it could add its partials twice
    return True


def _core_launch(code, grid, block, params: list, device: int, stream: int) -> None:
    """One launch through ``cuda.core`` (what numba-cuda calls), on stream handle ``stream``
    of ``device``."""
    launch, launch_config = _RAW_LAUNCH
    shape = _CONFIGS.get((grid, block))
    if shape is None:
        if len(_CONFIGS) > 4096:  # grids follow the row count: keep the cache bounded
            _CONFIGS.clear()
        shape = _CONFIGS[grid, block] = launch_config(grid=grid, block=block, shmem_size=0)
    launch(external_stream(device, stream), shape, code,
           *[ctypes.c_double(v) if isinstance(v, float) else v for v in params])


_STREAMS: dict = {}


def external_stream(device: int, handle: int):
    """Numba's stream object for the driver's stream ``handle`` on ``device`` (made once; the
    current device must be ``device``)."""
    stream = _STREAMS.get((device, handle))
    if stream is None:
        stream = _STREAMS[device, handle] = cuda.external_stream(handle)
    return stream


def raw_forward(device, stream, x2, res2, w, b, eps, centered, y, h, mean, rstd) -> bool:
    """:func:`launch_forward` on :class:`RawArray` arguments (``x2.shape`` and the rest as
    there), raw, on the stream whose driver handle (an int) is ``stream``; False when it
    cannot (the caller then launches the ordinary way)."""
    rows, cols = x2[1]
    if rows == 0:
        return True
    kernel, grid, block = _forward_launch(rows, cols)
    args = (x2, res2, w, b, float(eps), bool(centered), y, h, mean, rstd)
    if not _raw([(kernel, grid, block, args, 0)], device, stream):
        return False
    RAW_CALLS["forward"] += 1
    return True


def raw_backward(device, stream, gy2, x2, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db) -> bool:
    """:func:`launch_backward` on :class:`RawArray` arguments, raw; False when it cannot."""
    rows, cols = x2[1]
    main = (gy2, x2, mean, rstd, w, bool(centered), gres, gx, dw_part, db_part)
    reduce = (dw_part, db_part, dw, db)
    launches = [(kernel, grid, block, reduce if is_reduce else main, 2 if is_reduce else 1)
                for kernel, grid, block, is_reduce in _backward_launches(rows, cols, dw_part[1][0], dw[1][0] != 0)]
    if not _raw(launches, device, stream):
        return False
    RAW_CALLS["backward"] += 1
    return True


# ---------------------------------------------------------------------------------------
# The NumPy-level API on device arrays
# ---------------------------------------------------------------------------------------
_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _device(a, name):
    """A Numba device array for ``a`` (zero copy for CUDA Array Interface objects)."""
    if a is None:
        raise TypeError(f"{name} must be a CUDA array, got None")
    if not hasattr(a, "copy_to_host"):  # a Numba device array (real or simulated) as is
        if not hasattr(a, "__cuda_array_interface__"):
            raise TypeError(
                f"{name} must be on the GPU like the other arguments, got {type(a).__name__}"
            )
        a = cuda.as_cuda_array(a)  # CuPy, torch...: zero copy through the interface
    if np.dtype(a.dtype) not in _NATIVE:
        raise TypeError(f"{name} must have dtype float32 or float64 on the GPU, got {a.dtype}")
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous on the GPU (use a contiguous copy)")
    return a


@cuda.jit
def _zero_kernel(a):
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = 0


def _zero(a) -> None:
    """Zero a C-contiguous device array on the device (no host copy)."""
    if a.size:
        _zero_kernel[min(-(-a.size // 256), 1024), 256](a.reshape(a.size))


_EMPTY: dict = {}


def empty(shape, dtype):
    """A length-0 device array: an absent weight, bias, residual or statistic."""
    key = (shape, np.dtype(dtype))
    if key not in _EMPTY:
        _EMPTY[key] = cuda.device_array(shape, dtype)
    return _EMPTY[key]


def _param(p, name, lay, dtype):
    if p is None:
        return empty((0,), dtype)
    p = _device(p, name)
    if tuple(p.shape) != lay.norm_shape:
        raise _checks.ShapeError(f"{name} must have shape normalized_shape={lay.norm_shape}, got {tuple(p.shape)}")
    if np.dtype(p.dtype) != dtype:
        raise TypeError(f"{name} must have the dtype of x ({dtype}) on the GPU, got {p.dtype}")
    return p.reshape(lay.cols)


def _forward(centered, x, residual, normalized_shape, weight, bias, eps):
    x = _device(x, "x")
    lay = _checks.layout(tuple(x.shape), normalized_shape)
    dtype = np.dtype(x.dtype)
    w = _param(weight, "weight", lay, dtype)
    b = _param(bias, "bias", lay, dtype)
    eps = _checks.check_eps(eps, None if centered else dtype)
    x2 = x.reshape(lay.rows, lay.cols)
    if residual is not None:
        residual = _device(residual, "residual")
        if tuple(residual.shape) != tuple(x.shape) or residual.dtype != x.dtype:
            raise _checks.ShapeError(
                f"residual must have the shape and dtype of x {tuple(x.shape)} {x.dtype}, "
                f"got {tuple(residual.shape)} {residual.dtype}"
            )
        res2 = residual.reshape(lay.rows, lay.cols)
        h = cuda.device_array((lay.rows, lay.cols), dtype)
    else:
        res2 = h = empty((0, 0), dtype)
    y = cuda.device_array((lay.rows, lay.cols), dtype)
    stat = _checks.stats_dtype(dtype)
    mean = cuda.device_array(lay.rows, stat) if centered else empty((0,), stat)
    rstd = cuda.device_array(lay.rows, stat)
    launch_forward(x2, res2, w, b, eps, centered, y, h, mean, rstd)
    shape = tuple(x.shape)
    return (
        y.reshape(shape),
        h.reshape(shape) if residual is not None else None,
        mean.reshape(lay.lead_shape) if centered else None,
        rstd.reshape(lay.lead_shape),
    )


def _backward(centered, grad_y, x, mean, rstd, weight, normalized_shape):
    x = _device(x, "x")
    grad_y = _device(grad_y, "grad_y")
    if normalized_shape is None and weight is not None:
        normalized_shape = tuple(weight.shape) or None
    lay = _checks.layout(tuple(x.shape), normalized_shape)
    if tuple(grad_y.shape) != tuple(x.shape) or grad_y.dtype != x.dtype:
        raise _checks.ShapeError(
            f"grad_y must have the shape and dtype of x {tuple(x.shape)} {x.dtype}, "
            f"got {tuple(grad_y.shape)} {grad_y.dtype}"
        )
    dtype = np.dtype(x.dtype)
    w = _param(weight, "weight", lay, dtype)
    stats = []
    for name, s in (("mean", mean), ("rstd", rstd)):
        if name == "mean" and not centered:
            stats.append(empty((0,), _checks.stats_dtype(dtype)))
            continue
        s = _device(s, name)
        if tuple(s.shape) not in (lay.lead_shape, lay.lead_shape + (1,) * len(lay.norm_shape)):
            raise _checks.ShapeError(f"{name} must have shape {lay.lead_shape}, got {tuple(s.shape)}")
        stats.append(s.reshape(lay.rows))
    blocks = backward_blocks(lay.rows, lay.cols)
    # The partials are in x's dtype; the register kernels write them whole.
    dw_part = cuda.device_array((blocks, lay.cols), dtype)
    db_part = cuda.device_array((blocks, lay.cols), dtype)
    if partials_zeroed(lay.cols):  # the block-per-row kernels add into them
        _zero(dw_part)
        _zero(db_part)
    dw = cuda.device_array(lay.cols, dtype)
    db = cuda.device_array(lay.cols, dtype)
    gx = cuda.device_array((lay.rows, lay.cols), dtype)
    launch_backward(
        grad_y.reshape(lay.rows, lay.cols), x.reshape(lay.rows, lay.cols), stats[0], stats[1],
        w, centered, empty((0, 0), dtype), gx, dw_part, db_part, dw, db,
    )
    gw = dw.reshape(lay.norm_shape) if weight is not None else None
    return gx.reshape(tuple(x.shape)), gw, db.reshape(lay.norm_shape)


def layer_norm_forward(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """:func:`fastln.layer_norm_forward` on device arrays; returns device arrays."""
    y, _, mean, rstd = _forward(True, x, None, normalized_shape, weight, bias, eps)
    return y, mean, rstd


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """:func:`fastln.layer_norm` on device arrays."""
    return _forward(True, x, None, normalized_shape, weight, bias, eps)[0]


def layer_norm_backward(grad_y, x, mean, rstd, weight=None, normalized_shape=None):
    """:func:`fastln.layer_norm_backward` on device arrays; returns device arrays."""
    return _backward(True, grad_y, x, mean, rstd, weight, normalized_shape)


def rms_norm_forward(x, normalized_shape=None, weight=None, eps=None):
    """:func:`fastln.rms_norm_forward` on device arrays."""
    y, _, _, rstd = _forward(False, x, None, normalized_shape, weight, None, eps)
    return y, rstd


def rms_norm(x, normalized_shape=None, weight=None, eps=None):
    """:func:`fastln.rms_norm` on device arrays."""
    return _forward(False, x, None, normalized_shape, weight, None, eps)[0]


def rms_norm_backward(grad_y, x, rstd, weight=None, normalized_shape=None):
    """:func:`fastln.rms_norm_backward` on device arrays."""
    gx, gw, _ = _backward(False, grad_y, x, None, rstd, weight, normalized_shape)
    return gx, gw


def add_layer_norm(x, residual, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """:func:`fastln.add_layer_norm` on device arrays."""
    y, h, _, _ = _forward(True, x, _checks.required(residual, "residual"), normalized_shape, weight, bias, eps)
    return y, h


def add_rms_norm(x, residual, normalized_shape=None, weight=None, eps=None):
    """:func:`fastln.add_rms_norm` on device arrays."""
    y, h, _, _ = _forward(False, x, _checks.required(residual, "residual"), normalized_shape, weight, None, eps)
    return y, h
