"""Numba CPU kernels.  A norm is its math (:mod:`.layer_norm`, :mod:`.rms_norm`); the
pipeline around it (:mod:`.kernels`, :mod:`._rows`) is shared."""

from fastln.cpu.kernels import (  # noqa: F401
    HALF_CHUNK_ROWS,
    backward_cols_parallel,
    backward_cols_serial,
    backward_half_parallel,
    backward_half_serial,
    backward_parallel,
    backward_serial,
    forward_cols_parallel,
    forward_cols_serial,
    forward_half_parallel,
    forward_half_serial,
    forward_parallel,
    forward_serial,
)
