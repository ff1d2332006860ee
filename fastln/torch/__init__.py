"""The PyTorch bridge: fastln's kernels behind ``F.layer_norm``/``F.rms_norm``'s and
``nn.LayerNorm``/``nn.RMSNorm``'s APIs.

Layers, each obvious by name:

* ``_glue``      -- torch's checks; tensors in, tensors out (CPU views, CUDA, meta);
* ``_ops``       -- ``fastln::forward`` / ``fastln::backward`` custom ops with fake kernels
  and autograd: what torch.compile, torch.export, jit.trace and TorchScript see;
* ``functional`` -- ``layer_norm``, ``rms_norm``, ``add_layer_norm``, ``add_rms_norm`` and the
  autograd Functions (vmap and jvp rules for torch.func);
* ``modules``    -- ``LayerNorm``, ``RMSNorm``, ``replace_layer_norms``, ``replace_norms``.

float16 and bfloat16 tensors are computed in float32 and rounded once.
"""

from fastln.torch import _ops  # noqa: F401  (registers torch.ops.fastln.*)
from fastln.torch.functional import (
    LayerNormFunction,
    add_layer_norm,
    add_rms_norm,
    layer_norm,
    rms_norm,
)
from fastln.torch.modules import LayerNorm, RMSNorm, replace_layer_norms, replace_norms

__all__ = [
    "layer_norm",
    "rms_norm",
    "add_layer_norm",
    "add_rms_norm",
    "LayerNorm",
    "RMSNorm",
    "LayerNormFunction",
    "replace_layer_norms",
    "replace_norms",
]
