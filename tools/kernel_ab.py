"""This session's kernel changes, each timed against the kernel it replaced, side by side in
one process (the old variant is recompiled from today's source with one piece swapped back,
so the comparison survives a noisy machine better than two separate runs).

    python tools/kernel_ab.py [--rounds 21]

- **stats**: forward LayerNorm float32 into a reused buffer, float32-lane statistics
  (``layer_norm.row_moments_f32``) against the float64 blocks alone; reported as fractions of
  a parallel copy into a reused buffer, and the speed-up.
- **stream**: the same forward with outputs of 64-128 MiB, non-temporal stores against normal
  stores (both forced, whatever ``FASTLN_STREAM_BYTES`` says).
- **wide rows**: where the time goes for wide rows: the forward with and without weight and
  bias (their reads compete with the row's for the caches).
- **forward pairs**: forward LayerNorm float32 with weight and bias into a reused buffer, wide
  rows swept in pairs (``kernels.PAIR_FORWARD_ROW_BYTES``, rows of 32 KiB and more) against one
  at a time (``--pair-bytes`` tries another threshold).
- **backward pairs**: backward LayerNorm float32 with parameter gradients, rows swept in
  pairs (``kernels.PAIRED_BACKWARD``, rows of 8 KiB and more) against one at a time, and torch's own kernel
  (``aten.native_layer_norm_backward``, 2 threads), all allocating their outputs.
- **short rows**: the same backward on rows of at most ``BLOCK`` elements, in their own row
  loop (``kernels._backward_short_row``) against the general loop, and torch's kernel.
- **reduce**: the chunk partials summed into grad_weight/grad_bias by blocks of columns,
  chunk by chunk (``_rows.reduce_partials``) against column by column: the reduction alone,
  then in the backward (parallel kernel, 2 threads, and serial, 1 thread).

- **unowned**: the serial forward and backward kernels (1 thread, torch too) entered on
  views without reference counts (``_jit.twins``' entry, what they run now) against their
  bodies called with the NumPy arrays themselves (the views' references counted atomically).

- **hot**: where the forward's time goes on rows already in the cache (16384 float32
  elements, 64 KiB, called over and over, one thread): the statistics pass
  (``layer_norm.row_moments_f32``; its float64 twin ``row_moments`` beside it), the output
  sweep (``_rows.forward_sweep``, with and without weight and bias), the whole serial kernel
  and ``np.copyto``, in ns per element (best of 7 repeats).

- **flush**: the parallel backward with grad_weight/grad_bias gathered over 16, 32 and 64
  rows in float32 before each float64 flush (``_config.FLUSH_ROWS``), times and the largest
  error against the float64 reference, relative to the largest gradient.

- **lanes**: forward LayerNorm float32 into a reused buffer with the float32 statistics as
  they were before ``fastln/cpu/_lanes.py`` (sums in the order LLVM chose under ``reassoc``,
  the pivot from a loop and a division, float32 lanes at every width) against today's (an
  order written out, a one-vector pivot, rows under ``layer_norm.F32_MIN_COLS`` on the
  float64 blocks); both on every thread, as fractions of the reused copy and the speed-up.

- **ceiling**: the forward with weight and bias into a reused buffer, and without them, as
  fractions of the reused copy, beside the element-wise pass alone (``y = x * w + b``, no
  statistics: ``fastln.bench``'s "elementwise reused" ceiling), with x of 4 MiB (in the L3
  cache), 16 MiB (x and y together fill this machine's 32 MiB L3) and 64 MiB (in memory; the
  forward streams its output there).

- **chunks**: the parallel backward (float32, weight, bias and their gradients, 2 threads)
  with its rows split into 2, 4, 8 and 16 chunks and into the chunks ``fastln._api.chunking``
  gives today (``_config.MIN_CHUNK_ROWS`` rows a chunk, beyond two), as torch's time over
  each; a chunk's float64 partials cost a few passes over a row whatever its number of rows.

- **bound**: whether the forward into a reused buffer is bound by memory or by its own
  instructions at the 4-16 MiB shapes: per element, the reused copy and the forward at 2 threads
  on the whole array (in the L3 cache), beside the same kernels on one thread over 16 of its
  rows called again and again (in the L1/L2 cache: no memory traffic to wait for), halved for
  two threads.  Where the forward on the whole array takes no longer than its in-cache work,
  it is bound by its instructions, and no change to its memory traffic can bring it to a
  fraction of the copy above ``copy in cache / forward in cache``.

- **dropped**: forward variants tried in session 17 and dropped, each bitwise the same as
  today's kernel and timed beside it at 16 MiB (fractions of the reused copy, and the
  speed-up over today's): row groups of 16 swept by 2048-column stripes after their
  statistics (``w`` and ``b`` stay in L1 across the group); the next row's statistics
  interleaved block by block with this row's sweep (one pass over memory, two streams);
  software prefetches of the next row, or write-prefetches of the output row, issued before
  each row; and non-temporal stores at 16 MiB.

``--only stats,stream,wide,pairs,backward,short,reduce,unowned,hot,flush,lanes,ceiling,chunks,bound,dropped`` picks
sections.
"""

import argparse
import sys
import types
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import prange  # noqa: E402
from numba.extending import overload  # noqa: E402

import fastln  # noqa: E402
from fastln import bench  # noqa: E402
from fastln.cpu import kernels as K  # noqa: E402
from fastln.cpu import layer_norm as ln  # noqa: E402


def _never(a):
    return False


@overload(_never, inline="always")
def _never_impl(a):
    return lambda a: False


def _recompile(fn, globals_, **options):
    f = getattr(fn, "py_func", fn)
    clone = types.FunctionType(f.__code__, globals_, "ab_" + f.__name__)
    return numba.njit(nogil=True, error_model="numpy", fastmath={"contract"}, **options)(clone)


def _forward_variant(float32_stats=True, stream=None, pair_bytes=None, ln_module=None):
    """The row forward kernel, optionally without the float32 statistics, with streaming
    forced on (True) or off (False), with rows of ``pair_bytes`` or more swept in pairs, or
    with the statistics of ``ln_module`` (a stand-in for :mod:`fastln.cpu.layer_norm`)."""
    g = dict(K.__dict__)
    if ln_module is not None:
        g["ln"] = ln_module
    if pair_bytes is not None:
        g["PAIR_FORWARD_ROW_BYTES"] = pair_bytes
    if not float32_stats:
        fake = types.ModuleType("ab_layer_norm")
        fake.__dict__.update(ln.__dict__)
        fake.is_float32 = _never
        g["ln"] = fake
    if stream is not None:
        g["streaming"] = numba.njit(inline="always")(lambda out_bytes, row_bytes: stream)
    # the statistics are a function of their own: recompiled here, or the fake ``ln`` above
    # would not reach them
    g["_row_statistics"] = _recompile(K._row_statistics, g, inline="always")
    g["_forward_row"] = _recompile(K._forward_row, g, inline="always")
    g["_forward_at"] = _recompile(K._forward_at, g, inline="always")
    g["_forward_pair"] = _recompile(K._forward_pair, g)
    return _recompile(K._forward_rows, g, parallel=True)


def _forward_inputs(shape):
    """``(x, w, b, none)`` of one forward case: float32 rows off zero, weight, bias, and the
    kernels' absent residual."""
    cols = shape[1]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) + 3
    w = np.random.default_rng(1).standard_normal(cols).astype(np.float32)
    b = np.random.default_rng(2).standard_normal(cols).astype(np.float32)
    return x, w, b, np.empty((0, cols), np.float32)


def _case(shape, variants, rounds):
    """Time ``variants`` (name -> kernel, or (kernel, affine)) and a reused-buffer copy in
    the same interleaved rounds; fractions of the copy and the kept samples."""
    rows, cols = shape
    x, w, b, none = _forward_inputs(shape)
    y, y_copy = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(rows, np.float32), np.empty(rows, np.float32)
    fns = {"copy reused": lambda: bench._parallel_copy(x, y_copy)}
    for name, variant in variants.items():
        kernel, affine = variant if isinstance(variant, tuple) else (variant, True)
        wv, bv = (w, b) if affine else (w[:0], b[:0])
        kernel(x, none, wv, bv, 1e-5, True, y, none, mean, rstd)  # compile
        fns[name] = lambda k=kernel, wv=wv, bv=bv: k(x, none, wv, bv, 1e-5, True, y, none, mean, rstd)
    kept, _ = bench.kept_samples(fns, rounds)
    return {n: float(np.median(kept["copy reused"] / v)) for n, v in kept.items() if n != "copy reused"}, kept


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--only", default="stats,stream,wide,pairs,backward,short,reduce,unowned,hot,flush,lanes,ceiling,chunks,"
                   "bound,dropped")
    p.add_argument("--pair-bytes", type=int, default=K.PAIR_FORWARD_ROW_BYTES)
    a = p.parse_args()
    only = set(a.only.split(","))
    for section in ("stats", "stream", "wide", "pairs", "backward", "short", "reduce", "unowned", "hot", "flush", "lanes",
                    "ceiling", "chunks", "bound", "dropped"):
        if section in only:
            if section == "pairs":
                _pairs(a.rounds, a.pair_bytes)
            else:
                globals()["_" + section](a.rounds)


def _old_vs_new(title, old, new, variants, shapes, rounds):
    """Fractions of the reused-buffer copy for an ``old`` and a ``new`` variant, and the
    speed-up of new over old, a table row per shape."""
    print(f"\n{title}: forward float32 out=, fraction of the reused-buffer copy")
    print(f"| shape | {old} | {new} | speed-up |")
    print("|---|---|---|---|")
    for shape in shapes:
        frac, kept = _case(shape, variants, rounds)
        up = np.median(kept[old] / kept[new])
        print(f"| {shape[0]}x{shape[1]} | {frac[old]:.2f} | {frac[new]:.2f} | {up:.2f}x |", flush=True)


def _stats(rounds):
    variants = {"float64 blocks": _forward_variant(float32_stats=False, stream=False),
                "float32 lanes": _forward_variant(stream=False)}
    _old_vs_new("stats", "float64 blocks", "float32 lanes", variants,
                [(512, 768), (4096, 1024), (2048, 2048), (64, 65536)], rounds)


def _stream(rounds):
    variants = {"normal stores": _forward_variant(stream=False), "non-temporal stores": _forward_variant(stream=True)}
    _old_vs_new("stream", "normal stores", "non-temporal stores", variants,
                [(4096, 4096), (32768, 768), (8192, 4096)], max(5, rounds // 2))


def _wide(rounds):
    print("\nwide rows: forward float32 out=, fraction of the reused-buffer copy")
    print("| shape | with weight and bias | without |")
    print("|---|---|---|")
    kernel = _forward_variant(stream=False)
    for shape in [(4096, 1024), (2048, 2048), (64, 65536)]:
        frac, _ = _case(shape, {"with": (kernel, True), "without": (kernel, False)}, rounds)
        print(f"| {shape[0]}x{shape[1]} | {frac['with']:.2f} | {frac['without']:.2f} |", flush=True)


def _ceiling(rounds):
    print("\nceiling: forward float32 out=, fraction of the reused-buffer copy [interquartile range]")
    print("| shape | MiB | element-wise pass alone | forward with weight and bias | without | with, of the pass |")
    print("|---|---|---|---|---|---|")
    for shape in [(1024, 1024), (512, 2048), (256, 4096), (4096, 1024), (2048, 2048), (1024, 4096), (256, 16384),
                  (16384, 1024), (4096, 4096), (1024, 16384)]:
        kept = _ceiling_case(shape, rounds)

        def cell(a, b, kept=kept):
            q = kept[a] / kept[b]
            return f"{np.median(q):.2f} [{np.percentile(q, 25):.2f}-{np.percentile(q, 75):.2f}]"

        print(f"| {shape[0]}x{shape[1]} | {shape[0] * shape[1] * 4 >> 20} | {cell('copy', 'pass')} | "
              f"{cell('copy', 'with')} | {cell('copy', 'without')} | {cell('pass', 'with')} |", flush=True)


def _ceiling_case(shape, rounds):
    """Kept samples of the reused copy, the element-wise pass, and the forward into a reused
    buffer with and without weight and bias."""
    x, w, b, none = _forward_inputs(shape)
    y, y_copy, y_pass = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    fns = {"copy": lambda: bench._parallel_copy(x, y_copy),
           "pass": lambda: bench._elementwise_pass(x, none, w, b, y_pass, none),
           "with": lambda: fastln.layer_norm(x, None, w, b, out=y),
           "without": lambda: fastln.layer_norm(x, out=y)}
    for f in fns.values():
        f()
    return bench.kept_samples(fns, rounds)[0]


SHAPES = [(64, 65536), (256, 16384), (512, 8192), (1024, 4096), (2048, 2048), (4096, 1024), (512, 768), (2048, 256)]


def _pairs(rounds, pair_bytes):
    variants = {"one row at a time": _forward_variant(stream=False, pair_bytes=1 << 62),
                "pairs": _forward_variant(stream=False, pair_bytes=pair_bytes)}
    _old_vs_new(f"forward pairs (rows of {pair_bytes} bytes and more)", "one row at a time", "pairs", variants,
                SHAPES, rounds)


def _reduce_by_column(dw_part, db_part, dw, db):
    """``_rows.reduce_partials`` before: a column at a time (a chain of dependent adds)."""
    for j in range(dw.shape[0]):
        sw = 0.0
        sb = 0.0
        for c in range(dw_part.shape[0]):
            sw += dw_part[c, j]
            sb += db_part[c, j]
        dw[j] = sw
        db[j] = sb


def _backward_variant(paired, short_loop=True, serial=False, by_column=False):
    """The row backward kernel with rows swept in pairs or one at a time; with
    ``short_loop=False`` short rows take the general row loop too; ``serial``: the serial
    twin (what the torch bridge's glue runs, a chunk per task of torch's pool);
    ``by_column``: the partials reduced a column at a time (the old reduction)."""
    g = dict(K.__dict__)
    g["PAIRED_BACKWARD"] = paired
    if by_column:
        g["reduce_partials"] = _recompile(_reduce_by_column, g)
    g["_backward_chunk"] = _recompile(K._backward_chunk, g, inline="always")
    if serial:
        g["prange"] = range
        if short_loop:  # what kernels.backward_serial runs
            g["_backward_chunk"] = _recompile(K._backward_chunk_short_rows, dict(g), inline="always")
    return _recompile(K._backward_rows, g, **({} if serial else {"parallel": True}))


def _backward(rounds):
    import torch

    torch.set_num_threads(numba.get_num_threads())
    _backward_table("backward pairs: backward LayerNorm float32 with weight, bias and their gradients; time",
                    ("one row at a time", "pairs"), _backward_variant(False), _backward_variant(True),
                    [(512, 768), (2048, 2048), (1024, 4096), (4096, 4096), (512, 16384)], rounds, torch)


def _short(rounds):
    import torch

    torch.set_num_threads(1)
    _backward_table("short rows: backward LayerNorm float32 with weight, bias and their gradients, serial kernels "
                    "(1 thread, torch too); time", ("general loop", "short-row loop"),
                    _backward_variant(True, short_loop=False, serial=True), _backward_variant(True, serial=True),
                    [(640, 20), (4096, 20), (200, 64), (512, 128), (64, 512), (512, 512)], rounds, torch)


def _hot(rounds):
    import timeit

    from fastln import _api
    from fastln.cpu import _rows

    jit = partial(numba.njit, fastmath={"contract"}, error_model="numpy")

    @jit
    def stats_f32(x, out):
        for i in range(x.shape[0]):
            out[i] = ln.row_moments_f32(x[i])[3]

    @jit
    def stats_f64(x, out):
        for i in range(x.shape[0]):
            out[i] = ln.row_moments(x[i])[2]

    @jit
    def sweep(x, y, w, b):
        for i in range(x.shape[0]):
            _rows.forward_sweep(x[i], y[i], np.float32(0.1), np.float32(1e-3), np.float32(1.1), w, b, 0)

    none = _api._no_rows(np.float32)
    print("\nhot: forward float32 on rows in the cache (16384 elements, 1 thread), ns per element")
    print("| cols | statistics (float32 lanes) | statistics (float64) | sweep | sweep, no affine | whole kernel | np.copyto |")
    print("|---|---|---|---|---|---|---|")
    def row(cols):
        rows = 16384 // cols
        x, w, b, _, _ = bench.make_inputs((rows, cols), "float32")
        y, out = np.empty_like(x), np.empty(rows)
        mean, rstd = np.empty(rows, np.float32), np.empty(rows, np.float32)
        fns = [lambda: stats_f32(x, out), lambda: stats_f64(x, out), lambda: sweep(x, y, w, b),
               lambda: sweep(x, y, w[:0], b[:0]), lambda: K.forward_serial(x, none, w, b, 1e-5, True, y, none, mean, rstd),
               lambda: np.copyto(y, x)]
        cells = []
        for fn in fns:
            fn()
            cells.append(min(timeit.repeat(fn, number=2000, repeat=7)) / 2000 / x.size * 1e9)
        print(f"| {cols} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    for cols in (32, 64, 128, 256, 1024, 4096):
        row(cols)
    numba.set_num_threads(threads)  # the sections after this one run on every thread


def _reduce(rounds):
    import torch

    from fastln.cpu._rows import reduce_partials

    by_column = _recompile(_reduce_by_column, {})
    print("\nreduce: the chunk partials alone summed into grad_weight/grad_bias (float64 partials, float32 out); time")
    print("| chunks x columns | by column | by blocks of columns, chunk by chunk | speed-up [min-max] |")
    print("|---|---|---|---|")
    for chunks, cols in [(14, 768), (16, 1024), (16, 4096), (4, 65536), (1, 512)]:
        part = np.random.default_rng(0).standard_normal((2, chunks, cols))
        out = np.empty((2, 2, cols), np.float32)
        fns = {"old": partial(by_column, part[0], part[1], out[0, 0], out[0, 1]),
               "new": partial(reduce_partials, part[0], part[1], out[1, 0], out[1, 1])}
        for f in fns.values():
            f()
        assert np.array_equal(out[0], out[1]), "not the same bits"
        kept = bench.kept_samples(fns, rounds)[0]
        up = kept["old"] / kept["new"]
        print(f"| {chunks}x{cols} | {np.median(kept['old']) * 1e6:.1f} us | {np.median(kept['new']) * 1e6:.1f} us | "
              f"{np.median(up):.2f}x [{up.min():.2f}-{up.max():.2f}] |", flush=True)
    shapes = [(512, 768), (4096, 1024), (128, 4096), (8192, 256), (64, 65536)]
    for serial, threads in ((False, numba.get_num_threads()), (True, 1)):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        _backward_table(f"reduce: backward LayerNorm float32 with weight, bias and their gradients, "
                        f"{'serial' if serial else 'parallel'} kernel, {threads} thread(s), torch too; time",
                        ("by column", "by chunk"), _backward_variant(False, serial=serial, by_column=True),
                        _backward_variant(False, serial=serial), shapes, rounds, torch)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _unowned(rounds):
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
    print("\nunowned: serial kernels (1 thread, torch too), float32 with weight and bias; time")
    print("| shape | pass | counted views | unowned views | torch | speed-up [min-max] | torch / unowned [min-max] |")
    print("|---|---|---|---|---|---|---|")
    for shape in [(640, 20), (64, 512), (512, 768), (4096, 1024), (8192, 256)]:
        for name, kept in _unowned_case(shape, rounds, torch).items():
            up, vs = kept["counted"] / kept["unowned"], kept["torch"] / kept["unowned"]
            med = {k: float(np.median(v)) * 1e6 for k, v in kept.items()}
            print(f"| {shape[0]}x{shape[1]} | {name} | {med['counted']:.1f} us | {med['unowned']:.1f} us | "
                  f"{med['torch']:.1f} us | {np.median(up):.2f}x [{up.min():.2f}-{up.max():.2f}] | "
                  f"{np.median(vs):.2f}x [{vs.min():.2f}-{vs.max():.2f}] |", flush=True)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def _unowned_case(shape, rounds, torch):
    """Kept samples of the serial forward and backward, entered as they are now and as their
    bodies (the arrays as given, references counted), beside torch's kernels."""
    from fastln import _api, cpu

    rows, cols = shape
    x, w, b, gy, _ = bench.make_inputs(shape, "float32")
    none = _api._no_rows(np.float32)
    y, mean, rstd = np.empty_like(x), np.empty(rows, np.float32), np.empty(rows, np.float32)
    gx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(w)
    n_chunks, per_chunk = _api.chunking(rows, cols)
    part = np.zeros((2, n_chunks, cols))
    forward = (x, none, w, b, 1e-5, True, y, none, mean, rstd)
    backward = (gy, x, mean, rstd, w, True, none, gx, part[0], part[1], dw, db, per_chunk)
    xt, wt, bt, gt = (torch.from_numpy(a) for a in (x, w, b, gy))
    _, mt, rt = torch.ops.aten.native_layer_norm(xt, [cols], wt, bt, 1e-5)
    torch_fns = {"forward": lambda: torch.ops.aten.native_layer_norm(xt, [cols], wt, bt, 1e-5),
                 "backward": lambda: torch.ops.aten.native_layer_norm_backward(gt, xt, [cols], mt, rt, wt, bt, [True] * 3)}
    out = {}
    for name, entry, args in (("forward", cpu.forward_serial, forward), ("backward", cpu.backward_serial, backward)):
        body = entry.py_func.__globals__["kernel"]  # the twin's body, entered with the arrays as given
        entry(*args)  # forward first: the backward reads its statistics
        out[name] = bench.kept_samples({"counted": lambda b=body, a=args: b(*a), "unowned": lambda e=entry, a=args: e(*a),
                                        "torch": torch_fns[name]}, rounds)[0]
    return out


def _flush(rounds):
    from fastln import _api
    from tests import reference

    counts = (16, 32, 64)
    kernels = {}
    for rows_per_flush in counts:
        g = dict(K.__dict__)
        g["FLUSH_ROWS"] = rows_per_flush
        g["_backward_chunk"] = _recompile(K._backward_chunk, g, inline="always")
        kernels[rows_per_flush] = _recompile(K._backward_rows, g, parallel=True)
    print("\nflush: backward LayerNorm float32 with weight and parameter gradients, rows gathered per float64 flush; "
          "time [IQR of the speed-up over 16], largest dw/db error relative to the largest")
    print("| shape | " + " | ".join(str(c) for c in counts) + " |")
    print("|---|" + "---|" * len(counts))
    for shape in [(512, 768), (4096, 1024), (8192, 256)]:
        rows, cols = shape
        x, w, _, gy, _ = bench.make_inputs(shape, "float32")
        none = np.empty((0, cols), np.float32)
        _, mean, rstd = fastln.layer_norm_forward(x, None, w, w)
        n_chunks, per_chunk = _api.chunking(rows, cols)
        _, rdw, rdb = reference.backward(gy, x, 1, w)

        def run(kernel, x=x, gy=gy, w=w, mean=mean, rstd=rstd, none=none, n_chunks=n_chunks, per_chunk=per_chunk):
            gx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(w)
            part = np.zeros((2, n_chunks, x.shape[1]))
            kernel(gy, x, mean, rstd, w, True, none, gx, part[0], part[1], dw, db, per_chunk)
            return dw, db

        errors = {}
        for c, kernel in kernels.items():
            dw, db = run(kernel)
            errors[c] = max(np.abs(dw - rdw).max() / np.abs(rdw).max(), np.abs(db - rdb).max() / np.abs(rdb).max())
        kept = bench.kept_samples({c: (lambda k=kernel: run(k)) for c, kernel in kernels.items()}, rounds)[0]
        cells = []
        for c in counts:
            up = kept[counts[0]] / kept[c]
            cells.append(f"{np.median(kept[c]) * 1e6:.1f} us, {np.median(up):.2f}x "
                         f"[{np.percentile(up, 25):.2f}-{np.percentile(up, 75):.2f}], err {errors[c]:.1e}")
        print(f"| {rows}x{cols} | " + " | ".join(cells) + " |", flush=True)


def _backward_table(title, names, old, new, shapes, rounds, torch):
    """A table row per shape: the ``old`` and ``new`` backward kernels and torch's, side by
    side, with new's speed-up over old and torch's time over new's."""
    print(f"\n{title}")
    print(f"| shape | {names[0]} | {names[1]} | torch | new vs old [min-max] | torch / new [min-max] |")
    print("|---|---|---|---|---|---|")
    for shape in shapes:
        kept = _backward_case(shape, {"old": old, "new": new}, rounds, torch)
        up, vs = kept["old"] / kept["new"], kept["torch"] / kept["new"]
        med = {k: float(np.median(v)) * 1e6 for k, v in kept.items()}
        print(f"| {shape[0]}x{shape[1]} | {med['old']:.1f} us | {med['new']:.1f} us | {med['torch']:.1f} us | "
              f"{np.median(up):.2f}x [{up.min():.2f}-{up.max():.2f}] | {np.median(vs):.2f}x [{vs.min():.2f}-{vs.max():.2f}] |",
              flush=True)


def _backward_setup(shape, torch):
    """A float32 backward case with weight and bias: ``run(kernel, rows_per_chunk)`` (a row
    kernel's call into fresh outputs, returning gx, dw, db) and torch's own kernel on the
    same values."""
    rows, cols = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    none = np.empty((0, cols), np.float32)
    _, mean, rstd = fastln.layer_norm_forward(x, None, w, b)

    def run(kernel, per_chunk):
        gx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(w)
        part = np.zeros((2, -(-rows // per_chunk), cols))
        kernel(gy, x, mean, rstd, w, True, none, gx, part[0], part[1], dw, db, per_chunk)
        return gx, dw, db

    xt, wt, bt, gt = (torch.from_numpy(a) for a in (x, w, b, gy))
    _, mt, rt = torch.ops.aten.native_layer_norm(xt, [cols], wt, bt, 1e-5)
    return run, lambda: torch.ops.aten.native_layer_norm_backward(gt, xt, [cols], mt, rt, wt, bt, [True] * 3)


def _backward_case(shape, variants, rounds, torch):
    from fastln import _api

    run, torch_backward = _backward_setup(shape, torch)
    per_chunk = _api.chunking(*shape)[1]
    outs = {k: run(v, per_chunk) for k, v in variants.items()}  # compile; and the same bits both ways
    for old, new in zip(outs["old"], outs["new"], strict=True):
        assert np.array_equal(old, new)
    fns = {k: partial(run, v, per_chunk) for k, v in variants.items()}
    fns["torch"] = torch_backward
    return bench.kept_samples(fns, rounds)[0]


@numba.njit(fastmath={"reassoc", "contract"}, nogil=True, error_model="numpy")
def _llvm_shifted_sums_f32(blk, p):
    s = p - p
    q = p - p
    for k in range(blk.shape[0]):
        d = blk[k] - p
        s += d
        q += d * d
    return s, q


@numba.njit(fastmath={"contract"}, nogil=True, error_model="numpy", inline="always")
def _llvm_row_moments_f32(xr):
    """``layer_norm.row_moments_f32`` before ``_lanes``: LLVM's order, a loop for the pivot."""
    cols = xr.shape[0]
    if cols == 0:
        return False, 0.0, 0.0, 0.0
    n0 = min(cols, ln.PIVOT_SAMPLE)
    a0 = a1 = a2 = a3 = 0.0
    k = 0
    while k + 4 <= n0:
        a0 += np.float64(xr[k])
        a1 += np.float64(xr[k + 1])
        a2 += np.float64(xr[k + 2])
        a3 += np.float64(xr[k + 3])
        k += 4
    while k < n0:
        a0 += np.float64(xr[k])
        k += 1
    p = np.float32(((a0 + a1) + (a2 + a3)) / n0)
    s = 0.0
    q = 0.0
    for start in range(0, cols, ln.BLOCK):
        bs, bq = _llvm_shifted_sums_f32(xr[start : start + ln.BLOCK], p)
        s += np.float64(bs)
        q += np.float64(bq)
    m2 = q - s * (s / cols)
    certified = ln.TINY_MEAN_SQUARE * cols <= q < np.inf and q <= ln.CERTIFY * m2
    return certified, np.float64(p), s / cols, m2


def _lanes(rounds):
    before = types.ModuleType("ab_layer_norm_llvm_order")
    before.__dict__.update(ln.__dict__)
    before.row_moments_f32 = _llvm_row_moments_f32
    before.F32_MIN_COLS = 0
    variants = {"LLVM's order": _forward_variant(stream=False, ln_module=before),
                "order written out": _forward_variant(stream=False)}
    _old_vs_new("lanes", "LLVM's order", "order written out", variants,
                [(4096, 20), (512, 64), (512, 128), (512, 768), (4096, 1024), (64, 65536)], rounds)



def _chunks(rounds):
    import torch

    torch.set_num_threads(numba.get_num_threads())
    counts = (2, 4, 8, 16)
    print("\nchunks: backward LayerNorm float32 with weight, bias and their gradients, rows split into n chunks; "
          "torch's time over fastln's, median [interquartile range]")
    print("| shape | torch | " + " | ".join(f"n={n}" for n in counts) + " | today's rule |")
    print("|---|---|" + "---|" * (len(counts) + 1))
    for shape in [(64, 16384), (96, 8192), (32, 65536), (64, 65536), (256, 16384), (512, 8192), (1024, 4096),
                  (2048, 768), (128, 768)]:
        _chunks_case(shape, counts, rounds, torch)


def _chunks_case(shape, counts, rounds, torch):
    from fastln import _api

    rows, cols = shape
    run, torch_backward = _backward_setup(shape, torch)
    today = _api.chunking(rows, cols)
    fns = {"torch": torch_backward}
    for n in counts:
        fns[n] = partial(run, K.backward_parallel, -(-rows // n))
    fns["today"] = partial(run, K.backward_parallel, today[1])
    for f in fns.values():
        f()
    kept = bench.kept_samples(fns, rounds)[0]
    t = kept["torch"]
    cells = [f"{np.median(t / kept[k]):.2f} [{np.percentile(t / kept[k], 25):.2f}-{np.percentile(t / kept[k], 75):.2f}]"
             for k in (*counts, "today")]
    print(f"| {rows}x{cols} | {np.median(t) * 1e6:.0f} us | " + " | ".join(cells[:-1])
          + f" | {today[0]} chunks: {cells[-1]} |", flush=True)



def _bound(rounds):
    print("\nbound: forward float32 out= with weight and bias; ns per element, 2 threads (in cache: 1 thread / 2)")
    print("| shape | MiB | copy reused | element-wise pass | forward | fraction | copy in cache | forward in cache | in-cache fraction |")
    print("|---|---|---|---|---|---|---|---|---|")
    for shape in [(1024, 1024), (256, 4096), (4096, 1024), (1024, 4096), (256, 16384), (64, 65536)]:
        whole, cache = _bound_case(shape, rounds)
        print(f"| {shape[0]}x{shape[1]} | {shape[0] * shape[1] * 4 >> 20} | {whole['copy']:.3f} | {whole['pass']:.3f} | {whole['forward']:.3f} | "
              f"{whole['copy'] / whole['forward']:.2f} | {cache['copy']:.3f} | {cache['forward']:.3f} | "
              f"{cache['copy'] / cache['forward']:.2f} |", flush=True)


def _bound_case(shape, rounds, hot_bytes=256 << 10):
    """ns per element of the reused copy, the element-wise pass and the forward on the whole
    array at every thread; and of the copy and the forward on its first rows (``hot_bytes``
    of them, which stay in the L2 cache with their output) over and over on one thread,
    less the same call on no rows (the call's own cost), halved for two threads."""
    x, w, b, none = _forward_inputs(shape)
    y, y_copy, y_pass = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    fns = {"copy": lambda: bench._parallel_copy(x, y_copy), "pass": lambda: bench._elementwise_pass(x, none, w, b, y_pass, none),
           "forward": lambda: fastln.layer_norm(x, None, w, b, out=y)}
    for f in fns.values():
        f()
    kept, _ = bench.kept_samples(fns, rounds)
    whole = {k: float(np.median(v)) / x.size * 1e9 for k, v in kept.items()}

    hot_rows = max(1, hot_bytes // (x.shape[1] * x.itemsize))
    number = max(1, (1 << 24) // (hot_rows * x.shape[1]))  # about 16 M elements a sample

    def repeat(kernel, n):
        xh, yh = x[:n], y[:n]
        mean, rstd = np.empty(n, np.float32), np.empty(n, np.float32)
        if kernel == "copy":
            def one():
                bench._parallel_copy(xh, yh)
        else:
            def one():
                K.forward_serial(xh, none, w, b, 1e-5, True, yh, none, mean, rstd)

        def run():
            for _ in range(number):
                one()
        return run

    hot = {f"{k} {n}": repeat(k, n) for k in ("copy", "forward") for n in (hot_rows, 0)}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for f in hot.values():
            f()
        kept_hot, _ = bench.kept_samples(hot, rounds)
    finally:
        numba.set_num_threads(threads)
    cache = {k: float(np.median(kept_hot[f"{k} {hot_rows}"] - kept_hot[f"{k} 0"])) / number / (hot_rows * x.shape[1]) * 1e9 / 2
             for k in ("copy", "forward")}
    return whole, cache


def _prefetcher(write):
    """An intrinsic ``prefetch(arr, i)``: LLVM's prefetch of ``arr[i]``'s line into every
    cache level, for reading or (``write``) for writing."""
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, arr, i):
        def codegen(context, builder, signature, args):
            a = context.make_array(signature.args[0])(context, builder, args[0])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
            builder.call(fn, [builder.bitcast(builder.gep(a.data, [args[1]]), i8p), i32(int(write)), i32(3), i32(1)])
            return context.get_dummy_value()

        return numba.types.none(arr, i), codegen

    return prefetch


def _dropped_variants():
    """Session 17's forward variants, with :func:`kernels._forward_rows`' arguments (float32,
    LayerNorm, no residual)."""
    from fastln._config import BLOCK
    from fastln.cpu._lanes import head_mean_f32, shifted_sums_f32
    from fastln.cpu._rows import forward_sweep

    jit = partial(numba.njit, parallel=True, nogil=True, error_model="numpy", fastmath={"contract"})
    read, write = _prefetcher(False), _prefetcher(True)
    group, stripe, chunk = 16, 2048, 32

    @numba.njit(inline="always")
    def constants(pivot, mean_d, r):
        mean_t = np.float32(pivot + mean_d)
        return mean_t, np.float32((pivot - np.float64(mean_t)) + mean_d), np.float32(r)

    @jit
    def stripes(x, res, w, b, eps, centered, y, h, mean, rstd):
        rows, cols = x.shape
        for g in prange((rows + group - 1) // group):
            lo = g * group
            hi = min(rows, lo + group)
            st = np.empty((group, 3), np.float32)
            for i in range(lo, hi):
                pivot, mean_d, r = K._row_statistics(x[i], eps, True)
                st[i - lo, 0], st[i - lo, 1], st[i - lo, 2] = constants(pivot, mean_d, r)
                mean[i] = pivot + mean_d
                rstd[i] = r
            for j0 in range(0, cols, stripe):
                j1 = min(cols, j0 + stripe)
                for i in range(lo, hi):
                    forward_sweep(x[i, j0:j1], y[i, j0:j1], st[i - lo, 0], st[i - lo, 1], st[i - lo, 2],
                                  w[j0:j1], b[j0:j1], 0)

    @jit
    def interleaved(x, res, w, b, eps, centered, y, h, mean, rstd):
        rows, cols = x.shape
        for c in prange((rows + chunk - 1) // chunk):
            lo = c * chunk
            hi = min(rows, lo + chunk)
            pivot, mean_d, r = K._row_statistics(x[lo], eps, True)
            for i in range(lo, hi):
                mean[i] = pivot + mean_d
                rstd[i] = r
                mean_t, resid_t, r_t = constants(pivot, mean_d, r)
                if i + 1 < hi:
                    xn = x[i + 1]
                    p = head_mean_f32(xn)
                    s = 0.0
                    q = 0.0
                    for j0 in range(0, cols, BLOCK):
                        j1 = min(cols, j0 + BLOCK)
                        forward_sweep(x[i, j0:j1], y[i, j0:j1], mean_t, resid_t, r_t, w[j0:j1], b[j0:j1], 0)
                        bs, bq = shifted_sums_f32(xn[j0:j1], p)
                        s += np.float64(bs)
                        q += np.float64(bq)
                    m2 = q - s * (s / cols)
                    if ln.TINY_MEAN_SQUARE * cols <= q < np.inf and q <= ln.CERTIFY * m2:
                        pivot, mean_d, r = np.float64(p), s / cols, 1.0 / np.sqrt(m2 / cols + eps)
                    else:
                        pivot, mean_d, r = K._row_statistics(xn, eps, True)
                else:
                    forward_sweep(x[i], y[i], mean_t, resid_t, r_t, w, b, 0)

    def prefetching(next_row, output_row):
        @jit
        def kernel(x, res, w, b, eps, centered, y, h, mean, rstd):
            rows, cols = x.shape
            for i in prange(rows):
                if output_row:
                    for j in range(0, cols, 16):
                        write(y[i], j)
                if next_row and i + 1 < rows:
                    for j in range(0, cols, 16):
                        read(x[i + 1], j)
                pivot, mean_d, r = K._row_statistics(x[i], eps, True)
                mean_t, resid_t, r_t = constants(pivot, mean_d, r)
                forward_sweep(x[i], y[i], mean_t, resid_t, r_t, w, b, 0)
                mean[i] = pivot + mean_d
                rstd[i] = r
        return kernel

    return {"row groups by column stripes": stripes, "next row's statistics interleaved": interleaved,
            "prefetch next row": prefetching(True, False), "write-prefetch output row": prefetching(False, True),
            "non-temporal stores": _forward_variant(stream=True)}


def _dropped(rounds):
    today = _forward_variant(stream=False)
    variants = _dropped_variants()
    print("\ndropped: forward float32 out= with weight and bias, fraction of the reused copy (speed-up over today's)")
    print("| shape | today's | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for shape in [(4096, 1024), (1024, 4096), (256, 16384), (64, 65536)]:
        x, w, b, none = _forward_inputs(shape)
        want = np.empty_like(x)
        mean, rstd = np.empty(shape[0], np.float32), np.empty(shape[0], np.float32)
        today(x, none, w, b, 1e-5, True, want, none, mean, rstd)
        for name, kernel in variants.items():
            got = np.empty_like(x)
            kernel(x, none, w, b, 1e-5, True, got, none, mean, rstd)
            assert np.array_equal(got, want), name
        frac, kept = _case(shape, {"today": today, **variants}, rounds)
        cells = [f"{frac[n]:.2f} ({np.median(kept['today'] / kept[n]):.2f}x)" for n in variants]
        print(f"| {shape[0]}x{shape[1]} | {frac['today']:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
