"""CPU-side (no GPU needed): peak memory and time of quantizing a real-size architecture and of one forward, on the CPU, random weights.

    python -m trtq.bench.memory sd15 w8a8-minmax [--latent 32] [--set winograd.steps=10]
    python -m trtq.bench.memory dit-xl-2 float
    python -m trtq.bench.memory dit-xl-2 w4a4-fp4-minmax --release    # FP4 float weights freed after quantize

Prints one JSON line: build / quantize / forward peaks (VmHWM, the resident high-water mark, reset between
phases through /proc/self/clear_refs after glibc's malloc_trim) and wall seconds. One process per measurement: peaks never mix.
Recipe "float" measures the float model's forward only. See docs/real-size.md for the figures.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import time

import torch


def _peak_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _reset_peak() -> None:
    # Hand memory freed by the previous phase back to the OS first (glibc keeps freed heap pages), so a peak
    # counts live memory, not the allocator's leftovers.
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def main() -> None:
    from trtq.architectures import build_architecture, example_inputs

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("recipe")
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="method knob, e.g. winograd.steps=10")
    ap.add_argument("--release", action="store_true", help="trtq.release_float_weights after quantizing")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out: dict = {"model": a.model, "recipe": a.recipe, "latent": a.latent}
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_architecture(a.model)
    args, kwargs = example_inputs(a.model, model, batch=1, latent=a.latent)
    out["params_mib"] = round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20)
    out["build_peak_mib"], out["build_s"] = round(_peak_mib()), round(time.perf_counter() - t0, 1)
    _reset_peak()
    out["start_rss_mib"] = round(_peak_mib())
    if a.recipe != "float":
        import trtq
        from trtq.recipes import get_recipe

        recipe = get_recipe(a.recipe)
        if a.set:
            recipe = recipe.with_overrides({k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)})
        _reset_peak()
        t0 = time.perf_counter()
        trtq.quantize(model, recipe, lambda m: m(*args, **kwargs))
        out["quantize_peak_mib"], out["quantize_s"] = round(_peak_mib()), round(time.perf_counter() - t0, 1)
        if a.release:
            out["released_mib"] = round(trtq.release_float_weights(model) / 2**20)
        out["buffers_mib"] = round(sum(b.numel() * b.element_size() for b in model.buffers()) / 2**20)
    _reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():
        model(*args, **kwargs)
    out["forward_peak_mib"], out["forward_s"] = round(_peak_mib()), round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
