"""The NumPy API's planned calls (fastln/_api.py, ``_forward_planned``/``_backward_planned``).

After a call has passed the general checks, later calls of the same kind with plain arrays
(ndarrays of the plan's dtype and shapes, C-contiguous and writeable) skip those checks.
They must give the general path's bits, be the path actually taken, and never let through
what the checks refuse.
"""

import numpy as np
import pytest

import fastln
from fastln import _api, _checks
from tests import reference

SHAPES = [
    ((2, 3), None),
    ((7,), None),
    ((4, 5, 6), None),
    ((4, 5, 6), (5, 6)),
    ((3, 1), 1),
    ((1, 5), (1, 5)),  # 2-D, normalised over both dims: 0-d statistics
    ((3, 4), (3, 4)),
    ((1, 0), (1, 0)),  # found by tests/test_fuzz.py: one row of nothing
    ((513, 768), (768,)),  # parallel kernels
    ((2, 65536), None),  # column kernels
]


def _data(shape, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    norm_shape = shape[len(shape) - k :]
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(norm_shape)).astype(dtype)
    b = (0.1 * rng.standard_normal(norm_shape)).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    return x, r, w, b, gy


def _k(ns):
    return 1 if ns is None or isinstance(ns, int) else len(ns)


@pytest.fixture
def fresh_plans(monkeypatch):
    """An empty plan cache, so that the first call below takes the general path."""
    monkeypatch.setattr(_api, "_PLANS", {})
    return _api._PLANS


@pytest.fixture
def checks_off(monkeypatch):
    """Make the general checks fail loudly: a call that still succeeds took a plan."""

    def refuse(*args, **kwargs):
        raise AssertionError("the general path ran")

    def off():
        monkeypatch.setattr(_checks, "as_float_array", refuse)
        monkeypatch.setattr(_checks, "layout", refuse)

    return off


def _same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def _general(plans, call):
    """``call()`` through the general path: no plan known when it starts."""
    plans.clear()
    return call()


def _calls(x, r, w, b, gy, ns, affine):
    wt, bt = (w, b) if affine else (None, None)
    return {
        "layer_norm_forward": lambda: fastln.layer_norm_forward(x, ns, wt, bt),
        "layer_norm": lambda: (fastln.layer_norm(x, ns, wt, bt),),
        "rms_norm_forward": lambda: fastln.rms_norm_forward(x, ns, wt),
        "rms_norm eps": lambda: (fastln.rms_norm(x, ns, wt, eps=1e-3),),
        "add_layer_norm": lambda: fastln.add_layer_norm(x, r, ns, wt, bt),
        "add_rms_norm": lambda: fastln.add_rms_norm(x, r, ns, wt),
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_planned_forwards_give_the_general_paths_bits(fresh_plans, checks_off, monkeypatch, shape, ns, dtype, affine):
    x, r, w, b, gy = _data(shape, _k(ns), dtype)
    x_before = x.copy()
    calls = _calls(x, r, w, b, gy, ns, affine)
    general = {name: _general(fresh_plans, call) for name, call in calls.items()}
    assert fresh_plans, "the general path made no plan"
    for call in calls.values():  # plans for every key (each general call above forgot the last)
        call()
    checks_off()
    for name, call in calls.items():
        planned = call()
        for want, got in zip(general[name], planned, strict=True):
            _same(want, got)
    monkeypatch.undo()
    np.testing.assert_array_equal(x, x_before)
    # and the bits are right, not only the same: the float64 twin
    y, mean, rstd = general["layer_norm_forward"]
    want = reference.forward(x, _k(ns), w if affine else None, b if affine else None, 1e-5)[0]
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_planned_backwards_give_the_general_paths_bits(fresh_plans, checks_off, shape, ns, dtype, affine):
    x, r, w, b, gy = _data(shape, _k(ns), dtype)
    wt = w if affine else None
    _, mean, rstd = fastln.layer_norm_forward(x, ns, wt, b)
    _, rstd_rms = fastln.rms_norm_forward(x, ns, wt)
    calls = {
        "layer": lambda: fastln.layer_norm_backward(gy, x, mean, rstd, wt, ns),
        "rms": lambda: fastln.rms_norm_backward(gy, x, rstd_rms, wt, ns),
    }
    if affine:
        calls["layer, shape from weight"] = lambda: fastln.layer_norm_backward(gy, x, mean, rstd, wt)
    general = {name: _general(fresh_plans, call) for name, call in calls.items()}
    for call in calls.values():
        call()
    checks_off()
    for name, call in calls.items():
        for want, got in zip(general[name], call(), strict=True):
            _same(want, got)
    if affine and ns is None and len(shape) == 2:
        gx, gw, gb = general["layer"]
        want = reference.backward(gy, x, 1, w, 1e-5)
        scale = max(np.abs(want[0]).max(), 1)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(gx / scale, want[0] / scale, rtol=0, atol=tol)


def _plan_for(shape, dtype=np.float32, ns=None):
    x, r, w, b, gy = _data(shape, _k(ns), dtype)
    fastln.layer_norm_forward(x, ns, w, b)  # the general path makes the plan
    _, mean, rstd = fastln.layer_norm_forward(x, ns, w, b)
    fastln.layer_norm_backward(gy, x, mean, rstd, w)
    return x, r, w, b, gy, mean, rstd


def test_calls_the_plan_cannot_take_go_the_general_way(fresh_plans):
    """Arrays that are not plain give the general path's results (the checks convert them)."""
    x, r, w, b, gy, mean, rstd = _plan_for((6, 10))
    want_y = fastln.layer_norm(x, None, w, b)
    ro = x.copy()
    ro.flags.writeable = False
    cases = {
        "read-only x": (ro, w, b),
        "strided x": (np.asfortranarray(x), w, b),
        "float64 weight": (x, w.astype(np.float64), b),
        "list bias": (x, w, list(b)),
    }
    for name, (xx, ww, bb) in cases.items():
        np.testing.assert_array_equal(fastln.layer_norm(xx, None, ww, bb), want_y, err_msg=name)
        np.testing.assert_array_equal(fastln.layer_norm(xx, None, ww, bb, eps=10**-5), want_y, err_msg=name)
    want = fastln.layer_norm_backward(gy, x, mean, rstd, w)
    keepdim = (mean.reshape(-1, 1), rstd.reshape(-1, 1))
    for got in (
        fastln.layer_norm_backward(gy, x, *keepdim, w),
        fastln.layer_norm_backward(gy, x, mean.astype(np.float64), rstd, w),
        fastln.layer_norm_backward(np.asfortranarray(gy), x, mean, rstd, w),
    ):
        for a, c in zip(want, got, strict=True):
            _same(a, c)


def test_a_plan_lets_nothing_through_that_the_checks_refuse(fresh_plans):
    x, r, w, b, gy, mean, rstd = _plan_for((4, 1), ns=1)
    fastln.layer_norm(x, 1, w, b)
    assert fresh_plans
    with pytest.raises(TypeError, match="normalized_shape"):
        fastln.layer_norm(x, True, w, b)  # True == 1, but not an int
    with pytest.raises(TypeError, match="normalized_shape"):
        fastln.layer_norm(x, (True,), w, b)
    with pytest.raises(ValueError, match="weight"):
        fastln.layer_norm(x, 1, np.ones(2, np.float32), b)
    with pytest.raises(TypeError, match="eps"):
        fastln.layer_norm(x, 1, w, b, eps="1e-5")
    with pytest.raises(TypeError, match="eps"):
        fastln.layer_norm(x, 1, w, b, eps=None)
    with pytest.raises(ValueError, match="grad_y"):
        fastln.layer_norm_backward(gy[:2], x, mean, rstd, w)
    with pytest.raises(ValueError, match="mean"):
        fastln.layer_norm_backward(gy, x, mean[:2], rstd, w)
    with pytest.raises(TypeError, match="x"):
        fastln.layer_norm_backward(gy, x.astype(np.int32), mean, rstd, w)
    # the other byte order is equal to no plan's dtype: the checks convert it, and the plan
    # never reads its bytes as the machine's
    np.testing.assert_array_equal(fastln.layer_norm(x.astype(x.dtype.newbyteorder()), 1, w, b), fastln.layer_norm(x, 1, w, b))
    with pytest.raises(ValueError, match="residual"):
        fastln.add_layer_norm(x, r[:2], 1, w, b)


def test_plan_cache_stays_bounded(fresh_plans):
    for n in range(1, 1100):
        fastln.layer_norm(np.ones((n, 2), np.float32))
    assert 0 < len(fresh_plans) <= 1025


def test_plans_read_serial_below_at_each_call(fresh_plans, monkeypatch):
    """A plan keeps the shape's kernels and chunks, but the serial/parallel choice follows
    ``_config.SERIAL_BELOW`` at each call, as the general path's does (tests change it)."""
    from fastln import _config, _threading

    x, r, w, b, gy, mean, rstd = _plan_for((2000, 100))
    assert fresh_plans

    def no_parallel_launch():
        raise AssertionError("a parallel launch")

    monkeypatch.setattr(_threading, "parallel_guard", no_parallel_launch)
    with pytest.raises(AssertionError, match="parallel launch"):
        fastln.layer_norm(x, None, w, b)
    monkeypatch.setattr(_config, "SERIAL_BELOW", 1 << 62)
    fastln.layer_norm(x, None, w, b)
    fastln.layer_norm_backward(gy, x, mean, rstd, w)


@pytest.mark.parametrize("shape,ns", [((2, 3), None), ((4, 5, 6), (5, 6)), ((513, 768), None)])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_planned_out_is_written_as_the_general_path_writes_it(fresh_plans, checks_off, monkeypatch, shape, ns, norm):
    x, r, w, b, gy = _data(shape, _k(ns), np.float32)
    fn = getattr(fastln, norm)
    args = (w, b) if norm == "layer_norm" else (w,)
    want = fn(x, ns, *args)  # the general path, which makes the plan
    buf = np.full_like(x, np.nan)
    in_place = x.copy()
    checks_off()
    got = fn(x, ns, *args, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, want)
    assert fn(in_place, ns, *args, out=in_place) is in_place  # out=x: normalised in place
    monkeypatch.undo()
    np.testing.assert_array_equal(in_place, want)


def test_a_plan_refuses_the_out_the_checks_refuse(fresh_plans):
    x, r, w, b, gy, mean, rstd = _plan_for((6, 10))
    fastln.layer_norm(x, None, w, b, out=np.empty_like(x))
    big = np.zeros(70, np.float32)
    overlapping = big[1:61].reshape(6, 10)
    x_in_big = big[:60].reshape(6, 10)
    x_in_big[...] = x
    with pytest.raises(ValueError, match="overlaps x"):
        fastln.layer_norm(x_in_big, None, w, b, out=overlapping)
    w_buf = np.zeros((6, 10), np.float32)
    with pytest.raises(ValueError, match="share memory"):
        fastln.layer_norm(x, None, w_buf[0], b, out=w_buf)
    with pytest.raises(ValueError, match="dtype"):
        fastln.layer_norm(x, None, w, b, out=np.empty(x.shape, np.float64))
    ro = np.empty_like(x)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        fastln.layer_norm(x, None, w, b, out=ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        fastln.layer_norm(x, None, w, b, out=np.empty((10, 6), np.float32).T)


def _outcomes(x, r, w, b, gy, ns, out):
    """Every API call on these arrays: ``("ok", results)`` or ``("error", type, message)``."""
    def run(fn):
        try:
            got = fn()
            return ("ok", tuple(a.copy() if isinstance(a, np.ndarray) else a for a in got))
        except Exception as exc:  # the same error must come both ways
            return ("error", type(exc), str(exc))

    seen = {
        "layer_norm_forward": run(lambda: fastln.layer_norm_forward(x, ns, w, b)),
        "layer_norm out": run(lambda: (fastln.layer_norm(x, ns, w, b, out=out),)),
        "rms_norm_forward": run(lambda: fastln.rms_norm_forward(x, ns, w)),
        "add_layer_norm": run(lambda: fastln.add_layer_norm(x, r, ns, w, b)),
        "add_rms_norm": run(lambda: fastln.add_rms_norm(x, r, ns, w)),
    }
    if seen["layer_norm_forward"][0] == "ok":
        _, mean, rstd = seen["layer_norm_forward"][1]
        _, rstd_rms = seen["rms_norm_forward"][1]
        seen["layer_norm_backward"] = run(lambda: fastln.layer_norm_backward(gy, x, mean, rstd, w, ns))
        seen["layer_norm_backward, shape from w"] = run(lambda: fastln.layer_norm_backward(gy, x, mean, rstd, w))
        seen["rms_norm_backward"] = run(lambda: fastln.rms_norm_backward(gy, x, rstd_rms, w, ns))
    return seen


def test_random_calls_give_the_general_paths_results(fresh_plans, monkeypatch):
    """Random shapes (empty and size-1 dims included), normalized_shape forms, dtypes and
    optional parameters: with plans, every public call returns the general path's bits or
    raises its error."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(rng.choice([0, 1, 2, 3, 5, 17])) for _ in range(nd))
        k = int(rng.integers(1, nd + 1))
        norm_shape = shape[nd - k :]
        forms = [None, norm_shape[0], norm_shape] if k == 1 else [norm_shape]
        ns = forms[int(rng.integers(len(forms)))]
        dtype = (np.float32, np.float64)[int(rng.integers(2))]
        x, r, gy = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
        w = rng.standard_normal(norm_shape).astype(dtype) if rng.random() < 0.7 else None
        b = rng.standard_normal(norm_shape).astype(dtype) if rng.random() < 0.7 else None
        out = np.empty_like(x)
        fresh_plans.clear()
        with monkeypatch.context() as m:
            m.setattr(_api, "_forward_planned", lambda *a: None)
            m.setattr(_api, "_backward_planned", lambda *a: None)
            general = _outcomes(x, r, w, b, gy, ns, out)
        _outcomes(x, r, w, b, gy, ns, out)  # the plans
        planned = _outcomes(x, r, w, b, gy, ns, out)
        assert general.keys() == planned.keys()
        for name, want in general.items():
            got = planned[name]
            assert got[0] == want[0], (name, shape, ns, got, want)
            if want[0] == "error":
                assert got[1:] == want[1:], (name, shape, ns)
            else:
                for a, c in zip(want[1], got[1], strict=True):
                    if a is None or c is None:
                        assert a is None and c is None, (name, shape, ns)
                    else:
                        assert a.shape == c.shape and a.dtype == c.dtype, (name, shape, ns)
                        np.testing.assert_array_equal(a, c, err_msg=f"{name} {shape} {ns}")
