"""TensorRT end to end: a zoo model quantized, exported, built into an engine, run by TensorRTDenoiser and
compared with the PyTorch quantized model. Needs TensorRT's Python bindings and a CUDA GPU (skipped here
with the reason); the plugin recipes also need `trtq.plugins`.

Tolerance, as in tests/test_export.py's float16 test: an FP16 engine differs from the FP32 fake-quantized
PyTorch model by FP16 rounding of activations, which moves values across INT8 rounding ties; those flips
spread through the network about as far as quantization itself moves it from float. So the bound is
max(0.15, 1.5 x the relative L2 distance between the quantized and the float model on the same inputs).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import trtq
from trtq.engine import build_engine, read_engine
from trtq.errors import TrtqError
from trtq.export import export_onnx
from trtq.export.inputs import DenoiserWrapper, signature_of
from trtq.recipes import get_recipe
from trtq.zoo import load_model

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]

CASES = [
    pytest.param("digits-unet", "w8a8-minmax", None, id="unet-w8a8-minmax"),
    pytest.param("digits-dit", "w8a8-minmax", None, id="dit-w8a8-minmax"),
    pytest.param("digits-dit", "w8a8-fp8", (8, 9), id="dit-w8a8-fp8"),
    pytest.param("digits-unet", "w8a8-winograd-f43", "plugins", id="unet-winograd-f43"),
    pytest.param("digits-dit", "w4a4-nvfp4", "plugins", id="dit-w4a4-nvfp4"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).norm() / b.norm())


def _quantized(model_name: str, recipe: str):
    net = load_model(model_name).denoiser.eval()
    sig = signature_of(net)
    res = net.config.sample_size
    calib = sig.example_inputs(4, res, res, seed=1)
    with torch.no_grad():
        float_out = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values())
    r = get_recipe(recipe)
    r = r.with_overrides({"winograd.steps": 20}) if r.method == "winograd" else r
    trtq.quantize(net, r, lambda m: DenoiserWrapper(m, sig)(*calib.values()))
    return net, sig, res, float_out


def _cuda_inputs(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: (v.half() if v.is_floating_point() else v).cuda() for k, v in x.items()}


@pytest.mark.parametrize("model_name,recipe,needs", CASES)
def test_engine_matches_pytorch(model_name, recipe, needs, tmp_path):
    from trtq.engine.runner import TensorRTDenoiser

    if needs == "plugins":
        pytest.importorskip("trtq.plugins", reason="the trtq TensorRT plugins are not in this trtq")
    elif needs is not None and torch.cuda.get_device_capability() < needs:
        pytest.skip(f"{recipe} needs compute capability {needs[0]}.{needs[1]}+")
    torch.manual_seed(0)
    net, sig, res, float_out = _quantized(model_name, recipe)
    export = export_onnx(net, tmp_path / "onnx", dtype="float16", batch=(1, 2, 4), model_name=model_name)
    cache = tmp_path / "engines"
    record = build_engine(export, cache_dir=cache, progress=False)
    assert not record.hit and record.plan_path.stat().st_size > 0
    assert build_engine(export, cache_dir=cache, progress=False).hit  # the same build again: the cache

    den = TensorRTDenoiser(record)
    with torch.no_grad():
        quant_out = DenoiserWrapper(net, sig)(*sig.example_inputs(2, res, res, seed=3).values())
    bound = max(0.15, 1.5 * _rel(quant_out, float_out))
    for batch in (2, 3):
        x = sig.example_inputs(batch, res, res, seed=3)
        with torch.no_grad():
            ref = DenoiserWrapper(net, sig)(*x.values())
        got = den(**_cuda_inputs(x))["out_sample"]
        torch.cuda.synchronize()
        assert got.shape == ref.shape and got.dtype == torch.float16
        assert _rel(got, ref) < bound, (batch, _rel(got, ref), bound)

    with pytest.raises(TrtqError, match="batch = 8, the profile allows"):  # outside the profile: our message
        den(**_cuda_inputs(sig.example_inputs(8, res, res, seed=3)))


def test_cuda_graph_replay_matches_and_outputs_are_not_overwritten(tmp_path):
    from trtq.engine.runner import TensorRTDenoiser

    net, sig, res, _ = _quantized("digits-unet", "w8a8-minmax")
    export = export_onnx(net, tmp_path / "onnx", dtype="float16", batch=(2, 2, 2), model_name="digits-unet")
    record = build_engine(export, cache_dir=tmp_path / "engines", progress=False)
    plain, graphed = TensorRTDenoiser(record), TensorRTDenoiser(record, cuda_graph=True)
    x1 = _cuda_inputs(sig.example_inputs(2, res, res, seed=1))
    x2 = _cuda_inputs(sig.example_inputs(2, res, res, seed=2))
    first = graphed(**x1)["out_sample"]
    second = graphed(**x2)["out_sample"]
    torch.cuda.synchronize()
    assert torch.equal(first, plain(**x1)["out_sample"])  # same kernels, same bits
    assert torch.equal(second, plain(**x2)["out_sample"])
    assert not torch.equal(first, second)  # the first result survived the second replay


def test_loading_refuses_a_stale_engine(tmp_path):
    from trtq.engine.runner import TensorRTDenoiser

    net, sig, res, _ = _quantized("digits-dit", "w8a8-minmax")
    export = export_onnx(net, tmp_path / "onnx", dtype="float16", batch=(1, 1, 2), model_name="digits-dit")
    record = build_engine(export, cache_dir=tmp_path / "engines", progress=False)
    with pytest.raises(TrtqError, match="stale: it was built for artifact hash"):
        TensorRTDenoiser(record, artifact_sha256="0" * 64)
    manifest = read_engine(record.path).manifest
    assert manifest["components"]["tensorrt_version"] == __import__("tensorrt").__version__
    stale = dataclasses.replace(record, manifest={**manifest, "components": {**manifest["components"],
                                                                            "tensorrt_version": "9.0.0"}})
    with pytest.raises(TrtqError, match="stale: it was built for TensorRT version 9.0.0"):
        TensorRTDenoiser(stale)
