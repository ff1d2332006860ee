"""Compile policy for the CPU kernels: the decorators every kernel file uses.

Fast-math flags are per function, and they survive LLVM's inlining but not Numba's IR
inlining (``inline="always"`` lowers the callee with the caller's flags).  So reductions
are separate functions with :data:`~fastln._config.REDUCE_FASTMATH`, left to LLVM to inline,
and element-wise sweeps are IR-inlined into kernels that carry
:data:`~fastln._config.SWEEP_FASTMATH`.
"""

from fastln._cache import jit
from fastln._config import REDUCE_FASTMATH, SWEEP_FASTMATH

_base = dict(nogil=True, error_model="numpy")

#: Kernels and sweeps: vectorised, never reassociated.
sweep = jit(fastmath=SWEEP_FASTMATH, **_base)
#: Reductions (row sums): reassociation lets LLVM split them across SIMD lanes.
reduce = jit(fastmath=REDUCE_FASTMATH, **_base)
#: Row helpers inlined in Numba's IR: a call per row that passes array views costs ~75 ns
#: of reference counting, which dominates rows of a few dozen elements.
inline = jit(fastmath=SWEEP_FASTMATH, inline="always", **_base)
#: Parallel kernels (``prange``).
parallel = jit(fastmath=SWEEP_FASTMATH, parallel=True, **_base)


def twins(fn):
    """``(parallel, serial)`` kernels compiled from one body whose loops use ``prange``.

    ``prange`` is ``range`` in a function compiled without ``parallel=True``.  The twins get
    their own qualnames so that the kernel cache, which names entries by qualname and line,
    keeps them apart.
    """
    import types

    def clone(suffix):
        f = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
        f.__qualname__ = fn.__qualname__ + suffix
        f.__module__ = fn.__module__
        f.__doc__ = fn.__doc__
        return f

    return parallel(clone("_parallel")), sweep(clone("_serial"))
