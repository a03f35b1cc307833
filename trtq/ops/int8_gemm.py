"""`trtq::int8_gemm`: W8A8 linear with INT32 accumulation, for the layers Winograd does not cover (linears,
1x1 convs as linears over channels-last pixels). Not yet wired into trtq.nn (that is its owner's call).

Contract:
    y = int8_gemm(x, w_int8, w_scale, bias, act_scale)
- x: [..., K] float (FP16/BF16/FP32); y has x's dtype and shape [..., N].
- w_int8: [N, K] int8 codes; w_scale: [N] float32, one scale per output channel.
- act_scale: None = dynamic per token: each row of x gets amax(|row|) / 127 (IEEE division, 1 for an all-zero
  row), so a token's result never depends on the other tokens or images of the batch; or a 0-d / [1] float32
  static (calibrated) per-tensor scale.
- Codes: round(x / scale) half to even, clamped to [-128, 127]. acc = codes @ w_int8^T, exact (INT32).
- y = (acc * act_scale_row) * w_scale_col in FP32, + bias in FP32, cast to x's dtype.
CUDA runs the INT8 GEMM on `torch._int_mm` (cuBLASLt INT8, INT32 out) where its shape rules hold (more than
16 rows; K and N multiples of 8); everything else runs the same arithmetic through an exact float GEMM.
"""

from __future__ import annotations

import torch

from trtq.quantizer import symmetric_scale

# int8 x int8 products are at most 2^14; a float32 sum of up to 2^10 of them is an exact integer (< 2^24).
_EXACT_FP32_TERMS = 2**24 // 2**14


def token_scales(rows: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token scales [M, 1] of rows [M, K] (float32)."""
    amax = torch.maximum(-rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True))
    return symmetric_scale(amax, 127.0)


def _int_mm_ok(m: int, k: int, n: int, device: torch.device) -> bool:
    return device.type == "cuda" and m > 16 and k % 8 == 0 and n % 8 == 0


@torch.library.custom_op("trtq::int8_gemm", mutates_args=())
def int8_gemm(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
              act_scale: torch.Tensor | None) -> torch.Tensor:
    n, k = w_int8.shape
    rows = x.reshape(-1, k).float()
    scale = token_scales(rows) if act_scale is None else act_scale.float().reshape(1, 1)
    codes = torch.round(rows / scale).clamp(-128, 127)
    if _int_mm_ok(rows.shape[0], k, n, x.device):
        acc = torch._int_mm(codes.to(torch.int8), w_int8.t()).float()
    else:
        dtype = torch.float32 if k <= _EXACT_FP32_TERMS else torch.float64
        acc = (codes.to(dtype) @ w_int8.t().to(dtype)).float()
    y = (acc * scale) * w_scale.float()[None, :]
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], n).to(x.dtype)


@int8_gemm.register_fake
def _(x, w_int8, w_scale, bias, act_scale):
    return x.new_empty(*x.shape[:-1], w_int8.shape[0])


def quantize_linear_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float weight [N, K] -> (INT8 codes [N, K], per-output-channel scales [N] float32)."""
    w = w.float()
    scale = symmetric_scale(torch.maximum(-w.amin(dim=1), w.amax(dim=1)), 127.0)
    return torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8), scale
