"""Run fastln's GPU tests and GPU benchmark on a CUDA machine; write results.

    python tools/gpu_suite.py [--out benchmarks/results/gpu] [--quick] [--skip-tests]
        [--test-filter EXPR] [--test-timeout S] [--no-profile] [--no-sweep] [--sweep-shapes N]
    python tools/gpu_suite.py --replot gpu-bench.json      # redraw a run's plot, no GPU needed

Needs torch with CUDA, numba-cuda (``pip install 'fastln[cuda]'``) and pytest.  Writes under
--out:

* ``gpu-tests.txt``: the pytest log of ``tests/test_gpu.py`` and ``tests/test_cuda_sim.py`` on
  hardware, written as it runs;
* ``gpu-profile.txt``: cProfile of 100 forward+backward calls of ``fastln.torch`` (4096x1024);
* ``gpu-bench.json``: device, driver, versions, and per case (norm, shape, dtype) the medians
  of fastln.torch, torch, a copy, the kernels alone (ordinary Numba launches) and the bridge
  with raw launches turned off, their ratios, and the largest difference from torch; then
  ``tpb_sweep`` (the name is historical): kernel configurations of ``fastln.cuda.config`` timed
  side by side, with their register counts and errors.  Rewritten after every case, so a run
  cut short keeps what it measured;
* ``gpu-bench.png``: one panel per norm and dtype.

Times are medians of 7 interleaved rounds of CUDA-event timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Shapes of the benchmark: (rows, cols); the quick set is a subset.
SHAPES = [(2, 3), (512, 768), (4096, 1024), (8192, 4096), (32768, 1024), (32768, 768), (64, 65536)]
QUICK_SHAPES = [(2, 3), (4096, 1024), (32768, 1024), (64, 65536)]
#: Kernel configurations the sweep times side by side (bare kernels, LayerNorm float32):
#: the block-per-row kernels (one read or two, the backward's block size) and the register
#: kernels' elements a thread.  Session 13's sweeps of elements a thread and row groups are in
#: ``benchmarks/results/gpu-h200/final-bench.json``.
SWEEP = {
    "block kernels": {"ROW_KERNELS": False},
    "block kernels, two reads": {"ROW_KERNELS": False, "BLOCK_SINGLE_READ": False},
    "block kernels, backward 256 threads": {"ROW_KERNELS": False, "BACKWARD_THREADS_PER_BLOCK": 256},
    "rows (defaults)": {},
    "rows, elements a thread a power of two": {"ROW_PER_EXACT": False},
}
SWEEP_SHAPES = [(64, 65536), (256, 16384), (32768, 768)]


def run_tests(out: Path, timeout: float, select: str | None = None) -> int:
    """The real-GPU tests and the simulator's tests on hardware; the log is streamed to a file."""
    env = dict(os.environ, FASTLN_TEST_REAL_GPU="1", NUMBA_ENABLE_CUDASIM="0",
               FASTLN_TEST_WARM="0",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "tests/test_gpu.py", "tests/test_cuda_sim.py",
           "-p", "no:cacheprovider"] + (["-k", select] if select else [])
    try:
        import pytest_timeout  # noqa: F401

        cmd.append("--timeout=240")
    except ImportError:
        pass
    with open(out / "gpu-tests.txt", "w") as log:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[gpu_suite] the tests ran past {timeout} s and were stopped\n")
            rc = 124
    print((out / "gpu-tests.txt").read_text()[-3000:], flush=True)
    return rc


def _time(fn, rounds, inner):
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(rounds):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return samples


def _interleaved(fns: dict, numel: int, rounds: int = 7) -> dict:
    """Median seconds of each callable, the callables taking turns in every round."""
    import numpy as np
    import torch

    for f in fns.values():
        f()
    torch.cuda.synchronize()
    inner = 200 if numel < 1 << 20 else 20
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            samples[k] += _time(f, 1, inner)
    return {k: float(np.median(v)) for k, v in samples.items()}


def _environment() -> dict:
    import torch

    import fastln

    def version(name):
        try:
            from importlib.metadata import version as v

            return v(name)
        except Exception:  # noqa: BLE001 - a missing distribution is recorded as such
            return None

    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        driver = None
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(),
        "multiprocessors": props.multi_processor_count,
        "driver": driver,
        "versions": {"fastln": fastln.__version__, "torch": torch.__version__,
                     "numba": version("numba"), "numba-cuda": version("numba-cuda"),
                     "numpy": version("numpy"), "python": platform.python_version()},
    }


def run_bench(out: Path, quick: bool, sweep: bool) -> dict:
    import torch

    data = dict(_environment(), results=[], tpb_sweep=[], errors=[])

    def save():
        (out / "gpu-bench.json").write_text(json.dumps(data, indent=2))

    for centered in (True, False):
        for dtype in (torch.float32, torch.bfloat16):
            for shape in QUICK_SHAPES if quick else SHAPES:
                try:
                    row = _bench_case(shape, dtype, centered)
                except Exception:  # noqa: BLE001 - record it, measure the other cases
                    data["errors"].append({"shape": shape, "dtype": str(dtype), "centered": centered,
                                           "error": traceback.format_exc()[-2000:]})
                    print(data["errors"][-1]["error"], flush=True)
                    continue
                data["results"].append(row)
                print(json.dumps(row), flush=True)
                save()
    if sweep:
        for shape in SWEEP_SHAPES:
            try:
                data["tpb_sweep"].append(_sweep_case(shape))
                print(json.dumps(data["tpb_sweep"][-1]), flush=True)
            except Exception:  # noqa: BLE001
                data["errors"].append({"shape": shape, "sweep": True, "error": traceback.format_exc()[-2000:]})
            save()
    save()
    try:
        _plot(data, out / "gpu-bench.png")
    except Exception:  # noqa: BLE001 - the JSON is the record; the plot is a view of it
        traceback.print_exc()
    return data


def _kernel_calls(x, w, b, gy, centered):
    """Bare launches of fastln's CUDA kernels on torch's buffers (no bridge, no checks)."""
    import torch
    from numba import cuda

    from fastln import cuda as fcuda

    rows, cols = x.shape
    arr = lambda t: cuda.as_cuda_array(t.detach())  # noqa: E731
    y = torch.empty_like(x)
    mean = torch.empty(rows if centered else 0, dtype=torch.float32, device=x.device)
    rstd = torch.empty(rows, dtype=torch.float32, device=x.device)
    none2 = torch.empty((0, 0), dtype=x.dtype, device=x.device)
    bias = b if centered else torch.empty(0, dtype=x.dtype, device=x.device)
    blocks = fcuda.backward_blocks(rows, cols)
    zeroed = fcuda.partials_zeroed(cols)  # the block-per-row kernels add into their partials
    parts = torch.zeros((2, blocks, cols), dtype=x.dtype, device=x.device)  # x's dtype
    gx, dw, db = torch.empty_like(x), torch.empty_like(w), torch.empty_like(w)
    a = {k: arr(v) for k, v in dict(x=x, w=w, b=bias, y=y, mean=mean, rstd=rstd, none2=none2, gy=gy,
                                       p0=parts[0], p1=parts[1], gx=gx, dw=dw, db=db).items()}
    stream = cuda.external_stream(torch.cuda.current_stream().cuda_stream)

    def forward():
        fcuda.launch_forward(a["x"], a["none2"], a["w"], a["b"], 1e-5, centered, a["y"], a["none2"],
                             a["mean"], a["rstd"], stream=stream)

    def backward():
        if zeroed:
            parts.zero_()
        fcuda.launch_backward(a["gy"], a["x"], a["mean"], a["rstd"], a["w"], centered, a["none2"], a["gx"],
                              a["p0"], a["p1"], a["dw"], a["db"], stream=stream)

    forward()
    torch.cuda.synchronize()
    _last[:] = [y, gx, dw, db]
    return forward, backward


def _bench_case(shape, dtype, centered) -> dict:
    """Interleaved CUDA-event medians of fastln, torch and a copy for one shape and dtype."""
    import torch
    import torch.nn.functional as F

    import fastln.torch as ft

    dev = torch.device("cuda")
    x = torch.randn(shape, device=dev).to(dtype)
    w = torch.randn(shape[-1], device=dev).to(dtype).requires_grad_()
    b = torch.randn(shape[-1], device=dev).to(dtype).requires_grad_()
    xg = x.clone().requires_grad_()
    gy = torch.randn_like(x)
    norm = (shape[-1],)
    if centered:
        ours = lambda t: ft.layer_norm(t, norm, w, b)  # noqa: E731
        theirs = lambda t: F.layer_norm(t, norm, w, b)  # noqa: E731
        params = (xg, w, b)
    else:
        ours = lambda t: ft.rms_norm(t, norm, w, 1e-6)  # noqa: E731
        theirs = lambda t: F.rms_norm(t, norm, w, 1e-6)  # noqa: E731
        params = (xg, w)
    y_f, y_t = ours(xg), theirs(xg)
    # The outputs agree before anything is timed (a fast wrong kernel is no result).
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    with torch.no_grad():
        fwd_err = float((y_f.float() - y_t.float()).abs().max())
    fns = {
        "fastln forward": lambda: ours(x),
        "torch forward": lambda: theirs(x),
        "copy": lambda: x.clone(),
        "fastln backward": lambda: torch.autograd.grad(y_f, params, gy, retain_graph=True),
        "torch backward": lambda: torch.autograd.grad(y_t, params, gy, retain_graph=True),
    }
    if dtype == torch.float32:  # the kernels alone take float32/float64 only
        k_fwd, k_bwd = _kernel_calls(x, w.detach(), b.detach(), gy, centered)
        fns["kernel forward"] = k_fwd
        fns["kernel backward"] = k_bwd
        # The bridge with Numba's ordinary launches (no raw launches through cuda.core).
        ordinary = {"RAW_LAUNCH": False}
        fns["fastln forward, ordinary launches"] = _configured(lambda: ours(x), ordinary)
        fns["fastln backward, ordinary launches"] = _configured(
            lambda: torch.autograd.grad(y_f, params, gy, retain_graph=True), ordinary)
    med = _interleaved(fns, x.numel())
    nbytes = x.numel() * x.element_size()
    row = {
        "norm": "layer_norm" if centered else "rms_norm",
        "shape": shape,
        "dtype": str(dtype).split(".")[-1],
        "forward_max_abs_diff_vs_torch": fwd_err,
        "forward_agrees": fwd_err <= tol * (1 + float(y_t.float().abs().max())),
        "median_s": med,
        "copy_GBps": 2 * nbytes / med["copy"] / 1e9,
        "forward_GBps": 2 * nbytes / med["fastln forward"] / 1e9,
        "backward_GBps": 3 * nbytes / med["fastln backward"] / 1e9,
        "forward_vs_torch": med["torch forward"] / med["fastln forward"],
        "backward_vs_torch": med["torch backward"] / med["fastln backward"],
        "forward_fraction_of_copy": med["copy"] / med["fastln forward"],
    }
    if "kernel forward" in med:
        row["kernel_forward_vs_torch"] = med["torch forward"] / med["kernel forward"]
        row["kernel_backward_vs_torch"] = med["torch backward"] / med["kernel backward"]
        row["raw_launch_forward_speedup"] = med["fastln forward, ordinary launches"] / med["fastln forward"]
        row["raw_launch_backward_speedup"] = med["fastln backward, ordinary launches"] / med["fastln backward"]
    from fastln import cuda as fcuda

    row["raw_launch_on"] = fcuda.config.RAW_LAUNCH
    return row


def _sweep_case(shape) -> dict:
    """Bare-kernel medians of forward and backward (LayerNorm, float32) per configuration
    of :data:`SWEEP`, interleaved, with each one's largest difference from torch."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(shape, device="cuda")
    w, b = torch.randn(shape[1], device="cuda"), torch.randn(shape[1], device="cuda")
    gy = torch.randn_like(x)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = F.layer_norm(leaves[0], shape[1:], leaves[1], leaves[2])
    ref_gx, ref_dw, _ = torch.autograd.grad(ref, leaves, gy)
    ref = ref.detach()
    from fastln import cuda as fcuda

    fns, errors, failed, plans, regs = {}, {}, {}, {}, {}
    for name, settings in SWEEP.items():
        try:
            with _config(settings):
                plans[name] = [fcuda.row_plan(shape[1]), fcuda.backward_row_plan(shape[1])]
                fwd, bwd = _kernel_calls(x, w, b, gy, True)
                bwd()
                torch.cuda.synchronize()
                regs[name] = _registers(shape[1])
        except Exception as e:  # noqa: BLE001 - e.g. too many registers for the block size
            failed[name] = f"{type(e).__name__}: {e}"[:500]
            continue
        fns[f"forward, {name}"] = _configured(fwd, settings)
        fns[f"backward, {name}"] = _configured(bwd, settings)
        y, gx, dw, _ = _last
        errors[name] = {"y": float((y - ref).abs().max()), "gx": float((gx - ref_gx).abs().max()),
                        "dw": float((dw - ref_dw).abs().max())}
    fns["copy"] = lambda: x.clone()
    fns["torch forward"] = lambda: F.layer_norm(x, shape[1:], w, b)
    med = _interleaved(fns, x.numel())
    return {"shape": shape, "median_s": med, "row_plan": plans, "max_abs_diff_vs_torch": errors,
            "failed": failed, "registers": regs}


def _registers(cols: int) -> dict:
    """Registers a thread of the forward and backward kernels the current config launches
    for rows of ``cols`` (after they ran)."""
    from fastln import cuda as fcuda

    fwd, bwd = fcuda._row_launch(cols), fcuda._row_launch(cols, backward=True)
    kernels = (fwd[0] if fwd else fcuda.kernels()[0], bwd[0] if bwd else fcuda.kernels()[1])
    regs = {}
    for kernel in kernels:
        try:
            n = kernel.get_regs_per_thread()
            regs[kernel.py_func.__name__] = n if isinstance(n, int) else sorted(set(n.values()))
        except Exception as e:  # noqa: BLE001 - the API differs between numba-cuda versions
            regs[kernel.py_func.__name__] = repr(e)[:200]
    return regs


_last: list = []  # y, gx, dw, db of the latest _kernel_calls


class _config:
    """``fastln.cuda.config`` with ``settings`` applied, restored on exit."""

    def __init__(self, settings):
        self.settings = settings

    def __enter__(self):
        from fastln import cuda as fcuda

        self.saved = {k: getattr(fcuda.config, k) for k in self.settings}
        for k, v in self.settings.items():
            setattr(fcuda.config, k, v)

    def __exit__(self, *exc):
        from fastln import cuda as fcuda

        for k, v in self.saved.items():
            setattr(fcuda.config, k, v)


def _configured(fn, settings):
    """``fn`` run under ``settings`` (the launchers read the config on every call)."""

    def call():
        with _config(settings):
            fn()

    return call


def run_profile(out: Path) -> None:
    """Where the bridge's time goes: cProfile of fastln.torch calls on the GPU."""
    import cProfile
    import io
    import pstats

    import torch

    import fastln.torch as ft

    x = torch.randn(4096, 1024, device="cuda", requires_grad=True)
    w = torch.randn(1024, device="cuda", requires_grad=True)
    b = torch.randn(1024, device="cuda", requires_grad=True)
    gy = torch.randn_like(x)

    def step():
        y = ft.layer_norm(x, (1024,), w, b)
        torch.autograd.grad(y, (x, w, b), gy)

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(100):
        step()
    torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
    (out / "gpu-profile.txt").write_text(text.getvalue())
    print(text.getvalue()[:4000], flush=True)


def _plot(data, path):
    """One panel per norm and dtype: forward and backward speed-ups over torch, through the
    bridge (bars) and, for float32, of the kernels alone (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    if not rows:
        return
    panels = sorted({(r["norm"], r["dtype"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.5), constrained_layout=True,
                             squeeze=False, sharey=True)
    for ax, (norm, dtype) in zip(axes[0], panels, strict=True):
        sub = [r for r in rows if (r["norm"], r["dtype"]) == (norm, dtype)]
        xs = list(range(len(sub)))
        for dx, key, color in ((-0.2, "forward", "tab:blue"), (0.2, "backward", "tab:orange")):
            ax.bar([i + dx for i in xs], [r[f"{key}_vs_torch"] for r in sub], 0.4, color=color,
                   label=f"{key}, fastln.torch")
            kernel = [r.get(f"kernel_{key}_vs_torch") for r in sub]
            if any(k is not None for k in kernel):
                ax.plot([i + dx for i, k in zip(xs, kernel, strict=True) if k is not None],
                        [k for k in kernel if k is not None], "o", color="k", ms=4,
                        label="kernels alone (ordinary Numba launch)" if key == "forward" else None)
        ax.axhline(1, color="k", ls="--", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(xs, [f"{r['shape'][0]}x{r['shape'][1]}" for r in sub], rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{norm} {dtype}")
    axes[0][0].set_ylabel("torch time / fastln time (above 1: fastln faster)")
    legend = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=3)
    fig.suptitle(f"fastln's CUDA path against torch on {data['device']}")
    fig.savefig(path, dpi=100)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu")
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep of kernel configurations")
    ap.add_argument("--sweep-shapes", type=int, default=None, help="sweep only the first N shapes")
    ap.add_argument("--replot", type=Path, default=None, help="only redraw the plot of this gpu-bench.json")
    ap.add_argument("--test-timeout", type=float, default=300.0, help="seconds for the whole test run")
    ap.add_argument("--test-filter", default=None, help="pytest -k expression for the tests")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of the bridge")
    args = ap.parse_args()
    if args.replot is not None:
        _plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rc = 0 if args.skip_tests else run_tests(args.out, args.test_timeout, args.test_filter)
    try:
        if not args.no_profile:
            run_profile(args.out)
    except Exception:  # noqa: BLE001 - the benchmark still runs
        traceback.print_exc()
    if args.sweep_shapes is not None:
        del SWEEP_SHAPES[args.sweep_shapes:]
    run_bench(args.out, args.quick, not args.no_sweep)
    return rc


if __name__ == "__main__":
    sys.exit(main())
