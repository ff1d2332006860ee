"""Argument validation and canonicalisation shared by every front end.

Everything a kernel needs is decided here: the ``normalized_shape`` tuple, the (rows, cols)
split, the compute dtype, float64 affine vectors.  Errors name the argument and what was
expected, and print the values that did not match.  Nothing here modifies its inputs.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numpy as np

#: Data dtypes the kernels run natively; float16 is computed in float32 and cast back.
NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F16 = np.dtype(np.float16)


class ShapeError(ValueError, RuntimeError):
    """A shape that does not fit: a ``ValueError`` for NumPy users, and a ``RuntimeError``
    as torch raises for the same mistake, so the bridge's users catch what they expect."""


class DTypeError(TypeError, NotImplementedError):
    """An unsupported dtype: a ``TypeError`` for NumPy users, and the ``NotImplementedError``
    (a ``RuntimeError``) torch raises for the same mistake."""


class Layout(NamedTuple):
    """How an input splits into rows: ``x.shape == lead_shape + norm_shape``."""

    lead_shape: tuple
    norm_shape: tuple
    rows: int
    cols: int


def is_device_array(obj) -> bool:
    """True for CUDA data: Numba device arrays (real or simulated) and CUDA Array Interface."""
    return type(obj).__module__.startswith("numba.cuda") or hasattr(
        obj, "__cuda_array_interface__"
    )


def as_float_array(x, name: str) -> np.ndarray:
    """Return ``x`` as a NumPy floating array (no copy for ndarrays) or raise.

    Integer, bool, complex, object and string data raise ``TypeError``: LayerNorm of integers
    is not defined by torch either, and silently promoting them would hide bugs.
    """
    if x is None:
        raise TypeError(f"{name} must be a floating-point array, got None")
    if not isinstance(x, np.ndarray):
        if isinstance(x, (str, bytes)):
            raise TypeError(f"{name} must be a floating-point array, got {type(x).__name__}")
        try:
            x = np.asarray(x)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{name} must be a floating-point array: {exc}") from None
    if x.dtype.kind == "f" and not x.dtype.isnative:
        # data read from a file or the network in the other byte order: computed in the
        # machine's order, as NumPy's ufuncs do (the result is in that order too)
        x = x.astype(x.dtype.newbyteorder("="))
    if x.dtype not in NATIVE_DTYPES and x.dtype != _F16:
        raise DTypeError(
            f"{name} must have dtype float16, float32 or float64, got {x.dtype}"
            + (" (cast integers with .astype(np.float32))" if x.dtype.kind in "biu" else "")
        )
    return x


def normalize_shape(normalized_shape, x_shape: tuple) -> tuple:
    """Canonical ``normalized_shape`` tuple, checked against the trailing dims of ``x``."""
    if len(x_shape) == 0:
        raise ShapeError("x must have at least one dimension, got a 0-d array")
    if normalized_shape is None:
        return (x_shape[-1],)
    # Fast paths for the common, well-formed calls (a 2x3 call costs microseconds).
    kind = type(normalized_shape)
    if kind is int and 0 <= normalized_shape == x_shape[-1]:
        return (normalized_shape,)
    if kind is tuple and normalized_shape == tuple(x_shape[len(x_shape) - len(normalized_shape):]):
        if normalized_shape and all(type(d) is int for d in normalized_shape):
            return normalized_shape
    if isinstance(normalized_shape, (str, bytes)) or normalized_shape is True or normalized_shape is False:
        raise TypeError(
            "normalized_shape must be an int, a tuple of ints or None, "
            f"got {normalized_shape!r}"
        )
    try:
        dims = (operator.index(normalized_shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(d) for d in normalized_shape)
            if any(isinstance(d, bool) for d in normalized_shape):
                raise TypeError
        except TypeError:
            raise TypeError(
                "normalized_shape must be an int, a tuple of ints or None, "
                f"got {normalized_shape!r}"
            ) from None
    if len(dims) == 0:
        raise ShapeError("normalized_shape must have at least one dimension, got ()")
    if any(d < 0 for d in dims):
        raise ShapeError(f"normalized_shape must be non-negative, got {dims}")
    if len(dims) > len(x_shape) or tuple(x_shape[len(x_shape) - len(dims):]) != dims:
        raise ShapeError(
            f"normalized_shape={dims} must match the trailing dimensions of x, "
            f"but x has shape {tuple(x_shape)}"
        )
    return dims


_LAYOUTS: dict = {}


def hashable_exactly(normalized_shape) -> bool:
    """``normalized_shape`` is None, an int or a tuple of ints, so it can key a cache: only
    exact ints, since ``4.0 == 4`` and ``True == 1`` hash alike and must still be refused."""
    ns = normalized_shape
    return ns is None or type(ns) is int or (type(ns) is tuple and all(type(d) is int for d in ns))


def layout(x_shape: tuple, normalized_shape) -> Layout:
    """Split ``x_shape`` into leading (row) and normalised (column) parts.

    Memoised for hashable ``normalized_shape`` (a training loop asks for the same few
    layouts millions of times); only valid layouts are stored, so errors are always raised.
    """
    ns = normalized_shape
    cacheable = hashable_exactly(ns)
    if cacheable:
        lay = _LAYOUTS.get((x_shape, ns))
        if lay is not None:
            return lay
    norm = normalize_shape(ns, x_shape)
    lead = tuple(x_shape[: len(x_shape) - len(norm)])
    lay = Layout(lead, norm, math.prod(lead), math.prod(norm))
    if cacheable:
        if len(_LAYOUTS) > 1024:
            _LAYOUTS.clear()
        _LAYOUTS[x_shape, ns] = lay
    return lay


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """Dtype the kernels run in: float16 data is computed in float32."""
    return np.dtype(np.float32) if dtype == _F16 else dtype


def stats_dtype(dtype: np.dtype) -> np.dtype:
    """dtype of ``mean``/``rstd``: float64 for float64 data, float32 otherwise."""
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


#: Length-0 vectors: what a missing weight/bias, or RMSNorm's absent mean, is passed as.
#: Kernels test the length and skip the term, so no buffer sized by the input is kept.
#: Writeable like every array the kernels get (see :func:`kernel_array`); with no elements
#: there is nothing to write.
EMPTY = {np.dtype(d): np.empty(0, d) for d in (np.float16, np.float32, np.float64)}


class _Alias:
    """An ``__array_interface__`` over another array's memory, flagged writeable; it keeps
    that array alive."""

    __slots__ = ("__array_interface__", "_owner")

    def __init__(self, a: np.ndarray):
        self._owner = a
        self.__array_interface__ = dict(a.__array_interface__, data=(a.ctypes.data, False))


def kernel_array(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels are compiled for: a writeable array.

    Numba compiles a kernel once per type signature, and an array's type includes whether
    it is read-only, so every mix of read-only and writeable arguments would be a compile of
    its own (16 s for the parallel forward here).  The kernels never write their inputs, so a
    read-only input (a JAX array, ``np.broadcast_to``, a read-only memory map) is passed as a
    writeable alias of the same memory: no copy, and one compiled kernel for all.
    """
    if a.flags.writeable:
        return a
    return np.asarray(_Alias(a))


#: ``ndarray.flags.num`` bits of a C-contiguous, writeable array (NumPy's
#: NPY_ARRAY_C_CONTIGUOUS and NPY_ARRAY_WRITEABLE): one attribute read instead of two
#: flag objects.
C_WRITEABLE = 0x0001 | 0x0400


def plain(a, dtype: np.dtype, shape: tuple) -> bool:
    """``a`` is an ndarray of exactly this dtype and shape, C-contiguous and writeable: what
    the kernels take as it is."""
    return type(a) is np.ndarray and a.dtype is dtype and a.shape == shape and a.flags.num & C_WRITEABLE == C_WRITEABLE


def param_vector(p, name: str, lay: Layout, dtype: np.dtype) -> np.ndarray:
    """``weight``/``bias`` as a ``dtype`` vector of ``cols`` values; length 0 when ``p`` is None."""
    if p is None:
        return EMPTY[dtype]
    if plain(p, dtype, lay.norm_shape):
        return p.reshape(lay.cols)  # the common case: a view, no copy, no conversion
    if is_device_array(p):
        raise TypeError(f"{name} is a CUDA array but x is on the CPU: put both on one device")
    p = as_float_array(p, name)
    if p.shape != lay.norm_shape:
        raise ShapeError(
            f"{name} must have shape normalized_shape={lay.norm_shape}, got {p.shape}"
        )
    return kernel_array(np.ascontiguousarray(p, dtype=dtype).reshape(lay.cols))


def default_eps(dtype: np.dtype) -> float:
    """torch's ``eps=None`` for RMSNorm: the machine epsilon of the computation dtype
    (float32's for half types and float32, float64's for float64), as ``torch.rms_norm``."""
    return float(np.finfo(np.float64 if dtype == np.float64 else np.float32).eps)


def check_eps(eps, dtype: np.dtype | None = None) -> float:
    """``eps`` as a float: any real number torch accepts.  None resolves to
    :func:`default_eps` when ``dtype`` is given (RMSNorm), else it is an error."""
    if eps is None and dtype is not None:
        return default_eps(dtype)
    if isinstance(eps, (bool, str, bytes, complex, np.complexfloating, np.bool_)) or eps is None:
        raise TypeError(f"eps must be a real number, got {eps!r}")
    try:
        return float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"eps must be a real number, got {eps!r}") from None


def required(a, name: str):
    """``a``, or a TypeError naming the missing argument."""
    if a is None:
        raise TypeError(f"{name} must be a floating-point array, got None")
    return a


def check_out(out, x: np.ndarray, others) -> None:
    """``out=``: a writeable C-contiguous ndarray of ``x``'s shape and dtype, disjoint from
    the other inputs; it may be ``x`` itself (in place), but not a partial overlap of it."""
    if type(out) is not np.ndarray and not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != x.shape or out.dtype != x.dtype:
        raise ValueError(
            f"out must have the shape and dtype of x {x.shape} {x.dtype}, got {out.shape} {out.dtype}"
        )
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if np.may_share_memory(out, x):
        same = out.ctypes.data == x.ctypes.data and out.strides == x.strides
        if not same:
            raise ValueError("out overlaps x without being x: pass x itself or a separate buffer")
    for o in others:
        if isinstance(o, np.ndarray) and np.may_share_memory(out, o):
            raise ValueError("out must not share memory with weight, bias or residual")


def as_rows(x: np.ndarray, lay: Layout, dtype: np.dtype) -> np.ndarray:
    """C-contiguous ``(rows, cols)`` view of ``x`` in ``dtype`` (:func:`kernel_array`);
    copies only when it must."""
    return kernel_array(np.ascontiguousarray(x, dtype=dtype).reshape(lay.rows, lay.cols))


def check_stat(s, name: str, lay: Layout, x_dtype: np.dtype) -> np.ndarray:
    """A ``mean``/``rstd`` argument of backward as a ``(rows,)`` array.

    Accepts the leading shape (fastln's) or the leading shape followed by ones (torch's
    ``native_layer_norm``), in any floating dtype.
    """
    want = stats_dtype(x_dtype)
    if plain(s, want, lay.lead_shape):
        return s.reshape(lay.rows)  # fastln's own stats, passed back: a view
    s = as_float_array(s, name)
    keepdim = lay.lead_shape + (1,) * len(lay.norm_shape)
    if s.shape != lay.lead_shape and s.shape != keepdim:
        raise ShapeError(
            f"{name} must have shape {lay.lead_shape} (the leading dims of x), got {s.shape}"
        )
    return kernel_array(np.ascontiguousarray(s, dtype=want).reshape(lay.rows))
