"""Half precision through the bridge: fastln's in-kernel conversion vs the float32 upcast it
replaced and vs torch's native half kernels (LayerNorm, affine, 2 threads).

    python tools/half_bench.py [--dtype bfloat16 float16] [--pass forward backward] [--rounds 15] [--json F]
    python tools/half_bench.py --kernels [--rounds 21]

Interleaved bursts (fastln.bench); ratio = other time / in-kernel time, [min-max] per round.
``--kernels`` times the parallel forward and backward kernels alone (no bridge, outputs
reused) against the ones they replaced, compiled here, [interquartile range]:

- forward: a float32 output row rounded in a pass of its own, where the sweep now rounds
  each value as it writes it;
- backward: x and dy widened into float32 rows before the row sums and the sweep, where both
  now read the half rows in place (``_half.get``).
"""

import argparse
import json
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fastln import bench  # noqa: E402
from fastln.cpu import _half, _jit  # noqa: E402
from fastln.cpu import kernels as K  # noqa: E402
from fastln.cpu._half import narrow, widen  # noqa: E402
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


def _old_forward_half(xu, w, b, eps, centered, yu, mean, rstd, fmt):
    """The forward half kernel before the rounding moved into the sweep (no residual)."""
    rows, cols = xu.shape
    for c in numba.prange((rows + K.HALF_CHUNK_ROWS - 1) // K.HALF_CHUNK_ROWS):
        xf = np.empty(cols, np.float32)
        yf = np.empty(cols, np.float32)
        for i in range(c * K.HALF_CHUNK_ROWS, min(rows, (c + 1) * K.HALF_CHUNK_ROWS)):
            widen(xu[i], xf, fmt)
            m, r = K._forward_row(xf, w, b, eps, centered, yf, 0)
            narrow(yf, yu[i], fmt)
            mean[i] = m
            rstd[i] = r


def _widened_chunk(gyu, xu, mean, rstd, w, centered, gresu, gxu, dw_part, db_part, c, rows_per_chunk, fmt):
    """``kernels._backward_half_chunk`` as it was before the backward read half rows in
    place: x and dy widened into float32 rows first (two passes of their own), the row
    kernel run on those (no residual's gradient here)."""
    rows, cols = xu.shape
    n = dw_part.shape[1]
    inv_c = 1.0 / cols
    xf = np.empty(cols, np.float32)
    gf = np.empty(cols, np.float32)
    via_f32 = fmt != K.FLOAT16
    gxf = np.empty(cols if via_f32 else 0, np.float32)
    acc_w = np.zeros(n, np.float32)
    acc_b = np.zeros(n, np.float32)
    start = c * rows_per_chunk
    stop = min(start + rows_per_chunk, rows)
    for i in range(start, stop):
        widen(xu[i], xf, fmt)
        widen(gyu[i], gf, fmt)
        if via_f32:
            K._backward_row(xf, gf, gxf, mean, rstd, i, w, centered, inv_c, acc_w, acc_b, fmt)
            narrow(gxf, gxu[i], fmt)
        else:
            K._backward_row(xf, gf, gxu[i], mean, rstd, i, w, centered, inv_c, acc_w, acc_b, fmt)
        if n != 0 and ((i - start + 1) % K.FLUSH_ROWS == 0 or i == stop - 1):
            K.flush(acc_w, dw_part[c])
            K.flush(acc_b, db_part[c])


def _old_backward_half():
    """The parallel backward half kernel with :func:`_widened_chunk` for its chunks."""
    import types

    flags = dict(nogil=True, error_model="numpy", fastmath={"contract"})
    g = dict(K.__dict__, K=K)  # kernels' own globals (np, widen, narrow...), and K for the chunk's K.*
    chunk = types.FunctionType(_widened_chunk.__code__, g, "old_chunk")
    g["_backward_half_chunk"] = numba.njit(inline="always", **flags)(chunk)
    return numba.njit(parallel=True, **flags)(types.FunctionType(K._backward_half.__code__, g, "old"))


def kernels(rounds):
    _forward_kernels(rounds)
    _backward_kernels(rounds)


def _bits(rng, shape, offset=0.0):
    """bfloat16 bits of normal samples (valid float16 bits too: small positive halves)."""
    return ((rng.standard_normal(shape).astype(np.float32) + offset).view(np.uint32) >> 16).astype(np.uint16)


def _backward_kernels(rounds):
    from fastln import _api

    old = _old_backward_half()
    print("\nbackward (weight, parameter gradients), x and dy widened into float32 rows first or read in place")
    print("| shape | dtype | widened first | read in place | speed-up [IQR] |\n|---|---|---|---|---|")
    for rows, cols in SHAPES[:3] + [(1024, 4096)]:
        rng = np.random.default_rng(0)
        xu, gyu = _bits(rng, (rows, cols), 2.0), _bits(rng, (rows, cols))
        w = rng.standard_normal(cols).astype(np.float32)
        none = np.empty((0, cols), np.uint16)
        n_chunks, per_chunk = _api.chunking(rows, cols)
        outs = {k: (np.empty_like(xu), np.zeros((2, n_chunks, cols)), np.empty((2, cols), np.float32)) for k in ("old", "new")}
        for fmt, name in ((_half.BFLOAT16, "bfloat16"), (_half.FLOAT16, "float16")):
            mean, rstd = np.empty((2, rows), np.float32)
            y = np.empty_like(xu)
            K.forward_half_parallel(xu, none, w, w, 1e-5, True, y, none, mean, rstd, fmt)

            def run(kind, fmt=fmt, mean=mean, rstd=rstd, xu=xu, gyu=gyu, w=w, none=none, per_chunk=per_chunk, outs=outs):
                gx, part, p = outs[kind]
                part[:] = 0
                kernel = old if kind == "old" else K.backward_half_parallel
                kernel(gyu, xu, mean, rstd, w, True, none, gx, part[0], part[1], p[0], p[1], per_chunk, fmt)

            fns = {k: partial(run, k) for k in ("old", "new")}
            for f in fns.values():
                f()
            for a, b in zip(outs["old"], outs["new"], strict=True):
                assert np.array_equal(a, b), "not the same bits"
            k, _ = bench.kept_samples(fns, rounds)
            r = k["old"] / k["new"]
            print(f"| {rows}x{cols} | {name} | {np.median(k['old']) * 1e6:.0f} us | {np.median(k['new']) * 1e6:.0f} us "
                  f"| {np.median(r):.2f}x [{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}] |", flush=True)


def _forward_kernels(rounds):
    old = _jit.parallel(_old_forward_half)
    print("forward, y rounded after or in the sweep (weight and bias)")
    print("| shape | dtype | rounded after | rounded in the sweep | speed-up [IQR] |\n|---|---|---|---|---|")
    for rows, cols in SHAPES[:3] + [(1024, 4096)]:
        rng = np.random.default_rng(0)
        xu = _bits(rng, (rows, cols), 2.0)
        w, b = rng.standard_normal((2, cols)).astype(np.float32)
        y_old, y_new, none = np.empty_like(xu), np.empty_like(xu), np.empty((0, cols), np.uint16)
        mean, rstd = np.empty((2, rows), np.float32)
        for fmt, name in ((_half.BFLOAT16, "bfloat16"), (_half.FLOAT16, "float16")):
            fns = {"old": partial(old, xu, w, b, 1e-5, True, y_old, mean, rstd, fmt),
                   "new": partial(K.forward_half_parallel, xu, none, w, b, 1e-5, True, y_new, none, mean, rstd, fmt)}
            for f in fns.values():
                f()
            assert np.array_equal(y_old, y_new), "not the same bits"
            k, _ = bench.kept_samples(fns, rounds)
            r = k["old"] / k["new"]
            print(f"| {rows}x{cols} | {name} | {np.median(k['old']) * 1e6:.0f} us | {np.median(k['new']) * 1e6:.0f} us "
                  f"| {np.median(r):.2f}x [{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}] |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kernels", action="store_true", help="the forward and backward kernels alone, old against new")
    p.add_argument("--dtype", nargs="+", default=["bfloat16", "float16"], choices=["bfloat16", "float16"])
    p.add_argument("--pass", dest="passes", nargs="+", default=["forward", "backward"], choices=["forward", "backward"])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--json", default=None, help="also write the rows here (the README's table is such a file)")
    a = p.parse_args()
    if a.kernels:
        return kernels(a.rounds)
    torch.set_num_threads(numba.get_num_threads())
    print("| dtype | pass | shape | in kernel | upcast | torch native | upcast / in kernel | torch / in kernel |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for dtype in a.dtype:
        for direction in a.passes:
            for shape in SHAPES:
                o = case(shape, getattr(torch, dtype), direction, a.rounds)
                rows.append({"dtype": dtype, "pass": direction, "shape": list(shape), **o})
                print(table_row(rows[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": bench.machine_info(), "rounds": a.rounds, "rows": rows},
                                           indent=1))


def table_row(o) -> str:
    """One row of the table, from one of ``--json``'s rows (tests/test_readme.py compares the
    README's table with the committed file through this)."""
    def t(s):
        return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"

    u, n = o["upcast ratio"], o["torch ratio"]
    return (f"| {o['dtype']} | {o['pass']} | {o['shape'][0]}x{o['shape'][1]} | {t(o['in kernel'])} | {t(o['upcast'])} "
            f"| {t(o['torch'])} | {u[0]:.2f}x [{u[1]:.2f}-{u[2]:.2f}] | {n[0]:.2f}x [{n[1]:.2f}-{n[2]:.2f}] |")


if __name__ == "__main__":
    main()
