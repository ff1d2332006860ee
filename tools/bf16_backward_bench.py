"""bfloat16 backward: fastln's in-kernel conversion vs the float32 upcast it replaced and
vs torch's native bfloat16 kernel (LayerNorm backward, affine, 2 threads).

    python tools/bf16_backward_bench.py [--rounds 15]

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


def case(shape, rounds):
    rows, cols = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(torch.bfloat16)
    gy = torch.randn(shape, generator=g).to(torch.bfloat16)
    w = torch.randn(cols, generator=g).to(torch.bfloat16)
    b = torch.randn(cols, generator=g).to(torch.bfloat16)
    _, _, mean, rstd = _glue.forward_impl(x, None, (cols,), rows, cols, w, b, 1e-5, True)
    _, tmean, trstd = torch.ops.aten.native_layer_norm(x, [cols], w, b, 1e-5)

    def in_kernel():
        _glue.backward_impl(gy, None, x, mean, rstd, w, (cols,), rows, cols, True, True)

    def upcast():  # what fastln did before: float32 copies in, grad_x rounded after
        gx, _, _ = _glue.backward_impl(gy.float(), None, x.float(), mean, rstd, w.float(), (cols,), rows, cols, True, True)
        gx.to(torch.bfloat16)

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
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    print("| shape | in kernel | upcast (before) | torch native bf16 | upcast / in kernel | torch / in kernel |")
    print("|---|---|---|---|---|---|")
    for shape in [(512, 768), (4096, 1024), (32768, 768), (8192, 4096)]:
        o = case(shape, a.rounds)
        t = lambda s: f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"  # noqa: E731
        u, n = o["upcast ratio"], o["torch ratio"]
        print(f"| {shape[0]}x{shape[1]} | {t(o['in kernel'])} | {t(o['upcast'])} | {t(o['torch'])} "
              f"| {u[0]:.2f}x [{u[1]:.2f}-{u[2]:.2f}] | {n[0]:.2f}x [{n[1]:.2f}-{n[2]:.2f}] |", flush=True)


if __name__ == "__main__":
    main()
