"""A diffusers pipeline folder (`model_index.json`) as a model for the CLI: load it, and calibrate its denoiser
through the pipeline itself.

Calibration data are the denoiser's own inputs along the float pipeline's sampling trajectories: the pipeline
runs on prompts (text-to-image classes) or class labels (DiT) with the float denoiser, a forward pre-hook
records every call's arguments (on the CPU, so a long calibration does not hold GPU memory), and the
calibration loop replays them through the model being calibrated. Replaying (rather than re-running the
pipeline with the quantized model in it) keeps the trajectories the float model's, as the zoo sampler's
calibration does, and lets a method (TFMQ, HQ-DiT) call the loop several times without re-encoding prompts.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map

from trtq.errors import TrtqError

PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline", "DiTPipeline", "PixArtAlphaPipeline")
LABEL_CLASSES = ("DiTPipeline",)  # class-conditional: calibrated and run on labels, not prompts

# A small, varied default prompt set (subjects, styles, scenes) for calibrating text-to-image denoisers.
DEFAULT_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a watercolor painting of a lighthouse on a cliff at sunset",
    "a close-up portrait of an old fisherman, dramatic lighting",
    "a bowl of ramen on a wooden table, food photography",
    "an isometric illustration of a small city with trees",
    "a red sports car on a mountain road, motion blur",
    "a cat sleeping on a stack of books, soft morning light",
    "a futuristic skyline at night with neon signs, digital art",
)
CALIB_BATCH = 4  # prompts (or labels) per pipeline call while recording


def is_diffusers_folder(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def pipeline_class(path: str | Path) -> str:
    """The pipeline class a folder names, refused unless trtq runs it."""
    try:
        index = json.loads((Path(path) / "model_index.json").read_text())
    except (OSError, ValueError) as e:
        raise TrtqError(f"{path}/model_index.json cannot be read: {e}") from None
    cls = index.get("_class_name") if isinstance(index, dict) else None
    if cls not in PIPELINE_CLASSES:
        raise TrtqError(f"{path}: pipeline class {cls!r} is not one trtq runs ({', '.join(PIPELINE_CLASSES)})")
    return cls


def model_name(path: str | Path) -> str:
    """How artifacts and exports name a folder's model: its pipeline class and folder name."""
    return f"{pipeline_class(path)}:{Path(path).resolve().name}"


def load_diffusers_pipeline(path: str | Path, device: str = "cpu"):
    """A diffusers pipeline folder of a class trtq runs: SD 1.5, SDXL, DiT, PixArt-α."""
    from diffusers import DiffusionPipeline

    cls = pipeline_class(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path))
    except ImportError as e:  # e.g. SD's text encoder classes need `transformers`
        raise TrtqError(f"{path}: {cls} cannot be loaded here: {' '.join(str(e).split())}") from None
    return pipe.to(device)


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line ('#' starts a comment line)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise TrtqError(f"--prompts {path} cannot be read: {e.strerror or e}") from None
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise TrtqError(f"--prompts {path} holds no prompt (one per line)")
    return prompts


def calibration_conditions(pipe, samples: int, prompts: list[str] | None = None,
                           labels: list[int] | None = None) -> dict[str, list]:
    """What the pipeline calibrates on, `samples` of it: {"labels": [...]} for DiT (the given labels, or labels
    spread over its classes), {"prompts": [...]} otherwise (the given prompts or the defaults, cycled)."""
    if samples < 1:
        raise TrtqError(f"--calib-samples must be >= 1, got {samples}")
    cls = type(pipe).__name__
    if cls in LABEL_CLASSES:
        if prompts:
            raise TrtqError(f"a {cls} is conditioned on class labels: give --labels, not --prompts")
        classes = int(getattr(pipe.transformer.config, "num_embeds_ada_norm", 1000) or 1000)
        chosen = labels or [i * classes // samples for i in range(samples)]
        if min(chosen) < 0 or max(chosen) >= classes:
            raise TrtqError(f"--labels must be in 0..{classes - 1} for this {cls}, got {chosen}")
        return {"labels": [chosen[i % len(chosen)] for i in range(samples)]}
    if labels:
        raise TrtqError(f"a {cls} is conditioned on prompts: give --prompts, not --labels")
    chosen = list(prompts or DEFAULT_PROMPTS)
    return {"prompts": [chosen[i % len(chosen)] for i in range(samples)]}


def _to_cpu(value: Any) -> Any:
    return tree_map(lambda v: v.detach().to("cpu", copy=True) if isinstance(v, torch.Tensor) else v, value)


def record_denoiser_inputs(pipe, conditions: dict[str, list], steps: int, seed: int = 0,
                           progress: bool = True) -> list[tuple[tuple, dict]]:
    """Run the float pipeline on `conditions` (see `calibration_conditions`) and return every denoiser call's
    (args, kwargs), copied to the CPU. Text-to-image pipelines stop at latents (no VAE decode)."""
    from trtq.runtime.accelerate import denoiser_attr

    denoiser = getattr(pipe, denoiser_attr(pipe))
    calls: list[tuple[tuple, dict]] = []

    def record(module, args, kwargs):
        calls.append((_to_cpu(args), _to_cpu(kwargs)))

    handle = denoiser.register_forward_pre_hook(record, with_kwargs=True)
    key, items = next(iter(conditions.items()))
    pipe.set_progress_bar_config(disable=True)
    try:
        with torch.no_grad():
            for start in _progress(range(0, len(items), CALIB_BATCH), progress, "recording calibration inputs"):
                chunk = items[start:start + CALIB_BATCH]
                gen = torch.Generator().manual_seed(seed + start)
                if key == "labels":
                    pipe(class_labels=chunk, num_inference_steps=steps, generator=gen, output_type="np")
                else:
                    pipe(prompt=chunk, num_inference_steps=steps, generator=gen, output_type="latent",
                         **prompt_call_kwargs(pipe))
    finally:
        handle.remove()
    return calls


def prompt_call_kwargs(pipe) -> dict:
    """Extra arguments of a prompt call at the pipeline's own default size: PixArt's resolution binning is
    turned off (at the default size it changes nothing, and it refuses sizes outside its aspect-ratio
    table)."""
    return {"use_resolution_binning": False} if type(pipe).__name__ == "PixArtAlphaPipeline" else {}


def _progress(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


def replay_loop(calls: list[tuple[tuple, dict]]) -> Callable[[nn.Module], None]:
    """A calib_loop that feeds the recorded calls to the model it is given, on that model's device."""

    def loop(model: nn.Module) -> None:
        device = next(model.parameters()).device
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        with torch.no_grad():
            for args, kwargs in calls:
                model(*tree_map(move, args), **tree_map(move, kwargs))

    return loop


def quantized_folder_denoiser(pipe, path: str | Path, *, recipe=None, artifact: str | Path | None = None,
                              samples: int = 8, steps: int = 20, prompts: list[str] | None = None,
                              labels: list[int] | None = None, seed: int = 0,
                              progress: bool = True) -> tuple[nn.Module, dict]:
    """(a quantized copy of the pipeline's denoiser, what its calibration was). recipe: a `Recipe` (or name),
    calibrated on the pipeline's own trajectories; artifact: scales of `trtq quantize` for this folder's
    weights (a foreign artifact is refused). The pipeline's denoiser is left as it was."""
    from trtq import quantize, release_float_weights
    from trtq.artifact import load_artifact
    from trtq.runtime.accelerate import denoiser_attr

    denoiser = copy.deepcopy(getattr(pipe, denoiser_attr(pipe))).eval()
    if artifact is not None:
        return load_artifact(denoiser, artifact, model_name=model_name(path)), {"artifact": str(artifact)}
    conditions = calibration_conditions(pipe, samples, prompts, labels)
    t0 = time.perf_counter()
    calls = record_denoiser_inputs(pipe, conditions, steps, seed, progress)
    recorded = time.perf_counter() - t0
    quantize(denoiser, recipe, replay_loop(calls))
    release_float_weights(denoiser)  # sampling, saving and export read the FP4 layers' codes only
    info = {**conditions, "samples": samples, "steps": steps, "seed": seed, "denoiser_calls": len(calls),
            "record_seconds": round(recorded, 3), "quantize_seconds": round(time.perf_counter() - t0 - recorded, 3)}
    return denoiser, info


# ------------------------------------------------------------------------------------------ CLI glue
def folder_denoiser_from_args(args, recipe=None, artifact=None, progress: bool = True) -> tuple[Any, nn.Module, dict]:
    """(pipeline, quantized denoiser, calibration info with wall time and peak memory) for --model DIR."""
    from trtq.runtime.cli import parse_labels_any
    from trtq.runtime.profile import peak_memory

    pipe = load_diffusers_pipeline(args.model, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(args.device)
    t0 = time.perf_counter()
    denoiser, info = quantized_folder_denoiser(
        pipe, args.model, recipe=recipe, artifact=artifact, samples=args.calib_samples, steps=args.steps,
        prompts=read_prompts(args.prompts) if args.prompts else None,
        labels=parse_labels_any(args.labels) if args.labels else None, progress=progress)
    info |= {"device": args.device, "seconds": round(time.perf_counter() - t0, 3), "peak_memory": peak_memory(args.device.startswith("cuda"))}
    return pipe, denoiser, info
