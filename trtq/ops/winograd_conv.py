"""`trtq::winograd_conv_int8`: fully quantized W8A8 Winograd F(m, 3) convolution (reference implementation)."""

from __future__ import annotations

import torch

from trtq.winograd.conv import transform_input, transform_output
from trtq.winograd.quant import GRANULARITIES, act_scales

# int8 x int8 products are at most 128 * 128 = 2^14, so a float32 sum of up to 2^10 of them is an exact
# integer (< 2^24): the reference accumulates each group in float32 when that holds (what INT32 gives a kernel).
_EXACT_FP32_TERMS = 2**24 // 2**14


@torch.library.custom_op("trtq::winograd_conv_int8", mutates_args=())
def winograd_conv_int8(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                       at: torch.Tensor, bt: torch.Tensor, tile: int, padding: list[int], group_size: int,
                       act_granularity: str, act_scale: torch.Tensor | None) -> torch.Tensor:
    """3x3, stride 1, dilation 1, groups 1 conv2d of x with INT8 Winograd-domain weights.

    Inputs (n = tile + 2, G = Cin / group_size):
      x          [N, Cin, H, W] float: the layer input, unquantized.
      w_int8     [n, n, Cout, Cin] int8: G' g G'^T of the float weight, quantized offline.
      w_scale    [n, n, Cout, G] float32: one scale per (position, output channel, input-channel group)
                 (values repeat where the recipe shares a scale across positions or the whole tensor).
      bias       [Cout] float or None, added after the output transform.
      at, bt     [tile, n] and [n, n] float32: A^T and B^T, learned diagonal scales already folded in
                 (A^T S_A, S_B B^T).
      tile       m of F(m, 3), in {2, 4, 6}; must match at.shape[0].
      padding    [ph, pw] zero padding.
      group_size input channels per scale group (Cin for per-tensor); divides Cin.
      act_granularity  how the INT8 scales of the transformed input are taken when act_scale is None
                 (dynamic, from the live tile): "tensor" (one per call), "group" (per tile and channel
                 group, shared by the n x n positions), "position-group" (per tile, position, group).
      act_scale  [n, n, G] float32 static scales (calibrated), or None for dynamic.
    Computation: V = B^T d B per tile (float); V -> INT8 with its scales; for each of the n*n positions and
    each group an INT8 GEMM over the group's channels with exact (INT32) accumulation, times
    w_scale * act_scale, summed over groups; Y = A^T M A per tile (float); + bias; crop to the conv output.
    Output: [N, Cout, H + 2 ph - 2, W + 2 pw - 2], dtype of x.
    """
    n = tile + 2
    if tuple(at.shape) != (tile, n) or tuple(bt.shape) != (n, n):
        raise ValueError(f"transforms for tile {tile} must be A^T [{tile}, {n}] and B^T [{n}, {n}]")
    if act_granularity not in GRANULARITIES:
        raise ValueError(f"act_granularity must be one of {GRANULARITIES}, got {act_granularity!r}")
    cout, cin = w_int8.shape[2], w_int8.shape[3]
    groups = cin // group_size
    v, grid = transform_input(x.float(), bt.float(), tile, tuple(padding))
    sa = act_scales(v, group_size, act_granularity) if act_scale is None else act_scale.reshape(n, n, groups, 1, 1)
    acc_dtype = torch.float32 if group_size <= _EXACT_FP32_TERMS else torch.float64
    vq = torch.round(v.reshape(n, n, groups, group_size, -1) / sa).clamp(-128, 127).to(acc_dtype)
    wq = w_int8.reshape(n, n, cout, groups, group_size).permute(0, 1, 3, 2, 4).to(acc_dtype)
    acc = (wq @ vq).float()  # [n, n, G, Cout, P]: one exact integer GEMM per (position, group)
    ws = w_scale.float().unsqueeze(-1)  # [n, n, Cout, G, 1]
    sa = sa.expand(n, n, groups, 1, acc.shape[-1])
    mm = acc[:, :, 0].mul_(ws[:, :, :, 0]).mul_(sa[:, :, 0])
    for k in range(1, groups):  # dequantize group by group in place: the reference runs on CPU evals too
        mm.addcmul_(acc[:, :, k].mul_(ws[:, :, :, k]), sa[:, :, k])
    y = transform_output(mm, at.float(), grid)
    if bias is not None:
        y = y + bias.float()[None, :, None, None]
    return y.to(x.dtype)


@winograd_conv_int8.register_fake
def _(x, w_int8, w_scale, bias, at, bt, tile, padding, group_size, act_granularity, act_scale):
    out_h = x.shape[2] + 2 * padding[0] - 2
    out_w = x.shape[3] + 2 * padding[1] - 2
    return x.new_empty((x.shape[0], w_int8.shape[2], out_h, out_w))
