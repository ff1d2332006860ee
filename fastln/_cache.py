"""Numba's on-disk kernel cache, made safe to depend on.

Numba's own ``cache=True`` has three failure modes that a library cannot ship with:

* it raises at decoration time (``import fastln`` fails) when no cache location is writable,
  which is normal for read-only installs and containers;
* a truncated index (``.nbi``) or data file (``.nbc``), left by a crash, raises on every
  later load and never heals;
* the cache is keyed by the kernel's own source file only, so compile-time constants read
  from the environment (``FASTLN_BLOCK``...) and helpers inlined from other files are baked
  into cached code that a later run with other values would silently reuse.

:func:`jit` therefore compiles every kernel without Numba's cache and attaches
:class:`SafeCache` instead: it lives in one directory chosen (and tested for writability)
once, keyed by the fastln sources, the compile-time constants and the Numba version; a
failure to read an entry discards the entry and recompiles; a failure to write is a warning.
With no writable place, kernels compile in memory and one warning says so.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numba
from numba import njit
from numba.core.caching import CompileResultCacheImpl, FunctionCache, _CacheLocator

from fastln import _config

_PACKAGE = Path(__file__).resolve().parent
_warned: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _sources_stamp() -> str:
    """Hash of every kernel source and compile-time constant: what cached code depends on."""
    h = hashlib.sha256()
    for path in sorted((_PACKAGE / "cpu").glob("*.py")) + [_PACKAGE / "_config.py"]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    h.update(repr(_config.compile_time_constants()).encode())
    h.update(numba.__version__.encode())
    return h.hexdigest()[:20]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _candidates():
    env = os.environ.get("FASTLN_CACHE_DIR")
    if env:
        yield Path(env)
    if numba.config.CACHE_DIR:
        yield Path(numba.config.CACHE_DIR) / "fastln"
    yield _PACKAGE / "__pycache__" / "numba"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    yield Path(xdg) / "fastln"
    yield Path(tempfile.gettempdir()) / f"fastln-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"


def _choose_dir() -> Path | None:
    """First writable candidate, with a subdirectory per set of compile-time constants, so
    runs with different ``FASTLN_BLOCK`` values never share compiled code."""
    knobs = hashlib.sha256(repr(_config.compile_time_constants()).encode()).hexdigest()[:12]
    for base in _candidates():
        path = base / f"kernels-{knobs}"
        if _writable(path):
            return path
    return None


STAMP = _sources_stamp()
DIRECTORY: Path | None = _choose_dir() if _config.CACHE else None
if _config.CACHE and DIRECTORY is None:
    _warn_once(
        "nodir",
        "fastln: no writable kernel cache location (tried FASTLN_CACHE_DIR, NUMBA_CACHE_DIR, the "
        "package directory, the user cache and the temp directory); kernels compile in memory "
        "on every run",
    )


class _Locator(_CacheLocator):
    """All fastln kernels in :data:`DIRECTORY`, stamped by :data:`STAMP` (not file mtimes)."""

    def __init__(self, py_func, py_file):
        self._lineno = py_func.__code__.co_firstlineno

    def ensure_cache_path(self):
        os.makedirs(DIRECTORY, exist_ok=True)

    def get_cache_path(self):
        return str(DIRECTORY)

    def get_source_stamp(self):
        return STAMP

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        return cls(py_func, py_file) if DIRECTORY is not None else None


class _Impl(CompileResultCacheImpl):
    _locator_classes = [_Locator]


class SafeCache(FunctionCache):
    """A Numba function cache whose failures cost a recompile, never the package."""

    _impl_class = _Impl

    def load_overload(self, sig, target_context):
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # truncated pickle, bad bitcode, unreadable file...
            _warn_once(
                f"load:{self._name}",
                f"fastln: discarding an unreadable kernel cache entry ({type(exc).__name__}: "
                f"{exc}); recompiling",
            )
            try:
                self.flush()  # a fresh, empty index; the bad data file is overwritten later
            except Exception:
                self.disable()
            return None

    def save_overload(self, sig, data):
        try:
            super().save_overload(sig, data)
        except Exception as exc:  # disk full, directory gone...
            _warn_once("save", f"fastln: could not write the kernel cache ({exc}); continuing")
            self.disable()


def jit(**options):
    """``numba.njit(**options)`` with :class:`SafeCache` when caching is on."""

    def wrap(fn):
        disp = njit(cache=False, **options)(fn)
        if DIRECTORY is not None:
            try:
                disp._cache = SafeCache(disp.py_func)
            except Exception as exc:
                _warn_once("attach", f"fastln: kernel cache disabled ({exc})")
        return disp

    return wrap


def cfunc(fn, sig):
    """``numba.cfunc(sig)(fn)``, compiled now, with :class:`SafeCache` when caching is on
    (Numba's own ``cache=True`` would have its failure modes, above)."""
    from numba.core import sigutils
    from numba.core.ccallback import CFunc

    res = CFunc(fn, sigutils.normalize_signature(sig), locals={}, options=dict(nogil=True, error_model="numpy"))
    if DIRECTORY is not None:
        try:
            res._cache = SafeCache(fn)
        except Exception as exc:
            _warn_once("attach", f"fastln: kernel cache disabled ({exc})")
    res.compile()
    return res


def describe() -> dict:
    """Cache state for ``fastln info``: location, writability and entry count."""
    if DIRECTORY is None:
        return {"enabled": False, "location": None, "writable": False, "entries": 0}
    entries = len(list(DIRECTORY.glob("*.nbc"))) if DIRECTORY.exists() else 0
    return {
        "enabled": True,
        "location": str(DIRECTORY),
        "writable": _writable(DIRECTORY),
        "entries": entries,
    }
