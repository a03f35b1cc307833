"""Layer kind "adaround": quantized Conv2d/Linear whose weight rounding can be learned (AdaRound) and whose
input quantizer can be a per-timestep table (`trtq.nn.timestep`).

The learned rounding is a buffer `round_up` (0/1 per weight, the hard AdaRound decision), so it travels in
artifacts like every other buffer; the weight itself is never changed, so the model keeps the float model's
fingerprint. While rounding is being learned, `soft_rounding` holds the logits V (a plain tensor, not a
parameter). Which input quantizer kind a layer has is per-layer config (`timestep_table`) in the artifact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtq.errors import TrtqError
from trtq.nn.modules import QuantConv2d, QuantLinear
from trtq.nn.timestep import TimestepTableConfig
from trtq.quantizer import expand_scale
from trtq.formats import IntFormat
from trtq.tfmq.adaround import rectified_sigmoid


class _AdaRoundMixin(TimestepTableConfig):
    @classmethod
    def check_args(cls, weight, input, **layer_args) -> None:
        super().check_args(weight, input, **layer_args)
        if weight is not None and (not isinstance(weight.fmt, IntFormat) or weight.granularity == "group"
                                   or weight.scale_format is not None):
            raise TrtqError(f"adaround layers learn the rounding of integer per-tensor/per-channel weights, "
                            f"not {weight.describe()}")

    @classmethod
    def from_float(cls, module, weight, input, **layer_args):
        q = super().from_float(module, weight, input, **layer_args)
        q._buffers["round_up"] = None  # registered (artifacts carry it once learned), empty until then
        q.soft_rounding = None
        return q

    def weight_grid(self, offset: torch.Tensor) -> torch.Tensor:
        """s * (clamp(floor(w / s) + offset + z) - z): the weight on the quantization grid, rounded by offset."""
        wq = self.weight_quantizer
        w = self.weight
        s = expand_scale(wq.scale, w, wq.scheme).to(w.dtype)
        fmt = wq.scheme.fmt
        base = torch.floor(w.detach() / s) + offset
        if wq.zero_point is None:
            return base.clamp(fmt.qmin, fmt.qmax) * s
        z = expand_scale(wq.zero_point, w, wq.scheme).to(w.dtype)
        return ((base + z).clamp(0, 2**fmt.bits - 1) - z) * s

    def quantized_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        if wq is None or wq.mode == "off":
            return self.weight
        if self.soft_rounding is not None:
            return self.weight_grid(rectified_sigmoid(self.soft_rounding))
        if self.round_up is None:
            return super().quantized_weight()
        # Computed at every call from the weight and the learned rounding (no cache keyed on tensor identity:
        # the layer must trace, and it keeps no float copy of its weight; see trtq.nn.modules).
        return self.weight_grid(self.round_up.to(self.weight.dtype))


class AdaRoundConv2d(_AdaRoundMixin, QuantConv2d):
    pass


class AdaRoundLinear(_AdaRoundMixin, QuantLinear):
    pass


ADAROUND_LAYERS = {"Conv2d": AdaRoundConv2d, "Linear": AdaRoundLinear}


def adaround_layers(model) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, _AdaRoundMixin)}
