"""`trtq profile`: how long a pipeline takes, per image and per denoising step, on each backend, and where a
denoiser call spends its time by layer class.

Latency: `repeats` timed pipeline runs after `warmup` untimed ones (compilation, CUDA-graph capture and ORT's
first-run allocations stay out of the numbers); CUDA events on CUDA, `time.perf_counter` on CPU; median and
90th percentile. Peak memory: `torch.cuda.max_memory_allocated` on CUDA; on CPU the process's peak resident
set (`ru_maxrss`, which never goes down: an upper bound for each row, labelled so).

Layer classes (3x3 conv / Winograd, other conv, linear, attention, norm, other) come from the torch profiler
on three calls of the torch module (their mean): every layer runs inside a `record_function` range named
after its class, and a class's time is its ranges' time minus the ranges nested in them (attention is the
attention module's own work: the q/k/v/out linears inside it count as linear). On CUDA the ranges' device (kernel)
time is used, on CPU their CPU time. Graph backends (ONNX Runtime, TensorRT) have no torch layers: they get
end-to-end numbers only.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_map

LAYER_CLASSES = ("conv3x3", "conv_other", "linear", "attention", "norm", "other")
SCHEMA_VERSION = 1

_STATS = {"type": "object", "required": ["median", "p90"],
          "properties": {"median": {"type": "number", "minimum": 0}, "p90": {"type": "number", "minimum": 0}}}
# profile.json, as JSON Schema (draft 2020-12): what `trtq profile` promises to write.
PROFILE_JSON_SCHEMA = {
    "type": "object",
    "required": ["schema_version", "model", "device", "cpu_numbers", "timer", "settings", "versions", "latency",
                 "layer_classes"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "model": {"type": "string"},
        "device": {"type": "string"},
        "cpu_numbers": {"type": "boolean"},
        "timer": {"type": "string"},
        "settings": {"type": "object", "required": ["batch", "cfg_batch", "steps", "warmup", "repeats", "seed"]},
        "latency": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["config", "backend", "requested_backend", "pipeline_ms", "per_image_ms", "per_step_ms",
                         "memory"],
            "properties": {
                "config": {"type": "string"}, "backend": {"enum": ["eager", "torch", "onnxruntime", "tensorrt"]},
                "pipeline_ms": {**_STATS, "required": ["median", "p90", "runs"]},
                "per_image_ms": _STATS, "per_step_ms": _STATS,
                "memory": {"type": "object", "required": ["peak_bytes", "kind"],
                           "properties": {"peak_bytes": {"type": "integer", "minimum": 0}}}}}},
        "layer_classes": {"type": "object", "required": ["unit", "source", "classes", "by_config"],
                          "properties": {"by_config": {"type": "object", "additionalProperties": {
                              "type": "object", "required": [*LAYER_CLASSES, "total"],
                              "additionalProperties": {"type": "number", "minimum": 0}}}}},
    },
}


# ------------------------------------------------------------------------------------------ layer classes
def layer_class(module: nn.Module) -> str | None:
    """The class a module's own time counts to, or None for containers (their time goes to their children,
    what is left of it to "other")."""
    name = type(module).__name__
    if isinstance(module, nn.Conv2d) or name.startswith("Winograd"):
        return "conv3x3" if tuple(module.kernel_size) == (3, 3) else "conv_other"
    if isinstance(module, nn.Linear) or name == "FP4Linear":
        return "linear"
    if name in ("Attention", "AttnProcessor", "JointAttention"):
        return "attention"
    if isinstance(module, (nn.GroupNorm, nn.LayerNorm)) or name.endswith("Norm") or name.startswith("RMSNorm"):
        return "norm"
    return None


@contextmanager
def labelled_layers(model: nn.Module):
    """Each classified module runs inside record_function("trtq/<class>") while this is active."""
    handles = []
    for mod in model.modules():
        cls = layer_class(mod)
        if cls is None:
            continue

        def pre(m, args, _cls=cls):
            rf = torch.profiler.record_function(f"trtq/{_cls}")
            rf.__enter__()
            m._trtq_ranges = getattr(m, "_trtq_ranges", []) + [rf]

        def post(m, args, out):
            m._trtq_ranges.pop().__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for mod in model.modules():
            mod.__dict__.pop("_trtq_ranges", None)


def layer_class_times(module: nn.Module, call, cuda: bool, calls: int = 3) -> dict[str, float]:
    """Milliseconds per layer class of a `call()` of `module` (see the module docstring), plus "total": the
    mean over `calls` profiled calls (one call's ranges are noisy on a shared CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with labelled_layers(module), profile(activities=activities) as prof:
        for _ in range(calls):
            with torch.profiler.record_function("trtq/total"):
                call()
        if cuda:
            torch.cuda.synchronize()
    events = prof.events()

    def incl(e) -> float:
        return (e.device_time_total if cuda else e.cpu_time_total) / 1e3

    def labelled_below(e):
        for c in e.cpu_children:
            if c.name.startswith("trtq/"):
                yield c
            else:
                yield from labelled_below(c)

    times = dict.fromkeys(LAYER_CLASSES, 0.0)
    total = 0.0
    for e in events:
        if not e.name.startswith("trtq/"):
            continue
        if e.name == "trtq/total":
            total += incl(e)
            continue
        cls = e.name[len("trtq/"):]
        times[cls] += incl(e) - sum(incl(c) for c in labelled_below(e))
    times["other"] = max(0.0, total - sum(v for k, v in times.items() if k != "other"))
    return {**{k: round(v / calls, 4) for k, v in times.items()}, "total": round(total / calls, 4)}


# ------------------------------------------------------------------------------------------ latency
class _Timer:
    def __init__(self, cuda: bool):
        self.cuda = cuda

    @contextmanager
    def measure(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            yield
            out.append((time.perf_counter() - t0) * 1e3)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def peak_memory(cuda: bool) -> dict:
    if cuda:
        return {"peak_bytes": int(torch.cuda.max_memory_allocated()), "kind": "cuda max_memory_allocated"}
    return {"peak_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
            "kind": "process peak RSS (CPU; never decreases, so an upper bound for this row)"}


def profile_zoo(model, configs: list[tuple[str, object]], backends: list[str], batch: int = 1, steps: int = 10,
                warmup: int = 1, repeats: int = 5, seed: int = 0, **accelerate_kwargs) -> dict:
    """Latency of each (config, backend) and layer-class times of each config's torch module, as JSON data.

    configs: (label, source) with source as for `trtq.accelerate` (None = the float model).
    """
    from trtq.pipeline import DigitsPipeline, balanced_labels

    pipe = DigitsPipeline(model)
    labels = balanced_labels(batch, model.num_classes)
    device = next(model.denoiser.parameters()).device
    x = pipe.initial_noise(2 * batch, seed).to(device)
    t = torch.full((2 * batch,), 500, device=device)
    both = torch.cat([labels, model.null_labels(batch)]).to(device)
    return _profile(pipe, model.name, model.denoiser, configs, backends,
                    run=lambda: pipe(labels, num_inference_steps=steps, seed=seed, progress=False),
                    call=lambda module: model.predict_noise(x, t, both, denoiser=module),
                    batch=batch, steps=steps, warmup=warmup, repeats=repeats, seed=seed, **accelerate_kwargs)


def profile_folder(pipe, name: str, configs: list[tuple[str, object]], backends: list[str], batch: int = 1,
                   steps: int = 10, warmup: int = 1, repeats: int = 5, seed: int = 0, **accelerate_kwargs) -> dict:
    """`profile_zoo` for a diffusers pipeline: `batch` images from the built-in prompts (class labels spread
    over the classes for DiT), stopping at latents where the pipeline can; the layer-class call is one of
    the float pipeline's own denoiser calls (recorded)."""
    from trtq.runtime.accelerate import denoiser_attr
    from trtq.runtime.folder import calibration_conditions, prompt_call_kwargs, record_denoiser_inputs

    conditions = calibration_conditions(pipe, batch)
    key, items = next(iter(conditions.items()))
    args, kwargs = record_denoiser_inputs(pipe, conditions, steps=1, seed=seed, progress=False)[0]
    device = pipe.device
    args, kwargs = [tree_map(lambda v: v.to(device) if isinstance(v, torch.Tensor) else v, a) for a in (args, kwargs)]
    pipe.set_progress_bar_config(disable=True)

    def run() -> None:
        gen = torch.Generator().manual_seed(seed)
        if key == "labels":
            pipe(class_labels=items, num_inference_steps=steps, generator=gen, output_type="np")
        else:
            pipe(prompt=items, num_inference_steps=steps, generator=gen, output_type="latent",
                 **prompt_call_kwargs(pipe))

    return _profile(pipe, name, getattr(pipe, denoiser_attr(pipe)), configs, backends, run=run,
                    call=lambda module: module(*args, **kwargs), batch=batch, steps=steps, warmup=warmup,
                    repeats=repeats, seed=seed, **accelerate_kwargs)


def _profile(pipe, name: str, float_denoiser: nn.Module, configs: list[tuple[str, object]], backends: list[str],
             *, run, call, batch: int, steps: int, warmup: int, repeats: int, seed: int, **accelerate_kwargs) -> dict:
    """The timing loop of both: `run()` runs the pipeline once, `call(module)` is one CFG-batch denoiser call."""
    from trtq.errors import TrtqError
    from trtq.runtime import accelerate, restore
    from trtq.runtime.accelerate import denoiser_attr

    if repeats < 1 or warmup < 0 or batch < 1 or steps < 1:
        raise TrtqError("profile needs repeats >= 1, warmup >= 0, batch >= 1, steps >= 1")
    device = next(float_denoiser.parameters()).device
    cuda = device.type == "cuda"
    timer = _Timer(cuda)
    accelerate_kwargs.setdefault("batch", (1, 2 * batch, 2 * batch))  # a graph exported for the CFG batch
    rows, classes = [], {}
    for label, source in configs:
        for backend in backends:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            accelerate(pipe, source, backend=backend, **accelerate_kwargs)
            acc = getattr(pipe, denoiser_attr(pipe))
            try:
                for _ in range(warmup):
                    run()
                ms: list[float] = []
                for _ in range(repeats):
                    with timer.measure(ms):
                        run()
            finally:
                restore(pipe)
            rows.append({
                "config": label, "backend": acc.backend, "requested_backend": backend,
                "pipeline_ms": {"median": round(statistics.median(ms), 3), "p90": round(percentile(ms, 90), 3),
                                "runs": [round(x, 3) for x in ms]},
                "per_image_ms": {"median": round(statistics.median(ms) / batch, 3),
                                 "p90": round(percentile(ms, 90) / batch, 3)},
                "per_step_ms": {"median": round(statistics.median(ms) / steps, 3),
                                "p90": round(percentile(ms, 90) / steps, 3)},
                "memory": peak_memory(cuda),
            })
        module = _torch_module(float_denoiser, source)
        with torch.no_grad():
            call(module)  # warm-up outside the profile
            classes[label] = layer_class_times(module, lambda: call(module), cuda)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": name,
        "device": _device_label(device),
        "cpu_numbers": not cuda,
        "timer": "cuda events" if cuda else "time.perf_counter (CPU numbers: they say nothing about GPU speed)",
        "settings": {"batch": batch, "cfg_batch": 2 * batch, "steps": steps, "warmup": warmup, "repeats": repeats,
                     "seed": seed, "torch_threads": torch.get_num_threads(),
                     "onnxruntime_threads": accelerate_kwargs.get("threads")},
        "versions": {"torch": torch.__version__},
        "latency": rows,
        "layer_classes": {"unit": "ms per denoiser call (classifier-free guidance batch; mean of 3 profiled calls)",
                          "source": "torch profiler on the eager torch module", "classes": list(LAYER_CLASSES),
                          "by_config": classes},
    }


def merge_reports(parts: list[dict]) -> dict:
    """One report from `profile_zoo` / `profile_folder` runs on the same model and device (their latency rows and configs joined)."""
    merged = dict(parts[0], latency=[], layer_classes=dict(parts[0]["layer_classes"], by_config={}))
    for p in parts:
        merged["latency"] += p["latency"]
        merged["layer_classes"]["by_config"].update(p["layer_classes"]["by_config"])
    return merged


def _torch_module(float_denoiser: nn.Module, source):
    import copy

    from trtq.artifact import load_artifact

    if source is None:
        return float_denoiser
    if isinstance(source, nn.Module):
        return source
    return load_artifact(copy.deepcopy(float_denoiser), source)


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads)"


# ------------------------------------------------------------------------------------------ output
def write_profile(report: dict, out: Path) -> list[Path]:
    """profile.json, latency.png (per-image median per config and backend, p90 whisker) and layers.png
    (per-class stacked bars per config) into `out`."""
    from trtq.runtime.plots import bar_chart, stacked_bars

    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
    where = f"{report['model']} on {report['device']}" + ("; CPU numbers" if report["cpu_numbers"] else "")
    bars = [(f"{r['config']}\n{r['backend']}", r["per_image_ms"]["median"], r["per_image_ms"]["p90"])
            for r in report["latency"]]
    bar_chart(bars, f"latency per image (ms, median; whisker p90): {where}", out / "latency.png")
    by = report["layer_classes"]["by_config"]
    stacks = [(cfg, [(cls, v[cls]) for cls in LAYER_CLASSES]) for cfg, v in by.items()]
    stacked_bars(stacks, f"time per layer class (ms per denoiser call): {where}", out / "layers.png")
    return [out / "profile.json", out / "latency.png", out / "layers.png"]
