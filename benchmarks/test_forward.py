"""Forward: fastln vs torch (aten.native_layer_norm) vs numpy, plus the copy roofline.

Run: pytest benchmarks --benchmark-only --benchmark-group-by=group
"""

import pytest

from fastln import bench

IMPLS = ["fastln", "torch", "numpy", "copy"]


@pytest.mark.parametrize("impl", IMPLS)
def test_forward(benchmark, case, inputs, impl):
    makers = bench.forward_makers()
    if impl not in makers:
        pytest.skip(f"{impl} is not installed")
    shape, dtype = case
    benchmark.group = f"forward {shape[0]}x{shape[1]} {dtype.__name__}"
    benchmark.name = f"forward[{impl}]"
    fn = makers[impl](*inputs)
    fn()  # compile outside the timing
    benchmark(fn)
