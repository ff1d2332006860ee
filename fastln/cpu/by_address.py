"""The row kernels entered by memory address: for callers whose arrays are not NumPy arrays.

Turning a torch tensor into a NumPy view costs about a microsecond (``Tensor.numpy()``, then
a reshape), and a forward plus backward needs about a dozen: more than the kernels take on a
small input.  These entries take each buffer's address instead (``Tensor.data_ptr()``, 60 ns)
and build the arrays inside the compiled code, where it costs nothing.  They know no
framework: an address, a length and the dtype of a *witness* (a length-0 array of the
buffer's dtype) is all they are given.

The caller guarantees what the NumPy fronts check: C-contiguous buffers of ``rows * cols``
(or ``cols``, ``rows``) elements of the witness's dtype that stay alive during the call; a
count of 0 marks an absent buffer (the address is then never read).  A forward given no
address for ``rstd`` keeps its statistics in scratch of its own (nobody will read them).  The loops are the row
kernels' own (:mod:`.kernels`), so results are bitwise the same as through the NumPy API.
"""

from __future__ import annotations

import numpy as np
from numba import carray

from fastln.cpu import _jit, kernels
from fastln.cpu._rows import reduce_partials
from fastln.cpu._unowned import pointer


@_jit.inline
def _matrix(address, witness, rows, cols):
    return carray(pointer(address, witness), (rows, cols))


@_jit.inline
def _vector(address, witness, n):
    return carray(pointer(address, witness), (n,))


@_jit.inline
def _forward_arrays(data, stat, x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at,
                    rows, cols, has_res, n_w, n_b, n_mean):
    return (
        _matrix(x_at, data, rows, cols),
        _matrix(res_at, data, rows if has_res else 0, cols),
        _vector(w_at, data, n_w),
        _vector(b_at, data, n_b),
        _matrix(y_at, data, rows, cols),
        _matrix(h_at, data, rows if has_res else 0, cols),
        _vector(mean_at, stat, n_mean) if rstd_at != 0 else np.empty(n_mean, stat.dtype),
        _vector(rstd_at, stat, rows) if rstd_at != 0 else np.empty(rows, stat.dtype),
    )


# The arrays are built here and handed to the kernels as arguments.  (Built inside a
# ``parallel=True`` function instead, they look like fresh local allocations to Numba's parfor
# passes, which then drop the stores into those that are never read again: the statistics.)
@_jit.sweep
def forward_serial(data, stat, x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at,
                   rows, cols, has_res, n_w, n_b, n_mean, eps, centered):
    """:func:`.kernels.forward` on buffers given by address (``data``/``stat``: witnesses of
    the data's and the statistics' dtypes); ``has_res`` and the ``n_*`` counts say which
    buffers are present."""
    x, res, w, b, y, h, mean, rstd = _forward_arrays(
        data, stat, x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at, rows, cols, has_res, n_w, n_b, n_mean)
    kernels.forward_serial(x, res, w, b, eps, centered, y, h, mean, rstd)


@_jit.sweep
def forward_parallel(data, stat, x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at,
                     rows, cols, has_res, n_w, n_b, n_mean, eps, centered):
    """:func:`forward_serial` with the parallel kernel."""
    x, res, w, b, y, h, mean, rstd = _forward_arrays(
        data, stat, x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at, rows, cols, has_res, n_w, n_b, n_mean)
    kernels.forward_parallel(x, res, w, b, eps, centered, y, h, mean, rstd)


_HALF_BITS = np.empty(0, np.uint16)
_FLOAT32 = np.empty(0, np.float32)


@_jit.sweep
def forward_half_serial(x_at, res_at, w_at, b_at, y_at, h_at, mean_at, rstd_at,
                        rows, cols, has_res, n_w, n_b, n_mean, eps, centered, fmt):
    """:func:`.kernels.forward_half_serial` on buffers given by address: half bits of format
    ``fmt`` (x, residual, y, residual_out), float32 weight, bias and statistics."""
    half, f32 = _HALF_BITS, _FLOAT32
    kernels.forward_half_serial(
        _matrix(x_at, half, rows, cols), _matrix(res_at, half, rows if has_res else 0, cols),
        _vector(w_at, f32, n_w), _vector(b_at, f32, n_b), eps, centered,
        _matrix(y_at, half, rows, cols), _matrix(h_at, half, rows if has_res else 0, cols),
        _vector(mean_at, f32, n_mean), _vector(rstd_at, f32, rows), fmt,
    )


@_jit.sweep
def backward_half_chunks(gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dwp_at, dbp_at, rows, cols, n_mean,
                         n_w, has_gres, n_params, n_chunks, rows_per_chunk, first, stop, centered, fmt):
    """:func:`.kernels.backward_half_chunks` on buffers given by address: half bits of
    format ``fmt`` (grad_y, x, the residual_out gradient, grad_x), float32 statistics and
    weight, float64 partials as :func:`backward_chunks`."""
    half, f32, part = _HALF_BITS, _FLOAT32, np.empty(0, np.float64)
    kernels.backward_half_chunks(
        _matrix(gy_at, half, rows, cols), _matrix(x_at, half, rows, cols), _vector(mean_at, f32, n_mean),
        _vector(rstd_at, f32, rows), _vector(w_at, f32, n_w), centered,
        _matrix(gres_at, half, rows if has_gres else 0, cols), _matrix(gx_at, half, rows, cols),
        _matrix(dwp_at, part, n_chunks, n_params), _matrix(dbp_at, part, n_chunks, n_params),
        rows_per_chunk, first, stop, fmt,
    )


@_jit.inline
def _backward_arrays(data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dw_at, db_at,
                     rows, cols, n_mean, n_w, has_gres, n_params, n_chunks):
    return (
        _matrix(gy_at, data, rows, cols),
        _matrix(x_at, data, rows, cols),
        _vector(mean_at, stat, n_mean),
        _vector(rstd_at, stat, rows),
        _vector(w_at, data, n_w),
        _matrix(gres_at, data, rows if has_gres else 0, cols),
        _matrix(gx_at, data, rows, cols),
        np.zeros((n_chunks, n_params)),  # float64 per-chunk partials
        np.zeros((n_chunks, n_params)),
        _vector(dw_at, data, n_params),
        _vector(db_at, data, n_params),
    )


@_jit.sweep
def backward_serial(data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dw_at, db_at,
                    rows, cols, n_mean, n_w, has_gres, n_params, n_chunks, rows_per_chunk, centered):
    """:func:`.kernels.backward` on buffers given by address; the per-chunk partials are
    allocated here (``n_params`` is ``cols``, or 0 for no parameter gradients)."""
    gy, x, mean, rstd, w, gres, gx, dw_part, db_part, dw, db = _backward_arrays(
        data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dw_at, db_at,
        rows, cols, n_mean, n_w, has_gres, n_params, n_chunks)
    kernels.backward_serial(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db, rows_per_chunk)


@_jit.sweep
def backward_parallel(data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dw_at, db_at,
                      rows, cols, n_mean, n_w, has_gres, n_params, n_chunks, rows_per_chunk, centered):
    """:func:`backward_serial` with the parallel kernel."""
    gy, x, mean, rstd, w, gres, gx, dw_part, db_part, dw, db = _backward_arrays(
        data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dw_at, db_at,
        rows, cols, n_mean, n_w, has_gres, n_params, n_chunks)
    kernels.backward_parallel(gy, x, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db, rows_per_chunk)


@_jit.sweep
def backward_chunks(data, stat, gy_at, x_at, mean_at, rstd_at, w_at, gres_at, gx_at, dwp_at, dbp_at,
                    rows, cols, n_mean, n_w, has_gres, n_params, n_chunks, rows_per_chunk, first, stop, centered):
    """:func:`.kernels.backward_chunks` on buffers given by address: chunks ``first`` to
    ``stop - 1`` write their rows of grad_x and their rows of the float64 ``(n_chunks,
    n_params)`` partials at ``dwp_at``/``dbp_at`` (zeroed by the caller)."""
    part = np.empty(0, np.float64)
    kernels.backward_chunks(
        _matrix(gy_at, data, rows, cols), _matrix(x_at, data, rows, cols), _vector(mean_at, stat, n_mean),
        _vector(rstd_at, stat, rows), _vector(w_at, data, n_w), centered,
        _matrix(gres_at, data, rows if has_gres else 0, cols), _matrix(gx_at, data, rows, cols), _matrix(dwp_at, part, n_chunks, n_params),
        _matrix(dbp_at, part, n_chunks, n_params), rows_per_chunk, first, stop,
    )


@_jit.sweep
def reduce(data, dwp_at, dbp_at, dw_at, db_at, n_chunks, n_params):
    """grad_weight/grad_bias (``data``'s dtype) from the float64 chunk partials, summed in
    chunk order."""
    part = np.empty(0, np.float64)
    reduce_partials(_matrix(dwp_at, part, n_chunks, n_params), _matrix(dbp_at, part, n_chunks, n_params),
                    _vector(dw_at, data, n_params), _vector(db_at, data, n_params))
