"""EfficientDM (arXiv 2310.03270): quantization-aware LoRA fine-tuning by data-free distillation.

Registers the layer kind "qalora" (`trtq.efficientdm.qalora`: integer fake-quantized layers that store their
merged weight codes) and the method "efficientdm", which runs on "qalora" and "fp4" layers (HQ-DiT's):
1. TALSQ tables: every "qalora" layer with a static per-tensor activation quantizer gets a per-timestep
   table (`trtq.nn.timestep`, the home TFMQ's FSC uses too), routed from the denoiser's timestep argument.
2. PTQ initialization: the recipe's calibration on `calib_loop` (plus HQ-DiT first, when the recipe's
   `init: hqdit` asks for it), so fine-tuning starts where plain PTQ ends.
3. A float teacher (a copy with every quantizer off) and an update per adaptable layer: rank-r B·A
   (`adapter: lora`) or the full weight (`adapter: full`, the QAT baseline).
4. Data-free distillation (`trtq.efficientdm.distill`): `rounds` runs of the sampler, one AdamW step per
   denoiser call; learning rates per layer ∝ the layer's mean weight step (scale-aware optimization);
   weight and activation step sizes learned with LSQ (`learn_steps`).
5. Merge: the updates go into the layers' quantized weights, step sizes become buffers again; the model is
   an ordinary quantized model that `save_artifact` writes without any LoRA tensor.
`method_args` (all optional): adapter ("lora" | "full"), rank (int, 32), learn_steps (bool), talsq (bool),
on_unknown ("error" | "nearest"), init ("ptq" | "hqdit"), hqdit (dict: HQ-DiT's method_args for that init),
seed (int), and the distillation's: rounds, lr, scale_aware, step_lr, weight_decay, guidance, cfg_order,
checkpoint (a directory: resume from it / write to it), checkpoint_every, progress, amp.
Statistics (iterations, loss per round, wall time, peak memory, trainable parameters) are left on the model
as `model.trtq_efficientdm_stats` (not saved in artifacts).
"""

from __future__ import annotations

import copy
import dataclasses
import random

import torch
from torch import nn

from trtq.efficientdm.distill import DistillConfig, distill
from trtq.efficientdm.qalora import (
    QALORA_LAYERS,
    adaptable_layers,
    attach_adapters,
    is_qalora,
    merge_adapters,
    weight_step,
)
from trtq.errors import TrtqError
from trtq.methods import METHODS, register_method
from trtq.nn import quantizers
from trtq.nn.fp4_linear import FP4Linear, require_float_weights
from trtq.nn.modules import register_layer_kind
from trtq.nn.timestep import route_timesteps, set_steps_learnable, unroute_timesteps, use_timestep_table

register_layer_kind("qalora", QALORA_LAYERS)

OWN = {"adapter": "lora", "rank": 32, "learn_steps": True, "talsq": True, "on_unknown": "error", "init": "ptq",
       "hqdit": {}, "seed": 0}
DISTILL_KEYS = {f.name for f in dataclasses.fields(DistillConfig)}


def parse_args(method_args: dict) -> tuple[dict, DistillConfig]:
    unknown = set(method_args) - set(OWN) - DISTILL_KEYS
    if unknown:
        raise TrtqError(f"unknown efficientdm method_args {sorted(unknown)}; known: {sorted(set(OWN) | DISTILL_KEYS)}")
    a = {**OWN, **{k: v for k, v in method_args.items() if k in OWN}}
    if a["adapter"] not in ("lora", "full"):
        raise TrtqError(f"efficientdm adapter must be 'lora' or 'full', got {a['adapter']!r}")
    for k in ("rank", "seed"):
        if isinstance(a[k], bool) or not isinstance(a[k], int) or a[k] < (1 if k == "rank" else 0):
            raise TrtqError(f"efficientdm {k} must be an integer >= {1 if k == 'rank' else 0}, got {a[k]!r}")
    for k in ("learn_steps", "talsq"):
        if not isinstance(a[k], bool):
            raise TrtqError(f"efficientdm {k} must be true or false, got {a[k]!r}")
    if a["on_unknown"] not in ("error", "nearest"):
        raise TrtqError(f"efficientdm on_unknown must be 'error' or 'nearest', got {a['on_unknown']!r}")
    if a["init"] not in ("ptq", "hqdit"):
        raise TrtqError(f"efficientdm init must be 'ptq' or 'hqdit', got {a['init']!r}")
    if not isinstance(a["hqdit"], dict):
        raise TrtqError("efficientdm hqdit must be a mapping of HQ-DiT method_args")
    cfg = DistillConfig(**{k: v for k, v in method_args.items() if k in DISTILL_KEYS})
    cfg.check()
    return a, cfg


def float_teacher(model: nn.Module) -> nn.Module:
    """A copy of the prepared model that computes in float: every quantizer off, fp4 layers on their float
    weights. Its weights are the float model's (quantized layers never change `weight`)."""
    teacher = copy.deepcopy(model)
    for _, q in quantizers(teacher):
        q.mode = "off"
    for m in teacher.modules():
        if isinstance(m, FP4Linear):
            m.float_forward = True
    teacher.requires_grad_(False)
    return teacher


def learnable_steps(model: nn.Module) -> dict[str, nn.Parameter]:
    """Turn the static step sizes of every quantized layer into Parameters (LSQ); {quantizer name: step}."""
    steps = {}
    for name, q in quantizers(model):
        if not q.scheme.dynamic and q.scale is not None:
            steps[name] = set_steps_learnable(q, True)
    return steps


def freeze_steps(model: nn.Module) -> None:
    for _, q in quantizers(model):
        if isinstance(q.scale, nn.Parameter):
            set_steps_learnable(q, False)


def param_groups(weight_steps: dict[str, float], adapters: dict[str, nn.Module], steps: dict[str, nn.Parameter],
                 a: dict, cfg: DistillConfig) -> list[dict]:
    """One optimizer group per tensor. Scale-aware rule: an update's learning rate is lr · mean(weight step)
    of its layer (layers with coarse grids take proportionally larger steps); a step size's is
    step_lr · mean(step), i.e. a relative change. The QAT baseline ("full") uses lr as is."""
    groups = []
    for name, adapter in adapters.items():
        scale = weight_steps[name] if cfg.scale_aware and a["adapter"] == "lora" else 1.0
        for p in adapter.parameters():
            groups.append({"params": [p], "lr": cfg.lr * scale, "name": name})
    for name, s in steps.items():
        groups.append({"params": [s], "lr": cfg.step_lr * float(s.detach().abs().mean()), "name": name})
    return groups


@register_method("efficientdm")
def efficientdm(model: nn.Module, recipe, calib_loop=None, on_round=None) -> dict:
    from trtq.methods.tfmq import PeakMemory

    a, cfg = parse_args(dict(recipe.method_args))
    if calib_loop is None:
        raise TrtqError("efficientdm distills on the sampler's trajectories: pass calib_loop")
    if not adaptable_layers(model):
        raise TrtqError("efficientdm needs layers of kind 'qalora' or 'fp4' (set `layer: qalora` in the rules)")
    require_float_weights(model, "efficientdm")  # the float teacher and the update W0 + B·A read them
    random.seed(a["seed"])
    torch.manual_seed(a["seed"])
    try:
        with PeakMemory() as peak:
            stats = _run(model, recipe, calib_loop, a, cfg, on_round)
    except BaseException:
        unroute_timesteps(model)  # trtq.quantize puts the float layers back; the hook goes too
        raise
    stats["peak_memory_mib"] = round(peak.mib, 1)
    stats["peak_memory_kind"] = f"increase of {peak.kind} during the method"
    model.trtq_efficientdm_stats = stats
    return stats


def _run(model, recipe, calib_loop, a: dict, cfg: DistillConfig, on_round) -> dict:
    import time

    from trtq.quantize import calibrate  # at call time: trtq.quantize imports trtq.methods

    start = time.perf_counter()
    if a["talsq"]:
        for _, layer in model.named_modules():
            q = getattr(layer, "input_quantizer", None) if is_qalora(layer) else None
            if q is not None and not q.scheme.dynamic and q.scheme.granularity == "tensor":
                use_timestep_table(layer, a["on_unknown"])
        route_timesteps(model)
    if a["init"] == "hqdit":
        init_recipe = dataclasses.replace(recipe, method="hqdit",
                                          method_args={"progress": cfg.progress, **a["hqdit"]})
        METHODS["hqdit"](model, init_recipe, calib_loop)
    calibrate(model, calib_loop)
    init_s = time.perf_counter() - start
    teacher = float_teacher(model)
    model.requires_grad_(False)
    weight_steps = {n: float(weight_step(m)) for n, m in adaptable_layers(model).items()}
    adapters = attach_adapters(model, a["adapter"], a["rank"], a["seed"])
    steps = learnable_steps(model) if a["learn_steps"] else {}
    trainable = sum(p.numel() for ad in adapters.values() for p in ad.parameters())
    trainable_steps = sum(s.numel() for s in steps.values())
    groups = param_groups(weight_steps, adapters, steps, a, cfg)
    layout = {"adapter": a["adapter"], "rank": a["rank"], "learn_steps": a["learn_steps"], "talsq": a["talsq"],
              "seed": a["seed"], "trainable": trainable + trainable_steps}
    try:
        run = distill(model, teacher, calib_loop, groups, list(steps.values()), cfg, layout, on_round)
    finally:
        merge_adapters(model)
        freeze_steps(model)
    return {"method": "efficientdm", "adapter": a["adapter"], "rank": a["rank"] if a["adapter"] == "lora" else None,
            "layers": len(adapters), "trainable_parameters": trainable, "trainable_steps": trainable_steps,
            **run, "seconds": {"init": round(init_s, 2), "distill": run["seconds"],
                               "total": round(time.perf_counter() - start, 2)}}
