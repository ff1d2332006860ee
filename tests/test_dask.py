"""Dask arrays: lazy graphs, any chunking, deterministic parameter gradients, a real cluster."""

import itertools
import subprocess
import sys

import numpy as np
import pytest

import fastln
from tests import reference

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

CHUNKINGS = [(3, 4, 5), (10, 7, 12), (1, 7, 12), ((4, 6), (2, 5), (12,))]


def _inputs(rng, shape=(10, 7, 12), dtype=np.float32):
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(shape[1:]).astype(dtype)
    b = rng.standard_normal(shape[1:]).astype(dtype)
    return x, r, gy, w, b


def _compute(out):
    if isinstance(out, tuple):
        return tuple(None if o is None else o.compute(scheduler="threads") for o in out)
    return out.compute(scheduler="threads")


def _assert_all_dask(out):
    for o in out if isinstance(out, tuple) else (out,):
        assert o is None or isinstance(o, da.Array)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
def test_forwards_match_the_numpy_api_bitwise(rng, chunks):
    x, r, _, w, b = _inputs(rng)
    xd, rd = da.from_array(x, chunks=chunks), da.from_array(r, chunks=(5, 7, 6))
    calls = [
        ("layer_norm", (None, w[0], b[0])),
        ("layer_norm_forward", ((7, 12), w, b)),
        ("rms_norm", ((7, 12), w)),
        ("rms_norm_forward", (None, w[0])),
    ]
    for name, args in calls:
        fn = getattr(fastln, name)
        got = fn(xd, *args)
        _assert_all_dask(got)
        want = fn(x, *args)
        for g, e in zip(*(((got,), (want,)) if name in ("layer_norm", "rms_norm") else (got, want)), strict=True):
            g = g.compute(scheduler="threads")
            assert g.dtype == e.dtype and g.shape == e.shape
            np.testing.assert_array_equal(g, e)
    for name, args in (("add_layer_norm", ((7, 12), w, b)), ("add_rms_norm", (None, w[0]))):
        got = getattr(fastln, name)(xd, rd, *args)
        _assert_all_dask(got)
        for g, e in zip(_compute(got), getattr(fastln, name)(x, r, *args), strict=True):
            np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("chunks", CHUNKINGS, ids=str)
def test_backwards_match_the_float64_reference(rng, chunks):
    x, _, gy, w, b = _inputs(rng, dtype=np.float64)
    xd, gyd = da.from_array(x, chunks=chunks), da.from_array(gy, chunks=(4, 7, 3))
    _, mean, rstd = fastln.layer_norm_forward(xd, (7, 12), w, b)
    gx, gw, gb = _compute(fastln.layer_norm_backward(gyd, xd, mean, rstd, w))
    want = reference.backward(gy, x, 2, w, 1e-5)
    for got, exact in zip((gx, gw, gb), want, strict=True):
        np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-11)

    _, rstd = fastln.rms_norm_forward(xd, (7, 12), w)
    gx, gw = _compute(fastln.rms_norm_backward(gyd, xd, rstd, w))
    want = reference.rms_backward(gy, x, 2, w, float(np.finfo(np.float64).eps))
    for got, exact in zip((gx, gw), want, strict=True):
        np.testing.assert_allclose(got, exact, rtol=1e-10, atol=1e-11)


def test_parameter_gradients_are_summed_in_a_fixed_order(rng):
    """Whatever the scheduler and whichever block finishes first, the same bits: the
    per-block partials are added in float64 in C block order by one task."""
    x, _, gy, w, b = _inputs(rng, shape=(4000, 3, 40))
    xd, gyd = da.from_array(x, chunks=(97, 3, 40)), da.from_array(gy, chunks=(97, 3, 40))
    _, mean, rstd = fastln.layer_norm_forward(xd, (3, 40), w, b)
    graph = fastln.layer_norm_backward(gyd, xd, mean, rstd, w)
    runs = [_compute(graph) for _ in range(3)] + [
        tuple(o.compute(scheduler="synchronous") for o in graph)
    ]
    for other in runs[1:]:
        for a, c in zip(runs[0], other, strict=True):
            np.testing.assert_array_equal(a, c)
    # And it is the float64 sum of the blocks' own gradients, in order.
    parts = [fastln.layer_norm_backward(gy[i:i + 97], x[i:i + 97], mean[i:i + 97].compute(),
                                        rstd[i:i + 97].compute(), w)[1] for i in range(0, 4000, 97)]
    want = np.zeros(w.shape)
    for p in parts:
        want = want + p.astype(np.float64)
    np.testing.assert_array_equal(runs[0][1], want.astype(np.float32))


def test_calls_are_lazy_and_errors_are_raised_at_the_call(rng):
    seen = []

    def load():
        seen.append(1)
        return np.ones((6, 8), np.float32)

    x = da.from_delayed(dask.delayed(load)(), (6, 8), np.float32)
    y = fastln.layer_norm(x)
    assert seen == [] and isinstance(y, da.Array)
    y.compute(scheduler="synchronous")
    assert seen == [1]
    with pytest.raises(ValueError, match="normalized_shape"):
        fastln.layer_norm(x, 5)
    with pytest.raises(ValueError, match="weight"):
        fastln.layer_norm(x, None, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        fastln.rms_norm(x.astype(np.int32))
    with pytest.raises(ValueError, match="residual"):
        fastln.add_rms_norm(x, x[:3])
    with pytest.raises(TypeError, match="out="):
        fastln.layer_norm(x, out=np.empty((6, 8), np.float32))
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        fastln.layer_norm(x[x[:, 0] > 0])
    assert seen == [1], "no check computed x"


def test_dask_is_imported_only_when_a_dask_array_arrives():
    code = (
        "import sys, numpy as np, fastln; fastln.layer_norm(np.ones((2, 3)));"
        "fastln.rms_norm(np.ones((2, 3)), None); assert 'dask' not in sys.modules, 'dask imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_weights_given_as_dask_arrays(rng):
    x, _, _, w, b = _inputs(rng)
    got = fastln.layer_norm(da.from_array(x, chunks=4), (7, 12), da.from_array(w), da.from_array(b))
    np.testing.assert_array_equal(got.compute(), fastln.layer_norm(x, (7, 12), w, b))


@pytest.mark.timeout(120)
def test_local_cluster_with_an_array_larger_than_a_workers_memory():
    """Two worker processes with 400 MB each normalise a 512 MB array that never exists
    whole anywhere: generated, normalised and checked chunk by chunk on the workers."""
    distributed = pytest.importorskip("distributed")
    # Compile the kernels here first, into the on-disk cache the workers load from: compiling
    # them inside a 400 MB worker (a cold cache, as when this test runs alone) can exceed its
    # memory budget and get it killed before it ever sees the array.
    for rows, dt in itertools.product((4, 4096), (np.float32, np.float64)):  # serial and parallel
        warm = np.ones((rows, 64), dt)
        fastln.layer_norm(warm, None, warm[0])
        _, mean, rstd = fastln.layer_norm_forward(warm, None, warm[0])
        fastln.layer_norm_backward(warm, warm, mean, rstd, warm[0])
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MB",
        host="127.0.0.1", dashboard_address=None, silence_logs=40,
    ) as cluster, distributed.Client(cluster) as client:
        rows, cols = 250_000, 256  # float64: 512 MB
        x = da.random.default_rng(7).standard_normal((rows, cols), chunks=(10_000, cols))
        w = np.linspace(0.5, 1.5, cols)
        y = fastln.layer_norm(x, None, w)
        # The naive float64 formula, also chunk-wise on the cluster.
        mean = x.mean(axis=1, keepdims=True)
        want = (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + 1e-5) * w
        err, second_moment = dask.compute(abs(y - want).max(), ((y / w) ** 2).mean())
        assert err < 1e-12
        assert abs(second_moment - 1) < 1e-4  # every row normalised: a real computation ran
        assert x.nbytes > 400e6

        # A smaller case against the in-memory NumPy call, bitwise, and the backward's
        # parameter gradients identical to the threaded scheduler's (fixed order).
        xs = np.random.default_rng(1).standard_normal((3000, 64)).astype(np.float32)
        gs = np.random.default_rng(2).standard_normal((3000, 64)).astype(np.float32)
        xd, gd = da.from_array(xs, chunks=(250, 32)), da.from_array(gs, chunks=(500, 64))
        y, mean, rstd = fastln.layer_norm_forward(xd, None, w[:64].astype(np.float32))
        np.testing.assert_array_equal(y.compute(), fastln.layer_norm(xs, None, w[:64].astype(np.float32)))
        graph = fastln.layer_norm_backward(gd, xd, mean, rstd, w[:64].astype(np.float32))
        on_cluster = dask.compute(*graph)
        threaded = dask.compute(*graph, scheduler="threads")
        for a, c in zip(on_cluster, threaded, strict=True):
            np.testing.assert_array_equal(a, c)
        assert client.run(lambda: 1)  # both workers alive (none killed for memory)
