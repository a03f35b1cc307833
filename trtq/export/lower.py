"""Lowering: a quantized model (from `trtq.quantize` or `load_artifact`) -> a deployment module tree.

Every quantized layer is replaced by its export twin (`trtq.export.twins`), built from the layer's state
through its stable accessors only; everything else is copied unchanged. The user's model is not touched:
the copy shares nothing mutable with it (the quantized layers themselves are not even copied, only read).
A layer kind or scheme the exporter cannot express is a `TrtqError` naming the layer: nothing is silently
left in float.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trtq.errors import TrtqError
from trtq.export import twins
from trtq.formats import IntFormat
from trtq.nn import QuantConv2d, QuantLinear, TensorQuantizer, is_quantized
from trtq.nn.fp4_linear import FP4Linear
from trtq.nn.timestep import TimestepTensorQuantizer, router_of
from trtq.quantizer import expand_scale, quantize_tensor
from trtq.scheme import QuantScheme
from trtq.winograd.layer import WinogradQuantConv2d

# Formats a Q/DQ pair can hold, by their ONNX element type (INT4 weights: TensorRT's blocked weight-only path).
_QDQ_TYPES = {"int8": "int8", "int4": "int4", "fp8_e4m3": "float8e4m3fn"}
# Dynamic activation groups become the trtq::DynamicGroupQDQ node; its decomposition handles these.
_DYNAMIC_FORMATS = ("int8", "int4")


def lower(model: nn.Module) -> nn.Module:
    """A new module tree in which every quantized layer of `model` is its export twin."""
    layers = {name: m for name, m in model.named_modules() if is_quantized(m)}
    if not layers:
        raise TrtqError("this model has no quantized layers: quantize it (trtq.quantize / load_artifact) first")
    # Leave the quantized layers out of the copy (their twins replace them below).
    lowered = copy.deepcopy(model, memo={id(m): None for m in layers.values()})
    for name, layer in layers.items():
        try:
            twin = lower_layer(layer)
        except TrtqError as e:
            raise TrtqError(f"layer {name}: {e}") from None
        parent, _, child = name.rpartition(".")
        setattr(lowered.get_submodule(parent) if parent else lowered, child, twin)
    leftover = [n for n, m in lowered.named_modules() if isinstance(m, TensorQuantizer) or is_quantized(m)]
    if leftover:
        raise TrtqError(f"layer {leftover[0]}: a quantizer outside a quantized layer cannot be exported")
    tables = [m for m in lowered.modules() if isinstance(m, twins.TimestepActQuant)]
    if tables:  # the copy's own router hands each call's timestep to the table twins, as in the model
        router = router_of(lowered)
        for t in tables:
            t.router = router
    return lowered


def _q_dq_kinds() -> tuple[type, ...]:
    """Layer classes whose deployed form is Q/DQ around the float op (exact classes: a subclass may change
    the math and is refused until it is listed here)."""
    from trtq.efficientdm.qalora import QALoRAConv2d, QALoRALinear
    from trtq.methods.smoothquant import SmoothQuantLinear
    from trtq.tfmq.layers import AdaRoundConv2d, AdaRoundLinear

    return (QuantConv2d, QuantLinear, SmoothQuantLinear, AdaRoundConv2d, AdaRoundLinear, QALoRAConv2d,
            QALoRALinear)


def lower_layer(layer: nn.Module) -> nn.Module:
    if isinstance(layer, WinogradQuantConv2d):
        return _lower_winograd(layer)
    if isinstance(layer, FP4Linear):
        return _lower_fp4(layer)
    if type(layer) in _q_dq_kinds():
        return _lower_fake(layer)
    raise TrtqError(f"{type(layer).__name__} is a quantized layer kind the ONNX exporter cannot express")


def _no_table(q: TensorQuantizer | None, kind: str) -> None:
    if isinstance(q, TimestepTensorQuantizer):
        raise TrtqError(f"per-timestep input scales on a {kind} layer have no export form (Q/DQ layers only)")


def _ready(q: TensorQuantizer | None, role: str) -> None:
    if q is not None and (q.mode != "quantize" or not q.calibrated):
        raise TrtqError(f"its {role} quantizer is in mode {q.mode!r} (calibrated={q.calibrated}); export needs "
                        "a calibrated model in 'quantize' mode")


# --------------------------------------------------------------------------------------- plugin layers
def _lower_winograd(layer: WinogradQuantConv2d) -> nn.Module:
    _ready(layer.input_quantizer, "input")
    _no_table(layer.input_quantizer, "Winograd")
    codes, w_scale = layer.int8_weight()
    at, _, bt = layer.transforms()
    return twins.WinogradConvInt8(codes, w_scale, layer.bias, at, bt, layer.static_act_scale(), layer.tile,
                                  layer.pad, layer.group_size, layer.granularity)


def _lower_fp4(layer: FP4Linear) -> nn.Module:
    if getattr(layer, "float_forward", False):
        raise TrtqError("FP4 layer is in float_forward mode (a calibration capture was left on)")
    iq = layer.input_quantizer
    _ready(iq, "input")
    _no_table(iq, "FP4")
    act_scale = None
    if iq is not None and not iq.scheme.dynamic:
        groups = layer.in_features // layer.group_size
        scale = iq.scale.float().reshape(-1)
        act_scale = scale.expand(groups) if scale.numel() == 1 else scale
    return twins.FP4GroupGemm(layer.weight_packed, layer.weight_scale, layer.weight_tensor_scale, layer.bias,
                              act_scale, layer.hadamard_signs, layer.weight_format, layer.act_format,
                              layer.group_size, layer.scale_format or "float32", layer.act_clip)


# --------------------------------------------------------------------------------------- Q/DQ layers
def _lower_fake(layer: QuantConv2d | QuantLinear) -> nn.Module:
    """Q/DQ twins of the fake-quantized layers; a SmoothQuant linear's weight is W diag(s), and its input is
    divided by s before quantization (the layer's own forward, node for node)."""
    wq, iq = layer.weight_quantizer, layer.input_quantizer
    _ready(wq, "weight")
    _ready(iq, "input")
    smooth = getattr(layer, "smooth_scale", None)
    w = _deployed_weight(layer)
    weight = twins.FloatWeight(w) if wq is None else _weight_dq(w, wq)
    act = None if iq is None else _act_quant(iq)
    if isinstance(layer, QuantConv2d):
        if layer.padding_mode != "zeros":
            raise TrtqError(f"padding_mode {layer.padding_mode!r} has no ONNX Conv equivalent")
        return twins.QDQConv2d(layer, weight, act, layer.effective_bias())
    return twins.QDQLinear(weight, act, layer.effective_bias(), input_divisor=smooth)


def _deployed_weight(layer: QuantConv2d | QuantLinear) -> torch.Tensor:
    """The float weight whose quantization the layer deploys: W diag(s) for SmoothQuant; for AdaRound and
    QALoRA layers, their weight on the grid (learned rounding; codes of W0 + B·A), which re-quantizes to
    exactly its own codes."""
    if getattr(layer, "smooth_scale", None) is not None:
        return layer.smoothed_weight()
    if getattr(layer, "soft_rounding", None) is not None:
        raise TrtqError("its AdaRound rounding is still soft (reconstruction did not finish); export needs the "
                        "hard rounding a finished TFMQ quantization stores")
    if getattr(layer, "adapter", None) is not None:
        raise TrtqError("its QALoRA update is not merged; EfficientDM merges it when training ends (layer.merge())")
    if hasattr(layer, "weight_codes") or getattr(layer, "round_up", None) is not None:
        with torch.no_grad():
            return layer.quantized_weight().detach()
    return layer.weight


def _code_type(scheme: QuantScheme, role: str) -> str:
    if scheme.format not in _QDQ_TYPES:
        raise TrtqError(f"{role} format {scheme.format} has no ONNX QuantizeLinear/DequantizeLinear type "
                        f"(expressible: {', '.join(_QDQ_TYPES)})")
    if scheme.scale_format is not None:
        raise TrtqError(f"{role} scheme {scheme.describe()}: FP8-coded scales on a Q/DQ layer are not expressible")
    if not scheme.symmetric and scheme.format != "int8":
        raise TrtqError(f"{role} scheme {scheme.describe()}: only INT8 may be asymmetric in ONNX Q/DQ")
    return _QDQ_TYPES[scheme.format]


def _weight_dq(weight: torch.Tensor, wq: TensorQuantizer) -> nn.Module:
    s = wq.scheme
    if s.dynamic:
        raise TrtqError("dynamic weight scales cannot be stored")
    w = weight.detach().float()
    scale = wq.scale.detach().float()
    zp = None if wq.zero_point is None else wq.zero_point.detach()
    if isinstance(s.fmt, IntFormat):
        # The integer codes fake_quantize rounds to, unpacked (4-bit packing needs an even last dimension,
        # which a 1x1 conv's weight does not have, and ONNX wants one value per element anyway).
        v = w / expand_scale(scale, w, s)
        codes = s.fmt.round(v) if zp is None else s.fmt.round(v + expand_scale(zp, w, s), unsigned_range=True)
        if s.format == "int4" and zp is not None:
            # Asymmetric INT4 (TFMQ, EfficientDM recipes): the signed differences code - zero_point lie in
            # [-15, 15], exact INT8 symmetric codes with the same scales. TensorRT builds symmetric INT8
            # weights (it has no zero points); the file holds one byte per weight instead of a half.
            codes = codes - expand_scale(zp, w, s).round()
            return _weight_node(codes.to(torch.int8), scale, None, s, w, "int8")
        fmt = _code_type(s, "weight")
        codes = codes.to(torch.int8) if zp is None else codes.to(torch.uint8)
        return _weight_node(codes, scale, zp, s, w, fmt)
    fmt = _code_type(s, "weight")
    qt = quantize_tensor(w, wq.scale, wq.zero_point, s)
    return _weight_node(qt.codes.reshape(w.shape), qt.scale.float(), qt.zero_point, s, w, fmt)


def _weight_node(codes: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None, s: QuantScheme,
                 w: torch.Tensor, fmt: str) -> nn.Module:
    axis, block = 0, 0
    if s.granularity == "channel":
        axis = s.axis % w.dim()
        scale = scale.reshape(-1)
        zp = None if zp is None else zp.reshape(-1)
    elif s.granularity == "group":
        axis, block = s.axis % w.dim(), s.group_size  # blocked DequantizeLinear: scale keeps the tensor's rank
    else:
        scale = scale.reshape(())
        zp = None if zp is None else zp.reshape(())
    zp = None if zp is None else zp.round().to(torch.uint8)
    return twins.WeightDQ(codes, scale, zp, axis, block, fmt)


def _act_quant(iq: TensorQuantizer) -> nn.Module:
    s = iq.scheme
    if isinstance(iq, TimestepTensorQuantizer):
        if s.format != "int8":
            raise TrtqError(f"input scheme {s.describe()}: per-timestep scales export as INT8 Q/DQ only")
        return twins.TimestepActQuant(iq.timesteps, iq.scale, iq.zero_point)
    if s.dynamic:
        if s.granularity not in ("group", "token", "tensor") or not s.symmetric or s.format not in _DYNAMIC_FORMATS:
            raise TrtqError(f"input scheme {s.describe()}: dynamic activations are exported as "
                            f"trtq::DynamicGroupQDQ, which takes symmetric {'/'.join(_DYNAMIC_FORMATS)} groups, "
                            "tokens or samples only")
        if s.granularity == "group":
            return twins.ActQuant(dynamic={"format": s.format, "axis": int(s.axis), "group_size": int(s.group_size)})
        # token: one group = the whole last axis; tensor (per sample, never across the batch): the input
        # flattened to [N, -1], one group per row
        return twins.ActQuant(dynamic={"format": s.format, "axis": -1 if s.granularity == "token" else 1,
                                       "group_size": 0}, per_sample=s.granularity == "tensor")
    fmt = _code_type(s, "input")
    if fmt == "int4":
        raise TrtqError(f"input scheme {s.describe()}: static INT4 activations have no TensorRT Q/DQ kernel")
    scale, zp, axis = iq.scale.float(), iq.zero_point, 0
    if s.granularity == "tensor":
        scale = scale.reshape(())
        zp = None if zp is None else zp.reshape(())
    else:
        # Shared static scales (one per channel or per channel group for all pixels/tokens): per-axis Q/DQ,
        # groups repeated onto their channels. The axis is kept as the recipe gives it (negative = from the end).
        axis = int(s.axis)
        scale = scale.reshape(-1)
        zp = None if zp is None else zp.reshape(-1)
        if s.granularity == "group":
            scale = scale.repeat_interleave(s.group_size)
            zp = None if zp is None else zp.repeat_interleave(s.group_size)
    if fmt == "float8e4m3fn":
        zero = torch.zeros(scale.shape, dtype=torch.uint8)  # FP8 +0 bits; retyped to FLOAT8E4M3FN in ONNX
        return twins.ActQuant(scale, zero, axis, -448, 448, fmt)
    if zp is None:
        return twins.ActQuant(scale, torch.zeros(scale.shape, dtype=torch.int8), axis, -128, 127, fmt)
    if s.granularity == "tensor":  # INT8 codes shifted by 128, the zero point's share subtracted after the op
        return twins.ShiftedActQuant(scale, zp)
    # Per-channel zero points stay UINT8 Q/DQ with zero points: ONNX Runtime runs them, TensorRT does not.
    return twins.ActQuant(scale, zp.round().to(torch.uint8), axis, 0, 255, fmt)
