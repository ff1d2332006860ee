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

_STREAMS: dict = {}


def _stream():
    """Numba's handle on torch's current stream (one per torch stream, kept)."""
    key = (torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream)
    stream = _STREAMS.get(key)
    if stream is None:
        stream = _STREAMS[key] = cuda.external_stream(key[1])
    return stream


def _arr(t):
    return cuda.as_cuda_array(t.detach(), sync=False)


def _vec(p, cols, cdt, device):
    if p is None:
        return torch.empty(0, dtype=cdt, device=device)
    return p.detach().to(cdt).reshape(cols).contiguous()


def _launch(raw, ordinary, device, args):
    """Launch through ``raw`` (``fcuda.raw_forward``/``raw_backward``) when it can, else
    ``ordinary`` (which compiles, and makes the next ``raw`` possible).  ``args``: the
    kernel's arguments, each array as ``(tensor, kernel_shape)``."""
    stream = _stream()
    if device != torch.cuda.current_device():  # Numba's context is the current device's
        device = None
    elif raw(device, stream, *[fcuda.RawArray(a[0].data_ptr(), a[1], a[0].element_size())
                               if isinstance(a, tuple) else a for a in args]):
        return
    ordinary(*[_arr(a[0].view(a[1])) if isinstance(a, tuple) else a for a in args], stream=stream, device=device)


def forward(x, residual, norm, rows, cols, weight, bias, eps, centered):
    cdt = _glue.compute_dtype(x.dtype)
    dev = x.device
    xc = x.detach().to(cdt).contiguous()
    y = torch.empty_like(xc, memory_format=torch.contiguous_format)
    stat = _glue.stats_dtype(x.dtype)
    lead = tuple(x.shape[: x.dim() - len(norm)])
    mean = torch.empty(lead if centered else (0,), dtype=stat, device=dev)
    rstd = torch.empty(lead, dtype=stat, device=dev)
    if residual is not None:
        rc = residual.detach().to(cdt).contiguous()
        h = torch.empty_like(xc, memory_format=torch.contiguous_format)
        res2, h2 = (rc, (rows, cols)), (h, (rows, cols))
    else:
        h = torch.empty(0, dtype=x.dtype, device=dev)
        res2 = h2 = (torch.empty(0, dtype=cdt, device=dev), (0, 0))
    if rows:
        w, b = _vec(weight, cols, cdt, dev), _vec(bias, cols, cdt, dev)
        _launch(fcuda.raw_forward, fcuda.launch_forward, dev.index, (
            (xc, (rows, cols)), res2, (w, tuple(w.shape)), (b, tuple(b.shape)), float(eps), bool(centered),
            (y, (rows, cols)), h2, (mean, (mean.numel(),)), (rstd, (rows,)),
        ))
    if residual is not None:
        h = h.to(x.dtype)
    return y.to(x.dtype), h, mean, rstd


def backward(grad_y, grad_res, h, mean, rstd, weight, norm, rows, cols, centered, need_params):
    cdt = _glue.compute_dtype(h.dtype)
    dev = h.device
    hc = h.detach().to(cdt).contiguous()
    gyc = grad_y.detach().to(cdt).contiguous()
    gx = torch.empty_like(hc, memory_format=torch.contiguous_format)
    part_cols = cols if need_params else 0
    blocks = fcuda.backward_blocks(rows, cols)
    # Partials in the compute dtype.  The block-per-row kernels add into theirs; the
    # register kernels write them whole.
    new = torch.zeros if fcuda.partials_zeroed(cols) else torch.empty
    parts = new((2, blocks, part_cols), dtype=cdt, device=dev)
    dw = torch.empty(part_cols, dtype=cdt, device=dev)
    db = torch.empty(part_cols, dtype=cdt, device=dev)
    gres = ((grad_res.detach().to(cdt).contiguous(), (rows, cols)) if grad_res is not None
            else (torch.empty(0, dtype=cdt, device=dev), (0, 0)))
    w = _vec(weight, cols, cdt, dev)
    mean = mean.detach().contiguous()
    _launch(fcuda.raw_backward, fcuda.launch_backward, dev.index, (
        (gyc, (rows, cols)), (hc, (rows, cols)), (mean, (mean.numel(),)),
        (rstd.detach().contiguous(), (rows,)), (w, tuple(w.shape)), bool(centered),
        gres, (gx, (rows, cols)), (parts[0], (blocks, part_cols)), (parts[1], (blocks, part_cols)),
        (dw, (part_cols,)), (db, (part_cols,)),
    ))
    if need_params:
        return gx, dw.reshape(norm), db.reshape(norm)
    return gx, dw, db
