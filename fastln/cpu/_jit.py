"""Compile policy for the CPU kernels: the decorators every kernel file uses.

Fast-math flags are per function, and they survive LLVM's inlining but not Numba's IR
inlining (``inline="always"`` lowers the callee with the caller's flags).  So reductions
are separate functions with :data:`~fastln._config.REDUCE_FASTMATH`, left to LLVM to inline,
and element-wise sweeps are IR-inlined into kernels that carry
:data:`~fastln._config.SWEEP_FASTMATH`.
"""

import warnings

from numba.core.errors import NumbaPerformanceWarning

from fastln._cache import jit
from fastln._config import REDUCE_FASTMATH, SWEEP_FASTMATH
from fastln.cpu._unowned import unowned

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

#: Numba's parallel pipeline with every parallel transformation turned off: no ``prange``,
#: no array expression or reduction becomes a threaded loop, so the code stays serial.
_NO_PARFORS = dict(comprehension=False, prange=False, setitem=False, reduction=False, numpy=False,
                   stencil=False, fusion=False, inplace_binop=False)
#: The serial forward row kernel.  Its loops compiled by the parallel pipeline (with nothing
#: made parallel, :data:`_NO_PARFORS`) run 1.2-1.6x faster than through the plain pipeline
#: (float32: 640x20 41.6 -> 25.7 us, 128x768 23.0 -> 18.7 us, 64x512 8.6 -> 7.1 us; the
#: same bits); the backward's run 1.1x faster on narrow rows but 1.1-1.2x slower elsewhere
#: and 2 us slower on tiny inputs, so they keep the plain pipeline.  (Both variants compiled
#: in one process and timed alternately with ``timeit``.)
serial_fast = jit(fastmath=SWEEP_FASTMATH, parallel=_NO_PARFORS, **_base)

# The parallel pipeline warns when it made nothing parallel: that is the point here.
warnings.filterwarnings(
    "ignore", message=r"(?s)\s*The keyword argument 'parallel=True' was specified.*fastln[/\\]cpu[/\\]",
    category=NumbaPerformanceWarning,
)


def twins(fn, serial=None, serial_globals=None):
    """``(parallel, serial)`` kernels compiled from one body whose loops use ``prange``.

    The serial twin sees ``prange`` as ``range``, and the names in ``serial_globals`` bound to
    those values (a helper of its own), and is compiled by ``serial`` (default
    :data:`sweep`).  It is entered through :func:`_unowned_entry`: its loops run on views
    without reference counts, as the parallel twin's do.  The twins get their own qualnames
    so that the kernel cache, which names entries by qualname and line, keeps them apart.
    """
    import types

    def clone(suffix, globals_=fn.__globals__):
        f = types.FunctionType(fn.__code__, globals_, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
        f.__qualname__ = fn.__qualname__ + suffix
        f.__module__ = fn.__module__
        f.__doc__ = fn.__doc__
        return f

    serial_g = {**fn.__globals__, "prange": range, **(serial_globals or {})}
    body = (serial or sweep)(clone("_serial_body", serial_g))
    return parallel(clone("_parallel")), _unowned_entry(body, fn, "_serial")


def _unowned_entry(kernel, fn, suffix):
    """A kernel taking ``fn``'s arguments that calls ``kernel`` with each C-contiguous array
    seen through :func:`._unowned.unowned`: views of a NumPy array count references
    atomically, a few per row, and a serial kernel over short rows spent a third of its
    time doing so.  Without: backward 1.12-1.40x faster, forward 0.98-1.29x (float32,
    640x20 to 4096x1024, one thread, ``python tools/kernel_ab.py --only unowned``).  The
    source is generated because the argument list is each kernel's own."""
    names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
    source = f"def entry({', '.join(names)}):\n    return kernel({', '.join(f'unowned({n})' for n in names)})\n"
    namespace = {"kernel": kernel, "unowned": unowned}
    exec(compile(source, fn.__code__.co_filename, "exec"), namespace)  # noqa: S102 - built from fn's names
    entry = namespace["entry"]
    entry.__code__ = entry.__code__.replace(co_firstlineno=fn.__code__.co_firstlineno)  # the cache's key
    entry.__name__ = fn.__name__ + suffix
    entry.__qualname__ = fn.__qualname__ + suffix
    entry.__module__ = fn.__module__
    entry.__doc__ = fn.__doc__
    return sweep(entry)
