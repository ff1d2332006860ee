"""How much faster can a fused add+LayerNorm be than torch's ``x + r`` then ``layer_norm``?

    python tools/add_norm_ceiling.py [--rounds 15]

Any add-norm that returns fresh ``residual_out`` and ``y`` must at least read ``x`` and ``r``
and write two new arrays of their size: two parallel copies into freshly allocated buffers
(``fastln.bench._parallel_copy``) do exactly that and nothing more.  Timed side by side with
fastln's ``add_layer_norm`` and torch (``aten.native_layer_norm(x + r)``), 2 threads each,
float32 with weight and bias: ``torch / copies`` is the most any fused kernel could gain on
torch at that shape on this machine.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastln  # noqa: E402
from fastln import bench  # noqa: E402


def case(shape, rounds):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    r = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    xt, rt, wt, bt = map(torch.from_numpy, (x, r, w, b))

    def copies():
        h, y = np.empty_like(x), np.empty_like(x)
        bench._parallel_copy(x, h)
        bench._parallel_copy(r, y)

    fns = {
        "fastln": lambda: fastln.add_layer_norm(x, r, None, w, b),
        "torch": lambda: torch.ops.aten.native_layer_norm(xt + rt, [shape[1]], wt, bt, 1e-5),
        "copies": copies,
    }
    for f in fns.values():
        f()
    kept, _ = bench.kept_samples(fns, rounds)
    return kept


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    torch.set_num_threads(numba.get_num_threads())
    print("| shape | fastln | torch | two fresh copies | torch / fastln | torch / copies (the most possible) |")
    print("|---|---|---|---|---|---|")
    for shape in [(4096, 1024), (4096, 4096)]:
        kept = case(shape, a.rounds)
        med = {k: float(np.median(v)) * 1e3 for k, v in kept.items()}
        up = kept["torch"] / kept["fastln"]
        best = kept["torch"] / kept["copies"]
        print(f"| {shape[0]}x{shape[1]} | {med['fastln']:.2f} ms | {med['torch']:.2f} ms | {med['copies']:.2f} ms | "
              f"{np.median(up):.2f}x [{up.min():.2f}-{up.max():.2f}] | {np.median(best):.2f}x [{best.min():.2f}-{best.max():.2f}] |",
              flush=True)


if __name__ == "__main__":
    main()
