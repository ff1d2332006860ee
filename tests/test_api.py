"""The NumPy API contract: shapes, dtypes, normalized_shape forms, strides, no mutation."""

import numpy as np
import pytest

import fastln
from tests import reference

TOL = {np.float32: 2e-6, np.float64: 1e-12}

SHAPES = [
    ((1, 1), 1),
    ((2, 3), 1),
    ((7,), 1),
    ((5, 1), 1),
    ((3, 4, 5), 1),
    ((3, 4, 5), 2),
    ((2, 3, 4, 5), 3),
    ((2, 3, 4, 5), 2),
    ((0, 8), 1),
    ((3, 0, 8), 1),
    ((513, 768), 1),
    ((64, 1537), 1),
    ((2, 65536), 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,k", SHAPES)
@pytest.mark.parametrize("affine", [False, True])
def test_forward_matches_reference(rng, shape, k, dtype, affine):
    x = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    b = rng.standard_normal(norm).astype(dtype) if affine else None
    y, mean, rstd = fastln.layer_norm_forward(x, norm, w, b)
    ry, rmean, rrstd = reference.forward(x, k, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype
    stat = np.float64 if dtype == np.float64 else np.float32
    assert mean.shape == shape[: len(shape) - k] and mean.dtype == stat and rstd.dtype == stat
    scale = 1.0 if w is None else 1.0 + np.abs(w).max() + np.abs(b).max()
    np.testing.assert_allclose(y, ry, rtol=0, atol=TOL[dtype] * scale)
    np.testing.assert_allclose(mean, rmean, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(rstd, rrstd, rtol=TOL[dtype] * 2)


@pytest.mark.parametrize("form", [None, -1, "int", "tuple", "list", "npint"])
def test_normalized_shape_forms(rng, form):
    x = rng.standard_normal((4, 6))
    arg = {None: None, -1: None, "int": 6, "tuple": (6,), "list": [6], "npint": np.int64(6)}[form]
    np.testing.assert_allclose(fastln.layer_norm(x, arg), reference.forward(x)[0], atol=1e-12)


def test_layer_norm_equals_forward_output(rng):
    x = rng.standard_normal((8, 33)).astype(np.float32)
    np.testing.assert_array_equal(fastln.layer_norm(x), fastln.layer_norm_forward(x)[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.T,
        lambda a: a[:, ::2],
        lambda a: a[::3],
        lambda a: np.asfortranarray(a),
        lambda a: a[:, 1:-1],
    ],
    ids=["transpose", "col-stride", "row-stride", "fortran", "offset"],
)
def test_strided_inputs_match_contiguous_copy(rng, make):
    base = rng.standard_normal((48, 40)).astype(np.float32)
    x = make(base)
    before = base.copy()
    y, m, r = fastln.layer_norm_forward(x)
    y2, m2, r2 = fastln.layer_norm_forward(np.ascontiguousarray(x))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(m, m2)
    np.testing.assert_array_equal(base, before)


def test_inputs_never_modified(rng):
    x = rng.standard_normal((64, 100)).astype(np.float32)
    w, b, g = rng.standard_normal(100), rng.standard_normal(100), rng.standard_normal((64, 100))
    copies = [a.copy() for a in (x, w, b, g)]
    y, m, r = fastln.layer_norm_forward(x, 100, w, b)
    mr = m.copy(), r.copy()
    fastln.layer_norm_backward(g, x, m, r, w)
    for a, c in zip((x, w, b, g), copies, strict=True):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(m, mr[0])
    np.testing.assert_array_equal(r, mr[1])


def test_read_only_input(rng):
    x = rng.standard_normal((10, 20))
    x.setflags(write=False)
    np.testing.assert_allclose(fastln.layer_norm(x), reference.forward(x)[0], atol=1e-12)


def _signature_counts():
    from fastln import cpu

    return {name: len(getattr(cpu, name).signatures) for name in dir(cpu)
            if hasattr(getattr(cpu, name), "signatures")}


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_arguments_reuse_the_compiled_kernels(rng, dtype):
    """Whether an array is read-only is part of its Numba type: read-only inputs must run the
    kernels compiled for writeable ones (no compile per mix of flags), unmodified, same bits."""
    x = rng.standard_normal((40, 24)).astype(dtype)
    res, gy = rng.standard_normal((2, 40, 24)).astype(dtype)
    w, b = rng.standard_normal((2, 24)).astype(dtype)
    big = rng.standard_normal((512, 96)).astype(dtype)  # parallel-sized

    def calls(x, res, gy, w, b, big):
        y, m, r = fastln.layer_norm_forward(x, None, w, b)
        out = [y, m, r, *fastln.layer_norm_backward(gy, x, m, r, w)]
        out += [fastln.rms_norm(x, None, w), *fastln.add_layer_norm(x, res, None, w, None)]
        yr, rr = fastln.rms_norm_forward(x, None, None)
        out += [yr, *fastln.rms_norm_backward(gy, x, rr, None)[:1], fastln.layer_norm(big, None, w[:1].repeat(96))]
        y, m, r = fastln.layer_norm_forward(big)
        return out + [*fastln.layer_norm_backward(big, big, m, r, None)[:1]]

    want = calls(x, res, gy, w, b, big)  # compiles (or loads) the writeable signatures
    before = _signature_counts()
    frozen = [_read_only(a) for a in (x, res, gy, w, b, big)]
    got = calls(*frozen)
    assert _signature_counts() == before
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
    for f, a in zip(frozen, (x, res, gy, w, b, big), strict=True):
        np.testing.assert_array_equal(f, a)  # never written


def test_float16_computed_in_float32(rng):
    x = rng.standard_normal((16, 64)).astype(np.float16)
    y, m, r = fastln.layer_norm_forward(x)
    assert y.dtype == np.float16 and m.dtype == np.float32
    np.testing.assert_allclose(y, reference.forward(x)[0], atol=4e-3)


@pytest.mark.parametrize("shape", [(1, 7), (16, 64), (40, 95), (40, 96), (300, 257), (3, 4, 100)], ids=str)
def test_float16_in_kernel_is_the_float32_computation_rounded_once(rng, shape):
    """float16 rows are widened inside the kernels (no float32 copies): every function gives
    bitwise what the float32 computation on upcast data, rounded once, gives."""
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float16)
    x_before = x.copy()
    r = rng.standard_normal(shape).astype(np.float16)
    gy = rng.standard_normal(shape).astype(np.float16)
    w = rng.standard_normal(shape[-1]).astype(np.float16)
    b = rng.standard_normal(shape[-1]).astype(np.float16)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    y, mean, rstd = fastln.layer_norm_forward(x, weight=w, bias=b)
    y32, mean32, rstd32 = fastln.layer_norm_forward(f32(x), weight=f32(w), bias=f32(b))
    assert y.dtype == np.float16 and mean.dtype == rstd.dtype == np.float32
    np.testing.assert_array_equal(y, y32.astype(np.float16))
    np.testing.assert_array_equal(rstd, rstd32)
    np.testing.assert_array_equal(mean, mean32)
    np.testing.assert_array_equal(fastln.rms_norm(x, weight=w), fastln.rms_norm(f32(x), weight=f32(w)).astype(np.float16))
    h = x + r  # NumPy's float16 add: residual_out is rounded before the norm
    for fn, ref in ((fastln.add_layer_norm, fastln.layer_norm), (fastln.add_rms_norm, fastln.rms_norm)):
        yy, hh = fn(x, r, weight=w)
        np.testing.assert_array_equal(hh, h)
        np.testing.assert_array_equal(yy, ref(f32(h), weight=f32(w)).astype(np.float16))
    gx, gw, gb = fastln.layer_norm_backward(gy, x, mean, rstd, weight=w)
    gx32, gw32, gb32 = fastln.layer_norm_backward(f32(gy), f32(x), mean, rstd, weight=f32(w))
    assert gx.dtype == gw.dtype == gb.dtype == np.float16
    np.testing.assert_array_equal(gx, gx32.astype(np.float16))
    np.testing.assert_array_equal(gw, gw32.astype(np.float16))
    np.testing.assert_array_equal(gb, gb32.astype(np.float16))
    out = np.empty_like(x)
    assert fastln.layer_norm(x, weight=w, bias=b, out=out) is out
    np.testing.assert_array_equal(out, y)
    np.testing.assert_array_equal(x, x_before)  # inputs untouched
    xi = x.copy()
    fastln.layer_norm(xi, weight=w, bias=b, out=xi)  # in place
    np.testing.assert_array_equal(xi, y)


def test_lists_are_accepted(rng):
    y = fastln.layer_norm([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])
    np.testing.assert_allclose(y, reference.forward(np.array([[1.0, 2, 3], [4, 5, 7]]))[0], atol=1e-12)


def test_mixed_precision_weight_is_cast(rng):
    x = rng.standard_normal((4, 8)).astype(np.float32)
    w = rng.standard_normal(8)  # float64
    y = fastln.layer_norm(x, 8, w)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, reference.forward(x, 1, w)[0], atol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_other_byte_order_is_computed_in_the_machines(rng, dtype):
    """Data in the other byte order (read from a file or the network) gives the native
    computation's result, in native order, as NumPy's ufuncs do; backward takes it too."""
    native = np.dtype(dtype)
    other = native.newbyteorder("S")
    x = (rng.standard_normal((5, 12)) * 3 + 1).astype(native)
    w = rng.standard_normal(12).astype(native)
    b = rng.standard_normal(12).astype(native)
    y, mean, rstd = fastln.layer_norm_forward(x.astype(other), 12, w.astype(other), b.astype(other))
    y0, mean0, rstd0 = fastln.layer_norm_forward(x, 12, w, b)
    assert y.dtype == native and y.dtype.isnative
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_array_equal(rstd, rstd0)
    np.testing.assert_array_equal(fastln.rms_norm(x.astype(other), 12, w.astype(other)), fastln.rms_norm(x, 12, w))
    g = rng.standard_normal((5, 12)).astype(native)
    got = fastln.layer_norm_backward(g.astype(other), x.astype(other), mean.astype(mean.dtype.newbyteorder("S")),
                                     rstd.astype(rstd.dtype.newbyteorder("S")), w.astype(other))
    for a, e in zip(got, fastln.layer_norm_backward(g, x, mean0, rstd0, w), strict=True):
        assert a.dtype.isnative
        np.testing.assert_array_equal(a, e)


def test_zero_columns_match_torch_convention():
    # torch: mean 0, rstd nan for an empty row; y is empty.
    y, m, r = fastln.layer_norm_forward(np.ones((3, 0), np.float32))
    assert y.shape == (3, 0)
    np.testing.assert_array_equal(m, np.zeros(3))
    assert np.isnan(r).all()


def test_seed_example_2x3():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    y = fastln.layer_norm(x, (3,))
    expect = np.array([-1.2247357, 0.0, 1.2247357], dtype=np.float32)
    np.testing.assert_allclose(y, np.stack([expect, expect]), atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 2, 17, 300])
def test_wide_rows_swept_in_pairs_give_each_rows_result_as_alone(rng, dtype, rows):
    """With a weight, rows of 32 KiB and more are normalised two at a time
    (``kernels.PAIR_FORWARD_ROW_BYTES``; an odd count leaves the last row alone).  Each row's
    output and statistics must be bitwise a one-row call's, and right."""
    from fastln.cpu import kernels

    cols = 8193
    assert cols * np.dtype(dtype).itemsize >= kernels.PAIR_FORWARD_ROW_BYTES
    x = (rng.standard_normal((rows, cols)) * 2 + 1).astype(dtype)
    x[rows // 2] += 1e4  # a large offset in one row of a pair: the pair must keep it exact
    w, b = rng.standard_normal((2, cols)).astype(dtype)
    for bias in (b, None):
        y, mean, rstd = fastln.layer_norm_forward(x, None, w, bias)
        yr = fastln.rms_norm(x, None, w)
        for i in range(rows):
            alone = fastln.layer_norm_forward(x[i:i + 1], None, w, bias)
            for got, want in zip((y, mean, rstd), alone, strict=True):
                np.testing.assert_array_equal(got[i:i + 1], want)
            np.testing.assert_array_equal(yr[i:i + 1], fastln.rms_norm(x[i:i + 1], None, w))
        ref = reference.forward(x, 1, w, bias)
        tol = 2e-6 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(y, ref[0], rtol=0, atol=tol * np.abs(ref[0]).max())
        np.testing.assert_allclose(rstd, ref[2], rtol=tol)
        np.testing.assert_allclose(yr, reference.rms_forward(x, 1, w, eps=float(np.finfo(np.float32 if dtype == np.float32 else np.float64).eps))[0], rtol=0, atol=tol * 10 * np.abs(yr).max())
