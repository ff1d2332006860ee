"""DLPack in and out: any array library's CPU arrays through fastln's NumPy API.

An array exporting ``__dlpack__`` (torch tensors, JAX arrays, CuPy arrays...) is read
through ``np.from_dlpack`` without a copy when it lives on the CPU; the results go back
through the caller's own ``from_dlpack`` (its ``__array_namespace__()`` where it has one,
else the library's top-level module), so a JAX user gets JAX arrays and a torch user gets
tensors (without autograd: that is what ``fastln.torch`` is for).  CUDA arrays that expose
the CUDA Array Interface run the CUDA kernels instead (see ``fastln._api``).  Read-only
producers are only read: fastln never writes into its inputs.
"""

from __future__ import annotations

import importlib

import numpy as np

_CPU = 1  # DLPack device type kDLCPU


def _namespace(a):
    ns = getattr(a, "__array_namespace__", None)
    if ns is not None:
        try:
            return ns()
        except Exception:
            pass
    return importlib.import_module(type(a).__module__.split(".")[0])


def _to_numpy(a, name):
    if a is None or isinstance(a, np.ndarray) or not hasattr(a, "__dlpack__"):
        return a
    lib = _namespace(a).__name__.split(".")[0]
    dev = a.__dlpack_device__() if hasattr(a, "__dlpack_device__") else (_CPU, 0)
    if int(dev[0]) != _CPU:
        raise TypeError(
            f"{name} is a {lib} array on DLPack device {tuple(int(d) for d in dev)}: fastln runs "
            "CPU arrays and CUDA arrays with the CUDA Array Interface"
        )
    try:
        return np.from_dlpack(a)
    except (TypeError, BufferError, RuntimeError) as exc:  # bfloat16 and other dtypes NumPy lacks
        raise TypeError(f"{name}: {lib} array cannot cross to NumPy through DLPack ({exc})") from None


def _back(ns, r):
    if r is None:
        return None
    if isinstance(r, tuple):
        return tuple(_back(ns, v) for v in r)
    return ns.from_dlpack(r)


_ARGS = {
    "layer_norm_forward": ("x", "normalized_shape", "weight", "bias", "eps"),
    "layer_norm": ("x", "normalized_shape", "weight", "bias", "eps"),
    "layer_norm_backward": ("grad_y", "x", "mean", "rstd", "weight", "normalized_shape"),
    "rms_norm_forward": ("x", "normalized_shape", "weight", "eps"),
    "rms_norm": ("x", "normalized_shape", "weight", "eps"),
    "rms_norm_backward": ("grad_y", "x", "rstd", "weight", "normalized_shape"),
    "add_layer_norm": ("x", "residual", "normalized_shape", "weight", "bias", "eps"),
    "add_rms_norm": ("x", "residual", "normalized_shape", "weight", "eps"),
}


def call(fn_name, *args):
    """Run ``fastln.<fn_name>`` on DLPack arrays; results in the first array's library."""
    from fastln import _api

    names = _ARGS[fn_name]
    first = next(a for a in args if hasattr(a, "__dlpack__") and not isinstance(a, np.ndarray))
    ns = _namespace(first)
    conv = [_to_numpy(a, n) if n not in ("normalized_shape", "eps") else a for a, n in zip(args, names, strict=True)]
    return _back(ns, getattr(_api, fn_name)(*conv))
