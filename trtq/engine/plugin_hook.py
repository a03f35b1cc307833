"""How the engine layer reaches the trtq TensorRT plugins: a registration callable and a version string.

The plugins live in `trtq.plugins` (`register()` registers every plugin with TensorRT's plugin registry;
`__version__`, or `kernels_fingerprint()` where the module computes it from the kernel sources, names their
implementation, so an engine built with other plugin kernels is rebuilt, not run).
A graph without plugin nodes (the Q/DQ recipes) needs neither. Callers may pass both explicitly (tests,
or plugins from elsewhere); otherwise `trtq.plugins` is imported only when a graph has plugin nodes, and its
absence is one line naming the plugins the graph needs.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

from trtq.errors import TrtqError

RegisterPlugins = Callable[[], None]


def plugin_hooks(plugins: Sequence[str], register: RegisterPlugins | None = None,
                 version: str | None = None) -> tuple[RegisterPlugins | None, str | None]:
    """(register, version) for a graph whose plugin nodes are `plugins` (names); (None, None) for none."""
    if not plugins:
        return None, None
    if register is None or version is None:
        need = f"this graph has trtq plugin nodes ({', '.join(sorted(set(plugins)))})"
        try:
            mod = importlib.import_module("trtq.plugins")
        except ModuleNotFoundError as e:
            if e.name not in ("trtq.plugins", "tensorrt.plugin", "tensorrt"):
                raise
            raise TrtqError(f"{need} but the trtq TensorRT plugins cannot be imported ({e.name} is missing)") from None
        register = register if register is not None else getattr(mod, "register", None)
        if version is None:
            version = getattr(mod, "__version__", None)
            fingerprint = getattr(mod, "kernels_fingerprint", None)
            if version is None and callable(fingerprint):
                version = fingerprint()
        if not callable(register) or not isinstance(version, str):
            raise TrtqError(f"{need} but trtq.plugins has no register() and __version__ (or kernels_fingerprint()) "
                            "to build with")
    return register, version
