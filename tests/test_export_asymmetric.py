"""Asymmetric INT8 activations in the form TensorRT builds: INT8 codes shifted by 128 in a zero-point-free
Q/DQ, the zero point's share (z'·ΣW per output channel) subtracted after the op, a conv's zero padding
applied before quantization; and the scan that names what TensorRT cannot build (manifest `tensorrt`,
`build_engine`'s refusal).

Bounds are tests/test_export.py's (its docstring): per layer 5e-3 relative L2 (codes identical up to a
flip at a rounding tie), whole models a sanity bound.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import trtq
from trtq import TrtqError
from trtq.engine import build_engine
from trtq.export import export_onnx, lower, twins
from trtq.export.inputs import DenoiserWrapper, signature_of
from trtq.export.onnx import format_summary, summarize
from trtq.export.tensorrt_support import tensorrt_blockers
from trtq.recipes import Recipe, get_recipe

sys.path.insert(0, str(Path(__file__).parent))
from export_configs import build_config  # noqa: E402
from test_export import _layer_graph, _rel, _session, _session_from  # noqa: E402

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(weight_symmetric: bool = True, input_granularity: str = "tensor") -> Recipe:
    d = get_recipe("w8a8-minmax").to_dict()
    d["name"] = "w8a8-asym-test"
    d["rules"][0]["input"].update(symmetric=False, granularity=input_granularity)
    if input_granularity != "tensor":
        d["rules"][0]["input"]["axis"] = 1
        d["rules"][0]["types"] = ["Conv2d"]
    d["rules"][0]["weight"]["symmetric"] = weight_symmetric
    return Recipe.from_dict(d)


def _quantized(kind: str, recipe: Recipe):
    net = build_config(kind)
    sig, res = signature_of(net), net.config.sample_size
    calib = sig.example_inputs(4, res, res, seed=1)
    with torch.no_grad():
        net.trtq_float_out = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values()).numpy()
    trtq.quantize(net, recipe, lambda m: DenoiserWrapper(m, sig)(*calib.values()))
    return net, sig, res


def _zero_points(proto: onnx.ModelProto) -> list:
    inits = {i.name: i for i in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
            and len(n.input) > 2 and n.input[2] in inits]


@pytest.mark.parametrize("kind", ["sd15", "dit"])
def test_asymmetric_inputs_export_without_zero_points(kind, tmp_path):
    net, sig, res = _quantized(kind, _recipe())
    low = lower(net)
    shifted = [n for n, m in low.named_modules() if isinstance(m, twins.ShiftedActQuant)]
    assert shifted
    # Every layer kind alone (convs with padding among them), ORT on the input the layer really sees, against
    # the quantized layer; the layer's own graph has no UINT8 code and no nonzero zero point.
    seen, per_kind = {}, {}
    for name, mod in low.named_modules():
        if isinstance(mod, (twins.QDQConv2d, twins.QDQLinear)) and isinstance(mod.act, twins.ShiftedActQuant):
            key = (type(mod), getattr(mod, "pad", None) is not None and any(mod.pad))
            if per_kind.setdefault(key, 0) < 3:
                per_kind[key] += 1
                net.get_submodule(name).register_forward_hook(
                    lambda m, i, o, name=name: seen.setdefault(name, (i[0].detach(), o.detach())) and None)
    with torch.no_grad():
        DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=4).values())
    if kind == "sd15":
        assert (twins.QDQConv2d, True) in per_kind  # padded 3x3 convs: the padding moved before quantization
    for name, (inp, expected) in seen.items():
        twin = low.get_submodule(name)
        with torch.no_grad():
            assert _rel(twin(inp).numpy(), expected.numpy()) < 5e-3, name
        proto = _layer_graph(twin, inp, tmp_path / "layer.onnx")
        assert tensorrt_blockers(proto) == []
        assert all(z.data_type == onnx.TensorProto.INT8 for z in _zero_points(proto))
        got = _session_from(proto).run(None, {"x": inp.numpy()})[0]
        assert _rel(got, expected.numpy()) < 5e-3, (name, _rel(got, expected.numpy()))

    out = export_onnx(net, tmp_path / "onnx", sig.example_inputs(2, res, res, seed=2), dtype="float32")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tensorrt"]["blockers"] == []
    proto = onnx.load(str(out / "model.onnx"))
    assert not any(np.any(onnx.numpy_helper.to_array(z)) for z in _zero_points(proto))
    with torch.no_grad():
        quant = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values()).numpy()
    x = sig.example_inputs(2, res, res, seed=5)
    with torch.no_grad():
        ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
    got = _session(out / "model.onnx").run(None, {k: v.numpy() for k, v in x.items()})[0]
    assert _rel(got, ref) < max(0.10, 1.5 * _rel(quant, net.trtq_float_out))


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (4, 1), (1, 1)])
def test_explicit_padding_is_the_convs_own(kernel, dilation):
    x, w = torch.randn(1, 3, 9, 11), torch.randn(5, 3, kernel, kernel)
    for padding in ("same", "valid", (1, 2)):
        pad = twins._explicit_padding(padding, w.shape, (dilation, dilation))
        want = F.conv2d(x, w, padding=padding, dilation=dilation)
        assert torch.allclose(F.conv2d(F.pad(x, pad), w, dilation=dilation), want, atol=1e-5), padding


def test_what_tensorrt_cannot_build_is_named_and_refused(tmp_path):
    """Asymmetric INT8 weights stay UINT8 codes with zero points (ONNX Runtime runs them; TensorRT's parser
    takes symmetric Q/DQ only): the manifest lists them and build_engine refuses before looking for TensorRT."""
    net, sig, res = _quantized("dit", _recipe(weight_symmetric=False))
    out = export_onnx(net, tmp_path / "onnx", sig.example_inputs(2, res, res, seed=2), dtype="float32")
    blockers = json.loads((out / "manifest.json").read_text())["tensorrt"]["blockers"]
    assert len(blockers) == 1 and "DequantizeLinear node(s) with UINT8 codes" in blockers[0]
    assert summarize(out)["tensorrt_blockers"] == blockers and "TensorRT: cannot build" in format_summary(summarize(out))
    with pytest.raises(TrtqError, match="cannot be built by TensorRT: .*UINT8 codes"):
        build_engine(out, cache_dir=tmp_path / "engines")
    assert not (tmp_path / "engines").exists()

    # Per-channel asymmetric inputs keep their zero points too (Q and DQ both named).
    net, sig, res = _quantized("sd15", _recipe(input_granularity="channel"))
    out = export_onnx(net, tmp_path / "onnx2", sig.example_inputs(2, res, res, seed=2), dtype="float32")
    blockers = json.loads((out / "manifest.json").read_text())["tensorrt"]["blockers"]
    assert any(b.split(" ", 2)[1] == "QuantizeLinear" for b in blockers)
