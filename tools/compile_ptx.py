"""Compile fastln's CUDA kernels, in their real-hardware form (warp shuffles), to PTX for a
chosen compute capability, and count each one's registers with ``ptxas`` when it is on the
PATH or in the ``nvidia-cuda-nvcc`` wheel.  Needs numba-cuda and NVVM (``pip install
'numba-cuda[cu12]'``) but no GPU, so the hardware-only path is type-checked, and its register
use read, on any machine.

    python tools/compile_ptx.py [--cc 9.0] [--out DIR] [--cols 768 1024 4096]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _signatures(dtype: str) -> dict:
    a2, a1 = f"{dtype}[:, ::1]", f"{dtype}[::1]"
    return {
        "forward": f"void({a2}, {a2}, {a1}, {a1}, float64, boolean, {a2}, {a2}, {a1}, {a1})",
        "backward": f"void({a2}, {a2}, {a1}, {a1}, {a1}, boolean, {a2}, {a2}, {a2}, {a2})",
        "reduce": f"void({a2}, {a2}, {a1}, {a1})",
    }


def _ptxas() -> str | None:
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import nvidia.cuda_nvcc

        path = Path(list(nvidia.cuda_nvcc.__path__)[0]) / "bin" / "ptxas"
        return str(path) if path.exists() else None
    except ImportError:
        return None


def _registers(ptxas: str | None, ptx: str, cc) -> str:
    if ptxas is None:
        return "(no ptxas)"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    lines = [ln.split("info    : ")[-1] for ln in out.stderr.splitlines() if "Used" in ln or "spill" in ln]
    return "; ".join(lines) or out.stderr.strip()[-300:]


def _arithmetic(ptx: str, kind: str) -> int:
    """Add, subtract, multiply and fma instructions on ``kind`` (``f32``/``f64``) in ``ptx``:
    the kernels' loops are unrolled, so per-element float64 work shows as a count near the
    float32 one, and per-chunk work as a small one."""
    return sum(ptx.count(f"{op}{mode}.{kind}") for op in ("add", "sub", "mul", "fma")
               for mode in ("", ".rn"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc", default="9.0")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cols", type=int, nargs="*", default=[768, 1024, 4096, 8192])
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))

    from numba import cuda

    from fastln import cuda as fcuda

    ptxas = _ptxas()
    sigs = _signatures(args.dtype)
    cases = {"block kernels": dict(zip(("forward", "backward", "reduce"), fcuda.kernels(), strict=True))}
    for cols in args.cols:
        fwd, bwd = fcuda._row_launch(cols), fcuda._row_launch(cols, backward=True)
        if fwd is not None:
            cases[f"{cols} columns, forward {fcuda.row_plan(cols)}"] = {"forward": fwd[0]}
        if bwd is not None:
            cases[f"{cols} columns, backward {fcuda.backward_row_plan(cols)}"] = {"backward": bwd[0]}
    for case, kernels in cases.items():
        for name, kernel in kernels.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sigs[name], cc=cc, **getattr(kernel, "_fastln_options", {}))
            print(f"{case:40} {name:9} {len(ptx):7d} chars of PTX, {ptx.count('shfl.sync'):3d} shfl.sync, "
                  f"{_arithmetic(ptx, 'f32'):4d} f32 and {_arithmetic(ptx, 'f64'):3d} f64 add/sub/mul/fma, "
                  f"{_registers(ptxas, ptx, cc)}")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{case.split()[0]}-{name}.ptx").write_text(ptx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
