"""The torch backend's lowering: fake-quantized W8A8 linears and 1x1 convs -> `trtq::int8_gemm` (INT8 codes,
INT32 GEMM).

A `QuantLinear` fake-quantizes its input and weight and multiplies in float: right numerically, no faster than
float. Where its schemes are what `trtq::int8_gemm` computes (INT8 symmetric weights per output channel;
INT8 symmetric activations with one static scale, or dynamic per token) it becomes an `Int8Linear` holding
the weight's INT8 codes, which on CUDA runs `torch._int_mm` (cuBLASLt INT8, INT32 accumulation). A 1x1
`QuantConv2d` (stride 1, no padding, dilation 1, one group: a UNet's resnet shortcuts and SD 1.5's
transformer proj_in/proj_out) is the same GEMM over pixels and becomes an `Int8Conv1x1`: the input viewed
as [N, H, W, C] (free for channels-last tensors), the GEMM, the output viewed back. Same codes, same scales:
the result differs from the fake-quantized layer only by float summation order (the op's accumulation is
exact). Every other layer (Winograd and FP4 layers already call their Triton-backed ops; larger or strided
convolutions, SmoothQuant and timestep-table layers) stays as it is. The user's module is not touched.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import trtq.ops.int8_gemm  # noqa: F401  (registers torch.ops.trtq.int8_gemm)
from trtq.nn import QuantConv2d, QuantLinear, TensorQuantizer, is_quantized
from trtq.quantizer import quantize_tensor


class Int8Linear(nn.Module):
    """y = trtq::int8_gemm(x, codes, per-channel scales, bias, static per-tensor scale or None = per token)."""

    def __init__(self, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 act_scale: torch.Tensor | None):
        super().__init__()
        self.register_buffer("w_int8", w_int8)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("act_scale", act_scale)
        self.in_features, self.out_features = w_int8.shape[1], w_int8.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.trtq.int8_gemm(x, self.w_int8, self.w_scale, self.bias, self.act_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " \
               f"act={'static' if self.act_scale is not None else 'per-token'}"


class Int8Conv1x1(Int8Linear):
    """A 1x1 stride-1 conv as `trtq::int8_gemm` over the pixels of x [N, C, H, W]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.trtq.int8_gemm(x.permute(0, 2, 3, 1), self.w_int8, self.w_scale, self.bias, self.act_scale)
        return y.permute(0, 3, 1, 2)


def _is_pointwise_conv(layer: nn.Module) -> bool:
    return (type(layer) is QuantConv2d and layer.kernel_size == (1, 1) and layer.stride == (1, 1)
            and layer.padding in ((0, 0), "valid") and layer.dilation == (1, 1) and layer.groups == 1
            and layer.padding_mode == "zeros")


def _int8_symmetric(q: TensorQuantizer | None) -> bool:
    s = None if q is None else q.scheme
    return (type(q) is TensorQuantizer and s.format == "int8" and s.symmetric and s.scale_format is None
            and q.zero_point is None and q.mode == "quantize")


def int8_gemm_form(layer: nn.Module) -> Int8Linear | None:
    """The Int8Linear (Int8Conv1x1 for a pointwise conv) computing what `layer` computes, or None when its
    kind or schemes are not int8_gemm's."""
    conv = _is_pointwise_conv(layer)
    # SmoothQuant etc. carry extra state; a bias correction only changes the bias the GEMM adds.
    if not (type(layer) is QuantLinear or conv) or any(
            b is not None for name, b in layer._buffers.items() if name != "bias_correction"):
        return None
    wq, iq = layer.weight_quantizer, layer.input_quantizer
    if not (_int8_symmetric(wq) and _int8_symmetric(iq)):
        return None
    ws = wq.scheme
    if ws.dynamic or ws.granularity != "channel" or ws.axis != 0 or wq.scale is None:
        return None
    a = iq.scheme
    if a.granularity == "token" and a.dynamic:
        act_scale = None
    elif a.granularity == "tensor" and not a.dynamic and iq.scale is not None and iq.scale.numel() == 1:
        act_scale = iq.scale.detach().float().reshape(())
    else:
        return None
    codes = quantize_tensor(layer.weight.detach(), wq.scale, None, ws).codes
    cls = Int8Conv1x1 if conv else Int8Linear
    return cls(codes.reshape(codes.shape[0], -1), wq.scale.detach().float().reshape(-1), layer.effective_bias(), act_scale)


def lower_int8_layers(model: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `model` with every eligible QuantLinear / 1x1 QuantConv2d as its int8_gemm form, how many
    were lowered); `model` itself is returned unchanged when none is eligible."""
    forms = {name: int8_gemm_form(m) for name, m in model.named_modules() if is_quantized(m)}
    forms = {k: v for k, v in forms.items() if v is not None}
    if not forms:
        return model, 0
    lowered = copy.deepcopy(model)
    for name, form in forms.items():
        parent, _, child = name.rpartition(".")
        setattr(lowered.get_submodule(parent) if parent else lowered, child, form.to(lowered.get_submodule(name)
                                                                                      .weight.device))
    return lowered, len(forms)
