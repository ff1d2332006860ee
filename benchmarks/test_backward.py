"""Backward: fastln vs torch (aten.native_layer_norm_backward) vs numpy.

Run: pytest benchmarks --benchmark-only --benchmark-group-by=group
"""

import pytest

from fastln import bench

IMPLS = ["fastln", "torch", "numpy"]


@pytest.mark.parametrize("impl", IMPLS)
def test_backward(benchmark, case, inputs, impl):
    makers = bench.backward_makers()
    if impl not in makers:
        pytest.skip(f"{impl} is not installed")
    shape, dtype = case
    benchmark.group = f"backward {shape[0]}x{shape[1]} {dtype.__name__}"
    benchmark.name = f"backward[{impl}]"
    fn = makers[impl](*inputs)
    fn()
    benchmark(fn)
