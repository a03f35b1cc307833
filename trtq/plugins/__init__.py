"""TensorRT plugins for the trtq ONNX nodes, around the same Triton kernels the torch ops run.

- `specs`: the nodes' attributes (parsed, checked) and output shape/dtype rules.
- `plans`: the launches a node needs (kernels, constexprs, grids, arguments, workspaces) from its attributes
  and shapes; the PTX comes from `triton.compile` for the engine's GPU.
- `harness`: executes a plan with cuda-python (module load + launch), as TensorRT would, to check plans
  against the torch ops on a GPU without TensorRT.
- `tensorrt_defs`: the `tensorrt.plugin` registrations, a thin shell over the above; imported by `register()`
  only where the real TensorRT bindings are installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from trtq.errors import TrtqError
from trtq.export.twins import PLUGIN_VERSION

__all__ = ["PLUGIN_VERSION", "kernels_fingerprint", "register", "tensorrt_available"]


def kernels_fingerprint() -> str:
    """The plugin version plus a hash of the kernel and plan sources: part of an engine's cache key, so an
    engine built with other kernels is never reused."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(PLUGIN_VERSION.encode())
    for rel in ("kernels/winograd.py", "kernels/fp4_gemm.py", "plugins/plans.py", "plugins/specs.py"):
        h.update((root / rel).read_bytes())
    return f"{PLUGIN_VERSION}-{h.hexdigest()[:16]}"


def tensorrt_available() -> bool:
    """The real TensorRT bindings (`tensorrt-stubs` alone leaves an empty namespace package)."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def register() -> None:
    """Register the trtq plugins with TensorRT (needs TensorRT >= 10.9 with `tensorrt.plugin`). Safe to call
    again: the registrations run once, when `tensorrt_defs` is first imported."""
    if not tensorrt_available():
        raise TrtqError("registering the trtq TensorRT plugins needs the TensorRT Python bindings (tensorrt >= "
                        "10.9); they are not installed here")
    from trtq.plugins import tensorrt_defs  # noqa: F401  (the decorators register on import)
