"""RMSNorm and fused add-norm against torch on the CPU, through fastln.torch.

Interleaved rounds (every implementation once per round, in turn), medians and the
interquartile spread of the per-round ratio; rounds spoiled by a noisy machine (a round
more than 3x its median) are dropped.  Usage::

    python tools/norm_family_bench.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

import fastln.torch as ft

SHAPES = [(4096, 1024), (8, 512, 4096)]


def _time(fn, target=0.02):
    fn()
    n, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t = time.perf_counter() - t0
        if t > target:
            return t / n
        n *= 2


def cases(shape, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    w = torch.randn(shape[-1], generator=g).to(dtype)
    gy = torch.randn(shape, generator=g).to(dtype)
    n = shape[-1:]

    def fb(fn):
        def run():
            xg = x.detach().requires_grad_()
            wg = w.detach().requires_grad_()
            fn(xg, wg).backward(gy)
        return run

    with_grad = dtype == torch.float32
    out = {
        "rms fwd": {"torch": lambda: F.rms_norm(x, n, w, 1e-6), "fastln": lambda: ft.rms_norm(x, n, w, 1e-6)},
        "ln fwd": {"torch": lambda: F.layer_norm(x, n, w, w), "fastln": lambda: ft.layer_norm(x, n, w, w)},
        "add+rms fwd": {"torch": lambda: F.rms_norm(x + r, n, w, 1e-6), "fastln": lambda: ft.add_rms_norm(x, r, n, w, 1e-6)},
    }
    if with_grad:
        out["rms fwd+bwd"] = {"torch": fb(lambda a, b: F.rms_norm(a, n, b, 1e-6)), "fastln": fb(lambda a, b: ft.rms_norm(a, n, b, 1e-6))}
        out["ln fwd+bwd"] = {"torch": fb(lambda a, b: F.layer_norm(a, n, b, b)), "fastln": fb(lambda a, b: ft.layer_norm(a, n, b, b))}
    return out


def measure(fns, rounds):
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            times[k].append(_time(f))
    t = {k: np.array(v) for k, v in times.items()}
    keep = np.ones(rounds, bool)
    for v in t.values():
        keep &= v < 3 * np.median(v)
    ratio = t["torch"][keep] / t["fastln"][keep]
    return {
        "torch_ms": float(np.median(t["torch"][keep]) * 1e3),
        "fastln_ms": float(np.median(t["fastln"][keep]) * 1e3),
        "speedup": float(np.median(ratio)),
        "speedup_iqr": [float(np.percentile(ratio, 25)), float(np.percentile(ratio, 75))],
        "rounds_kept": int(keep.sum()),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for shape in SHAPES:
            for name, fns in cases(shape, dtype).items():
                m = measure(fns, a.rounds)
                m.update(case=name, shape="x".join(map(str, shape)), dtype=str(dtype).split(".")[1])
                rows.append(m)
                print(f"| {m['shape']} | {m['dtype']} | {name} | {m['torch_ms']:.2f} ms | {m['fastln_ms']:.2f} ms | "
                      f"{m['speedup']:.2f}x ({m['speedup_iqr'][0]:.2f}-{m['speedup_iqr'][1]:.2f}) |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": 2, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
