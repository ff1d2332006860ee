"""The ``fastln`` command: ``fastln info | bench | demo`` (also ``python -m fastln``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DTYPES = ("float32", "float64")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastln", description="Fast, accurate LayerNorm: tools.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threading, SIMD features, cache, CUDA devices")
    b = sub.add_parser("bench", help="benchmark fastln against torch and numpy")
    b.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about a minute)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--dtype", nargs="+", choices=DTYPES, default=None,
                   help="data types (default float32; float32 and float64 without --quick)")
    b.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    b.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for JSON and PNG")
    sub.add_parser("demo", help="the seed article's three examples, fastln beside torch")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "rounds", None) is not None and args.rounds < 1:
        _parser().error("--rounds must be at least 1")
    return {"info": cmd_info, "bench": cmd_bench, "demo": cmd_demo}[args.command](args)


# ---------------------------------------------------------------------------------------
def info_dict() -> dict:
    import llvmlite.binding as llvm
    import numba

    import fastln
    from fastln import _cache, _threading

    fastln.layer_norm(np.ones((256, 256)))  # a parallel launch starts the threading layer
    features = llvm.get_host_cpu_features().flatten().split(",")
    simd = sorted(f[1:] for f in features if f.startswith("+") and f[1:].startswith(("avx", "sse", "fma")))
    info = {
        "fastln": fastln.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "torch": None,
        "threading_layer": _threading.active_layer(),
        "threading_requested": _threading.REQUESTED_LAYER,
        "forked_from_openmp": _threading.FORKED_FROM_OPENMP,
        "threads": numba.get_num_threads(),
        "cpu": llvm.get_host_cpu_name(),
        "simd": simd,
        "cache": _cache.describe(),
        "cuda": _cuda_info(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cuda_info() -> dict:
    try:
        from numba import cuda
    except ImportError as exc:
        return {"available": False, "reason": str(exc)}
    try:
        if not cuda.is_available():
            return {"available": False, "reason": "no CUDA driver or device"}
        return {"available": True, "devices": [d.name.decode() if isinstance(d.name, bytes) else d.name for d in cuda.gpus]}
    except Exception as exc:  # a broken driver must not break `fastln info`
        return {"available": False, "reason": str(exc)}


def cmd_info(args) -> int:
    for key, value in info_dict().items():
        print(f"{key:16} {', '.join(value) if isinstance(value, list) else value}")
    return 0


# ---------------------------------------------------------------------------------------
def cmd_bench(args) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from fastln import bench

    console = Console(width=max(Console().width, 120))
    if args.device == "cuda":
        console.print("[red]error:[/] the CUDA benchmark runs on a GPU machine: see tools/gpu_suite.py")
        return 2
    shapes = bench.QUICK_SHAPES if args.quick else bench.FULL_SHAPES
    dtypes = args.dtype or (["float32"] if args.quick else list(DTYPES))
    rounds = args.rounds or (5 if args.quick else 15)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=2 * len(shapes) * len(dtypes))
        report = bench.run(shapes, [np.dtype(d) for d in dtypes], rounds, lambda: progress.advance(task))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(_table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "bench.json"
    json_path.write_text(json.dumps(report.to_json(), indent=2))
    png_path = args.out / "bench.png"
    plot(report.to_json(), png_path)
    console.print(f"wrote {json_path} and {png_path}")
    return 0


def _table(report):
    from rich.table import Table

    t = Table(title="fastln vs torch vs numpy (median of interleaved rounds)")
    for col in ("shape", "dtype", "pass", "impl", "time", "GB/s", "vs torch", "of copy", "max err"):
        t.add_column(col, justify="right")

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in report.rows:
        t.add_row(
            "x".join(map(str, r.shape)), r.dtype, r.direction, r.impl, _fmt_time(r.median_s),
            f"{r.gb_per_s:.1f}", fmt(r.speedup_vs_torch, ".2f"), fmt(r.fraction_of_copy_roofline, ".2f"),
            fmt(r.max_abs_error, ".1e"),
        )
    return t


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def plot(data: dict, path: Path) -> None:
    """Speedup vs torch and GB/s per shape, forward and backward (rows), one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 9), constrained_layout=True)
    for k, direction in enumerate(("forward", "backward")):
        sel = [r for r in rows if r["direction"] == direction]
        cases = list(dict.fromkeys((tuple(r["shape"]), r["dtype"]) for r in sel))
        labels = [f"{s[0]}x{s[1]} {d}" for s, d in cases]
        xs = np.arange(len(cases))
        for ax, metric, skip in ((axes[k, 0], "speedup_vs_torch", ("torch", "copy")), (axes[k, 1], "gb_per_s", ())):
            impls = [i for i in dict.fromkeys(r["impl"] for r in sel) if i not in skip]
            width = 0.8 / max(len(impls), 1)
            for n, impl in enumerate(impls):
                lookup = {(tuple(r["shape"]), r["dtype"]): r[metric] for r in sel if r["impl"] == impl}
                vals = [lookup.get(c) or 0 for c in cases]
                ax.bar(xs + n * width, vals, width, label=impl)
            ax.set_xticks(xs + width * (len(impls) - 1) / 2, labels, rotation=30, ha="right", fontsize=8)
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[k, 0].axhline(1.0, color="k", lw=1, ls="--")
        axes[k, 0].set_ylabel("speedup vs torch (higher is better)")
        axes[k, 0].set_title(f"{direction}: speedup vs torch (same threads)")
        axes[k, 1].set_ylabel("GB/s moved (higher is better)")
        axes[k, 1].set_title(f"{direction}: bandwidth (copy = memory roofline)")
    m = data.get("machine", {})
    fig.suptitle(f"fastln {m.get('fastln', '')}, {m.get('threads', '?')} threads, {m.get('processor', '')}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    try:
        import torch
        from torch import nn
    except ImportError:
        print("fastln demo needs torch: pip install 'fastln[torch]'", file=sys.stderr)
        return 2
    import fastln.torch as ft

    torch.manual_seed(0)
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    examples = [
        ("basic 2x3", x, nn.LayerNorm(3), ft.LayerNorm(3)),
        ("custom eps=1e-2", x, nn.LayerNorm(3, eps=1e-2), ft.LayerNorm(3, eps=1e-2)),
    ]
    rnn = nn.RNN(input_size=10, hidden_size=20, num_layers=2, batch_first=True)
    out, _ = rnn(torch.randn(32, 20, 10))
    examples.append(("after nn.RNN (32x20x20)", out.detach(), nn.LayerNorm(20), ft.LayerNorm(20)))
    worst = 0.0
    for name, inp, ref, fast in examples:
        a, b = ref(inp), fast(inp)
        diff = float((a - b).abs().max().detach())
        worst = max(worst, diff)
        print(f"== {name}: max |torch - fastln| = {diff:.2e}")
        if inp.numel() <= 6:
            print("torch :", a.detach().numpy().round(6).tolist())
            print("fastln:", b.detach().numpy().round(6).tolist())
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
