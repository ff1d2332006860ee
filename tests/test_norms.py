"""RMSNorm, fused add-norms, ``out=``, wide rows and the shared pipeline at the NumPy level,
against the long-double twins in tests/reference.py (and torch as a second oracle)."""

import numpy as np
import pytest

import fastln
from fastln import _api, _config
from tests import reference

SHAPES = [((3, 7), 1), ((64, 300), 1), ((5, 4, 33), 2), ((2, 1), 1), ((0, 8), 1), ((4, 1000), 1)]


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape,k", SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_rms_norm_forward_and_backward_match_reference(rng, shape, k, dtype, tol, affine):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    y, rstd = fastln.rms_norm_forward(x, norm, w, eps=1e-6)
    ry, rrstd = reference.rms_forward(x, k, w, 1e-6)
    scale = 1 if w is None else 1 + np.abs(w).max()
    assert y.shape == x.shape and y.dtype == x.dtype and rstd.shape == shape[: len(shape) - k]
    np.testing.assert_allclose(y, ry, atol=tol * scale * 4, rtol=0)
    np.testing.assert_allclose(rstd, rrstd, rtol=tol)
    np.testing.assert_array_equal(fastln.rms_norm(x, norm, w, eps=1e-6), y)
    gx, gw = fastln.rms_norm_backward(g, x, rstd, w, norm)
    rgx, rgw = reference.rms_backward(g, x, k, w, 1e-6)
    np.testing.assert_allclose(gx, rgx, atol=tol * 10 * (1 + np.abs(rgx).max(initial=0)), rtol=0)
    if affine:
        np.testing.assert_allclose(gw, rgw, atol=tol * 10 * (np.abs(rgw).max(initial=0) + np.sqrt(x.size)), rtol=0)
    else:
        assert gw is None


@pytest.mark.parametrize("magnitude", [1e-20, 1e18, 3e30])
def test_rms_norm_large_and_tiny_magnitudes_stay_exact(rng, magnitude):
    """float32 squares of 1e18 overflow: float64 sums keep RMSNorm within 2e-6 of exact."""
    x = (rng.standard_normal((4, 513)) * magnitude).astype(np.float32)
    y, _ = fastln.rms_norm_forward(x, eps=0.0)
    ry, _ = reference.rms_forward(x, 1, None, 0.0)
    assert np.abs(y - ry).max() < 2e-6


def test_rms_norm_eps_none_is_torchs_default():
    x = np.full((2, 4), 1e-4, np.float32)
    y, rstd = fastln.rms_norm_forward(x)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-8 + np.finfo(np.float32).eps), rtol=1e-6)
    x64 = x.astype(np.float64)
    _, rstd64 = fastln.rms_norm_forward(x64)
    np.testing.assert_allclose(rstd64, 1 / np.sqrt(x64[0, 0] ** 2 + np.finfo(np.float64).eps), rtol=1e-12)
    _, rstd16 = fastln.rms_norm_forward(x.astype(np.float16))
    assert rstd16.dtype == np.float32  # half data: float32 statistics and float32's eps


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_add_norms_equal_add_then_norm(rng, centered, dtype):
    x = rng.standard_normal((33, 70)).astype(dtype)
    r = rng.standard_normal((33, 70)).astype(dtype)
    w = rng.standard_normal(70).astype(dtype)
    b = rng.standard_normal(70).astype(dtype)
    before = (x.copy(), r.copy())
    if centered:
        y, h = fastln.add_layer_norm(x, r, None, w, b)
        want = fastln.layer_norm(x + r, None, w, b)
    else:
        y, h = fastln.add_rms_norm(x, r, None, w)
        want = fastln.rms_norm(x + r, None, w)
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_array_equal(y, want)
    assert y.dtype == h.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(r, before[1])


def test_add_norm_errors_name_the_residual():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="residual"):
        fastln.add_layer_norm(x, None)
    with pytest.raises(ValueError, match=r"residual must have the shape of x \(3, 4\), got \(3, 5\)"):
        fastln.add_rms_norm(x, np.ones((3, 5), np.float32))


# --- out= ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [fastln.layer_norm, fastln.rms_norm])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_out_buffer_and_in_place(rng, fn, dtype):
    x = rng.standard_normal((40, 900)).astype(dtype)
    want = fn(x)
    out = np.empty_like(x)
    assert fn(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    xi = x.copy()
    assert fn(xi, out=xi) is xi
    np.testing.assert_array_equal(xi, want)


@pytest.mark.parametrize(
    "make,exc,pattern",
    [
        (lambda x: np.empty((4, 5), np.float64), ValueError, "shape and dtype"),
        (lambda x: np.empty((4, 6), np.float32), ValueError, "shape and dtype"),
        (lambda x: np.empty((5, 4), np.float32).T, ValueError, "C-contiguous"),
        (lambda x: x[:, ::-1].copy()[:, ::-1] if False else np.broadcast_to(np.float32(0), x.shape), ValueError, "C-contiguous|writeable"),
        (lambda x: [0.0] * 5, TypeError, "out must be a NumPy array"),
    ],
)
def test_out_errors(make, exc, pattern):
    x = np.ones((4, 5), np.float32)
    with pytest.raises(exc, match=pattern):
        fastln.layer_norm(x, out=make(x))


def test_out_partial_overlap_refused():
    buf = np.arange(12, dtype=np.float32)
    x = buf[:10].reshape(2, 5)
    with pytest.raises(ValueError, match="overlaps"):
        fastln.layer_norm(x, out=buf[2:12].reshape(2, 5))


# --- wide rows: column kernels ---------------------------------------------------------------
@pytest.mark.parametrize("rows,cols", [(1, 70001), (3, 1 << 17), (20, 140000)])
@pytest.mark.parametrize("centered", [True, False])
def test_wide_rows_use_column_kernels_and_match_reference(rng, rows, cols, centered):
    assert _api.use_column_kernels(rows, cols, backward=True)
    x = (rng.standard_normal((rows, cols)) + 5).astype(np.float32)
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    if centered:
        y, mean, rstd = fastln.layer_norm_forward(x, None, w, w)
        ry, _, _ = reference.forward(x, 1, w, w)
        gx, gw, gb = fastln.layer_norm_backward(g, x, mean, rstd, w)
        rgx, rgw, rgb = reference.backward(g, x, 1, w)
        np.testing.assert_allclose(gb, rgb, atol=1e-5 * (1 + np.abs(rgb).max()), rtol=0)
    else:
        y, rstd = fastln.rms_norm_forward(x, None, w, 1e-6)
        ry, _ = reference.rms_forward(x, 1, w, 1e-6)
        gx, gw = fastln.rms_norm_backward(g, x, rstd, w)
        rgx, rgw = reference.rms_backward(g, x, 1, w, 1e-6)
    np.testing.assert_allclose(y, ry, atol=3e-6 * (1 + np.abs(w).max() * 2), rtol=0)
    np.testing.assert_allclose(gx, rgx, atol=2e-5 * (1 + np.abs(rgx).max()), rtol=0)
    np.testing.assert_allclose(gw, rgw, atol=1e-5 * (1 + np.abs(rgw).max()), rtol=0)


def test_backward_scratch_stays_under_the_cap(rng):
    """(2, 2^21) with weight used to allocate 96 MiB of partials; now only its outputs."""
    import tracemalloc

    x = rng.standard_normal((2, 1 << 21)).astype(np.float32)
    w = np.ones(1 << 21, np.float32)
    _, m, r = fastln.layer_norm_forward(x, None, w)
    fastln.layer_norm_backward(x, x, m, r, w)  # compile outside the measurement
    tracemalloc.start()
    fastln.layer_norm_backward(x, x, m, r, w)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    outputs = x.nbytes + 2 * w.nbytes
    assert peak - outputs < _config.MAX_PARTIAL_BYTES, (peak, outputs)


def test_no_input_sized_buffer_outlives_the_call():
    """Missing weight/bias used to be cached ones/zeros vectors (512 MiB for (1, 2^26))."""
    import gc
    import tracemalloc

    x = np.ones((1, 1 << 20), np.float32)
    fastln.layer_norm(x)
    fastln.rms_norm(x)
    gc.collect()
    tracemalloc.start()
    for fn in (fastln.layer_norm, fastln.rms_norm):
        y = fn(x)
        del y
    gc.collect()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current < 64 << 10, current


@pytest.mark.parametrize("threads", [1, 2])
def test_column_kernels_bitwise_identical_across_thread_counts(rng, threads):
    import numba

    x = rng.standard_normal((4, 1 << 17)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(x.shape[1]).astype(np.float32)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1, m1, r1 = fastln.layer_norm_forward(x, None, w)
        b1 = fastln.layer_norm_backward(g, x, m1, r1, w)
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        y2, m2, r2 = fastln.layer_norm_forward(x, None, w)
        b2 = fastln.layer_norm_backward(g, x, m2, r2, w)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(y1, y2)
    for a, b in zip(b1, b2, strict=True):
        np.testing.assert_array_equal(a, b)


def test_eps_complex_refused():
    x = np.ones((2, 3), np.float32)
    for eps in (1j, np.complex128(1e-5 + 1j), np.complex64(1)):
        with pytest.raises(TypeError, match="eps must be a real number"):
            fastln.layer_norm(x, eps=eps)


def test_rms_matches_torch_when_available(rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((16, 96)).astype(np.float32)
    w = rng.standard_normal(96).astype(np.float32)
    want = torch.rms_norm(torch.from_numpy(x), (96,), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(fastln.rms_norm(x, 96, w), want, atol=2e-6, rtol=0)
