"""`WinogradQuantConv2d`: a 3x3 stride-1 Conv2d computed as a fully quantized W8A8 Winograd convolution.

Recipe rule (layer kind "winograd"):
    layer: winograd
    layer_args: {tile: 4|6|2, group_size: 32, per_position: false}
    weight: {format: int8, granularity: group, axis: 1, group_size: 32}
    input:  {format: int8, granularity: group, axis: 1, group_size: 32, dynamic: true}
The schemes say INT8, per-tensor vs group-wise (along input channels, axis 1) and static vs dynamic input
scales; group_size is repeated in layer_args because whether a layer is supported (Cin divisible by it) is
decided from layer_args alone. Learned transform scales live in the buffers `s_b`, `s_g` (ones = standard).
The scaled transforms and the INT8 Winograd-domain weight (`weight_int8` codes, `weight_int8_scale`) are
derived from `weight`, `s_b` and `s_g`: `refresh_weight()` computes them at construction and must be called
whenever one of those changes (the scale learning method and artifact loading do). They sit in
non-persistent buffers (artifacts store the scales, not what follows from them), so the forward pass reads
only tensors and traces (`torch.compile`, `torch.export`) with the op `trtq::winograd_conv_int8` intact.
"""

from __future__ import annotations

import torch
from torch import nn

import trtq.ops.winograd_conv  # noqa: F401  (registers torch.ops.trtq.winograd_conv_int8)
from trtq.errors import TrtqError
from trtq.nn.modules import _QuantMixin
from trtq.nn.tensor_quantizer import TensorQuantizer
from trtq.scheme import QuantScheme
from trtq.winograd.conv import TILES, conv_padding, transform_input, transform_weight, unsupported_reason
from trtq.winograd.quant import quantize_weight
from trtq.winograd.transforms import scaled_matrices

LAYER_ARGS = {"tile", "group_size", "per_position"}


def _check_scheme(role: str, s: QuantScheme | None, group_size: int | None) -> None:
    if s is None:
        raise TrtqError(f"a winograd rule quantizes both weight and input; its {role} scheme is missing")
    if s.format != "int8" or not s.symmetric:
        raise TrtqError(f"winograd {role}: only symmetric int8 is implemented, got {s.describe()}")
    if s.granularity not in ("tensor", "group"):
        raise TrtqError(f"winograd {role}: granularity must be 'tensor' or 'group' (along input channels), "
                        f"got {s.granularity!r}")
    if s.granularity == "group":
        if s.axis != 1:
            raise TrtqError(f"winograd {role}: groups run along the input channels, axis 1; got axis {s.axis}")
        if s.group_size != group_size:
            raise TrtqError(f"winograd {role}: group_size {s.group_size} differs from layer_args group_size "
                            f"{group_size}; the INT8 GEMMs need one group size for both operands")
    elif group_size is not None:
        raise TrtqError(f"winograd {role} is per-tensor: leave layer_args group_size unset")


class WinogradQuantConv2d(_QuantMixin, nn.Conv2d):
    @classmethod
    def check_args(cls, weight, input, **layer_args) -> None:
        unknown = set(layer_args) - LAYER_ARGS
        if unknown:
            raise TrtqError(f"unknown winograd layer_args {sorted(unknown)}; known: {sorted(LAYER_ARGS)}")
        tile = layer_args.get("tile", 4)
        if isinstance(tile, bool) or tile not in TILES:
            raise TrtqError(f"winograd tile must be one of {TILES}, got {tile!r}")
        gs = layer_args.get("group_size")
        if gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 1):
            raise TrtqError(f"winograd group_size must be a positive integer, got {gs!r}")
        per_position = layer_args.get("per_position", False)
        if not isinstance(per_position, bool):
            raise TrtqError(f"winograd per_position must be true or false, got {per_position!r}")
        _check_scheme("weight", weight, gs)
        _check_scheme("input", input, gs)
        if weight.dynamic:
            raise TrtqError("winograd weights are quantized offline: the weight scheme cannot be dynamic")
        if weight.granularity != input.granularity:
            raise TrtqError("winograd weight and input must both be per-tensor or both group-wise")
        if per_position and weight.granularity == "tensor":
            raise TrtqError("winograd per_position needs group granularity")

    @classmethod
    def supports(cls, module: nn.Module, **layer_args) -> bool:
        gs = layer_args.get("group_size")
        return unsupported_reason(module) is None and (gs is None or module.in_channels % gs == 0)

    @classmethod
    def from_float(cls, module, weight, input, **layer_args):
        why = unsupported_reason(module)
        if why is not None:
            raise TrtqError(f"not a Winograd conv: {why}")
        cls.check_args(weight, input, **layer_args)
        q = super().from_float(module, None, None)
        q.tile = layer_args.get("tile", 4)
        q.group_size = layer_args.get("group_size") or module.in_channels
        if module.in_channels % q.group_size:
            raise TrtqError(f"group size {q.group_size} does not divide {module.in_channels} input channels")
        per_position = layer_args.get("per_position", False)
        q.granularity = "tensor" if weight.granularity == "tensor" else "position-group" if per_position else "group"
        q.pad = conv_padding(module.padding)
        n = q.tile + 2
        q.register_buffer("s_b", torch.ones(n, device=module.weight.device))
        q.register_buffer("s_g", torch.ones(n, device=module.weight.device))
        # Static input scales are calibrated in the Winograd domain by an ordinary TensorQuantizer.
        q.input_quantizer = None if input.dynamic else TensorQuantizer(input, "input")
        for name in ("transform_at", "transform_g", "transform_bt", "weight_int8", "weight_int8_scale"):
            q.register_buffer(name, None, persistent=False)
        q.refresh_weight()
        return q

    def transforms(self):
        """(A^T S_A, S_G G, S_B B^T) in float32, as of the last `refresh_weight()`."""
        return self.transform_at.float(), self.transform_g.float(), self.transform_bt.float()  # after a .half()

    def refresh_weight(self) -> None:
        """Recompute the scaled transforms from s_b, s_g and quantize G' W G'^T into `weight_int8` /
        `weight_int8_scale`. Call after changing `weight`, `s_b` or `s_g`."""
        with torch.no_grad():
            self.transform_at, self.transform_g, self.transform_bt = (
                t.contiguous() for t in scaled_matrices(self.tile, self.s_b.float(), self.s_g.float()))
            u = transform_weight(self.weight.float(), self.transform_g)
            self.weight_int8, self.weight_int8_scale = quantize_weight(u, self.group_size, self.granularity)

    def int8_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """INT8 codes [n, n, Cout, Cin] and scales [n, n, Cout, G] of G' W G'^T (see `refresh_weight`)."""
        return self.weight_int8, self.weight_int8_scale

    def _observed_layout(self, v: torch.Tensor) -> torch.Tensor:
        """Winograd-domain input [n, n, C, P] laid out so the input scheme's axis-1 groups are our groups."""
        if self.granularity == "group":  # one scale per channel group for every position and tile
            return v.permute(0, 1, 3, 2).reshape(-1, v.shape[2])
        return v.permute(3, 0, 1, 2).reshape(v.shape[3], -1)  # groups never cross a position

    def static_act_scale(self) -> torch.Tensor | None:
        """Calibrated input scales as the op's [n, n, G], or None when they are dynamic."""
        if self.input_quantizer is None:
            return None
        n, groups = self.tile + 2, self.in_channels // self.group_size
        scale = self.input_quantizer.scale.float()
        if self.granularity == "position-group":
            return scale.reshape(n, n, groups)
        return scale.reshape(1, 1, -1).expand(n, n, groups).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qz = self.input_quantizer
        if qz is not None and qz.mode != "quantize":
            if qz.mode == "calibrate":
                v, _ = transform_input(x.float(), self.transforms()[2], self.tile, self.pad)
                qz(self._observed_layout(v))
            return self._conv_forward(x, self.weight, self.bias)  # float pass-through while observing
        at, _, bt = self.transforms()
        codes, w_scale = self.int8_weight()
        return torch.ops.trtq.winograd_conv_int8(x, codes, w_scale, self.bias, at, bt, self.tile, list(self.pad),
                                                 self.group_size, self.granularity, self.static_act_scale())

    def artifact_config(self) -> dict:
        return {"tile": self.tile, "group_size": self.group_size, "granularity": self.granularity}

    def load_artifact_config(self, config: dict) -> None:
        mine = self.artifact_config()
        if config != mine:
            raise TrtqError(f"artifact layer config {config} does not match its recipe's {mine}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, winograd F({self.tile},3) int8 {self.granularity} g={self.group_size}"
