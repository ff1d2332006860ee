r"""RMSNorm's math: the mean square, and the backward's coefficient.

Per row of ``C`` elements, as ``torch.nn.RMSNorm``::

    rstd  = 1 / sqrt(sum(x**2) / C + eps)
    x_hat = x * rstd
    y     = x_hat * w

Backward, with ``wdy = w * dy``::

    c1 = sum(x_hat * wdy) / C
    dx = (wdy - x_hat * c1) * rstd
    dw = sum over rows of dy * x_hat

There is no centring, so no offset to cancel: the hazard is magnitude (1e18 squared
overflows float32), which float64 sums avoid.  The shared kernels run LayerNorm's sweeps
with a mean of zero and ``c2 = 0``; this file holds only what differs.
"""

from __future__ import annotations

import numpy as np

from fastln.cpu import _jit


@_jit.reduce
def sum_squares(xr):
    """``sum(x*x)`` in float64: one vectorised sweep (float32 squares would overflow at 2e19)."""
    q = 0.0
    for k in range(xr.shape[0]):
        d = np.float64(xr[k])
        q += d * d
    return q


@_jit.inline
def backward_coefficients(s_gd, r, inv_c):
    """``c1`` from ``sum(wdy * x)``: ``corr`` and ``c2`` are zero without centring."""
    return s_gd * r * inv_c
