"""QALoRA: a low-rank update merged into the weight *before* quantization, `Y = Q(X) · Q(W0 + B·A)`.

While training, a layer carries an adapter (`LowRankDelta` for EfficientDM, `FullDelta` for the QAT
baseline) whose `delta()` is weight-shaped; the layer fake-quantizes `W0 + delta` with its own weight
quantizer, so the update lives on the quantization grid the layer will be deployed with. `merge_adapter`
then writes the quantized result into the layer's stored low-bit weights and drops the adapter: inference
has no extra branch, and an artifact holds plain quantized weights (no A, no B).

Two layer kinds carry EfficientDM's weights:
- "qalora" (`QALoRAConv2d`, `QALoRALinear`): integer/FP8 fake-quantized layers (the "fake" kind's math)
  that also store their weight codes in a buffer `weight_codes` (int8, uint8 when asymmetric: one code per
  weight) beside the weight quantizer's scales. `prepare` fills the codes with Q(W0) (the PTQ start); a
  merge replaces them with Q(W0 + B·A). The float `weight` Parameter is never changed (it is the float
  model's; artifacts fingerprint it), as in `FP4Linear`.
- "fp4" (`trtq.nn.fp4_linear.FP4Linear`, HQ-DiT's rotation included) needs no kind of its own: it already
  stores packed codes. While it trains, `attach_adapter` swaps in `QALoRAFP4Train`, a differentiable
  (straight-through) twin that reads the same rotation, scales, formats and clip ratio; the merge packs
  `(W0 + B·A) R` with the layer's scales and puts the `FP4Linear` back.
Conv2d: A is a k×k conv Cin->r (same stride, padding, dilation), B a 1×1 conv r->Cout; their composition
is the single conv with weight B·A (reshaped), which is what is merged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trtq.errors import TrtqError
from trtq.formats import IntFormat
from trtq.fp4 import FP32_SCALES, dynamic_act_scales, fake_quantize_groups
from trtq.nn.fp4_linear import FP4Linear, require_float_weights
from trtq.nn.modules import QuantConv2d, QuantLinear
from trtq.nn.timestep import TimestepTableConfig
from trtq.quantizer import expand_scale


# ----------------------------------------------------------------------------------------- adapters
class LowRankDelta(nn.Module):
    """delta = B·A of rank r for a Linear [out, in] or a Conv2d [out, in/groups, kh, kw] weight.

    A is Kaiming-uniform (as nn.Linear/LoRA initialize it), B is zero: the adapted layer starts exactly at
    the PTQ initialization. A Conv2d's A is the k×k conv's weight [r, in/groups·kh·kw] flattened, B the 1×1
    conv's [out, r]; grouped convs are refused (B·A would mix groups)."""

    def __init__(self, weight: torch.Tensor, rank: int, groups: int = 1, seed: int = 0):
        super().__init__()
        if groups != 1:
            raise TrtqError("QALoRA adapts ungrouped convolutions only (B·A would mix the groups)")
        out, fan_in = weight.shape[0], weight[0].numel()
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise TrtqError(f"QALoRA rank must be a positive integer, got {rank!r}")
        self.shape = tuple(weight.shape)
        gen = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear initializes its weight
        a = (torch.rand(rank, fan_in, generator=gen) * 2 - 1) * bound
        self.A = nn.Parameter(a.to(weight.device, weight.dtype))
        self.B = nn.Parameter(torch.zeros(out, rank, device=weight.device, dtype=weight.dtype))

    def delta(self) -> torch.Tensor:
        return (self.B @ self.A).reshape(self.shape)


class FullDelta(nn.Module):
    """delta = D, a full weight-shaped update (zero at start): quantization-aware training of the weights
    (the QAT baseline), merged exactly like a low-rank update."""

    def __init__(self, weight: torch.Tensor, **_):
        super().__init__()
        self.D = nn.Parameter(torch.zeros_like(weight))

    def delta(self) -> torch.Tensor:
        return self.D


def make_adapter(weight: torch.Tensor, kind: str, rank: int, groups: int = 1, seed: int = 0) -> nn.Module:
    if kind == "lora":
        return LowRankDelta(weight, rank, groups, seed)
    if kind == "full":
        return FullDelta(weight)
    raise TrtqError(f"adapter must be 'lora' or 'full', got {kind!r}")


# ----------------------------------------------------------------------------------------- "qalora" kind
class _QALoRAMixin(TimestepTableConfig):
    """Fake-quantized layer whose deployed weight is stored as codes (see the module docstring)."""

    @classmethod
    def check_args(cls, weight, input, **layer_args) -> None:
        super().check_args(weight, input, **layer_args)
        if weight is None:
            raise TrtqError("qalora layers store quantized weights: the rule needs a weight scheme")
        if weight.dynamic or not isinstance(weight.fmt, IntFormat) or weight.granularity not in ("tensor", "channel"):
            raise TrtqError(f"qalora layers hold integer per-tensor/per-channel weights, not {weight.describe()}")
        if weight.fmt.bits > 8:
            raise TrtqError("qalora weight codes are one byte each: at most 8 bits")

    @classmethod
    def supports(cls, module, **layer_args) -> bool:
        return getattr(module, "groups", 1) == 1

    @classmethod
    def from_float(cls, module, weight, input, **layer_args):
        q = super().from_float(module, weight, input, **layer_args)
        q.adapter = None
        q.register_buffer("weight_codes", q.codes_of(q.weight.detach()))
        return q

    # --------------------------------------------------------------- codes
    def codes_of(self, w: torch.Tensor) -> torch.Tensor:
        """Integer codes of w on the weight quantizer's grid: exactly the values `fake_quantize` rounds to
        (clamp, round half to even), so (codes - zero_point) · scale is bit for bit Q(w)."""
        wq = self.weight_quantizer
        s = expand_scale(wq.scale.detach(), w, wq.scheme).to(w.dtype)
        fmt = wq.scheme.fmt
        if wq.zero_point is None:
            codes = torch.round((w / s).clamp(fmt.qmin, fmt.qmax))
            return codes.to(torch.int8)
        z = expand_scale(wq.zero_point, w, wq.scheme).to(w.dtype)
        return torch.round((w / s + z).clamp(0, 2**fmt.bits - 1)).to(torch.uint8)

    def dequantized_weight(self) -> torch.Tensor:
        """What the stored codes and scales hold, as float (the deployed weight)."""
        wq = self.weight_quantizer
        codes = self.weight_codes.to(self.weight.dtype)
        s = expand_scale(wq.scale, codes, wq.scheme).to(codes.dtype)
        if wq.zero_point is None:
            return codes * s
        return (codes - expand_scale(wq.zero_point, codes, wq.scheme).to(codes.dtype)) * s

    def rotated_weight(self) -> torch.Tensor:
        """The float weight in the basis of the codes (no rotation here; artifacts compare the two)."""
        return self.weight.detach().float()

    def quantized_weight(self) -> torch.Tensor:
        wq = self.weight_quantizer
        if wq.mode == "off":  # the float model (the distillation teacher is this layer, quantizers off)
            return self.weight
        if self.adapter is not None:  # training: the update is merged before quantization
            return wq(self.weight + self.adapter.delta())
        return self.dequantized_weight()

    def refresh_weight(self) -> None:
        """The codes are stored state, not derived from `weight` (after a merge they encode W0 + B·A)."""

    def merge(self) -> None:
        with torch.no_grad():
            w = self.weight + (0 if self.adapter is None else self.adapter.delta())
            self.weight_codes = self.codes_of(w)
        self.adapter = None



class QALoRAConv2d(_QALoRAMixin, QuantConv2d):
    pass


class QALoRALinear(_QALoRAMixin, QuantLinear):
    pass


QALORA_LAYERS = {"Conv2d": QALoRAConv2d, "Linear": QALoRALinear}


# ----------------------------------------------------------------------------------------- FP4 training twin
def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q in the forward, gradient 1 to x (straight-through)."""
    return x + (q - x).detach()


class QALoRAFP4Train(nn.Module):
    """`FP4Linear` while its update trains: y = Q_a(x R) · Q_w((W0 + B·A) R)ᵀ + b, with the layer's own
    rotation R, weight scales and format, and its activation format and clip ratio (dynamic group scales),
    fake-quantized with straight-through gradients. Weight scales stay those the layer holds (HQ-DiT
    searched them); float activations stay float."""

    def __init__(self, layer: FP4Linear, adapter: nn.Module):
        super().__init__()
        iq = layer.input_quantizer
        if iq is not None and not iq.scheme.dynamic:
            raise TrtqError("QALoRA on fp4 layers supports dynamic (or float) activations; this layer's are static")
        layer.float_weight("QALoRA training")  # the update is merged into W0 before quantization
        self.layer, self.adapter = layer, adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        g = layer.group_size
        w = layer.rotate_input(layer.weight + self.adapter.delta())
        w = _ste(w, fake_quantize_groups(w, layer.weight_group_scales(), layer.weight_format, g))
        xr = layer.rotate_input(x)
        if layer.act_format != "none":
            rows = xr.reshape(-1, layer.in_features)
            fmt_scales = layer.input_quantizer.scheme.scale_format or FP32_SCALES
            scale, row_scale = dynamic_act_scales(rows.detach(), layer.act_format, g, layer.act_clip, fmt_scales)
            if row_scale is not None:  # NVFP4-style FP8 group scales times one FP32 scale per row
                scale = scale * row_scale
            rows = _ste(rows, fake_quantize_groups(rows, scale, layer.act_format, g).to(rows.dtype))
            xr = rows.reshape(xr.shape)
        return F.linear(xr, w.to(xr.dtype), layer.bias)

    def merge(self) -> FP4Linear:
        layer = self.layer
        with torch.no_grad():
            w = layer.rotate_input((layer.weight + self.adapter.delta()).float())
            layer.pack_weight(w, layer.weight_group_scales().float(), fmt=layer.weight_format)
        layer.refresh_weight()
        return layer


# ----------------------------------------------------------------------------------------- attach / merge
def adaptable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers an update can be merged into: "qalora" layers and fp4 layers (by name)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (_QALoRAMixin, FP4Linear))}


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def attach_adapters(model: nn.Module, kind: str = "lora", rank: int = 32, seed: int = 0) -> dict[str, nn.Module]:
    """Give every adaptable layer an update (zero at start). Returns {layer name: adapter}."""
    import zlib

    require_float_weights(model, "QALoRA adapters")  # an update starts from the float weight W0
    adapters = {}
    for name, layer in adaptable_layers(model).items():
        adapter = make_adapter(layer.weight, kind, rank, getattr(layer, "groups", 1),
                               seed * 1_000_003 + zlib.crc32(name.encode()))
        if isinstance(layer, FP4Linear):
            _set(model, name, QALoRAFP4Train(layer, adapter))
        else:
            layer.adapter = adapter
        adapters[name] = adapter
    if not adapters:
        raise TrtqError("no layer to adapt: EfficientDM needs rules with `layer: qalora` or `layer: fp4`")
    return adapters


def merge_adapters(model: nn.Module) -> int:
    """Merge every update into its layer's quantized weights and drop it. Returns how many were merged."""
    n = 0
    for name, mod in list(model.named_modules()):
        if isinstance(mod, QALoRAFP4Train):
            _set(model, name, mod.merge())
            n += 1
        elif isinstance(mod, _QALoRAMixin) and mod.adapter is not None:
            mod.merge()
            n += 1
    return n


def weight_step(layer: nn.Module) -> torch.Tensor:
    """Mean weight quantization step of a layer (the scale-aware learning-rate rule's input)."""
    if isinstance(layer, QALoRAFP4Train):
        layer = layer.layer
    if isinstance(layer, FP4Linear):
        return layer.weight_group_scales().float().mean()
    return layer.weight_quantizer.scale.detach().float().mean()


def is_qalora(module: nn.Module) -> bool:
    """A layer of kind "qalora" (stored integer codes)."""
    return isinstance(module, _QALoRAMixin)
