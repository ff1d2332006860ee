"""Where the torch bridge's compiled glue should start using torch's thread pool.

    python tools/pool_threshold.py [--thresholds 32768,65536,98304,131072] [--rounds 15]

The glue runs a call serially below ``fastln._config.POOL_BELOW`` (work: elements plus
``ROW_COST`` per row) and on torch's pool (``at::parallel_for``) above it.  This times
``ft.layer_norm`` (float32, affine, 2 threads) on shapes whose work spans the candidates,
with the glue reconfigured to each candidate threshold before each of its bursts (the
``setup`` of :func:`fastln.bench.kept_samples`), the
candidates and torch's own ``F.layer_norm`` interleaved round by round (``fastln.bench``'s
warm-up and spoiled-round rule): a no_grad forward, and a forward with ``autograd.grad`` of
x, w and b.  Every candidate
gives the same bits (the backward's chunks do not depend on it; asserted here).  Times are
medians in us, torch's in brackets; ``best`` names the fastest candidate, and the ratio column is the first
candidate's time over the best's, with its interquartile range over rounds.
"""

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fastln import _config, bench  # noqa: E402
from fastln.torch import _fast  # noqa: E402

SHAPES = [(64, 512), (96, 512), (128, 512), (192, 512), (128, 256), (256, 256), (48, 1024), (96, 1024),
          (1, 128, 768)]


def case(native, shape, thresholds, rounds):
    d = shape[-1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(d, generator=g, requires_grad=True)
    b = torch.randn(d, generator=g, requires_grad=True)
    gy = torch.randn(*shape, generator=g)

    def fb():
        return torch.autograd.grad(native.norm(x, None, (d,), w, b, 1e-5, True), (x, w, b), gy)

    def ng():
        with torch.no_grad():
            return native.norm(x, None, (d,), w, b, 1e-5, True)

    def torch_fb():
        return torch.autograd.grad(F.layer_norm(x, (d,), w, b, 1e-5), (x, w, b), gy)

    def torch_ng():
        with torch.no_grad():
            return F.layer_norm(x, (d,), w, b, 1e-5)

    bits = []
    for t in thresholds:
        _fast.configure(native, t)
        bits.append((ng(), *fb()))
    assert all(torch.equal(u, v) for got in bits[1:] for u, v in zip(bits[0], got, strict=True)), "bits differ"
    rows = []
    for fn, torch_fn in ((ng, torch_ng), (fb, torch_fb)):
        fns = {t: fn for t in thresholds} | {"torch": torch_fn}
        setup = {t: partial(_fast.configure, native, t) for t in thresholds}
        s, _ = bench.kept_samples(fns, rounds, setup)
        med = {t: np.median(v) for t, v in s.items()}
        best = min(thresholds, key=med.get)
        r = s[thresholds[0]] / s[best]
        rows.append(", ".join(f"{med[t] * 1e6:.1f}" for t in thresholds) + f" [torch {med['torch'] * 1e6:.1f}]"
                    + f" | {best} | {np.median(r):.2f}x [{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}]")
    work = int(np.prod(shape[:-1])) * (d + _config.ROW_COST)
    print(f"| {'x'.join(map(str, shape))} | {work} | " + " | ".join(rows) + " |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--thresholds", default="32768,65536,98304,131072")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    if _fast.norm is None:
        sys.exit(f"fastln's compiled glue is not in use: {_fast.WHY_NOT}")
    from fastln.torch import _native

    thresholds = [int(t) for t in a.thresholds.split(",")]
    torch.set_num_threads(2)
    print(f"times in us for pool thresholds {thresholds}; ratio: the first's time over the best's")
    print("| shape | work | no_grad | best | ratio | fwd+bwd | best | ratio |\n|---|---|---|---|---|---|---|---|")
    try:
        for shape in SHAPES:
            case(_native, shape, thresholds, a.rounds)
    finally:
        _fast.configure(_native)


if __name__ == "__main__":
    main()
