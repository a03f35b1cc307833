"""The runners behind an `AcceleratedDenoiser`, one per backend, and which backends this machine has.

    eager        the quantized torch module as it is (fake quant + trtq ops): the reference
    torch        the same module under torch.compile (its Winograd/FP4 layers call the trtq custom ops, which
                 run the Triton kernels on CUDA); CUDA graphs on CUDA
    onnxruntime  the exported ONNX graph (`trtq.export_onnx`), plugin nodes run through their local functions
    tensorrt     an engine built by `trtq.engine` from the same export (needs the real TensorRT bindings)

Module runners are called exactly like the denoiser they wrap. Graph runners take the named tensors of the
export signature (`trtq.export.inputs`): `feed_from_call` turns a pipeline's call into them, refusing
arguments the graph has no input for, and `check_feed` holds every call to the graph's profiles (and, for
graphs with per-timestep scale tables, to the calibrated timesteps).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.export.inputs import DenoiserSignature, signature_of
from trtq.runtime.denoiser import ShapeOutsideProfile

BACKENDS = ("eager", "torch", "onnxruntime", "tensorrt")


# ------------------------------------------------------------------------------------------ what is present
def tensorrt_missing() -> str | None:
    """Why the tensorrt backend cannot run here, or None. The real bindings, not `tensorrt-stubs` alone (which
    makes `import tensorrt` succeed as an empty namespace package)."""
    try:
        import tensorrt
    except ImportError:
        return "the TensorRT Python bindings (`tensorrt`) are not installed"
    if not hasattr(tensorrt, "Builder"):
        return "`tensorrt` imports but has no Builder: only type stubs (tensorrt-stubs) are installed, not TensorRT"
    if not torch.cuda.is_available():
        return "TensorRT needs a CUDA GPU and torch sees none"
    try:
        import trtq.engine  # noqa: F401
    except ImportError as e:
        return f"trtq.engine (the TensorRT engine builder and runner) does not import: {e}"
    return None


def onnxruntime_missing() -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
    return None


def available_backends() -> dict[str, str | None]:
    """Each backend -> None when it can run on this machine, else the reason it cannot."""
    return {"eager": None, "torch": None, "onnxruntime": onnxruntime_missing(), "tensorrt": tensorrt_missing()}


def auto_order(device: torch.device) -> tuple[str, ...]:
    """The backends `backend="auto"` tries, fastest first (docs/runtime.md says why).

    On CUDA: a TensorRT engine, then torch.compile with the Triton kernels and CUDA graphs, then ONNX Runtime.
    On CPU the trtq ops run their PyTorch references: ONNX Runtime first (measured faster than eager on both zoo
    models, docs/runtime.md), then eager. torch.compile is not tried on CPU: inductor's code generation took
    85 s for the zoo UNet on 2 cores, more than any short run saves; ask for backend="torch" to get it.
    """
    if device.type == "cuda":
        return ("tensorrt", "torch", "onnxruntime", "eager")
    return ("onnxruntime", "eager")


# ------------------------------------------------------------------------------------------ module runners
class ModuleRunner(nn.Module):
    """Calls a torch denoiser as it is (the eager backend)."""

    takes_module_call = True

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any):
        return self.module(*args, **kwargs)


class TorchRunner(ModuleRunner):
    """The denoiser under `torch.compile`. With int8_gemm (default) its W8A8 linears and 1x1 convs run
    `trtq::int8_gemm` (`trtq.runtime.lower`: INT8 codes, `torch._int_mm` on CUDA) instead of fake quantization. With cuda_graphs
    (default on CUDA) the compiled graph is replayed as a CUDA graph (mode "reduce-overhead"); its outputs
    live in the graph's memory pool and are overwritten by the next replay, so they are copied out before
    the pipeline keeps them."""

    def __init__(self, module: nn.Module, cuda_graphs: bool | None = None, compile_backend: str = "inductor",
                 mode: str | None = None, int8_gemm: bool = True):
        from trtq.runtime.lower import lower_int8_layers

        module, lowered = lower_int8_layers(module) if int8_gemm else (module, 0)
        super().__init__(module)
        self.int8_layers = lowered  # how many linears and 1x1 convs run trtq::int8_gemm
        ref = next(module.parameters(), None)
        on_cuda = ref is not None and ref.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise TrtqError("cuda_graphs=True needs the denoiser on a CUDA device; move the pipeline with "
                            "pipe.to('cuda') before accelerating")
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        if mode is None and compile_backend == "inductor":
            mode = "reduce-overhead" if self.cuda_graphs else "max-autotune-no-cudagraphs" if on_cuda else None
        self.compiled = torch.compile(module, backend=compile_backend, mode=mode)

    def forward(self, *args: Any, **kwargs: Any):
        if not self.cuda_graphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()
        out = self.compiled(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
        out.sample = out.sample.clone()
        return out


# ------------------------------------------------------------------------------------------ graph runners
_NP_DTYPES = {"float": "float32", "float16": "float16", "double": "float64", "int64": "int64", "int32": "int32"}


def _none_or_empty(v: Any) -> bool:
    return v is None or (isinstance(v, dict) and all(x is None for x in v.values()))


class GraphRunner:
    """What the ONNX Runtime and TensorRT runners share: the signature, the profiles, the feed."""

    takes_module_call = False
    name = "graph"

    def __init__(self, manifest: dict, signature: DenoiserSignature):
        self.manifest, self.signature = manifest, signature
        graph_inputs = [i["name"] for i in manifest["inputs"]]
        if graph_inputs != signature.input_names():
            raise TrtqError(f"the graph's inputs {graph_inputs} are not the {signature.kind} signature "
                            f"{signature.input_names()}: it was exported from another kind of denoiser")
        self.dtypes = {i["name"]: i["dtype"] for i in manifest["inputs"]}
        self.profiles = {k: (tuple(v["min"]), tuple(v["max"])) for k, v in manifest["profiles"].items()}

    def feed_from_call(self, call: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The graph's named inputs from a pipeline's call to the denoiser (bound to its signature)."""
        kind = self.signature.kind
        call = dict(call)
        sample = call.pop("sample", None)
        if sample is None:
            sample = call.pop("hidden_states")
        batch = sample.shape[0]
        t = torch.as_tensor(call.pop("timestep"), device=sample.device)
        t = (t.reshape(-1).expand(batch) if t.numel() == 1 else t.reshape(batch)).float()
        feed = {"sample": sample, "timestep": t}
        if "encoder_hidden_states" in self.signature.input_names():
            feed["encoder_hidden_states"] = call.pop("encoder_hidden_states")
        added = call.pop("added_cond_kwargs", None) or {}
        if kind == "unet-sdxl":
            added = dict(added)
            feed["text_embeds"], feed["time_ids"] = added.pop("text_embeds"), added.pop("time_ids")
        if kind == "dit":
            feed["class_labels"] = call.pop("class_labels")
        if kind == "pixart":
            mask = call.pop("encoder_attention_mask", None)
            if mask is not None and not bool(torch.as_tensor(mask).bool().all()):
                raise TrtqError("the exported PixArt graph has no encoder_attention_mask input, and this call masks "
                                "caption tokens; use backend='torch' or 'eager' for masked captions")
        if not _none_or_empty(added):
            call["added_cond_kwargs"] = added
        used = [k for k, v in call.items() if not _none_or_empty(v)]
        if used:
            raise TrtqError(f"the {self.name} graph has no input for {', '.join(used)} (its inputs: "
                            f"{', '.join(self.signature.input_names())}); run such calls with backend='torch' or "
                            "'eager'")
        return feed

    def check_feed(self, feed: dict[str, torch.Tensor]) -> None:
        self._check_timesteps(feed["timestep"])
        for name, x in feed.items():
            lo, hi = self.profiles[name]
            shape = tuple(x.shape)
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                hint = " (classifier-free guidance doubles the batch)" if name == "sample" and \
                    len(shape) == len(lo) and shape[0] > hi[0] else ""
                raise ShapeOutsideProfile(f"{name} of shape {list(shape)} is outside the {self.name} graph's "
                                          f"profile: min {list(lo)}, max {list(hi)}{hint}")

    def _check_timesteps(self, t: torch.Tensor) -> None:
        """A graph with per-timestep scale tables takes the nearest calibrated row (a graph cannot raise): the
        strict check the PyTorch model makes happens here, against the manifest's calibrated timesteps."""
        tables = self.manifest.get("timestep_tables")
        if not tables:
            return
        known = torch.tensor(tables["timesteps"], dtype=torch.float32)
        values = t.detach().float().cpu().reshape(-1)
        missing = sorted({float(v) for v in values if not bool((known == v).any())})
        if not missing:
            return
        msg = (f"timestep(s) {', '.join(f'{v:g}' for v in missing)} were not calibrated for this {self.name} "
               f"graph's per-timestep scales (calibrated: {', '.join(f'{v:g}' for v in tables['timesteps'])})")
        if tables.get("on_unknown") != "nearest":
            raise TrtqError(f"{msg}; calibrate with this scheduler and step count, or allow on_unknown='nearest'")
        warnings.warn(f"trtq: {msg}; using the nearest calibrated step's scales", stacklevel=4)

    def run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


class OnnxRuntimeRunner(GraphRunner):
    """An exported graph on ONNX Runtime: CUDAExecutionProvider when the pipeline is on CUDA and ORT has it,
    else the CPU provider. Basic graph optimizations only: ORT's extended level swaps DequantizeLinear+MatMul
    for its own integer kernels, which compute something else (docs/export.md)."""

    name = "onnxruntime"

    def __init__(self, export_dir: Path, signature: DenoiserSignature, device: torch.device,
                 threads: int | None = None):
        import onnxruntime as ort

        super().__init__(read_export_manifest(export_dir), signature)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        if threads:
            so.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.providers = providers
        self.tmp_dir: str | None = None
        self.session = ort.InferenceSession(str(Path(export_dir) / self.manifest["onnx"]["file"]), so,
                                            providers=providers)

    def run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {k: v.detach().cpu().numpy().astype(_NP_DTYPES[self.dtypes[k]]) for k, v in feed.items()}
        return torch.from_numpy(self.session.run(None, arrays)[0])


class TensorRTRunner(GraphRunner):
    """A TensorRT engine through `trtq.engine`'s runner, which binds tensors by name and runs on the current
    torch stream. This class only adds the pipeline-facing half (feed, profile checks) shared with ORT."""

    name = "tensorrt"

    def __init__(self, engine_dir: Path, signature: DenoiserSignature):
        missing = tensorrt_missing()
        if missing:
            raise TrtqError(f"backend 'tensorrt': {missing}")
        import trtq.engine as engine

        load = getattr(engine, "load_engine", None)
        if load is None:
            raise TrtqError("backend 'tensorrt': trtq.engine has no load_engine(engine_dir) to run an engine with")
        super().__init__(read_export_manifest(engine_dir), signature)
        self.engine = load(engine_dir)

    def run(self, feed: dict[str, torch.Tensor]) -> torch.Tensor:
        dtypes = {"float16": torch.float16, "float": torch.float32, "bfloat16": torch.bfloat16}
        return self.engine({k: v.to(dtypes.get(self.dtypes[k], v.dtype)).contiguous() for k, v in feed.items()})


def read_export_manifest(export_dir: Path) -> dict:
    """The manifest.json of an ONNX export (or of an engine directory, which carries the export's)."""
    path = Path(export_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrtqError(f"{export_dir} is not a trtq ONNX export or engine: cannot read {path} ({e})") from None
    if not isinstance(manifest, dict) or not {"inputs", "profiles", "model"} <= set(manifest):
        raise TrtqError(f"{path} lacks inputs/profiles/model: not a trtq ONNX export or engine manifest")
    return manifest


