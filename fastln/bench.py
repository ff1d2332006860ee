"""Benchmark registry and runner, shared by ``fastln bench`` and ``benchmarks/``.

One registry of implementations (fastln, torch's aten kernels, the naive NumPy formula, and a
parallel copy as the memory roofline) drives both the command line and pytest-benchmark, so
the two can never measure different things.  Times are medians of rounds that interleave the
implementations, so a noisy neighbour slows all of them alike.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numba
import numpy as np

import fastln

FULL_SHAPES = [(2, 3), (512, 768), (4096, 1024), (64, 65536), (32768, 768), (8192, 4096)]
QUICK_SHAPES = [(2, 3), (512, 768), (4096, 1024), (32768, 768)]


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# The registry: name -> maker(x, w, b, gy) -> zero-argument callable
# ---------------------------------------------------------------------------------------
def _numpy_forward(x, w, b, eps=1e-5):
    """What users write by hand: three passes, float temporaries."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    return (x - mean) * rstd * w + b, mean, rstd


def _numpy_backward(gy, x, mean, rstd, w):
    x_hat = (x - mean) * rstd
    wdy = gy * w
    n = x.shape[-1]
    c1 = (x_hat * wdy).sum(axis=-1, keepdims=True) / n
    c2 = wdy.sum(axis=-1, keepdims=True) / n
    return (wdy - (x_hat * c1 + c2)) * rstd, (gy * x_hat).sum(axis=0), gy.sum(axis=0)


@numba.njit(parallel=True, cache=True, nogil=True)
def _parallel_copy(x, y):
    for i in numba.prange(x.shape[0]):
        for j in range(x.shape[1]):
            y[i, j] = x[i, j]


def copy_roofline(x):
    """Allocating parallel copy of x: the bandwidth bound of a forward pass."""
    y = np.empty_like(x)
    _parallel_copy(x, y)
    return y


def forward_makers() -> dict[str, Callable]:
    makers = {
        "fastln": lambda x, w, b, gy: lambda: fastln.layer_norm_forward(x, None, w, b),
        "numpy": lambda x, w, b, gy: lambda: _numpy_forward(x, w, b),
        "copy": lambda x, w, b, gy: lambda: copy_roofline(x),
    }
    if have_torch():
        import torch

        def torch_forward(x, w, b, gy):
            xt, wt, bt = (torch.from_numpy(a) for a in (x, w, b))
            return lambda: torch.ops.aten.native_layer_norm(xt, [x.shape[1]], wt, bt, 1e-5)

        makers["torch"] = torch_forward
    return makers


def backward_makers() -> dict[str, Callable]:
    def fastln_backward(x, w, b, gy):
        _, mean, rstd = fastln.layer_norm_forward(x, None, w, b)
        return lambda: fastln.layer_norm_backward(gy, x, mean, rstd, w)

    def numpy_backward(x, w, b, gy):
        _, mean, rstd = _numpy_forward(x, w, b)
        return lambda: _numpy_backward(gy, x, mean, rstd, w)

    makers = {"fastln": fastln_backward, "numpy": numpy_backward}
    if have_torch():
        import torch

        def torch_backward(x, w, b, gy):
            xt, wt, bt, gt = (torch.from_numpy(a) for a in (x, w, b, gy))
            _, mean, rstd = torch.ops.aten.native_layer_norm(xt, [x.shape[1]], wt, bt, 1e-5)
            return lambda: torch.ops.aten.native_layer_norm_backward(
                gt, xt, [x.shape[1]], mean, rstd, wt, bt, [True, True, True]
            )

        makers["torch"] = torch_backward
    return makers


def make_inputs(shape, dtype, seed=0):
    """``(x, w, b, gy)`` for one benchmark case."""
    rng = np.random.default_rng(seed)
    rows, cols = shape
    x = rng.standard_normal(shape, dtype=np.float64).astype(dtype)
    gy = rng.standard_normal(shape, dtype=np.float64).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype)
    b = rng.standard_normal(cols).astype(dtype)
    return x, w, b, gy


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
#: Untimed run before each timed burst (longer than torch's OpenMP spin-wait).
WARMUP_S = 0.015


def _inner_loops(fn, target_s=2e-3) -> int:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, min(1000, int(target_s / max(dt, 1e-7))))


def interleaved_medians(fns: dict[str, Callable], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds.

    Each timed burst follows an untimed one of the same function: torch's OpenMP workers
    busy-wait for about 6 ms after a torch call, and on a 2-core machine that slows
    whatever runs next (fastln by ~1.7x at 512x768).  A warm-up of ``WARMUP_S`` lets every
    implementation be timed in the state its own loop would leave the machine in.
    """
    loops = {k: _inner_loops(f) for k, f in fns.items()}
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            n = loops[k]
            end = time.perf_counter() + WARMUP_S
            while time.perf_counter() < end:
                f()
            t = time.perf_counter()
            for _ in range(n):
                f()
            samples[k].append((time.perf_counter() - t) / n)
    return {k: float(np.median(v)) for k, v in samples.items()}


def max_error_vs_float64(x, w, b) -> float:
    """Max abs error of fastln's forward against the naive formula in float64."""
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    ref = _numpy_forward(x64, w64, b64)[0]
    return float(np.abs(fastln.layer_norm(x, None, w, b) - ref).max())


@dataclass
class Row:
    shape: tuple
    dtype: str
    direction: str
    impl: str
    median_s: float
    gb_per_s: float
    speedup_vs_torch: float | None = None
    fraction_of_copy_roofline: float | None = None
    max_abs_error: float | None = None


@dataclass
class Report:
    machine: dict
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"machine": self.machine, "notes": self.notes, "results": [asdict(r) for r in self.rows]}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
            else:
                name = platform.machine()
    except OSError:
        name = platform.machine()
    import llvmlite.binding as llvm

    return f"{name} ({llvm.get_host_cpu_name()})"


def machine_info() -> dict:
    from fastln import _threading

    info = {
        "fastln": fastln.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "threads": numba.get_num_threads(),
        "threading_layer": _threading.active_layer(),
    }
    if have_torch():
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def bytes_moved(shape, dtype, direction) -> int:
    n = math.prod(shape) * np.dtype(dtype).itemsize
    return 2 * n if direction == "forward" else 3 * n  # fwd: x in, y out; bwd: x, gy in, gx out


def run(shapes, dtypes, rounds, progress=None) -> Report:
    """Benchmark forward and backward for every shape and dtype; returns a :class:`Report`.

    Forward rows include ``copy``: an allocating parallel copy of x, the memory roofline.
    """
    if have_torch():
        import torch

        torch.set_num_threads(numba.get_num_threads())  # same threads for both
    report = Report(machine={})
    if not have_torch():
        report.notes.append("torch is not installed: fastln is compared with numpy only")
    for dtype in dtypes:
        for shape in shapes:
            x, w, b, gy = make_inputs(shape, dtype)
            err = max_error_vs_float64(x, w, b)
            for direction, makers in (("forward", forward_makers()), ("backward", backward_makers())):
                fns = {k: m(x, w, b, gy) for k, m in makers.items()}
                for f in fns.values():
                    f()  # compile / warm up
                med = interleaved_medians(fns, rounds)
                for impl, t in med.items():
                    row = Row(shape, np.dtype(dtype).name, direction, impl, t, bytes_moved(shape, dtype, direction) / t / 1e9)
                    if "torch" in med and impl != "copy":
                        row.speedup_vs_torch = med["torch"] / t
                    if direction == "forward" and "copy" in med:
                        row.fraction_of_copy_roofline = med["copy"] / t
                    if impl == "fastln" and direction == "forward":
                        row.max_abs_error = err
                    report.rows.append(row)
                if progress:
                    progress()
    report.machine = machine_info()
    return report
