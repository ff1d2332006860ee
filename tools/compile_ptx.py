"""Compile fastln's CUDA kernels, in their real-hardware form (warp shuffles, 256 threads),
to PTX for a chosen compute capability.  Needs numba-cuda and NVRTC (``pip install
'numba-cuda[cu12]'``) but no GPU, so the hardware-only path is type-checked on any machine.

    python tools/compile_ptx.py [--cc 9.0] [--out DIR]
"""

import argparse
import os
import sys
from pathlib import Path

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cc", default="9.0")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))

    from numba import cuda

    from fastln import cuda as fcuda

    forward, backward, reduce = fcuda._kernels(256, True)
    sigs = {
        "forward": [
            "(float32[:, ::1], float32[::1], float32[::1], float64, float32[:, ::1], float32[::1], float32[::1])",
            "(float64[:, ::1], float64[::1], float64[::1], float64, float64[:, ::1], float64[::1], float64[::1])",
        ],
        "backward": [
            "(float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[::1], float32[:, ::1], float64[:, ::1], float64[:, ::1])",
            "(float64[:, ::1], float64[:, ::1], float64[::1], float64[::1], float64[::1], float64[:, ::1], float64[:, ::1], float64[:, ::1])",
        ],
        "reduce": ["(float64[:, ::1], float64[:, ::1], float32[::1], float32[::1])"],
    }
    kernels = {"forward": forward, "backward": backward, "reduce": reduce}
    for name, kernel in kernels.items():
        for sig in sigs[name]:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            shuffles = ptx.count("shfl.sync")
            print(f"{name:9} {sig[:40]}...  {len(ptx):6d} chars of PTX, {shuffles} shfl.sync")
            if args.out:
                args.out.mkdir(parents=True, exist_ok=True)
                (args.out / f"{name}-{sig.count('float64')}.ptx").write_text(ptx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
