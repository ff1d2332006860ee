"""The PyTorch bridge: fastln kernels behind ``F.layer_norm``'s and ``nn.LayerNorm``'s API.

Layers, each obvious by name:

* ``_forward_impl`` / ``_backward_impl`` -- tensors in, tensors out: outputs are allocated by
  torch (large ones advised onto huge pages, see ``_empty``) and the kernels see every
  tensor as a zero-copy NumPy view (see ``_view``).
* ``fastln::forward`` / ``fastln::backward`` -- ``torch.library.custom_op`` wrappers with fake
  (meta) kernels and ``register_autograd``, so ``torch.compile(fullgraph=True)`` traces them.
* ``layer_norm`` -- ``F.layer_norm``'s signature: the custom ops while torch.compile traces,
  ``LayerNormFunction`` when eager.
* ``LayerNormFunction`` -- the plain ``torch.autograd.Function``, for ``.apply(...)``.
* ``LayerNorm`` -- a subclass of ``nn.LayerNorm``: same constructor, parameters, state_dict
  keys, ``extra_repr`` and ``reset_parameters``; only ``forward`` differs.
* ``replace_layer_norms`` -- swap every ``nn.LayerNorm`` in a model for fastln's.

float16 and bfloat16 tensors are computed in float32 (statistics float32, output cast back).
"""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from fastln import _api, _checks

__all__ = ["layer_norm", "LayerNorm", "LayerNormFunction", "replace_layer_norms"]

_NATIVE = (torch.float32, torch.float64)
_HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------------------------------
# Checks, with torch's conventions: shape problems are RuntimeError (ShapeError is also a
# ValueError), dtype problems TypeError, device problems RuntimeError.
# ---------------------------------------------------------------------------------------
def _check(x: Tensor, normalized_shape: Sequence[int], weight, bias) -> tuple[tuple, int, int]:
    if not isinstance(x, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(x).__name__}")
    if not (x.dtype in _NATIVE or x.dtype in _HALF):
        raise TypeError(
            f"fastln.torch.layer_norm: input must be a floating-point tensor "
            f"(float16, bfloat16, float32, float64), got {x.dtype}"
        )
    norm = _checks.normalize_shape(tuple(normalized_shape), tuple(x.shape))
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        if not isinstance(p, Tensor):
            raise TypeError(f"{name} must be a Tensor or None, got {type(p).__name__}")
        if p.device != x.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but input is on {x.device} "
                f"and {name} is on {p.device}"
            )
        if tuple(p.shape) != norm:
            raise _checks.ShapeError(
                f"Expected {name} to be of same shape as normalized_shape, but got {name} of "
                f"shape {list(p.shape)} and normalized_shape = {list(norm)}"
            )
        if not p.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got {p.dtype}")
    cols = math.prod(norm)
    rows = x.numel() // cols if cols else math.prod(x.shape[: x.dim() - len(norm)])
    return norm, rows, cols


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in _HALF else dtype


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _load_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _load_madvise()
_MADV_HUGEPAGE = 14
_HUGE = 2 << 20


def _empty(shape, dtype) -> Tensor:
    """``torch.empty``, with its large buffers backed by transparent huge pages.

    torch's CPU allocator maps fresh 4 KiB pages for every large tensor, and the kernel's
    first touch then takes one page fault per 4 KiB: 24,577 faults (~25 ms) for a
    32768x768 float32 output, 2.5x the kernel itself.  NumPy madvises its own large
    buffers for huge pages; fastln does the same for the outputs it asks torch for.  The
    advice only changes how untouched pages get backed; the memory stays torch's.
    """
    t = torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _MADVISE is not None and nbytes >= 2 * _HUGE:
        start = -(-t.data_ptr() // _HUGE) * _HUGE
        stop = (t.data_ptr() + nbytes) // _HUGE * _HUGE
        if stop > start:
            _MADVISE(start, stop - start, _MADV_HUGEPAGE)  # advice only: failure is harmless
    return t


def _view(t: Tensor) -> np.ndarray:
    """Zero-copy NumPy view of a contiguous CPU tensor (same data pointer).

    ``Tensor.numpy()`` rather than ``np.from_dlpack``: both share the memory, but torch
    2.13's Python ``__dlpack__`` costs 2.4-2.9 us a tensor against 0.7-1.1 us, and a
    forward plus backward crosses 14 tensors.  bfloat16, which NumPy lacks, crosses as its
    int16 bits.
    """
    return (t.detach() if t.requires_grad else t).numpy()


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, contiguous; no call at all when it already is (each costs ~1 us)."""
    if t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def _rows_view(t: Tensor, rows: int, cols: int) -> np.ndarray:
    """Zero-copy NumPy (rows, cols) view of a contiguous CPU tensor."""
    return _view(t).reshape(rows, cols)


_NUMPY_OF = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _param_vector(p: Tensor | None, cols: int, fill: float, dtype: torch.dtype) -> np.ndarray:
    """weight/bias as a (cols,) vector in the compute dtype (no copy when it already is)."""
    if p is None:
        return _checks.constant_vector(cols, fill, _NUMPY_OF[dtype])
    return _view(_as(p, dtype)).reshape(cols)


# ---------------------------------------------------------------------------------------
# Tensor-level implementations
# ---------------------------------------------------------------------------------------
def _forward_impl(x, normalized_shape, weight, bias, eps):
    norm, rows, cols = _check(x, normalized_shape, weight, bias)
    if x.is_cuda:
        from fastln import cuda

        return cuda.torch_forward(x, norm, rows, cols, weight, bias, float(eps))
    lead = tuple(x.shape[: x.dim() - len(norm)])
    if x.dtype == torch.bfloat16:
        return _forward_bf16(x, lead, rows, cols, weight, bias, eps)
    cdt = _compute_dtype(x.dtype)
    xc = _as(x, cdt)  # no copy for contiguous float32/64
    y = _empty(xc.shape, cdt)
    mean = torch.empty(lead, dtype=_stats_dtype(x.dtype))
    rstd = torch.empty(lead, dtype=_stats_dtype(x.dtype))
    _api.run_forward(
        _rows_view(xc, rows, cols),
        _param_vector(weight, cols, 1.0, cdt),
        _param_vector(bias, cols, 0.0, cdt),
        float(eps),
        _rows_view(y, rows, cols),
        _view(mean).reshape(rows),
        _view(rstd).reshape(rows),
    )
    return _as(y, x.dtype), mean, rstd


def _bits(t: Tensor, rows: int, cols: int) -> np.ndarray:
    """uint16 (rows, cols) view of a contiguous bfloat16 tensor's bits (NumPy has no bf16)."""
    return _view(t.view(torch.int16)).view(np.uint16).reshape(rows, cols)


def _forward_bf16(x, lead, rows, cols, weight, bias, eps):
    """bfloat16 converted row by row inside the kernel: no float32 copy of the tensor."""
    xc = _as(x, torch.bfloat16)
    y = _empty(xc.shape, torch.bfloat16)
    mean = torch.empty(lead, dtype=torch.float32)
    rstd = torch.empty(lead, dtype=torch.float32)
    _api.run_forward_bf16(
        _bits(xc, rows, cols),
        _param_vector(weight, cols, 1.0, torch.float32),
        _param_vector(bias, cols, 0.0, torch.float32),
        float(eps),
        _bits(y, rows, cols),
        _view(mean).reshape(rows),
        _view(rstd).reshape(rows),
    )
    return y, mean, rstd


def _backward_impl(grad_y, x, mean, rstd, weight, normalized_shape, output_mask):
    norm, rows, cols = _check(x, normalized_shape, weight, None)
    if x.is_cuda:
        from fastln import cuda

        return cuda.torch_backward(grad_y, x, mean, rstd, weight, norm, rows, cols, output_mask)
    cdt = _compute_dtype(x.dtype)
    xc = _as(x, cdt)
    gyc = _as(grad_y, cdt)
    gx = _empty(xc.shape, cdt)
    param_grads = weight is not None and (output_mask[1] or output_mask[2])
    dw = torch.empty(cols if param_grads else 0, dtype=cdt)
    db = torch.empty_like(dw)
    _api.run_backward(
        _rows_view(gyc, rows, cols),
        _rows_view(xc, rows, cols),
        _view(mean.contiguous()).reshape(rows),
        _view(rstd.contiguous()).reshape(rows),
        _param_vector(weight, cols, 1.0, cdt),
        _rows_view(gx, rows, cols),
        _view(dw),
        _view(db),
    )
    if not param_grads:
        empty = x.new_empty((0,))
        return _as(gx, x.dtype), empty, empty.clone()
    return _as(gx, x.dtype), _as(dw, weight.dtype).reshape(norm), _as(db, weight.dtype).reshape(norm)


# ---------------------------------------------------------------------------------------
# Custom ops (torch.compile-ready)
# ---------------------------------------------------------------------------------------
@torch.library.custom_op("fastln::forward", mutates_args=())
def _forward_op(
    x: Tensor, normalized_shape: list[int], weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    return _forward_impl(x, normalized_shape, weight, bias, eps)


@_forward_op.register_fake
def _forward_fake(x, normalized_shape, weight, bias, eps):
    _check(x, normalized_shape, weight, bias)  # same errors under tracing as when run
    lead = x.shape[: x.dim() - len(normalized_shape)]
    stat = _stats_dtype(x.dtype)
    return torch.empty_like(x), x.new_empty(lead, dtype=stat), x.new_empty(lead, dtype=stat)


@torch.library.custom_op("fastln::backward", mutates_args=())
def _backward_op(
    grad_y: Tensor,
    x: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    normalized_shape: list[int],
    output_mask: list[bool],
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_impl(grad_y, x, mean, rstd, weight, normalized_shape, output_mask)


@_backward_op.register_fake
def _backward_fake(grad_y, x, mean, rstd, weight, normalized_shape, output_mask):
    if weight is not None and (output_mask[1] or output_mask[2]):
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
    return torch.empty_like(x), x.new_empty((0,)), x.new_empty((0,))


def _setup_context(ctx, inputs, output):
    x, normalized_shape, weight, bias, _eps = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight)
    ctx.normalized_shape = normalized_shape
    ctx.mark_non_differentiable(mean, rstd)


def _forward_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, mean, rstd, weight = ctx.saved_tensors
    need_x, _, need_w, need_b, _ = ctx.needs_input_grad
    gx, gw, gb = _backward_op(
        grad_y, x, mean, rstd, weight, ctx.normalized_shape, [need_x, need_w, need_b]
    )
    return (
        gx if need_x else None,
        None,
        gw if need_w and weight is not None else None,
        gb if need_b else None,
        None,
    )


_DOUBLE_BACKWARD = (
    "fastln.torch: double backward (gradients of gradients) of layer_norm is not "
    "supported; use torch.nn.functional.layer_norm for that"
)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


class _RefuseDoubleBackward(torch.autograd.Function):
    """Identity on a gradient, tied to the forward input so that it joins the graph;
    differentiating through it raises the clear error."""

    @staticmethod
    def forward(ctx, g, x):
        return g.view_as(g)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(_DOUBLE_BACKWARD)


def _guard_second_order(x, *grads):
    """With ``create_graph=True`` grad mode is on during backward: mark the results."""
    if not torch.is_grad_enabled():
        return grads
    return tuple(None if g is None else _RefuseDoubleBackward.apply(g, x) for g in grads)


def _backward_setup(ctx, inputs, output):
    pass


torch.library.register_autograd(_forward_op, _forward_backward, setup_context=_setup_context)
torch.library.register_autograd(_backward_op, _no_double_backward, setup_context=_backward_setup)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def _as_shape(normalized_shape) -> list[int]:
    if isinstance(normalized_shape, (int, torch.SymInt)) and not isinstance(normalized_shape, bool):
        return [normalized_shape]
    return list(normalized_shape)


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """``torch.nn.functional.layer_norm`` computed by fastln's kernels.

    Parameters
    ----------
    input : Tensor
        ``(*, *normalized_shape)``; float16, bfloat16, float32 or float64, CPU or CUDA.
    normalized_shape : int or sequence of int
        Trailing dimensions to normalise over.
    weight, bias : Tensor or None
        Affine parameters of shape ``normalized_shape``.
    eps : float
        Added to the variance inside the square root.

    Returns
    -------
    Tensor
        Same shape and dtype as ``input``; differentiable in input, weight and bias, and
        traceable by ``torch.compile(fullgraph=True)``.
    """
    if not isinstance(input, Tensor):  # the op's own error would only say "Unable to cast"
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    if torch.compiler.is_compiling():
        # Traced: the custom op, with its fake kernel and registered autograd.
        return _forward_op(input, _as_shape(normalized_shape), weight, bias, float(eps))[0]
    # Eager: the same implementation through the plain Function, which skips the custom
    # op's Python dispatch (about 40 us a forward plus backward on small tensors).
    return LayerNormFunction.apply(input, normalized_shape, weight, bias, eps)


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm as a ``torch.autograd.Function``: ``LayerNormFunction.apply(x, shape, w, b, eps)``.

    Forward saves ``x``, ``mean``, ``rstd`` and ``weight``; backward runs fastln's fused
    backward and returns gradients only for the inputs that need them.
    """

    @staticmethod
    def forward(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5):
        shape = _as_shape(normalized_shape)
        y, mean, rstd = _forward_impl(input, shape, weight, bias, float(eps))
        ctx.save_for_backward(input, mean, rstd, weight)
        ctx.normalized_shape = shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, mean, rstd, weight = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        with torch.no_grad():
            gx, gw, gb = _backward_impl(
                grad_y, x, mean, rstd, weight, ctx.normalized_shape, [need_x, need_w, need_b]
            )
        has_w = weight is not None
        gx, gw, gb = _guard_second_order(
            x,
            gx if need_x else None,
            gw if need_w and has_w else None,
            gb if need_b and has_w else None,
        )
        return gx, None, gw, gb, None


class LayerNorm(nn.LayerNorm):
    """Drop-in ``torch.nn.LayerNorm`` computed by fastln.

    Same constructor, parameters, ``state_dict`` keys, ``extra_repr`` and
    ``reset_parameters`` as ``nn.LayerNorm`` (it is a subclass), so pretrained weights load
    unchanged and ``isinstance(m, nn.LayerNorm)`` still holds.
    """

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


def _converted(old: nn.LayerNorm) -> LayerNorm:
    new = LayerNorm(
        old.normalized_shape,
        eps=old.eps,
        elementwise_affine=old.elementwise_affine,
        bias=old.bias is not None,
        device="meta",
    )
    new.weight = old.weight  # the same Parameter objects: device, dtype, optimiser state kept
    new.bias = old.bias
    new.train(old.training)
    return new


def replace_layer_norms(module: nn.Module) -> nn.Module:
    """Swap every ``nn.LayerNorm`` inside ``module`` for :class:`LayerNorm`, in place.

    Parameters are shared, not copied, so their device, dtype and any optimiser state stay.
    Returns ``module`` (or its replacement, when ``module`` itself is an ``nn.LayerNorm``).
    """
    if type(module) is nn.LayerNorm:
        return _converted(module)
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.LayerNorm:
                setattr(parent, name, _converted(child))
    return module
