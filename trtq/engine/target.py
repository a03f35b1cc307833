"""Is TensorRT here, and for which GPU would it build? The one place that asks.

`tensorrt-stubs` (installed for mypy) makes `import tensorrt` succeed as an empty namespace package, so the
real bindings are recognized by `tensorrt.Builder`, never by the import alone.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trtq.engine.cache import Target
from trtq.errors import TrtqError

INSTALL_HINT = "pip install tensorrt; 10.9+ for the trtq plugins"


def tensorrt_module() -> ModuleType | None:
    """The real TensorRT bindings, or None (not installed, or only the type stubs)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") else None


def missing() -> list[str]:
    """What this machine lacks to build or run an engine, in words (empty: nothing)."""
    import torch

    lacks = []
    if tensorrt_module() is None:
        lacks.append(f"TensorRT's Python bindings are not installed ({INSTALL_HINT})")
    if not torch.cuda.is_available():
        lacks.append("no CUDA GPU is visible to torch")
    return lacks


def require(action: str = "build a TensorRT engine") -> None:
    """One TrtqError line naming everything missing, before any work or any write."""
    lacks = missing()
    if lacks:
        raise TrtqError(f"cannot {action} on this machine: {'; and '.join(lacks)}")


def current_target() -> Target:
    """This machine's TensorRT version and current GPU (call `require()` first)."""
    import torch

    trt = tensorrt_module()
    if trt is None or not torch.cuda.is_available():
        require()
    assert trt is not None
    major, minor = torch.cuda.get_device_capability()
    return Target(str(trt.__version__), f"{major}.{minor}", torch.cuda.get_device_name())
