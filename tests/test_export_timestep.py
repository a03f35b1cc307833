"""ONNX export of the TFMQ and EfficientDM layer kinds: AdaRound and QALoRA weights as stored codes, and
per-timestep activation scales as a table looked up from the graph's own timestep input (one graph for every
step), checked by ONNX Runtime against the PyTorch quantized model.

Tolerances are those of tests/test_export.py (same reasoning): per layer, ORT computes the quantized layer's
codes exactly, so the bound is float summation order; whole models are checked at the calibrated timesteps
with a sanity bound.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import trtq
from trtq import TrtqError
from trtq.export import export_onnx, lower, twins
from trtq.export.inputs import DenoiserWrapper, signature_of
from trtq.export.onnx import finalize
from trtq.nn.timestep import table_quantizers
from trtq.recipes import Recipe, get_recipe

sys.path.insert(0, str(Path(__file__).parent))
from export_configs import build_config  # noqa: E402
from test_export import _rel, _session, _session_from  # noqa: E402  (ORT at the basic level, relative L2)

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = (999, 500, 1)


def _inputs(sig, batch: int, res: int, t: float, seed: int) -> dict:
    x = sig.example_inputs(batch, res, res, seed=seed)
    x["timestep"] = torch.full((batch,), float(t))
    return x


def _calib(sig, res):
    def loop(model):
        for i, t in enumerate(STEPS):
            DenoiserWrapper(model, sig)(*_inputs(sig, 4, res, t, seed=10 + i).values())
    return loop


def _step_errors(net, sig, res, out) -> dict:
    """Relative L2 of the exported graph (ONNX Runtime) against the PyTorch model at each calibrated step."""
    sess = _session(out / "model.onnx")
    errs = {}
    for t in STEPS:
        x = _inputs(sig, 2, res, t, seed=5)
        with torch.no_grad():
            ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
        errs[t] = _rel(sess.run(None, {k: v.numpy() for k, v in x.items()})[0], ref)
    return errs


def _tfmq(model_name: str, weight_format: str = "int4"):
    net = build_config(model_name)
    sig, res = signature_of(net), net.config.sample_size
    d = get_recipe("w4a8-tfmq").to_dict()
    d["method_args"] = {"tiar_iters": 3, "iters": 2, "progress": False}
    d["rules"][0]["weight"]["format"] = weight_format
    with torch.no_grad():
        net.trtq_float_out = DenoiserWrapper(net, sig)(*_inputs(sig, 2, res, 500, seed=3).values()).numpy()
    trtq.quantize(net, Recipe.from_dict(d), _calib(sig, res))
    return net, sig, res


@pytest.mark.parametrize("model_name", ["dit", pytest.param("sd15", marks=pytest.mark.slow)])
def test_tfmq_exports_one_graph_for_every_calibrated_step(model_name, tmp_path):
    net, sig, res = _tfmq(model_name)
    tables = dict(table_quantizers(net))
    assert tables and all(q.timesteps.tolist() == sorted(STEPS) for q in tables.values())
    out = export_onnx(net, tmp_path / "onnx", _inputs(sig, 2, res, 500, seed=2), dtype="float32")
    onnx.checker.check_model(str(out / "model.onnx"), full_check=True)
    proto = onnx.load(str(out / "model.onnx"))
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    ops = [n.op_type for n in proto.graph.node]
    # A row lookup per table layer call (DiT calls its shared timestep embedder once per block) from the
    # graph's timestep input, and no fake quantization spelled out.
    assert ops.count("ArgMin") >= len(tables) and ops.count("Gather") >= len(tables)
    assert "Round" not in ops
    # Asymmetric INT4 weights are stored as exact INT8 differences (code - zero point): no weight zero points.
    dq_weights = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                  and n.input[0] in {i.name for i in proto.graph.initializer}]
    assert dq_weights and all(len(n.input) == 2 for n in dq_weights)
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["timestep_tables"]["timesteps"] == sorted(STEPS)
    # Asymmetric activations as shifted INT8 codes: nothing TensorRT's parser refuses (no zero points, no UINT8).
    assert manifest["tensorrt"]["blockers"] == []

    with torch.no_grad():
        quant = DenoiserWrapper(net, sig)(*_inputs(sig, 2, res, 500, seed=3).values()).numpy()
    bound = max(0.10, 1.5 * _rel(quant, net.trtq_float_out))
    sess = _session(out / "model.onnx")
    outs = {}
    for t in STEPS:  # the same graph serves every step; each step's output is the PyTorch model's at that step
        for batch in (1, 3):
            x = _inputs(sig, batch, res, t, seed=4)
            with torch.no_grad():
                ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
            got = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
            assert _rel(got, ref) < bound, (t, batch, _rel(got, ref), bound)
            outs[t, batch] = got
    assert not np.allclose(outs[999, 3], outs[1, 3])


def test_timestep_twin_layer_matches_the_table_layer_exactly(tmp_path):
    """One table layer lowered alone: codes from the Gathered row, the op, then the step's scale; ORT
    against the quantized layer at each calibrated step and for a batch mixing steps."""
    net, sig, res = _tfmq("dit")
    name = next(n for n, _ in table_quantizers(net)).rpartition(".")[0]
    layer, low = net.get_submodule(name), lower(net)
    twin = low.get_submodule(name)
    assert isinstance(twin.act, twins.TimestepActQuant)
    router, twin_router = net.trtq_timestep_router, low.trtq_timestep_router
    x = torch.randn(3, 5, layer.in_features) * 3

    class Call(torch.nn.Module):  # binds the timestep as the denoiser's router would
        def forward(self, x, timestep):
            with twin_router.bind(timestep):
                return twin(x)

    path = tmp_path / "layer.onnx"
    torch.onnx.export(Call(), (x, torch.tensor([1.0, 500.0, 999.0])), str(path), dynamo=False, opset_version=21,
                      input_names=["x", "timestep"], output_names=["y"], dynamic_axes={"x": {0: "b"},
                                                                                       "timestep": {0: "b"}})
    proto = onnx.load(str(path))
    finalize(proto, {}, torch.float32)
    onnx.checker.check_model(proto, full_check=True)
    sess = _session_from(proto)
    for t in ([999.0, 999.0, 999.0], [1.0, 500.0, 999.0]):
        tt = torch.tensor(t)
        with torch.no_grad(), router.bind(tt):
            want = layer(x).numpy()
        got = sess.run(None, {"x": x.numpy(), "timestep": tt.numpy()})[0]
        assert _rel(got, want) < 1e-5, t


def test_qalora_layers_export_their_merged_codes(tmp_path):
    """EfficientDM at zero distillation rounds: QALoRA layers with TALSQ tables export as stored codes and
    Gather-indexed scales; unmerged adapters and soft AdaRound are refused naming the layer."""
    net = build_config("dit")
    sig, res = signature_of(net), net.config.sample_size
    d = get_recipe("w4a8-efficientdm").to_dict()
    d["method_args"] = {**d.get("method_args", {}), "rounds": 0, "progress": False}
    trtq.quantize(net, Recipe.from_dict(d), _calib(sig, res))
    assert dict(table_quantizers(net))
    out = export_onnx(net, tmp_path / "onnx", _inputs(sig, 2, res, 500, seed=2), dtype="float32")
    for t, err in _step_errors(net, sig, res, out).items():
        assert err < 0.10, (t, err)

    name, layer = next((n, m) for n, m in net.named_modules() if hasattr(m, "weight_codes"))
    layer.adapter = torch.nn.Module()  # an update that was never merged
    with pytest.raises(TrtqError, match=f"{name}.*not merged"):
        lower(net)


def test_smoothquant_timestep_tables_export(tmp_path):
    """w8a8-smoothquant-timestep: the smoothing divisor and a Gather-indexed symmetric table per Linear; ORT
    equals PyTorch at every calibrated step, and TensorRT's parser has nothing to refuse."""
    net = build_config("dit")
    sig, res = signature_of(net), net.config.sample_size
    trtq.quantize(net, "w8a8-smoothquant-timestep", _calib(sig, res))
    tables = dict(table_quantizers(net))
    assert tables and all(q.zero_point is None for q in tables.values())
    out = export_onnx(net, tmp_path / "onnx", _inputs(sig, 2, res, 500, seed=2), dtype="float32")
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["timestep_tables"]["timesteps"] == sorted(STEPS)
    assert manifest["tensorrt"]["blockers"] == []
    # Symmetric tables: the codes are PyTorch's (measured 1.5e-7); the bound leaves room for a code that
    # float summation order moves across a rounding tie, not for a wrong row or a missing divisor.
    for t, err in _step_errors(net, sig, res, out).items():
        assert err < 1e-3, (t, err)


def test_soft_adaround_is_refused(tmp_path):
    net, sig, res = _tfmq("dit")
    name, layer = next((n, m) for n, m in net.named_modules() if getattr(m, "round_up", None) is not None)
    layer.soft_rounding = torch.zeros_like(layer.weight)
    with pytest.raises(TrtqError, match=f"{name}.*soft"):
        export_onnx(copy.deepcopy(net), tmp_path / "x", dtype="float32")
    assert not (tmp_path / "x").exists()


def test_graph_runtimes_refuse_uncalibrated_timesteps(tmp_path):
    """The graph takes the nearest row; the onnxruntime backend checks the fed timesteps against the manifest
    as the PyTorch model does (error, or a warning where the model allows the nearest step)."""
    from trtq.runtime.backends import OnnxRuntimeRunner

    net, sig, res = _tfmq("dit")
    out = export_onnx(net, tmp_path / "onnx", _inputs(sig, 2, res, 500, seed=2), dtype="float32")
    runner = OnnxRuntimeRunner(out, sig, torch.device("cpu"), threads=1)
    runner.check_feed(_inputs(sig, 2, res, 999, seed=0))
    with pytest.raises(TrtqError, match="250 were not calibrated"):
        runner.check_feed(_inputs(sig, 2, res, 250, seed=0))
    runner.manifest["timestep_tables"]["on_unknown"] = "nearest"
    with pytest.warns(UserWarning, match="nearest calibrated"):
        runner.check_feed(_inputs(sig, 2, res, 250, seed=0))


def test_float16_graph_keeps_float32_timesteps(tmp_path):
    """In a float16 graph the tables' timesteps stay float32 (compared with the float32 timestep input; a
    scheduler's timesteps need not be integers), and ORT picks each step's row as PyTorch does."""
    from onnx import TensorProto, numpy_helper

    net, sig, res = _tfmq("dit")
    out = export_onnx(net, tmp_path / "onnx", _inputs(sig, 2, res, 500, seed=2), dtype="float16")
    proto = onnx.load(str(out / "model.onnx"))
    steps = [i for i in proto.graph.initializer if numpy_helper.to_array(i).size == len(STEPS)
             and sorted(numpy_helper.to_array(i).ravel().tolist()) == sorted(STEPS)]
    assert steps and all(i.data_type == TensorProto.FLOAT for i in steps)
    sess = _session(out / "model.onnx")
    with torch.no_grad():
        quant = DenoiserWrapper(net, sig)(*_inputs(sig, 2, res, 500, seed=3).values()).numpy()
    for t in STEPS:
        x = _inputs(sig, 2, res, t, seed=4)
        with torch.no_grad():
            ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
        feed = {k: v.numpy().astype(np.float16) if v.is_floating_point() and k != "timestep" else v.numpy()
                for k, v in x.items()}
        got = sess.run(None, feed)[0].astype(np.float32)
        assert _rel(got, ref) < max(0.15, 1.5 * _rel(quant, net.trtq_float_out)), (t, _rel(got, ref))


def test_cast_float_keeps_fractional_timesteps():
    """A table's timesteps keep float32 under a float16 cast: float16 would move 999.7 to 999.5 (its spacing
    there is 0.5), and the row picked for a fed timestep with it; the scales follow the export dtype."""
    from trtq.export.onnx import cast_float

    steps = torch.tensor([0.1, 500.3, 999.7])
    q = twins.TimestepActQuant(steps, torch.tensor([0.1, 0.2, 0.3]), None)
    cast_float(q, torch.float16)
    assert q.timesteps.dtype == torch.float32 and torch.equal(q.timesteps, steps)
    assert q.scale.dtype == torch.float16
