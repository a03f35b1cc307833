"""Method "smoothquant": migrate activation outliers into the weights (SmoothQuant, arXiv 2211.10438).

For a linear layer y = x Wᵀ and any positive per-input-channel vector s, y = (x / s)(W diag(s))ᵀ. With
s_j = max|x_j|^α / max|W_:,j|^(1-α) the activation's outlier channels shrink and the weight's columns grow
to match, so one per-tensor INT8 activation scale loses less and per-output-channel weight scales absorb
the rest. α is searched per layer on the calibration data (the α, or no smoothing at all, whose quantized
output is closest to the float output on captured inputs) or set in the recipe.

Registers the layer kind "smooth" (`SmoothQuantLinear`): a `QuantLinear` with a `smooth_scale` buffer s.
The float weight stays untouched (an artifact applies to the unmodified float model, whose fingerprint it
checks): the layer quantizes W diag(s) with its weight quantizer and multiplies its input by 1/s before the
input quantizer. What a deployment runs: the INT8 weight codes of W diag(s) (computed offline) and one
per-channel multiply by 1/s in front of the per-tensor Q node, which TensorRT fuses into the preceding
pointwise kernel. Where the preceding op is linear per channel (the adaLN modulation in front of the DiT's
qkv and fc1, the value projection in front of the attention output) 1/s can instead be folded into that
op's weights offline; GELU in front of fc2 cannot fold, so the explicit multiply is the one form that
covers every layer, and it is the form the artifact records.

`method_args`: alpha ("search" or a number in [0, 1]); per_timestep (bool): after smoothing, every smoothed
Linear's input scale becomes a table with one scale per calibrated timestep (`trtq.nn.timestep`; the recipe
w8a8-smoothquant-timestep), since the DiT's adaLN-modulated inputs move with t even after smoothing;
on_unknown ("error" | "nearest") for a timestep that was not calibrated; seed (the α search's row sample).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trtq.errors import TrtqError
from trtq.methods import register_method
from trtq.nn import QuantLinear, float_mode
from trtq.nn.modules import register_layer_kind
from trtq.nn.timestep import ON_UNKNOWN, TimestepTableConfig, route_timesteps, use_timestep_table
from trtq.quantizer import fake_quantize, qparams_from_range

ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
ROWS_PER_LAYER = 4096  # captured input rows per layer for the α search (seeded subsample)
DEFAULTS = {"alpha": "search", "per_timestep": False, "on_unknown": "error", "seed": 0}


class SmoothQuantLinear(TimestepTableConfig, QuantLinear):
    """y = Q(x / s) · Q(W diag(s))ᵀ + b with a per-input-channel `smooth_scale` s (ones until smoothed).

    The input quantizer is one static scale, or (method_args per_timestep) a table of scales indexed by the
    denoiser's timestep (`trtq.nn.timestep`), which the artifact's per-layer config records."""

    @classmethod
    def check_args(cls, weight, input, **layer_args) -> None:
        super().check_args(weight, input, **layer_args)
        if input is None or weight is None:
            raise TrtqError("layer 'smooth' migrates scale between input and weight: it needs both schemes")
        if input.granularity != "tensor" or input.dynamic or not input.symmetric:
            raise TrtqError("layer 'smooth' is for static symmetric per-tensor activations, got "
                            f"{input.describe()}")
        if weight.granularity != "channel" or weight.axis not in (0, -2):
            raise TrtqError(f"layer 'smooth' needs per-output-channel weights (axis 0), got {weight.describe()}")

    @classmethod
    def from_float(cls, module: nn.Module, weight, input, **layer_args):
        q = super().from_float(module, weight, input, **layer_args)
        q.register_buffer("smooth_scale", torch.ones(module.in_features, device=module.weight.device))
        return q

    def set_smoothing(self, s: torch.Tensor) -> None:
        """Use per-input-channel scale s (positive) and recalibrate the weight scales for W diag(s)."""
        if s.shape != (self.in_features,) or not torch.all(s > 0):
            raise TrtqError(f"smooth_scale must be {self.in_features} positive values, got shape {tuple(s.shape)}")
        self.smooth_scale = s.detach().to(self.weight.device, torch.float32)
        self.weight_quantizer.calibrate_from(self.smoothed_weight().detach())

    def smoothed_weight(self) -> torch.Tensor:
        return self.weight * self.smooth_scale.to(self.weight.dtype)

    def quantized_weight(self) -> torch.Tensor:
        # Computed at every call (no cache keyed on tensor identity: the layer must trace; see trtq.nn.modules).
        return self.weight_quantizer(self.smoothed_weight())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x / self.smooth_scale.to(x.dtype)), self.quantized_weight(),
                        self.effective_bias())


register_layer_kind("smooth", {"Linear": SmoothQuantLinear})


def _args(method_args: dict) -> dict:
    unknown = set(method_args) - set(DEFAULTS)
    if unknown:
        raise TrtqError(f"unknown smoothquant method_args {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    args = {**DEFAULTS, **method_args}
    a = args["alpha"]
    if a != "search" and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 <= a <= 1):
        raise TrtqError(f"smoothquant alpha must be 'search' or a number in [0, 1], got {a!r}")
    if not isinstance(args["per_timestep"], bool):
        raise TrtqError(f"smoothquant per_timestep must be true or false, got {args['per_timestep']!r}")
    if args["on_unknown"] not in ON_UNKNOWN:
        raise TrtqError(f"smoothquant on_unknown must be one of {ON_UNKNOWN}, got {args['on_unknown']!r}")
    return args


def smoothing_scale(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^α / max|W_:,j|^(1-α), with dead channels (zero activation or weight) left at 1."""
    w_absmax = weight.detach().abs().amax(0).float()
    a = act_absmax.float()
    s = a.pow(alpha) / w_absmax.pow(1 - alpha)
    ok = (a > 0) & (w_absmax > 0) & torch.isfinite(s) & (s > 0)
    return torch.where(ok, s, torch.ones_like(s))


class _InputStats:
    """Per-channel max|x| over all calibration inputs of one layer, and a seeded subsample of input rows."""

    def __init__(self, seed: int):
        self.absmax: torch.Tensor | None = None
        self.rows: list[torch.Tensor] = []
        self.kept = 0
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, module, args) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        m = x.abs().amax(0)
        self.absmax = m if self.absmax is None else torch.maximum(self.absmax, m)
        if self.kept < ROWS_PER_LAYER:
            take = min(len(x), 256, ROWS_PER_LAYER - self.kept)
            idx = torch.randperm(len(x), generator=self.gen)[:take].to(x.device)
            self.rows.append(x[idx].cpu())
            self.kept += take


def _output_error(layer: SmoothQuantLinear, x: torch.Tensor, absmax: torch.Tensor, s: torch.Tensor) -> float:
    """MSE of the smoothed, quantized layer against the float layer on rows x (the bias cancels). The input
    scale is the one min-max calibration will give: the largest smoothed input over all calibration data."""
    w = layer.weight.detach().float().cpu()
    ws = w * s
    wscheme, ischeme = layer.weight_quantizer.scheme, layer.input_quantizer.scheme
    w_amax = ws.abs().amax(1, keepdim=True)
    wq = fake_quantize(ws, qparams_from_range(-w_amax, w_amax, wscheme)[0], None, wscheme)
    amax = (absmax / s).max()
    xq = fake_quantize(x / s, qparams_from_range(-amax, amax, ischeme)[0], None, ischeme)
    return (xq @ wq.T - x @ w.T).pow(2).mean().item()


@register_method("smoothquant")
def smooth_layers(model: nn.Module, recipe, calib_loop=None) -> dict:
    """Choose s for every `SmoothQuantLinear` of `model` from FP calibration inputs (quantizers off)."""
    args = _args(recipe.method_args)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SmoothQuantLinear)}
    if not layers:
        raise TrtqError(f"recipe {recipe.name!r} uses method smoothquant but no rule has layer: smooth")
    if calib_loop is None:
        raise TrtqError("smoothquant needs calibration data: pass calib_loop")
    stats = {n: _InputStats(args["seed"] + i) for i, n in enumerate(layers)}
    handles = [m.register_forward_pre_hook(stats[n]) for n, m in layers.items()]
    try:
        with torch.no_grad(), float_mode(model):  # float trajectories, and no observer sees unsmoothed inputs
            calib_loop(model)
    finally:
        for h in handles:
            h.remove()
    chosen = {}
    for name, layer in layers.items():
        st = stats[name]
        if st.absmax is None:
            raise TrtqError(f"calibration never reached layer {name}: does calib_loop run the model it is given?")
        x, absmax = torch.cat(st.rows), st.absmax.cpu()
        candidates = ALPHAS if args["alpha"] == "search" else (float(args["alpha"]),)
        best_alpha, best_s = None, torch.ones_like(absmax)
        best_err = _output_error(layer, x, absmax, best_s) if args["alpha"] == "search" else float("inf")
        for alpha in candidates:
            s = smoothing_scale(absmax, layer.weight.cpu(), alpha)
            err = _output_error(layer, x, absmax, s)
            if err < best_err:
                best_alpha, best_s, best_err = alpha, s, err
        layer.set_smoothing(best_s)
        chosen[name] = best_alpha
    if args["per_timestep"]:
        # The ranges left after smoothing still move with the timestep (the adaLN modulation is a function
        # of t): one scale per calibrated timestep, filled by `trtq.quantize.calibrate` like any static scale.
        for layer in layers.values():
            use_timestep_table(layer, args["on_unknown"])
        route_timesteps(model)
    model.trtq_smoothquant_alphas = chosen  # for reports: None = smoothing did not help that layer
    return chosen
