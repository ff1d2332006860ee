"""Fused backward against the float64 reference and torch; determinism across threads."""

import numba
import numpy as np
import pytest

import fastln
from fastln import _config
from tests import reference


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-11)])
@pytest.mark.parametrize(
    "shape,k", [((0, 8), 1), ((2, 0, 5), 1), ((1, 1), 1), ((2, 3), 1), ((4, 5, 6), 2), ((300, 257), 1), ((2000, 64), 1), ((3, 70000), 1)]
)
@pytest.mark.parametrize("affine", [False, True])
def test_backward_matches_reference(rng, shape, k, dtype, tol, affine):
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    _, mean, rstd = fastln.layer_norm_forward(x, norm, w)
    gx, gw, gb = fastln.layer_norm_backward(g, x, mean, rstd, w, norm)
    rgx, rgw, rgb = reference.backward(g, x, k, w)
    assert gx.shape == x.shape and gx.dtype == x.dtype
    scale = np.abs(rgx).max(initial=0) + 1
    np.testing.assert_allclose(gx, rgx, rtol=0, atol=tol * scale)
    if affine:
        assert gw.shape == norm and gw.dtype == x.dtype
        np.testing.assert_allclose(gw, rgw, rtol=0, atol=tol * (np.abs(rgw).max(initial=0) + np.sqrt(x.size)))
    else:
        assert gw is None  # no weight, no grad_weight; grad_bias never needs the weight
    assert gb.shape == norm and gb.dtype == x.dtype
    np.testing.assert_allclose(gb, rgb, rtol=0, atol=tol * (np.abs(rgb).max(initial=0) + np.sqrt(x.size)))


def test_backward_large_offset_uses_refined_mean(rng):
    """A float32 mean of a row at 1e4 is rounded by 5e-4 (0.05 std); backward must not care."""
    x = (1e4 + 1e-2 * rng.standard_normal((16, 512))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, mean, rstd = fastln.layer_norm_forward(x)
    gx, _, _ = fastln.layer_norm_backward(g, x, mean, rstd)
    rgx = reference.backward(g, x)[0]
    assert np.abs(gx - rgx).max() <= 2e-5 * np.abs(rgx).max()


def test_backward_accepts_torch_keepdim_stats(rng):
    x = rng.standard_normal((6, 10))
    g = rng.standard_normal((6, 10))
    _, mean, rstd = fastln.layer_norm_forward(x)
    a = fastln.layer_norm_backward(g, x, mean, rstd)[0]
    b = fastln.layer_norm_backward(g, x, mean[:, None], rstd[:, None])[0]
    np.testing.assert_array_equal(a, b)


def test_backward_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((64, 3, 40)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal((3, 40)).astype(np.float32)
    b = rng.standard_normal((3, 40)).astype(np.float32)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    torch.nn.functional.layer_norm(xt, (3, 40), wt, bt).backward(torch.from_numpy(g))
    _, mean, rstd = fastln.layer_norm_forward(x, (3, 40), w, b)
    gx, gw, gb = fastln.layer_norm_backward(g, x, mean, rstd, w)
    np.testing.assert_allclose(gx, xt.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(gw, wt.grad.numpy(), atol=1e-4)
    np.testing.assert_allclose(gb, bt.grad.numpy(), atol=1e-4)


@pytest.mark.parametrize("shape", [(4096, 256), (64, 65536), (100003, 3)])
def test_bitwise_identical_across_thread_counts(rng, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    results = []
    saved = numba.get_num_threads()
    try:
        for n in sorted({1, saved}):
            numba.set_num_threads(n)
            for _ in range(2):
                y, m, r = fastln.layer_norm_forward(x, None, w, w)
                results.append((y, m, r) + fastln.layer_norm_backward(g, x, m, r, w))
    finally:
        numba.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            np.testing.assert_array_equal(a, b)


def test_partials_are_summed_in_chunk_order(rng):
    """grad_weight/grad_bias are the chunk partials added in chunk order, from 0.0, per column:
    the order that makes them the same for any thread count (magnitudes spread so that
    another order gives other bits)."""
    from fastln.cpu._rows import REDUCE_COLUMNS, reduce_partials

    n = 2 * REDUCE_COLUMNS + 300  # two whole blocks of columns and a part
    parts = rng.standard_normal((2, 14, n)) * 10.0 ** rng.integers(-8, 9, (2, 14, n))
    dw, db = np.empty(n), np.empty(n)  # float64 (a float64 backward's): every bit of the sums shows
    reduce_partials(parts[0], parts[1], dw, db)
    for got, part in ((dw, parts[0]), (db, parts[1])):
        want = []
        for j in range(part.shape[1]):
            s = 0.0
            for c in range(part.shape[0]):
                s += part[c, j]
            want.append(s)
        np.testing.assert_array_equal(got, want)
        assert not np.array_equal(part[::-1].cumsum(0)[-1], got)  # another order, other bits


def test_serial_kernels_run_on_unowned_views(rng):
    """The serial twins hand their bodies views without an owner (no reference counting):
    the same memory, shape and results as the arrays themselves."""
    from fastln import _api, cpu
    from fastln.cpu import _jit
    from fastln.cpu._unowned import unowned

    @_jit.sweep
    def seen(a, b, c, n):
        u, v, t = unowned(a), unowned(b), unowned(c)
        u[0, 1] = n  # written through the view: lands in the caller's array
        return u.shape, v.shape, t.shape, u.ctypes.data == a.ctypes.data, v.ctypes.data == b.ctypes.data

    a, b, c = np.zeros((3, 4)), np.zeros(5, np.float32), np.zeros((4, 6))[:, ::2]
    assert seen(a, b, c, 7.0) == ((3, 4), (5,), (4, 3), True, True) and a[0, 1] == 7.0

    x = rng.standard_normal((300, 40)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    none = _api._no_rows(np.float32)
    outs = []
    for entry in (cpu.forward_serial, cpu.forward_serial.py_func.__globals__["kernel"]):
        y, mean, rstd = np.empty_like(x), np.empty(300, np.float32), np.empty(300, np.float32)
        entry(x, none, w, w, 1e-5, True, y, none, mean, rstd)
        outs.append((y, mean, rstd))
    for entry in (cpu.backward_serial, cpu.backward_serial.py_func.__globals__["kernel"]):
        gx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(w)
        n_chunks, per_chunk = _api.chunking(300, 40)
        part = np.zeros((2, n_chunks, 40))
        entry(g, x, outs[0][1], outs[0][2], w, True, none, gx, part[0], part[1], dw, db, per_chunk)
        outs.append((gx, dw, db))
    for unowned_out, counted_out in ((outs[0], outs[1]), (outs[2], outs[3])):
        for u, c in zip(unowned_out, counted_out, strict=True):
            np.testing.assert_array_equal(u, c)
    np.testing.assert_allclose(outs[2][0], reference.backward(g, x, 1, w)[0], atol=2e-5 * (np.abs(outs[2][0]).max() + 1))


def test_serial_and_parallel_kernels_agree(rng, monkeypatch):
    x = rng.standard_normal((4000, 100)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(100).astype(np.float32)
    y, m, r = fastln.layer_norm_forward(x, None, w)
    par = fastln.layer_norm_backward(g, x, m, r, w)
    monkeypatch.setattr(_config, "SERIAL_BELOW", 1 << 62)
    y2, m2, r2 = fastln.layer_norm_forward(x, None, w)
    ser = fastln.layer_norm_backward(g, x, m, r, w)
    np.testing.assert_array_equal(y, y2)
    for a, b in zip(par, ser, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 17, 33, 301])
def test_rows_swept_in_pairs_give_each_rows_gradient_as_alone(rng, dtype, rows):
    """With parameter gradients, backward sweeps rows two at a time (odd counts leave a row
    alone, at the end of a chunk).  Each row's grad_x must be bitwise a one-row call's, and
    the parameter gradients must sum the rows in their order (within reference tolerance
    here; bitwise against the one-row-at-a-time half kernels in test_fast_paths)."""
    cols = 2111  # 8 KiB and more: paired
    x = (rng.standard_normal((rows, cols)) * 2 + 1).astype(dtype)
    g = rng.standard_normal((rows, cols)).astype(dtype)
    gres = rng.standard_normal((rows, cols)).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype)
    _, mean, rstd = fastln.layer_norm_forward(x, None, w)
    gx, gw, gb = fastln.layer_norm_backward(g, x, mean, rstd, w)
    for i in range(rows):
        alone = fastln.layer_norm_backward(g[i:i + 1], x[i:i + 1], mean[i:i + 1], rstd[i:i + 1], w)[0]
        np.testing.assert_array_equal(gx[i:i + 1], alone)
    rgx, rgw, rgb = reference.backward(g, x, 1, w)
    tol = 2e-5 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(gw, rgw, rtol=0, atol=tol * (np.abs(rgw).max() + np.sqrt(x.size)))
    np.testing.assert_allclose(gb, rgb, rtol=0, atol=tol * (np.abs(rgb).max() + np.sqrt(x.size)))
    # the add-norm backward adds the residual_out gradient to each row of the pair
    _, rstd_r = fastln.rms_norm_forward(x, None, w)
    gx_r, _ = fastln.rms_norm_backward(g, x, rstd_r, w)
    from fastln import _api
    from fastln.cpu import kernels

    gx_plus = np.empty_like(x)
    dw, db = np.empty_like(w), np.empty_like(w)
    _api.run_backward(g, x, mean[:0], rstd_r, w, False, gres, gx_plus, dw, db)
    np.testing.assert_array_equal(gx_plus, gx_r + gres)
    assert kernels.PAIRED_BACKWARD
    if dtype == np.float32:
        # bitwise against the half kernel, which sweeps one row at a time: bfloat16 bits
        # (the top halves of float32 values) in, the same float32 values through run_backward
        from fastln.cpu import _half

        xb, gb16 = ((a.view(np.uint32) >> 16).astype(np.uint16) for a in (x, g))
        xf, gf = ((a.astype(np.uint32) << 16).view(np.float32) for a in (xb, gb16))
        _, mf, rf = fastln.layer_norm_forward(xf, None, w)
        want = [np.empty_like(xf), np.empty_like(w), np.empty_like(w)]
        _api.run_backward(gf, xf, mf, rf, w, True, _api._no_rows(xf.dtype), *want)
        got = [np.empty_like(xb), np.empty_like(w), np.empty_like(w)]
        _api.run_backward_half(gb16, xb, mf, rf, w, True, np.empty((0, cols), np.uint16), *got, _half.BFLOAT16)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
