"""Choose a Numba threading layer that is safe for fastln's users, and know when it is not.

fastln is called from PyTorch training loops: from several Python threads at once, and in
processes that later fork (DataLoader workers).  Numba's layers differ:

========== ============ =========================================================
layer      thread-safe  fork-safe
========== ============ =========================================================
tbb        yes          yes
omp (GNU)  yes          no: a forked child that launches is killed ("Terminating:
                        fork() called from a process already using GNU OpenMP")
workqueue  no (aborts)  yes
========== ============ =========================================================

So fastln asks for ``tbb``.  The ``tbb`` wheel from PyPI installs ``libtbb.so.12`` in
``<prefix>/lib``, which Numba's extension cannot find inside a virtualenv; preloading it with
``ctypes`` fixes that.  Without TBB fastln asks for Numba's ``forksafe`` choice (``workqueue``
on Linux) and serialises its own parallel launches with a lock (:data:`PARALLEL_LOCK`), since
workqueue is not thread-safe.  A layer chosen by the user (``NUMBA_THREADING_LAYER``) is
respected, and so is one already started by other Numba code before ``import fastln``.

When the process forks while GNU OpenMP is the active layer, the child can never launch a
parallel region again; :func:`parallel_ok` then says so (``os.register_at_fork``) and fastln
runs its serial kernels there, with the same results.
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
        The layer asked for: ``"tbb"``; ``"forksafe"`` when TBB is unavailable; the user's
        choice; or ``"default"`` when a layer was already running.
    """
    tbb_ok = _preload_tbb()  # also what a user's NUMBA_THREADING_LAYER=tbb needs in a venv
    if _user_chose_layer():
        return numba.config.THREADING_LAYER
    if tbb_ok:
        numba.config.THREADING_LAYER = "tbb"
        return "tbb"
    if active_layer() == "not started":  # another library may have started one already
        numba.config.THREADING_LAYER = "forksafe"
        return "forksafe"
    return "default"


def active_layer() -> str:
    """The threading layer Numba runs, or ``"not started"`` before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return "not started"


REQUESTED_LAYER = configure()

#: True in a child forked while GNU OpenMP was running: parallel launches would kill it.
FORKED_FROM_OPENMP = False


def _after_fork_in_child() -> None:
    global FORKED_FROM_OPENMP, PARALLEL_LOCK
    PARALLEL_LOCK = threading.Lock()  # a lock held by another parent thread stays held
    if active_layer() == "omp":
        FORKED_FROM_OPENMP = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def parallel_ok() -> bool:
    """False where a parallel launch cannot work: a child forked from a GNU OpenMP parent."""
    return not FORKED_FROM_OPENMP

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


_pool_started = False


def start_pool() -> None:
    """Start Numba's thread pool before the first parallel launch.

    Numba starts it when it compiles a parallel kernel, or when it loads one from its cache
    (a reload hook of the kernel's code library).  A cached kernel that *calls* a parallel
    kernel, as the by-address kernels of the torch bridge do, may come without that hook;
    in a fresh process whose first parallel work went through one, the launch jumped into a
    pool that was never started: a segfault (and loading a cached C entry of
    :mod:`fastln.cpu.entries` first aborts in LLVM: the pool's symbols are missing).
    Starting it is idempotent in Numba."""
    global _pool_started
    if _pool_started:
        return
    from numba.np.ufunc.parallel import _launch_threads

    _launch_threads()
    _pool_started = True


def parallel_guard():
    """Context manager for a parallel launch: a no-op on thread-safe layers, else the lock.
    Starts Numba's thread pool first, once (:func:`start_pool`)."""
    if not _pool_started:
        start_pool()
    if _layer_safe():
        return contextlib.nullcontext()
    return PARALLEL_LOCK



def describe() -> dict:
    """Threading state for ``fastln info``."""
    return {
        "requested": REQUESTED_LAYER,
        "active": active_layer(),
        "forked_from_openmp": FORKED_FROM_OPENMP,
        "pid": os.getpid(),
    }
