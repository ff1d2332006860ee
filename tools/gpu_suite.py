"""Run fastln's GPU tests and GPU benchmark on a CUDA machine; write results.

    python tools/gpu_suite.py [--out benchmarks/results] [--quick]

Needs torch with CUDA, numba-cuda (``pip install 'fastln[cuda]'``) and pytest.  Writes
``gpu-tests.txt``, ``gpu-bench.json`` (device, versions, shapes, medians, ratios) and
``gpu-bench.png`` under --out.  Times are CUDA-event medians of interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_tests(out: Path) -> int:
    env = dict(os.environ, FASTLN_TEST_REAL_GPU="1", NUMBA_ENABLE_CUDASIM="0")
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/test_gpu.py", "tests/test_cuda_sim.py", "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (out / "gpu-tests.txt").write_text(proc.stdout + proc.stderr)
    print(proc.stdout[-3000:])
    return proc.returncode


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


def run_bench(out: Path, quick: bool) -> dict:
    import torch

    import fastln

    shapes = [(2, 3), (4096, 1024), (8192, 4096), (32768, 1024)] if quick else [
        (2, 3), (512, 768), (4096, 1024), (8192, 4096), (32768, 1024), (32768, 768), (64, 65536)]
    results = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in shapes:
            row = _bench_case(shape, dtype)
            results.append(row)
            print(json.dumps(row))
    data = {
        "device": torch.cuda.get_device_name(),
        "versions": {"fastln": fastln.__version__, "torch": torch.__version__,
                     "numba": __import__("numba").__version__, "python": platform.python_version()},
        "results": results,
    }
    (out / "gpu-bench.json").write_text(json.dumps(data, indent=2))
    _plot(data, out / "gpu-bench.png")
    return data


def _bench_case(shape, dtype) -> dict:
    """Interleaved CUDA-event medians of fastln, torch and a copy for one shape and dtype."""
    import numpy as np
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
    y_f = ft.layer_norm(xg, norm, w, b)
    y_t = F.layer_norm(xg, norm, w, b)
    fns = {
        "fastln forward": lambda: ft.layer_norm(x, norm, w, b),
        "torch forward": lambda: F.layer_norm(x, norm, w, b),
        "copy": lambda: x.clone(),
        "fastln backward": lambda: torch.autograd.grad(y_f, (xg, w, b), gy, retain_graph=True),
        "torch backward": lambda: torch.autograd.grad(y_t, (xg, w, b), gy, retain_graph=True),
    }
    for f in fns.values():
        f()
    torch.cuda.synchronize()
    inner = 200 if x.numel() < 1 << 20 else 20
    samples = {k: [] for k in fns}
    for _ in range(7):  # interleaved rounds
        for k, f in fns.items():
            samples[k] += _time(f, 1, inner)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    nbytes = x.numel() * x.element_size()
    return {
        "shape": shape,
        "dtype": str(dtype).split(".")[-1],
        "median_s": med,
        "copy_GBps": 2 * nbytes / med["copy"] / 1e9,
        "forward_GBps": 2 * nbytes / med["fastln forward"] / 1e9,
        "forward_vs_torch": med["torch forward"] / med["fastln forward"],
        "backward_vs_torch": med["torch backward"] / med["fastln backward"],
        "forward_fraction_of_copy": med["copy"] / med["fastln forward"],
    }


def _plot(data, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    labels = [f"{r['shape'][0]}x{r['shape'][1]}\n{r['dtype']}" for r in rows]
    fig, ax = plt.subplots(figsize=(12, 5), constrained_layout=True)
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [r["forward_vs_torch"] for r in rows], 0.4, label="forward")
    ax.bar([i + 0.2 for i in xs], [r["backward_vs_torch"] for r in rows], 0.4, label="backward")
    ax.axhline(1, color="k", ls="--", lw=1)
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("speedup vs torch CUDA layer_norm")
    ax.set_title(f"fastln on {data['device']}")
    ax.legend()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rc = run_tests(args.out)
    run_bench(args.out, args.quick)
    return rc


if __name__ == "__main__":
    sys.exit(main())
