"""CUDA kernels through Numba's simulator (CI has no GPU): small shapes, tiny blocks.

conftest.py turns the simulator on unless FASTLN_TEST_REAL_GPU=1; on a GPU machine the same
tests run on hardware (tools/gpu_suite.py).
"""

import numpy as np
import pytest

from tests import reference

cuda_mod = pytest.importorskip("numba.cuda")
from numba import cuda  # noqa: E402

import fastln  # noqa: E402

if not (cuda.is_available() or cuda.config.ENABLE_CUDASIM):
    pytest.skip("no CUDA device and the simulator is off", allow_module_level=True)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(fcuda.config, "BACKWARD_THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(fcuda.config, "MAX_BACKWARD_BLOCKS", 3)
    if cuda.config.ENABLE_CUDASIM:
        monkeypatch.setattr(fcuda.config, "USE_SHUFFLE", False)


CASES = [((3, 5), 1), ((4, 70), 1), ((2, 3, 4), 2), ((5, 1), 1), ((0, 7), 1)]


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("affine", [False, True])
def test_forward_on_device(shape, k, dtype, tol, affine):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    b = rng.standard_normal(norm).astype(dtype) if affine else None
    dev = lambda a: None if a is None else cuda.to_device(a)  # noqa: E731
    y, mean, rstd = fastln.layer_norm_forward(dev(x), norm, dev(w), dev(b))
    assert hasattr(y, "copy_to_host"), "device in, device out"
    ry, rmean, rrstd = reference.forward(x, k, w, b)
    scale = 1 if w is None else 1 + np.abs(w).max() + np.abs(b).max()
    np.testing.assert_allclose(y.copy_to_host(), ry, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(mean.copy_to_host(), rmean, atol=tol, rtol=tol)
    np.testing.assert_allclose(rstd.copy_to_host(), rrstd, rtol=tol * 2)
    assert y.copy_to_host().dtype == dtype


def test_forward_large_offset_on_device():
    x = (1e4 + 1e-2 * np.random.default_rng(1).standard_normal((2, 96))).astype(np.float32)
    y, _, _ = fastln.layer_norm_forward(cuda.to_device(x))
    assert np.abs(y.copy_to_host() - reference.forward(x)[0]).max() < 2e-6


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-11)])
@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("affine", [False, True])
def test_backward_on_device(shape, k, dtype, tol, affine):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    dx, dg = cuda.to_device(x), cuda.to_device(g)
    dw = None if w is None else cuda.to_device(w)
    _, mean, rstd = fastln.layer_norm_forward(dx, norm, dw)
    gx, gw, gb = fastln.layer_norm_backward(dg, dx, mean, rstd, dw, norm)
    rgx, rgw, rgb = reference.backward(g, x, k, w)
    np.testing.assert_allclose(gx.copy_to_host(), rgx, atol=tol * (1 + np.abs(rgx).max(initial=0)), rtol=0)
    if affine:
        np.testing.assert_allclose(gw.copy_to_host(), rgw, atol=tol * (1 + np.abs(rgw).max(initial=0)) * 10, rtol=0)
    else:
        assert gw is None
    np.testing.assert_allclose(gb.copy_to_host(), rgb, atol=tol * (1 + np.abs(rgb).max(initial=0)) * 10, rtol=0)


def test_device_results_match_cpu_kernels():
    x = np.random.default_rng(3).standard_normal((6, 50)).astype(np.float32)
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    y_dev = fastln.layer_norm(cuda.to_device(x), 50, cuda.to_device(w), cuda.to_device(w)).copy_to_host()
    np.testing.assert_allclose(y_dev, fastln.layer_norm(x, 50, w, w), atol=2e-6)


def test_deterministic_grads():
    rng = np.random.default_rng(4)
    x = cuda.to_device(rng.standard_normal((9, 40)).astype(np.float32))
    g = cuda.to_device(rng.standard_normal((9, 40)).astype(np.float32))
    w = cuda.to_device(np.ones(40, np.float32))
    _, m, r = fastln.layer_norm_forward(x, None, w)
    a = [t.copy_to_host() for t in fastln.layer_norm_backward(g, x, m, r, w)]
    b = [t.copy_to_host() for t in fastln.layer_norm_backward(g, x, m, r, w)]
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda d: fastln.layer_norm(d, 5), ValueError, "must match"),
        (lambda d: fastln.layer_norm(d, None, np.ones(4, np.float32)), TypeError, "weight must be on the GPU"),
        (lambda d: fastln.layer_norm(d, None, cuda.to_device(np.ones(3, np.float32))), ValueError, "weight must have shape"),
        (lambda d: fastln.layer_norm(d, None, cuda.to_device(np.ones(4))), TypeError, "dtype of x"),
        (lambda d: fastln.layer_norm(cuda.to_device(np.ones((3, 4), np.int32))), TypeError, "float32 or float64"),
        (lambda d: fastln.layer_norm_backward(d, d, None, None), TypeError, "mean must be a CUDA array"),
    ],
)
def test_device_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(cuda.to_device(np.ones((3, 4), np.float32)))


@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("affine", [False, True])
def test_rms_norm_forward_and_backward_on_device(shape, k, dtype, tol, affine):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    norm = shape[len(shape) - k:]
    w = rng.standard_normal(norm).astype(dtype) if affine else None
    dev = lambda a: None if a is None else cuda.to_device(a)  # noqa: E731
    y, rstd = fastln.rms_norm_forward(dev(x), norm, dev(w), eps=1e-6)
    ry, rrstd = reference.rms_forward(x, k, w, 1e-6)
    scale = 1 if w is None else 1 + np.abs(w).max()
    np.testing.assert_allclose(y.copy_to_host(), ry, atol=tol * scale * 4, rtol=0)
    np.testing.assert_allclose(rstd.copy_to_host(), rrstd, rtol=tol * 4)
    gx, gw = fastln.rms_norm_backward(dev(g), dev(x), rstd, dev(w), norm)
    rgx, rgw = reference.rms_backward(g, x, k, w, 1e-6)
    np.testing.assert_allclose(gx.copy_to_host(), rgx, atol=tol * 10 * (1 + np.abs(rgx).max(initial=0)), rtol=0)
    if affine:
        np.testing.assert_allclose(gw.copy_to_host(), rgw, atol=tol * 10 * (1 + np.abs(rgw).max(initial=0)), rtol=0)
    else:
        assert gw is None


@pytest.mark.parametrize("centered", [True, False])
def test_fused_add_norm_on_device_matches_cpu(centered):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 40)).astype(np.float32)
    r = rng.standard_normal((5, 40)).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    if centered:
        y, h = fastln.add_layer_norm(cuda.to_device(x), cuda.to_device(r), 40, cuda.to_device(w), cuda.to_device(w))
        ry, rh = fastln.add_layer_norm(x, r, 40, w, w)
    else:
        y, h = fastln.add_rms_norm(cuda.to_device(x), cuda.to_device(r), 40, cuda.to_device(w))
        ry, rh = fastln.add_rms_norm(x, r, 40, w)
    np.testing.assert_array_equal(h.copy_to_host(), rh)
    np.testing.assert_allclose(y.copy_to_host(), ry, atol=4e-6)


def test_import_fastln_does_not_import_cuda():
    import subprocess
    import sys

    code = "import sys, numpy as np, fastln; fastln.layer_norm(np.ones((64, 600))); print('numba.cuda' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _device_forward_backward(centered, x, g, w, b, k):
    """fastln's device forward and backward against the float64 reference (both norms)."""
    norm = x.shape[len(x.shape) - k:]
    dev = lambda a: None if a is None else cuda.to_device(a)  # noqa: E731
    tol = 4e-6 if x.dtype == np.float32 else 1e-12
    if centered:
        y, mean, rstd = fastln.layer_norm_forward(dev(x), norm, dev(w), dev(b))
        ry, _, rrstd = reference.forward(x, k, w, b)
        gx, gw, gb = fastln.layer_norm_backward(dev(g), dev(x), mean, rstd, dev(w), norm)
        rgx, rgw, rgb = reference.backward(g, x, k, w)
    else:
        y, rstd = fastln.rms_norm_forward(dev(x), norm, dev(w), eps=1e-6)
        ry, rrstd = reference.rms_forward(x, k, w, 1e-6)
        gx, gw = fastln.rms_norm_backward(dev(g), dev(x), rstd, dev(w), norm)
        rgx, rgw = reference.rms_backward(g, x, k, w, 1e-6)
        gb = rgb = None
    scale = 1 + np.abs(w).max() + (0 if b is None else np.abs(b).max())
    np.testing.assert_allclose(y.copy_to_host(), ry, atol=tol * scale, rtol=0)
    np.testing.assert_allclose(rstd.copy_to_host(), rrstd, rtol=tol)
    for got, want in ((gx, rgx), (gw, rgw), (gb, rgb)):
        if want is not None:
            np.testing.assert_allclose(got.copy_to_host(), want, atol=tol * 10 * (1 + np.abs(want).max()), rtol=0)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("rows,cols", [(9, 5), (7, 70), (3, 129), (1, 1)])
def test_register_kernels_in_every_layout(monkeypatch, centered, rows, cols):
    """Rows in registers: several rows a block (9x5: four groups of one warp, the last
    block part empty), rows over several warps (70 and 129 columns: 64 and 128 threads a
    row, two elements each, merged through shared memory), groups that take several rows
    (at most 3 groups, so dw/db add rows in registers), and a ragged last element.  The
    backward keeps one element a thread, so its layout differs from the forward's."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "MAX_PER_THREAD", 2)
    monkeypatch.setattr(fcuda.config, "BACKWARD_MAX_PER_THREAD", 1)
    monkeypatch.setattr(fcuda.config, "ROW_BLOCK_THREADS", 128)
    monkeypatch.setattr(fcuda.config, "MAX_GROUPS", 3)
    assert fcuda.row_plan(cols) == {5: (32, 1), 70: (64, 2), 129: (128, 2), 1: (32, 1)}[cols]
    assert fcuda.backward_row_plan(cols) == {5: (32, 1), 70: (128, 1), 129: (256, 1), 1: (32, 1)}[cols]
    rng = np.random.default_rng(rows * cols)
    x = (rng.standard_normal((rows, cols)) * 2 + 7).astype(np.float32)
    g = rng.standard_normal((rows, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32) if centered else None
    _device_forward_backward(centered, x, g, w, b, 1)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("cols,per", [(70, 3), (45, 2), (96, 3)])
def test_register_kernels_with_the_least_elements_a_thread(monkeypatch, centered, cols, per):
    """``config.ROW_PER_EXACT``: a row of 70 columns on 32 threads takes 3 elements a
    thread (not 4), so the last element slot of most threads is padding no more."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "ROW_PER_EXACT", True)
    monkeypatch.setattr(fcuda.config, "MAX_PER_THREAD", 4)
    monkeypatch.setattr(fcuda.config, "BACKWARD_MAX_PER_THREAD", 4)
    assert fcuda.row_plan(cols) == fcuda.backward_row_plan(cols) == (32, per)
    rng = np.random.default_rng(cols)
    x = (rng.standard_normal((6, cols)) * 2 - 3).astype(np.float32)
    g = rng.standard_normal((6, cols)).astype(np.float32)
    w = rng.standard_normal(cols).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32) if centered else None
    _device_forward_backward(centered, x, g, w, b, 1)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk,norm", [(16, (2, 20)), (2, (3, 50))])
@pytest.mark.parametrize("single_read", [True, False])
def test_block_kernels_take_rows_too_long_for_registers(monkeypatch, centered, dtype, chunk, norm, single_read):
    """Rows longer than ``MAX_ROW_THREADS * MAX_PER_THREAD`` take the block-per-row kernels:
    one chunk a thread (40 columns, 32 threads), or several ragged ones (150 columns, two
    elements a chunk: 5 or 4 elements a thread); LayerNorm's statistics from one read of
    the row or two."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "BLOCK_SINGLE_READ", single_read)

    monkeypatch.setattr(fcuda.config, "MAX_PER_THREAD", 1)
    monkeypatch.setattr(fcuda.config, "BACKWARD_MAX_PER_THREAD", 1)
    monkeypatch.setattr(fcuda.config, "MAX_ROW_THREADS", 32)
    monkeypatch.setattr(fcuda.config, "STAT_CHUNK", chunk)
    assert fcuda.row_plan(40) is None and fcuda.backward_row_plan(40) is None and fcuda.row_plan(32) == (32, 1)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((5, *norm)) * 3 - 2).astype(dtype)
    g = rng.standard_normal((5, *norm)).astype(dtype)
    w = rng.standard_normal(norm).astype(dtype)
    b = rng.standard_normal(norm).astype(dtype) if centered else None
    _device_forward_backward(centered, x, g, w, b, 2)


@pytest.mark.parametrize("centered", [True, False])
def test_block_backward_with_its_own_block_size(monkeypatch, centered):
    """``config.BACKWARD_THREADS_PER_BLOCK`` apart from the forward's (64 against 32 threads),
    on rows of 150 columns: the backward's sums and partials follow its own block."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "ROW_KERNELS", False)
    monkeypatch.setattr(fcuda.config, "BACKWARD_THREADS_PER_BLOCK", 64)
    monkeypatch.setattr(fcuda.config, "STAT_CHUNK", 2)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((7, 150)).astype(np.float32)
    g = rng.standard_normal((7, 150)).astype(np.float32)
    w = rng.standard_normal(150).astype(np.float32)
    b = rng.standard_normal(150).astype(np.float32) if centered else None
    _device_forward_backward(centered, x, g, w, b, 1)


@pytest.mark.parametrize("centered", [True, False])
def test_block_kernels_add_the_residual(monkeypatch, centered):
    """The fused add on the block-per-row kernels: h = x + residual written, and the
    statistics read back from it, against the CPU kernels bit for bit in h."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "ROW_KERNELS", False)
    monkeypatch.setattr(fcuda.config, "STAT_CHUNK", 2)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((4, 90)).astype(np.float32)
    r = rng.standard_normal((4, 90)).astype(np.float32)
    w = rng.standard_normal(90).astype(np.float32)
    fn = fastln.add_layer_norm if centered else fastln.add_rms_norm
    y, h = fn(cuda.to_device(x), cuda.to_device(r), 90, cuda.to_device(w))
    cy, ch = fn(x, r, 90, w)
    np.testing.assert_array_equal(h.copy_to_host(), ch)
    np.testing.assert_allclose(y.copy_to_host(), cy, atol=4e-6 * (1 + np.abs(w).max()), rtol=0)


@pytest.mark.parametrize("row_kernels,single_read", [(True, True), (False, True), (False, False)])
def test_forward_keeps_its_accuracy_far_from_zero(monkeypatch, row_kernels, single_read):
    """The statistics are float32 sums shifted by the row's first element (docstrings of
    ``fastln.cuda._row_kernels`` and ``_kernels``): an offset of 1e6 standard deviations
    costs nothing, in registers or on the block-per-row kernels."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "ROW_KERNELS", row_kernels)
    monkeypatch.setattr(fcuda.config, "BLOCK_SINGLE_READ", single_read)
    monkeypatch.setattr(fcuda.config, "STAT_CHUNK", 4)  # several chunks a thread to merge
    rng = np.random.default_rng(8)
    x = (3e5 + 0.3 * rng.standard_normal((6, 300))).astype(np.float32)
    y, mean, rstd = fastln.layer_norm_forward(cuda.to_device(x))
    ry, rmean, rrstd = reference.forward(x)
    np.testing.assert_allclose(rstd.copy_to_host(), rrstd, rtol=2e-6)
    assert np.abs(y.copy_to_host() - ry).max() < 4e-6


@pytest.mark.parametrize("shape,dtype", [((3, 4), np.float32), ((2, 7), np.float64), ((5,), np.float32), ((), np.float64)])
def test_raw_arrays_pack_as_numba_packs_them(shape, dtype):
    """A raw launch's array arguments: (meminfo, parent, size, itemsize, data, *shape,
    *strides), as numba-cuda's ``_Kernel._prepare_args`` packs a C-contiguous array.  (Empty
    arrays' strides are never read; numpy and the packing differ there.)"""
    from fastln import cuda as fcuda

    a = np.empty(shape, dtype)
    packed = fcuda._packed(fcuda.RawArray(a.ctypes.data, a.shape, a.itemsize))
    assert packed == [0, 0, a.size, a.itemsize, a.ctypes.data, *a.shape, *a.strides]

