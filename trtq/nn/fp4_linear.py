"""`FP4Linear`: a linear layer whose weights are stored as packed 4-bit floats with group scales.

Layer kind "fp4" (recipes: `layer: fp4`, `layer_args: {group_size: g}`). The weights live in buffers, so
artifacts carry exactly what a kernel consumes:
- `weight_packed` uint8 [N, K/2]: 4-bit codes, two per byte, low nibble first;
- `weight_scale` [N, K/g]: FP32, or FP8-E4M3 codes (uint8) with `weight_tensor_scale` (FP32, 0-d) when
  the weight scheme has `scale_format: fp8_e4m3` (NVFP4 double quant);
- `hadamard_signs` int8 [K] (optional): the layer computes `(x R)(W R)ᵀ` with R = diag(signs)·H; the
  packed weights are already W R (see `trtq.hadamard`).
The float `weight` Parameter is the float model's, never changed; the forward does not read it. It stays while
something may still need it (HQ-DiT's searches, QALoRA training, `set_rotation`, the packed-weight check of
`load_artifact`) and `release_float_weight()` frees it (`trtq.release_float_weights(model)` for a whole model,
which first records the float model's fingerprint; `load_artifact` does it by default). A released layer's
`weight` is None: what needs it asks `float_weight(purpose)`, which raises one clear TrtqError.
Activations go through `input_quantizer` only for bookkeeping (its scheme names the activation format,
its buffers hold static scales); the quantization itself happens inside `trtq::fp4_group_gemm`.
Per-layer choices (weight format, activation clip ratio) travel in `artifact_config()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

import trtq.ops.fp4_gemm  # noqa: F401  (registers torch.ops.trtq.fp4_group_gemm)
from trtq.errors import TrtqError
from trtq.formats import get_format, pack_4bit, unpack_4bit
from trtq.fp4 import (
    ACT_FORMATS,
    FP4_FORMATS,
    FP32_SCALES,
    GROUP_SIZES,
    code_values,
    group_amax,
    scales_from_amax,
)
from trtq.hadamard import rotate
from trtq.nn.modules import _QuantMixin, register_layer_kind
from trtq.nn.tensor_quantizer import TensorQuantizer
from trtq.quantizer import double_quantize_scale
from trtq.scheme import QuantScheme


ENCODE_ROWS = 256  # rows encoded per pass: bounds the float temporaries of packing to a slice of the weight


def encode_groups(w: torch.Tensor, scale: torch.Tensor, fmt_name: str, g: int) -> torch.Tensor:
    """Packed codes [N, K/2] of w [N, K] with group scales [N, K/g]: bit for bit
    `pack_4bit(encode(quantize_groups(w, scale, fmt, g)))` (same IEEE division, clamp and rounding), done
    by `FloatFormat.encode_nearest` on row slices, with no weight-sized float temporary."""
    fmt = get_format(fmt_name)
    n, k = w.shape
    out = torch.empty(n, k // 2, dtype=torch.uint8, device=w.device)
    for r in range(0, n, ENCODE_ROWS):
        rows = w[r : r + ENCODE_ROWS].float().reshape(-1, k // g, g)
        ratio = (rows / scale[r : r + ENCODE_ROWS].float()[..., None]).clamp(-fmt.max_value, fmt.max_value)
        out[r : r + ENCODE_ROWS] = pack_4bit(fmt.encode_nearest(ratio).reshape(-1, k))
    return out


class _Packing(threading.local):
    deferred = False


_packing = _Packing()


@contextlib.contextmanager
def packing_deferred() -> Iterator[None]:
    """Layers built inside skip encoding their weights (codes on the meta device: shape and dtype, no memory;
    min-max scales): for `load_artifact`, whose stored codes replace them. Such a layer cannot run until then."""
    previous = _packing.deferred
    _packing.deferred = True
    try:
        yield
    finally:
        _packing.deferred = previous


class FP4Linear(_QuantMixin, nn.Linear):
    @classmethod
    def check_args(cls, weight: QuantScheme | None, input: QuantScheme | None, group_size=None, **layer_args):
        if layer_args:
            raise TrtqError(f"fp4 layers take layer_args group_size only, got {sorted(layer_args)}")
        if group_size not in GROUP_SIZES or isinstance(group_size, bool):
            raise TrtqError(f"fp4 layers need layer_args group_size in {GROUP_SIZES}, got {group_size!r}")
        if weight is None:
            raise TrtqError("fp4 layers store 4-bit weights: the rule needs a weight scheme")
        if weight.format not in FP4_FORMATS:
            raise TrtqError(f"fp4 weight format must be one of {FP4_FORMATS}, got {weight.format!r}")
        if weight.granularity != "group" or weight.axis not in (1, -1) or weight.group_size != group_size:
            raise TrtqError(f"fp4 weights are group-wise along K: granularity group, axis 1, group_size "
                            f"{group_size} (= layer_args group_size)")
        if weight.dynamic or weight.observer != "minmax":
            raise TrtqError("fp4 weight scales are static min-max (HQ-DiT searches clipping itself)")
        if input is None:
            return
        if input.format not in ACT_FORMATS:
            raise TrtqError(f"fp4 activation format must be one of {ACT_FORMATS}, got {input.format!r}")
        if input.granularity == "group":
            if input.axis != -1 or input.group_size != group_size:
                raise TrtqError(f"fp4 activation groups run along the last axis with group_size {group_size}")
        elif input.granularity != "tensor" or input.dynamic:
            raise TrtqError("fp4 activations are group-wise (dynamic or static) or static per tensor")
        if input.dynamic and input.scale_format != weight.scale_format:
            raise TrtqError("dynamic fp4 activations use the weights' scale_format (one kernel setting)")

    @classmethod
    def supports(cls, module: nn.Module, group_size=None, **layer_args) -> bool:
        return module.in_features % group_size == 0

    @classmethod
    def from_float(cls, module: nn.Module, weight: QuantScheme | None, input: QuantScheme | None, group_size=None,
                   **layer_args):
        cls.check_args(weight, input, group_size=group_size, **layer_args)
        q = super().from_float(module, None, input)
        q.group_size = group_size
        q.weight_format = weight.format
        q.scale_format = weight.scale_format
        q.act_clip = 1.0
        q.float_forward = False  # HQ-DiT's calibration capture runs the float layer
        q.register_buffer("hadamard_signs", None)
        q.register_buffer("weight_packed", None)
        q.register_buffer("weight_scale", None)
        q.register_buffer("weight_tensor_scale", None)
        q.pack_weight(q.weight.detach())
        return q

    # ------------------------------------------------------------------------------- weights
    def rotate_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.hadamard_signs is None else rotate(x, self.hadamard_signs)

    @property
    def float_weight_released(self) -> bool:
        return self.weight is None

    def float_weight(self, purpose: str) -> torch.Tensor:
        """The float model's weight [N, K], for `purpose`; after `release_float_weight`, a TrtqError saying so."""
        if self.weight is None:
            raise TrtqError(f"{purpose} needs the float weights of this fp4 layer [{self.out_features}x"
                            f"{self.in_features}], which were released (trtq.release_float_weights; load_artifact "
                            "releases them unless keep_float_weights=True): start again from the float model")
        return self.weight

    def release_float_weight(self) -> int:
        """Drop the float `weight` (the packed codes and scales are all the forward reads). Returns its bytes
        (0 when already released); they are freed once nothing else holds that Parameter."""
        w = self.weight
        if w is None:
            return 0
        self.weight = None  # stays a registered (empty) parameter slot, as nn.Linear's bias does without bias
        return w.numel() * w.element_size()

    def rotated_weight(self) -> torch.Tensor:
        """W R (or W): the float weights in the basis the packed codes are in."""
        return self.rotate_input(self.float_weight("rotated_weight").detach().float())

    def set_rotation(self, signs: torch.Tensor | None) -> None:
        """Turn the Hadamard rotation on (signs) or off (None); re-packs the weights min-max."""
        w = self.float_weight("set_rotation (re-packing in the rotated basis)")
        self.hadamard_signs = None if signs is None else signs.to(torch.int8).to(w.device)
        self.pack_weight(self.rotated_weight())

    def weight_scales(self, w: torch.Tensor, clip: torch.Tensor | float = 1.0, fmt: str | None = None):
        """Group scales for w (rows × K/g), clip ratio applied to each group's |max|, FP8-rounded if asked."""
        return scales_from_amax(group_amax(w.float(), self.group_size) * clip, fmt or self.weight_format,
                                self.scale_format)

    def pack_weight(self, w: torch.Tensor, scale: torch.Tensor | None = None, fmt: str | None = None) -> None:
        """Quantize float weights w [N, K] (already rotated) into the buffers. Default scales: min-max."""
        fmt = fmt or self.weight_format
        if fmt not in FP4_FORMATS:
            raise TrtqError(f"fp4 weight format must be one of {FP4_FORMATS}, got {fmt!r}")
        self.weight_format = fmt
        scale = self.weight_scales(w, fmt=fmt) if scale is None else scale.float()
        if self.scale_format is not None:
            codes8, tensor_scale, scale = double_quantize_scale(scale, self.scale_format)
            self.weight_scale, self.weight_tensor_scale = codes8, tensor_scale
        else:
            self.weight_scale = scale.contiguous()
        if _packing.deferred:  # an artifact's codes are about to replace these: only the shape matters
            self.weight_packed = torch.empty(w.shape[0], w.shape[1] // 2, dtype=torch.uint8, device="meta")
            return
        self.weight_packed = encode_groups(w, scale, fmt, self.group_size)

    def weight_group_scales(self) -> torch.Tensor:
        """The stored scales as float [N, K/g] (FP8 codes decoded and multiplied by the tensor scale)."""
        if self.scale_format is None:
            return self.weight_scale
        return code_values(self.scale_format, self.weight_scale.device)[self.weight_scale.long()] * \
            self.weight_tensor_scale

    def dequantized_weight(self) -> torch.Tensor:
        """What the packed buffers hold, as float [N, K] (in the rotated basis when a rotation is on)."""
        values = code_values(self.weight_format, self.weight_packed.device)[unpack_4bit(self.weight_packed).long()]
        return values * self.weight_group_scales().repeat_interleave(self.group_size, dim=1)

    # ------------------------------------------------------------------------------- activations
    @property
    def act_format(self) -> str:
        return "none" if self.input_quantizer is None else self.input_quantizer.scheme.format

    def set_act(self, fmt: str, clip: float = 1.0, static_scale: torch.Tensor | None = None) -> None:
        """Choose the activation format (a new input quantizer, so the artifact records it), the dynamic clip
        ratio, or the static scales ([K/g] for group, 0-d for per-tensor)."""
        old = self.input_quantizer
        if old is None:
            raise TrtqError("this fp4 layer keeps activations in float")
        new = TensorQuantizer(dataclasses.replace(old.scheme, format=fmt), "input")
        if not new.scheme.dynamic:
            if static_scale is None:
                raise TrtqError("static fp4 activations need scales")
            new.scale = static_scale.float().to(self.weight_packed.device)
            new.observer, new.mode = None, "quantize"
        self.input_quantizer = new
        self.act_clip = float(clip)

    def _static_act_scale(self) -> torch.Tensor:
        scale = self.input_quantizer.scale.float().reshape(-1)
        groups = self.in_features // self.group_size
        return scale.expand(groups) if scale.numel() == 1 else scale

    # ------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_forward:
            return F.linear(x, self.float_weight("float_forward (a float capture or teacher)"), self.bias)
        x = self.rotate_input(x)
        iq = self.input_quantizer
        act_format, act_scale = self.act_format, None
        if iq is None or iq.mode != "quantize":
            if iq is not None and iq.mode == "calibrate":
                iq.observe(x)
            act_format = "none"
        elif not iq.scheme.dynamic:
            act_scale = self._static_act_scale()
        return torch.ops.trtq.fp4_group_gemm(
            x, self.weight_packed, self.weight_scale, self.weight_tensor_scale, self.bias, act_scale,
            self.weight_format, act_format, self.group_size, self.scale_format or FP32_SCALES, self.act_clip)

    # ------------------------------------------------------------------------------- artifacts
    def artifact_config(self) -> dict:
        return {"weight_format": self.weight_format, "act_clip": self.act_clip}

    def load_artifact_config(self, config: dict) -> None:
        unknown = set(config) - {"weight_format", "act_clip"}
        if unknown:
            raise TrtqError(f"fp4 layer config has unknown keys {sorted(unknown)}")
        fmt = config.get("weight_format", self.weight_format)
        if fmt not in FP4_FORMATS:
            raise TrtqError(f"fp4 layer config names weight format {fmt!r}; known: {FP4_FORMATS}")
        clip = float(config.get("act_clip", 1.0))
        if not 0.0 < clip <= 1.0:
            raise TrtqError(f"fp4 layer config act_clip must lie in (0, 1], got {clip}")
        self.weight_format, self.act_clip = fmt, clip

    def extra_repr(self) -> str:
        notes = (", hadamard" if self.hadamard_signs is not None else "") + \
            (", float weight released" if self.weight is None else "")
        scales = f", {self.scale_format} scales" if self.scale_format else ""
        return (f"{super().extra_repr()}, weight={self.weight_format} g={self.group_size}{scales}, "
                f"act={self.act_format}{notes}")


register_layer_kind("fp4", {"Linear": FP4Linear})


def require_float_weights(model: nn.Module, purpose: str) -> None:
    """Refuse `purpose` (a method that reads the float weights) on a model whose fp4 float weights were released."""
    released = [n for n, m in model.named_modules() if isinstance(m, FP4Linear) and m.float_weight_released]
    if released:
        more = f" and {len(released) - 1} more fp4 layer(s)" if len(released) > 1 else ""
        raise TrtqError(f"{purpose} needs the float weights of the fp4 layers, but those of {released[0] or 'the model'}"
                        f"{more} were released (trtq.release_float_weights; load_artifact releases them unless "
                        "keep_float_weights=True): start again from the float model")
