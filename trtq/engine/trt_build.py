"""The TensorRT build step: parse the ONNX graph strongly typed, one optimization profile, the builder's
optimization level, the shared timing cache, progress on stderr -> engine.plan.

Imported only after `trtq.engine.target.require()` found the real bindings (it subclasses
`tensorrt.IProgressMonitor` at import). Type-checked with mypy against `tensorrt-stubs` (tests/
test_engine_typing.py). API names follow TensorRT 10.x; the flags newer than 10.9 are looked up by name.
"""

from __future__ import annotations

import sys

import tensorrt as trt

from trtq.engine.build import BuildRequest
from trtq.engine.progress import BuildProgress
from trtq.errors import TrtqError


class ProgressMonitor(trt.IProgressMonitor):
    """TensorRT's progress callbacks, forwarded to `BuildProgress` (plain Python, tested without TensorRT).
    TensorRT requires the monitor to outlive the build: build_plan keeps it referenced until it returns."""

    def __init__(self, progress: BuildProgress) -> None:
        trt.IProgressMonitor.__init__(self)
        self.progress = progress

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        self.progress.start(phase_name, parent_phase, num_steps)

    def step_complete(self, phase_name: str, step: int) -> bool:
        return self.progress.step(phase_name, step)

    def phase_finish(self, phase_name: str) -> None:
        self.progress.finish(phase_name)


def build_plan(request: BuildRequest) -> bytes | None:
    """Build request.onnx_path into request.plan_path; return the updated serialized timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    if request.plugins:
        assert request.register_plugins is not None  # plugin_hooks gave one for a graph with plugin nodes
        request.register_plugins()
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # precisions come from the graph
    aot = getattr(trt.NetworkDefinitionCreationFlag, "PREFER_AOT_PYTHON_PLUGINS", None)  # 10.9+
    if request.plugins and aot is not None:  # the kernels go into the engine: no Python at run time
        flags |= 1 << int(aot)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    override = getattr(trt.OnnxParserFlag, "ENABLE_PLUGIN_OVERRIDE", None)  # 10.15+: a plugin over a local function
    if request.plugins and override is not None:
        parser.set_flag(override)
    if not parser.parse_from_file(str(request.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        first = " ".join(errors[0].split()) if errors else "no error recorded"
        raise TrtqError(f"TensorRT's ONNX parser refused {request.onnx_path.name}: {first}{more}")

    config = builder.create_builder_config()
    config.builder_optimization_level = request.options.optimization_level
    profile = builder.create_optimization_profile()
    for name, p in request.profile.items():
        profile.set_shape(name, trt.Dims(list(p.min)), trt.Dims(list(p.opt)), trt.Dims(list(p.max)))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(request.timing_cache or b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        print("[trtq build] the timing cache was refused (another TensorRT or GPU); building without it",
              file=sys.stderr)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    monitor = ProgressMonitor(BuildProgress()) if request.progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TrtqError("TensorRT could not build the engine (its log lines above say why)")
    with open(request.plan_path, "wb") as f:
        f.write(memoryview(plan))
    return bytes(memoryview(config.get_timing_cache().serialize()))
