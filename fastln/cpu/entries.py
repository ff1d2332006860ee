"""C-callable entries to the by-address kernels: what compiled callers (the torch bridge's
native glue, ``fastln/torch/_native.cpp``) call through a function pointer.

A call through Numba's dispatcher costs about a microsecond on the bridge's 18 arguments
(typing each one), more than the kernel on a small input.  These entries are Numba
``cfunc``\\ s with fixed C signatures: every argument a 64-bit integer (buffer addresses,
sizes, and flags as 0/1, which sidesteps how a C ``bool`` meets Numba's ``i1``) or a
double.  They do nothing but call :mod:`.by_address`, so results are bitwise those of the
NumPy API and the Python bridge.

Entries are compiled one at a time, on first request (:func:`address`), and kept in the
kernel cache like every kernel.  They are serial; the caller splits rows (forward) or the
backward's fixed chunks (:func:`fastln._api.chunking`) over threads of its own, and
guarantees what :mod:`.by_address` asks (C-contiguous buffers, alive, of the entry's dtype).
"""

from __future__ import annotations

import types as _pytypes

import numpy as np
from numba import types

from fastln import _cache
from fastln.cpu import by_address

_i64 = types.int64
#: ``(x, residual, weight, bias, y, residual_out, mean, rstd)`` addresses, ``rows, cols,
#: has_residual, n_weight, n_bias, n_mean``, ``eps``, ``centered``.
FORWARD_SIG = types.void(*([_i64] * 8), _i64, _i64, _i64, _i64, _i64, _i64, types.float64, _i64)
#: ``(grad_y, x, mean, rstd, weight, grad_residual, grad_x, weight_partials, bias_partials)``
#: addresses, ``rows, cols, n_mean, n_weight, has_grad_residual, n_params, n_chunks,
#: rows_per_chunk, first_chunk, stop_chunk, centered``.
CHUNKS_SIG = types.void(*([_i64] * 9), *([_i64] * 11))
#: ``(weight_partials, bias_partials, grad_weight, grad_bias)`` addresses, ``n_chunks, n_params``.
REDUCE_SIG = types.void(*([_i64] * 6))


def _forward(x, res, w, b, y, h, mean, rstd, rows, cols, has_res, n_w, n_b, n_mean, eps, centered):
    d = np.empty(0, _DTYPE)  # the witness of the buffers' dtype (statistics: the same)
    by_address.forward_serial(d, d, x, res, w, b, y, h, mean, rstd, rows, cols, has_res != 0,
                              n_w, n_b, n_mean, eps, centered != 0)


def _backward_chunks(gy, x, mean, rstd, w, gres, gx, dwp, dbp, rows, cols, n_mean, n_w, has_gres, n_params,
                     n_chunks, rows_per_chunk, first, stop, centered):
    d = np.empty(0, _DTYPE)
    by_address.backward_chunks(d, d, gy, x, mean, rstd, w, gres, gx, dwp, dbp, rows, cols, n_mean, n_w,
                               has_gres != 0, n_params, n_chunks, rows_per_chunk, first, stop, centered != 0)


def _forward_half(x, res, w, b, y, h, mean, rstd, rows, cols, has_res, n_w, n_b, n_mean, eps, centered, fmt):
    by_address.forward_half_serial(x, res, w, b, y, h, mean, rstd, rows, cols, has_res != 0,
                                   n_w, n_b, n_mean, eps, centered != 0, fmt)


def _backward_half_chunks(gy, x, mean, rstd, w, gres, gx, dwp, dbp, rows, cols, n_mean, n_w, has_gres, n_params,
                          n_chunks, rows_per_chunk, first, stop, centered, fmt):
    by_address.backward_half_chunks(gy, x, mean, rstd, w, gres, gx, dwp, dbp, rows, cols, n_mean, n_w,
                                    has_gres != 0, n_params, n_chunks, rows_per_chunk, first, stop, centered != 0, fmt)


#: ``FORWARD_SIG`` and the half format (:mod:`._half`): half bits in and out, float32
#: weight, bias and statistics.
FORWARD_HALF_SIG = types.void(*([_i64] * 8), _i64, _i64, _i64, _i64, _i64, _i64, types.float64, _i64, _i64)
#: ``CHUNKS_SIG`` and the half format: half bits, float32 statistics and weight.
CHUNKS_HALF_SIG = types.void(*([_i64] * 9), *([_i64] * 11), _i64)


def _reduce(dwp, dbp, dw, db, n_chunks, n_params):
    by_address.reduce(np.empty(0, _DTYPE), dwp, dbp, dw, db, n_chunks, n_params)


_DTYPE = np.float32  # rebound per entry by _specialise; here so that linters see the name

#: The entries in the order the native glue indexes them: ``3 * dtype + kind``, dtype 0 for
#: float32 and 1 for float64; kind 0 forward rows, 1 backward chunks, 2 the reduction of
#: the backward's parameter-gradient partials.  All serial: the glue runs them on torch's
#: thread pool (rows or chunks per thread), which is what keeps Numba's and torch's worker
#: threads from fighting over the cores.
DTYPES = (np.float32, np.float64)
KINDS = (
    (_forward, FORWARD_SIG),
    (_backward_chunks, CHUNKS_SIG),
    (_reduce, REDUCE_SIG),
)
#: The entries after the per-dtype ones: the half-precision forward rows and backward chunks
#: (either format), which the Python bridge's half path hands to the glue
#: (``_native.forward_half``, ``_native.backward_half``) so that its parallel work too runs
#: on torch's pool.  (The partials are reduced by the float32 reduction entry.)
FORWARD_HALF = len(KINDS) * len(DTYPES)
BACKWARD_HALF_CHUNKS = FORWARD_HALF + 1
_HALF = {FORWARD_HALF: (_forward_half, FORWARD_HALF_SIG), BACKWARD_HALF_CHUNKS: (_backward_half_chunks, CHUNKS_HALF_SIG)}
_compiled: dict[int, object] = {}


def _specialise(fn, dtype):
    """``fn`` with ``_DTYPE`` bound to ``dtype`` and a qualname of its own (the kernel cache
    names entries by qualname)."""
    name = np.dtype(dtype).name
    g = dict(fn.__globals__)
    g["_DTYPE"] = dtype
    f = _pytypes.FunctionType(fn.__code__, g, f"{fn.__name__}_{name}", fn.__defaults__, fn.__closure__)
    f.__qualname__ = f"{fn.__qualname__}_{name}"
    f.__module__ = fn.__module__
    return f


def name(index: int) -> str:
    """``"forward float32"``... for entry ``index``."""
    if index in _HALF:
        return _HALF[index][0].__name__.lstrip("_")
    fn, _ = KINDS[index % len(KINDS)]
    return f"{fn.__name__.lstrip('_')} {np.dtype(DTYPES[index // len(KINDS)]).name}"


def entry(index: int):
    """The compiled ``cfunc`` of entry ``index`` (compiled, or loaded from the cache, once)."""
    got = _compiled.get(index)
    if got is None:
        if index in _HALF:
            fn, sig = _HALF[index]
            got = _compiled[index] = _cache.cfunc(_specialise(fn, np.uint16), sig)
            return got
        if not 0 <= index < len(KINDS) * len(DTYPES):
            raise IndexError(f"fastln: no C entry {index}")
        fn, sig = KINDS[index % len(KINDS)]
        got = _compiled[index] = _cache.cfunc(_specialise(fn, DTYPES[index // len(KINDS)]), sig)
    return got


def address(index: int) -> int:
    """Address of entry ``index``'s C function."""
    return entry(index).address
