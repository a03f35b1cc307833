"""Train the zoo: the digits classifier (the judge) first, then the two denoisers, each behind a quality gate.

    python -m trtq.zoo.train [--out DIR] [--only unet|dit|classifier ...] [--steps N] [--device auto|cpu|cuda]

Defaults are sized for one GPU (all three well under 8 minutes on an H100); on CPU the same command works,
only slower (an estimate is printed). Saved denoiser weights are the EMA weights.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from trtq.zoo.classifier import DigitsClassifier, classify, load_classifier
from trtq.zoo.data import load_digits_images, split_digits
from trtq.zoo.models import WEIGHTS_DIR, DigitsModel, build_model

# Per-denoiser defaults, sized for an H100: these tiny models are launch-bound there (~60 ms/step UNet,
# ~40 ms/step DiT at any batch up to 1024), so a big batch is free and the step count sets the time budget.
DENOISER_DEFAULTS = {
    "unet": dict(name="digits-unet", steps=3000, batch=1024, lr=1e-3),
    "dit": dict(name="digits-dit", steps=4000, batch=1024, lr=6e-4),
}
EMA_DECAY = 0.999
WARMUP_STEPS = 200
LABEL_DROP = 0.1  # classifier-free guidance: this fraction of training labels becomes the null label
CLASSIFIER_EPOCHS = 30
GATE_SCALES = (1.5, 2.0, 3.0)  # CFG scales the gate tries; the best digits-FID becomes the default
GATE_STEPS = 20


def _log(msg: str) -> None:
    tqdm.write(msg)


def _lr_factor(step: int, total: int) -> float:
    # Linear warmup, then cosine decay to 10%: stable start, and a settled model for the EMA to average.
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _augment(x: Tensor, gen: torch.Generator, shift: float, scale: float, rot_deg: float) -> Tensor:
    """Small random affine jitter; border padding keeps the background at its own value (-1)."""
    n = x.shape[0]
    u = lambda: torch.rand(n, generator=gen) * 2 - 1  # noqa: E731  uniform in [-1, 1]
    s = 1 + scale * u()
    a = math.radians(rot_deg) * u()
    tx, ty = shift * u(), shift * u()
    theta = torch.stack(
        [torch.stack([s * torch.cos(a), -s * torch.sin(a), tx], 1), torch.stack([s * torch.sin(a), s * torch.cos(a), ty], 1)],
        1,
    ).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def train_classifier(out: Path, device: torch.device, seed: int, epochs: int = CLASSIFIER_EPOCHS) -> dict:
    """Train the judge on the train split with light augmentation; report held-out accuracy."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train_x, train_y, test_x, test_y = split_digits(*load_digits_images(32), seed=seed)
    model = DigitsClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 128
    total = epochs * math.ceil(len(train_x) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total)
    t0 = time.time()
    bar = tqdm(total=total, desc="classifier")
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_x), generator=gen).split(batch):
            # Shifts/scale/rotation plus a little noise, so imperfect generated digits are judged fairly.
            x = _augment(train_x[idx], gen, shift=0.12, scale=0.1, rot_deg=10)
            x = x + torch.randn(x.shape, generator=gen) * (torch.rand(len(x), 1, 1, 1, generator=gen) * 0.15)
            loss = F.cross_entropy(model(x.to(device)), train_y[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval().cpu()
    acc = (classify(model, test_x) == test_y).double().mean().item()
    seconds = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": model.config,
        "test_accuracy": acc,
        "training": {"epochs": epochs, "batch": batch, "lr": 2e-3, "seed": seed, "device": str(device),
                     "seconds": round(seconds, 1), "final_loss": loss.item()},
    }
    # Temp file + os.replace: a crash never leaves half-written weights behind.
    tmp = out / ".digits-classifier.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    os.replace(tmp, out / "digits-classifier.safetensors")
    (out / "digits-classifier.json").write_text(json.dumps(meta, indent=2) + "\n")
    _log(f"classifier: held-out accuracy {acc:.4f}, loss {loss.item():.4f}, {seconds:.0f}s on {device}")
    return {"seconds": round(seconds, 1), "device": str(device), "loss": loss.item(), "accuracy": acc}


class _Ema:
    """Exponential moving average of parameters, with the usual warmup so early weights fade quickly."""

    def __init__(self, modules: list[nn.Module]):
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]
        self.live = modules
        self.step = 0

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1
        decay = min(EMA_DECAY, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.shadow, self.live):
            ep, lp = list(ema.parameters()), list(live.parameters())
            torch._foreach_lerp_(ep, lp, 1 - decay)


def _autocast(device: torch.device):
    # bf16 autocast on CUDA: these models are tiny and launch-bound, but it still trims step time.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train_denoiser(
    kind: str, out: Path, device: torch.device, seed: int, steps: int | None, batch: int | None, scales, classifier
) -> dict:
    from diffusers import DDPMScheduler

    cfg = dict(DENOISER_DEFAULTS[kind])
    steps = steps or cfg["steps"]
    cfg["batch"] = batch or cfg["batch"]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(cfg["name"])
    model.denoiser.to(device).train()  # train mode also switches on DiT's own 10% label dropout
    modules = [model.denoiser] + ([model.label_encoder.to(device).train()] if model.label_encoder is not None else [])
    params = [p for m in modules for p in m.parameters()]
    # Fused AdamW on CUDA: one kernel instead of many, a real win for launch-bound tiny models.
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=0.01, fused=device.type == "cuda")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps))
    ema = _Ema(modules)
    noise_sched = DDPMScheduler.from_config(model.scheduler_config)
    alphas = noise_sched.alphas_cumprod.to(device)
    # Denoisers learn the train split only, so the test split stays an unseen reference for digits-FID.
    train_x, train_y, test_x, _ = split_digits(*load_digits_images(model.sample_size), seed=seed)
    data_x, data_y = train_x.to(device), train_y.to(device)
    t0, loss_avg = time.time(), None
    bar = tqdm(range(steps), desc=cfg["name"])
    for step in bar:
        idx = torch.randint(0, len(data_x), (cfg["batch"],), generator=gen).to(device)
        x0, y = data_x[idx], data_y[idx]
        if kind == "unet":
            # DiT drops labels itself in train mode; for the UNet we do it, so both see ~10% null labels.
            drop = torch.rand(len(y), device=device) < LABEL_DROP
            y = torch.where(drop, torch.full_like(y, model.num_classes), y)
        t = torch.randint(0, len(alphas), (len(x0),), device=device)
        noise = torch.randn_like(x0)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with _autocast(device):
            pred = model.predict_noise(xt, t, y)
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update()
        if step % 25 == 0 or step == steps - 1:
            val = loss.item()  # .item() syncs the GPU: only do it now and then
            loss_avg = val if loss_avg is None else 0.9 * loss_avg + 0.1 * val
            bar.set_postfix(loss=f"{loss_avg:.4f}")
        # Time steps 5..15, past the first-call warmup (cuDNN autotuning, allocator growth), for the estimate.
        if step == 5 or step == 15:
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step == 5:
                t_est = time.time()
            else:
                per = (time.time() - t_est) / 10
                _log(f"{cfg['name']}: ~{per * 1000:.0f} ms/step on {device}, ~{per * steps / 60:.1f} min for {steps} steps")
    seconds = time.time() - t0
    # Saved weights are the EMA copy, moved to CPU in fp32.
    model.denoiser = ema.shadow[0].float().cpu()
    model.label_encoder = ema.shadow[1].float().cpu() if model.label_encoder is not None else None
    gate = quality_gate(model, classifier, test_x, scales, device)
    model.guidance_scale = gate["guidance_scale"]
    model.training = {
        "steps": steps, "seed": seed, "batch": cfg["batch"], "lr": cfg["lr"], "ema_decay": EMA_DECAY,
        "label_drop": LABEL_DROP, "seconds": round(seconds, 1), "device": str(device),
        "final_loss": loss_avg, "accuracy": gate["accuracy"], "digits_fid": gate["digits_fid"],
        "gate": gate["per_scale"],
    }
    model.save(out / cfg["name"])
    _log(f"{cfg['name']}: loss {loss_avg:.4f}, gate accuracy {gate['accuracy']:.3f} (cfg {model.guidance_scale}), "
         f"{seconds:.0f}s training on {device}")
    return {"seconds": round(seconds, 1), "device": str(device), "loss": loss_avg, "accuracy": gate["accuracy"],
            "digits_fid": gate["digits_fid"], "guidance_scale": model.guidance_scale, "steps": steps}


def _sample(model: DigitsModel, labels: Tensor, scale: float, device: torch.device) -> Tensor:
    from trtq.pipeline import DigitsPipeline

    model.denoiser.to(device).eval()
    if model.label_encoder is not None:
        model.label_encoder.to(device).eval()
    try:
        return DigitsPipeline(model, scheduler="ddim")(labels, num_inference_steps=GATE_STEPS, guidance_scale=scale,
                                                      seed=0, batch_size=len(labels), progress=False)
    finally:
        model.denoiser.cpu()
        if model.label_encoder is not None:
            model.label_encoder.cpu()


def quality_gate(model: DigitsModel, classifier: nn.Module, reference: Tensor, scales, device) -> dict:
    """Sample 20 of each digit per CFG scale; classifier accuracy and digits-FID decide the default scale."""
    try:
        from trtq.eval.metrics import digits_fid
    except ImportError:  # FID needs scipy; accuracy alone still gates the model
        digits_fid = None
    labels = torch.arange(10).repeat_interleave(20)
    per_scale = {}
    for s in scales:
        images = _sample(model, labels, s, device)
        acc = (classify(classifier, images) == labels).double().mean().item()
        fid = digits_fid(classifier, images, reference) if digits_fid is not None else None
        per_scale[str(s)] = {"accuracy": acc, "digits_fid": fid}
        _log(f"  gate {model.name} cfg={s}: accuracy {acc:.3f}" + (f", digits-FID {fid:.2f}" if fid is not None else ""))
    # Lowest FID (fidelity and diversity); accuracy breaks the tie when FID is unavailable.
    key = (lambda s: per_scale[s]["digits_fid"]) if digits_fid is not None else (lambda s: -per_scale[s]["accuracy"])
    best = min(per_scale, key=key)
    return {"guidance_scale": float(best), **per_scale[best], "per_scale": per_scale}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m trtq.zoo.train", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory (default: the zoo's weights)")
    p.add_argument("--only", nargs="+", choices=("unet", "dit", "classifier"), default=("classifier", "unet", "dit"))
    p.add_argument("--steps", type=int, default=None, help="denoiser steps (default: unet 3000, dit 4000)")
    p.add_argument("--batch", type=int, default=None, help="denoiser batch size (default 1024)")
    p.add_argument("--classifier-epochs", type=int, default=CLASSIFIER_EPOCHS)
    p.add_argument("--scales", type=float, nargs="+", default=GATE_SCALES, help="CFG scales the gate tries")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        # Measured on 2 cores at batch 256: ~6 s/step UNet, ~1.5 s/step DiT, i.e. many hours for the defaults.
        _log("training on CPU: slow (defaults take hours); use --steps/--batch for a smoke run")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "train_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    wall = time.time()

    if "classifier" in args.only:
        report["digits-classifier"] = train_classifier(out, device, args.seed, args.classifier_epochs)
    kinds = [k for k in ("unet", "dit") if k in args.only]
    if kinds:
        # The gate's judge: the one just trained into --out, else the committed one.
        classifier = load_classifier(out) if (out / "digits-classifier.safetensors").is_file() else load_classifier()
        for kind in kinds:
            report[DENOISER_DEFAULTS[kind]["name"]] = train_denoiser(
                kind, out, device, args.seed, args.steps, args.batch, args.scales, classifier
            )
    report["device_name"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    report["torch"] = torch.__version__
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
        f.write(json.dumps(report, indent=2) + "\n")
    os.replace(f.name, report_path)
    _log(f"done in {time.time() - wall:.0f}s; report at {report_path}")


if __name__ == "__main__":
    main()
