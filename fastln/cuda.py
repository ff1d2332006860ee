r"""Numba CUDA kernels for LayerNorm and their launchers.

Imported only when device data arrives, so ``import fastln`` never needs CUDA.

Kernels (same math and names as :mod:`fastln.cpu`):

``forward``  one block per row (grid-stride over rows).  Each thread sums its strided share
    of the row in float64, shifted by its own first element (the CPU kernel's block trick:
    the shift is a member of the share, so the single-sweep M2 loses at most a factor of
    the share's length), then the block merges (count, mean, M2) with Chan's formula:
    warp shuffles then shared memory on real hardware, shared memory alone in the
    simulator, which has no shuffles.  The output sweep centres on the mean rounded to the
    data's dtype and takes the residual away after, as on the CPU.
``backward`` one block per row again; row sums (float64) by the same block reduction, then
    ``gx`` and per-block ``dw``/``db`` partials: thread ``t`` owns columns ``t, t + T, ...``
    of its block's partial row, so no atomics are needed.
``reduce``   one thread per column sums the block partials in block order: deterministic.

``config`` holds the threads per block; tests shrink it so the simulator stays fast.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float64

from fastln import _checks


class config:
    """Launch policy, patchable by tests (stumpy's pattern)."""

    #: Threads per block: a multiple of 32, a power of two.
    THREADS_PER_BLOCK = 32 if cuda.config.ENABLE_CUDASIM else 256
    #: Warp shuffles for the in-warp reduction (never in the simulator, which lacks them).
    USE_SHUFFLE = not cuda.config.ENABLE_CUDASIM
    #: Most blocks a backward launch uses (each keeps one row of dw/db partials).
    MAX_BACKWARD_BLOCKS = 256


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


@functools.cache
def _kernels(tpb: int, use_shuffle: bool):
    """Compile-time constants are closed over, so each (tpb, shuffle) gets its own kernels."""
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

    block_moments = block_reduce(_chan)  # the row's (count, mean, M2)
    block_sums = block_reduce(_sum3)

    @cuda.jit
    def forward(x, w, b, eps, y, mean, rstd):
        # x, y: (rows, cols) float32|float64; w, b: (cols,) same dtype; mean, rstd: (rows,)
        sh_n = cuda.shared.array(tpb, float64)
        sh_m = cuda.shared.array(tpb, float64)
        sh_q = cuda.shared.array(tpb, float64)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        cast = x.dtype.type
        for i in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            # This thread's share: x[i, tid::tpb], summed shifted by its first element.
            n = 0.0
            p = 0.0
            if tid < cols:
                p = np.float64(x[i, tid])
            s = 0.0
            q = 0.0
            for j in range(tid, cols, tpb):
                d = np.float64(x[i, j]) - p
                s += d
                q += d * d
                n += 1.0
            m_t = p + s / n if n > 0.0 else 0.0
            q_t = q - s * (s / n) if n > 0.0 else 0.0
            n, mu, m2 = block_moments(n, m_t, max(q_t, 0.0), sh_n, sh_m, sh_q)
            r = 1.0 / math.sqrt(m2 / cols + eps)
            mean_t = cast(mu)
            resid_t = cast(mu - np.float64(mean_t))
            r_t = cast(r)
            for j in range(tid, cols, tpb):
                y[i, j] = ((x[i, j] - mean_t) - resid_t) * r_t * w[j] + b[j]
            if tid == 0:
                mean[i] = mu
                rstd[i] = r

    @cuda.jit
    def backward(gy, x, mean, rstd, w, gx, dw_part, db_part):
        # gy, x, gx: (rows, cols); mean, rstd: (rows,); w: (cols,);
        # dw_part, db_part: (blocks, cols) float64 zeroed, or (blocks, 0) for none
        sh_a = cuda.shared.array(tpb, float64)
        sh_b = cuda.shared.array(tpb, float64)
        sh_c = cuda.shared.array(tpb, float64)
        rows, cols = x.shape
        tid = cuda.threadIdx.x
        blk = cuda.blockIdx.x
        param_grads = dw_part.shape[1] > 0
        cast = x.dtype.type
        for i in range(blk, rows, cuda.gridDim.x):
            m = cast(mean[i])
            r = np.float64(rstd[i])
            s_d = 0.0
            s_g = 0.0
            s_gd = 0.0
            for j in range(tid, cols, tpb):
                d = np.float64(x[i, j] - m)
                wdy = np.float64(gy[i, j] * w[j])
                s_d += d
                s_g += wdy
                s_gd += wdy * d
            s_d, s_g, s_gd = block_sums(s_d, s_g, s_gd, sh_a, sh_b, sh_c)
            corr = s_d / cols
            c1 = cast((s_gd - corr * s_g) * r / cols)
            c2 = cast(s_g / cols)
            corr_t = cast(corr)
            r_t = cast(r)
            for j in range(tid, cols, tpb):
                g = gy[i, j]
                x_hat = ((x[i, j] - m) - corr_t) * r_t
                gx[i, j] = (g * w[j] - (x_hat * c1 + c2)) * r_t
                if param_grads:
                    dw_part[blk, j] += g * x_hat
                    db_part[blk, j] += g

    @cuda.jit
    def reduce(dw_part, db_part, dw, db):
        # dw_part, db_part: (blocks, cols) float64; dw, db: (cols,)
        j = cuda.grid(1)
        if j < dw.shape[0]:
            sw = 0.0
            sb = 0.0
            for k in range(dw_part.shape[0]):
                sw += dw_part[k, j]
                sb += db_part[k, j]
            dw[j] = sw
            db[j] = sb

    return forward, backward, reduce


def kernels():
    """The (forward, backward, reduce) kernels for the current :class:`config`."""
    return _kernels(config.THREADS_PER_BLOCK, config.USE_SHUFFLE)


# ---------------------------------------------------------------------------------------
# Launchers (no checks): 2-D C-contiguous device arrays in, results written in place
# ---------------------------------------------------------------------------------------
def launch_forward(x2, w, b, eps, y, mean, rstd, stream=0):
    rows = x2.shape[0]
    if rows == 0:
        return
    forward, _, _ = kernels()
    forward[min(rows, 65535), config.THREADS_PER_BLOCK, stream](x2, w, b, eps, y, mean, rstd)


def backward_blocks(rows: int) -> int:
    """Blocks of a backward launch: a function of the shape only (deterministic dw/db)."""
    return max(1, min(rows, config.MAX_BACKWARD_BLOCKS))


def launch_backward(gy2, x2, mean, rstd, w, gx, dw_part, db_part, dw, db, stream=0):
    rows = x2.shape[0]
    _, backward, reduce = kernels()
    tpb = config.THREADS_PER_BLOCK
    if rows:
        backward[dw_part.shape[0], tpb, stream](gy2, x2, mean, rstd, w, gx, dw_part, db_part)
    if dw.shape[0]:
        reduce[-(-dw.shape[0] // tpb), tpb, stream](dw_part, db_part, dw, db)


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


@functools.lru_cache(maxsize=32)
def _constant(cols, value, dtype):
    return cuda.to_device(np.full(cols, value, dtype))


def _param(p, name, lay, fill, dtype):
    if p is None:
        return _constant(lay.cols, fill, dtype)
    p = _device(p, name)
    if tuple(p.shape) != lay.norm_shape:
        raise _checks.ShapeError(f"{name} must have shape normalized_shape={lay.norm_shape}, got {tuple(p.shape)}")
    if np.dtype(p.dtype) != dtype:
        raise TypeError(f"{name} must have the dtype of x ({dtype}) on the GPU, got {p.dtype}")
    return p.reshape(lay.cols)


def layer_norm_forward(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """:func:`fastln.layer_norm_forward` on device arrays; returns device arrays."""
    x = _device(x, "x")
    lay = _checks.layout(tuple(x.shape), normalized_shape)
    dtype = np.dtype(x.dtype)
    w = _param(weight, "weight", lay, 1.0, dtype)
    b = _param(bias, "bias", lay, 0.0, dtype)
    eps = _checks.check_eps(eps)
    x2 = x.reshape(lay.rows, lay.cols)
    y = cuda.device_array((lay.rows, lay.cols), dtype)
    mean = cuda.device_array(lay.rows, _checks.stats_dtype(dtype))
    rstd = cuda.device_array(lay.rows, _checks.stats_dtype(dtype))
    launch_forward(x2, w, b, eps, y, mean, rstd)
    return y.reshape(tuple(x.shape)), mean.reshape(lay.lead_shape), rstd.reshape(lay.lead_shape)


def layer_norm_backward(grad_y, x, mean, rstd, weight=None, normalized_shape=None):
    """:func:`fastln.layer_norm_backward` on device arrays; returns device arrays."""
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
    w = _param(weight, "weight", lay, 1.0, dtype)
    stats = []
    for name, s in (("mean", mean), ("rstd", rstd)):
        s = _device(s, name)
        if tuple(s.shape) not in (lay.lead_shape, lay.lead_shape + (1,) * len(lay.norm_shape)):
            raise _checks.ShapeError(f"{name} must have shape {lay.lead_shape}, got {tuple(s.shape)}")
        stats.append(s.reshape(lay.rows))
    param_grads = weight is not None
    part_cols = lay.cols if param_grads else 0
    blocks = backward_blocks(lay.rows)
    dw_part = cuda.to_device(np.zeros((blocks, part_cols)))
    db_part = cuda.to_device(np.zeros((blocks, part_cols)))
    dw = cuda.device_array(part_cols, dtype)
    db = cuda.device_array(part_cols, dtype)
    gx = cuda.device_array((lay.rows, lay.cols), dtype)
    launch_backward(
        grad_y.reshape(lay.rows, lay.cols), x.reshape(lay.rows, lay.cols), stats[0], stats[1],
        w, gx, dw_part, db_part, dw, db,
    )
    gx = gx.reshape(tuple(x.shape))
    if not param_grads:
        return gx, None, None
    return gx, dw.reshape(lay.norm_shape), db.reshape(lay.norm_shape)


# ---------------------------------------------------------------------------------------
# The torch bridge's CUDA path: outputs from torch's allocator, torch's current stream
# ---------------------------------------------------------------------------------------
def _torch_stream():
    import torch

    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def torch_forward(x, norm, rows, cols, weight, bias, eps):
    import torch

    half = x.dtype in (torch.float16, torch.bfloat16)
    cdt = torch.float32 if half else x.dtype
    xc = x.detach().contiguous().to(cdt)
    y = torch.empty_like(xc)
    sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    lead = tuple(x.shape[: x.dim() - len(norm)])
    mean = torch.empty(lead, dtype=sdt, device=x.device)
    rstd = torch.empty(lead, dtype=sdt, device=x.device)
    w = (torch.ones(cols, dtype=cdt, device=x.device) if weight is None else weight.detach().to(cdt).reshape(cols).contiguous())
    b = (torch.zeros(cols, dtype=cdt, device=x.device) if bias is None else bias.detach().to(cdt).reshape(cols).contiguous())
    if rows:
        launch_forward(
            cuda.as_cuda_array(xc.view(rows, cols)), cuda.as_cuda_array(w), cuda.as_cuda_array(b), eps,
            cuda.as_cuda_array(y.view(rows, cols)), cuda.as_cuda_array(mean.view(rows)),
            cuda.as_cuda_array(rstd.view(rows)), stream=_torch_stream(),
        )
    return y.to(x.dtype), mean, rstd


def torch_backward(grad_y, x, mean, rstd, weight, norm, rows, cols, output_mask):
    import torch

    half = x.dtype in (torch.float16, torch.bfloat16)
    cdt = torch.float32 if half else x.dtype
    xc = x.detach().contiguous().to(cdt)
    gyc = grad_y.detach().contiguous().to(cdt)
    gx = torch.empty_like(xc)
    param_grads = weight is not None and (output_mask[1] or output_mask[2])
    part_cols = cols if param_grads else 0
    blocks = backward_blocks(rows)
    dw_part = torch.zeros((blocks, part_cols), dtype=torch.float64, device=x.device)
    db_part = torch.zeros((blocks, part_cols), dtype=torch.float64, device=x.device)
    dw = torch.zeros(part_cols, dtype=cdt, device=x.device)
    db = torch.zeros(part_cols, dtype=cdt, device=x.device)
    w = torch.ones(cols, dtype=cdt, device=x.device) if weight is None else weight.detach().to(cdt).reshape(cols).contiguous()
    launch_backward(
        cuda.as_cuda_array(gyc.view(rows, cols)), cuda.as_cuda_array(xc.view(rows, cols)),
        cuda.as_cuda_array(mean.detach().contiguous().view(rows)),
        cuda.as_cuda_array(rstd.detach().contiguous().view(rows)), cuda.as_cuda_array(w),
        cuda.as_cuda_array(gx.view(rows, cols)), cuda.as_cuda_array(dw_part),
        cuda.as_cuda_array(db_part), cuda.as_cuda_array(dw), cuda.as_cuda_array(db),
        stream=_torch_stream(),
    )
    if not param_grads:
        empty = x.new_empty((0,))
        return gx.to(x.dtype), empty, empty.clone()
    return gx.to(x.dtype), dw.to(weight.dtype).reshape(norm), db.to(weight.dtype).reshape(norm)
