"""`trtq.accelerate(pipe, source, backend)` and `trtq.restore(pipe)`.

`source` says what to run:
    None                   the pipeline's own float denoiser (e.g. torch.compile of FP, the baseline to beat)
    an nn.Module           a quantized copy of the pipeline's denoiser (`trtq.quantize`, `trtq.load_artifact`)
    an artifact directory  loaded onto a copy of the pipeline's denoiser (`trtq quantize --out`)
    an ONNX export dir     `trtq export --out` (onnxruntime / tensorrt backends)
    an engine directory    `trtq build` (tensorrt backend)
Every source is checked against the pipeline's own float weights (the fingerprint artifacts and exports
record), so a foreign artifact or graph is refused, never run.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.runtime import backends as B
from trtq.runtime.denoiser import AcceleratedDenoiser

DENOISER_ATTRS = ("unet", "transformer", "denoiser")  # diffusers UNet pipelines, DiT/PixArt, the zoo sampler
FALLBACKS = (None, "torch", "eager")


def denoiser_attr(pipe: Any) -> str:
    """The attribute of `pipe` that holds its denoiser."""
    for name in DENOISER_ATTRS:
        if isinstance(getattr(pipe, name, None), nn.Module):
            return name
    raise TrtqError(f"{type(pipe).__name__} has no denoiser to accelerate (looked for a torch module at "
                    f"{', '.join('pipe.' + a for a in DENOISER_ATTRS)})")


def _source_kind(source: Any) -> str:
    if source is None:
        return "float"
    if isinstance(source, nn.Module):
        return "module"
    path = Path(source)
    if not path.is_dir():
        raise TrtqError(f"{path} is not a directory: give a quantized module, an artifact, an ONNX export or an "
                        "engine directory")
    if (path / "engine.plan").is_file():
        return "engine"
    try:
        import json

        kind = json.loads((path / "manifest.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind == "trtq-artifact":
        return "artifact"
    if kind == "trtq-onnx":
        return "onnx"
    raise TrtqError(f"{path} is neither a trtq artifact, an ONNX export nor an engine directory "
                    "(its manifest.json says none of kind trtq-artifact / trtq-onnx, and there is no engine.plan)")


def _check_same_weights(original: nn.Module, fingerprint: str | None, what: str) -> None:
    from trtq.artifact import module_fingerprint

    mine = module_fingerprint(original)
    if fingerprint != mine:
        raise TrtqError(f"{what} was made from other weights (fingerprint {str(fingerprint)[:12]}) than this "
                        f"pipeline's {type(original).__name__} ({mine[:12]})")


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def accelerate(pipe: Any, source: Any = None, backend: str = "auto", *, fallback: str | None = None,
               batch: tuple[int, int, int] = (1, 2, 8), resolution: tuple[int, int, int] | None = None,
               dtype: str | None = None, text_tokens: int | None = None, onnx_dir: str | Path | None = None,
               cuda_graphs: bool | None = None, compile_backend: str = "inductor", int8_gemm: bool = True,
               threads: int | None = None, offload_original: bool | None = None) -> Any:
    """Swap the pipeline's denoiser for an accelerated one with the same call, config and outputs; returns pipe.

    backend: "eager", "torch", "onnxruntime", "tensorrt", or "auto" (the first that works here, in the order
    of `backends.auto_order`; `pipe.<denoiser>.backend` says which was taken).
    fallback: "torch" / "eager": a call a graph backend cannot take (batch, resolution outside the profile)
    runs on that backend instead, with a warning; None (default): such a call raises TrtqError.
    batch, resolution, dtype, onnx_dir: the export made for the onnxruntime backend from a module or artifact
    (batch MIN:OPT:MAX; latent resolution, default the model's sample_size; dtype default float32 on CPU,
    float16 on CUDA; text_tokens: the length of the prompt embeddings, fixed in the graph, default the pipeline
    tokenizer's model_max_length; onnx_dir keeps the export, default a temporary directory removed with the
    denoiser).
    cuda_graphs, compile_backend, int8_gemm: the torch backend (CUDA graphs default on when the model is on
    CUDA; int8_gemm: W8A8 linears as `trtq::int8_gemm`, see `trtq.runtime.lower`).
    threads: ONNX Runtime's intra-op threads.
    offload_original: move the float denoiser to the CPU while the pipeline runs accelerated (`restore` moves it
    back), so the GPU holds only what runs: default on when it is on a GPU and the source is not the float
    model itself. An artifact is then loaded onto a CPU copy and moved to the GPU: the GPU never holds two
    float copies, nor an FP4 layer's float weights.
    """
    attr = denoiser_attr(pipe)
    original = getattr(pipe, attr)
    if isinstance(original, AcceleratedDenoiser):
        raise TrtqError(f"pipe.{attr} is already accelerated ({original.backend}); trtq.restore(pipe) first")
    if getattr(original, "_hf_peft_config_loaded", False):
        raise TrtqError(f"pipe.{attr} has LoRA adapters loaded but not fused: fuse_lora() and unload_lora() them "
                        "into the float weights, then quantize and accelerate the fused model (docs/runtime.md)")
    if fallback not in FALLBACKS:
        raise TrtqError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    if backend != "auto" and backend not in B.BACKENDS:
        raise TrtqError(f"unknown backend {backend!r}; choose one of auto, {', '.join(B.BACKENDS)}")

    kind = _source_kind(source)
    device = _device_of(original)
    anchor = next(original.parameters(), None)
    if offload_original and kind == "float":
        raise TrtqError("offload_original: the float denoiser is what runs (source None); nothing to offload")
    offload = (device.type != "cpu" and kind != "float") if offload_original is None else bool(offload_original)
    if offload:
        original.to("cpu")
    try:
        accelerated = _accelerate(pipe, attr, original, source, kind, backend, fallback, device, batch=batch,
                                  resolution=resolution, dtype=dtype, text_tokens=text_tokens, onnx_dir=onnx_dir,
                                  cuda_graphs=cuda_graphs, compile_backend=compile_backend, int8_gemm=int8_gemm,
                                  threads=threads, anchor=None if anchor is None else (anchor.dtype, device))
    except BaseException:
        if offload:  # nothing lost on failure: the pipeline keeps its denoiser where it was
            original.to(device)
        raise
    accelerated.offloaded_from = device if offload else None
    setattr(pipe, attr, accelerated)
    return pipe


def _load_onto_copy(original: nn.Module, artifact, device: torch.device) -> nn.Module:
    """The artifact loaded onto a copy of the float denoiser, made where the float one is, then on `device`."""
    from trtq.artifact import load_artifact

    return load_artifact(copy.deepcopy(original).eval(), artifact).to(device)


def _accelerate(pipe, attr, original, source, kind, backend, fallback, device, *, batch, resolution, dtype,
                text_tokens, onnx_dir, cuda_graphs, compile_backend, int8_gemm, threads, anchor):
    module: nn.Module | None = None  # the torch denoiser, where the source gives one
    graph_dir: Path | None = None
    if kind == "float":
        module = original
    elif kind == "module":
        _check_same_weights(original, _fingerprint(source), "the quantized module")
        module = source
    elif kind == "artifact":
        module = _load_onto_copy(original, source, device)
    else:
        from trtq.runtime.backends import read_export_manifest

        graph_dir = Path(source)
        manifest = read_export_manifest(graph_dir)
        _check_same_weights(original, manifest["model"].get("fingerprint"), f"{kind} {graph_dir}")
        artifact = manifest.get("artifact")
        if artifact and Path(artifact).is_dir():  # the torch module behind the graph, for fallback / torch
            module = _load_onto_copy(original, artifact, device)

    candidates = B.auto_order(device) if backend == "auto" else (backend,)
    reasons = []
    for name in candidates:
        try:
            runner = _make_runner(name, kind, module, graph_dir, original, device, batch=batch,
                                  resolution=resolution, dtype=dtype, text_tokens=text_tokens or text_tokens_of(pipe),
                                  onnx_dir=onnx_dir, cuda_graphs=cuda_graphs, compile_backend=compile_backend,
                                  int8_gemm=int8_gemm, threads=threads)
            break
        except TrtqError as e:
            if backend != "auto":
                raise
            reasons.append(f"{name}: {e}")
    else:
        raise TrtqError("no backend can run this here: " + "; ".join(reasons))

    fb: nn.Module | None = None
    if fallback is not None and not runner.takes_module_call:
        if module is None:
            raise TrtqError(f"fallback={fallback!r} needs the torch module behind the graph: give the artifact "
                            "(or the quantized module) instead of the graph, or an export whose manifest names "
                            "its artifact")
        if fallback == "torch":
            fb = B.TorchRunner(module, cuda_graphs=False, compile_backend=compile_backend, int8_gemm=int8_gemm)
        else:
            fb = B.ModuleRunner(module)
    accelerated = AcceleratedDenoiser(original, runner, name, fb, fallback if fb is not None else None,
                                      anchor=anchor)
    accelerated.skipped_backends = reasons  # why "auto" passed over the faster ones, for reports
    if isinstance(runner, B.OnnxRuntimeRunner) and runner.tmp_dir is not None:
        weakref.finalize(accelerated, shutil.rmtree, runner.tmp_dir, True)
    return accelerated


def _fingerprint(module: nn.Module) -> str:
    from trtq.artifact import module_fingerprint

    return module_fingerprint(module)


def text_tokens_of(pipe: Any) -> int | None:
    """How many prompt-embedding tokens the pipeline feeds its denoiser: its own padding length where its call
    has one (PixArt), else its tokenizer's length (77 for CLIP), the zoo label encoder's tokens; None when
    it cannot tell (the export's default then)."""
    import inspect

    tokenizer = getattr(pipe, "tokenizer", None)
    # A pipeline that pads prompts to its own length (PixArt: max_sequence_length=120, not its T5 tokenizer's
    # 512) says so in its call's defaults.
    call = getattr(pipe, "__call__", None)
    param = inspect.signature(call).parameters.get("max_sequence_length") if callable(call) else None
    if tokenizer is not None and param is not None and isinstance(param.default, int) and param.default > 0:
        return param.default
    length = getattr(tokenizer, "model_max_length", None)
    if isinstance(length, int) and 0 < length < 100_000:
        return length
    tokens = getattr(getattr(getattr(pipe, "model", None), "label_encoder", None), "tokens", None)
    return tokens if isinstance(tokens, int) else None


def _make_runner(name: str, kind: str, module, graph_dir, original, device, *, batch, resolution, dtype,
                 text_tokens, onnx_dir, cuda_graphs, compile_backend, int8_gemm, threads):
    from trtq.export.inputs import signature_of

    if name in ("eager", "torch"):
        if module is None:
            raise TrtqError(f"backend {name!r} runs a torch module; {graph_dir} is a graph: give the artifact or "
                            "the quantized module")
        if name == "eager":
            return B.ModuleRunner(module)
        return B.TorchRunner(module, cuda_graphs=cuda_graphs, compile_backend=compile_backend, int8_gemm=int8_gemm)
    signature = signature_of(original)
    if name == "onnxruntime":
        missing = B.onnxruntime_missing()
        if missing:
            raise TrtqError(f"backend 'onnxruntime': {missing}")
        if kind == "engine":
            raise TrtqError("backend 'onnxruntime' runs an ONNX export, not a TensorRT engine directory")
        tmp = None
        if graph_dir is None:
            graph_dir, tmp = _export(module, device, batch, resolution, dtype, text_tokens, onnx_dir)
        runner = B.OnnxRuntimeRunner(graph_dir, signature, device, threads=threads)
        runner.tmp_dir = tmp  # an export made here: removed with the accelerated denoiser
        return runner
    missing = B.tensorrt_missing()
    if missing:
        raise TrtqError(f"backend 'tensorrt': {missing}")
    if kind != "engine":
        raise TrtqError("backend 'tensorrt' runs an engine directory built by `trtq build` (engines/<key>/); "
                        "build one from this model's export first")
    return B.TensorRTRunner(graph_dir, signature)


def _export(module, device, batch, resolution, dtype, text_tokens, onnx_dir) -> tuple[Path, str | None]:
    """The module exported for ONNX Runtime: into onnx_dir, or a temporary directory (second item)."""
    from trtq.export import export_onnx
    from trtq.export.inputs import signature_of

    dtype = dtype or ("float16" if device.type == "cuda" else "float32")
    tmp = None
    if onnx_dir is None:
        tmp = tempfile.mkdtemp(prefix="trtq-accelerate-")
        onnx_dir = Path(tmp) / "onnx"
    size = int(getattr(module.config, "sample_size", 32) or 32)
    resolution = tuple(resolution) if resolution else (size, size, size)
    signature = signature_of(module)
    if text_tokens:
        signature.text_tokens = text_tokens
    example = signature.example_inputs(batch[1], resolution[1], resolution[1])
    export_onnx(copy.deepcopy(module).cpu(), onnx_dir, example, dtype=dtype, batch=tuple(batch),
                resolution=resolution)
    return Path(onnx_dir), tmp


def restore(pipe: Any) -> Any:
    """Put back the float denoiser that `accelerate` replaced (onto the device it was offloaded from); returns pipe."""
    attr = denoiser_attr(pipe)
    current = getattr(pipe, attr)
    if not isinstance(current, AcceleratedDenoiser):
        raise TrtqError(f"pipe.{attr} is not accelerated by trtq: nothing to restore")
    if current.offloaded_from is not None:
        current.original.to(current.offloaded_from)
    setattr(pipe, attr, current.original)
    return pipe
