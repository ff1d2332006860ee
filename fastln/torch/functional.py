"""The functional API (``F.layer_norm``'s and ``F.rms_norm``'s signatures) and its autograd.

Three paths, one implementation (``_glue``):

* eager, nothing needs a gradient: the kernels directly (no autograd node at all);
* eager with autograd, and torch.func: :class:`_NormFunction`, an ``autograd.Function``
  with ``setup_context``, a ``vmap`` rule (a batch dimension outside the normalised dims is
  just more rows) and a ``jvp`` for forward-mode AD;
* torch.compile, torch.export and ``torch.jit.trace``: the ``fastln::forward`` custom op,
  which those systems record and compile (TorchScript modules call it too).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from fastln.torch import _fast, _glue, _ops

__all__ = ["layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "LayerNormFunction"]

_transforms_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


_is_compiling = torch.compiler.is_compiling
_is_tracing = torch._C._is_tracing
_grad_enabled = torch.is_grad_enabled

#: The compiled eager fast path (``_native.cpp``), or None (not built, or FASTLN_NATIVE=0).
_native = _fast.norm


def _plain_eager() -> bool:
    """True outside torch.compile/export, tracing, torch.func transforms and forward-mode
    AD: the calls the compiled fast path may take (it declines the rest of what it does not
    know by returning None)."""
    return not (_is_compiling() or _is_tracing() or _transforms_active()) and _fwad._current_level < 0


def _composite_grads(gy, gres, h, eps, weight, norm, centered, need_params):
    """The backward in differentiable torch ops, statistics recomputed from ``h``: what runs
    under functorch transforms (``jacrev`` vmaps the backward over wrapped tensors the
    kernels cannot read) and when a graph of the gradient is asked for (double backward)."""
    cdt = _glue.compute_dtype(h.dtype)
    dims = tuple(range(-len(norm), 0))
    hc, gyc = h.to(cdt), gy.to(cdt)
    if centered:
        centred = hc - hc.mean(dims, keepdim=True)
        r = torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)
        x_hat = centred * r
    else:
        r = torch.rsqrt(hc.square().mean(dims, keepdim=True) + eps)
        x_hat = hc * r
    wdy = gyc * weight.to(cdt) if weight is not None else gyc
    gx = wdy - x_hat * (wdy * x_hat).mean(dims, keepdim=True)
    if centered:
        gx = gx - wdy.mean(dims, keepdim=True)
    gx = gx * r
    if gres is not None:
        gx = gx + gres.to(cdt)
    if not need_params:
        return gx, None, None, x_hat
    lead = tuple(range(gyc.dim() - len(norm)))
    return gx, (gyc * x_hat).sum(lead), gyc.sum(lead), x_hat


def _gradients(grad_y, gres, h, mean, rstd, weight, norm, rows, cols, eps, centered, needs, dtypes, composite):
    """Every Function's backward: gradients for ``(x, residual, weight, bias)`` in each
    input's dtype (None where ``needs`` says no).  ``composite``: in differentiable torch ops
    (create_graph=True, or functorch-wrapped tensors the kernels cannot read); else the
    fused kernels."""
    need_params = bool(needs[2] or needs[3])
    if composite:
        gx, gw, gb, _ = _composite_grads(grad_y, gres, h, eps, weight, norm, centered, need_params)
    else:
        gx, gw, gb = _glue.backward_impl(grad_y, gres, h, mean, rstd, weight, norm, rows, cols, centered, need_params)
    return _ops.cast_grads(needs, dtypes, gx, gw, gb)


class _NormFunction(torch.autograd.Function):
    """Any norm, any residual: ``apply(x, residual, norm, weight, bias, eps, centered)``
    -> ``(y, residual_out, mean, rstd)`` (residual_out/mean empty when absent)."""

    @staticmethod
    def forward(x, residual, norm, weight, bias, eps, centered):
        # Arguments were checked by the caller (_run), once; the vmap rule passes checked
        # arguments with a batch dimension moved to the front.
        rows, cols = _glue.rows_cols(tuple(x.shape), norm)
        return _glue.forward_impl(x, residual, norm, rows, cols, weight, bias, eps, centered)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, residual, norm, weight, bias, _eps, centered = inputs
        _, h, mean, rstd = output
        saved = (h if residual is not None else x, mean, rstd, weight)
        ctx.save_for_backward(*saved)
        # jvp needs only h and the weight (it recomputes the statistics in torch ops); the
        # non-differentiable mean/rstd must not be saved for forward-mode AD.
        ctx.jvp_h_weight = (saved[0], weight)
        ctx.norm = norm
        ctx.eps = _eps
        ctx.centered = centered
        ctx.has_residual = residual is not None
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype,
                      None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        # One call: each call to mark_non_differentiable replaces the previous set.
        ctx.mark_non_differentiable(*((mean, rstd) if residual is not None else (h, mean, rstd)))

    @staticmethod
    def backward(ctx, grad_y, grad_h, _grad_mean, _grad_rstd):
        h, mean, rstd, weight = ctx.saved_tensors
        need_x, need_r, _, need_w, need_b, _, _ = ctx.needs_input_grad
        gres = grad_h if ctx.has_residual else None
        composite = torch.is_grad_enabled() or any(t is not None and _is_wrapped(t) for t in (grad_y, gres, h, weight))
        rows, cols = _glue.rows_cols(tuple(h.shape), ctx.norm)
        gx, gr, gw, gb = _gradients(grad_y, gres, h, mean, rstd, weight, ctx.norm, rows, cols, ctx.eps,
                                    ctx.centered, (need_x, need_r, need_w, need_b), ctx.dtypes, composite)
        return gx, gr, None, gw, gb, None, None

    @staticmethod
    def jvp(ctx, dx, dres, _dnorm, dw, db, _deps, _dcentered):
        """Forward-mode AD: ``d(x_hat)`` is the backward of the unscaled norm applied to the
        tangent (the Jacobian of ``x_hat`` is symmetric), then ``dy = d(x_hat)*w + x_hat*dw + db``."""
        h, weight = ctx.jvp_h_weight
        norm = ctx.norm
        cdt = _glue.compute_dtype(h.dtype)
        dh = dx if dx is not None else torch.zeros_like(h)
        if ctx.has_residual and dres is not None:
            dh = dh + dres
        d_xhat, _, _, x_hat = _composite_grads(dh, None, h, ctx.eps, None, norm, ctx.centered, False)
        dy = d_xhat * weight.to(cdt) if weight is not None else d_xhat
        if dw is not None:
            dy = dy + x_hat * dw.to(cdt)
        if db is not None:
            dy = dy + db.to(cdt)
        dh_out = dh.to(h.dtype) if ctx.has_residual else None
        return dy.to(ctx.dtypes[0]), dh_out, None, None

    @staticmethod
    def vmap(info, in_dims, x, residual, norm, weight, bias, eps, centered):
        """A batch dimension outside the normalised dims is more rows; batched weight or
        bias are applied after an unscaled norm with broadcasting torch ops."""
        x_d, r_d, _, w_d, b_d, _, _ = in_dims
        size = info.batch_size

        def front(t, d):
            return t.movedim(d, 0) if d is not None else t.expand(size, *t.shape)

        xb = front(x, x_d)
        rb = front(residual, r_d) if residual is not None else None
        if w_d is None and b_d is None:
            y, h, mean, rstd = _NormFunction.apply(xb, rb, norm, weight, bias, eps, centered)
        else:
            y, h, mean, rstd = _NormFunction.apply(xb, rb, norm, None, None, eps, centered)
            pshape = (size,) + (1,) * (xb.dim() - 1 - len(norm)) + tuple(norm)
            if weight is not None:
                y = y * (front(weight, w_d).reshape(pshape))
            if bias is not None:
                y = y + (front(bias, b_d).reshape(pshape))
            y = y.to(x.dtype)
        return (y, h, mean, rstd), (0, 0 if residual is not None else None, 0 if centered else None, 0)


class _EagerNorm(torch.autograd.Function):
    """Plain eager autograd (no torch.func transform, no forward-mode AD): an old-style
    Function, whose ``apply`` skips the signature binding torch does for ``setup_context``
    Functions (~10 us a call), with only ``y`` (and ``residual_out``) as outputs.
    ``apply(x, residual, weight, bias, norm, rows, cols, eps, centered)``; arguments
    checked by the caller."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, norm, rows, cols, eps, centered):
        y, h, mean, rstd = _glue.forward_impl(x, residual, norm, rows, cols, weight, bias, eps, centered, "eager")
        ctx.save_for_backward(h if residual is not None else x, mean, rstd, weight)
        ctx.args = (norm, rows, cols, eps, centered, residual is not None)
        ctx.dtypes = (x.dtype, None if residual is None else residual.dtype,
                      None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return (y, h) if residual is not None else y

    @staticmethod
    def backward(ctx, grad_y, grad_h=None):
        h, mean, rstd, weight = ctx.saved_tensors
        norm, rows, cols, eps, centered, has_residual = ctx.args
        gres = grad_h if has_residual else None
        gx, gr, gw, gb = _gradients(grad_y, gres, h, mean, rstd, weight, norm, rows, cols, eps, centered,
                                    ctx.needs_input_grad[:4], ctx.dtypes, torch.is_grad_enabled())
        return gx, gr, gw, gb, None, None, None, None, None


def _run(x, residual, normalized_shape, weight, bias, eps, centered, fn):
    """One call of any norm: ``(y, residual_out)``.

    Paths, cheapest first: nothing needs a gradient -> the kernels alone (no statistics
    kept); plain eager autograd -> :class:`_EagerNorm`; torch.func transforms or forward-mode
    AD -> :class:`_NormFunction`; compile/export/trace -> the custom op.  All compute with
    the same kernels, so they agree bitwise."""
    if _is_compiling() or _is_tracing():
        y, h, _, _ = _ops.forward_op(x, residual, list(normalized_shape), weight, bias, eps, centered)
        return y, h
    norm, rows, cols = _glue.check(x, normalized_shape, weight, bias, residual, centered, fn)
    if _fwad._current_level >= 0 or _transforms_active():
        y, h, _, _ = _NormFunction.apply(x, residual, normalized_shape, weight, bias, eps, centered)
        return y, h
    if not (_grad_enabled() and (x.requires_grad or (weight is not None and weight.requires_grad)
                                 or (bias is not None and bias.requires_grad)
                                 or (residual is not None and residual.requires_grad))):
        y, h, _, _ = _glue.forward_impl(x, residual, norm, rows, cols, weight, bias, eps, centered, stats=False)
        return y, h
    if residual is not None:
        return _EagerNorm.apply(x, residual, weight, bias, norm, rows, cols, eps, centered)
    return _EagerNorm.apply(x, None, weight, bias, norm, rows, cols, eps, centered), None


def _input_dtype(x):
    return x.dtype if isinstance(x, Tensor) else None


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
        ``(*, *normalized_shape)``; float16, bfloat16, float32 or float64; CPU, CUDA or meta.
    normalized_shape : int or sequence of int
        Trailing dimensions to normalise over.
    weight, bias : Tensor or None
        Affine parameters of shape ``normalized_shape``; the input's dtype, or float32 for
        float16/bfloat16 input (torch's mixed-precision rule).
    eps : float
        Added to the variance inside the square root.

    Returns
    -------
    Tensor
        Same shape and dtype as ``input``, contiguous; differentiable in input, weight and
        bias (double backward runs in torch ops), and usable under torch.compile, torch.export,
        torch.jit.trace and torch.func (vmap, grad, jacrev, jacfwd, jvp).
    """
    if _native is not None and _plain_eager():
        y = _native(input, None, normalized_shape, weight, bias, eps, True)
        if y is not None:
            return y
    norm = _glue.shape_tuple(normalized_shape, "layer_norm")
    return _run(input, None, norm, weight, bias, _glue.eps_value(eps, "layer_norm"), True, "layer_norm")[0]


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """``torch.nn.functional.rms_norm`` computed by fastln's kernels.

    ``y = x / sqrt(mean(x**2) + eps) * weight``, computed in float32 for half types and
    rounded once.  ``eps=None`` is torch's default, ``torch.finfo`` of the computation
    dtype (float32's for half types).  See :func:`layer_norm` for the rest.
    """
    if _native is not None and _plain_eager():
        y = _native(input, None, normalized_shape, weight, None, eps, False)
        if y is not None:
            return y
    norm = _glue.shape_tuple(normalized_shape, "rms_norm")
    eps = _glue.eps_value(eps, "rms_norm", _input_dtype(input) or torch.float32)
    return _run(input, None, norm, weight, None, eps, False, "rms_norm")[0]


def add_layer_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """The pre-norm block ``h = x + residual; y = layer_norm(h)`` reading both once.

    Returns
    -------
    y, residual_out : Tensor
        LayerNorm of ``h``, and ``h`` itself in ``x``'s dtype; both differentiable
        (``x`` and ``residual`` each receive ``grad_residual_out + d(norm)/dh``).
    """
    if residual is None:
        raise TypeError("add_layer_norm(): argument 'residual' must be Tensor, not NoneType")
    if _native is not None and _plain_eager():
        out = _native(x, residual, normalized_shape, weight, bias, eps, True)
        if out is not None:
            return out
    norm = _glue.shape_tuple(normalized_shape, "add_layer_norm")
    return _run(x, residual, norm, weight, bias, _glue.eps_value(eps, "add_layer_norm"), True, "add_layer_norm")


def add_rms_norm(
    x: Tensor,
    residual: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> tuple[Tensor, Tensor]:
    """The pre-norm block ``h = x + residual; y = rms_norm(h)`` reading both once.

    Returns
    -------
    y, residual_out : Tensor
        RMSNorm of ``h``, and ``h`` in ``x``'s dtype.
    """
    if residual is None:
        raise TypeError("add_rms_norm(): argument 'residual' must be Tensor, not NoneType")
    if _native is not None and _plain_eager():
        out = _native(x, residual, normalized_shape, weight, None, eps, False)
        if out is not None:
            return out
    norm = _glue.shape_tuple(normalized_shape, "add_rms_norm")
    eps = _glue.eps_value(eps, "add_rms_norm", _input_dtype(x) or torch.float32)
    return _run(x, residual, norm, weight, None, eps, False, "add_rms_norm")


class LayerNormFunction(torch.autograd.Function):
    """LayerNorm as a ``torch.autograd.Function``: ``LayerNormFunction.apply(x, shape, w, b, eps)``.

    Forward saves ``x``, ``mean``, ``rstd`` and ``weight``; backward runs fastln's fused
    backward and returns gradients only for the inputs that need them.  For torch.func
    transforms, use :func:`layer_norm` (its Function has vmap and jvp rules).
    """

    @staticmethod
    def forward(ctx, input, normalized_shape, weight=None, bias=None, eps=1e-5):
        norm = _glue.shape_tuple(normalized_shape, "LayerNormFunction")
        _, rows, cols = _glue.check(input, norm, weight, bias, None, True, "LayerNormFunction")
        ctx.eps = _glue.eps_value(eps, "LayerNormFunction")
        y, _, mean, rstd = _glue.forward_impl(input, None, norm, rows, cols, weight, bias, ctx.eps, True)
        ctx.save_for_backward(input, mean, rstd, weight)
        ctx.norm = norm
        ctx.rows_cols = (rows, cols)
        ctx.dtypes = (input.dtype, None, None if weight is None else weight.dtype,
                      None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, mean, rstd, weight = ctx.saved_tensors
        need_x, _, need_w, need_b, _ = ctx.needs_input_grad
        rows, cols = ctx.rows_cols
        gx, _, gw, gb = _gradients(grad_y, None, x, mean, rstd, weight, ctx.norm, rows, cols, ctx.eps, True,
                                   (need_x, False, need_w, need_b), ctx.dtypes, torch.is_grad_enabled())
        return gx, None, gw, gb, None
