"""Test material the team did not write: ONNX's conformance cases and torch's OpInfo samples.

- ONNX: every ``LayerNormalization`` and ``RMSNormalization`` node case that ships with the
  ``onnx`` package (axis variants, broadcast scales, float16/float32/float64, the Mean and
  InvStdDev outputs), run through the NumPy API with ``normalized_shape = x.shape[axis:]``.
- torch: the ``op_db`` sample inputs of ``nn.functional.layer_norm`` and
  ``nn.functional.rms_norm`` (values for every floating dtype, gradients for float32/64),
  run through ``fastln.torch`` and compared with torch.

Each part skips when its package is absent (``onnx``, and ``expecttest`` which torch's
testing internals import).
"""

import contextlib
import warnings

import numpy as np
import pytest

import fastln


def _onnx_cases():
    onnx = pytest.importorskip("onnx")
    from onnx.backend.test.case.node import collect_testcases

    with np.errstate(all="ignore"), _quiet():  # other ops' case generators warn
        cases = collect_testcases(None)
    out = []
    for c in cases:
        if ("layer_normalization" in c.name or "rms_normalization" in c.name) and "expanded" not in c.name:
            node = c.model.graph.node[0]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for k, (ins, outs) in enumerate(c.data_sets):
                out.append((f"{c.name}[{k}]", node.op_type, attrs, ins, outs))
    return out


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_onnx_conformance_cases():
    cases = _onnx_cases()
    assert len(cases) >= 20, "the onnx package should ship these cases"
    for name, op_type, attrs, ins, outs in cases:
        x = ins[0]
        axis = attrs.get("axis", -1) % x.ndim
        eps = attrs.get("epsilon", 1e-5)
        ns = x.shape[axis:]
        scale = np.broadcast_to(ins[1], ns) if len(ins) > 1 else None
        bias = np.broadcast_to(ins[2], ns) if len(ins) > 2 and ins[2] is not None else None
        if op_type == "LayerNormalization":
            y, mean, rstd = fastln.layer_norm_forward(x, ns, scale, bias, eps)
            got = [y, mean.reshape(outs[1].shape) if len(outs) > 1 else None,
                   rstd.reshape(outs[2].shape) if len(outs) > 2 else None]
        else:
            got = [fastln.rms_norm(x, ns, scale, eps)]
        tol = 2e-3 if x.dtype == np.float16 else 1e-5
        for g, e in zip(got, outs, strict=False):
            if g is not None:
                np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(e, np.float64),
                                           rtol=tol, atol=tol, err_msg=name)


def test_torch_op_db_samples():
    torch = pytest.importorskip("torch")
    pytest.importorskip("expecttest")
    import fastln.torch as ft

    with _quiet():
        from torch.testing._internal.common_methods_invocations import op_db
    ours = {"nn.functional.layer_norm": ft.layer_norm, "nn.functional.rms_norm": ft.rms_norm}
    ran = 0
    for op in (o for o in op_db if o.name in ours):
        for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
            grads = dtype in (torch.float32, torch.float64)
            for s in op.sample_inputs("cpu", dtype, requires_grad=grads):
                want = op.op(s.input, *s.args, **s.kwargs)
                got = ours[op.name](s.input, *s.args, **s.kwargs)
                tol = dict(rtol=1e-5, atol=1e-5) if grads else dict(rtol=2e-2, atol=2e-2)
                torch.testing.assert_close(got, want, **tol)
                ran += 1
                if not grads or not want.numel():
                    continue
                ins = [s.input] + [a for a in list(s.args) + list(s.kwargs.values())
                                   if isinstance(a, torch.Tensor) and a.requires_grad]
                g = torch.randn_like(want)
                for a, b in zip(torch.autograd.grad(got, ins, g), torch.autograd.grad(want, ins, g), strict=True):
                    # Rows of a single element have rstd = 1/sqrt(eps) = 316: the exact
                    # gradient is 0 and both libraries return rounding noise times 316.
                    one = s.input.shape[-1:] == (1,) or s.input.dim() == 1 and s.input.numel() == 1
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3 if one else 1e-4)
    assert ran >= 20
