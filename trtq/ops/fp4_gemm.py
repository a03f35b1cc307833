"""`trtq::fp4_group_gemm`: the W4A4 (or W4A8 / W4A16) group-wise FP4 linear, as a torch custom op.

Contract (what a GPU kernel or TensorRT plugin must reproduce):

    y = fp4_group_gemm(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale,
                       weight_format, act_format, group_size, scale_format, act_clip)

- x: [..., K] float (any float dtype; the result has x's dtype). K % group_size == 0.
- weight_packed: uint8 [N, K/2], 4-bit codes of `weight_format` (fp4_e2m1 | fp4_e3m0 | fp4_e1m2), two per
  byte along K, low nibble first (element 2i in bits 0-3, 2i+1 in bits 4-7).
- weight_scale: [N, K/g] one scale per (output row, group of g along K). FP32 when scale_format is
  "float32"; uint8 FP8-E4M3 codes when scale_format is "fp8_e4m3" (then weight_tensor_scale, a 0-d FP32
  tensor, multiplies every scale: NVFP4's double quant).
- bias: [N] or None.
- act_format: "none" (activations stay float: W4A16), an FP4 format (W4A4) or "fp8_e4m3" (W4A8).
- act_scale: None = dynamic: each (row, group) of x gets scale act_clip·|max| / format max at run time (with
  scale_format "fp8_e4m3" those scales are themselves FP8 times one FP32 scale per call). Otherwise a float
  [K/g] tensor of static scales shared by all rows (already FP8-rounded if the recipe asked for it).
- group_size ∈ {16, 32, 64, 128}; act_clip in (0, 1] (1 = plain min-max).

Computation (the Hopper plan; Hopper has no FP4 MMA): FP4 codes are unpacked to their values, which FP8
E4M3 holds exactly; activations are quantized per group; for each K-block (one group) the product of
the two value blocks is accumulated in FP32 and scaled by (activation scale × weight scale) before being
added to the FP32 accumulator (here the weight scale is multiplied into the weight block first, which is
exact in FP32); the per-tensor scales and the bias are applied once in the epilogue.
This reference runs on CPU and CUDA tensors alike.
"""

from __future__ import annotations

from typing import Optional

import torch

from trtq.fp4 import FP32_SCALES, code_values, group_amax, quantize_groups, scales_from_amax
from trtq.formats import unpack_4bit
from trtq.quantizer import double_quantize_scale


@torch.library.custom_op("trtq::fp4_group_gemm", mutates_args=())
def fp4_group_gemm(x: torch.Tensor, weight_packed: torch.Tensor, weight_scale: torch.Tensor,
                   weight_tensor_scale: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   act_scale: Optional[torch.Tensor], weight_format: str, act_format: str, group_size: int,
                   scale_format: str, act_clip: float) -> torch.Tensor:
    g = group_size
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 2
    groups = k // g
    rows = x.reshape(-1, k).float()

    w_vals = code_values(weight_format, x.device)[unpack_4bit(weight_packed).long()]  # [N, K], FP8-exact
    if scale_format == FP32_SCALES:
        w_scale, w_tensor = weight_scale.float(), 1.0
    else:
        w_scale = code_values(scale_format, x.device)[weight_scale.long()]
        w_tensor = weight_tensor_scale.float()

    a_tensor = 1.0
    if act_format == "none":
        a_vals, a_scale = rows, torch.ones(rows.shape[0], groups, device=x.device)
    else:
        if act_scale is None:
            a_scale = (group_amax(rows, g) * act_clip).clamp_min(0)
            a_scale = scales_from_amax(a_scale, act_format)
            if scale_format != FP32_SCALES:  # FP8 scales per (row, group) + one FP32 scale for this call
                codes, a_tensor, _ = double_quantize_scale(a_scale, scale_format)
                a_scale = code_values(scale_format, x.device)[codes.long()]
        else:
            a_scale = act_scale.float().reshape(1, groups).expand(rows.shape[0], groups)
        a_vals = quantize_groups(rows, a_scale * a_tensor, act_format, g)

    # A weight value times its FP32 group scale is exact (an FP4 value has at most 2 significant bits), so the
    # weight scales ride on the weight block; the activation scale multiplies each block's FP32 partial sum.
    w_blocks = (w_vals * w_scale.repeat_interleave(g, dim=1)).T.reshape(groups, g, n)
    a_blocks = a_vals.reshape(-1, groups, g).transpose(0, 1).contiguous()  # [G, M, g]
    acc = torch.zeros(rows.shape[0], n, device=x.device, dtype=torch.float32)
    for i in range(groups):
        partial = a_blocks[i] @ w_blocks[i]  # one K-block of the MMA, FP32 accumulate
        acc.addcmul_(partial, a_scale[:, i : i + 1])
    out = acc * (a_tensor * w_tensor)
    if bias is not None:
        out = out + bias.float()
    return out.reshape(*x.shape[:-1], n).to(x.dtype)


@fp4_group_gemm.register_fake
def _(x, weight_packed, weight_scale, weight_tensor_scale, bias, act_scale, weight_format, act_format,
      group_size, scale_format, act_clip):
    return x.new_empty(*x.shape[:-1], weight_packed.shape[0])
