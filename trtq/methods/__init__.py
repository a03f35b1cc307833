"""Quantization methods: procedures that run after a recipe's layers are swapped in, before calibration.

A method is a function `method(model, recipe, calib_loop)` registered under the name a recipe's `method:`
field uses. It may learn or search parameters (transform scales, clipping ranges, formats, rotations) and
store them in the quantized layers as buffers / per-layer config, which is what artifacts save.
"""

from __future__ import annotations

from typing import Callable

METHODS: dict[str, Callable] = {}


def register_method(name: str):
    def deco(fn: Callable) -> Callable:
        METHODS[name] = fn
        return fn

    return deco


# The built-in methods register themselves (and their layer kinds) on import. They may import trtq.nn,
# trtq.quantizer, trtq.formats, trtq.scheme, trtq.observers, trtq.ops and this module, never trtq.quantize
# or the top-level package (which import this module).
BUILTIN_METHODS = ("trtq.methods.winograd", "trtq.methods.hqdit", "trtq.methods.smoothquant", "trtq.methods.tfmq",
                   "trtq.methods.efficientdm")


def _load_builtin_methods() -> None:
    import importlib

    for module in BUILTIN_METHODS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise


_load_builtin_methods()
