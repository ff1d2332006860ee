"""The NumPy-level API: validate, view as rows, run the CPU (or CUDA) kernel, reshape back."""

from __future__ import annotations

import numpy as np

from fastln import _checks, _config, cpu
from fastln._threading import parallel_guard


def _cuda():
    # Imported only when device data arrives: `import fastln` never touches CUDA.
    from fastln import cuda

    return cuda


def layer_norm_forward(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """LayerNorm forward that also returns the statistics backward needs.

    Parameters
    ----------
    x : array_like
        Input of shape ``(*lead, *normalized_shape)``, float16/32/64, any strides.
        Never modified.  A Numba CUDA device array runs the CUDA kernels.
    normalized_shape : int, tuple of int or None, optional
        Trailing dimensions to normalise over; None (the default) means the last axis.
    weight, bias : array_like or None, optional
        Affine parameters of shape ``normalized_shape``; None means 1 and 0.
    eps : float, optional
        Added to the variance before the square root, as in ``torch.nn.LayerNorm``.

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x``.
    mean, rstd : ndarray
        Shape ``lead``; float64 for float64 data, float32 otherwise.
        ``rstd = 1 / sqrt(var + eps)`` with the biased variance.

    Raises
    ------
    TypeError
        Non-floating data, None, or a non-numeric ``normalized_shape``/``eps``.
    ValueError
        A 0-d ``x``, or ``normalized_shape``/``weight``/``bias`` that do not fit ``x``.
    """
    if type(x) is not np.ndarray and _checks.is_device_array(x):
        return _cuda().layer_norm_forward(x, normalized_shape, weight, bias, eps)
    x = _checks.as_float_array(x, "x")
    lay = _checks.layout(x.shape, normalized_shape)
    dtype = _checks.compute_dtype(x.dtype)
    w = _checks.affine_vector(weight, "weight", lay, 1.0, dtype)
    b = _checks.affine_vector(bias, "bias", lay, 0.0, dtype)
    eps = _checks.check_eps(eps)
    x2 = _checks.as_rows(x, lay, dtype)
    y = np.empty_like(x2)
    stat = _checks.stats_dtype(x.dtype)
    mean = np.empty(lay.rows, stat)
    rstd = np.empty(lay.rows, stat)
    run_forward(x2, w, b, eps, y, mean, rstd)
    y = y.reshape(x.shape)
    if y.dtype != x.dtype:  # float16 data, computed in float32
        y = y.astype(x.dtype)
    return y, mean.reshape(lay.lead_shape), rstd.reshape(lay.lead_shape)


def _launch(serial, parallel, one_task: bool, rows: int, size: int, *args):
    """Run ``serial`` for small or single-task work, else ``parallel`` under the guard."""
    if one_task or size + _config.ROW_COST * rows < _config.SERIAL_BELOW:
        serial(*args)
    else:
        with parallel_guard():
            parallel(*args)


def run_forward(x2, w, b, eps, y, mean, rstd):
    """Pick the serial or parallel forward kernel for C-contiguous rows (no checks)."""
    rows = x2.shape[0]
    if rows:
        _launch(cpu.forward_serial, cpu.forward_parallel, rows == 1, rows, x2.size, x2, w, b, eps, y, mean, rstd)


def run_forward_bf16(xu, w, b, eps, yu, mean, rstd):
    """Forward on bfloat16 bits (uint16 rows), converted in the kernel (no checks)."""
    rows = xu.shape[0]
    if rows:
        one = rows <= cpu.BF16_CHUNK_ROWS
        _launch(cpu.forward_bf16_serial, cpu.forward_bf16_parallel, one, rows, xu.size, xu, w, b, eps, yu, mean, rstd)


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """LayerNorm of ``x`` over its trailing ``normalized_shape`` dimensions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance, exactly
    as ``torch.nn.functional.layer_norm``.  See :func:`layer_norm_forward` for the
    parameters; this returns only ``y``.

    Examples
    --------
    >>> import numpy as np, fastln
    >>> fastln.layer_norm(np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]]))  # doctest: +SKIP
    """
    return layer_norm_forward(x, normalized_shape, weight, bias, eps)[0]


def chunking(rows: int, cols: int) -> tuple[int, int]:
    """``(n_chunks, rows_per_chunk)`` for backward: a function of the shape alone.

    Never of the thread count: that is what makes grad_weight/grad_bias bitwise identical
    for any ``numba.set_num_threads``.
    """
    work = rows * (cols + _config.ROW_COST)
    if work < 2 * _config.MIN_CHUNK_ELEMS:  # fast path: small inputs are one chunk
        return 1, max(rows, 1)
    n_chunks = min(
        _config.MAX_CHUNKS,
        rows,
        work // _config.MIN_CHUNK_ELEMS,
        max(2, _config.MAX_PARTIAL_BYTES // max(16 * cols, 1)),
    )
    n_chunks = max(1, n_chunks)
    rows_per_chunk = max(1, -(-rows // n_chunks))
    return max(1, -(-rows // rows_per_chunk)), rows_per_chunk


def layer_norm_backward(grad_y, x, mean, rstd, weight=None, normalized_shape=None):
    """Gradients of LayerNorm with respect to its input, weight and bias, in one sweep.

    Parameters
    ----------
    grad_y : array_like
        Gradient of the loss with respect to ``y``; the shape of ``x``.
    x : array_like
        The forward input.
    mean, rstd : array_like
        Statistics from :func:`layer_norm_forward`, of shape ``x.shape[:x.ndim - k]``
        (torch's trailing-ones shape is accepted too).
    weight : array_like or None, optional
        The forward weight; None means no affine transform (and no parameter gradients).
    normalized_shape : int, tuple of int or None, optional
        As in the forward; None means the last axis, or ``weight.shape`` when given.

    Returns
    -------
    grad_x : ndarray
        Same shape and dtype as ``x``.
    grad_weight, grad_bias : ndarray or None
        Shape ``normalized_shape``, ``x``'s dtype; None when ``weight`` is None.
        Bitwise identical whatever the thread count.
    """
    if not (type(x) is np.ndarray and type(grad_y) is np.ndarray) and (
        _checks.is_device_array(x) or _checks.is_device_array(grad_y)
    ):
        return _cuda().layer_norm_backward(grad_y, x, mean, rstd, weight, normalized_shape)
    x = _checks.as_float_array(x, "x")
    grad_y = _checks.as_float_array(grad_y, "grad_y")
    if normalized_shape is None and weight is not None:
        normalized_shape = np.shape(weight) or None
    lay = _checks.layout(x.shape, normalized_shape)
    if grad_y.shape != x.shape:
        raise _checks.ShapeError(f"grad_y must have the shape of x {x.shape}, got {grad_y.shape}")
    param_grads = weight is not None
    dtype = _checks.compute_dtype(x.dtype)
    w = _checks.affine_vector(weight, "weight", lay, 1.0, dtype)
    mean = _checks.check_stat(mean, "mean", lay, x.dtype)
    rstd = _checks.check_stat(rstd, "rstd", lay, x.dtype)
    x2 = _checks.as_rows(x, lay, dtype)
    gy2 = _checks.as_rows(grad_y, lay, dtype)
    gx = np.empty_like(x2)
    dw, db = np.empty((2, lay.cols if param_grads else 0), dtype)
    run_backward(gy2, x2, mean, rstd, w, gx, dw, db)
    grad_x = gx.reshape(x.shape)
    if dtype != x.dtype:  # float16 data, computed in float32
        grad_x, dw, db = grad_x.astype(x.dtype), dw.astype(x.dtype), db.astype(x.dtype)
    if not param_grads:
        return grad_x, None, None
    return grad_x, dw.reshape(lay.norm_shape), db.reshape(lay.norm_shape)


def run_backward(gy2, x2, mean, rstd, w, gx, dw, db):
    """Pick the serial or parallel backward kernel and give it its partials (no checks).

    ``dw``/``db`` of length 0 mean no parameter gradients; else they receive the sums of
    per-chunk float64 partials, chunked by :func:`chunking` (the shape alone).
    """
    rows, cols = x2.shape
    if rows == 0:
        dw[:] = 0
        db[:] = 0
        return
    n_chunks, rows_per_chunk = chunking(rows, cols)
    dw_part, db_part = np.zeros((2, n_chunks, dw.shape[0]))  # one allocation, two views
    _launch(
        cpu.backward_serial, cpu.backward_parallel, n_chunks == 1, rows, x2.size,
        gy2, x2, mean, rstd, w, gx, dw_part, db_part, dw, db, rows_per_chunk,
    )
