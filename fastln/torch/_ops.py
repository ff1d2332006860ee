"""``torch.library`` custom ops: what torch.compile, torch.export, ``torch.jit.trace`` and
TorchScript see.

``fastln::forward(x, residual?, normalized_shape, weight?, bias?, eps, centered)``
    -> ``(y, residual_out, mean, rstd)``; residual_out is empty without a residual and
    mean is empty for RMSNorm (``centered=False``).
``fastln::backward(grad_y, grad_residual_out?, h, mean, rstd, weight?, normalized_shape,
    centered, need_params)`` -> ``(grad_h, grad_weight, grad_bias)``: grad_h in h's dtype,
    the parameter gradients in the compute dtype (float32 for half types).

Fake kernels return contiguous tensors of the same shapes and dtypes as the real ones
(``torch.library.opcheck`` tests both on many layouts).  The autograd formula casts the
gradients to each input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastln.torch import _glue

_DOUBLE_BACKWARD = (
    "fastln.torch: double backward (gradients of gradients) is not supported by fastln's "
    "kernels; use torch.nn.functional.layer_norm / rms_norm for that"
)


@torch.library.custom_op("fastln::forward", mutates_args=())
def forward_op(
    x: Tensor,
    residual: Tensor | None,
    normalized_shape: list[int],
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    centered: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    norm, rows, cols = _glue.check(x, tuple(normalized_shape), weight, bias, residual, centered, "fastln::forward")
    return _glue.forward_impl(x, residual, norm, rows, cols, weight, bias, eps, centered)


@forward_op.register_fake
def _forward_fake(x, residual, normalized_shape, weight, bias, eps, centered):
    norm, _, _ = _glue.check(x, tuple(normalized_shape), weight, bias, residual, centered, "fastln::forward")
    return _glue.empty_outputs(x, norm, residual, centered)


@torch.library.custom_op("fastln::backward", mutates_args=())
def backward_op(
    grad_y: Tensor,
    grad_residual: Tensor | None,
    h: Tensor,
    mean: Tensor,
    rstd: Tensor,
    weight: Tensor | None,
    normalized_shape: list[int],
    centered: bool,
    need_params: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    norm = tuple(normalized_shape)
    rows, cols = _glue.rows_cols(tuple(h.shape), norm)
    return _glue.backward_impl(grad_y, grad_residual, h, mean, rstd, weight, norm, rows, cols, centered, need_params)


@backward_op.register_fake
def _backward_fake(grad_y, grad_residual, h, mean, rstd, weight, normalized_shape, centered, need_params):
    cdt = _glue.compute_dtype(h.dtype)
    pshape = tuple(normalized_shape) if need_params else (0,)
    return h.new_empty(h.shape), h.new_empty(pshape, dtype=cdt), h.new_empty(pshape, dtype=cdt)


def _setup_context(ctx, inputs, output):
    x, residual, normalized_shape, weight, bias, _eps, centered = inputs
    _, h, mean, rstd = output
    ctx.save_for_backward(h if residual is not None else x, mean, rstd, weight)
    ctx.normalized_shape = list(normalized_shape)
    ctx.centered = centered
    ctx.has_residual = residual is not None
    ctx.dtypes = (x.dtype, None if residual is None else residual.dtype,
                  None if weight is None else weight.dtype, None if bias is None else bias.dtype)
    ctx.mark_non_differentiable(mean, rstd)


def cast_grads(needs, dtypes, gx, gw, gb):
    """Gradients for ``(x, residual, weight, bias)`` in each input's dtype, None where unneeded."""
    need_x, need_r, need_w, need_b = needs
    x_dt, r_dt, w_dt, b_dt = dtypes
    return (
        _as(gx, x_dt) if need_x else None,
        _as(gx, r_dt) if need_r and r_dt is not None else None,
        _as(gw, w_dt) if need_w and w_dt is not None else None,
        _as(gb, b_dt) if need_b and b_dt is not None else None,
    )


def _as(t, dtype):
    return t if t.dtype == dtype else t.to(dtype)  # a no-op .to still costs ~0.5 us


def _forward_backward(ctx, grad_y, grad_residual, _grad_mean, _grad_rstd):
    h, mean, rstd, weight = ctx.saved_tensors
    need_x, need_r, _, need_w, need_b, _, _ = ctx.needs_input_grad
    gres = grad_residual if ctx.has_residual else None
    gx, gw, gb = backward_op(
        grad_y, gres, h, mean, rstd, weight, ctx.normalized_shape, ctx.centered, bool(need_w or need_b)
    )
    gx, gr, gw, gb = cast_grads((need_x, need_r, need_w, need_b), ctx.dtypes, gx, gw, gb)
    return gx, gr, None, gw, gb, None, None


def _no_double_backward(ctx, *grads):
    raise RuntimeError(_DOUBLE_BACKWARD)


def _backward_setup(ctx, inputs, output):
    pass


torch.library.register_autograd(forward_op, _forward_backward, setup_context=_setup_context)
torch.library.register_autograd(backward_op, _no_double_backward, setup_context=_backward_setup)
