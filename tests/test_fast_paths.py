"""The bridge's fast paths keep what the slow ones give: the same bits, gradients and errors.

Paths (fastln/torch/functional.py): the compiled glue (fastln/torch/_native.cpp, when
built: no-grad and eager autograd for plain CPU float32/64 tensors), and the Python bridge:
no-grad (kernels by address, statistics not kept), plain eager autograd (_EagerNorm),
torch.func/forward-AD (_NormFunction) and the custom op; under them the address kernels (CPU
float32/64 contiguous) or the NumPy-view kernels (anything else).  All must agree bitwise
with the NumPy API on the same data.  Tests taking the ``route`` fixture run twice: with the
compiled glue (skipped where it is not built) and with the Python bridge alone.
"""

import numpy as np
import pytest

import fastln

torch = pytest.importorskip("torch")
import fastln.torch as ft  # noqa: E402
from fastln.torch import _fast, _glue, functional  # noqa: E402
from fastln.torch.functional import _NormFunction  # noqa: E402


@pytest.fixture(params=["native", "python"])
def route(request, monkeypatch):
    """Run the test through the compiled glue, then through the Python bridge alone."""
    if request.param == "native":
        if functional._native is None:
            pytest.skip(f"the compiled glue is not in use: {_fast.WHY_NOT}")
    else:
        monkeypatch.setattr(functional, "_native", None)
    return request.param


SHAPES = [(1, 7), (2, 3), (33, 70), (8, 16, 96), (300, 257), (3, 70000)]


def _tensors(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    cols = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 2 + 0.5
    r = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    gy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(cols, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(cols, generator=g, dtype=torch.float64).to(dtype)
    return x, r, gy, w, b


def _numpy_reference(x, r, gy, w, b, centered):
    """fastln's NumPy API on the same data: y, h, grad_h, grad_w, grad_b."""
    xn, gyn = x.numpy(), gy.numpy()
    wn = None if w is None else w.numpy()
    bn = None if b is None else b.numpy()
    h = xn if r is None else xn + r.numpy()
    if centered:
        y, mean, rstd = fastln.layer_norm_forward(h, None, wn, bn)
        gh, gw, gb = fastln.layer_norm_backward(gyn, h, mean, rstd, wn)
    else:
        y, rstd = fastln.rms_norm_forward(h, None, wn, 1e-5)
        gh, gw = fastln.rms_norm_backward(gyn, h, rstd, wn)
        gb = None
    return y, h, gh, gw, gb


def _call(x, r, w, b, centered):
    n = x.shape[-1:]
    if r is None:
        y = ft.layer_norm(x, n, w, b) if centered else ft.rms_norm(x, n, w, 1e-5)
        return y, None
    return ft.add_layer_norm(x, r, n, w, b) if centered else ft.add_rms_norm(x, r, n, w, 1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_every_path_gives_the_numpy_apis_bits(shape, dtype, centered, residual, affine, route):
    x, r, gy, w, b = _tensors(shape, dtype)
    r = r if residual else None
    w = w if affine != "none" else None
    b = b if affine == "wb" and centered else None
    y_ref, h_ref, gh_ref, gw_ref, gb_ref = _numpy_reference(x, r, gy, w, b, centered)

    with torch.no_grad():  # no-grad path
        y, h = _call(x, r, w, b, centered)
    np.testing.assert_array_equal(y.numpy(), y_ref)
    if residual:
        np.testing.assert_array_equal(h.numpy(), h_ref)

    # eager autograd path, every input needing a gradient
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    y, h = _call(*leaves, centered)
    np.testing.assert_array_equal(y.detach().numpy(), y_ref)
    grads = torch.autograd.grad(y, [t for t in leaves if t is not None], gy)
    got = dict(zip([k for k, t in zip("xrwb", leaves, strict=True) if t is not None], grads, strict=True))
    np.testing.assert_array_equal(got["x"].numpy(), gh_ref)
    if residual:
        np.testing.assert_array_equal(got["r"].numpy(), gh_ref)
    if w is not None:
        np.testing.assert_array_equal(got["w"].numpy(), gw_ref)
    if b is not None:
        np.testing.assert_array_equal(got["b"].numpy(), gb_ref)

    # the torch.func Function and the custom op: the same bits again
    eps = 1e-5
    y2, _, _, _ = _NormFunction.apply(x, r, x.shape[-1:], w, b, eps, centered)
    y3 = torch.ops.fastln.forward(x, r, list(x.shape[-1:]), w, b, eps, centered)[0]
    np.testing.assert_array_equal(y2.numpy(), y_ref)
    np.testing.assert_array_equal(y3.numpy(), y_ref)


def test_the_address_kernels_are_the_path_taken_for_plain_float32(monkeypatch):
    """So that the test above compares two different routes, not one route twice."""
    monkeypatch.setattr(functional, "_native", None)
    hits = []
    real = _glue._forward_direct

    def spy(*args, **kwargs):
        hits.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_glue, "_forward_direct", spy)
    x = torch.randn(4, 8)
    ft.layer_norm(x, (8,))
    assert hits == [1]
    ft.layer_norm(x.t().contiguous().t(), (8,))  # transposed view: the NumPy-view route
    ft.layer_norm(x.to(torch.bfloat16), (8,))
    assert hits == [1]


@pytest.mark.parametrize("grad", [False, True])
def test_fast_paths_raise_what_the_checks_raise(grad, route):
    x = torch.randn(4, 8, requires_grad=grad)
    with pytest.raises(RuntimeError, match=r"Given normalized_shape=\[7\]"):
        ft.layer_norm(x, (7,))
    with pytest.raises(RuntimeError, match="weight"):
        ft.layer_norm(x, (8,), torch.ones(7))
    with pytest.raises(RuntimeError, match="mixed dtype"):
        ft.layer_norm(x, (8,), torch.ones(8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="residual"):
        ft.add_rms_norm(x, torch.ones(4, 7), (8,))
    with pytest.raises(TypeError, match="eps"):
        ft.layer_norm(x, (8,), eps="small")


def test_no_grad_path_does_not_build_a_graph_and_grad_path_does(route):
    x = torch.randn(3, 5, requires_grad=True)
    with torch.no_grad():
        assert ft.layer_norm(x, (5,)).grad_fn is None
    y = ft.layer_norm(x, (5,))
    assert y.grad_fn is not None and y.requires_grad
    y2, h = ft.add_layer_norm(x, torch.randn(3, 5), (5,))
    assert y2.grad_fn is not None and h.grad_fn is not None


def test_gradients_flow_through_residual_out_too(route):
    """h = x + r is an output of its own: gradients reaching it add into x's and r's."""
    x, r, gy, w, _ = _tensors((6, 10), torch.float64)
    x.requires_grad_()
    r.requires_grad_()
    y, h = ft.add_rms_norm(x, r, (10,), w, 1e-6)
    gh = torch.randn(6, 10, dtype=torch.float64)
    gx, gr = torch.autograd.grad((y, h), (x, r), (gy, gh))
    xe, re = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_()
    he = xe + re
    ye = torch.nn.functional.rms_norm(he, (10,), w, 1e-6)
    ex, er = torch.autograd.grad((ye, he), (xe, re), (gy, gh))
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gr, er)


def test_expanded_gradients_are_read_correctly(route):
    """``y.sum().backward()`` hands backward an expanded (stride-0) gradient."""
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, dtype=torch.float64, requires_grad=True)
    ft.layer_norm(x, (9,), w).sum().backward()
    xe, we = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    torch.nn.functional.layer_norm(xe, (9,), we).sum().backward()
    torch.testing.assert_close(x.grad, xe.grad)
    torch.testing.assert_close(w.grad, we.grad)


@pytest.mark.parametrize("shape", [(1, 9), (37, 50), (300, 257), (5000, 64), (40, 1300)], ids=str)
@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("wdtype", ["half", torch.float32, None], ids=str)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_half_backward_in_kernel_is_the_upcast_result_rounded_once(shape, centered, residual, wdtype, half):
    """bf16/f16 backward reads the half rows in place (each element widened as it is loaded):
    bitwise what the float32 kernels give on the upcast tensors, with grad_x rounded once
    (no float32 copies made).  1300 columns: rows of several ragged sum blocks."""
    if half not in _glue._HALF_IN_KERNEL:
        pytest.skip("this CPU has no float16 conversion instructions: float16 is upcast")
    rows, cols = shape
    g = torch.Generator().manual_seed(rows)
    x = (torch.randn(shape, generator=g) * 3 + 1).to(half)
    gy = torch.randn(shape, generator=g).to(half)
    gres = torch.randn(shape, generator=g).to(half) if residual else None
    w = None if wdtype is None else torch.randn(cols, generator=g).to(half if wdtype == "half" else wdtype)
    _, _, mean, rstd = _glue.forward_impl(x, None, (cols,), rows, cols, w, None, 1e-5, centered)
    got = _glue.backward_impl(gy, gres, x, mean, rstd, w, (cols,), rows, cols, centered, True)
    want = _glue.backward_impl(gy.float(), None if gres is None else gres.float(), x.float(), mean, rstd,
                               None if w is None else w.float(), (cols,), rows, cols, centered, True)
    assert got[0].dtype == half and got[1].dtype == torch.float32
    assert torch.equal(got[0], want[0].to(half))
    assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_half_backward_reads_every_kind_of_half_value_as_the_upcast_does(half):
    """Every half bit pattern class, read in place by the backward's sums and sweep: zeros of
    both signs, subnormals, the largest finite values, infinities and NaN, in x and in dy, on
    rows whose other elements are ordinary.  grad_x (NaN where the upcast gives NaN), grad_w
    and grad_b are bitwise what the float32 kernels give on the upcast tensors."""
    if half not in _glue._HALF_IN_KERNEL:
        pytest.skip("this CPU has no float16 conversion instructions: float16 is upcast")
    info = torch.finfo(half)
    specials = torch.tensor([0.0, -0.0, info.tiny / 4, -info.tiny / 2, info.tiny, info.max, -info.max,
                             float("inf"), -float("inf"), float("nan")]).to(half)
    rows, cols = 2 * len(specials) + 2, 700  # two sum blocks a row
    g = torch.Generator().manual_seed(11)
    x = torch.randn(rows, cols, generator=g).to(half)
    gy = torch.randn(rows, cols, generator=g).to(half)
    for k, v in enumerate(specials):  # row k: the special value in x; row len + k: in dy
        x[k, 3 + 37 * k] = v
        gy[len(specials) + k, 5 + 41 * k] = v
    w = torch.randn(cols, generator=g).to(half)
    _, _, mean, rstd = _glue.forward_impl(x, None, (cols,), rows, cols, w, None, 1e-5, True)
    got = _glue.backward_impl(gy, None, x, mean, rstd, w, (cols,), rows, cols, True, True)
    want = _glue.backward_impl(gy.float(), None, x.float(), mean, rstd, w.float(), (cols,), rows, cols, True, True)
    assert torch.equal(got[0].isnan(), want[0].to(half).isnan())
    assert torch.equal(torch.nan_to_num(got[0]), torch.nan_to_num(want[0].to(half)))
    for a, b in zip(got[1:], want[1:], strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))
    assert not got[0][-2:].isnan().any()  # the ordinary rows stay ordinary


def _half_case(shape, residual, wdtype, half, native):
    """``(x, residual or its gradient, weight, generator)`` for the half-on-torch's-pool tests;
    skips where the half kernels or the compiled glue are not in use."""
    if half not in _glue._HALF_IN_KERNEL:
        pytest.skip("this CPU has no float16 conversion instructions: float16 is upcast")
    if native is None:
        pytest.skip(f"the compiled glue is not in use: {_fast.WHY_NOT}")
    g = torch.Generator().manual_seed(shape[0] * shape[1])
    x = (torch.randn(shape, generator=g) * 3 + 1).to(half)
    r = torch.randn(shape, generator=g).to(half) if residual else None
    w = None if wdtype is None else torch.randn(shape[1], generator=g).to(half if wdtype == "half" else wdtype)
    return x, r, w, g


def _same_bits_on_torchs_pool_and_numbas(monkeypatch, native, run):
    """``run()``'s tensors with the glue's ``_fast.<native>`` on torch's pool (2 threads, then
    1), asserted bitwise equal to each other and to the Numba path's (the glue turned off)."""
    threads = torch.get_num_threads()
    try:
        on_pool = run()
        torch.set_num_threads(1)
        one_thread = run()
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(_fast, native, None)
    numba_path = run()
    for a, b, c in zip(on_pool, one_thread, numba_path, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    return on_pool


@pytest.mark.parametrize("shape", [(1, 9), (37, 50), (300, 257), (5000, 64)], ids=str)
@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("wdtype", ["half", torch.float32, None], ids=str)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_half_forward_on_torchs_pool_gives_the_numba_paths_bits(monkeypatch, shape, centered, residual, wdtype, half):
    """With the compiled glue, the bridge's half forward runs the serial half kernel over rows
    split on torch's pool (``_native.forward_half``) instead of Numba's parallel kernel:
    bitwise the same outputs and statistics, for any thread count, and the upcast
    computation rounded once."""
    x, r, w, g = _half_case(shape, residual, wdtype, half, _fast.forward_half)
    rows, cols = shape
    b = None if wdtype is None or not centered else torch.randn(cols, generator=g).to(w.dtype)

    def run():
        return _glue.forward_impl(x, r, (cols,), rows, cols, w, b, 1e-5, centered)

    on_pool = _same_bits_on_torchs_pool_and_numbas(monkeypatch, "forward_half", run)
    h = x if r is None else x + r
    w32, b32 = (None if t is None else t.float() for t in (w, b))
    want = _glue.forward_impl(h.float(), None, (cols,), rows, cols, w32, b32, 1e-5, centered)
    assert torch.equal(on_pool[0], want[0].to(half))
    assert torch.equal(on_pool[3], want[3])


@pytest.mark.parametrize("shape", [(1, 9), (37, 50), (300, 257), (5000, 64)], ids=str)
@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("wdtype", ["half", torch.float32, None], ids=str)
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
def test_half_backward_on_torchs_pool_gives_the_numba_paths_bits(monkeypatch, shape, centered, residual, wdtype, half):
    """The bridge's half backward with the compiled glue (``_native.backward_half``: the
    fixed chunks on torch's pool, then the float32 reduction) gives bitwise the Numba
    kernel's grad_x, grad_weight and grad_bias, for any thread count."""
    x, gres, w, g = _half_case(shape, residual, wdtype, half, _fast.backward_half)
    rows, cols = shape
    gy = torch.randn(shape, generator=g).to(half)
    _, _, mean, rstd = _glue.forward_impl(x, None, (cols,), rows, cols, w, None, 1e-5, centered)

    def run(need_params=True):
        return _glue.backward_impl(gy, gres, x, mean, rstd, w, (cols,), rows, cols, centered, need_params)

    no_params = run(False)
    on_pool = _same_bits_on_torchs_pool_and_numbas(monkeypatch, "backward_half", run)
    assert torch.equal(no_params[0], on_pool[0])
