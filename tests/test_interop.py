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


def test_dask_arrays_are_computed_not_misrouted():
    """No lazy Dask front exists yet: a Dask array is read through np.asarray, as before."""
    da = pytest.importorskip("dask.array")
    x = da.from_array(np.arange(48, dtype=np.float32).reshape(8, 6), chunks=(4, 6))
    np.testing.assert_array_equal(fastln.layer_norm(x), fastln.layer_norm(np.asarray(x)))
