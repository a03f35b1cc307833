"""The converter's second half: an ONNX export -> a cached TensorRT engine -> a callable on CUDA tensors.

    build_engine(export_dir, batch=, resolution=, ...)   -> EngineRecord   (trtq.engine.build)
    TensorRTDenoiser(record_or_engine_dir)(**tensors)    -> outputs by name (trtq.engine.runner)

Modules, each short, and only two of them import TensorRT:
    export_dir   an export's manifest (schema-checked) and graph files; the graph's sha256
    profile      min/opt/max shapes per input; the check of a call against them
    cache        the key, the engine directory and manifest, the refusal of stale engines
    plugin_hook  trtq.plugins' register() and __version__, needed only by graphs with plugin nodes
    build        the cached, locked, atomic build around an injectable build step
    progress     build progress lines (what TensorRT's IProgressMonitor reports)
    target       is TensorRT (the real bindings) and a CUDA GPU here, and which version / architecture
    trt_build    the TensorRT build step (imports tensorrt)
    runner       TensorRTDenoiser (imports tensorrt when an engine is loaded)
See docs/tensorrt.md.
"""

from trtq.engine.build import BuildRequest, build_engine
from trtq.engine.cache import BuildOptions, EngineKey, EngineRecord, Target, check_engine, read_engine

__all__ = ["BuildOptions", "BuildRequest", "EngineKey", "EngineRecord", "Target", "TensorRTDenoiser",
           "build_engine", "check_engine", "read_engine"]


def __getattr__(name: str):
    if name == "TensorRTDenoiser":  # imports torch; kept out of `import trtq.engine`
        from trtq.engine.runner import TensorRTDenoiser

        return TensorRTDenoiser
    raise AttributeError(f"module 'trtq.engine' has no attribute {name!r}")
