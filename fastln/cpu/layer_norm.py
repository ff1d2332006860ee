r"""LayerNorm's math: centred statistics and the backward's coefficients.

Per row of ``C`` elements (biased variance, as ``torch.nn.LayerNorm``)::

    mean  = sum(x) / C
    var   = sum((x - mean)**2) / C
    rstd  = 1 / sqrt(var + eps)
    x_hat = (x - mean) * rstd
    y     = x_hat * w + b

Backward, with ``wdy = w * dy``::

    c1 = sum(x_hat * wdy) / C
    c2 = sum(wdy) / C
    dx = (wdy - (x_hat * c1 + c2)) * rstd
    dw = sum over rows of dy * x_hat
    db = sum over rows of dy

Statistics read the row once: blocks of ``BLOCK`` elements are summed in float64, shifted by
the block's first element, and merged with Chan's formula (see :func:`row_moments`).
Everything else (the output sweep, the backward sweep, parameter gradients, threading) is
shared with the other norms in :mod:`fastln.cpu.kernels`.
"""

from __future__ import annotations

import numpy as np

from fastln._config import BLOCK
from fastln.cpu import _jit


@_jit.reduce
def _block_sums(blk):
    """``(p, sum(d), sum(d*d))`` with ``d = x - p``, ``p = blk[0]``: one vectorised sweep."""
    p = np.float64(blk[0])
    s = 0.0
    q = 0.0
    for k in range(blk.shape[0]):
        d = np.float64(blk[k]) - p
        s += d
        q += d * d
    return p, s, q


@_jit.inline
def chan_merge(count, mean_d, m2, nb, block_mean, block_m2):
    """Chan et al.: merge ``(count, mean_d, m2)`` with ``(nb, block_mean, block_m2)``."""
    total = count + nb
    delta = block_mean - mean_d
    return total, mean_d + delta * (nb / total), m2 + block_m2 + delta * delta * (count * nb / total)


@_jit.inline
def row_moments(xr):
    """Moments of one row: ``(pivot, mean - pivot, M2)``, all float64.

    Each block of ``BLOCK`` elements is summed once, shifted by its first element ``p``:
    ``s = sum(d)``, ``q = sum(d*d)`` with ``d = x - p``, so ``M2_block = q - s*s/nb``.
    Shifting by a member of the block bounds the cancellation: ``p``'s own deviation is a
    term of ``M2_block``, so ``(mean_block - p)**2 <= M2_block`` and
    ``q = M2_block + nb * (mean_block - p)**2 <= (1 + nb) * M2_block``; the subtraction
    loses at most a factor ``1 + nb`` in float64 (about 3e-11 relative for nb = 512, far
    below float32's 6e-8).  Blocks are merged with Chan et al.'s formula, and everything is
    float64: rows of 1e18 or with a mean of 1e4 and a std of 1e-2 lose nothing.  Loops run
    over 0-based block views: with ``range(start, stop)`` Numba's negative-index wraparound
    hides the unit stride from LLVM and it emits gathers.
    """
    cols = xr.shape[0]
    if cols <= BLOCK:  # one block: no view to make, no merge (short rows are common)
        if cols == 0:
            return 0.0, 0.0, 0.0
        p, s, q = _block_sums(xr)
        return p, s / cols, max(q - s * (s / cols), 0.0)
    pivot = np.float64(xr[0])
    count = 0.0
    mean_d = 0.0  # mean of (x - pivot) over the blocks merged so far
    m2 = 0.0
    for start in range(0, cols, BLOCK):
        blk = xr[start : start + BLOCK]
        nb = blk.shape[0]
        p, s, q = _block_sums(blk)
        count, mean_d, m2 = chan_merge(count, mean_d, m2, nb, (p - pivot) + s / nb, q - s * (s / nb))
    return pivot, mean_d, max(m2, 0.0)


@_jit.inline
def backward_coefficients(s_d, s_g, s_gd, r, inv_c):
    """``(corr, c1, c2)`` from the row sums ``sum(x - m)``, ``sum(wdy)``, ``sum(wdy*(x - m))``.

    ``m`` is the stored mean (rounded to float32 for float32 data); ``corr = sum(x - m)/C``
    refines it, so that ``x_hat = (x - m - corr) * rstd`` stays exact for large offsets.
    """
    corr = s_d * inv_c
    return corr, (s_gd - corr * s_g) * r * inv_c, s_g * inv_c
