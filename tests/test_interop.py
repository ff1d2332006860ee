"""DLPack: CPU arrays of other libraries in, the same kind of array out (no autograd)."""

import numpy as np
import pytest

import fastln

torch = pytest.importorskip("torch")


def test_torch_tensor_in_tensor_out_through_the_numpy_api():
    x = torch.randn(6, 10)
    w = torch.randn(10)
    y, mean, rstd = fastln.layer_norm_forward(x, None, w, w)
    assert isinstance(y, torch.Tensor) and isinstance(mean, torch.Tensor)
    np.testing.assert_allclose(y.numpy(), fastln.layer_norm(x.numpy(), None, w.numpy(), w.numpy()))
    y2, h = fastln.add_rms_norm(x, x, None, w)
    assert isinstance(h, torch.Tensor)
    torch.testing.assert_close(h, x + x)


def test_unsupported_dlpack_dtype_is_a_clear_error():
    with pytest.raises(TypeError, match="torch"):
        fastln.layer_norm(torch.randn(3, 4).to(torch.bfloat16))


def test_jax_arrays_in_jax_arrays_out_zero_copy_in_and_never_written():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    from fastln import interop

    rng = np.random.default_rng(0)
    xn = rng.standard_normal((16, 24)).astype(np.float32)
    wn = rng.standard_normal(24).astype(np.float32)
    x, w = jnp.asarray(xn), jnp.asarray(wn)
    # In: np.from_dlpack shares JAX's buffer (same address), read-only.
    view = interop._to_numpy(x, "x")
    assert view.ctypes.data == x.unsafe_buffer_pointer() and not view.flags.writeable
    outs = [
        (fastln.layer_norm(x, None, w, w), fastln.layer_norm(xn, None, wn, wn)),
        (fastln.rms_norm_forward(x, None, w), fastln.rms_norm_forward(xn, None, wn)),
        (fastln.add_layer_norm(x, x, None, w), fastln.add_layer_norm(xn, xn, None, wn)),
    ]
    y, mean, rstd = fastln.layer_norm_forward(x)
    gx, gw, gb = fastln.layer_norm_backward(x, x, mean, rstd, w)
    outs.append(((gx, gw, gb), fastln.layer_norm_backward(xn, xn, *fastln.layer_norm_forward(xn)[1:], wn)))
    for got, want in outs:
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, e in zip(got, want, strict=True):
            assert isinstance(g, jax.Array)
            np.testing.assert_array_equal(np.asarray(g), e)
    np.testing.assert_array_equal(np.asarray(x), xn)  # the input is untouched


def test_jax_bfloat16_is_a_clear_error_naming_the_library():
    jnp = pytest.importorskip("jax.numpy")
    with pytest.raises(TypeError, match="jax"):
        fastln.layer_norm(jnp.ones((2, 3), jnp.bfloat16))


class _FakeDeviceArray:
    """A DLPack producer on a device fastln cannot read (ROCm), without the CUDA Array Interface."""

    __module__ = "fakelib.core"

    def __dlpack__(self, **kwargs):
        raise AssertionError("must not be read")

    def __dlpack_device__(self):
        return (10, 1)  # kDLROCM, device 1


def test_unsupported_dlpack_device_is_a_clear_error_naming_library_and_device(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "fakelib", types.ModuleType("fakelib"))
    with pytest.raises(TypeError, match=r"fakelib array on DLPack device \(10, 1\)"):
        fastln.layer_norm(_FakeDeviceArray())
