"""Sampling for the zoo models: a small diffusers-style pipeline whose denoiser can be swapped.

The pipeline owns the scheduler and classifier-free guidance; the model bundle (`DigitsModel`) owns the
conditioning. Swapping `pipe.denoiser` for a quantized copy (or, later, an engine) is how every backend is
compared against FP: same noise, same labels, same scheduler, only the denoiser differs.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from tqdm.auto import tqdm

from trtq.errors import TrtqError

SCHEDULERS = {
    # "trailing" spacing keeps the last step at t=T-1, which matters for few-step sampling.
    "ddim": lambda cfg: DDIMScheduler.from_config(cfg, timestep_spacing="trailing"),
    "dpmpp": lambda cfg: DPMSolverMultistepScheduler.from_config(
        cfg, algorithm_type="dpmsolver++", timestep_spacing="trailing"
    ),
}


class DigitsPipeline:
    """Class-conditional sampler with classifier-free guidance for a `trtq.zoo.DigitsModel`.

    `denoiser` defaults to the model's own; set it (or pass one per call) to sample with a quantized module.
    """

    def __init__(self, model, scheduler: str = "ddim", denoiser: torch.nn.Module | None = None):
        if scheduler not in SCHEDULERS:
            raise TrtqError(f"unknown scheduler {scheduler!r}; choose one of {sorted(SCHEDULERS)}")
        self.model = model
        self.scheduler_name = scheduler
        self.denoiser = denoiser if denoiser is not None else model.denoiser

    def initial_noise(self, n: int, seed: int) -> torch.Tensor:
        """The starting noise for `n` samples: a function of the seed alone, so every backend starts equal."""
        gen = torch.Generator().manual_seed(seed)
        size = self.model.sample_size
        return torch.randn(n, 1, size, size, generator=gen)

    @torch.no_grad()
    def __call__(
        self,
        labels: torch.Tensor,
        num_inference_steps: int = 20,
        guidance_scale: float | None = None,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        batch_size: int = 100,
        progress: bool = True,
        denoiser: torch.nn.Module | None = None,
        on_step: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Sample one image per label; returns [N, 1, H, W] in [-1, 1].

        `on_step(step_index, x_t, t)` is called before each denoiser evaluation (calibration loops use it).
        """
        labels = torch.as_tensor(labels, dtype=torch.long).flatten()
        if labels.numel() == 0:
            raise TrtqError("no labels to sample")
        if labels.min() < 0 or labels.max() >= self.model.num_classes:
            raise TrtqError(f"labels must lie in 0..{self.model.num_classes - 1}")
        if num_inference_steps < 1:
            raise TrtqError("num_inference_steps must be at least 1")
        noise = self.initial_noise(len(labels), seed) if noise is None else noise
        if noise.shape[0] != len(labels):
            raise TrtqError(f"noise has {noise.shape[0]} samples for {len(labels)} labels")
        scale = self.model.guidance_scale if guidance_scale is None else guidance_scale
        net = denoiser if denoiser is not None else self.denoiser
        device = next(net.parameters()).device
        out = []
        batches = range(0, len(labels), batch_size)
        bar = tqdm(total=len(batches) * num_inference_steps, desc="sampling", disable=not progress, leave=False)
        for start in batches:
            lab = labels[start : start + batch_size].to(device)
            x = noise[start : start + batch_size].to(device)
            out.append(self._sample_batch(net, x, lab, num_inference_steps, scale, bar, on_step).cpu())
        bar.close()
        return torch.cat(out)

    def _sample_batch(self, net, x, labels, steps, scale, bar, on_step):
        scheduler = SCHEDULERS[self.scheduler_name](self.model.scheduler_config)
        scheduler.set_timesteps(steps, device=x.device)
        x = x * scheduler.init_noise_sigma
        guided = scale != 1.0
        # Conditional and unconditional halves run as one batch, as diffusers pipelines do.
        both = torch.cat([labels, self.model.null_labels(len(labels)).to(labels.device)]) if guided else labels
        for i, t in enumerate(scheduler.timesteps):
            inp = torch.cat([x, x]) if guided else x
            inp = scheduler.scale_model_input(inp, t)
            if on_step is not None:
                on_step(i, inp, t)
            eps = self.model.predict_noise(inp, t, both, denoiser=net)
            if guided:
                cond, uncond = eps.chunk(2)
                eps = uncond + scale * (cond - uncond)
            x = scheduler.step(eps, t, x).prev_sample
            bar.update(1)
        return x.clamp(-1, 1)


def balanced_labels(n: int, num_classes: int = 10) -> torch.Tensor:
    """0, 1, ..., 9, 0, 1, ...: `n` labels with every class as equally represented as `n` allows."""
    return torch.arange(n) % num_classes
