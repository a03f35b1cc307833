"""trtq.accelerate / trtq.restore: the pipeline's own __call__ runs unchanged with an accelerated denoiser.

Tiny random-weight pipelines of the four diffusers classes (tests/runtime_pipelines.py; SD 1.5, SDXL and
PixArt need `transformers` for their classes to exist, DiT does not) and the zoo sampler. What is checked:
swap and restore (also of the pipeline's config entry), the call signature and output type with return_dict
both ways, the eager backend bit for bit equal to the hand-quantized module, ONNX Runtime close to it, the
profile check and its fallback, refusals (LoRA, foreign sources, missing TensorRT).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import trtq
from trtq import TrtqError
from trtq.export.inputs import signature_of
from trtq.nn import QuantLinear
from trtq.pipeline import DigitsPipeline, balanced_labels
from trtq.runtime import AcceleratedDenoiser, accelerate, denoiser_attr, restore
from trtq.runtime.backends import tensorrt_missing
from trtq.zoo import load_model

sys.path.insert(0, str(Path(__file__).parent))
from runtime_pipelines import PIPELINES, TEXT_TOKENS, build_pipeline, quantized_copy, run  # noqa: E402

pytest.importorskip("onnxruntime")


def _needs_transformers(kind: str) -> None:
    if kind != "dit":
        pytest.importorskip("transformers", reason=f"diffusers' {kind} pipeline class needs transformers")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("kind", PIPELINES)
def test_diffusers_pipeline_swap_restore_and_call_parity(kind):
    """eager: the pipeline output equals the one with the quantized module put in by hand; every attribute a
    pipeline reads answers the same; return_dict both ways; restore gives back the float module and config."""
    _needs_transformers(kind)
    pipe, call = build_pipeline(kind)
    attr = denoiser_attr(pipe)
    original = getattr(pipe, attr)
    config_entry = pipe.config[attr]
    fp = run(pipe, call)
    q = quantized_copy(original)
    setattr(pipe, attr, q)
    by_hand = run(pipe, call)
    setattr(pipe, attr, original)
    assert _rel(by_hand, fp) > 1e-4  # quantization shows, so equality below means something

    assert accelerate(pipe, q, backend="eager") is pipe
    acc = getattr(pipe, attr)
    assert isinstance(acc, AcceleratedDenoiser) and acc.backend == "eager"
    assert acc.config is original.config and acc.dtype == original.dtype and acc.device == original.device
    assert torch.equal(run(pipe, call), by_hand)

    x = signature_of(original).example_inputs(2, 16, 16, seed=4)
    sample = x.pop("sample")
    kwargs = _call_kwargs(kind, x)
    out_q = q(sample, **kwargs)
    out_acc = acc(sample, **kwargs)
    assert type(out_acc) is type(out_q) and torch.equal(out_acc.sample, out_q.sample)
    tup = acc(sample, **kwargs, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == 1 and torch.equal(tup[0], out_q.sample)

    assert restore(pipe) is pipe
    assert getattr(pipe, attr) is original and pipe.config[attr] == config_entry
    assert torch.equal(run(pipe, call), fp)
    with pytest.raises(TrtqError, match="not accelerated"):
        restore(pipe)


def _call_kwargs(kind: str, x: dict) -> dict:
    """The example inputs as the pipelines pass them (SDXL's extra conditioning in added_cond_kwargs)."""
    if kind == "sdxl":
        return dict(timestep=x["timestep"], encoder_hidden_states=x["encoder_hidden_states"],
                    added_cond_kwargs={"text_embeds": x["text_embeds"], "time_ids": x["time_ids"]})
    if kind == "pixart":
        return dict(x, added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    return x


@pytest.mark.parametrize("kind", PIPELINES)
def test_diffusers_pipeline_on_onnxruntime(kind):
    """The exported graph runs inside each pipeline's own __call__, close to the quantized torch module, and
    the graph wrapper builds the output type both ways."""
    _needs_transformers(kind)
    pipe, call = build_pipeline(kind)
    attr = denoiser_attr(pipe)
    original = getattr(pipe, attr)
    q = quantized_copy(original)
    setattr(pipe, attr, q)
    by_hand = run(pipe, call)
    setattr(pipe, attr, original)
    accelerate(pipe, q, backend="onnxruntime", text_tokens=TEXT_TOKENS, batch=(1, 2, 2))
    acc = getattr(pipe, attr)
    calls = []
    q.register_forward_hook(lambda *_: calls.append(1))
    got = run(pipe, call)
    assert not calls  # the graph ran, not the torch module
    assert _rel(got, by_hand) < 0.05
    x = signature_of(original).example_inputs(2, 16, 16, seed=4)
    x["encoder_hidden_states"] = torch.randn(2, TEXT_TOKENS, 32) if "encoder_hidden_states" in x else None
    sample = x.pop("sample")
    kwargs = {k: v for k, v in _call_kwargs(kind, x).items() if v is not None}
    out = acc(sample, **kwargs)
    assert type(out) is type(q(sample, **kwargs))
    assert torch.equal(acc(sample, **kwargs, return_dict=False)[0], out.sample)
    restore(pipe)


@pytest.fixture(scope="module")
def zoo_dit():
    """digits-dit quantized by hand (w8a8-minmax, short calibration) and saved as an artifact."""
    model = load_model("digits-dit")
    pipe = DigitsPipeline(model)
    q = trtq.quantize(copy.deepcopy(model.denoiser), "w8a8-minmax",
                      lambda m: pipe(balanced_labels(2), num_inference_steps=2, denoiser=m, progress=False))
    return model, q


def test_zoo_eager_from_artifact_equals_quantizing_by_hand(zoo_dit, tmp_path):
    model, q = zoo_dit
    trtq.save_artifact(q, tmp_path / "art", model_name=model.name)
    pipe = DigitsPipeline(model)
    labels = balanced_labels(3)
    by_hand = pipe(labels, num_inference_steps=3, denoiser=q, progress=False)
    accelerate(pipe, tmp_path / "art", backend="eager")
    assert isinstance(pipe.denoiser, AcceleratedDenoiser)
    assert torch.equal(pipe(labels, num_inference_steps=3, progress=False), by_hand)
    restore(pipe)
    assert pipe.denoiser is model.denoiser


def test_zoo_onnxruntime_close_to_eager_and_profile_limits(zoo_dit, tmp_path):
    """ORT on the zoo DiT: one forward within 2 % of the quantized module; sampled images within the
    whole-model bound of tests/test_export.py, max(10 %, 1.5 x the quantization error) (a quantized network is
    discontinuous: a last-ulp difference flips a code, and sampling compounds it); a batch outside the
    export's profile is a one-line error, or runs on the fallback with a warning."""
    model, q = zoo_dit
    pipe = DigitsPipeline(model)
    labels = balanced_labels(2)  # with guidance: denoiser batches of 4
    eager = pipe(labels, num_inference_steps=3, denoiser=q, progress=False)
    bound = max(0.10, 1.5 * _rel(eager, pipe(labels, num_inference_steps=3, progress=False)))
    accelerate(pipe, q, backend="onnxruntime", batch=(1, 4, 4), onnx_dir=tmp_path / "onnx", threads=1)
    assert (tmp_path / "onnx" / "model.onnx").is_file()
    x, t, c = torch.randn(4, 1, 32, 32), torch.full((4,), 500.0), torch.tensor([1, 2, 3, 10])
    out = pipe.denoiser(x, t, c)
    assert type(out) is type(q(x, t, c)) and _rel(out.sample, q(x, t, c).sample) < 0.02
    assert torch.equal(pipe.denoiser(x, timestep=t, class_labels=c, return_dict=False)[0], out.sample)
    assert _rel(pipe(labels, num_inference_steps=3, progress=False), eager) < bound
    with pytest.raises(TrtqError, match=r"sample of shape \[6, 1, 32, 32\] is outside .*max \[4, 1, 32, 32\]"):
        pipe(balanced_labels(3), num_inference_steps=1, progress=False)
    restore(pipe)

    accelerate(pipe, tmp_path / "onnx", backend="onnxruntime")  # the graph alone: no torch module to fall back on
    with pytest.raises(TrtqError, match="outside"):
        pipe(balanced_labels(3), num_inference_steps=1, progress=False)
    restore(pipe)
    with pytest.raises(TrtqError, match="needs the torch module"):
        accelerate(pipe, tmp_path / "onnx", backend="onnxruntime", fallback="eager")

    accelerate(pipe, q, backend="onnxruntime", batch=(1, 4, 4), fallback="eager")
    with pytest.warns(UserWarning, match="outside .* running this call on the eager backend"):
        out = pipe(balanced_labels(3), num_inference_steps=2, progress=False)
    assert torch.equal(out, pipe(balanced_labels(3), num_inference_steps=2, denoiser=q, progress=False))
    restore(pipe)


def test_torch_backend_traces_the_quantized_model(zoo_dit):
    """torch.compile through dynamo (the 'eager' compile backend keeps CI fast: inductor's CPU code generation
    takes minutes on 2 cores); the compiled call gives the lowered module's result (its W8A8 linears as
    trtq::int8_gemm), which is within float summation order of the fake-quantized one."""
    model, q = zoo_dit
    pipe = DigitsPipeline(model)
    accelerate(pipe, q, backend="torch", compile_backend="eager")
    runner = pipe.denoiser.runner
    assert pipe.denoiser.backend == "torch" and not runner.cuda_graphs
    assert runner.int8_layers == sum(isinstance(m, QuantLinear) for m in q.modules()) > 0
    x, t, c = torch.randn(2, 1, 32, 32), torch.full((2,), 500.0), torch.tensor([1, 10])
    with torch.no_grad():
        got = pipe.denoiser(x, t, c).sample
        assert torch.equal(got, runner.module(x, t, c).sample)
        assert _rel(got, q(x, t, c).sample) < 0.02
    assert pipe(balanced_labels(1), num_inference_steps=1, progress=False).shape == (1, 1, 32, 32)
    restore(pipe)


def test_int8_gemm_lowering_matches_each_fake_quantized_linear(zoo_dit):
    """Same codes and scales as the QuantLinear: per layer only float summation order differs."""
    from trtq.runtime.lower import Int8Linear, int8_gemm_form, lower_int8_layers

    _, q = zoo_dit
    gen = torch.Generator().manual_seed(0)
    forms = 0
    for m in q.modules():
        form = int8_gemm_form(m)
        if form is None:
            continue
        forms += 1
        x = torch.randn(8, m.in_features, generator=gen) * 3
        assert _rel(form(x), m(x)) < 1e-5
    lowered, n = lower_int8_layers(q)
    assert n == forms > 0 and sum(isinstance(m, Int8Linear) for m in lowered.modules()) == n
    assert not any(isinstance(m, Int8Linear) for m in q.modules())  # the user's module is untouched


def test_int8_gemm_lowering_of_pointwise_convs_in_a_unet():
    """A UNet's 1x1 convs (resnet shortcuts, proj_in/proj_out) become Int8Conv1x1 and compute what the
    fake-quantized conv computes, for NCHW and channels-last inputs; 3x3 and strided convs stay as they are."""
    from trtq.eval.evaluate import SamplingConfig, calibration_loop
    from trtq.nn import QuantConv2d
    from trtq.runtime.lower import Int8Conv1x1, int8_gemm_form, lower_int8_layers

    model = load_model("digits-unet")
    q = trtq.quantize(copy.deepcopy(model.denoiser), "w8a8-minmax",
                      calibration_loop(model, SamplingConfig(calib_samples=2, steps=2, progress=False)))
    gen = torch.Generator().manual_seed(0)
    convs = [m for m in q.modules() if isinstance(m, QuantConv2d)]
    pointwise = [m for m in convs if m.kernel_size == (1, 1)]
    assert pointwise and len(pointwise) < len(convs)
    for m in convs:
        form = int8_gemm_form(m)
        assert isinstance(form, Int8Conv1x1) == (m in pointwise)
        if form is not None:
            x = torch.randn(2, m.in_channels, 8, 8, generator=gen) * 3
            assert _rel(form(x), m(x)) < 1e-5
            y = form(x.to(memory_format=torch.channels_last))
            assert _rel(y, m(x)) < 1e-5
    lowered, n = lower_int8_layers(q)
    assert sum(isinstance(m, Int8Conv1x1) for m in lowered.modules()) == len(pointwise) and n > len(pointwise)
    x, t, labels = torch.randn(2, 1, 32, 32, generator=gen), torch.full((2,), 500.0), torch.tensor([1, 7])
    # whole model: a summation-order difference can move a later layer's input across a rounding boundary,
    # so the bound is the one the other whole-model checks here use (the per-layer checks above are 1e-5)
    with torch.no_grad():
        assert _rel(model.predict_noise(x, t, labels, denoiser=lowered),
                    model.predict_noise(x, t, labels, denoiser=q)) < 0.02


def test_auto_picks_a_backend_that_runs_here(zoo_dit):
    model, q = zoo_dit
    pipe = DigitsPipeline(model)
    accelerate(pipe, q)
    if not torch.cuda.is_available():
        assert pipe.denoiser.backend in ("onnxruntime", "eager")
    x, t, c = torch.randn(2, 1, 32, 32), torch.full((2,), 500.0), torch.tensor([1, 10])
    assert _rel(pipe.denoiser(x, t, c).sample, q(x, t, c).sample) < 0.02
    restore(pipe)


def test_refusals(zoo_dit, tmp_path):
    model, q = zoo_dit
    pipe = DigitsPipeline(model)
    with pytest.raises(TrtqError, match="unknown backend 'trt'"):
        accelerate(pipe, q, backend="trt")
    other = load_model("digits-unet")
    with pytest.raises(TrtqError, match="other weights"):
        accelerate(DigitsPipeline(other), q, backend="eager")
    with pytest.raises(TrtqError, match="neither a trtq artifact"):
        accelerate(pipe, tmp_path, backend="eager")
    accelerate(pipe, q, backend="eager")
    with pytest.raises(TrtqError, match="already accelerated"):
        accelerate(pipe, q, backend="eager")
    for method in ("load_lora_adapter", "fuse_lora", "set_adapters", "load_attn_procs"):
        with pytest.raises(TrtqError, match="fuse the LoRA into the float model first"):
            getattr(pipe.denoiser, method)({})
    with pytest.raises(TrtqError, match="restore"):
        pipe.denoiser.save_pretrained(tmp_path / "x")
    restore(pipe)
    lora_loaded = copy.deepcopy(model.denoiser)
    lora_loaded._hf_peft_config_loaded = True  # what diffusers' PEFT integration sets once an adapter is loaded
    pipe.denoiser = lora_loaded
    with pytest.raises(TrtqError, match="LoRA adapters loaded but not fused"):
        accelerate(pipe, None, backend="eager")


def _record_moves(module: torch.nn.Module, monkeypatch) -> list:
    """Where `module` (that object, not a copy of it) is sent by `.to`, in order; it still moves."""
    moves, to = [], torch.nn.Module.to

    def recording_to(self, *args, **kwargs):
        if self is module:
            moves.append(str(args[0]))
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", recording_to)
    return moves


def test_offloading_the_float_denoiser(zoo_dit, tmp_path, monkeypatch):
    """offload_original: the float denoiser goes to the CPU before the artifact is loaded (onto a CPU copy)
    and comes back with restore, or at once when accelerate fails; off by default on a CPU pipeline."""
    model, q = zoo_dit
    trtq.save_artifact(q, tmp_path / "art", model_name=model.name)
    pipe = DigitsPipeline(model)
    labels = balanced_labels(2)
    want = pipe(labels, num_inference_steps=2, denoiser=q, progress=False)
    moves = _record_moves(model.denoiser, monkeypatch)
    accelerate(pipe, tmp_path / "art", backend="eager")  # CPU pipeline: the default leaves it alone
    assert moves == [] and pipe.denoiser.offloaded_from is None
    restore(pipe)

    accelerate(pipe, tmp_path / "art", backend="eager", offload_original=True)
    assert moves == ["cpu"] and pipe.denoiser.offloaded_from == torch.device("cpu")
    assert pipe.denoiser.device == torch.device("cpu")  # the anchor says where the original was
    assert torch.equal(pipe(labels, num_inference_steps=2, progress=False), want)
    restore(pipe)
    assert moves == ["cpu", "cpu"] and pipe.denoiser is model.denoiser

    moves.clear()
    other = load_model("digits-unet")
    calib = lambda m: DigitsPipeline(other)(balanced_labels(1), num_inference_steps=1, denoiser=m,  # noqa: E731
                                            progress=False)
    trtq.save_artifact(trtq.quantize(copy.deepcopy(other.denoiser), "w8a8-minmax", calib), tmp_path / "other",
                       model_name=other.name)
    with pytest.raises(TrtqError):
        accelerate(pipe, tmp_path / "other", backend="eager", offload_original=True)
    assert moves == ["cpu", "cpu"] and pipe.denoiser is model.denoiser  # moved back on failure
    with pytest.raises(TrtqError, match="nothing to offload"):
        accelerate(pipe, None, backend="eager", offload_original=True)


@pytest.mark.gpu
def test_offloaded_float_denoiser_leaves_the_gpu(tmp_path):
    """On CUDA (the default there): after accelerate with an FP4 artifact the GPU holds the released quantized
    denoiser and not the float one; the images equal the non-offloaded run; restore puts it back on the GPU."""
    model = load_model("digits-dit")
    pipe = DigitsPipeline(model)
    q = trtq.quantize(copy.deepcopy(model.denoiser), "w4a8-fp4",
                      lambda m: pipe(balanced_labels(2), num_inference_steps=2, denoiser=m, progress=False))
    trtq.save_artifact(q, tmp_path / "art", model_name=model.name)
    model.to("cuda")
    labels = balanced_labels(2)
    accelerate(pipe, tmp_path / "art", backend="eager", offload_original=False)
    kept = torch.cuda.memory_allocated()
    want = pipe(labels, num_inference_steps=2, progress=False)
    restore(pipe)
    __import__("gc").collect()  # the first accelerated copy is gone before the second is measured
    accelerate(pipe, tmp_path / "art", backend="eager")
    assert next(model.denoiser.parameters()).device.type == "cpu"
    float_bytes = sum(p.numel() * p.element_size() for p in model.denoiser.parameters())
    assert torch.cuda.memory_allocated() <= kept - float_bytes + (1 << 20)
    assert torch.equal(pipe(labels, num_inference_steps=2, progress=False), want)
    restore(pipe)
    assert next(model.denoiser.parameters()).device.type == "cuda"


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is usable here: the refusal does not apply")
def test_tensorrt_backend_says_what_is_missing(zoo_dit):
    model, q = zoo_dit
    pipe = DigitsPipeline(model)
    with pytest.raises(TrtqError, match=r"backend 'tensorrt': .*(TensorRT|tensorrt|CUDA)"):
        accelerate(pipe, q, backend="tensorrt")
    assert pipe.denoiser is model.denoiser  # nothing swapped


@pytest.mark.gpu
def test_torch_backend_on_cuda_with_cuda_graphs():
    """torch.compile (inductor) with CUDA graphs on the zoo DiT with FP4 layers (Triton kernels) and INT8
    layers: the sampled images close to the eager quantized module on the same GPU."""
    model = load_model("digits-dit").to("cuda")
    pipe = DigitsPipeline(model)
    q = trtq.quantize(copy.deepcopy(model.denoiser), "w4a8-fp4",
                      lambda m: pipe(balanced_labels(4), num_inference_steps=3, denoiser=m, progress=False))
    labels = balanced_labels(4)
    ref = pipe(labels, num_inference_steps=4, denoiser=q, progress=False)
    accelerate(pipe, q, backend="torch")
    assert pipe.denoiser.runner.cuda_graphs
    for _ in range(2):  # the second call replays the captured graphs
        assert _rel(pipe(labels, num_inference_steps=4, progress=False), ref) < 0.05
    restore(pipe)
