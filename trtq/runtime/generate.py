"""`trtq run`: images from a zoo model on an accelerated pipeline, as PNGs plus a labelled grid."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image

from trtq.errors import TrtqError

BATCH_SIZE = 100  # images per sampler batch


def parse_labels(text: str, num_classes: int) -> torch.Tensor:
    """"3,1,4" -> tensor([3, 1, 4]); every label in 0..num_classes-1."""
    try:
        labels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        labels = []
    if not labels or min(labels) < 0 or max(labels) >= num_classes:
        raise TrtqError(f"--labels must be comma-separated integers in 0..{num_classes - 1}, got {text!r}")
    return torch.tensor(labels)


def to_pil(image: torch.Tensor, scale: int = 4) -> Image.Image:
    """[C, H, W] in [-1, 1] -> an 8-bit image, enlarged `scale` times (nearest) so digits are visible."""
    pix = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    mode = "L" if pix.shape[0] == 1 else "RGB"
    arr = pix[0].numpy() if mode == "L" else pix.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr, mode=mode)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def grid(images: list[Image.Image], columns: int = 10) -> Image.Image:
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    canvas = Image.new(images[0].mode, (min(columns, len(images)) * (w + 2), rows * (h + 2)), 255)
    for i, img in enumerate(images):
        canvas.paste(img, ((i % columns) * (w + 2) + 1, (i // columns) * (h + 2) + 1))
    return canvas


def generate(model, source, labels: torch.Tensor, out: Path, backend: str = "auto", steps: int = 20,
             seed: int = 0, progress: bool = True, **accelerate_kwargs) -> dict:
    """Sample one image per label with the zoo sampler on an accelerated denoiser; write PNGs, grid.png and
    run.json into `out`. Returns what run.json says."""
    from trtq.pipeline import DigitsPipeline
    from trtq.runtime import accelerate, restore

    pipe = DigitsPipeline(model)
    # A graph is exported for the denoiser batches this run makes: guidance doubles the sampler's batches.
    cfg_batch = 2 * min(len(labels), BATCH_SIZE)
    accelerate_kwargs.setdefault("batch", (1, cfg_batch, cfg_batch))
    accelerate(pipe, source, backend=backend, **accelerate_kwargs)
    chosen = pipe.denoiser.backend
    start = time.perf_counter()
    try:
        images = pipe(labels, num_inference_steps=steps, seed=seed, progress=progress, batch_size=BATCH_SIZE)
    finally:
        restore(pipe)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    pils = [to_pil(img) for img in images]
    files = []
    for i, (img, label) in enumerate(zip(pils, labels.tolist())):
        name = f"{i:04d}_label{label}.png"
        img.save(out / name)
        files.append(name)
    grid(pils).save(out / "grid.png")
    report = {"model": model.name, "backend": chosen, "labels": labels.tolist(), "steps": steps, "seed": seed,
              "seconds": round(seconds, 3), "device": str(next(model.denoiser.parameters()).device),
              "images": files, "grid": "grid.png"}
    (out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ------------------------------------------------------------------------------------------ diffusers folders
def generate_diffusers(pipe, source, out: Path, labels: list[int] | None = None, prompts: list[str] | None = None,
                       backend: str = "auto", steps: int = 20, seed: int = 0, progress: bool = True,
                       **accelerate_kwargs) -> dict:
    """Images from a diffusers pipeline on an accelerated denoiser: class labels for DiT, prompts otherwise
    (one image each); PNGs, grid.png and run.json into `out`."""
    from trtq.runtime import accelerate, restore

    is_dit = type(pipe).__name__ == "DiTPipeline"
    if is_dit and not labels:
        raise TrtqError("a DiT pipeline generates from class labels: give --labels")
    if not is_dit and not prompts:
        raise TrtqError(f"a {type(pipe).__name__} generates from prompts: give --prompt (repeatable)")
    n = len(labels) if is_dit else len(prompts)
    accelerate_kwargs.setdefault("batch", (1, 2 * n, 2 * n))  # guidance doubles the batch
    accelerate(pipe, source, backend=backend, **accelerate_kwargs)
    attr_backend = getattr(pipe, "transformer" if hasattr(pipe, "transformer") else "unet").backend
    pipe.set_progress_bar_config(disable=not progress)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    try:
        if is_dit:
            result = pipe(class_labels=labels, num_inference_steps=steps, generator=gen)
        else:
            result = pipe(prompt=prompts, num_inference_steps=steps, generator=gen)
    finally:
        restore(pipe)
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, img in enumerate(result.images):
        files.append(f"{i:04d}.png")
        img.save(out / files[-1])
    grid(list(result.images), columns=min(n, 8)).save(out / "grid.png")
    report = {"model": type(pipe).__name__, "backend": attr_backend, "labels": labels, "prompts": prompts,
              "steps": steps, "seed": seed, "seconds": round(seconds, 3), "device": str(pipe.device),
              "images": files, "grid": "grid.png"}
    (out / "run.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
