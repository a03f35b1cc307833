"""TFMQ-DM (arXiv 2311.16503): temporal feature maintenance quantization, and its BRECQ baseline.

Registers the layer kind "adaround" (`trtq.tfmq.layers`) and two methods that run on it:
- "tfmq": TIB detection (trace), TIAR for the TIB, BRECQ block reconstruction for the rest, FSC.
- "brecq": the Q-Diffusion-lineage baseline: timestep-mixed activation ranges, block reconstruction of
  every layer (TIB layers inside their blocks, like any other layer). Same engine, parts switched off.
`method_args` (all optional):
- tiar (bool): reconstruct the TIB on its own (TIAR); otherwise its layers go through BRECQ with the rest.
- fsc ("none" | "tib" | "all"): per-timestep activation ranges for no layer, the TIB layers, every layer.
- include_condition (bool): count modules that see t and the conditioning (DiT adaLN) as TIB.
- brecq (bool): block-reconstruct the non-TIB layers (false: they keep nearest rounding).
- tiar_iters, iters (int): Adam iterations for the TIB / per block; lr (float); batch (int, samples per
  block iteration); max_calls (int, recorded denoiser calls used; 0 = all).
- on_unknown ("error" | "nearest"): what a per-timestep quantizer does with an uncalibrated timestep.
- progress (bool), seed (int).
Order: record the float model's calls -> detect TIB -> TIAR -> BRECQ (weights; activations float) ->
activation ranges (per timestep where FSC applies) on the same calls, with the learned weights.
"""

from __future__ import annotations

import random
import resource
import time

import torch

from trtq.errors import TrtqError
from trtq.methods import register_method
from trtq.nn.modules import register_layer_kind
from trtq.nn.timestep import route_timesteps, use_timestep_table
from trtq.tfmq.layers import ADAROUND_LAYERS, adaround_layers

register_layer_kind("adaround", ADAROUND_LAYERS)

DEFAULTS = {"tiar": True, "fsc": "all", "include_condition": True, "brecq": True, "tiar_iters": 300,
            "iters": 200, "lr": 1e-3, "batch": 16, "max_calls": 0, "on_unknown": "error", "progress": True,
            "seed": 0}
BRECQ_FIXED = {"tiar": False, "fsc": "none"}


def parse_args(method_args: dict, method: str) -> dict:
    allowed = set(DEFAULTS) - (set(BRECQ_FIXED) if method == "brecq" else set())
    unknown = set(method_args) - allowed
    if unknown:
        raise TrtqError(f"unknown {method} method_args {sorted(unknown)}; known: {sorted(allowed)}")
    a = {**DEFAULTS, **method_args, **(BRECQ_FIXED if method == "brecq" else {})}
    for k in ("tiar", "include_condition", "brecq", "progress"):
        if not isinstance(a[k], bool):
            raise TrtqError(f"{method} method_args {k} must be true or false, got {a[k]!r}")
    for k, least in (("tiar_iters", 0), ("iters", 0), ("batch", 1), ("max_calls", 0), ("seed", 0)):
        if isinstance(a[k], bool) or not isinstance(a[k], int) or a[k] < least:
            raise TrtqError(f"{method} method_args {k} must be an integer >= {least}, got {a[k]!r}")
    if isinstance(a["lr"], bool) or not isinstance(a["lr"], (int, float)) or a["lr"] <= 0:
        raise TrtqError(f"{method} method_args lr must be a positive number, got {a['lr']!r}")
    if a["fsc"] not in ("none", "tib", "all"):
        raise TrtqError(f"{method} method_args fsc must be 'none', 'tib' or 'all', got {a['fsc']!r}")
    if a["on_unknown"] not in ("error", "nearest"):
        raise TrtqError(f"{method} method_args on_unknown must be 'error' or 'nearest', got {a['on_unknown']!r}")
    return a


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def run_tfmq(model, recipe, calib_loop, method: str = "tfmq") -> dict:
    from trtq.tfmq.reconstruct import brecq, calibrate_activations, record_calls, tiar
    from trtq.tfmq.tib import detect_temporal_modules

    a = parse_args(recipe.method_args, method)
    if calib_loop is None:
        raise TrtqError(f"method {method} reconstructs on calibration data: pass calib_loop")
    layers = adaround_layers(model)
    if not layers:
        raise TrtqError(f"method {method} needs layers of kind 'adaround' (set `layer: adaround` in the rules)")
    random.seed(a["seed"])
    torch.manual_seed(a["seed"])
    start = time.perf_counter()
    times = {}
    calls = record_calls(model, calib_loop)
    if a["max_calls"]:
        calls = calls[: a["max_calls"]]
    t0 = time.perf_counter()
    temporal = detect_temporal_modules(model, calls[0].args, calls[0].kwargs, seed=a["seed"])
    times["detect"] = time.perf_counter() - t0
    tib_names = set(temporal.tib(a["include_condition"]))
    tib_layers = {n: m for n, m in layers.items() if n in tib_names}
    time_only = not (set(tib_layers) & set(temporal.time_and_condition))
    if a["fsc"] != "none":
        for n, layer in (layers.items() if a["fsc"] == "all" else tib_layers.items()):
            q = layer.input_quantizer
            if q is not None and not q.scheme.dynamic:
                use_timestep_table(layer, a["on_unknown"])
        route_timesteps(model)
    units = []
    t0 = time.perf_counter()
    if a["tiar"]:
        units.append(tiar(model, calls, tib_layers, time_only, a["tiar_iters"], a["lr"], a["progress"]))
    times["tiar"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if a["brecq"]:
        rest = {n: m for n, m in layers.items() if not (a["tiar"] and n in tib_layers)}
        units += brecq(model, calls, rest, a["iters"], a["lr"], a["batch"], a["progress"])
    times["brecq"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrate_activations(model, calls, a["progress"])
    times["activations"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - start
    stats = {
        "method": method,
        "tib": sorted(tib_layers),
        "tib_time_only": time_only,
        "calls": len(calls),
        "samples": sum(c.batch for c in calls),
        "timesteps": len({float(t) for c in calls for t in c.timestep.tolist()}),
        "units": [{"name": u[0], "layers": u[1], "iters": u[2], "loss": u[3]} for u in units],
        "seconds": {k: round(v, 2) for k, v in times.items()},
        "peak_memory_mb": round(_peak_memory_mb(), 1),
        "peak_memory_kind": "cuda max allocated" if torch.cuda.is_available() else "process peak RSS",
    }
    model.trtq_tfmq_stats = stats  # for reports (not saved in artifacts)
    return stats


@register_method("tfmq")
def tfmq(model, recipe, calib_loop=None) -> dict:
    return run_tfmq(model, recipe, calib_loop, "tfmq")


@register_method("brecq")
def brecq_baseline(model, recipe, calib_loop=None) -> dict:
    return run_tfmq(model, recipe, calib_loop, "brecq")
