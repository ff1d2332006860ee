"""What the NumPy API's Python costs per call: planned calls against the general path.

    python tools/front_bench.py [--rounds 31] [--shapes 2x3,32x20x20,1x128x768,512x768]

For each shape (float32, weight and bias, 2 threads), in the same interleaved rounds
(``fastln.bench.kept_samples``): ``fastln.layer_norm_forward`` and
``fastln.layer_norm_backward`` with plans (what runs now: after the first call, plain
arrays skip the general checks, ``fastln._api._forward_planned``), the same calls with
plans switched off (every call through the general checks), and torch's own kernels
(``aten.native_layer_norm`` and ``aten.native_layer_norm_backward``) on the same memory.
Prints medians and ratios with their [min-max] over the kept rounds.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import fastln  # noqa: E402
from fastln import _api, bench  # noqa: E402


def _general_only(fn):
    """``fn`` with the plans switched off for its duration."""

    def call():
        fwd, bwd = _api._forward_planned, _api._backward_planned
        _api._forward_planned = _api._backward_planned = lambda *a: None
        try:
            return fn()
        finally:
            _api._forward_planned, _api._backward_planned = fwd, bwd

    return call


def _case(shape, rounds, torch):
    x, w, b, gy, _ = bench.make_inputs(shape, "float32")
    cols = shape[-1]
    _, mean, rstd = fastln.layer_norm_forward(x, None, w, b)
    xt, wt, bt, gt = (torch.from_numpy(a) for a in (x, w, b, gy))
    _, mt, rt = torch.ops.aten.native_layer_norm(xt, [cols], wt, bt, 1e-5)
    fwd = lambda: fastln.layer_norm_forward(x, None, w, b)  # noqa: E731
    bwd = lambda: fastln.layer_norm_backward(gy, x, mean, rstd, w)  # noqa: E731
    fns = {
        "forward planned": fwd,
        "forward general": _general_only(fwd),
        "forward torch": lambda: torch.ops.aten.native_layer_norm(xt, [cols], wt, bt, 1e-5),
        "backward planned": bwd,
        "backward general": _general_only(bwd),
        "backward torch": lambda: torch.ops.aten.native_layer_norm_backward(gt, xt, [cols], mt, rt, wt, bt, [True] * 3),
    }
    for fn in fns.values():
        fn()
    kept, _ = bench.kept_samples(fns, rounds)
    return kept


def _ratio(a, b):
    r = a / b
    return f"{np.median(r):.2f}x [{r.min():.2f}-{r.max():.2f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=31)
    p.add_argument("--shapes", default="2x3,32x20x20,1x128x768,512x768")
    a = p.parse_args()
    import numba
    import torch

    torch.set_num_threads(numba.get_num_threads())
    print("| shape | pass | general | planned | speed-up | torch | torch / planned |")
    print("|---|---|---|---|---|---|---|")
    for text in a.shapes.split(","):
        shape = tuple(int(d) for d in text.split("x"))
        kept = _case(shape, a.rounds, torch)
        for pass_ in ("forward", "backward"):
            g, f, t = (kept[f"{pass_} {k}"] for k in ("general", "planned", "torch"))
            print(f"| {text} | {pass_} | {np.median(g) * 1e6:.1f} us | {np.median(f) * 1e6:.1f} us | {_ratio(g, f)} | "
                  f"{np.median(t) * 1e6:.1f} us | {_ratio(t, f)} |", flush=True)


if __name__ == "__main__":
    main()
