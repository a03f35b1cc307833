"""Temporal Information Block (TIB) detection: which modules of a denoiser compute from the timestep alone.

Found from a trace, not from a list of names: the denoiser is called four times on one recorded call's
arguments, each time changing one input class (the sample, the conditioning, the timestep), and every module's
outputs are compared bit for bit with those of the unchanged call. A module is *temporal* when its outputs
change with the timestep and never with the sample. Temporal modules split in two:
- time-only: unchanged when the conditioning changes too (diffusers UNet: `time_proj`, `time_embedding.*`,
  each resnet's `time_emb_proj`). Their outputs are an exact function of t: one value per timestep.
- time-and-condition: they also see the conditioning (DiT/PixArt adaLN: `norm1.emb`, `norm1.linear` and
  `proj_out_1` mix t with the class label / resolution embedding). With a finite label set their outputs are
  still a finite set per timestep (one per label), so per-timestep ranges over all calibration labels are
  exact when calibration covered every label, and only approximate otherwise.
TFMQ's TIB is "depends only on t"; `TemporalModules.tib(include_condition=True)` takes the second kind in
too, which is what the adaLN modulation of a DiT needs (the method's default; see docs/tfmq.md).

Which argument is which is read from the forward signature: `timestep` by name, the sample is the first
parameter, every other tensor argument (nested in dicts too) is conditioning.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import nn

from trtq.errors import TrtqError


@dataclass
class TemporalModules:
    time_only: list[str] = field(default_factory=list)
    time_and_condition: list[str] = field(default_factory=list)

    def tib(self, include_condition: bool = True) -> list[str]:
        return self.time_only + (self.time_and_condition if include_condition else [])


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [o for o in out if isinstance(o, torch.Tensor)]
    sample = getattr(out, "sample", None)
    return [sample] if isinstance(sample, torch.Tensor) else []


def _perturb_condition(value, gen: torch.Generator):
    if isinstance(value, dict):
        return {k: _perturb_condition(v, gen) for k, v in value.items()}
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return torch.randn(value.shape, generator=gen).to(value) * (value.std() if value.numel() > 1 else 1) + value.mean()
    top = int(value.max()) + 1  # integer labels: move each to another label of the same range
    return (value + 1) % max(top, 2)


def _other_timestep(t):
    t = torch.as_tensor(t)
    return torch.where(t > 500, t - 250, t + 250).to(t.dtype)


def split_call(denoiser: nn.Module, args: tuple, kwargs: dict) -> inspect.BoundArguments:
    bound = inspect.signature(denoiser.forward).bind(*args, **kwargs)
    if "timestep" not in bound.arguments:
        raise TrtqError(f"{type(denoiser).__name__} was called without a 'timestep' argument")
    return bound


def detect_temporal_modules(denoiser: nn.Module, args: tuple, kwargs: dict, seed: int = 0) -> TemporalModules:
    """Classify the denoiser's modules by tracing one call (args, kwargs) and three perturbed copies."""
    bound = split_call(denoiser, args, kwargs)
    names = list(bound.arguments)
    sample_name = names[0]
    gen = torch.Generator().manual_seed(seed)

    def variant(change: str) -> dict:
        a = dict(bound.arguments)
        if change == "sample":
            a[sample_name] = torch.randn(a[sample_name].shape, generator=gen).to(a[sample_name])
        elif change == "timestep":
            a["timestep"] = _other_timestep(a["timestep"])
        elif change == "condition":
            for k in names:
                if k not in (sample_name, "timestep"):
                    a[k] = _perturb_condition(a[k], gen)
        return a

    traces = {}
    for change in ("none", "sample", "condition", "timestep"):
        record: dict[str, list[torch.Tensor]] = {}
        hooks = []
        for name, mod in denoiser.named_modules():
            if name:
                hooks.append(mod.register_forward_hook(
                    lambda m, i, o, name=name: record.setdefault(name, []).extend(t.detach().clone() for t in _outputs(o))))
        try:
            a = variant(change)
            call = inspect.BoundArguments(bound.signature, a)
            with torch.no_grad():
                denoiser(*call.args, **call.kwargs)
        finally:
            for h in hooks:
                h.remove()
        traces[change] = record

    def same(name: str, change: str) -> bool:
        x, y = traces["none"].get(name, []), traces[change].get(name, [])
        return len(x) == len(y) and all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(x, y))

    found = TemporalModules()
    for name in traces["none"]:
        if not traces["none"][name] or same(name, "timestep") or not same(name, "sample"):
            continue
        (found.time_only if same(name, "condition") else found.time_and_condition).append(name)
    return found
