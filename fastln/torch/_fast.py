"""The bridge's eager fast path: the compiled glue of ``_native.cpp``, when it was built.

``pip install --no-build-isolation`` (torch already installed; see the README) compiles
``fastln.torch._native`` against the installed torch.  A plain ``pip install`` builds in an
isolated environment without torch and skips it; so does a machine without a C++ compiler,
and an extension built against another torch release fails to load.  In each case
:data:`norm` is None and the Python bridge takes every call, with the same kernels and the
same results.  ``FASTLN_NATIVE=0`` turns the fast path off (tests compare the two).

The glue runs parallel work on torch's intra-op thread pool (``torch.set_num_threads``
applies), where the Python bridge uses Numba's: in a model, torch's OpenMP workers spin for a
while after each torch op, and Numba's workers would fight them for the cores.

:func:`norm` returns None for any call it does not take (see ``_native.cpp``); the caller
then runs the Python path, which checks and raises torch's errors.
"""

from __future__ import annotations

from fastln import _config

#: Why the compiled glue is not in use, or None when it is.
WHY_NOT: str | None = None
norm = None
#: ``_native.forward_half``/``backward_half``: the Python bridge's half-precision kernels run
#: on torch's pool (None without the compiled glue).
forward_half = backward_half = None


def _backward(grad_y, grad_res, h, mean, rstd, weight, normalized_shape, eps, centered, needs, params_f32=False):
    """The Python backward, for what the compiled one does not take: a graph of the
    gradient (double backward) or gradients of an unusual kind.  ``(gx, gr, gw, gb)``;
    the inputs of the fast path have ``h``'s dtype, except float32 weight and bias of
    half-precision data (``params_f32``)."""
    import torch

    from fastln.torch import functional

    rows = rstd.numel()
    composite = torch.is_grad_enabled() or any(
        t is not None and functional._is_wrapped(t) for t in (grad_y, grad_res)
    )
    dt = h.dtype
    pdt = torch.float32 if params_f32 else dt
    return functional._gradients(grad_y, grad_res, h, mean, rstd, weight, tuple(normalized_shape), rows,
                                 h.numel() // rows, eps, centered, needs, (dt, dt, pdt, pdt), composite)


def configure(native, pool_below=None):
    """Hand the compiled glue ``native`` the kernels' entry points, the Python backward and
    :mod:`fastln._config`'s launch constants; ``pool_below`` overrides
    ``_config.POOL_BELOW`` (``tools/pool_threshold.py`` and the tests try others)."""
    from fastln.cpu import _half, entries

    native.configure(
        entries.address, _backward, _config.SERIAL_BELOW, _config.POOL_BELOW if pool_below is None else pool_below,
        _config.ROW_COST, _config.COL_SPLIT_MIN, _config.MAX_CHUNKS, _config.MAX_PARTIAL_BYTES,
        _config.MIN_CHUNK_ELEMS, _config.MIN_CHUNK_ROWS, _half.BFLOAT16, _half.FLOAT16 if _half.FLOAT16_IN_KERNEL else -1,
    )


def _load():
    global norm, forward_half, backward_half, WHY_NOT
    norm = forward_half = backward_half = WHY_NOT = None
    if not _config.NATIVE:
        WHY_NOT = "turned off (FASTLN_NATIVE=0)"
        return
    try:
        from fastln.torch import _native
    except ImportError as exc:  # not built, or built against another torch
        WHY_NOT = f"not built or not loadable ({exc})"
        return
    try:
        configure(_native)
    except TypeError as exc:  # an extension built from other sources (an editable install not rebuilt)
        WHY_NOT = f"built from another version of fastln/torch/_native.cpp; reinstall to rebuild it ({exc})"
        return
    norm = _native.norm
    forward_half = _native.forward_half
    backward_half = _native.backward_half


def describe() -> dict:
    """For ``fastln info``."""
    return {"in_use": norm is not None, "why_not": WHY_NOT}


_load()
