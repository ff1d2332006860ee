"""Issue 9: fastln.torch goes where torch goes: compile (inductor), torch.func, TorchScript,
export, meta tensors, torch's dtype and error rules, model swaps with hooks, DDP."""

import copy
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fastln.torch as ft  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


# --- 1. bias without weight --------------------------------------------------------------
@pytest.mark.parametrize("path", ["eager", "function", "op"])
def test_bias_without_weight_gets_its_gradient(path):
    x = torch.randn(4, 5, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    gy = torch.randn(4, 5)
    if path == "eager":
        y = ft.layer_norm(x, (5,), None, bias)
    elif path == "function":
        y = ft.LayerNormFunction.apply(x, (5,), None, bias, 1e-5)
    else:
        y = torch.ops.fastln.forward(x, None, [5], None, bias, 1e-5, True)[0]
    y.backward(gy)
    assert bias.grad is not None
    _close(bias.grad, gy.sum(0))
    x2 = x.detach().clone().requires_grad_()
    F.layer_norm(x2, (5,), None, bias.detach()).backward(gy)
    _close(x.grad, x2.grad)


@pytest.mark.slow
def test_bias_without_weight_under_compile():
    torch._dynamo.reset()
    bias = torch.randn(5, requires_grad=True)
    fn = torch.compile(lambda x: ft.layer_norm(x, (5,), None, bias), backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 5, requires_grad=True)
    fn(x).sum().backward()
    _close(bias.grad, torch.full((5,), 4.0))


# --- 2. inductor on permuted inputs --------------------------------------------------------
class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = norm(dim)
        self.pw = nn.Linear(dim, dim)

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        return x + self.pw(self.norm(y)).permute(0, 3, 1, 2)


@pytest.mark.slow
def test_inductor_on_a_convnext_block():
    torch._dynamo.reset()
    torch.manual_seed(0)
    ref = _ConvNeXtBlock(8, nn.LayerNorm)
    fast = _ConvNeXtBlock(8, ft.LayerNorm)
    fast.load_state_dict(ref.state_dict())
    compiled = torch.compile(fast, fullgraph=True)  # the default backend: inductor
    x = torch.randn(2, 8, 6, 6)
    out = compiled(x)
    _close(out, ref(x), 1e-4)
    out.sum().backward()
    ref(x).sum().backward()
    _close(fast.norm.weight.grad, ref.norm.weight.grad, 1e-4)


# --- 4. torch.func ---------------------------------------------------------------------------
def _args(dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    return (torch.randn(3, 4, 5, dtype=dtype, generator=g), torch.randn(5, dtype=dtype, generator=g),
            torch.randn(5, dtype=dtype, generator=g))


@pytest.mark.parametrize("centered", [True, False])
def test_vmap_grad_jacrev_jacfwd_jvp(centered):
    from torch.func import grad, jacfwd, jacrev, jvp, vmap

    if centered:
        def fast(x, w, b):
            return ft.layer_norm(x, (5,), w, b)

        def ref(x, w, b):
            return F.layer_norm(x, (5,), w, b)
    else:
        def fast(x, w, b):
            return ft.rms_norm(x, (5,), w, 1e-6) + b

        def ref(x, w, b):
            return F.rms_norm(x, (5,), w, 1e-6) + b

    x, w, b = _args()
    _close(vmap(fast)(x, w.expand(3, 5), b.expand(3, 5)), vmap(ref)(x, w.expand(3, 5), b.expand(3, 5)))
    _close(vmap(fast, in_dims=(1, None, None))(x, w, b), vmap(ref, in_dims=(1, None, None))(x, w, b))
    ws = torch.randn(3, 5, dtype=torch.float64)
    _close(vmap(fast, in_dims=(None, 0, None))(x[0], ws, b), vmap(ref, in_dims=(None, 0, None))(x[0], ws, b))
    for argnums in (0, 1, 2):
        _close(grad(lambda *a: fast(*a).square().sum(), argnums)(x, w, b),
               grad(lambda *a: ref(*a).square().sum(), argnums)(x, w, b))
    _close(jacrev(fast)(x[0], w, b), jacrev(ref)(x[0], w, b))
    _close(jacfwd(fast, argnums=(0, 1, 2))(x[0], w, b), jacfwd(ref, argnums=(0, 1, 2))(x[0], w, b))
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    _close(jvp(fast, (x, w, b), tangents)[1], jvp(ref, (x, w, b), tangents)[1])


def test_functional_call_through_the_module():
    from torch.func import functional_call, grad

    fast, ref = ft.LayerNorm(5, dtype=torch.float64), nn.LayerNorm(5, dtype=torch.float64)
    x, w, b = _args()
    params = {"weight": w, "bias": b}
    _close(functional_call(fast, params, (x,)), functional_call(ref, params, (x,)))
    gf = grad(lambda p: functional_call(fast, p, (x,)).square().sum())(params)
    gr = grad(lambda p: functional_call(ref, p, (x,)).square().sum())(params)
    for k in params:
        _close(gf[k], gr[k])


# --- 5. TorchScript, trace + save + load, export ------------------------------------------
def _model(norm_ln, norm_rms):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), norm_ln(16), nn.GELU(), nn.Linear(16, 8), norm_rms(8))


def test_torchscript_script_of_a_model():
    fast = _model(ft.LayerNorm, ft.RMSNorm)
    ref = _model(nn.LayerNorm, nn.RMSNorm)
    scripted = torch.jit.script(fast)
    x = torch.randn(4, 8)
    _close(scripted(x), ref(x))
    x.requires_grad_()
    scripted(x).sum().backward()
    assert x.grad is not None


def test_trace_save_and_load_in_a_fresh_process(tmp_path):
    fast = _model(ft.LayerNorm, ft.RMSNorm)
    x = torch.randn(4, 8)
    traced = torch.jit.trace(fast, (x,))
    path = tmp_path / "model.pt"
    torch.jit.save(traced, str(path))
    torch.save(x, tmp_path / "x.pt")
    torch.save(fast(x).detach(), tmp_path / "y.pt")
    code = textwrap.dedent(f"""
        import torch, fastln.torch
        m = torch.jit.load({str(path)!r})
        x = torch.load({str(tmp_path / 'x.pt')!r})
        want = torch.load({str(tmp_path / 'y.pt')!r})
        torch.testing.assert_close(m(x), want)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.slow
def test_torch_export():
    fast = _model(ft.LayerNorm, ft.RMSNorm)
    x = torch.randn(4, 8)
    ep = torch.export.export(fast, (x,))
    _close(ep.module()(x), fast(x))


# --- 6. devices and dtypes ---------------------------------------------------------------------
def test_meta_tensors_give_meta_outputs():
    x = torch.randn(2, 3, 4, device="meta", requires_grad=True)
    y = ft.layer_norm(x, (4,), torch.ones(4, device="meta"), torch.zeros(4, device="meta"))
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.device.type == "meta" and x.grad.shape == x.shape
    assert ft.rms_norm(x, 4).shape == x.shape
    with torch.device("meta"):
        m = ft.LayerNorm(16)
        r = ft.RMSNorm(16)
    assert m.weight.device.type == "meta"
    assert m(torch.empty(2, 16, device="meta")).device.type == "meta"
    assert r(torch.empty(2, 16, device="meta")).device.type == "meta"


_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("xd", _DTYPES)
@pytest.mark.parametrize("pd", _DTYPES)
@pytest.mark.parametrize("centered", [True, False])
def test_mixed_dtypes_follow_torch(xd, pd, centered):
    x = torch.randn(3, 8).to(xd)
    w = torch.randn(8).to(pd)
    b = torch.randn(8).to(pd)
    if centered:
        def fast():
            return ft.layer_norm(x, (8,), w, b)

        def ref():
            return F.layer_norm(x, (8,), w, b)
    else:
        def fast():
            return ft.rms_norm(x, (8,), w)

        def ref():
            return F.rms_norm(x, (8,), w)
    try:
        want = ref()
    except Exception as exc:
        with pytest.raises(type(exc)):
            fast()
        return
    got = fast()
    assert got.dtype == want.dtype
    tol = 1e-2 if torch.finfo(xd).bits == 16 or torch.finfo(pd).bits == 16 else 1e-5
    _close(got.float(), want.float(), tol * 4)


# --- 7. errors name the argument, with torch's types and wording -------------------------------
@pytest.mark.parametrize("kwargs", [dict(eps="1e-5"), dict(eps=None), dict(eps=[1e-5]), dict(eps=1j),
                                    dict(normalized_shape=None), dict(normalized_shape=4.0),
                                    dict(normalized_shape=True), dict(normalized_shape=(True,)),
                                    dict(normalized_shape="4")])
def test_bad_arguments_raise_what_torch_raises(kwargs):
    x = torch.randn(3, 4)
    args = dict(normalized_shape=(4,), eps=1e-5)
    args.update(kwargs)
    with pytest.raises(TypeError) as want:
        F.layer_norm(x, args["normalized_shape"], None, None, args["eps"])
    name = "eps" if "eps" in kwargs else "normalized_shape"
    with pytest.raises(type(want.value), match=f"argument '{name}'"):
        ft.layer_norm(x, args["normalized_shape"], None, None, args["eps"])


@pytest.mark.parametrize("eps", [1, True, torch.tensor(1e-3), 0.0])
def test_eps_values_torch_accepts_are_accepted(eps):
    x = torch.randn(3, 4)
    _close(ft.layer_norm(x, (4,), eps=eps), F.layer_norm(x, (4,), eps=eps))


def test_well_known_torch_messages_are_kept():
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match=r"Expected normalized_shape to be at least 1-dimensional"):
        ft.layer_norm(x, [])
    with pytest.raises(RuntimeError, match=r"Given normalized_shape=\[5\], expected input with shape \[\*, 5\], but got input of size\[3, 4\]"):
        ft.layer_norm(x, [5])
    with pytest.raises(RuntimeError, match=r"Expected weight to be of same shape as normalized_shape"):
        ft.rms_norm(x, [4], torch.ones(3))


# --- 8. replace_layer_norms / replace_norms ------------------------------------------------------
def test_replace_keeps_hooks_identity_and_counts():
    calls = []
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.RMSNorm(4))
    ln = model[1]
    ln.register_forward_hook(lambda m, i, o: calls.append("hook"))
    ln.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    out, n = ft.replace_norms(model, return_count=True)
    assert out is model and n == 2 and model[1] is ln
    assert type(model[1]) is ft.LayerNorm and type(model[2]) is ft.RMSNorm
    model(torch.randn(2, 4))
    assert calls == ["pre", "hook"]
    assert ft.replace_norms(model, return_count=True)[1] == 0  # idempotent


def test_replace_handles_subclasses_that_keep_forward_only():
    class Plain(nn.LayerNorm):
        pass

    class Custom(nn.LayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Plain(4), Custom(4))
    _, n = ft.replace_layer_norms(model, return_count=True)
    assert n == 1
    assert isinstance(model[0], Plain) and isinstance(model[0], ft.LayerNorm)
    assert type(model[1]) is Custom
    x = torch.randn(3, 4)
    _close(model[0](x), F.layer_norm(x, (4,), model[0].weight, model[0].bias))


def test_transformer_layer_fast_path_computes_its_own_norms(monkeypatch):
    """What the README says of ``replace_norms``: torch's TransformerEncoderLayer, in eval
    mode without gradients (batch_first, even heads...), runs its fused fast path, which reads
    the norms' weight, bias and eps and computes LayerNorm itself: swapped norms are not called
    there.  In training, and with the fast path turned off, they are.  If torch changes this,
    the README is stale."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    plain = copy.deepcopy(layer).eval()
    ft.replace_layer_norms(layer)
    calls = []
    forward = ft.LayerNorm.forward
    monkeypatch.setattr(ft.LayerNorm, "forward", lambda self, x: calls.append(1) or forward(self, x))
    x = torch.randn(2, 5, 32)
    layer.train()
    layer(x)
    assert len(calls) == 2
    layer.eval()
    with torch.no_grad():
        calls.clear()
        assert torch.equal(layer(x), plain(x)) and calls == []  # torch's fused op, both
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            y = layer(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(True)
    assert len(calls) == 2
    _close(y, plain(x))


class LlamaRMSNorm(nn.Module):
    """transformers' LlamaRMSNorm, verbatim in behaviour (no download needed)."""

    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class GemmaRMSNorm(nn.Module):
    """transformers' GemmaRMSNorm, verbatim in behaviour."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def _norm(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x):
        output = self._norm(x.float())
        output = output * (1.0 + self.weight.float())
        return output.type_as(x)


@pytest.mark.parametrize("cls", [LlamaRMSNorm, GemmaRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hugging_face_rmsnorm_casting_orders(cls, dtype):
    torch.manual_seed(0)
    ref = cls(16).to(dtype)
    with torch.no_grad():
        ref.weight.normal_()
    fast = cls(16).to(dtype)
    fast.load_state_dict(ref.state_dict())
    assert ft.replace_norms(fast, return_count=True)[1] == 1
    x = torch.randn(4, 16).to(dtype)
    got, want = fast(x), ref(x)
    assert got.dtype == want.dtype
    if dtype == torch.float32:
        _close(got, want, 2e-6)
    else:  # one bf16 rounding apart at most
        assert ((got.float() - want.float()).abs() <= 2 ** -7 * want.float().abs() + 1e-6).all()


# --- add-norms through autograd --------------------------------------------------------------------
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_add_norm_values_and_all_gradients(centered, dtype):
    g = torch.Generator().manual_seed(7)
    x, r = (torch.randn(6, 10, dtype=dtype, generator=g).requires_grad_() for _ in range(2))
    w = torch.randn(10, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(10, dtype=dtype, generator=g).requires_grad_() if centered else None
    if centered:
        y, h = ft.add_layer_norm(x, r, 10, w, b)
        h2 = x + r
        y2 = F.layer_norm(h2, (10,), w, b)
    else:
        y, h = ft.add_rms_norm(x, r, 10, w, 1e-6)
        h2 = x + r
        y2 = F.rms_norm(h2, (10,), w, 1e-6)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    _close(y, y2, tol)
    _close(h, h2, tol)
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    params = [t for t in (x, r, w, b) if t is not None]
    ga = torch.autograd.grad((y, h), params, (gy, gh))
    gb_ = torch.autograd.grad((y2, h2), params, (gy, gh))
    for u, v in zip(ga, gb_, strict=True):
        _close(u, v, tol * 10)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(
            lambda *a: (ft.add_layer_norm(a[0], a[1], 10, a[2], a[3]) if centered
                        else ft.add_rms_norm(a[0], a[1], 10, a[2], 1e-6)),
            tuple(params),
        )


# --- 9. DistributedDataParallel -----------------------------------------------------------------------
_DDP = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch import nn
    import fastln.torch as ft

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), ft.LayerNorm(16), nn.GELU(), nn.Linear(16, 8), ft.RMSNorm(8))

    def data():
        g = torch.Generator().manual_seed(1)
        return torch.randn(8, 8, generator=g), torch.randn(8, 8, generator=g)

    def steps(model, xs, ys, world=1):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(xs), ys).backward()
            opt.step()

    def worker(rank, port):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=2)
        model = nn.parallel.DistributedDataParallel(make())
        xs, ys = data()
        steps(model, xs[rank * 4:(rank + 1) * 4], ys[rank * 4:(rank + 1) * 4])
        if rank == 0:
            torch.save(model.module.state_dict(), sys.argv[2])
        dist.barrier()  # neither rank tears gloo down while the other still talks to it
        dist.destroy_process_group()

    if __name__ == "__main__":
        port = int(sys.argv[1])
        torch.multiprocessing.spawn(worker, args=(port,), nprocs=2, join=True)
        single = make()
        xs, ys = data()
        steps(single, xs, ys)
        ddp = torch.load(sys.argv[2])
        for k, v in single.state_dict().items():
            torch.testing.assert_close(ddp[k], v, atol=1e-5, rtol=1e-5)
        print("ok")
""")


def _run_ddp(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(_DDP)
    return subprocess.run([sys.executable, str(script), str(port), str(tmp_path / "sd.pt")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.slow
def test_distributed_data_parallel_matches_single_process(tmp_path):
    out = _run_ddp(tmp_path)
    if out.returncode != 0 and "terminated with signal" in out.stderr:
        # In 3 of 8 clean-clone CI runs a worker aborted ("terminate called without an active
        # exception"); never in 50 runs of the same script outside the suite.  Suspected: one
        # rank tearing gloo down while the other still saved and talked (hence the barrier).
        # A worker killed by a signal gets one more run, with the first failure shown.
        import warnings

        warnings.warn(f"DDP worker died by a signal; run again. First stderr:\n{out.stderr[-2000:]}", stacklevel=1)
        out = _run_ddp(tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


def test_forward_mode_ad_with_dual_tensors():
    import torch.autograd.forward_ad as fwAD

    x, w, b = _args()
    t = torch.randn_like(x)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(ft.layer_norm(fwAD.make_dual(x, t), (5,), w, b)).tangent
        want = fwAD.unpack_dual(F.layer_norm(fwAD.make_dual(x, t), (5,), w, b)).tangent
    _close(got, want)
