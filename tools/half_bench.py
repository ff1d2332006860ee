"""Half precision through the bridge: fastln's in-kernel conversion vs the float32 upcast it
replaced and vs torch's native half kernels (LayerNorm, affine, 2 threads).

    python tools/half_bench.py [--dtype bfloat16 float16] [--pass forward backward] [--rounds 15]

Interleaved bursts (fastln.bench); ratio = other time / in-kernel time, [min-max] per round.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastln import bench  # noqa: E402
from fastln.torch import _glue  # noqa: E402

SHAPES = [(512, 768), (4096, 1024), (32768, 768), (8192, 4096)]


def case(shape, dtype, direction, rounds):
    rows, cols = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    gy = torch.randn(shape, generator=g).to(dtype)
    w = torch.randn(cols, generator=g).to(dtype)
    b = torch.randn(cols, generator=g).to(dtype)
    _, _, mean, rstd = _glue.forward_impl(x, None, (cols,), rows, cols, w, b, 1e-5, True)
    _, tmean, trstd = torch.ops.aten.native_layer_norm(x, [cols], w, b, 1e-5)
    if direction == "forward":
        def in_kernel():
            _glue.forward_impl(x, None, (cols,), rows, cols, w, b, 1e-5, True)

        def upcast():  # float32 copies in, y rounded after
            y = _glue.forward_impl(x.float(), None, (cols,), rows, cols, w.float(), b.float(), 1e-5, True)[0]
            y.to(dtype)

        def native():
            torch.ops.aten.native_layer_norm(x, [cols], w, b, 1e-5)
    else:
        def in_kernel():
            _glue.backward_impl(gy, None, x, mean, rstd, w, (cols,), rows, cols, True, True)

        def upcast():  # float32 copies in, grad_x rounded after
            gx, _, _ = _glue.backward_impl(gy.float(), None, x.float(), mean, rstd, w.float(), (cols,), rows, cols, True, True)
            gx.to(dtype)

        def native():
            torch.ops.aten.native_layer_norm_backward(gy, x, [cols], tmean, trstd, w, b, [True, True, True])

    k, _ = bench.kept_samples({"in kernel": in_kernel, "upcast": upcast, "torch": native}, rounds)
    out = {n: float(np.median(v)) for n, v in k.items()}
    for other in ("upcast", "torch"):
        r = k[other] / k["in kernel"]
        out[other + " ratio"] = (float(np.median(r)), float(r.min()), float(r.max()))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    p.add_argument("--pass", dest="passes", nargs="+", default=["forward", "backward"], choices=["forward", "backward"])
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    print("| dtype | pass | shape | in kernel | upcast | torch native | upcast / in kernel | torch / in kernel |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in a.dtype:
        for direction in a.passes:
            for shape in SHAPES:
                o = case(shape, getattr(torch, dtype), direction, a.rounds)
                t = lambda s: f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"  # noqa: E731
                u, n = o["upcast ratio"], o["torch ratio"]
                print(f"| {dtype} | {direction} | {shape[0]}x{shape[1]} | {t(o['in kernel'])} | {t(o['upcast'])} "
                      f"| {t(o['torch'])} | {u[0]:.2f}x [{u[1]:.2f}-{u[2]:.2f}] | {n[0]:.2f}x [{n[1]:.2f}-{n[2]:.2f}] |",
                      flush=True)


if __name__ == "__main__":
    main()
