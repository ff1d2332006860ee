"""Minor page faults and time per call of forward+backward, torch against fastln.torch.

    python tools/page_faults.py [--shapes 8x128x768,16x128x768] [--calls 50]

Each shape: ``torch.autograd.grad`` of ``F.layer_norm`` and of ``ft.layer_norm`` (float32,
affine, 2 threads), ``--calls`` calls in a row, twice each, alternating; the process's minor
faults (``resource.getrusage``) and wall time over those calls, divided by their number.
Not interleaved bursts: a count of what each loop makes glibc and the kernel do, the reason
the glue advises outputs of 2 MiB and more onto huge pages (``fastln/torch/_native.cpp``'s
``empty``).
"""

import argparse
import resource
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastln.torch as ft  # noqa: E402


def per_call(f, calls):
    """``(us, minor faults)`` per call of ``f`` over ``calls`` calls, after one untimed."""
    f()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(calls):
        f()
    return ((time.perf_counter() - start) / calls * 1e6,
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / calls)


def _step(fn, x, w, b, gy):
    torch.autograd.grad(fn(x, x.shape[-1:], w, b), (x, w, b), gy)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="8x128x768,16x128x768")
    p.add_argument("--calls", type=int, default=50)
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    print("| shape | run | torch | fastln.torch |\n|---|---|---|---|")
    for s in a.shapes.split(","):
        shape = tuple(int(v) for v in s.split("x"))
        d = shape[-1]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g, requires_grad=True)
        w, b = torch.randn(d, generator=g, requires_grad=True), torch.randn(d, generator=g, requires_grad=True)
        gy = torch.randn(shape, generator=g)
        steps = [partial(_step, fn, x, w, b, gy) for fn in (F.layer_norm, ft.layer_norm)]
        for run in (1, 2):
            cells = [f"{us:.0f} us, {faults:.0f} faults" for us, faults in (per_call(f, a.calls) for f in steps)]
            print(f"| {s} | {run} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
