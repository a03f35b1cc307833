"""Data-free distillation: the float model teaches its quantized copy on the float model's own trajectories.

The sampler runs from random noise and random labels with a `DistillStep` in place of the denoiser. At each
denoiser call the same x_t goes to the float teacher and the quantized student; the loss is the MSE of their
noise predictions (of the guided prediction when `guidance` is set: CFG batches hold both halves), one
optimizer step follows, and the call returns the *teacher's* prediction, so the trajectory is the float
model's. The sampler is the caller's (`trtq`'s calib_loop convention): a round is one run of it; a loop with
a `round(denoiser, r)` method draws round r's noise and labels from seed r (`DigitsDistillLoop`), a plain
`loop(denoiser)` replays its own data each round.

The MSE is by default one average over every call (EfficientDM's loss). Its scale differs by an order of
magnitude between timesteps (digits-unet: the t = 99 call's MSE is ~24x the t = 999 call's), so the
low-noise steps dominate the gradient of the shared weights. `step_weighting: relative` divides each call's
MSE by a running mean of that timestep's own MSE (`StepLossScale`): every timestep weighs alike, in relative
terms. The running means are checkpointed. What it changes on the zoo models: docs/efficientdm.md.

The learning rates are constant by default (EfficientDM's recipe). `warmup` (optimizer steps, linear) and
`lr_schedule: cosine` (per round, down to ~0 in the last round) scale every group's rate alike (`lr_factor`);
the factor is a function of the step and round counts alone, so a resumed run follows the same schedule.

Checkpoints are written every `checkpoint_every` rounds: the trainable tensors and the optimizer state in
safetensors, the round reached and the configuration in JSON (no pickle). A run given the same checkpoint
directory resumes after its last round; with per-round seeds the result equals an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from trtq.errors import TrtqError

CHECKPOINT_TENSORS = "distill.safetensors"
CHECKPOINT_META = "distill.json"
CFG_ORDERS = ("cond_uncond", "uncond_cond")
STEP_WEIGHTINGS = ("uniform", "relative")
LR_SCHEDULES = ("constant", "cosine")
MIN_STEP = 1e-8  # learned step sizes stay positive


@dataclass
class DistillConfig:
    rounds: int = 20
    lr: float = 0.01  # LoRA: lr · mean(weight step) per layer (scale-aware); QAT ("full"): lr as is
    scale_aware: bool = True
    step_lr: float = 1e-3  # learned step sizes: step_lr · mean(step) per quantizer (relative updates)
    weight_decay: float = 0.0
    guidance: float | None = None  # loss on uncond + g·(cond - uncond) of CFG batches; None: on every output
    cfg_order: str = "cond_uncond"  # how a CFG batch is laid out (the zoo: cond first; diffusers: uncond first)
    step_weighting: str = "uniform"  # "relative": each call's MSE over its timestep's running mean MSE
    lr_schedule: str = "constant"  # "cosine": every rate falls by half a cosine from its value to ~0 over the rounds
    warmup: int = 0  # optimizer steps over which every rate rises linearly from ~0 to its value
    checkpoint: str | None = None
    checkpoint_every: int = 1
    progress: bool = True
    amp: bool = True  # bfloat16 autocast for the student on CUDA (CPU runs float32)

    def check(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 0:
            raise TrtqError(f"efficientdm rounds must be an integer >= 0, got {self.rounds!r}")
        for k in ("lr", "step_lr"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                raise TrtqError(f"efficientdm {k} must be a finite number >= 0, got {v!r}")
        g = self.guidance
        if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float))):
            raise TrtqError(f"efficientdm guidance must be a number or null, got {self.guidance!r}")
        if self.cfg_order not in CFG_ORDERS:
            raise TrtqError(f"efficientdm cfg_order must be one of {CFG_ORDERS}, got {self.cfg_order!r}")
        if self.step_weighting not in STEP_WEIGHTINGS:
            raise TrtqError(f"efficientdm step_weighting must be one of {STEP_WEIGHTINGS}, got {self.step_weighting!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrtqError(f"efficientdm lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise TrtqError(f"efficientdm warmup must be an integer >= 0 (optimizer steps), got {self.warmup!r}")
        if isinstance(self.checkpoint_every, bool) or not isinstance(self.checkpoint_every, int) \
                or self.checkpoint_every < 1:
            raise TrtqError(f"efficientdm checkpoint_every must be an integer >= 1, got {self.checkpoint_every!r}")


def output_tensor(out) -> torch.Tensor:
    """The prediction inside a denoiser's output (a tensor, diffusers' `.sample`, or a tuple's first item)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TrtqError(f"cannot find the prediction in a denoiser output of type {type(out).__name__}")


def guided(eps: torch.Tensor, scale: float, order: str) -> torch.Tensor:
    if eps.shape[0] % 2:
        raise TrtqError(f"guidance is set but a denoiser call has an odd batch ({eps.shape[0]}): not a CFG batch")
    first, second = eps.float().chunk(2)
    cond, uncond = (first, second) if order == "cond_uncond" else (second, first)
    return uncond + scale * (cond - uncond)


def lr_factor(cfg: DistillConfig, iteration: int, r: int) -> float:
    """Multiplier of every learning rate at optimizer step `iteration` (0-based, counted over the whole run,
    resumed runs included) in round `r`. Warm-up is per step: Adam's first updates move every parameter by
    about the full rate whatever its gradient, which on a fresh LoRA update B = 0 is a large jump. The cosine
    is per round (constant within a round), so it depends on nothing but the round count."""
    f = min(1.0, (iteration + 1) / cfg.warmup) if cfg.warmup else 1.0
    if cfg.lr_schedule == "cosine":
        f *= 0.5 * (1.0 + math.cos(math.pi * r / max(cfg.rounds, 1)))
    return f


class StepLossScale:
    """Running mean (exponential, `momentum`) of the distillation MSE per timestep, for `step_weighting:
    relative`. The first call at a timestep starts its mean at that call's loss (weight 1)."""

    def __init__(self, denoiser: nn.Module, momentum: float = 0.9, means: dict | None = None):
        from trtq.nn.timestep import timestep_position

        self.position, self.momentum = timestep_position(denoiser), momentum
        self.means: dict[str, float] = dict(means or {})

    def weight(self, args: tuple, kwargs: dict, loss: torch.Tensor) -> float:
        """1 / the running mean of this call's timestep (updated with `loss` first)."""
        from trtq.nn.timestep import call_timestep

        t = call_timestep(self.position, args, kwargs).flatten().unique()
        if t.numel() != 1:
            raise TrtqError("step_weighting: relative needs one timestep per denoiser call, got "
                            f"{t.numel()} distinct ones")
        key, value = format(float(t), "g"), float(loss.detach())
        prev = self.means.get(key)
        self.means[key] = value if prev is None else self.momentum * prev + (1 - self.momentum) * value
        return 1.0 / max(self.means[key], 1e-12)


class DistillStep(nn.Module):
    """Stands in for the denoiser in the caller's sampler: one distillation step per call (see the module
    docstring); returns the teacher's output unchanged."""

    def __init__(self, student: nn.Module, teacher: nn.Module, optimizer: torch.optim.Optimizer,
                 steps: list[nn.Parameter], cfg: DistillConfig, on_step: Callable[[float], None],
                 step_scale: StepLossScale | None = None, lr_scale: Callable[[], float] | None = None):
        super().__init__()
        self.student, self.teacher = student, teacher
        self.optimizer, self.steps, self.cfg, self.on_step = optimizer, steps, cfg, on_step
        self.step_scale = step_scale  # set: `step_weighting: relative`
        self.lr_scale = lr_scale  # set: the multiplier of each group's `base_lr` for the coming step

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            out = self.teacher(*args, **kwargs)
        target = output_tensor(out).float()
        device = target.device
        with torch.enable_grad():
            amp = self.cfg.amp and device.type == "cuda"
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                pred = output_tensor(self.student(*args, **kwargs)).float()
            if self.cfg.guidance is not None:
                pred = guided(pred, self.cfg.guidance, self.cfg.cfg_order)
                target = guided(target, self.cfg.guidance, self.cfg.cfg_order)
            loss = F.mse_loss(pred, target)
            if not torch.isfinite(loss):
                raise TrtqError("efficientdm: the distillation loss became NaN/Inf (lower lr / step_lr)")
            weight = 1.0 if self.step_scale is None else self.step_scale.weight(args, kwargs, loss)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * weight).backward()
        if self.lr_scale is not None:
            f = self.lr_scale()
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * f
        self.optimizer.step()
        with torch.no_grad():
            for s in self.steps:
                s.clamp_(min=MIN_STEP)
        self.on_step(float(loss.detach()))
        return out


# ----------------------------------------------------------------------------------------- checkpoints
def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """Trainable tensors + optimizer state (safetensors) and meta (JSON), each replaced atomically."""
    path.mkdir(parents=True, exist_ok=True)
    tensors = {f"param.{n}": p.detach().cpu().contiguous() for n, p in _trainable(model).items()}
    for idx, state in optimizer.state_dict()["state"].items():
        for k, v in state.items():
            tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    tmp = path / (CHECKPOINT_TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path / CHECKPOINT_TENSORS)
    tmp = path / (CHECKPOINT_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp.replace(path / CHECKPOINT_META)


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: dict) -> dict | None:
    """Restore a checkpoint written for the same configuration; None when there is none yet."""
    if not (path / CHECKPOINT_META).is_file():
        return None
    meta = json.loads((path / CHECKPOINT_META).read_text())
    if meta.get("config") != config:
        raise TrtqError(f"efficientdm checkpoint {path} was written by another configuration; use a new "
                        "checkpoint directory (or the configuration it records)")
    tensors = load_file(str(path / CHECKPOINT_TENSORS))
    params = _trainable(model)
    names = {k[len("param."):] for k in tensors if k.startswith("param.")}
    if names != set(params):
        raise TrtqError(f"efficientdm checkpoint {path} holds other trainable tensors than this model's")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param.{n}"])
    state = optimizer.state_dict()
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, k = key.split(".", 2)
            state["state"].setdefault(int(idx), {})[k] = v
    optimizer.load_state_dict(state)
    return meta


# ----------------------------------------------------------------------------------------- the loop
def distill(student: nn.Module, teacher: nn.Module, loop, param_groups: list[dict], steps: list[nn.Parameter],
            cfg: DistillConfig, fingerprint: dict | None = None,
            on_round: Callable[[int, nn.Module], None] | None = None) -> dict:
    """Run `cfg.rounds` rounds of `loop` with a `DistillStep`; returns the run's statistics.

    `param_groups`: the optimizer's groups (per-layer learning rates); `steps`: learned step sizes (kept
    positive); `fingerprint`: what a checkpoint must match besides `cfg` (e.g. the trainable layout);
    `on_round(rounds done, student)`: called after each round (e.g. to evaluate a merged copy; its time is
    not counted in the returned seconds)."""
    cfg.check()
    optimizer = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    config = {**{k: v for k, v in asdict(cfg).items() if k not in ("checkpoint", "progress", "rounds",
                                                                    "checkpoint_every")},
              **(fingerprint or {})}
    if cfg.lr_schedule != "constant":  # the cosine depends on the round count: a resumed run must share it
        config["schedule_rounds"] = cfg.rounds
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else None
    start_round, history, step_means = 0, [], None
    if ckpt is not None:
        meta = load_checkpoint(ckpt, student, optimizer, config)
        if meta is not None:
            start_round, history, step_means = meta["round"], meta["history"], meta.get("step_loss_means")
    step_scale = StepLossScale(student, means=step_means) if cfg.step_weighting == "relative" else None
    losses: list[float] = []
    bar = tqdm(desc="efficientdm", unit="it", disable=not cfg.progress, leave=False)

    done = sum(h["iterations"] for h in history)  # optimizer steps before this round

    def lr_scale() -> float:
        return lr_factor(cfg, done + len(losses), r)

    def on_step(loss: float) -> None:
        losses.append(loss)
        bar.update(1)
        bar.set_postfix(round=f"{r + 1}/{cfg.rounds}", loss=f"{loss:.3g}")

    step = DistillStep(student, teacher, optimizer, steps, cfg, on_step, step_scale, lr_scale)
    round_fn = getattr(loop, "round", None)
    start, outside = time.perf_counter(), 0.0  # outside: time spent in on_round (evaluations), not training
    r = start_round
    for r in range(start_round, cfg.rounds):
        losses.clear()
        if round_fn is not None:
            round_fn(step, r)
        else:
            loop(step)
        if not losses:
            raise TrtqError("efficientdm: the sampling loop never called the denoiser it was given")
        history.append({"round": r, "iterations": len(losses), "loss": sum(losses) / len(losses)})
        done += len(losses)
        if ckpt is not None and ((r + 1) % cfg.checkpoint_every == 0 or r + 1 == cfg.rounds):
            meta = {"round": r + 1, "history": history, "config": config}
            if step_scale is not None:
                meta["step_loss_means"] = step_scale.means
            save_checkpoint(ckpt, student, optimizer, meta)
        if on_round is not None:
            t0 = time.perf_counter()
            on_round(r + 1, student)
            outside += time.perf_counter() - t0
    bar.close()
    return {"rounds": cfg.rounds, "resumed_from_round": start_round,
            "iterations": sum(h["iterations"] for h in history), "history": history,
            "seconds": round(time.perf_counter() - start - outside, 2)}


# ----------------------------------------------------------------------------------------- zoo data
class DigitsDistillLoop:
    """Data for a zoo model (`trtq.zoo.DigitsModel`): `samples` images from random noise and random labels
    per round (round r: seed `seed + r`), DDIM with the model's guidance. Called as `loop(denoiser)` it is
    round 0 (usable as the calibration loop, so the PTQ initialization sees the same kind of data)."""

    def __init__(self, model, samples: int = 16, steps: int = 20, seed: int = 20_000, scheduler: str = "ddim",
                 guidance_scale: float | None = None):
        from trtq.pipeline import DigitsPipeline

        self.model, self.samples, self.steps, self.seed = model, samples, steps, seed
        self.guidance_scale = guidance_scale
        self.pipe = DigitsPipeline(model, scheduler=scheduler)

    def round(self, denoiser: nn.Module, r: int) -> None:
        gen = torch.Generator().manual_seed(self.seed + r)
        labels = torch.randint(self.model.num_classes, (self.samples,), generator=gen)
        self.pipe(labels, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                  seed=self.seed + r, batch_size=self.samples, progress=False, denoiser=denoiser)

    def __call__(self, denoiser: nn.Module) -> None:
        self.round(denoiser, 0)
