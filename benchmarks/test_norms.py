"""Every norm and pass: fastln vs torch, its peers (when installed), numpy and the copy ceilings.

The cases and implementations are ``fastln.bench``'s registry, the one ``fastln bench`` runs.

Run: pytest benchmarks --benchmark-only --benchmark-group-by=group
     pytest benchmarks --benchmark-only -k "rms_norm and forward and 4096x1024"
"""

import pytest

from fastln import bench

IMPLS = ["fastln", "fastln out=", "torch", "torch.compile", "onnxruntime", "jax", "numpy", "copy", "copy reused",
         "elementwise reused"]


@pytest.mark.parametrize("impl", IMPLS)
def test_norm(benchmark, case, inputs, impl):
    fns = bench.makers(case, inputs, peers=impl in {p[0] for p in bench.PEERS})
    fn = fns.get(impl)
    if fn is None or isinstance(fn, Exception):
        pytest.skip(f"{impl} does not run {case.label()} here: {fn or 'not installed or not applicable'}")
    benchmark.group = case.label()
    benchmark.name = f"{case.norm}[{impl}]"
    fn()  # compile outside the timing
    benchmark(fn)
