"""The compiled eager fast path (fastln/torch/_native.cpp): what it takes, what it leaves to
the Python bridge, and that autograd through it behaves as torch's own nodes do.

Bitwise agreement with the Python bridge and the NumPy API on every path is in
tests/test_fast_paths.py (its ``route`` fixture); here are the glue's own duties.
"""

import multiprocessing as mp
import os
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fastln.torch as ft  # noqa: E402
from fastln.torch import _fast, functional  # noqa: E402

native = functional._native
pytestmark = pytest.mark.skipif(native is None, reason=f"the compiled glue is not in use: {_fast.WHY_NOT}")


def _data(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    return (torch.randn(shape, generator=g, dtype=dtype), torch.randn(n, generator=g, dtype=dtype),
            torch.randn(n, generator=g, dtype=dtype))


class _Sub(torch.Tensor):
    pass


def test_it_takes_plain_calls_in_every_accepted_spelling():
    x, w, b = _data((4, 5, 6))
    want = F.layer_norm(x, (6,), w, b)
    for shape in (6, (6,), [6], torch.Size([6])):
        got = native(x, None, shape, w, b, 1e-5, True)
        assert got is not None
        torch.testing.assert_close(got, want)
    y = native(x, None, (5, 6), None, None, 1e-5, True)  # two normalised dims, no affine
    torch.testing.assert_close(y, F.layer_norm(x, (5, 6)))
    y = native(x, None, (6,), w, None, None, False)  # RMSNorm's eps=None: finfo(float32).eps
    torch.testing.assert_close(y, F.rms_norm(x, (6,), w, None))


@pytest.mark.parametrize(
    "why, call",
    [
        ("a Tensor subclass", lambda x, w, b: (x.as_subclass(_Sub), None, (6,), w, b, 1e-5, True)),
        ("a strided view", lambda x, w, b: (x.transpose(0, 1), None, (6,), w, b, 1e-5, True)),
        ("half data, float64 parameters", lambda x, w, b: (x.bfloat16(), None, (6,), w.double(), b.double(), 1e-5, True)),
        ("half data, one float32 and one half parameter",
         lambda x, w, b: (x.bfloat16(), None, (6,), w, b.bfloat16(), 1e-5, True)),
        ("float32 data, half parameters", lambda x, w, b: (x, None, (6,), w.bfloat16(), b.bfloat16(), 1e-5, True)),
        ("mixed dtypes", lambda x, w, b: (x, None, (6,), w.double(), b, 1e-5, True)),
        ("an int eps", lambda x, w, b: (x, None, (6,), w, b, 0, True)),
        ("a tensor eps", lambda x, w, b: (x, None, (6,), w, b, torch.tensor(1e-5), True)),
        ("eps=None for LayerNorm", lambda x, w, b: (x, None, (6,), w, b, None, True)),
        ("NumPy ints in the shape", lambda x, w, b: (x, None, (np.int64(6),), w, b, 1e-5, True)),
        ("a bool in the shape", lambda x, w, b: (x, None, (True,), w, b, 1e-5, True)),
        ("a wrong shape", lambda x, w, b: (x, None, (7,), w, b, 1e-5, True)),
        ("an empty shape", lambda x, w, b: (x, None, (), w, b, 1e-5, True)),
        ("a wrong weight shape", lambda x, w, b: (x, None, (6,), w[:5], b, 1e-5, True)),
        ("a wrong residual shape", lambda x, w, b: (x, x[:1], (6,), w, b, 1e-5, True)),
        ("no rows", lambda x, w, b: (x[:0], None, (6,), w, b, 1e-5, True)),
        ("a meta tensor", lambda x, w, b: (x.to("meta"), None, (6,), None, None, 1e-5, True)),
        ("not a tensor", lambda x, w, b: (x.numpy(), None, (6,), w, b, 1e-5, True)),
        ("a weight that is not a tensor", lambda x, w, b: (x, None, (6,), [1.0] * 6, b, 1e-5, True)),
    ],
)
def test_it_leaves_everything_else_to_the_python_bridge(why, call):
    """None means "not mine": the Python bridge then computes or raises torch's error."""
    x, w, b = _data((4, 5, 6))
    assert native(*call(x, w, b)) is None, why


def test_it_steps_aside_for_torch_function_and_dispatch_modes():
    """Under a TorchFunctionMode or TorchDispatchMode (profilers, flop counters, fake
    tensors) the call goes to the Python bridge."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class Passing(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    x, w, b = _data((4, 6))
    for mode in (Seen(), Passing()):
        with mode:
            assert native(x, None, (6,), w, b, 1e-5, True) is None
            torch.testing.assert_close(ft.layer_norm(x, (6,), w, b), F.layer_norm(x, (6,), w, b))
    assert native(x, None, (6,), w, b, 1e-5, True) is not None


def test_few_very_wide_rows_go_to_the_column_kernels_of_the_python_bridge():
    x = torch.randn(3, 70000)
    assert native(x, None, (70000,), None, None, 1e-5, True) is None
    torch.testing.assert_close(ft.layer_norm(x, (70000,)), F.layer_norm(x, (70000,)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("centered", [True, False], ids=["layer", "rms"])
def test_double_backward_goes_to_the_python_backward(centered):
    """create_graph=True: the compiled node hands the gradient to the Python bridge's
    differentiable backward, so gradients of gradients match torch's."""
    x, w, b = _data((5, 9), torch.float64)
    grads = []
    for f in (ft, F):
        xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = f.layer_norm(xl, (9,), wl, b) if centered else f.rms_norm(xl, (9,), wl, 1e-5)
        gx, gw = torch.autograd.grad((y * y.detach()).sum(), (xl, wl), create_graph=True)
        grads.append(torch.autograd.grad((gx.sin().sum() + gw.square().sum()), (xl, wl)))
    for a, e in zip(*grads, strict=True):
        torch.testing.assert_close(a, e)


def test_only_residual_out_used():
    """y takes no gradient, h does: the node gets zeros for y (materialised) and passes
    h's gradient to x and the residual."""
    x, w, b = _data((4, 8), torch.float64)
    r = torch.randn(4, 8, dtype=torch.float64)
    xl, rl = x.clone().requires_grad_(), r.clone().requires_grad_()
    _, h = ft.add_layer_norm(xl, rl, (8,), w, b)
    gx, gr = torch.autograd.grad(h.sum() * 3, (xl, rl))
    assert torch.equal(gx, torch.full_like(x, 3.0)) and torch.equal(gr, torch.full_like(r, 3.0))


def test_in_place_change_of_a_saved_input_is_caught():
    x, w, b = _data((4, 8))
    xl = x.clone().requires_grad_()
    xi = xl * 1.0
    y = ft.layer_norm(xi, (8,), w, b)
    xi.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_saved_tensor_hooks_see_the_saved_tensors():
    x, w, b = _data((4, 8))
    xl, wl = x.clone().requires_grad_(), w.clone().requires_grad_()
    packed = []

    def pack(t):
        packed.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = ft.layer_norm(xl, (8,), wl, b)
    assert torch.Size([4, 8]) in packed
    y.sum().backward()
    e = xl.detach().clone().requires_grad_()
    F.layer_norm(e, (8,), wl.detach(), b).sum().backward()
    torch.testing.assert_close(xl.grad, e.grad)


def test_inference_mode_and_no_grad():
    x, w, b = _data((4, 8))
    wl = w.clone().requires_grad_()
    with torch.inference_mode():
        y = ft.layer_norm(x, (8,), wl, b)
    assert y.is_inference() and not y.requires_grad
    with torch.no_grad():
        y2 = ft.layer_norm(x, (8,), wl, b)
    assert y2.grad_fn is None
    assert torch.equal(y, y2)


@pytest.mark.parametrize("shape", [(3, 40), (512, 1024)], ids=str)
def test_many_python_threads_at_once(shape):
    """Calls from several threads (serial and parallel kernels; the parallel ones release
    the GIL) give each thread the single-threaded result, forward and backward."""
    x, w, b = _data(shape)
    gy = torch.randn(shape)

    def step(out, k):
        xl, wl = (x + k).requires_grad_(), w.clone().requires_grad_()
        y = ft.layer_norm(xl, shape[-1:], wl, b)
        out[k] = (y.detach(), *torch.autograd.grad(y, (xl, wl), gy))

    alone: dict = {}
    for k in range(4):
        step(alone, k)
    together: dict = {}
    for _ in range(3):
        threads = [threading.Thread(target=step, args=(together, k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(4):
            for a, e in zip(together[k], alone[k], strict=True):
                assert torch.equal(a, e)


def _child(conn):
    torch.set_num_threads(1)  # as DataLoader workers do: torch's GNU OpenMP hangs in a forked child
    x = torch.linspace(-3, 3, 512 * 256).reshape(512, 256).requires_grad_()
    y = ft.layer_norm(x, (256,))
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    conn.send((y.detach().numpy(), gx.numpy()))
    conn.close()


def test_a_forked_child_uses_it_too():
    """DataLoader workers are forked: the glue (and its parallel kernels) work in the child."""
    x = torch.linspace(-3, 3, 512 * 256).reshape(512, 256).requires_grad_()
    y = ft.layer_norm(x, (256,))
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child,))
    p.start()
    got = parent.recv()
    p.join(60)
    assert p.exitcode == 0
    np.testing.assert_array_equal(got[0], y.detach().numpy())
    np.testing.assert_array_equal(got[1], gx.numpy())


def test_the_chunking_port_agrees_with_the_python_one():
    """The C++ glue splits the backward into the chunks fastln._api.chunking gives (what
    makes its parameter gradients the NumPy API's bits)."""
    from fastln import _api
    from fastln.torch import _native

    for rows in (1, 2, 3, 7, 16, 17, 33, 64, 127, 128, 640, 1000, 4096, 32768):
        for cols in (1, 3, 20, 64, 96, 256, 512, 768, 1024, 4096, 60000, 131072):
            assert tuple(_native.chunking(rows, cols)) == _api.chunking(rows, cols), (rows, cols)


def test_chunks_of_more_than_two_hold_min_chunk_rows():
    """Each backward chunk pays a row of partials whatever its rows, so beyond two chunks a
    chunk holds ``_config.MIN_CHUNK_ROWS`` rows (the last may hold fewer), in both ports."""
    from fastln import _api, _config
    from fastln.torch import _native

    assert _api.chunking(64, 16384) == (2, 32) == tuple(_native.chunking(64, 16384))  # was 16 chunks of 4
    assert _api.chunking(256, 16384) == (4, 64) == tuple(_native.chunking(256, 16384))
    for rows in (3, 63, 64, 65, 127, 128, 129, 200, 640, 1000, 4096):
        for cols in (20, 512, 768, 4096, 16384, 65536):
            n, per = _api.chunking(rows, cols)
            if n > 2:
                assert per >= _config.MIN_CHUNK_ROWS, (rows, cols, n, per)
            assert (n - 1) * per < rows <= n * per, (rows, cols, n, per)


def test_parameter_gradients_do_not_depend_on_the_thread_count():
    """The glue's port of fastln._api.chunking splits by shape alone."""
    import numba

    x, w, b = _data((3000, 96))
    gy = torch.randn(3000, 96)
    got = []
    n = numba.get_num_threads()
    try:
        for threads in (1, n):
            numba.set_num_threads(threads)
            wl, bl = w.clone().requires_grad_(), b.clone().requires_grad_()
            got.append(torch.autograd.grad(ft.layer_norm(x, (96,), wl, bl), (wl, bl), gy))
    finally:
        numba.set_num_threads(n)
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])


@pytest.mark.parametrize("shape", [(64, 512), (100, 300), (2, 20000)])
def test_mid_size_backward_halves_keep_the_numpy_api_bits(shape):
    """Work from the parallel threshold up to two full chunks is split in two halves: the
    glue runs them at once on torch's pool, the NumPy API one after the other on Numba's
    side; both sum the two partials in order, so the gradients are the same bits."""
    import fastln
    from fastln import _api, _config

    rows, cols = shape
    work = rows * (cols + _config.ROW_COST)
    assert _config.SERIAL_BELOW <= work < 2 * _config.MIN_CHUNK_ELEMS
    assert _api.chunking(rows, cols) == (2, (rows + 1) // 2) == tuple(_native_chunking(rows, cols))
    assert _api.serial_backward(2, rows, cols)
    x, w, b = _data(shape)
    gy = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    got = torch.autograd.grad(ft.layer_norm(xg, (cols,), wg, bg), (xg, wg, bg), gy)
    _, mean, rstd = fastln.layer_norm_forward(x.numpy(), None, w.numpy(), b.numpy())
    want = fastln.layer_norm_backward(gy.numpy(), x.numpy(), mean, rstd, w.numpy())
    for g, v in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.numpy(), v)
    ref = torch.autograd.grad(F.layer_norm(xg.double(), (cols,), wg.double(), bg.double()), (xg, wg, bg), gy.double())
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r.float(), rtol=1e-5, atol=1e-5 * float(r.abs().max()))


@pytest.mark.parametrize("shape", [(64, 512), (300, 257)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_pool_threshold_moves_work_not_bits(shape, dtype):
    """``_config.POOL_BELOW`` only decides whether the glue's work runs on torch's pool: set
    past any work (everything serial), forward and gradients are the same bits as at the
    default, and the backward's chunks are the same."""
    from fastln.torch import _native

    x, w, b = (t.to(dtype) for t in _data(shape))
    gy = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)

    def run():
        xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
        y = ft.layer_norm(xg, (shape[1],), wg, bg)
        return (y, *torch.autograd.grad(y, (xg, wg, bg), gy))

    default = run()
    chunks = _native.chunking(*shape)
    try:
        _fast.configure(_native, pool_below=1 << 62)
        serial = run()
        assert _native.chunking(*shape) == chunks
    finally:
        _fast.configure(_native)
    for a, b_ in zip(default, serial, strict=True):
        assert torch.equal(a, b_)


def _native_chunking(rows, cols):
    from fastln.torch import _native

    return _native.chunking(rows, cols)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("param_dtype", ["data", "float32"])
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm", "add_layer_norm"])
def test_it_takes_half_precision_with_the_python_bridges_bits(dtype, param_dtype, kind):
    """bfloat16/float16 data with parameters of their dtype or float32 (torch's mixed rule):
    the glue runs the half kernels itself and records its C++ node; outputs and gradients
    are the Python bridge's bits, in the inputs' dtypes, also through the Python backward
    that a create_graph=True call takes."""
    from fastln.torch import _glue

    if dtype not in _glue._HALF_IN_KERNEL:
        pytest.skip("float16 is converted by float32 copies on this CPU: the Python bridge's")
    pdt = dtype if param_dtype == "data" else torch.float32
    x, w, b = (t.to(d) for t, d in zip(_data((3, 40, 96)), (dtype, pdt, pdt), strict=True))
    r = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    g = torch.Generator().manual_seed(7)
    gy, gh = torch.randn(x.shape, generator=g).to(dtype), torch.randn(x.shape, generator=g).to(dtype)
    centered = kind != "rms_norm"
    res = r if kind == "add_layer_norm" else None
    eps = 1e-5 if centered else None
    want_eps = eps if centered else _glue.eps_value(None, "rms_norm", dtype)

    def leaves():
        return [t.clone().requires_grad_() for t in (x, r, w, b)]

    xa, ra, wa, ba = leaves()
    got = native(xa, ra if res is not None else None, (96,), wa, ba if centered else None, eps, centered)
    assert got is not None, "the glue declined the call"
    got = got if isinstance(got, tuple) else (got,)
    xb, rb, wb, bb = leaves()
    want = functional._run(xb, rb if res is not None else None, (96,), wb, bb if centered else None, want_eps,
                           centered, kind)
    want = want if res is not None else want[:1]
    for a, c in zip(got, want, strict=True):
        assert a.dtype == dtype and torch.equal(a, c)
    inputs_a = [t for t, used in ((xa, True), (ra, res is not None), (wa, True), (ba, centered)) if used]
    inputs_b = [t for t, used in ((xb, True), (rb, res is not None), (wb, True), (bb, centered)) if used]
    grads = (gy, gh)[: len(got)]
    ga = torch.autograd.grad(got, inputs_a, grads, retain_graph=True)
    gb = torch.autograd.grad(want, inputs_b, grads, retain_graph=True)
    for a, c, t in zip(ga, gb, inputs_a, strict=True):
        assert a.dtype == t.dtype and torch.equal(a, c)
    # create_graph=True: the Python backward (composite torch ops), parameter gradients in
    # the parameters' dtype
    ga2 = torch.autograd.grad(got, inputs_a, grads, create_graph=True)
    for a, c, t in zip(ga2, gb, inputs_a, strict=True):
        assert a.dtype == t.dtype
        torch.testing.assert_close(a.float(), c.float(), rtol=2e-2, atol=2e-2 * float(c.float().abs().max()))
    # and against torch itself, in float64
    ref_in = [t.detach().double().requires_grad_() for t in inputs_a]
    xr, rest = ref_in[0], ref_in[1:]
    if kind == "add_layer_norm":
        hr = xr + rest[0]
        ref = (F.layer_norm(hr, (96,), rest[1], rest[2]), hr)
    elif kind == "rms_norm":
        ref = (F.rms_norm(xr, (96,), rest[0], want_eps),)
    else:
        ref = (F.layer_norm(xr, (96,), rest[0], rest[1]),)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for a, c in zip(got, ref, strict=True):
        c = c.detach()
        torch.testing.assert_close(a.detach().double(), c, rtol=tol, atol=tol * float(c.abs().max()))


def test_an_extension_built_from_other_sources_is_set_aside(monkeypatch):
    """An editable install whose extension was not rebuilt after a pull may take other
    arguments: the bridge then runs without it and says why, instead of failing to import."""
    from fastln.torch import _native

    def stale(*args):
        raise TypeError("configure(): incompatible function arguments")

    monkeypatch.setattr(_native, "configure", stale)
    try:
        _fast._load()
        assert _fast.norm is None and "reinstall" in _fast.WHY_NOT
        assert _fast.describe() == {"in_use": False, "why_not": _fast.WHY_NOT}
    finally:
        monkeypatch.undo()
        _fast._load()
    assert _fast.norm is not None and _fast.WHY_NOT is None


_HUGE_PAGE_CHECK = """
import sys, torch
import fastln.torch as ft
from fastln.torch import functional
if sys.argv[1] == "python":
    functional._native = None
elif functional._native is None:
    sys.exit("the compiled glue is not in use")


def advised(start, stop):  # MADV_HUGEPAGE on the mapping holding [start, stop): 'hg' in its VmFlags
    lo = None
    for line in open("/proc/self/smaps"):
        head = line.split()[0]
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
        elif head == "VmFlags:" and lo is not None and lo <= start and stop <= hi:
            return " hg" in line
    return False


huge, kept, checked, bad = 2 << 20, [], 0, []
for seed in range(8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(7, 128, 1000, generator=g, requires_grad=True)  # 3.4 MiB of float32
    w, b = torch.randn(1000, requires_grad=True), torch.randn(1000, requires_grad=True)
    y = ft.layer_norm(x, (1000,), w, b)
    (gx,) = torch.autograd.grad(y.sum(), (x,))
    for t in (y, gx):
        start = -(-t.data_ptr() // huge) * huge
        stop = (t.data_ptr() + t.numel() * 4) // huge * huge
        if stop > start:
            checked += 1
            if not advised(start, stop):
                bad.append(hex(t.data_ptr()))
    kept += [y, gx]  # alive, so the next outputs land elsewhere
print(checked, bad)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
@pytest.mark.parametrize("path", ["native", "python"])
def test_outputs_of_two_to_four_mib_are_advised_onto_huge_pages(path):
    """An output of 2-4 MiB gets the advice for the 2 MiB-aligned stretch inside it (when it
    has one): without it, glibc's returned blocks cost a page fault per 4 KiB every call
    (8x128x768 float32 forward+backward, ``tools/page_faults.py``: 273-790 faults a call).  In a
    fresh process, whose mappings no earlier advice has marked."""
    import subprocess
    import sys

    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                pytest.skip("transparent huge pages are off")
    except OSError:
        pytest.skip("no transparent huge pages")
    out = subprocess.run([sys.executable, "-c", _HUGE_PAGE_CHECK, path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    checked, bad = out.stdout.split(" ", 1)
    assert int(checked) >= 2 and bad.strip() == "[]", out.stdout
