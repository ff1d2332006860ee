"""Reliability under concurrency: Python threads, fork, concurrent cold caches, memory."""

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastln
from fastln import _threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _work(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((256, 300)).astype(np.float32)  # parallel kernels (> SERIAL_BELOW)
    g = rng.standard_normal(x.shape).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    y, m, r = fastln.layer_norm_forward(x, None, w, w)
    return (y, m, r) + fastln.layer_norm_backward(g, x, m, r, w)


def test_eight_python_threads_match_serial_results():
    seeds = list(range(16))
    expected = {s: _work(s) for s in seeds}
    jobs = [seeds[i % 16] for i in range(400)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_work, jobs))
    for seed, got in zip(jobs, results, strict=True):
        for a, b in zip(expected[seed], got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_threading_layer_is_thread_and_fork_safe():
    _work(0)
    assert _threading.active_layer() == "tbb", "TBB should load (tbb is a dependency)"


def _child(q):
    try:
        q.put(float(np.abs(_work(3)[0]).sum()))
    except Exception as exc:  # report, do not hang
        q.put(repr(exc))


def test_fork_after_use_does_not_hang():
    expected = float(np.abs(_work(3)[0]).sum())
    ctx = mp.get_context("fork")
    for _ in range(3):
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(q,))
        p.start()
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
            pytest.fail("forked child hung")
        assert p.exitcode == 0
        assert q.get(timeout=5) == expected


_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, fastln
    from concurrent.futures import ThreadPoolExecutor
    rng = np.random.default_rng(0)
    x = rng.standard_normal((int(sys.argv[2]), 129)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    def run(_):
        y, m, r = fastln.layer_norm_forward(x, None, x[0], x[1])
        gx, gw, gb = fastln.layer_norm_backward(g, x, m, r, x[0])
        return float(y.sum() + gx.sum() + gw.sum())
    with ThreadPoolExecutor(int(sys.argv[1])) as pool:
        out = set(pool.map(run, range(50)))
    assert len(out) == 1, out
    print(repr(out.pop()))
    """
)


def _run_procs(n, env, threads=1, rows=512):
    """``n`` processes of ``_SCRIPT``; 512 rows take the parallel kernels, 8 the serial ones."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(threads), str(rows)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(n)
    ]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return outs


@pytest.mark.slow
def test_concurrent_processes_on_cold_then_warm_cache(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=ROOT)
    # Serial-sized input: the race on a cold cache is the point, not the kernel compiled.
    cold = _run_procs(4, env, rows=8)
    assert any(tmp_path.joinpath("cache").rglob("*.nbc")), "kernels were not cached"
    warm = _run_procs(4, env, rows=8)
    assert len(set(cold + warm)) == 1, cold + warm


@pytest.mark.slow
def test_unsafe_layer_is_serialised_by_lock():
    """With the user forcing workqueue (not thread-safe), fastln's lock prevents the abort."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", PYTHONPATH=ROOT)
    (out,) = _run_procs(1, env, threads=8)
    assert out


def test_forward_allocates_only_outputs():
    x = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)  # 64 MiB
    fastln.layer_norm_forward(x)  # compile outside the measurement
    tracemalloc.start()
    try:
        y, m, r = fastln.layer_norm_forward(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = y.nbytes + m.nbytes + r.nbytes
    assert peak <= outputs + (1 << 20), (peak, outputs)


def test_backward_allocates_grad_x_and_small_partials():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4096, 4096), dtype=np.float32)
    g = rng.standard_normal((4096, 4096), dtype=np.float32)
    w = np.ones(4096, np.float32)
    _, m, r = fastln.layer_norm_forward(x)
    fastln.layer_norm_backward(g, x, m, r, w)
    tracemalloc.start()
    try:
        gx, gw, gb = fastln.layer_norm_backward(g, x, m, r, w)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= gx.nbytes + (5 << 20), peak  # partials are capped at 4 MiB


def test_no_growth_over_1000_calls():
    x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
    w = np.ones(512, np.float32)

    def step():
        y, m, r = fastln.layer_norm_forward(x, None, w, w)
        fastln.layer_norm_backward(y, x, m, r, w)

    for _ in range(50):
        step()
    tracemalloc.start()
    try:
        for _ in range(100):
            step()
        base, _ = tracemalloc.get_traced_memory()
        for _ in range(1000):
            step()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - base < 64 << 10, (base, after)
