"""Drop-in modules and whole-model swaps.

``LayerNorm`` and ``RMSNorm`` subclass ``nn.LayerNorm`` / ``nn.RMSNorm``: same constructor,
parameters, state_dict keys, ``extra_repr`` and ``reset_parameters``; only ``forward``
differs.  Their ``forward`` is TorchScript-compatible (it calls the ``fastln::forward`` op
when scripted).

``replace_norms`` swaps modules *in place* by changing their class, so the module object,
its parameters, buffers, hooks (forward, pre-forward, backward, state-dict) and any
attributes stay exactly as they were.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from fastln.torch import functional as _F

__all__ = ["LayerNorm", "RMSNorm", "replace_layer_norms", "replace_norms"]

_log = logging.getLogger("fastln")


class LayerNorm(nn.LayerNorm):
    """Drop-in ``torch.nn.LayerNorm`` computed by fastln (a subclass: ``isinstance`` holds,
    pretrained weights load unchanged)."""

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return torch.ops.fastln.forward(
                input, None, self.normalized_shape, self.weight, self.bias, self.eps, True
            )[0]
        return _F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """Drop-in ``torch.nn.RMSNorm`` computed by fastln (a subclass; ``eps=None`` means
    ``torch.finfo(input.dtype).eps`` of the computation dtype, as torch)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            eps = self.eps
            if eps is None:
                eps = 2.220446049250313e-16 if x.dtype == torch.float64 else 1.1920928955078125e-07
            return torch.ops.fastln.forward(x, None, self.normalized_shape, self.weight, None, eps, False)[0]
        return _F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


# ---------------------------------------------------------------------------------------
# Hugging Face RMSNorm modules: each keeps its own casting order for half types
# ---------------------------------------------------------------------------------------
def _llama_forward(self, hidden_states: Tensor) -> Tensor:
    """LlamaRMSNorm (Mistral, Qwen2...): normalise in float32, cast to the input dtype,
    then multiply by the weight (in the weight's dtype)."""
    eps = float(self.variance_epsilon)
    if hidden_states.dtype == self.weight.dtype and hidden_states.dtype in (torch.float32, torch.float64):
        return _F.rms_norm(hidden_states, hidden_states.shape[-1:], self.weight, eps)
    return self.weight * _F.rms_norm(hidden_states, hidden_states.shape[-1:], None, eps)


def _gemma_forward(self, x: Tensor) -> Tensor:
    """GemmaRMSNorm: everything in float32 with a ``(1 + weight)`` scale, cast once."""
    eps = float(self.eps)
    scale = 1.0 + self.weight.float()
    if x.dtype == torch.float64:
        scale = scale.double()
    return _F.rms_norm(x, x.shape[-1:], scale, eps)


def _hf_style(module: nn.Module) -> str | None:
    """``"llama"``, ``"gemma"`` or None for a module that is not a known HF RMSNorm."""
    name = type(module).__name__
    if not name.endswith("RMSNorm") or not isinstance(getattr(module, "weight", None), torch.Tensor):
        return None
    if module.weight.dim() != 1:
        return None
    if name.startswith("Gemma") and not name.startswith("Gemma3n") and hasattr(module, "eps"):
        return "gemma"
    if hasattr(module, "variance_epsilon"):
        return "llama"
    return None


_HF_CLASSES: dict = {}


def _hf_class(cls: type, style: str) -> type:
    key = (cls, style)
    if key not in _HF_CLASSES:
        forward = _gemma_forward if style == "gemma" else _llama_forward
        _HF_CLASSES[key] = type(f"Fastln{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _HF_CLASSES[key]


def _stock_forward(module: nn.Module, base: type) -> bool:
    """True for ``base`` itself and subclasses that do not override ``forward``."""
    return isinstance(module, base) and type(module).forward is base.forward


def _swap_class(module: nn.Module, include_rms: bool) -> bool:
    cls = type(module)
    if cls in (LayerNorm, RMSNorm) or cls in _HF_CLASSES.values():
        return False
    if _stock_forward(module, nn.LayerNorm):
        module.__class__ = LayerNorm if cls is nn.LayerNorm else _subclass(cls, LayerNorm)
        return True
    if not include_rms:
        return False
    if _stock_forward(module, nn.RMSNorm):
        module.__class__ = RMSNorm if cls is nn.RMSNorm else _subclass(cls, RMSNorm)
        return True
    style = _hf_style(module)
    if style is not None:
        module.__class__ = _hf_class(cls, style)
        return True
    return False


_SUBCLASSES: dict = {}


def _subclass(cls: type, fast: type) -> type:
    """A user's subclass of nn.LayerNorm (not overriding forward) with fastln's forward."""
    if cls not in _SUBCLASSES:
        _SUBCLASSES[cls] = type(f"Fastln{cls.__name__}", (fast, cls), {"__module__": __name__})
    return _SUBCLASSES[cls]


def _replace(module: nn.Module, include_rms: bool, return_count: bool):
    count = sum(_swap_class(m, include_rms) for m in module.modules())
    _log.info("fastln: swapped %d norm modules in %s", count, type(module).__name__)
    return (module, count) if return_count else module


def replace_layer_norms(module: nn.Module, *, return_count: bool = False):
    """Swap every ``nn.LayerNorm`` (and subclass that keeps its ``forward``) for fastln's.

    The swap is in place: each module keeps its identity, parameters, buffers and hooks;
    only its class changes.  Subclasses that override ``forward`` are left alone.

    Parameters
    ----------
    module : nn.Module
        The model (or a single norm).
    return_count : bool, optional
        Also return how many modules were swapped (it is logged on the ``fastln`` logger
        at INFO level either way).

    Returns
    -------
    nn.Module or (nn.Module, int)
        ``module`` itself, and the count when asked for.

    Notes
    -----
    ``nn.TransformerEncoderLayer``'s inference fast path (eval mode under no_grad) calls a
    fused kernel that bypasses every norm module, fastln's included.
    """
    return _replace(module, False, return_count)


def replace_norms(module: nn.Module, *, return_count: bool = False):
    """Swap ``nn.LayerNorm``, ``nn.RMSNorm`` and Hugging Face RMSNorm modules for fastln's.

    Hugging Face modules recognised: Llama-style (``LlamaRMSNorm``, ``MistralRMSNorm``,
    ``Qwen2RMSNorm``... with ``weight`` and ``variance_epsilon``: normalise in float32, cast
    to the input dtype, multiply by the weight) and Gemma-style (``GemmaRMSNorm``,
    ``Gemma2RMSNorm``...: ``(1 + weight)`` in float32, cast once).  Each replaced module
    keeps its own casting order.  See :func:`replace_layer_norms` for the rest.
    """
    return _replace(module, True, return_count)

