import os

# CI has no GPU: run the CUDA tests through Numba's simulator unless a real GPU is asked for.
# Must happen before anything imports numba.cuda (fastln itself never does at import).
if os.environ.get("FASTLN_TEST_REAL_GPU") != "1":
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "large", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "campaign", max_examples=20000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a real CUDA device")
    config.addinivalue_line("markers", "slow: long-running (subprocesses, big inputs)")


def pytest_sessionstart(session):
    # Compile every CPU kernel into the on-disk cache first, one process per core: from a cold
    # cache (CI's clean clone) the tests would otherwise compile them one at a time as they
    # meet them.  A warm cache makes this a few seconds of loading.
    if os.environ.get("FASTLN_TEST_WARM", "1") == "0":
        return
    from fastln import _cache, _warm

    if _cache.DIRECTORY is not None:
        try:
            _warm.warm()
        except Exception as exc:  # the tests compile what they need anyway, only slower
            import warnings

            warnings.warn(f"compiling the kernels up front failed ({exc}); the tests compile them as they go", stacklevel=1)
