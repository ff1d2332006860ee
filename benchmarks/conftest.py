import numpy as np
import pytest

from fastln import bench

SHAPES = bench.FULL_SHAPES
DTYPES = [np.float32, np.float64]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = [(s, d) for d in DTYPES for s in SHAPES]
        metafunc.parametrize("case", cases, ids=[f"{s[0]}x{s[1]}-{np.dtype(d).name}" for s, d in cases])


@pytest.fixture
def inputs(case):
    shape, dtype = case
    return bench.make_inputs(shape, dtype)
