"""Bad input gets a clear ValueError/TypeError that names the argument; nothing is mutated."""

import re

import numpy as np
import pytest

import fastln

X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)

FORWARD_CASES = [
    # (kwargs, exception, message pattern)
    (dict(x=None), TypeError, r"x must be a floating-point array, got None"),
    (dict(x=np.float32(1.0)), ValueError, r"x must have at least one dimension"),
    (dict(x=np.array(1.0)), ValueError, r"0-d"),
    (dict(x=X.astype(np.complex64)), TypeError, r"x must have dtype .* got complex64"),
    (dict(x=X.astype(object)), TypeError, r"x must have dtype .* got object"),
    (dict(x=np.array([["a", "b"]])), TypeError, r"x must have dtype .* got <U1"),
    (dict(x="abc"), TypeError, r"x must be a floating-point array, got str"),
    (dict(x=X.astype(np.int32)), TypeError, r"got int32 \(cast integers"),
    (dict(x=X.astype(bool)), TypeError, r"got bool"),
    (dict(x=[[1.0], [2.0, 3.0]]), TypeError, r"x must be a floating-point array"),
    (dict(normalized_shape=5), ValueError, r"normalized_shape=\(5,\) must match .* shape \(2, 3, 4\)"),
    (dict(normalized_shape=(4, 3)), ValueError, r"normalized_shape=\(4, 3\) must match"),
    (dict(normalized_shape=(1, 2, 3, 4)), ValueError, r"must match the trailing dimensions"),
    (dict(normalized_shape=-4), ValueError, r"non-negative, got \(-4,\)"),
    (dict(normalized_shape=4.0), TypeError, r"normalized_shape must be an int"),
    (dict(normalized_shape=(4.0,)), TypeError, r"normalized_shape must be an int"),
    (dict(normalized_shape="4"), TypeError, r"normalized_shape must be an int"),
    (dict(normalized_shape=True), TypeError, r"normalized_shape must be an int"),
    (dict(normalized_shape=()), ValueError, r"at least one dimension"),
    (dict(normalized_shape=[[4]]), TypeError, r"normalized_shape must be an int"),
    (dict(weight=np.ones(5)), ValueError, r"weight must have shape normalized_shape=\(4,\), got \(5,\)"),
    (dict(weight=np.ones((1, 4))), ValueError, r"weight must have shape"),
    (dict(bias=np.ones(3)), ValueError, r"bias must have shape normalized_shape=\(4,\), got \(3,\)"),
    (dict(weight=np.ones(4, np.int64)), TypeError, r"weight must have dtype"),
    (dict(bias=np.ones(4, np.complex128)), TypeError, r"bias must have dtype"),
    (dict(weight="w"), TypeError, r"weight must be a floating-point array"),
    (dict(eps="1e-5"), TypeError, r"eps must be a real number"),
    (dict(eps=None), TypeError, r"eps must be a real number"),
    (dict(eps=[1e-5]), TypeError, r"eps must be a real number"),
]


@pytest.mark.parametrize("kwargs,exc,pattern", FORWARD_CASES)
@pytest.mark.parametrize("fn", [fastln.layer_norm, fastln.layer_norm_forward])
def test_forward_bad_input(fn, kwargs, exc, pattern):
    args = dict(x=X.copy())
    args.update(kwargs)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in args.items()}
    with pytest.raises(exc, match=pattern):
        fn(**args)
    for k, v in args.items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            np.testing.assert_array_equal(v, before[k])


def _stats():
    _, m, r = fastln.layer_norm_forward(X)
    return m, r


BACKWARD_CASES = [
    (lambda m, r: dict(grad_y=X[:1]), ValueError, r"grad_y must have the shape of x \(2, 3, 4\), got \(1, 3, 4\)"),
    (lambda m, r: dict(grad_y=None), TypeError, r"grad_y must be a floating-point array, got None"),
    (lambda m, r: dict(grad_y=X.astype(np.int16)), TypeError, r"grad_y must have dtype"),
    (lambda m, r: dict(mean=m[:1]), ValueError, r"mean must have shape \(2, 3\) .* got \(1, 3\)"),
    (lambda m, r: dict(rstd=r.ravel()), ValueError, r"rstd must have shape \(2, 3\) .* got \(6,\)"),
    (lambda m, r: dict(mean=None), TypeError, r"mean must be a floating-point array, got None"),
    (lambda m, r: dict(rstd=r.astype(np.complex64)), TypeError, r"rstd must have dtype"),
    (lambda m, r: dict(weight=np.ones(3)), ValueError, r"normalized_shape=\(3,\) must match"),
    (lambda m, r: dict(weight=np.ones(4), normalized_shape=(3, 4)), ValueError, r"weight must have shape"),
    (lambda m, r: dict(x=None), TypeError, r"x must be a floating-point array, got None"),
]


@pytest.mark.parametrize("make,exc,pattern", BACKWARD_CASES)
def test_backward_bad_input(make, exc, pattern):
    m, r = _stats()
    args = dict(grad_y=np.ones_like(X), x=X.copy(), mean=m, rstd=r)
    args.update(make(m, r))
    with pytest.raises(exc, match=pattern):
        fastln.layer_norm_backward(**args)


def test_error_messages_are_specific():
    with pytest.raises(ValueError) as err:
        fastln.layer_norm(X, (3, 5))
    assert re.search(r"\(3, 5\).*\(2, 3, 4\)", str(err.value))


@pytest.mark.parametrize("bad", [4.0, (4.0,), np.float64(4.0)])
def test_bad_normalized_shape_refused_even_after_a_good_call(bad):
    """The layout memo must not let 4.0 in because 4 was seen (they hash alike)."""
    fastln.layer_norm(X, 4)
    fastln.layer_norm(X, (4,))
    with pytest.raises(TypeError, match="normalized_shape must be an int"):
        fastln.layer_norm(X, bad)


def test_bool_normalized_shape_refused_after_int_one():
    x = np.ones((3, 1), np.float32)
    fastln.layer_norm(x, 1)
    with pytest.raises(TypeError):
        fastln.layer_norm(x, True)
