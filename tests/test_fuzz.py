"""Hypothesis campaign with torch as the oracle: random ranks, shapes, strides, values.

CI runs the ``ci`` profile (60 examples a test); ``HYPOTHESIS_PROFILE=large`` runs 2000 and
``campaign`` 20000.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastln  # noqa: E402
import fastln.torch as ft  # noqa: E402
from tests import reference  # noqa: E402

SPECIALS = [0.0, -0.0, 1.0, 1e30, -1e30, 1e-30, np.nan, np.inf, -np.inf]


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    batch = draw(st.lists(st.integers(0, 4), min_size=0, max_size=3))
    norm = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    if draw(st.booleans()):
        norm[-1] = draw(st.integers(1, 700))
    shape = tuple(batch + norm)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = 10.0 ** draw(st.integers(-6, 6))
    offset = draw(st.sampled_from([0.0, 1.0, 1e3]))
    x = (offset + scale * rng.standard_normal(shape)).astype(dtype)
    if x.size and draw(st.booleans()):
        flat = x.reshape(-1)
        for _ in range(draw(st.integers(1, 3))):
            flat[draw(st.integers(0, x.size - 1))] = draw(st.sampled_from(SPECIALS))
    if x.ndim >= 2 and draw(st.booleans()):  # a non-contiguous view with the same values
        x = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, 0, -1)), 0, -1)
    affine = draw(st.booleans())
    bias = affine and draw(st.booleans())
    w = rng.standard_normal(tuple(norm)).astype(dtype) if affine else None
    b = rng.standard_normal(tuple(norm)).astype(dtype) if bias else None
    eps = draw(st.sampled_from([1e-5, 1e-12, 0.1, 1.0]))
    return x, tuple(norm), w, b, eps


def _close(a, b, dtype, scale=1.0):
    tol = (1e-4 if dtype == np.float32 else 1e-9) * scale
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol, equal_nan=True)


def _agree_or_better(ours, theirs, exact, dtype, scale=1.0):
    """Agree with torch, or else be at least as close as torch to the exact answer.

    torch is no exact oracle on ill-conditioned rows (std far below |mean|): the campaign
    found torch float64 giving [0.99700504, -0.99700503] for a two-element row whose exact
    answer is symmetric, and asymmetric gradients for another; fastln gave the exact ones.
    """
    try:
        _close(ours, theirs, dtype, scale)
    except AssertionError:
        ok = np.isfinite(exact)
        err_ours = np.abs(ours - exact)[ok].max(initial=0)
        err_torch = np.abs(theirs - exact)[ok].max(initial=0)
        assert err_ours <= err_torch, (err_ours, err_torch)


def _t64(a):
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


@given(cases())
def test_numpy_api_agrees_with_torch(case):
    """torch runs in float64 on the same values: its float32 kernel errs on offsets
    (hypothesis found [1000.0013, 999.99866] -> torch [0.374, -0.392], exact +-0.383)."""
    x, norm, w, b, eps = case
    y, mean, rstd = fastln.layer_norm_forward(x, norm, w, b, eps)
    ty, tmean, trstd = torch.ops.aten.native_layer_norm(_t64(x), list(norm), _t64(w), _t64(b), eps)
    ay = ty.numpy()
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ay))
    finite = np.isfinite(ay)
    scale = 1 + (0 if w is None else np.abs(w).max(initial=0)) + (0 if b is None else np.abs(b).max(initial=0))
    exact = reference.forward(x, len(norm), w, b, eps)[0]
    _agree_or_better(y[finite], ay[finite], exact[finite], x.dtype, scale=scale)
    assert mean.shape == tmean.shape[: mean.ndim]


@given(cases())
def test_torch_bridge_values_and_grads_agree_with_torch(case):
    x, norm, w, b, eps = case
    if not (np.isfinite(x).all()) or np.abs(x).max(initial=0) > 1e20:
        x = np.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0).clip(-1e6, 1e6)
    x64 = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    xs = [x64.clone().requires_grad_(), x64.clone().requires_grad_()]
    ws = [None if w is None else torch.from_numpy(w.astype(np.float64)).requires_grad_() for _ in range(2)]
    bs = [None if b is None else torch.from_numpy(b.astype(np.float64)).requires_grad_() for _ in range(2)]
    y1 = ft.layer_norm(xs[0], norm, ws[0], bs[0], eps)
    y2 = F.layer_norm(xs[1], norm, ws[1], bs[1], eps)
    exact = reference.forward(x64.numpy(), len(norm), w, b, eps)[0]
    _agree_or_better(y1.detach().numpy(), y2.detach().numpy(), exact, np.float64, scale=1e3)
    if y1.numel() == 0:
        return
    gy = torch.ones_like(y1) + torch.arange(y1.numel(), dtype=torch.float64).reshape(y1.shape) % 3
    (y1 * gy).sum().backward()
    (y2 * gy).sum().backward()
    k = len(norm)
    rgx, rgw, rgb = reference.backward(gy.numpy(), x64.numpy(), k, w, eps)
    for a, c, exact in ((xs[0], xs[1], rgx), (ws[0], ws[1], rgw), (bs[0], bs[1], rgb)):
        if a is not None:
            scale = 1e3 * (1 + float(c.grad.abs().max()))
            _agree_or_better(a.grad.numpy(), c.grad.numpy(), exact, np.float64, scale=scale)
