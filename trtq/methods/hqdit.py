"""HQ-DiT (arXiv 2405.19751): W4A4 with 4-bit floats on a DiT's linear layers.

Runs on the recipe's `layer: fp4` layers (`trtq.nn.fp4_linear.FP4Linear`), after they are swapped in and
before the generic calibration. `method_args` (all optional) switch the parts on and off:
- hadamard (bool): randomized Hadamard rotation per layer, `x Wᵀ = (x R)(W R)ᵀ`; W R packed offline, x R
  by a fast Walsh-Hadamard transform online. seed (int) seeds the ±1 signs (mixed with the layer name).
- clip (bool): clipping search minimizing quantization MSE: one ratio of |max| per weight group (each
  output channel's groups searched separately, since each has its own scale); for activations one ratio per
  layer of the live group |max| (dynamic) or one per group / per tensor of the calibrated range (static).
- select_format (bool) + formats (list): per layer, pick the weight and activation FP4 formats whose
  layer-output error on calibration inputs is lowest (the artifact records them).
- gptq (bool) + damp (float): GPTQ on the FP4 grid with the (clipped) group scales fixed, Hessian from
  the calibration inputs (after the rotation).
- max_rows (int): calibration input rows kept per layer for the searches.
- progress (bool): a progress bar over the layers, naming the one being searched.
Calibration inputs are the float model's own: every layer computes in float while they are captured.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from trtq.errors import TrtqError
from trtq.fp4 import FP4_FORMATS, fake_quantize_groups, group_amax, scales_from_amax
from trtq.hadamard import random_signs
from trtq.methods import register_method
from trtq.nn import quantizers
from trtq.nn.fp4_linear import FP4Linear
from trtq.quantizer import double_quantize_scale

CLIP_RATIOS = torch.linspace(0.5, 1.0, 11)
ROWS_PER_CALL = 256
ACT_SEARCH_ROWS = 1024  # rows for the activation clip search (one fake-quantization per ratio); selection uses all


@dataclass
class HQDiTArgs:
    hadamard: bool = True
    clip: bool = True
    select_format: bool = True
    formats: list = field(default_factory=lambda: list(FP4_FORMATS))
    gptq: bool = False
    damp: float = 0.01
    seed: int = 0
    max_rows: int = 4096
    progress: bool = True

    @classmethod
    def parse(cls, args: dict) -> HQDiTArgs:
        known = set(cls.__dataclass_fields__)
        unknown = set(args) - known
        if unknown:
            raise TrtqError(f"hqdit method_args has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        a = cls(**args)
        for flag in ("hadamard", "clip", "select_format", "gptq", "progress"):
            if not isinstance(getattr(a, flag), bool):
                raise TrtqError(f"hqdit method_args {flag} must be true or false")
        if not a.formats or any(f not in FP4_FORMATS for f in a.formats):
            raise TrtqError(f"hqdit formats must be a non-empty subset of {FP4_FORMATS}, got {a.formats!r}")
        if not (isinstance(a.damp, (int, float)) and 0 < a.damp < 1):
            raise TrtqError(f"hqdit damp must lie in (0, 1), got {a.damp!r}")
        if isinstance(a.max_rows, bool) or not isinstance(a.max_rows, int) or a.max_rows < 16:
            raise TrtqError(f"hqdit max_rows must be an integer >= 16, got {a.max_rows!r}")
        if isinstance(a.seed, bool) or not isinstance(a.seed, int):
            raise TrtqError(f"hqdit seed must be an integer, got {a.seed!r}")
        return a


@dataclass
class LayerStats:
    samples: list = field(default_factory=list)  # raw input rows (a random subset)
    col_amax: torch.Tensor | None = None  # |max| per input column after the rotation, over every row seen
    hessian: torch.Tensor | None = None  # Σ xᵀx of rotated inputs (float64)
    rows: int = 0


# ----------------------------------------------------------------------------------- calibration data
def capture(model: nn.Module, layers: dict[str, FP4Linear], calib_loop, max_rows: int, hessian: bool,
            seed: int = 0) -> dict[str, LayerStats]:
    """Run calib_loop with every quantizer off and the fp4 layers in float; record what each fp4 layer sees."""
    stats = {name: LayerStats() for name in layers}
    gen = torch.Generator().manual_seed(seed)

    def hook_for(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, mod.in_features).float()
            st = stats[name]
            st.samples.append(x[torch.randperm(x.shape[0], generator=gen)[:ROWS_PER_CALL]].cpu())
            xr = mod.rotate_input(x)
            amax = xr.abs().amax(0).cpu()
            st.col_amax = amax if st.col_amax is None else torch.maximum(st.col_amax, amax)
            if hessian:
                h = (xr.T.double() @ xr.double()).cpu()
                st.hessian = h if st.hessian is None else st.hessian + h
            st.rows += x.shape[0]
        return hook

    modes = {n: q.mode for n, q in quantizers(model)}
    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        for _, q in quantizers(model):
            q.mode = "off"
        for layer in layers.values():
            layer.float_forward = True
        with torch.no_grad():
            calib_loop(model)
    finally:
        for h in handles:
            h.remove()
        for layer in layers.values():
            layer.float_forward = False
        qs = dict(quantizers(model))
        for n, mode in modes.items():
            if n in qs:
                qs[n].mode = mode
    for name, st in stats.items():
        if not st.samples:
            raise TrtqError(f"hqdit: calibration never reached layer {name}")
        x = torch.cat(st.samples)
        st.samples = x[torch.randperm(x.shape[0], generator=gen)[:max_rows]]
    return stats


# ----------------------------------------------------------------------------------- searches
def search_weight_scales(layer: FP4Linear, w: torch.Tensor, fmt: str, clip: bool) -> torch.Tensor:
    """Group scales [N, K/g] for w; with clip, each group's clip ratio minimizes that group's squared error."""
    g = layer.group_size
    amax = group_amax(w, g)
    if not clip:
        return layer.weight_scales(w, fmt=fmt)
    best_err = torch.full_like(amax, float("inf"))
    best = amax.clone()
    for r in CLIP_RATIOS:
        # Per-group search on FP32 scales; FP8 rounding of the scales (if any) happens once at packing.
        scale = scales_from_amax(amax * r, fmt)
        err = (fake_quantize_groups(w, scale, fmt, g) - w).pow(2).reshape(*amax.shape, g).sum(-1)
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, amax * r, best)
    return layer.weight_scales(w, clip=best / amax.clamp_min(1e-30), fmt=fmt)


def search_act(layer: FP4Linear, xr: torch.Tensor, col_amax: torch.Tensor, fmt: str, clip: bool):
    """(clip ratio, static scale or None) for activations in format fmt, minimizing their squared error."""
    scheme, g = layer.input_quantizer.scheme, layer.group_size
    xr = xr[:ACT_SEARCH_ROWS]  # already a random subset
    ratios = CLIP_RATIOS if clip else CLIP_RATIOS[-1:]
    if scheme.dynamic:
        amax = group_amax(xr, g)
        errs = [(fake_quantize_groups(xr, scales_from_amax(amax * r, fmt, scheme.scale_format), fmt, g) - xr)
                .pow(2).mean() for r in ratios]
        return float(ratios[int(torch.stack(errs).argmin())]), None
    # Static: ranges from every row seen; one ratio per group (group) or one for the layer (tensor).
    per_group = scheme.granularity == "group"
    amax = col_amax.reshape(-1, g).amax(-1) if per_group else col_amax.amax().expand(xr.shape[1] // g)
    errs = []
    for r in ratios:
        scale = scales_from_amax(amax * r, fmt)
        errs.append((fake_quantize_groups(xr, scale, fmt, g) - xr).pow(2).reshape(xr.shape[0], -1, g).sum((0, 2)))
    errs = torch.stack(errs)  # [ratios, groups]
    if per_group:
        best = amax * ratios[errs.argmin(0)]
        return 1.0, scales_from_amax(best, fmt, scheme.scale_format)
    return 1.0, scales_from_amax(amax[0] * ratios[errs.sum(1).argmin()], fmt)


def gptq_fp4(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, fmt: str, g: int, damp: float):
    """GPTQ on a group-scaled FP4 grid: quantize column by column, pushing each column's error onto the
    columns not yet quantized through the inverse Hessian (scales fixed in advance)."""
    w = w.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double().repeat_interleave(g, dim=1)
    q = torch.zeros_like(w)
    for i in range(w.shape[1]):
        col = w[:, i]
        q[:, i] = fake_quantize_groups(col[:, None], s[:, i : i + 1], fmt, 1)[:, 0].double()
        err = (col - q[:, i]) / hinv[i, i]
        w[:, i + 1 :] -= err[:, None] * hinv[i, i + 1 :][None, :]
    return q.float()


def select_formats(layer: FP4Linear, x: torch.Tensor, candidates: dict, act_candidates: dict):
    """Pack each weight candidate, set each activation candidate, run the layer on calibration inputs x
    (raw, unrotated) and return ((weight format, act format), {pair: output MSE}) with the lowest error."""
    with torch.no_grad():
        ref = nn.functional.linear(x, layer.weight, layer.bias)
        errors = {}
        for wf, (w, scale) in candidates.items():
            layer.pack_weight(w, scale, fmt=wf)
            for af, act in act_candidates.items():
                if af != "none":
                    layer.set_act(af, *act)
                errors[(wf, af)] = float((layer(x) - ref).pow(2).mean())
    return min(errors, key=errors.get), errors


def calibrate_layer(layer: FP4Linear, st: LayerStats, a: HQDiTArgs) -> dict:
    """Search, choose and pack one layer; returns its choice and the output error of every format pair."""
    # Statistics are gathered on the CPU (bounded memory); the searches run where the layer lives.
    dev = layer.weight.device
    samples, col_amax = st.samples.to(dev), st.col_amax.to(dev)
    w = layer.rotated_weight()
    xr = layer.rotate_input(samples)
    wfmts = a.formats if a.select_format else [layer.weight_format]
    iq = layer.input_quantizer
    fp4_acts = iq is not None and iq.scheme.format in FP4_FORMATS
    afmts = (a.formats if a.select_format and fp4_acts else [layer.act_format])
    w_cands = {f: (w, search_weight_scales(layer, w, f, a.clip)) for f in wfmts}
    a_cands = {f: search_act(layer, xr, col_amax, f, a.clip) for f in afmts if f != "none"} or {"none": None}
    (wf, af), errors = select_formats(layer, samples, w_cands, a_cands)
    w_scale = w_cands[wf][1]
    if a.gptq:
        if layer.scale_format is not None:  # GPTQ must round onto the scales the layer will store
            w_scale = double_quantize_scale(w_scale, layer.scale_format)[2]
        w = gptq_fp4(w, st.hessian.to(dev) / max(st.rows, 1), w_scale, wf, layer.group_size, a.damp)
    layer.pack_weight(w, w_scale, fmt=wf)
    if af != "none":
        layer.set_act(af, *a_cands[af])
    return {"weight_format": wf, "act_format": af, "errors": errors}


@register_method("hqdit")
def hqdit(model: nn.Module, recipe, calib_loop) -> None:
    a = HQDiTArgs.parse(dict(recipe.method_args))
    layers = {n: m for n, m in model.named_modules() if isinstance(m, FP4Linear)}
    if not layers:
        raise TrtqError("hqdit found no fp4 layers: give the recipe rules with `layer: fp4`")
    if a.hadamard:
        for name, layer in layers.items():
            layer.set_rotation(random_signs(layer.in_features, a.seed * 1_000_003 + zlib.crc32(name.encode())))
    if not (a.clip or a.select_format or a.gptq):
        return
    if calib_loop is None:
        raise TrtqError("hqdit searches clipping/formats on calibration data: pass calib_loop")
    stats = capture(model, layers, calib_loop, a.max_rows, hessian=a.gptq, seed=a.seed)
    bar = tqdm(layers.items(), desc="hqdit layers", leave=False, disable=not a.progress)
    for name, layer in bar:
        bar.set_postfix_str(f"{name} [{layer.out_features}x{layer.in_features}]")
        calibrate_layer(layer, stats[name], a)
        layer.refresh_weight()  # the packed weights changed: recompute anything derived from them
