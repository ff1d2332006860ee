import numpy as np
import pytest

from fastln import bench

DTYPES = [np.float32, np.float64]


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = bench.cases(bench.NORMS, bench.FULL_SHAPES, bench.FAMILY_SHAPES, DTYPES)
        metafunc.parametrize("case", cases, ids=[c.label().replace(" ", "-") for c in cases])


@pytest.fixture
def inputs(case):
    return bench.make_inputs(case.shape, case.dtype)
