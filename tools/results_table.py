"""Render a `fastln bench` JSON as the Markdown table the README shows.

    python tools/results_table.py benchmarks/results/cpu-2core/bench.json
"""

import json
import sys


def _t(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def table(data: dict) -> str:
    rows = data["results"]
    by = {(tuple(r["shape"]), r["dtype"], r["direction"], r["impl"]): r for r in rows}
    cases = list(dict.fromkeys((tuple(r["shape"]), r["dtype"]) for r in rows))
    out = [
        "| shape | dtype | fwd fastln | fwd torch | fwd speedup | fwd of copy roofline | fwd max err | bwd fastln | bwd torch | bwd speedup |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, dtype in cases:
        f = by.get((shape, dtype, "forward", "fastln"))
        ft = by.get((shape, dtype, "forward", "torch"))
        b = by.get((shape, dtype, "backward", "fastln"))
        bt = by.get((shape, dtype, "backward", "torch"))
        if not (f and b):
            continue
        roof = f.get("fraction_of_copy_roofline")
        out.append(
            f"| {shape[0]}x{shape[1]} | {dtype} | {_t(f['median_s'])} | {_t(ft['median_s']) if ft else '-'} "
            f"| {f['speedup_vs_torch']:.2f}x | {roof:.2f} | {f['max_abs_error']:.1e} "
            f"| {_t(b['median_s'])} | {_t(bt['median_s']) if bt else '-'} | {b['speedup_vs_torch']:.2f}x |"
            if ft and bt else
            f"| {shape[0]}x{shape[1]} | {dtype} | {_t(f['median_s'])} | - | - | {roof:.2f} | {f['max_abs_error']:.1e} | {_t(b['median_s'])} | - | - |"
        )
    m = data["machine"]
    out.append("")
    out.append(
        f"Machine: {m.get('processor')}, {m.get('threads')} threads ({m.get('threading_layer')}), "
        f"torch {m.get('torch', 'absent')} with {m.get('torch_threads', '-')} threads, numba {m.get('numba')}, "
        f"numpy {m.get('numpy')}, Python {m.get('python')}."
    )
    return "\n".join(out)


if __name__ == "__main__":
    print(table(json.load(open(sys.argv[1]))))
