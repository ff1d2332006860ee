"""Issue 12: fork on every threading layer, a kernel cache that cannot break the package.

Each case runs in a subprocess with a timeout: a hang or a killed child fails the test,
never the test run.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FORK = textwrap.dedent("""
    import os, sys, numpy as np
    {prelude}
    import fastln
    x = np.random.default_rng(0).standard_normal((512, 300)).astype(np.float32)  # parallel size
    want = fastln.layer_norm(x)
    pid = os.fork()
    if pid == 0:
        ok = np.array_equal(fastln.layer_norm(x), want) and np.array_equal(fastln.rms_norm(x), fastln.rms_norm(x))
        os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    from fastln import _threading
    print(_threading.active_layer(), os.waitstatus_to_exitcode(status))
""")

_OTHER_LIBRARY_FIRST = """
import numba
numba.config.THREADING_LAYER = "omp"
@numba.njit(parallel=True)
def other(a):
    s = 0.0
    for i in numba.prange(a.shape[0]):
        s += a[i]
    return s
other(np.ones(100000))
"""


def _run(code, env=None, timeout=240):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=full_env)


def _layer_available(layer):
    out = _run(f"import fastln, numba, numpy as np; numba.config.THREADING_LAYER={layer!r}\n"
               "f = numba.njit(parallel=True)(lambda a: a * 2)\nf(np.ones(10)); print(numba.threading_layer())")
    return out.returncode == 0 and out.stdout.strip() == layer


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["tbb", "omp", "workqueue"])
def test_fork_after_use_on_every_threading_layer(layer):
    if not _layer_available(layer):
        pytest.skip(f"Numba's {layer} layer is not available here")
    out = _run(_FORK.format(prelude=""), env={"NUMBA_THREADING_LAYER": layer})
    assert out.returncode == 0, out.stderr[-2000:]
    active, child = out.stdout.split()
    assert active == layer
    assert child == "0", out.stderr[-2000:]


@pytest.mark.slow
def test_fork_when_another_library_started_openmp_first():
    if not _layer_available("omp"):
        pytest.skip("no OpenMP layer")
    env = dict(os.environ)
    env.pop("NUMBA_THREADING_LAYER", None)
    out = subprocess.run([sys.executable, "-c", _FORK.format(prelude=_OTHER_LIBRARY_FIRST)], capture_output=True,
                         text=True, timeout=240, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["omp", "0"], out.stderr[-2000:]


_RUN = textwrap.dedent("""
    import warnings, numpy as np
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import fastln
        # Serial-sized: what these tests check is the cache, and each run compiles from nothing.
        x = np.random.default_rng(1).standard_normal((6, 33)).astype(np.float32)
        y, m, r = fastln.layer_norm_forward(x, None, x[0], x[1])
        gx = fastln.layer_norm_backward(x, x, m, r, x[0])[0]
        z = fastln.rms_norm(x, None, x[0])
    from fastln import _cache
    print(repr(float(np.abs(y).sum() + np.abs(gx).sum() + np.abs(z).sum())))
    print(sum("fastln" in str(w.message) for w in caught))
    print(_cache.DIRECTORY)
""")


@pytest.mark.slow
def test_import_works_with_no_writable_cache_location():
    code = "import tempfile\ndef _no(*a, **k):\n    raise OSError('read-only')\ntempfile.TemporaryFile = _no\n" + _RUN
    out = _run(code, env={"NUMBA_CACHE_DIR": "/proc/nonexistent", "HOME": "/proc/nonexistent"})
    assert out.returncode == 0, out.stderr[-2000:]
    value, warnings_seen, directory = out.stdout.split("\n")[:3]
    assert warnings_seen == "1"  # exactly one warning
    assert directory == "None"


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".nbi", ".nbc"])
def test_corrupted_cache_files_are_discarded_and_recompiled(tmp_path, suffix):
    env = {"FASTLN_CACHE_DIR": str(tmp_path)}
    first = _run(_RUN, env=env, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    files = [p for p in tmp_path.rglob(f"*{suffix}")]
    assert files
    for p in files:
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])  # a crash half-way through a write
    second = _run(_RUN, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.split("\n")[0] == first.stdout.split("\n")[0]
    third = _run(_RUN, env=env, timeout=600)  # healed: no more warnings
    assert third.returncode == 0 and third.stdout.split("\n")[1] == "0", third.stderr[-2000:]


@pytest.mark.slow
def test_compile_time_knobs_do_not_leak_through_the_cache(tmp_path):
    env = {"FASTLN_CACHE_DIR": str(tmp_path)}
    default = _run(_RUN, env=env, timeout=600)
    small = _run(_RUN, env=dict(env, FASTLN_BLOCK="8"), timeout=600)
    again = _run(_RUN, env=env, timeout=600)
    assert default.returncode == small.returncode == again.returncode == 0
    d_dir, s_dir, a_dir = (o.stdout.split("\n")[2] for o in (default, small, again))
    assert d_dir == a_dir != s_dir  # each set of compile-time constants has its own entries
    assert default.stdout.split("\n")[0] == again.stdout.split("\n")[0]


def test_bad_knob_values_are_clear_errors():
    out = _run("import fastln", env={"FASTLN_BLOCK": "abc"})
    assert out.returncode != 0 and "FASTLN_BLOCK must be an integer" in out.stderr


def test_info_reports_threading_and_cache():
    out = _run("from fastln import cli; cli.main(['info'])")
    assert out.returncode == 0, out.stderr
    for key in ("threading", "forked", "cache"):
        assert key in out.stdout.lower(), out.stdout


_BRIDGE_FIRST = textwrap.dedent("""
    import numpy as np, torch
    import fastln.torch as ft
    x = torch.randn(640, 20, dtype=torch.{dtype}, requires_grad=True)  # parallel-sized
    w = torch.randn(20, dtype=torch.{dtype}, requires_grad=True)
    with torch.no_grad():
        y = ft.layer_norm(x, (20,), w)  # the first parallel work of this process
    y2 = ft.layer_norm(x, (20,), w)
    y2.sum().backward()
    ref = torch.nn.functional.layer_norm(x.detach(), (20,), w.detach())
    assert torch.allclose(y, ref, atol=1e-5) and torch.equal(y, y2.detach())
    assert x.grad is not None and w.grad is not None
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_fresh_process_whose_first_parallel_call_is_the_bridges(dtype):
    """The bridge's by-address kernels call the parallel kernels from compiled code; loaded
    from the cache in a fresh process they used to run before Numba's thread pool was
    started, and segfaulted.  Here they are the first parallel work of a new process, with
    the kernel cache this test session warmed."""
    pytest.importorskip("torch")
    out = _run(_BRIDGE_FIRST.format(dtype=dtype), timeout=300)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.strip() == "ok"
