"""Render a `fastln bench` JSON as the Markdown tables the README shows.

    python tools/results_table.py benchmarks/results/cpu-2core/bench.json

One table per norm and pass: each implementation's median time with its ratio to torch (the
per-round ratio's median and [min-max] over the kept rounds), GB/s, and for forwards the
fraction of the ceilings (allocating copy, reused copy, the element-wise pass); rows flagged
noisy are marked.
"""

import json
import sys


def _t(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def _ratio(r):
    if r.get("speedup_vs_torch") is None:
        return "-"
    lo, hi = r["speedup_spread"][0], r["speedup_spread"][-1]
    return f"{r['speedup_vs_torch']:.2f}x [{lo:.2f}-{hi:.2f}]"


def table(data: dict) -> str:
    rows = data["results"]
    out = []
    for norm, direction in dict.fromkeys((r["norm"], r["direction"]) for r in rows):
        sel = [r for r in rows if r["norm"] == norm and r["direction"] == direction]
        impls = [i for i in dict.fromkeys(r["impl"] for r in sel)]
        ceilings = [i for i in impls if i in ("copy", "copy reused", "elementwise reused")]
        impls = [i for i in impls if i not in ceilings and i != "numpy"]
        out.append(f"**{norm} {direction}** (time, speedup vs torch [min-max over rounds], GB/s)")
        out.append("")
        head = ["shape", "dtype"] + impls + (["fastln of copy / out= of reused copy / out= of elementwise"]
                                             if ceilings else [])
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        by = {(tuple(r["shape"]), r["dtype"], r["impl"]): r for r in sel}
        for shape, dtype in dict.fromkeys((tuple(r["shape"]), r["dtype"]) for r in sel):
            cells = ["x".join(map(str, shape)), dtype]
            for impl in impls:
                r = by.get((shape, dtype, impl))
                if r is None:
                    cells.append("-")
                    continue
                cell = f"{_t(r['median_s'])}, {_ratio(r)}, {r['gb_per_s']:.1f}"
                cells.append(cell + (" (noisy)" if r["noisy"] else ""))
            if ceilings:
                f, o = by.get((shape, dtype, "fastln")), by.get((shape, dtype, "fastln out="))
                a = f"{f['fraction_of_copy']:.2f}" if f and f.get("fraction_of_copy") else "-"
                b = f"{o['fraction_of_reused_copy']:.2f}" if o and o.get("fraction_of_reused_copy") else "-"
                c = f"{o['fraction_of_elementwise']:.2f}" if o and o.get("fraction_of_elementwise") else "-"
                cells.append(f"{a} / {b} / {c}")
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    m = data["machine"]
    peers = ", ".join(f"{k} {m[k]}" for k in ("onnxruntime", "jax") if k in m)
    out.append(
        f"Machine: {m.get('processor')}, {m.get('threads')} threads ({m.get('threading_layer')}), "
        f"torch {m.get('torch', 'absent')} with {m.get('torch_threads', '-')} threads, numba {m.get('numba')}, "
        f"numpy {m.get('numpy')}{', ' + peers if peers else ''}, Python {m.get('python')}."
    )
    for note in data.get("notes", []):
        out.append(f"Note: {note}")
    return "\n".join(out)


if __name__ == "__main__":
    print(table(json.load(open(sys.argv[1]))))
