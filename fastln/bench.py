"""Benchmark registry and runner, shared by ``fastln bench`` and ``benchmarks/``.

One registry of implementations drives both the command line and pytest-benchmark, so the two
can never measure different things.  A *case* is one norm (LayerNorm, RMSNorm, or a fused
residual-add norm), one pass (forward or backward), one shape and one dtype.  For each case:

- **fastln** (the NumPy API), and for forwards **fastln out=** (into a reused buffer);
- **torch** eager: ``aten.native_layer_norm(_backward)``; for RMSNorm ``F.rms_norm`` (on the
  CPU a composite of ops) and its autograd backward; for add-norms ``x + r`` then the norm;
- the **peers** a user might pick instead, when installed (``pip install 'fastln[peers]'``):
  ``torch.compile`` (inductor), ONNX Runtime's ``LayerNormalization``/``RMSNormalization``
  and JAX's jitted formula (forwards, float32 and float64);
- **numpy**: the formula users write by hand;
- three ceilings for forwards: **copy** (a parallel copy into a fresh array, which pays
  the page faults of a new output, as fastln's allocating forward does), **copy reused**
  (into a reused buffer: the hardware's ceiling, the one ``fastln out=`` is held against),
  and **elementwise reused**: the norm's element-wise work alone, without its statistics
  (``y = x * w + b``; RMSNorm ``y = x * w``; the add-norms ``h = x + r`` first), into reused
  buffers.  A forward that sweeps a row at a time reads ``w`` and ``b`` beside every row; once
  a row, ``w``, ``b`` and ``y`` outgrow the L1 cache they come from L2 again for every row.
  This pass pays that and nothing else: what no better statistics can win back.

Timing survives a noisy machine: implementations are timed in interleaved rounds (so a busy
neighbour slows them alike), each round a warm-up and a burst; a round in which any
implementation took more than ``SPOILED`` times its median is dropped for all of them; each
figure keeps its min/median/max and each ratio its spread over the kept rounds.  A case whose
bursts still disagree (interquartile range over median above ``NOISY_SPREAD``), or that kept
fewer than half its rounds, or that ran while the load average exceeded the cores, is measured
again, and flagged ``noisy`` if it stays so: never silently reported.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numba
import numpy as np

import fastln

FULL_SHAPES = [(2, 3), (512, 768), (4096, 1024), (64, 65536), (32768, 768), (8192, 4096)]
QUICK_SHAPES = [(2, 3), (512, 768), (4096, 1024), (32768, 768)]
#: Shapes for the RMSNorm and add-norm cases (the norm-family issue's, flattened to 2-D).
FAMILY_SHAPES = [(512, 768), (4096, 1024), (4096, 4096)]
QUICK_FAMILY_SHAPES = [(4096, 1024)]
NORMS = ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm")
EPS = 1e-5

#: Untimed run before each timed burst (longer than torch's OpenMP spin-wait).
WARMUP_S = 0.015
#: A round in which an implementation took more than this times its median is spoiled.
SPOILED = 3.0
#: Interquartile range / median of the kept bursts above which a case counts as noisy.
NOISY_SPREAD = 0.3


def have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def have_torch() -> bool:
    return have("torch")


# ---------------------------------------------------------------------------------------
# Cases and inputs
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    norm: str
    direction: str
    shape: tuple
    dtype: str

    @property
    def centered(self) -> bool:
        return self.norm in ("layer_norm", "add_layer_norm")

    @property
    def residual(self) -> bool:
        return self.norm.startswith("add_")

    def label(self) -> str:
        return f"{self.norm} {self.direction} {'x'.join(map(str, self.shape))} {self.dtype}"


def cases(norms, shapes, family_shapes, dtypes) -> list[Case]:
    """Every (norm, pass, shape, dtype) to run; add-norms are forward-only here."""
    out = []
    for dtype in dtypes:
        for norm in norms:
            for shape in shapes if norm == "layer_norm" else family_shapes:
                for direction in ("forward",) if norm.startswith("add_") else ("forward", "backward"):
                    out.append(Case(norm, direction, tuple(shape), np.dtype(dtype).name))
    return out


def make_inputs(shape, dtype, seed=0):
    """``(x, w, b, gy, r)`` for one benchmark case."""
    rng = np.random.default_rng(seed)
    cols = shape[-1]
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal(cols).astype(dtype)
    b = rng.standard_normal(cols).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    return x, w, b, gy, r


def bytes_moved(case: Case) -> int:
    """Triton's convention: forward reads x and writes y (2 arrays), backward reads x and gy
    and writes gx (3); an add-norm forward also reads r and writes h (4)."""
    n = math.prod(case.shape) * np.dtype(case.dtype).itemsize
    if case.direction == "backward":
        return 3 * n
    return 4 * n if case.residual else 2 * n


# ---------------------------------------------------------------------------------------
# The registry: makers(case, inputs) -> {name: zero-argument callable}
# ---------------------------------------------------------------------------------------
def _numpy_stats(x, centered):
    mean = x.mean(axis=-1, keepdims=True) if centered else 0.0
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return mean, 1.0 / np.sqrt(var + EPS)


def numpy_forward(x, w, b, centered=True, r=None):
    """What users write by hand: several passes, temporaries."""
    h = x if r is None else x + r
    mean, rstd = _numpy_stats(h, centered)
    y = (h - mean) * rstd * w
    return (y + b if centered else y), mean, rstd


def numpy_backward(gy, x, mean, rstd, w, centered=True):
    x_hat = (x - mean) * rstd
    wdy = gy * w
    n = x.shape[-1]
    c1 = (x_hat * wdy).sum(axis=-1, keepdims=True) / n
    c2 = wdy.sum(axis=-1, keepdims=True) / n if centered else 0.0
    gx = (wdy - (x_hat * c1 + c2)) * rstd
    return (gx, (gy * x_hat).sum(axis=0)) + (((gy.sum(axis=0)),) if centered else ())


@numba.njit(parallel=True, cache=True, nogil=True)
def _parallel_copy(x, y):
    """``y[:] = x`` by rows in parallel, in a vector loop of the kind the kernels run.

    Not a plain ``y[i, j] = x[i, j]``: LLVM turns that into a ``memcpy`` call per row, and
    glibc copies rows from 8 KiB (its ``rep movsb`` threshold with AVX-512) with ``rep movsb``,
    whose speed on this AMD CPU depended on the two buffers' alignment: 16 MiB of float32
    took 550-928 us by ``memcpy`` against 329-372 us in a vector loop at 2048-16384 columns
    (level at 1024 columns and at 4 or 64 MiB), so the ceiling moved from one allocation
    to the next.  Adding ``0.0`` (not an identity for LLVM: it turns -0.0 into +0.0) keeps the
    loop a loop, one vector load and store per vector, as in the kernels' own sweeps."""
    zero = x.dtype.type(0)
    for i in numba.prange(x.shape[0]):
        xr = x[i]
        yr = y[i]
        for j in range(xr.shape[0]):
            yr[j] = xr[j] + zero


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _elementwise_pass(x, r, w, b, y, h):
    """The norm's element-wise work without statistics, into reused ``y`` (and ``h``):
    ``h = x + r`` when ``r`` has rows, then ``y = h * w + b`` (``w``/``b`` of length 0: absent)."""
    for i in numba.prange(x.shape[0]):
        xr = x[i]
        if r.shape[0] != 0:
            hr = h[i]
            rr = r[i]
            for j in range(xr.shape[0]):
                hr[j] = xr[j] + rr[j]
            xr = hr
        yr = y[i]
        if b.shape[0] != 0:
            for j in range(xr.shape[0]):
                yr[j] = xr[j] * w[j] + b[j]
        else:
            for j in range(xr.shape[0]):
                yr[j] = xr[j] * w[j]


def copy_roofline(x):
    """Allocating parallel copy of x: what a forward that returns a fresh array can reach."""
    y = np.empty_like(x)
    _parallel_copy(x, y)
    return y


def _fastln(case, x, w, b, gy, r):
    fw = {
        "layer_norm": lambda: fastln.layer_norm_forward(x, None, w, b, EPS),
        "rms_norm": lambda: fastln.rms_norm_forward(x, None, w, EPS),
        "add_layer_norm": lambda: fastln.add_layer_norm(x, r, None, w, b, EPS),
        "add_rms_norm": lambda: fastln.add_rms_norm(x, r, None, w, EPS),
    }
    if case.direction == "forward":
        out = {"fastln": fw[case.norm]}
        if not case.residual:
            buf = np.empty_like(x)
            if case.centered:
                out["fastln out="] = lambda: fastln.layer_norm(x, None, w, b, EPS, out=buf)
            else:
                out["fastln out="] = lambda: fastln.rms_norm(x, None, w, EPS, out=buf)
        return out
    if case.centered:
        _, mean, rstd = fastln.layer_norm_forward(x, None, w, b, EPS)
        return {"fastln": lambda: fastln.layer_norm_backward(gy, x, mean, rstd, w)}
    _, rstd = fastln.rms_norm_forward(x, None, w, EPS)
    return {"fastln": lambda: fastln.rms_norm_backward(gy, x, rstd, w)}


def _torch(case, x, w, b, gy, r):
    import torch
    import torch.nn.functional as F

    xt, wt, bt, gt, rt = (torch.from_numpy(a) for a in (x, w, b, gy, r))
    n = [x.shape[-1]]
    ln = torch.ops.aten.native_layer_norm
    if case.direction == "forward":
        return {"torch": {
            "layer_norm": lambda: ln(xt, n, wt, bt, EPS),
            "rms_norm": lambda: F.rms_norm(xt, n, wt, EPS),
            "add_layer_norm": lambda: (ln(xt + rt, n, wt, bt, EPS), None),
            "add_rms_norm": lambda: (F.rms_norm(xt + rt, n, wt, EPS), None),
        }[case.norm]}
    if case.centered:
        _, mean, rstd = ln(xt, n, wt, bt, EPS)
        return {"torch": lambda: torch.ops.aten.native_layer_norm_backward(
            gt, xt, n, mean, rstd, wt, bt, [True, True, True])}
    xg, wg = xt.clone().requires_grad_(), wt.clone().requires_grad_()
    y = F.rms_norm(xg, n, wg, EPS)  # torch's own backward graph for its composite RMSNorm
    return {"torch": lambda: torch.autograd.grad(y, (xg, wg), gt, retain_graph=True)}


def _torch_compile(case, x, w, b, gy, r):
    import torch
    import torch.nn.functional as F

    xt, wt, bt, rt = (torch.from_numpy(a) for a in (x, w, b, r))
    n = [x.shape[-1]]
    fn = {
        "layer_norm": lambda a, c: F.layer_norm(a, n, wt, bt, EPS),
        "rms_norm": lambda a, c: F.rms_norm(a, n, wt, EPS),
        "add_layer_norm": lambda a, c: (lambda h: (F.layer_norm(h, n, wt, bt, EPS), h))(a + c),
        "add_rms_norm": lambda a, c: (lambda h: (F.rms_norm(h, n, wt, EPS), h))(a + c),
    }[case.norm]
    # One case at a time: a fresh dynamo state, or the lambdas (one code object) would hit
    # the recompile limit after 8 shapes and silently run eagerly.
    torch._dynamo.reset()
    compiled = torch.compile(fn, dynamic=False)
    return {"torch.compile": lambda: compiled(xt, rt)}


def _onnxruntime(case, x, w, b, gy, r):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE}[x.dtype]
    shape = list(x.shape)
    inputs = [helper.make_tensor_value_info("X", elem, shape)]
    nodes, feeds, x_name = [], {"X": x}, "X"
    if case.residual:
        inputs.append(helper.make_tensor_value_info("R", elem, shape))
        nodes.append(helper.make_node("Add", ["X", "R"], ["H"]))
        feeds["R"], x_name = r, "H"
    inits = [numpy_helper.from_array(w, "W")]
    if case.centered:
        inits.append(numpy_helper.from_array(b, "B"))
        nodes.append(helper.make_node("LayerNormalization", [x_name, "W", "B"], ["Y"], axis=-1, epsilon=EPS))
        opset = 17
    else:
        nodes.append(helper.make_node("RMSNormalization", [x_name, "W"], ["Y"], axis=-1, epsilon=EPS))
        opset = 23
    outputs = [helper.make_tensor_value_info("Y", elem, shape)]
    if case.residual:
        outputs.append(helper.make_tensor_value_info("H", elem, shape))
    graph = helper.make_graph(nodes, "norm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = numba.get_num_threads()
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx.ModelProto.SerializeToString(model), opts,
                                providers=["CPUExecutionProvider"])
    return {"onnxruntime": lambda: sess.run(None, feeds)}


def _jax(case, x, w, b, gy, r):
    import jax

    if x.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    xj, wj, bj, rj = (jnp.asarray(a) for a in (x, w, b, r))

    def norm(h):
        mean = h.mean(-1, keepdims=True) if case.centered else 0.0
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        y = (h - mean) * jax.lax.rsqrt(var + EPS) * wj
        return y + bj if case.centered else y

    def fn(a, c):
        if case.residual:
            h = a + c
            return norm(h), h
        return norm(a)

    jitted = jax.jit(fn)
    return {"jax": lambda: jax.block_until_ready(jitted(xj, rj))}


def _numpy(case, x, w, b, gy, r):
    if case.direction == "forward":
        return {"numpy": lambda: numpy_forward(x, w, b, case.centered, r if case.residual else None)}
    _, mean, rstd = numpy_forward(x, w, b, case.centered)
    return {"numpy": lambda: numpy_backward(gy, x, mean, rstd, w, case.centered)}


def _copies(case, x, w, b, gy, r):
    if case.direction != "forward":
        return {}
    buf, y = np.empty_like(x), np.empty_like(x)
    h = np.empty_like(x) if case.residual else x[:0]  # residual_out only where there is one
    r2 = r if case.residual else r[:0]
    b2 = b if case.centered else b[:0]
    return {"copy": lambda: copy_roofline(x), "copy reused": lambda: _parallel_copy(x, buf),
            "elementwise reused": lambda: _elementwise_pass(x, r2, w, b2, y, h)}


#: Peers: (name, module that must import, maker, supported dtypes).  Forwards only.
PEERS = [
    ("torch.compile", "torch", _torch_compile, ("float32", "float64")),
    ("onnxruntime", "onnxruntime", _onnxruntime, ("float32", "float64")),
    ("jax", "jax", _jax, ("float32", "float64")),
]
CEILINGS = ("copy", "copy reused", "elementwise reused")


def makers(case: Case, inputs, peers: bool = False) -> dict[str, Callable]:
    """Zero-argument callables, one per implementation available here, for ``case``."""
    x, w, b, gy, r = (np.ascontiguousarray(a.reshape(-1, a.shape[-1])) if a.ndim > 1 else a for a in inputs)
    fns = dict(_fastln(case, x, w, b, gy, r))
    if have_torch():
        fns.update(_torch(case, x, w, b, gy, r))
    if peers and case.direction == "forward":
        for name, module, maker, dtypes in PEERS:
            if case.dtype in dtypes and have(module):
                try:
                    fns.update(maker(case, x, w, b, gy, r))
                except Exception as exc:  # a peer that cannot run this case is skipped, said why
                    fns[name] = exc
    fns.update(_numpy(case, x, w, b, gy, r))
    fns.update(_copies(case, x, w, b, gy, r))
    return fns


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
def _inner_loops(fn, target_s=2e-3) -> int:
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    return max(1, min(1000, int(target_s / max(dt, 1e-7))))


def _nothing():
    pass


def interleaved_samples(fns: dict[str, Callable], rounds: int,
                        setup: dict[str, Callable] | None = None) -> dict[str, np.ndarray]:
    """Seconds per call of each function, one burst per function per round, interleaved;
    ``setup[name]()``, where given, runs (untimed) before each of that function's bursts.

    Each timed burst follows an untimed one of the same function: torch's OpenMP workers
    busy-wait for about 6 ms after a torch call, and on a 2-core machine that slows
    whatever runs next (fastln by ~1.7x at 512x768).  A warm-up of ``WARMUP_S`` lets every
    implementation be timed in the state its own loop would leave the machine in.
    """
    setup = setup or {}
    loops = {}
    for k, f in fns.items():
        setup.get(k, _nothing)()
        loops[k] = _inner_loops(f)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            setup.get(k, _nothing)()
            n = loops[k]
            end = time.perf_counter() + WARMUP_S
            while time.perf_counter() < end:
                f()
            t = time.perf_counter()
            for _ in range(n):
                f()
            samples[k].append((time.perf_counter() - t) / n)
    return {k: np.array(v) for k, v in samples.items()}


def kept_rounds(samples: dict[str, np.ndarray]) -> np.ndarray:
    """Mask of the rounds in which no implementation took ``SPOILED`` times its median."""
    keep = None
    for v in samples.values():
        ok = v <= SPOILED * np.median(v)
        keep = ok if keep is None else keep & ok
    return keep


def kept_samples(fns: dict[str, Callable], rounds: int,
                 setup: dict[str, Callable] | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Interleaved samples of every function with the spoiled rounds dropped for all of them:
    ``({name: seconds per call over the kept rounds}, number of rounds kept)``; ``setup`` as
    in :func:`interleaved_samples`."""
    samples = interleaved_samples(fns, rounds, setup)
    keep = kept_rounds(samples)
    return {k: v[keep] for k, v in samples.items()}, int(keep.sum())


def loaded() -> tuple[float, bool]:
    """The 1-minute load average, and whether it says someone else wants the cores.

    The benchmark's own threads count towards the load, so the machine is *loaded* when the
    load exceeds the cores by more than one."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return 0.0, False
    return load, load > (os.cpu_count() or 1) + 1


@dataclass
class Row:
    norm: str
    shape: tuple
    dtype: str
    direction: str
    impl: str
    median_s: float
    min_s: float
    max_s: float
    gb_per_s: float
    speedup_vs_torch: float | None = None
    speedup_spread: list | None = None  # [min, p25, p75, max] of the per-round ratio
    fraction_of_copy: float | None = None
    fraction_of_reused_copy: float | None = None
    fraction_of_elementwise: float | None = None  # of the "elementwise reused" pass
    max_abs_error: float | None = None
    rounds_kept: int = 0
    noisy: bool = False
    load: float = 0.0
    note: str | None = None


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
        "cores": os.cpu_count(),
        "threads": numba.get_num_threads(),
        "threading_layer": _threading.active_layer(),
    }
    if have_torch():
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    for peer in ("onnxruntime", "jax"):
        if have(peer):
            info[peer] = __import__(peer).__version__
    return info


def max_error(case: Case, inputs) -> float:
    """Max abs error of fastln's forward output against the naive formula in float64."""
    x, w, b, gy, r = inputs
    x64, w64, b64, r64 = (a.astype(np.float64) for a in (x, w, b, r))
    want = numpy_forward(x64, w64, b64, case.centered, r64 if case.residual else None)[0]
    got = _fastln(case, x, w, b, gy, r)["fastln"]()[0]
    return float(np.abs(got - want).max())


def measure(case: Case, fns: dict[str, Callable], rounds: int) -> list[Row]:
    """Rows for one case: interleaved rounds, spoiled rounds dropped, re-measured once if noisy."""
    for _ in range(2):  # a noisy first attempt gets one more
        load, busy = loaded()
        kept, n_kept = kept_samples(fns, rounds)
        spread = max(float(np.subtract(*np.percentile(v, [75, 25])) / np.median(v)) for v in kept.values())
        noisy = busy or n_kept < max(1, rounds // 2) or (rounds >= 3 and spread > NOISY_SPREAD)
        if not noisy:
            break
    nbytes = bytes_moved(case)
    med = {k: float(np.median(v)) for k, v in kept.items()}
    rows = []
    for impl, v in kept.items():
        row = Row(case.norm, case.shape, case.dtype, case.direction, impl, med[impl],
                  float(v.min()), float(v.max()), nbytes / med[impl] / 1e9,
                  rounds_kept=n_kept, noisy=bool(noisy), load=round(load, 2))
        if "torch" in kept and impl not in CEILINGS:
            ratio = kept["torch"] / v
            row.speedup_vs_torch = float(np.median(ratio))
            row.speedup_spread = [float(q) for q in np.percentile(ratio, [0, 25, 75, 100])]
        if "copy" in med and impl not in CEILINGS:
            row.fraction_of_copy = med["copy"] / med[impl]
        if "copy reused" in med and impl not in CEILINGS:
            row.fraction_of_reused_copy = med["copy reused"] / med[impl]
        if "elementwise reused" in med and impl not in CEILINGS:
            row.fraction_of_elementwise = med["elementwise reused"] / med[impl]
        if noisy:
            row.note = "noisy machine: bursts disagreed (or load was high) in two attempts"
        rows.append(row)
    return rows


def run(case_list: list[Case], rounds: int, peers: bool = False, progress=None) -> Report:
    """Benchmark every case; returns a :class:`Report`."""
    if have_torch():
        import torch

        torch.set_num_threads(numba.get_num_threads())  # same threads for both
    report = Report(machine={})
    if not have_torch():
        report.notes.append("torch is not installed: fastln is compared with numpy only")
    load, busy = loaded()
    if busy:
        report.notes.append(f"the machine was loaded when the run started (load {load:.1f} on "
                            f"{os.cpu_count()} cores): rows flagged noisy are unreliable")
    skipped = set()
    for case in case_list:
        inputs = make_inputs(case.shape, case.dtype)
        fns = makers(case, inputs, peers)
        for name, fn in list(fns.items()):
            if isinstance(fn, Exception):
                skipped.add(f"{name} ({case.norm}): {type(fn).__name__}: {str(fn)[:120]}")
                del fns[name]
        for f in fns.values():
            f()  # compile / warm up
        rows = measure(case, fns, rounds)
        if case.direction == "forward":
            err = max_error(case, inputs)
            for row in rows:
                if row.impl == "fastln":
                    row.max_abs_error = err
        report.rows.extend(rows)
        if progress:
            progress()
    report.notes.extend(f"peer skipped: {s}" for s in sorted(skipped))
    if any(r.noisy for r in report.rows):
        report.notes.append("some rows are flagged noisy: re-run them on a quieter machine")
    report.machine = machine_info()
    return report
