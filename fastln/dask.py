"""Dask arrays: lazy, chunked, distributed norms.

Any fastln NumPy-level function given a ``dask.array.Array`` returns lazy Dask arrays; nothing
runs until ``.compute()`` (or ``persist``), on whatever scheduler the caller uses: threads,
processes or a ``distributed`` cluster.  Dask is imported only when a Dask array arrives.

How a call becomes a graph:

- Chunks along the normalised dimensions are merged first (a row must be whole in one block:
  its statistics need all of it); the row dimensions keep the caller's chunks.  Arrays that go
  with ``x`` row by row (``residual``, ``grad_y``, ``mean``, ``rstd``) are rechunked to match.
- Each block runs the NumPy function itself (the same checks, kernels and threads as an
  in-memory call) in one task that returns all of its outputs; each output is then an
  element of that task's result, so nothing is computed twice.
- The backward's ``grad_weight``/``grad_bias`` are per-block partial sums, added in float64
  in one fixed order (the blocks' C order) by a single task, then cast to ``x``'s dtype: the
  result does not depend on which worker finished first.
- Arguments are checked when the graph is built, with the NumPy front's own checks (a probe
  row of the same dtype and trailing shape), so mistakes raise at the call, not at compute.
- ``weight`` and ``bias`` are small: a Dask weight is computed once and shipped with the tasks.
"""

from __future__ import annotations

import functools
import itertools
import operator

import numpy as np

from fastln import _checks

#: Outputs of each function: "x" (x's shape and chunks), "stat" (the row dims), "param"
#: (normalized_shape, reduced over blocks), or None (an output that is None).
_OUTPUTS = {
    "layer_norm": ("x",),
    "layer_norm_forward": ("x", "stat", "stat"),
    "rms_norm": ("x",),
    "rms_norm_forward": ("x", "stat"),
    "add_layer_norm": ("x", "x"),
    "add_rms_norm": ("x", "x"),
    "layer_norm_backward": ("x", "param", "param"),
    "rms_norm_backward": ("x", "param"),
}
#: Row-aligned array arguments ("x": x's shape; "stat": the row dims), the rest are passed as is.
_ROWWISE = {
    "x": "x", "residual": "x", "grad_y": "x", "mean": "stat", "rstd": "stat",
}


def is_dask_array(a) -> bool:
    """True for ``dask.array.Array`` without importing dask."""
    return type(a).__module__.startswith("dask.array") and type(a).__name__ == "Array"


def _small(a):
    """A parameter as NumPy (computed once if it is a Dask array)."""
    if is_dask_array(a):
        return np.asarray(a.compute())
    return a


def _block_call(fn_name, named, fixed):
    """One task: the NumPy function on one block's arrays."""
    from fastln import _api

    return getattr(_api, fn_name)(**named, **fixed)


def _sum_fixed_order(partials, dtype):
    """Per-block parameter partials added in the listed (C block) order, in float64."""
    total = functools.reduce(operator.add, (np.asarray(p, np.float64) for p in partials))
    return total.astype(dtype)


def call(fn_name: str, *args, **kwargs):
    """Run ``fastln.<fn_name>`` lazily on Dask arrays; see the module docstring."""
    import dask
    import dask.array as da

    from fastln import _api, interop

    names = interop._ARGS[fn_name]
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    if bound.get("out") is not None:
        raise TypeError("out= is supported for NumPy arrays only, not for Dask arrays")
    bound.pop("out", None)
    x = bound["x"]
    if not is_dask_array(x):
        x = da.asarray(x)
    if any(np.isnan(c) for c in x.shape):
        raise ValueError("x: a Dask array with unknown chunk sizes; call x.compute_chunk_sizes() first")

    # Checks, with the NumPy front's own code: the layout from the real shape, the rest from a
    # probe row of the same dtype and trailing shape (raises here, at graph-building time).
    params = {k: _small(v) for k, v in bound.items() if k not in _ROWWISE}
    ns = params.get("normalized_shape")
    if ns is None and fn_name.endswith("_backward") and params.get("weight") is not None:
        ns = np.shape(params["weight"]) or None
    lay = _checks.layout(tuple(int(d) for d in x.shape), ns)
    nlead = len(lay.lead_shape)
    rowwise = {}
    for name in names:
        a = bound.get(name)
        if name not in _ROWWISE or a is None:
            continue
        a = a if is_dask_array(a) else da.asarray(a)
        want = x.shape if _ROWWISE[name] == "x" else lay.lead_shape
        if _ROWWISE[name] == "stat" and a.shape != want and a.shape == want + (1,) * len(lay.norm_shape):
            a = a.reshape(want)  # torch's trailing-ones statistics
        if a.shape != want:
            raise _checks.ShapeError(f"{name} must have shape {want}, got {a.shape}")
        rowwise[name] = a
    probe = {
        name: np.zeros((1,) * nlead + (lay.norm_shape if _ROWWISE[name] == "x" else ()), a.dtype)
        for name, a in rowwise.items()
    }
    for name in ("mean", "rstd"):
        if name in probe:
            probe[name] = probe[name] + 1
    probe_out = getattr(_api, fn_name)(**probe, **params)  # raises what the NumPy front raises

    # Rows whole in one block; everything row-aligned chunked like x.
    x = rowwise["x"].rechunk({nlead + i: -1 for i in range(len(lay.norm_shape))})
    lead_chunks = x.chunks[:nlead]
    blocks = {}
    for name, a in rowwise.items():
        chunks = x.chunks if _ROWWISE[name] == "x" else lead_chunks
        blocks[name] = a.rechunk(chunks).to_delayed()
    grid = list(itertools.product(*(range(len(c)) for c in lead_chunks)))
    task = dask.delayed(_block_call, pure=True)
    kinds = _OUTPUTS[fn_name]
    results = {}
    for idx in grid:
        named = {}
        for name, d in blocks.items():
            named[name] = d[idx + (0,) * len(lay.norm_shape)] if _ROWWISE[name] == "x" else d[idx]
        results[idx] = task(fn_name, named, params)

    # The dtypes and None-ness of the outputs: the probe's.
    probe_out = probe_out if isinstance(probe_out, tuple) else (probe_out,)
    outs = []
    for k, (kind, like) in enumerate(zip(kinds, probe_out, strict=True)):
        if like is None:
            outs.append(None)
            continue
        if kind == "param":
            parts = [results[idx][k] for idx in grid]
            total = dask.delayed(_sum_fixed_order, pure=True)(parts, like.dtype)
            outs.append(da.from_delayed(total, lay.norm_shape, like.dtype))
            continue
        tail = lay.norm_shape if kind == "x" else ()

        def piece(idx, k=k, tail=tail, like=like):
            shape = tuple(lead_chunks[d][i] for d, i in enumerate(idx)) + tail
            item = results[idx] if len(kinds) == 1 else results[idx][k]
            return da.from_delayed(item, shape, like.dtype, meta=like[:0] if like.ndim else None)

        outs.append(_assemble(da, piece, [len(c) for c in lead_chunks], ()))
    return outs[0] if len(kinds) == 1 else tuple(outs)


def _assemble(da, piece, counts, prefix):
    """Join the block pieces along the row dims (the normalised dims are one block)."""
    if len(prefix) == len(counts):
        return piece(prefix)
    parts = [_assemble(da, piece, counts, prefix + (i,)) for i in range(counts[len(prefix)])]
    return parts[0] if len(parts) == 1 else da.concatenate(parts, axis=len(prefix))
