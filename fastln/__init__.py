"""fastln: fast, accurate LayerNorm for NumPy and PyTorch, with Numba CPU and CUDA kernels.

Public NumPy API::

    y = fastln.layer_norm(x, normalized_shape=None, weight=None, bias=None, eps=1e-5)
    y, mean, rstd = fastln.layer_norm_forward(x, normalized_shape, weight, bias, eps)
    gx, gw, gb = fastln.layer_norm_backward(grad_y, x, mean, rstd, weight, normalized_shape)

The PyTorch bridge lives in :mod:`fastln.torch` (imported on demand).
"""

from fastln import _threading  # noqa: F401  (must pick the threading layer before any launch)
from fastln._api import layer_norm, layer_norm_backward, layer_norm_forward

__version__ = "0.1.0"
__all__ = ["layer_norm", "layer_norm_forward", "layer_norm_backward", "__version__"]
