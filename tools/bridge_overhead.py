"""What the torch bridge costs on top of the kernels, and what it keeps of their speed.

    python tools/bridge_overhead.py [--out FILE.json]

Per shape: medians (interleaved rounds, each after a 15 ms warm-up, see fastln.bench) of
forward+backward through fastln.torch.layer_norm, through F.layer_norm, and of the bare
NumPy-level fastln calls on the same data (the kernels plus fastln's own checks).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastln  # noqa: E402
import fastln.torch as ft  # noqa: E402
from fastln import bench  # noqa: E402


def case(shape, rounds):
    norm = shape[-1:]
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(norm, requires_grad=True)
    b = torch.randn(norm, requires_grad=True)
    gy = torch.randn(shape)
    xn, wn, bn, gn = (t.detach().numpy() for t in (x, w, b, gy))

    def bridge():
        y = ft.layer_norm(x, norm, w, b)
        torch.autograd.grad(y, (x, w, b), gy)

    def native():
        y = F.layer_norm(x, norm, w, b)
        torch.autograd.grad(y, (x, w, b), gy)

    def numpy_api():
        _, m, r = fastln.layer_norm_forward(xn, norm, wn, bn)
        fastln.layer_norm_backward(gn, xn, m, r, wn)

    med = bench.interleaved_medians({"fastln.torch": bridge, "torch": native, "fastln numpy API": numpy_api}, rounds)
    return {
        "shape": list(shape),
        "median_us": {k: v * 1e6 for k, v in med.items()},
        "bridge_overhead_us": (med["fastln.torch"] - med["fastln numpy API"]) * 1e6,
        "speedup_vs_torch": med["torch"] / med["fastln.torch"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    rows = [case(s, args.rounds) for s in [(32, 20, 20), (2, 3), (32768, 768), (8192, 4096)]]
    for r in rows:
        print(json.dumps(r))
    if args.out:
        args.out.write_text(json.dumps({"machine": bench.machine_info(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
