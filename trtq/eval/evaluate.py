"""Evaluate a quantized zoo model against its float self: same noise, same labels, same scheduler.

Every FID and accuracy comes with a seeded 95% bootstrap interval over the samples (`trtq.eval.metrics`);
`fid_delta_ci` is the paired interval of the quantized-minus-FP FID difference.

`QuantSpec` names what to evaluate: a trtq recipe, an artifact, or an outside baseline (nvidia-modelopt).
Calibration data are (x_t, t) from the float model's own sampling trajectories, with a seed of their own,
so the evaluation noise is never seen in calibration.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from trtq.artifact import check_artifact, load_artifact, read_manifest
from trtq.baselines import BASELINES, run_baseline
from trtq.errors import TrtqError
from trtq.eval.metrics import summarize
from trtq.pipeline import DigitsPipeline, balanced_labels
from trtq.quantize import quantize, release_float_weights
from trtq.recipes import get_recipe

CALIB_SEED = 10_000  # far from the evaluation seeds, so calibration never sees the evaluation noise


@dataclass
class SamplingConfig:
    samples: int = 100
    steps: int = 20
    scheduler: str = "ddim"
    guidance_scale: float | None = None
    seed: int = 0
    batch_size: int = 100
    calib_samples: int = 20
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TrtqError(f"--device {self.device}: no CUDA device is visible to torch on this machine")
        if self.samples < 2:
            raise TrtqError("--samples must be at least 2 (the Fréchet distance needs two samples)")
        if self.steps < 1:
            raise TrtqError("--steps must be at least 1")
        if self.calib_samples < 1:
            raise TrtqError("calibration needs at least one sample")


@dataclass(frozen=True)
class QuantSpec:
    """One of: a recipe (name or file), an artifact directory, or an outside baseline name."""

    recipe: str | None = None
    artifact: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()  # method knobs (`--set winograd.steps=50`), recipes only

    def resolved_recipe(self):
        return get_recipe(self.recipe).with_overrides(dict(self.overrides))

    def __post_init__(self) -> None:
        if (self.recipe is None) == (self.artifact is None):
            raise TrtqError("give exactly one of a recipe or an artifact")

    @property
    def label(self) -> str:
        if self.artifact is not None:
            return read_manifest(self.artifact)["recipe"]["name"]
        return Path(self.recipe).stem if self.recipe.endswith((".yaml", ".json")) else self.recipe

    def check(self) -> None:
        """Validate before any expensive work, so a bad argument costs nothing and writes nothing."""
        if self.artifact is not None:
            read_manifest(self.artifact)
        elif self.recipe not in BASELINES:
            self.resolved_recipe()
        if self.overrides and (self.artifact is not None or self.recipe in BASELINES):
            raise TrtqError("--set changes a trtq recipe's method knobs; it does not apply to an artifact or baseline")


def calibration_loop(model, cfg: SamplingConfig):
    """A calib_loop that runs the sampler with the denoiser it is given (FP trajectories: quantizers pass
    float through while they observe)."""
    pipe = DigitsPipeline(model, scheduler=cfg.scheduler)
    labels = balanced_labels(cfg.calib_samples, model.num_classes)

    def loop(denoiser: nn.Module) -> None:
        pipe(labels, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, seed=CALIB_SEED,
             batch_size=cfg.batch_size, progress=False, denoiser=denoiser)

    return loop


def quantized_denoiser(model, spec: QuantSpec, cfg: SamplingConfig) -> nn.Module:
    """A quantized copy of the model's denoiser (the float one is left untouched). Its FP4 layers' float weights
    are released: nothing that follows (sampling, saving, export) reads them."""
    denoiser = copy.deepcopy(model.denoiser).eval()
    if spec.artifact is not None:
        return load_artifact(denoiser, spec.artifact, model_name=model.name)
    if spec.recipe in BASELINES:
        return run_baseline(spec.recipe, denoiser, calibration_loop(model, cfg))
    quantized = quantize(denoiser, spec.resolved_recipe(), calibration_loop(model, cfg))
    release_float_weights(quantized)
    return quantized


def device_name(device: str) -> str:
    """What a report says ran the model: the GPU's name, or the CPU's architecture and torch thread count."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.machine()}, {torch.get_num_threads()} torch threads)"


@contextmanager
def _timed(times: dict, key: str):
    start = time.perf_counter()
    yield
    times[key] = round(time.perf_counter() - start, 3)


class Evaluator:
    """Holds what every evaluation of one model shares: FP samples, the classifier, the real digits."""

    def __init__(self, model, cfg: SamplingConfig, classifier, reference_images: torch.Tensor):
        self.model, self.cfg = model, cfg
        self.classifier, self.reference = classifier, reference_images
        self.pipe = DigitsPipeline(model, scheduler=cfg.scheduler)
        self.labels = balanced_labels(cfg.samples, model.num_classes)
        self.fp_samples: torch.Tensor | None = None
        self.fp_metrics: dict | None = None
        self.fp_seconds: float | None = None

    def sample(self, denoiser: nn.Module) -> torch.Tensor:
        c = self.cfg
        return self.pipe(self.labels, num_inference_steps=c.steps, guidance_scale=c.guidance_scale, seed=c.seed,
                         batch_size=c.batch_size, progress=c.progress, denoiser=denoiser)

    def run_fp(self) -> dict:
        if self.fp_samples is None:
            start = time.perf_counter()
            self.fp_samples = self.sample(self.model.denoiser)
            self.fp_seconds = round(time.perf_counter() - start, 3)
            self.fp_metrics = summarize(self.fp_samples, None, self.labels, self.classifier, self.reference)
        return {"recipe": "fp32", **self.fp_metrics, "seconds": {"sample": self.fp_seconds}}

    def run(self, spec: QuantSpec) -> tuple[dict, torch.Tensor]:
        self.run_fp()
        times: dict[str, float] = {}
        with _timed(times, "quantize"):
            denoiser = quantized_denoiser(self.model, spec, self.cfg)
        with _timed(times, "sample"):
            samples = self.sample(denoiser)
        metrics = summarize(samples, self.fp_samples, self.labels, self.classifier, self.reference)
        return {"recipe": spec.label, **metrics, "seconds": times}, samples


def evaluate(model_name: str, spec: QuantSpec, cfg: SamplingConfig) -> dict:
    """Metrics of one quantized model vs its float self, as one JSON-able dict (the `trtq eval` output)."""
    from trtq.zoo import load_classifier, load_digits_images, load_model

    spec.check()
    model = load_model(model_name).to(cfg.device)
    if spec.artifact is not None:
        check_artifact(spec.artifact, model.denoiser, model.name)  # before minutes of FP sampling
    classifier = load_classifier()
    reference, _ = load_digits_images(model.sample_size)
    ev = Evaluator(model, cfg, classifier, reference)
    fp = ev.run_fp()
    result, _ = ev.run(spec)
    return {
        "model": model.name,
        **{k: result[k] for k in ("recipe", "psnr_db", "ssim", "fid", "fid_ci", "accuracy", "accuracy_ci",
                                  "fid_delta", "fid_delta_ci", "bootstrap")},
        "fp": {k: fp[k] for k in ("fid", "fid_ci", "accuracy", "accuracy_ci")},
        "sampling": {k: v for k, v in asdict(cfg).items() if k != "progress"},
        "device": device_name(cfg.device),
        "seconds": {"fp_sample": fp["seconds"]["sample"], **result["seconds"]},
    }
