"""Real-GPU tests (marker ``gpu``): torch CUDA tensors, streams, half types, grads vs torch.

Skipped unless FASTLN_TEST_REAL_GPU=1 and torch sees a CUDA device; tools/gpu_suite.py runs them.
"""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("FASTLN_TEST_REAL_GPU") != "1" or not torch.cuda.is_available(),
        reason="needs a real CUDA device and FASTLN_TEST_REAL_GPU=1",
    ),
]

import torch.nn.functional as F  # noqa: E402

import fastln  # noqa: E402
import fastln.torch as ft  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("shape", [(2, 3), (512, 768), (64, 4096), (8, 65536), (3, 5, 1000)])
def test_forward_backward_match_torch_cuda(dtype, shape):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    w = torch.randn(shape[-1], device="cuda", generator=g).to(dtype)
    b = torch.randn(shape[-1], device="cuda", generator=g).to(dtype)
    ins = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y = ft.layer_norm(ins[0], shape[-1:], ins[1], ins[2])
    yr = F.layer_norm(ref[0], shape[-1:], ref[1], ref[2])
    tol = TOL[dtype]
    torch.testing.assert_close(y, yr, atol=tol * 4, rtol=tol)
    gy = torch.randn_like(y)
    y.backward(gy)
    yr.backward(gy)
    for a, c in zip(ins, ref, strict=True):
        scale = 1 + float(c.grad.abs().max())
        torch.testing.assert_close(a.grad, c.grad, atol=tol * 10 * scale, rtol=tol * 10)


def test_outputs_come_from_torch_and_inputs_are_not_copied():
    x = torch.randn(256, 1024, device="cuda")
    y, residual_out, mean, rstd = torch.ops.fastln.forward(x, None, [1024], None, None, 1e-5, True)
    assert y.is_cuda and mean.is_cuda and rstd.is_cuda and y.device == x.device
    assert residual_out.numel() == 0  # no residual: an empty placeholder
    torch.testing.assert_close(y, F.layer_norm(x, (1024,)), atol=1e-5, rtol=1e-5)


def test_non_default_stream():
    x = torch.randn(4096, 1024, device="cuda")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x2 = x * 2  # queued on s; fastln must run after it on the same stream
        y = ft.layer_norm(x2, (1024,))
    s.synchronize()
    torch.testing.assert_close(y, F.layer_norm(x * 2, (1024,)), atol=1e-5, rtol=1e-5)


def test_numpy_api_takes_cuda_array_interface_objects():
    x = torch.randn(33, 70, device="cuda")
    y, mean, rstd = fastln.layer_norm_forward(x)
    from numba import cuda

    host = cuda.as_cuda_array(y).copy_to_host() if not hasattr(y, "copy_to_host") else y.copy_to_host()
    np.testing.assert_allclose(host, F.layer_norm(x, (70,)).cpu().numpy(), atol=1e-5)


def test_cuda_graph_capture():
    x = torch.randn(128, 512, device="cuda")
    ft.layer_norm(x, (512,))  # compile before capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = ft.layer_norm(x, (512,))
    x.copy_(torch.randn(128, 512, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(y, F.layer_norm(x, (512,)), atol=1e-5, rtol=1e-5)


def test_mixed_devices_raise():
    with pytest.raises(RuntimeError, match="same device"):
        ft.layer_norm(torch.randn(3, 4, device="cuda"), (4,), torch.ones(4))


@pytest.mark.parametrize("per", [8, 16, 32])
@pytest.mark.parametrize("cols", [1, 33, 768, 1024, 4096, 8192, 9000])
@pytest.mark.parametrize("centered", [True, False])
def test_kernels_match_float64_torch_in_every_layout(monkeypatch, per, cols, centered):
    """Rows in registers at 8, 16 and 32 elements a thread (one warp to 512 threads a row),
    9000 columns on the block-per-row kernels; more rows than row groups; float64 torch as
    the reference, and the parameter gradients the same bits on a second run."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "MAX_PER_THREAD", per)
    monkeypatch.setattr(fcuda.config, "MAX_GROUPS", 64)
    g = torch.Generator(device="cuda").manual_seed(cols)
    x = (torch.randn(300, cols, device="cuda", generator=g) * 3 + 5).requires_grad_()
    w = torch.randn(cols, device="cuda", generator=g).requires_grad_()
    b = torch.randn(cols, device="cuda", generator=g).requires_grad_() if centered else None
    gy = torch.randn(300, cols, device="cuda", generator=g)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    if centered:
        b64 = b.detach().double().requires_grad_()
        y = ft.layer_norm(x, (cols,), w, b)
        ref = F.layer_norm(x64, (cols,), w64, b64)
        params, params64 = (x, w, b), (x64, w64, b64)
    else:
        y = ft.rms_norm(x, (cols,), w, 1e-6)
        ref = F.rms_norm(x64, (cols,), w64, 1e-6)
        params, params64 = (x, w), (x64, w64)
    torch.testing.assert_close(y.double(), ref, atol=2e-5 * (1 + float(w.abs().max())), rtol=0)
    grads = torch.autograd.grad(y, params, gy, retain_graph=True)
    again = torch.autograd.grad(y, params, gy)
    refs = torch.autograd.grad(ref, params64, gy.double())
    for got, second, want in zip(grads, again, refs, strict=True):
        torch.testing.assert_close(got.double(), want, atol=1e-4 * (1 + float(want.abs().max())), rtol=0)
        assert torch.equal(got, second)


@pytest.mark.parametrize("cols", [768, 9000])
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("with_residual", [False, True])
def test_raw_launches_give_the_ordinary_launches_bits(monkeypatch, cols, centered, with_residual):
    """The bridge launches compiled kernels through cuda.core after their first ordinary
    launch (``fastln.cuda.raw_forward``): same results, bit for bit, forward and backward,
    on the register kernels (768) and the block-per-row ones (9000)."""
    from fastln import cuda as fcuda

    g = torch.Generator(device="cuda").manual_seed(cols)
    x = torch.randn(37, cols, device="cuda", generator=g)
    r = torch.randn(37, cols, device="cuda", generator=g) if with_residual else None
    w = torch.randn(cols, device="cuda", generator=g)
    gy = torch.randn(37, cols, device="cuda", generator=g)

    def run():
        xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
        rs = None if r is None else r.clone().requires_grad_()
        if centered:
            out = ft.add_layer_norm(xs, rs, (cols,), ws, ws) if rs is not None else ft.layer_norm(xs, (cols,), ws, ws)
        else:
            out = ft.add_rms_norm(xs, rs, (cols,), ws) if rs is not None else ft.rms_norm(xs, (cols,), ws)
        y = out[0] if isinstance(out, tuple) else out
        ins = (xs, ws) if rs is None else (xs, ws, rs)
        return (y.detach(), *torch.autograd.grad(y, ins, gy))

    monkeypatch.setattr(fcuda.config, "RAW_LAUNCH", False)
    ordinary = run()
    monkeypatch.setattr(fcuda.config, "RAW_LAUNCH", True)
    run()  # an ordinary launch that keeps the compiled code
    before = dict(fcuda.RAW_CALLS)
    raw = run()
    assert fcuda.config.RAW_LAUNCH, "the raw launch turned itself off"
    assert fcuda.RAW_CALLS["forward"] == before["forward"] + 1, "the forward was not launched raw"
    assert fcuda.RAW_CALLS["backward"] == before["backward"] + 1, "the backward was not launched raw"
    for a, b in zip(ordinary, raw, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("row_kernels,single_read", [(True, True), (False, True), (False, False)])
def test_statistics_keep_their_accuracy_far_from_zero(monkeypatch, row_kernels, single_read):
    """float32 chunk sums shifted by the row's first element (``fastln.cuda._kernels`` and
    ``_row_kernels``): rows 1e6 standard deviations from zero, in registers and on the
    block-per-row kernels, against float64 torch."""
    from fastln import cuda as fcuda

    monkeypatch.setattr(fcuda.config, "ROW_KERNELS", row_kernels)
    monkeypatch.setattr(fcuda.config, "BLOCK_SINGLE_READ", single_read)
    g = torch.Generator(device="cuda").manual_seed(3)
    x = 3e5 + 0.3 * torch.randn(16, 20000 if not row_kernels else 3000, device="cuda", generator=g)
    y, _, _, rstd = torch.ops.fastln.forward(x, None, [x.shape[1]], None, None, 1e-5, True)
    x64 = x.double()
    var = x64.var(1, unbiased=False)
    torch.testing.assert_close(rstd.double(), (var + 1e-5).rsqrt(), atol=0, rtol=2e-6)
    torch.testing.assert_close(y.double(), F.layer_norm(x64, x.shape[1:]), atol=4e-6, rtol=0)


@pytest.mark.parametrize("cols", [768, 9000])
def test_numpy_api_backward_on_device(cols):
    """The NumPy API's backward on CUDA arrays (its partials zeroed on the device for the
    block-per-row kernels) against float64 torch."""
    from numba import cuda

    g = torch.Generator(device="cuda").manual_seed(cols)
    x = torch.randn(50, cols, device="cuda", generator=g)
    w = torch.randn(cols, device="cuda", generator=g)
    gy = torch.randn(50, cols, device="cuda", generator=g)
    dev = cuda.as_cuda_array
    _, mean, rstd = fastln.layer_norm_forward(dev(x), cols, dev(w), dev(w))
    gx, gw, gb = fastln.layer_norm_backward(dev(gy), dev(x), mean, rstd, dev(w), cols)
    x64, w64 = x.double().requires_grad_(), w.double().requires_grad_()
    b64 = w.double().requires_grad_()
    want = torch.autograd.grad(F.layer_norm(x64, (cols,), w64, b64), (x64, w64, b64), gy.double())
    for got, ref in zip((gx, gw, gb), want, strict=True):
        host = torch.from_numpy(got.copy_to_host()).double()
        torch.testing.assert_close(host, ref.cpu(), atol=1e-4 * (1 + float(ref.abs().max())), rtol=0)


def test_torch_compile_on_cuda():
    """fullgraph torch.compile of a block with fastln's norm on CUDA tensors: the custom ops
    run inside the compiled graph and agree with eager, forward and backward."""
    layer = torch.nn.Sequential(torch.nn.Linear(256, 256), ft.LayerNorm(256)).cuda()
    x = torch.randn(64, 256, device="cuda")
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    y.sum().backward()
    got = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    ye = layer(x)
    ye.sum().backward()
    torch.testing.assert_close(y, ye, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, (p.grad for p in layer.parameters()), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
