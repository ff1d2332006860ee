"""Compile policy and tuning knobs, kept apart from the kernel math.

Every value can be overridden by an environment variable read once at import, so tests
and users can change policy without editing kernels (for example ``FASTLN_CACHE=0``).
"""

from __future__ import annotations

import os


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {n}")
    return n


#: Numba's on-disk cache for the CPU kernels.  On by default: it turns a ~10 s cold compile
#: into a sub-second load.  It goes through ``fastln._cache``, which keys entries by the
#: compile-time constants and the kernel sources, recovers from corrupt files and falls back
#: to in-memory compilation when nothing is writable.  Concurrent cold-cache processes are
#: tested in tests/test_cache.py (numba issue 4807 is why numbagg keeps it opt-in).
CACHE = _env_flag("FASTLN_CACHE", True)

#: The torch bridge's compiled eager fast path (``fastln/torch/_native.cpp``), when it was
#: built.  ``FASTLN_NATIVE=0`` runs every call through the Python bridge instead (same
#: kernels, same results; the tests compare the two).
NATIVE = _env_flag("FASTLN_NATIVE", True)

#: LLVM fast-math flags for reduction loops (row sums): ``reassoc`` lets LLVM split a sum
#: across SIMD lanes, ``contract`` allows FMA.  Never ``nnan``/``ninf``: NaN and Inf must
#: propagate per row exactly as in torch.
REDUCE_FASTMATH = {"reassoc", "contract"}

#: Flags for element-wise sweeps, which vectorise without reassociation.  ``reassoc`` there
#: is harmful: LLVM rewrote ``(x - mean_t) - resid`` as ``x - (mean_t + resid)`` and lost
#: the low bits of large offsets.
SWEEP_FASTMATH = {"contract"}

#: Elements per statistics block.  Each block gets an exact two-pass mean/M2 from L1 cache;
#: blocks are merged with Chan's formula, so the row is read from memory once.
BLOCK = _env_int("FASTLN_BLOCK", 512)

#: Work below this runs the serial kernels: waking worker threads (3-5 us) costs more than
#: the work itself.  Work counts elements plus ``ROW_COST`` per row.
SERIAL_BELOW = _env_int("FASTLN_SERIAL_BELOW", 1 << 15, minimum=0)

#: The torch bridge's compiled glue runs work on torch's thread pool from this much work
#: on (same units), serially below it.  Only where the work runs: the backward's chunks
#: still come from ``SERIAL_BELOW`` (:func:`fastln._api.chunking`), so the bits are the
#: NumPy API's either way.  ``python tools/pool_threshold.py`` times candidates side by
#: side, 1 << 15 against 1 << 16 at 64x512, 96x512, 128x256 and 48x1024 (time at 1 << 16
#: over time at 1 << 15): 21 rounds, the pool from 1 << 15 won everywhere (no_grad
#: 1.20-1.37x, forward+backward 1.11-1.18x); 11 rounds, it won at the two 512-wide shapes
#: (1.07-1.31x) and lost at 128x256 (0.90-0.94x) and 48x1024 (0.96-1.00x); a first version
#: of the tool, with no torch calls between bursts to keep torch's workers awake, had it
#: mostly losing (0.88-1.02x).  In a model torch's workers are awake, so it stays at
#: ``SERIAL_BELOW``'s value.
POOL_BELOW = _env_int("FASTLN_POOL_BELOW", 1 << 15, minimum=0)

#: A row's fixed cost (reductions' set-up, sqrt, loop tails) in elements: 640x20 runs
#: 2.3x faster in parallel although it holds only 12,800 elements.
ROW_COST = _env_int("FASTLN_ROW_COST", 128, minimum=0)

#: The backward pass splits rows into at most this many chunks, each with its own row of
#: grad_weight/grad_bias partials.  The split depends only on the shape, never on the
#: thread count, so results are bitwise identical for any ``numba.set_num_threads``.
MAX_CHUNKS = _env_int("FASTLN_MAX_CHUNKS", 16)

#: Fewest elements a backward chunk holds: below this a chunk's partials cost more than
#: the parallelism it buys.  (1 << 14 was measured for the torch bridge's chunks on torch's
#: pool: worse at 1x128x768 with 8 chunks than with 4.)  One exception: work from
#: ``SERIAL_BELOW`` up to two full chunks is split in two halves (:func:`fastln._api.chunking`),
#: which torch's pool runs at once (the compiled glue) and Numba's pool runs one after the
#: other (:func:`fastln._api.serial_backward`).
MIN_CHUNK_ELEMS = _env_int("FASTLN_MIN_CHUNK_ELEMS", 1 << 15)

#: Most bytes of float64 grad_weight/grad_bias partials (16 bytes a column a chunk): wide
#: rows get fewer chunks rather than megabytes of zero-filled buffers.
MAX_PARTIAL_BYTES = _env_int("FASTLN_MAX_PARTIAL_BYTES", 4 << 20)

#: Fewest rows a backward chunk holds, where the work makes more than two chunks: each chunk
#: costs a row of float64 partials (zeroed, flushed into, summed) and its own accumulators,
#: a few row-passes of memory traffic whatever its number of rows, so chunks of a few wide
#: rows spent more on their partials than on their rows.  Side by side with torch's kernel
#: (float32 with parameter gradients, 2 threads, 11-15 rounds; torch's time over fastln's),
#: 16 chunks against 2-4: 64x16384 0.71x against 1.24-1.36x, 96x8192 0.99x against
#: 1.40-1.45x, 256x16384 0.97x against 1.10-1.12x, 32x65536 (4 chunks) 0.91x against
#: 1.17x (2); from 64 rows a chunk, 16 chunks were level with 4-8 (1024x4096, 512x768) and
#: ahead of 2 (2048x768: 1.79x against 1.56x).  ``python tools/kernel_ab.py --only chunks``.
#: It caps the parallelism of few-row shapes on machines of many cores, as ``MAX_CHUNKS``
#: does of every shape.
MIN_CHUNK_ROWS = _env_int("FASTLN_MIN_CHUNK_ROWS", 64)

#: Backward gathers grad_weight/grad_bias over this many rows in the data's dtype before
#: adding them into float64 partials.  32 rather than 16: each flush converts and adds two
#: rows of float64 partials, and halving them made the backward 1.03x faster at 512x768
#: and 1.09-1.12x at 8192x256, level at 4096x1024 (float32, 2 threads), for errors that stay
#: at float32's own rounding (0.9-1.2e-7 of the largest gradient with 16 or 32;
#: ``python tools/kernel_ab.py --only flush``).
FLUSH_ROWS = _env_int("FASTLN_FLUSH_ROWS", 32)

#: Wide rows are split into column blocks of this many elements (a multiple of ``BLOCK``)
#: so that a few very wide rows still use every thread and backward needs no per-chunk
#: partials (see ``fastln.cpu.kernels``).
COL_BLOCK = _env_int("FASTLN_COL_BLOCK", 8192)

#: Rows at least this wide, when there are fewer than ``MAX_CHUNKS`` of them, take the
#: column-split kernels; rows wider than ``MAX_PARTIAL_BYTES / 32`` always do, so backward
#: partials never exceed their cap.
COL_SPLIT_MIN = _env_int("FASTLN_COL_SPLIT_MIN", 1 << 16)


def _last_level_cache_bytes() -> int:
    """The largest CPU cache's size, or 32 MiB when the system does not say."""
    try:
        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        if size > 0:
            return size
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            text = f.read().strip().upper()
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        return 32 << 20


#: Forwards whose outputs together exceed this many bytes write them with non-temporal
#: stores (see ``fastln.cpu._stream``): such outputs leave the cache before anyone reads
#: them, and normal stores would first read every line from memory.  Default: the
#: last-level cache's size.  0 streams always.
STREAM_BYTES = _env_int("FASTLN_STREAM_BYTES", _last_level_cache_bytes(), minimum=0)


def compile_time_constants() -> tuple:
    """The knobs baked into compiled kernels: the kernel cache is keyed by them."""
    return (("BLOCK", BLOCK), ("FLUSH_ROWS", FLUSH_ROWS), ("COL_BLOCK", COL_BLOCK), ("STREAM_BYTES", STREAM_BYTES))
