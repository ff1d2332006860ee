"""Choose a Numba threading layer that is safe for fastln's users.

fastln is called from PyTorch training loops: from several Python threads at once, and in
processes that later fork (DataLoader workers).  Numba's layers differ:

========== ============ ==========
layer      thread-safe  fork-safe
========== ============ ==========
tbb        yes          yes
omp (GNU)  yes          no (a forked child hangs)
workqueue  no (aborts)  yes
========== ============ ==========

So fastln asks for ``tbb``.  The ``tbb`` wheel from PyPI installs ``libtbb.so.12`` in
``<prefix>/lib``, which Numba's extension cannot find inside a virtualenv; preloading it with
``ctypes`` fixes that.  If TBB cannot load, fastln falls back to whatever Numba picks and, when
that layer is not thread-safe, serialises its own parallel launches with a lock
(:data:`PARALLEL_LOCK`).  A layer chosen by the user (``NUMBA_THREADING_LAYER``) is respected.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading

import numba

_THREAD_SAFE_LAYERS = frozenset({"tbb", "omp"})


def _preload_tbb() -> bool:
    """Load ``libtbb.so.12`` from the ``tbb`` distribution, if installed."""
    try:
        from numba.np.ufunc import tbbpool  # noqa: F401  (already loadable: nothing to do)

        return True
    except ImportError:
        pass
    try:
        from importlib import metadata

        files = metadata.files("tbb") or []
    except Exception:  # tbb not installed, or no RECORD
        return False
    for f in files:
        if f.name.startswith("libtbb.so.12"):
            try:
                ctypes.CDLL(str(f.locate()), mode=ctypes.RTLD_GLOBAL)
                from numba.np.ufunc import tbbpool  # noqa: F401, F811

                return True
            except (OSError, ImportError):
                return False
    return False


def _user_chose_layer() -> bool:
    return "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default"


def configure() -> str:
    """Pick the threading layer before the first parallel launch.

    Returns
    -------
    str
        The layer asked for: ``"tbb"``, or ``"default"`` when TBB is unavailable or the user
        already chose.
    """
    if _user_chose_layer():
        return numba.config.THREADING_LAYER
    if _preload_tbb():
        numba.config.THREADING_LAYER = "tbb"
        return "tbb"
    return "default"


REQUESTED_LAYER = configure()

#: Held around every parallel kernel launch when the active layer is not thread-safe.
PARALLEL_LOCK = threading.Lock()
_layer_is_thread_safe: bool | None = None


def _layer_safe() -> bool:
    global _layer_is_thread_safe
    if _layer_is_thread_safe is None:
        try:
            _layer_is_thread_safe = numba.threading_layer() in _THREAD_SAFE_LAYERS
        except ValueError:  # no parallel launch yet: unknown, so be careful
            return False
    return _layer_is_thread_safe


def parallel_guard():
    """Context manager for a parallel launch: a no-op on thread-safe layers, else the lock."""
    if _layer_safe():
        return contextlib.nullcontext()
    return PARALLEL_LOCK


def active_layer() -> str:
    """The threading layer Numba runs, or ``"not started"`` before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"
