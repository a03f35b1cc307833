"""ONNX export: checker, shape inference, and ONNX Runtime against the PyTorch quantized model.

How close ORT must be, and why:
- Layer by layer (`test_each_layer_kind_matches_its_quantized_layer`), ORT runs what the quantized layer
  computes: Q/DQ codes are bit-identical (ONNX QuantizeLinear rounds x / scale half-to-even like
  torch.round; checked on 1e6 values) and the float ops differ only in summation order (~1e-7). Where a
  last-ulp difference moves a value across a rounding tie, one code flips; in a Winograd layer with learned
  (non-dyadic) transforms that moves one tile's outputs by one step (measured: 3 of 83 layers at 3e-4 to
  1.2e-3 relative L2). Bound: 5e-3 relative L2 per layer.
- A whole quantized network is not continuous: each flip moves the next layer's input by a whole step,
  which flips more. Measured relative L2 ORT vs PyTorch: 0.1-4 % on the zoo models and w8a8/FP4 recipes, but
  22 % on the random-weight SD1.5-like UNet with learned Winograd F(4,3), where PyTorch's own twins (same
  math, torch kernels) are 22 % from the quantized model too and the quantized model is 22 % from float. So
  the whole-model bound is a sanity bound, max(10 %, 1.5 x the quantization error); the proof of exactness
  is per layer, plus the node counts (every quantized layer is a DequantizeLinear weight or a plugin node).
- ORT_ENABLE_BASIC: ORT's extended optimizations replace DequantizeLinear -> MatMul by its own integer
  kernels (x86 u8s8 with int16 saturation), a different computation than the graph states (seen: 0.45 abs
  error on one linear); the basic level keeps the graph's semantics.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import trtq
from trtq.recipes import get_recipe
from trtq.zoo import load_model
from trtq import TrtqError
from trtq.export import export_onnx, lower, summarize
from trtq.export import twins
from trtq.export.cli import add_export_parser, cmd_export, cmd_inspect_onnx, parse_range
from trtq.export.inputs import DenoiserWrapper, signature_of
from trtq.export.onnx import finalize, _record_plugin_calls
from trtq.nn import QuantLinear

sys.path.insert(0, str(Path(__file__).parent))
from export_configs import CONFIGS, build_config  # noqa: E402

ort = pytest.importorskip("onnxruntime")

FAMILIES = ("w8a8-minmax", "w8a8-percentile", "w8a8-fp8", "w8a8-group", "w8a8-winograd-f43", "w8a8-winograd-f63",
            "w4a4-fp4-minmax", "w4a8-fp4", "w4a4-nvfp4", "w4a4-int4", "w8a8-dynamic", "w8a8-smoothquant")
MODELS = CONFIGS + ("digits-unet", "digits-dit")
# The plugin node each family must produce (on models where its layer kind occurs).
EXPECTED_PLUGIN = {"w8a8-group": "DynamicGroupQDQ", "w8a8-winograd-f43": "WinogradConvInt8",
                   "w8a8-winograd-f63": "WinogradConvInt8", "w4a4-fp4-minmax": "FP4GroupGemm",
                   "w4a8-fp4": "FP4GroupGemm", "w4a4-nvfp4": "FP4GroupGemm", "w4a4-int4": "DynamicGroupQDQ",
                   "w8a8-dynamic": "DynamicGroupQDQ"}
CONV_FAMILIES = ("w8a8-group", "w8a8-winograd-f43", "w8a8-winograd-f63")
# Fast subset run on every CI pass: each family once, each model once. The full matrix is marked slow.
FAST = {("sd15", "w8a8-winograd-f43"), ("sd15", "w8a8-group"), ("sdxl", "w8a8-minmax"),
        ("sdxl", "w8a8-winograd-f63"), ("dit", "w4a4-nvfp4"), ("dit", "w4a4-int4"), ("pixart", "w4a4-fp4-minmax"),
        ("pixart", "w4a8-fp4"), ("digits-unet", "w8a8-percentile"), ("digits-dit", "w4a4-nvfp4"),
        ("dit", "w8a8-fp8"),  # DiT calls its timestep embedder twice: one FP8 initializer under two DQ nodes
        ("sd15", "w8a8-dynamic"), ("digits-dit", "w8a8-smoothquant")}


def _session(path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def _quantized(model_name: str, recipe: str):
    if model_name.startswith("digits"):
        net = load_model(model_name).denoiser
    else:
        net = build_config(model_name)
    sig = signature_of(net)
    res = net.config.sample_size
    calib = sig.example_inputs(4, res, res, seed=1)
    with torch.no_grad():  # the float model's output on the inputs the whole-model test uses first
        net.trtq_float_out = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values()).numpy()
    # Few Winograd scale-learning steps: this file checks the export of whatever scales were learned, and the
    # default 300 steps cost minutes on a 2-core CI machine.
    r = get_recipe(recipe)
    r = r.with_overrides({"winograd.steps": 20}) if r.method == "winograd" else r
    trtq.quantize(net, r, lambda m: DenoiserWrapper(m, sig)(*calib.values()))
    return net, sig, res


def _run(sess, sig, x: dict, dtype=np.float32) -> np.ndarray:
    """Float inputs in `dtype`, except those the graph declares float32 (the timestep, at every dtype)."""
    fp32 = {i.name for i in sess.get_inputs() if i.type == "tensor(float)"}
    feed = {k: (v.numpy().astype(np.float32 if k in fp32 else dtype) if v.is_floating_point() else v.numpy())
            for k, v in x.items()}
    return sess.run(None, feed)[0].astype(np.float32)


def _check_graph(path: Path) -> onnx.ModelProto:
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    return proto


def _matrix():
    for model in MODELS:
        for family in FAMILIES:
            marks = () if (model, family) in FAST else (pytest.mark.slow,)
            yield pytest.param(model, family, marks=marks, id=f"{model}-{family}")


@pytest.mark.parametrize("model_name,recipe", list(_matrix()))
def test_export_runs_in_onnxruntime_like_pytorch(model_name, recipe, tmp_path):
    torch.manual_seed(0)
    net, sig, res = _quantized(model_name, recipe)
    x = sig.example_inputs(2, res, res, seed=2)
    out = export_onnx(net, tmp_path / "onnx", x, dtype="float32", batch=(1, 2, 4))
    proto = _check_graph(out / "model.onnx")

    plugins = {n.op_type for n in proto.graph.node if n.domain == "trtq"}
    lowered = list(lower(net).modules())
    kinds = {type(m) for m in lowered}
    dynamic_groups = any(isinstance(m, twins.ActQuant) and m.dynamic is not None for m in lowered)
    expected = EXPECTED_PLUGIN.get(recipe)
    # The family's plugin node wherever its layer kind occurs in this model (w8a8-group's dynamic groups are
    # for convs other than the patch embedding, which stays per-channel by role: none in DiT/PixArt).
    if expected == "WinogradConvInt8" and twins.WinogradConvInt8 in kinds or expected == "FP4GroupGemm" \
            and twins.FP4GroupGemm in kinds or expected == "DynamicGroupQDQ" and dynamic_groups:
        assert expected in plugins
    # Every quantized layer became quantized nodes: a DequantizeLinear weight or a plugin node each.
    n_layers = sum(1 for m in net.modules() if trtq.nn.is_quantized(m))
    # (distinct weight initializers: a module called twice, like DiT's shared timestep embedder, is one layer)
    dq_weights = len({n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and
                      n.input[0] in {i.name for i in proto.graph.initializer}})
    fused = len({n.input[1] for n in proto.graph.node if n.op_type in ("WinogradConvInt8", "FP4GroupGemm")})
    assert dq_weights + fused == n_layers

    with torch.no_grad():
        quant = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values()).numpy()
    bound = max(0.10, 1.5 * _rel(quant, net.trtq_float_out))
    sess = _session(out / "model.onnx")
    shapes = [(2, res), (3, res)] + ([(1, res // 2 + 4)] if sig.resolution_dynamic else [])
    for batch, size in shapes:
        x = sig.example_inputs(batch, size, size, seed=3)
        with torch.no_grad():
            ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
        got = _run(sess, sig, x)
        assert got.shape == ref.shape
        assert _rel(got, ref) < bound, (batch, size, _rel(got, ref), bound)


@pytest.mark.parametrize("model_name,recipe", [("sd15", "w8a8-winograd-f43"), ("sd15", "w8a8-group"),
                                               ("dit", "w4a4-nvfp4"), ("dit", "w4a8-fp4"), ("dit", "w4a4-int4"),
                                               ("sdxl", "w8a8-winograd-f63")])
def test_each_layer_kind_matches_its_quantized_layer(model_name, recipe, tmp_path):
    """Each twin exported alone, run by ORT on the input the layer really sees, against the original
    quantized layer (fake quant / trtq custom ops), up to 3 layers per twin kind."""
    net, sig, res = _quantized(model_name, recipe)
    low = lower(net)
    seen, per_kind = {}, {}
    for name, mod in low.named_modules():
        if isinstance(mod, (twins.QDQConv2d, twins.QDQLinear, twins.WinogradConvInt8, twins.FP4GroupGemm)):
            if per_kind.setdefault(type(mod), 0) < 3:
                per_kind[type(mod)] += 1
                net.get_submodule(name).register_forward_hook(
                    lambda m, i, o, name=name: seen.setdefault(name, (i[0].detach(), o.detach())) and None)
    with torch.no_grad():
        DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=4).values())
    assert seen
    for name, (inp, expected) in seen.items():
        twin = low.get_submodule(name)
        proto = _layer_graph(twin, inp, tmp_path / "layer.onnx")
        onnx.checker.check_model(proto, full_check=True)
        got = _session_from(proto).run(None, {"x": inp.numpy()})[0]
        assert _rel(got, expected.numpy()) < 5e-3, (name, type(twin).__name__, _rel(got, expected.numpy()))


def _layer_graph(twin: torch.nn.Module, inp: torch.Tensor, path: Path) -> onnx.ModelProto:
    """One export twin alone as a finalized ONNX graph with input "x" and output "y"."""
    calls = _record_plugin_calls(twin)
    with torch.no_grad():
        torch.onnx.export(twin, (inp,), str(path), dynamo=False, opset_version=21, input_names=["x"],
                          output_names=["y"], autograd_inlining=False)
    for h in calls.pop("_hooks"):
        h.remove()
    proto = onnx.load(str(path))
    finalize(proto, calls, torch.float32)
    return proto


def _session_from(proto):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_name,recipe", [("sd15", "w8a8-winograd-f43"), ("dit", "w4a4-nvfp4")])
def test_float16_export(model_name, recipe, tmp_path):
    net, sig, res = _quantized(model_name, recipe)
    x = sig.example_inputs(2, res, res, seed=2)
    out = export_onnx(net, tmp_path / "onnx", x, dtype="float16")
    proto = _check_graph(out / "model.onnx")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    with torch.no_grad():
        ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
    got = _run(_session(out / "model.onnx"), sig, x, np.float16)
    # As in the FP32 whole-model test: flipped codes at rounding ties spread through a random-weight model as far
    # as quantization itself moves it from float, so the bound scales with that distance (exactness is checked
    # per layer in test_each_layer_kind_matches_its_quantized_layer).
    with torch.no_grad():  # quantized vs float on the inputs net.trtq_float_out was taken on
        quant = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values()).numpy()
    assert _rel(got, ref) < max(0.15, 1.5 * _rel(quant, net.trtq_float_out))


def _structure(proto: onnx.ModelProto, float_type: int) -> list:
    """Nodes (op, domain, attributes) with `float_type` written as "F" wherever a type is named."""
    def attr(a):
        v = onnx.helper.get_attribute_value(a)
        if a.name == "to" and v == float_type:
            return "F"
        return v if isinstance(v, (int, float, bytes, list)) else a.type
    # Identity nodes left out: the exporter shares equal initializers through them, and more values are equal
    # once rounded to bfloat16 than to float16.
    return [(n.op_type, n.domain, sorted((a.name, str(attr(a))) for a in n.attribute)) for n in proto.graph.node
            if n.op_type != "Identity"]


@pytest.mark.parametrize("model_name,recipe", [("sd15", "w8a8-winograd-f43"), ("dit", "w4a4-nvfp4")])
def test_bfloat16_export_is_the_float16_graph_in_bfloat16(model_name, recipe, tmp_path):
    """ONNX Runtime has no CPU kernels for bfloat16 Conv/Expand/QuantizeLinear, so the bfloat16 graph is proven
    against the float16 one, which ORT runs (test_float16_export): checker and strict shape inference at opset
    22, and the same nodes with the same attributes, only the float type changed."""
    net, sig, res = _quantized(model_name, recipe)
    x = sig.example_inputs(2, res, res, seed=2)
    bf = _check_graph(export_onnx(net, tmp_path / "bf16", x, dtype="bfloat16") / "model.onnx")
    fp = _check_graph(export_onnx(net, tmp_path / "fp16", x, dtype="float16") / "model.onnx")
    assert {o.domain: o.version for o in bf.opset_import}[""] == 22
    assert bf.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    assert _structure(bf, onnx.TensorProto.BFLOAT16) == _structure(fp, onnx.TensorProto.FLOAT16)
    # DiT's unpatchify permutation is a Transpose (the in-graph position table's float32 outer product stays)
    assert not any(n.op_type == "Einsum" and len(n.input) == 1 for n in bf.graph.node)
    types = {i.data_type for i in bf.graph.initializer}
    assert onnx.TensorProto.FLOAT16 not in types and onnx.TensorProto.BFLOAT16 in types
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["onnx"]["opset"] == 22 and manifest["onnx"]["dtype"] == "bfloat16"


def test_reference_io_in_bfloat16_is_refused_before_any_work(tmp_path):
    with pytest.raises(TrtqError, match="NumPy has no bfloat16|polygraphy is not installed"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x", dtype="bfloat16", reference_io=True)
    assert not (tmp_path / "x").exists()


def test_reference_io_checks_with_polygraphy(tmp_path):
    """--reference-io: Polygraphy's own ORT runner, fed the saved inputs, matches the saved PyTorch output
    (a Winograd graph, run through its local functions); with the reference perturbed, the same command fails."""
    import subprocess

    pytest.importorskip("polygraphy")
    net, sig, res = _quantized("sd15", "w8a8-winograd-f43")
    out = export_onnx(net, tmp_path / "onnx", sig.example_inputs(2, res, res, seed=2), dtype="float32",
                      reference_io=True)
    manifest = json.loads((out / "manifest.json").read_text())
    cmd = manifest["reference_io"]["check"].split()
    # The whole-model bound of test_export_runs_in_onnxruntime_like_pytorch, as Polygraphy's relative error
    # over the output's L2 norm is not offered: an elementwise bound on this model's small-magnitude outputs.
    tol = ["--atol", "0.05", "--rtol", "0.05", "--check-error-stat", "median"]
    polygraphy = str(Path(sys.executable).parent / "polygraphy")
    ok = subprocess.run([polygraphy] + cmd[1:] + tol, cwd=out, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "PASSED" in ok.stdout + ok.stderr

    from polygraphy.comparator import RunResults

    results = RunResults.load(str(out / "io" / "outputs.json"))
    arr = results[0][1][0]["out_sample"]
    results[0][1][0]["out_sample"] = arr + 1.0
    results.save(str(out / "io" / "outputs.json"))
    bad = subprocess.run([polygraphy] + cmd[1:] + tol, cwd=out, capture_output=True, text=True)
    assert bad.returncode != 0 and "FAILED" in bad.stdout + bad.stderr


def test_plugin_node_without_its_function_fails_in_onnxruntime(tmp_path):
    """The local functions are what ORT executes: with a body removed, the same graph cannot run."""
    net, sig, res = _quantized("sd15", "w8a8-winograd-f43")
    x = sig.example_inputs(1, res, res, seed=2)
    out = export_onnx(net, tmp_path / "onnx", x, dtype="float32")
    proto = onnx.load(str(out / "model.onnx"))
    assert _session_from(proto).run(None, {k: v.numpy() for k, v in x.items()})[0].shape[0] == 1
    assert {f.name for f in proto.functions} >= {"WinogradConvInt8"}
    del proto.functions[:]
    with pytest.raises(Exception, match="WinogradConvInt8"):
        _session_from(proto).run(None, {k: v.numpy() for k, v in x.items()})


def test_manifest_summary_and_model_left_untouched(tmp_path):
    net, sig, res = _quantized("dit", "w4a4-nvfp4")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    classes = [type(m) for m in net.modules()]
    out = export_onnx(net, tmp_path / "onnx", dtype="float32", batch=(1, 2, 8), model_name="tiny-dit")
    assert [type(m) for m in net.modules()] == classes
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "trtq-onnx" and m["onnx"]["opset"] == 21 and m["recipe"]["name"] == "w4a4-nvfp4"
    assert m["model"]["fingerprint"] == trtq.artifact.module_fingerprint(net)
    assert m["profiles"]["sample"] == {"min": [1, 4, res, res], "opt": [2, 4, res, res], "max": [8, 4, res, res]}
    assert [p["name"] for p in m["plugins"]] == ["FP4GroupGemm"] and m["plugins"][0]["version"] == "1"
    # dynamic NVFP4 scales need the activation-quantization kernel's workspace: no ahead-of-time plugin
    assert m["plugins"][0]["aot_nodes"] == 0
    nodes = [n for n in onnx.load(str(out / "model.onnx")).graph.node if n.op_type == "FP4GroupGemm"]
    present = {onnx.helper.get_attribute_value(a).decode() for n in nodes for a in n.attribute
               if a.name == "inputs_present"}
    assert present and all(len(v) == 6 and v[:3] == "111" for v in present)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    s = summarize(out)
    assert s["plugins"]["trtq::FP4GroupGemm"] == m["plugins"][0]["nodes"]
    assert s["initializer_bytes"]["uint8"] > 0 and s["initializer_bytes"]["int8"] > 0


def test_external_data_above_the_limit(tmp_path):
    net, sig, res = _quantized("dit", "w8a8-minmax")
    x = sig.example_inputs(1, res, res, seed=2)
    out = export_onnx(net, tmp_path / "onnx", x, dtype="float32", external_data_bytes=0)
    assert (out / "model.onnx.data").is_file()
    assert json.loads((out / "manifest.json").read_text())["onnx"]["external_data"] == "model.onnx.data"
    with torch.no_grad():
        ref = DenoiserWrapper(net, sig)(*x.values()).numpy()
    assert _rel(_run(_session(out / "model.onnx"), sig, x), ref) < 0.10


def test_unexpressible_layer_is_an_error_naming_it(tmp_path):
    net, sig, res = _quantized("dit", "w8a8-minmax")
    name = "transformer_blocks.0.attn1.to_q"
    layer = net.get_submodule(name)
    layer.input_quantizer.set_mode("calibrate")  # a capture left on: not a deployable state
    with pytest.raises(TrtqError, match=name):
        export_onnx(net, tmp_path / "a", dtype="float32")
    layer.input_quantizer.set_mode("quantize")

    class Custom(QuantLinear):
        pass

    layer.__class__ = Custom
    with pytest.raises(TrtqError, match=f"{name}.*Custom"):
        export_onnx(net, tmp_path / "b", dtype="float32")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _cli(argv):
    p = argparse.ArgumentParser()
    add_export_parser(p.add_subparsers(dest="command"))
    return p.parse_args(argv)


def test_cli_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TrtqError, match="recipe"):
        cmd_export(_cli(["export", "--model", "digits-unet", "--recipe", "no-such-recipe", "--out", str(out)]))
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(TrtqError, match="is a file"):
        cmd_export(_cli(["export", "--model", "digits-unet", "--recipe", "w8a8-minmax", "--out", str(afile)]))
    with pytest.raises(TrtqError, match="MIN:OPT:MAX"):
        parse_range("4:2:8", "batch")
    # An artifact made for digits-dit, offered for digits-unet.
    dit = load_model("digits-dit").denoiser
    dsig = signature_of(dit)
    calib = dsig.example_inputs(2, 32, 32, seed=1)
    trtq.quantize(dit, "w8a8-minmax", lambda m: DenoiserWrapper(m, dsig)(*calib.values()))
    art = trtq.save_artifact(dit, tmp_path / "dit-art", "digits-dit")
    with pytest.raises(TrtqError, match="made for model 'digits-dit'"):
        cmd_export(_cli(["export", "--model", "digits-unet", "--artifact", str(art), "--out", str(out)]))
    assert not out.exists() and afile.read_text() == "x"


def test_cli_export_from_artifact_and_inspect(tmp_path, capsys):
    dit = load_model("digits-dit").denoiser
    dsig = signature_of(dit)
    calib = dsig.example_inputs(2, 32, 32, seed=1)
    trtq.quantize(dit, "w4a4-nvfp4", lambda m: DenoiserWrapper(m, dsig)(*calib.values()))
    art = trtq.save_artifact(dit, tmp_path / "art", "digits-dit")
    out = tmp_path / "onnx"
    cmd_export(_cli(["export", "--model", "digits-dit", "--artifact", str(art), "--out", str(out), "--batch", "1:2:4",
                     "--dtype", "float32", "--summary"]))
    text = capsys.readouterr().out
    assert "trtq::FP4GroupGemm" in text and "initializer bytes" in text
    m = json.loads((out / "manifest.json").read_text())
    assert m["artifact"] == str(art) and m["model"]["name"] == "digits-dit"
    cmd_inspect_onnx(argparse.Namespace(path=str(out / "model.onnx"), json=True))
    assert json.loads(capsys.readouterr().out)["plugins"]["trtq::FP4GroupGemm"] > 0


def test_fp4_nodes_that_run_as_one_kernel_are_marked_aot(tmp_path):
    """FP32 dynamic group scales with groups smaller than K: the GEMM quantizes its own activations
    (trtq.plugins.plans.fp4_aot_plan), so TensorRT can take the kernel ahead of time and the node says so;
    where g = K (one group per row) the separate quantization kernel is needed, and aot stays 0."""
    net, sig, res = _quantized("dit", "w4a4-fp4-minmax")
    out = export_onnx(net, tmp_path / "onnx", dtype="float32")
    proto = onnx.load(str(out / "model.onnx"))
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    seen = set()
    for n in (n for n in proto.graph.node if n.op_type == "FP4GroupGemm"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        k = 2 * dims[n.input[1]][1]
        assert attrs["aot"] == int(attrs["group_size"] < k), (n.name, k, attrs["aot"])
        seen.add(attrs["aot"])
    assert seen == {0, 1}
    m = json.loads((out / "manifest.json").read_text())
    fp4 = next(p for p in m["plugins"] if p["name"] == "FP4GroupGemm")
    assert 0 < fp4["aot_nodes"] < fp4["nodes"]
