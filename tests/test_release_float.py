"""`trtq.release_float_weights`: an FP4 model without its float weights computes exactly what it did, saves
artifacts that name the float model, loads onto the float model, traces and lowers; whatever needs the float
weights afterwards says so in one TrtqError line. Tiny DiT (diffusers class, published structure)."""

import copy
import json

import pytest
import torch
import torch._dynamo as dynamo
import torch._dynamo.testing

import trtq
from trtq import TrtqError
from trtq.architectures import build_architecture, example_inputs
from trtq.artifact import MANIFEST, module_fingerprint
from trtq.efficientdm.qalora import QALoRAFP4Train, make_adapter
from trtq.export.lower import lower
from trtq.hadamard import random_signs
from trtq.methods import METHODS
from trtq.nn.fp4_linear import FP4Linear
from trtq.recipes import get_recipe

RECIPE = "w4a4-fp4-minmax"


def _bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _first(out):
    return out if isinstance(out, torch.Tensor) else out[0]


@pytest.fixture
def dit():
    """(float model, quantized copy, inputs, calibration loop)."""
    torch.manual_seed(0)
    float_model = build_architecture("dit-xl-2", tiny=True).eval()
    args, kwargs = example_inputs("dit-xl-2", float_model, batch=2)
    loop = lambda m: m(*args, **kwargs)  # noqa: E731
    model = trtq.quantize(copy.deepcopy(float_model), get_recipe(RECIPE), loop)
    return float_model, model, (args, kwargs), loop


def _run(model, inputs):
    args, kwargs = inputs
    with torch.no_grad():
        return _first(model(*args, **kwargs))


def _fp4_layers(model):
    return [m for m in model.modules() if isinstance(m, FP4Linear)]


def test_release_keeps_forward_bit_identical_and_frees_the_fp4_weights(dit):
    float_model, model, inputs, _ = dit
    before = _run(model, inputs)
    fp4_bytes = _bytes(m.weight for m in _fp4_layers(model))
    assert trtq.release_float_weights(model) == fp4_bytes > 0
    assert all(m.weight is None and "weight" not in dict(m.named_parameters()) for m in _fp4_layers(model))
    assert torch.equal(_run(model, inputs), before)
    assert not any(k.endswith(".weight") and isinstance(model.get_submodule(k[:-7]), FP4Linear)
                   for k in model.state_dict())
    assert torch.equal(_run(copy.deepcopy(model).to("cpu").float(), inputs), before)  # empty slots are skipped
    # What the model holds (parameters + buffers) is now below the float model's parameters alone.
    float_bytes = _bytes(float_model.parameters())
    assert _bytes(model.parameters()) + _bytes(model.buffers()) < float_bytes
    assert _bytes(model.parameters()) == float_bytes - fp4_bytes
    assert trtq.release_float_weights(model) == 0  # nothing left; the recorded fingerprint stays


def test_fingerprint_survives_release_save_and_load(dit, tmp_path):
    float_model, model, inputs, _ = dit
    fingerprint = module_fingerprint(float_model)
    assert module_fingerprint(model) == fingerprint
    trtq.save_artifact(model, tmp_path / "kept", "tiny-dit")
    trtq.release_float_weights(model)
    assert module_fingerprint(model) == fingerprint
    trtq.save_artifact(model, tmp_path / "released", "tiny-dit")
    manifests = [json.loads((tmp_path / d / MANIFEST).read_text()) for d in ("kept", "released")]
    assert manifests[0]["model"]["fingerprint"] == manifests[1]["model"]["fingerprint"] == fingerprint
    loaded = trtq.load_artifact(copy.deepcopy(float_model), tmp_path / "released", "tiny-dit")
    assert torch.equal(_run(loaded, inputs), _run(model, inputs))
    # A float model with other weights is still refused.
    other = copy.deepcopy(float_model)
    with torch.no_grad():
        _fp4_candidate = next(m for n, m in other.named_modules() if n.endswith("attn1.to_q"))
        _fp4_candidate.weight.mul_(1.01)
    with pytest.raises(TrtqError, match="was made for model 'tiny-dit'"):
        trtq.load_artifact(other, tmp_path / "released")


def test_load_artifact_releases_unless_asked_to_keep(dit, tmp_path):
    float_model, model, inputs, _ = dit
    trtq.save_artifact(model, tmp_path / "a", "tiny-dit")
    released = trtq.load_artifact(copy.deepcopy(float_model), tmp_path / "a")
    kept = trtq.load_artifact(copy.deepcopy(float_model), tmp_path / "a", keep_float_weights=True)
    assert all(m.float_weight_released for m in _fp4_layers(released))
    assert not any(m.float_weight_released for m in _fp4_layers(kept))
    assert torch.equal(_run(released, inputs), _run(kept, inputs))
    assert module_fingerprint(released) == module_fingerprint(kept) == module_fingerprint(float_model)
    assert "float weight released" in repr(_fp4_layers(released)[0])


def test_paths_that_need_the_float_weights_refuse_in_one_line(dit):
    float_model, model, inputs, loop = dit
    trtq.release_float_weights(model)
    layer = _fp4_layers(model)[0]
    hqdit = get_recipe("w4a4-fp4-hqdit")
    with pytest.raises(TrtqError, match=r"^hqdit needs the float weights of the fp4 layers, but those of \S+attn1"):
        METHODS["hqdit"](model, hqdit, loop)
    with pytest.raises(TrtqError, match="^efficientdm needs the float weights"):
        METHODS["efficientdm"](model, get_recipe("w4a4-fp4-efficientdm"), loop)
    with pytest.raises(TrtqError, match=r"^set_rotation .* needs the float weights of this fp4 layer \[\d+x\d+\]"):
        layer.set_rotation(random_signs(layer.in_features, 0))
    with pytest.raises(TrtqError, match="^rotated_weight needs the float weights") as e:
        layer.rotated_weight()
    assert "\n" not in str(e.value)
    with pytest.raises(TrtqError, match="^QALoRA training needs the float weights"):
        QALoRAFP4Train(layer, make_adapter(torch.zeros(layer.out_features, layer.in_features), "lora", 2, 1, 0))
    layer.float_forward = True  # HQ-DiT's float capture / EfficientDM's float teacher
    with pytest.raises(TrtqError, match="^float_forward .* needs the float weights"):
        _run(model, inputs)
    layer.float_forward = False
    with pytest.raises(TrtqError, match="already quantized"):
        trtq.quantize(model, hqdit, loop)
    # A part of the model records no fingerprint: refused rather than hashed without its released weights.
    block = model.transformer_blocks[0]
    with pytest.raises(TrtqError, match="cannot fingerprint this module"):
        module_fingerprint(block)


def test_release_needs_a_quantized_model_and_leaves_other_kinds_alone():
    torch.manual_seed(0)
    model = build_architecture("dit-xl-2", tiny=True).eval()
    with pytest.raises(TrtqError, match="^release_float_weights takes a model quantized"):
        trtq.release_float_weights(model)
    args, kwargs = example_inputs("dit-xl-2", model, batch=1)
    params = _bytes(model.parameters())
    trtq.quantize(model, get_recipe("w8a8-minmax"), lambda m: m(*args, **kwargs))
    assert trtq.release_float_weights(model) == 0  # fake-quantized layers read their float weight
    assert _bytes(model.parameters()) == params and "trtq_float_fingerprint" not in model.__dict__


def test_released_model_compiles_in_one_graph_and_lowers(dit):
    _, model, inputs, _ = dit
    expected = _run(model, inputs)
    trtq.release_float_weights(model)
    args, kwargs = inputs
    dynamo.reset()
    frames = dynamo.testing.CompileCounter()
    with torch.no_grad():
        compiled = _first(torch.compile(model, backend=frames, fullgraph=True)(*args, **kwargs))
    assert frames.frame_count == 1
    torch.testing.assert_close(compiled, expected)
    lowered = lower(model)  # the export's lowering reads the packed codes and scales only
    assert torch.equal(_run(lowered, inputs), expected)


def test_released_model_exports_onnx_naming_the_float_model(dit, tmp_path):
    float_model, model, _, _ = dit
    trtq.release_float_weights(model)
    trtq.export_onnx(model, tmp_path / "onnx", model_name="tiny-dit")
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["model"]["fingerprint"] == module_fingerprint(float_model)


def test_qalora_adapters_refuse_released_fp4_weights(dit):
    """Called directly (not through the EfficientDM method), attaching updates to a released model is the
    same one-line refusal, not an AttributeError on the missing weight."""
    from trtq.efficientdm.qalora import attach_adapters

    _, model, _, _ = dit
    trtq.release_float_weights(model)
    with pytest.raises(TrtqError, match="^QALoRA adapters needs the float weights"):
        attach_adapters(model, rank=2)


def test_recipes_quantized_on_the_fly_release_their_float_weights():
    """`trtq eval|run|export --recipe` quantize a copy that only samples, saves or exports: its FP4 layers hold
    no float weight, the model's own denoiser keeps all of its, and the copy still samples."""
    from trtq.eval.evaluate import QuantSpec, SamplingConfig, quantized_denoiser
    from trtq.pipeline import DigitsPipeline, balanced_labels
    from trtq.zoo import load_model

    model = load_model("digits-dit")
    q = quantized_denoiser(model, QuantSpec(recipe="w4a8-fp4"), SamplingConfig(calib_samples=2, steps=2,
                                                                                 progress=False))
    layers = [m for m in q.modules() if isinstance(m, FP4Linear)]
    assert layers and all(m.weight is None for m in layers)
    assert all(p is not None for p in model.denoiser.parameters())
    assert module_fingerprint(q) == module_fingerprint(model.denoiser)
    images = DigitsPipeline(model)(balanced_labels(2), num_inference_steps=2, denoiser=q, progress=False)
    assert torch.isfinite(images).all()
