"""The NumPy-level API: one front per public op over one shared pipeline.

Every front goes through the same steps, whatever the norm: route by where the data lives
(NumPy, Numba CUDA device arrays, any other DLPack array), validate and view as
C-contiguous rows (``fastln._checks``), run the kernel (``run_forward``/``run_backward``),
and view the results back in the caller's shape.  A norm is a :class:`Norm`: its name,
whether it centres, whether it has a bias, and how ``eps=None`` resolves.

Once a call has passed the checks, its decisions are kept as a plan per (norm, shape,
``normalized_shape``, dtype): later calls whose arrays are plain (C-contiguous, writeable,
of the plan's dtypes and shapes) go straight to the kernel, bitwise the same; every other
call, and every error, takes the checks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fastln import _checks, _config, _threading, cpu
from fastln.cpu import _half
from fastln.dask import is_dask_array


class Norm(NamedTuple):
    """What distinguishes one norm from another in the pipeline."""

    name: str
    centered: bool  # LayerNorm subtracts the mean; RMSNorm does not
    has_bias: bool


LAYER = Norm("layer_norm", True, True)
RMS = Norm("rms_norm", False, False)

_EMPTY_ROWS: dict = {}


def _no_rows(dtype) -> np.ndarray:
    """A (0, 0) array: an absent residual / residual_out / its gradient (kernels skip it)."""
    a = _EMPTY_ROWS.get(dtype)
    if a is None:
        a = _EMPTY_ROWS[dtype] = np.empty((0, 0), dtype)
    return a


# ---------------------------------------------------------------------------------------
# Routing: where does the data live?
# ---------------------------------------------------------------------------------------
def _route(*arrays):
    """``"numpy"``, ``"dask"``, ``"cuda"`` or ``"dlpack"`` for the first non-NumPy array.
    Anything else (lists, array-likes) is read through ``np.asarray``."""
    for a in arrays:
        if a is None or type(a) is np.ndarray:
            continue
        if is_dask_array(a):
            return "dask"
        if _checks.is_device_array(a):
            return "cuda"
        if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray):
            return "dlpack"
    return "numpy"


def _cuda():
    # Imported only when device data arrives: `import fastln` never touches CUDA.
    from fastln import cuda

    return cuda


def _elsewhere(where, fn_name, *args, **kwargs):
    if where == "dask":
        from fastln import dask  # the dask package itself is imported inside call()

        return dask.call(fn_name, *args, **kwargs)
    if where == "cuda":
        return getattr(_cuda(), fn_name)(*args, **kwargs)
    from fastln import interop

    return interop.call(fn_name, *args, **kwargs)


# ---------------------------------------------------------------------------------------
# Kernel entries: C-contiguous rows in, results written in place (no checks)
# ---------------------------------------------------------------------------------------
def _launch(serial, parallel, one_task: bool, rows: int, size: int, *args):
    """Run ``serial`` for small or single-task work, else ``parallel`` (under the guard)."""
    if one_task or size + _config.ROW_COST * rows < _config.SERIAL_BELOW or not _threading.parallel_ok():
        serial(*args)
    else:
        with _threading.parallel_guard():
            parallel(*args)


def use_column_kernels(rows: int, cols: int, backward: bool = False) -> bool:
    """Few very wide rows are split by columns (a function of the shape only).  Backward
    also splits any row so wide that two chunks of partials would pass their cap."""
    if cols < _config.COL_SPLIT_MIN:
        return False
    return rows < _config.MAX_CHUNKS or (backward and 32 * cols > _config.MAX_PARTIAL_BYTES)


def _forward_kernels(rows: int, cols: int) -> tuple:
    """``(serial, parallel, one_task)``: the forward kernels for a shape, for :func:`_launch`."""
    if use_column_kernels(rows, cols):
        return cpu.forward_cols_serial, cpu.forward_cols_parallel, False
    return cpu.forward_serial, cpu.forward_parallel, rows == 1


def run_forward(x2, res2, w, b, eps, centered, y, h, mean, rstd):
    """Forward kernel on ``(rows, cols)`` rows; see :mod:`fastln.cpu.kernels` for arguments."""
    rows, cols = x2.shape
    if rows == 0:
        return
    serial, parallel, one_task = _forward_kernels(rows, cols)  # not *-unpacked into the call: 0.15 us
    _launch(serial, parallel, one_task, rows, x2.size, x2, res2, w, b, eps, centered, y, h, mean, rstd)


def run_forward_half(xu, ru, w, b, eps, centered, yu, hu, mean, rstd, fmt):
    """Forward on half-precision bits (uint16 rows; ``fmt`` from :mod:`fastln.cpu._half`),
    converted in the kernel (no checks)."""
    rows = xu.shape[0]
    if rows:
        _launch(cpu.forward_half_serial, cpu.forward_half_parallel, rows <= cpu.HALF_CHUNK_ROWS,
                rows, xu.size, xu, ru, w, b, eps, centered, yu, hu, mean, rstd, fmt)


def chunking(rows: int, cols: int) -> tuple[int, int]:
    """``(n_chunks, rows_per_chunk)`` for backward: a function of the shape alone.

    Never of the thread count: that is what makes grad_weight/grad_bias bitwise identical
    for any ``numba.set_num_threads`` (or ``torch.set_num_threads`` for the torch bridge's
    compiled path, which ports this function to C++: keep the two alike).  Counts above one
    are made even: 3 chunks on 2 threads left one thread a chunk idle (1x128x768 float32
    forward+backward through the bridge: 1.08x faster with an even count, 31 interleaved
    rounds).
    """
    work = rows * (cols + _config.ROW_COST)
    if work < 2 * _config.MIN_CHUNK_ELEMS:  # fast path: small inputs are one chunk, or two halves
        # Work the launch rule would run in parallel, but too little for two full chunks, is
        # split in halves: on torch's pool (the compiled glue) the two run at once, where one
        # chunk left torch's second thread idle (64x512 forward+backward through the bridge,
        # torch's time over fastln's: 0.88-0.89 with one chunk, 0.98-1.04 with two; Numba's
        # pool runs them serially, see serial_backward).
        if work >= _config.SERIAL_BELOW and rows >= 2:
            return 2, -(-rows // 2)
        return 1, max(rows, 1)
    cap = min(_config.MAX_CHUNKS, rows, max(2, rows // max(_config.MIN_CHUNK_ROWS, 1)),
              max(2, _config.MAX_PARTIAL_BYTES // max(16 * cols, 1)))
    n_chunks = max(1, min(cap, work // _config.MIN_CHUNK_ELEMS))
    if n_chunks > 1 and n_chunks % 2:  # an even count keeps 2 (or 4) threads equally busy
        n_chunks += 1 if n_chunks < cap else -1
    rows_per_chunk = max(1, -(-rows // n_chunks))
    return max(1, -(-rows // rows_per_chunk)), rows_per_chunk


def run_backward(gy2, x2, mean, rstd, w, centered, gres, gx, dw, db):
    """Backward kernel; ``dw``/``db`` of length 0 mean no parameter gradients.

    Row kernels get float64 per-chunk partials, chunked by :func:`chunking` (the shape
    alone); column kernels need none.
    """
    rows, cols = x2.shape
    if rows == 0:
        dw[:] = 0
        db[:] = 0
        return
    _launch_backward(_backward_kernels(rows, cols), gy2, x2, mean, rstd, w, centered, gres, gx, dw, db)


def _backward_kernels(rows: int, cols: int) -> tuple:
    """``(serial, parallel, one_task, n_chunks, rows_per_chunk)`` for a shape: the column
    kernels (``n_chunks`` 0: no partials) or the row kernels (:func:`_chunked`)."""
    if use_column_kernels(rows, cols, backward=True):
        return cpu.backward_cols_serial, cpu.backward_cols_parallel, False, 0, 0
    return _chunked(cpu.backward_serial, cpu.backward_parallel, rows, cols)


def _chunked(serial, parallel, rows: int, cols: int) -> tuple:
    """A row backward kernel pair over the chunks of :func:`chunking`, as
    :func:`_backward_kernels` gives it."""
    n_chunks, rows_per_chunk = chunking(rows, cols)
    return serial, parallel, serial_backward(n_chunks, rows, cols), n_chunks, rows_per_chunk


def serial_backward(n_chunks: int, rows: int, cols: int) -> bool:
    """Whether a row backward's chunks run one after the other on Numba's pool (the NumPy
    API and the Python bridge): one chunk, or less work than two full chunks
    (:func:`chunking`'s halves).  Waking Numba's workers for those cost more than it bought:
    64x512 float32 took 28.1 us on two threads against 13.0 us serially (the same two
    chunks, the same bits; 31 interleaved rounds)."""
    return n_chunks == 1 or rows * (cols + _config.ROW_COST) < 2 * _config.MIN_CHUNK_ELEMS


def _launch_backward(kernels, gy2, x2, mean, rstd, w, centered, gres, gx, dw, db, *extra):
    """:func:`_launch` for backward kernels of :func:`_backward_kernels`: row kernels get
    float64 per-chunk partials, and ``extra`` arguments after ``rows_per_chunk``."""
    serial, parallel, one_task, n_chunks, rows_per_chunk = kernels
    rows = x2.shape[0]
    if n_chunks == 0:
        _launch(serial, parallel, one_task, rows, x2.size, gy2, x2, mean, rstd, w, centered, gres, gx, dw, db)
        return
    # Two arrays, not two views of one: unpacking an array's rows costs 0.8 us, two
    # allocations 0.25 us (2x3 backward: the kernel itself takes 1.4 us).
    dw_part = np.zeros((n_chunks, dw.shape[0]))
    db_part = np.zeros((n_chunks, dw.shape[0]))
    _launch(
        serial, parallel, one_task, rows, x2.size,
        gy2, x2, mean, rstd, w, centered, gres, gx, dw_part, db_part, dw, db, rows_per_chunk, *extra,
    )


def run_backward_half(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw, db, fmt):
    """Backward on half-precision bits (uint16 rows; ``fmt`` from :mod:`fastln.cpu._half`),
    converted in the kernel (no checks); row
    kernels only (callers check :func:`use_column_kernels` first).  float32 ``w``, ``mean``,
    ``rstd``, ``dw``, ``db``; chunked like :func:`run_backward`, so bitwise the same as it on
    the upcast data."""
    if xu.shape[0] == 0:
        dw[:] = 0
        db[:] = 0
        return
    kernels = _chunked(cpu.backward_half_serial, cpu.backward_half_parallel, *xu.shape)
    _launch_backward(kernels, gyu, xu, mean, rstd, w, centered, gresu, gxu, dw, db, fmt)


# ---------------------------------------------------------------------------------------
# Plans: the common call checked in a few comparisons
# ---------------------------------------------------------------------------------------
class _Plan(NamedTuple):
    """What the general pipeline decided for one (norm, shape, ``normalized_shape``, dtype):
    kept so that the next call with plain arrays of the same kind
    (:func:`fastln._checks.plain`) goes straight to the kernel.  Only float32/float64 data,
    and only layouts with rows."""

    lay: _checks.Layout
    dtype: np.dtype  # the data's dtype, which the kernels run in
    stat: np.dtype  # mean/rstd
    rows2: tuple  # (rows, cols)
    flat: bool  # x is (rows, cols) and its statistics (rows,): no reshapes
    forward: tuple  # _forward_kernels
    backward: tuple  # _backward_kernels
    default_eps: float  # what eps=None means (RMSNorm)


_PLANS: dict = {}


def _plan_key(centered: bool, x_shape: tuple, normalized_shape, dtype):
    """The plan's key, or None when ``normalized_shape`` is not of an exact kind
    (:func:`fastln._checks.hashable_exactly`): a plan made for ``1`` must not let ``True``
    through."""
    if _checks.hashable_exactly(normalized_shape):
        return centered, x_shape, normalized_shape, dtype
    return None


def _make_plan(key, lay: _checks.Layout, dtype: np.dtype) -> None:
    """Remember what the general path decided (called once it has checked everything)."""
    if key is None or lay.rows == 0 or dtype not in _checks.NATIVE_DTYPES:
        return
    rows, cols = lay.rows, lay.cols
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[key] = _Plan(
        # "flat": x is (rows, cols) and the statistics are (rows,), so nothing is reshaped;
        # not so when normalized_shape spans both dims of a 2-D x (its statistics are 0-d)
        lay, dtype, _checks.stats_dtype(dtype), (rows, cols), len(key[1]) == 2 and len(lay.norm_shape) == 1,
        _forward_kernels(rows, cols), _backward_kernels(rows, cols), _checks.default_eps(dtype),
    )


def _known_plan(norm, x: np.ndarray, normalized_shape):
    """The plan for ``x`` (an ndarray) when there is one and ``x`` is C-contiguous and
    writeable, else None."""
    key = _plan_key(norm.centered, x.shape, normalized_shape, x.dtype)
    plan = None if key is None else _PLANS.get(key)
    if plan is None or x.flags.num & _checks.C_WRITEABLE != _checks.C_WRITEABLE:
        return None
    return plan


def _forward_planned(norm, x, residual, normalized_shape, weight, bias, eps, out=None):
    """:func:`_forward` of a call whose arrays are all plain (:func:`fastln._checks.plain`) and whose plan
    is known, bitwise the same (the same kernels on the same arrays); None otherwise, and
    the general path decides (and raises).  ``out`` is taken when it is plain and either
    ``x`` itself or apart from ``x``, ``weight`` and ``bias``."""
    plan = _known_plan(norm, x, normalized_shape)
    if plan is None:
        return None
    dt = plan.dtype
    lay = plan.lay
    if not (
        (weight is None or _checks.plain(weight, dt, lay.norm_shape))
        and (bias is None or _checks.plain(bias, dt, lay.norm_shape))
        and (residual is None or _checks.plain(residual, dt, x.shape))
    ):
        return None
    if out is not None and not (
        residual is None
        and _checks.plain(out, dt, x.shape)
        and (out is x or not (
            np.may_share_memory(out, x)
            or (weight is not None and np.may_share_memory(out, weight))
            or (bias is not None and np.may_share_memory(out, bias))
        ))
    ):
        return None
    if type(eps) is not float:
        if eps is not None or norm.centered:
            return None
        eps = plan.default_eps
    flat = plan.flat
    x2 = x if flat else x.reshape(plan.rows2)
    y = np.empty(x.shape, dt) if out is None else out
    if residual is None:
        res2 = h2 = h = _no_rows(dt)
    else:
        res2 = residual if flat else residual.reshape(plan.rows2)
        h = np.empty(x.shape, dt)
        h2 = h if flat else h.reshape(plan.rows2)
    mean = np.empty(lay.lead_shape if norm.centered else 0, plan.stat)
    rstd = np.empty(lay.lead_shape, plan.stat)
    w = _checks.EMPTY[dt] if weight is None else weight if weight.ndim == 1 else weight.reshape(lay.cols)
    b = _checks.EMPTY[dt] if bias is None else bias if bias.ndim == 1 else bias.reshape(lay.cols)
    serial, parallel, one_task = plan.forward
    _launch(
        serial, parallel, one_task, lay.rows, x2.size, x2, res2, w, b, eps, norm.centered, y if flat else y.reshape(plan.rows2), h2,
        mean if flat or not norm.centered else mean.reshape(lay.rows), rstd if flat else rstd.reshape(lay.rows),
    )
    return y, None if residual is None else h, mean if norm.centered else None, rstd


def _backward_planned(norm, grad_y, x, mean, rstd, weight, normalized_shape):
    """:func:`_backward` of a call whose arrays are all plain and whose plan is known,
    bitwise the same; None otherwise (the general path decides, and raises)."""
    if normalized_shape is None and type(weight) is np.ndarray:
        normalized_shape = weight.shape
    plan = _known_plan(norm, x, normalized_shape)
    if plan is None:
        return None
    dt = plan.dtype
    lay = plan.lay
    lead = lay.lead_shape
    if not (
        _checks.plain(grad_y, dt, x.shape)
        and (_checks.plain(mean, plan.stat, lead) if norm.centered else True)
        and _checks.plain(rstd, plan.stat, lead)
        and (weight is None or _checks.plain(weight, dt, lay.norm_shape))
    ):
        return None
    rows, cols = plan.rows2
    flat = plan.flat
    gx = np.empty(x.shape, dt)
    dw = np.empty(cols, dt)
    db = np.empty(cols, dt)
    _launch_backward(
        plan.backward, grad_y if flat else grad_y.reshape(plan.rows2), x if flat else x.reshape(plan.rows2),
        (mean if flat else mean.reshape(rows)) if norm.centered else _checks.EMPTY[plan.stat],
        rstd if flat else rstd.reshape(rows),
        _checks.EMPTY[dt] if weight is None else weight if weight.ndim == 1 else weight.reshape(cols),
        norm.centered, _no_rows(dt), gx if flat else gx.reshape(plan.rows2), dw, db,
    )
    if len(lay.norm_shape) > 1:
        dw = dw.reshape(lay.norm_shape)
        db = db.reshape(lay.norm_shape)
    return gx, dw if weight is not None else None, db


# ---------------------------------------------------------------------------------------
# The shared pipeline
# ---------------------------------------------------------------------------------------
def _forward(norm, x, residual, normalized_shape, weight, bias, eps, out=None):
    """Validate, run and reshape: ``(y, residual_out or None, mean or None, rstd)``."""
    if type(x) is np.ndarray:
        done = _forward_planned(norm, x, residual, normalized_shape, weight, bias, eps, out)
        if done is not None:
            return done
    x = _checks.as_float_array(x, "x")
    lay = _checks.layout(x.shape, normalized_shape)
    dtype = _checks.compute_dtype(x.dtype)
    w = _checks.param_vector(weight, "weight", lay, dtype)
    b = _checks.param_vector(bias, "bias", lay, dtype)
    eps = _checks.check_eps(eps, None if norm.centered else dtype)
    if residual is not None:
        residual = _checks.as_float_array(residual, "residual")
        if residual.shape != x.shape:
            raise _checks.ShapeError(f"residual must have the shape of x {x.shape}, got {residual.shape}")
    if _float16_in_kernel(x, residual, lay):
        return _forward_float16(norm, x, residual, lay, w, b, eps, out, (weight, bias, residual))
    x2 = _checks.as_rows(x, lay, dtype)
    if residual is not None:
        if dtype != x.dtype:  # float16: residual_out is rounded to float16 before the norm
            h16 = np.add(x, residual, dtype=x.dtype)
            y = _forward(norm, h16, None, lay.norm_shape, weight, bias, eps, out)[0]
            return y, h16, None, None
        res2 = _checks.as_rows(residual, lay, dtype)
        h = np.empty_like(x2)
    else:
        res2 = h = _no_rows(dtype)
    direct = out is not None and dtype == x.dtype  # float16 is computed in float32, then cast
    if out is not None:
        _checks.check_out(out, x, (weight, bias, residual))
    y = out.reshape(lay.rows, lay.cols) if direct else np.empty_like(x2)
    stat = _checks.stats_dtype(x.dtype)
    mean = np.empty(lay.rows if norm.centered else 0, stat)
    rstd = np.empty(lay.rows, stat)
    run_forward(x2, res2, w, b, eps, norm.centered, y, h, mean, rstd)
    if out is not None:
        if not direct:
            out[...] = y.reshape(x.shape)
        y = out
    else:
        y = y.reshape(x.shape)
        if y.dtype != x.dtype:  # float16 data, computed in float32
            y = y.astype(x.dtype)
    res_out = None
    if residual is not None:
        res_out = h.reshape(x.shape)
        if res_out.dtype != x.dtype:
            res_out = res_out.astype(x.dtype)
    _make_plan(_plan_key(norm.centered, x.shape, normalized_shape, x.dtype), lay, x.dtype)
    return (
        y,
        res_out,
        mean.reshape(lay.lead_shape) if norm.centered else None,
        rstd.reshape(lay.lead_shape),
    )


def _float16_in_kernel(x, other, lay, backward=False) -> bool:
    """float16 data (and ``other``, the residual or grad_y, float16 too or absent) that the
    row kernels convert themselves (:mod:`fastln.cpu._half`)."""
    return (
        x.dtype == np.float16
        and (other is None or other.dtype == np.float16)
        and _half.FLOAT16_IN_KERNEL
        and lay.rows > 0
        and not use_column_kernels(lay.rows, lay.cols, backward)
    )


def _forward_float16(norm, x, residual, lay, w, b, eps, out, others):
    """float16 forward converted row by row in the kernel, no float32 copies: bitwise the
    float32 computation rounded once, with residual_out rounded to float16 before the norm
    (as ``np.add`` in float16 then the norm)."""
    if out is not None:
        _checks.check_out(out, x, others)
    xu = _checks.as_rows(x, lay, np.float16).view(np.uint16)
    y = out.reshape(lay.rows, lay.cols) if out is not None else np.empty((lay.rows, lay.cols), np.float16)
    if residual is not None:
        ru = _checks.as_rows(residual, lay, np.float16).view(np.uint16)
        h = np.empty((lay.rows, lay.cols), np.float16)
        hu = h.view(np.uint16)
    else:
        ru = hu = _no_rows(np.uint16)
    mean = np.empty(lay.rows if norm.centered else 0, np.float32)
    rstd = np.empty(lay.rows, np.float32)
    run_forward_half(xu, ru, w, b, eps, norm.centered, y.view(np.uint16), hu, mean, rstd, _half.FLOAT16)
    return (
        out if out is not None else y.reshape(x.shape),
        h.reshape(x.shape) if residual is not None else None,
        mean.reshape(lay.lead_shape) if norm.centered else None,
        rstd.reshape(lay.lead_shape),
    )


def _backward(norm, grad_y, x, mean, rstd, weight, normalized_shape):
    """Validate, run and reshape: ``(grad_x, grad_weight or None, grad_bias)``."""
    if type(x) is np.ndarray:
        done = _backward_planned(norm, grad_y, x, mean, rstd, weight, normalized_shape)
        if done is not None:
            return done
    x = _checks.as_float_array(x, "x")
    grad_y = _checks.as_float_array(grad_y, "grad_y")
    if normalized_shape is None and weight is not None:
        normalized_shape = np.shape(weight) or None
    lay = _checks.layout(x.shape, normalized_shape)
    if grad_y.shape != x.shape:
        raise _checks.ShapeError(f"grad_y must have the shape of x {x.shape}, got {grad_y.shape}")
    dtype = _checks.compute_dtype(x.dtype)
    w = _checks.param_vector(weight, "weight", lay, dtype)
    mean = _checks.check_stat(mean, "mean", lay, x.dtype) if norm.centered else _checks.EMPTY[_checks.stats_dtype(x.dtype)]
    rstd = _checks.check_stat(rstd, "rstd", lay, x.dtype)
    if _float16_in_kernel(x, grad_y, lay, backward=True):  # no float32 copies
        gx = np.empty((lay.rows, lay.cols), np.float16)
        dw = np.empty(lay.cols, dtype)
        db = np.empty(lay.cols, dtype)
        run_backward_half(
            _checks.as_rows(grad_y, lay, np.float16).view(np.uint16), _checks.as_rows(x, lay, np.float16).view(np.uint16),
            mean, rstd, w, norm.centered, _no_rows(np.uint16), gx.view(np.uint16), dw, db, _half.FLOAT16,
        )
    else:
        x2 = _checks.as_rows(x, lay, dtype)
        gy2 = _checks.as_rows(grad_y, lay, dtype)
        gx = np.empty_like(x2)
        dw = np.empty(lay.cols, dtype)
        db = np.empty(lay.cols, dtype)
        run_backward(gy2, x2, mean, rstd, w, norm.centered, _no_rows(dtype), gx, dw, db)
    grad_x = gx.reshape(x.shape)
    if dtype != x.dtype:  # float16 data, computed in float32
        grad_x, dw, db = grad_x.astype(x.dtype, copy=False), dw.astype(x.dtype), db.astype(x.dtype)
    _make_plan(_plan_key(norm.centered, x.shape, normalized_shape, x.dtype), lay, x.dtype)
    gw = dw.reshape(lay.norm_shape) if weight is not None else None
    return grad_x, gw, db.reshape(lay.norm_shape)


# ---------------------------------------------------------------------------------------
# Public fronts
# ---------------------------------------------------------------------------------------
def layer_norm_forward(x, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """LayerNorm forward that also returns the statistics backward needs.

    Parameters
    ----------
    x : array_like
        Input of shape ``(*lead, *normalized_shape)``, float16/32/64, any strides.  Never
        modified.  A Numba CUDA device array runs the CUDA kernels; any other array with
        ``__dlpack__`` (torch, JAX, CuPy...) comes back
        as the same kind of array (no autograd: that is what ``fastln.torch`` is for).
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
    if type(x) is not np.ndarray and (where := _route(x, weight, bias)) != "numpy":
        return _elsewhere(where, "layer_norm_forward", x, normalized_shape, weight, bias, eps)
    y, _, mean, rstd = _forward(LAYER, x, None, normalized_shape, weight, bias, eps)
    return y, mean, rstd


def layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, out=None):
    """LayerNorm of ``x`` over its trailing ``normalized_shape`` dimensions.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias`` with the biased variance, exactly
    as ``torch.nn.functional.layer_norm``.  See :func:`layer_norm_forward` for the other
    parameters.

    Parameters
    ----------
    out : ndarray, optional
        Where to write ``y``: a writeable, C-contiguous array of ``x``'s shape and dtype
        (NumPy's convention), or ``x`` itself to normalise in place.  A reused buffer skips
        the page faults of a fresh allocation.

    Returns
    -------
    ndarray
        ``y`` (``out`` when given).

    Examples
    --------
    >>> import numpy as np, fastln
    >>> fastln.layer_norm(np.array([[1.0, 2.0, 3.0]])).round(4)
    array([[-1.2247,  0.    ,  1.2247]])
    """
    if type(x) is not np.ndarray and (where := _route(x, weight, bias)) != "numpy":
        if out is not None:
            raise TypeError("out= is supported for NumPy arrays only")
        return _elsewhere(where, "layer_norm", x, normalized_shape, weight, bias, eps)
    return _forward(LAYER, x, None, normalized_shape, weight, bias, eps, out)[0]


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
        The forward weight; None means no affine scale (and no ``grad_weight``).
    normalized_shape : int, tuple of int or None, optional
        As in the forward; None means the last axis, or ``weight.shape`` when given.

    Returns
    -------
    grad_x : ndarray
        Same shape and dtype as ``x``.
    grad_weight : ndarray or None
        Shape ``normalized_shape``, ``x``'s dtype; None when ``weight`` is None.
    grad_bias : ndarray
        ``grad_y`` summed over the rows: it never needs the weight.  Parameter gradients
        are bitwise identical whatever the thread count.
    """
    if not (type(x) is np.ndarray and type(grad_y) is np.ndarray) and (
        where := _route(x, grad_y, mean, rstd, weight)
    ) != "numpy":
        return _elsewhere(where, "layer_norm_backward", grad_y, x, mean, rstd, weight, normalized_shape)
    return _backward(LAYER, grad_y, x, mean, rstd, weight, normalized_shape)


def rms_norm_forward(x, normalized_shape=None, weight=None, eps=None):
    """RMSNorm forward that also returns ``rstd`` for backward.

    ``y = x / sqrt(mean(x**2) + eps) * weight``, exactly as ``torch.nn.functional.rms_norm``.

    Parameters
    ----------
    x : array_like
        As in :func:`layer_norm_forward`.
    normalized_shape : int, tuple of int or None, optional
        Trailing dimensions to normalise over; None means the last axis.
    weight : array_like or None, optional
        Scale of shape ``normalized_shape``; None means 1.
    eps : float or None, optional
        None means torch's default: the machine epsilon of the computation dtype
        (float32's for float16, bfloat16 and float32 data, float64's for float64).

    Returns
    -------
    y : ndarray
        Same shape and dtype as ``x``.
    rstd : ndarray
        Shape ``lead``; ``1 / sqrt(mean(x**2) + eps)``, float64 for float64 data, else float32.
    """
    if type(x) is not np.ndarray and (where := _route(x, weight)) != "numpy":
        return _elsewhere(where, "rms_norm_forward", x, normalized_shape, weight, eps)
    y, _, _, rstd = _forward(RMS, x, None, normalized_shape, weight, None, eps)
    return y, rstd


def rms_norm(x, normalized_shape=None, weight=None, eps=None, out=None):
    """RMSNorm of ``x`` over its trailing ``normalized_shape`` dimensions.

    See :func:`rms_norm_forward`; ``out`` is as in :func:`layer_norm`.

    Returns
    -------
    ndarray
        ``y`` (``out`` when given).
    """
    if type(x) is not np.ndarray and (where := _route(x, weight)) != "numpy":
        if out is not None:
            raise TypeError("out= is supported for NumPy arrays only")
        return _elsewhere(where, "rms_norm", x, normalized_shape, weight, eps)
    return _forward(RMS, x, None, normalized_shape, weight, None, eps, out)[0]


def rms_norm_backward(grad_y, x, rstd, weight=None, normalized_shape=None):
    """Gradients of RMSNorm with respect to its input and weight, in one sweep.

    ``dx = rstd * (w*dy - x_hat * mean(w*dy*x_hat))``, ``dw = sum over rows of dy * x_hat``.

    Parameters
    ----------
    grad_y, x : array_like
        As in :func:`layer_norm_backward`.
    rstd : array_like
        From :func:`rms_norm_forward`.
    weight : array_like or None, optional
        The forward weight; None means no scale (and no ``grad_weight``).
    normalized_shape : int, tuple of int or None, optional
        As in the forward; None means the last axis, or ``weight.shape`` when given.

    Returns
    -------
    grad_x : ndarray
        Same shape and dtype as ``x``.
    grad_weight : ndarray or None
        Shape ``normalized_shape``; None when ``weight`` is None.
    """
    if not (type(x) is np.ndarray and type(grad_y) is np.ndarray) and (
        where := _route(x, grad_y, rstd, weight)
    ) != "numpy":
        return _elsewhere(where, "rms_norm_backward", grad_y, x, rstd, weight, normalized_shape)
    gx, gw, _ = _backward(RMS, grad_y, x, None, rstd, weight, normalized_shape)
    return gx, gw


def add_layer_norm(x, residual, normalized_shape=None, weight=None, bias=None, eps=1e-5):
    """The pre-norm block ``h = x + residual; y = layer_norm(h)`` in one read of both.

    Parameters
    ----------
    x, residual : array_like
        Same shape and dtype; never modified.
    normalized_shape, weight, bias, eps
        As in :func:`layer_norm`.

    Returns
    -------
    y : ndarray
        LayerNorm of ``h``.
    residual_out : ndarray
        ``h = x + residual``, in ``x``'s dtype: the next block's residual.
    """
    if (type(x) is not np.ndarray or type(residual) is not np.ndarray) and (
        where := _route(x, residual, weight, bias)
    ) != "numpy":
        return _elsewhere(where, "add_layer_norm", x, residual, normalized_shape, weight, bias, eps)
    y, h, _, _ = _forward(LAYER, x, _checks.required(residual, "residual"), normalized_shape, weight, bias, eps)
    return y, h


def add_rms_norm(x, residual, normalized_shape=None, weight=None, eps=None):
    """The pre-norm block ``h = x + residual; y = rms_norm(h)`` in one read of both.

    Returns
    -------
    y : ndarray
        RMSNorm of ``h``.
    residual_out : ndarray
        ``h = x + residual``, in ``x``'s dtype.
    """
    if (type(x) is not np.ndarray or type(residual) is not np.ndarray) and (
        where := _route(x, residual, weight)
    ) != "numpy":
        return _elsewhere(where, "add_rms_norm", x, residual, normalized_shape, weight, eps)
    y, h, _, _ = _forward(RMS, x, _checks.required(residual, "residual"), normalized_shape, weight, None, eps)
    return y, h
