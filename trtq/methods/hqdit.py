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
- progress (bool): a progress bar over the layers, naming the one being searched, its shape and its stage
  (clip search, format choice, gptq).
Calibration inputs are the float model's own: every layer computes in float while they are captured.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from trtq.errors import TrtqError
from trtq.formats import get_format
from trtq.fp4 import FP4_FORMATS, FP32_SCALES, code_values, dynamic_act_scales, group_amax, scales_from_amax
from trtq.hadamard import random_signs
from trtq.methods import register_method
from trtq.nn import quantizers
from trtq.nn.fp4_linear import FP4Linear, require_float_weights
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
def fake_quantize(x: torch.Tensor, scale: torch.Tensor, fmt_name: str, g: int) -> torch.Tensor:
    """`trtq.fp4.fake_quantize_groups(x, scale, fmt_name, g)` bit for bit (same division, clamp, rounding and
    product, same dtypes), by a threshold count (`FloatFormat.encode_nearest`) and a table lookup instead of
    per-element rounding arithmetic: the searches below run it once per candidate over every weight.
    x [..., K]; scale [..., K/g] or [K/g], broadcast against x's groups (not repeated g times)."""
    fmt = get_format(fmt_name)
    groups = x.float().reshape(*x.shape[:-1], -1, g)
    s = scale[..., None]
    codes = fmt.encode_nearest((groups / s).clamp(-fmt.max_value, fmt.max_value))
    out = torch.take(code_values(fmt_name, x.device), codes.long()) * s
    return out.reshape(*out.shape[:-2], -1)  # x's shape, or broadcast against a batch of candidate scales


SEARCH_ELEMENTS = 1 << 20  # weight elements x clip ratios per batched pass (cache-sized: 2x faster than 16x more)


def search_weight_scales(layer: FP4Linear, w: torch.Tensor, fmt: str, clip: bool) -> torch.Tensor:
    """Group scales [N, K/g] for w; with clip, each group's clip ratio minimizes that group's squared error
    (the first ratio of least error, in CLIP_RATIOS order). All ratios in one batched pass per slice of rows."""
    g = layer.group_size
    amax = group_amax(w, g)
    if not clip:
        return layer.weight_scales(w, fmt=fmt)
    ratios = CLIP_RATIOS.to(w.device)
    best = torch.empty_like(amax)
    step = max(1, SEARCH_ELEMENTS // (len(ratios) * w.shape[1]))
    for r in range(0, w.shape[0], step):
        rows, a = w[r : r + step], amax[r : r + step]
        cand = a[None] * ratios[:, None, None]  # [ratios, rows, K/g]
        # Per-group search on FP32 scales; FP8 rounding of the scales (if any) happens once at packing.
        err = (fake_quantize(rows[None], scales_from_amax(cand, fmt), fmt, g) - rows).pow(2)
        err = err.reshape(*cand.shape, g).sum(-1)
        best[r : r + step] = cand.gather(0, err.argmin(0, keepdim=True))[0]  # argmin: the first least error
    return layer.weight_scales(w, clip=best / amax.clamp_min(1e-30), fmt=fmt)


def search_act(layer: FP4Linear, xr: torch.Tensor, col_amax: torch.Tensor, fmt: str, clip: bool):
    """(clip ratio, static scale or None) for activations in format fmt, minimizing their squared error."""
    scheme, g = layer.input_quantizer.scheme, layer.group_size
    xr = xr[:ACT_SEARCH_ROWS]  # already a random subset
    ratios = CLIP_RATIOS if clip else CLIP_RATIOS[-1:]
    if scheme.dynamic:
        amax = group_amax(xr, g)
        errs = [(fake_quantize(xr, scales_from_amax(amax * r, fmt, scheme.scale_format), fmt, g) - xr)
                .pow(2).mean() for r in ratios]
        return float(ratios[int(torch.stack(errs).argmin())]), None
    # Static: ranges from every row seen; one ratio per group (group) or one for the layer (tensor).
    per_group = scheme.granularity == "group"
    amax = col_amax.reshape(-1, g).amax(-1) if per_group else col_amax.amax().expand(xr.shape[1] // g)
    errs = []
    for r in ratios:
        scale = scales_from_amax(amax * r, fmt)
        errs.append((fake_quantize(xr, scale, fmt, g) - xr).pow(2).reshape(xr.shape[0], -1, g).sum((0, 2)))
    errs = torch.stack(errs)  # [ratios, groups]
    if per_group:
        best = amax * ratios[errs.argmin(0)]
        return 1.0, scales_from_amax(best, fmt, scheme.scale_format)
    return 1.0, scales_from_amax(amax[0] * ratios[errs.sum(1).argmin()], fmt)


GPTQ_BLOCK = 128  # columns whose errors reach the later columns in one matrix product


def gptq_fp4(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, fmt: str, g: int, damp: float):
    """GPTQ on a group-scaled FP4 grid: quantize column by column, pushing each column's error onto the
    columns not yet quantized through the inverse Hessian (scales fixed in advance).

    Lazy batch updates (the GPTQ paper's): inside a block of GPTQ_BLOCK columns the errors update the block's
    own columns one by one; the columns after it get the whole block's errors in one product at its end.
    The same sums in another order (float64): a column-by-column update of every later column read and wrote
    the whole weight once per column."""
    w = w.double().clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double().repeat_interleave(g, dim=1)
    q = torch.zeros_like(w)
    k = w.shape[1]
    for b0 in range(0, k, GPTQ_BLOCK):
        b1 = min(b0 + GPTQ_BLOCK, k)
        errs = torch.empty(w.shape[0], b1 - b0, dtype=w.dtype, device=w.device)
        for i in range(b0, b1):
            col = w[:, i]
            q[:, i] = fake_quantize(col[:, None], s[:, i : i + 1], fmt, 1)[:, 0].double()
            err = (col - q[:, i]) / hinv[i, i]
            w[:, i + 1 : b1] -= err[:, None] * hinv[i, i + 1 : b1][None, :]
            errs[:, i - b0] = err
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return q.float()


def dequantized_input(layer: FP4Linear, xr: torch.Tensor, fmt: str, clip: float, static_scale) -> torch.Tensor:
    """What the layer's FP4 GEMM computes with for rotated inputs xr [M, K] under activation format fmt: the
    same codes and scales as `trtq::fp4_group_gemm` (dynamic per-row scales, FP8 double quant included),
    multiplied back to float."""
    g = layer.group_size
    if static_scale is None:
        scale, row_scale = dynamic_act_scales(xr, fmt, g, clip, layer.scale_format or FP32_SCALES)
        scale = scale if row_scale is None else scale * row_scale
    else:
        scale = static_scale.float().reshape(-1).expand(xr.shape[1] // g)
    return fake_quantize(xr, scale, fmt, g)


def select_formats(layer: FP4Linear, x: torch.Tensor, candidates: dict, act_candidates: dict):
    """Pack each weight candidate, quantize the calibration inputs x (raw, unrotated) with each activation
    candidate, and return ((weight format, act format), {pair: output MSE}) with the lowest error.

    Each pair's output is one float GEMM of the dequantized activations and weights: the layer's own codes
    and scales, so the same products as the layer's forward, summed in another order (the op adds group
    partials one by one): errors agree to ~1e-6 relative, ~10x faster than a forward per pair on CPU."""
    with torch.no_grad():
        ref = nn.functional.linear(x, layer.weight, layer.bias)
        xr = layer.rotate_input(x.float())
        weights = {}
        for wf, (w, scale) in candidates.items():
            layer.pack_weight(w, scale, fmt=wf)
            weights[wf] = layer.dequantized_weight()
        errors = {}
        for af, act in act_candidates.items():
            xq = xr if af == "none" else dequantized_input(layer, xr, af, *act)
            for wf, wq in weights.items():
                errors[(wf, af)] = float((nn.functional.linear(xq, wq, layer.bias) - ref).pow(2).mean())
    return min(errors, key=errors.get), errors


def calibrate_layer(layer: FP4Linear, st: LayerStats, a: HQDiTArgs, note=lambda stage: None) -> dict:
    """Search, choose and pack one layer; returns its choice and the output error of every format pair.
    `note(stage)` is told each stage as it starts (the progress bar shows it)."""
    # Statistics are gathered on the CPU (bounded memory); the searches run where the layer lives.
    dev = layer.weight_packed.device
    samples, col_amax = st.samples.to(dev), st.col_amax.to(dev)
    w = layer.rotated_weight()
    xr = layer.rotate_input(samples)
    wfmts = a.formats if a.select_format else [layer.weight_format]
    iq = layer.input_quantizer
    fp4_acts = iq is not None and iq.scheme.format in FP4_FORMATS
    afmts = (a.formats if a.select_format and fp4_acts else [layer.act_format])
    note(f"clip search ({len(wfmts)} weight, {len(afmts)} act formats x {len(CLIP_RATIOS) if a.clip else 1} ratios)")
    w_cands = {f: (w, search_weight_scales(layer, w, f, a.clip)) for f in wfmts}
    a_cands = {f: search_act(layer, xr, col_amax, f, a.clip) for f in afmts if f != "none"} or {"none": None}
    note(f"format choice ({len(w_cands) * len(a_cands)} pairs, {len(samples)} rows)")
    (wf, af), errors = select_formats(layer, samples, w_cands, a_cands)
    w_scale = w_cands[wf][1]
    if a.gptq:
        if layer.scale_format is not None:  # GPTQ must round onto the scales the layer will store
            w_scale = double_quantize_scale(w_scale, layer.scale_format)[2]
        note(f"gptq ({layer.in_features} columns)")
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
    require_float_weights(model, "hqdit")  # rotation, searches and GPTQ all start from the float weights
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
        shape = f"{name} [{layer.out_features}x{layer.in_features}]"
        bar.set_postfix_str(shape)
        calibrate_layer(layer, stats[name], a, note=lambda stage, shape=shape: bar.set_postfix_str(f"{shape} {stage}"))
        layer.refresh_weight()  # the packed weights changed: recompute anything derived from them
