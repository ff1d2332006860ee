"""The bridge's CUDA path: outputs from torch's caching allocator, kernels launched on
torch's current stream, tensors handed to Numba through the CUDA Array Interface (zero
copy).  float16/bfloat16 are computed through float32 copies on the GPU.

The interface is imported with ``sync=False``: by default Numba synchronises the stream a
tensor names in its interface (torch's current one) for every tensor it imports, which
made each call wait for the GPU to finish all queued work, ten times over.  The kernels run
on that same stream, so its order already puts them after the work that made their inputs.
"""

from __future__ import annotations

import torch
from numba import cuda

from fastln import cuda as fcuda
from fastln.torch import _glue

#: torch's current stream on a device, as the driver's handle (an int), without making a
#: torch.cuda.Stream object (what Inductor's generated code calls).
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_EMPTY: dict = {}


def _stream_handle(device: int) -> int:
    if _raw_stream is not None:
        return _raw_stream(device)
    return torch.cuda.current_stream(device).cuda_stream


def _none(dtype, device):
    """A kept length-0 tensor: an absent argument of a kernel (never handed to the caller)."""
    key = (dtype, device)
    t = _EMPTY.get(key)
    if t is None:
        t = _EMPTY[key] = torch.empty(0, dtype=dtype, device=device)
    return t


def _arr(t):
    return cuda.as_cuda_array(t.detach(), sync=False)


def _as(t, dtype):
    """``t`` in ``dtype``, contiguous (itself when it already is)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return t.detach().to(dtype).contiguous()


def _vec(p, cdt, device):
    if p is None:
        return _none(cdt, device)
    return _as(p, cdt)


def _launch(raw, ordinary, device, args):
    """Launch through ``raw`` (``fcuda.raw_forward``/``raw_backward``) when it can, else
    ``ordinary`` (which compiles, and makes the next ``raw`` possible).  ``args``: the
    kernel's arguments, each array as ``(tensor, kernel_shape)``."""
    current = torch.cuda.current_device()
    handle = _stream_handle(current)
    if device != current:  # Numba's context is the current device's
        device = None
    elif raw(device, handle, *[fcuda.RawArray(a[0].data_ptr(), a[1], a[0].element_size())
                               if isinstance(a, tuple) else a for a in args]):
        return
    ordinary(*[_arr(a[0].view(a[1])) if isinstance(a, tuple) else a for a in args],
             stream=fcuda.external_stream(current, handle), device=device)


def forward(x, residual, norm, rows, cols, weight, bias, eps, centered):
    cdt = _glue.compute_dtype(x.dtype)
    dev = x.device
    xc = _as(x, cdt)
    y = torch.empty_like(xc, memory_format=torch.contiguous_format)
    stat = _glue.stats_dtype(x.dtype)
    lead = tuple(x.shape[: x.dim() - len(norm)])
    mean = torch.empty(lead if centered else (0,), dtype=stat, device=dev)
    rstd = torch.empty(lead, dtype=stat, device=dev)
    if residual is not None:
        rc = _as(residual, cdt)
        h = torch.empty_like(xc, memory_format=torch.contiguous_format)
        res2, h2 = (rc, (rows, cols)), (h, (rows, cols))
    else:
        h = torch.empty(0, dtype=x.dtype, device=dev)
        res2 = h2 = (_none(cdt, dev), (0, 0))
    if rows:
        w, b = _vec(weight, cdt, dev), _vec(bias, cdt, dev)
        _launch(fcuda.raw_forward, fcuda.launch_forward, dev.index, (
            (xc, (rows, cols)), res2, (w, (w.numel(),)), (b, (b.numel(),)), float(eps), bool(centered),
            (y, (rows, cols)), h2, (mean, (mean.numel(),)), (rstd, (rows,)),
        ))
    if residual is not None and h.dtype != x.dtype:
        h = h.to(x.dtype)
    return (y if y.dtype == x.dtype else y.to(x.dtype)), h, mean, rstd


def backward(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    cdt = _glue.compute_dtype(h.dtype)
    dev = h.device
    hc = _as(h, cdt)
    gyc = _as(grad_y, cdt)
    gx = torch.empty_like(hc, memory_format=torch.contiguous_format)
    part_cols = cols if need_params else 0
    blocks = fcuda.backward_blocks(rows, cols)
    # Partials in the compute dtype.  The block-per-row kernels add into theirs; the
    # register kernels write them whole.
    new = torch.zeros if fcuda.partials_zeroed(cols) else torch.empty
    parts = new((2, blocks, part_cols), dtype=cdt, device=dev)
    dw = torch.empty(part_cols, dtype=cdt, device=dev)
    db = torch.empty(part_cols, dtype=cdt, device=dev)
    gres = (_as(grad_res, cdt), (rows, cols)) if grad_res is not None else (_none(cdt, dev), (0, 0))
    w = _vec(weight, cdt, dev)
    mean = mean.contiguous()
    _launch(fcuda.raw_backward, fcuda.launch_backward, dev.index, (
        (gyc, (rows, cols)), (hc, (rows, cols)), (mean, (mean.numel(),)),
        (rstd.contiguous(), (rows,)), (w, (w.numel(),)), bool(centered),
        gres, (gx, (rows, cols)), (parts[0], (blocks, part_cols)), (parts[1], (blocks, part_cols)),
        (dw, (part_cols,)), (db, (part_cols,)),
    ))
    if need_params:
        return gx, dw.reshape(norm), db.reshape(norm)
    return gx, dw, db
