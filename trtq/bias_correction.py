"""Empirical bias correction: remove the mean output error that quantization adds to each layer.

A quantized layer's output error y_q − y (same input, float weight and input vs quantized ones) has a mean per
output channel wherever the rounding errors of a channel's weights do not cancel against the mean of its
input (a SiLU/GELU output is mostly positive) or the activation's rounding is biased. In a diffusion model
that mean is the same at every denoising step, so it does not average out along a trajectory: it drifts the
whole image (on digits-unet, whose `conv_out` has one output channel, it dominates the W8A8 image error).
Subtracting it is the classic fix (Nagel et al., "Data-Free Quantization", 2019, its empirical variant),
and it costs nothing at inference: the correction is folded into the bias a deployment adds anyway.

`correct_biases(model, calib_loop)` runs the caller's calibration loop once on the quantized model. For every
layer whose kind adds a `bias_correction` (`CORRECTS_BIAS`: the fake-quantized, SmoothQuant, AdaRound and
QALoRA kinds), a forward hook evaluates the same layer once more on the same input with its quantizers off
and accumulates the per-channel mean of the difference (float64, over batch and positions); then each
layer's `bias_correction` buffer is set to minus that mean. The inputs are the quantized model's own
activations (every layer at once, in one pass, so a layer is measured on its uncorrected predecessors'
outputs: what is left downstream is small, not zero; a pass per layer would cost a calibration run each). The
float `bias` Parameter never changes, so an artifact still fits (and checks the fingerprint of) the float
model; exports and the torch backend add `effective_bias()`.
"""

from __future__ import annotations

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.nn.modules import float_mode, is_quantized


class _MeanError:
    """Forward hook: Σ(y_q − y_float) and the count per output channel of one layer."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.count = 0
        self.busy = False

    def __call__(self, layer: nn.Module, args, out: torch.Tensor) -> None:
        if self.busy:  # the float pass below calls the layer again
            return
        self.busy = True
        try:
            with float_mode(layer):
                ref = layer(*args)
        finally:
            self.busy = False
        d = (out - ref).detach().double()
        d = d.transpose(0, 1).reshape(d.shape[1], -1) if d.dim() == 4 else d.reshape(-1, d.shape[-1]).T
        s = d.sum(1)
        self.total = s if self.total is None else self.total + s
        self.count += d.shape[1]


def correct_biases(model: nn.Module, calib_loop) -> dict[str, float]:
    """Measure and store every correctable layer's bias correction; returns {layer: max |correction|}."""
    layers = {n: m for n, m in model.named_modules() if is_quantized(m) and m.CORRECTS_BIAS}
    if not layers:
        raise TrtqError("bias correction: no quantized layer of this model can carry one (the kinds that "
                        "can: fake-quantized, smooth, adaround, qalora)")
    if calib_loop is None:
        raise TrtqError("bias correction measures the layers' output error on calibration data: pass calib_loop")
    for m in layers.values():
        m.bias_correction = None  # measure the uncorrected error (a second call starts over)
    stats = {n: _MeanError() for n in layers}
    handles = [m.register_forward_hook(stats[n]) for n, m in layers.items()]
    try:
        with torch.no_grad():
            calib_loop(model)
    finally:
        for h in handles:
            h.remove()
    missed = [n for n, s in stats.items() if s.count == 0]
    if missed:
        shown = ", ".join(missed[:3]) + (f" and {len(missed) - 3} more" if len(missed) > 3 else "")
        raise TrtqError(f"bias correction: calibration never reached {len(missed)} layer(s) ({shown})")
    out = {}
    for n, m in layers.items():
        c = -(stats[n].total / stats[n].count)
        if not torch.isfinite(c).all():
            raise TrtqError(f"bias correction of {n}: the measured output error is not finite")
        m.bias_correction = c.float().to(m.weight.device)
        out[n] = float(c.abs().max())
    return out
