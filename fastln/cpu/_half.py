"""Half-precision bits (bfloat16, IEEE float16) widened to float32 and narrowed back, row by row.

NumPy has no bfloat16, and the kernels see both half types as ``uint16`` bits; ``fmt`` says
which (:data:`BFLOAT16` or :data:`FLOAT16`).  The forward widens a row into a float32 buffer
in L1 cache and runs the float32 row code on it; the backward's row code reads the half rows
in place through :func:`get`, widening each element as it loads it; outputs are rounded once,
as they are written (:func:`put`).  Bitwise what upcasting the tensor to float32, running the
float32 kernel and rounding gives, without the copies.

- bfloat16 is the top half of a float32: widen by a shift; narrow with round-to-nearest-even
  on the bits (NaN kept quiet, sign kept).
- float16 uses LLVM's own ``fpext``/``fptrunc`` between ``half`` and ``float`` (IEEE
  round-to-nearest-even, subnormals, infinities and NaN as torch's ``.to()``); with F16C or
  AVX-512 they vectorise into ``vcvtph2ps``/``vcvtps2ph``.  Without those instructions LLVM
  would call a runtime helper the JIT may not link, so :data:`FLOAT16_IN_KERNEL` is False
  there and callers upcast instead.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from fastln.cpu import _jit

BFLOAT16 = 0
FLOAT16 = 1


def _float16_in_kernel() -> bool:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        import llvmlite.binding as llvm

        return "+f16c" in llvm.get_host_cpu_features().flatten()
    return machine in ("aarch64", "arm64")  # half conversions are base instructions there


#: Whether float16 rows can be converted inside the kernels on this CPU.
FLOAT16_IN_KERNEL = _float16_in_kernel()


@intrinsic
def _f16_bits_to_f32(typingctx, bits):
    if bits != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f32_to_f16_bits(typingctx, value):
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(value), codegen


@intrinsic
def _f32_bits(typingctx, value):
    """The bits of a float32, as a uint32."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(value), codegen


@intrinsic
def _bits_f32(typingctx, bits):
    """The float32 whose bits are the uint32 ``bits``."""
    if bits != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(bits), codegen


@_jit.sweep
def half_value(u, fmt):
    """Half bits ``u`` of format ``fmt`` as a float32, exactly (scalars: LLVM inlines it)."""
    if fmt == FLOAT16:
        return _f16_bits_to_f32(u)
    return _bits_f32(np.uint32(np.uint32(u) << np.uint32(16)))  # Numba widens the shift to uint64


def get(row, j, fmt):
    """``row[j]``; from a uint16 row (half bits), the value widened exactly to float32 from
    format ``fmt``: so the backward's passes read half rows in place, with no float32 copy
    of the row and no pass of its own to make one (:func:`put`'s twin)."""
    return half_value(row[j], fmt) if row.dtype == np.uint16 else row[j]


@overload(get, inline="always")
def _get(row, j, fmt):
    if isinstance(row, types.Array) and row.dtype == types.uint16:
        def impl(row, j, fmt):
            return half_value(row[j], fmt)
    else:
        def impl(row, j, fmt):
            return row[j]
    return impl


def compute(row, v):
    """``v`` in the type ``row``'s values are computed in: float32 for half bits, else the
    row's own dtype."""
    return np.float32(v) if row.dtype == np.uint16 else row.dtype.type(v)


@overload(compute, inline="always")
def _compute(row, v):
    if isinstance(row, types.Array) and row.dtype == types.uint16:
        def impl(row, v):
            return np.float32(v)
    else:
        cast = row.dtype

        def impl(row, v):
            return cast(v)
    return impl


@_jit.sweep
def half_bits(v, fmt):
    """float32 ``v`` rounded to nearest even in half format ``fmt``, as uint16 bits.

    Scalars only, so LLVM inlines it at no cost; inlined in Numba's IR instead, its branches
    inside :func:`put`'s inlined store made Numba warn (``NumbaIRAssumptionWarning``)."""
    if fmt == FLOAT16:
        return _f32_to_f16_bits(v)
    b = _f32_bits(v)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):  # NaN: keep sign, stay quiet
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


def put(out, j, v, fmt):
    """``out[j] = v``; into a uint16 row (half bits), ``v`` rounded to format ``fmt``: so
    one sweep writes float rows and half rows alike, and a half row needs no float32
    buffer and no pass of its own to be narrowed."""
    out[j] = half_bits(v, fmt) if out.dtype == np.uint16 else v


@overload(put, inline="always")
def _put(out, j, v, fmt):
    if isinstance(out, types.Array) and out.dtype == types.uint16:
        def impl(out, j, v, fmt):
            out[j] = half_bits(np.float32(v), fmt)
    else:
        def impl(out, j, v, fmt):
            out[j] = v
    return impl


@_jit.sweep
def widen(u16, out, fmt):
    """``out = float32(u16)``: half bits of format ``fmt`` to float32, exactly."""
    if fmt == FLOAT16:
        for j in range(u16.shape[0]):
            out[j] = _f16_bits_to_f32(u16[j])
    else:
        bits = out.view(np.uint32)
        for j in range(u16.shape[0]):
            bits[j] = np.uint32(u16[j]) << np.uint32(16)


@_jit.sweep
def narrow(f32, out, fmt):
    """``out = half(f32)`` in format ``fmt``, rounded to nearest even."""
    for j in range(f32.shape[0]):
        out[j] = half_bits(f32[j], fmt)
