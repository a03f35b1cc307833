"""Export twins: deployment modules that a lowered model is made of, each mapping to fixed ONNX nodes.

A twin's `forward` computes in PyTorch what its nodes compute (so a lowered model can be checked against
the quantized model it came from); its `torch.autograd.Function.symbolic` says which nodes the TorchScript
ONNX exporter emits for it:

    QDQConv2d / QDQLinear   [QuantizeLinear -> DequantizeLinear] on the input (static per-tensor/per-channel),
                            or one trtq::DynamicGroupQDQ node (dynamic per-group scales),
                            or a per-timestep scale (TimestepActQuant: Gather on the step, unit-scale Q/DQ);
                            asymmetric INT8 inputs as INT8 codes shifted by 128 (ShiftedActQuant, and tables
                            with zero points), the zero point's share subtracted after the op;
                            weight = INT8/INT4/FP8 initializer -> DequantizeLinear (per-channel or blocked);
                            then the float Conv / MatMul (+ bias).
    WinogradConvInt8        one trtq::WinogradConvInt8 node (plugin), packed weights/scales as initializers.
    FP4GroupGemm            [Hadamard rotation in standard ops] -> one trtq::FP4GroupGemm node (plugin).

Plugin nodes carry `plugin_version` / `plugin_namespace` (what TensorRT's ONNX parser reads for plugins),
`inputs_present` (one 0/1 per formal input: which optional inputs the node has, for the plugins), `aot` (1 where an ahead-of-time implementation exists: FP4 nodes whose GEMM quantizes its own activations
or keeps them float, see `aot_eligible`; 0 elsewhere: TensorRT then runs the plugin's JIT implementation)
and a private `trtq_overload` attribute that the
exporter turns into the node's function overload (the key of the local function holding its decomposition).
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx._internal.torchscript_exporter import symbolic_helper

from trtq.export import reference

PLUGIN_DOMAIN = "trtq"
PLUGIN_VERSION = "1"
# Plugin op type -> (input names in order, attribute names as the plugin declares them).
PLUGINS = {
    "WinogradConvInt8": (("x", "w_int8", "w_scale", "bias", "at", "bt", "act_scale"),
                         ("tile", "pads", "group_size", "act_granularity")),
    "FP4GroupGemm": (("x", "weight_packed", "weight_scale", "weight_tensor_scale", "bias", "act_scale"),
                     ("weight_format", "act_format", "group_size", "scale_format", "act_clip")),
    "DynamicGroupQDQ": (("x",), ("format", "axis", "group_size")),
}
# ONNX element types a code tensor is retyped to after export (torch has no int4; uint8 holds FP8 bits).
CODE_TYPES = ("int8", "int4", "float8e4m3fn")


def _attr_kwargs(attrs: dict) -> dict:
    """Python attribute values -> TorchScript g.op keyword arguments (name_i / name_f / name_s suffixes)."""
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bool) or isinstance(v, int):
            out[f"{k}_i"] = int(v)
        elif isinstance(v, float):
            out[f"{k}_f"] = v
        elif isinstance(v, str):
            out[f"{k}_s"] = v
        elif isinstance(v, (list, tuple)):
            out[f"{k}_i"] = [int(i) for i in v]
        else:
            raise TypeError(f"attribute {k}={v!r}")
    return out


def plugin_overload(op_type: str, attrs: dict, present: tuple[bool, ...], rank: int) -> str:
    """The function overload that holds this node's decomposition: one per distinct structure."""
    key = {"attrs": attrs, "inputs": "".join("1" if p else "0" for p in present), "rank": rank}
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


class _PluginFn(torch.autograd.Function):
    """One trtq plugin node. Only the present tensors are passed (absent optional inputs are listed in the
    spec): the TorchScript tracer mishandles several None arguments to one autograd.Function."""

    @staticmethod
    def forward(ctx, spec, *tensors):
        op_type, attrs, present = json.loads(spec)
        it = iter(tensors)
        return plugin_reference(op_type, attrs)(*[next(it) if p else None for p in present])

    @staticmethod
    def symbolic(g, spec, *tensors):
        op_type, attrs, present = json.loads(spec)
        it = iter(tensors)
        # An absent optional input is an empty name in ONNX: the exporter writes "" for this placeholder.
        vals = [next(it) if p else symbolic_helper._optional_input_placeholder_tensor(g) for p in present]
        sizes = tensors[0].type().varyingSizes()  # None where symbolic (batch, resolution)
        rank = len(sizes)
        out = g.op(f"{PLUGIN_DOMAIN}::{op_type}", *vals, **_attr_kwargs(attrs), plugin_version_s=PLUGIN_VERSION,
                   plugin_namespace_s=PLUGIN_DOMAIN, aot_i=int(aot_eligible(op_type, attrs, present, tensors)),
                   inputs_present_s="".join("1" if p else "0" for p in present),
                   trtq_overload_s=plugin_overload(op_type, attrs, tuple(present), rank))
        # The activation's dtype, and the output sizes the exporter can know (downstream ops such as diffusers'
        # squeeze(1) export an If node where a size is unknown).
        out.setType(tensors[0].type().with_sizes(_output_sizes(op_type, attrs, sizes, tensors[1:])))
        return out


def aot_eligible(op_type: str, attrs: dict, present, tensors) -> bool:
    """Whether the node runs as one kernel without workspace (`trtq.plugins.plans.fp4_aot_plan`): FP4 W4A16, or
    W4A4/W4A8 with FP32 or static activation scales and groups smaller than K. Winograd nodes never do (an
    input-transform kernel writes a workspace the GEMM reads)."""
    if op_type != "FP4GroupGemm":
        return False
    from trtq.fp4 import gemm_quantizes_activations

    k = tensors[1].type().sizes()[1] * 2  # weight_packed [N, K/2] (x and weight_packed are always present)
    return attrs["act_format"] == "none" or gemm_quantizes_activations(
        attrs["act_format"], attrs["group_size"], k, attrs["scale_format"], static=present[5])


def _output_sizes(op_type: str, attrs: dict, sizes: list, params) -> list:
    if op_type == "WinogradConvInt8":
        (ph, pw), cout = attrs["pads"], params[0].type().sizes()[2]
        h, w = sizes[2], sizes[3]
        return [sizes[0], cout, None if h is None else h + 2 * ph - 2, None if w is None else w + 2 * pw - 2]
    if op_type == "FP4GroupGemm":
        return sizes[:-1] + [params[0].type().sizes()[0]]
    return sizes


def call_plugin(op_type: str, attrs: dict, inputs: list):
    present = [t is not None for t in inputs]
    spec = json.dumps([op_type, attrs, present])
    return _PluginFn.apply(spec, *[t for t in inputs if t is not None])


class WinogradConvInt8(nn.Module):
    """Deployment form of `WinogradQuantConv2d`: INT8 Winograd-domain weights + transforms, FP32."""

    def __init__(self, w_int8, w_scale, bias, at, bt, act_scale, tile, pads, group_size, act_granularity):
        super().__init__()
        self.register_buffer("w_int8", w_int8.to(torch.int8).contiguous())
        for name, t in (("w_scale", w_scale), ("bias", bias), ("at", at), ("bt", bt), ("act_scale", act_scale)):
            self.register_buffer(name, None if t is None else t.detach().float().contiguous())
        self.attrs = {"tile": int(tile), "pads": [int(p) for p in pads], "group_size": int(group_size),
                      "act_granularity": act_granularity}

    def plugin_call(self, x):
        return "WinogradConvInt8", self.attrs, [x, self.w_int8, self.w_scale, self.bias, self.at, self.bt,
                                                self.act_scale]

    def forward(self, x):
        return call_plugin(*self.plugin_call(x))


class FP4GroupGemm(nn.Module):
    """Deployment form of `FP4Linear`: packed FP4 weights, group scales; Hadamard rotation in front."""

    def __init__(self, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, hadamard_signs,
                 weight_format, act_format, group_size, scale_format, act_clip):
        super().__init__()
        self.register_buffer("weight_packed", weight_packed.to(torch.uint8).contiguous())
        self.register_buffer("weight_scale", weight_scale.detach().contiguous())  # FP32 or FP8 codes (uint8)
        for name, t in (("weight_tensor_scale", weight_tensor_scale), ("bias", bias), ("act_scale", act_scale)):
            self.register_buffer(name, None if t is None else t.detach().float().contiguous())
        self.register_buffer("hadamard_signs", None if hadamard_signs is None else hadamard_signs.to(torch.int8))
        self.attrs = {"weight_format": weight_format, "act_format": act_format, "group_size": int(group_size),
                      "scale_format": scale_format, "act_clip": float(act_clip)}

    def plugin_call(self, x):
        return "FP4GroupGemm", self.attrs, [x, self.weight_packed, self.weight_scale, self.weight_tensor_scale,
                                            self.bias, self.act_scale]

    def forward(self, x):
        if self.hadamard_signs is not None:
            from trtq.hadamard import rotate

            x = rotate(x, self.hadamard_signs)
        return call_plugin(*self.plugin_call(x))


# --------------------------------------------------------------------------------------- Q/DQ layers
class _QDQFn(torch.autograd.Function):
    """QuantizeLinear -> DequantizeLinear with static scales (per tensor, or per channel along `axis`)."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, axis, qmin, qmax, fmt):
        shape = [1] * x.dim()
        if scale.dim():
            shape[axis] = -1
        s = scale.reshape(shape).to(x.dtype)
        z = 0 if zero_point is None else zero_point.reshape(shape).to(x.dtype)
        if fmt == "float8e4m3fn":
            v = reference.round_to_format((x / s).float(), "fp8_e4m3").to(x.dtype)
        else:
            v = (torch.round(x / s) + z).clamp(qmin, qmax)
        return (v - z) * s

    @staticmethod
    def symbolic(g, x, scale, zero_point, axis, qmin, qmax, fmt):
        kw = {"axis_i": axis} if scale.type().dim() else {}
        zp = [] if zero_point is None or zero_point.node().mustBeNone() else [zero_point]
        q = g.op("QuantizeLinear", x, scale, *zp, **kw, trtq_code_type_s=fmt)
        out = g.op("DequantizeLinear", q, scale, *zp, **kw, trtq_code_type_s=fmt)
        out.setType(x.type())
        return out


class _DQFn(torch.autograd.Function):
    """DequantizeLinear of stored codes: per-channel (`axis`) or blocked (`axis` + `block_size`)."""

    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis, block_size, fmt, dtype):
        q = codes.float()
        if fmt == "float8e4m3fn":
            q = reference._decode(codes, "fp8_e4m3")
        if zero_point is not None:
            q = q - _expand(zero_point.float(), codes, axis, block_size)
        return (q * _expand(scale.float(), codes, axis, block_size)).to(scale.dtype)

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis, block_size, fmt, dtype):
        kw = {"axis_i": axis}
        if block_size:
            kw["block_size_i"] = block_size
        zp = [] if zero_point is None or zero_point.node().mustBeNone() else [zero_point]
        out = g.op("DequantizeLinear", codes, scale, *zp, **kw, trtq_code_type_s=fmt)
        out.setType(scale.type().with_sizes(codes.type().sizes()))
        return out


def _expand(scale: torch.Tensor, codes: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    if scale.dim() == 0:
        return scale
    if block_size:
        return scale.repeat_interleave(block_size, dim=axis)
    shape = [1] * codes.dim()
    shape[axis] = -1
    return scale.reshape(shape)


class WeightDQ(nn.Module):
    """Stored weight codes + scales -> the float weight, as DequantizeLinear of an initializer."""

    def __init__(self, codes, scale, zero_point, axis, block_size, fmt):
        super().__init__()
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("zero_point", None if zero_point is None else zero_point.contiguous())
        self.axis, self.block_size, self.fmt = axis, block_size, fmt

    def forward(self):
        return _DQFn.apply(self.codes, self.scale, self.zero_point, self.axis, self.block_size, self.fmt, None)


class ActQuant(nn.Module):
    """Input activation quantization: static Q/DQ, or the dynamic trtq::DynamicGroupQDQ node (per group, per
    token: group_size 0 on the last axis, or per sample: per_sample, the input seen as [N, -1])."""

    def __init__(self, scale=None, zero_point=None, axis=0, qmin=-128, qmax=127, fmt="int8", dynamic=None,
                 per_sample=False):
        super().__init__()
        self.register_buffer("scale", None if scale is None else scale.contiguous())
        self.register_buffer("zero_point", None if zero_point is None else zero_point.contiguous())
        self.axis, self.qmin, self.qmax, self.fmt = axis, qmin, qmax, fmt
        self.dynamic = dynamic  # {"format", "axis", "group_size"} for dynamic scales
        self.per_sample = per_sample

    def plugin_call(self, x):
        if self.dynamic is None:
            return None
        return "DynamicGroupQDQ", self.dynamic, [x.reshape(x.shape[0], -1) if self.per_sample else x]

    def forward(self, x):
        if self.dynamic is not None:
            y = call_plugin(*self.plugin_call(x))
            return y.reshape(x.shape) if self.per_sample else y
        return _QDQFn.apply(x, self.scale.to(x.dtype), self.zero_point, self.axis, self.qmin, self.qmax, self.fmt)


# Asymmetric INT8 codes c in [0, 255] with zero point z are deployed shifted by 128: c' = c - 128 in [-128, 127],
# z' = z - 128, and c - z = c' - z'. TensorRT's Q/DQ take no zero point (its ONNX parser asserts an all-zero
# one) and no UINT8; the shifted codes are a plain INT8 Q/DQ and the zero point's share, op(z'·1, W) = z'·ΣW per
# output channel, is subtracted after the op (an exact identity for a linear op once the input's zero padding
# is made explicit before quantization: a padded 0 quantizes to the code z', whose share cancels too).
ZERO_SHIFT = 128


class ShiftedActQuant(nn.Module):
    """Static per-tensor asymmetric INT8 input quantization (zero point z, scale s) in the form TensorRT builds:

        x + z'·s -> QuantizeLinear(s, 0) -> DequantizeLinear(s, 0)   (= c'·s, INT8 codes c' = c - 128)

    and the layer twin subtracts z'·s·ΣW from its output (folded into the op's bias by constant folding).
    Codes equal `fake_quantize`'s except where x/s lies within float rounding of a half-way point (the shift is
    added before the division)."""

    def __init__(self, scale, zero_point):
        super().__init__()
        self.register_buffer("scale", scale.detach().float().reshape(()).clone())
        self.register_buffer("shift", (zero_point.detach().float().reshape(()) - ZERO_SHIFT).round())

    def codes(self, x):
        """(DQ output c'·s, None: no post scale, z'·s: the input's constant offset)."""
        s, z = self.scale.to(x.dtype), self.shift.to(x.dtype)
        q = _QDQFn.apply(x + z * s, s, torch.zeros((), dtype=torch.int8), 0, -128, 127, "int8")
        return q, None, z * s


class TimestepActQuant(nn.Module):
    """Static per-tensor input quantization with one scale (and zero point) per calibrated timestep
    (`trtq.nn.timestep.TimestepTensorQuantizer`), in the form TensorRT can build as a plain INT8 layer:

        row = ArgMin_k |t - timesteps[k]|,  s = Gather(scale, row),  z' = Gather(zero_point, row) - 128  (per sample)
        q   = DequantizeLinear(QuantizeLinear(x / s + z', 1, 0), 1, 0)          (the INT8 codes, shifted: c - 128)
        y   = (op(q, W) - z'·ΣW) * s + bias               (by the layer twin; op is linear in q; z' = 0 if symmetric)

    A Q/DQ pair with a scale computed in the graph is not a build-time constant, which TensorRT's INT8 Q/DQ
    fusion needs; here the Q/DQ scale is the constant 1 and the step's scale is two pointwise ops around the
    layer. round(x/s + z') = round(x/s) + z' for an integer z' except at an exact half-way x/s with an odd z'
    (round half to even), so the codes are `fake_quantize`'s (FP32) up to such ties.
    The row is the nearest calibrated timestep: a graph cannot raise, so the runtime checks the timesteps it
    feeds against the manifest's `timestep_tables` (an uncalibrated step is refused there, as in PyTorch).
    """

    # Kept float32 by the export's dtype cast: compared with the float32 timestep input, and a scheduler's
    # timesteps need not be integers (float16 would move 999.7 to 999.5, and the row picked with it).
    FLOAT32_BUFFERS = ("timesteps",)

    def __init__(self, timesteps, scale, zero_point):
        super().__init__()
        self.register_buffer("timesteps", timesteps.detach().float().reshape(-1).contiguous())
        self.register_buffer("scale", scale.detach().float().reshape(-1).contiguous())
        self.register_buffer("shift", None if zero_point is None else
                             (zero_point.detach().float().reshape(-1) - ZERO_SHIFT).round().contiguous())
        self.router = None  # the lowered denoiser's TimestepRouter (set by `trtq.export.lower`)

    def codes(self, x):
        """(q, s, z'): the input's INT8 codes as float, the per-sample scale and the per-sample code offset
        (None when symmetric), shaped to broadcast over x (and over the layer's output, which has x's rank)."""
        t = None if self.router is None else self.router.timestep
        if t is None:
            raise RuntimeError("TimestepActQuant called outside a denoiser call (no timestep bound)")
        t = t.reshape(-1).to(torch.float32).expand(x.shape[0])
        row = (t.reshape(-1, 1) - self.timesteps.to(torch.float32).reshape(1, -1)).abs().argmin(1)
        shape = [-1] + [1] * (x.dim() - 1)
        s = self.scale.index_select(0, row).reshape(shape).to(x.dtype)
        one, zero = torch.ones((), dtype=x.dtype), torch.zeros((), dtype=torch.int8)
        if self.shift is None:
            return _QDQFn.apply(x / s, one, zero, 0, -128, 127, "int8"), s, None
        z = self.shift.index_select(0, row).reshape(shape).to(x.dtype)
        return _QDQFn.apply(x / s + z, one, zero, 0, -128, 127, "int8"), s, z


def _shifted(act) -> bool:
    """Whether the input's codes carry a zero-point offset the layer must cancel (and pad for explicitly)."""
    return isinstance(act, ShiftedActQuant) or (isinstance(act, TimestepActQuant) and act.shift is not None)


def _apply_input(act, x):
    """(the op's input after its quantizer, per-sample scale to multiply the op's output by or None, the
    input's zero-point offset whose share op(offset, W) the layer subtracts, or None)."""
    if act is None:
        return x, None, None
    if isinstance(act, (TimestepActQuant, ShiftedActQuant)):
        return act.codes(x)
    return act(x), None, None


def _weight_sum(weight: torch.Tensor) -> torch.Tensor:
    """ΣW per output channel (over inputs and kernel window): op(c·1, W) = c·ΣW for a uniform input c."""
    return weight.double().sum(dim=tuple(range(1, weight.dim()))).float()


def _offset_bias(offset, weight_sum, bias, x):
    """A static input offset's share folded into the op's bias: bias - offset·ΣW (constants: the exporter's
    constant folding leaves one bias initializer)."""
    b = -offset * weight_sum.to(x.dtype)
    return b if bias is None else b + bias


def _finish(y, post, offset, weight_sum, bias):
    """y = op(q, W) without bias -> (y - offset·ΣW)·post + bias (per-sample offset and scale)."""
    shape = (-1, 1, 1) if y.dim() == 4 else (-1,)  # conv output: channels on axis 1; linear: last axis
    if offset is not None:
        y = y - offset * weight_sum.to(y.dtype).reshape(shape)
    if post is not None:
        y = y * post
    return y if bias is None else y + bias.reshape(shape)


def _as(t, x):
    """t in x's dtype, with no Cast node where it already is one (a Cast between DequantizeLinear and the
    Conv/MatMul would hide the Q/DQ pattern from TensorRT's fusion)."""
    return t if t is None or t.dtype == x.dtype else t.to(x.dtype)


def _explicit_padding(padding, weight_shape, dilation) -> tuple[int, int, int, int]:
    """Conv2d padding as F.pad's (left, right, top, bottom)."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":  # stride 1 (torch's rule): total dilation·(k - 1), the extra one on the right/bottom
        (th, tw) = (d * (k - 1) for d, k in zip(dilation, weight_shape[2:]))
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = padding
    return (pw, pw, ph, ph)


class QDQConv2d(nn.Module):
    """Q/DQ input and weight around F.conv2d. With a zero-point offset on the input (asymmetric activations),
    the zero padding is applied before quantization (it becomes the zero point's code, whose share the
    subtraction cancels like everywhere else) and the conv itself pads nothing."""

    def __init__(self, conv: nn.Conv2d, weight: nn.Module, act, bias):
        super().__init__()
        self.weight_dq, self.act = weight, act
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ValueError("padding_mode")
        self.register_buffer("weight_sum", None)
        self.pad = None  # F.pad's (left, right, top, bottom) where the padding moves before quantization
        if _shifted(act):
            w = weight().detach()
            self.weight_sum = _weight_sum(w)
            self.pad = _explicit_padding(self.padding, w.shape, self.dilation)

    def forward(self, x):
        padding = self.padding
        if self.pad is not None:
            padding = 0
            if any(self.pad):
                x = F.pad(x, self.pad)
        x, post, offset = _apply_input(self.act, x)
        w, b = self.weight_dq(), _as(self.bias, x)
        if post is None and offset is None:
            return F.conv2d(x, _as(w, x), b, self.stride, padding, self.dilation, self.groups)
        if post is None:  # static offset
            return F.conv2d(x, _as(w, x), _offset_bias(offset, self.weight_sum, b, x), self.stride, padding,
                            self.dilation, self.groups)
        y = F.conv2d(x, _as(w, x), None, self.stride, padding, self.dilation, self.groups)
        return _finish(y, post, offset, self.weight_sum, b)


class QDQLinear(nn.Module):
    """F.linear(Q/DQ(x / input_divisor), DQ(weight)): input_divisor is SmoothQuant's per-input-channel s (one
    Div node before the activation's Q/DQ; the weight codes are those of W diag(s))."""

    def __init__(self, weight: nn.Module, act, bias, input_divisor=None):
        super().__init__()
        self.weight_dq, self.act = weight, act
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self.register_buffer("input_divisor", None if input_divisor is None else input_divisor.detach().clone())
        self.register_buffer("weight_sum", _weight_sum(weight().detach()) if _shifted(act) else None)

    def forward(self, x):
        if self.input_divisor is not None:
            x = x / self.input_divisor.to(x.dtype)
        x, post, offset = _apply_input(self.act, x)
        w, b = self.weight_dq(), _as(self.bias, x)
        if post is None and offset is None:
            return F.linear(x, _as(w, x), b)
        if post is None:  # static offset
            return F.linear(x, _as(w, x), _offset_bias(offset, self.weight_sum, b, x))
        return _finish(F.linear(x, _as(w, x)), post, offset, self.weight_sum, b)


class FloatWeight(nn.Module):
    """A weight the recipe leaves in float (weight-only-activation rules): a plain initializer."""

    def __init__(self, weight):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self):
        return self.weight


PLUGIN_TWINS = (WinogradConvInt8, FP4GroupGemm, ActQuant)


def plugin_reference(op_type: str, attrs: dict):
    """The reference decomposition of a plugin node as a function of its (present) inputs, for tracing."""
    a = json.loads(json.dumps(attrs))
    if op_type == "WinogradConvInt8":
        return lambda x, w, ws, b, at, bt, sa: reference.winograd_conv_int8(
            x, w, ws, b, at, bt, a["tile"], a["pads"], a["group_size"], a["act_granularity"], sa)
    if op_type == "FP4GroupGemm":
        return lambda x, wp, ws, wt, b, sa: reference.fp4_group_gemm(
            x, wp, ws, wt, b, sa, a["weight_format"], a["act_format"], a["group_size"], a["scale_format"],
            a["act_clip"])
    return lambda x: reference.dynamic_group_qdq(x, a["format"], a["axis"], a["group_size"])
