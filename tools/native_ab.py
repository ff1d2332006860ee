"""The torch bridge's compiled glue at another git revision against today's, in one process.

    python tools/native_ab.py --base 4afe088 [--rounds 21]

Builds ``fastln/torch/_native.cpp`` as it was at ``--base`` (``git show``) into a temporary
extension with ``torch.utils.cpp_extension.load`` (the flags of ``setup.py``), configures it
like :mod:`fastln.torch._fast` does, checks that both give the same gradients bitwise (where
both split the backward into the same chunks), and
times both glues and torch side by side (interleaved rounds, spoiled rounds dropped:
``fastln.bench.kept_samples``): ``ft.layer_norm``'s path with gradients (forward and
``autograd.grad`` of x, w, b) and without (no_grad), float32 with affine, 2 threads.
Ratios are the median of the per-round ratio with its interquartile range.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.cpp_extension import load  # noqa: E402

from fastln import _config, bench  # noqa: E402
from fastln.cpu import _half, entries  # noqa: E402
from fastln.torch import _fast  # noqa: E402

SHAPES = [(2, 3), (32, 20, 20), (1, 128, 768), (64, 512), (8, 128, 768)]


def build(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:fastln/torch/_native.cpp"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    tmp = Path(tempfile.mkdtemp(prefix="fastln_native_ab_"))
    (tmp / "native_base.cpp").write_text(src)
    mod = load(name="native_base", sources=[str(tmp / "native_base.cpp")], extra_cflags=["-O2", "-fopenmp"],
               extra_ldflags=["-fopenmp"], build_directory=str(tmp))
    c = _config
    older = [  # session 15's glue (no chunk rows), then the ones before it (no pool threshold)
        (entries.address, _fast._backward, c.SERIAL_BELOW, c.POOL_BELOW, c.ROW_COST, c.COL_SPLIT_MIN, c.MAX_CHUNKS,
         c.MAX_PARTIAL_BYTES, c.MIN_CHUNK_ELEMS, _half.BFLOAT16, _half.FLOAT16 if _half.FLOAT16_IN_KERNEL else -1),
        (entries.address, _fast._backward, c.SERIAL_BELOW, c.ROW_COST, c.COL_SPLIT_MIN, c.MAX_CHUNKS,
         c.MAX_PARTIAL_BYTES, c.MIN_CHUNK_ELEMS),
    ]
    try:
        _fast.configure(mod)
    except TypeError:
        for args in older:
            try:
                mod.configure(*args)
                break
            except TypeError:
                continue
        else:
            raise
    return mod


def _iqr(r):
    return f"{np.median(r):.2f}x [{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}]"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True, help="git revision of the glue to compare against")
    p.add_argument("--rounds", type=int, default=21)
    a = p.parse_args()
    if _fast.norm is None:
        sys.exit(f"fastln's compiled glue is not in use: {_fast.WHY_NOT}")
    from fastln.torch import _native

    base = build(a.base)
    torch.set_num_threads(2)
    print("| shape | fwd+bwd: base, new, torch | new vs base | torch / new | no_grad: base, new | new vs base |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        _case(base, _native, shape, a.rounds)


def _case(base, new, shape, rounds):
    d = shape[-1]
    x = torch.randn(*shape, requires_grad=True)
    w, b = torch.randn(d, requires_grad=True), torch.randn(d, requires_grad=True)
    g = torch.randn(*shape)

    def fb(mod):
        return lambda: torch.autograd.grad(mod.norm(x, None, (d,), w, b, 1e-5, True), (x, w, b), g)

    def ng(mod):
        def f():
            with torch.no_grad():
                mod.norm(x, None, (d,), w, b, 1e-5, True)
        return f

    got = [fb(m)() for m in (base, new)]
    rows = x.numel() // d
    if tuple(base.chunking(rows, d)) == tuple(new.chunking(rows, d)):  # other chunks sum dw/db in another order
        assert all(torch.equal(u, v) for u, v in zip(*got, strict=True)), "the two glues differ"
    fns = {"base fb": fb(base), "new fb": fb(new), "base ng": ng(base), "new ng": ng(new),
           "torch fb": lambda: torch.autograd.grad(F.layer_norm(x, (d,), w, b, 1e-5), (x, w, b), g)}
    kept, _ = bench.kept_samples(fns, rounds)
    us = {k: np.median(v) * 1e6 for k, v in kept.items()}
    print(f"| {'x'.join(map(str, shape))} | {us['base fb']:.1f}, {us['new fb']:.1f}, {us['torch fb']:.1f} us | "
          f"{_iqr(kept['base fb'] / kept['new fb'])} | {_iqr(kept['torch fb'] / kept['new fb'])} | "
          f"{us['base ng']:.1f}, {us['new ng']:.1f} us | {_iqr(kept['base ng'] / kept['new ng'])} |", flush=True)


if __name__ == "__main__":
    main()
