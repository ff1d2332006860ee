"""Compile every CPU kernel into the on-disk cache ahead of the first call.

A kernel compiles on its first call with a new type signature and is cached on disk
(:mod:`fastln._cache`); from nothing that costs about 90 s of single-threaded LLVM work over
all kernels on a 2-core AMD EPYC, paid in pieces by the first calls of a program.  :func:`warm` pays it up
front (``fastln compile`` on the command line: at the end of a Docker build, before a timed
run, or, as the test suite does, at the start of a session), and spreads the kernels over
``jobs`` processes, one per core, where one process would compile them one by one.

Each task calls one kernel once on tiny arrays of the types the API passes: float32 and
float64 rows (serial and parallel, row and column kernels, the by-address kernels of the
torch bridge and their C entries) and half-precision bits.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time

import numpy as np

from fastln import cpu
from fastln.cpu import _half, by_address, entries


def _rows(dt, rows=4, cols=8):
    x = np.linspace(-1.0, 1.0, rows * cols).reshape(rows, cols).astype(dt)
    stat = np.float64 if dt == np.float64 else np.float32
    return x, np.empty((0, cols), dt), np.ones(cols, dt), np.empty_like(x), np.empty(rows, stat), np.empty(rows, stat)


def _forward(kernel, dt):
    x, none, w, y, mean, rstd = _rows(dt)
    kernel(x, none, w, w, 1e-5, True, y, none, mean, rstd)


def _backward(kernel, dt):
    x, none, w, gx, mean, rstd = _rows(dt)
    parts = np.zeros((2, 1, x.shape[1]))
    kernel(x, x, mean, rstd, w, True, none, gx, parts[0], parts[1], np.empty_like(w), np.empty_like(w), x.shape[0])


def _backward_cols(kernel, dt):
    x, none, w, gx, mean, rstd = _rows(dt)
    kernel(x, x, mean, rstd, w, True, none, gx, np.empty_like(w), np.empty_like(w))


def _at(a) -> int:
    return a.ctypes.data_as(ctypes.c_void_p).value or 0


def _forward_address(kernel, dt):
    x, _, w, y, mean, rstd = _rows(dt)
    rows, cols = x.shape
    kernel(x[0, :0], mean[:0], _at(x), 0, _at(w), _at(w), _at(y), 0, _at(mean), _at(rstd),
           rows, cols, False, cols, cols, rows, 1e-5, True)


def _backward_address(kernel, dt):
    x, _, w, gx, mean, rstd = _rows(dt)
    rows, cols = x.shape
    dw, db = np.empty_like(w), np.empty_like(w)
    kernel(x[0, :0], mean[:0], _at(x), _at(x), _at(mean), _at(rstd), _at(w), 0, _at(gx), _at(dw), _at(db),
           rows, cols, rows, cols, False, cols, 1, rows, True)


def _entry(index, _dt):
    entries.entry(index)


def _half_forward(kernel, _dt):
    xu = np.full((4, 8), 0x3F80, np.uint16)
    none = np.empty((0, 8), np.uint16)
    w = np.ones(8, np.float32)
    kernel(xu, none, w, w, 1e-5, True, np.empty_like(xu), none, np.empty(4, np.float32), np.empty(4, np.float32),
           _half.BFLOAT16)


def _half_backward(kernel, _dt):
    xu = np.full((4, 8), 0x3F80, np.uint16)
    w = np.ones(8, np.float32)
    parts = np.zeros((2, 1, 8))
    kernel(xu, xu, np.zeros(4, np.float32), np.ones(4, np.float32), w, True, np.empty((0, 8), np.uint16),
           np.empty_like(xu), parts[0], parts[1], np.empty_like(w), np.empty_like(w), 4, _half.BFLOAT16)


#: Seconds each kernel took to compile from nothing on a 2-core AMD EPYC (``fastln compile
#: --jobs 1 -v``), for sharing them out between processes; the by-address kernels cost about
#: a second once the kernel they wrap is compiled in the same process.
_COST = {
    "forward_parallel": 16.0, "backward_parallel": 6.5, "forward_cols_parallel": 3.3, "backward_cols_parallel": 4.7,
    "forward_half_parallel": 5.0, "backward_half_parallel": 3.3, "forward_serial": 3.5, "backward_serial": 2.5,
}


def tasks() -> list:
    """``(name, call, kernel, dtype)`` for every kernel and signature; ``call(kernel,
    dtype)`` compiles it."""
    out = []
    for kind in ("parallel", "serial"):
        for dt in (np.float32, np.float64):
            for module, prefix, call in (
                (cpu, "forward_", _forward), (cpu, "backward_", _backward),
                (cpu, "forward_cols_", _forward), (cpu, "backward_cols_", _backward_cols),
                (by_address, "forward_", _forward_address), (by_address, "backward_", _backward_address),
            ):
                where = "by_address." if module is by_address else ""
                out.append((f"{where}{prefix}{kind} {np.dtype(dt).name}", call, getattr(module, prefix + kind), dt))
            if kind == "serial":  # the C entries of the torch bridge's glue (all serial)
                base = len(entries.KINDS) * entries.DTYPES.index(dt)
                for index in range(base, base + len(entries.KINDS)):
                    # "entries.forward float32" groups with the forward_serial kernels it wraps
                    label = entries.name(index).replace("forward ", "forward_serial ")
                    out.append((f"entries.{label}", _entry, index, dt))
        out.append((f"forward_half_{kind}", _half_forward, getattr(cpu, f"forward_half_{kind}"), None))
        if kind == "serial":  # the glue's half forward entry wraps the serial half kernel
            out.append(("entries.forward_half_serial", _entry, entries.FORWARD_HALF, None))
        out.append((f"backward_half_{kind}", _half_backward, getattr(cpu, f"backward_half_{kind}"), None))
        if kind == "serial":
            out.append(("entries.backward_half_serial", _entry, entries.BACKWARD_HALF_CHUNKS, None))
    return out


def shares(jobs: int) -> list[list[int]]:
    """Task indices for each of ``jobs`` processes: a by-address kernel and its C entry go
    with the kernel they wrap (else they compile that too), and the groups are dealt out longest first to the
    least loaded process."""
    groups: dict[str, list[int]] = {}
    for i, (name, *_) in enumerate(tasks()):
        groups.setdefault(name.removeprefix("by_address.").removeprefix("entries."), []).append(i)
    load = [0.0] * jobs
    out: list[list[int]] = [[] for _ in range(jobs)]
    for key in sorted(groups, key=lambda k: -_COST.get(k.split()[0], 1.5)):
        j = load.index(min(load))
        out[j] += groups[key]
        load[j] += _COST.get(key.split()[0], 1.5)
    return [sorted(s) for s in out if s]


def run(indices, verbose: bool = False) -> None:
    """Compile the tasks at ``indices`` of :func:`tasks` in this process."""
    todo = tasks()
    for i in indices:
        name, call, kernel, dt = todo[i]
        start = time.perf_counter()
        call(kernel, dt)
        if verbose:
            print(f"{name}: {time.perf_counter() - start:.1f} s", flush=True)


def warm(jobs: int | None = None, verbose: bool = False) -> float:
    """Compile (or load from the cache) every CPU kernel; returns the seconds it took.

    Parameters
    ----------
    jobs : int, optional
        Processes to compile in, each with its :func:`shares` of the kernels; default: the
        cores this process may run on.  ``1`` compiles in this process.
    verbose : bool
        Print each kernel's time.
    """
    start = time.perf_counter()
    n = len(tasks())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    jobs = max(1, min(n, jobs or cores or 1))
    if jobs == 1:
        run(range(n), verbose)
        return time.perf_counter() - start
    procs = [
        subprocess.Popen([sys.executable, "-m", "fastln._warm", *map(str, share), *(["-v"] if verbose else [])])
        for share in shares(jobs)
    ]
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise RuntimeError(f"fastln: compiling kernels failed in {len(failed)} of {jobs} processes")
    return time.perf_counter() - start


if __name__ == "__main__":
    args = sys.argv[1:]
    run([int(a) for a in args if a != "-v"], verbose="-v" in args)
