"""fastln: fast, accurate normalization layers (LayerNorm, RMSNorm and their fused
residual-add forms) for NumPy and PyTorch, with Numba CPU and CUDA kernels.

Public NumPy API::

    y = fastln.layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5, out=None)
    y, mean, rstd = fastln.layer_norm_forward(x, normalized_shape, weight, bias, eps)
    gx, gw, gb = fastln.layer_norm_backward(grad_y, x, mean, rstd, weight, normalized_shape)
    y = fastln.rms_norm(x, normalized_shape=None, weight=None, eps=None, out=None)
    y, rstd = fastln.rms_norm_forward(x, normalized_shape, weight, eps)
    gx, gw = fastln.rms_norm_backward(grad_y, x, rstd, weight, normalized_shape)
    y, residual_out = fastln.add_layer_norm(x, residual, normalized_shape, weight, bias, eps)
    y, residual_out = fastln.add_rms_norm(x, residual, normalized_shape, weight, eps)

The PyTorch bridge lives in :mod:`fastln.torch` (imported on demand).
"""

from fastln import _threading  # noqa: F401  (must pick the threading layer before any launch)
from fastln._api import (
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    layer_norm_backward,
    layer_norm_forward,
    rms_norm,
    rms_norm_backward,
    rms_norm_forward,
)

__version__ = "0.2.0"
__all__ = [
    "layer_norm",
    "layer_norm_forward",
    "layer_norm_backward",
    "rms_norm",
    "rms_norm_forward",
    "rms_norm_backward",
    "add_layer_norm",
    "add_rms_norm",
    "__version__",
]
