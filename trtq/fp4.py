"""Group-wise 4-bit float quantization: the arithmetic shared by the FP4 GEMM op, `FP4Linear` and HQ-DiT.

A [R, K] tensor is cut into groups of `g` consecutive elements along K; each (row, group) has one scale.
Scales are FP32, or FP8 E4M3 times one FP32 per-tensor scale (`scale_format="fp8_e4m3"`; NVFP4 is that
with E2M1 and g = 16).
"""

from __future__ import annotations

import torch

from trtq.errors import TrtqError
from trtq.formats import FloatFormat, get_format
from trtq.quantizer import double_quantize_scale, symmetric_scale

FP4_FORMATS = ("fp4_e2m1", "fp4_e3m0", "fp4_e1m2")
ACT_FORMATS = FP4_FORMATS + ("fp8_e4m3",)
GROUP_SIZES = (16, 32, 64, 128)
FP32_SCALES = "float32"  # the op's name for "no scale_format"


def code_values(fmt_name: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """Lookup table code -> value for a float format (16 entries for 4-bit, 256 for FP8), on `device`."""
    fmt = get_format(fmt_name)
    return fmt.decode(torch.arange(2**fmt.bits)).to(device)


def group_amax(x: torch.Tensor, g: int) -> torch.Tensor:
    """[R, K] -> [R, K/g] largest magnitude per group."""
    return x.reshape(x.shape[0], -1, g).abs().amax(-1)


def scales_from_amax(amax: torch.Tensor, fmt_name: str, scale_format: str | None = None) -> torch.Tensor:
    """Scales mapping each group's |max| onto the format's largest value (FP8-rounded if scale_format)."""
    fmt_scales = None if scale_format in (None, FP32_SCALES) else scale_format
    return symmetric_scale(amax.float(), get_format(fmt_name).max_value, fmt_scales)


def dynamic_act_scales(rows: torch.Tensor, fmt_name: str, g: int, clip: float, scale_format: str):
    """Run-time activation scales for rows [M, K]: (scale [M, K/g], row_scale [M, 1] or None).

    Each (row, group): clip * |max| / format max (IEEE division), 1 for an all-zero group. With FP8 scales each
    row is double-quantized on its own: row_scale = the row's largest group scale / 448 (all-zero groups do
    not count; 1 for an all-zero row), scale = the E4M3 value of group scale / row_scale, at least 2^-9; the
    quantization then divides by scale * row_scale. Per row, so a row's codes never depend on other rows
    (an image's output never depends on the rest of its batch)."""
    bound = group_amax(rows.float(), g) * clip
    scale = symmetric_scale(bound, get_format(fmt_name).max_value)
    if scale_format in (None, FP32_SCALES):
        return scale, None
    # all-zero groups: 0, so that they do not count toward the row's FP32 scale
    codes, row_scale, _ = double_quantize_scale(torch.where(bound > 0, scale, 0.0), scale_format, dim=-1)
    return code_values(scale_format, rows.device)[codes.long()], row_scale


def quantize_groups(x: torch.Tensor, scale: torch.Tensor, fmt_name: str, g: int) -> torch.Tensor:
    """Values on the format's grid (not yet rescaled): round(x / scale), saturating. scale: [R, K/g] or [K/g]."""
    fmt = get_format(fmt_name)
    if not isinstance(fmt, FloatFormat):
        raise TrtqError(f"group float quantization needs a float format, got {fmt_name}")
    s = scale.repeat_interleave(g, dim=-1)
    return fmt.round((x.float() / s).clamp(-fmt.max_value, fmt.max_value))


def fake_quantize_groups(x: torch.Tensor, scale: torch.Tensor, fmt_name: str, g: int) -> torch.Tensor:
    """Quantize then dequantize group-wise (float result, same shape as x)."""
    return quantize_groups(x, scale, fmt_name, g) * scale.repeat_interleave(g, dim=-1)


def gemm_quantizes_activations(act_format: str, group_size: int, k: int, scale_format: str, static: bool) -> bool:
    """Whether the FP4 GEMM can quantize its activations itself, in its A-load (one kernel, no workspace):
    only FP32 scales (static, or dynamic ones it computes per group), and groups smaller than K (with g = K the
    per-row scale must be known before the K-loop starts). W4A16 ("none") quantizes nothing."""
    return act_format != "none" and group_size < k and (static or scale_format == FP32_SCALES)
