"""Tensors in, tensors out: torch's checks and the CPU/CUDA/meta glue around the kernels.

Every path of the bridge (eager Functions, custom ops, their fake kernels, TorchScript)
calls :func:`check` and then :func:`forward_impl` / :func:`backward_impl`, so they agree on
shapes, dtypes, strides and errors.  Checks follow torch's conventions: shape problems are
``RuntimeError`` (fastln's ``ShapeError`` is also a ``ValueError``) with torch's wording,
unsupported dtypes ``NotImplementedError`` (also a ``TypeError``), mixed parameter dtypes
and devices ``RuntimeError``, wrong argument types ``TypeError``.

Outputs are always contiguous (the fake kernels say so too).  On the CPU they are allocated
by torch, large ones advised onto huge pages (:func:`empty`).  Contiguous float32/float64
tensors on the row kernels are handed to the kernels by address (``Tensor.data_ptr()``,
:mod:`fastln.cpu.by_address`): a NumPy view costs about a microsecond a tensor, more than
the kernel on a small input.  Everything else (half types, strided inputs, very wide rows)
is seen as zero-copy NumPy views (:func:`view`).
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np
import torch
from torch import Tensor

from fastln import _api, _checks
from fastln.cpu import _half, by_address
from fastln.torch import _fast

HALF = (torch.float16, torch.bfloat16)
#: Half types the CPU kernels convert row by row themselves, with their bit format.
_HALF_IN_KERNEL = {torch.bfloat16: _half.BFLOAT16}
if _half.FLOAT16_IN_KERNEL:
    _HALF_IN_KERNEL[torch.float16] = _half.FLOAT16
FLOATS = (torch.float32, torch.float64) + HALF
_NUMPY_OF = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------
def shape_tuple(normalized_shape, fn: str) -> tuple:
    """``normalized_shape`` as a tuple of ints: an int, a sequence of ints or a torch.Size
    (what ``nn.LayerNorm`` takes); anything else is torch's ``TypeError``."""
    ns = normalized_shape
    if type(ns) is tuple and all(type(d) is int for d in ns):
        return ns
    if isinstance(ns, (int, torch.SymInt)) and not isinstance(ns, bool):
        return (ns,)
    bad = ns is None or isinstance(ns, (bool, float, str, bytes, Tensor)) or not hasattr(ns, "__iter__")
    if not bad:
        dims = tuple(ns)
        for k, d in enumerate(dims):
            if isinstance(d, bool) or not isinstance(d, (int, torch.SymInt, np.integer)):
                raise TypeError(
                    f"{fn}(): argument 'normalized_shape' must be tuple of ints, but found "
                    f"element of type {type(d).__name__} at pos {k}"
                )
        return tuple(int(d) if isinstance(d, np.integer) else d for d in dims)
    raise TypeError(f"{fn}(): argument 'normalized_shape' must be tuple of ints, not {type(ns).__name__}")


def eps_value(eps, fn: str, dtype: torch.dtype | None = None) -> float:
    """``eps`` as torch's float argument: reals, bools and 0-d tensors; None only for RMSNorm
    (``dtype`` given), where it means torch's default, ``finfo(compute dtype).eps``."""
    if eps is None and dtype is not None:
        return float(torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps)
    if isinstance(eps, float):
        return eps
    if isinstance(eps, Tensor) and eps.numel() == 1 and not eps.is_complex():
        return float(eps)
    if isinstance(eps, (int, np.floating, np.integer, bool)) and not isinstance(eps, np.complexfloating):
        return float(eps)
    raise TypeError(f"{fn}(): argument 'eps' must be float, not {type(eps).__name__}")


def _param_dtype_ok(x_dtype, p_dtype, centered: bool) -> bool:
    if p_dtype == x_dtype:
        return True
    if not centered:  # torch's rms_norm casts the weight: any floating dtype goes
        return p_dtype.is_floating_point
    return x_dtype in HALF and p_dtype == torch.float32  # LayerNorm's mixed-precision rule


def check(x, normalized_shape: tuple, weight, bias, residual, centered: bool, fn: str):
    """Validate one call; returns ``(norm_shape, rows, cols)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{fn}(): argument 'input' must be Tensor, not {type(x).__name__}")
    if x.dtype not in FLOATS:
        raise _checks.DTypeError(
            f"{fn}: input must be a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}"
        )
    norm = normalized_shape
    if len(norm) == 0:
        raise _checks.ShapeError(
            "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least "
            f"one element, but got normalized_shape = {list(norm)}"
        )
    shape = tuple(x.shape)
    if len(norm) > len(shape) or shape[len(shape) - len(norm):] != tuple(norm):
        raise _checks.ShapeError(
            f"Given normalized_shape={list(norm)}, expected input with shape "
            f"[*, {', '.join(str(d) for d in norm)}], but got input of size{list(shape)}"
        )
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{fn}(): argument '{name}' must be Tensor, not {type(p).__name__}")
        _same_device(x, name, p)
        if tuple(p.shape) != tuple(norm):
            raise _checks.ShapeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(p.shape)} and normalized_shape = {list(norm)}"
            )
        if not _param_dtype_ok(x.dtype, p.dtype, centered):
            raise RuntimeError(
                f"mixed dtype (CPU): {fn} got input of dtype {x.dtype} and {name} of dtype "
                f"{p.dtype}; expect parameters to have the input's dtype (or float32 for "
                "float16/bfloat16 input)"
            )
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"{fn}(): argument 'residual' must be Tensor, not {type(residual).__name__}")
        _same_device(x, "residual", residual)
        if residual.shape != x.shape:
            raise _checks.ShapeError(
                f"{fn}: residual must have the shape of input {list(x.shape)}, got {list(residual.shape)}"
            )
        if residual.dtype not in FLOATS:
            raise _checks.DTypeError(f"{fn}: residual must be a floating-point tensor, got {residual.dtype}")
    return (norm, *rows_cols(shape, norm))


def rows_cols(shape, norm) -> tuple[int, int]:
    """``(rows, cols)`` of an input of ``shape`` normalised over its trailing ``norm`` dims."""
    return math.prod(shape[: len(shape) - len(norm)]), math.prod(norm)


def _same_device(x: Tensor, name: str, t: Tensor) -> None:
    if t.device != x.device:
        raise RuntimeError(
            f"Expected all tensors to be on the same device, but input is on {x.device} "
            f"and {name} is on {t.device}"
        )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in HALF else dtype


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------
# Memory and zero-copy views
# ---------------------------------------------------------------------------------------
def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _load_madvise()
_MADV_HUGEPAGE = 14
_HUGE = 2 << 20


def empty(shape, dtype) -> Tensor:
    """``torch.empty`` on the CPU, with large buffers backed by transparent huge pages.

    torch's CPU allocator maps fresh 4 KiB pages for every large tensor, and the kernel's
    first touch then takes one page fault per 4 KiB: 24,577 faults (~25 ms) for a 32768x768
    float32 output, 2.5x the kernel itself.  NumPy madvises its own buffers of 4 MiB and more;
    fastln advises the 2 MiB-aligned stretches of the outputs of 2 MiB and more it asks torch
    for (advice only: the memory stays torch's), the size glibc hands back to the system often
    enough to fault again every call (see ``_native.cpp``'s ``empty``).
    """
    t = torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _MADVISE is not None and nbytes >= _HUGE:  # the 2 MiB-aligned stretches inside, if any
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        stop = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if stop > start:
            _MADVISE(start, stop - start, _MADV_HUGEPAGE)
    return t


def view(t: Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a contiguous CPU tensor (same data pointer).

    ``Tensor.numpy()`` rather than ``np.from_dlpack``: both share memory, but torch's
    Python ``__dlpack__`` costs 2.4-2.9 us a tensor against 0.7-1.1 us.
    """
    return (t.detach() if t.requires_grad else t).numpy()


def rows_view(t: Tensor, rows: int, cols: int) -> np.ndarray:
    return view(t).reshape(rows, cols)


def bits(t: Tensor, rows: int, cols: int) -> np.ndarray:
    """uint16 (rows, cols) view of a contiguous half-precision tensor's bits (NumPy has no
    bfloat16, and the kernels take float16 as bits too)."""
    return view(t.view(torch.int16)).view(np.uint16).reshape(rows, cols)


def as_(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, contiguous; no call at all when it already is (each costs ~1 us)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def param(p: Tensor | None, cols: int, dtype: torch.dtype) -> np.ndarray:
    """weight/bias as a (cols,) NumPy vector in ``dtype``; length 0 when absent."""
    if p is None:
        return _checks.EMPTY[_NUMPY_OF[dtype]]
    return view(as_(p, dtype)).reshape(cols)


def _no_rows(dtype: torch.dtype) -> np.ndarray:
    return _api._no_rows(_NUMPY_OF[dtype])


# ---------------------------------------------------------------------------------------
# Forward and backward on tensors
# ---------------------------------------------------------------------------------------
def empty_outputs(x: Tensor, norm: tuple, residual, centered: bool):
    """Outputs of the right shape, dtype and (contiguous) strides, uninitialised: what the
    fake kernel and meta tensors get."""
    lead = tuple(x.shape[: x.dim() - len(norm)])
    stat = stats_dtype(x.dtype)
    return (
        x.new_empty(x.shape),
        x.new_empty(x.shape) if residual is not None else x.new_empty((0,)),
        x.new_empty(lead if centered else (0,), dtype=stat),
        x.new_empty(lead, dtype=stat),
    )


def _unsupported_device(x: Tensor):
    raise RuntimeError(
        f"fastln.torch: tensors on device '{x.device.type}' are not supported (cpu, cuda and meta are)"
    )


# ---------------------------------------------------------------------------------------
# The common case by address: CPU, float32/float64, contiguous, row kernels
# ---------------------------------------------------------------------------------------
#: Length-0 arrays whose dtypes tell the address kernels what the buffers hold:
#: (data, statistics) per torch dtype.
_WITNESS = {
    torch.float32: (np.empty(0, np.float32), np.empty(0, np.float32)),
    torch.float64: (np.empty(0, np.float64), np.empty(0, np.float64)),
}


def _direct(x: Tensor, *others) -> bool:
    """True when the address kernels can read every tensor as it is: CPU, float32/64,
    contiguous, others (absent or) of x's dtype."""
    dt = x.dtype
    if dt not in _WITNESS or not x.is_cpu or not x.is_contiguous():
        return False
    for t in others:
        if t is not None and (t.dtype != dt or not t.is_contiguous()):
            return False
    return True


def _out_like(x: Tensor, nbytes: int) -> Tensor:
    # torch.empty_like is the cheapest allocation (0.9 us); large outputs get huge pages.
    return empty(x.shape, x.dtype) if nbytes >= _HUGE else torch.empty_like(x)


def _forward_direct(x, residual, norm, rows, cols, weight, bias, eps, centered, stats):
    data, stat = _WITNESS[x.dtype]
    nbytes = rows * cols * x.element_size()
    y = _out_like(x, nbytes)
    if residual is not None:
        h = _out_like(x, nbytes)
        res_at, h_at = residual.data_ptr(), h.data_ptr()
    else:
        h = x.new_empty((0,)) if stats == "op" else None  # a custom op must return tensors
        res_at = h_at = 0
    if stats:
        lead = tuple(x.shape[: x.dim() - len(norm)])
        sdt = stats_dtype(x.dtype)
        mean = torch.empty(lead if centered else (0,), dtype=sdt)
        rstd = torch.empty(lead, dtype=sdt)
        mean_at, rstd_at = mean.data_ptr(), rstd.data_ptr()
    else:  # nobody will read them: the kernel keeps them in scratch of its own
        mean = rstd = None
        mean_at = rstd_at = 0
    _api._launch(
        by_address.forward_serial, by_address.forward_parallel, rows == 1, rows, rows * cols,
        data, stat, x.data_ptr(), res_at,
        0 if weight is None else weight.data_ptr(), 0 if bias is None else bias.data_ptr(),
        y.data_ptr(), h_at, mean_at, rstd_at, rows, cols, residual is not None,
        0 if weight is None else cols, 0 if bias is None else cols, rows if centered else 0,
        eps, centered,
    )
    return y, h, mean, rstd


def forward_impl(x, residual, norm, rows, cols, weight, bias, eps: float, centered: bool, stats="op"):
    """``(y, residual_out, mean, rstd)``: residual_out is empty without a residual, mean is
    empty for RMSNorm.  All fresh, contiguous tensors.  ``stats="eager"`` may give None for
    an absent residual_out (the custom op, ``"op"``, may not); ``stats=False`` (nothing
    will need a gradient) also gives None for mean and rstd."""
    if rows and _direct(x, residual, weight, bias) and not _api.use_column_kernels(rows, cols):
        return _forward_direct(x, residual, norm, rows, cols, weight, bias, eps, centered, stats)
    dev = x.device.type
    if dev != "cpu":
        if dev == "meta":
            return empty_outputs(x, norm, residual, centered)
        if dev == "cuda":
            from fastln.torch import _cuda_glue

            return _cuda_glue.forward(x, residual, norm, rows, cols, weight, bias, eps, centered)
        _unsupported_device(x)
    lead = tuple(x.shape[: x.dim() - len(norm)])
    stat = stats_dtype(x.dtype)
    mean = torch.empty(lead if centered else (0,), dtype=stat)
    rstd = torch.empty(lead, dtype=stat)
    fmt = _HALF_IN_KERNEL.get(x.dtype)
    if (
        fmt is not None
        and (residual is None or residual.dtype == x.dtype)
        and not _api.use_column_kernels(rows, cols)
    ):
        # bfloat16/float16 converted row by row inside the kernel: no float32 copy of the tensor.
        xc = as_(x, x.dtype)
        res = None if residual is None else as_(residual, x.dtype)
        y = empty(xc.shape, x.dtype)
        h = x.new_empty((0,)) if res is None else empty(xc.shape, x.dtype)
        if _fast.forward_half is not None:  # the compiled glue: parallel work on torch's pool
            w32 = None if weight is None else as_(weight, torch.float32)
            b32 = None if bias is None else as_(bias, torch.float32)
            _fast.forward_half(
                xc.data_ptr(), 0 if res is None else res.data_ptr(), 0 if w32 is None else w32.data_ptr(),
                0 if b32 is None else b32.data_ptr(), y.data_ptr(), 0 if res is None else h.data_ptr(),
                mean.data_ptr() if centered else 0, rstd.data_ptr(), rows, cols, res is not None,
                0 if w32 is None else cols, 0 if b32 is None else cols, centered, float(eps), fmt,
            )
            return y, h, mean, rstd
        if res is None:
            ru = hu = np.empty((0, 0), np.uint16)
        else:
            ru, hu = bits(res, rows, cols), bits(h, rows, cols)
        _api.run_forward_half(
            bits(xc, rows, cols), ru, param(weight, cols, torch.float32), param(bias, cols, torch.float32),
            eps, centered, bits(y, rows, cols), hu, view(mean).reshape(-1), view(rstd).reshape(rows), fmt,
        )
        return y, h, mean, rstd
    cdt = compute_dtype(x.dtype)
    xc = as_(x, cdt)  # no copy for contiguous float32/64
    y = empty(xc.shape, cdt)
    if residual is not None:
        h = empty(xc.shape, cdt)
        res2, h2 = rows_view(as_(residual, cdt), rows, cols), rows_view(h, rows, cols)
    else:
        h = x.new_empty((0,))
        res2 = h2 = _no_rows(cdt)
    _api.run_forward(
        rows_view(xc, rows, cols), res2, param(weight, cols, cdt), param(bias, cols, cdt), eps, centered,
        rows_view(y, rows, cols), h2, view(mean).reshape(-1), view(rstd).reshape(rows),
    )
    if cdt != x.dtype:
        y = y.to(x.dtype)
        if residual is not None:
            h = h.to(x.dtype)
    return y, h, mean, rstd


def _backward_direct(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    data, stat = _WITNESS[h.dtype]
    gy = as_(grad_y, h.dtype)  # gradients arrive expanded or strided at times
    gres = None if grad_res is None else as_(grad_res, h.dtype)
    gx = _out_like(h, rows * cols * h.element_size())
    dw, db = _param_outputs(cols, need_params, h.dtype)
    n = dw.shape[0]
    n_chunks, rows_per_chunk = _api.chunking(rows, cols)
    _api._launch(
        by_address.backward_serial, by_address.backward_parallel, _api.serial_backward(n_chunks, rows, cols),
        rows, rows * cols,
        data, stat, gy.data_ptr(), h.data_ptr(), mean.data_ptr() if centered else 0, rstd.data_ptr(),
        0 if weight is None else weight.data_ptr(), 0 if gres is None else gres.data_ptr(),
        gx.data_ptr(), dw.data_ptr(), db.data_ptr(), rows, cols, rows if centered else 0,
        0 if weight is None else cols, gres is not None, n, n_chunks, rows_per_chunk, centered,
    )
    return gx, dw, db


def _backward_half(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    """bfloat16/float16 on the row kernels: converted row by row in the kernel, no float32 copies."""
    hc = as_(h, h.dtype)
    gy = as_(grad_y, h.dtype)
    gx = empty(hc.shape, h.dtype)
    dw, db = _param_outputs(cols, need_params, torch.float32)
    if _fast.backward_half is not None and rows > 0:  # the compiled glue: chunks on torch's pool
        m32, r32, w32 = (None if t is None else as_(t, torch.float32) for t in (mean if centered else None, rstd, weight))
        gres = None if grad_res is None else as_(grad_res, h.dtype)
        _fast.backward_half(
            gy.data_ptr(), hc.data_ptr(), 0 if m32 is None else m32.data_ptr(), r32.data_ptr(),
            0 if w32 is None else w32.data_ptr(), 0 if gres is None else gres.data_ptr(), gx.data_ptr(),
            dw.data_ptr(), db.data_ptr(), rows, cols, 0 if w32 is None else cols, gres is not None,
            dw.shape[0], centered, _HALF_IN_KERNEL[h.dtype],
        )
        return gx, dw, db
    _api.run_backward_half(
        bits(gy, rows, cols), bits(hc, rows, cols),
        view(as_(mean, torch.float32)).reshape(-1), view(as_(rstd, torch.float32)).reshape(rows),
        param(weight, cols, torch.float32), centered,
        bits(as_(grad_res, h.dtype), rows, cols) if grad_res is not None else np.empty((0, 0), np.uint16),
        bits(gx, rows, cols), view(dw), view(db), _HALF_IN_KERNEL[h.dtype],
    )
    return gx, dw, db


def backward_impl(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    """``(grad_h, grad_weight, grad_bias)``: ``grad_h`` in ``h``'s dtype, the parameter
    gradients in the compute dtype.  ``grad_h`` includes ``grad_res`` (the gradient of
    residual_out) when given.  Parameter gradients are empty unless ``need_params``;
    ``grad_bias`` never needs the weight."""
    gx, dw, db = _backward_any(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params)
    if need_params:
        dw, db = dw.reshape(norm), db.reshape(norm)
    return (gx if gx.dtype == h.dtype else gx.to(h.dtype)), dw, db


def _param_outputs(cols: int, need_params: bool, dtype: torch.dtype):
    """Flat grad_weight/grad_bias buffers, length 0 when not needed.  Two allocations: a
    custom op's outputs may not alias."""
    n = cols if need_params else 0
    return torch.empty((n,), dtype=dtype), torch.empty((n,), dtype=dtype)


def _backward_any(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    if (
        rows
        and _direct(h, weight)
        and mean.dtype == rstd.dtype == stats_dtype(h.dtype)
        and mean.is_contiguous()
        and rstd.is_contiguous()
        and not _api.use_column_kernels(rows, cols, backward=True)
    ):
        return _backward_direct(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params)
    if (
        rows
        and h.dtype in _HALF_IN_KERNEL
        and h.is_cpu
        and (grad_res is None or grad_res.dtype == h.dtype)
        and not _api.use_column_kernels(rows, cols, backward=True)
    ):
        return _backward_half(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params)
    dev = h.device.type
    cdt = compute_dtype(h.dtype)
    if dev != "cpu":
        if dev == "meta":
            n = cols if need_params else 0
            return h.new_empty(h.shape, dtype=cdt), h.new_empty(norm if n else (0,), dtype=cdt), h.new_empty(norm if n else (0,), dtype=cdt)
        if dev == "cuda":
            from fastln.torch import _cuda_glue

            return _cuda_glue.backward(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params)
        _unsupported_device(h)
    hc = as_(h, cdt)
    gyc = as_(grad_y, cdt)
    gx = empty(hc.shape, cdt)
    dw, db = _param_outputs(cols, need_params, cdt)
    _api.run_backward(
        rows_view(gyc, rows, cols), rows_view(hc, rows, cols),
        view(as_(mean, stats_dtype(h.dtype))).reshape(-1), view(as_(rstd, stats_dtype(h.dtype))).reshape(rows),
        param(weight, cols, cdt), centered,
        rows_view(as_(grad_res, cdt), rows, cols) if grad_res is not None else _no_rows(cdt),
        rows_view(gx, rows, cols), view(dw), view(db),
    )
    return gx, dw, db
