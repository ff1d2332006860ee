"""The ``fastln`` command: ``fastln info | bench | demo | compile`` (also ``python -m fastln``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

DTYPES = ("float32", "float64")


def _parser() -> argparse.ArgumentParser:
    from fastln import bench

    p = argparse.ArgumentParser(prog="fastln", description="Fast, accurate LayerNorm: tools.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, threading, SIMD features, cache, CUDA devices")
    b = sub.add_parser("bench", help="benchmark fastln against torch, its peers and numpy")
    b.add_argument("--quick", action="store_true", help="fewer shapes and rounds (about a minute)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    b.add_argument("--dtype", nargs="+", choices=DTYPES, default=None,
                   help="data types (default float32; float32 and float64 without --quick)")
    b.add_argument("--norm", nargs="+", choices=bench.NORMS, default=None,
                   help="norms to run (default: all of them)")
    b.add_argument("--peers", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile, ONNX Runtime and JAX where installed "
                        "(default: on without --quick)")
    b.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case")
    b.add_argument("--out", type=Path, default=Path("bench-out"), help="directory for JSON and PNG")
    sub.add_parser("demo", help="the seed article's three examples, fastln beside torch")
    c = sub.add_parser("compile", help="compile every CPU kernel into the on-disk cache now, one process per core")
    c.add_argument("--jobs", type=int, default=None, help="processes to compile in (default: the cores this process may run on)")
    c.add_argument("-v", "--verbose", action="store_true", help="print each kernel's compile time")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "rounds", None) is not None and args.rounds < 1:
        _parser().error("--rounds must be at least 1")
    if getattr(args, "jobs", None) is not None and args.jobs < 1:
        _parser().error("--jobs must be at least 1")
    return {"info": cmd_info, "bench": cmd_bench, "demo": cmd_demo, "compile": cmd_compile}[args.command](args)


def cmd_compile(args) -> int:
    from fastln import _cache, _warm

    if _cache.DIRECTORY is None:
        print("fastln: the kernel cache is off (FASTLN_CACHE=0 or no writable location): nothing to keep",
              file=sys.stderr)
        return 1
    seconds = _warm.warm(args.jobs, args.verbose)
    print(f"{len(_warm.tasks())} kernels compiled or loaded in {seconds:.1f} s; cache: {_cache.DIRECTORY}")
    return 0


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
        "torch_native_glue": None,
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
    else:
        from fastln.torch import _fast

        info["torch_native_glue"] = _fast.describe()
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
    dtypes = args.dtype or (["float32"] if args.quick else list(DTYPES))
    rounds = args.rounds or (7 if args.quick else 15)
    peers = (not args.quick) if args.peers is None else args.peers
    shapes, family = ((bench.QUICK_SHAPES, bench.QUICK_FAMILY_SHAPES) if args.quick
                      else (bench.FULL_SHAPES, bench.FAMILY_SHAPES))
    case_list = bench.cases(args.norm or bench.NORMS, shapes, family, dtypes)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=len(case_list))
        report = bench.run(case_list, rounds, peers, lambda: progress.advance(task))
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

    t = Table(title="fastln vs torch, its peers and numpy (medians of interleaved bursts; "
                    "ratio = torch time / impl time, [min-max] over kept rounds)")
    for col in ("norm", "shape", "dtype", "pass", "impl", "time", "GB/s", "vs torch", "of copy", "of elementwise",
                "max err"):
        t.add_column(col, justify="right")

    def fmt(v, spec):
        return "" if v is None else format(v, spec)

    for r in report.rows:
        ratio = ""
        if r.speedup_vs_torch is not None:
            lo, hi = r.speedup_spread[0], r.speedup_spread[-1]
            ratio = f"{r.speedup_vs_torch:.2f} [{lo:.2f}-{hi:.2f}]"
        of_copy = r.fraction_of_reused_copy if r.impl == "fastln out=" else r.fraction_of_copy
        t.add_row(
            r.norm, "x".join(map(str, r.shape)), r.dtype, r.direction, r.impl + (" (noisy)" if r.noisy else ""),
            _fmt_time(r.median_s), f"{r.gb_per_s:.1f}", ratio, fmt(of_copy, ".2f"),
            fmt(r.fraction_of_elementwise if r.impl == "fastln out=" else None, ".2f"), fmt(r.max_abs_error, ".1e"),
            style="yellow" if r.noisy else None,
        )
    t.caption = ("GB/s: forward 2*bytes(x)/t (4x for add-norms: x, r in, y, h out), backward 3*bytes(x)/t. "
                 "'of copy': fraction of an allocating parallel copy; for 'fastln out=' of a copy into "
                 "a reused buffer.  'of elementwise': 'fastln out=' as a fraction of the norm's element-wise "
                 "work alone (y = x*w + b, no statistics) into a reused buffer.")
    return t


def _fmt_time(s: float) -> str:
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


#: One colour per implementation, the same in every panel.
COLOURS = {
    "fastln": "tab:blue", "fastln out=": "tab:cyan", "torch": "tab:orange", "torch.compile": "tab:red",
    "onnxruntime": "tab:purple", "jax": "tab:green", "numpy": "tab:gray", "copy": "tab:brown",
    "copy reused": "tab:olive", "elementwise reused": "tab:pink",
}


def plot(data: dict, path: Path) -> None:
    """Time per call (log scale, so 2x3 and 32768x768 read alike) and GB/s, one row of panels
    per (norm, pass); one colour per implementation everywhere; legends list only drawn bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["results"]
    groups = list(dict.fromkeys((r["norm"], r["direction"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(16, 3.6 * len(groups) + 1), squeeze=False,
                             constrained_layout=True)
    for k, (norm, direction) in enumerate(groups):
        sel = [r for r in rows if r["norm"] == norm and r["direction"] == direction]
        cases = list(dict.fromkeys((tuple(r["shape"]), r["dtype"]) for r in sel))
        labels = [f"{'x'.join(map(str, s))} {d}" for s, d in cases]
        impls = list(dict.fromkeys(r["impl"] for r in sel))
        xs = np.arange(len(cases))
        width = 0.8 / max(len(impls), 1)
        for ax, metric in ((axes[k, 0], "median_s"), (axes[k, 1], "gb_per_s")):
            for n, impl in enumerate(impls):
                lookup = {(tuple(r["shape"]), r["dtype"]): r for r in sel if r["impl"] == impl}
                vals = [lookup[c][metric] if c in lookup else np.nan for c in cases]
                if metric == "median_s":
                    vals = [v * 1e6 for v in vals]
                hatch = ["//" if c in lookup and lookup[c]["noisy"] else "" for c in cases]
                bars = ax.bar(xs + n * width, vals, width, label=impl, color=COLOURS.get(impl, "black"))
                for bar, h in zip(bars, hatch, strict=True):
                    bar.set_hatch(h)
            ax.set_xticks(xs + width * (len(impls) - 1) / 2, labels, rotation=20, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3, which="both")
            ax.legend(fontsize=7, ncol=3)
        axes[k, 0].set_ylabel("us per call (lower is better)")
        axes[k, 0].set_title(f"{norm} {direction}: time per call")
        axes[k, 1].set_ylabel("GB/s (higher is better)")
        axes[k, 1].set_title(f"{norm} {direction}: bandwidth (copy, copy reused, elementwise reused = ceilings)")
    m = data.get("machine", {})
    fig.suptitle(f"fastln {m.get('fastln', '')}, {m.get('threads', '?')} threads, {m.get('processor', '')}"
                 " (hatched: noisy)")
    fig.savefig(path, dpi=90)
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
