"""Streamed (non-temporal) output stores: the same bytes, in every alignment, as normal stores.

Outputs bigger than the last-level cache are written with non-temporal stores
(``fastln.cpu._stream``).  Those only change how the bytes travel, never which bytes: the
copy loop is checked at every alignment and length around a cache line, and whole forwards
run with streaming forced on (``FASTLN_STREAM_BYTES=0``, in a subprocess: the threshold is
compiled in) must give bitwise what the normal path gives here.
"""

import json
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import fastln
from fastln._config import STREAM_BYTES
from fastln.cpu._stream import store_fence, stream_store


@numba.njit
def _copy(dst, src):
    stream_store(dst, src)
    store_fence()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_stream_store_copies_every_alignment_and_length(dtype):
    rng = np.random.default_rng(0)
    line = 64 // np.dtype(dtype).itemsize
    for offset in range(line + 1):
        for n in list(range(0, 3 * line + 2)) + [1000]:
            src = (rng.standard_normal(n) * 100).astype(dtype)
            buf = np.full(offset + n + line, 7, dtype)
            _copy(buf[offset : offset + n], src)
            np.testing.assert_array_equal(buf[offset : offset + n], src)
            assert (buf[:offset] == 7).all() and (buf[offset + n :] == 7).all()  # nothing outside


def test_default_threshold_is_a_cache_size():
    # The normal path runs everything in this process's tests: the threshold is megabytes.
    assert STREAM_BYTES >= 1 << 20


_CASES = """
import json, sys
import numpy as np
import fastln
rng = np.random.default_rng(3)
out = {}
for rows, cols in [(5, 7), (33, 100), (70, 1000), (64, 17)]:
    x = (rng.standard_normal((rows, cols)) * 3 + 1).astype(np.float32)
    r = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    key = f"{rows}x{cols}"
    y, mean, rstd = fastln.layer_norm_forward(x, weight=w, bias=b)
    out[key + " ln"] = [y.tolist(), mean.tolist(), rstd.tolist()]
    out[key + " rms"] = fastln.rms_norm(x, weight=w).tolist()
    y, h = fastln.add_layer_norm(x, r, weight=w, bias=b)
    out[key + " add_ln"] = [y.tolist(), h.tolist()]
    y, h = fastln.add_rms_norm(x, r)
    out[key + " add_rms"] = [y.tolist(), h.tolist()]
    if rows * cols > 10000:
        continue  # out= and in place on serial-sized shapes only: one parallel kernel to compile
    buf = np.empty(rows * cols + 1, np.float32)  # out= one element off any alignment
    o = buf[1:].reshape(rows, cols)
    fastln.layer_norm(x, weight=w, out=o)
    out[key + " out"] = o.tolist()
    xi = x.copy()
    fastln.layer_norm(xi, out=xi)  # in place
    out[key + " inplace"] = xi.tolist()
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_streamed_forwards_are_bitwise_the_normal_ones():
    env = dict(os.environ, FASTLN_STREAM_BYTES="0", NUMBA_NUM_THREADS="2")
    streamed = json.loads(
        subprocess.run([sys.executable, "-c", _CASES], env=env, capture_output=True, text=True, check=True).stdout
    )
    here = {}
    exec(_CASES.replace("json.dump(out, sys.stdout)", "here.update(out)"), {"here": here})
    assert streamed.keys() == here.keys()
    for key in here:
        np.testing.assert_equal(streamed[key], here[key], err_msg=key)
    # and the values themselves are right (not two equal wrong answers)
    x = (np.random.default_rng(3).standard_normal((5, 7)) * 3 + 1).astype(np.float32)
    assert np.asarray(streamed["5x7 inplace"]).shape == x.shape
    np.testing.assert_allclose(streamed["5x7 inplace"], fastln.layer_norm(x), rtol=0, atol=0)
