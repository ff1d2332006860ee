"""A hypothesis campaign over the torch bridge: layouts (permuted, channels-last, expanded,
sliced), weight/bias presence, requires_grad combinations, dtypes and both norms, against
torch's own F.layer_norm / F.rms_norm.  `HYPOTHESIS_PROFILE=campaign` runs 20,000 examples."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastln.torch as ft  # noqa: E402

LAYOUTS = ["contiguous", "permuted", "channels_last", "expanded", "sliced", "transposed"]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def _make(layout, shape, dtype, g):
    b, c, h, w = shape
    if layout == "permuted":
        return torch.randn(b, w, c, h, generator=g).permute(0, 2, 3, 1).to(dtype)
    if layout == "channels_last":
        t = torch.randn(b, w, c, h, generator=g).to(memory_format=torch.channels_last)
        return t.permute(0, 2, 3, 1).to(dtype)
    if layout == "expanded":
        return torch.randn(1, c, h, w, generator=g).to(dtype).expand(b, c, h, w)
    if layout == "sliced":
        return torch.randn(b, c, h, 2 * w, generator=g).to(dtype)[..., ::2]
    if layout == "transposed":
        return torch.randn(b, c, w, h, generator=g).to(dtype).transpose(-1, -2)
    return torch.randn(b, c, h, w, generator=g).to(dtype)


@st.composite
def cases(draw):
    shape = tuple(draw(st.integers(1, 4)) for _ in range(3)) + (draw(st.integers(1, 40)),)
    return dict(
        layout=draw(st.sampled_from(LAYOUTS)),
        shape=shape,
        k=draw(st.integers(1, 2)),
        dtype=draw(st.sampled_from(list(TOL))),
        centered=draw(st.booleans()),
        weight=draw(st.booleans()),
        bias=draw(st.booleans()),
        grads=draw(st.tuples(st.booleans(), st.booleans(), st.booleans())),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


@given(cases())
def test_bridge_agrees_with_torch(case):
    g = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    x = _make(case["layout"], case["shape"], dtype, g)
    norm = tuple(x.shape[-case["k"]:])
    w = torch.randn(norm, generator=g).to(dtype) if case["weight"] else None
    b = torch.randn(norm, generator=g).to(dtype) if case["bias"] and case["centered"] else None
    leaves = []
    for t, want in zip((x, w, b), case["grads"], strict=True):
        if t is not None and want:
            t.requires_grad_()
            leaves.append(t)
    if case["centered"]:
        got, ref = ft.layer_norm(x, norm, w, b), F.layer_norm(x, norm, w, b)
    else:
        got, ref = ft.rms_norm(x, norm, w, 1e-6), F.rms_norm(x, norm, w, 1e-6)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    tol = TOL[dtype]
    scale = 1.0 + (0 if w is None else w.detach().abs().max().item()) + (0 if b is None else b.detach().abs().max().item())
    torch.testing.assert_close(got.float(), ref.float(), atol=tol * scale * 4, rtol=tol)
    if leaves:
        gy = torch.randn(x.shape, generator=g).to(dtype)
        g1 = torch.autograd.grad(got, leaves, gy)
        g2 = torch.autograd.grad(ref, leaves, gy)
        for u, v, leaf in zip(g1, g2, leaves, strict=True):
            assert u.dtype == leaf.dtype and u.shape == leaf.shape
            big = v.float().abs().max().item() + 1
            torch.testing.assert_close(u.float(), v.float(), atol=tol * 40 * big * scale, rtol=tol * 10)
