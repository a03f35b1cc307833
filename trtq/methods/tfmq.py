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
- tiar_iters, iters (int): Adam iterations for the TIB / per block; lr (float, default 1e-2: ten times
  BRECQ's, since these runs are a few hundred iterations, not 20k); batch (int, samples per block
  iteration); max_calls (int, recorded denoiser calls reconstruction uses, evenly spaced; 0 = all).
- on_unknown ("error" | "nearest"): what a per-timestep quantizer does with an uncalibrated timestep.
- progress (bool), seed (int).
Order: record the float model's calls -> detect TIB -> TIAR -> BRECQ (weights; activations float) ->
activation ranges (per timestep where FSC applies) on the same calls, with the learned weights.
"""

from __future__ import annotations

import random
import resource
import threading
import time

import torch

from trtq.errors import TrtqError
from trtq.methods import register_method
from trtq.nn.modules import register_layer_kind
from trtq.nn.timestep import route_timesteps, unroute_timesteps, use_timestep_table
from trtq.tfmq.layers import ADAROUND_LAYERS, adaround_layers

register_layer_kind("adaround", ADAROUND_LAYERS)

DEFAULTS = {"tiar": True, "fsc": "all", "include_condition": True, "brecq": True, "tiar_iters": 300,
            "iters": 200, "lr": 1e-2, "batch": 32, "max_calls": 0, "on_unknown": "error", "progress": True,
            "seed": 0}
BRECQ_FIXED = {"tiar": False, "fsc": "none"}
DETECT_SAMPLES = 4


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


class PeakMemory:
    """Peak memory while the block runs, above what was in use when it started (MiB): CUDA's allocator peak on
    a GPU, else the process's resident set sampled every 20 ms (the process-wide ru_maxrss would carry the
    peaks of whatever ran before in the same process)."""

    def __enter__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = _rss()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.done.set()
            self.thread.join()
            self.peak = max(self.peak, _rss())
        self.mib = (self.peak - self.base) / 2**20
        self.kind = "CUDA allocated" if self.cuda else "process RSS"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_tfmq(model, recipe, calib_loop, method: str = "tfmq") -> dict:
    a = parse_args(recipe.method_args, method)
    if calib_loop is None:
        raise TrtqError(f"method {method} reconstructs on calibration data: pass calib_loop")
    layers = adaround_layers(model)
    if not layers:
        raise TrtqError(f"method {method} needs layers of kind 'adaround' (set `layer: adaround` in the rules)")
    random.seed(a["seed"])
    torch.manual_seed(a["seed"])
    try:
        with PeakMemory() as peak:
            stats = _run(model, calib_loop, a, layers, method)
    except BaseException:
        unroute_timesteps(model)  # trtq.quantize puts the float layers back; the hook goes too
        raise
    stats["peak_memory_mib"] = round(peak.mib, 1)
    stats["peak_memory_kind"] = f"increase of {peak.kind} during the method"
    model.trtq_tfmq_stats = stats  # for reports (not saved in artifacts)
    return stats


def _run(model, calib_loop, a: dict, layers: dict, method: str) -> dict:
    from trtq.tfmq.reconstruct import rows_of, brecq, calibrate_activations, record_calls, tiar
    from trtq.tfmq.tib import detect_temporal_modules

    start = time.perf_counter()
    times = {}
    calls = record_calls(model, calib_loop)
    # Reconstruction may use an evenly spaced subset (every step still represented when max_calls >= steps);
    # activation ranges always see every call, so every calibrated timestep has its table row.
    stride = -(-len(calls) // a["max_calls"]) if a["max_calls"] else 1
    recon_calls = calls[::stride]
    t0 = time.perf_counter()
    first = recon_calls[0]
    few = torch.arange(min(first.batch, DETECT_SAMPLES))  # a few samples with distinct labels suffice
    temporal = detect_temporal_modules(model, rows_of(first.args, few, first.batch),
                                       rows_of(first.kwargs, few, first.batch), seed=a["seed"])
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
        units.append(tiar(model, recon_calls, tib_layers, time_only, a["tiar_iters"], a["lr"], a["progress"]))
    times["tiar"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if a["brecq"]:
        rest = {n: m for n, m in layers.items() if not (a["tiar"] and n in tib_layers)}
        units += brecq(model, recon_calls, rest, a["iters"], a["lr"], a["batch"], a["progress"])
    times["brecq"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calibrate_activations(model, calls, a["progress"])
    times["activations"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - start
    return {
        "method": method,
        "tib": sorted(tib_layers),
        "tib_time_only": time_only,
        "calls": len(calls),
        "reconstruction_calls": len(recon_calls),
        "samples": sum(c.batch for c in calls),
        "timesteps": len({float(t) for c in calls for t in c.timestep.tolist()}),
        "units": [{"name": u[0], "layers": u[1], "iters": u[2], "loss": u[3]} for u in units],
        "seconds": {k: round(v, 2) for k, v in times.items()},
    }


@register_method("tfmq")
def tfmq(model, recipe, calib_loop=None) -> dict:
    return run_tfmq(model, recipe, calib_loop, "tfmq")


@register_method("brecq")
def brecq_baseline(model, recipe, calib_loop=None) -> dict:
    return run_tfmq(model, recipe, calib_loop, "brecq")
