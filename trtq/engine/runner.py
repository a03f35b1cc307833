"""`TensorRTDenoiser`: a built engine as a callable on CUDA tensors, named as the export named them.

    den = TensorRTDenoiser("engines/digits-unet-w8a8-minmax-3f2a...")     # or build_engine(...)'s record
    out = den(sample=x, timestep=t, encoder_hidden_states=c)["out_sample"]

Loading refuses a stale engine (another TensorRT, GPU architecture, artifact or plugins' version: one line
naming the field) and a plan whose sha256 is not the manifest's; plugins are registered first (the
`trtq.plugins` hook, or a callable given) when the graph has plugin nodes. Each call checks names, dtypes and
shapes against the engine's profile in plain Python (`trtq.engine.profile.check_inputs`), binds every tensor
by name, and enqueues with `execute_async_v3` on the current torch stream, so it orders with the caller's
torch work and never synchronizes. `cuda_graph=True` captures the enqueue for the shapes of the call and
replays it while they stay the same (a new shape is captured anew); outputs are then copies of the graph's
static buffers, so a later call cannot overwrite what an earlier one returned.

Everything that touches TensorRT or CUDA here runs only where both exist (tests marked `tensorrt` + `gpu`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from trtq.engine.cache import EngineRecord, check_engine, read_engine
from trtq.engine.plugin_hook import RegisterPlugins, plugin_hooks
from trtq.engine.profile import Shape, check_inputs, profile_from_dict, torch_dtype_name
from trtq.errors import TrtqError

if TYPE_CHECKING:
    import tensorrt as trt

ALIGNMENT = 256  # bytes: what IExecutionContext.set_tensor_address requires of every I/O address


@dataclass
class _Captured:
    shapes: dict[str, Shape]
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class TensorRTDenoiser:
    """A TensorRT engine from the trtq cache, run on the current CUDA device and stream."""

    def __init__(self, engine: str | Path | EngineRecord, *, register_plugins: RegisterPlugins | None = None,
                 plugins_version: str | None = None, artifact_sha256: str | None = None,
                 cuda_graph: bool = False) -> None:
        from trtq.engine.target import current_target, require

        record = engine if isinstance(engine, EngineRecord) else read_engine(engine)
        require("run a TensorRT engine")
        manifest = record.manifest
        names = [p["name"] for p in manifest["plugins"]]
        register, version = plugin_hooks(names, register_plugins, plugins_version)
        check_engine(manifest, current_target(), artifact_sha256, version, where=f"engine {record.path}")
        plan = record.plan_path.read_bytes()
        if hashlib.sha256(plan).hexdigest() != manifest["engine"]["sha256"]:
            raise TrtqError(f"engine {record.path}: {record.plan_path.name} does not have the sha256 its manifest "
                            "records; rebuild the engine")
        if register is not None:
            register()

        import tensorrt as trt

        self.record = record
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.profile = profile_from_dict(manifest["components"]["profile"])
        self.input_dtypes = {v["name"]: torch_dtype_name(v["dtype"]) for v in manifest["inputs"]}
        self.output_dtypes = {v["name"]: torch_dtype_name(v["dtype"]) for v in manifest["outputs"]}
        self.cuda_graph = cuda_graph
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine: trt.ICudaEngine | None = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise TrtqError(f"TensorRT could not deserialize {record.plan_path} (its log lines above say why)")
        self._context: trt.IExecutionContext = self._engine.create_execution_context()
        io = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        if io != set(self.input_dtypes) | set(self.output_dtypes):
            raise TrtqError(f"engine {record.path} has tensors {sorted(io)}, its manifest "
                            f"{sorted(set(self.input_dtypes) | set(self.output_dtypes))}")
        self._captured: _Captured | None = None

    @property
    def input_names(self) -> list[str]:
        return list(self.profile)

    @property
    def output_names(self) -> list[str]:
        return list(self.output_dtypes)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs by name for `inputs` by name (CUDA tensors of the engine's dtypes, shapes in its profile)."""
        check_inputs(self.profile, self.input_dtypes, {n: tuple(t.shape) for n, t in inputs.items()},
                     {n: str(t.dtype).removeprefix("torch.") for n, t in inputs.items()})
        for name, t in inputs.items():
            if t.device != self.device:
                raise TrtqError(f"input {name} is on {t.device}; the engine runs on {self.device}")
        if not self.cuda_graph:
            return self._enqueue(inputs)
        shapes = {n: tuple(inputs[n].shape) for n in self.profile}
        if self._captured is None or self._captured.shapes != shapes:
            self._captured = None  # one graph at a time: its memory goes before the next capture
            self._captured = self._capture(inputs, shapes)
        c = self._captured
        for name, t in inputs.items():
            c.inputs[name].copy_(t)
        c.graph.replay()
        return {name: t.clone() for name, t in c.outputs.items()}

    def _enqueue(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bind by name and enqueue on the current stream. Temporaries (contiguous copies) are freed after the
        enqueue: torch's caching allocator reuses them only for work ordered after it on the same stream."""
        ctx = self._context
        bound = {}
        for name in self.profile:
            t = inputs[name].contiguous()
            if t.data_ptr() % ALIGNMENT:  # a view into a larger tensor (e.g. one half of a CFG batch)
                t = t.clone()
            bound[name] = t
            if not ctx.set_input_shape(name, tuple(t.shape)):
                raise TrtqError(f"TensorRT refused input {name} of shape {tuple(t.shape)}")
            ctx.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name, dtype in self.output_dtypes.items():
            dims = ctx.get_tensor_shape(name)
            shape = [dims[i] for i in range(len(dims))]
            out = torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not ctx.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise TrtqError("TensorRT's execute_async_v3 failed (its log lines above say why)")
        return outputs

    def _capture(self, inputs: Mapping[str, torch.Tensor], shapes: dict[str, Shape]) -> _Captured:
        static = {name: inputs[name].contiguous().clone() for name in self.profile}
        self._enqueue(static)  # TensorRT does its shape-dependent setup in the first enqueue after a change
        torch.cuda.current_stream(self.device).synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # inside, the current stream is the capture stream
            outputs = self._enqueue(static)
        return _Captured(shapes, graph, static, outputs)
