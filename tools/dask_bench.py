"""Throughput of fastln on Dask: a local 2-worker cluster and the threaded scheduler against
the in-process NumPy call, on the same data (forward LayerNorm, float32, affine).

The array is persisted on the workers before timing, so the cluster figure is the norm's
own throughput there (tasks, scheduling, spread over workers), not the cost of shipping data
from the client.  GB/s counts x read and y written (2 * bytes(x) / t).  Medians of --repeat.

    python tools/dask_bench.py [--rows 200000] [--cols 768] [--chunk-rows 8192] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, wait

import fastln


def _median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(min(ts)), float(max(ts))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--cols", type=int, default=768)
    p.add_argument("--chunk-rows", type=int, default=8192)
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.rows, a.cols), dtype=np.float32)
    w = rng.standard_normal(a.cols).astype(np.float32)
    b = rng.standard_normal(a.cols).astype(np.float32)
    nbytes = 2 * x.nbytes
    rows = {}
    rows["numpy, in process"] = _median_time(lambda: fastln.layer_norm(x, None, w, b), a.repeat)
    xd = da.from_array(x, chunks=(a.chunk_rows, a.cols))
    with dask.config.set(scheduler="threads"):
        rows["dask, threaded scheduler"] = _median_time(
            lambda: fastln.layer_norm(xd, None, w, b).compute(), a.repeat)
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster):
        xc = xd.persist()
        wait(xc)

        def on_cluster():
            y = fastln.layer_norm(xc, None, w, b).persist()
            wait(y)
            del y

        rows["dask, LocalCluster 2 workers x 1 thread (data on the workers)"] = _median_time(on_cluster, a.repeat)
    out = []
    print(f"forward LayerNorm {a.rows}x{a.cols} float32 ({x.nbytes / 2**20:.0f} MiB), chunks of {a.chunk_rows} rows")
    print("| where | median | [min-max] | GB/s |")
    print("|---|---|---|---|")
    for name, (med, lo, hi) in rows.items():
        print(f"| {name} | {med * 1e3:.1f} ms | [{lo * 1e3:.1f}-{hi * 1e3:.1f}] | {nbytes / med / 1e9:.1f} |")
        out.append({"where": name, "median_s": med, "min_s": lo, "max_s": hi, "gb_per_s": nbytes / med / 1e9})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"shape": [a.rows, a.cols], "chunk_rows": a.chunk_rows, "rows": out}, f, indent=1)


if __name__ == "__main__":
    main()
