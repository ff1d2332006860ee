"""Arrays that own nothing: raw pointers as arrays, and NumPy arrays seen without their owner.

Every view a kernel takes of an array it was given (``x[i]``, ``w[lo:hi]``) shares the
array's memory-info record, and Numba counts its references with atomic increments and
decrements: a handful per row.  On a serial kernel over short rows that is a third of the
time (``perf`` on ``backward_serial`` at 640x20 float32: 35% in ``NRT_incref``/``NRT_decref``).
Arrays built from a raw pointer (:func:`numba.carray`) have no record, so their views count
nothing.  Numba's parallel kernels already run their loops on such arrays; the serial
kernels get them from :func:`unowned`.
"""

from __future__ import annotations

from numba import carray, types
from numba.extending import intrinsic, overload


@intrinsic
def pointer(typingctx, address, witness):
    """``address`` (an integer) as a pointer to ``witness``'s dtype."""
    if not isinstance(address, types.Integer) or not isinstance(witness, types.Array):
        return None
    ptr = types.CPointer(witness.dtype)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptr))

    return ptr(address, witness), codegen


def unowned(a):
    """A C-contiguous array ``a`` as a view of the same memory without an owner (anything
    else unchanged).  The caller keeps ``a`` alive while the view is in use."""
    return a


@overload(unowned, inline="always")
def _unowned(a):
    if isinstance(a, types.Array) and a.layout == "C":
        return lambda a: carray(pointer(a.ctypes.data, a), a.shape)
    return lambda a: a
