"""The PyTorch bridge: same results as torch, zero copies, autograd, compile, modules."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastln  # noqa: E402
import fastln.torch as ft  # noqa: E402
from fastln import _api  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _params(norm, dtype, affine, bias, requires_grad=True):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(norm, dtype=dtype, generator=g).requires_grad_(requires_grad) if affine else None
    b = torch.randn(norm, dtype=dtype, generator=g).requires_grad_(requires_grad) if affine and bias else None
    return w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [(), (5,), (0, 3), (2, 3), (2, 1, 3)])
@pytest.mark.parametrize("norm", [(7,), (3, 4), (2, 3, 5)])
@pytest.mark.parametrize("affine,bias", [(False, False), (True, True), (True, False)])
def test_values_and_grads_match_torch(dtype, batch, norm, affine, bias):
    x = torch.randn(batch + norm, dtype=dtype, generator=torch.Generator().manual_seed(0))
    w, b = _params(norm, dtype, affine, bias)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    y1 = ft.layer_norm(x1, norm, w, b)
    y2 = F.layer_norm(x2, norm, w, b)
    tol = TOL[dtype]
    torch.testing.assert_close(y1, y2, atol=tol, rtol=tol)
    gy = torch.randn_like(y1)
    grads1 = torch.autograd.grad(y1, [t for t in (x1, w, b) if t is not None], gy, allow_unused=True)
    grads2 = torch.autograd.grad(y2, [t for t in (x2, w, b) if t is not None], gy, allow_unused=True)
    for g1, g2 in zip(grads1, grads2, strict=True):
        torch.testing.assert_close(g1, g2, atol=tol * 10, rtol=tol)


def test_gradcheck_float64():
    x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: ft.layer_norm(a[0], (4, 5), a[1], a[2]), (x, w, b))
    assert torch.autograd.gradcheck(lambda *a: ft.LayerNormFunction.apply(a[0], (4, 5), a[1], a[2], 1e-5), (x, w, b))


def test_layer_norm_function_apply_matches_torch():
    x = torch.randn(6, 10, requires_grad=True)
    w = torch.randn(10, requires_grad=True)
    b = torch.randn(10, requires_grad=True)
    y = ft.LayerNormFunction.apply(x, 10, w, b, 1e-3)
    torch.testing.assert_close(y, F.layer_norm(x, (10,), w, b, 1e-3))
    y.square().sum().backward()
    got = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    F.layer_norm(x, (10,), w, b, 1e-3).square().sum().backward()
    for g, t in zip(got, (x, w, b), strict=True):
        torch.testing.assert_close(g, t.grad, atol=1e-5, rtol=1e-5)


def test_only_needed_grads_are_computed():
    x = torch.randn(4, 8)
    w = torch.randn(8, requires_grad=True)
    y = ft.layer_norm(x, 8, w, None)
    (gw,) = torch.autograd.grad(y.sum() * 0 + (y * y).sum(), [w])
    x2 = x.clone()
    w2 = w.detach().clone().requires_grad_()
    (gw2,) = torch.autograd.grad((F.layer_norm(x2, (8,), w2) ** 2).sum(), [w2])
    torch.testing.assert_close(gw, gw2)
    assert x.grad is None


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_types(dtype, tol):
    x = torch.randn(16, 64).to(dtype).requires_grad_()
    w = torch.randn(64).to(dtype).requires_grad_()
    b = torch.randn(64).to(dtype).requires_grad_()
    y = ft.layer_norm(x, 64, w, b)
    assert y.dtype == dtype
    ref = F.layer_norm(x.float(), (64,), w.float(), b.float())
    torch.testing.assert_close(y.float(), ref, atol=tol * 4, rtol=tol)
    y.float().sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_zero_copy_views(monkeypatch):
    """The kernels read the input tensors' memory and write straight into the output tensors
    (the address kernels are handed the tensors' own data pointers)."""
    calls = []
    real = _api._launch

    def spy(serial, parallel, one_task, rows, size, *args):
        calls.append(args)
        return real(serial, parallel, one_task, rows, size, *args)

    monkeypatch.setattr(_api, "_launch", spy)
    x = torch.randn(32, 64, requires_grad=True)
    y, _, mean, rstd = torch.ops.fastln.forward(x, None, [64], None, None, 1e-5, True)
    (fwd,) = calls
    assert (fwd[2], fwd[6], fwd[8], fwd[9]) == (x.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr())
    w = torch.randn(64)
    gy = torch.randn(32, 64)
    gx, gw, _ = torch.ops.fastln.backward(gy, None, x, mean, rstd, w, [64], True, True)
    bwd = calls[1]
    assert (bwd[2], bwd[3], bwd[4], bwd[5], bwd[6]) == (gy.data_ptr(), x.data_ptr(), mean.data_ptr(),
                                                         rstd.data_ptr(), w.data_ptr())
    assert (bwd[8], bwd[9]) == (gx.data_ptr(), gw.data_ptr())


def test_non_contiguous_input():
    x = torch.randn(20, 30).t()
    torch.testing.assert_close(ft.layer_norm(x, 20), F.layer_norm(x, (20,)))


def test_double_backward_matches_torch_eagerly():
    """create_graph=True runs the backward in differentiable torch ops: second derivatives
    are torch's."""
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda *a: ft.layer_norm(a[0], 6, a[1], a[2]), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *a: ft.rms_norm(a[0], 6, a[1]), (x, w))
    assert torch.autograd.gradgradcheck(lambda *a: ft.LayerNormFunction.apply(a[0], 6, a[1], a[2], 1e-5), (x, w, b))


def test_double_backward_of_the_compiled_op_raises_clearly():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.ops.fastln.forward(x, None, [6], None, None, 1e-5, True)[0]  # the traced path's op
    (gx,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def _layouts():
    base = torch.randn(2, 3, 4, 5)
    return {
        "contiguous": base,
        "transposed": torch.randn(2, 3, 5, 4).transpose(-1, -2),
        "permuted (ConvNeXt)": torch.randn(2, 5, 3, 4).permute(0, 2, 3, 1),
        "channels_last": torch.randn(2, 5, 3, 4).to(memory_format=torch.channels_last).permute(0, 2, 3, 1),
        "sliced": torch.randn(2, 3, 4, 10)[..., ::2],
        "expanded": torch.randn(1, 3, 4, 5).expand(2, 3, 4, 5),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
@pytest.mark.parametrize("params", ["none", "weight", "bias", "both"])
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("residual", [False, True])
def test_opcheck_across_layouts(layout, params, centered, residual):
    x = _layouts()[layout].requires_grad_()
    w = torch.randn(5, requires_grad=True) if params in ("weight", "both") else None
    b = torch.randn(5, requires_grad=True) if params in ("bias", "both") and centered else None
    r = torch.randn(2, 3, 4, 5).requires_grad_() if residual else None
    torch.library.opcheck(torch.ops.fastln.forward.default, (x, r, [5], w, b, 1e-5, centered))
    y, h, mean, rstd = torch.ops.fastln.forward(x, r, [5], w, b, 1e-5, centered)
    assert y.is_contiguous()
    hh = h if residual else x.detach()
    torch.library.opcheck(
        torch.ops.fastln.backward.default,
        (torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5) if residual else None, hh.detach(), mean, rstd,
         None if w is None else w.detach(), [5], centered, True),
    )


@pytest.mark.slow
def test_torch_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(16, 32), ft.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))
    ref = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 4))
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(8, 16)
    out = compiled(x)
    torch.testing.assert_close(out, ref(x), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    ref(x).square().sum().backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def test_module_is_drop_in():
    m = ft.LayerNorm((4, 5), eps=1e-3, elementwise_affine=True, bias=False, dtype=torch.float64)
    ref = nn.LayerNorm((4, 5), eps=1e-3, elementwise_affine=True, bias=False, dtype=torch.float64)
    assert isinstance(m, nn.LayerNorm)
    assert repr(m) == repr(ref)
    assert m.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ref.weight.normal_()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x))
    m.reset_parameters()
    assert torch.all(m.weight == 1)
    plain = ft.LayerNorm(7, elementwise_affine=False)
    assert plain.weight is None and plain.bias is None
    assert list(plain.state_dict()) == []


def test_replace_layer_norms_keeps_parameters():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)
    params_before = {n: p for n, p in model.named_parameters()}
    out = ft.replace_layer_norms(model)
    assert out is model
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(type(m) is ft.LayerNorm for m in norms)
    for n, p in model.named_parameters():
        assert p is params_before[n]
    single = ft.replace_layer_norms(nn.LayerNorm(3))
    assert type(single) is ft.LayerNorm


def test_transformer_training_follows_same_loss_curve():
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True), 2),
            nn.Linear(32, 1),
        )

    x = torch.randn(8, 10, 32, generator=torch.Generator().manual_seed(1))
    target = torch.randn(8, 10, 1, generator=torch.Generator().manual_seed(2))
    curves = []
    for swap in (False, True):
        model = make()
        if swap:
            ft.replace_layer_norms(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        losses = []
        for _ in range(5):
            opt.zero_grad()
            loss = F.mse_loss(model(x), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        curves.append(losses)
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5)
    assert curves[0][-1] < curves[0][0]


# --- the seed article's three examples --------------------------------------------------
def test_seed_example_basic_2x3():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    torch.testing.assert_close(ft.LayerNorm(3)(x), nn.LayerNorm(3)(x))


def test_seed_example_custom_eps():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    torch.testing.assert_close(ft.LayerNorm(3, eps=1e-2)(x), nn.LayerNorm(3, eps=1e-2)(x))


def test_seed_example_after_rnn():
    torch.manual_seed(0)
    rnn = nn.RNN(input_size=10, hidden_size=20, num_layers=2, batch_first=True)
    x = torch.randn(32, 20, 10)
    out, _ = rnn(x)
    torch.testing.assert_close(ft.LayerNorm(20)(out), nn.LayerNorm(20)(out), atol=1e-5, rtol=1e-5)


# --- errors, with torch's conventions ---------------------------------------------------
@pytest.mark.parametrize(
    "call,exc,pattern",
    [
        (lambda x: ft.layer_norm(x, (5,)), RuntimeError, r"Given normalized_shape=\[5\], expected input with shape \[\*, 5\]"),
        (lambda x: ft.layer_norm(x, (4,), torch.ones(5)), RuntimeError, r"weight of shape \[5\]"),
        (lambda x: ft.layer_norm(x, (4,), None, torch.ones(3)), RuntimeError, r"bias of shape \[3\]"),
        (lambda x: ft.layer_norm(x.int(), (4,)), NotImplementedError, r"floating-point tensor .* torch.int32"),
        (lambda x: ft.layer_norm(x, (4,), torch.ones(4, device="meta")), RuntimeError, r"same device"),
        (lambda x: ft.layer_norm(x, (4,), torch.ones(4, dtype=torch.int64)), RuntimeError, r"mixed dtype"),
        (lambda x: ft.layer_norm(x.numpy(), (4,)), TypeError, r"argument 'input' must be Tensor"),
        (lambda x: ft.layer_norm(torch.tensor(1.0), ()), RuntimeError, r"Expected normalized_shape to be at least 1-dimensional"),
        (lambda x: ft.LayerNorm(5)(x), RuntimeError, r"Given normalized_shape"),
    ],
)
def test_errors_follow_torch_conventions(call, exc, pattern):
    x = torch.randn(3, 4)
    with pytest.raises(exc, match=pattern):
        call(x)


def test_numpy_api_still_value_error_for_shapes():
    with pytest.raises(ValueError):
        fastln.layer_norm(np.ones((3, 4)), 5)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 7), (200, 300), (130, 2, 50)])
def test_half_in_kernel_equals_float32_rounded(shape, half):
    """bf16/f16 rows are widened in the kernel: bitwise the float32 result rounded once."""
    x = (torch.randn(shape) * 3 + 1).to(half)
    x.view(-1)[5] = float("nan")
    x.view(-1)[-1] = float("inf")
    w = torch.randn(shape[-1]).to(half)
    b = torch.randn(shape[-1]).to(half)
    got = ft.layer_norm(x, shape[-1:], w, b)
    want = ft.layer_norm(x.float(), shape[-1:], w.float(), b.float()).to(half)
    assert got.dtype == half
    assert torch.equal(got.isnan(), want.isnan())
    assert got.isnan().any(dim=-1).sum() == 2  # the rows holding NaN and Inf
    ok = ~want.isnan()
    assert torch.equal(got.view(torch.int16)[ok], want.view(torch.int16)[ok])


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_half_add_norm_rounds_residual_out_first(half, norm):
    """As torch's ``h = x + r; norm(h)``: residual_out is rounded to the half type and the
    norm reads that rounded value (the kernel widens, adds, narrows, widens again)."""
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 96, generator=g) * 4).to(half)
    r = (torch.randn(64, 96, generator=g) * 4).to(half)
    w = torch.randn(96, generator=g).to(half)
    if norm == "layer":
        y, h = ft.add_layer_norm(x, r, (96,), w)
        want = ft.layer_norm((x + r).float(), (96,), w.float()).to(half)
    else:
        y, h = ft.add_rms_norm(x, r, (96,), w)
        want = ft.rms_norm((x + r).float(), (96,), w.float()).to(half)  # eps: finfo(float32), as torch
    assert h.dtype == y.dtype == half
    assert torch.equal(h, x + r)
    assert torch.equal(y, want)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_outputs_rounded_in_the_sweep_at_the_edges(dtype):
    """The forward sweep rounds each half output as it writes it (fastln.cpu._half.put):
    overflow to infinity, NaN and infinite rows, subnormal results and ties must round as
    torch's own ``.to(dtype)`` of the float32 computation does."""
    g = torch.Generator().manual_seed(7)
    rows, cols = 96, 200  # 96 rows: parallel-sized with the weight of wide magnitudes below
    x = torch.randn(rows, cols, generator=g)
    x[3, 5] = float("nan")
    x[4, 0] = float("inf")
    x[5, 7] = -float("inf")
    x = x.to(dtype)
    big = torch.finfo(dtype).max
    w = torch.randn(cols, generator=g) * torch.logspace(-30, 30, cols) if dtype == torch.bfloat16 else \
        torch.randn(cols, generator=g) * torch.logspace(-9, 5, cols)
    w[0] = big  # x_hat * w overflows to inf in the half type wherever |x_hat| > 1
    w[1] = torch.finfo(dtype).tiny / 8  # a subnormal result (or zero)
    w = w.to(dtype)
    b = (torch.randn(cols, generator=g) * 100).to(dtype)
    for fn, args in ((ft.layer_norm, (w, b)), (ft.layer_norm, (w, None)), (ft.rms_norm, (w,))):
        y = fn(x, (cols,), *args)
        want = fn(x.float(), (cols,), *(a if a is None else a.float() for a in args)).to(dtype)
        assert torch.equal(y.isnan(), want.isnan())
        torch.testing.assert_close(y, want, rtol=0, atol=0, equal_nan=True)
        assert y.isinf().any() and y.isnan().any()  # the edges were met
        if args[-1] is w:  # no bias: the tiny weight gives subnormal (or zero) outputs
            assert ((y != 0) & (y.abs() < torch.finfo(dtype).tiny)).any()
