"""Naive float64 LayerNorm: the oracle every fastln kernel is held against.

Written for clarity, not speed: NumPy over the flattened trailing dimensions, straight from
the definitions (biased variance, ``1/sqrt(var + eps)``).  Arithmetic is ``np.longdouble``
(64-bit mantissa on x86) and results are float64: a float64 mean of a row near 1e4 is itself
rounded by 1e-12, which ``x - mean`` would carry into float64 tests of large offsets.
"""

from __future__ import annotations

import numpy as np


def _rows(a, k):
    a = np.asarray(a, dtype=np.longdouble)
    lead = a.shape[: a.ndim - k]
    cols = int(np.prod(a.shape[a.ndim - k:], dtype=np.int64))
    return a.reshape(int(np.prod(lead, dtype=np.int64)), cols), lead


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def forward(x, k=1, weight=None, bias=None, eps=1e-5):
    """Return ``(y, mean, rstd)`` in float64; ``k`` trailing dims are normalised."""
    x2, lead = _rows(x, k)
    mean = x2.mean(axis=1) if x2.shape[1] else np.zeros(x2.shape[0], np.longdouble)
    var = ((x2 - mean[:, None]) ** 2).mean(axis=1) if x2.shape[1] else np.full(x2.shape[0], np.nan, np.longdouble)
    rstd = 1.0 / np.sqrt(var + eps)
    y = (x2 - mean[:, None]) * rstd[:, None]
    if weight is not None:
        y = y * np.asarray(weight, np.longdouble).reshape(-1)
    if bias is not None:
        y = y + np.asarray(bias, np.longdouble).reshape(-1)
    f64 = np.float64
    return y.reshape(np.shape(x)).astype(f64), mean.reshape(lead).astype(f64), rstd.reshape(lead).astype(f64)


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def backward(grad_y, x, k=1, weight=None, eps=1e-5):
    """Return ``(grad_x, grad_weight, grad_bias)`` in float64, from exact statistics."""
    x2, lead = _rows(x, k)
    g2, _ = _rows(grad_y, k)
    n = x2.shape[1]
    mean = x2.mean(axis=1, keepdims=True)
    var = ((x2 - mean) ** 2).mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    x_hat = (x2 - mean) * rstd
    w = np.ones(n, np.longdouble) if weight is None else np.asarray(weight, np.longdouble).reshape(-1)
    wdy = g2 * w
    gx = rstd * (wdy - wdy.mean(axis=1, keepdims=True) - x_hat * (wdy * x_hat).mean(axis=1, keepdims=True))
    gw = (g2 * x_hat).sum(axis=0)
    gb = g2.sum(axis=0)
    shape = np.shape(x)[np.ndim(x) - k:]
    f64 = np.float64
    return gx.reshape(np.shape(x)).astype(f64), gw.reshape(shape).astype(f64), gb.reshape(shape).astype(f64)


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def rms_forward(x, k=1, weight=None, eps=1e-6):
    """Naive RMSNorm: ``(y, rstd)`` in float64 from long-double arithmetic."""
    x2, lead = _rows(x, k)
    ms = (x2 * x2).mean(axis=1) if x2.shape[1] else np.full(x2.shape[0], np.nan, np.longdouble)
    rstd = 1.0 / np.sqrt(ms + eps)
    y = x2 * rstd[:, None]
    if weight is not None:
        y = y * np.asarray(weight, np.longdouble).reshape(-1)
    return y.reshape(np.shape(x)).astype(np.float64), rstd.reshape(lead).astype(np.float64)


@np.errstate(invalid="ignore", divide="ignore", over="ignore")
def rms_backward(grad_y, x, k=1, weight=None, eps=1e-6):
    """Naive RMSNorm backward: ``(grad_x, grad_weight)`` in float64, straight from
    ``dx = rstd * (w*dy - x_hat * mean(w*dy*x_hat))``."""
    x2, _ = _rows(x, k)
    g2, _ = _rows(grad_y, k)
    n = x2.shape[1]
    rstd = 1.0 / np.sqrt((x2 * x2).mean(axis=1, keepdims=True) + eps)
    x_hat = x2 * rstd
    w = np.ones(n, np.longdouble) if weight is None else np.asarray(weight, np.longdouble).reshape(-1)
    wdy = g2 * w
    gx = rstd * (wdy - x_hat * (wdy * x_hat).mean(axis=1, keepdims=True))
    gw = (g2 * x_hat).sum(axis=0)
    shape = np.shape(x)[np.ndim(x) - k:]
    return gx.reshape(np.shape(x)).astype(np.float64), gw.reshape(shape).astype(np.float64)


def lane_sums_f32(x, p, lanes=16, unroll=4, fused=True):
    """``(sum(d), sum(d*d))``, ``d = float32(x - p)``, summed in float32 in the order
    ``fastln.cpu._lanes.shifted_sums_f32`` states, one element at a time: element ``k`` into
    lane ``k % lanes`` of accumulator ``(k // lanes) % unroll``; then ``(a0 + a1) + (a2 + a3)``
    and the lanes folded by halving.  ``fused``: ``q + d*d`` rounded once (an FMA; the
    float64 product of two float32 numbers is exact), else the product rounded first."""
    f32 = np.float32
    s = np.zeros((unroll, lanes), f32)
    q = np.zeros((unroll, lanes), f32)
    for k, xk in enumerate(np.asarray(x, f32)):
        u, lane = (k // lanes) % unroll, k % lanes
        d = f32(xk - f32(p))
        s[u, lane] = f32(s[u, lane] + d)
        q[u, lane] = f32(np.float64(q[u, lane]) + np.float64(d) * np.float64(d)) if fused else f32(q[u, lane] + f32(d * d))

    def total(acc):
        pairs = list(acc)
        while len(pairs) > 1:
            pairs = [pairs[i] + pairs[i + 1] for i in range(0, len(pairs), 2)]
        v = pairs[0]
        while v.size > 1:
            v = v[: v.size // 2] + v[v.size // 2 :]
        return v[0]

    return total(s), total(q)
